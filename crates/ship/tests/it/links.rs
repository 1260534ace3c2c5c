//! Snapshot files that are hard links to their blobs: when the blob's inode has or may take
//! the entry's mode and time; copies otherwise; corruption still found; eviction of either
//! side leaves the other whole.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use parvm_ship::{CacheLimits, Digest, Error, HostCache};

use crate::{ROOMY, blob_path, fetch_all, scanner, ship, tree, user_dir};

/// Writes `content` to `root/name` with `mode` and a modification time `secs` (and some
/// nanoseconds) after the epoch.
fn file(root: &Path, name: &str, content: &str, mode: u32, secs: u64) {
    let path = root.join(name);
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    fs::File::open(&path)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::new(secs, 123_456_789))
        .unwrap();
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// The entries of `root` named in `names`, as `tree` shows them.
fn entries_of(root: &Path, names: &[&str]) -> Vec<crate::TreeEntry> {
    tree(root)
        .into_iter()
        .filter(|e| names.iter().any(|n| e.0 == Path::new(n)))
        .collect()
}

#[test]
fn a_cold_snapshot_links_its_files_to_their_blobs() {
    let shared = tempfile::tempdir().unwrap();
    file(shared.path(), "netlist", "netlist", 0o644, 1_000);
    file(shared.path(), "run.sh", "#!/bin/sh\n", 0o755, 2_000);
    file(shared.path(), "frozen", "frozen", 0o444, 3_000);
    file(shared.path(), "secret", "mine only", 0o400, 4_000);
    // Its owner could not read the blob any more to hash it: copied.
    file(shared.path(), "drop-box", "write only", 0o200, 5_000);
    let names = ["netlist", "run.sh", "frozen", "secret", "drop-box"];
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (_, snapshot) = ship(&cache, &mut scanner(shared.path(), &names));
    assert_eq!(
        entries_of(snapshot.path(), &names),
        entries_of(shared.path(), &names)
    );
    for (name, content) in [
        ("netlist", "netlist"),
        ("run.sh", "#!/bin/sh\n"),
        ("frozen", "frozen"),
        ("secret", "mine only"),
    ] {
        let blob = blob_path(&cache, &Digest::of(content.as_bytes()));
        assert_eq!(ino(&snapshot.path().join(name)), ino(&blob), "{name}");
    }
    let blob = blob_path(&cache, &Digest::of(b"write only"));
    assert_ne!(ino(&snapshot.path().join("drop-box")), ino(&blob));
    assert_eq!(fs::metadata(&blob).unwrap().mode() & 0o7777, 0o400);
}

#[test]
fn one_content_with_other_modes_or_times_is_linked_once_and_copied_otherwise() {
    let shared = tempfile::tempdir().unwrap();
    file(shared.path(), "a", "same", 0o644, 1_000);
    file(shared.path(), "b", "same", 0o755, 1_000);
    file(shared.path(), "c", "same", 0o644, 2_000);
    file(shared.path(), "d", "same", 0o644, 1_000);
    let names = ["a", "b", "c", "d"];
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (manifest, snapshot) = ship(&cache, &mut scanner(shared.path(), &names));
    assert_eq!(manifest.blobs().len(), 1);
    assert_eq!(
        entries_of(snapshot.path(), &names),
        entries_of(shared.path(), &names)
    );
    let blob = ino(&blob_path(&cache, &Digest::of(b"same")));
    let [a, b, c, d] = names.map(|n| ino(&snapshot.path().join(n)));
    // The first entry gives the blob its mode and time; the entry with the same ones links
    // too; the others are copies of their own.
    assert_eq!((a, d), (blob, blob));
    assert!(b != blob && c != blob && b != c);

    // A later manifest with the content under a third mode: the blob's inode is linked
    // already, so it keeps its mode and time and the new entry is a copy.
    file(shared.path(), "e", "same", 0o600, 1_000);
    let (_, later) = ship(&cache, &mut scanner(shared.path(), &["a", "e"]));
    assert_eq!(
        entries_of(later.path(), &["a", "e"]),
        entries_of(shared.path(), &["a", "e"])
    );
    assert_eq!(ino(&later.path().join("a")), blob);
    assert_ne!(ino(&later.path().join("e")), blob);
}

#[test]
fn a_corrupt_blob_is_found_before_it_is_linked() {
    let shared = tempfile::tempdir().unwrap();
    file(shared.path(), "a", "content", 0o644, 1_000);
    file(shared.path(), "b", "content", 0o644, 1_000);
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (_, first) = ship(&cache, &mut scanner(shared.path(), &["a"]));
    let digest = Digest::of(b"content");
    let blob = blob_path(&cache, &digest);
    assert_eq!(ino(&first.path().join("a")), ino(&blob));

    // `b` is not in the first snapshot, so it comes from the blob, whose inode has its mode
    // and time: a link, but only once the blob is hashed. (A write into the blob is a
    // write into the first snapshot too: it shares the inode.)
    fs::write(&blob, "contenT").unwrap();
    let mut scan = scanner(shared.path(), &["b"]);
    let manifest = scan.manifest().unwrap();
    match cache.snapshot(&manifest) {
        Err(e @ Error::CorruptBlob { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("`b`") && text.contains(&digest.to_string()),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!blob.exists(), "the corrupt blob was removed");
    assert_eq!(fetch_all(&cache, &scan, &manifest), 1);
    let second = cache.snapshot(&manifest).unwrap();
    assert_eq!(fs::read(second.path().join("b")).unwrap(), b"content");
    assert_eq!(ino(&second.path().join("b")), ino(&blob));
}

#[test]
fn evicting_a_linked_blob_or_its_snapshot_leaves_the_other_whole() {
    let shared = tempfile::tempdir().unwrap();
    file(shared.path(), "a", "content", 0o644, 1_000);
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (manifest, snapshot) = ship(&cache, &mut scanner(shared.path(), &["a"]));
    let root = manifest.root_digest();
    let digest = Digest::of(b"content");
    let blob = blob_path(&cache, &digest);
    drop(snapshot);

    // The blob is the least recently used of the two (the journal's order): a cache of one
    // entry evicts it, and the snapshot keeps its link.
    fs::write(
        cache.path().join("index"),
        format!("b {digest} 7\ns {root} 7\n"),
    )
    .unwrap();
    let one = CacheLimits {
        max_bytes: 1 << 40,
        max_count: 1,
    };
    drop(HostCache::open(&user.path, one).unwrap());
    assert!(!blob.exists(), "the blob was evicted");
    assert!(cache.missing(&manifest).is_empty(), "the snapshot stays");
    let again = cache.snapshot(&manifest).unwrap();
    assert_eq!(
        entries_of(again.path(), &["a"]),
        entries_of(shared.path(), &["a"])
    );
    assert_eq!(fs::metadata(again.path().join("a")).unwrap().nlink(), 1);
    drop(again);

    // The other way: the snapshot goes while the blob is kept for another manifest of the
    // same content with another mode, which then gives the blob that mode and links it.
    file(shared.path(), "x", "content", 0o755, 1_000);
    let mut scan = scanner(shared.path(), &["x"]);
    let other = scan.manifest().unwrap();
    assert_eq!(fetch_all(&cache, &scan, &other), 1);
    drop(
        HostCache::open(
            &user.path,
            CacheLimits {
                max_bytes: 0,
                max_count: 0,
            },
        )
        .unwrap(),
    );
    assert!(
        !cache
            .path()
            .join("snapshots")
            .join(root.to_string())
            .exists()
    );
    assert!(blob.exists(), "kept for the pending manifest");
    let linked = cache.snapshot(&other).unwrap();
    assert_eq!(
        entries_of(linked.path(), &["x"]),
        entries_of(shared.path(), &["x"])
    );
    assert_eq!(ino(&linked.path().join("x")), ino(&blob));
}
