//! `parvm storage`: the task folders in this user's local storage, and the host cache of
//! shipped inputs beside them.

use std::path::Path;

use anyhow::Result;
use parvm_env_config::Config;
use parvm_local_storage::{
    CACHE_DIR, FolderInfo, LocalStorage, SweepReport, human_size, user_folder,
};
use parvm_ship::{CacheLimits, CacheUsage, HostCache};

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
    /// Show the host cache of shipped inputs: where it is and what it holds.
    Cache,
    /// Empty the host cache of shipped inputs, except what running tasks use (read-only
    /// folders of snapshots included, which `rm -rf` cannot empty).
    ClearCache,
}

/// The host cache as `parvm storage cache` and `clear-cache` report it.
#[derive(Debug, serde::Serialize)]
struct CacheReport {
    folder: std::path::PathBuf,
    blobs: u64,
    snapshots: u64,
    bytes: u64,
    bytes_human: String,
}

/// The limits the workers of this host keep the cache to, as `parvm storage cache` shows
/// them.
#[derive(Debug, serde::Serialize)]
struct Limits {
    max_bytes: u64,
    max_bytes_human: String,
    max_files: u64,
    /// Whether `PARVM_CACHE_MAX` gives them (else 10% of the free space, and no count).
    given: bool,
}

impl Limits {
    fn of(config: &Config, user_dir: &Path) -> Result<Limits> {
        let given = config.cache_max().map(|max| (max.bytes, max.count));
        let limits = CacheLimits::given_or_default(given, user_dir)?;
        Ok(Limits {
            max_bytes: limits.max_bytes,
            max_bytes_human: human_size(limits.max_bytes),
            max_files: limits.max_count,
            given: given.is_some(),
        })
    }

    fn print(&self, report: &CacheReport) {
        let whence = if self.given {
            "PARVM_CACHE_MAX"
        } else {
            "10% of the free space; PARVM_CACHE_MAX sets it"
        };
        let over = if report.bytes > self.max_bytes || report.blobs > self.max_files {
            ": over it until a worker next applies it (when it opens the cache, after each snapshot it builds, when a run ends there); what running tasks use is kept"
        } else {
            ""
        };
        println!("limit {} ({whence}){over}", self.max_bytes_human);
    }
}

impl CacheReport {
    fn new(folder: &Path, usage: CacheUsage) -> CacheReport {
        CacheReport {
            folder: folder.to_path_buf(),
            blobs: usage.blobs,
            snapshots: usage.snapshots,
            bytes: usage.bytes,
            bytes_human: human_size(usage.bytes),
        }
    }

    /// "N files, M snapshots, SIZE".
    fn holds(&self) -> String {
        let plural = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            plural(self.blobs, "file"),
            plural(self.snapshots, "snapshot"),
            self.bytes_human
        )
    }

    fn print(&self) {
        println!("host cache `{}`: {}", self.folder.display(), self.holds());
    }
}

/// What `parvm storage clear-cache` did.
#[derive(Debug, serde::Serialize)]
struct Cleared {
    before: CacheReport,
    after: CacheReport,
    bytes_freed: u64,
    bytes_freed_human: String,
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
        Action::Cache => {
            let folder = storage.path().join(CACHE_DIR);
            let report = CacheReport::new(&folder, CacheUsage::of(&folder)?);
            let limits = Limits::of(&config, storage.path())?;
            if json {
                #[derive(serde::Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    report: &'a CacheReport,
                    limits: &'a Limits,
                }
                return super::print_json(&Shown {
                    report: &report,
                    limits: &limits,
                });
            }
            report.print();
            limits.print(&report);
        }
        Action::ClearCache => {
            let folder = storage.path().join(CACHE_DIR);
            let (before, after) = HostCache::clear(storage.path())?;
            let cleared = Cleared {
                bytes_freed: before.bytes.saturating_sub(after.bytes),
                bytes_freed_human: human_size(before.bytes.saturating_sub(after.bytes)),
                before: CacheReport::new(&folder, before),
                after: CacheReport::new(&folder, after),
            };
            if json {
                return super::print_json(&cleared);
            }
            println!("host cache `{}`", folder.display());
            println!("  before:        {}", cleared.before.holds());
            println!("  kept (in use): {}", cleared.after.holds());
            println!(
                "cleared the host cache: {} freed",
                cleared.bytes_freed_human
            );
        }
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
        let none = match action {
            Action::Cache | Action::ClearCache => "no host cache",
            _ => "no task folders",
        };
        eprintln!("note: {none}: {why}");
    }
    let verb = match action {
        Action::Cache | Action::ClearCache => {
            let folder = user_dir.join(CACHE_DIR);
            let report = CacheReport::new(&folder, CacheUsage::default());
            if json && matches!(action, Action::ClearCache) {
                return super::print_json(&Cleared {
                    before: report,
                    after: CacheReport::new(&folder, CacheUsage::default()),
                    bytes_freed: 0,
                    bytes_freed_human: human_size(0),
                });
            }
            if json {
                return super::print_json(&report);
            }
            report.print();
            println!("  (no host cache: {why})");
            return Ok(());
        }
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
