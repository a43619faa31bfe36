//! Guards readers that follow a live writer: a read-only handle opens while another handle
//! (in this process or another) writes the store, sees every write that returned before the
//! writer's last `sync()` (never a torn value, never part of a batch), follows data file
//! growth, index growth and compaction without reopening, keeps the `Value`s it lent
//! unchanged, and lives through the writer being killed and a new writer taking over. One
//! writer at a time; readers never block a writer.
//!
//! The in-process tests open the writable and the read-only handles in one process: handles
//! share nothing, so they talk through the same protocol as processes do. The multi-process
//! test re-executes this test binary (`current_exe() --exact <test> --nocapture`) with
//! `MAPKV_FOLLOW_ROLE=<role>` set, as `tests/process_crash.rs` does; children report through
//! their exit code and stdout lines carrying the `@follow ` marker.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mapkv::{Batch, Error, OpenOptions, Reader, Store, Value};

mod common;
use common::{read_marked_lines, read_stderr};

// ---- values that say what they are -------------------------------------------------------

/// A value that names its key and version and checks itself: key, version and length as
/// u64 LE, then bytes derived from all three.
fn value(key: u64, version: u64, len: usize) -> Vec<u8> {
    let len = len.max(24);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = mix(key ^ version.rotate_left(29) ^ (len as u64).rotate_left(47));
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// `(key, version)` of a well-formed value: `Err` says what is wrong with a torn or foreign
/// one.
fn decode(v: &[u8]) -> Result<(u64, u64), String> {
    if v.len() < 24 {
        return Err(format!("a value of {} bytes (every value has at least 24)", v.len()));
    }
    let word = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    let (key, version, len) = (word(0), word(8), word(16));
    if len != v.len() as u64 {
        return Err(format!("key {key} version {version}: says {len} bytes, has {}", v.len()));
    }
    if v != value(key, version, v.len()) {
        return Err(format!("key {key} version {version}: torn or damaged payload"));
    }
    Ok((key, version))
}

/// Checks `v` is a well-formed value of `key`; returns its version.
#[track_caller]
fn version_of(key: u64, v: &[u8], ctx: &str) -> u64 {
    match decode(v) {
        Ok((k, version)) => {
            assert_eq!(k, key, "read a value of key {k} under key {key}; {ctx}");
            version
        }
        Err(e) => panic!("key {key}: {e}; {ctx}"),
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn key_name(k: u64) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

/// What the reader must see: key index → expected value (absent keys are not in it).
type Model = BTreeMap<u64, Vec<u8>>;

/// Opens a read-only handle; alongside a live writer this is what the feature is about.
#[track_caller]
fn open_reader(dir: &Path) -> Store {
    OpenOptions::new().read_only(true).open(dir).unwrap_or_else(|e| {
        panic!("a read-only open must succeed, whoever else has the store open: {e}")
    })
}

/// Checks every key of `model` (and `absent`) through `reader`, with `Store::get` and with
/// a fresh `Reader`, and that `len()` comes to the model's size.
#[track_caller]
fn check_model(reader: &Store, model: &Model, absent: &[u64], ctx: &str) {
    let r = reader.reader();
    for (&k, want) in model {
        let got = reader.get(key_name(k)).unwrap_or_else(|e| panic!("get {k}: {e}; {ctx}"));
        let got =
            got.unwrap_or_else(|| panic!("key {k} is missing though the writer synced it; {ctx}"));
        assert!(
            *got == want[..],
            "key {k}: Store::get reads {:?}, the writer synced {:?}; {ctx}",
            decode(&got),
            decode(want)
        );
        let got = r.get(key_name(k)).unwrap_or_else(|e| panic!("Reader::get {k}: {e}; {ctx}"));
        assert!(
            got == Some(&want[..]),
            "key {k}: Reader::get reads {:?}, the writer synced {:?}; {ctx}",
            got.map(decode),
            decode(want)
        );
    }
    for &k in absent {
        let got = reader.get(key_name(k)).unwrap_or_else(|e| panic!("get {k}: {e}; {ctx}"));
        assert!(
            got.is_none(),
            "key {k} was deleted and the delete synced, but reads {:?}; {ctx}",
            got.as_deref().map(decode)
        );
        let got = r.get(key_name(k)).unwrap_or_else(|e| panic!("Reader::get {k}: {e}; {ctx}"));
        assert!(got.is_none(), "key {k} deleted, Reader::get still finds it; {ctx}");
    }
    assert_len(reader, model.len() as u64, ctx);
}

/// Checks key `k` through `r`, a `Reader` taken earlier (`what`), against `want`.
#[track_caller]
fn check_reader(r: &Reader<'_>, k: u64, want: &[u8], what: &str, ctx: &str) {
    let got = r.get(key_name(k)).unwrap_or_else(|e| panic!("{what}: get {k}: {e}; {ctx}"));
    assert!(
        got == Some(want),
        "{what} reads key {k} as {:?}, the writer synced {:?}; {ctx}",
        got.map(decode),
        decode(want)
    );
}

/// `len()` of a follower tracks the writer's live count: it must come to `want` soon after
/// a sync (allowed a moment, since it need only be approximately current).
#[track_caller]
fn assert_len(reader: &Store, want: u64, ctx: &str) {
    let t = Instant::now();
    while reader.len() != want && t.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        reader.len(),
        want,
        "a follower's len() stays away from the writer's live count for 2 s; {ctx}"
    );
}

/// Puts `key` at `version` with a length derived from both (within `lens`), in `writer`
/// and `model`.
fn put(writer: &Store, model: &mut Model, key: u64, version: u64, lens: (usize, usize)) {
    let len = lens.0 + (mix(key * 31 + version) % (lens.1 - lens.0) as u64) as usize;
    let v = value(key, version, len);
    writer.put(key_name(key), &v).expect("put");
    model.insert(key, v);
}

/// A `Value` held from a reader, with the bytes it had when taken.
struct Held {
    key: u64,
    value: Value,
    bytes: Vec<u8>,
}

fn hold(reader: &Store, key: u64) -> Held {
    let value = reader.get(key_name(key)).expect("get");
    let value = value.unwrap_or_else(|| panic!("key {key}, synced, is missing from the reader"));
    Held { key, bytes: value.to_vec(), value }
}

#[track_caller]
fn check_held(held: &[Held], ctx: &str) {
    for h in held {
        assert!(
            *h.value == h.bytes[..],
            "a Value of key {} held from the reader changed under it; {ctx}",
            h.key
        );
    }
}

fn data_file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("data.mkv")).expect("stat data.mkv").len()
}

fn index_file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("index.mkv")).expect("stat index.mkv").len()
}

// ---- in-process followers ------------------------------------------------------------------

#[test]
fn reader_opened_before_the_writer_sees_what_it_synced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    Store::open(&dir).expect("create").close().expect("close");

    // The reader comes first; the writer must still be able to open (readers never block
    // the writer).
    let reader = open_reader(&dir);
    assert_eq!(reader.len(), 0);
    let writer = Store::open(&dir)
        .unwrap_or_else(|e| panic!("a writer must open while a read-only handle is open: {e}"));
    let mut model = Model::new();
    for k in 0..200 {
        put(&writer, &mut model, k, 1, (24, 400));
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &[], "after the first 200 puts and a sync");

    // Overwrites and deletes, then a sync: the reader sees exactly the new state.
    for k in (0..200).step_by(3) {
        put(&writer, &mut model, k, 2, (24, 400));
    }
    let mut absent = Vec::new();
    for k in (1..200).step_by(7) {
        assert!(writer.delete(key_name(k)).expect("delete"), "key {k} was live");
        model.remove(&k);
        absent.push(k);
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &absent, "after overwrites, deletes and a sync");

    // A single put followed by a sync shows up at once, through a Reader made before it.
    let r = reader.reader();
    put(&writer, &mut model, 5000, 1, (24, 400));
    writer.sync().expect("sync");
    check_reader(&r, 5000, &model[&5000], "a Reader taken before the put", "after a sync");
    drop(r);
    assert_len(&reader, model.len() as u64, "after one more put");

    // The follower writes nothing.
    assert!(matches!(reader.put(b"x", b"y"), Err(Error::ReadOnly)), "a reader wrote");
    assert!(matches!(reader.delete(key_name(0)), Err(Error::ReadOnly)), "a reader deleted");

    // A second reader opened while the writer is live sees the same.
    let second = open_reader(&dir);
    check_model(&second, &model, &absent, "a reader opened while the writer is live");

    // The writer's clean close leaves the readers reading the same store.
    writer.close().expect("close");
    check_model(&reader, &model, &absent, "after the writer closed");
    check_model(&second, &model, &absent, "second reader, after the writer closed");
}

#[test]
fn reader_follows_data_file_growth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let mut model = Model::new();
    put(&writer, &mut model, 0, 1, (100, 200));
    writer.sync().expect("sync");
    let reader = open_reader(&dir);
    let held = vec![hold(&reader, 0)];
    // A Reader made now, before any growth, must follow it too.
    let pinned = reader.reader();
    let first_len = data_file_len(&dir);

    // About 6 MiB of values in steps of ~0.5 MiB: the data file (1 MiB at creation) grows
    // several times.
    let mut k = 1;
    let mut step = 0;
    while model.values().map(Vec::len).sum::<usize>() < 6 << 20 {
        for _ in 0..128 {
            put(&writer, &mut model, k, 1, (2000, 6000));
            k += 1;
        }
        // Overwrite key 0 now and then: the held value must keep its old bytes.
        put(&writer, &mut model, 0, 2 + step, (100, 200));
        writer.sync().expect("sync");
        step += 1;
        let ctx = format!("growth step {step}, {k} keys, data file {} bytes", data_file_len(&dir));
        check_model(&reader, &model, &[], &ctx);
        let (last, what) = (k - 1, "a Reader taken before the growth");
        check_reader(&pinned, last, &model[&last], what, &ctx);
        check_held(&held, &ctx);
    }
    assert!(
        data_file_len(&dir) >= 4 * first_len,
        "the data file grew only from {first_len} to {} bytes: the test missed its point",
        data_file_len(&dir)
    );
    // A reader opened after the growth works as well.
    let late = open_reader(&dir);
    check_model(&late, &model, &[], "a reader opened after the growth");
    drop(pinned);
    check_held(&held, "after the pinned Reader was dropped");
    drop(writer);
    check_held(&held, "after the writer closed");
}

#[test]
fn reader_follows_index_growth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let reader = open_reader(&dir);
    let first_index = index_file_len(&dir);
    let mut model = Model::new();
    for k in 0..10 {
        put(&writer, &mut model, k, 1, (24, 64));
    }
    writer.sync().expect("sync");
    let held: Vec<Held> = (0..10).map(|k| hold(&reader, k)).collect();
    let pinned = reader.reader();

    // 20,000 keys: a fresh index (1024 slots) holds 704, so it is replaced by a bigger
    // file several times.
    const KEYS: u64 = 20_000;
    for k in 10..KEYS {
        put(&writer, &mut model, k, 1, (24, 64));
        if k % 2500 == 0 || k == KEYS - 1 {
            // Overwrite some of the held keys: held values keep their bytes.
            put(&writer, &mut model, k % 10, k, (24, 64));
            writer.sync().expect("sync");
            let ctx = format!("{} keys, index file {} bytes", k + 1, index_file_len(&dir));
            check_model(&reader, &model, &[], &ctx);
            check_reader(&pinned, k, &model[&k], "a Reader taken before the index grew", &ctx);
            check_held(&held, &ctx);
        }
    }
    assert!(
        index_file_len(&dir) >= 16 * first_index,
        "the index grew only from {first_index} to {} bytes: the test missed its point",
        index_file_len(&dir)
    );
    let late = open_reader(&dir);
    check_model(&late, &model, &[], "a reader opened after the index grew");
}

#[test]
fn reader_follows_compaction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let reader = open_reader(&dir);
    let mut model = Model::new();
    let mut absent = Vec::new();
    // Garbage to compact away: three versions of 3000 keys, and deletes.
    for version in 1..=3 {
        for k in 0..3000 {
            put(&writer, &mut model, k, version, (100, 1100));
        }
    }
    for k in (0..3000).step_by(10) {
        writer.delete(key_name(k)).expect("delete");
        model.remove(&k);
        absent.push(k);
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &absent, "before compaction");
    let live = (1..3000).step_by(97).filter(|k| model.contains_key(k));
    let mut held: Vec<Held> = live.map(|k| hold(&reader, k)).collect();
    let pinned = reader.reader();

    for round in 1..=3u64 {
        let before = data_file_len(&dir);
        let stats = writer.compact().expect("compact");
        assert!(
            stats.log_after < stats.log_before,
            "compaction {round} gave nothing back ({stats:?}): the test missed its point"
        );
        // Nothing was written since the last sync: the reader must see all of it, now
        // from the new files.
        let ctx = format!("right after compaction {round} (data file {before} bytes before)");
        check_model(&reader, &model, &absent, &ctx);
        check_held(&held, &ctx);

        // Writes after the swap go to the new files: overwrites, new keys, deletes.
        for k in (round..3000).step_by(3) {
            put(&writer, &mut model, k, 3 + round, (100, 1100));
        }
        for k in 3000 * round..3000 * round + 500 {
            put(&writer, &mut model, k, 1, (100, 1100));
        }
        for k in (5..3000).step_by(50 + round as usize) {
            if model.remove(&k).is_some() {
                assert!(writer.delete(key_name(k)).expect("delete"), "key {k} was live");
                absent.retain(|&a| a != k);
                absent.push(k);
            }
        }
        absent.retain(|a| !model.contains_key(a));
        writer.sync().expect("sync");
        let ctx = format!("writes after compaction {round}, then a sync");
        check_model(&reader, &model, &absent, &ctx);
        let (probe, what) = (3000 * round + 499, "a Reader taken before the first compaction");
        check_reader(&pinned, probe, &model[&probe], what, &ctx);
        check_held(&held, &ctx);
        held.push(hold(&reader, 3000 * round));
        // A reader opened after the compaction works as well.
        let late = open_reader(&dir);
        check_model(&late, &model, &absent, &format!("a reader opened after compaction {round}"));
    }
    drop(pinned);
    writer.close().expect("close");
    check_model(&reader, &model, &absent, "after the writer closed");
    check_held(&held, "after the writer closed");
    drop(reader);
    check_held(&held, "after the reader was dropped");
}

/// Result of the polling thread of `batches_are_all_or_nothing_to_a_follower`.
#[derive(Debug, Default)]
struct Polls {
    polls: u64,
    versions_seen: u64,
    last: u64,
}

#[test]
fn batches_are_all_or_nothing_to_a_follower() {
    const GROUP: u64 = 16;
    const BATCHES: u64 = 300;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let reader = Arc::new(open_reader(&dir));
    let synced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let poller = {
        let (reader, synced, done) = (Arc::clone(&reader), Arc::clone(&synced), Arc::clone(&done));
        thread::spawn(move || -> Result<Polls, String> {
            let mut p = Polls::default();
            let read = |k: u64, got: Option<&[u8]>| -> Result<u64, String> {
                match got {
                    None => Ok(0),
                    Some(v) => match decode(v)? {
                        (key, version) if key == k => Ok(version),
                        (key, _) => Err(format!("a value of key {key} under key {k}")),
                    },
                }
            };
            loop {
                let finished = done.load(Ordering::Acquire);
                let floor = synced.load(Ordering::Acquire).max(p.last);
                // At every moment all sixteen keys hold one version, and it only rises: so
                // every read, in the order made, is at least the one before (and at least
                // the synced version), unless a batch showed in part. The keys are read in
                // the order the batch writes them, so a batch seen in part shows as a
                // later key older than an earlier one.
                let mut seen = Vec::with_capacity(3 * GROUP as usize);
                let r = reader.reader();
                for k in 0..GROUP {
                    let got = r.get(key_name(k)).map_err(|e| format!("Reader::get: {e}"))?;
                    seen.push(read(k, got)?);
                }
                for k in 0..GROUP {
                    let got = reader.get(key_name(k)).map_err(|e| format!("get: {e}"))?;
                    seen.push(read(k, got.as_deref())?);
                }
                // A snapshot sees one moment: every key at the same version.
                let snap = reader.snapshot();
                for k in 0..GROUP {
                    let got = snap.get(key_name(k)).map_err(|e| format!("snapshot get: {e}"))?;
                    seen.push(read(k, got)?);
                }
                let snapshot = &seen[2 * GROUP as usize..];
                if seen.windows(2).any(|w| w[1] < w[0])
                    || seen[0] < floor
                    || snapshot.iter().any(|&v| v != snapshot[0])
                {
                    let g = GROUP as usize;
                    return Err(format!(
                        "the sixteen keys of each batch read, in order, at versions {:?} \
                         (Reader::get), {:?} (Store::get), {:?} (Snapshot::get), after the \
                         writer had synced (or this thread had seen) version {floor}: a batch \
                         seen in part, or a version going back",
                        &seen[..g],
                        &seen[g..2 * g],
                        snapshot
                    ));
                }
                let newest = *seen.last().expect("reads");
                if newest != p.last {
                    p.versions_seen += 1;
                }
                p.last = newest;
                p.polls += 1;
                if finished {
                    return Ok(p);
                }
            }
        })
    };

    let mut filler = 1000u64;
    for version in 1..=BATCHES {
        // The sixteen polled keys, plus new keys (the index grows inside batches) and big
        // values (so does the log).
        let mut batch = Batch::new();
        for k in 0..GROUP {
            let len = 100 + (mix(k * 7 + version) % 1500) as usize;
            batch.put(key_name(k), value(k, version, len));
        }
        for _ in 0..40 {
            batch.put(key_name(filler), value(filler, 1, 200));
            filler += 1;
        }
        writer.write(batch).expect("write batch");
        if version % 10 == 0 {
            writer.sync().expect("sync");
            synced.store(version, Ordering::Release);
        }
        if version == BATCHES / 2 {
            writer.compact().expect("compact");
        }
        thread::sleep(Duration::from_micros(300));
    }
    writer.sync().expect("sync");
    synced.store(BATCHES, Ordering::Release);
    done.store(true, Ordering::Release);
    let polls = match poller.join() {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => panic!("the follower failed: {e}"),
        Err(_) => panic!("the polling thread panicked"),
    };
    eprintln!("batch follower: {polls:?}");
    assert_eq!(polls.last, BATCHES, "the last poll, after the final sync, saw {polls:?}");
    assert!(
        polls.polls >= 20 && polls.versions_seen >= 3,
        "the follower polled too little to tell anything: {polls:?}"
    );
    assert_len(&reader, GROUP + 40 * BATCHES, "after all batches");
}

#[test]
fn reader_follows_a_new_writer_after_a_crash_and_after_a_clean_close() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let mut model = Model::new();
    for k in 0..2000 {
        put(&writer, &mut model, k, 1, (50, 500));
    }
    writer.sync().expect("sync");
    let reader = open_reader(&dir);
    check_model(&reader, &model, &[], "before the crash");
    let mut held: Vec<Held> = (0..2000).step_by(101).map(|k| hold(&reader, k)).collect();

    // Unsynced overwrites, then the writer dies as if killed: put had returned, so they
    // survive in the page cache, and the reader may see them or the synced version.
    for k in (0..2000).step_by(2) {
        put(&writer, &mut model, k, 2, (50, 500));
    }
    writer.simulate_crash();
    for k in 0..2000u64 {
        let got = reader.get(key_name(k)).expect("get with the writer dead");
        let got = got.unwrap_or_else(|| panic!("key {k} missing after the writer died"));
        let v = version_of(k, &got, "with the writer dead");
        let newest = if k % 2 == 0 { 2 } else { 1 };
        assert!(v == 1 || v == newest, "key {k} at version {v} with the writer dead");
    }
    check_held(&held, "with the writer dead");

    // A new writer recovers the store (the index was dirty) and goes on: overwrites, new
    // keys past several index growths, deletes, a compaction, more writes.
    let writer = Store::open(&dir)
        .unwrap_or_else(|e| panic!("a new writer must open after the old one died: {e}"));
    assert!(!writer.recovery().was_clean(), "the crashed writer left a dirty index");
    check_model(&writer, &model, &[], "the new writer's recovered state (everything put returned)");
    writer.sync().expect("sync");
    check_model(&reader, &model, &[], "the follower, once the new writer recovered and synced");
    for k in (0..2000).step_by(3) {
        put(&writer, &mut model, k, 3, (50, 500));
    }
    for k in 2000..12_000 {
        put(&writer, &mut model, k, 1, (50, 500));
    }
    let mut absent = Vec::new();
    for k in (7..12_000).step_by(13) {
        assert!(writer.delete(key_name(k)).expect("delete"), "key {k} was live");
        model.remove(&k);
        absent.push(k);
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &absent, "the new writer's writes after a sync");
    writer.compact().expect("compact");
    for k in (1..12_000).step_by(5) {
        put(&writer, &mut model, k, 4, (50, 500));
    }
    absent.retain(|a| !model.contains_key(a));
    writer.sync().expect("sync");
    check_model(&reader, &model, &absent, "the new writer's compaction and writes after it");
    check_held(&held, "after the new writer compacted");
    held.push(hold(&reader, 12_000 - 1));

    // A clean close, then a third writer: the reader follows that one too.
    writer.close().expect("close");
    check_model(&reader, &model, &absent, "after the second writer closed cleanly");
    let writer = Store::open(&dir).expect("third writer");
    assert!(!writer.recovery().index_rebuilt, "a clean close needs no rebuild");
    for k in 20_000..20_500 {
        put(&writer, &mut model, k, 1, (50, 500));
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &absent, "the third writer's writes");
    check_held(&held, "with the third writer");
    let late = open_reader(&dir);
    check_model(&late, &model, &absent, "a reader opened under the third writer");
}

#[test]
fn reader_opened_on_a_crashed_store_follows_the_next_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    let mut model = Model::new();
    for k in 0..3000 {
        put(&writer, &mut model, k, 1, (50, 300));
    }
    writer.simulate_crash();
    // No writer: the reader resumes the dead writer's index in its private mapping.
    let reader = open_reader(&dir);
    assert!(reader.recovery().resumed_from.is_some(), "{:?}", reader.recovery());
    check_model(&reader, &model, &[], "a reader of a crashed store, no writer");
    let held = vec![hold(&reader, 1), hold(&reader, 2999)];

    // Then a writer comes, recovers the store on disk and writes past index and log growth.
    let writer = Store::open(&dir)
        .unwrap_or_else(|e| panic!("a writer must open beside a read-only handle: {e}"));
    for k in (0..3000).step_by(2) {
        put(&writer, &mut model, k, 2, (50, 300));
    }
    for k in 3000..15_000 {
        put(&writer, &mut model, k, 1, (50, 300));
    }
    writer.sync().expect("sync");
    check_model(&reader, &model, &[], "the writer after the crash, followed by the reader");
    check_held(&held, "after the next writer's writes");
}

#[test]
fn one_writer_at_a_time_and_readers_never_block_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let writer = Store::open(&dir).expect("create");
    writer.put(b"a", b"1").expect("put");

    let second_writer = |when: &str| match Store::open(&dir) {
        Err(Error::Locked { path, read_only: false }) => {
            assert_eq!(path, dir, "Locked names the store; {when}");
        }
        Err(e) => panic!("a second writer must get Locked {when}, got: {e}"),
        Ok(_) => panic!("a second writer opened the store {when}"),
    };
    second_writer("while a writer is live");
    // Readers come and go; the writer goes on undisturbed and a second writer stays out.
    let readers: Vec<Store> = (0..3).map(|_| open_reader(&dir)).collect();
    second_writer("while a writer and three readers are live");
    let t = Instant::now();
    writer.put(b"b", b"2").expect("put beside readers");
    writer.sync().expect("sync beside readers");
    assert!(t.elapsed() < Duration::from_secs(5), "the writer waited {:?}", t.elapsed());
    for r in &readers {
        let got = r.get(b"b").expect("get");
        assert!(got.as_deref() == Some(b"2"), "a reader reads {got:?} for b after the sync");
    }

    // The writer goes; with the readers still open a new writer gets in at once.
    writer.close().expect("close");
    let t = Instant::now();
    let writer =
        Store::open(&dir).unwrap_or_else(|e| panic!("readers must not keep a writer out: {e}"));
    assert!(t.elapsed() < Duration::from_secs(5), "the open waited {:?}", t.elapsed());
    second_writer("while the new writer is live");
    writer.put(b"c", b"3").expect("put");
    writer.sync().expect("sync");
    for r in &readers {
        let got = r.get(b"c").expect("get");
        assert!(got.as_deref() == Some(b"3"), "a reader reads {got:?} for c, put by writer 2");
        assert_len(r, 3, "three keys written");
    }
    // After a simulated kill of the writer, the next writer gets in too.
    writer.simulate_crash();
    let writer = Store::open(&dir)
        .unwrap_or_else(|e| panic!("a writer must open after the last one was killed: {e}"));
    second_writer("after a crash and a new writer");
    writer.put(b"d", b"4").expect("put");
    writer.sync().expect("sync");
    for r in &readers {
        let got = r.get(b"d").expect("get");
        assert!(got.as_deref() == Some(b"4"), "a reader reads {got:?} for d, put by writer 3");
        assert_len(r, 4, "four keys written, by three writers in turn");
    }
    drop(writer);
    drop(readers);
}

#[test]
fn read_only_open_without_any_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let mut model = Model::new();
    let writer = Store::open(&dir).expect("create");
    for k in 0..1500 {
        put(&writer, &mut model, k, 1, (24, 300));
    }
    writer.close().expect("close");

    // Clean close: headers only, two readers at once.
    let a = open_reader(&dir);
    let b = open_reader(&dir);
    assert!(!a.recovery().index_rebuilt, "clean close needs no rebuild: {:?}", a.recovery());
    check_model(&a, &model, &[], "after a clean close");
    check_model(&b, &model, &[], "second reader after a clean close");
    drop((a, b));

    // After a crash: the reader rebuilds the index in memory and sees every returned put.
    let writer = Store::open(&dir).expect("reopen");
    for k in (0..1500).step_by(2) {
        put(&writer, &mut model, k, 2, (24, 300));
    }
    writer.simulate_crash();
    let files =
        || ["data.mkv", "index.mkv", "live.mkv"].map(|f| std::fs::read(dir.join(f)).expect("read"));
    let before = files();
    let a = open_reader(&dir);
    assert!(!a.recovery().was_clean(), "a crashed writer leaves a dirty index");
    check_model(&a, &model, &[], "after a crash, no writer");
    assert!(matches!(a.put(b"x", b"y"), Err(Error::ReadOnly)), "a reader wrote");
    drop(a);
    // The reader changed nothing (it resumed into a private mapping): a writer still
    // recovers (and finds the same).
    assert!(files() == before, "the reader changed the files");
    let writer = Store::open(&dir).expect("writer after the reader");
    assert!(!writer.recovery().was_clean(), "the reader must not have repaired the store");
    check_model(&writer, &model, &[], "the writer after the crash");
}

// ---- edge cases found in review ----------------------------------------------------------

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    (tmp, dir)
}

fn get_vec(store: &Store, key: &str) -> Option<Vec<u8>> {
    store.get(key).expect("get").map(|v| v.to_vec())
}

/// `verify` on a handle that opened alone, after a writer came, wrote (past the handle's
/// mapping) and compacted: no panic, no false problems.
#[test]
fn verify_on_a_handle_that_opened_alone_then_followed() {
    let (_t, dir) = store_dir();
    let w = Store::open(&dir).expect("writer");
    for i in 0..5000u32 {
        w.put(format!("k{}", i % 10), vec![7u8; 4000]).expect("put");
    }
    w.close().expect("close");
    let r = open_reader(&dir);
    let w = Store::open(&dir).expect("writer");
    for i in 100..200u32 {
        w.put(format!("n{i}"), "v").expect("put");
    }
    w.sync().expect("sync");
    let report = r.verify().expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problems);
    w.compact().expect("compact");
    w.put("x", "y").expect("put");
    w.sync().expect("sync");
    let report = r.verify().expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.live_keys, 111);
}

/// `verify` on a follower in the writer's own process while the writer appends (past the
/// follower's end), syncs (rewriting the header pages) and grows the log: it reads only the
/// published records, so it never panics and finds nothing wrong.
#[test]
fn verify_on_a_follower_while_its_writer_writes_syncs_and_grows() {
    let (_t, dir) = store_dir();
    let w = Arc::new(Store::open(&dir).expect("writer"));
    for i in 0..2000u32 {
        w.put(format!("k{i}"), vec![1u8; 100]).expect("put");
    }
    let r = open_reader(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (w, stop) = (Arc::clone(&w), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) || i < 4000 {
                w.put(format!("n{i}"), vec![i as u8; 1000]).expect("put");
                if i.is_multiple_of(50) {
                    w.sync().expect("sync");
                }
                i += 1;
            }
            i
        })
    };
    let mut ends = Vec::new();
    for _ in 0..20 {
        let report = r.verify().expect("verify runs");
        assert!(report.is_ok(), "{:?}", report.problems);
        ends.push(report.log_end);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer thread");
    assert!(ends.windows(2).all(|e| e[0] <= e[1]), "{ends:?}");
    let report = r.verify().expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.live_keys, 2000 + u64::from(written));
    assert!(data_file_len(&dir) >= 4 << 20, "the log never grew");
}

/// A follower's snapshot held while the writer grows the log past the follower's mapping,
/// overwrites a key and compacts: it still reads its own moment, every key of it.
#[test]
fn a_snapshot_survives_growth_then_compaction() {
    let (_t, dir) = store_dir();
    let w = Store::open(&dir).expect("writer");
    for i in 0..100u32 {
        w.put(format!("k{i}"), "old").expect("put");
    }
    w.sync().expect("sync");
    let r = open_reader(&dir);
    let snap = r.snapshot();
    for j in 0..100 {
        w.put(format!("filler{}", j % 3), vec![1u8; 100_000]).expect("put");
    }
    w.put("k5", "new").expect("put");
    w.compact().expect("compact");
    w.sync().expect("sync");
    assert_eq!(snap.get("k5").expect("get").map(<[u8]>::to_vec), Some(b"old".to_vec()));
    let all: Vec<_> = snap.iter().collect::<mapkv::Result<_>>().expect("iterate");
    assert_eq!(all.len(), 100);
    assert_eq!(get_vec(&r, "k5"), Some(b"new".to_vec()));
}

/// A follower's snapshot held while writers come and go (each `mapkv put` is one).
#[test]
fn a_snapshot_survives_writer_sessions() {
    let (_t, dir) = store_dir();
    let w = Store::open(&dir).expect("writer");
    w.put("a", "1").expect("put");
    w.sync().expect("sync");
    let r = open_reader(&dir);
    w.put("b", "2").expect("put");
    w.sync().expect("sync");
    let snap = r.snapshot();
    w.put("b", "3").expect("put");
    w.close().expect("close");
    for key in ["c", "d"] {
        let w = Store::open(&dir).expect("writer");
        w.put(key, "x").expect("put");
        w.close().expect("close");
    }
    let w = Store::open(&dir).expect("writer");
    w.put("b", "4").expect("put");
    assert_eq!(snap.get("b").expect("get"), Some(&b"2"[..]));
    assert_eq!(snap.get("a").expect("get"), Some(&b"1"[..]));
    assert_eq!(snap.get("d").expect("get"), None);
    assert_eq!(get_vec(&r, "b"), Some(b"4".to_vec()));
    assert_eq!(get_vec(&r, "d"), Some(b"x".to_vec()));
}

/// A reader opening alone while a writer is opening: whichever way the race goes, it
/// follows the writer afterwards.
#[test]
fn a_reader_opening_as_a_writer_opens_follows_it() {
    for round in 0..60u64 {
        let (_t, dir) = store_dir();
        let w = Store::open(&dir).expect("writer");
        for i in 0..2000u32 {
            w.put(format!("k{i}"), "v").expect("put");
        }
        if round % 2 == 0 {
            w.simulate_crash(); // the next writer recovers for a while
        } else {
            w.close().expect("close");
        }
        let d = dir.clone();
        let opener = thread::spawn(move || {
            thread::sleep(Duration::from_micros(round % 15 * 40));
            Store::open(&d).expect("writer")
        });
        let r = open_reader(&dir);
        let w = opener.join().expect("opener");
        w.put("new", "1").expect("put");
        w.sync().expect("sync");
        assert_eq!(get_vec(&r, "new"), Some(b"1".to_vec()), "round {round}");
        w.put("k1", "changed").expect("put");
        w.sync().expect("sync");
        assert_eq!(get_vec(&r, "k1"), Some(b"changed".to_vec()), "round {round}");
    }
}

/// A damaged live page that claims more log than the file holds: reads and snapshots
/// still return (from the files the handle has), nothing spins.
#[test]
fn a_page_claiming_more_than_the_file_holds_does_not_hang_readers() {
    use std::os::unix::fs::FileExt;
    let (_t, dir) = store_dir();
    let w = Store::open(&dir).expect("writer");
    w.put("a", "1").expect("put");
    w.sync().expect("sync");
    let r = open_reader(&dir);
    let page = std::fs::OpenOptions::new().write(true).open(dir.join("live.mkv")).expect("page");
    page.write_all_at(&(1u64 << 40).to_le_bytes(), 12 * 8).expect("damage published");
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..1000 {
                let _ = r.get("a");
            }
            let snap = r.snapshot();
            tx.send(snap.get("a").map(|v| v.map(<[u8]>::to_vec))).expect("send");
        });
        let got = rx.recv_timeout(Duration::from_secs(20)).expect("reads return");
        assert!(got.is_ok() || matches!(got, Err(Error::Corrupt { .. })), "{got:?}");
    });
}

/// Another store's files renamed into the directory, opened by a writer: a follower of
/// the first store does not take them for its own (other hash and checksum seeds).
#[test]
fn a_follower_does_not_attach_to_another_stores_files() {
    let (tmp, dir) = store_dir();
    let other = tmp.path().join("other");
    let w = Store::open(&dir).expect("writer");
    w.put("a", "s1").expect("put");
    w.close().expect("close");
    let w = Store::open(&other).expect("other");
    w.put("a", "s2").expect("put");
    w.put("b", "s2").expect("put");
    w.close().expect("close");
    let r = open_reader(&dir);
    for f in ["data.mkv", "index.mkv"] {
        std::fs::rename(other.join(f), dir.join(f)).expect("swap in");
    }
    let w = Store::open(&dir).expect("writer of the other store");
    w.put("c", "s2").expect("put");
    w.sync().expect("sync");
    assert!(!r.stats().following);
    assert_eq!(get_vec(&r, "a"), Some(b"s1".to_vec()), "still its own files");
    assert_eq!(r.len(), 1);
}

/// Panics at the `n`th append once armed: a writer killed in the middle of a batch.
struct KillMidBatch(AtomicU64);

impl mapkv::testing::Observer for KillMidBatch {
    fn before(&self, op: mapkv::testing::Op<'_>) -> std::io::Result<()> {
        if let mapkv::testing::Op::Append { .. } = op
            && self.0.load(Ordering::SeqCst) > 0
            && self.0.fetch_sub(1, Ordering::SeqCst) == 1
        {
            panic!("killed mid-batch");
        }
        Ok(())
    }
}

/// A follower's snapshot held while a writer dies inside a batch (its records written and
/// in the index, never visible) and a new writer recovers and writes where they were, and
/// (second round) compacts: the snapshot never gives a wrong answer; at worst an error.
#[test]
fn a_snapshot_never_reads_a_new_writers_records_through_the_old_index() {
    for compact in [false, true] {
        let (_t, dir) = store_dir();
        let kill = Arc::new(KillMidBatch(AtomicU64::new(0)));
        let a = OpenOptions::new().observer(kill.clone()).open(&dir).expect("writer");
        for i in 0..10 {
            a.put(format!("k{i}"), "old").expect("put");
        }
        a.sync().expect("sync");
        let r = open_reader(&dir);
        let snap = r.snapshot();
        kill.0.store(3, Ordering::SeqCst);
        let mut batch = Batch::new();
        batch.put("k3", "new").put("k4", "new").put("k5", "new");
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.write(batch)));
        assert!(died.is_err(), "the writer must die inside the batch");
        a.simulate_crash();
        let b = Store::open(&dir).expect("next writer");
        b.put("k7", "new").expect("put");
        b.put("k8", "new").expect("put");
        if compact {
            b.compact().expect("compact");
        }
        b.sync().expect("sync");
        assert_eq!(get_vec(&r, "k3"), Some(b"old".to_vec()), "the batch never happened");
        assert_eq!(get_vec(&r, "k7"), Some(b"new".to_vec()));
        for k in ["k3", "k4", "k7"] {
            if let Ok(got) = snap.get(k) {
                assert_eq!(got, Some(&b"old"[..]), "{k}, compact {compact}");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for item in snap.iter() {
            let Ok((k, v)) = item else { continue };
            assert_eq!(v, b"old", "compact {compact}");
            assert!(seen.insert(k.to_vec()), "a key twice, compact {compact}");
        }
    }
}

/// `verify` on a follower left on files a compaction-like swap replaced (another store's
/// files renamed in): it checks its own, final files.
#[test]
fn verify_on_a_follower_left_on_replaced_files() {
    let (tmp, dir) = store_dir();
    let other = tmp.path().join("other");
    let w = Store::open(&dir).expect("writer");
    w.put("a", "s1").expect("put");
    w.close().expect("close");
    let w = Store::open(&other).expect("other");
    w.put("a", "s2").expect("put");
    w.close().expect("close");
    let w0 = Store::open(&dir).expect("writer");
    let r = open_reader(&dir);
    drop(w0);
    for f in ["data.mkv", "index.mkv"] {
        std::fs::rename(other.join(f), dir.join(f)).expect("swap in");
    }
    let w = Store::open(&dir).expect("writer of the other store");
    w.put("c", "s2").expect("put");
    w.sync().expect("sync");
    assert_eq!(get_vec(&r, "a"), Some(b"s1".to_vec()));
    let report = r.verify().expect("verify of the handle's own files");
    assert!(report.is_ok(), "{:?}", report.problems);
}

// ---- readers in other processes ------------------------------------------------------------

/// Names the role a re-executed child plays: `writer` or `reader`.
const ROLE_ENV: &str = "MAPKV_FOLLOW_ROLE";
/// The working directory of the test: the store is `<dir>/db`, beside the side files.
const DIR_ENV: &str = "MAPKV_FOLLOW_DIR";
/// `<keys> <ops> <sync_every> <pace_ms>`: the history (see `Plan`).
const PLAN_ENV: &str = "MAPKV_FOLLOW_PLAN";
/// A reader's number, or a writer's session (1 for the first writer).
const ID_ENV: &str = "MAPKV_FOLLOW_ID";
/// Prefix of every line a child reports on; anything else on stdout is libtest's.
const MARK: &str = "@follow ";
/// Watchdog for anything that should happen soon; only a hang reaches it.
const HANG_GUARD: Duration = Duration::from_secs(120);
/// How long the parent leaves the readers alone with a dead writer.
const GAP: Duration = Duration::from_millis(400);
/// Keys per batch; a batch never crosses a sync point.
const BATCH: u64 = 16;

const PROCESS_TEST: &str = "readers_in_other_processes_follow_a_writer_killed_and_replaced";

/// The writer's deterministic history: op `j` puts key `j % keys` at version `j / keys`.
/// Ops `16i..16i+16` with `i % 5 == 2` go in one batch. After every `sync_every` ops the
/// writer syncs, then publishes the count of ops done to the side file `progress` (write
/// and rename); it compacts at four points (one fifth of the way, two fifths, ...), and
/// sleeps `pace_ms` per sync interval (a little after every 16 ops) to spread the history
/// over a few seconds.
#[derive(Debug, Clone, Copy)]
struct Plan {
    keys: u64,
    ops: u64,
    sync_every: u64,
    pace_ms: u64,
}

impl Plan {
    /// From `MAPKV_FOLLOW_KEYS`, `MAPKV_FOLLOW_OPS`, `MAPKV_FOLLOW_SYNC_EVERY` and
    /// `MAPKV_FOLLOW_PACE_MS` for longer runs; defaults keep the test near 20 s in a debug
    /// build on two cores.
    fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name).ok().map_or(default, |s| {
                s.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {s:?}"))
            })
        };
        let sync_every = var("MAPKV_FOLLOW_SYNC_EVERY", 256).div_ceil(BATCH).max(1) * BATCH;
        let keys = var("MAPKV_FOLLOW_KEYS", 8000).max(1);
        let ops = var("MAPKV_FOLLOW_OPS", 40_000).div_ceil(sync_every).max(10) * sync_every;
        Self { keys, ops, sync_every, pace_ms: var("MAPKV_FOLLOW_PACE_MS", 15) }
    }

    fn encode(&self) -> String {
        format!("{} {} {} {}", self.keys, self.ops, self.sync_every, self.pace_ms)
    }

    fn decode(s: &str) -> Self {
        let f: Vec<u64> = s.split(' ').map(|x| x.parse().expect("numeric plan")).collect();
        assert_eq!(f.len(), 4, "plan {s:?}");
        Self { keys: f[0], ops: f[1], sync_every: f[2], pace_ms: f[3] }
    }

    fn key(&self, op: u64) -> u64 {
        op % self.keys
    }

    /// The value op `op` writes.
    fn value(&self, op: u64) -> Vec<u8> {
        let (k, version) = (self.key(op), op / self.keys);
        value(k, version, self.value_len(k, version))
    }

    /// 24 to ~2000 bytes, so the log grows by tens of MiB over the run.
    fn value_len(&self, k: u64, version: u64) -> usize {
        24 + (mix(k.wrapping_mul(0x9E37) ^ version) % 1976) as usize
    }

    /// The op that wrote key `k` last among the first `count` ops.
    fn latest_op(&self, k: u64, count: u64) -> Option<u64> {
        (count > k).then(|| k + self.keys * ((count - 1 - k) / self.keys))
    }

    /// Whether op `op` starts a batch (of ops `op..op + BATCH`).
    fn starts_batch(&self, op: u64) -> bool {
        op.is_multiple_of(BATCH) && (op / BATCH) % 5 == 2 && op + BATCH <= self.ops
    }

    /// Whether `count` ops done leaves a batch half done.
    fn inside_batch(&self, count: u64) -> bool {
        let start = count / BATCH * BATCH;
        !count.is_multiple_of(BATCH) && self.starts_batch(start)
    }

    /// The op counts after which the writer compacts.
    fn compactions(&self) -> Vec<u64> {
        (1..5).map(|i| self.ops * i / 5 / self.sync_every * self.sync_every).collect()
    }
}

/// What the side file says: ops done and synced, the writer's session, compactions done,
/// and whether the history is complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    count: u64,
    session: u64,
    compactions: u64,
    done: bool,
}

fn progress_path(dir: &Path) -> PathBuf {
    dir.join("progress")
}

/// The marker file that says the parent has killed the writer and started none yet.
fn gap_path(dir: &Path) -> PathBuf {
    dir.join("gap")
}

fn read_progress(dir: &Path) -> Progress {
    match std::fs::read_to_string(progress_path(dir)) {
        Ok(s) => {
            let f: Vec<u64> = s
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("bad progress file {s:?}")))
                .collect();
            assert_eq!(f.len(), 4, "bad progress file {s:?}");
            Progress { count: f[0], session: f[1], compactions: f[2], done: f[3] == 1 }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Progress::default(),
        Err(e) => panic!("read the progress file: {e}"),
    }
}

/// Publishes `p` atomically: write a temporary file, rename it over the side file.
fn publish(dir: &Path, p: Progress) -> Result<(), String> {
    let tmp = dir.join("progress.tmp");
    let line = format!("{} {} {} {}\n", p.count, p.session, p.compactions, u8::from(p.done));
    std::fs::write(&tmp, line).map_err(|e| format!("write progress: {e}"))?;
    std::fs::rename(&tmp, progress_path(dir)).map_err(|e| format!("publish progress: {e}"))
}

/// Writes one marked line to stdout and flushes it; exits quietly if the parent is gone.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let ok = out.write_all(format!("{MARK}{line}\n").as_bytes()).and_then(|()| out.flush());
    if ok.is_err() {
        std::process::exit(70);
    }
}

/// Called first in the multi-process test: in a child, plays the role named by
/// `MAPKV_FOLLOW_ROLE` and exits the process; in the parent, returns.
fn dispatch_child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("child without MAPKV_FOLLOW_DIR"));
    let plan = Plan::decode(&std::env::var(PLAN_ENV).expect("child without MAPKV_FOLLOW_PLAN"));
    let id: u64 = std::env::var(ID_ENV).ok().and_then(|s| s.parse().ok()).expect("numeric id");
    let result = match role.as_str() {
        "writer" => child_writer(&dir, plan, id),
        "reader" => child_reader(&dir, plan, id),
        other => Err(format!("unknown role {other}")),
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            report(&format!("E {e}"));
            eprintln!("{role} {id} failed: {e}");
            3
        }
    };
    std::process::exit(code);
}

/// Child role `writer`, session `session`: opens the store, checks what it recovered
/// against the history (session > 1), and runs the history on from there.
fn child_writer(dir: &Path, plan: Plan, session: u64) -> Result<(), String> {
    let db = dir.join("db");
    let before = read_progress(dir);
    let t = Instant::now();
    let store = Store::open(&db).map_err(|e| format!("writer {session} open: {e}"))?;
    let rec = store.recovery();
    report(&format!(
        "open rebuilt={} replayed={} cut={:?} micros={}",
        rec.index_rebuilt,
        rec.records_replayed,
        rec.cut,
        t.elapsed().as_micros()
    ));
    // The recovered state must be exactly the first `from` ops of the history, for some
    // `from` between the last published count and what the writer could have reached.
    let mut max_op = None;
    for k in 0..plan.keys {
        if let Some(v) = store.get(key_name(k)).map_err(|e| format!("get {k}: {e}"))? {
            let (key, version) = decode(&v).map_err(|e| format!("recovered key {k}: {e}"))?;
            if key != k {
                return Err(format!("recovered key {k} holds a value of key {key}"));
            }
            max_op = max_op.max(Some(version * plan.keys + k));
        }
    }
    let from = max_op.map_or(0, |j| j + 1);
    if from < before.count || from > before.count + plan.sync_every {
        return Err(format!(
            "the recovered store holds the first {from} ops of the history, but {} were \
             synced and at most {} written",
            before.count,
            before.count + plan.sync_every
        ));
    }
    if plan.inside_batch(from) {
        return Err(format!("the recovered store ends inside a batch, after op {}", from - 1));
    }
    for k in 0..plan.keys {
        let got = store.get(key_name(k)).map_err(|e| format!("get {k}: {e}"))?;
        let want = plan.latest_op(k, from).map(|j| plan.value(j));
        if got.as_deref() != want.as_deref() {
            return Err(format!(
                "recovered key {k} reads {:?}, the first {from} ops of the history leave {:?}",
                got.as_deref().map(decode),
                want.as_deref().map(decode)
            ));
        }
    }
    if store.len() != from.min(plan.keys) {
        return Err(format!("recovered len {} after {from} ops", store.len()));
    }
    report(&format!("recovered {from} synced {}", before.count));

    let mut p = Progress { count: from, session, compactions: before.compactions, done: false };
    store.sync().map_err(|e| format!("sync: {e}"))?;
    publish(dir, p)?;
    let compactions = plan.compactions();
    let mut j = from;
    while j < plan.ops {
        if j.is_multiple_of(BATCH) {
            // The pace, spread over the interval, so a kill lands between syncs.
            thread::sleep(Duration::from_micros(plan.pace_ms * 1000 * BATCH / plan.sync_every));
        }
        if plan.starts_batch(j) {
            let mut batch = Batch::new();
            for op in j..j + BATCH {
                batch.put(key_name(plan.key(op)), plan.value(op));
            }
            store.write(batch).map_err(|e| format!("batch at op {j}: {e}"))?;
            j += BATCH;
        } else {
            store.put(key_name(plan.key(j)), plan.value(j)).map_err(|e| format!("op {j}: {e}"))?;
            j += 1;
        }
        if j.is_multiple_of(plan.sync_every) {
            store.sync().map_err(|e| format!("sync at {j}: {e}"))?;
            p.count = j;
            publish(dir, p)?;
            if compactions.contains(&j) {
                let stats = store.compact().map_err(|e| format!("compact at {j}: {e}"))?;
                p.compactions += 1;
                publish(dir, p)?;
                report(&format!("compacted at {j}: {stats:?}"));
            }
        }
    }
    store.sync().map_err(|e| format!("final sync: {e}"))?;
    p.count = plan.ops;
    p.done = true;
    publish(dir, p)?;
    report("done");
    store.close().map_err(|e| format!("close: {e}"))
}

/// What a reader child counts.
#[derive(Debug, Default)]
struct ReaderCounts {
    gets: u64,
    /// Gets whose key the synced history had written: the version had a floor to meet.
    floor_checks: u64,
    full_passes: u64,
    /// Gets per writer session seen in the side file (0: before any writer published; 2:
    /// the writer started after the kill).
    per_session: [u64; 3],
    /// Gets while the parent said no writer was running.
    gap_gets: u64,
    /// Times a key was seen at a newer version than this reader saw before.
    advances: u64,
    /// Of those, the ones while the second writer ran.
    advances_after_restart: u64,
}

/// Child role `reader`: follows the writer until the side file says the history is done,
/// checking every value it reads (see `check_read`), then checks the final state exactly.
fn child_reader(dir: &Path, plan: Plan, id: u64) -> Result<(), String> {
    let db = dir.join("db");
    let store = OpenOptions::new()
        .read_only(true)
        .open(&db)
        .map_err(|e| format!("reader {id} read-only open: {e}"))?;
    report("ready");
    let started = Instant::now();
    let mut seen: Vec<Option<u64>> = vec![None; plan.keys as usize];
    let mut held: Vec<(u64, Value, Vec<u8>)> = Vec::new();
    let mut c = ReaderCounts::default();
    let mut x = mix(id ^ u64::from(std::process::id()));
    let mut iteration = 0u64;
    loop {
        if started.elapsed() > HANG_GUARD {
            return Err(format!("the history did not finish within {HANG_GUARD:?}: {c:?}"));
        }
        let gap = gap_path(dir).exists();
        let p0 = read_progress(dir);
        if p0.done {
            break;
        }
        let full = iteration.is_multiple_of(16);
        let sample: Vec<u64> = if full {
            (0..plan.keys).collect()
        } else {
            (0..200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % plan.keys
                })
                .collect()
        };
        let reader = store.reader();
        let mut max_op = None;
        for (i, &k) in sample.iter().enumerate() {
            // Alternate the two read paths; hold a value now and then.
            let got = if i % 2 == 0 {
                let v = store.get(key_name(k)).map_err(|e| format!("get {k}: {e}"))?;
                let bytes = v.as_deref().map(<[u8]>::to_vec);
                if let (Some(v), Some(b)) = (v, &bytes)
                    && held.len() < 64
                    && iteration.is_multiple_of(7)
                    && i == 0
                {
                    held.push((k, v, b.clone()));
                }
                bytes
            } else {
                reader
                    .get(key_name(k))
                    .map_err(|e| format!("Reader::get {k}: {e}"))?
                    .map(<[u8]>::to_vec)
            };
            let advances = c.advances;
            let op = check_read(&plan, k, got.as_deref(), p0.count, &mut seen, &mut c)?;
            max_op = max_op.max(op);
            c.gets += 1;
            c.per_session[p0.session.min(2) as usize] += 1;
            if p0.session >= 2 {
                c.advances_after_restart += c.advances - advances;
            }
            c.gap_gets += u64::from(gap);
        }
        drop(reader);
        // Nothing newer than the writer could have written: at most one sync interval
        // past the count published after these reads.
        let p1 = read_progress(dir);
        if let Some(j) = max_op
            && j >= p1.count + plan.sync_every
        {
            return Err(format!(
                "read op {j}'s value, but the writer had published {} ops done (and writes at \
                 most {} ahead of that)",
                p1.count, plan.sync_every
            ));
        }
        if store.len() > plan.keys {
            return Err(format!("len {} with only {} keys in the history", store.len(), plan.keys));
        }
        for (k, v, bytes) in &held {
            if **v != bytes[..] {
                return Err(format!("a held Value of key {k} changed under the reader"));
            }
        }
        c.full_passes += u64::from(full);
        iteration += 1;
    }

    // The history is complete and synced: every key exactly at its final version.
    for k in 0..plan.keys {
        let got = store.get(key_name(k)).map_err(|e| format!("final get {k}: {e}"))?;
        let want = plan.latest_op(k, plan.ops).map(|j| plan.value(j));
        if got.as_deref() != want.as_deref() {
            return Err(format!(
                "at the end key {k} reads {:?}, the history leaves {:?}",
                got.as_deref().map(decode),
                want.as_deref().map(decode)
            ));
        }
        c.gets += 1;
    }
    let t = Instant::now();
    while store.len() != plan.keys.min(plan.ops) && t.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(10));
    }
    if store.len() != plan.keys.min(plan.ops) {
        return Err(format!("len {} at the end, {} keys live", store.len(), plan.keys));
    }
    for (k, v, bytes) in &held {
        if **v != bytes[..] {
            return Err(format!("a held Value of key {k} changed under the reader"));
        }
    }
    report(&format!(
        "counts gets={} floor_checks={} full_passes={} gap_gets={} advances={} \
         advances_after_restart={} held={} gets_before_writer={} gets_writer1={} \
         gets_writer2={}",
        c.gets,
        c.floor_checks,
        c.full_passes,
        c.gap_gets,
        c.advances,
        c.advances_after_restart,
        held.len(),
        c.per_session[0],
        c.per_session[1],
        c.per_session[2]
    ));
    Ok(())
}

/// Checks one read of key `k` by a reader that saw `count` ops published before it: the
/// value is well-formed and of key `k`; its version is at least what the first `count` ops
/// leave (everything synced is seen) and at least what this reader saw before (never
/// backwards); absent only if no synced op wrote it and this reader never saw it. Returns
/// the op that wrote the value.
fn check_read(
    plan: &Plan,
    k: u64,
    got: Option<&[u8]>,
    count: u64,
    seen: &mut [Option<u64>],
    c: &mut ReaderCounts,
) -> Result<Option<u64>, String> {
    let floor = plan.latest_op(k, count).map(|j| j / plan.keys);
    c.floor_checks += u64::from(floor.is_some());
    let before = seen[k as usize];
    let Some(v) = got else {
        if floor.is_some() || before.is_some() {
            return Err(format!(
                "key {k} is absent, but {count} ops were synced (leaving version {floor:?}) \
                 and this reader saw version {before:?}"
            ));
        }
        return Ok(None);
    };
    let (key, version) = decode(v).map_err(|e| format!("key {k}: {e}"))?;
    if key != k {
        return Err(format!("key {k} holds a value of key {key}"));
    }
    if floor.is_some_and(|f| version < f) {
        return Err(format!(
            "key {k} at version {version}, but the {count} ops synced leave it at {floor:?}"
        ));
    }
    if before.is_some_and(|b| version < b) {
        return Err(format!("key {k} went back from version {before:?} to {version}"));
    }
    let op = version * plan.keys + k;
    if op >= plan.ops {
        return Err(format!("key {k} at version {version}: op {op} is past the history"));
    }
    if before.is_some_and(|b| version > b) {
        c.advances += 1;
    }
    seen[k as usize] = Some(version);
    Ok(Some(op))
}

/// Spawns this test binary running only the multi-process test, in `role`.
fn spawn_child(role: &str, dir: &Path, plan: Plan, id: u64) -> KillOnDrop {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", PROCESS_TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(PLAN_ENV, plan.encode())
        .env(ID_ENV, id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn child test process");
    let lines = read_marked_lines(&mut child, MARK);
    let stderr = read_stderr(&mut child);
    KillOnDrop { child: Some(child), lines, stderr: Some(stderr), name: format!("{role} {id}") }
}

/// A child that is killed (and reaped) if the test panics before it ends.
struct KillOnDrop {
    child: Option<Child>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    name: String,
}

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already reaped")
    }

    /// The child's next marked line; panics (with its stderr) if none comes in time.
    fn expect_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(HANG_GUARD) {
            Ok(l) if l.starts_with("E ") => {
                let status = self.wait();
                let story = self.describe(status);
                panic!("{} failed waiting for {what}: {l}; {story}", self.name);
            }
            Ok(l) => l,
            Err(e) => {
                let status = self.kill();
                let story = self.describe(status);
                panic!("{} said nothing ({e:?}) waiting for {what}; {story}", self.name);
            }
        }
    }

    /// Skips the child's marked lines up to the one that starts with `prefix`.
    fn expect_line_starting(&mut self, prefix: &str, what: &str) -> String {
        loop {
            let line = self.expect_line(what);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Panics with the child's story if it has exited.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child().try_wait().expect("try_wait") {
            self.child = None;
            let lines: Vec<String> = self.lines.iter().collect();
            let story = self.describe(status);
            panic!("{} exited {when}: {lines:?}; {story}", self.name);
        }
    }

    fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("child already reaped");
        child.kill().expect("SIGKILL the child");
        child.wait().expect("wait for the killed child")
    }

    fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if started.elapsed() > HANG_GUARD {
                let status = self.kill();
                let story = self.describe(status);
                panic!("{} did not finish within {HANG_GUARD:?}; {story}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status and stderr of a reaped child.
    fn describe(&mut self, status: ExitStatus) -> String {
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
        format!("{status}; stderr:\n{}", stderr.unwrap_or_default())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls the side file until `until` holds, checking meanwhile that `children` still run.
fn wait_for_progress(
    dir: &Path,
    children: &mut [&mut KillOnDrop],
    what: &str,
    until: impl Fn(Progress) -> bool,
) -> Progress {
    let started = Instant::now();
    loop {
        let p = read_progress(dir);
        if until(p) {
            return p;
        }
        for c in children.iter_mut() {
            c.assert_running(&format!("while waiting for {what} (progress {p:?})"));
        }
        assert!(started.elapsed() < HANG_GUARD, "no {what} within {HANG_GUARD:?}: {p:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The numbers a reader child reported in its last line, by name.
fn parse_counts(line: &str) -> BTreeMap<String, u64> {
    let fields = line.strip_prefix("counts ").unwrap_or_else(|| panic!("not a report: {line}"));
    fields
        .split(' ')
        .map(|f| f.split_once('=').unwrap_or_else(|| panic!("bad field {f:?} in {line}")))
        .map(|(name, n)| (name.to_string(), n.parse().expect("numeric count")))
        .collect()
}

#[test]
fn readers_in_other_processes_follow_a_writer_killed_and_replaced() {
    dispatch_child_role();
    let started = Instant::now();
    let plan = Plan::from_env();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let db = dir.join("db");
    Store::open(&db).expect("create").close().expect("close");

    // Reader 1 opens the empty store before any writer exists.
    let mut reader1 = spawn_child("reader", &dir, plan, 1);
    assert_eq!(reader1.expect_line("reader 1 to open"), "ready");
    let mut writer1 = spawn_child("writer", &dir, plan, 1);
    let open1 = writer1.expect_line("the first writer to open");
    let rec1 = writer1.expect_line("the first writer's recovery check");
    assert_eq!(rec1, "recovered 0 synced 0", "a new store holds nothing");

    // Reader 2 opens after the first compaction, with the writer live.
    wait_for_progress(&dir, &mut [&mut reader1, &mut writer1], "the first compaction", |p| {
        p.compactions >= 1
    });
    let mut reader2 = spawn_child("reader", &dir, plan, 2);
    assert_eq!(reader2.expect_line("reader 2 to open"), "ready");
    // One writer at a time: this process is refused while the first writer lives.
    match Store::open(&db) {
        Err(Error::Locked { read_only: false, .. }) => {}
        Err(e) => panic!("a second writer process must get Locked, got: {e}"),
        Ok(_) => panic!("a second writer process opened the store beside the first"),
    }

    // Midway, kill the writer: a few milliseconds after it published, so it is likely
    // between syncs with unsynced writes, maybe inside a batch.
    let at_kill = wait_for_progress(
        &dir,
        &mut [&mut reader1, &mut reader2, &mut writer1],
        "half of the history",
        |p| p.count >= plan.ops / 2,
    );
    thread::sleep(Duration::from_millis(1 + u64::from(started.elapsed().subsec_micros() % 20)));
    std::fs::write(gap_path(&dir), b"").expect("gap marker");
    let status = writer1.kill();
    assert!(status.signal() == Some(9), "the first writer ended before the kill: {status}");
    let writer1_lines: Vec<String> = writer1.lines.iter().collect();
    assert!(
        !writer1_lines.iter().any(|l| l == "done" || l.starts_with("E ")),
        "the first writer ended or failed before the kill: {writer1_lines:?}"
    );
    // The readers keep reading beside a dead writer, without error.
    thread::sleep(GAP);
    reader1.assert_running("with the writer dead");
    reader2.assert_running("with the writer dead");
    let killed_at = read_progress(&dir);
    std::fs::remove_file(gap_path(&dir)).expect("remove gap marker");

    // A new writer recovers the store, checks it holds a prefix of the history with every
    // synced op, and runs the history on; the readers follow it.
    let mut writer2 = spawn_child("writer", &dir, plan, 2);
    let open2 = writer2.expect_line("the second writer to open");
    let rec2 = writer2.expect_line("the second writer's recovery check");
    writer2.expect_line_starting("done", "the second writer to finish the history");
    let status = writer2.wait();
    assert!(status.success(), "the second writer: {}", writer2.describe(status));

    let mut reports = Vec::new();
    for (n, reader) in [(1, &mut reader1), (2, &mut reader2)] {
        let line = reader.expect_line("the reader's report");
        let status = reader.wait();
        assert!(status.success(), "reader {n}: {line}; {}", reader.describe(status));
        let counts = parse_counts(&line);
        assert!(counts["gap_gets"] > 0, "reader {n} made no reads while no writer ran: {line}");
        assert!(
            counts["gets_writer2"] > 0 && counts["advances_after_restart"] > 0,
            "reader {n} did not follow the second writer (no reads, or no key seen changing, \
             while it ran): {line}"
        );
        reports.push(format!("reader {n}: {line}"));
    }

    // The end state, from a writer's own open: exactly the history, and sound.
    let store = Store::open(&db).expect("final open");
    for k in 0..plan.keys {
        let got = store.get(key_name(k)).expect("get");
        let want = plan.latest_op(k, plan.ops).map(|j| plan.value(j));
        assert!(got.as_deref() == want.as_deref(), "final key {k}");
    }
    assert!(store.verify().expect("verify").is_ok(), "the final store does not verify");
    eprintln!(
        "{plan:?}; killed at {at_kill:?} (then {killed_at:?}); writer 1 {open1}, {rec1}; writer \
         2 {open2}, {rec2}; {}; {:?} in all",
        reports.join("; "),
        started.elapsed()
    );
}
