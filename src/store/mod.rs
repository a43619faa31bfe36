//! The public [`Store`] and [`OpenOptions`]: every public method of a store is here, each
//! a call into the modules beside this one, which alone own the store's state:
//! - `shared`: the state (`State` views, `Writer`, `Shared`), the read path, the writer
//!   lock, poisoning, a follower's catching up;
//! - `write`: appends, growth, batches, syncs, the clean close, the live page's marks;
//! - `view`: [`Reader`], [`Snapshot`], iteration;
//! - `compact`: online compaction; `verify`: the full check; `open`: opening and recovery.
//!
//! Readers load the current view (log mapping + index mapping) with one atomic pointer load
//! and never take a lock. The single writer holds `Writer` behind a mutex, appends a
//! record, publishes it, then points the index slot at it. Growth builds a new mapping (or a
//! new index file) and publishes a new view; the old one lives on for whoever holds it.

mod compact;
mod copy;
mod open;
mod shared;
mod verify;
mod view;
mod write;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::background::{Background, Stop, Work};
use crate::batch::Batch;
use crate::commit::SyncPolicy;
use crate::error::{Error, Result};
use crate::format::Kind;
use crate::os::{Observer, Seam, Value};
use crate::recovery::{RecoveryReport, VerifyReport};
use crate::stats::Stats;

pub use compact::CompactStats;
use open::Options;
use shared::Shared;
pub use view::{Iter, Reader, Snapshot, SnapshotIter};

/// Options for opening a store; see [`Store::open`] for the defaults.
#[derive(Debug, Clone)]
pub struct OpenOptions(Options);

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Writable, created if missing, checksums verified at recovery only.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// use mapkv::{OpenOptions, SyncPolicy};
    /// let store = OpenOptions::new()
    ///     .sync_policy(SyncPolicy::EveryWrite) // every put durable when it returns
    ///     .open(tmp.path().join("db"))?;
    /// store.put("k", "v")?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn new() -> Self {
        Self(Options::default())
    }

    /// Open for reading only; never writes any file and takes no lock. While a writer (in
    /// any process) has the store open, the handle follows it: each read sees every write
    /// that returned before it, across growth and compaction
    /// ([DESIGN.md §4](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#readers-in-other-processes)). With no
    /// writer, it reads the store as it is, rebuilding the index in memory after an
    /// unclean shutdown, and follows a writer that opens the store later.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// use mapkv::{OpenOptions, Store};
    /// let writer = Store::open(tmp.path())?;
    /// writer.put("k", "v")?;
    /// let reader = OpenOptions::new().read_only(true).open(tmp.path())?; // beside the writer
    /// assert_eq!(reader.get("k")?.as_deref(), Some(&b"v"[..]));
    /// assert!(matches!(reader.put("k", "w"), Err(mapkv::Error::ReadOnly)));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn read_only(&mut self, yes: bool) -> &mut Self {
        self.0.read_only = yes;
        self
    }

    /// Create the directory and store if missing (ignored when read-only).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let missing = mapkv::OpenOptions::new().create(false).open(tmp.path().join("nothing"));
    /// assert!(matches!(missing, Err(mapkv::Error::NotFound { .. })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.0.create = yes;
        self
    }

    /// Check every value's CRC-32 before serving it. Without it, record headers and keys are
    /// still validated, so damaged bytes give an error, never a panic or a wild read.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::OpenOptions::new().verify_checksums(true).open(tmp.path())?;
    /// store.put("k", "v")?;
    /// assert_eq!(store.get("k")?.as_deref(), Some(&b"v"[..])); // its CRC-32 was checked
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn verify_checksums(&mut self, yes: bool) -> &mut Self {
        self.0.verify_checksums = yes;
        self
    }

    /// When writes become durable without calling [`sync`](Store::sync); see
    /// [`SyncPolicy`]. Default: [`SyncPolicy::Manual`].
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// use mapkv::{OpenOptions, SyncPolicy};
    /// // A background thread syncs every 100 ms: a power cut loses at most ~100 ms of writes.
    /// let store = OpenOptions::new()
    ///     .sync_policy(SyncPolicy::Interval(Duration::from_millis(100)))
    ///     .open(tmp.path())?;
    /// store.put("k", "v")?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn sync_policy(&mut self, policy: SyncPolicy) -> &mut Self {
        self.0.sync_policy = policy;
        self
    }

    /// Compact automatically, in a background thread, once garbage (overwritten and
    /// deleted records) is at least `ratio` of a log of at least 1 MiB; `None` (the
    /// default) never does.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// // Compact in the background once half the log (of at least 1 MiB) is garbage.
    /// let store = mapkv::OpenOptions::new().auto_compact(Some(0.5)).open(tmp.path())?;
    /// store.put("k", "v")?;
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn auto_compact(&mut self, ratio: Option<f64>) -> &mut Self {
        self.0.auto_compact = ratio;
        self
    }

    /// Test seam: reports every durability-relevant operation to `observer`, which may also
    /// make it fail. Not part of the supported API.
    #[doc(hidden)]
    pub fn observer(&mut self, observer: Arc<dyn Observer>) -> &mut Self {
        self.0.seam = Seam::new(Some(observer));
        self
    }

    /// Rebuild the index from the log at open even if it looks trustworthy: the repair for
    /// an index damaged after a clean close (`verify` reports `IndexDisagrees`). A writer
    /// replaces `index.mkv`; a read-only handle rebuilds in memory. Ignored by a read-only
    /// handle that follows a live writer.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// mapkv::Store::open(tmp.path())?.put("k", "v")?;
    /// let store = mapkv::OpenOptions::new().rebuild_index(true).open(tmp.path())?;
    /// assert!(store.recovery().index_rebuilt);
    /// assert_eq!(store.get("k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn rebuild_index(&mut self, yes: bool) -> &mut Self {
        self.0.rebuild_index = yes;
        self
    }

    /// Zero the data file past the end of the log at open, even after a clean close: the
    /// repair for nonzero bytes there (`verify` reports
    /// [`NonzeroPastEnd`](crate::CorruptKind::NonzeroPastEnd); `mapkv recover` does this).
    /// The log and the index are not touched, so a clean index stays trusted. Ignored by
    /// read-only handles.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// mapkv::Store::open(tmp.path())?.put("k", "v")?;
    /// let store = mapkv::OpenOptions::new().zero_past_end(true).open(tmp.path())?;
    /// assert_eq!(store.nonzero_past_end()?, None);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn zero_past_end(&mut self, yes: bool) -> &mut Self {
        self.0.zero_past_end = yes;
        self
    }

    /// Test seam: how long a read-only open waits for a writer whose live page names
    /// nothing it can map (default 2 s). Not part of the supported API.
    #[doc(hidden)]
    pub fn attach_wait(&mut self, wait: std::time::Duration) -> &mut Self {
        self.0.attach_wait = wait;
        self
    }

    /// Opens the store in directory `dir`.
    ///
    /// # Errors
    /// [`Error::Locked`] at once, for a writer, if another handle writes the store; for a
    /// read-only handle, if a writer holds it that cannot be followed (an older mapkv, or
    /// one still opening the store after 2 s); [`Error::NotFound`] without `create`, and
    /// for a read-only open of a missing store; [`Error::NotAStore`] for a writable open
    /// that would create a store in a directory holding other files; [`Error::Corrupt`]
    /// or [`Error::UnsupportedVersion`] for files it cannot read; [`Error::Io`].
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::OpenOptions::new().create(true).open(tmp.path().join("db"))?;
    /// assert!(store.is_empty());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn open(&self, dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir.as_ref(), &self.0)
    }
}

/// A zero-copy, memory-mapped key-value store. `Send + Sync`: share it with `Arc`.
///
/// Reads ([`get`](Store::get), [`reader`](Store::reader)) never lock; writes
/// ([`put`](Store::put), [`delete`](Store::delete)) are serialised by an internal mutex.
/// A write that returned survives the process being killed; it survives power loss once a
/// later [`sync`](Store::sync) has returned.
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// use std::sync::Arc;
/// let store = Arc::new(mapkv::Store::open(tmp.path())?);
/// let writer = {
///     let store = Arc::clone(&store);
///     std::thread::spawn(move || store.put("k", "v"))
/// };
/// writer.join().unwrap()?;
/// assert_eq!(store.get("k")?.as_deref(), Some(&b"v"[..])); // readers never lock
/// store.sync()?; // durable from here on
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct Store {
    shared: Arc<Shared>,
    /// Runs timed syncs and automatic compaction, when the options ask for them. Only the
    /// handle `open` returned has one; the thread itself works through a second handle.
    background: Option<Background>,
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
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path().join("db"))?; // made if missing
    /// store.put("k", "v")?;
    /// drop(store);
    /// let again = mapkv::Store::open(tmp.path().join("db"))?;
    /// assert!(again.recovery().was_clean()); // a clean open read two headers, nothing else
    /// assert_eq!(again.get("k")?.as_deref(), Some(&b"v"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        OpenOptions::new().open(dir)
    }

    fn open_with(dir: &Path, opts: &Options) -> Result<Self> {
        let shared = Arc::new(Shared::open(dir, opts)?);
        let mut store = Self { shared, background: None };
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
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "old")?;
    /// let held = store.get("k")?.expect("present");
    /// store.put("k", "new")?;
    /// assert_eq!(held, "old"); // what was borrowed does not change
    /// assert_eq!(store.get("k")?.expect("present"), "new");
    /// assert!(store.get("absent")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    #[inline]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        let s = &*self.shared;
        s.check_poisoned()?;
        s.follow()?;
        let key = key.as_ref();
        let guard = s.state.load();
        let found = s.find(&guard, None, s.hash(key), key, guard.log.visible())?;
        Ok(found.map(|(state, bytes)| state.log.value(bytes)))
    }

    /// A read view for hot loops: its [`Reader::get`] returns plain `&[u8]` borrowed from
    /// the reader, with no reference counting per read. It sees every write that returned
    /// before each `get`, follows growth, and keeps every mapping it lent from alive until
    /// it is dropped, so hold one per batch of work rather than forever.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("a", "1")?;
    /// let reader = store.reader();
    /// let mut total = 0;
    /// for key in ["a", "b"] {
    ///     total += reader.get(key)?.map_or(0, |v| v.len()); // &[u8], no reference count
    /// }
    /// assert_eq!(total, 1);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn reader(&self) -> Reader<'_> {
        let _ = self.shared.follow(); // an error here shows at the reader's first get
        Reader::new(&self.shared, self.shared.state.load_full())
    }

    /// A consistent, zero-copy view of the store as of now: its [`get`](Snapshot::get) and
    /// [`iter`](Snapshot::iter) never see later writes, and values borrowed from it stay
    /// valid while it lives. It costs nothing to take; while it lives, the mappings and
    /// index it pinned stay alive (old files included), so hold it for a unit of work.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "before")?;
    /// let snap = store.snapshot();
    /// store.put("k", "after")?;
    /// store.delete("k")?;
    /// assert_eq!(snap.get("k")?, Some(&b"before"[..])); // as of the snapshot
    /// assert!(store.get("k")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::take(&self.shared)
    }

    /// Every live key with its value, once each, as of the call (it iterates over a
    /// snapshot taken now), in hash order (no order a user can rely on). Items own a
    /// reference to the mapping ([`Value`]), so they outlive the iterator. The index is a
    /// hash table, so selecting by prefix is a scan: `store.iter()` filtered by
    /// `k.starts_with(prefix)`.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// for (k, v) in [("app:1", "a"), ("app:2", "b"), ("other", "c")] {
    ///     store.put(k, v)?;
    /// }
    /// let mut apps = Vec::new();
    /// for item in store.iter() {
    ///     let (key, value) = item?;
    ///     if key.starts_with(b"app:") {
    ///         apps.push((key.to_vec(), value.to_vec()));
    ///     }
    /// }
    /// apps.sort();
    /// assert_eq!(apps, [(b"app:1".to_vec(), b"a".to_vec()), (b"app:2".to_vec(), b"b".to_vec())]);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.snapshot())
    }

    /// Sets `key` to `value`. Once this returns the write survives a crash of the process;
    /// it survives power loss after the next [`sync`](Store::sync).
    ///
    /// # Errors
    /// [`Error::KeyTooLarge`], [`Error::ValueTooLarge`], [`Error::ReadOnly`],
    /// [`Error::Poisoned`], [`Error::Io`] (a full disk when the file must grow; nothing is
    /// written then), [`Error::Corrupt`] if the index points at damaged bytes.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put(b"user:1", b"Ada")?; // bytes
    /// store.put("user:2", "Grace")?; // or anything AsRef<[u8]>
    /// store.put("user:1", "Ada L.")?; // overwrites
    /// assert_eq!(store.len(), 2);
    /// let too_long = vec![0u8; mapkv::MAX_KEY_LEN + 1];
    /// assert!(matches!(store.put(&too_long, "v"), Err(mapkv::Error::KeyTooLarge { .. })));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.shared.write_one(Kind::Put, key, value).map(|_| ())
    }

    /// Deletes `key`, returning whether it existed. Deleting an absent key writes nothing.
    ///
    /// # Errors
    /// As [`put`](Store::put).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "v")?;
    /// assert!(store.delete("k")?);
    /// assert!(!store.delete("k")?); // already gone: nothing written
    /// assert!(store.get("k")?.is_none());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.shared.write_one(Kind::Delete, key.as_ref(), &[])
    }

    /// Applies every operation of `batch`, in order, atomically: readers see all of it or
    /// none of it, and after a crash recovery keeps all of it or none of it (the batch ends
    /// with a commit record; [DESIGN.md, "Batches"](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#batches-and-the-visible-mark)).
    /// Durable after the next
    /// [`sync`](Store::sync), like a put. Index slots are prefetched ahead of the writes, so
    /// a large batch loads faster than the same puts one by one.
    ///
    /// # Errors
    /// As [`put`](Store::put); size limits and a full disk are found before anything is
    /// written. An error in the middle of the batch (damaged index) poisons the handle;
    /// reopening recovers to the state before the batch.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("from", "100")?;
    /// let mut transfer = mapkv::Batch::new();
    /// transfer.put("from", "60").put("to", "40");
    /// store.write(transfer)?; // both or neither, for readers and after a crash
    /// assert_eq!(store.get("to")?.as_deref(), Some(&b"40"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn write(&self, batch: Batch) -> Result<()> {
        self.shared.write_batch(batch)
    }

    /// The durability point: when it returns, every write that returned before it survives
    /// power loss. It flushes only what changed since the last `sync` (one msync, one device
    /// flush); with nothing changed it does nothing.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if this or an earlier flush failed: the failure is never retried
    /// and reported as success. Read-only handles return `Ok` at once.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "v")?; // survives the process being killed
    /// store.sync()?;        // ...and now power loss
    /// assert_eq!(store.stats().durable_end, store.stats().log_end);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn sync(&self) -> Result<()> {
        self.shared.sync()
    }

    /// Rewrites the live records into a new data file and index and swaps them in, giving
    /// back the space of overwritten and deleted records. Readers keep reading throughout;
    /// writers wait only for the last catch-up and the swap ([`CompactStats::pause`]),
    /// whose work is bounded: at most 256 KiB of log to copy and one flush of it. Values,
    /// readers and snapshots taken before keep reading the old files, whose disk space
    /// comes back when the last of them is dropped. A crash at any point leaves the old
    /// store or the new one, whole. Durable like a [`sync`](Store::sync) (every write that
    /// returned before the swap is in the new files, flushed).
    ///
    /// Under writers that keep writing faster than it can catch up, it gives up rather
    /// than make them wait ([`Error::CompactionOutrun`]; nothing changed).
    ///
    /// # Errors
    /// [`Error::ReadOnly`], [`Error::CompactionOutrun`], [`Error::Io`] (a full disk: the old
    /// store stays as it was), [`Error::Poisoned`] if the swap itself failed.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// for i in 0..100u32 {
    ///     store.put("counter", i.to_le_bytes())?; // 99 overwritten records
    /// }
    /// let done = store.compact()?;
    /// assert!(done.log_after < done.log_before);
    /// assert_eq!(store.stats().garbage_bytes, 0);
    /// assert_eq!(store.get("counter")?.as_deref(), Some(&99u32.to_le_bytes()[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn compact(&self) -> Result<CompactStats> {
        self.shared.compact_until(&Stop::default())
    }

    /// Writes a consistent copy of the store as of now into `dest`, a new or empty
    /// directory: a hot backup, as LMDB's `mdb_copy` makes. Writers keep writing meanwhile
    /// and never wait for it; the copy holds exactly the data of one moment (a
    /// [`snapshot`](Store::snapshot) taken at the call). With `compact`, it holds only the
    /// live pairs (as after [`compact`](Store::compact)); without, the log as it is up to
    /// that moment, and its index is rebuilt from it with every checksum checked. The copy
    /// is a whole store, durable and closed cleanly when this returns; a failed copy
    /// removes what it wrote. Works on a read-only handle too, also one following a writer
    /// in another process (`mapkv copy` does that). Returns the copy's figures.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path().join("live"))?;
    /// store.put("k", "v1")?;
    /// store.put("k", "v2")?;
    /// let copy = store.copy_to(tmp.path().join("backup"), true)?;
    /// assert_eq!((copy.live_keys, copy.records), (1, 1)); // compacted: the old v1 is gone
    /// let backup = mapkv::Store::open(tmp.path().join("backup"))?;
    /// assert_eq!(backup.get("k")?.as_deref(), Some(&b"v2"[..]));
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if `dest` is not new or empty, or cannot be written (a full disk);
    /// [`Error::Corrupt`] if the log copied has damage; [`Error::Poisoned`].
    pub fn copy_to(&self, dest: impl AsRef<Path>, compact: bool) -> Result<Stats> {
        self.shared.copy_to(dest.as_ref(), compact)
    }

    /// Number of live keys.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// assert!(store.is_empty());
    /// store.put("a", "1")?;
    /// store.put("a", "2")?;
    /// assert_eq!(store.len(), 1); // live keys, not records
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.shared.len()
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
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// mapkv::Store::open(tmp.path())?.put("k", "v")?; // dropped: closed cleanly
    /// let store = mapkv::Store::open(tmp.path())?;
    /// let report = store.recovery();
    /// assert!(report.was_clean() && !report.index_rebuilt && report.records_replayed == 0);
    /// // After a crash: whether the index was resumed or rebuilt, records replayed, any cut.
    /// println!("{report:?}");
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Where the first nonzero byte of the data file past the end of the log is, if there is
    /// one. There should be none
    /// ([DESIGN.md §2, "zeros past the end"](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#invariant-zeros-past-the-end)):
    /// [`verify`](Store::verify) reports one as [`CorruptKind::NonzeroPastEnd`](crate::CorruptKind::NonzeroPastEnd), and a
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
        self.shared.check_poisoned()?;
        self.shared.follow()?;
        self.shared.nonzero_past(&self.shared.files())
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
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "v")?;
    /// let report = store.verify()?;
    /// assert!(report.problems.is_empty(), "{:?}", report.problems);
    /// assert_eq!(report.live_keys, 1);
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn verify(&self) -> Result<VerifyReport> {
        self.shared.verify()
    }

    /// The store's figures now: keys, records, garbage, file sizes, index load, how much
    /// is durable. Takes the writer lock briefly (never waits for a flush).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "v1")?;
    /// store.put("k", "v2")?;
    /// let s = store.stats();
    /// assert_eq!((s.live_keys, s.records), (1, 2));
    /// assert!(s.garbage_ratio > 0.0); // the first record is garbage now
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Closes the store cleanly, so the next open reads headers only. Dropping the store
    /// does the same but cannot report errors.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Poisoned`] if the final flushes fail; the store is then
    /// recovered from the log at the next open.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let store = mapkv::Store::open(tmp.path())?;
    /// store.put("k", "v")?;
    /// store.close()?; // errors reported, unlike a drop
    /// assert!(mapkv::Store::open(tmp.path())?.recovery().was_clean());
    /// # Ok::<(), mapkv::Error>(())
    /// ```
    pub fn close(mut self) -> Result<()> {
        drop(self.background.take());
        self.shared.shutdown()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Stops and joins the background thread, which drops its handle.
        drop(self.background.take());
        let last = Arc::strong_count(&self.shared) == 1;
        if last && !self.shared.abandoned.load(Ordering::Relaxed) {
            let _ = self.shared.shutdown();
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

/// The background threads work through a handle of their own.
impl Work for Store {
    fn sync(&self) {
        let _ = self.shared.sync(); // a failure poisons the store: the next call says so
    }

    fn garbage_at_least(&self, ratio: f64, min_log: u64) -> bool {
        let s = self.shared.stats();
        s.log_bytes >= min_log && s.garbage_bytes as f64 >= ratio * s.log_bytes as f64
    }

    fn compact(&self, stop: &Stop) -> Result<()> {
        self.shared.compact_until(stop).map(drop)
    }
}
