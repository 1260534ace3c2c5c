//! Task output travels with backpressure: a spawner whose stdout nobody reads does not
//! grow with what its tasks print, and once read, every line arrives, in order.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::tasks::{FLOOD_LINE, flood_line};

/// 600 MB of output.
const LINES: u64 = 600_000;

/// The spawner may grow to this, whatever its tasks print.
const MAX_RSS_KB: u64 = 100 * 1024;

/// Kills and reaps the spawner when dropped (its workers follow it).
struct SpawnerGuard(Child);

impl Drop for SpawnerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Bytes process `pid` has written so far (`wchar` of `/proc/<pid>/io`).
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

#[test]
fn unread_spawner_output_stays_bounded_and_arrives_in_order() {
    let local = tempfile::tempdir().unwrap();
    let mut spawner = SpawnerGuard(
        Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .args(["flood", &LINES.to_string()])
            .env("PARALLEL_LOCAL_STORAGE", local.path())
            .env("PARALLEL_MIRRORED_STORAGE", local.path())
            .env("PARVM_WORKERS", "1")
            .env("PARVM_HOSTNAME", "delta")
            .env_remove("PARVM_TRANSPORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = spawner.0.id();
    // Stderr is read all along, line by line, on a thread.
    let (lines_tx, lines_rx) = mpsc::channel();
    let stderr = spawner.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let worker: u32 = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx.recv_timeout(left).expect("READY on stderr");
        if let Some(pid) = line.strip_prefix("READY ") {
            break pid.parse().unwrap();
        }
    };

    // Stdout is not read until the worker has stopped writing: it is blocked (bounded
    // output), or it has written everything (unbounded: the spawner holds it).
    let total = LINES * FLOOD_LINE as u64;
    let mut peak = 0;
    let mut last = 0;
    let mut still_since = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "the worker neither stalled nor finished"
        );
        peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        assert!(
            peak < MAX_RSS_KB,
            "the spawner grew to {peak} kB while its stdout was not read"
        );
        let now = written(worker).unwrap_or(0);
        if now >= total {
            break;
        }
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        last < total,
        "the worker wrote everything while stdout was not read"
    );

    // Now read it all: every line, in order, each with its task's prefix.
    let fillers: Vec<Vec<u8>> = (0..26).map(|seq| flood_line(seq)[11..].to_vec()).collect();
    let mut stdout = BufReader::with_capacity(1 << 20, spawner.0.stdout.take().unwrap());
    let mut line = Vec::new();
    let mut seq = 0u64;
    loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        let body = line
            .strip_prefix(b"[1:2@delta] ")
            .unwrap_or_else(|| panic!("line {seq} has no task prefix"));
        let expected = format!("{seq:010} ");
        assert_eq!(&body[..11], expected.as_bytes(), "line {seq} out of order");
        assert!(
            body[11..] == fillers[(seq % 26) as usize][..],
            "line {seq} is damaged"
        );
        seq += 1;
    }
    assert_eq!(seq, LINES, "lines lost");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let status = spawner.0.wait().unwrap();
    reader.join().unwrap();
    let report: Vec<String> = lines_rx.try_iter().collect();
    assert!(status.success(), "{status}: {report:?}");
    let hwm: u64 = report
        .iter()
        .find_map(|line| line.strip_prefix("HWM "))
        .and_then(|kb| kb.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no HWM line: {report:?}"));
    assert!(hwm < MAX_RSS_KB, "the spawner's peak was {hwm} kB");
}
