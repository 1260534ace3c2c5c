//! MirroredFolder: a persistent task folder refreshed with one stat per source file, the
//! tasks' changes found by inotify (or, without it, by verifying every copy).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use parvm_mirror_fs::{Error, MirrorMap, MirrorOptions, MirroredFolder};

use crate::{Fixture, set_mode, set_mtime};

/// `secs` seconds after the epoch.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The flavours: with inotify (on the sources too when trusted), with the fallback that
/// verifies every copy, and with sources treated as on a network file system.
fn flavours() -> [MirrorOptions; 3] {
    [
        MirrorOptions::new(),
        MirrorOptions::new().no_inotify(),
        MirrorOptions::new().untrusted_sources(),
    ]
}

fn later() -> SystemTime {
    SystemTime::now() + Duration::from_secs(7)
}

/// tree/ (folders, files, a symlink) → in/, lib/*.lib → models/, top.cir → task folder.
fn setup(fx: &Fixture) -> MirrorMap {
    for i in 0..30 {
        fx.file(
            format!("tree/d{}/f{i}.txt", i % 3),
            format!("v1 {i}").as_bytes(),
        );
    }
    fx.file("tree/d0/sub/deep.txt", b"deep");
    symlink("f0.txt", fx.src("tree/d0/link")).unwrap();
    fx.file("lib/a.lib", b"model a");
    fx.file("lib/b.lib", b"model b");
    fx.file("lib/notes.txt", b"not matched");
    fx.file("top.cir", b"netlist");
    fx.map(&[("tree", "in"), ("lib/*.lib", "models"), ("top.cir", ".")])
}

fn copies(report: &parvm_mirror_fs::MirrorReport) -> u64 {
    report.files + report.symlinks
}

#[test]
fn nothing_changed_copies_nothing() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(copies(folder.report()), 30 + 1 + 1 + 2 + 1);
        assert_eq!(folder.entries(), 35);
        assert_eq!(
            folder.is_watching(),
            !format!("{options:?}").contains("no_inotify: true")
        );
        for _ in 0..3 {
            let report = folder.refresh(&options).unwrap();
            assert_eq!(copies(&report), 0, "{options:?} {report:?}");
            assert_eq!(report.skipped, 35);
        }
    }
}

#[test]
fn source_edits_are_copied_again() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        // Same size, new time.
        fs::write(fx.src("tree/d0/f0.txt"), b"v2 0").unwrap();
        set_mtime(&fx.src("tree/d0/f0.txt"), later());
        // Another size.
        fs::write(fx.src("tree/d1/f1.txt"), b"v2 one, longer").unwrap();
        // Replaced by a rename with the old time kept (rsync -t, atomic saves): only the
        // inode and change time tell.
        let old = fs::metadata(fx.src("lib/a.lib"))
            .unwrap()
            .modified()
            .unwrap();
        fx.file("lib/.a.tmp", b"model A");
        set_mtime(&fx.src("lib/.a.tmp"), old);
        fs::rename(fx.src("lib/.a.tmp"), fx.src("lib/a.lib")).unwrap();
        // Mode only.
        set_mode(&fx.src("top.cir"), 0o755);
        // A retargeted symlink.
        fs::remove_file(fx.src("tree/d0/link")).unwrap();
        symlink("f3.txt", fx.src("tree/d0/link")).unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!(
            (report.files, report.symlinks),
            (4, 1),
            "{options:?} {report:?}"
        );
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v2 0");
        assert_eq!(
            fs::read(fx.dst("in/tree/d1/f1.txt")).unwrap(),
            b"v2 one, longer"
        );
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"model A");
        assert_eq!(
            fs::metadata(fx.dst("top.cir")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(fx.dst("in/tree/d0/link")).unwrap(),
            Path::new("f3.txt")
        );
        // And then nothing more: the refresh's own writes are not the tasks'.
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn new_sources_are_copied_and_gone_ones_leave_their_copy() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fx.file("tree/d2/new.txt", b"new in a folder");
        fx.file("tree/d9/x/y.txt", b"new folder tree");
        fx.file("lib/c.lib", b"model c");
        fx.file("lib/d.txt", b"not matched");
        fs::remove_file(fx.src("tree/d1/f4.txt")).unwrap();
        fs::remove_file(fx.src("lib/b.lib")).unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 3, "{options:?} {report:?}");
        assert_eq!(
            fs::read(fx.dst("in/tree/d2/new.txt")).unwrap(),
            b"new in a folder"
        );
        assert_eq!(
            fs::read(fx.dst("in/tree/d9/x/y.txt")).unwrap(),
            b"new folder tree"
        );
        assert_eq!(fs::read(fx.dst("models/c.lib")).unwrap(), b"model c");
        assert!(!fx.dst("models/d.txt").exists());
        // Gone at the source: the copy stays, and is not looked after any more.
        assert_eq!(fs::read(fx.dst("in/tree/d1/f4.txt")).unwrap(), b"v1 4");
        assert_eq!(fs::read(fx.dst("models/b.lib")).unwrap(), b"model b");
        assert_eq!(folder.entries(), 35 + 3 - 2);
        // The new entries are watched and scanned like the old ones.
        fs::write(fx.src("tree/d9/x/y.txt"), b"edited at the source").unwrap();
        fs::write(fx.dst("models/c.lib"), b"scribbled").unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 2, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("models/c.lib")).unwrap(), b"model c");
        assert_eq!(
            fs::read(fx.dst("in/tree/d9/x/y.txt")).unwrap(),
            b"edited at the source"
        );
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn task_changes_to_mirrored_entries_are_undone() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::remove_file(fx.dst("in/tree/d0/f0.txt")).unwrap();
        fs::rename(
            fx.dst("in/tree/d1/f1.txt"),
            fx.dst("in/tree/d1/renamed.txt"),
        )
        .unwrap();
        fs::write(fx.dst("in/tree/d2/f2.txt"), b"edited in place").unwrap();
        set_mode(&fx.dst("models/a.lib"), 0o600);
        fs::write(fx.dst("top.cir"), b"overwritten").unwrap();
        fs::remove_file(fx.dst("in/tree/d0/link")).unwrap();
        symlink("elsewhere", fx.dst("in/tree/d0/link")).unwrap();
        // Unrelated files the task wrote, in a mirrored folder and beside them.
        fs::write(fx.dst("in/tree/d0/output.dat"), b"result").unwrap();
        fs::write(fx.dst("out.log"), b"log").unwrap();

        let report = folder.refresh(&options).unwrap();
        assert_eq!(
            (report.files, report.symlinks),
            (5, 1),
            "{options:?} {report:?}"
        );
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v1 0");
        assert_eq!(fs::read(fx.dst("in/tree/d1/f1.txt")).unwrap(), b"v1 1");
        assert_eq!(fs::read(fx.dst("in/tree/d2/f2.txt")).unwrap(), b"v1 2");
        let mode = fs::metadata(fx.src("lib/a.lib")).unwrap().mode();
        assert_eq!(fs::metadata(fx.dst("models/a.lib")).unwrap().mode(), mode);
        assert_eq!(fs::read(fx.dst("top.cir")).unwrap(), b"netlist");
        assert_eq!(
            fs::read_link(fx.dst("in/tree/d0/link")).unwrap(),
            Path::new("f0.txt")
        );
        assert_eq!(fs::read(fx.dst("in/tree/d1/renamed.txt")).unwrap(), b"v1 1");
        assert_eq!(
            fs::read(fx.dst("in/tree/d0/output.dat")).unwrap(),
            b"result"
        );
        assert_eq!(fs::read(fx.dst("out.log")).unwrap(), b"log");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn a_deleted_mirrored_folder_comes_back() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::remove_dir_all(fx.dst("in/tree/d0")).unwrap();
        fs::rename(fx.dst("models"), fx.dst("models-moved")).unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(copies(&report), 10 + 1 + 1 + 2, "{options:?} {report:?}");
        assert_eq!(
            fs::read(fx.dst("in/tree/d0/sub/deep.txt")).unwrap(),
            b"deep"
        );
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"model a");
        // The watch is set up again: later task edits are still seen.
        fs::write(fx.dst("in/tree/d0/sub/deep.txt"), b"scribbled").unwrap();
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(
            fs::read(fx.dst("in/tree/d0/sub/deep.txt")).unwrap(),
            b"deep"
        );
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn an_edit_that_keeps_size_and_time_is_seen_by_inotify() {
    let fx = Fixture::new();
    let map = setup(&fx);
    let options = MirrorOptions::new();
    let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
    assert!(folder.is_watching());
    let path = fx.dst("in/tree/d0/f3.txt");
    let before = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, b"XX 3").unwrap();
    set_mtime(&path, before);
    assert_eq!(folder.refresh(&options).unwrap().files, 1);
    assert_eq!(fs::read(&path).unwrap(), b"v1 3");
}

#[test]
fn read_only_source_folders_are_refreshed() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("ro/a.txt", b"a");
        let map = fx.map(&[("ro", ".")]);
        set_mode(&fx.src("ro"), 0o555);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        set_mode(&fx.src("ro"), 0o755);
        fx.file("ro/b.txt", b"b");
        set_mode(&fx.src("ro"), 0o555);
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("ro/b.txt")).unwrap(), b"b");
        let dst = fs::metadata(fx.dst("ro")).unwrap();
        assert_eq!(dst.permissions().mode() & 0o777, 0o555);
        let src = fs::metadata(fx.src("ro")).unwrap();
        assert_eq!(dst.modified().unwrap(), src.modified().unwrap());
        set_mode(&fx.src("ro"), 0o755);
        set_mode(&fx.dst("ro"), 0o755);
    }
}

#[test]
fn a_missing_literal_source_is_an_error_and_the_folder_recovers() {
    for options in flavours() {
        let fx = Fixture::new();
        let map = setup(&fx);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fs::rename(fx.src("top.cir"), fx.src("top.bak")).unwrap();
        match folder.refresh(&options) {
            Err(Error::SourceMissing { path }) => assert_eq!(path, fx.src("top.cir")),
            other => panic!("{options:?}: expected SourceMissing, got {other:?}"),
        }
        assert_eq!(fs::read(fx.dst("top.cir")).unwrap(), b"netlist");
        fs::rename(fx.src("top.bak"), fx.src("top.cir")).unwrap();
        fs::write(fx.dst("in/tree/d0/f0.txt"), b"scribbled").unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(fs::read(fx.dst("in/tree/d0/f0.txt")).unwrap(), b"v1 0");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

#[test]
fn a_glob_that_matches_nothing_yet_picks_up_new_matches() {
    for options in flavours() {
        let fx = Fixture::new();
        fs::create_dir(fx.src("empty")).unwrap();
        fs::create_dir(fx.src("dirs")).unwrap();
        let map = fx.map(&[
            ("empty/*.lib", "models"),
            ("*/x.inc", "inc"),
            ("dirs/*", "trees"),
        ]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(folder.report().unmatched.len(), 3);
        fx.file("empty/a.lib", b"a");
        fx.file("empty/x.inc", b"x");
        fx.file("dirs/t/inner.txt", b"inner");
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 3, "{options:?} {report:?}");
        assert!(report.unmatched.is_empty());
        assert_eq!(fs::read(fx.dst("models/a.lib")).unwrap(), b"a");
        assert_eq!(fs::read(fx.dst("inc/x.inc")).unwrap(), b"x");
        assert_eq!(fs::read(fx.dst("trees/t/inner.txt")).unwrap(), b"inner");
        // The new folder is looked after like the others.
        fx.file("dirs/t/more.txt", b"more");
        let report = folder.refresh(&options).unwrap();
        assert_eq!(report.files, 1, "{options:?} {report:?}");
        assert_eq!(fs::read(fx.dst("trees/t/more.txt")).unwrap(), b"more");
        assert_eq!(copies(&folder.refresh(&options).unwrap()), 0, "{options:?}");
    }
}

mod law {
    //! Property: after random source edits and random task edits, a refresh makes every
    //! mirrored entry equal to its source again and keeps every file the task wrote.

    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirroredFolder};
    use proptest::prelude::*;

    use crate::model::{Node, Tree, build, read, tree};

    #[derive(Debug, Clone)]
    enum SourceEdit {
        Write {
            at: usize,
            content: Vec<u8>,
        },
        Chmod {
            at: usize,
            exec: bool,
        },
        Remove {
            at: usize,
        },
        Add {
            at: usize,
            name: u8,
            content: Vec<u8>,
        },
        Relink {
            at: usize,
        },
    }

    #[derive(Debug, Clone)]
    enum TaskEdit {
        Delete { at: usize },
        Rename { at: usize },
        Write { at: usize, content: Vec<u8> },
        Chmod { at: usize },
        NewFile { at: usize, content: Vec<u8> },
        RemoveDir { at: usize },
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    fn source_edit() -> impl Strategy<Value = SourceEdit> {
        prop_oneof![
            (any::<usize>(), content()).prop_map(|(at, content)| SourceEdit::Write { at, content }),
            (any::<usize>(), any::<bool>()).prop_map(|(at, exec)| SourceEdit::Chmod { at, exec }),
            any::<usize>().prop_map(|at| SourceEdit::Remove { at }),
            (any::<usize>(), 0u8..4, content()).prop_map(|(at, name, content)| SourceEdit::Add {
                at,
                name,
                content
            }),
            any::<usize>().prop_map(|at| SourceEdit::Relink { at }),
        ]
    }

    fn task_edit() -> impl Strategy<Value = TaskEdit> {
        prop_oneof![
            any::<usize>().prop_map(|at| TaskEdit::Delete { at }),
            any::<usize>().prop_map(|at| TaskEdit::Rename { at }),
            (any::<usize>(), content()).prop_map(|(at, content)| TaskEdit::Write { at, content }),
            any::<usize>().prop_map(|at| TaskEdit::Chmod { at }),
            (any::<usize>(), content()).prop_map(|(at, content)| TaskEdit::NewFile { at, content }),
            any::<usize>().prop_map(|at| TaskEdit::RemoveDir { at }),
        ]
    }

    fn past() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    }

    /// Source files get times in the past, as inputs on a shared folder have; an edit gets
    /// a time of its own, so every edit shows (the kernel's clock is coarser than a test).
    fn age(root: &Path, t: SystemTime) {
        for (rel, node) in read(root) {
            if matches!(node, Node::File { .. }) {
                let f = fs::File::options()
                    .write(true)
                    .open(root.join(rel))
                    .unwrap();
                f.set_modified(t).unwrap();
            }
        }
    }

    fn pick(tree: &Tree, at: usize, want: impl Fn(&Node) -> bool) -> Option<&PathBuf> {
        let all: Vec<&PathBuf> = tree
            .iter()
            .filter(|(_, n)| want(n))
            .map(|(p, _)| p)
            .collect();
        (!all.is_empty()).then(|| all[at % all.len()])
    }

    fn is_file(n: &Node) -> bool {
        matches!(n, Node::File { .. })
    }

    fn apply_source(src: &Path, edit: &SourceEdit, round: u64) {
        let now = read(src);
        let stamp = past() + Duration::from_secs(1000 * round + 1);
        match edit {
            SourceEdit::Write { at, content } => {
                if let Some(p) = pick(&now, *at, is_file) {
                    fs::write(src.join(p), content).unwrap();
                    let f = fs::File::options().write(true).open(src.join(p)).unwrap();
                    f.set_modified(stamp).unwrap();
                }
            }
            SourceEdit::Chmod { at, exec } => {
                if let Some(p) = pick(&now, *at, is_file) {
                    let mode = if *exec { 0o755 } else { 0o640 };
                    fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            SourceEdit::Remove { at } => {
                if let Some(p) = pick(&now, *at, |n| !matches!(n, Node::Dir)) {
                    fs::remove_file(src.join(p)).unwrap();
                }
            }
            SourceEdit::Add { at, name, content } => {
                let dir = pick(&now, *at, |n| matches!(n, Node::Dir))
                    .map_or_else(|| src.to_path_buf(), |d| src.join(d));
                let path = dir.join(format!("new{name}"));
                if !path.exists() && fs::symlink_metadata(&path).is_err() {
                    fs::write(&path, content).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
                    let f = fs::File::options().write(true).open(&path).unwrap();
                    f.set_modified(stamp).unwrap();
                }
            }
            SourceEdit::Relink { at } => {
                if let Some(p) = pick(&now, *at, |n| matches!(n, Node::Link(_))) {
                    fs::remove_file(src.join(p)).unwrap();
                    symlink(format!("retargeted-{round}"), src.join(p)).unwrap();
                }
            }
        }
    }

    /// Applies a task edit to the mirror of `src` in `dst`; records files the task made.
    fn apply_task(
        dst: &Path,
        edit: &TaskEdit,
        n: usize,
        task_files: &mut BTreeMap<PathBuf, Vec<u8>>,
    ) {
        let now = read(dst);
        let mirrored = |n: &Node| !matches!(n, Node::Dir);
        let not_task = |p: &&PathBuf| !task_files.keys().any(|t| p.starts_with(t));
        let pick_mirrored = |at: usize, want: &dyn Fn(&Node) -> bool| -> Option<PathBuf> {
            let all: Vec<&PathBuf> = now
                .iter()
                .filter(|(p, node)| want(node) && not_task(p))
                .map(|(p, _)| p)
                .collect();
            (!all.is_empty()).then(|| all[at % all.len()].clone())
        };
        match edit {
            TaskEdit::Delete { at } => {
                if let Some(p) = pick_mirrored(*at, &mirrored) {
                    fs::remove_file(dst.join(p)).unwrap();
                }
            }
            TaskEdit::Rename { at } => {
                if let Some(p) = pick_mirrored(*at, &is_file) {
                    let to = p.with_file_name(format!("task-renamed-{n}"));
                    let content = fs::read(dst.join(&p)).unwrap();
                    fs::rename(dst.join(&p), dst.join(&to)).unwrap();
                    task_files.insert(to, content);
                }
            }
            TaskEdit::Write { at, content } => {
                if let Some(p) = pick_mirrored(*at, &is_file) {
                    let path = dst.join(p);
                    let mode = fs::metadata(&path).unwrap().permissions().mode();
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                    fs::write(&path, content).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            TaskEdit::Chmod { at } => {
                if let Some(p) = pick_mirrored(*at, &is_file) {
                    fs::set_permissions(dst.join(p), fs::Permissions::from_mode(0o600)).unwrap();
                }
            }
            TaskEdit::NewFile { at, content } => {
                let dir =
                    pick_mirrored(*at, &|n: &Node| matches!(n, Node::Dir)).unwrap_or_default();
                let path = dir.join(format!("task-out-{n}"));
                fs::write(dst.join(&path), content).unwrap();
                task_files.insert(path, content.clone());
            }
            TaskEdit::RemoveDir { at } => {
                if let Some(p) = pick_mirrored(*at, &|n: &Node| matches!(n, Node::Dir)) {
                    fs::remove_dir_all(dst.join(&p)).unwrap();
                    task_files.retain(|t, _| !t.starts_with(&p));
                }
            }
        }
    }

    fn check(
        src: &Path,
        dst: &Path,
        task_files: &BTreeMap<PathBuf, Vec<u8>>,
    ) -> Result<(), TestCaseError> {
        let want = read(src);
        let got = read(dst);
        for (path, node) in &want {
            prop_assert_eq!(got.get(path), Some(node), "`{}`", path.display());
        }
        for (path, content) in task_files {
            let got = fs::read(dst.join(path)).ok();
            prop_assert_eq!(got.as_ref(), Some(content), "`{}`", path.display());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// A refresh restores every mirrored entry and keeps what the task wrote; a renewal
        /// instead gives exactly what a fresh mirror into an empty folder gives.
        #[test]
        fn refresh_restores_every_mirrored_entry_and_renew_gives_a_fresh_mirror(
            model in tree(),
            rounds in proptest::collection::vec(
                (proptest::collection::vec(source_edit(), 0..4), proptest::collection::vec(task_edit(), 0..4)),
                1..3,
            ),
            inotify in any::<bool>(),
            threads in 1usize..3,
            warm in any::<bool>(),
            renew in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            let task = dir.path().join("task");
            build(&src, &model);
            age(&src, past());
            fs::create_dir(&task).unwrap();
            let map = MirrorMap::new().entry(&src, ".").unwrap();
            let mut options = MirrorOptions::new().threads(threads);
            if !inotify {
                options = options.no_inotify();
            }
            let mut folder = MirroredFolder::mirror(&map, &task, &options).unwrap();
            if warm {
                // The source watch is armed only after a first full scan: then the first
                // round's source edits are found by its events alone.
                folder.refresh(&options).unwrap();
            }
            let dst = task.join("src");
            let mut task_files = BTreeMap::new();
            let mut n = 0;
            for (round, (source_edits, task_edits)) in rounds.iter().enumerate() {
                for edit in source_edits {
                    apply_source(&src, edit, round as u64 + 1);
                }
                for edit in task_edits {
                    apply_task(&dst, edit, n, &mut task_files);
                    n += 1;
                }
                if renew {
                    folder.renew(&options, &[]).unwrap();
                    let fresh = dir.path().join(format!("fresh-{round}"));
                    fs::create_dir(&fresh).unwrap();
                    parvm_mirror_fs::mirror(&map, &fresh, &options).unwrap();
                    prop_assert_eq!(read(&task), read(&fresh), "round {}", round);
                    task_files.clear();
                } else {
                    folder.refresh(&options).unwrap();
                    check(&src, &dst, &task_files)?;
                }
                let again = folder.refresh(&options).unwrap();
                prop_assert_eq!(again.files + again.symlinks, 0, "{:?}", again);
            }
        }
    }
}

#[test]
fn where_two_sources_land_on_one_file_a_refresh_keeps_the_later_one() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/m.lib", b"earlier");
        fx.file("b/m.lib", b"later");
        fx.file("lib/m.lib", b"in a folder");
        fx.file("lib/other.lib", b"other");
        let map = fx.map(&[
            ("a/m.lib", "."),
            ("b/m.lib", "."),
            ("lib", "."),
            ("b/m.lib", "lib"),
        ]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let read = |name: &str| fs::read(fx.task.join(name)).unwrap();
        assert_eq!(read("m.lib"), b"later");
        assert_eq!(read("lib/m.lib"), b"later");
        // The shadowed sources are edited: a fresh mirror would still give the later one.
        for shadowed in ["a/m.lib", "lib/m.lib"] {
            fx.file(shadowed, b"edited, shadowed");
            set_mtime(&fx.src(shadowed), later());
        }
        fx.file("lib/other.lib", b"other, edited");
        set_mtime(&fx.src("lib/other.lib"), later());
        folder.refresh(&options).unwrap();
        assert_eq!(read("m.lib"), b"later", "{options:?}");
        assert_eq!(read("lib/m.lib"), b"later", "{options:?}");
        assert_eq!(read("lib/other.lib"), b"other, edited", "{options:?}");
        // The task changed them: they come back as the later one.
        fs::write(fx.task.join("m.lib"), b"task").unwrap();
        fs::write(fx.task.join("lib/m.lib"), b"task").unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(read("m.lib"), b"later", "{options:?}");
        assert_eq!(read("lib/m.lib"), b"later", "{options:?}");
    }
}

#[test]
fn where_two_sources_land_on_one_folder_a_refresh_keeps_the_later_ones_mode_and_time() {
    for options in flavours() {
        let fx = Fixture::new();
        for side in ["a", "b"] {
            fx.file(format!("{side}/d.x/sub/from-{side}"), side.as_bytes());
        }
        set_mode(&fx.src("a/d.x/sub"), 0o750);
        set_mode(&fx.src("b/d.x/sub"), 0o755);
        set_mtime(&fx.src("a/d.x/sub"), at(1_000_000));
        set_mtime(&fx.src("b/d.x/sub"), at(2_000_000));
        let map = fx.map(&[("a/*.x", "."), ("b/*.x", ".")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let attrs = || {
            let meta = fs::metadata(fx.task.join("d.x/sub")).unwrap();
            (meta.mode() & 0o7777, meta.mtime())
        };
        assert_eq!(attrs(), (0o755, 2_000_000), "{options:?}");
        // The earlier one changes: a fresh mirror would still give the later one's.
        set_mode(&fx.src("a/d.x/sub"), 0o700);
        set_mtime(&fx.src("a/d.x/sub"), at(3_000_000));
        folder.refresh(&options).unwrap();
        assert_eq!(attrs(), (0o755, 2_000_000), "{options:?}");
    }
}

#[test]
fn a_new_folder_of_a_later_source_over_an_earlier_one_gives_its_mode_and_time() {
    // a/* → ., e/* → d1: a/d1/d1 lands on d1/d1, where a new e/d1 lands later and wins.
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/d1/d1/f0", b"a");
        set_mtime(&fx.src("a/d1/d1"), at(1_000_000));
        fs::create_dir(fx.src("e")).unwrap();
        let map = fx.map(&[("a/*", "."), ("e/*", "d1")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        fx.file("e/d1/f1", b"e");
        set_mode(&fx.src("e/d1"), 0o750);
        set_mtime(&fx.src("e/d1"), at(2_000_000));
        // The task edits a's file there: a's folder is copied into again.
        fs::write(fx.task.join("d1/d1/f0"), b"task").unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(fs::read(fx.task.join("d1/d1/f0")).unwrap(), b"a");
        let meta = fs::metadata(fx.task.join("d1/d1")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.mtime()),
            (0o750, 2_000_000),
            "{options:?}"
        );
    }
}

#[test]
fn a_new_file_hidden_by_a_later_match_is_not_copied_over_it() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/x.lib", b"a x");
        fx.file("b/m.lib", b"later");
        let map = fx.map(&[("a", "."), ("b/m.lib", "a")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(fs::read(fx.task.join("a/m.lib")).unwrap(), b"later");
        // A fresh mirror would copy it first and the later match over it.
        fx.file("a/m.lib", b"new, hidden");
        fx.file("a/y.lib", b"new, seen");
        folder.refresh(&options).unwrap();
        assert_eq!(
            fs::read(fx.task.join("a/m.lib")).unwrap(),
            b"later",
            "{options:?}"
        );
        assert_eq!(
            fs::read(fx.task.join("a/y.lib")).unwrap(),
            b"new, seen",
            "{options:?}"
        );
    }
}

#[test]
fn a_new_folder_of_an_earlier_source_does_not_overwrite_a_later_match_inside_it() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/x.lib", b"a x");
        fx.file("b/m.lib", b"later");
        fx.file("c/sub/n.lib", b"c n, later");
        let map = fx.map(&[("a", "."), ("b/m.lib", "a/new"), ("c", "a")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let read = |name: &str| fs::read(fx.task.join(name)).unwrap();
        assert_eq!(read("a/new/m.lib"), b"later");
        assert_eq!(read("a/c/sub/n.lib"), b"c n, later");
        // New folders of the first source, landing where the later matches are: a fresh
        // mirror copies them first and the later matches over them.
        fx.file("a/new/m.lib", b"new folder, hidden");
        fx.file("a/new/y.lib", b"new folder, seen");
        fx.file("a/c/sub/n.lib", b"new folder, hidden");
        fx.file("a/c/sub/z.lib", b"new folder, seen");
        folder.refresh(&options).unwrap();
        let fresh = Fixture::new();
        MirroredFolder::mirror(&map, &fresh.task, &options).unwrap();
        for name in [
            "a/new/m.lib",
            "a/new/y.lib",
            "a/c/sub/n.lib",
            "a/c/sub/z.lib",
        ] {
            assert_eq!(
                read(name),
                fs::read(fresh.task.join(name)).unwrap(),
                "{name}, {options:?}"
            );
        }
        assert_eq!(read("a/new/m.lib"), b"later", "{options:?}");
        assert_eq!(read("a/c/sub/n.lib"), b"c n, later", "{options:?}");
        // Nothing is left to do: a second refresh copies nothing.
        let again = folder.refresh(&options).unwrap();
        assert_eq!(again.files, 0, "{again:?}, {options:?}");
    }
}

#[test]
fn new_folders_of_two_sources_landing_in_one_another_keep_the_later_one() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/x.lib", b"a x");
        fx.file("c/m.lib", b"c m, later");
        let map = fx.map(&[("a", "."), ("c", "a")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let read = |name: &str| fs::read(fx.task.join(name)).unwrap();
        assert_eq!(read("a/c/m.lib"), b"c m, later");
        // Both sources gain a folder, the earlier's landing around the later's.
        fx.file("a/c/m.lib", b"a, hidden");
        fx.file("a/c/q/n.lib", b"a, hidden");
        fx.file("a/c/q/y.lib", b"a, seen");
        fx.file("c/q/n.lib", b"c n, later");
        folder.refresh(&options).unwrap();
        let fresh = Fixture::new();
        MirroredFolder::mirror(&map, &fresh.task, &options).unwrap();
        for name in ["a/c/m.lib", "a/c/q/n.lib", "a/c/q/y.lib"] {
            assert_eq!(
                read(name),
                fs::read(fresh.task.join(name)).unwrap(),
                "{name}, {options:?}"
            );
        }
        assert_eq!(read("a/c/q/n.lib"), b"c n, later", "{options:?}");
        let again = folder.refresh(&options).unwrap();
        assert_eq!(again.files, 0, "{again:?}, {options:?}");
    }
}

#[test]
fn a_later_source_removed_uncovers_the_earlier_file_it_hid() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/m.lib", b"earlier");
        fx.file("a/lib/n.lib", b"earlier n");
        fx.file("a/only.lib", b"only a");
        fx.file("c/m.lib", b"later");
        fx.file("c/lib/n.lib", b"later n");
        fx.file("c/gone.lib", b"later, alone");
        let map = fx.map(&[("a/*", "."), ("c/*", ".")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        let read = |name: &str| fs::read(fx.task.join(name)).unwrap();
        assert_eq!(read("m.lib"), b"later");
        assert_eq!(read("lib/n.lib"), b"later n");
        // The later matches go: what they hid is there again, as in a fresh mirror.
        fs::remove_file(fx.src("c/m.lib")).unwrap();
        fs::remove_dir_all(fx.src("c/lib")).unwrap();
        fs::remove_file(fx.src("c/gone.lib")).unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(read("m.lib"), b"earlier", "{options:?}");
        assert_eq!(read("lib/n.lib"), b"earlier n", "{options:?}");
        assert_eq!(read("only.lib"), b"only a", "{options:?}");
        // A removed source that hid nothing keeps its copy (a refresh deletes nothing).
        assert_eq!(read("gone.lib"), b"later, alone", "{options:?}");
        let again = folder.refresh(&options).unwrap();
        assert_eq!(again.files, 0, "{again:?}, {options:?}");
    }
}

#[test]
fn a_literal_source_hidden_by_a_removed_glob_match_comes_back() {
    for options in flavours() {
        let fx = Fixture::new();
        fx.file("a/m.lib", b"earlier, literal");
        fx.file("c/m.lib", b"later, a glob's");
        let map = fx.map(&[("a/m.lib", "."), ("c/*.lib", ".")]);
        let mut folder = MirroredFolder::mirror(&map, &fx.task, &options).unwrap();
        assert_eq!(fs::read(fx.task.join("m.lib")).unwrap(), b"later, a glob's");
        fs::remove_file(fx.src("c/m.lib")).unwrap();
        folder.refresh(&options).unwrap();
        assert_eq!(
            fs::read(fx.task.join("m.lib")).unwrap(),
            b"earlier, literal",
            "{options:?}"
        );
        let again = folder.refresh(&options).unwrap();
        assert_eq!(again.files, 0, "{again:?}, {options:?}");
    }
}

mod overlap_law {
    //! Property: where sources land on the same folders (globs into one target, or a later
    //! one into a folder of an earlier), a refresh after random changes of the sources (new
    //! files, symlinks and folders, edits, removed files and folders) and of the task's files
    //! gives every entry a fresh mirror gives: of two files landing on one place, the later
    //! source's, or the earlier's once the later is gone. A removed source that hid nothing
    //! keeps its copy (a refresh deletes nothing), so the task folder may hold more.

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirroredFolder, mirror};
    use proptest::prelude::*;

    use crate::model::read;

    /// A file in one of the three sources (`a`, `c`, `e`, in map order): folders `d0`..`d2`,
    /// files `f0`..`f2` (names that never make a file of one source a folder of another).
    #[derive(Debug, Clone)]
    struct Place {
        source: u8,
        dirs: Vec<u8>,
        file: u8,
    }

    impl Place {
        fn path(&self, base: &Path) -> PathBuf {
            let mut path = base.join(["a", "c", "e"][usize::from(self.source % 3)]);
            for d in &self.dirs {
                path.push(format!("d{d}"));
            }
            path.join(format!("f{}", self.file))
        }
    }

    fn place() -> impl Strategy<Value = Place> {
        (0u8..3, proptest::collection::vec(0u8..3, 0..3), 0u8..3)
            .prop_map(|(source, dirs, file)| Place { source, dirs, file })
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..24)
    }

    /// Writes the file, or, for content starting with a byte below 40 below a folder (one
    /// write in seven or so), makes it a
    /// symlink (to a sibling that may not exist: inside a copied folder links stay links).
    fn write(base: &Path, place: &Place, content: &[u8], stamp: SystemTime) {
        let path = place.path(base);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&path);
        if content.first().is_some_and(|&b| b < 40) && !place.dirs.is_empty() {
            std::os::unix::fs::symlink(format!("f{}", content.len() % 3), &path).unwrap();
            return;
        }
        fs::write(&path, content).unwrap();
        // A time of its own, so every edit shows (the kernel's clock is coarser).
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(stamp).unwrap();
    }

    fn stamp(round: u64, n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + 1000 * round + n)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_refresh_where_sources_overlap_gives_what_a_fresh_mirror_gives(
            first in proptest::collection::vec((place(), content()), 1..8),
            rounds in proptest::collection::vec(
                proptest::collection::vec((place(), proptest::option::weighted(0.8, content())), 1..6),
                1..4,
            ),
            inotify in any::<bool>(),
            target in proptest::sample::select(vec![".", "d0", "d1/d0"]),
            saved in any::<bool>(),
            task_edits in proptest::collection::vec((any::<usize>(), any::<bool>()), 3),
            renew in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path();
            fs::create_dir_all(base.join("a")).unwrap();
            fs::create_dir_all(base.join("c")).unwrap();
            fs::create_dir_all(base.join("e")).unwrap();
            for (n, (place, content)) in first.iter().enumerate() {
                write(base, place, content, stamp(0, n as u64));
            }
            let task = base.join("task");
            fs::create_dir(&task).unwrap();
            let map = MirrorMap::new()
                .entry(base.join("a/*"), ".")
                .unwrap()
                .entry(base.join("c/*"), target)
                .unwrap()
                .entry(base.join("e/*"), "d1")
                .unwrap();
            let mut options = MirrorOptions::new();
            if !inotify {
                options = options.no_inotify();
            }
            let mut folder = MirroredFolder::mirror(&map, &task, &options).unwrap();
            for (round, edits) in rounds.iter().enumerate() {
                for (n, (place, content)) in edits.iter().enumerate() {
                    match content {
                        Some(content) => write(base, place, content, stamp(round as u64 + 1, n as u64)),
                        // A whole folder now and then, else the file.
                        None if place.file == 2 && !place.dirs.is_empty() => {
                            let _ = fs::remove_dir_all(place.path(base).parent().unwrap());
                        }
                        None => {
                            let _ = fs::remove_file(place.path(base));
                        }
                    }
                }
                // The task deletes or overwrites one of its files.
                let (at, delete) = task_edits[round % task_edits.len()];
                let files: Vec<PathBuf> = read(&task)
                    .into_iter()
                    .filter(|(p, n)| {
                        matches!(n, crate::model::Node::File { .. })
                            && !p.starts_with(".parvm-mirror-manifest")
                    })
                    .map(|(p, _)| p)
                    .collect();
                if !files.is_empty() {
                    let victim = task.join(&files[at % files.len()]);
                    if delete {
                        fs::remove_file(&victim).unwrap();
                    } else {
                        fs::write(&victim, b"written by the task").unwrap();
                    }
                }
                if saved {
                    // As `parvm mirror --refresh` does, a new process each time.
                    folder.save().unwrap();
                    folder = MirroredFolder::load(&map, &task, &options).unwrap().unwrap();
                }
                let manifest = std::ffi::OsStr::new(".parvm-mirror-manifest");
                if renew {
                    folder.renew(&options, &[manifest]).unwrap();
                } else {
                    folder.refresh(&options).unwrap();
                }
                let fresh = base.join(format!("fresh-{round}"));
                fs::create_dir(&fresh).unwrap();
                mirror(&map, &fresh, &options).unwrap();
                let got = read(&task);
                if renew {
                    // Exactly what a fresh mirror holds, but the saved manifest it keeps.
                    let mut exact = got.clone();
                    exact.remove(Path::new(manifest));
                    prop_assert_eq!(&exact, &read(&fresh), "round {}", round);
                }
                for (path, node) in read(&fresh) {
                    prop_assert_eq!(got.get(&path), Some(&node), "round {}: {}", round, path.display());
                    // A target folder made by the mirror has the time it was last written
                    // in; a mirrored one its source's, of the last when several land on it.
                    let target_folder = ["d0", "d1", "d1/d0"].iter().any(|t| path == Path::new(t));
                    if node == crate::model::Node::Dir && !target_folder {
                        let attrs = |root: &Path| {
                            let meta = fs::metadata(root.join(&path)).unwrap();
                            (meta.permissions().mode() & 0o7777, meta.modified().unwrap())
                        };
                        prop_assert_eq!(attrs(&task), attrs(&fresh), "round {}: folder {}", round, path.display());
                    }
                }
                let again = folder.refresh(&options).unwrap();
                prop_assert_eq!(again.files + again.symlinks, 0, "round {}: {:?}", round, again);
            }
        }
    }
}
