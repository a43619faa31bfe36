//! `mapkv keys DIR [--prefix P] [--limit N]`: list keys.

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{EncodingArgs, Failure, Output, open_read};

/// List keys, one per line
///
/// Live keys in the store's order (hash order: pipe to `sort` for another), raw to a pipe,
/// escaped to a terminal, encoded with --hex/--base64 (use one of those, or `dump`, when
/// keys may contain newlines).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store directory
    dir: PathBuf,
    #[command(flatten)]
    enc: EncodingArgs,
    /// Only keys starting with these bytes (decoded per --hex/--base64); a scan of all keys
    #[arg(long, value_name = "P")]
    prefix: Option<OsString>,
    /// At most N keys
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let enc = args.enc.encoding();
    let prefix = args.prefix.map(|p| enc.decode("--prefix", &p)).transpose()?;
    let prefix = prefix.as_deref().unwrap_or_default();
    let store = open_read(&args.dir)?;
    let output = Output::stdout(enc);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut left = args.limit.unwrap_or(u64::MAX);
    for item in store.iter() {
        if left == 0 {
            break;
        }
        let (key, _) = item?;
        if key.starts_with(prefix) {
            output.write(&mut out, &key, b"\n")?;
            left -= 1;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
