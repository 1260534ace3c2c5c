//! Baselines a bench compares against and installs when they are missing (GNU parallel,
//! rsync, OpenSSH's client and server): from Debian's packages, as root, without recommended
//! packages.

use std::path::Path;
use std::process::Command;

use crate::{nix_is_root, on_path};

/// Makes `program` available, installing `package` with apt-get when it is missing and
/// this runs as root. Returns why not when it cannot, for the bench to print as skipped.
pub fn ensure(program: &str, package: &str) -> Result<(), String> {
    if is_installed(program) {
        return Ok(());
    }
    if !nix_is_root() {
        return Err(format!(
            "`{program}` is not installed (on PATH, /usr/sbin or /sbin) and installing it needs root (apt-get install {package})"
        ));
    }
    if !on_path("apt-get") {
        return Err(format!(
            "`{program}` is not installed (on PATH, /usr/sbin or /sbin) and there is no apt-get to install {package}"
        ));
    }
    println!("{program}: not installed, installing {package} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    // A fresh image may have no package lists yet: update once and retry.
    let installed = install()
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|status| status.success())
            && install());
    if installed && is_installed(program) {
        Ok(())
    } else {
        Err(format!("`apt-get install {package}` failed"))
    }
}

/// Whether `program` is on the PATH or in a system binaries folder: daemons such as `sshd`
/// live in `/usr/sbin`, which a user's PATH often lacks (the bench looks there too).
fn is_installed(program: &str) -> bool {
    on_path(program)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(program).is_file())
}
