//! `parvm run`: a sweep of any shell command over GNU parallel-style inputs, each case in
//! its own task folder on a worker.
//!
//! This module owns the flags and the order of a run (inputs, commands, runtime, printing,
//! exit status); the pieces live in `inputs` (sources and cases), `quote` and `replace`
//! (the command line of a case), `output` (printing and `--results`) and `joblog`.

mod error;
mod inputs;
mod interrupt;
mod joblog;
mod output;
mod quote;
mod replace;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parvm_vm::{Job, Runtime, Tasks};

pub use error::RunError;

/// Arguments of `parvm run`. The options come first; everything from the command on is
/// the command and its inputs.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parvm run echo {} ::: a b c
  parvm run --map '*.cir=.' --return '*.raw' --results out ngspice -b {} ::: amp.cir bias.cir
  parvm run -k --joblog sweep.log ./sim.sh --gain {1} --temp {2} ::: 1 2 4 ::: 27 85
  parvm run -a cases.txt ./solve {}")]
pub struct Args {
    /// Run N workers (task slots) on this machine [default: PARVM_WORKERS, else the
    /// number of cores].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
    /// An args file: one input value per line (`-` for standard input); repeatable, each
    /// is an input source.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub arg_files: Vec<PathBuf>,
    /// Split each input value into columns where REGEX matches; `{1}`, `{2}`, ... are then
    /// the columns (of the first source, then of the next).
    #[arg(long, value_name = "REGEX")]
    pub colsep: Option<String>,
    /// Without inputs: run the command N times.
    #[arg(short = 'n', value_name = "N")]
    pub copies: Option<usize>,
    /// A mirror map entry `SRC=DST` copied into every case's task folder (SRC relative to
    /// the current folder, inside PARALLEL_MIRRORED_STORAGE); repeatable.
    #[arg(long = "map", value_name = "SRC=DST")]
    pub maps: Vec<String>,
    /// Bring files matching GLOB (relative to the task folder) back into the case's
    /// results folder; repeatable; needs --results.
    #[arg(long = "return", value_name = "GLOB")]
    pub returns: Vec<String>,
    /// Keep each case in DIR/<case number>/: its returned files, `stdout`, `stderr` and
    /// `exit`. DIR must be new or empty.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Write one line per case to FILE in GNU parallel's joblog format.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,
    /// Skip the cases the --joblog file records (matched by their command line, inputs
    /// included, not by position) and add to it.
    #[arg(long, requires = "joblog")]
    pub resume: bool,
    /// Like --resume, but run again the recorded cases that failed.
    #[arg(long, requires = "joblog", conflicts_with = "resume")]
    pub resume_failed: bool,
    /// Run a failed case up to N more times.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub retries: u32,
    /// Stop a case that runs longer than this (`10s`, `500ms`, `2m`, `1h`; a bare number
    /// is seconds).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Print the output of cases in input order (default: as they end).
    #[arg(short = 'k', long = "keep-order")]
    pub keep_order: bool,
    /// Print the command lines instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Prefix each line a case prints with its input values and a tab.
    #[arg(long)]
    pub tag: bool,
    /// Quote the command's own words too, so `|`, `>` or `*` in them reach the command
    /// instead of the shell (replacement strings still work inside them).
    #[arg(short = 'q', long = "quote")]
    pub quote: bool,
    /// `soon,fail=1`: after the first case that fails for good, start no new case (running
    /// ones finish; the others are reported not run and counted as failed).
    #[arg(long, value_name = "WHEN")]
    pub halt: Option<String>,
    /// Keep each worker's task folder for its next case (mirrored inputs are copied again
    /// only when they changed); removed at the end of the run.
    #[arg(long)]
    pub persistent: bool,
    /// Start each case in this folder, relative to its task folder.
    #[arg(long, value_name = "DIR")]
    pub startup_dir: Option<PathBuf>,
    /// The transport [default: PARVM_TRANSPORT, else mpi under mpirun, else local]; with
    /// tcp, join workers with `parvm worker --connect HOST:PORT` as printed at the start.
    #[arg(long, value_name = "NAME", value_parser = ["local", "tcp", "mpi"])]
    pub transport: Option<String>,
    /// The command, its arguments, and the inputs: `::: VALUES` (several sources give
    /// all combinations), `:::+ VALUES` (paired with the source before), `:::: FILES`,
    /// `::::+ FILES`.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub words: Vec<OsString>,
    /// `parvm --json`: one JSON record per case on standard output instead of the cases'
    /// output (set from the global flag).
    #[arg(skip)]
    pub json: bool,
}

/// The first argument of a `parvm run` worker process: the runtime starts workers as this
/// executable with it, and `main` sends such a process straight to [`serve`].
pub const WORKER_ARGS: &[&str] = &["run"];

/// Serves as a worker of a `parvm run` spawner: reads no input, creates no file, and does
/// not return when this process was started as a worker.
///
/// # Errors
/// The runtime cannot start (then this is no worker: the caller reports it).
pub fn serve() -> Result<(), RunError> {
    Runtime::start(Tasks::new()).map_err(RunError::Vm)?;
    // Only a spawner gets here: the caller checked that this process is a worker.
    Ok(())
}

/// The shell each case's command line is given to, with `-c`.
const SHELL: &str = "/bin/sh";

/// A case ready to run.
#[derive(Debug)]
struct Case {
    /// Its command line for `sh -c`.
    line: String,
    /// Its input values joined by spaces, for `--tag`.
    tag: Vec<u8>,
}

/// Runs `parvm run`; returns the exit status: 0, the number of failed cases up to 100,
/// 101 for more, or 130 when SIGINT or SIGTERM stopped it.
///
/// # Errors
/// Bad flags or inputs, or a sweep that cannot run (exit status 255).
pub fn run(args: Args) -> Result<u8, RunError> {
    let split = inputs::split(&args.words, &args.arg_files)?;
    let words = split
        .command
        .iter()
        .map(|word| {
            word.to_str()
                .map(str::to_owned)
                .ok_or_else(|| RunError::CommandNotUtf8 {
                    word: word.to_string_lossy().into_owned(),
                })
        })
        .collect::<Result<Vec<String>, _>>()?;
    if let (Some(copies), true) = (args.copies, split.has_inputs()) {
        return Err(RunError::CopiesWithInputs { copies });
    }
    let timeout = args.timeout.as_deref().map(duration).transpose()?;
    for pattern in &args.returns {
        if leaves_folder(pattern) {
            return Err(RunError::ReturnEscapes {
                pattern: pattern.clone(),
            });
        }
    }
    let maps = args
        .maps
        .iter()
        .map(|entry| match entry.rsplit_once('=') {
            Some((src, dst)) if !src.is_empty() && !dst.is_empty() => Ok((src, dst)),
            _ => Err(RunError::MapEntry {
                entry: entry.clone(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let colsep = args
        .colsep
        .as_deref()
        .map(|pattern| {
            regex::bytes::Regex::new(pattern).map_err(|source| RunError::Colsep {
                pattern: pattern.to_owned(),
                source,
            })
        })
        .transpose()?;
    let mut sources = split.read()?;
    if let Some(colsep) = &colsep {
        sources = inputs::columns(sources, colsep);
    }
    let template = replace::Template::parse(&words, sources.len(), args.quote)?;
    let halt = match args.halt.as_deref() {
        None | Some("never") => false,
        Some("soon,fail=1") => true,
        Some(other) => {
            return Err(RunError::Halt {
                given: other.to_owned(),
            });
        }
    };
    let values = if sources.is_empty() {
        vec![Vec::new(); args.copies.unwrap_or(1)]
    } else {
        inputs::cases(&sources)?
    };
    let cases: Vec<Case> = values
        .iter()
        .enumerate()
        .map(|(at, values)| Case {
            line: template.fill(at + 1, values),
            tag: values.join(&b' '),
        })
        .collect();
    if args.dry_run {
        for case in &cases {
            println!("{}", case.line);
        }
        return Ok(0);
    }
    if !args.returns.is_empty() && args.results.is_none() {
        return Err(RunError::ReturnWithoutResults);
    }
    let resuming = args.resume || args.resume_failed;
    // The cases to run now, by index into `cases`.
    let mut todo: Vec<usize> = (0..cases.len()).collect();
    if let (true, Some(path)) = (resuming, &args.joblog) {
        let done = joblog::recorded(path)?;
        todo.retain(|&at| match done.get(&cases[at].line) {
            None => true,
            Some(&exit) => args.resume_failed && exit != 0,
        });
    }
    let results = args
        .results
        .as_deref()
        .map(|dir| output::Results::create(dir, resuming))
        .transpose()?;
    let mut joblog = match (&args.joblog, resuming) {
        (Some(path), true) => Some(joblog::Joblog::append(path)?),
        (Some(path), false) => Some(joblog::Joblog::create(path)?),
        (None, _) => None,
    };
    let settings = Settings {
        maps: &maps,
        timeout,
        halt,
        results: results.as_ref(),
    };
    if todo.is_empty() {
        return Ok(0);
    }
    let swept = sweep(&args, &cases, &todo, &settings, joblog.as_mut())?;
    drop(results);
    if swept.interrupted {
        return Ok(130);
    }
    Ok(u8::try_from(swept.failed.min(101)).unwrap_or(101))
}

/// What `run` checked and made, for `sweep`.
struct Settings<'a> {
    maps: &'a [(&'a str, &'a str)],
    timeout: Option<Duration>,
    halt: bool,
    results: Option<&'a output::Results>,
}

/// Starts the runtime, runs every case, prints each as it ends; returns how many failed.
fn sweep(
    args: &Args,
    cases: &[Case],
    todo: &[usize],
    settings: &Settings<'_>,
    joblog: Option<&mut joblog::Joblog>,
) -> Result<Swept, RunError> {
    let (maps, timeout, results) = (settings.maps, settings.timeout, settings.results);
    let mut builder = Runtime::builder(Tasks::new());
    if let Ok(me) = std::env::current_exe() {
        builder = builder.program(me, WORKER_ARGS.iter().map(|&a| a.to_owned()).collect());
    }
    if let Some(jobs) = args.jobs {
        builder = builder.workers(jobs);
    }
    if let Some(name) = &args.transport {
        // clap let only the three names through.
        if let Ok(kind) = name.parse::<parvm_vm::TransportKind>() {
            builder = builder.transport(kind);
        }
    }
    let runtime = builder.start().map_err(RunError::Vm)?;
    let mut vm = runtime.vm().local_folder(true).persistent(args.persistent);
    if let Some(dir) = &args.startup_dir {
        vm = vm.startup_dir(dir);
    }
    for (src, dst) in maps {
        vm = vm.mirror(*src, *dst);
    }
    let vm = vm.build().map_err(RunError::Vm)?;
    let jobs = todo.iter().map(|&at| &cases[at]).map(|case| {
        // `/bin/sh` by its path, as `system(3)` does: no search of PATH (nine failed
        // `execve` per case on a typical PATH), and the same shell whatever PATH holds.
        let mut job = Job::command(SHELL)
            .args(["-c", case.line.as_str()])
            .capture(true);
        for pattern in &args.returns {
            job = job.returning(pattern.as_str());
        }
        job
    });
    let mut dispatch = vm.dispatch(jobs).retries(args.retries);
    if !args.keep_order {
        dispatch = dispatch.unordered();
    }
    if let Some(limit) = timeout {
        dispatch = dispatch.timeout(limit);
    }
    if settings.halt {
        dispatch = dispatch.halt_on_error();
    }
    if let Some(results) = results {
        dispatch = dispatch.results(results.incoming());
    }
    let interrupt = interrupt::Interrupt::install()?;
    let done = AtomicBool::new(false);
    let swept = std::thread::scope(|scope| {
        scope.spawn(|| interrupt.watch(&vm, &done));
        let swept = report(args, cases, todo, results, joblog, dispatch, &interrupt);
        done.store(true, Ordering::SeqCst);
        swept
    })?;
    if swept.interrupted {
        // Workers a Ctrl-C killed left their task folders: remove them now.
        if let Err(error) = vm.clear_local_storage(false, Duration::from_secs(5)) {
            eprintln!("parvm run: could not remove the folders of stopped cases: {error}");
        }
    }
    drop(vm);
    runtime.finalize().map_err(RunError::Vm)?;
    Ok(swept)
}

/// What a sweep did.
struct Swept {
    /// Cases that did not succeed (not run ones included).
    failed: usize,
    /// Cases reported.
    reported: usize,
    /// Whether SIGINT or SIGTERM stopped it.
    interrupted: bool,
}

/// Prints, keeps and logs each result as it comes; stops taking results after a signal
/// (dropping the dispatch stops what still runs).
fn report<I: Iterator<Item = Job>>(
    args: &Args,
    cases: &[Case],
    todo: &[usize],
    results: Option<&output::Results>,
    mut joblog: Option<&mut joblog::Joblog>,
    dispatch: parvm_vm::Dispatch<'_, I>,
    interrupt: &interrupt::Interrupt,
) -> Result<Swept, RunError> {
    let mut swept = Swept {
        failed: 0,
        reported: 0,
        interrupted: false,
    };
    let failed = &mut swept.failed;
    let bar = progress_bar(todo.len());
    for result in dispatch {
        let result = match result {
            Ok(result) => result,
            // A Ctrl-C in a terminal ends the workers too: the dispatch ends for want of
            // them, which is the stop that was asked for.
            Err(_) if interrupt.happened() => break,
            Err(error) => return Err(RunError::Vm(error)),
        };
        swept.reported += 1;
        let at = todo[result.index];
        let number = at + 1;
        if args.json {
            bar.suspend(|| output::print_record(&result, number, &cases[at].line))?;
        } else {
            let tag = args.tag.then(|| cases[at].tag.as_slice());
            bar.suspend(|| output::print(&result, number, tag))?;
        }
        bar.inc(1);
        // A case whose results could not be kept is reported and counts as failed; the
        // run goes on (a full disk may have room again once other cases are done).
        let kept = match results.map(|results| results.keep(&result, number)) {
            Some(Err(error)) => {
                bar.suspend(|| eprintln!("parvm run: {error}"));
                false
            }
            _ => true,
        };
        if !result.outcome.is_success() || !kept {
            *failed += 1;
        }
        // A case not run, or whose results were not kept, is left out of the joblog, so
        // `--resume` runs it.
        let ran = !matches!(result.outcome, parvm_vm::JobOutcome::NotRun);
        if let (Some(log), true) = (joblog.as_deref_mut(), ran && kept) {
            let (exit, signal) = output::status(&result.outcome);
            let host = result
                .host
                .as_ref()
                .map_or_else(|| ":".to_owned(), ToString::to_string);
            log.write(&joblog::Entry {
                seq: number,
                host: &host,
                start: SystemTime::now()
                    .checked_sub(result.elapsed)
                    .unwrap_or(SystemTime::now()),
                runtime: result.elapsed,
                send: result.mirrored,
                receive: result.returned_bytes,
                exit,
                signal,
                command: &cases[at].line,
            })?;
        }
        if interrupt.happened() {
            swept.interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    if swept.interrupted || interrupt.happened() {
        swept.interrupted = true;
        eprintln!(
            "parvm run: stopped by a signal: {} of {} cases reported ({} did not succeed); the others were stopped or never started and are not in the joblog, so --resume runs them",
            swept.reported,
            todo.len(),
            swept.failed,
        );
    }
    Ok(swept)
}

/// Cases done out of `cases`, with the time left, on standard error; indicatif draws it
/// only when standard error is a terminal, so pipes and logs never see it.
fn progress_bar(cases: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(u64::try_from(cases).unwrap_or(u64::MAX));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} cases, {eta} left [{elapsed}]",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Whether a return pattern reaches outside the task folder.
fn leaves_folder(pattern: &str) -> bool {
    Path::new(pattern).is_absolute() || pattern.split('/').any(|part| part == "..")
}

/// A duration such as `10s`, `500ms`, `2m`, `1h` or `1.5` (seconds).
fn duration(text: &str) -> Result<Duration, RunError> {
    let bad = || RunError::Duration {
        text: text.to_owned(),
    };
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("10s", 10_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1.5", 1500),
        ] {
            assert_eq!(duration(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
        for text in ["", "s", "10x", "-1s", "0"] {
            assert!(duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn return_patterns_that_leave_the_folder() {
        for (pattern, leaves) in [
            ("*.raw", false),
            ("out/../x", true),
            ("../x", true),
            ("/etc/passwd", true),
            ("a..b", false),
        ] {
            assert_eq!(leaves_folder(pattern), leaves, "{pattern}");
        }
    }
}
