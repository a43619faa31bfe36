//! Online compaction: space comes back, nothing changes for users, readers and held values
//! live through it, and a failure or crash at any of its steps leaves a whole store.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use mapkv::testing::{Observer, Op};
use mapkv::{Batch, OpenOptions, Store};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// Writes a history with plenty of garbage: overwrites, deletes, batches.
fn churn(store: &Store, model: &mut Model, keys: u32, rounds: u32) {
    for r in 0..rounds {
        let mut batch = Batch::new();
        for i in 0..keys {
            let v = format!("v{r}-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
            if (i + r) % 5 == 0 {
                batch.delete(key(i));
                model.remove(&key(i));
            } else if i % 2 == 0 {
                batch.put(key(i), &v);
                model.insert(key(i), v);
            } else {
                store.put(key(i), &v).expect("put");
                model.insert(key(i), v);
            }
        }
        store.write(batch).expect("batch");
    }
}

fn contents(store: &Store) -> Model {
    store
        .iter()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<mapkv::Result<_>>()
        .expect("iterate")
}

#[test]
fn compaction_gives_space_back_and_changes_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    let store = Store::open(dir.path()).expect("open");
    churn(&store, &mut model, 3000, 6);
    let stats = store.compact().expect("compact");
    assert!(
        stats.log_after * 3 < stats.log_before,
        "log {} -> {}: little space came back",
        stats.log_before,
        stats.log_after
    );
    assert_eq!(stats.live_keys, model.len() as u64);
    assert_eq!(store.len(), model.len() as u64);
    assert_eq!(contents(&store), model);
    assert!(store.verify().expect("verify").is_ok());
    // Writes go on in the new files, and survive a clean reopen and a crash.
    churn(&store, &mut model, 500, 2);
    store.close().expect("close");
    let store = Store::open(dir.path()).expect("reopen");
    assert!(!store.recovery().index_rebuilt, "{:?}", store.recovery());
    assert_eq!(contents(&store), model);
    store.compact().expect("compact again");
    churn(&store, &mut model, 200, 1);
    store.simulate_crash();
    let store = Store::open(dir.path()).expect("reopen after crash");
    assert_eq!(contents(&store), model);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert!(names.iter().all(|n| !n.contains("compact")), "leftover files: {names:?}");
}

fn old_log_mapped(dir: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let data = dir.join("data.mkv");
    maps.lines().any(|l| l.contains(&*data.to_string_lossy()) && l.ends_with("(deleted)"))
}

#[test]
fn borrowers_keep_the_old_files_until_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    let store = Store::open(dir.path()).expect("open");
    churn(&store, &mut model, 2000, 3);
    let before = model.clone();
    let held = store.get(key(1)).expect("get").expect("present");
    let snap = store.snapshot();
    let reader = store.reader();
    let from_reader = reader.get(key(2)).expect("get").expect("present");
    store.compact().expect("compact");
    churn(&store, &mut model, 2000, 1);
    store.compact().expect("compact twice");
    assert_eq!(&*held, &before[&key(1)][..]);
    assert_eq!(from_reader, &before[&key(2)][..]);
    let old: Model =
        snap.iter().map(|r| r.expect("iter")).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(old, before, "the snapshot changed across compaction");
    assert_eq!(snap.get(key(2)).expect("get"), Some(&before[&key(2)][..]));
    // The reader follows the store into the new files.
    assert_eq!(reader.get(key(2)).expect("get"), model.get(&key(2)).map(|v| &v[..]));
    assert!(old_log_mapped(dir.path()), "the old data file is gone while borrowed");
    drop((held, snap, reader));
    assert!(!old_log_mapped(dir.path()), "the old data file outlived its borrowers");
    assert_eq!(contents(&store), model);
}

/// Slows down flushes of the new data file, so writes land in every window of compaction.
struct SlowCompactFlush;

impl Observer for SlowCompactFlush {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        if let Op::Flush { path, .. } = op
            && path.to_string_lossy().ends_with("compact")
        {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        Ok(())
    }
}

#[test]
fn readers_and_writers_run_through_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        OpenOptions::new().observer(Arc::new(SlowCompactFlush)).open(dir.path()).expect("open");
    let value = |i: u32, round: u32| format!("{i}:{round}:{}", "y".repeat((i % 64) as usize));
    for i in 0..20_000 {
        store.put(key(i), value(i, 0)).expect("put");
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let (store, stop) = (&store, &stop);
            s.spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let i = (n.wrapping_mul(7919) + t) % 20_000;
                    let v = store.get(key(i)).expect("get").expect("every key stays present");
                    let s = std::str::from_utf8(&v).expect("utf-8");
                    assert!(s.starts_with(&format!("{i}:")), "key {i} read {s:?}");
                    n += 1;
                }
            });
        }
        let writer = s.spawn(|| {
            let mut round = 1;
            while !stop.load(Ordering::Relaxed) {
                for i in (0..20_000).step_by(97) {
                    store.put(key(i), value(i, round)).expect("put during compaction");
                }
                round += 1;
            }
            round - 1
        });
        for _ in 0..3 {
            store.compact().expect("compact");
        }
        stop.store(true, Ordering::Relaxed);
        let last = writer.join().expect("writer");
        assert!(last > 0);
        // No write made during a compaction was lost by it.
        for i in (0..20_000).step_by(97) {
            let v = store.get(key(i)).expect("get").expect("present");
            assert_eq!(&*v, value(i, last).as_bytes(), "key {i} lost its last write");
        }
    });
    for i in 0..20_000 {
        let v = store.get(key(i)).expect("get").expect("present");
        assert!(v.starts_with(format!("{i}:").as_bytes()));
    }
}

/// Fails the n-th operation of the OS layer after it is armed.
struct FailAt {
    armed: AtomicBool,
    countdown: AtomicUsize,
    seen: AtomicUsize,
}

impl Observer for FailAt {
    fn before(&self, op: Op<'_>) -> io::Result<()> {
        // Appends and remaps are crash points only: their results are not errors.
        let counted = !matches!(op, Op::Append { .. } | Op::Remap { .. });
        if !counted || !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.seen.fetch_add(1, Ordering::SeqCst);
        if self.countdown.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

/// Every OS operation of a compaction, failed in turn; then the process "dies" (no clean
/// close) and the store is reopened: it must hold exactly the same data, whichever files
/// it ended up with, and compact cleanly again.
#[test]
fn a_failure_at_any_step_of_compaction_leaves_a_whole_store() {
    let mut step = 0;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let fail = Arc::new(FailAt {
            armed: AtomicBool::new(false),
            countdown: AtomicUsize::new(step),
            seen: AtomicUsize::new(0),
        });
        let mut model = Model::new();
        let store = OpenOptions::new().observer(fail.clone()).open(dir.path()).expect("open");
        churn(&store, &mut model, 800, 3);
        fail.armed.store(true, Ordering::SeqCst);
        let result = store.compact();
        fail.armed.store(false, Ordering::SeqCst);
        let ops = fail.seen.load(Ordering::SeqCst);
        store.simulate_crash();
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(contents(&store), model, "step {step}: data changed ({result:?})");
        assert!(store.verify().expect("verify").is_ok(), "step {step}");
        store.compact().expect("compact after the failure");
        assert_eq!(contents(&store), model, "step {step}: second compaction");
        if result.is_ok() {
            assert!(step > 3, "no OS operation seen in a compaction");
            break; // past the last operation
        }
        assert!(ops > step, "step {step}");
        step += 1;
    }
}

/// Set in a child process: play the compacting writer in this directory.
const CHILD_DIR: &str = "MAPKV_COMPACT_CHILD_DIR";
/// Every line the child reports starts with this; anything else is libtest's.
const MARK: &str = "@acked ";

/// The child: one thread puts keys with values rising from where the last child stopped
/// (acknowledging each put on stdout after it returned), another compacts over and over
/// (its flushes slowed down, so that kills often land inside a compaction), until killed.
fn compacting_writer(dir: &Path) -> ! {
    use std::io::Write;
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{MARK}{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0); // the parent is gone
        }
    };
    let store =
        OpenOptions::new().observer(Arc::new(SlowCompactFlush)).open(dir).expect("child open");
    let num = |v: &[u8]| u32::from_le_bytes(v.try_into().expect("4 bytes"));
    let start = store.iter().map(|r| num(&r.expect("iter").1) + 1).max().unwrap_or(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            loop {
                say("compacting".into());
                store.compact().expect("child compact");
                say("compacted".into());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        for n in start.. {
            store.put(key(n % 500), n.to_le_bytes()).expect("child put");
            say(n.to_string());
            if n % 64 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    unreachable!()
}

/// kill -9 at random moments of a writer that keeps compacting: after each kill the store
/// opens and holds every put the child acknowledged (a later value is allowed: the put may
/// have returned without its acknowledgement getting out), and no leftover blocks the
/// next compaction.
#[test]
fn kill_9_during_compaction_loses_nothing_acknowledged() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        compacting_writer(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut last_seen, mut mid_compaction) = (0u32, 0);
    for round in 0..8 {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", "kill_9_during_compaction_loses_nothing_acknowledged"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let (mut last, mut compacting) = (None, false);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix(MARK).map(str::trim) {
                    Some("compacting") => compacting = true,
                    Some("compacted") => compacting = false,
                    Some(n) => last = n.parse::<u32>().ok().or(last),
                    None => {}
                }
            }
            (last, compacting)
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(std::time::Duration::from_millis(150 + rng % 400));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let (last, compacting) = reader.join().expect("reader");
        mid_compaction += usize::from(compacting);
        let Some(last) = last else {
            continue; // killed before its first put: nothing to check this round
        };
        last_seen = last;
        let store = Store::open(dir.path()).expect("open after kill");
        assert!(store.verify().expect("verify").is_ok(), "round {round}");
        // Every key the child wrote up to `last` holds the value of its latest acknowledged
        // put, or a later one.
        for n in last.saturating_sub(499)..=last {
            let v = store.get(key(n % 500)).expect("get").expect("an acknowledged key is gone");
            let got = u32::from_le_bytes((*v).try_into().expect("4 bytes"));
            assert!(got >= n, "round {round}: key {} has {got}, acknowledged {n}", n % 500);
        }
    }
    eprintln!("last acknowledged put {last_seen}, {mid_compaction} of 8 kills inside a compaction");
    assert!(last_seen > 1000, "the children wrote little: {last_seen}");
    assert!(mid_compaction > 0, "no kill landed inside a compaction");
}
