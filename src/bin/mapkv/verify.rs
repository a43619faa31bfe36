//! `mapkv verify DIR`: the full check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mapkv::{CorruptKind, Error, Problem, RecoveryReport};
use serde_json::json;

use crate::{FAILED, Failure, Progress, open_failure, read_only};

/// Check every record and the index (exit 0 sound, 1 damaged)
///
/// Checks every record's checksum, then the index against the log, and that the data file
/// holds only zeros past the end of the log (else `mapkv recover` zeroes it), without
/// changing anything. Exits 0 when the store is sound and 1 when it is damaged, listing each problem
/// with its file, byte offset and what is wrong. A store that was not closed cleanly is
/// checked as a reader sees it; a torn tail that `mapkv recover` would cut is reported but
/// is not damage (it is what a crash leaves).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    /// Print one JSON object instead of lines
    #[arg(long)]
    json: bool,
}

/// What the check found.
struct Found {
    /// `None` when the store did not open: the problem found then is all we know.
    counts: Option<(u64, u64, u64)>,
    recovery: Option<RecoveryReport>,
    problems: Vec<Problem>,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let found = check(&args.dir)?;
    let ok = found.problems.is_empty();
    if args.json {
        print_json(&args.dir, &found);
    } else {
        print_text(&args.dir, &found);
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(FAILED) })
}

fn check(dir: &Path) -> Result<Found, Failure> {
    let store = match read_only().open(dir) {
        Ok(store) => store,
        // Damage found while opening (below the committed length, or in a header): the store
        // cannot be checked further, but this is the verdict.
        Err(Error::Corrupt { file, offset, kind }) => {
            let problems = vec![Problem { file, offset, kind }];
            return Ok(Found { counts: None, recovery: None, problems });
        }
        Err(e) => return Err(open_failure(dir, e)),
    };
    let progress = Progress::new("verifying", None, "");
    let report = store.verify()?;
    drop(progress);
    Ok(Found {
        counts: Some((report.records, report.live_keys, report.log_end)),
        recovery: Some(store.recovery().clone()),
        problems: report.problems,
    })
}

fn print_text(dir: &Path, found: &Found) {
    let dir = dir.display();
    match found.counts {
        Some((records, live, end)) => {
            println!("checked {dir}: {records} records, {live} live keys, log ends at byte {end}")
        }
        None => println!("{dir} does not open: the first problem found is below"),
    }
    for p in &found.problems {
        println!("{p}");
    }
    if let Some(r) = found.recovery.as_ref().filter(|r| !r.was_clean()) {
        match r.resumed_from {
            Some(at) => println!(
                "note: not closed cleanly; the killed writer's index was resumed in memory \
                 from its checkpoint at byte {at} for this check"
            ),
            None => {
                let why = r.reason.as_deref().unwrap_or("not closed cleanly");
                println!("note: the index was rebuilt in memory for this check ({why})");
            }
        }
        if let Some((offset, kind)) = &r.cut {
            println!("note: torn tail at byte {offset} ({kind}); `mapkv recover` cuts it");
        }
    }
    let index_only = found.problems.iter().all(|p| p.file.ends_with("index.mkv"));
    if !found.problems.is_empty() && index_only && found.counts.is_some() {
        println!(
            "the log is sound: `mapkv recover --rebuild-index {dir}` rebuilds the index from it"
        );
    }
    match found.problems.len() {
        0 => println!("sound"),
        1 => println!("damaged: 1 problem"),
        n => println!("damaged: {n} problems"),
    }
}

fn print_json(dir: &Path, found: &Found) {
    let problems: Vec<_> = found
        .problems
        .iter()
        .map(|p| {
            json!({
                "file": p.file.display().to_string(),
                "offset": p.offset,
                "kind": kind_name(&p.kind),
                "message": p.kind.to_string(),
            })
        })
        .collect();
    let recovery = found.recovery.as_ref();
    let v = json!({
        "path": dir.display().to_string(),
        "ok": found.problems.is_empty(),
        "opened": found.counts.is_some(),
        "records": found.counts.map(|c| c.0),
        "live_keys": found.counts.map(|c| c.1),
        "log_end": found.counts.map(|c| c.2),
        "closed_cleanly": recovery.map(RecoveryReport::was_clean),
        "torn_tail": recovery.and_then(|r| r.cut.as_ref()).map(|(offset, kind)| json!({
            "offset": offset,
            "kind": kind_name(kind),
            "message": kind.to_string(),
        })),
        "problems": problems,
    });
    println!("{v}");
}

/// The variant's name, e.g. "ChecksumMismatch", for scripts.
fn kind_name(kind: &CorruptKind) -> String {
    let debug = format!("{kind:?}");
    debug.chars().take_while(char::is_ascii_alphanumeric).collect()
}
