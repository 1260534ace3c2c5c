//! `parvm storage`: the task folders in this user's local storage.

use anyhow::Result;
use parvm_env_config::Config;
use parvm_local_storage::{FolderInfo, LocalStorage, SweepReport};

/// What to do with local storage.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List task folders with owner, state (in use, idle, stale, ...) and size.
    List,
    /// Remove stale folders: those whose owner process or boot is gone and whose lock is free.
    Sweep,
    /// Remove every folder not in use.
    Clear {
        /// Remove folders in use too (their workers lose their files).
        #[arg(long)]
        force: bool,
    },
}

/// Runs one storage action on the local storage of this user.
pub fn run(action: &Action, json: bool) -> Result<()> {
    let config = Config::from_env()?;
    let storage = LocalStorage::from_config(&config)?;
    match action {
        Action::List => {
            let folders = storage.list()?;
            if json {
                return super::print_json(&folders);
            }
            print_list(&storage, &folders);
        }
        Action::Sweep => show_report("swept", &storage.sweep()?, json)?,
        Action::Clear { force } => show_report("cleared", &storage.clear(*force)?, json)?,
    }
    Ok(())
}

fn print_list(storage: &LocalStorage, folders: &[FolderInfo]) {
    println!("{}", storage.path().display());
    if folders.is_empty() {
        println!("  (no task folders)");
        return;
    }
    println!("  {:<24} {:<10} {:>10}  owner", "folder", "state", "size");
    for folder in folders {
        let owner = folder
            .owner
            .as_ref()
            .map(|owner| format!("pid {} on {}", owner.pid, owner.host))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "  {:<24} {:<10} {:>10}  {owner}  ({})",
            folder.name,
            state_name(folder),
            folder.size_human,
            folder.detail
        );
    }
}

fn state_name(folder: &FolderInfo) -> String {
    serde_json::to_value(folder.state)
        .ok()
        .and_then(|value| value.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_else(|| format!("{:?}", folder.state))
}

fn show_report(verb: &str, report: &SweepReport, json: bool) -> Result<()> {
    if json {
        return super::print_json(report);
    }
    for folder in &report.removed {
        println!(
            "removed {} ({}, {})",
            folder.name,
            state_name(folder),
            folder.size_human
        );
    }
    for failure in &report.failed {
        println!("FAILED  {}: {}", failure.folder.name, failure.error);
    }
    println!(
        "{verb}: {} removed, {} kept, {} failed, {} freed",
        report.removed.len(),
        report.kept.len(),
        report.failed.len(),
        report.bytes_freed_human
    );
    if !report.failed.is_empty() {
        anyhow::bail!("{} folders could not be removed", report.failed.len());
    }
    Ok(())
}
