//! What open does before the store is usable: choose the data file header, decide whether
//! the index can be trusted, and otherwise rebuild it by scanning the log, cutting a torn
//! tail. DESIGN.md ("Recovery") gives the argument for each decision.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::apply::{Change, Counts, IndexCtx, key_at, record_len};
use crate::error::{Error, Result};
use crate::format::CorruptKind;
use crate::format::{
    DATA_FILE, DATA_START, DecodeError, INDEX_FILE, IndexHeader, Kind, LOG_MAGIC, LogHeader,
    RECORD_ALIGN, Record, crc_seed,
};
use crate::index::{self, DELETED, Slot, Table, VACATED};
use crate::live::last_record;
use crate::live::{Checkpoint, Live, UNKNOWN_LAST};
use crate::os::{IndexMap, LogFile, Seam};

/// What open found and did; see [`Store::recovery`](crate::Store::recovery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Whether the index had to be rebuilt from the log (after an unclean shutdown, or a
    /// missing, foreign or damaged index). False after a clean close: open read headers only.
    pub index_rebuilt: bool,
    /// Why the index was rebuilt, if it was.
    pub reason: Option<String>,
    /// After a process crash in this boot: the index was trusted as the dead writer left
    /// it up to this offset of the log (its last checkpoint), and only the records from
    /// there on were replayed ([DESIGN.md §6](https://github.com/mapkv/mapkv/blob/main/DESIGN.md#resuming-after-a-process-crash)). `None`
    /// after a clean close or a rebuild.
    pub resumed_from: Option<u64>,
    /// Records read from the log while rebuilding or resuming.
    pub records_replayed: u64,
    /// Where the valid log ends.
    pub log_end: u64,
    /// Where a damaged or torn record was cut off (everything from there on was discarded),
    /// and what was wrong with it. `None` when the log simply ended.
    pub cut: Option<(u64, CorruptKind)>,
}

impl RecoveryReport {
    /// Whether the store had been closed cleanly: open read headers only.
    pub fn was_clean(&self) -> bool {
        !self.index_rebuilt && self.resumed_from.is_none()
    }
}

/// Picks the valid header slot with the highest sequence number.
///
/// # Errors
/// [`Error::Corrupt`] if neither slot is valid, [`Error::UnsupportedVersion`] for a valid
/// header of another version.
pub fn read_header(bytes: &[u8], path: &Path) -> Result<LogHeader> {
    crate::os::header_of(bytes, bytes.len() as u64, path)
}

/// The index file's header if the index can be used as it is: it belongs to this store,
/// is marked clean at exactly the committed log length, and no record follows. Otherwise
/// why not.
///
/// # Errors
/// The reason to rebuild, in words for `RecoveryReport::reason`.
pub fn trust_index(
    index: Option<&IndexMap>,
    header: &LogHeader,
    log: &[u8],
) -> Result<IndexHeader, String> {
    let h = index_header(index, header)?;
    if h.clean_len == 0 {
        return Err("the store was not closed cleanly".into());
    }
    if h.clean_len != header.committed {
        return Err(format!(
            "index covers the log to {}, but the log is committed to {}",
            h.clean_len, header.committed
        ));
    }
    if let Some(rest) = log.get(h.clean_len as usize..)
        && let Ok(rec) = Record::decode(rest)
        && rec.verify(crc_seed(header.store_id), rest).is_ok()
    {
        return Err(format!("a record follows the indexed log at {}", h.clean_len));
    }
    Ok(h)
}

/// The index file's header if it decodes and names this store; otherwise why not.
fn index_header(index: Option<&IndexMap>, header: &LogHeader) -> Result<IndexHeader, String> {
    let h = decode_index_header(index.ok_or("the index file is missing or truncated")?)?;
    if h.store_id != header.store_id {
        return Err(
            CorruptKind::ForeignIndex { expected: header.store_id, found: h.store_id }.to_string()
        );
    }
    Ok(h)
}

/// The index file's header if it decodes (whatever store it names); otherwise why not.
fn decode_index_header(index: &IndexMap) -> Result<IndexHeader, String> {
    match IndexHeader::decode(&Table::new(index.words()).header_bytes(), index.len()) {
        Ok(h) => Ok(h),
        Err(DecodeError::Version(v)) => Err(format!("index has format version {v}")),
        Err(DecodeError::Corrupt(k)) => Err(format!("index header damaged: {k}")),
    }
}

/// The bytes of a log, from file offset `base` on; offsets given to it are the file's. A
/// writer's own mapping is read whole, from byte 0; a log that may be written meanwhile
/// (a follower's, whose writer rewrites the header pages at each sync and writes past its
/// published end) only as its published records, from `DATA_START` (`LogMap::records`), so
/// that no slice spans bytes that change while it lives (DESIGN.md §7).
#[derive(Debug, Clone, Copy)]
pub struct Log<'a> {
    bytes: &'a [u8],
    base: u64,
}

impl<'a> Log<'a> {
    /// A whole file, header pages included.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Self { bytes, base: 0 }
    }

    /// The records alone: `bytes` starts at `DATA_START`.
    pub fn records(bytes: &'a [u8]) -> Self {
        Self { bytes, base: DATA_START }
    }

    /// The file offset where the bytes end.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// The bytes from file offset `p` to the end (empty at the end); `None` outside.
    #[inline]
    pub fn from(&self, p: u64) -> Option<&'a [u8]> {
        let i = usize::try_from(p.checked_sub(self.base)?).ok()?;
        self.bytes.get(i..)
    }

    /// The bytes of `[p, end)`, if they are all there.
    fn range(&self, p: u64, end: u64) -> Option<&'a [u8]> {
        self.from(p)?.get(..usize::try_from(end.checked_sub(p)?).ok()?)
    }

    /// The records from `from` (a record boundary) up to `end` (`u64::MAX`: the end of the
    /// bytes), in log order. The one walk over records: recovery's scans, verify's check,
    /// resuming and compaction's catch-up all go through it.
    pub fn walk(self, from: u64, end: u64) -> Walk<'a> {
        Walk { log: self, p: from, end: end.min(self.end()), done: false }
    }
}

/// An iterator over a log's records; see [`Log::walk`]. Each item is a record's offset
/// and its decoded header with the bytes from it to the walk's end, or, where no header
/// decodes, the fault, which ends the walk. Checksums are the caller's to check.
pub struct Walk<'a> {
    log: Log<'a>,
    p: u64,
    end: u64,
    done: bool,
}

impl Walk<'_> {
    /// Where the walk is: the end of the last record it returned (its start until then).
    pub fn at(&self) -> u64 {
        self.p
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = (u64, Result<(Record, &'a [u8]), CorruptKind>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let p = self.p;
        let rest = self.log.range(p, self.end).filter(|r| !r.is_empty() && !self.done)?;
        match Record::decode(rest) {
            Ok(rec) => {
                self.p = p + rec.total_len();
                Some((p, Ok((rec, rest))))
            }
            Err(kind) => {
                self.done = true;
                Some((p, Err(kind)))
            }
        }
    }
}

/// How far past a zeroed record header the scan looks for data, to tell a lost page from
/// the clean end of the log.
const GAP_WINDOW: usize = 1 << 20;

/// Receives the records found by [`scan`], in log order.
pub trait Replay {
    /// Applies the record at `off` for `key` (a put or a tombstone), found in `log`.
    ///
    /// # Errors
    /// Whatever applying it returns (index growth I/O).
    fn apply(&mut self, off: u64, kind: Kind, key: &[u8], log: Log<'_>) -> Result<()>;

    /// A record with `key` will be applied soon: start loading what `apply` will touch.
    fn prefetch(&mut self, key: &[u8]) {
        let _ = key;
    }
}

/// How many records the scan looks ahead to prefetch their index slots.
const LOOKAHEAD: usize = 8;

/// The batch a log walk is inside: where it started and how many records it has so far.
type OpenBatch = Option<(u64, u64)>;

/// Follows the batch structure over the record `rec` at `p`: batch records open or extend
/// a batch, its commit record (naming the batch's start and count) closes it, and nothing
/// else may come between.
fn batch_step(rec: &Record, rest: &[u8], p: u64, batch: &mut OpenBatch) -> Result<(), CorruptKind> {
    *batch = match (*batch, rec.kind, rec.batch) {
        (Some((start, n)), Kind::Commit, _)
            if rec.prev == start && rec.value(rest) == n.to_le_bytes() =>
        {
            None
        }
        (None, Kind::Put | Kind::Delete, false) => None,
        (None, _, true) => Some((p, 1)),
        (Some((start, n)), _, true) => Some((start, n + 1)),
        _ => return Err(CorruptKind::BadBatch),
    };
    Ok(())
}

/// Where the bytes a killed writer left past `from` (the end of the valid log) end: past
/// every record header that decodes there (an unfinished batch, the record being copied),
/// then past every nonzero byte until a whole window of [`GAP_WINDOW`] zeros. Past it the
/// file is as fallocate left it: a kill -9 leaves nothing further (DESIGN.md §6).
fn garbage_end(log: &[u8], from: u64) -> u64 {
    let p = headers_end(log, from);
    let mut end = p;
    let mut at = p;
    while let Some(window) = log.get(at as usize..).filter(|w| !w.is_empty()) {
        let window = &window[..window.len().min(GAP_WINDOW)];
        match window.iter().rposition(|&b| b != 0) {
            Some(i) => {
                end = at + i as u64 + 1;
                at += window.len() as u64;
            }
            None => break,
        }
    }
    end.max(from)
}

/// Where the records whose headers decode from `from` on end (their checksums unchecked:
/// an unfinished batch, a record being copied), within `log`.
fn headers_end(log: &[u8], from: u64) -> u64 {
    let mut walk = Log::whole(log).walk(from, u64::MAX);
    while let Some((_, Ok(_))) = walk.next() {}
    walk.at()
}

/// Where the valid part of a log ends, as [`valid_end`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The end of the last whole record or committed batch.
    pub end: u64,
    /// Where and why the bytes past `end` were not taken, if they are not simply zeros.
    pub cut: Option<(u64, CorruptKind)>,
    /// Offset of the record that ends at `end` (0 if none).
    pub last: u64,
}

/// Where the valid log ends, walking from `from` (a record boundary outside any batch,
/// with `last` the record ending there): after the last record or committed batch whose
/// checksums hold. A bad record below `committed` is corruption; at or past it, it is a
/// torn tail, reported as the cut (with an unfinished batch, the cut is at the batch's
/// start).
pub(crate) fn valid_end(
    log: Log<'_>,
    header: &LogHeader,
    path: &Path,
    (from, last): (u64, u64),
) -> Result<Tail> {
    let seed = crc_seed(header.store_id);
    let corrupt = |offset, kind| Error::Corrupt { file: path.to_path_buf(), offset, kind };
    let (mut end, mut last, mut batch, mut cut) = (from, last, None, None);
    for (p, decoded) in log.walk(from, u64::MAX) {
        let checked = decoded
            .and_then(|(rec, rest)| rec.verify(seed, rest).map(|()| (rec, rest)))
            .and_then(|(rec, rest)| batch_step(&rec, rest, p, &mut batch).map(|()| rec))
            .map_err(|k| k.at(p));
        match checked {
            Ok(rec) if batch.is_none() => (end, last) = (p + rec.total_len(), p),
            Ok(_) => {}
            Err(kind) if p < header.committed => return Err(corrupt(p, kind)),
            Err(kind) => {
                // Past the end everything is zero (DESIGN.md §2), so look a little way.
                cut = stop_kind(log, p, kind, GAP_WINDOW).map(|kind| (p, kind));
                break;
            }
        }
    }
    if let Some((start, records)) = batch {
        cut = Some((start, CorruptKind::UnfinishedBatch { records }));
    }
    if let Some(kind) = short_of(header.committed, end) {
        return Err(corrupt(end, kind));
    }
    Ok(Tail { end, cut, last })
}

/// What stopped a walk at `p`, where a record failed with `kind`: `None` if it is the
/// clean end of the log (zeros where the record should start, and up to `window` bytes
/// on), a [`ZeroGap`](CorruptKind::ZeroGap) if data follows those zeros (a page that never
/// reached disk), otherwise `kind`.
fn stop_kind(log: Log<'_>, p: u64, kind: CorruptKind, window: usize) -> Option<CorruptKind> {
    let rest = log.from(p).unwrap_or_default();
    if rest.iter().take(Record::KEY_OFFSET as usize).any(|&b| b != 0) {
        return Some(kind);
    }
    let d = crate::format::first_nonzero(&rest[..rest.len().min(window)])?;
    Some(CorruptKind::ZeroGap { data_at: p + d as u64 })
}

/// The problem of a log whose records end at `end`, if that is short of its `committed`
/// length.
fn short_of(committed: u64, end: u64) -> Option<CorruptKind> {
    (end < committed).then_some(CorruptKind::LengthPastEnd { end: committed, limit: end })
}

/// Finds where the log validly ends (checking every checksum and batch), then feeds every
/// record before that to `replay`, prefetching the index slots of the records ahead.
///
/// # Errors
/// [`Error::Corrupt`] for damage below `committed` or a log ending before it.
pub fn scan(
    log: Log<'_>,
    header: &LogHeader,
    path: &Path,
    replay: &mut dyn Replay,
) -> Result<(RecoveryReport, Tail)> {
    let tail = valid_end(log, header, path, (DATA_START, 0))?;
    let (end, cut) = (tail.end, tail.cut.clone());
    let mut report =
        RecoveryReport { index_rebuilt: true, log_end: end, cut, ..Default::default() };
    // Below `end` every record decodes (checked above). `ahead` runs LOOKAHEAD records in
    // front, so the index slots of records about to be applied are already on their way
    // from memory (random inserts dominate a scan).
    let mut ahead = log.walk(DATA_START, end);
    let mut step_ahead = |replay: &mut dyn Replay| {
        if let Some((_, Ok((rec, rest)))) = ahead.next() {
            replay.prefetch(rec.key(rest));
        }
    };
    for _ in 0..LOOKAHEAD {
        step_ahead(replay);
    }
    for (p, decoded) in log.walk(DATA_START, end) {
        let Ok((rec, rest)) = decoded else { break };
        step_ahead(replay);
        if rec.kind != Kind::Commit {
            replay.apply(p, rec.kind, rec.key(rest), log)?;
        }
        report.records_replayed += 1;
    }
    Ok((report, tail))
}

/// Checks every record of `log` (all of which must be valid): returns the number of
/// records and each damaged one's offset and fault. A record whose checksum fails but whose
/// header holds is skipped over, so one bad value does not hide the rest: its own batch
/// flag is not trusted (it neither opens a batch nor breaks one; a damaged commit closes
/// the open one), and a commit out of place ends the batch it closes, so that one damaged
/// record is not followed by a misplaced commit at the end of every later batch.
/// A header that does not decode ends the walk.
pub fn check_log(log: Log<'_>, store_id: u64) -> (u64, Vec<(u64, CorruptKind)>) {
    let seed = crc_seed(store_id);
    let (mut records, mut problems, mut batch) = (0, Vec::new(), None);
    for (p, decoded) in log.walk(DATA_START, u64::MAX) {
        match decoded {
            Ok((rec, rest)) => {
                match rec.verify(seed, rest) {
                    Ok(()) => {
                        if let Err(kind) = batch_step(&rec, rest, p, &mut batch) {
                            if rec.kind == Kind::Commit {
                                batch = None; // it ends the batch it closes
                            }
                            problems.push((p, kind));
                        }
                    }
                    Err(kind) => {
                        problems.push((p, kind));
                        // Its batch flag and commit fields are what the checksum failed
                        // on: it neither opens a batch nor breaks one. A commit closes the
                        // batch that is open; any other record counts in it.
                        match (&mut batch, rec.kind) {
                            (open @ Some(_), Kind::Commit) => *open = None,
                            (Some((_, n)), _) => *n += 1,
                            (None, _) => {}
                        }
                    }
                }
                records += u64::from(rec.kind != Kind::Commit);
            }
            // The walk ends here.
            Err(kind) => problems.push((p, kind.at(p))),
        }
    }
    if let Some((start, records)) = batch {
        problems.push((start, CorruptKind::UnfinishedBatch { records }));
    }
    (records, problems)
}

/// What [`Store::verify`](crate::Store::verify) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Put and delete records read (batch commit records are not counted, as in
    /// [`Stats::records`](crate::Stats::records)).
    pub records: u64,
    /// Live keys according to the log.
    pub live_keys: u64,
    /// End of the log.
    pub log_end: u64,
    /// Every problem found, with its file and offset; empty when the store is sound.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One problem found by [`Store::verify`](crate::Store::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte offset of the damage in `file` (0 for whole-file findings).
    pub offset: u64,
    /// What is wrong.
    pub kind: CorruptKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.file.display(), self.offset, self.kind)
    }
}

/// What [`salvage`] could read of a store's data file, without opening the store. While it
/// lives it lends slices of the file ([`pairs`](Salvage::pairs)), so it holds a shared lock
/// on the store's directory: a writer's open (which rewrites the header pages and zeroes a
/// torn tail) gets [`Error::Locked`] until it is dropped.
#[non_exhaustive]
pub struct Salvage {
    /// Records (puts and deletes) read before the first damage that count: each outside a
    /// batch, or in a batch whose commit record is there.
    pub before: u64,
    /// Records that count found past the first damage: found again after it by their
    /// headers and checksums.
    pub after: u64,
    /// Records left out because their batch lost its commit record (or its start) to the
    /// damage: a batch counts whole or not at all.
    pub dropped: u64,
    /// What is damaged, in offset order: damaged records, zeros where records should be,
    /// a log that ends before its committed length, both header copies (at byte 0), and,
    /// as `UnfinishedBatch` at its start, each batch the damage broke.
    pub damage: Vec<Problem>,
    log: LogFile,
    /// Where each key's last record read is, if it is a put, in log order.
    live: Vec<u64>,
    /// Keeps writers out while the mapping lends slices.
    _lock: crate::os::DirLock,
}

impl fmt::Debug for Salvage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Salvage")
            .field("before", &self.before)
            .field("after", &self.after)
            .field("dropped", &self.dropped)
            .field("damage", &self.damage)
            .field("pairs", &self.live.len())
            .finish()
    }
}

impl Salvage {
    /// The last value read of each key (keys whose last record read is a delete are left
    /// out), in the order of those records in the log. A key whose last record was lost to
    /// the damage has its value before it, if one was read.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let bytes = self.log.bytes();
        self.live.iter().filter_map(move |&at| {
            let rest = bytes.get(at as usize..)?;
            let rec = Record::decode(rest).ok()?;
            Some((rec.key(rest), rec.value(rest)))
        })
    }

    /// How many pairs [`pairs`](Self::pairs) gives.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no pair was read.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Reads what can be read of the data file of the store in `dir`, which may be damaged so
/// that the store does not open (cut short, overwritten in the middle, its header pages
/// lost): every record whose header and checksum hold, from the first on, and past each
/// damaged stretch, the records found again by their headers and checksums. Changes
/// nothing. Batches count whole or not at all, as in recovery. Record checksums are
/// seeded with the store id: from the data file's header, or, if both copies are lost,
/// from the index file's.
///
/// # Errors
/// [`Error::Corrupt`] with [`CorruptKind::BadMagic`] or [`CorruptKind::TooShort`] at byte
/// 0 if the file is not a mapkv data file at all (no header copy has mapkv's magic number
/// and no record starts where the first one would), and with
/// [`CorruptKind::NoValidHeader`] if both header copies are damaged and the index does not
/// name the store id either; [`Error::UnsupportedVersion`] for a header of another
/// version; [`Error::Locked`] while a writer has the store open; [`Error::NotFound`] without
/// a data file; [`Error::Io`].
pub fn salvage(dir: &Path) -> Result<Salvage> {
    let file = dir.join(DATA_FILE);
    let opened = crate::os::open_data_file(dir, false)?;
    // Beside a writer there is nothing to read alone (it writes past what it published);
    // and while the `Salvage` lends slices of the file, no writer may open it.
    let lock = crate::os::lock_dir_shared(dir)?;
    let log = LogFile::new(opened, &file, false, DATA_START, &Seam::default())?;
    let bytes = log.bytes();
    let corrupt = |kind| Error::Corrupt { file: file.clone(), offset: 0, kind };
    // The header, whatever length it claims (the file may be cut short).
    let (header, header_fault) = match crate::os::header_of(bytes, u64::MAX, &file) {
        Ok(h) => (Some(h), None),
        Err(Error::Corrupt { kind, .. }) => (None, Some(kind)),
        Err(e) => return Err(e),
    };
    let store_id = header.map(|h| h.store_id).or_else(|| index_store_id(dir));
    let first = bytes.get(DATA_START as usize..).and_then(|rest| {
        let rec = Record::decode(rest).ok()?;
        let seed = store_id.map(crc_seed);
        seed.is_none_or(|seed| rec.verify(seed, rest).is_ok()).then_some(())
    });
    let damage = match header_fault {
        None => Vec::new(),
        Some(kind @ (CorruptKind::BadMagic | CorruptKind::TooShort { .. }))
            if first.is_none() && !bytes.starts_with(&LOG_MAGIC) =>
        {
            return Err(corrupt(kind)); // never a mapkv data file
        }
        Some(kind @ CorruptKind::TooShort { .. }) => vec![kind],
        Some(_) if store_id.is_none() => return Err(corrupt(CorruptKind::NoValidHeader)),
        Some(_) => vec![CorruptKind::NoValidHeader],
    };
    let seed = crc_seed(store_id.unwrap_or_default());
    let committed = header.map_or(DATA_START, |h| h.committed);
    let mut s = Salvager {
        log: Log::whole(bytes),
        seed,
        committed,
        damage: damage.into_iter().map(|kind| (0, kind)).collect(),
        damaged: false,
        batch: None,
        broken: None,
        pending: Vec::new(),
        latest: std::collections::HashMap::new(),
        counts: [0; 3],
    };
    s.read();
    let mut live: Vec<u64> =
        s.latest.values().filter(|(_, kind)| *kind == Kind::Put).map(|&(at, _)| at).collect();
    live.sort_unstable();
    let mut damage: Vec<Problem> = s
        .damage
        .into_iter()
        .map(|(offset, kind)| Problem { file: file.clone(), offset, kind })
        .collect();
    damage.sort_by_key(|p| p.offset);
    let [before, after, dropped] = s.counts;
    Ok(Salvage { before, after, dropped, damage, log, live, _lock: lock })
}

/// The store id the index file's header names, if it is whole.
fn index_store_id(dir: &Path) -> Option<u64> {
    let index = IndexMap::open(&dir.join(INDEX_FILE), false, &Seam::default()).ok()??;
    decode_index_header(&index).ok().map(|h| h.store_id)
}

/// The walk of [`salvage`].
struct Salvager<'a> {
    log: Log<'a>,
    seed: u32,
    committed: u64,
    damage: Vec<(u64, CorruptKind)>,
    /// Whether damage was met: records counted from then on are `after`.
    damaged: bool,
    batch: OpenBatch,
    /// The start of the batch the last stop broke (reported there): its commit, if found
    /// again past the damage, closes the rest of it found again, which is dropped unreported.
    broken: Option<u64>,
    /// The records of the open batch: where each is, its kind and its key.
    pending: Vec<(u64, Kind, &'a [u8])>,
    /// Each key's last record that counts, and its kind.
    latest: std::collections::HashMap<&'a [u8], (u64, Kind)>,
    /// Records counted before the damage, after it, and dropped with their batch.
    counts: [u64; 3],
}

impl<'a> Salvager<'a> {
    /// Reads the log from its start.
    fn read(&mut self) {
        let mut from = DATA_START;
        loop {
            let mut walk = self.log.walk(from, u64::MAX);
            let stop = loop {
                let Some((p, decoded)) = walk.next() else { break None };
                let checked = decoded
                    .and_then(|(rec, rest)| rec.verify(self.seed, rest).map(|()| (rec, rest)));
                match checked {
                    Ok((rec, rest)) => self.take(p, &rec, rest),
                    Err(kind) => break Some((p, kind.at(p))),
                }
            };
            let Some((p, kind)) = stop else {
                // The file ends where a record would start.
                let end = walk.at().min(self.log.end());
                self.break_batch(true);
                self.damage.extend(short_of(self.committed, end).map(|kind| (end, kind)));
                return;
            };
            self.broken = self.batch.map(|(start, _)| start);
            self.break_batch(true);
            let Some(kind) = stop_kind(self.log, p, kind, usize::MAX) else {
                // Only zeros from here on: the end of the log.
                self.damage.extend(short_of(self.committed, p).map(|kind| (p, kind)));
                return;
            };
            let kind = match kind {
                // The file is cut short inside this record: what is missing is the rest of
                // the log its header vouches for.
                CorruptKind::LengthPastEnd { limit, .. } if limit == self.log.end() => {
                    short_of(self.committed, limit).unwrap_or(kind)
                }
                kind => kind,
            };
            self.damage.push((p, kind));
            self.damaged = true;
            // The next record past the damage. Past a gap too: refind skips the zeros and
            // looks first where the data resumes, rounded down to a record boundary.
            match self.refind(p + RECORD_ALIGN) {
                Some(at) => from = at,
                None => return,
            }
        }
    }

    /// Takes the sound record at `p`: counts it, or holds it until its batch's commit.
    fn take(&mut self, p: u64, rec: &Record, rest: &'a [u8]) {
        let key = rec.key(rest);
        match batch_step(rec, rest, p, &mut self.batch) {
            Ok(()) if self.batch.is_some() => self.pending.push((p, rec.kind, key)),
            Ok(()) if rec.kind == Kind::Commit => {
                for (at, kind, key) in std::mem::take(&mut self.pending) {
                    self.count(at, kind, key);
                }
            }
            Ok(()) => self.count(p, rec.kind, key),
            // The commit of the batch the last stop broke: the rest of that batch, found
            // again past the damage, goes with it (the batch was reported at its start).
            Err(_) if rec.kind == Kind::Commit && self.broken == Some(rec.prev) => {
                self.broken = None;
                self.break_batch(false);
            }
            Err(kind) => {
                // Out of place: a commit naming a batch start the damage took (what is
                // open is the rest of that batch, found again past the damage, and the
                // commit is the one report), or a record inside a batch that never got
                // its commit. The record itself is sound.
                self.damage.push((p, kind));
                self.break_batch(rec.kind != Kind::Commit);
                if rec.batch {
                    self.batch = Some((p, 1));
                    self.pending.push((p, rec.kind, key));
                } else if rec.kind != Kind::Commit {
                    self.count(p, rec.kind, key);
                }
            }
        }
    }

    fn count(&mut self, at: u64, kind: Kind, key: &'a [u8]) {
        self.latest.insert(key, (at, kind));
        self.counts[usize::from(self.damaged)] += 1;
    }

    /// Drops the open batch, if any, and if `report`, reports it at its start.
    fn break_batch(&mut self, report: bool) {
        if let Some((start, records)) = self.batch.take() {
            if report {
                self.damage.push((start, CorruptKind::UnfinishedBatch { records }));
            }
            self.counts[2] += records;
            self.pending.clear();
        }
    }

    /// The first offset at or past `from` where a record starts whose header decodes and
    /// whose checksum holds.
    fn refind(&self, from: u64) -> Option<u64> {
        let mut q = from.next_multiple_of(RECORD_ALIGN);
        while let Some(rest) = self.log.from(q).filter(|r| !r.is_empty()) {
            // A record's kind byte is nonzero, and within its first 8 bytes: skip zeros.
            let d = crate::format::first_nonzero(rest)? as u64;
            q += d / RECORD_ALIGN * RECORD_ALIGN;
            let rest = self.log.from(q).unwrap_or_default();
            if Record::decode(rest).is_ok_and(|rec| rec.verify(self.seed, rest).is_ok()) {
                return Some(q);
            }
            q += RECORD_ALIGN;
        }
        None
    }
}

/// Rebuilds the index from the log during recovery.
pub(crate) struct Rebuild<'a> {
    pub index: IndexMap,
    pub used: u64,
    pub live: u64,
    pub counts: Counts,
    pub ctx: &'a IndexCtx<'a>,
}

impl<'a> Rebuild<'a> {
    /// Rebuilding into `index` (empty).
    pub fn new(index: IndexMap, ctx: &'a IndexCtx<'a>) -> Self {
        Self { index, used: 0, live: 0, counts: Counts::default(), ctx }
    }
}

impl Replay for Rebuild<'_> {
    fn prefetch(&mut self, key: &[u8]) {
        let hash = crate::format::key_hash(key, self.ctx.store_id);
        self.index.prefetch(Table::new(self.index.words()).home_word(hash));
    }

    fn apply(&mut self, off: u64, kind: Kind, key: &[u8], log: Log<'_>) -> Result<()> {
        let hash = crate::format::key_hash(key, self.ctx.store_id);
        let path = self.ctx.path;
        let locate = |index: &IndexMap| {
            Table::new(index.words()).locate(hash, |slot, o| {
                let rest = log.from(o).filter(|_| o >= DATA_START);
                key_at(rest, slot, o, key, path)
            })
        };
        let mut change = Change::from_slot(locate(&self.index)?);
        let cap = Table::new(self.index.words()).capacity();
        if change.is_none_or(|c| c.was_vacant && index::needs_growth(self.used, cap)) {
            (self.index, self.used) = self.ctx.create(Some(&self.index), 0)?;
            change = Change::from_slot(locate(&self.index)?);
        }
        let Some(c) = change else {
            return Err(Error::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                kind: CorruptKind::BadField { field: "index occupancy", value: self.used },
            });
        };
        if kind == Kind::Delete && c.was_vacant {
            self.counts.records = self.counts.records.saturating_add(1);
            return Ok(()); // a tombstone for a key never seen: nothing to index
        }
        Table::new(self.index.words()).set(
            c.slot,
            hash,
            index::word_for(off, kind == Kind::Delete),
        );
        self.used += u64::from(c.was_vacant);
        let len = record_len(log.from(off));
        let old_len = if c.was_live { record_len(log.from(c.prev)) } else { 0 };
        self.counts.add(kind, len, &c, old_len);
        self.live = c.live_after(kind, self.live);
        Ok(())
    }
}

/// What resuming from a dead writer's checkpoint gave.
pub(crate) struct Resumed {
    pub report: RecoveryReport,
    pub counts: Counts,
    pub used: u64,
    pub live: u64,
    /// The record ending at the log's end and its checksum word (as `Checkpoint::last`).
    pub last: (u64, u64),
    /// Where the bytes the killed writer left past the cut end (the log's end if it left
    /// none): a writer zeroes them before it appends.
    pub garbage_end: u64,
}

/// Files that resuming reads and writes.
pub(crate) struct ResumeCtx<'a> {
    pub log: &'a [u8],
    /// Where the written part of the log ends past an offset (`LogFile::written_end`):
    /// the walk past the checkpoint looks no further.
    pub written_end: &'a dyn Fn(u64) -> u64,
    pub header: &'a LogHeader,
    pub data_path: &'a Path,
    pub index: &'a IndexMap,
    pub index_path: &'a Path,
}

/// Resumes the index from the checkpoint of a writer that was killed in this boot
/// (DESIGN.md §6, "Resuming after a process crash"), if the index is one a writer left
/// dirty and the page is there and matches the files: `Err` says why not (`None`: the index
/// is not a dirty one of this store, which the caller already reports), and the caller
/// rebuilds instead.
///
/// # Errors
/// The reason to rebuild, in words for `RecoveryReport::reason`.
pub(crate) fn resume(
    cx: &ResumeCtx<'_>,
    page: &Live,
    data_ino: u64,
) -> std::result::Result<Resumed, Option<String>> {
    match index_header(Some(cx.index), cx.header) {
        Ok(h) if h.clean_len == 0 => {}
        _ => return Err(None),
    }
    let table = Table::new(cx.index.words());
    let c = page.resumable(cx.header.store_id, data_ino, table.tag())?;
    check_checkpoint(cx, &c)?;
    // Past the checkpoint: the write in flight, then zeros. Looked at only as far as the
    // writer wrote (and the headers there say), so that open does not fault in the
    // untouched rest of the file a page at a time.
    let written = (cx.written_end)(c.end).max(headers_end(cx.log, c.end));
    let log = &cx.log[..written as usize];
    let cx = ResumeCtx { log, ..*cx };
    let tail = valid_end(Log::whole(cx.log), cx.header, cx.data_path, (c.end, c.last))
        .map_err(|e| format!("the log past the checkpoint does not read: {e}"))?;
    resume_from(&cx, &c, tail).map_err(Some)
}

/// Replays the log from checkpoint `c` (whose end is `tail`'s walk start) into the index.
fn resume_from(
    cx: &ResumeCtx<'_>,
    c: &Checkpoint,
    tail: Tail,
) -> std::result::Result<Resumed, String> {
    let table = Table::new(cx.index.words());
    let mut r = Resumer {
        cx,
        table,
        seed: crc_seed(cx.header.store_id),
        counts: Counts { records: c.records, live_bytes: c.live_bytes },
        used: c.used,
        live: c.live,
    };
    // Redo: the writes that finished after the checkpoint (at most the one in flight).
    let mut replayed = 0;
    // Every record below `tail.end` decoded in `valid_end`, so the walk reaches it.
    for (p, decoded) in Log::whole(cx.log).walk(c.end, tail.end) {
        let (rec, rest) = decoded.map_err(|_| "a record past the checkpoint does not read")?;
        if rec.kind != Kind::Commit {
            r.redo(p, &rec, rest)?;
        }
        replayed += 1;
    }
    // Undo: a batch that never got its commit may have pointed slots at its records.
    if let Some((start, CorruptKind::UnfinishedBatch { .. })) = &tail.cut {
        let start = *start;
        let whole = |(rec, rest): &(Record, &[u8])| rec.batch && rec.verify(r.seed, rest).is_ok();
        let unfinished: Vec<u64> = Log::whole(cx.log)
            .walk(start, u64::MAX)
            .map_while(|(p, decoded)| decoded.ok().filter(whole).map(|_| p))
            .collect();
        for &p in unfinished.iter().rev() {
            r.undo(p)?;
        }
    }
    let last =
        if tail.last == c.last { (c.last, c.last_crc) } else { last_record(cx.log, tail.last) };
    let garbage_end = match tail.cut {
        Some(_) => garbage_end(cx.log, tail.end),
        None => tail.end,
    };
    let report = RecoveryReport {
        resumed_from: Some(c.end),
        records_replayed: replayed,
        log_end: tail.end,
        cut: tail.cut,
        ..RecoveryReport::default()
    };
    Ok(Resumed { report, counts: r.counts, used: r.used, live: r.live, last, garbage_end })
}

/// Whether checkpoint `c` can describe this log: its end lies between the committed length
/// and the file's end, and the record it names as the last before its end is there, with
/// its checksum (files copied or rewritten in place since are not taken for the writer's).
fn check_checkpoint(cx: &ResumeCtx<'_>, c: &Checkpoint) -> std::result::Result<(), String> {
    let fits = c.end >= cx.header.committed
        && c.end <= cx.log.len() as u64
        && c.end.is_multiple_of(RECORD_ALIGN);
    if !fits {
        return Err(format!(
            "the writer's checkpoint (log end {}) does not fit the data file (committed {}, \
             {} bytes)",
            c.end,
            cx.header.committed,
            cx.log.len()
        ));
    }
    let last_ok = match c.last {
        UNKNOWN_LAST => true,
        0 => c.end == DATA_START,
        last => cx.log.get(last as usize..c.end as usize).is_some_and(|rest| {
            Record::decode(rest).is_ok_and(|rec| {
                rec.total_len() == c.end - last && u64::from(rec.crc) == c.last_crc
            })
        }),
    };
    if !last_ok {
        return Err("the data file does not hold the writer's last checkpointed record".into());
    }
    Ok(())
}

/// Applies the records past a checkpoint to the index it describes, and its counts.
struct Resumer<'a> {
    cx: &'a ResumeCtx<'a>,
    table: Table<'a>,
    seed: u32,
    counts: Counts,
    used: u64,
    live: u64,
}

impl<'a> Resumer<'a> {
    /// The record at `p`, if one decodes there.
    fn record(&self, p: u64) -> Option<(Record, &'a [u8])> {
        let log: &'a [u8] = self.cx.log;
        let rest = log.get(p as usize..).filter(|_| p >= DATA_START)?;
        Record::decode(rest).ok().map(|rec| (rec, rest))
    }

    /// The slot `key` has or would take.
    fn locate(&self, key: &[u8]) -> std::result::Result<(u64, u64), String> {
        let hash = crate::format::key_hash(key, self.cx.header.store_id);
        let log = self.cx.log;
        let found = self.table.locate(hash, |slot, o| {
            let rest = log.get(o as usize..).filter(|_| o >= DATA_START);
            key_at(rest, slot, o, key, self.cx.index_path)
        });
        match found.map_err(|e| e.to_string())? {
            Slot::Occupied { i, .. } | Slot::Vacant { i } => Ok((hash, i)),
            Slot::Full => Err("the index is full".into()),
        }
    }

    /// Points the key's slot at the record at `p` (whether or not the dead writer did),
    /// and counts it as the writer (and a rebuild) does. What the key was before comes
    /// from the record's `prev`, which the writer took from the slot: the slot itself may
    /// already name this record.
    fn redo(&mut self, p: u64, rec: &Record, rest: &[u8]) -> std::result::Result<(), String> {
        let key = rec.key(rest);
        let (hash, slot) = self.locate(key)?;
        let (change, old_len) = match rec.prev {
            0 => (Change { slot, was_vacant: true, was_live: false, prev: 0 }, 0),
            prev => {
                let (old, _) = self
                    .record(prev)
                    .filter(|(r, b)| prev < p && r.kind != Kind::Commit && r.key(b) == key)
                    .ok_or_else(|| format!("the record at {p} names no earlier version"))?;
                let was_live = old.kind == Kind::Put;
                (Change { slot, was_vacant: false, was_live, prev }, old.total_len())
            }
        };
        self.counts.add(rec.kind, rec.total_len(), &change, old_len);
        if rec.kind == Kind::Delete && change.was_vacant {
            return Ok(()); // a tombstone for a key never seen (as a rebuild does)
        }
        self.table.set(slot, hash, index::word_for(p, rec.kind == Kind::Delete));
        self.used = self.used.saturating_add(u64::from(change.was_vacant));
        self.live = change.live_after(rec.kind, self.live);
        Ok(())
    }

    /// Points the key's slot back at what the record at `p` (of a batch that never got
    /// its commit) replaced, if the slot names it: its `prev`, or nothing (a vacated
    /// slot, counted as used) for a key the batch brought. Applied newest first, so a key
    /// the batch wrote twice ends at its version before the batch.
    fn undo(&mut self, p: u64) -> std::result::Result<(), String> {
        let Some((rec, rest)) = self.record(p) else { return Ok(()) };
        let (hash, slot) = self.locate(rec.key(rest))?;
        if rec.prev == 0 {
            // Whether or not the dead writer took a slot for it: counted once, either way.
            self.used = self.used.saturating_add(1);
        }
        let Some((_, word)) = self.table.slot_at(slot) else { return Ok(()) };
        if word & !DELETED != p {
            return Ok(()); // the slot never named this record
        }
        let back = match rec.prev {
            0 => VACATED,
            prev => {
                let kind = self.record(prev).map(|(r, _)| r.kind);
                let kind = kind.ok_or("a batch record names no earlier version")?;
                index::word_for(prev, kind == Kind::Delete)
            }
        };
        self.table.set(slot, hash, back);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{HEADER_LEN, HEADER_SLOTS};

    fn log_with(records: &[(&[u8], &[u8])], committed_after: usize) -> (Vec<u8>, LogHeader) {
        let mut log = vec![0u8; DATA_START as usize];
        let mut committed = DATA_START;
        for (n, (k, v)) in records.iter().enumerate() {
            let len = Record::len_for(k.len(), v.len()) as usize;
            let at = log.len();
            log.resize(at + len, 0);
            Record::encode_into(crc_seed(9), (Kind::Put, false), 0, k, v, &mut log[at..]);
            if n < committed_after {
                committed = log.len() as u64;
            }
        }
        log.resize(log.len() + 4096, 0);
        let h = LogHeader { store_id: 9, seq: 1, committed };
        let mut slot = [0; HEADER_LEN];
        h.encode_into(&mut slot);
        log[..HEADER_LEN].copy_from_slice(&slot);
        (log, h)
    }

    struct Count(u64);
    impl Replay for Count {
        fn apply(&mut self, _: u64, _: Kind, _: &[u8], _: Log<'_>) -> Result<()> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn header_choice_survives_one_damaged_slot() {
        let (mut log, h) = log_with(&[], 0);
        assert_eq!(read_header(&log, Path::new("d")).expect("valid"), h);
        log[20] ^= 1; // slot 0 damaged, slot 1 never written
        assert!(matches!(
            read_header(&log, Path::new("d")),
            Err(Error::Corrupt { kind: CorruptKind::NoValidHeader, .. })
        ));
        let mut newer = [0; HEADER_LEN];
        LogHeader { seq: 2, ..h }.encode_into(&mut newer);
        log[HEADER_SLOTS[1] as usize..][..HEADER_LEN].copy_from_slice(&newer);
        assert_eq!(read_header(&log, Path::new("d")).expect("slot 1").seq, 2);
    }

    #[test]
    fn torn_tail_is_cut_but_damage_below_committed_is_an_error() {
        let recs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")];
        let (mut log, h) = log_with(&recs, 1);
        let second = DATA_START as usize + Record::len_for(1, 1) as usize;
        log[second + 32] ^= 0xff; // damage the second record (past committed)
        let mut n = Count(0);
        let (rep, _) =
            scan(Log::whole(&log), &h, Path::new("d"), &mut n).expect("a torn tail is recovered");
        assert_eq!(n.0, 1);
        assert_eq!(rep.log_end, second as u64);
        assert!(
            matches!(rep.cut, Some((o, CorruptKind::ChecksumMismatch { .. })) if o == second as u64)
        );

        let (mut log, h) = log_with(&recs, 3);
        log[second + 32] ^= 0xff; // the same damage below the committed length
        let err =
            scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect_err("corruption");
        assert!(matches!(err, Error::Corrupt { offset, .. } if offset == second as u64));
    }

    #[test]
    fn a_zeroed_record_with_data_after_it_is_reported_as_a_gap() {
        let recs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")];
        let (mut log, h) = log_with(&recs, 1);
        let second = DATA_START as usize + Record::len_for(1, 1) as usize;
        log[second..second + 32].fill(0); // the second record's page never reached disk
        let (rep, _) =
            scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect("recovered");
        let third = second as u64 + 32;
        assert_eq!(rep.cut, Some((second as u64, CorruptKind::ZeroGap { data_at: third })));
        // Without data after it, zeros are simply the end.
        let (log, h) = log_with(&recs[..1], 1);
        assert_eq!(
            scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect("clean").0.cut,
            None
        );
    }

    /// A log of batch records: `n` puts flagged as one batch starting at `DATA_START`,
    /// then (if `commit` is `Some(count)`) a commit record naming that count.
    fn batch_log(n: usize, commit: Option<u64>) -> (Vec<u8>, LogHeader) {
        let mut log = vec![0u8; DATA_START as usize];
        let mut push = |kind, batch, prev, k: &[u8], v: &[u8]| {
            let at = log.len();
            log.resize(at + Record::len_for(k.len(), v.len()) as usize, 0);
            Record::encode_into(crc_seed(9), (kind, batch), prev, k, v, &mut log[at..]);
        };
        for i in 0..n {
            push(Kind::Put, true, 0, &[b'k', i as u8], b"v");
        }
        if let Some(count) = commit {
            push(Kind::Commit, false, DATA_START, b"", &count.to_le_bytes());
        }
        log.resize(log.len() + 4096, 0);
        (log, LogHeader { store_id: 9, seq: 1, committed: DATA_START })
    }

    #[test]
    fn a_batch_counts_only_with_its_commit_record() {
        let one = Record::len_for(2, 1);
        let (log, h) = batch_log(3, Some(3));
        let mut n = Count(0);
        let (rep, _) = scan(Log::whole(&log), &h, Path::new("d"), &mut n).expect("committed batch");
        assert_eq!((n.0, rep.cut), (3, None));
        assert_eq!(rep.log_end, DATA_START + 3 * one + Record::len_for(0, 8));
        assert!(check_log(Log::whole(&log[..rep.log_end as usize]), 9).1.is_empty());

        let (log, h) = batch_log(3, None);
        let mut n = Count(0);
        let (rep, _) =
            scan(Log::whole(&log), &h, Path::new("d"), &mut n).expect("a torn batch is cut");
        assert_eq!(n.0, 0, "records of an unfinished batch were applied");
        assert_eq!(rep.log_end, DATA_START);
        assert_eq!(rep.cut, Some((DATA_START, CorruptKind::UnfinishedBatch { records: 3 })));
        let records = &log[..(DATA_START + 3 * one) as usize];
        let unfinished = (DATA_START, CorruptKind::UnfinishedBatch { records: 3 });
        assert_eq!(check_log(Log::whole(records), 9).1, vec![unfinished]);

        // A commit naming the wrong count is out of place: the batch is cut.
        let (log, h) = batch_log(3, Some(2));
        let (rep, _) = scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect("cut");
        assert_eq!(rep.log_end, DATA_START);
        assert!(matches!(rep.cut, Some((DATA_START, CorruptKind::UnfinishedBatch { .. }))));

        // The same unfinished batch below the committed length is corruption.
        let (log, mut h) = batch_log(3, None);
        h.committed = DATA_START + one;
        let err = scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect_err("corrupt");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_commit_without_a_batch_is_out_of_place() {
        let (log, h) = batch_log(0, Some(0));
        let (rep, _) = scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect("cut");
        assert_eq!((rep.log_end, rep.cut), (DATA_START, Some((DATA_START, CorruptKind::BadBatch))));
        let commit = &log[..(DATA_START + Record::len_for(0, 8)) as usize];
        assert_eq!(
            check_log(Log::whole(commit), 9),
            (0, vec![(DATA_START, CorruptKind::BadBatch)])
        );
    }

    #[test]
    fn a_log_read_from_data_start_reads_as_the_whole_file() {
        let recs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"bb", b"22"), (b"c", b"3")];
        let (mut log, h) = log_with(&recs, 3);
        let end = DATA_START + Record::len_for(1, 1) * 2 + Record::len_for(2, 2);
        let records = Log::records(&log[DATA_START as usize..end as usize]);
        assert_eq!((records.end(), records.from(DATA_START - 8)), (end, None));
        assert_eq!(records.from(end), Some(&[][..]));
        assert_eq!(records.from(end + 8), None);
        let whole = Log::whole(&log[..end as usize]);
        let (rep, _) = scan(records, &h, Path::new("d"), &mut Count(0)).expect("records");
        let (same, _) = scan(whole, &h, Path::new("d"), &mut Count(0)).expect("whole");
        assert_eq!((rep.log_end, rep.records_replayed), (end, 3));
        assert_eq!(rep, same);
        assert_eq!(check_log(records, 9), (3, vec![]));
        // Damage is found at the file's offsets, not the slice's.
        let second = DATA_START + Record::len_for(1, 1);
        log[second as usize + 28] ^= 1;
        let records = Log::records(&log[DATA_START as usize..end as usize]);
        assert!(
            matches!(&check_log(records, 9).1[..], [(o, CorruptKind::ChecksumMismatch { .. })] if *o == second)
        );
    }

    #[test]
    fn log_ending_before_committed_length_is_corruption() {
        let (log, mut h) = log_with(&[(b"a", b"1")], 1);
        h.committed += 64;
        let end = DATA_START + Record::len_for(1, 1);
        let err = scan(Log::whole(&log), &h, Path::new("d"), &mut Count(0)).expect_err("short log");
        assert!(matches!(err, Error::Corrupt { offset, .. } if offset == end), "{err}");
    }

    #[test]
    fn a_damaged_value_in_a_batch_is_one_problem_not_a_misplaced_commit_per_batch() {
        let (mut log, _) = batch_log(3, Some(3));
        let end = DATA_START + 3 * Record::len_for(2, 1) + Record::len_for(0, 8);
        // A second batch of the same shape after the first.
        let second = log[DATA_START as usize..end as usize].to_vec();
        log.truncate(end as usize);
        log.extend_from_slice(&second);
        let second_at = end as usize;
        let one = Record::len_for(2, 1);
        // The commit names its batch's start: rewrite the second one's.
        let commit = second_at + 3 * one as usize;
        let mut rec = vec![0; Record::len_for(0, 8) as usize];
        let batch = (Kind::Commit, false);
        Record::encode_into(crc_seed(9), batch, end, b"", &3u64.to_le_bytes(), &mut rec);
        log[commit..commit + rec.len()].copy_from_slice(&rec);
        assert_eq!(check_log(Log::whole(&log), 9), (6, vec![]));
        let value = DATA_START + one + 24 + 8; // the second record's value
        log[value as usize] ^= 1;
        let (records, problems) = check_log(Log::whole(&log), 9);
        assert_eq!(records, 6);
        assert!(
            matches!(&problems[..], [(p, CorruptKind::ChecksumMismatch { .. })] if *p == DATA_START + one),
            "{problems:?}"
        );
        log[value as usize] ^= 1;
        // A damaged count in the first commit: one problem, and the commit still ends its
        // batch, so the second batch is whole.
        let first_commit = DATA_START + 3 * one;
        log[first_commit as usize + 24] ^= 1;
        let (records, problems) = check_log(Log::whole(&log), 9);
        assert_eq!(records, 6);
        assert!(
            matches!(&problems[..], [(p, CorruptKind::ChecksumMismatch { .. })] if *p == first_commit),
            "{problems:?}"
        );
    }

    #[test]
    fn salvage_finds_records_again_past_damage_and_drops_the_batch_it_broke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, h) = batch_log(3, Some(3));
        let one = Record::len_for(2, 1);
        let commit = DATA_START + 3 * one;
        // Then a put on its own.
        let at = (commit + Record::len_for(0, 8)) as usize;
        Record::encode_into(
            crc_seed(9),
            (Kind::Put, false),
            0,
            b"z",
            b"last",
            &mut log[at..at + 40],
        );
        let mut slot = [0; HEADER_LEN];
        LogHeader { committed: at as u64 + 40, ..h }.encode_into(&mut slot);
        log[..HEADER_LEN].copy_from_slice(&slot);
        // The batch's first record is overwritten: the rest of the batch is found again,
        // but its commit names a start that is gone, so none of it counts.
        log[DATA_START as usize..(DATA_START + one) as usize].fill(0x5a);
        std::fs::write(dir.path().join(DATA_FILE), &log).expect("write");
        let s = salvage(dir.path()).expect("salvage");
        let damage: Vec<_> = s.damage.iter().map(|p| (p.offset, p.kind.clone())).collect();
        assert_eq!(
            damage,
            [(DATA_START, CorruptKind::BadRecord { kind: 0x5a }), (commit, CorruptKind::BadBatch)]
        );
        assert_eq!((s.before, s.after, s.dropped), (0, 1, 2));
        assert_eq!(s.pairs().collect::<Vec<_>>(), [(&b"z"[..], &b"last"[..])]);

        // A file that never was a store.
        std::fs::write(dir.path().join(DATA_FILE), vec![b'x'; 20_000]).expect("write");
        let err = salvage(dir.path()).expect_err("not a store");
        assert!(
            matches!(err, Error::Corrupt { offset: 0, kind: CorruptKind::BadMagic, .. }),
            "{err}"
        );
    }

    #[test]
    fn key_at_refuses_slots_that_do_not_point_at_records() {
        let (log, _) = log_with(&[(b"a", b"1")], 1);
        let at = |o: u64| log.get(o as usize..).filter(|_| o >= DATA_START);
        assert!(key_at(at(DATA_START), 0, DATA_START, b"a", Path::new("i")).expect("record"));
        for bad in [0, 8, DATA_START + 4, DATA_START + 4096, log.len() as u64 - 8, u64::MAX] {
            let err = key_at(at(bad), 3, bad, b"a", Path::new("i")).expect_err("bad slot");
            assert!(
                matches!(err, Error::Corrupt { offset: 4144, .. }),
                "slot {bad} accepted or misreported: {err}"
            );
        }
    }
}
