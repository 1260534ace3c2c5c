//! The runtime of the spawner process: the transport and its workers, shared by every VM
//! object, and what can be asked of them (hosts, slots, layout, clearing local storage).
//!
//! It must not know how a transport is chosen and started (that is [`builder`]) nor how a
//! worker process serves (that is [`crate::launch`]).

mod backend;
mod builder;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parvm_env_config::Config;
use parvm_transport::Transport;

pub use backend::{Backend, TcpSpawner};
pub use builder::RuntimeBuilder;

use crate::layout::{ClearReport, Layout, LayoutHost, LayoutSlot, LayoutTask};
use crate::spawner::{Shared, Until};
use crate::wire::ToWorker;
use crate::{Error, HostId, TaskId, Tasks};

/// The parvm runtime of this process: the transport and the workers, shared by all VMs.
///
/// The same executable runs on every slot: [`Runtime::start`] in a worker process runs the
/// spawn loop and exits the process; in the spawner it starts the workers and returns.
/// Dropping the runtime and all its VMs (or calling [`Runtime::finalize`]) sends the
/// workers home.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
}

impl Runtime {
    /// The handle of a VM object on `shared`, whose TCP spawner (if any) listens on
    /// `listen`.
    pub(crate) fn from_shared(shared: Arc<Shared>, listen: Option<SocketAddr>) -> Runtime {
        Runtime { shared, listen }
    }

    /// What [`Runtime::from_shared`] took.
    pub(crate) fn parts(&self) -> (&Arc<Shared>, Option<SocketAddr>) {
        (&self.shared, self.listen)
    }

    /// Starts with the configuration from the environment (see [`RuntimeBuilder`]).
    ///
    /// # Errors
    /// As [`RuntimeBuilder::start`].
    pub fn start(tasks: Tasks) -> Result<Runtime, Error> {
        Runtime::builder(tasks).start()
    }

    /// A builder for a runtime running `tasks`.
    #[must_use]
    pub fn builder(tasks: Tasks) -> RuntimeBuilder {
        RuntimeBuilder::new(tasks)
    }

    /// A spawner runtime over a transport you built (rank 0 of it); its workers run
    /// [`Worker::serve`](crate::Worker::serve) with the same `tasks`.
    ///
    /// # Errors
    /// The task registry has a duplicate name, or the transport is not rank 0.
    pub fn from_transport(
        transport: Box<dyn Transport>,
        tasks: Tasks,
        config: Config,
    ) -> Result<Runtime, Error> {
        Runtime::with_forward(transport, tasks, config, Vec::new())
    }

    /// As [`Runtime::from_transport`], sending `forward` to every worker before its first
    /// task.
    pub(crate) fn with_forward(
        transport: Box<dyn Transport>,
        tasks: Tasks,
        config: Config,
        forward: Vec<crate::envfwd::Var>,
    ) -> Result<Runtime, Error> {
        tasks.check()?;
        if transport.rank() != 0 {
            return Err(Error::NotSpawner {
                what: "Runtime::from_transport",
            });
        }
        let shared = Shared::share(Shared::new(transport, tasks, config, forward));
        {
            let state = shared.lock();
            for rank in state.slots.ranks() {
                shared.send_env(rank);
            }
            let mut hosts: Vec<&str> = state.slots.iter().map(|(_, s)| s.host.as_str()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            tracing::info!(
                backend = shared.backend,
                host = %shared.host,
                "spawner ready with {} worker(s){}",
                state.slots.len(),
                if hosts.is_empty() {
                    String::new()
                } else {
                    format!(" on host(s) {}", hosts.join(", "))
                }
            );
        }
        Ok(Runtime {
            shared,
            listen: None,
        })
    }

    /// The configuration the spawner runs with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The transport backend's name (`local`, `tcp`, `mpi`, `memory`).
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.shared.backend
    }

    /// The address the TCP spawner listens on (with the port it chose); `None` on other
    /// transports.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Waits until at least `workers` workers have joined (TCP workers join whenever they
    /// connect; other transports have all theirs from the start), at most `timeout`, and
    /// returns how many there are.
    ///
    /// # Errors
    /// [`Error::WorkersMissing`] when fewer joined in time; [`Error::TooFewWorkers`] at
    /// once when there are fewer and the transport starts no new ones (local, MPI); the
    /// transport failed.
    pub fn wait_for_workers(&self, workers: usize, timeout: Duration) -> Result<usize, Error> {
        self.shared.check_open()?;
        let backend = self.shared.backend;
        // File the events already queued first, so workers already lost are not counted.
        self.shared.pump(Until::Now, |_| None::<()>)?;
        let joined = self.shared.pump(Until::after(timeout), |state| {
            let have = state.slots.len();
            if have >= workers {
                Some(Ok(have))
            } else if self.shared.workers_can_join() {
                None
            } else {
                Some(Err(Error::TooFewWorkers {
                    wanted: workers,
                    have,
                    backend,
                    hint: if backend == "mpi" {
                        format!("ask for at most {have}, or start more ranks with `mpirun -n`")
                    } else if state.lost > 0 {
                        format!(
                            "{} were lost (the last: {}); ask for at most {have}, or start a new runtime",
                            state.lost,
                            state.last_loss.as_deref().unwrap_or("no reason given")
                        )
                    } else {
                        format!(
                            "ask for at most {have}, or start the runtime with more (PARVM_WORKERS or `RuntimeBuilder::workers`)"
                        )
                    },
                }))
            }
        })?;
        match joined {
            Some(joined) => joined,
            None => Err(Error::WorkersMissing {
                wanted: workers,
                joined: self.shared.lock().slots.len(),
                timeout,
                hint: match self.listen {
                    Some(addr) => format!(
                        "start more workers with {}={}",
                        parvm_env_config::CONNECT_VAR,
                        builder::connect_address(addr, &self.shared.host)
                    ),
                    None => format!(
                        "the `{}` transport has no more workers",
                        self.shared.backend
                    ),
                },
            }),
        }
    }

    /// Hosts with workers, plus the spawner's own host, sorted by name.
    #[must_use]
    pub fn hosts(&self) -> Vec<HostId> {
        let state = self.shared.lock();
        let mut hosts: Vec<HostId> = state
            .slots
            .iter()
            .map(|(_, slot)| HostId(slot.host.clone()))
            .chain(std::iter::once(HostId(self.shared.host.clone())))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// All slots, the spawner's slot 0 included (as in PyOPUS).
    #[must_use]
    pub fn slots(&self) -> usize {
        self.shared.lock().slots.len() + 1
    }

    /// How many replacement workers the transport started so far, for workers that died
    /// (the local backend; see [`RuntimeBuilder::replace_workers`](crate::RuntimeBuilder::replace_workers)).
    /// Always 0 on other transports.
    #[must_use]
    pub fn replaced_workers(&self) -> usize {
        self.shared.transport.replaced_workers()
    }

    /// Worker slots with no task.
    #[must_use]
    pub fn free_slots(&self) -> usize {
        let state = self.shared.lock();
        state
            .slots
            .iter()
            .filter(|(_, s)| s.running.is_none() && !s.leaving)
            .count()
    }

    /// How many workers were lost (died, or their connection failed) before the runtime
    /// dismissed them, since it started: each left its task folder behind, for
    /// [`clear_local_storage`](Runtime::clear_local_storage) to remove.
    #[must_use]
    pub fn workers_lost(&self) -> usize {
        self.shared.lock().lost
    }

    /// The spawner's host.
    #[must_use]
    pub fn host_id(&self) -> HostId {
        HostId(self.shared.host.clone())
    }

    /// Hosts, slots and running tasks; print it with `{}`.
    #[must_use]
    pub fn describe(&self) -> Layout {
        let state = self.shared.lock();
        let mut hosts: Vec<LayoutHost> = Vec::new();
        let mut spawner = LayoutHost {
            host: HostId(self.shared.host.clone()),
            spawner: true,
            slots: Vec::new(),
        };
        for (rank, slot) in state.slots.iter() {
            let entry = LayoutSlot {
                slot: rank,
                task: slot.running.as_ref().map(|r| LayoutTask {
                    id: TaskId {
                        slot: rank,
                        number: r.number,
                    },
                    label: r.label.clone(),
                    vm: r.vm,
                }),
            };
            if slot.host == spawner.host.0 {
                spawner.slots.push(entry);
            } else if let Some(host) = hosts.iter_mut().find(|h| h.host.0 == slot.host) {
                host.slots.push(entry);
            } else {
                hosts.push(LayoutHost {
                    host: HostId(slot.host.clone()),
                    spawner: false,
                    slots: vec![entry],
                });
            }
        }
        hosts.insert(0, spawner);
        Layout {
            backend: self.shared.backend,
            hosts,
        }
    }

    /// Removes stale and unused task folders in local storage on every host (and on the
    /// spawner's), skipping folders in use unless `force`. Waits at most `timeout` for
    /// busy workers to answer.
    ///
    /// # Errors
    /// The VM was finalized or the transport failed; a host that cannot clear is reported
    /// in the [`ClearReport`], not as an error.
    pub fn clear_local_storage(
        &self,
        force: bool,
        timeout: Duration,
    ) -> Result<ClearReport, Error> {
        self.shared.check_open()?;
        let mut report = ClearReport { hosts: Vec::new() };
        let local = crate::task_folder::clear_here(&self.shared.config, force)
            .map_err(|e| crate::error::one_line(&e));
        report
            .hosts
            .push((HostId(self.shared.host.clone()), local.into()));
        let targets: Vec<(u32, String)> = {
            let mut state = self.shared.lock();
            state.cleared.clear();
            let mut seen = Vec::new();
            for (rank, slot) in state.slots.iter() {
                // The spawner already cleared its own host.
                if slot.host != self.shared.host
                    && !seen.iter().any(|(_, h): &(u32, String)| *h == slot.host)
                {
                    seen.push((rank, slot.host.clone()));
                }
            }
            seen
        };
        for (rank, _) in &targets {
            self.shared.send(*rank, &ToWorker::Clear { force })?;
        }
        let wanted = targets.len();
        let replies = self
            .shared
            .pump(Until::after(timeout), |state| {
                (state.cleared.len() >= wanted).then(|| std::mem::take(&mut state.cleared))
            })?
            .unwrap_or_else(|| std::mem::take(&mut self.shared.lock().cleared));
        for (rank, host) in targets {
            let outcome = replies
                .iter()
                .find(|(r, _)| *r == rank)
                .map(|(_, outcome)| outcome.clone())
                .unwrap_or_else(|| Err(format!("no answer within {timeout:?}")));
            report.hosts.push((HostId(host), outcome.into()));
        }
        Ok(report)
    }

    /// Sends the workers home now; VMs of this runtime fail with [`Error::Finalized`] from
    /// then on. Dropping the last runtime handle and VM does the same.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends that can fail here.
    pub fn finalize(self) -> Result<(), Error> {
        self.shared.finalize();
        Ok(())
    }
}
