//! The errors of `parvm run` that stop it before or during a sweep (exit status 255).
//!
//! A case that fails is not an error here: it is counted in the exit status.

use std::path::PathBuf;

/// Why `parvm run` could not run the sweep.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Nothing to run.
    #[error("no command to run; give one after the options, e.g. `parvm run echo {{}} ::: a b c`")]
    NoCommand,
    /// A `:::`-style separator with no values after it.
    #[error("`{separator}` has no values after it; give at least one, e.g. `{separator} a b`")]
    EmptySource {
        /// The separator.
        separator: String,
    },
    /// `:::+` or `::::+` before any other source.
    #[error(
        "`{separator}` links its values to an earlier input source, but there is none; start with `:::` or `::::`"
    )]
    LinkWithoutSource {
        /// The separator.
        separator: String,
    },
    /// Linked sources of different lengths.
    #[error(
        "linked input sources have {left} and {right} values; `:::+` and `::::+` pair values one to one, so give both the same number"
    )]
    LinkLengths {
        /// Values of the earlier source.
        left: usize,
        /// Values of the linked source.
        right: usize,
    },
    /// A replacement string with no input to replace it with.
    #[error(
        "the command uses the replacement string `{found}` but has no inputs; give them with `::: VALUES`, `:::: FILE` or `-a FILE`, or pipe them in one per line, or use `-n N` only with a command without input replacement strings"
    )]
    ReplacementWithoutInputs {
        /// The replacement string.
        found: String,
    },
    /// `{N}` beyond the number of sources.
    #[error(
        "the command uses `{{{index}}}` but {}; number them from {{1}}",
        match sources { 1 => "there is only 1 input source".to_owned(), n => format!("there are only {n} input sources") }
    )]
    NoSuchSource {
        /// The number given.
        index: usize,
        /// How many sources there are.
        sources: usize,
    },
    /// A `--colsep` that is not a regular expression.
    #[error(
        "--colsep `{pattern}` is not a regular expression; give one such as `,` or `\\t` or `\\s+`"
    )]
    Colsep {
        /// What was given.
        pattern: String,
        /// Why it is not one.
        #[source]
        source: regex::Error,
    },
    /// A `--halt` setting that cannot be read.
    #[error(
        "--halt `{given}` is not a halt setting ({reason}); give `never` or WHEN,WHY=COUNT: WHEN `soon` or `now`, WHY `fail`, `success` or `done`, COUNT a number of cases or `P%` of them, e.g. `now,fail=1` or `soon,fail=10%`"
    )]
    Halt {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `-n` together with inputs.
    #[error(
        "-n {copies} runs copies of a command without inputs, but inputs were given too; drop one of them"
    )]
    CopiesWithInputs {
        /// The `-n` value.
        copies: usize,
    },
    /// `-N` with other than one input source, or with columns or a header.
    #[error(
        "-N {per_case} gives each case the next {per_case} values of one input source, so it takes exactly one source (here {sources}) and neither --colsep nor --header; give the values as one source, or drop -N and pair sources with `:::+`"
    )]
    MaxArgsSources {
        /// The `-N` value.
        per_case: usize,
        /// How many sources there are.
        sources: usize,
    },
    /// An args file that cannot be read.
    #[error("cannot read the args file `{}`; check the path (use `-` for standard input)", path.display())]
    ArgsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A value with a NUL byte, which no command argument can hold.
    #[error(
        "input value {value} of source {source_number} holds a NUL byte, which no command argument can carry; remove it from the input"
    )]
    NulInInput {
        /// The value's number in its source, from 1.
        value: usize,
        /// The source's number, from 1.
        source_number: usize,
    },
    /// The command's own words are not UTF-8.
    #[error(
        "the command word `{word}` is not valid UTF-8; only input values may hold other bytes (they are passed through exactly)"
    )]
    CommandNotUtf8 {
        /// The word, lossily shown.
        word: String,
    },
    /// A `--map` entry without `=`.
    #[error(
        "mirror entry `{entry}` is not SRC=DST; give e.g. `--map '*.cir=.'` or `--map models=lib`"
    )]
    MapEntry {
        /// The entry.
        entry: String,
    },
    /// A `--map` entry with a replacement string: the map is the same for every case.
    #[error(
        "--map {entry}: replacement strings do not work in --map, as every case gets the same mirrored inputs; map the folder that holds the cases' files (e.g. `--map nets=.`) and name each case's file in the command with {{}}"
    )]
    MapWithReplacement {
        /// The entry.
        entry: String,
    },
    /// A duration that cannot be read.
    #[error(
        "--timeout `{text}` is not a duration; give e.g. `10s`, `500ms`, `2m` or `1.5` (seconds), or `P%` of the median runtime of successful cases, e.g. `300%`"
    )]
    Duration {
        /// The text given.
        text: String,
    },
    /// A `--return` pattern that leaves the task folder.
    #[error(
        "--return `{pattern}` leaves the task folder; give a pattern relative to it, without `..` or a leading `/`"
    )]
    ReturnEscapes {
        /// The pattern.
        pattern: String,
    },
    /// `{%}` in a `--return` pattern.
    #[error(
        "--return `{pattern}` uses `{{%}}`, but the slot is known only once the case runs; use `{{#}}` (the case number) or an input's replacement string"
    )]
    SlotInReturn {
        /// The pattern.
        pattern: String,
    },
    /// A `--map` source with no glob characters that does not exist.
    #[error(
        "--map {map}: `{source_name}` ({}) {problem}; give a file or folder under the current folder, or make it before the run",
        path.display()
    )]
    MapSourceMissing {
        /// The `--map` value.
        map: String,
        /// Its source as given.
        source_name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What is wrong with it: missing, or a symlink to nothing.
        problem: String,
    },
    /// A `--map` entry the mirror map refuses: its source outside the mirrored roots, a
    /// destination that leaves the task folder.
    #[error("--map {map}: {source}")]
    MapRefused {
        /// The `--map` value (or all of them, when the refusal names none).
        map: String,
        /// Why.
        source: parvm_mirror_fs::Error,
    },
    /// An `--env` variable that cannot be forwarded.
    #[error("--env {name}: {reason}")]
    EnvRefused {
        /// The variable's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A `--header` other than `:`.
    #[error(
        "--header `{given}`: only `--header :` is understood: the first value of each input source (the first line of an args file; with --colsep, each of its columns) names it, for `{{name}}`"
    )]
    Header {
        /// As given.
        given: String,
    },
    /// `--header :` without input sources.
    #[error(
        "--header : names input sources by their first value, but there are none; give values after ::: or an args file whose first line holds the names"
    )]
    HeaderWithoutInputs,
    /// `--header :` with a source that has no value.
    #[error(
        "--header :: input source {source_number} is empty, so it has no first value to name it; give the name first, then the values"
    )]
    HeaderMissing {
        /// The source, from 1.
        source_number: usize,
    },
    /// A `-d` that names no delimiter.
    #[error(
        "-d `{given}` names no delimiter (it is empty, or an escape is cut short); give one or more characters, e.g. `,`, `\\t`, `\\0` (or -0), `\\x1e`"
    )]
    Delimiter {
        /// As given.
        given: String,
    },
    /// `--return` without `--results`.
    #[error(
        "--return needs a folder to bring files back into; give one with --results DIR (a `.tsv` or `.csv` file is a table, for output only)"
    )]
    ReturnWithoutResults,
    /// The results folder cannot be made.
    #[error("cannot make the results folder `{}`; give a folder you can write to with --results", path.display())]
    ResultsDir {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The results table cannot be written.
    #[error("cannot write the results table `{}`; give a file you can write to with --results", path.display())]
    ResultsTable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The results table holds rows of an earlier run.
    #[error("the results table `{}` holds rows of an earlier run; give a new file with --results, so no earlier result is overwritten (--resume adds to it)", path.display())]
    ResultsTableNotEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The results folder already holds something.
    #[error("the results folder `{}` is not empty; give a new or empty folder with --results, so no earlier result is overwritten", path.display())]
    ResultsNotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// A case whose results could not be kept whole under `--results` (reported for that
    /// case; the run goes on and counts it as failed).
    #[error(
        "the results of case {case} could not be kept in `{}`: {reason}; free space there (or check its permissions) and run the case again (it is left out of the joblog, so --resume runs it)",
        dir.display()
    )]
    CaseNotKept {
        /// The case number.
        case: usize,
        /// The results folder.
        dir: PathBuf,
        /// What could not be written, in words.
        reason: String,
    },
    /// The joblog cannot be written.
    #[error("cannot write the joblog `{}`; give a file you can write to with --joblog", path.display())]
    Joblog {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `--resume` with `--joblog -`: nothing to read the cases back from.
    #[error(
        "--resume reads the joblog of an earlier run, and `--joblog -` writes it to standard output, where it cannot be read back; give the file the earlier run wrote"
    )]
    ResumeFromStdout,
    /// Printing a case's output failed.
    #[error("cannot print the output of case {case}; is standard output closed?")]
    Print {
        /// The case number.
        case: usize,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A signal handler cannot be installed.
    #[error(
        "cannot catch SIGINT, SIGTERM and SIGHUP, so a Ctrl-C could not stop the run cleanly; report this"
    )]
    Signal(#[source] std::io::Error),
    /// The parvm runtime failed.
    #[error("parvm could not run the sweep")]
    Vm(#[source] parvm_vm::Error),
    /// Every worker is gone before the sweep ended: they died, or their slots reached the
    /// replacement limit.
    #[error("every worker is gone, so the run stops: {cases}; {resume}")]
    WorkersGone {
        /// The cases left, by number: "case 158 did not finish and cases 159 to 200 did
        /// not start".
        cases: String,
        /// How to run them.
        resume: &'static str,
        /// Why no worker is left.
        #[source]
        source: Box<parvm_vm::Error>,
    },
    /// `-j 0` with the local transport: no worker would run a case.
    #[error(
        "-j 0 starts no worker on this machine, so no case could run; give -j 1 or more, or leave -j out for one per core (-j 0 is for --transport tcp, where workers join with `parvm worker`)"
    )]
    NoLocalWorkers,
    /// The local workers' storage cannot hold a task folder, so every case would fail.
    #[error("no case can run here: {0}")]
    LocalStorage(#[source] parvm_local_storage::Error),
}
