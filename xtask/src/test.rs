//! `cargo xtask test`: the checks that keep main landable.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::Scratch;
use crate::failures::exec_tests;
use crate::{cargo, exec, on_path};

/// Runs the fmt check, clippy with `-D warnings`, and every test; the MPI tests too when
/// `mpirun` is on the PATH.
pub fn run_all(with_mpi: bool) -> Result<()> {
    step("format check");
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("every variable of parvm_env_config::vars has a row in docs/configuration.md");
    variables_documented()?;
    step("clippy -D warnings");
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    if with_mpi {
        exec(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            "mpi",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("docs build, -D warnings (broken links included), public and private items");
    docs_build()?;
    // Plain `cargo test` runs unit, integration and doc tests and builds the examples;
    // `--all-targets` would also run the benchmarks, which are not tests.
    step("tests");
    exec_tests(cargo().args(["test", "--workspace"]))?;
    for workers in [1, 2] {
        step(&format!(
            "code blocks of README.md and docs/, {workers} worker slot(s)"
        ));
        guide_blocks(workers)?;
    }
    if with_mpi {
        step("MPI tests");
        exec_tests(cargo().args([
            "test",
            "-p",
            "parvm-transport",
            "-p",
            "parvm-vm",
            "-p",
            "parvm-cli",
            "--features",
            "parvm-transport/mpi,parvm-vm/mpi,parvm-cli/mpi",
        ]))?;
    }
    Ok(())
}

/// Checks that docs/configuration.md has a row for every variable of env-config's table
/// (and no row for a variable the table lacks). The check is a unit test of env-config,
/// so it reads the table itself rather than a parse of its source; it runs here by name,
/// early, so a missing row fails before the long steps.
fn variables_documented() -> Result<()> {
    const TEST: &str = "vars::tests::every_variable_has_a_row_in_the_guide";
    let mut command = cargo();
    command.args([
        "test",
        "-p",
        "parvm-env-config",
        "--lib",
        "--",
        "--exact",
        TEST,
    ]);
    let description = format!("{command:?}");
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {description}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!("{description} failed ({})", output.status);
    }
    // A filter that matches nothing passes too: the test must have run.
    if !stdout.contains("test result: ok. 1 passed") {
        bail!("{TEST} did not run; was it renamed? Update xtask/src/test.rs");
    }
    Ok(())
}

/// `cargo doc` of the workspace with every rustdoc warning an error: the team's docs
/// (private items too, whose links are the map of the code), then the users', so that
/// `target/doc` ends up holding the users' docs.
fn docs_build() -> Result<()> {
    for private in [true, false] {
        let mut doc = cargo();
        doc.args(["doc", "--workspace", "--no-deps", "--quiet"])
            .env("RUSTDOCFLAGS", "-D warnings");
        if private {
            doc.arg("--document-private-items");
        }
        exec(&mut doc)?;
    }
    Ok(())
}

/// Runs the `rust` code blocks of README.md and docs/*.md: the doc tests of the façade
/// compiled with `--cfg parvm_doc_env` (see `parvm::guide`), in the project folder of a
/// scratch mirrored storage, with `workers` local worker slots; then checks that they left
/// no task folder behind.
///
/// The local transport starts its workers by running the current executable again with
/// the same arguments; for a doc test marked `standalone_crate` that is the test's own
/// binary, so the workers serve the block as they serve a user's program.
///
/// A block that waits for a message that cannot come (the README's example did, with one
/// worker) would hang the tests, so the run has a deadline.
fn guide_blocks(workers: usize) -> Result<()> {
    let scratch = Scratch::new()?;
    let project = scratch
        .project
        .to_str()
        .context("the scratch folder's path is not UTF-8")?;
    // Cargo already gives rustdoc a `--test-run-directory` (the package's folder), which
    // cannot be given twice; so each doc test binary starts through `env --chdir`.
    let chdir = format!("--chdir={project}");
    let flags = [
        "--cfg",
        "parvm_doc_env",
        "--test-runtool",
        "env",
        "--test-runtool-arg",
        &chdir,
    ]
    .join("\x1f");
    let mut command = cargo();
    command
        .args(["test", "--quiet", "-p", "parvm", "--doc"])
        .env("CARGO_ENCODED_RUSTDOCFLAGS", flags)
        .env("PARVM_WORKERS", workers.to_string())
        .env_remove("RUSTDOCFLAGS");
    scratch.apply_env(&mut command);
    exec_within(&mut command, GUIDE_DEADLINE)?;
    scratch.check_clean()
}

/// How long building and running the code blocks may take; the build of the blocks is
/// most of it.
const GUIDE_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Runs a command in a process group of its own, killing the whole group (cargo, rustdoc,
/// the test binaries and their workers) when it is not done by `limit`.
fn exec_within(command: &mut Command, limit: Duration) -> Result<()> {
    let description = format!("{command:?}");
    std::os::unix::process::CommandExt::process_group(command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {description}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{description} failed ({status})");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            bail!(
                "{description} did not finish within {limit:?}; a code block may wait for a message that cannot come"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Entry point of `cargo xtask test`; `--guide` runs only the code blocks of README.md and
/// docs/ (with one and two workers) and the docs build.
pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|arg| arg == "--guide") {
        step("every variable of parvm_env_config::vars has a row in docs/configuration.md");
        variables_documented()?;
        step("docs build, -D warnings (broken links included), public and private items");
        docs_build()?;
        for workers in [1, 2] {
            step(&format!(
                "code blocks of README.md and docs/, {workers} worker slot(s)"
            ));
            guide_blocks(workers)?;
        }
        println!("xtask test --guide: all checks passed");
        return Ok(());
    }
    let with_mpi = on_path("mpirun");
    if !with_mpi {
        println!(
            "xtask test: mpirun not found, SKIPPING the MPI tests \
             (install openmpi-bin libopenmpi-dev libclang-dev, or run .ci/run, to include them)"
        );
    }
    run_all(with_mpi)?;
    println!(
        "xtask test: all checks passed{}",
        if with_mpi { " (MPI included)" } else { "" }
    );
    Ok(())
}

fn step(name: &str) {
    println!("\n== xtask test: {name} ==");
}
