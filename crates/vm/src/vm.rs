//! VM objects: [`VmBuilder`] checks a VM's mirror map and storage settings, and [`Vm`]
//! spawns tasks with them and receives the messages of its tasks.
//!
//! It must not know how the runtime starts nor how events are filed (that is
//! [`crate::spawner`]); it reads the slot table to choose free slots.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use parvm_transport::Rank;
use serde::Serialize;

use crate::layout::{ClearReport, Layout};
use crate::returned::Wanted;
use crate::spawner::{Shared, Until};
use crate::state::Occupant;
use crate::tasks::JobSpec;
use crate::wire::{Job, ShipPlan, SpawnRequest, Startup, ToWorker};
use crate::{Error, HostId, Message, Runtime, Spawn, TaskId};

mod builder;

pub use builder::VmBuilder;

/// The type a task's result decodes to, and its name.
type ResultType = (std::any::TypeId, &'static str);

/// A virtual machine object: spawns tasks with its own mirror map and storage settings,
/// and receives the messages of the tasks it spawned.
pub struct Vm {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
    index: u32,
    mirror: Option<Vec<u8>>,
    /// The workers that have this VM's mirror map. Held while the map is sent, so no
    /// spawn request of this VM overtakes it.
    mirror_sent: Arc<Mutex<HashSet<Rank>>>,
    /// Shipping the map's roots to workers that do not share them (`None`: no map, or
    /// `PARVM_SHIP=never`).
    ship: Option<crate::ship::serve::VmShip>,
    folder: bool,
    persistent: bool,
    clean: bool,
    startup: Option<Startup>,
}

impl Vm {
    /// This VM's index (distinct for every VM of the process; names its task folders).
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The runtime this VM belongs to.
    #[must_use]
    pub fn runtime(&self) -> Runtime {
        Runtime::from_shared(Arc::clone(&self.shared), self.listen)
    }

    /// See [`Runtime::hosts`].
    #[must_use]
    pub fn hosts(&self) -> Vec<HostId> {
        self.runtime().hosts()
    }

    /// See [`Runtime::slots`].
    #[must_use]
    pub fn slots(&self) -> usize {
        self.runtime().slots()
    }

    /// See [`Runtime::free_slots`].
    #[must_use]
    pub fn free_slots(&self) -> usize {
        self.runtime().free_slots()
    }

    /// The spawner's own task id, `0:0`.
    #[must_use]
    pub fn task_id(&self) -> TaskId {
        TaskId::SPAWNER
    }

    /// The spawner's host.
    #[must_use]
    pub fn host_id(&self) -> HostId {
        HostId(self.shared.host.clone())
    }

    /// The host a task runs on, if its slot is known.
    #[must_use]
    pub fn host_of(&self, task: TaskId) -> Option<HostId> {
        if task.slot == 0 {
            return Some(self.host_id());
        }
        self.shared
            .lock()
            .slots
            .get(task.slot)
            .map(|slot| HostId(slot.host.clone()))
    }

    /// The spawner has no parent.
    #[must_use]
    pub fn parent_task_id(&self) -> Option<TaskId> {
        None
    }

    /// See [`Runtime::describe`].
    #[must_use]
    pub fn describe(&self) -> Layout {
        self.runtime().describe()
    }

    /// See [`Runtime::workers_lost`].
    #[must_use]
    pub fn workers_lost(&self) -> usize {
        self.runtime().workers_lost()
    }

    /// See [`Runtime::clear_local_storage`].
    ///
    /// # Errors
    /// As [`Runtime::clear_local_storage`].
    pub fn clear_local_storage(
        &self,
        force: bool,
        timeout: Duration,
    ) -> Result<ClearReport, Error> {
        self.runtime().clear_local_storage(force, timeout)
    }

    /// Spawns tasks on free slots and returns their ids; fewer than asked (or none) when
    /// fewer slots are free.
    ///
    /// # Errors
    /// The task is not registered or its arguments have the wrong type (nothing is sent),
    /// the VM was finalized, or the transport failed.
    pub fn spawn(&self, spawn: Spawn) -> Result<Vec<TaskId>, Error> {
        self.shared.check_open()?;
        let (label, returns, job) = self.checked_job(&spawn)?;
        let wanted = self.check_returns(&spawn)?;
        let chosen = {
            let mut state = self.shared.lock();
            let chosen = state.slots.reserve(
                spawn.count,
                spawn.hosts.as_deref(),
                &self.shared.next_number,
                &Occupant {
                    vm: self.index,
                    label,
                    send_back: spawn.send_back,
                    returns,
                    command: matches!(job, Job::Command { .. }),
                },
            );
            // Registered before the request leaves, so the task's first frame finds it.
            if let Some(wanted) = &wanted {
                for &(rank, number) in &chosen {
                    state
                        .returns
                        .register(TaskId { slot: rank, number }, wanted.for_task(rank, number));
                }
            }
            chosen
        };
        let mut frame = self.spawn_frame(job, &spawn);
        let mut ids = Vec::with_capacity(chosen.len());
        for (rank, number) in chosen {
            if let ToWorker::Spawn(request) = &mut frame {
                request.number = number;
            }
            self.before_spawn(rank);
            if let Err(e) = self.shared.send(rank, &frame) {
                // The worker is gone; its loss arrives as an event and fails the task.
                tracing::debug!(rank, error = %e, "cannot send a spawn request");
            }
            ids.push(TaskId { slot: rank, number });
        }
        Ok(ids)
    }

    /// Checks `spawn`'s task and arguments against the registry and gives the slot's label,
    /// the type its result decodes to, and the job to send; nothing is sent.
    pub(crate) fn checked_job<'s>(
        &self,
        spawn: &'s Spawn,
    ) -> Result<(&'s str, Option<ResultType>, Job<'s>), Error> {
        Ok(match &spawn.job {
            JobSpec::Function {
                name,
                args,
                args_type,
            } => {
                let entry = self.shared.tasks.lookup(name, *args_type)?;
                let args = args.as_ref().map_err(|reason| Error::Setting {
                    setting: "spawn arguments",
                    reason: format!("cannot encode the arguments of task `{name}`: {reason}"),
                })?;
                (
                    name.as_str(),
                    Some(entry.returns),
                    Job::Function {
                        name: name.as_str().into(),
                        args: args.as_slice().into(),
                    },
                )
            }
            JobSpec::Command { program, args, env } => (
                program.as_str(),
                Some((
                    std::any::TypeId::of::<crate::CommandStatus>(),
                    std::any::type_name::<crate::CommandStatus>(),
                )),
                Job::Command {
                    program: program.clone(),
                    args: args.clone(),
                    env: env.clone(),
                },
            ),
        })
    }

    /// The spawn request for `job` of `spawn` with this VM's settings (task number 0, set
    /// per slot).
    pub(crate) fn spawn_frame<'s>(&'s self, job: Job<'s>, spawn: &Spawn) -> ToWorker<'s> {
        ToWorker::Spawn(SpawnRequest {
            number: 0,
            vm: self.index,
            job,
            folder: self.folder,
            persistent: self.persistent,
            clean: self.clean,
            startup: self.startup.clone(),
            send_back: spawn.send_back,
            returning: spawn.returning.clone(),
        })
    }

    /// What this VM shares with the others of its runtime.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether this VM mirrors anything into its task folders.
    pub(crate) fn mirrors(&self) -> bool {
        self.mirror.is_some()
    }

    /// Stops `task`. A command is ended with everything it started (its supervisor sends
    /// `SIGTERM`, then `SIGKILL` after a grace); a function task, which cannot be
    /// interrupted inside its thread, ends with its worker process (the local backend then
    /// starts a replacement worker, see
    /// [`RuntimeBuilder::replace_workers`](crate::RuntimeBuilder::replace_workers)); a
    /// task whose spawn request waits at its worker behind another task is answered without
    /// running. Either way the task's [`Message::TaskExit`] arrives as usual, with
    /// [`ExitStatus::Failed`](crate::ExitStatus::Failed) and a reason starting with
    /// `stopped by the spawner` (and its [`Message::TaskResult`] fails with the same text,
    /// when results are sent back). A function's worker that exits also shows up as a
    /// lost worker: the slot leaves (with a
    /// [`Message::HostDelete`] for its host's last worker), and a replacement joins as a
    /// new slot (with a [`Message::HostAdd`]).
    ///
    /// A task that already ended, an unknown task and the spawner's own id are left alone:
    /// `Ok(())`. Stopping a task twice is the same as once. The call does not wait: the
    /// stop takes effect within a fraction of a second (a command at its next check, a
    /// function when its worker's output thread next looks).
    ///
    /// Under MPI a worker process that exits ends the whole job (mpirun's rule), so stop
    /// only commands there; under TCP the worker process exits and comes back only when
    /// it is restarted (see `parvm worker`).
    ///
    /// # Errors
    /// The VM was finalized; [`Error::CannotStop`] for a function task on the in-process
    /// `memory` backend, whose workers are threads of this process; or the transport failed.
    pub fn stop(&self, task: TaskId) -> Result<(), Error> {
        self.shared.check_open()?;
        {
            let mut state = self.shared.lock();
            let slot = state.slots.get(task.slot);
            let running = slot
                .and_then(|s| s.running.as_ref())
                .filter(|r| r.number == task.number && !r.ended);
            // A request queued behind another task (dispatch) is answered without running,
            // so stopping it needs no worker to exit.
            let queued = slot
                .and_then(|s| s.queued.as_ref())
                .is_some_and(|q| q.number == task.number);
            let command = match running {
                Some(running) => running.command,
                None if queued => true,
                None => return Ok(()),
            };
            if !command && self.shared.backend == "memory" {
                return Err(Error::CannotStop {
                    task,
                    reason: "it is a function on the memory backend, whose workers are threads of this process and cannot exit; let it return (or make it watch for a message telling it to), or stop only commands there".to_owned(),
                });
            }
            if !state.stopping.insert(task) {
                return Ok(());
            }
            self.shared.expect_answer(&mut state, task);
        }
        match self.shared.send(
            task.slot,
            &ToWorker::Stop {
                number: task.number,
                unless_started: false,
            },
        ) {
            Ok(()) => Ok(()),
            // The worker is gone: its loss ends the task, reported as stopped.
            Err(Error::Transport { .. }) => {
                tracing::debug!(task = %task, "cannot send a stop; the worker is gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes back `task`, queued behind the running task of its slot, unless it started
    /// by the time its worker reads this (a dispatch moving it to a free slot). Its end
    /// comes as a stop's ([`Message::TaskExit`] of a task asked to stop) when it was taken
    /// back; otherwise it runs there as usual. `false` when it is not queued there (any
    /// more), is being stopped already, or its worker is gone.
    pub(crate) fn withdraw(&self, task: TaskId) -> bool {
        {
            let mut state = self.shared.lock();
            let queued = state
                .slots
                .get(task.slot)
                .and_then(|slot| slot.queued.as_ref())
                .is_some_and(|q| q.number == task.number);
            if !queued || state.stopping.contains(&task) {
                return false;
            }
            self.shared.expect_answer(&mut state, task);
        }
        let frame = ToWorker::Stop {
            number: task.number,
            unless_started: true,
        };
        self.shared.send(task.slot, &frame).is_ok()
    }

    /// Checks what the spawn wants back besides its value (returned files, captured
    /// output), before anything is sent; `None` when it wants nothing.
    pub(crate) fn check_returns(&self, spawn: &Spawn) -> Result<Option<WantedBack>, Error> {
        let capture = spawn.capture && matches!(spawn.job, JobSpec::Command { .. });
        let stream = spawn.stream_output && matches!(spawn.job, JobSpec::Command { .. });
        if let Some(first) = spawn.returning.first() {
            for pattern in &spawn.returning {
                parvm_mirror_fs::check_return_pattern(pattern).map_err(|source| {
                    Error::ReturnPattern {
                        pattern: pattern.clone(),
                        source,
                    }
                })?;
            }
            if spawn.results_dir.is_none() {
                return Err(Error::ReturnWithoutResults {
                    pattern: first.clone(),
                });
            }
            if !self.folder {
                return Err(Error::ReturnWithoutFolder {
                    pattern: first.clone(),
                });
            }
        } else if !capture && !stream {
            return Ok(None);
        }
        let results = match &spawn.results_dir {
            Some(dir) => Some(std::path::absolute(dir).map_err(|source| Error::Io {
                what: "resolve the results folder",
                path: dir.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Some(WantedBack {
            results,
            per_task: spawn.count > 1,
            returning: !spawn.returning.is_empty(),
            capture,
            stream,
            local_root: self.shared.config.local_root().to_owned(),
        }))
    }

    /// Sends what worker `rank` needs before a spawn request of this VM: the mirror map,
    /// when the VM has one and the worker does not, and a new manifest of each shipped
    /// root whose sources changed since the worker was sent one.
    pub(crate) fn before_spawn(&self, rank: Rank) {
        if let Some(map) = &self.mirror {
            self.send_map_once(rank, map);
        }
        if let Some(ship) = &self.ship {
            ship.before_spawn(&self.shared, rank);
        }
    }

    /// What this VM has shipped to workers whose hosts do not share its mirrored roots
    /// (see `PARVM_SHIP`): manifests, and the files' contents their host caches lacked.
    /// All zero when nothing was shipped.
    #[must_use]
    pub fn ship_stats(&self) -> crate::ShipStats {
        self.ship
            .as_ref()
            .map(crate::ship::serve::VmShip::stats)
            .unwrap_or_default()
    }

    /// Sends this VM's mirror map to worker `rank` unless it has it: once per worker, so
    /// a worker that joined later gets it before its first task of this VM.
    fn send_map_once(&self, rank: Rank, map: &[u8]) {
        let mut sent = self
            .mirror_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sent.insert(rank) {
            let frame = ToWorker::Mirror {
                vm: self.index,
                map: map.into(),
                ship: self
                    .ship
                    .as_ref()
                    .map_or(ShipPlan::Never, |ship| ship.plan().clone()),
            };
            if let Err(e) = self.shared.send(rank, &frame) {
                // The worker is gone; its loss arrives as an event and fails the task.
                tracing::debug!(rank, error = %e, "cannot send a mirror map");
            }
        }
    }

    /// Waits for the next message for this VM.
    ///
    /// # Errors
    /// The VM was finalized or the transport failed; [`Error::WorkersGone`] at once, after
    /// the messages already received, when every worker is gone and the transport starts
    /// no new ones (local, MPI), since nothing could ever arrive. On TCP, where workers
    /// may connect at any time, it keeps waiting.
    pub fn recv(&self) -> Result<Message, Error> {
        loop {
            if let Some(message) = self.next(Until::Forever)? {
                return Ok(message);
            }
        }
    }

    /// Waits at most `timeout`; `Ok(None)` when nothing came.
    ///
    /// # Errors
    /// As [`Vm::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, Error> {
        self.next(Until::after(timeout))
    }

    /// Returns a message that has already arrived, else `Ok(None)`.
    ///
    /// # Errors
    /// As [`Vm::recv`].
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        self.next(Until::Now)
    }

    fn next(&self, until: Until) -> Result<Option<Message>, Error> {
        self.shared.check_open()?;
        let index = self.index;
        let shared = &self.shared;
        let mut owed = None;
        let found = self.shared.pump(until, |state| {
            let Some(message) = state.inboxes.get_mut(&index).and_then(VecDeque::pop_front) else {
                // Messages of lost workers were filed before their loss, so an empty inbox
                // with no worker left stays empty.
                return shared.nothing_can_arrive(state).map(Err);
            };
            match &message {
                Message::TaskExit { task, .. } => state.slots.free(*task),
                Message::User { from, data } if from.slot != 0 => {
                    owed = state
                        .message_gone(from.slot, data.bytes().len())
                        .map(|bytes| (from.slot, bytes));
                }
                _ => {}
            }
            Some(Ok(message))
        })?;
        // Taken by the program: the worker may send as much again (`crate::link`).
        if let Some(Ok(Message::Output { task, data, .. })) = &found {
            self.shared.acknowledge(task.slot, data.len() as u64);
        }
        if let Some((rank, bytes)) = owed {
            self.shared.acknowledge(rank, bytes);
        }
        found.transpose()
    }

    /// Sends `value` (MessagePack) to task `to`; decode with [`Payload::decode`](crate::Payload::decode).
    ///
    /// # Errors
    /// The value cannot be encoded, the VM was finalized, or the transport failed. A
    /// message to a task that has ended is dropped, not an error.
    pub fn send<T: Serialize>(&self, to: TaskId, value: &T) -> Result<(), Error> {
        let data = rmp_serde::to_vec(value).map_err(|source| Error::Encode {
            what: format!("a message to task {to}"),
            source,
        })?;
        self.send_bytes(to, &data)
    }

    /// Sends raw bytes to task `to`.
    ///
    /// # Errors
    /// As [`Vm::send`].
    pub fn send_bytes(&self, to: TaskId, data: &[u8]) -> Result<(), Error> {
        self.shared.check_open()?;
        if to.slot == 0 {
            if let Some(inbox) = self.shared.lock().inboxes.get_mut(&self.index) {
                inbox.push_back(Message::User {
                    from: TaskId::SPAWNER,
                    data: crate::Payload::from_vec(data.to_vec()),
                });
            }
            return Ok(());
        }
        if !self.shared.lock().slots.is_live(to) {
            tracing::debug!(to = %to, "dropping a message for a task that has ended");
            return Ok(());
        }
        self.shared.send_with_tail(
            to.slot,
            &ToWorker::User {
                from: TaskId::SPAWNER,
                to: to.number,
                data: (&[][..]).into(),
            },
            data,
        )
    }

    /// Releases this VM: its pending messages are dropped, its running tasks finish
    /// unobserved, and workers drop its persistent folders. Dropping the VM does the same.
    pub fn finalize(self) {}
}

impl Drop for Vm {
    fn drop(&mut self) {
        let (ranks, owed) = {
            let mut state = self.shared.lock();
            state.ship.remove(&self.index);
            let dropped = state.inboxes.remove(&self.index).unwrap_or_default();
            state.notes.remove(&self.index);
            state.slots.release_vm(self.index);
            // Streamed output and messages of its tasks nobody will take: their workers
            // are owed them (`crate::link`).
            let owed: Vec<(parvm_transport::Rank, u64)> = dropped
                .iter()
                .filter_map(|message| match message {
                    Message::Output { task, .. } => {
                        Some((task.slot, crate::streamed::unacknowledged([message])))
                    }
                    Message::User { from, data } if from.slot != 0 => state
                        .message_gone(from.slot, data.bytes().len())
                        .map(|bytes| (from.slot, bytes)),
                    _ => None,
                })
                .collect();
            (state.slots.ranks(), owed)
        };
        for (rank, bytes) in owed {
            self.shared.acknowledge(rank, bytes);
        }
        if self.shared.finalized.load(Ordering::Acquire) {
            drop(self.ship.take());
            return;
        }
        // Workers drop the VM's persistent folders and the mirror map they keep.
        let ranks: Vec<u32> = if self.persistent {
            ranks
        } else {
            let sent = self
                .mirror_sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            ranks
                .into_iter()
                .filter(|rank| sent.contains(rank))
                .collect()
        };
        for rank in ranks {
            let _ = self
                .shared
                .send(rank, &ToWorker::ForgetVm { vm: self.index });
        }
        // Stopped (and its markers removed) while this VM still holds the runtime.
        drop(self.ship.take());
    }
}

/// What a spawn wants back besides its tasks' values, before it is given to each task.
pub(crate) struct WantedBack {
    results: Option<PathBuf>,
    per_task: bool,
    returning: bool,
    capture: bool,
    stream: bool,
    local_root: PathBuf,
}

impl WantedBack {
    /// What task `number` on slot `rank` wants: with a count above 1 its own folder
    /// `<results>/<slot>.<number>`.
    pub(crate) fn for_task(&self, rank: u32, number: u64) -> Wanted {
        Wanted {
            results: self.results.as_ref().map(|dir| {
                if self.per_task {
                    dir.join(format!("{rank}.{number}"))
                } else {
                    dir.clone()
                }
            }),
            returning: self.returning,
            capture: self.capture,
            stream: self.stream,
            local_root: self.local_root.clone(),
        }
    }
}
