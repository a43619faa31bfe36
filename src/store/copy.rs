//! A hot backup (`Store::copy_to`): a consistent copy of one snapshot, made while writers
//! keep writing (they never wait for it), into a new store directory. Either the log itself
//! up to the snapshot's end, or (compacting) only the live pairs.

use std::path::{Path, PathBuf};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::format::{DATA_FILE, DATA_START, LogHeader, PAGE, TMP_SUFFIX};
use crate::os::{self, LogFile, Seam};
use crate::recovery;
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
        let made = Destination::prepare(dest)?;
        let snap = Snapshot::take(self);
        let seam = Seam::default();
        let data_path = dest.join(DATA_FILE);
        let copy = if compact {
            create_data_file(&seam, dest, &data_path, self.store_id)?;
            let copy = Shared::open(dest, &Options::default())?;
            copy_pairs(&snap, &copy)?;
            copy
        } else {
            copy_log(&snap, dest, self.store_id, &seam)?;
            // The index is rebuilt from the copied log, every checksum checked on the way.
            Shared::open(dest, &Options { rebuild_index: true, ..Options::default() })?
        };
        drop(snap);
        let stats = copy.stats();
        copy.shutdown()?; // durable and closed cleanly
        made.keep();
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
/// batches, immutable while the snapshot lives) into `dest`'s data file, with a header that
/// commits all of it. Built under a temporary name and renamed into place once durable.
fn copy_log(snap: &Snapshot<'_>, dest: &Path, store_id: u64, seam: &Seam) -> Result<()> {
    let records = snap.records();
    let end = DATA_START + records.len() as u64;
    let tmp = dest.join(format!("{DATA_FILE}{TMP_SUFFIX}"));
    create_data_file(seam, dest, &tmp, store_id)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| Error::io("open", &tmp, e))?;
    let mut log = LogFile::new(file, &tmp, true, DATA_START, seam)?;
    log.publish(DATA_START);
    log.grow(end.div_ceil(PAGE) * PAGE)?;
    let mut at = DATA_START;
    for chunk in records.chunks(COPY_STEP) {
        log.write_at(at, |dst| dst.copy_from_slice(chunk), chunk.len());
        log.start_writeback(at, at + chunk.len() as u64);
        at += chunk.len() as u64;
        log.publish(at);
    }
    let h = recovery::read_header(log.bytes(), &tmp)?;
    write_slot(&mut log, &LogHeader { seq: h.seq.wrapping_add(1), committed: end, ..h });
    log.flush(0, end)?;
    log.install(&dest.join(DATA_FILE))?;
    os::sync_dir(seam, dest)
}

/// The copy's directory: new or empty, and removed (or emptied) again unless the copy
/// finishes.
struct Destination {
    dir: PathBuf,
    created: bool,
    keep: bool,
}

impl Destination {
    /// # Errors
    /// [`Error::Io`] if `dir` holds anything already, or cannot be made.
    fn prepare(dir: &Path) -> Result<Self> {
        let created = !dir.exists();
        if created {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            os::sync_dir(&Seam::default(), parent.unwrap_or(Path::new(".")))?;
        } else {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io("copy into", dir, e))?;
            if entries.next().is_some() {
                let why = std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the destination of a copy must be a new or empty directory",
                );
                return Err(Error::io("copy into", dir, why));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), created, keep: false })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.created {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
