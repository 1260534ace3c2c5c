//! `parvm run` flags end to end, through the real binary: `--halt`, `--timeout P%`,
//! `--each-host`, replacement strings in `--return`, lazy cases, the progress bar.

use super::run::{Sweep, lines};

/// The joblog rows after the header: (Seq, Exitval, Command).
fn joblog(sweep: &Sweep, name: &str) -> Vec<(String, String, String)> {
    let log = std::fs::read_to_string(sweep.shared.join(name)).unwrap();
    log.lines()
        .skip(1)
        .map(|line| {
            let row: Vec<&str> = line.split('\t').collect();
            (row[0].to_owned(), row[6].to_owned(), row[8].to_owned())
        })
        .collect()
}

/// A command for `{}` in `::: fail ok wait`-style cases: `ok N` exits N at once, `wait`
/// blocks until stopped, `fail N` exits N once every `wait` case has started (each
/// `wait` case touches `<shared>/started-{#}` first), so the failure comes while they run.
fn behaviour(sweep: &Sweep, waits: usize) -> String {
    let dir = sweep.shared.display();
    format!(
        "v={{}}; set -- $v; case $1 in \
         ok) exit $2;; \
         wait) touch {dir}/started-{{#}}; exec sleep 60;; \
         fail) while [ $(ls {dir} | grep -c '^started-') -lt {waits} ]; do sleep 0.01; done; exit $2;; \
         esac"
    )
}

#[test]
fn halt_now_fail_stops_the_running_cases_and_exits_with_the_failing_code() {
    let sweep = Sweep::new();
    let command = behaviour(&sweep, 1);
    let out = sweep.run(&[
        "-j",
        "2",
        "--halt",
        "now,fail=1",
        "--joblog",
        "jl",
        &command,
        ":::",
        "wait",
        "fail 3",
        "ok 0",
        "ok 0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // Only the failing case ran to its end; the stopped and never started ones are left
    // out of the joblog, so --resume runs them.
    let rows = joblog(&sweep, "jl");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("2", "3"));
    // Case 1 was running: it says it was stopped, and after how long.
    assert!(stderr.contains("case 1 stopped after "), "{stderr}");
    assert!(
        stderr.contains("halted by --halt now,fail=1") && stderr.contains("3 not run"),
        "{stderr}"
    );
}

#[test]
fn json_records_say_which_cases_a_halt_stopped_and_which_it_did_not_run() {
    let sweep = Sweep::new();
    let command = behaviour(&sweep, 1);
    let out = sweep.run(&[
        "--json",
        "-j",
        "2",
        "--halt",
        "now,fail=1",
        &command,
        ":::",
        "wait",
        "fail 3",
        "ok 0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<(u64, String)> = stdout
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                record["case"].as_u64().unwrap(),
                record["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let outcome = |case| {
        outcomes
            .iter()
            .find(|(c, _)| *c == case)
            .map(|(_, o)| o.as_str())
    };
    assert_eq!(outcome(1), Some("stopped"), "{stdout}");
    assert_eq!(outcome(2), Some("failed"), "{stdout}");
    assert_eq!(outcome(3), Some("not run"), "{stdout}");
}

#[test]
fn halt_soon_lets_running_cases_finish() {
    let sweep = Sweep::new();
    let dir = sweep.shared.display();
    // Case 1 runs until the joblog records case 2's failure, which is written just
    // before the halt: it is running when the halt comes and must still end by itself.
    let command = format!(
        "v={{}}; set -- $v; case $1 in \
         slow) until awk -F'\\t' '$7 == 4 {{ f = 1 }} END {{ exit !f }}' {dir}/jl; do sleep 0.01; done; echo slow ended;; \
         fail) exit 4;; \
         esac"
    );
    let out = sweep.run(&[
        "-j",
        "2",
        "--halt",
        "soon,fail=1",
        "--joblog",
        "jl",
        &command,
        ":::",
        "slow",
        "fail",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "slow ended\n");
    let mut rows = joblog(&sweep, "jl");
    rows.sort();
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|(seq, exit, _)| (seq.as_str(), exit.as_str()))
        .collect();
    assert_eq!(got, [("1", "0"), ("2", "4")]);
}

#[test]
fn halt_success_and_done_count_cases_or_percentages() {
    let sweep = Sweep::new();
    let command = behaviour(&sweep, 0);
    // The first success halts: exit 0, the waiting case stopped.
    let out = sweep.run(&[
        "-j",
        "2",
        "--halt",
        "now,success=1",
        "--joblog",
        "jl",
        &command,
        ":::",
        "wait",
        "ok 0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(joblog(&sweep, "jl").len(), 1);
    // One worker: after 50% of 4 cases are done the other two do not run; they count
    // as failed.
    let out = sweep.run(&[
        "-j",
        "1",
        "--halt",
        "now,done=50%",
        "--joblog",
        "jl",
        &command,
        ":::",
        "ok 0",
        "ok 0",
        "wait",
        "wait",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(joblog(&sweep, "jl").len(), 2);
    // fail=P%: the exit status is the percentage of cases that failed.
    let out = sweep.run(&[
        "-j",
        "1",
        "--halt",
        "now,fail=50%",
        "--joblog",
        "jl",
        &command,
        ":::",
        "ok 0",
        "ok 5",
        "ok 6",
        "wait",
    ]);
    assert_eq!(out.status.code(), Some(50));
    let exits: Vec<String> = joblog(&sweep, "jl").into_iter().map(|r| r.1).collect();
    assert_eq!(exits, ["0", "5", "6"]);
}

#[test]
fn bad_halt_settings_are_refused() {
    let sweep = Sweep::new();
    for (given, reason) in [
        ("sometimes", "it has no `,`"),
        ("later,fail=1", "WHEN is `soon` or `now`"),
        ("now,crash=1", "WHY is `fail`, `success` or `done`"),
        ("now,fail=0", "COUNT is a number of cases from 1"),
        ("soon,done=120%", "P in `P%` is above 0 and at most 100"),
    ] {
        sweep.refuses(
            &["--halt", given, "true"],
            &format!("--halt `{given}` is not a halt setting ({reason}"),
        );
    }
    assert_eq!(
        lines(&sweep.ok(&["--halt", "never", "echo", ":::", "x"])),
        ["x"]
    );
}

#[test]
fn timeout_percent_of_the_median_stops_a_case_far_slower_than_the_others() {
    let sweep = Sweep::new();
    // Case 1 starts before any case succeeded, when there is no median yet; it is
    // stopped once three cases did and it has run past 1000% of their median (about
    // 2 s), as GNU parallel does. The fast cases stay far below the limit.
    let mut args = vec![
        "-j",
        "2",
        "-k",
        "--timeout",
        "1000%",
        "--joblog",
        "jl",
        "sleep",
        ":::",
        "60",
    ];
    args.extend(["0.2"; 7]);
    let out = sweep.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("case 1 timed out after"), "{stderr}");
    let rows = joblog(&sweep, "jl");
    assert_eq!(rows.len(), 8, "{rows:?}");
    for (seq, exit, _) in &rows {
        assert_eq!(exit, if seq == "1" { "-1" } else { "0" }, "{rows:?}");
    }
    sweep.refuses(&["--timeout", "-5%", "true"], "--timeout `-5%`");
    // No limit, as GNU parallel takes it.
    sweep.ok(&["--timeout", "0", "true"]);
}

#[test]
fn return_patterns_take_replacement_strings_and_match_values_literally() {
    let sweep = Sweep::new();
    // Each case writes its own file, and a decoy that the value's `*` would match as a
    // glob; only the literal name comes back.
    sweep.ok(&[
        "--results",
        "r",
        "-k",
        "--return",
        "out/{/.}-{#}.raw",
        "v={};",
        "b=$(basename \"${v%.*}\");",
        "mkdir out; echo $v > \"out/$b-{#}.raw\"; echo decoy > \"out/${b%%\\**}X-{#}.raw\"",
        ":::",
        "dir/amp.cir",
        "we*.cir",
    ]);
    let r = sweep.shared.join("r");
    assert_eq!(
        std::fs::read_to_string(r.join("1/out/amp-1.raw")).unwrap(),
        "dir/amp.cir\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("2/out/we*-2.raw")).unwrap(),
        "we*.cir\n"
    );
    assert!(!r.join("2/out/weX-2.raw").exists());
    assert!(!r.join("1/out/ampX-1.raw").exists());
    sweep.refuses(
        &["--results", "r2", "--return", "{%}.raw", "true", ":::", "a"],
        "--return `{%}.raw` uses `{%}`",
    );
    sweep.refuses(
        &["--results", "r2", "--return", "{}.raw", "true"],
        "`{}` but has no inputs",
    );
}

/// `::: 0 .. 999` three times: 10^9 combinations.
fn a_billion_cases(args: &mut Vec<String>) {
    for _ in 0..3 {
        args.push(":::".to_owned());
        args.extend((0..1000).map(|i| i.to_string()));
    }
}

/// The first `count` lines of the child's stdout, read in a thread, or a failure after
/// 60 s (a run that made every case first would not print within it).
fn first_lines(child: &mut std::process::Child, count: usize) -> Vec<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().take(count) {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    (0..count)
        .map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("no line within 60 s")
        })
        .collect()
}

#[test]
fn a_billion_combinations_start_at_once_and_dry_run_streams() {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let sweep = Sweep::new();
    let mut args = vec!["--dry-run".to_owned(), "echo".to_owned()];
    a_billion_cases(&mut args);
    let mut child = sweep
        .command(&args)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = super::run::GroupGuard(child.id());
    assert_eq!(
        first_lines(&mut child, 3),
        ["echo 0 0 0", "echo 0 0 1", "echo 0 0 2"]
    );
    // Its reader is gone (as with `| head`): it ends quietly, and well.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // A real run starts too, and stops after 4 cases; the cases never made count as
    // not run, so the status is past 100.
    let mut args = vec![
        "-j".to_owned(),
        "2".to_owned(),
        "-k".to_owned(),
        "--halt".to_owned(),
        "now,done=4".to_owned(),
        "echo".to_owned(),
    ];
    a_billion_cases(&mut args);
    let out = sweep.run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert_eq!(
        lines(&String::from_utf8_lossy(&out.stdout))[..4],
        ["0 0 0", "0 0 1", "0 0 2", "0 0 3"]
    );
    assert!(stderr.contains("halted by --halt now,done=4"), "{stderr}");
}

#[test]
fn standard_input_is_read_line_by_line_as_cases_start() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let sweep = Sweep::new();
    let marks = sweep.shared.join("marks");
    std::fs::create_dir(&marks).unwrap();
    let command = format!("touch {}/{{}}; echo got {{}}", marks.display());
    let mut child = sweep
        .command(&["-k", "-a", "-", &command])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = super::run::GroupGuard(child.id());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a\nb\n").unwrap();
    stdin.flush().unwrap();
    // The cases run while standard input is still open.
    super::run::eventually("both cases ran before the input ended", || {
        marks.join("a").exists() && marks.join("b").exists()
    });
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "got a\ngot b\n");
    sweep.assert_no_task_folder_left();
}

#[test]
fn a_bad_line_in_a_streamed_args_file_stops_the_run_after_the_cases_before_it() {
    let sweep = Sweep::new();
    std::fs::write(sweep.shared.join("cases"), b"ok\nbad\0\nnever\n").unwrap();
    let out = sweep.run(&["-j", "1", "-a", "cases", "echo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.contains("input value 2 of source 1 holds a NUL"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn each_host_on_one_machine_runs_each_case_once() {
    let sweep = Sweep::new();
    assert_eq!(lines(&sweep.ok(&["--each-host", "echo", "hi"])), ["hi"]);
    let out = sweep.ok(&[
        "--each-host",
        "-k",
        "--joblog",
        "jl",
        "echo",
        ":::",
        "a",
        "b",
    ]);
    assert_eq!(lines(&out), ["a", "b"]);
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    for row in log.lines().skip(1) {
        let host = row.split('\t').nth(1).unwrap();
        assert!(!host.is_empty() && host != ":", "{row}");
    }
    // --resume matches them by host and command line: nothing runs again, a new value
    // does.
    let out = sweep.ok(&[
        "--each-host",
        "-k",
        "--joblog",
        "jl",
        "--resume",
        "echo",
        ":::",
        "a",
        "b",
        "c",
    ]);
    assert_eq!(lines(&out), ["c"]);
}

#[test]
fn each_host_runs_every_case_on_every_tcp_worker_host() {
    use std::process::Stdio;

    use super::run::{ChildGuard, TcpRun};

    let sweep = Sweep::new();
    let TcpRun {
        mut spawner, addr, ..
    } = sweep.start_tcp(
        &[
            "-j",
            "2",
            "--each-host",
            "-k",
            "--joblog",
            "jl",
            "echo {} on $PARVM_HOSTNAME",
            ":::",
            "a",
            "b",
        ],
        Stdio::piped(),
    );
    let worker = |host: &str| {
        ChildGuard(
            sweep
                .worker(&addr)
                .env("PARVM_HOSTNAME", host)
                .spawn()
                .unwrap(),
        )
    };
    let _workers = [worker("alpha"), worker("beta")];
    let mut out = String::new();
    std::io::Read::read_to_string(&mut spawner.0.stdout.take().unwrap(), &mut out).unwrap();
    let status = spawner.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {out}");
    assert_eq!(
        lines(&out),
        ["a on alpha", "a on beta", "b on alpha", "b on beta"]
    );
    let rows = joblog(&sweep, "jl");
    assert_eq!(rows.len(), 4, "{rows:?}");
    let log = std::fs::read_to_string(sweep.shared.join("jl")).unwrap();
    let mut hosts: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|row| row.split('\t').nth(1).unwrap())
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["alpha", "alpha", "beta", "beta"]);
    sweep.assert_no_task_folder_left();
}

/// Runs `parvm <args>` with standard error (and output) on a terminal, through
/// `script`; returns what the terminal showed.
fn on_a_terminal(sweep: &Sweep, args: &str) -> String {
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_parvm")),
            "/dev/null",
        ])
        .current_dir(&sweep.shared)
        .env("PARALLEL_MIRRORED_STORAGE", &sweep.shared)
        .env("PARALLEL_LOCAL_STORAGE", &sweep.local)
        .env("PARVM_WORKERS", "2")
        .env_remove("PARVM_TRANSPORT")
        .env_remove("PARVM_HOSTNAME")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("`script` (util-linux) runs a command on a terminal");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_progress_bar_on_a_terminal_only_and_never_with_json() {
    let sweep = Sweep::new();
    let cases = "sleep ::: 0.2 0.2 0.2 0.2";
    let shown = on_a_terminal(&sweep, &format!("run -j 2 {cases}"));
    assert!(
        shown.contains("/4 cases,") && shown.contains(" left ["),
        "no progress bar: {shown:?}"
    );
    // Cases read from standard input have no known count: a count without a bar.
    std::fs::write(sweep.shared.join("list"), "0.2\n0.2\n").unwrap();
    let shown = on_a_terminal(&sweep, "run -j 2 -a - sleep < list");
    assert!(shown.contains(" cases ["), "no case count: {shown:?}");
    assert!(!shown.contains(" left ["), "{shown:?}");
    let shown = on_a_terminal(&sweep, &format!("--json run -j 2 {cases}"));
    assert!(!shown.contains("cases"), "a bar with --json: {shown:?}");
    // In a pipe, nothing of it.
    let out = sweep.run(&["-j", "2", "sleep", ":::", "0.2", "0.2"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_describes_every_flag_added_here() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parvm"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for text in [
        "--halt <WHEN,WHY=COUNT>",
        "now,fail=1",
        "soon,fail=10%",
        "--timeout <DURATION|P%>",
        "median runtime",
        "--each-host",
        "out/{/.}.raw",
    ] {
        assert!(
            help.contains(text),
            "`parvm run --help` lacks `{text}`:\n{help}"
        );
    }
}

#[test]
fn gnu_parallel_command_lines_run_or_say_what_to_use_instead() {
    let sweep = Sweep::new();
    // Attached values, and options that change nothing here.
    assert_eq!(
        sweep.ok(&[
            "-j2",
            "-k",
            "--will-cite",
            "--bar",
            "--eta",
            "echo",
            ":::",
            "a",
            "b"
        ]),
        "a\nb\n"
    );
    // -v: each command line before its output, on stdout; --lb: as the case is handed out.
    assert_eq!(
        sweep.ok(&["-k", "-v", "--group", "echo", ":::", "a", "b"]),
        "echo a\na\necho b\nb\n"
    );
    let lines = sweep.ok(&["-j1", "-v", "--linebuffer", "echo", ":::", "a"]);
    assert_eq!(lines, "echo a\na\n");
    // --joblog -: the joblog on stdout; nothing to resume from there.
    let out = sweep.ok(&["-k", "--joblog", "-", "echo", ":::", "a"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("Seq\tHost\t"), "{out}");
    assert_eq!(lines[1], "a");
    assert!(
        lines[2].starts_with("1\t") && lines[2].ends_with("\techo a"),
        "{out}"
    );
    assert!(!sweep.shared.join("-").exists());
    sweep.refuses(
        &["--joblog", "-", "--resume", "echo", ":::", "a"],
        "--resume reads the joblog",
    );
    // -N: the next N values of the one source per case, the last what is left.
    assert_eq!(
        sweep.ok(&["-k", "-N2", "echo", "{1}-{2}", ":::", "a", "b", "c"]),
        "a-b\nc-\n"
    );
    assert_eq!(
        sweep.ok(&["-k", "--max-args", "2", "echo", ":::", "a", "b", "c"]),
        "a b\nc\n"
    );
    sweep.refuses(
        &["-N2", "echo", ":::", "a", ":::", "b"],
        "so it takes exactly one source (here 2)",
    );
    // -I: a string of one's own for the value; `{}` is then text.
    assert_eq!(
        sweep.ok(&["-k", "-I", "@@", "echo", "x@@y", "{}", ":::", "a", "b"]),
        "xay {}\nxby {}\n"
    );
    // An option it does not have is refused, never run as the command, with what to use.
    for (option, named, instead) in [
        ("--pipe", "--pipe", "each value piped in is one case"),
        ("-X", "-X", "the next N values of the one source"),
        ("-Sserver", "-S", "parvm worker --connect"),
        ("--trc", "--trc", "--return GLOB"),
    ] {
        let args = [option, "echo", ":::", "a"];
        sweep.refuses(&args, &format!("parvm run has no `{named}`"));
        let out = sweep.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(instead), "{option}: {stderr}");
        assert!(out.stdout.is_empty(), "{option}: ran");
    }
    // One it does not know at all: clap's error, not a case.
    sweep.refuses(
        &["--bogus", "echo", ":::", "a"],
        "unexpected argument '--bogus'",
    );
}

#[test]
fn results_as_a_table_have_gnu_parallels_columns_with_values_and_output() {
    let sweep = Sweep::new();
    // Two sources; stdout with a tab and a line break, stderr, and an exit code.
    let case = "printf '%s\\t%s\\n' {1} {2}; echo warned >&2; exit {2}";
    sweep.status(
        2,
        &[
            "-k",
            "--results",
            "out.tsv",
            case,
            ":::",
            "a",
            "b c",
            ":::",
            "0",
            "3",
        ],
    );
    let text = std::fs::read_to_string(sweep.shared.join("out.tsv")).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert_eq!(
        lines[0],
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\tV1\tV2\tStdout\tStderr\n"
    );
    // Each row takes three lines: its quoted stdout and stderr each end with a line break.
    let rows: Vec<String> = lines[1..].chunks(3).map(<[&str]>::concat).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, (value, exit)) in
        rows.iter()
            .zip([("a", "0"), ("a", "3"), ("b c", "0"), ("b c", "3")])
    {
        let fields: Vec<&str> = row.splitn(10, '\t').collect();
        assert_eq!(fields[6], exit, "{row}");
        let quoted_value = if value.contains(' ') {
            format!("\"{value}\"")
        } else {
            value.to_owned()
        };
        assert!(
            fields[9].starts_with(&format!(
                "{quoted_value}\t{exit}\t\"{value}\t{exit}\n\"\t\"warned\n\""
            )),
            "{row}"
        );
    }
    // -N: the short last case gets an empty value column, so every row has them all.
    sweep.ok(&[
        "-k",
        "-N2",
        "--results",
        "n.csv",
        "echo",
        ":::",
        "a",
        "b",
        "c",
    ]);
    let table = std::fs::read_to_string(sweep.shared.join("n.csv")).unwrap();
    assert!(table.contains(",\"echo c\",c,,\"c\n\","), "{table}");
    // CSV: a value with a comma is quoted; a run that would overwrite rows is refused.
    sweep.ok(&["--results", "out.csv", "echo", ":::", "x,y"]);
    let csv = std::fs::read_to_string(sweep.shared.join("out.csv")).unwrap();
    assert!(
        csv.lines().nth(1).unwrap().ends_with(",\"x,y\",\"x,y"),
        "{csv}"
    );
    sweep.refuses(
        &["--results", "out.csv", "echo", ":::", "z"],
        "holds rows of an earlier run",
    );
    // Files come back into a folder only.
    sweep.refuses(
        &["--results", "t.tsv", "--return", "x", "true", ":::", "a"],
        "--return needs a folder",
    );
    // --resume-failed adds the rows of the cases it runs again.
    for resume in [&[][..], &["--resume-failed"]] {
        let table = ["--joblog", "jl", "--results", "r.tsv"];
        let cases = ["exit", ":::", "0", "1"];
        sweep.status(1, &[&table[..], resume, &cases].concat());
    }
    let rows = std::fs::read_to_string(sweep.shared.join("r.tsv")).unwrap();
    assert_eq!(rows.lines().count(), 4, "{rows}");
}
