//! `mapkv compact DIR`: give back the space of overwritten and deleted records.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Failure, Progress, human_bytes, open_write};

/// Give back the space of overwritten and deleted records
///
/// Rewrites the live records into new files and swaps them in (DESIGN.md §4), then closes
/// the store cleanly. Prints the sizes before and after.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let store = open_write(&args.dir, false)?;
    let before = store.stats();
    let progress = Progress::new("compacting", None, "");
    let done = store.compact()?;
    drop(progress);
    let after = store.stats();
    store.close()?;
    let sizes = |a: u64, b: u64| format!("{} -> {}", human_bytes(a), human_bytes(b));
    println!(
        "compacted {} in {:.2} s (writers paused {:.1} ms)",
        args.dir.display(),
        done.duration.as_secs_f64(),
        done.pause.as_secs_f64() * 1e3
    );
    println!("live keys   {}", done.live_keys);
    println!("log         {}", sizes(before.log_bytes, after.log_bytes));
    println!("garbage     {}", sizes(before.garbage_bytes, after.garbage_bytes));
    println!("data file   {}", sizes(before.data_file_bytes, after.data_file_bytes));
    println!("index file  {}", sizes(before.index_file_bytes, after.index_file_bytes));
    Ok(ExitCode::SUCCESS)
}
