//! Guards hot backup (`Store::copy_to`): a copy taken while a writer keeps writing, in this
//! process and from another one (through a read-only handle that follows it), verifies
//! sound and holds exactly one moment's contents, compacted or not.
//!
//! The writer follows a fixed history: write `i` sets key `i % KEYS` to `value(i)` and then
//! `last` to `i`, in one batch. So a copy whose `last` is `n` must hold, for every key, the
//! value of the newest write `<= n` to it, and nothing else: any other mix is a torn copy.
//! The child process is this test binary run again (`--exact backup_child`), as in
//! `tests/follow.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mapkv::{Batch, OpenOptions, Store};

const KEYS: u64 = 2_000;
const DIR_ENV: &str = "MAPKV_BACKUP_CHILD_DIR";

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:05}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    // Sizes vary, so the log grows and the copy crosses growth steps.
    format!("value-{i}-{}", "x".repeat((i % 300) as usize)).into_bytes()
}

/// Write `i` of the history, as one batch.
fn write(store: &Store, i: u64) {
    let mut b = Batch::new();
    b.put(key(i % KEYS), value(i)).put("last", i.to_le_bytes());
    store.write(b).expect("write");
}

/// What a copy taken after write `n` must hold.
fn expected(n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in n.saturating_sub(KEYS - 1)..=n {
        m.insert(key(i % KEYS), value(i));
    }
    m.insert(b"last".to_vec(), n.to_le_bytes().to_vec());
    m
}

/// Opens the copy at `dir`, checks it is sound and holds exactly the contents after some
/// write `n`, and returns `n`.
fn check_copy(dir: &Path) -> u64 {
    let copy = OpenOptions::new().create(false).open(dir).expect("the copy opens");
    assert!(copy.recovery().was_clean(), "the copy was closed cleanly");
    let report = copy.verify().expect("verify");
    assert!(report.problems.is_empty(), "the copy is damaged: {:?}", report.problems);
    let all: BTreeMap<Vec<u8>, Vec<u8>> = copy
        .iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .expect("iterate");
    let last = all.get(&b"last"[..]).expect("the copy holds `last`");
    let n = u64::from_le_bytes(last.as_slice().try_into().expect("8 bytes"));
    assert!(all == expected(n), "the copy is not the contents after write {n}: a torn copy");
    n
}

/// Writes the first `KEYS * 3` writes of the history, then goes on in a thread until the
/// flag is set; the thread returns how far it got.
fn history_writer(store: &Arc<Store>) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    for i in 0..KEYS * 3 {
        write(store, i);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (store, flag) = (Arc::clone(store), Arc::clone(&stop));
    let writer = std::thread::spawn(move || {
        let mut i = KEYS * 3;
        while !flag.load(Ordering::Relaxed) {
            write(&store, i);
            i += 1;
        }
        i
    });
    (stop, writer)
}

#[test]
fn a_copy_taken_under_a_writer_in_this_process_is_one_moment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(tmp.path().join("db")).expect("open"));
    let (stop, writer) = history_writer(&store);
    let mut seen = Vec::new();
    for (round, compact) in [false, true, false, true].into_iter().enumerate() {
        let dest = tmp.path().join(format!("copy-{round}"));
        let stats = store.copy_to(&dest, compact).expect("copy");
        let n = check_copy(&dest);
        assert_eq!(stats.live_keys, KEYS + 1);
        if compact {
            // Compacted: one record a key; the only garbage is the batches' commit records.
            assert_eq!(stats.records, KEYS + 1);
            assert!(stats.garbage_bytes <= 64, "{} bytes of garbage", stats.garbage_bytes);
        } else {
            assert!(stats.garbage_bytes > 0, "a plain copy keeps the history");
        }
        seen.push(n);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "copies went back in time: {seen:?}");
    assert!(seen[0] >= KEYS * 3 - 1 && seen[3] < written, "{seen:?} within the history");
}

#[test]
fn a_copy_refuses_a_destination_that_holds_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path().join("db")).expect("open");
    store.put("k", "v").expect("put");
    let dest = tmp.path().join("taken");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::write(dest.join("precious.txt"), "keep me").expect("write");
    let err = store.copy_to(&dest, false).expect_err("not empty");
    assert!(err.to_string().contains("new or empty directory"), "{err}");
    assert_eq!(std::fs::read(dest.join("precious.txt")).expect("kept"), b"keep me");
    // Into the store's own directory: refused the same way.
    assert!(store.copy_to(tmp.path().join("db"), true).is_err());
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    store.copy_to(&empty, false).expect("copy into an empty directory");
    let copy = Store::open(&empty).expect("open the copy");
    assert_eq!(copy.get("k").expect("get").as_deref(), Some(&b"v"[..]));
}

/// The child: writes the history flat out until killed, saying when the first
/// `KEYS * 3` writes are in.
#[test]
fn backup_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let store = Store::open(&dir).expect("child open");
    let mut i = 0;
    loop {
        write(&store, i);
        if i == KEYS * 3 {
            println!("backup-child: ready");
        }
        i += 1;
    }
}

#[test]
fn a_copy_from_a_reader_in_another_process_than_the_writer_is_one_moment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", "backup_child", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let ready = common::read_marked_lines(&mut child, "backup-child: ");
    let stderr = common::read_stderr(&mut child);
    if ready.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("the writer never got ready: {}", stderr.join().unwrap_or_default());
    }
    let reader = OpenOptions::new().read_only(true).open(&db).expect("read-only open");
    assert!(reader.stats().following, "the reader follows the live writer");
    let mut seen = Vec::new();
    for (round, compact) in [false, true].into_iter().enumerate() {
        let dest = tmp.path().join(format!("copy-{round}"));
        reader.copy_to(&dest, compact).expect("copy beside a writer in another process");
        seen.push(check_copy(&dest));
    }
    child.kill().expect("kill the writer");
    let _ = child.wait();
    assert!(seen[0] >= KEYS * 3 && seen[0] <= seen[1], "{seen:?}");
}

/// `mapkv copy`, a process of its own, beside a writer in this one.
#[cfg(feature = "cli")]
#[test]
fn mapkv_copy_beside_a_live_writer_copies_one_moment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("db");
    let store = Arc::new(Store::open(&db).expect("open"));
    let (stop, writer) = history_writer(&store);
    let mut seen = Vec::new();
    for (round, compact) in [false, true].into_iter().enumerate() {
        let dest = tmp.path().join(format!("copy-{round}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapkv"));
        cmd.arg("copy").arg(&db).arg(&dest);
        if compact {
            cmd.arg("--compact");
        }
        let out = cmd.output().expect("run mapkv copy");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("{} live keys", KEYS + 1)), "{stdout}");
        seen.push(check_copy(&dest));
    }
    // Into a directory that holds something: refused, exit 1, nothing touched.
    let out = Command::new(env!("CARGO_BIN_EXE_mapkv"))
        .arg("copy")
        .arg(&db)
        .arg(tmp.path().join("copy-0"))
        .output()
        .expect("run mapkv copy");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("new or empty directory"));
    check_copy(&tmp.path().join("copy-0"));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(seen[0] >= KEYS * 3 - 1 && seen[0] <= seen[1], "{seen:?}");
}

/// A copy killed half-way leaves no store in its destination: what it wrote is in a work
/// directory, which open refuses to take for a store, and the data file moves in last.
#[cfg(feature = "cli")]
#[test]
fn a_copy_killed_half_way_leaves_no_store_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    {
        let store = Store::open(&src).expect("open");
        let v = vec![b'x'; 200];
        for chunk in 0..20u32 {
            let mut b = Batch::new();
            for i in 0..10_000u32 {
                b.put(format!("k{chunk:03}-{i:05}"), &v);
            }
            store.write(b).expect("write");
        }
        store.close().expect("close");
    }
    for (round, delay_ms) in [20u64, 80, 200].into_iter().enumerate() {
        let dest = tmp.path().join(format!("dst-{round}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_mapkv"))
            .arg("copy")
            .arg(&src)
            .arg(&dest)
            .arg("--compact")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mapkv copy");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        let finished = child.wait().expect("wait").success();
        match OpenOptions::new().create(false).open(&dest) {
            Ok(copy) => {
                assert!(finished || copy.len() == 200_000, "a partial copy opens as a store");
                assert_eq!(copy.len(), 200_000);
            }
            Err(e) => {
                assert!(!finished, "a finished copy does not open: {e}");
                assert!(matches!(e, mapkv::Error::NotFound { .. }), "{e}");
                // Nor does a writable open make a store among the leftovers.
                let e = Store::open(&dest).expect_err("leftovers are not a store");
                assert!(matches!(e, mapkv::Error::NotAStore { .. }), "{e}");
            }
        }
    }
}

#[test]
fn two_copies_into_one_destination_do_not_mix_or_delete_each_other() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path().join("db")).expect("open");
    let mut b = Batch::new();
    for i in 0..20_000u32 {
        b.put(i.to_le_bytes(), [7u8; 400]);
    }
    store.write(b).expect("write");
    let dest = tmp.path().join("dst");
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| store.copy_to(&dest, false));
        let two = s.spawn(|| store.copy_to(&dest, true));
        (one.join().expect("join"), two.join().expect("join"))
    });
    assert!(a.is_ok() != b.is_ok(), "exactly one copy wins: {a:?} / {b:?}");
    for err in [a.as_ref().err(), b.as_ref().err()].into_iter().flatten() {
        assert!(
            matches!(err, mapkv::Error::Locked { .. }) || err.to_string().contains("new or empty"),
            "{err}"
        );
    }
    let copy = OpenOptions::new().create(false).open(&dest).expect("the winner's copy is whole");
    assert_eq!(copy.len(), 20_000);
    assert!(copy.verify().expect("verify").problems.is_empty());
}

#[test]
fn a_copy_of_a_damaged_log_fails_naming_the_source_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    {
        let store = Store::open(&src).expect("open");
        for i in 0..10 {
            store.put(format!("k{i}"), "VVVVVVVV").expect("put");
        }
        store.close().expect("close");
    }
    let data = src.join("data.mkv");
    let mut bytes = std::fs::read(&data).expect("read");
    let at = (8192..bytes.len()).find(|&i| bytes[i] == b'V').expect("a value byte");
    bytes[at] ^= 0x20;
    std::fs::write(&data, bytes).expect("write");
    let reader = OpenOptions::new().read_only(true).open(&src).expect("open read-only");
    let dest = tmp.path().join("dst");
    let err = reader.copy_to(&dest, false).expect_err("a damaged record");
    assert!(
        matches!(&err, mapkv::Error::Corrupt { file, .. } if *file == data),
        "names the source's data file: {err}"
    );
    assert!(!dest.exists(), "the failed copy left {dest:?}");
}
