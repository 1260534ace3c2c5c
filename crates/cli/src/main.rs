//! The `parvm` command-line tool: show the configuration, mirror one task's inputs, manage
//! local storage, and run a TCP worker.

mod commands;
mod console;

use clap::{Parser, Subcommand};

/// Run tasks in parallel, each in its own mirrored local folder.
#[derive(Debug, Parser)]
#[command(name = "parvm", version, about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the resolved configuration: local root, per-user folder, mirrored roots.
    Config,
    /// Mirror files into a folder as one task's mirroring would.
    Mirror(commands::mirror::Args),
    /// List, sweep or clear task folders in local storage; show or clear the host cache.
    Storage {
        #[command(subcommand)]
        action: commands::storage::Action,
    },
    /// Join a TCP spawner as a worker that runs external-command tasks.
    ///
    /// SIGTERM, SIGINT or SIGHUP makes it leave in order: the running command is stopped
    /// and its case given back to the spawner, which runs it on another worker; the task
    /// folders are removed; then it ends by that signal.
    Worker(commands::worker::Args),
    /// Run a command for every case of its inputs, each in its own task folder, with GNU
    /// parallel's conventions (`parvm run echo {} ::: a b c`).
    Run(Box<commands::run::Args>),
    /// Print a shell completion script: `parvm completions bash > ~/.local/share/bash-completion/completions/parvm`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of parvm, or of one subcommand: `parvm man run | man -l -`.
    Man {
        /// The subcommand (`run`, `worker`, ...); default: parvm itself.
        subcommand: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    // A worker that `parvm run` started: it serves at once, before any argument, input or
    // file is looked at, and never returns.
    if parvm_transport::started_as_worker() && first_arg_is_run() {
        if let Err(error) = commands::run::serve() {
            console::say(error_report(&error));
        }
        return std::process::ExitCode::from(255);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `parvm run` exits 255 on a usage error, as GNU parallel does for errors that are
        // not failed cases (a status of 1 or 2 would read as one or two failed cases).
        Err(error) if error.use_stderr() && first_arg_is_run() => {
            match commands::run::instead_of_gnu_parallel(&error) {
                Some(instead) => console::say(instead),
                None => {
                    let _ = error.print();
                }
            }
            return std::process::ExitCode::from(255);
        }
        Err(error) => error.exit(),
    };
    let outcome = match cli.command {
        Command::Run(mut args) => {
            args.json = cli.json;
            // GNU parallel's exit status: failed cases, or 255 when the run itself failed.
            return match commands::run::run(*args) {
                Ok(failed) => std::process::ExitCode::from(failed),
                Err(error) => {
                    console::say(error_report(&error));
                    std::process::ExitCode::from(255)
                }
            };
        }
        Command::Config => commands::config::run(cli.json),
        Command::Mirror(args) => commands::mirror::run(&args, cli.json),
        Command::Storage { action } => commands::storage::run(&action, cli.json),
        Command::Worker(args) => commands::worker::run(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "parvm", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { subcommand } => man_page(subcommand.as_deref()),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            console::say(error_report(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the manual page of parvm, or of `subcommand`, from the same definitions as
/// `--help`.
fn man_page(subcommand: Option<&str>) -> anyhow::Result<()> {
    let parvm = <Cli as clap::CommandFactory>::command();
    let man = match subcommand {
        None => clap_mangen::Man::new(parvm),
        Some(name) => {
            let Some(sub) = parvm.find_subcommand(name) else {
                let names: Vec<&str> = parvm
                    .get_subcommands()
                    .map(clap::Command::get_name)
                    .collect();
                anyhow::bail!(
                    "`{name}` is not a parvm subcommand; give one of {}",
                    names.join(", ")
                );
            };
            clap_mangen::Man::new(
                sub.clone()
                    .bin_name(format!("parvm {name}"))
                    .display_name(format!("parvm-{name}")),
            )
            .title(format!("parvm-{name}"))
        }
    };
    let mut out = Vec::new();
    man.render(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(())
}

/// Whether this process was started as `parvm run ...`.
fn first_arg_is_run() -> bool {
    std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("run"))
}

/// An error and its causes for people, one per line:
///
/// ```text
/// error: PARALLEL_LOCAL_STORAGE folder `/x/y` does not exist and cannot be created; ...
///   caused by: Not a directory (os error 20)
/// ```
///
/// A cause whose text its error already ends with is left out, so a message that quotes
/// its cause does not show it twice.
fn error_report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("error: {error}");
    let mut shown = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let line = next.to_string();
        if !shown.ends_with(&line) {
            text.push_str("\n  caused by: ");
            text.push_str(&line);
        }
        shown = line;
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer `{0}`")]
    struct Outer(&'static str, #[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn errors_read_as_a_chain_of_lines_without_repeats() {
        let io = std::io::Error::other("no such file");
        let error = anyhow::Error::new(Outer("/x", Middle(io)));
        let text = error_report(error.as_ref());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "error: outer `/x`");
        assert!(
            lines[1].starts_with("  caused by: middle: no such file"),
            "{text}"
        );
        assert_eq!(
            lines.len(),
            2,
            "the io error repeats the middle's tail: {text}"
        );
        let context = error.context("while doing y");
        let text = error_report(context.as_ref());
        assert!(
            text.starts_with("error: while doing y\n  caused by: outer `/x`"),
            "{text}"
        );
    }
}
