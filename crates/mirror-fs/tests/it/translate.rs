//! Path translation: round trips, component-wise matching, host changes, symlinks, errors.

use std::path::{Component, Path, PathBuf};

use parvm_mirror_fs::{AbstractPath, Error, to_abstract_from, to_actual};
use proptest::prelude::*;

use crate::Fixture;

/// Roots and paths are built from these names under a base that does not exist, so no
/// symlink on the machine can interfere.
const BASE: &str = "/parvm-mirror-test-nonexistent";

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "a.b", "home", "home2", "x*", "d?"])
        .prop_map(str::to_string)
}

fn rel_path(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(name(), 0..max)
}

fn join(base: &str, parts: &[String]) -> PathBuf {
    let mut p = PathBuf::from(base);
    p.extend(parts);
    p
}

/// The model: a root matches when its component list is a prefix of the path's.
fn model_match(roots: &[Vec<String>], path: &[String]) -> Option<(usize, Vec<String>)> {
    roots
        .iter()
        .position(|r| r.len() <= path.len() && r[..] == path[..r.len()])
        .map(|i| (i, path[roots[i].len()..].to_vec()))
}

fn literal_only(parts: &[String]) -> bool {
    parts.iter().all(|p| !p.contains(['*', '?']))
}

proptest! {
    #[test]
    fn matching_agrees_with_component_model(
        roots in proptest::collection::vec(rel_path(3), 1..4),
        path in rel_path(5),
    ) {
        let actual_roots: Vec<PathBuf> = roots.iter().map(|r| join(BASE, r)).collect();
        // Roots hold no glob: a glob component in a root would never be a literal prefix.
        prop_assume!(roots.iter().all(|r| literal_only(r)));
        let got = to_abstract_from(&actual_roots, Path::new("/"), &join(BASE, &path));
        match model_match(&roots, &path) {
            Some((index, suffix)) => {
                let got = got.unwrap();
                prop_assert_eq!(got.root, index, "first root in list order wins");
                prop_assert_eq!(got.suffix, suffix.iter().collect::<PathBuf>());
            }
            None => prop_assert!(matches!(got, Err(Error::NoRoot { .. })), "expected no root"),
        }
    }

    #[test]
    fn round_trip_and_host_change_keep_the_suffix(
        roots in proptest::collection::vec(rel_path(3), 1..4),
        index in 0usize..4,
        suffix in rel_path(4),
    ) {
        prop_assume!(roots.iter().all(|r| literal_only(r)));
        let index = index % roots.len();
        let host_a: Vec<PathBuf> = roots.iter().map(|r| join(BASE, r)).collect();
        let host_b: Vec<PathBuf> = (0..roots.len()).map(|i| PathBuf::from(format!("{BASE}/hostb/mnt{i}"))).collect();
        let path = host_a[index].join(suffix.iter().collect::<PathBuf>());
        let abs = to_abstract_from(&host_a, Path::new("/"), &path).unwrap();
        // Suffix is relative and free of `..`.
        prop_assert!(abs.suffix.components().all(|c| matches!(c, Component::Normal(_))));
        // Round trip on the same host gives the path back.
        let back = to_actual(&host_a, &abs).unwrap();
        prop_assert_eq!(&back, &path);
        // On host B the same suffix hangs under B's root of the same index.
        let on_b = to_actual(&host_b, &abs).unwrap();
        prop_assert_eq!(on_b.strip_prefix(&host_b[abs.root]).unwrap(), abs.suffix.as_path());
        let abs_b = to_abstract_from(&host_b, Path::new("/"), &on_b).unwrap();
        prop_assert_eq!(abs_b, abs);
    }

    #[test]
    fn dot_dot_is_normalised_away(parts in rel_path(4), ups in 0usize..3) {
        prop_assume!(literal_only(&parts));
        let root = PathBuf::from(BASE);
        let mut path = join(BASE, &parts);
        for _ in 0..ups {
            path.push("..");
        }
        path.push("z");
        let abs = to_abstract_from(std::slice::from_ref(&root), Path::new("/"), &path);
        if ups <= parts.len() {
            let abs = abs.unwrap();
            prop_assert!(abs.suffix.components().all(|c| matches!(c, Component::Normal(_))));
        } else {
            // Climbing above the root leaves it: no match.
            prop_assert!(abs.is_err());
        }
    }
}

#[test]
fn nested_roots_first_in_list_order_wins() {
    let roots = [
        PathBuf::from(format!("{BASE}/a/b")),
        PathBuf::from(format!("{BASE}/a")),
    ];
    let got =
        to_abstract_from(&roots, Path::new("/"), Path::new(&format!("{BASE}/a/b/c"))).unwrap();
    assert_eq!(
        got,
        AbstractPath {
            root: 0,
            suffix: "c".into()
        }
    );
    let roots = [
        PathBuf::from(format!("{BASE}/a")),
        PathBuf::from(format!("{BASE}/a/b")),
    ];
    let got =
        to_abstract_from(&roots, Path::new("/"), Path::new(&format!("{BASE}/a/b/c"))).unwrap();
    assert_eq!(
        got,
        AbstractPath {
            root: 0,
            suffix: "b/c".into()
        }
    );
}

#[test]
fn relative_paths_use_the_given_cwd() {
    let roots = [PathBuf::from(BASE)];
    let got = to_abstract_from(
        &roots,
        Path::new(&format!("{BASE}/work")),
        Path::new("./in/../lib/x.lib"),
    )
    .unwrap();
    assert_eq!(got.suffix, Path::new("work/lib/x.lib"));
}

#[test]
fn outside_every_root_lists_the_roots() {
    let roots = [PathBuf::from("/parvm-r0"), PathBuf::from("/parvm-r1")];
    let err = to_abstract_from(&roots, Path::new("/"), Path::new("/elsewhere/x")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoRoot { .. }));
    assert!(
        msg.contains("/elsewhere/x") && msg.contains("/parvm-r0") && msg.contains("/parvm-r1"),
        "{msg}"
    );
}

#[test]
fn index_past_the_end_names_index_and_count() {
    let err = to_actual(
        &[PathBuf::from("/r")],
        &AbstractPath {
            root: 2,
            suffix: "x".into(),
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::RootIndex { index: 2, count: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains('2') && err.to_string().contains('1'));
}

#[test]
fn symlinks_in_the_literal_part_are_resolved_glob_part_kept() {
    let fx = Fixture::new();
    fx.file("real/data/a.lib", b"a");
    // A link outside the root pointing into it: the path is inside after resolution.
    let outside = fx.task.join("link");
    std::os::unix::fs::symlink(fx.src("real"), &outside).unwrap();
    let roots = [fx.shared.clone()];
    let got = to_abstract_from(&roots, Path::new("/"), &outside.join("data/*.lib")).unwrap();
    assert_eq!(
        got,
        AbstractPath {
            root: 0,
            suffix: "real/data/*.lib".into()
        }
    );
    // A path whose end does not exist yet resolves its existing prefix.
    let got = to_abstract_from(&roots, Path::new("/"), &outside.join("data/new/x")).unwrap();
    assert_eq!(got.suffix, Path::new("real/data/new/x"));
}

#[test]
fn abstract_path_round_trips_non_utf8_through_msgpack_and_json() {
    use std::os::unix::ffi::OsStrExt;
    let suffix = PathBuf::from(std::ffi::OsStr::from_bytes(b"d\xff/x.lib"));
    let abs = AbstractPath { root: 1, suffix };
    let bytes = rmp_serde::to_vec(&abs).unwrap();
    assert_eq!(rmp_serde::from_slice::<AbstractPath>(&bytes).unwrap(), abs);
    let json = serde_json::to_string(&abs).unwrap();
    assert_eq!(serde_json::from_str::<AbstractPath>(&json).unwrap(), abs);
    let plain = AbstractPath {
        root: 0,
        suffix: "a/b".into(),
    };
    assert_eq!(
        serde_json::to_string(&plain).unwrap(),
        r#"{"root":0,"suffix":"a/b"}"#
    );
}
