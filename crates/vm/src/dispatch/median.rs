//! The running median of the jobs' runtimes, for [`Dispatch::timeout_of_median`], kept
//! to 1% in memory that does not grow with the number of jobs.
//!
//! Plain arithmetic; it must not know how a limit is applied to a job.
//!
//! [`Dispatch::timeout_of_median`]: super::Dispatch::timeout_of_median

use std::collections::BTreeMap;
use std::time::Duration;

/// Runtimes needed before the median is given: the median of fewer is noise.
pub(crate) const MEDIAN_AFTER: u64 = 3;

/// Width of a median bucket: runtimes within 1% of each other share one, so the median
/// is exact to 1% and the buckets stay few (about 2 300 from a microsecond to a day).
const BUCKET_RATIO: f64 = 1.01;

/// The median of the runtimes recorded so far, to 1%, in memory that does not grow with
/// their number.
#[derive(Debug, Default)]
pub(crate) struct Median {
    /// Runtimes by bucket (see [`BUCKET_RATIO`]).
    buckets: BTreeMap<u32, u64>,
    count: u64,
}

impl Median {
    /// Records one runtime.
    pub(crate) fn record(&mut self, runtime: Duration) {
        *self.buckets.entry(bucket(runtime)).or_default() += 1;
        self.count += 1;
    }

    /// The median (the lower one of an even count), once [`MEDIAN_AFTER`] runtimes were
    /// recorded.
    pub(crate) fn get(&self) -> Option<Duration> {
        if self.count < MEDIAN_AFTER {
            return None;
        }
        let middle = self.count.div_ceil(2);
        let mut seen = 0;
        for (&bucket, &count) in &self.buckets {
            seen += count;
            if seen >= middle {
                return Some(runtime(bucket));
            }
        }
        None
    }

    /// The limit `percent` of the median gives, when there is a median.
    pub(crate) fn limit(&self, percent: f64) -> Option<Duration> {
        self.get()
            .and_then(|median| {
                Duration::try_from_secs_f64(median.as_secs_f64() * percent / 100.0).ok()
            })
            .map(|limit| limit.max(Duration::from_millis(1)))
    }
}

/// The bucket of a runtime: 0 for under a microsecond, else 1 + its logarithm in
/// [`BUCKET_RATIO`] steps.
fn bucket(runtime: Duration) -> u32 {
    let micros = runtime.as_secs_f64() * 1e6;
    if micros < 1.0 {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the logarithm of a positive duration in microseconds is below 10^4"
    )]
    let step = (micros.ln() / BUCKET_RATIO.ln()).round() as u32;
    step + 1
}

/// The runtime a bucket stands for.
fn runtime(bucket: u32) -> Duration {
    match bucket {
        0 => Duration::ZERO,
        step => Duration::from_secs_f64(BUCKET_RATIO.powf(f64::from(step - 1)) / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn no_median_before_three_runtimes() {
        let mut median = Median::default();
        for ms in [10, 30] {
            median.record(Duration::from_millis(ms));
            assert_eq!(median.limit(200.0), None);
        }
        median.record(Duration::from_millis(20));
        let limit = median.limit(200.0).unwrap();
        assert!(limit.abs_diff(Duration::from_millis(40)) < Duration::from_micros(400));
    }

    proptest! {
        /// The median is the middle runtime (the lower of two), to 1%.
        #[test]
        fn median_is_within_one_percent(runtimes in proptest::collection::vec(1u64..10_000_000_000, 3..60)) {
            let mut median = Median::default();
            for &nanos in &runtimes {
                median.record(Duration::from_nanos(nanos));
            }
            let mut sorted = runtimes.clone();
            sorted.sort_unstable();
            let exact = Duration::from_nanos(sorted[sorted.len().div_ceil(2) - 1]).as_secs_f64();
            let got = median.get().unwrap().as_secs_f64();
            // Below a microsecond everything shares bucket 0.
            prop_assert!((got - exact).abs() <= exact * 0.006 + 1e-6, "{got} vs {exact}");
        }
    }
}
