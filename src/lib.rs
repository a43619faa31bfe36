//! mapkv: a zero-copy, memory-mapped key-value store.
//!
//! Values live in an append-only log of checksummed records that is mapped into memory;
//! the index is a hash table in a second mapped file. A read returns a slice straight from
//! the mapping, opening a cleanly closed store reads two headers, and durability is
//! explicit: [`Store::sync`] is the point after which writes survive power loss.
//!
//! ```
//! # fn main() -> mapkv::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = mapkv::Store::open(dir.path().join("db"))?;
//! store.put(b"hello", b"world")?;
//! assert_eq!(store.get(b"hello")?.as_deref(), Some(&b"world"[..]));
//! store.sync()?; // durable from here on
//!
//! let reader = store.reader(); // many reads, no reference counting per read
//! let v: Option<&[u8]> = reader.get(b"hello")?;
//! assert_eq!(v, Some(&b"world"[..]));
//! # Ok(()) }
//! ```
//!
//! [DESIGN.md](https://github.com/mapkv/mapkv/blob/main/DESIGN.md) in the repository documents the formats, the protocols and why they
//! are safe.
#![deny(unsafe_code)]
#![warn(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]

// Which module may import which: the table in DESIGN.md §1 (tests/layering.rs checks it).
mod apply;
mod background;
mod batch;
mod commit;
mod error;
mod follow;
mod format;
mod index;
mod live;
mod os;
mod recovery;
mod stats;
mod store;

pub use batch::Batch;
pub use commit::SyncPolicy;
pub use error::{Error, Result};
pub use format::{CorruptKind, MAX_KEY_LEN, MAX_VALUE_LEN, VERSION as FORMAT_VERSION};
pub use os::Value;
pub use recovery::{Problem, RecoveryReport, Salvage, VerifyReport, salvage};
pub use stats::Stats;
pub use store::{CompactStats, Iter, OpenOptions, Reader, Snapshot, SnapshotIter, Store};

/// The README's examples, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Test seams for crash simulation and fault injection. Not part of the supported API.
#[doc(hidden)]
pub mod testing {
    pub use crate::live::{adopt_page, forget_page_cache};
    pub use crate::os::{Observer, Op};
}

/// The decoders of on-disk bytes, for the fuzz targets in `fuzz/` (`record_decode`), which
/// cannot reach them through the store. Not part of the supported API: hidden, and may
/// change or go away in any release.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::format::{DecodeError, IndexHeader, Kind, LogHeader, Record, crc_seed};
}
