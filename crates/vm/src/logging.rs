//! parvm's logs: `tracing`, filtered by `PARVM_LOG` or a PyOPUS-style debug level.

use std::io::IsTerminal;

/// Installs a stderr subscriber unless the program installed its own.
///
/// A worker's stderr reaches the spawner through a pipe and from there a terminal or a
/// file the worker cannot see, so workers never colour; the spawner colours only when its
/// stderr is a terminal and `NO_COLOR` is not set (`no_color`, from the configuration).
pub(crate) fn init(filter: Option<&str>, debug: Option<u8>, no_color: bool, worker: bool) {
    let filter = filter_or_warn(filter, debug);
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&filter) else {
        eprintln!("parvm: ignoring PARVM_LOG=`{filter}`: not a valid tracing filter");
        return;
    };
    let colour = !worker && colour_allowed(std::io::stderr().is_terminal(), no_color);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

/// Whether log lines may carry colour codes: only to a terminal, and never with a
/// non-empty `NO_COLOR` (`no_color`).
fn colour_allowed(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

/// The filter to pass on to workers, when one was asked for.
pub(crate) fn filter(filter: Option<&str>, debug: Option<u8>) -> Option<String> {
    (filter.is_some() || debug.is_some()).then(|| filter_or_warn(filter, debug))
}

fn filter_or_warn(filter: Option<&str>, debug: Option<u8>) -> String {
    match (filter, debug) {
        (Some(filter), _) => filter.to_owned(),
        (None, Some(level)) => match level {
            0 => "warn",
            1 => "warn,parvm_vm=info,parvm_transport=info",
            2 => "warn,parvm_vm=debug,parvm_transport=debug,parvm_local_storage=debug,parvm_mirror_fs=debug",
            _ => "warn,parvm_vm=trace,parvm_transport=trace,parvm_local_storage=trace,parvm_mirror_fs=trace",
        }
        .to_owned(),
        // Workers that leave in order (finalize) are logged by the transport at debug
        // level; only a worker lost unexpectedly is a warning.
        (None, None) => "warn".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use parvm_env_config::{Config, NO_COLOR_VAR};

    use super::colour_allowed;

    /// `NO_COLOR` as the configuration reads it from an environment holding `value`.
    fn no_color(value: Option<&str>) -> bool {
        Config::from_lookup_read_only(|name| match name {
            NO_COLOR_VAR => value.map(OsString::from),
            "HOME" => Some(OsString::from("/")),
            _ => None,
        })
        .expect("configuration")
        .no_color()
    }

    #[test]
    fn colour_only_to_a_terminal_without_no_color() {
        let rows: [(bool, Option<&str>, bool); 6] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, want) in rows {
            assert_eq!(
                colour_allowed(terminal, self::no_color(no_color)),
                want,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }
}
