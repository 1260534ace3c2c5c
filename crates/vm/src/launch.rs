//! How a process of the program takes its part: a worker serves spawn requests and exits;
//! under `mpirun` rank 0 becomes the spawner and the other ranks serve.
//!
//! It must not know how the spawner's runtime chooses or configures a transport (that is
//! [`crate::runtime::RuntimeBuilder`]) nor what a worker does with a request.

use parvm_env_config::Config;
use parvm_transport::Transport;

use crate::{Error, LeaveRequest, Tasks, Worker, WorkerEnd};

/// What asks a worker process to leave in order ([`Worker::leave_on`]).
#[derive(Clone, Copy)]
pub(crate) enum LeaveOn {
    /// SIGTERM, SIGINT or SIGHUP: a worker that joined over TCP, started by hand or by a
    /// batch system, which asks it to leave with a signal.
    Signals,
    /// Its spawner's death alone ([`SPAWNER_GONE_SIGNAL`]): a local worker, whose other
    /// signals are its spawner's to act on.
    ///
    /// [`SPAWNER_GONE_SIGNAL`]: parvm_transport::local::SPAWNER_GONE_SIGNAL
    SpawnerDeath,
}

/// Runs the spawn loop in this worker process and exits the process; `leave_on` asks it
/// to leave ([`Worker::leave_on`]), and it then ends by that signal.
pub(crate) fn serve_and_exit(
    tasks: Tasks,
    config: Config,
    transport: Box<dyn Transport>,
    leave_on: LeaveOn,
) -> ! {
    let mut worker = Worker::new(tasks, config).capture_output(true);
    let request = match leave_on {
        LeaveOn::Signals => LeaveRequest::on_signals(),
        LeaveOn::SpawnerDeath => LeaveRequest::on(&[parvm_transport::local::SPAWNER_GONE_SIGNAL])
            .map(LeaveRequest::with_the_connection_end),
    };
    match request {
        Ok(request) => worker = worker.leave_on(request),
        Err(e) => tracing::warn!(error = %e, "this worker cannot leave cleanly"),
    }
    let code = match worker.serve_to_end(transport) {
        Ok(WorkerEnd::Left { signal, .. }) => crate::leave::end_by_signal(signal),
        Ok(_) => 0,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            1
        }
    };
    std::process::exit(code);
}

/// MPI: every rank other than 0 serves `tasks` and exits; rank 0 gets the transport, to
/// become the spawner.
#[cfg(feature = "mpi")]
pub(crate) fn start_mpi(tasks: &Tasks, config: &Config) -> Result<Box<dyn Transport>, Error> {
    let transport = parvm_transport::mpi::MpiTransport::init()
        .map_err(|e| Error::transport("mpi", e))?
        .leave_on_drop(true);
    if transport.rank() != 0 {
        // The output-forwarding thread keeps its handle on the transport until the
        // process ends, but MPI must be finalised before that: the worker serves through
        // a handle that can be closed under it.
        let closable = parvm_transport::mpi::Closable::new(transport);
        let code = match Worker::new(tasks.clone(), config.clone())
            .capture_output(true)
            .serve(Box::new(closable.clone()))
        {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "worker failed");
                1
            }
        };
        closable.close();
        std::process::exit(code);
    }
    let peers = transport.peers();
    for peer in &peers {
        tracing::info!(rank = peer.rank, host = %peer.host, "mpi rank");
    }
    if peers.len() < 2 {
        tracing::warn!(
            "mpi: this job has a single rank, so there are no workers; start it with `mpirun -n <1 + workers>`"
        );
    }
    Ok(Box::new(transport))
}

/// MPI without the `mpi` feature: a clear error instead of N independent spawners.
#[cfg(not(feature = "mpi"))]
pub(crate) fn start_mpi(_tasks: &Tasks, _config: &Config) -> Result<Box<dyn Transport>, Error> {
    let why = match parvm_transport::launcher::launch_size() {
        Some(size) => format!("this process was started by mpirun ({size} ranks)"),
        None => "PARVM_TRANSPORT=mpi asks for it".to_owned(),
    };
    Err(Error::Setting {
        setting: "transport",
        reason: format!(
            "the MPI transport is not built into this program but {why}; build it with `--features mpi` (the `mpi` feature of parvm or parvm-vm), or set PARVM_TRANSPORT=local or tcp"
        ),
    })
}
