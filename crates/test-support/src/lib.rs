//! Helpers for parvm's own tests; not for users.
//!
//! Root ignores permission bits, and CI runs as root, so a test about read-only folders
//! proves nothing there unless it runs as somebody else: [`as_unprivileged`] runs its body
//! as `nobody` in a copy of the calling test binary. [`mpirun`] runs `mpirun` so that a
//! hang fails the test instead of CI, and nothing outlives it.

pub mod mpirun;

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
    let output = Command::new(&exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_VAR, "1")
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test binary as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed as nobody ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
