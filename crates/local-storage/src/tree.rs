//! Measuring and removing folder trees through directory descriptors.
//!
//! Every step works relative to an open directory and opens with `O_NOFOLLOW`, so a
//! symlink a task left behind is removed or skipped as a link, never followed, even if
//! the tree changes while we walk it. Names are raw bytes, so non-UTF-8 names work.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::Error;

/// Flags for opening a folder we walk: never through a symlink, never inherited.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Owner read, write and search: what we need to empty a folder a task made read-only.
const OWNER_RWX: u32 = 0o700;
/// How often a folder that was not empty once its entries were removed is listed again.
const LATE_ENTRY_RETRIES: u32 = 8;

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_regular(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Splits `path` into its parent folder (opened) and its last component.
fn open_parent(path: &Path) -> io::Result<(Dir, CString)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = Dir::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dir, cstring(name)?))
}

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn child_path(parent: &Path, name: &CStr) -> PathBuf {
    parent.join(OsStr::from_bytes(name.to_bytes()))
}

/// The names in an open folder, without `.` and `..`, collected first so that removing
/// entries does not disturb the directory stream.
fn names(dir: &mut Dir) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Removes `path` and everything under it; a missing `path` is fine.
///
/// A symlink (at the top or inside) is unlinked, never followed. Folders a task made
/// read-only are given owner `rwx` first so their entries can be unlinked.
pub(crate) fn remove_tree(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Remove {
        path: path.to_path_buf(),
        source,
    };
    let (parent, name) = open_parent(path).map_err(fail)?;
    remove_entry(&parent, &name, path)
}

/// Past this many nested folders a removal holds no folder open per level: a task can nest
/// folders thousands deep, past the process's limit of open files.
const DEEP: usize = 64;

fn remove_entry(parent: &Dir, name: &CStr, path: &Path) -> Result<(), Error> {
    remove_entry_at(parent, name, path, 0)
}

/// [`remove_entry`] of an entry `depth` folders below where the removal started.
fn remove_entry_at(parent: &Dir, name: &CStr, path: &Path, depth: usize) -> Result<(), Error> {
    let fail = |errno: Errno| Error::Remove {
        path: path.to_path_buf(),
        source: errno.into(),
    };
    let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => return Ok(()),
        other => other.map_err(fail)?,
    };
    if !is_dir(&stat) {
        return match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(fail(errno)),
        };
    }
    if depth >= DEEP {
        return remove_deep(parent, name, path).map_err(fail);
    }
    // A sweeper of another process that looked the folder up by its old name just before
    // it was moved to the trash may still make its lock file in it, microseconds later
    // (it then finds the folder gone and leaves it alone): the folder is listed again.
    let mut tries = 0;
    loop {
        let Some(mut dir) = open_dir_for_removal(parent, name).map_err(fail)? else {
            return Ok(());
        };
        for child in names(&mut dir).map_err(|e| Error::Remove {
            path: path.to_path_buf(),
            source: e,
        })? {
            remove_entry_at(&dir, &child, &child_path(path, &child), depth + 1)?;
        }
        match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ENOTEMPTY) if tries < LATE_ENTRY_RETRIES => tries += 1,
            Err(errno) => return Err(fail(errno)),
        }
    }
}

/// Removes every entry of the folder at `path` but the regular files named in `keep`, each
/// as [`remove_tree`] removes a tree, leaving the folder itself. `Ok(false)`, with nothing
/// removed: the folder is not as made (see [`open_as_made`]).
pub(crate) fn empty_folder(
    path: &Path,
    identity: (u64, u64),
    keep: &[&str],
) -> Result<bool, Error> {
    let Some(mut dir) = open_as_made(path, identity, keep)? else {
        return Ok(false);
    };
    let fail = |source: io::Error| Error::Remove {
        path: path.to_path_buf(),
        source,
    };
    for name in names(&mut dir).map_err(fail)? {
        if !keep.iter().any(|k| k.as_bytes() == name.to_bytes()) {
            remove_entry(&dir, &name, &child_path(path, &name))?;
        }
    }
    Ok(true)
}

/// The folder at `path`, open, when it is as it was made: the folder `identity` (device,
/// inode) with mode 0700, holding each name in `keep` as a regular file. `Ok(None)`
/// otherwise.
pub(crate) fn open_as_made(
    path: &Path,
    identity: (u64, u64),
    keep: &[&str],
) -> Result<Option<Dir>, Error> {
    let fail = |source: io::Error| Error::Remove {
        path: path.to_path_buf(),
        source,
    };
    let dir = match Dir::open(path, dir_flags(), Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EACCES) => return Ok(None),
        Err(errno) => return Err(fail(errno.into())),
    };
    let stat = fstat(dir.as_fd()).map_err(|e| fail(e.into()))?;
    let same = (stat.st_dev, stat.st_ino) == identity && stat.st_mode & 0o7777 == OWNER_RWX;
    if !same {
        return Ok(None);
    }
    for name in keep {
        match fstatat(&dir, *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if is_regular(&stat) => {}
            Ok(_) | Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(fail(errno.into())),
        }
    }
    Ok(Some(dir))
}

/// Removes folder `name` of `top` and everything in it holding at most two folders open
/// at a time, however deep it goes: it goes down into one sub-folder after another,
/// removing what else it finds, and back up through `..` once a folder is empty (checked
/// to be the folder it came from), relisting that one. Slower than the recursion for
/// folders with many sub-folders, so used only past [`DEEP`].
fn remove_deep(top: &Dir, name: &CStr, path: &Path) -> nix::Result<()> {
    let identity = |dir: &Dir| fstat(dir.as_fd()).map(|st| (st.st_dev, st.st_ino));
    let Some(first) = open_dir_for_removal(top, name)? else {
        return Ok(());
    };
    // From `name` down to the folder open now: each one's name in its parent, and identity.
    let mut chain = vec![(name.to_owned(), identity(&first)?)];
    let mut here = first;
    let mut relists = 0;
    loop {
        let listed =
            names(&mut here).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let mut sub = None;
        for child in listed {
            match fstatat(&here, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => {
                    sub = Some(child);
                    break;
                }
                Ok(_) => match unlinkat(&here, child.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(errno) => return Err(errno),
                },
                Err(Errno::ENOENT) => {}
                Err(errno) => return Err(errno),
            }
        }
        if let Some(sub) = sub {
            if let Some(next) = open_dir_for_removal(&here, &sub)? {
                chain.push((sub, identity(&next)?));
                here = next;
            }
            continue;
        }
        let Some((done, _)) = chain.pop() else {
            unreachable!("the chain holds the open folder");
        };
        let parent = match chain.last() {
            Some((_, expected)) => {
                let parent = Dir::openat(&here, c"..", dir_flags(), Mode::empty())?;
                if identity(&parent)? != *expected {
                    // Moved meanwhile: not the folder this removal came down through.
                    tracing::debug!(path = %path.display(), "a folder moved during its removal");
                    return Err(Errno::ESTALE);
                }
                Some(parent)
            }
            None => None,
        };
        drop(here);
        let from = parent.as_ref().unwrap_or(top);
        let removed = match unlinkat(from, done.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => true,
            Err(Errno::ENOTEMPTY) if relists < LATE_ENTRY_RETRIES => false,
            Err(errno) => return Err(errno),
        };
        if removed {
            relists = 0;
        } else if let Some(again) = open_dir_for_removal(from, &done)? {
            // Something appeared meanwhile: list the folder again (a few times).
            relists += 1;
            chain.push((done, identity(&again)?));
            here = again;
            continue;
        }
        match parent {
            Some(parent) => here = parent,
            None => return Ok(()),
        }
    }
}

/// Opens a sub-folder to empty it, making it readable and writable for its owner when
/// a task took those rights away. `None`: it vanished meanwhile (another remover).
fn open_dir_for_removal(parent: &Dir, name: &CStr) -> nix::Result<Option<Dir>> {
    let dir = match Dir::openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EACCES) => {
            chmod_nofollow(parent, name)?;
            Dir::openat(parent, name, dir_flags(), Mode::empty())?
        }
        Err(errno) => return Err(errno),
    };
    let mode = fstat(dir.as_fd())?.st_mode;
    if mode & OWNER_RWX != OWNER_RWX {
        fchmod(dir.as_fd(), Mode::from_bits_truncate(mode | OWNER_RWX))?;
    }
    Ok(Some(dir))
}

/// Gives owner `rwx` to a folder we cannot open yet. Prefers the no-follow form; older C
/// libraries do not support it, and then the entry was just seen as a folder by `lstat`.
fn chmod_nofollow(parent: &Dir, name: &CStr) -> nix::Result<()> {
    let mode = Mode::from_bits_truncate(OWNER_RWX);
    match fchmodat(parent, name, mode, FchmodatFlags::NoFollowSymlink) {
        Err(Errno::EOPNOTSUPP) => fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink),
        other => other,
    }
}

/// Total size in bytes of the regular files under `path` (or of `path` itself).
///
/// Symlinks count as nothing and are never followed; parts we cannot read or that
/// vanish while we walk are skipped, since the size is only informative.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok((parent, name)) = open_parent(path) else {
        return 0;
    };
    entry_size(&parent, &name, 0)
}

/// How deep a size is measured: a folder per level is held open, and a task can nest
/// folders past the limit of open files (what lies deeper is not counted).
const MEASURED_DEPTH: usize = 256;

fn entry_size(parent: &Dir, name: &CStr, depth: usize) -> u64 {
    let Ok(stat) = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return 0;
    };
    if is_regular(&stat) {
        return u64::try_from(stat.st_size).unwrap_or(0);
    }
    if !is_dir(&stat) || depth >= MEASURED_DEPTH {
        return 0;
    }
    let Ok(mut dir) = Dir::openat(parent, name, dir_flags(), Mode::empty()) else {
        return 0;
    };
    let children = names(&mut dir).unwrap_or_default();
    children
        .iter()
        .map(|child| entry_size(&dir, child, depth + 1))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// Makes `depth` folders `d` nested in `top`, through descriptors (the path is far
    /// longer than the kernel takes); a file, a symlink and a read-only folder on the way.
    fn nest(top: &Path, depth: usize) {
        fs::create_dir(top).unwrap();
        let mut here = Dir::open(top, dir_flags(), Mode::empty()).unwrap();
        for level in 0..depth {
            nix::sys::stat::mkdirat(&here, c"d", Mode::from_bits_truncate(0o700)).unwrap();
            if level % 1000 == 7 {
                let file = nix::fcntl::openat(
                    &here,
                    c"f",
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .unwrap();
                drop(file);
                nix::unistd::symlinkat(c"/etc", &here, c"link").unwrap();
            }
            let next = Dir::openat(&here, c"d", dir_flags(), Mode::empty()).unwrap();
            if level == depth / 2 {
                fchmod(here.as_fd(), Mode::from_bits_truncate(0o500)).unwrap();
            }
            here = next;
        }
    }

    #[test]
    fn removes_a_tree_nested_deeper_than_the_limit_of_open_files() {
        let tmp = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        // The soft limit of open files, as the kernel tells it.
        let limit: usize = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            })
            .unwrap_or(1024);
        // Past the limit, where the limit is not huge (then deep enough to show the way).
        let depth = limit.min(30_000) + 100;
        let top = tmp.path().join("top");
        nest(&top, depth);
        assert_eq!(tree_size(&top), 0, "measured without running out of files");
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        // Emptying a folder with such a tree in it.
        let folder = tmp.path().join("folder");
        fs::create_dir(&folder).unwrap();
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(folder.join("keep"), b"k").unwrap();
        nest(&folder.join("out"), depth);
        let meta = fs::metadata(&folder).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(empty_folder(&folder, (meta.dev(), meta.ino()), &["keep"]).unwrap());
        assert_eq!(fs::read_dir(&folder).unwrap().count(), 1);
    }

    #[test]
    fn removes_nested_tree_with_read_only_folders_and_odd_names() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let deep = top.join("a").join(OsStr::from_bytes(b"b\xff\xfe"));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"12345").unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn size_and_removal_never_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), vec![0u8; 1000]).unwrap();
        let top = tmp.path().join("top");
        fs::create_dir(&top).unwrap();
        fs::write(top.join("mine"), b"abc").unwrap();
        symlink(&outside, top.join("link")).unwrap();
        assert_eq!(tree_size(&top), 3);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap().len(), 1000);
    }

    #[test]
    fn top_level_symlink_is_unlinked_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let link = tmp.path().join("link");
        symlink(&outside, &link).unwrap();
        assert_eq!(tree_size(&link), 0);
        remove_tree(&link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(outside.join("keep").exists());
    }

    fn identity(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.dev(), meta.ino())
    }

    fn private_folder(tmp: &Path) -> PathBuf {
        let top = tmp.join("top");
        fs::create_dir(&top).unwrap();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(top.join(".keep"), b"k").unwrap();
        top
    }

    #[test]
    fn emptying_keeps_only_the_named_files_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let top = private_folder(tmp.path());
        let deep = top.join("a").join(OsStr::from_bytes(b"b\xff"));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f"), b"12345").unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o000)).unwrap();
        symlink(&outside, top.join("link")).unwrap();
        symlink(&outside, top.join("a").join("inner-link")).unwrap();
        fs::write(top.join(".hidden"), b"h").unwrap();

        assert!(empty_folder(&top, identity(&top), &[".keep"]).unwrap());
        let left: Vec<_> = fs::read_dir(&top)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [OsStr::new(".keep")]);
        assert_eq!(fs::read(top.join(".keep")).unwrap(), b"k");
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn a_folder_not_as_it_was_made_is_not_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        let top = private_folder(tmp.path());
        fs::write(top.join("result"), b"r").unwrap();
        let id = identity(&top);
        let untouched = |top: &Path| top.join("result").exists();

        // Another folder under the same name.
        assert!(!empty_folder(&top, (id.0, id.1 + 1), &[".keep"]).unwrap());
        // Opened to group and others by its task.
        fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!empty_folder(&top, id, &[".keep"]).unwrap());
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700)).unwrap();
        // A kept file removed, or replaced by a symlink or a folder.
        assert!(!empty_folder(&top, id, &[".keep", ".gone"]).unwrap());
        symlink(tmp.path(), top.join(".link")).unwrap();
        assert!(!empty_folder(&top, id, &[".keep", ".link"]).unwrap());
        assert!(untouched(&top));
        // The folder itself replaced by a symlink.
        let moved = tmp.path().join("moved");
        fs::rename(&top, &moved).unwrap();
        symlink(&moved, &top).unwrap();
        assert!(!empty_folder(&top, id, &[".keep"]).unwrap());
        assert!(untouched(&moved));
        fs::remove_file(&top).unwrap();
        assert!(!empty_folder(&top, id, &[".keep"]).unwrap());
    }

    #[test]
    fn missing_path_is_removed_already() {
        let tmp = tempfile::tempdir().unwrap();
        remove_tree(&tmp.path().join("nothing")).unwrap();
        assert_eq!(tree_size(&tmp.path().join("nothing")), 0);
    }
}
