//! `mapkv load DIR [FILE]`: read `mapkv dump`'s JSON lines into a store.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use mapkv::{Batch, MAX_KEY_LEN, MAX_VALUE_LEN};
use serde_json::{Map, Value};

use crate::{Failure, Progress, decode_hex, describe, open_write};

/// Load JSON lines in `dump`'s format (creates the store if missing)
///
/// Reads FILE, or stdin, into the store at DIR (created if missing; existing keys are
/// overwritten, others kept). Each line is one object with the key under exactly one of
/// "key" (text), "key_b64" or "key_hex" and the value likewise under "value", "value_b64"
/// or "value_hex"; blank lines are skipped. Pairs are written in atomic batches and the
/// store is closed cleanly (durable) at the end. A malformed line stops the load with exit
/// 1: nothing of its batch is written, and the message says which pairs before it were.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    /// The input (default: stdin)
    file: Option<PathBuf>,
    /// Pairs per atomic batch
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let (input, name, len): (Box<dyn Read>, String, Option<u64>) = match &args.file {
        Some(path) => {
            let f = File::open(path)
                .map_err(|e| Failure::Failed(format!("cannot read {}: {e}", path.display())))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), path.display().to_string(), len)
        }
        None => {
            if io::stdin().is_terminal() {
                eprintln!("mapkv: reading JSON lines from the terminal; end with Ctrl-D");
            }
            (Box::new(io::stdin().lock()), "stdin".to_string(), None)
        }
    };
    let dir = args.dir.display();
    let store = open_write(&args.dir, true)?;
    let progress = match len {
        Some(len) => Progress::new("loading", Some(len), "bytes"),
        None => Progress::new("loading", None, "pairs"),
    };
    let mut input = BufReader::with_capacity(1 << 16, input);
    let (mut loaded, mut line_no, mut batch_from) = (0u64, 0u64, 1u64);
    let mut batch = Batch::new();
    let mut line = Vec::new();
    let failed = loop {
        line.clear();
        let read = match input.read_until(b'\n', &mut line) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => break Some(format!("{name}: reading line {} failed: {e}", line_no + 1)),
        };
        line_no += 1;
        if !line.trim_ascii().is_empty() {
            match parse(&line) {
                Ok((key, value)) => batch.put(key, value),
                Err(what) => break Some(format!("{name}:{line_no}: {what}")),
            };
        }
        progress.inc(if len.is_some() { read as u64 } else { 1 });
        if batch.len() as u64 >= args.batch_size {
            let n = batch.len() as u64;
            store
                .write(std::mem::take(&mut batch))
                .map_err(|e| write_failed(&e, batch_from, loaded, &args.dir))?;
            (loaded, batch_from) = (loaded + n, line_no + 1);
        }
    };
    if failed.is_none() {
        let n = batch.len() as u64;
        store
            .write(std::mem::take(&mut batch))
            .map_err(|e| write_failed(&e, batch_from, loaded, &args.dir))?;
        loaded += n;
    }
    store.close()?;
    drop(progress);
    match failed {
        None => {
            println!("loaded {loaded} pairs into {dir}");
            Ok(ExitCode::SUCCESS)
        }
        Some(what) => Err(Failure::Failed(format!(
            "{what}\nnothing from line {batch_from} on was written; the {loaded} pairs before \
             it are in {dir} (durable)"
        ))),
    }
}

/// What to say when writing a batch failed.
fn write_failed(e: &mapkv::Error, from: u64, loaded: u64, dir: &Path) -> Failure {
    Failure::Failed(format!(
        "writing the batch from line {from} on failed: {}\nthe {loaded} pairs before it are \
         in {}",
        describe(e),
        dir.display()
    ))
}

/// The key and value of one line.
fn parse(line: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut object: Map<String, Value> =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let key = take(&mut object, "key")?;
    let value = take(&mut object, "value")?;
    if let Some(other) = object.keys().next() {
        return Err(format!("unknown field \"{other}\""));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key of {} bytes, longer than the limit of {MAX_KEY_LEN}", key.len()));
    }
    if value.len() > MAX_VALUE_LEN {
        let len = value.len();
        return Err(format!("value of {len} bytes, longer than the limit of {MAX_VALUE_LEN}"));
    }
    Ok((key, value))
}

/// The bytes of field `name`, given as exactly one of `name`, `name_b64` and `name_hex`.
fn take(object: &mut Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let forms = [name.to_string(), format!("{name}_b64"), format!("{name}_hex")];
    let mut found = forms.iter().filter_map(|f| object.remove(f).map(|v| (f, v)));
    let (field, value) = found.next().ok_or_else(|| {
        format!("no {name} (\"{}\", \"{}\" or \"{}\")", forms[0], forms[1], forms[2])
    })?;
    if let Some((other, _)) = found.next() {
        return Err(format!("both \"{field}\" and \"{other}\""));
    }
    let Value::String(text) = value else {
        return Err(format!("\"{field}\" is not a string"));
    };
    if field.ends_with("_b64") {
        BASE64_STANDARD.decode(&text).map_err(|e| format!("\"{field}\" is not valid base64: {e}"))
    } else if field.ends_with("_hex") {
        decode_hex(&text).ok_or_else(|| format!("\"{field}\" is not valid hexadecimal"))
    } else {
        Ok(text.into_bytes())
    }
}
