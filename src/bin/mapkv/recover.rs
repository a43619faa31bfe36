//! `mapkv recover DIR`: cut a torn tail, rebuild the index and zero what lies past the end
//! of the log, saying exactly what was cut.

use std::fs::{File, OpenOptions as FsOpen};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mapkv::{Error, RecoveryReport};

use crate::{Failure, damage, open_failure, read_only, writable};

/// Cut a torn tail and rebuild the index after a crash, reporting what was cut
///
/// For a store that was not closed cleanly (a crash, a kill, a power cut): cuts the torn
/// tail a crash can leave past the committed length, rebuilds the index from the log (or,
/// after a process crash since the last restart, resumes it from the killed writer's last
/// checkpoint and replays only the log past it), and reports exactly what was cut and
/// where. Any writable open does this; `recover` first works
/// it out read-only, reports it, then does it. It also zeroes nonzero bytes past the end of
/// the log, even in a store closed cleanly (`mapkv verify` reports them; the data file must
/// hold only zeros there). It never discards committed data: damage below the committed
/// length stops it with exit 1 and nothing changed, saying where the damage is and how many
/// records before it are intact (`mapkv dump --skip-damaged` saves them; `mapkv verify`
/// lists every problem); so does a data file that is not a mapkv data file at all. While a
/// writer has the store open it refuses (exit 1) and changes nothing: stop the writer first.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    /// Only report what would be cut; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Before cutting, copy the bytes that will be discarded to FILE (which must not exist)
    #[arg(long, value_name = "FILE")]
    save_tail: Option<PathBuf>,
    /// Rebuild the index from the log even after a clean close: the repair for a damaged
    /// index (`mapkv verify` reports the index disagreeing with the log)
    #[arg(long)]
    rebuild_index: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let dir = &args.dir;
    let (preview, past) = match read_only().rebuild_index(args.rebuild_index).open(dir) {
        Ok(store) if store.stats().following => {
            // The read-only open follows the writer: what it shows is the writer's state,
            // and the store is the writer's to change.
            return Err(Failure::Failed(format!(
                "{}: a writer has this store open (process still running); stop it first, \
                 nothing was changed",
                dir.display()
            )));
        }
        Ok(store) => (store.recovery().clone(), store.nonzero_past_end()?),
        Err(e @ Error::Corrupt { .. }) => return Err(refuse_damage(dir, &e)),
        Err(e) => return Err(open_failure(dir, e)),
    };
    if preview.was_clean() && past.is_none() {
        return nothing_to_do(dir, &preview);
    }
    let data = dir.join("data.mkv");
    // What will be discarded: the torn tail from the cut, or else the nonzero bytes past
    // the end of the log.
    let from = preview.cut.as_ref().map(|c| c.0).or(past);
    let tail = match from {
        Some(from) => Some(tail_end(&data, from)?),
        None => None,
    };
    if let (Some(path), Some(from)) = (&args.save_tail, from) {
        save(&data, from, tail.unwrap_or(from), path)?;
    }
    let discard = Discard { past, tail };
    if args.dry_run {
        print(dir, &preview, &discard, true);
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let mut options = writable(args.rebuild_index);
    // Past a cut a rebuild zeroes everything anyway; resuming, only what the killed
    // writer left; after a clean close, nothing unless asked.
    options.zero_past_end(past.is_some());
    let store = options.open(dir).map_err(|e| open_failure(dir, e))?;
    let report = store.recovery().clone();
    store.close()?;
    if report.was_clean() && past.is_none() {
        return nothing_to_do(dir, &report); // another process recovered it meanwhile
    }
    // The extent measured before applies if the writable open cut at the same place.
    let same_cut = report.cut.as_ref().map(|c| c.0) == preview.cut.as_ref().map(|c| c.0);
    let discard = Discard { tail: tail.filter(|_| same_cut), ..discard };
    print(dir, &report, &discard, false);
    Ok(ExitCode::SUCCESS)
}

/// Says what damage stops recovery (the [`damage`]) and what is still intact, or that the
/// file was never a mapkv data file; changes nothing.
fn refuse_damage(dir: &Path, e: &Error) -> Failure {
    let d = dir.display();
    Failure::Failed(match damage(dir, e) {
        Ok(x) => {
            let why = if x.offset == 0 {
                "A lost header cannot be rebuilt, so recover changed nothing"
            } else {
                "This damage lies below the committed length (bytes that were durable and \
                 valid once), so recover will not cut it and changed nothing"
            };
            format!(
                "{}\n{why}. {}: `mapkv dump --skip-damaged {d} > pairs.jsonl` saves their \
                 pairs, and `mapkv load NEW_DIR pairs.jsonl` makes a sound store of them. \
                 `mapkv verify {d}` lists every problem.",
                x.what,
                upper_first(&x.intact),
            )
        }
        Err(f) => format!("{f}; recover changed nothing"),
    })
}

/// `s` with its first letter in upper case.
fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// What recovery discards and zeroes.
struct Discard {
    /// The first nonzero byte past the end of the log, found before opening for writing.
    past: Option<u64>,
    /// Where the nonzero bytes from the cut (or from `past`, with no cut) end.
    tail: Option<u64>,
}

fn nothing_to_do(dir: &Path, report: &RecoveryReport) -> Result<ExitCode, Failure> {
    println!(
        "{} was closed cleanly: nothing to recover (log ends at byte {}); `mapkv verify` \
         checks every record",
        dir.display(),
        report.log_end
    );
    Ok(ExitCode::SUCCESS)
}

fn print(dir: &Path, r: &RecoveryReport, discard: &Discard, would: bool) {
    let (head, rebuilt, discarded) = if would {
        ("would recover", "would be rebuilt", "would be discarded and zeroed")
    } else {
        ("recovered", "rebuilt", "discarded and zeroed")
    };
    println!("{head} {}", dir.display());
    match r.resumed_from {
        None if r.was_clean() => {
            println!("  index     kept (the store was closed cleanly)");
        }
        Some(at) => println!(
            "  index     {resumed} from the killed writer's last checkpoint, at byte {at} (the \
             store was not closed cleanly; the index is kept as the writer left it)",
            resumed = if would { "would be resumed" } else { "resumed" }
        ),
        None => {
            let why = r.reason.as_deref().unwrap_or("unknown reason");
            println!("  index     {rebuilt} ({why})");
        }
    }
    println!("  replayed  {} records", r.records_replayed);
    println!("  log end   byte {}", r.log_end);
    match (&r.cut, discard.past) {
        (None, None) => println!("  cut       nothing (the log ended cleanly)"),
        (None, Some(at)) => {
            println!("  cut       nothing (the log ended cleanly)");
            println!("  past end  nonzero bytes from byte {at}, where only zeros may be");
            if let Some(end) = discard.tail.filter(|&e| e > at) {
                println!("            bytes {at}..{end} ({} bytes) {discarded}", end - at);
            }
        }
        (Some((offset, kind)), _) => {
            println!("  cut       at byte {offset}: {kind}");
            if let Some(end) = discard.tail.filter(|&e| e > *offset) {
                let n = end - offset;
                println!("            bytes {offset}..{end} ({n} bytes) {discarded}");
            }
        }
    }
}

/// Where the nonzero bytes at and past `from` end in `data`: what a cut at `from` discards
/// (the rest of the file is zeros reserved for growth).
fn tail_end(data: &Path, from: u64) -> Result<u64, Failure> {
    let fail = |e: io::Error| Failure::Failed(format!("reading {}: {e}", data.display()));
    let file = File::open(data).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut end) = (from, from);
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at).map_err(fail)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = at + i as u64 + 1;
        }
        at += n as u64;
    }
    Ok(end)
}

/// Copies bytes `from..to` of `data` to a new file `path`.
fn save(data: &Path, from: u64, to: u64, path: &Path) -> Result<(), Failure> {
    let fail =
        |e: io::Error| Failure::Failed(format!("saving the tail to {}: {e}", path.display()));
    let mut input = File::open(data).map_err(fail)?;
    input.seek(SeekFrom::Start(from)).map_err(fail)?;
    let mut out = FsOpen::new().write(true).create_new(true).open(path).map_err(fail)?;
    let copied = io::copy(&mut input.take(to - from), &mut out).map_err(fail)?;
    out.sync_all().map_err(fail)?;
    println!("saved bytes {from}..{to} ({copied} bytes) of data.mkv to {}", path.display());
    Ok(())
}
