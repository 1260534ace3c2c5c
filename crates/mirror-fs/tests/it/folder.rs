//! MirroredFolder: a persistent task folder refreshed with one stat per source file, the
//! tasks' changes found by inotify (or, without it, by verifying every copy).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{Error, MirrorMap, MirrorOptions, MirroredFolder};

use crate::{Fixture, set_mode};

/// Both flavours: with inotify, and with the fallback that verifies every copy.
fn flavours() -> [MirrorOptions; 2] {
    [MirrorOptions::new(), MirrorOptions::new().no_inotify()]
}

/// Moves a file's modification time, so an edit of the same size shows.
fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(7)
}

/// tree/ (folders, files, a symlink) → in/, lib/*.lib → models/, top.cir → task folder.
fn setup(fx: &Fixture) -> MirrorMap {
    for i in 0..30 {
        fx.file(format!("tree/d{}/f{i}.txt", i % 3), format!("v1 {i}").as_bytes());
    }
    fx.file("tree/d0/sub/deep.txt", b"deep");
    symlink("f0.txt", fx.src("tree/d0/link")).unwrap();
    fx.file("lib/a.lib", b"model a");
    fx.file("lib/b.lib", b"model b");
    fx.file("lib/notes.txt", b"not matched");
    fx.file("top.cir", b"netlist");
    MirrorMap::new()
        .entry(fx.src("tree"), "in")
        .unwrap()
        .entry(fx.src("lib/*.lib"), "models")
        .unwrap()
        .entry(fx.src("top.cir"), ".")
        .unwrap()
}

fn copies(report: &parvm_mirror_fs::MirrorReport) -> u64 {
    report.files + report.symlinks
}

#[test]
fn nothing_changed_copies_nothing() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(copies(folder.report()), 30 + 1 + 1 + 2 + 1);
        assert_eq!(folder.entries(), 35);
        assert_eq!(folder.is_watching(), !format!("{options:?}").contains("no_inotify: true"));
        for _ in 0..3 {
            let report = folder.refresh(&options).unwrap();
            assert_eq!(copies(&report), 0, "{options:?} {report:?}");
            assert_eq!(report.skipped, 35);
        }
    }
}

#[test]
fn source_edits_are_copied_again() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        // Same size, new time.
        fs::write(fx.src("tree/d0/f0.txt"), b"v2 0").unwrap();
        set_mtime(&fx.src("tree/d0/f0.txt"), later());
        // Another size.
        fs::write(fx.src("tree/d1/f1.txt"), b"v2 one, longer").unwrap();
        // Replaced by a rename with the old time kept (rsync -t, atomic saves): only the
        // inode and change time tell.
        let old = fs::metadata(fx.src("lib/a.lib")).unwrap().modified().unwrap();
        fx.file("lib/.a.tmp", b"model A");
        set_mtime(&fx.src("lib/.a.tmp"), old);
        fs::rename(fx.src("lib/.a.tmp"), fx.src("lib/a.lib")).unwrap();
        // Mode only.
        set_mode(&fx.src("top.cir"), 0o755);
        // A retargeted symlink.
        fs::remove_file(fx.src("tree/d0/link")).unwrap();
        symlink("f3.txt", fx.src("tree/d0/link")).unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!((report.files, report.symlinks), (4, 1), "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v2 0");
        assert_eq!(fs::read(fx.dst("in/tree/d1/f1.txt")).unwrap(), b"v2 one, longer");
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"model A");
        assert_eq!(fs::metadata(fx.dst("top.cir")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(fx.dst("in/tree/d0/link")).unwrap(),
            Path::new("f3.txt")
        );
        // And then nothing more: the refresh's own writes are not the tasks'.
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn new_sources_are_copied_and_gone_ones_leave_their_copy() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fx.file("tree/d2/new.txt", b"new in a folder");
        fx.file("tree/d9/x/y.txt", b"new folder tree");
        fx.file("lib/c.lib", b"model c");
        fx.file("lib/d.txt", b"not matched");
        fs::remove_file(fx.src("tree/d1/f4.txt")).unwrap();
        fs::remove_file(fx.src("lib/b.lib")).unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 3, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("in/tree/d2/new.txt")).unwrap(), b"new in a folder");
        assert_eq!(fs::read(fx.dst("in/tree/d9/x/y.txt")).unwrap(), b"new folder tree");
        assert_eq!(fs::read(fx.dst("models/c.lib")).unwrap(), b"model c");
        assert!(!fx.dst("models/d.txt").exists());
        // Gone at the source: the copy stays, and is not looked after any more.
        assert_eq!(fs::read(fx.dst("in/tree/d1/f4.txt")).unwrap(), b"v1 4");
        assert_eq!(fs::read(fx.dst("models/b.lib")).unwrap(), b"model b");
        assert_eq!(folder.entries(), 35 + 3 - 2);
        // The new entries are watched and scanned like the old ones.
        fs::write(fx.src("tree/d9/x/y.txt"), b"edited at the source").unwrap();
        fs::write(fx.dst("models/c.lib"), b"scribbled").unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 2, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("models/c.lib")).unwrap(), b"model c");
        assert_eq!(
            fs::read(fx.dst("in/tree/d9/x/y.txt")).unwrap(),
            b"edited at the source"
        );
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn task_changes_to_mirrored_entries_are_undone() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::remove_file(fx.dst("in/tree/d0/f0.txt")).unwrap();
        fs::rename(fx.dst("in/tree/d1/f1.txt"), fx.dst("in/tree/d1/renamed.txt")).unwrap();
        fs::write(fx.dst("in/tree/d2/f2.txt"), b"edited in place").unwrap();
        set_mode(&fx.dst("models/a.lib"), 0o600);
        fs::write(fx.dst("top.cir"), b"overwritten").unwrap();
        fs::remove_file(fx.dst("in/tree/d0/link")).unwrap();
        symlink("elsewhere", fx.dst("in/tree/d0/link")).unwrap();
        // Unrelated files the task wrote, in a mirrored folder and beside them.
        fs::write(fx.dst("in/tree/d0/output.dat"), b"result").unwrap();
        fs::write(fx.dst("out.log"), b"log").unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!((report.files, report.symlinks), (5, 1), "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v1 0");
        assert_eq!(fs::read(fx.dst("in/tree/d1/f1.txt")).unwrap(), b"v1 1");
        assert_eq!(fs::read(fx.dst("in/tree/d2/f2.txt")).unwrap(), b"v1 2");
        let mode = fs::metadata(fx.src("lib/a.lib")).unwrap().mode();
        assert_eq!(fs::metadata(fx.dst("models/a.lib")).unwrap().mode(), mode);
        assert_eq!(fs::read(fx.dst("top.cir")).unwrap(), b"netlist");
        assert_eq!(fs::read_link(fx.dst("in/tree/d0/link")).unwrap(), Path::new("f0.txt"));
        assert_eq!(fs::read(fx.dst("in/tree/d1/renamed.txt")).unwrap(), b"v1 1");
        assert_eq!(fs::read(fx.dst("in/tree/d0/output.dat")).unwrap(), b"result");
        assert_eq!(fs::read(fx.dst("out.log")).unwrap(), b"log");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn a_deleted_mirrored_folder_comes_back() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::remove_dir_all(fx.dst("in/tree/d0")).unwrap();
        fs::rename(fx.dst("models"), fx.dst("models-moved")).unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(copies(&report), 10 + 1 + 1 + 2, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("in/tree/d0/sub/deep.txt")).unwrap(), b"deep");
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"model a");
        // The watch is set up again: later task edits are still seen.
        fs::write(fx.dst("in/tree/d0/sub/deep.txt"), b"scribbled").unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("in/tree/d0/sub/deep.txt")).unwrap(), b"deep");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn an_edit_that_keeps_size_and_time_is_seen_by_inotify() {
    let fx = Fixture::new();
    let map = setup(&fx);
    let options = MirrorOptions::new();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
    assert!(folder.is_watching());
    let path = fx.dst("in/tree/d0/f3.txt");
    let before = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, b"XX 3").unwrap();
    set_mtime(&path, before);
    assert_eq!(folder.refresh(&options).unwrap().files, 1);
    assert_eq!(fs::read(&path).unwrap(), b"v1 3");
}

#[test]
fn read_only_source_folders_are_refreshed() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("ro/a.txt", b"a");
        let map = MirrorMap::new().entry(fx.src("ro"), ".").unwrap();
        set_mode(&fx.src("ro"), 0o555);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        set_mode(&fx.src("ro"), 0o755);
        fx.file("ro/b.txt", b"b");
        set_mode(&fx.src("ro"), 0o555);
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("ro/b.txt")).unwrap(), b"b");
        let dst = fs::metadata(fx.dst("ro")).unwrap();
        assert_eq!(dst.permissions().mode() & 0o777, 0o555);
        let src = fs::metadata(fx.src("ro")).unwrap();
        assert_eq!(dst.modified().unwrap(), src.modified().unwrap());
        set_mode(&fx.src("ro"), 0o755);
        set_mode(&fx.dst("ro"), 0o755);
    }
}

#[test]
fn a_missing_literal_source_is_an_error_and_the_folder_recovers() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::rename(fx.src("top.cir"), fx.src("top.bak")).unwrap();
        match folder.refresh(&options) {
            Err(Error::SourceMissing { path }) => assert_eq!(path, fx.src("top.cir")),
            other => panic!("{options:?}: expected SourceMissing, got {other:?}"),
        }
        assert_eq!(fs::read(fx.dst("top.cir")).unwrap(), b"netlist");
        fs::rename(fx.src("top.bak"), fx.src("top.cir")).unwrap();
        fs::write(fx.dst("in/tree/d0/f0.txt"), b"scribbled").unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v1 0");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn a_glob_that_matches_nothing_yet_picks_up_new_matches() {
    for options in flavours() {
        let fx = Fixture::new();
        fs::create_dir(fx.src("empty")).unwrap();
        fs::create_dir(fx.src("dirs")).unwrap();
        let map = MirrorMap::new()
            .entry(fx.src("empty/*.lib"), "models")
            .unwrap()
            .entry(fx.src("*/x.inc"), "inc")
            .unwrap()
            .entry(fx.src("dirs/*"), "trees")
            .unwrap();
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(folder.report().unmatched.len(), 3);
        fx.file("empty/a.lib", b"a");
        fx.file("empty/x.inc", b"x");
        fx.file("dirs/t/inner.txt", b"inner");
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 3, "{options:?} {report:?}");
        assert!(report.unmatched.is_empty());
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"a");
        assert_eq!(fs::read(fx.dst("inc/x.inc")).unwrap(), b"x");
        assert_eq!(fs::read(fx.dst("trees/t/inner.txt")).unwrap(), b"inner");
        // The new folder is looked after like the others.
        fx.file("dirs/t/more.txt", b"more");
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("trees/t/more.txt")).unwrap(), b"more");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}
