//! Test support for parvm-vm: the workers of the integration tests run this program, and a
//! few tests run it as a spawner. Not meant for users.
//!
//! As a spawner, the first argument picks a scenario:
//! - `hang`: spawns a long task with a task folder on every worker, prints
//!   `READY <worker pids>` and waits to be killed;
//! - `print`: spawns the `print` task once and finalizes;
//! - `start-finalize`: starts and finalizes (for timing);
//! - `forward`: forwards `TESTFWD_API` (with `RuntimeBuilder::forward_env`, plus what
//!   `PARVM_FORWARD_ENV` lists), waits for one worker, and prints what a task and a command
//!   see of `TESTFWD_API` and `TESTFWD_LIST`.

mod tasks;

use std::time::Duration;

use parvm_vm::{Message, Runtime, Spawn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let mut builder = Runtime::builder(tasks::tasks());
    if scenario == "forward" {
        builder = builder.forward_env(["TESTFWD_API"]);
    }
    let runtime = builder.start()?;
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
