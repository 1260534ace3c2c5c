//! Mirror benchmark: parvm's full mirror and refresh against `cp -a`.
//!
//! `cargo bench -p parvm-mirror-fs --bench mirror -- [--dir BASE] [--reps N]`
//!
//! Tree A is 2000 files of 4 KiB in 20 folders, tree B is 4 files of 64 MiB. For each tree
//! and base folder it times a full mirror into a fresh folder (`MirroredFolder::mirror`,
//! which also records the manifest and starts the inotify watch), `MirroredFolder::refresh`
//! with nothing changed, the same without inotify (every copy verified), the stateless
//! `refresh` with nothing changed, and `cp -a SRC DST` into a fresh DST, and prints the
//! medians. Removing old copies is not timed. Without `--dir`, it runs on /dev/shm and on a
//! folder under the target folder on disk.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirroredFolder, mirror, refresh};

type BoxResult<T> = Result<T, Box<dyn Error>>;

struct Tree {
    name: &'static str,
    dirs: usize,
    files_per_dir: usize,
    size: usize,
    reps: usize,
}

const TREES: [Tree; 2] = [
    Tree {
        name: "A 2000 x 4 KiB",
        dirs: 20,
        files_per_dir: 100,
        size: 4096,
        reps: 15,
    },
    Tree {
        name: "B 4 x 64 MiB",
        dirs: 1,
        files_per_dir: 4,
        size: 64 << 20,
        reps: 5,
    },
];

fn main() -> BoxResult<()> {
    let mut dirs = Vec::new();
    let mut reps_override = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dirs.push(PathBuf::from(args.next().ok_or("--dir needs a folder")?)),
            "--reps" => {
                reps_override = Some(
                    args.next()
                        .ok_or("--reps needs a number")?
                        .parse::<usize>()?,
                )
            }
            // cargo bench passes --bench; other harness flags are ignored too.
            _ => {}
        }
    }
    parvm_test_support::touch_memory();
    if dirs.is_empty() {
        dirs.push(PathBuf::from("/dev/shm"));
        let exe = std::env::current_exe()?;
        // The bench binary lives in <target>/release/deps/.
        let target = exe
            .ancestors()
            .nth(3)
            .ok_or("cannot find the target folder")?;
        dirs.push(target.to_path_buf());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores (nproc)");
    for base in dirs {
        let work = base.join(format!("parvm-mirror-bench-{}", std::process::id()));
        fs::create_dir_all(&work)?;
        let guard = RemoveOnDrop(work.clone());
        println!(
            "\nbase: {} ({})",
            base.display(),
            parvm_test_support::file_system_label(&base)
        );
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>9} {:>18} {:>18} {:>18}",
            "tree",
            "mirror",
            "folder",
            "cp -a",
            "folder/cp",
            "folder.refresh",
            "  (no inotify)",
            "stateless refresh"
        );
        for tree in &TREES {
            let reps = reps_override.unwrap_or(tree.reps);
            let row = bench_tree(&work, tree, reps)?;
            let pct = |d: Duration| 100.0 * d.as_secs_f64() / row.folder.as_secs_f64();
            println!(
                "{:<16} {:>10} {:>10} {:>10} {:>9.2} {:>9} {:>7.1}% {:>9} {:>7.1}% {:>9} {:>7.1}%",
                tree.name,
                ms(row.full),
                ms(row.folder),
                ms(row.cp),
                row.folder.as_secs_f64() / row.cp.as_secs_f64(),
                ms(row.refresh),
                pct(row.refresh),
                ms(row.verify),
                pct(row.verify),
                ms(row.stateless),
                pct(row.stateless),
            );
        }
        println!(
            "(mirror = stateless mirror(), folder = MirroredFolder::mirror; refresh percentages are of folder)"
        );
        drop(guard);
    }
    Ok(())
}

struct Row {
    full: Duration,
    folder: Duration,
    cp: Duration,
    refresh: Duration,
    verify: Duration,
    stateless: Duration,
}

/// Refreshes per mirror: the median hides a slow first one.
const REFRESHES: usize = 5;

fn bench_tree(work: &Path, tree: &Tree, reps: usize) -> BoxResult<Row> {
    let src = work.join(format!("src-{}", &tree.name[..1]));
    make_tree(&src, tree)?;
    let map = MirrorMap::new().entry(&src, ".")?;
    let options = MirrorOptions::new();
    let no_inotify = MirrorOptions::new().no_inotify();
    let files = tree.dirs * tree.files_per_dir;
    let (mut full, mut folders, mut cp) = (Vec::new(), Vec::new(), Vec::new());
    let (mut refreshes, mut verifies, mut stateless) = (Vec::new(), Vec::new(), Vec::new());
    let dst = work.join("dst");
    for _ in 0..reps {
        remove(&dst)?;
        fs::create_dir(&dst)?;
        let t = Instant::now();
        let report = mirror(&map, &dst, &options)?;
        full.push(t.elapsed());
        assert_eq!(report.files as usize, files);

        for _ in 0..REFRESHES {
            let t = Instant::now();
            let report = refresh(&map, &dst, &options)?;
            stateless.push(t.elapsed());
            assert_eq!(report.files, 0);
        }

        remove(&dst)?;
        fs::create_dir(&dst)?;
        let t = Instant::now();
        let mut folder = MirroredFolder::mirror(&map, &dst, &options)?;
        folders.push(t.elapsed());
        assert_eq!(folder.report().files as usize, files);
        assert!(folder.is_watching(), "inotify refused");
        for _ in 0..REFRESHES {
            let t = Instant::now();
            let report = folder.refresh(&options)?;
            refreshes.push(t.elapsed());
            assert_eq!(report.files, 0);
        }
        drop(folder);

        remove(&dst)?;
        fs::create_dir(&dst)?;
        let mut folder = MirroredFolder::mirror(&map, &dst, &no_inotify)?;
        for _ in 0..REFRESHES {
            let t = Instant::now();
            let report = folder.refresh(&no_inotify)?;
            verifies.push(t.elapsed());
            assert_eq!(report.files, 0);
        }
        drop(folder);

        remove(&dst)?;
        let t = Instant::now();
        let status = Command::new("cp").arg("-a").arg(&src).arg(&dst).status()?;
        cp.push(t.elapsed());
        if !status.success() {
            return Err(format!("cp -a failed: {status}").into());
        }
    }
    remove(&dst)?;
    remove(&src)?;
    Ok(Row {
        full: median(full),
        folder: median(folders),
        cp: median(cp),
        refresh: median(refreshes),
        verify: median(verifies),
        stateless: median(stateless),
    })
}

fn make_tree(src: &Path, tree: &Tree) -> BoxResult<()> {
    remove(src)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut data = vec![0u8; tree.size];
    for d in 0..tree.dirs {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir)?;
        for f in 0..tree.files_per_dir {
            // Cheap varying content, so no file system can deduplicate it.
            for chunk in data.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            fs::write(dir.join(format!("f{f:04}.dat")), &data)?;
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn remove(path: &Path) -> BoxResult<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
