//! `--timeout`: a fixed duration, or `P%` of the median runtime of the cases that
//! succeeded so far (which the dispatch keeps and applies).
//!
//! It owns reading the flag; it must not know how a limit is applied to a case.

use std::time::Duration;

use super::error::RunError;

/// A `--timeout` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Every case gets this limit.
    Fixed(Duration),
    /// A case is stopped past this percentage of the median runtime of the cases that
    /// succeeded so far (`Dispatch::timeout_of_median`).
    OfMedian(f64),
}

impl Limit {
    /// Reads `10s`, `500ms`, `2m`, `1h`, `1d`, `1.5` (seconds) or `P%`; a zero duration or
    /// percentage (`0`, `0s`, `0%`) is no limit, as in GNU parallel.
    ///
    /// # Errors
    /// Anything else: a negative or unreadable number, an unknown unit.
    pub fn parse(text: &str) -> Result<Option<Limit>, RunError> {
        let bad = || RunError::Duration {
            text: text.to_owned(),
        };
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.parse::<f64>() {
                Ok(0.0) => Ok(None),
                Ok(percent) if percent > 0.0 && percent.is_finite() => {
                    Ok(Some(Limit::OfMedian(percent)))
                }
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
        let limit = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        Ok((!limit.is_zero()).then_some(Limit::Fixed(limit)))
    }
}

#[cfg(test)]
mod tests {
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
                Some(Limit::Fixed(Duration::from_millis(ms))),
                "{text}"
            );
        }
        assert_eq!(Limit::parse("250%").unwrap(), Some(Limit::OfMedian(250.0)));
        // No limit, as GNU parallel takes `--timeout 0`.
        for text in ["0", "0s", "0.0", "0%"] {
            assert_eq!(Limit::parse(text).unwrap(), None, "{text}");
        }
        for text in ["", "s", "10x", "-1s", "%", "-5%", "x%"] {
            assert!(Limit::parse(text).is_err(), "{text}");
        }
    }
}
