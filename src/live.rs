//! The live page, `live.mkv`: how the writer tells read-only handles in other processes
//! which files are the store and how far its log is published and visible (DESIGN.md §4,
//! "Readers in other processes").
//!
//! One page of 64-bit words, mapped by the writer and by every follower. The writer stores
//! its marks there as it stores them in memory (a put costs two more stores); whenever the
//! files change (open, index growth, compaction) it rewrites the rest under a sequence
//! lock. Nothing here is ever flushed: the page means something only during the boot that
//! wrote it, which its boot id says. Bytes read from it are untrusted like any file's: a
//! follower checks the files it names (by inode) before it maps them.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{DATA_FILE, DATA_START, INDEX_FILE, LIVE_FILE};
use crate::os::{Ends, IndexMap, Seam, Watermarks};

const MAGIC: u64 = u64::from_le_bytes(*b"MAPKVLIV");
const VERSION: u64 = 2;
/// Size of the file: one page.
const LEN: u64 = 4096;

// Word numbers. Line 0: who wrote the page. Line 1: what a follower reads on every get.
// Line 2: the durable ends. Lines 4-7: the writer's checkpoints (also a follower's figures
// for `len` and `stats`).
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_BOOT: usize = 2; // two words
const W_STORE: usize = 4;
const W_SESSION: usize = 5;
const W_PREV_KEY: usize = 6;
const W_PREV_VISIBLE: usize = 7;
const W_SEQ: usize = 8;
const W_KEY: usize = 9;
const W_DATA_INO: usize = 10;
const W_INDEX_INO: usize = 11;
const W_PUBLISHED: usize = 12;
const W_VISIBLE: usize = 13;
const W_DURABLE: usize = 20;
const W_COMMITTED: usize = 21;
/// Lines 4-7: two checkpoint slots (written alternately, by tag), two lines each.
const W_CHECKPOINTS: [usize; 2] = [32, 48];
const WORDS: usize = 64;
// Words of a checkpoint slot, from its first. The tag is 0 while the slot is rewritten.
const C_TAG: usize = 0;
const C_FIELDS: usize = 8;

/// Where each writer session leaves its token: an empty file named by store, directory and
/// session, in memory only (tmpfs), so it is gone after any restart or power cut whatever
/// the page says. Resuming needs it (DESIGN.md §6).
const TOKEN_DIR: &str = "/dev/shm";

/// The store directory's identity (device, inode), which names its tokens: a copy of the
/// files elsewhere is another store directory, with none.
fn dir_id(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).map_or((0, 0), |m| (m.dev(), m.ino()))
}

fn token((dev, ino): (u64, u64), store_id: u64, session: u64) -> std::path::PathBuf {
    let name = format!("mapkv-{store_id:016x}-{dev:x}-{ino:x}-{session:016x}");
    Path::new(TOKEN_DIR).join(name)
}

/// How long a reader waits for a page the writer is in the middle of rewriting.
const SPINS: u32 = 1000;

/// Which files a writer announced. `key` changes with every writable open and every
/// compaction: it names one writer's use of one pair of files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Files {
    pub key: u64,
    pub data_ino: u64,
    pub index_ino: u64,
}

/// One consistent reading of the page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Announced {
    pub seq: u64,
    pub store_id: u64,
    pub files: Files,
    pub published: u64,
    pub visible: u64,
    /// The key of the previous writer's last files, and what it had made visible.
    pub prev: (u64, u64),
    /// The key this writer started with: its keys are this and above.
    pub session: u64,
    /// Whether the magic and version are this mapkv's, and the boot the page was written in.
    ok: bool,
    boot: u128,
}

/// Figures the writer keeps current on the page, for a follower's `len` and `stats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Figures {
    pub live: u64,
    pub used: u64,
    pub records: u64,
    pub live_bytes: u64,
    pub durable: u64,
    pub committed: u64,
}

/// The writer's state after its last finished write (DESIGN.md §6, "Resuming after a
/// process crash"): the index names every record below `end` (and nothing past it but the
/// write in flight), and the counts are the store's at `end`. The index file carries the
/// tag of the checkpoint it matches (`Table::tag`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Sequence number of checkpoints, never 0; the slot is `tag % 2`.
    pub tag: u64,
    /// The key of the files it describes (`Files::key`).
    pub key: u64,
    /// The visible end: a finished write, never inside a batch.
    pub end: u64,
    /// Offset of the record ending at `end` (0: none, `end` is the log's start;
    /// [`UNKNOWN_LAST`]: not known, after a clean open) and its checksum word.
    pub last: u64,
    pub last_crc: u64,
    pub live: u64,
    pub used: u64,
    pub records: u64,
    pub live_bytes: u64,
}

/// `Checkpoint::last` when the writer does not know its last record (opened clean, no write
/// yet): recovery then checks nothing there.
pub(crate) const UNKNOWN_LAST: u64 = u64::MAX;

impl Checkpoint {
    fn fields(&self) -> [u64; C_FIELDS] {
        [
            self.key,
            self.end,
            self.last,
            self.last_crc,
            self.live,
            self.used,
            self.records,
            self.live_bytes,
        ]
    }

    fn from_fields(tag: u64, f: [u64; C_FIELDS]) -> Self {
        let [key, end, last, last_crc, live, used, records, live_bytes] = f;
        Self { tag, key, end, last, last_crc, live, used, records, live_bytes }
    }
}

/// The record ending the log at `off`, as `Checkpoint::last` holds it: its offset and its
/// checksum word (0 where there is no record: `off` is 0, or outside the log).
pub(crate) fn last_record(log: &[u8], off: u64) -> (u64, u64) {
    let crc = log.get(off as usize..).filter(|_| off >= DATA_START).and_then(|r| r.first_chunk());
    (off, crc.map_or(0, |b| u64::from(u32::from_le_bytes(*b))))
}

/// The mapped page.
#[derive(Clone)]
pub(crate) struct Live {
    map: Arc<IndexMap>,
    /// The store directory's identity, for the session tokens.
    dir: (u64, u64),
}

impl Live {
    /// The writer's page: opened or created, never truncated (followers may have it
    /// mapped, and a truncated mapping faults).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(dir: &Path, seam: &Seam) -> Result<Self> {
        let path = dir.join(LIVE_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len < LEN {
            file.set_len(LEN).map_err(|e| Error::io("extend", &path, e))?;
        }
        let map = IndexMap::map_file(&file, &path, true, seam)?;
        Ok(Self { map: Arc::new(map), dir: dir_id(dir) })
    }

    /// A follower's view of the page; `None` if there is none (no writer of this version
    /// has opened the store) or it is too short to be one.
    ///
    /// # Errors
    /// [`Error::Io`] other than a missing file.
    pub fn open(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(LIVE_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len < LEN {
            return Ok(None);
        }
        let map = IndexMap::map_file(&file, &path, false, &Seam::default())?;
        Ok(Some(Self { map: Arc::new(map), dir: dir_id(dir) }))
    }

    fn w(&self, i: usize) -> &AtomicU64 {
        &self.map.words()[i]
    }

    // ---- the writer ----------------------------------------------------------------------

    /// Starts a writer's session: the page names `files` (whose key this picks) and the
    /// marks, under the sequence lock. Remembers the previous session's key and visible
    /// mark if the page held one of this boot, for followers still reading its files.
    /// Writes `c` as the session's first checkpoint (with the new key and the next tag),
    /// and runs `also(tag)` (storing the tag in the index) inside the same lock, so a
    /// writer killed in between leaves a page no one resumes from. Returns the key and the
    /// tag.
    pub fn start_session(
        &self,
        store_id: u64,
        ids: (u64, u64),
        mut c: Checkpoint,
        also: impl FnOnce(u64),
    ) -> (u64, u64) {
        let boot = boot_id();
        let valid = self.w(W_MAGIC).load(Ordering::Acquire) == MAGIC
            && self.w(W_VERSION).load(Ordering::Acquire) == VERSION
            && boot != 0
            && self.boot() == boot
            && self.w(W_STORE).load(Ordering::Acquire) == store_id;
        let old_key = self.w(W_KEY).load(Ordering::Acquire);
        // Keys only grow within a boot (from a random start below 2^63, so they never wrap).
        let key = if valid { old_key.wrapping_add(1).max(1) } else { crate::os::random_id() >> 1 };
        let files = Files { key, data_ino: ids.0, index_ino: ids.1 };
        // Tags go on from the page's, so no slot left by an earlier writer shares one.
        let newest = self.checkpoints().iter().flatten().map(|c| c.tag).max().unwrap_or(0);
        c.key = key;
        c.tag = c.tag.max(newest).wrapping_add(1).max(1);
        let end = c.end;
        // The token before the page names the session (a kill in between leaves a token
        // no page names: nothing resumes from it); the last session's goes after.
        let old_session = self.w(W_SESSION).load(Ordering::Acquire);
        let _ = std::fs::File::create(token(self.dir, store_id, key));
        self.write(|| {
            let (prev_key, prev_visible) =
                if valid { (old_key, self.w(W_VISIBLE).load(Ordering::Relaxed)) } else { (0, 0) };
            for (i, v) in [
                (W_MAGIC, MAGIC),
                (W_VERSION, VERSION),
                (W_BOOT, boot as u64),
                (W_BOOT + 1, (boot >> 64) as u64),
                (W_STORE, store_id),
                (W_SESSION, key),
                (W_PREV_KEY, prev_key),
                (W_PREV_VISIBLE, prev_visible),
            ] {
                self.w(i).store(v, Ordering::Relaxed);
            }
            self.put_files(files, end, end);
            self.checkpoint(&c);
            also(c.tag);
        });
        if valid && old_session != key {
            let _ = std::fs::remove_file(token(self.dir, store_id, old_session));
        }
        (key, c.tag)
    }

    /// Ends a writer's session at a clean close: its token goes (nothing to resume).
    pub fn end_session(&self) {
        let (store_id, session) = (self.w(W_STORE), self.w(W_SESSION));
        let _ = std::fs::remove_file(token(
            self.dir,
            store_id.load(Ordering::Acquire),
            session.load(Ordering::Acquire),
        ));
    }

    /// Announces new files (index growth, compaction) and, with them, the marks and (if
    /// `write_checkpoint`) the checkpoint `c`, and runs `also` (storing its tag in the
    /// index), all under the lock.
    pub fn announce(
        &self,
        files: Files,
        (published, visible): (u64, u64),
        c: &Checkpoint,
        write_checkpoint: bool,
        also: impl FnOnce(),
    ) {
        self.write(|| {
            self.put_files(files, published, visible);
            if write_checkpoint {
                self.checkpoint(c);
            }
            also();
        });
    }

    /// Writes checkpoint `c` into slot `c.tag % 2`: the tag is zeroed first and set last,
    /// so a slot whose writer died in the middle reads as empty and the other slot, the
    /// previous checkpoint, is whole.
    pub fn checkpoint(&self, c: &Checkpoint) {
        let base = W_CHECKPOINTS[(c.tag % 2) as usize];
        self.w(base + C_TAG).store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, v) in c.fields().into_iter().enumerate() {
            self.w(base + 1 + i).store(v, Ordering::Relaxed);
        }
        self.w(base + C_TAG).store(c.tag, Ordering::Release);
    }

    /// The checkpoint in each slot, if it reads whole (a live writer may be rewriting one:
    /// then it is retried a few times, then taken as empty).
    pub fn checkpoints(&self) -> [Option<Checkpoint>; 2] {
        W_CHECKPOINTS.map(|base| {
            for _ in 0..64 {
                let tag = self.w(base + C_TAG).load(Ordering::Acquire);
                if tag == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let f = std::array::from_fn(|i| self.w(base + 1 + i).load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if self.w(base + C_TAG).load(Ordering::Relaxed) == tag {
                    return Some(Checkpoint::from_fields(tag, f));
                }
            }
            None
        })
    }

    /// The checkpoint a writer opening after a crash (this boot) may resume from: the one
    /// whose tag the index carries (`index_tag`), written for the files the page names,
    /// when the page is this store's, of this boot, read whole, and names `data_ino` as the
    /// data file. Otherwise why not, in words for `RecoveryReport::reason`.
    ///
    /// # Errors
    /// The reason not to resume.
    pub fn resumable(
        &self,
        store_id: u64,
        data_ino: u64,
        index_tag: u64,
    ) -> std::result::Result<Checkpoint, String> {
        let a = self.read_once().ok_or("the writer stopped while rewriting its live page")?;
        if !a.ok {
            return Err("the live page was not written by this version of mapkv".into());
        }
        if a.boot == 0 || a.boot != boot_id() {
            return Err("the machine restarted since the writer ran (another boot id)".into());
        }
        if a.store_id != store_id {
            return Err("the live page belongs to another store".into());
        }
        if !token(self.dir, store_id, a.session).exists() {
            return Err(format!(
                "no token of the writer's session in {TOKEN_DIR} (memory only): the machine \
                 restarted or lost power since it ran"
            ));
        }
        if a.files.data_ino != data_ino {
            return Err("the data file was replaced after the writer's last checkpoint".into());
        }
        self.checkpoints()
            .into_iter()
            .flatten()
            .find(|c| c.key == a.files.key && c.tag == index_tag)
            .ok_or_else(|| "the index does not match the writer's last checkpoint".into())
    }

    fn put_files(&self, files: Files, published: u64, visible: u64) {
        // The key first: a follower reads a mark, then the key, and trusts the mark only
        // if the key is its own (see `Live::current`).
        self.w(W_KEY).store(files.key, Ordering::Release);
        self.w(W_DATA_INO).store(files.data_ino, Ordering::Release);
        self.w(W_INDEX_INO).store(files.index_ino, Ordering::Release);
        self.w(W_PUBLISHED).store(published, Ordering::Release);
        self.w(W_VISIBLE).store(visible, Ordering::Release);
    }

    /// Runs `f` inside the sequence lock: odd while it runs.
    fn write(&self, f: impl FnOnce()) {
        let seq = self.w(W_SEQ).load(Ordering::Relaxed);
        self.w(W_SEQ).store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        self.w(W_SEQ).store((seq | 1).wrapping_add(1), Ordering::Release);
    }

    pub fn set_durable(&self, durable: u64, committed: u64) {
        self.w(W_DURABLE).store(durable, Ordering::Relaxed);
        self.w(W_COMMITTED).store(committed, Ordering::Relaxed);
    }

    // ---- followers -----------------------------------------------------------------------

    /// The sequence number: it changes whenever the page names other files.
    #[inline]
    pub fn seq(&self) -> u64 {
        self.w(W_SEQ).load(Ordering::Acquire)
    }

    /// The published end, whatever files it is for.
    #[inline]
    pub fn published(&self) -> u64 {
        self.w(W_PUBLISHED).load(Ordering::Acquire)
    }

    /// One consistent reading of the page, if it was written during this boot and is not
    /// in the middle of a rewrite (a writer killed inside one leaves it so: `None`).
    pub fn read(&self) -> Option<Announced> {
        for spin in 0..SPINS {
            if let Some(a) = self.read_once() {
                let current = a.boot != 0 && a.boot == boot_id();
                return (a.ok && current && a.files.key != 0).then_some(a);
            }
            if spin % 64 == 63 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
        None
    }

    /// One reading of the page, if it is not in the middle of a rewrite.
    fn read_once(&self) -> Option<Announced> {
        let seq = self.seq();
        if seq & 1 != 0 {
            return None;
        }
        let a = Announced {
            seq,
            store_id: self.w(W_STORE).load(Ordering::Relaxed),
            files: Files {
                key: self.w(W_KEY).load(Ordering::Relaxed),
                data_ino: self.w(W_DATA_INO).load(Ordering::Relaxed),
                index_ino: self.w(W_INDEX_INO).load(Ordering::Relaxed),
            },
            published: self.w(W_PUBLISHED).load(Ordering::Relaxed),
            visible: self.w(W_VISIBLE).load(Ordering::Relaxed),
            prev: (
                self.w(W_PREV_KEY).load(Ordering::Relaxed),
                self.w(W_PREV_VISIBLE).load(Ordering::Relaxed),
            ),
            session: self.w(W_SESSION).load(Ordering::Relaxed),
            ok: self.w(W_MAGIC).load(Ordering::Relaxed) == MAGIC
                && self.w(W_VERSION).load(Ordering::Relaxed) == VERSION,
            boot: self.boot(),
        };
        fence(Ordering::Acquire);
        (self.w(W_SEQ).load(Ordering::Relaxed) == seq).then_some(a)
    }

    /// The writer's figures: those of its newest checkpoint, and the durable ends.
    pub fn figures(&self) -> Figures {
        let r = |i| self.w(i).load(Ordering::Relaxed);
        let c = self.checkpoints().into_iter().flatten().max_by_key(|c| c.tag).unwrap_or_default();
        Figures {
            live: c.live,
            used: c.used,
            records: c.records,
            live_bytes: c.live_bytes,
            durable: r(W_DURABLE),
            committed: r(W_COMMITTED),
        }
    }

    fn boot(&self) -> u128 {
        let lo = self.w(W_BOOT).load(Ordering::Relaxed);
        let hi = self.w(W_BOOT + 1).load(Ordering::Relaxed);
        u128::from(lo) | u128::from(hi) << 64
    }
}

/// The page as the log's marks use it: the writer mirrors its marks here, and a follower's
/// mapping of a data file reads the writer's from here.
impl Watermarks for Live {
    fn set_published(&self, end: u64) {
        self.w(W_PUBLISHED).store(end, Ordering::Release);
    }

    fn set_visible(&self, end: u64) {
        self.w(W_VISIBLE).store(end, Ordering::Release);
    }

    /// The writer's published and visible ends, if it still names the files by `key`.
    /// A mark is loaded before the key, and the writer stores a new key before new marks
    /// (`put_files`), so marks read with the caller's own key are its files'.
    #[inline]
    fn current(&self, key: u64) -> Option<(u64, u64)> {
        let visible = self.w(W_VISIBLE).load(Ordering::Acquire);
        let published = self.w(W_PUBLISHED).load(Ordering::Acquire);
        (self.w(W_KEY).load(Ordering::Acquire) == key).then_some((published, visible))
    }

    /// The final ends of a data file (inode `ino`) the writer no longer names by `key`,
    /// or `None` if the page cannot be read now (a writer in the middle of rewriting it):
    /// - the current writer's own file (`key` is of its session), replaced by its
    ///   compaction: whole and immutable, and no batch was open at the swap: all of it;
    /// - a file under the previous writer's key (that writer stopped and the current one
    ///   took the file over, and may have compacted it since): what the old writer had
    ///   made visible, which recovery never cuts; past it the new writer may have
    ///   rewritten an unfinished batch;
    /// - otherwise (writers came and went unseen): `seen`, the most this handle saw
    ///   visible in the file.
    #[cold]
    fn retired(&self, key: u64, ino: u64, seen: u64) -> Option<Ends> {
        let a = self.read()?;
        Some(if a.files.data_ino != ino && key >= a.session {
            Ends::Replaced
        } else if a.prev.0 == key {
            Ends::TakenOver { bound: a.prev.1 }
        } else {
            Ends::TakenOver { bound: seen }
        })
    }
}

const _: () = assert!(WORDS * 8 <= LEN as usize);

/// Test seam: makes the live page in `dir` name the data and index files now there (as if
/// the writer had opened these copies), and, with `reboot`, look as after a restart: the
/// page carries another boot id and the session's token is gone. Crash tests use it on
/// copies of a killed writer's files. Not part of the supported API.
///
/// # Errors
/// I/O errors reading or writing the files.
pub fn adopt_page(dir: &Path, reboot: bool) -> io::Result<()> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let page = std::fs::OpenOptions::new().read(true).write(true).open(dir.join(LIVE_FILE))?;
    let put = |word: usize, v: u64| page.write_all_at(&v.to_le_bytes(), word as u64 * 8);
    for (word, name) in [(W_DATA_INO, DATA_FILE), (W_INDEX_INO, INDEX_FILE)] {
        if let Ok(meta) = std::fs::metadata(dir.join(name)) {
            put(word, meta.ino())?;
        }
    }
    if reboot {
        let mut b = [0; 8];
        page.read_exact_at(&mut b, W_BOOT as u64 * 8)?;
        put(W_BOOT, u64::from_le_bytes(b) ^ 1)?;
        forget_page_cache(dir)?;
    } else {
        // The session's token, as the writer would have left it in this directory.
        File::create(page_token(dir, &page)?)?;
    }
    Ok(())
}

/// Test seam: removes the token of the session the live page in `dir` names, as a restart
/// or power cut does (tmpfs does not survive one), leaving the page itself as it is (which
/// may then wrongly claim this boot). Not part of the supported API.
///
/// # Errors
/// I/O errors reading the page.
pub fn forget_page_cache(dir: &Path) -> io::Result<()> {
    let page = File::open(dir.join(LIVE_FILE))?;
    let _ = std::fs::remove_file(page_token(dir, &page)?);
    Ok(())
}

/// The token of the session the page file `page` (in store `dir`) names.
fn page_token(dir: &Path, page: &File) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::FileExt;
    let word = |w: usize| -> io::Result<u64> {
        let mut b = [0; 8];
        page.read_exact_at(&mut b, w as u64 * 8)?;
        Ok(u64::from_le_bytes(b))
    };
    Ok(token(dir_id(dir), word(W_STORE)?, word(W_SESSION)?))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), 0 if unknown: a page written in
/// another boot describes files as they were before a power loss or reboot.
fn boot_id() -> u128 {
    static BOOT: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|s| u128::from_str_radix(&s.trim().replace('-', ""), 16).ok())
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> (tempfile::TempDir, Live) {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = Live::create(dir.path(), &Seam::default()).expect("page");
        (dir, live)
    }

    fn at(tag: u64, key: u64, end: u64) -> Checkpoint {
        Checkpoint { tag, key, end, live: end / 10, ..Checkpoint::default() }
    }

    #[test]
    fn a_checkpoint_torn_in_its_slot_leaves_the_other_whole() {
        let (_d, live) = page();
        let (key, tag) = live.start_session(7, (11, 12), at(0, 0, 8192), |_| {});
        assert_eq!(tag, 1);
        live.checkpoint(&at(2, key, 9000));
        live.checkpoint(&at(3, key, 9100));
        let [a, b] = live.checkpoints();
        assert_eq!((a.map(|c| c.end), b.map(|c| c.end)), (Some(9000), Some(9100)));
        // A writer killed while rewriting slot 0 (tag zeroed, fields half stored).
        live.w(W_CHECKPOINTS[0]).store(0, Ordering::Relaxed);
        live.w(W_CHECKPOINTS[0] + 2).store(123, Ordering::Relaxed);
        let [a, b] = live.checkpoints();
        assert!(a.is_none() && b.is_some_and(|c| c.end == 9100 && c.live == 910));
        assert_eq!(live.figures().live, 910);
        // Resuming takes the slot whose tag the index carries, and only that one.
        assert_eq!(live.resumable(7, 11, 3).map(|c| c.end), Ok(9100));
        let refused = live.resumable(7, 11, 4).expect_err("no checkpoint with tag 4");
        assert!(refused.contains("does not match"), "{refused}");
        live.end_session();
    }

    #[test]
    fn the_sequence_lock_never_lets_a_reader_see_half_an_announcement() {
        let (_d, live) = page();
        let _ = live.start_session(7, (1, 1), at(0, 0, 8192), |_| {});
        // Held odd, as by a writer killed inside it: nothing reads.
        let seq = live.seq();
        live.w(W_SEQ).store(seq | 1, Ordering::Relaxed);
        assert!(live.read_once().is_none());
        live.w(W_SEQ).store(seq, Ordering::Relaxed);
        let first = live.read_once().expect("a whole page");
        // A writer announcing consistent files (every field the same number) while a reader
        // reads: every reading it accepts is whole (the first state, or one announcement).
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for n in 1..200_000u64 {
                    let files = Files { key: n, data_ino: n, index_ino: n };
                    live.write(|| live.put_files(files, n, n));
                }
                done.store(true, Ordering::Relaxed);
            });
            let mut whole = 0u64;
            loop {
                // One more reading after the writer is done, at the latest.
                let finished = done.load(Ordering::Relaxed);
                if let Some(a) = live.read_once().filter(|a| a.seq != first.seq) {
                    let f = a.files;
                    assert!(
                        f.key == f.data_ino && f.key == f.index_ino && a.published == f.key,
                        "a torn reading: {f:?}, published {}",
                        a.published
                    );
                    assert_eq!(a.seq % 2, 0);
                    whole += 1;
                }
                if finished {
                    break;
                }
            }
            assert!(whole > 0, "no reading was ever accepted");
        });
        live.end_session();
    }

    #[test]
    fn resuming_needs_this_store_this_data_file_and_a_whole_page() {
        let (_d, live) = page();
        let (key, _) = live.start_session(7, (11, 12), at(0, 0, 8192), |_| {});
        live.checkpoint(&at(2, key, 9000));
        assert!(live.resumable(7, 11, 2).is_ok());
        assert!(live.resumable(8, 11, 2).is_err(), "another store's page");
        let e = live.resumable(7, 99, 2).expect_err("another data file");
        assert!(e.contains("replaced"), "{e}");
        // A checkpoint of another writer session's files (an older key) does not count.
        live.checkpoint(&at(3, key.wrapping_sub(1), 9100));
        assert!(live.resumable(7, 11, 3).is_err());
        // Killed inside the sequence lock (an announcement): no resuming.
        let seq = live.seq();
        live.w(W_SEQ).store(seq | 1, Ordering::Relaxed);
        let e = live.resumable(7, 11, 2).expect_err("odd sequence");
        assert!(e.contains("rewriting"), "{e}");
        live.w(W_SEQ).store(seq, Ordering::Relaxed);
        // Another boot: the page cache the checkpoint describes is gone.
        let boot = live.w(W_BOOT).load(Ordering::Relaxed);
        live.w(W_BOOT).store(boot ^ 1, Ordering::Relaxed);
        let e = live.resumable(7, 11, 2).expect_err("another boot");
        assert!(e.contains("boot"), "{e}");
        live.w(W_BOOT).store(boot, Ordering::Relaxed);
        // The page claiming this boot, but the memory-only token gone (a power cut).
        assert!(live.resumable(7, 11, 2).is_ok());
        live.end_session();
        let e = live.resumable(7, 11, 2).expect_err("no token");
        assert!(e.contains("token"), "{e}");
    }
}
