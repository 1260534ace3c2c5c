//! `parvm worker`: a generic TCP worker that runs external-command tasks.
//!
//! It connects to a spawner listening on TCP (`PARVM_TRANSPORT=tcp`), proves it knows the
//! shared secret, and serves tasks spawned with `Spawn::command` until the spawner
//! finalizes or goes away. Function tasks need the code of the user's program: run that
//! program itself with `PARVM_CONNECT=host:port` to get a worker that serves them.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use parvm_env_config::Config;
use parvm_transport::tcp::{CONNECT_VAR, Secret, TcpTransport};
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
    /// Keep trying to connect for this many seconds, for a spawner that starts later.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub wait: u64,
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

/// Connects and authenticates, retrying for `--wait` seconds while the spawner cannot be
/// reached (a wrong secret fails at once).
fn connect(args: &Args) -> Result<TcpTransport> {
    let path = secret_path(args)?;
    let secret = Secret::load(&path)
        .with_context(|| format!("cannot use the secret file `{}`", path.display()))?;
    let host = parvm_transport::this_host();
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        match TcpTransport::connect(&args.connect, &secret, &host) {
            Ok(transport) => return Ok(transport),
            Err(error @ parvm_transport::Error::Connect { .. }) if Instant::now() < deadline => {
                tracing::debug!(%error, "retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot join the spawner at `{}`", args.connect));
            }
        }
    }
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
            wait: 0,
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
