//! Opening the per-user folder: made safely, and refused when unsafe.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::process::Command;

use parvm_local_storage::{Error, LocalStorage};

fn user_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join(format!(
        "parvm-{}",
        parvm_env_config::current_user().expect("user name")
    ))
}

#[test]
fn makes_a_private_per_user_folder_and_reopens_it() {
    let root = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(root.path()).unwrap();
    assert_eq!(storage.path(), user_dir(root.path()));
    let meta = fs::symlink_metadata(storage.path()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    LocalStorage::open(root.path()).expect("second open of the same folder");
}

#[test]
fn from_config_uses_root_and_host() {
    let root = tempfile::tempdir().unwrap();
    let config = parvm_env_config::Config::builder()
        .local_root(root.path())
        .mirrored_roots([root.path()])
        .hostname("node9")
        .build()
        .unwrap();
    let storage = LocalStorage::from_config(&config).unwrap();
    assert_eq!(storage.host(), "node9");
    assert!(storage.path().starts_with(config.local_root()));
}

#[test]
fn refuses_a_per_user_folder_owned_by_another_user() {
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = LocalStorage::open(root.path()).unwrap_err();
    assert!(
        matches!(err, Error::UserDirNotOwned { owner: 65534, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("remove it or change its owner"),
        "{err}"
    );
}

#[test]
fn refuses_group_or_world_access() {
    for mode in [0o770, 0o707, 0o750, 0o1777] {
        let root = tempfile::tempdir().unwrap();
        let dir = user_dir(root.path());
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let err = LocalStorage::open(root.path()).unwrap_err();
        assert!(matches!(err, Error::UserDirMode { .. }), "{mode:o}: {err}");
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }
}

#[test]
fn refuses_a_symlinked_per_user_folder() {
    let root = tempfile::tempdir().unwrap();
    let elsewhere = root.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&elsewhere, user_dir(root.path())).unwrap();
    let err = LocalStorage::open(root.path()).unwrap_err();
    assert!(matches!(err, Error::UserDirSymlink { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn refuses_a_file_where_the_per_user_folder_should_be() {
    let root = tempfile::tempdir().unwrap();
    fs::write(user_dir(root.path()), b"not a folder").unwrap();
    let err = LocalStorage::open(root.path()).unwrap_err();
    assert!(matches!(err, Error::UserDirNotFolder { .. }), "{err}");
    assert_eq!(
        fs::read(user_dir(root.path())).unwrap(),
        b"not a folder",
        "bad input kept"
    );
}

#[test]
fn refuses_a_missing_or_non_folder_root() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("file");
    fs::write(&file, b"").unwrap();
    for bad in [root.path().join("missing"), file] {
        let err = LocalStorage::open(&bad).unwrap_err();
        assert!(matches!(err, Error::RootMissing { .. }), "{err}");
        assert!(err.to_string().contains("PARALLEL_LOCAL_STORAGE"), "{err}");
    }
}

/// A read-only bind mount of a temp folder, unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(source: &std::path::Path, target: &std::path::Path) -> Option<ReadOnlyMount> {
        let run = |args: &[&std::ffi::OsStr]| {
            Command::new("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["--bind".as_ref(), source.as_os_str(), target.as_os_str()]) {
            return None;
        }
        let mount = ReadOnlyMount(target.to_path_buf());
        run(&[
            "-o".as_ref(),
            "remount,ro,bind".as_ref(),
            target.as_os_str(),
        ])
        .then_some(mount)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn refuses_a_read_only_root_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, target) = (tmp.path().join("rw"), tmp.path().join("ro"));
    fs::create_dir(&source).unwrap();
    fs::create_dir(&target).unwrap();
    let Some(_mount) = ReadOnlyMount::new(&source, &target) else {
        eprintln!("skipped: cannot make a read-only bind mount here (needs root and mount)");
        return;
    };
    let err = LocalStorage::open(&target).unwrap_err();
    assert!(matches!(err, Error::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("not writable"), "{err}");
}

#[test]
fn refuses_an_existing_per_user_folder_on_a_read_only_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, target) = (tmp.path().join("rw"), tmp.path().join("ro"));
    fs::create_dir(&source).unwrap();
    fs::create_dir(&target).unwrap();
    LocalStorage::open(&source).unwrap();
    let Some(_mount) = ReadOnlyMount::new(&source, &target) else {
        eprintln!("skipped: cannot make a read-only bind mount here (needs root and mount)");
        return;
    };
    let err = LocalStorage::open(&target).unwrap_err();
    assert!(matches!(err, Error::NotWritable { .. }), "{err}");
}

#[test]
fn open_existing_creates_nothing_and_still_checks_what_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    assert!(
        LocalStorage::options()
            .open_existing(&missing)
            .unwrap()
            .is_none()
    );
    assert!(!missing.exists(), "the root was made");
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    assert!(
        LocalStorage::options()
            .open_existing(&root)
            .unwrap()
            .is_none()
    );
    assert!(!user_dir(&root).exists(), "the per-user folder was made");

    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = LocalStorage::options().open_existing(&file).unwrap_err();
    assert!(matches!(err, Error::RootMissing { .. }), "{err}");
    symlink(tmp.path(), user_dir(&root)).unwrap();
    let err = LocalStorage::options().open_existing(&root).unwrap_err();
    assert!(matches!(err, Error::UserDirSymlink { .. }), "{err}");
    fs::remove_file(user_dir(&root)).unwrap();

    let made = LocalStorage::open(&root).unwrap();
    let found = LocalStorage::options()
        .open_existing(&root)
        .unwrap()
        .unwrap();
    assert_eq!(found.path(), made.path());
}

#[test]
fn refuses_a_root_that_another_user_could_change() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = |name: &str, mode: u32| {
        let path = tmp.path().join(name);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let nobody = nix::unistd::Uid::from_raw(65534);
    let theirs = folder("theirs", 0o755);
    nix::unistd::chown(&theirs, Some(nobody), None).unwrap();
    let theirs_sticky = folder("theirs-sticky", 0o1777);
    nix::unistd::chown(&theirs_sticky, Some(nobody), None).unwrap();
    let group = folder("group", 0o770);
    nix::unistd::chown(&group, None, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    let below_open = folder("open", 0o777).join("mine");
    fs::create_dir(&below_open).unwrap();
    fs::set_permissions(&below_open, fs::Permissions::from_mode(0o700)).unwrap();
    // (root, folder named, words)
    let rows = [
        (theirs.clone(), theirs.clone(), "owned by uid 65534"),
        (
            theirs_sticky.clone(),
            theirs_sticky.clone(),
            "owned by uid 65534",
        ),
        (
            folder("wide", 0o777),
            tmp.path().join("wide"),
            "writable by everybody",
        ),
        (group.clone(), group.clone(), "writable by group 65534"),
        (
            below_open.clone(),
            tmp.path().join("open"),
            "writable by everybody",
        ),
    ];
    for (root, named, why) in rows {
        let err = LocalStorage::open(&root).unwrap_err();
        let Error::RootUnsafe { folder, .. } = &err else {
            panic!("{}: {err}", root.display());
        };
        assert_eq!(folder, &named, "{err}");
        let text = err.to_string();
        assert!(text.contains(why), "{text}");
        assert!(text.contains("PARALLEL_LOCAL_STORAGE"), "{text}");
        assert!(
            !user_dir(&root).exists(),
            "{}: made the per-user folder",
            root.display()
        );
        let err = LocalStorage::options().open_existing(&root).unwrap_err();
        assert!(matches!(err, Error::RootUnsafe { .. }), "{err}");
    }
    // The sticky bit keeps others from renaming what is not theirs, as in /tmp.
    let sticky = folder("sticky", 0o1777);
    LocalStorage::open(&sticky).expect("a sticky world-writable root of ours or root");
}
