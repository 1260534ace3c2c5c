//! The input sources of `parvm run` and the cases they make.
//!
//! It owns splitting the words after the options into the command and its sources
//! (`:::`, `:::+`, `::::`, `::::+`, `-a`), reading args files, and combining sources into
//! cases; it must not know how a command line is built or run.

use std::ffi::OsString;
use std::io::Read;
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
    Ok(Split { command, given })
}

impl Split {
    /// Whether any input source was given.
    pub fn has_inputs(&self) -> bool {
        !self.given.is_empty()
    }

    /// Reads the args files (one value per line; `-` is standard input, read once) and
    /// returns the sources.
    ///
    /// # Errors
    /// An args file that cannot be read, or a value holding a NUL byte.
    pub fn read(self) -> Result<Vec<Source>, RunError> {
        let mut stdin: Option<Vec<Vec<u8>>> = None;
        let mut sources = Vec::with_capacity(self.given.len());
        for (given, linked) in self.given {
            let values = match given {
                Given::Values(values) => values,
                Given::File(path) if path == Path::new("-") => match &stdin {
                    Some(_) => Vec::new(),
                    None => {
                        let mut bytes = Vec::new();
                        std::io::stdin()
                            .lock()
                            .read_to_end(&mut bytes)
                            .map_err(|source| RunError::ArgsFile {
                                path: path.clone(),
                                source,
                            })?;
                        let lines = lines(&bytes);
                        stdin = Some(lines.clone());
                        lines
                    }
                },
                Given::File(path) => {
                    let bytes = std::fs::read(&path)
                        .map_err(|source| RunError::ArgsFile { path, source })?;
                    lines(&bytes)
                }
            };
            let number = sources.len() + 1;
            if let Some(at) = values.iter().position(|value| value.contains(&0)) {
                return Err(RunError::NulInInput {
                    value: at + 1,
                    source_number: number,
                });
            }
            sources.push(Source { values, linked });
        }
        Ok(sources)
    }
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

/// The lines of `bytes`, without their `\n`; a last line without one counts too.
fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// Every case of `sources`, each the list of its values (one per source): all
/// combinations, the last source changing fastest as in GNU parallel; a linked source
/// moves together with the one before it.
///
/// # Errors
/// Linked sources of different lengths.
pub fn cases(sources: &[Source]) -> Result<Vec<Vec<Vec<u8>>>, RunError> {
    // Groups of sources linked together: (first source index, count, values per source).
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
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let total: usize = groups.iter().map(|g| g.2).product();
    let mut out = Vec::with_capacity(total);
    let mut position = vec![0usize; groups.len()];
    for _ in 0..total {
        let mut case = Vec::with_capacity(sources.len());
        for (group, &at) in groups.iter().zip(&position) {
            for source in &sources[group.0..group.0 + group.1] {
                case.push(source.values[at].clone());
            }
        }
        out.push(case);
        for (slot, group) in position.iter_mut().zip(&groups).rev() {
            *slot += 1;
            if *slot < group.2 {
                break;
            }
            *slot = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
            let split = split(&words(line), &[]).unwrap();
            let sources = split.read().unwrap();
            assert_eq!(flat(&cases(&sources).unwrap()), expected, "{line}");
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
        let sources = split(&words("echo ::: a b :::+ 1"), &[])
            .unwrap()
            .read()
            .unwrap();
        assert!(cases(&sources).unwrap_err().to_string().contains("2 and 1"));
    }

    #[test]
    fn colsep_makes_linked_columns() {
        let sources = split(&words("echo ::: a,1 b,2,x ::: p q"), &[])
            .unwrap()
            .read()
            .unwrap();
        let colsep = regex::bytes::Regex::new(",").unwrap();
        let sources = columns(sources, &colsep);
        assert_eq!(sources.len(), 4);
        assert_eq!(
            flat(&cases(&sources).unwrap()),
            ["a,1,,p", "a,1,,q", "b,2,x,p", "b,2,x,q"]
        );
    }

    #[test]
    fn lines_keep_empty_values_but_not_the_last_newline() {
        assert_eq!(lines(b""), Vec::<Vec<u8>>::new());
        assert_eq!(
            lines(b"a\n\nb\n"),
            vec![b"a".to_vec(), vec![], b"b".to_vec()]
        );
        assert_eq!(lines(b"a\nb"), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
