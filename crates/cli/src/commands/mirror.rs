//! `parvm mirror`: what one task's mirroring does, end to end, on this host.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use parvm_env_config::Config;
use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirrorReport, MirroredFolder};
use serde::Serialize;

/// Arguments of `parvm mirror`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A mirror map entry `SOURCE=TARGET`: a source glob (relative to the current folder,
    /// inside the mirrored storage) and a target folder inside `--into`. Splits at the last
    /// `=`. Repeat for several entries; they are applied in order.
    #[arg(long = "map", value_name = "SRC=DST", required = true)]
    pub maps: Vec<String>,
    /// The task folder to fill.
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// Copy again only what changed at the source since an earlier mirror into DIR (as
    /// recorded in DIR/.parvm-mirror-manifest: device, inode, size, times and mode of each
    /// source), and what was changed in DIR since. Without that record, everything is
    /// copied again.
    #[arg(long)]
    pub refresh: bool,
    /// Draw no progress bar (it is drawn only when standard error is a terminal and the
    /// output is not JSON).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Serialize)]
struct Shown<'a> {
    entries: Vec<ShownEntry>,
    into: &'a PathBuf,
    refresh: bool,
    /// A refresh that found no record of an earlier mirror, and copied everything.
    full: bool,
    report: MirrorReport,
}

#[derive(Debug, Serialize)]
struct ShownEntry {
    source: String,
    root: usize,
    suffix: String,
    target: String,
}

/// A bar of files done out of files found, on standard error; indicatif hides it when
/// standard error is not a terminal, so scripts and logs never see it.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {bar:30} {pos}/{len} files, {msg} [{elapsed}]",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Splits `SRC=DST` at the last `=`.
fn split_entry(text: &str) -> Result<(&str, &str)> {
    match text.rsplit_once('=') {
        Some((source, target)) if !source.is_empty() && !target.is_empty() => Ok((source, target)),
        _ => bail!("mirror entry `{text}` is not SOURCE=TARGET (e.g. `*.cir=.` or `models=lib`)"),
    }
}

/// Translates the map to abstract paths and back on this host, then mirrors into `--into`.
pub fn run(args: &Args, json: bool) -> Result<()> {
    let config = Config::from_env()?;
    let mut map = MirrorMap::new();
    for text in &args.maps {
        let (source, target) = split_entry(text)?;
        map = map.entry(source, target)?;
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let roots = config.mirrored_roots();
    let abstract_map = map.to_abstract(roots, &cwd)?;
    let actual = abstract_map.to_actual(roots)?;
    let made = create_task_folder(&args.into)?;
    let outcome = fill(args, &actual, json);
    if outcome.is_err()
        && let Some(top) = &made
    {
        // Everything below the first folder this run made is this run's: nothing that
        // existed before is removed.
        if let Err(e) = std::fs::remove_dir_all(top) {
            eprintln!(
                "parvm: warning: cannot remove `{}`, made by this mirror: {e}",
                top.display()
            );
        }
    }
    let (report, full) = outcome?;
    let entries = map
        .entries()
        .iter()
        .zip(&abstract_map.entries)
        .map(|(given, abstracted)| ShownEntry {
            source: given.source.display().to_string(),
            root: abstracted.source.root,
            suffix: abstracted.source.suffix.display().to_string(),
            target: given.target.display().to_string(),
        })
        .collect();
    let shown = Shown {
        entries,
        into: &args.into,
        refresh: args.refresh,
        full,
        report,
    };
    if json {
        return super::print_json(&shown);
    }
    print_text(&shown);
    Ok(())
}

/// Makes the task folder and its missing parents (as `mkdir -p`); returns the first folder
/// it made, `None` when the folder existed.
fn create_task_folder(into: &Path) -> Result<Option<PathBuf>> {
    let mut first_missing = None;
    let mut probe = Some(into);
    while let Some(dir) = probe {
        if dir.as_os_str().is_empty() || std::fs::symlink_metadata(dir).is_ok() {
            break;
        }
        first_missing = Some(dir.to_path_buf());
        probe = dir.parent();
    }
    std::fs::create_dir_all(into)
        .with_context(|| format!("cannot create the task folder `{}`", into.display()))?;
    Ok(first_missing)
}

/// Mirrors (or refreshes) into `--into` and saves what was copied for the next refresh;
/// true with the report when a refresh had no record to go by.
fn fill(args: &Args, actual: &MirrorMap, json: bool) -> Result<(MirrorReport, bool)> {
    let bar = (!json && !args.no_progress).then(progress_bar);
    let mut options = MirrorOptions::new();
    if let Some(bar) = bar.clone() {
        options = options.progress(move |progress| {
            bar.set_length(progress.total);
            bar.set_position(progress.done);
            bar.set_message(parvm_local_storage::human_size(progress.bytes));
        });
    }
    // Another process refreshes this folder next, not this one: a watch would hear nothing
    // useful, and every refresh of a loaded folder verifies every copy anyway.
    let options = options.no_inotify();
    let outcome = (|| -> parvm_mirror_fs::Result<(MirrorReport, bool)> {
        let loaded = if args.refresh {
            MirroredFolder::load(actual, &args.into, &options)?
        } else {
            None
        };
        let full = args.refresh && loaded.is_none();
        let (folder, report) = match loaded {
            Some(mut folder) => {
                let report = folder.refresh(&options)?;
                (folder, report)
            }
            None => {
                let folder = MirroredFolder::mirror(actual, &args.into, &options)?;
                let report = folder.report().clone();
                (folder, report)
            }
        };
        folder.save()?;
        Ok((report, full))
    })();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(outcome?)
}

fn print_text(shown: &Shown<'_>) {
    for entry in &shown.entries {
        println!(
            "{:<16} -> root [{}] {:<20} -> {}/{}",
            entry.source,
            entry.root,
            entry.suffix,
            shown.into.display(),
            entry.target
        );
    }
    let report = &shown.report;
    let verb = if shown.refresh {
        "refreshed"
    } else {
        "mirrored"
    };
    println!(
        "{verb}: {} files, {} folders, {} symlinks, {} in {:.1} ms{}",
        report.files,
        report.dirs,
        report.symlinks,
        parvm_local_storage::human_size(report.bytes),
        report.elapsed.as_secs_f64() * 1e3,
        if shown.refresh {
            format!(", {} up to date", report.skipped)
        } else {
            String::new()
        }
    );
    if shown.full {
        println!(
            "note: `{}` held no record of an earlier mirror of this map: everything was copied",
            shown.into.display()
        );
    }
    for unmatched in &report.unmatched {
        println!("note: `{}` matched nothing", unmatched.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_at_the_last_equals_sign() {
        assert_eq!(split_entry("*.cir=.").unwrap(), ("*.cir", "."));
        assert_eq!(split_entry("a=b=c").unwrap(), ("a=b", "c"));
        for bad in ["nothing", "=x", "x="] {
            assert!(split_entry(bad).is_err(), "{bad}");
        }
    }
}
