//! `mapkv`: look inside a mapkv store, check it, repair it and move data in and out from the
//! shell, as `mdb_stat`, `mdb_dump` and `mdb_load` do for LMDB. One module per subcommand;
//! this file holds the argument parser, the dispatch and what the subcommands share: opening
//! a store, encoding keys and values, writing them out, errors, exit codes and progress.
//!
//! Exit codes: 0 success; 1 failure (a missing or locked store, an absent key, a damaged
//! store, an I/O error); 2 a usage error (clap's own, or a KEY/VALUE that is not valid
//! hex/base64).

mod compact;
mod copy;
mod delete;
mod dump;
mod get;
mod keys;
mod load;
mod put;
mod recover;
mod stats;
mod verify;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mapkv::{CorruptKind, Error, OpenOptions, Problem, Salvage, Store};

/// Inspect, check, repair, dump and load mapkv stores.
///
/// Keys and values are text (the argument's bytes, UTF-8 as a rule) unless --hex or
/// --base64 is given to get, put, delete, keys or dump; then KEY/VALUE arguments are
/// decoded and printed keys and values are encoded that way. Without them, values go raw to
/// a pipe or file and escaped to a terminal.
///
/// Exit status: 0 success, 1 failure (missing or locked store, absent key, damaged store),
/// 2 usage error.
#[derive(Parser, Debug)]
#[command(name = "mapkv", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// --hex and --base64, for the subcommands that take or print keys and values.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct EncodingArgs {
    /// Keys and values in hexadecimal (arguments and output)
    #[arg(long, conflicts_with = "base64")]
    hex: bool,
    /// Keys and values in base64, standard and padded (arguments and output)
    #[arg(long)]
    base64: bool,
}

impl EncodingArgs {
    pub fn encoding(self) -> Encoding {
        match (self.hex, self.base64) {
            (true, _) => Encoding::Hex,
            (_, true) => Encoding::Base64,
            _ => Encoding::Text,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    Stats(stats::Args),
    Get(get::Args),
    Put(put::Args),
    Delete(delete::Args),
    Keys(keys::Args),
    Dump(dump::Args),
    Load(load::Args),
    Verify(verify::Args),
    Compact(compact::Args),
    Copy(copy::Args),
    Recover(recover::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2 here
    let result = match cli.command {
        Command::Stats(a) => stats::run(a),
        Command::Get(a) => get::run(a),
        Command::Put(a) => put::run(a),
        Command::Delete(a) => delete::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Dump(a) => dump::run(a),
        Command::Load(a) => load::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Compact(a) => compact::run(a),
        Command::Copy(a) => copy::run(a),
        Command::Recover(a) => recover::run(a),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`mapkv keys DIR | head`): nobody to tell.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mapkv: {failure}");
            ExitCode::from(failure.code())
        }
    }
}

// ---- exit codes and errors --------------------------------------------------------------

/// Exit status of a failure, an absent key or a damaged store.
pub const FAILED: u8 = 1;
/// Exit status of a usage error (as clap's).
pub const USAGE: u8 = 2;

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum Failure {
    /// The arguments make no sense (exit 2).
    Usage(String),
    /// The work failed (exit 1); the message says what and, where possible, what to do.
    Failed(String),
    /// Writing to stdout failed (exit 1, or 0 for a closed pipe).
    Output(io::Error),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => USAGE,
            Self::Failed(_) | Self::Output(_) => FAILED,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
            Self::Output(e) => write!(f, "writing the output failed: {e}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Output(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Failed(describe(&e))
    }
}

/// The library's message, with a pointer to `mapkv verify` for damage.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Corrupt { .. } => format!("{e}\n(`mapkv verify DIR` lists every problem)"),
        _ => e.to_string(),
    }
}

// ---- opening ----------------------------------------------------------------------------

/// Opens an existing store for reading only (no lock; nothing on disk changes, even after
/// an unclean shutdown: the index is then rebuilt in memory). Beside a live writer it
/// follows the writer (DESIGN.md §4). Every value's checksum is verified before it is
/// served.
pub fn open_read(dir: &Path) -> Result<Store, Failure> {
    read_only().open(dir).map_err(|e| open_failure(dir, e))
}

/// The options of [`open_read`].
pub fn read_only() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read_only(true).create(false).verify_checksums(true);
    options
}

/// Opens a store for writing (an exclusive lock); `create` makes it if missing. Opening
/// recovers a store that was not closed cleanly (DESIGN.md §6).
pub fn open_write(dir: &Path, create: bool) -> Result<Store, Failure> {
    let mut options = writable(false);
    options.create(create).open(dir).map_err(|e| open_failure(dir, e))
}

/// The options of [`open_write`] (without `create`), rebuilding the index if asked.
pub fn writable(rebuild_index: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(false).verify_checksums(true).rebuild_index(rebuild_index);
    options
}

/// What to tell the user when a store does not open.
pub fn open_failure(path: &Path, e: Error) -> Failure {
    let dir = path.display();
    Failure::Failed(match e {
        Error::NotFound { .. } => format!("no mapkv store at {dir} (no data.mkv there)"),
        Error::Locked { read_only: true, .. } => format!(
            "store {dir} is held by a writer that cannot be followed (an older mapkv, or one \
             still opening the store); retry in a moment or when it has closed the store"
        ),
        Error::Locked { read_only: false, .. } => format!(
            "store {dir} is open for writing by another process (one writer at a time); the \
             read-only commands (stats, get, keys, dump, verify, copy) work beside it; retry this \
             one when that process has closed the store"
        ),
        e @ Error::Corrupt { .. } => damaged_store(path, &e),
        e => format!("cannot open store {dir}: {}", describe(&e)),
    })
}

// ---- damaged stores ---------------------------------------------------------------------

/// Reads, record by record, what can be read of the data file of the store in `dir`, which
/// did not open (`mapkv::salvage`; nothing changes), or says why nothing can be.
pub fn salvage(dir: &Path) -> Result<Salvage, Failure> {
    mapkv::salvage(dir).map_err(|e| {
        Failure::Failed(match e {
            Error::Corrupt { file, kind: CorruptKind::BadMagic, .. } => format!(
                "{} is not a mapkv data file (neither header copy has mapkv's magic number, \
                 and no mapkv record is where the first one would be)",
                file.display()
            ),
            Error::Corrupt { file, kind: kind @ CorruptKind::TooShort { .. }, .. } => {
                format!("{} is not a mapkv data file ({kind})", file.display())
            }
            Error::Corrupt { file, kind: CorruptKind::NoValidHeader, .. } => format!(
                "both header copies of {} are damaged and the index does not name the store's \
                 id either, so no record's checksum can be checked: nothing can be salvaged",
                file.display()
            ),
            // Not `open_failure`, which salvages to describe damage.
            e @ Error::Corrupt { .. } => format!("cannot read {}: {}", dir.display(), describe(&e)),
            e => open_failure(dir, e).to_string(),
        })
    })
}

/// A problem as listed: a knock-on follows the problem at its root.
pub struct Listed<'a> {
    pub problem: &'a Problem,
    /// The position in the list of the problem this one follows from.
    pub knock_on_of: Option<usize>,
}

/// `problems` in the order to list them: by file (the data file first: the index is built
/// from it), then by offset, each knock-on right after its root (see `mapkv verify --help`).
pub fn list(problems: &[Problem]) -> Vec<Listed<'_>> {
    let rank = |p: &Problem| match p.file.file_name().and_then(|n| n.to_str()) {
        Some("data.mkv") => 0,
        Some("index.mkv") => 1,
        _ => 2,
    };
    let mut sorted: Vec<&Problem> = problems.iter().collect();
    sorted.sort_by_key(|p| (rank(p), p.offset));
    // The problem each one follows from directly, as a position in `sorted`.
    let cause: Vec<Option<usize>> = sorted
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let same_file = |q: &&Problem| q.file == p.file;
            let direct = match p.kind {
                CorruptKind::UnfinishedBatch { .. } => sorted.iter().position(|q| {
                    same_file(q)
                        && q.offset > p.offset
                        && !matches!(q.kind, CorruptKind::UnfinishedBatch { .. })
                }),
                CorruptKind::BadField { field: "live key count", .. } => {
                    let disagrees =
                        |q: &&Problem| matches!(q.kind, CorruptKind::IndexDisagrees { .. });
                    sorted.iter().position(|q| same_file(q) && disagrees(q))
                }
                _ => None,
            };
            direct.or_else(|| sorted[..i].iter().position(|q| same_file(q) && q.offset == p.offset))
        })
        .collect();
    // ...and the root it follows from in the end (`None`: it is a root).
    let root: Vec<Option<usize>> = (0..sorted.len())
        .map(|i| {
            let mut at = cause[i]?;
            for _ in 0..sorted.len() {
                match cause[at] {
                    Some(next) if next != i => at = next,
                    Some(_) => return None, // a circle: list it as a root
                    None => return Some(at),
                }
            }
            None
        })
        .collect();
    let mut out: Vec<Listed<'_>> = Vec::with_capacity(sorted.len());
    for (i, p) in sorted.iter().enumerate() {
        if root[i].is_some() {
            continue;
        }
        let at = out.len();
        out.push(Listed { problem: p, knock_on_of: None });
        for (j, q) in sorted.iter().enumerate() {
            if root[j] == Some(i) {
                out.push(Listed { problem: q, knock_on_of: Some(at) });
            }
        }
    }
    out
}

impl std::fmt::Display for Listed<'_> {
    /// The problem, and a knock-on indented and marked as one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.knock_on_of.is_some() {
            f.write_str("  knock-on: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// The damage at the root of a [`list`] (the first that is not a knock-on of another).
pub fn first_damage<'a>(listed: &[Listed<'a>]) -> Option<&'a Problem> {
    listed.iter().find(|l| l.knock_on_of.is_none()).map(|l| l.problem)
}

/// `p` as a sentence: "FILE is damaged at byte N: what".
pub fn damaged_at(p: &Problem) -> String {
    format!("{} is damaged at byte {}: {}", p.file.display(), p.offset, p.kind)
}

/// What of the log `s` holds intact, said of `first`, the damage at its root.
pub fn intact(s: &Salvage, first: &Problem) -> String {
    // Offset 0: the header (or the whole file), not a record.
    let mut m = if first.offset == 0 {
        format!("{} records of its log are intact", s.before + s.after)
    } else {
        let at = first.offset;
        format!("the {} records before the damage at byte {at} are intact", s.before)
    };
    if first.offset != 0 && s.after > 0 {
        let _ = write!(m, ", and {} more past it", s.after);
    }
    if s.dropped > 0 {
        let _ = write!(
            m,
            " ({} records of batches the damage broke are not: a batch counts whole or not at \
             all)",
            s.dropped
        );
    }
    m
}

/// The damage at the root of a store that does not open, and what of its log is intact.
pub struct Damage {
    /// "FILE is damaged at byte N: what".
    pub what: String,
    /// Where it is (0: the header, not a record).
    pub offset: u64,
    /// What of the log is intact ([`intact`]).
    pub intact: String,
}

/// The damage that keeps the store in `dir` from opening (`e`: the fault open met), as
/// reading the data file record by record finds it: the damage at the root (not only the
/// first fault that open met), and what is still intact.
///
/// # Errors
/// Why the data file cannot be read record by record, or, if it shows no damage, `e`.
pub fn damage(dir: &Path, e: &Error) -> Result<Damage, Failure> {
    let s = salvage(dir)?;
    let first = first_damage(&list(&s.damage)).ok_or_else(|| Failure::Failed(describe(e)))?;
    Ok(Damage { what: damaged_at(first), offset: first.offset, intact: intact(&s, first) })
}

/// What to say when the store in `dir` does not open because it is damaged (`e`): the
/// [`damage`], and how to save what is intact.
pub fn damaged_store(dir: &Path, e: &Error) -> String {
    let d = dir.display();
    match damage(dir, e) {
        Ok(x) => format!(
            "cannot open store {d}: {}\n{}: `mapkv dump --skip-damaged {d}` dumps their pairs \
             (`mapkv verify {d}` lists every problem)",
            x.what, x.intact
        ),
        Err(not) => format!("cannot open store {d}: {not}"),
    }
}

// ---- keys and values --------------------------------------------------------------------

/// How keys and values are given on the command line and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The argument's bytes as they are; printed raw to a pipe, escaped to a terminal.
    Text,
    /// Hexadecimal (either case in, lower case out).
    Hex,
    /// Standard base64, padded.
    Base64,
}

impl Encoding {
    /// The bytes a KEY/VALUE argument (`what`) stands for.
    pub fn decode(self, what: &str, arg: &OsStr) -> Result<Vec<u8>, Failure> {
        let text =
            || arg.to_str().ok_or_else(|| Failure::Usage(format!("{what} is not valid {self}")));
        match self {
            Self::Text => Ok(arg.as_bytes().to_vec()),
            Self::Hex => decode_hex(text()?)
                .ok_or_else(|| Failure::Usage(format!("{what} is not valid hexadecimal"))),
            Self::Base64 => BASE64_STANDARD
                .decode(text()?)
                .map_err(|e| Failure::Usage(format!("{what} is not valid base64: {e}"))),
        }
    }

    /// `bytes` in this encoding; `None` for text, which is written raw or escaped.
    pub fn encode(self, bytes: &[u8]) -> Option<String> {
        match self {
            Self::Text => None,
            Self::Hex => Some(encode_hex(bytes)),
            Self::Base64 => Some(BASE64_STANDARD.encode(bytes)),
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Hex => "hexadecimal",
            Self::Base64 => "base64",
        })
    }
}

pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    s.as_bytes().chunks(2).map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
}

/// Writes keys and values to stdout as the user asked: encoded and on a line of its own
/// with --hex/--base64; otherwise escaped, on a line, to a terminal, and raw to a pipe or
/// a file (followed by `raw_end`: nothing for a single value, a newline for a list).
#[derive(Debug, Clone, Copy)]
pub struct Output {
    enc: Encoding,
    terminal: bool,
}

impl Output {
    pub fn stdout(enc: Encoding) -> Self {
        Self { enc, terminal: io::stdout().is_terminal() }
    }

    pub fn write(&self, out: &mut impl Write, bytes: &[u8], raw_end: &[u8]) -> io::Result<()> {
        match self.enc.encode(bytes) {
            Some(text) => writeln!(out, "{text}"),
            None if self.terminal => writeln!(out, "{}", escape(bytes)),
            None => {
                out.write_all(bytes)?;
                out.write_all(raw_end)
            }
        }
    }
}

/// `bytes` made safe for a terminal: valid UTF-8 stays as it is, except backslashes,
/// control characters and invisible direction/width marks, which are escaped (`\\`, `\n`,
/// `\t`, `\r`, `\xNN`, `\u{NNNN}`); bytes that are not UTF-8 become `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let _ = match c {
                '\\' => s.write_str("\\\\"),
                '\n' => s.write_str("\\n"),
                '\t' => s.write_str("\\t"),
                '\r' => s.write_str("\\r"),
                c if c.is_ascii_control() => write!(s, "\\x{:02x}", c as u32),
                c if c.is_control() || is_invisible(c) => write!(s, "\\u{{{:04x}}}", c as u32),
                c => s.write_char(c),
            };
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// Format characters that can hide or reorder text on a terminal.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

// ---- numbers ----------------------------------------------------------------------------

/// `n` bytes in binary units, e.g. "1.5 MiB" (exact below 1 KiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut v, mut unit) = (n as f64 / 1024.0, 0);
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

// ---- progress ---------------------------------------------------------------------------

/// How long work runs before its progress is drawn.
const PROGRESS_AFTER: Duration = Duration::from_millis(500);

/// A progress bar (or a spinner, without a length) on stderr, drawn only when stderr is a
/// terminal and the work has taken longer than [`PROGRESS_AFTER`]; cleared when dropped.
pub struct Progress {
    bar: ProgressBar,
    reveal: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Progress {
    /// A bar of `len` steps of `unit` ("keys", "bytes"), or without a length a spinner with
    /// the steps so far (none shown for an empty `unit`) and the elapsed time.
    pub fn new(message: &'static str, len: Option<u64>, unit: &str) -> Self {
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
        if !io::stderr().is_terminal() {
            return Self { bar, reveal: None };
        }
        let template = match (len, unit) {
            (None, "") => "{spinner} {msg} ({elapsed})".to_string(),
            (None, unit) => format!("{{spinner}} {{msg}} {{human_pos}} {unit} ({{elapsed}})"),
            (Some(_), "bytes") => {
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)".to_string()
            }
            (Some(_), unit) => {
                format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{eta}} left)")
            }
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        let (tx, rx) = mpsc::channel::<()>();
        let shown = bar.clone();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(PROGRESS_AFTER) {
                shown.set_draw_target(ProgressDrawTarget::stderr());
                shown.enable_steady_tick(Duration::from_millis(100));
            }
        });
        Self { bar, reveal: Some((tx, thread)) }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.reveal.take() {
            drop(tx); // wakes the thread at once if it is still waiting
            let _ = thread.join();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_text_and_escapes_the_rest() {
        assert_eq!(escape("héllo wörld".as_bytes()), "héllo wörld");
        assert_eq!(escape(b"a\\b\n\t\r\x00\x1b[31m"), "a\\\\b\\n\\t\\r\\x00\\x1b[31m");
        assert_eq!(escape(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
        assert_eq!(escape("x\u{202e}y\u{85}".as_bytes()), "x\\u{202e}y\\u{0085}");
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_hex(&encode_hex(&all)).as_deref(), Some(&all[..]));
        assert_eq!(decode_hex("00FFaB"), Some(vec![0, 0xff, 0xab]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("+1"), None);
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn problem(file: &str, offset: u64, kind: CorruptKind) -> Problem {
        Problem { file: std::path::PathBuf::from("db").join(file), offset, kind }
    }

    #[test]
    fn problems_are_listed_by_file_and_offset_with_knock_ons_under_their_root() {
        let unfinished = CorruptKind::UnfinishedBatch { records: 2 };
        let checksum = CorruptKind::ChecksumMismatch { expected: 1, found: 2 };
        let disagrees = |record| CorruptKind::IndexDisagrees { record };
        let count = CorruptKind::BadField { field: "live key count", value: 3 };
        let problems = [
            problem("index.mkv", 0, count.clone()),
            problem("index.mkv", 9000, disagrees(8240)),
            problem("data.mkv", 9000, CorruptKind::BadRecord { kind: 0x7f }),
            problem("index.mkv", 5000, disagrees(8200)),
            problem("data.mkv", 8600, unfinished.clone()),
            problem("index.mkv", 5000, disagrees(8280)),
            problem("data.mkv", 8192, checksum.clone()),
        ];
        let got: Vec<_> = list(&problems)
            .iter()
            .map(|l| (l.problem.file.display().to_string(), l.problem.offset, l.knock_on_of))
            .collect();
        let want = [
            ("db/data.mkv", 8192, None),
            ("db/data.mkv", 9000, None),
            ("db/data.mkv", 8600, Some(1)), // the batch the damage at 9000 broke
            ("db/index.mkv", 5000, None),
            ("db/index.mkv", 0, Some(3)), // the count, off because the slots are
            ("db/index.mkv", 5000, Some(3)), // the same slot
            ("db/index.mkv", 9000, None),
        ];
        let want: Vec<_> = want.iter().map(|&(f, o, k)| (f.to_string(), o, k)).collect();
        assert_eq!(got, want);
    }
}
