//! Worker output: file descriptors 1 and 2 go into pipes, and what the task writes reaches
//! the spawner as [`FromWorker::Output`] frames tagged with the running task's number.
//!
//! A thread forwards output while a task runs. When the task ends, the worker thread takes
//! the same lock and reads what is left itself, so every line a task wrote reaches the
//! spawner before its result, without waiting on the forwarding thread.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use parvm_transport::Transport;

use crate::Error;
use crate::protocol::{self, FromWorker};

/// Longest partial line kept back waiting for its newline.
const MAX_PARTIAL: usize = 64 * 1024;

struct Inner {
    task: AtomicU64,
    out: OwnedFd,
    err: OwnedFd,
    partial: Mutex<[Vec<u8>; 2]>,
    transport: Arc<dyn Transport>,
}

/// Redirected output of a worker process.
pub(crate) struct Capture {
    inner: Arc<Inner>,
}

impl Capture {
    /// Redirects fd 1 and 2 and starts the forwarding thread. With `watch_parent`, the
    /// thread also ends the process when its parent (the spawner) is gone, so a worker does
    /// not outlive a killed spawner while a long task runs.
    pub(crate) fn start(
        transport: Arc<dyn Transport>,
        watch_parent: bool,
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
        nix::unistd::dup2_stdout(&out_w).map_err(io("redirect standard output"))?;
        nix::unistd::dup2_stderr(&err_w).map_err(io("redirect standard error"))?;
        drop((out_w, err_w));
        let inner = Arc::new(Inner {
            task: AtomicU64::new(0),
            out,
            err,
            partial: Mutex::new([Vec::new(), Vec::new()]),
            transport,
        });
        let parent = nix::unistd::getppid();
        let thread_inner = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("parvm-output".to_owned())
            .spawn(move || forward(&thread_inner, watch_parent.then_some(parent)))
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

fn forward(inner: &Inner, parent: Option<nix::unistd::Pid>) {
    loop {
        let mut fds = [
            PollFd::new(inner.out.as_fd(), PollFlags::POLLIN),
            PollFd::new(inner.err.as_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, PollTimeout::from(250u16));
        if let Some(parent) = parent
            && nix::unistd::getppid() != parent
        {
            // The spawner is gone while a task runs: leave now. The task folder stays behind
            // with a dead owner, and the next worker start sweeps it as stale.
            std::process::exit(70);
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

/// Reads both pipes until they are empty and sends complete lines (all bytes with `flush`).
fn pump(inner: &Inner, partial: &mut [Vec<u8>; 2], flush: bool) {
    let mut chunk = [0u8; 16 * 1024];
    for (index, fd) in [&inner.out, &inner.err].into_iter().enumerate() {
        let buffer = &mut partial[index];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        let cut = if flush || buffer.len() > MAX_PARTIAL {
            buffer.len()
        } else {
            buffer
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if cut == 0 {
            continue;
        }
        let frame = FromWorker::Output {
            number: inner.task.load(Ordering::SeqCst),
            stderr: index == 1,
            data: buffer[..cut].into(),
        };
        if let Ok(bytes) = protocol::encode(&frame) {
            let _ = inner.transport.send(0, &bytes);
        }
        buffer.drain(..cut);
    }
}
