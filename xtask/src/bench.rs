//! `cargo xtask bench <what>`: the benchmarks, each measured against a baseline in the same run.

use anyhow::{Result, bail};

use crate::{cargo, transport_arg};

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<()> {
    let Some((what, rest)) = args.split_first() else {
        bail!("bench what? mirror, spawn, messaging, dispatch, run or ship");
    };
    if what == "run" {
        // The CLI against shell baselines: no package bench, the release binary itself.
        let part = match rest {
            [] => crate::bench_run::Part::All,
            [part] if part == "true" => crate::bench_run::Part::True,
            [part] if part == "mirrored" => crate::bench_run::Part::Mirrored,
            [extra, ..] => bail!(
                "bench run takes `true`, `mirrored` or nothing (both), not `{extra}`; set PARVM_BENCH_DIR to choose its scratch folder"
            ),
        };
        return crate::bench_run::run(part);
    }
    let transport = transport_arg(rest)?;
    let (package, bench, features): (&str, &str, &[&str]) = match (
        what.as_str(),
        transport.as_str(),
    ) {
        ("mirror", _) => ("parvm-mirror-fs", "mirror", &[]),
        // The transport's own ping-pong: a raw TCP socket, plaintext frames (only this
        // bench can turn sealing off) and sealed frames, in the same run.
        ("messaging", "tcp") => (
            "parvm-transport",
            "tcp_pingpong",
            &["--features", "parvm-transport/bench-plaintext"],
        ),
        ("dispatch", "mpi") => ("parvm-vm", "dispatch_mpi", &["--features", "mpi"]),
        ("dispatch", _) => ("parvm-vm", "dispatch", &[]),
        ("spawn" | "messaging", "mpi") => ("parvm-vm", "spawn_mpi", &["--features", "mpi"]),
        ("spawn" | "messaging", _) => ("parvm-vm", "spawn", &[]),
        ("ship", _) => {
            if let Err(why) = crate::install::ensure("rsync", "rsync") {
                println!("rsync: its baselines are skipped, {why}");
            }
            // `rsync -a` over ssh on loopback: the client (ssh, ssh-keygen) and a throwaway
            // sshd the bench starts itself.
            for (program, package) in [("ssh", "openssh-client"), ("sshd", "openssh-server")] {
                if let Err(why) = crate::install::ensure(program, package) {
                    println!("{program}: the rsync over ssh baseline is skipped, {why}");
                }
            }
            ("parvm-vm", "ship", &[])
        }
        (other, _) => {
            bail!(
                "unknown benchmark `{other}`; use mirror, spawn, messaging, dispatch, run or ship"
            )
        }
    };
    let passthrough: Vec<&String> = rest
        .iter()
        .filter(|arg| *arg != "--transport" && **arg != transport)
        .collect();
    crate::exec(
        cargo()
            .args(["bench", "-p", package, "--bench", bench])
            .args(features)
            .arg("--")
            .arg(what)
            .args(passthrough),
    )
}
