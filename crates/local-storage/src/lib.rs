//! Host-local task folders for parvm: one private folder per task (or per worker and
//! VM, when persistent), marked with its owner and locked while in use, so that stale
//! folders left by crashes, reboots and reused pids can be told apart from live ones
//! and swept safely.
//!
//! ```text
//! <local root>/                             it and every folder above it: owned by the user or root,
//!                                           not writable by others unless sticky: else refused
//! <local root>/parvm-<user>/                mode 0700, owned by the user, not a symlink: else refused
//!     <pid hex>_vm<vm index hex>[_<n>]/     one folder per worker process and VM index
//!         .parvm-owner                      JSON: pid, boot id, process start time, host
//!         .parvm-lock                       flock'ed by the worker while it uses the folder
//!     cache/                                the host cache of shipped inputs (parvm-ship): never
//!                                           listed, swept or cleared here ([`CACHE_DIR`])
//! ```
//!
//! A folder is *stale* when its owner marker names another boot, a dead process, or a
//! pid now carried by a process with another start time, and its lock is free. Where
//! the file system cannot `flock` (some NFS), the marker alone decides and a warning is
//! logged. Removal renames a folder to `.parvm-trash-*` first and never follows symlinks.
//! Trash and staging (`.parvm-new-*`) names carry their maker's pid, start time and boot,
//! judged like a marker, so a reused pid does not keep them.
//!
//! | [`FolderState`] | meaning | `sweep` | `clear(false)` | `clear(true)` |
//! | --- | --- | --- | --- | --- |
//! | `InUse` | lock held (or, without `flock`, owner alive) | keep | keep | remove |
//! | `Idle` | owner alive, lock free | keep | remove | remove |
//! | `Stale` | owner gone, lock free | remove | remove | remove |
//! | `OtherHost` | made on another host sharing the root | keep | remove | remove |
//! | `Unknown` | no readable marker, or not a folder | remove if older than the grace | same | remove |
//! | `Trash` | left by an interrupted removal | remove | remove | remove |
//! | `Foreign` | owned by another user | keep | keep | keep |
//!
//! Unknown folders get a grace period ([`DEFAULT_GRACE`], see [`StorageOptions::grace`])
//! because a folder another worker has just made has no marker for an instant. Every
//! removal first takes the folder's lock without waiting and looks again, so a folder
//! that came to life, or that a racing sweeper removed, is left alone. Workers sweep
//! when they start ([`LocalStorage::open_and_sweep`]).
//!
//! ```
//! use parvm_local_storage::{FolderState, LocalStorage, Persistence};
//!
//! let root = tempfile::tempdir()?;
//! let (storage, _swept) = LocalStorage::open_and_sweep(root.path())?;
//!
//! // A temporary folder lives as long as its task.
//! let folder = storage.take(0, Persistence::Temporary)?;
//! std::fs::write(folder.path().join("out.txt"), "result")?;
//! assert_eq!(storage.list()?[0].state, FolderState::InUse);
//! let path = folder.path().to_path_buf();
//! folder.release()?;
//! assert!(!path.exists());
//!
//! // A persistent folder is handed to the next task of the same VM index.
//! let first = storage.take(1, Persistence::Persistent)?;
//! let kept = first.path().to_path_buf();
//! first.release()?;
//! let again = storage.take(1, Persistence::Persistent)?;
//! assert!(again.reused());
//! assert_eq!(again.path(), kept);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod folder;
mod lock;
mod owner;
mod report;
mod scan;
mod storage;
mod tree;

pub use error::Error;

/// The host cache of shipped inputs (`parvm-ship`), `<per-user folder>/cache`: listing,
/// sweeping and clearing leave it alone, as it keeps its own limits and locks.
pub const CACHE_DIR: &str = "cache";
pub use folder::{Persistence, TaskFolder};
pub use lock::LOCK_FILE;
pub use owner::{OWNER_FILE, OwnerMarker};
pub use report::{Failure, FolderInfo, FolderState, SweepReport, human_size};
pub use storage::{DEFAULT_GRACE, LocalStorage, StorageOptions, user_folder};
