//! `mapkv load DIR [FILE]`: read `mapkv dump`'s JSON lines into a store.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

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
///
/// Ctrl-C (SIGINT) stops the load after the line being read: the pairs of the lines before
/// it are written, the store is closed cleanly, and the message says how many pairs were
/// loaded and from which line (and byte) of the input to resume; exit status 130.
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

/// Exit status after Ctrl-C (128 + SIGINT, as a shell reports a process it ended).
const INTERRUPTED: u8 = 130;

/// Lines the input thread hands over at a time.
const CHUNK_LINES: usize = 256;

/// What the input thread hands over.
enum Input {
    /// The next lines, each with its newline (if it had one).
    Lines(Vec<Vec<u8>>),
    /// The end of the input.
    End,
    /// Reading failed (after the lines handed over before).
    Failed(io::Error),
    /// Ctrl-C.
    Interrupted,
}

/// Why the load stopped before the end of the input.
enum Stop {
    /// A line could not be read or parsed: what to say.
    Failed(String),
    /// Ctrl-C.
    Interrupted,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let (input, name, len): (Box<dyn Read + Send>, String, Option<u64>) = match &args.file {
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
            (Box::new(io::stdin()), "stdin".to_string(), None)
        }
    };
    let dir = args.dir.display();
    let store = open_write(&args.dir, true)?;
    let progress = match len {
        Some(len) => Progress::new("loading", Some(len), "bytes"),
        None => Progress::new("loading", None, "pairs"),
    };
    let lines = read_lines(input);
    // Lines read (`line_no`), pairs written, the first line of the batch being built, and
    // the input's bytes up to the end of line `line_no`.
    let (mut loaded, mut line_no, mut batch_from, mut offset) = (0u64, 0u64, 1u64, 0u64);
    let mut batch = Batch::new();
    let stop = 'read: loop {
        let chunk = match lines.recv() {
            Ok(Input::Lines(chunk)) => chunk,
            Ok(Input::Failed(e)) => {
                break Some(Stop::Failed(format!(
                    "{name}: reading line {} failed: {e}",
                    line_no + 1
                )));
            }
            Ok(Input::End) => break None,
            Ok(Input::Interrupted) => break Some(Stop::Interrupted),
            // The input thread is gone without `End` or `Failed` (it panicked): the input
            // may not have been read to its end.
            Err(mpsc::RecvError) => {
                break Some(Stop::Failed(format!(
                    "{name}: reading line {} failed: the thread reading the input stopped",
                    line_no + 1
                )));
            }
        };
        for line in chunk {
            if INTERRUPT.load(Ordering::Relaxed) {
                break 'read Some(Stop::Interrupted);
            }
            line_no += 1;
            if !line.trim_ascii().is_empty() {
                match parse(&line) {
                    Ok((key, value)) => batch.put(key, value),
                    Err(what) => {
                        break 'read Some(Stop::Failed(format!("{name}:{line_no}: {what}")));
                    }
                };
            }
            offset += line.len() as u64;
            progress.inc(if len.is_some() { line.len() as u64 } else { 1 });
            if batch.len() as u64 >= args.batch_size {
                let n = batch.len() as u64;
                store
                    .write(std::mem::take(&mut batch))
                    .map_err(|e| write_failed(&e, batch_from, loaded, &args.dir))?;
                (loaded, batch_from) = (loaded + n, line_no + 1);
            }
        }
    };
    // After the end of the input or Ctrl-C, the lines read so far are all whole: write them.
    if !matches!(stop, Some(Stop::Failed(_))) {
        let n = batch.len() as u64;
        store
            .write(std::mem::take(&mut batch))
            .map_err(|e| write_failed(&e, batch_from, loaded, &args.dir))?;
        loaded += n;
    }
    store.close()?;
    drop(progress);
    match stop {
        None => {
            println!("loaded {loaded} pairs into {dir}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Stop::Interrupted) if line_no == 0 => {
            eprintln!("mapkv: interrupted before the first line of {name}: nothing was loaded");
            Ok(ExitCode::from(INTERRUPTED))
        }
        Some(Stop::Interrupted) => {
            let next = line_no + 1;
            let resume = match &args.file {
                Some(_) => format!("`tail -n +{next} {name} | mapkv load {dir}`"),
                None => format!("`tail -n +{next} INPUT | mapkv load {dir}`"),
            };
            eprintln!(
                "mapkv: interrupted: loaded {loaded} pairs into {dir}, from lines 1 to {line_no} \
                 of {name}, and closed it cleanly (durable)\nto resume, load {name} from line \
                 {next} (byte {offset}) on: {resume}"
            );
            Ok(ExitCode::from(INTERRUPTED))
        }
        Some(Stop::Failed(what)) => Err(Failure::Failed(format!(
            "{what}\nnothing from line {batch_from} on was written; the {loaded} pairs before \
             it are in {dir} (durable)"
        ))),
    }
}

/// Set by Ctrl-C: the load stops at the next line.
static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Reads `input` line by line on a thread of its own, handing the lines over in chunks,
/// so that Ctrl-C stops the load even while the input has nothing to read.
fn read_lines(input: Box<dyn Read + Send>) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(16);
    let on_interrupt = tx.clone();
    // Without the handler (it cannot be installed), Ctrl-C ends the process at once, as
    // before: the store is then recovered when it is next opened.
    let _ = ctrlc::set_handler(move || {
        INTERRUPT.store(true, Ordering::Relaxed);
        let _ = on_interrupt.try_send(Input::Interrupted); // if full, the flag is enough
    });
    std::thread::spawn(move || {
        let mut input = BufReader::with_capacity(1 << 16, input);
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_LINES);
            let mut failed = None;
            let mut done = false;
            // Up to a chunk, and no more than is there without waiting: lines that trickle
            // in are loaded as they come.
            while chunk.len() < CHUNK_LINES && (chunk.is_empty() || !input.buffer().is_empty()) {
                let mut line = Vec::new();
                match input.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(_) => chunk.push(line),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if !chunk.is_empty() && tx.send(Input::Lines(chunk)).is_err() {
                return; // the load stopped
            }
            if let Some(e) = failed {
                let _ = tx.send(Input::Failed(e));
                return;
            }
            if done {
                let _ = tx.send(Input::End);
                return;
            }
        }
    });
    rx
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
