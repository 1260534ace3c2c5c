//! Listing, sweeping and clearing: what is stale, what is never touched.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use parvm_local_storage::{FolderState, LocalStorage, OwnerMarker, Persistence};

use crate::{
    HOST, boot_id, dead_pid, exists, fake_folder, name_tag, names, start_time_of, state_of, storage,
};

fn me() -> OwnerMarker {
    OwnerMarker::current(HOST)
}

#[test]
fn stale_by_dead_pid_other_boot_and_pid_reuse_are_swept() {
    let (_root, storage) = storage();
    let me = me();
    let other_boot = "00000000-1111-2222-3333-444444444444".to_owned();
    let rows = [
        (
            "dead_vm0",
            OwnerMarker::new(dead_pid(), Some(boot_id()), Some(1), HOST),
            "gone",
        ),
        (
            "boot_vm0",
            OwnerMarker::new(me.pid, Some(other_boot), me.start_time, HOST),
            "boot",
        ),
        (
            "reuse_vm0",
            OwnerMarker::new(
                me.pid,
                Some(boot_id()),
                Some(me.start_time.unwrap() + 7),
                HOST,
            ),
            "reused",
        ),
    ];
    for (name, marker, why) in &rows {
        fake_folder(&storage, name, Some(marker));
        let info = crate::info_of(&storage, name).unwrap();
        assert_eq!(info.state, FolderState::Stale, "{name}: {}", info.detail);
        assert!(info.detail.contains(why), "{name}: {}", info.detail);
        assert_eq!(info.owner.as_ref(), Some(marker));
        assert_eq!(
            info.size,
            10 + fs::metadata(info.path.join(".parvm-owner")).unwrap().len()
        );
    }
    let report = storage.sweep().unwrap();
    assert_eq!(
        names(&report.removed),
        ["boot_vm0", "dead_vm0", "reuse_vm0"]
    );
    assert!(report.failed.is_empty());
    assert!(report.bytes_freed > 30);
    assert!(storage.list().unwrap().is_empty());
}

#[test]
fn in_use_folders_survive_sweep_and_clear_without_force() {
    let (_root, storage) = storage();
    let temporary = storage.take(0, Persistence::Temporary).unwrap();
    let persistent = storage.take(1, Persistence::Persistent).unwrap();
    for report in [storage.sweep().unwrap(), storage.clear(false).unwrap()] {
        assert!(report.removed.is_empty());
        assert_eq!(report.kept.len(), 2);
        assert!(
            report
                .kept
                .iter()
                .all(|info| info.state == FolderState::InUse)
        );
    }
    assert!(temporary.path().exists() && persistent.path().exists());
}

#[test]
fn clear_with_force_removes_folders_in_use() {
    let (_root, storage) = storage();
    let folder = storage.take(0, Persistence::Temporary).unwrap();
    let report = storage.clear(true).unwrap();
    assert_eq!(names(&report.removed), [folder.name()]);
    assert!(!exists(folder.path()));
    folder
        .release()
        .expect("releasing a folder removed behind our back is fine");
}

#[test]
fn idle_folders_are_cleared_but_not_swept() {
    let (_root, storage) = storage();
    fake_folder(&storage, "idle_vm0", Some(&me()));
    assert_eq!(state_of(&storage, "idle_vm0"), Some(FolderState::Idle));
    assert!(storage.sweep().unwrap().removed.is_empty());
    assert_eq!(names(&storage.clear(false).unwrap().removed), ["idle_vm0"]);
}

#[test]
fn folders_of_another_user_are_never_removed() {
    let (_root, storage) = storage();
    let dead = OwnerMarker::new(dead_pid(), Some(boot_id()), None, HOST);
    let path = fake_folder(&storage, "theirs_vm0", Some(&dead));
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    assert_eq!(state_of(&storage, "theirs_vm0"), Some(FolderState::Foreign));
    for report in [
        storage.sweep().unwrap(),
        storage.clear(false).unwrap(),
        storage.clear(true).unwrap(),
    ] {
        assert!(report.removed.is_empty());
        assert_eq!(report.kept[0].state, FolderState::Foreign);
    }
    assert!(path.join("data").exists());
}

#[test]
fn sweep_and_size_never_follow_a_symlink_to_an_outside_folder() {
    let (root, storage) = storage();
    let outside = root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), vec![1u8; 4096]).unwrap();
    let dead = OwnerMarker::new(dead_pid(), Some(boot_id()), None, HOST);
    let path = fake_folder(&storage, "dead_vm1", Some(&dead));
    symlink(&outside, path.join("link")).unwrap();
    let info = crate::info_of(&storage, "dead_vm1").unwrap();
    assert!(info.size < 4096, "size followed the link: {}", info.size);
    assert_eq!(names(&storage.sweep().unwrap().removed), ["dead_vm1"]);
    assert_eq!(fs::read(outside.join("precious")).unwrap().len(), 4096);
}

#[test]
fn unknown_folders_wait_for_the_grace_period() {
    let root = tempfile::tempdir().unwrap();
    let patient = LocalStorage::options()
        .host(HOST)
        .grace(Duration::from_secs(3600))
        .open(root.path())
        .unwrap();
    fake_folder(&patient, "nomarker_vm0", None);
    let garbled = fake_folder(&patient, "garbled_vm0", None);
    fs::write(garbled.join(".parvm-owner"), b"{{{").unwrap();
    fs::write(patient.path().join("stray-file"), b"").unwrap();
    for name in ["nomarker_vm0", "garbled_vm0", "stray-file"] {
        assert_eq!(
            state_of(&patient, name),
            Some(FolderState::Unknown),
            "{name}"
        );
    }
    assert!(
        patient.sweep().unwrap().removed.is_empty(),
        "young unknown folders may be being made"
    );
    assert!(patient.clear(false).unwrap().removed.is_empty());
    let eager = LocalStorage::options()
        .host(HOST)
        .grace(Duration::ZERO)
        .open(root.path())
        .unwrap();
    assert_eq!(eager.sweep().unwrap().removed.len(), 3);
}

#[test]
fn the_host_cache_is_neither_listed_nor_swept_nor_cleared() {
    let root = tempfile::tempdir().unwrap();
    let eager = LocalStorage::options()
        .host(HOST)
        .grace(Duration::ZERO)
        .open(root.path())
        .unwrap();
    let cache = eager.path().join(parvm_local_storage::CACHE_DIR);
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join("blob"), b"kept").unwrap();
    fake_folder(&eager, "nomarker_vm0", None);
    assert_eq!(state_of(&eager, "nomarker_vm0"), Some(FolderState::Unknown));
    assert_eq!(state_of(&eager, "cache"), None, "the cache is not listed");
    assert_eq!(names(&eager.sweep().unwrap().removed), ["nomarker_vm0"]);
    assert!(eager.clear(true).unwrap().removed.is_empty());
    assert_eq!(fs::read(cache.join("blob")).unwrap(), b"kept");
}

/// A child process that lives until dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("spawn sleep"),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn trash_and_staging_folders_are_judged_by_pid_and_start_time() {
    let (_root, storage) = storage();
    let me = me();
    let my_start = me.start_time.expect("own start time");
    let sleeper = Sleeper::start();
    let child_start = start_time_of(sleeper.0.id());
    let other_boot = format!("{:x}.{my_start:x}.00000000", me.pid);
    // (name, state, words in the detail)
    let rows = [
        // Their remover or maker really lives: this process, or a child.
        (
            format!(".parvm-trash-{}-2-3-mine_vm0", name_tag(me.pid, my_start)),
            FolderState::InUse,
            "being removed by process",
        ),
        (
            format!(".parvm-new-{}-4-5", name_tag(sleeper.0.id(), child_start)),
            FolderState::InUse,
            "being made by process",
        ),
        // The pid lives, but it is another process now: the name's start time differs.
        (
            format!(
                ".parvm-trash-{}-2-3-reused_vm0",
                name_tag(me.pid, my_start + 7)
            ),
            FolderState::Trash,
            "pid was reused",
        ),
        (
            format!(
                ".parvm-new-{}-4-6",
                name_tag(sleeper.0.id(), child_start + 1)
            ),
            FolderState::Trash,
            "pid was reused",
        ),
        // The same pid and start time during another boot.
        (
            format!(".parvm-trash-{other_boot}-2-3-boot_vm0"),
            FolderState::Trash,
            "boot",
        ),
        // The process is gone.
        (
            format!(".parvm-trash-{}-2-3-dead_vm0", name_tag(dead_pid(), 1)),
            FolderState::Trash,
            "gone",
        ),
        (
            format!(".parvm-new-{}-4-7", name_tag(dead_pid(), 1)),
            FolderState::Trash,
            "interrupted creation",
        ),
    ];
    for (name, _, _) in &rows {
        fake_folder(&storage, name, None);
    }
    for (name, state, words) in &rows {
        let info = crate::info_of(&storage, name).unwrap();
        assert_eq!(info.state, *state, "{name}: {}", info.detail);
        assert!(info.detail.contains(words), "{name}: {}", info.detail);
    }
    let mut swept: Vec<String> = names(&storage.sweep().unwrap().removed)
        .into_iter()
        .map(str::to_owned)
        .collect();
    swept.sort();
    let mut expected: Vec<String> = rows
        .iter()
        .filter(|row| row.1 == FolderState::Trash)
        .map(|row| row.0.clone())
        .collect();
    expected.sort();
    assert_eq!(swept, expected);
    assert!(
        storage.clear(false).unwrap().removed.is_empty(),
        "live ones stay"
    );
    drop(sleeper);
    assert_eq!(
        storage.sweep().unwrap().removed.len(),
        1,
        "its maker is gone now"
    );
}

#[test]
fn a_name_without_start_time_is_trusted_only_for_the_grace_period() {
    // Names made before they carried a start time hold the pid alone: a live pid may be
    // any process, so it keeps the folder no longer than an unknown folder is spared.
    let root = tempfile::tempdir().unwrap();
    let patient = LocalStorage::options()
        .host(HOST)
        .grace(Duration::from_secs(3600))
        .open(root.path())
        .unwrap();
    let live = format!(".parvm-trash-{:x}-2-3-live_vm0", std::process::id());
    let dead = format!(".parvm-new-{:x}-4-5", dead_pid());
    fake_folder(&patient, &live, None);
    fake_folder(&patient, &dead, None);
    assert_eq!(state_of(&patient, &live), Some(FolderState::InUse));
    assert_eq!(names(&patient.sweep().unwrap().removed), [dead.as_str()]);
    let eager = LocalStorage::options()
        .host(HOST)
        .grace(Duration::ZERO)
        .open(root.path())
        .unwrap();
    let info = crate::info_of(&eager, &live).unwrap();
    assert_eq!(info.state, FolderState::Trash, "{}", info.detail);
    assert!(info.detail.contains("cannot tell"), "{}", info.detail);
    assert_eq!(names(&eager.sweep().unwrap().removed), [live.as_str()]);
}

#[test]
fn an_entry_with_a_very_long_name_is_swept() {
    // Its trash name must still fit in a file name.
    let (_root, storage) = storage();
    let name = "é".repeat(120) + "_vm0";
    fake_folder(&storage, &name, None);
    let report = storage.sweep().unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(names(&report.removed), [name.as_str()]);
    assert!(storage.list().unwrap().is_empty());
}

#[test]
fn a_folder_left_halfway_made_is_swept_at_once_unless_its_maker_lives() {
    // The default grace period: an unmarked folder under a task-folder name would be
    // spared for ten minutes, a staging folder of a dead maker is not.
    let (_root, storage) = storage();
    let me = me();
    let leftover = format!(".parvm-new-{}-4-5", name_tag(dead_pid(), 1));
    let in_progress = format!(
        ".parvm-new-{}-4-5",
        name_tag(me.pid, me.start_time.unwrap())
    );
    fake_folder(&storage, &leftover, None);
    fake_folder(&storage, &in_progress, None);
    let listed = storage.list().unwrap();
    let detail = |name: &str| {
        let info = listed.iter().find(|info| info.name == name).unwrap();
        (info.state, info.detail.clone())
    };
    assert_eq!(detail(&leftover).0, FolderState::Trash);
    assert!(
        detail(&leftover)
            .1
            .starts_with("left over from an interrupted creation")
    );
    assert_eq!(
        detail(&in_progress).0,
        FolderState::InUse,
        "its maker lives"
    );
    assert!(detail(&in_progress).1.contains("being made by process"));
    assert_eq!(
        names(&storage.sweep().unwrap().removed),
        [leftover.as_str()]
    );
    assert!(storage.clear(false).unwrap().removed.is_empty());
}

#[test]
fn other_host_folders_are_listed_but_not_swept() {
    let (_root, storage) = storage();
    let marker = OwnerMarker::new(1, Some("another-boot".into()), Some(1), "far-away");
    fake_folder(&storage, "far_vm0", Some(&marker));
    assert_eq!(state_of(&storage, "far_vm0"), Some(FolderState::OtherHost));
    assert!(storage.sweep().unwrap().removed.is_empty());
}

#[test]
fn a_simulated_host_on_this_machine_is_judged_by_its_process() {
    let (_root, storage) = storage();
    let marker = OwnerMarker::new(dead_pid(), Some(boot_id()), None, "simulated-host");
    fake_folder(&storage, "sim_vm0", Some(&marker));
    assert_eq!(state_of(&storage, "sim_vm0"), Some(FolderState::Stale));
}

#[test]
fn reports_serialize_to_json_for_the_cli() {
    let (_root, storage) = storage();
    let _folder = storage.take(0, Persistence::Temporary).unwrap();
    let json = serde_json::to_value(storage.list().unwrap()).unwrap();
    assert_eq!(json[0]["state"], "in_use");
    assert!(json[0]["size_human"].as_str().unwrap().ends_with(" B"));
    assert_eq!(json[0]["owner"]["host"], HOST);
    let report = serde_json::to_value(storage.sweep().unwrap()).unwrap();
    assert_eq!(report["bytes_freed_human"], "0 B");
}

#[test]
fn open_and_sweep_cleans_up_on_worker_start() {
    let root = tempfile::tempdir().unwrap();
    let first = LocalStorage::open(root.path()).unwrap();
    let dead = OwnerMarker::new(dead_pid(), Some(boot_id()), None, first.host());
    fake_folder(&first, "dead_vm0", Some(&dead));
    let (_storage, report) = LocalStorage::open_and_sweep(root.path()).unwrap();
    assert_eq!(names(&report.removed), ["dead_vm0"]);
}

#[test]
fn a_zombie_owner_is_gone() {
    // A worker whose spawner was killed too can stay a zombie until someone reaps it;
    // it has exited and released its lock, so its folder must count as stale.
    let (_root, storage) = storage();
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stat_path = format!("/proc/{pid}/stat");
    let start_time = loop {
        let stat = fs::read_to_string(&stat_path).expect("zombie stat");
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        if fields[0] == "Z" {
            break fields[19].parse::<u64>().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child {pid} never became a zombie"
        );
        std::thread::yield_now();
    };
    let marker = OwnerMarker::new(pid, Some(boot_id()), Some(start_time), HOST);
    fake_folder(&storage, "zombie_vm0", Some(&marker));
    let state = state_of(&storage, "zombie_vm0");
    child.wait().expect("reap the zombie");
    assert_eq!(state, Some(FolderState::Stale));
}
