//! What the VM's benches share: the plain spawn loop they compare against, how a rate is
//! printed, and how an MPI bench reruns itself under mpirun.
//!
//! Each bench binary includes this module (`mod common;`) and uses part of it, so the
//! parts another binary uses would warn as dead code there.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use parvm_vm::{Message, Spawn, Vm};

/// A bench's result: any error, printed by `main`.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The plain spawn loop, the baseline of the dispatch benches: every free slot gets a
/// no-op task (registered as `noop`); each exit frees its slot.
pub fn spawn_loop(vm: &Vm, total: u64) -> Res<Duration> {
    let start = Instant::now();
    let (mut spawned, mut done) = (0u64, 0u64);
    while done < total {
        while spawned < total && vm.free_slots() > 0 {
            spawned += vm.spawn(Spawn::task("noop", &()))?.len() as u64;
        }
        if let Message::TaskExit { .. } = vm.recv()? {
            done += 1;
        }
    }
    Ok(start.elapsed())
}

/// `total` jobs in `took`, as jobs per second and microseconds per job.
pub fn rate(total: u64, took: Duration) -> String {
    format!(
        "{:8.0} jobs/s ({:5.2} us/job)",
        total as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / total as f64
    )
}

/// The `main` of an MPI bench: started without mpirun, it reruns itself under
/// `mpirun --oversubscribe -n 2`; under mpirun it runs `run` on every rank.
#[cfg(feature = "mpi")]
pub fn mpi_main(name: &str, run: fn() -> Res<()>) -> std::process::ExitCode {
    if !parvm_transport::mpi::launched_by_mpirun() {
        return parvm_transport::bench_support::rerun_under_mpirun(name, 2);
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
