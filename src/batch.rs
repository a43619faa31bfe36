//! `Batch`: puts and deletes that [`Store::write`](crate::Store::write) applies atomically.

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::format::{Kind, Record};
use crate::index::{self, Table};
use crate::recovery::last_record;
use crate::store::{Store, check_sizes};

/// Puts and deletes applied all together by [`Store::write`](crate::Store::write): after a
/// crash either every one of them is in the store or none is, and readers see all of them
/// or none. Later operations on the same key win, as if applied in order.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(dir.path())?;
/// let mut batch = mapkv::Batch::new();
/// batch.put("alice", "1").put("bob", "2").delete("carol");
/// store.write(batch)?;
/// assert_eq!(store.get("bob")?.as_deref(), Some(&b"2"[..]));
/// # Ok::<(), mapkv::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Each operation: its kind, and where its key and value end in `bytes` (each starts
    /// where the one before it ends).
    ops: Vec<(Kind, usize, usize)>,
    bytes: Vec<u8>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds setting `key` to `value`. Sizes are checked by `write`, before anything is
    /// written.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.push(Kind::Put, key.as_ref(), value.as_ref())
    }

    /// Adds deleting `key` (nothing is written for a key that is absent by then).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.push(Kind::Delete, key.as_ref(), &[])
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ops.push((kind, key_end, self.bytes.len()));
        self
    }

    /// The operations in order: kind, key, value.
    pub(crate) fn ops(&self) -> impl Iterator<Item = (Kind, &[u8], &[u8])> + '_ {
        let mut start = 0;
        self.ops.iter().map(move |&(kind, key_end, value_end)| {
            let op = (kind, &self.bytes[start..key_end], &self.bytes[key_end..value_end]);
            start = value_end;
            op
        })
    }
}

/// Atomic batches: the writer's half (the `Batch` type is above).
impl Store {
    /// Applies every operation of `batch`, in order, atomically: readers see all of it or
    /// none of it, and after a crash recovery keeps all of it or none of it (the batch ends
    /// with a commit record; DESIGN.md, "Batches"). Durable after the next
    /// [`sync`](Store::sync), like a put. Index slots are prefetched ahead of the writes, so
    /// a large batch loads faster than the same puts one by one.
    ///
    /// # Errors
    /// As [`put`](Store::put); size limits and a full disk are found before anything is
    /// written. An error in the middle of the batch (damaged index) poisons the handle;
    /// reopening recovers to the state before the batch.
    pub fn write(&self, batch: Batch) -> Result<()> {
        for (_, key, value) in batch.ops() {
            check_sizes(key, value)?;
        }
        self.check_writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock_writer();
        let w = &mut *guard;
        self.check_poisoned()?;
        let hashes: Vec<u64> = batch.ops().map(|(_, key, _)| self.hash(key)).collect();
        // Room first, so that nothing fails for want of space once the batch has begun and
        // the index does not grow (dropping tombstones) in the middle of it.
        let ops = batch.len() as u64;
        if w.index_clean {
            self.mark_index(w, 0)?;
        }
        if index::needs_growth(w.used.saturating_add(ops), self.capacity(w)) {
            self.grow_index(w, ops)?;
        }
        let commit_len = Record::len_for(0, 8);
        let bytes = batch.ops().map(|(_, k, v)| Record::len_for(k.len(), v.len())).sum::<u64>();
        let end = w.end.saturating_add(bytes).saturating_add(commit_len);
        if end > w.log.map().len() {
            self.grow_log(w, end)?;
        }
        let (start, mut records, mut live) = (w.end, 0u64, self.len());
        for (i, (kind, key, value)) in batch.ops().enumerate() {
            if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
                w.index.prefetch(Table::new(w.index.words()).home_word(ahead));
            }
            let appended = self.append(w, (kind, true), key, value, hashes[i]);
            let appended = if records > 0 { self.poison_on_err(appended)? } else { appended? };
            if let Some(change) = appended {
                records += 1;
                live = change.live_after(kind, live);
            }
        }
        if records > 0 {
            let seed = self.shared.seed;
            let off = w.end;
            let count = records.to_le_bytes();
            let fill = |dst: &mut [u8]| {
                Record::encode_into(seed, (Kind::Commit, false), start, &[], &count, dst)
            };
            w.log.write_at(off, fill, commit_len as usize);
            w.end = off + commit_len;
            w.unsynced = w.unsynced.saturating_add(commit_len);
            w.log.publish(w.end);
            w.seam.point("commit published");
            w.log.make_visible(w.end);
            w.seam.point("batch visible");
            w.last = last_record(w.log.bytes(), off);
            self.shared.live_keys.store(live, Ordering::Relaxed);
            self.checkpoint(w);
        }
        let unsynced = w.unsynced;
        self.unlock_writer(guard);
        self.after_write(unsynced)
    }
}

/// How far ahead of the write a batch prefetches index slots.
const PREFETCH_AHEAD: usize = 8;
