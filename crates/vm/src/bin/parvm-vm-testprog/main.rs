//! Test support for parvm-vm: the workers of the integration tests run this program, and a
//! few tests run it as a spawner. Not meant for users.
//!
//! As a spawner (over TCP it first prints `LISTEN <address>` and waits for one worker), the
//! first argument picks a scenario:
//! - `hang`: spawns a long task with a task folder on every worker, prints
//!   `READY <worker pids>` and waits to be killed;
//! - `print`: spawns the `print` task once and finalizes;
//! - `start-finalize`: starts and finalizes (for timing);
//! - `forward`: forwards `TESTFWD_API` (with `RuntimeBuilder::forward_env`, plus what
//!   `PARVM_FORWARD_ENV` lists), waits for one worker, and prints what a task and a command
//!   see of `TESTFWD_API` and `TESTFWD_LIST`.
//! - `command`: spawns `sh -c "$PARVM_TEST_SCRIPT"` with `PARVM_TEST_MARK` set to
//!   `$PARVM_TEST_TOKEN` on one worker, prints `READY <worker pids>` and waits to be killed;
//! - `flood <lines>`: prints `READY <worker pid>` on stderr, runs the `flood` task, and
//!   prints its own peak memory (`VmHWM`) on stderr before it finalizes;
//! - `returns <results> <count> <size> [cp]`: a task writes `count` files of `size` bytes
//!   in a persistent folder, a second task returns them into `<results>`; prints
//!   `RETURNED <bytes> <seconds>` and the spawner's peak memory `HWM <kB>`, then with `cp`
//!   `CP <seconds>` for `cp -a` of the same files into `<results>.cp`;
//! - `getenv <names>`: prints `task NAME=value` for each name, as a task on one worker
//!   sees it;
//! - `hand-config`: starts with a configuration built by hand (host `hand`, storage in
//!   the temp folder) instead of the environment's, and finalizes;
//! - `return`: spawns the same command, prints `READY` and returns from `main` at once
//!   (the runtime is dropped, not finalized by hand).
//!
//! As a worker, it exits at once with status 9 when its local storage root holds a file
//! named `parvm-test-die-at-start` (a crash loop for the replacement tests).

mod tasks;

use std::time::Duration;

use std::path::PathBuf;
use std::time::Instant;

use parvm_vm::{ExitStatus, Message, Runtime, Spawn, Value, Vm};

/// A worker whose local storage root holds this file exits at once with status 9, before
/// it joins: a crash loop for the replacement tests.
const DIE_AT_START: &str = "parvm-test-die-at-start";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if parvm_transport::started_as_worker()
        && let Some(root) = std::env::var_os("PARALLEL_LOCAL_STORAGE")
        && std::path::Path::new(&root).join(DIE_AT_START).exists()
    {
        std::process::exit(9);
    }
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let mut builder = Runtime::builder(tasks::tasks());
    if scenario == "forward" {
        builder = builder.forward_env(["TESTFWD_API"]);
    }
    if scenario == "hand-config" {
        let temp = std::env::temp_dir();
        let config = parvm_vm::Config::builder()
            .local_root(&temp)
            .mirrored_roots([&temp])
            .hostname("hand")
            .build()?;
        builder = builder.config(config);
    }
    let runtime = builder.start()?;
    if let Some(addr) = runtime.tcp_addr() {
        // A TCP spawner: the test starts one worker.
        println!("LISTEN {addr}");
        runtime.wait_for_workers(1, Duration::from_secs(30))?;
    }
    match scenario.as_str() {
        "forward" => {
            runtime.wait_for_workers(1, Duration::from_secs(30))?;
            let vm = runtime.vm().build()?;
            for name in ["TESTFWD_API", "TESTFWD_LIST"] {
                vm.spawn(Spawn::task("getenv", &name.to_string()))?;
                let mut value = None;
                loop {
                    match vm.recv()? {
                        Message::TaskResult { outcome, .. } => {
                            value = outcome?.decode::<Option<String>>()?;
                        }
                        Message::TaskExit { .. } => break,
                        _ => {}
                    }
                }
                println!("task {name}={}", value.as_deref().unwrap_or("<unset>"));
            }
            vm.spawn(
                Spawn::command("sh")
                    .arg("-c")
                    .arg("echo \"command TESTFWD_API=$TESTFWD_API TESTFWD_LIST=$TESTFWD_LIST\""),
            )?;
            loop {
                if let Message::TaskExit { .. } = vm.recv()? {
                    break;
                }
            }
        }
        "getenv" => {
            let vm = runtime.vm().build()?;
            for name in std::env::args().skip(2) {
                vm.spawn(Spawn::task("getenv", &name))?;
                let mut value = None;
                loop {
                    match vm.recv()? {
                        Message::TaskResult { outcome, .. } => {
                            value = outcome?.decode::<Option<String>>()?;
                        }
                        Message::TaskExit { .. } => break,
                        _ => {}
                    }
                }
                println!("task {name}={}", value.as_deref().unwrap_or("<unset>"));
            }
        }
        "hang" => {
            let vm = runtime.vm().local_folder(true).build()?;
            let ids = vm.spawn(Spawn::task("pid", &()).fill())?;
            let mut pids = Vec::new();
            let mut exits = 0;
            while exits < ids.len() {
                match vm.recv()? {
                    Message::TaskResult {
                        outcome: Ok(value), ..
                    } => pids.push(value.decode::<u32>()?),
                    Message::TaskExit { .. } => exits += 1,
                    _ => {}
                }
            }
            vm.spawn(Spawn::task("sleep", &60_000u64).fill())?;
            let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
            println!("READY {}", pids.join(" "));
            std::thread::sleep(Duration::from_secs(120));
        }
        "command" | "return" => {
            // With a task folder, so the tests see it removed however the command ends.
            let vm = runtime.vm().local_folder(true).build()?;
            let mut pids = Vec::new();
            if scenario == "command" {
                let ids = vm.spawn(Spawn::task("pid", &()).fill())?;
                let mut exits = 0;
                while exits < ids.len() {
                    match vm.recv()? {
                        Message::TaskResult {
                            outcome: Ok(value), ..
                        } => pids.push(value.decode::<u32>()?.to_string()),
                        Message::TaskExit { .. } => exits += 1,
                        _ => {}
                    }
                }
            }
            let script = std::env::var("PARVM_TEST_SCRIPT")?;
            let token = std::env::var("PARVM_TEST_TOKEN")?;
            vm.spawn(
                Spawn::command("sh")
                    .arg("-c")
                    .arg(script)
                    .env("PARVM_TEST_MARK", token),
            )?;
            println!("READY {}", pids.join(" "));
            if scenario == "return" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(120));
        }
        "flood" => {
            let lines: u64 = std::env::args().nth(2).unwrap_or_default().parse()?;
            let vm = runtime.vm().build()?;
            let ids = vm.spawn(Spawn::task("pid", &()))?;
            let mut pid = 0;
            let mut exits = 0;
            while exits < ids.len() {
                match vm.recv()? {
                    Message::TaskResult {
                        outcome: Ok(value), ..
                    } => pid = value.decode::<u32>()?,
                    Message::TaskExit { .. } => exits += 1,
                    _ => {}
                }
            }
            eprintln!("READY {pid}");
            vm.spawn(Spawn::task("flood", &lines))?;
            loop {
                if let Message::TaskExit { status, .. } = vm.recv()? {
                    eprintln!("EXIT {status:?}");
                    break;
                }
            }
            let status = std::fs::read_to_string("/proc/self/status")?;
            let hwm = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .unwrap_or("?");
            eprintln!("HWM {}", hwm.trim());
        }
        "returns" => returns(&runtime)?,
        "print" => {
            let vm = runtime.vm().build()?;
            vm.spawn(Spawn::task("print", &"hello".to_string()))?;
            loop {
                if let Message::TaskExit { .. } = vm.recv()? {
                    break;
                }
            }
        }
        _ => {}
    }
    runtime.finalize()?;
    Ok(())
}

/// The `returns` scenario (see the crate docs).
fn returns(runtime: &Runtime) -> Result<(), Box<dyn std::error::Error>> {
    let arg = |n: usize| std::env::args().nth(n).unwrap_or_default();
    let results = PathBuf::from(arg(2));
    let count: u64 = arg(3).parse()?;
    let size: u64 = arg(4).parse()?;
    let vm = runtime.vm().persistent(true).build()?;
    let files: Vec<tasks::ReturnFile> = (0..count)
        .map(|i| (format!("out/f{i:05}.dat"), size, 0o644, 1_600_000_000))
        .collect();
    run(&vm, Spawn::task("write_files", &files))?;
    let dir: Option<String> = run(&vm, Spawn::task("dir", &()))?
        .0
        .ok_or("no result")?
        .decode()?;
    let start = Instant::now();
    let (_, returned) = run(
        &vm,
        Spawn::task("noop", &())
            .returning("out")
            .results_dir(&results),
    )?;
    let took = start.elapsed().as_secs_f64();
    let bytes = returned.ok_or("no files returned")?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .unwrap_or("?")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_owned();
    println!("RETURNED {bytes} {took:.6}");
    println!("HWM {hwm}");
    if arg(5) == "cp" {
        let from = PathBuf::from(dir.ok_or("the task has no folder")?).join("out");
        let start = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(results.with_extension("cp"))
            .status()?;
        if !status.success() {
            return Err(format!("cp -a failed: {status}").into());
        }
        println!("CP {:.6}", start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Runs one spawn to its exit: its value and the bytes it returned; an error when it failed.
fn run(vm: &Vm, spawn: Spawn) -> Result<(Option<Value>, Option<u64>), Box<dyn std::error::Error>> {
    vm.spawn(spawn)?;
    let mut value = None;
    let mut returned = None;
    loop {
        match vm.recv()? {
            Message::TaskResult { outcome, .. } => value = Some(outcome?),
            Message::Returned { bytes, .. } => returned = Some(bytes),
            Message::TaskExit { status, .. } => {
                if let ExitStatus::Failed { reason } = status {
                    return Err(reason.into());
                }
                return Ok((value, returned));
            }
            _ => {}
        }
    }
}
