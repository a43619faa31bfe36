//! The hash index: open addressing with linear probing over 64-bit words. It knows nothing
//! of files; it is handed the words of a mapping (or of heap memory).
//!
//! Layout: words `0..10` hold the header (`format::IndexHeader`, `INDEX_HEADER_LEN` = 80
//! bytes), word 10 the checkpoint tag (`INDEX_TAG_OFFSET`), slots start at byte `PAGE`. A slot is two words: the key's 64-bit hash (0 = empty) and the offset of the
//! key's latest record, with `DELETED` set when that record is a tombstone. Slots are never
//! emptied, only rebuilt away when the table grows, so probe chains never break under a
//! concurrent reader. Every access is an atomic load or store: the writer publishes a new
//! slot by storing the offset before the hash (Release) and readers load the hash first
//! (Acquire), so a reader that sees a hash also sees its offset and the record it names.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::format::{INDEX_HEADER_LEN, INDEX_TAG_OFFSET, IndexHeader, MIN_SLOTS, PAGE};

/// Set in an offset word when the key's latest record is a tombstone.
pub const DELETED: u64 = 1 << 63;
/// The word of a slot that recovery took back from a batch that never finished (its key
/// was new): deleted, naming no record. It matches no key; growth drops it.
pub const VACATED: u64 = DELETED;
const TAG_WORD: usize = (INDEX_TAG_OFFSET / 8) as usize;

/// The offset word for a key whose latest record is at `off` (a tombstone if `deleted`).
#[inline]
pub fn word_for(off: u64, deleted: bool) -> u64 {
    if deleted { off | DELETED } else { off }
}
const FIRST_SLOT_WORD: usize = (PAGE / 8) as usize;
/// The table grows when occupied slots would pass this fraction (in 1/16ths).
const MAX_LOAD_16THS: u64 = 11;

/// The hash stored for a key: never 0, which marks an empty slot.
pub fn slot_hash(hash: u64) -> u64 {
    hash.max(1)
}

/// Slots needed to hold `keys` keys at about half load (saturating: an absurd count gives a
/// capacity whose file size does not exist, which callers turn into an error).
pub fn capacity_for(keys: u64) -> u64 {
    keys.saturating_mul(2).checked_next_power_of_two().unwrap_or(1 << 63).max(MIN_SLOTS)
}

/// Whether a table of `capacity` slots with `used` occupied ones must grow before taking one
/// more key.
pub fn needs_growth(used: u64, capacity: u64) -> bool {
    (used + 1) * 16 > capacity * MAX_LOAD_16THS
}

/// Where a key is, or would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The key has slot `i`, whose offset word is `word`.
    Occupied {
        /// Slot number.
        i: u64,
        /// Offset word, with `DELETED` if the key is deleted.
        word: u64,
    },
    /// The key is absent; slot `i` is the empty one it would take.
    Vacant {
        /// Slot number.
        i: u64,
    },
    /// The key is absent and every slot is taken (only in a damaged file).
    Full,
}

/// A view of an index's words.
pub struct Table<'a> {
    words: &'a [AtomicU64],
    mask: u64,
}

impl<'a> Table<'a> {
    /// Views `words` as a table. The capacity is derived from the length, so a damaged
    /// header cannot make probes leave the slice.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        let slots = (words.len().saturating_sub(FIRST_SLOT_WORD) / 2) as u64;
        // A power of two no larger than the words hold (header checks make it exact).
        let cap = if slots == 0 { 0 } else { 1u64 << (63 - slots.leading_zeros()) };
        Self { words, mask: cap.wrapping_sub(1) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask.wrapping_add(1)
    }

    /// Reads the header bytes.
    pub fn header_bytes(&self) -> [u8; INDEX_HEADER_LEN] {
        let mut b = [0; INDEX_HEADER_LEN];
        for (chunk, w) in b.chunks_exact_mut(8).zip(self.words) {
            chunk.copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        b
    }

    /// Writes the header.
    pub fn write_header(&self, h: &IndexHeader) {
        let mut b = [0; INDEX_HEADER_LEN];
        h.encode_into(&mut b);
        for (chunk, w) in b.chunks_exact(8).zip(self.words) {
            let v = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            w.store(v, Ordering::Release);
        }
    }

    /// The tag of the writer's checkpoint this index matches (0: none).
    pub fn tag(&self) -> u64 {
        self.words.get(TAG_WORD).map_or(0, |w| u64::from_le(w.load(Ordering::Acquire)))
    }

    /// Records that the index matches the writer's checkpoint `tag`.
    #[inline]
    pub fn set_tag(&self, tag: u64) {
        if let Some(w) = self.words.get(TAG_WORD) {
            w.store(tag.to_le(), Ordering::Release);
        }
    }

    #[inline]
    fn slot(&self, i: u64) -> (&AtomicU64, &AtomicU64) {
        let w = FIRST_SLOT_WORD + 2 * i as usize;
        (&self.words[w], &self.words[w + 1])
    }

    /// Walks the probe sequence of `hash`: calls `hit(slot, offset word)` for every slot
    /// whose hash matches and stops at the first that it accepts, or at an empty slot.
    /// Bounded by the capacity, so a damaged table cannot loop.
    #[inline]
    fn probe(&self, hash: u64, mut hit: impl FnMut(u64, u64) -> Result<bool>) -> Result<Slot> {
        let h = slot_hash(hash);
        let mut i = h & self.mask;
        for _ in 0..self.capacity() {
            let (hw, ow) = self.slot(i);
            let found = u64::from_le(hw.load(Ordering::Acquire));
            if found == 0 {
                return Ok(Slot::Vacant { i });
            }
            if found == h {
                let word = u64::from_le(ow.load(Ordering::Acquire));
                if hit(i, word)? {
                    return Ok(Slot::Occupied { i, word });
                }
            }
            i = (i + 1) & self.mask;
        }
        Ok(Slot::Full)
    }

    /// Finds the live record offset for a key with `hash`. `is_key(slot, offset)` says
    /// whether the record at `offset` holds the key; it is called only for live slots whose
    /// hash matches. A deleted slot may be this key's: then the chain ends empty further on.
    ///
    /// # Errors
    /// Whatever `is_key` returns.
    #[inline]
    pub fn get(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u64, u64) -> Result<bool>,
    ) -> Result<Option<u64>> {
        let slot = self.probe(hash, |i, word| Ok(word & DELETED == 0 && is_key(i, word)?))?;
        Ok(match slot {
            Slot::Occupied { word, .. } => Some(word),
            Slot::Vacant { .. } | Slot::Full => None,
        })
    }

    /// The offset in the first live slot whose hash matches, without comparing keys: a
    /// guess at where a lookup will go, for prefetching.
    /// The slot and word (deleted bit included) of the first slot with `hash` for which
    /// `is_key(slot, word)` holds.
    #[inline]
    pub fn find(
        &self,
        hash: u64,
        is_key: impl FnMut(u64, u64) -> Result<bool>,
    ) -> Result<Option<u64>> {
        Ok(match self.probe(hash, is_key)? {
            Slot::Occupied { word, .. } => Some(word),
            Slot::Vacant { .. } | Slot::Full => None,
        })
    }

    #[inline]
    pub fn first_match(&self, hash: u64) -> Option<u64> {
        self.get(hash, |_, _| Ok(true)).ok().flatten()
    }

    /// The index's word where the probe for `hash` starts (for prefetching).
    #[inline]
    pub fn home_word(&self, hash: u64) -> usize {
        FIRST_SLOT_WORD + 2 * (slot_hash(hash) & self.mask) as usize
    }

    /// Finds the slot a key has or would take (writer side). `is_key` is called with the
    /// slot and offset (without `DELETED`) of every slot whose hash matches, deleted ones
    /// included, vacated ones not.
    ///
    /// # Errors
    /// Whatever `is_key` returns.
    pub fn locate(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u64, u64) -> Result<bool>,
    ) -> Result<Slot> {
        self.probe(
            hash,
            |i, word| if word == VACATED { Ok(false) } else { is_key(i, word & !DELETED) },
        )
    }

    /// Points slot `i` at `word` for a key with `hash`. For an empty slot the offset is
    /// stored before the hash, so readers never see a hash without its offset.
    pub fn set(&self, i: u64, hash: u64, word: u64) {
        let (hw, ow) = self.slot(i);
        ow.store(word.to_le(), Ordering::Release);
        hw.store(slot_hash(hash).to_le(), Ordering::Release);
    }

    /// Byte offset of slot `i` in the index file (for error reports).
    pub fn slot_offset(i: u64) -> u64 {
        PAGE + i * crate::format::SLOT_LEN
    }

    /// Every occupied slot as `(slot, hash, offset word)`, in slot order.
    /// The hash and word of slot `i`, if occupied (and `i` is in the table).
    #[inline]
    pub fn slot_at(&self, i: u64) -> Option<(u64, u64)> {
        if i >= self.capacity() {
            return None;
        }
        let (hw, ow) = self.slot(i);
        let h = u64::from_le(hw.load(Ordering::Acquire));
        (h != 0).then(|| (h, u64::from_le(ow.load(Ordering::Acquire))))
    }

    pub fn occupied(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        (0..self.capacity()).filter_map(move |i| self.slot_at(i).map(|(h, w)| (i, h, w)))
    }

    pub fn insert_new(&self, hash: u64, word: u64) -> bool {
        match self.locate(hash, |_, _| Ok(false)) {
            Ok(Slot::Vacant { i }) => {
                self.set(i, hash, word);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn words(cap: u64) -> Vec<AtomicU64> {
        (0..(PAGE / 8 + 2 * cap)).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn colliding_hashes_resolve_by_key() {
        let w = words(MIN_SLOTS);
        let t = Table::new(&w);
        // Three keys with the same hash, told apart by their offsets (the "records").
        for off in [8, 16, 24] {
            match t.locate(77, |_, o| Ok(o == off)).expect("no io") {
                Slot::Vacant { i } => t.set(i, 77, off),
                s => panic!("unexpected {s:?}"),
            }
        }
        for off in [8, 16, 24] {
            assert_eq!(t.get(77, |_, o| Ok(o == off)).expect("no io"), Some(off));
        }
        assert_eq!(t.get(77, |_, _| Ok(false)).expect("no io"), None);
    }

    #[test]
    fn deleted_slots_keep_chains_and_are_reused() {
        let w = words(MIN_SLOTS);
        let t = Table::new(&w);
        assert!(t.insert_new(5, 100));
        assert!(t.insert_new(5, 200));
        // Delete the first key: its slot keeps the hash, so the second stays reachable.
        let Slot::Occupied { i, .. } = t.locate(5, |_, o| Ok(o == 100)).expect("no io") else {
            panic!("first key lost")
        };
        t.set(i, 5, 300 | DELETED);
        assert_eq!(t.get(5, |_, o| Ok(o == 100 || o == 300)).expect("no io"), None);
        assert_eq!(t.get(5, |_, o| Ok(o == 200)).expect("no io"), Some(200));
        // Re-putting the deleted key finds its old slot again.
        assert_eq!(
            t.locate(5, |_, o| Ok(o == 300)).expect("no io"),
            Slot::Occupied { i, word: 300 | DELETED }
        );
    }

    #[test]
    fn probes_stop_in_a_full_or_garbage_table() {
        let w: Vec<AtomicU64> =
            (0..(PAGE / 8 + 2 * MIN_SLOTS)).map(|_| AtomicU64::new(u64::MAX)).collect();
        let t = Table::new(&w);
        assert_eq!(t.locate(3, |_, _| Ok(false)).expect("no io"), Slot::Full);
        assert_eq!(t.get(3, |_, _| Ok(false)).expect("no io"), None);
        // A slice too short for any slot is an empty table, not a panic.
        let short: Vec<AtomicU64> = (0..10).map(|_| AtomicU64::new(1)).collect();
        assert_eq!(Table::new(&short).get(1, |_, _| Ok(true)).expect("no io"), None);
    }

    #[test]
    fn agrees_with_a_hashmap() {
        let w = words(4096);
        let t = Table::new(&w);
        let mut model = HashMap::new();
        // Few distinct hashes force long collision chains; offsets stand for keys.
        for n in 1..2000u64 {
            let key = n % 700;
            let hash = key % 37;
            let off = key * 8;
            let del = n % 3 == 0;
            match t.locate(hash, |_, o| Ok(o == off)).expect("no io") {
                Slot::Occupied { i, .. } | Slot::Vacant { i } => {
                    t.set(i, hash, if del { off | DELETED } else { off })
                }
                Slot::Full => panic!("full"),
            }
            model.insert(key, !del);
        }
        for key in 0..700u64 {
            let got = t.get(key % 37, |_, o| Ok(o == key * 8)).expect("no io");
            let live = model.get(&key).copied().unwrap_or(false);
            assert_eq!(got.is_some(), live, "key {key}");
        }
        // Every key has exactly one slot, live or deleted.
        assert_eq!(t.occupied().count(), 700);
        assert!(needs_growth(800, 1024) && !needs_growth(700, 1024));
    }
}
