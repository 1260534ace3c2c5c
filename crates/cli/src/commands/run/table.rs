//! `--results FILE.tsv` or `FILE.csv`: one row per case, as GNU parallel writes them: the
//! joblog's nine columns, then the case's input values (`V1`, `V2`, ...), then its whole
//! standard output and error, so a sweep's parameters and what each case printed load as
//! one table (a spreadsheet, `pandas.read_csv`).
//!
//! A field holding the separator, a quote, a line break or a space is quoted (`"`, a quote
//! inside doubled), as GNU parallel does. It must not know how cases run or are printed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::error::RunError;
use super::joblog::{self, Entry};

/// Whether `path` names a results table rather than a results folder.
pub fn is_table(path: &Path) -> bool {
    separator_of(path).is_some()
}

/// The field separator of the table at `path`: by its extension.
fn separator_of(path: &Path) -> Option<u8> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "tsv" => Some(b'\t'),
        "csv" => Some(b','),
        _ => None,
    }
}

/// An open results table.
pub struct Table {
    path: PathBuf,
    file: BufWriter<File>,
    separator: u8,
    /// The value columns (`V1` ...); a case with fewer (the short last case of `-N`) gets
    /// empty ones, so every row has every column.
    values: usize,
}

impl Table {
    /// Opens the table at `path` for a run whose cases have `values` input values each:
    /// a new file gets the header; an existing one is added to when `resuming` (a run
    /// that goes on), and refused otherwise, so no earlier result is overwritten.
    ///
    /// # Errors
    /// It cannot be made or written, or it holds rows of an earlier run.
    pub fn open(path: &Path, values: usize, resuming: bool) -> Result<Table, RunError> {
        let failed = |source| RunError::ResultsTable {
            path: path.to_owned(),
            source,
        };
        let separator = separator_of(path).unwrap_or(b'\t');
        let (file, empty) = joblog::open_to_add(path).map_err(failed)?;
        if !empty && !resuming {
            return Err(RunError::ResultsTableNotEmpty {
                path: path.to_owned(),
            });
        }
        let mut table = Table {
            path: path.to_owned(),
            file: BufWriter::new(file),
            separator,
            values,
        };
        if empty {
            let mut header: Vec<String> = joblog::HEADER.split('\t').map(str::to_owned).collect();
            header.extend((1..=values).map(|n| format!("V{n}")));
            header.extend(["Stdout".to_owned(), "Stderr".to_owned()]);
            let fields: Vec<&[u8]> = header.iter().map(String::as_bytes).collect();
            table.row(&fields)?;
        }
        Ok(table)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the row of one case; flushed at once, so the table is whole when the run is
    /// stopped.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(
        &mut self,
        entry: &Entry<'_>,
        values: &[Vec<u8>],
        stdout: &[u8],
        stderr: &[u8],
    ) -> Result<(), RunError> {
        let start = entry
            .start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let numbers = [
            entry.seq.to_string(),
            entry.host.to_owned(),
            format!("{start:.3}"),
            format!("{:.3}", entry.runtime.as_secs_f64()),
            entry.send.to_string(),
            entry.receive.to_string(),
            entry.exit.to_string(),
            entry.signal.to_string(),
            entry.command.to_owned(),
        ];
        let mut fields: Vec<&[u8]> = numbers.iter().map(String::as_bytes).collect();
        fields.extend(values.iter().map(Vec::as_slice));
        fields.resize(numbers.len() + self.values.max(values.len()), &[]);
        fields.extend([stdout, stderr]);
        self.row(&fields)
    }

    fn row(&mut self, fields: &[&[u8]]) -> Result<(), RunError> {
        let mut line = Vec::new();
        for (at, field) in fields.iter().enumerate() {
            if at > 0 {
                line.push(self.separator);
            }
            quote_into(&mut line, field, self.separator);
        }
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|source| RunError::ResultsTable {
                path: self.path.clone(),
                source,
            })
    }
}

/// Appends `field`, quoted when it holds `separator`, a quote, a line break or a space.
fn quote_into(out: &mut Vec<u8>, field: &[u8], separator: u8) {
    let quoted = field
        .iter()
        .any(|&b| b == separator || matches!(b, b'"' | b'\n' | b'\r' | b' ' | b'\t'));
    if !quoted {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for &b in field {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(field: &str, separator: u8) -> String {
        let mut out = Vec::new();
        quote_into(&mut out, field.as_bytes(), separator);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        assert_eq!(quoted("a", b'\t'), "a");
        assert_eq!(quoted("b c", b'\t'), "\"b c\"");
        assert_eq!(quoted("a,q", b','), "\"a,q\"");
        assert_eq!(quoted("a,q", b'\t'), "a,q");
        assert_eq!(quoted("say \"hi\"\n", b','), "\"say \"\"hi\"\"\n\"");
        assert_eq!(quoted("", b','), "");
    }

    #[test]
    fn tables_are_told_by_their_extension() {
        assert!(is_table(Path::new("out.tsv")) && is_table(Path::new("r/OUT.CSV")));
        assert!(!is_table(Path::new("out")) && !is_table(Path::new("out.txt")));
    }
}
