//! Online compaction's copying half: a new data file and index, filled from a snapshot and
//! then from the records written meanwhile, never seen by readers until the store swaps
//! them in (`Store::compact`; DESIGN.md, "Compaction").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{CorruptKind, Error, Result};
use crate::format::{DATA_START, Kind, LogHeader, Record, crc_seed};
use crate::os::{self, LogFile, LogMap, Seam};
use crate::recovery::{self, IndexCtx, Rebuild, Replay};
use crate::store::{DATA_FILE, Store};

/// The new data file while compaction builds it.
pub(crate) const DATA_COMPACT: &str = "data.mkv.compact";
/// The new index file while compaction builds it.
pub(crate) const INDEX_COMPACT: &str = "index.mkv.compact";

/// What [`Store::compact`](crate::Store::compact) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactStats {
    /// Live keys in the new files.
    pub live_keys: u64,
    /// Bytes of log before (its valid length) and after.
    pub log_before: u64,
    /// Bytes of log after compaction.
    pub log_after: u64,
    /// Records written meanwhile and copied after the snapshot (before and during the
    /// pause).
    pub caught_up: u64,
    /// The whole compaction.
    pub duration: Duration,
    /// How long writers waited: the last catch-up and the swap.
    pub pause: Duration,
}

/// Builds the new files.
pub(crate) struct Copier<'a> {
    pub log: LogFile,
    pub end: u64,
    /// Where the new log is flushed to.
    pub flushed: u64,
    pub rebuild: Rebuild<'a>,
    pub header: LogHeader,
    /// The last record appended (0: none yet).
    pub last: u64,
    seed: u32,
}

impl<'a> Copier<'a> {
    /// Creates empty new files in `dir` (replacing leftovers of an interrupted compaction)
    /// with an index sized for `keys` keys; the log grows as it fills.
    pub fn create(dir: &Path, ctx: &'a IndexCtx<'a>, keys: u64, seam: &Seam) -> Result<Self> {
        let path = dir.join(DATA_COMPACT);
        crate::store::create_data_file(seam, dir, &path, ctx.store_id)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let mut log = LogFile::new(file, &path, true, DATA_START, seam)?;
        let header = recovery::read_header(log.bytes(), &path)?;
        log.publish(DATA_START);
        let (index, _) = ctx.create(None, keys)?;
        let rebuild = Rebuild::new(index, ctx);
        let seed = crc_seed(ctx.store_id);
        Ok(Self { log, end: DATA_START, flushed: 0, rebuild, header, last: 0, seed })
    }

    /// Appends a put or tombstone for `key` (with no back-pointer: nothing older exists in
    /// the new files) and indexes it.
    pub fn apply(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> Result<()> {
        let len = Record::len_for(key.len(), value.len());
        let end = self.end.saturating_add(len);
        if end > self.log.map().len() {
            let grown = end.max(self.log.map().len().saturating_mul(2));
            self.log.grow(grown.div_ceil(crate::format::PAGE) * crate::format::PAGE)?;
        }
        let seed = self.seed;
        let fill = |dst: &mut [u8]| Record::encode_into(seed, (kind, false), 0, key, value, dst);
        self.log.write_at(self.end, fill, len as usize);
        self.log.publish(end);
        self.rebuild.apply(self.end, kind, key, self.log.bytes())?;
        self.last = self.end;
        self.end = end;
        Ok(())
    }

    /// Copies the records of `old` (the data file at `path`) in `[from, to)` (finished
    /// writes: whole batches), in order; returns how many.
    pub fn replay(&mut self, old: &LogMap, path: &Path, from: u64, to: u64) -> Result<u64> {
        let (mut p, mut n) = (from, 0);
        while p < to {
            let rec = crate::store::record_at(old, p)
                .ok_or(CorruptKind::LengthPastEnd { end: to, limit: p });
            let (rec, rest) = rec.and_then(|r| r).map_err(|kind| Error::Corrupt {
                file: path.to_path_buf(),
                offset: p,
                kind,
            })?;
            if rec.kind != Kind::Commit {
                self.apply(rec.kind, rec.key(rest), rec.value(rest))?;
                n += 1;
            }
            p += rec.total_len();
        }
        Ok(n)
    }

    /// Flushes the records written so far (outside the writers' pause).
    pub fn flush(&mut self) -> Result<()> {
        self.log.flush(self.flushed, self.end)?;
        self.flushed = self.end;
        Ok(())
    }

    /// Makes the new data file whole on disk: the rest of its records and a header that
    /// commits all of them, in one flush. (The header may go with the records because this
    /// file becomes the store only when it is renamed, after the flush returned.)
    pub fn finish(&mut self) -> Result<()> {
        let h =
            LogHeader { seq: self.header.seq.wrapping_add(1), committed: self.end, ..self.header };
        crate::store::write_slot(&mut self.log, &h);
        self.log.flush(0, self.end)?;
        self.flushed = self.end;
        self.header = h;
        self.log.make_visible(self.end);
        Ok(())
    }
}

/// Compaction's swap: it needs the writer.
impl Store {
    /// Rewrites the live records into a new data file and index and swaps them in, giving
    /// back the space of overwritten and deleted records. Readers keep reading throughout;
    /// writers wait only for the last catch-up and the swap ([`CompactStats::pause`]).
    /// Values, readers and snapshots taken before keep reading the old files, whose disk
    /// space comes back when the last of them is dropped. A crash at any point leaves the
    /// old store or the new one, whole. Durable like a [`sync`](Store::sync) (every write
    /// that returned before the swap is in the new files, flushed).
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::Io`] (a full disk: the old store stays as it was),
    /// [`Error::Poisoned`] if the swap itself failed.
    pub fn compact(&self) -> Result<CompactStats> {
        self.check_writable()?;
        let _one = self.shared.compacting.lock();
        let started = Instant::now();
        let seam = self.shared.writer.lock().seam.clone();
        let data_path = self.shared.dir.join(DATA_FILE);
        let new_index = self.shared.dir.join(INDEX_COMPACT);
        let ctx = IndexCtx {
            path: &new_index,
            writable: true,
            store_id: self.shared.store_id,
            seam: &seam,
        };
        let snap = self.snapshot();
        let mut copier = Copier::create(&self.shared.dir, &ctx, self.len(), &seam)?;
        for item in snap.iter() {
            let (key, value) = item?;
            copier.apply(Kind::Put, key, value)?;
        }
        let mut from = snap.visible();
        drop(snap);
        // Catch up with the writes made meanwhile without the lock, flushing as we go, until
        // what is left is small (or the writers keep outrunning us), so that the pause has
        // only the last few to copy.
        let mut caught_up = 0;
        for _ in 0..CATCH_UP_ROUNDS {
            // `visible` first: the view loaded after it maps every record below it.
            let to = self.shared.state.load().log.visible();
            let state = self.shared.state.load_full();
            caught_up += copier.replay(&state.log, &data_path, from, to)?;
            from = to;
            copier.flush()?;
            if self.shared.state.load().log.visible().saturating_sub(from) < CATCH_UP_LEFT {
                break;
            }
        }
        let turn = self.shared.durability.exclusive();
        let mut guard = self.shared.writer.lock();
        let paused = Instant::now();
        let w = &mut *guard;
        self.check_poisoned()?;
        let old = Arc::clone(w.log.map());
        caught_up += copier.replay(&old, &data_path, from, w.end)?;
        copier.finish()?;
        if w.index_clean {
            // A crash between the two renames must not find a clean old index.
            self.mark_index(w, 0)?;
        }
        let Copier { mut log, end, rebuild, header, last, .. } = copier;
        // The commit point: from this rename on, the store is the new files.
        self.poison_on_err(log.install(&data_path))?;
        let (mut index, used, live, counts) =
            (rebuild.index, rebuild.used, rebuild.live, rebuild.counts);
        self.poison_on_err(index.install(&self.shared.index_path))?;
        self.poison_on_err(os::sync_dir(&seam, &self.shared.dir))?;
        let log_before = w.end;
        (w.log, w.index, w.end, w.header, w.counts) = (log, Arc::new(index), end, header, counts);
        (w.used, w.index_clean, w.generation, w.unsynced) = (used, false, w.generation + 1, 0);
        w.last = recovery::last_record(w.log.bytes(), last);
        self.shared.live_keys.store(live, Ordering::Relaxed);
        self.publish_state(w);
        if let Some(live) = &self.shared.live {
            // Followers move to the new files; the old ones are whole and final for them.
            w.files.key = w.files.key.wrapping_add(1).max(1);
            w.log.set_mirror(live.clone());
            self.announce(w);
            live.set_durable(end, end);
        }
        turn.finish(end);
        let pause = paused.elapsed();
        drop(guard);
        Ok(CompactStats {
            live_keys: live,
            log_before,
            log_after: end,
            caught_up,
            duration: started.elapsed(),
            pause,
        })
    }
}

/// Compaction copies the writes made meanwhile without the lock at most this many times...
const CATCH_UP_ROUNDS: usize = 8;
/// ...stopping once less than this is left for the pause.
const CATCH_UP_LEFT: u64 = 256 << 10;
