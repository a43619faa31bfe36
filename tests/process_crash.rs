//! Guards the cross-process promises: a second writer process is refused with `Locked` at
//! once (no wait, nothing changed), a lock left by a killed process does not block, and
//! `kill -9` at any moment loses nothing that `put`, `delete` or `write` (a batch) had
//! returned, and leaves every batch whole or absent.
//!
//! Each test re-executes this test binary (`current_exe() --exact <test> --nocapture`) with
//! `MAPKV_CHILD=<role>` set; the test function sees that variable first thing, plays the
//! role and exits the process. Children report through their exit code and through stdout
//! lines that carry the `@mapkv ` marker (libtest's own output is ignored).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::{self};
use std::time::{Duration, Instant};

use mapkv::testing::{Observer, Op as OsOp};
use mapkv::{Batch, CorruptKind, Error, OpenOptions, Store};

mod common;
use common::{read_marked_lines, read_stderr};

// ---- child dispatch ----------------------------------------------------------------------

/// Names the role a re-executed child plays.
const ROLE_ENV: &str = "MAPKV_CHILD";
/// The store directory a child works on.
const DIR_ENV: &str = "MAPKV_CHILD_DIR";
/// The seed of a writer child's operation sequence.
const SEED_ENV: &str = "MAPKV_CHILD_SEED";
/// `<op> <n>`: the writer stops inside batch operation `op`, before its record `n` (1-based;
/// one past its records is the commit) is published, reports `M` and waits to be killed.
const STALL_ENV: &str = "MAPKV_CHILD_STALL";
/// Prefix of every line a child reports on; anything else on stdout is libtest's.
const MARK: &str = "@mapkv ";

/// The "did not block" bound: generous, since a refused open should take microseconds.
const DID_NOT_BLOCK: Duration = Duration::from_secs(10);
/// Watchdog for a child that should print something soon; only a hang can reach it.
const HANG_GUARD: Duration = Duration::from_secs(120);
/// How long an idle child sleeps before giving up on being killed (parent died).
const CHILD_IDLE: Duration = Duration::from_secs(60);

/// Called first in every test: in a child, plays the role named by `MAPKV_CHILD` and exits
/// the process (so the test harness never reports on it); in the parent, returns.
fn dispatch_child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("child without MAPKV_CHILD_DIR"));
    let code = match role.as_str() {
        "try-open" => child_try_open(&dir),
        "hold" => child_hold(&dir),
        "writer" => {
            let seed = std::env::var(SEED_ENV)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("writer child without a numeric MAPKV_CHILD_SEED");
            let stall = std::env::var(STALL_ENV).ok().map(|s| {
                let mut f = s.split(' ').map(|x| x.parse::<u64>().expect("numeric stall"));
                (f.next().expect("stall op"), f.next().expect("stall record"))
            });
            child_writer(&dir, seed, stall)
        }
        other => {
            report(&format!("E unknown role {other}"));
            64
        }
    };
    std::process::exit(code);
}

/// Writes one marked line to stdout and flushes it; exits quietly if the parent is gone.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let ok = out.write_all(format!("{MARK}{line}\n").as_bytes()).and_then(|()| out.flush());
    if ok.is_err() {
        std::process::exit(70);
    }
}

/// Spawns this test binary running only `test`, in `role`, on `dir`.
fn spawn_child(test: &str, role: &str, dir: &Path, seed: Option<u64>) -> KillOnDrop {
    spawn_child_with(test, role, dir, seed, None)
}

/// As `spawn_child`, with a writer told to stall inside a batch (`STALL_ENV`).
fn spawn_child_with(
    test: &str,
    role: &str,
    dir: &Path,
    seed: Option<u64>,
    stall: Option<(u64, u64)>,
) -> KillOnDrop {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(seed) = seed {
        cmd.env(SEED_ENV, seed.to_string());
    }
    if let Some((op, record)) = stall {
        cmd.env(STALL_ENV, format!("{op} {record}"));
    }
    KillOnDrop(Some(cmd.spawn().expect("spawn child test process")))
}

/// A child that is killed (and reaped) if the test panics before it does so itself.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already reaped")
    }

    /// Sends SIGKILL (`Child::kill` on Unix) and reaps the child.
    fn kill_and_wait(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("child already reaped");
        child.kill().expect("SIGKILL the child");
        child.wait().expect("wait for the killed child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn killed_by_sigkill(status: ExitStatus) -> bool {
    status.signal() == Some(9)
}

// ---- promise 1: a second writer is refused at once -----------------------------------------

const LOCKED_TEST: &str = "second_writer_process_is_refused_at_once_and_changes_nothing";
const STALE_LOCK_TEST: &str = "lock_left_by_a_killed_process_does_not_block";

/// Child role `try-open`: the store is held by the parent. Exit code 0 only if the writable
/// open was refused with `Locked` naming the directory.
fn child_try_open(dir: &Path) -> i32 {
    let t = Instant::now();
    let writable = Store::open(dir);
    let took = t.elapsed();
    let mut code = 0;
    match writable {
        Err(Error::Locked { path, .. }) if path == dir => {
            report(&format!("writable=locked micros={}", took.as_micros()));
        }
        Err(Error::Locked { path, .. }) => {
            report(&format!("writable=locked-wrong-path {}", path.display()));
            code = 3;
        }
        Err(e) => {
            report(&format!("writable=error {e}"));
            code = 4;
        }
        Ok(store) => {
            report(&format!("writable=OPENED len={}", store.len()));
            // Leave without the clean close: the parent checks its files are untouched.
            std::mem::forget(store);
            code = 5;
        }
    }
    match OpenOptions::new().read_only(true).open(dir) {
        Err(Error::Locked { .. }) => report("readonly=locked"),
        Ok(store) => report(&format!("readonly=ok len={}", store.len())),
        Err(e) => {
            report(&format!("readonly=error {e}"));
            code = code.max(6);
        }
    }
    code
}

fn key_n(i: u32) -> Vec<u8> {
    format!("held-{i:04}").into_bytes()
}

fn value_n(i: u32) -> Vec<u8> {
    value_bytes(
        &key_n(i),
        u64::from(i),
        (i as usize * 37) % 3000 + if i == 7 { 100 << 10 } else { 0 },
    )
}

/// Every file of the store directory with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read store dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read store file"))
        })
        .collect()
}

#[test]
fn second_writer_process_is_refused_at_once_and_changes_nothing() {
    dispatch_child_role();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let store = Store::open(&dir).expect("open");
    const N: u32 = 64;
    for i in 0..N {
        store.put(key_n(i), value_n(i)).expect("put");
    }
    store.delete(key_n(3)).expect("delete");
    let len = store.len();
    assert_eq!(len, u64::from(N) - 1);
    let before = snapshot(&dir);

    let mut child = spawn_child(LOCKED_TEST, "try-open", &dir, None);
    let started = Instant::now();
    let lines = read_marked_lines(child.child(), MARK);
    let stderr = read_stderr(child.child());
    let status = loop {
        if let Some(status) = child.child().try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > DID_NOT_BLOCK {
            let status = child.kill_and_wait();
            panic!(
                "the second process did not finish within {DID_NOT_BLOCK:?}: its open blocks \
                 instead of failing with Locked ({status}); stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let lines: Vec<String> = lines.iter().collect();
    let stderr = stderr.join().unwrap_or_default();
    let ctx = format!("child {status}, lines {lines:?}, stderr:\n{stderr}");
    assert!(
        lines.iter().any(|l| l.starts_with("writable=locked micros=")),
        "a second process opening the store writable must get Locked naming the store; {ctx}"
    );
    assert!(
        lines.iter().any(|l| l == "readonly=locked" || l.starts_with("readonly=ok")),
        "a read-only open by a second process may be refused with Locked or succeed; {ctx}"
    );
    assert_eq!(status.code(), Some(0), "{ctx}");
    assert!(took < DID_NOT_BLOCK, "took {took:?}; {ctx}");

    // Nothing changed: not a byte of any file, nor what this handle sees.
    let after = snapshot(&dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the refused process changed the set of files"
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "the refused process changed the bytes of {name}");
    }
    assert_eq!(store.len(), len);
    for i in 0..N {
        let got = store.get(key_n(i)).expect("get");
        if i == 3 {
            assert!(got.is_none(), "deleted key came back");
        } else {
            assert_eq!(got.as_deref(), Some(&value_n(i)[..]), "key {i}");
        }
    }
    // The holder is undisturbed: it still writes, and closes cleanly.
    store.put(b"after", b"the refusal").expect("put after refusal");
    assert_eq!(store.len(), len + 1);
    store.close().expect("close");
    let store = Store::open(&dir).expect("reopen");
    assert!(!store.recovery().index_rebuilt, "clean close must not need a rebuild");
    assert_eq!(store.len(), len + 1);
    assert_eq!(store.get(b"after").expect("get").as_deref(), Some(&b"the refusal"[..]));
}

/// Child role `hold`: opens the store writable, writes one key, says "ready", then waits to
/// be killed.
fn child_hold(dir: &Path) -> i32 {
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("E open: {e}"));
            return 2;
        }
    };
    if let Err(e) = store.put(b"held", b"by the child") {
        report(&format!("E put: {e}"));
        return 2;
    }
    report("ready");
    thread::sleep(CHILD_IDLE);
    std::mem::forget(store); // never closed cleanly, as if killed
    1
}

#[test]
fn lock_left_by_a_killed_process_does_not_block() {
    dispatch_child_role();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    {
        let store = Store::open(&dir).expect("create");
        store.put(b"before", b"the child").expect("put");
        store.close().expect("close");
    }
    let mut child = spawn_child(STALE_LOCK_TEST, "hold", &dir, None);
    let lines = read_marked_lines(child.child(), MARK);
    let stderr = read_stderr(child.child());
    match lines.recv_timeout(HANG_GUARD) {
        Ok(l) if l == "ready" => {}
        other => {
            let status = child.kill_and_wait();
            panic!(
                "the holding child never became ready: {other:?}, {status}, stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
    }
    // The child really holds the lock: this process is refused meanwhile.
    match Store::open(&dir) {
        Err(Error::Locked { .. }) => {}
        other => panic!("a live writer in another process must lock us out, got {other:?}"),
    }

    let status = child.kill_and_wait();
    assert!(killed_by_sigkill(status), "child ended otherwise: {status}");
    let _ = stderr.join();

    // The dead process's lock is gone with it: both kinds of open succeed, at once.
    let t = Instant::now();
    let ro = OpenOptions::new()
        .read_only(true)
        .open(&dir)
        .expect("read-only open after the holder was killed");
    assert_eq!(ro.get(b"held").expect("get").as_deref(), Some(&b"by the child"[..]));
    drop(ro);
    let store = Store::open(&dir).expect("writable open after the holder was killed");
    assert!(t.elapsed() < DID_NOT_BLOCK, "opening took {:?}", t.elapsed());
    assert!(
        store.recovery().resumed_from.is_some(),
        "the killed writer never closed: its index must be resumed ({:?})",
        store.recovery()
    );
    assert_eq!(store.get(b"held").expect("get").as_deref(), Some(&b"by the child"[..]));
    assert_eq!(store.get(b"before").expect("get").as_deref(), Some(&b"the child"[..]));
    assert_eq!(store.len(), 2);
    store.close().expect("close");
}

// ---- promise 2: kill -9 loses nothing that returned ----------------------------------------

const CRASH_TEST: &str = "kill_9_at_any_moment_loses_nothing_put_or_delete_returned";
/// Rounds of spawn, write, kill, check, all on one directory.
const ROUNDS: u64 = 20;
/// Every round `STALL_EVERY - 1`, `2 * STALL_EVERY - 1`, ... kills the writer inside a
/// batch (stalled there by a test seam) rather than after a random delay.
const STALL_EVERY: u64 = 5;
/// Keys a writer chooses from (ids; see `key_bytes`).
/// More than the 704 keys a fresh index holds, so rounds cross index growth too.
const KEYS: u32 = 1500;
/// A writer's sequence ends here; it then idles until killed.
const MAX_OPS: u64 = 10_000;

/// splitmix64: a small deterministic generator, the same in parent and child.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Key `id`: varied lengths (0 to ~60 bytes), not all UTF-8; id 0 is the empty key.
fn key_bytes(id: u32) -> Vec<u8> {
    if id == 0 {
        return Vec::new();
    }
    let mut k = format!("k{id}/").into_bytes();
    let extra = (id.wrapping_mul(7) % 53) as usize;
    k.extend(
        (0..extra).map(|i| (id as u8).wrapping_mul(31).wrapping_add((i as u8).wrapping_mul(13))),
    );
    k
}

/// The value a put of `key` with `vseed` and `len` writes: a pure function, so the parent
/// can check it without the child sending it.
fn value_bytes(key: &[u8], vseed: u64, len: usize) -> Vec<u8> {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut rng = Rng(h ^ vseed.rotate_left(17) ^ len as u64);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What a value of a batch starts with, before its generation (the batch's seed).
const GEN_TAG: &[u8; 8] = b"mapkvgen";

/// The value a batch with generation `generation` puts for `key`: the tag, the generation,
/// then bytes as for a put.
fn batch_value(key: &[u8], generation: u64, len: usize) -> Vec<u8> {
    let mut v = GEN_TAG.to_vec();
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend(value_bytes(key, generation, len));
    v
}

/// The generation a batch wrote into `value`, if a batch wrote it.
fn generation_of(value: &[u8]) -> Option<u64> {
    let tagged = value.len() >= 16 && value[..8] == GEN_TAG[..];
    tagged.then(|| u64::from_le_bytes(value[8..16].try_into().expect("8 bytes")))
}

/// The operations of the batch with generation (and seed) `generation`, in order: key id
/// and, for a put, the length of the value after the tag; `None` for a delete. 20 to 200
/// operations, the first a put; keys repeat now and then, and some deletes name absent keys.
fn batch_ops(generation: u64) -> Vec<(u32, Option<usize>)> {
    let mut r = Rng(generation);
    let n = 20 + r.below(181);
    (0..n)
        .map(|i| {
            let key = r.below(u64::from(KEYS)) as u32;
            if i > 0 && r.below(10) == 0 {
                return (key, None);
            }
            let len = match r.below(100) {
                0..80 => r.below(512) as usize,
                80..98 => 512 + r.below(1536) as usize,
                _ => 2048 + r.below(6144) as usize,
            };
            (key, Some(len))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer's operation; `Batch` is `Store::write` of `batch_ops(generation)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put { key: u32, vseed: u64, len: usize },
    Delete { key: u32 },
    Batch { generation: u64 },
    Sync,
}

/// The writer's operation sequence for a seed.
struct Ops(Rng);

impl Ops {
    fn new(seed: u64) -> Self {
        Self(Rng(seed))
    }

    fn next_op(&mut self) -> Op {
        let r = &mut self.0;
        match r.below(1000) {
            0..4 => Op::Sync,
            4..9 => Op::Batch { generation: r.next_u64() },
            9..209 => Op::Delete { key: r.below(u64::from(KEYS)) as u32 },
            _ => {
                // A hot set of keys is overwritten often; the rest now and then.
                let key = if r.below(2) == 0 {
                    r.below(40) as u32
                } else {
                    r.below(u64::from(KEYS)) as u32
                };
                let vseed = r.next_u64();
                let len = match r.below(1000) {
                    0..8 => 96 * 1024 + r.below(16 * 1024) as usize, // ~100 KiB
                    8..200 => 1024 + r.below(7 * 1024) as usize,     // several KiB
                    200..500 => 64 + r.below(960) as usize,
                    _ => r.below(64) as usize,
                };
                Op::Put { key, vseed, len }
            }
        }
    }
}

/// The line a writer prints once operation `i` returned; `existed` is what delete returned.
fn ack_line(i: u64, op: Op, existed: bool) -> String {
    match op {
        Op::Put { key, vseed, len } => format!("{i} P {} {vseed} {len}", hex(&key_bytes(key))),
        Op::Delete { key } => format!("{i} D {} {}", hex(&key_bytes(key)), u8::from(existed)),
        Op::Batch { generation } => format!("{i} B {generation}"),
        Op::Sync => format!("{i} S"),
    }
}

/// The writer's seam when told to stall: counts down the appends of the armed batch and,
/// before the chosen one is published, reports `M` and waits to be killed.
struct Stall {
    /// Appends left until the stall; 0 when not armed.
    left: AtomicU64,
}

impl Observer for Stall {
    fn before(&self, op: OsOp<'_>) -> std::io::Result<()> {
        if matches!(op, OsOp::Append { .. }) {
            let left = self.left.load(Ordering::Relaxed);
            if left == 1 {
                report("M");
                thread::sleep(CHILD_IDLE);
                std::process::exit(1); // never killed: the parent is gone
            }
            self.left.store(left.saturating_sub(1), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Child role `writer`: opens the store, reports what open found, then performs the seed's
/// operations, acknowledging each one after it returned. With `stall = (op, record)`,
/// stalls inside batch operation `op` before publishing its record number `record`.
fn child_writer(dir: &Path, seed: u64, stall: Option<(u64, u64)>) -> i32 {
    let t = Instant::now();
    let seam = Arc::new(Stall { left: AtomicU64::new(0) });
    let opened = match stall {
        Some(_) => OpenOptions::new().observer(seam.clone()).open(dir),
        None => Store::open(dir),
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            report(&format!("E open: {e}"));
            return 2;
        }
    };
    let r = store.recovery();
    let how = if r.was_clean() {
        0
    } else if r.resumed_from.is_some() {
        1
    } else {
        2
    };
    report(&format!("O {} {} {}", how, store.len(), t.elapsed().as_micros()));
    let mut ops = Ops::new(seed);
    for i in 0..MAX_OPS {
        let op = ops.next_op();
        let existed = match op {
            Op::Put { key, vseed, len } => {
                let k = key_bytes(key);
                store.put(&k, value_bytes(&k, vseed, len)).map(|()| false)
            }
            Op::Delete { key } => store.delete(key_bytes(key)),
            Op::Batch { generation } => {
                let mut batch = Batch::new();
                for (key, put) in batch_ops(generation) {
                    let k = key_bytes(key);
                    match put {
                        Some(len) => batch.put(&k, batch_value(&k, generation, len)),
                        None => batch.delete(&k),
                    };
                }
                if let Some((op, record)) = stall
                    && op == i
                {
                    seam.left.store(record, Ordering::Relaxed);
                }
                store.write(batch).map(|()| false)
            }
            Op::Sync => store.sync().map(|()| false),
        };
        match existed {
            Ok(existed) => report(&ack_line(i, op, existed)),
            Err(e) => {
                report(&format!("E op {i} {op:?}: {e}"));
                return 2;
            }
        }
    }
    report("done");
    thread::sleep(CHILD_IDLE);
    std::mem::forget(store); // never closed cleanly, as if killed
    1
}

/// A value the parent knows a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    /// Written by a put: `value_bytes(key, vseed, len)`.
    Put { vseed: u64, len: usize },
    /// Written by a batch: `batch_value(key, generation, len)`.
    Batch { generation: u64, len: usize },
}

impl Val {
    fn bytes(self, key: u32) -> Vec<u8> {
        match self {
            Val::Put { vseed, len } => value_bytes(&key_bytes(key), vseed, len),
            Val::Batch { generation, len } => batch_value(&key_bytes(key), generation, len),
        }
    }
}

/// What the parent knows must be in the store: key id -> value.
type Model = HashMap<u32, Val>;

fn apply(model: &mut Model, op: Op) {
    match op {
        Op::Put { key, vseed, len } => {
            model.insert(key, Val::Put { vseed, len });
        }
        Op::Delete { key } => {
            model.remove(&key);
        }
        Op::Batch { generation } => {
            for (key, put) in batch_ops(generation) {
                match put {
                    Some(len) => model.insert(key, Val::Batch { generation, len }),
                    None => model.remove(&key),
                };
            }
        }
        Op::Sync => {}
    }
}

/// The number of records the batch writes onto `model` (a delete of an absent key writes
/// none).
fn batch_records(model: &Model, generation: u64) -> u64 {
    let mut live: BTreeSet<u32> = model.keys().copied().collect();
    let mut records = 0;
    for (key, put) in batch_ops(generation) {
        records += u64::from(put.is_some() || live.contains(&key));
        if put.is_some() {
            live.insert(key);
        } else {
            live.remove(&key);
        }
    }
    records
}

/// Whether `got` is what `model` says `key` holds.
fn holds(model: &Model, key: u32, got: Option<&[u8]>) -> bool {
    match (model.get(&key), got) {
        (None, None) => true,
        (Some(val), Some(got)) => got == val.bytes(key),
        _ => false,
    }
}

fn describe(got: Option<&[u8]>) -> String {
    match got {
        None => "absent".into(),
        Some(v) => format!("{} bytes starting {}", v.len(), hex(&v[..v.len().min(16)])),
    }
}

/// Seed of the whole test; `MAPKV_CRASH_SEED` replays or explores another one.
fn base_seed() -> u64 {
    std::env::var("MAPKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d61_706b_765f_6b39)
}

/// What the parent knows about how the last writer left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// No store yet (round 0).
    New,
    /// Closed cleanly; a writer killed before its first write changes nothing.
    Clean,
    /// Written to and never closed: the next open must rebuild the index.
    Dirty,
    /// A writer may have begun its first write when killed.
    Unknown,
}

/// Checks that every batch is whole or absent (the keys carrying each batch's generation
/// are exactly those the model says still hold its values), then every key of the key
/// space against `model`, and the live count.
fn check_all(store: &Store, model: &Model, ctx: &str) {
    let values: Vec<_> = (0..KEYS).map(|key| store.get(key_bytes(key)).expect("get")).collect();
    let mut found: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut wanted: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for key in 0..KEYS {
        if let Some(generation) = values[key as usize].as_deref().and_then(generation_of) {
            found.entry(generation).or_default().push(key);
        }
        if let Some(Val::Batch { generation, .. }) = model.get(&key) {
            wanted.entry(*generation).or_default().push(key);
        }
    }
    for generation in found.keys().chain(wanted.keys()) {
        let (found, wanted) = (found.get(generation), wanted.get(generation));
        assert!(
            found == wanted,
            "batch {generation} is only partly there: keys {found:?} carry its generation, \
             the acknowledged operations leave it on keys {wanted:?}; {ctx}"
        );
    }
    for key in 0..KEYS {
        let got = &values[key as usize];
        assert!(
            holds(model, key, got.as_deref()),
            "key {key} ({}) reads {} but the acknowledged operations left it {:?}; {ctx}",
            hex(&key_bytes(key)),
            describe(got.as_deref()),
            model.get(&key)
        );
    }
    assert_eq!(store.len(), model.len() as u64, "len disagrees with the live keys; {ctx}");
}

#[test]
fn kill_9_at_any_moment_loses_nothing_put_or_delete_returned() {
    dispatch_child_role();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    let base = base_seed();
    let mut plan = Rng(base);
    let mut model = Model::new();
    let mut left = Left::New;
    let mut rounds_with_writes = 0;
    let mut summary = Vec::new();

    for round in 0..ROUNDS {
        let seed = plan.next_u64();
        // Even rounds count the delay from the spawn, often a short one, so some kills land
        // in start-up or in the writer's own recovery of a store left dirty; odd rounds
        // count it from the first acknowledged put, so they always kill after a write.
        let after_first_put = round % 2 == 1;
        let max_ms = if !after_first_put && plan.below(2) == 0 { 40 } else { 300 };
        let delay = Duration::from_millis(5 + plan.below(max_ms - 4));
        // Odd rounds check through a read-only handle, which leaves the store dirty: the
        // next writer recovers it (and may be killed while doing so).
        let check_read_only = round % 2 == 1;
        // Some rounds kill the writer inside a batch for certain: the first batch from a
        // random operation on, before a random one of its records (or its commit) is
        // published. (Other rounds kill inside a batch only when the delay lands there.)
        let stall = (round % STALL_EVERY == STALL_EVERY - 1).then(|| {
            let from = plan.below(1500);
            let mut ops = Ops::new(seed);
            let (op, generation) = (0..MAX_OPS)
                .find_map(|i| match ops.next_op() {
                    Op::Batch { generation } if i >= from => Some((i, generation)),
                    _ => None,
                })
                .expect("the seed gives a batch");
            let puts = batch_ops(generation).iter().filter(|(_, put)| put.is_some()).count();
            (op, 1 + plan.below(puts as u64 + 1))
        });
        let ctx = format!(
            "base seed {base} (MAPKV_CRASH_SEED), round {round}, seed {seed}, {}",
            match stall {
                Some((op, record)) => format!("stalled in op {op} before record {record}"),
                None => format!("delay {delay:?}"),
            }
        );

        let mut child = spawn_child_with(CRASH_TEST, "writer", &dir, Some(seed), stall);
        let lines_rx = read_marked_lines(child.child(), MARK);
        let stderr = read_stderr(child.child());
        let mut lines = Vec::new();
        if stall.is_some() {
            loop {
                match lines_rx.recv_timeout(HANG_GUARD) {
                    Ok(l) if l == "M" => break,
                    Ok(l) => {
                        let end = l == "done" || l.starts_with('E');
                        lines.push(l);
                        assert!(!end, "the writer never stalled: {:?}; {ctx}", lines.last());
                    }
                    Err(e) => panic!("the writer never stalled ({e:?}); {ctx}"),
                }
            }
        } else if after_first_put {
            loop {
                match lines_rx.recv_timeout(HANG_GUARD) {
                    Ok(l) => {
                        let put = l.split(' ').nth(1) == Some("P");
                        let end = l == "done" || l.starts_with('E');
                        lines.push(l);
                        if put || end {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => panic!("writer made no progress; {ctx}"),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        if stall.is_none() {
            thread::sleep(delay);
        }
        let status = child.kill_and_wait();
        lines.extend(lines_rx.iter());
        let stderr = stderr.join().unwrap_or_default();
        assert!(
            killed_by_sigkill(status),
            "the writer must still be running when killed, but: {status}; {ctx}; last lines \
             {:?}; stderr:\n{stderr}",
            &lines[lines.len().saturating_sub(5)..]
        );

        // What the writer's open found: "O <index rebuilt> <len> <micros>".
        let mut it = lines.iter();
        let mut open_micros = None;
        if let Some(o) = it.next() {
            let f: Vec<&str> = o.split(' ').collect();
            assert!(f.len() == 4 && f[0] == "O", "bad first line {o:?}; {ctx}");
            assert_eq!(
                f[2],
                model.len().to_string(),
                "the writer's open counted the wrong number of keys; {ctx}"
            );
            // 0 clean, 1 resumed from the killed writer's checkpoint, 2 rebuilt.
            let want = match left {
                Left::Clean => Some("0"),
                Left::Dirty => Some("1"),
                Left::New | Left::Unknown => None,
            };
            if let Some(want) = want {
                assert_eq!(
                    f[1], want,
                    "how the writer's open of a store left {left:?} recovered; {ctx}"
                );
            }
            open_micros = f[3].parse::<u64>().ok();
        }

        // Replay the acknowledged operations against the model.
        let mut ops = Ops::new(seed);
        let mut acked = 0u64;
        let mut wrote = false;
        let mut done = false;
        for line in it {
            if line == "done" {
                done = true;
                continue;
            }
            assert!(!done, "line after done: {line}; {ctx}");
            let op = ops.next_op();
            let existed = matches!(op, Op::Delete { key } if model.contains_key(&key));
            let expected = ack_line(acked, op, existed);
            assert_eq!(
                *line, expected,
                "acknowledgement {acked} differs from the operation the seed gives (for a \
                 delete, the last field is what delete returned vs. whether the key was \
                 live); {ctx}"
            );
            wrote |= matches!(op, Op::Put { .. } | Op::Batch { .. }) || existed;
            apply(&mut model, op);
            acked += 1;
        }
        assert_eq!(done, acked == MAX_OPS, "{ctx}");
        // The one operation that may have been running when the kill came.
        let in_flight = (!done).then(|| ops.next_op());
        let ctx = format!("{ctx}; acked {acked} ops, then {in_flight:?} was in flight");
        left = match left {
            _ if wrote => Left::Dirty,
            Left::Dirty => Left::Dirty,
            _ if in_flight.is_some_and(|op| op != Op::Sync) => Left::Unknown,
            Left::Clean => Left::Clean,
            Left::New | Left::Unknown => Left::Unknown,
        };
        if wrote {
            rounds_with_writes += 1;
        }

        // The same files, for a full rebuild to compare with.
        let rebuild_dir = tmp.path().join(format!("rebuild-{round}"));
        std::fs::create_dir_all(&rebuild_dir).expect("mkdir");
        for f in ["data.mkv", "index.mkv", "live.mkv"] {
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), rebuild_dir.join(f)).expect("copy");
            }
        }
        let opened = if check_read_only {
            OpenOptions::new().read_only(true).open(&dir)
        } else {
            Store::open(&dir)
        };
        let store = opened.unwrap_or_else(|e| panic!("open after the kill failed: {e}; {ctx}"));
        let report = store.recovery().clone();
        let ctx = format!("{ctx}; recovery {report:?}");
        if left == Left::Dirty {
            assert!(
                report.resumed_from.is_some(),
                "the store was written and never closed, so open must resume the killed \
                 writer's index; {ctx}"
            );
            assert!(report.records_replayed <= 300, "replayed a lot; {ctx}");
        }
        let rebuilt = OpenOptions::new().rebuild_index(true).open(&rebuild_dir).expect("rebuild");
        for key in 0..KEYS {
            let (a, b) = (store.get(key_bytes(key)).expect("get"), rebuilt.get(key_bytes(key)));
            assert!(
                a.as_deref() == b.expect("get").as_deref(),
                "key {key} differs from a full rebuild of the same files; {ctx}"
            );
        }
        let figures = |s: &Store| {
            let st = s.stats();
            (s.len(), st.records, st.log_bytes, st.garbage_bytes, st.log_end)
        };
        assert_eq!(figures(&store), figures(&rebuilt), "figures differ from a rebuild; {ctx}");
        drop(rebuilt);
        let _ = std::fs::remove_dir_all(&rebuild_dir);
        // Settle the in-flight operation: its key may show either outcome, nothing else may.
        let mut took_effect = None;
        if let Some(op @ (Op::Put { key, .. } | Op::Delete { key })) = in_flight {
            let got = store.get(key_bytes(key)).expect("get in-flight key");
            let mut after = model.clone();
            apply(&mut after, op);
            if holds(&after, key, got.as_deref()) {
                // (Deleting an absent key changes nothing: either outcome is this one.)
                took_effect = Some(!holds(&model, key, got.as_deref()));
                model = after;
            } else {
                assert!(
                    holds(&model, key, got.as_deref()),
                    "the in-flight operation left its key neither as before nor as after: \
                     {}; {ctx}",
                    describe(got.as_deref())
                );
                took_effect = Some(false);
            }
        }
        if let Some(op @ Op::Batch { generation }) = in_flight {
            // All of it or none of it: every key it touches as before, or every one as after.
            let mut after = model.clone();
            apply(&mut after, op);
            let keys: BTreeSet<u32> = batch_ops(generation).iter().map(|&(key, _)| key).collect();
            let (mut as_before, mut as_after, mut tagged) = (Vec::new(), Vec::new(), 0);
            for &key in &keys {
                let got = store.get(key_bytes(key)).expect("get in-flight batch key");
                let got = got.as_deref();
                tagged += usize::from(got.and_then(generation_of) == Some(generation));
                match (holds(&model, key, got), holds(&after, key, got)) {
                    (true, false) => as_before.push(key),
                    (false, true) => as_after.push(key),
                    (true, true) => {} // the batch leaves this key as it was
                    (false, false) => panic!(
                        "key {key} of the in-flight batch reads {}: neither as before nor as \
                         after it; {ctx}",
                        describe(got)
                    ),
                }
            }
            let should = keys.iter().filter(|k| {
                after.get(k).is_some_and(
                    |v| matches!(v, Val::Batch { generation: g, .. } if *g == generation),
                )
            });
            let should = should.count();
            assert!(
                as_before.is_empty() || as_after.is_empty(),
                "the in-flight batch was applied in part: {tagged} of its {should} keys carry \
                 its generation; keys as after it {as_after:?}, as before it {as_before:?}; \
                 {ctx}"
            );
            assert!(tagged == 0 || tagged == should, "{tagged} of {should} tagged; {ctx}");
            took_effect = Some(!as_after.is_empty());
            if let Some((op, record)) = stall {
                assert_eq!(acked, op, "the writer stalled in another operation; {ctx}");
                // The stall says exactly what the page cache held: records before `record`
                // published and `record` itself copied, or the whole batch with its commit.
                let records = batch_records(&model, generation);
                let cut = match report.cut {
                    Some((_, CorruptKind::UnfinishedBatch { records })) => Some(records),
                    _ => None,
                };
                if record <= records {
                    assert_eq!(took_effect, Some(false), "a batch without commit kept; {ctx}");
                    assert_eq!(cut, Some(record), "the unfinished batch's cut; {ctx}");
                } else {
                    assert_eq!(took_effect, Some(true), "a batch with its commit lost; {ctx}");
                    assert_eq!(report.cut, None, "{ctx}");
                }
            }
            if took_effect == Some(true) {
                model = after;
            }
        } else {
            assert!(stall.is_none(), "the writer stalled outside a batch; {ctx}");
        }
        check_all(&store, &model, &ctx);
        summary.push(format!(
            "round {round}: {}{}, writer open {open_micros:?} us, acked {acked}, \
             in flight {in_flight:?} (took effect {took_effect:?}), checked {}, rebuilt {}, \
             replayed {}, cut {:?}",
            match stall {
                Some((op, record)) => format!("stalled in op {op} before record {record}"),
                None => format!("delay {delay:?}"),
            },
            if after_first_put && stall.is_none() { " after 1st put" } else { "" },
            if check_read_only { "read-only" } else { "writable" },
            report.index_rebuilt,
            report.records_replayed,
            report.cut
        ));
        if check_read_only {
            drop(store);
        } else {
            store.close().expect("close");
            left = Left::Clean;
        }
    }

    // Whatever the last round left, a writable open recovers the same state.
    let store = Store::open(&dir).expect("final open");
    check_all(&store, &model, &format!("final writable open, base seed {base}"));
    store.close().expect("final close");
    eprintln!("{}", summary.join("\n"));
    assert!(
        rounds_with_writes > 0,
        "no round killed a writer after it wrote: the test checked nothing"
    );
    // A fresh index (1024 slots) holds 704 keys; more live keys mean it grew on the way.
    assert!(model.len() > 704, "only {} live keys: the rounds never grew the index", model.len());
}
