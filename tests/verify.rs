//! Guards `Store::verify`: a sound store verifies clean; damaged records and an index that
//! disagrees with the log are each reported with their file and offset.

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;

use mapkv::{CorruptKind, Store};

fn store_with(n: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("create");
    for i in 0..n {
        store.put(i.to_le_bytes(), [i as u8; 8]).expect("put");
    }
    for i in (0..n).step_by(4) {
        store.delete(i.to_le_bytes()).expect("delete");
    }
    store.close().expect("close");
    (dir, path)
}

#[test]
fn a_sound_store_verifies_clean() {
    let (_d, path) = store_with(3000);
    let store = Store::open(&path).expect("open");
    let report = store.verify().expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 3000 + 750);
    assert_eq!(report.live_keys, 2250);
    assert_eq!(report.live_keys, store.len());
}

#[test]
fn a_damaged_record_is_reported_at_its_offset() {
    let (_d, path) = store_with(100);
    // Record 10 (key 10u32, 4-byte key, 8-byte value: 24 + 8 + 8 = 40 bytes).
    let at = 8192 + 10 * 40 + 32;
    let f = FsOpen::new().read(true).write(true).open(path.join("data.mkv")).expect("open");
    f.write_all_at(&[0xEE], at).expect("write");
    drop(f);
    let store = Store::open(&path).expect("a clean store opens without a scan");
    let report = store.verify().expect("verify runs");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert!(p.file.ends_with("data.mkv"));
    assert_eq!(p.offset, 8192 + 10 * 40);
    assert!(matches!(p.kind, CorruptKind::ChecksumMismatch { .. }));
    assert!(p.to_string().contains("checksum"), "{p}");
}

#[test]
fn an_index_that_disagrees_with_the_log_is_reported() {
    let (_d, path) = store_with(100);
    // Point one live slot at another key's record: swap the offset words of two slots.
    let index = path.join("index.mkv");
    let bytes = std::fs::read(&index).expect("read index");
    let slots: Vec<usize> = (0..(bytes.len() - 4096) / 16)
        .map(|i| 4096 + 16 * i)
        .filter(|&s| bytes[s..s + 8] != [0; 8] && bytes[s + 15] & 0x80 == 0)
        .take(2)
        .collect();
    let mut bad = bytes.clone();
    bad[slots[0] + 8..slots[0] + 16].copy_from_slice(&bytes[slots[1] + 8..slots[1] + 16]);
    std::fs::write(&index, &bad).expect("write index");
    let store = Store::open(&path).expect("open");
    let report = store.verify().expect("verify runs");
    assert!(
        report.problems.iter().any(|p| matches!(p.kind, CorruptKind::IndexDisagrees { .. })),
        "{:?}",
        report.problems
    );
}
