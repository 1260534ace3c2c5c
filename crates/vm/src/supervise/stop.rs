//! Stopping what a command started: its process group and the supervisor's children.
//! Runs in the supervisor (see [`super::supervisor`]): system calls only.

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Stopping a task: `SIGTERM` to everything, then `SIGKILL` after the grace period.
pub(super) struct Stop {
    command: libc::pid_t,
    grace: Duration,
    since: Option<Instant>,
    killing: bool,
    /// Children already sent `SIGTERM`, so that a process that handles it (to save its
    /// results, say) is not interrupted again and again; beyond its size, they are.
    termed: [libc::pid_t; 256],
    termed_len: usize,
}

impl Stop {
    pub(super) fn new(command: libc::pid_t, grace: Duration) -> Stop {
        Stop {
            command,
            grace,
            since: None,
            killing: false,
            termed: [0; 256],
            termed_len: 0,
        }
    }

    pub(super) fn started(&self) -> bool {
        self.since.is_some()
    }

    /// `SIGTERM` to the command's process group and to every child of the supervisor.
    pub(super) fn start(&mut self) {
        self.since = Some(Instant::now());
        // SAFETY: kill on the process group the command made for itself.
        unsafe { libc::kill(-self.command, libc::SIGTERM) };
        self.signal_children();
    }

    /// Signals the children that came up since the last round (orphans are re-parented
    /// to the supervisor as their parents die); after the grace period, `SIGKILL` to all.
    pub(super) fn round(&mut self) {
        if !self.killing
            && self
                .since
                .is_some_and(|since| since.elapsed() >= self.grace)
        {
            self.killing = true;
            // SAFETY: as in `start`.
            unsafe { libc::kill(-self.command, libc::SIGKILL) };
        }
        self.signal_children();
    }

    fn signal_children(&mut self) {
        let signal = if self.killing {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        for_each_child(|pid| {
            if !self.killing {
                if self.termed[..self.termed_len].contains(&pid) {
                    return;
                }
                if self.termed_len < self.termed.len() {
                    self.termed[self.termed_len] = pid;
                    self.termed_len += 1;
                }
            }
            // SAFETY: kill on a child of this process (not reaped, so not recycled).
            unsafe { libc::kill(pid, signal) };
        });
    }
}

/// Calls `f` with the pid of every child of this (single-threaded) process.
fn for_each_child(mut f: impl FnMut(libc::pid_t)) {
    let mut buffer = [0u8; 4096];
    // SAFETY: opening a constant path, reading into a local buffer, closing.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/children".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        scan_proc(&mut f);
        return;
    }
    // A number split between two reads is carried over.
    let mut number: libc::pid_t = 0;
    let mut digits = false;
    loop {
        // SAFETY: reading into a local buffer of its length.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            break;
        }
        for &byte in buffer.iter().take(n as usize) {
            if byte.is_ascii_digit() {
                number = number
                    .saturating_mul(10)
                    .saturating_add(i32::from(byte - b'0'));
                digits = true;
            } else if digits {
                f(number);
                number = 0;
                digits = false;
            }
        }
    }
    if digits {
        f(number);
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// Without `/proc/<pid>/task/<tid>/children` (a kernel built without it): reads the
/// parent of every process in `/proc`.
fn scan_proc(f: &mut impl FnMut(libc::pid_t)) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: opening a constant path.
    let dir = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return;
    }
    let mut entries = [0u8; 8192];
    loop {
        // SAFETY: getdents64 into a local buffer of its length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
            let reclen = usize::from(u16::from_ne_bytes([entries[at + 16], entries[at + 17]]));
            if reclen == 0 {
                break;
            }
            let name = &entries[at + 19..(at + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(pid) = parse_pid(name)
                && parent_of(dir, name) == Some(me)
            {
                f(pid);
            }
            at += reclen;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(dir) };
}

fn parse_pid(name: &[u8]) -> Option<libc::pid_t> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut pid: libc::pid_t = 0;
    for &b in name {
        pid = pid.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
    }
    Some(pid)
}

/// The parent of process `name` (a directory of `/proc`, opened as `proc`), from its
/// `stat`: the field after the state, which follows the last `)`.
fn parent_of(proc: RawFd, name: &[u8]) -> Option<libc::pid_t> {
    let mut path = [0u8; 24];
    let tail = b"/stat\0";
    if name.len() + tail.len() > path.len() {
        return None;
    }
    path[..name.len()].copy_from_slice(name);
    path[name.len()..name.len() + tail.len()].copy_from_slice(tail);
    // SAFETY: a NUL-terminated path in a local buffer.
    let fd = unsafe { libc::openat(proc, path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut stat = [0u8; 1024];
    // SAFETY: reading into a local buffer of its length, then closing.
    let n = unsafe { libc::read(fd, stat.as_mut_ptr().cast(), stat.len()) };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    let stat = stat.get(..usize::try_from(n).ok()?)?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    // ") S 1234 ..."
    let rest = stat.get(close + 2..)?;
    let mut fields = rest.split(|&b| b == b' ');
    fields.next()?;
    parse_pid(fields.next()?)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pid(b"1234"), Some(1234));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn the_scan_and_the_children_file_agree() {
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let mut listed = Vec::new();
        for_each_child(|pid| listed.push(pid));
        let mut scanned = Vec::new();
        scan_proc(&mut |pid| scanned.push(pid));
        let _ = child.kill();
        let _ = child.wait();
        let pid = child.id() as libc::pid_t;
        // Other tests' children may come and go in between; ours is in both lists (the
        // children file lists the children this thread forked).
        assert!(scanned.contains(&pid), "{scanned:?}");
        assert!(listed.contains(&pid), "{listed:?}");
    }
}
