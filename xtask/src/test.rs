//! `cargo xtask test`: the checks that keep main landable.

use anyhow::Result;

use crate::{cargo, exec, on_path};

/// Runs the fmt check, clippy with `-D warnings`, and every test; the MPI tests too when
/// `mpirun` is on the PATH.
pub fn run_all(with_mpi: bool) -> Result<()> {
    step("format check");
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
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
    // Plain `cargo test` runs unit, integration and doc tests and builds the examples;
    // `--all-targets` would also run the benchmarks, which are not tests.
    step("tests");
    exec(cargo().args(["test", "--workspace"]))?;
    if with_mpi {
        step("MPI tests");
        exec(cargo().args([
            "test",
            "-p",
            "parvm-transport",
            "-p",
            "parvm-vm",
            "--features",
            "parvm-transport/mpi,parvm-vm/mpi",
        ]))?;
    }
    Ok(())
}

/// Entry point of `cargo xtask test`.
pub fn run(_args: &[String]) -> Result<()> {
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
