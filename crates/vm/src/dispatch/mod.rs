//! Dispatch: map a lazy sequence of [`Job`]s over every slot of a VM and get their
//! results in job order (iterating the [`Dispatch`]), as they complete ([`Dispatch::unordered`]), or
//! through a collector that may stop the dispatch ([`Dispatch::for_each`]).
//!
//! This module owns the public builder and the ways results are handed out; the
//! scheduling is [`scheduler`]'s. It must not write the slot table nor know frames.

mod flight;
mod job;
mod median;
mod output;
mod result;
mod scheduler;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub use job::Job;
pub use result::{JobOutcome, JobResult};

use crate::{Error, OutputStream, Vm};
use flight::Settings;
use scheduler::Scheduler;

impl Vm {
    /// Runs `jobs` on every slot of the runtime and gives their results; see [`Dispatch`].
    ///
    /// Nothing happens until the results are asked for (iterate the [`Dispatch`], or call
    /// [`Dispatch::for_each`]). `jobs` is pulled lazily: at most the
    /// [window](Dispatch::window) of jobs is held at once, so a generator of a million
    /// evaluations costs the memory of a few.
    ///
    /// Give each dispatch a VM of its own: a dispatch receives every message of its VM,
    /// and drops those that are not about its jobs.
    pub fn dispatch<J: IntoIterator<Item = Job>>(&self, jobs: J) -> Dispatch<'_, J::IntoIter> {
        Dispatch {
            vm: self,
            jobs: Some(jobs.into_iter()),
            settings: Settings::default(),
            on_output: None,
            scheduler: None,
        }
    }
}

/// A dispatch of jobs on a VM, built by [`Vm::dispatch`]: set it up, then iterate it (or
/// call [`for_each`](Dispatch::for_each)). Settings made after the first result has
/// been asked for have no effect.
///
/// Each slot gets a job as soon as it is free, and a second one waits at its worker behind
/// the running one, so no round trip separates two jobs. A slot that is free with no job
/// left to give it takes back a job still waiting behind a running one elsewhere (if it
/// has not started there), so a short job never waits for a long one while a slot idles. A job whose worker is lost while
/// it runs is run again, on another host when there is one
/// ([`lost_retries`](Dispatch::lost_retries)); a job that fails by itself is reported,
/// and run again only with [`retries`](Dispatch::retries).
///
/// Iterating gives one `Result<JobResult, Error>` per job, in job order by default. An
/// `Err` is a failure of the dispatch itself ([`Error::DispatchUnfinished`]: every worker
/// is gone and none can come, with the unfinished jobs named); the results that came
/// before it are given first, and nothing follows it. Dropping the dispatch early stops
/// the jobs still running and waits for their ends.
///
/// ```standalone_crate
/// use parvm_vm::{Job, JobOutcome, Runtime, TaskContext, Tasks};
///
/// fn square(_: &TaskContext, x: i64) -> Result<i64, String> {
///     Ok(x * x)
/// }
///
/// let runtime = Runtime::start(Tasks::new().register("square", square))?;
/// let vm = runtime.vm().build()?;
/// let jobs = (0..100i64).map(|x| Job::task("square", &x));
/// let mut sum = 0;
/// for result in vm.dispatch(jobs).retries(1) {
///     let result = result?;
///     match result.outcome {
///         JobOutcome::Value(value) => sum += value.decode::<i64>()?,
///         other => eprintln!("job {} {other}", result.index),
///     }
/// }
/// assert_eq!(sum, (0..100i64).map(|x| x * x).sum::<i64>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a dispatch runs only when its results are asked for"]
pub struct Dispatch<'vm, I: Iterator<Item = Job>> {
    vm: &'vm Vm,
    /// The jobs, until the scheduler takes them at the first result asked for.
    jobs: Option<I>,
    settings: Settings,
    /// Where streamed output goes, until the scheduler takes it.
    on_output: Option<OnOutput<'vm>>,
    scheduler: Option<Scheduler<'vm, I>>,
}

/// Halts a [`Dispatch`] from another thread ([`Dispatch::halt_handle`]).
#[derive(Debug, Clone, Default)]
pub struct HaltHandle {
    /// 0: go on; [`HALT`]: halt; [`HALT_AND_STOP`]: halt and stop the running jobs.
    asked: Arc<AtomicU8>,
}

const HALT: u8 = 1;
const HALT_AND_STOP: u8 = 2;

impl HaltHandle {
    /// Asks the dispatch to [`halt`](Dispatch::halt), stopping its running jobs too when
    /// `stop_running`. A later call may add `stop_running`, never take it back.
    pub fn halt(&self, stop_running: bool) {
        let level = if stop_running { HALT_AND_STOP } else { HALT };
        self.asked.fetch_max(level, Ordering::SeqCst);
    }

    /// What was asked: `None`, or `Some(stop_running)`.
    pub(crate) fn asked(&self) -> Option<bool> {
        match self.asked.load(Ordering::SeqCst) {
            0 => None,
            level => Some(level == HALT_AND_STOP),
        }
    }
}

/// What [`Dispatch::on_output`] is given: called with a job's index, the stream and
/// whole lines.
pub(crate) type OnOutput<'a> = Box<dyn FnMut(usize, OutputStream, &[u8]) + 'a>;

impl<'vm, I: Iterator<Item = Job>> Dispatch<'vm, I> {
    /// At most `jobs` jobs are held at once: running, queued at a worker, waiting to be
    /// run again, or finished and waiting for an earlier job (in job order). Default: 4
    /// per worker slot (growing as slots join); at least 1. Less than 2 per slot leaves
    /// slots idle between jobs.
    pub fn window(mut self, jobs: usize) -> Self {
        self.settings.window = Some(jobs);
        self
    }

    /// The folder returned files and spilled output go to: each job gets
    /// `<dir>/<job index>/` (made when its first file arrives). Required for jobs with
    /// [`Job::returning`]; default: none.
    pub fn results(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.results = Some(dir.into());
        self
    }

    /// Gives results as jobs complete instead of in job order; default: job order.
    pub fn unordered(mut self) -> Self {
        self.settings.ordered = false;
        self
    }

    /// How many more times a job that failed by itself (error, panic, a command's
    /// non-zero exit) is run; default 0. Only the last failure is reported.
    pub fn retries(mut self, times: u32) -> Self {
        self.settings.retries = times;
        self
    }

    /// How many more times a job whose worker was lost while running it is run, before
    /// it is reported as [`JobOutcome::Lost`]; default 3. A job whose request waited at a
    /// lost worker and never started is run again without counting.
    ///
    /// The new attempt prefers another host than the lost worker's: a free slot there,
    /// else a place queued behind a task there. With neither, it takes a free slot of any
    /// host (the same host too, e.g. the lost worker's replacement), so no slot idles
    /// while jobs wait; only when no slot is free at all does it wait for a place on
    /// another host, and the jobs behind it wait with it.
    pub fn lost_retries(mut self, times: u32) -> Self {
        self.settings.lost_retries = times;
        self
    }

    /// After the first job that fails for good, no more jobs are run: running jobs finish
    /// and are reported, and every other job (those waiting to be run again, and the rest
    /// of the sequence, pulled within the window as results are taken) is reported as
    /// [`JobOutcome::NotRun`], so every job still gets exactly one result. With an endless
    /// sequence, stop with [`for_each`](Self::for_each) instead. Default: every job runs.
    pub fn halt_on_error(mut self) -> Self {
        self.settings.halt_on_error = true;
        self
    }

    /// Halts the dispatch now, whatever the jobs did: no job starts any more. Jobs that
    /// wait (to be placed, to run again, or queued at a worker behind a running one) are
    /// reported as [`JobOutcome::NotRun`]; so are the running jobs when `stop_running`,
    /// which are stopped as [`Vm::stop`] stops a task, while without it they finish and
    /// are reported as usual. Later jobs of the sequence pulled within the window are
    /// reported not run too, so with a long sequence, end it (or stop iterating) as well.
    ///
    /// This is [`halt_on_error`](Self::halt_on_error) for a condition the program decides
    /// (GNU parallel's `--halt soon|now,...`): call it between two results.
    pub fn halt(&mut self, stop_running: bool) {
        if let Some(scheduler) = self.scheduler() {
            scheduler.halt(stop_running);
        }
    }

    /// A handle that [halt](Self::halt)s this dispatch from another thread, such as one
    /// that watches for Ctrl-C while this one waits for results: the dispatch notices it
    /// within 20 ms, also while no job can be placed (no worker has joined yet) or every
    /// job runs. Each call gives a handle to the same dispatch.
    pub fn halt_handle(&mut self) -> HaltHandle {
        let handle = self
            .settings
            .halt_handle
            .get_or_insert_with(HaltHandle::default)
            .clone();
        // Unlike the settings, also once results were asked for.
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.watch_halt(handle.clone());
        }
        handle
    }

    /// Hands the output of command jobs to `output` while they run, as whole lines,
    /// instead of leaving it to the spawner to print: `output(index, stream, lines)`,
    /// with the job's index in the sequence. It is called between results, on the thread
    /// that takes them, in the order the lines arrive: lines of jobs running at once
    /// interleave, a line is never cut (except one longer than 512 KiB, which comes in
    /// pieces; a last line without a newline comes when its job ends, before its result).
    /// Every attempt of a job that is run again streams its lines.
    ///
    /// Memory stays bounded whatever a job prints: a worker sends at most 1 MiB of output
    /// ahead of what `output` has been given, so a slow `output` holds the jobs back.
    /// [`Job::capture`] still keeps the whole output in the result as well.
    pub fn on_output(mut self, output: impl FnMut(usize, OutputStream, &[u8]) + 'vm) -> Self {
        self.on_output = Some(Box::new(output));
        self
    }

    /// The scheduler, made at the first call; `None` once the jobs were taken without one.
    fn scheduler(&mut self) -> Option<&mut Scheduler<'vm, I>> {
        if self.scheduler.is_none() {
            let jobs = self.jobs.take()?;
            self.scheduler = Some(Scheduler::new(
                self.vm,
                jobs,
                self.settings.clone(),
                self.on_output.take(),
            ));
        }
        self.scheduler.as_mut()
    }

    /// Each job's time limit, counted from when it starts on its slot (not while it
    /// waits behind another job); default: none. A job past its limit is stopped and
    /// reported as [`JobOutcome::TimedOut`]; that counts neither as a failure nor as a
    /// lost worker. [`Job::timeout`] overrides it for one job.
    ///
    /// A command is stopped with everything it started; a function's worker process
    /// exits (see [`Vm::stop`]). Under MPI, where a worker that exits ends the whole job,
    /// a function past its limit is not stopped: it runs to its end and is reported as
    /// timed out.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.settings.timeout = Some(limit);
        self
    }

    /// Stops a job that runs longer than `percent`% of the median runtime of the jobs of
    /// this dispatch that succeeded so far (GNU parallel's `--timeout P%`): `300.0`
    /// stops a job at three times the median. Default: none.
    ///
    /// It applies once three jobs succeeded (the median of fewer is noise), and to every
    /// job running from then on, also those started before: a running job's limit
    /// follows the median as it moves. A job past it is stopped as with
    /// [`timeout`](Self::timeout) and reported as [`JobOutcome::TimedOut`] with the limit
    /// it ran past. With [`timeout`](Self::timeout) as well, the lower limit applies;
    /// [`Job::timeout`] overrides both for its job. A `percent` that is not above 0, or
    /// not finite, sets no limit. The median is kept to 1%, in memory that does not grow
    /// with the number of jobs.
    pub fn timeout_of_median(mut self, percent: f64) -> Self {
        self.settings.timeout_of_median = (percent > 0.0 && percent.is_finite()).then_some(percent);
        self
    }

    /// Hands each result to `collect` as it comes (in the order this dispatch gives
    /// them: job order unless [`unordered`](Self::unordered)). When `collect` returns
    /// `ControlFlow::Break`, no more jobs are handed out, the running ones are stopped
    /// and their results not reported, and `for_each` returns.
    ///
    /// This is the dispatch's own `for_each` (the collector of PyOPUS's
    /// `cOS.dispatch`), not [`Iterator::for_each`], whose closure returns nothing.
    ///
    /// # Errors
    /// [`Error::DispatchUnfinished`] when every worker is gone (the results that came
    /// before are handed to `collect` first).
    pub fn for_each(
        mut self,
        mut collect: impl FnMut(JobResult) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        while let Some(result) = self.next() {
            if collect(result?).is_break() {
                if let Some(scheduler) = &mut self.scheduler {
                    scheduler.shut_down();
                }
                break;
            }
        }
        Ok(())
    }
}

impl<I: Iterator<Item = Job>> Iterator for Dispatch<'_, I> {
    type Item = Result<JobResult, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.scheduler()?.next_result()
    }
}
