//! The public `Store`: ties the log, the index and the OS layer together.
//!
//! Readers load the current [`State`] (log mapping + index mapping) with one atomic pointer
//! load and never take a lock. The single writer holds `Writer` behind a mutex, appends a
//! record, publishes it, then points the index slot at it. Growth builds a new mapping (or a
//! new index file) and publishes a new `State`; the old one lives on for whoever holds it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};

use crate::background::{Background, SyncPolicy};
use crate::commit::Durability;
use crate::error::{Error, Result};
use crate::follow::{self, Follower, Start};
use crate::format::CorruptKind;
use crate::format::{
    DATA_FILE, DATA_START, HEADER_LEN, HEADER_SLOTS, INDEX_FILE, IndexHeader, Kind, LogHeader,
    MAX_KEY_LEN, MAX_VALUE_LEN, PAGE, RECORD_ALIGN, Record, TMP_SUFFIX, crc_seed,
};
use crate::index::{self, DELETED, Table};
use crate::live::{Checkpoint, Files, Live, UNKNOWN_LAST};
use crate::os::{self, IndexMap, LogFile, LogMap, Observer, Seam, Value};
use crate::recovery::{
    self, Change, Counts, IndexCtx, Log, Problem, Rebuild, RecoveryReport, ResumeCtx, VerifyReport,
    last_record,
};
use crate::view::Reader;

/// First size of the data file, and the smallest growth step.
const MIN_GROWTH: u64 = 1 << 20;
/// Unsynced bytes past which the writer starts writeback of the log as it goes.
const WRITEBACK_AFTER: u64 = 256 << 20;
/// A writer that waits longer than this for the lock makes the others hand it over fairly.
const STARVING: std::time::Duration = std::time::Duration::from_millis(2);
/// Largest growth step: growth is geometric up to here, then linear.
const MAX_GROWTH: u64 = 1 << 30;

/// Options for opening a store; see [`Store::open`] for the defaults.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    read_only: bool,
    create: bool,
    verify_checksums: bool,
    sync_policy: SyncPolicy,
    auto_compact: Option<f64>,
    seam: Seam,
    attach_wait: std::time::Duration,
    rebuild_index: bool,
    zero_past_end: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Writable, created if missing, checksums verified at recovery only.
    pub fn new() -> Self {
        Self {
            read_only: false,
            create: true,
            verify_checksums: false,
            sync_policy: SyncPolicy::Manual,
            auto_compact: None,
            seam: Seam::default(),
            attach_wait: follow::ATTACH_WAIT,
            rebuild_index: false,
            zero_past_end: false,
        }
    }

    /// Open for reading only; never writes any file and takes no lock. While a writer (in
    /// any process) has the store open, the handle follows it: each read sees every write
    /// that returned before it, across growth and compaction (DESIGN.md §4). With no
    /// writer, it reads the store as it is, rebuilding the index in memory after an
    /// unclean shutdown, and follows a writer that opens the store later.
    pub fn read_only(&mut self, yes: bool) -> &mut Self {
        self.read_only = yes;
        self
    }

    /// Create the directory and store if missing (ignored when read-only).
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.create = yes;
        self
    }

    /// Check every value's CRC-32 before serving it. Without it, record headers and keys are
    /// still validated, so damaged bytes give an error, never a panic or a wild read.
    pub fn verify_checksums(&mut self, yes: bool) -> &mut Self {
        self.verify_checksums = yes;
        self
    }

    /// When writes become durable without calling [`sync`](Store::sync); see
    /// [`SyncPolicy`]. Default: [`SyncPolicy::Manual`].
    pub fn sync_policy(&mut self, policy: SyncPolicy) -> &mut Self {
        self.sync_policy = policy;
        self
    }

    /// Compact automatically, in a background thread, once garbage (overwritten and
    /// deleted records) is at least `ratio` of a log of at least 1 MiB; `None` (the
    /// default) never does.
    pub fn auto_compact(&mut self, ratio: Option<f64>) -> &mut Self {
        self.auto_compact = ratio;
        self
    }

    /// Test seam: reports every durability-relevant operation to `observer`, which may also
    /// make it fail. Not part of the supported API.
    #[doc(hidden)]
    pub fn observer(&mut self, observer: Arc<dyn Observer>) -> &mut Self {
        self.seam = Seam::new(Some(observer));
        self
    }

    /// Rebuild the index from the log at open even if it looks trustworthy: the repair for
    /// an index damaged after a clean close (`verify` reports `IndexDisagrees`). A writer
    /// replaces `index.mkv`; a read-only handle rebuilds in memory. Ignored by a read-only
    /// handle that follows a live writer.
    pub fn rebuild_index(&mut self, yes: bool) -> &mut Self {
        self.rebuild_index = yes;
        self
    }

    /// Zero the data file past the end of the log at open, even after a clean close: the
    /// repair for nonzero bytes there (`verify` reports
    /// [`NonzeroPastEnd`](crate::CorruptKind::NonzeroPastEnd); `mapkv recover` does this).
    /// The log and the index are not touched, so a clean index stays trusted. Ignored by
    /// read-only handles.
    pub fn zero_past_end(&mut self, yes: bool) -> &mut Self {
        self.zero_past_end = yes;
        self
    }

    /// Test seam: how long a read-only open waits for a writer whose live page names
    /// nothing it can map (default 2 s). Not part of the supported API.
    #[doc(hidden)]
    pub fn attach_wait(&mut self, wait: std::time::Duration) -> &mut Self {
        self.attach_wait = wait;
        self
    }

    /// Opens the store in directory `dir`.
    ///
    /// # Errors
    /// [`Error::Locked`] at once, for a writer, if another handle writes the store; for a
    /// read-only handle, if a writer holds it that cannot be followed (an older mapkv, or
    /// one still opening the store after 2 s); [`Error::NotFound`] without `create`; [`Error::Corrupt`] or
    /// [`Error::UnsupportedVersion`] for files it cannot read; [`Error::Io`].
    pub fn open(&self, dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir.as_ref(), self)
    }
}

/// One published view: a mapping of the data file and the index to search with it.
/// `next` links to the view that replaced it, so a [`Reader`] pinned here can follow growth
/// without a lock and without ever dropping a mapping it lent out.
pub(crate) struct State {
    pub(crate) log: Arc<LogMap>,
    pub(crate) index: Arc<IndexMap>,
    pub(crate) next: OnceLock<Arc<State>>,
    /// Which pair of files: compaction starts a new generation. Offsets in one
    /// generation's index mean nothing in another's log.
    pub(crate) generation: u64,
}

/// What a lookup in one view found.
enum Lookup<'s> {
    Found(&'s [u8]),
    Absent,
    /// The index named a record (at slot, offset) this view's mapping does not reach: use
    /// a newer view.
    Stale(u64, u64),
}

/// What `Store::assemble` makes a handle of.
pub(crate) struct Parts {
    pub w: Writer,
    pub live_keys: u64,
    /// How far the log is known durable.
    pub durable: u64,
    pub report: RecoveryReport,
    pub live: Option<Live>,
    pub follow: Option<Follower>,
}

/// Everything only the writer touches.
pub(crate) struct Writer {
    pub(crate) log: LogFile,
    pub(crate) index: Arc<IndexMap>,
    /// End of the log (the published length).
    pub(crate) end: u64,
    /// Bytes appended since the last sync started (for [`SyncPolicy::EveryBytes`]).
    pub(crate) unsynced: u64,
    /// Records and live bytes of the log.
    pub(crate) counts: Counts,
    /// The newest header slot written: its `seq` and `committed`.
    pub(crate) header: LogHeader,
    /// The index file header currently says "clean".
    pub(crate) index_clean: bool,
    /// Occupied index slots (live and deleted keys).
    pub(crate) used: u64,
    /// Files in use since open: compaction adds one.
    pub(crate) generation: u64,
    /// A writer's exclusive lock on the store, held while open (read-only handles take
    /// none).
    pub(crate) _lock: Option<std::fs::File>,
    /// The files announced on the live page (writer) or followed (read-only handle).
    pub(crate) files: Files,
    pub(crate) seam: Seam,
    /// The tag of the newest checkpoint written to the live page (writers).
    pub(crate) tag: u64,
    /// The record ending at the visible end, and its checksum word (`Checkpoint::last`).
    pub(crate) last: (u64, u64),
    /// Views and mappings that growth replaced while the lock was held, unmapped once it is
    /// released ([`Store::unlock_writer`]): unmapping a large file takes milliseconds, which
    /// every writer would wait for.
    pub(crate) retired: Vec<Box<dyn Send>>,
}

impl Writer {
    /// The writer's state now, with `live` keys, as a checkpoint (its tag is the last one
    /// written: the caller sets the next).
    pub(crate) fn as_checkpoint(&self, live: u64) -> Checkpoint {
        Checkpoint {
            tag: self.tag,
            key: self.files.key,
            end: self.log.visible(),
            last: self.last.0,
            last_crc: self.last.1,
            live,
            used: self.used,
            records: self.counts.records,
            live_bytes: self.counts.live_bytes,
        }
    }
}

/// A zero-copy, memory-mapped key-value store. `Send + Sync`: share it with `Arc`.
///
/// Reads ([`get`](Store::get), [`reader`](Store::reader)) never lock; writes
/// ([`put`](Store::put), [`delete`](Store::delete)) are serialised by an internal mutex.
/// A write that returned survives the process being killed; it survives power loss once a
/// later [`sync`](Store::sync) has returned.
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    /// Runs timed syncs and automatic compaction, when the options ask for them. Only the
    /// handle `open` returned has one; the thread itself works through a second handle.
    background: Option<Background>,
}

/// Everything a store handle is: shared between the user's handle and the background
/// thread's.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) index_path: PathBuf,
    pub(crate) state: ArcSwap<State>,
    pub(crate) writer: Mutex<Writer>,
    /// How far the log is durable, and whose turn it is to flush (group commit). A turn
    /// is taken before `writer` when both are needed.
    pub(crate) durability: Durability,
    pub(crate) policy: SyncPolicy,
    /// Held through a compaction: one at a time.
    pub(crate) compacting: Mutex<()>,
    /// A compaction waits for the writer lock to start its pause: writers hand the lock
    /// over fairly.
    pub(crate) pause_wanted: AtomicBool,
    /// Writers that have waited for the lock longer than `STARVING`.
    pub(crate) starving: AtomicU64,
    pub(crate) live_keys: AtomicU64,
    pub(crate) poisoned: OnceLock<Arc<Error>>,
    pub(crate) store_id: u64,
    pub(crate) seed: u32,
    pub(crate) verify: bool,
    pub(crate) read_only: bool,
    pub(crate) recovery: RecoveryReport,
    /// Set by `simulate_crash`: drop without the clean close.
    pub(crate) abandoned: AtomicBool,
    /// A writer's live page, where it shows followers its files and marks.
    pub(crate) live: Option<Live>,
    /// A read-only handle's link to the writer's live page.
    pub(crate) follow: Option<Follower>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("len", &self.len())
            .field("read_only", &self.shared.read_only)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in directory `dir`, creating it if missing, for reading and writing.
    /// Same as `OpenOptions::new().open(dir)`.
    ///
    /// # Errors
    /// As [`OpenOptions::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        OpenOptions::new().open(dir)
    }

    fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Self> {
        let writable = !opts.read_only;
        let seam = &opts.seam;
        if writable && opts.create && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        // The lock comes first: an opener that is refused has changed nothing. Read-only
        // handles take none: they follow a writer if there is one.
        let (lock, start) = if writable {
            (Some(os::lock_dir(dir)?), None)
        } else {
            match follow::start(dir, opts.attach_wait)? {
                Start::Follow(live, attached) => {
                    return Self::open_following(dir, opts, live, *attached);
                }
                Start::Alone(live) => (None, Some(live)),
            }
        };
        let data_path = dir.join(DATA_FILE);
        if writable {
            // Leftovers of a compaction that never reached its swap: the store is the old
            // files (DESIGN.md, "Compaction").
            crate::compact::remove_leftovers(dir);
        }
        let created = writable && opts.create && !data_path.exists();
        if created {
            // The directory's own name must be durable before anything synced inside it
            // (done here, not when creating the directory, so a retried open redoes it).
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            os::sync_dir(seam, parent.unwrap_or(Path::new(".")))?;
            create_data_file(seam, dir, &data_path, os::random_id())?;
        }
        let page = if writable { Some(Live::create(dir, seam)?) } else { None };
        let file =
            std::fs::OpenOptions::new().read(true).write(writable).open(&data_path).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::NotFound { path: dir.to_path_buf() },
                    _ => Error::io("open", &data_path, e),
                },
            )?;
        let log = LogFile::new(file, &data_path, writable, DATA_START, seam)?;
        let header = recovery::read_header(log.bytes(), &data_path)?;
        let index_path = dir.join(INDEX_FILE);
        let ctx = IndexCtx { path: &index_path, writable, store_id: header.store_id, seam };

        let existing = IndexMap::open(&index_path, writable, seam)?;
        // The record ending at the log's end, for the session's first checkpoint.
        let mut last = (UNKNOWN_LAST, 0);
        // After resuming: where the bytes the killed writer left past the cut end.
        let mut garbage_end = None;
        let trusted = if opts.rebuild_index {
            Err("a rebuild was asked for".to_string())
        } else {
            recovery::trust_index(existing.as_ref(), &header, log.bytes())
        };
        let (index, used, live, counts, mut report) = match (existing, trusted) {
            (Some(map), Ok(h)) => {
                let report = RecoveryReport { log_end: h.clean_len, ..RecoveryReport::default() };
                let counts = Counts { records: h.records, live_bytes: h.live_bytes };
                (map, h.used, h.live, counts, report)
            }
            (old, trusted) => {
                let mut reason = trusted.err();
                // After a process crash in this boot, the index is as the writer left it:
                // resume from its last checkpoint instead of scanning the log.
                // A read-only handle resumes into its private (copy-on-write) mapping of
                // the index, and writes no file.
                let own = page.as_ref().or(start.as_ref().and_then(|s| s.as_ref().map(|l| &l.0)));
                let resumed = match (&old, own) {
                    (Some(map), Some(own)) if !opts.rebuild_index => {
                        let cx = ResumeCtx {
                            log: log.bytes(),
                            written_end: &|from| log.written_end(from),
                            header: &header,
                            data_path: &data_path,
                            index: map,
                            index_path: &index_path,
                        };
                        Some(recovery::resume(&cx, own, log.ino()))
                    }
                    _ => None,
                };
                match (old, resumed) {
                    (Some(map), Some(Ok(r))) => {
                        (last, garbage_end) = (r.last, Some(r.garbage_end));
                        (map, r.used, r.live, r.counts, r.report)
                    }
                    (old, resumed) => {
                        if let (Some(why), Some(Err(Some(not)))) = (&mut reason, resumed) {
                            *why = format!("{why}, and it could not resume: {not}");
                        }
                        let (r, mut report, tail) =
                            Self::rebuild(&log, &header, &ctx, old.as_ref())?;
                        last = last_record(log.bytes(), tail.last);
                        report.reason = reason;
                        (r.index, r.used, r.live, r.counts, report)
                    }
                }
            }
        };
        let end = report.log_end;
        // What is known durable: all of the log after a clean close or a rebuild (which
        // flushes the file below); after resuming, only what the dead writer's header
        // committed, so the first sync flushes the rest and reports any writeback error
        // it met (DESIGN.md §6).
        let durable = if report.resumed_from.is_some() { header.committed } else { end };
        let mut w = Writer {
            log,
            index: Arc::new(index),
            end,
            unsynced: 0,
            counts,
            header,
            index_clean: report.was_clean(),
            used,
            generation: 0,
            _lock: lock,
            files: Files::default(),
            seam: seam.clone(),
            tag: 0,
            last,
            retired: Vec::new(),
        };
        w.log.publish(end);
        w.log.make_visible(end);
        if let Some(pg) = &page {
            // Followers switch to this session before recovery zeroes anything. The
            // session's first checkpoint is the state recovery arrived at.
            w.log.set_mirror(Arc::new(pg.clone()));
            let ids = (w.log.ino(), w.index.ino());
            // Tags go on above the one the index carries (and the page's).
            let table = Table::new(w.index.words());
            let first = Checkpoint { tag: table.tag(), ..w.as_checkpoint(live) };
            let set_tag = |tag| table.set_tag(tag);
            (w.files.key, w.tag) = pg.start_session(header.store_id, ids, first, set_tag);
            (w.files.data_ino, w.files.index_ino) = ids;
        }
        if writable && report.index_rebuilt {
            // Stale bytes past the cut must never parse later; then record the new end.
            w.log.zero_tail(end)?;
            write_header(&mut w, end)?;
            os::sync_dir(seam, dir)?; // the rebuilt index's name, so a stale one cannot return
        } else if writable && opts.zero_past_end {
            // Asked for (DESIGN.md §2): nothing below the end changes, so the index, clean
            // or resumed, stays right whatever a crash in the middle leaves.
            w.log.zero_tail(end)?;
        } else if let Some(to) = garbage_end.filter(|&to| writable && to > end) {
            // Resumed past a torn write: zero what the killed writer left past the cut and
            // flush just that (its records below stay unsynced, as they were).
            w.log.zero_range(end, to)?;
        }
        if created {
            // A new store: its first index was built, not recovered.
            report = RecoveryReport { log_end: end, ..RecoveryReport::default() };
        }
        let parts = Parts {
            w,
            live_keys: live,
            durable,
            report,
            live: page,
            follow: start.flatten().map(Follower::unattached),
        };
        Self::assemble(dir, opts, parts)
    }

    /// Rebuilds the index from the whole log (into a new index file for a writer, in
    /// memory for a read-only handle), sized from the old index's key count if it has one.
    fn rebuild<'c>(
        log: &LogFile,
        header: &LogHeader,
        ctx: &'c IndexCtx<'c>,
        old: Option<&IndexMap>,
    ) -> Result<(Rebuild<'c>, RecoveryReport, recovery::Tail)> {
        // Size the new index from the old one's count, bounded by what the log can hold (a
        // count read off disk is never trusted for an allocation).
        let old = old
            .and_then(|m| IndexHeader::decode(&Table::new(m.words()).header_bytes(), m.len()).ok());
        let most = log.bytes().len() as u64 / Record::KEY_OFFSET;
        let hint = old.map_or(0, |h| h.live).min(most);
        let (index, _) = ctx.create(None, hint)?;
        let mut rebuild = Rebuild::new(index, ctx);
        log.advise_sequential(true);
        let scanned = recovery::scan(Log::whole(log.bytes()), header, log.path(), &mut rebuild);
        log.advise_sequential(false);
        let (report, tail) = scanned?;
        Ok((rebuild, report, tail))
    }

    /// The handle over an opened writer state (writers and read-only handles alike).
    pub(crate) fn assemble(dir: &Path, opts: &OpenOptions, p: Parts) -> Result<Self> {
        let state = Arc::new(State {
            log: Arc::clone(p.w.log.map()),
            index: Arc::clone(&p.w.index),
            next: OnceLock::new(),
            generation: 0,
        });
        let (store_id, durable) = (p.w.header.store_id, p.durable);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            index_path: dir.join(INDEX_FILE),
            state: ArcSwap::new(state),
            writer: Mutex::new(p.w),
            durability: Durability::new(durable),
            policy: opts.sync_policy,
            compacting: Mutex::new(()),
            pause_wanted: AtomicBool::new(false),
            starving: AtomicU64::new(0),
            live_keys: AtomicU64::new(p.live_keys),
            poisoned: OnceLock::new(),
            store_id,
            seed: crc_seed(store_id),
            verify: opts.verify_checksums,
            read_only: opts.read_only,
            recovery: p.report,
            abandoned: Default::default(),
            live: p.live,
            follow: p.follow,
        });
        let mut store = Self { shared, background: None };
        if let Some(live) = &store.shared.live {
            let w = store.shared.writer.lock();
            live.set_durable(durable, w.header.committed);
        }
        let interval = match opts.sync_policy {
            SyncPolicy::Interval(every) => Some(every),
            _ => None,
        };
        if !opts.read_only && (interval.is_some() || opts.auto_compact.is_some()) {
            let worker = || Self { shared: Arc::clone(&store.shared), background: None };
            let bg = Background::spawn(worker, interval, opts.auto_compact)
                .map_err(|e| Error::io("start the background thread", dir, e))?;
            store.background = Some(bg);
        }
        Ok(store)
    }

    /// The value of `key`, borrowed straight from the mapping (no copy, no allocation).
    /// The [`Value`] stays valid and unchanged while held, across later writes, growth and
    /// the store being dropped. For many reads in a loop, [`reader`](Store::reader) avoids
    /// the per-value reference count.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the bytes found are damaged; [`Error::Poisoned`].
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        self.check_poisoned()?;
        self.follow()?;
        let key = key.as_ref();
        let hash = self.hash(key);
        let guard = self.shared.state.load();
        let found = self.find(&guard, None, hash, key, guard.log.visible())?;
        Ok(found.map(|(state, bytes)| state.log.value(bytes)))
    }

    /// A read view for hot loops: its [`Reader::get`] returns plain `&[u8]` borrowed from
    /// the reader, with no reference counting per read. It sees every write that returned
    /// before each `get`, follows growth, and keeps every mapping it lent from alive until
    /// it is dropped, so hold one per batch of work rather than forever.
    pub fn reader(&self) -> Reader<'_> {
        let _ = self.follow(); // an error here shows at the reader's first get
        Reader::new(self, self.shared.state.load_full())
    }

    /// Sets `key` to `value`. Once this returns the write survives a crash of the process;
    /// it survives power loss after the next [`sync`](Store::sync).
    ///
    /// # Errors
    /// [`Error::KeyTooLarge`], [`Error::ValueTooLarge`], [`Error::ReadOnly`],
    /// [`Error::Poisoned`], [`Error::Io`] (a full disk when the file must grow; nothing is
    /// written then), [`Error::Corrupt`] if the index points at damaged bytes.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.write_one(Kind::Put, key, value).map(|_| ())
    }

    /// Deletes `key`, returning whether it existed. Deleting an absent key writes nothing.
    ///
    /// # Errors
    /// As [`put`](Store::put).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.write_one(Kind::Delete, key.as_ref(), &[])
    }

    /// Number of live keys.
    pub fn len(&self) -> u64 {
        match &self.shared.follow {
            Some(f) if f.attached() => f.live.figures().live,
            _ => self.shared.live_keys.load(Ordering::Relaxed),
        }
    }

    /// Whether the store has no live keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// The random id chosen when the store was created.
    pub fn id(&self) -> u64 {
        self.shared.store_id
    }

    /// What open did: whether it rebuilt the index, how many records it replayed, and
    /// where it cut a torn tail.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Where the first nonzero byte of the data file past the end of the log is, if there is
    /// one. There should be none (DESIGN.md §2, "zeros past the end"):
    /// [`verify`](Store::verify) reports one as [`CorruptKind::NonzeroPastEnd`], and a
    /// writable open with [`OpenOptions::zero_past_end`] zeroes them (`mapkv recover` does).
    /// Cheap however much space the file reserves: only what the file holds pages for is
    /// read. On a read-only handle after an unclean shutdown, this finds the torn tail that
    /// the next writable open cuts and zeroes.
    ///
    /// `None` without looking on a handle that follows a live writer, and `None` on one
    /// that opened alone if a writer has opened the store since: past the end this handle
    /// knows, that writer may be writing.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or [`Error::Io`] if the file cannot be read.
    pub fn nonzero_past_end(&self) -> Result<Option<u64>> {
        self.check_poisoned()?;
        self.follow()?;
        let w = self.shared.writer.lock();
        self.nonzero_past(&w)
    }

    /// As [`nonzero_past_end`](Store::nonzero_past_end), under the writer lock.
    fn nonzero_past(&self, w: &Writer) -> Result<Option<u64>> {
        if self.shared.follow.as_ref().is_some_and(|f| f.attached()) {
            return Ok(None); // the writer's, past its published end
        }
        let Some(at) = w.log.first_nonzero_from(w.end)? else { return Ok(None) };
        if self.shared.read_only {
            // Opened alone: a writer that opened since may be writing past our end, or may
            // have written there and closed (its header then differs from ours).
            let moved = |h: LogHeader| h.seq != w.header.seq;
            if os::writer_alive(&self.shared.dir)? || w.log.read_head().is_ok_and(moved) {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// The full check: reads every record of the log and verifies its checksum; if they are
    /// all sound, rebuilds the index in memory and compares it slot by slot with the index
    /// file, and checks the key count. It also checks that the data file holds only zeros
    /// past the end of the log ([`nonzero_past_end`](Store::nonzero_past_end)) where that
    /// must hold now: on a writer, and on a read-only handle of a store closed cleanly
    /// (after a crash, what lies past the end is the torn tail the next writable open cuts,
    /// reported in [`recovery`](Store::recovery)). Writers wait while it runs; readers do
    /// not. Memory use is about 32 bytes per key.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or [`Error::Io`] if the check itself cannot run. Damage is not
    /// an error here: it is listed in the report.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.check_poisoned()?;
        // A follower checks the log as far as the writer had made visible when it started
        // (and mapped), and the index slots that point below that.
        let mut tries = 0;
        let (w, end, following) = loop {
            self.follow()?;
            let w = self.shared.writer.lock();
            let following = self.shared.follow.as_ref().is_some_and(|f| f.attached());
            let end = if following { w.log.map().visible() } else { w.end };
            if end <= w.log.map().len() {
                break (w, end, following);
            }
            if end == u64::MAX {
                // Files a compaction replaced, which the handle could not leave: whole
                // and final, so their end is where their records end.
                let path = self.shared.dir.join(DATA_FILE);
                let log = Log::records(w.log.map().records(u64::MAX));
                let end = recovery::valid_end(log, &w.header, &path, (DATA_START, 0))?.end;
                break (w, end, following);
            }
            // The writer grew the log since this handle mapped it: map it and look again.
            tries += 1;
            if tries == 100 {
                let why = std::io::Error::other("the writer's log keeps outgrowing this handle");
                return Err(Error::io("verify", &self.shared.dir, why));
            }
        };
        // Only the published records: a follower's writer rewrites the header pages at each
        // sync and writes past its published end while this runs (DESIGN.md §7).
        let log = Log::records(w.log.map().records(end));
        let end = log.end();
        let data_path = self.shared.dir.join(DATA_FILE);
        // Everything below the end must be valid: claim it all as committed.
        let header = LogHeader { committed: end, ..w.header };
        let ctx = IndexCtx {
            path: &self.shared.index_path,
            writable: false,
            store_id: self.shared.store_id,
            seam: &w.seam,
        };
        let hint = self.len().min((end - DATA_START) / Record::KEY_OFFSET);
        let (index, _) = ctx.create(None, hint)?;
        let mut rebuilt = Rebuild::new(index, &ctx);
        let (records, damaged) = recovery::check_log(log, self.shared.store_id);
        let mut report = VerifyReport { log_end: end, records, ..VerifyReport::default() };
        let sound = damaged.is_empty();
        let file = || data_path.clone();
        let damaged =
            damaged.into_iter().map(|(offset, kind)| Problem { file: file(), offset, kind });
        report.problems = damaged.collect();
        let settled = !self.shared.read_only || self.shared.recovery.was_clean();
        if settled && let Some(offset) = self.nonzero_past(&w)? {
            let kind = CorruptKind::NonzeroPastEnd { log_end: end };
            report.problems.push(Problem { file: file(), offset, kind });
        }
        if !sound {
            return Ok(report); // the index can only be judged against a sound log
        }
        recovery::scan(log, &header, &data_path, &mut rebuilt)?;
        report.live_keys = rebuilt.live;
        let (truth, disk) = (Table::new(rebuilt.index.words()), Table::new(w.index.words()));
        let mismatch = |offset, record| Problem {
            file: self.shared.index_path.clone(),
            offset,
            kind: CorruptKind::IndexDisagrees { record },
        };
        // Every live key of the log is in the index at its latest record (or at a later one,
        // for a follower: the writer went on)...
        let later = |word: u64| following && word & !DELETED >= end;
        for (_, hash, word) in truth.occupied().filter(|(_, _, w)| w & DELETED == 0) {
            if disk.find(hash, |_, w| Ok(w == word || later(w)))?.is_none() {
                report.problems.push(mismatch(0, word));
            }
        }
        // ...and the index holds no live slot the log does not.
        for (slot, hash, word) in disk.occupied().filter(|&(_, _, w)| w & DELETED == 0 && !later(w))
        {
            if truth.get(hash, |_, off| Ok(off == word))?.is_none() {
                report.problems.push(mismatch(Table::slot_offset(slot), word));
            }
        }
        if !following && rebuilt.live != self.len() {
            report.problems.push(Problem {
                file: self.shared.index_path.clone(),
                offset: 0,
                kind: CorruptKind::BadField { field: "live key count", value: self.len() },
            });
        }
        Ok(report)
    }

    /// Closes the store cleanly, so the next open reads headers only. Dropping the store
    /// does the same but cannot report errors.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Poisoned`] if the final flushes fail; the store is then
    /// recovered from the log at the next open.
    pub fn close(mut self) -> Result<()> {
        drop(self.background.take());
        self.shutdown()
    }

    // ---- internals --------------------------------------------------------------------

    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        crate::format::key_hash(key, self.shared.store_id)
    }

    #[inline]
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        match self.shared.poisoned.get() {
            None => Ok(()),
            Some(cause) => Err(Error::Poisoned { cause: Arc::clone(cause) }),
        }
    }

    pub(crate) fn poison_on_err<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            let _ = self.shared.poisoned.set(Arc::new(e.duplicate()));
        }
        r
    }

    /// Searches `state` (with `pinned`'s index instead of its own, for a snapshot),
    /// following newer views while the index names a record that this view's mapping does
    /// not reach. Returns the value and the view it was found in.
    #[inline]
    pub(crate) fn find<'s>(
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
    pub(crate) fn newer<'s>(
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
            .ok_or_else(|| recovery::bad_slot(&self.shared.index_path, slot, off))
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
        let bad = |slot, off| recovery::bad_slot(&self.shared.index_path, slot, off);
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
    pub(crate) fn version<'s>(
        &self,
        log: &'s LogMap,
        slot: u64,
        word: u64,
        (mut rec, mut rest): (Record, &'s [u8]),
        visible: u64,
    ) -> Result<Option<(&'s [u8], &'s [u8])>> {
        let mut off = word & !DELETED;
        let bad = |at| recovery::bad_slot(&self.shared.index_path, slot, at);
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
        if self.shared.verify {
            rec.verify(self.shared.seed, rest).map_err(|kind| Error::Corrupt {
                file: self.shared.dir.join(DATA_FILE),
                offset: off,
                kind,
            })?;
        }
        Ok(Some((key, rec.value(rest))))
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_poisoned()
    }

    /// Takes the writer lock for a write. A writer that has waited 2 ms says so, and
    /// while one does, writers release the lock fairly ([`unlock_writer`]): with more
    /// writer threads than cores, the unfair hand-over let one wait tens of milliseconds
    /// while the others took the lock again and again.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        if let Some(guard) = self.shared.writer.try_lock_for(STARVING) {
            return guard;
        }
        self.shared.starving.fetch_add(1, Ordering::Relaxed);
        let guard = self.shared.writer.lock();
        self.shared.starving.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Releases the writer lock after a write, then unmaps what growth retired under it.
    /// Fairly while a compaction waits for its pause or a writer has starved
    /// ([`lock_writer`](Store::lock_writer)): the waiter gets the lock next, instead of
    /// waiting while writers take it again and again (DESIGN.md §4, "Reaching the lock").
    /// Otherwise not, since a fair hand-over costs a context switch per write when writers
    /// outnumber the cores.
    #[inline]
    pub(crate) fn unlock_writer(&self, mut guard: MutexGuard<'_, Writer>) {
        let retired = std::mem::take(&mut guard.retired);
        let starving = self.shared.starving.load(Ordering::Relaxed) != 0;
        if starving || self.shared.pause_wanted.load(Ordering::Relaxed) {
            MutexGuard::unlock_fair(guard);
        } else {
            drop(guard);
        }
        drop(retired);
    }

    /// A single put or delete, visible as soon as it is in the index.
    pub(crate) fn write_one(&self, kind: Kind, key: &[u8], value: &[u8]) -> Result<bool> {
        check_sizes(key, value)?;
        self.check_writable()?;
        let mut guard = self.lock_writer();
        let w = &mut *guard;
        self.check_poisoned()?;
        let off = w.end;
        let Some(change) = self.append(w, (kind, false), key, value, self.hash(key))? else {
            return Ok(false);
        };
        let end = w.end;
        w.log.make_visible(end);
        w.seam.point("write visible");
        w.last = last_record(w.log.bytes(), off);
        // Only the writer changes the count, so load-then-store does not race.
        self.shared.live_keys.store(change.live_after(kind, self.len()), Ordering::Relaxed);
        self.checkpoint(w);
        let unsynced = w.unsynced;
        self.unlock_writer(guard);
        self.after_write(unsynced)?;
        Ok(change.was_live)
    }

    /// Appends one record and points the key's slot at it; not yet visible to readers.
    /// `None` for a delete of an absent key (nothing written).
    pub(crate) fn append(
        &self,
        w: &mut Writer,
        (kind, batch): (Kind, bool),
        key: &[u8],
        value: &[u8],
        hash: u64,
    ) -> Result<Option<Change>> {
        let index_path = &self.shared.index_path;
        let locate = |w: &Writer| {
            let log = w.log.map();
            Table::new(w.index.words()).locate(hash, |slot, off| {
                recovery::key_at(log.tail(off), slot, off, key, index_path)
            })
        };
        let mut change = Change::from_slot(locate(w)?);
        if kind == Kind::Delete && !change.is_some_and(|c| c.was_live) {
            return Ok(None);
        }
        if w.index_clean {
            // Before the first change, durably mark the index as not to be trusted.
            self.mark_index(w, 0)?;
        }
        if change.is_none_or(|c| c.was_vacant && index::needs_growth(w.used, self.capacity(w))) {
            self.grow_index(w, 0)?;
            change = Change::from_slot(locate(w)?);
        }
        let change = change.ok_or_else(|| self.index_full(w.used))?;
        let len = Record::len_for(key.len(), value.len());
        let off = w.end;
        let end = off.saturating_add(len);
        if end > w.log.map().len() {
            self.grow_log(w, end)?;
        }
        let seed = self.shared.seed;
        w.log.write_at(
            off,
            |dst| Record::encode_into(seed, (kind, batch), change.prev, key, value, dst),
            len as usize,
        );
        w.end = end;
        w.log.publish(end);
        w.seam.point("record published");
        // Far behind the last sync (a bulk load without syncs): let the log be written
        // back as it goes rather than hit the kernel's dirty limit (DESIGN.md §5).
        w.log.set_writeback(w.unsynced >= WRITEBACK_AFTER);
        Table::new(w.index.words()).set(
            change.slot,
            hash,
            index::word_for(off, kind == Kind::Delete),
        );
        w.seam.point("slot stored");
        w.used += u64::from(change.was_vacant);
        let old_len =
            if change.was_live { recovery::record_len(w.log.map().tail(change.prev)) } else { 0 };
        w.counts.add(kind, len, &change, old_len);
        w.unsynced = w.unsynced.saturating_add(len);
        Ok(Some(change))
    }

    pub(crate) fn capacity(&self, w: &Writer) -> u64 {
        Table::new(w.index.words()).capacity()
    }

    /// Publishes a view of the writer's files; returns the view it replaced (the last hold
    /// on its mappings, unless readers have it: drop it outside the writer lock).
    pub(crate) fn publish_state(&self, w: &Writer) -> Arc<State> {
        let next = Arc::new(State {
            log: Arc::clone(w.log.map()),
            index: Arc::clone(&w.index),
            next: OnceLock::new(),
            generation: w.generation,
        });
        let old = self.shared.state.swap(Arc::clone(&next));
        // Only the writer publishes, and each state gets exactly one successor.
        let _ = old.next.set(next);
        old
    }

    pub(crate) fn grow_log(&self, w: &mut Writer, min_end: u64) -> Result<()> {
        let len = w.log.map().len();
        let step = len.clamp(MIN_GROWTH, MAX_GROWTH);
        let wanted = min_end.max(len.saturating_add(step)).div_ceil(PAGE) * PAGE;
        let mut reserved = w.log.reserve(wanted);
        if is_enospc(&reserved) {
            // No room for the geometric step: take just what this write needs.
            reserved = w.log.reserve(min_end.div_ceil(PAGE) * PAGE);
        }
        reserved?;
        // No fdatasync of the new size here, under the writer lock (it would wait for
        // every dirty page of the file): the next sync's msync makes it durable with the
        // records that need it (DESIGN.md §5, "Growth of the data file").
        let replaced = w.log.remap()?;
        let old = self.publish_state(w);
        w.retired.push(Box::new((replaced, old)));
        Ok(())
    }

    /// Replaces the index with a larger one holding its live keys, with room for `keys`
    /// more.
    pub(crate) fn grow_index(&self, w: &mut Writer, keys: u64) -> Result<()> {
        let ctx = IndexCtx {
            path: &self.shared.index_path,
            writable: true,
            store_id: self.shared.store_id,
            seam: &w.seam,
        };
        let (new, live) = ctx.create(Some(&w.index), keys)?;
        w.index = Arc::new(new);
        // Counts from the slots themselves: this also heals counts read off a damaged header.
        w.used = live;
        self.shared.live_keys.store(live, Ordering::Relaxed);
        // The new file is marked dirty from birth.
        w.index_clean = false;
        let old = self.publish_state(w);
        w.retired.push(Box::new(old));
        self.announce(w);
        Ok(())
    }

    pub(crate) fn index_full(&self, used: u64) -> Error {
        Error::Corrupt {
            file: self.shared.index_path.clone(),
            offset: 0,
            kind: CorruptKind::BadField { field: "index occupancy", value: used },
        }
    }

    /// Writes the index header with `clean_len` (0 = dirty) and flushes it.
    pub(crate) fn mark_index(&self, w: &mut Writer, clean_len: u64) -> Result<()> {
        let h = IndexHeader {
            store_id: self.shared.store_id,
            capacity: self.capacity(w),
            clean_len,
            live: self.len(),
            used: w.used,
            live_bytes: w.counts.live_bytes,
            records: w.counts.records,
        };
        Table::new(w.index.words()).write_header(&h);
        self.poison_on_err(w.index.flush(0, PAGE))?;
        w.index_clean = clean_len != 0;
        Ok(())
    }

    fn shutdown(&self) -> Result<()> {
        self.check_poisoned()?;
        if self.shared.read_only {
            return Ok(());
        }
        let turn = self.shared.durability.exclusive();
        let mut guard = self.shared.writer.lock();
        let w = &mut *guard;
        if w.index_clean {
            return Ok(());
        }
        // Records durable, then the header naming them, then the index, then its mark.
        let end = w.end;
        self.poison_on_err(w.log.flush(0, end))?;
        turn.finish(end);
        put_header(w, end);
        self.poison_on_err(w.log.flush(0, PAGE * 2))?;
        self.poison_on_err(w.index.flush(0, u64::MAX))?;
        self.poison_on_err(os::sync_dir(&w.seam, &self.shared.dir))?;
        self.mark_index(w, end)?;
        if let Some(live) = &self.shared.live {
            live.end_session();
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Stops and joins the background thread, which drops its handle.
        drop(self.background.take());
        let last = Arc::strong_count(&self.shared) == 1;
        if last && !self.shared.abandoned.load(Ordering::Relaxed) {
            let _ = self.shutdown();
        }
    }
}

/// Test seams: not part of the supported API.
#[doc(hidden)]
impl Store {
    /// Drops the handle as if the process had been killed: no final flush, no clean mark.
    /// What was written stays in the page cache, as after `kill -9`.
    pub fn simulate_crash(self) {
        self.shared.abandoned.store(true, Ordering::Relaxed);
    }
}

/// The decoded record at `off` in `log`: `None` if `off` is not an aligned offset in the
/// published part of this mapping.
#[inline]
pub(crate) fn record_at(log: &LogMap, off: u64) -> Option<Result<(Record, &[u8]), CorruptKind>> {
    let rest = log.tail(off).filter(|_| off.is_multiple_of(RECORD_ALIGN))?;
    Some(Record::decode(rest).map(|rec| (rec, rest)))
}

pub(crate) fn check_sizes(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge { len: key.len(), max: MAX_KEY_LEN });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge { len: value.len(), max: MAX_VALUE_LEN });
    }
    Ok(())
}

fn is_enospc<T>(r: &Result<T>) -> bool {
    matches!(r, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC))
}

/// Writes the next header slot claiming `committed`, without flushing it.
pub(crate) fn put_header(w: &mut Writer, committed: u64) {
    let h = LogHeader { store_id: w.header.store_id, seq: w.header.seq.wrapping_add(1), committed };
    write_slot(&mut w.log, &h);
    w.header = h;
}

/// Writes `h` into its header slot (by `seq`, alternating), without flushing it.
pub(crate) fn write_slot(log: &mut LogFile, h: &LogHeader) {
    let mut b = [0; HEADER_LEN];
    h.encode_into(&mut b);
    log.write_header(HEADER_SLOTS[(h.seq % 2) as usize], &b);
}

/// Writes and flushes a header claiming `committed` (recovery; no store to poison yet).
fn write_header(w: &mut Writer, committed: u64) -> Result<()> {
    put_header(w, committed);
    w.log.flush(0, 2 * PAGE)
}

/// Creates an empty data file at `path` for store `store_id`: both header slots written,
/// blocks allocated, under a temporary name renamed into place, so a crash never leaves a
/// half-made file.
pub(crate) fn create_data_file(seam: &Seam, dir: &Path, path: &Path, store_id: u64) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let file = os::create(seam, &tmp)?;
    let mut log = LogFile::new(file, &tmp, true, DATA_START, seam)?;
    log.grow(MIN_GROWTH)?;
    for seq in 0..HEADER_SLOTS.len() as u64 {
        write_slot(&mut log, &LogHeader { store_id, seq, committed: DATA_START });
    }
    log.flush(0, 2 * PAGE)?;
    os::rename(seam, &tmp, path)?;
    os::sync_dir(seam, dir)
}
