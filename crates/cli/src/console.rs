//! What the tool says on standard error, for people.

use std::io::Write;

/// Writes `line` and a newline to standard error in one write (workers of one machine may
/// share it, and a line must not be cut into another's), ignoring a failure: with standard
/// error closed (`parvm run ... 2>&1 | head`) there is nobody to tell, and `eprintln!`
/// would panic instead.
pub fn say(line: impl std::fmt::Display) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}
