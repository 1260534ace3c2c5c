//! `parvm storage` and `parvm config`: they create nothing, and their errors read as a
//! chain of messages; the host cache shown and cleared.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `parvm` with `local` as its local storage root and `shared` as mirrored storage.
fn parvm(local: &Path, shared: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parvm"))
        .args(args)
        .env("PARALLEL_LOCAL_STORAGE", local)
        .env("PARALLEL_MIRRORED_STORAGE", shared)
        .env_remove("PARVM_HOSTNAME")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The per-user folder `parvm config` names for `local`.
fn user_folder(local: &Path, shared: &Path) -> PathBuf {
    let out = parvm(local, shared, &["--json", "config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(shown["user_folder"].as_str().unwrap())
}

#[test]
fn storage_commands_and_config_create_no_local_root_or_user_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().canonicalize().unwrap();
    let local = shared.join("not-yet/local");
    for args in [
        &["storage", "list"][..],
        &["storage", "sweep"],
        &["storage", "clear"],
        &["storage", "cache"],
        &["storage", "clear-cache"],
        &["config"],
    ] {
        let out = parvm(&local, &shared, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!shared.join("not-yet").exists(), "{args:?} made the root");
    }
    let out = parvm(&local, &shared, &["storage", "list"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains("(no task folders: the local storage root"),
        "{listed}"
    );
    assert!(listed.contains("does not exist yet"), "{listed}");
    let out = parvm(&local, &shared, &["--json", "storage", "list"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    assert!(text(&out.stderr).contains("note: no task folders"));
    let out = parvm(&local, &shared, &["--json", "storage", "sweep"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"], serde_json::json!([]));
    assert_eq!(report["bytes_freed_human"], "0 B");

    // The root exists, the per-user folder does not: it stays so.
    std::fs::create_dir_all(&local).unwrap();
    let user_dir = user_folder(&local, &shared);
    let out = parvm(&local, &shared, &["storage", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("per-user folder"),
        "{}",
        text(&out.stdout)
    );
    assert!(!user_dir.exists(), "list made the per-user folder");
}

#[test]
fn storage_lists_an_existing_user_folder_without_changing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().canonicalize().unwrap();
    let local = shared.join("local");
    std::fs::create_dir(&local).unwrap();
    let user_dir = user_folder(&local, &shared);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&user_dir)
        .unwrap();
    std::fs::create_dir(user_dir.join("nomarker_vm0")).unwrap();
    let out = parvm(&local, &shared, &["--json", "storage", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "nomarker_vm0");
    assert_eq!(listed[0]["state"], "unknown");
    assert!(user_dir.join("nomarker_vm0").is_dir());
}

#[test]
fn bad_local_storage_fails_with_a_readable_error_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().canonicalize().unwrap();
    let file = shared.join("file");
    std::fs::write(&file, b"x").unwrap();
    let local = shared.join("local");
    std::fs::create_dir(&local).unwrap();
    let user_dir = user_folder(&local, &shared);
    std::os::unix::fs::symlink(&shared, &user_dir).unwrap();
    // (local root, command, words the first line holds, cause expected)
    let cases: [(PathBuf, &[&str], &[&str], bool); 3] = [
        (
            file.join("sub"),
            &["storage", "list"],
            &["PARALLEL_LOCAL_STORAGE", "file/sub", "fix the entry"],
            true,
        ),
        (
            file.clone(),
            &["storage", "sweep"],
            &[
                "PARALLEL_LOCAL_STORAGE",
                "not a folder",
                "point it at a folder",
            ],
            false,
        ),
        (
            local.clone(),
            &["storage", "list"],
            &["is a symlink", "remove it"],
            false,
        ),
    ];
    for (root, args, words, caused) in cases {
        let out = parvm(&root, &shared, args);
        let message = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {message}");
        let first = message.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{args:?}: {message}");
        for word in words {
            assert!(
                first.contains(word),
                "{args:?}: {word:?} missing: {message}"
            );
        }
        assert_eq!(
            message.contains("\n  caused by: "),
            caused,
            "{args:?}: {message}"
        );
        for debug in ["Os {", "kind:", "Error {", " { path"] {
            assert!(
                !message.contains(debug),
                "{args:?}: Debug output: {message}"
            );
        }
    }
    assert!(
        std::fs::symlink_metadata(&user_dir).unwrap().is_symlink(),
        "bad input kept"
    );
}

/// `<pid hex>.<start time hex>.<boot id prefix>` of this test process, with its start time
/// moved by `shift` clock ticks (0: the real one).
fn my_name_tag(shift: u64) -> String {
    let pid = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let start: u64 = fields[19].parse().unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    format!("{pid:x}.{:x}.{}", start + shift, &boot[..8])
}

#[test]
fn storage_sweep_removes_trash_whose_pid_now_belongs_to_another_process() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().canonicalize().unwrap();
    let local = shared.join("local");
    std::fs::create_dir(&local).unwrap();
    let user_dir = user_folder(&local, &shared);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&user_dir)
        .unwrap();
    // This process is alive: as the remover it keeps its trash; with another start time
    // it is merely a process that reuses the remover's pid.
    let live = format!(".parvm-trash-{}-1-2-live_vm0", my_name_tag(0));
    let reused = format!(".parvm-trash-{}-1-2-old_vm0", my_name_tag(5));
    for name in [&live, &reused] {
        std::fs::create_dir(user_dir.join(name)).unwrap();
    }
    let out = parvm(&local, &shared, &["--json", "storage", "sweep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"][0]["name"], reused.as_str(), "{report}");
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["kept"][0]["state"], "in_use", "{report}");
    assert!(user_dir.join(&live).is_dir());
    assert!(!user_dir.join(&reused).exists());
}

#[test]
fn the_host_cache_is_shown_and_cleared_down_to_what_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().canonicalize().unwrap().join("shared");
    let local = tmp.path().canonicalize().unwrap().join("local");
    std::fs::create_dir_all(shared.join("ro")).unwrap();
    std::fs::write(shared.join("in.txt"), "input").unwrap();
    std::fs::write(shared.join("ro/model.lib"), "model").unwrap();
    // A read-only folder in a snapshot: `rm -rf` could not empty it as its owner.
    std::fs::set_permissions(
        shared.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    // Inputs shipped even on this one host.
    let out = Command::new(env!("CARGO_BIN_EXE_parvm"))
        .env("PARALLEL_LOCAL_STORAGE", &local)
        .env("PARALLEL_MIRRORED_STORAGE", &shared)
        .env("PARVM_SHIP", "always")
        .env("PARVM_WORKERS", "1")
        .args(["run", "--map"])
        .arg(format!("{}=.", shared.join("in.txt").display()))
        .arg("--map")
        .arg(format!("{}=.", shared.join("ro").display()))
        .args(["-n", "1", "cat", "in.txt", "ro/model.lib"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "inputmodel");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = parvm(&local, &shared, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let shown = json(&["--json", "storage", "cache"]);
    assert_eq!(
        (shown["blobs"].as_u64(), shown["snapshots"].as_u64()),
        (Some(2), Some(1))
    );
    // Without PARVM_CACHE_MAX: 10% of the free space there, and no count.
    assert!(shown["limits"]["max_bytes"].as_u64() > Some(0), "{shown}");
    assert_eq!(shown["limits"]["given"], false, "{shown}");
    let out = parvm(&local, &shared, &["storage", "cache"]);
    let shown_text = text(&out.stdout);
    assert!(shown_text.contains("2 files, 1 snapshot,"), "{shown_text}");
    assert!(
        shown_text.contains("(10% of the free space; PARVM_CACHE_MAX sets it)"),
        "{shown_text}"
    );
    // With a limit the cache is over: said, with when it is applied.
    let out = Command::new(env!("CARGO_BIN_EXE_parvm"))
        .env("PARALLEL_LOCAL_STORAGE", &local)
        .env("PARALLEL_MIRRORED_STORAGE", &shared)
        .env("PARVM_CACHE_MAX", "4")
        .args(["storage", "cache"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let over = text(&out.stdout);
    assert!(
        over.contains("limit 4 B (PARVM_CACHE_MAX): over it until a worker next applies it"),
        "{over}"
    );
    let cleared = json(&["--json", "storage", "clear-cache"]);
    assert_eq!(cleared["before"]["blobs"], 2);
    assert_eq!(cleared["after"]["blobs"], 0);
    assert_eq!(cleared["after"]["snapshots"], 0);
    assert_eq!(cleared["bytes_freed"], shown["bytes"]);
    let snapshots = user_folder(&local, &shared).join("cache/snapshots");
    assert_eq!(std::fs::read_dir(snapshots).unwrap().count(), 0);
    std::fs::set_permissions(
        shared.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}
