//! What comes back from a task besides its value: returned files and captured command
//! output, on every backend.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use parvm_vm::{Error, ExitStatus, Message, Spawn, TaskId, Vm};

use crate::harness::{Backend, DEADLINE, Harness};
use crate::tasks::{ReturnFile, file_content};

suite!(
    files_come_back_with_content_mode_and_mtime,
    many_small_files_come_back,
    each_task_of_a_count_gets_its_own_folder,
    a_symlink_in_the_task_folder_is_refused_by_name_not_followed,
    a_missing_literal_fails_the_task_naming_it,
    a_file_that_changes_while_sent_is_sent_again_then_refused,
);

// Output is captured from worker processes (local, TCP, MPI); in-process workers of the
// memory backend print to the process's own stdout.
mod capture {
    process_suite!(
        captured_output_arrives_before_the_exit,
        captured_output_past_the_memory_bound_spills_and_arrives_whole,
        a_command_knows_its_task_id_and_slot,
    );
}

/// Everything a task's messages said, in order.
struct Seen {
    /// Message kinds in the order they arrived: `result`, `captured`, `returned`, `exit`.
    order: Vec<&'static str>,
    result: Option<Result<(), String>>,
    exit: Option<ExitStatus>,
    returned: Option<(Vec<PathBuf>, u64)>,
    captured: Option<(parvm_vm::Captured, parvm_vm::Captured)>,
}

/// Receives the messages of `task` until its exit.
fn follow(vm: &Vm, task: TaskId) -> Seen {
    follow_all(vm, &[task]).remove(&task).expect("followed")
}

/// Receives the messages of `tasks` until each has exited.
fn follow_all(vm: &Vm, tasks: &[TaskId]) -> HashMap<TaskId, Seen> {
    let deadline = Instant::now() + DEADLINE * 4;
    let mut all: HashMap<TaskId, Seen> = tasks
        .iter()
        .map(|&task| {
            let seen = Seen {
                order: Vec::new(),
                result: None,
                exit: None,
                returned: None,
                captured: None,
            };
            (task, seen)
        })
        .collect();
    while all.values().any(|seen| seen.exit.is_none()) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("the tasks did not exit within the deadline");
        let Some(message) = vm.recv_timeout(left).expect("recv") else {
            continue;
        };
        match message {
            Message::TaskResult { task, outcome } if all.contains_key(&task) => {
                let seen = all.get_mut(&task).unwrap();
                seen.order.push("result");
                seen.result = Some(outcome.map(drop).map_err(|f| f.message));
            }
            Message::Returned { task, files, bytes } if all.contains_key(&task) => {
                let seen = all.get_mut(&task).unwrap();
                seen.order.push("returned");
                seen.returned = Some((files, bytes));
            }
            Message::Captured {
                task,
                stdout,
                stderr,
            } if all.contains_key(&task) => {
                let seen = all.get_mut(&task).unwrap();
                seen.order.push("captured");
                seen.captured = Some((stdout, stderr));
            }
            Message::TaskExit { task, status } if all.contains_key(&task) => {
                let seen = all.get_mut(&task).unwrap();
                seen.order.push("exit");
                seen.exit = Some(status);
            }
            _ => {}
        }
    }
    all
}

fn folder_vm(h: &Harness) -> Vm {
    h.runtime().vm().local_folder(true).build().expect("vm")
}

fn spawn_one(vm: &Vm, spawn: Spawn) -> TaskId {
    let ids = vm.spawn(spawn).expect("spawn");
    assert_eq!(ids.len(), 1, "one slot is free");
    ids[0]
}

fn failed_reason(seen: &Seen) -> &str {
    match &seen.exit {
        Some(ExitStatus::Failed { reason }) => reason,
        other => panic!("the task did not fail: {other:?}"),
    }
}

/// Asserts that `dir/path` holds what the `write_files` task wrote.
fn assert_file(dir: &Path, (path, size, mode, mtime): &ReturnFile) {
    let full = dir.join(path);
    let meta = std::fs::symlink_metadata(&full)
        .unwrap_or_else(|e| panic!("`{}` did not come back: {e}", full.display()));
    assert!(meta.is_file(), "{path}");
    assert_eq!(meta.len(), *size, "{path}");
    assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
    assert_eq!(meta.mtime(), *mtime, "{path}");
    assert!(
        std::fs::read(&full).unwrap() == file_content(path, *size),
        "{path}: the content differs"
    );
}

/// Every path beneath `dir`, relative and sorted (folders included).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir.join(rel)) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = rel.join(entry.file_name());
            out.push(path.display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(dir, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out);
    out.sort();
    out
}

fn files_come_back_with_content_mode_and_mtime(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let files: Vec<ReturnFile> = vec![
        ("a.txt".into(), 10, 0o644, 1_000_000_000),
        ("empty.txt".into(), 0, 0o600, 1_100_000_000),
        ("out/deep/er/r.dat".into(), 300_000, 0o755, 1_200_000_000),
        ("out/x.log".into(), 5, 0o444, 1_300_000_000),
        ("skip.bin".into(), 3, 0o644, 1_400_000_000),
    ];
    let task = spawn_one(
        &vm,
        Spawn::task("write_files", &files)
            .returning("*.txt")
            .returning("out")
            .returning("a.txt")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    assert_eq!(seen.order, ["result", "returned", "exit"]);
    let (names, bytes) = seen.returned.unwrap();
    let want: Vec<PathBuf> = ["a.txt", "empty.txt", "out/deep/er/r.dat", "out/x.log"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(names, want, "each file once, sorted");
    assert_eq!(bytes, 300_015);
    for file in &files[..4] {
        assert_file(results.path(), file);
    }
    assert_eq!(
        listing(results.path()),
        [
            "a.txt",
            "empty.txt",
            "out",
            "out/deep",
            "out/deep/er",
            "out/deep/er/r.dat",
            "out/x.log"
        ],
        "nothing else, no temporary file left"
    );
}

fn many_small_files_come_back(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let files: Vec<ReturnFile> = (0..2000)
        .map(|i| {
            (
                format!("out/{:02}/f{i:04}.dat", i % 20),
                4096,
                0o640,
                1_500_000_000 + i,
            )
        })
        .collect();
    let task = spawn_one(
        &vm,
        Spawn::task("write_files", &files)
            .returning("out/*/*.dat")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    let (names, bytes) = seen.returned.unwrap();
    assert_eq!((names.len(), bytes), (2000, 2000 * 4096));
    for file in &files {
        assert_file(results.path(), file);
    }
}

fn each_task_of_a_count_gets_its_own_folder(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let files: Vec<ReturnFile> = vec![("r.txt".into(), 100, 0o644, 1_000_000_000)];
    let ids = vm
        .spawn(
            Spawn::task("write_files", &files)
                .count(2)
                .returning("r.txt")
                .results_dir(results.path()),
        )
        .unwrap();
    assert_eq!(ids.len(), 2);
    let all = follow_all(&vm, &ids);
    for id in ids {
        let seen = &all[&id];
        assert_eq!(seen.exit, Some(ExitStatus::Completed));
        assert_file(
            &results.path().join(format!("{}.{}", id.slot, id.number)),
            &files[0],
        );
    }
}

fn a_symlink_in_the_task_folder_is_refused_by_name_not_followed(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret"), "do not return").unwrap();
    let link = "out/link.txt".to_owned();
    let task = spawn_one(
        &vm,
        Spawn::task(
            "plant_symlink",
            &(link, secret.path().join("secret").display().to_string()),
        )
        .returning("out/*.txt")
        .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    let reason = failed_reason(&seen);
    assert!(
        reason.contains("link.txt") && reason.contains("symlink"),
        "{reason}"
    );
    assert_eq!(seen.result, Some(Ok(())), "the task itself ran");
    assert_eq!(seen.returned.unwrap().0, Vec::<PathBuf>::new());
    assert_eq!(listing(results.path()), Vec::<String>::new());
}

fn a_missing_literal_fails_the_task_naming_it(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let files: Vec<ReturnFile> = vec![("there.txt".into(), 10, 0o644, 1_000_000_000)];
    let task = spawn_one(
        &vm,
        Spawn::task("write_files", &files)
            .returning("nothing*.txt")
            .returning("there.txt")
            .returning("out/result.csv")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    let reason = failed_reason(&seen);
    assert!(reason.contains("`out/result.csv`"), "{reason}");
    assert!(
        !reason.contains("nothing*"),
        "a glob may match nothing: {reason}"
    );
    // The worker found the problem before sending anything.
    assert_eq!(listing(results.path()), Vec::<String>::new());
}

fn a_file_that_changes_while_sent_is_sent_again_then_refused(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let once: Vec<ReturnFile> = vec![("changing-once.dat".into(), 200_000, 0o644, 1_000_000_000)];
    let task = spawn_one(
        &vm,
        Spawn::task("changing", &once)
            .returning("*.dat")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    // Sent again after the change: the copy is the file as it was after it.
    let mut want = file_content("changing-once.dat", 200_000);
    want.push(b'+');
    assert!(std::fs::read(results.path().join("changing-once.dat")).unwrap() == want);
    assert_eq!(listing(results.path()), ["changing-once.dat"]);

    let always: Vec<ReturnFile> = vec![
        ("a-steady.dat".into(), 1000, 0o644, 1_000_000_000),
        ("changing-always.dat".into(), 100_000, 0o644, 1_000_000_000),
    ];
    let results = tempfile::tempdir().unwrap();
    let task = spawn_one(
        &vm,
        Spawn::task("changing", &always)
            .returning("*.dat")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    let reason = failed_reason(&seen);
    assert!(
        reason.contains("changing-always.dat") && reason.contains("changed while it was sent"),
        "{reason}"
    );
    assert_eq!(
        listing(results.path()),
        ["a-steady.dat"],
        "the steady file came back, no partial copy of the other"
    );
}

fn captured_output_arrives_before_the_exit(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let task = spawn_one(
        &vm,
        Spawn::command("sh")
            .arg("-c")
            .arg("echo one; echo two; echo oops >&2; echo three")
            .capture(true),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    assert_eq!(seen.order, ["result", "captured", "exit"]);
    let (stdout, stderr) = seen.captured.unwrap();
    assert_eq!(stdout.bytes(), Some(&b"one\ntwo\nthree\n"[..]));
    assert_eq!(stdout.len(), 14);
    assert_eq!(stdout.path(), None);
    assert_eq!(stderr.read_to_vec().unwrap(), b"oops\n");
}

fn a_command_knows_its_task_id_and_slot(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let script = format!(
        "echo \"${}\"; echo \"${}\"",
        parvm_vm::TASK_ID_VAR,
        parvm_vm::TASK_SLOT_VAR
    );
    let task = spawn_one(
        &vm,
        Spawn::command("sh").arg("-c").arg(script).capture(true),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    let (stdout, _) = seen.captured.unwrap();
    let want = format!("{task}\n{}\n", task.slot);
    assert_eq!(stdout.bytes(), Some(want.as_bytes()));
}

fn captured_output_past_the_memory_bound_spills_and_arrives_whole(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let results = tempfile::tempdir().unwrap();
    // 3 MiB of numbered lines on stdout, a little on stderr.
    let script =
        "i=0; while [ $i -lt 300000 ]; do echo \"line $i......\"; i=$((i+1)); done; echo small >&2";
    let task = spawn_one(
        &vm,
        Spawn::command("sh")
            .arg("-c")
            .arg(script)
            .capture(true)
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    assert_eq!(seen.exit, Some(ExitStatus::Completed));
    let (stdout, stderr) = seen.captured.unwrap();
    let want: String = (0..300_000).map(|i| format!("line {i}......\n")).collect();
    assert_eq!(stdout.bytes(), None, "spilled");
    assert_eq!(stdout.path(), Some(results.path().join("stdout").as_path()));
    assert_eq!(stdout.len(), want.len() as u64);
    assert!(
        stdout.read_to_vec().unwrap() == want.as_bytes(),
        "delivered whole"
    );
    assert_eq!(stderr.bytes(), Some(&b"small\n"[..]));

    // Without a results folder, the spill goes to local storage and leaves with the value.
    let task = spawn_one(
        &vm,
        Spawn::command("sh").arg("-c").arg(script).capture(true),
    );
    let seen = follow(&vm, task);
    let (stdout, _) = seen.captured.unwrap();
    let path = stdout.path().expect("spilled").to_owned();
    assert!(path.starts_with(h.local.path()), "{}", path.display());
    assert!(stdout.read_to_vec().unwrap() == want.as_bytes());
    drop(stdout);
    assert!(
        !path.exists(),
        "the temporary spill is removed with its value"
    );
}

#[test]
fn patterns_that_escape_and_spawns_without_a_results_folder_are_refused_before_sending() {
    let h = Harness::start(Backend::Memory, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    for pattern in ["../up.txt", "/etc/passwd", "out/../../x", ""] {
        let err = vm
            .spawn(
                Spawn::task("noop", &())
                    .returning(pattern)
                    .results_dir(results.path()),
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::ReturnPattern { pattern: p, .. } if p == pattern),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("`{pattern}`")), "{err}");
    }
    let err = vm
        .spawn(Spawn::task("noop", &()).returning("*.txt"))
        .unwrap_err();
    assert!(matches!(err, Error::ReturnWithoutResults { .. }), "{err}");
    assert!(err.to_string().contains("results_dir"), "{err}");
    let plain = h.vm();
    let err = plain
        .spawn(
            Spawn::task("noop", &())
                .returning("*.txt")
                .results_dir(results.path()),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ReturnWithoutFolder { .. }), "{err}");
    // Nothing was sent: the slot is still free.
    assert_eq!(vm.free_slots(), 1);
}

/// A small file system mounted for a test, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// A 1 MiB tmpfs, or `None` (with the reason printed) when this process may not mount.
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "parvm-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::piped())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(SmallDisk(dir)),
            Ok(out) => {
                eprintln!(
                    "SKIPPING the full-disk test: cannot mount a small tmpfs ({}); run the tests as root",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPING the full-disk test: cannot run `mount`: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_results_disk_fails_the_task_naming_the_file_and_leaves_no_partial_file() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    for backend in [Backend::Memory, Backend::Local] {
        let h = Harness::start(backend, 1);
        let vm = folder_vm(&h);
        let results = disk.path().join(format!("{backend:?}"));
        let files: Vec<ReturnFile> = vec![
            ("a-small.txt".into(), 1000, 0o644, 1_000_000_000),
            ("big.dat".into(), 16 << 20, 0o644, 1_000_000_000),
        ];
        let task = spawn_one(
            &vm,
            Spawn::task("write_files", &files)
                .returning("*")
                .results_dir(&results),
        );
        let seen = follow(&vm, task);
        let reason = failed_reason(&seen);
        assert!(
            reason.contains(&results.join("big.dat").display().to_string())
                && reason.contains("No space left"),
            "{backend:?}: {reason}"
        );
        assert_eq!(
            listing(&results),
            ["a-small.txt"],
            "{backend:?}: no partial file"
        );
        assert_file(&results, &files[0]);
    }
}

/// Kills and reaps a spawner process when dropped (its workers follow it).
struct SpawnerGuard(std::process::Child);

impl Drop for SpawnerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The spawner's peak memory (kB) while `count` files of `size` bytes come back to it,
/// run as its own process on the local backend (the test program's `returns` scenario).
fn spawner_peak_kb(count: u64, size: u64) -> u64 {
    let local = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let into = results.path().join("r");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
        .args(["returns", &into.display().to_string()])
        .args([count.to_string(), size.to_string()])
        .env("PARALLEL_LOCAL_STORAGE", local.path())
        .env("PARALLEL_MIRRORED_STORAGE", local.path())
        .env("PARVM_WORKERS", "1")
        .env_remove("PARVM_TRANSPORT")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = SpawnerGuard(child);
    let mut stdout = String::new();
    std::io::Read::read_to_string(guard.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "the spawner failed: {status}\n{stdout}");
    let returned: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RETURNED "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no RETURNED line in {stdout}"));
    assert_eq!(returned, count * size);
    let mut names = std::fs::read_dir(into.join("out")).unwrap().count() as u64;
    if count == 1 {
        let file = into.join("out/f00000.dat");
        assert!(std::fs::read(&file).unwrap() == file_content("out/f00000.dat", size));
        names = 1;
    }
    assert_eq!(names, count);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("HWM "))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no HWM line in {stdout}"))
}

/// The spawner may grow to this while files come back, whatever their size.
const MAX_SPAWNER_KB: u64 = 48 * 1024;

#[test]
fn a_big_file_and_many_small_ones_come_back_with_the_spawner_memory_bounded() {
    let big = spawner_peak_kb(1, 64 << 20);
    assert!(
        big < MAX_SPAWNER_KB,
        "the spawner grew to {big} kB receiving one 64 MiB file"
    );
    let many = spawner_peak_kb(2000, 4096);
    assert!(
        many < MAX_SPAWNER_KB,
        "the spawner grew to {many} kB receiving 2000 files of 4 KiB"
    );
    eprintln!("spawner peak: {big} kB (1 x 64 MiB), {many} kB (2000 x 4 KiB)");
}

#[test]
fn a_worker_lost_while_returning_leaves_no_partial_file() {
    let h = Harness::start(Backend::Local, 1);
    let vm = folder_vm(&h);
    let results = tempfile::tempdir().unwrap();
    let files: Vec<ReturnFile> = vec![
        ("a-first.dat".into(), 70_000, 0o644, 1_000_000_000),
        ("die-after-read.dat".into(), 600_000, 0o644, 1_000_000_000),
    ];
    let task = spawn_one(
        &vm,
        Spawn::task("changing", &files)
            .returning("*.dat")
            .results_dir(results.path()),
    );
    let seen = follow(&vm, task);
    let reason = failed_reason(&seen);
    assert!(reason.contains("died while running the task"), "{reason}");
    assert_eq!(seen.returned, None, "nothing is announced for a lost task");
    assert_eq!(
        listing(results.path()),
        ["a-first.dat"],
        "the complete file stays, the cut-off one is removed"
    );
    assert_file(results.path(), &files[0]);
}
