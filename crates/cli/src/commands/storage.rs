//! `parvm storage`: the task folders in this user's local storage.

use std::path::Path;

use anyhow::Result;
use parvm_env_config::Config;
use parvm_local_storage::{FolderInfo, LocalStorage, SweepReport, human_size, user_folder};

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
///
/// Nothing is created: where the local root or the per-user folder does not exist yet,
/// there are no task folders, and the action says so and succeeds.
pub fn run(action: &Action, json: bool) -> Result<()> {
    let config = Config::from_env_read_only()?;
    let Some(storage) = LocalStorage::existing_from_config(&config)? else {
        return nothing_there(action, config.local_root(), json);
    };
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

/// Reports that there is no storage to act on, without making any.
fn nothing_there(action: &Action, local_root: &Path, json: bool) -> Result<()> {
    let user_dir = user_folder(local_root)?;
    let why = if std::fs::symlink_metadata(local_root).is_err() {
        format!(
            "the local storage root `{}` (PARALLEL_LOCAL_STORAGE) does not exist yet; workers create it",
            local_root.display()
        )
    } else {
        format!(
            "your per-user folder `{}` does not exist yet; workers create it",
            user_dir.display()
        )
    };
    if json {
        // Scripts read stdout: keep it the usual shape, say why on stderr.
        eprintln!("note: no task folders: {why}");
    }
    let verb = match action {
        Action::List if json => return super::print_json(&Vec::<FolderInfo>::new()),
        Action::List => {
            println!("{}", user_dir.display());
            println!("  (no task folders: {why})");
            return Ok(());
        }
        Action::Sweep => "swept",
        Action::Clear { .. } => "cleared",
    };
    let mut report = SweepReport::default();
    report.bytes_freed_human = human_size(0);
    show_report(verb, &report, json)?;
    if !json {
        println!("  (no task folders: {why})");
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
            folder.name, folder.state, folder.size_human, folder.detail
        );
    }
}

fn show_report(verb: &str, report: &SweepReport, json: bool) -> Result<()> {
    if json {
        super::print_json(report)?;
    } else {
        for folder in &report.removed {
            println!(
                "removed {} ({}, {})",
                folder.name, folder.state, folder.size_human
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
    }
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} task folders could not be removed (see the report): remove them by hand, or run `parvm storage sweep` again later",
            report.failed.len()
        );
    }
    Ok(())
}
