//! `parvm config`: the configuration this process resolves from its environment.

use std::path::PathBuf;

use anyhow::Result;
use parvm_env_config::Config;
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
}

#[derive(Debug, Serialize)]
struct Root {
    index: usize,
    path: PathBuf,
}

/// Prints the resolved configuration, creating nothing.
pub fn run(json: bool) -> Result<()> {
    let config = Config::from_env_read_only()?;
    let shown = Shown {
        local_root: config.local_root().to_path_buf(),
        local_root_exists: config.local_root().is_dir(),
        user_folder: parvm_local_storage::user_folder(config.local_root())?,
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
    Ok(())
}
