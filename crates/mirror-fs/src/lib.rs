//! Mirroring for parvm: host-independent names for files in shared folders, mirror maps,
//! and a fast parallel engine that copies a task's input files into its local folder.
//!
//! - [`to_abstract`] / [`to_actual`] translate a path in a mirrored root into an
//!   [`AbstractPath`] (root index, relative suffix) and back on another host, whose roots
//!   may be mounted elsewhere.
//! - A [`MirrorMap`] lists (source glob, target folder) pairs; [`MirrorMap::to_abstract`]
//!   makes the host-independent [`AbstractMirrorMap`] that travels in a spawn request.
//! - [`mirror`] copies what a map names into a task folder, in parallel; [`refresh`] copies
//!   again only what changed at the source (for persistent task folders).
//!
//! ```
//! use parvm_mirror_fs::{mirror, refresh, MirrorMap, MirrorOptions};
//!
//! let shared = tempfile::tempdir()?;
//! std::fs::create_dir(shared.path().join("lib"))?;
//! std::fs::write(shared.path().join("lib/a.lib"), "model a")?;
//! std::fs::write(shared.path().join("top.cir"), "netlist")?;
//!
//! let map = MirrorMap::new()
//!     .entry(shared.path().join("lib/*.lib"), "models")?
//!     .entry(shared.path().join("top.cir"), ".")?;
//! let task = tempfile::tempdir()?;
//! let report = mirror(&map, task.path(), &MirrorOptions::new())?;
//! assert_eq!(report.files, 2);
//! assert_eq!(std::fs::read_to_string(task.path().join("models/a.lib"))?, "model a");
//!
//! // Nothing changed at the source: a refresh copies nothing.
//! let again = refresh(&map, task.path(), &MirrorOptions::new())?;
//! assert_eq!((again.files, again.skipped), (0, 2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod copy;
mod error;
mod folder;
pub mod glob;
mod manifest;
mod map;
mod pathser;
mod scan;
mod translate;
mod watch;

pub use copy::{MirrorOptions, MirrorReport, Progress, ProgressFn, mirror, refresh};
pub use error::{Error, Result};
pub use folder::MirroredFolder;
pub use map::{AbstractMirrorEntry, AbstractMirrorMap, MirrorEntry, MirrorMap};
pub use translate::{AbstractPath, to_abstract, to_abstract_from, to_actual};
