//! The settings of shipping inputs to hosts that do not share a mirrored root:
//! [`ShipMode`] (`PARVM_SHIP`) and [`CacheMax`] (`PARVM_CACHE_MAX`). It owns their names,
//! forms and parsing; it must not know how the VM probes, ships or caches.

use crate::Error;
use crate::parse::{self, bad};
use crate::vars::{CACHE_MAX_VAR, SHIP_VAR};

/// When a worker reads a mirrored root directly and when it has the inputs shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShipMode {
    /// Per root and host: read directly where the spawner's marker file is seen with its
    /// token, ship where the root is missing or holds something else.
    #[default]
    Auto,
    /// Ship every mirrored root, even where it is shared.
    Always,
    /// Never ship: every host reads its mirrored roots directly, as without shipping.
    Never,
}

impl ShipMode {
    /// The name used in `PARVM_SHIP`.
    pub fn name(self) -> &'static str {
        match self {
            ShipMode::Auto => "auto",
            ShipMode::Always => "always",
            ShipMode::Never => "never",
        }
    }
}

impl std::fmt::Display for ShipMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ShipMode {
    type Err = Error;

    /// `auto`, `always` or `never`, blanks trimmed, any case.
    fn from_str(value: &str) -> Result<Self, Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ShipMode::Auto),
            "always" => Ok(ShipMode::Always),
            "never" => Ok(ShipMode::Never),
            _ => Err(bad(
                SHIP_VAR,
                value,
                "use `auto` (ship only where a root is not shared), `always` or `never`",
            )),
        }
    }
}

/// The most a host's cache of shipped files may hold: bytes, and optionally a count of
/// files. Both are at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheMax {
    /// The most bytes of cached files.
    pub bytes: u64,
    /// The most cached files; `None`: the cache's own default.
    pub count: Option<u64>,
}

impl std::str::FromStr for CacheMax {
    type Err = Error;

    /// `SIZE` or `SIZE,COUNT`: a byte count with an optional binary suffix (`500M`,
    /// `20G`), then a whole number of files, blanks trimmed.
    fn from_str(value: &str) -> Result<Self, Error> {
        let (size, count) = match value.split_once(',') {
            Some((size, count)) => (size, Some(count)),
            None => (value, None),
        };
        let usage = "give SIZE or SIZE,COUNT, e.g. `20G` or `20G,100000` (a byte count with an optional K, M, G or T suffix, then a number of files)";
        let bytes = parse::byte_count(size, true)
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| bad(CACHE_MAX_VAR, value, usage))?;
        let count = match count {
            None => None,
            Some(count) => match count.trim().parse::<u64>() {
                Ok(count) if count > 0 => Some(count),
                _ => return Err(bad(CACHE_MAX_VAR, value, usage)),
            },
        };
        Ok(CacheMax { bytes, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_modes_parse_case_insensitively() {
        for (text, mode) in [
            ("auto", ShipMode::Auto),
            (" ALWAYS ", ShipMode::Always),
            ("Never", ShipMode::Never),
        ] {
            assert_eq!(text.parse::<ShipMode>().unwrap(), mode, "{text}");
            assert_eq!(mode.name().parse::<ShipMode>().unwrap(), mode);
        }
        let error = "sometimes".parse::<ShipMode>().unwrap_err().to_string();
        assert!(
            error.contains("PARVM_SHIP")
                && error.contains("`sometimes`")
                && error.contains("`auto`"),
            "{error}"
        );
    }

    #[test]
    fn cache_limits_are_a_size_and_maybe_a_count() {
        for (text, bytes, count) in [
            ("1048576", 1 << 20, None),
            ("500M", 500 << 20, None),
            (" 20G , 100000 ", 20 << 30, Some(100_000)),
            ("2T", 2 << 40, None),
            ("1,1", 1, Some(1)),
        ] {
            assert_eq!(
                text.parse::<CacheMax>().unwrap(),
                CacheMax { bytes, count },
                "{text}"
            );
        }
        for text in [
            "",
            "0",
            "lots",
            "1G,",
            "1G,0",
            "1G,-3",
            "1G,2,3",
            ",5",
            "99999999999T",
        ] {
            let error = text.parse::<CacheMax>().unwrap_err().to_string();
            assert!(
                error.contains("PARVM_CACHE_MAX") && error.contains(&format!("`{text}`")),
                "{text}: {error}"
            );
        }
    }
}
