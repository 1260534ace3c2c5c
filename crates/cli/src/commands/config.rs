//! `parvm config`: the configuration this process resolves from its environment.

use std::path::PathBuf;

use anyhow::Result;
use parvm_env_config::Config;
use parvm_local_storage::human_size;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Shown {
    local_root: PathBuf,
    /// Whether the local root exists yet (`parvm config` creates nothing).
    local_root_exists: bool,
    user_folder: PathBuf,
    mirrored_roots: Vec<Root>,
    hostname: String,
    workers: Option<usize>,
    transport: Option<&'static str>,
    /// `PARVM_SHIP`: whether mirrored roots are shipped to hosts that do not share them.
    ship: &'static str,
    /// Where shipped inputs are cached on this host.
    cache_folder: PathBuf,
    /// `PARVM_CACHE_MAX`: the host cache's bounds; `None` for the default (10% of the
    /// free space, the cache's default count).
    cache_max_bytes: Option<u64>,
    cache_max_files: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Root {
    index: usize,
    path: PathBuf,
}

/// Prints the resolved configuration, creating nothing.
pub fn run(json: bool) -> Result<()> {
    let config = Config::from_env_read_only()?;
    let user_folder = parvm_local_storage::user_folder(config.local_root())?;
    let shown = Shown {
        local_root: config.local_root().to_path_buf(),
        local_root_exists: config.local_root().is_dir(),
        cache_folder: user_folder.join(parvm_local_storage::CACHE_DIR),
        user_folder,
        mirrored_roots: config
            .mirrored_roots()
            .iter()
            .enumerate()
            .map(|(index, path)| Root {
                index,
                path: path.clone(),
            })
            .collect(),
        hostname: config.hostname().to_owned(),
        workers: config.workers(),
        transport: config.transport().map(|kind| kind.name()),
        ship: config.ship().name(),
        cache_max_bytes: config.cache_max().map(|max| max.bytes),
        cache_max_files: config.cache_max().and_then(|max| max.count),
    };
    if json {
        return super::print_json(&shown);
    }
    println!("host            {}", shown.hostname);
    let missing = if shown.local_root_exists {
        ""
    } else {
        "  (does not exist yet; workers create it)"
    };
    println!("local storage   {}{missing}", shown.local_root.display());
    println!("user folder     {}", shown.user_folder.display());
    println!("mirrored roots");
    for root in &shown.mirrored_roots {
        println!("  [{}] {}", root.index, root.path.display());
    }
    if let Some(workers) = shown.workers {
        println!("workers         {workers}");
    }
    if let Some(transport) = shown.transport {
        println!("transport       {transport}");
    }
    println!("shipping        {} (PARVM_SHIP)", shown.ship);
    let bound = match (shown.cache_max_bytes, shown.cache_max_files) {
        (Some(bytes), Some(files)) => format!("at most {} and {files} files", human_size(bytes)),
        (Some(bytes), None) => format!("at most {}", human_size(bytes)),
        _ => "at most 10% of the free space".to_owned(),
    };
    println!(
        "host cache      {}, {bound} (PARVM_CACHE_MAX)",
        shown.cache_folder.display()
    );
    Ok(())
}
