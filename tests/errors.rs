//! Guards the error contract: limits, read-only handles, missing stores, poisoning after a
//! failed flush, and clear refusals of files that are not (or no longer) mapkv stores.

use std::fs;
use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mapkv::testing::{Observer, Op};
use mapkv::{CorruptKind, Error, OpenOptions, Store};

fn fresh() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    (dir, path)
}

#[test]
fn oversized_keys_and_values_are_refused_without_writing() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    let key = vec![7u8; mapkv::MAX_KEY_LEN + 1];
    assert!(matches!(
        store.put(&key, b"v"),
        Err(Error::KeyTooLarge { len, max }) if len == key.len() && max == mapkv::MAX_KEY_LEN
    ));
    assert!(matches!(store.delete(&key), Err(Error::KeyTooLarge { .. })));
    // The largest key is fine.
    store.put(&key[1..], b"v").expect("64 KiB key");
    // 4 GiB of zeros: allocated lazily by the OS, never touched because the check comes first.
    let huge = vec![0u8; mapkv::MAX_VALUE_LEN + 1];
    assert!(matches!(store.put(b"k", &huge), Err(Error::ValueTooLarge { .. })));
    drop(huge);
    assert_eq!(store.len(), 1);
    assert!(store.get(b"k").expect("get").is_none());
}

#[test]
fn read_only_handles_refuse_writes() {
    let (_d, path) = fresh();
    Store::open(&path).expect("create").put(b"k", b"v").expect("put");
    let ro = OpenOptions::new().read_only(true).open(&path).expect("read-only");
    assert!(matches!(ro.put(b"k", b"w"), Err(Error::ReadOnly)));
    assert!(matches!(ro.delete(b"k"), Err(Error::ReadOnly)));
    ro.sync().expect("sync of a read-only handle is a no-op");
    assert_eq!(ro.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn missing_store_without_create_is_not_found() {
    let (_d, path) = fresh();
    let err = OpenOptions::new().create(false).open(&path).expect_err("nothing there");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = OpenOptions::new().read_only(true).open(&path).expect_err("nothing there");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!path.exists(), "a refused open must not create anything");
}

#[test]
fn a_second_writer_in_the_same_process_is_locked_out_but_readers_are_not() {
    let (_d, path) = fresh();
    let store = Store::open(&path).expect("create");
    store.put(b"k", b"v").expect("put");
    let err = Store::open(&path).expect_err("second writer");
    assert!(matches!(err, Error::Locked { read_only: false, .. }), "{err}");
    assert!(err.to_string().contains("open for writing by another handle"), "{err}");
    // A reader beside the writer follows it; the writer goes on beside the reader.
    let reader = OpenOptions::new().read_only(true).open(&path).expect("reader beside writer");
    assert_eq!(reader.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    store.put(b"k2", b"v2").expect("put beside a reader");
    assert_eq!(reader.get(b"k2").expect("get").as_deref(), Some(&b"v2"[..]));
    assert!(matches!(reader.put(b"x", b"y"), Err(Error::ReadOnly)));
    drop(store);
    Store::open(&path).expect("free again after the writer is dropped, reader still open");
    drop(reader);
}

#[test]
fn a_writer_that_cannot_be_followed_refuses_readers_with_a_clear_message() {
    use fs2::FileExt;
    let (_d, path) = fresh();
    Store::open(&path).expect("create").close().expect("close");
    // A writer of a mapkv without live pages: it holds the lock, and names no files.
    fs::remove_file(path.join("live.mkv")).expect("remove the live page");
    let lock = fs::File::open(&path).expect("open dir");
    lock.try_lock_exclusive().expect("lock");
    let started = std::time::Instant::now();
    let err = OpenOptions::new().read_only(true).open(&path).expect_err("nothing to follow");
    assert!(matches!(err, Error::Locked { read_only: true, .. }), "{err}");
    assert!(err.to_string().contains("cannot be followed"), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "it waits for a writer");
    FileExt::unlock(&lock).expect("unlock");
    let reader = OpenOptions::new().read_only(true).open(&path).expect("no writer: alone");
    assert!(reader.is_empty());
}

/// Fails the next msync of the data file with EIO once armed, as a dying disk would.
#[derive(Default)]
struct FailingDisk {
    armed: AtomicBool,
}

impl Observer for FailingDisk {
    fn before(&self, op: Op<'_>) -> std::io::Result<()> {
        let data_flush = matches!(op, Op::Flush { path, .. } if path.ends_with("data.mkv"));
        if data_flush && self.armed.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        Ok(())
    }
}

#[test]
fn a_failed_flush_poisons_every_later_call() {
    let (_d, path) = fresh();
    let disk = Arc::new(FailingDisk::default());
    let store = OpenOptions::new().observer(disk.clone()).open(&path).expect("create");
    store.put(b"synced", b"1").expect("put");
    store.sync().expect("sync");
    store.put(b"unsynced", b"2").expect("put");
    disk.armed.store(true, Ordering::SeqCst);
    let err = store.sync().expect_err("injected EIO");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Never retried and reported as success.
    assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
    assert!(matches!(store.put(b"a", b"b"), Err(Error::Poisoned { .. })));
    assert!(matches!(store.delete(b"synced"), Err(Error::Poisoned { .. })));
    assert!(matches!(store.get(b"synced"), Err(Error::Poisoned { .. })));
    assert!(matches!(store.reader().get(b"synced"), Err(Error::Poisoned { .. })));
    let poisoned = store.sync().expect_err("poisoned");
    let msg = poisoned.to_string();
    assert!(msg.contains("reopen"), "the message says what to do: {msg}");
    // The cause keeps its structure and its operating system error.
    use std::error::Error as _;
    let cause = poisoned.source().and_then(|c| c.downcast_ref::<Error>()).expect("cause");
    assert!(matches!(cause, Error::Io { op: "flush (msync)", .. }), "{cause}");
    let os = cause.source().and_then(|c| c.downcast_ref::<std::io::Error>()).expect("io");
    assert_eq!(os.raw_os_error(), Some(5), "{os}");
    drop(store);
    // Reopening recovers (the process did not die, so the page cache still has everything).
    let store = Store::open(&path).expect("reopen");
    assert!(!store.recovery().was_clean(), "a poisoned handle must not mark the index clean");
    assert_eq!(store.get(b"synced").expect("get").as_deref(), Some(&b"1"[..]));
}

fn corrupt_kind(path: &Path) -> (u64, CorruptKind) {
    match Store::open(path) {
        Err(Error::Corrupt { offset, kind, .. }) => (offset, kind),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the store opened"),
    }
}

#[test]
fn damaged_headers_give_precise_errors() {
    let (_d, path) = fresh();
    Store::open(&path).expect("create").put(b"k", b"v").expect("put");
    let data = path.join("data.mkv");
    let good = fs::read(&data).expect("read");

    let mut bad = good.clone();
    bad[..8].copy_from_slice(b"NOTMAPKV");
    bad[4096..4104].copy_from_slice(b"NOTMAPKV");
    fs::write(&data, &bad).expect("write");
    assert_eq!(corrupt_kind(&path), (0, CorruptKind::BadMagic));

    let mut bad = good.clone();
    bad[20] ^= 1;
    bad[4096 + 20] ^= 1;
    fs::write(&data, &bad).expect("write");
    assert_eq!(corrupt_kind(&path), (0, CorruptKind::NoValidHeader));

    // One damaged copy loses nothing.
    let mut one = good.clone();
    one[20] ^= 1;
    fs::write(&data, &one).expect("write");
    let s = Store::open(&path).expect("the other header copy serves");
    assert_eq!(s.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    drop(s);

    fs::write(&data, &good[..100]).expect("write");
    assert!(matches!(corrupt_kind(&path), (0, CorruptKind::TooShort { len: 100, .. })));
}

#[test]
fn a_future_format_version_is_refused() {
    let (_d, path) = fresh();
    drop(Store::open(&path).expect("create"));
    let data = path.join("data.mkv");
    let mut bytes = fs::read(&data).expect("read");
    for slot in [0usize, 4096] {
        bytes[slot + 8] = 2; // version
        let crc = crc32fast::hash(&bytes[slot..slot + 60]);
        bytes[slot + 60..slot + 64].copy_from_slice(&crc.to_le_bytes());
    }
    fs::write(&data, &bytes).expect("write");
    match Store::open(&path) {
        Err(Error::UnsupportedVersion { found: 2, supported: 1, .. }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn a_missing_or_foreign_index_is_rebuilt_from_the_log() {
    let (d, path) = fresh();
    let store = Store::open(&path).expect("create");
    for i in 0..500u32 {
        store.put(i.to_le_bytes(), i.to_be_bytes()).expect("put");
    }
    drop(store);
    fs::remove_file(path.join("index.mkv")).expect("remove index");
    let store = Store::open(&path).expect("rebuild");
    assert!(store.recovery().index_rebuilt);
    assert_eq!(store.len(), 500);
    drop(store);

    let other = d.path().join("other");
    Store::open(&other).expect("create").put(b"x", b"y").expect("put");
    fs::copy(other.join("index.mkv"), path.join("index.mkv")).expect("copy foreign index");
    let store = Store::open(&path).expect("rebuild");
    let reason = store.recovery().reason.clone().unwrap_or_default();
    assert!(reason.contains("belongs to store"), "{reason}");
    assert_eq!(store.len(), 500);
    assert_eq!(
        store.get(7u32.to_le_bytes()).expect("get").as_deref(),
        Some(&7u32.to_be_bytes()[..])
    );
    assert!(store.get(b"x").expect("get").is_none());
}

#[test]
fn errors_explain_themselves() {
    let e = Error::KeyTooLarge { len: 70_000, max: 65_536 };
    assert_eq!(e.to_string(), "key of 70000 bytes is longer than the limit of 65536 bytes");
    let e = Error::Corrupt {
        file: "db/data.mkv".into(),
        offset: 8192,
        kind: CorruptKind::ChecksumMismatch { expected: 1, found: 2 },
    };
    let msg = e.to_string();
    assert!(
        msg.contains("db/data.mkv") && msg.contains("8192") && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn a_read_only_open_of_a_missing_store_gives_advice_that_fits_it() {
    let (_d, path) = fresh();
    let err = OpenOptions::new().read_only(true).open(&path).expect_err("nothing there");
    assert!(matches!(err, Error::NotFound { read_only: true, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("read-only open never creates one"), "{msg}");
    assert!(!msg.contains("create(true)"), "advice a read-only open cannot follow: {msg}");
    std::fs::create_dir_all(&path).expect("mkdir");
    let err = OpenOptions::new().read_only(true).open(&path).expect_err("empty directory");
    assert!(matches!(err, Error::NotFound { read_only: true, .. }), "{err}");
    let err = OpenOptions::new().create(false).open(&path).expect_err("create(false)");
    assert!(matches!(err, Error::NotFound { read_only: false, .. }), "{err}");
    assert!(err.to_string().contains("create(true)"), "{err}");
}

#[test]
fn open_refuses_to_make_a_store_among_other_files() {
    let (_d, path) = fresh();
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::write(path.join("notes.txt"), b"my notes").expect("write");
    let err = Store::open(&path).expect_err("a directory of other files");
    assert!(matches!(&err, Error::NotAStore { entry, .. } if entry.as_os_str() == "notes.txt"));
    assert!(err.to_string().contains("use a new or empty directory"), "{err}");
    let mut names: Vec<_> =
        std::fs::read_dir(&path).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["notes.txt"], "the refused open wrote nothing");
    // An empty directory, or one with only what an interrupted creation left, is fine.
    std::fs::remove_file(path.join("notes.txt")).expect("rm");
    std::fs::write(path.join("data.mkv.tmp"), b"half made").expect("write");
    std::fs::write(path.join("live.mkv"), b"").expect("write");
    let store = Store::open(&path).expect("leftovers of a creation");
    store.put(b"k", b"v").expect("put");
}
