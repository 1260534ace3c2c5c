//! Dispatch benchmarks on the local backend, each next to its baseline measured in the same
//! run. This binary is also its own worker program.
//!
//! `cargo xtask bench dispatch [-- noop|sweep|lazy|returns]` runs one part, or all:
//!
//! - `noop`: 100 000 no-op jobs through `Vm::dispatch` (in job order and unordered), against
//!   the plain spawn loop that keeps every slot busy with `Vm::spawn` and `Vm::recv`;
//! - `sweep`: 200 jobs of 20 ms against the ideal, jobs × 20 ms / slots;
//! - `lazy`: the spawner's resident memory before and during a dispatch of a lazy iterator
//!   of 1 000 000 no-op jobs (target: it grows by less than 50 MB);
//! - `returns`: files a job writes in its task folder and returns to the spawner
//!   (2 000 × 4 KiB, and 4 × 64 MiB), against the same job not returning them, and against
//!   `cp -a` of the same tree on the same disk.
//!
//! Other processes on the machine change these numbers a lot, so run it several times;
//! `uptime` shows the load.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Res, rate, spawn_loop};
use parvm_vm::{Job, JobOutcome, Runtime, TaskContext, Tasks, Vm};

/// What `make_files` writes: how many files, and how big each is.
type Tree = (u32, u64);

fn tasks() -> Tasks {
    Tasks::new()
        .register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
        .register("sleep_ms", |_: &TaskContext, ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, Infallible>(())
        })
        .register("make_files", |ctx: &TaskContext, (count, size): Tree| {
            let dir = ctx.dir().ok_or("the task has no folder")?.join("out");
            write_tree(&dir, count, size).map_err(|e| e.to_string())
        })
}

/// Writes `count` files of `size` bytes into `dir` (made if missing).
fn write_tree(dir: &Path, count: u32, size: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let block = vec![0x5au8; 1 << 20];
    for i in 0..count {
        let mut file = std::fs::File::create(dir.join(format!("f{i:05}")))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            file.write_all(&block[..n])?;
            left -= n as u64;
        }
    }
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn start(workers: usize) -> Res<(Runtime, Vm)> {
    let runtime = Runtime::builder(tasks()).workers(workers).start()?;
    let vm = runtime.vm().local_folder(false).build()?;
    Ok((runtime, vm))
}

/// Dispatches `total` no-op jobs and checks each succeeded.
fn dispatch_noop(vm: &Vm, total: u64, ordered: bool) -> Res<Duration> {
    let start = Instant::now();
    let jobs = (0..total).map(|_| Job::task("noop", &()));
    let dispatch = vm.dispatch(jobs);
    let dispatch = if ordered {
        dispatch
    } else {
        dispatch.unordered()
    };
    let mut seen = 0u64;
    for result in dispatch {
        let result = result?;
        if !result.outcome.is_success() {
            return Err(format!("{result}").into());
        }
        seen += 1;
    }
    if seen != total {
        return Err(format!("{seen} results for {total} jobs").into());
    }
    Ok(start.elapsed())
}

fn noop_part(workers: usize) -> Res<()> {
    let total = 100_000;
    let (runtime, vm) = start(workers)?;
    // Warm up the workers and the page cache.
    spawn_loop(&vm, 5_000)?;
    let plain = spawn_loop(&vm, total)?;
    let ordered = dispatch_noop(&vm, total, true)?;
    let unordered = dispatch_noop(&vm, total, false)?;
    println!("{total} no-op jobs, {workers} workers (local backend):");
    println!("  plain spawn loop (baseline) : {}", rate(total, plain));
    println!(
        "  dispatch, job order         : {}  {:5.2}x the spawn loop's rate",
        rate(total, ordered),
        plain.as_secs_f64() / ordered.as_secs_f64()
    );
    println!(
        "  dispatch, unordered         : {}  {:5.2}x the spawn loop's rate",
        rate(total, unordered),
        plain.as_secs_f64() / unordered.as_secs_f64()
    );
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn sweep_part(workers: usize) -> Res<()> {
    let (jobs, ms) = (200u64, 20u64);
    let (runtime, vm) = start(workers)?;
    let start = Instant::now();
    for result in vm.dispatch((0..jobs).map(|_| Job::task("sleep_ms", &ms))) {
        let result = result?;
        if !result.outcome.is_success() {
            return Err(format!("{result}").into());
        }
    }
    let took = start.elapsed();
    let ideal = Duration::from_millis(jobs * ms) / workers as u32;
    println!(
        "{jobs} jobs of {ms} ms, {workers} workers: {:7.1} ms, ideal {:7.1} ms: {:5.3}x the ideal",
        took.as_secs_f64() * 1e3,
        ideal.as_secs_f64() * 1e3,
        took.as_secs_f64() / ideal.as_secs_f64()
    );
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn lazy_part(workers: usize) -> Res<()> {
    let total = 1_000_000u64;
    let (runtime, vm) = start(workers)?;
    spawn_loop(&vm, 1_000)?;
    let before = rss_kib();
    let mut peak = before;
    let start = Instant::now();
    let mut seen = 0u64;
    for result in vm
        .dispatch((0..total).map(|_| Job::task("noop", &())))
        .unordered()
    {
        result?;
        seen += 1;
        if seen.is_multiple_of(10_000) {
            peak = peak.max(rss_kib());
        }
    }
    let took = start.elapsed();
    println!(
        "{seen} lazy no-op jobs, {workers} workers: spawner RSS {:.1} MB before, {:.1} MB at most during: grew {:.1} MB (target < 50 MB); {}",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(before) as f64 / 1024.0,
        rate(seen, took)
    );
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

/// Runs one `make_files` job, returning its files into `results` when given.
fn make_files(vm: &Vm, tree: Tree, results: Option<&Path>) -> Res<(Duration, u64)> {
    let mut job = Job::task("make_files", &tree);
    let mut dispatch_results = None;
    if let Some(dir) = results {
        job = job.returning("out/**");
        dispatch_results = Some(dir.to_path_buf());
    }
    let start = Instant::now();
    let mut dispatch = vm.dispatch([job]);
    if let Some(dir) = dispatch_results {
        dispatch = dispatch.results(dir);
    }
    let mut bytes = 0;
    for result in dispatch {
        let result = result?;
        if let JobOutcome::Failed { reason, .. } = &result.outcome {
            return Err(reason.clone().into());
        }
        bytes = result.returned_bytes;
    }
    Ok((start.elapsed(), bytes))
}

fn cp_a(from: &Path, to: &Path) -> Res<Duration> {
    let start = Instant::now();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    if !status.success() {
        return Err(format!("cp -a failed: {status}").into());
    }
    Ok(start.elapsed())
}

fn returns_part() -> Res<()> {
    // A worker started for this part goes straight to serving: it must not make a scratch
    // folder it would never remove.
    let scratch = if parvm_transport::started_as_worker() {
        None
    } else {
        // Local storage, the results folder and `cp -a` all on one file system, so the
        // comparison is fair; PARVM_BENCH_DIR picks it (e.g. /dev/shm), else the temporary
        // folder.
        let base = std::env::var_os("PARVM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
        Some(tempfile::tempdir_in(base)?)
    };
    let mut config = parvm_env_config::Config::builder().workers(1);
    if let Some(scratch) = &scratch {
        config = config.local_root(scratch.path().join("local"));
    }
    let runtime = Runtime::builder(tasks()).config(config.build()?).start()?;
    let Some(scratch) = scratch else {
        return Err("a worker came back from Runtime::start".into());
    };
    let vm = runtime.vm().local_folder(true).build()?;
    println!("returned files, 1 worker, in {}:", scratch.path().display());
    for (label, tree) in [
        ("2000 x 4 KiB", (2000u32, 4096u64)),
        ("4 x 64 MiB", (4, 64 << 20)),
    ] {
        let mut rounds = Vec::new();
        for round in 0..3 {
            let (without, _) = make_files(&vm, tree, None)?;
            let results = scratch.path().join(format!("results-{round}"));
            let (with, bytes) = make_files(&vm, tree, Some(&results))?;
            let source = scratch.path().join(format!("source-{round}"));
            write_tree(&source, tree.0, tree.1)?;
            let cp = cp_a(&source, &scratch.path().join(format!("copy-{round}")))?;
            rounds.push((with.saturating_sub(without), bytes, cp));
        }
        rounds.sort_by_key(|round| round.0);
        let (returning, bytes, cp) = rounds[rounds.len() / 2];
        println!(
            "  {label:>13}: returning {:7.1} ms ({:6.0} MB/s), cp -a {:7.1} ms: {:5.2}x the time of cp -a",
            returning.as_secs_f64() * 1e3,
            bytes as f64 / returning.as_secs_f64() / 1e6,
            cp.as_secs_f64() * 1e3,
            returning.as_secs_f64() / cp.as_secs_f64()
        );
    }
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn main() -> Res<()> {
    let Some(runtime_workers) = std::thread::available_parallelism().ok() else {
        return Err("cannot tell how many cores this machine has".into());
    };
    let workers = runtime_workers.get().max(2);
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-') && arg != "dispatch")
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wants("noop") {
        noop_part(workers)?;
    }
    if wants("sweep") {
        sweep_part(workers)?;
    }
    if wants("lazy") {
        lazy_part(workers)?;
    }
    if wants("returns") {
        returns_part()?;
    }
    Ok(())
}
