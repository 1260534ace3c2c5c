//! Manifest laws: encoding round-trips, the root digest sees every change, unchanged
//! subtrees keep their digest, and forged bytes never panic the decoder.

use std::collections::BTreeMap;

use parvm_ship::{Digest, Error, Manifest, Node, NodeKind, Timestamp};
use proptest::prelude::*;

/// A tree as plain data, the model the manifest is built from.
#[derive(Debug, Clone)]
enum Model {
    File {
        mode: u32,
        mtime: (i64, u32),
        content: Vec<u8>,
    },
    Dir {
        mode: u32,
        mtime: (i64, u32),
        children: BTreeMap<Vec<u8>, Model>,
    },
    Link {
        mtime: (i64, u32),
        target: Vec<u8>,
    },
}

fn time((secs, nanos): (i64, u32)) -> Timestamp {
    Timestamp { secs, nanos }
}

fn build(name: &[u8], model: &Model) -> Node {
    match model {
        Model::File {
            mode,
            mtime,
            content,
        } => Node::file(
            name,
            *mode,
            time(*mtime),
            content.len() as u64,
            Digest::of(content),
        )
        .unwrap(),
        Model::Dir {
            mode,
            mtime,
            children,
        } => {
            let kids = children.iter().map(|(n, m)| build(n, m)).collect();
            Node::dir(name, *mode, time(*mtime), kids).unwrap()
        }
        Model::Link { mtime, target } => Node::symlink(name, 0o777, time(*mtime), target).unwrap(),
    }
}

fn manifest(children: &BTreeMap<Vec<u8>, Model>) -> Manifest {
    Manifest::new(build(
        b"",
        &Model::Dir {
            mode: 0o755,
            mtime: (1, 2),
            children: children.clone(),
        },
    ))
    .unwrap()
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"abcXYZ.-_\xff \n".to_vec()), 1..6)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn mtime() -> impl Strategy<Value = (i64, u32)> {
    (-5i64..5_000_000_000, 0u32..1_000_000_000)
}

fn model() -> impl Strategy<Value = Model> {
    let leaf = prop_oneof![
        (
            0u32..0o10000,
            mtime(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(mode, mtime, content)| Model::File {
                mode,
                mtime,
                content
            }),
        (mtime(), prop::collection::vec(1u8..=255, 1..20))
            .prop_map(|(mtime, target)| Model::Link { mtime, target }),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        (
            0u32..0o10000,
            mtime(),
            prop::collection::btree_map(name(), inner, 0..6),
        )
            .prop_map(|(mode, mtime, children)| Model::Dir {
                mode,
                mtime,
                children,
            })
    })
}

fn tree() -> impl Strategy<Value = BTreeMap<Vec<u8>, Model>> {
    prop::collection::btree_map(name(), model(), 0..6)
}

/// Paths (as name lists) of every file in the tree.
fn files(
    children: &BTreeMap<Vec<u8>, Model>,
    prefix: &mut Vec<Vec<u8>>,
    out: &mut Vec<Vec<Vec<u8>>>,
) {
    for (n, m) in children {
        prefix.push(n.clone());
        match m {
            Model::File { .. } => out.push(prefix.clone()),
            Model::Dir { children, .. } => files(children, prefix, out),
            Model::Link { .. } => {}
        }
        prefix.pop();
    }
}

fn file_at<'a>(children: &'a mut BTreeMap<Vec<u8>, Model>, path: &[Vec<u8>]) -> &'a mut Model {
    let m = children.get_mut(&path[0]).unwrap();
    if path.len() == 1 {
        return m;
    }
    match m {
        Model::Dir { children, .. } => file_at(children, &path[1..]),
        _ => unreachable!("paths come from `files`"),
    }
}

proptest! {
    #[test]
    fn decode_inverts_encode(t in tree()) {
        let m = manifest(&t);
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.root_digest(), m.root_digest());
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn any_file_change_changes_the_root_and_only_its_branch(t in tree(), pick in any::<prop::sample::Index>(), what in 0..4usize) {
        let mut paths = Vec::new();
        files(&t, &mut Vec::new(), &mut paths);
        prop_assume!(!paths.is_empty());
        let path = pick.get(&paths).clone();
        let before = manifest(&t);
        let mut changed = t.clone();
        if what == 3 {
            // Rename the file to a name no sibling has.
            let parent = if path.len() == 1 { &mut changed } else {
                match file_at(&mut changed, &path[..path.len() - 1]) { Model::Dir { children, .. } => children, _ => unreachable!() }
            };
            let model = parent.remove(path.last().unwrap()).unwrap();
            let mut fresh = path.last().unwrap().clone();
            while parent.contains_key(&fresh) { fresh.push(b'~'); }
            fresh.push(b'~');
            parent.insert(fresh, model);
        } else {
            let Model::File { mode, mtime, content } = file_at(&mut changed, &path) else { unreachable!() };
            match what {
                0 => content.push(1),
                1 => *mode ^= 0o100,
                _ => mtime.1 = (mtime.1 + 1) % 1_000_000_000,
            }
        }
        let after = manifest(&changed);
        prop_assert_ne!(before.root_digest(), after.root_digest());
        // Every top-level entry not on the changed path keeps its digest (matched by name:
        // a renamed entry may move among its siblings).
        for b in before.root().children().iter().filter(|b| b.name() != path[0].as_slice()) {
            let a = after.root().children().iter().find(|a| a.name() == b.name());
            prop_assert_eq!(a.map(|a| a.digest()), Some(b.digest()));
        }
    }

    #[test]
    fn forged_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut forged = b"PVSHIP1\n".to_vec();
        forged.extend_from_slice(&bytes);
        let _ = Manifest::decode(&bytes);
        let _ = Manifest::decode(&forged);
    }

    #[test]
    fn mutated_encodings_fail_or_stay_canonical(t in tree(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let bytes = manifest(&t).encode();
        let mut flipped = bytes.clone();
        let i = at.index(flipped.len());
        flipped[i] = byte;
        if let Ok(m) = Manifest::decode(&flipped) {
            prop_assert_eq!(m.encode(), flipped);
        }
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(Manifest::decode(truncated).is_err());
    }
}

#[test]
fn blobs_lists_each_content_once_with_a_path() {
    let t = Timestamp::default();
    let same = Digest::of(b"same");
    let root = Node::dir(
        b"",
        0o755,
        t,
        vec![
            Node::file(b"a", 0o644, t, 4, same).unwrap(),
            Node::dir(
                b"d",
                0o755,
                t,
                vec![
                    Node::file(b"b", 0o644, t, 4, same).unwrap(),
                    Node::file(b"c", 0o600, t, 1, Digest::of(b"c")).unwrap(),
                ],
            )
            .unwrap(),
        ],
    )
    .unwrap();
    let m = Manifest::new(root).unwrap();
    assert_eq!((m.total_bytes(), m.file_count()), (9, 3));
    let blobs = m.blobs();
    assert_eq!(
        blobs,
        vec![(same, 4, "a".into()), (Digest::of(b"c"), 1, "d/c".into())]
    );
    assert!(matches!(
        m.find("d/c".as_ref()).map(Node::kind),
        Some(NodeKind::File { size: 1, .. })
    ));
    assert!(m.find("d/x".as_ref()).is_none());
}

/// Hand-made encodings, each wrong in one way the decoder must name.
#[test]
fn hostile_manifests_are_refused() {
    fn node(tag: u8, name: &[u8], mode: u64, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, name.len() as u8];
        out.extend_from_slice(name);
        let mut m = mode;
        while m >= 0x80 {
            out.push((m as u8) | 0x80);
            m >>= 7;
        }
        out.push(m as u8);
        out.extend_from_slice(&0i64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(rest);
        out
    }
    let file = |name: &[u8]| {
        let mut rest = vec![1u8];
        rest.extend_from_slice(Digest::of(b"x").as_bytes());
        node(0, name, 0o644, &rest)
    };
    let with_root = |children: &[Vec<u8>]| {
        let mut out = b"PVSHIP1\n".to_vec();
        out.extend(node(1, b"", 0o755, &[children.len() as u8]));
        for c in children {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&[0u8; 32]);
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("bad magic", b"PVSHIP2\n".to_vec()),
        ("unsorted", with_root(&[file(b"b"), file(b"a")])),
        ("duplicate", with_root(&[file(b"a"), file(b"a")])),
        ("slash", with_root(&[file(b"a/b")])),
        ("dotdot", with_root(&[file(b"..")])),
        ("dot", with_root(&[file(b".")])),
        ("nul", with_root(&[file(b"a\0")])),
        ("empty name", with_root(&[file(b"")])),
        ("mode", with_root(&[node(0, b"a", 0o17777, &[0; 33])])),
        ("kind", with_root(&[node(7, b"a", 0o644, &[0; 33])])),
        ("root digest", with_root(&[file(b"a")])),
    ];
    for (what, bytes) in cases {
        match Manifest::decode(&bytes) {
            Err(Error::ManifestDecode { reason }) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A huge child count is refused before anything is reserved for it.
    let mut lie = b"PVSHIP1\n".to_vec();
    lie.extend(node(1, b"", 0o755, &[0xff, 0xff, 0xff, 0xff, 0x0f]));
    assert!(Manifest::decode(&lie).is_err());
    // Folders nested beyond the limit are refused without deep recursion.
    let mut deep = b"PVSHIP1\n".to_vec();
    deep.extend(node(1, b"", 0o755, &[1]));
    for _ in 0..100_000 {
        deep.extend(node(1, b"d", 0o755, &[1]));
    }
    deep.extend(file(b"f"));
    assert!(Manifest::decode(&deep).is_err());
}

#[test]
fn a_correct_root_digest_is_accepted() {
    let t = Timestamp::default();
    let m = Manifest::new(
        Node::dir(
            b"",
            0o755,
            t,
            vec![Node::file(b"a", 0o644, t, 1, Digest::of(b"x")).unwrap()],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
}

proptest! {
    /// `blobs_changed_since` lists every blob the newer manifest has and the older lacks,
    /// each once, only blobs of the newer one, with their sizes and a path that has them;
    /// nothing when nothing changed. The newer tree shares subtrees with the older one (a
    /// few of its top entries replaced), as a source edited between two tasks does.
    #[test]
    fn blobs_changed_since_covers_every_new_blob(old in tree(), replaced in tree()) {
        let mut new = old.clone();
        new.extend(replaced);
        let (older, newer) = (manifest(&old), manifest(&new));
        let changed = newer.blobs_changed_since(&older);
        let had: std::collections::HashSet<Digest> = older.blobs().iter().map(|b| b.0).collect();
        let listed: std::collections::HashSet<Digest> = changed.iter().map(|b| b.0).collect();
        prop_assert_eq!(listed.len(), changed.len(), "each blob once");
        for (digest, _, path) in newer.blobs() {
            prop_assert!(
                had.contains(&digest) || listed.contains(&digest),
                "{} is missed",
                path.display()
            );
        }
        for (digest, size, path) in &changed {
            let node = newer.find(path).expect("a path of the newer manifest");
            prop_assert_eq!(node.kind(), &NodeKind::File { size: *size, digest: *digest });
        }
        prop_assert!(newer.blobs_changed_since(&newer).is_empty());
    }
}

#[test]
fn blobs_changed_since_skips_unchanged_folders_and_sees_a_file_become_a_folder() {
    let file = |content: &[u8]| Model::File {
        mode: 0o644,
        mtime: (1, 0),
        content: content.to_vec(),
    };
    let dir = |children: Vec<(&[u8], Model)>| Model::Dir {
        mode: 0o755,
        mtime: (1, 0),
        children: children.into_iter().map(|(n, m)| (n.to_vec(), m)).collect(),
    };
    let old: BTreeMap<Vec<u8>, Model> = [
        (
            b"kept".to_vec(),
            dir(vec![(b"a", file(b"a")), (b"b", file(b"b"))]),
        ),
        (
            b"edited".to_vec(),
            dir(vec![(b"c", file(b"c")), (b"d", file(b"d"))]),
        ),
        (b"x".to_vec(), file(b"x")),
    ]
    .into();
    let mut new = old.clone();
    new.insert(
        b"edited".to_vec(),
        dir(vec![(b"c", file(b"c")), (b"d", file(b"d2"))]),
    );
    new.insert(b"x".to_vec(), dir(vec![(b"y", file(b"y"))]));
    let changed = manifest(&new).blobs_changed_since(&manifest(&old));
    let shown: Vec<(Digest, u64, std::path::PathBuf)> = vec![
        (Digest::of(b"d2"), 2, "edited/d".into()),
        (Digest::of(b"y"), 1, "x/y".into()),
    ];
    assert_eq!(changed, shown);
}
