//! Shell quoting of input values for `sh -c`, byte for byte.
//!
//! It owns how a value becomes one shell word; it must not know where values come from
//! or what a replacement string means.

use std::fmt::Write as _;

/// `value` as one POSIX shell word that `sh` turns back into exactly these bytes.
///
/// UTF-8 text goes inside single quotes (a `'` as `'\''`), so nothing in it is special:
/// not `$`, `*`, `\`, spaces or newlines. A byte that is not UTF-8 cannot travel in the
/// command line parvm sends (it is UTF-8), so it becomes `"$(printf '\NNN')"`, which the
/// shell expands back to that byte; the pieces join into one word. A value must not hold
/// a NUL byte (no argument can); the caller refuses those first.
#[must_use]
pub fn quote(value: &[u8]) -> String {
    if value.is_empty() {
        return "''".to_owned();
    }
    if value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-_./,+:@%".contains(&b))
    {
        // Plain words stay readable in `--dry-run` and the joblog. `=` is not among them:
        // `A=1` as the first word would be an assignment, not a command.
        return String::from_utf8_lossy(value).into_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    for chunk in value.utf8_chunks() {
        let text = chunk.valid();
        if !text.is_empty() {
            out.push('\'');
            out.push_str(&text.replace('\'', r"'\''"));
            out.push('\'');
        }
        for byte in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, r#""$(printf '\{byte:03o}')""#);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    use proptest::prelude::*;

    use super::*;

    /// What `sh` makes of `printf %s WORD`.
    fn through_sh(word: &str) -> Vec<u8> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {word}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{word}: {out:?}");
        out.stdout
    }

    #[test]
    fn hard_values_come_back_exactly() {
        let cases: [&[u8]; 9] = [
            b"",
            b"plain",
            b"two words",
            b"it's \"quoted\"",
            b"$HOME `id` $(id) *.cir ~ \\n",
            b"line one\nline two\n",
            b"\xff\xfe not utf-8 \x80",
            b"-n",
            "ünïcødé '".as_bytes(),
        ];
        for value in cases {
            assert_eq!(through_sh(&quote(value)), value, "{}", quote(value));
        }
    }

    #[test]
    fn plain_words_stay_unquoted() {
        assert_eq!(quote(b"amp_1.cir"), "amp_1.cir");
        assert_eq!(quote(b"a b"), "'a b'");
        assert_eq!(quote(b"A=1"), "'A=1'");
        assert_eq!(quote(std::ffi::OsStr::new("x").as_bytes()), "x");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn any_value_without_nul_comes_back_byte_identical(
            value in proptest::collection::vec(1u8..=255, 0..40)
        ) {
            prop_assert_eq!(through_sh(&quote(&value)), value);
        }
    }
}
