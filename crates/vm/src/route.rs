//! Routing in the spawner: each transport event and each frame a worker sends is filed
//! where it belongs (a VM's inbox, the slot table, another worker, the terminal), one
//! function per event and frame kind.
//!
//! It runs on whichever thread is pulling events (see [`crate::spawner`]), with the state
//! locked. It must not know how events are pulled or waited for, nor write a slot itself:
//! the slot table ([`crate::state::Slots`]) does that.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use parvm_transport::{Event, Peer, Rank};

use crate::forward::Forward;
use crate::message::{ExitStatus, Payload, TaskFailure, Value};
use crate::ship::serve::ShipJob;
use crate::spawner::Shared;
use crate::state::{End, State};
use crate::streamed;
use crate::wire::{self, FromWorker, ToWorker};
use crate::{HostId, Message, TaskId};

/// Output of a worker, to print and then acknowledge once the lock is released.
pub(crate) struct Output {
    pub lines: Vec<(bool, String)>,
    pub from: Rank,
    pub bytes: u64,
}

impl Shared {
    /// Files one transport event; returns output to print once the lock is released.
    pub(crate) fn route(&self, state: &mut State, event: Event) -> Option<Output> {
        match event {
            Event::Message { from, payload } => self.route_frame(state, from, payload),
            Event::PeerLost { rank, reason } => {
                self.on_lost(state, rank, &reason);
                None
            }
            Event::PeerJoined(peer) => {
                self.on_joined(state, peer);
                None
            }
        }
    }

    /// Decodes a worker's frame and files it by kind.
    fn route_frame(&self, state: &mut State, from: Rank, payload: Vec<u8>) -> Option<Output> {
        let frame = match wire::decode::<FromWorker<'_>>(&payload) {
            Ok(frame) => frame,
            Err(_) if let Some(theirs) = wire::foreign_version(&payload) => {
                // The worker leaves after saying so; its tasks end as lost.
                let host = state.slots.get(from).map(|slot| slot.host.to_string());
                tracing::error!(
                    rank = from,
                    host = host.as_deref().unwrap_or("?"),
                    "worker rank {from} speaks parvm protocol version {theirs} and this spawner version {}: start workers from the same parvm build as the spawner",
                    wire::VERSION
                );
                return None;
            }
            Err(reason) => {
                tracing::warn!(rank = from, %reason, "dropping an unreadable frame");
                return None;
            }
        };
        match frame {
            FromWorker::Done {
                number,
                value,
                error,
                mirrored,
            } => {
                // The result keeps the frame as its buffer: located, then no copy.
                let value = match value {
                    Some(value) => {
                        let located = wire::locate(&payload, value);
                        Payload::from_frame(payload, located)
                    }
                    None => Payload::from_vec(Vec::new()),
                };
                let owed = Self::on_done(state, from, number, value, error, mirrored, false);
                owed_ack(from, owed)
            }
            FromWorker::User {
                from: number,
                to,
                data,
            } => {
                // The message keeps the frame as its buffer: located, then no copy.
                let located = wire::locate(&payload, data);
                let data = Payload::from_frame(payload, located);
                let owed = if to.slot == 0 {
                    Self::on_user_to_spawner(state, from, number, data)
                } else {
                    self.on_user_between_tasks(state, from, number, to, data)
                };
                owed.and_then(|bytes| owed_ack(from, bytes))
            }
            FromWorker::Output {
                number,
                stderr,
                data,
            } => {
                let task = TaskId { slot: from, number };
                if number != 0 && state.returns.streams(task) {
                    return Some(on_streamed_output(state, task, stderr, &data));
                }
                if number != 0 && state.returns.capture(task, stderr, &data) {
                    // Kept for the spawner, not printed; acknowledged all the same.
                    return Some(Output {
                        lines: Vec::new(),
                        from,
                        bytes: data.len() as u64,
                    });
                }
                Some(on_output(state, from, number, stderr, &data))
            }
            FromWorker::ManifestWanted { vm, root } => {
                Self::on_ship_request(state, from, vm, ShipJob::Manifest { rank: from, root });
                None
            }
            FromWorker::BlobsWanted {
                vm,
                root,
                request,
                digests,
            } => {
                Self::on_ship_request(
                    state,
                    from,
                    vm,
                    ShipJob::Blobs {
                        rank: from,
                        root,
                        request,
                        digests,
                    },
                );
                None
            }
            FromWorker::PiecesWanted {
                vm,
                root,
                request,
                digest,
                pieces,
            } => {
                Self::on_ship_request(
                    state,
                    from,
                    vm,
                    ShipJob::Pieces {
                        rank: from,
                        root,
                        request,
                        digest,
                        pieces,
                    },
                );
                None
            }
            FromWorker::Cleared { removed, error } => {
                state.cleared.push((from, error.map_or(Ok(removed), Err)));
                None
            }
            FromWorker::FileStart { number, path, .. } => {
                Self::on_file_start(state, from, number, &path);
                self.stop_returning(state, from, number);
                None
            }
            FromWorker::FileData { number, data } => {
                let ack = Self::on_file_data(state, from, number, &data);
                self.stop_returning(state, from, number);
                Some(ack)
            }
            FromWorker::FileEnd {
                number,
                mode,
                mtime,
                changed,
            } => {
                Self::on_file_end(state, from, number, mode, mtime, changed);
                self.stop_returning(state, from, number);
                None
            }
            FromWorker::FileWhole {
                number,
                path,
                data,
                mode,
                mtime,
            } => {
                Self::on_file_start(state, from, number, &path);
                let ack = Self::on_file_data(state, from, number, &data);
                Self::on_file_end(state, from, number, mode, mtime, false);
                self.stop_returning(state, from, number);
                Some(ack)
            }
            FromWorker::ReturnFailed { number, reason } => {
                Self::on_return_failed(state, from, number, reason);
                None
            }
            FromWorker::Leaving { reason } => {
                tracing::debug!(rank = from, %reason, "a worker leaves");
                state.slots.leave_because(from, reason);
                None
            }
            FromWorker::Stopped { number, started } => {
                if started {
                    // The worker exits next: a task sent to it now would only be lost.
                    state.slots.leave(from);
                }
                let host = state.slots.get(from).map_or("?", |s| s.host.as_str());
                let detail = if started {
                    format!(
                        "a function cannot be interrupted inside its thread, so its worker (rank {from} on host `{host}`) exits; the local backend starts a replacement"
                    )
                } else {
                    format!("it had not started on rank {from} (host `{host}`)")
                };
                let task = TaskId { slot: from, number };
                if !state.slots.is_live(task) {
                    // Its end was filed already (done as the stop came).
                    return None;
                }
                if !started {
                    Self::note_never_started(state, task);
                }
                state.stopping.insert(task);
                let owed = Self::on_done(
                    state,
                    from,
                    number,
                    Payload::from_vec(Vec::new()),
                    Some(detail),
                    0,
                    // A started function's worker exits next: what waits behind it never
                    // starts there.
                    started,
                );
                owed_ack(from, owed)
            }
        }
    }

    /// A returned file of task `number` of worker `from` starts (see [`crate::returned`]).
    fn on_file_start(state: &mut State, from: Rank, number: u64, path: &[u8]) {
        state
            .returns
            .file_start(TaskId { slot: from, number }, path);
    }

    /// The next bytes of a returned file: written, then acknowledged once the lock is
    /// released (the window of [`crate::link`]), so a worker sends no faster than the
    /// spawner writes.
    fn on_file_data(state: &mut State, from: Rank, number: u64, data: &[u8]) -> Output {
        state.returns.file_data(TaskId { slot: from, number }, data);
        Output {
            lines: Vec::new(),
            from,
            bytes: data.len() as u64,
        }
    }

    /// A returned file is complete (renamed into place), or changed and is dropped.
    fn on_file_end(
        state: &mut State,
        from: Rank,
        number: u64,
        mode: u32,
        mtime: (i64, i64),
        changed: bool,
    ) {
        state
            .returns
            .file_end(TaskId { slot: from, number }, mode, mtime, changed);
    }

    /// Writing the returned files of task `number` of worker `from` failed here: the
    /// worker is told once to send no more of them.
    fn stop_returning(&self, state: &mut State, from: Rank, number: u64) {
        if state.returns.take_stop(TaskId { slot: from, number })
            && let Err(e) = self.transport.send(from, &wire::return_stop(number))
        {
            tracing::debug!(rank = from, error = %e, "cannot stop a worker's returned files");
        }
    }

    /// A worker asks for a manifest or blobs of VM `vm`: handed to the VM's shipping
    /// thread, which checks and answers it; dropped with a warning for a VM that ships
    /// nothing (gone, or never shipping).
    fn on_ship_request(state: &mut State, from: Rank, vm: u32, job: ShipJob) {
        match state.ship.get(&vm) {
            Some(jobs) if jobs.send(job).is_ok() => {}
            _ => tracing::warn!(
                rank = from,
                vm,
                "dropping a request for shipped inputs of a VM that ships none"
            ),
        }
    }

    /// Returning failed on the worker; the task's exit will say why.
    fn on_return_failed(state: &mut State, from: Rank, number: u64, reason: String) {
        state.returns.failed(TaskId { slot: from, number }, reason);
    }

    /// Notes for its VM's dispatch that `task`, stopped while queued, never started.
    fn note_never_started(state: &mut State, task: TaskId) {
        let vm = state.slots.get(task.slot).and_then(|slot| {
            let running = slot.running.as_ref().map(|r| (r.number, r.vm));
            let queued = slot.queued.as_ref().map(|q| (q.number, q.vm));
            running
                .into_iter()
                .chain(queued)
                .find_map(|(number, vm)| (number == task.number).then_some(vm))
        });
        if let Some(notes) = vm.and_then(|vm| state.notes.get_mut(&vm)) {
            notes.never_started.insert(task);
        }
    }

    /// Task `number` of worker `from` ended: its result (when sent back) and its exit go
    /// to its VM; the slot frees when the VM receives the exit. Returns the bytes of
    /// streamed output dropped with a VM that is gone, which the worker is owed.
    fn on_done(
        state: &mut State,
        from: Rank,
        number: u64,
        value: Payload,
        error: Option<String>,
        mirrored: u64,
        last: bool,
    ) -> u64 {
        if state
            .slots
            .get(from)
            .and_then(|slot| slot.running.as_ref())
            .is_some_and(|r| r.number == number && r.ended)
        {
            // A function's worker that exits to stop it may report the end twice: stopped,
            // and done when the function returned as the stop came. One exit is filed.
            return 0;
        }
        let (vm, send_back, returns) = match state.slots.end(from, number, last) {
            End::Ended {
                vm,
                send_back,
                returns,
            } => (vm, send_back, returns),
            End::NoSlot => return 0,
            End::NotRunning => {
                tracing::warn!(rank = from, number, "end of a task this slot does not run");
                return 0;
            }
        };
        let task = TaskId { slot: from, number };
        // A take-back that crossed the start of the task it was for goes unanswered: the
        // task now runs there as usual, on a worker that has just shown it answers. (Looked
        // at only while some answer is awaited: every task's end passes here.)
        if !state.answer_due.is_empty()
            && let Some(started) = state
                .slots
                .get(from)
                .and_then(|slot| slot.running.as_ref())
                .filter(|running| running.number != number)
        {
            let started = TaskId {
                slot: from,
                number: started.number,
            };
            if !state.stopping.contains(&started) {
                state.answer_due.remove(&started);
            }
        }
        if mirrored > 0
            && let Some(notes) = state.notes.get_mut(&vm)
        {
            notes.mirrored.insert(task, mirrored);
        }
        // The spawner's own record decides, not what the worker says: a task asked to
        // stop is reported stopped, even when its end crossed the stop on the way.
        let error = if state.stop_answered(task) {
            if let Some(notes) = state.notes.get_mut(&vm) {
                notes.stopped.insert(task);
            }
            Some(stopped_reason(error.as_deref()))
        } else {
            error
        };
        let back = state.returns.finish(task);
        match state.inboxes.get_mut(&vm) {
            Some(inbox) => {
                if send_back {
                    let outcome = match &error {
                        Some(message) => Err(TaskFailure {
                            message: message.clone(),
                        }),
                        None => Ok(Value {
                            task,
                            bytes: value,
                            returns,
                        }),
                    };
                    inbox.push_back(Message::TaskResult { task, outcome });
                }
                let mut failure = error;
                if let Some(back) = back {
                    inbox.extend(back.messages);
                    if let Some(reason) = back.failure {
                        if back.failure_on_worker
                            && let Some(notes) = state.notes.get_mut(&vm)
                        {
                            notes.returns_failed_on_worker.insert(task);
                        }
                        failure = Some(match failure {
                            Some(error) => format!("{error}; also, {reason}"),
                            None => reason,
                        });
                    }
                }
                let status = match failure {
                    None => ExitStatus::Completed,
                    Some(reason) => ExitStatus::Failed { reason },
                };
                inbox.push_back(Message::TaskExit { task, status });
                0
            }
            // The VM is gone: nobody receives the exit, so the slot frees now.
            None => {
                state.slots.free(task);
                back.map_or(0, |back| streamed::unacknowledged(&back.messages))
            }
        }
    }

    /// A user message from a task of worker `from` to the spawner: into its VM's inbox.
    /// Returns the acknowledgement owed when it is dropped instead (no such task or VM).
    fn on_user_to_spawner(
        state: &mut State,
        from: Rank,
        number: Option<u64>,
        data: Payload,
    ) -> Option<u64> {
        let bytes = data.bytes().len();
        let inbox = user_sender(state, from, number)
            .and_then(|(sender, vm)| Some((sender, state.inboxes.get_mut(&vm?)?)));
        match inbox {
            Some((sender, inbox)) => {
                inbox.push_back(Message::User { from: sender, data });
                None
            }
            None => state.message_gone(from, bytes),
        }
    }

    /// A user message from a task of worker `from` to task `to` of another worker: handed
    /// to the lane of `to`'s worker while that task runs (`crate::forward`), else dropped.
    /// Returns the acknowledgement owed to `from` when it is dropped here.
    fn on_user_between_tasks(
        &self,
        state: &mut State,
        from: Rank,
        number: Option<u64>,
        to: TaskId,
        data: Payload,
    ) -> Option<u64> {
        let bytes = data.bytes().len();
        let Some((sender, _)) = user_sender(state, from, number) else {
            return state.message_gone(from, bytes);
        };
        if !state.slots.is_live(to) {
            tracing::debug!(to = %to, "dropping a message for a task that has ended");
            return state.message_gone(from, bytes);
        }
        let head = ToWorker::User {
            from: sender,
            to: to.number,
            data: Cow::Borrowed(&[]),
        };
        let Some(head) = wire::user_head(&head) else {
            return state.message_gone(from, bytes);
        };
        let message = Forward {
            from,
            to: to.slot,
            head,
            data,
        };
        let refused = match self.me() {
            Some(me) => self.forwarder.push(me, message),
            None => Err(message),
        };
        match refused {
            Ok(()) => None,
            // No thread for its lane: sent from here, as all were before lanes.
            Err(message) => {
                self.send_forward(&message);
                state.message_gone(from, bytes)
            }
        }
    }

    /// Sends `message` on to its receiver, from the thread of its lane (without the state
    /// lock), and gives its sender's window back: a receiver that is gone loses it.
    pub(crate) fn send_on(&self, message: Forward) {
        self.send_forward(&message);
        let owed = self
            .lock()
            .message_gone(message.from, message.data.bytes().len());
        if let Some(owed) = owed {
            self.acknowledge(message.from, owed);
        }
    }

    fn send_forward(&self, message: &Forward) {
        let parts = [&message.head[..], message.data.bytes()];
        if let Err(e) = self.transport.send_parts(message.to, &parts) {
            tracing::debug!(to = message.to, error = %e, "cannot forward a message");
        }
    }

    /// A worker joined after the start (TCP, or a local replacement): it gets the forwarded environment first,
    /// and VMs hear of its host when it is new.
    fn on_joined(&self, state: &mut State, peer: Peer) {
        if self.finalized.load(Ordering::Acquire) {
            // A replacement that joined while finalizing goes home at once.
            let _ = self.send(peer.rank, &ToWorker::Exit);
            return;
        }
        // Sent while the lock is held, so no spawn can reach the worker before it.
        self.send_env(peer.rank);
        if state.slots.join(peer.rank, peer.host.clone()) {
            for inbox in state.inboxes.values_mut() {
                inbox.push_back(Message::HostAdd {
                    hosts: vec![HostId(peer.host.clone())],
                });
            }
        }
    }

    /// A worker is gone: its task fails, and its host leaves when it was the last one.
    fn on_lost(&self, state: &mut State, rank: Rank, reason: &str) {
        state.message_owed.remove(&rank);
        let Some(slot) = state.slots.remove(rank) else {
            return;
        };
        if self.finalized.load(Ordering::Acquire) {
            return;
        }
        // Workers leave only when dismissed (above), so this is news: the transport's
        // reason names the worker and, where it can tell, what became of it; a worker that
        // said why it leaves adds that.
        let said;
        let reason = match &slot.left_because {
            Some(why) => {
                said = format!("{reason}; it said: {why}");
                said.as_str()
            }
            None => reason,
        };
        tracing::warn!(backend = self.backend, rank, host = %slot.host, "lost peer: {reason}");
        state.lost += 1;
        state.last_loss = Some(reason.to_owned());
        if state.slots.is_empty() && self.workers_can_join() {
            tracing::warn!(
                backend = self.backend,
                "no worker is left; waiting for workers to connect"
            );
        }
        for task in slot.running.iter().chain(&slot.queued) {
            state.returns.forget(TaskId {
                slot: rank,
                number: task.number,
            });
        }
        let running = slot.running.filter(|r| !r.ended).map(|r| (r, true));
        let queued = slot.queued.map(|q| (q, false));
        for (task, started) in running.into_iter().chain(queued) {
            let id = TaskId {
                slot: rank,
                number: task.number,
            };
            let stopped = state.stop_answered(id);
            if let Some(notes) = state.notes.get_mut(&task.vm) {
                notes.lost.insert(id, started);
                if stopped {
                    notes.stopped.insert(id);
                }
            }
            let what = if started {
                "while running the task"
            } else {
                "before the task started"
            };
            let died = format!(
                "the worker (rank {rank} on host `{}`) died {what}: {reason}",
                slot.host
            );
            let reason = if stopped {
                stopped_reason(Some(&died))
            } else {
                died
            };
            if let Some(inbox) = state.inboxes.get_mut(&task.vm) {
                inbox.push_back(Message::TaskExit {
                    task: id,
                    status: ExitStatus::Failed { reason },
                });
            }
        }
        if !state.slots.iter().any(|(_, other)| other.host == slot.host) {
            for inbox in state.inboxes.values_mut() {
                inbox.push_back(Message::HostDelete {
                    host: HostId(slot.host.clone()),
                });
            }
        }
    }
}

/// The reason a task the spawner asked to stop ends with: always starting with `stopped
/// by the spawner`, followed by what the worker said, if anything.
fn stopped_reason(detail: Option<&str>) -> String {
    match detail {
        Some(detail) => format!("stopped by the spawner: {detail}"),
        None => "stopped by the spawner (the task had just ended by itself; its result is dropped)"
            .to_owned(),
    }
}

/// The sender of a user message from worker `from` and the VM of its task; a compact frame
/// names no sender (`number` is `None`): it is the task the slot runs. `None`, logged,
/// when the slot runs no task.
fn user_sender(state: &State, from: Rank, number: Option<u64>) -> Option<(TaskId, Option<u32>)> {
    let running = state
        .slots
        .get(from)
        .and_then(|slot| slot.running.as_ref())
        .filter(|r| number.is_none_or(|number| r.number == number));
    let vm = running.map(|r| r.vm);
    let Some(number) = number.or(running.map(|r| r.number)) else {
        tracing::warn!(
            rank = from,
            "dropping a message from a slot that runs no task"
        );
        return None;
    };
    Some((TaskId { slot: from, number }, vm))
}

/// Output of a task that streams it ([`crate::Spawn::stream_output`]): kept when it is
/// captured too, and its whole lines filed in its VM's inbox as [`Message::Output`]. They
/// are acknowledged when the VM receives them, not now, so a program that receives
/// slowly holds the worker back; only when the VM is gone is the output acknowledged (and
/// dropped) at once.
fn on_streamed_output(state: &mut State, task: TaskId, stderr: bool, data: &[u8]) -> Output {
    let vm = state
        .slots
        .get(task.slot)
        .and_then(|slot| slot.running.as_ref())
        .filter(|running| running.number == task.number)
        .map(|running| running.vm);
    let mut bytes = data.len() as u64;
    if let Some(vm) = vm.filter(|vm| state.inboxes.contains_key(vm)) {
        state.returns.capture(task, stderr, data);
        let stream = crate::OutputStream::of_frame(stderr);
        if let Some(message) = state.returns.stream(task, stream, data)
            && let Some(inbox) = state.inboxes.get_mut(&vm)
        {
            inbox.push_back(message);
        }
        bytes = 0;
    }
    Output {
        lines: Vec::new(),
        from: task.slot,
        bytes,
    }
}

/// An acknowledgement of `bytes` owed to worker `from`, when there are any.
fn owed_ack(from: Rank, bytes: u64) -> Option<Output> {
    (bytes > 0).then(|| Output {
        lines: Vec::new(),
        from,
        bytes,
    })
}

/// Output lines worker `from` wrote while task `number` ran (0: between tasks), tagged
/// with the slot, task and host.
fn on_output(state: &State, from: Rank, number: u64, stderr: bool, data: &[u8]) -> Output {
    let host = state.slots.get(from).map_or("?", |slot| slot.host.as_str());
    let tag = if number == 0 {
        format!("[w{from}@{host}]")
    } else {
        format!("[{from}:{number}@{host}]")
    };
    Output {
        lines: String::from_utf8_lossy(data)
            .lines()
            .map(|line| (stderr, format!("{tag} {line}")))
            .collect(),
        from,
        bytes: data.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU64;

    use parvm_transport::Transport;

    use super::*;
    use crate::memory::MemoryTransport;
    use crate::state::Occupant;

    /// A spawner with one worker slot (rank 1) running a function task of VM 0 that the
    /// spawner asked to stop; the worker's end of the transport is returned too, so the
    /// slot is not lost meanwhile.
    fn stopping() -> (Shared, MemoryTransport, TaskId, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = parvm_env_config::Config::builder()
            .local_root(dir.path())
            .mirrored_roots([dir.path()])
            .build()
            .unwrap();
        let mut ends = MemoryTransport::cluster(&["spawner", "w"]).into_iter();
        let spawner: Box<dyn Transport> = Box::new(ends.next().unwrap());
        let worker = ends.next().unwrap();
        let shared = Shared::new(spawner, crate::Tasks::new(), config, Vec::new());
        let task = {
            let mut state = shared.lock();
            state.inboxes.insert(0, VecDeque::new());
            let chosen = state.slots.reserve(
                1,
                None,
                &AtomicU64::new(1),
                &Occupant {
                    vm: 0,
                    label: "f",
                    send_back: true,
                    returns: None,
                    command: false,
                },
            );
            let task = TaskId {
                slot: chosen[0].0,
                number: chosen[0].1,
            };
            state.stopping.insert(task);
            task
        };
        (shared, worker, task, dir)
    }

    fn frame(frame: &FromWorker<'_>) -> Event {
        Event::Message {
            from: 1,
            payload: wire::encode(frame).unwrap(),
        }
    }

    fn exits(state: &State) -> Vec<String> {
        state.inboxes[&0]
            .iter()
            .filter_map(|m| match m {
                Message::TaskExit {
                    status: ExitStatus::Failed { reason },
                    ..
                } => Some(reason.clone()),
                Message::TaskExit { .. } => Some("completed".to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_stopped_task_ends_once_as_stopped_whichever_end_comes_first() {
        for done_first in [true, false] {
            let (shared, worker, task, _dir) = stopping();
            // A function that returned as the stop came, and the worker that exits anyway.
            let done = FromWorker::Done {
                number: task.number,
                value: None,
                error: None,
                mirrored: 0,
            };
            let stopped = FromWorker::Stopped {
                number: task.number,
                started: true,
            };
            let mut state = shared.lock();
            let order = if done_first {
                [&done, &stopped]
            } else {
                [&stopped, &done]
            };
            for end in order {
                shared.route(&mut state, frame(end));
            }
            let exits = exits(&state);
            assert_eq!(exits.len(), 1, "{exits:?}");
            assert!(exits[0].starts_with("stopped by the spawner"), "{exits:?}");
            assert!(state.stopping.is_empty());
            // The worker exits: nothing more is placed on it.
            state.slots.free(task);
            let more = state.slots.reserve(
                1,
                None,
                &AtomicU64::new(9),
                &Occupant {
                    vm: 0,
                    label: "g",
                    send_back: true,
                    returns: None,
                    command: false,
                },
            );
            assert!(more.is_empty(), "{more:?}");
            drop(state);
            drop(worker);
        }
    }

    /// A take-back of the task queued behind the running one, sent as the running one ended
    /// (so the worker started the queued one and ignores the take-back), is not awaited: a
    /// worker that answers is never given up for it. A real stop stays awaited.
    #[test]
    fn a_take_back_that_crossed_the_start_of_its_task_is_not_awaited() {
        let (shared, worker, running, _dir) = stopping();
        let mut state = shared.lock();
        state.stopping.clear();
        let occupant = Occupant {
            vm: 0,
            label: "g",
            send_back: true,
            returns: None,
            command: false,
        };
        let (rank, number, queued_behind) = state
            .slots
            .reserve_queued(None, None, &AtomicU64::new(7), &occupant)
            .unwrap();
        assert!(queued_behind);
        let queued = TaskId { slot: rank, number };
        let due = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Taken back (no `stopping` entry, as `Vm::withdraw` leaves none).
        state.answer_due.insert(queued, due);
        let done = FromWorker::Done {
            number: running.number,
            value: None,
            error: None,
            mirrored: 0,
        };
        shared.route(&mut state, frame(&done));
        assert!(state.answer_due.is_empty(), "{:?}", state.answer_due);
        // Asked to stop the task it now runs: awaited until its end comes.
        state.stopping.insert(queued);
        state.answer_due.insert(queued, due);
        let other = FromWorker::Output {
            number: queued.number,
            stderr: false,
            data: b"x".as_slice().into(),
        };
        shared.route(&mut state, frame(&other));
        assert!(state.answer_due.contains_key(&queued));
        let done = FromWorker::Done {
            number: queued.number,
            value: None,
            error: None,
            mirrored: 0,
        };
        shared.route(&mut state, frame(&done));
        assert!(state.answer_due.is_empty());
        drop(state);
        drop(worker);
    }

    /// Registers `task` as streaming its output.
    fn streaming(state: &mut State, task: TaskId, root: &std::path::Path) {
        state.returns.register(
            task,
            crate::returned::Wanted {
                results: None,
                returning: false,
                capture: false,
                stream: true,
                local_root: root.to_owned(),
            },
        );
    }

    fn output(number: u64, data: &[u8]) -> Event {
        frame(&FromWorker::Output {
            number,
            stderr: false,
            data: data.into(),
        })
    }

    fn streamed(state: &State) -> Vec<Vec<u8>> {
        state.inboxes[&0]
            .iter()
            .filter_map(|m| match m {
                Message::Output { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn streamed_output_goes_to_the_inbox_in_lines_and_is_not_acknowledged_yet() {
        let (shared, worker, task, dir) = stopping();
        let mut state = shared.lock();
        state.stopping.clear();
        streaming(&mut state, task, dir.path());
        let owed = shared.route(&mut state, output(task.number, b"one\ntw"));
        assert_eq!(
            owed.map_or(0, |o| o.bytes),
            0,
            "acknowledged before it was taken"
        );
        assert_eq!(streamed(&state), [b"one\n".to_vec()]);
        shared.route(&mut state, output(task.number, b"o"));
        assert_eq!(streamed(&state).len(), 1, "a partial line went out");
        // The end brings the last line without its newline, before the exit.
        shared.route(
            &mut state,
            frame(&FromWorker::Done {
                number: task.number,
                value: None,
                error: None,
                mirrored: 0,
            }),
        );
        assert_eq!(streamed(&state), [b"one\n".to_vec(), b"two".to_vec()]);
        assert!(matches!(
            state.inboxes[&0].back(),
            Some(Message::TaskExit { .. })
        ));
        drop(state);
        drop(worker);
    }

    #[test]
    fn streamed_output_of_a_vm_that_is_gone_is_acknowledged_at_once() {
        let (shared, worker, task, dir) = stopping();
        let mut state = shared.lock();
        state.stopping.clear();
        streaming(&mut state, task, dir.path());
        shared.route(&mut state, output(task.number, b"kept back"));
        state.inboxes.remove(&0);
        let now = shared.route(&mut state, output(task.number, b" line\n"));
        assert_eq!(now.map(|o| o.bytes), Some(6));
        // The partial line kept before the VM went is owed when the task ends.
        let owed = shared.route(
            &mut state,
            frame(&FromWorker::Done {
                number: task.number,
                value: None,
                error: None,
                mirrored: 0,
            }),
        );
        assert_eq!(owed.map(|o| o.bytes), Some(9));
        drop(state);
        drop(worker);
    }

    #[test]
    fn a_stopped_task_whose_worker_is_lost_ends_as_stopped() {
        let (shared, worker, task, _dir) = stopping();
        let mut state = shared.lock();
        shared.route(
            &mut state,
            Event::PeerLost {
                rank: 1,
                reason: "it exited with status 75".to_owned(),
            },
        );
        let exits = exits(&state);
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert!(
            exits[0].starts_with("stopped by the spawner") && exits[0].contains("status 75"),
            "{exits:?}"
        );
        assert!(!state.stopping.contains(&task));
        drop(state);
        drop(worker);
    }
}
