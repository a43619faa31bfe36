//! Measures opening a store at N keys (24 B keys, 150 B values): after a clean close; after
//! the writer was killed (SIGKILL) in the middle of a stream of unsynced puts, deletes and
//! batches, which resumes its index from its last checkpoint (DESIGN.md §6); and the same
//! kill followed by a full rebuild (what open does after a restart, or did before resuming
//! existed), beside one plain read of the data file:
//! `cargo run --release --example open_recovery -- 10000000`. With `--cold` (root only) the
//! page cache is dropped before each rebuild and before the plain read.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mapkv::{Batch, Store};

const KILLS: usize = 7;

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn key(i: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

/// The child: opens the store and writes until it is killed, never syncing: 70 % overwrites,
/// 10 % new keys, 10 % deletes, 10 % batches of 100 mixed operations.
fn child(path: &Path, n: u64) -> mapkv::Result<()> {
    let store = Store::open(path)?;
    println!("ready");
    let mut rng = std::process::id() as u64 | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut fresh = n;
    loop {
        let r = next();
        match r % 10 {
            0..=6 => store.put(key(r % n), [r as u8; 150])?,
            7 => {
                store.put(key(fresh), [r as u8; 150])?;
                fresh += 1;
            }
            8 => drop(store.delete(key(next() % n))?),
            _ => {
                let mut b = Batch::new();
                for _ in 0..100 {
                    let r = next();
                    if r % 4 == 0 {
                        b.delete(key(r % n))
                    } else {
                        b.put(key(r % n), [r as u8; 150])
                    };
                }
                store.write(b)?;
            }
        }
    }
}

/// Starts a writer child on `path`, lets it write for a while, and SIGKILLs it.
fn kill_a_writer(path: &Path, n: u64, round: usize) {
    let mut c = Command::new(std::env::current_exe().expect("this example"))
        .arg("--child")
        .arg(path)
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready", "the writer did not start");
    std::thread::sleep(Duration::from_millis(50 + 37 * round as u64 % 150));
    c.kill().expect("SIGKILL");
    c.wait().expect("wait");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(Path::new(&args[2]), args[3].parse().expect("n"));
    }
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let cold = args.iter().any(|a| a == "--cold");
    let dir = tempfile::tempdir_in(std::env::var("MAPKV_DIR").unwrap_or_else(|_| "/tmp".into()))
        .expect("tempdir");
    let path: PathBuf = dir.path().join("db");
    let store = Store::open(&path)?;
    let t = Instant::now();
    for start in (0..n).step_by(10_000) {
        let mut b = Batch::new();
        for i in start..(start + 10_000).min(n) {
            b.put(key(i), [i as u8; 150]);
        }
        store.write(b)?;
    }
    println!("loaded {n} keys in {:.2} s", t.elapsed().as_secs_f64());
    store.close()?;

    let mut clean = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = Store::open(&path)?;
        clean.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(s.recovery().was_clean());
        drop(s);
    }
    println!("clean open: median {:.3} ms (of 5: {clean:.3?})", median(clean.clone()));

    let (mut resumed, mut replayed, mut cuts) = (Vec::new(), Vec::new(), 0);
    for round in 0..KILLS {
        kill_a_writer(&path, n, round);
        let t = Instant::now();
        let s = Store::open(&path)?;
        resumed.push(t.elapsed().as_secs_f64() * 1e3);
        let r = s.recovery();
        assert!(r.resumed_from.is_some(), "a kill in this boot must resume: {r:?}");
        replayed.push(r.records_replayed);
        cuts += usize::from(r.cut.is_some());
        drop(s);
    }
    println!(
        "open after kill -9 (resumed): median {:.3} ms (of {KILLS}: {resumed:.3?}); records \
         replayed {replayed:?}; {cuts} of {KILLS} cut a torn write",
        median(resumed.clone())
    );

    let (mut rebuilt, mut log) = (Vec::new(), 0);
    for round in 0..3 {
        kill_a_writer(&path, n, round);
        // As after a restart: the checkpoint is not trusted and the log is scanned whole.
        mapkv::testing::adopt_page(&path, true).expect("page");
        if cold {
            drop_caches();
        }
        let t = Instant::now();
        let s = Store::open(&path)?;
        rebuilt.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(s.recovery().index_rebuilt);
        log = s.recovery().log_end;
        drop(s);
    }
    let rebuild = median(rebuilt.clone());
    println!(
        "open after kill -9 and a restart (full rebuild): median {rebuild:.1} ms (of 3: \
         {rebuilt:.1?}), log {:.1} MiB; resumed is {:.0}x faster",
        log as f64 / 1048576.0,
        rebuild / median(resumed)
    );
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let mut f = std::fs::File::open(path.join("data.mkv")).expect("open data file");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while total < log {
        let got = f.read(&mut buf).expect("read");
        if got == 0 {
            break;
        }
        total += got as u64;
    }
    let read = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "plain read of the same {:.1} MiB: {read:.1} ms; rebuild / read = {:.2}",
        total as f64 / 1048576.0,
        rebuild / read
    );
    Ok(())
}
