//! What a running task can see and do: [`TaskContext`] (its ids, its folder, messages), and
//! the state the spawn loop shares with the task it runs (`LoopState`: frames deferred while a
//! task waits, exit and loss flags, forwarded variables, the send buffer).
//!
//! Must not know the spawn loop itself, task folders or how a job runs (see `worker`), nor the
//! task registry (`tasks` names `TaskContext` in a task's signature; this module does not know
//! `tasks`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use parvm_transport::{Event, Transport, Wait};
use serde::Serialize;

use crate::link::Link;
use crate::message::Payload;
use crate::wire::{self, FromWorker, SendError, ToWorker};
use crate::{Error, HostId, TaskId};

/// What a running task can see and do: its ids, its folder, and messages.
pub struct TaskContext<'a> {
    pub(crate) transport: &'a dyn Transport,
    pub(crate) link: &'a Link,
    pub(crate) id: TaskId,
    pub(crate) host: &'a str,
    pub(crate) dir: Option<&'a Path>,
    pub(crate) state: &'a LoopState,
}

/// What the spawn loop and a running task share.
#[derive(Default)]
pub(crate) struct LoopState {
    /// Control frames that arrived while a task waited for a user message.
    pub(crate) deferred: RefCell<VecDeque<Vec<u8>>>,
    pub(crate) exit_requested: Cell<bool>,
    /// Why the spawner was lost, once it was.
    spawner_lost_reason: RefCell<Option<String>>,
    /// The buffer frames to the spawner are encoded into, reused from one send to the next.
    scratch: RefCell<Vec<u8>>,
    /// Environment variables forwarded by the spawner, set on every command.
    pub(crate) forwarded: RefCell<Vec<(std::ffi::OsString, std::ffi::OsString)>>,
    /// The supervisor this worker's commands run under, forked when the loop starts (again
    /// for a command when it is gone); dropped, and so ended, with the loop.
    pub(crate) supervisor: RefCell<Option<crate::supervise::Supervisor>>,
    /// The task the worker gave back to the spawner because it was asked to leave: its
    /// end is not reported, so it ends as lost and runs again elsewhere.
    pub(crate) given_back: Cell<Option<crate::TaskId>>,
}

impl LoopState {
    /// The connection to the spawner is lost, for `reason`.
    pub(crate) fn lose_spawner(&self, reason: String) {
        self.spawner_lost_reason.borrow_mut().get_or_insert(reason);
    }

    /// Whether the connection to the spawner is lost.
    pub(crate) fn spawner_is_lost(&self) -> bool {
        self.spawner_lost_reason.borrow().is_some()
    }

    /// Why the spawner was lost; `None` while it is not.
    pub(crate) fn spawner_lost_reason(&self) -> Option<String> {
        self.spawner_lost_reason.borrow().clone()
    }

    /// Encodes `frame` into the reused buffer and sends it to the spawner.
    pub(crate) fn send(
        &self,
        transport: &dyn Transport,
        frame: &FromWorker<'_>,
    ) -> Result<(), SendError> {
        wire::send_frame(transport, 0, &mut self.scratch.borrow_mut(), frame)
    }

    /// Sends user message frame `frame` (its bytes left empty) followed by `data`, without
    /// copying large data (see [`wire::Frame::write_user_head`]).
    fn send_with_tail(
        &self,
        transport: &dyn Transport,
        frame: &FromWorker<'_>,
        data: &[u8],
    ) -> Result<(), SendError> {
        wire::send_user(transport, 0, &mut self.scratch.borrow_mut(), frame, data)
    }

    /// As [`LoopState::send`]; a failure is logged, because the spawner's loss shows up
    /// as an event anyway.
    pub(crate) fn send_or_log(&self, transport: &dyn Transport, frame: &FromWorker<'_>) {
        match self.send(transport, frame) {
            Ok(()) => {}
            Err(SendError::Transport(e)) => {
                tracing::warn!(error = %e, "cannot send to the spawner")
            }
            Err(SendError::Encode(e)) => {
                tracing::error!(error = %e, "cannot encode a frame for the spawner");
            }
        }
    }
}

impl TaskContext<'_> {
    /// This task's id.
    #[must_use]
    pub fn task_id(&self) -> TaskId {
        self.id
    }

    /// The host this task runs on.
    #[must_use]
    pub fn host_id(&self) -> HostId {
        HostId(self.host.to_owned())
    }

    /// The task that spawned this one: the spawner, `0:0`.
    #[must_use]
    pub fn parent_task_id(&self) -> TaskId {
        TaskId::SPAWNER
    }

    /// The folder the task runs in (its task folder, or the startup folder), if it has one.
    /// The worker also makes it the current folder, except for in-process workers.
    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        self.dir
    }

    /// Sends `value` (MessagePack) to task `to`; decode it with [`Payload::decode`]. It
    /// waits while 1 MiB of this worker's messages are on their way: to the spawner
    /// ([`TaskId::SPAWNER`]), not yet taken by the program, so a program busy elsewhere
    /// holds a fast sender back; to another task, not yet sent on by the spawner to that
    /// task's worker, which takes them in as that task receives, so a task that floods
    /// a busy one is held back too (and holds up no other).
    ///
    /// # Errors
    /// The value cannot be encoded, or the transport failed. A message to a task that has
    /// ended is dropped, not an error.
    pub fn send<T: Serialize>(&self, to: TaskId, value: &T) -> Result<(), Error> {
        let data = rmp_serde::to_vec(value).map_err(|source| Error::Encode {
            what: format!("a message from task {} to task {to}", self.id),
            source,
        })?;
        self.send_bytes(to, &data)
    }

    /// Sends raw bytes to task `to`; to the spawner it waits as [`TaskContext::send`] does.
    ///
    /// # Errors
    /// The transport failed.
    pub fn send_bytes(&self, to: TaskId, data: &[u8]) -> Result<(), Error> {
        // Waits while the spawner holds a window of this worker's messages: to the
        // spawner, those its program has not taken; to another task, those not yet sent on
        // (`crate::link`, `crate::forward`). A spawner that is gone gives no credit: the
        // send below then says so.
        self.link
            .take_credit(crate::link::message_share(data.len()));
        let frame = FromWorker::User {
            from: Some(self.id.number),
            to,
            data: (&[][..]).into(),
        };
        self.state
            .send_with_tail(self.transport, &frame, data)
            .map_err(|e| match e {
                SendError::Encode(source) => Error::Encode {
                    what: format!("a message from task {} to task {to}", self.id),
                    source,
                },
                SendError::Transport(e) => Error::transport(self.transport.backend(), e),
            })
    }

    /// Waits for the next user message to this task.
    ///
    /// # Errors
    /// [`Error::Finalized`] when the spawner finalized the VM, [`Error::SpawnerLost`] when
    /// it is gone, or a transport failure: the task should return.
    pub fn recv(&self) -> Result<(TaskId, Payload), Error> {
        loop {
            if let Some(message) = self.wait(None)? {
                return Ok(message);
            }
        }
    }

    /// Waits at most `timeout` for a user message; `Ok(None)` when none came.
    ///
    /// # Errors
    /// As [`TaskContext::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<(TaskId, Payload)>, Error> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Returns a user message that has already arrived, else `Ok(None)`.
    ///
    /// # Errors
    /// As [`TaskContext::recv`].
    pub fn try_recv(&self) -> Result<Option<(TaskId, Payload)>, Error> {
        self.wait(Some(Instant::now()))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<(TaskId, Payload)>, Error> {
        loop {
            if self.state.spawner_is_lost() {
                return Err(Error::SpawnerLost);
            }
            if self.state.exit_requested.get() {
                return Err(Error::Finalized);
            }
            let wait = match deadline {
                None => Wait::Forever,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Wait::For(left),
                    _ => Wait::NoWait,
                },
            };
            let event = self
                .link
                .recv(wait)
                .map_err(|e| Error::transport(self.transport.backend(), e))?;
            match event {
                None => return Ok(None),
                Some(Event::Message { from: 0, payload }) => {
                    match wire::decode::<ToWorker<'_>>(&payload) {
                        Ok(ToWorker::User { from, to, data }) => {
                            if to == self.id.number {
                                let located = wire::locate(&payload, data);
                                return Ok(Some((from, Payload::from_frame(payload, located))));
                            }
                            tracing::debug!(to, "dropping a message for a task that has ended");
                        }
                        Ok(ToWorker::Exit) => self.state.exit_requested.set(true),
                        Ok(_) => self.state.deferred.borrow_mut().push_back(payload),
                        Err(reason) => tracing::warn!(%reason, "dropping an unreadable frame"),
                    }
                }
                Some(Event::PeerLost { rank: 0, reason }) => self.state.lose_spawner(reason),
                Some(_) => {}
            }
            if matches!(wait, Wait::NoWait)
                && !self.state.exit_requested.get()
                && !self.state.spawner_is_lost()
            {
                return Ok(None);
            }
        }
    }
}
