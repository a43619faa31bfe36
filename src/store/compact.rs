//! Online compaction's copying half: a new data file and index, filled from a snapshot and
//! then from the records written meanwhile, never seen by readers until the store swaps
//! them in (`Store::compact`; DESIGN.md, "Compaction").

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apply::{IndexCtx, key_at};
use crate::background::Stop;
use crate::error::{Error, Result};
use crate::format::{
    CorruptKind, DATA_COMPACT, DATA_FILE, DATA_START, INDEX_COMPACT, Kind, LogHeader, PAGE, Record,
    TMP_SUFFIX, crc_seed,
};
use crate::index::{DELETED, Slot, Table};
use crate::os::{self, LogFile, Seam};
use crate::recovery::{Log, Rebuild, Replay};

use super::shared::{Shared, State};
use super::view::Snapshot;
use super::write::{NewFiles, create_data_file, write_slot};

/// What [`Store::compact`](crate::Store::compact) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactStats {
    /// Live keys in the new files.
    pub live_keys: u64,
    /// Bytes of log (records, the file's header pages not counted, as in
    /// [`Stats::log_bytes`](crate::Stats::log_bytes)) just before the swap.
    pub log_before: u64,
    /// Bytes of log after compaction (as `log_before`).
    pub log_after: u64,
    /// Records copied after the snapshot (before and during the pause): the newest record
    /// of each key written meanwhile, and the tombstones that still shadow a copied put.
    pub caught_up: u64,
    /// The whole compaction.
    pub duration: Duration,
    /// How long writers waited: the last catch-up and the swap.
    pub pause: Duration,
    /// Bytes of the old log that the last catch-up, during the pause, went through: at
    /// most 256 KiB whatever the writers do ([DESIGN.md §4, "Compaction"](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#compaction)).
    pub pause_log_bytes: u64,
}

/// Builds the new files.
pub(super) struct Copier<'a> {
    pub log: LogFile,
    pub end: u64,
    /// Where the new log is flushed to.
    pub flushed: u64,
    /// Where writeback of the new log has been started to (`WRITEBACK_STEP`).
    written_back: u64,
    pub rebuild: Rebuild<'a>,
    pub header: LogHeader,
    /// The last record appended (0: none yet).
    pub last: u64,
    seed: u32,
}

impl<'a> Copier<'a> {
    /// Creates empty new files in `dir` (replacing leftovers of an interrupted compaction)
    /// with an index sized for `keys` keys and a log with room for `bytes` of records.
    pub fn create(
        dir: &Path,
        ctx: &'a IndexCtx<'a>,
        (keys, bytes): (u64, u64),
        seam: &Seam,
    ) -> Result<Self> {
        let (mut log, header) = create_data_file(seam, dir, &dir.join(DATA_COMPACT), ctx.store_id)?;
        // Room for the live records and an eighth more, so that the copy rarely grows it.
        let room = DATA_START.saturating_add(bytes.saturating_add(bytes / 8));
        Self::grow(&mut log, room)?;
        let (index, _) = ctx.create(None, keys)?;
        let rebuild = Rebuild::new(index, ctx);
        let seed = crc_seed(ctx.store_id);
        Ok(Self {
            log,
            end: DATA_START,
            flushed: 0,
            written_back: 0,
            rebuild,
            header,
            last: 0,
            seed,
        })
    }

    /// Makes the new log at least `len` long (in whole pages). Its size becomes durable
    /// with `finish`'s flush, before the file can become the store.
    fn grow(log: &mut LogFile, len: u64) -> Result<()> {
        if len > log.map().len() {
            log.grow(len.div_ceil(PAGE).saturating_mul(PAGE))?;
        }
        Ok(())
    }

    /// Appends a put or tombstone for `key` (with no back-pointer: nothing older exists in
    /// the new files) and indexes it.
    pub fn apply(&mut self, kind: Kind, key: &[u8], value: &[u8]) -> Result<()> {
        let len = Record::len_for(key.len(), value.len());
        let end = self.end.saturating_add(len);
        if end > self.log.map().len() {
            let doubled = self.log.map().len().saturating_mul(2);
            Self::grow(&mut self.log, end.max(doubled))?;
        }
        let seed = self.seed;
        let fill = |dst: &mut [u8]| Record::encode_into(seed, (kind, false), 0, key, value, dst);
        self.log.write_at(self.end, fill, len as usize);
        self.log.publish(end);
        self.rebuild.apply(self.end, kind, key, Log::whole(self.log.bytes()))?;
        self.last = self.end;
        self.end = end;
        if end - self.written_back >= WRITEBACK_STEP {
            let to = end / PAGE * PAGE;
            self.log.start_writeback(self.written_back, to);
            self.written_back = to;
        }
        Ok(())
    }

    /// Whether `key` is live in the new files: a tombstone for it must be copied.
    fn holds(&self, key: &[u8], hash: u64) -> Result<bool> {
        let log = self.log.bytes();
        let at = |o: u64| log.get(o as usize..).filter(|_| o >= DATA_START);
        let path = self.rebuild.ctx.path;
        let found = Table::new(self.rebuild.index.words())
            .get(hash, |slot, word| key_at(at(word), slot, word, key, path))?;
        Ok(found.is_some())
    }

    /// Copies from the old store's records in `[from, to)` (finished writes: whole
    /// batches) only what the new files need: a put that is its key's newest record, and
    /// a tombstone that is its key's newest and still shadows a put in the new files.
    /// Returns how many it copied. Which record is a key's newest, the old store's newest
    /// index says. Every older version is skipped: the newest one comes in this round or a
    /// later one, because the last round runs under the writer lock, over an index that
    /// names every key's newest record. Where the index names a record no view maps yet,
    /// the record is copied anyway: an extra copy that a later one replaces, never a lost
    /// one.
    pub fn catch_up(&mut self, old: &Old<'_>, (from, to): (u64, u64), stop: &Stop) -> Result<u64> {
        let mut n = 0;
        let corrupt = |offset, kind| Error::Corrupt { file: old.path.to_path_buf(), offset, kind };
        let mut walk = Log::records(old.state.log.records(to)).walk(from, to);
        for (p, decoded) in &mut walk {
            if stop.is_set() {
                return Err(Error::CompactionStopped);
            }
            let (rec, rest) = decoded.map_err(|kind| corrupt(p, kind))?;
            if rec.kind != Kind::Commit {
                let key = rec.key(rest);
                let hash = crate::format::key_hash(key, self.rebuild.ctx.store_id);
                let superseded = old.newest(key, hash)?.is_some_and(|q| q > p);
                let wanted = match rec.kind {
                    _ if superseded => false,
                    Kind::Delete => self.holds(key, hash)?,
                    _ => true,
                };
                if wanted {
                    self.apply(rec.kind, key, rec.value(rest))?;
                    n += 1;
                }
            }
        }
        if walk.at() < to {
            // The view maps less than the writes it was loaded after: damage, not a short copy.
            return Err(corrupt(
                walk.at(),
                CorruptKind::LengthPastEnd { end: to, limit: walk.at() },
            ));
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
        write_slot(&mut self.log, &h);
        self.log.flush(0, self.end)?;
        self.flushed = self.end;
        self.header = h;
        self.log.make_visible(self.end);
        Ok(())
    }
}

/// The old store's files as one catch-up round reads them.
pub(super) struct Old<'a> {
    /// A view that maps the round's records; later views of the same files follow it
    /// (only a compaction starts new files, and one runs at a time).
    pub state: &'a State,
    pub path: &'a Path,
    pub index_path: &'a Path,
}

impl Old<'_> {
    /// The offset of the newest record of `key` that the newest index names (`None`: no
    /// slot, or a record no view maps yet, so not known to be this key's).
    fn newest(&self, key: &[u8], hash: u64) -> Result<Option<u64>> {
        let mut view = self.state;
        while let Some(next) = view.next.get() {
            view = next;
        }
        let is_key = |slot, off| {
            // The record may lie past the view that the index came with: a newer one maps it.
            let mut v = self.state;
            loop {
                match key_at(v.log.tail(off), slot, off, key, self.index_path) {
                    Err(_) if v.log.outgrown() => match v.next.get() {
                        Some(next) => v = next,
                        None => return Ok(false),
                    },
                    found => return found,
                }
            }
        };
        Ok(match Table::new(view.index.words()).locate(hash, is_key)? {
            Slot::Occupied { word, .. } => Some(word & !DELETED),
            Slot::Vacant { .. } | Slot::Full => None,
        })
    }
}

/// Sets a flag until dropped.
struct Wanted<'a>(&'a AtomicBool);

impl<'a> Wanted<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Removes a compaction's new files unless it reached its swap.
struct Leftovers<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        if self.armed {
            remove_leftovers(self.dir);
        }
    }
}

/// Removes the files of a compaction that never reached its swap (the store is the old
/// files): at a writable open, and when a compaction fails or stops.
pub(super) fn remove_leftovers(dir: &Path) {
    for name in [DATA_COMPACT, INDEX_COMPACT] {
        for suffix in ["", TMP_SUFFIX] {
            let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
        }
    }
}

/// Compaction: the copy, the catch-up rounds, and the swap under the writer lock.
impl Shared {
    /// [`Store::compact`](super::Store::compact), stopping with [`Error::CompactionStopped`]
    /// (and nothing changed) once `stop` is set.
    pub(super) fn compact_until(&self, stop: &Stop) -> Result<CompactStats> {
        self.check_writable()?;
        let _one = self.compacting.lock();
        let started = Instant::now();
        let (seam, live_bytes) = {
            let w = self.writer()?;
            // A count read off disk (a clean index's header) is never trusted for an
            // allocation: live records fit in the log.
            (w.m.seam.clone(), w.m.counts.live_bytes.min(w.m.end))
        };
        let dir = &self.dir;
        let data_path = dir.join(DATA_FILE);
        let new_index = dir.join(INDEX_COMPACT);
        let index_path = &self.index_path;
        let ctx =
            IndexCtx { path: &new_index, writable: true, store_id: self.store_id, seam: &seam };
        let mut leftovers = Leftovers { dir, armed: true };
        let snap = Snapshot::take(self);
        let mut copier = Copier::create(dir, &ctx, (self.len(), live_bytes), &seam)?;
        for item in snap.iter() {
            if stop.is_set() {
                return Err(Error::CompactionStopped);
            }
            let (key, value) = item?;
            copier.apply(Kind::Put, key, value)?;
        }
        let mut from = snap.visible();
        let started_at = from;
        drop(snap);
        seam.point("compaction copied the snapshot");
        // One catch-up without the lock: the writes made since `from`, as far as `visible`.
        let mut caught_up = 0;
        let mut round = |copier: &mut Copier<'_>, from: &mut u64, flush: bool| -> Result<()> {
            if stop.is_set() {
                return Err(Error::CompactionStopped);
            }
            // `visible` first: the view loaded after it maps every record below it.
            let to = self.state.load().log.visible();
            let state = self.state.load_full();
            let old = Old { state: &state, path: &data_path, index_path };
            caught_up += copier.catch_up(&old, (*from, to), stop)?;
            *from = to;
            if flush { copier.flush() } else { Ok(()) }
        };
        for _ in 0..CATCH_UP_ROUNDS {
            round(&mut copier, &mut from, true)?;
            if self.state.load().log.visible().saturating_sub(from) < CATCH_UP_LEFT {
                break;
            }
        }
        // Room in the new log for as much as the writers appended during the compaction, so
        // that they do not have to grow it (fallocate, under their lock) right after the
        // swap, while the file system is busy freeing the old log.
        let appended = self.state.load().log.visible().saturating_sub(started_at);
        Copier::grow(&mut copier.log, copier.end.saturating_add(appended))?;
        // The flush turn first (a sync running now may take a while), then rounds under it
        // (syncs wait, writers do not) until the writer lock finds little enough left to
        // walk and to flush. Writers release the lock fairly, so it comes after one write.
        let turn = self.durability.exclusive();
        let mut tries = 0;
        let wanted = Wanted::set(&self.pause_wanted);
        let mut guard = loop {
            round(&mut copier, &mut from, false)?;
            if copier.end - copier.flushed > CATCH_UP_LEFT {
                copier.flush()?;
            } else {
                seam.point("compaction takes the writer lock");
                let guard = self.writer()?;
                if guard.m.end.saturating_sub(from) <= CATCH_UP_LEFT {
                    break guard;
                }
            }
            tries += 1;
            if tries == PAUSE_TRIES {
                let behind = self.writer()?.m.end.saturating_sub(from);
                return Err(Error::CompactionOutrun { behind });
            }
        };
        drop(wanted);
        let paused = Instant::now();
        let w = &mut *guard;
        self.check_poisoned()?;
        // Under the lock the published view is the writer's: its index is exact.
        let state = self.state.load_full();
        let old = Old { state: &state, path: &data_path, index_path };
        let pause_log_bytes = w.m.end - from;
        caught_up += copier.catch_up(&old, (from, w.m.end), &Stop::default())?;
        copier.finish()?;
        if w.index_clean {
            // A crash between the two renames must not find a clean old index.
            self.mark_index(w, 0)?;
        }
        let Copier { mut log, end, rebuild, header, last, .. } = copier;
        // The commit point: from this rename on, the store is the new files.
        leftovers.armed = false;
        self.poison_on_err(log.install(&data_path))?;
        let mut index = rebuild.index;
        self.poison_on_err(index.install(&self.index_path))?;
        let log_before = w.m.end - DATA_START;
        let live = rebuild.live;
        let new = NewFiles {
            log,
            index,
            end,
            header,
            counts: rebuild.counts,
            used: rebuild.used,
            live,
            last,
        };
        let replaced = self.take_over(w, new);
        let pause = paused.elapsed();
        drop(guard);
        // The names, durable before any later sync returns (syncs wait for the turn);
        // writers already append to the new file meanwhile.
        self.poison_on_err(os::sync_dir(&seam, dir))?;
        if let Some(live) = &self.live {
            live.set_durable(end, end);
        }
        turn.finish(end);
        // The old files go (and their disk space, unless readers still hold them) here,
        // with no lock held.
        drop((state, replaced));
        Ok(CompactStats {
            live_keys: live,
            log_before,
            log_after: end - DATA_START,
            caught_up,
            duration: started.elapsed(),
            pause,
            pause_log_bytes,
        })
    }
}

/// Compaction catches up with the writes made meanwhile without the lock at most this many
/// times...
const CATCH_UP_ROUNDS: usize = 8;
/// ...stopping once less than this is left for the pause: the bound on the log the pause
/// walks and copies.
const CATCH_UP_LEFT: u64 = 256 << 10;
/// The copy starts writing back every this many bytes, so that it reaches the disk as it
/// goes rather than in one burst that timed syncs queue behind. Larger than the 256 KiB
/// steps of a writer far behind its sync (`LogFile::set_writeback`): measured under the hot
/// writer, starting writeback of the copy every 256 KiB made the longest put 52-81 ms and
/// the oldest unsynced write 271 ms, against 36-44 ms and 228 ms with 8 MiB.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Times the writer lock may find more than `CATCH_UP_LEFT` left before compaction gives
/// up.
const PAUSE_TRIES: u32 = 8;
