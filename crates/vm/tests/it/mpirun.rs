//! Running under a real `mpirun`: the behaviour suite on the MPI backend, faults, and the
//! examples on simulated hosts.
//!
//! A suite test runs twice. Started by the test harness (the "outer" run), it asks this
//! test program for the test's host layout (a probe run that stops at `Harness::start`),
//! then starts `mpirun` with this test program, filtered to the one test, as rank 0 and
//! the test program (`parvm-vm-testprog`) as the workers, one MPMD app context per
//! simulated host with its own `PARVM_HOSTNAME`. Under mpirun (the "inner" run) the test
//! body runs for real on `Backend::Mpi`.
//!
//! Skipped, with a message, when `mpirun` is not on the PATH. Every mpirun has a deadline
//! and a guard that kills its process group, so a hang fails the test instead of CI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_test_support::mpirun::{Mpirun, Run, skip_without_mpirun};

/// Set (to anything) in a probe run: `Harness::start` prints the layout and exits.
pub const PROBE_VAR: &str = "PARVM_TEST_MPI_PROBE";
/// Set for rank 0 of a suite test's mpirun: run the test body.
const INNER_VAR: &str = "PARVM_TEST_MPI_INNER";
const LAYOUT_WORD: &str = "PARVM-TEST-LAYOUT";

/// How long one mpirun may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

const TESTPROG: &str = env!("CARGO_BIN_EXE_parvm-vm-testprog");

/// What the ranks of a suite test's mpirun must not inherit from the outer run.
const OUR_VARS: [&str; 2] = [PROBE_VAR, INNER_VAR];

fn run_to_end(mpirun: &Path, args: &[String]) -> Run {
    Mpirun::run(mpirun, args, &OUR_VARS, Instant::now() + DEADLINE)
}

/// The app context for `count` ranks of `program` on a simulated host: its own host
/// name, local storage and mirrored storage.
pub fn context(
    count: usize,
    host: &str,
    local: &Path,
    mirrored: &Path,
    extra: &[(&str, &str)],
    program: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "-np".to_owned(),
        count.to_string(),
        "-x".to_owned(),
        format!("PARVM_HOSTNAME={host}"),
        "-x".to_owned(),
        format!("PARALLEL_LOCAL_STORAGE={}", local.display()),
        "-x".to_owned(),
        format!("PARALLEL_MIRRORED_STORAGE={}", mirrored.display()),
    ];
    for (key, value) in extra {
        args.push("-x".to_owned());
        args.push(format!("{key}={value}"));
    }
    args.extend(program.iter().map(|p| (*p).to_owned()));
    args
}

/// Joins app contexts with `:`.
fn mpmd(contexts: Vec<Vec<String>>) -> Vec<String> {
    let mut args = Vec::new();
    for (i, context) in contexts.into_iter().enumerate() {
        if i > 0 {
            args.push(":".to_owned());
        }
        args.extend(context);
    }
    args
}

/// In a probe run: print the layout the test asks for, and end the process.
pub fn report_layout(hosts: &[(&str, usize)]) -> ! {
    let fields: Vec<String> = hosts.iter().map(|(h, n)| format!("{h}={n}")).collect();
    // Straight to the file descriptor: the test harness captures `println!`.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{LAYOUT_WORD} {}", fields.join(" "));
    let _ = out.flush();
    std::process::exit(0);
}

/// One test of the behaviour suite on the MPI backend; see the module docs.
pub fn suite_test(path: &str, body: fn(crate::harness::Backend)) {
    if std::env::var_os(INNER_VAR).is_some() || std::env::var_os(PROBE_VAR).is_some() {
        body(crate::harness::Backend::Mpi);
        return;
    }
    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    // libtest names tests without the crate's name.
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    let me = std::env::current_exe().expect("the test program's path");
    let filter = ["--exact", name, "--test-threads=1"];
    let probe = Command::new(&me)
        .args(filter)
        .env(PROBE_VAR, "1")
        .output()
        .expect("run the layout probe");
    let stdout = String::from_utf8_lossy(&probe.stdout);
    let layout: Vec<(String, usize)> = stdout
        .lines()
        .find_map(|line| Some(&line[line.find(LAYOUT_WORD)? + LAYOUT_WORD.len()..]))
        .unwrap_or_else(|| panic!("the probe of `{name}` printed no layout:\n{stdout}"))
        .split_whitespace()
        .map(|field| {
            let (host, count) = field.split_once('=').expect("host=count");
            (host.to_owned(), count.parse().expect("a count"))
        })
        .collect();
    let local = tempfile::tempdir().expect("temp folder");
    let shared = tempfile::tempdir().expect("temp folder");
    let me = me.display().to_string();
    let mut program = vec![me.as_str()];
    program.extend(filter);
    let mut contexts = vec![context(
        1,
        "spawner",
        local.path(),
        shared.path(),
        &[(INNER_VAR, "1")],
        &program,
    )];
    for (host, count) in &layout {
        contexts.push(context(
            *count,
            host,
            local.path(),
            shared.path(),
            &[],
            &[TESTPROG],
        ));
    }
    let run = run_to_end(&mpirun, &mpmd(contexts));
    assert!(
        run.status.success() && run.stdout.contains("1 passed"),
        "`{name}` on MPI failed\n{}",
        run.all()
    );
}

/// Task folders in the local storage root `local`, trash and markers excluded.
fn task_folders(local: &Path) -> Vec<PathBuf> {
    let user = parvm_env_config::current_user().expect("user");
    std::fs::read_dir(local.join(format!("parvm-{user}")))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The MPI rank of a process, from its environment.
fn rank_of(pid: i32) -> Option<u32> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|entry| {
        std::str::from_utf8(entry)
            .ok()?
            .strip_prefix("OMPI_COMM_WORLD_RANK=")?
            .parse()
            .ok()
    })
}

#[test]
fn a_killed_rank_ends_the_job_and_its_folders_are_swept_by_the_next_run() {
    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let local = tempfile::tempdir().expect("temp folder");
    let shared = tempfile::tempdir().expect("temp folder");
    let job = |scenario: &str| {
        mpmd(vec![
            context(
                1,
                "alpha",
                local.path(),
                shared.path(),
                &[],
                &[TESTPROG, scenario],
            ),
            context(2, "alpha", local.path(), shared.path(), &[], &[TESTPROG]),
        ])
    };
    let mut run = Mpirun::start(&mpirun, &job("hang"), &OUR_VARS);
    let deadline = Instant::now() + DEADLINE;
    let Some(ready) = run.wait_line("READY", deadline) else {
        panic!("no READY line\n{}", run.finish(deadline).all());
    };
    let pids: Vec<i32> = ready
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{ready}");
    crate::harness::wait_until("every worker has a task folder", || {
        task_folders(local.path()).len() == 2
    });
    let victim = pids[1];
    let rank = rank_of(victim).expect("the victim's rank");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a worker rank");
    let ended = run.finish(deadline);
    assert!(!ended.status.success(), "{}", ended.all());
    // Open MPI 4.1: "mpirun noticed that process rank 2 with PID 0 on node x exited on
    // signal 9 (Killed)" (it does not always know the pid).
    let all = ended.all();
    assert!(
        all.contains(&format!("process rank {rank} with PID"))
            && all.contains("on node")
            && all.contains("signal 9"),
        "mpirun names the killed rank {rank} (pid {victim}) and its node\n{all}"
    );
    crate::harness::wait_until("the ranks are reaped", || {
        pids.iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    // Every rank is gone, so their folders are stale; the next run's workers sweep them.
    let left = task_folders(local.path());
    assert_eq!(left.len(), 2, "the killed job leaves its folders: {left:?}");
    let next = run_to_end(&mpirun, &job("print"));
    assert!(next.status.success(), "{}", next.all());
    assert!(
        task_folders(local.path()).is_empty(),
        "stale folders swept: {:?}",
        task_folders(local.path())
    );
}

#[test]
fn mpi_without_workers_still_starts_and_finalizes() {
    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let local = tempfile::tempdir().expect("temp folder");
    let args = context(
        1,
        "solo",
        local.path(),
        local.path(),
        &[],
        &[TESTPROG, "start-finalize"],
    );
    let run = run_to_end(&mpirun, &args);
    assert!(run.status.success(), "{}", run.all());
}

/// The workspace's examples, built with the `mpi` feature into this test's target folder.
fn examples_folder() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(folder) = built.as_ref() {
        return folder.clone();
    }
    // <target>/<profile>/deps/it-<hash>
    let me = std::env::current_exe().expect("the test program's path");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("the test program lives in <target>/<profile>/deps");
    let target = profile_dir.parent().expect("the target folder");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--examples",
            "-p",
            "parvm",
            "--features",
            "mpi",
        ])
        .env("CARGO_TARGET_DIR", target);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo to build the examples");
    assert!(
        status.success(),
        "building the examples failed: {command:?}"
    );
    let folder = profile_dir.join("examples");
    *built = Some(folder.clone());
    folder
}

/// Three simulated hosts under one mpirun: `hosta` runs the spawner, `hostb` and `hostc`
/// two workers each. Every host has its own local storage and reaches the one shared
/// folder through its own symlink, as if mounted at another path.
struct Cluster {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    project: PathBuf,
    hosts: Vec<(String, PathBuf, PathBuf)>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("temp folder");
        let base = dir.path().canonicalize().expect("canonical temp folder");
        let shared = base.join("shared");
        let project = shared.join("project");
        std::fs::create_dir_all(project.join("models")).expect("project folder");
        std::fs::write(project.join("amp.cir"), "R1 in out 1k\n").expect("write");
        std::fs::write(project.join("opamp.inc"), ".subckt opamp\n").expect("write");
        std::fs::write(project.join("models/cmos.lib"), ".model nmos\n").expect("write");
        let hosts = ["hosta", "hostb", "hostc"]
            .iter()
            .map(|host| {
                let local = base.join(format!("local-{host}"));
                std::fs::create_dir_all(&local).expect("local storage");
                let link = base.join(format!("mnt-{host}"));
                std::os::unix::fs::symlink(&shared, &link).expect("symlink");
                ((*host).to_owned(), local, link)
            })
            .collect();
        Cluster {
            _dir: dir,
            shared,
            project,
            hosts,
        }
    }

    /// Runs `program` with the spawner on `hosta` and workers on the others, in the
    /// given order, started in the project folder as seen through hosta's mount.
    fn run(&self, mpirun: &Path, program: &Path, order: &[&str]) -> Run {
        let program = program.display().to_string();
        let (_, local_a, link_a) = &self.hosts[0];
        let mut contexts = vec![context(1, "hosta", local_a, link_a, &[], &[&program])];
        for host in order {
            let (name, local, link) = self
                .hosts
                .iter()
                .find(|(name, _, _)| name == host)
                .expect("a known host");
            contexts.push(context(2, name, local, link, &[], &[&program]));
        }
        let mut args = vec![
            "--wdir".to_owned(),
            link_a.join("project").display().to_string(),
        ];
        args.extend(mpmd(contexts));
        let run = run_to_end(mpirun, &args);
        assert!(run.status.success(), "{program} failed\n{}", run.all());
        for (host, local, _) in &self.hosts {
            assert!(
                task_folders(local).is_empty(),
                "{program} left task folders on {host}: {:?}",
                task_folders(local)
            );
        }
        run
    }
}

#[test]
fn examples_on_three_simulated_hosts() {
    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let examples = examples_folder();
    let cluster = Cluster::new();

    let run = cluster.run(&mpirun, &examples.join("02-spawn"), &["hostb", "hostc"]);
    for host in ["hosta", "hostb", "hostc"] {
        assert!(
            run.stdout.contains(&format!("  {host}")),
            "lists {host}\n{}",
            run.all()
        );
    }
    assert_eq!(
        run.stdout.matches("TaskResult success=true").count(),
        2,
        "{}",
        run.all()
    );
    // The startup folder, translated on hostb through its own mount.
    assert!(
        run.stdout
            .contains(&format!("on hostb in {}", cluster.project.display())),
        "{}",
        run.all()
    );

    // 04 spawns one task on the first worker host: once with hostb first, once hostc.
    for (first, second) in [("hostb", "hostc"), ("hostc", "hostb")] {
        let run = cluster.run(&mpirun, &examples.join("04-mirror"), &[first, second]);
        let (_, local, _) = cluster
            .hosts
            .iter()
            .find(|(name, _, _)| name == first)
            .expect("a known host");
        let hello = run
            .stdout
            .lines()
            .find(|line| line.contains("Hello, I am task"))
            .unwrap_or_else(|| panic!("no greeting\n{}", run.all()));
        assert!(
            hello.contains(&format!("on {first} in {}", local.display())),
            "the task ran in {first}'s own local storage: {hello}\n{}",
            run.all()
        );
        assert!(
            run.stdout.contains(r#"Dirs      : ["models"]"#)
                && run
                    .stdout
                    .contains(r#"Files     : ["amp.cir", "opamp.inc"]"#),
            "mirrored on {first}\n{}",
            run.all()
        );
    }

    let run = cluster.run(
        &mpirun,
        &examples.join("06-spawn-result"),
        &["hostb", "hostc"],
    );
    for expected in ["1+1=2", "5*5=25", "2**7=128", "bla*bla=[EVAL ERROR]"] {
        assert!(run.stdout.contains(expected), "{expected}\n{}", run.all());
    }
    assert!(
        cluster.shared.join("project/amp.cir").is_file(),
        "the shared folder is untouched"
    );
}
