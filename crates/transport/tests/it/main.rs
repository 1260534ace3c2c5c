//! Integration tests of parvm-transport.

mod local;
#[cfg(feature = "mpi")]
mod mpi;
mod replace;
mod tcp;

use std::time::{Duration, Instant};

use parvm_transport::{Event, Rank, Transport, Wait};

/// The echo worker built from `src/bin/parvm-transport-echo.rs`.
pub const ECHO: &str = env!("CARGO_BIN_EXE_parvm-transport-echo");

/// Generous, so a loaded machine does not fail the tests; nothing waits this long when
/// things work.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for the next event, failing the test after [`PATIENCE`].
pub fn next_event(transport: &dyn Transport) -> Event {
    match transport.recv(Wait::For(PATIENCE)) {
        Ok(Some(event)) => event,
        other => panic!("no event within {PATIENCE:?}: {other:?}"),
    }
}

/// Sends `payload` to `rank` and returns its answer.
pub fn ask(transport: &dyn Transport, rank: Rank, payload: &[u8]) -> Vec<u8> {
    transport.send(rank, payload).unwrap();
    match next_event(transport) {
        Event::Message { from, payload } if from == rank => payload,
        other => panic!("expected an answer from rank {rank}, got {other:?}"),
    }
}

/// Sends a text command and returns the answer as text.
pub fn ask_text(transport: &dyn Transport, rank: Rank, text: &str) -> String {
    String::from_utf8(ask(transport, rank, text.as_bytes())).unwrap()
}

/// Whether process `pid` is gone (no such process, or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits until `done` holds, failing the test after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(1);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Kills processes by pid when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if !process_gone(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
