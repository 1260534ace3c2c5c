//! User messages between tasks, forwarded by the spawner off the router's path.
//!
//! Every message a task sends to another task travels through the spawner (the star).
//! Sent on by the router itself, one message to a worker that takes nothing in (its task
//! computes and does not receive, so its socket fills) held the spawner's lock, and with
//! it every other worker and the program, until that worker read: one task flooding a
//! busy one held up the whole VM for as long as the flood took to drain.
//!
//! So the router hands each such message to the lane of its receiving worker: a queue and,
//! while it holds messages (and [`LINGER`] after, looking again for [`SPIN`] before it
//! sleeps, so a ping-pong between two tasks finds it awake), a thread that sends them in
//! order. A receiver that does not read holds up only the messages to it. The hand-over
//! costs a task-to-task round trip about 3 µs one way over sending from the router
//! (`bench messaging`). What a lane may hold is bounded by the senders'
//! windows: a task's messages take from its worker's window (as its messages to the
//! spawner and its output do, `crate::link`), given back once the lane has sent them on
//! or dropped them, so a task that floods a busy one waits in its send
//! ([`TaskContext::send`](crate::TaskContext::send)) instead of growing the spawner.
//!
//! It must not know what the messages hold, the router's state or the transport's kind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use parvm_transport::Rank;

use crate::spawner::Shared;

/// One message on its way to another task, and whose window it took.
pub(crate) struct Forward {
    /// The worker whose task sent it.
    pub from: Rank,
    /// The worker of the task it is for.
    pub to: Rank,
    /// The head of its frame to that worker; the message's bytes follow it.
    pub head: Vec<u8>,
    /// The message's bytes, in the frame they arrived in (not copied).
    pub data: crate::Payload,
}

/// How long a lane's thread waits for the next message once its lane is empty before it
/// ends: messages that come back and forth (a ping-pong between two tasks) then find it
/// waiting instead of starting a thread each.
const LINGER: Duration = Duration::from_millis(200);

/// How long a lane's thread looks for the next message before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// The lanes of the receiving workers; see the [module docs](self).
#[derive(Default)]
pub(crate) struct Forwarder {
    lanes: Mutex<HashMap<Rank, Lane>>,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Forward>,
    /// Its thread waits for a message.
    waiting: bool,
    /// Wakes its thread (used with `Forwarder::lanes`).
    wake: Arc<Condvar>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Forwarder {
    /// Queues `message` on its receiver's lane, starting the lane's thread when it has
    /// none (`shared` is the spawner the thread sends through). `Err` gives the message
    /// back when no thread can start: the caller sends it itself.
    pub(crate) fn push(
        self: &Arc<Self>,
        shared: &Weak<Shared>,
        message: Forward,
    ) -> Result<(), Forward> {
        let to = message.to;
        let mut lanes = lock(&self.lanes);
        if let Some(lane) = lanes.get_mut(&to) {
            // Its thread runs until the lane stays empty, and takes this one too.
            lane.queue.push_back(message);
            if lane.waiting {
                lane.wake.notify_one();
            }
            return Ok(());
        }
        let mut lane = Lane::default();
        lane.queue.push_back(message);
        lanes.insert(to, lane);
        let (forwarder, shared) = (Arc::clone(self), shared.clone());
        let started = std::thread::Builder::new()
            .name(format!("parvm-forward-{to}"))
            .spawn(move || drain(&forwarder, &shared, to));
        match started {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(to, error = %e, "cannot start a thread to forward messages");
                // Still under the lock: the lane holds just this message.
                match lanes
                    .remove(&to)
                    .and_then(|mut lane| lane.queue.pop_front())
                {
                    Some(message) => Err(message),
                    None => Ok(()),
                }
            }
        }
    }

    /// The next message of `to`'s lane, waiting up to [`LINGER`] for one; `None` when none
    /// came, and then the lane is gone, so the next message starts a thread again.
    fn next(&self, to: Rank) -> Option<Forward> {
        let start = Instant::now();
        let deadline = start + LINGER;
        let mut lanes = lock(&self.lanes);
        // Waking a sleeping thread costs more than the next message of a ping-pong takes
        // to come, so first look again for a moment, yielding the core meanwhile.
        while lanes.get(&to).is_some_and(|lane| lane.queue.is_empty()) && start.elapsed() < SPIN {
            drop(lanes);
            std::thread::yield_now();
            lanes = lock(&self.lanes);
        }
        loop {
            let lane = lanes.get_mut(&to)?;
            if let Some(message) = lane.queue.pop_front() {
                lane.waiting = false;
                return Some(message);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lanes.remove(&to);
                return None;
            }
            lane.waiting = true;
            let wake = Arc::clone(&lane.wake);
            lanes = wake
                .wait_timeout(lanes, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The thread of `to`'s lane: sends its messages in order until none came for [`LINGER`],
/// or until the spawner is gone (what is left is dropped with it). The spawner is held
/// only while a message is sent, so the VM can go while the thread waits.
fn drain(forwarder: &Forwarder, shared: &Weak<Shared>, to: Rank) {
    while let Some(message) = forwarder.next(to) {
        let Some(spawner) = shared.upgrade() else {
            return;
        };
        spawner.send_on(message);
    }
}
