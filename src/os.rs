//! The OS layer: the only module that maps, grows, flushes, allocates and locks files, and
//! the only module with `unsafe` code.
//!
//! Soundness rests on one rule, enforced by the types here rather than by callers:
//! bytes of the data file are either *published* (below the shared watermark, at or past
//! `DATA_START`) and then never written again, or *unpublished* and then reachable only
//! through `&mut LogFile`. Readers on any thread see published bytes only; the single
//! `LogFile` writes only unpublished bytes or the header pages, which no reader sees.
//! Readers read through a read-only mapping (`LogMap`, `PROT_READ`); the writer writes
//! through a writable mapping of its own that it never lends out, so nothing a reader
//! holds can write the file.
//! The index is accessed only as `AtomicU64` words, so concurrent reads and writes of it
//! are data-race free by construction. DESIGN.md, "Soundness", says what this cannot
//! prevent (another process truncating or rewriting the files).
#![allow(unsafe_code)] // the reviewed exception: see the module docs and each SAFETY comment

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fs2::FileExt;
use memmap2::{Advice, MmapOptions, MmapRaw, UncheckedAdvice};

use crate::error::{Error, Result};
use crate::format::{
    CorruptKind, DATA_FILE, DATA_START, DecodeError, HEADER_LEN, HEADER_SLOTS, LogHeader, VERSION,
};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("mapkv maps whole files and needs a 64-bit address space");

/// Takes the writer's lock without waiting: an exclusive `flock` on the store directory
/// itself (read-only handles take none). Locking the directory (rather than a file in it)
/// works for stores copied without any extra file. The lock lasts as long as the returned
/// handle; the kernel drops it when the process dies, so a killed process never leaves a
/// stale lock.
///
/// # Errors
/// [`Error::NotFound`] if `dir` does not exist, [`Error::Locked`] if another handle holds
/// it, [`Error::Io`] otherwise.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let file = open_dir(dir, false)?;
    let contended = fs2::lock_contended_error().raw_os_error();
    // A process being spawned by any thread of this one holds a copy of every descriptor,
    // and with it the lock, between its fork and its exec (close-on-exec cannot help
    // earlier). So a lock this process just released can look taken for a moment: retry
    // briefly before saying `Locked`. A real holder is still reported within milliseconds.
    for attempt in 0..LOCK_ATTEMPTS {
        match FileExt::try_lock_exclusive(&file) {
            Ok(()) => return Ok(DirLock(file)),
            Err(e) if e.raw_os_error() == contended && attempt + 1 < LOCK_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) if e.raw_os_error() == contended => break,
            Err(e) => return Err(Error::io("lock", dir, e)),
        }
    }
    Err(Error::Locked { path: dir.to_path_buf(), read_only: false })
}

/// A writer's exclusive lock on a store directory. Dropping it unlocks explicitly before
/// closing: a process that any thread of this one is spawning holds a copy of every
/// descriptor until its exec, and a lock released only by closing ours would stay held
/// through that copy, so a reader or writer opening just after the close could find it
/// taken (an unlock ends the lock for every copy).
pub struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

/// A shared lock on a store directory, held by a reader that maps the data file whole and
/// lends slices of it for as long as it lives (`mapkv::salvage`): writers (which lock it
/// exclusively) are kept out meanwhile, since a writer's open rewrites the header pages and
/// zeroes a torn tail.
///
/// # Errors
/// [`Error::Locked`] (read-only) if a writer holds the store; [`Error::NotFound`];
/// [`Error::Io`].
pub fn lock_dir_shared(dir: &Path) -> Result<DirLock> {
    let file = open_dir(dir, true)?;
    match FileExt::try_lock_shared(&file) {
        Ok(()) => Ok(DirLock(file)),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            Err(Error::Locked { path: dir.to_path_buf(), read_only: true })
        }
        Err(e) => Err(Error::io("lock", dir, e)),
    }
}

/// Whether a writer holds the store's lock now. Takes a shared lock and drops it at once;
/// a writer opening in that instant retries (`lock_dir`), so this never makes it fail.
///
/// # Errors
/// [`Error::NotFound`] if `dir` does not exist, [`Error::Io`] otherwise.
pub fn writer_alive(dir: &Path) -> Result<bool> {
    match lock_dir_shared(dir) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err(Error::Locked { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The directory, for a lock; [`Error::NotFound`] (`read_only` as the open is) if missing.
fn open_dir(dir: &Path, read_only: bool) -> Result<File> {
    File::open(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound { path: dir.to_path_buf(), read_only },
        _ => Error::io("open", dir, e),
    })
}

/// The data file is faulted in ahead of the writer this many bytes at a time.
const POPULATE_CHUNK: u64 = 256 << 10;

/// How many times `lock_dir` tries, a millisecond apart, before reporting `Locked`.
const LOCK_ATTEMPTS: u32 = 20;

/// Makes a directory entry (a created or renamed file) durable.
///
/// # Errors
/// [`Error::Io`] if the directory cannot be opened or synced.
pub fn sync_dir(seam: &Seam, dir: &Path) -> Result<()> {
    seam.run(Op::SyncDir { path: dir }, || File::open(dir).and_then(|d| d.sync_all()))
        .map_err(|e| Error::io("sync directory", dir, e))
}

/// Opens the data file of the store in `dir`, for writing too if `writable`.
///
/// # Errors
/// [`Error::NotFound`] if there is none; [`Error::Io`].
pub fn open_data_file(dir: &Path, writable: bool) -> Result<File> {
    let path = dir.join(DATA_FILE);
    OpenOptions::new().read(true).write(writable).open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::NotFound { path: dir.to_path_buf(), read_only: !writable }
        }
        _ => Error::io("open", &path, e),
    })
}

/// Reserves disk blocks for `[from, len)` and extends the file to `len` if it is shorter,
/// so that stores through a mapping never meet a full disk (which would raise SIGBUS).
/// Cheap where the blocks are already allocated.
fn allocate(file: &File, from: u64, len: u64, path: &Path) -> Result<()> {
    let too_large = || Error::io("allocate", path, io::Error::from(io::ErrorKind::FileTooLarge));
    let off = libc::off_t::try_from(from).map_err(|_| too_large())?;
    let n = libc::off_t::try_from(len.saturating_sub(from)).map_err(|_| too_large())?;
    if n > 0 {
        // SAFETY: plain system call on a file descriptor we own; no memory is passed. (fs2's
        // `allocate` reads errno, which posix_fallocate does not set; hence the direct call.)
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), off, n) };
        if rc != 0 {
            return Err(Error::io("allocate", path, io::Error::from_raw_os_error(rc)));
        }
    }
    if file.metadata().map_err(|e| Error::io("stat", path, e))?.len() < len {
        file.set_len(len).map_err(|e| Error::io("truncate", path, e))?;
    }
    Ok(())
}

fn map(file: &File, len: u64, writable: bool, path: &Path) -> Result<MmapRaw> {
    let len = usize::try_from(len)
        .map_err(|_| Error::io("map", path, io::Error::from(io::ErrorKind::FileTooLarge)))?;
    let mut opts = MmapOptions::new();
    opts.len(len);
    let raw = if writable { opts.map_raw(file) } else { opts.map_raw_read_only(file) };
    let raw = raw.map_err(|e| Error::io("map", path, e))?;
    // Random access, and no readahead: with readahead the kernel fills the page cache in
    // large folios (up to 2 MiB), zeroing them ahead of the writer and, worse, writing a
    // whole dirty folio back at each msync, so a one-record sync would write 2 MiB. Only
    // advice: if it fails, everything still works, just slower.
    let _ = raw.advise(Advice::Random);
    Ok(raw)
}

fn flush_map(seam: &Seam, raw: &MmapRaw, from: u64, to: u64, path: &Path) -> Result<()> {
    let page = crate::format::PAGE;
    let start = from / page * page;
    let end = to.min(raw.len() as u64);
    if start >= end {
        return Ok(());
    }
    seam.run(Op::Flush { path, from: start, to: end }, || {
        raw.flush_range(start as usize, (end - start) as usize)
    })
    .map_err(|e| Error::io("flush (msync)", path, e))
}

/// `lseek(file, at, whence)`: where `SEEK_DATA` / `SEEK_HOLE` find data or a hole at or
/// past `at`.
fn seek(file: &File, at: u64, whence: libc::c_int) -> io::Result<u64> {
    let at = libc::off_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a descriptor we own; no memory is passed.
    let to = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
    u64::try_from(to).map_err(|_| io::Error::last_os_error())
}

/// Extends and reserves as `allocate`, seen by the seam.
fn extend(seam: &Seam, file: &File, from: u64, len: u64, path: &Path) -> Result<()> {
    seam.run(Op::Extend { path, len }, || Ok(())).map_err(|e| Error::io("allocate", path, e))?;
    allocate(file, from, len, path)
}

/// Asks the CPU to start loading the cache line at `ptr`. A hint: it never faults, reads
/// nothing Rust can observe, and is a no-op off x86-64.
#[inline]
fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is part of SSE, which every x86-64 CPU has; it does not access
    // memory architecturally and cannot fault, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

// ---- data file --------------------------------------------------------------------------

/// One read-only mapping (`PROT_READ`) of the data file. Readers hold it through `Arc`; it
/// is unmapped when the last holder lets go, never earlier. Nothing writes through it: a
/// stray write through a pointer into it (a value a user casts to `*mut`) faults instead
/// of changing the store.
pub struct LogMap {
    raw: MmapRaw,
    marks: Arc<Marks>,
    data_start: u64,
}

/// The ends of one data file as a follower may use them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ends {
    /// The writer's marks: the file is the writer's now.
    Live { published: u64, visible: u64 },
    /// A compaction replaced the file: all of it is published and visible, for good.
    Replaced,
    /// A later writer took the file over: this view reads below `bound`; newer views of
    /// the same file read the rest.
    TakenOver { bound: u64 },
}

impl Ends {
    /// The end of the bytes a reader may read (`u64::MAX`: all the mapping holds).
    #[inline]
    pub fn published(self) -> u64 {
        match self {
            Ends::Live { published, .. } => published,
            Ends::Replaced => u64::MAX,
            Ends::TakenOver { bound } => bound,
        }
    }

    /// The end of the records a reader may return.
    #[inline]
    pub fn visible(self) -> u64 {
        match self {
            Ends::Live { visible, .. } => visible,
            Ends::Replaced => u64::MAX,
            Ends::TakenOver { bound } => bound,
        }
    }
}

/// The writer's live page as the log's marks use it (`live::Live` implements it: this layer
/// knows nothing of the page's layout). A writer mirrors its marks into it; a follower's
/// mapping reads the writer's marks from it.
pub(crate) trait Watermarks: Send + Sync {
    /// Stores the writer's published end.
    fn set_published(&self, end: u64);
    /// Stores the writer's visible end.
    fn set_visible(&self, end: u64);
    /// The writer's published and visible ends, if it still names the file by `key`.
    fn current(&self, key: u64) -> Option<(u64, u64)>;
    /// The final ends of a file (inode `ino`) the writer no longer names by `key`; `None`
    /// if the page cannot be read now. `seen`: the most this handle saw visible in it.
    fn retired(&self, key: u64, ino: u64, seen: u64) -> Option<Ends>;
}

/// The two watermarks of the log, shared by every mapping of the file (one cache line, so
/// a reader pays one miss for both).
struct Marks {
    /// Bytes in `[data_start, published)` are written and immutable: safe to read.
    published: AtomicU64,
    /// Records below this belong to finished writes (whole batches): what a reader may
    /// return. Never above `published`.
    visible: AtomicU64,
    /// For a follower (a read-only handle beside a writer in another process): the marks
    /// are the writer's, read from the live page, and the two above are unused.
    follow: Option<Follow>,
}

/// Where a follower finds the marks of one data file: the live page, while it names the
/// file by `key`; then, fixed once, its final ends (see [`Watermarks::retired`]).
struct Follow {
    live: Arc<dyn Watermarks>,
    key: u64,
    ino: u64,
    retired: std::sync::OnceLock<Ends>,
    /// The largest visible end seen in the file: its own cache line, since it changes
    /// with the writer while the fields above are read on every get.
    seen: Padded,
}

#[repr(align(64))]
struct Padded(AtomicU64);

impl Marks {
    /// The ends a reader may use now.
    #[inline]
    fn ends(&self) -> Ends {
        let Some(f) = &self.follow else {
            let published = self.published.load(Ordering::Acquire);
            return Ends::Live { published, visible: self.visible.load(Ordering::Acquire) };
        };
        if let Some(e) = f.retired.get() {
            return *e;
        }
        match f.live.current(f.key) {
            Some((published, visible)) => {
                if visible > f.seen.0.load(Ordering::Relaxed) {
                    f.seen.0.fetch_max(visible, Ordering::Release);
                }
                Ends::Live { published, visible }
            }
            None => {
                let seen = f.seen.0.load(Ordering::Acquire);
                match f.live.retired(f.key, f.ino, seen) {
                    Some(ends) => *f.retired.get_or_init(|| ends),
                    // Not cached: the page may read whole in a moment.
                    None => Ends::TakenOver { bound: seen },
                }
            }
        }
    }

    /// The end of the bytes a reader may read.
    #[inline]
    fn published(&self) -> u64 {
        match &self.follow {
            None => self.published.load(Ordering::Acquire),
            Some(_) => self.ends().published(),
        }
    }
}

impl LogMap {
    /// Length of this mapping.
    pub fn len(&self) -> u64 {
        self.raw.len() as u64
    }

    /// Starts loading the record header at `off` into the cache, if `off` is in range.
    #[inline]
    pub fn prefetch(&self, off: u64) {
        if off < self.len() {
            prefetch(self.raw.as_ptr().wrapping_add(off as usize));
        }
    }

    /// Whether the log has been published past the end of this mapping (a newer mapping
    /// exists).
    pub fn outgrown(&self) -> bool {
        match self.marks.ends() {
            Ends::Live { published, .. } => published > self.len(),
            // A view of the whole replaced file (a follower maps one when it moves on), or
            // a later writer's records in this file: a newer view maps them.
            Ends::Replaced | Ends::TakenOver { .. } => true,
        }
    }

    /// End of the finished writes: a reader returns only records that start below it.
    #[inline]
    pub fn visible(&self) -> u64 {
        match &self.marks.follow {
            None => self.marks.visible.load(Ordering::Acquire),
            Some(_) => self.marks.ends().visible(),
        }
    }

    /// The published bytes from `off` to the end of what this mapping and the watermark
    /// allow, or `None` if `off` lies outside them.
    #[inline]
    pub fn tail(&self, off: u64) -> Option<&[u8]> {
        let end = self.marks.published().min(self.len());
        if off < self.data_start || off >= end {
            return None;
        }
        // SAFETY: `[off, end)` lies within the mapping (end <= len), which stays mapped while
        // `self` lives. This mapping is read-only; the bytes lie in `[data_start, published)`,
        // which no one writes through any other mapping of the file once published (the
        // writer's writable one shares the page cache, so what it wrote before publishing
        // is what this reads): `LogFile::write_at` only writes at or past the watermark,
        // `LogFile::write_header` only below `data_start`, and the watermark only rises
        // (`LogFile::publish`). So the bytes are initialised and immutable for `'self`.
        // A follower's watermark is the writer's, in the live page (`Watermarks::current`,
        // which `live::Live` implements): the writer in the other process keeps the same rule. A file it replaced is
        // immutable whole; a file a later writer took over is bounded by the old writer's
        // visible end, below which recovery rewrites nothing (`Watermarks::retired`).
        Some(unsafe {
            std::slice::from_raw_parts(self.raw.as_ptr().add(off as usize), (end - off) as usize)
        })
    }

    /// The published records below `end`: bytes `[data_start, min(end, published, len))` of
    /// this mapping, as `tail(data_start)` gives them (empty if none). This is how a handle
    /// whose file another handle may be writing meanwhile (a follower) reads the whole
    /// log: unlike [`LogFile::bytes`], the slice spans no byte that anyone writes while it
    /// lives, neither the header pages nor what lies past the published end.
    pub fn records(&self, end: u64) -> &[u8] {
        let all = self.tail(self.data_start).unwrap_or_default();
        let n = end.saturating_sub(self.data_start).min(all.len() as u64);
        &all[..n as usize]
    }

    /// An owned handle to `bytes` (a sub-slice of what `tail` returned from this mapping)
    /// that keeps the mapping alive.
    ///
    /// # Panics
    /// If `bytes` does not lie in the data area of this mapping (a bug in the caller).
    pub fn value(self: &Arc<Self>, bytes: &[u8]) -> Value {
        // `bytes` came from `tail`, which checked the watermark; a follower's may have
        // moved since (the writer moved on), so only the mapping itself is checked here.
        let base = self.raw.as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        let len = self.len() as usize;
        assert!(
            start >= base + self.data_start as usize && start + bytes.len() <= base + len,
            "value outside the mapped log"
        );
        let map: Arc<dyn Send + Sync> = Arc::<Self>::clone(self);
        Value { ptr: NonNull::from(bytes).cast(), len: bytes.len(), _map: map }
    }
}

/// A value borrowed straight from the data file's mapping: no copy. It derefs to `[u8]`
/// and stays valid and unchanged while held, whatever the store does meanwhile
/// (overwrites, deletes, growth, compaction, or dropping the store).
///
/// It compares equal to byte slices, arrays and vectors holding the same bytes, clones
/// cheaply (a reference count, not the bytes), and debug-prints as an escaped byte string.
///
/// **Alignment, a guarantee of the format:** every value starts on an 8-byte boundary in
/// memory (records and values are 8-aligned in the file, and the mapping is page-aligned),
/// so a value holding plain-old-data can be read in place as `&[u64]`, `&[f64]` or a
/// zero-copy archive (bytemuck, zerocopy, rkyv) without copying it to an aligned buffer:
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let store = mapkv::Store::open(dir.path())?;
/// let samples: [f64; 4] = [1.5, -2.0, 3.25, 0.0];
/// store.put("samples", bytemuck::cast_slice(&samples))?;
///
/// let value = store.get("samples")?.expect("present");
/// let read: &[f64] = bytemuck::cast_slice(&value); // in place: no copy, no realignment
/// assert_eq!(read, &samples);
/// assert_eq!(value, bytemuck::cast_slice::<f64, u8>(&samples));
/// # Ok::<(), mapkv::Error>(())
/// ```
///
/// An rkyv archive is validated and read where it lies:
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = mapkv::Store::open(dir.path())?;
/// #[derive(rkyv::Archive, rkyv::Serialize)]
/// struct User { id: u64, name: String }
///
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&User { id: 7, name: "Ada".into() })
///     .expect("serialised");
/// store.put("user:7", &bytes)?;
/// let value = store.get("user:7")?.expect("present");
/// let user = rkyv::access::<ArchivedUser, rkyv::rancor::Error>(&value).expect("valid");
/// assert_eq!((user.id.to_native(), user.name.as_str()), (7, "Ada"));
/// # Ok::<(), mapkv::Error>(())
/// ```
pub struct Value {
    ptr: NonNull<u8>,
    len: usize,
    /// The mapping, kept alive. Type-erased: nothing reads it, and hiding `LogMap`'s atomic
    /// watermarks keeps clippy's `mutable_key_type` quiet for users who key a map by
    /// `Value` (its `Hash` and `Eq` see only the immutable bytes).
    _map: Arc<dyn Send + Sync>,
}

impl Deref for Value {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside `_map`'s mapping (asserted in `LogMap::value`)
        // and came from `LogMap::tail`, which returns only published bytes (its caller's
        // contract; `value` cannot re-check a follower's moving watermark). `_map` keeps the
        // mapping alive, and published bytes never change (DESIGN.md §7).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::borrow::Borrow<[u8]> for Value {
    fn borrow(&self) -> &[u8] {
        self
    }
}

/// Another hold on the same bytes: a reference count, no copy.
impl Clone for Value {
    fn clone(&self) -> Self {
        Self { ptr: self.ptr, len: self.len, _map: Arc::clone(&self._map) }
    }
}

/// `b"..."`, with bytes outside printable ASCII escaped (`\n`, `\xff`).
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("b\"")?;
        for &b in self.iter() {
            std::fmt::Display::fmt(&b.escape_ascii(), f)?;
        }
        f.write_str("\"")
    }
}

/// By the bytes, as `[u8]` compares (so `Hash` and `Ord` agree with `Borrow<[u8]>`).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

/// Equality with the bytes of `[u8]`, `&[u8]`, `[u8; N]`, `&[u8; N]`, `Vec<u8>` and `str`,
/// both ways round.
macro_rules! value_eq {
    ($($t:ty $(, const $n:ident)?);* $(;)?) => {$(
        impl<$(const $n: usize)?> PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                &**self == AsRef::<[u8]>::as_ref(other)
            }
        }
        impl<$(const $n: usize)?> PartialEq<Value> for $t {
            fn eq(&self, other: &Value) -> bool {
                AsRef::<[u8]>::as_ref(self) == &**other
            }
        }
    )*};
}

value_eq! {
    [u8];
    &[u8];
    [u8; N], const N;
    &[u8; N], const N;
    Vec<u8>;
    str;
    &str;
}

// SAFETY: a `Value` is an immutable view of memory kept alive by an `Arc` of a `Send + Sync`
// owner (the `LogMap`); sharing or sending it shares only reads of immutable bytes.
unsafe impl Send for Value {}
// SAFETY: as above.
unsafe impl Sync for Value {}

/// Mappings that [`LogFile::remap`] replaced. Dropping the last hold on a mapping unmaps it,
/// which takes milliseconds for a large file: the writer drops this after releasing its
/// lock.
pub struct Replaced {
    _map: Arc<LogMap>,
    _write: Option<Arc<MmapRaw>>,
}

/// The data file, through which all its writes go. There is one per store handle, owned by
/// the writer lock, so `&mut LogFile` is the only way to write.
pub struct LogFile {
    file: File,
    path: PathBuf,
    /// The read-only mapping that readers get (and borrow values from).
    map: Arc<LogMap>,
    /// The writable mapping of the same file, through which every write goes (`None` for
    /// a read-only handle). Never lent out; a [`Flusher`] holds it only to msync it.
    write: Option<Arc<MmapRaw>>,
    seam: Seam,
    /// The writer's live page, where its marks are mirrored for followers.
    mirror: Option<Arc<dyn Watermarks>>,
    /// The file's inode number, by which followers recognise it.
    ino: u64,
    /// Start writeback of each chunk the writer moves past ([`LogFile::set_writeback`]).
    writeback: bool,
}

impl LogFile {
    /// Wraps an opened (and locked) data file and maps it whole. Nothing is published yet.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be inspected or mapped.
    pub fn new(
        file: File,
        path: &Path,
        writable: bool,
        data_start: u64,
        seam: &Seam,
    ) -> Result<Self> {
        Self::open(file, path, (writable, data_start), seam, None)
    }

    /// A follower's read-only data file, whose marks are the writer's in `live` while it
    /// names the file by `key` (`seen`: its visible end now).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be inspected or mapped.
    pub fn follow(
        file: File,
        path: &Path,
        data_start: u64,
        follow: (Arc<dyn Watermarks>, u64, u64),
    ) -> Result<Self> {
        Self::open(file, path, (false, data_start), &Seam::default(), Some(follow))
    }

    fn open(
        file: File,
        path: &Path,
        (writable, data_start): (bool, u64),
        seam: &Seam,
        follow: Option<(Arc<dyn Watermarks>, u64, u64)>,
    ) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        let (len, ino) = (meta.len(), meta.ino());
        if writable {
            // Re-reserve blocks a sparse copy may have turned into holes (cheap otherwise).
            allocate(&file, 0, len, path)?;
        }
        let raw = map(&file, len, false, path)?;
        let write = if writable { Some(Arc::new(map(&file, len, true, path)?)) } else { None };
        let follow = follow.map(|(live, key, seen)| Follow {
            live,
            key,
            ino,
            retired: std::sync::OnceLock::new(),
            seen: Padded(AtomicU64::new(seen)),
        });
        let marks = Arc::new(Marks {
            published: AtomicU64::new(data_start),
            visible: AtomicU64::new(data_start),
            follow,
        });
        let map = Arc::new(LogMap { raw, marks, data_start });
        let (path, seam) = (path.to_path_buf(), seam.clone());
        Ok(Self { file, path, map, write, seam, mirror: None, ino, writeback: false })
    }

    /// The file's inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Where the bytes anyone wrote at or past `from` end: the next hole (`SEEK_HOLE`), where
    /// the file holds neither blocks with data nor pages in the page cache. Past it the
    /// file reads as zeros, and looking (through the mapping) would fault a page at a
    /// time. The file's length where the file system cannot say.
    pub fn written_end(&self, from: u64) -> u64 {
        let len = self.map.len();
        seek(&self.file, from, libc::SEEK_HOLE).map_or(len, |h| h.clamp(from, len))
    }

    /// The first nonzero byte of the file at or past `from`, if any. Read with `pread`, never
    /// through a mapping (past the end of the log a writer may be writing at this moment),
    /// and only where the file holds data (`SEEK_DATA` to `SEEK_HOLE`): reserved space
    /// that was never written holds no pages and is skipped, so a file with gigabytes
    /// reserved costs a few system calls plus the pages a writer faulted in ahead.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read.
    pub fn first_nonzero_from(&self, from: u64) -> Result<Option<u64>> {
        let path = &self.path;
        let len = self.file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        let seek = |at, whence| seek(&self.file, at, whence);
        let mut buf = Vec::new();
        let mut at = from;
        while at < len {
            let data = match seek(at, libc::SEEK_DATA) {
                Ok(data) => data,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // no data past `at`
                Err(_) => at, // not supported here: the whole rest counts as data
            };
            let hole = seek(data, libc::SEEK_HOLE).map_or(len, |h| h.min(len));
            let mut p = data.max(at);
            while p < hole {
                if buf.is_empty() {
                    buf = vec![0u8; 1 << 20];
                }
                let n = buf.len().min((hole - p) as usize);
                let chunk = &mut buf[..n];
                match std::os::unix::fs::FileExt::read_exact_at(&self.file, chunk, p) {
                    Ok(()) => {}
                    // The file shrank meanwhile (only a program ignoring the lock does that).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(Error::io("read", path, e)),
                }
                if let Some(i) = crate::format::first_nonzero(chunk) {
                    return Ok(Some(p + i as u64));
                }
                p += n as u64;
            }
            at = hole.max(at + 1);
        }
        Ok(None)
    }

    /// The file's path (its name in the store after `install`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header, read from a copy of the header pages (`pread`): for a follower, whose
    /// writer in another process may be rewriting a header slot at this moment (a torn
    /// slot fails its CRC, and the other one is whole).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn read_head(&self) -> Result<LogHeader> {
        let mut head = vec![0; self.map.data_start.min(self.map.len()) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut head, 0)
            .map_err(|e| Error::io("read", &self.path, e))?;
        header_of(&head, self.map.len(), &self.path)
    }

    /// The visible end (this handle's own marks).
    pub fn visible(&self) -> u64 {
        self.map.marks.visible.load(Ordering::Relaxed)
    }

    /// From now on, mirrors the marks into the writer's live page.
    pub fn set_mirror(&mut self, live: Arc<dyn Watermarks>) {
        self.mirror = Some(live);
    }

    /// The current (largest) mapping.
    pub fn map(&self) -> &Arc<LogMap> {
        &self.map
    }

    /// The whole mapping, header pages included: for the handle that writes the file (or
    /// reads it alone, at open). Sound because any write needs `&mut self`, which cannot
    /// coexist with this borrow. A follower's file is written meanwhile by its writer,
    /// another handle: it reads through [`LogMap::records`] instead.
    ///
    /// # Panics
    /// On a follower's file (a bug in the caller).
    pub fn bytes(&self) -> &[u8] {
        assert!(self.map.marks.follow.is_none(), "a follower's whole mapping");
        let raw = self.own();
        // SAFETY: the mapping covers `len` bytes and lives as long as `self` (in `self.map`
        // or `self.write`). Writes go only through `&mut self` (so not during this borrow);
        // readers on other threads only read. This is not a follower's file (asserted),
        // whose writer would write it through other mappings meanwhile. Another process
        // writing the file is outside Rust's model (DESIGN.md §7).
        unsafe { std::slice::from_raw_parts(raw.as_ptr(), raw.len()) }
    }

    /// The mapping this handle itself reads and flushes through: the writable one if it
    /// writes (whose pages its appends have faulted in already), else the read-only one.
    fn own(&self) -> &MmapRaw {
        self.write.as_deref().unwrap_or(&self.map.raw)
    }

    /// Advises the kernel that the log is about to be read front to back (recovery,
    /// verify) or, with `false`, randomly again (the default; see `map`).
    pub fn advise_sequential(&self, sequential: bool) {
        let advice = if sequential { Advice::Sequential } else { Advice::Random };
        let _ = self.own().advise(advice);
    }

    /// The published length.
    pub fn published(&self) -> u64 {
        self.map.marks.published.load(Ordering::Relaxed)
    }

    /// Makes `[.., end)` visible to readers. From now on those bytes never change.
    ///
    /// # Panics
    /// If `end` lowers the watermark or passes the mapping (a bug in the caller).
    pub fn publish(&mut self, end: u64) {
        assert!(end >= self.published() && end <= self.map.len(), "bad publish to {end}");
        self.map.marks.published.store(end, Ordering::Release);
        if let Some(live) = &self.mirror {
            live.set_published(end);
        }
    }

    /// Lets readers return the records below `end` (a finished write or batch).
    ///
    /// # Panics
    /// If `end` is past the published end (a bug in the caller).
    pub fn make_visible(&mut self, end: u64) {
        assert!(end <= self.published(), "records made visible before they are published");
        self.map.marks.visible.store(end, Ordering::Release);
        if let Some(live) = &self.mirror {
            live.set_visible(end);
        }
    }

    /// Copies `src` to `[off, off + src.len())`, which must lie at or past the published end
    /// and inside the mapping.
    ///
    /// # Panics
    /// If the range is published or outside the mapping (a bug in the caller).
    pub fn write_at(&mut self, off: u64, fill: impl FnOnce(&mut [u8]), len: usize) {
        let raw = self.write.as_deref().expect("write through a read-only mapping");
        let end = off.checked_add(len as u64).expect("write range overflows");
        assert!(off >= self.published() && end <= raw.len() as u64, "write outside the tail");
        // SAFETY: `[off, end)` is inside the writable mapping and unpublished, so no reader
        // holds or can create a reference to it through any mapping (readers see published
        // bytes only); `&mut self` excludes every other writer and `bytes()`.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(raw.as_mut_ptr().add(off as usize), len) };
        fill(dst);
        // Entering a new chunk: fault the next one in with one call rather than a page
        // fault per page (its pages are written within the next few puts anyway).
        if off / POPULATE_CHUNK != end / POPULATE_CHUNK {
            let start = end / POPULATE_CHUNK * POPULATE_CHUNK;
            let n = POPULATE_CHUNK.min((raw.len() as u64).saturating_sub(start));
            let _ = raw.advise_range(Advice::PopulateWrite, start as usize, n as usize);
            // The chunk before is written: drop the writable mapping's page table entries
            // for it, so that writeback (a sync) finds no writable entry to write-protect.
            // With them, the kernel cleans each page's entry with a TLB flush that
            // interrupts every core running this process (one IPI per 4 KiB page: a sync
            // flushed 0.5 GB/s beside a writer instead of 3 GB/s). Readers' read-only
            // entries need no cleaning. The pages and their dirty data stay in the page
            // cache; a later access maps them again.
            let before = start.saturating_sub(POPULATE_CHUNK).max(self.map.data_start);
            if before < start {
                // SAFETY: MADV_DONTNEED on a shared file mapping only removes page table
                // entries: the contents stay in the page cache (a dirty entry marks its page
                // dirty as it goes) and the next access maps the same page again, so no
                // byte that any reference into the mapping sees changes. The range lies
                // inside the mapping (below `start`, which is at most its length).
                let _ = unsafe {
                    raw.unchecked_advise_range(
                        UncheckedAdvice::DontNeed,
                        before as usize,
                        (start - before) as usize,
                    )
                };
                // And, while much is unsynced, start writing it back: dirty pages then
                // never pile up to the kernel's dirty limit, where it throttles the writer.
                if self.writeback {
                    self.start_writeback(before, start);
                }
            }
        }
        // A crash point for the simulator: the bytes are written but not yet published.
        let _ = self.seam.run(Op::Append { path: &self.path, off, len: len as u64 }, || Ok(()));
    }

    /// Writes `src` into the header area `[off, off + src.len())`, below `data_start`.
    ///
    /// # Panics
    /// If the range reaches the data area (a bug in the caller).
    pub fn write_header(&mut self, off: u64, src: &[u8]) {
        let raw = self.write.as_deref().expect("write through a read-only mapping");
        let end = off + src.len() as u64;
        assert!(end <= self.map.data_start, "header write into data");
        assert!(end <= raw.len() as u64, "header write past the file");
        // SAFETY: the range lies inside the writable mapping and below `data_start` (both
        // asserted), which readers never read (`tail` refuses it); `&mut self` excludes
        // every other writer and `bytes()`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                raw.as_mut_ptr().add(off as usize),
                src.len(),
            );
        }
    }

    /// Grows the file to at least `min_len`: [`reserve`](Self::reserve), then
    /// [`remap`](Self::remap). The new size becomes durable with the next flush (an msync
    /// is an fdatasync of its range, which writes the size too: DESIGN.md §5).
    ///
    /// # Errors
    /// As the two steps.
    pub fn grow(&mut self, min_len: u64) -> Result<()> {
        self.reserve(min_len)?;
        self.remap().map(drop)
    }

    /// Allocates the blocks up to `min_len` and extends the size: a full disk fails here
    /// (ENOSPC), not as SIGBUS at a later store into the mapping. Changes nothing that
    /// matters when it fails.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn reserve(&mut self, min_len: u64) -> Result<()> {
        extend(&self.seam, &self.file, self.map.len(), min_len, &self.path)
    }

    /// Maps the whole file anew. The old mappings stay alive for whoever still holds them;
    /// this handle's hold on them comes back as [`Replaced`], to drop outside any lock.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remap(&mut self) -> Result<Replaced> {
        let path = &self.path;
        let len = self.file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        let raw = map(&self.file, len, false, path)?;
        let write = match self.write {
            Some(_) => Some(Arc::new(map(&self.file, len, true, path)?)),
            None => None,
        };
        let _ = self.seam.run(Op::Remap { path, len }, || Ok(()));
        let marks = Arc::clone(&self.map.marks);
        let map = Arc::new(LogMap { raw, marks, data_start: self.map.data_start });
        let old =
            Replaced { _map: std::mem::replace(&mut self.map, map), _write: self.write.take() };
        self.write = write;
        Ok(old)
    }

    /// Flushes the dirty pages of `[from, to)` to the device (msync, MS_SYNC).
    ///
    /// # Errors
    /// [`Error::Io`]; the caller must poison the store.
    pub fn flush(&self, from: u64, to: u64) -> Result<()> {
        flush_map(&self.seam, self.own(), from, to, &self.path)
    }

    /// Whether to start writeback of each 256 KiB the writer moves past (while much is
    /// unsynced: DESIGN.md §5).
    pub fn set_writeback(&mut self, on: bool) {
        self.writeback = on;
    }

    /// Starts writing `[from, to)` back to the device without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later flush of the range finds
    /// little left to write. Only a hint, and no durability point: errors are left for that
    /// later flush to report.
    pub fn start_writeback(&self, from: u64, to: u64) {
        if let (Ok(off), Ok(n)) =
            (libc::off64_t::try_from(from), libc::off64_t::try_from(to - from))
        {
            // SAFETY: plain system call on a file descriptor we own; no memory is passed.
            let _ = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }

    /// Renames this file to `path` (atomically replacing what was there), so that errors
    /// and the seam name it by its new name from now on.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn install(&mut self, path: &Path) -> Result<()> {
        rename(&self.seam, &self.path, path)?;
        self.path = path.to_path_buf();
        Ok(())
    }

    /// A handle that flushes this file's current mapping without holding the `LogFile`
    /// (a sync flushes while the writer goes on appending).
    pub fn flusher(&self) -> Flusher {
        let (map, write) = (Arc::clone(&self.map), self.write.clone());
        Flusher { map, write, path: self.path.clone(), seam: self.seam.clone() }
    }

    /// Writes zeros over `[from, to)` (unpublished bytes a killed writer left) through the
    /// mapping and flushes just those pages (msync from `from`'s page): the zeros are
    /// durable, dirty pages below stay as they were. Used when resuming after a kill, so
    /// that stale bytes past the cut can never parse later.
    ///
    /// # Errors
    /// [`Error::Io`].
    ///
    /// # Panics
    /// If `from` is below the published end or `to` past the mapping.
    pub fn zero_range(&mut self, from: u64, to: u64) -> Result<()> {
        let seam_op = Op::Zero { path: &self.path, from, to };
        self.seam.run(seam_op, || Ok(())).map_err(|e| Error::io("zero", &self.path, e))?;
        if to > from {
            self.write_at(from, |d| d.fill(0), (to - from) as usize);
        }
        self.flush(from, to)
    }

    /// Makes `[from, end of file)` read as zeros and keeps its blocks allocated, then syncs
    /// the whole file (fdatasync: everything below is durable too). Used by recovery so
    /// that stale bytes past the cut can never parse later.
    ///
    /// # Errors
    /// [`Error::Io`].
    ///
    /// # Panics
    /// If `from` is below the published end.
    pub fn zero_tail(&mut self, from: u64) -> Result<()> {
        assert!(from >= self.published(), "zeroing published bytes");
        let len = self.map.len().saturating_sub(from);
        let fd = self.file.as_raw_fd();
        let (off, n) = (from as libc::off_t, len as libc::off_t);
        let fallocate = |mode| {
            // SAFETY: plain system call on our own descriptor; no memory is passed. The
            // range is unpublished, so no reader can observe it changing.
            unsafe { libc::fallocate(fd, mode | libc::FALLOC_FL_KEEP_SIZE, off, n) == 0 }
        };
        // Zero the range keeping its blocks; else punch it out (it reads as zeros) and
        // reserve the blocks again; else, where neither exists, write the zeros.
        let seam_op = Op::Zero { path: &self.path, from, to: from + len };
        self.seam.run(seam_op, || Ok(())).map_err(|e| Error::io("zero", &self.path, e))?;
        if len > 0 && !fallocate(libc::FALLOC_FL_ZERO_RANGE) {
            if fallocate(libc::FALLOC_FL_PUNCH_HOLE) {
                allocate(&self.file, from, from + len, &self.path)?;
            } else {
                let zeros = vec![0u8; 1 << 20];
                let mut at = from;
                while at < from + len {
                    let n = (from + len - at).min(zeros.len() as u64) as usize;
                    self.write_at(at, |d| d.copy_from_slice(&zeros[..n]), n);
                    at += n as u64;
                }
            }
        }
        let path = &self.path;
        self.seam
            .run(Op::SyncFile { path }, || self.file.sync_data())
            .map_err(|e| Error::io("sync", path, e))
    }
}

/// See [`LogFile::flusher`].
pub struct Flusher {
    map: Arc<LogMap>,
    write: Option<Arc<MmapRaw>>,
    path: PathBuf,
    seam: Seam,
}

impl Flusher {
    /// As [`LogFile::flush`].
    ///
    /// # Errors
    /// [`Error::Io`]; the caller must poison the store.
    pub fn flush(&self, from: u64, to: u64) -> Result<()> {
        let raw = self.write.as_deref().unwrap_or(&self.map.raw);
        flush_map(&self.seam, raw, from, to, &self.path)
    }
}

// ---- index file -------------------------------------------------------------------------

enum Backing {
    File(MmapRaw),
    Heap(Box<[AtomicU64]>),
}

/// The index as 64-bit words: a mapped file, or heap memory for a read-only handle whose
/// index file could not be trusted.
pub struct IndexMap {
    backing: Backing,
    path: PathBuf,
    seam: Seam,
    /// The file's inode number (0 in memory), by which followers recognise it.
    ino: u64,
}

impl IndexMap {
    /// Maps an existing index file. `Ok(None)` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn open(path: &Path, writable: bool, seam: &Seam) -> Result<Option<Self>> {
        let file = match OpenOptions::new().read(true).write(writable).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        if len % 8 != 0 || len < crate::format::PAGE {
            // Too short or ragged to hold words: treat as absent and rebuild.
            return Ok(None);
        }
        Self::map_file(&file, path, writable, seam).map(Some)
    }

    /// Maps an open file of words (its length a multiple of 8, at least a page: the caller
    /// checked).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn map_file(file: &File, path: &Path, writable: bool, seam: &Seam) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        let (len, ino) = (meta.len(), meta.ino());
        let raw = if writable {
            allocate(file, 0, len, path)?; // re-reserve holes left by a sparse copy
            map(file, len, true, path)?
        } else {
            // Atomic loads are only guaranteed sound on writable memory, so a read-only
            // handle maps the index privately (copy-on-write) rather than PROT_READ. It
            // writes to it only when it resumes a killed writer's index at open: those
            // pages become its own copies, and the file is never changed.
            // SAFETY: the mapping is private, so nothing we do changes the file; changes by
            // another process are read only through atomics (see `words`).
            let mmap = unsafe { MmapOptions::new().map_copy(file) };
            MmapRaw::from(mmap.map_err(|e| Error::io("map", path, e))?)
        };
        let (path, seam) = (path.to_path_buf(), seam.clone());
        Ok(Self { backing: Backing::File(raw), path, seam, ino })
    }

    /// Creates a zero-filled, fully allocated index file at `tmp` of `len` bytes, to be
    /// filled and then renamed over the live index with [`IndexMap::install`].
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(tmp: &Path, len: u64, seam: &Seam) -> Result<Self> {
        let file = seam
            .run(Op::Create { path: tmp }, || {
                OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp)
            })
            .map_err(|e| Error::io("create", tmp, e))?;
        extend(seam, &file, 0, len, tmp)?;
        let raw = map(&file, len, true, tmp)?;
        let ino = file.metadata().map_err(|e| Error::io("stat", tmp, e))?.ino();
        Ok(Self { backing: Backing::File(raw), path: tmp.to_path_buf(), seam: seam.clone(), ino })
    }

    /// An index in heap memory (read-only handles that had to rebuild).
    pub fn heap(len: u64) -> Self {
        let words = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
        Self {
            backing: Backing::Heap(words),
            path: PathBuf::from("<memory>"),
            seam: Seam::default(),
            ino: 0,
        }
    }

    /// The file's inode number (0 in memory).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Renames this (temporary) file to `path`, atomically replacing the old index.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn install(&mut self, path: &Path) -> Result<()> {
        rename(&self.seam, &self.path, path)?;
        self.path = path.to_path_buf();
        Ok(())
    }

    /// The words of the file.
    pub fn words(&self) -> &[AtomicU64] {
        match &self.backing {
            // SAFETY: the mapping is page-aligned (so 8-aligned), its length is a multiple
            // of 8 (checked in `open`; `create` is given such lengths), it lives as long as
            // `self`, and every bit pattern is a valid `AtomicU64`. All access is atomic, so
            // concurrent readers and the writer never race.
            Backing::File(raw) => unsafe {
                std::slice::from_raw_parts(raw.as_ptr().cast::<AtomicU64>(), raw.len() / 8)
            },
            Backing::Heap(w) => w,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.words().len() as u64 * 8
    }

    /// Starts loading word `word` into the cache, if it exists.
    #[inline]
    pub fn prefetch(&self, word: usize) {
        if let Some(w) = self.words().get(word) {
            prefetch(w.as_ptr());
        }
    }

    /// Flushes `[from, to)` to the device; a no-op for heap memory.
    ///
    /// # Errors
    /// [`Error::Io`]; the caller must poison the store.
    pub fn flush(&self, from: u64, to: u64) -> Result<()> {
        match &self.backing {
            Backing::File(raw) => flush_map(&self.seam, raw, from, to, &self.path),
            Backing::Heap(_) => Ok(()),
        }
    }
}

/// Renames `from` to `to`, replacing `to` atomically (durable after [`sync_dir`]).
///
/// # Errors
/// [`Error::Io`].
pub fn rename(seam: &Seam, from: &Path, to: &Path) -> Result<()> {
    seam.run(Op::Rename { from, to }, || std::fs::rename(from, to))
        .map_err(|e| Error::io("rename", from, e))
}

/// Creates (truncating) a file for reading and writing.
///
/// # Errors
/// [`Error::Io`].
pub fn create(seam: &Seam, path: &Path) -> Result<File> {
    seam.run(Op::Create { path }, || {
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
    })
    .map_err(|e| Error::io("create", path, e))
}

// ---- test seam --------------------------------------------------------------------------

/// An operation of the OS layer whose effect on durability matters, as a crash simulator
/// sees it. Test seam: not part of the supported API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op<'a> {
    /// `msync(MS_SYNC)` of bytes `[from, to)` of a mapped file.
    Flush {
        /// The file.
        path: &'a Path,
        /// First byte (page-aligned).
        from: u64,
        /// End of the range.
        to: u64,
    },
    /// `fdatasync` of a whole file (data and size).
    SyncFile {
        /// The file.
        path: &'a Path,
    },
    /// `fsync` of a directory: makes created and renamed names durable.
    SyncDir {
        /// The directory.
        path: &'a Path,
    },
    /// Blocks reserved and the size raised to `len` (durable only after a sync).
    Extend {
        /// The file.
        path: &'a Path,
        /// The new size.
        len: u64,
    },
    /// The file was mapped anew, `len` bytes.
    Remap {
        /// The file.
        path: &'a Path,
        /// The mapping's length.
        len: u64,
    },
    /// `from` renamed over `to` (durable only after a directory sync).
    Rename {
        /// Old name.
        from: &'a Path,
        /// New name.
        to: &'a Path,
    },
    /// A file created empty (or truncated to empty).
    Create {
        /// The file.
        path: &'a Path,
    },
    /// Bytes `[from, to)` about to be zeroed (recovery).
    Zero {
        /// The file.
        path: &'a Path,
        /// First byte.
        from: u64,
        /// End.
        to: u64,
    },
    /// A step of a write with no I/O of its own (a record published, a slot stored, a
    /// checkpoint written): a crash point between two stores.
    Point {
        /// What has just been done.
        name: &'static str,
    },
    /// A record was copied into the log at `[off, off + len)` and is not yet published.
    Append {
        /// The data file.
        path: &'a Path,
        /// Where the record starts.
        off: u64,
        /// Its length.
        len: u64,
    },
}

/// Sees every [`Op`] of one store, before and after (test seam: crash simulation and fault
/// injection). Not part of the supported API.
pub trait Observer: Send + Sync {
    /// Called before `op`; an error makes `op` fail with it, as a failing disk would.
    ///
    /// # Errors
    /// The error to inject.
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        let _ = op;
        Ok(())
    }
    /// Called after `op` succeeded.
    fn after(&self, op: Op<'_>) {
        let _ = op;
    }
}

/// The seam of one store: an optional [`Observer`]. Without one it costs a branch.
#[derive(Clone, Default)]
pub struct Seam(Option<Arc<dyn Observer>>);

impl Seam {
    /// A seam reporting to `observer`.
    pub fn new(observer: Option<Arc<dyn Observer>>) -> Self {
        Self(observer)
    }

    /// Reports crash point `name` (`Op::Point`); its result is ignored.
    #[inline]
    pub fn point(&self, name: &'static str) {
        if self.0.is_some() {
            let _ = self.run(Op::Point { name }, || Ok(()));
        }
    }

    fn run<T>(&self, op: Op<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match &self.0 {
            None => f(),
            Some(o) => {
                o.before(op)?;
                let r = f()?;
                o.after(op);
                Ok(r)
            }
        }
    }
}

impl std::fmt::Debug for Seam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Seam(observed)" } else { "Seam" })
    }
}

/// A random 64-bit id, from the standard library's randomly keyed hasher.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// The newest valid header slot, from `head` (the file's first bytes) of a file of `len` bytes.
///
/// # Errors
/// [`Error::Corrupt`] if neither slot is valid (at byte 0), or if the file is shorter than
/// the log its header vouches for (at the file's end, where the missing bytes start);
/// [`Error::UnsupportedVersion`] for a valid header of another version.
pub fn header_of(head: &[u8], len: u64, path: &Path) -> Result<LogHeader> {
    let corrupt = |offset, kind| Error::Corrupt { file: path.to_path_buf(), offset, kind };
    let bytes = head;
    if (bytes.len() as u64) < DATA_START {
        return Err(corrupt(0, CorruptKind::TooShort { len: bytes.len() as u64, min: DATA_START }));
    }
    let mut best: Option<LogHeader> = None;
    let mut errors = Vec::new();
    for off in HEADER_SLOTS {
        match LogHeader::decode(&bytes[off as usize..off as usize + HEADER_LEN]) {
            Ok(h) if best.is_none_or(|b| h.seq > b.seq) => best = Some(h),
            Ok(_) => {}
            Err(DecodeError::Version(found)) => {
                return Err(Error::UnsupportedVersion {
                    file: path.to_path_buf(),
                    found,
                    supported: VERSION,
                });
            }
            Err(DecodeError::Corrupt(kind)) => errors.push((off, kind)),
        }
    }
    match best {
        // Cut short: the damage is where the file ends.
        Some(h) if h.committed > len => {
            Err(corrupt(len, CorruptKind::LengthPastEnd { end: h.committed, limit: len }))
        }
        Some(h) => Ok(h),
        None if errors.iter().all(|(_, k)| *k == CorruptKind::BadMagic) => {
            Err(corrupt(0, CorruptKind::BadMagic))
        }
        None => Err(corrupt(0, CorruptKind::NoValidHeader)),
    }
}
