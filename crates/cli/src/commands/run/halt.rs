//! `--halt WHEN,WHY=COUNT`: when a sweep stops early, and the exit status it then gives,
//! as GNU parallel defines them.
//!
//! It owns the parsed setting, the counts of cases that decide it, and the exit status of
//! a halted run; it must not know how cases run or how a halt is carried out.

use super::error::RunError;

/// What happens to running cases when the run halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// `soon`: start no new case; running ones finish.
    Soon,
    /// `now`: start no new case and stop the running ones.
    Now,
}

/// Which cases count towards the halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `fail`: cases that failed for good (after their retries).
    Fail,
    /// `success`: cases that succeeded.
    Success,
    /// `done`: cases that ended, either way.
    Done,
}

/// How many cases it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Count {
    /// `N`: this many cases.
    Cases(usize),
    /// `P%`: this percentage of the cases of the run.
    Percent(f64),
}

/// A `--halt` setting other than `never`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    /// What happens to running cases.
    pub when: When,
    /// Which cases count.
    pub why: Why,
    /// How many it takes.
    pub count: Count,
}

impl Halt {
    /// Parses `never` (`None`) or `WHEN,WHY=COUNT`.
    ///
    /// # Errors
    /// Any other form, named with what to give instead.
    pub fn parse(text: &str) -> Result<Option<Halt>, RunError> {
        let bad = |reason: &str| RunError::Halt {
            given: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text == "never" {
            return Ok(None);
        }
        let (when, rest) = text
            .split_once(',')
            .ok_or_else(|| bad("it has no `,` between WHEN and WHY=COUNT"))?;
        let when = match when {
            "soon" => When::Soon,
            "now" => When::Now,
            _ => return Err(bad("WHEN is `soon` or `now`")),
        };
        let (why, count) = rest
            .split_once('=')
            .ok_or_else(|| bad("it has no `=` between WHY and COUNT"))?;
        let why = match why {
            "fail" => Why::Fail,
            "success" => Why::Success,
            "done" => Why::Done,
            _ => return Err(bad("WHY is `fail`, `success` or `done`")),
        };
        let count = match count.strip_suffix('%') {
            Some(percent) => {
                let percent: f64 = percent.parse().map_err(|_| bad("P in `P%` is a number"))?;
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(bad("P in `P%` is above 0 and at most 100"));
                }
                Count::Percent(percent)
            }
            None => match count.parse::<usize>() {
                Ok(cases) if cases > 0 => Count::Cases(cases),
                _ => return Err(bad("COUNT is a number of cases from 1, or `P%`")),
            },
        };
        Ok(Some(Halt { when, why, count }))
    }

    /// Whether the setting needs the number of cases of the run.
    pub fn needs_total(&self) -> bool {
        matches!(self.count, Count::Percent(_))
    }

    /// How many counted cases halt a run of `total` cases: `P%` of them rounded up, at
    /// least 1.
    fn threshold(&self, total: usize) -> usize {
        match self.count {
            Count::Cases(cases) => cases,
            Count::Percent(percent) => {
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "case counts far below 2^52; the product is positive and rounded up"
                )]
                let cases = (total as f64 * percent / 100.0).ceil() as usize;
                cases.max(1)
            }
        }
    }

    /// Whether `tally` of a run of `total` cases reaches the setting.
    pub fn reached(&self, tally: &Tally, total: usize) -> bool {
        let counted = match self.why {
            Why::Fail => tally.failed,
            Why::Success => tally.succeeded,
            Why::Done => tally.failed + tally.succeeded,
        };
        counted >= self.threshold(total)
    }

    /// The exit status of a run this setting halted, as GNU parallel gives it: 0 for a
    /// `success` halt; for `fail=N`, the exit code of the case that halted it (when it
    /// exited with one); for `fail=P%`, the percentage of the `total` cases that ran and
    /// failed (`tally.failed`); otherwise `counted` (the cases that did not succeed, not
    /// run ones included) up to 101.
    pub fn exit_status(
        &self,
        trigger_exit: Option<i64>,
        tally: &Tally,
        counted: usize,
        total: usize,
    ) -> u8 {
        match (self.why, self.count) {
            (Why::Success, _) => 0,
            (Why::Fail, Count::Cases(_)) => trigger_exit
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or_else(|| failed_status(counted)),
            (Why::Fail, Count::Percent(_)) => {
                let percent = (tally.failed * 100).div_ceil(total.max(1));
                u8::try_from(percent.clamp(1, 100)).unwrap_or(100)
            }
            (Why::Done, _) => failed_status(counted),
        }
    }
}

/// GNU parallel's exit status for `failed` cases: the count up to 100, 101 for more.
pub fn failed_status(failed: usize) -> u8 {
    u8::try_from(failed.min(101)).unwrap_or(101)
}

/// The cases of a run that ended so far, by how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Ended without success (not counting cases not run).
    pub failed: usize,
    /// Succeeded.
    pub succeeded: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_bad_ones_say_what_to_give() {
        assert_eq!(Halt::parse("never").unwrap(), None);
        let table = [
            ("soon,fail=1", When::Soon, Why::Fail, Count::Cases(1)),
            ("now,success=3", When::Now, Why::Success, Count::Cases(3)),
            ("soon,done=50%", When::Soon, Why::Done, Count::Percent(50.0)),
            ("now,fail=2.5%", When::Now, Why::Fail, Count::Percent(2.5)),
        ];
        for (text, when, why, count) in table {
            assert_eq!(
                Halt::parse(text).unwrap(),
                Some(Halt { when, why, count }),
                "{text}"
            );
        }
        for (text, reason) in [
            ("1", "no `,`"),
            ("later,fail=1", "`soon` or `now`"),
            ("now,fail", "no `=`"),
            ("now,crash=1", "`fail`, `success` or `done`"),
            ("now,fail=0", "from 1"),
            ("now,fail=x", "from 1"),
            ("now,fail=0%", "above 0"),
            ("now,fail=101%", "above 0"),
            ("now,fail=x%", "is a number"),
        ] {
            let error = Halt::parse(text).unwrap_err().to_string();
            assert!(
                error.contains(&format!("--halt `{text}`")) && error.contains(reason),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn thresholds_and_exit_statuses() {
        let halt = |text| Halt::parse(text).unwrap().unwrap();
        let tally = |failed, succeeded| Tally { failed, succeeded };
        assert!(!halt("soon,fail=2").reached(&tally(1, 9), 10));
        assert!(halt("soon,fail=2").reached(&tally(2, 0), 10));
        assert!(halt("now,success=1").reached(&tally(0, 1), 10));
        assert!(halt("now,done=3").reached(&tally(1, 2), 10));
        // 25% of 10 cases is 2.5, so 3 cases.
        assert!(!halt("soon,fail=25%").reached(&tally(2, 0), 10));
        assert!(halt("soon,fail=25%").reached(&tally(3, 0), 10));
        // A percentage of a few cases is at least one case.
        assert!(halt("soon,fail=1%").reached(&tally(1, 0), 3));
        let status = |text, exit, failed, counted, total| {
            halt(text).exit_status(exit, &tally(failed, 0), counted, total)
        };
        assert_eq!(status("now,success=1", None, 0, 9, 10), 0);
        assert_eq!(status("now,fail=1", Some(7), 1, 9, 10), 7);
        assert_eq!(status("now,fail=1", None, 1, 9, 10), 9);
        assert_eq!(status("now,fail=1", Some(300), 1, 200, 300), 101);
        // Of 10 cases, 3 ran and failed: 30%, whatever did not run.
        assert_eq!(status("now,fail=10%", Some(7), 3, 8, 10), 30);
        assert_eq!(status("now,fail=10%", Some(7), 1, 1, 1000), 1);
        assert_eq!(status("soon,done=1", Some(7), 1, 4, 10), 4);
    }
}
