//! Folders inside the task folder, reached without following a symlink.
//!
//! Every destination of a mirror is resolved from a descriptor of the task folder and never
//! through a symlink: with one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the
//! kernel has it (Linux 5.6 and later), else with one `openat(O_NOFOLLOW | O_DIRECTORY)` per
//! component. A symlink on the way is refused with [`Error::TargetSymlink`]: a task, or
//! anyone who may write to a persistent folder, could otherwise plant `a -> /elsewhere` and
//! make the next mirror write outside the task folder. When the fast path fails for any
//! reason, the component walk runs and names the component that is in the way.
//!
//! It also owns undoing a failed run ([`Created`]). It must not know what is copied into
//! the folders it opens (plans, pools, manifests).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use nix::unistd::UnlinkatFlags;

use super::entry::{Mode_, cstring, dir_flags, is_dir};
use crate::error::{Error, Result};

/// Set once the kernel answered `ENOSYS` to `openat2`: later lookups go straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How many times a component is created and opened again when something else removes or
/// makes it at the same moment, before giving up.
const RACE_TRIES: u32 = 4;

/// The task folder, open, and the way to resolve paths beneath it.
#[derive(Debug)]
pub(crate) struct TaskRoot {
    fd: OwnedFd,
    path: PathBuf,
    openat2: bool,
}

/// What a walk does with a missing component.
enum Missing<'a> {
    /// Fails.
    Fail,
    /// Stops: the rest will be created later (the check before anything is written).
    Stop,
    /// Creates it (mode 0777 less the umask, as `mkdir -p`), recording it in `Created`.
    Create(&'a mut Created),
}

impl TaskRoot {
    /// Opens the task folder `path` (symlinks in `path` itself are the caller's business);
    /// `openat2: false` forces the component walk (test seam).
    pub(crate) fn open(path: &Path, openat2: bool) -> Result<TaskRoot> {
        let fd =
            nix::fcntl::open(path, dir_flags(), Mode::empty()).map_err(|e| Error::TaskFolder {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        Ok(TaskRoot {
            fd,
            path: path.to_path_buf(),
            openat2: openat2 && !NO_OPENAT2.load(Ordering::Relaxed),
        })
    }

    /// The task folder's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads file `name` of the task folder itself, not following a symlink; `None` when
    /// there is none.
    pub(crate) fn read_file(&self, name: &CStr) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        let fd = match nix::fcntl::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Writes file `name` of the task folder itself whole: into a fresh temporary file,
    /// renamed over it, so a reader never sees half of it and a symlink there is replaced,
    /// not written through.
    pub(crate) fn write_file(&self, name: &CStr, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut tmp = name.to_bytes().to_vec();
        tmp.extend_from_slice(format!(".tmp{}", std::process::id()).as_bytes());
        let tmp = CString::new(tmp).map_err(std::io::Error::other)?;
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_CLOEXEC
            | OFlag::O_NOFOLLOW;
        let _ = nix::unistd::unlinkat(
            &self.fd,
            tmp.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = nix::fcntl::openat(
            &self.fd,
            tmp.as_c_str(),
            flags | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = std::fs::File::from(fd);
        let written = file.write_all(bytes).and_then(|()| {
            nix::fcntl::renameat(&self.fd, tmp.as_c_str(), &self.fd, name).map_err(Into::into)
        });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                &self.fd,
                tmp.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }

    /// The part of `dst` below the task folder.
    fn rel<'a>(&self, dst: &'a Path) -> Result<&'a Path> {
        dst.strip_prefix(&self.path)
            .map_err(|_| Error::TargetEscapes {
                target: dst.to_path_buf(),
            })
    }

    /// Opens the existing folder `dst` (a path in the task folder).
    pub(crate) fn open_dir(&self, dst: &Path, from: &Path) -> Result<OwnedFd> {
        self.walk(dst, from, Missing::Fail)?
            .ok_or_else(|| create_error(dst, from, Errno::ENOENT))
    }

    /// Checks, before anything is written, that no symlink or non-folder stands on the way
    /// to `dst`; missing components are fine.
    pub(crate) fn check(&self, dst: &Path, from: &Path) -> Result<()> {
        self.walk(dst, from, Missing::Stop).map(drop)
    }

    /// Opens folder `dst`, creating it and its missing parents.
    pub(crate) fn create_dir_all(
        &self,
        dst: &Path,
        from: &Path,
        created: &mut Created,
    ) -> Result<OwnedFd> {
        self.walk(dst, from, Missing::Create(created))?
            .ok_or_else(|| create_error(dst, from, Errno::ENOENT))
    }

    /// Opens the parent folder of `dst` and returns it with `dst`'s name in it.
    pub(crate) fn parent_of(&self, dst: &Path, from: &Path) -> Result<(OwnedFd, CString)> {
        let rel = self.rel(dst)?;
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Error::TargetEscapes {
                target: dst.to_path_buf(),
            });
        };
        let parent = self.open_dir(&self.path.join(parent), from)?;
        Ok((parent, cstring(name, dst)?))
    }

    /// Creates the one folder `dst` (owner-only until its mode is set at the end), recording
    /// it when this call created it. An existing folder is fine; anything else in the way
    /// is an error.
    pub(crate) fn make_dir(
        &self,
        dst: &Path,
        from: &Path,
        mode: Mode_,
        created: &mut Created,
    ) -> Result<()> {
        let (parent, name) = self.parent_of(dst, from)?;
        if mode == Mode_::Refresh
            && nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok()
        {
            return self.existing(&parent, &name, dst, from);
        }
        match nix::sys::stat::mkdirat(&parent, name.as_c_str(), Mode::S_IRWXU) {
            Ok(()) => {
                created.dirs.push(dst.to_path_buf());
                Ok(())
            }
            Err(Errno::EEXIST) => self.existing(&parent, &name, dst, from),
            Err(e) => Err(create_error(dst, from, e)),
        }
    }

    /// Ok when `name` in `parent` is a folder; the error that names what is there otherwise.
    fn existing(&self, parent: &OwnedFd, name: &CStr, dst: &Path, from: &Path) -> Result<()> {
        match nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => Ok(()),
            Ok(_) => Err(self.in_the_way(parent, name, dst, from)),
            Err(e) => Err(create_error(dst, from, e)),
        }
    }

    /// The error for `name` in `parent` (at `path`), which is not a folder: a symlink, or
    /// anything else.
    pub(crate) fn in_the_way(
        &self,
        parent: &impl AsFd,
        name: &CStr,
        path: &Path,
        from: &Path,
    ) -> Error {
        match nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Error::TargetSymlink {
                link: path.to_path_buf(),
                target: nix::fcntl::readlinkat(parent, name)
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| PathBuf::from("?")),
                task_dir: self.path.clone(),
            },
            _ => Error::NotAFolder {
                path: path.to_path_buf(),
                from: from.to_path_buf(),
            },
        }
    }

    /// Resolves `dst` beneath the task folder, component by component in the kernel's or
    /// in our own hands; `None` only when `missing` is [`Missing::Stop`] and a component is
    /// missing.
    fn walk(&self, dst: &Path, from: &Path, mut missing: Missing<'_>) -> Result<Option<OwnedFd>> {
        let rel = self.rel(dst)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| Error::TaskFolder {
                path: self.path.clone(),
                source,
            })
        };
        if rel.as_os_str().is_empty() {
            return dup(&self.fd).map(Some);
        }
        if self.openat2 {
            let how = OpenHow::new()
                .flags(dir_flags() | OFlag::O_NOFOLLOW)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                );
            match nix::fcntl::openat2(&self.fd, rel, how) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // The walk names what is in the way, or creates what is missing.
                Err(_) => {}
            }
        }
        let mut cur = dup(&self.fd)?;
        let mut here = self.path.clone();
        for component in rel.components() {
            let name = match component {
                Component::Normal(name) => name,
                Component::CurDir => continue,
                _ => {
                    return Err(Error::TargetEscapes {
                        target: dst.to_path_buf(),
                    });
                }
            };
            here.push(name);
            let cname = cstring(name, &here)?;
            match self.step(&cur, &cname, &here, from, &mut missing)? {
                Some(fd) => cur = fd,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Opens folder `name` in `dir` without following a symlink, creating it if asked.
    fn step(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        path: &Path,
        from: &Path,
        missing: &mut Missing<'_>,
    ) -> Result<Option<OwnedFd>> {
        let mut made = false;
        for _ in 0..RACE_TRIES {
            match nix::fcntl::openat(dir, name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty()) {
                Ok(fd) => {
                    if made {
                        owner_can_write(&fd, path)?;
                    }
                    return Ok(Some(fd));
                }
                Err(Errno::ENOENT) => match missing {
                    Missing::Fail => return Err(create_error(path, from, Errno::ENOENT)),
                    Missing::Stop => return Ok(None),
                    Missing::Create(created) => {
                        // 0777 less the umask, as `mkdir -p` does for the folders it makes.
                        match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o777)) {
                            Ok(()) => {
                                created.dirs.push(path.to_path_buf());
                                made = true;
                            }
                            // Made by someone else meanwhile: open it (or name what it is).
                            Err(Errno::EEXIST) => {}
                            Err(e) => return Err(create_error(path, from, e)),
                        }
                    }
                },
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.in_the_way(dir, name, path, from));
                }
                Err(e) => return Err(create_error(path, from, e)),
            }
        }
        Err(create_error(path, from, Errno::EAGAIN))
    }
}

/// A folder mirroring made must stay writable for its owner, whatever the umask says, or
/// nothing could be copied into it.
fn owner_can_write(fd: &OwnedFd, path: &Path) -> Result<()> {
    let err = |e: Errno| Error::Create {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let st = nix::sys::stat::fstat(fd).map_err(err)?;
    if st.st_mode & 0o700 != 0o700 {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777))
            .map_err(err)?;
    }
    Ok(())
}

fn create_error(path: &Path, from: &Path, e: Errno) -> Error {
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Error::DiskFull {
            from: from.to_path_buf(),
            to: path.to_path_buf(),
            source: e.into(),
        },
        _ => Error::Create {
            path: path.to_path_buf(),
            source: e.into(),
        },
    }
}

/// How deep [`remove_tree_at`] goes: it holds two folders open per level, and a task can
/// nest folders past the limit of open files (and of the stack). Deeper, it fails with
/// `ELOOP`, and its caller falls back on local storage's removal, which goes any depth.
const REMOVAL_DEPTH: usize = 128;

/// Removes `name` in `dir` and, when it is a folder, everything in it, never following a
/// symlink (one found is removed, not its target); fails with `ELOOP` for folders nested
/// more than [`REMOVAL_DEPTH`] deep.
pub(crate) fn remove_tree_at(dir: &impl AsFd, name: &CStr) -> nix::Result<()> {
    remove_tree_at_depth(dir, name, 0)
}

fn remove_tree_at_depth(dir: &impl AsFd, name: &CStr, depth: usize) -> nix::Result<()> {
    use nix::unistd::{UnlinkatFlags, unlinkat};
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR) => {
            return match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
            };
        }
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    if depth >= REMOVAL_DEPTH {
        return Err(Errno::ELOOP);
    }
    let fd = nix::fcntl::openat(dir, name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())?;
    let mut names = Vec::new();
    {
        let mut listing = nix::dir::Dir::openat(&fd, c".", dir_flags(), Mode::empty())?;
        for entry in listing.iter() {
            let entry = entry?;
            let child = entry.file_name();
            if child != c"." && child != c".." {
                names.push(child.to_owned());
            }
        }
    }
    for child in names {
        remove_tree_at_depth(&fd, &child, depth + 1)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens folder `sub` (relative, without `..`) of the task folder `task_dir` for a task to
/// start in, following no symlink on the way.
///
/// The startup folder of a task that has a task folder is a path inside it; a task (or
/// anyone who may write to a persistent folder) could plant a symlink there so that the
/// next task starts, and writes its results, elsewhere. Call this instead of joining the
/// paths, then start the task in the returned folder (`fchdir`), or in the returned path
/// when a path is all the spawner can take.
///
/// # Errors
///
/// [`Error::TargetSymlink`] naming the symlink on the way, [`Error::NotAFolder`] when
/// something else stands there, [`Error::TargetAbsolute`] or [`Error::TargetEscapes`] for a
/// `sub` that is absolute or climbs out, [`Error::StartupMissing`] when it does not exist.
pub fn open_beneath(task_dir: &Path, sub: &Path) -> Result<(OwnedFd, PathBuf)> {
    let sub = crate::map::check_target(sub)?;
    let root = TaskRoot::open(task_dir, true)?;
    let path = task_dir.join(&sub);
    let fd = root.open_dir(&path, &path).map_err(|e| match e {
        Error::Create { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::StartupMissing { path: path.clone() }
        }
        e => e,
    })?;
    Ok((fd, path))
}

/// True when this kernel resolves paths with `openat2` (test seam).
#[doc(hidden)]
pub fn has_openat2() -> bool {
    !NO_OPENAT2.load(Ordering::Relaxed)
        && nix::fcntl::openat2(
            nix::fcntl::AT_FDCWD,
            c"/",
            OpenHow::new().flags(dir_flags()),
        )
        .is_ok()
}

/// What this call created, to remove it again when copying fails.
#[derive(Default)]
pub(crate) struct Created {
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) files: Vec<PathBuf>,
}

impl Created {
    /// Removes what was created, beneath the task folder and without following a symlink.
    pub(crate) fn undo(&self, root: &TaskRoot) {
        let remove = |path: &Path, dir: bool| {
            let result = root.parent_of(path, path).and_then(|(parent, name)| {
                let removed = if dir {
                    remove_tree_at(&parent, &name)
                } else {
                    nix::unistd::unlinkat(&parent, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                };
                match removed {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(Error::Create {
                        path: path.to_path_buf(),
                        source: e.into(),
                    }),
                }
            });
            // A parent already gone leaves nothing to remove.
            if let Err(e) = result
                && path_exists_beneath(root, path)
            {
                tracing::warn!("cannot remove partial copy `{}`: {e}", path.display());
            }
        };
        for file in &self.files {
            remove(file, false);
        }
        for dir in self.dirs.iter().rev() {
            remove(dir, true);
        }
    }
}

/// True when something stands at `path` beneath the task folder (a parent that is gone
/// means there is nothing left to remove).
fn path_exists_beneath(root: &TaskRoot, path: &Path) -> bool {
    root.parent_of(path, path).is_ok_and(|(parent, name)| {
        nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walks(openat2: bool) {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("task");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(task.join("a/b")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, task.join("a/link")).unwrap();
        std::fs::write(task.join("a/file"), "x").unwrap();
        let root = TaskRoot::open(&task, openat2).unwrap();
        let from = Path::new("/src");

        assert!(root.open_dir(&task.join("a/b"), from).is_ok());
        assert!(root.check(&task.join("a/b/new/deeper"), from).is_ok());
        for bad in ["a/link", "a/link/x", "a/link/x/y"] {
            let err = root.check(&task.join(bad), from).unwrap_err();
            match &err {
                Error::TargetSymlink { link, target, .. } => {
                    assert_eq!(link, &task.join("a/link"), "{bad}");
                    assert_eq!(target, &outside, "{bad}");
                }
                other => panic!("{bad}: {other}"),
            }
            let mut created = Created::default();
            assert!(
                root.create_dir_all(&task.join(bad), from, &mut created)
                    .is_err()
            );
            assert!(created.dirs.is_empty());
        }
        let err = root.check(&task.join("a/file/x"), from).unwrap_err();
        assert!(matches!(err, Error::NotAFolder { .. }), "{err}");
        let mut created = Created::default();
        root.create_dir_all(&task.join("n/m"), from, &mut created)
            .unwrap();
        assert_eq!(created.dirs, vec![task.join("n"), task.join("n/m")]);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn walk_with_openat2() {
        walks(true);
    }

    #[test]
    fn walk_component_by_component() {
        walks(false);
    }

    #[test]
    fn openat2_refuses_symlinks_on_this_kernel() {
        if !has_openat2() {
            eprintln!("SKIPPING: this kernel has no openat2");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", dir.path().join("l")).unwrap();
        let root = TaskRoot::open(dir.path(), true).unwrap();
        assert!(root.openat2);
        let how = OpenHow::new()
            .flags(dir_flags())
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        assert_eq!(
            nix::fcntl::openat2(&root.fd, "l", how).unwrap_err(),
            Errno::ELOOP
        );
    }

    #[test]
    fn remove_tree_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("precious"), "x").unwrap();
        std::fs::create_dir_all(dir.path().join("t/a")).unwrap();
        std::fs::write(dir.path().join("t/a/f"), "x").unwrap();
        std::os::unix::fs::symlink(&keep, dir.path().join("t/a/l")).unwrap();
        let fd = nix::fcntl::open(dir.path(), dir_flags(), Mode::empty()).unwrap();
        remove_tree_at(&fd, c"t").unwrap();
        assert!(!dir.path().join("t").exists());
        assert!(keep.join("precious").exists());
    }
}
