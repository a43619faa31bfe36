//! Guards recovery after an unclean shutdown: a torn tail is cut and reported, bytes past
//! the cut can never come back, damage below the committed length is an error naming the
//! offset, and checksums catch damage that the index alone would not.

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mapkv::{Batch, CorruptKind, Error, OpenOptions, Store};

const DATA_START: u64 = 8192;
/// A record with a 1-byte key and an 8-byte value: 24 header + 8 key + 8 value.
const REC: u64 = 40;

fn flip(path: &Path, offset: u64) {
    let f = FsOpen::new().read(true).write(true).open(path).expect("open data file");
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write");
}

/// Makes the live page read as written in another boot: the next open rebuilds, as after a
/// power cut (a kill -9 in this boot resumes instead: tests/resume.rs).
fn reboot(path: &Path) {
    mapkv::testing::adopt_page(path, true).expect("reboot the page");
}

#[test]
fn a_torn_record_is_cut_and_what_followed_it_never_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let data = path.join("data.mkv");
    let store = Store::open(&path).expect("create");
    store.put(b"a", b"aaaaaaaa").expect("put"); // at DATA_START
    store.sync().expect("sync");
    store.put(b"b", b"bbbbbbbb").expect("put"); // at DATA_START + REC
    store.put(b"c", b"cccccccc").expect("put"); // at DATA_START + 2 REC
    store.simulate_crash();

    // As if the page holding "b" had not reached the disk but the one holding "c" had
    // (a power cut: the next open is in another boot).
    reboot(&path);
    flip(&data, DATA_START + REC + 32);
    let store = Store::open(&path).expect("recover");
    let report = store.recovery().clone();
    assert!(report.index_rebuilt);
    assert_eq!(report.records_replayed, 1);
    assert_eq!(report.log_end, DATA_START + REC);
    assert!(
        matches!(report.cut, Some((o, CorruptKind::ChecksumMismatch { .. })) if o == DATA_START + REC),
        "{report:?}"
    );
    assert_eq!(store.get(b"a").expect("get").as_deref(), Some(&b"aaaaaaaa"[..]));
    assert!(store.get(b"b").expect("get").is_none());
    assert!(store.get(b"c").expect("get").is_none(), "a record past the cut came back");

    // A record of exactly b's size lands where b was, so c's old bytes would sit exactly
    // where the next record is expected. Recovery zeroed them; they must stay gone.
    store.put(b"d", b"dddddddd").expect("put");
    store.simulate_crash();
    // Resumed (this boot): the checkpoint is past d, and nothing there parses.
    let resumed = Store::open(&path).expect("recover again");
    assert_eq!(resumed.recovery().records_replayed, 0, "{:?}", resumed.recovery());
    assert!(resumed.get(b"c").expect("get").is_none(), "stale record resurrected");
    resumed.simulate_crash();
    // Rebuilt (another boot): the scan walks the whole log.
    reboot(&path);
    let store = Store::open(&path).expect("recover again");
    assert_eq!(store.recovery().records_replayed, 2);
    assert_eq!(store.recovery().cut, None);
    assert!(store.get(b"c").expect("get").is_none(), "stale record resurrected");
    assert_eq!(store.get(b"d").expect("get").as_deref(), Some(&b"dddddddd"[..]));
    assert_eq!(store.len(), 2);
}

#[test]
fn recovery_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    for i in 0..300u32 {
        store.put(i.to_le_bytes(), [i as u8; 8]).expect("put");
    }
    store.simulate_crash();
    reboot(&path); // a torn page: a power cut
    flip(&path.join("data.mkv"), DATA_START + 200 * REC + 32);
    let first = Store::open(&path).expect("recover");
    let report = first.recovery().clone();
    assert_eq!(report.records_replayed, 200);
    first.simulate_crash(); // crash again right after recovery
    reboot(&path);
    let second = Store::open(&path).expect("recover twice");
    assert_eq!(second.recovery().records_replayed, 200);
    assert_eq!(second.recovery().log_end, report.log_end);
    assert_eq!(second.recovery().cut, None, "the first recovery zeroed the torn tail");
    assert_eq!(second.len(), 200);
    for i in 0..300u32 {
        let got = second.get(i.to_le_bytes()).expect("get");
        assert_eq!(got.is_some(), i < 200, "key {i}");
    }
}

#[test]
fn damage_below_the_committed_length_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    for i in 0..10u8 {
        store.put([i], [i; 8]).expect("put");
    }
    store.close().expect("clean close");
    let bad = DATA_START + 3 * REC; // key 3
    flip(&path.join("data.mkv"), bad + 32);

    // A clean store opens without a scan; the damage shows when the value is checked.
    let plain = Store::open(&path).expect("clean open reads headers only");
    assert!(!plain.recovery().index_rebuilt);
    assert!(plain.get([3u8]).expect("unchecked read").is_some());
    drop(plain);
    let checked = OpenOptions::new().verify_checksums(true).open(&path).expect("open");
    match checked.get([3u8]) {
        Err(Error::Corrupt { offset, kind: CorruptKind::ChecksumMismatch { .. }, file }) => {
            assert_eq!(offset, bad);
            assert!(file.ends_with("data.mkv"));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(checked.get([4u8]).expect("undamaged").as_deref(), Some(&[4u8; 8][..]));
    drop(checked);

    // Forcing a scan finds the same damage below the committed length: an error, not a cut.
    std::fs::remove_file(path.join("index.mkv")).expect("remove index");
    match Store::open(&path) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, bad),
        other => panic!("expected corruption at {bad}, got {other:?}"),
    }
}

#[test]
fn damaged_record_headers_give_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    store.put(b"k", b"vvvvvvvv").expect("put");
    store.close().expect("close");
    // Value length = 0xFFFF_FFFF: the record would run far past the end of the file.
    let f = FsOpen::new().write(true).open(path.join("data.mkv")).expect("open");
    f.write_all_at(&u32::MAX.to_le_bytes(), DATA_START + 12).expect("write");
    drop(f);
    let store = Store::open(&path).expect("clean open");
    let err = store.get(b"k").expect_err("damaged header");
    assert!(matches!(err, Error::Corrupt { kind: CorruptKind::BadIndexSlot { .. }, .. }), "{err}");
}

#[test]
fn writes_after_recovery_survive_the_next_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    store.put(b"before", b"1").expect("put");
    store.simulate_crash();
    let store = Store::open(&path).expect("recover");
    store.put(b"after", b"2").expect("put");
    assert!(store.delete(b"before").expect("delete"));
    store.simulate_crash();
    let store = Store::open(&path).expect("recover");
    assert!(store.get(b"before").expect("get").is_none());
    assert_eq!(store.get(b"after").expect("get").as_deref(), Some(&b"2"[..]));
    assert_eq!(store.len(), 1);
}

/// One record of the log, as DESIGN.md §2 lays it out.
#[derive(Debug, Clone, Copy)]
struct RawRecord {
    offset: u64,
    kind: u8,
    flags: u8,
    key_len: u64,
    value_len: u64,
    prev: u64,
    len: u64,
}

/// Walks the records of a data file from `DATA_START` to the first all-zero header.
fn raw_records(data: &[u8]) -> Vec<RawRecord> {
    let u32_at = |p: usize| u64::from(u32::from_le_bytes(data[p..p + 4].try_into().expect("4")));
    let mut out = Vec::new();
    let mut p = DATA_START as usize;
    while p + 24 <= data.len() && data[p..p + 24].iter().any(|&b| b != 0) {
        let (key_len, value_len) = (u32_at(p + 8), u32_at(p + 12));
        let len = (24 + key_len).div_ceil(8) * 8 + value_len.div_ceil(8) * 8;
        out.push(RawRecord {
            offset: p as u64,
            kind: data[p + 4],
            flags: data[p + 5],
            key_len,
            value_len,
            prev: u64::from_le_bytes(data[p + 16..p + 24].try_into().expect("8")),
            len,
        });
        p += len as usize;
    }
    out
}

/// The value of the record `r` of `data`.
fn raw_value<'d>(data: &'d [u8], r: &RawRecord) -> &'d [u8] {
    let at = (r.offset + (24 + r.key_len).div_ceil(8) * 8) as usize;
    &data[at..at + r.value_len as usize]
}

/// How the tail of a batch is damaged before reopening.
#[derive(Debug, Clone, Copy)]
enum BatchDamage {
    /// Its commit record zeroed: the writer stopped just before writing it.
    CommitZeroed,
    /// Everything from its 100th record on zeroed (those pages never reached the disk).
    TailZeroed,
    /// A byte of its 100th record's value changed (a torn page); the commit is intact.
    RecordTorn,
}

/// A store holding synced data, a committed batch past the committed length, a put, and
/// then a batch of 204 records (200 new keys, an overwrite, a delete, a key put and deleted
/// again; its delete of an absent key writes nothing), left by a crash with its tail
/// damaged as `damage` says. Returns the store's path, the batch's first record's offset,
/// and how many of its records survive the damage.
fn batch_cut_short(dir: &Path, damage: BatchDamage) -> (std::path::PathBuf, u64, u64) {
    let path = dir.join("db");
    let data = path.join("data.mkv");
    let store = Store::open(&path).expect("create");
    for i in 0..10u8 {
        store.put([b'a' + i], [i; 8]).expect("put");
    }
    store.sync().expect("sync");
    let mut first = Batch::new();
    first.put("first-1", "one").put("first-2", "two").delete("a");
    store.write(first).expect("first batch");
    store.sync().expect("sync"); // the header now claims the ten puts, not the batch
    store.put("single", "put").expect("put");
    let mut batch = Batch::new();
    for i in 0..200u32 {
        batch.put(format!("batch-{i}"), i.to_le_bytes().repeat(1 + i as usize % 50));
    }
    batch.put("b", "overwritten").delete("c").delete("never-there");
    batch.put("brief", "x").delete("brief");
    store.write(batch).expect("batch");
    // Before the crash the batch is there in full.
    assert_eq!(
        store.get("batch-199").expect("get").as_deref(),
        Some(&199u32.to_le_bytes().repeat(50)[..])
    );
    assert_eq!(store.get("b").expect("get").as_deref(), Some(&b"overwritten"[..]));
    assert!(store.get("c").expect("get").is_none());
    assert_eq!(store.len(), 10 - 1 + 2 + 1 + 200 - 1);
    store.simulate_crash();
    reboot(&path); // the damage below is what a power cut leaves

    // The log ends with the commit record: empty key, the number of records as its value,
    // and `prev` naming the batch's first record; the 204 records before it are flagged.
    let bytes = std::fs::read(&data).expect("read data file");
    let records = raw_records(&bytes);
    let commit = *records.last().expect("records");
    assert_eq!((commit.kind, commit.key_len, commit.value_len), (3, 0, 8), "{commit:?}");
    assert_eq!(raw_value(&bytes, &commit), 204u64.to_le_bytes(), "the commit's count");
    let batch_records = &records[records.len() - 205..records.len() - 1];
    assert_eq!(commit.prev, batch_records[0].offset, "the commit names the batch's start");
    assert!(batch_records.iter().all(|r| r.flags & 1 == 1 && (r.kind == 1 || r.kind == 2)));
    let before = records[records.len() - 206];
    assert_eq!((before.kind, before.flags), (1, 0), "the put before the batch: {before:?}");

    let f = FsOpen::new().write(true).open(&data).expect("open data file");
    let tail_end = commit.offset + commit.len;
    let survivors = match damage {
        BatchDamage::CommitZeroed => {
            f.write_all_at(&vec![0; commit.len as usize], commit.offset).expect("zero commit");
            204
        }
        BatchDamage::TailZeroed => {
            let from = batch_records[100].offset;
            f.write_all_at(&vec![0; (tail_end - from) as usize], from).expect("zero tail");
            100
        }
        BatchDamage::RecordTorn => {
            drop(f);
            // The first byte of its value (the padding after a value is not checksummed).
            let torn = batch_records[100];
            flip(&data, torn.offset + (24 + torn.key_len).div_ceil(8) * 8);
            100
        }
    };
    (path, batch_records[0].offset, survivors)
}

#[test]
fn a_batch_cut_short_by_a_crash_vanishes_whole() {
    for damage in [BatchDamage::CommitZeroed, BatchDamage::TailZeroed, BatchDamage::RecordTorn] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, start, survivors) = batch_cut_short(dir.path(), damage);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{damage:?}: recover: {e}"));
        let report = store.recovery().clone();
        assert!(report.index_rebuilt, "{damage:?}: {report:?}");
        assert_eq!(
            report.cut,
            Some((start, CorruptKind::UnfinishedBatch { records: survivors })),
            "{damage:?}: the cut must be at the batch's start"
        );
        assert_eq!(report.log_end, start, "{damage:?}: the log must end before the batch");
        let check = |store: &Store, when: &str| {
            let get = |k: &str| store.get(k).expect("get").map(|v| v.to_vec());
            for i in 0..200u32 {
                assert_eq!(get(&format!("batch-{i}")), None, "{damage:?}, {when}: batch-{i}");
            }
            assert_eq!(get("brief"), None, "{damage:?}, {when}");
            // Everything before the batch is there, as it was.
            assert_eq!(get("b"), Some(vec![1; 8]), "{damage:?}, {when}: b overwritten");
            assert_eq!(get("c"), Some(vec![2; 8]), "{damage:?}, {when}: c deleted");
            assert_eq!(get("a"), None, "{damage:?}, {when}: the first batch's delete");
            for i in 3..10u8 {
                assert_eq!(get(&char::from(b'a' + i).to_string()), Some(vec![i; 8]));
            }
            assert_eq!(get("first-1"), Some(b"one".to_vec()), "{damage:?}, {when}");
            assert_eq!(get("first-2"), Some(b"two".to_vec()), "{damage:?}, {when}");
            assert_eq!(get("single"), Some(b"put".to_vec()), "{damage:?}, {when}");
        };
        check(&store, "after recovery");
        assert_eq!(store.len(), 9 + 2 + 1, "{damage:?}");
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "{damage:?}: {:?}", report.problems);

        // A new batch takes the old one's place and survives the next crash; nothing of
        // the old one comes back (recovery zeroed it).
        let mut again = Batch::new();
        again.put("after", "recovery").delete("b").put("batch-7", "new");
        store.write(again).expect("batch after recovery");
        store.put("then", "a put").expect("put after recovery");
        store.simulate_crash();
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{damage:?}: reopen: {e}"));
        assert_eq!(store.recovery().cut, None, "{damage:?}: {:?}", store.recovery());
        let get = |k: &str| store.get(k).expect("get").map(|v| v.to_vec());
        assert_eq!(get("after"), Some(b"recovery".to_vec()), "{damage:?}");
        assert_eq!(get("then"), Some(b"a put".to_vec()), "{damage:?}");
        assert_eq!(get("batch-7"), Some(b"new".to_vec()), "{damage:?}");
        assert_eq!(get("b"), None, "{damage:?}");
        assert_eq!(get("batch-8"), None, "{damage:?}: a record of the cut batch came back");
        assert_eq!(store.len(), 9 + 2 + 1 + 3 - 1, "{damage:?}");
        store.close().expect("close");
        let store = Store::open(&path).expect("clean reopen");
        assert!(!store.recovery().index_rebuilt, "{damage:?}");
        assert_eq!(store.get("after").expect("get").as_deref(), Some(&b"recovery"[..]));
        assert!(store.get("batch-8").expect("get").is_none(), "{damage:?}");
    }
}
