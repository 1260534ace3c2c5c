//! Returned files: what a task leaves in its folder that goes back to the spawner.
//!
//! On the worker, [`ReturnSource`] expands return patterns inside the task folder with
//! mirroring's glob rules and opens each match without following a symlink; on the
//! spawner, [`ResultsDir`] writes each file that comes back beneath the results folder,
//! under a temporary name renamed into place ([`PendingFile`]).
//!
//! Both sides resolve every path from a folder descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or component by component with
//! `O_NOFOLLOW`), as mirroring does for its destinations: a task that plants
//! `out.txt -> /etc/shadow` gets [`Error::ReturnSymlink`], not the file, and a peer that
//! sends `../x` gets [`Error::ResultPath`]. It must not know how the bytes travel.
//!
//! parvm's own files at the top of the task folder (`.parvm*`: lock, owner marker, mirror
//! manifest) are never returned, whatever the pattern.
//!
//! A folder that a pattern matches is returned whole (every file beneath it); a symlink,
//! fifo, socket or device anywhere in what is returned is refused by name rather than
//! skipped, so nothing the task meant to return goes missing without a word.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::fsops::{Created, TaskRoot, cstring, dir_flags, special_kind};
use crate::glob::{Pattern, has_glob, is_literal};

/// Checks a return pattern: relative, not empty, without `..`. Returns it without `.`
/// components.
///
/// # Errors
/// [`Error::ReturnPattern`] naming the pattern and what is wrong with it.
pub fn check_return_pattern(pattern: &str) -> Result<PathBuf> {
    let refuse = |problem| Error::ReturnPattern {
        pattern: pattern.to_owned(),
        problem,
    };
    if pattern.as_bytes().contains(&0) {
        return Err(refuse("holds a NUL byte"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(pattern).components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return Err(refuse("is absolute")),
            Component::ParentDir => return Err(refuse("holds `..`")),
            Component::CurDir => {}
            Component::Normal(name) => out.push(name),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(out)
}

/// Checks a relative path that came from a peer: only plain components, at least one.
///
/// # Errors
/// [`Error::ResultPath`] naming the path.
pub fn check_result_path(path: &Path) -> Result<()> {
    let plain = path
        .components()
        .all(|c| matches!(c, Component::Normal(name) if !name.as_bytes().contains(&0)));
    if plain && path.components().next().is_some() {
        Ok(())
    } else {
        Err(Error::ResultPath {
            path: path.to_path_buf(),
        })
    }
}

/// What tells whether a file changed while it was read: size, modification and change
/// times (as mirroring's copy checks its sources), and the mode it is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSig {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileSig {
    fn of_stat(st: &FileStat) -> FileSig {
        FileSig {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// The signature of an open file, now.
    ///
    /// # Errors
    /// `fstat` failed.
    pub fn of(file: &File) -> io::Result<FileSig> {
        Ok(FileSig::of_stat(&nix::sys::stat::fstat(file)?))
    }
}

/// The task folder, open, from which files are returned.
#[derive(Debug)]
pub struct ReturnSource {
    root: TaskRoot,
}

impl ReturnSource {
    /// Opens the task folder `task_dir`.
    ///
    /// # Errors
    /// [`Error::TaskFolder`] when it cannot be opened.
    pub fn open(task_dir: &Path) -> Result<ReturnSource> {
        Ok(ReturnSource {
            root: TaskRoot::open(task_dir, true)?,
        })
    }

    /// The task folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The files `patterns` match, as paths relative to the task folder, sorted, each once;
    /// a matched folder gives every file beneath it.
    ///
    /// # Errors
    /// [`Error::ReturnPattern`] for a pattern that is absolute or climbs out,
    /// [`Error::ReturnMissing`] for a literal pattern that names nothing,
    /// [`Error::ReturnSymlink`] for a symlink matched, found in a matched folder or standing
    /// on the way, [`Error::ReturnNotFile`] for a fifo, socket or device, [`Error::Read`]
    /// when a folder cannot be listed.
    pub fn expand<S: AsRef<str>>(&self, patterns: &[S]) -> Result<Vec<PathBuf>> {
        let mut out = BTreeSet::new();
        for pattern in patterns {
            let given = pattern.as_ref();
            let rel = check_return_pattern(given)?;
            let found = self.expand_one(&rel, &mut out)?;
            if found == 0 && is_literal(given.as_bytes()) {
                return Err(Error::ReturnMissing {
                    pattern: given.to_owned(),
                    task_dir: self.path().to_path_buf(),
                });
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Opens returned file `rel` (relative to the task folder) for reading, never through
    /// a symlink, and gives its signature.
    ///
    /// # Errors
    /// [`Error::ReturnSymlink`], [`Error::ReturnNotFile`], or [`Error::Read`].
    pub fn open_file(&self, rel: &Path) -> Result<(File, FileSig)> {
        let path = self.path().join(rel);
        let (dir, name) = self.root.parent_of(&path, &path).map_err(|e| self.map(e))?;
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        let fd = match nix::fcntl::openat(&dir, name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(symlink_error(&dir, &name, &path)),
            Err(e) => return Err(read_error(&path, e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| read_error(&path, e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::ReturnNotFile {
                path,
                kind: special_kind(st.st_mode),
            });
        }
        let file = File::from(fd);
        // Reads block from here on; O_NONBLOCK only kept a fifo from hanging the open.
        let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        Ok((file, FileSig::of_stat(&st)))
    }

    /// Adds the files `rel` matches to `out`; returns how many matches (files or folders)
    /// there were.
    fn expand_one(&self, rel: &Path, out: &mut BTreeSet<PathBuf>) -> Result<usize> {
        let mut current = vec![PathBuf::new()];
        for component in rel.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            if !has_glob(name.as_bytes()) {
                current.iter_mut().for_each(|p| p.push(name));
                continue;
            }
            let compiled = Pattern::new(name.as_bytes());
            let mut next = Vec::new();
            for base in &current {
                let Some(dir) = self.open_dir(base)? else {
                    continue;
                };
                for entry_name in list(&dir, &self.path().join(base))? {
                    if compiled.matches(entry_name.as_bytes()) {
                        next.push(base.join(entry_name));
                    }
                }
            }
            current = next;
            if current.is_empty() {
                return Ok(0);
            }
        }
        let mut found = 0;
        for candidate in current {
            if is_own_file(&candidate) {
                continue;
            }
            let path = self.path().join(&candidate);
            let (Some(parent), Some(name)) = (candidate.parent(), candidate.file_name()) else {
                continue;
            };
            let Some(dir) = self.open_dir(parent)? else {
                continue;
            };
            let name = cstring(name, &path)?;
            match nix::sys::stat::fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    found += 1;
                    self.add(&dir, &name, &candidate, &st, out)?;
                }
                Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                Err(e) => return Err(read_error(&path, e)),
            }
        }
        Ok(found)
    }

    /// Adds `rel` (entry `name` of `dir`, with metadata `st`) to `out`: a file itself, a
    /// folder with everything beneath it.
    fn add(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
        st: &FileStat,
        out: &mut BTreeSet<PathBuf>,
    ) -> Result<()> {
        let path = self.path().join(rel);
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                out.insert(rel.to_path_buf());
                Ok(())
            }
            libc::S_IFLNK => Err(symlink_error(dir, name, &path)),
            libc::S_IFDIR => {
                let Some(sub) = self.open_dir(rel)? else {
                    return Ok(());
                };
                for entry in list(&sub, &path)? {
                    let cname = cstring(&entry, &path.join(&entry))?;
                    let st = nix::sys::stat::fstatat(
                        &sub,
                        cname.as_c_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| read_error(&path.join(&entry), e))?;
                    self.add(&sub, &cname, &rel.join(&entry), &st, out)?;
                }
                Ok(())
            }
            _ => Err(Error::ReturnNotFile {
                path,
                kind: special_kind(st.st_mode),
            }),
        }
    }

    /// Opens folder `rel` of the task folder without following a symlink; `None` when it
    /// is missing or not a folder (nothing to match there).
    fn open_dir(&self, rel: &Path) -> Result<Option<OwnedFd>> {
        let path = self.path().join(rel);
        match self.root.open_dir(&path, &path) {
            Ok(fd) => Ok(Some(fd)),
            Err(Error::Create { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR)
                ) =>
            {
                Ok(None)
            }
            Err(Error::NotAFolder { .. }) => Ok(None),
            Err(e) => Err(self.map(e)),
        }
    }

    /// Mirroring's words for a symlink on the way become returning's.
    fn map(&self, e: Error) -> Error {
        match e {
            Error::TargetSymlink { link, target, .. } => Error::ReturnSymlink { link, target },
            e => e,
        }
    }
}

/// The prefix of the files parvm keeps at the top of a task folder (its lock, owner
/// marker and mirror manifest), which are never returned.
const OWN_PREFIX: &[u8] = b".parvm";

/// Whether `rel` is one of parvm's own files at the top of the task folder.
fn is_own_file(rel: &Path) -> bool {
    let mut components = rel.components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(name)), None) if name.as_bytes().starts_with(OWN_PREFIX)
    )
}

/// The names in folder `dir` (at `path`), without `.` and `..`.
fn list(dir: &OwnedFd, path: &Path) -> Result<Vec<std::ffi::OsString>> {
    let read = |e: Errno| read_error(path, e);
    let mut listing = nix::dir::Dir::openat(dir, c".", dir_flags(), Mode::empty()).map_err(read)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(read)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn read_error(path: &Path, e: Errno) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn symlink_error(dir: &OwnedFd, name: &CStr, path: &Path) -> Error {
    Error::ReturnSymlink {
        link: path.to_path_buf(),
        target: nix::fcntl::readlinkat(dir, name)
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("?")),
    }
}

/// The spawner's results folder, open, into which returned files are written.
#[derive(Debug)]
pub struct ResultsDir {
    root: TaskRoot,
}

impl ResultsDir {
    /// Opens results folder `path`, creating it and its parents when missing.
    ///
    /// # Errors
    /// [`Error::ResultWrite`] when it cannot be created, [`Error::TaskFolder`] when it
    /// cannot be opened.
    pub fn create(path: &Path) -> Result<ResultsDir> {
        std::fs::create_dir_all(path).map_err(|source| Error::ResultWrite {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ResultsDir {
            root: TaskRoot::open(path, true)?,
        })
    }

    /// The results folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Starts writing file `rel` (a path a peer sent: checked here) under a temporary name
    /// in its folder, which is created beneath the results folder without following a
    /// symlink. `tag` makes the temporary name unique among concurrent writers.
    ///
    /// # Errors
    /// [`Error::ResultPath`] for a path that is not plain, [`Error::ReturnSymlink`] when
    /// a symlink stands on the way, [`Error::ResultWrite`] when the file cannot be created.
    pub fn begin(&self, rel: &Path, tag: &str) -> Result<PendingFile> {
        check_result_path(rel)?;
        let path = self.path().join(rel);
        let write_err = |e: Errno| Error::ResultWrite {
            path: path.clone(),
            source: e.into(),
        };
        let parent = self.path().join(rel.parent().unwrap_or(Path::new("")));
        let dir = self
            .root
            .create_dir_all(&parent, &path, &mut Created::default())
            .map_err(|e| match e {
                Error::TargetSymlink { link, target, .. } => Error::ReturnSymlink { link, target },
                Error::Create { path: p, source } => Error::ResultWrite { path: p, source },
                e => e,
            })?;
        let Some(file_name) = rel.file_name() else {
            return Err(Error::ResultPath {
                path: rel.to_path_buf(),
            });
        };
        let name = cstring(file_name, &path)?;
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(file_name.as_bytes());
        tmp.extend_from_slice(format!(".parvm-part.{tag}").as_bytes());
        let tmp = CString::new(tmp).map_err(|_| Error::ResultPath {
            path: rel.to_path_buf(),
        })?;
        // A leftover of an earlier attempt with the same tag goes first.
        let _ = nix::unistd::unlinkat(
            &dir,
            tmp.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let fd = nix::fcntl::openat(&dir, tmp.as_c_str(), flags, Mode::from_bits_truncate(0o600))
            .map_err(write_err)?;
        Ok(PendingFile {
            dir,
            tmp: Some(tmp),
            name,
            file: File::from(fd),
            path,
            written: 0,
        })
    }
}

/// A returned file being written under a temporary name; [`PendingFile::finish`] renames
/// it into place, and dropping it unfinished removes it.
#[derive(Debug)]
pub struct PendingFile {
    dir: OwnedFd,
    tmp: Option<CString>,
    name: CString,
    file: File,
    path: PathBuf,
    written: u64,
}

impl PendingFile {
    /// Where the file goes once finished.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`.
    ///
    /// # Errors
    /// [`Error::ResultWrite`] naming the file (a full disk is `ENOSPC` there).
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|source| Error::ResultWrite {
                path: self.path.clone(),
                source,
            })?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Gives the file `mode` (its permission bits; set-user-id, set-group-id and sticky
    /// bits are dropped, since the mode comes from a peer) and modification time `mtime`
    /// (seconds, nanoseconds), and renames it into place, replacing what stood there (a
    /// symlink there is replaced, not written through).
    ///
    /// # Errors
    /// [`Error::ResultWrite`] naming the file; the temporary file is removed.
    pub fn finish(mut self, mode: u32, mtime: (i64, i64)) -> Result<()> {
        let err = |e: Errno| Error::ResultWrite {
            path: self.path.clone(),
            source: e.into(),
        };
        nix::sys::stat::fchmod(&self.file, Mode::from_bits_truncate(mode & 0o777)).map_err(err)?;
        let times = [
            TimeSpec::new(0, libc::UTIME_OMIT),
            TimeSpec::new(mtime.0, mtime.1),
        ];
        nix::sys::stat::futimens(&self.file, &times[0], &times[1]).map_err(err)?;
        let Some(tmp) = self.tmp.as_ref() else {
            return Ok(());
        };
        nix::fcntl::renameat(&self.dir, tmp.as_c_str(), &self.dir, self.name.as_c_str())
            .map_err(err)?;
        self.tmp = None;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                tmp.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn patterns_that_leave_the_task_folder_are_refused() {
        for (pattern, problem) in [
            ("/etc/passwd", "is absolute"),
            ("../x", "holds `..`"),
            ("a/../../x", "holds `..`"),
            ("a/..", "holds `..`"),
            ("", "names no file"),
            (".", "names no file"),
        ] {
            let err = check_return_pattern(pattern).unwrap_err();
            assert!(
                matches!(&err, Error::ReturnPattern { problem: p, .. } if *p == problem),
                "{pattern}: {err}"
            );
            assert!(err.to_string().contains(&format!("`{pattern}`")), "{err}");
        }
        assert_eq!(
            check_return_pattern("./out/*.txt").unwrap(),
            PathBuf::from("out/*.txt")
        );
    }

    #[test]
    fn peer_paths_must_be_plain() {
        for bad in ["", "/x", "../x", "a/../b", ".", "./a"] {
            assert!(check_result_path(Path::new(bad)).is_err(), "{bad}");
        }
        check_result_path(Path::new("a/b.txt")).unwrap();
    }

    fn task() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("out/deep")).unwrap();
        std::fs::write(p.join("a.txt"), "a").unwrap();
        std::fs::write(p.join("b.log"), "b").unwrap();
        std::fs::write(p.join(".hidden.txt"), "h").unwrap();
        std::fs::write(p.join("out/r1.txt"), "1").unwrap();
        std::fs::write(p.join("out/deep/r2.txt"), "2").unwrap();
        dir
    }

    #[test]
    fn globs_folders_and_literals_expand_beneath_the_task_folder() {
        let dir = task();
        let src = ReturnSource::open(dir.path()).unwrap();
        let got = src.expand(&["*.txt", "out", "a.txt", "none*"]).unwrap();
        let want: Vec<PathBuf> = ["a.txt", "out/deep/r2.txt", "out/r1.txt"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            src.expand(&["*/*.txt"]).unwrap(),
            [PathBuf::from("out/r1.txt")]
        );
        // parvm's own files stay, whatever the pattern.
        std::fs::write(dir.path().join(".parvm-lock"), "").unwrap();
        assert_eq!(src.expand(&[".*"]).unwrap(), [PathBuf::from(".hidden.txt")]);
        assert!(matches!(
            src.expand(&[".parvm-lock"]),
            Err(Error::ReturnMissing { .. })
        ));
        let err = src.expand(&["missing.txt"]).unwrap_err();
        assert!(
            matches!(&err, Error::ReturnMissing { pattern, .. } if pattern == "missing.txt"),
            "{err}"
        );
        // A value escaped into a pattern (`c*d` as `c[*]d`) stays literal: missing, it is
        // said; a class of several characters is a glob that may match nothing.
        std::fs::write(dir.path().join("c*d.txt"), "").unwrap();
        assert_eq!(
            src.expand(&["c[*]d.txt"]).unwrap(),
            [PathBuf::from("c*d.txt")]
        );
        for missing in ["c[*]x.txt", "out/[[]x].txt"] {
            assert!(
                matches!(src.expand(&[missing]), Err(Error::ReturnMissing { .. })),
                "{missing}"
            );
        }
        assert_eq!(
            src.expand(&["c[xy]d.txt", "c[!*]d.txt"]).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn symlinks_are_refused_by_name_and_not_followed() {
        let dir = task();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        symlink(outside.path().join("secret"), dir.path().join("link.txt")).unwrap();
        symlink(outside.path(), dir.path().join("ldir")).unwrap();
        let src = ReturnSource::open(dir.path()).unwrap();
        for pattern in ["*.txt", "link.txt", "ldir/secret", "ldir", "ldir/*"] {
            let err = src.expand(&[pattern]).unwrap_err();
            assert!(
                matches!(&err, Error::ReturnSymlink { link, .. } if link.starts_with(dir.path())),
                "{pattern}: {err}"
            );
        }
        let err = src.open_file(Path::new("link.txt")).unwrap_err();
        assert!(matches!(err, Error::ReturnSymlink { .. }), "{err}");
    }

    #[test]
    fn results_are_written_beneath_and_renamed_into_place() {
        let results = tempfile::tempdir().unwrap();
        let dir = ResultsDir::create(&results.path().join("r")).unwrap();
        let mut file = dir.begin(Path::new("sub/x.txt"), "1").unwrap();
        file.write_all(b"hello").unwrap();
        assert!(!results.path().join("r/sub/x.txt").exists());
        file.finish(0o4640, (1_000_000, 5)).unwrap();
        let meta = std::fs::metadata(results.path().join("r/sub/x.txt")).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o640,
            "no set-user-id bit"
        );
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_000_000);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime_nsec(&meta), 5);
        // Dropped unfinished: nothing is left.
        let mut file = dir.begin(Path::new("sub/y.txt"), "1").unwrap();
        file.write_all(b"half").unwrap();
        drop(file);
        let names: Vec<_> = std::fs::read_dir(results.path().join("r/sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.txt"]);
        // A peer's path that climbs out, and a symlink planted in the results folder.
        assert!(matches!(
            dir.begin(Path::new("../z"), "1"),
            Err(Error::ResultPath { .. })
        ));
        symlink(results.path(), results.path().join("r/evil")).unwrap();
        assert!(matches!(
            dir.begin(Path::new("evil/z"), "1"),
            Err(Error::ReturnSymlink { .. })
        ));
        assert!(!results.path().join("z").exists());
    }
}
