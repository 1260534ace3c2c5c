//! Property: mirroring a random small tree gives exactly that tree (an in-memory model).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use parvm_mirror_fs::{MirrorMap, MirrorOptions, mirror, refresh};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File { content: Vec<u8>, exec: bool },
    Link(PathBuf),
}

pub(crate) type Tree = BTreeMap<PathBuf, Node>;

pub(crate) fn tree() -> impl Strategy<Value = Tree> {
    let name = prop::sample::select(vec!["a", "b", "c.txt", "d.lib", "e"]);
    let node = prop_oneof![
        3 => (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>())
            .prop_map(|(content, exec)| Node::File { content, exec }),
        1 => prop::sample::select(vec!["a", "../b", "/nowhere"]).prop_map(|t| Node::Link(t.into())),
    ];
    proptest::collection::vec((proptest::collection::vec(name, 1..4), node), 0..12).prop_map(
        |entries| {
            let mut tree = Tree::new();
            for (parts, node) in entries {
                let path: PathBuf = parts.iter().collect();
                // Every parent must be a folder; skip entries that clash with earlier ones.
                let parents: Vec<PathBuf> = path
                    .ancestors()
                    .skip(1)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
                    .collect();
                if tree.contains_key(&path)
                    || parents
                        .iter()
                        .any(|p| matches!(tree.get(p), Some(n) if *n != Node::Dir))
                {
                    continue;
                }
                if tree.keys().any(|k| k.starts_with(&path)) {
                    continue;
                }
                for p in parents {
                    tree.insert(p, Node::Dir);
                }
                tree.insert(path, node);
            }
            tree
        },
    )
}

pub(crate) fn build(root: &Path, tree: &Tree) {
    fs::create_dir_all(root).unwrap();
    for (rel, node) in tree {
        let path = root.join(rel);
        match node {
            Node::Dir => fs::create_dir_all(&path).unwrap(),
            Node::File { content, exec } => {
                fs::write(&path, content).unwrap();
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(if *exec { 0o755 } else { 0o640 }),
                )
                .unwrap();
            }
            Node::Link(target) => symlink(target, &path).unwrap(),
        }
    }
}

pub(crate) fn read(root: &Path) -> Tree {
    let mut tree = Tree::new();
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                tree.insert(rel, Node::Link(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                tree.insert(rel, Node::Dir);
                walk(root, &path, tree);
            } else {
                let exec = meta.permissions().mode() & 0o777 == 0o755;
                tree.insert(
                    rel,
                    Node::File {
                        content: fs::read(&path).unwrap(),
                        exec,
                    },
                );
            }
        }
    }
    walk(root, root, &mut tree);
    tree
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn mirror_equals_the_model(model in tree(), threads in 1usize..4) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let task = dir.path().join("task");
        build(&src, &model);
        fs::create_dir(&task).unwrap();
        let map = MirrorMap::new().entry(&src, ".").unwrap();
        let options = MirrorOptions::new().threads(threads);
        mirror(&map, &task, &options).unwrap();
        prop_assert_eq!(read(&task.join("src")), model.clone());
        // A refresh of an unchanged mirror changes nothing and copies nothing.
        let report = refresh(&map, &task, &options).unwrap();
        prop_assert_eq!(report.files + report.symlinks, 0);
        prop_assert_eq!(read(&task.join("src")), model);
    }
}
