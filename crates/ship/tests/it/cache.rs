//! The host cache: its folder, blob writers, claims across threads and processes, the LRU
//! index and eviction.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use parvm_ship::{Begin, BlobWriter, CacheLimits, Digest, Error, HostCache};

use crate::{ROOMY, fetch_all, scanner, ship, user_dir, work_files};

#[test]
fn the_cache_folder_is_private_and_verified() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    assert_eq!(cache.path(), user.path.join("cache"));
    assert_eq!(
        fs::metadata(cache.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(cache);

    fs::set_permissions(user.path.join("cache"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        HostCache::open(&user.path, ROOMY),
        Err(Error::UnsafeFolder { .. })
    ));

    let linked = user_dir();
    let elsewhere = tempfile::tempdir().unwrap();
    symlink(elsewhere.path(), linked.path.join("cache")).unwrap();
    match HostCache::open(&linked.path, ROOMY) {
        Err(e @ Error::UnsafeFolder { .. }) => assert!(e.to_string().contains("symlink"), "{e}"),
        other => panic!("{other:?}"),
    }

    let open_user = user_dir();
    fs::set_permissions(&open_user.path, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        HostCache::open(&open_user.path, ROOMY),
        Err(Error::UnsafeFolder { .. })
    ));

    // A folder of claims replaced by a symlink: claims would be made (and blobs written)
    // elsewhere.
    let planted = user_dir();
    drop(HostCache::open(&planted.path, ROOMY).unwrap());
    let fan = planted.path.join("cache/claims/a");
    fs::remove_dir(&fan).unwrap();
    symlink(elsewhere.path(), &fan).unwrap();
    match HostCache::open(&planted.path, ROOMY) {
        Err(e @ Error::UnsafeFolder { .. }) => {
            assert!(e.to_string().contains("claims/a"), "{e}");
            assert!(e.to_string().contains("symlink"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cache_of_another_user_is_refused() {
    let user = user_dir();
    fs::create_dir(user.path.join("cache")).unwrap();
    fs::set_permissions(user.path.join("cache"), fs::Permissions::from_mode(0o700)).unwrap();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED a_cache_of_another_user_is_refused: needs root to give the folder away");
        return;
    }
    nix::unistd::chown(
        &user.path.join("cache"),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    match HostCache::open(&user.path, ROOMY) {
        Err(e @ Error::UnsafeFolder { .. }) => {
            assert!(e.to_string().contains("owned by uid 65534"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

fn blob_path(cache: &HostCache, d: &Digest) -> PathBuf {
    let hex = d.to_string();
    cache.path().join("blobs").join(&hex[..2]).join(hex)
}

fn mine(cache: &HostCache, content: &[u8], shown: &str) -> parvm_ship::BlobWriter {
    match cache
        .begin(Digest::of(content), content.len() as u64, Path::new(shown))
        .unwrap()
    {
        Begin::Mine(w) => w,
        other => panic!("{other:?}"),
    }
}

#[test]
fn blob_writers_check_size_and_digest_and_name_the_file() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let content = b"0123456789";

    let mut long = mine(&cache, content, "in/long.txt");
    long.write(content).unwrap();
    match long.write(b"!") {
        Err(
            e @ Error::SizeMismatch {
                expected: 10,
                got: 11,
                ..
            },
        ) => assert!(e.to_string().contains("in/long.txt")),
        other => panic!("{other:?}"),
    }
    drop(long);

    let mut short = mine(&cache, content, "in/short.txt");
    short.write(b"01234").unwrap();
    assert!(matches!(
        short.finish(),
        Err(Error::SizeMismatch {
            expected: 10,
            got: 5,
            ..
        })
    ));

    let mut wrong = mine(&cache, content, "in/wrong.txt");
    wrong.write(b"0123456780").unwrap();
    match wrong.finish() {
        Err(e @ Error::DigestMismatch { .. }) => assert!(e.to_string().contains("in/wrong.txt")),
        other => panic!("{other:?}"),
    }
    assert!(
        !blob_path(&cache, &Digest::of(content)).exists(),
        "nothing bad is kept"
    );
    assert!(work_files(&cache).is_empty(), "{:?}", work_files(&cache));

    let mut right = mine(&cache, content, "in/right.txt");
    right.write(&content[..4]).unwrap();
    right.write(&content[4..]).unwrap();
    right.finish().unwrap();
    assert_eq!(
        fs::read(blob_path(&cache, &Digest::of(content))).unwrap(),
        content
    );
    assert!(matches!(
        cache
            .begin(Digest::of(content), 10, Path::new("x"))
            .unwrap(),
        Begin::Present
    ));
}

#[test]
fn two_threads_fetch_one_blob_once() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let content = b"shared by two workers";
    let digest = Digest::of(content);
    let mut writer = mine(&cache, content, "f");
    let user_path = &user.path;
    let (begun, started) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let other = s.spawn(move || {
            // Another worker of the host: its own handle, as its own process would have.
            let theirs = HostCache::open(user_path, ROOMY).unwrap();
            let first = theirs
                .begin(digest, content.len() as u64, Path::new("f"))
                .unwrap();
            begun.send(matches!(first, Begin::Busy)).unwrap();
            theirs.wait(&digest).unwrap();
            theirs
                .begin(digest, content.len() as u64, Path::new("f"))
                .unwrap()
        });
        assert!(
            started.recv().unwrap(),
            "the second claimant is told the blob is busy"
        );
        writer.write(content).unwrap();
        writer.finish().unwrap();
        assert!(
            matches!(other.join().unwrap(), Begin::Present),
            "after waiting, the blob is there"
        );
    });
}

/// A blob to ask the cache for: digest, size, and the file it is shown as.
type Wanted = (Digest, u64, PathBuf);

/// `count` blobs of distinct content, and what to ask the cache for them: digest, size and
/// the file shown, `shown` with `{}` replaced by the blob's number.
fn numbered_blobs(count: usize, shown: &str) -> (Vec<Vec<u8>>, Vec<Wanted>) {
    let contents: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("blob {i}").into_bytes())
        .collect();
    let wanted = contents
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = PathBuf::from(shown.replace("{}", &i.to_string()));
            (Digest::of(c), c.len() as u64, path)
        })
        .collect();
    (contents, wanted)
}

#[test]
fn many_blobs_are_claimed_and_finished_at_once_in_order() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (contents, wanted) = numbered_blobs(200, "in/{}");
    // Blob 0 is here already and blob 1 is being fetched by another claimant.
    let mut first = mine(&cache, &contents[0], "in/0");
    first.write(&contents[0]).unwrap();
    first.finish().unwrap();
    let _held = mine(&cache, &contents[1], "in/1");

    let begun = cache.begin_each(&wanted).unwrap();
    assert!(matches!(begun[0], Begin::Present));
    assert!(matches!(begun[1], Begin::Busy));
    let mut writers = Vec::new();
    for (i, begin) in begun.into_iter().enumerate().skip(2) {
        match begin {
            Begin::Mine(writer) => {
                assert_eq!(writer.digest(), Digest::of(&contents[i]), "blob {i}");
                writers.push((writer, &contents[i][..]));
            }
            other => panic!("blob {i}: {other:?}"),
        }
    }
    // Claims are spread over folders, so that several threads can make them at once.
    let fans: std::collections::HashSet<_> = work_files(&cache)
        .iter()
        .filter_map(|claim| claim.parent().map(Path::to_path_buf))
        .collect();
    assert!(fans.len() > 8, "{fans:?}");

    BlobWriter::finish_each(writers).unwrap();
    for content in &contents[2..] {
        assert_eq!(
            &fs::read(blob_path(&cache, &Digest::of(content))).unwrap(),
            content
        );
    }
    assert_eq!(
        work_files(&cache).len(),
        1,
        "only the claim held for blob 1"
    );
}

#[test]
fn a_damaged_blob_in_a_batch_is_named_and_no_claim_of_the_batch_is_left() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (contents, wanted) = numbered_blobs(100, "in/{}.cir");
    let damaged = b"file 4x".to_vec();
    let batch: Vec<_> = cache
        .begin_each(&wanted)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, begin)| match begin {
            Begin::Mine(writer) => (
                writer,
                if i == 40 {
                    &damaged[..]
                } else {
                    &contents[i][..]
                },
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    match BlobWriter::finish_each(batch) {
        Err(e @ Error::DigestMismatch { .. }) => {
            assert!(e.to_string().contains("in/40.cir"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !blob_path(&cache, &Digest::of(&contents[40])).exists(),
        "nothing bad is kept"
    );
    assert!(work_files(&cache).is_empty(), "{:?}", work_files(&cache));
    // Every blob of the batch can be claimed again (those finished are simply present).
    for (i, begin) in cache.begin_each(&wanted).unwrap().into_iter().enumerate() {
        assert!(
            matches!(begin, Begin::Mine(_) | Begin::Present),
            "blob {i}: {begin:?}"
        );
    }
}

#[test]
fn a_claim_dropped_unfinished_is_free_again() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let content = b"abandoned";
    let mut writer = mine(&cache, content, "f");
    writer.write(b"aban").unwrap();
    assert!(matches!(
        cache.begin(Digest::of(content), 9, Path::new("f")).unwrap(),
        Begin::Busy
    ));
    drop(writer);
    assert!(work_files(&cache).is_empty());
    cache.wait(&Digest::of(content)).unwrap();
    let _again = mine(&cache, content, "f");
}

/// Kills its process when dropped, so a failing test leaves none behind.
struct Claimant(Child);

impl Drop for Claimant {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ENV: &str = "PARVM_SHIP_CLAIMANT";

#[test]
fn a_claimant_killed_mid_write_releases_its_claim_and_what_it_wrote_is_removed() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let content = vec![5u8; 100_000];
    let digest = Digest::of(&content);
    let mut child = Claimant(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cache::claimant_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &user.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let claimed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("PARVM-CLAIMED"));
    assert!(claimed, "the child did not claim the blob");
    assert!(matches!(
        cache
            .begin(digest, content.len() as u64, Path::new("f"))
            .unwrap(),
        Begin::Busy
    ));
    assert_eq!(work_files(&cache).len(), 1, "the child's half-written blob");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Waiting returns at once now; the next reconciling clean-up removes the dead child's
    // claim file.
    cache.wait(&digest).unwrap();
    age_last_reconcile(&cache);
    drop(HostCache::open(&user.path, ROOMY).unwrap());
    assert!(work_files(&cache).is_empty(), "{:?}", work_files(&cache));
    let mut writer = mine(&cache, &content, "f");
    writer.write(&content).unwrap();
    writer.finish().unwrap();
    assert!(work_files(&cache).is_empty());
}

#[test]
fn a_new_claimant_removes_what_an_earlier_one_left() {
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let content = b"left behind";
    let digest = Digest::of(content);
    // As a claimant killed mid-write leaves it: its claim file, unlocked, with part of the
    // blob in it.
    let hex = digest.to_string();
    let claim = cache.path().join("claims").join(&hex[..1]).join(hex);
    fs::write(&claim, b"left").unwrap();
    let mut writer = mine(&cache, content, "f");
    assert_eq!(
        work_files(&cache),
        vec![claim.clone()],
        "only the claim file"
    );
    assert_eq!(fs::metadata(&claim).unwrap().len(), 0, "emptied");
    writer.write(content).unwrap();
    writer.finish().unwrap();
    assert_eq!(fs::read(blob_path(&cache, &digest)).unwrap(), content);
    assert!(work_files(&cache).is_empty());
}

#[test]
fn a_blob_takes_the_mode_and_time_it_is_given_else_it_is_read_only() {
    use std::os::unix::fs::MetadataExt;
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut writer = mine(&cache, b"kept", "f");
    let mtime = parvm_ship::Timestamp {
        secs: 1_000_000_000,
        nanos: 5,
    };
    // Setuid and friends never reach a blob.
    writer.keep_attrs(0o4755, mtime);
    writer.write(b"kept").unwrap();
    writer.finish().unwrap();
    let meta = fs::metadata(blob_path(&cache, &Digest::of(b"kept"))).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 5));
    let mut writer = mine(&cache, b"plain", "f");
    writer.write(b"plain").unwrap();
    writer.finish().unwrap();
    let meta = fs::metadata(blob_path(&cache, &Digest::of(b"plain"))).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o400);
}

/// The child of the test above: claims a blob, writes half, says so, and waits to be killed.
#[test]
fn claimant_child() {
    let Some(user) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let cache = HostCache::open(Path::new(&user), ROOMY).unwrap();
    let content = vec![5u8; 100_000];
    let mut writer = mine(&cache, &content, "f");
    writer.write(&content[..50_000]).unwrap();
    println!("\nPARVM-CLAIMED");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Ships a one-file tree with `content` and drops the snapshot.
fn ship_one(
    cache: &HostCache,
    root: &Path,
    name: &str,
    content: &[u8],
) -> std::sync::Arc<parvm_ship::Manifest> {
    fs::write(root.join(name), content).unwrap();
    let (manifest, _) = ship(cache, &mut scanner(root, &[name]));
    manifest
}

#[test]
fn eviction_takes_the_least_recently_used_first_and_spares_live_snapshots() {
    let shared = tempfile::tempdir().unwrap();
    let user = user_dir();
    // Each shipped one-file tree costs 200 bytes: its blob and its snapshot.
    let cache = HostCache::open(
        &user.path,
        CacheLimits {
            max_bytes: 450,
            max_count: 100,
        },
    )
    .unwrap();
    let a = ship_one(&cache, shared.path(), "a", &[b'a'; 100]);
    let b = ship_one(&cache, shared.path(), "b", &[b'b'; 100]);
    // Using `a` again makes `b` the least recently used.
    let held_a = cache.snapshot(&a).unwrap();
    drop(held_a);
    let c = ship_one(&cache, shared.path(), "c", &[b'c'; 100]);
    assert_eq!(cache.missing(&b).len(), 1, "b went");
    assert!(cache.missing(&a).is_empty() && cache.missing(&c).is_empty());

    // A live snapshot is never evicted, even over the limit.
    let held_a = cache.snapshot(&a).unwrap();
    let _d = ship_one(&cache, shared.path(), "d", &[b'd'; 100]);
    let _e = ship_one(&cache, shared.path(), "e", &[b'e'; 100]);
    assert!(held_a.path().join("a").is_file());
    assert!(cache.missing(&a).is_empty());
}

#[test]
fn the_count_limit_and_the_index_survive_reopening() {
    let shared = tempfile::tempdir().unwrap();
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let a = ship_one(&cache, shared.path(), "a", b"a");
    let b = ship_one(&cache, shared.path(), "b", b"b");
    drop(cache.snapshot(&a).unwrap());
    drop(cache);
    // Reopened with room for one tree (blob and snapshot): the least recently used, b, goes.
    let small = HostCache::open(
        &user.path,
        CacheLimits {
            max_bytes: 1 << 30,
            max_count: 2,
        },
    )
    .unwrap();
    assert_eq!(small.missing(&b).len(), 1);
    assert!(small.missing(&a).is_empty());
}

#[test]
fn blobs_being_gathered_for_a_snapshot_are_not_evicted() {
    let shared = tempfile::tempdir().unwrap();
    for name in ["x", "y", "z"] {
        fs::write(shared.path().join(name), name.repeat(100)).unwrap();
    }
    let user = user_dir();
    let cache = HostCache::open(
        &user.path,
        CacheLimits {
            max_bytes: 150,
            max_count: 100,
        },
    )
    .unwrap();
    let mut scan = scanner(shared.path(), &["x", "y", "z"]);
    let manifest = scan.manifest().unwrap();
    fetch_all(&cache, &scan, &manifest);
    // Another tree shipped meanwhile triggers eviction; the gathered blobs stay.
    let other = tempfile::tempdir().unwrap();
    ship_one(&cache, other.path(), "o", b"other");
    let snapshot = cache.snapshot(&manifest).unwrap();
    assert_eq!(
        fs::read(snapshot.path().join("z")).unwrap(),
        "z".repeat(100).as_bytes()
    );
}

#[test]
fn default_limits_are_a_tenth_of_the_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let limits = CacheLimits::default_for(dir.path()).unwrap();
    let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    assert!(
        limits.max_bytes <= free / 10 + free / 100 && limits.max_bytes + free / 100 >= free / 10
    );
    assert_eq!(limits.max_count, CacheLimits::DEFAULT_COUNT);
    assert!(CacheLimits::default_for(&dir.path().join("missing")).is_err());
}

#[test]
fn blobs_the_index_never_heard_of_are_found_when_a_cache_opens() {
    let shared = tempfile::tempdir().unwrap();
    fs::write(shared.path().join("f"), "fetched, never built").unwrap();
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let scan = scanner(shared.path(), &["f"]);
    let mut scan = scan;
    let manifest = scan.manifest().unwrap();
    assert_eq!(fetch_all(&cache, &scan, &manifest), 1);
    let tiny = CacheLimits {
        max_bytes: 1,
        max_count: 10,
    };
    // Reopened soon over its limits: only the index is read, which never heard of it.
    drop(HostCache::open(&user.path, tiny).unwrap());
    assert_eq!(cache.missing(&manifest).len(), 0);
    // Reopened once the last reconciling pass is old enough: the blob (no snapshot, no pin
    // now) is found and evicted.
    age_last_reconcile(&cache);
    drop(cache);
    let tiny = HostCache::open(&user.path, tiny).unwrap();
    assert_eq!(tiny.missing(&manifest).len(), 1);
}

/// Makes the last reconciling pass of `cache` look [`RECONCILE_EVERY`] old, so the next
/// opening reconciles again.
fn age_last_reconcile(cache: &HostCache) {
    let past = std::time::SystemTime::now() - parvm_ship::RECONCILE_EVERY;
    fs::File::options()
        .write(true)
        .open(cache.path().join("reconciled"))
        .unwrap()
        .set_modified(past)
        .unwrap();
}

#[test]
fn eviction_counts_what_other_processes_added_and_spares_what_is_pinned() {
    let shared = tempfile::tempdir().unwrap();
    let user = user_dir();
    // Room for two one-file trees (a blob and a snapshot each).
    let small = HostCache::open(
        &user.path,
        CacheLimits {
            max_bytes: 1 << 30,
            max_count: 4,
        },
    )
    .unwrap();
    fs::write(shared.path().join("a"), "a").unwrap();
    let (a, held_a) = ship(&small, &mut scanner(shared.path(), &["a"]));
    // Another process (another handle: its own tally) with room to spare adds three more;
    // within its limits it evicts nothing.
    let roomy = HostCache::open(&user.path, ROOMY).unwrap();
    let b = ship_one(&roomy, shared.path(), "b", b"b");
    let c = ship_one(&roomy, shared.path(), "c", b"c");
    let d = ship_one(&roomy, shared.path(), "d", b"d");
    for m in [&a, &b, &c, &d] {
        assert!(blob_path(&roomy, &m.blobs()[0].0).is_file());
    }
    // The small one's tally counted what the other appended: it is over its limits, so
    // it evicts the least recently used, sparing `a`, which its live snapshot pins.
    small.evict().unwrap();
    assert!(small.missing(&a).is_empty());
    assert!(held_a.path().join("a").is_file());
    assert_eq!(small.missing(&b).len(), 1, "b went");
    assert_eq!(small.missing(&c).len(), 1, "c went");
    assert!(
        small.missing(&d).is_empty(),
        "d stays: within the limits now"
    );
}

#[test]
fn missing_since_looks_only_at_changes_and_pins_the_whole_new_manifest() {
    use std::io::Read;
    let shared = tempfile::tempdir().unwrap();
    for (name, content) in [("a", "alpha"), ("b", "bravo"), ("c", "charlie")] {
        fs::write(shared.path().join(name), content).unwrap();
    }
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let mut scan = scanner(shared.path(), &["a", "b", "c"]);
    let (older, held) = ship(&cache, &mut scan);
    fs::write(shared.path().join("c"), "charlie, changed").unwrap();
    let newer = scan.manifest().unwrap();
    let missing = cache.missing_since(&newer, &older);
    assert_eq!(missing.len(), 1);
    let (digest, size, shown) = &missing[0];
    assert_eq!(*digest, Digest::of(b"charlie, changed"));
    let mut writer = mine(&cache, b"charlie, changed", &shown.to_string_lossy());
    let mut bytes = Vec::new();
    scan.open_blob(digest)
        .unwrap()
        .file
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(bytes.len() as u64, *size);
    writer.write(&bytes).unwrap();
    writer.finish().unwrap();
    // The older snapshot goes and a cache over its limits evicts: what the newer
    // manifest needs was pinned by `missing_since` until its snapshot is made.
    drop(held);
    let tight = HostCache::open(
        &user.path,
        CacheLimits {
            max_bytes: 1,
            max_count: 1,
        },
    )
    .unwrap();
    tight.evict().unwrap();
    let snapshot = cache.snapshot(&newer).unwrap();
    assert_eq!(fs::read(snapshot.path().join("a")).unwrap(), b"alpha");
    assert_eq!(
        fs::read(snapshot.path().join("c")).unwrap(),
        b"charlie, changed"
    );
    assert!(
        cache.missing_since(&newer, &older).is_empty(),
        "its snapshot is here"
    );

    // Unchanged blobs are not looked for: one removed by hand is not listed, while
    // `missing` finds it.
    fs::write(shared.path().join("a"), "alpha, changed").unwrap();
    let third = scan.manifest().unwrap();
    let bravo = blob_path(&cache, &Digest::of(b"bravo"));
    fs::set_permissions(bravo.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(&bravo).unwrap();
    assert_eq!(cache.missing_since(&third, &newer).len(), 1);
    assert_eq!(cache.missing(&third).len(), 2);
}

#[test]
fn clearing_empties_the_cache_but_what_a_live_snapshot_uses_and_makes_nothing() {
    use parvm_ship::CacheUsage;
    let nowhere = user_dir();
    let (before, after) = HostCache::clear(&nowhere.path).unwrap();
    assert_eq!(
        (before, after),
        (CacheUsage::default(), CacheUsage::default())
    );
    assert!(!nowhere.path.join("cache").exists(), "nothing made");

    let shared = tempfile::tempdir().unwrap();
    fs::create_dir_all(shared.path().join("kept")).unwrap();
    fs::create_dir_all(shared.path().join("gone/ro")).unwrap();
    fs::write(shared.path().join("kept/k"), "kept content").unwrap();
    fs::write(shared.path().join("gone/ro/g"), "gone content").unwrap();
    // A read-only folder, which `rm -rf` could not empty as its owner.
    fs::set_permissions(
        shared.path().join("gone/ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let user = user_dir();
    let cache = HostCache::open(&user.path, ROOMY).unwrap();
    let (_, kept) = crate::ship(&cache, &mut crate::scanner(shared.path(), &["kept"]));
    let (_, gone) = crate::ship(&cache, &mut crate::scanner(shared.path(), &["gone"]));
    let gone_path = gone.path().to_path_buf();
    drop(gone);
    let own_files = bookkeeping(&cache);
    let (before, after) = HostCache::clear(&user.path).unwrap();
    assert_eq!((before.blobs, before.snapshots), (2, 2));
    assert_eq!(
        before.bytes,
        b"kept content".len() as u64 + b"gone content".len() as u64 + own_files,
        "linked snapshot files are the blobs' bytes, counted once"
    );
    assert_eq!(
        (after.blobs, after.snapshots),
        (1, 1),
        "what the live snapshot uses"
    );
    assert!(!gone_path.exists());
    assert_eq!(
        fs::read(kept.path().join("kept/k")).unwrap(),
        b"kept content"
    );
    fs::set_permissions(
        shared.path().join("gone/ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

/// Bytes of the cache's own files: the index, pins, claims, temporary files and the
/// manifests kept beside the snapshots.
fn bookkeeping(cache: &HostCache) -> u64 {
    let files = |dir: PathBuf| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect()
    };
    let mut all = files(cache.path().to_path_buf());
    for sub in ["pins", "snapshots"] {
        all.extend(files(cache.path().join(sub)));
    }
    all.extend(work_files(cache).into_iter().filter(|p| p.is_file()));
    all.iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

mod eviction_law {
    //! Property: whatever is shipped, kept or let go, and however small the limits, a
    //! snapshot still held is never evicted or damaged (its files keep their content), and
    //! after an eviction the cache is within its limits or holds only what is held; also
    //! when the cache is opened again in between (the index read back from disk).

    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::path::Path;

    use parvm_ship::{CacheLimits, Digest, HostCache};
    use proptest::prelude::*;

    use crate::{fetch_all, scanner, user_dir};

    /// The content of pool entry `id` (shared between trees, so blobs are too).
    fn content(id: u8) -> Vec<u8> {
        vec![b'a' + id; 40 + 30 * usize::from(id)]
    }

    fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// What the cache holds as its limits count it: blob digest to bytes, snapshot root to
    /// the bytes of its files (its manifest's total).
    struct Entries {
        blobs: BTreeMap<Digest, u64>,
        snapshots: BTreeMap<Digest, u64>,
    }

    impl Entries {
        fn of(cache: &Path) -> Entries {
            let named = |dir: &Path| -> Vec<(Digest, std::path::PathBuf)> {
                fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter_map(|p| {
                        let digest = Digest::from_hex(p.file_name()?.to_str()?)?;
                        Some((digest, p))
                    })
                    .collect()
            };
            let mut blobs = BTreeMap::new();
            for fan in fs::read_dir(cache.join("blobs")).unwrap() {
                for (digest, path) in named(&fan.unwrap().path()) {
                    blobs.insert(digest, fs::metadata(path).unwrap().len());
                }
            }
            let snapshots = named(&cache.join("snapshots"))
                .into_iter()
                .filter(|(_, path)| path.is_dir())
                .map(|(digest, path)| (digest, bytes_beneath(&path)))
                .collect();
            Entries { blobs, snapshots }
        }

        fn count(&self) -> u64 {
            (self.blobs.len() + self.snapshots.len()) as u64
        }

        fn bytes(&self) -> u64 {
            self.blobs.values().chain(self.snapshots.values()).sum()
        }
    }

    fn bytes_beneath(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    bytes_beneath(&path)
                } else {
                    meta.len()
                }
            })
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn a_held_snapshot_is_never_evicted_or_damaged_and_the_rest_keeps_to_the_limits(
            steps in proptest::collection::vec(
                (0usize..4, proptest::collection::vec(0u8..6, 1..4), any::<bool>(), any::<bool>()),
                1..12,
            ),
            max_bytes in 100u64..2_000,
            max_count in 1u64..12,
        ) {
            let shared = tempfile::tempdir().unwrap();
            let user = user_dir();
            let limits = CacheLimits { max_bytes, max_count };
            let mut cache = HostCache::open(&user.path, limits).unwrap();
            let mut held = Vec::new();
            for (tree, ids, keep, reopen) in &steps {
                if *reopen {
                    // Opening applies the limits too, with the index read back from disk.
                    cache = HostCache::open(&user.path, limits).unwrap();
                    within_limits_or_all_held(&cache, limits, &held)?;
                }
                let name = format!("t{tree}");
                let dir = shared.path().join(&name);
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir(&dir).unwrap();
                let mut want = BTreeMap::new();
                for (k, id) in ids.iter().enumerate() {
                    fs::write(dir.join(format!("f{k}")), content(*id)).unwrap();
                    want.insert(format!("f{k}"), content(*id));
                }
                let mut scan = scanner(shared.path(), &[name.as_str()]);
                let manifest = scan.manifest().unwrap();
                fetch_all(&cache, &scan, &manifest);
                let snapshot = cache.snapshot(&manifest).unwrap();
                prop_assert_eq!(&files_of(&snapshot.path().join(&name)), &want);
                if *keep {
                    held.push((snapshot, name, want, manifest.root_digest()));
                } else {
                    drop(snapshot);
                }
                cache.evict().unwrap();
                for (snapshot, name, want, _) in &held {
                    prop_assert_eq!(&files_of(&snapshot.path().join(name)), want);
                }
                within_limits_or_all_held(&cache, limits, &held)?;
            }
        }
    }

    type Held = (
        parvm_ship::Snapshot,
        String,
        BTreeMap<String, Vec<u8>>,
        Digest,
    );

    /// The limits law: eviction goes on, least recently used first, while over a limit,
    /// sparing only what a held snapshot needs; so after it the cache is within both limits,
    /// or everything left is needed by a held snapshot.
    fn within_limits_or_all_held(
        cache: &HostCache,
        limits: CacheLimits,
        held: &[Held],
    ) -> Result<(), TestCaseError> {
        let now = Entries::of(cache.path());
        if now.count() <= limits.max_count && now.bytes() <= limits.max_bytes {
            return Ok(());
        }
        let roots: BTreeSet<Digest> = held.iter().map(|h| h.3).collect();
        let blobs: BTreeSet<Digest> = held
            .iter()
            .flat_map(|h| h.2.values().map(|content| Digest::of(content)))
            .collect();
        for digest in now.blobs.keys() {
            prop_assert!(
                blobs.contains(digest),
                "blob {digest} kept over the limits ({} entries, {} bytes) but no held snapshot needs it",
                now.count(),
                now.bytes()
            );
        }
        for digest in now.snapshots.keys() {
            prop_assert!(
                roots.contains(digest),
                "snapshot {digest} kept over the limits ({} entries, {} bytes) but not held",
                now.count(),
                now.bytes()
            );
        }
        Ok(())
    }
}
