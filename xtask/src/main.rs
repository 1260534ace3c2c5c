//! parvm automation: `cargo xtask demo`, `cargo xtask test`, `cargo xtask bench <what>`.

mod bench;
mod bench_run;
mod demo;
mod failures;
mod install;
mod test;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo [--transport local|mpi]   run examples 01-07 (01-06 under MPI) in a temporary storage, leaving nothing behind
  demo --data                    show the data layer (config, mirror, storage) on a generated tree
  test                           fmt check, clippy -D warnings, docs build, every test (MPI tests when
                                 mpirun exists), README and docs/ code blocks with 1 and 2 workers
  test --guide                   only the docs build and the README and docs/ code blocks
  bench mirror                   mirroring against cp -a, on tmpfs and on disk
  bench spawn [--transport T]    no-op spawn round trip and VM start-up
  bench messaging [--transport T] ping-pong latency and throughput against a raw baseline
  bench dispatch [--transport T] jobs/s against the spawn loop
  bench run                      parvm run (release) against xargs -P and GNU parallel (installed
                                 when missing), and against cp -a per case on a mirrored folder
  bench ship                     inputs shipped over TCP loopback (cold, warm, one file changed)
                                 against shared mirroring and rsync -a (installed when missing)
";

fn main() -> std::process::ExitCode {
    // Said in one paragraph, without the backtrace `Result` from `main` adds under
    // `RUST_BACKTRACE`: the end of a failed run's log then says what failed and why.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => {
            print!("{USAGE}");
            bail!("no command given");
        }
    };
    match command {
        "demo" => demo::run(rest),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// The workspace root, found from this crate's manifest folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target folder (`CARGO_TARGET_DIR`, else `target/` in the root).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A `cargo` command run from the workspace root, with the cargo that runs this xtask.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs a command to completion, failing with its description when it fails.
fn exec(command: &mut Command) -> Result<()> {
    let description = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {description}"))?;
    if !status.success() {
        bail!("{description} failed ({status})");
    }
    Ok(())
}

/// Whether a program is on the PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Parses `--transport NAME` out of the arguments; `local` when absent.
fn transport_arg(args: &[String]) -> Result<String> {
    match args.iter().position(|arg| arg == "--transport") {
        None => Ok("local".to_owned()),
        Some(index) => match args.get(index + 1).map(String::as_str) {
            Some(name @ ("local" | "tcp" | "mpi")) => Ok(name.to_owned()),
            Some(other) => bail!("unknown transport `{other}`; use local, tcp or mpi"),
            None => bail!("--transport needs a value: local, tcp or mpi"),
        },
    }
}

/// The environment mpirun needs when run as root.
fn mpirun_root_env(command: &mut Command) {
    if nix_is_root() {
        command
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
}

fn nix_is_root() -> bool {
    // The xtask avoids libc: the uid is read from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
