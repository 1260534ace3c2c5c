//! parvm runs tasks in parallel on the cores of one machine or on the hosts of a cluster,
//! and gives every task its own folder on host-local disk, filled beforehand with copies of
//! the input files it needs from shared folders (mirroring).
//!
//! The same program runs on every slot. It registers its tasks and starts the runtime: in a
//! worker that call never returns, in the spawner it returns, and VM objects built from it
//! spawn tasks and receive their results.
//!
//! ```no_run
//! use parvm::{Message, Runtime, Spawn, TaskContext, Tasks};
//!
//! /// Runs in a worker, in a task folder holding copies of the `*.cir` files.
//! fn simulate(ctx: &TaskContext, netlist: String) -> Result<f64, String> {
//!     let text = std::fs::read_to_string(&netlist).map_err(|e| format!("{netlist}: {e}"))?;
//!     Ok(text.len() as f64 / f64::from(ctx.task_id().slot))
//! }
//!
//! let runtime = Runtime::start(Tasks::new().register("simulate", simulate))?;
//! let vm = runtime.vm().mirror("*.cir", ".").build()?;
//! vm.spawn(Spawn::task("simulate", &"amp.cir".to_string()))?;
//! loop {
//!     match vm.recv()? {
//!         Message::TaskResult { task, outcome } => println!("{task}: {outcome:?}"),
//!         Message::TaskExit { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This façade re-exports the workspace's crates; each can also be used on its own:
//!
//! * [`env_config`]: `PARALLEL_LOCAL_STORAGE`, `PARALLEL_MIRRORED_STORAGE` and the `PARVM_*` variables;
//! * [`mirror_fs`]: host-independent paths, mirror maps and the parallel copy engine;
//! * [`local_storage`]: per-user task folders, persistence and stale sweeping;
//! * [`transport`]: the message-passing trait and its local, TCP and MPI backends;
//! * [`vm`]: the virtual machine.

pub use parvm_env_config as env_config;
pub use parvm_local_storage as local_storage;
pub use parvm_mirror_fs as mirror_fs;
pub use parvm_transport as transport;
pub use parvm_vm as vm;

pub use parvm_vm::{
    Error, HostId, Message, Runtime, Spawn, TaskContext, TaskFailure, TaskId, Tasks, Value, Vm,
};
