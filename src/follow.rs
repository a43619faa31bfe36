//! Readers in other processes (DESIGN.md §4, "Readers in other processes"): what the
//! writer announces on the live page, and how a read-only handle follows it — attaching to
//! the files the page names, and catching up when it names others or the log outgrows the
//! mapping.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{DATA_FILE, DATA_START, INDEX_FILE, LogHeader};
use crate::live::{Announced, Files, Live};
use crate::os::{self, IndexMap, LogFile, Seam};

/// How long a read-only open waits for a writer that holds the lock but whose live page
/// does not (yet) name files it can map: a writer still recovering, or between a rename
/// and its announcement.
pub(crate) const ATTACH_WAIT: Duration = Duration::from_secs(2);
/// Attempts to map what one reading of the page names before giving up on that reading.
const ATTACH_TRIES: u32 = 20;

/// A read-only handle's link to the writer's live page.
pub(crate) struct Follower {
    pub(crate) live: Live,
    /// The page's sequence number when this handle last caught up (or gave up on it).
    seen: AtomicU64,
    /// Length of the current mapping of the announced data file, to notice growth;
    /// `u64::MAX` while not watching it (not attached, or the page is unreadable).
    mapped: AtomicU64,
    /// Whether the handle reads the files the page names (else its own, from open).
    attached: AtomicBool,
}

impl Follower {
    /// Whether the page names other files, or a longer log, than this handle has mapped.
    #[inline]
    pub(crate) fn behind(&self) -> bool {
        self.live.seq() != self.seen.load(Ordering::Acquire)
            || self.live.published() > self.mapped.load(Ordering::Acquire)
    }

    /// Whether the handle reads the writer's files (its figures then come from the page).
    pub(crate) fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }
}

/// What [`attach`] opened: the page's reading, and the data file (with its header) and
/// index where they differ from the ones the caller has.
pub(crate) struct Attached {
    pub announced: Announced,
    pub log: Option<(LogFile, LogHeader)>,
    pub index: Option<IndexMap>,
}

/// Opens the files the page names, checking by inode that the names still lead to them
/// (a rename may have replaced one since the page was read), and reusing those in `have`.
/// `None` if the page names nothing this boot, or names files no longer there (a writer
/// killed between a rename and its announcement; the next writer fixes the page).
///
/// # Errors
/// [`Error::Io`] if a file cannot be opened or mapped.
pub(crate) fn attach(
    dir: &Path,
    live: &Live,
    (have, store_id): (Option<Files>, Option<u64>),
) -> Result<Option<Attached>> {
    let seam = Seam::default();
    for _ in 0..ATTACH_TRIES {
        let Some(a) = live.read() else { return Ok(None) };
        if store_id.is_some_and(|id| id != a.store_id) {
            return Ok(None); // another store's files were put in this directory
        }
        let same_log = have.is_some_and(|h| (h.key, h.data_ino) == (a.files.key, a.files.data_ino));
        let same_index = have.is_some_and(|h| h.index_ino == a.files.index_ino);
        let mut log = None;
        if !same_log {
            let path = dir.join(DATA_FILE);
            match open_if(&path, a.files.data_ino)? {
                Some(file) => {
                    let follow = (Arc::new(live.clone()) as _, a.files.key, a.visible);
                    let opened = LogFile::follow(file, &path, DATA_START, follow)?;
                    let header = opened.read_head()?;
                    if header.store_id != a.store_id {
                        return Ok(None); // a page left by another store (a copied directory)
                    }
                    log = Some((opened, header));
                }
                None => continue,
            }
        }
        let mut index = None;
        if !same_index {
            let path = dir.join(INDEX_FILE);
            match open_if(&path, a.files.index_ino)? {
                Some(file) => index = Some(IndexMap::map_file(&file, &path, false, &seam)?),
                None => continue,
            }
        }
        if live.seq() == a.seq {
            return Ok(Some(Attached { announced: a, log, index }));
        }
    }
    Ok(None)
}

/// The file at `path` if it is the one with inode `ino` (and long enough to be a store
/// file); `None` if it is another or missing.
fn open_if(path: &Path, ino: u64) -> Result<Option<std::fs::File>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::thread::yield_now();
            return Ok(None);
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    use std::os::unix::fs::MetadataExt;
    if meta.ino() != ino || meta.len() < 2 * crate::format::PAGE || meta.len() % 8 != 0 {
        std::thread::yield_now();
        return Ok(None);
    }
    Ok(Some(file))
}

/// How a read-only open starts: following a writer's files, or reading the store as it is.
pub(crate) enum Start {
    Follow(Live, Box<Attached>),
    /// No writer holds the store: read it alone. `Some` page to watch for a writer later,
    /// with its sequence number from before the writer was looked for.
    Alone(Option<(Live, u64)>),
}

/// Decides how a read-only open starts: following while a writer holds the lock, alone
/// otherwise. Waits (up to `wait`, [`ATTACH_WAIT`] unless a test says otherwise) while a
/// writer holds the lock but its page names nothing to map yet.
///
/// # Errors
/// [`Error::Locked`] if a writer is there but cannot be followed (a writer of a mapkv
/// without live pages, or one that announces nothing in time); [`Error::Io`].
pub(crate) fn start(dir: &Path, wait: Duration) -> Result<Start> {
    let deadline = Instant::now() + wait;
    loop {
        // Without a writer the page may be stale (files edited, copied or damaged since it
        // was written): read the files as they are, as open always did.
        // The sequence number first: a writer that opens after the look sees the handle
        // behind, and is followed from its first read.
        let live = Live::open(dir)?.map(|l| {
            let seq = l.seq();
            (l, seq)
        });
        if !os::writer_alive(dir)? {
            return Ok(Start::Alone(live));
        }
        if let Some((live, _)) = live
            && let Some(attached) = attach(dir, &live, (None, None))?
        {
            return Ok(Start::Follow(live, Box::new(attached)));
        }
        if Instant::now() >= deadline {
            return Err(Error::Locked { path: dir.to_path_buf(), read_only: true });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Follower {
    /// A link for a handle that reads the store alone: it attaches once a writer's page
    /// changes.
    pub(crate) fn unattached((live, seq): (Live, u64)) -> Self {
        let seen = AtomicU64::new(seq);
        Self { live, seen, mapped: AtomicU64::new(u64::MAX), attached: AtomicBool::new(false) }
    }

    /// A link for a handle that follows the writer from its open: at the page's reading
    /// `seq`, with `mapped` bytes of the data file mapped.
    pub(crate) fn attached_at(live: Live, seq: u64, mapped: u64) -> Self {
        let (seen, mapped) = (AtomicU64::new(seq), AtomicU64::new(mapped));
        Self { live, seen, mapped, attached: AtomicBool::new(true) }
    }

    /// The handle caught up with the page's reading `seq` (or gave up on it), with `mapped`
    /// bytes of the data file mapped (`u64::MAX`: not watching its length), and reads the
    /// files the page names if `attached`.
    pub(crate) fn caught_up(&self, seq: u64, mapped: u64, attached: bool) {
        if attached {
            self.attached.store(true, Ordering::Release);
        }
        self.mapped.store(mapped, Ordering::Release);
        self.seen.store(seq, Ordering::Release);
    }
}
