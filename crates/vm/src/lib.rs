//! The parvm virtual machine: spawn registered tasks (or external commands) on free slots,
//! each in its own local folder filled by mirroring, and exchange messages with them.
//!
//! The same executable runs on every slot. The program registers its tasks and calls
//! [`Runtime::start`]: in a worker process that call runs the spawn loop and exits; in the
//! spawner it starts the workers (local processes by default) and returns. VM objects built
//! from the runtime spawn tasks and receive their results, exits and messages.
//!
//! ```standalone_crate
//! use parvm_vm::{Message, Runtime, Spawn, TaskContext, Tasks};
//!
//! fn hello(ctx: &TaskContext, name: String) -> Result<String, String> {
//!     Ok(format!("hello {name} from task {} on {}", ctx.task_id(), ctx.host_id()))
//! }
//!
//! let runtime = Runtime::start(Tasks::new().register("hello", hello))?;
//! let vm = runtime.vm().build()?;
//! let ids = vm.spawn(Spawn::task("hello", &"world".to_string()).count(2))?;
//! let mut exits = 0;
//! while exits < ids.len() {
//!     match vm.recv()? {
//!         Message::TaskResult { task, outcome } => match outcome {
//!             Ok(value) => println!("{task}: {}", value.decode::<String>()?),
//!             Err(failure) => println!("{task} failed: {failure}"),
//!         },
//!         Message::TaskExit { .. } => exits += 1,
//!         _ => {}
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For tests, [`memory`] runs a whole VM in one process, with workers on threads.

mod capture;
mod dispatch;
mod envfwd;
mod error;
mod forward;
mod ids;
mod launch;
mod layout;
pub mod leave;
mod link;
mod logging;
mod message;
mod returned;
mod returning;
mod route;
mod runtime;
mod ship;
mod spawner;
mod state;
mod streamed;
mod supervise;
mod task_context;
mod task_folder;
mod tasks;
mod vm;
mod wire;
mod worker;

pub use dispatch::{Dispatch, HaltHandle, Job, JobOutcome, JobResult};
pub use envfwd::FORWARD_ENV_VAR;
pub use error::{Error, Report, Result};
pub use ids::{HostId, TaskId};
pub use layout::{ClearOutcome, ClearReport, Layout, LayoutHost, LayoutSlot, LayoutTask};
pub use leave::LeaveRequest;
pub use message::{CommandStatus, ExitStatus, Message, Payload, TaskFailure, Value};
pub use parvm_env_config::{CacheMax, Config, ShipMode, TransportKind};
pub use returned::{CAPTURE_IN_MEMORY, Captured};
#[doc(hidden)]
pub use returning::set_return_hook;
pub use streamed::OutputStream;
// The in-process transport for tests lives in parvm-transport; re-exported so
// `parvm_vm::memory::MemoryTransport` still names it.
pub use parvm_transport::memory;
pub use runtime::{Backend, Runtime, RuntimeBuilder, TcpSpawner};
pub use ship::ShipStats;
pub use task_context::TaskContext;
pub use tasks::{Spawn, Tasks};
pub use vm::{Vm, VmBuilder};
pub use worker::{TASK_ID_VAR, TASK_SLOT_VAR, Worker, WorkerEnd};
