//! Guards recovery after an unclean shutdown: a torn tail is cut and reported, bytes past
//! the cut can never come back, damage below the committed length is an error naming the
//! offset, and checksums catch damage that the index alone would not.

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mapkv::{CorruptKind, Error, OpenOptions, Store};

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

    // As if the page holding "b" had not reached the disk but the one holding "c" had.
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
    flip(&path.join("data.mkv"), DATA_START + 200 * REC + 32);
    let first = Store::open(&path).expect("recover");
    let report = first.recovery().clone();
    assert_eq!(report.records_replayed, 200);
    first.simulate_crash(); // crash again right after recovery
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
