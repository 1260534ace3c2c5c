//! Snapshots of read-only trees as a user who is not root: built, rebuilt with links,
//! patched, and evicted. Root ignores permission bits, so as root (as in CI) each test
//! runs as `nobody`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use parvm_ship::{CacheLimits, HostCache};
use parvm_test_support::as_unprivileged;

use crate::{ROOMY, fetch_all, scanner, ship, user_dir};

#[test]
fn read_only_trees_are_built_rebuilt_and_evicted() {
    as_unprivileged(
        "unprivileged::read_only_trees_are_built_rebuilt_and_evicted",
        || {
            let shared = tempfile::tempdir().unwrap();
            let ro = shared.path().join("ro");
            fs::create_dir_all(ro.join("deep")).unwrap();
            fs::write(ro.join("deep/m.lib"), "model").unwrap();
            fs::write(ro.join("frozen"), "frozen").unwrap();
            fs::write(ro.join("secret"), "mine only").unwrap();
            fs::set_permissions(ro.join("frozen"), fs::Permissions::from_mode(0o444)).unwrap();
            fs::set_permissions(ro.join("secret"), fs::Permissions::from_mode(0o400)).unwrap();
            fs::set_permissions(ro.join("deep"), fs::Permissions::from_mode(0o555)).unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();

            let user = user_dir();
            let cache = HostCache::open(&user.path, ROOMY).unwrap();
            let mut scan = scanner(shared.path(), &["ro"]);
            let (_, first) = ship(&cache, &mut scan);
            assert_eq!(
                fs::read(first.path().join("ro/deep/m.lib")).unwrap(),
                b"model"
            );
            let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode(&first.path().join("ro/deep")), 0o555);
            assert_eq!(mode(&first.path().join("ro/secret")), 0o400);

            // One file changes: the rebuild links the rest from the read-only first snapshot.
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(ro.join("new"), "new").unwrap();
            let manifest = scan.manifest().unwrap();
            assert_eq!(fetch_all(&cache, &scan, &manifest), 1);
            let second = cache.snapshot(&manifest).unwrap();
            assert_eq!(
                fs::read(second.path().join("ro/secret")).unwrap(),
                b"mine only"
            );

            // A file in a read-only folder changes: the second snapshot, held by nobody else,
            // is patched, its read-only folders opened and closed again.
            fs::set_permissions(ro.join("deep"), fs::Permissions::from_mode(0o755)).unwrap();
            fs::write(ro.join("deep/m.lib"), "model, changed").unwrap();
            fs::set_permissions(ro.join("deep"), fs::Permissions::from_mode(0o555)).unwrap();
            let third_manifest = scan.manifest().unwrap();
            assert_eq!(fetch_all(&cache, &scan, &third_manifest), 1);
            let second_path = second.path().to_path_buf();
            let third = cache
                .snapshot_after(&third_manifest, Some((second, &manifest)))
                .unwrap();
            assert!(!second_path.exists(), "patched, not built afresh");
            assert_eq!(
                fs::read(third.path().join("ro/deep/m.lib")).unwrap(),
                b"model, changed"
            );
            assert_eq!(mode(&third.path().join("ro/deep")), 0o555);
            assert_eq!(mode(&third.path().join("ro/secret")), 0o400);

            // Both evicted once nothing holds them: read-only folders are no obstacle.
            drop((first, third));
            drop(cache);
            let tiny = HostCache::open(
                &user.path,
                CacheLimits {
                    max_bytes: 0,
                    max_count: 0,
                },
            )
            .unwrap();
            let left: Vec<_> = fs::read_dir(tiny.path().join("snapshots"))
                .unwrap()
                .collect();
            assert!(left.is_empty(), "{left:?}");
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(ro.join("deep"), fs::Permissions::from_mode(0o755)).unwrap();
        },
    );
}
