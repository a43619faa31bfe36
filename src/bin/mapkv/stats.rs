//! `mapkv stats DIR`: what a store holds and in what state it is.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::{Failure, human_bytes, open_read};

/// Show a store's figures and state
///
/// Format version, store id, live keys, records, garbage, file sizes, index load factor,
/// log end and committed length, and whether it was closed cleanly. Read-only: changes
/// nothing, even after an unclean shutdown.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    /// Print one JSON object instead of aligned lines
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let store = open_read(&args.dir)?;
    let s = store.stats();
    let recovery = store.recovery();
    let clean = recovery.was_clean();
    if args.json {
        let v = json!({
            "path": args.dir.display().to_string(),
            "format_version": mapkv::FORMAT_VERSION,
            "store_id": format!("{:#018x}", store.id()),
            "live_keys": s.live_keys,
            "records": s.records,
            "log_bytes": s.log_bytes,
            "garbage_bytes": s.garbage_bytes,
            "garbage_ratio": s.garbage_ratio,
            "data_file_bytes": s.data_file_bytes,
            "index_file_bytes": s.index_file_bytes,
            "index_load_factor": s.index_load_factor,
            "log_end": s.log_end,
            "committed": s.committed,
            "closed_cleanly": clean && !s.following,
            "writer_open": s.following,
            "index_rebuilt_because": recovery.reason,
            "index_resumed_from": recovery.resumed_from,
            "torn_tail": recovery.cut.as_ref().map(|(offset, kind)| json!({
                "offset": offset,
                "what": kind.to_string(),
            })),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = vec![
        ("store", args.dir.display().to_string()),
        ("format version", mapkv::FORMAT_VERSION.to_string()),
        ("store id", format!("{:#018x}", store.id())),
        ("live keys", s.live_keys.to_string()),
        ("records", format!("{} (puts and deletes in the log)", s.records)),
        ("log", format!("{} bytes ({})", s.log_bytes, human_bytes(s.log_bytes))),
        (
            "garbage",
            format!(
                "{} bytes ({}), {:.1} % of the log",
                s.garbage_bytes,
                human_bytes(s.garbage_bytes),
                s.garbage_ratio * 100.0
            ),
        ),
        ("data file", format!("{} bytes ({})", s.data_file_bytes, human_bytes(s.data_file_bytes))),
        (
            "index file",
            format!("{} bytes ({})", s.index_file_bytes, human_bytes(s.index_file_bytes)),
        ),
        ("index load factor", format!("{:.3}", s.index_load_factor)),
        ("log end", format!("byte {}", s.log_end)),
        ("committed", format!("byte {}", s.committed)),
    ];
    lines.push(match (&recovery.reason, clean) {
        _ if s.following => {
            ("state", "open for writing by another process (figures are its)".into())
        }
        (_, true) => ("closed cleanly", "yes".to_string()),
        _ if recovery.resumed_from.is_some() => (
            "closed cleanly",
            format!(
                "no: the killed writer's index resumed in memory from its checkpoint at byte {} \
                 ({} records replayed)",
                recovery.resumed_from.unwrap_or_default(),
                recovery.records_replayed
            ),
        ),
        (Some(why), false) => ("closed cleanly", format!("no: index rebuilt in memory ({why})")),
        (None, false) => ("closed cleanly", "no: index rebuilt in memory".to_string()),
    });
    if let Some((offset, kind)) = &recovery.cut {
        let what = format!("at byte {offset}: {kind} (`mapkv recover` cuts it)");
        lines.push(("torn tail", what));
    }
    for (name, value) in lines {
        println!("{name:<18} {value}");
    }
    Ok(ExitCode::SUCCESS)
}
