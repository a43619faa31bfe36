//! Side-by-side benchmark: mapkv against LMDB (heed), redb, fjall, sled and candystore.
//!
//!     cargo run --release --manifest-path bench-compare/Cargo.toml -- --keys 1000000
//!     cargo run --release --manifest-path bench-compare/Cargo.toml -- --quick
//!
//! The parent process runs a physical-limits probe and then each engine in its own child
//! process (this binary re-executed with `--engine NAME`), so peak RSS is per engine. It
//! prints a markdown table per workload and writes results/results.json, results/RESULTS.md
//! and results/chart.png. See README.md.

mod data;
mod engines;
mod probe;
mod report;
mod results;
mod ycsb;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use data::{Keys, ReadStats, Values, shuffled};
use results::{EngineResult, Metric, OpenRecovery, Res, median};

struct Args {
    keys: usize,
    quick: bool,
    engine: Option<String>,
    engines: Vec<String>,
    probe: bool,
    out: Option<PathBuf>,
    no_probe: bool,
    render: bool,
    engines_given: bool,
    /// YCSB records (default N/10) and operations per workload run (default = records).
    ycsb_records: Option<usize>,
    ycsb_ops: Option<usize>,
    /// Run only the open/recovery group at this many keys.
    scale_keys: Option<usize>,
    /// Child: run only the open/recovery group.
    only_open: bool,
    /// Grandchild: open the store in `dir`, make non-durable puts, print "ready", sleep.
    recovery_writer: Option<String>,
    dir: Option<PathBuf>,
    cycle: usize,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        keys: 0,
        quick: false,
        engine: None,
        engines: engines::ENGINES.iter().map(|s| s.to_string()).collect(),
        probe: false,
        out: None,
        no_probe: false,
        render: false,
        engines_given: false,
        ycsb_records: None,
        ycsb_ops: None,
        scale_keys: None,
        only_open: false,
        recovery_writer: None,
        dir: None,
        cycle: 0,
    };
    let num = |s: Option<String>, what: &str| -> Res<usize> {
        Ok(s.ok_or(format!("{what} needs a number"))?.replace('_', "").parse()?)
    };
    let env_keys = std::env::var("BENCH_KEYS").ok().and_then(|s| s.replace('_', "").parse().ok());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--keys" | "-n" => {
                a.keys = it.next().ok_or("--keys needs a number")?.replace('_', "").parse()?
            }
            "--quick" => a.quick = true,
            "--engine" => a.engine = Some(it.next().ok_or("--engine needs a name")?),
            "--engines" => {
                a.engines_given = true;
                a.engines = it
                    .next()
                    .ok_or("--engines needs a comma-separated list")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                for e in &a.engines {
                    engines::check(e)?;
                }
            }
            "--probe" => a.probe = true,
            "--no-probe" => a.no_probe = true,
            "--render" => a.render = true,
            "--ycsb-records" => a.ycsb_records = Some(num(it.next(), &arg)?),
            "--ycsb-ops" => a.ycsb_ops = Some(num(it.next(), &arg)?),
            "--scale-keys" => a.scale_keys = Some(num(it.next(), &arg)?),
            "--only-open" => a.only_open = true,
            "--recovery-writer" => a.recovery_writer = Some(it.next().ok_or("engine name")?),
            "--dir" => a.dir = Some(it.next().ok_or("--dir needs a path")?.into()),
            "--cycle" => a.cycle = num(it.next(), &arg)?,
            "--out" => a.out = Some(it.next().ok_or("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: bench-compare [--keys N | --quick] [--engines a,b,..] [--no-probe]\n\
                     \x20      [--ycsb-records R] [--ycsb-ops OPS]\n\
                     N defaults to $BENCH_KEYS or 1000000; --quick means N = 100000.\n\
                     R (YCSB records of 1000 B) defaults to N/10, OPS (per YCSB workload) to R.\n\
                     bench-compare --scale-keys M [--engines a,b]: only the open/recovery group\n\
                     \x20 at M keys (default engines mapkv,lmdb), added to the existing results.json.\n\
                     bench-compare --render: redraw RESULTS.md and chart.png from results.json.\n\
                     engines: {}{}",
                    engines::ENGINES.join(","),
                    if engines::ENGINES.contains(&"rocksdb") {
                        ""
                    } else {
                        "\n(rocksdb: rebuild with --features rocksdb; needs clang, ~20 min compile)"
                    }
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if a.keys == 0 {
        a.keys = if a.quick { 100_000 } else { env_keys.unwrap_or(1_000_000) };
    }
    Ok(a)
}

fn main() -> Res<()> {
    let args = parse_args()?;
    if args.probe {
        let dir = temp_dir("probe");
        let p = probe::run(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let p = p?;
        std::fs::write(args.out.as_ref().ok_or("--out")?, serde_json::to_vec(&p)?)?;
        return Ok(());
    }
    if let Some(engine) = &args.recovery_writer {
        return recovery_writer(engine, args.dir.as_ref().ok_or("--dir")?, args.cycle);
    }
    if let Some(engine) = &args.engine {
        let result = if args.only_open {
            run_open_only(engine, args.keys)
        } else {
            let records = args.ycsb_records.unwrap_or((args.keys / 10).max(1000));
            run_engine(engine, args.keys, records, args.ycsb_ops.unwrap_or(records))
        };
        std::fs::write(args.out.as_ref().ok_or("--out")?, serde_json::to_vec_pretty(&result)?)?;
        return Ok(());
    }
    if args.render {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        let rep: report::Report =
            serde_json::from_slice(&std::fs::read(dir.join("results.json"))?)?;
        return write_outputs(&rep, &dir);
    }
    parent(&args)
}

fn write_outputs(rep: &report::Report, results_dir: &Path) -> Res<()> {
    let md = report::markdown(rep);
    println!("{md}");
    std::fs::write(results_dir.join("results.json"), serde_json::to_vec_pretty(rep)?)?;
    std::fs::write(results_dir.join("RESULTS.md"), &md)?;
    match report::chart(rep, &results_dir.join("chart.png")) {
        Ok(()) => eprintln!("wrote {}", results_dir.join("chart.png").display()),
        Err(e) => eprintln!("chart not drawn: {e}"),
    }
    eprintln!(
        "wrote {} and {} (total {:.0} s)",
        results_dir.join("results.json").display(),
        results_dir.join("RESULTS.md").display(),
        rep.total_wall_s
    );
    Ok(())
}

fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mapkv-bench-{what}-{}", std::process::id()))
}

// ---- parent -------------------------------------------------------------------------------

/// Runs `engine` in a child process (`--engine NAME` plus `extra`) and reads its result.
fn child(exe: &Path, results_dir: &Path, engine: &str, extra: &[String]) -> Res<EngineResult> {
    eprintln!("[{engine}] running in a child process ...");
    let out = results_dir.join(format!("tmp-{engine}-{}.json", std::process::id()));
    let st = Command::new(exe)
        .arg("--engine")
        .arg(engine)
        .args(extra)
        .arg("--out")
        .arg(&out)
        .status()?;
    let r = match std::fs::read(&out) {
        Ok(bytes) if st.success() => serde_json::from_slice::<EngineResult>(&bytes)?,
        _ => EngineResult {
            engine: engine.into(),
            config: engines::guarantee(engine).into(),
            error: Some(format!("child process failed: {st}")),
            ..Default::default()
        },
    };
    let _ = std::fs::remove_file(&out);
    if let Some(e) = &r.error {
        eprintln!("[{engine}] ERROR: {e}");
    }
    eprintln!("[{engine}] done in {:.1} s, peak RSS {} MiB", r.wall_s, r.peak_rss_kib / 1024);
    Ok(r)
}

/// `--scale-keys M`: the open/recovery group only, at M keys, added to results.json.
fn scale(args: &Args, m: usize) -> Res<()> {
    let results_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&results_dir)?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let engines: Vec<String> =
        if args.engines_given { args.engines.clone() } else { vec!["mapkv".into(), "lmdb".into()] };
    println!("bench-compare: open/recovery only, {m} keys, engines {engines:?}");
    let mut results = Vec::new();
    for engine in &engines {
        let extra = ["--only-open".to_string(), "--keys".into(), m.to_string()];
        results.push(child(&exe, &results_dir, engine, &extra)?);
    }
    let path = results_dir.join("results.json");
    let mut rep = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<report::Report>(&bytes)?,
        Err(_) => {
            eprintln!("no {} yet: writing one with the scale group only", path.display());
            report::Report {
                machine: report::Machine::collect(),
                keys: 0,
                command: String::new(),
                versions: report::versions(&engines),
                probe: None,
                engines: Vec::new(),
                total_wall_s: 0.0,
                ycsb_records: 0,
                ycsb_ops: 0,
                scale: None,
            }
        }
    };
    rep.scale = Some(report::Scale {
        keys: m,
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        date: report::Machine::collect().date,
        engines: results,
        wall_s: started.elapsed().as_secs_f64(),
    });
    write_outputs(&rep, &results_dir)
}

fn parent(args: &Args) -> Res<()> {
    if let Some(m) = args.scale_keys {
        return scale(args, m);
    }
    let results_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&results_dir)?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let machine = report::Machine::collect();
    let ycsb_records = args.ycsb_records.unwrap_or((args.keys / 10).max(1000));
    let ycsb_ops = args.ycsb_ops.unwrap_or(ycsb_records);
    println!(
        "bench-compare: {} keys, engines {:?}\nmachine: {} x {}, kernel {}, temp dir {} on {}\n\
         All data stays in the page cache (caches are never dropped).\n",
        args.keys,
        args.engines,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.temp_dir,
        machine.temp_fs,
    );

    let probe = if args.no_probe {
        None
    } else {
        eprintln!("[probe] pointer chasing over 1 GiB, one-page msync and fdatasync ...");
        let out = results_dir.join(format!("tmp-probe-{}.json", std::process::id()));
        let st = Command::new(&exe).arg("--probe").arg("--out").arg(&out).status()?;
        let p = if st.success() {
            Some(serde_json::from_slice::<probe::Probe>(&std::fs::read(&out)?)?)
        } else {
            eprintln!("[probe] failed: {st}");
            None
        };
        let _ = std::fs::remove_file(&out);
        if let Some(p) = &p {
            eprintln!(
                "[probe] dependent miss {:.1} ns, msync {:.1} us, fdatasync {:.1} us",
                p.chase_ns, p.msync_us, p.fdatasync_us
            );
        }
        p
    };

    let mut results = Vec::new();
    for engine in &args.engines {
        let extra = [
            "--keys".to_string(),
            args.keys.to_string(),
            "--ycsb-records".into(),
            ycsb_records.to_string(),
            "--ycsb-ops".into(),
            ycsb_ops.to_string(),
        ];
        results.push(child(&exe, &results_dir, engine, &extra)?);
    }

    let rep = report::Report {
        machine,
        keys: args.keys,
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        versions: report::versions(&args.engines),
        probe,
        engines: results,
        total_wall_s: started.elapsed().as_secs_f64(),
        ycsb_records,
        ycsb_ops,
        // Keep an earlier --scale-keys group (it is run separately).
        scale: std::fs::read(results_dir.join("results.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<report::Report>(&b).ok())
            .and_then(|r| r.scale),
    };
    write_outputs(&rep, &results_dir)
}

// ---- child: one engine --------------------------------------------------------------------

fn run_engine(engine: &str, n: usize, ycsb_records: usize, ycsb_ops: usize) -> EngineResult {
    let mut r = EngineResult {
        engine: engine.into(),
        config: engines::guarantee(engine).into(),
        ..Default::default()
    };
    let dir = temp_dir(engine);
    let t = Instant::now();
    if let Err(e) = workloads(engine, n, &dir, &mut r) {
        r.error = Some(e.to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
    if r.error.is_none() {
        if let Err(e) = ycsb_workloads(engine, ycsb_records, ycsb_ops, &dir.join("ycsb"), &mut r) {
            r.error = Some(format!("YCSB: {e}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if r.error.is_none() {
        if let Err(e) = open_recovery(engine, n, &dir.join("open"), &mut r) {
            r.error = Some(format!("open/recovery: {e}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    r.wall_s = t.elapsed().as_secs_f64();
    r.peak_rss_kib = status_kib("VmHWM");
    r
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return total };
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            let (a, b) = disk_usage(&e.path());
            total.0 += a;
            total.1 += b;
        } else {
            total.0 += md.len();
            total.1 += md.blocks() * 512;
        }
    }
    total
}

/// Writes keys `0..count` in durable batches of `batch`.
fn load_in_batches(
    db: &mut dyn engines::Engine,
    keys: &Keys,
    vals: &Values,
    count: usize,
    batch: usize,
) -> Res<()> {
    let mut start = 0;
    while start < count {
        let end = (start + batch).min(count);
        db.write_batch(keys, start..end, vals)?;
        start = end;
    }
    Ok(())
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64(), v)
}

fn log(engine: &str, what: &str, m: &Metric) {
    eprintln!(
        "[{engine}] {what:<14} {:>12.0} ops/s {:>10.3} us/op{}",
        m.ops_per_sec,
        1e6 / m.ops_per_sec,
        m.bytes_per_sec.map(|b| format!("  {:.2} GB/s", b / 1e9)).unwrap_or_default()
    );
}

fn check_reads(s: ReadStats, expect: u64, len: usize) -> Res<()> {
    if s.found != expect || s.bytes != expect * len as u64 {
        return Err(format!(
            "read check failed: found {} of {expect}, {} bytes (expected {})",
            s.found,
            s.bytes,
            expect * len as u64
        )
        .into());
    }
    Ok(())
}

fn workloads(engine: &str, n: usize, dir: &Path, r: &mut EngineResult) -> Res<()> {
    const VALUE_LEN: usize = 150;
    /// Runs of each read phase; the median is reported.
    const RUNS: usize = 5;
    let keys = Keys::random(n, 1);
    let vals = Values::new(VALUE_LEN, 101);
    let order1 = shuffled(n, 11);
    let order2 = shuffled(n, 12);
    let n_nosync = (n / 10).max(1);
    let nosync_keys = Keys::random(n_nosync, 2);
    let durable_keys = Keys::random(3 * 1000, 3);
    let batch_keys = Keys::random(100 * 1000, 4);
    let miss_keys = Keys::random((n / 10).max(1), 5);
    let miss_order: Vec<u32> = (0..miss_keys.len() as u32).collect();
    r.rss_before_kib = status_kib("VmRSS");

    let _ = std::fs::remove_dir_all(dir);
    let mut db = engines::open(engine, dir)?;
    let put = |m: &mut EngineResult, id: &str, metric: Metric| {
        log(engine, id, &metric);
        m.workloads.insert(id.into(), metric);
    };

    // 1. Bulk load: one transaction or batch, durable at the end.
    let (s, res) = time(|| db.write_batch(&keys, 0..n, &vals));
    res?;
    put(r, "bulk_load", Metric::new(n as u64, vec![s]));
    (r.file_bytes, r.alloc_bytes) = disk_usage(dir);
    eprintln!(
        "[{engine}] size after load: {:.1} MiB in files, {:.1} MiB allocated",
        r.file_bytes as f64 / (1 << 20) as f64,
        r.alloc_bytes as f64 / (1 << 20) as f64
    );

    // 4. Random reads, 1 thread then 2 threads; median of RUNS.
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let (s, st) = time(|| db.read(&keys, &order1, false));
        check_reads(st, n as u64, VALUE_LEN)?;
        runs.push(s);
    }
    put(r, "get_1t", Metric::new(n as u64, runs));
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let db_ref: &dyn engines::Engine = &*db;
        let (s, st) = time(|| {
            std::thread::scope(|sc| {
                let a = sc.spawn(|| db_ref.read(&keys, &order1, false));
                let b = sc.spawn(|| db_ref.read(&keys, &order2, false));
                (a.join().unwrap(), b.join().unwrap())
            })
        });
        check_reads(st.0, n as u64, VALUE_LEN)?;
        check_reads(st.1, n as u64, VALUE_LEN)?;
        runs.push(s);
    }
    put(r, "get_2t", Metric::new(2 * n as u64, runs));

    // 5. Misses.
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let (s, st) = time(|| db.read(&miss_keys, &miss_order, false));
        if st.found != 0 {
            return Err(format!("{} of the absent keys were found", st.found).into());
        }
        runs.push(s);
    }
    put(r, "miss", Metric::new(miss_keys.len() as u64, runs));

    // Individual non-durable writes (each engine's page-cache mode; see engines.rs).
    let (s, res) = time(|| db.put_each(&nosync_keys, 0..n_nosync, &vals));
    res?;
    put(r, "put_nosync", Metric::new(n_nosync as u64, vec![s]));

    // 2. Individual durable writes: 3 rounds of 1000.
    let mut runs = Vec::new();
    for round in 0..3 {
        let (s, res) = time(|| -> Res<()> {
            for i in round * 1000..(round + 1) * 1000 {
                db.put_durable(durable_keys.get(i), vals.get(i))?;
            }
            Ok(())
        });
        res?;
        runs.push(s);
    }
    put(r, "put_durable", Metric::new(1000, runs));

    // 3. Batch writes: 100 x 1000, durable after each.
    let (s, res) = time(|| -> Res<()> {
        for b in 0..100 {
            db.write_batch(&batch_keys, b * 1000..(b + 1) * 1000, &vals)?;
        }
        Ok(())
    });
    res?;
    put(r, "batch_durable", Metric::new(100_000, vec![s]));

    // 6. Removals of N/2 keys in one transaction or batch, durable at the end.
    let (s, res) = time(|| db.remove_batch(&keys, 0..n / 2));
    res?;
    put(r, "remove", Metric::new((n / 2) as u64, vec![s]));
    // The removed keys are gone, the rest still there.
    let sample: Vec<u32> = (0..n as u32).step_by((n / 1000).max(1)).collect();
    let st = db.read(&keys, &sample, false);
    let expect = sample.iter().filter(|&&i| i as usize >= n / 2).count() as u64;
    if st.found != expect {
        return Err(format!("after removals found {} of {expect} sampled keys", st.found).into());
    }

    db.close()?;
    std::fs::remove_dir_all(dir)?;
    r.peak_rss_main_kib = status_kib("VmHWM");

    // 8. Large values: a fresh store per size, loaded durably in batches of <= 64 MiB, then
    // read in random order touching every byte; median of RUNS.
    drop((keys, order1, order2, nosync_keys, batch_keys, miss_keys));
    let scale = |c: usize| ((c as f64 * n as f64 / 1e6).round() as usize).max(20);
    for (id, len, count) in [
        ("large_150", 150usize, scale(100_000)),
        ("large_4k", 4096, scale(20_000)),
        ("large_1m", 1 << 20, scale(200)),
    ] {
        let sub = dir.join(id);
        let mut db = engines::open(engine, &sub)?;
        if len > db.max_value_len() {
            r.skipped
                .insert(id.into(), format!("values are limited to {} bytes", db.max_value_len()));
            eprintln!("[{engine}] {id}: skipped (max value {} bytes)", db.max_value_len());
            db.close()?;
            std::fs::remove_dir_all(dir)?;
            continue;
        }
        let keys = Keys::random(count, 20 + len as u64);
        let vals = Values::new(len, 200 + len as u64);
        let per_batch = ((64 << 20) / len).max(1);
        load_in_batches(&mut *db, &keys, &vals, count, per_batch)?;
        let order = shuffled(count, 30);
        // Enough passes over the keys that one run reads about 1 GiB (N = 1M; less for a
        // smaller N, at least 64 MiB), so a run lasts long enough to time.
        let target = ((1u64 << 30) as f64 * (n as f64 / 1e6)).max((64 << 20) as f64);
        let passes = (target / (count * len) as f64).ceil().max(1.0) as usize;
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let (s, res) = time(|| -> Res<()> {
                for _ in 0..passes {
                    let st = db.read(&keys, &order, true);
                    check_reads(st, count as u64, len)?;
                    std::hint::black_box(st.checksum);
                }
                Ok(())
            });
            res?;
            runs.push(s);
        }
        let mut m = Metric::new((count * passes) as u64, runs);
        m.bytes_per_sec = Some(m.ops_per_sec * len as f64);
        put(r, id, m);
        db.close()?;
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

// ---- child: YCSB --------------------------------------------------------------------------

/// YCSB A, B, C, F, D over a fresh store of `records` records (24-byte keys, 1000-byte
/// values, loaded durably in batches of 10,000): `ops` operations per run, single thread,
/// 3 runs per workload, median. Writes use each engine's non-durable mode.
fn ycsb_workloads(
    engine: &str,
    records: usize,
    ops: usize,
    dir: &Path,
    r: &mut EngineResult,
) -> Res<()> {
    const VALUE_LEN: usize = 1000;
    const RUNS: usize = 3;
    r.ycsb_records = records as u64;
    // Every run's operations, generated up front; D's inserts take new record numbers.
    let mut inserted = records as u64;
    let plans: Vec<(&str, Vec<Vec<ycsb::Op>>)> = ycsb::WORKLOADS
        .iter()
        .enumerate()
        .map(|(wi, (id, w))| {
            let runs = (0..RUNS)
                .map(|run| {
                    let seed = 1000 + 10 * wi as u64 + run as u64;
                    ycsb::generate(*w, records as u64, ops, seed, &mut inserted)
                })
                .collect();
            (*id, runs)
        })
        .collect();
    let keys = Keys::random(inserted as usize, 50);
    let vals = Values::new(VALUE_LEN, 150);

    let _ = std::fs::remove_dir_all(dir);
    let mut db = engines::open(engine, dir)?;
    let (s, res) = time(|| load_in_batches(&mut *db, &keys, &vals, records, 10_000));
    res?;
    eprintln!("[{engine}] YCSB load: {records} records of {VALUE_LEN} B in {s:.2} s");
    for (id, runs) in &plans {
        let mut secs = Vec::new();
        for run in runs {
            let (s, st) = time(|| db.ycsb(&keys, run, &vals));
            let st = st?;
            if st.missing != 0 || st.bytes != st.found * VALUE_LEN as u64 {
                return Err(format!(
                    "{id}: {} reads missed, {} bytes for {} reads",
                    st.missing, st.bytes, st.found
                )
                .into());
            }
            std::hint::black_box(st.checksum);
            secs.push(s);
        }
        let m = Metric::new(ops as u64, secs);
        log(engine, id, &m);
        r.workloads.insert(id.to_string(), m);
    }
    db.close()?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

// ---- child: open and recovery -------------------------------------------------------------

/// Clean opens timed, then recovery cycles (writer child killed, next open timed).
const OPENS: usize = 5;
const CYCLES: usize = 3;
/// Non-durable puts the writer child makes before it is killed.
const EXTRA: usize = 10_000;

fn run_open_only(engine: &str, n: usize) -> EngineResult {
    let mut r = EngineResult {
        engine: engine.into(),
        config: engines::guarantee(engine).into(),
        ..Default::default()
    };
    let dir = temp_dir(engine);
    let t = Instant::now();
    r.rss_before_kib = status_kib("VmRSS");
    if let Err(e) = open_recovery(engine, n, &dir.join("open"), &mut r) {
        r.error = Some(format!("open/recovery: {e}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    r.wall_s = t.elapsed().as_secs_f64();
    r.peak_rss_kib = status_kib("VmHWM");
    r
}

fn open_recovery(engine: &str, n: usize, dir: &Path, r: &mut EngineResult) -> Res<()> {
    let o = open_recovery_at(engine, n, dir)?;
    r.workloads.insert("open".into(), Metric::new(1, o.open_runs_s.clone()));
    eprintln!("[{engine}] open (clean)  {:>10.2} ms (median of {OPENS})", o.open_s * 1e3);
    match o.recovery_s {
        Some(s) => {
            r.workloads.insert("recovery".into(), Metric::new(1, o.recovery_runs_s.clone()));
            eprintln!(
                "[{engine}] open after kill -9 {:>10.2} ms (median of {CYCLES}); of {EXTRA} \
                 non-durable puts before each kill, found {:?}",
                s * 1e3,
                o.survived
            );
        }
        None => {
            let why = o.recovery_error.clone().unwrap_or_default();
            eprintln!("[{engine}] recovery: n/a ({why})");
            r.skipped.insert("recovery".into(), why);
        }
    }
    r.open = Some(o);
    Ok(())
}

fn open_recovery_at(engine: &str, n: usize, dir: &Path) -> Res<OpenRecovery> {
    let keys = Keys::random(n, 1);
    let vals = Values::new(150, 101);
    let probe: Vec<u32> = (0..n as u32).step_by((n / 1000).max(1)).collect();
    let _ = std::fs::remove_dir_all(dir);
    // Load durably in batches of up to 1M keys, then close cleanly.
    let mut db = engines::open(engine, dir)?;
    let (s, res) = time(|| load_in_batches(&mut *db, &keys, &vals, n, 1_000_000));
    res?;
    eprintln!("[{engine}] open/recovery: loaded {n} keys in {s:.2} s");
    db.close()?;

    let mut o = OpenRecovery { keys: n as u64, extra_writes: EXTRA as u64, ..Default::default() };
    for _ in 0..OPENS {
        let (s, db) = time(|| engines::open(engine, dir));
        let db = db?;
        o.open_runs_s.push(s);
        if let Some((rebuilt, replayed)) = db.recovery_report() {
            if rebuilt {
                return Err(format!(
                    "mapkv rebuilt its index on a clean open ({replayed} records replayed)"
                )
                .into());
            }
            o.rebuilt_clean = Some(false);
        }
        let st = db.read(&keys, &probe, false);
        if st.found != probe.len() as u64 {
            return Err(format!("clean open: found {} of {} keys", st.found, probe.len()).into());
        }
        db.close()?;
    }
    o.open_s = median(&mut o.open_runs_s.clone());
    if let Err(e) = recovery_cycles(engine, dir, &keys, &probe, &mut o) {
        o.recovery_error = Some(e.to_string());
        o.recovery_runs_s.clear();
    }
    if !o.recovery_runs_s.is_empty() {
        o.recovery_s = Some(median(&mut o.recovery_runs_s.clone()));
    }
    std::fs::remove_dir_all(dir)?;
    Ok(o)
}

/// CYCLES times: a writer child opens the cleanly closed store, makes EXTRA non-durable
/// puts, says "ready"; it is SIGKILLed; the next open is timed; the loaded keys must all be
/// there, and the writer's keys that survived are counted; then a clean close.
fn recovery_cycles(
    engine: &str,
    dir: &Path,
    keys: &Keys,
    probe: &[u32],
    o: &mut OpenRecovery,
) -> Res<()> {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe()?;
    let extra = Keys::random(EXTRA * CYCLES, 40);
    for c in 0..CYCLES {
        let mut child = Command::new(&exe)
            .arg("--recovery-writer")
            .arg(engine)
            .arg("--dir")
            .arg(dir)
            .arg("--cycle")
            .arg(c.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let read = std::io::BufReader::new(child.stdout.take().ok_or("writer stdout")?)
            .read_line(&mut line);
        child.kill()?; // SIGKILL
        let st = child.wait()?;
        read?;
        if line.trim() != "ready" {
            return Err(format!("writer child did not get ready ({st})").into());
        }
        if st.signal() != Some(libc::SIGKILL) {
            return Err(format!("writer child was not killed by SIGKILL: {st}").into());
        }
        let (s, db) = time(|| engines::open(engine, dir));
        let db = db?;
        o.recovery_runs_s.push(s);
        if let Some((rebuilt, replayed)) = db.recovery_report() {
            o.rebuilt_after_kill = Some(rebuilt);
            o.replayed_after_kill = Some(replayed);
        }
        let st = db.read(keys, probe, false);
        if st.found != probe.len() as u64 {
            return Err(format!(
                "after kill -9: found {} of {} loaded keys",
                st.found,
                probe.len()
            )
            .into());
        }
        let order: Vec<u32> = ((c * EXTRA) as u32..((c + 1) * EXTRA) as u32).collect();
        o.survived.push(db.read(&extra, &order, false).found);
        db.close()?;
    }
    Ok(())
}

/// The writer child of a recovery cycle: never closes the store; the harness kills it.
fn recovery_writer(engine: &str, dir: &Path, cycle: usize) -> Res<()> {
    use std::io::Write;
    let extra = Keys::random(EXTRA * CYCLES, 40);
    let vals = Values::new(150, 101);
    let mut db = engines::open(engine, dir)?;
    db.put_each(&extra, cycle * EXTRA..(cycle + 1) * EXTRA, &vals)?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    // Waits to be killed; gives up after 10 minutes if the harness went away.
    std::thread::sleep(std::time::Duration::from_secs(600));
    std::mem::forget(db);
    std::process::exit(1);
}
