//! MirroredFolder with its sources on a local file system: inotify on the source folders
//! stands in for the `stat` of every source file; anything it cannot vouch for is scanned.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirrorReport, MirroredFolder};

use crate::{Fixture, listing, set_mtime};

/// tree/ (3 folders of 10 files) → in/, top.cir → task folder (a top-level match, always
/// looked at).
fn setup(fx: &Fixture) -> MirrorMap {
    for i in 0..30 {
        fx.file(
            format!("tree/d{}/f{i}.txt", i % 3),
            format!("v1 {i:02}").as_bytes(),
        );
    }
    fx.file("top.cir", b"netlist");
    MirrorMap::new()
        .entry(fx.src("tree"), "in")
        .unwrap()
        .entry(fx.src("top.cir"), ".")
        .unwrap()
}

/// Options under which events alone are trusted for an hour, so assertions about what a
/// refresh looked at do not depend on how fast a loaded machine runs the test.
fn events_trusted() -> MirrorOptions {
    MirrorOptions::new().full_scan_every(std::time::Duration::from_secs(3600))
}

/// Mirrors and refreshes once, so the source watch has heard everything since a full scan.
/// `None` when this machine's temp folders are not on a trusted file system.
fn armed(fx: &Fixture, map: &MirrorMap, options: &MirrorOptions) -> Option<MirroredFolder> {
    let mut folder = MirroredFolder::mirror(map, &fx.task, options).unwrap();
    let report = folder.refresh(options).unwrap();
    assert_eq!(report.files, 0, "{report:?}");
    assert_eq!(
        folder.last_scanned(),
        folder.entries(),
        "the first refresh scans"
    );
    if !folder.is_watching_sources() {
        eprintln!("skipped: the temp folder is not on a trusted local file system");
        return None;
    }
    Some(folder)
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// Every kind of source change; returns the refresh's report, the entries it looked at, and
/// the task folder's listing and contents.
fn change_everything(options: &MirrorOptions) -> Option<(MirrorReport, usize, Vec<Vec<u8>>)> {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let trusted = !format!("{options:?}").contains("untrusted_sources: true");
    let mut folder = MirroredFolder::mirror(&map, &fx.task, options).unwrap();
    folder.refresh(options).unwrap();
    if trusted && !folder.is_watching_sources() {
        eprintln!("skipped: the temp folder is not on a trusted local file system");
        return None;
    }
    // Same size, time put back: only an event (or the change time) tells.
    let f0 = fx.src("tree/d0/f0.txt");
    let t0 = mtime(&f0);
    fs::write(&f0, b"v2 00").unwrap();
    set_mtime(&f0, t0);
    fs::OpenOptions::new()
        .append(true)
        .open(fx.src("tree/d1/f1.txt"))
        .unwrap()
        .write_all(b" and more")
        .unwrap();
    fs::File::options()
        .write(true)
        .open(fx.src("tree/d2/f2.txt"))
        .unwrap()
        .set_len(2)
        .unwrap();
    let f3 = fx.src("tree/d0/f3.txt");
    let t3 = mtime(&f3);
    fs::write(fx.src("tree/d0/.f3.tmp"), b"v2 03").unwrap();
    set_mtime(&fx.src("tree/d0/.f3.tmp"), t3);
    fs::rename(fx.src("tree/d0/.f3.tmp"), &f3).unwrap();
    fs::set_permissions(fx.src("tree/d1/f4.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fx.file("tree/d1/new.txt", b"new");
    fx.file("tree/d2/newdir/x.txt", b"x");
    fs::remove_file(fx.src("tree/d2/f5.txt")).unwrap();

    let report = folder.refresh(options).unwrap();
    let scanned = folder.last_scanned();
    let again = folder.refresh(options).unwrap();
    assert_eq!(again.files, 0, "{again:?}");
    let dst = fx.dst("in/tree");
    let mut contents = Vec::new();
    for path in listing(&dst) {
        let full = dst.join(&path);
        let meta = fs::symlink_metadata(&full).unwrap();
        contents.push(format!("{} {:o}", path.display(), meta.permissions().mode()).into_bytes());
        if meta.is_file() {
            contents.push(fs::read(&full).unwrap());
        }
    }
    assert_eq!(fs::read(dst.join("d0/f0.txt")).unwrap(), b"v2 00");
    assert_eq!(fs::read(dst.join("d1/f1.txt")).unwrap(), b"v1 01 and more");
    assert_eq!(fs::read(dst.join("d2/f2.txt")).unwrap(), b"v1");
    assert_eq!(fs::read(dst.join("d0/f3.txt")).unwrap(), b"v2 03");
    let f4 = fs::metadata(dst.join("d1/f4.txt")).unwrap();
    assert_eq!(f4.permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read(dst.join("d1/new.txt")).unwrap(), b"new");
    assert_eq!(fs::read(dst.join("d2/newdir/x.txt")).unwrap(), b"x");
    assert_eq!(
        fs::read(dst.join("d2/f5.txt")).unwrap(),
        b"v1 05",
        "the copy stays"
    );
    Some((report, scanned, contents))
}

#[test]
fn nothing_changed_needs_no_scan() {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let options = events_trusted();
    let Some(mut folder) = armed(&fx, &map, &options) else {
        return;
    };
    for _ in 0..3 {
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files + report.symlinks, 0, "{report:?}");
        assert_eq!(report.skipped, 31);
        assert_eq!(folder.last_scanned(), 1, "only the top-level match");
    }
}

#[test]
fn every_source_change_is_copied_without_a_scan() {
    let Some((report, scanned, trusted)) = change_everything(&events_trusted()) else {
        return;
    };
    assert_eq!(report.files, 7, "{report:?}");
    assert!(scanned < 31, "looked at {scanned} of 31");
    let (untrusted_report, untrusted_scanned, untrusted) =
        change_everything(&MirrorOptions::new().untrusted_sources()).unwrap();
    assert_eq!(untrusted_scanned, 31, "untrusted sources are scanned");
    assert_eq!(untrusted_report.files, report.files);
    assert_eq!(untrusted, trusted, "same result either way");
}

#[test]
fn untrusted_sources_are_not_watched() {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let options = MirrorOptions::new().untrusted_sources();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
    assert!(!folder.is_watching_sources());
    for _ in 0..2 {
        assert_eq!(folder.refresh(&options).unwrap().files, 0);
        assert_eq!(folder.last_scanned(), 31);
    }
}

#[test]
fn a_hard_linked_source_edited_through_its_other_name_is_copied_again() {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let outside = fx.src("elsewhere/f7.txt");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::hard_link(fx.src("tree/d1/f7.txt"), &outside).unwrap();
    let options = events_trusted();
    let Some(mut folder) = armed(&fx, &map, &options) else {
        return;
    };
    assert_eq!(folder.refresh(&options).unwrap().files, 0);
    assert_eq!(
        folder.last_scanned(),
        2,
        "the linked file and the top-level match"
    );
    fs::write(&outside, b"edited elsewhere").unwrap();
    let report = folder.refresh(&options).unwrap();
    assert_eq!(report.files, 1, "{report:?}");
    assert_eq!(
        fs::read(fx.dst("in/tree/d1/f7.txt")).unwrap(),
        b"edited elsewhere"
    );
}

/// Known gap: making a hard link tells only watches on the file itself, not its folder, so
/// the file's link count recorded as 1 stays and edits through the new name go unseen until
/// the next full scan.
#[test]
fn a_hard_link_made_after_the_mirror_is_followed_by_the_next_full_scan() {
    // No event reaches the watched folder for an edit through a link made later; the
    // periodic full scan (every FULL_SCAN_EVERY, here at once) catches it.
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let options = MirrorOptions::new().full_scan_every(std::time::Duration::ZERO);
    let Some(mut folder) = armed(&fx, &map, &options) else {
        return;
    };
    let outside = fx.src("elsewhere/f8.txt");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::hard_link(fx.src("tree/d2/f8.txt"), &outside).unwrap();
    folder.refresh(&options).unwrap();
    fs::write(&outside, b"edited elsewhere").unwrap();
    folder.refresh(&options).unwrap();
    assert_eq!(
        fs::read(fx.dst("in/tree/d2/f8.txt")).unwrap(),
        b"edited elsewhere"
    );
}

#[test]
fn a_lost_watch_falls_back_to_the_scan_and_rearms() {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let options = events_trusted();
    let Some(mut folder) = armed(&fx, &map, &options) else {
        return;
    };
    // Moved away and back: its watch reports the move, so nothing it says is trusted.
    fs::rename(fx.src("tree/d1"), fx.src("d1-away")).unwrap();
    fs::write(fx.src("d1-away/f1.txt"), b"while away").unwrap();
    fs::rename(fx.src("d1-away"), fx.src("tree/d1")).unwrap();
    let report = folder.refresh(&options).unwrap();
    assert_eq!(folder.last_scanned(), 31, "a full scan");
    assert_eq!(report.files, 1, "{report:?}");
    assert_eq!(
        fs::read(fx.dst("in/tree/d1/f1.txt")).unwrap(),
        b"while away"
    );
    assert!(folder.is_watching_sources(), "armed again");
    folder.refresh(&options).unwrap();
    assert_eq!(folder.last_scanned(), 1);
}

#[test]
fn a_source_tree_swapped_by_renaming_an_ancestor_is_copied_again() {
    let fx = Fixture::on_tmpfs();
    fx.file("proj/tree/a.txt", b"old a");
    let map = MirrorMap::new().entry(fx.src("proj/tree"), ".").unwrap();
    let options = events_trusted();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
    folder.refresh(&options).unwrap();
    if !folder.is_watching_sources() {
        eprintln!("skipped: the temp folder is not on a trusted local file system");
        return;
    }
    // No watched folder moves or changes: only the path names another folder now.
    fs::rename(fx.src("proj"), fx.src("proj-old")).unwrap();
    fx.file("proj/tree/a.txt", b"new a");
    let swapped: PathBuf = fx.src("proj/tree/a.txt");
    set_mtime(&swapped, SystemTime::now() - Duration::from_secs(60));
    let report = folder.refresh(&options).unwrap();
    assert_eq!(report.files, 1, "{report:?}");
    assert_eq!(fs::read(fx.dst("tree/a.txt")).unwrap(), b"new a");
}

#[test]
fn events_alone_are_trusted_only_until_the_next_full_scan_is_due() {
    let fx = Fixture::on_tmpfs();
    let map = setup(&fx);
    let Some(mut folder) = armed(&fx, &map, &events_trusted()) else {
        return;
    };
    folder.refresh(&events_trusted()).unwrap();
    assert!(folder.last_scanned() < folder.entries(), "events alone");
    let due = MirrorOptions::new().full_scan_every(std::time::Duration::ZERO);
    folder.refresh(&due).unwrap();
    assert_eq!(
        folder.last_scanned(),
        folder.entries(),
        "a full scan when due"
    );
}
