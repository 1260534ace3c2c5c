//! The input sources of `parvm run` and the cases they make.
//!
//! It owns splitting the words after the options into the command and its sources
//! (`:::`, `:::+`, `::::`, `::::+`, `-a`), reading args files, and combining sources into
//! cases; it must not know how a command line is built or run.

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::error::RunError;

/// One input source: its values, and whether it is linked to the source before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The values, in order.
    pub values: Vec<Vec<u8>>,
    /// `:::+` / `::::+`: paired one to one with the source before it.
    pub linked: bool,
}

/// Where a source's values come from, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Given {
    Values(Vec<Vec<u8>>),
    File(PathBuf),
}

/// The command's words and its input sources, as given.
#[derive(Debug)]
pub struct Split {
    /// The command and its arguments, before the first separator.
    pub command: Vec<OsString>,
    given: Vec<(Given, bool)>,
    /// What ends each value of an args file or standard input (`\n` unless `-d`/`-0`).
    delimiter: Vec<u8>,
}

/// Splits the words after the options at the separators; `-a` files come first, as
/// sources of their own.
///
/// # Errors
/// A separator without values, or a linked source with nothing to link to.
pub fn split(words: &[OsString], arg_files: &[PathBuf]) -> Result<Split, RunError> {
    let mut given: Vec<(Given, bool)> = arg_files
        .iter()
        .map(|path| (Given::File(path.clone()), false))
        .collect();
    let mut command = Vec::new();
    let mut current: Option<(String, bool, bool, Vec<OsString>)> = None;
    let close = |current: Option<(String, bool, bool, Vec<OsString>)>,
                 given: &mut Vec<(Given, bool)>|
     -> Result<(), RunError> {
        let Some((separator, files, linked, values)) = current else {
            return Ok(());
        };
        if values.is_empty() {
            return Err(RunError::EmptySource { separator });
        }
        if linked && given.is_empty() {
            return Err(RunError::LinkWithoutSource { separator });
        }
        if files {
            for path in values {
                given.push((Given::File(PathBuf::from(path)), linked));
            }
        } else {
            let values = values.into_iter().map(OsString::into_vec).collect();
            given.push((Given::Values(values), linked));
        }
        Ok(())
    };
    for word in words {
        let separator = match word.as_bytes() {
            b":::" => Some((false, false)),
            b":::+" => Some((false, true)),
            b"::::" => Some((true, false)),
            b"::::+" => Some((true, true)),
            _ => None,
        };
        match (separator, &mut current) {
            (Some((files, linked)), _) => {
                close(current.take(), &mut given)?;
                current = Some((
                    word.to_string_lossy().into_owned(),
                    files,
                    linked,
                    Vec::new(),
                ));
            }
            (None, Some((_, _, _, values))) => values.push(word.clone()),
            (None, None) => command.push(word.clone()),
        }
    }
    close(current, &mut given)?;
    if command.is_empty() {
        return Err(RunError::NoCommand);
    }
    Ok(Split {
        command,
        given,
        delimiter: vec![b'\n'],
    })
}

/// The bytes `-d DELIM` names: characters as given, with C-style escapes (`\n`, `\t`,
/// `\r`, `\0`, `\\`), octal (`\NNN`) and hexadecimal (`\xHH`) ones, as GNU parallel
/// reads them.
///
/// # Errors
/// Nothing is left (an empty DELIM), or `\x` is not followed by a hexadecimal digit.
pub fn parse_delimiter(given: &str) -> Result<Vec<u8>, RunError> {
    let refuse = || RunError::Delimiter {
        given: given.to_owned(),
    };
    let bytes = given.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes[i + 1];
        i += 2;
        let digits = |radix: u32, most: usize, from: usize| {
            bytes[from..]
                .iter()
                .take(most)
                .take_while(|b| char::from(**b).is_digit(radix))
                .count()
        };
        match escape {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let count = digits(16, 2, i);
                let text = std::str::from_utf8(&bytes[i..i + count]).map_err(|_| refuse())?;
                out.push(u8::from_str_radix(text, 16).map_err(|_| refuse())?);
                i += count;
            }
            b'0'..=b'7' => {
                let count = 1 + digits(8, 2, i);
                let text =
                    std::str::from_utf8(&bytes[i - 1..i - 1 + count]).map_err(|_| refuse())?;
                let value = u16::from_str_radix(text, 8).map_err(|_| refuse())?;
                out.push(u8::try_from(value).map_err(|_| refuse())?);
                i += count - 1;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    if out.is_empty() {
        return Err(refuse());
    }
    Ok(out)
}

impl Split {
    /// Whether any input source was given.
    pub fn has_inputs(&self) -> bool {
        !self.given.is_empty()
    }

    /// Values of args files and standard input end with `delimiter` instead of `\n`.
    pub fn delimit_with(&mut self, delimiter: Vec<u8>) {
        self.delimiter = delimiter;
    }

    /// Takes standard input as the one input source (`-a -`).
    pub fn read_stdin(&mut self) {
        self.given.push((Given::File(PathBuf::from("-")), false));
    }

    /// Opens the sources. With `stream_first`, a first source that is an args file (or
    /// standard input) and not linked to the next one is read line by line as cases are
    /// made, so a long one starts at once in bounded memory; every other source is read
    /// whole (its values come round again for every value of the sources before it).
    /// Standard input is read once: a second `-` is empty. A streamed source that waits
    /// for its next line (a pipe, a terminal) ends as soon as `stop` is set (by the signal
    /// that stops the run), not when the line comes.
    ///
    /// # Errors
    /// An args file that cannot be opened or read, or a value holding a NUL byte.
    pub fn open(self, stream_first: bool, stop: &Arc<AtomicBool>) -> Result<Inputs, RunError> {
        let mut stdin_used = false;
        let mut given = self.given.into_iter().peekable();
        let mut streamed = None;
        if stream_first
            && let Some((Given::File(_), _)) = given.peek()
            && let Some((Given::File(path), _)) = given.next()
        {
            let next_linked = given.peek().is_some_and(|(_, linked)| *linked);
            let mut first = LineSource::open(path, &self.delimiter, &mut stdin_used)?;
            first.stop_with(stop);
            if next_linked {
                // Linked sources move together: read it whole like them.
                let values = first.read_all()?;
                return Self::hold(Some(values), 0, given, &self.delimiter, stdin_used);
            }
            streamed = Some(first);
        }
        let skip = usize::from(streamed.is_some());
        let mut inputs = Self::hold(None, skip, given, &self.delimiter, stdin_used)?;
        inputs.streamed = streamed;
        Ok(inputs)
    }

    /// Reads the sources `given` into memory, after `first` (the values of the first
    /// source, when read already); `skip` sources come before them.
    fn hold(
        first: Option<Vec<Vec<u8>>>,
        skip: usize,
        given: impl Iterator<Item = (Given, bool)>,
        delimiter: &[u8],
        mut stdin_used: bool,
    ) -> Result<Inputs, RunError> {
        let mut held: Vec<Source> = first
            .into_iter()
            .map(|values| Source {
                values,
                linked: false,
            })
            .collect();
        for (given, linked) in given {
            let values = match given {
                Given::Values(values) => values,
                Given::File(path) => {
                    LineSource::open(path, delimiter, &mut stdin_used)?.read_all()?
                }
            };
            let number = skip + held.len() + 1;
            if let Some(at) = values.iter().position(|value| value.contains(&0)) {
                return Err(RunError::NulInInput {
                    value: at + 1,
                    source_number: number,
                });
            }
            held.push(Source { values, linked });
        }
        Ok(Inputs {
            streamed: None,
            held,
        })
    }
}

/// Whether standard input is a pipe or a file: values piped or redirected in, which
/// GNU parallel takes as its cases when no input source is given. A terminal, `/dev/null`
/// or a socket (what ssh, cron and batch systems give a command) holds none.
pub fn stdin_is_piped() -> bool {
    use std::os::unix::fs::FileTypeExt;
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|stdin| stdin.metadata())
        .is_ok_and(|meta| meta.file_type().is_fifo() || meta.is_file())
}

/// Said when the cases' values are to be typed: standard input is a terminal.
pub const FROM_THE_TERMINAL: &str = "parvm run: reading the values of the cases from the terminal, one per line; end with Ctrl-D (or give them on the command line: parvm run CMD ::: a b c)";

/// Said under mpirun when the cases' values are read from standard input because no
/// input source was given: mpirun passes its own standard input on to rank 0.
pub const FROM_MPIRUN: &str = "parvm run: no input source given, so the values of the cases are read from the standard input mpirun passes on, one per line (end with Ctrl-D at a prompt); give `-n 1` to run the command once, or the values after :::";

/// The warning for `-n N` while values are piped in: they are not read.
pub fn copies_leave_stdin_unread(copies: usize) -> String {
    format!(
        "parvm run: -n {copies} runs the command {copies} time(s) without inputs, so what is piped in is not read; to run a case per value piped in, drop -n (GNU parallel's -n, N values per case, is -N here)"
    )
}

/// An args file (or standard input) read one line at a time.
pub struct LineSource {
    path: PathBuf,
    /// `None` once it ended.
    reader: Option<io::BufReader<Input>>,
    /// What ends a value: `\n`, or what `-d`/`-0` gave.
    delimiter: Vec<u8>,
    /// Lines read so far.
    lines: usize,
}

/// How often (ms) a read that waits for input looks whether the run stops.
const STOP_POLL_MS: u16 = 50;

/// The file of an input source (for `-`, standard input's descriptor), whose reads end
/// once `stop` is set while they wait for bytes.
struct Input {
    file: std::fs::File,
    stop: Option<Arc<AtomicBool>>,
}

/// The error of a read ended by [`Input::stop`].
#[derive(Debug, thiserror::Error)]
#[error("the run stops")]
struct Stopped;

impl io::Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(stop) = &self.stop {
            loop {
                if stop.load(Ordering::SeqCst) {
                    return Err(io::Error::other(Stopped));
                }
                let mut ready = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
                match poll(&mut ready, PollTimeout::from(STOP_POLL_MS)) {
                    Ok(0) | Err(Errno::EINTR) => {}
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.file.read(buf)
    }
}

impl LineSource {
    /// Opens `path` (`-`: standard input, or nothing when it was read already).
    fn open(
        path: PathBuf,
        delimiter: &[u8],
        stdin_used: &mut bool,
    ) -> Result<LineSource, RunError> {
        let fail = |source| RunError::ArgsFile {
            path: path.clone(),
            source,
        };
        let file = if path == Path::new("-") {
            let first = !std::mem::replace(stdin_used, true);
            if first && io::stdin().is_terminal() {
                // Without it, a forgotten `:::` looks like a hang.
                crate::console::say(FROM_THE_TERMINAL);
            }
            // The same open file as standard input, which nothing else reads.
            first
                .then(|| {
                    io::stdin()
                        .as_fd()
                        .try_clone_to_owned()
                        .map(std::fs::File::from)
                })
                .transpose()
                .map_err(fail)?
        } else {
            Some(std::fs::File::open(&path).map_err(fail)?)
        };
        let reader = file.map(|file| io::BufReader::new(Input { file, stop: None }));
        Ok(LineSource {
            path,
            reader,
            delimiter: delimiter.to_vec(),
            lines: 0,
        })
    }

    /// From now on a wait for the next line ends the source once `stop` is set. A regular
    /// file never makes a read wait, so it is read as it is.
    fn stop_with(&mut self, stop: &Arc<AtomicBool>) {
        if let Some(input) = self.reader.as_mut().map(io::BufReader::get_mut)
            && !input.file.metadata().is_ok_and(|meta| meta.is_file())
        {
            input.stop = Some(Arc::clone(stop));
        }
    }

    /// The next value without its delimiter (a last value without one counts too).
    ///
    /// # Errors
    /// The file cannot be read, or the value holds a NUL byte.
    fn next_value(&mut self) -> Option<Result<Vec<u8>, RunError>> {
        let reader = self.reader.as_mut()?;
        let mut line = Vec::new();
        match read_value(reader, &self.delimiter, &mut line) {
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<Stopped>()) => {
                // The run stops: the input ends here, as if it had ended.
                self.reader = None;
                None
            }
            Ok(false) => {
                self.reader = None;
                None
            }
            Ok(true) => {
                self.lines += 1;
                if line.contains(&0) {
                    self.reader = None;
                    return Some(Err(RunError::NulInInput {
                        value: self.lines,
                        source_number: 1,
                    }));
                }
                Some(Ok(line))
            }
            Err(source) => {
                self.reader = None;
                Some(Err(RunError::ArgsFile {
                    path: self.path.clone(),
                    source,
                }))
            }
        }
    }

    fn read_all(&mut self) -> Result<Vec<Vec<u8>>, RunError> {
        let mut values = Vec::new();
        while let Some(value) = self.next_value() {
            values.push(value?);
        }
        Ok(values)
    }
}

/// Reads the next value of `reader` into `value`, without its `delimiter`; `false` at the
/// end of the input (nothing read). A last value without a delimiter counts too.
fn read_value(
    reader: &mut impl BufRead,
    delimiter: &[u8],
    value: &mut Vec<u8>,
) -> io::Result<bool> {
    let Some(&last) = delimiter.last() else {
        return Ok(false);
    };
    loop {
        if reader.read_until(last, value)? == 0 {
            return Ok(!value.is_empty());
        }
        if value.ends_with(delimiter) {
            value.truncate(value.len() - delimiter.len());
            return Ok(true);
        }
        if value.last() != Some(&last) {
            // The input ended inside a value.
            return Ok(true);
        }
    }
}

/// The opened input sources: at most one read as cases are made, the others in memory.
pub struct Inputs {
    /// The first source, read line by line.
    streamed: Option<LineSource>,
    /// The sources in memory (after the streamed one, if any).
    held: Vec<Source>,
}

impl Inputs {
    /// How many sources there are.
    pub fn count(&self) -> usize {
        self.held.len() + usize::from(self.streamed.is_some())
    }

    /// `--colsep`: each source becomes one source per column (see [`columns`]); only for
    /// sources in memory (open them without streaming).
    #[must_use]
    pub fn columns(mut self, colsep: &regex::bytes::Regex) -> Inputs {
        self.held = columns(self.held, colsep);
        self
    }

    /// `--header :`: takes the first value of each source as its name instead of a case's
    /// value; returns the names in source order (with `--colsep`, one per column).
    ///
    /// # Errors
    /// A source without a value to name it, or a first line that cannot be read.
    pub fn take_header(&mut self) -> Result<Vec<String>, RunError> {
        let mut names = Vec::new();
        if let Some(streamed) = &mut self.streamed {
            let first = streamed
                .next_value()
                .ok_or(RunError::HeaderMissing { source_number: 1 })??;
            names.push(String::from_utf8_lossy(&first).into_owned());
        }
        let before = names.len();
        for (at, source) in self.held.iter_mut().enumerate() {
            if source.values.is_empty() {
                return Err(RunError::HeaderMissing {
                    source_number: before + at + 1,
                });
            }
            names.push(String::from_utf8_lossy(&source.values.remove(0)).into_owned());
        }
        Ok(names)
    }

    /// The number of cases, when every source is in memory (`None` when one is read as
    /// cases are made, or the count overflows).
    pub fn total(&self) -> Option<usize> {
        if self.streamed.is_some() {
            return None;
        }
        groups(&self.held)
            .ok()?
            .iter()
            .try_fold(1usize, |total, group| total.checked_mul(group.2))
    }

    /// The cases, made one at a time as they are asked for.
    ///
    /// # Errors
    /// Linked sources of different lengths.
    pub fn cases(self) -> Result<Cases, RunError> {
        let groups = groups(&self.held)?;
        let empty = groups.iter().any(|group| group.2 == 0)
            || (groups.is_empty() && self.streamed.is_none());
        Ok(Cases {
            position: vec![0; groups.len()],
            groups,
            held: self.held,
            streamed: self.streamed,
            current: None,
            done: empty,
        })
    }
}

/// Every case of the inputs, each the list of its values (one per source): all
/// combinations, the last source changing fastest as in GNU parallel; a linked source
/// moves together with the one before it. Made one at a time, so 10^9 combinations cost
/// the memory of one.
pub struct Cases {
    streamed: Option<LineSource>,
    /// The streamed source's value for the combinations being made.
    current: Option<Vec<u8>>,
    held: Vec<Source>,
    /// Groups of held sources linked together: (first source, count, values each).
    groups: Vec<(usize, usize, usize)>,
    /// The value index of each group in the next case.
    position: Vec<usize>,
    done: bool,
}

impl Iterator for Cases {
    type Item = Result<Vec<Vec<u8>>, RunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut case = Vec::with_capacity(self.held.len() + 1);
        if let Some(streamed) = &mut self.streamed {
            if self.current.is_none() {
                match streamed.next_value() {
                    Some(Ok(value)) => self.current = Some(value),
                    Some(Err(error)) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                    None => {
                        self.done = true;
                        return None;
                    }
                }
            }
            case.extend(self.current.clone());
        }
        for (group, &at) in self.groups.iter().zip(&self.position) {
            for source in &self.held[group.0..group.0 + group.1] {
                case.push(source.values[at].clone());
            }
        }
        // The odometer: the last group moves fastest; a full turn moves to the next
        // value of the streamed source, or ends.
        let mut turned = true;
        for (slot, group) in self.position.iter_mut().zip(&self.groups).rev() {
            *slot += 1;
            if *slot < group.2 {
                turned = false;
                break;
            }
            *slot = 0;
        }
        if turned {
            if self.streamed.is_some() {
                self.current = None;
            } else {
                self.done = true;
            }
        }
        Some(Ok(case))
    }
}

/// `-N n`: every `n` cases of `cases` (each of one value: one source) make one case of
/// their values, as GNU parallel's `-N`; the last takes what is left, so it may be shorter
/// (`{3}` of a case of two values is empty).
pub fn in_groups(
    mut cases: Cases,
    n: usize,
) -> impl Iterator<Item = Result<Vec<Vec<u8>>, RunError>> {
    std::iter::from_fn(move || {
        let mut group = Vec::with_capacity(n);
        while group.len() < n {
            match cases.next() {
                Some(Ok(mut case)) => group.append(&mut case),
                Some(Err(error)) => return Some(Err(error)),
                // The source ended inside the group: the short last case.
                None => break,
            }
        }
        (!group.is_empty()).then_some(Ok(group))
    })
}

/// `--colsep`: each source becomes one source per column, its values split where
/// `colsep` matches (a missing column is empty); the columns of a source move together.
#[must_use]
pub fn columns(sources: Vec<Source>, colsep: &regex::bytes::Regex) -> Vec<Source> {
    let mut out = Vec::new();
    for source in sources {
        let split: Vec<Vec<&[u8]>> = source
            .values
            .iter()
            .map(|value| colsep.split(value).collect())
            .collect();
        let count = split.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for column in 0..count {
            out.push(Source {
                values: split
                    .iter()
                    .map(|parts| {
                        parts
                            .get(column)
                            .map_or_else(Vec::new, |part| part.to_vec())
                    })
                    .collect(),
                linked: column > 0 || source.linked,
            });
        }
    }
    out
}

/// The groups of sources linked together: (first source index, count, values per
/// source).
///
/// # Errors
/// Linked sources of different lengths.
fn groups(sources: &[Source]) -> Result<Vec<(usize, usize, usize)>, RunError> {
    let mut groups: Vec<(usize, usize, usize)> = Vec::new();
    for (at, source) in sources.iter().enumerate() {
        match groups.last_mut() {
            Some(group) if source.linked => {
                if group.2 != source.values.len() {
                    return Err(RunError::LinkLengths {
                        left: group.2,
                        right: source.values.len(),
                    });
                }
                group.1 += 1;
            }
            _ => groups.push((at, 1, source.values.len())),
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn words(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    fn flat(cases: &[Vec<Vec<u8>>]) -> Vec<String> {
        cases
            .iter()
            .map(|case| {
                case.iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn sources_combine_and_link() {
        let table = [
            ("echo ::: a b ::: 1 2", vec!["a,1", "a,2", "b,1", "b,2"]),
            ("echo ::: a b :::+ 1 2", vec!["a,1", "b,2"]),
            (
                "echo ::: a b :::+ 1 2 ::: x y",
                vec!["a,1,x", "a,1,y", "b,2,x", "b,2,y"],
            ),
            ("echo {} ::: solo", vec!["solo"]),
        ];
        for (line, expected) in table {
            let inputs = split(&words(line), &[])
                .unwrap()
                .open(true, &Arc::default())
                .unwrap();
            assert_eq!(inputs.total(), Some(expected.len()));
            assert_eq!(flat(&all(inputs)), expected, "{line}");
        }
    }

    #[test]
    fn bad_splits_are_refused() {
        let table = [
            ("::: a b", "no command"),
            ("echo :::", "no values"),
            ("echo :::+ a", "there is none"),
        ];
        for (line, expected) in table {
            let error = split(&words(line), &[]).unwrap_err().to_string();
            assert!(error.contains(expected), "{line}: {error}");
        }
        let inputs = split(&words("echo ::: a b :::+ 1"), &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert!(
            inputs
                .cases()
                .err()
                .unwrap()
                .to_string()
                .contains("2 and 1")
        );
    }

    #[test]
    fn colsep_makes_linked_columns() {
        let inputs = split(&words("echo ::: a,1 b,2,x ::: p q"), &[])
            .unwrap()
            .open(false, &Arc::default())
            .unwrap();
        let colsep = regex::bytes::Regex::new(",").unwrap();
        let inputs = inputs.columns(&colsep);
        assert_eq!(inputs.count(), 4);
        assert_eq!(
            flat(&all(inputs)),
            ["a,1,,p", "a,1,,q", "b,2,x,p", "b,2,x,q"]
        );
    }

    fn all(inputs: Inputs) -> Vec<Vec<Vec<u8>>> {
        inputs.cases().unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_first_args_file_is_streamed_the_others_held() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.into_os_string()
        };
        let (first, second) = (file("first", "a\n\nb"), file("second", "1\n2\n"));
        let mut line = words("echo ::::");
        line.extend([
            first.clone(),
            ":::".into(),
            "x".into(),
            "::::".into(),
            second,
        ]);
        let inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert_eq!((inputs.count(), inputs.total()), (3, None));
        assert_eq!(
            flat(&all(inputs)),
            ["a,x,1", "a,x,2", ",x,1", ",x,2", "b,x,1", "b,x,2"]
        );
        // Linked to the next source: read whole, so the lengths are checked first.
        let mut line = words("echo ::::");
        line.extend([first.clone(), ":::+".into(), "p".into()]);
        let inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert!(
            inputs
                .cases()
                .err()
                .unwrap()
                .to_string()
                .contains("3 and 1")
        );
        // An empty file makes no case; a NUL byte is an error at its line.
        let mut line = words("echo ::::");
        line.push(file("empty", ""));
        assert!(
            all(split(&line, &[])
                .unwrap()
                .open(true, &Arc::default())
                .unwrap())
            .is_empty()
        );
        let mut line = words("echo ::::");
        line.push(file("nul", "ok\nbad\0\n"));
        let mut cases = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap()
            .cases()
            .unwrap();
        assert!(cases.next().unwrap().is_ok());
        let error = cases.next().unwrap().unwrap_err().to_string();
        assert!(error.contains("input value 2 of source 1"), "{error}");
        assert!(cases.next().is_none());
    }

    #[test]
    fn a_billion_combinations_start_at_once() {
        let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let mut line = vec![OsString::from("echo")];
        for _ in 0..3 {
            line.push(":::".into());
            line.extend(values.iter().map(OsString::from));
        }
        let inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert_eq!(inputs.total(), Some(1_000_000_000));
        let mut cases = inputs.cases().unwrap();
        assert_eq!(flat(&[cases.next().unwrap().unwrap()]), ["0,0,0"]);
        assert_eq!(flat(&[cases.nth(1000).unwrap().unwrap()]), ["0,1,1"]);
    }

    #[test]
    fn delimiters_read_as_gnu_parallel_reads_them() {
        for (given, bytes) in [
            (",", &b","[..]),
            ("::", b"::"),
            ("\\n", b"\n"),
            ("\\t", b"\t"),
            ("\\0", b"\0"),
            ("\\x1e", b"\x1e"),
            ("\\x1E;", b"\x1e;"),
            ("\\036", b"\x1e"),
            ("\\012x", b"\nx"),
            ("\\\\", b"\\"),
            ("\\q", b"\\q"),
            ("a\\", b"a\\"),
        ] {
            assert_eq!(parse_delimiter(given).unwrap(), bytes, "{given}");
        }
        for given in ["", "\\x", "\\xg", "\\777"] {
            assert!(parse_delimiter(given).is_err(), "{given}");
        }
    }

    /// The values `read_value` reads from `input` split by `delimiter`.
    fn values_of(input: &[u8], delimiter: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = io::BufReader::with_capacity(3, input);
        let mut values = Vec::new();
        let mut value = Vec::new();
        while read_value(&mut reader, delimiter, &mut value).unwrap() {
            values.push(std::mem::take(&mut value));
        }
        values
    }

    #[test]
    fn a_last_value_needs_no_delimiter_and_an_empty_one_counts() {
        assert_eq!(values_of(b"a\0b", b"\0"), [&b"a"[..], b"b"]);
        assert_eq!(values_of(b"a\0\0b\0", b"\0"), [&b"a"[..], b"", b"b"]);
        assert_eq!(values_of(b"a:b::c", b"::"), [&b"a:b"[..], b"c"]);
        assert_eq!(values_of(b"", b"\n"), Vec::<Vec<u8>>::new());
    }

    proptest! {
        #[test]
        fn values_joined_by_a_delimiter_split_back(
            values in proptest::collection::vec(proptest::collection::vec(b'a'..=b'z', 0..12), 1..20),
            delimiter in proptest::collection::vec(b'0'..=b'9', 1..4),
        ) {
            let mut input = values.join(&delimiter[..]);
            // A last value may end with the delimiter or not; the values are the same.
            let last_empty = values.last().is_some_and(Vec::is_empty);
            if last_empty {
                input.extend_from_slice(&delimiter);
            }
            prop_assert_eq!(values_of(&input, &delimiter), values);
        }

        #[test]
        fn values_in_groups_are_the_values_in_order_all_full_but_the_last(
            count in 1usize..40,
            n in 1usize..7,
        ) {
            let mut line = vec![OsString::from("echo"), OsString::from(":::")];
            line.extend((0..count).map(|i| OsString::from(i.to_string())));
            let stop = Arc::new(AtomicBool::new(false));
            let cases = split(&line, &[]).unwrap().open(false, &stop).unwrap().cases().unwrap();
            let groups: Vec<Vec<Vec<u8>>> = in_groups(cases, n).map(Result::unwrap).collect();
            prop_assert_eq!(groups.len(), count.div_ceil(n));
            let (last, full) = groups.split_last().unwrap();
            prop_assert!(full.iter().all(|group| group.len() == n));
            prop_assert!(!last.is_empty() && last.len() <= n);
            let flat: Vec<Vec<u8>> = groups.concat();
            let expected: Vec<Vec<u8>> = (0..count).map(|i| i.to_string().into_bytes()).collect();
            prop_assert_eq!(flat, expected);
        }
    }

    #[test]
    fn a_header_takes_each_sources_first_value_as_its_name() {
        let line: Vec<OsString> = ["echo", ":::", "a", "1", "2", ":::+", "b", "x", "y"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let mut inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert_eq!(inputs.take_header().unwrap(), ["a", "b"]);
        assert_eq!(inputs.total(), Some(2));
        assert_eq!(flat(&all(inputs)), ["1,x", "2,y"]);
        // A streamed args file: its first line.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list");
        std::fs::write(&file, "name\nu\nv\n").unwrap();
        let line = [OsString::from("echo"), "::::".into(), file.clone().into()];
        let mut inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        assert_eq!(inputs.take_header().unwrap(), ["name"]);
        assert_eq!(flat(&all(inputs)), ["u", "v"]);
        std::fs::write(&file, "").unwrap();
        let mut inputs = split(&line, &[])
            .unwrap()
            .open(true, &Arc::default())
            .unwrap();
        let error = inputs.take_header().unwrap_err().to_string();
        assert!(error.contains("input source 1 is empty"), "{error}");
    }
}
