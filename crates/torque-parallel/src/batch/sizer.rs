//! The adaptive batch sizer: a sans-IO model of a sink whose cost is
//! `overhead + n × per_item`, fitted to observed batches.

use std::collections::VecDeque;
use std::time::Duration;

use crate::BuildError;

/// What a sink's batch costs, as fitted by a [`BatchSizer`]: a fixed
/// `overhead` per call (a round trip, a statement parse, a commit) plus
/// `per_item` for every item in the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CostModel {
    /// The fixed cost of one call, whatever its size.
    pub overhead: Duration,
    /// The cost each item adds.
    pub per_item: Duration,
}

impl CostModel {
    /// The predicted latency of a batch of `n` items.
    pub fn predict(&self, n: usize) -> Duration {
        self.overhead.saturating_add(
            self.per_item
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)),
        )
    }
}

/// Picks batch sizes for a sink whose cost is `overhead + n × per_item` (a
/// multi-row `INSERT`, a pipelined Redis write): the biggest batch whose
/// predicted latency stays within a target, since under that model a bigger
/// batch always carries more items per second.
///
/// Sans-IO: feed it what each batch of `n` items took with
/// [`observe`](BatchSizer::observe), ask for the next size with
/// [`next_size`](BatchSizer::next_size). It reads no clock, so it is driven
/// deterministically in tests; the `Batcher` (feature `tokio`) drives it for
/// real.
///
/// How: ordinary least squares over the last `window` observations gives
/// `overhead` and `per_item`; the size is `(target − overhead) / per_item`,
/// clamped to `[min_size, max_size]` and to at most four times the previous size
/// (so one noisy fit cannot jump to the maximum). A line needs two distinct
/// sizes, so until it has them the sizer alternates `initial_size` and its
/// double, and afterwards, after `probe_every` full batches in a row, one
/// batch is half the chosen size — without those probes a sink that is always
/// fed full batches would leave `per_item` unidentifiable.
///
/// Under an open loop the latency target is not the whole story: one big
/// write delays every item queued behind it. The sizer also tracks the
/// keep-up size `k` — the mean batch size over about the last 100 batches,
/// which is the size at which the sink just keeps up with arrivals — and caps
/// the batch at `k·(1 + √(1 + overhead / (k·per_item)))`, the size that
/// minimises a write's time times the queueing factor `1 / (1 − ρ)`: about
/// 2 × `k` when items dominate, more when the overhead does. A batch that
/// fills to the cap raises `k` to at least half its size at once, and six
/// in a row to its full size, so the cap never holds the sink below what the
/// arrivals need.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_parallel::batch::BatchSizer;
///
/// let mut sizer = BatchSizer::builder()
///     .max_size(10_000)
///     .latency_target(Duration::from_millis(5))
///     .build()?;
/// // A sink that costs 1 ms + 10 µs per item.
/// for _ in 0..200 {
///     let n = sizer.next_size();
///     sizer.observe(n, Duration::from_micros(1_000 + 10 * n as u64));
/// }
/// // (5 ms − 1 ms) / 10 µs = 400 items per batch.
/// assert_eq!(sizer.size(), 400);
/// # Ok::<(), torque_parallel::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchSizer {
    min: usize,
    max: usize,
    target: f64,
    capacity: usize,
    probe_every: u64,
    samples: VecDeque<(f64, f64)>,
    model: Option<(f64, f64)>,
    size: usize,
    initial: usize,
    calls: u64,
    /// Smoothed batch size: in an open loop whose sink is busy, the mean
    /// batch is the keep-up size `k` (`λ·(overhead + k·per_item) = k`).
    keep_up: f64,
    /// The last size handed out, to tell full batches from partial ones.
    proposed: usize,
    /// Full batches in a row.
    full_streak: u64,
    /// The queue cap from `keep_up` ([`queue_cap`]), `max` until known.
    cap: usize,
}

/// Weight of one batch in the keep-up average (about the last 100 batches:
/// a 32-batch mean follows each burst, and the cap with it).
const KEEP_UP_WEIGHT: f64 = 0.01;
/// Full batches in a row that mean the cap is below the keep-up size.
const SUSTAINED_FULL: u64 = 6;

/// Builds a [`BatchSizer`]; every setting has a default.
#[derive(Debug, Clone)]
#[must_use]
pub struct BatchSizerBuilder {
    min: usize,
    max: usize,
    initial: Option<usize>,
    target: Duration,
    window: usize,
    probe_every: u64,
}

impl Default for BatchSizerBuilder {
    fn default() -> Self {
        BatchSizerBuilder {
            min: 1,
            max: 1_000,
            initial: None,
            target: Duration::from_millis(10),
            window: 32,
            probe_every: 16,
        }
    }
}

impl BatchSizerBuilder {
    /// The smallest batch the sizer proposes (default 1).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().min_size(10).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn min_size(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The biggest batch the sizer proposes (default 1000). For PostgreSQL,
    /// keep `max_size × columns` under the 65 535 bind-parameter limit.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().max_size(65_535 / 4).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn max_size(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// The first size tried, before anything is known (default
    /// `min(16, max_size)`, at least `min_size`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().initial_size(64).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn initial_size(mut self, n: usize) -> Self {
        self.initial = Some(n);
        self
    }

    /// The latency one batch's write may take (default 10 ms, at most 1 s):
    /// the sizer picks the biggest batch predicted to stay within it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().latency_target(Duration::from_millis(20)).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn latency_target(mut self, target: Duration) -> Self {
        self.target = target;
        self
    }

    /// How many recent batches the cost model is fitted to (default 32,
    /// at least 4): shorter follows a changing sink faster, longer is
    /// steadier under noise.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().window(64).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn window(mut self, batches: usize) -> Self {
        self.window = batches;
        self
    }

    /// After this many full batches in a row, one is half-sized so the fit
    /// keeps seeing two sizes (default 16, at least 2).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let sizer = torque_parallel::batch::BatchSizer::builder().probe_every(32).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn probe_every(mut self, batches: u64) -> Self {
        self.probe_every = batches;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError::Zero`] for a zero `min_size`; [`BuildError::Bounds`]
    /// when `min_size > max_size`; [`BuildError::Duration`] for a target
    /// outside 1 ns..=1 s; [`BuildError::OutOfRange`] for a
    /// window under 4 or `probe_every` under 2.
    pub fn build(self) -> Result<BatchSizer, BuildError> {
        if self.min == 0 {
            return Err(BuildError::Zero("min_size"));
        }
        if self.max == 0 {
            return Err(BuildError::Zero("max_size"));
        }
        if self.min > self.max {
            return Err(BuildError::Bounds {
                min: self.min,
                max: self.max,
            });
        }
        if self.target.is_zero() || self.target > Duration::from_secs(1) {
            return Err(BuildError::Duration {
                name: "latency_target",
                value: self.target,
            });
        }
        if self.window < 4 {
            return Err(BuildError::OutOfRange {
                name: "window",
                value: self.window as f64,
                expected: "at least 4 batches",
            });
        }
        if self.probe_every < 2 {
            return Err(BuildError::OutOfRange {
                name: "probe_every",
                value: self.probe_every as f64,
                expected: "at least 2 batches",
            });
        }
        let initial = self.initial.unwrap_or(16).clamp(self.min, self.max);
        Ok(BatchSizer {
            min: self.min,
            max: self.max,
            target: self.target.as_secs_f64(),
            capacity: self.window,
            probe_every: self.probe_every,
            samples: VecDeque::with_capacity(self.window),
            model: None,
            size: initial,
            initial,
            calls: 0,
            keep_up: 0.0,
            proposed: initial,
            full_streak: 0,
            cap: self.max,
        })
    }
}

impl BatchSizer {
    /// A builder with the defaults: sizes 1..=1000, a 10 ms target.
    pub fn builder() -> BatchSizerBuilder {
        BatchSizerBuilder::default()
    }

    /// The largest size the sizer proposes.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The size the model currently recommends (without probes).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The fitted cost model, once two distinct batch sizes were observed.
    pub fn model(&self) -> Option<CostModel> {
        self.model.map(|(overhead, per_item)| CostModel {
            overhead: Duration::from_secs_f64(overhead.max(0.0)),
            per_item: Duration::from_secs_f64(per_item.max(0.0)),
        })
    }

    /// The size of the next batch: the recommended size, or now and then a
    /// probe (see the type's docs).
    pub fn next_size(&mut self) -> usize {
        self.calls += 1;
        let n = self.pick();
        self.proposed = n;
        n
    }

    fn pick(&mut self) -> usize {
        if self.min == self.max {
            return self.min;
        }
        if self.model.is_none() {
            // No line yet: alternate two sizes so one can be drawn (the
            // double, or the half when the double is over the maximum).
            return if self.calls.is_multiple_of(2) {
                let other = self.initial.saturating_mul(2);
                if other <= self.max {
                    other
                } else {
                    (self.initial / 2).max(self.min)
                }
            } else {
                self.initial
            };
        }
        // Partial batches already vary the sizes the fit sees; only a run
        // of full ones (a saturated producer) needs a probe.
        if self.full_streak >= self.probe_every {
            self.full_streak = 0;
            let half = (self.size / 2).max(self.min);
            // At the minimum, probe above it instead.
            return if half == self.size {
                (self.size + 1).min(self.max)
            } else {
                half
            };
        }
        self.size
    }

    /// Records that a batch of `n` items took `latency`, refits the model
    /// and updates the recommended size. Empty batches are ignored.
    pub fn observe(&mut self, n: usize, latency: Duration) {
        if n == 0 {
            return;
        }
        let full = n >= self.proposed;
        if full {
            self.full_streak += 1;
        } else {
            self.full_streak = 0;
        }
        let x = n as f64;
        if self.keep_up <= 0.0 {
            self.keep_up = x;
        } else {
            self.keep_up += KEEP_UP_WEIGHT * (x - self.keep_up);
            if full && n >= self.cap {
                // The batch filled to the queue cap, so the queue held at
                // least `n`: raise the estimate at once (never wait for the
                // slow average), a little for one full batch — a burst —
                // and to `n` itself for a run of them — the cap is below
                // the keep-up size and the queue is growing.
                let floor = if self.full_streak >= SUSTAINED_FULL {
                    x
                } else {
                    x / 2.0
                };
                self.keep_up = self.keep_up.max(floor);
            }
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((x, latency.as_secs_f64()));
        self.refit();
    }

    fn refit(&mut self) {
        let len = self.samples.len() as f64;
        let (sx, sy) = self
            .samples
            .iter()
            .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / len, sy / len);
        let (sxx, sxy) = self.samples.iter().fold((0.0, 0.0), |(sxx, sxy), &(x, y)| {
            (sxx + (x - mx) * (x - mx), sxy + (x - mx) * (y - my))
        });
        // Simple linear regression, closed form: slope = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²,
        // intercept = ȳ − slope·x̄ (least squares, Legendre 1805; any
        // statistics text, e.g. Wasserman, All of Statistics, §13.1).
        let per_item = if sxx > 0.0 {
            sxy / sxx
        } else if let Some((_, c)) = self.model {
            // One size only in the window: keep the slope, refresh the level.
            c
        } else {
            return;
        };
        let overhead = my - per_item * mx;
        if !(per_item.is_finite() && overhead.is_finite()) {
            return;
        }
        self.model = Some((overhead, per_item));
        let cap = self.size.saturating_mul(4).max(self.min);
        let ideal = if per_item <= 0.0 {
            // Items look free: grow as far as the step bound allows.
            cap
        } else {
            // The millionth of an item absorbs float error: 4 ms / 40 µs
            // must be 100, not 99.99….
            let n = (self.target - overhead.max(0.0)) / per_item + 1e-6;
            if n.is_finite() && n >= 1.0 {
                n.min(usize::MAX as f64) as usize
            } else {
                // The overhead alone exceeds the target: the smallest batch
                // is the fastest one can do.
                self.min
            }
        };
        let bound = ideal.min(cap).clamp(self.min, self.max);
        self.cap = queue_cap(self.keep_up, overhead, per_item)
            .map_or(self.max, |m| m.clamp(self.min, self.max));
        self.size = bound.min(self.cap);
    }
}

/// The batch size that minimises a full batch's write time times the
/// queueing factor `1 / (1 − ρ)`, for a sink fed at the rate that makes `k`
/// the keep-up size (`λ·(overhead + k·per_item) = k`). With
/// `ρ(m) = λ·(overhead + m·per_item) / m`, `1 − ρ(m) = (1 − λ·per_item)·(1 − k/m)`
/// and `d/dm [m·(overhead + m·per_item) / (m − k)] = 0` gives
/// `m = k·(1 + √(1 + overhead / (k·per_item)))` — at least twice `k`, more
/// when the overhead dominates. (The M/G/1 mean wait scales with
/// `1 / (1 − ρ)`: Pollaczek–Khinchine; Kleinrock, Queueing Systems I, §5.6.)
fn queue_cap(k: f64, overhead: f64, per_item: f64) -> Option<usize> {
    if k <= 0.0 || per_item <= 0.0 {
        return None;
    }
    let m = k * (1.0 + (1.0 + overhead.max(0.0) / (k * per_item)).sqrt());
    // `as` saturates; NaN was ruled out above (k and per_item positive).
    m.is_finite().then(|| m.ceil() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(sizer: &mut BatchSizer, overhead_us: u64, per_item_us: u64, batches: usize) {
        for _ in 0..batches {
            let n = sizer.next_size();
            sizer.observe(
                n,
                Duration::from_micros(overhead_us + per_item_us * n as u64),
            );
        }
    }

    #[test]
    fn learns_overhead_and_per_item_exactly_without_noise() {
        let mut sizer = BatchSizer::builder()
            .max_size(100_000)
            .latency_target(Duration::from_millis(2))
            .build()
            .unwrap();
        feed(&mut sizer, 500, 5, 100);
        let model = sizer.model().unwrap();
        assert!(model.overhead.abs_diff(Duration::from_micros(500)) < Duration::from_micros(1));
        assert!(model.per_item.abs_diff(Duration::from_micros(5)) < Duration::from_nanos(10));
        // (2000 − 500) / 5 = 300.
        assert_eq!(sizer.size(), 300);
    }

    #[test]
    fn stays_within_bounds() {
        let mut sizer = BatchSizer::builder()
            .min_size(4)
            .max_size(50)
            .latency_target(Duration::from_secs(1))
            .build()
            .unwrap();
        feed(&mut sizer, 10, 1, 200);
        assert_eq!(sizer.size(), 50);
        for _ in 0..100 {
            let n = sizer.next_size();
            assert!((4..=50).contains(&n), "{n}");
        }
        // A sink whose overhead alone exceeds the target: the minimum.
        let mut sizer = BatchSizer::builder()
            .min_size(4)
            .max_size(50)
            .latency_target(Duration::from_millis(1))
            .build()
            .unwrap();
        feed(&mut sizer, 5_000, 10, 100);
        assert_eq!(sizer.size(), 4);
    }

    #[test]
    fn follows_a_sink_that_gets_slower() {
        let mut sizer = BatchSizer::builder()
            .max_size(10_000)
            .latency_target(Duration::from_millis(5))
            .build()
            .unwrap();
        feed(&mut sizer, 1_000, 10, 200);
        assert_eq!(sizer.size(), 400);
        feed(&mut sizer, 1_000, 40, 200);
        assert_eq!(sizer.size(), 100);
    }

    #[test]
    fn free_items_grow_to_the_maximum_without_panicking() {
        let mut sizer = BatchSizer::builder().max_size(777).build().unwrap();
        feed(&mut sizer, 100, 0, 100);
        assert_eq!(sizer.size(), 777);
        sizer.observe(0, Duration::ZERO); // ignored
        sizer.observe(3, Duration::MAX);
        assert!((1..=777).contains(&sizer.next_size()));
    }

    #[test]
    fn an_initial_size_at_the_maximum_still_learns_to_shrink() {
        let mut sizer = BatchSizer::builder()
            .max_size(16)
            .latency_target(Duration::from_millis(1))
            .build()
            .unwrap();
        // 100 µs + 100 µs per item: 9 items fit in 1 ms.
        feed(&mut sizer, 100, 100, 100);
        assert_eq!(sizer.size(), 9);
    }

    /// An open loop whose arrivals fill batches of 8 or 12 (mean 10) before
    /// the sink (10 µs + 10 µs per item) is free again: partial batches,
    /// never the proposed size.
    fn fill_partial_batches(sizer: &mut BatchSizer) {
        for i in 0..400u64 {
            let _ = sizer.next_size();
            let n = if i % 2 == 0 { 8 } else { 12 };
            sizer.observe(n, Duration::from_micros(10 + 10 * n as u64));
        }
    }

    #[test]
    fn an_open_loop_caps_the_size_at_about_twice_the_keep_up_size() {
        let mut sizer = BatchSizer::builder()
            .max_size(1_000)
            .latency_target(Duration::from_millis(10))
            .build()
            .unwrap();
        fill_partial_batches(&mut sizer);
        // k = 10, overhead / (k × per_item) = 0.1: 10 × (1 + √1.1) ≈ 21,
        // not the ~1000 the 10 ms target alone allows.
        assert_eq!(sizer.size(), 21);
        assert!(sizer.next_size() <= 21);
    }

    #[test]
    fn a_run_of_full_batches_lifts_the_cap_to_the_latency_target() {
        let mut sizer = BatchSizer::builder()
            .max_size(1_000)
            .latency_target(Duration::from_millis(10))
            .build()
            .unwrap();
        fill_partial_batches(&mut sizer);
        assert_eq!(sizer.size(), 21);
        // The load rises: every batch now fills to its proposed size. The
        // slow average alone would take hundreds of batches; the cap
        // follows within a few dozen.
        let mut batches = 0;
        while sizer.size() < 999 {
            let n = sizer.next_size();
            sizer.observe(n, Duration::from_micros(10 + 10 * n as u64));
            batches += 1;
            assert!(
                batches < 40,
                "still capped at {} after {batches}",
                sizer.size()
            );
        }
        // One full batch in a burst raises it only a little.
        let mut sizer = BatchSizer::builder().max_size(1_000).build().unwrap();
        fill_partial_batches(&mut sizer);
        let n = sizer.next_size();
        sizer.observe(n, Duration::from_micros(10 + 10 * n as u64));
        assert!((21..=25).contains(&sizer.size()), "{}", sizer.size());
    }

    proptest::proptest! {
        /// Whatever the sink reports, sizes stay within the bounds and the
        /// sizer never panics.
        #[test]
        fn sizes_stay_within_bounds(
            min in 1usize..50,
            extra in 0usize..500,
            observations in proptest::collection::vec((0usize..2_000, 0u64..10_000_000), 0..200),
        ) {
            let max = min + extra;
            let mut sizer = BatchSizer::builder().min_size(min).max_size(max).build().unwrap();
            for (n, nanos) in observations {
                let size = sizer.next_size();
                proptest::prop_assert!((min..=max).contains(&size));
                sizer.observe(n, Duration::from_nanos(nanos));
                proptest::prop_assert!((min..=max).contains(&sizer.size()));
            }
        }
    }

    #[test]
    fn bad_settings_are_build_errors() {
        assert!(matches!(
            BatchSizer::builder().max_size(0).build(),
            Err(BuildError::Zero("max_size"))
        ));
        assert!(matches!(
            BatchSizer::builder().min_size(0).build(),
            Err(BuildError::Zero("min_size"))
        ));
        assert!(matches!(
            BatchSizer::builder().min_size(10).max_size(5).build(),
            Err(BuildError::Bounds { min: 10, max: 5 })
        ));
        assert!(matches!(
            BatchSizer::builder().latency_target(Duration::ZERO).build(),
            Err(BuildError::Duration { .. })
        ));
        assert!(BatchSizer::builder().window(1).build().is_err());
        assert!(BatchSizer::builder().probe_every(0).build().is_err());
    }
}
