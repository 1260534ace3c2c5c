//! Example 05: cleaning up local storage on every host.
//!
//! Removes task folders left behind by crashed workers, and any other folder in local
//! storage that no running worker uses, on the spawner's host and every worker host.
//! Folders in use are skipped.
//!
//! Run with `cargo run --example 05-storage-cleanup`.

use std::time::Duration;

use parvm::vm::{Runtime, Tasks};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new())?;
    println!("Local storage: {}", runtime.config().local_root().display());

    println!("\nCleaning up (waiting at most 6 s for busy workers).");
    let report = runtime.clear_local_storage(false, Duration::from_secs(6))?;
    print!("{report}");

    runtime.finalize()?;
    Ok(())
}
