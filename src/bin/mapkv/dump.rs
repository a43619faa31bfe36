//! `mapkv dump DIR`: every live pair as JSON lines, the input format of `mapkv load`.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::prelude::{BASE64_STANDARD, Engine as _};

use mapkv::{CorruptKind, Error};

use crate::{
    Encoding, EncodingArgs, FAILED, Failure, Progress, encode_hex, first_damage, intact, list,
    open_failure, read_only, salvage,
};

/// Write every live pair as JSON lines (the input of `load`)
///
/// One JSON object per line on stdout, in the store's order:
///
///   {"key":"user:42","value":"{\"name\":\"Ada\"}"}
///
/// A key or value that is not valid UTF-8 is written base64-encoded under "key_b64" or
/// "value_b64" instead, so the dump is exact for any bytes. With --base64 every key and
/// value is written that way; with --hex as "key_hex" and "value_hex". `mapkv load` reads
/// all of these forms, so `mapkv dump A | mapkv load B` copies a store exactly.
///
/// With --skip-damaged, a damaged store is salvaged: a pair whose record is damaged is
/// skipped and named on stderr (file and byte offset), and a store too damaged to open (its
/// data file cut short, overwritten, its header pages lost) is read record by record: every
/// record whose checksum holds, before the damage and past it (found again by its header),
/// each key with the last value read (a batch counts whole or not at all). Stderr names each
/// damaged stretch and how many records were read; the exit status is 1 if anything was
/// skipped.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// Salvage: dump every pair that can still be read, name the damage on stderr, and exit
    /// 1 at the end if anything was skipped
    #[arg(long)]
    skip_damaged: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let store = match read_only().open(&args.dir) {
        Ok(store) => store,
        Err(Error::Corrupt { .. }) if args.skip_damaged => return dump_salvaged(&args.dir, enc),
        Err(e) => return Err(open_failure(&args.dir, e)),
    };
    let progress = Progress::new("dumping", Some(store.len()), "keys");
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let (mut dumped, mut skipped) = (0u64, 0u64);
    for item in store.iter() {
        let (key, value) = match item {
            Ok(pair) => pair,
            Err(e) if args.skip_damaged => {
                eprintln!("mapkv: skipped a pair: {}", damaged_pair(&e));
                skipped += 1;
                continue;
            }
            Err(e) => {
                let d = args.dir.display();
                return Err(Failure::Failed(format!(
                    "cannot read a pair: {}\n`mapkv dump --skip-damaged {d}` dumps the other \
                     pairs; `mapkv verify {d}` lists every problem",
                    damaged_pair(&e)
                )));
            }
        };
        pair(&mut out, &key, &value, enc)?;
        dumped += 1;
        progress.inc(1);
    }
    out.flush()?;
    drop(progress);
    if skipped > 0 {
        let s = if skipped == 1 { "" } else { "s" };
        eprintln!("mapkv: {skipped} damaged pair{s} skipped; the other {dumped} were dumped");
        return Ok(ExitCode::from(FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the record of a pair that could not be read is damaged, for stderr.
fn damaged_pair(e: &Error) -> String {
    match e {
        Error::Corrupt { file, offset, kind: CorruptKind::BadIndexSlot { target } } => format!(
            "its index slot ({} at byte {offset}) points at byte {target} of the data file, \
             where no record reads: the record there is damaged, or the slot \
             (`mapkv verify` tells which)",
            file.display()
        ),
        Error::Corrupt { file, offset, kind } => {
            format!("its record is damaged: {} at byte {offset}: {kind}", file.display())
        }
        e => e.to_string(),
    }
}

/// Dumps what can be read of a store that does not open, record by record.
fn dump_salvaged(dir: &Path, enc: Encoding) -> Result<ExitCode, Failure> {
    let s = salvage(dir)?;
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for (key, value) in s.pairs() {
        pair(&mut out, key, value, enc)?;
    }
    out.flush()?;
    let d = dir.display();
    eprintln!("mapkv: {d} does not open: read its data file record by record");
    let listed = list(&s.damage);
    for l in &listed {
        eprintln!("mapkv: {l}");
    }
    let intact = match first_damage(&listed) {
        Some(first) => intact(&s, first),
        None => format!("{} records are intact", s.before + s.after),
    };
    eprintln!("mapkv: {intact}; dumped the {} pairs they hold", s.len());
    Ok(ExitCode::from(FAILED))
}

/// One pair as a JSON line.
fn pair(out: &mut impl Write, key: &[u8], value: &[u8], enc: Encoding) -> std::io::Result<()> {
    out.write_all(b"{")?;
    field(out, "key", key, enc)?;
    out.write_all(b",")?;
    field(out, "value", value, enc)?;
    out.write_all(b"}\n")
}

/// `"name":"text"`, or `"name_b64":"..."` / `"name_hex":"..."`.
fn field(out: &mut impl Write, name: &str, bytes: &[u8], enc: Encoding) -> std::io::Result<()> {
    let (suffix, text) = match (enc, std::str::from_utf8(bytes)) {
        (Encoding::Text, Ok(text)) => ("", Cow::Borrowed(text)),
        (Encoding::Hex, _) => ("_hex", Cow::Owned(encode_hex(bytes))),
        (Encoding::Text | Encoding::Base64, _) => {
            ("_b64", Cow::Owned(BASE64_STANDARD.encode(bytes)))
        }
    };
    write!(out, "\"{name}{suffix}\":")?;
    serde_json::to_writer(&mut *out, &text)?;
    Ok(())
}
