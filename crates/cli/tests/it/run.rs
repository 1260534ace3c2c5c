//! `parvm run` end to end: the real binary, its own local workers, temp storage.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A TCP spawner started by [`Sweep::start_tcp`].
pub(crate) struct TcpRun {
    /// The `parvm run` process.
    pub(crate) spawner: ChildGuard,
    /// The lines of its stderr after the address, as they come.
    pub(crate) said: std::sync::mpsc::Receiver<String>,
    /// The address workers join.
    pub(crate) addr: String,
}

impl TcpRun {
    /// Ends the run: creates `second_try` (so the cases' next tries end at once), a second
    /// worker joins on host `second` and runs what the first worker left, and the spawner
    /// ends with every one of `cases` done once (`done CASE`, in any order). Each loss the
    /// spawner reported contains every one of `loss`.
    pub(crate) fn finish_with_a_second_worker(
        self,
        sweep: &Sweep,
        second_try: &Path,
        cases: &[&str],
        loss: &[&str],
    ) {
        let TcpRun {
            mut spawner,
            said,
            addr,
        } = self;
        std::fs::write(second_try, "").unwrap();
        let _second = ChildGuard(
            sweep
                .worker(&addr)
                .env("PARVM_HOSTNAME", "second")
                .spawn()
                .unwrap(),
        );
        let mut out = String::new();
        std::io::Read::read_to_string(&mut spawner.0.stdout.take().unwrap(), &mut out).unwrap();
        let status = spawner.0.wait().unwrap();
        let err: Vec<String> = said.try_iter().collect();
        assert!(status.success(), "{status:?}: {err:?}");
        let mut done = lines(&out);
        done.sort_unstable();
        let wanted: Vec<String> = cases.iter().map(|case| format!("done {case}")).collect();
        assert_eq!(done, wanted, "{err:?}");
        let lost: Vec<&String> = err.iter().filter(|l| l.contains("lost peer")).collect();
        assert_eq!(lost.len(), cases.len(), "{err:?}");
        for line in lost {
            assert!(loss.iter().all(|part| line.contains(part)), "{err:?}");
        }
    }
}

/// Temp shared and local storage, and a working folder inside the shared one.
pub(crate) struct Sweep {
    _dir: tempfile::TempDir,
    pub(crate) shared: PathBuf,
    pub(crate) local: PathBuf,
}

impl Sweep {
    pub(crate) fn new() -> Sweep {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let shared = base.join("shared");
        let local = base.join("local");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        Sweep {
            _dir: dir,
            shared,
            local,
        }
    }

    /// `parvm run ARGS` as a TCP spawner on a loopback port the kernel picks (it prints
    /// the address: [`spawner_address`]), its workers joining with the secret file
    /// `secret.file` of the shared folder ([`Sweep::worker`]).
    pub(crate) fn tcp_command(&self, args: &[&str]) -> Command {
        let mut command = self.command(&[&["--transport", "tcp"][..], args].concat());
        command
            .env("PARVM_LISTEN", "127.0.0.1:0")
            .env("PARVM_SECRET_FILE", self.secret_file())
            .env_remove("PARVM_CONNECT");
        command
    }

    /// `parvm run ARGS` started as a TCP spawner ([`Sweep::tcp_command`]), its stdout as
    /// `stdout` says, its stderr read line by line; returned once it printed its address.
    pub(crate) fn start_tcp(&self, args: &[&str], stdout: Stdio) -> TcpRun {
        let mut command = self.tcp_command(args);
        command.stdout(stdout);
        Sweep::start_tcp_command(command)
    }

    /// [`Sweep::start_tcp`] of a command made with [`Sweep::tcp_command`] (and set as a test
    /// needs it); its stderr is piped here.
    pub(crate) fn start_tcp_command(mut command: Command) -> TcpRun {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let said = stderr_lines(&mut child);
        let spawner = ChildGuard(child);
        let addr = spawner_address(&said);
        TcpRun {
            spawner,
            said,
            addr,
        }
    }

    /// `parvm worker` joining the spawner at `addr` ([`Sweep::tcp_command`]) on this
    /// sweep's folders, its output thrown away.
    pub(crate) fn worker(&self, addr: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parvm"));
        command
            .args(["worker", "--connect", addr, "--secret-file"])
            .arg(self.secret_file())
            .env("PARALLEL_LOCAL_STORAGE", &self.local)
            .env("PARALLEL_MIRRORED_STORAGE", &self.shared)
            .env_remove("PARVM_CONNECT")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn secret_file(&self) -> PathBuf {
        self.shared.join("secret")
    }

    pub(crate) fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parvm"));
        command
            .arg("run")
            .args(args)
            .current_dir(&self.shared)
            .env("PARALLEL_MIRRORED_STORAGE", &self.shared)
            .env("PARALLEL_LOCAL_STORAGE", &self.local)
            .env("PARVM_WORKERS", "2")
            .env_remove("PARVM_TRANSPORT")
            .env_remove("PARVM_HOSTNAME")
            .stdin(Stdio::null());
        command
    }

    pub(crate) fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.command(args).output().unwrap();
        self.assert_no_task_folder_left();
        out
    }

    /// Runs; asserts exit status `code`; returns stdout.
    pub(crate) fn status<S: AsRef<OsStr>>(&self, code: i32, args: &[S]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        self.status(0, args)
    }

    /// Fails with 255 and an `error:` naming `expected`; no output file was made.
    pub(crate) fn refuses(&self, args: &[&str], expected: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    /// Local storage holds at most the per-user folder, and nothing in it but the host
    /// cache of shipped inputs (kept for the next run by design), in which no pin, claim
    /// or temporary entry of the ended run is left.
    pub(crate) fn assert_no_task_folder_left(&self) {
        for entry in walk(&self.local) {
            let inside: Vec<_> = entry
                .strip_prefix(&self.local)
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let in_cache = inside.get(1).is_some_and(|c| c == "cache");
            let cache_leftover = in_cache
                && inside.len() > 3
                && ["pins", "claims", "tmp"].contains(&inside[2].as_str())
                && !entry.is_dir();
            assert!(
                (inside.len() <= 1 || in_cache) && !cache_leftover,
                "left in local storage: {}",
                entry.display()
            );
        }
    }
}

pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

pub(crate) fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn sources_combine_and_link_in_input_order_with_k() {
    let sweep = Sweep::new();
    let out = sweep.ok(&["-k", "echo", ":::", "a", "b", ":::", "1", "2"]);
    assert_eq!(lines(&out), ["a 1", "a 2", "b 1", "b 2"]);
    let out = sweep.ok(&["-k", "echo", "{2}-{1}", ":::", "a", "b", ":::+", "1", "2"]);
    assert_eq!(lines(&out), ["1-a", "2-b"]);
    // Without -k, every case still comes, in completion order.
    let out = sweep.ok(&["echo", ":::", "a", "b", "c"]);
    let mut got = lines(&out);
    got.sort_unstable();
    assert_eq!(got, ["a", "b", "c"]);
}

#[test]
fn args_files_stdin_and_copies() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("cases.txt"), "x y\nz\n").unwrap();
    let out = sweep.ok(&["-k", "-a", "cases.txt", "printf", "'[%s]\\n'"]);
    assert_eq!(lines(&out), ["[x y]", "[z]"]);
    let out = sweep.ok(&["-k", "echo", "{1}{2}", "::::", "cases.txt", ":::", "1"]);
    assert_eq!(lines(&out), ["x y1", "z1"]);
    let mut child = sweep
        .command(&["-k", "-a", "-", "echo", "in:"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"p\nq\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "in: p\nin: q\n");
    let out = sweep.ok(&["-n", "3", "echo", "copy", "{#}"]);
    let mut got = lines(&out);
    got.sort_unstable();
    assert_eq!(got, ["copy 1", "copy 2", "copy 3"]);
    // `find ... | parallel -n1 cmd` habit: -n is copies here, and says so.
    let mut child = sweep
        .command(&["-n", "1", "echo", "bare"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"p\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "bare\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("what is piped in is not read"), "{stderr}");
}

#[test]
fn values_split_by_nul_or_another_delimiter_as_find_print0_writes_them() {
    let sweep = Sweep::new();
    // What `find -print0` writes for names with a space and a newline, piped in.
    let mut child = sweep
        .command(&["-k", "-0", "printf", "'[%s]\\n'"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"./a b.cir\0./c\nd.cir\0")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "[./a b.cir]\n[./c\nd.cir]\n"
    );
    // An args file, a delimiter of two characters, an escape; `:::` values are not split.
    std::fs::write(sweep.shared.join("list"), "x::y z::w\n").unwrap();
    let out = sweep.ok(&[
        "-k", "-d", "::", "echo", "{1}-{2}", "::::", "list", ":::", "1,2",
    ]);
    assert_eq!(lines(&out), ["x-1,2", "y z-1,2", "w", "-1,2"]);
    std::fs::write(sweep.shared.join("tabs"), "p\tq").unwrap();
    let out = sweep.ok(&["-k", "-d", "\\t", "-a", "tabs", "echo"]);
    assert_eq!(lines(&out), ["p", "q"]);
    sweep.refuses(&["-d", "", "echo", ":::", "a"], "-d `` names no delimiter");
}

#[test]
fn a_header_names_the_sources_of_a_parameter_table() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("params.csv"), "rl,cl\n1k,1p\n2k,2p\n").unwrap();
    let out = sweep.ok(&[
        "-k",
        "--header",
        ":",
        "--colsep",
        ",",
        "--joblog",
        "jl",
        "echo",
        "RL={rl}",
        "CL={cl}",
        "T={temp}",
        "::::",
        "params.csv",
        ":::",
        "temp",
        "27",
        "85",
    ]);
    assert_eq!(
        lines(&out),
        [
            "RL=1k CL=1p T=27",
            "RL=1k CL=1p T=85",
            "RL=2k CL=2p T=27",
            "RL=2k CL=2p T=85"
        ]
    );
    // The names are no case: four lines in the joblog, numbered from 1.
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    sweep.refuses(&["--header", "1", "echo", ":::", "a"], "only `--header :`");
    sweep.refuses(&["--header", ":", "-n", "2", "echo"], "there are none");
}

#[test]
fn jobs_relative_to_the_cores_as_gnu_parallel_counts_them() {
    let sweep = Sweep::new();
    // Fewer slots than cores, at least one: every case on the one slot.
    for jobs in [["-j", "-1000"], ["-P", "1%"]] {
        let out = sweep.ok(&[jobs[0], jobs[1], "-k", "echo {%}", ":::", "a", "b", "c"]);
        assert_eq!(lines(&out), ["1", "1", "1"], "{jobs:?}");
    }
    sweep.refuses(&["-j", "half", "echo", ":::", "a"], "N% of the cores");
}

#[test]
fn every_replacement_string_and_one_used_twice() {
    let sweep = Sweep::new();
    let out = sweep.ok(&[
        "-k",
        "echo",
        "{}:{.}:{/}:{//}:{/.}:{#}:{1}:{1/.}:{}",
        ":::",
        "dir/sub/amp.cir",
        "plain",
    ]);
    assert_eq!(
        lines(&out),
        [
            "dir/sub/amp.cir:dir/sub/amp:amp.cir:dir/sub:amp:1:dir/sub/amp.cir:amp:dir/sub/amp.cir",
            "plain:plain:plain:.:plain:2:plain:plain:plain",
        ]
    );
}

#[test]
fn json_prints_one_record_per_case() {
    let sweep = Sweep::new();
    let out = sweep.status(
        1,
        &[
            "--json",
            "-k",
            "sh",
            "-c",
            "'echo hidden; exit {}'",
            ":::",
            "0",
            "3",
        ],
    );
    let records: Vec<serde_json::Value> = lines(&out)
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON line per case"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["case"], 1);
    assert_eq!(records[0]["outcome"], "success");
    assert_eq!(records[0]["exit"], 0);
    assert_eq!(records[1]["case"], 2);
    assert_eq!(records[1]["outcome"], "failed");
    assert_eq!(records[1]["exit"], 3);
    for record in &records {
        assert!(
            record["host"].is_string() && record["slot"].is_u64(),
            "{record}"
        );
        assert!(
            record["seconds"].is_f64() && record["mirrored"].is_u64(),
            "{record}"
        );
        assert!(record["returned"].is_u64(), "{record}");
    }
    // Every line parsed as a record: the cases' own output (`hidden`) is not printed.
}

#[test]
fn slot_is_the_worker_each_case_runs_on() {
    let sweep = Sweep::new();
    let out = sweep.ok(&["-j", "2", "echo", "{#}", "{%}", ":::", "a", "b", "c", "d"]);
    let mut cases = Vec::new();
    for line in lines(&out) {
        let (case, slot) = line.split_once(' ').expect("`case slot` lines");
        assert!(
            ["1", "2"].contains(&slot),
            "slots are 1 and 2 with -j 2: {line:?}"
        );
        cases.push(case.to_owned());
    }
    cases.sort();
    assert_eq!(cases, ["1", "2", "3", "4"]);
}

#[test]
fn special_characters_arrive_exactly() {
    let sweep = Sweep::new();
    let values: [&[u8]; 7] = [
        b"two words",
        b"it's \"quoted\"",
        b"$HOME `id` $(id)",
        b"*",
        b"line one\nline two\n",
        b"\xff\xfenot utf-8\x80",
        b"",
    ];
    let mut args: Vec<&OsStr> = [
        "-k",
        "--results",
        "r",
        "--return",
        "v",
        "printf",
        "%s",
        "{}",
        ">",
        "v",
        ":::",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    args.extend(values.iter().map(|v| OsStr::from_bytes(v)));
    sweep.ok(&args);
    for (at, value) in values.iter().enumerate() {
        let got = std::fs::read(sweep.shared.join(format!("r/{}/v", at + 1))).unwrap();
        assert_eq!(got, *value, "case {}", at + 1);
    }
}

/// The signals a case's process ignores, from its `/proc/self/status` (bit n-1 is signal n).
fn ignored_by_each_case(out: &Output) -> Vec<u64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let masks: Vec<u64> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("SigIgn:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .collect();
    assert_eq!(masks.len(), 2, "{stdout}");
    masks
}

#[test]
fn a_case_ignores_the_signals_its_caller_ignored_and_no_others() {
    let sweep = Sweep::new();
    let args = ["-n", "2", "grep", "^SigIgn:", "/proc/self/status"];
    let bit = |signal: u32| 1u64 << (signal - 1);
    // The local workers are started by `posix_spawn`, which leaves the C library's own
    // signals 32 and 33 ignored in them; a case must not inherit that.
    for mask in ignored_by_each_case(&sweep.command(&args).output().unwrap()) {
        assert_eq!(mask & (bit(32) | bit(33)), 0, "{mask:#x}");
    }
    // As from a shell, what the caller ignores stays ignored: `nohup` ignores SIGHUP.
    let direct = sweep.command(&args);
    // The same `parvm run`, started through `wrapper` with its words in front.
    let under = |wrapper: &[&str]| -> Output {
        let mut command = Command::new(wrapper[0]);
        command
            .args(&wrapper[1..])
            .arg(direct.get_program())
            .args(direct.get_args())
            .current_dir(&sweep.shared)
            .stdin(Stdio::null());
        for (name, value) in direct.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        command.output().unwrap()
    };
    for mask in ignored_by_each_case(&under(&["nohup"])) {
        assert_eq!(mask & bit(1), bit(1), "SIGHUP: {mask:#x}");
        assert_eq!(mask & (bit(32) | bit(33)), 0, "{mask:#x}");
    }
    // As a background job of a script, started with SIGINT ignored: `parvm run` still
    // stops on it, but its cases ignore it.
    let background = under(&["sh", "-c", "trap '' INT; exec \"$0\" \"$@\""]);
    for mask in ignored_by_each_case(&background) {
        assert_eq!(mask & bit(2), bit(2), "SIGINT: {mask:#x}");
    }
    sweep.assert_no_task_folder_left();
}

#[test]
fn output_of_concurrent_cases_never_mixes() {
    let sweep = Sweep::new();
    // Each case prints many lines to stdout and stderr, slowly enough to overlap.
    let out = sweep.run(&[
        "sh",
        "-c",
        "'for i in $(seq 3000); do echo {} $i; echo {} err $i >&2; done'",
        ":::",
        "a",
        "b",
        "c",
        "d",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for (text, tag) in [(&stdout, ""), (&stderr, " err")] {
        let all = lines(text);
        assert_eq!(all.len(), 4 * 3000);
        for block in all.chunks(3000) {
            let case = block[0].split(' ').next().unwrap();
            for (i, line) in block.iter().enumerate() {
                assert_eq!(*line, format!("{case}{tag} {}", i + 1));
            }
        }
    }
}

#[test]
fn returned_files_and_results_folders() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("model.txt"), "gain").unwrap();
    let out = sweep.status(
        1,
        &[
            "--map",
            "model.txt=.",
            "--results",
            "res",
            "--return",
            "*.out",
            "sh",
            "-c",
            "'cat model.txt > {}.out; echo said {}; echo warned {} >&2; exit {}'",
            ":::",
            "0",
            "3",
        ],
    );
    assert!(out.contains("said 0") && out.contains("said 3"), "{out}");
    let res = sweep.shared.join("res");
    for (case, value, exit) in [(1, "0", "0"), (2, "3", "3")] {
        let dir = res.join(case.to_string());
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("{value}.out"))).unwrap(),
            "gain"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("stdout")).unwrap(),
            format!("said {value}\n")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("stderr")).unwrap(),
            format!("warned {value}\n")
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("exit")).unwrap(),
            format!("{exit}\n")
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&res)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["1", "2"]);
}

#[test]
fn joblog_has_gnu_parallels_columns() {
    let sweep = Sweep::new();
    sweep.status(1, &["--joblog", "jl", "-k", "exit", ":::", "0", "5"]);
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    let rows: Vec<Vec<&str>> = log.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "Seq",
            "Host",
            "Starttime",
            "JobRuntime",
            "Send",
            "Receive",
            "Exitval",
            "Signal",
            "Command"
        ]
    );
    assert_eq!(rows.len(), 3, "{log}");
    for row in &rows[1..] {
        assert_eq!(row.len(), 9, "{row:?}");
        assert!(row[2].parse::<f64>().unwrap() > 1.6e9, "{row:?}");
        assert!(row[3].parse::<f64>().unwrap() >= 0.0, "{row:?}");
        let (seq, exit) = (row[0], row[6]);
        assert_eq!(row[8], if seq == "1" { "exit 0" } else { "exit 5" });
        assert_eq!(exit, if seq == "1" { "0" } else { "5" });
        assert_eq!(row[7], "0");
    }
}

#[test]
fn exit_status_counts_failed_cases() {
    let sweep = Sweep::new();
    sweep.status(0, &["exit", ":::", "0", "0"]);
    sweep.status(3, &["exit", ":::", "0", "1", "2", "7"]);
    sweep.status(2, &["--retries", "1", "exit", ":::", "0", "1", "2"]);
    sweep.status(100, &["-n", "100", "false"]);
    sweep.status(101, &["-n", "101", "false"]);
}

#[test]
fn a_command_missing_on_the_worker_fails_its_case_only() {
    let sweep = Sweep::new();
    let out = sweep.run(&[
        "--results",
        "r",
        "-k",
        "{}",
        ":::",
        "parvm-no-such-command",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let exit = std::fs::read_to_string(sweep.shared.join("r/1/exit")).unwrap();
    assert_eq!(exit, "127\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("parvm-no-such-command"));
    assert_eq!(
        std::fs::read_to_string(sweep.shared.join("r/2/exit")).unwrap(),
        "0\n"
    );
}

#[test]
fn timeout_stops_a_case() {
    let sweep = Sweep::new();
    let out = sweep.run(&["--timeout", "300ms", "-k", "sleep", ":::", "30", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("case 1 timed out"));
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing() {
    let sweep = Sweep::new();
    let out = sweep.ok(&["--dry-run", "touch", "{.}.x", ":::", "a.cir", "b c.cir"]);
    assert_eq!(lines(&out), ["touch a.x", "touch 'b c'.x"]);
    assert!(!sweep.shared.join("a.x").exists());
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("file"), "").unwrap();
    sweep.refuses(&[], "no command to run");
    sweep.refuses(&[":::", "a"], "no command to run");
    sweep.refuses(
        &["echo", "{.}"],
        "replacement string `{.}` but has no inputs",
    );
    sweep.refuses(
        &["-a", "missing.txt", "echo"],
        "cannot read the args file `missing.txt`",
    );
    sweep.refuses(&["echo", "::::", "missing.txt"], "missing.txt");
    sweep.refuses(
        &["--results", "r", "--return", "../up", "echo", ":::", "a"],
        "--return `../up` leaves the task folder",
    );
    sweep.refuses(
        &["--results", "file/r", "echo", ":::", "a"],
        "cannot make the results folder `file/r`",
    );
    sweep.refuses(&["--return", "x", "echo", ":::", "a"], "--results");
    sweep.refuses(
        &["--map", "nets/{}=.", "wc", "{}", ":::", "a"],
        "replacement strings do not work in --map",
    );
    // In the words of the command line, not of the library under it.
    let missing_map = ["--map", "inputs=.", "echo", ":::", "a"];
    sweep.refuses(&missing_map, "--map inputs=.: `inputs`");
    let stderr = String::from_utf8(sweep.run(&missing_map).stderr).unwrap();
    assert!(!stderr.contains("VmBuilder"), "{stderr}");
    // A map the mirror map refuses names its entry, not "the mirror map".
    std::fs::create_dir_all(sweep.shared.join("inputs")).unwrap();
    for (entry, expected) in [
        (
            "inputs=../up",
            "--map inputs=../up: mirror target `../up` leaves the task folder",
        ),
        (
            "inputs=/abs",
            "--map inputs=/abs: mirror target `/abs` is absolute",
        ),
    ] {
        let args = ["--map", "cases=.", "--map", entry, "echo", ":::", "a"];
        std::fs::create_dir_all(sweep.shared.join("cases")).unwrap();
        sweep.refuses(&args, expected);
    }
    let outside = sweep.local.display().to_string();
    sweep.refuses(
        &["--map", &format!("{outside}=."), "echo", ":::", "a"],
        &format!("--map {outside}=.: `{outside}` is not inside any mirrored storage root"),
    );
    std::fs::remove_dir(sweep.shared.join("inputs")).unwrap();
    std::fs::remove_dir(sweep.shared.join("cases")).unwrap();
    sweep.refuses(
        &["--timeout", "soon", "echo", ":::", "a"],
        "--timeout `soon`",
    );
    sweep.refuses(&["-j", "0", "echo", ":::", "a"], "-j 0 starts no worker");
    assert!(!sweep.shared.join("r").exists());
}

#[test]
fn tag_prefixes_every_line_with_the_case() {
    let sweep = Sweep::new();
    let out = sweep.ok(&[
        "-k",
        "--tag",
        "printf",
        "'1\\n2\\n'",
        "{}",
        ":::",
        "a",
        "b c",
    ]);
    assert_eq!(lines(&out), ["a\t1", "a\t2", "b c\t1", "b c\t2"]);
}

#[test]
fn q_keeps_shell_characters_of_the_command_for_the_command() {
    let sweep = Sweep::new();
    let out = sweep.ok(&["-k", "-q", "printf", "%s|%s\\n", "{}", "a b", ":::", "x"]);
    assert_eq!(lines(&out), ["x|a b"]);
}

#[test]
fn halt_soon_starts_no_case_after_a_failure() {
    let sweep = Sweep::new();
    // One worker, so the cases run one after another.
    let mut cases = vec![
        "-j",
        "1",
        "--halt",
        "soon,fail=1",
        "--joblog",
        "jl",
        "-k",
        "exit",
    ];
    cases.push(":::");
    cases.extend(["0", "1", "0", "0", "0"]);
    let out = sweep.run(&cases);
    let code = out.status.code().unwrap();
    assert!((1..=4).contains(&code), "{code}");
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    let ran = log.lines().skip(1).count();
    assert!(ran < 5, "every case ran after the failure: {log}");
    assert!(
        !log.contains("\t-1\t"),
        "cases not run are not logged: {log}"
    );
    sweep.refuses(&["--halt", "later,done=3", "true"], "--halt `later,done=3`");
}

#[test]
fn persistent_folders_and_startup_dir() {
    let sweep = Sweep::new();
    std::fs::create_dir_all(sweep.shared.join("inputs")).unwrap();
    std::fs::write(sweep.shared.join("inputs/x"), "data ").unwrap();
    let out = sweep.ok(&[
        "-k",
        "--persistent",
        "--map",
        "inputs=.",
        "--startup-dir",
        "inputs",
        "cat",
        "x",
        ";",
        "echo",
        ":::",
        "1",
        "2",
    ]);
    assert_eq!(lines(&out), ["data 1", "data 2"]);
}

#[test]
fn a_return_pattern_beside_the_startup_folder_is_warned_of_and_its_failure_names_the_fix() {
    let sweep = Sweep::new();
    std::fs::create_dir_all(sweep.shared.join("cir")).unwrap();
    std::fs::write(sweep.shared.join("cir/amp.cir"), "* amp").unwrap();
    let args = |pattern| {
        [
            "--map",
            "cir=.",
            "--startup-dir",
            "cir",
            "--results",
            "res",
            "--return",
            pattern,
            "echo {} > gain.txt",
            ":::",
            "1",
        ]
    };
    let out = sweep.run(&args("gain.txt"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "warning: --return `gain.txt` is matched in the task folder, not in the startup \
             folder `cir` where the command runs; write `cir/gain.txt`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "it is in the startup folder `cir`, where the task ran, and return patterns are \
             relative to the task folder: return `cir/gain.txt` instead"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(sweep.shared.join("res")).unwrap();
    let out = sweep.run(&args("cir/gain.txt"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let returned = sweep.shared.join("res/1/cir/gain.txt");
    assert_eq!(std::fs::read_to_string(returned).unwrap(), "1\n");
}

#[test]
fn resume_and_resume_failed_match_cases_by_command_not_position() {
    let sweep = Sweep::new();
    let marker = sweep.shared.join("fail-b");
    std::fs::write(&marker, "").unwrap();
    let command = format!(
        "test ! -e {}/fail-{{}} && echo ran {{}}",
        sweep.shared.display()
    );
    let run = |extra: &[&str], values: &[&str]| {
        let mut args = vec!["-k", "--joblog", "jl", "--results", "res"];
        args.extend_from_slice(extra);
        args.push(&command);
        args.push(":::");
        args.extend_from_slice(values);
        sweep.run(&args)
    };
    let out = run(&[], &["a", "b", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran a\nran c\n");
    std::fs::remove_file(&marker).unwrap();
    // Only the failed case runs again, and its results folder is replaced.
    let out = run(&["--resume-failed"], &["a", "b", "c"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran b\n");
    let res = sweep.shared.join("res");
    assert_eq!(std::fs::read_to_string(res.join("2/exit")).unwrap(), "0\n");
    assert_eq!(
        std::fs::read_to_string(res.join("1/stdout")).unwrap(),
        "ran a\n"
    );
    // A new case in front: only it runs, though every position moved.
    let out = run(&["--resume"], &["new", "a", "b", "c"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran new\n");
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    assert_eq!(log.matches("Seq\t").count(), 1, "{log}");
    assert_eq!(log.lines().count(), 1 + 3 + 1 + 1, "{log}");
    let out = run(&["--resume"], &["new", "a", "b", "c"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    sweep.refuses(&["--resume", "true"], "--joblog");
}

#[test]
fn a_file_a_case_did_not_write_fails_it_and_its_results_are_kept() {
    let sweep = Sweep::new();
    // Case `ok` writes its file; `quiet` exits 0 without it; `bad` fails and writes none.
    // Once `fixed` exists, every case writes its file.
    let command = format!(
        "echo said {{}}; echo warned {{}} >&2; test {{}} = ok -o -e {}/fixed && echo r > out.txt; test {{}} != bad || exit 3",
        sweep.shared.display()
    );
    let run = |extra: &[&str]| {
        let mut args = vec![
            "-k",
            "--joblog",
            "jl",
            "--results",
            "res",
            "--return",
            "out.txt",
        ];
        args.extend_from_slice(extra);
        args.extend([command.as_str(), ":::", "ok", "quiet", "bad"]);
        sweep.run(&args)
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The case that exited 0 is told why it failed; the one that failed says so itself.
    let told: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("parvm run:"))
        .collect();
    assert_eq!(told.len(), 1, "{stderr}");
    assert!(
        told[0].starts_with("parvm run: case 2 failed: return pattern `out.txt` names no file"),
        "{stderr}"
    );
    assert!(!stderr.contains("could not be kept"), "{stderr}");
    // Every case's output and exit code are kept, whatever it returned.
    let res = sweep.shared.join("res");
    for (case, value, exit) in [(1, "ok", "0"), (2, "quiet", "0"), (3, "bad", "3")] {
        let dir = res.join(case.to_string());
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("stdout"), format!("said {value}\n"), "case {case}");
        assert_eq!(read("stderr"), format!("warned {value}\n"), "case {case}");
        assert_eq!(read("exit"), format!("{exit}\n"), "case {case}");
        assert_eq!(dir.join("out.txt").exists(), value == "ok", "case {case}");
    }
    // The joblog has the failed command's code; the case that exited 0 yet failed is
    // left out, as its 0 would read as a success.
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    let exits: Vec<(&str, &str)> = log
        .lines()
        .skip(1)
        .map(|line| {
            let columns: Vec<&str> = line.split('\t').collect();
            (columns[0], columns[6])
        })
        .collect();
    assert_eq!(exits, [("1", "0"), ("3", "3")], "{log}");
    // Both failed cases run again, and now succeed.
    std::fs::write(sweep.shared.join("fixed"), "").unwrap();
    let out = run(&["--resume-failed"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "said quiet\nsaid bad\n"
    );
    assert!(res.join("2/out.txt").exists() && res.join("3/out.txt").exists());
    assert_eq!(std::fs::read_to_string(res.join("3/exit")).unwrap(), "3\n");
}

/// Kills a process group when dropped, so a failing test leaves nothing running.
pub(crate) struct GroupGuard(pub(crate) u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `done` until it holds or 30 s pass.
pub(crate) fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30 s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_run_whose_output_is_closed_ends_even_when_its_workers_die() {
    // `parvm run ... 2>&1 | head`: the reader is gone before parvm writes. Each case kills
    // its worker, so warnings are logged on every thread that handles a lost worker; they
    // used to panic there (tracing's report of the failed write) and hang the run.
    let sweep = Sweep::new();
    let case = "kill -9 $(ps -o ppid= -p $PPID | tr -d ' '); echo {}";
    let mut run = ChildGuard(
        sweep
            .command(&["-j", "2", case, ":::", "a", "b"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop((run.0.stdout.take(), run.0.stderr.take()));
    let mut ended = None;
    eventually("the run ended", || {
        ended = run.0.try_wait().unwrap();
        ended.is_some()
    });
    // The run itself failed (it could not print), as a run whose output is lost must.
    assert_eq!(
        ended.and_then(|status| status.code()),
        Some(255),
        "{ended:?}"
    );
    sweep.assert_no_task_folder_left();
}

/// A case command that echoes its value, and kills its worker first when its value is
/// `value` and the marker file (returned) does not exist yet, making it.
fn kills_its_worker_once(sweep: &Sweep, value: &str) -> (String, PathBuf) {
    let killed = sweep.shared.join("killed");
    let case = format!(
        "test {{}} != {value} || test -e {0} || {{ touch {0}; kill -9 $(ps -o ppid= -p $PPID | tr -d ' '); }}; echo {{}}",
        killed.display()
    );
    (case, killed)
}

#[test]
fn a_worker_that_dies_leaves_no_task_folder_after_the_run() {
    // Not replaced, so no new worker on the host sweeps the dead one's folder: the run
    // removes it at its end.
    let sweep = Sweep::new();
    let (case, _) = kills_its_worker_once(&sweep, "a");
    let out = sweep
        .command(&["-j", "2", "-k", &case, ":::", "a", "b"])
        .env("PARVM_REPLACE_WORKERS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    assert_eq!(err.matches("lost peer").count(), 1, "{err}");
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_run_whose_workers_are_all_gone_names_the_cases_left_by_number() {
    // One worker, not replaced: case 2 kills it, so case 2 never finishes and cases 3 to 6
    // never start. The dispatch counts jobs from 0; a user reads case numbers.
    let sweep = Sweep::new();
    // Killed once per run: the marker is removed before each, and left for the resumed one.
    let (case, killed) = kills_its_worker_once(&sweep, "2");
    let cases = [":::", "1", "2", "3", "4", "5", "6"];
    for (joblog, resume) in [(false, "with --joblog FILE"), (true, "again with --resume")] {
        let _ = std::fs::remove_file(&killed);
        let mut args = vec!["-j", "1", &case];
        args.extend(cases);
        if joblog {
            args.splice(0..0, ["--joblog", "jl"]);
        }
        let out = sweep
            .command(&args)
            .env("PARVM_REPLACE_WORKERS", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
        // Cases queued behind case 2 on its worker did not finish either; how many were
        // queued depends on timing.
        let stops = err
            .split_once("error: every worker is gone, so the run stops: ")
            .and_then(|(_, rest)| rest.split_once(';'))
            .map(|(stops, _)| stops)
            .unwrap_or_else(|| panic!("{err}"));
        assert!(
            [
                "case 2 did not finish and cases 3 to 6 did not start",
                "cases 2 and 3 did not finish and cases 4 to 6 did not start",
                "cases 2, 3 and 4 did not finish and cases 5 and 6 did not start",
                "cases 2, 3, 4 and 5 did not finish and case 6 did not start",
            ]
            .contains(&stops),
            "{err}"
        );
        assert!(err.contains(resume), "{err}");
        assert!(err.contains("caused by: nothing can arrive"), "{err}");
        sweep.assert_no_task_folder_left();
    }
    // The joblog holds case 1 alone, so --resume runs the others.
    let mut args = vec!["-j", "1", "-k", "--joblog", "jl", "--resume", &case];
    args.extend(cases);
    let out = sweep.ok(&args);
    assert_eq!(out, "2\n3\n4\n5\n6\n");
}

#[test]
fn ctrl_c_leaves_no_case_running_and_no_task_folder() {
    // What a terminal's Ctrl-C does: SIGINT to the whole foreground job.
    stop_by_signal("INT", true);
}

#[test]
fn sigterm_to_parvm_alone_stops_the_cases_and_removes_their_folders() {
    // What a batch system does.
    stop_by_signal("TERM", false);
}

#[test]
fn a_closed_terminal_leaves_no_case_running_and_no_task_folder() {
    // What a terminal that closes (or an ssh session that drops) does: SIGHUP to the
    // whole foreground job.
    stop_by_signal("HUP", true);
}

#[test]
fn ctrl_c_stops_a_run_started_in_the_background_of_a_script_the_same() {
    // A script's `parvm run ... &` starts it ignoring SIGINT, and so its workers, their
    // supervisors and their commands, as a shell's background jobs; parvm still catches
    // the Ctrl-C that reaches the whole job. The supervisors took it anyway and stopped
    // their commands under the worker, which then started the case queued behind one and
    // failed it ("Connection reset by peer") on the supervisor that had left.
    stop_by_signal_started_as("INT", true, Started::IgnoringSigint);
}

/// Sends SIG`signal` (`INT`, `TERM`, `HUP`) to `parvm run` while two cases run, to its
/// whole process group or to it alone.
fn stop_by_signal(signal: &str, whole_group: bool) {
    stop_by_signal_started_as(signal, whole_group, Started::AsUsual);
}

/// `command` run by coreutils' `env --ignore-signal=INT`, which execs it (same process)
/// with SIGINT ignored, as a non-interactive shell starts a background job.
fn ignoring_sigint(command: &Command) -> Command {
    let mut env = Command::new("env");
    env.arg("--ignore-signal=INT")
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null());
    if let Some(dir) = command.get_current_dir() {
        env.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => env.env(name, value),
            None => env.env_remove(name),
        };
    }
    env
}

/// How `parvm run` was started.
enum Started {
    AsUsual,
    /// With SIGINT ignored, as a non-interactive shell starts a background job.
    IgnoringSigint,
}

fn stop_by_signal_started_as(signal: &str, whole_group: bool, started: Started) {
    use std::os::unix::process::CommandExt;
    let sweep = Sweep::new();
    let pids = sweep.shared.join("pids");
    std::fs::create_dir(&pids).unwrap();
    // Once `resume` exists, the same cases succeed at once.
    let resume = sweep.shared.join("resume");
    let command = format!(
        "test -e {} && exit 0; echo $$ > {}/{{}}; exec sleep 60",
        resume.display(),
        pids.display()
    );
    let err_path = sweep.shared.join("stderr");
    let mut parvm = sweep.command(&["--joblog", "jl", command.as_str(), ":::", "a", "b", "c"]);
    parvm
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    if let Started::IgnoringSigint = started {
        parvm = ignoring_sigint(&parvm);
        parvm
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap());
    }
    let mut child = parvm.spawn().unwrap();
    let _guard = GroupGuard(child.id());
    let read_pid = |name: &str| {
        std::fs::read_to_string(pids.join(name))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    eventually("both cases started", || {
        read_pid("a").is_some() && read_pid("b").is_some()
    });
    let target = [
        format!("-{signal}"),
        "--".to_owned(),
        if whole_group {
            format!("-{}", child.id())
        } else {
            child.id().to_string()
        },
    ];
    let sent = Command::new("kill").args(&target).status().unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    if !whole_group {
        // Both running cases are reported as they stop (the report used to end with the
        // first); the third, which never started, is one of "the others".
        for case in [1, 2] {
            assert!(
                stderr.contains(&format!("case {case} stopped after ")),
                "{stderr}"
            );
        }
        assert!(
            stderr.contains(": 2 cases reported (2 did not succeed)"),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("case 3"), "{stderr}");
    // Queued behind a running case, it was taken back before that one was stopped: its
    // command never started.
    assert_eq!(read_pid("c"), None);
    for name in ["a", "b"] {
        let pid = read_pid(name).unwrap();
        eventually("the case's command ended", || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        });
    }
    let left = || -> Vec<PathBuf> {
        walk(&sweep.local)
            .into_iter()
            .filter(|entry| {
                entry
                    .strip_prefix(&sweep.local)
                    .unwrap()
                    .components()
                    .count()
                    > 1
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(left(), Vec::<PathBuf>::new());
    // Neither case is in the joblog (however it was stopped: by parvm, or by its own
    // supervisor getting the Ctrl-C), so --resume runs both.
    let joblog = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    assert_eq!(joblog.lines().count(), 1, "{joblog}");
    std::fs::write(&resume, "").unwrap();
    sweep.ok(&[
        "--resume",
        "--joblog",
        "jl",
        command.as_str(),
        ":::",
        "a",
        "b",
        "c",
    ]);
    let joblog = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    assert_eq!(joblog.lines().count(), 4, "{joblog}");
}

#[test]
fn a_signal_ends_a_run_that_waits_for_its_next_input_line() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    // Values piped in from a program that has more to say later (`tail -f`, a slow
    // generator): a batch system's SIGTERM must not wait for its next line.
    let sweep = Sweep::new();
    let started = sweep.shared.join("started");
    let command = format!("touch {}; exec sleep 60; : {{}}", started.display());
    let err_path = sweep.shared.join("stderr");
    let mut child = sweep
        .command(&["-a", "-", command.as_str()])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let _guard = GroupGuard(child.id());
    // Kept open: the run waits for a second line that never comes.
    let mut values = child.stdin.take().unwrap();
    values.write_all(b"a\n").unwrap();
    eventually("the first case started", || started.exists());
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    eventually("parvm run ended", || child.try_wait().unwrap().is_some());
    drop(values);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(stderr.contains("case 1 stopped after "), "{stderr}");
    sweep.assert_no_task_folder_left();
}

/// Kills and reaps a child when dropped.
pub(crate) struct ChildGuard(pub(crate) std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines `child` writes on its piped stderr, as they come, read in a thread that
/// drains the stream to its end (so the child never blocks on it); the channel ends
/// with the stream.
pub(crate) fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let err = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}

/// The address a TCP spawner prints (`... listening on ADDR; ...`), from its stderr
/// `lines`, within 30 s.
pub(crate) fn spawner_address(lines: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the spawner printed no address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            return rest.split(';').next().unwrap_or_default().to_owned();
        }
    }
}

#[test]
fn a_value_too_long_for_a_command_line_fails_its_case_saying_so() {
    let sweep = Sweep::new();
    // Linux takes at most 128 KiB per argument; the case's line is one (`sh -c LINE`).
    let long = "a".repeat(200_000);
    std::fs::write(sweep.shared.join("values"), format!("{long}\nshort\n")).unwrap();
    let out = sweep.run(&["-k", "-a", "values", "echo {} | wc -c"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("case 1 failed") && stderr.contains("longer than the system allows"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("check that the program exists"),
        "{stderr}"
    );
    // The run went on with the next case.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "6\n");
}

#[test]
fn values_piped_in_are_the_cases_without_an_input_source() {
    use std::io::Write;
    let sweep = Sweep::new();
    let piped = |args: &[&str]| {
        let mut child = sweep
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"a b\nc\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        String::from_utf8(out.stdout).unwrap()
    };
    // As GNU parallel: one case per line, appended when the command has no `{}`.
    assert_eq!(piped(&["-k", "echo", "x"]), "x a b\nx c\n");
    assert_eq!(piped(&["-k", "echo", "[{}]"]), "[a b]\n[c]\n");
    // `-n` says how many copies: what is piped in is not read.
    assert_eq!(piped(&["-n", "2", "echo", "copy"]), "copy\ncopy\n");
    // Nothing piped in (`/dev/null`): the command runs once.
    assert_eq!(sweep.ok(&["echo", "once"]), "once\n");
}

#[test]
fn values_read_from_a_terminal_are_asked_for() {
    use std::io::Write;
    let sweep = Sweep::new();
    // The values come from standard input, here a terminal.
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = sweep
        .command(&["-k", "-a", "-", "echo", "got"])
        .stdin(Stdio::from(std::fs::File::from(pty.slave)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let mut out = child.stdout.take().unwrap();
    let mut child = ChildGuard(child);
    let first = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("parvm run said nothing while it waited for the terminal");
    assert!(
        first.contains("from the terminal") && first.contains("Ctrl-D"),
        "{first}"
    );
    // Two lines, then Ctrl-D at the start of a line: the end of the input.
    let mut terminal = std::fs::File::from(pty.master);
    terminal.write_all(b"a\nb\n\x04").unwrap();
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut out, &mut printed).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(printed, "got a\ngot b\n");
}

#[test]
fn sigterm_ends_a_tcp_sweep_that_no_worker_joined() {
    let sweep = Sweep::new();
    // No local slots and no worker: the cases wait for one that never comes.
    let TcpRun {
        mut spawner,
        said: rx,
        ..
    } = sweep.start_tcp(
        &["-j", "0", "--joblog", "jl", "true", ":::", "a", "b"],
        Stdio::null(),
    );
    // Sent as soon as the address is printed: the run catches it from before then.
    let sent = Command::new("kill")
        .args(["-TERM", &spawner.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut status = None;
    eventually("parvm run ended after SIGTERM", || {
        status = spawner.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(130));
    // Until the reader reaches the end of stderr (the process is gone).
    let mut said = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        said.push(line);
    }
    assert!(
        said.iter()
            .any(|line| line.contains("stopped by a signal: 0 cases reported")),
        "{said:?}"
    );
    // A case that never started is one of "the others", not a case to report.
    assert!(
        !said.iter().any(|line| line.contains("not run")),
        "{said:?}"
    );
    // Nothing ran, so nothing is recorded: --resume runs both.
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn a_tcp_sweep_runs_on_a_parvm_worker() {
    let sweep = Sweep::new();
    let TcpRun {
        mut spawner, addr, ..
    } = sweep.start_tcp(&["-k", "echo", "case", ":::", "a", "b"], Stdio::piped());
    let mut worker = ChildGuard(sweep.worker(&addr).spawn().unwrap());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut spawner.0.stdout.take().unwrap(), &mut out).unwrap();
    let status = spawner.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {out}");
    assert_eq!(lines(&out), ["case a", "case b"]);
    // The run ended and dismissed its worker, which leaves with status 0.
    let mut left = None;
    eventually("the worker left", || {
        left = worker.0.try_wait().unwrap();
        left.is_some()
    });
    assert!(left.is_some_and(|status| status.success()), "{left:?}");
    sweep.assert_no_task_folder_left();
}

#[test]
fn env_gives_the_cases_on_another_host_the_spawners_value() {
    let sweep = Sweep::new();
    let mut command = sweep.tcp_command(&[
        "-k",
        "--env",
        "GAIN_OF_THIS_TEST",
        "echo gain=$GAIN_OF_THIS_TEST {}",
        ":::",
        "a",
    ]);
    command
        .env("GAIN_OF_THIS_TEST", "42")
        .stdout(Stdio::piped());
    let TcpRun {
        mut spawner, addr, ..
    } = Sweep::start_tcp_command(command);
    let _worker = ChildGuard(
        sweep
            .worker(&addr)
            .env("GAIN_OF_THIS_TEST", "worker's own")
            .spawn()
            .unwrap(),
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut spawner.0.stdout.take().unwrap(), &mut out).unwrap();
    assert!(spawner.0.wait().unwrap().success(), "{out}");
    assert_eq!(lines(&out), ["gain=42 a"]);
    sweep.refuses(
        &["--env", "PARVM_WORKERS", "echo", ":::", "a"],
        "--env PARVM_WORKERS: parvm reads it when a worker starts",
    );
}

/// A worker host needs none of the spawner's mirrored folders: `parvm worker` whose
/// `PARALLEL_MIRRORED_STORAGE` names a folder that does not exist there joins, and the
/// inputs its cases map are shipped to it; with shipping off, the case fails naming the
/// missing entry and what to do.
/// What each case of `each_case_finds_only_its_mirrored_inputs_shared_or_shipped` runs:
/// it says what its folder holds (but local storage's own files) and what its inputs say,
/// then edits, removes and adds, as a careless simulator script would.
const SCRIBBLER: &str = r#"echo "{}: $(ls -A | grep -v '^[.]parvm-' | tr '\n' ' ')| $(ls -A nets | tr '\n' ' ')| $(cat nets/a.cir) $(cat nets/lib/m.lib)"; sed -i s/1k/{}/ nets/a.cir; echo junk >> nets/lib/m.lib; rm nets/b.cir; echo out > result.txt; mkdir -p nets/lib/tmp; chmod 700 nets/lib"#;

#[test]
fn each_case_finds_only_its_mirrored_inputs_shared_or_shipped() {
    let sweep = Sweep::new();
    std::fs::create_dir_all(sweep.shared.join("nets/lib")).unwrap();
    std::fs::write(sweep.shared.join("nets/a.cir"), "R1 a b 1k\n").unwrap();
    std::fs::write(sweep.shared.join("nets/b.cir"), "R2 b c 2k\n").unwrap();
    std::fs::write(sweep.shared.join("nets/lib/m.lib"), "model\n").unwrap();
    let values: Vec<String> = (1..=12).map(|i| format!("{i}0k")).collect();
    let expected = |value: &str| format!("{value}: nets | a.cir b.cir lib | R1 a b 1k model\n");
    let check = |out: &str, how: &str| {
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort();
        let mut want: Vec<String> = values.iter().map(|v| expected(v)).collect();
        want.sort();
        let want: Vec<&str> = want.iter().map(|l| l.trim_end()).collect();
        assert_eq!(lines, want, "{how}");
    };
    let args: Vec<&str> = ["--map", "nets=.", SCRIBBLER, ":::"]
        .into_iter()
        .chain(values.iter().map(String::as_str))
        .collect();

    // Local workers reading the shared folder.
    check(&sweep.ok(&args), "shared");
    assert_eq!(
        std::fs::read_to_string(sweep.shared.join("nets/a.cir")).unwrap(),
        "R1 a b 1k\n"
    );

    // A TCP worker whose host lacks the mirrored folder: the inputs are shipped.
    let nowhere = sweep.local.join("no-such-folder");
    let mut run = sweep.start_tcp(&args, Stdio::piped());
    let mut worker = ChildGuard(
        sweep
            .worker(&run.addr)
            .args(["--slots", "2"])
            .env("PARALLEL_MIRRORED_STORAGE", &nowhere)
            .spawn()
            .unwrap(),
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut run.spawner.0.stdout.take().unwrap(), &mut out).unwrap();
    let status = run.spawner.0.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}: {out} {:?}",
        run.said.iter().collect::<Vec<_>>()
    );
    check(&out, "shipped");
    eventually("the worker left", || worker.0.try_wait().unwrap().is_some());
    assert!(!nowhere.exists(), "the worker made no mirrored folder");
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_worker_without_the_mirrored_folder_gets_the_inputs_shipped() {
    let sweep = Sweep::new();
    std::fs::create_dir(sweep.shared.join("nets")).unwrap();
    std::fs::write(sweep.shared.join("nets/a.cir"), "R1 a b 1k\n").unwrap();
    let nowhere = sweep.local.join("no-such-folder");
    for ship in ["auto", "never"] {
        let mut spawner = sweep
            .tcp_command(&["--map", "nets=.", "cat nets/{}.cir", ":::", "a"])
            .env("PARVM_SHIP", ship)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let said = stderr_lines(&mut spawner);
        let mut spawner = ChildGuard(spawner);
        let addr = spawner_address(&said);
        let mut worker = ChildGuard(
            sweep
                .worker(&addr)
                .env("PARALLEL_MIRRORED_STORAGE", &nowhere)
                .spawn()
                .unwrap(),
        );
        // Bounded: a worker that refused to start would leave the run waiting for one.
        let mut left = None;
        eventually("the worker left", || {
            left = worker.0.try_wait().unwrap();
            left.is_some()
        });
        assert!(
            left.is_some_and(|status| status.success()),
            "{ship}: {left:?}"
        );
        let mut out = String::new();
        std::io::Read::read_to_string(&mut spawner.0.stdout.take().unwrap(), &mut out).unwrap();
        let status = spawner.0.wait().unwrap();
        let err: Vec<String> = said.iter().collect();
        if ship == "auto" {
            assert!(status.success(), "{status:?}: {out} {err:?}");
            assert_eq!(out, "R1 a b 1k\n");
        } else {
            assert_eq!(status.code(), Some(1), "{err:?}");
            let expected = format!(
                "mirrored storage entry 0 (`{}`), which does not exist on this host",
                nowhere.display()
            );
            assert!(
                err.iter()
                    .any(|line| line.contains(&expected) && line.contains("PARVM_SHIP=auto")),
                "{err:?}"
            );
        }
    }
    assert!(!nowhere.exists(), "the worker made no mirrored folder");
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_worker_whose_spawner_is_killed_during_a_case_says_so_and_leaves() {
    let sweep = Sweep::new();
    let started = sweep.shared.join("started");
    let case = format!("touch {}; sleep 60", started.display());
    let TcpRun {
        mut spawner, addr, ..
    } = sweep.start_tcp(&[&case, ":::", "a"], Stdio::null());
    let mut worker = sweep.worker(&addr).stderr(Stdio::piped()).spawn().unwrap();
    let worker_said = stderr_lines(&mut worker);
    let mut worker = ChildGuard(worker);
    eventually("the case started", || started.exists());
    spawner.0.kill().unwrap();
    spawner.0.wait().unwrap();
    let mut left = None;
    eventually("the worker left", || {
        left = worker.0.try_wait().unwrap();
        left.is_some()
    });
    // Whichever of its threads saw it first (the one waiting for the case, or the one
    // forwarding its output), it said why on the terminal it had before its output went
    // to the spawner, and failed.
    let code = left.and_then(|status| status.code());
    assert!(matches!(code, Some(1 | 70)), "{left:?}");
    let mut lines = Vec::new();
    while let Ok(line) = worker_said.recv_timeout(std::time::Duration::from_secs(30)) {
        let found = line.contains("the spawner") && line.contains("leaves");
        lines.push(line);
        if found {
            return;
        }
    }
    panic!("the worker did not say why it left: {lines:?}");
}

#[test]
fn a_fifo_in_a_mapped_folder_is_skipped_with_a_warning_shared_or_shipped() {
    let sweep = Sweep::new();
    std::fs::create_dir(sweep.shared.join("nets")).unwrap();
    std::fs::write(sweep.shared.join("nets/a.cir"), "R1 a b 1k\n").unwrap();
    nix::unistd::mkfifo(
        &sweep.shared.join("nets/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    for ship in ["never", "always"] {
        let out = sweep
            .command(&["-j", "1", "--map", "nets=.", "-n", "1", "ls nets"])
            .env("PARVM_SHIP", ship)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ship}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a.cir\n", "{ship}");
        let warned = format!(
            "skipping `{}`: neither a file, a folder nor a symlink",
            sweep.shared.join("nets/pipe").display()
        );
        assert_eq!(err.matches(&warned).count(), 1, "{ship}: {err}");
    }
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_tcp_worker_killed_during_a_case_is_named_and_its_case_runs_on_another() {
    let sweep = Sweep::new();
    let started = sweep.shared.join("started");
    let second_try = sweep.shared.join("second-try");
    // The first try hangs until its worker is killed; the second ends at once.
    let case = format!(
        "test -e {} || {{ touch {}; sleep 60; }}; echo done {{}}",
        second_try.display(),
        started.display()
    );
    let run = sweep.start_tcp(&[&case, ":::", "a"], Stdio::piped());
    let mut first = ChildGuard(
        sweep
            .worker(&run.addr)
            .env("PARVM_HOSTNAME", "first")
            .spawn()
            .unwrap(),
    );
    eventually("the case started", || started.exists());
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // Said once, naming the worker and its host, though its connection closed cleanly
    // (the kernel closes a killed process's sockets).
    run.finish_with_a_second_worker(
        &sweep,
        &second_try,
        &["a"],
        &["worker rank 1 on host `first`", "closed its connection"],
    );
}

#[test]
fn output_past_the_memory_window_is_delivered_whole() {
    let sweep = Sweep::new();
    // 3 MB per case, past the 1 MiB kept in memory, so it goes through a spill file.
    let out = sweep.run(&[
        "-k",
        "--tag",
        "head -c 3000000 /dev/zero | tr '\\0' {}; echo",
        ":::",
        "a",
        "b",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "a\t{}\nb\t{}\n",
        "a".repeat(3_000_000),
        "b".repeat(3_000_000)
    );
    assert!(
        text == expected,
        "{} bytes, not {}",
        text.len(),
        expected.len()
    );
}

#[test]
fn kill_9_leaves_nothing_running_and_the_next_run_sweeps_its_folders() {
    use std::os::unix::process::CommandExt;
    let sweep = Sweep::new();
    let pids = sweep.shared.join("pids");
    std::fs::create_dir(&pids).unwrap();
    let command = format!("echo $$ > {}/{{}}; exec sleep 60", pids.display());
    let mut child = sweep
        .command(&[command.as_str(), ":::", "a", "b"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = GroupGuard(child.id());
    let read_pid = |name: &str| {
        std::fs::read_to_string(pids.join(name))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    eventually("both cases started", || {
        read_pid("a").is_some() && read_pid("b").is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    for name in ["a", "b"] {
        let pid = read_pid(name).unwrap();
        eventually("the case's command ended", || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        });
    }
    // The next run (its `run` checks that no task folder is left) sweeps the stale ones.
    sweep.ok(&["true", ":::", "1"]);
}

#[test]
fn colsep_splits_values_into_columns() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("table.tsv"), "amp\t1k\nbias\t2 V\n").unwrap();
    let out = sweep.ok(&[
        "-k",
        "--colsep",
        "\\t",
        "-a",
        "table.tsv",
        "echo",
        "{2}:{1}",
    ]);
    assert_eq!(lines(&out), ["1k:amp", "2 V:bias"]);
    sweep.refuses(
        &["--colsep", "(", "echo", ":::", "a"],
        "--colsep `(` is not a regular expression",
    );
}

#[test]
fn workers_are_started_with_run_alone_so_they_read_no_input() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("cases.txt"), "a\n").unwrap();
    // The command's parent is its supervisor, a fork of the worker: same command line.
    let out = sweep.ok(&[
        "-a",
        "cases.txt",
        "--joblog",
        "jl",
        "tr '\\0' ' ' < /proc/$PPID/cmdline; : {}",
    ]);
    assert_eq!(out, format!("{} run ", env!("CARGO_BIN_EXE_parvm")));
}

/// `mpirun -n RANKS parvm run WORDS...` in `sweep`'s folders, as `mpirun`'s arguments.
#[cfg(feature = "mpi")]
fn under_mpirun(sweep: &Sweep, ranks: usize, words: &[&str]) -> Vec<String> {
    let mut args = vec!["-n".to_owned(), ranks.to_string(), "-wdir".to_owned()];
    args.push(sweep.shared.display().to_string());
    for (name, value) in [
        ("PARALLEL_MIRRORED_STORAGE", &sweep.shared),
        ("PARALLEL_LOCAL_STORAGE", &sweep.local),
    ] {
        args.push("-x".to_owned());
        args.push(format!("{name}={}", value.display()));
    }
    args.push(env!("CARGO_BIN_EXE_parvm").to_owned());
    args.push("run".to_owned());
    args.extend(words.iter().map(|word| (*word).to_owned()));
    args
}

/// `mpirun -n 3 parvm run ...`: rank 0 runs the sweep, ranks 1 and 2 are its workers.
#[cfg(feature = "mpi")]
#[test]
fn the_same_sweep_runs_under_mpirun() {
    use std::time::{Duration, Instant};

    use parvm_test_support::mpirun::{Mpirun, skip_without_mpirun};

    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let sweep = Sweep::new();
    let log = sweep.shared.join("mpi.log");
    let log_arg = log.display().to_string();
    let args = under_mpirun(
        &sweep,
        3,
        &[
            "-k", "--joblog", &log_arg, "echo", "case", "{#}", "{%}", ":::", "a", "b", "c", "d",
        ],
    );
    let run = Mpirun::run(
        &mpirun,
        &args,
        &[],
        Instant::now() + Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.all());
    let cases: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("case "))
        .collect();
    assert_eq!(cases.len(), 4, "{}", run.all());
    for (i, line) in cases.iter().enumerate() {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            words[1],
            (i + 1).to_string(),
            "-k keeps input order: {line}"
        );
        assert!(
            ["1", "2"].contains(&words[2]),
            "slots are the worker ranks 1 and 2: {line}"
        );
    }
    let joblog = std::fs::read_to_string(&log).unwrap();
    assert_eq!(joblog.lines().count(), 5, "{joblog}");
    sweep.assert_no_task_folder_left();
}

/// Under mpirun rank 0's standard input is a pipe whatever mpirun's own is, so a sweep
/// without inputs reads it, and says so.
#[cfg(feature = "mpi")]
#[test]
fn under_mpirun_a_sweep_without_inputs_says_it_reads_what_mpirun_passes_on() {
    use std::time::{Duration, Instant};

    use parvm_test_support::mpirun::{Mpirun, skip_without_mpirun};

    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let sweep = Sweep::new();
    let deadline = || Instant::now() + Duration::from_secs(120);
    // mpirun's own standard input is /dev/null here: no case.
    let run = Mpirun::run(
        &mpirun,
        &under_mpirun(&sweep, 2, &["echo", "hi"]),
        &[],
        deadline(),
    );
    assert!(run.status.success(), "{}", run.all());
    assert!(
        run.stderr.contains("standard input mpirun passes on"),
        "{}",
        run.all()
    );
    assert!(!run.stdout.contains("hi"), "{}", run.all());
    // `-n 1`, as the message says: the command once, and no word about standard input.
    let words = ["-n", "1", "echo", "hi"];
    let run = Mpirun::run(&mpirun, &under_mpirun(&sweep, 2, &words), &[], deadline());
    assert!(run.status.success(), "{}", run.all());
    assert_eq!(run.stdout.matches("hi").count(), 1, "{}", run.all());
    assert!(!run.stderr.contains("standard input"), "{}", run.all());
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_shell_script_given_as_several_words_is_warned_about_once() {
    let sweep = Sweep::new();
    // Joined and run by sh, `sh -c echo hello a` prints an empty line: said before it runs.
    let out = sweep.run(&["-k", "sh", "-c", "echo hello {}", ":::", "a", "b"]);
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\n\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(stderr.contains("runs only `echo`"), "{stderr}");
    assert!(stderr.contains("-q"), "{stderr}");
    // With -q, or the script quoted for the shell, it does what it says and nothing is said.
    for args in [
        &["-k", "-q", "sh", "-c", "echo hello {}", ":::", "a", "b"][..],
        &["-k", "sh", "-c", "'echo hello {}'", ":::", "a", "b"],
    ] {
        let out = sweep.run(args);
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello a\nhello b\n",
            "{args:?}"
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
