//! Worker output: file descriptors 1 and 2 go into pipes, and what the task writes reaches
//! the spawner as [`FromWorker::Output`] frames tagged with the running task's number.
//!
//! A thread forwards output while a task runs. When the task ends, the worker thread takes
//! the same lock and reads what is left itself, so every line a task wrote reaches the
//! spawner before its result, without waiting on the forwarding thread.
//!
//! Every frame takes credit from the worker's output window first ([`crate::link`]): when
//! the spawner falls behind, the pipes are left unread and the task blocks on its write.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::Error;
use crate::link::Link;
use crate::wire::{self, FromWorker};

/// Longest output frame, and longest partial line kept back waiting for its newline.
const CHUNK: usize = 64 * 1024;

struct Inner {
    task: AtomicU64,
    out: OwnedFd,
    err: OwnedFd,
    /// The standard error the process had before it was captured: where the worker says
    /// why it leaves when the spawner, which would have received it, is gone.
    console: Option<OwnedFd>,
    partial: Mutex<[Vec<u8>; 2]>,
    link: Arc<Link>,
}

/// Redirected output of a worker process.
pub(crate) struct Capture {
    inner: Arc<Inner>,
}

impl Capture {
    /// Redirects fd 1 and 2 and starts the forwarding thread. With `watch_parent`, the
    /// thread also ends the process when its parent (the spawner) is gone, and with
    /// `watch_connection` when the connection to the spawner is lost, so a worker does not
    /// outlive a killed spawner while a long task runs (its commands are stopped by their
    /// supervisors then).
    pub(crate) fn start(
        link: Arc<Link>,
        watch_parent: bool,
        watch_connection: bool,
    ) -> Result<Capture, Error> {
        let io = |what: &'static str| {
            move |e: Errno| Error::Io {
                what,
                path: "/dev/fd".into(),
                source: e.into(),
            }
        };
        let (out, out_w) = nix::unistd::pipe().map_err(io("create an output pipe"))?;
        let (err, err_w) = nix::unistd::pipe().map_err(io("create an output pipe"))?;
        for fd in [&out, &err] {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(io("configure an output pipe"))?;
        }
        let _ = std::io::stdout().flush();
        let console = std::io::stderr().as_fd().try_clone_to_owned().ok();
        nix::unistd::dup2_stdout(&out_w).map_err(io("redirect standard output"))?;
        nix::unistd::dup2_stderr(&err_w).map_err(io("redirect standard error"))?;
        drop((out_w, err_w));
        let inner = Arc::new(Inner {
            task: AtomicU64::new(0),
            out,
            err,
            console,
            partial: Mutex::new([Vec::new(), Vec::new()]),
            link,
        });
        let parent = nix::unistd::getppid();
        let thread_inner = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("parvm-output".to_owned())
            .spawn(move || {
                forward(
                    &thread_inner,
                    watch_parent.then_some(parent),
                    watch_connection,
                );
            })
            .map_err(|source| Error::Io {
                what: "start the output thread for",
                path: "/dev/fd/1".into(),
                source,
            })?;
        Ok(Capture { inner })
    }

    /// Tags output from now on with task `number` (0: none).
    pub(crate) fn set_task(&self, number: u64) {
        self.inner.task.store(number, Ordering::SeqCst);
    }

    /// Sends everything written so far, partial lines included.
    pub(crate) fn drain(&self) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut partial = self
            .inner
            .partial
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pump(&self.inner, &mut partial, true);
    }

    /// Sends what is left; the forwarding thread ends with the process.
    pub(crate) fn finish(self) {
        self.drain();
    }
}

fn forward(inner: &Inner, parent: Option<nix::unistd::Pid>, watch_connection: bool) {
    loop {
        let mut fds = [
            PollFd::new(inner.out.as_fd(), PollFlags::POLLIN),
            PollFd::new(inner.err.as_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, PollTimeout::from(250u16));
        let parent_gone = parent
            .filter(|&parent| nix::unistd::getppid() != parent)
            .map(|parent| format!("its process {parent} exited"));
        // Received even where dead peers are not reported (MPI), so that a stop is seen.
        let spawner_lost = inner.link.spawner_lost_meanwhile();
        if let Some(why) = parent_gone.or(spawner_lost.filter(|_| watch_connection))
            && inner.link.runs_function()
        {
            // The spawner is gone while a function task runs, which cannot be interrupted:
            // leave now. The task folder stays behind with a dead owner, and the next worker
            // start sweeps it as stale. A command is stopped by the spawn loop instead,
            // which then removes its folder and leaves.
            leave_without_spawner(inner, &why);
        }
        if let Some(number) = inner.link.function_to_stop() {
            stop_function(inner, number);
        }
        if let Some((number, signal)) = inner.link.function_when_leaving() {
            leave_during_function(inner, number, signal);
        }
        match ready {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let mut partial = inner.partial.lock().unwrap_or_else(PoisonError::into_inner);
        pump(inner, &mut partial, false);
    }
}

/// Ends the process, with status 70, because the spawner is gone (`why`) while a function
/// task runs; says so on the standard error the process had before it was captured, in one
/// write (several workers may share it).
fn leave_without_spawner(inner: &Inner, why: &str) -> ! {
    if let Some(console) = &inner.console {
        let line = format!(
            "parvm: worker rank {} (pid {}): the spawner is gone while function task {} ran ({why}), which cannot be interrupted; the worker leaves with status 70\n",
            inner.link.transport().rank(),
            std::process::id(),
            inner.task.load(Ordering::Relaxed),
        );
        let _ = nix::unistd::write(console, line.as_bytes());
    }
    std::process::exit(70);
}

/// Ends the process to stop function task `number`, which cannot be interrupted inside its
/// thread: tells the spawner ([`FromWorker::Stopped`]), then exits with
/// [`STOPPED_EXIT_CODE`](parvm_transport::local::STOPPED_EXIT_CODE), which the local
/// backend replaces without counting it as a crash. The task folder stays behind with a
/// dead owner, locked by nobody, and the next worker start on this host sweeps it as stale
/// (on the local backend that is the replacement worker, at once).
fn stop_function(inner: &Inner, number: u64) -> ! {
    // Output the task wrote after the last forward is dropped: sending it could wait for
    // credit from a spawner that is not receiving, and the stop must not hang.
    if let Ok(bytes) = wire::encode(&FromWorker::Stopped {
        number,
        started: true,
    }) {
        let _ = inner.link.transport().send(0, &bytes);
    }
    tracing::debug!(number, "exiting to stop a function task");
    std::process::exit(parvm_transport::local::STOPPED_EXIT_CODE)
}

/// Ends the process by `signal`, which asked the worker to leave while function task
/// `number` runs: a function cannot be interrupted inside its thread. Tells the spawner
/// first, so the task ends as lost and runs again elsewhere. The task folder stays behind
/// with a dead owner, and the next worker start on this host sweeps it as stale.
fn leave_during_function(inner: &Inner, number: u64, signal: i32) -> ! {
    let name = crate::leave::signal_name(signal);
    let reason = format!(
        "{name} asked it to leave while function task {number} ran, which cannot be interrupted, so it ended at once; its task folder waits for the next parvm start on its host"
    );
    if let Ok(bytes) = wire::encode(&FromWorker::Leaving {
        reason: reason.clone(),
    }) {
        let _ = inner.link.transport().send(0, &bytes);
    }
    if let Some(console) = &inner.console {
        let line = format!(
            "parvm: worker rank {} (pid {}): {reason}\n",
            inner.link.transport().rank(),
            std::process::id(),
        );
        let _ = nix::unistd::write(console, line.as_bytes());
    }
    crate::leave::end_by_signal(signal)
}

/// Reads both pipes until they are empty and sends complete lines (all bytes with `flush`)
/// in frames of at most [`CHUNK`] bytes, each once the window has room for it.
fn pump(inner: &Inner, partial: &mut [Vec<u8>; 2], flush: bool) {
    let mut chunk = [0u8; 16 * 1024];
    for (index, fd) in [&inner.out, &inner.err].into_iter().enumerate() {
        let buffer = &mut partial[index];
        loop {
            let mut more = true;
            while buffer.len() < CHUNK {
                let room = (CHUNK - buffer.len()).min(chunk.len());
                match nix::unistd::read(fd, &mut chunk[..room]) {
                    Ok(0) => more = false,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(_) => more = false,
                }
                if !more {
                    break;
                }
            }
            // Whole lines; a line longer than a frame goes in pieces.
            let cut = if flush {
                buffer.len()
            } else {
                match buffer.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if buffer.len() >= CHUNK => buffer.len(),
                    None => 0,
                }
            };
            if cut == 0 {
                break;
            }
            if inner.link.take_credit(cut as u64) {
                let frame = FromWorker::Output {
                    number: inner.task.load(Ordering::SeqCst),
                    stderr: index == 1,
                    data: buffer[..cut].into(),
                };
                if let Ok(bytes) = wire::encode(&frame) {
                    let _ = inner.link.transport().send(0, &bytes);
                }
            }
            // Without credit the spawner is gone: the output is dropped, so the task
            // does not block on a pipe nobody will read.
            buffer.drain(..cut);
        }
    }
}
