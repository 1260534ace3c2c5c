//! `parvm run`: a sweep of any shell command over GNU parallel-style inputs, each case in
//! its own task folder on a worker.
//!
//! This module owns the flags and the order of a run (inputs, commands, runtime, printing,
//! exit status); the pieces live in `inputs` (sources and their combinations), `feed`
//! (cases made as the dispatch pulls them), `quote` and `replace` (the command line of a
//! case), `halt`, `timeout`, `output` (printing and `--results`) and `joblog`.

mod error;
mod feed;
mod gnu;
mod halt;
mod inputs;
mod interrupt;
mod joblog;
mod jobs;
mod output;
mod quote;
mod replace;
mod table;
mod timeout;

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parvm_vm::{Job, Runtime, Tasks};

pub use error::RunError;
pub use gnu::instead_of_gnu_parallel;

/// Arguments of `parvm run`. The options come first; everything from the command on is
/// the command and its inputs.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parvm run echo {} ::: a b c
  parvm run --map '*.cir=.' --return '*.raw' --results out ngspice -b {} ::: amp.cir bias.cir
  parvm run -k --joblog sweep.log ./sim.sh --gain {1} --temp {2} ::: 1 2 4 ::: 27 85
  parvm run -a cases.txt ./solve {}
  parvm run --line-buffer --tag ./sim.sh {} ::: a b c
  parvm run --halt now,fail=1 --timeout 300% ./test.sh {} ::: unit lint e2e
  find . -name '*.cir' | parvm run -a - --results out --return 'out/{/.}.raw' ./sim.sh {}
  find . -name '*.cir' -print0 | parvm run -0 ngspice -b {}
  parvm run --header : --colsep , ./sim.sh --rl {rl} --temp {temp} :::: params.csv
  parvm run --results sweep.tsv ./sim.sh {} ::: 1k 2k 5k   # one table: values, output
  parvm run -N2 ./sim.sh --rl {1} --cl {2} :::: pairs.txt
  parvm run --each-host df -h /scratch")]
pub struct Args {
    /// Run N workers (task slots) on this machine; `N%` of the cores, `+N` or `-N` cores
    /// as in GNU parallel [default: PARVM_WORKERS, else the number of cores].
    #[arg(
        short = 'j',
        long = "jobs",
        visible_short_alias = 'P',
        visible_alias = "max-procs",
        value_name = "N",
        allow_hyphen_values = true,
        value_parser = jobs::parse_here,
        overrides_with = "jobs"
    )]
    pub jobs: Option<usize>,
    /// An args file: one input value per line (`-` for standard input); repeatable, each
    /// is an input source. Without any input source, values piped or redirected into
    /// `parvm run` are read, as with `-a -`.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub arg_files: Vec<PathBuf>,
    /// Values of args files and standard input end with DELIM instead of a newline: one
    /// or more characters, with C escapes (`\t`, `\0`, `\x1e`, octal `\036`), as in GNU
    /// parallel; the last value needs none.
    #[arg(
        short = 'd',
        long = "delimiter",
        value_name = "DELIM",
        allow_hyphen_values = true
    )]
    pub delimiter: Option<String>,
    /// Values of args files and standard input end with a NUL byte, as `find -print0`
    /// writes them (file names with spaces or newlines); the same as `-d '\0'`.
    #[arg(short = '0', long = "null", conflicts_with = "delimiter")]
    pub null: bool,
    /// `--header :`: the first value of each input source (the first line of an args
    /// file; with --colsep, each of its columns) is not a case but the source's name,
    /// which `{name}` (and `{name.}`, `{name/}`, ...) is replaced with the value of, as
    /// in GNU parallel: `--header : --colsep , ./sim --r {r} :::: params.csv`.
    #[arg(long, value_name = ":")]
    pub header: Option<String>,
    /// Split each input value into columns where REGEX matches; `{1}`, `{2}`, ... are then
    /// the columns (of the first source, then of the next).
    #[arg(long, value_name = "REGEX", allow_hyphen_values = true)]
    pub colsep: Option<String>,
    /// Without inputs: run the command N times.
    #[arg(short = 'n', value_name = "N")]
    pub copies: Option<usize>,
    /// Replace STR with the value instead of `{}` (which is then text), as GNU parallel's
    /// and xargs' `-I`: `parvm run -I @@ cp @@ @@.bak ::: a b`.
    #[arg(short = 'I', value_name = "STR", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub replace: Option<String>,
    /// Give each case the next N values of the (one) input source, as GNU parallel's
    /// `-N`: `{1}` ... `{N}` are they, `{}` all of them; the last case takes what is left.
    #[arg(short = 'N', long = "max-args", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub per_case: Option<u16>,
    /// Run every case once on each host of the run (without inputs: the command once per
    /// host); under TCP, give `-j N` to wait for N workers first.
    #[arg(long)]
    pub each_host: bool,
    /// A mirror map entry `SRC=DST`: SRC (relative to the current folder, inside
    /// PARALLEL_MIRRORED_STORAGE) is copied into the folder DST of every case's task
    /// folder, so `--map nets=.` gives the task `nets/` and `--map nets=nets` gives
    /// `nets/nets/`; repeatable.
    #[arg(long = "map", value_name = "SRC=DST", allow_hyphen_values = true)]
    pub maps: Vec<String>,
    /// Bring files matching GLOB (relative to the task folder) back into the case's
    /// results folder; repeatable; needs --results. Replacement strings work in it
    /// (`out/{/.}.raw`), their values matching literally.
    #[arg(long = "return", value_name = "GLOB", allow_hyphen_values = true)]
    pub returns: Vec<String>,
    /// Keep each case in DIR/<case number>/: its returned files, `stdout`, `stderr` and
    /// `exit`. DIR must be new or empty.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Write one line per case to FILE in GNU parallel's joblog format (`-`: standard
    /// output).
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
    /// is seconds), or than `P%` of the median runtime of the cases that succeeded so far
    /// (from the 3rd success on; e.g. `300%`); `0` is no limit, as in GNU parallel.
    #[arg(long, value_name = "DURATION|P%", allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// Print the output of cases in input order (default: as they end). With
    /// --line-buffer, lines still print as they come: -k orders only what is printed
    /// when a case ends, and the joblog.
    #[arg(short = 'k', long = "keep-order")]
    pub keep_order: bool,
    /// Print each whole line as soon as a case writes it (lines of cases running at once
    /// interleave, never a part of one line with another) instead of a case's output
    /// whole when it ends. Memory stays bounded whatever a case prints: a case that
    /// prints faster than the terminal takes it waits.
    #[arg(long = "line-buffer", visible_alias = "lb", alias = "linebuffer")]
    pub line_buffer: bool,
    /// GNU parallel's `--will-cite`, `--no-notice`, `--bar`, `--eta`, `--progress`,
    /// `--cleanup`, `--group` and `--silent` change nothing here: there is no citation
    /// notice, a progress bar is drawn whenever standard error is a terminal, task folders
    /// are always removed, output is grouped unless --line-buffer, and command lines are
    /// printed only with -v.
    #[arg(
        long = "will-cite",
        alias = "no-notice",
        alias = "bar",
        alias = "eta",
        alias = "progress",
        alias = "cleanup",
        alias = "group",
        alias = "silent",
        hide = true,
        action = clap::ArgAction::Count
    )]
    pub gnu_parallel_no_op: u8,
    /// Print each case's command line on standard output before its output, as GNU
    /// parallel does (with --line-buffer, as the case is handed out).
    #[arg(short = 'v', long)]
    pub verbose: bool,
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
    /// Stop the run early: WHEN is `soon` (start no new case; running ones finish) or
    /// `now` (stop the running ones too), once COUNT cases (a number, or `P%` of the
    /// run's cases) failed (`fail`), succeeded (`success`) or ended (`done`); e.g.
    /// `now,fail=1`, `soon,fail=10%`, `now,success=1`. Cases not run count as failed and
    /// stay out of the joblog. Default: `never`.
    #[arg(long, value_name = "WHEN,WHY=COUNT")]
    pub halt: Option<String>,
    /// Keep each worker's task folder for its next case with what the cases wrote in it
    /// (mirrored inputs are copied again only when they changed); removed at the end of the
    /// run. Not needed for speed: without it a worker renews the folder for its next case,
    /// which copies again only what the case before changed and removes what it wrote.
    #[arg(long)]
    pub persistent: bool,
    /// Give every case the spawner's value of environment variable NAME, on every host
    /// (workers of other hosts keep their own environment otherwise); repeatable, and
    /// added to PARVM_FORWARD_ENV, as GNU parallel's --env.
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
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
    // Not `allow_hyphen_values`: with it clap takes any option it cannot read whole
    // (`-j2`, `-a/dev/null`, a misspelt `--bogus`) for the command's first word.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
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

/// Runs `parvm run`; returns the exit status: 0, the number of failed cases up to 100,
/// 101 for more, what `--halt` gives, or 130 when SIGINT or SIGTERM stopped it.
///
/// # Errors
/// Bad flags or inputs, or a sweep that cannot run (exit status 255).
pub fn run(args: Args) -> Result<u8, RunError> {
    let mut split = inputs::split(&args.words, &args.arg_files)?;
    if args.null {
        split.delimit_with(vec![0]);
    } else if let Some(delimiter) = &args.delimiter {
        split.delimit_with(inputs::parse_delimiter(delimiter)?);
    }
    // As GNU parallel: without an input source, values piped or redirected in are the
    // cases (`find . -name '*.cir' | parvm run ngspice -b`). With nothing piped in (a
    // terminal, /dev/null, ssh's socket) the command runs once, or `-n N` times, or once
    // per host with `--each-host`.
    if !split.has_inputs() && args.copies.is_none() && !args.each_host && inputs::stdin_is_piped() {
        if parvm_transport::launcher::launched_by_mpirun() {
            // mpirun gives rank 0 a pipe whatever its own input is: nothing says that
            // values were piped in, and at a prompt the run would wait without a word.
            crate::console::say(inputs::FROM_MPIRUN);
        }
        split.read_stdin();
    } else if let Some(copies) = args.copies
        && !split.has_inputs()
        && inputs::stdin_is_piped()
        && !parvm_transport::launcher::launched_by_mpirun()
    {
        // `find ... | parallel -n1 cmd` reads the values; here -n is copies, so say that
        // the values piped in stay unread rather than run the command bare.
        crate::console::say(inputs::copies_leave_stdin_unread(copies));
    }
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
    let timeout = args
        .timeout
        .as_deref()
        .map(timeout::Limit::parse)
        .transpose()?
        .flatten();
    for pattern in &args.returns {
        if leaves_folder(pattern) {
            return Err(RunError::ReturnEscapes {
                pattern: pattern.clone(),
            });
        }
        if let Some(warning) = args
            .startup_dir
            .as_deref()
            .and_then(|startup| beside_startup_warning(startup, pattern))
        {
            crate::console::say(format!("parvm run: {warning}"));
        }
    }
    let maps = args
        .maps
        .iter()
        .map(|entry| match entry.rsplit_once('=') {
            _ if replace::Template::has_replacements(entry) => Err(RunError::MapWithReplacement {
                entry: entry.clone(),
            }),
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
    let halt = args
        .halt
        .as_deref()
        .map(halt::Halt::parse)
        .transpose()?
        .flatten();
    // A first args file is read as cases start, unless its lines are all needed first:
    // for their columns, or for the total a percentage of cases needs.
    let stream = colsep.is_none() && !halt.is_some_and(|halt| halt.needs_total());
    // Set by the first SIGINT, SIGTERM or SIGHUP (`interrupt`).
    let stop = Arc::new(AtomicBool::new(false));
    let mut inputs = split.open(stream, &stop)?;
    if let Some(colsep) = &colsep {
        inputs = inputs.columns(colsep);
    }
    let names = match args.header.as_deref() {
        None => Vec::new(),
        Some(":") if inputs.count() > 0 => inputs.take_header()?,
        Some(":") => return Err(RunError::HeaderWithoutInputs),
        Some(other) => {
            return Err(RunError::Header {
                given: other.to_owned(),
            });
        }
    };
    // `-N n`: n values of the one source per case, numbered as n sources.
    let per_case = args.per_case.map(usize::from).filter(|&n| n > 1);
    if let Some(n) = per_case
        && (inputs.count() != 1 || args.colsep.is_some() || args.header.is_some())
    {
        return Err(RunError::MaxArgsSources {
            per_case: n,
            sources: inputs.count(),
        });
    }
    let sources = per_case.unwrap_or(inputs.count());
    let replacing = replace::Replacing::new(sources, &names).value_as(args.replace.as_deref());
    let template = replace::Template::parse(&words, &replacing, args.quote)?;
    if let Some(warning) = replace::split_script_warning(&words, args.quote) {
        crate::console::say(format!("parvm run: {warning}"));
    }
    let returns = args
        .returns
        .iter()
        .map(|pattern| replace::Template::pattern(pattern, &replacing))
        .collect::<Result<Vec<_>, _>>()?;
    let (values, total): (feed::Values<'_>, Option<usize>) = if inputs.count() == 0 {
        let copies = args.copies.unwrap_or(1);
        (Box::new((0..copies).map(|_| Ok(Vec::new()))), Some(copies))
    } else if let Some(n) = per_case {
        let total = inputs.total().map(|total| total.div_ceil(n));
        (Box::new(inputs::in_groups(inputs.cases()?, n)), total)
    } else {
        let total = inputs.total();
        (Box::new(inputs.cases()?), total)
    };
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for case in feed::Maker::new(values, &template, &returns, None) {
            let case = case?;
            match writeln!(out, "{}", case.line) {
                Ok(()) => {}
                // `--dry-run | head`: the reader has seen enough.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
                Err(source) => {
                    return Err(RunError::Print {
                        case: case.number,
                        source,
                    });
                }
            }
        }
        return Ok(0);
    }
    if !args.returns.is_empty() && args.results.as_deref().is_none_or(table::is_table) {
        return Err(RunError::ReturnWithoutResults);
    }
    let resuming = args.resume || args.resume_failed;
    if resuming && args.joblog.as_deref().is_some_and(joblog::is_stdout) {
        return Err(RunError::ResumeFromStdout);
    }
    let recorded = match (resuming, &args.joblog) {
        (true, Some(path)) => Some(joblog::recorded(path)?),
        _ => None,
    };
    // `--results FILE.tsv` (or `.csv`): a table of the cases instead of a folder each.
    let (results, table) = match args.results.as_deref() {
        Some(path) if table::is_table(path) => (
            None,
            Some(RefCell::new(table::Table::open(path, sources, resuming)?)),
        ),
        Some(dir) => (Some(output::Results::create(dir, resuming)?), None),
        None => (None, None),
    };
    let mut joblog = match (&args.joblog, resuming) {
        (Some(path), true) => Some(joblog::Joblog::append(path)?),
        (Some(path), false) => Some(joblog::Joblog::create(path)?),
        (None, _) => None,
    };
    let settings = Settings {
        stop: &stop,
        maps: &maps,
        timeout,
        halt,
        results: results.as_ref(),
        table: table.as_ref(),
        recorded: recorded.as_ref(),
        template: &template,
        returns: &returns,
        total,
    };
    let swept = sweep(&args, values, &settings, joblog.as_mut())?;
    drop(results);
    if swept.interrupted {
        return Ok(130);
    }
    Ok(swept.status)
}

/// What `run` checked and made, for `sweep`.
struct Settings<'a> {
    /// The flag the signal handlers set ([`interrupt::Interrupt::install`]).
    stop: &'a Arc<AtomicBool>,
    maps: &'a [(&'a str, &'a str)],
    timeout: Option<timeout::Limit>,
    halt: Option<halt::Halt>,
    results: Option<&'a output::Results>,
    /// `--results FILE.tsv|.csv`: the table of the cases.
    table: Option<&'a RefCell<table::Table>>,
    /// What the joblog recorded, with `--resume` or `--resume-failed`.
    recorded: Option<&'a joblog::Recorded>,
    template: &'a replace::Template,
    returns: &'a [replace::Template],
    /// How many sets of input values there are, when known before they are read.
    total: Option<usize>,
}

/// Starts the runtime, runs every case, prints each as it ends; returns how many failed.
fn sweep(
    args: &Args,
    values: feed::Values<'_>,
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
    if !args.env.is_empty() {
        builder = builder.forward_env(args.env.iter().cloned());
    }
    if let Some(name) = &args.transport {
        // clap let only the three names through.
        if let Ok(kind) = name.parse::<parvm_vm::TransportKind>() {
            builder = builder.transport(kind);
        }
    }
    // Caught from here on where that is safe, so a SIGTERM that comes as soon as a TCP
    // spawner printed its address still ends the run cleanly; else once the runtime started.
    let mut interrupt = interrupt::Interrupt::install_before_start(settings.stop)?;
    let runtime = builder.start().map_err(|e| match e {
        parvm_vm::Error::Transport {
            source: parvm_transport::Error::NoWorkers,
            ..
        } if args.jobs == Some(0) => RunError::NoLocalWorkers,
        // Said in the words of the command line when it came from --env.
        parvm_vm::Error::ForwardEnv { name, reason } if args.env.contains(&name) => {
            RunError::EnvRefused { name, reason }
        }
        e => RunError::Vm(e),
    })?;
    if runtime.backend() == "local" {
        // Every case takes a task folder in local storage: one that cannot be used is
        // said once, not as the failure of each case. (TCP and MPI workers have their
        // own; `parvm worker` checks its before it joins.)
        parvm_local_storage::LocalStorage::from_config(runtime.config())
            .map_err(RunError::LocalStorage)?;
    }
    let mut vm = runtime.vm().local_folder(true).persistent(args.persistent);
    if let Some(dir) = &args.startup_dir {
        vm = vm.startup_dir(dir);
    }
    for (src, dst) in maps {
        vm = vm.mirror(*src, *dst);
    }
    let vm = vm.build().map_err(|error| match error {
        // Said in the words of the command line, not of the library's builder.
        parvm_vm::Error::MirrorSourceMissing {
            given,
            path,
            problem,
        } => RunError::MapSourceMissing {
            map: maps
                .iter()
                .find(|(src, _)| *src == given)
                .map_or_else(|| given.clone(), |(src, dst)| format!("{src}={dst}")),
            source_name: given,
            path,
            problem,
        },
        parvm_vm::Error::Mirror(source) => RunError::MapRefused {
            map: refused_map(maps, &source),
            source,
        },
        other => RunError::Vm(other),
    })?;
    let hosts = if args.each_host {
        // TCP workers join whenever they connect: wait for those asked for (the local and
        // MPI transports have theirs already).
        runtime
            .wait_for_workers(args.jobs.unwrap_or(1), EACH_HOST_WAIT)
            .map_err(RunError::Vm)?;
        // The hosts with worker slots (the spawner's own has none under TCP and MPI).
        let mut hosts: Vec<parvm_vm::HostId> = vm
            .describe()
            .hosts
            .into_iter()
            .filter(|host| !host.slots.is_empty())
            .map(|host| host.host)
            .collect();
        hosts.sort();
        Some(hosts)
    } else {
        None
    };
    let mut maker = feed::Maker::new(values, settings.template, settings.returns, hosts);
    let total = settings
        .total
        .and_then(|total| total.checked_mul(maker.per_values()));
    let bar = progress_bar(total, args.json);
    let ledger = feed::Ledger::default();
    // `--json` prints records, not output: the output stays in --results.
    let streaming = args.line_buffer && !args.json;
    // The first line that could not be printed; the run stops with it.
    let unprinted: RefCell<Option<RunError>> = RefCell::new(None);
    let jobs = std::iter::from_fn(|| {
        loop {
            // A halt ends the sequence too, so the cases after the window are never made.
            if ledger.halted() {
                return None;
            }
            let case = match maker.next()? {
                Ok(case) => case,
                Err(error) => {
                    ledger.fail(error);
                    return None;
                }
            };
            if let Some(recorded) = settings.recorded {
                let host = case.host.as_ref().map(|host| host.0.as_str());
                if let Some(exit) = recorded.exit(host, &case.line)
                    && !(args.resume_failed && exit != 0)
                {
                    ledger.skip(&case);
                    bar.dec_length(1);
                    continue;
                }
            }
            // `/bin/sh` by its path, as `system(3)` does: no search of PATH (nine failed
            // `execve` per case on a typical PATH), and the same shell whatever PATH holds.
            // With --line-buffer the lines are printed as they come: captured only for
            // the `stdout` and `stderr` of --results (files, or a table's columns).
            let mut job = Job::command(SHELL)
                .args(["-c", case.line.as_str()])
                .capture(!streaming || results.is_some() || settings.table.is_some());
            for pattern in &case.returns {
                job = job.returning(pattern.as_str());
            }
            if let Some(host) = &case.host {
                job = job.hosts([host.clone()]);
            }
            if args.verbose && streaming {
                // With --line-buffer its lines print as they come, so it goes first.
                let said = bar.suspend(|| writeln!(std::io::stdout(), "{}", case.line));
                if let Err(source) = said {
                    let number = case.number;
                    ledger.fail(RunError::Print {
                        case: number,
                        source,
                    });
                    return None;
                }
            }
            ledger.hand_out(case);
            return Some(job);
        }
    });
    let mut dispatch = vm.dispatch(jobs).retries(args.retries);
    if !args.keep_order {
        dispatch = dispatch.unordered();
    }
    match timeout {
        Some(timeout::Limit::Fixed(limit)) => dispatch = dispatch.timeout(limit),
        Some(timeout::Limit::OfMedian(percent)) => {
            dispatch = dispatch.timeout_of_median(percent);
        }
        None => {}
    }
    if let Some(results) = results {
        dispatch = dispatch.results(results.incoming());
    }
    if streaming {
        let bar = bar.clone();
        let (ledger, unprinted) = (&ledger, &unprinted);
        dispatch = dispatch.on_output(move |index, stream, lines| {
            if unprinted.borrow().is_some() {
                return;
            }
            let (number, tag) = ledger.case_tag(index);
            let tag = args.tag.then_some(tag.as_slice());
            if let Err(source) = bar.suspend(|| output::print_lines(stream, lines, tag)) {
                *unprinted.borrow_mut() = Some(RunError::Print {
                    case: number,
                    source,
                });
            }
        });
    }
    interrupt.install_the_rest()?;
    let done = AtomicBool::new(false);
    let halt = dispatch.halt_handle();
    let swept = std::thread::scope(|scope| {
        scope.spawn(|| interrupt.watch(&vm, &halt, &done));
        let sweep = Reporting {
            args,
            ledger: &ledger,
            total,
            results,
            table: settings.table,
            halt: settings.halt,
            interrupt: &interrupt,
            bar: bar.clone(),
            unprinted: streaming.then_some(&unprinted),
        };
        let swept = sweep.report(joblog, dispatch);
        done.store(true, Ordering::SeqCst);
        swept
    });
    // Also when the sweep failed (its output could not be printed, say).
    if interrupt.happened() || vm.workers_lost() > 0 {
        // Workers a Ctrl-C killed, or that died, left their task folders: removed now,
        // not at the next start of parvm on their host.
        if let Err(error) = vm.clear_local_storage(false, Duration::from_secs(5)) {
            crate::console::say(format!(
                "parvm run: could not remove the task folders of lost workers: {error}"
            ));
        }
    }
    let swept = swept?;
    drop(vm);
    runtime.finalize().map_err(RunError::Vm)?;
    if let Some(error) = ledger.failure() {
        // The cases made before it ran and were reported; the input is still at fault.
        return Err(error);
    }
    Ok(swept)
}

/// "case 7", "cases 3, 7 and 9", or the first ten of many and how many more.
fn case_list(numbers: &[usize]) -> String {
    const SHOWN: usize = 10;
    let shown: Vec<String> = numbers.iter().take(SHOWN).map(usize::to_string).collect();
    match (numbers.len(), shown.split_last()) {
        (_, None) => String::from("no case"),
        (1, Some((only, _))) => format!("case {only}"),
        (n, Some((last, rest))) if n <= SHOWN => format!("cases {} and {last}", rest.join(", ")),
        (n, _) => format!("cases {} and {} more", shown.join(", "), n - SHOWN),
    }
}

/// How long `--each-host` waits for the workers asked for with `-j` (TCP workers join
/// when they connect, e.g. once ssh started them).
const EACH_HOST_WAIT: Duration = Duration::from_secs(300);

/// What a sweep did.
struct Swept {
    /// Cases that did not succeed (not run ones included).
    failed: usize,
    /// Cases reported.
    reported: usize,
    /// Whether SIGINT or SIGTERM stopped it.
    interrupted: bool,
    /// The exit status, when no signal stopped it.
    status: u8,
}

/// What `report` needs besides the dispatch and the joblog.
struct Reporting<'a> {
    args: &'a Args,
    /// The cases in flight.
    ledger: &'a feed::Ledger,
    /// How many cases the run has, when known.
    total: Option<usize>,
    results: Option<&'a output::Results>,
    table: Option<&'a RefCell<table::Table>>,
    halt: Option<halt::Halt>,
    interrupt: &'a interrupt::Interrupt,
    bar: indicatif::ProgressBar,
    /// With --line-buffer: the first line that could not be printed.
    unprinted: Option<&'a RefCell<Option<RunError>>>,
}

impl Reporting<'_> {
    /// The error for a dispatch that every worker left with the jobs at `unfinished`
    /// (dispatch indices) not reported: which cases, by number, did not finish or start.
    fn workers_gone(&self, unfinished: &[usize], source: Box<parvm_vm::Error>) -> RunError {
        let mut numbers: Vec<usize> = unfinished
            .iter()
            .map(|&index| self.ledger.case_tag(index).0)
            .filter(|&number| number > 0)
            .collect();
        numbers.sort_unstable();
        let made = self.ledger.made();
        let mut cases = if numbers.is_empty() {
            String::from("every case handed out ended")
        } else {
            format!("{} did not finish", case_list(&numbers))
        };
        match self.total {
            Some(total) if total > made => {
                let first = made + 1;
                let range = match total - made {
                    1 => format!("case {total}"),
                    2 => format!("cases {first} and {total}"),
                    _ => format!("cases {first} to {total}"),
                };
                cases.push_str(&format!(" and {range} did not start"));
            }
            Some(_) => {}
            None => cases.push_str(&format!(" and no case after case {made} started")),
        }
        let resume = if self.args.joblog.is_some() {
            "run the same command again with --resume to run only them (the joblog records the cases that ended)"
        } else {
            "the cases that ended are reported above; with --joblog FILE, a run stopped like this is resumed with --resume"
        };
        RunError::WorkersGone {
            cases,
            resume,
            source,
        }
    }

    /// Prints, keeps and logs each result as it comes; halts the dispatch when `--halt`
    /// says so; after a signal makes no more cases and reports each case that was running
    /// as it stops (the interrupt's watcher stops them).
    fn report<I: Iterator<Item = Job>>(
        &self,
        mut joblog: Option<&mut joblog::Joblog>,
        mut dispatch: parvm_vm::Dispatch<'_, I>,
    ) -> Result<Swept, RunError> {
        let (args, bar) = (self.args, &self.bar);
        let mut swept = Swept {
            failed: 0,
            reported: 0,
            interrupted: false,
            status: 0,
        };
        let mut tally = halt::Tally::default();
        // The exit code of the case that halted the run, once it halted.
        let mut halted_by: Option<Option<i64>> = None;
        while let Some(result) = dispatch.next() {
            let result = match result {
                Ok(result) => result,
                // A Ctrl-C in a terminal ends the workers too: the dispatch ends for want
                // of them, which is the stop that was asked for.
                Err(_) if self.interrupt.happened() => break,
                Err(parvm_vm::Error::DispatchUnfinished { unfinished, source }) => {
                    return Err(self.workers_gone(&unfinished, source));
                }
                Err(error) => return Err(RunError::Vm(error)),
            };
            if let Some(error) = self.unprinted.and_then(|u| u.borrow_mut().take()) {
                return Err(error);
            }
            let Some(case) = self.ledger.take(result.index) else {
                // Every job was handed out with its case; a result without one would be
                // the dispatch's bug, and has nothing to print.
                continue;
            };
            if self.interrupt.happened() {
                // No case is made any more: the dispatch ends once the cases handed out
                // have ended or stopped, each reported below.
                swept.interrupted = true;
                self.ledger.halt();
                if matches!(result.outcome, parvm_vm::JobOutcome::NotRun)
                    && result.elapsed.is_zero()
                {
                    // Never started, as the signal asked: not a case to report.
                    continue;
                }
            }
            swept.reported += 1;
            let number = case.number;
            if args.json {
                bar.suspend(|| output::print_record(&result, number, &case.line))?;
            } else {
                let tag = args.tag.then_some(case.tag.as_slice());
                // With --line-buffer its lines were printed as they came.
                let whole = self.unprinted.is_none();
                let command = args.verbose.then_some(case.line.as_str());
                bar.suspend(|| output::print(&result, number, tag, whole, command))?;
            }
            bar.inc(1);
            let ran = ran_to_its_end(&result.outcome, self.interrupt.happened());
            let (exit, signal) = output::status(&result.outcome);
            // A case whose results could not be kept is reported and counts as failed; the
            // run goes on (a full disk may have room again once other cases are done).
            let kept = match self.results.map(|results| results.keep(&result, number)) {
                Some(Err(error)) => {
                    bar.suspend(|| crate::console::say(format!("parvm run: {error}")));
                    false
                }
                _ => true,
            };
            if result.outcome.is_success() && kept {
                tally.succeeded += 1;
            } else {
                swept.failed += 1;
                tally.failed += usize::from(ran);
            }
            // A case not run, whose results were not kept, or that failed with exit code
            // 0 is left out of the joblog, so `--resume` runs it.
            let logged = ran && kept && !output::failed_after_exit_zero(&result.outcome);
            if logged && (joblog.is_some() || self.table.is_some()) {
                let host = result
                    .host
                    .as_ref()
                    .map_or_else(|| ":".to_owned(), ToString::to_string);
                let entry = joblog::Entry {
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
                    command: &case.line,
                };
                if let Some(log) = joblog.as_deref_mut() {
                    log.write(&entry)?;
                }
                if let Some(table) = self.table {
                    // A stream that spilled into a file is read back for its cell.
                    let printed = |captured| {
                        output::captured_bytes(captured).map_err(|source| RunError::ResultsTable {
                            path: table.borrow().path().to_owned(),
                            source,
                        })
                    };
                    let stdout = printed(result.stdout.as_ref())?;
                    let stderr = printed(result.stderr.as_ref())?;
                    table
                        .borrow_mut()
                        .write(&entry, &case.values, &stdout, &stderr)?;
                }
            }
            if let Some(halt) = self.halt
                && halted_by.is_none()
                && ran
                && halt.reached(&tally, self.total.unwrap_or(usize::MAX))
            {
                halted_by = Some(Some(exit).filter(|&code| code > 0));
                self.ledger.halt();
                let now = halt.when == halt::When::Now;
                dispatch.halt(now);
                bar.suspend(|| {
                    crate::console::say(format!(
                        "parvm run: --halt {}: {} failed, {} succeeded; starting no new case{}",
                        args.halt.as_deref().unwrap_or_default(),
                        tally.failed,
                        tally.succeeded,
                        if now {
                            " and stopping the running ones"
                        } else {
                            ", waiting for the running ones"
                        }
                    ));
                });
            }
        }
        bar.finish_and_clear();
        if swept.interrupted || self.interrupt.happened() {
            swept.interrupted = true;
            crate::console::say(format!(
                "parvm run: stopped by a signal: {} reported ({} did not succeed); cases stopped or never started are not in the joblog, so --resume runs them",
                cases(swept.reported),
                swept.failed,
            ));
            return Ok(swept);
        }
        swept.status = halt::failed_status(swept.failed);
        if let (Some(halt), Some(trigger)) = (self.halt, halted_by) {
            // Cases never made after the halt were not reported: they did not run either.
            let unmade = self
                .total
                .map(|total| total.saturating_sub(self.ledger.made()));
            swept.failed += unmade.unwrap_or(0);
            let total = self.total.unwrap_or(self.ledger.made());
            swept.status = halt.exit_status(trigger, &tally, swept.failed, total);
            let not_run = swept.failed - tally.failed;
            let rest = if unmade.is_some() {
                ""
            } else {
                ", and the rest of the input was not read"
            };
            crate::console::say(format!(
                "parvm run: halted by --halt {}: {} ran ({} failed), {not_run} not run{rest}; the cases not run are not in the joblog, so --resume runs them",
                self.args.halt.as_deref().unwrap_or_default(),
                cases(tally.failed + tally.succeeded),
                tally.failed,
            ));
        }
        Ok(swept)
    }
}

/// Cases done out of `cases` (when known), with the time left, on standard error.
/// indicatif draws it only when standard error is a terminal, so pipes and logs never see
/// it; none with `--json`, whose records are for programs.
fn progress_bar(cases: Option<usize>, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match cases {
        Some(cases) => (
            indicatif::ProgressBar::new(u64::try_from(cases).unwrap_or(u64::MAX)),
            "{bar:30} {pos}/{len} cases, {eta} left [{elapsed}]",
        ),
        // Cases still being read: a count and the time so far.
        None => (
            indicatif::ProgressBar::no_length(),
            "{spinner} {pos} cases [{elapsed}]",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Whether a return pattern reaches outside the task folder.
fn leaves_folder(pattern: &str) -> bool {
    Path::new(pattern).is_absolute() || pattern.split('/').any(|part| part == "..")
}

/// The `--map` entry (or entries) the mirror map's refusal `error` is about, as given.
fn refused_map(maps: &[(&str, &str)], error: &parvm_mirror_fs::Error) -> String {
    use parvm_mirror_fs::Error;
    let here = std::env::current_dir().unwrap_or_default();
    let entry = maps.iter().find(|(src, dst)| match error {
        Error::TargetEscapes { target } | Error::TargetAbsolute { target } => {
            Path::new(dst) == target
        }
        Error::NoRoot { path, .. }
        | Error::SourceIsRoot {
            source_path: path, ..
        } => Path::new(src) == path || here.join(src) == *path,
        _ => false,
    });
    match entry {
        Some((src, dst)) => format!("{src}={dst}"),
        None => maps
            .iter()
            .map(|(src, dst)| format!("{src}={dst}"))
            .collect::<Vec<_>>()
            .join(" --map "),
    }
}

/// The warning for a return pattern that cannot match in the startup folder `startup`,
/// where the command runs and most likely writes: patterns are matched in the task folder
/// (as `--map`'s destinations), so `--startup-dir run --return out.raw` would silently
/// bring nothing back with a glob, or fail every case with a name. `None` when the pattern
/// starts with the startup folder (or a glob that matches it).
fn beside_startup_warning(startup: &Path, pattern: &str) -> Option<String> {
    let folder: Vec<&str> = startup
        .components()
        .filter_map(|part| match part {
            std::path::Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    if folder.is_empty() || startup.is_absolute() {
        return None;
    }
    let mut parts = pattern
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".");
    let inside = folder.iter().all(|name| {
        parts.next().is_some_and(|part| {
            parvm_mirror_fs::Pattern::new(part.as_bytes()).matches(name.as_bytes())
        })
    });
    (!inside).then(|| {
        let folder = folder.join("/");
        format!(
            "warning: --return `{pattern}` is matched in the task folder, not in the startup \
             folder `{folder}` where the command runs; write `{folder}/{pattern}` for a file \
             the command writes there"
        )
    })
}

/// "1 case", "2 cases": a count of cases for a sentence.
fn cases(count: usize) -> String {
    if count == 1 {
        "1 case".to_owned()
    } else {
        format!("{count} cases")
    }
}
/// Whether a case with `outcome` counts as run (in the joblog, against --halt), when
/// SIGINT or SIGTERM came before its result (`interrupted`) or not. A case that fails once
/// the signal came was, as likely as not, ended by it (Ctrl-C reaches the cases'
/// supervisors too, which stop them as parvm does): it counts as stopped, so that
/// --resume runs it again instead of skipping it.
fn ran_to_its_end(outcome: &parvm_vm::JobOutcome, interrupted: bool) -> bool {
    !matches!(outcome, parvm_vm::JobOutcome::NotRun) && (outcome.is_success() || !interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_that_failed_after_the_signal_counts_as_stopped() {
        use parvm_vm::JobOutcome;
        let failed = || JobOutcome::Failed {
            reason: "killed by signal 15".to_owned(),
            status: None,
            after_end: None,
        };
        assert!(ran_to_its_end(&failed(), false));
        assert!(!ran_to_its_end(&failed(), true));
        assert!(!ran_to_its_end(&JobOutcome::NotRun, false));
        let lost = JobOutcome::Lost {
            reason: "the worker died".to_owned(),
        };
        assert!(ran_to_its_end(&lost, false));
        assert!(!ran_to_its_end(&lost, true));
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

    #[test]
    fn return_patterns_beside_the_startup_folder_are_warned_of() {
        for (startup, pattern, warned) in [
            ("cir", "gain.txt", true),
            ("cir", "*.txt", true),
            ("cir", "other/gain.txt", true),
            ("cir", "cir/gain.txt", false),
            ("./cir/", "cir/*.raw", false),
            ("cir", "./cir/x", false),
            ("cir", "c*/x", false),
            ("run/sim", "run/x", true),
            ("run/sim", "run/sim/x", false),
            (".", "x", false),
            ("/abs", "x", false),
        ] {
            let warning = beside_startup_warning(Path::new(startup), pattern);
            assert_eq!(warning.is_some(), warned, "{startup} {pattern}");
        }
        assert_eq!(
            beside_startup_warning(Path::new("run/sim"), "*.raw").unwrap(),
            "warning: --return `*.raw` is matched in the task folder, not in the startup \
             folder `run/sim` where the command runs; write `run/sim/*.raw` for a file the \
             command writes there"
        );
    }

    /// `parvm run` as its own command, to parse its arguments alone.
    #[derive(Debug, clap::Parser)]
    struct RunLine {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Args {
        use clap::Parser;
        RunLine::try_parse_from(std::iter::once("run").chain(line.iter().copied()))
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
            .args
    }

    fn words(args: &Args) -> Vec<&str> {
        args.words.iter().map(|w| w.to_str().unwrap()).collect()
    }

    #[test]
    fn short_options_take_their_value_attached_as_in_gnu_parallel() {
        // `parallel -j4`, `-n1`, `-a file`: the value right after the letter. The command
        // took `-j2` for its own first word and the shell refused it.
        // The last -j wins, as in GNU parallel (an alias `p='parvm run -j4'` used as `p -j2`).
        let args = parse(&["-j2", "-n1", "-a/dev/null", "-P3", "echo", "-n", "{}"]);
        assert_eq!(args.jobs, Some(3));
        assert_eq!(args.copies, Some(1));
        assert_eq!(args.arg_files, [PathBuf::from("/dev/null")]);
        assert_eq!(words(&args), ["echo", "-n", "{}"]);
        let args = parse(&["-j-1", "-kq", "-d,", "sim", "-j2", ":::", "-a", "b"]);
        assert!(args.jobs.is_some() && args.keep_order && args.quote);
        assert_eq!(args.delimiter.as_deref(), Some(","));
        assert_eq!(words(&args), ["sim", "-j2", ":::", "-a", "b"]);
        // Values of their own that start with a hyphen reach the option, which judges them.
        let args = parse(&["-d", "-+", "--colsep", "-+", "--timeout", "-5%", "sim"]);
        assert_eq!(args.delimiter.as_deref(), Some("-+"));
        assert_eq!(args.colsep.as_deref(), Some("-+"));
        assert_eq!(args.timeout.as_deref(), Some("-5%"));
        let args = parse(&["--map", "-in=.", "--return", "-out*", "sim"]);
        assert_eq!(
            (&*args.maps, &*args.returns),
            (&["-in=.".to_owned()][..], &["-out*".to_owned()][..])
        );
        let args = parse(&["--jobs=2", "--", "-cmd", "-x"]);
        assert_eq!(args.jobs, Some(2));
        assert_eq!(words(&args), ["-cmd", "-x"]);
    }

    #[test]
    fn an_unknown_option_before_the_command_is_refused_not_run() {
        use clap::Parser;
        for line in [&["--bogus", "echo"][..], &["-Z", "echo"]] {
            let err = RunLine::try_parse_from(std::iter::once("run").chain(line.iter().copied()))
                .expect_err("refused");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{line:?}"
            );
        }
    }

    #[test]
    fn cases_are_listed_by_number() {
        assert_eq!(case_list(&[]), "no case");
        assert_eq!(case_list(&[7]), "case 7");
        assert_eq!(case_list(&[3, 7, 9]), "cases 3, 7 and 9");
        let many: Vec<usize> = (1..=12).collect();
        assert_eq!(
            case_list(&many),
            "cases 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more"
        );
    }
}
