//! YCSB core workloads A, B, C, D and F: the request generators of YCSB
//! (`site.ycsb.generator.ZipfianGenerator`, `ScrambledZipfianGenerator`,
//! `SkewedLatestGenerator`) and the operation mixes of `workloads/workload{a,b,c,d,f}`.
//!
//! The whole operation sequence of a run is generated up front (op kind + record number), so
//! the timed loop does no generation work and every engine sees the same sequence.

use crate::data::{Keys, ReadStats, Rng, Values, fold};
use crate::results::Res;

/// YCSB's `zipfianconstant`.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// `ScrambledZipfianGenerator` draws from a zipfian over this many items and hashes the
/// result into the key space, so hot keys are spread over it.
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// zeta(10^10, 0.99), precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`).
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// YCSB's `ZipfianGenerator` (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994), including the incremental zeta update when the item count
/// grows (used by the "latest" distribution).
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta2theta: f64,
    zetan: f64,
    eta: f64,
    count_for_zeta: u64,
}

fn zeta_range(st: u64, n: u64, theta: f64, initial: f64) -> f64 {
    let mut sum = initial;
    for i in st..n {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zetan(items, theta, zeta_range(0, items, theta, 0.0))
    }

    fn with_zetan(items: u64, theta: f64, zetan: f64) -> Self {
        let zeta2theta = zeta_range(0, 2, theta, 0.0);
        let mut z = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2theta,
            zetan,
            eta: 0.0,
            count_for_zeta: items,
        };
        z.eta = z.eta_for(items);
        z
    }

    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2theta / self.zetan)
    }

    /// A rank in `0..items` (0 the most popular), `u` uniform in [0, 1).
    pub fn next(&mut self, items: u64, u: f64) -> u64 {
        if items != self.count_for_zeta {
            // YCSB recomputes zeta incrementally when the item count grows.
            if items > self.count_for_zeta {
                self.zetan = zeta_range(self.count_for_zeta, items, self.theta, self.zetan);
            } else {
                self.zetan = zeta_range(0, items, self.theta, 0.0);
            }
            self.count_for_zeta = items;
            self.items = items;
            self.eta = self.eta_for(items);
        }
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.items - 1)
    }
}

/// YCSB's `Utils.fnvhash64`.
fn fnvhash64(mut val: u64) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for _ in 0..8 {
        h ^= val & 0xff;
        h = h.wrapping_mul(1_099_511_628_211);
        val >>= 8;
    }
    (h as i64).unsigned_abs()
}

/// YCSB's `ScrambledZipfianGenerator` over `0..items`: a zipfian rank over 10^10 items,
/// hashed (FNV-1a 64) into the key space.
pub struct ScrambledZipfian {
    z: Zipfian,
    items: u64,
}

impl ScrambledZipfian {
    pub fn new(items: u64) -> Self {
        ScrambledZipfian {
            z: Zipfian::with_zetan(SCRAMBLED_ITEM_COUNT, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN),
            items,
        }
    }

    pub fn next(&mut self, u: f64) -> u64 {
        fnvhash64(self.z.next(SCRAMBLED_ITEM_COUNT, u)) % self.items
    }
}

/// Operation kinds.
pub const READ: u8 = 0;
pub const UPDATE: u8 = 1;
pub const INSERT: u8 = 2;
pub const RMW: u8 = 3;

/// One pre-generated operation: kind and record number (an index into the YCSB keys).
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub kind: u8,
    pub rec: u32,
}

/// The workloads run, in YCSB's recommended order (D last: it inserts).
pub const WORKLOADS: &[(&str, char)] =
    &[("ycsb_a", 'A'), ("ycsb_b", 'B'), ("ycsb_c", 'C'), ("ycsb_f", 'F'), ("ycsb_d", 'D')];

fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The operations of one run of workload `w` over `records` loaded records. For D,
/// `inserted` is the number of records present when the run starts (records + earlier
/// runs' inserts); it is advanced by this run's inserts.
pub fn generate(w: char, records: u64, ops: usize, seed: u64, inserted: &mut u64) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(ops);
    if w == 'D' {
        // 95% reads of "latest" records (zipfian over recency), 5% inserts of new records.
        let mut z = Zipfian::new(*inserted, ZIPFIAN_CONSTANT);
        for _ in 0..ops {
            if unit(&mut rng) < 0.95 {
                // SkewedLatestGenerator: last - zipfian(last).
                let last = *inserted - 1;
                let back = if last == 0 { 0 } else { z.next(last, unit(&mut rng)) };
                out.push(Op { kind: READ, rec: (last - back) as u32 });
            } else {
                out.push(Op { kind: INSERT, rec: *inserted as u32 });
                *inserted += 1;
            }
        }
        return out;
    }
    let (read_p, other) = match w {
        'A' => (0.5, UPDATE),
        'B' => (0.95, UPDATE),
        'C' => (1.0, UPDATE),
        'F' => (0.5, RMW),
        _ => panic!("unknown YCSB workload {w}"),
    };
    let mut z = ScrambledZipfian::new(records);
    for _ in 0..ops {
        let kind = if unit(&mut rng) < read_p { READ } else { other };
        out.push(Op { kind, rec: z.next(unit(&mut rng)) as u32 });
    }
    out
}

/// Runs `ops`: `get` looks a key up and, with a buffer, copies the value into it (for a
/// read-modify-write) and returns the value's length and the fold of its bytes (every read
/// touches every byte, so a zero-copy read is not credited for bytes it never read); `put`
/// writes in the engine's non-durable mode. Updates and inserts write a fresh 1000-byte
/// value; a read-modify-write reads the record, flips its first byte and writes it back.
#[inline(always)]
pub fn run(
    keys: &Keys,
    ops: &[Op],
    vals: &Values,
    mut get: impl FnMut(&[u8], Option<&mut Vec<u8>>) -> Res<Option<(usize, u64)>>,
    mut put: impl FnMut(&[u8], &[u8]) -> Res<()>,
) -> Res<ReadStats> {
    let mut s = ReadStats::default();
    let mut buf = Vec::with_capacity(vals.get(0).len());
    for (i, op) in ops.iter().enumerate() {
        let key = keys.get(op.rec as usize);
        match op.kind {
            READ | RMW => {
                let rmw = op.kind == RMW;
                match get(key, if rmw { Some(&mut buf) } else { None })? {
                    Some((len, sum)) => {
                        s.found += 1;
                        s.bytes += len as u64;
                        s.checksum = s.checksum.wrapping_add(sum);
                        if rmw {
                            buf[0] ^= 1;
                            put(key, &buf)?;
                        }
                    }
                    None => s.missing += 1,
                }
            }
            _ => put(key, vals.get(i + op.rec as usize))?,
        }
    }
    Ok(s)
}

/// `get`'s answer for a value `v`: copies it into `buf` if given, folds every byte.
#[inline(always)]
pub fn seen(v: &[u8], buf: Option<&mut Vec<u8>>) -> Option<(usize, u64)> {
    if let Some(b) = buf {
        b.clear();
        b.extend_from_slice(v);
    }
    Some((v.len(), fold(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let mut z = ScrambledZipfian::new(1000);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.next(unit(&mut rng)) as usize] += 1;
        }
        counts.sort_unstable();
        // The hottest key gets a large share; many keys are rarely touched.
        // Rank 0 has probability 1 / zeta(10^10, 0.99) = 3.8%.
        assert!(counts[999] > 3_000, "{}", counts[999]);
        let mut inserted = 100;
        let ops = generate('D', 100, 10_000, 3, &mut inserted);
        assert!(inserted > 100);
        assert!(ops.iter().all(|o| (o.rec as u64) < inserted));
    }
}
