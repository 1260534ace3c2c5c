//! Read-only folders as a user who is not root. Root ignores permission bits, so as root
//! (as in CI) each test runs again, as `nobody`, in a copy of this test binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirroredFolder, mirror, refresh};
use parvm_test_support::as_unprivileged;

use crate::{Fixture, set_mode};

/// A shared folder `ro` (mode 0555) holding `a.txt`, mirrored into the task folder.
fn read_only_source(fx: &Fixture) -> MirrorMap {
    fx.file("ro/a.txt", b"a");
    set_mode(&fx.src("ro"), 0o555);
    MirrorMap::new().entry(fx.src("ro"), ".").unwrap()
}

/// Adds `b.txt` to the read-only source folder.
fn add_to_source(fx: &Fixture) {
    set_mode(&fx.src("ro"), 0o755);
    fx.file("ro/b.txt", b"b");
    set_mode(&fx.src("ro"), 0o555);
}

/// The copy has the new file, and the source folder's mode and time again.
fn assert_refreshed(fx: &Fixture) {
    assert_eq!(fs::read(fx.dst("ro/b.txt")).unwrap(), b"b");
    let (src, dst) = (
        fs::metadata(fx.src("ro")).unwrap(),
        fs::metadata(fx.dst("ro")).unwrap(),
    );
    assert_eq!(dst.permissions().mode() & 0o7777, 0o555);
    assert_eq!(dst.modified().unwrap(), src.modified().unwrap());
    // Let the temporary folders be removed.
    set_mode(&fx.src("ro"), 0o755);
    set_mode(&fx.dst("ro"), 0o755);
}

fn in_a_fixture(test: fn(&Fixture, &MirrorMap)) {
    let fx = Fixture::new();
    let map = read_only_source(&fx);
    test(&fx, &map);
    assert_refreshed(&fx);
}

#[test]
fn a_stateless_refresh_fills_read_only_copies() {
    as_unprivileged(
        "unprivileged::a_stateless_refresh_fills_read_only_copies",
        || {
            in_a_fixture(|fx, map| {
                mirror(map, &fx.task, &MirrorOptions::new()).unwrap();
                add_to_source(fx);
                let report = refresh(map, &fx.task, &MirrorOptions::new()).unwrap();
                assert_eq!(report.files, 1, "{report:?}");
            });
        },
    );
}

#[test]
fn mirroring_again_fills_read_only_copies() {
    as_unprivileged(
        "unprivileged::mirroring_again_fills_read_only_copies",
        || {
            in_a_fixture(|fx, map| {
                mirror(map, &fx.task, &MirrorOptions::new()).unwrap();
                add_to_source(fx);
                mirror(map, &fx.task, &MirrorOptions::new()).unwrap();
            });
        },
    );
}

#[test]
fn a_mirrored_folder_refreshes_read_only_copies() {
    as_unprivileged(
        "unprivileged::a_mirrored_folder_refreshes_read_only_copies",
        || {
            in_a_fixture(|fx, map| {
                let options = MirrorOptions::new();
                let mut folder = MirroredFolder::mirror(map, &fx.task, &options).unwrap();
                add_to_source(fx);
                let report = folder.refresh(&options).unwrap();
                assert_eq!(report.files, 1, "{report:?}");
            });
        },
    );
}

#[test]
fn two_entries_filling_one_read_only_copy_share_it() {
    as_unprivileged(
        "unprivileged::two_entries_filling_one_read_only_copy_share_it",
        || {
            let fx = Fixture::new();
            read_only_source(&fx);
            fx.file("more/x.one", b"1");
            fx.file("more/y.two", b"2");
            let map = MirrorMap::new()
                .entry(fx.src("ro"), ".")
                .unwrap()
                .entry(fx.src("more/*.one"), "ro")
                .unwrap()
                .entry(fx.src("more/*.two"), "ro")
                .unwrap();
            mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
            add_to_source(&fx);
            for run in 0..2 {
                refresh(&map, &fx.task, &MirrorOptions::new()).unwrap();
                assert_eq!(fs::read(fx.dst("ro/x.one")).unwrap(), b"1", "run {run}");
                assert_eq!(fs::read(fx.dst("ro/y.two")).unwrap(), b"2", "run {run}");
            }
            assert_refreshed(&fx);
        },
    );
}

/// The harness itself: a test run as `nobody` really is not root.
#[test]
fn the_body_runs_without_root() {
    as_unprivileged("unprivileged::the_body_runs_without_root", || {
        assert!(!nix::unistd::Uid::effective().is_root());
        let probe = Path::new("/root/.parvm-unprivileged-probe");
        assert!(fs::write(probe, b"x").is_err(), "wrote into /root");
    });
}
