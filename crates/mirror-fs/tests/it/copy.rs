//! The copy engine on real trees: every rule and every bad input.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{Error, MirrorMap, MirrorOptions, Progress, mirror};

use crate::{Fixture, listing, set_mode};

fn opts() -> MirrorOptions {
    MirrorOptions::new()
}

#[test]
fn files_dirs_and_globs_land_in_their_targets() {
    let fx = Fixture::new();
    fx.file("lib/a.lib", b"aaa");
    fx.file("lib/b.lib", b"bb");
    fx.file("lib/c.txt", b"c");
    fx.file("lib/.hidden.lib", b"h");
    fx.file("tree/x/y.txt", b"y");
    fx.file("top.cir", b"top");
    let map = fx.map(&[("lib/*.lib", "models/deep"), ("tree", "."), ("top.cir", "")]);
    let report = mirror(&map, &fx.task, &opts()).unwrap();
    assert_eq!(
        listing(&fx.task),
        [
            "models",
            "models/deep",
            "models/deep/a.lib",
            "models/deep/b.lib",
            "top.cir",
            "tree",
            "tree/x",
            "tree/x/y.txt"
        ]
        .map(PathBuf::from)
    );
    assert_eq!(fs::read(fx.dst("models/deep/a.lib")).unwrap(), b"aaa");
    assert_eq!(
        (report.files, report.dirs, report.symlinks, report.bytes),
        (4, 2, 0, 3 + 2 + 1 + 3)
    );
    assert!(report.unmatched.is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["files"], 4);
    assert!(json["elapsed"].is_f64());
}

#[test]
fn where_two_matched_folders_land_on_one_the_later_gives_its_mode_and_time() {
    // As its files: each folder of `b` lands on the same folder of `a` in a later wave, so
    // the folder ends with `b`'s mode and time, whichever threads listed the two.
    let fx = Fixture::on_tmpfs();
    let (early, late) = (
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000),
    );
    let names: Vec<String> = (0..24).map(|i| format!("d{i:02}.x")).collect();
    for (side, mode, time) in [("a", 0o750, early), ("b", 0o755, late)] {
        for name in &names {
            let dir = fx.src(format!("{side}/{name}"));
            fx.file(dir.join(format!("from-{side}")), side.as_bytes());
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            fs::File::open(&dir).unwrap().set_modified(time).unwrap();
        }
    }
    let map = fx.map(&[("a/*.x", "."), ("b/*.x", ".")]);
    for _ in 0..10 {
        let _ = fs::remove_dir_all(&fx.task);
        fs::create_dir(&fx.task).unwrap();
        mirror(&map, &fx.task, &MirrorOptions::new().threads(4)).unwrap();
        for name in &names {
            let meta = fs::metadata(fx.dst(name)).unwrap();
            assert_eq!(
                (meta.mode() & 0o7777, meta.modified().unwrap()),
                (0o755, late),
                "{name}"
            );
            assert!(fx.dst(format!("{name}/from-a")).is_file());
            assert!(fx.dst(format!("{name}/from-b")).is_file());
        }
    }
}

#[test]
fn where_two_matches_land_on_one_file_the_later_one_wins() {
    // As when the map is copied entry by entry, match by match (and as PyOPUS does): the
    // later copy overwrites. The earlier file is large, so that a copy running beside the
    // later one would still be writing when that one is done.
    let fx = Fixture::on_tmpfs();
    let big = vec![b'a'; 4 << 20];
    fx.file("a/m.lib", &big);
    fx.file("b/m.lib", b"b");
    fx.file("lib/m.lib", &big);
    fx.file("lib/other.lib", b"other");
    /// The map's (source, target) entries, a file of the task folder, what it must hold.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [u8]);
    let cases: [Case<'_>; 4] = [
        // Two entries into one folder.
        (&[("a/m.lib", "."), ("b/m.lib", ".")], "m.lib", b"b"),
        (&[("b/m.lib", "."), ("a/m.lib", ".")], "m.lib", &big),
        // Two matches of one glob: in the glob's (sorted) order.
        (&[("[ab]/m.lib", ".")], "m.lib", b"b"),
        // A file into a folder an earlier entry copied whole.
        (&[("lib", "."), ("b/m.lib", "lib")], "lib/m.lib", b"b"),
    ];
    for (entries, file, content) in cases {
        for _ in 0..10 {
            let mut map = MirrorMap::new();
            for (source, target) in entries {
                map = map.entry(fx.src(source), target).unwrap();
            }
            let _ = fs::remove_dir_all(&fx.task);
            fs::create_dir(&fx.task).unwrap();
            mirror(&map, &fx.task, &opts()).unwrap();
            let got = fs::read(fx.task.join(file)).unwrap();
            assert!(
                got == content,
                "{entries:?}: `{file}` has {} bytes",
                got.len()
            );
        }
    }
    // The rest of the folder is there too.
    assert_eq!(fs::read(fx.task.join("lib/other.lib")).unwrap(), b"other");
}

#[test]
fn literal_missing_source_is_an_error_and_nothing_is_copied() {
    let fx = Fixture::new();
    fx.file("a.txt", b"a");
    let map = fx.map(&[("a.txt", "in"), ("missing.txt", "in")]);
    let err = mirror(&map, &fx.task, &opts()).unwrap_err();
    assert!(matches!(err, Error::SourceMissing { .. }), "{err}");
    assert!(err.to_string().contains("missing.txt"), "{err}");
    assert!(
        listing(&fx.task).is_empty(),
        "the first entry was not copied either"
    );
}

#[test]
fn glob_matching_nothing_is_reported_not_an_error() {
    let fx = Fixture::new();
    fx.file("a.txt", b"a");
    let pattern = fx.src("*.none");
    let map = MirrorMap::new()
        .entry(&pattern, ".")
        .unwrap()
        .entry(fx.src("a.txt"), ".")
        .unwrap();
    let report = mirror(&map, &fx.task, &opts()).unwrap();
    assert_eq!(report.unmatched, vec![pattern]);
    assert_eq!(report.files, 1);
}

#[test]
fn a_file_in_the_way_of_a_folder_is_a_clear_error() {
    let fx = Fixture::new();
    fx.file("tree/sub/x.txt", b"x");
    // The target folder itself is a file.
    fs::write(fx.dst("models"), b"task output").unwrap();
    let map = fx.map(&[("tree/sub/x.txt", "models")]);
    let err = mirror(&map, &fx.task, &opts()).unwrap_err();
    assert!(matches!(err, Error::NotAFolder { .. }), "{err}");
    assert!(err.to_string().contains("models"), "{err}");
    assert_eq!(
        fs::read(fx.dst("models")).unwrap(),
        b"task output",
        "nothing lost"
    );
    // A folder inside a copied tree is a file in the task folder.
    fs::create_dir(fx.dst("tree")).unwrap();
    fs::write(fx.dst("tree/sub"), b"in the way").unwrap();
    let map = fx.map(&[("tree", ".")]);
    let err = mirror(&map, &fx.task, &opts()).unwrap_err();
    assert!(matches!(err, Error::NotAFolder { .. }), "{err}");
    assert!(err.to_string().contains("tree/sub"), "{err}");
    assert_eq!(fs::read(fx.dst("tree/sub")).unwrap(), b"in the way");
}

#[test]
fn a_folder_in_the_way_of_a_file_is_a_clear_error() {
    let fx = Fixture::new();
    fx.file("x.txt", b"x");
    fs::create_dir(fx.dst("x.txt")).unwrap();
    let map = fx.map(&[("x.txt", ".")]);
    let err = mirror(&map, &fx.task, &opts()).unwrap_err();
    assert!(matches!(err, Error::Copy { .. }), "{err}");
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains("x.txt") && msg.contains("folder is in the way"),
        "{msg}"
    );
}

#[test]
fn non_utf8_names_are_matched_and_copied() {
    let fx = Fixture::new();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.lib");
    let odd_dir = std::ffi::OsStr::from_bytes(b"d\xff");
    fx.file(Path::new(odd), b"latin1");
    fx.file(Path::new(odd_dir).join(odd), b"inner");
    let map = fx.map(&[("*.lib", "m"), ("d*", "m")]);
    let report = mirror(&map, &fx.task, &opts()).unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(fs::read(fx.dst("m").join(odd)).unwrap(), b"latin1");
    assert_eq!(
        fs::read(fx.dst("m").join(odd_dir).join(odd)).unwrap(),
        b"inner"
    );
}

#[test]
fn symlinks_inside_a_copied_folder_stay_symlinks() {
    let fx = Fixture::new();
    fx.file("tree/real.txt", b"r");
    fx.file("outside.txt", b"o");
    symlink("real.txt", fx.src("tree/rel")).unwrap();
    symlink(fx.src("outside.txt"), fx.src("tree/abs")).unwrap();
    symlink("nowhere", fx.src("tree/dangling")).unwrap();
    fs::create_dir(fx.src("tree/d")).unwrap();
    symlink("../real.txt", fx.src("tree/d/up")).unwrap();
    let map = fx.map(&[("tree", ".")]);
    let report = mirror(&map, &fx.task, &opts()).unwrap();
    assert_eq!(report.symlinks, 4);
    for (link, target) in [
        ("tree/rel", PathBuf::from("real.txt")),
        ("tree/abs", fx.src("outside.txt")),
        ("tree/dangling", "nowhere".into()),
        ("tree/d/up", "../real.txt".into()),
    ] {
        let meta = fs::symlink_metadata(fx.dst(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link}");
        assert_eq!(fs::read_link(fx.dst(link)).unwrap(), target);
    }
}

#[test]
fn top_level_symlinks_are_followed() {
    let fx = Fixture::new();
    fx.file("real/f.txt", b"f");
    fx.file("file.txt", b"content");
    symlink(fx.src("real"), fx.src("link-dir")).unwrap();
    symlink("file.txt", fx.src("link-file")).unwrap();
    let map = fx.map(&[("link-*", ".")]);
    mirror(&map, &fx.task, &opts()).unwrap();
    let dir = fs::symlink_metadata(fx.dst("link-dir")).unwrap();
    assert!(dir.is_dir(), "a link to a folder gives a copied folder");
    assert_eq!(fs::read(fx.dst("link-dir/f.txt")).unwrap(), b"f");
    let file = fs::symlink_metadata(fx.dst("link-file")).unwrap();
    assert!(file.is_file(), "a link to a file gives a file");
    assert_eq!(fs::read(fx.dst("link-file")).unwrap(), b"content");
}

#[test]
fn mode_and_mtime_are_kept_for_files_and_folders() {
    let fx = Fixture::new();
    let exe = fx.file("tree/run.sh", b"#!/bin/sh\n");
    let ro = fx.file("tree/ro/data", b"d");
    set_mode(&exe, 0o750);
    set_mode(&ro, 0o444);
    let old = SystemTime::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    for p in [&exe, &ro] {
        fs::File::options()
            .write(true)
            .open(p)
            .or_else(|_| fs::File::open(p))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let ro_dir = fx.src("tree/ro");
    set_mode(&ro_dir, 0o555);
    fs::File::open(&ro_dir).unwrap().set_modified(old).unwrap();
    let map = fx.map(&[("tree", ".")]);
    mirror(&map, &fx.task, &opts()).unwrap();
    for rel in ["tree/run.sh", "tree/ro/data", "tree/ro", "tree"] {
        let (s, d) = (
            fs::metadata(fx.src(rel)).unwrap(),
            fs::metadata(fx.dst(rel)).unwrap(),
        );
        assert_eq!(d.permissions().mode(), s.permissions().mode(), "{rel}");
        assert_eq!(
            (d.mtime(), d.mtime_nsec()),
            (s.mtime(), s.mtime_nsec()),
            "{rel}"
        );
    }
    assert_eq!(
        fs::metadata(fx.dst("tree/ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    set_mode(&fx.dst("tree/ro"), 0o755);
    set_mode(&ro_dir, 0o755);
}

#[test]
fn mirroring_twice_overwrites_read_only_copies() {
    let fx = Fixture::new();
    let f = fx.file("ro.txt", b"one");
    set_mode(&f, 0o444);
    let map = MirrorMap::new().entry(&f, ".").unwrap();
    mirror(&map, &fx.task, &opts()).unwrap();
    set_mode(&f, 0o644);
    fs::write(&f, b"two").unwrap();
    set_mode(&f, 0o444);
    mirror(&map, &fx.task, &opts()).unwrap();
    assert_eq!(fs::read(fx.dst("ro.txt")).unwrap(), b"two");
}

#[test]
fn a_symlink_in_the_task_folder_is_replaced_not_written_through() {
    let fx = Fixture::new();
    let f = fx.file("x.txt", b"new");
    let victim = fx.task.join("victim.txt");
    fs::write(&victim, b"keep").unwrap();
    symlink(&victim, fx.dst("x.txt")).unwrap();
    mirror(&MirrorMap::new().entry(&f, ".").unwrap(), &fx.task, &opts()).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert!(fs::symlink_metadata(fx.dst("x.txt")).unwrap().is_file());
}

#[test]
fn a_source_vanishing_mid_copy_is_named() {
    let fx = Fixture::new();
    let gone = fx.file("lib/gone.lib", b"g");
    fx.file("lib/stays.lib", b"s");
    let map = fx.map(&[("lib/*.lib", "m")]);
    let to_remove = gone.clone();
    let options = MirrorOptions::new().after_plan(move || fs::remove_file(&to_remove).unwrap());
    let err = mirror(&map, &fx.task, &options).unwrap_err();
    assert!(matches!(err, Error::SourceVanished { .. }), "{err}");
    assert!(err.to_string().contains("gone.lib"), "{err}");
    assert!(!fx.dst("m").exists(), "the partial copy is removed");

    // A whole folder vanishing after the plan.
    let fx = Fixture::new();
    fx.file("tree/sub/a.txt", b"a");
    let tree = fx.src("tree");
    let map = MirrorMap::new().entry(&tree, ".").unwrap();
    let options = MirrorOptions::new().after_plan(move || fs::remove_dir_all(&tree).unwrap());
    let err = mirror(&map, &fx.task, &options).unwrap_err();
    assert!(matches!(err, Error::SourceVanished { .. }), "{err}");
    assert!(err.to_string().contains("tree"), "{err}");
}

#[test]
fn entries_of_a_mirrored_folder_gone_before_their_copy_are_left_out() {
    let fx = Fixture::new();
    for name in ["m.lib", ".m.lib.tmp", "n.lib"] {
        fx.file(format!("models/{name}"), name.as_bytes());
    }
    let folder = fx.src("models");
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&calls);
    // After the first copy, the others are deleted or renamed away (an editor saving):
    // listed, and gone when their turn comes.
    let options = MirrorOptions::new().threads(1).after_copy(move |copied| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            for entry in fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path != copied {
                    fs::remove_file(path).unwrap();
                }
            }
        }
    });
    let report = mirror(&fx.map(&[("models", "m")]), &fx.task, &options).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one copy: the others were gone"
    );
    assert_eq!(report.files, 1);
    let left: Vec<_> = fs::read_dir(fx.dst("m/models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let name = left[0].to_str().unwrap();
    assert_eq!(
        fs::read(fx.dst("m/models").join(name)).unwrap(),
        name.as_bytes()
    );
}

#[test]
fn progress_is_reported_and_ends_complete() {
    let fx = Fixture::new();
    for i in 0..300 {
        fx.file(format!("tree/d{}/f{i}", i % 3), b"0123456789");
    }
    let calls = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(None::<Progress>));
    let (c, l) = (Arc::clone(&calls), Arc::clone(&last));
    let options = MirrorOptions::new().threads(2).progress(move |p| {
        c.fetch_add(1, Ordering::Relaxed);
        *l.lock().unwrap() = Some(*p);
    });
    let report = mirror(&fx.map(&[("tree", ".")]), &fx.task, &options).unwrap();
    assert_eq!(report.files, 300);
    assert_eq!(report.bytes, 3000);
    assert!(calls.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        *last.lock().unwrap(),
        Some(Progress {
            done: 300,
            total: 300,
            bytes: 3000
        })
    );
}

#[test]
fn large_files_are_copied_exactly_with_any_thread_count() {
    let fx = Fixture::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fx.file("big/a.bin", &data);
    fx.file("big/b.bin", &data[..1_000_001]);
    fx.file("big/empty", b"");
    for threads in [1, 2, 5] {
        let task = fx.task.join(format!("t{threads}"));
        fs::create_dir(&task).unwrap();
        let report = mirror(
            &fx.map(&[("big", ".")]),
            &task,
            &MirrorOptions::new().threads(threads),
        )
        .unwrap();
        assert_eq!(report.bytes, 4_000_001);
        assert_eq!(fs::read(task.join("big/a.bin")).unwrap(), data);
        assert_eq!(
            fs::read(task.join("big/b.bin")).unwrap(),
            &data[..1_000_001]
        );
        assert_eq!(fs::read(task.join("big/empty")).unwrap(), b"");
    }
}

/// A tiny tmpfs, unmounted (and its mount point removed) on drop.
struct TinyTmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TinyTmpfs {
    fn mount(size: &str) -> Result<TinyTmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TinyTmpfs { _dir: dir, path })
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn full_disk_removes_the_partial_copy_and_names_the_file() {
    let tmpfs = match TinyTmpfs::mount("64k") {
        Ok(t) => t,
        Err(reason) => {
            println!("skipped: cannot mount a tiny tmpfs ({reason})");
            return;
        }
    };
    let fx = Fixture::new();
    for i in 0..4 {
        fx.file(format!("tree/small{i}.txt"), b"small");
    }
    fx.file("tree/zz-big.bin", &vec![7u8; 256 * 1024]);
    let task = tmpfs.path.join("task");
    fs::create_dir(&task).unwrap();
    fs::write(task.join("task-output.txt"), b"mine").unwrap();
    let map = fx.map(&[("tree", "in")]);
    let err = mirror(&map, &task, &MirrorOptions::new().threads(1)).unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("zz-big.bin"), "{err}");
    assert_eq!(
        listing(&task),
        [PathBuf::from("task-output.txt")],
        "partial copy removed, task file kept"
    );
}
