//! The scanner: what it describes, the rules it shares with mirroring, and `open_blob`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parvm_ship::{Digest, Error, NodeKind, Scanner};

fn scanner(root: &Path, sources: &[&str]) -> Scanner {
    Scanner::new(
        vec![root.to_path_buf()],
        0,
        sources.iter().map(|s| s.as_bytes().to_vec()).collect(),
    )
}

fn names(m: &parvm_ship::Manifest) -> Vec<String> {
    m.entries()
        .into_iter()
        .map(|(p, _)| p.display().to_string())
        .collect()
}

#[test]
fn globs_match_as_mirroring_and_ancestors_hold_only_matches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("lib/sub")).unwrap();
    fs::write(root.join("lib/a.lib"), "a").unwrap();
    fs::write(root.join("lib/.hidden.lib"), "h").unwrap();
    fs::write(root.join("lib/b.txt"), "b").unwrap();
    fs::write(root.join("lib/sub/c.lib"), "c").unwrap();
    fs::create_dir_all(root.join("models/x")).unwrap();
    fs::write(root.join("models/x/m"), "m").unwrap();
    fs::write(root.join("top.cir"), "t").unwrap();
    fs::write(root.join("other"), "o").unwrap();
    let m = scanner(root, &["lib/*.lib", "models", "top.cir", "nothing*"])
        .manifest()
        .unwrap();
    assert_eq!(
        names(&m),
        [
            "lib",
            "lib/a.lib",
            "models",
            "models/x",
            "models/x/m",
            "top.cir"
        ]
    );
    assert_eq!(m.file_count(), 3);
    // A folder only on the way to matches is not copied by mirroring: fixed mode and time.
    let lib = m.find(Path::new("lib")).unwrap();
    assert_eq!(
        (lib.mode(), lib.mtime()),
        (parvm_ship::WAY_MODE, Default::default())
    );
    // So an entry added beside the matches changes nothing.
    let before = m.root_digest();
    fs::write(root.join("lib/unrelated.txt"), "u").unwrap();
    fs::write(root.join(".probe-marker"), "token").unwrap();
    let after = scanner(root, &["lib/*.lib", "models", "top.cir", "nothing*"])
        .manifest()
        .unwrap();
    assert_eq!(after.root_digest(), before);
}

#[test]
fn overlapping_sources_give_the_whole_folder() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    fs::write(dir.path().join("d/a"), "a").unwrap();
    fs::write(dir.path().join("d/b"), "b").unwrap();
    let m = scanner(dir.path(), &["d/a", "d"]).manifest().unwrap();
    assert_eq!(names(&m), ["d", "d/a", "d/b"]);
}

#[test]
fn entries_carry_modes_times_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, "content").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let m = scanner(dir.path(), &["f"]).manifest().unwrap();
    let node = m.find(Path::new("f")).unwrap();
    let meta = fs::metadata(&f).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(node.mode(), 0o640);
    assert_eq!(
        (node.mtime().secs, node.mtime().nanos as i64),
        (meta.mtime(), meta.mtime_nsec())
    );
    assert_eq!(
        node.kind(),
        &NodeKind::File {
            size: 7,
            digest: Digest::of(b"content")
        }
    );
}

#[test]
fn symlinks_inside_folders_stay_symlinks_and_top_level_ones_are_followed_into_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("real"), "real").unwrap();
    symlink("../real", root.join("d/inner")).unwrap();
    symlink(root.join("real"), root.join("top")).unwrap();
    nix::unistd::mkfifo(&root.join("d/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let m = scanner(root, &["d", "top"]).manifest().unwrap();
    assert_eq!(
        names(&m),
        ["d", "d/inner", "top"],
        "the fifo inside a folder is skipped, as mirroring does"
    );
    assert_eq!(
        m.find(Path::new("d/inner")).unwrap().kind(),
        &NodeKind::Symlink {
            target: b"../real".to_vec()
        }
    );
    assert!(matches!(
        m.find(Path::new("top")).unwrap().kind(),
        NodeKind::File { size: 4, .. }
    ));
}

#[test]
fn sources_mirroring_refuses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(outside.path().join("secret"), "s").unwrap();
    symlink(outside.path().join("secret"), root.join("out")).unwrap();
    symlink(root.join("gone"), root.join("dangling")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (source, what) in [
        ("out", "outside"),
        ("dangling", "dangling"),
        ("fifo", "fifo"),
        ("missing", "missing"),
        ("../x", "climbs"),
    ] {
        match scanner(root, &[source]).manifest() {
            Err(e @ Error::Source { .. }) => {
                let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
                assert!(text.contains(&root.display().to_string()), "{what}: {text}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let mut bad_index = Scanner::new(vec![root.to_path_buf()], 3, vec![b"x".to_vec()]);
    assert!(matches!(bad_index.manifest(), Err(Error::Source { .. })));
}

#[test]
fn unchanged_subtrees_keep_their_digest_and_nothing_changed_gives_the_same_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["a", "b"] {
        fs::create_dir(root.join(d)).unwrap();
        fs::write(root.join(d).join("f"), d).unwrap();
    }
    let mut s = scanner(root, &["a", "b"]);
    let first = s.manifest().unwrap();
    assert!(Arc::ptr_eq(&first, &s.manifest().unwrap()));
    // A change that keeps size and modification time is still seen (change time).
    let f = root.join("b/f");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, "B").unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let second = s.manifest().unwrap();
    assert_ne!(first.root_digest(), second.root_digest());
    let digest = |m: &parvm_ship::Manifest, p: &str| m.find(Path::new(p)).unwrap().digest();
    assert_eq!(digest(&first, "a"), digest(&second, "a"));
    assert_ne!(digest(&first, "b"), digest(&second, "b"));
}

#[test]
fn open_blob_reads_the_hashed_file_and_refuses_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let f: PathBuf = dir.path().join("f");
    fs::write(&f, "hello").unwrap();
    let mut s = scanner(dir.path(), &["f"]);
    let m = s.manifest().unwrap();
    let (digest, size, _) = m.blobs()[0].clone();
    let mut source = s.open_blob(&digest).unwrap();
    let mut text = String::new();
    source.file.read_to_string(&mut text).unwrap();
    assert_eq!((text.as_str(), source.size, size), ("hello", 5, 5));
    assert_eq!(source.path(), f);
    source.unchanged().unwrap();
    assert!(matches!(
        s.open_blob(&Digest::of(b"other")),
        Err(Error::UnknownBlob { .. })
    ));
    fs::write(&f, "hello, again").unwrap();
    // Changed after it was opened: what was read is no longer vouched for.
    assert!(matches!(source.unchanged(), Err(Error::SourceChanged { path }) if path == f));
    match s.open_blob(&digest) {
        Err(Error::SourceChanged { path }) => assert_eq!(path, f),
        other => panic!("{other:?}"),
    }
    // Replaced by a symlink: not followed.
    fs::remove_file(&f).unwrap();
    fs::write(dir.path().join("g"), "hello").unwrap();
    symlink(dir.path().join("g"), &f).unwrap();
    assert!(s.open_blob(&digest).is_err());
}

#[test]
fn the_root_itself_is_refused_as_mirroring_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "x").unwrap();
    let shipped = scanner(dir.path(), &[""]).manifest();
    assert!(
        matches!(
            shipped,
            Err(Error::Source {
                source: parvm_mirror_fs::Error::SourceIsRoot { .. },
                ..
            })
        ),
        "{shipped:?}"
    );
    let map = parvm_mirror_fs::MirrorMap::new()
        .entry(dir.path(), "x")
        .unwrap()
        .within(&[dir.path().to_path_buf()]);
    let task = tempfile::tempdir().unwrap();
    let mirrored =
        parvm_mirror_fs::mirror(&map, task.path(), &parvm_mirror_fs::MirrorOptions::new());
    assert!(
        matches!(mirrored, Err(parvm_mirror_fs::Error::SourceIsRoot { .. })),
        "{mirrored:?}"
    );
}
