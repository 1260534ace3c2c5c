//! parvm's logs: `tracing`, filtered by `PARVM_LOG` or a PyOPUS-style debug level.

use std::io::IsTerminal;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs a stderr subscriber unless the program installed its own.
///
/// A worker's stderr reaches the spawner through a pipe and from there a terminal or a
/// file the worker cannot see, so workers never colour; the spawner colours only when its
/// stderr is a terminal and `NO_COLOR` is not set (`no_color`, from the configuration).
pub(crate) fn init(filter: Option<&str>, debug: Option<u8>, no_color: bool, worker: bool) {
    let filter_given = filter.is_some();
    let filter = filter_or_warn(filter, debug);
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&filter) else {
        say(&format!(
            "parvm: ignoring PARVM_LOG=`{filter}`: not a valid tracing filter"
        ));
        return;
    };
    let colour = !worker && colour_allowed(std::io::stderr().is_terminal(), no_color);
    // A line that cannot be written is dropped: with stderr closed (`... 2>&1 | head`),
    // tracing-subscriber's own report of the failure would panic in whichever thread
    // logged, a transport's reader or a replacement starter among them, and hang the run.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .log_internal_errors(false);
    // Asked for logs: full lines, timed, with their fields. Else only warnings reach the
    // user, as sentences.
    let _ = if asked(filter_given, debug) {
        builder.try_init()
    } else {
        builder.event_format(Sentence).try_init()
    };
}

/// Writes `line` and a newline to stderr in one write, ignoring a failure (`eprintln!`
/// would panic when stderr is closed).
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Whether logs were asked for (`PARVM_LOG` or a debug level).
fn asked(filter: bool, debug: Option<u8>) -> bool {
    filter || debug.is_some()
}

/// A log event as a sentence for people: `parvm: warning: ...`, without the time and the
/// fields, which repeat what the message says.
struct Sentence;

impl<S, N> FormatEvent<S, N> for Sentence
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        write!(writer, "parvm: {level}: ")?;
        let mut message = Message(&mut writer, Ok(()));
        event.record(&mut message);
        message.1?;
        writeln!(writer)
    }
}

/// Writes an event's `message` field alone.
struct Message<'w, 'a>(&'w mut Writer<'a>, std::fmt::Result);

impl tracing::field::Visit for Message<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.1 = self.0.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.1 = write!(self.0, "{value:?}");
        }
    }
}

/// Whether log lines may carry colour codes: only to a terminal, and never with a
/// non-empty `NO_COLOR` (`no_color`).
fn colour_allowed(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

/// The filter to pass on to workers, when one was asked for.
pub(crate) fn filter(filter: Option<&str>, debug: Option<u8>) -> Option<String> {
    asked(filter.is_some(), debug).then(|| filter_or_warn(filter, debug))
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
