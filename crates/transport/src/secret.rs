//! The shared secret that authenticates TCP connections.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::Error;

/// The variable naming the secret file, as this crate's messages name it (the VM reads it
/// through `parvm-env-config`'s `Config::secret_file`).
pub const SECRET_FILE_VAR: &str = "PARVM_SECRET_FILE";

/// A shared secret: the key of the HMAC-SHA256 challenge-response of the TCP handshake.
///
/// A file holds it; the file's content (trailing whitespace removed) is the key. A file
/// created by [`Secret::load_or_create`] holds 32 random bytes written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes; use long random bytes.
    #[must_use]
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// 32 fresh random bytes.
    #[must_use]
    pub fn random() -> Secret {
        let bytes: [u8; 32] = rand::random();
        Secret(bytes.to_vec())
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0
    }

    /// Reads the secret file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, belongs to another user, is readable or writable by group
    /// or others ([`Error::SecretInsecure`], fix with `chmod 600`), or is empty.
    pub fn load(path: &Path) -> Result<Secret, Error> {
        let read_err = |source| Error::SecretIo {
            what: "read",
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::SecretInsecure {
                path: path.to_path_buf(),
                mode,
            });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::SecretOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                me,
            });
        }
        let mut bytes = fs::read(path).map_err(read_err)?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(Error::SecretEmpty {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret(bytes))
    }

    /// Reads the secret file at `path`, creating it first when it does not exist (32
    /// random bytes as hex, mode 0600, in a folder made with mode 0700 when missing).
    ///
    /// # Errors
    /// As [`Secret::load`], or the file cannot be created.
    pub fn load_or_create(path: &Path) -> Result<Secret, Error> {
        let create_err = |source| Error::SecretIo {
            what: "create",
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(create_err)?;
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let secret = Secret::random();
                let hex: String = secret.0.iter().map(|b| format!("{b:02x}")).collect();
                file.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(create_err)?;
                tracing::info!("created secret file {}", path.display());
            }
            // Another process may have created it meanwhile; read what is there.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(create_err(err)),
        }
        Secret::load(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_hides_the_bytes() {
        assert_eq!(
            format!("{:?}", Secret::new(b"hunter2".to_vec())),
            "Secret(..)"
        );
    }

    #[test]
    fn trailing_whitespace_is_not_part_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "passphrase \n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Secret::load(&path).unwrap(),
            Secret::new(b"passphrase".to_vec())
        );
    }

    #[test]
    fn empty_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(matches!(
            Secret::load(&path),
            Err(Error::SecretIo { what: "read", .. })
        ));
        fs::write(&path, "\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Secret::load(&path),
            Err(Error::SecretEmpty { .. })
        ));
    }
}
