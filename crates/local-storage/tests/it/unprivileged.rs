//! Removing folders with read-only contents as a user who is not root (copies of read-only
//! source folders are read-only). Root ignores permission bits, so as root (as in CI) each
//! test runs again as `nobody`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use parvm_local_storage::{OwnerMarker, Persistence};
use parvm_test_support::as_unprivileged;

use crate::{HOST, boot_id, dead_pid, exists, fake_folder, names, storage};

/// Fills `folder` with what a task leaves: a read-only copy of a read-only folder, a
/// read-only file, and a folder with no permissions at all.
fn read_only_contents(folder: &Path) {
    let models = folder.join("models");
    fs::create_dir_all(models.join("deep")).unwrap();
    fs::write(models.join("deep/m.lib"), b"model").unwrap();
    fs::write(models.join("ro.txt"), b"ro").unwrap();
    fs::set_permissions(models.join("ro.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(models.join("deep"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(&models, fs::Permissions::from_mode(0o555)).unwrap();
    let locked = folder.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("x"), b"x").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
}

#[test]
fn a_task_folder_with_read_only_contents_is_removed() {
    as_unprivileged(
        "unprivileged::a_task_folder_with_read_only_contents_is_removed",
        || {
            let (_root, storage) = storage();
            let folder = storage.take(0, Persistence::Temporary).unwrap();
            read_only_contents(folder.path());
            let path = folder.path().to_path_buf();
            folder.release().unwrap();
            assert!(!exists(&path));
            assert!(storage.list().unwrap().is_empty(), "nothing left behind");
        },
    );
}

#[test]
fn a_stale_folder_with_read_only_contents_is_swept() {
    as_unprivileged(
        "unprivileged::a_stale_folder_with_read_only_contents_is_swept",
        || {
            let (_root, storage) = storage();
            let marker = OwnerMarker::new(dead_pid(), Some(boot_id()), None, HOST);
            let path = fake_folder(&storage, "dead_vm0", Some(&marker));
            read_only_contents(&path);
            let report = storage.sweep().unwrap();
            assert_eq!(names(&report.removed), ["dead_vm0"], "{report:?}");
            assert!(report.failed.is_empty(), "{report:?}");
            assert!(!exists(&path));
        },
    );
}

#[test]
fn a_root_others_could_change_is_refused_for_a_user_too() {
    as_unprivileged(
        "unprivileged::a_root_others_could_change_is_refused_for_a_user_too",
        || {
            let tmp = tempfile::tempdir().unwrap();
            let folder = |name: &str, mode: u32| {
                let path = tmp.path().join(name);
                fs::create_dir(&path).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                path
            };
            let err = parvm_local_storage::LocalStorage::open(&folder("wide", 0o777)).unwrap_err();
            assert!(
                matches!(err, parvm_local_storage::Error::RootUnsafe { .. }),
                "{err}"
            );
            // Sticky, like /tmp: others cannot rename what is not theirs.
            parvm_local_storage::LocalStorage::open(&folder("sticky", 0o1777)).unwrap();
            // Writable by the user's own group, which has no other members.
            let egid = nix::unistd::getegid();
            let group = nix::unistd::Group::from_gid(egid).unwrap().unwrap();
            let shared = folder("group", 0o770);
            let opened = parvm_local_storage::LocalStorage::open(&shared);
            let me = parvm_env_config::current_user().unwrap();
            if group.mem.iter().all(|member| *member == me) {
                opened.unwrap();
            } else {
                assert!(opened.is_err(), "group {} has members", group.name);
            }
        },
    );
}
