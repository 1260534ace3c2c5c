//! Dispatch under faults that need worker processes: workers killed mid-sweep, every
//! worker killed, a function past its time limit, workers joining mid-dispatch; and the
//! throughput measurement.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{Error, Job, JobOutcome, JobResult, Spawn, Vm};

use crate::dispatch::{AT_ONCE, value};
use crate::harness::{Backend, Harness, collect};

#[test]
fn a_function_past_its_limit_is_stopped() {
    // A function cannot be interrupted: its worker exits (local backend).
    let h = Harness::start_hosts(Backend::Local, &[("alpha", 2), ("beta", 1)]);
    let vm = h.vm();
    let jobs = (0..10i64).map(|i| {
        if i == 2 {
            Job::task("sleep", &60_000u64).timeout(Duration::from_millis(300))
        } else {
            Job::task("add", &(i, 0i64))
        }
    });
    let results: Vec<JobResult> = within("a dispatch with a time limit", move || {
        vm.dispatch(jobs).map(|r| r.unwrap()).collect()
    });
    assert!(
        matches!(results[2].outcome, JobOutcome::TimedOut { .. }),
        "{}",
        results[2]
    );
    assert_eq!(results[2].attempts, 1);
    for result in results.iter().filter(|r| r.index != 2) {
        assert_eq!(
            value(result),
            i64::try_from(result.index).unwrap(),
            "{result}"
        );
    }
}

/// The pids of every worker, from a `pid` task on each slot.
fn worker_pids(vm: &Vm) -> Vec<i32> {
    let ids = vm.spawn(Spawn::task("pid", &()).fill()).unwrap();
    let (outcomes, _) = collect(vm, &ids);
    ids.iter()
        .map(|id| i32::try_from(outcomes[id].value::<u32>()).unwrap())
        .collect()
}

/// Kills the listed processes when dropped, if still alive.
struct PidsGuard(Vec<i32>);

impl Drop for PidsGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// [`crate::harness::within`] [`AT_ONCE`].
fn within<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    crate::harness::within(what, AT_ONCE, body)
}

fn a_killed_worker_s_jobs_run_again_elsewhere(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 2), ("beta", 2)]);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    let victim = pids[0];
    assert_eq!(vm.workers_lost(), 0);
    let jobs = (0..80u64).map(|_| Job::task("sleep_pid", &30u64));
    let mut seen = BTreeSet::new();
    let mut rerun = 0;
    let mut killed = false;
    vm.dispatch(jobs)
        .unordered()
        .for_each(|result| {
            let pid = match &result.outcome {
                JobOutcome::Value(v) => i32::try_from(v.decode::<u32>().unwrap()).unwrap(),
                other => panic!("job {}: {other}", result.index),
            };
            assert!(seen.insert(result.index), "job {} twice", result.index);
            if result.attempts > 1 {
                rerun += 1;
                assert_ne!(
                    pid, victim,
                    "job {} ran again on the dead worker",
                    result.index
                );
                assert_eq!(
                    result.host.as_ref().map(ToString::to_string).as_deref(),
                    Some("beta")
                );
            }
            if seen.len() == 8 && !killed {
                kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
                killed = true;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, (0..80).collect());
    assert_eq!(rerun, 1, "the job the killed worker ran runs again, once");
    // A replacement (local) is a new worker: the loss still counts.
    assert_eq!(vm.workers_lost(), 1);
}

#[test]
fn local_a_killed_worker_s_jobs_run_again_elsewhere() {
    a_killed_worker_s_jobs_run_again_elsewhere(Backend::Local);
}

#[test]
fn tcp_a_killed_worker_s_jobs_run_again_elsewhere() {
    a_killed_worker_s_jobs_run_again_elsewhere(Backend::Tcp);
}

#[test]
fn workers_that_join_during_a_dispatch_get_jobs() {
    let mut h = Harness::start_hosts(Backend::Tcp, &[("alpha", 1)]);
    let vm = h.vm();
    let mut dispatch = vm
        .dispatch((0..400u64).map(|_| Job::task("sleep_pid", &5u64)))
        .unordered();
    let first = dispatch.next().unwrap().unwrap();
    assert_eq!(first.host.unwrap().to_string(), "alpha");
    // One on a known host, one on a new host.
    h.join_tcp_worker("alpha");
    h.join_tcp_worker("beta");
    let mut pids = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    let mut seen = 1;
    for result in dispatch {
        let result = result.unwrap();
        let JobOutcome::Value(value) = &result.outcome else {
            panic!("{result}");
        };
        pids.insert(value.decode::<u32>().unwrap());
        hosts.insert(result.host.unwrap().to_string());
        seen += 1;
    }
    assert_eq!(seen, 400);
    assert_eq!(pids.len(), 3, "every worker ran jobs");
    assert_eq!(hosts, BTreeSet::from(["alpha".into(), "beta".into()]));
}

#[test]
fn every_worker_killed_ends_the_dispatch_with_the_unfinished_jobs() {
    let h = Harness::start(Backend::Local, 2);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    let (results, error) = within("a dispatch whose workers all died", move || {
        let jobs = (0..50u64).map(|i| Job::task("sleep", &if i < 4 { 0u64 } else { 60_000 }));
        let mut results = Vec::new();
        let mut error = None;
        for result in vm.dispatch(jobs).window(6) {
            match result {
                Ok(result) => {
                    assert!(result.outcome.is_success(), "{result}");
                    results.push(result.index);
                    if results.len() == 4 {
                        for pid in &pids {
                            kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
                        }
                    }
                }
                Err(e) => {
                    assert!(error.is_none(), "a second error: {e}");
                    error = Some(e);
                }
            }
        }
        (results, error)
    });
    assert_eq!(results, [0, 1, 2, 3]);
    let error = error.expect("the dispatch ends with an error");
    let Error::DispatchUnfinished { unfinished, source } = &error else {
        panic!("{error:?}");
    };
    // The jobs pulled and not reported when the workers died: from 4, within the window.
    assert!(
        !unfinished.is_empty()
            && unfinished.len() <= 6
            && unfinished.iter().copied().eq(4..4 + unfinished.len()),
        "{error}"
    );
    assert!(
        matches!(**source, Error::WorkersGone { lost: 2, .. }),
        "{source:?}"
    );
    let text = error.to_string();
    assert!(text.contains("(jobs 4, 5"), "names the jobs: {text}");
    assert!(
        text.contains("dispatch the unfinished jobs again"),
        "says what to do: {text}"
    );
}

#[test]
fn lost_attempts_are_limited() {
    // A job that kills its own worker is lost on every attempt: 1 + lost_retries.
    let h = Harness::start_hosts(Backend::Local, &[("alpha", 2), ("beta", 2)]);
    let vm = h.vm();
    let jobs = [Job::task("exit", &9i32), Job::task("add", &(1i64, 2i64))];
    let results: Vec<JobResult> = within("a dispatch losing workers", move || {
        vm.dispatch(jobs)
            .lost_retries(1)
            .map(|r| r.unwrap())
            .collect()
    });
    assert!(
        matches!(&results[0].outcome, JobOutcome::Lost { .. }),
        "{}",
        results[0]
    );
    assert_eq!(results[0].attempts, 2);
    assert_eq!(value(&results[1]), 3);
}

/// Throughput of no-op jobs on the local backend with two workers; a measurement, not a
/// check (run it in release: `cargo test --release -p parvm-vm --test it
/// dispatch::no_op_throughput -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement; run by hand in release"]
fn no_op_throughput() {
    let h = Harness::start(Backend::Local, 2);
    let vm = h.vm();
    let jobs = 100_000;
    // Warm up: workers started, folders and buffers in place.
    assert_eq!(
        vm.dispatch((0..1000).map(|_| Job::task("noop", &())))
            .count(),
        1000
    );
    let start = std::time::Instant::now();
    let done = vm
        .dispatch((0..jobs).map(|_| Job::task("noop", &())))
        .unordered()
        .filter(|r| r.as_ref().is_ok_and(|r| r.outcome.is_success()))
        .count();
    let dispatch = start.elapsed();
    assert_eq!(done, jobs);
    // The plain spawn loop: one task per free slot, wait for an exit, spawn again.
    let start = std::time::Instant::now();
    let mut left = jobs;
    let mut running = 0;
    while left > 0 || running > 0 {
        while left > 0 {
            let ids = vm.spawn(Spawn::task("noop", &())).unwrap();
            if ids.is_empty() {
                break;
            }
            left -= 1;
            running += 1;
        }
        if let parvm_vm::Message::TaskExit { .. } = vm.recv().unwrap() {
            running -= 1;
        }
    }
    let spawn_loop = start.elapsed();
    let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
    eprintln!(
        "{jobs} no-op jobs on 2 local workers: dispatch {:.0} jobs/s ({dispatch:?}), plain spawn loop {:.0} jobs/s ({spawn_loop:?})",
        rate(dispatch),
        rate(spawn_loop)
    );
}

/// Polls for `path` until it exists or `limit` passes; returns whether it appeared.
fn appears(path: &std::path::Path, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn a_lost_job_s_retry_leaves_no_slot_idle_when_the_other_host_is_full() {
    // Beta is kept full (a running and a queued job that wait for a gate); alpha's worker is
    // killed while it runs job 2, and replaced. The retry of job 2 prefers beta, which has
    // no place: it must take alpha's free replacement rather than wait for beta, which
    // opens only after the retry ran (or, should it never run, after a deadline).
    let h = Harness::start_replacing(
        Backend::Local,
        &[("alpha", 1), ("beta", 1)],
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        1,
    );
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("pid", &()).hosts(["alpha"])).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let alpha = i32::try_from(outcomes[&ids[0]].value::<u32>()).unwrap();
    let _guard = PidsGuard(vec![alpha]);
    let marks = tempfile::tempdir().unwrap();
    let gate = marks.path().join("gate");
    let started = marks.path().join("started");
    let retried = marks.path().join("retried");
    let wait_gate = format!("while [ ! -e '{}' ]; do sleep 0.01; done", gate.display());
    let victim = format!(
        "if [ -e '{s}' ]; then touch '{r}'; exit 0; fi; touch '{s}'; exec sleep 60",
        s = started.display(),
        r = retried.display()
    );
    let jobs = (0..8).map(move |i| match i {
        0 | 1 => Job::command("sh").args(["-c", &wait_gate]).hosts(["beta"]),
        2 => Job::command("sh").args(["-c", &victim]),
        _ => Job::command("true"),
    });
    let killer = {
        let started = started.clone();
        std::thread::spawn(move || {
            if appears(&started, AT_ONCE) {
                kill(Pid::from_raw(alpha), Signal::SIGKILL).unwrap();
            }
        })
    };
    // Opens the gate once the retry ran; on a deadline only so that a failing test ends.
    let opener = std::thread::spawn(move || {
        let ran = appears(&retried, Duration::from_secs(15));
        std::fs::write(&gate, "").unwrap();
        ran
    });
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    killer.join().unwrap();
    assert!(
        opener.join().unwrap(),
        "the retry waited for beta while alpha's slot was free"
    );
    assert_eq!(results.len(), 8);
    for result in &results {
        assert!(result.outcome.is_success(), "{result}");
    }
    assert_eq!(results[2].attempts, 2, "{}", results[2]);
    assert_eq!(
        results[2].host.as_ref().map(ToString::to_string).as_deref(),
        Some("alpha"),
        "{}",
        results[2]
    );
}

/// A worker stopped with SIGSTOP answers nothing (its host's kernel still does): the stop
/// of its job past the job's time limit goes unconfirmed, and after the peer timeout the
/// spawner gives it up. The job ends as timed out, the other jobs run on the other
/// worker, and the dispatch ends instead of waiting for the stopped worker; continued,
/// that worker finds its connection closed and leaves.
fn a_stopped_worker_that_does_not_answer_a_stop_is_given_up(backend: Backend) {
    let _timeout = crate::harness::peer_timeout(Duration::from_secs(1));
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 1)]);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    let stopped = Pid::from_raw(pids[0]);
    kill(stopped, Signal::SIGSTOP).unwrap();
    let jobs = (0..6i64).map(|i| {
        if i == 0 {
            Job::command("sleep")
                .arg("60")
                .hosts(["alpha"])
                .timeout(Duration::from_millis(300))
        } else {
            Job::task("add", &(i, 0i64)).hosts(["beta"])
        }
    });
    let start = std::time::Instant::now();
    let results: Vec<JobResult> = within("a dispatch with a stopped worker", move || {
        vm.dispatch(jobs).map(|r| r.unwrap()).collect()
    });
    assert!(
        matches!(results[0].outcome, JobOutcome::TimedOut { .. }),
        "{}",
        results[0]
    );
    for result in &results[1..] {
        assert_eq!(
            value(result),
            i64::try_from(result.index).unwrap(),
            "{result}"
        );
    }
    // The time limit, then the peer timeout: well short of the command's 60 s.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(h.vm().workers_lost(), 1);
    // Given up, it leaves once it runs again (the local backend continues it itself).
    let _ = kill(stopped, Signal::SIGCONT);
    crate::harness::wait_until("the given-up worker leaves", || {
        !crate::harness::alive(pids[0])
    });
}

#[test]
fn local_a_stopped_worker_that_does_not_answer_a_stop_is_given_up() {
    a_stopped_worker_that_does_not_answer_a_stop_is_given_up(Backend::Local);
}

#[test]
fn tcp_a_stopped_worker_that_does_not_answer_a_stop_is_given_up() {
    a_stopped_worker_that_does_not_answer_a_stop_is_given_up(Backend::Tcp);
}
