//! `mapkv verify DIR`: the full check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mapkv::{CorruptKind, Error, Problem, RecoveryReport, Salvage, VerifyReport};
use serde_json::json;

use crate::{FAILED, Failure, Progress, list, open_failure, read_only, salvage};

/// Check every record and the index (exit 0 sound, 1 damaged)
///
/// Checks every record's checksum, then the index against the log, and that the data file
/// holds only zeros past the end of the log (else `mapkv recover` zeroes it), without
/// changing anything. Exits 0 when the store is sound and 1 when it is damaged, listing each
/// problem with its file, byte offset and what is wrong. A store that was not closed
/// cleanly is checked as a reader sees it; a torn tail that `mapkv recover` would cut is
/// reported but is not damage (it is what a crash leaves). A store too damaged to open is
/// read record by record instead: every damaged stretch of its data file is listed, with
/// how many records are intact before and past the damage.
///
/// Problems are listed by file (data.mkv, then index.mkv), then by byte offset. A problem
/// that only follows from another is listed under it, marked "knock-on", and counted apart:
/// a batch left without its commit record, under the first damaged record inside it; a
/// second report of the same byte (two keys' disagreement over one index slot), under the
/// first; a wrong live key count, under the first index slot that disagrees. Repairing the
/// problem at the root repairs its knock-ons. With --json, problems come in the same
/// order, each knock-on with "knock_on_of": the position of its root in the list.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    /// Print one JSON object instead of lines
    #[arg(long)]
    json: bool,
}

/// What the check found.
enum Found {
    /// The store opened: the check's report, and what open found and did.
    Opened(VerifyReport, RecoveryReport),
    /// It did not open, and its data file was read record by record.
    Salvaged(Salvage),
    /// It did not open and could not be read record by record: the problem open found,
    /// and why not (`None`: that reading found nothing more).
    NotAtAll(Problem, Option<String>),
}

impl Found {
    /// Every problem found.
    fn problems(&self) -> &[Problem] {
        match self {
            Self::Opened(report, _) => &report.problems,
            Self::Salvaged(s) => &s.damage,
            Self::NotAtAll(first, _) => std::slice::from_ref(first),
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let found = check(&args.dir)?;
    let ok = found.problems().is_empty();
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
        // Damage found while opening (below the committed length, or in a header): read
        // the data file record by record for every damaged stretch.
        Err(Error::Corrupt { file, offset, kind }) => {
            let first = Problem { file, offset, kind };
            return Ok(match salvage(dir) {
                Ok(s) if !s.damage.is_empty() => Found::Salvaged(s),
                Ok(_) => Found::NotAtAll(first, None),
                Err(why) => Found::NotAtAll(first, Some(why.to_string())),
            });
        }
        Err(e) => return Err(open_failure(dir, e)),
    };
    let progress = Progress::new("verifying", None, "");
    let report = store.verify()?;
    drop(progress);
    Ok(Found::Opened(report, store.recovery().clone()))
}

fn print_text(dir: &Path, found: &Found) {
    let d = dir.display();
    let listed = list(found.problems());
    match found {
        Found::Opened(r, _) => println!(
            "checked {d}: {} records, {} live keys, log ends at byte {}",
            r.records, r.live_keys, r.log_end
        ),
        &Found::Salvaged(Salvage { before, after, dropped, .. }) => {
            print!(
                "{d} does not open; its data file read record by record: {before} records \
                 intact before the damage, {after} past it"
            );
            if dropped > 0 {
                print!(", {dropped} in batches the damage broke");
            }
            println!(" (`mapkv dump --skip-damaged {d}` dumps the pairs that are intact)");
        }
        Found::NotAtAll(_, Some(why)) => println!("{d} does not open: {why}"),
        Found::NotAtAll(_, None) => println!("{d} does not open: the first problem found is below"),
    }
    for l in &listed {
        println!("{l}");
    }
    if let Found::Opened(_, r) = found
        && !r.was_clean()
    {
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
    let index_only = found.problems().iter().all(|p| p.file.ends_with("index.mkv"));
    if !found.problems().is_empty() && index_only && matches!(found, Found::Opened(..)) {
        println!(
            "the log is sound: `mapkv recover --rebuild-index {d}` rebuilds the index from it"
        );
    }
    let knock_ons = listed.iter().filter(|l| l.knock_on_of.is_some()).count();
    let roots = listed.len() - knock_ons;
    match (roots, knock_ons) {
        (0, _) => println!("sound"),
        (1, 0) => println!("damaged: 1 problem"),
        (n, 0) => println!("damaged: {n} problems"),
        (1, 1) => println!("damaged: 1 problem (and 1 knock-on)"),
        (1, k) => println!("damaged: 1 problem (and {k} knock-ons)"),
        (n, 1) => println!("damaged: {n} problems (and 1 knock-on)"),
        (n, k) => println!("damaged: {n} problems (and {k} knock-ons)"),
    }
}

fn print_json(dir: &Path, found: &Found) {
    let problems: Vec<_> = list(found.problems())
        .iter()
        .map(|l| {
            let p = l.problem;
            json!({
                "file": p.file.display().to_string(),
                "offset": p.offset,
                "kind": kind_name(&p.kind),
                "message": p.kind.to_string(),
                "knock_on_of": l.knock_on_of,
            })
        })
        .collect();
    let (report, recovery) = match found {
        Found::Opened(report, recovery) => (Some(report), Some(recovery)),
        Found::Salvaged(_) | Found::NotAtAll(..) => (None, None),
    };
    let v = json!({
        "path": dir.display().to_string(),
        "ok": problems.is_empty(),
        "opened": report.is_some(),
        "records": report.map(|r| r.records),
        "live_keys": report.map(|r| r.live_keys),
        "log_end": report.map(|r| r.log_end),
        "closed_cleanly": recovery.map(RecoveryReport::was_clean),
        "torn_tail": recovery.and_then(|r| r.cut.as_ref()).map(|(offset, kind)| json!({
            "offset": offset,
            "kind": kind_name(kind),
            "message": kind.to_string(),
        })),
        "intact": match found {
            Found::Salvaged(s) => json!({
                "records_before_damage": s.before,
                "records_past_damage": s.after,
                "records_in_broken_batches": s.dropped,
            }),
            Found::Opened(..) | Found::NotAtAll(..) => json!(null),
        },
        "problems": problems,
    });
    println!("{v}");
}

/// The variant's name, e.g. "ChecksumMismatch", for scripts.
fn kind_name(kind: &CorruptKind) -> String {
    let debug = format!("{kind:?}");
    debug.chars().take_while(char::is_ascii_alphanumeric).collect()
}
