//! `--joblog FILE`: one tab-separated line per case, in GNU parallel's format.
//!
//! It owns the file and the columns; it must not know how cases run.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::RunError;

/// GNU parallel's joblog header.
pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One line of the joblog.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The case number, from 1.
    pub seq: usize,
    /// The host that ran it (`:` when it did not run, as GNU parallel writes for local).
    pub host: &'a str,
    /// When its last attempt started.
    pub start: SystemTime,
    /// How long it ran.
    pub runtime: Duration,
    /// Bytes mirrored into its task folder.
    pub send: u64,
    /// Bytes of the files it returned.
    pub receive: u64,
    /// Its exit code; -1 when it did not exit by itself.
    pub exit: i64,
    /// The signal that ended it, else 0.
    pub signal: i32,
    /// The command line.
    pub command: &'a str,
}

/// An open joblog.
pub struct Joblog {
    path: PathBuf,
    file: BufWriter<Box<dyn Write>>,
}

/// `--joblog -`: the joblog goes to standard output, as in GNU parallel.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Joblog {
    /// Creates (or truncates) `path` and writes the header; `-` is standard output.
    ///
    /// # Errors
    /// The file cannot be created or written.
    pub fn create(path: &Path) -> Result<Joblog, RunError> {
        let file: Box<dyn Write> = if is_stdout(path) {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path).map_err(|source| RunError::Joblog {
                path: path.to_owned(),
                source,
            })?)
        };
        let mut log = Joblog {
            path: path.to_owned(),
            file: BufWriter::new(file),
        };
        log.line(HEADER)?;
        Ok(log)
    }

    /// Opens `path` to add to it (`--resume`): the header is written only when the file
    /// is new or empty.
    ///
    /// # Errors
    /// The file cannot be opened or written.
    pub fn append(path: &Path) -> Result<Joblog, RunError> {
        let failed = |source| RunError::Joblog {
            path: path.to_owned(),
            source,
        };
        let (file, empty) = open_to_add(path).map_err(failed)?;
        let mut log = Joblog {
            path: path.to_owned(),
            file: BufWriter::new(Box::new(file)),
        };
        if empty {
            log.line(HEADER)?;
        }
        Ok(log)
    }

    /// Appends one case; flushed at once, so the log is whole when the run is stopped.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&mut self, entry: &Entry<'_>) -> Result<(), RunError> {
        self.line(&format_entry(entry))
    }

    fn line(&mut self, text: &str) -> Result<(), RunError> {
        writeln!(self.file, "{text}")
            .and_then(|()| self.file.flush())
            .map_err(|source| RunError::Joblog {
                path: self.path.clone(),
                source,
            })
    }
}

/// Opens the file at `path` to add lines to (made when missing), and whether it is empty
/// (then it needs its header).
pub fn open_to_add(path: &Path) -> std::io::Result<(File, bool)> {
    let file = File::options().append(true).create(true).open(path)?;
    let empty = file.metadata()?.len() == 0;
    Ok((file, empty))
}

/// The cases an earlier run recorded in a joblog: the exit value of the last entry of
/// each command line, and of each command line on each host (for `--each-host`).
#[derive(Debug, Default)]
pub struct Recorded {
    by_command: HashMap<String, i64>,
    by_host: HashMap<(String, String), i64>,
}

impl Recorded {
    /// The recorded exit value of `command` (on `host`, when given).
    pub fn exit(&self, host: Option<&str>, command: &str) -> Option<i64> {
        match host {
            None => self.by_command.get(command).copied(),
            Some(host) => self
                .by_host
                .get(&(host.to_owned(), command.to_owned()))
                .copied(),
        }
    }

    /// How many command lines it records.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_command.len()
    }
}

/// The cases an earlier run recorded in the joblog at `path`. A missing file records
/// nothing; lines that are not joblog entries (the header, a command line broken by a
/// newline in a value) are skipped.
///
/// # Errors
/// The file exists but cannot be read.
pub fn recorded(path: &Path) -> Result<Recorded, RunError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::default()),
        Err(source) => {
            return Err(RunError::Joblog {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut done = Recorded::default();
    for line in String::from_utf8_lossy(&text).lines() {
        let columns: Vec<&str> = line.splitn(9, '\t').collect();
        if let [_, host, _, _, _, _, exit, _, command] = columns[..]
            && let Ok(exit) = exit.parse::<i64>()
        {
            done.by_command.insert(command.to_owned(), exit);
            done.by_host
                .insert((host.to_owned(), command.to_owned()), exit);
        }
    }
    Ok(done)
}

/// The tab-separated line of `entry`.
fn format_entry(entry: &Entry<'_>) -> String {
    let start = entry
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    format!(
        "{}\t{}\t{start:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}",
        entry.seq,
        entry.host,
        entry.runtime.as_secs_f64(),
        entry.send,
        entry.receive,
        entry.exit,
        entry.signal,
        entry.command
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_nine_columns_of_gnu_parallel() {
        let line = format_entry(&Entry {
            seq: 3,
            host: "alpha",
            start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            runtime: Duration::from_millis(1500),
            send: 10,
            receive: 20,
            exit: 2,
            signal: 0,
            command: "echo 'a b'",
        });
        assert_eq!(
            line,
            "3\talpha\t1700000000.250\t1.500\t10\t20\t2\t0\techo 'a b'"
        );
        assert_eq!(HEADER.split('\t').count(), 9);
    }

    #[test]
    fn recorded_cases_keep_their_last_exit_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert_eq!(recorded(&path).unwrap().len(), 0);
        let mut log = Joblog::create(&path).unwrap();
        for (seq, exit, command) in [(1, 1, "run a"), (2, 0, "run b\tc"), (1, 0, "run a")] {
            log.write(&Entry {
                seq,
                host: "h",
                start: UNIX_EPOCH,
                runtime: Duration::ZERO,
                send: 0,
                receive: 0,
                exit,
                signal: 0,
                command,
            })
            .unwrap();
        }
        drop(log);
        let done = recorded(&path).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done.exit(None, "run a"), Some(0));
        assert_eq!(done.exit(None, "run b\tc"), Some(0));
        assert_eq!(done.exit(Some("h"), "run a"), Some(0));
        assert_eq!(done.exit(Some("other"), "run a"), None);
        drop(Joblog::append(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap()
                .matches("Seq")
                .count(),
            1
        );
    }
}
