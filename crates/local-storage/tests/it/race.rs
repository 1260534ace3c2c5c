//! Racing takers and sweepers, in threads and in separate processes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;

use parvm_local_storage::{FolderState, LocalStorage, OwnerMarker, Persistence, TaskFolder};

use crate::{HOST, boot_id, dead_pid, exists, fake_folder, state_of, storage};

#[test]
fn concurrent_takers_get_distinct_folders_while_sweepers_run() {
    let (root, _storage) = storage();
    let barrier = Barrier::new(8);
    // Folders come back to this thread so all 160 are held at once when compared:
    // a name may be used again once its folder is removed.
    let folders: Vec<TaskFolder> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (barrier, root) = (&barrier, root.path());
                scope.spawn(move || {
                    let storage = LocalStorage::options().host(HOST).open(root).unwrap();
                    barrier.wait();
                    let mut mine = Vec::new();
                    for _ in 0..20 {
                        if i % 4 == 0 {
                            storage.sweep().unwrap();
                            storage.clear(false).unwrap();
                        }
                        mine.push(storage.take(0, Persistence::Temporary).unwrap());
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<_> = folders.iter().map(|f| f.path()).collect();
    assert_eq!(unique.len(), folders.len(), "no folder handed out twice");
    assert!(
        folders
            .iter()
            .all(|f| f.path().join(".parvm-owner").exists()),
        "held folders survive"
    );
}

#[test]
fn concurrent_sweepers_remove_each_stale_folder_once() {
    let (root, storage) = storage();
    let dead = OwnerMarker::new(dead_pid(), Some(boot_id()), None, HOST);
    for i in 0..100 {
        fake_folder(&storage, &format!("dead_vm{i:x}"), Some(&dead));
    }
    let barrier = Barrier::new(4);
    let removed: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (barrier, root) = (&barrier, root.path());
                scope.spawn(move || {
                    let storage = LocalStorage::options().host(HOST).open(root).unwrap();
                    barrier.wait();
                    let report = storage.sweep().unwrap();
                    assert!(report.failed.is_empty(), "{:?}", report.failed);
                    report.removed.len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(removed, 100);
    assert!(storage.list().unwrap().is_empty());
}

const CHILD_ROOT: &str = "PARVM_LOCAL_STORAGE_TEST_CHILD_ROOT";

/// Not a test on its own: when started by `a_folder_held_by_another_process_*` with
/// the variable set, it takes a folder, prints its path and holds it until stdin closes.
#[test]
fn child_holds_a_folder() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let storage = LocalStorage::options()
        .host(HOST)
        .open(root.as_ref())
        .unwrap();
    let folder = storage.take(7, Persistence::Temporary).unwrap();
    println!("HELD={}", folder.path().display());
    let _ = std::io::stdin().lines().count();
}

/// Kills and reaps the child on drop, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_folder_held_by_another_process_is_in_use_until_that_process_dies() {
    let (root, storage) = storage();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "race::child_holds_a_folder",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let held = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // The harness prints `test <name> ... ` on the same line before our output.
        .find_map(|line| {
            line.split_once("HELD=")
                .map(|(_, path)| PathBuf::from(path))
        })
        .expect("child reports its folder");
    let name = held.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(state_of(&storage, &name), Some(FolderState::InUse));
    assert!(storage.sweep().unwrap().removed.is_empty());
    assert!(storage.clear(false).unwrap().removed.is_empty());
    assert!(held.exists());

    // SIGKILL: the child cannot release, as after a crash; the folder stays, stale.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let info = crate::info_of(&storage, &name).unwrap();
    assert_eq!(info.state, FolderState::Stale, "{}", info.detail);
    assert_eq!(storage.sweep().unwrap().removed.len(), 1);
    assert!(!exists(&held));
}

const SWEEP_ROOT: &str = "PARVM_LOCAL_STORAGE_TEST_SWEEP_ROOT";

/// Not a test on its own: when started by `two_processes_*` with the variable set, it
/// waits for a line on stdin, sweeps, and prints how many folders it removed.
#[test]
fn child_sweeps() {
    let Some(root) = std::env::var_os(SWEEP_ROOT) else {
        return;
    };
    let storage = LocalStorage::options()
        .host(HOST)
        .open(root.as_ref())
        .unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let report = storage.sweep().unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    println!("REMOVED={}", report.removed.len());
}

#[test]
fn two_processes_sweeping_together_remove_each_stale_folder_once() {
    use std::io::{Read, Write};
    let (root, storage) = storage();
    let dead = OwnerMarker::new(dead_pid(), Some(boot_id()), None, HOST);
    for i in 0..200 {
        fake_folder(&storage, &format!("dead_vm{i:x}"), Some(&dead));
    }
    let mut children: Vec<ChildGuard> = (0..2)
        .map(|_| {
            let child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "race::child_sweeps",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(SWEEP_ROOT, root.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            ChildGuard(child)
        })
        .collect();
    for child in &mut children {
        child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let report = storage.sweep().unwrap();
    // A sweeper that looked a folder up just before another moved it to the trash makes
    // its lock file in the trash: the remover lists it again instead of failing.
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut removed: usize = report.removed.len();
    for child in &mut children {
        // Read all of it: closing the pipe early would fail the child's last prints.
        let mut output = String::new();
        child
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        let count = output
            .lines()
            .find_map(|line| {
                line.split_once("REMOVED=")
                    .and_then(|(_, n)| n.trim().parse::<usize>().ok())
            })
            .expect("child reports its count");
        removed += count;
        assert!(child.0.wait().unwrap().success());
    }
    let left = storage.list().unwrap();
    assert_eq!(removed, 200, "left: {left:?}");
    assert!(left.is_empty());
}
