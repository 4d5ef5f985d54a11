//! Seeded request traces shared by the cache benches, so every cache sees
//! exactly the same requests.

// Each bench binary includes this module and uses only part of it.
#![allow(dead_code)]

/// splitmix64: small, fast, seedable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Ranks 0..n drawn with probability proportional to 1 / (rank + 1)^s.
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Self { cdf }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        self.cdf.partition_point(|&p| p < u) as u64
    }
}

/// Maps a rank to a key: a bijection, so hot keys are not neighbours.
pub(crate) fn key_of(rank: u64) -> u64 {
    rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555_5555_5555_5555
}

/// `len` requests over `keys` keys, Zipf-distributed with exponent `s`.
pub(crate) fn zipf_trace(keys: usize, s: f64, len: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(keys, s);
    let mut rng = Rng::new(seed);
    (0..len).map(|_| key_of(zipf.sample(&mut rng))).collect()
}

/// A mix that defeats pure recency and pure frequency: each request is, at
/// random, 50 % Zipf(1.0) over 100k keys, 30 % the next key of a loop over
/// 5,000 keys (bigger than a 1k cache, smaller than a 10k one), and 20 % the
/// next key of a scan that never repeats.
pub(crate) fn scan_loop_trace(len: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(100_000, 1.0);
    let mut rng = Rng::new(seed);
    let (mut loop_pos, mut scan_pos) = (0u64, 0u64);
    (0..len)
        .map(|_| {
            let r = rng.next_u64() % 10;
            if r < 5 {
                key_of(zipf.sample(&mut rng))
            } else if r < 8 {
                loop_pos = (loop_pos + 1) % 5_000;
                key_of(200_000 + loop_pos)
            } else {
                scan_pos += 1;
                key_of(1_000_000 + scan_pos)
            }
        })
        .collect()
}

/// Recency without lasting popularity (an LRU stack-distance model): each
/// request is, with probability `reuse`, a repeat of the request
/// `d` places back, `d` drawn as `window × u^power` for `u` uniform in
/// [0, 1) (a larger `power` favours recent requests), and otherwise a key
/// never seen before. Frequency filters that remember popularity over many
/// times the cache's size struggle here; LRU is near its best.
pub(crate) fn recency_trace(
    len: usize,
    reuse: f64,
    window: usize,
    power: f64,
    seed: u64,
) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let mut trace: Vec<u64> = Vec::with_capacity(len);
    let mut fresh = 0u64;
    for _ in 0..len {
        let key = if !trace.is_empty() && rng.next_f64() < reuse {
            let span = trace.len().min(window);
            let back = ((span as f64) * rng.next_f64().powf(power)) as usize;
            trace[trace.len() - 1 - back.min(span - 1)]
        } else {
            fresh += 1;
            key_of(10_000_000 + fresh)
        };
        trace.push(key);
    }
    trace
}

/// Zipf(`s`) over `keys` keys whose ranking moves to other keys every
/// `every` requests: yesterday's hot keys go cold at once, so a policy must
/// forget as well as remember.
pub(crate) fn shifting_zipf_trace(
    keys: usize,
    s: f64,
    len: usize,
    every: usize,
    seed: u64,
) -> Vec<u64> {
    let zipf = Zipf::new(keys, s);
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|i| key_of(zipf.sample(&mut rng) + (i / every) as u64 * 7_919))
        .collect()
}

/// Half Zipf(1.0) requests over 100k keys, half a scan in which every key
/// is asked for twice, the second time `gap` scan keys later: a scan that
/// looks recent. A filter that admits a key asked for again soon after it
/// was refused lets the scan's keys in, at the popular keys' expense.
pub(crate) fn double_touch_scan_trace(len: usize, gap: u64, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(100_000, 1.0);
    let mut rng = Rng::new(seed);
    let mut scan = 0u64;
    (0..len)
        .map(|i| {
            if i % 2 == 0 {
                key_of(zipf.sample(&mut rng))
            } else if (i / 2) % 2 == 0 {
                scan += 1;
                key_of(50_000_000 + scan)
            } else {
                key_of(50_000_000 + scan.saturating_sub(gap))
            }
        })
        .collect()
}
