//! The frequency estimator of TinyLFU: a count-min sketch of 4-bit counters
//! behind a doorkeeper Bloom filter, periodically halved so that old
//! popularity fades (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient
//! Cache Admission Policy", ACM ToS 2017, §3.3–3.4).

/// Approximate access counts of recently seen hashes, saturating at 15 (+1 for
/// the doorkeeper).
#[derive(Debug)]
pub(crate) struct FrequencySketch {
    /// 16 four-bit counters per word; each hash picks one counter in each of
    /// four words.
    table: Vec<u64>,
    table_mask: u64,
    /// One-bit "seen once" filter: a first sighting only sets these bits, so
    /// one-hit wonders never reach the counters.
    doorkeeper: Vec<u64>,
    doorkeeper_mask: u64,
    additions: u64,
    sample_size: u64,
}

/// Entries the smallest sketch is sized for.
pub(crate) const MIN_ENTRIES: u64 = 1024;
/// Entries the largest sketch is sized for (a 128 MiB table per shard).
pub(crate) const MAX_ENTRIES: u64 = 1 << 22;

const SEEDS: [u64; 4] = [
    0xc3a5_c85c_97cb_3127,
    0xb492_b66f_be98_f273,
    0x9ae1_6a3b_2f90_404f,
    0xcbf2_9ce4_8422_2325,
];

#[inline]
fn mix(hash: u64, seed: u64) -> u64 {
    let h = (hash ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

impl FrequencySketch {
    /// A sketch sized for a shard of about `entries` entries.
    ///
    /// Sizing, measured on the hit-ratio bench (docs/benchmarks.md): four
    /// 16-counter words per entry and a sample period of ten increments per
    /// word (40 per entry, the paper suggests 10) keep enough history to
    /// rank the tail of a Zipf distribution; small shards get the sketch of
    /// a 1,024-entry shard because a short history hurts them most. That is
    /// 32–64 bytes per entry, plus 2 doorkeeper bits per sampled increment.
    pub(crate) fn new(entries: u64) -> Self {
        let words = (entries.clamp(MIN_ENTRIES, MAX_ENTRIES) * 4).next_power_of_two();
        let sample_size = words * 10;
        let door_words = (sample_size * 2 / 64).next_power_of_two();
        Self {
            table: vec![0; words as usize],
            table_mask: words - 1,
            doorkeeper: vec![0; door_words as usize],
            doorkeeper_mask: door_words * 64 - 1,
            additions: 0,
            sample_size,
        }
    }

    /// The number of entries this sketch was sized for.
    pub(crate) fn sized_for(&self) -> u64 {
        (self.table.len() as u64 / 4).max(MIN_ENTRIES)
    }

    fn door_bits(&self, hash: u64) -> [u64; 2] {
        let h = mix(hash, 0x2545_f491_4f6c_dd1d);
        [h & self.doorkeeper_mask, (h >> 32) & self.doorkeeper_mask]
    }

    fn door_contains(&self, hash: u64) -> bool {
        self.door_bits(hash)
            .iter()
            .all(|&b| self.doorkeeper[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }

    /// Records one access of `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        if !self.door_contains(hash) {
            for b in self.door_bits(hash) {
                self.doorkeeper[(b / 64) as usize] |= 1 << (b % 64);
            }
        } else {
            let mut added = false;
            for (i, seed) in SEEDS.iter().enumerate() {
                let h = mix(hash, *seed);
                let word = (h & self.table_mask) as usize;
                // Counter i of the word's 16 comes from a different part of the
                // hash than the word index, so rows stay independent.
                let shift = (((h >> 32) as u32 & 3) + (i as u32) * 4) * 4;
                let cur = (self.table[word] >> shift) & 0xf;
                if cur < 15 {
                    self.table[word] += 1 << shift;
                    added = true;
                }
            }
            if !added {
                return;
            }
        }
        self.additions += 1;
        if self.additions >= self.sample_size {
            self.halve();
        }
    }

    /// The estimated number of recent accesses of `hash`.
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        let mut min = 15u64;
        for (i, seed) in SEEDS.iter().enumerate() {
            let h = mix(hash, *seed);
            let word = (h & self.table_mask) as usize;
            let shift = (((h >> 32) as u32 & 3) + (i as u32) * 4) * 4;
            min = min.min((self.table[word] >> shift) & 0xf);
        }
        min as u8 + u8::from(self.door_contains(hash))
    }

    /// Ages all counts: halves every counter and clears the doorkeeper.
    fn halve(&mut self) {
        for w in &mut self.table {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.doorkeeper.iter_mut().for_each(|w| *w = 0);
        self.additions /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_with_accesses_and_saturate() {
        let mut s = FrequencySketch::new(1024);
        assert_eq!(s.frequency(42), 0);
        s.increment(42);
        assert_eq!(s.frequency(42), 1, "doorkeeper only");
        for _ in 0..5 {
            s.increment(42);
        }
        assert_eq!(s.frequency(42), 6);
        for _ in 0..100 {
            s.increment(42);
        }
        assert_eq!(s.frequency(42), 16);
        assert_eq!(s.frequency(43), 0);
    }

    #[test]
    fn halving_ages_counts() {
        let mut s = FrequencySketch::new(16);
        for _ in 0..9 {
            s.increment(7);
        }
        let before = s.frequency(7);
        // Push other keys through until a reset happens.
        for k in 0..(s.sample_size * 4) {
            s.increment(1000 + k % 50_000);
        }
        assert!(s.frequency(7) < before, "{} !< {before}", s.frequency(7));
    }
}
