//! parvm runs tasks in parallel on the cores of one machine or on the hosts of a cluster,
//! and gives every task its own folder on host-local disk, filled beforehand with copies of
//! the input files it needs from shared folders (mirroring).
//!
//! This façade re-exports the workspace's crates; each can also be used on its own.

pub use parvm_env_config as env_config;
pub use parvm_local_storage as local_storage;
pub use parvm_mirror_fs as mirror_fs;
pub use parvm_transport as transport;
pub use parvm_vm as vm;
