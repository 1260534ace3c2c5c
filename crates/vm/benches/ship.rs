//! Shipping inputs where nothing is shared (`cargo xtask bench ship`): a TCP worker on
//! loopback whose host must be sent the mirrored inputs, against `rsync -a` from an rsync
//! daemon on loopback, `rsync -a` over ssh on loopback and shared mirroring, in the same run.
//!
//! For each base folder (tmpfs `/dev/shm`, and a folder on disk under the target folder)
//! and each tree (2 000 files of 4 KiB in 20 folders; 4 files of 64 MiB) it times, per
//! task, spawn to exit of a no-op task whose folder is filled by the VM's mirror map:
//! - shipped, cold: the worker's host cache is empty (a new worker with new local storage);
//! - shipped, warm: the next tasks on that worker;
//! - shipped, one file changed: a task after one source file was rewritten, `CHANGED_TASKS`
//!   times a round (one sample a round let one slow task, as warm tasks have now and then,
//!   decide the median);
//! - shipped, next run with one file changed: the first task of a new spawner and worker
//!   (the host cache kept) after one more source file was rewritten, as a user who edits
//!   an input between two runs;
//! - shared: a worker that reads the same mirrored folder (`ShipMode::Never`), its tasks
//!   alternating with the warm ones in every round, after one untimed first task;
//! - `rsync -a` of the tree from `rsync://127.0.0.1` into an empty folder, one in every
//!   round right before its cold ship, as is the next;
//! - `rsync -a` of the tree over ssh into an empty folder, from a throwaway sshd on
//!   127.0.0.1 that this bench configures and starts (its keys made in the scratch folder).
//!   parvm authenticates its peer and encrypts every frame; the rsync daemon does neither,
//!   ssh does both, as users run rsync between hosts.
//!
//! Each figure is the median of `REPEATS` runs. A worker is this bench binary again, started
//! with `PARVM_CONNECT` (so `Runtime::start` makes it a worker) and its own local storage;
//! the spawner's configuration says whether it ships (`ShipMode`).

mod common;

use std::convert::Infallible;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Res;
use nix::unistd::{User, geteuid};
use parvm_transport::tcp::Secret;
use parvm_vm::{
    Backend, Config, Message, Runtime, ShipMode, Spawn, TaskContext, Tasks, TcpSpawner, Vm,
};

/// Runs of each measurement; the median is reported.
const REPEATS: usize = 3;
/// Warm tasks timed after each cold one.
const WARM_TASKS: usize = 3;
/// Tasks timed after one file changed, in each round (each after its own rewrite).
const CHANGED_TASKS: usize = 3;
/// How long a worker may take to join.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// How many no-op logins the loopback sshd gets to accept the first one (each try is an
/// `ssh ... true` that fails at once while nothing listens yet).
const SSHD_READY_TRIES: usize = 500;

/// A tree of input files: `dirs` folders of `files_per_dir` files of `size` bytes.
struct Tree {
    name: &'static str,
    folder: &'static str,
    dirs: usize,
    files_per_dir: usize,
    size: usize,
}

const TREES: [Tree; 2] = [
    Tree {
        name: "2000 x 4 KiB",
        folder: "small",
        dirs: 20,
        files_per_dir: 100,
        size: 4096,
    },
    Tree {
        name: "4 x 64 MiB",
        folder: "big",
        dirs: 1,
        files_per_dir: 4,
        size: 64 << 20,
    },
];

fn tasks() -> Tasks {
    Tasks::new().register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
}

fn main() -> Res<()> {
    // A worker this bench started: joins and serves; `start` does not return here.
    let runtime_or_worker = std::env::var_os("PARVM_CONNECT").is_some();
    if runtime_or_worker {
        Runtime::builder(tasks()).start()?;
        return Ok(());
    }
    let rsync = which("rsync");
    if rsync.is_none() {
        println!(
            "rsync: not on PATH, its columns are skipped (cargo xtask bench ship installs it)"
        );
    }
    let ssh_programs = SshPrograms::find();
    if let Err(missing) = &ssh_programs {
        println!(
            "rsync over ssh: `{missing}` not found, its column is skipped \
             (cargo xtask bench ship installs openssh-client and openssh-server)"
        );
    }
    let exe = std::env::current_exe()?;
    // The bench binary lives in <target>/release/deps/.
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("cannot find the target folder")?
        .to_path_buf();
    let bases = match std::env::var_os("PARVM_BENCH_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![PathBuf::from("/dev/shm"), target],
    };
    parvm_test_support::touch_memory();
    println!("bench ship: a TCP worker on loopback, median of {REPEATS}; per task, spawn to exit");
    println!(
        "rsync -a: from an rsync daemon on loopback; rsync ssh: rsync -a over ssh on loopback"
    );
    for base in bases {
        let work = tempfile::Builder::new()
            .prefix("parvm-ship-bench-")
            .tempdir_in(&base)
            .map_err(|e| format!("cannot make a scratch folder in {}: {e}", base.display()))?;
        // Dropped before `work`: the sshd is stopped before its folder is removed.
        let ssh = match (&rsync, &ssh_programs) {
            (Some(_), Ok(programs)) => match SshServer::start(programs, &work.path().join("ssh")) {
                Ok(server) => Some(server),
                Err(why) => {
                    println!("rsync over ssh: its column is skipped, {why}");
                    None
                }
            },
            _ => None,
        };
        println!(
            "\nbase: {} ({})",
            base.display(),
            parvm_test_support::file_system_label(&base)
        );
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}   {:>11} {:>11} {:>11} {:>12} {:>18} {:>12}",
            "tree",
            "cold",
            "warm",
            "1 changed",
            "next run",
            "shared",
            "rsync -a",
            "rsync ssh",
            "cold/rsync",
            "cold/ssh",
            "warm/shared",
            "changed/cold",
            "(changed-warm)/cold",
            "next/cold"
        );
        for tree in TREES.iter().filter(|tree| wanted(tree)) {
            let row = measure(&exe, work.path(), tree, rsync.as_deref(), ssh.as_ref())?;
            row.print(tree);
        }
    }
    Ok(())
}

/// Whether `PARVM_BENCH_TREES` (a comma-separated list of tree folders, `small` and `big`;
/// unset: both) asks for `tree`, so a profile can run the one tree it looks at.
fn wanted(tree: &Tree) -> bool {
    std::env::var("PARVM_BENCH_TREES").map_or(true, |trees| {
        trees.split(',').any(|name| name.trim() == tree.folder)
    })
}

/// One tree's medians.
struct Row {
    cold: Duration,
    warm: Duration,
    changed: Duration,
    /// The first task of the next run after one more file changed.
    next_run: Duration,
    shared: Duration,
    rsync: Option<Duration>,
    rsync_ssh: Option<Duration>,
}

impl Row {
    fn print(&self, tree: &Tree) {
        let ms = |d: Duration| format!("{:8.1}ms", d.as_secs_f64() * 1e3);
        let ratio =
            |a: Duration, b: Duration| format!("{:10.2}x", a.as_secs_f64() / b.as_secs_f64());
        // What the changed file costs: the whole task (a new folder is filled every time),
        // and what it costs beyond a warm task (negative when the noise is larger).
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}   {:>11} {:>11} {:>11} {:>11.1}% {:>17.1}% {:>11.1}%",
            tree.name,
            ms(self.cold),
            ms(self.warm),
            ms(self.changed),
            ms(self.next_run),
            ms(self.shared),
            self.rsync.map_or("-".to_owned(), ms),
            self.rsync_ssh.map_or("-".to_owned(), ms),
            self.rsync.map_or("-".to_owned(), |r| ratio(self.cold, r)),
            self.rsync_ssh
                .map_or("-".to_owned(), |r| ratio(self.cold, r)),
            ratio(self.warm, self.shared),
            100.0 * self.changed.as_secs_f64() / self.cold.as_secs_f64(),
            100.0 * (self.changed.as_secs_f64() - self.warm.as_secs_f64())
                / self.cold.as_secs_f64(),
            100.0 * self.next_run.as_secs_f64() / self.cold.as_secs_f64(),
        );
    }
}

fn measure(
    exe: &Path,
    work: &Path,
    tree: &Tree,
    rsync: Option<&Path>,
    ssh: Option<&SshServer>,
) -> Res<Row> {
    let mirrored = work.join("mirrored");
    make_tree(&mirrored.join(tree.folder), tree)?;
    let secret_file = work.join("secret");
    let secret = Secret::load_or_create(&secret_file)?;

    let start =
        |local: &Path, mode| Cluster::start(exe, &mirrored, local, &secret, &secret_file, mode);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut changed = Vec::new();
    let mut next_run = Vec::new();
    let mut shared = Vec::new();
    let baseline = rsync
        .map(|rsync| RsyncBaseline::start(rsync, ssh, &mirrored, tree, work))
        .transpose()?;
    let mut from_daemon = Vec::new();
    let mut over_ssh = Vec::new();
    for round in 0..REPEATS {
        if let Some(baseline) = &baseline {
            let (daemon, ssh) = baseline.once(round)?;
            from_daemon.push(daemon);
            over_ssh.extend(ssh);
        }
        // Shared mirroring on a worker of its own, its tasks alternating with the warm
        // ones: a disk whose speed drifts with what was written before (ext4 on these
        // VMs) then weighs on both alike. Its first task is not timed, as cold is not.
        let shared_local = work.join(format!("local-shared-{}", tree.folder));
        let shared_cluster = start(&shared_local, ShipMode::Never)?;
        let shared_vm = shared_cluster.vm(tree)?;
        one_task(&shared_vm)?;

        // New local storage: an empty host cache.
        let local = work.join(format!("local-ship-{}-{round}", tree.folder));
        let cluster = start(&local, ShipMode::Always)?;
        let vm = cluster.vm(tree)?;
        // Not while the shared worker removes its first task's folder, as no timed task
        // is (it did during the cold ship of 2 000 files: 19% of a core, and on ext4
        // without a journal 2 000 freshly deleted inodes for the cache's files to step over).
        no_folder_kept(&shared_local)?;
        cold.push(one_task(&vm)?);
        // Neither worker removing a folder meanwhile, either.
        let settled = || no_folder_kept(&local).and_then(|()| no_folder_kept(&shared_local));
        for _ in 0..WARM_TASKS {
            settled()?;
            warm.push(one_task(&vm)?);
            settled()?;
            shared.push(one_task(&shared_vm)?);
        }
        drop(shared_vm);
        shared_cluster.finish()?;
        fs::remove_dir_all(&shared_local)?;
        for k in 0..CHANGED_TASKS {
            rewrite_one_file(&mirrored.join(tree.folder), round * CHANGED_TASKS + k)?;
            no_folder_kept(&local)?;
            changed.push(one_task(&vm)?);
        }
        drop(vm);
        cluster.finish()?;
        // The next run: a new spawner and worker, the same host cache.
        rewrite_one_file(&mirrored.join(tree.folder), REPEATS * CHANGED_TASKS + round)?;
        let cluster = start(&local, ShipMode::Always)?;
        let vm = cluster.vm(tree)?;
        next_run.push(one_task(&vm)?);
        drop(vm);
        cluster.finish()?;
        fs::remove_dir_all(&local)?;
    }

    drop(baseline);
    let rsync = (!from_daemon.is_empty()).then(|| median(from_daemon));
    let rsync_ssh = (!over_ssh.is_empty()).then(|| median(over_ssh));
    fs::remove_dir_all(&mirrored)?;
    Ok(Row {
        cold: median(cold),
        warm: median(warm),
        changed: median(changed),
        next_run: median(next_run),
        shared: median(shared),
        rsync,
        rsync_ssh,
    })
}

/// A spawner on loopback TCP and one worker process.
struct Cluster {
    runtime: Runtime,
    worker: Worker,
}

impl Cluster {
    fn start(
        exe: &Path,
        mirrored: &Path,
        local: &Path,
        secret: &Secret,
        secret_file: &Path,
        ship: ShipMode,
    ) -> Res<Cluster> {
        fs::create_dir_all(local)?;
        let spawner_local = local.join("spawner");
        fs::create_dir_all(&spawner_local)?;
        let mut config = Config::builder()
            .local_root(&spawner_local)
            .mirrored_roots([mirrored])
            .ship(ship);
        // `PARVM_LOG` shows the spawner's side too (the worker reads it from its
        // environment).
        if let Ok(filter) = std::env::var("PARVM_LOG") {
            config = config.log_filter(filter);
        }
        let config = config.build()?;
        let runtime = Runtime::builder(tasks())
            .config(config)
            .backend(Backend::Tcp(
                TcpSpawner::new()
                    .listen(([127, 0, 0, 1], 0).into())
                    .secret(secret.clone()),
            ))
            .start()?;
        let addr = runtime.tcp_addr().ok_or("the TCP runtime has no address")?;
        let worker = Worker(
            Command::new(exe)
                .env("PARVM_CONNECT", addr.to_string())
                .env("PARVM_SECRET_FILE", secret_file)
                .env("PARVM_HOSTNAME", "far")
                .env("PARALLEL_LOCAL_STORAGE", local)
                .env("PARALLEL_MIRRORED_STORAGE", mirrored)
                .env_remove("PARVM_TRANSPORT")
                .stdin(Stdio::null())
                .spawn()?,
        );
        let cluster = Cluster { runtime, worker };
        cluster.runtime.wait_for_workers(1, JOIN_WAIT)?;
        Ok(cluster)
    }

    fn vm(&self, tree: &Tree) -> Res<Vm> {
        Ok(self
            .runtime
            .vm()
            .mirror(self.mirrored_source(tree), ".")
            .build()?)
    }

    fn mirrored_source(&self, tree: &Tree) -> String {
        // A source is a path inside the mirrored root; absolute, so the bench's current
        // folder does not matter. Its target `.` makes it `<task folder>/<tree folder>`.
        let root = &self.runtime.config().mirrored_roots()[0];
        format!("{}/{}", root.display(), tree.folder)
    }

    fn finish(mut self) -> Res<()> {
        self.runtime.finalize()?;
        self.worker.0.wait()?;
        Ok(())
    }
}

/// The bench's TCP worker: a bench that fails half-way leaves none behind.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        // After `Cluster::finish` it has exited and been waited for.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until the worker on local storage `local` holds no task folder: it keeps the last
/// task's folder a moment for a next task and renews it then, and a timed task must start
/// in a fresh folder, mirrored from the host cache (or the shared folder), which is what
/// the rows compare (`bench run mirrored` times renewals).
fn no_folder_kept(local: &Path) -> Res<()> {
    let deadline = Instant::now() + JOIN_WAIT;
    loop {
        let mut kept = Vec::new();
        // The worker's per-user folder `parvm-<user>` (the spawner's is in `spawner/`).
        for user_dir in fs::read_dir(local)? {
            let user_dir = user_dir?.path();
            let named = user_dir.file_name().and_then(|n| n.to_str());
            if user_dir.is_dir() && named.is_some_and(|n| n.starts_with("parvm-")) {
                kept.extend(
                    fs::read_dir(&user_dir)?
                        .filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .filter(|name| name != "cache"),
                );
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the worker kept {kept:?} in {}", local.display()).into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Spawn to exit of one no-op task with a mirrored folder.
fn one_task(vm: &Vm) -> Res<Duration> {
    let start = Instant::now();
    let ids = vm.spawn(Spawn::task("noop", &()))?;
    if ids.len() != 1 {
        return Err("no free slot for the task".into());
    }
    loop {
        if let Message::TaskExit { status, .. } = vm.recv()? {
            if !status.is_completed() {
                return Err(format!("the task failed: {status}").into());
            }
            return Ok(start.elapsed());
        }
    }
}

fn make_tree(root: &Path, tree: &Tree) -> Res<()> {
    let block: Vec<u8> = (0..tree.size).map(|i| (i * 31 % 251) as u8).collect();
    for d in 0..tree.dirs {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir_all(&dir)?;
        for f in 0..tree.files_per_dir {
            let mut file = fs::File::create(dir.join(format!("f{f:03}.dat")))?;
            // Each file differs, so the cache holds every one.
            file.write_all(format!("{d}/{f}\n").as_bytes())?;
            file.write_all(&block)?;
        }
    }
    Ok(())
}

/// Writes new first bytes (naming the `nth` change) into the first file of the tree, in
/// place, as a user who edits one input between two tasks. Rewriting the whole file instead
/// (truncated, then 64 MiB written) made ext4 start writing those 64 MiB to disk at once
/// (its `auto_da_alloc` for a file truncated and written again), and that write-back
/// slowed the next task's hashing of the file from 9 to 26-34 ms: the edit's cost, not
/// the ship's.
fn rewrite_one_file(root: &Path, nth: usize) -> Res<()> {
    use std::os::unix::fs::FileExt;
    let path = root.join("d00").join("f000.dat");
    let stamp = format!("change number {nth}\n");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .write_all_at(stamp.as_bytes(), 0)?;
    Ok(())
}

/// An rsync daemon on loopback serving the mirrored folder, for the cold baselines: each
/// round times one `rsync -a` from it and one over ssh, next to that round's cold ship, so
/// that a shared machine's load and a disk whose speed drifts touch both alike.
struct RsyncBaseline<'a> {
    rsync: &'a Path,
    ssh: Option<&'a SshServer>,
    url: String,
    source: PathBuf,
    work: &'a Path,
    _daemon: Daemon,
}

impl<'a> RsyncBaseline<'a> {
    fn start(
        rsync: &'a Path,
        ssh: Option<&'a SshServer>,
        mirrored: &Path,
        tree: &Tree,
        work: &'a Path,
    ) -> Res<RsyncBaseline<'a>> {
        let port = free_port()?;
        let config = work.join("rsyncd.conf");
        fs::write(
            &config,
            format!(
                "use chroot = no\nport = {port}\naddress = 127.0.0.1\npid file = {pid}\n\
                 [m]\npath = {path}\nread only = yes\n",
                pid = work.join("rsyncd.pid").display(),
                path = mirrored.display()
            ),
        )?;
        let daemon = Daemon::spawn(
            Command::new(rsync)
                .args(["--daemon", "--no-detach", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let url = format!("rsync://127.0.0.1:{port}/m/{}/", tree.folder);
        // The daemon is ready when it answers a listing; the answer is awaited, not slept on.
        let deadline = Instant::now() + JOIN_WAIT;
        while !Command::new(rsync)
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if Instant::now() > deadline {
                return Err("the rsync daemon on loopback did not answer".into());
            }
        }
        Ok(RsyncBaseline {
            rsync,
            ssh,
            url,
            source: mirrored.join(tree.folder),
            work,
            _daemon: daemon,
        })
    }

    /// One `rsync -a` of the tree from the daemon, and one over ssh when there is sshd.
    fn once(&self, round: usize) -> Res<(Duration, Option<Duration>)> {
        let dst = self.work.join(format!("rsync-{round}"));
        let from_daemon = time_rsync(Command::new(self.rsync).arg("-a").arg(&self.url), &dst)?;
        let over_ssh = match self.ssh {
            Some(ssh) => Some(time_rsync(&mut ssh.rsync(self.rsync, &self.source), &dst)?),
            None => None,
        };
        Ok((from_daemon, over_ssh))
    }
}

/// Times `command` (an `rsync -a` whose last argument is to be `dst`) copying into `dst`,
/// which does not exist yet, then removes `dst` for the next round.
fn time_rsync(command: &mut Command, dst: &Path) -> Res<Duration> {
    command.arg(dst).stdin(Stdio::null());
    let start = Instant::now();
    let status = command.status()?;
    let took = start.elapsed();
    if !status.success() {
        return Err(format!("{command:?} failed: {status}").into());
    }
    fs::remove_dir_all(dst)?;
    Ok(took)
}

/// A server process this bench started: killed and waited for when dropped, also when the
/// bench fails half-way.
struct Daemon(Child);

impl Daemon {
    fn spawn(command: &mut Command) -> Res<Daemon> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        Ok(Daemon(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The OpenSSH programs the ssh baseline runs.
struct SshPrograms {
    ssh: PathBuf,
    keygen: PathBuf,
    sshd: PathBuf,
}

impl SshPrograms {
    /// All three, or the name of the first one missing.
    fn find() -> Result<SshPrograms, &'static str> {
        let find = |name: &'static str| which(name).ok_or(name);
        Ok(SshPrograms {
            ssh: find("ssh")?,
            keygen: find("ssh-keygen")?,
            sshd: find("sshd")?,
        })
    }
}

/// A throwaway sshd on 127.0.0.1 that lets this user in with a key made for the bench: its
/// configuration, host key, client key, authorized keys and pid file all live in the
/// bench's scratch folder. Stopped when dropped.
struct SshServer {
    ssh: PathBuf,
    port: u16,
    user: String,
    client_key: PathBuf,
    _sshd: Daemon,
}

impl SshServer {
    fn start(programs: &SshPrograms, folder: &Path) -> Res<SshServer> {
        fs::create_dir_all(folder)?;
        let host_key = folder.join("host_key");
        let client_key = folder.join("client_key");
        for key in [&host_key, &client_key] {
            let status = Command::new(&programs.keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(key)
                .stdin(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(format!("ssh-keygen of {} failed: {status}", key.display()).into());
            }
        }
        let authorized_keys = folder.join("authorized_keys");
        fs::copy(folder.join("client_key.pub"), &authorized_keys)?;
        let uid = geteuid();
        if uid.is_root() {
            // sshd started by root needs its privilege separation folder; /run is emptied
            // at boot, and a machine that never ran sshd has none.
            fs::create_dir_all("/run/sshd")
                .map_err(|e| format!("cannot make /run/sshd for sshd: {e}"))?;
        }
        let user = User::from_uid(uid)?
            .ok_or_else(|| format!("no user name for uid {uid}"))?
            .name;
        let port = free_port()?;
        let config = folder.join("sshd_config");
        // StrictModes off: the scratch folder may sit in a world-writable /dev/shm, whose
        // permissions sshd would refuse for the authorized keys. Default ciphers, as users
        // get them.
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey \"{host_key}\"\n\
                 PidFile \"{pid}\"\n\
                 AuthorizedKeysFile \"{authorized_keys}\"\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user}\n\
                 LogLevel ERROR\n",
                host_key = host_key.display(),
                pid = folder.join("sshd.pid").display(),
                authorized_keys = authorized_keys.display(),
            ),
        )?;
        let log = folder.join("sshd.log");
        // `-D`: in the foreground, so the guard's kill stops it; `-e`: errors to the log.
        let mut sshd = Daemon::spawn(
            Command::new(&programs.sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?),
        )?;
        let sshd_log = || fs::read_to_string(&log).unwrap_or_default();
        // Ready when a no-op login succeeds: each try fails at once until sshd listens.
        for _ in 0..SSHD_READY_TRIES {
            if let Some(status) = sshd.0.try_wait()? {
                return Err(format!(
                    "sshd ({}) exited: {status}; its log: {}",
                    config.display(),
                    sshd_log()
                )
                .into());
            }
            let login = Command::new(&programs.ssh)
                .args(server_ssh_args(port, &client_key))
                .arg(format!("{user}@127.0.0.1"))
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if login.success() {
                return Ok(SshServer {
                    ssh: programs.ssh.clone(),
                    port,
                    user,
                    client_key,
                    _sshd: sshd,
                });
            }
        }
        Err(format!(
            "no login to sshd on 127.0.0.1:{port} ({}) in {SSHD_READY_TRIES} tries; its log: {}",
            config.display(),
            sshd_log()
        )
        .into())
    }

    /// `rsync -a` of `source`'s content from this server, over ssh; the destination is the
    /// next argument. The same rsync runs on both ends.
    fn rsync(&self, rsync: &Path, source: &Path) -> Command {
        // rsync splits `-e` at spaces and keeps quoted words whole.
        let shell = std::iter::once(self.ssh.display().to_string())
            .chain(server_ssh_args(self.port, &self.client_key))
            .map(|word| format!("'{word}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new(rsync);
        command
            .arg("-a")
            .arg("-e")
            .arg(shell)
            .arg(format!("--rsync-path={}", rsync.display()))
            .arg(format!("{}@127.0.0.1:{}/", self.user, source.display()));
        command
    }
}

/// The ssh client's options for the loopback sshd: its port, the bench's key, no host key
/// check (the host key is new each run) and no prompt.
fn server_ssh_args(port: u16, client_key: &Path) -> Vec<String> {
    [
        "-p".to_owned(),
        port.to_string(),
        "-i".to_owned(),
        client_key.display().to_string(),
    ]
    .into_iter()
    .chain(
        [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option.to_owned()]),
    )
    .collect()
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// `program` on the PATH, or in a system binaries folder (sshd lives in `/usr/sbin`, which
/// a user's PATH often lacks).
fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|path| path.is_absolute() && path.is_file())
}
