//! The full check of a store (`Store::verify`): every record's checksum, the index slot by
//! slot against one rebuilt from the log, the key count, and zeros past the end of the log.

use crate::apply::IndexCtx;
use crate::error::{Error, Result};
use crate::format::{CorruptKind, DATA_FILE, DATA_START, LogHeader, Record};
use crate::index::{DELETED, Slot, Table};
use crate::os;
use crate::recovery::{self, Log, Problem, Rebuild, VerifyReport};

use super::shared::{Mapped, Shared};

impl Shared {
    /// As [`nonzero_past_end`](super::Store::nonzero_past_end), with the handle's lock held.
    pub(super) fn nonzero_past(&self, w: &Mapped) -> Result<Option<u64>> {
        if self.follow.as_ref().is_some_and(|f| f.attached()) {
            return Ok(None); // the writer's, past its published end
        }
        let Some(at) = w.log.first_nonzero_from(w.end)? else { return Ok(None) };
        if self.read_only {
            // Opened alone: a writer that opened since may be writing past our end, or may
            // have written there and closed (its header then differs from ours).
            let moved = |h: LogHeader| h.seq != w.header.seq;
            if os::writer_alive(&self.dir)? || w.log.read_head().is_ok_and(moved) {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// The full check; see [`Store::verify`](super::Store::verify).
    pub(super) fn verify(&self) -> Result<VerifyReport> {
        self.check_poisoned()?;
        // A follower checks the log as far as the writer had made visible when it started
        // (and mapped), and the index slots that point below that.
        let mut tries = 0;
        let (w, end, following) = loop {
            self.follow()?;
            let w = self.files();
            let following = self.follow.as_ref().is_some_and(|f| f.attached());
            let end = if following { w.log.map().visible() } else { w.end };
            if end <= w.log.map().len() {
                break (w, end, following);
            }
            if end == u64::MAX {
                // Files a compaction replaced, which the handle could not leave: whole
                // and final, so their end is where their records end.
                let path = self.dir.join(DATA_FILE);
                let log = Log::records(w.log.map().records(u64::MAX));
                let end = recovery::valid_end(log, &w.header, &path, (DATA_START, 0))?.end;
                break (w, end, following);
            }
            // The writer grew the log since this handle mapped it: map it and look again.
            tries += 1;
            if tries == 100 {
                let why = std::io::Error::other("the writer's log keeps outgrowing this handle");
                return Err(Error::io("verify", &self.dir, why));
            }
        };
        // Only the published records: a follower's writer rewrites the header pages at each
        // sync and writes past its published end while this runs (DESIGN.md §7).
        let log = Log::records(w.log.map().records(end));
        let end = log.end();
        let data_path = self.dir.join(DATA_FILE);
        // Everything below the end must be valid: claim it all as committed.
        let header = LogHeader { committed: end, ..w.header };
        let ctx = IndexCtx {
            path: &self.index_path,
            writable: false,
            store_id: self.store_id,
            seam: &w.seam,
        };
        let hint = self.len().min((end - DATA_START) / Record::KEY_OFFSET);
        let (index, _) = ctx.create(None, hint)?;
        let mut rebuilt = Rebuild::new(index, &ctx);
        let (records, damaged) = recovery::check_log(log, self.store_id);
        let mut report = VerifyReport { log_end: end, records, ..VerifyReport::default() };
        let sound = damaged.is_empty();
        let file = || data_path.clone();
        let damaged =
            damaged.into_iter().map(|(offset, kind)| Problem { file: file(), offset, kind });
        report.problems = damaged.collect();
        let settled = !self.read_only || self.recovery.was_clean();
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
            file: self.index_path.clone(),
            offset,
            kind: CorruptKind::IndexDisagrees { record },
        };
        // Every live key of the log is in the index at its latest record (or at a later one,
        // for a follower: the writer went on)...
        let later = |word: u64| following && word & !DELETED >= end;
        for (_, hash, word) in truth.occupied().filter(|(_, _, w)| w & DELETED == 0) {
            if disk.find(hash, |_, w| Ok(w == word || later(w)))?.is_none() {
                // Reported at the slot holding the key's hash (naming another record),
                // where the slot check below finds the same slot; 0 if none does.
                let offset = match disk.locate(hash, |_, _| Ok(true))? {
                    Slot::Occupied { i, .. } => Table::slot_offset(i),
                    Slot::Vacant { .. } | Slot::Full => 0,
                };
                report.problems.push(mismatch(offset, word));
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
                file: self.index_path.clone(),
                offset: 0,
                kind: CorruptKind::BadField { field: "live key count", value: self.len() },
            });
        }
        Ok(report)
    }
}
