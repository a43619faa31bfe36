//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mapkv.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation on a file.
    Io {
        /// What mapkv was doing ("map", "flush", "allocate", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A file's bytes are not what mapkv wrote.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage within `file`.
        offset: u64,
        /// What was wrong there.
        kind: CorruptKind,
    },
    /// The file was written by a format version this build does not read.
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Another handle (in this or another process) writes the store: one writer at a time.
    /// For a read-only open: a writer holds it that cannot be followed (DESIGN.md §4).
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Whether the refused open asked for read-only access.
        read_only: bool,
    },
    /// `OpenOptions::create(false)` and there is no store at `path`.
    NotFound {
        /// The store directory.
        path: PathBuf,
    },
    /// A write was attempted through a handle opened with `read_only(true)`.
    ReadOnly,
    /// An earlier flush failed; this handle no longer accepts any call.
    Poisoned {
        /// The failure that poisoned the handle (also this error's `source()`), with its
        /// operating system error where it had one.
        cause: Arc<Error>,
    },
    /// A compaction gave up: the writers kept more than it may copy while they wait
    /// ahead of it, round after round. Nothing changed; automatic compaction tries again
    /// by itself.
    CompactionOutrun {
        /// Bytes of log the writers were ahead when it gave up.
        behind: u64,
    },
    /// A compaction stopped because the store handle that ran it in the background is
    /// being dropped. Nothing changed.
    CompactionStopped,
    /// The key is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    KeyTooLarge {
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    ValueTooLarge {
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What exactly was wrong with damaged bytes (see [`Error::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The file is shorter than its fixed header.
    TooShort {
        /// Its length.
        len: u64,
        /// The least length a valid file has.
        min: u64,
    },
    /// The magic number is not mapkv's.
    BadMagic,
    /// Both copies of the data file header fail their checksum.
    NoValidHeader,
    /// Stored and computed CRC-32 differ.
    ChecksumMismatch {
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum of the bytes found.
        found: u32,
    },
    /// A length field points past the end of the file or of the log.
    LengthPastEnd {
        /// Where the structure would end.
        end: u64,
        /// Where the valid bytes end.
        limit: u64,
    },
    /// A record's kind byte (or a reserved field) has a value no version writes.
    BadRecord {
        /// The byte found.
        kind: u8,
    },
    /// A header field holds an impossible value.
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The index file belongs to another store.
    ForeignIndex {
        /// This store's id.
        expected: u64,
        /// The id in the index header.
        found: u64,
    },
    /// An index slot points at something that is not a record.
    BadIndexSlot {
        /// The offset the slot holds.
        target: u64,
    },
    /// The index does not point at the latest record of a key (the record at `record`), or
    /// points at a record that is not its key's latest.
    IndexDisagrees {
        /// The record concerned.
        record: u64,
    },
    /// Zeros where a record should start, with data again further on: a write that never
    /// reached the disk.
    ZeroGap {
        /// Where nonzero bytes resume.
        data_at: u64,
    },
    /// A batch whose commit record never followed: the writer stopped in the middle of it.
    UnfinishedBatch {
        /// Records of the batch that were found.
        records: u64,
    },
    /// A record out of place in the batch structure: a commit record without its batch
    /// (or naming another start or count), or an unbatched record inside a batch.
    BadBatch,
    /// Nonzero bytes in the data file past the end of the log, where every byte must be
    /// zero (DESIGN.md §2): a later record landing there could make them read as part of
    /// the log. The offset given with it is the first such byte.
    NonzeroPastEnd {
        /// Where the log ends.
        log_end: u64,
    },
}

impl CorruptKind {
    /// The same fault with positions measured from the start of the file rather than from
    /// `base` (where the decoded structure starts).
    pub(crate) fn at(self, base: u64) -> Self {
        match self {
            Self::LengthPastEnd { end, limit } => Self::LengthPastEnd {
                end: end.saturating_add(base),
                limit: limit.saturating_add(base),
            },
            other => other,
        }
    }
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len, min } => {
                write!(f, "file is {len} bytes, shorter than the {min}-byte header")
            }
            Self::BadMagic => f.write_str("bad magic number: not a mapkv file"),
            Self::NoValidHeader => f.write_str("both header copies are damaged"),
            Self::ChecksumMismatch { expected, found } => {
                write!(f, "checksum mismatch (stored {expected:#010x}, computed {found:#010x})")
            }
            Self::LengthPastEnd { end, limit } => {
                write!(f, "length reaches byte {end}, past the end at {limit}")
            }
            Self::BadRecord { kind } => write!(f, "invalid record kind or flags {kind:#04x}"),
            Self::BadField { field, value } => write!(f, "impossible {field} {value}"),
            Self::ForeignIndex { expected, found } => {
                write!(f, "index belongs to store {found:#018x}, not this store {expected:#018x}")
            }
            Self::BadIndexSlot { target } => {
                write!(f, "index slot points at {target}, which is not a record")
            }
            Self::IndexDisagrees { record } => write!(
                f,
                "index and log disagree about the latest record of the key at byte {record}"
            ),
            Self::ZeroGap { data_at } => {
                write!(f, "zeros where a record should start, with data again at byte {data_at}")
            }
            Self::UnfinishedBatch { records } => write!(
                f,
                "a batch of {records} records without its commit record (the writer stopped \
                 before the batch was complete, so none of it counts)"
            ),
            Self::BadBatch => f.write_str(
                "a record out of place in a batch (a commit without its batch, or an \
                 unbatched record inside one)",
            ),
            Self::NonzeroPastEnd { log_end } => write!(
                f,
                "nonzero bytes past the end of the log (which ends at byte {log_end}), where \
                 the data file must hold only zeros, or a later record could make them read \
                 as part of the log; run `mapkv recover` (or open for writing with \
                 OpenOptions::zero_past_end) to zero them: no record is lost"
            ),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { op, path, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())?;
                if source.raw_os_error() == Some(libc::ENOSPC) {
                    f.write_str(
                        " (the disk is full: free space, then retry; synced data is safe)",
                    )?;
                }
                Ok(())
            }
            Self::Corrupt { file, offset, kind } => {
                write!(f, "{} is damaged at byte {offset}: {kind}; ", file.display())?;
                let index = file.file_name().is_some_and(|n| n == crate::format::INDEX_FILE);
                match kind {
                    CorruptKind::BadIndexSlot { .. } => f.write_str(
                        "either the index or data.mkv is damaged: Store::verify tells which (if \
                         only the index, open with OpenOptions::rebuild_index or run `mapkv \
                         recover --rebuild-index`)",
                    ),
                    CorruptKind::NonzeroPastEnd { .. } => {
                        f.write_str("the records below it are not affected")
                    }
                    _ if index => f.write_str(
                        "rebuild it from the data file (OpenOptions::rebuild_index, or `mapkv \
                         recover --rebuild-index`)",
                    ),
                    _ => f.write_str("restore the store from a backup"),
                }
            }
            Self::UnsupportedVersion { file, found, supported } => write!(
                f,
                "{} has format version {found}, but this build of mapkv reads version \
                 {supported}; open it with a matching mapkv release",
                file.display()
            ),
            Self::Locked { path, read_only: false } => write!(
                f,
                "store {} is open for writing by another handle or process (one writer at a \
                 time); close it first, or open this one read-only to follow it",
                path.display()
            ),
            Self::Locked { path, read_only: true } => write!(
                f,
                "store {} is held by a writer that cannot be followed (a mapkv without \
                 cross-process readers, a writer still opening the store, or a system \
                 without /proc/sys/kernel/random/boot_id); retry when it has opened or \
                 closed it",
                path.display()
            ),
            Self::NotFound { path } => write!(
                f,
                "no mapkv store at {}; open with create(true) to make one",
                path.display()
            ),
            Self::ReadOnly => f.write_str("this store handle is read-only; reopen it writable"),
            Self::Poisoned { cause } => write!(
                f,
                "an earlier flush failed ({cause}); this handle refuses all calls: drop it and \
                 reopen the store, which recovers everything that was made durable"
            ),
            Self::CompactionOutrun { behind } => write!(
                f,
                "compaction gave up: the writers kept {behind} bytes of log ahead of it, more                  than it copies while they wait; nothing changed. Retry when writes slow                  down (automatic compaction retries by itself)"
            ),
            Self::CompactionStopped => f.write_str(
                "compaction stopped because its store handle is being dropped; nothing changed",
            ),
            Self::KeyTooLarge { len, max } => {
                write!(f, "key of {len} bytes is longer than the limit of {max} bytes")
            }
            Self::ValueTooLarge { len, max } => {
                write!(f, "value of {len} bytes is longer than the limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Poisoned { cause } => Some(&**cause),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }

    /// A copy to keep (the poisoning failure: the call that met it returns the original).
    /// An operating system error keeps its code and kind; another `io::Error` keeps its
    /// kind and message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Io { op, path, source } => Self::Io {
                op,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Self::Corrupt { file, offset, kind } => {
                Self::Corrupt { file: file.clone(), offset: *offset, kind: kind.clone() }
            }
            Self::UnsupportedVersion { file, found, supported } => Self::UnsupportedVersion {
                file: file.clone(),
                found: *found,
                supported: *supported,
            },
            Self::Locked { path, read_only } => {
                Self::Locked { path: path.clone(), read_only: *read_only }
            }
            Self::NotFound { path } => Self::NotFound { path: path.clone() },
            Self::ReadOnly => Self::ReadOnly,
            Self::Poisoned { cause } => Self::Poisoned { cause: Arc::clone(cause) },
            Self::CompactionOutrun { behind } => Self::CompactionOutrun { behind: *behind },
            Self::CompactionStopped => Self::CompactionStopped,
            Self::KeyTooLarge { len, max } => Self::KeyTooLarge { len: *len, max: *max },
            Self::ValueTooLarge { len, max } => Self::ValueTooLarge { len: *len, max: *max },
        }
    }
}
