//! Spawn and messaging benchmarks of the VM on the local backend. This binary is also its
//! own worker program.
//!
//! `cargo bench -p parvm-vm --bench spawn [-- spawn|messaging]` runs one part, or both when
//! no part is named:
//!
//! - `spawn`: no-op spawn round trip (spawn, result, exit), median µs, with 1 worker and
//!   with all workers started; no-op tasks per second with all workers kept busy; whole
//!   process start + finalize with 2 workers (the test program, median of 10); an external
//!   command (`true`) round trip with 1 worker, median of 200; the no-op round trip of a
//!   VM with a mirror map of 8 small files (one entry each), 1 worker, into a fresh task
//!   folder per task and into a kept (persistent) one, median of 2000;
//! - `messaging`: ping-pong one-way latency and rate through the VM for 0 B, 1 KiB,
//!   100 KiB and 10 MiB, next to the transport crate's raw Unix-socket ping-pong of the
//!   same size in the same run, with the ratios; then between two tasks (each message
//!   sent on by the spawner) for 0 B and 1 KiB.
//!
//! Other processes on the machine change these numbers a lot (a busy machine wakes a
//! sleeping process faster than an idle one), so run it several times; `uptime` shows
//! the load.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use common::Res;
use parvm_vm::{Config, Message, Runtime, Spawn, TaskContext, TaskId, Tasks, Vm};

fn tasks() -> Tasks {
    Tasks::new()
        .register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
        .register("bounce", |ctx: &TaskContext, (): ()| {
            loop {
                let (from, data) = ctx.recv().map_err(|e| e.to_string())?;
                if data.bytes() == b"stop" {
                    return Ok::<_, String>(());
                }
                ctx.send_bytes(from, data.bytes())
                    .map_err(|e| e.to_string())?;
            }
        })
        .register(
            "ping_peer",
            |ctx: &TaskContext, (peer, size, rounds): (TaskId, usize, usize)| {
                // `rounds` round trips of `size` bytes with task `peer` (a `bounce`),
                // through the spawner; the median one-way time, in nanoseconds.
                let data = vec![0x5au8; size];
                let mut samples = Vec::with_capacity(rounds);
                for i in 0..rounds + 5 {
                    let start = Instant::now();
                    ctx.send_bytes(peer, &data).map_err(|e| e.to_string())?;
                    ctx.recv().map_err(|e| e.to_string())?;
                    if i >= 5 {
                        samples.push(start.elapsed());
                    }
                }
                let one_way = median(samples) / 2;
                Ok::<_, String>(u64::try_from(one_way.as_nanos()).unwrap_or(u64::MAX))
            },
        )
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn wait_exit(vm: &Vm) -> Res<()> {
    loop {
        if let Message::TaskExit { .. } = vm.recv()? {
            return Ok(());
        }
    }
}

fn start(workers: usize) -> Res<(Runtime, Vm)> {
    let runtime = Runtime::builder(tasks()).workers(workers).start()?;
    let vm = runtime.vm().build()?;
    Ok((runtime, vm))
}

/// Median no-op spawn round trip: spawn one task, wait for its result and exit.
fn round_trip(vm: &Vm, rounds: usize) -> Res<Duration> {
    let warm = rounds / 10;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + warm {
        let start = Instant::now();
        vm.spawn(Spawn::task("noop", &()))?;
        wait_exit(vm)?;
        if i >= warm {
            samples.push(start.elapsed());
        }
    }
    Ok(median(samples))
}

fn spawn_part(workers: usize) -> Res<()> {
    let rounds = 20_000;
    {
        let (runtime, vm) = start(1)?;
        let med = round_trip(&vm, rounds)?;
        println!(
            "no-op spawn round trip, 1 worker     : median {:7.1} us  ({:.0} tasks/s)",
            us(med),
            1.0 / med.as_secs_f64()
        );
        // External command round trip: `true` run by the worker (under its supervisor).
        let mut samples = Vec::new();
        for i in 0..220 {
            let start = Instant::now();
            vm.spawn(Spawn::command("true"))?;
            wait_exit(&vm)?;
            if i >= 20 {
                samples.push(start.elapsed());
            }
        }
        println!(
            "`true` command round trip, 1 worker  : median {:7.1} us",
            us(median(samples))
        );
        drop(vm);
        runtime.finalize()?;
    }
    let (runtime, vm) = start(workers)?;
    let med = round_trip(&vm, rounds)?;
    println!(
        "no-op spawn round trip, {workers} workers    : median {:7.1} us  ({:.0} tasks/s)",
        us(med),
        1.0 / med.as_secs_f64()
    );

    // No-op tasks, all workers kept busy.
    let total = 40_000u64;
    let start = Instant::now();
    let (mut spawned, mut done) = (0u64, 0u64);
    while done < total {
        while spawned < total && vm.free_slots() > 0 {
            spawned += vm.spawn(Spawn::task("noop", &()))?.len() as u64;
        }
        if let Message::TaskExit { .. } = vm.recv()? {
            done += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "no-op tasks, {workers} workers busy         : {:7.1} us/task ({:.0} tasks/s)",
        secs / total as f64 * 1e6,
        total as f64 / secs
    );
    drop(vm);
    runtime.finalize()?;

    // Whole-process start + finalize with 2 workers.
    let local = tempfile::tempdir()?;
    let mut samples = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .arg("start-finalize")
            .env("PARVM_WORKERS", "2")
            .env("PARALLEL_LOCAL_STORAGE", local.path())
            .env("PARALLEL_MIRRORED_STORAGE", local.path())
            .status()?;
        samples.push(start.elapsed());
        if !status.success() {
            return Err(format!("the test program failed: {status}").into());
        }
    }
    println!(
        "start + finalize, 2 workers          : median {:7.1} ms (whole process)",
        median(samples).as_secs_f64() * 1e3
    );
    mirror_part()
}

/// The no-op round trip of a VM with a mirror map: the request carries (or the worker
/// holds) the map, the worker takes a task folder and mirrors the inputs into it (a fresh
/// folder each time, or a kept one it refreshes).
fn mirror_part() -> Res<()> {
    let files = 8;
    let shared = tempfile::tempdir()?;
    let local = tempfile::tempdir()?;
    for i in 0..files {
        std::fs::write(shared.path().join(format!("input{i}.dat")), [b'x'; 1024])?;
    }
    let config = Config::builder()
        .mirrored_roots([shared.path()])
        .local_root(local.path())
        .build()?;
    let runtime = Runtime::builder(tasks())
        .config(config)
        .workers(1)
        .start()?;
    for persistent in [false, true] {
        let mut builder = runtime.vm().persistent(persistent);
        for i in 0..files {
            let source = shared.path().join(format!("input{i}.dat"));
            builder = builder.mirror(source.display().to_string(), ".");
        }
        let vm = builder.build()?;
        let med = round_trip(&vm, 2000)?;
        println!(
            "no-op spawn, mirror map of {files} files, {} folder: median {:7.1} us",
            if persistent { "kept " } else { "fresh" },
            us(med)
        );
        drop(vm);
    }
    runtime.finalize()?;
    Ok(())
}

fn messaging_part(workers: usize) -> Res<()> {
    let (runtime, vm) = start(workers)?;
    let ids = vm.spawn(Spawn::task("bounce", &()))?;
    let Some(&task) = ids.first() else {
        return Err("no free slot for the bounce task".into());
    };
    println!(
        "ping-pong one-way, median  :       VM             raw Unix socket      VM/raw  raw/VM rate"
    );
    for size in [0usize, 1024, 100 * 1024, 10 * 1024 * 1024] {
        let data = vec![0x5au8; size];
        let rounds = if size >= 1 << 20 { 40 } else { 3000 };
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + 5 {
            let start = Instant::now();
            vm.send_bytes(task, &data)?;
            match vm.recv()? {
                Message::User { data: back, .. } if back.bytes().len() == size => {}
                other => return Err(format!("unexpected {other:?}").into()),
            }
            if i >= 5 {
                samples.push(start.elapsed());
            }
        }
        let one_way = median(samples) / 2;
        let raw = parvm_transport::bench_support::raw_unix_pingpong(size, rounds)?.one_way;
        let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
        let ratio = one_way.as_secs_f64() / raw.as_secs_f64();
        println!(
            "  {:>9} B               : {:8.1} us {:6.0} MB/s  {:8.1} us {:6.0} MB/s  {:5.2}x  {:5.0}%",
            size,
            us(one_way),
            rate(one_way),
            us(raw),
            rate(raw),
            ratio,
            100.0 / ratio
        );
    }
    // Between two tasks: every message goes through the spawner, which sends it on.
    let pinger = |size: usize, rounds: usize| -> Res<Duration> {
        let ids = vm.spawn(Spawn::task("ping_peer", &(task, size, rounds)))?;
        let Some(&pinger) = ids.first() else {
            return Err("no free slot for the ping task (it needs 2 workers)".into());
        };
        loop {
            match vm.recv()? {
                Message::TaskResult { task, outcome } if task == pinger => {
                    let nanos: u64 = outcome.map_err(|e| e.to_string())?.decode()?;
                    wait_exit(&vm)?;
                    return Ok(Duration::from_nanos(nanos));
                }
                _ => {}
            }
        }
    };
    for size in [0usize, 1024] {
        let one_way = pinger(size, 3000)?;
        println!(
            "  task to task {:>5} B     : {:8.1} us (through the spawner)",
            size,
            us(one_way)
        );
    }
    vm.send_bytes(task, b"stop")?;
    wait_exit(&vm)?;
    // Idle: a VM waiting for a message that does not come must sleep, not spin.
    let idle = Duration::from_millis(500);
    let before = cpu_ticks();
    let waited = vm.recv_timeout(idle)?;
    let after = cpu_ticks();
    let share = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 100.0 / idle.as_secs_f64() * 100.0;
    println!(
        "idle recv_timeout(500 ms)  : spawner {:.0}% of a core, workers {:.0}% (got {})",
        share(before.0, after.0),
        share(before.1, after.1),
        if waited.is_some() {
            "a message"
        } else {
            "nothing"
        }
    );
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

/// CPU time in clock ticks (100 per second) of this process and of its children.
fn cpu_ticks() -> (u64, u64) {
    let ticks = |pid: &str| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    };
    let mut children = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            children += list.split_whitespace().map(ticks).sum::<u64>();
        }
    }
    (ticks("self"), children)
}

fn main() -> Res<()> {
    // `cargo bench` adds `--bench`; the first other argument names the part to run.
    let part = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let (spawn, messaging) = match part.as_deref() {
        None => (true, true),
        Some("spawn") => (true, false),
        Some("messaging") => (false, true),
        Some(other) => {
            return Err(
                format!("unknown part `{other}`: use `spawn`, `messaging` or nothing").into(),
            );
        }
    };
    // Workers run this same main: they serve (with the storage settings the spawner gave
    // them) and exit here, so only the spawner prints and makes the parts' folders.
    if std::env::var_os(parvm_transport::local::SOCKET_VAR).is_some() {
        Runtime::builder(tasks()).start()?;
        return Ok(());
    }
    println!("parvm-vm benchmarks, local backend, {workers} cores");
    if spawn {
        spawn_part(workers)?;
    }
    if messaging {
        messaging_part(workers)?;
    }
    Ok(())
}
