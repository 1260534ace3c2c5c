//! How a waiter waits: an adaptive spin before it sleeps ([`Spin`]), and the sleeping
//! waits on a socket (`poll`) and on the hub's channel.
//!
//! Owns the heuristics that turn spinning off and back on. The window itself is an option
//! of each backend (the VM passes `PARVM_SPIN_US` from its configuration). Must not know
//! frames, connections, backends or the environment: it only waits for "ready".

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{Event, Wait};

/// How long a waiting `recv` polls before it sleeps unless its backend's options say
/// otherwise: waking a sleeping process costs more than a quick reply takes to come.
pub const DEFAULT_SPIN_WINDOW: Duration = Duration::from_micros(100);

/// The longest spin window a backend accepts; longer ones are cut to it.
pub const MAX_SPIN_WINDOW: Duration = Duration::from_secs(1);

/// Adaptive spin-then-sleep for one waiter.
///
/// Waking a sleeping process costs tens of microseconds on a virtual machine (the idle
/// vCPU halts and must be woken by the hypervisor), far more than the message it waits
/// for takes to arrive in a ping-pong or a spawn round trip. So a waiter first polls for a
/// short window, yielding the core between polls: a thread woken on the same core (such as
/// the spawner's reader thread, or another worker) runs at once, so spinning never holds
/// back the thread that must produce the message. It spins only while recent waits were
/// short: after a wait longer than twice the window it sleeps at once, so an idle process
/// burns no core. A wait measured while not spinning includes the wake-up (and makes the
/// peer wait longer too), so both ends could stay asleep for good; hence the margin of
/// twice the window, and a probe spin every [`PROBE_EVERY`] waits while spinning is off.
#[derive(Debug)]
pub(crate) struct Spin {
    /// How long a wait spins before it sleeps; zero: never.
    window: Duration,
    on: AtomicBool,
    /// Waits since spinning was turned off.
    off_for: AtomicU32,
}

/// While spinning is off, every this many waits spin anyway, to find out whether the
/// messages have become quick again.
const PROBE_EVERY: u32 = 16;

impl Spin {
    /// A waiter that spins for at most `window` (cut to [`MAX_SPIN_WINDOW`]).
    pub(crate) fn new(window: Duration) -> Spin {
        Spin {
            window: window.min(MAX_SPIN_WINDOW),
            on: AtomicBool::new(true),
            off_for: AtomicU32::new(0),
        }
    }

    /// The window this waiter spins for, so a helper thread can spin as long.
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// Polls `ready` until it yields something, the spin window (counted from `start`)
    /// ends, or `deadline` passes. Does nothing while spinning is off.
    pub(super) fn spin<T>(
        &self,
        start: Instant,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        let window = self.window;
        if window.is_zero() {
            return Ok(None);
        }
        if !self.on.load(Ordering::Relaxed) {
            let off_for = self.off_for.fetch_add(1, Ordering::Relaxed) + 1;
            if !off_for.is_multiple_of(PROBE_EVERY) {
                return Ok(None);
            }
        }
        let until = deadline.map_or(start + window, |d| d.min(start + window));
        loop {
            if let Some(found) = ready()? {
                return Ok(Some(found));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::yield_now();
        }
    }

    /// Remembers how long a wait that started at `start` took (`None`: it timed out).
    pub(super) fn record(&self, start: Option<Instant>) {
        let quick = start.is_some_and(|start| start.elapsed() < 2 * self.window);
        if quick {
            self.off_for.store(0, Ordering::Relaxed);
        }
        self.on.store(quick, Ordering::Relaxed);
    }
}

/// Whether `fd` is readable (or hung up) right now.
pub(super) fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    poll_readable(fd, PollTimeout::ZERO)
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: PollTimeout) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
}

/// Waits until `fd` is readable (or hung up), sleeping in `poll` until `deadline` (`None`:
/// forever). Returns whether it is readable.
pub(super) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return readable_now(fd);
                }
                // Round up to whole milliseconds so a short wait does not turn into a spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                PollTimeout::try_from(Duration::from_millis(ms as u64)).unwrap_or(PollTimeout::MAX)
            }
        };
        if poll_readable(fd, timeout)? {
            return Ok(true);
        }
    }
}

/// Receives from a channel as long as `wait` allows, spinning briefly (see [`Spin`])
/// before sleeping.
pub(super) fn recv_channel(rx: &Receiver<Event>, wait: Wait, spin: &Spin) -> Option<Event> {
    match rx.try_recv() {
        Ok(event) => return Some(event),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    let start = Instant::now();
    let deadline = match wait {
        Wait::NoWait => return None,
        Wait::Forever => None,
        Wait::For(d) => Some(start + d),
    };
    let spun = spin.spin(start, deadline, || match rx.try_recv() {
        Ok(event) => Ok(Some(Some(event))),
        Err(TryRecvError::Disconnected) => Ok(Some(None)),
        Err(TryRecvError::Empty) => Ok(None),
    });
    let event = match spun {
        Ok(Some(event)) => event,
        _ => match deadline {
            None => rx.recv().ok(),
            Some(deadline) => rx.recv_deadline(deadline).ok(),
        },
    };
    spin.record(event.as_ref().map(|_| start));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_turns_off_after_a_long_wait_and_probes_back() {
        let spin = Spin::new(DEFAULT_SPIN_WINDOW);
        let now = Instant::now();
        // Something ready at once is found while spinning is on.
        assert_eq!(spin.spin(now, None, || Ok(Some(1))).unwrap(), Some(1));
        spin.record(None);
        assert!(!spin.on.load(Ordering::Relaxed));
        // Off: most waits do not even look; every PROBE_EVERY-th one does.
        let mut looked = 0;
        for _ in 0..PROBE_EVERY {
            let _ = spin.spin(Instant::now(), None, || {
                looked += 1;
                Ok(Some(()))
            });
        }
        assert_eq!(looked, 1);
        spin.record(Some(Instant::now()));
        assert!(spin.on.load(Ordering::Relaxed));
    }

    #[test]
    fn spinning_stops_at_the_window_or_the_deadline() {
        let spin = Spin::new(DEFAULT_SPIN_WINDOW);
        let start = Instant::now();
        assert_eq!(spin.spin(start, None, || Ok(None::<()>)).unwrap(), None);
        assert!(start.elapsed() >= DEFAULT_SPIN_WINDOW);
        let start = Instant::now();
        let _ = spin.spin(start, Some(start), || Ok(None::<()>));
        assert!(start.elapsed() < DEFAULT_SPIN_WINDOW + Duration::from_millis(50));
    }

    #[test]
    fn a_zero_window_never_polls_and_a_long_one_is_cut() {
        let spin = Spin::new(Duration::ZERO);
        let mut looked = false;
        let found = spin.spin(Instant::now(), None, || {
            looked = true;
            Ok(Some(()))
        });
        assert_eq!(found.unwrap(), None);
        assert!(!looked, "a zero window must not poll");
        assert_eq!(Spin::new(Duration::from_secs(60)).window(), MAX_SPIN_WINDOW);
    }
}
