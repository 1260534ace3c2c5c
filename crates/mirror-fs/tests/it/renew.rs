//! MirroredFolder::renew: a temporary task folder handed on from the task before is made
//! exactly what a fresh mirror makes, whatever that task did to it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{Error, MirrorMap, MirrorOptions, MirroredFolder};

use crate::{Fixture, set_mode, set_mtime};

/// With inotify on the task folder (and on the sources), and with every copy verified.
fn flavours() -> [MirrorOptions; 2] {
    [MirrorOptions::new(), MirrorOptions::new().no_inotify()]
}

/// The owner's own file at the top of the task folder, which a renewal leaves.
const OWN: &str = ".owner-file";

/// tree/ (folders, files, a symlink) → in/tree/, lib/*.lib → models/, top.cir → task folder,
/// lib/more/ → deep/er/ (folders on the way made by the mirror).
fn setup(fx: &Fixture) -> MirrorMap {
    for i in 0..12 {
        fx.file(
            format!("tree/d{}/f{i}.txt", i % 3),
            format!("v1 {i:02}").as_bytes(),
        );
    }
    fx.file("tree/d0/sub/deep.txt", b"deep");
    symlink("f0.txt", fx.src("tree/d0/link")).unwrap();
    fx.file("lib/a.lib", b"model a");
    fx.file("lib/b.lib", b"model b");
    fx.file("lib/more/x.inc", b"include");
    fx.file("top.cir", b"netlist");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for dir in ["tree", "tree/d0", "tree/d1", "tree/d2", "tree/d0/sub"] {
        set_mtime(&fx.src(dir), old);
    }
    fx.map(&[
        ("tree", "in"),
        ("lib/*.lib", "models"),
        ("top.cir", "."),
        ("lib/more", "deep/er"),
    ])
}

/// What a folder holds, as a task would see it: per path, the kind, the permission bits, the
/// content or link target, and the modification time of files, links and the folders a
/// mirror copies from a source (`in/tree/...`, `deep/er/more/...`); the folders it makes are
/// made when it runs, so their times are not compared.
/// Kind, permission bits, content or link target, modification time when compared.
type Seen = (char, u32, Vec<u8>, Option<(i64, i64)>);

fn tree(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    for rel in crate::listing(root) {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        let time = Some((meta.mtime(), meta.mtime_nsec()));
        let mode = meta.permissions().mode() & 0o7777;
        let entry = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ('l', 0, target.into_os_string().into_encoded_bytes(), time)
        } else if meta.is_dir() {
            let copied = rel.starts_with("in/tree") || rel.starts_with("deep/er/more");
            ('d', mode, Vec::new(), copied.then_some(time).flatten())
        } else {
            ('f', mode, fs::read(&path).unwrap(), time)
        };
        out.insert(rel, entry);
    }
    out
}

/// What a task might do to its folder: outputs everywhere, copies edited (one with its size
/// and time put back, one through a second name), renamed, removed and `chmod`-ed, a copied
/// folder's mode changed.
fn scribble(fx: &Fixture) {
    fs::write(fx.dst("out.txt"), "result").unwrap();
    fs::create_dir_all(fx.dst("results/x")).unwrap();
    fs::write(fx.dst("results/x/y.txt"), "deep result").unwrap();
    symlink("/etc/passwd", fx.dst("evil")).unwrap();
    nix::unistd::mkfifo(
        &fx.dst("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::write(fx.dst("in/tree/d0/new.txt"), "new in a copied folder").unwrap();
    fs::create_dir(fx.dst("in/tree/d1/scratch")).unwrap();
    fs::write(fx.dst("in/tree/d1/scratch/s"), "s").unwrap();
    fs::write(fx.dst("deep/er/more/extra"), "e").unwrap();
    // Same size, time put back: inotify hears it, and its change time moved.
    let f1 = fx.dst("in/tree/d1/f1.txt");
    let before = fs::metadata(&f1).unwrap().modified().unwrap();
    fs::write(&f1, "XX 01").unwrap();
    set_mtime(&f1, before);
    // Through a second name outside the watched folders, time put back; the name stays.
    fs::create_dir(fx.dst("elsewhere")).unwrap();
    let f2 = fx.dst("in/tree/d2/f2.txt");
    let before = fs::metadata(&f2).unwrap().modified().unwrap();
    fs::hard_link(&f2, fx.dst("elsewhere/f2")).unwrap();
    fs::write(fx.dst("elsewhere/f2"), "YY 02").unwrap();
    set_mtime(&f2, before);
    set_mode(&fx.dst("models/a.lib"), 0o600);
    fs::remove_file(fx.dst("top.cir")).unwrap();
    fs::rename(fx.dst("in/tree/d0/f3.txt"), fx.dst("moved.txt")).unwrap();
    set_mode(&fx.dst("in/tree/d0"), 0o700);
}

/// Writes the owner's file, with a fixed time so that two folders compare equal.
fn own_file(task: &Path) {
    fs::write(task.join(OWN), "owner").unwrap();
    set_mtime(
        &task.join(OWN),
        SystemTime::UNIX_EPOCH + Duration::from_secs(5),
    );
}

fn keep() -> [&'static OsStr; 1] {
    [OsStr::new(OWN)]
}

#[test]
fn a_renewed_folder_is_what_a_fresh_mirror_makes() {
    for (i, options) in flavours().into_iter().enumerate() {
        let fx = Fixture::new();
        let map = setup(&fx);
        own_file(&fx.task);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        scribble(&fx);
        // The sources change too: one gone, one new, one edited.
        fs::remove_file(fx.src("lib/b.lib")).unwrap();
        fx.file("lib/c.lib", b"model c");
        fs::write(fx.src("tree/d0/f0.txt"), "v2 00 longer").unwrap();
        set_mtime(
            &fx.src("tree/d0"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(7),
        );

        let report = folder.renew(&options, &keep()).unwrap();

        let fresh = Fixture::new();
        let fresh_task = fresh.task.clone();
        own_file(&fresh_task);
        parvm_mirror_fs::mirror(&map, &fresh_task, &options).unwrap();
        assert_eq!(tree(&fx.task), tree(&fresh_task), "flavour {i}");
        assert!(report.removed >= 9, "flavour {i}: {report:?}");
        // Nothing left to do: a second renewal copies and removes nothing.
        let again = folder.renew(&options, &keep()).unwrap();
        assert_eq!(
            (again.files, again.removed),
            (0, 0),
            "flavour {i}: {again:?}"
        );
        assert_eq!(tree(&fx.task), tree(&fresh_task), "flavour {i}");
    }
}

#[test]
fn a_symlink_planted_for_a_folder_is_removed_not_followed() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), "keep me").unwrap();
        // The folders on the way to a target, and a copied folder, become symlinks.
        fs::remove_dir_all(fx.dst("deep")).unwrap();
        symlink(outside.path(), fx.dst("deep")).unwrap();
        fs::remove_dir_all(fx.dst("in/tree/d2")).unwrap();
        symlink(outside.path(), fx.dst("in/tree/d2")).unwrap();
        // On an error the caller empties the folder and mirrors afresh.
        if folder.renew(&options, &[]).is_ok() {
            let fresh = Fixture::new();
            parvm_mirror_fs::mirror(&map, &fresh.task, &options).unwrap();
            assert_eq!(tree(&fx.task), tree(&fresh.task));
        }
        assert_eq!(
            fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep me"
        );
        assert_eq!(crate::listing(outside.path()), [PathBuf::from("precious")]);
    }
}

#[test]
fn a_folder_the_mirror_made_with_another_mode_is_not_renewable() {
    let fx = Fixture::new();
    let map = setup(&fx);
    let options = MirrorOptions::new();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
    set_mode(&fx.dst("models"), 0o500);
    let err = folder.renew(&options, &[]).unwrap_err();
    assert!(matches!(err, Error::NotRenewable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("models") && text.contains("mirror into it afresh"),
        "{text}"
    );
    set_mode(&fx.dst("models"), 0o755);
}
