//! The whole path against a model: random shared trees, shipped and mirrored, give what
//! mirroring the shared tree gives, and so do they once changed (a file edited, which
//! reuses what it can; new matches of a glob, new files in a matched folder).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use parvm_mirror_fs::{MirrorMap, MirrorOptions, mirror};
use parvm_ship::HostCache;
use proptest::prelude::*;

use crate::{ROOMY, fetch_all, scanner, tree, user_dir};

#[derive(Debug, Clone)]
enum Entry {
    File(u32, Vec<u8>),
    Link(String),
    Dir(BTreeMap<String, Entry>),
}

fn entry() -> impl Strategy<Value = Entry> {
    let leaf = prop_oneof![
        (
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444]),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(m, c)| Entry::File(m, c)),
        "[a-c]{1,3}".prop_map(Entry::Link),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[a-d]{1,2}(\\.x)?", inner, 0..4).prop_map(Entry::Dir)
    })
}

fn write(dir: &Path, entries: &BTreeMap<String, Entry>) {
    for (name, e) in entries {
        let path = dir.join(name);
        match e {
            Entry::File(mode, content) => {
                fs::write(&path, content).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Entry::Link(target) => symlink(target, &path).unwrap(),
            Entry::Dir(children) => {
                fs::create_dir(&path).unwrap();
                write(&path, children);
            }
        }
    }
}

fn fast_tempdir() -> tempfile::TempDir {
    // tmpfs where there is one: each case makes dozens of files.
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// Sources: every top-level folder's `*.x` glob, and every top-level file (not links: a
/// top-level link to nothing is refused by both sides, which `sources_mirroring_refuses_are_refused` covers).
fn sources(entries: &BTreeMap<String, Entry>) -> Vec<String> {
    entries
        .iter()
        .filter_map(|(name, e)| match e {
            Entry::Dir(_) => Some(format!("{name}/*.x")),
            Entry::File(..) => Some(name.clone()),
            Entry::Link(_) => None,
        })
        .collect()
}

/// What mirroring `sources` from `root` gives: the task folder's tree, or the kind of error.
fn mirrored(root: &Path, sources: &[String]) -> Result<Vec<crate::TreeEntry>, String> {
    let mut map = MirrorMap::new();
    for s in sources {
        map = map.entry(root.join(s), ".").unwrap();
    }
    let task = fast_tempdir();
    mirror(
        &map.within(&[root.to_path_buf()]),
        task.path(),
        &MirrorOptions::new(),
    )
    .map_err(|e| kind(&e))?;
    Ok(tree(task.path()))
}

/// An error's variant name.
fn kind(e: &dyn std::fmt::Debug) -> String {
    format!("{e:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn shipping_then_mirroring_equals_mirroring(entries in prop::collection::btree_map("[a-d]{1,2}", entry(), 1..5), change in any::<prop::sample::Index>()) {
        let shared = fast_tempdir();
        write(shared.path(), &entries);
        let sources = sources(&entries);
        prop_assume!(!sources.is_empty());
        let user = user_dir();
        let cache = HostCache::open(&user.path, ROOMY).unwrap();
        let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
        let mut scan = scanner(shared.path(), &source_refs);
        let manifest = match scan.manifest() {
            Ok(m) => m,
            Err(parvm_ship::Error::Source { source, .. }) => {
                // The shipping side refuses exactly what mirroring refuses.
                prop_assert_eq!(Err(kind(&source)), mirrored(shared.path(), &sources));
                return Ok(());
            }
            Err(e) => panic!("{e}"),
        };
        fetch_all(&cache, &scan, &manifest);
        let snapshot = cache.snapshot(&manifest).unwrap();
        prop_assert_eq!(mirrored(snapshot.path(), &sources), mirrored(shared.path(), &sources));

        // Change one shipped file: only its blob is fetched, and the result still agrees.
        let files: Vec<_> = manifest.entries().into_iter()
            .filter(|(_, n)| matches!(n.kind(), parvm_ship::NodeKind::File { .. }))
            .map(|(p, _)| p)
            .collect();
        if !files.is_empty() {
            let path = shared.path().join(change.get(&files));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let mut content = fs::read(&path).unwrap();
            content.extend_from_slice(b"changed");
            fs::write(&path, &content).unwrap();
            let changed = scan.manifest().unwrap();
            prop_assert_ne!(changed.root_digest(), manifest.root_digest());
            prop_assert!(fetch_all(&cache, &scan, &changed) <= 1);
            let again = cache.snapshot(&changed).unwrap();
            prop_assert_eq!(mirrored(again.path(), &sources), mirrored(shared.path(), &sources));
        }

        // New matches of a glob: a file and a folder, and a file in a folder matched
        // already. The next manifest has them, and the result still agrees.
        let dirs: Vec<&String> = entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Dir(_)))
            .map(|(name, _)| name)
            .collect();
        if !dirs.is_empty() {
            let dir = shared.path().join(change.get(&dirs));
            fs::write(dir.join("zz.x"), b"new match").unwrap();
            fs::create_dir_all(dir.join("yy.x/in")).unwrap();
            fs::write(dir.join("yy.x/in/f"), b"new folder match").unwrap();
            if let Some(matched) = fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).find(|e| {
                e.file_name().to_string_lossy().ends_with(".x")
                    && e.file_name() != "yy.x"
                    && e.file_type().is_ok_and(|t| t.is_dir())
            }) {
                fs::write(matched.path().join("zz-new"), b"new in a matched folder").unwrap();
            }
            let grown = scan.manifest().unwrap();
            fetch_all(&cache, &scan, &grown);
            let again = cache.snapshot(&grown).unwrap();
            prop_assert_eq!(mirrored(again.path(), &sources), mirrored(shared.path(), &sources));
        }
    }
}
