//! `mapkv dump DIR`: every live pair as JSON lines, the input format of `mapkv load`.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::prelude::{BASE64_STANDARD, Engine as _};

use crate::{Encoding, EncodingArgs, FAILED, Failure, Progress, describe, encode_hex, open_read};

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
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// Salvage: report pairs whose records are damaged on stderr, dump the rest, and exit 1
    /// at the end if any were skipped
    #[arg(long)]
    skip_damaged: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let store = open_read(&args.dir)?;
    let progress = Progress::new("dumping", Some(store.len()), "keys");
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut skipped = 0u64;
    for item in store.iter() {
        let (key, value) = match item {
            Ok(pair) => pair,
            Err(e) if args.skip_damaged => {
                eprintln!("mapkv: skipped a damaged pair: {e}");
                skipped += 1;
                continue;
            }
            Err(e) => return Err(Failure::Failed(describe(&e))),
        };
        out.write_all(b"{")?;
        field(&mut out, "key", &key, enc)?;
        out.write_all(b",")?;
        field(&mut out, "value", &value, enc)?;
        out.write_all(b"}\n")?;
        progress.inc(1);
    }
    out.flush()?;
    drop(progress);
    if skipped > 0 {
        eprintln!("mapkv: {skipped} damaged pairs skipped; the rest was dumped");
        return Ok(ExitCode::from(FAILED));
    }
    Ok(ExitCode::SUCCESS)
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
