//! Integration tests of parvm-ship: one binary, one module per topic.

mod cache;
mod manifest;
mod model;
mod pieces;
mod scan;
mod snapshot;
mod unprivileged;

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parvm_ship::{Begin, CacheLimits, HostCache, Manifest, Scanner};

/// Limits no test reaches.
pub const ROOMY: CacheLimits = CacheLimits {
    max_bytes: 1 << 40,
    max_count: 1 << 20,
};

/// A local root holding a private per-user folder, as local storage makes it.
pub struct UserDir {
    _local: tempfile::TempDir,
    /// The per-user folder.
    pub path: PathBuf,
}

/// A fresh local root with its per-user folder.
pub fn user_dir() -> UserDir {
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("parvm-test");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .unwrap();
    UserDir {
        _local: local,
        path,
    }
}

/// A shared root and a scanner of `sources` beneath it.
pub fn scanner(root: &Path, sources: &[&str]) -> Scanner {
    Scanner::new(
        vec![root.to_path_buf()],
        0,
        sources.iter().map(|s| s.as_bytes().to_vec()).collect(),
    )
}

/// Fetches every blob the cache lacks straight from the scanner, as a worker would over
/// the transport; returns how many it wrote.
pub fn fetch_all(cache: &HostCache, scanner: &Scanner, manifest: &Manifest) -> usize {
    let mut wrote = 0;
    for (digest, size, shown_as) in cache.missing(manifest) {
        match cache.begin(digest, size, &shown_as).unwrap() {
            Begin::Mine(mut writer) => {
                // As a worker fetches: the blob takes its first file's mode and time.
                let node = manifest.find(&shown_as).unwrap();
                writer.keep_attrs(node.mode(), node.mtime());
                let mut source = scanner.open_blob(&digest).unwrap();
                let mut chunk = vec![0u8; 4096];
                loop {
                    let n = source.file.read(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    writer.write(&chunk[..n]).unwrap();
                }
                source.unchanged().unwrap();
                writer.finish().unwrap();
                wrote += 1;
            }
            Begin::Present => {}
            Begin::Busy => {
                cache.wait(&digest).unwrap();
            }
        }
    }
    wrote
}

/// Runs the test `child` (whose body reads the folder named by `PARVM_SHIP_FULL_DISK`)
/// in a private mount namespace with a tmpfs of `size` mounted there, and checks that it
/// printed `done`. Skipped, saying so, where this process cannot make one (not root, or a
/// container that refuses mount namespaces or tmpfs mounts).
pub fn on_a_small_tmpfs(child: &str, size: &str, done: &str) {
    let mount = tempfile::tempdir().unwrap();
    let probe = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "mount", "-t", "tmpfs"])
        .args(["-o", &format!("size={size}"), "none"])
        .arg(mount.path())
        .stderr(std::process::Stdio::null())
        .status();
    if !nix::unistd::geteuid().is_root() || !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED {child}: needs root and a tmpfs in a private mount namespace (`unshare -m`)"
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size},mode=0700 none '{}' && exec '{}' --exact {child} --nocapture --test-threads 1",
        mount.path().display(),
        exe.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("PARVM_SHIP_FULL_DISK", mount.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains(done), "{text}");
}

/// The files of fetches and builds under way (or left): in `tmp/` and among the claims
/// (`claims/` and its fan-out folders).
pub fn work_files(cache: &HostCache) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![cache.path().join("tmp"), cache.path().join("claims")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            match (path.is_dir(), folder.ends_with("claims")) {
                (true, true) => folders.push(path),
                _ => found.push(path),
            }
        }
    }
    found
}

/// Scans, fetches and snapshots in one go.
pub fn ship(cache: &HostCache, scanner: &mut Scanner) -> (Arc<Manifest>, parvm_ship::Snapshot) {
    let manifest = scanner.manifest().unwrap();
    fetch_all(cache, scanner, &manifest);
    let snapshot = cache.snapshot(&manifest).unwrap();
    (manifest, snapshot)
}

/// One entry of [`tree`]: relative path, kind (`d`, `f`, `l`), mode, time, content or target.
pub type TreeEntry = (PathBuf, char, u32, (i64, i64), Vec<u8>);

/// Every entry beneath `dir`: relative path, kind, permission bits, modification time
/// (symlinks' own), and content or target.
pub fn tree(dir: &Path) -> Vec<TreeEntry> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let time = (meta.mtime(), meta.mtime_nsec());
            let (kind, body) = if meta.file_type().is_symlink() {
                (
                    'l',
                    std::fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                ('d', Vec::new())
            } else {
                ('f', std::fs::read(&path).unwrap())
            };
            let mode = if kind == 'l' { 0 } else { meta.mode() & 0o7777 };
            out.push((rel, kind, mode, time, body));
        }
    }
    out.sort();
    out
}
