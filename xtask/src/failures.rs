//! Runs `cargo test` so that why a test failed is the last thing printed.
//!
//! A failed test's panic message is printed in the middle of a long log, followed by its
//! backtrace (with `RUST_BACKTRACE` set), the workers' output and the rest of the run; a
//! log kept as its head and tail (as CI keeps it) then names the failed test but not why.
//! So the output passes through as it comes, and when the run fails, each failed test's
//! panic (its place and message, without the backtrace) is repeated at the end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The most lines repeated per failed test.
const MOST_LINES: usize = 24;

/// How long the output is read after `cargo test` ended: what is still in the pipe comes
/// at once, but a process a test left behind may hold the pipe open for long.
const DRAIN: Duration = Duration::from_secs(5);

/// Runs `command` (a `cargo test`), its standard output passed through line by line; on
/// failure, repeats what each failed test said at the end.
pub fn exec_tests(command: &mut Command) -> Result<()> {
    let description = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {description}"))?;
    let piped = child
        .stdout
        .take()
        .context("the test run's output is not piped")?;
    let (lines, seen) = mpsc::channel();
    // Not joined: it may wait on a pipe that a left-behind process holds open.
    std::thread::spawn(move || {
        for line in BufReader::new(piped).split(b'\n') {
            let Ok(line) = line else { break };
            // Locked per line, so it never holds standard output while it waits.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            drop(out);
            if lines
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for {description}"))?;
    let mut output = Vec::new();
    let deadline = Instant::now() + DRAIN;
    loop {
        match seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => output.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                eprintln!(
                    "xtask: a process the tests started still holds their output open {DRAIN:?} after they ended; going on without the rest of it"
                );
                break;
            }
        }
    }
    if !status.success() {
        let reports = reports(&output);
        if !reports.is_empty() {
            println!("\n== why the failed tests failed (repeated from above) ==");
            for report in reports {
                println!("{report}");
            }
        }
        bail!("{description} failed ({status})");
    }
    Ok(())
}

/// What each failed test of a `cargo test` output said: its name, then from its panic's
/// first line to the start of its backtrace (or its whole captured output when it did not
/// panic), at most [`MOST_LINES`] lines.
fn reports(lines: &[String]) -> Vec<String> {
    let mut reports = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let Some(name) = lines[at]
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        else {
            at += 1;
            continue;
        };
        let start = at + 1;
        let end = lines[start..]
            .iter()
            .position(|line| {
                line.starts_with("---- ") || line == "failures:" || line.starts_with("test result:")
            })
            .map_or(lines.len(), |n| start + n);
        let block = &lines[start..end];
        let from = block
            .iter()
            .position(|line| line.contains("' panicked at ") || line.contains(") panicked at "))
            .unwrap_or(0);
        let said: Vec<&str> = block[from..]
            .iter()
            .take_while(|line| !line.starts_with("stack backtrace:") && !line.starts_with("note: "))
            .map(String::as_str)
            .filter(|line| !line.is_empty())
            .take(MOST_LINES)
            .collect();
        reports.push(format!("---- {name}\n{}", said.join("\n")));
        at = end;
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_failed_test_is_named_with_its_panic_and_without_its_backtrace() {
        let output = lines(
            "running 2 tests\n\
             test a ... FAILED\n\
             test b ... FAILED\n\
             \n\
             failures:\n\
             \n\
             ---- ship::a stdout ----\n\
             printed by the test\n\
             \n\
             thread 'ship::a' (14957) panicked at crates/vm/tests/it/ship.rs:356:9:\n\
             assertion `left == right` failed: persistent: false\n  left: 2\n right: 1\n\
             stack backtrace:\n   0: __rustc::rust_begin_unwind\n\
             note: Some details are omitted\n\
             \n\
             ---- b stdout ----\n\
             no panic, only this\n\
             \n\
             failures:\n    ship::a\n    b\n\
             \n\
             test result: FAILED. 0 passed; 2 failed",
        );
        assert_eq!(
            reports(&output),
            [
                "---- ship::a\nthread 'ship::a' (14957) panicked at crates/vm/tests/it/ship.rs:356:9:\nassertion `left == right` failed: persistent: false\n  left: 2\n right: 1",
                "---- b\nno panic, only this",
            ]
        );
    }

    #[test]
    fn a_run_without_failures_has_nothing_to_repeat() {
        let output = lines("running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed");
        assert!(reports(&output).is_empty());
    }
}
