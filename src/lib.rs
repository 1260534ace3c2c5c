//! parvm runs tasks in parallel on the cores of one machine or on the hosts of a cluster,
//! and gives every task its own folder on host-local disk, filled beforehand with copies of
//! the input files it needs from shared folders (mirroring).
//!
//! The same program runs on every slot. It registers its tasks and starts the runtime: in a
//! worker that call never returns, in the spawner it returns, and VM objects built from it
//! spawn tasks and receive their results. A sweep spawns its cases as slots free up and
//! counts every case, whether it returned a value, failed, or lost its worker:
//!
//! ```standalone_crate
//! use std::collections::HashMap;
//!
//! use parvm::{Message, Runtime, Spawn, TaskContext, Tasks};
//!
//! /// One case; runs in a worker.
//! fn square(ctx: &TaskContext, x: f64) -> Result<f64, String> {
//!     if x < 0.0 {
//!         return Err(format!("task {}: {x} is negative", ctx.task_id()));
//!     }
//!     Ok(x * x)
//! }
//!
//! fn main() -> parvm::Result<()> {
//!     let runtime = Runtime::start(Tasks::new().register("square", square))?;
//!     let vm = runtime.vm().build()?;
//!     let cases = [1.0, 2.0, -3.0, 4.0];
//!     let mut results: Vec<Option<Result<f64, String>>> = vec![None; cases.len()];
//!     let mut running = HashMap::new(); // task -> case
//!     let mut next = 0;
//!     while next < cases.len() || !running.is_empty() {
//!         while next < cases.len() {
//!             // `spawn` returns no id when no slot is free.
//!             let Some(&task) = vm.spawn(Spawn::task("square", &cases[next]))?.first() else {
//!                 break;
//!             };
//!             running.insert(task, next);
//!             next += 1;
//!         }
//!         if running.is_empty() {
//!             break; // every worker is gone
//!         }
//!         match vm.recv()? {
//!             Message::TaskResult { task, outcome } => {
//!                 let result = match outcome {
//!                     Ok(value) => value.decode::<f64>().map_err(|e| e.to_string()),
//!                     Err(failure) => Err(failure.to_string()),
//!                 };
//!                 results[running[&task]] = Some(result);
//!             }
//!             Message::TaskExit { task, status } => {
//!                 if let Some(case) = running.remove(&task) {
//!                     results[case].get_or_insert(Err(status.to_string()));
//!                 }
//!             }
//!             _ => {}
//!         }
//!     }
//!     assert_eq!(results[1], Some(Ok(4.0)));
//!     assert!(matches!(&results[2], Some(Err(why)) if why.contains("-3 is negative")));
//!     Ok(())
//! }
//! ```
//!
//! The README and the user guide in `docs/` show the same with mirrored input files; their
//! code blocks run as tests too (`cargo xtask test`).
//!
//! This façade re-exports the types a program names at its root, and the workspace's
//! crates as modules; each crate can also be used on its own:
//!
//! * [`env_config`]: `PARALLEL_LOCAL_STORAGE`, `PARALLEL_MIRRORED_STORAGE` and the `PARVM_*` variables;
//! * [`mirror_fs`]: host-independent paths, mirror maps and the parallel copy engine;
//! * [`local_storage`]: per-user task folders, persistence and stale sweeping;
//! * [`transport`]: the message-passing trait and its local, TCP and MPI backends;
//! * [`ship`]: inputs shipped where a mirrored folder is not shared: manifests, the host
//!   cache and its snapshots;
//! * [`vm`]: the virtual machine.

// A warning in an example (an unused variable, say) is a mistake a user copies.
#![doc(test(attr(deny(warnings))))]

pub use parvm_env_config as env_config;
pub use parvm_local_storage as local_storage;
pub use parvm_mirror_fs as mirror_fs;
pub use parvm_ship as ship;
pub use parvm_transport as transport;
pub use parvm_vm as vm;

pub use parvm_transport::tcp::Secret;
pub use parvm_vm::{
    Backend, CAPTURE_IN_MEMORY, CacheMax, Captured, ClearOutcome, ClearReport, CommandStatus,
    Config, Dispatch, Error, ExitStatus, HostId, Job, JobOutcome, JobResult, Layout, LayoutHost,
    LayoutSlot, LayoutTask, Message, OutputStream, Payload, Report, Result, Runtime,
    RuntimeBuilder, ShipMode, Spawn, TaskContext, TaskFailure, TaskId, Tasks, TcpSpawner,
    TransportKind, Value, Vm, VmBuilder,
};
// Shown as a re-export, not inlined: inlined here, its doc's link to the `memory` module
// would point nowhere.
#[doc(no_inline)]
pub use parvm_vm::Worker;

/// The code blocks of the README and of the user guide in `docs/`, run as doc tests.
///
/// Each block that starts a runtime is a `standalone_crate`: the local transport starts its
/// workers by running the test's executable again, which must run that one test only.
/// They mirror `*.cir` files from the current folder, so they need a project folder inside
/// mirrored storage: `cargo xtask test` makes one in a temporary folder and runs them there
/// with `--cfg parvm_doc_env`, once with one worker and once with two.
#[cfg(all(doctest, parvm_doc_env))]
pub mod guide {
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    #[doc = include_str!("../docs/vm.md")]
    pub struct Vm;
    #[doc = include_str!("../docs/dispatch.md")]
    pub struct Dispatch;
    #[doc = include_str!("../docs/mirroring.md")]
    pub struct Mirroring;
    #[doc = include_str!("../docs/local-storage.md")]
    pub struct LocalStorage;
    #[doc = include_str!("../docs/configuration.md")]
    pub struct Configuration;
    #[doc = include_str!("../docs/transports.md")]
    pub struct Transports;
    #[doc = include_str!("../docs/cluster.md")]
    pub struct Cluster;
    #[doc = include_str!("../docs/pyopus.md")]
    pub struct Pyopus;
    #[doc = include_str!("../docs/benchmarks.md")]
    pub struct Benchmarks;
    #[doc = include_str!("../docs/run.md")]
    pub struct Run;
    #[doc = include_str!("../docs/security.md")]
    pub struct Security;
    #[doc = include_str!("../docs/architecture.md")]
    pub struct Architecture;
    #[doc = include_str!("../docs/README.md")]
    pub struct Guide;
}

#[cfg(test)]
mod tests {
    /// Every page of the user guide is in [`guide`], so its code blocks run as doc tests: a
    /// new page cannot be left out by accident.
    #[test]
    fn every_guide_page_is_run_as_doc_tests() {
        let lib = include_str!("lib.rs");
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(&docs).expect("the docs folder of the repository") {
            let name = entry.expect("a docs entry").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".md") && !lib.contains(&format!("\"../docs/{name}\"")) {
                missing.push(name.into_owned());
            }
        }
        assert!(
            missing.is_empty(),
            "docs pages missing from `guide` in src/lib.rs (add an include_str! line): {missing:?}"
        );
    }
}
