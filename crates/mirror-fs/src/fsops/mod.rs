//! The file-system layer under the copy engine ([`crate::copy`]) and the persistent
//! refresh ([`crate::MirroredFolder`]): entry kinds and signatures (`entry`), the task folder
//! reached without following a symlink (`beneath`), and open source/destination folder
//! pairs (`pair`). It must not know about globs, plans, thread pools or manifests: the
//! modules above it use it, never the other way round.

mod beneath;
mod entry;
mod pair;

pub(crate) use beneath::{Created, TaskRoot, remove_tree_at};
pub use beneath::{has_openat2, open_beneath};
pub(crate) use entry::{
    Kind, MadeAt, Mode_, Sig, cstring, dir_flags, entry_kind, is_dir, is_file, made_at,
    special_kind, times, vanished_or_read, within,
};
pub(crate) use pair::{Ctx, DirPair, FolderCheck, check_opened_within};
