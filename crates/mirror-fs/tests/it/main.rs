//! Integration tests of parvm-mirror-fs, on real temporary folders.

mod copy;
mod folder;
mod hardening;
mod map;
mod model;
mod refresh;
mod renew;
mod srcwatch;
mod translate;
mod unprivileged;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A shared folder (the mirrored root) and a task folder, side by side in a temp folder.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The shared folder (a mirrored root).
    pub shared: PathBuf,
    /// The task folder.
    pub task: PathBuf,
}

#[allow(clippy::new_without_default)]
impl Fixture {
    /// Makes both folders in a fresh temp folder.
    pub fn new() -> Fixture {
        Fixture::in_temp(tempfile::tempdir().expect("temp folder"))
    }

    /// Makes both folders on tmpfs (`/dev/shm`) when there is one, else as [`Fixture::new`].
    pub fn on_tmpfs() -> Fixture {
        match tempfile::tempdir_in("/dev/shm") {
            Ok(dir) => Fixture::in_temp(dir),
            Err(_) => Fixture::new(),
        }
    }

    fn in_temp(dir: tempfile::TempDir) -> Fixture {
        let base = dir.path().canonicalize().expect("canonical temp folder");
        let shared = base.join("shared");
        let task = base.join("task");
        fs::create_dir(&shared).expect("shared folder");
        fs::create_dir(&task).expect("task folder");
        Fixture {
            _dir: dir,
            shared,
            task,
        }
    }

    /// Writes a file under the shared folder, creating parents.
    pub fn file(&self, rel: impl AsRef<Path>, content: &[u8]) -> PathBuf {
        let path = self.shared.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("parents");
        fs::write(&path, content).expect("write");
        path
    }

    /// A map of `(source, target)` entries, each source relative to the shared folder.
    pub fn map(&self, entries: &[(&str, &str)]) -> parvm_mirror_fs::MirrorMap {
        entries.iter().fold(
            parvm_mirror_fs::MirrorMap::new(),
            |map, (source, target)| {
                map.entry(self.src(source), target)
                    .expect("a valid map entry")
            },
        )
    }

    /// A path in the shared folder.
    pub fn src(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.shared.join(rel)
    }

    /// A path in the task folder.
    pub fn dst(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.task.join(rel)
    }
}

/// Moves a file's or folder's modification time, so an edit of the same size shows.
/// (Opened for reading: an owner sets the times of what it cannot write to, and of folders.)
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    fs::File::open(path)
        .expect("open")
        .set_modified(t)
        .expect("set the modification time");
}

/// Lists a folder recursively as sorted relative paths.
pub fn listing(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            out.push(path.strip_prefix(root).expect("prefix").to_path_buf());
            if entry.file_type().expect("type").is_dir() {
                walk(root, &path, out);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Sets the permission bits of a path.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}
