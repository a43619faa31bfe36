//! Guards `Store::verify`: a sound store verifies clean; damaged records, an index that
//! disagrees with the log and nonzero bytes past the end of the log are each reported with
//! their file and offset.

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mapkv::{CorruptKind, OpenOptions, Store};

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

fn scribble(path: &Path, at: u64, bytes: &[u8]) {
    let f = FsOpen::new().read(true).write(true).open(path.join("data.mkv")).expect("open");
    f.write_all_at(bytes, at).expect("write");
}

/// The one problem of `report`, which must be nonzero bytes past `end` starting at `at`.
fn assert_past_end(report: &mapkv::VerifyReport, end: u64, at: u64) {
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert!(p.file.ends_with("data.mkv"), "{p}");
    assert_eq!(p.offset, at, "{p}");
    assert_eq!(p.kind, CorruptKind::NonzeroPastEnd { log_end: end }, "{p}");
    assert!(p.to_string().contains("past the end of the log"), "{p}");
    assert!(p.to_string().contains("mapkv recover"), "{p}");
}

#[test]
fn nonzero_bytes_past_the_end_are_reported_at_the_first_and_zeroed_on_request() {
    let (_d, path) = store_with(100);
    let end = Store::open(&path).expect("open").verify().expect("verify").log_end;
    let len = std::fs::metadata(path.join("data.mkv")).expect("stat").len();
    assert!(len > end + 8192, "no room past the end");
    // The first byte past the end, one in the middle, and the file's last byte alone
    // (behind space that holds no pages, which the check skips without reading).
    for (at, also) in [(end, Some(end + 5000)), (end + 4097, None), (len - 1, None)] {
        scribble(&path, at, &[0xA5]);
        if let Some(later) = also {
            scribble(&path, later, &[1, 2, 3]);
        }
        // A read-only handle on the cleanly closed store, and the writer itself.
        let store = OpenOptions::new().read_only(true).open(&path).expect("read-only");
        assert!(store.recovery().was_clean());
        assert_past_end(&store.verify().expect("verify runs"), end, at);
        assert_eq!(store.nonzero_past_end().expect("look"), Some(at));
        drop(store);
        let store = Store::open(&path).expect("a clean store opens without a scan");
        assert!(store.recovery().was_clean(), "{:?}", store.recovery());
        assert_past_end(&store.verify().expect("verify runs"), end, at);
        store.close().expect("close");

        // The repair: the log and index stay as they were (the index still trusted).
        let store = OpenOptions::new().zero_past_end(true).open(&path).expect("zeroing open");
        assert!(store.recovery().was_clean(), "{:?}", store.recovery());
        let report = store.verify().expect("verify runs");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.log_end, report.live_keys), (end, 75));
        assert_eq!(store.nonzero_past_end().expect("look"), None);
        store.close().expect("close");
        let bytes = std::fs::read(path.join("data.mkv")).expect("read");
        assert_eq!(bytes.len() as u64, len, "the file changed length");
        assert!(bytes[end as usize..].iter().all(|&b| b == 0), "not zeroed");
    }
}

#[test]
fn a_follower_does_not_look_past_the_end_it_knows() {
    let (_d, path) = store_with(100);
    let writer = Store::open(&path).expect("writer");
    writer.put(b"more", b"after the open").expect("put");
    let end = writer.verify().expect("verify").log_end;
    // Bytes past the writer's end, as if it were writing them now.
    scribble(&path, end + 64, &[7; 8]);
    let follower = OpenOptions::new().read_only(true).open(&path).expect("follow");
    assert!(follower.stats().following);
    let report = follower.verify().expect("verify runs");
    assert!(report.is_ok(), "a follower reported the writer's tail: {:?}", report.problems);
    assert_eq!(follower.nonzero_past_end().expect("look"), None);
    // The writer owns the store: for it, they are damage.
    assert_past_end(&writer.verify().expect("verify runs"), end, end + 64);
}

/// A flipped batch flag on one record is one problem: the checksum fails, and the flag it
/// failed on neither opens a phantom batch (which made every later record a misplaced one)
/// nor breaks a real one.
#[test]
fn one_flipped_batch_flag_is_one_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let store = Store::open(&dir).expect("open");
    for i in 0..20u32 {
        store.put(format!("k{i:02}"), "v").expect("put");
    }
    store.close().expect("close");
    // Each record: a 24-byte header, a 3-byte key padded to 32, a 1-byte value: 40 bytes.
    let data = dir.join("data.mkv");
    let third = 8192 + 3 * 40;
    let mut flags = [0u8; 2];
    FsOpen::new()
        .read(true)
        .open(&data)
        .expect("open")
        .read_exact_at(&mut flags, third + 4)
        .expect("read");
    assert_eq!(flags, [1, 0], "a put outside any batch");
    scribble(&dir, third + 5, &[1]);
    let report =
        OpenOptions::new().read_only(true).open(&dir).expect("open").verify().expect("verify");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].offset, third);
    assert!(matches!(report.problems[0].kind, CorruptKind::ChecksumMismatch { .. }));
}
