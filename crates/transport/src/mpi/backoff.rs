//! How an MPI `recv` waits without a core: spin, then sleep with doubling pauses
//! ([`Backoff`]); see "Waiting costs no core" in the module docs of `mpi`.
//!
//! Owns the spin and sleep schedule. Must not know MPI.

use std::time::{Duration, Instant};

/// The longest sleep between two probes of an idle `recv`: the worst added latency of a
/// message that arrives while the receiver sleeps (plus the timer slack).
pub const MAX_SLEEP: Duration = Duration::from_millis(1);

/// How many probes the spin makes between two readings of the clock.
const SPINS_PER_CLOCK_READ: u32 = 16;

/// The first sleep after the spin; each later sleep doubles, up to [`MAX_SLEEP`].
const FIRST_SLEEP: Duration = Duration::from_micros(20);

/// Spin first, then sleep with doubling pauses up to [`MAX_SLEEP`]. The clock is first
/// read after [`SPINS_PER_CLOCK_READ`] spins, so a message that is already there costs no
/// clock reading.
pub(super) struct Backoff {
    spin: Duration,
    spin_until: Option<Instant>,
    sleep: Duration,
    /// Probes since the clock was last read: reading it on every probe would cost more
    /// than the probe.
    spins: u32,
}

impl Backoff {
    pub(super) fn new(spin: Duration) -> Self {
        Backoff {
            spin,
            spin_until: None,
            sleep: FIRST_SLEEP,
            spins: 0,
        }
    }

    /// Whether the last [`Backoff::next`] read the clock (and so the caller may check its
    /// own deadline at no extra cost).
    pub(super) fn just_read_clock(&self) -> bool {
        self.spins == 0
    }

    /// `None` while spinning, else how long to sleep before the next probe.
    pub(super) fn next(&mut self) -> Option<Duration> {
        if self.spins < SPINS_PER_CLOCK_READ {
            self.spins += 1;
            return None;
        }
        let now = Instant::now();
        let spin_until = *self
            .spin_until
            .get_or_insert_with(|| now.checked_add(self.spin).unwrap_or(now));
        if now < spin_until {
            self.spins = 0;
            return None;
        }
        let sleep = self.sleep;
        self.sleep = sleep.saturating_mul(2).min(MAX_SLEEP);
        Some(sleep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_spins_then_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::ZERO);
        let sleeps: Vec<Duration> = (0..10 + SPINS_PER_CLOCK_READ)
            .filter_map(|_| backoff.next())
            .collect();
        assert_eq!(sleeps.len(), 10);
        assert_eq!(sleeps[0], FIRST_SLEEP);
        assert_eq!(sleeps[1], FIRST_SLEEP * 2);
        assert!(sleeps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(sleeps[9], MAX_SLEEP);
    }

    #[test]
    fn backoff_spins_first() {
        let mut backoff = Backoff::new(Duration::from_secs(3600));
        assert_eq!(backoff.next(), None);
    }
}
