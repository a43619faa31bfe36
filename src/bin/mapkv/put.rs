//! `mapkv put DIR KEY VALUE`: one write, durable when the command returns.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{EncodingArgs, Failure, open_write};

/// Set a key to a value
///
/// KEY and VALUE are decoded per --hex/--base64. Durable when the command returns (the store
/// is closed cleanly). The store must exist unless --create is given.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// The key
    key: OsString,
    /// The value
    value: OsString,
    /// Create the store if there is none at DIR
    #[arg(long)]
    create: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let key = enc.decode("KEY", &args.key)?;
    let value = enc.decode("VALUE", &args.value)?;
    let store = open_write(&args.dir, args.create)?;
    store.put(&key, &value)?;
    store.close()?;
    Ok(ExitCode::SUCCESS)
}
