//! Integration tests of parvm-vm. The behaviour suite runs on every backend; faults that
//! need real processes run on the local backend, and under `mpirun` with the `mpi` feature.

#[path = "../../src/bin/parvm-vm-testprog/tasks.rs"]
mod tasks;

// Declared first: the suites' macros are in scope in the modules after it.
#[macro_use]
mod suite;

mod behaviour;
mod clean;
mod dispatch;
mod dispatch_faults;
mod forward;
mod harness;
mod hosts;
mod leftovers;
mod logs;
mod mirrorcheck;
#[cfg(feature = "mpi")]
mod mpirun;
mod nohang;
mod output;
mod processes;
mod replace;
mod returns;
mod selection;
mod ship;
mod stop;
mod unprivileged;
mod variables;

/// Without the `mpi` feature the MPI suite is not compiled; say so instead of passing
/// silently.
#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_suite_needs_the_mpi_feature() {
    eprintln!(
        "SKIPPING the MPI suite: built without the `mpi` feature (run `cargo test -p parvm-vm --features mpi`)"
    );
}
