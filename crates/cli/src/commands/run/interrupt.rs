//! The first Ctrl-C, SIGTERM or SIGHUP of `parvm run`: start no new case, stop the running
//! ones, keep what has come; a second one exits at once (status 130).
//!
//! It owns the signal flag and the watcher that stops a VM's running tasks; it must not
//! know what a case is or how results are printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parvm_vm::{HaltHandle, Vm};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::error::RunError;

/// How often the watcher looks at the flag; a stop takes at most twice this long to begin.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// How long cases may take to stop after a signal before the user is told what the run
/// waits for: past a command's grace period (2 s after SIGTERM).
const SAY_WAITING_AFTER: Duration = Duration::from_secs(3);

/// What a run stopped by a signal says while `running` cases have not ended yet.
fn waiting_for(running: usize) -> String {
    let cases = if running == 1 {
        "1 case".to_owned()
    } else {
        format!("{running} cases")
    };
    format!(
        "parvm run: waiting for {cases} to stop; a worker that does not answer (stopped with Ctrl-Z, or its host gone) is given up after the peer timeout (PARVM_PEER_TIMEOUT, 60 s by default); a second Ctrl-C leaves at once (each worker then stops its case and removes its task folder as it leaves)"
    )
}

/// Whether SIGINT, SIGTERM or SIGHUP came.
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    /// The signals to catch once the runtime started.
    after_start: Vec<i32>,
}

impl Interrupt {
    /// Catches, before the runtime starts, SIGINT and SIGTERM, and SIGHUP (a terminal that
    /// closes, an ssh session that drops) unless this process was started ignoring it
    /// (`nohup`), so that a signal that comes while the runtime starts (as soon as a TCP
    /// spawner printed its address) stops the run cleanly too. Except:
    ///
    /// - in a process that may become a worker (an MPI rank), where all wait for
    ///   [`install_the_rest`](Self::install_the_rest), after the start;
    /// - SIGINT or SIGTERM that this process was started ignoring (SIGINT, in the
    ///   background job of a script): local workers started after a handler would get the
    ///   default action on exec, and so would their commands, where they should ignore it as
    ///   a shell's background jobs do; caught once the runtime started.
    ///
    /// The handlers set `flag`, which the run shares with what must end early on a signal
    /// (a streamed input source waiting for its next line).
    ///
    /// # Errors
    /// A handler cannot be installed.
    pub fn install_before_start(flag: &Arc<AtomicBool>) -> Result<Interrupt, RunError> {
        let hangup = (!parvm_vm::leave::ignored_by_this_process(SIGHUP)).then_some(SIGHUP);
        let wanted = [SIGINT, SIGTERM].into_iter().chain(hangup);
        let may_become_worker = parvm_transport::launcher::launched_by_mpirun();
        let (now, after_start): (Vec<i32>, Vec<i32>) = wanted.partition(|&signal| {
            !may_become_worker && !parvm_vm::leave::ignored_by_this_process(signal)
        });
        let interrupt = Interrupt {
            flag: Arc::clone(flag),
            after_start,
        };
        interrupt.catch(&now)?;
        Ok(interrupt)
    }

    /// Catches the signals [`install_before_start`](Self::install_before_start) left for
    /// after the runtime's start.
    ///
    /// # Errors
    /// A handler cannot be installed.
    pub fn install_the_rest(&mut self) -> Result<(), RunError> {
        let rest = std::mem::take(&mut self.after_start);
        self.catch(&rest)
    }

    fn catch(&self, signals: &[i32]) -> Result<(), RunError> {
        for &signal in signals {
            // The second signal finds the flag set and exits at once.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&self.flag))
                .map_err(RunError::Signal)?;
            signal_hook::flag::register(signal, Arc::clone(&self.flag))
                .map_err(RunError::Signal)?;
        }
        Ok(())
    }

    /// Whether a signal came.
    pub fn happened(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Until `done`: once a signal came, halts the dispatch of `halt` (no case starts;
    /// the waiting ones end as not run, also when no worker has joined to run them) and
    /// stops every task `vm` runs (each ends as not run), again as tasks start, so the
    /// dispatch ends soon instead of waiting for cases that could run for hours (or
    /// rerunning cases whose workers the Ctrl-C killed).
    pub fn watch(&self, vm: &Vm, halt: &HaltHandle, done: &AtomicBool) {
        let mut stopping_since: Option<std::time::Instant> = None;
        let mut said = false;
        while !done.load(Ordering::SeqCst) {
            if self.happened() {
                halt.halt(true);
            }
            // From the watch after the signal's: the dispatch halts first (within its
            // 20 ms), stopping the cases queued at workers before the running ones;
            // stopped from here first, a worker would start its queued case as the
            // running one ended.
            if let Some(since) = stopping_since {
                let mut running = 0;
                for host in vm.describe().hosts {
                    for task in host.slots.into_iter().filter_map(|slot| slot.task) {
                        if task.vm == vm.index() {
                            running += 1;
                            // A task that ended meanwhile is no error worth reporting.
                            let _ = vm.stop(task.id);
                        }
                    }
                }
                if running > 0 && !said && since.elapsed() >= SAY_WAITING_AFTER {
                    said = true;
                    crate::console::say(waiting_for(running));
                }
            } else if self.happened() {
                stopping_since = Some(std::time::Instant::now());
            }
            std::thread::sleep(WATCH_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_names_the_cases_and_the_way_out() {
        let one = waiting_for(1);
        assert!(one.contains("waiting for 1 case to stop"), "{one}");
        assert!(
            one.contains("PARVM_PEER_TIMEOUT") && one.contains("second Ctrl-C"),
            "{one}"
        );
        assert!(waiting_for(3).contains("waiting for 3 cases to stop"));
    }
}
