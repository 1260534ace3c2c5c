//! `--timeout`: a fixed duration, or `P%` of the median runtime of the cases that
//! succeeded so far, kept in bounded memory whatever the number of cases.
//!
//! It owns reading the flag and the running median; it must not know how a limit is
//! applied to a case.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::RunError;

/// Successful cases needed before a `P%` limit applies: the median of fewer is noise.
pub const MEDIAN_AFTER: u64 = 3;

/// Width of a median bucket: runtimes within 1% of each other share one, so the median
/// is exact to 1% and the buckets stay few (about 2 300 from a microsecond to a day).
const BUCKET_RATIO: f64 = 1.01;

/// A `--timeout` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Every case gets this limit.
    Fixed(Duration),
    /// A case gets this percentage of the median runtime of the cases that succeeded
    /// before it was handed out, once [`MEDIAN_AFTER`] did; before, no limit.
    OfMedian(f64),
}

impl Limit {
    /// Reads `10s`, `500ms`, `2m`, `1h`, `1d`, `1.5` (seconds) or `P%`.
    ///
    /// # Errors
    /// Anything else, a zero duration, or a percentage that is not above 0.
    pub fn parse(text: &str) -> Result<Limit, RunError> {
        let bad = || RunError::Duration {
            text: text.to_owned(),
        };
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.parse::<f64>() {
                Ok(percent) if percent > 0.0 && percent.is_finite() => Ok(Limit::OfMedian(percent)),
                _ => Err(bad()),
            };
        }
        let digits = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "" | "s" => number,
            "ms" => number / 1000.0,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            "d" => number * 86_400.0,
            _ => return Err(bad()),
        };
        Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Limit::Fixed)
            .ok_or_else(bad)
    }
}

/// The median of the runtimes recorded so far, to 1%, in memory that does not grow with
/// their number.
#[derive(Debug, Default)]
pub struct Median {
    /// Runtimes by bucket (see [`BUCKET_RATIO`]).
    buckets: BTreeMap<u32, u64>,
    count: u64,
}

impl Median {
    /// Records one runtime.
    pub fn record(&mut self, runtime: Duration) {
        *self.buckets.entry(bucket(runtime)).or_default() += 1;
        self.count += 1;
    }

    /// The median (the lower one of an even count), once [`MEDIAN_AFTER`] runtimes were
    /// recorded.
    pub fn get(&self) -> Option<Duration> {
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
    pub fn limit(&self, percent: f64) -> Option<Duration> {
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
    fn limits_are_durations_or_percentages() {
        for (text, ms) in [
            ("10s", 10_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1.5", 1500),
        ] {
            assert_eq!(
                Limit::parse(text).unwrap(),
                Limit::Fixed(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(Limit::parse("250%").unwrap(), Limit::OfMedian(250.0));
        for text in ["", "s", "10x", "-1s", "0", "0%", "%", "-5%", "x%"] {
            assert!(Limit::parse(text).is_err(), "{text}");
        }
    }

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
