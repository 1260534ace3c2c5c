//! What the spawner process's VMs share ([`Shared`]): the transport, the state under its
//! lock, sending frames to workers, and the event pump.
//!
//! No thread is dedicated to receiving. A thread that waits for a message (in
//! [`Vm::recv`](crate::Vm::recv) or elsewhere) pulls the next event from the transport
//! itself and files it into the inbox of the VM it belongs to; other waiting threads sleep
//! on a condition variable until their message is filed. This keeps a spawn round trip to
//! the transport's own latency, without a hop through another thread. A VM that ships
//! inputs also files what has arrived from its shipping thread when it idles
//! ([`Shared::pump_arrived`]), so its workers' requests are answered while the program
//! does not receive.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use parvm_env_config::Config;
use parvm_transport::{Rank, Transport, Wait};

use crate::state::State;
use crate::wire::{self, SendError, ToWorker};
use crate::{Error, Tasks};

/// How long finalize waits for workers to leave.
const FINALIZE_GRACE: Duration = Duration::from_secs(5);

/// When a wait ends.
#[derive(Clone, Copy)]
pub(crate) enum Until {
    Forever,
    At(Instant),
    Now,
}

impl Until {
    pub(crate) fn after(timeout: Duration) -> Until {
        Instant::now()
            .checked_add(timeout)
            .map_or(Until::Forever, Until::At)
    }
}

/// What the spawner process's VMs share.
pub(crate) struct Shared {
    pub transport: Box<dyn Transport>,
    pub backend: &'static str,
    pub tasks: Tasks,
    pub config: Config,
    pub host: String,
    pub next_number: AtomicU64,
    pub next_vm: AtomicU32,
    pub finalized: AtomicBool,
    /// Environment variables every worker gets before its first task.
    pub forward: Vec<crate::envfwd::Var>,
    state: Mutex<State>,
    cond: Condvar,
    /// The buffer frames are encoded into, reused from one send to the next.
    scratch: Mutex<Vec<u8>>,
    /// Messages between tasks on their way to their receivers (`crate::forward`).
    pub(crate) forwarder: std::sync::Arc<crate::forward::Forwarder>,
    /// This spawner, for the threads it starts; set once it is shared
    /// ([`Shared::share`]).
    me: std::sync::OnceLock<std::sync::Weak<Shared>>,
}

impl Shared {
    pub(crate) fn new(
        transport: Box<dyn Transport>,
        tasks: Tasks,
        config: Config,
        forward: Vec<crate::envfwd::Var>,
    ) -> Shared {
        let backend = transport.backend();
        let me = transport.rank();
        let mut state = State::default();
        let mut host = String::new();
        for peer in transport.peers() {
            if peer.rank == me {
                host = peer.host;
            } else {
                state.slots.join(peer.rank, peer.host);
            }
        }
        Shared {
            transport,
            backend,
            tasks,
            config,
            host,
            next_number: AtomicU64::new(1),
            next_vm: AtomicU32::new(0),
            finalized: AtomicBool::new(false),
            forward,
            state: Mutex::new(state),
            cond: Condvar::new(),
            scratch: Mutex::new(Vec::new()),
            forwarder: std::sync::Arc::default(),
            me: std::sync::OnceLock::new(),
        }
    }

    /// `shared`, made ready for the threads it starts (forwarding messages between tasks).
    pub(crate) fn share(shared: Shared) -> std::sync::Arc<Shared> {
        let shared = std::sync::Arc::new(shared);
        let _ = shared.me.set(std::sync::Arc::downgrade(&shared));
        shared
    }

    /// This spawner for a thread it starts; `None` while it is not shared (unit tests).
    pub(crate) fn me(&self) -> Option<&std::sync::Weak<Shared>> {
        self.me.get()
    }

    /// Whether workers can join from now on (TCP; local while a replacement may still
    /// come); when not, a wait with no worker left fails at once instead of waiting
    /// forever. Asked of the transport each time, since the answer changes on local.
    pub(crate) fn workers_can_join(&self) -> bool {
        self.transport.workers_can_join()
    }

    /// The error for a wait that can never end: no worker is left and none can join.
    /// `None` while a worker is left or one may still join.
    pub(crate) fn nothing_can_arrive(&self, state: &State) -> Option<Error> {
        // While another thread pulls, an event it received (a replacement worker's join)
        // may not be filed yet; that thread checks again once it has filed it.
        if !state.slots.is_empty() || state.pulling || self.workers_can_join() {
            return None;
        }
        let hint = match self.backend {
            "local" => {
                "see the workers' output above (or run with PARVM_LOG=debug) for why they died; replacement workers, if any, died as well or reached their limit (PARVM_REPLACE_WORKERS), so start a new runtime"
            }
            "mpi" => {
                "mpirun does not replace ranks; see the job's output for why they ended, and start the job again with `mpirun -n <1 + workers>`"
            }
            _ => "start a new runtime",
        };
        Some(Error::WorkersGone {
            backend: self.backend,
            lost: state.lost,
            last_loss: state
                .last_loss
                .clone()
                .unwrap_or_else(|| "none, there never were any".to_owned()),
            hint: hint.to_owned(),
        })
    }

    /// Sends the forwarded environment to worker `rank`, before anything else reaches it.
    pub(crate) fn send_env(&self, rank: Rank) {
        if self.forward.is_empty() {
            return;
        }
        let frame = ToWorker::Env {
            vars: self.forward.clone(),
        };
        if let Err(e) = self.send(rank, &frame) {
            // The worker is gone; its loss arrives as an event.
            tracing::debug!(rank, error = %e, "cannot send the forwarded environment");
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.finalized.load(Ordering::Acquire) {
            Err(Error::Finalized)
        } else {
            Ok(())
        }
    }

    pub(crate) fn send(&self, to: Rank, frame: &ToWorker<'_>) -> Result<(), Error> {
        // One thread at a time reuses the scratch buffer; another sender meanwhile (a
        // forwarded message while the program sends) encodes into a buffer of its own.
        let mut scratch = self.scratch.try_lock().ok();
        let mut own = Vec::new();
        let bytes = scratch.as_deref_mut().unwrap_or(&mut own);
        wire::send_frame(&*self.transport, to, bytes, frame).map_err(|e| self.send_error(to, e))
    }

    /// Sends `payload`, a frame already encoded (see [`wire::head_before_bytes`]).
    pub(crate) fn send_payload(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        self.transport
            .send(to, payload)
            .map_err(|e| self.send_error(to, SendError::Transport(e)))
    }

    /// Sends user message frame `frame` (its bytes left empty) followed by `data`: large
    /// data travels from where it lies instead of being copied into the frame (see
    /// [`wire::Frame::write_user_head`]).
    pub(crate) fn send_with_tail(
        &self,
        to: Rank,
        frame: &ToWorker<'_>,
        data: &[u8],
    ) -> Result<(), Error> {
        let mut scratch = self.scratch.try_lock().ok();
        let mut own = Vec::new();
        let bytes = scratch.as_deref_mut().unwrap_or(&mut own);
        wire::send_user(&*self.transport, to, bytes, frame, data)
            .map_err(|e| self.send_error(to, e))
    }

    fn send_error(&self, to: Rank, error: SendError) -> Error {
        match error {
            SendError::Encode(source) => Error::Encode {
                what: format!("a frame for rank {to}"),
                source,
            },
            SendError::Transport(e) => Error::transport(self.backend, e),
        }
    }

    /// Records that the worker of `task` was just asked to stop it (or to take it back
    /// from its queue): by the peer timeout its end must have come, or the worker is given
    /// up ([`Shared::give_up_unanswered`]).
    pub(crate) fn expect_answer(&self, state: &mut State, task: crate::TaskId) {
        if let Some(due) = self
            .transport
            .peer_timeout()
            .and_then(|timeout| Instant::now().checked_add(timeout))
        {
            state.answer_due.insert(task, due);
        }
    }

    /// Gives up every worker that has not answered a stop by its due time: stopped
    /// (Ctrl-Z, `kill -STOP`, a batch system's suspend) or too starved to run, it would
    /// hold up whatever waits for that task (a time limit, a halt, the end of a run) for as
    /// long as it stays so. Its loss ends its tasks as for a worker that died. Returns the
    /// earliest due time still ahead, for the wait.
    fn give_up_unanswered(&self, state: &mut State) -> Option<Instant> {
        let now = Instant::now();
        let overdue: Vec<crate::TaskId> = state
            .answer_due
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(task, _)| *task)
            .collect();
        let waited = self.transport.peer_timeout().unwrap_or_default();
        for task in overdue {
            state.answer_due.remove(&task);
            let reason = format!(
                "it did not answer within {} s (the peer timeout, PARVM_PEER_TIMEOUT) when asked to stop task {task}: its process may be stopped (Ctrl-Z, kill -STOP, a batch system's suspend) or its host too busy to run it; given up so that the run goes on (it leaves, removing its task folders, once it runs again)",
                waited.as_secs_f64()
            );
            if self.transport.give_up(task.slot, &reason) {
                tracing::debug!(rank = task.slot, %task, "gave up a worker that did not answer a stop");
            }
        }
        state.answer_due.values().min().copied()
    }

    /// Pumps events until `take` finds what the caller waits for, or `until` passes.
    pub(crate) fn pump<R>(
        &self,
        until: Until,
        mut take: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<Option<R>, Error> {
        let mut state = self.lock();
        loop {
            if let Some(found) = take(&mut state) {
                return Ok(Some(found));
            }
            let answer_due = if state.answer_due.is_empty() {
                None
            } else {
                self.give_up_unanswered(&mut state)
            };
            let wait = match until {
                Until::Forever => Wait::Forever,
                Until::Now => Wait::NoWait,
                Until::At(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Wait::For(left),
                    _ => Wait::NoWait,
                },
            };
            // Wake when a stop's answer is due, to give its worker up then.
            let until_due = |due: Instant| {
                due.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            };
            let wait = match (wait, answer_due) {
                (Wait::NoWait, _) | (_, None) => wait,
                (Wait::Forever, Some(due)) => Wait::For(until_due(due)),
                (Wait::For(left), Some(due)) => Wait::For(left.min(until_due(due))),
            };
            if state.pulling {
                if matches!(wait, Wait::NoWait) {
                    return Ok(None);
                }
                // Another thread is receiving; it files our message and wakes us.
                let nap = match wait {
                    Wait::For(left) => left.min(Duration::from_millis(100)),
                    _ => Duration::from_millis(100),
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
            state.pulling = true;
            drop(state);
            let event = self.transport.recv(wait);
            state = self.lock();
            state.pulling = false;
            if state.sleepers > 0 {
                self.cond.notify_all();
            }
            let output = match event {
                Ok(Some(event)) => self.route(&mut state, event),
                Ok(None) => {
                    if matches!(wait, Wait::NoWait) {
                        return Ok(take(&mut state));
                    }
                    None
                }
                Err(e) => return Err(Error::transport(self.backend, e)),
            };
            if let Some(output) = output {
                drop(state);
                print_lines(&output.lines);
                // Written: the worker may send as much again.
                self.acknowledge(output.from, output.bytes);
                state = self.lock();
            }
        }
    }

    /// Files whatever events have arrived, without waiting, unless a thread is receiving
    /// already or the runtime is finalized. For a thread that is not the program's (a VM's
    /// shipping thread): events move on while no thread of the program waits for one.
    pub(crate) fn pump_arrived(&self) {
        if self.finalized.load(Ordering::Acquire) {
            return;
        }
        // A transport failure is for the program's next wait to report.
        if let Err(e) = self.pump(Until::Now, |_| None::<()>) {
            tracing::debug!(error = %e, "cannot receive for the program");
        }
    }

    /// Gives worker `rank` back `bytes` of its output window (see `crate::link`), once
    /// they are written or taken by the program; called without the state lock. A worker
    /// that is gone needs no credit.
    pub(crate) fn acknowledge(&self, rank: Rank, bytes: u64) {
        if bytes > 0 {
            let _ = self.transport.send(rank, &wire::output_ack(bytes));
        }
    }

    /// Tells every worker to leave, and waits (a little) until they have.
    pub(crate) fn finalize(&self) {
        if self.finalized.swap(true, Ordering::AcqRel) {
            return;
        }
        let ranks: Vec<Rank> = self.lock().slots.ranks();
        tracing::info!(
            backend = self.backend,
            "finalizing: sending {} worker(s) home",
            ranks.len()
        );
        for rank in ranks {
            if let Err(e) = self.send(rank, &ToWorker::Exit) {
                tracing::debug!(rank, error = %e, "cannot tell a worker to exit");
            }
        }
        let until = Until::after(FINALIZE_GRACE);
        match self.pump(until, |state| state.slots.is_empty().then_some(())) {
            Ok(Some(())) => {}
            Ok(None) => tracing::debug!("workers did not all leave in time"),
            Err(e) => tracing::debug!(error = %e, "transport failed while finalizing"),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.finalize();
    }
}

fn print_lines(lines: &[(bool, String)]) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for (stderr, line) in lines {
        let _ = if *stderr {
            writeln!(err, "{line}")
        } else {
            writeln!(out, "{line}")
        };
    }
    let _ = out.flush();
}
