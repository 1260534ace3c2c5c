//! `parvm worker`: a generic TCP worker that runs external-command tasks.
//!
//! It connects to a spawner listening on TCP (`PARVM_TRANSPORT=tcp`), proves it knows the
//! shared secret, and serves tasks spawned with `Spawn::command` until the spawner
//! finalizes or goes away. Function tasks need the code of the user's program: run that
//! program itself with `PARVM_CONNECT=host:port` to get a worker that serves them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parvm_env_config::Config;
use parvm_transport::tcp::{
    CONNECT_VAR, CONNECT_WAIT_VAR, ConnectOptions, HANDSHAKE_TIMEOUT_VAR, MAX_FRAME_VAR, Secret,
    TcpTransport,
};
use parvm_vm::{Tasks, Worker};

/// How to reach the spawner.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The spawner's address, `host:port`, as the spawner prints it.
    #[arg(long, env = CONNECT_VAR, value_name = "HOST:PORT")]
    pub connect: String,
    /// The secret file shared with the spawner [default: PARVM_SECRET_FILE, else
    /// ~/.parvm/secret]; it must be readable by you alone (chmod 600).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Keep trying to join for this many seconds, with growing pauses: for a spawner that
    /// starts later, is busy, or refused a handshake.
    #[arg(long, env = CONNECT_WAIT_VAR, default_value_t = 0.0, value_name = "SECONDS")]
    pub wait: f64,
    /// The largest message accepted from the spawner, in bytes (suffixes K, M, G)
    /// [default: 1G].
    #[arg(long, env = MAX_FRAME_VAR, value_name = "BYTES")]
    pub max_frame: Option<String>,
    /// How long the spawner has to answer the handshake, in seconds [default: 5].
    #[arg(long, env = HANDSHAKE_TIMEOUT_VAR, value_name = "SECONDS")]
    pub handshake_timeout: Option<f64>,
    /// How many worker processes to start (one task slot each).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub slots: usize,
}

/// Runs `parvm worker`.
pub fn run(args: &Args) -> Result<()> {
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    if args.slots > 1 {
        return run_many(args);
    }
    let config = Config::from_env()?;
    let transport = connect(args)?;
    eprintln!(
        "parvm worker: joined the spawner at {} as rank {} on host `{}`",
        args.connect,
        parvm_transport::Transport::rank(&transport),
        parvm_transport::Transport::host(&transport),
    );
    serve(transport, config, true)
}

/// The secret file of `args`, else the default one.
fn secret_path(args: &Args) -> Result<PathBuf> {
    match &args.secret_file {
        Some(path) => Ok(path.clone()),
        None => Ok(Secret::default_path()?),
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
            eprintln!(
                "parvm worker: {text}; trying again for up to {:.0} s",
                left.as_secs_f64().ceil()
            );
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
/// be reached or the handshake fails (the transport's retry, with growing pauses).
fn connect(args: &Args) -> Result<TcpTransport> {
    let path = secret_path(args)?;
    let secret = Secret::load(&path)
        .with_context(|| format!("cannot use the secret file `{}`", path.display()))?;
    let mut options = ConnectOptions::new(args.connect.clone(), secret)
        .host(parvm_transport::this_host())
        .wait(seconds("--wait", args.wait)?)
        .on_retry(report_retry());
    if let Some(text) = &args.max_frame {
        options = options.max_frame(
            parvm_transport::tcp::parse_max_frame(text)
                .map_err(|reason| anyhow::anyhow!("--max-frame `{text}` is invalid: {reason}"))?,
        );
    }
    if let Some(timeout) = args.handshake_timeout {
        let timeout = seconds("--handshake-timeout", timeout)?;
        if timeout.is_zero() {
            bail!("--handshake-timeout must be more than 0 seconds");
        }
        options = options.handshake_timeout(timeout);
    }
    TcpTransport::connect_with(options)
        .with_context(|| format!("cannot join the spawner at `{}`", args.connect))
}

/// Serves command tasks until the spawner lets go.
fn serve(transport: TcpTransport, config: Config, capture_output: bool) -> Result<()> {
    Worker::new(Tasks::new(), config)
        .capture_output(capture_output)
        .serve(Box::new(transport))
        .context("the worker failed")
}

/// Starts `--slots` single-slot workers as child processes and waits for them all.
fn run_many(args: &Args) -> Result<()> {
    let me = std::env::current_exe().context("cannot find the parvm executable")?;
    let mut children = Vec::with_capacity(args.slots);
    for _ in 0..args.slots {
        let mut command = Command::new(&me);
        command
            .arg("worker")
            .args(["--connect", &args.connect])
            .args(["--wait", &args.wait.to_string()]);
        if let Some(bytes) = &args.max_frame {
            command.args(["--max-frame", bytes]);
        }
        if let Some(timeout) = args.handshake_timeout {
            command.args(["--handshake-timeout", &timeout.to_string()]);
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
    let mut failed = 0;
    for mut child in children {
        if !child.wait().is_ok_and(|status| status.success()) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} workers failed", args.slots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parvm_vm::{CommandStatus, Message, Runtime, Spawn, TransportKind};

    use super::*;

    fn args(connect: &str, secret: &std::path::Path) -> Args {
        Args {
            connect: connect.to_owned(),
            secret_file: Some(secret.to_owned()),
            wait: 0.0,
            max_frame: None,
            handshake_timeout: None,
            slots: 1,
        }
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
                .transport(TransportKind::Tcp)
                .tcp_listen(([127, 0, 0, 1], 0).into())
                .tcp_secret(secret)
                .start()
                .unwrap();
        let addr = runtime.tcp_addr().unwrap().to_string();
        let worker = {
            let args = args(&addr, &secret_file);
            std::thread::spawn(move || serve(connect(&args).unwrap(), config, false))
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
        let error = connect(&args("127.0.0.1:1", &missing)).unwrap_err();
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
        let error = connect(&args(&addr, &secret_file)).unwrap_err();
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
