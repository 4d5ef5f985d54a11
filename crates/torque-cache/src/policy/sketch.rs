//! The frequency estimator of TinyLFU: a count-min sketch of 4-bit counters
//! behind a doorkeeper Bloom filter, periodically halved so that old
//! popularity fades (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient
//! Cache Admission Policy", ACM ToS 2017, §3.3–3.4).

/// Approximate access counts of recently seen hashes, saturating at 15 (+1 for
/// the doorkeeper).
///
/// Layout after Caffeine's `FrequencySketch`: the four counters of a hash
/// (one per count-min row, each row in its own word) and its two doorkeeper
/// bits sit in one 64-byte [`Block`], so an update touches one cache line.
/// (Until 2026-12-05 a block was 128 bytes, counters in one line and the
/// doorkeeper in the next: two last-level cache misses per new entry in
/// callgrind's simulation, with the same memory and counter density.)
#[derive(Debug)]
pub(crate) struct FrequencySketch {
    table: Vec<Block>,
    block_mask: u64,
    additions: u64,
    sample_size: u64,
    /// What [`Self::sized_for`] returns: the table's length had it been
    /// dense.
    serves: u64,
}

/// Four words of sixteen 4-bit counters (one word per count-min row), and
/// the four words of the doorkeeper (a one-bit "seen once" filter: a first sighting only sets these
/// bits, so one-hit wonders never reach the counters) for the hashes whose
/// counters are here. One doorkeeper word per counter word is what the
/// sizing rule gives (two bits per sampled increment, rounded up to a power
/// of two), so this is the same memory as two separate arrays.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Block {
    counters: [u64; 4],
    door: [u64; 4],
}

/// Entries from which a sketch's table is sparse ([`FrequencySketch::new`]).
pub(crate) const SPARSE_FROM: u64 = 1024;
/// How much smaller a sparse table is than a dense one.
const SPARSE_DIVISOR: u64 = 4;

/// Entries the smallest sketch is sized for.
pub(crate) const MIN_ENTRIES: u64 = 64;
/// Entries the largest sketch is sized for (a 64 MiB table per shard: a
/// shard that large has a sparse table, [`FrequencySketch::new`]).
pub(crate) const MAX_ENTRIES: u64 = 1 << 22;

/// One multiply and one xor-shift of the key's hash, whose bits place all
/// of a hash's sketch state (the block, the four rows' counters, the
/// doorkeeper word and its two bits; [`FrequencySketch::place`]). The
/// multiplier is not the shard index's (Fibonacci hashing), so that within
/// one shard the places spread over the whole table.
#[inline]
fn mix(hash: u64) -> u64 {
    let h = (hash ^ 0xc3a5_c85c_97cb_3127).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// The block of a hash and, per count-min row, the word within the block
/// and the bit shift of the row's counter in it.
#[derive(Clone, Copy)]
struct Counters {
    block: usize,
    /// Four nibbles, one per row: the row's counter within its word.
    rows: u64,
    /// The doorkeeper word within the block, and its two bits.
    door_word: usize,
    door_bits: u64,
}

impl Counters {
    /// `(word in block, shift)` of row `i`'s counter.
    #[inline(always)]
    fn row(self, i: usize) -> (usize, u32) {
        (i & 3, (((self.rows >> (i * 4)) & 15) as u32) << 2)
    }
}

impl FrequencySketch {
    /// A sketch sized for a shard of about `entries` entries.
    ///
    /// Sizing, measured on the hit-ratio bench (docs/benchmarks.md,
    /// 2026-11-23): a sample period of twenty increments per counter word of
    /// `entries` rounded up to a power of two (80 per entry; the paper
    /// suggests 10) keeps enough history to rank the tail of a Zipf
    /// distribution; 40 and 160 per entry both measured worse.
    ///
    /// The table has at least one and a half blocks (four 16-counter words
    /// and four doorkeeper words) per entry, rounded up to a power of two.
    /// With one block per entry rounded up, a shard whose entry count sat
    /// just below a power of two got about half the blocks per entry of one
    /// just above it, and on the scan/loop trace at 1k entries (125
    /// per shard, 128 blocks) the noise cost the admission contest about
    /// 0.001–0.002 of miss ratio, where the keys at the margin are seen
    /// about once per sample and a doorkeeper false positive or a counter
    /// collision decides the contest (docs/benchmarks.md, 2026-12-06,
    /// sixteenth session). The sample period is unchanged. Memory: 48–96
    /// bytes of counters per entry and as much again of doorkeeper, in
    /// shards of under [`SPARSE_FROM`] entries.
    ///
    /// From [`SPARSE_FROM`] entries the table is a quarter of that
    /// ([`SPARSE_DIVISOR`]): 12–24 bytes of counters per entry (Caffeine's
    /// sketch has 8), and as much of doorkeeper (the dense length stops at
    /// [`MAX_ENTRIES`] blocks, so past about 2.8M entries there are fewer,
    /// down to a quarter block per entry at [`MAX_ENTRIES`]). Every new entry updates a
    /// block at random, and a dense table is larger than a core's L2 cache
    /// from about 10k entries (1 MiB at 10k): recording the new key's
    /// sketch block was the slowest load of an insert, and the throughput
    /// workload ran 1.084 × faster with the quarter table (1.070 × with
    /// half, 1.165 × with an eighth; paired, 61 rounds), while no hit-ratio
    /// figure moved by more than the hashers' noise (the cells, the
    /// twelve of `cells.sh`, the capacity sweep, the held-out and weighted
    /// traces; an eighth cost up to 0.0065 of miss ratio at 10k entries:
    /// docs/benchmarks.md, 2026-12-07). Shards below [`SPARSE_FROM`] keep
    /// the dense table, which the 1k-entry cells need (above).
    pub(crate) fn new(entries: u64) -> Self {
        Self::for_shard_holding(entries, entries)
    }

    /// [`Self::new`] for a shard that holds `held` entries now (a
    /// regrowth sizes the sketch for more, the next power of two): the
    /// table is sparse only if the shard holds [`SPARSE_FROM`] entries.
    /// Sized for the next power of two, a weighted shard regrown at 513
    /// entries got a sparse table no larger than the one it replaced,
    /// below [`SPARSE_FROM`] entries.
    pub(crate) fn for_shard_holding(entries: u64, held: u64) -> Self {
        let entries = entries.clamp(MIN_ENTRIES, MAX_ENTRIES);
        let words = (entries * 4).next_power_of_two();
        let sample_size = words * 20;
        let dense = (entries + entries / 2).next_power_of_two().min(MAX_ENTRIES);
        let blocks = if entries.min(held) >= SPARSE_FROM {
            dense / SPARSE_DIVISOR
        } else {
            dense
        };
        Self {
            table: vec![Block::default(); blocks as usize],
            block_mask: blocks - 1,
            additions: 0,
            sample_size,
            serves: dense,
        }
    }

    /// The most entries this sketch serves before the policy regrows it:
    /// its dense table's length in blocks (see [`Self::new`]), which is
    /// 1.5–3 times the entries it was sized for (twice for a power of
    /// two), not that count itself.
    /// Between a regrowth and the next a shard therefore holds up to the
    /// table's length, down to one block and 40 sampled increments per
    /// entry (docs/benchmarks.md, 2026-12-06, sixteenth session: the
    /// later regrowth is part of the weighted traces' gain).
    pub(crate) fn sized_for(&self) -> u64 {
        self.serves.max(MIN_ENTRIES)
    }

    /// The table's length in blocks.
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> u64 {
        self.table.len() as u64
    }

    /// Where `hash`'s state sits, all from one [`mix`] (until 2026-12-07
    /// three: one for the block, one more for the rows, one for the
    /// doorkeeper): the block from the low bits (at most 22 of them,
    /// [`MAX_ENTRIES`]), the rows' counters from bits 22–37, the
    /// doorkeeper's word from bits 38–39 and its two bits from 40–51.
    #[inline]
    fn place(&self, hash: u64) -> Counters {
        let h = mix(hash);
        Counters {
            block: (h & self.block_mask) as usize,
            rows: h >> 22,
            door_word: ((h >> 38) & 3) as usize,
            door_bits: (1u64 << ((h >> 40) & 63)) | (1u64 << ((h >> 46) & 63)),
        }
    }

    /// Records one access of `hash`; returns whether that triggered the
    /// periodic halving (so the caller ages its own counts too).
    #[cfg(test)]
    pub(crate) fn increment(&mut self, hash: u64) -> bool {
        self.record(hash).1
    }

    /// Records one access of `hash` (as [`Self::increment`]) and returns,
    /// besides whether it triggered the halving, the estimate after it (as
    /// [`Self::frequency`] would), read off the counters it has just
    /// touched: the admission contest can then use it without a second
    /// look-up.
    #[inline]
    pub(crate) fn record(&mut self, hash: u64) -> (u8, bool) {
        let c = self.place(hash);
        let (word, bits) = (c.door_word, c.door_bits);
        let block = &mut self.table[c.block];
        // A first sighting only sets the doorkeeper (which counts towards
        // the sample); later ones raise the counters below 15.
        let door = block.door[word];
        if door & bits != bits {
            block.door[word] = door | bits;
            let min = (0..4).fold(15, |min, i| {
                let (w, shift) = c.row(i);
                min.min((block.counters[w] >> shift) & 0xf)
            });
            if self.count(1) {
                return (self.frequency(hash), true);
            }
            return (min as u8 + 1, false);
        }
        // Written out per row, with no saturation branch: a counter at 15
        // takes an add of zero. Each row raises its counter below 15, so
        // something was raised iff the least old count is below 15, and
        // the least new count is that one plus one, at most 15.
        let mut min = 15;
        for i in 0..4 {
            let (w, shift) = c.row(i);
            let old = (block.counters[w] >> shift) & 0xf;
            block.counters[w] += u64::from(old < 15) << shift;
            min = min.min(old);
        }
        if min < 15 && self.count(1) {
            return (self.frequency(hash), true);
        }
        ((min + 1).min(15) as u8 + 1, false)
    }

    /// Records `n` accesses of `hash` at once: the same counts as `n` calls
    /// of [`Self::increment`], for the price of one. Returns whether that
    /// triggered the periodic halving.
    #[cfg(test)]
    pub(crate) fn add(&mut self, hash: u64, n: u8) -> bool {
        let raised = self.raise(hash, n);
        self.count(raised)
    }

    /// Like [`Self::add`], for accesses of which `counted` were already
    /// counted towards the sample by [`Self::count`].
    pub(crate) fn fold(&mut self, hash: u64, n: u8, counted: u8) -> bool {
        let raised = self.raise(hash, n);
        self.count(raised.saturating_sub(u64::from(counted)))
    }

    /// Counts `n` accesses towards the sample that triggers the halving,
    /// without recording whose; returns whether it halved.
    #[inline]
    pub(crate) fn count(&mut self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        self.additions += n;
        if self.additions >= self.sample_size {
            self.halve();
            return true;
        }
        false
    }

    /// Adds `n` accesses of `hash` that an older sketch counted (see
    /// [`Self::raise`]), without counting them towards this one's sample:
    /// they are not new.
    pub(crate) fn carry(&mut self, hash: u64, n: u8) {
        self.raise(hash, n);
    }

    /// Adds `n` to the hash's counters (doorkeeper first), saturating;
    /// returns how many of the `n` single increments would have raised
    /// something.
    fn raise(&mut self, hash: u64, mut n: u8) -> u64 {
        let c = self.place(hash);
        let (word, bits) = (c.door_word, c.door_bits);
        let block = &mut self.table[c.block];
        let door = &mut block.door[word];
        let mut added = 0u64;
        if n > 0 && *door & bits != bits {
            *door |= bits;
            n -= 1;
            added += 1;
        }
        if n > 0 {
            let n = u64::from(n.min(15));
            let block = &mut block.counters;
            // An increment raises something while the smallest counter is
            // below 15: the raise count is the largest rise of the four.
            let mut raised = 0;
            for i in 0..4 {
                let (w, shift) = c.row(i);
                let old = (block[w] >> shift) & 0xf;
                let new = (old + n).min(15);
                block[w] += (new - old) << shift;
                raised = raised.max(new - old);
            }
            added += raised;
        }
        added
    }

    /// The estimated number of recent accesses of `hash`. Out of line: the
    /// policy keeps its own estimates, and [`Self::record`] calls this only
    /// after a halving.
    #[cold]
    #[inline(never)]
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        let c = self.place(hash);
        let block = &self.table[c.block];
        let min = (0..4)
            .map(|i| {
                let (w, shift) = c.row(i);
                (block.counters[w] >> shift) & 0xf
            })
            .min()
            .unwrap_or(0);
        min as u8 + u8::from(block.door[c.door_word] & c.door_bits == c.door_bits)
    }

    /// Ages all counts: halves every counter and clears the doorkeeper.
    /// Once per sample (twenty increments per counter word), so cold.
    #[cold]
    #[inline(never)]
    fn halve(&mut self) {
        for block in &mut self.table {
            for w in &mut block.counters {
                *w = (*w >> 1) & 0x7777_7777_7777_7777;
            }
            block.door = [0; 4];
        }
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
        s.add(42, 4);
        assert_eq!(s.frequency(42), 10, "a batch of four counts as four");
        for _ in 0..100 {
            s.increment(42);
        }
        assert_eq!(s.frequency(42), 16);
        assert_eq!(s.frequency(43), 0);
    }

    #[test]
    fn a_batch_equals_single_increments() {
        let (mut one, mut batch) = (FrequencySketch::new(64), FrequencySketch::new(64));
        for n in [1u8, 3, 7, 15] {
            let hash = u64::from(n) * 0x9e37_79b9;
            for _ in 0..n {
                one.increment(hash);
            }
            batch.add(hash, n);
            assert_eq!(one.frequency(hash), batch.frequency(hash), "n = {n}");
        }
        assert_eq!(one.additions, batch.additions);
    }

    #[test]
    fn record_returns_the_frequency_after_the_access() {
        let mut s = FrequencySketch::new(64);
        for i in 0..40u64 {
            let hash = (i % 7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (estimate, halved) = s.record(hash);
            assert!(!halved);
            assert_eq!(estimate, s.frequency(hash), "access {i}");
        }
    }

    #[test]
    fn one_shards_hashes_spread_over_the_whole_table() {
        // The keys of one shard share the bits that the shard index takes
        // from `hash * 0x9e37_79b9_7f4a_7c15` (cache.rs `shard_index`): the
        // one mix that places a hash in the sketch must not depend on them.
        let s = FrequencySketch::new(4096);
        let blocks = s.blocks() as usize;
        let (mut used, mut doors) = (vec![0u32; blocks], [0u32; 4]);
        let mut hashes = 0;
        for k in 0u64..400_000 {
            let hash = (k ^ 0x51_7cc1_b727_220a).wrapping_mul(0x2545_f491_4f6c_dd1d);
            if (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) & 7 != 0 {
                continue;
            }
            let c = s.place(hash);
            used[c.block] += 1;
            doors[c.door_word] += 1;
            hashes += 1;
        }
        let mean = f64::from(hashes) / blocks as f64;
        let empty = used.iter().filter(|&&n| n == 0).count();
        // Uniform placement leaves e^-mean of the blocks empty.
        assert!(
            (empty as f64) < 2.0 * blocks as f64 * (-mean).exp() + 8.0,
            "{empty} of {blocks} blocks unused by {hashes} hashes"
        );
        for n in doors {
            assert!(f64::from(n) > 0.2 * f64::from(hashes), "{doors:?}");
        }
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
