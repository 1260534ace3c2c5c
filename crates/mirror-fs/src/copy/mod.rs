//! The copy engine: [`mirror`] fills a task folder from a [`MirrorMap`], [`refresh`] brings
//! an earlier mirror up to date.
//!
//! First every source glob is expanded and checked, and the target folders are created, so
//! a missing literal source is reported before anything is copied. Then a small scoped
//! thread pool walks the source folders and copies in one pass: a worker that takes a folder
//! lists it once (file types come from the listing), creates its subfolders in the
//! destination, and queues its files in batches that any worker may take. Every file
//! operation is relative to open folder descriptors, so no path is looked up twice. A file
//! is opened, `fstat`-ed once, copied with `copy_file_range` (read/write where the file
//! systems do not allow it), and given its mode and times on the open descriptor. Folder
//! modes and times are set last, deepest first, because writing into a folder changes its
//! time and a read-only folder could not be filled.

use std::path::Path;
use std::time::Instant;

// Only the docs of `mirror` name the errors.
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::fsops::{Created, Ctx, Mode_};
use crate::map::MirrorMap;
use crate::options::{MirrorOptions, MirrorReport};

mod file;
mod plan;
mod pool;

pub(crate) use plan::{Batch, DirAttrs, Plan, Prepared, Recorded, Unit, prepare};
pub(crate) use pool::{execute, set_dir_attrs};

/// Copies everything `map` names into `task_dir`, entry by entry.
///
/// For each (source, target), the source glob is expanded and every match copied into
/// `<task_dir>/<target>/` (created when missing, with mode 0777 less the umask): a folder
/// recursively as `<target>/<name>/` with symlinks inside kept as symlinks, a file by
/// content as `<target>/<name>`, a symlink matched at the top level followed (only into the
/// map's roots, see [`MirrorMap::within`]). File and folder modes and modification times
/// are kept. Files already in the task folder are overwritten. Everything is written
/// beneath `task_dir` (which must exist) without following a symlink.
///
/// # Errors
///
/// [`Error::SourceMissing`] for a literal source that does not exist (a glob that matches
/// nothing is listed in [`MirrorReport::unmatched`] instead); [`Error::TargetSymlink`] for a
/// symlink on the way to a target, checked before anything is written;
/// [`Error::LinkOutsideRoots`], [`Error::DanglingLink`] or [`Error::NotCopyable`] for a
/// top-level match that is a symlink out of the roots or to nothing, or a fifo or device;
/// [`Error::NotAFolder`] when something that is not a folder stands where a folder must go;
/// [`Error::SourceVanished`] when a source disappears while being copied;
/// [`Error::SourceChanged`] when one keeps changing while it is copied; [`Error::DiskFull`]
/// when the destination is full; [`Error::TaskFolder`] when `task_dir` cannot be opened;
/// [`Error::Copy`], [`Error::Read`] or [`Error::Create`] for other failures. When copying
/// fails, the files and folders this call created are removed again.
pub fn mirror(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions) -> Result<MirrorReport> {
    run(map, task_dir, options, Mode_::Full, None).map(|(report, _)| report)
}

/// Brings a task folder mirrored earlier from the same `map` up to date: copies again only
/// the files whose size, modification time or mode differ at the source, or that are missing
/// from the task folder, and symlinks whose target differs. Everything else, including files
/// the tasks wrote, is left alone. It needs no state, so any process can refresh a folder
/// another one mirrored; it looks at every source and every copy (two `stat`s per file).
/// A process that keeps the folder does better with [`crate::MirroredFolder`].
///
/// # Errors
///
/// As [`mirror`].
pub fn refresh(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions) -> Result<MirrorReport> {
    run(map, task_dir, options, Mode_::Refresh, None).map(|(report, _)| report)
}

/// Mirrors (or refreshes) `map` into `task_dir`; with `plan`, also records what was copied
/// (for a [`crate::MirroredFolder`]).
pub(crate) fn run(
    map: &MirrorMap,
    task_dir: &Path,
    options: &MirrorOptions,
    mode: Mode_,
    mut plan: Option<&mut Plan>,
) -> Result<(MirrorReport, Recorded)> {
    let start = Instant::now();
    let root = options.task_root(task_dir)?;
    let mut created = Created::default();
    let record = plan.is_some();
    let result =
        prepare(map, &root, mode, &mut created, plan.as_deref_mut()).and_then(|prepared| {
            if let Some(hook) = &options.after_plan {
                hook();
            }
            let first_id = plan.as_ref().map_or(0, |p| p.next_id);
            let ctx = Ctx {
                root: &root,
                roots: map.roots(),
            };
            execute(prepared, options, mode, &mut created, first_id, record, ctx)
        });
    match result {
        Ok((mut report, recorded)) => {
            report.elapsed = start.elapsed();
            Ok((report, recorded))
        }
        Err(e) => {
            created.undo(&root);
            Err(e)
        }
    }
}
