//! A worker asked to leave from outside its spawn loop, as a batch system's SIGTERM or a
//! user's Ctrl-C asks a worker started by hand. Leaving gives the running task back to the
//! spawner (its case runs on another worker), removes the worker's task folders, tells the
//! spawner why, and ends the process by the signal that asked for it.
//!
//! It owns the request and the signal handlers that set it; what leaving does is the spawn
//! loop's (`crate::worker`), how a stopped command ends is its supervisor's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::Error;

/// The signals a worker leaves on, unless it was started ignoring them.
pub const LEAVE_SIGNALS: [i32; 3] = [SIGTERM, SIGINT, SIGHUP];

/// How long after the signal that asked a worker to leave another one ends it at once;
/// until then, another is the same request arriving twice.
pub const REPEAT_AFTER: Duration = Duration::from_secs(1);

/// A request that a worker leave, shared between whoever asks (a signal handler) and the
/// worker's spawn loop ([`Worker::leave_on`](crate::Worker::leave_on)).
#[derive(Debug, Clone, Default)]
pub struct LeaveRequest {
    /// The signal number that asked, or 0 while none did.
    signal: Arc<AtomicUsize>,
    /// Made only as the worker's connection ends ([`with_the_connection_end`](
    /// Self::with_the_connection_end)), so an idle worker need not look for it.
    with_connection_end: bool,
}

impl LeaveRequest {
    /// A request nobody has made yet; [`request`](Self::request) makes it.
    #[must_use]
    pub fn new() -> LeaveRequest {
        LeaveRequest::default()
    }

    /// A request made by SIGTERM, SIGINT or SIGHUP, each caught from now on in this
    /// process unless it was started ignoring it (as `nohup` starts a program ignoring
    /// SIGHUP: it keeps ignoring it). A signal that comes [`REPEAT_AFTER`] or more after
    /// the first ends the process at once, by that signal (the running command's
    /// supervisor then stops it): for a worker that does not answer. Sooner, it is taken
    /// as the same request, since one signal may arrive twice: sent to every process of a
    /// job (a batch system, systemd) and forwarded by a parent (`parvm worker --slots`).
    ///
    /// Install it once per process: each call adds handlers and a thread that waits for
    /// them.
    ///
    /// # Errors
    /// A handler or its thread cannot be installed ([`Error::Signal`]).
    pub fn on_signals() -> Result<LeaveRequest, Error> {
        LeaveRequest::on(&LEAVE_SIGNALS)
    }

    /// [`on_signals`](Self::on_signals) for the signals `signals` instead: a local
    /// worker leaves on the signal its spawner's death sends it
    /// ([`parvm_transport::local::SPAWNER_GONE_SIGNAL`]) and on no other, since the
    /// signals of a terminal or a batch system are its spawner's to act on. Only SIGTERM,
    /// SIGINT and SIGHUP stay ignored when the process was started ignoring them (a
    /// user's choice, as with `nohup`); any other is caught even then, since only the
    /// kernel sends it, as the worker asked.
    ///
    /// # Errors
    /// As [`on_signals`](Self::on_signals).
    pub fn on(signals: &[i32]) -> Result<LeaveRequest, Error> {
        let caught: Vec<i32> = signals
            .iter()
            .copied()
            .filter(|&signal| !(LEAVE_SIGNALS.contains(&signal) && ignored_by_this_process(signal)))
            .collect();
        let names = || {
            let names: Vec<String> = caught.iter().map(|&s| signal_name(s)).collect();
            names.join(", ")
        };
        let failed = |source| Error::Signal {
            signal: names(),
            source,
        };
        let mut signals = signal_hook::iterator::Signals::new(&caught).map_err(failed)?;
        let request = LeaveRequest::new();
        let asked = request.clone();
        std::thread::Builder::new()
            .name("parvm-leave".to_owned())
            .spawn(move || {
                let mut first: Option<Instant> = None;
                for signal in signals.forever() {
                    match first {
                        None => {
                            first = Some(Instant::now());
                            asked.request(signal);
                        }
                        Some(at) if at.elapsed() >= REPEAT_AFTER => end_by_signal(signal),
                        Some(_) => {}
                    }
                }
            })
            .map_err(failed)?;
        Ok(request)
    }

    /// This request is made only as the worker's connection to its spawner ends: the
    /// signal a local worker gets when its spawner dies
    /// ([`parvm_transport::local::SPAWNER_GONE_SIGNAL`]). The end of the connection wakes
    /// an idle worker by itself, so it waits for its next message without looking for the
    /// request now and then, which would cost two system calls per message.
    #[must_use]
    pub fn with_the_connection_end(mut self) -> LeaveRequest {
        self.with_connection_end = true;
        self
    }

    /// Whether an idle worker must look for this request now and then (it may come while
    /// the spawner still talks to the worker).
    pub(crate) fn looked_for_while_idle(&self) -> bool {
        !self.with_connection_end
    }

    /// Asks the worker to leave, as signal `signal` would.
    pub fn request(&self, signal: i32) {
        self.signal.store(
            usize::try_from(signal).unwrap_or(1).max(1),
            Ordering::SeqCst,
        );
    }

    /// The signal that asked the worker to leave, once one did.
    #[must_use]
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => i32::try_from(signal).ok(),
        }
    }
}

/// `SIGTERM` for 15; `signal 77` for a number without a name here.
#[must_use]
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}

/// Ends this process by `signal`, with its default action, as if the signal had never
/// been caught, so that whoever waits for the process sees it killed by that signal; exits
/// with status 128 + `signal` should the signal not end it.
pub fn end_by_signal(signal: i32) -> ! {
    // Restores the default action and raises the signal again.
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal)
}

/// Whether this process ignores `signal` (`SigIgn` of `/proc/self/status`: bit n-1 is
/// signal n), as a program started in the background by a script ignores SIGINT, or one
/// started by `nohup` SIGHUP. True when that cannot be read: keeping a signal ignored is
/// the cautious choice.
#[must_use]
pub fn ignored_by_this_process(signal: i32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ignored = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
    let Some(bit) = u32::try_from(signal - 1)
        .ok()
        .and_then(|n| 1u64.checked_shl(n))
    else {
        return true;
    };
    ignored.is_none_or(|mask| mask & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_signal() {
        let request = LeaveRequest::new();
        assert_eq!(request.signal(), None);
        let shared = request.clone();
        shared.request(SIGTERM);
        assert_eq!(request.signal(), Some(SIGTERM));
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
        assert_eq!(signal_name(200), "signal 200");
    }

    #[test]
    fn an_ignored_signal_is_seen_as_ignored() {
        assert!(!ignored_by_this_process(SIGTERM));
        assert!(ignored_by_this_process(0));
        assert!(ignored_by_this_process(99));
    }
}
