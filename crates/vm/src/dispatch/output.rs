//! The results of a dispatch waiting to be handed out: in job order (a result waits for
//! the jobs before it) or in the order jobs complete.
//!
//! It must not know how jobs run.

use std::collections::{BTreeMap, VecDeque};

use super::result::JobResult;

/// Results not yet handed out.
pub(crate) struct Output {
    ordered: bool,
    /// By index, when ordered.
    by_index: BTreeMap<usize, JobResult>,
    /// In completion order, when not.
    in_order: VecDeque<JobResult>,
    /// The index handed out next, when ordered.
    next: usize,
}

impl Output {
    pub(crate) fn new(ordered: bool) -> Output {
        Output {
            ordered,
            by_index: BTreeMap::new(),
            in_order: VecDeque::new(),
            next: 0,
        }
    }

    pub(crate) fn push(&mut self, result: JobResult) {
        if self.ordered {
            self.by_index.insert(result.index, result);
        } else {
            self.in_order.push_back(result);
        }
    }

    /// The next result to hand out; with `all`, the earliest one even when a job before
    /// it has none (the rest will never come).
    pub(crate) fn take(&mut self, all: bool) -> Option<JobResult> {
        if !self.ordered {
            return self.in_order.pop_front();
        }
        let entry = self.by_index.first_entry()?;
        if *entry.key() != self.next && !all {
            return None;
        }
        let result = entry.remove();
        self.next = result.index + 1;
        Some(result)
    }

    /// Hands out from the earliest result waiting, past any gap.
    pub(crate) fn skip_gap(&mut self) {
        if let Some(&first) = self.by_index.keys().next() {
            self.next = first;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_index.is_empty() && self.in_order.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.by_index.clear();
        self.in_order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(index: usize) -> JobResult {
        JobResult::not_run(index, 0)
    }

    #[test]
    fn ordered_results_wait_for_earlier_jobs() {
        let mut output = Output::new(true);
        output.push(result(1));
        output.push(result(2));
        assert!(output.take(false).is_none(), "job 0 first");
        output.push(result(0));
        let order: Vec<usize> = std::iter::from_fn(|| output.take(false))
            .map(|r| r.index)
            .collect();
        assert_eq!(order, [0, 1, 2]);
        output.push(result(5));
        assert!(output.take(false).is_none());
        assert_eq!(
            output.take(true).map(|r| r.index),
            Some(5),
            "all: past the gap"
        );
        assert!(output.is_empty());
    }

    #[test]
    fn unordered_results_go_out_as_they_come() {
        let mut output = Output::new(false);
        output.push(result(3));
        output.push(result(0));
        assert_eq!(output.take(false).map(|r| r.index), Some(3));
        assert_eq!(output.take(false).map(|r| r.index), Some(0));
        assert!(output.take(false).is_none());
    }
}
