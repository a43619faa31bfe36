//! Applying a record to an index, the rule shared by the writer's puts and deletes and by
//! recovery's replay: which slot a record takes and how the counts move ([`Change`],
//! [`Counts`]), the check that a slot names a key ([`key_at`]), and a new index file holding
//! the live slots of an old one ([`IndexCtx`]: growth, rebuilds, compaction).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{CorruptKind, IndexHeader, Kind, RECORD_ALIGN, Record};
use crate::index::{self, DELETED, Slot, Table};
use crate::os::{IndexMap, Seam};

/// Whether the record at the start of `rest` (found at `off`, named by index slot `slot`)
/// has key `key`. A slot naming anything but a record (`rest` is `None` when `off` is
/// outside the log) is index damage.
///
/// # Errors
/// [`Error::Corrupt`] naming the index file and the slot's offset in it.
pub(crate) fn key_at(
    rest: Option<&[u8]>,
    slot: u64,
    off: u64,
    key: &[u8],
    index_path: &Path,
) -> Result<bool> {
    let rec = rest
        .filter(|_| off.is_multiple_of(RECORD_ALIGN))
        .and_then(|rest| Record::decode(rest).ok().map(|r| r.key(rest) == key));
    rec.ok_or_else(|| bad_slot(index_path, slot, off))
}

/// The error for index slot `slot` naming `target`, which is not a usable record.
pub(crate) fn bad_slot(index_path: &Path, slot: u64, target: u64) -> Error {
    Error::Corrupt {
        file: index_path.to_path_buf(),
        offset: Table::slot_offset(slot),
        kind: CorruptKind::BadIndexSlot { target },
    }
}

/// The state change of one record on an index: which slot to write and how the counters
/// move. Shared by the writer's put/delete and by replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// Slot to set.
    pub slot: u64,
    /// Whether the slot was empty before (used count grows).
    pub was_vacant: bool,
    /// Whether the key was live before.
    pub was_live: bool,
    /// Offset of the key's previous record, 0 if none.
    pub prev: u64,
}

impl Change {
    /// Reads a located slot. `None` if the table is full.
    pub fn from_slot(slot: Slot) -> Option<Self> {
        match slot {
            Slot::Occupied { i, word } => Some(Self {
                slot: i,
                was_vacant: false,
                was_live: word & DELETED == 0,
                prev: word & !DELETED,
            }),
            Slot::Vacant { i } => {
                Some(Self { slot: i, was_vacant: true, was_live: false, prev: 0 })
            }
            Slot::Full => None,
        }
    }

    /// The live-key count after applying a record of `kind` with this change to `live`
    /// (saturating: a count read off a damaged but checksummed header must not wrap).
    pub fn live_after(&self, kind: Kind, live: u64) -> u64 {
        match (self.was_live, kind) {
            (false, Kind::Put) => live.saturating_add(1),
            (true, Kind::Delete) => live.saturating_sub(1),
            _ => live,
        }
    }
}

/// Where and how index files are made.
pub(crate) struct IndexCtx<'a> {
    /// Where the index is installed; it is built under this name plus `.tmp`.
    pub path: &'a Path,
    pub writable: bool,
    pub store_id: u64,
    pub seam: &'a Seam,
}

impl IndexCtx<'_> {
    /// A new index holding the live slots of `from`, with room for at least `keys` more
    /// than that, installed as the store's index file (or in memory for a read-only
    /// handle). Marked dirty. Returns it with the number of live keys it holds.
    pub fn create(&self, from: Option<&IndexMap>, keys: u64) -> Result<(IndexMap, u64)> {
        let old = from.map(|m| Table::new(m.words()));
        let live_slots =
            || old.iter().flat_map(Table::occupied).filter(|(_, _, w)| w & DELETED == 0);
        let live = live_slots().count() as u64;
        let capacity = index::capacity_for(live.saturating_add(keys).saturating_add(1));
        let full = || Error::Corrupt {
            file: self.path.to_path_buf(),
            offset: 0,
            kind: CorruptKind::BadField { field: "index capacity", value: capacity },
        };
        let len = IndexHeader::file_len(capacity).ok_or_else(full)?;
        let mut map = if self.writable {
            let mut tmp = self.path.as_os_str().to_owned();
            tmp.push(crate::format::TMP_SUFFIX);
            IndexMap::create(Path::new(&tmp), len, self.seam)?
        } else {
            IndexMap::heap(len)
        };
        let t = Table::new(map.words());
        // A grown index matches the same checkpoint as the one it replaces (DESIGN.md §6).
        t.set_tag(old.as_ref().map_or(0, Table::tag));
        for (_, hash, word) in live_slots() {
            if !t.insert_new(hash, word) {
                return Err(full());
            }
        }
        // Dirty: the byte and record counts are written at the clean close.
        let h = IndexHeader {
            store_id: self.store_id,
            capacity,
            clean_len: 0,
            live,
            used: live,
            live_bytes: 0,
            records: 0,
        };
        t.write_header(&h);
        if self.writable {
            map.install(self.path)?;
        }
        Ok((map, live))
    }
}

/// What the log holds besides keys: put and delete records, and bytes in live records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub records: u64,
    pub live_bytes: u64,
}

impl Counts {
    /// After appending a record of `len` bytes and `kind` with `change`, where `old_len`
    /// is the length of the record it replaces when the key was live.
    pub fn add(&mut self, kind: Kind, len: u64, change: &Change, old_len: u64) {
        self.records = self.records.saturating_add(1);
        if change.was_live {
            self.live_bytes = self.live_bytes.saturating_sub(old_len);
        }
        if kind == Kind::Put {
            self.live_bytes = self.live_bytes.saturating_add(len);
        }
    }
}

/// Length of the record starting at `rest` (0 if it does not decode).
pub(crate) fn record_len(rest: Option<&[u8]>) -> u64 {
    rest.and_then(|r| Record::decode(r).ok()).map_or(0, |r| r.total_len())
}
