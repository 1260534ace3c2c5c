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
fn large_output_read_slowly_holds_the_cases_back_then_arrives_whole() {
    // Two cases of 77 MB each, printed while both run.
    const LINES: u64 = 1_000_000;
    const MAX_PEAK_KB: u64 = 100 * 1024;
    let sweep = Sweep::new();
    let dir = sweep.shared.join("fifos");
    std::fs::create_dir(&dir).unwrap();
    fifos(&dir, &["a", "b"]);
    let pad = "x".repeat(64);
    // `seq` runs in the background so its pid can be written down; each case stays until
    // the test has read every line, so `parvm run` is still there to have its peak
    // memory read.
    let script = format!(
        "seq -f '{{}}-%09.0f-{pad}' 1 {LINES} & echo $! > {dir}/{{}}.pid; wait; read go < {dir}/{{}}.go",
        dir = dir.display()
    );
    let mut child = sweep
        .command(&["--line-buffer", &script, ":::", "a", "b"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = GroupGuard(child.id());
    let line_len = 2 + 9 + 1 + pad.len() + 1;
    let total = LINES * line_len as u64;
    let pid = |name: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.pid")))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    super::run::eventually("both cases started", || {
        pid("a").is_some() && pid("b").is_some()
    });
    let seqs = [pid("a").unwrap(), pid("b").unwrap()];
    // Nothing of parvm run's stdout is read until both `seq`s stopped writing: they are
    // held back (bounded), or they wrote everything (parvm run would hold it).
    let deadline = std::time::Instant::now() + AT_ONCE;
    let (mut last, mut still_since) = ([0, 0], std::time::Instant::now());
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the cases neither stalled nor ended"
        );
        let now = seqs.map(|pid| written(pid).unwrap_or(total));
        if now.iter().all(|&n| n >= total) {
            break;
        }
        if now != last {
            (last, still_since) = (now, std::time::Instant::now());
        } else if still_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        last.iter().all(|&n| n < total / 4),
        "the cases wrote {last:?} of {total} B each while nobody read"
    );
    let peak = status_kb(child.id(), "VmHWM:");
    assert!(peak < MAX_PEAK_KB, "parvm run's peak was {peak} kB");
    // Now read it all: never a part of one case's line with another's, each in order.
    let mut stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let mut next = [1u64, 1u64];
    let mut line = Vec::new();
    for _ in 0..2 * LINES {
        line.clear();
        assert!(
            stdout.read_until(b'\n', &mut line).unwrap() > 0,
            "lines lost"
        );
        assert_eq!(line.len(), line_len, "{}", String::from_utf8_lossy(&line));
        let case = usize::from(line[0] == b'b');
        assert_eq!(
            &line[2..11],
            format!("{:09}", next[case]).as_bytes(),
            "out of order"
        );
        next[case] += 1;
    }
    let peak = status_kb(child.id(), "VmHWM:");
    assert!(peak < MAX_PEAK_KB, "parvm run's peak was {peak} kB");
    release(&dir, "a");
    release(&dir, "b");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "more output: {}",
        String::from_utf8_lossy(&rest)
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {stderr}");
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
