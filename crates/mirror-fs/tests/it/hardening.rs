//! Attacks and accidents: symlinks planted in the task folder and in the shared folders,
//! fifos and devices as sources, sources changed while they are copied, and the modes of
//! the folders mirroring makes. Each attack runs with `openat2` and with the component walk
//! that stands in for it on older kernels, and as `nobody` where permissions matter.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parvm_mirror_fs::{Error, MirrorMap, MirrorOptions, MirroredFolder, mirror, refresh};
use parvm_test_support::as_unprivileged;

use crate::{Fixture, listing};

/// Both ways of resolving targets: `openat2`, and the component walk.
fn both() -> [MirrorOptions; 2] {
    [MirrorOptions::new(), MirrorOptions::new().no_openat2()]
}

/// A folder outside the task and shared folders, where nothing may be written. It holds
/// empty folders `b/c` and `sub`, so that a mirror following a planted symlink to it would
/// find the folders it wants and write into them.
fn elsewhere(fx: &Fixture) -> PathBuf {
    let dir = fx.task.parent().unwrap().join("elsewhere");
    fs::create_dir_all(dir.join("b/c")).unwrap();
    fs::create_dir_all(dir.join("sub")).unwrap();
    dir
}

/// Nothing but the empty folders [`elsewhere`] made (and files the test put there itself).
fn assert_untouched(dir: &Path) {
    let found: Vec<PathBuf> = listing(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file() && !p.starts_with("key") && !p.starts_with("id_rsa"))
        .collect();
    assert!(
        found.is_empty(),
        "written into `{}`: {found:?}",
        dir.display()
    );
}

fn assert_names_link(err: &Error, link: &Path) {
    match err {
        Error::TargetSymlink { link: named, .. } => assert_eq!(named, link, "{err}"),
        other => panic!(
            "expected a refused symlink `{}`, got: {other}",
            link.display()
        ),
    }
    let text = err.to_string();
    assert!(text.contains(&link.display().to_string()), "{text}");
    assert!(text.contains("remove it"), "{text}");
}

#[test]
fn a_symlink_on_the_way_to_a_target_is_refused_before_anything_is_written() {
    for options in both() {
        let fx = Fixture::new();
        let outside = elsewhere(&fx);
        fx.file("top.cir", b"netlist");
        fx.file("lib/m.lib", b"model");
        fs::create_dir(fx.dst("x")).unwrap();
        symlink(&outside, fx.dst("x/a")).unwrap();
        for target in ["x/a", "x/a/b", "x/a/b/c"] {
            let map = MirrorMap::new()
                .entry(fx.src("lib"), "fine")
                .unwrap()
                .entry(fx.src("*.cir"), target)
                .unwrap();
            let err = mirror(&map, &fx.task, &options).unwrap_err();
            assert_names_link(&err, &fx.dst("x/a"));
            assert_untouched(&outside);
            // The first entry was not copied either: the check runs before any copy.
            assert_eq!(
                listing(&fx.task),
                vec![PathBuf::from("x"), PathBuf::from("x/a")]
            );
        }
    }
}

#[test]
fn the_task_folder_top_level_symlink_is_refused_too() {
    for options in both() {
        let fx = Fixture::new();
        let outside = elsewhere(&fx);
        fx.file("top.cir", b"netlist");
        symlink(&outside, fx.dst("a")).unwrap();
        let map = MirrorMap::new().entry(fx.src("top.cir"), "a").unwrap();
        let err = mirror(&map, &fx.task, &options).unwrap_err();
        assert_names_link(&err, &fx.dst("a"));
        assert_untouched(&outside);
    }
}

#[test]
fn a_persistent_folder_with_a_planted_symlink_is_not_refreshed_through_it() {
    for options in both() {
        let fx = Fixture::new();
        let outside = elsewhere(&fx);
        fx.file("top.cir", b"v1");
        fx.file("lib/sub/m.lib", b"model");
        fx.file("z/other.cir", b"o1");
        let map = MirrorMap::new()
            .entry(fx.src("z/other.cir"), ".")
            .unwrap()
            .entry(fx.src("top.cir"), "in/put")
            .unwrap()
            .entry(fx.src("lib"), ".")
            .unwrap();
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        // A task replaces a target folder and a copied folder with symlinks.
        fs::remove_dir_all(fx.dst("in")).unwrap();
        symlink(&outside, fx.dst("in")).unwrap();
        fs::remove_dir_all(fx.dst("lib/sub")).unwrap();
        symlink(&outside, fx.dst("lib/sub")).unwrap();
        fs::write(fx.src("top.cir"), b"v2 longer").unwrap();
        fs::write(fx.src("lib/sub/m.lib"), b"model 2").unwrap();
        fs::write(fx.src("z/other.cir"), b"o2 longer").unwrap();
        let err = folder.refresh(&options).unwrap_err();
        assert!(
            matches!(err, Error::TargetSymlink { .. }),
            "expected a refused symlink, got: {err}"
        );
        assert_untouched(&outside);
        assert_eq!(
            fs::read(fx.dst("other.cir")).unwrap(),
            b"o1",
            "nothing is written before the symlink is refused"
        );
        // The stateless refresh of another process refuses it as well.
        let err = refresh(&map, &fx.task, &options).unwrap_err();
        assert!(
            matches!(err, Error::TargetSymlink { .. }),
            "expected a refused symlink, got: {err}"
        );
        assert_untouched(&outside);
    }
}

#[test]
fn a_symlink_in_a_copied_folder_of_the_task_folder_is_not_written_through() {
    for options in both() {
        let fx = Fixture::new();
        let outside = elsewhere(&fx);
        fx.file("lib/sub/m.lib", b"model");
        let map = MirrorMap::new().entry(fx.src("lib"), ".").unwrap();
        mirror(&map, &fx.task, &options).unwrap();
        fs::remove_dir_all(fx.dst("lib/sub")).unwrap();
        symlink(&outside, fx.dst("lib/sub")).unwrap();
        let err = mirror(&map, &fx.task, &options).unwrap_err();
        assert_names_link(&err, &fx.dst("lib/sub"));
        assert_untouched(&outside);
    }
}

#[test]
fn planted_symlinks_are_refused_as_nobody() {
    as_unprivileged("hardening::planted_symlinks_are_refused_as_nobody", || {
        for options in both() {
            let fx = Fixture::new();
            let outside = elsewhere(&fx);
            fx.file("top.cir", b"netlist");
            symlink(&outside, fx.dst("a")).unwrap();
            let map = MirrorMap::new().entry(fx.src("top.cir"), "a/b").unwrap();
            let err = mirror(&map, &fx.task, &options).unwrap_err();
            assert_names_link(&err, &fx.dst("a"));
            assert_untouched(&outside);
        }
    });
}

/// A map of the shared folder's glob, confined to the shared folder as on a worker.
fn confined(fx: &Fixture, glob: &str) -> MirrorMap {
    MirrorMap::new()
        .entry(fx.src(glob), ".")
        .unwrap()
        .within(std::slice::from_ref(&fx.shared))
}

#[test]
fn a_glob_match_that_is_a_symlink_out_of_the_roots_is_refused() {
    let fx = Fixture::new();
    let secret_dir = elsewhere(&fx);
    fs::write(secret_dir.join("id_rsa"), "secret").unwrap();
    fx.file("a.cir", b"netlist");
    symlink(secret_dir.join("id_rsa"), fx.src("leak.cir")).unwrap();
    let err = mirror(&confined(&fx, "*.cir"), &fx.task, &MirrorOptions::new()).unwrap_err();
    match &err {
        Error::LinkOutsideRoots { link, target, .. } => {
            assert_eq!(link, &fx.src("leak.cir"));
            assert_eq!(target, &secret_dir.join("id_rsa"));
        }
        other => panic!("expected a refused link, got: {other}"),
    }
    let text = err.to_string();
    for part in [
        fx.src("leak.cir").display().to_string(),
        secret_dir.join("id_rsa").display().to_string(),
        fx.shared.display().to_string(),
        secret_dir.display().to_string(),
        "PARALLEL_MIRRORED_STORAGE".to_owned(),
    ] {
        assert!(text.contains(&part), "`{part}` missing in: {text}");
    }
    assert!(listing(&fx.task).is_empty(), "nothing is copied");

    // A symlink to a folder outside, and the same through the host-independent map.
    fs::remove_file(fx.src("leak.cir")).unwrap();
    symlink(&secret_dir, fx.src("leak")).unwrap();
    let abs = MirrorMap::new()
        .entry(fx.src("*"), ".")
        .unwrap()
        .to_abstract(std::slice::from_ref(&fx.shared), Path::new("/"))
        .unwrap();
    let map = abs.to_actual(std::slice::from_ref(&fx.shared)).unwrap();
    let err = mirror(&map, &fx.task, &MirrorOptions::new()).unwrap_err();
    assert!(matches!(err, Error::LinkOutsideRoots { .. }), "{err}");
    assert!(listing(&fx.task).is_empty());
}

#[test]
fn symlinks_into_the_roots_are_followed_and_inner_symlinks_stay_symlinks() {
    let fx = Fixture::new();
    fx.file("real/a.cir", b"netlist");
    fx.file("tree/x.txt", b"x");
    fs::create_dir(fx.src("top")).unwrap();
    symlink(fx.src("real/a.cir"), fx.src("top/link.cir")).unwrap();
    // Inside a copied folder, even a symlink out of the roots stays a symlink.
    symlink("/etc/passwd", fx.src("tree/passwd")).unwrap();
    let map = confined(&fx, "top/*")
        .entry(fx.src("tree"), ".")
        .unwrap()
        .within(std::slice::from_ref(&fx.shared));
    mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!(fs::read(fx.dst("link.cir")).unwrap(), b"netlist");
    assert!(
        !fs::symlink_metadata(fx.dst("link.cir"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(fx.dst("tree/passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn a_new_glob_match_out_of_the_roots_is_refused_by_a_refresh() {
    let fx = Fixture::new();
    let secret_dir = elsewhere(&fx);
    fs::write(secret_dir.join("key"), "secret").unwrap();
    fx.file("a.cir", b"netlist");
    let map = confined(&fx, "*.cir");
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    symlink(secret_dir.join("key"), fx.src("leak.cir")).unwrap();
    let err = folder.refresh(&MirrorOptions::new()).unwrap_err();
    assert!(matches!(err, Error::LinkOutsideRoots { .. }), "{err}");
    assert!(!fx.dst("leak.cir").exists());
    let err = refresh(&map, &fx.task, &MirrorOptions::new()).unwrap_err();
    assert!(matches!(err, Error::LinkOutsideRoots { .. }), "{err}");
    assert!(!fx.dst("leak.cir").exists());
}

#[test]
fn a_top_level_file_replaced_by_a_symlink_out_of_the_roots_is_not_copied_by_a_refresh() {
    let fx = Fixture::new();
    let secret_dir = elsewhere(&fx);
    fs::write(secret_dir.join("key"), "secret").unwrap();
    fx.file("a.cir", b"netlist");
    let map = confined(&fx, "a.cir");
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    fs::remove_file(fx.src("a.cir")).unwrap();
    symlink(secret_dir.join("key"), fx.src("a.cir")).unwrap();
    let err = folder.refresh(&MirrorOptions::new()).unwrap_err();
    assert!(matches!(err, Error::LinkOutsideRoots { .. }), "{err}");
    assert_eq!(fs::read(fx.dst("a.cir")).unwrap(), b"netlist");
}

#[test]
fn a_dangling_symlink_match_is_named() {
    let fx = Fixture::new();
    fx.file("a.cir", b"netlist");
    symlink(fx.src("gone.cir.orig"), fx.src("gone.cir")).unwrap();
    let err = mirror(&confined(&fx, "*.cir"), &fx.task, &MirrorOptions::new()).unwrap_err();
    match &err {
        Error::DanglingLink { link, target } => {
            assert_eq!(link, &fx.src("gone.cir"));
            assert_eq!(target, &fx.src("gone.cir.orig"));
        }
        other => panic!("expected a dangling link, got: {other}"),
    }
    assert!(err.to_string().contains("gone.cir"), "{err}");
    assert!(listing(&fx.task).is_empty());
}

#[test]
fn fifos_and_devices_given_as_sources_are_refused() {
    let fx = Fixture::new();
    nix::unistd::mkfifo(&fx.src("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fx.file("a.cir", b"netlist");
    let cases = [
        (fx.src("pipe"), "fifo"),
        (fx.src("pi*"), "fifo"),
        (PathBuf::from("/dev/null"), "character device"),
    ];
    for (source, kind) in cases {
        let map = MirrorMap::new().entry(&source, ".").unwrap();
        let err = mirror(&map, &fx.task, &MirrorOptions::new()).unwrap_err();
        match &err {
            Error::NotCopyable { kind: named, .. } => assert_eq!(*named, kind, "{err}"),
            other => panic!(
                "{}: expected a refused {kind}, got: {other}",
                source.display()
            ),
        }
        assert!(err.to_string().contains(kind), "{err}");
        assert!(listing(&fx.task).is_empty());
    }
}

#[test]
fn fifos_and_devices_are_refused_as_nobody() {
    as_unprivileged("hardening::fifos_and_devices_are_refused_as_nobody", || {
        let fx = Fixture::new();
        nix::unistd::mkfifo(&fx.src("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        for source in [fx.src("pipe"), PathBuf::from("/dev/null")] {
            let map = MirrorMap::new().entry(&source, ".").unwrap();
            let err = mirror(&map, &fx.task, &MirrorOptions::new()).unwrap_err();
            assert!(matches!(err, Error::NotCopyable { .. }), "{err}");
        }
    });
}

#[test]
fn a_source_truncated_during_its_copy_is_copied_again() {
    let fx = Fixture::new();
    let big = vec![7u8; 1 << 20];
    fx.file("big.raw", &big);
    let source = fx.src("big.raw");
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let options = MirrorOptions::new().after_copy(move |path| {
        if path == source && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            // The simulator rewrites its output while it is being mirrored.
            fs::write(path, b"short").unwrap();
        }
    });
    let map = MirrorMap::new().entry(fx.src("big.raw"), ".").unwrap();
    let report = mirror(&map, &fx.task, &options).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "copied twice");
    assert_eq!(fs::read(fx.dst("big.raw")).unwrap(), b"short");
    assert_eq!(report.bytes, 5);
}

#[test]
fn a_source_that_keeps_changing_is_refused_and_its_copy_removed() {
    let fx = Fixture::new();
    fx.file("log/run.log", b"line\n");
    fx.file("log/other.txt", b"x");
    let options = MirrorOptions::new().threads(1).after_copy(|path| {
        if path.ends_with("run.log") {
            let mut text = fs::read(path).unwrap();
            text.extend_from_slice(b"more\n");
            fs::write(path, text).unwrap();
        }
    });
    let map = MirrorMap::new().entry(fx.src("log"), ".").unwrap();
    let err = mirror(&map, &fx.task, &options).unwrap_err();
    match &err {
        Error::SourceChanged { path, tries } => {
            assert_eq!(path, &fx.src("log/run.log"));
            assert!(*tries > 1);
        }
        other => panic!("expected a changing source, got: {other}"),
    }
    assert!(err.to_string().contains("run.log"), "{err}");
    assert!(listing(&fx.task).is_empty(), "{:?}", listing(&fx.task));
}

/// This process's umask, from `/proc` (setting it to read it would race other tests).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn target_folders_get_mkdir_modes_and_copied_folders_their_source_modes() {
    let fx = Fixture::new();
    fx.file("lib/m.lib", b"model");
    fs::set_permissions(fx.src("lib"), fs::Permissions::from_mode(0o750)).unwrap();
    fx.file("top.cir", b"netlist");
    let map = MirrorMap::new()
        .entry(fx.src("top.cir"), "deep/er")
        .unwrap()
        .entry(fx.src("lib"), "models")
        .unwrap();
    for options in both() {
        fs::remove_dir_all(&fx.task).unwrap();
        fs::create_dir(&fx.task).unwrap();
        fs::set_permissions(&fx.task, fs::Permissions::from_mode(0o700)).unwrap();
        MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let mode = |rel: &str| fs::metadata(fx.dst(rel)).unwrap().permissions().mode() & 0o7777;
        let want = (0o777 & !umask()) | 0o700;
        assert_eq!(mode("deep"), want, "{:o}", mode("deep"));
        assert_eq!(mode("deep/er"), want);
        assert_eq!(mode("models"), want);
        assert_eq!(mode("models/lib"), 0o750);
        assert_eq!(
            fs::metadata(&fx.task).unwrap().permissions().mode() & 0o7777,
            0o700,
            "the task folder is left alone"
        );
    }
}

#[test]
fn a_saved_manifest_lets_another_process_see_a_same_size_same_time_replacement() {
    let fx = Fixture::new();
    fx.file("lib/a.lib", b"corner tt");
    fx.file("top.cir", b"netlist");
    let map = MirrorMap::new()
        .entry(fx.src("lib"), "models")
        .unwrap()
        .entry(fx.src("*.cir"), ".")
        .unwrap()
        .within(std::slice::from_ref(&fx.shared));
    MirroredFolder::mirror(&map, &fx.task, &MirrorOptions::new())
        .unwrap()
        .save()
        .unwrap();
    // `cp -p` of another corner: same length, the old modification time put back.
    let before = fs::metadata(fx.src("lib/a.lib"))
        .unwrap()
        .modified()
        .unwrap();
    fs::write(fx.src("lib/a.lib"), b"corner ff").unwrap();
    crate::set_mtime(&fx.src("lib/a.lib"), before);
    // The stateless refresh cannot tell.
    let report = refresh(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!(report.files, 0);
    let mut folder = MirroredFolder::load(&map, &fx.task, &MirrorOptions::new())
        .unwrap()
        .expect("the saved manifest");
    let report = folder.refresh(&MirrorOptions::new()).unwrap();
    assert_eq!(report.files, 1, "{report:?}");
    assert_eq!(fs::read(fx.dst("models/lib/a.lib")).unwrap(), b"corner ff");

    // Another map, or a manifest that names a source outside the roots, is not used.
    let other = MirrorMap::new().entry(fx.src("top.cir"), ".").unwrap();
    assert!(
        MirroredFolder::load(&other, &fx.task, &MirrorOptions::new())
            .unwrap()
            .is_none()
    );
    let narrower = map.clone().within(&[fx.src("lib")]);
    assert!(
        MirroredFolder::load(&narrower, &fx.task, &MirrorOptions::new())
            .unwrap()
            .is_none(),
        "the manifest names sources outside the roots given now"
    );
    // Garbage is not trusted either.
    fs::write(fx.dst(parvm_mirror_fs::MANIFEST_FILE), b"\xc1garbage").unwrap();
    assert!(
        MirroredFolder::load(&map, &fx.task, &MirrorOptions::new())
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_manifest_is_not_written_through_a_planted_symlink() {
    let fx = Fixture::new();
    let outside = elsewhere(&fx);
    fx.file("top.cir", b"netlist");
    let map = MirrorMap::new().entry(fx.src("top.cir"), ".").unwrap();
    let folder = MirroredFolder::mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    symlink(
        outside.join("stolen"),
        fx.dst(parvm_mirror_fs::MANIFEST_FILE),
    )
    .unwrap();
    folder.save().unwrap();
    assert!(!outside.join("stolen").exists());
    assert!(
        !fs::symlink_metadata(fx.dst(parvm_mirror_fs::MANIFEST_FILE))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn a_refresh_does_not_take_a_copy_behind_a_planted_symlink_for_the_copy() {
    for options in both() {
        let fx = Fixture::new();
        let outside = elsewhere(&fx);
        fx.file("top.cir", b"netlist");
        let map = MirrorMap::new().entry(fx.src("top.cir"), "in/put").unwrap();
        let mut folder =
            MirroredFolder::mirror(&map, &fx.task, &options.clone().no_inotify()).unwrap();
        // A task moves the folder out and leaves a symlink to it: the copy looks intact
        // through the link.
        fs::rename(fx.dst("in"), outside.join("in")).unwrap();
        symlink(outside.join("in"), fx.dst("in")).unwrap();
        let err = folder.refresh(&options.clone().no_inotify()).unwrap_err();
        assert!(
            matches!(err, Error::TargetSymlink { .. }),
            "expected a refused symlink, got: {err}"
        );
    }
}

#[test]
fn the_startup_folder_is_opened_beneath_the_task_folder() {
    let fx = Fixture::new();
    let outside = elsewhere(&fx);
    fs::create_dir_all(fx.dst("run/here")).unwrap();
    symlink(&outside, fx.dst("link")).unwrap();
    let (_, path) = parvm_mirror_fs::open_beneath(&fx.task, Path::new("run/./here")).unwrap();
    assert_eq!(path, fx.dst("run/here"));
    for sub in ["link", "link/b", "link/b/c"] {
        let err = parvm_mirror_fs::open_beneath(&fx.task, Path::new(sub)).unwrap_err();
        assert_names_link(&err, &fx.dst("link"));
    }
    let err = parvm_mirror_fs::open_beneath(&fx.task, Path::new("../elsewhere")).unwrap_err();
    assert!(matches!(err, Error::TargetEscapes { .. }), "{err}");
    let err = parvm_mirror_fs::open_beneath(&fx.task, Path::new("missing")).unwrap_err();
    assert!(matches!(err, Error::StartupMissing { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_copy_hard_linked_to_a_file_outside_is_replaced_not_written_through() {
    let fx = Fixture::new();
    let outside = elsewhere(&fx);
    fs::write(outside.join("key"), "precious").unwrap();
    fx.file("a.cir", b"netlist");
    let map = MirrorMap::new().entry(fx.src("a.cir"), ".").unwrap();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    fs::remove_file(fx.dst("a.cir")).unwrap();
    fs::hard_link(outside.join("key"), fx.dst("a.cir")).unwrap();
    folder.refresh(&MirrorOptions::new()).unwrap();
    assert_eq!(fs::read(fx.dst("a.cir")).unwrap(), b"netlist");
    assert_eq!(fs::read(outside.join("key")).unwrap(), b"precious");
    fs::remove_file(fx.dst("a.cir")).unwrap();
    fs::hard_link(outside.join("key"), fx.dst("a.cir")).unwrap();
    mirror(&map, &fx.task, &MirrorOptions::new()).unwrap();
    assert_eq!(fs::read(outside.join("key")).unwrap(), b"precious");
}
