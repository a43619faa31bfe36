//! Read views over a store: [`Reader`] (always the newest data, plain slices), [`Snapshot`]
//! (the data as of its creation) and iteration. None of them locks or copies.

use std::fmt;
use std::sync::Arc;

use super::shared::{Shared, State, record_at};
use crate::error::Result;
use crate::index::{DELETED, Table};
use crate::os::Value;

/// A key and its value, with the view whose mapping they lie in.
type Entry<'a> = (&'a State, &'a [u8], &'a [u8]);

/// The newest view reachable from `first`.
#[inline]
fn latest(first: &State) -> &State {
    let mut state = first;
    while let Some(next) = state.next.get() {
        state = next;
    }
    state
}

/// The newest view of `first`'s files (a snapshot never crosses into a compacted store).
fn latest_of_generation(first: &State) -> &State {
    let mut state = first;
    while let Some(next) = state.next.get().filter(|n| n.generation == first.generation) {
        state = next;
    }
    state
}

/// A read view with plain `&[u8]` results; see [`Store::reader`](super::Store::reader).
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(tmp.path())?;
/// store.put("k", "v")?;
/// let reader = store.reader();
/// let v: &[u8] = reader.get("k")?.expect("present");
/// store.put("k", "w")?; // the reader sees later writes at its next get...
/// assert_eq!(reader.get("k")?, Some(&b"w"[..]));
/// assert_eq!(v, b"v"); // ...and what it lent stays as it was
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct Reader<'s> {
    shared: &'s Shared,
    first: Arc<State>,
}

impl<'s> Reader<'s> {
    pub(super) fn new(shared: &'s Shared, first: Arc<State>) -> Self {
        Self { shared, first }
    }

    /// The value of `key`, borrowed from this reader: no copy, no allocation, no reference
    /// counting. It sees every write that returned before the call.
    ///
    /// # Errors
    /// As [`Store::get`](super::Store::get).
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<&[u8]>> {
        self.shared.check_poisoned()?;
        self.shared.follow()?;
        let key = key.as_ref();
        let state = latest(&self.first);
        let found =
            self.shared.find(state, None, self.shared.hash(key), key, state.log.visible())?;
        Ok(found.map(|(_, bytes)| bytes))
    }

    /// Looks up many keys at once: the same answers as [`get`](Reader::get) for each key,
    /// in order, but the memory misses of a batch overlap (every index slot is requested,
    /// then every record, before any is compared), so it costs a fraction of the time per
    /// key on a store larger than the CPU cache.
    ///
    /// # Errors
    /// As [`Store::get`](super::Store::get); the first error ends the call.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("a", "1")?;
    /// store.put("c", "3")?;
    /// let reader = store.reader();
    /// let found = reader.get_many(&["a", "b", "c"])?;
    /// assert_eq!(found, [Some(&b"1"[..]), None, Some(&b"3"[..])]);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<&[u8]>>> {
        const BATCH: usize = 16;
        self.shared.check_poisoned()?;
        let mut out = Vec::with_capacity(keys.len());
        let mut hashes = [0u64; BATCH];
        for chunk in keys.chunks(BATCH) {
            self.shared.follow()?;
            let state = latest(&self.first);
            let visible = state.log.visible();
            let table = Table::new(state.index.words());
            for (h, k) in hashes.iter_mut().zip(chunk) {
                *h = self.shared.hash(k.as_ref());
                state.index.prefetch(table.home_word(*h));
            }
            for &h in &hashes[..chunk.len()] {
                if let Some(off) = table.first_match(h) {
                    state.log.prefetch(off);
                }
            }
            for (&h, k) in hashes.iter().zip(chunk) {
                let found = self.shared.find(state, None, h, k.as_ref(), visible)?;
                out.push(found.map(|(_, bytes)| bytes));
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("store", &self.shared.dir).finish_non_exhaustive()
    }
}

/// A consistent read view of the store as of its creation; see [`Store::snapshot`](super::Store::snapshot).
///
/// It pins the index of its moment and the end of the finished writes then (`visible`).
/// A key overwritten or deleted since is found through the back-pointer (`prev`) that
/// every record carries to the key's previous record
/// ([DESIGN.md, "Snapshots"](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#snapshots-and-iteration)).
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(tmp.path())?;
/// store.put("balance:a", "10")?;
/// store.put("balance:b", "20")?;
/// let snap = store.snapshot();
/// let mut moved = mapkv::Batch::new();
/// moved.put("balance:a", "0").put("balance:b", "30");
/// store.write(moved)?;
/// // The snapshot still sees the total of its moment.
/// let total: u32 = ["balance:a", "balance:b"]
///     .iter()
///     .map(|k| std::str::from_utf8(snap.get(k).unwrap().unwrap()).unwrap().parse::<u32>().unwrap())
///     .sum();
/// assert_eq!(total, 30);
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct Snapshot<'s> {
    shared: &'s Shared,
    first: Arc<State>,
    visible: u64,
}

impl<'s> Snapshot<'s> {
    /// A snapshot of `shared` as of now; see [`Store::snapshot`](super::Store::snapshot).
    pub(super) fn take(shared: &'s Shared) -> Self {
        loop {
            // The index loaded must be the one in use when `visible` is read: a growth in
            // between could have dropped a tombstone the snapshot needs. Growth always
            // publishes a successor state first, so "no successor yet" proves it (and, for
            // a follower, a live page that names no newer files).
            // A handle that cannot catch up (an error mapping the writer's new files, which
            // its next `get` reports) takes the snapshot of the newest view it has.
            let caught_up = shared.follow().is_ok();
            let first = shared.state.load_full();
            let visible = first.log.visible();
            if first.next.get().is_none() && (!caught_up || !shared.behind_writer()) {
                return Snapshot { shared, first, visible };
            }
        }
    }
}

impl Snapshot<'_> {
    /// The value of `key` as of the snapshot, borrowed from it (no copy).
    ///
    /// # Errors
    /// As [`Store::get`](super::Store::get).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<&[u8]>> {
        self.shared.check_poisoned()?;
        let key = key.as_ref();
        let (state, hash) = (latest_of_generation(&self.first), self.shared.hash(key));
        let found = self.shared.find(state, Some(&self.first.index), hash, key, self.visible)?;
        Ok(found.map(|(_, bytes)| bytes))
    }

    /// The log's records below the snapshot's visible end, as its first view maps them
    /// (whole writes and batches; immutable while the snapshot lives).
    pub(super) fn records(&self) -> &[u8] {
        self.first.log.records(self.visible)
    }

    /// End of the finished writes the snapshot sees.
    pub(super) fn visible(&self) -> u64 {
        self.visible
    }

    /// Every key live in the snapshot with its value, once each, borrowed from the
    /// snapshot, in hash order. See [`Store::iter`](super::Store::iter).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("a", "1")?;
    /// let snap = store.snapshot();
    /// store.put("b", "2")?; // not in the snapshot
    /// let keys: Vec<&[u8]> = snap.iter().map(|kv| kv.map(|(k, _)| k)).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, [&b"a"[..]]);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn iter(&self) -> SnapshotIter<'_> {
        SnapshotIter { snapshot: self, slot: 0 }
    }

    /// The entry of the first slot at or after `*slot` whose key is live in the snapshot,
    /// with the view its bytes come from; advances `*slot` past it.
    fn next_entry(&self, slot: &mut u64) -> Option<Result<Entry<'_>>> {
        let table = Table::new(self.first.index.words());
        while *slot < table.capacity() {
            let i = *slot;
            *slot += 1;
            let Some((_, word)) = table.slot_at(i) else { continue };
            let off = word & !DELETED;
            if word & DELETED != 0 && off < self.visible {
                continue; // deleted before the snapshot
            }
            let mut state = latest_of_generation(&self.first);
            let found = loop {
                match record_at(&state.log, off) {
                    Some(Ok(rec)) => {
                        break self.shared.version(&state.log, i, word, rec, self.visible);
                    }
                    // Written past this mapping since it was loaded, or damaged: a newer
                    // view has it, or there is none and the slot is bad.
                    _ => match self.shared.newer(state, i, off, true) {
                        Ok(next) => state = next,
                        Err(e) => break Err(e),
                    },
                }
            };
            match found {
                Ok(Some((key, value))) => return Some(Ok((state, key, value))),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

impl fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("store", &self.shared.dir)
            .field("visible", &self.visible)
            .finish_non_exhaustive()
    }
}

/// Iterator over a [`Snapshot`]'s live keys and values; see [`Snapshot::iter`].
#[derive(Debug)]
pub struct SnapshotIter<'a> {
    snapshot: &'a Snapshot<'a>,
    slot: u64,
}

impl<'a> Iterator for SnapshotIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.snapshot.next_entry(&mut self.slot)?;
        Some(entry.map(|(_, key, value)| (key, value)))
    }
}

/// Iterator over the store's live keys and values as of its creation; see [`Store::iter`](super::Store::iter).
#[derive(Debug)]
pub struct Iter<'s> {
    snapshot: Snapshot<'s>,
    slot: u64,
}

impl<'s> Iter<'s> {
    pub(super) fn new(snapshot: Snapshot<'s>) -> Self {
        Self { snapshot, slot: 0 }
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(Value, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.snapshot.next_entry(&mut self.slot)?;
        Some(entry.map(|(state, key, value)| (state.log.value(key), state.log.value(value))))
    }
}
