//! Keys, values and orders: generated up front from a fixed seed, so every engine sees the
//! same bytes and the timed loops do no generation work.

/// Key length of the redb benchmark shape.
pub const KEY_LEN: usize = 24;

/// SplitMix64: small, fast, good enough for benchmark data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }

    /// Uniform in `0..n` (n > 0), multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// `count` random 24-byte keys, stored contiguously.
pub struct Keys {
    bytes: Vec<u8>,
}

impl Keys {
    pub fn random(count: usize, seed: u64) -> Self {
        let mut bytes = vec![0u8; count * KEY_LEN];
        Rng::new(seed).fill(&mut bytes);
        Keys { bytes }
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bytes[i * KEY_LEN..(i + 1) * KEY_LEN]
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / KEY_LEN
    }
}

/// Values of one length: windows at pseudo-random offsets into a pool of random bytes, so
/// they are incompressible (fjall compresses blocks with LZ4 by default) and different per
/// key, without storing N values.
pub struct Values {
    pool: Vec<u8>,
    len: usize,
}

impl Values {
    pub fn new(len: usize, seed: u64) -> Self {
        let mut pool = vec![0u8; len + (1 << 20)];
        Rng::new(seed).fill(&mut pool);
        Values { pool, len }
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> &[u8] {
        let span = (self.pool.len() - self.len) as u64;
        let off = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % span;
        &self.pool[off as usize..off as usize + self.len]
    }
}

/// A random permutation of `0..n` (Fisher-Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// What a read loop saw.
#[derive(Default, Debug, Clone, Copy)]
pub struct ReadStats {
    pub found: u64,
    pub missing: u64,
    pub bytes: u64,
    /// A fold of the bytes read (large-value reads only), so the compiler cannot skip them.
    pub checksum: u64,
}

/// Consumes every byte of `v` cheaply (sum of 8-byte words; vectorises).
#[inline(always)]
pub fn fold(v: &[u8]) -> u64 {
    let mut acc = 0u64;
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        acc = acc.wrapping_add(u64::from_le_bytes(c.try_into().unwrap()));
    }
    for &b in rest {
        acc = acc.wrapping_add(b as u64);
    }
    acc
}

/// The shared read loop: `get` returns the value's length (and, when `touch`, the fold of
/// its bytes). Generic, so each engine's closure is inlined into its own loop.
#[inline(always)]
pub fn read_loop(
    keys: &Keys,
    order: &[u32],
    mut get: impl FnMut(&[u8]) -> Option<(usize, u64)>,
) -> ReadStats {
    let mut s = ReadStats::default();
    for &i in order {
        match get(keys.get(i as usize)) {
            Some((len, sum)) => {
                s.found += 1;
                s.bytes += len as u64;
                s.checksum = s.checksum.wrapping_add(sum);
            }
            None => s.missing += 1,
        }
    }
    s
}
