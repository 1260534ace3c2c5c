//! Refresh: only what changed at the source is copied again; task files are left alone.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{MirrorMap, MirrorOptions, mirror, refresh};

use crate::Fixture;

#[test]
fn refresh_copies_only_what_changed_and_leaves_task_files_alone() {
    let fx = Fixture::new();
    for i in 0..50 {
        fx.file(
            format!("tree/d{}/f{i}.txt", i % 5),
            format!("v1 {i}").as_bytes(),
        );
    }
    symlink("f0.txt", fx.src("tree/d0/link")).unwrap();
    let map = MirrorMap::new().entry(fx.src("tree"), "in").unwrap();
    let first = mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!((first.files, first.symlinks), (50, 1));

    // Nothing changed: nothing copied.
    let report = refresh(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!((report.files, report.symlinks, report.skipped), (0, 0, 51));

    // The task writes an output file and a file next to the inputs.
    fs::write(fx.dst("out.txt"), b"result").unwrap();
    fs::write(fx.dst("in/tree/d1/task-made.txt"), b"task").unwrap();
    // The source changes: one file edited (same size, new mtime), one grows, one is new,
    // one link retargeted; one mirrored file is deleted from the task folder.
    let edited = fx.src("tree/d0/f0.txt");
    fs::write(&edited, b"v2 0").unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&edited)
        .unwrap()
        .set_modified(later)
        .unwrap();
    fs::write(fx.src("tree/d2/f2.txt"), b"v2 two, longer").unwrap();
    fx.file("tree/d3/new.txt", b"new");
    fs::remove_file(fx.src("tree/d0/link")).unwrap();
    symlink("f5.txt", fx.src("tree/d0/link")).unwrap();
    fs::remove_file(fx.dst("in/tree/d4/f4.txt")).unwrap();

    let report = refresh(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!((report.files, report.symlinks), (4, 1), "{report:?}");
    assert_eq!(report.skipped, 51 - 4);
    assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v2 0");
    assert_eq!(
        fs::read(fx.dst("in/tree/d2/f2.txt")).unwrap(),
        b"v2 two, longer"
    );
    assert_eq!(fs::read(fx.dst("in/tree/d3/new.txt")).unwrap(), b"new");
    assert_eq!(fs::read(fx.dst("in/tree/d4/f4.txt")).unwrap(), b"v1 4");
    assert_eq!(
        fs::read_link(fx.dst("in/tree/d0/link")).unwrap(),
        std::path::Path::new("f5.txt")
    );
    assert_eq!(fs::read(fx.dst("out.txt")).unwrap(), b"result");
    assert_eq!(
        fs::read(fx.dst("in/tree/d1/task-made.txt")).unwrap(),
        b"task"
    );
}

#[test]
fn refresh_of_an_empty_folder_is_a_full_mirror() {
    let fx = Fixture::new();
    fx.file("a/b/c.txt", b"c");
    let map = MirrorMap::new().entry(fx.src("a"), ".").unwrap();
    let report = refresh(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(fs::read(fx.dst("a/b/c.txt")).unwrap(), b"c");
}
