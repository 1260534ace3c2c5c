//! `-j`/`--jobs`: a number of task slots, or one relative to this machine's cores as GNU
//! parallel reads it (`50%`, `+1`, `-1`).
//!
//! It owns turning the text into a count; it must not know how workers start.

/// The slots `given` asks for on a machine with `cores` cores: `N`, `N%` of the cores,
/// `+N` or `-N` cores; a relative count is at least 1 (rounded to the nearest slot).
///
/// # Errors
/// Text that is none of these, said with the forms that are.
pub fn parse(given: &str, cores: usize) -> Result<usize, String> {
    let refuse = || {
        format!(
            "`{given}` is not a number of slots; give N, N% of the cores (`50%`), +N or -N cores (`-1`)"
        )
    };
    let number = |text: &str| text.parse::<usize>().map_err(|_| refuse());
    if let Some(percent) = given.strip_suffix('%') {
        let percent = number(percent)?;
        let slots = cores.saturating_mul(percent).saturating_add(50) / 100;
        return Ok(slots.max(1));
    }
    if let Some(more) = given.strip_prefix('+') {
        return Ok(cores.saturating_add(number(more)?));
    }
    if let Some(fewer) = given.strip_prefix('-') {
        return Ok(cores.saturating_sub(number(fewer)?).max(1));
    }
    number(given)
}

/// [`parse`] for clap, against the cores this process may use.
///
/// # Errors
/// As [`parse`].
pub fn parse_here(given: &str) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    parse(given, cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_forms_relative_to_the_cores() {
        for (given, slots) in [
            ("3", 3),
            ("0", 0),
            ("100%", 8),
            ("50%", 4),
            ("10%", 1),
            ("1%", 1),
            ("150%", 12),
            ("+2", 10),
            ("-2", 6),
            ("-20", 1),
        ] {
            assert_eq!(parse(given, 8), Ok(slots), "{given}");
        }
        for bad in ["", "x", "%", "+", "-", "1.5", "-x%", "50%%"] {
            let error = parse(bad, 8).unwrap_err();
            assert!(error.contains("N% of the cores"), "{bad}: {error}");
        }
    }
}
