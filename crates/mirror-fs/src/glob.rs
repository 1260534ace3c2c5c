//! Shell-style globbing over raw bytes, so file names that are not UTF-8 still match.
//!
//! The rules are those of Python's `glob` module: `*` matches any run of characters, `?` one
//! character, `[abc]` and `[a-z]` one character of a set, `[!x]` one character outside it.
//! Wild characters never cross `/`, and a name starting with `.` is only matched by a pattern
//! that starts with a literal `.`. A `[` without a closing `]` is an ordinary character.
//! Valid UTF-8 sequences count as one character each; every other byte counts as one.
//!
//! [`expand`] reads only the folders of components that hold wild characters; literal
//! components are joined without looking. Results are sorted.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsops::Sig;

/// True when `bytes` holds a glob character (`*`, `?` or `[`).
pub fn has_glob(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// True when the path pattern `bytes` names at most one path: no `*` or `?`, and every
/// class one character that is not negated, as a character is escaped in it (`[*]` is
/// `*` itself). Such a pattern that matches nothing names something missing, where a glob
/// may match nothing.
pub fn is_literal(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'/')
        .all(|component| Pattern::new(component).is_literal())
}

/// True when any component of `path` holds a glob character.
pub fn path_has_glob(path: &Path) -> bool {
    has_glob(path.as_os_str().as_bytes())
}

/// Offset for bytes that are not part of valid UTF-8, so they never equal a code point.
const RAW_BYTE: u32 = 0x11_0000;

/// Splits bytes into characters: code points for valid UTF-8, `RAW_BYTE + b` for other bytes.
fn units(bytes: &[u8]) -> Vec<u32> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().chars().map(u32::from));
        out.extend(chunk.invalid().iter().map(|&b| RAW_BYTE + u32::from(b)));
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Lit(u32),
    Class {
        negated: bool,
        ranges: Vec<(u32, u32)>,
    },
}

impl Token {
    fn matches_one(&self, c: u32) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Lit(l) => *l == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A compiled pattern for one path component (a file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compiles the pattern of one file name.
    pub fn new(pattern: &[u8]) -> Pattern {
        let chars = units(pattern);
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == u32::from('*') {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                i += 1;
            } else if c == u32::from('?') {
                tokens.push(Token::Any);
                i += 1;
            } else if c == u32::from('[') {
                match parse_class(&chars[i + 1..]) {
                    Some((token, used)) => {
                        tokens.push(token);
                        i += 1 + used;
                    }
                    None => {
                        tokens.push(Token::Lit(c));
                        i += 1;
                    }
                }
            } else {
                tokens.push(Token::Lit(c));
                i += 1;
            }
        }
        Pattern { tokens }
    }

    /// True when it matches one name at most (see [`is_literal`]).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|token| match token {
            Token::Lit(_) => true,
            Token::Class { negated, ranges } => {
                !negated && matches!(ranges[..], [(lo, hi)] if lo == hi)
            }
            Token::Star | Token::Any => false,
        })
    }

    /// True when the file name `name` matches this pattern.
    pub fn matches(&self, name: &[u8]) -> bool {
        if name.first() == Some(&b'.') && self.tokens.first() != Some(&Token::Lit(u32::from('.'))) {
            return false;
        }
        let name = units(name);
        let tokens = &self.tokens;
        // Classic wildcard matching with backtracking to the most recent star: linear for
        // patterns with one star, and never exponential.
        let (mut t, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, n));
                    t += 1;
                }
                Some(token) if token.matches_one(name[n]) => {
                    t += 1;
                    n += 1;
                }
                _ => match star {
                    Some((st, sn)) => {
                        t = st + 1;
                        n = sn + 1;
                        star = Some((st, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        tokens[t..].iter().all(|token| *token == Token::Star)
    }
}

/// Parses a class after its `[`; returns the token and the characters used, `]` included.
fn parse_class(chars: &[u32]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = chars.first() == Some(&u32::from('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let start = i;
    loop {
        let c = *chars.get(i)?;
        if c == u32::from(']') && i > start {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        let dash = chars.get(i + 1) == Some(&u32::from('-'));
        match chars.get(i + 2) {
            Some(&hi) if dash && hi != u32::from(']') => {
                ranges.push((c, hi));
                i += 3;
            }
            _ => {
                ranges.push((c, c));
                i += 1;
            }
        }
    }
}

/// Expands a glob pattern into the sorted list of existing paths it matches.
///
/// A pattern without glob characters gives itself when it exists (symlinks are not
/// followed for that check) and nothing otherwise. Folders that are missing or are not
/// folders give no matches; any other failure to read a folder is an error.
///
/// # Errors
///
/// [`Error::Read`] when a folder that must be listed cannot be read.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>> {
    expand_inner(pattern, None)
}

/// As [`expand`], and records in `folders` every folder whose listing decided the result,
/// with its metadata taken before it was read (`None` when it was missing): the folders
/// listed for a wild component, and the parents of the candidates checked for existence.
/// When none of these changed, expanding again gives the same matches.
pub(crate) fn expand_traced(
    pattern: &Path,
    folders: &mut Vec<(PathBuf, Option<Sig>)>,
) -> Result<Vec<PathBuf>> {
    expand_inner(pattern, Some(folders))
}

/// The metadata of a folder a glob depends on (symlinks followed, as listing does).
pub(crate) fn folder_sig(dir: &Path) -> Option<Sig> {
    nix::sys::stat::stat(dir).ok().map(|st| Sig::of(&st))
}

fn expand_inner(
    pattern: &Path,
    mut trace: Option<&mut Vec<(PathBuf, Option<Sig>)>>,
) -> Result<Vec<PathBuf>> {
    let mut current = vec![PathBuf::new()];
    let mut last_wild = false;
    for component in pattern.components() {
        match component {
            Component::Normal(name) if has_glob(name.as_bytes()) => {
                let compiled = Pattern::new(name.as_bytes());
                let mut next = Vec::new();
                for base in &current {
                    let dir = if base.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        base.as_path()
                    };
                    if let Some(trace) = trace.as_deref_mut() {
                        trace.push((dir.to_path_buf(), folder_sig(dir)));
                    }
                    let entries = match fs::read_dir(dir) {
                        Ok(entries) => entries,
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::NotFound | ErrorKind::NotADirectory
                            ) =>
                        {
                            continue;
                        }
                        Err(source) => {
                            return Err(Error::Read {
                                path: dir.to_path_buf(),
                                source,
                            });
                        }
                    };
                    for entry in entries {
                        let entry = entry.map_err(|source| Error::Read {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                        let file_name = entry.file_name();
                        if compiled.matches(file_name.as_bytes()) {
                            next.push(base.join(file_name));
                        }
                    }
                }
                current = next;
                last_wild = true;
            }
            other => {
                current.iter_mut().for_each(|path| path.push(other));
                last_wild = false;
            }
        }
        if current.is_empty() {
            return Ok(current);
        }
    }
    if let Some(trace) = trace {
        // A literal last component: whether it exists is decided by its parent's listing.
        if !last_wild {
            for path in &current {
                if let Some(parent) = path.parent() {
                    trace.push((parent.to_path_buf(), folder_sig(parent)));
                }
            }
        }
        trace.sort_by(|a, b| a.0.cmp(&b.0));
        trace.dedup_by(|a, b| a.0 == b.0);
    }
    current.retain(|path| fs::symlink_metadata(path).is_ok());
    current.sort();
    Ok(current)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_pattern_is_literal_when_it_can_name_one_path_only() {
        for (pattern, literal) in [
            ("a/b.txt", true),
            ("c[*]d/[[]x].raw", true),
            ("[?]", true),
            ("*.raw", false),
            ("a?", false),
            ("[ab]", false),
            ("[a-b]", false),
            ("[!a]", false),
            ("out/*/x", false),
        ] {
            assert_eq!(is_literal(pattern.as_bytes()), literal, "{pattern}");
        }
    }

    #[test]
    fn matching_table() {
        let rows: &[(&[u8], &[u8], bool)] = &[
            (b"*", b"abc", true),
            (b"*", b"", true),
            (b"*", b".hidden", false),
            (b".*", b".hidden", true),
            (b"?", b".", false),
            (b"[.]x", b".x", false),
            (b"a*", b"abc", true),
            (b"*.lib", b"x.lib", true),
            (b"*.lib", b"x.lib2", false),
            (b"a?c", b"abc", true),
            (b"a?c", b"ac", false),
            (b"[abc]", b"b", true),
            (b"[abc]", b"d", false),
            (b"[a-z]x", b"qx", true),
            (b"[a-z]x", b"Qx", false),
            (b"[!x]", b"y", true),
            (b"[!x]", b"x", false),
            (b"[]]", b"]", true),
            (b"[!]]", b"a", true),
            (b"[a-]", b"-", true),
            (b"[", b"[", true),
            (b"a[b", b"a[b", true),
            (b"[*]", b"*", true),
            (b"[*]", b"a", false),
            (b"*a*b*", b"xxaxxbxx", true),
            (b"*a*b*", b"xxbxxaxx", false),
            (b"?", "é".as_bytes(), true),
            (b"f?o", b"f\xffo", true),
            (b"*\xff*", b"a\xffb", true),
            (b"[\xfe-\xff]", b"\xff", true),
            (b"[\xfe-\xff]", b"a", false),
        ];
        for (pattern, name, want) in rows {
            assert_eq!(
                Pattern::new(pattern).matches(name),
                *want,
                "pattern {:?} name {:?}",
                OsStr::from_bytes(pattern),
                OsStr::from_bytes(name)
            );
        }
    }

    /// Obviously correct, exponential matcher over tokens.
    fn naive(tokens: &[Token], name: &[u32]) -> bool {
        match tokens.split_first() {
            None => name.is_empty(),
            Some((Token::Star, rest)) => (0..=name.len()).any(|k| naive(rest, &name[k..])),
            Some((token, rest)) => {
                !name.is_empty() && token.matches_one(name[0]) && naive(rest, &name[1..])
            }
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_naive_model(
            pattern in proptest::collection::vec(prop::sample::select(b"ab*?[]!-.\xff".to_vec()), 0..8),
            name in proptest::collection::vec(prop::sample::select(b"ab.-]\xff".to_vec()), 0..8),
        ) {
            let compiled = Pattern::new(&pattern);
            let hidden_refused = name.first() == Some(&b'.')
                && compiled.tokens.first() != Some(&Token::Lit(u32::from('.')));
            let want = !hidden_refused && naive(&compiled.tokens, &units(&name));
            prop_assert_eq!(compiled.matches(&name), want);
        }
    }

    #[test]
    fn expand_walks_only_wild_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "data/a.lib",
            "data/b.lib",
            "data/c.txt",
            "data/.h.lib",
            "other/a.lib",
        ] {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        let got = expand(&root.join("data/*.lib")).unwrap();
        assert_eq!(got, vec![root.join("data/a.lib"), root.join("data/b.lib")]);
        let got = expand(&root.join("*/a.lib")).unwrap();
        assert_eq!(got, vec![root.join("data/a.lib"), root.join("other/a.lib")]);
        assert_eq!(
            expand(&root.join("missing/*")).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            expand(&root.join("data/a.lib/*")).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            expand(&root.join("data/c.txt")).unwrap(),
            vec![root.join("data/c.txt")]
        );
        assert_eq!(
            expand(&root.join("data/none")).unwrap(),
            Vec::<PathBuf>::new()
        );
    }
}
