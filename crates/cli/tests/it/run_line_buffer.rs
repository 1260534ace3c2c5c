//! `parvm run --line-buffer` end to end: lines of cases running at once interleave as
//! they come, whole, with `--tag` prefixes, and memory stays bounded. The cases wait on
//! fifos the test writes only once it has read their lines from `parvm run`, so the
//! interleaving is forced, not timed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use super::run::{GroupGuard, Sweep};

/// How long the test waits for a line before it counts as hung.
const AT_ONCE: Duration = Duration::from_secs(60);

/// Makes a fifo `<dir>/<name>.go` per name.
fn fifos(dir: &Path, names: &[&str]) {
    for name in names {
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(format!("{name}.go")))
            .status()
            .unwrap();
        assert!(made.success());
    }
}

/// Lets the case waiting on `<dir>/<name>.go` go on.
fn release(dir: &Path, name: &str) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(format!("{name}.go")))
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
}

/// `parvm run` with `flags`, its stdout read line by line on a thread.
struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<Vec<u8>>,
    _guard: GroupGuard,
}

impl Running {
    fn start(sweep: &Sweep, args: &[&str]) -> Running {
        let mut child = sweep
            .command(args)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let guard = GroupGuard(child.id());
        let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.split(b'\n').map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            _guard: guard,
        }
    }

    fn line(&self) -> String {
        let line = self
            .lines
            .recv_timeout(AT_ONCE)
            .expect("a line from parvm run in time");
        String::from_utf8(line).unwrap()
    }

    /// Waits for the end; asserts success; returns what stderr said.
    fn finish(mut self) -> String {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {stderr}");
        assert!(self.lines.recv().is_err(), "more output after the end");
        stderr
    }
}

#[test]
fn lines_of_two_running_cases_interleave_whole_with_their_tags() {
    for keep_order in [false, true] {
        let sweep = Sweep::new();
        let dir = sweep.shared.join("fifos");
        std::fs::create_dir(&dir).unwrap();
        fifos(&dir, &["a b", "c"]);
        let script = format!(
            "echo {{}}-one; echo {{}}-err >&2; read go < {}/{{}}.go; echo {{}}-two; printf {{}}-tail",
            dir.display()
        );
        let mut args = vec!["--line-buffer", "--tag"];
        if keep_order {
            args.push("-k");
        }
        args.extend([script.as_str(), ":::", "a b", "c"]);
        let running = Running::start(&sweep, &args);
        // Both cases wait for the test: their first lines came while both run.
        let mut first = [running.line(), running.line()];
        first.sort();
        assert_eq!(first, ["a b\ta b-one", "c\tc-one"]);
        // The second case first: with -k too, lines print as they come.
        release(&dir, "c");
        assert_eq!(running.line(), "c\tc-two");
        // A last line without a newline is printed whole at the case's end, with one.
        assert_eq!(running.line(), "c\tc-tail");
        release(&dir, "a b");
        assert_eq!(running.line(), "a b\ta b-two");
        assert_eq!(running.line(), "a b\ta b-tail");
        let stderr = running.finish();
        let mut errs: Vec<&str> = stderr.lines().collect();
        errs.sort_unstable();
        assert_eq!(errs, ["a b\ta b-err", "c\tc-err"], "{stderr}");
        sweep.assert_no_task_folder_left();
    }
}

#[test]
fn without_a_tag_lines_come_as_written_and_results_keep_whole_files() {
    let sweep = Sweep::new();
    let dir = sweep.shared.join("fifos");
    std::fs::create_dir(&dir).unwrap();
    fifos(&dir, &["a", "b"]);
    let script = format!(
        "echo {{}} one; read go < {}/{{}}.go; printf '{{}} two\\n{{}} end'",
        dir.display()
    );
    let running = Running::start(
        &sweep,
        &["--lb", "--results", "out", &script, ":::", "a", "b"],
    );
    let mut first = [running.line(), running.line()];
    first.sort();
    assert_eq!(first, ["a one", "b one"]);
    release(&dir, "a");
    assert_eq!(running.line(), "a two");
    assert_eq!(running.line(), "a end");
    release(&dir, "b");
    assert_eq!(running.line(), "b two");
    assert_eq!(running.line(), "b end");
    running.finish();
    // The case's files are its exact bytes, the last line without a newline.
    for (case, name) in [(1, "a"), (2, "b")] {
        let case = sweep.shared.join("out").join(case.to_string());
        assert_eq!(
            std::fs::read_to_string(case.join("stdout")).unwrap(),
            format!("{name} one\n{name} two\n{name} end")
        );
        assert_eq!(std::fs::read_to_string(case.join("exit")).unwrap(), "0\n");
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn large_output_of_cases_at_once_arrives_whole_in_bounded_memory() {
    // Two cases of 80 MB each, printed while both run; `parvm run` may not hold them.
    const LINES: u64 = 1_000_000;
    const MAX_PEAK_KB: u64 = 100 * 1024;
    let sweep = Sweep::new();
    let dir = sweep.shared.join("fifos");
    std::fs::create_dir(&dir).unwrap();
    fifos(&dir, &["a", "b"]);
    let pad = "x".repeat(64);
    // Each case stays until the test has read every line, so `parvm run` is still there
    // to have its peak memory read.
    let script = format!(
        "seq -f '{{}}-%09.0f-{pad}' 1 {LINES}; read go < {}/{{}}.go",
        dir.display()
    );
    let running = Running::start(&sweep, &["--line-buffer", &script, ":::", "a", "b"]);
    let mut next = [1u64, 1u64];
    let expected_len = 2 + 9 + 1 + pad.len();
    for _ in 0..2 * LINES {
        let line = running
            .lines
            .recv_timeout(AT_ONCE)
            .expect("every line in time");
        // Never a part of one case's line with another's.
        assert_eq!(
            line.len(),
            expected_len,
            "{}",
            String::from_utf8_lossy(&line)
        );
        let case = usize::from(line[0] == b'b');
        assert_eq!(
            &line[2..11],
            format!("{:09}", next[case]).as_bytes(),
            "out of order"
        );
        next[case] += 1;
    }
    let peak = status_kb(running.child.id(), "VmHWM:");
    assert!(peak < MAX_PEAK_KB, "parvm run's peak was {peak} kB");
    release(&dir, "a");
    release(&dir, "b");
    running.finish();
}

#[test]
fn with_json_only_records_are_printed() {
    let sweep = Sweep::new();
    let out = sweep.ok(&["--json", "--line-buffer", "echo", "hidden", ":::", "a"]);
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line per case"))
        .collect();
    assert_eq!(records.len(), 1, "{out}");
    assert_eq!(records[0]["outcome"], "success");
}
