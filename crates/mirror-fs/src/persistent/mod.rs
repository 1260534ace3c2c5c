//! Persistent task folders ([`MirroredFolder`]): a mirror kept from one task to the next,
//! with a manifest of what was copied (`manifest`, saved as `saved`), a parallel `stat`
//! scan of the sources (`scan`), inotify watches on the copies (`watch`) and on local
//! source folders (`srcwatch`), both on one table type (`inotify`), and a refresh that
//! turns what those say into `changes` and `apply`s them through the copy engine, new
//! folders in their order among those landing on the same place (`landing`); `prune`
//! removes what a fresh mirror would not have, for a temporary folder handed on;
//! `policy` picks, per task, between a plain mirror, a refresh and a fresh mirror. It must
//! not know the vm, local storage or a transport.

mod apply;
mod changes;
mod folder;
mod inotify;
mod landing;
mod manifest;
mod policy;
mod prune;
mod saved;
mod scan;
mod srcwatch;
mod watch;

pub use folder::{MANIFEST_FILE, MirroredFolder};
pub use policy::{FolderState, MirroredFolders};
pub use srcwatch::{source_events, watchable_source};
