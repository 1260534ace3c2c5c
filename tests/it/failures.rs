//! Example 08 (`08-failures`): a worker that dies, and Ctrl-C, in a real sweep.
//!
//! The example's binary is the one `cargo test` builds next to this test's binary. Each run
//! gets its own local storage and its own process group, which a guard kills when a test
//! fails, so no worker or simulator outlives the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The example's binary: `target/<profile>/examples/08-failures`.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile.join("examples/08-failures");
    assert!(
        path.is_file(),
        "{} is missing; run `cargo test -p parvm`, which builds the examples",
        path.display()
    );
    path
}

/// A run of the example; dropping it kills its whole process group.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    local: tempfile::TempDir,
}

impl Run {
    fn start(workers: usize, seconds: &str) -> Run {
        let local = tempfile::tempdir().unwrap();
        // `env --default-signal=INT` undoes an ignored SIGINT inherited from whatever
        // started the tests, as a terminal's foreground job has it.
        let mut command = Command::new("env");
        command
            .arg("--default-signal=INT")
            .arg(example())
            .arg(seconds)
            .current_dir(local.path())
            .env("PARVM_WORKERS", workers.to_string())
            // The story these tests tell is a dead worker's slot staying gone; replacement
            // workers are tested in crates/vm (tests/it/replace.rs).
            .env("PARVM_REPLACE_WORKERS", "0")
            .env("PARALLEL_LOCAL_STORAGE", local.path())
            .env_remove("PARVM_TRANSPORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            output: Vec::new(),
            local,
        }
    }

    /// Reads output until a line contains `text`.
    fn wait_for_line(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output.iter().any(|line| line.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.output.push(line),
                Err(_) => panic!(
                    "no line with `{text}` within {timeout:?}: {:#?}",
                    self.output
                ),
            }
        }
    }

    /// Waits until `count` task folders exist in local storage.
    fn wait_for_folders(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while task_folders(self.local.path()).len() < count {
            assert!(
                Instant::now() < deadline,
                "fewer than {count} task folders within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, target: &str) {
        let status = Command::new("kill")
            .args(["-INT", "--", target])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT {target} failed");
    }

    /// Waits for the spawner to exit; returns its exit code and all of its output.
    fn finish(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit within {timeout:?}: {:#?}",
                self.output
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends when the last holder of the pipe (spawner or worker) exits.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.output.push(line);
        }
        (status.code(), self.output.join("\n"))
    }

    /// Whether any process of the run's process group is still alive.
    fn group_alive(&self) -> bool {
        let group = format!("-{}", self.child.id());
        Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Waits until the run's process group is empty.
    fn wait_for_no_process(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.group_alive() {
            assert!(
                Instant::now() < deadline,
                "processes of the example are still alive after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// The task folders in local storage (inside the per-user folder).
fn task_folders(local: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for user in std::fs::read_dir(local).into_iter().flatten().flatten() {
        if user.path().is_dir() {
            for entry in std::fs::read_dir(user.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn a_dead_worker_costs_one_case_and_no_folder() {
    let mut run = Run::start(2, "0.05");
    let (code, output) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("case 3: failed: the worker (rank"),
        "{output}"
    );
    assert!(
        output.contains("the process exited with status 70"),
        "{output}"
    );
    for (case, value) in [(0, "0"), (1, "0.5"), (2, "1"), (4, "2"), (7, "3.5")] {
        assert!(
            output.contains(&format!("case {case}: {value}\n")),
            "case {case}: {output}"
        );
    }
    assert!(output.contains("1 of 8 cases without a result"), "{output}");
    assert_eq!(task_folders(run.local.path()), Vec::<PathBuf>::new());
    run.wait_for_no_process(Duration::from_secs(10));
}

#[test]
fn the_last_worker_dying_ends_the_sweep_instead_of_hanging() {
    let mut run = Run::start(1, "0.05");
    let (code, output) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    for case in 4..8 {
        assert!(
            output.contains(&format!("case {case}: not run: no worker left")),
            "{output}"
        );
    }
    assert!(output.contains("5 of 8 cases without a result"), "{output}");
    assert_eq!(task_folders(run.local.path()), Vec::<PathBuf>::new());
}

#[test]
fn sigint_to_the_spawner_lets_the_running_cases_finish() {
    let mut run = Run::start(2, "4");
    run.wait_for_line("Ctrl-C stops the sweep", Duration::from_secs(30));
    run.wait_for_folders(2, Duration::from_secs(30));
    run.signal(&run.child.id().to_string());
    let (code, output) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(130), "{output}");
    assert!(output.contains("Ctrl-C: no new cases"), "{output}");
    assert!(output.contains("case 0: 0\n"), "{output}");
    assert!(output.contains("case 1: 0.5\n"), "{output}");
    for case in 2..8 {
        assert!(
            output.contains(&format!("case {case}: not run: stopped by Ctrl-C")),
            "{output}"
        );
    }
    assert_eq!(task_folders(run.local.path()), Vec::<PathBuf>::new());
    run.wait_for_no_process(Duration::from_secs(10));
}

#[test]
fn ctrl_c_in_a_terminal_stops_everything_at_once() {
    let mut run = Run::start(2, "30");
    run.wait_for_line("Ctrl-C stops the sweep", Duration::from_secs(30));
    run.wait_for_folders(2, Duration::from_secs(30));
    let started = Instant::now();
    // A terminal sends Ctrl-C to the whole foreground process group.
    run.signal(&format!("-{}", run.child.id()));
    let (code, output) = run.finish(Duration::from_secs(20));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 30 s cases were not stopped: {output}"
    );
    assert_eq!(code, Some(130), "{output}");
    assert!(output.contains("killed by signal SIGINT"), "{output}");
    assert!(output.contains("8 of 8 cases without a result"), "{output}");
    assert_eq!(task_folders(run.local.path()), Vec::<PathBuf>::new());
    run.wait_for_no_process(Duration::from_secs(10));
}
