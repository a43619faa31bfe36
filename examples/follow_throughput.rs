//! Measures random-get throughput of a reader in another process against a reader thread in
//! the writer's own process, both while a writer thread keeps overwriting keys at a steady
//! rate: `cargo run --release --example follow_throughput -- [keys] [gets] [puts_per_sec]`
//! (defaults 1,000,000 keys of 24 bytes with 150-byte values, 2,000,000 gets per round,
//! 10,000 puts/s, a sync every 100 ms).
//!
//! Both readers use `Store::reader()` (`Reader::get`, plain slices), a fresh `Reader` per
//! round, the same key sequence and the same number of gets, after one untimed warm-up pass
//! each. The two cases alternate over 5 rounds (thread first in even rounds, process first
//! in odd ones) so that machine noise hits both alike; the figures are medians. The example
//! re-executes itself with `--reader` for the other process, which opens the store
//! read-only beside the live writer and runs a round whenever the parent asks.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mapkv::{Batch, OpenOptions, Store};

const ROUNDS: usize = 5;
const VALUE_LEN: usize = 150;
const SEED: u64 = 88_172_645_463_325_252;
/// How often the writer thread syncs.
const SYNC_EVERY: Duration = Duration::from_millis(100);

fn key(i: u64) -> [u8; 24] {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&h.to_le_bytes());
    k[8..16].copy_from_slice(&i.to_le_bytes());
    k
}

fn value(i: u64, generation: u64) -> [u8; VALUE_LEN] {
    let mut v = [(i as u8) ^ (generation as u8); VALUE_LEN];
    v[..8].copy_from_slice(&generation.to_le_bytes());
    v[8..16].copy_from_slice(&i.to_le_bytes());
    v
}

/// The key sequence every reader uses: `gets` random key indices below `keys`.
fn key_sequence(keys: u64, gets: u64) -> Vec<[u8; 24]> {
    let mut x = SEED;
    (0..gets)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(x % keys)
        })
        .collect()
}

/// One pass of gets through a fresh `Reader`: elapsed time and bytes read.
fn run_gets(store: &Store, keys: &[[u8; 24]]) -> mapkv::Result<(Duration, usize)> {
    let reader = store.reader();
    let t = Instant::now();
    let mut bytes = 0usize;
    for k in keys {
        bytes += reader.get(k)?.map_or(0, <[u8]>::len);
    }
    Ok((t.elapsed(), bytes))
}

fn parse(arg: Option<&String>, default: u64, what: &str) -> u64 {
    arg.map_or(default, |s| {
        s.replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("{what} must be a number, not {s:?}");
            eprintln!("usage: follow_throughput [keys] [gets per round] [puts per second]");
            std::process::exit(2)
        })
    })
}

fn main() -> mapkv::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--reader") {
        return reader_process(&args[2..]);
    }
    let keys = parse(args.get(1), 1_000_000, "keys").max(1);
    let gets = parse(args.get(2), 2_000_000, "gets").max(1);
    let rate = parse(args.get(3), 10_000, "puts per second");

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let store = Arc::new(Store::open(&db)?);
    let t = Instant::now();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = Batch::new();
        for &i in chunk {
            batch.put(key(i), value(i, 0));
        }
        store.write(batch)?;
    }
    store.sync()?;
    println!("loaded {keys} keys in {:.2?}", t.elapsed());
    let sequence = key_sequence(keys, gets);

    // The other process opens the store read-only beside this writer and warms up.
    let mut child = ReaderProcess::spawn(&db, keys, gets);
    // The writer thread: overwrites of random existing keys, `rate` a second, in 1 ms steps.
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, puts) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&puts));
        std::thread::spawn(move || -> mapkv::Result<()> {
            let started = Instant::now();
            let mut last_sync = Instant::now();
            let mut x = SEED ^ 0x5555;
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while done < due {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = x % keys;
                    store.put(key(i), value(i, done + 1))?;
                    done += 1;
                }
                puts.store(done, Ordering::Relaxed);
                if last_sync.elapsed() >= SYNC_EVERY {
                    store.sync()?;
                    last_sync = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    child.wait_ready();

    // Warm-up in this process too (the other process did its own before saying ready).
    let in_thread = |store: &Arc<Store>| {
        std::thread::scope(|s| s.spawn(|| run_gets(store, &sequence)).join().expect("reader"))
    };
    in_thread(&store)?;

    let per_sec = |d: Duration| gets as f64 / d.as_secs_f64();
    let expected_bytes = gets as usize * VALUE_LEN;
    let (mut thread_rates, mut process_rates) = (Vec::new(), Vec::new());
    let measured = Instant::now();
    let puts_before = puts.load(Ordering::Relaxed);
    for round in 0..ROUNDS {
        for case in 0..2 {
            if (case + round) % 2 == 0 {
                let (took, bytes) = in_thread(&store)?;
                assert_eq!(bytes, expected_bytes, "every key is present with 150 bytes");
                thread_rates.push(per_sec(took));
            } else {
                let (took, bytes) = child.run();
                assert_eq!(bytes, expected_bytes, "every key is present with 150 bytes");
                process_rates.push(per_sec(took));
            }
        }
        println!(
            "round {round}: thread {:.2} M gets/s, process {:.2} M gets/s",
            thread_rates[round] / 1e6,
            process_rates[round] / 1e6
        );
    }
    let put_rate =
        (puts.load(Ordering::Relaxed) - puts_before) as f64 / measured.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread")?;
    child.finish();

    thread_rates.sort_by(f64::total_cmp);
    process_rates.sort_by(f64::total_cmp);
    let (thread, process) = (thread_rates[ROUNDS / 2], process_rates[ROUNDS / 2]);
    println!(
        "{keys} keys, {gets} random gets per round, writer {put_rate:.0} puts/s (asked \
         {rate}/s), sync every {SYNC_EVERY:?}"
    );
    println!(
        "medians of {ROUNDS}: reader thread in the writer's process {:.2} M gets/s ({:.0} \
         ns/get); reader in another process {:.2} M gets/s ({:.0} ns/get); process / thread \
         = {:.2}",
        thread / 1e6,
        1e9 / thread,
        process / 1e6,
        1e9 / process,
        process / thread
    );
    Ok(())
}

/// The reader in another process, driven over its stdin and stdout.
struct ReaderProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ReaderProcess {
    fn spawn(db: &std::path::Path, keys: u64, gets: u64) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .arg("--reader")
            .arg(db)
            .args([keys.to_string(), gets.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the reader process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => line.trim_end().to_string(),
            _ => {
                let status = self.child.wait().expect("wait for the reader process");
                eprintln!("the reader process ended ({status}); its error is above");
                std::process::exit(1);
            }
        }
    }

    fn wait_ready(&mut self) {
        let line = self.line();
        assert_eq!(line, "ready", "the reader process said {line:?}");
    }

    /// Runs one round in the other process: its elapsed time and bytes read.
    fn run(&mut self) -> (Duration, usize) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"run\n").and_then(|()| stdin.flush()).expect("ask the reader");
        let line = self.line();
        let mut f = line.split(' ').map(|x| x.parse::<u64>().expect("numeric answer"));
        let nanos = f.next().expect("nanoseconds");
        let bytes = f.next().expect("bytes") as usize;
        (Duration::from_nanos(nanos), bytes)
    }

    fn finish(mut self) {
        drop(self.stdin.take()); // end of input: the reader exits
        let status = self.child.wait().expect("wait for the reader process");
        assert!(status.success(), "the reader process ended with {status}");
    }
}

/// `--reader <db> <keys> <gets>`: opens the store read-only, warms up, says `ready`, then
/// runs one timed pass of gets for every `run` line on stdin, answering
/// `<nanoseconds> <bytes read>`.
fn reader_process(args: &[String]) -> mapkv::Result<()> {
    let [db, keys, gets] = args else {
        eprintln!("usage: follow_throughput --reader <db> <keys> <gets>");
        std::process::exit(2);
    };
    let keys = parse(Some(keys), 0, "keys");
    let gets = parse(Some(gets), 0, "gets");
    let store = match OpenOptions::new().read_only(true).open(db) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("reader process: read-only open beside the writer failed: {e}");
            std::process::exit(1);
        }
    };
    let sequence = key_sequence(keys, gets);
    run_gets(&store, &sequence)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).expect("stdout");
    for line in std::io::stdin().lock().lines() {
        if line.expect("stdin") != "run" {
            continue;
        }
        let (took, bytes) = run_gets(&store, &sequence)?;
        writeln!(out, "{} {bytes}", took.as_nanos()).and_then(|()| out.flush()).expect("stdout");
    }
    Ok(())
}
