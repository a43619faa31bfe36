//! Guards mapkv against damaged and hostile files: a truncated, garbage-filled or tampered
//! data or index file is refused with an error naming the file and the offset, or recovered
//! with a report of what was cut or rebuilt; reads never panic and never return a value that
//! was not written for the key.

use std::collections::HashMap;
use std::fs::{self, OpenOptions as FsOpen};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mapkv::{CorruptKind, Error, OpenOptions, Store};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use tempfile::TempDir;

const DATA_START: u64 = 8192;
const PAGE: u64 = 4096;
/// A record with a 4-byte key and an 8-byte value: 24 header + 8 key + 8 value.
const REC: u64 = 40;
/// Size of a new data file (the first growth step).
const FIRST_DATA_LEN: u64 = 1 << 20;

// ---- helpers ----------------------------------------------------------------------------

fn fresh() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    (dir, path)
}

fn key(i: u32) -> [u8; 4] {
    i.to_le_bytes()
}

/// Distinct for every `i`; byte 4 is never 1 or 2, so no value reads as a record header.
fn val(i: u32) -> [u8; 8] {
    let mut v = (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    v[4] = 0xC3;
    v
}

/// Offset of the record of key `i` in a store filled by `fill` (keys in order, no deletes).
fn rec(i: u32) -> u64 {
    DATA_START + u64::from(i) * REC
}

fn fill(store: &Store, keys: std::ops::Range<u32>) {
    for i in keys {
        store.put(key(i), val(i)).expect("put");
    }
}

/// A cleanly closed store holding keys `0..n`.
fn clean_store(n: u32) -> (TempDir, PathBuf) {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    fill(&store, 0..n);
    store.close().expect("clean close");
    (d, path)
}

fn data(path: &Path) -> PathBuf {
    path.join("data.mkv")
}

fn index(path: &Path) -> PathBuf {
    path.join("index.mkv")
}

fn patch(file: &Path, offset: u64, bytes: &[u8]) {
    let f = FsOpen::new().write(true).open(file).expect("open for patching");
    f.write_all_at(bytes, offset).expect("patch");
}

fn read_at(file: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = FsOpen::new().read(true).open(file).expect("open for reading");
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

fn read_u64(file: &Path, offset: u64) -> u64 {
    u64::from_le_bytes(read_at(file, offset, 8).try_into().expect("8 bytes"))
}

fn file_len(file: &Path) -> u64 {
    fs::metadata(file).expect("stat").len()
}

fn truncate(file: &Path, len: u64) {
    FsOpen::new().write(true).open(file).expect("open").set_len(len).expect("set_len");
}

/// Deterministic bytes (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Nonzero garbage whose byte 4 of every 8 (the kind byte, wherever a record header would
/// start) is 0xEE, which no version writes.
fn garbage(n: usize) -> Vec<u8> {
    let mut rng = Rng(0xBAD5EED);
    (0..n).map(|i| if i % 8 == 4 { 0xEE } else { (rng.next() as u8).max(1) }).collect()
}

/// The file, offset and kind of a `Corrupt` error; panics on anything else.
fn corrupt<T>(r: mapkv::Result<T>) -> (PathBuf, u64, CorruptKind) {
    match r {
        Err(Error::Corrupt { file, offset, kind }) => (file, offset, kind),
        Err(e) => panic!("expected Error::Corrupt, got {e:?}"),
        Ok(_) => panic!("expected Error::Corrupt, got Ok"),
    }
}

fn open_with(path: &Path, read_only: bool) -> mapkv::Result<Store> {
    OpenOptions::new().read_only(read_only).create(false).open(path)
}

/// Asserts that keys `keys` all read back their values, through `get` and a `Reader`.
fn assert_values(store: &Store, keys: std::ops::Range<u32>) {
    let reader = store.reader();
    for i in keys {
        assert_eq!(store.get(key(i)).expect("get").as_deref(), Some(&val(i)[..]), "key {i}");
        assert_eq!(reader.get(key(i)).expect("reader get"), Some(&val(i)[..]), "key {i}");
    }
}

fn assert_absent(store: &Store, keys: std::ops::Range<u32>) {
    for i in keys {
        assert!(store.get(key(i)).expect("get").is_none(), "key {i} came back");
    }
}

/// Index slot `i` (0-based) whose offset word is `word`.
fn slot_holding(index: &Path, word: u64) -> u64 {
    let bytes = fs::read(index).expect("read index");
    let slots = (bytes.len() as u64 - PAGE) / 16;
    (0..slots)
        .find(|&i| {
            let at = (PAGE + 16 * i) as usize;
            bytes[at..at + 8] != [0; 8]
                && u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8")) == word
        })
        .unwrap_or_else(|| panic!("no slot holds {word:#x}"))
}

fn slot_offset(slot: u64) -> u64 {
    PAGE + 16 * slot
}

/// Rewrites the index header with `edit` and a recomputed CRC, so only the edit is wrong.
fn edit_index_header(index: &Path, edit: impl FnOnce(&mut [u8])) {
    // The header's CRC covers bytes 0..72 and sits at 72 (DESIGN.md §3).
    let mut h = read_at(index, 0, 80);
    edit(&mut h);
    let crc = crc32fast::hash(&h[..72]);
    h[72..76].copy_from_slice(&crc.to_le_bytes());
    patch(index, 0, &h);
}

/// The `committed` length of the newer valid data file header slot.
fn committed(data: &Path) -> u64 {
    let seq = |slot| read_u64(data, slot + 24);
    let slot = if seq(PAGE) > seq(0) { PAGE } else { 0 };
    read_u64(data, slot + 32)
}

// ---- data file --------------------------------------------------------------------------

#[test]
fn a_zero_length_data_file_is_refused_and_left_alone() {
    let (_d, path) = clean_store(5);
    truncate(&data(&path), 0);
    for read_only in [false, true] {
        let (file, offset, kind) = corrupt(open_with(&path, read_only));
        assert_eq!(file, data(&path));
        assert_eq!((offset, kind), (0, CorruptKind::TooShort { len: 0, min: DATA_START }));
    }
    // Even with create(true), an existing empty data file is not silently replaced by a new
    // store: that would hide the loss of every record.
    let (file, offset, kind) = corrupt(Store::open(&path));
    assert_eq!((file, offset), (data(&path), 0));
    assert_eq!(kind, CorruptKind::TooShort { len: 0, min: DATA_START });
    assert_eq!(file_len(&data(&path)), 0, "a refused open must not write the data file");
}

#[test]
fn a_data_file_shorter_than_its_headers_is_refused_with_its_length() {
    let (_d, path) = clean_store(5);
    let good = fs::read(data(&path)).expect("read");
    for len in [1u64, 63, 64, 4095, 4096, 4160, 8191] {
        fs::write(data(&path), &good[..len as usize]).expect("write");
        for read_only in [false, true] {
            let (file, offset, kind) = corrupt(open_with(&path, read_only));
            assert_eq!(file, data(&path), "len {len}");
            assert_eq!(offset, 0, "len {len}");
            assert_eq!(kind, CorruptKind::TooShort { len, min: DATA_START }, "len {len}");
        }
        assert_eq!(file_len(&data(&path)), len, "a refused open must not extend the file");
    }
}

#[test]
fn a_data_file_cut_below_the_committed_length_is_refused() {
    let (_d, path) = clean_store(20);
    let end = rec(20);
    assert_eq!(committed(&data(&path)), end);
    let good = fs::read(data(&path)).expect("read");
    // Headers intact, but the log they vouch for is (partly) gone: the damage is reported
    // where the file ends.
    for len in [DATA_START, DATA_START + 8, rec(7) + 13, end - 8] {
        fs::write(data(&path), &good[..len as usize]).expect("write");
        for read_only in [false, true] {
            let (file, offset, kind) = corrupt(open_with(&path, read_only));
            assert_eq!((file, offset), (data(&path), len), "len {len}");
            assert_eq!(kind, CorruptKind::LengthPastEnd { end, limit: len }, "len {len}");
        }
    }
    // Cut exactly at the end of the log: nothing is lost; the store works and grows again.
    fs::write(data(&path), &good[..end as usize]).expect("write");
    let store = Store::open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt);
    assert_values(&store, 0..20);
    fill(&store, 20..40);
    assert!(store.verify().expect("verify").is_ok());
    store.close().expect("close");
    let store = Store::open(&path).expect("reopen");
    assert_values(&store, 0..40);
}

#[test]
fn zeros_past_the_log_are_its_clean_end_but_garbage_is_cut_and_zeroed() {
    // Zeros after an unclean shutdown: the clean end, nothing to report.
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    fill(&store, 0..30);
    store.simulate_crash();
    let store = Store::open(&path).expect("recover");
    let r = store.recovery();
    // Resumed from the dead writer's checkpoint (this boot): nothing past it to replay.
    assert_eq!(r.resumed_from, Some(rec(30)), "{r:?}");
    assert_eq!((r.records_replayed, r.log_end, r.cut.clone()), (0, rec(30), None));
    store.simulate_crash();
    mapkv::testing::adopt_page(&path, true).expect("reboot the page");
    let store = Store::open(&path).expect("recover after a restart");
    let r = store.recovery();
    assert!(r.index_rebuilt);
    assert_eq!((r.records_replayed, r.log_end, r.cut.clone()), (30, rec(30), None));
    drop(store);

    // Garbage after an unclean shutdown: cut where it starts, reported, then zeroed, by
    // a store resuming (this boot) and by one rebuilding (after a restart).
    for reboot in [false, true] {
        let (_d, path) = fresh();
        let store = Store::open(&path).expect("create");
        fill(&store, 0..30);
        store.simulate_crash();
        mapkv::testing::adopt_page(&path, reboot).expect("adopt the page");
        let junk = garbage(3 * PAGE as usize);
        patch(&data(&path), rec(30), &junk);
        let store = Store::open(&path).expect("recover");
        let r = store.recovery().clone();
        assert_eq!(r.index_rebuilt, reboot, "{r:?}");
        assert_eq!(r.records_replayed, if reboot { 30 } else { 0 });
        assert_eq!(r.log_end, rec(30));
        assert_eq!(r.cut, Some((rec(30), CorruptKind::BadRecord { kind: 0xEE })));
        assert_values(&store, 0..30);
        assert_eq!(store.len(), 30);
        assert!(store.verify().expect("verify").is_ok());
        assert!(
            read_at(&data(&path), rec(30), junk.len()).iter().all(|&b| b == 0),
            "recovery must zero everything past the cut"
        );
        store.simulate_crash();
        let store = Store::open(&path).expect("recover again");
        assert_eq!(store.recovery().cut, None, "the garbage is gone for good");
        assert_eq!(store.recovery().log_end, rec(30));
        drop(store);
    }
    let junk = garbage(3 * PAGE as usize);

    // A read-only handle cuts the garbage too, but must not write: it stays on disk.
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    fill(&store, 0..30);
    store.simulate_crash();
    patch(&data(&path), rec(30), &junk);
    let ro = open_with(&path, true).expect("read-only recovery");
    assert_eq!(ro.recovery().cut, Some((rec(30), CorruptKind::BadRecord { kind: 0xEE })));
    assert_values(&ro, 0..30);
    drop(ro);
    assert_eq!(read_at(&data(&path), rec(30), junk.len()), junk);
}

#[test]
fn garbage_past_a_cleanly_closed_log_is_ignored_and_never_replayed() {
    let (_d, path) = clean_store(30);
    let junk = garbage(3 * PAGE as usize);
    patch(&data(&path), rec(30), &junk);
    // The index is trusted (garbage is not a record), so open reads headers only.
    let store = Store::open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt, "{:?}", store.recovery());
    assert_values(&store, 0..30);
    // ...but `verify` reports it: past the end the file must hold only zeros (DESIGN.md §2).
    let problems = store.verify().expect("verify").problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].offset, rec(30));
    assert_eq!(problems[0].kind, CorruptKind::NonzeroPastEnd { log_end: rec(30) });
    // A write lands over the start of the garbage; a crash then makes the next open scan,
    // which keeps the new record and cuts at the garbage right after it.
    store.put(key(30), val(30)).expect("put");
    store.simulate_crash();
    let store = Store::open(&path).expect("recover");
    let r = store.recovery().clone();
    // Resumed from the checkpoint after the new record: nothing to replay, and the
    // garbage after it is cut all the same.
    assert_eq!((r.resumed_from, r.records_replayed, r.log_end), (Some(rec(31)), 0, rec(31)));
    assert_eq!(r.cut, Some((rec(31), CorruptKind::BadRecord { kind: 0xEE })));
    assert_values(&store, 0..31);
    drop(store);

    // Forcing a scan of the cleanly closed log: the garbage starts exactly at `committed`,
    // so it is a torn tail, not corruption.
    let (_d, path) = clean_store(30);
    patch(&data(&path), rec(30), &junk);
    fs::remove_file(index(&path)).expect("remove index");
    let store = Store::open(&path).expect("rebuild");
    assert_eq!(store.recovery().cut, Some((rec(30), CorruptKind::BadRecord { kind: 0xEE })));
    assert_values(&store, 0..30);
}

/// Stores keys 0..30 of which 0..10 are committed, 10..20 synced (but not yet named by the
/// header: it lags one sync), 20..30 unsynced; then crashes.
fn crashed_store_with_torn_tail() -> (TempDir, PathBuf) {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    fill(&store, 0..10);
    store.sync().expect("sync");
    fill(&store, 10..20);
    store.sync().expect("sync");
    fill(&store, 20..30);
    store.simulate_crash();
    // A tail torn below what the writer had written is what a power cut leaves: the page
    // is then from another boot, and open rebuilds (a kill -9 resumes, tests/resume.rs).
    mapkv::testing::adopt_page(&path, true).expect("reboot the page");
    assert_eq!(committed(&data(&path)), rec(10));
    (d, path)
}

/// What a damaged length field is reported as. `LengthPastEnd` and `ChecksumMismatch` are
/// compared by kind only: their numbers are checked by
/// `length_past_end_in_a_record_reports_file_positions`.
#[derive(Debug, Clone)]
enum Expect {
    Exactly(CorruptKind),
    LengthPastEnd,
    ChecksumMismatch,
}

impl Expect {
    fn check(&self, got: &CorruptKind, what: &str) {
        match (self, got) {
            (Expect::Exactly(k), got) => assert_eq!(got, k, "{what}"),
            (Expect::LengthPastEnd, CorruptKind::LengthPastEnd { .. }) => {}
            (Expect::ChecksumMismatch, CorruptKind::ChecksumMismatch { .. }) => {}
            _ => panic!("{what}: expected {self:?}, got {got:?}"),
        }
    }
}

/// Absurd values for the key length (+8) and value length (+12) of a record header.
fn absurd_lengths() -> [(u64, u32, Expect); 5] {
    let key_len =
        |v: u32| Expect::Exactly(CorruptKind::BadField { field: "key length", value: v.into() });
    [
        (8, u32::MAX, key_len(u32::MAX)),
        (8, 65_537, key_len(65_537)),
        // The largest legal key length: the record fits in the file, its checksum does not.
        (8, 65_536, Expect::ChecksumMismatch),
        (12, u32::MAX, Expect::LengthPastEnd),
        (12, 0x8000_0000, Expect::LengthPastEnd),
    ]
}

#[test]
fn absurd_lengths_in_the_torn_tail_are_cut_without_allocating() {
    for (field, value, expected) in absurd_lengths() {
        let (_d, path) = crashed_store_with_torn_tail();
        patch(&data(&path), rec(15) + field, &value.to_le_bytes());
        let what = format!("field +{field} = {value:#x}");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let r = store.recovery().clone();
        assert!(r.index_rebuilt, "{what}");
        assert_eq!((r.records_replayed, r.log_end), (15, rec(15)), "{what}");
        let (at, kind) = r.cut.unwrap_or_else(|| panic!("{what}: no cut reported"));
        assert_eq!(at, rec(15), "{what}");
        expected.check(&kind, &what);
        assert_values(&store, 0..15);
        assert_absent(&store, 15..30);
        assert_eq!(store.len(), 15);
        assert!(store.verify().expect("verify").is_ok(), "{what}");
        assert!(
            read_at(&data(&path), rec(15), (15 * REC) as usize).iter().all(|&b| b == 0),
            "{what}: the tail past the cut is zeroed"
        );
        store.simulate_crash();
        let store = Store::open(&path).expect("recover again");
        assert_eq!(store.recovery().cut, None, "{what}");
        // Same boot now: resumed from the checkpoint recovery wrote, nothing to replay.
        assert_eq!(store.recovery().resumed_from, Some(rec(15)), "{what}");
        assert_eq!(store.recovery().records_replayed, 0, "{what}");
    }
}

#[test]
fn absurd_lengths_below_the_committed_length_are_errors_naming_the_record() {
    for (field, value, expected) in absurd_lengths() {
        let what = format!("field +{field} = {value:#x}");
        let (_d, path) = clean_store(20);
        patch(&data(&path), rec(7) + field, &value.to_le_bytes());

        // Clean open: no scan. The slot of key 7 no longer names a decodable record.
        let store = Store::open(&path).expect("clean open");
        assert!(!store.recovery().index_rebuilt, "{what}");
        let slot = slot_holding(&index(&path), rec(7));
        let bad_slot =
            (index(&path), slot_offset(slot), CorruptKind::BadIndexSlot { target: rec(7) });
        assert_eq!(corrupt(store.get(key(7))), bad_slot, "{what}");
        assert_eq!(corrupt(store.reader().get(key(7))), bad_slot, "{what}");
        assert_values(&store, 0..7);
        assert_values(&store, 8..20);
        let report = store.verify().expect("verify runs");
        assert_eq!(report.problems.len(), 1, "{what}: {:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!((&p.file, p.offset), (&data(&path), rec(7)), "{what}");
        // `verify` reads only up to the end of the log, where a 64 KiB key does not fit;
        // recovery reads the whole file, where it does and then fails its checksum.
        let in_log = match expected {
            Expect::ChecksumMismatch => Expect::LengthPastEnd,
            ref e => e.clone(),
        };
        in_log.check(&p.kind, &what);
        drop(store);

        // A scan (the index deleted, as the error message advises) finds the damage below
        // the committed length: an error naming the data file and the record, for writers
        // and readers alike.
        fs::remove_file(index(&path)).expect("remove index");
        for read_only in [false, true] {
            let (file, offset, kind) = corrupt(open_with(&path, read_only));
            assert_eq!((file, offset), (data(&path), rec(7)), "{what}");
            expected.check(&kind, &what);
        }
    }
}

/// `LengthPastEnd { end, limit }` is documented as "where the structure would end" and
/// "where the valid bytes end", and displayed as "length reaches byte {end}, past the end
/// at {limit}" next to "damaged at byte {offset}". For the data file header both are file
/// positions; for a record they are lengths counted from the record's start, so the message
/// names bytes that have nothing to do with the damage, and `verify` and recovery give
/// different `limit`s for the same record.
#[test]
fn length_past_end_in_a_record_reports_file_positions() {
    let (_d, path) = clean_store(20);
    patch(&data(&path), rec(7) + 12, &u32::MAX.to_le_bytes());
    let record_end = rec(7) + 32 + (1 << 32); // header + key + value, rounded to 8
    let store = Store::open(&path).expect("clean open");
    let report = store.verify().expect("verify runs");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(
        p.kind,
        CorruptKind::LengthPastEnd { end: record_end, limit: rec(20) },
        "verify: {p}"
    );
    drop(store);
    fs::remove_file(index(&path)).expect("remove index");
    let err = Store::open(&path).expect_err("damage below the committed length");
    let Error::Corrupt { kind, .. } = &err else { panic!("{err}") };
    assert_eq!(
        *kind,
        CorruptKind::LengthPastEnd { end: record_end, limit: FIRST_DATA_LEN },
        "recovery: {err}"
    );
}

/// 64-byte records (4-byte key, 32-byte value): exactly 64 to a page.
fn put64(store: &Store, keys: std::ops::Range<u32>) {
    for i in keys {
        store.put(key(i), [i as u8; 32]).expect("put");
    }
}

#[test]
fn a_zeroed_page_is_a_gap_in_the_torn_tail_and_corruption_below_committed() {
    let rec64 = |i: u64| DATA_START + 64 * i;
    let page = rec64(64); // the third page of the file: records 64..128
    assert_eq!(page, 3 * PAGE);

    // Unsynced (so past `committed`): a page that never reached the disk, with data after it.
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    put64(&store, 0..200);
    store.simulate_crash();
    mapkv::testing::adopt_page(&path, true).expect("reboot the page"); // a power cut
    patch(&data(&path), page, &[0; PAGE as usize]);
    // The first nonzero byte after the gap: the next record's CRC, whose first byte is 0
    // for one store in 256 (the seed is the random store id).
    let next = read_at(&data(&path), page + PAGE, 8);
    let data_at = page + PAGE + next.iter().position(|&b| b != 0).expect("data") as u64;
    let store = Store::open(&path).expect("recover");
    let r = store.recovery().clone();
    assert_eq!((r.records_replayed, r.log_end), (64, page));
    assert_eq!(r.cut, Some((page, CorruptKind::ZeroGap { data_at })));
    assert_eq!(store.len(), 64);
    for i in 0..200u32 {
        let got = store.get(key(i)).expect("get");
        assert_eq!(got.as_deref(), (i < 64).then_some(&[i as u8; 32][..]), "key {i}");
    }
    assert!(read_at(&data(&path), page, 200 * 64).iter().all(|&b| b == 0), "tail zeroed");
    drop(store);

    // The same page of a cleanly closed store: corruption, wherever it is looked at.
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    put64(&store, 0..200);
    store.close().expect("close");
    patch(&data(&path), page, &[0; PAGE as usize]);
    let store = Store::open(&path).expect("clean open");
    let slot = slot_holding(&index(&path), page);
    let expected = (index(&path), slot_offset(slot), CorruptKind::BadIndexSlot { target: page });
    assert_eq!(corrupt(store.get(key(64))), expected);
    assert_eq!(store.get(key(128)).expect("get").as_deref(), Some(&[128u8; 32][..]));
    let report = store.verify().expect("verify runs");
    let p = &report.problems[0];
    assert_eq!(
        (&p.file, p.offset, &p.kind),
        (&data(&path), page, &CorruptKind::BadRecord { kind: 0 })
    );
    drop(store);
    fs::remove_file(index(&path)).expect("remove index");
    let got = corrupt(Store::open(&path));
    assert_eq!(got, (data(&path), page, CorruptKind::BadRecord { kind: 0 }));
}

/// A record header damaged below the committed length, in a cleanly closed store: `get`
/// blames the index ("index.mkv is damaged at byte …: index slot points at …, which is not
/// a record; either the index or data.mkv is damaged ..."). The index is
/// intact; following the advice turns a store whose other keys all read fine into one that
/// no longer opens at all (the scan then finds the real damage, in data.mkv).
#[test]
fn a_damaged_record_is_not_blamed_on_the_index() {
    let (_d, path) = clean_store(20);
    patch(&data(&path), rec(7) + 12, &u32::MAX.to_le_bytes());
    let store = Store::open(&path).expect("clean open");
    assert_values(&store, 8..20);
    let err = store.get(key(7)).expect_err("damaged record");
    let msg = err.to_string();
    let Error::Corrupt { file, .. } = &err else { panic!("{err:?}") };
    assert!(
        *file == data(&path) || msg.contains("data.mkv"),
        "the damage is in data.mkv at byte {}, but the error says: {msg}",
        rec(7)
    );
}

// ---- index file -------------------------------------------------------------------------

#[test]
fn an_index_truncated_to_a_few_bytes_is_rebuilt() {
    for len in [0u64, 3, 8, 64, 4095] {
        let (_d, path) = clean_store(300);
        truncate(&index(&path), len);
        // A read-only handle rebuilds in memory and leaves the file alone.
        let ro = open_with(&path, true).expect("read-only rebuild");
        let r = ro.recovery();
        assert!(r.index_rebuilt, "len {len}");
        assert_eq!(
            r.reason.as_deref(),
            Some("the index file is missing or truncated"),
            "len {len}"
        );
        assert_eq!((r.records_replayed, r.log_end, r.cut.clone()), (300, rec(300), None));
        assert_eq!(ro.len(), 300);
        assert_values(&ro, 0..300);
        drop(ro);
        assert_eq!(file_len(&index(&path)), len, "a read-only handle wrote the index");

        let store = Store::open(&path).expect("rebuild");
        assert!(store.recovery().index_rebuilt);
        assert_values(&store, 0..300);
        assert!(store.verify().expect("verify").is_ok());
        drop(store);
        let store = Store::open(&path).expect("reopen");
        assert!(!store.recovery().index_rebuilt, "the rebuilt index is trusted next time");
        assert_values(&store, 0..300);
    }
}

#[test]
fn an_index_truncated_mid_slots_is_rebuilt() {
    let (_d, path) = clean_store(300);
    let capacity = read_u64(&index(&path), 24);
    let full = fs::read(index(&path)).expect("read index");
    assert_eq!(full.len() as u64, PAGE + 16 * capacity);
    let capacity_reason = format!("index header damaged: impossible index capacity {capacity}");
    let cases = [
        (PAGE, capacity_reason.as_str()),
        (PAGE + 16 * 100, &capacity_reason),
        (PAGE + 16 * 100 + 8, &capacity_reason),
        (full.len() as u64 - 16, &capacity_reason),
        (PAGE + 16 * 100 + 5, "the index file is missing or truncated"),
        // Longer than its capacity says, too.
        (full.len() as u64 + 16, &capacity_reason),
        (full.len() as u64 + PAGE, &capacity_reason),
    ];
    for (len, reason) in cases {
        let mut bytes = full.clone();
        bytes.resize(len as usize, 0);
        fs::write(index(&path), &bytes).expect("write");
        for read_only in [true, false] {
            let store = open_with(&path, read_only).expect("rebuild");
            let r = store.recovery();
            assert!(r.index_rebuilt, "len {len}");
            assert_eq!(r.reason.as_deref(), Some(reason), "len {len}");
            assert_eq!(r.records_replayed, 300);
            assert_eq!(store.len(), 300);
            assert_values(&store, 0..300);
        }
    }
}

#[test]
fn an_index_claiming_more_or_less_log_than_committed_is_rebuilt() {
    let (_d, path) = clean_store(50);
    let end = rec(50);
    let pristine = fs::read(index(&path)).expect("read index");
    for claim in [
        end + 8,
        end + PAGE,
        FIRST_DATA_LEN,
        FIRST_DATA_LEN + PAGE,
        1 << 40,
        u64::MAX,
        end - REC,
        DATA_START,
    ] {
        fs::write(index(&path), &pristine).expect("restore index");
        edit_index_header(&index(&path), |h| h[32..40].copy_from_slice(&claim.to_le_bytes()));
        for read_only in [true, false] {
            let store = open_with(&path, read_only).expect("rebuild");
            let r = store.recovery();
            assert!(r.index_rebuilt, "claim {claim}");
            let expected =
                format!("index covers the log to {claim}, but the log is committed to {end}");
            assert_eq!(r.reason.as_deref(), Some(expected.as_str()));
            assert_eq!((r.records_replayed, r.log_end, r.cut.clone()), (50, end, None));
            assert_values(&store, 0..50);
        }
    }

    // The same edit without fixing the CRC: the header itself is refused.
    fs::write(index(&path), &pristine).expect("restore index");
    patch(&index(&path), 32, &(end + 8).to_le_bytes());
    let store = Store::open(&path).expect("rebuild");
    let reason = store.recovery().reason.clone().unwrap_or_default();
    assert!(reason.starts_with("index header damaged: checksum mismatch"), "{reason}");
    assert_values(&store, 0..50);
    drop(store);

    // An index left over from an earlier clean close of the same store (restored from an
    // older backup, say) is consistent in itself but stale.
    let old = fs::read(index(&path)).expect("read index");
    let store = Store::open(&path).expect("open");
    fill(&store, 50..60);
    assert!(store.delete(key(3)).expect("delete"));
    store.close().expect("close");
    fs::write(index(&path), &old).expect("put back the old index");
    let store = Store::open(&path).expect("rebuild");
    let new_end = rec(60) + 32; // plus the tombstone: 24 + 8
    let expected = format!("index covers the log to {end}, but the log is committed to {new_end}");
    assert_eq!(store.recovery().reason.as_deref(), Some(expected.as_str()));
    assert_values(&store, 0..3);
    assert_values(&store, 4..60);
    assert_absent(&store, 3..4);
    assert_eq!(store.len(), 59);
}

/// A cleanly closed store of keys 0..50 whose index header claims 0 live keys (CRC fixed,
/// every other field intact): a consistent-looking header with a wrong count.
fn store_with_forged_live_count() -> (TempDir, PathBuf) {
    let (d, path) = clean_store(50);
    assert_eq!(read_u64(&index(&path), 40), 50);
    edit_index_header(&index(&path), |h| h[40..48].copy_from_slice(&0u64.to_le_bytes()));
    (d, path)
}

/// The live count of a clean index header is trusted as is, so a delete subtracts from 0
/// and `len()` wraps (`fetch_sub` on an `AtomicU64`). Index growth heals the counts from
/// the slots ("counts healed at index growth"), but nothing guards the decrement.
#[test]
fn a_forged_live_count_cannot_wrap_len() {
    let (_d, path) = store_with_forged_live_count();
    let store = Store::open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt);
    assert!(store.delete(key(3)).expect("delete"));
    assert!(store.len() <= 50, "len() after one delete of 50 keys: {}", store.len());
}

/// `verify` sizes its in-memory index with `index::capacity_for(len() + 1)`, whose
/// `next_power_of_two` overflows (a panic in debug builds) once `len()` has wrapped.
#[test]
fn verify_survives_a_forged_live_count() {
    let (_d, path) = store_with_forged_live_count();
    let store = Store::open(&path).expect("open");
    assert!(store.delete(key(3)).expect("delete"));
    let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.verify()));
    let report = verified.expect("verify panicked").expect("verify runs");
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p.kind, CorruptKind::BadField { field: "live key count", .. })),
        "{:?}",
        report.problems
    );
}

/// A cleanly closed store with keys 0..50 and key 40 deleted, where the slot of key 7 (or
/// of the deleted key 40, for `of_deleted_key`) is rewritten to `word`. Returns the slot number.
fn tampered_slot(word: u64, of_deleted_key: bool) -> (TempDir, PathBuf, u64) {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    fill(&store, 0..50);
    assert!(store.delete(key(40)).expect("delete"));
    store.close().expect("close");
    let old = if of_deleted_key { rec(50) | 1 << 63 } else { rec(7) };
    let slot = slot_holding(&index(&path), old);
    patch(&index(&path), slot_offset(slot) + 8, &word.to_le_bytes());
    (d, path, slot)
}

/// Opens the tampered store both ways and checks that key 7 gives exactly the slot error,
/// every other key its value, `verify` a problem, and a write of key 7 the same error.
fn check_tampered_slot(path: &Path, slot: u64, target: u64, what: &str) {
    let expected = (index(path), slot_offset(slot), CorruptKind::BadIndexSlot { target });
    for verify in [false, true] {
        let store = OpenOptions::new().verify_checksums(verify).open(path).expect("open");
        assert!(!store.recovery().index_rebuilt, "{what}: a clean index is trusted");
        assert_eq!(corrupt(store.get(key(7))), expected, "{what}");
        assert_eq!(corrupt(store.reader().get(key(7))), expected, "{what}");
        assert_values(&store, 0..7);
        assert_values(&store, 8..40);
        assert_values(&store, 41..50);
        assert_absent(&store, 40..41);
        let report = store.verify().expect("verify runs");
        assert!(
            report.problems.iter().any(|p| p.file == index(path)
                && p.kind == CorruptKind::IndexDisagrees { record: target }),
            "{what}: verify must flag the slot: {:?}",
            report.problems
        );
        // The writer refuses to build on the bad slot, and changes nothing.
        assert_eq!(corrupt(store.put(key(7), b"new")), expected, "{what}");
        assert_eq!(corrupt(store.delete(key(7))), expected, "{what}");
        assert_eq!(store.len(), 49);
        drop(store);
    }
    // The error's advice works: rebuilt from the log, the store is whole again.
    let store = OpenOptions::new().rebuild_index(true).open(path).expect("rebuild");
    assert!(store.recovery().index_rebuilt);
    assert_values(&store, 0..40);
    assert_values(&store, 41..50);
    assert!(store.verify().expect("verify").is_ok(), "{what}");
}

#[test]
fn an_index_slot_pointing_outside_the_log_is_reported_not_followed() {
    let end = rec(50) + 32; // 50 records and one tombstone
    let targets = [
        ("the end of the log", end),
        ("past the end of the log", end + 8),
        ("the end of the file", FIRST_DATA_LEN),
        ("past the end of the file", FIRST_DATA_LEN + PAGE),
        ("far past the end of the file", 1 << 40),
        ("the largest offset", (1 << 63) - 8),
        ("the first header", 0),
        ("the second header", PAGE),
        ("just before the log", DATA_START - 8),
    ];
    for (what, target) in targets {
        let (_d, path, slot) = tampered_slot(target, false);
        check_tampered_slot(&path, slot, target, what);
    }
}

#[test]
fn an_index_slot_pointing_into_a_record_is_reported_not_followed() {
    let targets = [
        ("its own record + 8 (lengths)", rec(7) + 8),
        ("its own record + 16 (prev)", rec(7) + 16),
        ("its own record + 24 (key)", rec(7) + 24),
        ("its own record + 32 (value)", rec(7) + 32),
        ("another record + 8", rec(20) + 8),
        ("another record + 16", rec(20) + 16),
    ];
    for (what, target) in targets {
        let (_d, path, slot) = tampered_slot(target, false);
        check_tampered_slot(&path, slot, target, what);
    }
}

#[test]
fn an_unaligned_index_slot_is_reported_not_followed() {
    for delta in [1, 2, 4, 7, REC - 1] {
        let target = rec(7) + delta;
        let (_d, path, slot) = tampered_slot(target, false);
        check_tampered_slot(&path, slot, target, &format!("record + {delta}"));
    }
    // One byte before the key's own record must not be rounded up to it.
    let (_d, path, slot) = tampered_slot(rec(7) - 1, false);
    check_tampered_slot(&path, slot, rec(7) - 1, "record - 1");
}

#[test]
fn a_deleted_slot_whose_flag_is_cleared_is_reported_not_served() {
    // Key 40's slot points at its tombstone with the DELETED bit; clear the bit.
    let tombstone = rec(50);
    let (_d, path, slot) = tampered_slot(tombstone, true);
    let expected =
        (index(&path), slot_offset(slot), CorruptKind::BadIndexSlot { target: tombstone });
    let store = Store::open(&path).expect("open");
    assert!(!store.recovery().index_rebuilt);
    assert_eq!(corrupt(store.get(key(40))), expected);
    assert_eq!(corrupt(store.reader().get(key(40))), expected);
    assert_values(&store, 0..40);
    let report = store.verify().expect("verify runs");
    assert!(!report.is_ok(), "verify must flag the slot");
}

#[test]
fn a_slot_pointing_at_a_forged_record_inside_a_value_fails_its_checksum() {
    // A value that holds a well-formed record header for key 7 with a bogus CRC: a slot
    // pointed at it decodes, has the right key, and only the checksum tells it apart.
    let (_d, path) = fresh();
    let mut forged = vec![0u8; 24 + 8 + 8];
    forged[4] = 1; // put
    forged[8..12].copy_from_slice(&4u32.to_le_bytes());
    forged[12..16].copy_from_slice(&8u32.to_le_bytes());
    forged[24..28].copy_from_slice(&key(7));
    forged[32..40].copy_from_slice(b"FORGED!!");
    let store = Store::open(&path).expect("create");
    fill(&store, 0..50);
    store.put(b"carrier", &forged).expect("put");
    store.close().expect("close");
    // "carrier" (7 bytes, padded to 8) at rec(50): its value starts at rec(50) + 32.
    let fake = rec(50) + 32;
    assert_eq!(read_at(&data(&path), fake, forged.len()), forged);
    let slot = slot_holding(&index(&path), rec(7));
    patch(&index(&path), slot_offset(slot) + 8, &fake.to_le_bytes());

    let store = OpenOptions::new().verify_checksums(true).open(&path).expect("open");
    let (file, offset, kind) = corrupt(store.get(key(7)));
    assert_eq!((file, offset), (data(&path), fake));
    assert!(matches!(kind, CorruptKind::ChecksumMismatch { .. }), "{kind:?}");
    assert!(store.reader().get(key(7)).is_err());
    assert!(!store.verify().expect("verify runs").is_ok());
    // (Without verify_checksums the forged value is believed: DESIGN.md §7 documents this.)
}

// ---- random damage ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Data,
    Index,
}

/// Where in a file a damage lands (its exact position is chosen modulo the region).
#[derive(Clone, Copy, Debug)]
enum Region {
    Anywhere,
    /// The data file's two header pages, or the index header.
    Header,
    /// The data file's log, or the index's occupied slots.
    Live,
}

/// A hostile value for a forged field, resolved against the store when applied.
#[derive(Clone, Copy, Debug)]
enum Forged {
    Zero,
    LogEnd(i8),
    FileLen(i8),
    /// An 8-aligned position below the end of the log.
    InLog(u64),
    Raw(u64),
    Max,
}

#[derive(Clone, Debug)]
enum Damage {
    /// XOR `xor` (never 0) into `len` consecutive bytes.
    Flip { file: Target, region: Region, at: u64, len: u8, xor: u8 },
    /// Cut the file to a length (possibly 0).
    Truncate { file: Target, region: Region, at: u64 },
    /// Zero one 4096-byte page.
    ZeroPage { file: Target, region: Region, at: u64 },
    /// Rewrite one data file header slot with a valid CRC: `committed` and `seq` chosen.
    ForgeLogHeader { slot: u8, seq: u64, committed: Forged },
    /// Rewrite one index header field (at byte `field`) with a valid CRC.
    ForgeIndexHeader { field: u8, value: Forged },
    /// Rewrite the offset word of an occupied slot (keeping or setting the DELETED bit).
    ForgeSlot { which: u64, value: Forged, deleted: bool },
}

#[derive(Clone, Copy, Debug)]
enum Shutdown {
    Clean,
    Crash,
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    ops: usize,
    shutdown: Shutdown,
    verify: bool,
    read_only: bool,
    damage: Vec<Damage>,
}

/// Index header fields the property forges: store id, capacity, clean length, live count,
/// used count.
const FORGED_INDEX_FIELDS: &[u8] = &[16, 24, 32, 32, 40, 48, 48];

fn pick<T: Copy>(g: &mut Gen, xs: &[T]) -> T {
    *g.choose(xs).expect("nonempty")
}

impl Arbitrary for Forged {
    fn arbitrary(g: &mut Gen) -> Self {
        let small = pick(g, &[-16i8, -8, -1, 0, 1, 8, 16, 64]);
        match u8::arbitrary(g) % 8 {
            0 => Forged::Zero,
            1 | 2 => Forged::LogEnd(small),
            3 => Forged::FileLen(small),
            4 | 5 => Forged::InLog(u64::arbitrary(g)),
            6 => Forged::Raw(pick(g, &[1, 8, 1023, 1024, 4096, 8192, 1 << 32, 1 << 62])),
            _ => Forged::Max,
        }
    }
}

impl Arbitrary for Damage {
    fn arbitrary(g: &mut Gen) -> Self {
        let file = pick(g, &[Target::Data, Target::Data, Target::Index]);
        let region = pick(g, &[Region::Anywhere, Region::Header, Region::Live, Region::Live]);
        let at = u64::arbitrary(g);
        match u8::arbitrary(g) % 12 {
            0..=4 => Damage::Flip {
                file,
                region,
                at,
                len: pick(g, &[1, 1, 1, 2, 4, 8, 64]),
                xor: u8::arbitrary(g).max(1),
            },
            5 | 6 => Damage::Truncate { file, region, at },
            7 => Damage::ZeroPage { file, region, at },
            8 => Damage::ForgeLogHeader {
                slot: pick(g, &[0, 1]),
                seq: pick(g, &[0, 1, 2, 3, 1000, u64::MAX]),
                committed: Forged::arbitrary(g),
            },
            9 => Damage::ForgeIndexHeader {
                field: pick(g, FORGED_INDEX_FIELDS),
                value: Forged::arbitrary(g),
            },
            _ => Damage::ForgeSlot {
                which: u64::arbitrary(g),
                value: Forged::arbitrary(g),
                deleted: pick(g, &[false, false, true]),
            },
        }
    }
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = pick(g, &[0, 1, 1, 1, 2, 2, 3]);
        Case {
            seed: u64::arbitrary(g),
            ops: 100 + usize::arbitrary(g) % 400,
            shutdown: pick(g, &[Shutdown::Clean, Shutdown::Crash]),
            verify: bool::arbitrary(g),
            read_only: pick(g, &[false, false, true]),
            damage: (0..n).map(|_| Damage::arbitrary(g)).collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let mut out = Vec::new();
        for i in 0..self.damage.len() {
            let mut c = self.clone();
            c.damage.remove(i);
            out.push(c);
        }
        if self.ops > 1 {
            out.push(Case { ops: self.ops / 2, ..self.clone() });
        }
        if self.read_only {
            out.push(Case { read_only: false, ..self.clone() });
        }
        Box::new(out.into_iter())
    }
}

/// Every value ever written per key, and the current model.
struct History {
    written: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    live: HashMap<Vec<u8>, Vec<u8>>,
    log_end: u64,
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Builds the store of `case` at `path` and shuts it down as the case says.
fn build(case: &Case, path: &Path) -> History {
    let mut rng = Rng(case.seed);
    let big = case.seed.is_multiple_of(4);
    let nkeys = 20 + rng.below(300);
    let keys: Vec<Vec<u8>> = (0..nkeys)
        .map(|i| {
            let len = rng.below(24) as usize;
            let mut k = rng.bytes(len);
            k.extend_from_slice(&(i as u16).to_le_bytes()); // distinct
            k
        })
        .collect();
    let store = Store::open(path).expect("create");
    let mut h = History { written: HashMap::new(), live: HashMap::new(), log_end: DATA_START };
    for _ in 0..case.ops {
        let k = &keys[rng.below(nkeys) as usize];
        match rng.below(20) {
            0..=14 => {
                let len = match rng.below(30) {
                    // Some stores outgrow the first 1 MiB of the data file.
                    0 if big => 100_000 + rng.below(200_000),
                    0 => 2000 + rng.below(8000),
                    _ => rng.below(200),
                } as usize;
                let v = rng.bytes(len);
                store.put(k, &v).expect("put");
                h.log_end += align8(align8(24 + k.len() as u64) + len as u64);
                h.written.entry(k.clone()).or_default().push(v.clone());
                h.live.insert(k.clone(), v);
            }
            15..=18 => {
                let existed = store.delete(k).expect("delete");
                assert_eq!(existed, h.live.remove(k).is_some());
                if existed {
                    h.log_end += align8(24 + k.len() as u64);
                }
            }
            _ => store.sync().expect("sync"),
        }
    }
    match case.shutdown {
        Shutdown::Clean => store.close().expect("close"),
        Shutdown::Crash => store.simulate_crash(),
    }
    h
}

fn resolve(v: Forged, h: &History, file_len: u64) -> u64 {
    let off = |base: u64, d: i8| base.saturating_add_signed(i64::from(d));
    match v {
        Forged::Zero => 0,
        Forged::LogEnd(d) => off(h.log_end, d),
        Forged::FileLen(d) => off(file_len, d),
        Forged::InLog(x) => DATA_START + x % (h.log_end - DATA_START + 8) / 8 * 8,
        Forged::Raw(x) => x,
        Forged::Max => u64::MAX,
    }
}

/// Applies one damage; returns a description.
fn apply(d: &Damage, path: &Path, h: &History) -> String {
    let data_len = fs::metadata(data(path)).map_or(0, |m| m.len());
    match *d {
        Damage::ForgeLogHeader { slot, seq, committed } => {
            let at = u64::from(slot) * PAGE;
            if data_len < at + 64 {
                return "data file too short to forge a header".into();
            }
            let committed = resolve(committed, h, data_len);
            let mut b = read_at(&data(path), at, 64);
            b[24..32].copy_from_slice(&seq.to_le_bytes());
            b[32..40].copy_from_slice(&committed.to_le_bytes());
            let crc = crc32fast::hash(&b[..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            patch(&data(path), at, &b);
            return format!("forged data header {slot}: seq {seq}, committed {committed}");
        }
        Damage::ForgeIndexHeader { field, value } => {
            if !index(path).exists() || file_len(&index(path)) < 64 {
                return "no index header to forge".into();
            }
            let value = resolve(value, h, data_len);
            let at = usize::from(field);
            edit_index_header(&index(path), |b| {
                b[at..at + 8].copy_from_slice(&value.to_le_bytes())
            });
            return format!("forged index header field {field}: {value}");
        }
        Damage::ForgeSlot { which, value, deleted } => {
            let Ok(bytes) = fs::read(index(path)) else {
                return "no index".into();
            };
            let occupied: Vec<u64> = (PAGE as usize..bytes.len().saturating_sub(15))
                .step_by(16)
                .filter(|&s| bytes[s..s + 8] != [0; 8])
                .map(|s| s as u64)
                .collect();
            if occupied.is_empty() {
                return "no occupied slot".into();
            }
            let at = occupied[(which % occupied.len() as u64) as usize];
            let word = resolve(value, h, data_len) | if deleted { 1 << 63 } else { 0 };
            patch(&index(path), at + 8, &word.to_le_bytes());
            return format!("forged slot at {at}: {word:#x}");
        }
        _ => {}
    }
    let (file, region, at) = match d {
        Damage::Flip { file, region, at, .. }
        | Damage::Truncate { file, region, at }
        | Damage::ZeroPage { file, region, at } => (*file, *region, *at),
        _ => unreachable!("forgeries handled above"),
    };
    let p = match file {
        Target::Data => data(path),
        Target::Index => index(path),
    };
    let Ok(bytes) = fs::read(&p) else {
        return format!("{file:?} missing");
    };
    let len = bytes.len() as u64;
    if len == 0 {
        return format!("{file:?} empty");
    }
    // A position inside the region, clamped into the file.
    let pos = match (region, file) {
        (Region::Anywhere, _) => at % len,
        (Region::Header, Target::Data) => at % DATA_START,
        (Region::Header, Target::Index) => at % 64,
        (Region::Live, Target::Data) => DATA_START + at % (h.log_end - DATA_START + 64),
        (Region::Live, Target::Index) => {
            let occupied: Vec<u64> = (PAGE..len.saturating_sub(15))
                .step_by(16)
                .filter(|&s| bytes[s as usize..s as usize + 8] != [0; 8])
                .collect();
            if occupied.is_empty() {
                PAGE + at % len.saturating_sub(PAGE).max(1)
            } else {
                occupied[(at % occupied.len() as u64) as usize] + (at >> 32) % 16
            }
        }
    }
    .min(len - 1);
    match d {
        Damage::Flip { len: n, xor, .. } => {
            let end = (pos + u64::from(*n)).min(len);
            let flipped: Vec<u8> =
                bytes[pos as usize..end as usize].iter().map(|b| b ^ xor).collect();
            patch(&p, pos, &flipped);
            format!("flipped {file:?} [{pos}, {end}) ^ {xor:#04x}")
        }
        Damage::Truncate { .. } => {
            // Sometimes to 0 or to the exact end of the log.
            let cut = match at % 16 {
                0 => 0,
                1 if file == Target::Data => h.log_end.min(len),
                _ => pos,
            };
            truncate(&p, cut);
            format!("truncated {file:?} to {cut} (was {len})")
        }
        _ => {
            let page = pos / PAGE * PAGE;
            let end = (page + PAGE).min(len);
            patch(&p, page, &vec![0; (end - page) as usize]);
            format!("zeroed {file:?} [{page}, {end})")
        }
    }
}

static OPENED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static VALUES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Reads every key through `get` and a `Reader`: no panic, and with checksums on, every
/// value found is one that was written for its key. Returns the number of values found.
fn read_all(store: &Store, case: &Case, h: &History) -> Result<u64, String> {
    let reader = store.reader();
    let mut found = 0;
    for (k, vals) in &h.written {
        let by_get = store.get(k).map(|v| v.map(|v| v.to_vec()));
        let by_reader = reader.get(k).map(|v| v.map(<[u8]>::to_vec));
        for got in [by_get, by_reader] {
            match got {
                Ok(Some(v)) => {
                    found += 1;
                    if case.verify && !vals.contains(&v) {
                        return Err(format!("key {k:?}: value {v:?} was never written for it"));
                    }
                    if case.damage.is_empty() && h.live.get(k) != Some(&v) {
                        return Err(format!("key {k:?}: undamaged store returned {v:?}"));
                    }
                }
                Ok(None) if case.damage.is_empty() && h.live.contains_key(k) => {
                    return Err(format!("key {k:?}: lost without any damage"));
                }
                Err(e) if case.damage.is_empty() => {
                    return Err(format!("key {k:?}: error without any damage: {e}"));
                }
                Ok(None) | Err(_) => {}
            }
        }
    }
    // Keys never written: never a value (with checksums; without, a forged record could).
    for probe in [&b""[..], b"never written", &[0xFF; 40]] {
        if h.written.contains_key(probe) {
            continue;
        }
        if let Ok(Some(v)) = store.get(probe)
            && case.verify
        {
            return Err(format!("never-written key {probe:?} has value {:?}", &*v));
        }
    }
    Ok(found)
}

/// Runs `verify` (it must not panic; on an undamaged store it must find nothing).
fn verify_runs(store: &Store, case: &Case) -> Result<(), String> {
    match store.verify() {
        Ok(r) if case.damage.is_empty() && !r.is_ok() => {
            Err(format!("verify flags an undamaged store: {:?}", r.problems))
        }
        Ok(r) => {
            for p in &r.problems {
                let _ = p.to_string();
            }
            Ok(())
        }
        Err(e) => {
            let _ = e.to_string();
            Ok(())
        }
    }
}

fn damaged_store_behaves(case: Case) -> TestResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let h = build(&case, &path);
    let applied: Vec<String> = case.damage.iter().map(|d| apply(d, &path, &h)).collect();
    let fail = |msg: String| TestResult::error(format!("{msg}\n  damage: {applied:?}"));
    let opts = || {
        let mut o = OpenOptions::new();
        o.read_only(case.read_only).create(false).verify_checksums(case.verify);
        o
    };
    let store = match opts().open(&path) {
        Ok(s) => s,
        Err(e) => {
            if case.damage.is_empty() {
                return fail(format!("an undamaged store did not open: {e}"));
            }
            let _ = e.to_string();
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return TestResult::passed();
        }
    };
    OPENED.fetch_add(1, Ordering::Relaxed);
    let _ = format!("{:?} {:?}", store.recovery(), store);
    match read_all(&store, &case, &h) {
        Ok(n) => VALUES_SEEN.fetch_add(n, Ordering::Relaxed),
        Err(msg) => return fail(msg),
    };
    if let Err(msg) = verify_runs(&store, &case) {
        return fail(msg);
    }
    if !case.read_only {
        // The handle keeps working as far as the damage allows: writes, then reads.
        let fresh = b"\x00fresh key written after the damage";
        let put = store.put(fresh, b"fresh value");
        let victims: Vec<&Vec<u8>> = h.written.keys().take(5).collect();
        for k in &victims {
            let _ = store.delete(k);
        }
        if put.is_ok() {
            match store.get(fresh) {
                Ok(Some(v)) if &*v != b"fresh value" => {
                    return fail(format!("fresh key reads back {:?}", &*v));
                }
                Ok(None) => return fail("fresh key written but not found".into()),
                _ => {}
            }
        }
        if let Err(msg) = verify_runs(&store, &case) {
            return fail(format!("after writes: {msg}"));
        }
        let expected =
            h.live.len() + 1 - victims.iter().filter(|k| h.live.contains_key(**k)).count();
        if case.damage.is_empty() && store.len() != expected as u64 {
            return fail(format!("len {} after writes, expected {expected}", store.len()));
        }
    }
    drop(store); // a clean close, or a no-op
    // And the next open copes with whatever the first one left.
    if let Ok(store) = opts().open(&path) {
        let _ = store.get(b"\x00fresh key written after the damage");
        let _ = verify_runs(&store, &case);
        if !case.read_only {
            // Deleted above: only what was not deleted must still read correctly.
            return TestResult::passed();
        }
        if let Err(msg) = read_all(&store, &case, &h) {
            return fail(format!("after reopening: {msg}"));
        }
    }
    TestResult::passed()
}

#[test]
fn random_damage_never_panics_or_serves_unwritten_values() {
    let tests =
        std::env::var("MAPKV_CORRUPTION_TESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    QuickCheck::new()
        .tests(tests)
        .max_tests(tests * 10)
        .quickcheck(damaged_store_behaves as fn(Case) -> TestResult);
    let (opened, refused) = (OPENED.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed));
    eprintln!(
        "random damage: {opened} stores opened, {refused} refused, {} values read",
        VALUES_SEEN.load(Ordering::Relaxed)
    );
    assert!(opened > 0, "no damaged store ever opened: the property checked nothing");
}

/// A `Salvage` lends slices of the data file: while it lives no writer may open the store
/// (whose open would cut and zero the torn tail under them).
#[test]
fn a_salvage_keeps_writers_out_while_it_lends_slices() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let store = Store::open(&dir).expect("open");
    for i in 0..10u32 {
        store.put(format!("k{i}"), "v").expect("put");
    }
    store.simulate_crash();
    let salvage = mapkv::salvage(&dir).expect("salvage");
    let before: Vec<_> = salvage.pairs().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(before.len(), 10);
    let err = Store::open(&dir).expect_err("a writer while the salvage lives");
    assert!(matches!(err, mapkv::Error::Locked { read_only: false, .. }), "{err}");
    let after: Vec<_> = salvage.pairs().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(before, after);
    drop(salvage);
    Store::open(&dir).expect("the writer opens once the salvage is gone");
}
