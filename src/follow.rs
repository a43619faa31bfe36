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
use crate::index::Table;
use crate::live::{Announced, Checkpoint, Files, Live};
use crate::os::{self, IndexMap, LogFile, Seam};
use crate::recovery::{Counts, RecoveryReport};
use crate::store::{OpenOptions, Parts, Store, Writer};

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
    fn behind(&self) -> bool {
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
}

impl Store {
    /// Brings a following handle up to the writer's files; called before every read. One
    /// comparison of two words of the live page when nothing changed; nothing at all for
    /// other handles.
    #[inline]
    pub(crate) fn follow(&self) -> Result<()> {
        match &self.shared.follow {
            Some(f) if f.behind() => self.catch_up(f),
            _ => Ok(()),
        }
    }

    /// Whether a follower's page names newer files than it has mapped.
    pub(crate) fn behind_writer(&self) -> bool {
        self.shared.follow.as_ref().is_some_and(Follower::behind)
    }

    /// Maps what the page names (growth, a new index, new files after a compaction or a
    /// new writer) and publishes it as the handle's newest view, linked from the old one
    /// as the writer's own growth is.
    #[cold]
    fn catch_up(&self, f: &Follower) -> Result<()> {
        let mut guard = self.shared.writer.lock();
        let w = &mut *guard;
        if !f.behind() {
            return Ok(()); // another thread did it
        }
        let seq = f.live.seq();
        let have = f.attached().then_some(w.files);
        let found = attach(&self.shared.dir, &f.live, (have, Some(self.shared.store_id)))?;
        let Some(Attached { announced: a, log, index }) = found else {
            // Names nothing mappable: stay on the files we have until the page changes.
            f.mapped.store(u64::MAX, Ordering::Release);
            f.seen.store(seq, Ordering::Release);
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
        f.attached.store(true, Ordering::Release);
        // A page claiming more than the file holds is damaged: stop watching the length.
        let len = w.log.map().len();
        f.mapped.store(if a.published > len { u64::MAX } else { len }, Ordering::Release);
        f.seen.store(a.seq, Ordering::Release);
        Ok(())
    }

    // ---- the writer's side -------------------------------------------------------------

    /// Tells followers which files are the store now (after index growth or compaction;
    /// open starts a session instead), with the marks as they are and, between writes, a
    /// checkpoint of the writer's state (in the same lock, with its tag stored in the
    /// index).
    pub(crate) fn announce(&self, w: &mut Writer) {
        if let Some(live) = &self.shared.live {
            w.files.data_ino = w.log.ino();
            w.files.index_ino = w.index.ino();
            let marks = (w.log.published(), w.log.visible());
            // Inside a batch (never, since a batch makes room first) the counts are not a
            // finished write's: keep the last checkpoint, whose tag a grown index carries.
            let between = w.end == marks.1;
            let tag = if between { w.tag + 1 } else { w.tag };
            let c = Checkpoint { tag, ..w.as_checkpoint(self.len()) };
            let table = Table::new(w.index.words());
            live.announce(w.files, marks, &c, between, || table.set_tag(tag));
            w.tag = tag;
        }
    }

    /// Writes the writer's state, after a finished write, as its next checkpoint on the
    /// live page, then stores the checkpoint's tag in the index (DESIGN.md §6, "Resuming
    /// after a process crash"): a dozen stores into lines the writer owns, no flush.
    #[inline]
    pub(crate) fn checkpoint(&self, w: &mut Writer) {
        if let Some(live) = &self.shared.live {
            w.tag += 1;
            live.checkpoint(&w.as_checkpoint(self.len()));
            w.seam.point("checkpoint written");
            Table::new(w.index.words()).set_tag(w.tag);
        }
    }
}

impl Store {
    /// A read-only handle following the writer's files from the start: no lock, no scan.
    pub(crate) fn open_following(
        dir: &Path,
        opts: &OpenOptions,
        live: Live,
        attached: Attached,
    ) -> Result<Self> {
        let a = attached.announced;
        let (Some((log, header)), Some(index)) = (attached.log, attached.index) else {
            // `attach` without files of our own opens both.
            return Err(Error::Locked { path: dir.to_path_buf(), read_only: true });
        };
        let follow = Follower {
            live,
            seen: AtomicU64::new(a.seq),
            mapped: AtomicU64::new(log.map().len()),
            attached: AtomicBool::new(true),
        };
        let w = Writer {
            log,
            index: Arc::new(index),
            end: a.visible,
            unsynced: 0,
            counts: Counts::default(),
            header,
            index_clean: false,
            used: 0,
            generation: 0,
            _lock: None,
            files: a.files,
            seam: Seam::default(),
            tag: 0,
            last: (0, 0),
            retired: Vec::new(),
        };
        let report = RecoveryReport { log_end: a.visible, ..RecoveryReport::default() };
        let durable = a.visible;
        let parts = Parts { w, live_keys: 0, durable, report, live: None, follow: Some(follow) };
        Self::assemble(dir, opts, parts)
    }
}
