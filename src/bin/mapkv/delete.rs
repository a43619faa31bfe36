//! `mapkv delete DIR KEY`: one delete, durable when the command returns.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{EncodingArgs, FAILED, Failure, open_write};

/// Delete a key (exit 1 if absent, unless --force)
///
/// KEY is decoded per --hex/--base64. Durable when the command returns. Exits 1 when the key
/// was absent, unless --force is given.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// The key
    key: OsString,
    /// Succeed when the key is absent too
    #[arg(long, short)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let key = enc.decode("KEY", &args.key)?;
    let store = open_write(&args.dir, false)?;
    let existed = store.delete(&key)?;
    store.close()?;
    if existed || args.force {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("mapkv: key not found; nothing deleted");
        Ok(ExitCode::from(FAILED))
    }
}
