//! The TCP backend's limits and how they are read: the frame limit (`PARVM_MAX_FRAME`),
//! the handshake timeout (`PARVM_HANDSHAKE_TIMEOUT`) and the joining wait
//! (`PARVM_CONNECT_WAIT`), each given in options or else read from its variable.
//!
//! Owns parsing those values and the error that names the variable. Must not know
//! sockets, handshakes or the star.

use std::time::Duration;

use super::options::{DEFAULT_HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT_VAR, MAX_FRAME_VAR};
use crate::{Error, frame};

/// The smallest frame limit the variable accepts: the VM's own messages must fit.
const MIN_MAX_FRAME: u64 = 4096;

/// Reads a variable: `None` when unset or empty, else `parse` of its value.
pub(super) fn from_env<T>(
    var: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, Error> {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |value: String, reason: String| Error::BadEnv { var, value, reason };
    let text = value
        .into_string()
        .map_err(|v| bad(v.to_string_lossy().into_owned(), "it is not UTF-8".into()))?;
    parse(text.trim())
        .map(Some)
        .map_err(|reason| bad(text, reason))
}

/// Parses seconds (`5`, `0.5`); `zero_ok` allows 0.
pub(super) fn parse_seconds(text: &str, zero_ok: bool) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| "give a number of seconds such as `5` or `0.5`".to_string())?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) || secs > 1e9 {
        return Err(format!(
            "give a number of seconds {} 1000000000",
            if zero_ok {
                "from 0 to"
            } else {
                "above 0 and at most"
            }
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count with an optional binary suffix (`1048576`, `64K`, `512M`, `1G`,
/// `1GiB`), at least [`MIN_MAX_FRAME`].
fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale: u64 = match lower[digits.len()..]
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err("use a byte count such as `1048576`, `64K`, `512M` or `1G`".into()),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| "use a byte count such as `1048576`, `64K`, `512M` or `1G`".to_string())?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| "the byte count is too large".to_string())?;
    if bytes < MIN_MAX_FRAME {
        return Err(format!(
            "at least {MIN_MAX_FRAME} bytes are needed for parvm's own messages"
        ));
    }
    Ok(bytes)
}

/// Parses a frame limit as `PARVM_MAX_FRAME` takes it: a byte count with an optional
/// binary suffix (`1048576`, `64K`, `512M`, `1G`), at least 4 KiB.
///
/// # Errors
/// What is wrong with `text`, in words.
pub fn parse_max_frame(text: &str) -> Result<u64, String> {
    parse_bytes(text.trim())
}

/// The handshake timeout: `given`, else `PARVM_HANDSHAKE_TIMEOUT`, else 5 s.
pub(super) fn handshake_timeout(given: Option<Duration>) -> Result<Duration, Error> {
    match given {
        Some(timeout) => Ok(timeout),
        None => Ok(
            from_env(HANDSHAKE_TIMEOUT_VAR, |t| parse_seconds(t, false))?
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        ),
    }
}

/// The frame limit: `given`, else `PARVM_MAX_FRAME`, else 1 GiB.
pub(super) fn max_frame(given: Option<u64>) -> Result<u64, Error> {
    match given {
        Some(bytes) => Ok(bytes),
        None => Ok(from_env(MAX_FRAME_VAR, parse_bytes)?.unwrap_or(frame::DEFAULT_MAX_FRAME)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_documented() {
        let cases: [(&str, Option<u64>); 10] = [
            ("1048576", Some(1 << 20)),
            ("64K", Some(64 << 10)),
            ("64kib", Some(64 << 10)),
            ("512M", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("2GB", Some(2 << 30)),
            ("4095", None),
            ("1.5G", None),
            ("lots", None),
            ("99999999999G", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_max_frame(text).ok(), want, "{text}");
        }
        assert_eq!(parse_seconds("5", false), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("0.25", false), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("0", true), Ok(Duration::ZERO));
        for bad in ["0", "-1", "soon", "inf", "NaN", "1e12"] {
            assert!(parse_seconds(bad, false).is_err(), "{bad}");
        }
    }
}
