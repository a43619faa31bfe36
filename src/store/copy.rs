//! A hot backup (`Store::copy_to`): a consistent copy of one snapshot, made while writers
//! keep writing (they never wait for it), into a new store directory. Either the log itself
//! up to the snapshot's end, or (compacting) only the live pairs.

use std::path::{Path, PathBuf};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::format::{DATA_FILE, DATA_START, INDEX_FILE, LogHeader, PAGE};
use crate::os::{self, DirLock, Seam};
use crate::stats::Stats;

use super::open::Options;
use super::shared::Shared;
use super::view::Snapshot;
use super::write::{create_data_file, write_slot};

/// The log is copied this many bytes at a time, with writeback started after each.
const COPY_STEP: usize = 8 << 20;
/// A compacting copy writes batches of at most this many pairs...
const BATCH_PAIRS: usize = 10_000;
/// ...and about this many bytes.
const BATCH_BYTES: usize = 8 << 20;

impl Shared {
    /// The copy; see [`Store::copy_to`](super::Store::copy_to).
    pub(super) fn copy_to(&self, dest: &Path, compact: bool) -> Result<Stats> {
        self.check_poisoned()?;
        let target = Destination::prepare(dest)?;
        let work = target.work.as_path();
        let snap = Snapshot::take(self);
        let seam = Seam::default();
        let copy = if compact {
            drop(create_data_file(&seam, work, &work.join(DATA_FILE), self.store_id)?);
            let copy = Shared::open(work, &Options::default())?;
            copy_pairs(&snap, &copy)?;
            copy
        } else {
            copy_log(&snap, work, self.store_id, &seam)?;
            // The index is rebuilt from the copied log, every checksum checked on the way.
            let checked =
                Shared::open(work, &Options { rebuild_index: true, ..Options::default() });
            checked.map_err(|e| match e {
                // The same offset in this store's log, which the copy repeats.
                Error::Corrupt { offset, kind, .. } => {
                    Error::Corrupt { file: self.dir.join(DATA_FILE), offset, kind }
                }
                e => e,
            })?
        };
        drop(snap);
        let stats = copy.stats();
        copy.shutdown()?; // durable and closed cleanly
        drop(copy);
        target.finish()?;
        Ok(stats)
    }
}

/// Writes the snapshot's live pairs into `copy`, in atomic batches.
fn copy_pairs(snap: &Snapshot<'_>, copy: &Shared) -> Result<()> {
    let mut batch = Batch::new();
    let mut bytes = 0;
    for item in snap.iter() {
        let (key, value) = item?;
        batch.put(key, value);
        bytes += key.len() + value.len();
        if batch.len() == BATCH_PAIRS || bytes >= BATCH_BYTES {
            copy.write_batch(std::mem::take(&mut batch))?;
            bytes = 0;
        }
    }
    copy.write_batch(batch)
}

/// Copies the snapshot's log (every record below its visible end: whole writes and
/// batches, immutable while the snapshot lives) into a data file in `dest` (the copy's
/// work directory), with a header that commits all of it, flushed.
fn copy_log(snap: &Snapshot<'_>, dest: &Path, store_id: u64, seam: &Seam) -> Result<()> {
    let records = snap.records();
    if Some(records.len() as u64) != snap.visible().checked_sub(DATA_START) {
        // A follower whose writer moved to files it could not map: its newest view does
        // not reach the snapshot's end.
        let why = std::io::Error::other(
            "the snapshot's log is not all mapped by this handle (its writer moved on to \
             files it could not follow); retry the copy",
        );
        return Err(Error::io("copy the log of", dest, why));
    }
    let end = DATA_START + records.len() as u64;
    let (mut log, h) = create_data_file(seam, dest, &dest.join(DATA_FILE), store_id)?;
    log.grow(end.div_ceil(PAGE) * PAGE)?;
    let mut at = DATA_START;
    for chunk in records.chunks(COPY_STEP) {
        log.write_at(at, |dst| dst.copy_from_slice(chunk), chunk.len());
        log.start_writeback(at, at + chunk.len() as u64);
        at += chunk.len() as u64;
        log.publish(at);
    }
    write_slot(&mut log, &LogHeader { seq: h.seq.wrapping_add(1), committed: end, ..h });
    log.flush(0, end)
}

/// Where the copy is built, inside the destination: a store of its own until its files are
/// renamed into the destination, the data file last. A copy interrupted before that leaves
/// no store in the destination (and this directory, which open refuses to mistake for
/// one: `Error::NotAStore`).
const WORK_DIR: &str = ".mapkv-copy";

/// The copy's destination: new or empty when the copy starts, locked (as a writer locks a
/// store) until it ends, so that two copies never share it; left as it was found unless
/// the copy finishes.
struct Destination {
    dir: PathBuf,
    work: PathBuf,
    created: bool,
    /// The index file has been renamed into the destination (the data file has not).
    moved_index: bool,
    done: bool,
    _lock: DirLock,
}

impl Destination {
    /// # Errors
    /// [`Error::Io`] if `dir` holds anything already or cannot be made;
    /// [`Error::Locked`] if another copy (or a writer) holds it.
    fn prepare(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        let created = match std::fs::create_dir(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io("create directory", dir, e)),
        };
        let lock = os::lock_dir(dir)?;
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io("copy into", dir, e))?;
        if entries.next().is_some() {
            let why = std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the destination of a copy must be a new or empty directory",
            );
            return Err(Error::io("copy into", dir, why));
        }
        let work = dir.join(WORK_DIR);
        std::fs::create_dir(&work).map_err(|e| Error::io("create directory", &work, e))?;
        let target = Self {
            dir: dir.to_path_buf(),
            work,
            created,
            moved_index: false,
            done: false,
            _lock: lock,
        };
        if created {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            os::sync_dir(&Seam::default(), parent.unwrap_or(Path::new(".")))?;
        }
        Ok(target)
    }

    /// Moves the finished copy into place: the index, then the data file (from which on
    /// the destination is a store), then makes the names durable.
    fn finish(mut self) -> Result<()> {
        let seam = Seam::default();
        os::rename(&seam, &self.work.join(INDEX_FILE), &self.dir.join(INDEX_FILE))?;
        self.moved_index = true;
        os::rename(&seam, &self.work.join(DATA_FILE), &self.dir.join(DATA_FILE))?;
        self.done = true;
        os::sync_dir(&seam, &self.dir)?;
        let _ = std::fs::remove_dir_all(&self.work);
        Ok(())
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.work);
        if self.moved_index {
            let _ = std::fs::remove_file(self.dir.join(INDEX_FILE));
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.dir); // only if nothing else is in it
        }
    }
}
