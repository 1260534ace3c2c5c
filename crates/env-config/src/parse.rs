//! What a value of a `PARVM_*` variable may look like: each parser takes the value and
//! the variable's name, and returns the typed value or an error naming both.
//!
//! The accepted forms are the ones the transports and the VM accepted when they read
//! these variables themselves. [`frame_bytes`] and [`seconds`] are public so that a flag
//! standing for a variable (`parvm worker --max-frame`) accepts the same forms; give the
//! flag's name as `variable` then. This module must not know the environment or the
//! defaults: callers decide what an unset variable means.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use crate::Error;

/// The longest spin window `PARVM_SPIN_US` may ask for; larger values are cut to it.
pub(crate) const MAX_SPIN: Duration = Duration::from_secs(1);

/// The smallest frame limit: parvm's own messages need this much.
pub(crate) const MIN_MAX_FRAME: u64 = 4096;

/// The value as text, or [`Error::NotUnicode`].
pub(crate) fn text(variable: &'static str, value: OsString) -> Result<String, Error> {
    value
        .into_string()
        .map_err(|_| Error::NotUnicode { variable })
}

/// The value as text, `None` when empty: the `PARVM_*` settings of the transports treat
/// an empty value as unset.
pub(crate) fn optional_text(
    variable: &'static str,
    value: Option<OsString>,
) -> Result<Option<String>, Error> {
    match value.filter(|v| !v.is_empty()) {
        Some(value) => text(variable, value).map(Some),
        None => Ok(None),
    }
}

/// An error for `value` of `variable`, with what is wrong and what to set instead.
pub(crate) fn bad(variable: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::BadValue {
        variable,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A whole number of at least 1, blanks trimmed.
pub(crate) fn count(variable: &'static str, value: &str) -> Result<usize, Error> {
    match value.trim().parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(Error::NotACount {
            variable,
            value: value.to_owned(),
        }),
    }
}

/// A whole number from 0 to `u32::MAX`, blanks trimmed.
pub(crate) fn small_count(variable: &'static str, value: &str) -> Result<u32, Error> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| bad(variable, value, "set a whole number of 0 or more"))
}

/// Seconds (`5`, `0.5`), blanks trimmed, at most 10^9; `zero_ok` allows 0.
///
/// # Errors
/// [`Error::BadValue`] naming `variable` and `value`, with the accepted range.
pub fn seconds(variable: &'static str, value: &str, zero_ok: bool) -> Result<Duration, Error> {
    let secs: f64 = value.trim().parse().map_err(|_| {
        bad(
            variable,
            value,
            "give a number of seconds such as `5` or `0.5`",
        )
    })?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) || secs > 1e9 {
        let range = if zero_ok {
            "from 0 to"
        } else {
            "above 0 and at most"
        };
        return Err(bad(
            variable,
            value,
            format!("give a number of seconds {range} 1000000000"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A byte count with an optional binary suffix (`1048576`, `64K`, `512M`, `1G`, `1GiB`),
/// blanks trimmed, at least 4 KiB.
///
/// # Errors
/// [`Error::BadValue`] naming `variable` and `value`, with the accepted forms.
pub fn frame_bytes(variable: &'static str, value: &str) -> Result<u64, Error> {
    let bytes = byte_count(value, false).ok_or_else(|| {
        bad(
            variable,
            value,
            "use a byte count such as `1048576`, `64K`, `512M` or `1G`",
        )
    })?;
    check_frame_bytes(variable, bytes).map_err(|_| {
        bad(
            variable,
            value,
            format!("at least {MIN_MAX_FRAME} bytes are needed for parvm's own messages; use `4K` or more"),
        )
    })
}

/// A byte count with an optional binary suffix (`1048576`, `64K`, `512M`, `1G`, `1GiB`,
/// `1gb`, and `2T` when `tera`), blanks trimmed; `None` for another form or a count
/// beyond `u64`.
pub(crate) fn byte_count(value: &str, tera: bool) -> Option<u64> {
    let lower = value.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale: u64 = match lower[digits.len()..]
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" if tera => 1 << 40,
        _ => return None,
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(scale)
}

/// Refuses a frame limit below [`MIN_MAX_FRAME`].
pub(crate) fn check_frame_bytes(variable: &'static str, bytes: u64) -> Result<u64, Error> {
    if bytes < MIN_MAX_FRAME {
        return Err(bad(
            variable,
            &bytes.to_string(),
            format!(
                "at least {MIN_MAX_FRAME} bytes are needed for parvm's own messages; use `4K` or more"
            ),
        ));
    }
    Ok(bytes)
}

/// Microseconds of spinning (`0`: never spin), blanks trimmed, cut to [`MAX_SPIN`].
pub(crate) fn spin_window(variable: &'static str, value: &str) -> Result<Duration, Error> {
    let us: u64 = value.trim().parse().map_err(|_| {
        bad(
            variable,
            value,
            "give a whole number of microseconds such as `100`, or `0` never to poll",
        )
    })?;
    Ok(Duration::from_micros(us).min(MAX_SPIN))
}

/// An address to listen on, checked for its form only: an IP address with a port, or
/// `host:port` with a port from 0 to 65535. The host is resolved when it is used, so a
/// process that does not listen does no name lookup.
pub(crate) fn listen_form(variable: &'static str, value: &str) -> Result<(), Error> {
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match value.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(bad(
            variable,
            value,
            "give host:port, e.g. 0.0.0.0:7070 (port 0: any free port)",
        )),
    }
}

/// The names in a `PARVM_FORWARD_ENV` value: separated by `,` or `:`, blanks trimmed,
/// empty items skipped.
pub(crate) fn name_list(list: &str) -> Vec<String> {
    list.split([',', ':'])
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a `NO_COLOR`-style flag is on: set to anything but the empty string.
pub(crate) fn flag(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_or_fail_with_the_value() {
        assert_eq!(count("V", " 4 ").unwrap(), 4);
        for bad in ["0", "-1", "four", ""] {
            let err = count("V", bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    /// The rows of `parvm_transport::tcp`'s own test, where these parsers come from.
    #[test]
    fn limits_parse_as_documented() {
        let cases: [(&str, Option<u64>); 11] = [
            ("1048576", Some(1 << 20)),
            ("64K", Some(64 << 10)),
            ("64kib", Some(64 << 10)),
            ("512M", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("2GB", Some(2 << 30)),
            (" 64M ", Some(64 << 20)),
            ("4095", None),
            ("1.5G", None),
            ("lots", None),
            ("99999999999G", None),
        ];
        for (text, want) in cases {
            assert_eq!(frame_bytes("V", text).ok(), want, "{text}");
        }
        let secs = |t| seconds("V", t, false).ok();
        assert_eq!(secs("5"), Some(Duration::from_secs(5)));
        assert_eq!(secs("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(seconds("V", "0", true).ok(), Some(Duration::ZERO));
        for bad in ["0", "-1", "soon", "inf", "NaN", "1e12"] {
            let err = seconds("V", bad, false).unwrap_err().to_string();
            assert!(err.contains('V') && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn spin_windows_are_microseconds_cut_to_a_second() {
        assert_eq!(spin_window("V", " 0").unwrap(), Duration::ZERO);
        assert_eq!(spin_window("V", "250").unwrap(), Duration::from_micros(250));
        assert_eq!(spin_window("V", "5000000").unwrap(), MAX_SPIN);
        for bad in ["", "-1", "1.5", "fast"] {
            assert!(spin_window("V", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listen_addresses_need_a_port() {
        for good in ["127.0.0.1:0", "[::1]:7070", "0.0.0.0:7070", "node7:7070"] {
            assert!(listen_form("V", good).is_ok(), "{good}");
        }
        for bad in ["nonsense", "1.2.3.4", "node7:", "node7:99999", "node7:x"] {
            let err = listen_form("V", bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn list_separators_and_blanks() {
        let rows: [(&str, &[&str]); 5] = [
            ("", &[]),
            ("A", &["A"]),
            ("A,B:C", &["A", "B", "C"]),
            (" A , ,B::", &["A", "B"]),
            (
                "LD_LIBRARY_PATH:SPICE_LIB",
                &["LD_LIBRARY_PATH", "SPICE_LIB"],
            ),
        ];
        for (list, want) in rows {
            assert_eq!(name_list(list), want, "{list:?}");
        }
    }

    #[test]
    fn flags_are_on_when_not_empty() {
        assert!(!flag(None));
        assert!(!flag(Some(OsStr::new(""))));
        assert!(flag(Some(OsStr::new("1"))));
    }
}
