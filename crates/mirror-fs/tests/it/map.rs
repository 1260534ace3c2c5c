//! Mirror maps: target validation before copying, translation between hosts.

use std::path::{Path, PathBuf};

use parvm_mirror_fs::{AbstractMirrorMap, Error, MirrorMap};

use crate::Fixture;

#[test]
fn bad_targets_are_refused_before_anything_is_copied() {
    let fx = Fixture::new();
    let src = fx.file("a.txt", b"a");
    for (target, absolute) in [
        ("/abs", true),
        ("../x", false),
        ("a/../../x", false),
        ("..", false),
    ] {
        let err = MirrorMap::new().entry(&src, target).unwrap_err();
        match (absolute, &err) {
            (true, Error::TargetAbsolute { .. }) | (false, Error::TargetEscapes { .. }) => {}
            _ => panic!("{target}: unexpected {err}"),
        }
        assert!(err.to_string().contains(target), "{err}");
    }
    // Nothing could be mirrored: the task folder is untouched.
    assert!(crate::listing(&fx.task).is_empty());
    for ok in ["a/../b", ".", "", "x/y"] {
        MirrorMap::new().entry(&src, ok).unwrap();
    }
}

#[test]
fn source_outside_every_root_is_refused() {
    let fx = Fixture::new();
    let map = MirrorMap::new().entry(fx.task.join("x"), ".").unwrap();
    let err = map
        .to_abstract(std::slice::from_ref(&fx.shared), Path::new("/"))
        .unwrap_err();
    assert!(matches!(err, Error::NoRoot { .. }), "{err}");
    assert!(
        err.to_string().contains(&fx.shared.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_root_itself_is_refused_as_a_source_naming_it_and_what_to_map_instead() {
    let fx = Fixture::new();
    fx.file("a.cir", b"netlist");
    let roots = std::slice::from_ref(&fx.shared);
    let check = |err: Error| {
        assert!(matches!(err, Error::SourceIsRoot { .. }), "{err}");
        let text = err.to_string();
        let instead = format!("`{}/*`", fx.shared.display());
        assert!(text.contains(&instead), "{text}");
    };
    // `.` in the root, on the spawner: refused before anything travels.
    let map = MirrorMap::new().entry(".", ".").unwrap();
    check(map.to_abstract(roots, &fx.shared).unwrap_err());
    // The root by path, mirrored on this host.
    let map = MirrorMap::new()
        .entry(&fx.shared, ".")
        .unwrap()
        .within(roots);
    check(
        parvm_mirror_fs::mirror(&map, &fx.task, &parvm_mirror_fs::MirrorOptions::new())
            .unwrap_err(),
    );
    assert!(crate::listing(&fx.task).is_empty());
    // What is in it is mirrored; so is a root inside another root (a folder of that one).
    let inner = fx.src("inner");
    std::fs::create_dir(&inner).unwrap();
    let nested = [fx.shared.clone(), inner.clone()];
    let map = MirrorMap::new().entry(&inner, ".").unwrap().within(&nested);
    parvm_mirror_fs::mirror(&map, &fx.task, &parvm_mirror_fs::MirrorOptions::new()).unwrap();
    assert!(fx.task.join("inner").is_dir());
    MirrorMap::new()
        .entry(&inner, ".")
        .unwrap()
        .to_abstract(&nested, &fx.shared)
        .unwrap();
}

#[test]
fn map_travels_to_another_host() {
    let fx = Fixture::new();
    let map = MirrorMap::new()
        .entry("lib/*.lib", "models")
        .unwrap()
        .entry(fx.src("top.cir"), ".")
        .unwrap();
    let abs = map
        .to_abstract(
            &[PathBuf::from("/elsewhere"), fx.shared.clone()],
            &fx.shared,
        )
        .unwrap();
    let wire = rmp_serde::to_vec(&abs).unwrap();
    let received: AbstractMirrorMap = rmp_serde::from_slice(&wire).unwrap();
    let host_b = [PathBuf::from("/b/other"), PathBuf::from("/b/shared")];
    let actual = received.to_actual(&host_b).unwrap();
    assert_eq!(actual.entries()[0].source, Path::new("/b/shared/lib/*.lib"));
    assert_eq!(actual.entries()[0].target, Path::new("models"));
    assert_eq!(actual.entries()[1].source, Path::new("/b/shared/top.cir"));
    // A host with fewer roots cannot translate it.
    let err = received
        .to_actual(&[PathBuf::from("/b/other")])
        .unwrap_err();
    assert!(
        matches!(err, Error::RootIndex { index: 1, count: 1 }),
        "{err}"
    );
}
