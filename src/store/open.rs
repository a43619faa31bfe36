//! Opening a store: the writer's lock, recovery (a clean open reads two headers; after a
//! crash, resume from the last checkpoint or rebuild the index from the log), and a
//! read-only handle's start, alone or following a writer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::apply::{Counts, IndexCtx};
use crate::commit::{Durability, SyncPolicy};
use crate::error::{Error, Result};
use crate::follow::{self, Attached, Follower, Start};
use crate::format::{
    DATA_FILE, DATA_START, INDEX_FILE, IndexHeader, LogHeader, Record, crc_seed, is_store_file,
};
use crate::index::Table;
use crate::live::{Checkpoint, Files, Live, UNKNOWN_LAST, last_record};
use crate::os::{self, IndexMap, LogFile, Seam};
use crate::recovery::{self, Log, Rebuild, RecoveryReport, ResumeCtx};

use super::compact::remove_leftovers;
use super::shared::{Handle, Mapped, Shared, State, Writer};
use super::write::{create_data_file, write_header};

/// How to open a store, as [`OpenOptions`](super::OpenOptions) sets it (its documentation
/// says what each does).
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub read_only: bool,
    pub create: bool,
    pub verify_checksums: bool,
    pub sync_policy: SyncPolicy,
    pub auto_compact: Option<f64>,
    pub seam: Seam,
    pub attach_wait: Duration,
    pub rebuild_index: bool,
    pub zero_past_end: bool,
}

impl Default for Options {
    fn default() -> Self {
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
}

/// What [`Shared::assemble`] makes a handle of.
pub(super) struct Parts {
    pub handle: Handle,
    pub live_keys: u64,
    /// How far the log is known durable.
    pub durable: u64,
    pub report: RecoveryReport,
    pub live: Option<Live>,
    pub follow: Option<Follower>,
}

impl Shared {
    /// Opens the store in `dir` as `opts` say (see [`OpenOptions`](super::OpenOptions)).
    pub(super) fn open(dir: &Path, opts: &Options) -> Result<Self> {
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
            remove_leftovers(dir);
        }
        let created = writable && opts.create && !data_path.exists();
        if created && let Some(entry) = foreign_file(dir)? {
            return Err(Error::NotAStore { path: dir.to_path_buf(), entry });
        }
        if created {
            // The directory's own name must be durable before anything synced inside it
            // (done here, not when creating the directory, so a retried open redoes it).
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            os::sync_dir(seam, parent.unwrap_or(Path::new(".")))?;
            drop(create_data_file(seam, dir, &data_path, os::random_id())?); // opened below
        }
        let page = if writable { Some(Live::create(dir, seam)?) } else { None };
        let file = os::open_data_file(dir, writable)?;
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
        let mut m = Mapped {
            log,
            index: Arc::new(index),
            end,
            counts,
            header,
            used,
            generation: 0,
            files: Files::default(),
            seam: seam.clone(),
        };
        m.log.publish(end);
        m.log.make_visible(end);
        let handle = match lock {
            None => Handle::ReadOnly(m),
            Some(lock) => {
                let clean = report.was_clean();
                let mut w = Writer {
                    m,
                    unsynced: 0,
                    index_clean: clean,
                    _lock: lock,
                    tag: 0,
                    last,
                    retired: Vec::new(),
                };
                if let Some(pg) = &page {
                    // Followers switch to this session before recovery zeroes anything.
                    // The session's first checkpoint is the state recovery arrived at.
                    w.m.log.set_mirror(Arc::new(pg.clone()));
                    let ids = (w.m.log.ino(), w.m.index.ino());
                    // Tags go on above the one the index carries (and the page's).
                    let table = Table::new(w.m.index.words());
                    let first = Checkpoint { tag: table.tag(), ..w.as_checkpoint(live) };
                    let set_tag = |tag| table.set_tag(tag);
                    (w.m.files.key, w.tag) = pg.start_session(header.store_id, ids, first, set_tag);
                    (w.m.files.data_ino, w.m.files.index_ino) = ids;
                }
                if report.index_rebuilt {
                    // Stale bytes past the cut must never parse later; then record the new
                    // end.
                    w.m.log.zero_tail(end)?;
                    write_header(&mut w, end)?;
                    // The rebuilt index's name, so a stale one cannot return.
                    os::sync_dir(seam, dir)?;
                } else if opts.zero_past_end {
                    // Asked for (DESIGN.md §2): nothing below the end changes, so the
                    // index, clean or resumed, stays right whatever a crash in the middle
                    // leaves.
                    w.m.log.zero_tail(end)?;
                } else if let Some(to) = garbage_end.filter(|&to| to > end) {
                    // Resumed past a torn write: zero what the killed writer left past the
                    // cut and flush just that (its records below stay unsynced, as they
                    // were).
                    w.m.log.zero_range(end, to)?;
                }
                Handle::Writer(w)
            }
        };
        if created {
            // A new store: its first index was built, not recovered.
            report = RecoveryReport { log_end: end, ..RecoveryReport::default() };
        }
        let parts = Parts {
            handle,
            live_keys: live,
            durable,
            report,
            live: page,
            follow: start.flatten().map(Follower::unattached),
        };
        Ok(Self::assemble(dir, opts, parts))
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

    /// The shared state over an opened writer state (writers and read-only handles alike).
    fn assemble(dir: &Path, opts: &Options, p: Parts) -> Self {
        let m = p.handle.mapped();
        let state = Arc::new(State {
            log: Arc::clone(m.log.map()),
            index: Arc::clone(&m.index),
            next: OnceLock::new(),
            generation: 0,
        });
        let (store_id, durable) = (m.header.store_id, p.durable);
        if let Some(live) = &p.live {
            live.set_durable(durable, m.header.committed);
        }
        Shared {
            dir: dir.to_path_buf(),
            index_path: dir.join(INDEX_FILE),
            state: ArcSwap::new(state),
            handle: Mutex::new(p.handle),
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
        }
    }

    /// A read-only handle following the writer's files from the start: no lock, no scan.
    pub(super) fn open_following(
        dir: &Path,
        opts: &Options,
        live: Live,
        attached: Attached,
    ) -> Result<Self> {
        let a = attached.announced;
        let (Some((log, header)), Some(index)) = (attached.log, attached.index) else {
            // `attach` without files of our own opens both.
            return Err(Error::Locked { path: dir.to_path_buf(), read_only: true });
        };
        let follow = Follower::attached_at(live, a.seq, log.map().len());
        let m = Mapped {
            log,
            index: Arc::new(index),
            end: a.visible,
            counts: Counts::default(),
            header,
            used: 0,
            generation: 0,
            files: a.files,
            seam: Seam::default(),
        };
        let report = RecoveryReport { log_end: a.visible, ..RecoveryReport::default() };
        let durable = a.visible;
        let handle = Handle::ReadOnly(m);
        let parts =
            Parts { handle, live_keys: 0, durable, report, live: None, follow: Some(follow) };
        Ok(Self::assemble(dir, opts, parts))
    }
}

/// A file in `dir` that is not one of a store's, if there is one: a store is created only
/// in an empty directory (or one holding what an interrupted creation left).
fn foreign_file(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let name = entry.map_err(|e| Error::io("list", dir, e))?.file_name();
        if !name.to_str().is_some_and(is_store_file) {
            return Ok(Some(name.into()));
        }
    }
    Ok(None)
}
