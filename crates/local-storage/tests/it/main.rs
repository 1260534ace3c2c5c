//! Integration tests of parvm-local-storage, on real temporary folders.

mod open;
mod race;
mod sweep;
mod take;
mod unprivileged;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parvm_local_storage::{FolderInfo, FolderState, LocalStorage, OWNER_FILE, OwnerMarker};

/// Host name used in every test, so markers can be made to match.
pub const HOST: &str = "testhost";

/// A local root in a fresh temp folder, and storage opened on it with no grace period.
pub fn storage() -> (tempfile::TempDir, LocalStorage) {
    let root = tempfile::tempdir().expect("temp dir");
    let storage = LocalStorage::options()
        .host(HOST)
        .grace(Duration::ZERO)
        .open(root.path())
        .expect("open storage");
    (root, storage)
}

/// Makes folder `name` in the per-user folder with `marker` as its owner marker (or none).
pub fn fake_folder(storage: &LocalStorage, name: &str, marker: Option<&OwnerMarker>) -> PathBuf {
    let path = storage.path().join(name);
    fs::create_dir(&path).expect("make fake folder");
    fs::write(path.join("data"), b"0123456789").expect("write data");
    if let Some(marker) = marker {
        let json = serde_json::to_vec(marker).expect("marker json");
        fs::write(path.join(OWNER_FILE), json).expect("write marker");
    }
    path
}

/// The pid of a process that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

/// The boot id of the running kernel.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_owned()
}

/// The tag a trash or staging folder name carries for process `pid` started at
/// `start_time` during this boot: `<pid hex>.<start time hex>.<boot id prefix>`.
pub fn name_tag(pid: u32, start_time: u64) -> String {
    format!("{pid:x}.{start_time:x}.{}", &boot_id()[..8])
}

/// The start time (clock ticks after boot) of a live process `pid`.
pub fn start_time_of(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 1..]
        .split_whitespace()
        .collect();
    fields[19].parse().expect("start time")
}

/// The state `list` reports for the entry called `name`.
pub fn state_of(storage: &LocalStorage, name: &str) -> Option<FolderState> {
    info_of(storage, name).map(|info| info.state)
}

/// What `list` reports for the entry called `name`.
pub fn info_of(storage: &LocalStorage, name: &str) -> Option<FolderInfo> {
    storage
        .list()
        .expect("list")
        .into_iter()
        .find(|info| info.name == name)
}

/// Names in a report section.
pub fn names(infos: &[FolderInfo]) -> Vec<&str> {
    infos.iter().map(|info| info.name.as_str()).collect()
}

/// Whether `path` exists without following a final symlink.
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
