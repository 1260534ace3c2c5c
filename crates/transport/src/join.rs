//! How a process a launcher started as a worker finds out, and joins: the local
//! backend's variables, or an MPI launcher's rank. The crate root re-exports both
//! functions, so the root itself calls no backend.
//!
//! It must not know TCP (a TCP worker is told where to connect by its program).

#[cfg(feature = "mpi")]
use crate::mpi;
#[cfg(doc)]
use crate::tcp;
use crate::{Error, Transport, launcher, local};

/// Whether a launcher started this process as a worker, judged from what the launcher set
/// without joining (so a program can set up logging first): the local backend's
/// `PARVM_LOCAL_SOCKET`, or an MPI launcher's rank other than 0 (see
/// [`launcher::launch_rank`]). Needs no `mpi` feature. A TCP worker is one whose program
/// was told where the spawner listens (the VM: `PARVM_CONNECT`); this crate does not read
/// that.
#[must_use]
pub fn started_as_worker() -> bool {
    std::env::var_os(local::SOCKET_VAR).is_some()
        || launcher::launch_rank().is_some_and(|rank| rank != 0)
}

/// Joins the virtual machine when a launcher started this process as a worker.
///
/// Tries, in order: the local backend (`PARVM_LOCAL_SOCKET` set by
/// [`local::LocalTransport::launch`]), then, with the `mpi` feature, MPI (a rank other than
/// 0 under `mpirun`; see `mpi::worker_from_env`). Returns `Ok(None)` when this process is
/// not such a worker: the spawner, or a TCP worker, which joins with
/// [`tcp::TcpTransport::connect_with`].
///
/// # Errors
/// The variables of a backend are set but joining fails; see [`local::worker_from_env`].
pub fn worker_from_env() -> Result<Option<Box<dyn Transport>>, Error> {
    if let Some(worker) = local::worker_from_env()? {
        return Ok(Some(Box::new(worker)));
    }
    // MPI: a rank other than 0 of an `mpirun` launch (unless PARVM_TRANSPORT names
    // another backend).
    #[cfg(feature = "mpi")]
    if let Some(worker) = mpi::worker_from_env()? {
        return Ok(Some(Box::new(worker)));
    }
    Ok(None)
}
