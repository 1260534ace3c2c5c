//! The cases of a run, made one at a time as the dispatch pulls them: numbered, their
//! command lines and `--return` patterns filled, once per host with `--each-host`.
//!
//! It owns [`Case`], the lazy [`Maker`], and the [`Ledger`] through which the job
//! sequence and the reporting loop share what is in flight; it must not know how cases
//! run or how results are printed.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use parvm_vm::HostId;

use super::error::RunError;
use super::replace::Template;

/// A case ready to run.
#[derive(Debug)]
pub struct Case {
    /// Its number, from 1 (`{#}`, the joblog's Seq, the `--results` folder).
    pub number: usize,
    /// Its command line for `sh -c`.
    pub line: String,
    /// Its input values joined by spaces, for `--tag`.
    pub tag: Vec<u8>,
    /// Its input values, one per source (`-N`: its N values), for a results table.
    pub values: Vec<Vec<u8>>,
    /// Its `--return` patterns, replacement strings filled.
    pub returns: Vec<String>,
    /// The host it must run on (`--each-host`); `None`: any.
    pub host: Option<HostId>,
}

/// The input values of each case, in order, made as they are asked for.
pub type Values<'a> = Box<dyn Iterator<Item = Result<Vec<Vec<u8>>, RunError>> + 'a>;

/// Makes the cases of a run from its values, lazily.
pub struct Maker<'a> {
    values: Values<'a>,
    template: &'a Template,
    returns: &'a [Template],
    /// `[None]`, or every host with `--each-host`.
    hosts: Vec<Option<HostId>>,
    made: usize,
    /// The cases of one set of values not handed out yet (one per host).
    queue: VecDeque<Case>,
}

impl<'a> Maker<'a> {
    /// Cases from `values`, filling `template` and `returns`; with `hosts`, one case per
    /// host for each set of values (the hosts change fastest).
    pub fn new(
        values: Values<'a>,
        template: &'a Template,
        returns: &'a [Template],
        hosts: Option<Vec<HostId>>,
    ) -> Maker<'a> {
        Maker {
            values,
            template,
            returns,
            hosts: hosts.map_or_else(|| vec![None], |hosts| hosts.into_iter().map(Some).collect()),
            made: 0,
            queue: VecDeque::new(),
        }
    }

    /// How many cases each set of values makes.
    pub fn per_values(&self) -> usize {
        self.hosts.len()
    }
}

impl Iterator for Maker<'_> {
    type Item = Result<Case, RunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.queue.is_empty() {
            let mut values = match self.values.next()? {
                Ok(values) => values,
                Err(error) => return Some(Err(error)),
            };
            let tag = values.join(&b' ');
            for (at, host) in self.hosts.iter().enumerate() {
                self.made += 1;
                let number = self.made;
                let line = self.template.fill(number, &values);
                let returns = self
                    .returns
                    .iter()
                    .map(|pattern| pattern.fill_pattern(number, &values))
                    .collect();
                // The last case of these values (the only one but with --each-host)
                // takes them instead of a copy.
                let values = if at + 1 == self.hosts.len() {
                    std::mem::take(&mut values)
                } else {
                    values.clone()
                };
                self.queue.push_back(Case {
                    number,
                    line,
                    tag: tag.clone(),
                    values,
                    returns,
                    host: host.clone(),
                });
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

/// What the job sequence and the reporting loop share while a sweep runs.
#[derive(Default)]
pub struct Ledger {
    /// The cases handed to the dispatch and not reported yet, by dispatch index: at most
    /// the dispatch's window of them.
    pending: RefCell<HashMap<usize, Case>>,
    /// The dispatch index of the next case handed out.
    next_index: Cell<usize>,
    /// Cases made so far (skipped ones included).
    made: Cell<usize>,
    /// Set when the run halts: no case is handed out any more.
    halted: Cell<bool>,
    /// Why making cases stopped early (an args file that cannot be read, a NUL byte).
    failure: RefCell<Option<RunError>>,
}

impl Ledger {
    /// Records `case` as handed out; returns its dispatch index.
    pub fn hand_out(&self, case: Case) -> usize {
        let index = self.next_index.get();
        self.next_index.set(index + 1);
        self.made.set(self.made.get().max(case.number));
        self.pending.borrow_mut().insert(index, case);
        index
    }

    /// The number and `--tag` values of the case at dispatch index `index`, while it is
    /// in flight (number 0 and no values otherwise).
    pub fn case_tag(&self, index: usize) -> (usize, Vec<u8>) {
        self.pending
            .borrow()
            .get(&index)
            .map_or((0, Vec::new()), |case| (case.number, case.tag.clone()))
    }

    /// Records `case` as skipped by `--resume`.
    pub fn skip(&self, case: &Case) {
        self.made.set(self.made.get().max(case.number));
    }

    /// The case of a result, by its dispatch index (once).
    pub fn take(&self, index: usize) -> Option<Case> {
        self.pending.borrow_mut().remove(&index)
    }

    /// Cases made so far, skipped ones included.
    pub fn made(&self) -> usize {
        self.made.get()
    }

    /// Hands out no more cases.
    pub fn halt(&self) {
        self.halted.set(true);
    }

    /// Whether the run halted.
    pub fn halted(&self) -> bool {
        self.halted.get()
    }

    /// Making cases failed: no more are handed out, and the run reports `error` at its
    /// end.
    pub fn fail(&self, error: RunError) {
        self.halted.set(true);
        self.failure.borrow_mut().get_or_insert(error);
    }

    /// Why making cases failed, if it did.
    pub fn failure(&self) -> Option<RunError> {
        self.failure.borrow_mut().take()
    }
}

#[cfg(test)]
mod tests {
    use super::super::replace::Replacing;
    use super::*;

    #[test]
    fn each_host_gets_every_case_numbered_in_turn() {
        let words = vec!["echo".to_owned(), "{}".to_owned(), "{#}".to_owned()];
        let template = Template::parse(&words, &Replacing::new(1, &[]), false).unwrap();
        let returns = [Template::pattern("{}.out", &Replacing::new(1, &[])).unwrap()];
        let values: Values<'_> = Box::new(
            [b"a".to_vec(), b"b".to_vec()]
                .into_iter()
                .map(|value| Ok(vec![value])),
        );
        let hosts = vec![HostId("alpha".to_owned()), HostId("beta".to_owned())];
        let maker = Maker::new(values, &template, &returns, Some(hosts));
        assert_eq!(maker.per_values(), 2);
        let cases: Vec<(usize, String, String, String)> = maker
            .map(Result::unwrap)
            .map(|case| {
                (
                    case.number,
                    case.line,
                    case.returns.join(","),
                    case.host.unwrap().0,
                )
            })
            .collect();
        let expected = [
            (1, "echo a 1", "a.out", "alpha"),
            (2, "echo a 2", "a.out", "beta"),
            (3, "echo b 3", "b.out", "alpha"),
            (4, "echo b 4", "b.out", "beta"),
        ];
        assert_eq!(cases.len(), expected.len());
        for (got, want) in cases.iter().zip(expected) {
            assert_eq!(
                (got.0, got.1.as_str(), got.2.as_str(), got.3.as_str()),
                want
            );
        }
    }

    #[test]
    fn the_ledger_hands_out_and_takes_back_by_dispatch_index() {
        let ledger = Ledger::default();
        let case = |number| Case {
            number,
            line: String::new(),
            tag: Vec::new(),
            values: Vec::new(),
            returns: Vec::new(),
            host: None,
        };
        ledger.skip(&case(1));
        assert_eq!(ledger.hand_out(case(2)), 0);
        assert_eq!(ledger.hand_out(case(3)), 1);
        assert_eq!(ledger.made(), 3);
        assert_eq!(ledger.case_tag(1).0, 3);
        assert_eq!(ledger.take(1).unwrap().number, 3);
        assert_eq!(ledger.case_tag(1).0, 0);
        assert!(ledger.take(1).is_none());
        ledger.fail(RunError::NoCommand);
        assert!(ledger.halted());
        assert!(ledger.failure().is_some());
    }
}
