//! One module per subcommand.

pub mod config;
pub mod mirror;
pub mod run;
pub mod storage;
pub mod worker;

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
