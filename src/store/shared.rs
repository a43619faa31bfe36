//! What a store handle is made of: the published views ([`State`]), the writer's state
//! ([`Writer`]) and [`Shared`], everything the handles of one store share. This module and
//! the ones beside it under `store/` are the only code that touches their fields. Here: the
//! read path (a lookup through the views), the writer lock, poisoning, and a follower's
//! catching up with its writer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use crate::apply::{Counts, bad_slot};
use crate::commit::{Durability, SyncPolicy};
use crate::error::{Error, Result};
use crate::follow::{Attached, Follower, attach};
use crate::format::{
    CorruptKind, DATA_FILE, DATA_START, Kind, LogHeader, MAX_KEY_LEN, MAX_VALUE_LEN, RECORD_ALIGN,
    Record,
};
use crate::index::{DELETED, Table};
use crate::live::{Checkpoint, Files, Live};
use crate::os::{DirLock, IndexMap, LogFile, LogMap, Seam};
use crate::recovery::RecoveryReport;
use crate::stats::Stats;

/// A writer that waits longer than this for the lock makes the others hand it over fairly.
const STARVING: std::time::Duration = std::time::Duration::from_millis(2);

/// One published view: a mapping of the data file and the index to search with it.
/// `next` links to the view that replaced it, so a [`Reader`] pinned here can follow growth
/// without a lock and without ever dropping a mapping it lent out.
pub(super) struct State {
    pub(super) log: Arc<LogMap>,
    pub(super) index: Arc<IndexMap>,
    pub(super) next: OnceLock<Arc<State>>,
    /// Which pair of files: compaction starts a new generation. Offsets in one
    /// generation's index mean nothing in another's log.
    pub(super) generation: u64,
}

/// What a lookup in one view found.
enum Lookup<'s> {
    Found(&'s [u8]),
    Absent,
    /// The index named a record (at slot, offset) this view's mapping does not reach: use
    /// a newer view.
    Stale(u64, u64),
}

/// The files a handle reads through and what it knows of them: every handle has these,
/// a writer's ([`Writer::m`]) and a read-only handle's alike.
pub(super) struct Mapped {
    pub(super) log: LogFile,
    pub(super) index: Arc<IndexMap>,
    /// End of the log: the published length (a follower's: the writer's visible end when
    /// it attached).
    pub(super) end: u64,
    /// Records and live bytes of the log.
    pub(super) counts: Counts,
    /// The newest header slot written (a writer's) or read: its `seq` and `committed`.
    pub(super) header: LogHeader,
    /// Occupied index slots (live and deleted keys).
    pub(super) used: u64,
    /// Files in use since open: compaction (or, for a follower, moving to new files) adds
    /// one.
    pub(super) generation: u64,
    /// The files announced on the live page (writer) or followed (read-only handle).
    pub(super) files: Files,
    pub(super) seam: Seam,
}

/// A writer's state: its files, and what only a writer has.
pub(super) struct Writer {
    pub(super) m: Mapped,
    /// Bytes appended since the last sync started (for [`SyncPolicy::EveryBytes`]).
    pub(super) unsynced: u64,
    /// The index file header currently says "clean".
    pub(super) index_clean: bool,
    /// The writer's exclusive lock on the store, held while open.
    pub(super) _lock: DirLock,
    /// The tag of the newest checkpoint written to the live page.
    pub(super) tag: u64,
    /// The record ending at the visible end, and its checksum word (`Checkpoint::last`).
    pub(super) last: (u64, u64),
    /// Views and mappings that growth replaced while the lock was held, unmapped once it is
    /// released ([`Shared::unlock_writer`]): unmapping a large file takes milliseconds,
    /// which every writer would wait for.
    pub(super) retired: Vec<Box<dyn Send>>,
}

/// What is behind a handle's lock: a writer's state, or a read-only handle's files (a
/// follower's are the writer's, mapped read-only; one alone has the store as it found it).
pub(super) enum Handle {
    Writer(Writer),
    ReadOnly(Mapped),
}

impl Handle {
    /// The files, whoever holds them.
    pub(super) fn mapped(&self) -> &Mapped {
        match self {
            Handle::Writer(w) => &w.m,
            Handle::ReadOnly(m) => m,
        }
    }

    /// The files, to change them (a follower catching up).
    pub(super) fn mapped_mut(&mut self) -> &mut Mapped {
        match self {
            Handle::Writer(w) => &mut w.m,
            Handle::ReadOnly(m) => m,
        }
    }
}

impl Writer {
    /// The writer's state now, with `live` keys, as a checkpoint (its tag is the last one
    /// written: the caller sets the next).
    pub(super) fn as_checkpoint(&self, live: u64) -> Checkpoint {
        Checkpoint {
            tag: self.tag,
            key: self.m.files.key,
            end: self.m.log.visible(),
            last: self.last.0,
            last_crc: self.last.1,
            live,
            used: self.m.used,
            records: self.m.counts.records,
            live_bytes: self.m.counts.live_bytes,
        }
    }
}

/// Everything a store handle is: shared between the user's handle and the background
/// thread's.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) index_path: PathBuf,
    pub(super) state: ArcSwap<State>,
    /// The handle's files, and a writer's state: the writer lock.
    pub(super) handle: Mutex<Handle>,
    /// How far the log is durable, and whose turn it is to flush (group commit). A turn
    /// is taken before `handle`'s lock when both are needed.
    pub(super) durability: Durability,
    pub(super) policy: SyncPolicy,
    /// Held through a compaction: one at a time.
    pub(super) compacting: Mutex<()>,
    /// A compaction waits for the writer lock to start its pause: writers hand the lock
    /// over fairly.
    pub(super) pause_wanted: AtomicBool,
    /// Writers that have waited for the lock longer than `STARVING`.
    pub(super) starving: AtomicU64,
    pub(super) live_keys: AtomicU64,
    pub(super) poisoned: OnceLock<Arc<Error>>,
    pub(super) store_id: u64,
    pub(super) seed: u32,
    pub(super) verify: bool,
    pub(super) read_only: bool,
    pub(super) recovery: RecoveryReport,
    /// Set by `simulate_crash`: drop without the clean close.
    pub(super) abandoned: AtomicBool,
    /// A writer's live page, where it shows followers its files and marks.
    pub(super) live: Option<Live>,
    /// A read-only handle's link to the writer's live page.
    pub(super) follow: Option<Follower>,
}

impl Shared {
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        crate::format::key_hash(key, self.store_id)
    }

    #[inline]
    pub(super) fn check_poisoned(&self) -> Result<()> {
        match self.poisoned.get() {
            None => Ok(()),
            Some(cause) => Err(Error::Poisoned { cause: Arc::clone(cause) }),
        }
    }

    pub(super) fn poison_on_err<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            let _ = self.poisoned.set(Arc::new(e.duplicate()));
        }
        r
    }

    /// Searches `state` (with `pinned`'s index instead of its own, for a snapshot),
    /// following newer views while the index names a record that this view's mapping does
    /// not reach. Returns the value and the view it was found in.
    #[inline]
    pub(super) fn find<'s>(
        &self,
        mut state: &'s State,
        pinned: Option<&'s IndexMap>,
        hash: u64,
        key: &[u8],
        visible: u64,
    ) -> Result<Option<(&'s State, &'s [u8])>> {
        loop {
            let index = pinned.unwrap_or(&state.index);
            match self.lookup(index, &state.log, hash, key, visible)? {
                Lookup::Found(bytes) => return Ok(Some((state, bytes))),
                Lookup::Absent => return Ok(None),
                Lookup::Stale(slot, off) => {
                    state = self.newer(state, slot, off, pinned.is_some())?
                }
            }
        }
    }

    /// The view after `state`, which must exist because `state`'s mapping is outgrown by
    /// the record at `off` named by `slot`; with `same_files`, only a view of the same files
    /// will do (a snapshot's pinned index means nothing in a compacted log).
    pub(super) fn newer<'s>(
        &self,
        state: &'s State,
        slot: u64,
        off: u64,
        same_files: bool,
    ) -> Result<&'s State> {
        if state.next.get().is_none() {
            // A follower learns of growth from the page, not from its own writer.
            self.follow()?;
        }
        state
            .next
            .get()
            .map(|n| &**n)
            .filter(|n| !same_files || n.generation == state.generation)
            .ok_or_else(|| bad_slot(&self.index_path, slot, off))
    }

    /// Searches one index for `key`, reading records from `log`, and returns the version a
    /// reader at `visible` sees. Bytes come only from the published part of the mapping.
    #[inline]
    fn lookup<'s>(
        &self,
        index: &IndexMap,
        log: &'s LogMap,
        hash: u64,
        key: &[u8],
        visible: u64,
    ) -> Result<Lookup<'s>> {
        let bad = |slot, off| bad_slot(&self.index_path, slot, off);
        let mut stale = None;
        let mut found = None;
        let hit = Table::new(index.words()).find(hash, |slot, word| {
            let off = word & !DELETED;
            if word & DELETED != 0 && off < visible {
                return Ok(false); // a visible tombstone: this key's (then absent) or another's
            }
            let (rec, rest) = match record_at(log, off) {
                Some(Ok(r)) => r,
                // The record lies (partly) past this mapping: the log grew since this view
                // was loaded.
                _ if log.outgrown() => {
                    stale = Some((slot, off));
                    return Ok(false);
                }
                _ => return Err(bad(slot, off)),
            };
            if rec.key(rest) != key {
                return Ok(false);
            }
            found = Some((slot, word, rec, rest));
            Ok(true)
        })?;
        match (found, stale, hit) {
            (Some((slot, word, rec, rest)), _, _) => {
                Ok(match self.version(log, slot, word, (rec, rest), visible)? {
                    Some((_, value)) => Lookup::Found(value),
                    None => Lookup::Absent,
                })
            }
            (None, Some((slot, off)), None) => Ok(Lookup::Stale(slot, off)),
            _ => Ok(Lookup::Absent),
        }
    }

    /// The key and value that a reader at `visible` sees, given the newest record
    /// `(rec, rest)` of a key, named by index `slot` holding `word`: that record if it
    /// starts below `visible`, else the newest older one that does, found by following
    /// `prev` (`None`: absent or deleted then). Older records are published and inside
    /// `log`, as the newer one is.
    pub(super) fn version<'s>(
        &self,
        log: &'s LogMap,
        slot: u64,
        word: u64,
        (mut rec, mut rest): (Record, &'s [u8]),
        visible: u64,
    ) -> Result<Option<(&'s [u8], &'s [u8])>> {
        let mut off = word & !DELETED;
        let bad = |at| bad_slot(&self.index_path, slot, at);
        if (rec.kind == Kind::Delete) != (word & DELETED != 0) || rec.kind == Kind::Commit {
            return Err(bad(off));
        }
        let key = rec.key(rest);
        while off >= visible {
            let prev = rec.prev;
            if prev == 0 {
                return Ok(None);
            }
            match record_at(log, prev) {
                Some(Ok((r, b))) if prev < off && r.kind != Kind::Commit && r.key(b) == key => {
                    (off, rec, rest) = (prev, r, b);
                }
                _ => return Err(bad(prev)),
            }
        }
        if rec.kind == Kind::Delete {
            return Ok(None);
        }
        if self.verify {
            rec.verify(self.seed, rest).map_err(|kind| Error::Corrupt {
                file: self.dir.join(DATA_FILE),
                offset: off,
                kind,
            })?;
        }
        Ok(Some((key, rec.value(rest))))
    }

    pub(super) fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_poisoned()
    }

    /// Takes the writer lock for a write. A writer that has waited 2 ms says so, and
    /// while one does, writers release the lock fairly ([`unlock_writer`]): with more
    /// writer threads than cores, the unfair hand-over let one wait tens of milliseconds
    /// while the others took the lock again and again.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only handle, which has no writer's state.
    pub(super) fn lock_writer(&self) -> Result<MappedMutexGuard<'_, Writer>> {
        let guard = match self.handle.try_lock_for(STARVING) {
            Some(guard) => guard,
            None => {
                self.starving.fetch_add(1, Ordering::Relaxed);
                let guard = self.handle.lock();
                self.starving.fetch_sub(1, Ordering::Relaxed);
                guard
            }
        };
        Self::writer_of(guard)
    }

    /// The writer lock, taken plainly (syncs, compaction, the clean close).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a read-only handle.
    pub(super) fn writer(&self) -> Result<MappedMutexGuard<'_, Writer>> {
        Self::writer_of(self.handle.lock())
    }

    /// The handle's files, under the same lock (every handle has them).
    pub(super) fn files(&self) -> MappedMutexGuard<'_, Mapped> {
        MutexGuard::map(self.handle.lock(), Handle::mapped_mut)
    }

    fn writer_of(guard: MutexGuard<'_, Handle>) -> Result<MappedMutexGuard<'_, Writer>> {
        MutexGuard::try_map(guard, |h| match h {
            Handle::Writer(w) => Some(w),
            Handle::ReadOnly(_) => None,
        })
        .map_err(|_| Error::ReadOnly)
    }

    /// Releases the writer lock after a write, then unmaps what growth retired under it.
    /// Fairly while a compaction waits for its pause or a writer has starved
    /// ([`lock_writer`](Shared::lock_writer)): the waiter gets the lock next, instead of
    /// waiting while writers take it again and again (DESIGN.md §4, "Reaching the lock").
    /// Otherwise not, since a fair hand-over costs a context switch per write when writers
    /// outnumber the cores.
    #[inline]
    pub(super) fn unlock_writer(&self, mut guard: MappedMutexGuard<'_, Writer>) {
        let retired = std::mem::take(&mut guard.retired);
        let starving = self.starving.load(Ordering::Relaxed) != 0;
        if starving || self.pause_wanted.load(Ordering::Relaxed) {
            MappedMutexGuard::unlock_fair(guard);
        } else {
            drop(guard);
        }
        drop(retired);
    }

    /// Publishes a view of the writer's files; returns the view it replaced (the last hold
    /// on its mappings, unless readers have it: drop it outside the writer lock).
    pub(super) fn publish_state(&self, w: &Mapped) -> Arc<State> {
        let next = Arc::new(State {
            log: Arc::clone(w.log.map()),
            index: Arc::clone(&w.index),
            next: OnceLock::new(),
            generation: w.generation,
        });
        let old = self.state.swap(Arc::clone(&next));
        // Only the writer publishes, and each state gets exactly one successor.
        let _ = old.next.set(next);
        old
    }

    /// Brings a following handle up to the writer's files; called before every read. One
    /// comparison of two words of the live page when nothing changed; nothing at all for
    /// other handles.
    #[inline]
    pub(super) fn follow(&self) -> Result<()> {
        match &self.follow {
            Some(f) if f.behind() => self.catch_up(f),
            _ => Ok(()),
        }
    }

    /// Whether a follower's page names newer files than it has mapped.
    pub(super) fn behind_writer(&self) -> bool {
        self.follow.as_ref().is_some_and(Follower::behind)
    }

    /// Maps what the page names (growth, a new index, new files after a compaction or a
    /// new writer) and publishes it as the handle's newest view, linked from the old one
    /// as the writer's own growth is.
    #[cold]
    fn catch_up(&self, f: &Follower) -> Result<()> {
        let mut guard = self.files();
        let w = &mut *guard;
        if !f.behind() {
            return Ok(()); // another thread did it
        }
        let seq = f.live.seq();
        let have = f.attached().then_some(w.files);
        let found = attach(&self.dir, &f.live, (have, Some(self.store_id)))?;
        let Some(Attached { announced: a, log, index }) = found else {
            // Names nothing mappable: stay on the files we have until the page changes.
            f.caught_up(seq, u64::MAX, false);
            return Ok(());
        };
        let same_file = have.is_some_and(|h| h.data_ino == a.files.data_ino);
        match log {
            // A new writer on the same files (the index too: a clean handover): a newer
            // view of the same generation, which snapshots go on reading through.
            Some((log, _)) if same_file && index.is_none() => w.log = log,
            Some((log, _)) => {
                if have.is_some() && !same_file {
                    // A compaction replaced the file. Views of the old generation read
                    // it whole from now on: map all of it first.
                    drop((w.log.remap()?, self.publish_state(w)));
                }
                // (A new writer with a rebuilt index may have rewritten what the old one
                // had not made visible: a new generation, so a pinned old index is never
                // paired with its records.)
                w.log = log;
                w.generation += 1;
            }
            None if a.published > w.log.map().len() => drop(w.log.remap()?),
            None => {}
        }
        if let Some(index) = index {
            w.index = Arc::new(index);
        }
        w.files = a.files;
        drop(self.publish_state(w));
        // A page claiming more than the file holds is damaged: stop watching the length.
        let len = w.log.map().len();
        f.caught_up(a.seq, if a.published > len { u64::MAX } else { len }, true);
        Ok(())
    }

    /// Number of live keys (a follower's: the writer's, from the live page).
    pub(super) fn len(&self) -> u64 {
        match &self.follow {
            Some(f) if f.attached() => f.live.figures().live,
            _ => self.live_keys.load(Ordering::Relaxed),
        }
    }

    /// The figures of [`Store::stats`](super::Store::stats).
    pub(super) fn stats(&self) -> Stats {
        let _ = self.follow();
        let durable = self.durability.end();
        let w = self.files();
        // A follower shows the writer's figures, from the live page.
        let page = self.follow.as_ref().filter(|f| f.attached()).map(|f| f.live.figures());
        let (end, records, live_bytes, used, durable, committed) = match page {
            Some(f) => {
                (w.log.map().visible(), f.records, f.live_bytes, f.used, f.durable, f.committed)
            }
            None => {
                (w.end, w.counts.records, w.counts.live_bytes, w.used, durable, w.header.committed)
            }
        };
        let log_bytes = end.saturating_sub(DATA_START);
        let garbage_bytes = log_bytes.saturating_sub(live_bytes);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Stats {
            live_keys: self.len(),
            records,
            log_bytes,
            garbage_bytes,
            garbage_ratio: ratio(garbage_bytes, log_bytes),
            data_file_bytes: w.log.map().len(),
            index_file_bytes: w.index.len(),
            index_load_factor: ratio(used, self.capacity(&w)),
            log_end: end,
            durable_end: durable,
            committed,
            recovered_at_open: !self.recovery.was_clean(),
            compactions: w.generation,
            following: page.is_some(),
        }
    }
}

/// The decoded record at `off` in `log`: `None` if `off` is not an aligned offset in the
/// published part of this mapping.
#[inline]
pub(super) fn record_at(log: &LogMap, off: u64) -> Option<Result<(Record, &[u8]), CorruptKind>> {
    let rest = log.tail(off).filter(|_| off.is_multiple_of(RECORD_ALIGN))?;
    Some(Record::decode(rest).map(|rec| (rec, rest)))
}

pub(super) fn check_sizes(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge { len: key.len(), max: MAX_KEY_LEN });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge { len: value.len(), max: MAX_VALUE_LEN });
    }
    Ok(())
}
