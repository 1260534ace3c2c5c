//! Taking task folders: names, markers, locks, removal and persistent reuse.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};

use parvm_local_storage::{Error, FolderState, OwnerMarker, Persistence};

use crate::{HOST, exists, state_of, storage};

#[test]
fn temporary_folder_is_named_marked_locked_and_removed() {
    let (_root, storage) = storage();
    let folder = storage.take(0x2a, Persistence::Temporary).unwrap();
    assert_eq!(folder.name(), format!("{:x}_vm2a", std::process::id()));
    assert!(!folder.reused());
    let marker: OwnerMarker =
        serde_json::from_slice(&fs::read(folder.path().join(".parvm-owner")).unwrap()).unwrap();
    assert_eq!(marker, OwnerMarker::current(HOST));
    assert_eq!(state_of(&storage, folder.name()), Some(FolderState::InUse));
    assert_eq!(
        storage.list().unwrap().len(),
        1,
        "no staging folder left behind"
    );
    let path = folder.path().to_path_buf();
    folder.release().unwrap();
    assert!(!exists(&path));
    assert!(storage.list().unwrap().is_empty(), "no trash left behind");
}

#[test]
fn existing_names_get_a_suffix() {
    let (_root, storage) = storage();
    let base = format!("{:x}_vm0", std::process::id());
    fs::create_dir(storage.path().join(&base)).unwrap();
    let first = storage.take(0, Persistence::Temporary).unwrap();
    let second = storage.take(0, Persistence::Temporary).unwrap();
    assert_eq!(first.name(), format!("{base}_1"));
    assert_eq!(second.name(), format!("{base}_2"));
}

#[test]
fn temporary_folder_is_removed_when_the_task_panics() {
    let (_root, storage) = storage();
    let mut path = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let folder = storage.take(0, Persistence::Temporary).unwrap();
        path = Some(folder.path().to_path_buf());
        panic!("task failed");
    }));
    assert!(outcome.is_err());
    assert!(!exists(&path.unwrap()));
}

#[test]
fn removal_never_follows_a_symlink_out_of_the_task_folder() {
    let (root, storage) = storage();
    let outside = root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), vec![7u8; 8192]).unwrap();
    let folder = storage.take(0, Persistence::Temporary).unwrap();
    symlink(&outside, folder.path().join("link")).unwrap();
    symlink(outside.join("precious"), folder.path().join("file-link")).unwrap();
    let info = crate::info_of(&storage, folder.name()).unwrap();
    assert!(info.size < 1024, "size follows no link: {}", info.size);
    let path = folder.path().to_path_buf();
    folder.release().unwrap();
    assert!(!exists(&path));
    assert_eq!(fs::read(outside.join("precious")).unwrap(), vec![7u8; 8192]);
}

#[test]
fn removal_handles_read_only_folders_and_non_utf8_names() {
    let (_root, storage) = storage();
    let folder = storage.take(0, Persistence::Temporary).unwrap();
    let odd = folder.path().join(OsStr::from_bytes(b"r\xe9sultat"));
    fs::create_dir_all(odd.join("deep")).unwrap();
    fs::write(odd.join("deep").join(OsStr::from_bytes(b"\xff")), b"x").unwrap();
    fs::set_permissions(odd.join("deep"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::set_permissions(&odd, fs::Permissions::from_mode(0o000)).unwrap();
    let path = folder.path().to_path_buf();
    folder.release().unwrap();
    assert!(!exists(&path));
}

#[test]
fn persistent_folder_is_reused_by_the_same_vm_index_only() {
    let (_root, storage) = storage();
    let first = storage.take(3, Persistence::Persistent).unwrap();
    assert!(!first.reused());
    let path = first.path().to_path_buf();
    fs::write(path.join("written-by-task"), b"1").unwrap();
    let other_vm = storage.take(4, Persistence::Persistent).unwrap();
    assert_ne!(other_vm.path(), path, "two VM indices never share a folder");
    first.release().unwrap();
    assert_eq!(
        state_of(&storage, &path.file_name().unwrap().to_string_lossy()),
        Some(FolderState::InUse)
    );
    let again = storage.take(3, Persistence::Persistent).unwrap();
    assert!(again.reused());
    assert_eq!(again.path(), path);
    assert!(path.join("written-by-task").exists());
}

#[test]
fn persistent_folder_cannot_be_lent_twice() {
    let (_root, storage) = storage();
    let held = storage.take(1, Persistence::Persistent).unwrap();
    let err = storage.take(1, Persistence::Persistent).unwrap_err();
    assert!(
        matches!(err, Error::PersistentInUse { vm_index: 1 }),
        "{err}"
    );
    drop(held);
    assert!(storage.take(1, Persistence::Persistent).unwrap().reused());
}

#[test]
fn discard_removes_a_kept_persistent_folder() {
    let (_root, storage) = storage();
    let folder = storage.take(5, Persistence::Persistent).unwrap();
    let path = folder.path().to_path_buf();
    drop(folder);
    assert!(storage.discard(5).unwrap());
    assert!(!exists(&path));
    assert!(!storage.discard(5).unwrap());
    assert!(!storage.take(5, Persistence::Persistent).unwrap().reused());
}

#[test]
fn persistent_folder_removed_by_a_forced_clear_is_made_again() {
    let (_root, storage) = storage();
    drop(storage.take(6, Persistence::Persistent).unwrap());
    let report = storage.clear(true).unwrap();
    assert_eq!(report.removed.len(), 1);
    let again = storage.take(6, Persistence::Persistent).unwrap();
    assert!(
        !again.reused(),
        "a removed folder is not handed out as reused"
    );
    assert!(again.path().join(".parvm-owner").exists());
}

#[test]
fn closing_the_storage_keeps_persistent_folders_on_disk_as_idle() {
    let (root, storage) = storage();
    let name = {
        let folder = storage.take(2, Persistence::Persistent).unwrap();
        folder.name().to_owned()
    };
    drop(storage);
    let reopened = parvm_local_storage::LocalStorage::options()
        .host(HOST)
        .open(root.path())
        .unwrap();
    assert_eq!(state_of(&reopened, &name), Some(FolderState::Idle));
    assert!(
        reopened.sweep().unwrap().removed.is_empty(),
        "idle is not stale"
    );
}

/// What a folder holds, sorted, as `name` strings.
fn entries(path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_folder_released_for_the_next_task_is_emptied_and_handed_to_it() {
    let (root, storage) = storage();
    let outside = root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"p").unwrap();

    let first = storage.take(3, Persistence::Temporary).unwrap();
    let path = first.path().to_path_buf();
    let made = entries(&path);
    fs::create_dir_all(path.join("out/deep")).unwrap();
    fs::write(path.join("out/deep/result"), b"r").unwrap();
    fs::set_permissions(path.join("out"), fs::Permissions::from_mode(0o500)).unwrap();
    symlink(&outside, path.join("link")).unwrap();
    first.release_for_next().unwrap();

    // Between the two tasks: still locked, so never swept, and nothing of the task left.
    assert!(storage.holds_spare());
    assert_eq!(entries(&path), made);
    assert_eq!(
        state_of(&storage, &made_name(&path)),
        Some(FolderState::InUse)
    );
    assert!(storage.sweep().unwrap().removed.is_empty());

    let second = storage.take(3, Persistence::Temporary).unwrap();
    assert_eq!(second.path(), path);
    assert!(
        !second.reused(),
        "an emptied folder is as good as a new one"
    );
    assert!(!storage.holds_spare());
    second.release().unwrap();
    assert!(!exists(&path));
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"p");
    assert!(storage.list().unwrap().is_empty());
}

fn made_name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_spare_folder_is_removed_when_its_task_does_not_come() {
    let (_root, storage) = storage();

    // Another VM's task: the spare goes and a folder of that VM is made.
    let first = storage.take(0, Persistence::Temporary).unwrap();
    let spare = first.path().to_path_buf();
    first.release_for_next().unwrap();
    let other = storage.take(1, Persistence::Temporary).unwrap();
    assert!(!exists(&spare));
    assert_ne!(other.path(), spare);
    other.release_for_next().unwrap();

    // The caller waits for work instead.
    let kept = storage.list().unwrap();
    assert_eq!(kept.len(), 1);
    assert!(storage.remove_spare().unwrap());
    assert!(!storage.remove_spare().unwrap());
    assert!(!exists(&kept[0].path));

    // The storage goes away.
    let last = storage.take(2, Persistence::Temporary).unwrap();
    let path = last.path().to_path_buf();
    last.release_for_next().unwrap();
    let per_user = storage.path().to_path_buf();
    drop(storage);
    assert!(!exists(&path));
    assert_eq!(fs::read_dir(per_user).unwrap().count(), 0);
}

#[test]
fn a_folder_its_task_changed_is_removed_not_handed_on() {
    let (_root, storage) = storage();
    type Change = fn(&std::path::Path);
    let changes: [(&str, Change); 4] = [
        ("opened to others", |p| {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }),
        ("lock removed", |p| {
            fs::remove_file(p.join(".parvm-lock")).unwrap()
        }),
        ("marker rewritten", |p| {
            let forged = OwnerMarker::new(1, None, None, "elsewhere");
            fs::write(p.join(".parvm-owner"), serde_json::to_vec(&forged).unwrap()).unwrap();
        }),
        ("marker made a symlink", |p| {
            fs::remove_file(p.join(".parvm-owner")).unwrap();
            symlink("/etc/hostname", p.join(".parvm-owner")).unwrap();
        }),
    ];
    for (what, change) in changes {
        let first = storage.take(0, Persistence::Temporary).unwrap();
        let path = first.path().to_path_buf();
        fs::write(path.join("result"), b"r").unwrap();
        change(&path);
        first.release_for_next().unwrap();
        let second = storage.take(0, Persistence::Temporary).unwrap();
        assert!(!second.path().join("result").exists(), "{what}");
        let marker: OwnerMarker =
            serde_json::from_slice(&fs::read(second.path().join(".parvm-owner")).unwrap()).unwrap();
        assert_eq!(marker, OwnerMarker::current(HOST), "{what}");
        let mode = fs::metadata(second.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{what}");
        second.release().unwrap();
        assert!(storage.list().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn a_folder_handed_on_keeps_what_its_task_left_until_the_next_task_empties_it() {
    let (root, storage) = storage();
    let outside = root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"p").unwrap();

    let first = storage.take(3, Persistence::Temporary).unwrap();
    assert!(!first.handed_on());
    let path = first.path().to_path_buf();
    let made = entries(&path);
    fs::write(path.join("input"), b"i").unwrap();
    fs::create_dir_all(path.join("out/deep")).unwrap();
    fs::write(path.join("out/deep/result"), b"r").unwrap();
    fs::set_permissions(path.join("out"), fs::Permissions::from_mode(0o500)).unwrap();
    symlink(&outside, path.join("link")).unwrap();
    first.hand_on().unwrap();

    // Between the two tasks: locked, never swept, and as the task left it.
    assert!(storage.holds_spare());
    assert_eq!(
        state_of(&storage, &made_name(&path)),
        Some(FolderState::InUse)
    );
    assert!(storage.sweep().unwrap().removed.is_empty());
    let mut second = storage.take(3, Persistence::Temporary).unwrap();
    assert_eq!(second.path(), path);
    assert!(second.handed_on());
    assert_eq!(fs::read(path.join("out/deep/result")).unwrap(), b"r");

    // Its taker could not use it as it is.
    second.empty().unwrap();
    assert!(!second.handed_on());
    assert_eq!(entries(&path), made);
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"p");

    // An emptied spare is not handed on, and another VM's task gets a new folder.
    second.release_for_next().unwrap();
    let third = storage.take(3, Persistence::Temporary).unwrap();
    assert!(!third.handed_on());
    third.hand_on().unwrap();
    let other = storage.take(4, Persistence::Temporary).unwrap();
    assert!(!other.handed_on());
    assert!(!exists(&path));
    other.release().unwrap();
    assert!(storage.list().unwrap().is_empty());
}

#[test]
fn a_folder_its_task_changed_is_removed_not_handed_on_as_it_is() {
    let (_root, storage) = storage();
    for mode in [0o755, 0o500] {
        let first = storage.take(0, Persistence::Temporary).unwrap();
        let path = first.path().to_path_buf();
        fs::write(path.join("result"), b"r").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        first.hand_on().unwrap();
        assert!(!exists(&path), "{mode:o}");
        let second = storage.take(0, Persistence::Temporary).unwrap();
        assert!(!second.handed_on());
        assert!(!second.path().join("result").exists());
        second.release().unwrap();
    }
    // Emptying a handed-on folder that changed since is refused, never done half.
    let first = storage.take(0, Persistence::Temporary).unwrap();
    let path = first.path().to_path_buf();
    first.hand_on().unwrap();
    let mut second = storage.take(0, Persistence::Temporary).unwrap();
    fs::write(path.join("result"), b"r").unwrap();
    fs::remove_file(path.join(".parvm-lock")).unwrap();
    let err = second.empty().unwrap_err();
    assert!(matches!(err, Error::Remove { .. }), "{err}");
    assert!(err.to_string().contains(&made_name(&path)), "{err}");
    assert!(path.join("result").exists());
    second.release().unwrap();
    assert!(!exists(&path));
}

#[test]
fn a_persistent_folder_released_for_the_next_task_is_kept_as_always() {
    let (_root, storage) = storage();
    let first = storage.take(5, Persistence::Persistent).unwrap();
    fs::write(first.path().join("state"), b"s").unwrap();
    first.release_for_next().unwrap();
    assert!(!storage.holds_spare());
    let again = storage.take(5, Persistence::Persistent).unwrap();
    assert!(again.reused());
    assert_eq!(fs::read(again.path().join("state")).unwrap(), b"s");
}
