//! The probe of whether a worker sees a mirrored root as the spawner does: the spawner
//! writes a marker file holding a random token into the root, and a worker reads it under
//! its own root.
//!
//! Markers are named `.parvm-probe-<pid>-<random>` so that one left behind by a killed
//! spawner is recognisable (and harmless: a hidden file that `*` does not match); a live
//! spawner removes its markers when the VM is dropped.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::wire::Probe;

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
    /// cannot write gets a probe without a marker: it counts as not shared.
    pub(crate) fn write(index: u32, root: &Path) -> Marker {
        let random: [u8; 16] = rand::random();
        let token = hex(&random);
        let name = format!("{MARKER_PREFIX}{}-{}", std::process::id(), &token[..12]);
        let path = root.join(&name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut file| file.write_all(token.as_bytes()));
        match written {
            Ok(()) => Marker {
                path: Some(path),
                probe: Probe {
                    root: index,
                    marker: Some(name),
                    token,
                },
            },
            Err(e) => {
                tracing::debug!(
                    root = %root.display(),
                    error = %e,
                    "cannot write a probe marker; the root is shipped to every worker"
                );
                let _ = std::fs::remove_file(&path);
                Marker {
                    path: None,
                    probe: Probe {
                        root: index,
                        marker: None,
                        token,
                    },
                }
            }
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
/// under this host's root of that index, with its token. Read without following a symlink,
/// and at most a little more than the token.
pub(crate) fn is_shared(roots: &[PathBuf], probe: &Probe) -> bool {
    let (Some(name), Some(root)) = (&probe.marker, roots.get(probe.root as usize)) else {
        return false;
    };
    // A name from the spawner: one component, as written.
    if name.contains('/') || !name.starts_with(MARKER_PREFIX) {
        return false;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(name));
    let mut held = Vec::new();
    match file {
        Ok(file) => match file
            .take(probe.token.len() as u64 + 1)
            .read_to_end(&mut held)
        {
            Ok(_) => held == probe.token.as_bytes(),
            Err(_) => false,
        },
        Err(_) => false,
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

    #[test]
    fn a_root_the_spawner_cannot_write_counts_as_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-there");
        let marker = Marker::write(0, &missing);
        assert_eq!(marker.probe().marker, None);
        assert!(!is_shared(&[missing], marker.probe()));
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
