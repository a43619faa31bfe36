//! Machine description, markdown tables, JSON and the chart.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engines;
use crate::probe::Probe;
use crate::results::{EngineResult, Res, WORKLOADS};

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory: String,
    pub temp_dir: String,
    pub temp_fs: String,
    pub date: String,
}

impl Machine {
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
            .unwrap_or_default();
        let tmp = std::env::temp_dir();
        let tmp = tmp.canonicalize().unwrap_or(tmp);
        // The file system of the temp dir: the longest mount point that prefixes it.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let temp_fs = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && tmp.starts_with(f[1]))
                    .then(|| (f[1].len(), format!("{} ({} at {})", f[2], f[0], f[1])))
            })
            .max_by_key(|(n, _)| *n)
            .map(|(_, s)| s)
            .unwrap_or_else(|| "unknown".into());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu,
            kernel,
            memory,
            temp_dir: tmp.display().to_string(),
            temp_fs,
            date,
        }
    }
}

/// Versions of the engines, from this crate's Cargo.lock. The optional engine's crates
/// (always in the lock file) only when it ran.
pub fn versions(ran: &[String]) -> Vec<(String, String)> {
    let lock = include_str!("../Cargo.lock");
    let mut out = Vec::new();
    let rocks: &[&str] =
        if ran.iter().any(|e| e == "rocksdb") { &["rocksdb", "librocksdb-sys"] } else { &[] };
    for &want in
        ["mapkv", "heed", "lmdb-master-sys", "redb", "fjall", "lsm-tree", "sled", "candystore"]
            .iter()
            .chain(rocks)
    {
        let mut lines = lock.lines();
        while let Some(l) = lines.next() {
            if l == format!("name = \"{want}\"") {
                if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = ")) {
                    out.push((want.to_string(), v.trim_matches('"').to_string()));
                }
                break;
            }
        }
    }
    out
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    pub keys: usize,
    pub command: String,
    pub versions: Vec<(String, String)>,
    pub probe: Option<Probe>,
    pub engines: Vec<EngineResult>,
    pub total_wall_s: f64,
    /// YCSB records (1000-byte values) and operations per YCSB run.
    #[serde(default)]
    pub ycsb_records: usize,
    #[serde(default)]
    pub ycsb_ops: usize,
    /// The open/recovery group at a larger scale (`--scale-keys M`, run separately).
    #[serde(default)]
    pub scale: Option<Scale>,
}

/// `--scale-keys M`: open and recovery only, at M keys.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Scale {
    pub keys: usize,
    pub command: String,
    pub date: String,
    pub engines: Vec<EngineResult>,
    pub wall_s: f64,
}

impl Report {
    fn mapkv(&self) -> Option<&EngineResult> {
        self.engines.iter().find(|e| e.engine == "mapkv")
    }

    /// Peer ops/s divided by mapkv's ops/s for workload `id`.
    pub fn ratio(&self, e: &EngineResult, id: &str) -> Option<f64> {
        let base = self.mapkv()?.workloads.get(id)?.ops_per_sec;
        Some(e.workloads.get(id)?.ops_per_sec / base)
    }
}

/// A ratio: two decimals, or two significant digits below 0.01 (opens can differ 1000×).
fn rt(x: f64) -> String {
    if x >= 0.01 { format!("{x:.2}") } else { format!("{x:.1e}") }
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

fn per_op(ops_per_sec: f64) -> String {
    let us = 1e6 / ops_per_sec;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else if us >= 1.0 {
        format!("{us:.2} µs")
    } else {
        format!("{:.0} ns", us * 1e3)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let n = r.keys;
    let rocks = r.engines.iter().any(|e| e.engine == "rocksdb");
    let _ = writeln!(
        s,
        "# mapkv vs LMDB, redb, fjall, sled, candystore{}\n",
        if rocks { ", RocksDB" } else { "" }
    );
    let _ = writeln!(
        s,
        "N = {n} keys of 24 random bytes, values of 150 random bytes (the redb benchmark shape).\n\n\
         - command: `cargo run --release --manifest-path bench-compare/Cargo.toml {}-- {}`\n\
         - date: {}\n- machine: {} CPUs ({}), {} RAM, kernel {}\n- temp dir: {} on {}\n\
         - versions: {}\n- total run time: {:.0} s\n\n\
         All data is in the page cache: nothing drops caches, every store is smaller than RAM. \
         Each engine runs in its own child process, in its own fresh directory, deleted afterwards. \
         Reads run 5 times and durable puts 3 rounds of 1000; the median is reported. \
         Loads, batches and removals run once. Large-value reads make enough passes over their \
         keys to read about 1 GiB per run (at N = 1M). Ratio = engine ops/s ÷ mapkv ops/s \
         (above 1.00 the peer is faster, below it is slower).\n",
        if rocks { "--features rocksdb " } else { "" },
        if r.command.is_empty() {
            "(no arguments: N = $BENCH_KEYS or 1000000)"
        } else {
            &r.command
        },
        m.date,
        m.nproc,
        m.cpu,
        m.memory,
        m.kernel,
        m.temp_dir,
        m.temp_fs,
        r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        r.total_wall_s
    );

    // Summary matrix.
    let _ = writeln!(s, "## Summary: ops/s relative to mapkv (mapkv = 1.00)\n");
    let _ = write!(s, "| workload |");
    for e in &r.engines {
        let _ = write!(s, " {} |", e.engine);
    }
    let _ = write!(s, "\n|---|");
    for _ in &r.engines {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for (id, label, _) in WORKLOADS {
        let _ = write!(s, "| {label} |");
        for e in &r.engines {
            let cell = match r.ratio(e, id) {
                Some(x) => rt(x),
                None => "n/a".into(),
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s.push('\n');

    // One table per workload (open and recovery: one table below).
    for (id, _, title) in WORKLOADS {
        if *id == "open" || *id == "recovery" {
            continue;
        }
        if *id == "ycsb_a" {
            let _ = writeln!(
                s,
                "## YCSB core workloads\n\n\
                 A separate store of {} records: 24-byte random keys, 1000-byte random values, \
                 loaded durably in batches of 10,000. Each workload runs {} operations, single \
                 thread, 3 times (median), in the order A, B, C, F, D. Request distribution: \
                 YCSB's scrambled zipfian (constant 0.99, zipfian rank over 10^10 items hashed \
                 with FNV-1a 64 into the key space) for A, B, C, F; \"latest\" for D (the \
                 newest record minus a zipfian draw over the records present; inserts add new \
                 keys). Every read folds every byte of the value; a read-modify-write copies \
                 the value, changes a byte and writes it back. Updates and inserts use each \
                 engine's non-durable mode, as \"put no-sync\" (redb and sled: weaker than \
                 mapkv, see the guarantees below). One operation = one transaction: LMDB and \
                 redb open a read transaction per read and commit a write transaction per write. \
                 The whole operation sequence is generated before timing, the same for every engine.\n",
                r.ycsb_records, r.ycsb_ops
            );
        }
        let mut title = title.to_string();
        for d in [5000, 50, 10, 2] {
            title = title.replace(
                &format!("N/{d}"),
                &format!("{}", (n / d).max(if d == 5000 { 20 } else { 1 })),
            );
        }
        let title = title.replace(" N ", &format!(" {n} "));
        let _ = writeln!(s, "## {title}\n");
        let large = id.starts_with("large_");
        if large {
            let _ = writeln!(
                s,
                "| engine | ops/s | per op | GB/s | ratio to mapkv |\n|---|---:|---:|---:|---:|"
            );
        } else {
            let _ =
                writeln!(s, "| engine | ops/s | per op | ratio to mapkv |\n|---|---:|---:|---:|");
        }
        for e in &r.engines {
            match e.workloads.get(*id) {
                Some(w) => {
                    let ratio = r.ratio(e, id).map(rt).unwrap_or("n/a".into());
                    if large {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {:.2} | {ratio} |",
                            e.engine,
                            si(w.ops_per_sec),
                            per_op(w.ops_per_sec),
                            w.bytes_per_sec.unwrap_or(0.0) / 1e9
                        );
                    } else {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {ratio} |",
                            e.engine,
                            si(w.ops_per_sec),
                            per_op(w.ops_per_sec)
                        );
                    }
                }
                None => {
                    let why = e
                        .skipped
                        .get(*id)
                        .cloned()
                        .or_else(|| e.error.clone())
                        .unwrap_or_else(|| "not run".into());
                    let dashes = if large { "| n/a | n/a | n/a" } else { "| n/a | n/a" };
                    let _ = writeln!(s, "| {} {dashes} | n/a ({why}) |", e.engine);
                }
            }
        }
        s.push('\n');
    }

    // Open and recovery.
    if r.engines.iter().any(|e| e.open.is_some()) {
        open_table(&mut s, &r.engines, n, "");
    }
    if let Some(sc) = &r.scale {
        open_table(
            &mut s,
            &sc.engines,
            sc.keys,
            &format!(
                " (`--scale-keys`, run separately: `{}`, {}, {:.0} s)",
                sc.command, sc.date, sc.wall_s
            ),
        );
    }

    // Size and memory.
    let base = r.mapkv();
    let _ = writeln!(
        s,
        "## File size after the bulk load ({n} keys, durable)\n\n\
         Sum of file sizes, and allocated blocks (st_blocks × 512). Ratio = engine ÷ mapkv \
         (below 1.00 the peer is smaller).\n\n\
         | engine | file sizes | allocated | ratio (allocated) |\n|---|---:|---:|---:|"
    );
    for e in &r.engines {
        let ratio = base
            .filter(|b| b.alloc_bytes > 0 && e.alloc_bytes > 0)
            .map(|b| format!("{:.2}", e.alloc_bytes as f64 / b.alloc_bytes as f64))
            .unwrap_or("n/a".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {ratio} |",
            e.engine,
            mib(e.file_bytes),
            mib(e.alloc_bytes)
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "## Peak RSS per engine (VmHWM of its child process)\n\n\
         \"before open\" is the harness's own data (keys, orders) before the engine opens. \"main\" is \
         the high-water mark after the N-key workloads; \"all\" includes the large-value, YCSB and \
         open/recovery phases. \
         Mapped file pages that were touched count in RSS (mapkv, LMDB, candystore's index). \
         Ratio = engine ÷ mapkv on \"main\".\n\n\
         | engine | before open | peak RSS (main) | peak RSS (all) | ratio (main) | child wall time |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for e in &r.engines {
        let ratio = base
            .filter(|b| b.peak_rss_main_kib > 0 && e.peak_rss_main_kib > 0)
            .map(|b| format!("{:.2}", e.peak_rss_main_kib as f64 / b.peak_rss_main_kib as f64))
            .unwrap_or("n/a".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio} | {:.1} s |",
            e.engine,
            mib(e.rss_before_kib * 1024),
            mib(e.peak_rss_main_kib * 1024),
            mib(e.peak_rss_kib * 1024),
            e.wall_s
        );
    }
    s.push('\n');

    // Physical limits.
    if let Some(p) = &r.probe {
        let _ = writeln!(
            s,
            "## Physical limits of this machine\n\n\
             | probe | latency |\n|---|---:|\n\
             | dependent random access, 1 GiB buffer, 4 KiB pages (pointer chasing) | {:.1} ns |\n\
             | write one mapped page + msync(MS_SYNC) of it, temp dir's file system | {:.1} µs |\n\
             | pwrite one page + fdatasync, same file system | {:.1} µs |\n",
            p.chase_ns, p.msync_us, p.fdatasync_us
        );
        if let Some(b) = base {
            if let Some(g) = b.workloads.get("get_1t") {
                let ns = 1e9 / g.ops_per_sec;
                let _ = writeln!(
                    s,
                    "- mapkv random get (1 thread): {ns:.0} ns = {:.2} × two dependent misses ({:.0} ns).",
                    ns / (2.0 * p.chase_ns),
                    2.0 * p.chase_ns
                );
            }
            if let Some(g) = b.workloads.get("put_durable") {
                let us = 1e6 / g.ops_per_sec;
                let _ = writeln!(
                    s,
                    "- mapkv durable put (put + sync): {us:.1} µs = {:.2} × one msync ({:.1} µs). \
                     Above ~1× on a large store: see bench-compare/README.md, \"mapkv's durable put and large folios\".",
                    us / p.msync_us,
                    p.msync_us
                );
            }
            s.push('\n');
        }
    }

    let _ = writeln!(s, "## Engine configurations and guarantees\n");
    let _ = writeln!(
        s,
        "mapkv's guarantee: a write that returned survives kill -9 (it is in the page cache); after \
         sync() it survives power loss. Every write phase above ends durable in every engine; only \
         \"put no-sync\", the YCSB writes and the killed writer of the recovery test use each \
         engine's non-durable mode.\n"
    );
    for e in &r.engines {
        let _ = writeln!(s, "- **{}**: {}", e.engine, engines::guarantee(&e.engine));
        if let Some(err) = &e.error {
            let _ = writeln!(s, "  - ERROR: {err}");
        }
    }
    s.push('\n');
    s
}

const COLORS: &[(u8, u8, u8)] = &[
    (90, 90, 90),    // mapkv
    (31, 119, 180),  // lmdb
    (255, 127, 14),  // redb
    (44, 160, 44),   // fjall
    (214, 39, 40),   // sled
    (148, 103, 189), // candystore
    (140, 86, 75),   // rocksdb
];

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn ms(s: f64) -> String {
    if s * 1e3 >= 100.0 { format!("{:.0} ms", s * 1e3) } else { format!("{:.2} ms", s * 1e3) }
}

/// The open/recovery table for `engines` at `keys` keys.
fn open_table(s: &mut String, engines: &[EngineResult], keys: usize, note: &str) {
    let base = engines.iter().find(|e| e.engine == "mapkv").and_then(|e| e.open.as_ref());
    let extra = engines.iter().find_map(|e| e.open.as_ref()).map(|o| o.extra_writes).unwrap_or(0);
    let _ = writeln!(
        s,
        "## Open and recovery: {keys} keys{note}\n\n\
         A store of {keys} keys (24 B keys, 150 B values) loaded durably, closed cleanly. \
         **open**: time of the engine's open call on the cleanly closed store, median of 5 \
         (mapkv: checked that `recovery().index_rebuilt` is false). **after kill -9**: 3 cycles \
         of: a writer child process opens the store, makes {extra} single-key puts in the \
         engine's non-durable mode, prints \"ready\" and sleeps; it is SIGKILLed; the next \
         open is timed (median of the 3), every loaded key sampled must be present, and the \
         writer's keys found are counted; then a clean close. Speed ratio = mapkv ms ÷ \
         engine ms (above 1.00 the peer opens faster). The opens time only the open call: \
         engines that load lazily pay later, on first reads.\n\n\
         | engine | open | speed ratio | open after kill -9 | speed ratio | writer's puts found after kill (per cycle, of {extra}) | notes |\n\
         |---|---:|---:|---:|---:|---|---|"
    );
    for e in engines {
        let Some(o) = &e.open else {
            let why = e.error.clone().unwrap_or_else(|| "not run".into());
            let _ = writeln!(s, "| {} | n/a | n/a | n/a | n/a | n/a | {why} |", e.engine);
            continue;
        };
        let ratio = |b: Option<f64>, x: Option<f64>| match (b, x) {
            (Some(b), Some(x)) if x > 0.0 => rt(b / x),
            _ => "n/a".into(),
        };
        let mut notes = Vec::new();
        if o.rebuilt_clean == Some(false) {
            notes.push("clean open: index not rebuilt".to_string());
        }
        if let Some(rb) = o.rebuilt_after_kill {
            notes.push(format!(
                "after kill: index rebuilt = {rb}, {} records replayed",
                o.replayed_after_kill.unwrap_or(0)
            ));
        }
        if let Some(err) = &o.recovery_error {
            notes.push(format!("recovery n/a: {err}"));
        }
        let survived = if o.survived.is_empty() {
            "n/a".into()
        } else {
            o.survived.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {survived} | {} |",
            e.engine,
            ms(o.open_s),
            ratio(base.map(|b| b.open_s), Some(o.open_s)),
            o.recovery_s.map(ms).unwrap_or("n/a".into()),
            ratio(base.and_then(|b| b.recovery_s), o.recovery_s),
            notes.join("; ")
        );
    }
    s.push('\n');
}

/// Bars of ops/s relative to mapkv (log scale; up = faster than mapkv), in two panels: the
/// N-key and large-value workloads on top, YCSB and open/recovery below.
pub fn chart(r: &Report, path: &Path) -> Res<()> {
    use plotters::prelude::*;

    let font = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no TTF font found (install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "bad font file")?;

    let groups: Vec<(&str, &str)> = WORKLOADS
        .iter()
        .filter(|(id, _, _)| {
            r.engines.iter().any(|e| e.engine == "mapkv" && e.workloads.contains_key(*id))
        })
        .map(|(id, label, _)| (*id, *label))
        .collect();
    let second = |id: &str| id.starts_with("ycsb_") || id == "open" || id == "recovery";
    let top: Vec<_> = groups.iter().copied().filter(|(id, _)| !second(id)).collect();
    let bottom: Vec<_> = groups.iter().copied().filter(|(id, _)| second(id)).collect();
    let panels = if bottom.is_empty() { 1 } else { 2 };
    let root = BitMapBackend::new(path, (1800, 900 * panels)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels as usize, 1));
    panel(
        r,
        &areas[0],
        &top,
        format!(
            "ops/s relative to mapkv (= 1, log scale; above the line = faster than mapkv), N = {} keys",
            r.keys
        ),
    )?;
    if panels == 2 {
        panel(
            r,
            &areas[1],
            &bottom,
            format!(
                "YCSB ({} records of 1000 B, {} ops per run) and open / open after kill -9 \
                 (N = {} keys; speed = 1 / time), relative to mapkv",
                r.ycsb_records, r.ycsb_ops, r.keys
            ),
        )?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    r: &Report,
    root: &plotters::drawing::DrawingArea<
        plotters::backend::BitMapBackend<'_>,
        plotters::coord::Shift,
    >,
    groups: &[(&str, &str)],
    caption: String,
) -> Res<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let peers: Vec<&EngineResult> = r.engines.iter().filter(|e| e.engine != "mapkv").collect();
    let mut lo: f64 = 0.5;
    let mut hi: f64 = 2.0;
    for e in &peers {
        for (id, _) in groups {
            if let Some(x) = r.ratio(e, id) {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    // Whole decades, with room below the lowest bar for its label.
    let lo = 10f64.powf((lo / 1.3).log10().floor());
    let hi = 10f64.powf((hi * 1.3).log10().ceil());

    let ng = groups.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..ng, (lo..hi).log_scale())?;
    let labels: Vec<String> = groups.iter().map(|(_, l)| l.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(12)
        .y_label_formatter(&|y| {
            if *y >= 1.0 { format!("{y:.0}×") } else { format!("{y}×") }
        })
        .y_label_style(("sans-serif", 18))
        .y_desc("peer ops/s ÷ mapkv ops/s")
        .axis_desc_style(("sans-serif", 20))
        .draw()?;

    let width = 0.8 / peers.len().max(1) as f64;
    for (pi, e) in peers.iter().enumerate() {
        let ci = engines::ALL_ENGINES.iter().position(|n| *n == e.engine).unwrap_or(0);
        let (cr, cg, cb) = COLORS[ci % COLORS.len()];
        let color = RGBColor(cr, cg, cb);
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (id, _))| {
                let x = r.ratio(e, id)?;
                let x0 = gi as f64 + 0.1 + pi as f64 * width;
                Some(Rectangle::new([(x0, 1.0), (x0 + width * 0.9, x)], color.filled()))
            })
            .collect();
        // The ratio printed at the end of each bar.
        let values: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (id, _))| {
                let x = r.ratio(e, id)?;
                let xc = gi as f64 + 0.1 + pi as f64 * width + width * 0.45;
                let (text, vpos, y) = if x >= 1.0 {
                    (rt(x), VPos::Bottom, x * 1.04)
                } else {
                    (rt(x), VPos::Top, x / 1.04)
                };
                let style = TextStyle::from(("sans-serif", 12).into_font())
                    .pos(Pos::new(HPos::Center, vpos))
                    .color(&BLACK);
                Some(Text::new(text, (xc, y), style))
            })
            .collect();
        chart.draw_series(values)?;
        chart
            .draw_series(bars)?
            .label(e.engine.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 18, y + 7)], color.filled()));
        // "n/a" markers where a peer could not run a workload mapkv ran.
        let na: Vec<_> = groups
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| !e.workloads.contains_key(*id))
            .map(|(gi, _)| {
                let x0 = gi as f64 + 0.1 + pi as f64 * width;
                Text::new("n/a", (x0, 1.15), ("sans-serif", 14).into_font().color(&color))
            })
            .collect();
        chart.draw_series(na)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (ng, 1.0)],
            BLACK.stroke_width(2),
        )))?
        .label("mapkv = 1")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    // Workload names under each group, in pixels (the mesh has no per-group labels).
    let style =
        TextStyle::from(("sans-serif", 18).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (gi, label) in labels.iter().enumerate() {
        // backend_coord is in pixels of the whole image; the panel draws relative to itself.
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, lo));
        let (bx, by) = root.get_base_pixel();
        root.draw(&Text::new(label.clone(), (px - bx, py - by + 12), style.clone()))?;
    }
    // Group separators.
    let seps: Vec<_> = (1..groups.len())
        .map(|gi| PathElement::new(vec![(gi as f64, lo), (gi as f64, hi)], BLACK.mix(0.15)))
        .collect();
    chart.draw_series(seps)?;
    Ok(())
}
