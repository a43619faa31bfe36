//! `mapkv copy SRC DST [--compact]`: a hot backup.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Failure, Progress, describe, human_bytes, open_read};

/// Copy a store, consistently, while its writer keeps writing (a hot backup)
///
/// Writes one moment of the store at SRC (a snapshot taken when the command starts) into
/// DST, a new or empty directory, as a whole store closed cleanly: the log up to that
/// moment, its index rebuilt with every checksum checked, or with --compact only the live
/// pairs. SRC is opened read-only: beside a live writer (in any process) the copy follows
/// it and never makes it wait. A failed copy removes what it wrote. Exit 1 if DST is not
/// new or empty, or the copy fails.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store to copy
    src: PathBuf,
    /// Where the copy goes: a new or empty directory
    dst: PathBuf,
    /// Copy only the live pairs (as after `mapkv compact`), not the history
    #[arg(long)]
    compact: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let store = open_read(&args.src)?;
    let progress = Progress::new("copying", None, "");
    let copied = store.copy_to(&args.dst, args.compact);
    drop(progress);
    let stats = copied.map_err(|e| {
        Failure::Failed(format!(
            "copy of {} to {}: {}",
            args.src.display(),
            args.dst.display(),
            describe(&e)
        ))
    })?;
    println!(
        "copied {} to {}{}: {} live keys, {} records, {} of log",
        args.src.display(),
        args.dst.display(),
        if args.compact { " (compacted)" } else { "" },
        stats.live_keys,
        stats.records,
        human_bytes(stats.log_bytes)
    );
    Ok(ExitCode::SUCCESS)
}
