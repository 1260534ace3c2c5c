//! Dispatch over MPI: 100 000 no-op jobs through `Vm::dispatch`, against the plain spawn
//! loop in the same run (`cargo xtask bench dispatch --transport mpi`). Started without
//! mpirun, it runs itself under `mpirun --oversubscribe -n 2`: rank 0 is the spawner,
//! rank 1 the worker.

mod common;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use parvm_transport::Transport;
use parvm_transport::mpi::MpiTransport;
use parvm_vm::{Config, Job, Runtime, TaskContext, Tasks, Vm, Worker};

use common::{Res as Result, rate, spawn_loop};

fn tasks() -> Tasks {
    Tasks::new().register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
}

fn main() -> ExitCode {
    common::mpi_main("dispatch_mpi", run)
}

fn run() -> Result<()> {
    let storage = tempfile::tempdir()?;
    let config = Config::builder()
        .local_root(storage.path())
        .mirrored_roots([storage.path()])
        .build()?;
    let transport = MpiTransport::init()?.leave_on_drop(true);
    if transport.rank() != 0 {
        Worker::new(tasks(), config).serve(Box::new(transport))?;
        return Ok(());
    }
    let workers = transport.size() - 1;
    let runtime = Runtime::from_transport(Box::new(transport), tasks(), config)?;
    let vm = runtime.vm().local_folder(false).build()?;
    let total = 100_000u64;
    spawn_loop(&vm, 5_000)?;
    let plain = spawn_loop(&vm, total)?;
    let ordered = dispatch(&vm, total)?;
    println!("{total} no-op jobs over MPI, {workers} worker rank(s), Open MPI shared memory:");
    println!("  plain spawn loop (baseline) : {}", rate(total, plain));
    println!(
        "  dispatch, job order         : {}  {:5.2}x the spawn loop's rate (target >= 250 000 jobs/s)",
        rate(total, ordered),
        plain.as_secs_f64() / ordered.as_secs_f64()
    );
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn dispatch(vm: &Vm, total: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut seen = 0u64;
    for result in vm.dispatch((0..total).map(|_| Job::task("noop", &()))) {
        let result = result?;
        if !result.outcome.is_success() {
            return Err(format!("{result}").into());
        }
        seen += 1;
    }
    if seen != total {
        return Err(format!("{seen} results for {total} jobs").into());
    }
    Ok(start.elapsed())
}
