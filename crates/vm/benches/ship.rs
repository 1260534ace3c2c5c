//! Shipping inputs over TCP loopback (issue #12), each figure next to its baselines measured
//! in the same run. This binary is also its own worker program.
//!
//! `cargo xtask bench ship` (or `cargo bench -p parvm-vm --bench ship`) ships two trees,
//! 2 000 files of 4 KiB and 4 files of 64 MiB, to a TCP worker whose mirrored root is an
//! empty folder (so `PARVM_SHIP=auto` ships), and times one no-op task's spawn to exit:
//!
//! - `cold`: the worker's host cache is empty (a new worker, with new local storage);
//! - `warm`: the next task, everything cached;
//! - `changed`: after one file of the tree was rewritten;
//!
//! against the same task on a TCP worker that shares the root (`shared`: plain mirroring,
//! second task) and `rsync -a` of the tree to an empty folder through an rsync daemon on
//! loopback (`rsync`). Targets: cold at most rsync, warm within 1.2× shared, changed under
//! 5% of cold. Each figure is the median of three runs.
//!
//! The scratch folder is `PARVM_BENCH_DIR` (e.g. /dev/shm), else the temporary folder.
//! Other processes on the machine change these numbers a lot; run it several times.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parvm_transport::tcp::Secret;
use parvm_vm::{Backend, Config, Message, Runtime, Spawn, TaskContext, Tasks, TcpSpawner, Vm};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const RUNS: usize = 3;

fn tasks() -> Tasks {
    Tasks::new().register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
}

/// A tree to ship: its name, how many files, how big each is.
struct Tree {
    name: &'static str,
    count: u32,
    size: usize,
}

const TREES: [Tree; 2] = [
    Tree {
        name: "small",
        count: 2000,
        size: 4 << 10,
    },
    Tree {
        name: "large",
        count: 4,
        size: 64 << 20,
    },
];

/// Writes the tree's files under `dir`, each with content of its own (`seed` changes all).
fn write_tree(dir: &Path, tree: &Tree, seed: u8) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..tree.count {
        write_file(&dir.join(format!("f{i:05}")), tree.size, i, seed)?;
    }
    Ok(())
}

fn write_file(path: &Path, size: usize, index: u32, seed: u8) -> std::io::Result<()> {
    let mut block = vec![seed; size.min(1 << 20)];
    block[..4].copy_from_slice(&index.to_le_bytes());
    let mut file = std::fs::File::create(path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        file.write_all(&block[..n])?;
        left -= n;
    }
    Ok(())
}

/// Worker processes of this binary, killed when dropped.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP spawner with one worker whose mirrored root is `worker_root`.
struct Cluster {
    runtime: Runtime,
    _workers: Workers,
}

impl Cluster {
    fn start(scratch: &Path, shared: &Path, worker_root: &Path, worker_local: &Path) -> Res<Self> {
        let secret_file = scratch.join("secret");
        let secret = Secret::load_or_create(&secret_file)?;
        let spawner_local = scratch.join("spawner-local");
        std::fs::create_dir_all(&spawner_local)?;
        let mut config = Config::builder()
            .local_root(&spawner_local)
            .mirrored_roots([shared]);
        if let Some(filter) = std::env::var_os("PARVM_LOG").and_then(|f| f.into_string().ok()) {
            // The spawner's own log lines too (the workers read it from the environment).
            config = config.log_filter(filter);
        }
        let config = config.build()?;
        let runtime = Runtime::builder(tasks())
            .config(config)
            .backend(Backend::Tcp(
                TcpSpawner::new()
                    .listen((Ipv4Addr::LOCALHOST, 0).into())
                    .secret(secret),
            ))
            .start()?;
        let addr = runtime.tcp_addr().ok_or("no TCP address")?;
        std::fs::create_dir_all(worker_local)?;
        let child = Command::new(std::env::current_exe()?)
            .env("PARVM_CONNECT", addr.to_string())
            .env("PARVM_SECRET_FILE", &secret_file)
            .env("PARVM_HOSTNAME", "far")
            .env("PARALLEL_LOCAL_STORAGE", worker_local)
            .env("PARALLEL_MIRRORED_STORAGE", worker_root)
            .env_remove("PARVM_TRANSPORT")
            .stdin(Stdio::null())
            .spawn()?;
        let workers = Workers(vec![child]);
        runtime.wait_for_workers(1, Duration::from_secs(30))?;
        Ok(Cluster {
            runtime,
            _workers: workers,
        })
    }

    fn vm(&self, source: &Path) -> Res<Vm> {
        Ok(self
            .runtime
            .vm()
            .mirror(source.display().to_string(), ".")
            .build()?)
    }
}

/// One task's spawn to exit.
fn task(vm: &Vm) -> Res<Duration> {
    let start = Instant::now();
    vm.spawn(Spawn::task("noop", &()))?;
    loop {
        if let Message::TaskExit { status, .. } = vm.recv()? {
            if !status.is_completed() {
                return Err(format!("the task failed: {status:?}").into());
            }
            return Ok(start.elapsed());
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An rsync daemon on loopback with one writable module, `bench`, at `dir`.
struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl RsyncDaemon {
    fn start(scratch: &Path, dir: &Path) -> Res<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let conf = scratch.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = false\npid file = {}\n[bench]\npath = {}\nread only = false\nuid = {}\ngid = {}\n",
                scratch.join("rsyncd.pid").display(),
                dir.display(),
                nix::unistd::getuid(),
                nix::unistd::getgid(),
            ),
        )?;
        let child = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .spawn()?;
        let daemon = RsyncDaemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
            if Instant::now() > deadline {
                return Err("the rsync daemon did not start listening".into());
            }
            std::thread::yield_now();
        }
        Ok(daemon)
    }

    /// `rsync -a` of `source` into `name` of the module (new each time), timed.
    fn copy(&self, source: &Path, name: &str) -> Res<Duration> {
        let start = Instant::now();
        let status = Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", source.display()))
            .arg(format!("rsync://127.0.0.1:{}/bench/{name}/", self.port))
            .status()?;
        if !status.success() {
            return Err(format!("rsync failed: {status}").into());
        }
        Ok(start.elapsed())
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_tree(scratch: &Path, tree: &Tree) -> Res<()> {
    let shared = scratch.join("shared");
    let source = shared.join(tree.name);
    write_tree(&source, tree, 1)?;
    let empty_root = scratch.join("empty-root");
    std::fs::create_dir_all(&empty_root)?;
    let (mut cold, mut warm, mut changed, mut plain) = (vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        // A new worker with new local storage: its host cache is cold.
        let local = scratch.join(format!("far-{}-{run}", tree.name));
        let cluster = Cluster::start(scratch, &shared, &empty_root, &local)?;
        let vm = cluster.vm(&source)?;
        cold.push(task(&vm)?);
        warm.push(task(&vm)?);
        write_file(&source.join("f00000"), tree.size, 0, 2 + run as u8)?;
        changed.push(task(&vm)?);
        if vm.ship_stats().blobs == 0 {
            return Err("nothing was shipped; the worker shares the root".into());
        }
        drop(vm);
        cluster.runtime.finalize()?;
        std::fs::remove_dir_all(&local)?;
        // The same task where the root is shared: plain mirroring, second task.
        let local = scratch.join(format!("near-{}-{run}", tree.name));
        let cluster = Cluster::start(scratch, &shared, &shared, &local)?;
        let vm = cluster.vm(&source)?;
        task(&vm)?;
        plain.push(task(&vm)?);
        if vm.ship_stats().blobs != 0 {
            return Err("the shared root was shipped".into());
        }
        drop(vm);
        cluster.runtime.finalize()?;
        std::fs::remove_dir_all(&local)?;
    }
    let target = scratch.join("rsync-target");
    std::fs::create_dir_all(&target)?;
    let daemon = RsyncDaemon::start(scratch, &target)?;
    let mut rsync = Vec::new();
    for run in 0..RUNS {
        rsync.push(daemon.copy(&source, &format!("{}-{run}", tree.name))?);
    }
    drop(daemon);
    std::fs::remove_dir_all(&target)?;
    let (cold, warm, changed, plain, rsync) = (
        median(cold),
        median(warm),
        median(changed),
        median(plain),
        median(rsync),
    );
    let label = format!("{} ({} x {} KiB)", tree.name, tree.count, tree.size >> 10);
    println!("ship {label}, over TCP loopback, median of {RUNS}:");
    println!(
        "  cold cache   {:9.1} ms   rsync -a to an empty folder {:9.1} ms   ratio {:.2} (target <= 1)",
        ms(cold),
        ms(rsync),
        cold.as_secs_f64() / rsync.as_secs_f64()
    );
    println!(
        "  warm cache   {:9.1} ms   shared mirroring            {:9.1} ms   ratio {:.2} (target <= 1.2)",
        ms(warm),
        ms(plain),
        warm.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "  one changed  {:9.1} ms   of cold                                    {:5.1}% (target < 5%)",
        ms(changed),
        changed.as_secs_f64() / cold.as_secs_f64() * 100.0
    );
    Ok(())
}

fn main() -> Res<()> {
    if Config::connect_from_env()?.is_some() {
        // A worker: serves until the spawner sends it home.
        Runtime::builder(tasks()).start()?;
        return Ok(());
    }
    // `cargo bench` passes `--bench`; a tree's name picks it.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--") && a != "ship")
        .collect();
    let base: PathBuf =
        std::env::var_os("PARVM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let scratch = tempfile::Builder::new()
        .prefix("parvm-bench-ship-")
        .tempdir_in(base)?;
    for tree in &TREES {
        if wanted.is_empty() || wanted.iter().any(|w| w == tree.name) {
            bench_tree(scratch.path(), tree)?;
        }
    }
    Ok(())
}
