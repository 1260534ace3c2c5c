//! `parvm worker`: a generic TCP worker that runs external-command tasks.
//!
//! It connects to a spawner listening on TCP (`PARVM_TRANSPORT=tcp`), proves it knows the
//! shared secret, and serves tasks spawned with `Spawn::command` until the spawner
//! finalizes or goes away. Function tasks need the code of the user's program: run that
//! program itself with `PARVM_CONNECT=host:port` to get a worker that serves them.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use parvm_env_config::{CONNECT_VAR, Config};
use parvm_transport::tcp::{ConnectOptions, Secret, TcpTransport};
use parvm_vm::{LeaveRequest, Tasks, Worker, WorkerEnd};
use signal_hook::iterator::Signals;

/// How to reach the spawner. A flag that is not given takes its variable's value, read
/// and checked by `parvm_env_config::Config` like every other parvm variable.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The spawner's address, `host:port`, as the spawner prints it [default:
    /// PARVM_CONNECT].
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// The secret file shared with the spawner [default: PARVM_SECRET_FILE, else
    /// ~/.parvm/secret]; it must be readable by you alone (chmod 600).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Keep trying to join for this many seconds, with growing pauses: for a spawner that
    /// starts later, is busy, or refused a handshake [default: PARVM_CONNECT_WAIT, else 0].
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// The largest message accepted from the spawner, in bytes (suffixes K, M, G)
    /// [default: PARVM_MAX_FRAME, else 1G].
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<String>,
    /// How long the spawner has to answer the handshake, in seconds [default:
    /// PARVM_HANDSHAKE_TIMEOUT, else 5].
    #[arg(long, value_name = "SECONDS")]
    pub handshake_timeout: Option<f64>,
    /// How long the joined spawner's host may not answer (down, or cut off) before this
    /// worker stops its task and leaves, in seconds; 0 waits for ever [default:
    /// PARVM_PEER_TIMEOUT, else 60].
    #[arg(long, value_name = "SECONDS")]
    pub peer_timeout: Option<f64>,
    /// How many worker processes to start (one task slot each).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub slots: usize,
}

/// Runs `parvm worker`.
pub fn run(args: &Args) -> Result<()> {
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    // This host needs none of the spawner's mirrored folders: what it lacks is shipped.
    let config = Config::from_env_as_worker()?;
    // Every task with a task folder would fail here: said once, before joining, so the
    // spawner does not send this worker case after case to fail at once.
    parvm_local_storage::LocalStorage::from_config(&config)
        .context("this worker cannot run tasks in task folders")?;
    if args.slots > 1 {
        return run_many(args, &config);
    }
    let transport = connect(args, &config)?;
    crate::console::say(format!(
        "parvm worker: joined the spawner at {} as rank {} on host `{}`",
        spawner(args, &config)?,
        parvm_transport::Transport::rank(&transport),
        parvm_transport::Transport::host(&transport),
    ));
    // Caught once joined: before, a signal has nothing to clean and ends the worker.
    let leave = LeaveRequest::on_signals()?;
    serve(transport, config, true, Some(leave))
}

/// The spawner's address: `--connect`, else `PARVM_CONNECT`.
fn spawner<'a>(args: &'a Args, config: &'a Config) -> Result<&'a str> {
    match args.connect.as_deref().or(config.connect()) {
        Some(addr) => Ok(addr),
        None => bail!(
            "no spawner to join; give its address with --connect HOST:PORT or set {CONNECT_VAR}, as the spawner prints it"
        ),
    }
}

/// The secret file of `args`, else the configured one.
fn secret_path(args: &Args, config: &Config) -> Result<PathBuf> {
    match &args.secret_file {
        Some(path) => Ok(path.clone()),
        None => Ok(config.secret_file()?.to_path_buf()),
    }
}

/// Prints why a try to join failed, once for each different reason, so a worker that
/// waits says what it waits for.
fn report_retry() -> impl Fn(&parvm_transport::Error, Duration) + Send + Sync + 'static {
    let last = std::sync::Mutex::new(String::new());
    move |error, left| {
        let text = error.to_string();
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != text {
            crate::console::say(format!(
                "parvm worker: {text}; trying again for up to {:.0} s",
                left.as_secs_f64().ceil()
            ));
            *last = text;
        }
    }
}

/// Seconds from a flag, checked.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        anyhow::anyhow!("{flag} {value} is not a number of seconds; give one such as 5 or 0.5")
    })
}

/// Connects and authenticates, trying again for `--wait` seconds when the spawner cannot
/// be reached or the handshake fails (the transport's retry, with growing pauses). Each
/// setting is its flag, else its variable as `config` read it.
fn connect(args: &Args, config: &Config) -> Result<TcpTransport> {
    let addr = spawner(args, config)?;
    let path = secret_path(args, config)?;
    let secret = Secret::load(&path)
        .with_context(|| format!("cannot use the secret file `{}`", path.display()))?;
    let wait = match args.wait {
        Some(wait) => seconds("--wait", wait)?,
        None => config.connect_wait().unwrap_or_default(),
    };
    let mut options = ConnectOptions::new(addr, secret)
        .host(config.hostname())
        .wait(wait)
        .spin_window(
            config
                .spin_window()
                .unwrap_or(parvm_transport::DEFAULT_SPIN_WINDOW),
        )
        .on_retry(report_retry());
    let max_frame = match &args.max_frame {
        // The forms PARVM_MAX_FRAME takes, checked by the same parser.
        Some(text) => Some(parvm_env_config::parse::frame_bytes("--max-frame", text)?),
        None => config.max_frame(),
    };
    if let Some(bytes) = max_frame {
        options = options.max_frame(bytes);
    }
    let timeout = match args.handshake_timeout {
        Some(timeout) => {
            let timeout = seconds("--handshake-timeout", timeout)?;
            if timeout.is_zero() {
                bail!("--handshake-timeout must be more than 0 seconds");
            }
            Some(timeout)
        }
        None => config.handshake_timeout(),
    };
    if let Some(timeout) = timeout {
        options = options.handshake_timeout(timeout);
    }
    let peer_timeout = match args.peer_timeout {
        Some(timeout) => Some(seconds("--peer-timeout", timeout)?),
        None => config.peer_timeout(),
    };
    if let Some(timeout) = peer_timeout {
        options = options.peer_timeout(timeout);
    }
    TcpTransport::connect_with(options)
        .with_context(|| format!("cannot join the spawner at `{addr}`"))
}

/// Serves command tasks until the spawner lets go, or until `leave` is requested: then it
/// says what it did and ends by the signal that asked.
fn serve(
    transport: TcpTransport,
    config: Config,
    capture_output: bool,
    leave: Option<LeaveRequest>,
) -> Result<()> {
    // Kept before the worker sends its standard error to the spawner: once the spawner
    // is gone, what goes there is lost, so how the worker ended is said here.
    let console = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .ok();
    let mut worker = Worker::new(Tasks::new(), config).capture_output(capture_output);
    if let Some(leave) = leave {
        worker = worker.leave_on(leave);
    }
    let ended = worker.serve_to_end(Box::new(transport));
    let mut left_on = None;
    let said = match ended {
        Ok(WorkerEnd::Dismissed) => return Ok(()),
        Ok(WorkerEnd::Left { signal, gave_back }) => {
            left_on = Some(signal);
            let name = parvm_vm::leave::signal_name(signal);
            match gave_back {
                Some(task) => format!(
                    "leaving on {name}: stopped task {task} (the spawner runs it again on another worker) and removed the task folders"
                ),
                None => format!("leaving on {name}: no task was running; removed the task folders"),
            }
        }
        Ok(WorkerEnd::SpawnerLost { reason }) => format!(
            "{reason} before it ended its run (it was killed, the network failed, or it gave this worker up for not answering within its peer timeout, as when this worker was stopped with Ctrl-Z); this worker leaves"
        ),
        Ok(_) => "the worker ended for a reason this parvm cannot name".to_owned(),
        Err(error) => format!("the worker failed: {:#}", anyhow::Error::new(error)),
    };
    match (console, capture_output) {
        (Some(mut console), true) => {
            let _ = console.write_all(format!("parvm worker: {said}\n").as_bytes());
            match left_on {
                Some(signal) => parvm_vm::leave::end_by_signal(signal),
                None => std::process::exit(1),
            }
        }
        _ => bail!("{said}"),
    }
}

/// Starts `--slots` single-slot workers as child processes and waits for them all. They
/// get the flags given here; the variables they inherit.
fn run_many(args: &Args, config: &Config) -> Result<()> {
    let addr = spawner(args, config)?;
    let me = std::env::current_exe().context("cannot find the parvm executable")?;
    let mut children = Vec::with_capacity(args.slots);
    for _ in 0..args.slots {
        let mut command = Command::new(&me);
        command.arg("worker").args(["--connect", addr]);
        if let Some(wait) = args.wait {
            command.args(["--wait", &wait.to_string()]);
        }
        if let Some(bytes) = &args.max_frame {
            command.args(["--max-frame", bytes]);
        }
        if let Some(timeout) = args.handshake_timeout {
            command.args(["--handshake-timeout", &timeout.to_string()]);
        }
        if let Some(timeout) = args.peer_timeout {
            command.args(["--peer-timeout", &timeout.to_string()]);
        }
        if let Some(path) = &args.secret_file {
            command.arg("--secret-file").arg(path);
        }
        children.push(
            command
                .spawn()
                .with_context(|| format!("cannot start `{}`", me.display()))?,
        );
    }
    let live = Arc::new(Mutex::new(
        children
            .iter()
            .map(std::process::Child::id)
            .collect::<Vec<u32>>(),
    ));
    let forwarded = forward_leave_signals(Arc::clone(&live))?;
    let mut failed = 0;
    for mut child in children {
        // Waited for without reaping first, so that its pid, which nothing else can take
        // while it is not reaped, leaves the signals' list before it can name another
        // process.
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = waitid(
                Id::Pid(nix::unistd::Pid::from_raw(pid)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            );
        }
        live.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|&pid| pid != child.id());
        if !child.wait().is_ok_and(|status| status.success()) {
            failed += 1;
        }
    }
    if let Some(signal) = forwarded.signal() {
        // The workers left as asked; this process ends as they did.
        parvm_vm::leave::end_by_signal(signal);
    }
    if failed > 0 {
        bail!("{failed} of {} workers failed", args.slots);
    }
    Ok(())
}

/// Passes each signal a worker leaves on to the single-slot workers still in `live`, so
/// that signalling this process alone (as `kill` or a service manager may) makes them
/// leave; one that reached them directly too counts once (see
/// [`LeaveRequest::on_signals`]). The request says whether one came.
fn forward_leave_signals(live: Arc<Mutex<Vec<u32>>>) -> Result<LeaveRequest> {
    let request = LeaveRequest::new();
    let caught: Vec<i32> = parvm_vm::leave::LEAVE_SIGNALS
        .into_iter()
        .filter(|&signal| !parvm_vm::leave::ignored_by_this_process(signal))
        .collect();
    let mut signals =
        Signals::new(&caught).context("cannot catch the signals to pass to the workers")?;
    let asked = request.clone();
    std::thread::Builder::new()
        .name("parvm-forward".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                asked.request(signal);
                let Ok(signal) = nix::sys::signal::Signal::try_from(signal) else {
                    continue;
                };
                let live = live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for &child in live.iter() {
                    if let Ok(pid) = i32::try_from(child) {
                        // A worker that ended but is not reaped yet is no error.
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                    }
                }
            }
        })
        .context("cannot start the thread that passes signals to the workers")?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parvm_vm::{Backend, CommandStatus, Message, Runtime, Spawn, TcpSpawner};

    use super::*;

    fn args(connect: &str, secret: &std::path::Path) -> Args {
        Args {
            connect: Some(connect.to_owned()),
            secret_file: Some(secret.to_owned()),
            wait: None,
            max_frame: None,
            handshake_timeout: None,
            peer_timeout: None,
            slots: 1,
        }
    }

    /// A configuration by hand, so the tests do not depend on the environment.
    fn config(dir: &std::path::Path) -> Config {
        Config::builder()
            .local_root(dir.join("local"))
            .mirrored_roots([dir])
            .hostname("cli-worker")
            .build()
            .unwrap()
    }

    #[test]
    fn settings_come_from_the_flags_else_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args("127.0.0.1:1", &dir.path().join("flag-secret"));
        let config = Config::builder()
            .local_root(dir.path())
            .mirrored_roots([dir.path()])
            .connect("node1:7070")
            .secret_file("/config/secret")
            .build()
            .unwrap();
        assert_eq!(spawner(&args, &config).unwrap(), "127.0.0.1:1");
        assert_eq!(
            secret_path(&args, &config).unwrap(),
            dir.path().join("flag-secret")
        );
        args.connect = None;
        args.secret_file = None;
        assert_eq!(spawner(&args, &config).unwrap(), "node1:7070");
        assert_eq!(
            secret_path(&args, &config).unwrap(),
            std::path::Path::new("/config/secret")
        );
        let error = spawner(&args, &self::config(dir.path())).unwrap_err();
        assert!(error.to_string().contains("PARVM_CONNECT"), "{error}");
    }

    #[test]
    fn serves_commands_and_refuses_function_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        let secret = Secret::load_or_create(&secret_file).unwrap();
        let config = Config::builder()
            .local_root(dir.path().join("local"))
            .mirrored_roots([dir.path()])
            .hostname("cli-worker")
            .build()
            .unwrap();
        let runtime =
            Runtime::builder(Tasks::new().register("f", |_: &_, (): ()| Ok::<_, String>(())))
                .config(config.clone())
                .backend(Backend::Tcp(
                    TcpSpawner::new()
                        .listen(([127, 0, 0, 1], 0).into())
                        .secret(secret),
                ))
                .start()
                .unwrap();
        let addr = runtime.tcp_addr().unwrap().to_string();
        let worker = {
            let args = args(&addr, &secret_file);
            std::thread::spawn(move || serve(connect(&args, &config).unwrap(), config, false, None))
        };
        runtime
            .wait_for_workers(1, Duration::from_secs(30))
            .unwrap();
        let vm = runtime.vm().local_folder(true).build().unwrap();
        let mut outcomes = Vec::new();
        for spawn in [
            Spawn::command("sh")
                .arg("-c")
                .arg("echo hi > out && exit 4"),
            Spawn::task("f", &()),
        ] {
            let ids = vm.spawn(spawn).unwrap();
            assert_eq!(ids.len(), 1);
            loop {
                match vm.recv_timeout(Duration::from_secs(30)).unwrap() {
                    Some(Message::TaskResult { outcome, .. }) => outcomes.push(outcome),
                    Some(Message::TaskExit { .. }) => break,
                    Some(_) => {}
                    None => panic!("no exit within 30 s"),
                }
            }
        }
        let status: CommandStatus = outcomes[0].as_ref().unwrap().decode().unwrap();
        assert_eq!(status.code, Some(4));
        let failure = outcomes[1].as_ref().unwrap_err();
        assert!(failure.message.contains("not registered"), "{failure}");
        drop(vm);
        runtime.finalize().unwrap();
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn a_missing_secret_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let error = connect(&args("127.0.0.1:1", &missing), &config(dir.path())).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains(&missing.display().to_string()), "{text}");
    }

    #[test]
    fn an_unreachable_spawner_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        Secret::load_or_create(&secret_file).unwrap();
        // Bind, then close: nobody listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let error = connect(&args(&addr, &secret_file), &config(dir.path())).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains(&addr), "{text}");
    }

    #[test]
    fn zero_slots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args("127.0.0.1:1", dir.path());
        args.slots = 0;
        assert!(run(&args).unwrap_err().to_string().contains("--slots"));
    }
}
