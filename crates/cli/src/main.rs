//! The `parvm` command-line tool: show the configuration, mirror one task's inputs, manage
//! local storage, and run a TCP worker.

mod commands;

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
    /// List, sweep or clear task folders in local storage.
    Storage {
        #[command(subcommand)]
        action: commands::storage::Action,
    },
    /// Join a TCP spawner as a worker that runs external-command tasks.
    Worker(commands::worker::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Config => commands::config::run(cli.json),
        Command::Mirror(args) => commands::mirror::run(&args, cli.json),
        Command::Storage { action } => commands::storage::run(&action, cli.json),
        Command::Worker(args) => commands::worker::run(&args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parvm: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
