//! The worker side: the spawn loop, and running one job (a registered function under
//! `catch_unwind`, or a command under its supervisor) in its task folder.
//!
//! The context a task runs with is in `task_context`; this module builds one per task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parvm_env_config::Config;
use parvm_transport::{Event, Transport, Wait};

use crate::capture::Capture;
use crate::error::one_line;
use crate::leave::LeaveRequest;
use crate::link::{Begin, Link, TaskKind};
use crate::message::CommandStatus;
use crate::ship::fetch::Exchange;
use crate::supervise::{self, End};
use crate::task_context::{LoopState, TaskContext};
use crate::task_folder::{Next, TaskFolders};
use crate::wire::{self, FromWorker, Job, SpawnRequest, ToWorker};
use crate::{Error, TaskId, Tasks};

/// Set for every command task: the slot (worker rank) it runs on, as `parvm run`'s `{%}`
/// gives it. A replacement worker has a new slot number.
pub const TASK_SLOT_VAR: &str = "PARVM_TASK_SLOT";

/// Set for every command task: its task id, `slot:number`, as [`TaskContext::task_id`]
/// shows it.
pub const TASK_ID_VAR: &str = "PARVM_TASK_ID";

/// How often a worker waiting for a command looks for a finalize or the spawner's loss.
const COMMAND_CHECK: Duration = Duration::from_millis(50);

/// How often an idle worker that may be asked to leave ([`Worker::leave_on`]) looks.
const LEAVE_CHECK: Duration = Duration::from_millis(100);

/// How long a folder kept for a next task that is not here yet waits for it: a program
/// that spawns the next task when it receives the last one's exit sends it within a round
/// trip, and the folder is renewed instead of mirrored afresh.
const SPARE_WAIT: Duration = Duration::from_millis(50);

/// The spawn loop of a worker process (or of an in-process worker thread).
///
/// [`Runtime::start`](crate::Runtime::start) runs it for you in worker processes; build
/// one by hand for an in-process [`memory`](crate::memory) cluster or a transport of your own.
pub struct Worker {
    tasks: Tasks,
    config: Config,
    change_dir: bool,
    capture_output: bool,
    leave: Option<LeaveRequest>,
}

impl Worker {
    /// A worker running `tasks`, with local and mirrored storage from `config`.
    #[must_use]
    pub fn new(tasks: Tasks, config: Config) -> Worker {
        Worker {
            tasks,
            config,
            change_dir: true,
            capture_output: false,
            leave: None,
        }
    }

    /// Leaves when `request` is made (see [`LeaveRequest::on_signals`]): the running
    /// command is stopped with everything it started and given back to the spawner, which
    /// runs it again on another worker (a function task cannot be interrupted, so its
    /// process ends at once, as for a [`Vm::stop`](crate::Vm::stop)); the task folders are
    /// removed; the spawner is told why; and [`serve_to_end`](Self::serve_to_end) returns
    /// [`WorkerEnd::Left`]. A command that ends by itself meanwhile, other than with
    /// status 0 (it may have got the same signal), is given back too.
    #[must_use]
    pub fn leave_on(mut self, request: LeaveRequest) -> Worker {
        self.leave = Some(request);
        self
    }

    /// Whether a task's folder becomes the process's current folder; default true. Turn it
    /// off for workers on threads, which share one current folder.
    #[must_use]
    pub fn change_dir(mut self, on: bool) -> Worker {
        self.change_dir = on;
        self
    }

    /// Whether file descriptors 1 and 2 are redirected and forwarded to the spawner, tagged
    /// with the task id; default false (the runtime turns it on in worker processes). A
    /// worker that captures owns its process, so it also sets the variables the spawner
    /// forwards ([`RuntimeBuilder::forward_env`](crate::RuntimeBuilder::forward_env)) in the
    /// process's environment; otherwise only its commands get them.
    #[must_use]
    pub fn capture_output(mut self, on: bool) -> Worker {
        self.capture_output = on;
        self
    }

    /// Serves spawn requests until the spawner says exit or goes away.
    ///
    /// # Errors
    /// The transport failed, or output could not be redirected.
    pub fn serve(self, transport: Box<dyn Transport>) -> Result<(), Error> {
        self.serve_to_end(transport).map(|_| ())
    }

    /// [`serve`](Self::serve)s, and says how it ended: dismissed by the spawner at the
    /// end of its run, or with the spawner lost (killed, or the network failed), which a
    /// worker started by hand may want to tell its user.
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub fn serve_to_end(self, transport: Box<dyn Transport>) -> Result<WorkerEnd, Error> {
        let transport: Arc<dyn Transport> = Arc::from(transport);
        let host = transport.host();
        let rank = transport.rank();
        let backend = transport.backend();
        let link = Arc::new(Link::new(Arc::clone(&transport), self.leave.clone()));
        let mut storage = TaskFolders::new(&self.config);
        storage.sweep();
        let capture = if self.capture_output {
            // MPI reports no lost peers: its launcher ends the job instead.
            Some(Capture::start(
                Arc::clone(&link),
                transport.workers_are_children(),
                transport.reports_dead_peers(),
            )?)
        } else {
            None
        };
        tracing::info!(rank, %host, pid = std::process::id(), "worker ready");
        if let Some(capture) = &capture {
            // Sent now, so the line carries the worker's tag, not the first task's.
            capture.drain();
        }
        let home = std::env::current_dir().ok();
        let state = LoopState::default();
        // Forked now, while the worker is small: the supervisor keeps, copy-on-write, the
        // memory the worker has when it is forked, for as long as it lives (a fork at the
        // first command could keep a copy of whatever a function task had built by then).
        // Should this fail, the first command tries again and reports why.
        match supervise::Supervisor::start() {
            Ok(supervisor) => *state.supervisor.borrow_mut() = Some(supervisor),
            Err(e) => tracing::debug!(error = %e, "cannot fork the command supervisor yet"),
        }
        let result = loop {
            if let Some(signal) = link.leaving() {
                storage.forget_all();
                break Ok(say_leaving(&*transport, &state, signal));
            }
            let deferred = state.deferred.borrow_mut().pop_front();
            let payload = match deferred {
                Some(payload) => payload,
                None => match receive(
                    &link,
                    &mut storage,
                    self.leave
                        .as_ref()
                        .is_some_and(LeaveRequest::looked_for_while_idle),
                ) {
                    Ok(Some(Event::Message { from: 0, payload })) => payload,
                    Ok(Some(Event::PeerLost { rank: 0, reason })) => {
                        tracing::debug!(%reason, "spawner lost, leaving");
                        break Ok(WorkerEnd::SpawnerLost { reason });
                    }
                    Ok(_) => continue,
                    Err(e) => break Err(Error::transport(backend, e)),
                },
            };
            let frame = match wire::decode::<ToWorker<'_>>(&payload) {
                Ok(frame) => frame,
                Err(_) if let Some(theirs) = wire::foreign_version(&payload) => {
                    // A task sent in a version this worker cannot read would wait forever:
                    // say which version this is, so the spawner names it, and leave.
                    let _ = transport.send(0, &wire::other_version_frame());
                    break Err(Error::OtherVersion {
                        theirs,
                        ours: wire::VERSION,
                    });
                }
                Err(reason) => {
                    tracing::warn!(%reason, "dropping an unreadable frame from the spawner");
                    continue;
                }
            };
            match frame {
                ToWorker::Spawn(request) => {
                    let kind = match request.job {
                        Job::Function { .. } => TaskKind::Function,
                        Job::Command { .. } => TaskKind::Command,
                    };
                    match link.begin_task(request.number, kind) {
                        Begin::Run => {}
                        Begin::Stopped => {
                            // Stopped while queued behind the task before it: never run.
                            tracing::debug!(number = request.number, "a queued task was stopped");
                            state.send_or_log(
                                &*transport,
                                &FromWorker::Stopped {
                                    number: request.number,
                                    started: false,
                                },
                            );
                            continue;
                        }
                        Begin::Withdrawn => {
                            tracing::debug!(
                                number = request.number,
                                "a queued task was taken back"
                            );
                            continue;
                        }
                    }
                    let ctx = Run {
                        worker: &self,
                        transport: &*transport,
                        link: &link,
                        host: &host,
                        rank,
                        state: &state,
                        capture: capture.as_ref(),
                        home: home.as_deref(),
                    };
                    ctx.run(&mut storage, &request);
                    link.end_task();
                    if state.exit_requested.get() {
                        break Ok(WorkerEnd::Dismissed);
                    }
                    if let Some(reason) = state.spawner_lost_reason() {
                        break Ok(WorkerEnd::SpawnerLost { reason });
                    }
                }
                ToWorker::User { to, .. } => {
                    tracing::debug!(to, "dropping a message for a task that has ended");
                }
                ToWorker::Clear { force } => {
                    let (removed, error) = match storage.clear(force) {
                        Ok(removed) => (removed, None),
                        Err(e) => (0, Some(one_line(&e))),
                    };
                    state.send_or_log(&*transport, &FromWorker::Cleared { removed, error });
                }
                ToWorker::ForgetVm { vm } => storage.forget(vm),
                ToWorker::Mirror { vm, map, ship } => storage.receive_map(vm, &map, ship),
                frame @ (ToWorker::Manifest { .. }
                | ToWorker::ManifestFailed { .. }
                | ToWorker::BlobData { .. }
                | ToWorker::BlobBatch { .. }
                | ToWorker::BlobFailed { .. }) => {
                    storage.receive_ship_frame(frame);
                }
                ToWorker::Env { vars } => {
                    let vars = crate::envfwd::decode(vars);
                    if self.capture_output {
                        // Only a worker that owns its process captures its output.
                        crate::envfwd::set_in_process(&vars);
                    }
                    *state.forwarded.borrow_mut() = vars;
                }
                ToWorker::Exit => break Ok(WorkerEnd::Dismissed),
                // The link files stops as they arrive (see `crate::link`); none gets here.
                ToWorker::Stop { .. } => {}
            }
        };
        storage.forget_all();
        if let Some(capture) = capture {
            capture.finish();
        }
        result
    }
}

/// How a worker's [`Worker::serve_to_end`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEnd {
    /// The spawner ended its run and dismissed its workers.
    Dismissed,
    /// The connection to the spawner was lost before it ended its run: it was killed, or
    /// the network failed.
    SpawnerLost {
        /// Why, as the transport saw it.
        reason: String,
    },
    /// The worker left when asked to ([`Worker::leave_on`]), before the spawner dismissed
    /// it: its task, if it ran one, was given back and its task folders removed.
    Left {
        /// The signal that asked it to.
        signal: i32,
        /// The task it gave back, if it ran one.
        gave_back: Option<TaskId>,
    },
}

/// Tells the spawner that this worker leaves, on `signal`, and what it did; the
/// [`WorkerEnd`] that says so.
fn say_leaving(transport: &dyn Transport, state: &LoopState, signal: i32) -> WorkerEnd {
    let name = crate::leave::signal_name(signal);
    let gave_back = state.given_back.get();
    let reason = match gave_back {
        Some(task) => format!(
            "{name} asked it to leave; it stopped task {task}, which is to run again on another worker, and removed its task folders"
        ),
        None => format!("{name} asked it to leave; it removed its task folders"),
    };
    tracing::debug!(%reason, "leaving");
    // A spawner that is gone needs no reason.
    let _ = state.send(transport, &FromWorker::Leaving { reason });
    WorkerEnd::Left { signal, gave_back }
}

/// The spawn loop's next event. A folder kept for a next task waits [`SPARE_WAIT`] for it,
/// then is removed before the worker waits on, so none outlives its tasks while the worker
/// idles. A worker that may be asked to leave waits at most [`LEAVE_CHECK`] (then
/// `Ok(None)`), to look again.
fn receive(
    link: &Link,
    storage: &mut TaskFolders,
    may_leave: bool,
) -> Result<Option<Event>, parvm_transport::Error> {
    if storage.holds_spare() {
        if let Some(event) = link.recv(Wait::For(SPARE_WAIT))? {
            return Ok(Some(event));
        }
        storage.remove_spare();
    }
    link.recv(if may_leave {
        Wait::For(LEAVE_CHECK)
    } else {
        Wait::Forever
    })
}

/// Everything one task run needs.
struct Run<'a> {
    worker: &'a Worker,
    transport: &'a dyn Transport,
    link: &'a Link,
    host: &'a str,
    rank: u32,
    state: &'a LoopState,
    capture: Option<&'a Capture>,
    home: Option<&'a Path>,
}

impl Run<'_> {
    fn run(&self, storage: &mut TaskFolders, request: &SpawnRequest<'_>) {
        let id = TaskId {
            slot: self.rank,
            number: request.number,
        };
        tracing::debug!(task = %id, "task starting");
        if let Some(capture) = self.capture {
            capture.set_task(id.number);
        }
        let mut mirrored = 0;
        let mut exchange = SpawnerLine {
            link: self.link,
            transport: self.transport,
            state: self.state,
        };
        let outcome = match storage.prepare(request, &mut exchange) {
            Err(_) if self.link.leaving().is_some() => {
                // Its fetch or mirror was cut short by the leave, not by the task.
                self.state.given_back.set(Some(id));
                Err(String::new())
            }
            Err(reason) => Err(format!(
                "cannot prepare the task folder: {}",
                one_line(&reason)
            )),
            Ok(prepared) => {
                mirrored = prepared.mirrored;
                let outcome = self.run_in(id, prepared.dir.as_deref(), &request.job);
                let given_back = self.state.given_back.get().is_some();
                if !request.returning.is_empty() && !given_back {
                    // After the task, before its `Done`, while its folder is still there.
                    let returned = match prepared.task_dir() {
                        Some(dir) => crate::returning::send_files(
                            self.link,
                            request.number,
                            dir,
                            prepared.dir.as_deref().unwrap_or(dir),
                            &request.returning,
                        ),
                        None => Err("the task has no task folder to return files from; build the VM with `local_folder(true)`".to_owned()),
                    };
                    if let Err(reason) = returned {
                        self.state.send_or_log(
                            self.transport,
                            &FromWorker::ReturnFailed {
                                number: request.number,
                                reason,
                            },
                        );
                    }
                }
                let next = if given_back || request.persistent || prepared.task_dir().is_none() {
                    Next::Elsewhere
                } else if self.next_task_is_here(request.vm) {
                    Next::Here
                } else {
                    Next::MayCome
                };
                if let Err(e) = prepared.release(next) {
                    tracing::warn!(task = %id, error = %one_line(&e), "cannot remove the task folder");
                }
                outcome
            }
        };
        if let Some(capture) = self.capture {
            capture.drain();
            capture.set_task(0);
        }
        if self.state.given_back.get().is_some() {
            tracing::debug!(task = %id, "task given back: the worker leaves");
            return;
        }
        if let Err(reason) = &outcome {
            tracing::debug!(task = %id, %reason, "task failed");
        }
        let (value, error) = match outcome {
            Ok(bytes) => (request.send_back.then_some(bytes), None),
            Err(reason) => (None, Some(reason)),
        };
        self.state.send_or_log(
            self.transport,
            &FromWorker::Done {
                number: request.number,
                value: value.map(Into::into),
                error,
                mirrored,
            },
        );
    }

    /// Whether the next frame, already received or arriving without a wait, asks for a
    /// task of VM `vm` in a temporary folder: a dispatch sends the next job while this one
    /// runs, and that task then gets this task's folder, emptied.
    fn next_task_is_here(&self, vm: u32) -> bool {
        let takes_folder = |payload: &[u8]| {
            matches!(
                wire::decode::<ToWorker<'_>>(payload),
                Ok(ToWorker::Spawn(next)) if next.vm == vm && next.folder && !next.persistent
            )
        };
        match self.state.deferred.borrow().front() {
            Some(payload) => takes_folder(payload),
            None => self.link.next_message_is(takes_folder),
        }
    }

    fn run_in(&self, id: TaskId, dir: Option<&Path>, job: &Job<'_>) -> Result<Vec<u8>, String> {
        let changed = match dir {
            Some(dir) if self.worker.change_dir => {
                std::env::set_current_dir(dir).map_err(|e| {
                    format!("cannot enter the startup folder `{}`: {e}", dir.display())
                })?;
                true
            }
            _ => false,
        };
        let ctx = TaskContext {
            transport: self.transport,
            link: self.link,
            id,
            host: self.host,
            dir,
            state: self.state,
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(&ctx, job)))
                .unwrap_or_else(|panic| Err(format!("task panicked: {}", panic_text(&*panic))));
        if changed && let Some(home) = self.home {
            let _ = std::env::set_current_dir(home);
        }
        outcome
    }

    fn run_job(&self, ctx: &TaskContext<'_>, job: &Job<'_>) -> Result<Vec<u8>, String> {
        match job {
            Job::Function { name, args } => match self.worker.tasks.get(name) {
                Some(entry) => (entry.body)(ctx, args),
                None => Err(format!(
                    "task `{name}` is not registered in the worker's program; run the same executable on every slot"
                )),
            },
            Job::Command { program, args, env } => self.run_command(ctx, program, args, env),
        }
    }

    /// Runs an external command under a supervisor (see [`crate::supervise`]) and waits
    /// for it, watching the spawner meanwhile: when the VM is finalized or the spawner is
    /// lost, the command and everything it started are stopped.
    fn run_command(
        &self,
        ctx: &TaskContext<'_>,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Vec<u8>, String> {
        let id = ctx.id;
        let host = ctx.host;
        let words = std::iter::once(program).chain(args.iter().map(String::as_str));
        let env_words = env.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]);
        if let Some(word) = words.chain(env_words).find(|word| word.contains('\0')) {
            return Err(format!(
                "cannot start command `{}` of task {id} on host `{host}`: {:?} holds a NUL byte, which no program can take as an argument or variable; remove it from the spawn",
                program.escape_debug(),
                word
            ));
        }
        let mut command = std::process::Command::new(program);
        // Forwarded variables first, so the spawn's own `env` wins.
        command
            .args(args)
            .envs(self.state.forwarded.borrow().iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)));
        // A parvm program started by the command must not join this VM as a worker.
        for var in parvm_transport::local::WORKER_ENV_VARS {
            command.env_remove(var);
        }
        command.env_remove(parvm_env_config::CONNECT_VAR);
        // What a task function learns from its `TaskContext`, a command learns from these.
        command
            .env(TASK_SLOT_VAR, id.slot.to_string())
            .env(TASK_ID_VAR, id.to_string());
        if let Some(dir) = ctx.dir {
            command.current_dir(dir);
        }
        let mut slot = self.state.supervisor.borrow_mut();
        let supervisor = supervise::ready(&mut slot).map_err(|e| {
            format!(
                "cannot start a supervisor for command `{program}` of task {id} on host `{host}`: {e}; the host may be out of processes or memory (see `ulimit -u` and `free`)"
            )
        })?;
        let mut supervised = supervisor.run(&command).map_err(|e| {
            let what_to_do = start_failure_hint(&e);
            format!(
                "cannot start command `{program}` of task {id} on host `{host}`: {e}; {what_to_do}"
            )
        })?;
        let pid = supervised.command_pid();
        let supervisor = supervised.supervisor_pid();
        let mut stopped: Option<String> = None;
        loop {
            match supervised.wait(COMMAND_CHECK) {
                Ok(None) => {}
                Ok(Some(End::Status(status))) => {
                    if self.link.leaving().is_some() && (stopped.is_some() || !status.success()) {
                        // Stopped for the leave, or ended by the same signal: its case is
                        // not this command's to fail.
                        self.state.given_back.set(Some(id));
                        return Err(String::new());
                    }
                    if let Some(why) = stopped {
                        return Err(format!(
                            "command `{program}` of task {id} (pid {pid} on host `{host}`) was stopped with everything it started, because {why}"
                        ));
                    }
                    let status = CommandStatus {
                        code: status.code(),
                        signal: std::os::unix::process::ExitStatusExt::signal(&status),
                    };
                    return rmp_serde::to_vec(&status).map_err(|e| {
                        format!("cannot encode the status of command `{program}` of task {id}: {e}")
                    });
                }
                Ok(Some(End::SupervisorDied(status))) => {
                    return Err(format!(
                        "the supervisor (pid {supervisor}) of command `{program}` of task {id} (pid {pid} on host `{host}`) ended without a report ({status}); the command itself was killed with it, but processes it started in the background may still run: look for what killed the supervisor (an out-of-memory kill, or a signal sent by hand) and for leftover processes"
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot wait for command `{program}` of task {id} (pid {pid}, supervisor pid {supervisor} on host `{host}`): {e}; the command is stopped"
                    ));
                }
            }
            if stopped.is_some() {
                continue;
            }
            if let Some(signal) = self.link.leaving() {
                let why = format!(
                    "this worker was asked to leave by {}",
                    crate::leave::signal_name(signal)
                );
                tracing::debug!(task = %id, pid, reason = %why, "stopping a command");
                supervised.stop();
                stopped = Some(why);
                continue;
            }
            let why = match ctx.try_recv() {
                Ok(Some((from, _))) => {
                    tracing::debug!(task = %id, %from, "a command gets no messages; dropped one");
                    continue;
                }
                Ok(None) if self.link.stop_requested() => "the spawner asked for it".to_owned(),
                Ok(None) => continue,
                Err(Error::Finalized) => "the VM was finalized".to_owned(),
                Err(Error::SpawnerLost) => "the spawner is gone".to_owned(),
                Err(e) => format!("the worker lost its transport: {e}"),
            };
            tracing::debug!(task = %id, pid, reason = %why, "stopping a command");
            supervised.stop();
            stopped = Some(why);
        }
    }
}

/// The worker's line to the spawner while a shipped root is fetched: frames that are not
/// for shipping are set aside for the spawn loop, in order.
struct SpawnerLine<'a> {
    link: &'a Link,
    transport: &'a dyn Transport,
    state: &'a LoopState,
}

impl Exchange for SpawnerLine<'_> {
    fn send(&mut self, frame: &FromWorker<'_>) -> Result<(), String> {
        self.state.send(self.transport, frame).map_err(|e| match e {
            wire::SendError::Transport(e) => format!("cannot reach the spawner: {e}"),
            wire::SendError::Encode(e) => format!("cannot encode a frame for the spawner: {e}"),
        })
    }

    fn delivers_intact(&self) -> bool {
        self.transport.delivers_frames_intact()
    }

    fn next(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match self.link.recv_unless_stopped() {
                Ok(None) => {
                    // What is still on its way of this transfer is skipped by the next.
                    return Err(
                        "the spawner stopped the task while its inputs were fetched".to_owned()
                    );
                }
                Ok(Some(Event::Message { from: 0, payload })) => {
                    let ship = wire::decode::<ToWorker<'_>>(&payload)
                        .is_ok_and(|frame| crate::ship::fetch::is_ship_frame(&frame));
                    if ship {
                        return Ok(payload);
                    }
                    self.state.deferred.borrow_mut().push_back(payload);
                }
                Ok(Some(Event::PeerLost { rank: 0, reason })) => {
                    let said = format!("the spawner is gone: {reason}");
                    self.state.lose_spawner(reason);
                    return Err(said);
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    let said = format!("the transport failed: {e}");
                    self.state.lose_spawner(e.to_string());
                    return Err(said);
                }
            }
        }
    }
}

/// What to do about a command that could not start with error `error`.
fn start_failure_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        // Linux limits each argument to 128 KiB and all of them with the environment to a
        // quarter of the stack limit.
        Some(libc::E2BIG) => {
            "its arguments and environment are longer than the system allows (128 KiB per argument on Linux); pass long values in a file instead"
        }
        _ => {
            "check that the program exists there (a full path, or a name on the worker's PATH) and is executable"
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use parvm_transport::{Event, Transport, Wait};

    use super::*;
    use crate::memory::MemoryTransport;

    /// A worker's storage and configuration, and the two ends of a memory transport: the
    /// spawner's and the worker's.
    fn spawner_and_worker() -> (tempfile::TempDir, Config, MemoryTransport, MemoryTransport) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder()
            .local_root(dir.path())
            .mirrored_roots([dir.path()])
            .build()
            .unwrap();
        let mut ends = MemoryTransport::cluster(&["spawner", "w"]).into_iter();
        let spawner = ends.next().unwrap();
        let worker = ends.next().unwrap();
        (dir, config, spawner, worker)
    }

    /// The next frame the worker sends the spawner.
    fn from_worker(spawner: &MemoryTransport) -> Vec<u8> {
        loop {
            if let Some(Event::Message { from: 1, payload }) = spawner.recv(Wait::Forever).unwrap()
            {
                return payload;
            }
        }
    }

    #[test]
    fn a_spawner_of_another_version_is_told_and_left() {
        let (_dir, config, spawner, worker) = spawner_and_worker();
        let served = std::thread::spawn(move || {
            Worker::new(crate::Tasks::new(), config).serve(Box::new(worker))
        });
        // A frame of version 2 (the one before shipping), then MessagePack.
        spawner
            .send(1, &[2, 0x81, 0xa4, b'E', b'x', b'i', b't', 0xc0])
            .unwrap();
        let told = from_worker(&spawner);
        assert_eq!(told, wire::other_version_frame());
        assert_eq!(wire::foreign_version(&told), Some(wire::VERSION));
        let error = served.join().unwrap().unwrap_err();
        assert!(
            matches!(error, Error::OtherVersion { theirs: 2, ours } if ours == wire::VERSION),
            "{error}"
        );
        assert!(error.to_string().contains("same parvm build"), "{error}");
    }

    #[test]
    fn an_idle_worker_asked_to_leave_tells_the_spawner_why_and_ends() {
        let (_dir, config, spawner, worker) = spawner_and_worker();
        let leave = LeaveRequest::new();
        let served = {
            let leave = leave.clone();
            std::thread::spawn(move || {
                Worker::new(crate::Tasks::new(), config)
                    .leave_on(leave)
                    .serve_to_end(Box::new(worker))
            })
        };
        leave.request(libc::SIGTERM);
        match wire::decode::<FromWorker<'_>>(&from_worker(&spawner)).unwrap() {
            FromWorker::Leaving { reason } => assert_eq!(
                reason,
                "SIGTERM asked it to leave; it removed its task folders"
            ),
            _ => panic!("not a Leaving frame"),
        }
        let end = served.join().unwrap().unwrap();
        assert_eq!(
            end,
            WorkerEnd::Left {
                signal: libc::SIGTERM,
                gave_back: None
            }
        );
    }
}
