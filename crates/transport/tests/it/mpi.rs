//! The MPI backend under a real `mpirun`, driving the `parvm-mpi-echo` test binary.
//!
//! Skipped, with a message, when `mpirun` is not on the PATH. Every run has a deadline
//! and a guard that ends mpirun and its ranks, so a hang fails the test instead of CI.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use parvm_test_support::mpirun::{Mpirun, Run, skip_without_mpirun};

const ECHO: &str = env!("CARGO_BIN_EXE_parvm-mpi-echo");

/// How long one mpirun may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// The tests time waits and measure CPU: one mpirun at a time keeps them from competing
/// for the machine's cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `mpirun --oversubscribe <args>`; `None` (after saying so) when mpirun is missing.
fn mpirun(args: &[&str]) -> Option<Run> {
    let mpirun = skip_without_mpirun()?;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    Some(Mpirun::run(&mpirun, &args, &[], Instant::now() + DEADLINE))
}

fn mpirun_ok(args: &[&str]) -> Option<Run> {
    let run = mpirun(args)?;
    assert!(
        run.status.success(),
        "mpirun {args:?} failed: {}\n{}",
        run.status,
        run.all()
    );
    Some(run)
}

#[test]
fn ranks_sizes_and_the_processor_name() {
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "info"]) else {
        return;
    };
    let lines = run.lines("info");
    assert_eq!(lines.len(), 3, "{}", run.all());
    let host = nix::unistd::gethostname().expect("hostname");
    let host = host.to_string_lossy();
    let mut ranks: Vec<&str> = lines.iter().map(|line| line["rank"].as_str()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, ["0", "1", "2"]);
    for line in &lines {
        assert_eq!(line["size"], "3");
        assert_eq!(line["backend"], "mpi");
        assert_eq!(line["launched"], "true");
        // Workers join through `worker_from_env`, the spawner does not.
        let hook = if line["rank"] == "0" { "false" } else { "true" };
        assert_eq!(line["hook"], hook);
        assert_eq!(line["host"], host);
        assert_eq!(line["peers"], format!("0:{host},1:{host},2:{host}"));
    }
}

#[test]
fn hosts_come_from_parvm_hostname_per_app_context() {
    let Some(run) = mpirun_ok(&[
        "-np",
        "1",
        "-x",
        "PARVM_HOSTNAME=a",
        ECHO,
        "info",
        ":", //
        "-np",
        "2",
        "-x",
        "PARVM_HOSTNAME=b",
        ECHO,
        "info",
    ]) else {
        return;
    };
    let lines = run.lines("info");
    assert_eq!(lines.len(), 3, "{}", run.all());
    for line in &lines {
        assert_eq!(line["peers"], "0:a,1:b,2:b", "{}", run.all());
        let expected = if line["rank"] == "0" { "a" } else { "b" };
        assert_eq!(line["host"], expected);
    }
}

#[test]
fn an_empty_parvm_hostname_is_refused_by_name() {
    let Some(run) = mpirun(&["-n", "2", "-x", "PARVM_HOSTNAME=", ECHO, "info"]) else {
        return;
    };
    assert!(!run.status.success(), "{}", run.all());
    assert!(
        run.stderr.contains("PARVM_HOSTNAME is empty"),
        "{}",
        run.all()
    );
}

#[test]
fn ping_pong_from_0_bytes_to_10_mib_keeps_every_byte() {
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "pingpong"]) else {
        return;
    };
    assert_eq!(run.lines("pingpong").len(), 1, "{}", run.all());
}

#[test]
fn ranks_sending_10_mib_to_each_other_at_once_do_not_deadlock() {
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "exchange"]) else {
        return;
    };
    assert_eq!(run.lines("exchange").len(), 3, "{}", run.all());
}

#[test]
fn one_thread_sends_while_another_waits_in_recv() {
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "threads"]) else {
        return;
    };
    assert_eq!(run.lines("threads").len(), 1, "{}", run.all());
}

#[test]
fn parts_of_every_shape_arrive_as_one_payload() {
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "parts"]) else {
        return;
    };
    assert_eq!(run.lines("parts").len(), 1, "{}", run.all());
}

#[test]
fn malformed_messages_are_reported_and_a_missing_tail_holds_back_only_its_sender() {
    // The oversized message must go eagerly: Open MPI leaves the sender of a truncated
    // rendezvous message waiting forever, which would hang the test, not the receiver.
    let eager = ["--mca", "btl_vader_eager_limit", "16384"];
    let Some(run) = mpirun_ok(&[&eager[..], &["-n", "3", ECHO, "malformed"]].concat()) else {
        return;
    };
    assert_eq!(run.lines("malformed").len(), 1, "{}", run.all());
}

#[test]
fn timeouts_are_kept_and_waiting_does_not_spin() {
    // A spinning wait uses 100% of a core; the back-off uses about 3% (measured by the
    // benchmarks). The bound sits far from both, so a busy test machine cannot fail it.
    const SPINNING: f64 = 25.0;
    let Some(run) = mpirun_ok(&["-n", "3", ECHO, "timeouts"]) else {
        return;
    };
    let nowait = run.field("nowait", "elapsed_us");
    assert!(nowait < 20_000.0, "NoWait took {nowait} us\n{}", run.all());
    let for200 = run.field("for200", "elapsed_us");
    assert!(
        (200_000.0..600_000.0).contains(&for200),
        "For(200 ms) took {for200} us\n{}",
        run.all()
    );
    let for1s = run.field("for1s", "elapsed_us");
    assert!(
        (1_000_000.0..1_500_000.0).contains(&for1s),
        "For(1 s) took {for1s} us\n{}",
        run.all()
    );
    let cpu = run.field("for1s", "cpu_percent");
    assert!(
        cpu < SPINNING,
        "an idle recv(For(1 s)) used {cpu}% of a core\n{}",
        run.all()
    );
    let forever = run.lines("forever");
    assert_eq!(forever.len(), 2, "{}", run.all());
    for line in forever {
        let cpu: f64 = line["cpu_percent"].parse().expect("a number");
        assert!(
            cpu < SPINNING,
            "an idle recv(Forever) used {cpu}% of a core\n{}",
            run.all()
        );
    }
}

#[test]
fn a_dying_rank_ends_the_job_and_mpirun_names_it() {
    let Some(run) = mpirun(&["-n", "3", "-x", "PARVM_HOSTNAME=b", ECHO, "die"]) else {
        return;
    };
    assert!(!run.status.success(), "{}", run.all());
    assert!(
        run.stderr.contains("rank 2 on host b dies now"),
        "{}",
        run.all()
    );
    // Open MPI: "mpirun noticed that process rank 2 with PID ... on node ... exited on signal 6".
    assert!(run.all().contains("rank 2"), "{}", run.all());
    assert!(!run.stdout.contains("survived"), "{}", run.all());
}

#[test]
fn another_backend_named_in_parvm_transport_keeps_workers_off_the_mpi_hook() {
    let Some(run) = mpirun_ok(&["-n", "2", "-x", "PARVM_TRANSPORT=tcp", ECHO, "info"]) else {
        return;
    };
    let lines = run.lines("info");
    assert_eq!(lines.len(), 2, "{}", run.all());
    assert!(
        lines.iter().all(|line| line["hook"] == "false"),
        "{}",
        run.all()
    );
}
