//! A worker for the integration tests of parvm-transport: echoes every message, and obeys
//! a few commands (`!pid`, `!host`, `!env:NAME`, `!exit:CODE`, `!sendto:RANK`, `!hang`,
//! `!exit-late:MS:CODE`: once its spawner is gone, exit with CODE after MS ms, as a worker
//! that stops its command first does).
//!
//! Started without worker variables and with `PARVM_ECHO_SPAWNER=N`, it is a spawner
//! instead: it launches N copies of itself, prints their pids on one line, and waits.
//!
//! When the file named by `PARVM_ECHO_FATE` exists as a worker starts, its content decides
//! the worker's fate before it joins: `die` exits with status 9, `hang` waits forever (to
//! test replacement workers that crash at once or never connect).

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use parvm_transport::local::{LocalOptions, LocalTransport};
use parvm_transport::{Event, Transport, Wait};

/// What `!exit-late` armed: how long to wait and the status, once the spawner is gone.
static EXIT_LATE: Mutex<Option<(u64, i32)>> = Mutex::new(None);

fn answer(worker: &dyn Transport, payload: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload).unwrap_or("");
    if let Some(args) = text.strip_prefix("!exit-late:") {
        let (ms, code) = args.split_once(':').unwrap_or(("0", "1"));
        let late = (ms.parse().unwrap_or(0), code.parse().unwrap_or(1));
        *EXIT_LATE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(late);
        Some(b"armed".to_vec())
    } else if text == "!pid" {
        Some(std::process::id().to_string().into_bytes())
    } else if text == "!host" {
        Some(worker.host().into_bytes())
    } else if let Some(name) = text.strip_prefix("!env:") {
        Some(
            std::env::var(name)
                .unwrap_or_else(|_| "<unset>".into())
                .into_bytes(),
        )
    } else if let Some(code) = text.strip_prefix("!exit:") {
        std::process::exit(code.parse().unwrap_or(1));
    } else if let Some(rank) = text.strip_prefix("!sendto:") {
        let result = worker.send(rank.parse().unwrap_or(u32::MAX), b"x");
        Some(match result {
            Ok(()) => b"sent".to_vec(),
            Err(err) => err.to_string().into_bytes(),
        })
    } else if text == "!hang" {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    } else {
        Some(payload.to_vec())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(fate) = std::env::var_os("PARVM_ECHO_FATE")
        && let Ok(fate) = std::fs::read_to_string(fate)
    {
        match fate.trim() {
            "die" => std::process::exit(9),
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
    }
    if let Some(worker) = parvm_transport::worker_from_env()? {
        loop {
            match worker.recv(Wait::Forever) {
                Ok(Some(Event::Message { from, payload })) => {
                    if let Some(reply) = answer(&*worker, &payload) {
                        worker.send(from, &reply)?;
                    }
                }
                Ok(Some(Event::PeerLost { .. })) | Err(_) => {
                    let late = *EXIT_LATE
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some((ms, code)) = late {
                        std::thread::sleep(Duration::from_millis(ms));
                        std::process::exit(code);
                    }
                    return Ok(());
                }
                Ok(_) => {}
            }
        }
    }
    let workers: usize = std::env::var("PARVM_ECHO_SPAWNER")?.parse()?;
    let vm = LocalTransport::launch(LocalOptions::new(workers))?;
    let pids: Vec<String> = vm
        .worker_pids()
        .iter()
        .map(|(_, pid)| pid.to_string())
        .collect();
    println!("{}", pids.join(" "));
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
