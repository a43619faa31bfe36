//! `mapkv verify DIR`: the full check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mapkv::{CorruptKind, Error, Problem, RecoveryReport, Salvage, VerifyReport};
use serde_json::json;

use crate::{FAILED, Failure, Progress, open_failure, read_only, salvage};

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

/// A problem as listed: a knock-on follows the problem at its root.
pub struct Listed<'a> {
    pub problem: &'a Problem,
    /// The position in the list of the problem this one follows from.
    pub knock_on_of: Option<usize>,
}

/// `problems` in the order to list them: by file (the data file first: the index is built
/// from it), then by offset, each knock-on right after its root (see the command's help).
pub fn list(problems: &[Problem]) -> Vec<Listed<'_>> {
    let rank = |p: &Problem| match p.file.file_name().and_then(|n| n.to_str()) {
        Some("data.mkv") => 0,
        Some("index.mkv") => 1,
        _ => 2,
    };
    let mut sorted: Vec<&Problem> = problems.iter().collect();
    sorted.sort_by_key(|p| (rank(p), p.offset));
    // The problem each one follows from directly, as a position in `sorted`.
    let cause: Vec<Option<usize>> = sorted
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let same_file = |q: &&Problem| q.file == p.file;
            let direct = match p.kind {
                CorruptKind::UnfinishedBatch { .. } => sorted.iter().position(|q| {
                    same_file(q)
                        && q.offset > p.offset
                        && !matches!(q.kind, CorruptKind::UnfinishedBatch { .. })
                }),
                CorruptKind::BadField { field: "live key count", .. } => {
                    let disagrees =
                        |q: &&Problem| matches!(q.kind, CorruptKind::IndexDisagrees { .. });
                    sorted.iter().position(|q| same_file(q) && disagrees(q))
                }
                _ => None,
            };
            direct.or_else(|| sorted[..i].iter().position(|q| same_file(q) && q.offset == p.offset))
        })
        .collect();
    // ...and the root it follows from in the end (`None`: it is a root).
    let root: Vec<Option<usize>> = (0..sorted.len())
        .map(|i| {
            let mut at = cause[i]?;
            for _ in 0..sorted.len() {
                match cause[at] {
                    Some(next) if next != i => at = next,
                    Some(_) => return None, // a circle: list it as a root
                    None => return Some(at),
                }
            }
            None
        })
        .collect();
    let mut out: Vec<Listed<'_>> = Vec::with_capacity(sorted.len());
    for (i, p) in sorted.iter().enumerate() {
        if root[i].is_some() {
            continue;
        }
        let at = out.len();
        out.push(Listed { problem: p, knock_on_of: None });
        for (j, q) in sorted.iter().enumerate() {
            if root[j] == Some(i) {
                out.push(Listed { problem: q, knock_on_of: Some(at) });
            }
        }
    }
    out
}

fn print_text(dir: &Path, found: &Found) {
    let d = dir.display();
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
    let listed = list(found.problems());
    for l in &listed {
        match l.knock_on_of {
            None => println!("{}", l.problem),
            Some(_) => println!("  knock-on: {}", l.problem),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(file: &str, offset: u64, kind: CorruptKind) -> Problem {
        Problem { file: PathBuf::from("db").join(file), offset, kind }
    }

    #[test]
    fn problems_are_listed_by_file_and_offset_with_knock_ons_under_their_root() {
        let unfinished = CorruptKind::UnfinishedBatch { records: 2 };
        let checksum = CorruptKind::ChecksumMismatch { expected: 1, found: 2 };
        let disagrees = |record| CorruptKind::IndexDisagrees { record };
        let count = CorruptKind::BadField { field: "live key count", value: 3 };
        let problems = [
            problem("index.mkv", 0, count.clone()),
            problem("index.mkv", 9000, disagrees(8240)),
            problem("data.mkv", 9000, CorruptKind::BadRecord { kind: 0x7f }),
            problem("index.mkv", 5000, disagrees(8200)),
            problem("data.mkv", 8600, unfinished.clone()),
            problem("index.mkv", 5000, disagrees(8280)),
            problem("data.mkv", 8192, checksum.clone()),
        ];
        let got: Vec<_> = list(&problems)
            .iter()
            .map(|l| (l.problem.file.display().to_string(), l.problem.offset, l.knock_on_of))
            .collect();
        let want = [
            ("db/data.mkv", 8192, None),
            ("db/data.mkv", 9000, None),
            ("db/data.mkv", 8600, Some(1)), // the batch the damage at 9000 broke
            ("db/index.mkv", 5000, None),
            ("db/index.mkv", 0, Some(3)), // the count, off because the slots are
            ("db/index.mkv", 5000, Some(3)), // the same slot
            ("db/index.mkv", 9000, None),
        ];
        let want: Vec<_> = want.iter().map(|&(f, o, k)| (f.to_string(), o, k)).collect();
        assert_eq!(got, want);
    }
}
