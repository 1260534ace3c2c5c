//! The probe of whether a worker sees a mirrored root as the spawner does: the spawner
//! writes a marker file holding a random token into the root, and a worker reads it under
//! its own root.
//!
//! Markers are named `.parvm-probe-<pid>-<random>` and hold the token and the boot id of
//! the spawner's host, so that one left behind by a killed spawner is recognisable (and
//! harmless: a hidden file that `*` does not match). A live spawner removes its markers
//! when the VM is dropped, and a spawner that writes a marker removes those that spawners
//! of its own host and boot left behind (their process is gone).
//!
//! A root the spawner cannot write to (a read-only model library) gets no marker: the probe
//! names the folder instead ([`RootFolder`]: the boot id, device and inode), so the workers
//! of the spawner's own host that see that very folder read it directly, and every other
//! host has it shipped. When every worker runs on the spawner's kernel (the local backend)
//! that is all a probe needs, and no marker is written at all.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::wire::{Probe, RootFolder};

/// The prefix of every marker's file name.
pub(crate) const MARKER_PREFIX: &str = ".parvm-probe-";

/// A marker that the spawner wrote; removed when dropped.
#[derive(Debug)]
pub(crate) struct Marker {
    path: Option<PathBuf>,
    probe: Probe,
}

impl Marker {
    /// Writes a new marker into mirrored root `index` at `root`. A root the spawner
    /// cannot write gets a probe without a marker, naming the folder instead: shared only
    /// with workers of this host that see that folder.
    pub(crate) fn write(index: u32, root: &Path) -> Marker {
        let random: [u8; 16] = rand::random();
        let token = hex(&random);
        let name = format!("{MARKER_PREFIX}{}-{}", std::process::id(), &token[..12]);
        let path = root.join(&name);
        let boot = boot_id();
        sweep_stale(root, boot.as_deref());
        let content = match &boot {
            Some(boot) => format!("{token}\nboot {boot}\n"),
            None => format!("{token}\n"),
        };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut file| file.write_all(content.as_bytes()));
        match written {
            Ok(()) => Marker {
                path: Some(path),
                probe: Probe {
                    root: index,
                    marker: Some(name),
                    token,
                    folder: None,
                },
            },
            Err(e) => {
                tracing::debug!(
                    root = %root.display(),
                    error = %e,
                    "cannot write a probe marker; the root is read directly only by workers of this host that see the same folder, and shipped to the others"
                );
                let _ = std::fs::remove_file(&path);
                Marker::naming_folder(index, root)
            }
        }
    }

    /// A probe of mirrored root `index` at `root` that names the folder instead of writing
    /// a marker: enough, and nothing written into the user's folder, when every worker
    /// runs on this kernel (the local backend's are the spawner's children); also what a
    /// root the spawner cannot write gets. A root that cannot be looked at is named by
    /// nothing: shipped to every worker.
    pub(crate) fn naming_folder(index: u32, root: &Path) -> Marker {
        let folder = boot_id()
            .zip(std::fs::metadata(root).ok())
            .map(|(boot, meta)| RootFolder {
                boot,
                dev: meta.dev(),
                ino: meta.ino(),
            });
        Marker {
            path: None,
            probe: Probe {
                root: index,
                marker: None,
                token: String::new(),
                folder,
            },
        }
    }

    /// What travels to the workers.
    pub(crate) fn probe(&self) -> &Probe {
        &self.probe
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a probe marker; remove it by hand");
        }
    }
}

/// Whether this host sees the root of `probe` as the spawner does: its marker is there,
/// under this host's root of that index, with its token (read without following a symlink,
/// and at most a little more than the token); or, where the probe names a folder instead
/// of a marker, this host's root of that index is that very folder.
pub(crate) fn is_shared(roots: &[PathBuf], probe: &Probe) -> bool {
    let Some(root) = roots.get(probe.root as usize) else {
        return false;
    };
    let Some(name) = &probe.marker else {
        return probe
            .folder
            .as_ref()
            .is_some_and(|folder| is_folder(root, folder));
    };
    // A name from the spawner: one component, as written.
    if name.contains('/') || !name.starts_with(MARKER_PREFIX) {
        return false;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(name));
    match file.and_then(read_bounded) {
        Ok(held) => held.split(|&b| b == b'\n').next() == Some(probe.token.as_bytes()),
        Err(_) => false,
    }
}

/// Whether `root` is `folder`: this kernel is the one of the folder's boot, and `root`
/// (its symlinks followed, as mirroring follows them) has its device and inode.
fn is_folder(root: &Path, folder: &RootFolder) -> bool {
    boot_id().as_deref() == Some(folder.boot.as_str())
        && std::fs::metadata(root)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == (folder.dev, folder.ino))
}

/// The longest marker read: a token, a boot id and their labels fit well within it.
const MARKER_MAX: u64 = 256;

fn read_bounded(file: std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut held = Vec::new();
    file.take(MARKER_MAX).read_to_end(&mut held)?;
    Ok(held)
}

/// This host's boot id: with it, a marker's process id names a process of this kernel.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// Removes the markers in `root` that a spawner of this host and boot left behind: named
/// with a process id that no longer runs, holding this boot id, owned by this user.
/// Nothing else is touched, and nothing is followed.
fn sweep_stale(root: &Path, boot: Option<&str>) {
    let Some(boot) = boot else { return };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let me = nix::unistd::geteuid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(MARKER_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        // Signal 0 only asks whether the process exists (EPERM: it does, someone else's).
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if !gone {
            continue;
        }
        let path = entry.path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let Ok(file) = file else { continue };
        let owned = file
            .metadata()
            .is_ok_and(|meta| meta.is_file() && meta.uid() == me.as_raw());
        let ours = read_bounded(file).is_ok_and(|held| {
            held.split(|&b| b == b'\n')
                .nth(1)
                .is_some_and(|line| line == format!("boot {boot}").as_bytes())
        });
        if owned && ours {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a probe marker a killed spawner left")
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot remove a stale probe marker")
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_seen_under_the_same_folder_only_and_removed_when_dropped() {
        let shared = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let roots = vec![other.path().to_owned(), shared.path().to_owned()];
        let marker = Marker::write(1, shared.path());
        let probe = marker.probe().clone();
        let name = probe.marker.clone().expect("written");
        assert!(name.starts_with(".parvm-probe-"), "{name}");
        assert!(is_shared(&roots, &probe));
        // Another folder at that index, another index, a host with fewer roots.
        assert!(!is_shared(&[shared.path().to_owned()], &probe));
        assert!(!is_shared(
            &[other.path().to_owned(), other.path().to_owned()],
            &probe
        ));
        let wrong = Probe {
            token: "0".repeat(32),
            ..probe.clone()
        };
        assert!(!is_shared(&roots, &wrong));
        let longer = Probe {
            token: probe.token[..31].to_owned(),
            ..probe.clone()
        };
        assert!(
            !is_shared(&roots, &longer),
            "a prefix of the content is not the token"
        );
        let escaping = Probe {
            marker: Some(format!("{MARKER_PREFIX}x/../../{name}")),
            ..probe.clone()
        };
        assert!(!is_shared(&roots, &escaping));
        drop(marker);
        assert!(!shared.path().join(&name).exists());
        assert!(!is_shared(&roots, &probe));
    }

    /// The process id of a process that has ended.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn markers_a_killed_spawner_of_this_boot_left_are_removed_others_kept() {
        let root = tempfile::tempdir().unwrap();
        let boot = boot_id().expect("a boot id");
        let put = |name: String, content: String| {
            std::fs::write(root.path().join(&name), content).unwrap();
            name
        };
        let dead = dead_pid();
        let stale = put(
            format!("{MARKER_PREFIX}{dead}-0123456789ab"),
            format!("{}\nboot {boot}\n", "a".repeat(32)),
        );
        let other_boot = put(
            format!("{MARKER_PREFIX}{dead}-0123456789ac"),
            format!(
                "{}\nboot 00000000-0000-0000-0000-000000000000\n",
                "a".repeat(32)
            ),
        );
        let live = put(
            format!("{MARKER_PREFIX}{}-0123456789ad", std::process::id()),
            format!("{}\nboot {boot}\n", "a".repeat(32)),
        );
        let not_a_marker = put(format!("{dead}-notes.txt"), format!("x\nboot {boot}\n"));
        let marker = Marker::write(0, root.path());
        let name = marker.probe().marker.clone().unwrap();
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!left.contains(&stale), "{left:?}");
        for kept in [&other_boot, &live, &not_a_marker, &name] {
            assert!(left.contains(kept), "{kept} in {left:?}");
        }
        assert!(is_shared(&[root.path().to_owned()], marker.probe()));
    }

    #[test]
    fn a_root_the_spawner_cannot_look_at_counts_as_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there");
        let marker = Marker::write(0, &missing);
        assert_eq!(
            (&marker.probe().marker, &marker.probe().folder),
            (&None, &None)
        );
        assert!(!is_shared(&[missing], marker.probe()));
    }

    #[test]
    fn a_root_the_spawner_cannot_write_is_shared_only_where_it_is_the_same_folder() {
        // Nobody can make a file in /proc, root included.
        let proc = Path::new("/proc");
        let marker = Marker::write(0, proc);
        let probe = marker.probe().clone();
        assert_eq!(probe.marker, None);
        assert!(probe.folder.is_some(), "{probe:?}");
        assert!(is_shared(&[proc.to_owned()], &probe));
        // The same folder by another path (a worker's own setting of the root).
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("proc");
        std::os::unix::fs::symlink(proc, &link).unwrap();
        assert!(is_shared(&[link], &probe));
        // Another folder, another index, another kernel.
        assert!(!is_shared(&[links.path().to_owned()], &probe));
        assert!(!is_shared(&[], &probe));
        let other_boot = Probe {
            folder: probe.folder.clone().map(|folder| RootFolder {
                boot: "00000000-0000-0000-0000-000000000000".to_owned(),
                ..folder
            }),
            ..probe.clone()
        };
        assert!(!is_shared(&[proc.to_owned()], &other_boot));
    }

    #[test]
    fn a_probe_naming_the_folder_writes_nothing_and_is_shared_by_that_folder_only() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let marker = Marker::naming_folder(0, root.path());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        assert!(is_shared(&[root.path().to_owned()], marker.probe()));
        assert!(!is_shared(&[other.path().to_owned()], marker.probe()));
        drop(marker);
        assert!(root.path().exists());
    }

    #[test]
    fn a_symlinked_marker_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let marker = Marker::write(0, root.path());
        let probe = marker.probe().clone();
        let name = probe.marker.clone().unwrap();
        let real = root.path().join("real");
        std::fs::rename(root.path().join(&name), &real).unwrap();
        std::os::unix::fs::symlink(&real, root.path().join(&name)).unwrap();
        assert!(!is_shared(&[root.path().to_owned()], &probe));
    }
}
