//! Copying one file or putting one entry in place in an open folder pair: the destination
//! replaced, never written through; the source checked unchanged across its copy. It must
//! not know about the pool, plans or manifests.

use std::ffi::CStr;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::SETTLE_WAITS;
use crate::error::{Error, Result};

use crate::fsops::{
    DirPair, MadeAt, check_opened_within, is_dir, is_file, made_at, special_kind, times,
    vanished_or_read,
};

/// Removes what stands at the destination so a file or symlink can take its place; a folder
/// is refused.
pub(crate) fn replace_non_dir(pair: &DirPair, name: &CStr) -> Result<()> {
    match nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_dir(&st) => Err(Error::Copy {
            from: pair.src_of(name),
            to: pair.dst_of(name),
            source: io::Error::new(
                ErrorKind::IsADirectory,
                "a folder is in the way; remove it from the task folder",
            ),
        }),
        _ => {
            match nix::unistd::unlinkat(&pair.dst, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(dst_error(pair, name, e)),
            }
        }
    }
}

/// True when the destination is a regular file with the size, modification time and mode of
/// the source.
pub(crate) fn up_to_date(pair: &DirPair, name: &CStr) -> Result<bool> {
    let follow = if pair.top {
        AtFlags::empty()
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    };
    let src = nix::sys::stat::fstatat(&pair.src, name, follow)
        .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
    let Ok(dst) = nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return Ok(false);
    };
    Ok(is_file(&dst)
        && dst.st_size == src.st_size
        && dst.st_mtime == src.st_mtime
        && dst.st_mtime_nsec == src.st_mtime_nsec
        && dst.st_mode & 0o7777 == src.st_mode & 0o7777)
}

pub(crate) fn dst_error(pair: &DirPair, name: &CStr, e: Errno) -> Error {
    let (from, to) = (pair.src_of(name), pair.dst_of(name));
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Error::DiskFull {
            from,
            to,
            source: e.into(),
        },
        Errno::EISDIR => Error::Copy {
            from,
            to,
            source: io::Error::new(
                ErrorKind::IsADirectory,
                "a folder is in the way; remove it from the task folder",
            ),
        },
        _ => Error::Copy {
            from,
            to,
            source: e.into(),
        },
    }
}

/// Opens the destination for writing as a new file: whatever stands there (a symlink, a
/// read-only file, a file with other hard links, maybe to a file outside the task folder)
/// is replaced, never written through. A first mirror finds nothing there and pays one
/// `openat`. Records the destination as written.
pub(crate) fn open_dst(
    pair: &DirPair,
    name: &CStr,
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<OwnedFd> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let create_mode = Mode::from_bits_truncate(mode & 0o777);
    let fd = match nix::fcntl::openat(&pair.dst, name, flags, create_mode) {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => {
            replace_non_dir(pair, name)?;
            nix::fcntl::openat(&pair.dst, name, flags, create_mode)
                .map_err(|e| dst_error(pair, name, e))?
        }
        Err(e) => return Err(dst_error(pair, name, e)),
    };
    written.push(pair.dst_of(name));
    Ok(fd)
}

/// How many times a file that changes while it is copied is copied again before giving up.
pub(crate) const COPY_TRIES: u32 = 1 + SETTLE_WAITS.len() as u32;

/// Opens a source file for reading. An entry of a copied folder is never followed (it was
/// a file when listed: a symlink there now was put in meanwhile); a top-level match is,
/// and the file it reaches must be inside the roots. `O_NONBLOCK`, which regular files
/// ignore, keeps a fifo put in the file's place from hanging the open.
pub(crate) fn open_src(pair: &DirPair, name: &CStr, roots: &[PathBuf]) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let path = || pair.src_of(name);
    match nix::fcntl::openat(&pair.src, name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) if pair.top => {
            let fd = nix::fcntl::openat(&pair.src, name, flags, Mode::empty())
                .map_err(|e| vanished_or_read(&path(), e))?;
            check_opened_within(&fd, &path(), roots)?;
            Ok(fd)
        }
        Err(Errno::ELOOP) => Err(Error::SourceVanished { path: path() }),
        Err(e) => Err(vanished_or_read(&path(), e)),
    }
}

/// True when a source's metadata after its copy (`after`) says it did not change since it
/// was opened (`before`): size, modification and change times.
pub(crate) fn unchanged(before: &FileStat, after: &FileStat) -> bool {
    before.st_size == after.st_size
        && before.st_mtime == after.st_mtime
        && before.st_mtime_nsec == after.st_mtime_nsec
        && before.st_ctime == after.st_ctime
        && before.st_ctime_nsec == after.st_ctime_nsec
}

/// Copies one file by content, with its mode and times; returns the bytes copied, the
/// source's metadata as copied and, with `note_made` (a recording mirror, whose renewals
/// compare it), the copy's change time once made: one more `fstat`, made only then.
///
/// A copy is kept only when it has the size the source had when opened and the source's
/// size and times did not move meanwhile (one more `fstat`); a source written to, truncated
/// or grown during its copy is copied again after a short wait ([`SETTLE_WAITS`]), up to
/// [`COPY_TRIES`] times, then refused with [`Error::SourceChanged`] rather than leaving a
/// copy that matches no version of it.
pub(crate) fn copy_file(
    pair: &DirPair,
    name: &CStr,
    roots: &[PathBuf],
    after_copy: Option<&(dyn Fn(&Path) + Send + Sync)>,
    buf: &mut Vec<u8>,
    written: &mut Vec<PathBuf>,
    note_made: bool,
) -> Result<(u64, FileStat, Option<MadeAt>)> {
    let stat_err = |e: Errno| vanished_or_read(&pair.src_of(name), e);
    for attempt in 0..COPY_TRIES {
        let src = match open_src(pair, name, roots) {
            Ok(src) => src,
            Err(e) => {
                // The copy an earlier try made of a version that changed meanwhile is no
                // copy of the source: not left behind for a caller that goes on.
                if attempt > 0 {
                    let _ = nix::unistd::unlinkat(
                        &pair.dst,
                        name,
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                }
                return Err(e);
            }
        };
        let st = nix::sys::stat::fstat(&src).map_err(stat_err)?;
        if !is_file(&st) {
            if pair.top && !is_dir(&st) {
                return Err(Error::NotCopyable {
                    path: pair.src_of(name),
                    kind: special_kind(st.st_mode),
                });
            }
            // It was a file when listed: it was replaced meanwhile.
            return Err(Error::SourceVanished {
                path: pair.src_of(name),
            });
        }
        let mode = st.st_mode & 0o7777;
        let dst = open_dst(pair, name, mode, written)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let copied = copy_data(&src, &dst, size, buf).map_err(|e| dst_error(pair, name, e))?;
        if let Some(hook) = after_copy {
            hook(&pair.src_of(name));
        }
        let after = nix::sys::stat::fstat(&src).map_err(stat_err)?;
        if copied != size || !unchanged(&st, &after) {
            tracing::debug!(
                "`{}` changed while copied; copying again",
                pair.src_of(name).display()
            );
            if let Some(wait) = SETTLE_WAITS.get(attempt as usize) {
                std::thread::sleep(*wait);
            }
            continue;
        }
        nix::sys::stat::fchmod(&dst, Mode::from_bits_truncate(mode))
            .map_err(|e| dst_error(pair, name, e))?;
        let (atime, mtime) = times(&st);
        nix::sys::stat::futimens(&dst, &atime, &mtime).map_err(|e| dst_error(pair, name, e))?;
        let made = if note_made {
            let made = nix::sys::stat::fstat(&dst).map_err(|e| dst_error(pair, name, e))?;
            Some(made_at(&made))
        } else {
            None
        };
        return Ok((copied, st, made));
    }
    Err(Error::SourceChanged {
        path: pair.src_of(name),
        tries: COPY_TRIES,
    })
}

/// Copies `size` bytes (fewer if the source shrank meanwhile) from `src` to `dst`, in the
/// kernel where the file systems allow it.
pub(crate) fn copy_data(
    src: &OwnedFd,
    dst: &OwnedFd,
    size: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<u64, Errno> {
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n as u64,
            Err(Errno::EINTR) => {}
            Err(
                Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM,
            ) => break,
            Err(e) => return Err(e),
        }
    }
    if buf.is_empty() && done < size {
        buf.resize(256 * 1024, 0);
    }
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match nix::unistd::read(src.as_fd(), &mut buf[..want]) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match nix::unistd::write(dst.as_fd(), &buf[off..n]) {
                Ok(m) => off += m,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        done += n as u64;
    }
    Ok(done)
}
