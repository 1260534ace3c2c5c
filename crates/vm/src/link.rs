//! A worker's receiving side, shared by the spawn loop (and the task it runs) and the
//! output thread, and the worker's output window.
//!
//! Output travels with backpressure: a worker has at most [`OUTPUT_WINDOW`] bytes of
//! [`FromWorker::Output`](crate::wire::FromWorker::Output) frames that the spawner has
//! not yet written to its own stdout or stderr; the spawner acknowledges each frame once
//! written (an output acknowledgement, [`wire::output_ack`]). User messages of its tasks
//! to the spawner take from the same window ([`message_share`]) and are acknowledged once
//! the program took them, so a program that does not receive holds a flooding task back
//! instead of growing by all it sends.
//! Without credit, the output thread stops reading the task's pipes, the pipes fill, and the task blocks on its write: a spawner whose output
//! nobody reads grows by at most a window per worker, not by everything its tasks print.
//!
//! The acknowledgements arrive on the one connection to the spawner, among the frames for
//! the task. A task busy computing does not receive, so the output thread must be able to
//! receive too. As on the spawner ([`crate::spawner`]), whichever thread needs an event
//! pulls it from the transport when nobody else does: acknowledgements go to the window,
//! other events to a queue the spawn loop takes them from, and a thread that waits while
//! another pulls sleeps on a condition variable.
//!
//! Stop requests ([`ToWorker::Stop`](crate::wire::ToWorker::Stop)) are read here too, by
//! whichever thread receives them, so a stop is seen while a task computes: a stop for the
//! running task raises a flag its command loop (or, for a function, the output thread)
//! acts on; a stop for another task is kept for a spawn request queued behind the running
//! one, which the spawn loop then answers as stopped without running it. A stop "unless
//! started" of a request not yet begun is answered at once, by the thread that received
//! it, so the dispatch can place the task on a free slot without waiting for the task in
//! front of it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use parvm_transport::{Event, Transport, Wait};

use crate::leave::LeaveRequest;
use crate::wire;

/// The output bytes a worker may have sent and not yet had acknowledged.
pub(crate) const OUTPUT_WINDOW: u64 = 1 << 20;

/// How much of the window taken user messages may leave unacknowledged: the spawner
/// acknowledges the messages the program took once this much is owed to a worker, so a
/// ping-pong costs no frame more (see [`message_share`]).
pub(crate) const MESSAGE_ACK_EVERY: u64 = OUTPUT_WINDOW / 2;

/// The window a user message of `bytes` to the spawner takes, and gives back once the
/// program took it: its size, up to [`MESSAGE_ACK_EVERY`], so that a message of any size
/// goes as soon as the program has taken what came before (at most that much can be owed
/// then), and the spawner holds at most a window of a worker's messages the program has
/// not taken, or one larger message.
pub(crate) fn message_share(bytes: usize) -> u64 {
    (bytes as u64).min(MESSAGE_ACK_EVERY)
}

/// How long the output thread receives at a time while it waits for credit, so that the
/// spawn loop can take over receiving soon after it wants to.
const CREDIT_PULL: Duration = Duration::from_millis(20);

/// Longest sleep of a thread that waits while another receives, before it looks again.
const NAP: Duration = Duration::from_millis(100);

/// Most stops kept for tasks that are not running. Only a stop racing its task's end
/// (or a request queued behind the running task) lands there, so the oldest are dropped
/// past this rather than growing without bound.
const MAX_STOPS_KEPT: usize = 1024;

/// How many non-blocking receives [`Link::next_message_is`] makes at most, past frames the
/// link files itself (acknowledgements, stops).
const PEEK_PULLS: usize = 3;

/// What kind of task the worker runs, which decides how a stop ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskKind {
    /// An external command: its supervisor stops it with everything it started.
    Command,
    /// A registered function: it cannot be interrupted inside its thread, so the worker
    /// process exits.
    Function,
}

/// See the [module docs](self).
pub(crate) struct Link {
    transport: Arc<dyn Transport>,
    state: Mutex<State>,
    cond: Condvar,
    /// Set from outside when the worker is to leave ([`crate::leave`]).
    leave: Option<LeaveRequest>,
}

struct State {
    /// A thread is in `transport.recv`.
    pulling: bool,
    /// Threads asleep on the condition variable.
    sleepers: usize,
    /// Events the output thread received for the spawn loop.
    queue: VecDeque<Event>,
    /// Output bytes that may still be sent.
    credit: u64,
    /// The spawner is gone or the transport failed: no credit will come.
    closed: bool,
    /// The last task whose returned files the spawner stopped receiving.
    stopped_returns: Option<u64>,
    /// The task the spawn loop runs, and its kind.
    task: Option<(u64, TaskKind)>,
    /// A stop arrived for the running task.
    stop_task: bool,
    /// Stops that arrived for tasks not running (see [`MAX_STOPS_KEPT`]).
    stop_later: VecDeque<u64>,
    /// Requests taken back by a stop unless started, already answered as stopped (see
    /// [`MAX_STOPS_KEPT`]).
    withdrawn: VecDeque<u64>,
    /// The highest task number the spawn loop has begun (run, or answered as stopped).
    /// Numbers grow in the order the spawner sends requests, so a number up to it has
    /// started or ended.
    last_begun: Option<u64>,
}

/// What the spawn loop does with a request ([`Link::begin_task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Run it.
    Run,
    /// A stop came for it: answer it as stopped, without running it.
    Stopped,
    /// It was taken back and answered already: skip it.
    Withdrawn,
}

/// Keeps `number` in `list`, dropping the oldest past [`MAX_STOPS_KEPT`].
fn keep(list: &mut VecDeque<u64>, number: u64) {
    if list.len() >= MAX_STOPS_KEPT {
        list.pop_front();
    }
    list.push_back(number);
}

impl State {
    /// Files a stop for task `number`.
    fn on_stop(&mut self, number: u64) {
        if self.task.is_some_and(|(running, _)| running == number) {
            self.stop_task = true;
        } else {
            keep(&mut self.stop_later, number);
        }
    }

    /// Files a stop of task `number` unless it started; `true` when it had not begun, so
    /// it is taken back and must be answered as stopped now.
    fn on_withdraw(&mut self, number: u64) -> bool {
        if self.last_begun.is_some_and(|begun| number <= begun) {
            return false;
        }
        keep(&mut self.withdrawn, number);
        true
    }
}

impl Link {
    pub(crate) fn new(transport: Arc<dyn Transport>, leave: Option<LeaveRequest>) -> Link {
        Link {
            transport,
            leave,
            state: Mutex::new(State {
                pulling: false,
                sleepers: 0,
                queue: VecDeque::new(),
                credit: OUTPUT_WINDOW,
                closed: false,
                stopped_returns: None,
                task: None,
                stop_task: false,
                stop_later: VecDeque::new(),
                withdrawn: VecDeque::new(),
                last_begun: None,
            }),
            cond: Condvar::new(),
        }
    }

    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Receives one event from `transport`, files an acknowledgement, and wakes sleepers.
    /// `Ok(Some(event))` for an event that is not an acknowledgement.
    fn pull<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        wait: Wait,
    ) -> (
        MutexGuard<'a, State>,
        Result<Option<Event>, parvm_transport::Error>,
    ) {
        state.pulling = true;
        drop(state);
        let event = self.transport.recv(wait);
        let mut state = self.lock();
        state.pulling = false;
        let mut withdrawn = None;
        let event = match event {
            Ok(Some(Event::Message { from: 0, payload })) => {
                if let Some(bytes) = wire::read_output_ack(&payload) {
                    state.credit = state.credit.saturating_add(bytes);
                    Ok(None)
                } else if let Some(number) = wire::read_return_stop(&payload) {
                    state.stopped_returns = Some(number);
                    Ok(None)
                } else if let Some((number, unless_started)) = wire::read_stop(&payload) {
                    if !unless_started {
                        state.on_stop(number);
                    } else if state.on_withdraw(number) {
                        withdrawn = Some(number);
                    }
                    Ok(None)
                } else {
                    Ok(Some(Event::Message { from: 0, payload }))
                }
            }
            Ok(Some(event @ Event::PeerLost { rank: 0, .. })) => {
                state.closed = true;
                Ok(Some(event))
            }
            Err(e) => {
                state.closed = true;
                Err(e)
            }
            other => other,
        };
        if state.sleepers > 0 {
            self.cond.notify_all();
        }
        if let Some(number) = withdrawn {
            // Answered by this thread now, outside the lock: the spawn loop may be busy
            // with the task in front for a long time.
            drop(state);
            self.answer_withdrawn(number);
            state = self.lock();
        }
        (state, event)
    }

    /// Tells the spawner that task `number` was taken back before it started.
    fn answer_withdrawn(&self, number: u64) {
        let frame = wire::FromWorker::Stopped {
            number,
            started: false,
        };
        match wire::encode(&frame) {
            // A spawner that is gone learns nothing; its loss reaches the spawn loop.
            Ok(bytes) => {
                let _ = self.transport.send(0, &bytes);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a frame for the spawner"),
        }
    }

    /// The spawn loop starts task `number`: whether to run it, answer it as stopped, or
    /// skip it (taken back and answered already).
    pub(crate) fn begin_task(&self, number: u64, kind: TaskKind) -> Begin {
        let mut state = self.lock();
        state.last_begun = Some(state.last_begun.map_or(number, |begun| begun.max(number)));
        if let Some(at) = state.withdrawn.iter().position(|&n| n == number) {
            state.withdrawn.remove(at);
            return Begin::Withdrawn;
        }
        if let Some(at) = state.stop_later.iter().position(|&n| n == number) {
            state.stop_later.remove(at);
            return Begin::Stopped;
        }
        state.task = Some((number, kind));
        state.stop_task = false;
        Begin::Run
    }

    /// The running task ended.
    pub(crate) fn end_task(&self) {
        let mut state = self.lock();
        state.task = None;
        state.stop_task = false;
    }

    /// Whether the spawner asked to stop the running task, or the worker is leaving.
    pub(crate) fn stop_requested(&self) -> bool {
        self.lock().stop_task || self.leaving().is_some()
    }

    /// The signal that asked the worker to leave, once one did.
    pub(crate) fn leaving(&self) -> Option<i32> {
        self.leave.as_ref().and_then(LeaveRequest::signal)
    }

    /// Whether the running task is a function (which only the end of its process stops).
    pub(crate) fn runs_function(&self) -> bool {
        matches!(self.lock().task, Some((_, TaskKind::Function)))
    }

    /// The number of the running function task when the spawner asked to stop it.
    pub(crate) fn function_to_stop(&self) -> Option<u64> {
        let state = self.lock();
        match state.task {
            Some((number, TaskKind::Function)) if state.stop_task => Some(number),
            _ => None,
        }
    }

    /// The number of the running function task, and the signal, when the worker is asked
    /// to leave while it runs.
    pub(crate) fn function_when_leaving(&self) -> Option<(u64, i32)> {
        let signal = self.leaving()?;
        match self.lock().task {
            Some((number, TaskKind::Function)) => Some((number, signal)),
            _ => None,
        }
    }

    /// The spawn loop's receive: as [`Transport::recv`], without acknowledgements or stops.
    pub(crate) fn recv(&self, wait: Wait) -> Result<Option<Event>, parvm_transport::Error> {
        let deadline = match wait {
            Wait::For(d) => Instant::now().checked_add(d),
            _ => None,
        };
        let left = || match (wait, deadline) {
            (Wait::Forever, _) | (Wait::For(_), None) => Wait::Forever,
            (Wait::NoWait, _) => Wait::NoWait,
            (Wait::For(_), Some(deadline)) => {
                match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Wait::For(left),
                    _ => Wait::NoWait,
                }
            }
        };
        let mut state = self.lock();
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Ok(Some(event));
            }
            let wait = left();
            if state.pulling {
                // The output thread is receiving; it queues what it gets and wakes us.
                let nap = match wait {
                    Wait::NoWait => return Ok(None),
                    Wait::For(left) => left.min(NAP),
                    Wait::Forever => NAP,
                };
                state.sleepers += 1;
                state = self
                    .cond
                    .wait_timeout(state, nap)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                state.sleepers -= 1;
                continue;
            }
            let (next, event) = self.pull(state, wait);
            state = next;
            match event {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) if matches!(wait, Wait::NoWait) => return Ok(None),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the spawn loop's next event is already here (or arrives without waiting) and
    /// is a message from the spawner that `test` accepts. The event stays queued for
    /// [`Link::recv`]. Never waits: while the output thread is receiving, only what it
    /// queued already counts.
    pub(crate) fn next_message_is(&self, test: impl FnOnce(&[u8]) -> bool) -> bool {
        let mut state = self.lock();
        // A pull that yields nothing may have filed an acknowledgement or a stop: look a
        // few times, never more (each look is one non-blocking receive).
        for _ in 0..PEEK_PULLS {
            if !state.queue.is_empty() || state.pulling {
                break;
            }
            let (next, event) = self.pull(state, Wait::NoWait);
            state = next;
            // Else nothing yet, or a transport error that the next receive meets again.
            if let Ok(Some(event)) = event {
                state.queue.push_back(event);
            }
        }
        match state.queue.front() {
            Some(Event::Message { from: 0, payload }) => test(payload),
            _ => false,
        }
    }

    /// As `recv(Wait::Forever)`, but `Ok(None)` once the spawner asked to stop the running
    /// task (a stop is filed by whichever thread receives it, and is no event): for a wait
    /// that belongs to the task, such as fetching its shipped inputs.
    pub(crate) fn recv_unless_stopped(&self) -> Result<Option<Event>, parvm_transport::Error> {
        loop {
            if self.stop_requested() {
                return Ok(None);
            }
            if let Some(event) = self.recv(Wait::For(NAP))? {
                return Ok(Some(event));
            }
        }
    }

    /// For the output thread while a task runs: receives what has already arrived when
    /// no other thread is receiving, so that a lost connection to the spawner (and a stop)
    /// is noticed while the task computes. Why, when this call found the spawner gone (the
    /// spawn loop, when it is the one to find it, leaves by itself).
    pub(crate) fn spawner_lost_meanwhile(&self) -> Option<String> {
        let state = self.lock();
        if state.pulling || state.closed {
            return None;
        }
        let (mut state, event) = self.pull(state, Wait::NoWait);
        match event {
            Ok(Some(event)) => {
                let lost = match &event {
                    Event::PeerLost { rank: 0, reason } => Some(reason.clone()),
                    _ => None,
                };
                state.queue.push_back(event);
                if state.sleepers > 0 {
                    self.cond.notify_all();
                }
                lost
            }
            Ok(None) => None,
            Err(e) => state.closed.then(|| e.to_string()),
        }
    }

    /// Whether the spawner stopped receiving the returned files of task `number` (it could
    /// not write them); seen among the acknowledgements, which a sender without credit
    /// receives, so at most a window after the spawner sent it.
    pub(crate) fn returning_stopped(&self, number: u64) -> bool {
        self.lock().stopped_returns == Some(number)
    }

    /// Takes `bytes` of output credit, waiting for acknowledgements (and receiving them
    /// when nobody else does) as long as it takes. `false` when the spawner is gone: the
    /// output is to be dropped.
    pub(crate) fn take_credit(&self, bytes: u64) -> bool {
        let bytes = bytes.min(OUTPUT_WINDOW);
        let mut state = self.lock();
        loop {
            if state.credit >= bytes {
                state.credit -= bytes;
                return true;
            }
            if state.closed {
                return false;
            }
            if state.pulling {
                state.sleepers += 1;
                state = self
                    .cond
                    .wait_timeout(state, NAP)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                state.sleepers -= 1;
                continue;
            }
            let (next, event) = self.pull(state, Wait::For(CREDIT_PULL));
            state = next;
            // On an error the link is closed now, and the spawn loop meets the error on
            // its next receive. Nothing is logged here: the output thread's own log lines
            // would go into the pipe it is the one to empty.
            if let Ok(Some(event)) = event {
                state.queue.push_back(event);
                if state.sleepers > 0 {
                    self.cond.notify_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryTransport;

    /// A stop of task `number` (`unless_started`: only if it has not begun).
    fn stop_frame(number: u64, unless_started: bool) -> Vec<u8> {
        wire::encode(&wire::ToWorker::Stop {
            number,
            unless_started,
        })
        .unwrap()
    }

    /// Sends a frame for the spawn loop after what the spawner sent before, and checks
    /// that it is the next event the loop gets (what came before was filed, not queued).
    fn only_the_next_frame_reaches_the_loop(spawner: &MemoryTransport, link: &Link) {
        spawner.send(1, b"\x01next").unwrap();
        let event = link.recv(Wait::For(Duration::from_secs(10))).unwrap();
        assert!(
            matches!(&event, Some(Event::Message { payload, .. }) if payload == b"\x01next"),
            "{event:?}"
        );
    }

    fn pair() -> (MemoryTransport, Arc<Link>) {
        let mut ends = MemoryTransport::cluster(&["spawner", "worker"]).into_iter();
        let spawner = ends.next().unwrap();
        let worker: Arc<dyn Transport> = Arc::new(ends.next().unwrap());
        (spawner, Arc::new(Link::new(worker, None)))
    }

    #[test]
    fn a_peeked_frame_stays_for_the_loop_and_filed_frames_are_looked_past() {
        let (spawner, link) = pair();
        // Nothing there: no wait, and nothing accepted.
        assert!(!link.next_message_is(|_| true));
        // An acknowledgement in front is filed, not taken for the next frame.
        spawner.send(1, &wire::output_ack(10)).unwrap();
        spawner.send(1, b"\x01next").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.next_message_is(|payload| payload == b"\x01next") {
            assert!(Instant::now() < deadline, "the frame did not arrive");
            std::thread::yield_now();
        }
        assert!(!link.next_message_is(|payload| payload == b"\x01other"));
        // The loop still gets it, once.
        let event = link.recv(Wait::NoWait).unwrap();
        assert!(
            matches!(&event, Some(Event::Message { payload, .. }) if payload == b"\x01next"),
            "{event:?}"
        );
        assert!(link.recv(Wait::NoWait).unwrap().is_none());
    }

    #[test]
    fn output_waits_for_acknowledgements_that_any_thread_receives() {
        let (spawner, link) = pair();
        assert!(link.take_credit(OUTPUT_WINDOW));
        // The window is used up: the output thread waits, and receives meanwhile.
        let waiting = {
            let link = Arc::clone(&link);
            std::thread::spawn(move || link.take_credit(10))
        };
        spawner.send(1, b"\x01for the task").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The frame for the task reaches the spawn loop, whoever received it.
        let event = link.recv(Wait::For(Duration::from_secs(10))).unwrap();
        assert!(
            matches!(&event, Some(Event::Message { from: 0, payload }) if payload == b"\x01for the task"),
            "{event:?}"
        );
        assert!(!waiting.is_finished());
        spawner.send(1, &wire::output_ack(10)).unwrap();
        while !waiting.is_finished() {
            assert!(Instant::now() < deadline, "the credit did not arrive");
            // Acknowledgements never reach the spawn loop.
            assert!(
                link.recv(Wait::For(Duration::from_millis(5)))
                    .unwrap()
                    .is_none()
            );
        }
        assert!(waiting.join().unwrap());
    }

    #[test]
    fn stops_are_filed_by_whichever_thread_receives_them() {
        let (spawner, link) = pair();
        let stop = |number| stop_frame(number, false);
        assert_eq!(Begin::Run, link.begin_task(4, TaskKind::Function));
        // A stop for a request queued behind the running task, then one for the task;
        // neither reaches the spawn loop, and the frame after them does.
        spawner.send(1, &stop(5)).unwrap();
        spawner.send(1, &stop(4)).unwrap();
        only_the_next_frame_reaches_the_loop(&spawner, &link);
        assert!(link.stop_requested());
        assert_eq!(link.function_to_stop(), Some(4));
        link.end_task();
        assert!(!link.stop_requested());
        // The queued request is answered as stopped; the next one runs.
        assert_eq!(Begin::Stopped, link.begin_task(5, TaskKind::Command));
        assert_eq!(Begin::Run, link.begin_task(6, TaskKind::Command));
        assert_eq!(link.function_to_stop(), None, "a command is not a function");
        // A stop for a task that ended never matches a later task, whose number is new.
        link.end_task();
        spawner.send(1, &stop(3)).unwrap();
        assert!(
            link.recv(Wait::For(Duration::from_millis(50)))
                .unwrap()
                .is_none()
        );
        assert_eq!(Begin::Run, link.begin_task(7, TaskKind::Function));
        assert!(!link.stop_requested());
    }

    #[test]
    fn a_request_not_begun_is_taken_back_and_answered_at_once_a_begun_one_is_left_alone() {
        let (spawner, link) = pair();
        let withdraw = |number| stop_frame(number, true);
        assert_eq!(Begin::Run, link.begin_task(4, TaskKind::Command));
        // Task 4 runs; 5 is queued behind it. Taking back 5 is answered while 4 runs, by
        // whichever thread receives the stop; taking back 4 (it started) does nothing.
        spawner.send(1, &withdraw(5)).unwrap();
        spawner.send(1, &withdraw(4)).unwrap();
        only_the_next_frame_reaches_the_loop(&spawner, &link);
        assert!(!link.stop_requested(), "a started task is not stopped");
        let answer = spawner.recv(Wait::For(Duration::from_secs(10))).unwrap();
        let Some(Event::Message { from: 1, payload }) = answer else {
            panic!("no answer: {answer:?}");
        };
        assert!(matches!(
            wire::decode::<wire::FromWorker<'_>>(&payload),
            Ok(wire::FromWorker::Stopped {
                number: 5,
                started: false
            })
        ));
        assert!(
            spawner.recv(Wait::NoWait).unwrap().is_none(),
            "one answer only"
        );
        link.end_task();
        // The request taken back is skipped, not answered again; the next one runs.
        assert_eq!(Begin::Withdrawn, link.begin_task(5, TaskKind::Command));
        assert_eq!(Begin::Run, link.begin_task(6, TaskKind::Command));
        link.end_task();
        // A task that ended (4, 5) is not taken back later either.
        spawner.send(1, &withdraw(4)).unwrap();
        assert!(
            link.recv(Wait::For(Duration::from_millis(50)))
                .unwrap()
                .is_none()
        );
        assert!(spawner.recv(Wait::NoWait).unwrap().is_none());
    }

    #[test]
    fn at_most_so_many_stops_are_kept_for_tasks_not_running() {
        let (spawner, link) = pair();
        for number in 0..(MAX_STOPS_KEPT as u64 + 10) {
            spawner.send(1, &stop_frame(number, false)).unwrap();
        }
        while link
            .recv(Wait::For(Duration::from_millis(50)))
            .unwrap()
            .is_some()
        {}
        // The oldest were dropped, the newest kept.
        assert_eq!(Begin::Run, link.begin_task(0, TaskKind::Command));
        assert_eq!(
            Begin::Stopped,
            link.begin_task(MAX_STOPS_KEPT as u64 + 9, TaskKind::Command)
        );
    }

    #[test]
    fn a_return_stop_is_taken_off_like_an_acknowledgement() {
        let (spawner, link) = pair();
        assert!(link.take_credit(OUTPUT_WINDOW));
        spawner.send(1, &wire::return_stop(7)).unwrap();
        spawner.send(1, &wire::output_ack(10)).unwrap();
        // Waiting for credit receives both; the stop never reaches the spawn loop.
        assert!(link.take_credit(10));
        assert!(link.returning_stopped(7));
        assert!(!link.returning_stopped(8));
        assert!(link.recv(Wait::NoWait).unwrap().is_none());
    }

    #[test]
    fn output_without_a_spawner_is_dropped_not_waited_for() {
        let (spawner, link) = pair();
        assert!(link.take_credit(OUTPUT_WINDOW));
        drop(spawner);
        assert!(!link.take_credit(1));
        let event = link.recv(Wait::NoWait).unwrap();
        assert!(
            matches!(event, Some(Event::PeerLost { rank: 0, .. })),
            "{event:?}"
        );
    }
}
