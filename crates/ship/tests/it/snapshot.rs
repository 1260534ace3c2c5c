//! Snapshots: what they hold, mirroring from them, the cheap rebuild, concurrent builders,
//! corrupt blobs and a full disk.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use parvm_mirror_fs::{MirrorMap, MirrorOptions, mirror};
use parvm_ship::{Digest, Error, HostCache};

use crate::{ROOMY, fetch_all, scanner, ship, tree, user_dir};

/// A shared tree with globs' worth of files, a symlink, a read-only folder and odd modes.
fn shared_tree(root: &Path) {
    fs::create_dir_all(root.join("lib/sub")).unwrap();
    fs::write(root.join("lib/a.lib"), "model a").unwrap();
    fs::write(root.join("lib/b.lib"), "model b").unwrap();
    fs::write(root.join("lib/notes.txt"), "not shipped").unwrap();
    fs::write(root.join("lib/sub/c.lib"), "model c").unwrap();
    fs::create_dir_all(root.join("data/ro")).unwrap();
    fs::write(root.join("data/ro/frozen"), "frozen").unwrap();
    fs::write(root.join("data/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("data/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("ro/frozen", root.join("data/link")).unwrap();
    fs::set_permissions(root.join("data/ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(root.join("top.cir"), "netlist").unwrap();
    // Top-level symlinks into the root are followed, to a folder and to a file.
    symlink("lib/sub", root.join("sublink")).unwrap();
    symlink(root.join("top.cir"), root.join("toplink")).unwrap();
}

const SOURCES: [&str; 5] = ["lib/*.lib", "data", "top.cir", "sublink", "toplink"];

/// [`shared_tree`] shipped into a fresh host cache, where most tests here start.
struct Shipped {
    shared: tempfile::TempDir,
    user: crate::UserDir,
    cache: HostCache,
    scan: parvm_ship::Scanner,
    manifest: std::sync::Arc<parvm_ship::Manifest>,
    snapshot: parvm_ship::Snapshot,
}

fn shipped() -> Shipped {
    let shared = tempfile::tempdir().unwrap();
    shared_tree(shared.path());
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &SOURCES);
    let (manifest, snapshot) = ship(&cache, &mut scan);
    Shipped {
        shared,
        user,
        cache,
        scan,
        manifest,
        snapshot,
    }
}

fn map(root: &Path) -> MirrorMap {
    MirrorMap::new()
        .entry(root.join("lib/*.lib"), "models")
        .unwrap()
        .entry(root.join("data"), ".")
        .unwrap()
        .entry(root.join("top.cir"), ".")
        .unwrap()
        .entry(root.join("sublink"), "linked")
        .unwrap()
        .entry(root.join("toplink"), "linked")
        .unwrap()
        .within(&[root.to_path_buf()])
}

#[test]
fn mirroring_from_a_snapshot_gives_what_mirroring_from_the_shared_root_gives() {
    let shared = tempfile::tempdir().unwrap();
    shared_tree(shared.path());
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (manifest, snapshot) = ship(&cache, &mut scanner(shared.path(), &SOURCES));
    assert_eq!(manifest.file_count(), 7);

    let direct = tempfile::tempdir().unwrap();
    mirror(&map(shared.path()), direct.path(), &MirrorOptions::new()).unwrap();
    let shipped = tempfile::tempdir().unwrap();
    mirror(&map(snapshot.path()), shipped.path(), &MirrorOptions::new()).unwrap();
    // The target folder `models` is made by mirroring, now: its time is not a copy's.
    let without_target_time = |dir: &Path| {
        let mut entries = tree(dir);
        entries
            .iter_mut()
            .filter(|e| e.0 == Path::new("models") || e.0 == Path::new("linked"))
            .for_each(|e| e.3 = (0, 0));
        entries
    };
    assert_eq!(
        without_target_time(shipped.path()),
        without_target_time(direct.path())
    );
    assert!(!snapshot.path().join("lib/notes.txt").exists());
    // The snapshot's own entries have the shared entries' modes and times.
    let shared_entries = tree(shared.path());
    assert!(snapshot.path().join("sublink").is_dir() && snapshot.path().join("toplink").is_file());
    for entry in tree(snapshot.path())
        .into_iter()
        // Top-level links are followed, and `lib` is only on the way to matches.
        .filter(|e| {
            !e.0.starts_with("sublink") && !e.0.starts_with("toplink") && e.0 != Path::new("lib")
        })
    {
        let same = shared_entries.iter().find(|e| e.0 == entry.0).unwrap();
        assert_eq!(&entry, same, "{}", entry.0.display());
    }
    assert_eq!(fs::metadata(snapshot.path()).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn a_second_snapshot_of_the_same_manifest_is_the_first() {
    let Shipped {
        shared: _shared,
        user,
        cache,
        scan: _scan,
        manifest,
        snapshot: first,
    } = shipped();
    assert!(cache.missing(&manifest).is_empty());
    let second = cache.snapshot(&manifest).unwrap();
    assert_eq!(first.path(), second.path());
    // Another process (a reopened cache) finds it too, without any blob.
    drop((first, second));
    for blob in manifest.blobs() {
        let path = cache
            .path()
            .join("blobs")
            .join(&blob.0.to_string()[..2])
            .join(blob.0.to_string());
        fs::remove_file(path).unwrap();
    }
    let reopened = HostCache::open(&user.path, ROOMY).unwrap();
    assert!(reopened.missing(&manifest).is_empty());
    reopened.snapshot(&manifest).unwrap();
}

#[test]
fn one_changed_file_costs_one_blob_and_links() {
    let shared = tempfile::tempdir().unwrap();
    fs::create_dir(shared.path().join("many")).unwrap();
    for i in 0..50 {
        fs::write(shared.path().join(format!("many/{i}")), format!("file {i}")).unwrap();
    }
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &["many"]);
    let (_, first) = ship(&cache, &mut scan);
    fs::write(shared.path().join("many/7"), "changed").unwrap();
    let manifest = scan.manifest().unwrap();
    assert_eq!(
        fetch_all(&cache, &scan, &manifest),
        1,
        "only the changed file is fetched"
    );
    let second = cache.snapshot(&manifest).unwrap();
    assert_ne!(first.path(), second.path());
    for i in 0..50 {
        let a = fs::metadata(first.path().join(format!("many/{i}"))).unwrap();
        let b = fs::metadata(second.path().join(format!("many/{i}"))).unwrap();
        assert_eq!(a.ino() == b.ino(), i != 7, "file {i}");
    }
    assert_eq!(fs::read(second.path().join("many/7")).unwrap(), b"changed");
}

#[test]
fn concurrent_builders_agree_on_one_snapshot() {
    let shared = tempfile::tempdir().unwrap();
    shared_tree(shared.path());
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let scan = scanner(shared.path(), &SOURCES);
    let mut scan = scan;
    let manifest = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &manifest);
    let paths: Vec<_> = std::thread::scope(|s| {
        let builders: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    // Each thread its own handle, as each worker process has its own.
                    let mine = HostCache::open(&user.path, ROOMY).unwrap();
                    let snap = mine.snapshot(&manifest).unwrap();
                    (snap.path().to_path_buf(), tree(snap.path()))
                })
            })
            .collect();
        builders.into_iter().map(|b| b.join().unwrap()).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    let leftovers: Vec<_> = fs::read_dir(cache.path().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_corrupted_blob_is_removed_reported_and_fetched_again() {
    let shared = tempfile::tempdir().unwrap();
    shared_tree(shared.path());
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &SOURCES);
    let manifest = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &manifest);
    let (digest, _, shown) = manifest
        .blobs()
        .into_iter()
        .find(|b| b.2 == Path::new("top.cir"))
        .unwrap();
    let hex = digest.to_string();
    let blob = cache.path().join("blobs").join(&hex[..2]).join(&hex);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&blob, "netlisT").unwrap();
    match cache.snapshot(&manifest) {
        Err(e @ Error::CorruptBlob { .. }) => {
            let text = e.to_string();
            assert!(text.contains("top.cir") && text.contains(&hex), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!blob.exists());
    let missing = cache.missing(&manifest);
    assert_eq!(missing.len(), 1);
    assert_eq!((missing[0].0, &missing[0].2), (digest, &shown));
    assert_eq!(fetch_all(&cache, &scan, &manifest), 1);
    let snapshot = cache.snapshot(&manifest).unwrap();
    assert_eq!(
        fs::read(snapshot.path().join("top.cir")).unwrap(),
        b"netlist"
    );
    assert!(
        fs::read_dir(cache.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the failed build was removed"
    );
}

#[test]
fn a_missing_blob_is_named() {
    let shared = tempfile::tempdir().unwrap();
    fs::write(shared.path().join("f"), "x").unwrap();
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let manifest = scanner(shared.path(), &["f"]).manifest().unwrap();
    match cache.snapshot(&manifest) {
        Err(e @ Error::BlobMissing { .. }) => assert!(e.to_string().contains("`f`"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Runs the body of [`full_disk_child`] in a private mount namespace with a 1 MiB tmpfs.
#[test]
fn a_full_disk_is_refused_before_building() {
    crate::on_a_small_tmpfs("snapshot::full_disk_child", "1m", "full disk: checked");
}

/// The child of [`a_full_disk_is_refused_before_building`]; does nothing when run alone.
#[test]
fn full_disk_child() {
    let Some(mount) = std::env::var_os("PARVM_SHIP_FULL_DISK") else {
        return;
    };
    let mount = Path::new(&mount);
    let shared = tempfile::tempdir().unwrap();
    fs::write(shared.path().join("big"), vec![7u8; 600 << 10]).unwrap();
    let user = mount.join("parvm-test");
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
        .create(&user)
        .unwrap();
    let cache = HostCache::open(&user, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &["big"]);
    let manifest = scan.manifest().unwrap();
    assert_eq!(fetch_all(&cache, &scan, &manifest), 1, "the blob fits");
    // Its snapshot links the blob: it needs no room.
    drop(cache.snapshot(&manifest).unwrap());
    let fetched_at = fs::metadata(shared.path().join("big"))
        .unwrap()
        .modified()
        .unwrap();
    // The same content with another time needs a copy, which does not fit.
    fs::File::options()
        .write(true)
        .open(shared.path().join("big"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
    let manifest = scan.manifest().unwrap();
    assert_eq!(fetch_all(&cache, &scan, &manifest), 0, "the blob is there");
    match cache.snapshot(&manifest) {
        Err(e @ Error::NoSpace { needed, free, .. }) => {
            assert_eq!(needed, 600 << 10);
            assert!(free < needed);
            let text = e.to_string();
            assert!(
                text.contains("snapshots") && text.contains(&needed.to_string()),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        fs::read_dir(cache.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    // A second blob does not fit at all: the write fails and leaves nothing behind.
    fs::write(shared.path().join("big2"), vec![8u8; 600 << 10]).unwrap();
    let mut scan2 = scanner(shared.path(), &["big2"]);
    let manifest2 = scan2.manifest().unwrap();
    let (digest, size, shown) = cache.missing(&manifest2).remove(0);
    let parvm_ship::Begin::Mine(mut writer) = cache.begin(digest, size, &shown).unwrap() else {
        panic!("not mine")
    };
    let failed = writer.write(&vec![8u8; 600 << 10]);
    match failed {
        Err(e @ Error::DiskFull { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("claims") && text.contains("PARALLEL_LOCAL_STORAGE"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(writer);
    assert!(crate::work_files(&cache).is_empty());
    // Not a byte left: the pin of a snapshot that needs no room cannot be written, and the
    // half-made pin is removed at once.
    let filler = mount.join("filler");
    let mut fill = fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut fill, &[0u8; 4096]).is_ok() {}
    drop(fill);
    fs::File::options()
        .write(true)
        .open(shared.path().join("big"))
        .unwrap()
        .set_modified(fetched_at)
        .unwrap();
    let manifest = scan.manifest().unwrap();
    match cache.snapshot(&manifest) {
        Err(Error::DiskFull { action, .. }) => assert_eq!(action, "write pin"),
        other => panic!("{other:?}"),
    }
    assert!(crate::work_files(&cache).is_empty());
    fs::remove_file(&filler).unwrap();
    println!("full disk: checked");
}

#[test]
fn a_damaged_blob_takes_down_the_snapshots_sharing_its_file() {
    let shared = tempfile::tempdir().unwrap();
    fs::write(shared.path().join("a"), "alpha").unwrap();
    fs::write(shared.path().join("b"), "beta").unwrap();
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &["*"]);
    let (_, first) = ship(&cache, &mut scan);
    let blob = cache
        .path()
        .join("blobs")
        .join(&Digest::of(b"alpha").to_string()[..2])
        .join(Digest::of(b"alpha").to_string());
    assert_eq!(
        fs::metadata(&blob).unwrap().ino(),
        fs::metadata(first.path().join("a")).unwrap().ino(),
        "the snapshot's file is its blob"
    );
    let first_path = first.path().to_path_buf();
    drop(first);
    // Damaged at rest, in place: the first snapshot is damaged with it.
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob, "alphA").unwrap();
    fs::write(shared.path().join("c"), "gamma").unwrap();
    let manifest = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &manifest);
    match cache.snapshot(&manifest) {
        Err(e @ Error::CorruptBlob { .. }) => assert!(e.to_string().contains("for `a`"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(!blob.exists(), "the damaged blob is removed");
    assert!(!first_path.exists(), "and the snapshot sharing it");
    // Fetched again, every snapshot of the old and new manifest is whole.
    assert_eq!(fetch_all(&cache, &scan, &manifest), 1);
    let second = cache.snapshot(&manifest).unwrap();
    assert_eq!(fs::read(second.path().join("a")).unwrap(), b"alpha");
    assert_eq!(fs::read(second.path().join("c")).unwrap(), b"gamma");
}

/// One step of changes to [`shared_tree`]: each kind of change a patch must carry.
fn change(root: &Path, step: usize) {
    let ro = root.join("data/ro");
    match step {
        // One file's content.
        0 => fs::write(root.join("lib/a.lib"), "model a, changed").unwrap(),
        // A mode, a time, a new file in a read-only folder, a symlink's target.
        1 => {
            fs::set_permissions(root.join("data/run.sh"), fs::Permissions::from_mode(0o700))
                .unwrap();
            fs::File::options()
                .write(true)
                .open(root.join("lib/b.lib"))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30))
                .unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(ro.join("new"), "new in a read-only folder").unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
            fs::remove_file(root.join("data/link")).unwrap();
            symlink("run.sh", root.join("data/link")).unwrap();
        }
        // A file becomes a folder, a folder goes, a new folder with files comes.
        2 => {
            fs::remove_file(root.join("top.cir")).unwrap();
            fs::create_dir(root.join("top.cir")).unwrap();
            fs::write(root.join("top.cir/inner"), "inner").unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
            fs::remove_dir_all(&ro).unwrap();
            fs::create_dir_all(root.join("data/fresh/deeper")).unwrap();
            fs::write(root.join("data/fresh/deeper/f"), "model a").unwrap();
        }
        // Two files with equal content but different times (one link, one copy), and a
        // folder becomes a file again.
        _ => {
            fs::write(root.join("lib/a.lib"), "model b").unwrap();
            fs::remove_dir_all(root.join("top.cir")).unwrap();
            fs::write(root.join("top.cir"), "netlist again").unwrap();
        }
    }
}

#[test]
fn a_patched_snapshot_is_the_snapshot_built_afresh_and_costs_what_changed() {
    let Shipped {
        shared,
        user: _user,
        cache,
        mut scan,
        mut manifest,
        mut snapshot,
    } = shipped();
    for step in 0..4 {
        let before = snapshot.path().to_path_buf();
        let unchanged_ino = fs::metadata(before.join("sublink/c.lib")).unwrap().ino();
        change(shared.path(), step);
        let next = scan.manifest().unwrap();
        fetch_all(&cache, &scan, &next);
        let patched = cache
            .snapshot_after(&next, Some((snapshot, &manifest)))
            .unwrap();
        assert!(
            !before.exists(),
            "step {step}: the old snapshot became the new one"
        );
        // Built afresh by another cache handle (as another process would) elsewhere.
        let other_user = user_dir();
        let other = HostCache::open(&other_user.path, ROOMY).unwrap();
        fetch_all(&other, &scan, &next);
        let fresh = other.snapshot(&next).unwrap();
        assert_eq!(tree(patched.path()), tree(fresh.path()), "step {step}");
        // What did not change was left alone: the same file, not a new link.
        assert_eq!(
            fs::metadata(patched.path().join("sublink/c.lib"))
                .unwrap()
                .ino(),
            unchanged_ino
        );
        (manifest, snapshot) = (next, patched);
    }
}

/// Makes change `step` to the shared tree, fetches what it needs and takes its snapshot
/// after `held` (patched from it when nobody else reads it): the new manifest and snapshot.
fn changed_after(
    (shared, cache, scan): (&Path, &HostCache, &mut parvm_ship::Scanner),
    step: usize,
    held: (parvm_ship::Snapshot, &parvm_ship::Manifest),
) -> (std::sync::Arc<parvm_ship::Manifest>, parvm_ship::Snapshot) {
    change(shared, step);
    let next = scan.manifest().unwrap();
    fetch_all(cache, scan, &next);
    let snapshot = cache.snapshot_after(&next, Some(held)).unwrap();
    (next, snapshot)
}

/// [`shipped`], and the same snapshot held by another process of the host: its own cache
/// handle and snapshot.
fn held_by_another() -> (Shipped, (HostCache, parvm_ship::Snapshot)) {
    let shipped = shipped();
    let other = HostCache::open(&shipped.user.path, ROOMY).unwrap();
    let theirs = other.snapshot(&shipped.manifest).unwrap();
    (shipped, (other, theirs))
}

#[test]
fn a_snapshot_another_holder_uses_is_never_patched() {
    // Another process of the host holds the same snapshot.
    let (mut s, (_other, theirs)) = held_by_another();
    let before = tree(theirs.path());
    let here = (s.shared.path(), &s.cache, &mut s.scan);
    let (next, mine) = changed_after(here, 0, (s.snapshot, &s.manifest));
    assert_ne!(mine.path(), theirs.path());
    assert_eq!(tree(theirs.path()), before, "theirs is untouched");
    assert_eq!(
        fs::read(mine.path().join("lib/a.lib")).unwrap(),
        b"model a, changed"
    );
    // Once they let go, the next change patches.
    drop(theirs);
    let mine_path = mine.path().to_path_buf();
    let here = (s.shared.path(), &s.cache, &mut s.scan);
    let (_, patched) = changed_after(here, 1, (mine, &next));
    assert!(!mine_path.exists());
    assert!(patched.path().join("data/ro/new").exists());
}

#[test]
fn a_snapshot_another_holder_stood_by_is_patched_and_they_find_it_gone_when_they_resume() {
    // Another worker of the host filled a task folder from the same snapshot and keeps it
    // for its next task.
    let (mut s, (other, theirs)) = held_by_another();
    theirs.stand_by();
    let theirs_path = theirs.path().to_path_buf();
    let here = (s.shared.path(), &s.cache, &mut s.scan);
    let (next, mine) = changed_after(here, 0, (s.snapshot, &s.manifest));
    assert!(!theirs_path.exists(), "patched into the new one");
    assert_eq!(
        fs::read(mine.path().join("lib/a.lib")).unwrap(),
        b"model a, changed"
    );
    // Their next task finds it gone, and the new one here already.
    assert!(!other.resume(&theirs).unwrap());
    let their_next = other.snapshot(&next).unwrap();
    assert_eq!(their_next.path(), mine.path());
    // Resumed, it is read again: the next change is built beside it, not patched.
    their_next.stand_by();
    assert!(other.resume(&their_next).unwrap());
    let before = tree(their_next.path());
    let here = (s.shared.path(), &s.cache, &mut s.scan);
    let (_, built) = changed_after(here, 1, (mine, &next));
    assert_ne!(built.path(), their_next.path());
    assert_eq!(tree(their_next.path()), before, "theirs is untouched");
    assert!(built.path().join("data/ro/new").exists());
}

#[test]
fn a_snapshot_changed_behind_the_cache_s_back_is_built_afresh_instead_of_patched() {
    let Shipped {
        shared,
        user: _user,
        cache,
        mut scan,
        manifest,
        snapshot,
    } = shipped();
    // A folder the patch must open is gone.
    fs::remove_dir_all(snapshot.path().join("lib")).unwrap();
    change(shared.path(), 0);
    let next = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &next);
    let built = cache
        .snapshot_after(&next, Some((snapshot, &manifest)))
        .unwrap();
    let other_user = user_dir();
    let other = HostCache::open(&other_user.path, ROOMY).unwrap();
    fetch_all(&other, &scan, &next);
    assert_eq!(
        tree(built.path()),
        tree(other.snapshot(&next).unwrap().path())
    );
}
