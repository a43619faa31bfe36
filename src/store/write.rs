//! The writer's work, under the writer lock: appending records, growing the log and the
//! index, batches, syncs (group commit) and the clean close; and what the writer tells
//! followers on the live page.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::apply::{Change, Counts, IndexCtx, key_at, record_len};
use crate::batch::Batch;
use crate::commit::SyncPolicy;
use crate::error::{Error, Result};
use crate::format::{
    CorruptKind, DATA_START, HEADER_LEN, HEADER_SLOTS, IndexHeader, Kind, LogHeader, PAGE, Record,
    TMP_SUFFIX,
};
use crate::index::{self, Table};
use crate::live::Checkpoint;
use crate::live::last_record;
use crate::os::{self, IndexMap, LogFile, Seam};

use super::shared::{Mapped, Shared, Writer, check_sizes};

/// First size of the data file, and the smallest growth step.
const MIN_GROWTH: u64 = 1 << 20;
/// Unsynced bytes past which the writer starts writeback of the log as it goes.
const WRITEBACK_AFTER: u64 = 256 << 20;
/// Largest growth step: growth is geometric up to here, then linear.
const MAX_GROWTH: u64 = 1 << 30;

/// A compaction's new files and what the writer needs to know of them.
pub(super) struct NewFiles {
    pub log: LogFile,
    pub index: IndexMap,
    /// End of the new log, and its header.
    pub end: u64,
    pub header: LogHeader,
    pub counts: Counts,
    /// Occupied slots and live keys of the new index.
    pub used: u64,
    pub live: u64,
    /// The last record of the new log.
    pub last: u64,
}

impl Shared {
    /// A single put or delete, visible as soon as it is in the index.
    pub(super) fn write_one(&self, kind: Kind, key: &[u8], value: &[u8]) -> Result<bool> {
        check_sizes(key, value)?;
        self.check_writable()?;
        let hash = self.hash(key); // before the lock: other writers need not wait for it
        let mut guard = self.lock_writer()?;
        let w = &mut *guard;
        self.check_poisoned()?;
        let off = w.m.end;
        let Some(change) = self.append(w, (kind, false), key, value, hash)? else {
            return Ok(false);
        };
        let end = w.m.end;
        w.m.log.make_visible(end);
        w.m.seam.point("write visible");
        w.last = last_record(w.m.log.bytes(), off);
        // Only the writer changes the count, so load-then-store does not race.
        self.live_keys.store(change.live_after(kind, self.len()), Ordering::Relaxed);
        self.checkpoint(w);
        let unsynced = w.unsynced;
        self.unlock_writer(guard);
        self.after_write(unsynced)?;
        Ok(change.was_live)
    }

    /// Appends one record and points the key's slot at it; not yet visible to readers.
    /// `None` for a delete of an absent key (nothing written).
    pub(super) fn append(
        &self,
        w: &mut Writer,
        (kind, batch): (Kind, bool),
        key: &[u8],
        value: &[u8],
        hash: u64,
    ) -> Result<Option<Change>> {
        let index_path = &self.index_path;
        let locate = |w: &Writer| {
            let log = w.m.log.map();
            Table::new(w.m.index.words())
                .locate(hash, |slot, off| key_at(log.tail(off), slot, off, key, index_path))
        };
        let mut change = Change::from_slot(locate(w)?);
        if kind == Kind::Delete && !change.is_some_and(|c| c.was_live) {
            return Ok(None);
        }
        if w.index_clean {
            // Before the first change, durably mark the index as not to be trusted.
            self.mark_index(w, 0)?;
        }
        if change.is_none_or(|c| c.was_vacant && index::needs_growth(w.m.used, self.capacity(&w.m)))
        {
            self.grow_index(w, 0)?;
            change = Change::from_slot(locate(w)?);
        }
        let change = change.ok_or_else(|| self.index_full(w.m.used))?;
        let len = Record::len_for(key.len(), value.len());
        let off = w.m.end;
        let end = off.saturating_add(len);
        if end > w.m.log.map().len() {
            self.grow_log(w, end)?;
        }
        let seed = self.seed;
        w.m.log.write_at(
            off,
            |dst| Record::encode_into(seed, (kind, batch), change.prev, key, value, dst),
            len as usize,
        );
        w.m.end = end;
        w.m.log.publish(end);
        w.m.seam.point("record published");
        // Far behind the last sync (a bulk load without syncs): let the log be written
        // back as it goes rather than hit the kernel's dirty limit (DESIGN.md §5).
        w.m.log.set_writeback(w.unsynced >= WRITEBACK_AFTER);
        Table::new(w.m.index.words()).set(
            change.slot,
            hash,
            index::word_for(off, kind == Kind::Delete),
        );
        w.m.seam.point("slot stored");
        w.m.used += u64::from(change.was_vacant);
        let old_len = if change.was_live { record_len(w.m.log.map().tail(change.prev)) } else { 0 };
        w.m.counts.add(kind, len, &change, old_len);
        w.unsynced = w.unsynced.saturating_add(len);
        Ok(Some(change))
    }

    pub(super) fn capacity(&self, w: &Mapped) -> u64 {
        Table::new(w.index.words()).capacity()
    }

    pub(super) fn grow_log(&self, w: &mut Writer, min_end: u64) -> Result<()> {
        let len = w.m.log.map().len();
        let step = len.clamp(MIN_GROWTH, MAX_GROWTH);
        let wanted = min_end.max(len.saturating_add(step)).div_ceil(PAGE) * PAGE;
        let mut reserved = w.m.log.reserve(wanted);
        if is_enospc(&reserved) {
            // No room for the geometric step: take just what this write needs.
            reserved = w.m.log.reserve(min_end.div_ceil(PAGE) * PAGE);
        }
        reserved?;
        // No fdatasync of the new size here, under the writer lock (it would wait for
        // every dirty page of the file): the next sync's msync makes it durable with the
        // records that need it (DESIGN.md §5, "Growth of the data file").
        let replaced = w.m.log.remap()?;
        let old = self.publish_state(&w.m);
        w.retired.push(Box::new((replaced, old)));
        Ok(())
    }

    /// Replaces the index with a larger one holding its live keys, with room for `keys`
    /// more.
    pub(super) fn grow_index(&self, w: &mut Writer, keys: u64) -> Result<()> {
        let ctx = IndexCtx {
            path: &self.index_path,
            writable: true,
            store_id: self.store_id,
            seam: &w.m.seam,
        };
        let (new, live) = ctx.create(Some(&w.m.index), keys)?;
        w.m.index = Arc::new(new);
        // Counts from the slots themselves: this also heals counts read off a damaged header.
        w.m.used = live;
        self.live_keys.store(live, Ordering::Relaxed);
        // The new file is marked dirty from birth.
        w.index_clean = false;
        let old = self.publish_state(&w.m);
        w.retired.push(Box::new(old));
        self.announce(w);
        Ok(())
    }

    pub(super) fn index_full(&self, used: u64) -> Error {
        Error::Corrupt {
            file: self.index_path.clone(),
            offset: 0,
            kind: CorruptKind::BadField { field: "index occupancy", value: used },
        }
    }

    /// Writes the index header with `clean_len` (0 = dirty) and flushes it.
    pub(super) fn mark_index(&self, w: &mut Writer, clean_len: u64) -> Result<()> {
        let h = IndexHeader {
            store_id: self.store_id,
            capacity: self.capacity(&w.m),
            clean_len,
            live: self.len(),
            used: w.m.used,
            live_bytes: w.m.counts.live_bytes,
            records: w.m.counts.records,
        };
        Table::new(w.m.index.words()).write_header(&h);
        self.poison_on_err(w.m.index.flush(0, PAGE))?;
        w.index_clean = clean_len != 0;
        Ok(())
    }

    pub(super) fn shutdown(&self) -> Result<()> {
        self.check_poisoned()?;
        if self.read_only {
            return Ok(());
        }
        let turn = self.durability.exclusive();
        let mut guard = self.writer()?;
        let w = &mut *guard;
        if w.index_clean {
            return Ok(());
        }
        // Records durable, then the header naming them, then the index, then its mark.
        let end = w.m.end;
        self.poison_on_err(w.m.log.flush(0, end))?;
        turn.finish(end);
        put_header(w, end);
        self.poison_on_err(w.m.log.flush(0, PAGE * 2))?;
        self.poison_on_err(w.m.index.flush(0, u64::MAX))?;
        self.poison_on_err(os::sync_dir(&w.m.seam, &self.dir))?;
        self.mark_index(w, end)?;
        if let Some(live) = &self.live {
            live.end_session();
        }
        Ok(())
    }

    /// Tells followers which files are the store now (after index growth or compaction;
    /// open starts a session instead), with the marks as they are and, between writes, a
    /// checkpoint of the writer's state (in the same lock, with its tag stored in the
    /// index).
    pub(super) fn announce(&self, w: &mut Writer) {
        if let Some(live) = &self.live {
            w.m.files.data_ino = w.m.log.ino();
            w.m.files.index_ino = w.m.index.ino();
            let marks = (w.m.log.published(), w.m.log.visible());
            // Inside a batch (never, since a batch makes room first) the counts are not a
            // finished write's: keep the last checkpoint, whose tag a grown index carries.
            let between = w.m.end == marks.1;
            let tag = if between { w.tag + 1 } else { w.tag };
            let c = Checkpoint { tag, ..w.as_checkpoint(self.len()) };
            let table = Table::new(w.m.index.words());
            live.announce(w.m.files, marks, &c, between, || table.set_tag(tag));
            w.tag = tag;
        }
    }

    /// Writes the writer's state, after a finished write, as its next checkpoint on the
    /// live page, then stores the checkpoint's tag in the index (DESIGN.md §6, "Resuming
    /// after a process crash"): a dozen stores into lines the writer owns, no flush.
    #[inline]
    pub(super) fn checkpoint(&self, w: &mut Writer) {
        if let Some(live) = &self.live {
            w.tag += 1;
            live.checkpoint(&w.as_checkpoint(self.len()));
            w.m.seam.point("checkpoint written");
            Table::new(w.m.index.words()).set_tag(w.tag);
        }
    }

    /// Applies a batch atomically; see [`Store::write`](super::Store::write).
    pub(super) fn write_batch(&self, batch: Batch) -> Result<()> {
        for (_, key, value) in batch.ops() {
            check_sizes(key, value)?;
        }
        self.check_writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        // Hashed before the lock: other writers need not wait for it.
        let hashes: Vec<u64> = batch.ops().map(|(_, key, _)| self.hash(key)).collect();
        let mut guard = self.lock_writer()?;
        let w = &mut *guard;
        self.check_poisoned()?;
        // Room first, so that nothing fails for want of space once the batch has begun and
        // the index does not grow (dropping tombstones) in the middle of it.
        let ops = batch.len() as u64;
        if w.index_clean {
            self.mark_index(w, 0)?;
        }
        if index::needs_growth(w.m.used.saturating_add(ops), self.capacity(&w.m)) {
            self.grow_index(w, ops)?;
        }
        let commit_len = Record::len_for(0, 8);
        let bytes = batch.ops().map(|(_, k, v)| Record::len_for(k.len(), v.len())).sum::<u64>();
        let end = w.m.end.saturating_add(bytes).saturating_add(commit_len);
        if end > w.m.log.map().len() {
            self.grow_log(w, end)?;
        }
        let (start, mut records, mut live) = (w.m.end, 0u64, self.len());
        for (i, (kind, key, value)) in batch.ops().enumerate() {
            if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
                w.m.index.prefetch(Table::new(w.m.index.words()).home_word(ahead));
            }
            let appended = self.append(w, (kind, true), key, value, hashes[i]);
            let appended = if records > 0 { self.poison_on_err(appended)? } else { appended? };
            if let Some(change) = appended {
                records += 1;
                live = change.live_after(kind, live);
            }
        }
        if records > 0 {
            let seed = self.seed;
            let off = w.m.end;
            let count = records.to_le_bytes();
            let fill = |dst: &mut [u8]| {
                Record::encode_into(seed, (Kind::Commit, false), start, &[], &count, dst)
            };
            w.m.log.write_at(off, fill, commit_len as usize);
            w.m.end = off + commit_len;
            w.unsynced = w.unsynced.saturating_add(commit_len);
            w.m.log.publish(w.m.end);
            w.m.seam.point("commit published");
            w.m.log.make_visible(w.m.end);
            w.m.seam.point("batch visible");
            w.last = last_record(w.m.log.bytes(), off);
            self.live_keys.store(live, Ordering::Relaxed);
            self.checkpoint(w);
        }
        let unsynced = w.unsynced;
        self.unlock_writer(guard);
        self.after_write(unsynced)
    }

    /// Syncs; see [`Store::sync`](super::Store::sync).
    pub(super) fn sync(&self) -> Result<()> {
        self.check_poisoned()?;
        if self.read_only {
            return Ok(());
        }
        let target = self.writer()?.m.end;
        // Syncs queue here; when our turn comes, an earlier flush may have covered us.
        let Some(turn) = self.durability.turn(target) else {
            return Ok(()); // a flush that ran meanwhile covered our writes
        };
        self.check_poisoned()?;
        let (log, end) = {
            let mut w = self.writer()?;
            // The header may only claim what is already durable: the previous sync's end.
            // So it rides in the same flush as the new records (DESIGN.md, "Durability").
            if w.m.header.committed != turn.durable {
                put_header(&mut w, turn.durable);
            }
            w.unsynced = 0;
            (w.m.log.flusher(), w.m.end)
        };
        // Writers go on appending past `end` while the flush runs.
        self.poison_on_err(log.flush(0, end))?;
        if let Some(live) = &self.live {
            live.set_durable(end, turn.durable); // before the next flush may run
        }
        turn.finish(end);
        Ok(())
    }

    /// Applies the sync policy after a write that returned.
    pub(super) fn after_write(&self, unsynced: u64) -> Result<()> {
        match self.policy {
            SyncPolicy::EveryWrite => self.sync(),
            SyncPolicy::EveryBytes(n) if unsynced >= n => self.sync(),
            _ => Ok(()),
        }
    }

    /// Makes a compaction's new files the writer's (its swap, after their renames) and
    /// tells followers. Returns what they replaced, to be dropped outside the writer lock
    /// (a whole-file munmap is milliseconds for a large log).
    pub(super) fn take_over(&self, w: &mut Writer, new: NewFiles) -> Box<dyn Send> {
        let old_files = (
            std::mem::replace(&mut w.m.log, new.log),
            std::mem::replace(&mut w.m.index, Arc::new(new.index)),
        );
        (w.m.end, w.m.header, w.m.counts) = (new.end, new.header, new.counts);
        (w.m.used, w.index_clean, w.m.generation, w.unsynced) =
            (new.used, false, w.m.generation + 1, 0);
        w.last = last_record(w.m.log.bytes(), new.last);
        self.live_keys.store(new.live, Ordering::Relaxed);
        let old_view = self.publish_state(&w.m);
        if let Some(live) = &self.live {
            // Followers move to the new files; the old ones are whole and final for them.
            w.m.files.key = w.m.files.key.wrapping_add(1).max(1);
            w.m.log.set_mirror(Arc::new(live.clone()));
            self.announce(w);
        }
        Box::new((old_files, old_view))
    }
}

fn is_enospc<T>(r: &Result<T>) -> bool {
    matches!(r, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC))
}

/// Writes the next header slot claiming `committed`, without flushing it.
pub(super) fn put_header(w: &mut Writer, committed: u64) {
    let h =
        LogHeader { store_id: w.m.header.store_id, seq: w.m.header.seq.wrapping_add(1), committed };
    write_slot(&mut w.m.log, &h);
    w.m.header = h;
}

/// Writes `h` into its header slot (by `seq`, alternating), without flushing it.
pub(super) fn write_slot(log: &mut LogFile, h: &LogHeader) {
    let mut b = [0; HEADER_LEN];
    h.encode_into(&mut b);
    log.write_header(HEADER_SLOTS[(h.seq % 2) as usize], &b);
}

/// Writes and flushes a header claiming `committed` (recovery; no store to poison yet).
pub(super) fn write_header(w: &mut Writer, committed: u64) -> Result<()> {
    put_header(w, committed);
    w.m.log.flush(0, 2 * PAGE)
}

/// Creates an empty data file at `path` for store `store_id`: both header slots written,
/// blocks allocated, under a temporary name renamed into place, so a crash never leaves a
/// half-made file. Returns it open for writing (records go from `DATA_START` on), with
/// its newest header.
pub(super) fn create_data_file(
    seam: &Seam,
    dir: &Path,
    path: &Path,
    store_id: u64,
) -> Result<(LogFile, LogHeader)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let file = os::create(seam, &tmp)?;
    let mut log = LogFile::new(file, &tmp, true, DATA_START, seam)?;
    log.grow(MIN_GROWTH)?;
    let mut header = LogHeader { store_id, seq: 0, committed: DATA_START };
    for seq in 0..HEADER_SLOTS.len() as u64 {
        header.seq = seq;
        write_slot(&mut log, &header);
    }
    log.flush(0, 2 * PAGE)?;
    log.install(path)?;
    os::sync_dir(seam, dir)?;
    Ok((log, header))
}

/// How far ahead of the write a batch prefetches index slots.
const PREFETCH_AHEAD: usize = 8;
