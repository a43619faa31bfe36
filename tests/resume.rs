//! Resuming after a process crash (DESIGN.md §6, "Resuming after a process crash"): at
//! every crash point of every write protocol (put, delete, batch, sync, index and log
//! growth, compaction, clean close, recovery itself), the files exactly as a kill -9 there
//! leaves them (the page cache: what `read` sees) open by resuming the dead writer's index
//! from its checkpoint, hold the state before or after the write in flight (all of it or
//! none of it), and give the same answers and figures as a full rebuild of the same files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mapkv::testing::{Observer, Op, adopt_page};
use mapkv::{Batch, OpenOptions, Store};

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the workload is doing, and the states a crash now may leave.
#[derive(Default)]
struct Progress {
    phase: &'static str,
    /// The state after every write that returned.
    acked: State,
    /// The state if the write in flight is applied too.
    pending: Option<State>,
    keys: BTreeSet<Vec<u8>>,
}

/// What the checks found, per phase.
#[derive(Default)]
struct Tally {
    images: usize,
    resumed: BTreeMap<&'static str, usize>,
    rebuilt: BTreeMap<(&'static str, String), usize>,
    replayed_most: (u64, String),
    clean: usize,
}

/// Takes the files' live images at every operation and point of the store's OS layer and
/// checks each one at once.
struct Crasher {
    dir: PathBuf,
    scratch: PathBuf,
    progress: Arc<Mutex<Progress>>,
    tally: Mutex<Tally>,
    armed: AtomicBool,
    seen: AtomicUsize,
    /// The crash point at which the writer dies (the observer panics).
    panic_at: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Observer for Crasher {
    fn before(&self, op: Op<'_>) -> std::io::Result<()> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let name = match op {
            Op::Point { name } => name.to_string(),
            other => format!("{other:?}").split([' ', '{']).next().unwrap_or("op").to_string(),
        };
        if let Err(e) = self.check(n, &name) {
            self.failures.lock().expect("failures").push(e);
        }
        if n == self.panic_at.load(Ordering::Relaxed) {
            panic!("the writer dies at crash point {n} ({name})");
        }
        Ok(())
    }
}

impl Crasher {
    /// Copies the three files as they are now (a kill -9 here leaves exactly these bytes),
    /// opens the copy as the next writer would (resuming) and a second copy with a full
    /// rebuild, and compares both with what may have survived.
    fn check(&self, n: usize, point: &str) -> Result<(), String> {
        let p = self.progress.lock().expect("progress");
        let (fast, full) =
            (self.scratch.join(format!("fast{n}")), self.scratch.join(format!("full{n}")));
        for d in [&fast, &full] {
            copy_store(&self.dir, d).map_err(|e| format!("copy: {e}"))?;
            // The copies have other inodes: the page names them, as it named the originals.
            adopt_page(d, false).map_err(|e| format!("adopt page: {e}"))?;
        }
        let what = format!("crash point {n} ({point}) during {}", p.phase);
        let resumed = OpenOptions::new().open(&fast).map_err(|e| format!("{what}: {e}"))?;
        let rebuilt = OpenOptions::new()
            .rebuild_index(true)
            .open(&full)
            .map_err(|e| format!("{what}: rebuild: {e}"))?;
        let r = resumed.recovery().clone();
        let got = contents(&resumed, &p.keys).map_err(|e| format!("{what}: {e}"))?;
        let truth = contents(&rebuilt, &p.keys).map_err(|e| format!("{what}: rebuilt: {e}"))?;
        if got != truth {
            return Err(format!("{what}: resumed store differs from a rebuild ({r:?})"));
        }
        if got != p.acked && p.pending.as_ref() != Some(&got) {
            return Err(format!("{what}: the state is neither before nor after the write ({r:?})"));
        }
        let (a, b) = (resumed.stats(), rebuilt.stats());
        let figures = |s: &mapkv::Stats| (s.live_keys, s.records, s.log_bytes, s.garbage_bytes);
        if figures(&a) != figures(&b) || resumed.len() != rebuilt.len() {
            return Err(format!(
                "{what}: figures {:?} but a rebuild says {:?}",
                figures(&a),
                figures(&b)
            ));
        }
        let report = resumed.verify().map_err(|e| format!("{what}: verify: {e}"))?;
        if !report.is_ok() {
            return Err(format!("{what}: verify after resuming: {:?}", report.problems));
        }
        // Writes go on after resuming, and a second crash resumes again.
        resumed.put(b"after", b"resume").map_err(|e| format!("{what}: put after: {e}"))?;
        resumed.simulate_crash();
        let again = Store::open(&fast).map_err(|e| format!("{what}: second open: {e}"))?;
        if again.get(b"after").map_err(|e| e.to_string())?.as_deref() != Some(&b"resume"[..]) {
            return Err(format!("{what}: a write after resuming was lost"));
        }
        if again.recovery().resumed_from.is_none() {
            return Err(format!(
                "{what}: the second crash was not resumed: {:?}",
                again.recovery()
            ));
        }
        drop((again, rebuilt));
        let mut t = self.tally.lock().expect("tally");
        t.images += 1;
        match r.resumed_from {
            Some(_) => *t.resumed.entry(p.phase).or_default() += 1,
            None if r.was_clean() => t.clean += 1,
            None => {
                *t.rebuilt.entry((p.phase, r.reason.clone().unwrap_or_default())).or_default() += 1
            }
        }
        if r.resumed_from.is_some() && r.records_replayed > t.replayed_most.0 {
            t.replayed_most = (r.records_replayed, what);
        }
        for d in [&fast, &full] {
            let _ = std::fs::remove_dir_all(d);
        }
        Ok(())
    }
}

/// Copies a store's three files (those that exist) from `from` into the directory `to`.
fn copy_store(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in ["data.mkv", "index.mkv", "live.mkv"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}

/// Asserts that `store` rebuilt its index, for a reason that mentions `why`.
fn assert_rebuilt_because(store: &Store, why: &str) {
    let r = store.recovery();
    assert!(r.index_rebuilt && r.reason.as_deref().is_some_and(|s| s.contains(why)), "{r:?}");
}

/// The value of every key in `keys` (absent ones left out).
fn contents(store: &Store, keys: &BTreeSet<Vec<u8>>) -> mapkv::Result<State> {
    let mut s = State::new();
    for k in keys {
        if let Some(v) = store.get(k)? {
            s.insert(k.clone(), v.to_vec());
        }
    }
    Ok(s)
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u64, round: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{i}:{round}:").into_bytes();
    v.resize(len, b'a' + (round % 26) as u8);
    v
}

/// One write, applied to the store and to the model.
enum Write {
    Put(u64, u64, usize),
    Delete(u64),
    Batch(Vec<(u64, Option<(u64, usize)>)>),
}

fn apply(state: &mut State, w: &Write) {
    let mut one = |i: u64, put: Option<(u64, usize)>| match put {
        Some((round, len)) => drop(state.insert(key(i), value(i, round, len))),
        None => drop(state.remove(&key(i))),
    };
    match w {
        Write::Put(i, round, len) => one(*i, Some((*round, *len))),
        Write::Delete(i) => one(*i, None),
        Write::Batch(ops) => ops.iter().for_each(|&(i, put)| one(i, put)),
    }
}

fn run(store: &Store, progress: &Mutex<Progress>, phase: &'static str, w: Write) {
    {
        let mut p = progress.lock().expect("progress");
        let mut next = p.acked.clone();
        apply(&mut next, &w);
        p.keys.extend(next.keys().cloned());
        p.phase = phase;
        p.pending = Some(next);
    }
    match &w {
        Write::Put(i, round, len) => store.put(key(*i), value(*i, *round, *len)).expect("put"),
        Write::Delete(i) => drop(store.delete(key(*i)).expect("delete")),
        Write::Batch(ops) => {
            let mut b = Batch::new();
            for &(i, put) in ops {
                match put {
                    Some((round, len)) => b.put(key(i), value(i, round, len)),
                    None => b.delete(key(i)),
                };
            }
            store.write(b).expect("batch");
        }
    }
    let mut p = progress.lock().expect("progress");
    p.acked = p.pending.take().expect("pending");
}

/// A phase with no write in flight (sync, compaction, close): the state is the acked one.
fn quiet(progress: &Mutex<Progress>, phase: &'static str) {
    let mut p = progress.lock().expect("progress");
    p.phase = phase;
    p.pending = None;
}

#[test]
fn every_crash_point_resumes_to_what_a_rebuild_finds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let progress = Arc::new(Mutex::new(Progress::default()));
    let crasher = Arc::new(Crasher {
        dir: dir.clone(),
        scratch: tmp.path().to_path_buf(),
        progress: Arc::clone(&progress),
        tally: Mutex::default(),
        armed: AtomicBool::new(false),
        seen: AtomicUsize::new(0),
        panic_at: AtomicUsize::new(usize::MAX),
        failures: Mutex::default(),
    });
    let observed = || {
        let mut o = OpenOptions::new();
        o.observer(crasher.clone());
        o
    };
    // A store whose index is one key short of growing (1024 slots, 11/16 load).
    let store = observed().open(&dir).expect("open");
    let mut b = Batch::new();
    for i in 0..700 {
        b.put(key(i), value(i, 0, 40));
    }
    store.write(b).expect("prefill");
    store.sync().expect("sync");
    {
        let mut p = progress.lock().expect("progress");
        p.acked = (0..700).map(|i| (key(i), value(i, 0, 40))).collect();
        p.keys = p.acked.keys().cloned().collect();
    }
    crasher.armed.store(true, Ordering::Relaxed);

    run(&store, &progress, "put (index grows)", Write::Put(700, 1, 40));
    for i in 0..12 {
        run(&store, &progress, "put", Write::Put(701 + i, 1, 60));
        run(&store, &progress, "overwrite", Write::Put(i * 7, 2, 120));
        run(&store, &progress, "delete", Write::Delete(i * 11 + 1));
    }
    // Batches: new keys, overwrites, deletes, a key written twice, a re-put of a deleted key.
    let batch = |base: u64| {
        Write::Batch(vec![
            (900 + base, Some((3, 50))),
            (base * 3, Some((3, 70))),
            (base * 11 + 1, Some((3, 30))),
            (901 + base, Some((3, 50))),
            (base * 5 + 2, None),
            (900 + base, Some((4, 90))),
        ])
    };
    for base in 0..4 {
        run(&store, &progress, "batch", batch(base * 10));
    }
    quiet(&progress, "sync");
    store.sync().expect("sync");
    // The data file grows (it starts at 1 MiB) inside a put and inside a batch.
    for i in 0..2 {
        run(&store, &progress, "put (log grows)", Write::Put(2000 + i, 5, 300_000));
    }
    run(
        &store,
        &progress,
        "batch (log grows)",
        Write::Batch(vec![(2010, Some((6, 500_000))), (3, Some((6, 10)))]),
    );
    quiet(&progress, "compaction");
    store.compact().expect("compact");
    run(&store, &progress, "put after compaction", Write::Put(5, 7, 40));
    run(&store, &progress, "batch after compaction", batch(70));
    quiet(&progress, "clean close");
    store.close().expect("close");

    // Recovery itself: a writer dies in the middle of a batch (the observer panics at its
    // third record, and the handle is dropped as a kill leaves it), then every crash point
    // of the open that resumes it is checked the same way.
    crasher.armed.store(false, Ordering::Relaxed);
    let store = observed().open(&dir).expect("reopen");
    crasher.armed.store(true, Ordering::Relaxed);
    run(&store, &progress, "put", Write::Put(3000, 8, 40));
    let ops: Vec<_> = (0..6).map(|i| (3001 + i % 4, Some((9, 64)))).collect();
    crasher.panic_at.store(crasher.seen.load(Ordering::Relaxed) + 12, Ordering::Relaxed);
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&store, &progress, "batch (writer dies)", Write::Batch(ops));
    }));
    assert!(died.is_err(), "the writer was meant to die inside the batch");
    crasher.panic_at.store(usize::MAX, Ordering::Relaxed);
    store.simulate_crash();
    quiet(&progress, "recovery");
    let store = observed().open(&dir).expect("open after crash");
    assert!(store.recovery().resumed_from.is_some(), "{:?}", store.recovery());
    assert!(store.recovery().cut.is_some(), "the batch was cut: {:?}", store.recovery());
    crasher.armed.store(false, Ordering::Relaxed);
    drop(store);

    let failures = crasher.failures.lock().expect("failures");
    let t = crasher.tally.lock().expect("tally");
    eprintln!(
        "{} crash images; resumed by phase {:?}; clean {}; rebuilt {:?}; most replayed {:?}",
        t.images, t.resumed, t.clean, t.rebuilt, t.replayed_most
    );
    assert!(
        failures.is_empty(),
        "{} of {} crash points failed:\n{}",
        failures.len(),
        t.images + failures.len(),
        failures.join("\n")
    );
    assert!(t.images > 200, "only {} crash points were checked", t.images);
    // Every crash point inside a write resumes; a rebuild is left for the compaction's swap.
    for ((phase, why), n) in &t.rebuilt {
        assert!(*phase == "compaction", "{n} crash points during {phase} rebuilt the index: {why}");
    }
    assert!(t.replayed_most.0 <= 10, "replayed {:?} records", t.replayed_most);
}

#[test]
fn a_page_from_another_boot_or_for_other_files_is_not_resumed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let store = Store::open(&dir).expect("open");
    for i in 0..100 {
        store.put(key(i), value(i, 0, 30)).expect("put");
    }
    store.simulate_crash();
    let copy = |name: &str, reboot: bool| -> PathBuf {
        let d = tmp.path().join(name);
        copy_store(&dir, &d).expect("copy");
        adopt_page(&d, reboot).expect("adopt");
        d
    };
    let open = |d: &Path| Store::open(d).expect("open");
    // Same boot, same files: resumed, nothing to replay.
    let s = open(&copy("same", false));
    assert_eq!(s.recovery().resumed_from, Some(s.recovery().log_end), "{:?}", s.recovery());
    assert_eq!(s.recovery().records_replayed, 0);
    drop(s);
    // Another boot: the page cache the checkpoint describes is gone.
    let s = open(&copy("reboot", true));
    assert_rebuilt_because(&s, "boot");
    assert_eq!(s.len(), 100);
    drop(s);
    // The files copied elsewhere: another directory, where the writer left no token.
    let d = tmp.path().join("moved");
    copy_store(&dir, &d).expect("copy");
    let s = open(&d);
    assert_rebuilt_because(&s, "token");
    drop(s);
    // The data file replaced by a copy of itself (another inode than the page names).
    let d = copy("replaced", false);
    std::fs::copy(d.join("data.mkv"), d.join("data.copy")).expect("copy");
    std::fs::rename(d.join("data.copy"), d.join("data.mkv")).expect("rename");
    let s = open(&d);
    assert_rebuilt_because(&s, "replaced");
    assert_eq!(s.len(), 100);
    drop(s);
    // An index from an earlier moment (its tag names an older checkpoint).
    let d = copy("old-index", false);
    let s = Store::open(&d).expect("open");
    s.put(b"later", b"write").expect("put");
    let old_index = std::fs::read(d.join("index.mkv")).expect("read");
    for later in [&b"later still"[..], b"and later", b"latest"] {
        s.put(later, b"write").expect("put");
    }
    s.simulate_crash();
    std::fs::write(d.join("index.mkv"), &old_index[..]).expect("write"); // same inode
    let s = open(&d);
    assert_rebuilt_because(&s, "checkpoint");
    assert_eq!(s.get(b"later still").expect("get").as_deref(), Some(&b"write"[..]));
    drop(s);
    // A data file rewritten in place with other contents (a restore from a copy taken
    // before the last writes): the checkpointed record is not there.
    let d = copy("old-data", false);
    let s = Store::open(&d).expect("open");
    s.close().expect("close");
    let old_data = std::fs::read(d.join("data.mkv")).expect("read");
    let s = Store::open(&d).expect("open");
    for i in 0..50 {
        s.put(key(i), value(i, 9, 30)).expect("put");
    }
    s.simulate_crash();
    std::fs::write(d.join("data.mkv"), &old_data[..]).expect("write"); // same inode
    let s = open(&d);
    assert!(s.recovery().index_rebuilt, "{:?}", s.recovery());
    assert_eq!(s.get(key(1)).expect("get").as_deref(), Some(&value(1, 0, 30)[..]));
}

/// Fails every flush of the data file, as a disk that lost the dead writer's pages would
/// report it (Linux hands an unseen writeback error to the next descriptor that syncs).
struct FailingFlush(std::sync::atomic::AtomicU64);

impl Observer for FailingFlush {
    fn before(&self, op: Op<'_>) -> std::io::Result<()> {
        match op {
            Op::Flush { path, from, to } if path.ends_with("data.mkv") => {
                self.0.fetch_max(to - from, Ordering::Relaxed);
                Err(std::io::Error::from_raw_os_error(5))
            }
            _ => Ok(()),
        }
    }
}

#[test]
fn the_first_sync_after_resuming_flushes_the_dead_writers_tail_and_reports_its_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let store = Store::open(&dir).expect("open");
    store.put(b"synced", b"1").expect("put");
    store.sync().expect("sync");
    for i in 0..500 {
        store.put(key(i), value(i, 0, 100)).expect("put"); // never synced by this writer
    }
    store.simulate_crash();
    let failing = Arc::new(FailingFlush(Default::default()));
    let store = OpenOptions::new().observer(failing.clone()).open(&dir).expect("resume");
    assert!(store.recovery().resumed_from.is_some(), "{:?}", store.recovery());
    // Nothing new was written, yet the sync flushes the 500 records the dead writer left
    // unsynced, and its failure poisons the handle.
    let err = store.sync().expect_err("the dead writer's tail must be flushed");
    assert!(matches!(err, mapkv::Error::Io { .. } | mapkv::Error::Poisoned { .. }), "{err}");
    assert!(failing.0.load(Ordering::Relaxed) >= 500 * 100, "the flush did not cover the tail");
    assert!(matches!(store.put(b"k", b"v"), Err(mapkv::Error::Poisoned { .. })));
    drop(store);
    // Without failures the same sync succeeds and the data is all there.
    let store = Store::open(&dir).expect("reopen");
    store.sync().expect("sync");
    assert_eq!(store.get(key(499)).expect("get").as_deref(), Some(&value(499, 0, 100)[..]));
}
