//! The local backend's worker side: joining the spawner from the variables it set
//! ([`worker_from_env`](super::worker_from_env)), with the hello that proves this process
//! is one it started.
//!
//! Owns reading and checking those variables. Must not know how the spawner starts or
//! watches its workers (`spawner`).

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::options::{
    HOSTNAME_VAR, MAX_FRAME_VAR, RANK_VAR, SOCKET_VAR, SPAWNER_GONE_SIGNAL, SPAWNER_HOST_VAR,
    SPAWNER_PID_VAR, SPIN_US_VAR, TOKEN_VAR,
};
use crate::star::{Client, Stream};
use crate::{Error, Rank, frame};

fn env_var(var: &'static str) -> Result<String, Error> {
    match std::env::var_os(var) {
        None => Err(Error::BadWorkerEnv {
            var,
            value: String::new(),
            reason: format!(
                "it is missing while {SOCKET_VAR} is set; start workers with `LocalTransport::launch`"
            ),
        }),
        Some(value) => value.into_string().map_err(|value| Error::BadWorkerEnv {
            var,
            value: value.to_string_lossy().into_owned(),
            reason: "it is not UTF-8".into(),
        }),
    }
}

fn parse_var<T: std::str::FromStr>(var: &'static str) -> Result<T, Error>
where
    T::Err: fmt::Display,
{
    let value = env_var(var)?;
    value.parse().map_err(|err: T::Err| Error::BadWorkerEnv {
        var,
        value: value.clone(),
        reason: err.to_string(),
    })
}

/// The first frame a worker sends.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    pub(super) token: String,
    pub(super) rank: Rank,
    pub(super) host: String,
    pub(super) pid: u32,
}

/// Joins the spawner from the variables it set; see [`worker_from_env`](super::worker_from_env).
pub(super) fn join_from_env() -> Result<Option<Client>, Error> {
    let Some(socket) = std::env::var_os(SOCKET_VAR) else {
        return Ok(None);
    };
    let socket = PathBuf::from(socket);
    let rank: Rank = parse_var(RANK_VAR)?;
    let token = env_var(TOKEN_VAR)?;
    let spawner_pid: u32 = parse_var(SPAWNER_PID_VAR)?;
    let spawner_host = env_var(SPAWNER_HOST_VAR)?;
    let max_frame: u64 = parse_var(MAX_FRAME_VAR)?;
    let spin_window = Duration::from_micros(parse_var(SPIN_US_VAR)?);
    if rank == 0 {
        return Err(Error::BadWorkerEnv {
            var: RANK_VAR,
            value: "0".into(),
            reason: "rank 0 is the spawner; workers have ranks from 1".into(),
        });
    }
    // Set the death signal first, then check the parent: if the spawner died before the
    // signal was armed, the parent is no longer the spawner and we stop here.
    let gone = Signal::try_from(SPAWNER_GONE_SIGNAL).unwrap_or(Signal::SIGKILL);
    nix::sys::prctl::set_pdeathsig(gone).map_err(|errno| Error::Io {
        backend: "local",
        what: "ask for a signal when the spawner dies (prctl PR_SET_PDEATHSIG)".into(),
        source: errno.into(),
    })?;
    let parent = nix::unistd::getppid().as_raw() as u32;
    if parent != spawner_pid {
        return Err(Error::NotSpawnerChild {
            expected: spawner_pid,
            actual: parent,
        });
    }
    // Set by the spawner for this worker alone (see `HOSTNAME_VAR`); empty counts as unset,
    // as it always did.
    let host = Some(env_var(HOSTNAME_VAR)?)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(crate::system_host);
    let join_err = |source| Error::Join {
        rank,
        socket: socket.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&socket).map_err(join_err)?;
    let hello = Hello {
        token,
        rank,
        host: host.clone(),
        pid: std::process::id(),
    };
    let hello = rmp_serde::to_vec(&hello).map_err(|e| join_err(io::Error::other(e)))?;
    frame::write_frame(&mut stream, &hello).map_err(join_err)?;
    let client = Client::new(
        "local",
        rank,
        host,
        spawner_host,
        max_frame,
        Stream::Unix(stream),
    )
    .map_err(join_err)?
    .with_spin_window(spin_window);
    Ok(Some(client))
}
