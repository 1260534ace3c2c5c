//! Helpers for parvm's own tests; not for users.
//!
//! Root ignores permission bits, and CI runs as root, so a test about read-only folders
//! proves nothing there unless it runs as somebody else: [`as_unprivileged`] runs its body
//! as `nobody` in a copy of the calling test binary. [`mpirun`] runs `mpirun` so that a
//! hang fails the test instead of CI, and nothing outlives it. [`netns::NetNs`] is another
//! "host" on a network link that can be cut. [`file_system_label`] names the file system a
//! benchmark measures on.

pub mod mpirun;
pub mod netns;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Set in the child that runs a test as `nobody`.
const CHILD_VAR: &str = "PARVM_TEST_UNPRIVILEGED";

/// The uid and gid of `nobody` on Debian and most Linux systems.
pub const NOBODY: u32 = 65534;

/// Runs `body` as a user who is not root.
///
/// When this process is not root (or is that child already), `body` runs here. As root,
/// the calling test binary is copied into a folder `nobody` owns (the original may live
/// where `nobody` cannot reach, such as under `/root`) and run as `nobody` with only the
/// test `name` (its full path, e.g. `unprivileged::my_test`), with `TMPDIR` in that
/// folder; that run's outcome is this test's.
///
/// # Panics
/// When the child cannot be started, or the test failed in it (with its output).
pub fn as_unprivileged(name: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_VAR).is_some() || !nix::unistd::Uid::effective().is_root() {
        body();
        return;
    }
    // In /tmp itself, which everybody can reach: $TMPDIR may be under /root.
    let dir = tempfile::tempdir_in("/tmp").expect("a temporary folder in /tmp");
    let exe = dir.path().join("test-binary");
    std::fs::copy(std::env::current_exe().expect("own path"), &exe).expect("copy the test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .expect("make the copy executable");
    for path in [dir.path(), exe.as_path()] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    }
    // As root, `uid` also drops the supplementary groups.
    let mut command = Command::new(&exe);
    command
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_VAR, "1")
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .uid(NOBODY)
        .gid(NOBODY);
    let output = run_fresh_executable(&mut command).expect("run the test binary as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed as nobody ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command`, whose program was written by this process a moment ago.
///
/// While the copy was open for writing, another test thread may have forked: its child
/// holds the write descriptor until it execs or exits, and exec of the copy then fails with
/// `ETXTBSY` ("text file busy"). That window is short and ends by itself, so the start is
/// tried again for up to 10 s before the error is reported.
fn run_fresh_executable(command: &mut Command) -> std::io::Result<std::process::Output> {
    retry_for_a_while(
        || command.output(),
        |e: &std::io::Error| e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32),
    )
}

/// Runs `attempt` until it succeeds or fails otherwise than `passing` says, for up to 10 s,
/// pausing 1 ms, then twice as long each time (at most 100 ms): for a failure that a
/// forked child of another test thread causes until it execs, and that ends by itself.
fn retry_for_a_while<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    passing: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match attempt() {
            Err(e) if passing(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Runs `bind` until it succeeds or fails otherwise than with the port in use (`in_use`
/// says which errors those are), for up to 10 s: for binding the port of a
/// [`listener_below_ephemeral_ports`] stand-in just dropped. Another test thread that
/// forked meanwhile holds a copy of the stand-in's descriptor until its child execs, and
/// the port stays in use (listening) until then: a short window that ends by itself.
///
/// # Errors
/// The last error of `bind`.
pub fn rebind<T, E>(
    bind: impl FnMut() -> Result<T, E>,
    in_use: impl Fn(&E) -> bool,
) -> Result<T, E> {
    retry_for_a_while(bind, in_use)
}

/// A loopback listener on a port the kernel never hands out as an outgoing connection's
/// own port (below `ip_local_port_range`), for a test that lets the port go and binds it
/// again: no outgoing connection (another test's, or a client retrying towards the port,
/// which can connect to itself) can take it in between. Bind it again with [`rebind`].
///
/// # Panics
/// No port between 20 000 and the ephemeral range is free.
pub fn listener_below_ephemeral_ports() -> std::net::TcpListener {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let first_ephemeral: u16 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .unwrap_or(32768);
    let span = first_ephemeral.saturating_sub(20_000).max(1);
    // Start at a pseudo-random place, so tests running at once rarely meet.
    let offset = u16::try_from(std::process::id() % u32::from(span)).unwrap_or(0);
    (0..span)
        .map(|i| 20_000 + (offset + i) % span)
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free loopback port between 20000 and the ephemeral range")
}

/// The name of the file system holding `path`, as `stat -f` gives it ("tmpfs", "xfs",
/// "ext2/ext3" for ext4 too), or "unknown": benchmarks print it beside their figures.
pub fn file_system_name(path: &std::path::Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// [`file_system_name`], with ", no journal" for an ext4 made without one: benchmarks print
/// it beside their figures, since there creating a file costs several times more after many
/// were deleted (the kernel then steps over each inode deleted in the last minutes, one
/// lookup apiece, before it reuses one; measured here: 66-180 us instead of 7-10 us).
pub fn file_system_label(path: &std::path::Path) -> String {
    let name = file_system_name(path);
    if ext4_without_journal(path) {
        format!("{name}, no journal")
    } else {
        name
    }
}

/// Whether `path` is on an ext4 without a journal: its device's `journal_task` in
/// `/sys/fs/ext4/` says `<none>`.
fn ext4_without_journal(path: &std::path::Path) -> bool {
    let source = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--target"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    let Some(device) = source
        .as_deref()
        .map(str::trim)
        .and_then(|s| s.rsplit('/').next())
        .filter(|d| !d.is_empty())
    else {
        return false;
    };
    std::fs::read_to_string(format!("/sys/fs/ext4/{device}/journal_task"))
        .is_ok_and(|task| task.trim() == "<none>")
}

/// How much memory [`touch_memory`] writes: more than a benchmark allocates before its
/// figures settle.
pub const TOUCHED_MEMORY: usize = 2 << 30;

/// Writes [`TOUCHED_MEMORY`] bytes of memory once and frees them, for a benchmark to call
/// before it times anything. On a freshly booted VM the first use of a page of guest
/// memory costs the hypervisor a fault (measured: 256 MiB written into tmpfs in 565 ms the
/// first time, 105 ms once the memory had been used), and the kernel hands freed pages out
/// again first. Without this, the measurements that ran first paid for the VM's boot: a
/// cold ship of 4 x 64 MiB on tmpfs took 478-525 ms on a VM up for minutes, 274-343 ms
/// once its memory had been used.
pub fn touch_memory() {
    let touched = vec![1u8; TOUCHED_MEMORY];
    std::hint::black_box(&touched);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_label_starts_with_its_name_and_tmpfs_has_no_journal_note() {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            assert_eq!(file_system_label(shm), "tmpfs");
        }
        let tmp = std::env::temp_dir();
        let label = file_system_label(&tmp);
        assert!(label.starts_with(&file_system_name(&tmp)), "{label}");
    }
}
