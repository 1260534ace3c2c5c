//! File-system primitives shared by the copy engine and the persistent refresh: what an
//! entry is ([`Kind`], [`Sig`], its file type), how a run writes ([`Mode_`]), and the
//! mapping of `errno`s to the crate's errors. A leaf: it must not know about task folders,
//! folder pairs, maps, plans, pools or manifests.

use std::ffi::{CString, OsStr};
use std::io::{self, ErrorKind};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::FileStat;
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode_ {
    Full,
    Refresh,
}

pub(crate) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Link,
}

pub(crate) fn cstring(name: &OsStr, from: &Path) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::Read {
        path: from.to_path_buf(),
        source: io::Error::new(ErrorKind::InvalidInput, "file name holds a NUL byte"),
    })
}

/// True when `resolved` lies in one of `roots`, or when there are no roots to keep to.
pub(crate) fn within(roots: &[PathBuf], resolved: &Path) -> bool {
    roots.is_empty() || roots.iter().any(|r| resolved.starts_with(r))
}

/// Names a file type that mirroring does not copy.
pub(crate) fn special_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFLNK => "symlink",
        _ => "special file",
    }
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_file(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// The type of a listed entry of folder `dir`: as the listing says, or, where the file
/// system does not say (`DT_UNKNOWN`), from an `fstatat` that does not follow symlinks.
/// Anything but a folder, a regular file or a symlink counts as a fifo (skipped).
pub(crate) fn entry_kind(dir: &impl AsFd, entry: &nix::dir::Entry) -> nix::Result<nix::dir::Type> {
    if let Some(kind) = entry.file_type() {
        return Ok(kind);
    }
    let st = nix::sys::stat::fstatat(dir, entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => nix::dir::Type::Directory,
        libc::S_IFREG => nix::dir::Type::File,
        libc::S_IFLNK => nix::dir::Type::Symlink,
        _ => nix::dir::Type::Fifo,
    })
}

pub(crate) fn vanished_or_read(path: &Path, e: Errno) -> Error {
    match e {
        Errno::ENOENT => Error::SourceVanished {
            path: path.to_path_buf(),
        },
        e => Error::Read {
            path: path.to_path_buf(),
            source: e.into(),
        },
    }
}

pub(crate) fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

/// A copy's change time (`st_ctime`, seconds and nanoseconds) right after it was made:
/// every later write, `chmod`, link or change of its times moves it, and nobody can set it
/// back.
pub(crate) type MadeAt = (i64, i64);

/// The change time of `st` as a [`MadeAt`].
#[allow(clippy::unnecessary_cast)] // The field types differ between targets.
pub(crate) fn made_at(st: &FileStat) -> MadeAt {
    (st.st_ctime as i64, st.st_ctime_nsec as i64)
}

/// The metadata that tells whether a source changed since it was copied.
///
/// The inode and the change time catch what size and modification time miss: a file
/// replaced by a rename (`rsync`, editors that save atomically) with its old time kept, or a
/// `chmod`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sig {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: i64,
    pub(crate) mtime: i64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime: i64,
    pub(crate) ctime_ns: i64,
    /// File type and permission bits (`st_mode`).
    pub(crate) mode: u32,
    /// Link count: a file with more than one name can change through a name outside the
    /// watched source folders, so its source is always looked at (see
    /// [`crate::MirroredFolder::refresh`]).
    pub(crate) nlink: u64,
}

impl Sig {
    #[allow(clippy::unnecessary_cast)] // The field types differ between targets.
    pub(crate) fn of(st: &FileStat) -> Sig {
        Sig {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as i64,
            mtime: st.st_mtime as i64,
            mtime_ns: st.st_mtime_nsec as i64,
            ctime: st.st_ctime as i64,
            ctime_ns: st.st_ctime_nsec as i64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
        }
    }

    /// The file type bits (`S_IFMT`).
    pub(crate) fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// True when a destination with metadata `dst` is an intact copy of a source that had
    /// this metadata when copied: same type, permissions, size and modification time (the
    /// copy keeps them), and for a file no other name (a copy is made with one; a task that
    /// linked it elsewhere may write it through that name, which no watch of the task
    /// folder hears). Symlinks are compared by type and time only.
    #[allow(clippy::unnecessary_cast)]
    pub(crate) fn copied_as(&self, dst: &FileStat) -> bool {
        let kind = dst.st_mode as u32 & libc::S_IFMT;
        if kind != self.file_type()
            || dst.st_mtime as i64 != self.mtime
            || dst.st_mtime_nsec as i64 != self.mtime_ns
        {
            return false;
        }
        kind == libc::S_IFLNK
            || (dst.st_size as i64 == self.size
                && dst.st_mode as u32 & 0o7777 == self.mode & 0o7777
                && dst.st_nlink == 1)
    }
}
