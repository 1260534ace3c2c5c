//! Streamed output (`Spawn::stream_output`, `Dispatch::on_output`): a command's lines reach
//! the program while it runs, and a program that receives slowly holds the command back.

use std::io::Write;
use std::time::{Duration, Instant};

use parvm_vm::{ExitStatus, Job, Message, OutputStream, Spawn, TaskId};

use crate::harness::{Backend, Harness};

/// How long a test waits for a message before it counts as hung.
const AT_ONCE: Duration = Duration::from_secs(30);

fn next(vm: &parvm_vm::Vm) -> Message {
    vm.recv_timeout(AT_ONCE)
        .expect("receive")
        .expect("a message in time")
}

/// The streamed bytes of `task` up to its exit, and its exit status.
fn rest_of(vm: &parvm_vm::Vm, task: TaskId) -> (Vec<(OutputStream, Vec<u8>)>, ExitStatus) {
    let mut lines = Vec::new();
    loop {
        match next(vm) {
            Message::Output {
                task: of,
                stream,
                data,
            } if of == task => lines.push((stream, data)),
            Message::TaskExit { task: of, status } if of == task => return (lines, status),
            _ => {}
        }
    }
}

#[test]
fn lines_arrive_while_the_command_runs_and_the_last_one_without_a_newline_at_its_end() {
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let script = format!(
        "echo first; echo oops >&2; read x < '{}'; echo \"second $x\"; printf tail",
        fifo.display()
    );
    let task = vm
        .spawn(
            Spawn::command("sh")
                .args(["-c", &script])
                .stream_output(true),
        )
        .unwrap()[0];
    // The command waits on the fifo: what arrives now was streamed while it runs.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&vm) {
            Message::Output {
                task: of,
                stream,
                data,
            } => {
                assert_eq!(of, task);
                seen.push((stream, data));
            }
            other => panic!("before the command could end: {other}"),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (OutputStream::Stdout, b"first\n".to_vec()),
            (OutputStream::Stderr, b"oops\n".to_vec())
        ]
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let (rest, status) = rest_of(&vm, task);
    assert_eq!(
        rest,
        [
            (OutputStream::Stdout, b"second go\n".to_vec()),
            (OutputStream::Stdout, b"tail".to_vec())
        ]
    );
    assert!(matches!(status, ExitStatus::Completed), "{status}");
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
fn a_slow_reader_holds_the_command_back_and_then_gets_every_line() {
    const LINES: u64 = 16 * 1024;
    // `echo` is the shell's own: the shell itself writes every line, so its `wchar`
    // counts them. Each line is 1 KiB with its newline.
    let filler = "x".repeat(1024 - 7);
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    let script = format!(
        "echo $$; i=0; while [ $i -lt {LINES} ]; do printf '%06d{filler}\\n' $i; i=$((i+1)); done"
    );
    let task = vm
        .spawn(
            Spawn::command("sh")
                .args(["-c", &script])
                .stream_output(true),
        )
        .unwrap()[0];
    let Message::Output { data, .. } = next(&vm) else {
        panic!("the shell's pid first");
    };
    let mut received = data.len() as u64;
    let pid: u32 = String::from_utf8_lossy(&data)
        .lines()
        .next()
        .and_then(|line| line.parse().ok())
        .expect("a pid");
    let first = data;
    // Receive nothing until the shell stops writing: it is blocked (bounded), or it has
    // written everything (the spawner would hold it all). Meanwhile another VM's thread
    // receives, which pulls every event from the transport and files this VM's output
    // in its inbox: only the window, not the pace of pulling, holds the command back.
    let other = h.vm();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let total = LINES * 1024;
    let last = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = other.recv_timeout(Duration::from_millis(20));
            }
        });
        let deadline = Instant::now() + AT_ONCE;
        let (mut last, mut still_since) = (0, Instant::now());
        loop {
            assert!(
                Instant::now() < deadline,
                "the command neither stalled nor ended"
            );
            let now = written(pid).unwrap_or(last);
            if now >= total {
                break;
            }
            if now != last {
                (last, still_since) = (now, Instant::now());
            } else if still_since.elapsed() > Duration::from_millis(500) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        last
    });
    // Ahead of the program by at most the window (1 MiB), the pipe (64 KiB) and the
    // worker's read buffer (64 KiB), and the first lines on their way.
    let ahead = last.saturating_sub(received);
    assert!(
        last < total && ahead < (1 << 20) + (256 << 10),
        "the command wrote {last} B while the program had received {received} B"
    );
    // Now receive it all: every line whole and in order.
    let (rest, status) = rest_of(&vm, task);
    assert!(matches!(status, ExitStatus::Completed), "{status}");
    let mut all = first;
    for (stream, data) in rest {
        assert_eq!(stream, OutputStream::Stdout);
        assert!(data.ends_with(b"\n"), "a message ends inside a line");
        received += data.len() as u64;
        all.extend_from_slice(&data);
    }
    let mut lines = all.split(|&b| b == b'\n');
    assert_eq!(lines.next(), Some(pid.to_string().as_bytes()));
    for seq in 0..LINES {
        let line = lines.next().expect("every line");
        assert_eq!(line.len(), 1023, "line {seq} is damaged");
        assert_eq!(&line[..6], format!("{seq:06}").as_bytes(), "line {seq}");
    }
    assert_eq!(received, total + pid.to_string().len() as u64 + 1);
}

#[test]
fn a_dispatch_hands_each_jobs_lines_to_the_program_before_its_result() {
    let h = Harness::start(Backend::Local, 2);
    let vm = h.vm();
    let jobs = (0..6).map(|i| {
        Job::command("sh")
            .args([
                "-c",
                &format!("echo job {i}; echo err {i} >&2; printf 'end {i}'"),
            ])
            .capture(true)
    });
    let lines = std::cell::RefCell::new(Vec::new());
    let results: Vec<_> = vm
        .dispatch(jobs)
        .unordered()
        .on_output(|index, stream, data| lines.borrow_mut().push((index, stream, data.to_vec())))
        .map(|result| {
            let result = result.unwrap();
            // Every line of the job came before its result.
            let got: Vec<Vec<u8>> = lines
                .borrow()
                .iter()
                .filter(|(index, _, _)| *index == result.index)
                .map(|(_, _, data)| data.clone())
                .collect();
            (result, got)
        })
        .collect();
    assert_eq!(results.len(), 6);
    for (result, got) in results {
        let i = result.index;
        assert!(result.outcome.is_success(), "{result}");
        let mut got = got;
        got.sort();
        let mut want = vec![
            format!("end {i}").into_bytes(),
            format!("err {i}\n").into_bytes(),
            format!("job {i}\n").into_bytes(),
        ];
        want.sort();
        assert_eq!(got, want, "job {i}");
        // Captured whole as well.
        let stdout = result.stdout.as_ref().and_then(|s| s.bytes()).unwrap();
        assert_eq!(stdout, format!("job {i}\nend {i}").as_bytes());
    }
    let streams: Vec<OutputStream> = lines.borrow().iter().map(|l| l.1).collect();
    assert_eq!(
        streams
            .iter()
            .filter(|s| **s == OutputStream::Stderr)
            .count(),
        6
    );
}
