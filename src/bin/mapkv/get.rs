//! `mapkv get DIR KEY`: one value.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{EncodingArgs, FAILED, Failure, Output, open_read};

/// Print the value of a key (exit 1 if absent)
///
/// The value goes raw to a pipe or file (exactly its bytes, no newline added), escaped and
/// followed by a newline to a terminal, encoded with --hex/--base64. Exits 1 when the key is
/// absent.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// The key (decoded per --hex/--base64)
    key: OsString,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let key = enc.decode("KEY", &args.key)?;
    let store = open_read(&args.dir)?;
    let Some(value) = store.get(&key)? else {
        eprintln!("mapkv: key not found");
        return Ok(ExitCode::from(FAILED));
    };
    let mut out = std::io::stdout().lock();
    Output::stdout(enc).write(&mut out, &value, b"")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
