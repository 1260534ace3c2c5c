//! A large file that changed travels as the pieces that changed: the rest is copied from
//! the older blob in the cache, and every piece that arrives is checked on its own.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parvm_ship::{
    Begin, BlobWriter, Error, HostCache, Manifest, PIECE_MIN, Pieces, Scanner, piece_count,
};

use super::{ROOMY, fetch_all, scanner, user_dir};

/// Length of the test file: three whole pieces and a short one.
const SIZE: usize = 3 * PIECE_MIN as usize + 123;

fn content() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// A shared folder with `big.dat`, shipped once into a cache.
struct Shipped {
    shared: tempfile::TempDir,
    scanner: Scanner,
    old: Arc<Manifest>,
}

impl Shipped {
    fn new(cache: &HostCache) -> Shipped {
        let shared = tempfile::tempdir().unwrap();
        fs::write(shared.path().join("big.dat"), content()).unwrap();
        let mut scanner = scanner(shared.path(), &["big.dat"]);
        let old = scanner.manifest().unwrap();
        fetch_all(cache, &scanner, &old);
        Shipped {
            shared,
            scanner,
            old,
        }
    }

    fn file(&self) -> PathBuf {
        self.shared.path().join("big.dat")
    }

    /// Checks that `snapshot` holds the shared file as it is now.
    fn assert_shipped_in(&self, snapshot: &parvm_ship::Snapshot) {
        assert_eq!(
            fs::read(snapshot.path().join("big.dat")).unwrap(),
            fs::read(self.file()).unwrap()
        );
    }

    /// Flips one byte at each of `offsets` of the shared file; the new manifest.
    fn edit(&mut self, offsets: &[usize]) -> Arc<Manifest> {
        let mut data = fs::read(self.file()).unwrap();
        for &at in offsets {
            data[at] ^= 0xff;
        }
        fs::write(self.file(), data).unwrap();
        self.scanner.manifest().unwrap()
    }
}

/// A new cache with `big.dat` shipped into it (the folder holding the cache first).
fn shipped_in_a_new_cache() -> (super::UserDir, HostCache, Shipped) {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let shipped = Shipped::new(&cache);
    (user, cache, shipped)
}

fn pieces(m: &Manifest) -> Pieces {
    m.find(Path::new("big.dat"))
        .and_then(|n| n.pieces())
        .cloned()
        .expect("a large file has pieces")
}

fn claim(cache: &HostCache, m: &Manifest) -> BlobWriter {
    let p = pieces(m);
    match cache
        .begin(p.digest(), p.size(), Path::new("big.dat"))
        .unwrap()
    {
        Begin::Mine(writer) => writer,
        other => panic!("{other:?}"),
    }
}

/// Claims the blob of `big.dat` in `new` and readies it to receive only the pieces the blob
/// of `old` lacks ([`HostCache::reuse`]); `held`, the snapshot of `old` taken out of the
/// cache, lets the older blob be patched in place.
fn claim_in_pieces(
    cache: &HostCache,
    new: &Manifest,
    old: &Manifest,
    held: Option<&parvm_ship::Snapshot>,
) -> (BlobWriter, Option<Vec<u32>>) {
    let mut writer = claim(cache, new);
    // As a worker does: the blob takes its file's mode and time, so the snapshot links it.
    let node = new.find(Path::new("big.dat")).unwrap();
    writer.keep_attrs(node.mode(), node.mtime());
    let wanted = cache
        .reuse(
            &mut writer,
            &pieces(new),
            &pieces(old),
            held.map(|h| (h, old)),
        )
        .unwrap();
    (writer, wanted)
}

/// Sends `wanted` pieces of the shared file into `writer` in chunks of `chunk` bytes, as
/// the spawner streams them (a run of adjacent pieces as one stream).
fn send(writer: &mut BlobWriter, file: &Path, p: &Pieces, wanted: &[u32], chunk: usize) {
    let source = fs::File::open(file).unwrap();
    let (start, _) = p.range(wanted[0]);
    let end = wanted
        .iter()
        .map(|&i| p.range(i))
        .map(|(s, l)| s + l)
        .max()
        .unwrap();
    let mut at = start;
    while at < end {
        assert_eq!(writer.next_offset(), at);
        let mut buf = vec![0u8; chunk.min((end - at) as usize)];
        source.read_exact_at(&mut buf, at).unwrap();
        writer.write(&buf).unwrap();
        at += buf.len() as u64;
    }
}

#[test]
fn large_files_are_described_in_pieces_that_survive_the_wire() {
    let (_user, _cache, shipped) = shipped_in_a_new_cache();
    let p = pieces(&shipped.old);
    assert_eq!(p.cvs().len(), piece_count(SIZE as u64));
    assert_eq!(p.cvs().len(), 4);
    assert_eq!(p.range(3), (3 * PIECE_MIN, 123));
    let back = Manifest::decode(&shipped.old.encode()).unwrap();
    assert_eq!(&back, &*shipped.old);
    assert_eq!(pieces(&back), p);
}

#[test]
fn a_changed_large_file_arrives_as_the_pieces_that_changed() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    let new = shipped.edit(&[2 * PIECE_MIN as usize + 5]);
    let p = pieces(&new);

    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, None);
    assert_eq!(wanted, Some(vec![2]), "only the edited piece is fetched");
    assert_eq!(writer.wanted_pieces(), Some(&[2][..]));
    assert!(!writer.is_complete());
    send(&mut writer, &shipped.file(), &p, &[2], 100_000);
    assert!(writer.is_complete());
    writer.finish().unwrap();
    let snapshot = cache.snapshot(&new).unwrap();
    shipped.assert_shipped_in(&snapshot);
}

#[test]
fn adjacent_pieces_arrive_as_one_stream_in_chunks_of_any_length() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    let new = shipped.edit(&[PIECE_MIN as usize + 1, 2 * PIECE_MIN as usize + 7, SIZE - 1]);
    let p = pieces(&new);
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, None);
    let wanted = wanted.unwrap();
    assert_eq!(wanted, vec![1, 2, 3]);
    // Chunks that cross the pieces' borders.
    send(&mut writer, &shipped.file(), &p, &wanted, 300_001);
    writer.finish().unwrap();
    let snapshot = cache.snapshot(&new).unwrap();
    shipped.assert_shipped_in(&snapshot);
}

#[test]
fn a_damaged_piece_is_refused_naming_the_file_and_nothing_is_kept() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    let new = shipped.edit(&[10]);
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, None);
    assert_eq!(wanted, Some(vec![0]));
    let mut piece = fs::read(shipped.file()).unwrap()[..PIECE_MIN as usize].to_vec();
    piece[PIECE_MIN as usize - 1] ^= 1;
    match writer.write(&piece) {
        Err(e @ Error::PieceMismatch { piece: 0, .. }) => {
            assert!(e.to_string().contains("big.dat"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    drop(writer);
    // Nothing of it stays, and the blob can be claimed again.
    assert_eq!(cache.missing(&new).len(), 1);
    claim(&cache, &new);
}

#[test]
fn an_older_blob_is_hashed_before_reuse_unless_this_process_did_and_a_damaged_one_is_not_used() {
    let (user, cache, mut shipped) = shipped_in_a_new_cache();
    let new = shipped.edit(&[10]);
    let p = pieces(&new);

    // Another process's cache handle has not hashed the older blob: it does so first.
    let other = HostCache::open(&user.path, ROOMY).unwrap();
    let mut writer = claim(&other, &new);
    assert_eq!(
        other
            .reuse(&mut writer, &p, &pieces(&shipped.old), None)
            .unwrap(),
        Some(vec![0])
    );
    drop(writer);

    // Damaged at rest: not reused, and the writer takes the whole blob as before.
    let old_blob = blob_path(&cache, &pieces(&shipped.old));
    fs::set_permissions(&old_blob, fs::Permissions::from_mode(0o600)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&old_blob)
        .unwrap()
        .write_all_at(b"X", 2 * PIECE_MIN)
        .unwrap();
    let mut writer = claim(&cache, &new);
    assert_eq!(
        cache
            .reuse(&mut writer, &p, &pieces(&shipped.old), None)
            .unwrap(),
        None
    );
    assert_eq!(writer.wanted_pieces(), None);
    writer.write(&fs::read(shipped.file()).unwrap()).unwrap();
    writer.finish().unwrap();
}

#[test]
fn pieces_of_another_length_or_sharing_nothing_are_not_reused() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    let old = pieces(&shipped.old);
    // Every piece changed.
    let offsets: Vec<usize> = (0..4).map(|i| i * PIECE_MIN as usize).collect();
    let new = shipped.edit(&offsets);
    let mut writer = claim(&cache, &new);
    assert_eq!(
        cache.reuse(&mut writer, &pieces(&new), &old, None).unwrap(),
        None
    );
    // Pieces that are not the writer's blob's.
    assert_eq!(cache.reuse(&mut writer, &old, &old, None).unwrap(), None);
}

#[test]
fn forged_pieces_in_a_manifest_are_refused() {
    let (_user, _cache, shipped) = shipped_in_a_new_cache();
    let bytes = shipped.old.encode();
    let digest = pieces(&shipped.old).digest();
    let at = bytes
        .windows(32)
        .position(|w| w == digest.as_bytes())
        .expect("the file's digest is in the manifest")
        + 32;
    assert_eq!(bytes[at], 4, "the piece count follows the digest");

    let mut wrong_count = bytes.clone();
    wrong_count[at] = 3;
    let e = Manifest::decode(&wrong_count).unwrap_err().to_string();
    assert!(e.contains("3 pieces for a file of"), "{e}");

    let mut forged = bytes.clone();
    forged[at + 1 + 40] ^= 1;
    let e = Manifest::decode(&forged).unwrap_err().to_string();
    assert!(e.contains("pieces do not make up digest"), "{e}");

    let mut cut = bytes.clone();
    cut.truncate(at + 1 + 50);
    assert!(Manifest::decode(&cut).is_err());
}

fn blob_path(cache: &HostCache, p: &Pieces) -> PathBuf {
    let hex = p.digest().to_string();
    cache.path().join("blobs").join(&hex[..2]).join(hex)
}

#[test]
fn a_lone_large_file_hashed_on_every_core_has_its_blake3_digest_and_pieces() {
    let shared = tempfile::tempdir().unwrap();
    // Past the size at which a lone file's pieces are hashed on every core, and not a
    // whole number of pieces.
    let data: Vec<u8> = (0..9 * PIECE_MIN as usize + 4321)
        .map(|i| (i % 253) as u8 ^ (i >> 20) as u8)
        .collect();
    fs::write(shared.path().join("big.dat"), &data).unwrap();
    let m = scanner(shared.path(), &["big.dat"]).manifest().unwrap();
    let p = pieces(&m);
    assert_eq!(p.digest(), parvm_ship::Digest::of(&data));
    assert_eq!(p.cvs().len(), 10);
    // The same as hashed in order, beside other files.
    fs::write(shared.path().join("small.dat"), b"x").unwrap();
    let both = scanner(shared.path(), &["*.dat"]).manifest().unwrap();
    assert_eq!(pieces(&both), p);
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).unwrap().ino()
}

/// Entries of the cache's `tmp/` folder: nothing is left there once a fetch is over.
fn tmp_entries(cache: &HostCache) -> Vec<PathBuf> {
    fs::read_dir(cache.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn the_blob_of_a_held_snapshot_nobody_else_uses_becomes_the_new_blob_in_place() {
    let (user, cache, mut shipped) = shipped_in_a_new_cache();
    let mut held = cache.snapshot(&shipped.old).unwrap();
    let old_path = held.path().to_path_buf();
    let old_blob = blob_path(&cache, &pieces(&shipped.old));
    let old_inode = inode(&old_blob);
    let new = shipped.edit(&[2 * PIECE_MIN as usize + 5]);
    let p = pieces(&new);

    assert_eq!(cache.missing_since(&new, &shipped.old).len(), 1);
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    assert!(
        !old_path.exists(),
        "out of the cache, where no reader finds it"
    );
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, Some(&held));
    assert_eq!(wanted, Some(vec![2]));
    assert!(!old_blob.exists(), "the older blob was taken");
    send(&mut writer, &shipped.file(), &p, &[2], 1 << 20);
    writer.finish().unwrap();
    let new_blob = blob_path(&cache, &p);
    assert_eq!(inode(&new_blob), old_inode, "patched in place, not copied");

    let snapshot = cache
        .snapshot_after(&new, Some((held, &shipped.old)))
        .unwrap();
    shipped.assert_shipped_in(&snapshot);
    assert!(tmp_entries(&cache).is_empty(), "{:?}", tmp_entries(&cache));
    // The next build of the new manifest hashes the blob it finds: it is intact.
    drop(snapshot);
    let other = HostCache::open(&user.path, ROOMY).unwrap();
    other.snapshot(&new).unwrap();
}

#[test]
fn an_older_blob_another_snapshot_links_is_copied_and_left_as_it_was() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    fs::write(shipped.shared.path().join("other.txt"), "other").unwrap();
    // A second manifest with the same large file: its snapshot links the same blob.
    let mut second = scanner(shipped.shared.path(), &["*"]);
    let second_m = second.manifest().unwrap();
    fetch_all(&cache, &second, &second_m);
    let mut held = cache.snapshot(&shipped.old).unwrap();
    let before = fs::read(shipped.file()).unwrap();
    let new = shipped.edit(&[7]);
    cache.missing_since(&new, &shipped.old);
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    for live in [true, false] {
        // Pinned by a live snapshot, or only linked by one nobody holds.
        let other = cache.snapshot(&second_m).unwrap();
        if !live {
            drop(other);
        }
        let (_writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, Some(&held));
        assert_eq!(wanted, Some(vec![0]), "copied, still in pieces");
        let older = blob_path(&cache, &pieces(&shipped.old));
        assert_eq!(fs::read(&older).unwrap(), before, "live: {live}");
    }
    let snapshot = cache.snapshot(&second_m).unwrap();
    assert_eq!(fs::read(snapshot.path().join("big.dat")).unwrap(), before);
}

#[test]
fn a_fetch_abandoned_while_patching_in_place_leaves_nothing_and_the_next_one_works() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    let mut held = cache.snapshot(&shipped.old).unwrap();
    let new = shipped.edit(&[5, SIZE - 3]);
    let p = pieces(&new);
    cache.missing_since(&new, &shipped.old);
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &shipped.old, Some(&held));
    assert_eq!(wanted, Some(vec![0, 3]));
    send(&mut writer, &shipped.file(), &p, &[0], 1 << 20);
    // The spawner went away: the writer and the held snapshot are dropped unfinished.
    drop((writer, held));
    assert!(tmp_entries(&cache).is_empty(), "{:?}", tmp_entries(&cache));
    let missing = cache.missing(&new);
    assert_eq!(missing.len(), 1);
    fetch_all(&cache, &shipped.scanner, &new);
    let snapshot = cache.snapshot(&new).unwrap();
    shipped.assert_shipped_in(&snapshot);
}

#[test]
fn a_read_only_large_file_in_a_read_only_folder_is_patched_in_place_as_a_user() {
    parvm_test_support::as_unprivileged(
        "pieces::a_read_only_large_file_in_a_read_only_folder_is_patched_in_place_as_a_user",
        || {
            assert_ne!(nix::unistd::geteuid().as_raw(), 0, "permission bits apply");
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            let set = |p: &Path, m: u32| {
                fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
            };
            let shared = tempfile::tempdir().unwrap();
            let ro = shared.path().join("ro");
            fs::create_dir(&ro).unwrap();
            let file = ro.join("big.dat");
            let mut data = content();
            fs::write(&file, &data).unwrap();
            set(&file, 0o444);
            set(&ro, 0o555);
            let user = user_dir();
            let cache = HostCache::open(&user.path, ROOMY).unwrap();
            let mut scan = scanner(shared.path(), &["ro"]);
            let old = scan.manifest().unwrap();
            fetch_all(&cache, &scan, &old);
            let mut held = cache.snapshot(&old).unwrap();
            let at = |m: &Manifest| m.find(Path::new("ro/big.dat")).unwrap().clone();
            let old_blob = {
                let hex = at(&old).pieces().unwrap().digest().to_string();
                cache.path().join("blobs").join(&hex[..2]).join(hex)
            };
            let old_inode = inode(&old_blob);

            set(&ro, 0o755);
            set(&file, 0o644);
            data[PIECE_MIN as usize + 9] ^= 1;
            fs::write(&file, &data).unwrap();
            set(&file, 0o444);
            set(&ro, 0o555);
            let new = scan.manifest().unwrap();
            let (now, was) = (at(&new), at(&old));
            let p = now.pieces().unwrap();
            assert_eq!(cache.missing_since(&new, &old).len(), 1);
            assert!(cache.take_for_patch(&mut held, &new).unwrap());
            let mut writer = match cache.begin(p.digest(), p.size(), Path::new("ro/big.dat")) {
                Ok(Begin::Mine(writer)) => writer,
                other => panic!("{other:?}"),
            };
            writer.keep_attrs(now.mode(), now.mtime());
            let wanted = cache
                .reuse(&mut writer, p, was.pieces().unwrap(), Some((&held, &old)))
                .unwrap();
            assert_eq!(wanted, Some(vec![1]));
            send(&mut writer, &file, p, &[1], 1 << 18);
            writer.finish().unwrap();
            let snapshot = cache.snapshot_after(&new, Some((held, &old))).unwrap();
            let shipped = snapshot.path().join("ro/big.dat");
            assert_eq!(fs::read(&shipped).unwrap(), data);
            assert_eq!(inode(&shipped), old_inode, "patched in place");
            assert_eq!(mode(&shipped), 0o444);
            assert_eq!(mode(&snapshot.path().join("ro")), 0o555);
        },
    );
}

#[test]
fn a_new_run_finds_the_snapshot_an_earlier_run_kept_and_patches_its_blob_in_place() {
    let (user, cache, mut shipped) = shipped_in_a_new_cache();
    // The earlier run's snapshot, let go when it ended.
    drop(cache.snapshot(&shipped.old).unwrap());
    let old_inode = inode(&blob_path(&cache, &pieces(&shipped.old)));
    drop(cache);
    let new = shipped.edit(&[3]);

    // A new run: another handle (nothing verified by it), no snapshot held.
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let pending = cache.missing(&new);
    assert_eq!(pending.len(), 1);
    let (older, mut held) = cache
        .older_snapshot_for(&new)
        .unwrap()
        .expect("the earlier run's snapshot");
    assert_eq!(older.root_digest(), shipped.old.root_digest());
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &older, Some(&held));
    assert_eq!(wanted, Some(vec![0]));
    send(&mut writer, &shipped.file(), &pieces(&new), &[0], 1 << 20);
    writer.finish().unwrap();
    let snapshot = cache.snapshot_after(&new, Some((held, &older))).unwrap();
    shipped.assert_shipped_in(&snapshot);
    assert_eq!(
        inode(&snapshot.path().join("big.dat")),
        old_inode,
        "hashed first, then patched in place"
    );
}

#[test]
fn no_older_snapshot_stands_in_for_an_unrelated_large_file_or_when_every_file_changed() {
    let (_user, cache, mut shipped) = shipped_in_a_new_cache();
    drop(cache.snapshot(&shipped.old).unwrap());
    // Every piece different: an unrelated file of the same name.
    let offsets: Vec<usize> = (0..4).map(|i| i * PIECE_MIN as usize + 1).collect();
    let unrelated = shipped.edit(&offsets);
    let pending = cache.missing(&unrelated);
    assert_eq!(pending.len(), 1);
    assert!(cache.older_snapshot_for(&unrelated).unwrap().is_none());
    // A small file added beside it: a patch would change every file.
    fs::write(shipped.shared.path().join("small.txt"), "small").unwrap();
    let mut both = scanner(shipped.shared.path(), &["big.dat", "small.txt"]);
    let with_small = both.manifest().unwrap();
    fetch_all(&cache, &both, &unrelated);
    let pending = cache.missing(&with_small);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(cache.older_snapshot_for(&with_small).unwrap().is_none());
}

/// Runs the body of [`full_disk_child`] in a private mount namespace with a 3 MiB tmpfs.
#[test]
fn on_a_full_disk_the_older_blob_is_patched_in_place_where_a_copy_cannot_be_made() {
    crate::on_a_small_tmpfs(
        "pieces::full_disk_child",
        "3m",
        "pieces on a full disk: checked",
    );
}

/// The child of [`on_a_full_disk_the_older_blob_is_patched_in_place_where_a_copy_cannot_be_made`];
/// does nothing when run alone.
#[test]
fn full_disk_child() {
    let Some(mount) = std::env::var_os("PARVM_SHIP_FULL_DISK") else {
        return;
    };
    let user = Path::new(&mount).join("parvm-test");
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
        .create(&user)
        .unwrap();
    let cache = HostCache::open(&user, ROOMY).unwrap();
    // Two and a half pieces: the blob fits, a second copy of most of it does not.
    let shared = tempfile::tempdir().unwrap();
    let file = shared.path().join("big.dat");
    let mut data: Vec<u8> = (0..2 * PIECE_MIN as usize + (512 << 10))
        .map(|i| (i % 239) as u8)
        .collect();
    fs::write(&file, &data).unwrap();
    let mut scan = scanner(shared.path(), &["big.dat"]);
    let old = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &old);
    let mut held = cache.snapshot(&old).unwrap();
    data[7] ^= 1;
    fs::write(&file, &data).unwrap();
    let new = scan.manifest().unwrap();
    let tmp_is_empty = || crate::work_files(&cache).is_empty();

    // Copying the shared pieces fails for room: the writer takes the whole blob, which
    // does not fit either; nothing is left.
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &old, None);
    assert_eq!(wanted, None, "no room to copy the shared pieces");
    let failed = writer.write(&data);
    assert!(matches!(failed, Err(Error::DiskFull { .. })), "{failed:?}");
    drop(writer);
    assert!(tmp_is_empty());

    // In place it needs no room: the older blob becomes the new one.
    assert_eq!(cache.missing_since(&new, &old).len(), 1);
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &old, Some(&held));
    assert_eq!(wanted, Some(vec![0]));
    send(&mut writer, &file, &pieces(&new), &[0], 1 << 20);
    writer.finish().unwrap();
    let snapshot = cache.snapshot_after(&new, Some((held, &old))).unwrap();
    assert_eq!(fs::read(snapshot.path().join("big.dat")).unwrap(), data);
    drop(snapshot);
    assert!(tmp_is_empty());
    println!("pieces on a full disk: checked");
}

/// The environment variable that makes [`patcher_child`] run: the shared folder and the
/// per-user folder, joined by a newline.
const PATCHER_ENV: &str = "PARVM_SHIP_PATCHER";

#[test]
fn a_worker_killed_while_patching_in_place_leaves_nothing_and_the_next_fetch_works() {
    use std::io::BufRead;
    let (user, cache, shipped) = shipped_in_a_new_cache();
    drop(cache.snapshot(&shipped.old).unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pieces::patcher_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(
            PATCHER_ENV,
            format!(
                "{}\n{}",
                shipped.shared.path().display(),
                user.path.display()
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let patching = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("PARVM-PATCHING"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(patching, "the child did not get to patching in place");

    // The next opening of the cache removes what the dead worker left in `tmp/`: the
    // older blob it was patching and the snapshot it had taken out.
    drop(HostCache::open(&user.path, ROOMY).unwrap());
    assert!(tmp_entries(&cache).is_empty(), "{:?}", tmp_entries(&cache));
    let mut scan = scanner(shipped.shared.path(), &["big.dat"]);
    let new = scan.manifest().unwrap();
    assert_ne!(new.root_digest(), shipped.old.root_digest());
    assert_eq!(fetch_all(&cache, &scan, &new), 1);
    shipped.assert_shipped_in(&cache.snapshot(&new).unwrap());
}

/// The child of the test above: edits the shared file, starts patching the older blob in
/// place, writes half of the changed piece, says so and waits to be killed.
#[test]
fn patcher_child() {
    let Some(paths) = std::env::var_os(PATCHER_ENV) else {
        return;
    };
    let paths = paths.to_string_lossy().into_owned();
    let (shared, user) = paths.split_once('\n').unwrap();
    let cache = HostCache::open(Path::new(user), ROOMY).unwrap();
    let mut scan = scanner(Path::new(shared), &["big.dat"]);
    let old = scan.manifest().unwrap();
    let mut held = cache.snapshot(&old).unwrap();
    let file = Path::new(shared).join("big.dat");
    let mut data = fs::read(&file).unwrap();
    data[PIECE_MIN as usize + 3] ^= 1;
    fs::write(&file, &data).unwrap();
    let new = scan.manifest().unwrap();
    cache.missing_since(&new, &old);
    assert!(cache.take_for_patch(&mut held, &new).unwrap());
    let (mut writer, wanted) = claim_in_pieces(&cache, &new, &old, Some(&held));
    assert_eq!(wanted, Some(vec![1]));
    assert!(
        !blob_path(&cache, &pieces(&old)).exists(),
        "the older blob was taken to be patched in place"
    );
    let half = (PIECE_MIN / 2) as usize;
    writer
        .write(&data[PIECE_MIN as usize..PIECE_MIN as usize + half])
        .unwrap();
    println!("\nPARVM-PATCHING");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}
