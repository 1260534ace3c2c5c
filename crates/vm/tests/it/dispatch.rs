//! Dispatch: the suite runs on every backend (memory, local, TCP, and MPI with the `mpi`
//! feature). Faults that need worker processes are in `crate::dispatch_faults`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Duration;

use parvm_vm::{Job, JobOutcome, JobResult, Spawn};

use crate::harness::{Backend, Harness, collect};

suite!(
    results_come_in_job_order,
    unordered_gives_every_job_once,
    collector_sees_every_job_once,
    collector_can_stop_the_dispatch,
    the_job_sequence_is_pulled_within_the_window,
    failures_are_reported_and_retried_only_when_asked,
    halt_on_error_runs_nothing_after_a_failure,
    commands_report_their_status,
    jobs_on_named_hosts,
    a_job_waiting_for_a_busy_host_holds_back_no_job_for_another,
    a_vm_runs_one_dispatch_at_a_time,
    a_command_past_its_limit_is_stopped,
    a_job_started_before_the_median_was_known_is_stopped_past_it,
    a_job_queued_behind_a_long_one_moves_to_a_free_slot,
    jobs_return_files_and_capture_output,
    a_stop_the_program_asks_for_is_neither_failure_nor_loss,
    a_halt_from_another_thread_ends_the_dispatch_while_it_waits,
    results_count_the_bytes_mirrored,
    one_slot_times_each_queued_job_from_its_own_start,
    every_job_gets_an_empty_folder_and_none_outlives_the_dispatch,
    every_job_gets_a_fresh_mirror_whatever_the_job_before_did,
    a_job_nesting_folders_1500_deep_leaves_nothing_behind,
);

/// How long a test may wait for a dispatch before it counts as hung.
pub const AT_ONCE: Duration = Duration::from_secs(30);

pub fn value(result: &JobResult) -> i64 {
    match &result.outcome {
        JobOutcome::Value(value) => value.decode().expect("an i64"),
        other => panic!("job {} did not return a value: {other}", result.index),
    }
}

fn results_come_in_job_order(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 2), ("beta", 1)]);
    let vm = h.vm();
    // Early jobs take longer, so later ones complete first and must wait their turn.
    let jobs = (0..60i64).map(|i| {
        if i < 3 {
            Job::task("sleep", &30u64)
        } else {
            Job::task("add", &(i, 1i64))
        }
    });
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    assert_eq!(results.len(), 60);
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result.index, n);
        assert_eq!(result.attempts, 1);
        assert!(result.host.is_some() && result.task.is_some(), "{result}");
        assert_eq!(result.mirrored, 0);
        if n >= 3 {
            assert_eq!(value(result), i64::try_from(n).unwrap() + 1);
        }
    }
    let hosts: BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.host.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(hosts, BTreeSet::from(["alpha".into(), "beta".into()]));
    assert_eq!(vm.free_slots(), 3, "every slot is free after the dispatch");
}

fn unordered_gives_every_job_once(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = (0..500i64).map(|i| Job::task("add", &(i, i)));
    let mut seen = BTreeSet::new();
    for result in vm.dispatch(jobs).unordered().window(7) {
        let result = result.unwrap();
        assert_eq!(value(&result), 2 * i64::try_from(result.index).unwrap());
        assert!(seen.insert(result.index), "job {} twice", result.index);
    }
    assert_eq!(seen, (0..500).collect());
}

fn collector_sees_every_job_once(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = (0..300i64).map(|i| Job::task("add", &(i, 0i64)));
    let mut seen = BTreeSet::new();
    vm.dispatch(jobs)
        .unordered()
        .for_each(|result| {
            assert_eq!(value(&result), i64::try_from(result.index).unwrap());
            assert!(seen.insert(result.index), "job {} twice", result.index);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, (0..300).collect());
}

fn collector_can_stop_the_dispatch(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let pulled = Rc::new(Cell::new(0usize));
    let counter = Rc::clone(&pulled);
    let jobs = (0..1_000_000i64).map(move |i| {
        counter.set(counter.get() + 1);
        Job::task("add", &(i, 0i64))
    });
    let mut seen = 0;
    vm.dispatch(jobs)
        .window(8)
        .for_each(|result| {
            assert_eq!(result.index, seen, "job order");
            seen += 1;
            if seen == 20 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(seen, 20);
    assert!(pulled.get() <= 20 + 8, "pulled {} jobs", pulled.get());
    // Nothing of the stopped dispatch is left: the VM spawns and receives as before.
    assert_eq!(vm.free_slots(), 2);
    let ids = vm.spawn(Spawn::task("add", &(1i64, 2i64))).unwrap();
    let (outcomes, others) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<i64>(), 3);
    assert!(
        others.is_empty(),
        "late messages of the dispatch: {others:?}"
    );
}

fn the_job_sequence_is_pulled_within_the_window(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let window = 5;
    let pulled = Rc::new(Cell::new(0usize));
    let counter = Rc::clone(&pulled);
    let jobs = (0..200i64).map(move |i| {
        counter.set(counter.get() + 1);
        // Some slow jobs, so finished results wait for earlier ones.
        Job::task("sleep", &if i % 17 == 0 { 20u64 } else { 0 })
    });
    let mut taken = 0;
    for result in vm.dispatch(jobs).window(window) {
        result.unwrap();
        taken += 1;
        // Pulled and not yet handed out: at most the window (the one just handed out
        // was still held when the last job was pulled).
        assert!(
            pulled.get() - taken < window,
            "{} pulled, {taken} taken, window {window}",
            pulled.get()
        );
    }
    assert_eq!((taken, pulled.get()), (200, 200));
}

fn failures_are_reported_and_retried_only_when_asked(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let marker = |n: usize| {
        h.shared
            .path()
            .join(format!("marker-{n}"))
            .display()
            .to_string()
    };
    let jobs = |tag: usize| {
        (0..6).map(move |i| match i {
            1 => Job::task("fail", &"by itself".to_string()),
            2 => Job::task("panic", &"a panic".to_string()),
            3 => Job::task("fail_once", &marker(tag)),
            4 => Job::task("no such task", &()),
            _ => Job::task("add", &(1i64, 1i64)),
        })
    };
    let results: Vec<JobResult> = vm.dispatch(jobs(0)).map(|r| r.unwrap()).collect();
    let failed = |r: &JobResult| matches!(r.outcome, JobOutcome::Failed { .. });
    let shown: Vec<String> = results.iter().map(ToString::to_string).collect();
    assert!(
        failed(&results[1]) && results[1].to_string().contains("by itself"),
        "{shown:?}"
    );
    assert!(
        failed(&results[2]) && results[2].to_string().contains("a panic"),
        "{shown:?}"
    );
    assert!(failed(&results[3]), "fails once without retries: {shown:?}");
    assert!(
        failed(&results[4]) && results[4].task.is_none(),
        "{shown:?}"
    );
    assert!(results[4].to_string().contains("no such task"), "{shown:?}");
    assert!(
        results
            .iter()
            .all(|r| r.attempts == u32::from(r.index != 4)),
        "{shown:?}"
    );
    // With retries, the job that fails once succeeds on its second attempt; the others
    // fail every time and are reported once, after their last attempt.
    let results: Vec<JobResult> = vm
        .dispatch(jobs(1))
        .retries(2)
        .map(|r| r.unwrap())
        .collect();
    let shown: Vec<String> = results.iter().map(ToString::to_string).collect();
    assert!(
        matches!(results[3].outcome, JobOutcome::Value(_)),
        "{shown:?}"
    );
    assert_eq!(results[3].attempts, 2, "{shown:?}");
    assert_eq!(
        (results[1].attempts, results[2].attempts),
        (3, 3),
        "{shown:?}"
    );
    assert_eq!(
        (results[0].attempts, results[5].attempts),
        (1, 1),
        "{shown:?}"
    );
}

fn halt_on_error_runs_nothing_after_a_failure(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = (0..100i64).map(|i| {
        if i == 3 {
            Job::task("fail", &"halt here".to_string())
        } else {
            Job::task("add", &(i, 0i64))
        }
    });
    let results: Vec<JobResult> = vm
        .dispatch(jobs)
        .halt_on_error()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.len(), 100, "every job gets one result");
    assert!(matches!(results[3].outcome, JobOutcome::Failed { .. }));
    let first_not_run = results
        .iter()
        .position(|r| matches!(r.outcome, JobOutcome::NotRun))
        .expect("jobs after the failure are not run");
    // Only jobs handed out before the failure was known ran: within the window.
    assert!(first_not_run <= 3 + 8, "{first_not_run}");
    assert!(
        results[first_not_run..]
            .iter()
            .all(|r| matches!(r.outcome, JobOutcome::NotRun)
                && r.attempts == 0
                && r.host.is_none()),
        "nothing runs after the first not-run job"
    );
}

fn commands_report_their_status(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = [
        Job::command("true"),
        Job::command("sh").args(["-c", "exit 3"]),
        Job::command("/nonexistent/program"),
    ];
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    assert!(
        matches!(results[0].outcome, JobOutcome::Command(status) if status.success()),
        "{}",
        results[0]
    );
    assert!(
        matches!(&results[1].outcome, JobOutcome::Failed { status: Some(s), .. } if s.code == Some(3)),
        "{}",
        results[1]
    );
    assert!(
        matches!(&results[2].outcome, JobOutcome::Failed { status: None, reason, after_end: None } if reason.contains("/nonexistent/program")),
        "{}",
        results[2]
    );
}

fn jobs_on_named_hosts(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 2)]);
    let vm = h.vm();
    let jobs = (0..20i64)
        .map(|i| Job::task("add", &(i, 0i64)).hosts(["beta"]))
        .chain([Job::task("noop", &()).hosts(["gamma"])]);
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    assert!(
        results[..20]
            .iter()
            .all(|r| r.host.as_ref().is_some_and(|h| h.to_string() == "beta"))
    );
    assert!(
        matches!(&results[20].outcome, JobOutcome::Failed { reason, .. } if reason.contains("gamma")),
        "{}",
        results[20]
    );
}

/// The task of `vm` running under `label`, once one is.
fn running(vm: &parvm_vm::Vm, label: &str) -> Option<parvm_vm::TaskId> {
    vm.describe()
        .hosts
        .iter()
        .flat_map(|host| &host.slots)
        .filter_map(|slot| slot.task.as_ref())
        .find(|task| task.label == label)
        .map(|task| task.id)
}

fn a_job_waiting_for_a_busy_host_holds_back_no_job_for_another(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 1)]);
    let vm = h.vm();
    // Alpha's one slot runs a task that waits for a message, with one job queued behind
    // it; the third alpha job finds no place. The beta jobs behind it must not wait.
    let jobs = [
        Job::task("recv_one", &()).hosts(["alpha"]),
        Job::task("noop", &()).hosts(["alpha"]),
        Job::task("noop", &()).hosts(["alpha"]),
    ]
    .into_iter()
    .chain((0..3).map(|_| Job::task("noop", &()).hosts(["beta"])));
    let release = |vm: &parvm_vm::Vm| {
        let task = running(vm, "recv_one").expect("the alpha task runs");
        vm.send(task, &"go".to_owned())
            .expect("send to the alpha task");
    };
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Were the beta jobs held back, the test would wait forever: after AT_ONCE this
        // releases the alpha task, and the order of the results shows the fault.
        let vm = &vm;
        scope.spawn(move || {
            if cancelled.recv_timeout(AT_ONCE).is_err() {
                release(vm);
            }
        });
        let mut dispatch = vm.dispatch(jobs).unordered();
        let first: BTreeSet<usize> = (0..3)
            .map(|_| dispatch.next().expect("a result").expect("no error").index)
            .collect();
        let _ = cancel.send(());
        assert_eq!(first, BTreeSet::from([3, 4, 5]), "beta's jobs end first");
        release(vm);
        let rest: Vec<JobResult> = dispatch.map(|r| r.expect("no error")).collect();
        let mut indices: Vec<usize> = rest.iter().map(|r| r.index).collect();
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2]);
        assert!(rest.iter().all(|r| r.outcome.is_success()), "{rest:?}");
    });
}

fn a_vm_runs_one_dispatch_at_a_time(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let mut first = vm.dispatch((0..3i64).map(|i| Job::task("add", &(i, 0i64))));
    assert_eq!(value(&first.next().unwrap().unwrap()), 0);
    let mut second = vm.dispatch([Job::task("noop", &())]);
    let error = second.next().unwrap().unwrap_err();
    assert!(error.to_string().contains("a VM of its own"), "{error}");
    assert!(second.next().is_none());
    drop(second);
    let rest: Vec<i64> = first.map(|r| value(&r.unwrap())).collect();
    assert_eq!(rest, [1, 2]);
}

/// Job `i` of a sequence where job `long` sleeps `seconds` and every other is `true`.
fn one_long_among_true(i: usize, long: usize, seconds: &str) -> Job {
    if i == long {
        Job::command("sleep").arg(seconds)
    } else {
        Job::command("true")
    }
}

fn a_command_past_its_limit_is_stopped(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = (0..6).map(|i| one_long_among_true(i, 1, "60"));
    let start = std::time::Instant::now();
    let results: Vec<JobResult> = vm
        .dispatch(jobs)
        .timeout(Duration::from_millis(300))
        .map(|r| r.unwrap())
        .collect();
    assert!(start.elapsed() < AT_ONCE, "took {:?}", start.elapsed());
    assert!(
        matches!(results[1].outcome, JobOutcome::TimedOut { limit } if limit == Duration::from_millis(300)),
        "{}",
        results[1]
    );
    assert_eq!(results[1].attempts, 1, "a time limit is no lost attempt");
    assert!(
        results[1].elapsed >= Duration::from_millis(300),
        "{}",
        results[1]
    );
    for result in results.iter().filter(|r| r.index != 1) {
        assert!(result.outcome.is_success(), "{result}");
    }
}

fn a_job_started_before_the_median_was_known_is_stopped_past_it(backend: Backend) {
    // Job 0 starts before any job succeeded, so no limit is known then; once three did,
    // it is past 2000% of their median (about 1 s) and is stopped. The last job runs
    // past that limit too, but its own limit overrides the median's.
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let own = Duration::from_secs(30);
    let jobs = (0..8).map(|i| match i {
        0 => Job::command("sleep").arg("60"),
        7 => Job::command("sleep").arg("2").timeout(own),
        _ => Job::command("sleep").arg("0.05"),
    });
    let start = std::time::Instant::now();
    let results: Vec<JobResult> = vm
        .dispatch(jobs)
        .timeout_of_median(2000.0)
        .map(|r| r.unwrap())
        .collect();
    assert!(start.elapsed() < AT_ONCE, "took {:?}", start.elapsed());
    let JobOutcome::TimedOut { limit } = results[0].outcome else {
        panic!("{}", results[0]);
    };
    // 20 times a median of at least the 50 ms slept.
    assert!(limit >= Duration::from_secs(1), "{}", results[0]);
    assert!(limit < own, "{}", results[0]);
    assert!(results[0].elapsed >= limit, "{}", results[0]);
    for result in &results[1..] {
        assert!(result.outcome.is_success(), "{result}");
    }
}

fn a_job_queued_behind_a_long_one_moves_to_a_free_slot(backend: Backend) {
    // Two slots: job 0 runs long on one, and job 2 is queued behind it there from the
    // start. When the other slot runs out of jobs, it takes job 2 back, so every short
    // job ends long before job 0 would; job 0 is stopped when the collector has them.
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = (0..6).map(|i| one_long_among_true(i, 0, "120"));
    let start = std::time::Instant::now();
    let mut short = Vec::new();
    vm.dispatch(jobs)
        .unordered()
        .for_each(|result| {
            assert_ne!(result.index, 0, "{result}");
            assert!(result.outcome.is_success(), "{result}");
            // Taken back before it started: no attempt counted.
            assert_eq!(result.attempts, 1, "{result}");
            short.push(result.index);
            if short.len() == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert!(start.elapsed() < AT_ONCE, "took {:?}", start.elapsed());
    short.sort_unstable();
    assert_eq!(short, [1, 2, 3, 4, 5]);
    // Nothing of the dispatch is left: both slots are free, the VM spawns as before.
    assert_eq!(vm.free_slots(), 2);
    let ids = vm.spawn(Spawn::task("add", &(1i64, 2i64))).unwrap();
    let (outcomes, others) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<i64>(), 3);
    assert!(others.is_empty(), "late messages: {others:?}");
}

fn one_slot_times_each_queued_job_from_its_own_start(backend: Backend) {
    // One slot: every job waits at the worker behind the one before it. A value job's
    // result arrives before its exit, so the next job can be placed (queued behind the job
    // that just started) before that exit is received: it must not take the clock and
    // time limit of the job that started.
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let limit = Duration::from_millis(300);
    let jobs = (0..9i64).map(move |i| match i % 3 {
        1 => Job::command("sleep").arg("3").timeout(limit),
        _ => Job::task("add", &(i, 1i64)),
    });
    let start = std::time::Instant::now();
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    assert!(start.elapsed() < AT_ONCE, "took {:?}", start.elapsed());
    assert_eq!(results.len(), 9);
    for result in &results {
        if result.index % 3 == 1 {
            assert!(
                matches!(result.outcome, JobOutcome::TimedOut { limit: l } if l == limit),
                "{result}"
            );
            assert_eq!(result.attempts, 1, "{result}");
            assert!(result.elapsed >= limit, "{result}");
        } else {
            assert_eq!(
                value(result),
                i64::try_from(result.index).unwrap() + 1,
                "{result}"
            );
            // Its own time, not the 3 s sleep queued before it.
            assert!(result.elapsed < Duration::from_secs(3), "{result}");
        }
    }
    assert_eq!(vm.free_slots(), 1, "the slot is free after the dispatch");
}

fn jobs_return_files_and_capture_output(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    let results_dir = tempfile::tempdir().unwrap();
    let jobs = (0..8).map(|i| {
        Job::command("sh")
            .args([
                "-c",
                &format!("echo out-{i}; echo err-{i} >&2; echo data-{i} > result.txt"),
            ])
            .returning("result.txt")
            .capture(true)
    });
    let jobs = jobs.chain([Job::command("true").returning("missing.txt")]);
    let results: Vec<JobResult> = vm
        .dispatch(jobs)
        .results(results_dir.path())
        .map(|r| r.unwrap())
        .collect();
    for result in &results[..8] {
        let i = result.index;
        assert!(result.outcome.is_success(), "{result}");
        assert_eq!(
            result.returned,
            [std::path::PathBuf::from("result.txt")],
            "{result}"
        );
        let file = results_dir.path().join(i.to_string()).join("result.txt");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("data-{i}\n")
        );
        if backend == Backend::Memory {
            // In-process workers do not redirect output, so there is nothing to capture.
            continue;
        }
        let out = result.stdout.as_ref().expect("captured stdout");
        assert_eq!(out.bytes(), Some(format!("out-{i}\n").as_bytes()));
        let err = result.stderr.as_ref().expect("captured stderr");
        assert_eq!(err.bytes(), Some(format!("err-{i}\n").as_bytes()));
    }
    assert!(
        matches!(&results[8].outcome, JobOutcome::Failed { reason, .. } if reason.contains("missing.txt")),
        "a literal pattern that matches nothing fails the job: {}",
        results[8]
    );
    // Returning needs a results folder: refused before anything is sent.
    let refused: Vec<JobResult> = vm
        .dispatch([Job::command("true").returning("x")])
        .map(|r| r.unwrap())
        .collect();
    assert!(
        matches!(&refused[0].outcome, JobOutcome::Failed { .. }) && refused[0].task.is_none(),
        "{}",
        refused[0]
    );
}

fn a_stop_the_program_asks_for_is_neither_failure_nor_loss(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let jobs = [
        Job::command("sleep").arg("60"),
        Job::command("true"),
        Job::command("true"),
    ];
    let results: Vec<JobResult> = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sleeper = None;
            crate::harness::wait_until("the sleeping job runs", || {
                sleeper = vm
                    .describe()
                    .hosts
                    .iter()
                    .flat_map(|host| &host.slots)
                    .filter_map(|slot| slot.task.as_ref())
                    .find(|task| task.label == "sleep")
                    .map(|task| task.id);
                sleeper.is_some()
            });
            vm.stop(sleeper.unwrap()).unwrap();
        });
        vm.dispatch(jobs)
            .retries(3)
            .halt_on_error()
            .map(|r| r.unwrap())
            .collect()
    });
    assert!(
        matches!(results[0].outcome, JobOutcome::NotRun),
        "{}",
        results[0]
    );
    assert_eq!(results[0].attempts, 1, "not run again: {}", results[0]);
    assert!(results[1].outcome.is_success() && results[2].outcome.is_success());
}

fn a_halt_from_another_thread_ends_the_dispatch_while_it_waits(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    // One slot: the sleeper runs, the others wait for it (one queued at its worker).
    let jobs = [
        Job::command("sleep").arg("60"),
        Job::command("true"),
        Job::command("true"),
    ];
    let mut dispatch = vm.dispatch(jobs);
    let halt = dispatch.halt_handle();
    let started = std::time::Instant::now();
    let results: Vec<JobResult> = std::thread::scope(|scope| {
        scope.spawn(|| {
            crate::harness::wait_until("the sleeping job runs", || running(&vm, "sleep").is_some());
            // Asked from here while the dispatch's thread waits for the sleeper's end.
            halt.halt(true);
        });
        dispatch.map(|r| r.unwrap()).collect()
    });
    assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
    for result in &results {
        assert!(
            matches!(result.outcome, JobOutcome::NotRun),
            "{}: {}",
            result.index,
            result.outcome
        );
    }
    assert_eq!(results.len(), 3);
}

fn results_count_the_bytes_mirrored(backend: Backend) {
    let h = Harness::start(backend, 2);
    let shared = h.shared.path();
    std::fs::create_dir_all(shared.join("in")).unwrap();
    std::fs::write(shared.join("in/deck.cir"), vec![b'x'; 1000]).unwrap();
    std::fs::write(shared.join("in/model.lib"), vec![b'y'; 234]).unwrap();
    let vm = h
        .runtime()
        .vm()
        .mirror(shared.join("in/*").display().to_string(), ".")
        .build()
        .unwrap();
    let results: Vec<JobResult> = vm
        .dispatch((0..10).map(|_| Job::task("list", &())))
        .map(|r| r.unwrap())
        .collect();
    // A folder handed on from the job before already holds the inputs: nothing copied.
    let fresh = results.iter().filter(|r| r.mirrored == 1234).count();
    assert!(fresh >= 1, "the first job on a worker copies its inputs");
    for result in &results {
        assert!([0, 1234].contains(&result.mirrored), "{result}");
        let JobOutcome::Value(names) = &result.outcome else {
            panic!("{result}");
        };
        assert_eq!(
            names.decode::<Vec<String>>().unwrap(),
            ["deck.cir", "model.lib"]
        );
    }
    // Without a mirror map nothing is mirrored.
    let plain = h.vm();
    let result = plain
        .dispatch([Job::task("noop", &())])
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(result.mirrored, 0);
}

/// A worker hands its emptied folder to the next job it already holds: each job still
/// finds nothing of the one before (not its files, read-only folders or symlinks), nothing
/// outside is touched through a planted symlink, and no folder outlives the dispatch.
fn every_job_gets_an_empty_folder_and_none_outlives_the_dispatch(backend: Backend) {
    let h = Harness::start(backend, 2);
    let shared = h.shared.path();
    let outside = shared.join("outside");
    let seen = shared.join("seen");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::write(outside.join("precious"), b"p").unwrap();
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    // $1: the outside folder, $2: where to say what the job saw, $3: the job's index.
    let script = r#"
        left=$(ls -A | grep -v '^[.]parvm-')
        [ -z "$left" ] || { echo "left by an earlier job: $left" >&2; exit 7; }
        stat -c %w .parvm-owner > "$2/$3"
        echo x > junk; mkdir -p d/e; touch d/e/f; chmod 500 d/e d; ln -s "$1" link"#;
    let jobs = (0..40).map(|i| {
        Job::command("sh").args([
            "-c",
            script,
            "sh",
            outside.to_str().unwrap(),
            seen.to_str().unwrap(),
            &i.to_string(),
        ])
    });
    let results: Vec<JobResult> = vm.dispatch(jobs).map(|r| r.unwrap()).collect();
    for result in &results {
        assert!(result.outcome.is_success(), "{result}");
    }
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"p");
    // A folder kept for a job that another slot took back goes when its worker next
    // waits, a moment after the dispatch may have ended.
    crate::harness::wait_until("no task folder is left", || h.task_folders().is_empty());
    assert_most_jobs_ran_in_a_folder_handed_on(&seen, 40);
}

/// The owner marker's birth time, which each of `jobs` jobs wrote into `seen/<index>`,
/// tells folders apart: most jobs ran in a folder an earlier job handed on (file systems
/// without birth times print `-`, and then nothing can be told).
fn assert_most_jobs_ran_in_a_folder_handed_on(seen: &std::path::Path, jobs: usize) {
    let births: BTreeSet<String> = (0..jobs)
        .map(|i| std::fs::read_to_string(seen.join(i.to_string())).unwrap())
        .collect();
    if !births.contains("-\n") {
        assert!(
            births.len() < jobs / 2,
            "{} folders made for {jobs} jobs",
            births.len()
        );
    }
}

/// A worker hands the folder of a job that mirrored to the next job as the job left it, and
/// the next job's mirror renews it: each job still finds exactly the mirrored inputs, as
/// they are at the source, and nothing the job before wrote, edited, `chmod`-ed, removed
/// or linked; sources edited between jobs arrive; no folder outlives the dispatch.
fn every_job_gets_a_fresh_mirror_whatever_the_job_before_did(backend: Backend) {
    let h = Harness::start(backend, 2);
    let shared = h.shared.path();
    let seen = shared.join("seen");
    std::fs::create_dir_all(shared.join("lib/sub")).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::write(shared.join("deck.cir"), "deck v1\n").unwrap();
    for i in 0..50 {
        std::fs::write(shared.join(format!("lib/m{i}.lib")), format!("model {i}\n")).unwrap();
    }
    std::fs::write(shared.join("lib/sub/inc.inc"), "include\n").unwrap();
    let vm = h
        .runtime()
        .vm()
        .mirror(shared.join("deck.cir").to_str().unwrap(), ".")
        .mirror(shared.join("lib").to_str().unwrap(), "in")
        .build()
        .unwrap();
    // $1: the deck's expected first line, $2: where to say what the job saw, $3: its index.
    let script = r#"
        left=$(find . -path ./.parvm-lock -o -path ./.parvm-owner -o -print | LC_ALL=C sort | tr '\n' ' ')
        want=". ./deck.cir ./in ./in/lib $(for i in $(seq 0 49); do echo ./in/lib/m$i.lib; done | LC_ALL=C sort | tr '\n' ' ')./in/lib/sub ./in/lib/sub/inc.inc "
        want=$(echo $want | tr ' ' '\n' | LC_ALL=C sort | tr '\n' ' ')
        [ "$left" = "$want" ] || { echo "folder holds: $left" >&2; exit 7; }
        [ "$(cat deck.cir)" = "$1" ] || { echo "deck.cir: $(cat deck.cir)" >&2; exit 8; }
        for i in 0 17 49; do [ "$(cat in/lib/m$i.lib)" = "model $i" ] || { echo "m$i.lib changed" >&2; exit 9; }; done
        [ "$(stat -c %a in/lib/m3.lib)" = "$(stat -c %a "$4/lib/m3.lib")" ] || { echo "m3.lib mode" >&2; exit 10; }
        stat -c %w .parvm-owner > "$2/$3"
        echo scribbled >> in/lib/m17.lib; echo out > result.txt; mkdir -p out/deep; touch out/deep/f
        echo x > in/lib/sub/new.txt; chmod 600 in/lib/m3.lib; rm in/lib/m49.lib
        ln in/lib/m0.lib hardlink; echo through-a-link >> hardlink; ln -s /etc out/link"#;
    let shared_str = shared.to_str().unwrap().to_owned();
    let job = |i: usize, deck: &str| {
        Job::command("sh").args([
            "-c",
            script,
            "sh",
            deck,
            seen.to_str().unwrap(),
            &i.to_string(),
            &shared_str,
        ])
    };
    let run = |jobs: std::ops::Range<usize>, deck: &str| -> Vec<JobResult> {
        let results: Vec<JobResult> = vm
            .dispatch(jobs.map(|i| job(i, deck)))
            .map(|r| r.unwrap())
            .collect();
        for result in &results {
            assert!(result.outcome.is_success(), "{result}");
        }
        results
    };
    let results = run(0..30, "deck v1");
    // A renewed folder copies only what the job before changed.
    let whole = results.iter().map(|r| r.mirrored).max().unwrap();
    let renewed = results.iter().filter(|r| r.mirrored < whole / 4).count();
    assert!(
        renewed >= 10,
        "{renewed} of 30 jobs renewed a folder ({whole} bytes whole)"
    );
    // Between two dispatches the source changes: the next folders have the new deck.
    std::fs::write(shared.join("deck.cir"), "deck v2, longer\n").unwrap();
    run(30..50, "deck v2, longer");
    crate::harness::wait_until("no task folder is left", || h.task_folders().is_empty());
    assert_most_jobs_ran_in_a_folder_handed_on(&seen, 50);
}

/// A job that nests folders 1 500 deep (past the limit of open files of many users)
/// leaves nothing behind: the next job finds a clean folder (the renewal gives way to
/// emptying it), and no folder, trash included, outlives the dispatch.
fn a_job_nesting_folders_1500_deep_leaves_nothing_behind(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm_mirroring_lib();
    let script = r#"
        left=$(ls -A | grep -v '^[.]parvm-' | tr '\n' ' ')
        [ "$left" = "lib " ] || { echo "left by an earlier job: $left" >&2; exit 7; }
        if [ "$1" = deep ]; then
            mkdir out && cd out && i=0
            while [ $i -lt 1500 ]; do mkdir d && cd d && i=$((i + 1)) || exit 8; done
        fi"#;
    let jobs = ["deep", "plain", "deep", "plain"]
        .into_iter()
        .map(|what| Job::command("sh").args(["-c", script, "sh", what]));
    for result in vm.dispatch(jobs) {
        let result = result.unwrap();
        assert!(result.outcome.is_success(), "{result}");
    }
    drop(vm);
    crate::harness::wait_until("no task folder or trash is left", || {
        std::fs::read_dir(h.user_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .all(|e| e.file_name() == "cache")
            })
            .unwrap_or(true)
    });
}
