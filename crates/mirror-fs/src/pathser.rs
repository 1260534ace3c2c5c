//! Serde for paths that may not be UTF-8: a UTF-8 path travels as a string (readable in
//! JSON), any other path as its raw bytes, so non-UTF-8 file names survive a round trip.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum ReprRef<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

fn repr(path: &Path) -> ReprRef<'_> {
    match path.to_str() {
        Some(text) => ReprRef::Text(text),
        None => ReprRef::Bytes(path.as_os_str().as_bytes()),
    }
}

fn from_repr(repr: Repr) -> PathBuf {
    match repr {
        Repr::Text(text) => PathBuf::from(text),
        Repr::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
    }
}

/// Serializes one path.
pub(crate) fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    repr(path).serialize(serializer)
}

/// Deserializes one path.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    Repr::deserialize(deserializer).map(from_repr)
}

/// Serde for a list of paths.
pub(crate) mod vec {
    use super::*;

    /// Serializes a list of paths.
    pub(crate) fn serialize<S: Serializer>(
        paths: &[PathBuf],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(paths.iter().map(|p| repr(p)))
    }

    /// Deserializes a list of paths.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PathBuf>, D::Error> {
        Ok(Vec::<Repr>::deserialize(deserializer)?
            .into_iter()
            .map(from_repr)
            .collect())
    }
}

/// Serde for a duration as fractional seconds (readable in JSON).
pub(crate) mod seconds {
    use std::time::Duration;

    use super::*;

    /// Serializes a duration as seconds.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(d.as_secs_f64())
    }

    /// Deserializes a duration from seconds.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
