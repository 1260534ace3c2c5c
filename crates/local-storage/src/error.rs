//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while opening local storage or taking, listing and
/// removing task folders.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local storage root does not exist or is not a folder.
    #[error(
        "local storage root `{}` is not an existing folder: create it or set PARALLEL_LOCAL_STORAGE to one",
        path.display()
    )]
    RootMissing {
        /// The local storage root.
        path: PathBuf,
    },
    /// The local storage root, or a folder above it, lets another user rename or replace
    /// what is in it, and so swap the per-user folder for a link to a place of their choice.
    #[error(
        "local storage root `{}` is not safe: `{}` {why}, so another user could swap your folder in it; set PARALLEL_LOCAL_STORAGE to a folder only you or root can change (such as /tmp itself, or a folder you made with `mkdir -m 700`)",
        local_root.display(),
        folder.display()
    )]
    RootUnsafe {
        /// The local storage root.
        local_root: PathBuf,
        /// The folder (the root or one above it) that others can change.
        folder: PathBuf,
        /// Who can change it, for people.
        why: String,
    },
    /// The local storage root (or the per-user folder in it) cannot be written.
    #[error(
        "local storage `{}` is not writable: make it writable or set PARALLEL_LOCAL_STORAGE to a writable folder",
        path.display()
    )]
    NotWritable {
        /// The folder that cannot be written.
        path: PathBuf,
        /// The reason reported by the system.
        #[source]
        source: std::io::Error,
    },
    /// The effective user has no name, so the per-user folder cannot be named.
    #[error(
        "cannot name your per-user folder in local storage `{}`: the user has no name",
        local_root.display()
    )]
    UserName {
        /// The local storage root.
        local_root: PathBuf,
        /// The reason from the configuration crate.
        #[source]
        source: parvm_env_config::Error,
    },
    /// The per-user folder is a symlink; following it could hand task data to whoever made it.
    #[error(
        "per-user storage folder `{}` is a symlink, refusing to use it: remove it (parvm makes a fresh one)",
        path.display()
    )]
    UserDirSymlink {
        /// The per-user folder.
        path: PathBuf,
    },
    /// Something other than a folder sits where the per-user folder should be.
    #[error(
        "per-user storage path `{}` is not a folder: remove it (parvm makes a fresh folder)",
        path.display()
    )]
    UserDirNotFolder {
        /// The per-user folder.
        path: PathBuf,
    },
    /// The per-user folder belongs to another user, who could read or replace task data.
    #[error(
        "per-user storage folder `{}` is owned by uid {owner}, not by you (uid {expected}): remove it or change its owner",
        path.display()
    )]
    UserDirNotOwned {
        /// The per-user folder.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        expected: u32,
    },
    /// The per-user folder grants access to group or others.
    #[error(
        "per-user storage folder `{}` has mode {mode:04o}, open to group or others: remove it or fix its mode (chmod 700)",
        path.display()
    )]
    UserDirMode {
        /// The per-user folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file or folder could not be inspected.
    #[error(
        "cannot inspect `{}` in local storage: check that it exists and that you may read it",
        path.display()
    )]
    Inspect {
        /// What was inspected.
        path: PathBuf,
        /// The reason reported by the system.
        #[source]
        source: std::io::Error,
    },
    /// A task folder could not be created or prepared (owner marker, lock file).
    #[error(
        "cannot create task folder `{}`: check free space and permissions of its folder, or set PARALLEL_LOCAL_STORAGE to another folder",
        path.display()
    )]
    CreateFolder {
        /// The task folder.
        path: PathBuf,
        /// The reason reported by the system.
        #[source]
        source: std::io::Error,
    },
    /// The persistent folder of a VM index is already handed out and not yet released.
    #[error(
        "the persistent folder for vm index {vm_index} is still in use by another task of this process: release it first"
    )]
    PersistentInUse {
        /// The VM index.
        vm_index: u32,
    },
    /// A folder could not be removed.
    #[error(
        "cannot remove `{}` from local storage: remove it by hand, or let a later `parvm storage sweep` retry",
        path.display()
    )]
    Remove {
        /// The file or folder that resisted.
        path: PathBuf,
        /// The reason reported by the system.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message names what it is about and says what to do.
    #[test]
    fn every_message_names_its_object_and_a_remedy() {
        let path = || PathBuf::from("/scratch/parvm-ann");
        let io = || std::io::Error::from_raw_os_error(libc::EACCES);
        let rows: Vec<(Error, &[&str])> = vec![
            (
                Error::RootMissing { path: path() },
                &["/scratch/parvm-ann", "create it", "PARALLEL_LOCAL_STORAGE"],
            ),
            (
                Error::RootUnsafe {
                    local_root: PathBuf::from("/scratch/x"),
                    folder: PathBuf::from("/scratch"),
                    why: "is owned by uid 7".into(),
                },
                &[
                    "/scratch/x",
                    "`/scratch` is owned by uid 7",
                    "PARALLEL_LOCAL_STORAGE",
                ],
            ),
            (
                Error::NotWritable {
                    path: path(),
                    source: io(),
                },
                &[
                    "/scratch/parvm-ann",
                    "make it writable",
                    "PARALLEL_LOCAL_STORAGE",
                ],
            ),
            (
                Error::UserName {
                    local_root: PathBuf::from("/scratch"),
                    source: parvm_env_config::Error::NoUserName { uid: 1234 },
                },
                &["/scratch", "no name"],
            ),
            (
                Error::UserDirSymlink { path: path() },
                &["/scratch/parvm-ann", "symlink", "remove it"],
            ),
            (
                Error::UserDirNotFolder { path: path() },
                &["/scratch/parvm-ann", "not a folder", "remove it"],
            ),
            (
                Error::UserDirNotOwned {
                    path: path(),
                    owner: 7,
                    expected: 8,
                },
                &["/scratch/parvm-ann", "uid 7", "uid 8", "change its owner"],
            ),
            (
                Error::UserDirMode {
                    path: path(),
                    mode: 0o755,
                },
                &["/scratch/parvm-ann", "0755", "chmod 700"],
            ),
            (
                Error::Inspect {
                    path: path(),
                    source: io(),
                },
                &["/scratch/parvm-ann", "check that it exists"],
            ),
            (
                Error::CreateFolder {
                    path: path(),
                    source: io(),
                },
                &["/scratch/parvm-ann", "free space", "PARALLEL_LOCAL_STORAGE"],
            ),
            (
                Error::PersistentInUse { vm_index: 3 },
                &["vm index 3", "release it first"],
            ),
            (
                Error::Remove {
                    path: path(),
                    source: io(),
                },
                &[
                    "/scratch/parvm-ann",
                    "remove it by hand",
                    "parvm storage sweep",
                ],
            ),
        ];
        for (error, words) in rows {
            let text = error.to_string();
            for word in words {
                assert!(text.contains(word), "{word:?} missing in: {text}");
            }
            assert!(!text.ends_with('.'), "{text}");
            assert!(text.starts_with(char::is_lowercase), "{text}");
        }
    }
}
