//! The dispatch engine: pulls jobs lazily within the window, keeps every slot fed (one job
//! running and one queued behind it at the worker, so no round trip separates them),
//! files each task's messages into its job, and decides what a job's end means: a result,
//! another attempt (a lost worker, or a failure with retries left), or the end of the
//! dispatch (halt on error, every worker gone).
//!
//! It must not know how results are handed to the program (the iterators and the
//! collector in the parent module) and writes no slot itself: it reserves through
//! [`crate::state::Slots`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::OnOutput;
use super::flight::{Flight, Pending, Placed, Settings};
use super::job::Job;
use super::median::Median;
use super::output::Output;
use super::result::{End, JobOutcome, JobResult};
use crate::message::ExitStatus;
use crate::state::Occupant;
use crate::wire::ToWorker;
use crate::{Error, HostId, Message, TaskId, Vm};

/// How often a dispatch with nothing running looks for a free slot again.
const IDLE_LOOK: Duration = Duration::from_millis(20);

/// The default window, per worker slot: one job running, one queued at the worker, and
/// room for results that wait for an earlier job.
const DEFAULT_WINDOW_PER_SLOT: usize = 4;

/// One dispatch in progress on a VM.
/// Where a job may run: the hosts it is pinned to, and the host a retry avoids.
type Constraint = (Option<Vec<HostId>>, Option<String>);

pub(crate) struct Scheduler<'vm, I> {
    vm: &'vm Vm,
    jobs: I,
    settings: Settings,
    window: usize,
    /// No job is pulled any more: the iterator ended, or the dispatch halted or stops.
    exhausted: bool,
    next_index: usize,
    /// Jobs pulled and not yet handed to the program.
    held: usize,
    ready: VecDeque<Pending>,
    flights: HashMap<TaskId, Flight>,
    /// The tasks queued behind a running one, by the task they wait for: the end of that
    /// task starts them. Keyed by task, not by slot, since the next job may queue on the
    /// slot (behind the task that just started there) before the end of the task before
    /// it is received.
    queued_behind: HashMap<TaskId, TaskId>,
    /// Queued tasks being taken back for a free slot ([`Self::steal`]).
    withdrawing: HashSet<TaskId>,
    /// Flights with a deadline, so the common case looks at no clock.
    timed: usize,
    /// The runtimes of the jobs that succeeded, for [`Settings::timeout_of_median`].
    median: Median,
    halted: bool,
    /// The last request of a [`HaltHandle`](super::HaltHandle) carried out (its
    /// `stop_running`).
    remote_halt_done: Option<bool>,
    /// Results not yet handed out.
    output: Output,
    /// The dispatch-level error to give after the results that came before it.
    error: Option<Error>,
    /// The error was given: nothing follows.
    over: bool,
    /// This dispatch registered the VM's notes (a second one on the same VM did not).
    owns_notes: bool,
    /// Where streamed output goes ([`super::Dispatch::on_output`]); jobs stream only
    /// with it.
    on_output: Option<OnOutput<'vm>>,
}

impl<'vm, I: Iterator<Item = Job>> Scheduler<'vm, I> {
    pub(crate) fn new(
        vm: &'vm Vm,
        jobs: I,
        settings: Settings,
        on_output: Option<OnOutput<'vm>>,
    ) -> Scheduler<'vm, I> {
        let (window, error) = {
            let mut state = vm.shared().lock();
            let workers = state.slots.len();
            let busy = state.notes.contains_key(&vm.index());
            if !busy {
                state
                    .notes
                    .insert(vm.index(), crate::state::DispatchNotes::default());
            }
            let error = busy.then(|| Error::Setting {
                setting: "dispatch",
                reason: format!(
                    "VM {} already runs a dispatch; give each dispatch a VM of its own",
                    vm.index()
                ),
            });
            (
                settings
                    .window
                    .unwrap_or(DEFAULT_WINDOW_PER_SLOT * workers)
                    .max(1),
                error,
            )
        };
        Scheduler {
            vm,
            jobs,
            window,
            exhausted: error.is_some(),
            next_index: 0,
            held: 0,
            ready: VecDeque::new(),
            flights: HashMap::new(),
            queued_behind: HashMap::new(),
            withdrawing: HashSet::new(),
            timed: 0,
            median: Median::default(),
            halted: false,
            remote_halt_done: None,
            output: Output::new(settings.ordered),
            over: false,
            owns_notes: error.is_none(),
            // A second dispatch on the VM must not unregister the first one's notes.
            error,
            settings,
            on_output,
        }
    }

    /// The next result (in job order, or as they complete), a dispatch-level error, or
    /// `None` when every job was reported.
    pub(crate) fn next_result(&mut self) -> Option<Result<JobResult, Error>> {
        loop {
            self.halt_if_asked();
            if let Some(result) = self.output.take(self.error.is_some()) {
                self.held -= 1;
                return Some(Ok(result));
            }
            if self.over {
                return None;
            }
            if let Some(error) = self.error.take() {
                self.over = true;
                return Some(Err(error));
            }
            self.fill();
            if self.flights.is_empty() && self.ready.is_empty() && self.exhausted {
                if self.output.is_empty() {
                    return None;
                }
                // Every index up to the last pulled was reported, so there is no gap;
                // should one appear, the results go out rather than wait forever.
                self.output.skip_gap();
                continue;
            }
            if self.flights.is_empty() && !self.ready.is_empty() && self.unplaceable() {
                continue;
            }
            if let Err(error) = self.wait() {
                self.fail(error);
            }
        }
    }

    fn report(&mut self, result: JobResult) {
        self.output.push(result);
    }

    /// Places ready jobs, then newly pulled ones, while there is a place and room in the
    /// window; after a halt, reports them as not run instead.
    fn fill(&mut self) {
        // A job that may run only on some hosts (pinned, or avoiding the one it failed on)
        // and finds no place there is set aside, so the jobs behind it get the free slots
        // of other hosts instead of waiting for a slow host; set-aside jobs go back in
        // front, in order, and keep their turn. One that may run anywhere and finds no
        // place means nothing else would find one either.
        let mut set_aside: Vec<Pending> = Vec::new();
        // Where the set-aside jobs may run: a job with the same constraint would find no
        // place either, so it is not tried (one lock and slot scan saved per job).
        let mut full: Vec<Constraint> = Vec::new();
        self.fill_from_ready(&mut set_aside, &mut full);
        for pending in set_aside.into_iter().rev() {
            self.ready.push_front(pending);
        }
        if self.ready.is_empty() && !self.halted {
            self.steal();
        }
    }

    /// A slot is free and no job waits for one, while jobs wait at their workers queued
    /// behind running tasks: each free slot takes back one of them, the one behind the
    /// task that has run longest (the likeliest to run long yet), so no slot idles while
    /// a job waits. A job queued behind a long task would otherwise wait for all of it.
    /// The worker answers at once when the job has not started ([`Vm::withdraw`]); its
    /// end then puts it back in front of the ready jobs ([`Self::on_exit`]), and the
    /// next fill places it. One that started meanwhile runs there as usual.
    fn steal(&mut self) {
        if self.queued_behind.len() <= self.withdrawing.len() {
            return;
        }
        let mut candidates: Vec<(Instant, TaskId)> = self
            .queued_behind
            .iter()
            .filter(|(_, queued)| !self.withdrawing.contains(queued))
            .filter_map(|(running, &queued)| {
                let since = self.flights.get(running)?.started?;
                self.flights
                    .get(&queued)
                    .is_some_and(|f| f.started.is_none())
                    .then_some((since, queued))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        candidates.sort_unstable();
        // The hosts of the free slots; each takes one job.
        let mut free: Vec<String> = {
            let state = self.vm.shared().lock();
            state
                .slots
                .iter()
                .filter(|(_, slot)| slot.running.is_none() && !slot.leaving)
                .map(|(_, slot)| slot.host.clone())
                .collect()
        };
        for (_, task) in candidates {
            let Some(hosts) = self
                .flights
                .get(&task)
                .map(|f| f.pending.job.spawn.hosts.clone())
            else {
                continue;
            };
            let fits = free.iter().position(|host| {
                hosts
                    .as_deref()
                    .is_none_or(|hosts| hosts.iter().any(|h| &h.0 == host))
            });
            let Some(at) = fits else {
                continue;
            };
            if self.vm.withdraw(task) {
                tracing::debug!(%task, host = %free[at], "taking back a queued job for a free slot");
                self.withdrawing.insert(task);
                free.swap_remove(at);
            }
            if free.is_empty() {
                break;
            }
        }
    }

    fn fill_from_ready(&mut self, set_aside: &mut Vec<Pending>, full: &mut Vec<Constraint>) {
        loop {
            let pending = match self.ready.pop_front() {
                Some(pending) => pending,
                None if !self.exhausted && self.held < self.window => match self.jobs.next() {
                    Some(mut job) => {
                        self.held += 1;
                        self.next_index += 1;
                        let index = self.next_index - 1;
                        if let Some(dir) = &self.settings.results
                            && (!job.spawn.returning.is_empty() || job.spawn.capture)
                        {
                            job.spawn.results_dir = Some(dir.join(index.to_string()));
                        }
                        job.spawn.stream_output = self.on_output.is_some();
                        Pending {
                            index,
                            job,
                            attempts: 0,
                            failures: 0,
                            lost: 0,
                            avoid: None,
                        }
                    }
                    None => {
                        self.exhausted = true;
                        return;
                    }
                },
                None => return,
            };
            if self.halted {
                self.report(JobResult::not_run(pending.index, pending.attempts));
                continue;
            }
            let constraint = (pending.job.spawn.hosts.clone(), pending.avoid.clone());
            let constrained = constraint.0.is_some() || constraint.1.is_some();
            if constrained && full.contains(&constraint) {
                set_aside.push(pending);
                continue;
            }
            match self.place(pending) {
                Placed::Sent | Placed::Reported => {}
                Placed::NoPlace(pending) if constrained => {
                    full.push(constraint);
                    set_aside.push(pending);
                }
                Placed::NoPlace(pending) => {
                    self.ready.push_front(pending);
                    return;
                }
            }
        }
    }

    /// Reserves a place for `pending` and sends its task.
    fn place(&mut self, mut pending: Pending) -> Placed {
        let vm = self.vm;
        let shared = vm.shared();
        let spawn = &pending.job.spawn;
        let checked = vm
            .checked_job(spawn)
            .and_then(|parts| Ok((parts, vm.check_returns(spawn)?)));
        let ((label, returns, job), wanted) = match checked {
            Ok(parts) => parts,
            Err(error) => {
                let mut result = JobResult::not_run(pending.index, pending.attempts);
                result.outcome = JobOutcome::failed(error.to_string());
                self.report(result);
                self.after_failure();
                return Placed::Reported;
            }
        };
        let reserved = {
            let mut state = shared.lock();
            if self.settings.window.is_none() {
                // Slots that joined since the start widen the default window with them.
                self.window = self.window.max(DEFAULT_WINDOW_PER_SLOT * state.slots.len());
            }
            state
                .slots
                .reserve_queued(
                    spawn.hosts.as_deref(),
                    pending.avoid.as_deref(),
                    &shared.next_number,
                    &Occupant {
                        vm: vm.index(),
                        label,
                        send_back: true,
                        returns,
                        command: pending.job.spawn.is_command(),
                    },
                )
                .map(|(rank, number, queued)| {
                    // Registered before the request leaves, so the task's first frame
                    // finds it.
                    if let Some(wanted) = &wanted {
                        let task = TaskId { slot: rank, number };
                        state.returns.register(task, wanted.for_task(rank, number));
                    }
                    let slot = state.slots.get(rank);
                    let host = slot.map(|slot| slot.host.clone()).unwrap_or_default();
                    // The task it waits for: the one running on the slot now.
                    let behind = slot
                        .and_then(|slot| slot.running.as_ref())
                        .filter(|_| queued)
                        .map(|running| TaskId {
                            slot: rank,
                            number: running.number,
                        });
                    (rank, number, behind, host)
                })
        };
        let Some((rank, number, behind, host)) = reserved else {
            return Placed::NoPlace(pending);
        };
        let mut frame = vm.spawn_frame(job, spawn);
        if let ToWorker::Spawn(request) = &mut frame {
            request.number = number;
        }
        vm.before_spawn(rank);
        if let Err(e) = shared.send(rank, &frame) {
            // The worker is gone; its loss arrives as an event and sends the job again.
            tracing::debug!(rank, error = %e, "cannot send a dispatched job");
        }
        drop(frame);
        let task = TaskId { slot: rank, number };
        pending.attempts += 1;
        let limit = pending.job.timeout.or(self.settings.timeout);
        let mut flight = Flight {
            pending,
            host,
            started: None,
            deadline: None,
            value: None,
            returned: Vec::new(),
            returned_bytes: 0,
            captured: None,
            timed_out: None,
            dropped: false,
        };
        if let Some(behind) = behind {
            self.queued_behind.insert(behind, task);
        } else {
            self.start(&mut flight, limit);
        }
        self.flights.insert(task, flight);
        Placed::Sent
    }

    fn start(&mut self, flight: &mut Flight, limit: Option<Duration>) {
        let now = Instant::now();
        flight.started = Some(now);
        if let Some(limit) = limit {
            flight.deadline = Some(now.checked_add(limit).unwrap_or(now));
            self.timed += 1;
        }
    }

    /// With nothing running, ready jobs that no slot could ever take (their hosts have no
    /// slot) fail instead of waiting forever; returns whether it reported any.
    fn unplaceable(&mut self) -> bool {
        let shared = self.vm.shared();
        let state = shared.lock();
        if state.slots.is_empty() {
            // Waiting gives the error that says no worker is left (or waits for one).
            return false;
        }
        let mut failed = Vec::new();
        self.ready.retain(|pending| {
            let hosts = pending.job.spawn.hosts.as_deref();
            let possible = state
                .slots
                .iter()
                .any(|(_, slot)| hosts.is_none_or(|hosts| hosts.iter().any(|h| h.0 == slot.host)));
            if !possible {
                failed.push((
                    pending.index,
                    pending.attempts,
                    hosts.map(<[HostId]>::to_vec),
                ));
            }
            possible
        });
        drop(state);
        let any = !failed.is_empty();
        for (index, attempts, hosts) in failed {
            let names: Vec<String> = hosts
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            let mut result = JobResult::not_run(index, attempts);
            result.outcome = JobOutcome::failed(format!(
                "no worker runs on the job's hosts ({}); name hosts the runtime has (see `Vm::hosts`)",
                names.join(", ")
            ));
            self.report(result);
            self.after_failure();
        }
        any
    }

    /// Receives one message (or waits until the earliest deadline) and files it.
    fn wait(&mut self) -> Result<(), Error> {
        let message = if self.flights.is_empty() {
            // Jobs wait for slots other VMs hold; their ends reach those VMs, not this
            // one, so look again now and then.
            self.vm.recv_timeout(IDLE_LOOK)?
        } else if let Some(earliest) = self.earliest_deadline() {
            let mut left = earliest.saturating_duration_since(Instant::now());
            if self.settings.halt_handle.is_some() {
                left = left.min(IDLE_LOOK);
            }
            let message = self.vm.recv_timeout(left)?;
            self.expire();
            message
        } else if self.settings.halt_handle.is_some() {
            // Another thread may halt the dispatch: look at its request now and then.
            self.vm.recv_timeout(IDLE_LOOK)?
        } else {
            Some(self.vm.recv()?)
        };
        match message {
            Some(Message::TaskResult { task, outcome }) => {
                if let Some(flight) = self.flights.get_mut(&task) {
                    flight.value = Some(outcome);
                }
            }
            Some(Message::TaskExit { task, status }) => self.on_exit(task, status),
            Some(Message::Returned { task, files, bytes }) => {
                if let Some(flight) = self.flights.get_mut(&task) {
                    flight.returned = files;
                    flight.returned_bytes = bytes;
                }
            }
            Some(Message::Captured {
                task,
                stdout,
                stderr,
            }) => {
                if let Some(flight) = self.flights.get_mut(&task) {
                    flight.captured = Some((stdout, stderr));
                }
            }
            Some(Message::Output { task, stream, data }) => {
                if let (Some(flight), Some(output)) =
                    (self.flights.get(&task), self.on_output.as_mut())
                    && !flight.dropped
                {
                    output(flight.pending.index, stream, &data);
                }
            }
            Some(other) => tracing::debug!(message = %other, "a dispatch drops a message"),
            None => {}
        }
        Ok(())
    }

    /// The limit from the median, when [`Settings::timeout_of_median`] is set and enough
    /// jobs succeeded.
    fn median_limit(&self) -> Option<Duration> {
        self.settings
            .timeout_of_median
            .and_then(|percent| self.median.limit(percent))
    }

    /// When `flight` runs out of time and the limit that says so: the earlier of its fixed
    /// deadline and, for a running job without a limit of its own, the median's.
    fn deadline_of(
        flight: &Flight,
        median: Option<Duration>,
        fixed: Option<Duration>,
    ) -> Option<(Instant, Duration)> {
        if flight.timed_out.is_some() {
            return None;
        }
        let started = flight.started?;
        let own = flight.pending.job.timeout.or(fixed);
        let by_fixed = flight.deadline.zip(own);
        let by_median = median
            .filter(|_| flight.pending.job.timeout.is_none())
            .map(|limit| (started.checked_add(limit).unwrap_or(started), limit));
        match (by_fixed, by_median) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The earliest deadline of a running job, if any job has one.
    fn earliest_deadline(&self) -> Option<Instant> {
        let median = self.median_limit();
        if self.timed == 0 && median.is_none() {
            // The common case looks at no clock.
            return None;
        }
        self.flights
            .values()
            .filter_map(|f| Self::deadline_of(f, median, self.settings.timeout))
            .map(|(deadline, _)| deadline)
            .min()
    }

    /// Stops the tasks that ran past their deadline.
    fn expire(&mut self) {
        let now = Instant::now();
        let median = self.median_limit();
        let expired: Vec<(TaskId, Duration)> = self
            .flights
            .iter()
            .filter_map(|(&task, f)| {
                let (deadline, limit) = Self::deadline_of(f, median, self.settings.timeout)?;
                (deadline <= now).then_some((task, limit))
            })
            .collect();
        for (task, limit) in expired {
            if let Some(flight) = self.flights.get_mut(&task) {
                flight.timed_out = Some(limit);
                if flight.deadline.take().is_some() {
                    self.timed -= 1;
                }
            }
            self.stop(task);
        }
    }

    /// Task `task` ended: its job is reported, or placed again.
    fn on_exit(&mut self, task: TaskId, status: ExitStatus) {
        // The end of the running task starts the one queued behind it (if it is still
        // waiting: a queued task lost with its worker may have been filed already).
        if let Some(next) = self.queued_behind.remove(&task)
            && let Some(mut flight) = self.flights.remove(&next)
        {
            let limit = flight.pending.job.timeout.or(self.settings.timeout);
            self.start(&mut flight, limit);
            self.flights.insert(next, flight);
        }
        let Some(flight) = self.flights.remove(&task) else {
            self.withdrawing.remove(&task);
            return;
        };
        if flight.deadline.is_some() {
            self.timed -= 1;
        }
        let withdrawn = self.withdrawing.remove(&task);
        let failed = matches!(status, ExitStatus::Failed { .. });
        let (lost, stopped, never_started, mirrored, returns_failed_on_worker) =
            if failed || self.vm.mirrors() {
                let mut state = self.vm.shared().lock();
                let notes = state.notes.get_mut(&self.vm.index());
                notes.map_or((None, false, false, 0, false), |notes| {
                    (
                        notes.lost.remove(&task),
                        notes.stopped.remove(&task),
                        notes.never_started.remove(&task),
                        notes.mirrored.remove(&task).unwrap_or(0),
                        notes.returns_failed_on_worker.remove(&task),
                    )
                })
            } else {
                (None, false, false, 0, false)
            };
        let Flight {
            mut pending,
            host,
            started,
            value,
            returned,
            returned_bytes,
            captured,
            timed_out,
            dropped,
            ..
        } = flight;
        if dropped {
            return;
        }
        // Taken as started when the task before it ended, but stopped before it could.
        let started = started.filter(|_| !never_started);
        if withdrawn && stopped && started.is_none() {
            // Taken back before it started, for a free slot: placed again, no attempt.
            self.queued_behind.retain(|_, queued| *queued != task);
            pending.attempts -= 1;
            self.ready.push_front(pending);
            return;
        }
        let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
        let reason = match status {
            ExitStatus::Completed => String::new(),
            ExitStatus::Failed { reason } => reason,
        };
        let outcome = if let Some(limit) = timed_out {
            JobOutcome::TimedOut { limit }
        } else if stopped {
            // A stop the program asked for (Vm::stop): neither a failure nor a loss.
            JobOutcome::NotRun
        } else if let Some(started) = lost {
            if !started {
                // Its request waited at the worker: no attempt.
                pending.attempts -= 1;
                self.ready.push_front(pending);
                return;
            }
            pending.lost += 1;
            if pending.lost <= self.settings.lost_retries {
                tracing::debug!(job = pending.index, %host, %reason, "a job's worker was lost; placing it again");
                pending.avoid = Some(host);
                self.ready.push_front(pending);
                return;
            }
            JobOutcome::Lost { reason }
        } else {
            let end = End {
                failed,
                reason,
                returns_failed_on_worker,
            };
            JobOutcome::of_end(end, value, pending.job.spawn.is_command())
        };
        if outcome.is_success() {
            self.median.record(elapsed);
        }
        let failure = matches!(outcome, JobOutcome::Failed { .. });
        if failure && pending.failures < self.settings.retries {
            pending.failures += 1;
            pending.avoid = None;
            self.ready.push_back(pending);
            return;
        }
        let (stdout, stderr) = captured.map_or((None, None), |(out, err)| (Some(out), Some(err)));
        self.report(JobResult {
            index: pending.index,
            outcome,
            host: Some(HostId(host)),
            task: Some(task),
            attempts: pending.attempts,
            elapsed,
            mirrored,
            returned,
            returned_bytes,
            stdout,
            stderr,
        });
        if failure {
            self.after_failure();
        }
    }

    /// A job failed for good: with halt on error, nothing more is run; [`Self::fill`]
    /// reports the jobs that wait, and the rest of the sequence, as not run.
    fn after_failure(&mut self) {
        if self.settings.halt_on_error {
            self.halted = true;
        }
    }

    /// From now on, halts when `handle` asks to ([`super::Dispatch::halt_handle`]).
    pub(crate) fn watch_halt(&mut self, handle: super::HaltHandle) {
        self.settings.halt_handle.get_or_insert(handle);
    }

    /// Halts as another thread asked through a [`HaltHandle`](super::HaltHandle), once
    /// for each new request.
    fn halt_if_asked(&mut self) {
        let asked = self.settings.halt_handle.as_ref().and_then(|h| h.asked());
        if let Some(stop_running) = asked
            && asked != self.remote_halt_done
        {
            self.remote_halt_done = asked;
            self.halt(stop_running);
        }
    }

    /// Nothing more starts: [`Self::fill`] reports waiting jobs as not run, and tasks
    /// queued at a worker (and, with `stop_running`, the running ones) are stopped, so
    /// they end as not run.
    pub(crate) fn halt(&mut self, stop_running: bool) {
        self.halted = true;
        let mut tasks: Vec<(bool, TaskId)> = self
            .flights
            .iter()
            .filter(|(_, flight)| stop_running || flight.started.is_none())
            .map(|(&task, flight)| (flight.started.is_some(), task))
            .collect();
        // The queued ones first: a worker whose running task ends starts the one queued
        // behind it at once, so a stop of the queued one sent after would come too late
        // and its command would run (and be stopped) after all.
        tasks.sort_unstable();
        for (_, task) in tasks {
            self.stop(task);
        }
    }

    /// Every worker is gone (or the transport failed): the jobs not finished are named in
    /// the error given after the results that came before it.
    fn fail(&mut self, source: Error) {
        let mut unfinished: Vec<usize> = self
            .ready
            .iter()
            .map(|p| p.index)
            .chain(self.flights.values().map(|f| f.pending.index))
            .collect();
        unfinished.sort_unstable();
        self.held -= unfinished.len();
        self.ready.clear();
        self.flights.clear();
        self.queued_behind.clear();
        self.withdrawing.clear();
        self.timed = 0;
        self.exhausted = true;
        self.error = Some(Error::DispatchUnfinished {
            unfinished,
            source: Box::new(source),
        });
    }
}

impl<I> Scheduler<'_, I> {
    /// Asks the worker to stop `task`; its exit arrives as usual.
    fn stop(&self, task: TaskId) {
        let function = self
            .flights
            .get(&task)
            .is_some_and(|f| !f.pending.job.spawn.is_command());
        if function
            && self.vm.shared().backend == "mpi"
            && !self.queued_behind.values().any(|&q| q == task)
        {
            // Under MPI a worker process that exits ends the whole job: the function runs
            // to its end.
            tracing::warn!(task = %task, "a function task cannot be stopped under MPI; it runs to its end");
            return;
        }
        if let Err(e) = self.vm.stop(task) {
            // The task runs to its end (a function on the memory backend).
            tracing::debug!(task = %task, error = %e, "cannot stop a dispatched task");
        }
    }

    /// Stops the dispatch: nothing more is handed out, the running tasks are stopped and
    /// their ends awaited (so no late message reaches the VM's next user), and nothing
    /// more is reported.
    pub(crate) fn shut_down(&mut self) {
        self.exhausted = true;
        self.ready.clear();
        let tasks: Vec<TaskId> = self.flights.keys().copied().collect();
        for task in tasks {
            if let Some(flight) = self.flights.get_mut(&task) {
                flight.dropped = true;
            }
            self.stop(task);
        }
        while !self.flights.is_empty() {
            match self.vm.recv() {
                Ok(Message::TaskExit { task, .. }) => {
                    self.flights.remove(&task);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "a stopped dispatch cannot wait for its tasks");
                    break;
                }
            }
        }
        self.flights.clear();
        self.output.clear();
        self.over = true;
    }
}

impl<I> Drop for Scheduler<'_, I> {
    fn drop(&mut self) {
        if !self.over {
            self.shut_down();
        }
        if self.owns_notes {
            self.vm.shared().lock().notes.remove(&self.vm.index());
        }
    }
}
