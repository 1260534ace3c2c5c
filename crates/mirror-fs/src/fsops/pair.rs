//! Open folder pairs: a source folder and its destination, both held by descriptor
//! ([`DirPair`]), with the destination made writable for its owner while the pair lives;
//! and the checks that keep top-level sources inside the mirrored roots ([`FolderCheck`]).
//! It must not know what is copied from a pair (plans, pools, manifests).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::beneath::TaskRoot;
use super::entry::{dir_flags, special_kind, vanished_or_read, within};
use crate::error::{Error, Result};

/// What every worker of a run shares: where the destinations are, and the roots the
/// sources are confined to.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'r> {
    pub(crate) root: &'r TaskRoot,
    pub(crate) roots: &'r [PathBuf],
}

/// A source folder and its destination folder, both open.
pub(crate) struct DirPair {
    /// Names the folder pair in a [`crate::copy::Recorded`] (meaningless when not recording).
    pub(crate) id: u32,
    pub(crate) src_path: PathBuf,
    pub(crate) dst_path: PathBuf,
    pub(crate) src: OwnedFd,
    pub(crate) dst: OwnedFd,
    /// The destination folder's identity when this pair holds it writable for its owner
    /// (see [`DirPair::open`]).
    pub(crate) loosened: Option<FolderId>,
    /// The source folder holds top-level matches, followed when they are symlinks (and
    /// then checked to stay inside the mirrored roots); entries of copied folders are
    /// never followed.
    pub(crate) top: bool,
}

impl DirPair {
    /// Opens a source folder and its destination. A destination an earlier run copied
    /// from a read-only source folder is read-only too, and its owner cannot add to it
    /// unless root: it is made writable for its owner while the pair lives, and its mode
    /// is set back when the pair is dropped (the run sets the source's mode at its end).
    ///
    /// `parent` is the pair of the folders this one was listed in, with its name there:
    /// both sides are then opened relative to it, never through a symlink. Without it, the
    /// source is opened by path (a top-level match, checked when planned) and the
    /// destination beneath the task folder.
    pub(crate) fn open(
        id: u32,
        src_path: PathBuf,
        dst_path: PathBuf,
        parent: Option<&(Arc<DirPair>, CString)>,
        ctx: Ctx<'_>,
    ) -> Result<DirPair> {
        let (src, dst) = match parent {
            Some((parent, name)) => {
                let flags = dir_flags() | OFlag::O_NOFOLLOW;
                let src = nix::fcntl::openat(&parent.src, name.as_c_str(), flags, Mode::empty())
                    .map_err(|e| match e {
                        // It was a folder when listed: replaced meanwhile.
                        Errno::ELOOP | Errno::ENOTDIR => Error::SourceVanished {
                            path: src_path.clone(),
                        },
                        e => vanished_or_read(&src_path, e),
                    })?;
                let dst = nix::fcntl::openat(&parent.dst, name.as_c_str(), flags, Mode::empty())
                    .map_err(|e| match e {
                        Errno::ELOOP | Errno::ENOTDIR => {
                            ctx.root.in_the_way(&parent.dst, name, &dst_path, &src_path)
                        }
                        e => Error::Create {
                            path: dst_path.clone(),
                            source: e.into(),
                        },
                    })?;
                (src, dst)
            }
            None => {
                let src = nix::fcntl::open(&src_path, dir_flags(), Mode::empty())
                    .map_err(|e| vanished_or_read(&src_path, e))?;
                check_opened_within(&src, &src_path, ctx.roots)?;
                (src, ctx.root.open_dir(&dst_path, &src_path)?)
            }
        };
        let loosened = loosen(&dst).map_err(|e| Error::Create {
            path: dst_path.clone(),
            source: e.into(),
        })?;
        Ok(DirPair {
            id,
            src_path,
            dst_path,
            src,
            dst,
            loosened,
            top: false,
        })
    }

    /// As [`DirPair::open`] for the parent folder of top-level file matches.
    pub(crate) fn open_top(
        id: u32,
        src_path: PathBuf,
        dst_path: PathBuf,
        ctx: Ctx<'_>,
    ) -> Result<DirPair> {
        let mut pair = DirPair::open(id, src_path, dst_path, None, ctx)?;
        pair.top = true;
        Ok(pair)
    }

    pub(crate) fn src_of(&self, name: &CStr) -> PathBuf {
        self.src_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    pub(crate) fn dst_of(&self, name: &CStr) -> PathBuf {
        self.dst_path.join(OsStr::from_bytes(name.to_bytes()))
    }
}

impl Drop for DirPair {
    fn drop(&mut self) {
        if let Some(id) = self.loosened {
            tighten(&self.dst, id, &self.dst_path);
        }
    }
}

/// A folder's device and inode.
type FolderId = (u64, u64);

/// Destination folders made writable for their owner by open [`DirPair`]s of this
/// process: how many pairs hold each, and its mode before. Two pairs can share a folder
/// (two map entries with one target); the mode is set back when the last one is dropped.
static LOOSENED: Mutex<BTreeMap<FolderId, (usize, u32)>> = Mutex::new(BTreeMap::new());

/// Makes folder `dir` readable, writable and searchable for its owner while this pair
/// lives; `None` when it already was (or is not ours to change: writing into it then
/// fails with its own error).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn loosen(dir: &OwnedFd) -> nix::Result<Option<FolderId>> {
    let st = nix::sys::stat::fstat(dir)?;
    let id = (st.st_dev as u64, st.st_ino as u64);
    // Under the lock, so a folder another pair loosened a moment ago is counted, not
    // taken for one that was writable all along.
    let mut loosened = LOOSENED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((holders, _)) = loosened.get_mut(&id) {
        *holders += 1;
        return Ok(Some(id));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o700 == 0o700 {
        return Ok(None);
    }
    match nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode | 0o700)) {
        Ok(()) => {
            loosened.insert(id, (1, mode));
            Ok(Some(id))
        }
        Err(Errno::EPERM) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Undoes [`loosen`] for one pair; the last pair holding the folder sets its mode back.
pub(crate) fn tighten(dir: &OwnedFd, id: FolderId, path: &Path) {
    let mut loosened = LOOSENED.lock().unwrap_or_else(PoisonError::into_inner);
    let Some((holders, mode)) = loosened.get_mut(&id) else {
        return;
    };
    *holders -= 1;
    if *holders > 0 {
        return;
    }
    let mode = *mode;
    loosened.remove(&id);
    if let Err(e) = nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode)) {
        tracing::debug!("cannot set the mode of `{}` back: {e}", path.display());
    }
}

/// Checks the top-level matches of a map: what each is, and that it stays inside the
/// mirrored roots. The folders the matches are in are resolved once each.
pub(crate) struct FolderCheck<'r> {
    roots: &'r [PathBuf],
    /// Folders of matches found inside the roots already.
    inside: std::collections::HashSet<PathBuf>,
}

impl<'r> FolderCheck<'r> {
    pub(crate) fn new(roots: &'r [PathBuf]) -> FolderCheck<'r> {
        FolderCheck {
            roots,
            inside: std::collections::HashSet::new(),
        }
    }

    /// The metadata of top-level match `from`, followed when it is a symlink: refused when
    /// it resolves outside every root (a symlink, or a folder on the way that is one), when
    /// it is a symlink to nothing, or when it is neither a file nor a folder (a fifo would
    /// hang the copy, a device has no end).
    pub(crate) fn top_match(&mut self, from: &Path) -> Result<fs::Metadata> {
        let read_err = |source: io::Error| match source.kind() {
            ErrorKind::NotFound => Error::SourceMissing {
                path: from.to_path_buf(),
            },
            _ => Error::Read {
                path: from.to_path_buf(),
                source,
            },
        };
        let lmeta = fs::symlink_metadata(from).map_err(read_err)?;
        let meta = if lmeta.file_type().is_symlink() {
            let target = fs::read_link(from).map_err(read_err)?;
            let resolved = match fs::canonicalize(from) {
                Ok(resolved) => resolved,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                    ) =>
                {
                    return Err(Error::DanglingLink {
                        link: from.to_path_buf(),
                        target,
                    });
                }
                Err(e) => return Err(read_err(e)),
            };
            if !self.within(&resolved) {
                return Err(Error::LinkOutsideRoots {
                    link: from.to_path_buf(),
                    target: resolved,
                    roots: crate::translate::list_roots(self.roots),
                });
            }
            fs::metadata(from).map_err(read_err)?
        } else {
            if !self.roots.is_empty()
                && let Some(parent) = from.parent()
                && !self.inside.contains(parent)
            {
                let resolved = fs::canonicalize(parent).map_err(read_err)?;
                if !self.within(&resolved) {
                    // A root inside no other root: in it, but not inside it.
                    if let Some(root) = self.roots.iter().find(|root| root.as_path() == from) {
                        return Err(Error::SourceIsRoot {
                            source_path: from.to_path_buf(),
                            root: root.clone(),
                        });
                    }
                    return Err(Error::NoRoot {
                        path: resolved.join(from.file_name().unwrap_or_default()),
                        roots: crate::translate::list_roots(self.roots),
                    });
                }
                self.inside.insert(parent.to_path_buf());
            }
            lmeta
        };
        let kind = meta.file_type();
        if kind.is_dir() || kind.is_file() {
            return Ok(meta);
        }
        Err(Error::NotCopyable {
            path: from.to_path_buf(),
            kind: special_kind(meta.mode()),
        })
    }

    fn within(&self, resolved: &Path) -> bool {
        within(self.roots, resolved)
    }
}

/// Checks that an open top-level source (reached by path, maybe through a symlink that
/// was changed after it was checked) is inside the roots: what the descriptor is, not what
/// a path said a moment ago. Costs one `readlink` of `/proc/self/fd`; where `/proc` is not
/// mounted, the check when planning stands alone.
pub(crate) fn check_opened_within(fd: &OwnedFd, path: &Path, roots: &[PathBuf]) -> Result<()> {
    use std::os::fd::AsRawFd;
    if roots.is_empty() {
        return Ok(());
    }
    let Ok(resolved) = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
        return Ok(());
    };
    if within(roots, &resolved) {
        return Ok(());
    }
    Err(Error::LinkOutsideRoots {
        link: path.to_path_buf(),
        target: resolved,
        roots: crate::translate::list_roots(roots),
    })
}
