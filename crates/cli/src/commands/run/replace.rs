//! Replacement strings (`{}` `{.}` `{/}` `{//}` `{/.}` `{#}` `{%}` `{1}` ...) and the
//! command line of one case.
//!
//! It owns parsing a command template and filling it with a case's values, each quoted
//! by [`super::quote`]; it must not know where values come from or how a case runs.

use super::error::RunError;
use super::quote::quote;

/// What a replacement string does to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// `{}`: the value.
    Whole,
    /// `{.}`: without its extension.
    NoExt,
    /// `{/}`: its base name.
    Base,
    /// `{//}`: its folder.
    Dir,
    /// `{/.}`: its base name without extension.
    BaseNoExt,
}

/// A piece of a command template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A value edit, of every source (`None`, values joined by spaces) or of one (from 0).
    Value(Edit, Option<usize>),
    /// `{#}`: the case number, from 1.
    Case,
    /// `{%}`: the slot the case runs on, which the worker gives the command in
    /// `PARVM_TASK_SLOT`: expanded by the shell on the worker, not here.
    Slot,
}

/// What the replacement strings of a command mean: how many input sources there are, their
/// names (`--header :`, for `{name}`), and the string that stands for the value: `{}`, or
/// `-I`'s, as in GNU parallel (`{}` is then text).
#[derive(Debug, Clone, Copy)]
pub struct Replacing<'a> {
    sources: usize,
    names: &'a [String],
    value: Option<&'a str>,
}

impl<'a> Replacing<'a> {
    /// `sources` input sources named `names` (empty when not named); the value is `{}`.
    #[must_use]
    pub fn new(sources: usize, names: &'a [String]) -> Replacing<'a> {
        Replacing {
            sources,
            names,
            value: None,
        }
    }

    /// `-I value`: `value` stands for the value instead of `{}`.
    #[must_use]
    pub fn value_as(self, value: Option<&'a str>) -> Replacing<'a> {
        Replacing { value, ..self }
    }
}

/// A command line with its replacement strings found.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `words` joined by spaces, as GNU parallel joins them before `sh -c`; with
    /// `quote_words` (`-q`), the text of each word is quoted for the shell too, around its
    /// replacement strings. A command without replacement strings gets `{}` appended when
    /// there are inputs.
    ///
    /// # Errors
    /// A value replacement string without inputs, or `{N}` beyond the sources.
    pub fn parse(
        words: &[String],
        replacing: &Replacing<'_>,
        quote_words: bool,
    ) -> Result<Template, RunError> {
        let mut pieces = Vec::new();
        if quote_words {
            for (at, word) in words.iter().enumerate() {
                if at > 0 {
                    pieces.push(Piece::Text(" ".to_owned()));
                }
                if word.is_empty() {
                    pieces.push(Piece::Text("''".to_owned()));
                }
                for piece in pieces_of(word, replacing)? {
                    pieces.push(match piece {
                        Piece::Text(text) => Piece::Text(quote(text.as_bytes())),
                        other => other,
                    });
                }
            }
        } else {
            pieces = pieces_of(&words.join(" "), replacing)?;
        }
        let replaces = pieces.iter().any(|p| !matches!(p, Piece::Text(_)));
        if !replaces && replacing.sources > 0 {
            pieces.push(Piece::Text(" ".to_owned()));
            pieces.push(Piece::Value(Edit::Whole, None));
        }
        Ok(Template { pieces })
    }

    /// Parses a `--return` pattern: its replacement strings are filled per case with
    /// values escaped for the glob ([`Template::fill_pattern`]); nothing is appended.
    ///
    /// # Errors
    /// A value replacement string without inputs, `{N}` beyond the sources, or `{%}`
    /// (the slot is known only once the case runs).
    pub fn pattern(pattern: &str, replacing: &Replacing<'_>) -> Result<Template, RunError> {
        let pieces = pieces_of(pattern, replacing)?;
        if pieces.contains(&Piece::Slot) {
            return Err(RunError::SlotInReturn {
                pattern: pattern.to_owned(),
            });
        }
        Ok(Template { pieces })
    }

    /// Whether `text` holds a replacement string (`{}`, `{.}`, `{#}`, `{1}`, ...).
    pub fn has_replacements(text: &str) -> bool {
        // As many sources as `{N}` can name, so that none is refused for its number.
        pieces_of(text, &Replacing::new(usize::MAX, &[]))
            .is_ok_and(|pieces| pieces.iter().any(|piece| !matches!(piece, Piece::Text(_))))
    }

    /// The command line of case `number` (from 1) with `values` (one per source).
    #[must_use]
    pub fn fill(&self, number: usize, values: &[Vec<u8>]) -> String {
        self.fill_with(number, values, quote)
    }

    /// The `--return` pattern of case `number` with `values`: each value matches itself
    /// only (`*`, `?` and `[` in it are escaped as `[*]`, `[?]`, `[[]`; a byte that is
    /// not UTF-8 becomes `?`, any one character, since a pattern is text).
    #[must_use]
    pub fn fill_pattern(&self, number: usize, values: &[Vec<u8>]) -> String {
        self.fill_with(number, values, glob_literal)
    }

    fn fill_with(&self, number: usize, values: &[Vec<u8>], quote: fn(&[u8]) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Case => out.push_str(&number.to_string()),
                Piece::Slot => {
                    out.push_str("\"$");
                    out.push_str(parvm_vm::TASK_SLOT_VAR);
                    out.push('"');
                }
                // A short last case of `-N` has no value there: nothing, as GNU parallel.
                Piece::Value(edit, Some(index)) => {
                    if let Some(value) = values.get(*index) {
                        out.push_str(&quote(&apply(*edit, value)));
                    }
                }
                Piece::Value(edit, None) => {
                    let quoted: Vec<String> = values
                        .iter()
                        .map(|value| quote(&apply(*edit, value)))
                        .collect();
                    out.push_str(&quoted.join(" "));
                }
            }
        }
        out
    }
}

/// `value` as a glob that matches exactly it.
fn glob_literal(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '*' | '?' | '[' => {
                    out.push('[');
                    out.push(c);
                    out.push(']');
                }
                c => out.push(c),
            }
        }
        out.extend(chunk.invalid().iter().map(|_| '?'));
    }
    out
}

/// The pieces of `line`: text and replacement strings, checked against `replacing`.
fn pieces_of(line: &str, replacing: &Replacing<'_>) -> Result<Vec<Piece>, RunError> {
    let Replacing {
        sources,
        names,
        value,
    } = *replacing;
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = line;
    loop {
        let open = rest.find('{');
        // `-I`'s string, where it comes first (or at the same place: `-I {}`).
        if let Some((own, at)) = value.and_then(|own| Some((own, rest.find(own)?)))
            && open.is_none_or(|open| at <= open)
        {
            if sources == 0 {
                return Err(RunError::ReplacementWithoutInputs {
                    found: own.to_owned(),
                });
            }
            text.push_str(&rest[..at]);
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Value(Edit::Whole, None));
            rest = &rest[at + own.len()..];
            continue;
        }
        let Some(open) = open else {
            break;
        };
        let piece = rest[open..]
            .find('}')
            .and_then(|close| Some((piece_of(&rest[open + 1..open + close], names)?, close)))
            // With `-I`, `{}` is text.
            .filter(|(piece, _)| value.is_none() || *piece != Piece::Value(Edit::Whole, None));
        let Some((piece, close)) = piece else {
            text.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        text.push_str(&rest[..open]);
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        if let Piece::Value(_, index) = piece {
            if sources == 0 {
                return Err(RunError::ReplacementWithoutInputs {
                    found: rest[open..=open + close].to_owned(),
                });
            }
            if let Some(index) = index.filter(|&i| i >= sources) {
                return Err(RunError::NoSuchSource {
                    index: index + 1,
                    sources,
                });
            }
        }
        pieces.push(piece);
        rest = &rest[open + close + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The piece a replacement string's inside names, if it is one: `{name}` (and its
/// edits, `{name.}`, `{name/}`, ...) for a source named `name` (`--header :`).
fn piece_of(inner: &str, names: &[String]) -> Option<Piece> {
    let edit = |suffix: &str| match suffix {
        "" => Some(Edit::Whole),
        "." => Some(Edit::NoExt),
        "/" => Some(Edit::Base),
        "//" => Some(Edit::Dir),
        "/." => Some(Edit::BaseNoExt),
        _ => None,
    };
    match inner {
        "#" => return Some(Piece::Case),
        "%" => return Some(Piece::Slot),
        _ => {}
    }
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        if let Some(edit) = edit(inner) {
            return Some(Piece::Value(edit, None));
        }
        // The longest name that leaves an edit: `{r.}` of a source named `r.` is its
        // value, of one named `r` its value without extension.
        return names
            .iter()
            .enumerate()
            .filter(|(_, name)| !name.is_empty())
            .filter_map(|(index, name)| {
                let edit = edit(inner.strip_prefix(name.as_str())?)?;
                Some((name.len(), Piece::Value(edit, Some(index))))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, piece)| piece);
    }
    let number: usize = inner[..digits].parse().ok()?;
    let index = number.checked_sub(1)?;
    edit(&inner[digits..]).map(|edit| Piece::Value(edit, Some(index)))
}

/// `value` edited as a path, GNU parallel's way.
fn apply(edit: Edit, value: &[u8]) -> Vec<u8> {
    let slash = value.iter().rposition(|&b| b == b'/');
    let base = slash.map_or(value, |at| &value[at + 1..]);
    let no_ext = |path: &[u8], base_start: usize| -> Vec<u8> {
        match path[base_start..].iter().rposition(|&b| b == b'.') {
            // A leading dot names a hidden file, not an extension.
            Some(dot) if dot > 0 => path[..base_start + dot].to_vec(),
            _ => path.to_vec(),
        }
    };
    match edit {
        Edit::Whole => value.to_vec(),
        Edit::Base => base.to_vec(),
        Edit::NoExt => no_ext(value, slash.map_or(0, |at| at + 1)),
        Edit::BaseNoExt => no_ext(base, 0),
        Edit::Dir => match slash {
            Some(0) => b"/".to_vec(),
            Some(at) => value[..at].to_vec(),
            None => b".".to_vec(),
        },
    }
}

/// Shells a command may start with `-c SCRIPT`.
const SHELLS: [&str; 6] = ["sh", "bash", "dash", "zsh", "ksh", "mksh"];

/// The warning for a command given as `sh -c SCRIPT` whose script has several words (unless
/// `-q`): the words are joined and run by `/bin/sh -c`, so the script loses its quotes and
/// `sh -c` runs only its first word with the rest as `$0`, `$1`, ... (GNU parallel's
/// behaviour too, and a silent wrong result: `sh -c cat a.cir > out` runs `cat` alone).
/// `None` when the script is quoted for the shell already or is one word.
pub fn split_script_warning(words: &[String], quote_words: bool) -> Option<String> {
    if quote_words {
        return None;
    }
    let at = words.windows(3).position(|w| {
        let shell = w[0].rsplit('/').next().unwrap_or_default();
        let flags = w[1].strip_prefix('-').unwrap_or_default();
        SHELLS.contains(&shell)
            && !flags.is_empty()
            && flags.ends_with('c')
            && flags.chars().all(|c| c.is_ascii_alphabetic())
            && w[2].split_whitespace().nth(1).is_some()
            && !w[2].starts_with(['\'', '"'])
    })?;
    let script = &words[at + 2];
    let first = script.split_whitespace().next().unwrap_or_default();
    Some(format!(
        "warning: the command's words are joined with spaces and run by /bin/sh -c, so the \
         script after `{} {}` loses its quotes and runs only `{first}`; give the script \
         itself as the command (parvm run '{script}' ...), or -q to pass every word as it is",
        words[at],
        words[at + 1]
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_shell_script_of_several_words_without_q_is_warned_about() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let warned = split_script_warning(
            &words(&["sh", "-c", "cat nets/{}.cir > out.txt; wc -c < m.lib"]),
            false,
        )
        .unwrap();
        assert!(warned.contains("`sh -c`"), "{warned}");
        assert!(warned.contains("runs only `cat`"), "{warned}");
        assert!(warned.contains("-q"), "{warned}");
        for shell in [
            &["/bin/bash", "-ec", "a b"][..],
            &["env", "X=1", "zsh", "-c", "a b"],
        ] {
            assert!(
                split_script_warning(&words(shell), false).is_some(),
                "{shell:?}"
            );
        }
        assert_eq!(
            split_script_warning(&words(&["sh", "-c", "a b"]), true),
            None
        );
        for fine in [
            &["sh", "-c", "'a b'"][..],
            &["sh", "-c", "\"a b\""],
            &["sh", "-c", "true"],
            &["sh", "script.sh", "a b"],
            &["ngspice", "-c", "a b"],
            &["sh", "-x", "a b"],
            &["sh", "-c"],
        ] {
            assert_eq!(split_script_warning(&words(fine), false), None, "{fine:?}");
        }
    }

    fn fill(command: &str, values: &[&str]) -> String {
        let words: Vec<String> = command.split(' ').map(str::to_owned).collect();
        let values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        Template::parse(&words, &Replacing::new(values.len(), &[]), false)
            .unwrap()
            .fill(7, &values)
    }

    #[test]
    fn every_replacement_string() {
        let table = [
            ("echo {}", vec!["dir/sub/amp.cir"], "echo dir/sub/amp.cir"),
            ("echo {.}", vec!["dir/sub/amp.cir"], "echo dir/sub/amp"),
            ("echo {/}", vec!["dir/sub/amp.cir"], "echo amp.cir"),
            ("echo {//}", vec!["dir/sub/amp.cir"], "echo dir/sub"),
            ("echo {/.}", vec!["dir/sub/amp.cir"], "echo amp"),
            ("echo {.}", vec!["a.d/file"], "echo a.d/file"),
            ("echo {//}", vec!["file"], "echo ."),
            ("echo {/.}", vec![".hidden"], "echo .hidden"),
            ("echo {#}", vec!["x"], "echo 7"),
            ("cp {1} {2}.bak {1}", vec!["a", "b"], "cp a b.bak a"),
            ("echo {2/.}", vec!["a", "d/b.c"], "echo b"),
            ("echo", vec!["a b", "c"], "echo 'a b' c"),
            ("echo {} {}", vec!["x"], "echo x x"),
            ("awk {print} {}", vec!["x"], "awk {print} x"),
            ("echo {9x}", vec!["x"], "echo {9x} x"),
        ];
        for (command, values, expected) in table {
            assert_eq!(fill(command, &values), expected, "{command}");
        }
    }

    #[test]
    fn replacement_strings_need_inputs() {
        let words = vec!["echo".to_owned(), "{.}".to_owned()];
        let error = Template::parse(&words, &Replacing::new(0, &[]), false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`{.}`") && error.contains("no inputs"),
            "{error}"
        );
        let words = vec!["echo".to_owned(), "{3}".to_owned()];
        let error = Template::parse(&words, &Replacing::new(2, &[]), false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("{3}") && error.contains("only 2"), "{error}");
        // {%} is left to the worker's shell, which knows the slot.
        let words = vec!["echo".to_owned(), "{%}".to_owned()];
        assert_eq!(
            Template::parse(&words, &Replacing::new(1, &[]), false)
                .unwrap()
                .fill(1, &[b"a".to_vec()]),
            "echo \"$PARVM_TASK_SLOT\""
        );
        // {#} needs no inputs, and nothing is appended without them.
        let words = vec!["echo".to_owned(), "{#}".to_owned()];
        assert_eq!(
            Template::parse(&words, &Replacing::new(0, &[]), false)
                .unwrap()
                .fill(3, &[]),
            "echo 3"
        );
        let words = vec!["true".to_owned()];
        assert_eq!(
            Template::parse(&words, &Replacing::new(0, &[]), false)
                .unwrap()
                .fill(3, &[]),
            "true"
        );
    }

    #[test]
    fn q_quotes_the_commands_own_words_around_replacement_strings() {
        let words: Vec<String> = ["printf", "%s|%s\\n", "a{}b", "", "x y"]
            .iter()
            .map(|w| (*w).to_owned())
            .collect();
        let line = Template::parse(&words, &Replacing::new(1, &[]), true)
            .unwrap()
            .fill(1, &[b"V W".to_vec()]);
        assert_eq!(line, "printf '%s|%s\\n' a'V W'b '' 'x y'");
        let words: Vec<String> = vec!["echo".to_owned(), "a|b".to_owned()];
        let line = Template::parse(&words, &Replacing::new(1, &[]), true)
            .unwrap()
            .fill(1, &[b"v".to_vec()]);
        assert_eq!(line, "echo 'a|b' v");
    }

    #[test]
    fn return_patterns_escape_glob_characters_of_values() {
        let template = Template::pattern("out/{/.}-{#}.raw", &Replacing::new(1, &[])).unwrap();
        assert_eq!(
            Template::pattern("*.raw", &Replacing::new(1, &[]))
                .unwrap()
                .fill_pattern(1, &[b"x".to_vec()]),
            "*.raw"
        );
        for (value, expected) in [
            (&b"dir/amp.cir"[..], "out/amp-3.raw"),
            (b"a*b?[c].cir", "out/a[*]b[?][[]c]-3.raw"),
            (b"x\xff.cir", "out/x?-3.raw"),
        ] {
            assert_eq!(template.fill_pattern(3, &[value.to_vec()]), expected);
        }
        let error = Template::pattern("{%}.raw", &Replacing::new(1, &[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--return `{%}.raw`"), "{error}");
        let error = Template::pattern("{}.raw", &Replacing::new(0, &[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no inputs"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// A value through `{}` reaches the command byte for byte, whatever it holds.
        #[test]
        fn a_value_through_sh_comes_back_byte_identical(
            value in proptest::collection::vec(1u8..=255, 0..40)
        ) {
            let words = vec!["printf".to_owned(), "%s".to_owned(), "{}".to_owned()];
            let line = Template::parse(&words, &Replacing::new(1, &[]), false).unwrap().fill(1, std::slice::from_ref(&value));
            let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
            prop_assert!(out.status.success());
            prop_assert_eq!(out.stdout, value);
        }
    }

    #[test]
    fn replacement_strings_are_found_in_any_text() {
        for text in ["nets/{}", "{.}.raw", "out/{#}", "{1}/x", "{12}", "a{/.}b"] {
            assert!(Template::has_replacements(text), "{text}");
        }
        for text in ["nets", "*.cir", "lib=models", "a{b}c", "{", "}"] {
            assert!(!Template::has_replacements(text), "{text}");
        }
    }

    #[test]
    fn header_names_replace_like_numbers_and_the_longest_name_wins() {
        let names = [
            "r".to_owned(),
            "r.".to_owned(),
            "net".to_owned(),
            String::new(),
        ];
        let values = [
            b"1k".to_vec(),
            b"2k".to_vec(),
            b"dir/amp.cir".to_vec(),
            b"x".to_vec(),
        ];
        let fill = |line: &str| {
            Template::parse(&[line.to_owned()], &Replacing::new(4, &names), false)
                .unwrap()
                .fill(7, &values)
        };
        assert_eq!(fill("{r} {r.} {2}"), "1k 2k 2k");
        assert_eq!(fill("{net/.} {net//} {net.} {#}"), "amp dir dir/amp 7");
        // Not a name: left as text, as any brace that is not a replacement string.
        assert_eq!(fill("{R} {} {rr}"), "{R} 1k 2k dir/amp.cir x {rr}");
        // Without names, `{r}` is text too.
        let plain =
            Template::parse(&["{r} {1}".to_owned()], &Replacing::new(1, &[]), false).unwrap();
        assert_eq!(plain.fill(1, &[b"v".to_vec()]), "{r} v");
        let pattern = Template::pattern("{net/.}.raw", &Replacing::new(4, &names)).unwrap();
        assert_eq!(pattern.fill_pattern(1, &values), "amp.raw");
    }

    #[test]
    fn a_string_of_ones_own_stands_for_the_value_and_braces_are_text() {
        // As GNU parallel's -I: `{}` is text, the other strings keep their meaning, and a
        // command without the string gets the value appended.
        let fill = |own: &str, line: &str| {
            let replacing = Replacing::new(1, &[]).value_as(Some(own));
            Template::parse(&[line.to_owned()], &replacing, false)
                .unwrap()
                .fill(2, &[b"a.b".to_vec()])
        };
        assert_eq!(fill("@@", "cp @@ @@.bak"), "cp a.b a.b.bak");
        assert_eq!(fill("@@", "echo x@@y {} {.} {#}"), "echo xa.by {} a 2");
        assert_eq!(fill("@@", "echo"), "echo a.b");
        assert_eq!(fill("{}", "echo {} {.}"), "echo a.b a");
        // Whichever comes first: `{%}` is still the slot with `-I %`, as in GNU parallel.
        assert_eq!(fill("%", "echo {%} %x"), "echo \"$PARVM_TASK_SLOT\" a.bx");
        let none = Replacing::new(0, &[]).value_as(Some("@@"));
        let error = Template::parse(&["echo @@".to_owned()], &none, false).unwrap_err();
        assert!(error.to_string().contains("`@@`"), "{error}");
    }
}
