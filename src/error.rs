//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::{CorruptKind, DATA_FILE, INDEX_FILE};

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mapkv. Its `Display` says what happened and what to do;
/// match on the variants to act on them.
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// use mapkv::{Error, Store};
/// let first = Store::open(tmp.path())?;
/// match Store::open(tmp.path()) {
///     Err(Error::Locked { read_only: false, .. }) => {} // one writer at a time
///     other => panic!("expected Locked, got {other:?}"),
/// }
/// let err = Store::open(tmp.path()).unwrap_err();
/// assert!(err.to_string().contains("open for writing by another handle"));
/// # drop(first);
/// # Ok::<(), mapkv::Error>(())
/// ```
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
    /// For a read-only open: a writer holds it that cannot be followed
    /// ([DESIGN.md §4](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#readers-in-other-processes)).
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Whether the refused open asked for read-only access.
        read_only: bool,
    },
    /// There is no store at `path`, and the open may not create one (`create(false)`, or a
    /// read-only open, which never creates anything).
    NotFound {
        /// The store directory.
        path: PathBuf,
        /// Whether the open was read-only.
        read_only: bool,
    },
    /// A writable open refused to create a store in `path`: the directory holds other
    /// files and no store (`entry` is one of them). Nothing was written.
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// A file in it that is not one of a store's.
        entry: PathBuf,
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
                let index = file.file_name().is_some_and(|n| n == INDEX_FILE);
                match kind {
                    CorruptKind::BadIndexSlot { .. } => write!(
                        f,
                        "either the index or {DATA_FILE} is damaged: Store::verify tells which \
                         (if only the index, open with OpenOptions::rebuild_index or run \
                         `mapkv recover --rebuild-index`)",
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
            Self::NotFound { path, read_only: false } => write!(
                f,
                "no mapkv store at {}; open with create(true) (the default) to make one",
                path.display()
            ),
            Self::NotFound { path, read_only: true } => write!(
                f,
                "no mapkv store at {} (a read-only open never creates one); check the path, \
                 or open it for writing once to create the store",
                path.display()
            ),
            Self::NotAStore { path, entry } => write!(
                f,
                "{} is not a mapkv store and not empty (it holds {}, and no {DATA_FILE}): \
                 refusing to create a store among other files; use a new or empty directory",
                path.display(),
                entry.display()
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
            Self::NotFound { path, read_only } => {
                Self::NotFound { path: path.clone(), read_only: *read_only }
            }
            Self::NotAStore { path, entry } => {
                Self::NotAStore { path: path.clone(), entry: entry.clone() }
            }
            Self::ReadOnly => Self::ReadOnly,
            Self::Poisoned { cause } => Self::Poisoned { cause: Arc::clone(cause) },
            Self::CompactionOutrun { behind } => Self::CompactionOutrun { behind: *behind },
            Self::CompactionStopped => Self::CompactionStopped,
            Self::KeyTooLarge { len, max } => Self::KeyTooLarge { len: *len, max: *max },
            Self::ValueTooLarge { len, max } => Self::ValueTooLarge { len: *len, max: *max },
        }
    }
}
