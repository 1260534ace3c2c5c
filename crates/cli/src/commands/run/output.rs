//! What `parvm run` shows and keeps of a finished case: its output, printed whole, and
//! its folder under `--results`.
//!
//! It owns printing a case's captured stdout and stderr together and the `stdout`,
//! `stderr` and `exit` files; it must not know how cases are made or scheduled.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use parvm_vm::{Captured, JobOutcome, JobResult, OutputStream};

use super::error::RunError;

/// A case's exit code and signal, as GNU parallel reports them: -1 and 0 when it did not
/// end by itself (timed out, lost, not run).
#[must_use]
pub fn status(outcome: &JobOutcome) -> (i64, i32) {
    match outcome {
        JobOutcome::Command(status)
        | JobOutcome::Failed {
            status: Some(status),
            ..
        } => (
            status.code.map_or(-1, i64::from),
            status.signal.unwrap_or(0),
        ),
        _ => (-1, 0),
    }
}

/// One case as `--json` prints it: a line of JSON.
#[derive(serde::Serialize)]
struct Record<'a> {
    case: usize,
    command: &'a str,
    /// `success`, `failed`, `timed out`, `lost` or `not run`.
    outcome: &'static str,
    /// Why it did not succeed, in words.
    reason: Option<String>,
    host: Option<String>,
    slot: Option<u32>,
    exit: i64,
    signal: i32,
    attempts: u32,
    seconds: f64,
    mirrored: u64,
    returned: u64,
    returned_files: Vec<String>,
}

/// Prints one JSON record for the case (`parvm --json run ...`), on one line of standard
/// output; its output stays in `--results`.
///
/// # Errors
/// Standard output cannot be written.
pub fn print_record(result: &JobResult, case: usize, command: &str) -> Result<(), RunError> {
    let (exit, signal) = status(&result.outcome);
    let (outcome, reason) = match &result.outcome {
        JobOutcome::Value(_) | JobOutcome::Command(_) => ("success", None),
        JobOutcome::Failed { reason, .. } => ("failed", Some(reason.clone())),
        JobOutcome::TimedOut { .. } => ("timed out", Some(result.outcome.to_string())),
        JobOutcome::Lost { reason } => ("lost", Some(reason.clone())),
        // Stopped while it ran (a signal, `--halt now`), as the text output says.
        JobOutcome::NotRun if !result.elapsed.is_zero() => ("stopped", None),
        JobOutcome::NotRun => ("not run", None),
        _ => ("failed", Some(result.outcome.to_string())),
    };
    let record = Record {
        case,
        command,
        outcome,
        reason,
        host: result.host.as_ref().map(ToString::to_string),
        slot: result.task.map(|task| task.slot),
        exit,
        signal,
        attempts: result.attempts,
        seconds: result.elapsed.as_secs_f64(),
        mirrored: result.mirrored,
        returned: result.returned_bytes,
        returned_files: result
            .returned
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect(),
    };
    let fail = |source| RunError::Print { case, source };
    let line = serde_json::to_string(&record).map_err(|e| fail(io::Error::other(e)))?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(fail)
}

/// Prints the case's stdout, then its stderr, each whole, so no other case's output comes
/// between their lines (unless `whole_output` is false: with `--line-buffer` they were printed
/// as they came); then a line on stderr when it did not end by itself. `command` (`-v`) is
/// printed on stdout first.
///
/// # Errors
/// Standard output or error cannot be written, or a spilled stream cannot be read.
pub fn print(
    result: &JobResult,
    case: usize,
    tag: Option<&[u8]>,
    whole_output: bool,
    command: Option<&str>,
) -> Result<(), RunError> {
    let fail = |source| RunError::Print { case, source };
    let stderr = io::stderr();
    let mut err = stderr.lock();
    if whole_output {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        if let Some(command) = command {
            writeln!(out, "{command}").map_err(fail)?;
        }
        copy(whole("stdout", result.stdout.as_ref()), &mut out, tag).map_err(fail)?;
        out.flush().map_err(fail)?;
        copy(whole("stderr", result.stderr.as_ref()), &mut err, tag).map_err(fail)?;
        for (name, captured) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            if let Some(cut) = cut_off(name, captured.as_ref()) {
                writeln!(
                    err,
                    "parvm run: case {case}: {cut}; what arrived was not printed"
                )
                .map_err(fail)?;
            }
        }
    }
    match &result.outcome {
        JobOutcome::Command(_) => {}
        // A command that failed by itself says so in its own output, as in GNU parallel
        // (a file it was to return and did not write is then no news).
        JobOutcome::Failed {
            status: Some(status),
            ..
        } if !status.success() && besides_the_command(&result.outcome).is_none() => {}
        // Stopped while it ran (Ctrl-C, a halt that stops running cases): "not run" would
        // hide that it started.
        JobOutcome::NotRun if !result.elapsed.is_zero() => writeln!(
            err,
            "parvm run: case {case} stopped after {:.1} s",
            result.elapsed.as_secs_f64()
        )
        .map_err(fail)?,
        other => writeln!(err, "parvm run: case {case} {other}").map_err(fail)?,
    }
    err.flush().map_err(fail)
}

/// `--line-buffer`: prints whole lines a case wrote to `stream` while it runs, each
/// after `tag` and a tab when tagged. A last piece without a newline (the end of what the
/// case printed, or a piece of a line longer than 512 KiB) gets one, so the next line of
/// any case starts on a line of its own.
///
/// # Errors
/// The stream cannot be written.
pub fn print_lines(stream: OutputStream, lines: &[u8], tag: Option<&[u8]>) -> io::Result<()> {
    match stream {
        OutputStream::Stderr => write_lines(&mut io::stderr().lock(), lines, tag),
        _ => {
            let mut out = io::stdout().lock();
            write_lines(&mut out, lines, tag)?;
            out.flush()
        }
    }
}

fn write_lines(to: &mut impl Write, lines: &[u8], tag: Option<&[u8]>) -> io::Result<()> {
    let Some(tag) = tag else {
        to.write_all(lines)?;
        return if lines.ends_with(b"\n") {
            Ok(())
        } else {
            to.write_all(b"\n")
        };
    };
    // Tagged in memory first (a message is at most a few hundred KiB), then written at
    // once: a line-buffered stdout would make a write of each line.
    let count = lines.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut tagged = Vec::with_capacity(lines.len() + count * (tag.len() + 2));
    for line in lines.split_inclusive(|&b| b == b'\n') {
        tagged.extend_from_slice(tag);
        tagged.push(b'\t');
        tagged.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            tagged.push(b'\n');
        }
    }
    to.write_all(&tagged)
}

/// Why a case failed besides its command's own exit status (its output or returned
/// files could not be kept on the spawner), when it did.
#[must_use]
pub fn besides_the_command(outcome: &JobOutcome) -> Option<&str> {
    match outcome {
        JobOutcome::Failed {
            after_end: Some(after),
            ..
        } => Some(after),
        _ => None,
    }
}

/// Whether a case failed although its command exited with code 0 (a file it was to
/// return was not in its task folder): its exit value would read as a success, so the
/// joblog leaves it out and `--resume` runs it again.
#[must_use]
pub fn failed_after_exit_zero(outcome: &JobOutcome) -> bool {
    matches!(outcome, JobOutcome::Failed { status: Some(status), .. } if status.success())
}

/// The stream when it is whole: a stream cut off is not printed (a line says why).
/// The bytes a case printed on a stream: from memory, or from the file it spilled into.
///
/// # Errors
/// The spilled file cannot be read.
pub fn captured_bytes(captured: Option<&Captured>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    copy(captured, &mut bytes, None)?;
    Ok(bytes)
}

fn whole<'a>(name: &str, captured: Option<&'a Captured>) -> Option<&'a Captured> {
    captured.filter(|_| cut_off(name, captured).is_none())
}

/// Why a stream that spilled into a file is not whole there (writing it failed, e.g. on
/// a full disk): what the file holds against what the case printed.
fn cut_off(name: &str, captured: Option<&Captured>) -> Option<String> {
    let captured = captured?;
    let path = captured.path()?;
    let held = std::fs::metadata(path).map_or(0, |meta| meta.len());
    (held != captured.len()).then(|| {
        format!(
            "its {name} was cut off: `{}` holds {held} of the {} bytes it printed",
            path.display(),
            captured.len()
        )
    })
}

/// Writes a captured stream to `to`: from memory, or from the file it spilled into; with
/// `tag`, each line starts with it and a tab.
fn copy(captured: Option<&Captured>, to: &mut impl Write, tag: Option<&[u8]>) -> io::Result<()> {
    let Some(captured) = captured else {
        return Ok(());
    };
    let mut reader: Box<dyn BufRead> = match (captured.bytes(), captured.path()) {
        (Some(bytes), _) if tag.is_none() => return to.write_all(bytes),
        (Some(bytes), _) => Box::new(bytes),
        (None, Some(path)) => Box::new(io::BufReader::new(std::fs::File::open(path)?)),
        (None, None) => return Ok(()),
    };
    let Some(tag) = tag else {
        io::copy(&mut reader, to)?;
        return Ok(());
    };
    // Line by line, so a stream that spilled into a file never sits in memory whole.
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        to.write_all(tag)?;
        to.write_all(b"\t")?;
        to.write_all(&line)?;
        if !line.ends_with(b"\n") {
            to.write_all(b"\n")?;
        }
    }
}

/// `--results DIR`: the dispatch writes each case's returned files into
/// `<DIR>/.parvm-incoming-<pid>/<index>/`; once the case ended, its `stdout`, `stderr` and `exit`
/// join them and the folder moves to `<DIR>/<case>/`, so a case folder is whole when it
/// appears.
pub struct Results {
    dir: PathBuf,
    incoming: PathBuf,
}

impl Results {
    /// Makes `dir`; it must be new or empty unless `resuming` (then a case run again
    /// replaces its earlier folder).
    ///
    /// # Errors
    /// It cannot be made, or it holds something already.
    pub fn create(dir: &Path, resuming: bool) -> Result<Results, RunError> {
        let made = |source| RunError::ResultsDir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(made)?;
        if !resuming && std::fs::read_dir(dir).map_err(made)?.next().is_some() {
            return Err(RunError::ResultsNotEmpty {
                path: dir.to_owned(),
            });
        }
        // Per run, so a run that was killed leaves nothing the next one trips over.
        let incoming = dir.join(format!(".parvm-incoming-{}", std::process::id()));
        std::fs::create_dir(&incoming).map_err(made)?;
        Ok(Results {
            dir: dir.to_owned(),
            incoming,
        })
    }

    /// Where the dispatch writes returned files.
    pub fn incoming(&self) -> &Path {
        &self.incoming
    }

    /// Completes case `case` (dispatch index `result.index`) and moves it into place; a
    /// case whose results are not whole (a full disk, a returned file that could not be
    /// written) is removed from the staging folder instead, so no folder that appears
    /// under `DIR` lacks anything.
    ///
    /// # Errors
    /// The case's results are not whole, a file cannot be written or the folder cannot
    /// be moved: [`RunError::CaseNotKept`], for this case only.
    pub fn keep(&self, result: &JobResult, case: usize) -> Result<(), RunError> {
        let from = self.incoming.join(result.index.to_string());
        self.complete(result, case, &from).map_err(|reason| {
            // Best effort: on a full disk removing still works, and what stays is in the
            // staging folder, never presented as a case.
            let _ = std::fs::remove_dir_all(&from);
            RunError::CaseNotKept {
                case,
                dir: self.dir.clone(),
                reason,
            }
        })
    }

    /// Writes the rest of case `case` into `from` and moves it into place; why not, in
    /// words.
    fn complete(&self, result: &JobResult, case: usize, from: &Path) -> Result<(), String> {
        if let Some(reason) = besides_the_command(&result.outcome) {
            return Err(reason.to_owned());
        }
        for (name, captured) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            if let Some(cut) = cut_off(name, captured.as_ref()) {
                return Err(cut);
            }
        }
        let failed = |path: PathBuf| {
            move |source: std::io::Error| format!("cannot write `{}`: {source}", path.display())
        };
        let from = from.to_owned();
        std::fs::create_dir_all(&from).map_err(failed(from.clone()))?;
        for (name, captured) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            let path = from.join(name);
            match captured.as_ref().and_then(Captured::bytes) {
                Some(bytes) => std::fs::write(&path, bytes).map_err(failed(path))?,
                // Spilled streams are already there; no capture means nothing was said.
                None if !path.exists() => std::fs::write(&path, b"").map_err(failed(path))?,
                None => {}
            }
        }
        let (exit, _) = status(&result.outcome);
        let path = from.join("exit");
        std::fs::write(&path, format!("{exit}\n")).map_err(failed(path))?;
        let to = self.dir.join(case.to_string());
        if to.is_dir() && !to.is_symlink() {
            // Only a resumed run gets here: the case ran again, its new folder replaces
            // the old one.
            std::fs::remove_dir_all(&to).map_err(failed(to.clone()))?;
        }
        std::fs::rename(&from, &to).map_err(failed(to))
    }
}

impl Drop for Results {
    /// Removes the staging folder, also when the run failed. It is left behind only when
    /// it is not empty (a case that never ended), and then holds nothing of a kept case.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.incoming);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parvm_vm::CommandStatus;

    fn failed(reason: &str, code: i32, after_end: Option<&str>) -> JobOutcome {
        JobOutcome::Failed {
            reason: reason.to_owned(),
            status: Some(CommandStatus {
                code: Some(code),
                signal: None,
            }),
            after_end: after_end.map(str::to_owned),
        }
    }

    #[test]
    fn what_failed_besides_the_command() {
        let full = "cannot write returned file `out/big`: no space";
        for (outcome, expected) in [
            // The command succeeded: whatever failed was not the command.
            (failed(full, 0, Some(full)), Some(full)),
            // The command failed by itself, and nothing else did, whatever its words.
            (
                failed("the command ended with exit code 2; x", 2, None),
                None,
            ),
            // The command failed, and keeping its results failed too.
            (
                failed(
                    &format!("the command ended with exit code 2; {full}"),
                    2,
                    Some(full),
                ),
                Some(full),
            ),
            (
                JobOutcome::Failed {
                    reason: "cannot start `x`".to_owned(),
                    status: None,
                    after_end: None,
                },
                None,
            ),
            (JobOutcome::NotRun, None),
        ] {
            assert_eq!(besides_the_command(&outcome), expected, "{outcome}");
        }
    }

    #[test]
    fn lines_get_the_tag_and_a_last_line_its_newline() {
        let mut out = Vec::new();
        write_lines(&mut out, b"a\nb\nc", Some(b"x y")).unwrap();
        assert_eq!(out, b"x y\ta\nx y\tb\nx y\tc\n");
        out.clear();
        write_lines(&mut out, b"a\nb\n", None).unwrap();
        write_lines(&mut out, b"c", None).unwrap();
        assert_eq!(out, b"a\nb\nc\n");
    }
}
