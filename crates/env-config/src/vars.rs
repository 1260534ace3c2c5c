//! The table of every environment variable parvm reads: name, meaning and default.
//!
//! It owns the names: other crates use these constants instead of spelling a name again,
//! and docs/configuration.md has a row for every entry of [`VARS`] (a unit test checks
//! it). It must not know how a value is parsed (that is `parse.rs`) nor who uses it.

/// One variable: its name, what it means and what applies when it is unset, as the user
/// guide gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The variable's name.
    pub name: &'static str,
    /// What it sets, in a few words.
    pub meaning: &'static str,
    /// What applies when it is unset (or empty, for the `PARVM_*` settings that treat an
    /// empty value as unset).
    pub default: &'static str,
}

/// Name of the variable holding the local storage root.
pub const LOCAL_STORAGE_VAR: &str = "PARALLEL_LOCAL_STORAGE";
/// Name of the variable holding the `:`-separated mirrored storage roots.
pub const MIRRORED_STORAGE_VAR: &str = "PARALLEL_MIRRORED_STORAGE";
/// Name of the variable choosing the transport.
pub const TRANSPORT_VAR: &str = "PARVM_TRANSPORT";
/// Name of the variable giving the number of local workers.
pub const WORKERS_VAR: &str = "PARVM_WORKERS";
/// Name of the variable overriding the host name.
pub const HOSTNAME_VAR: &str = "PARVM_HOSTNAME";
/// Name of the variable holding the log filter.
pub const LOG_VAR: &str = "PARVM_LOG";
/// Name of the variable naming the secret file of the TCP transport.
pub const SECRET_FILE_VAR: &str = "PARVM_SECRET_FILE";
/// Name of the variable giving the address a TCP spawner listens on.
pub const LISTEN_VAR: &str = "PARVM_LISTEN";
/// Name of the variable telling a TCP worker where the spawner listens (`host:port`).
pub const CONNECT_VAR: &str = "PARVM_CONNECT";
/// Name of the variable listing the variables a spawner forwards to its workers.
pub const FORWARD_ENV_VAR: &str = "PARVM_FORWARD_ENV";
/// Name of the variable that turns colours off (<https://no-color.org>).
pub const NO_COLOR_VAR: &str = "NO_COLOR";
/// Name of the variable giving how many seconds a TCP worker keeps trying to join.
pub const CONNECT_WAIT_VAR: &str = "PARVM_CONNECT_WAIT";
/// Name of the variable giving the largest TCP message accepted, in bytes.
pub const MAX_FRAME_VAR: &str = "PARVM_MAX_FRAME";
/// Name of the variable giving the TCP handshake timeout, in seconds.
pub const HANDSHAKE_TIMEOUT_VAR: &str = "PARVM_HANDSHAKE_TIMEOUT";
/// Name of the variable giving how long a joined TCP peer may not answer, in seconds.
pub const PEER_TIMEOUT_VAR: &str = "PARVM_PEER_TIMEOUT";
/// Name of the variable giving how long a waiting process polls before it sleeps, in µs.
pub const SPIN_US_VAR: &str = "PARVM_SPIN_US";
/// Name of the variable choosing when mirrored inputs are shipped (`auto`, `always`, `never`).
pub const SHIP_VAR: &str = "PARVM_SHIP";
/// Name of the variable bounding a host's cache of shipped files (`SIZE[,COUNT]`).
pub const CACHE_MAX_VAR: &str = "PARVM_CACHE_MAX";

/// Replacement workers per local worker slot (`parvm_transport::local::LocalOptions::replacements`).
pub const REPLACE_WORKERS_VAR: &str = "PARVM_REPLACE_WORKERS";

/// Every variable users may set, in the order of docs/configuration.md.
pub const VARS: &[Var] = &[
    Var {
        name: LOCAL_STORAGE_VAR,
        meaning: "root of local storage, under which task folders are made; `~` expanded",
        default: "the system temp folder (`$TMPDIR` or `/tmp`)",
    },
    Var {
        name: MIRRORED_STORAGE_VAR,
        meaning: "`:`-separated, ordered list of shared folders; `~` and `~user` expanded; symlinks resolved",
        default: "the home folder",
    },
    Var {
        name: TRANSPORT_VAR,
        meaning: "`local`, `tcp` or `mpi` (blanks trimmed, any case)",
        default: "`mpi` when started by `mpirun`, else `local`",
    },
    Var {
        name: WORKERS_VAR,
        meaning: "worker slots for the local transport",
        default: "the number of cores",
    },
    Var {
        name: REPLACE_WORKERS_VAR,
        meaning: "how many times the local transport replaces the worker of a slot that dies (`0`: never)",
        default: "`3`",
    },
    Var {
        name: HOSTNAME_VAR,
        meaning: "host name to report (not empty, no white space or `/`)",
        default: "the real host name",
    },
    Var {
        name: LOG_VAR,
        meaning: "log filter (`warn`, `info`, `debug`, `parvm_vm=trace`, ...)",
        default: "warnings only",
    },
    Var {
        name: SECRET_FILE_VAR,
        meaning: "shared secret of the TCP transport",
        default: "`~/.parvm/secret`",
    },
    Var {
        name: LISTEN_VAR,
        meaning: "`host:port` a TCP spawner listens on",
        default: "`127.0.0.1:0` (loopback, any free port)",
    },
    Var {
        name: CONNECT_VAR,
        meaning: "`host:port` of a TCP spawner: set, the program starts as a TCP worker",
        default: "unset",
    },
    Var {
        name: FORWARD_ENV_VAR,
        meaning: "names of variables the spawner forwards to every worker, separated by `,` or `:`",
        default: "none",
    },
    Var {
        name: NO_COLOR_VAR,
        meaning: "set and not empty: log lines are never coloured",
        default: "unset (coloured when stderr is a terminal)",
    },
    Var {
        name: CONNECT_WAIT_VAR,
        meaning: "seconds a TCP worker keeps trying to join",
        default: "`0` (one try)",
    },
    Var {
        name: MAX_FRAME_VAR,
        meaning: "largest TCP message accepted, in bytes (`64K`, `512M`, `1G`; at least 4 KiB)",
        default: "`1G`",
    },
    Var {
        name: HANDSHAKE_TIMEOUT_VAR,
        meaning: "seconds a TCP handshake may take (more than 0)",
        default: "`5`",
    },
    Var {
        name: PEER_TIMEOUT_VAR,
        meaning: "seconds the host of a joined TCP worker or spawner may not answer (down, or cut off) before it counts as lost, as if killed (`0`: wait for ever)",
        default: "`60`",
    },
    Var {
        name: SPIN_US_VAR,
        meaning: "µs a waiting process polls before it sleeps (`0`: never poll; at most 1000000)",
        default: "`100`",
    },
    Var {
        name: SHIP_VAR,
        meaning: "when a worker gets mirrored inputs shipped into its host's cache instead of reading the mirrored root: `auto` (where the root is missing or holds something else), `always` or `never`",
        default: "`auto`",
    },
    Var {
        name: CACHE_MAX_VAR,
        meaning: "the most a host's cache of shipped files holds: `SIZE` or `SIZE,COUNT` (`20G`, `500M,100000`)",
        default: "10% of the free space of local storage",
    },
];

/// The variables the local transport sets in the workers it starts, for that worker
/// alone: users never set them, and commands a task runs do not see them. The transport
/// owns them (`parvm_transport::local`); they are listed here so the table names every
/// variable parvm reads.
pub const INTERNAL_VARS: &[Var] = &[
    Var {
        name: "PARVM_LOCAL_SOCKET",
        meaning: "path of the spawner's socket",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_RANK",
        meaning: "the worker's rank",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_TOKEN",
        meaning: "the per-launch token the worker presents",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_SPAWNER_PID",
        meaning: "the spawner's process id, which must be the worker's parent",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_SPAWNER_HOST",
        meaning: "the spawner's host name",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_MAX_FRAME",
        meaning: "the frame size limit both ends use",
        default: "set by the local transport",
    },
    Var {
        name: "PARVM_LOCAL_SPIN_US",
        meaning: "µs the worker's waits poll before they sleep (the spawner's `PARVM_SPIN_US`)",
        default: "set by the local transport",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The user guide's page, read from the workspace (this crate lives in crates/).
    fn guide() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    /// The names in the first column of the guide's tables.
    fn guide_rows(guide: &str) -> Vec<String> {
        guide
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once("` |"))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// `cargo xtask test` runs this check by name: every variable has a row in the user
    /// guide, and every row of the guide is a variable of the table.
    #[test]
    fn every_variable_has_a_row_in_the_guide() {
        let rows = guide_rows(&guide());
        for var in VARS {
            assert!(
                rows.iter().any(|row| row == var.name),
                "{} has no row `| `{}` |` in docs/configuration.md; add one (meaning: {}; default: {})",
                var.name,
                var.name,
                var.meaning,
                var.default
            );
        }
        for row in &rows {
            assert!(
                VARS.iter().chain(INTERNAL_VARS).any(|var| var.name == row),
                "docs/configuration.md has a row for `{row}`, which is not in parvm_env_config::vars; add it to VARS or remove the row"
            );
        }
    }

    #[test]
    fn names_are_unique_and_plausible() {
        let all: Vec<&str> = VARS.iter().chain(INTERNAL_VARS).map(|v| v.name).collect();
        for (i, name) in all.iter().enumerate() {
            assert!(!all[..i].contains(name), "{name} is listed twice");
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{name}"
            );
        }
        for var in INTERNAL_VARS {
            assert!(var.name.starts_with("PARVM_LOCAL_"), "{}", var.name);
        }
    }

    #[test]
    fn rows_are_read_from_table_lines_only() {
        let text = "| variable | meaning |\n| `A_B` | x |\nsee `C_D` here\n| `E` | y |";
        assert_eq!(guide_rows(text), ["A_B", "E"]);
    }
}
