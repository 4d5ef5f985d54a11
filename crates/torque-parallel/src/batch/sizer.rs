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
    /// The predicted latency of a batch of `n` items, `overhead + n ×
    /// per_item` (at most `Duration::MAX`).
    pub fn predict(&self, n: usize) -> Duration {
        // In nanoseconds as u128: `Duration` multiplies by a `u32` only,
        // and capping `n` there made a batch of 2^33 items as fast as one
        // of 2^32.
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        let nanos = self.per_item.as_nanos().saturating_mul(n as u128);
        let items = u64::try_from(nanos / NANOS_PER_SEC).map_or(Duration::MAX, |secs| {
            // Below a second's nanoseconds: fits a u32.
            Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
        });
        self.overhead.saturating_add(items)
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
/// clamped to `[min_size, max_size]` and to at most four times the previous
/// size the latency target allowed, before the open-loop cap below (so one
/// noisy fit cannot jump to the maximum). A line needs two distinct
/// sizes, so until it has them the sizer alternates `initial_size` and its
/// double (within the bounds: else its half, else `max_size`), and
/// afterwards, after `probe_every` full batches in a row, one batch is half
/// the chosen size — without those probes a sink that is always fed full
/// batches would leave `per_item` unidentifiable.
///
/// Under an open loop the latency target is not the whole story: one big
/// write delays every item queued behind it. Told when items arrive
/// ([`observe_arrivals`](BatchSizer::observe_arrivals)), the sizer caps the
/// batch at the size `m` that minimises a tail-latency estimate: the 99th
/// percentile of the backlog, which drains at `μ(m) − λ` items per second
/// (`μ(m) = m / (overhead + m·per_item)`, `λ` the arrival rate), plus one
/// write of `m` items. The rate and the cost model it uses are averaged over
/// about the last 1000 batches, because near saturation `μ(m) − λ` is a
/// small difference of two large numbers; each predicted write includes one
/// standard error of that fit, since a write underestimated near saturation
/// costs far more than one overestimated, and a fit of few batches can be
/// off by 15 %. When the oldest queued item has
/// already waited longer than a write at the latency target would take
/// ([`next_size_after`](BatchSizer::next_size_after)), the queue is
/// backlogged beyond what that estimate covers — a closed loop, or a load
/// step — and the batch is sized by the latency target alone.
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
    /// The last size handed out, to tell full batches from partial ones.
    proposed: usize,
    /// Full batches in a row.
    full_streak: u64,
    /// The size the latency target allows (`size` before the open-loop cap).
    bound: usize,
    /// Exponentially weighted sums `[1, n, latency, n², n·latency,
    /// latency²]` over about the last 1000 batches: the long-run fit the
    /// cap uses, and its residual variance.
    long: [f64; 6],
    /// The sum of the squared weights behind `long`: with `long[0]` it
    /// gives the fit's effective number of batches (Kish's
    /// `(Σw)² / Σw²`), so the cap knows how sure the fit is.
    long_weight_sq: f64,
    /// Exponentially weighted items sent and time they took to send, over
    /// the same horizon: their ratio is the arrival rate `λ`.
    sent_items: f64,
    sent_secs: f64,
}

/// Weight of one batch in the long-run fit and arrival rate (about the
/// last 1000 batches). The open-loop cap needs `μ(m) − λ`, a difference of
/// two large numbers near saturation (0.1 × either at 0.9 load): the
/// 32-batch fit's per-item cost moves it by ±100 %.
const LONG_WEIGHT: f64 = 1e-3;
/// `ln(100)`: the exponential backlog exceeds `ln(100)` × its mean 1 % of
/// the time — the cap aims at the 99th percentile.
const TAIL_LN: f64 = std::f64::consts::LN_10 * 2.0;

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
            // Grows to the window as batches come: a huge window must not
            // be allocated (or overflow) up front.
            samples: VecDeque::with_capacity(self.window.min(1024)),
            model: None,
            size: initial,
            initial,
            calls: 0,
            proposed: initial,
            full_streak: 0,
            bound: initial,
            long: [0.0; 6],
            long_weight_sq: 0.0,
            sent_items: 0.0,
            sent_secs: 0.0,
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
        // Saturating: a sink timed at `Duration::MAX` fits 2^64 s, one
        // more than a `Duration` holds.
        let duration =
            |secs: f64| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX);
        self.model.map(|(overhead, per_item)| CostModel {
            overhead: duration(overhead),
            per_item: duration(per_item),
        })
    }

    /// The size of the next batch: the recommended size, or now and then a
    /// probe (see the type's docs). The same as
    /// [`next_size_after`](Self::next_size_after) with no wait.
    pub fn next_size(&mut self) -> usize {
        self.next_size_after(Duration::ZERO)
    }

    /// The size of the next batch, given how long its oldest item has
    /// already waited in the queue. A wait longer than a write at the
    /// latency target means a backlog the open-loop cap is not meant for (a
    /// saturated producer, a load step): the batch may then grow to what the
    /// latency target allows.
    ///
    /// ```
    /// use std::time::Duration;
    /// use torque_parallel::batch::BatchSizer;
    ///
    /// let mut sizer = BatchSizer::builder().build()?;
    /// // 10 µs + 10 µs per item, and batches of 8 or 10: the items of each
    /// // arrived while the previous one was written (an open loop).
    /// for i in 0..2_000u64 {
    ///     let n = if i % 2 == 0 { 8 } else { 10 };
    ///     let write = Duration::from_micros(10 + 10 * n);
    ///     sizer.observe_arrivals(n as usize, write);
    ///     sizer.observe(n as usize, write);
    /// }
    /// let capped = sizer.next_size_after(Duration::ZERO);
    /// assert!(capped < 50, "{capped}");
    /// // The oldest item waited 1 s: a backlog, sized by the 10 ms target.
    /// assert!(sizer.next_size_after(Duration::from_secs(1)) > 4 * capped);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn next_size_after(&mut self, oldest_waited: Duration) -> usize {
        self.calls += 1;
        let n = self.pick(oldest_waited.as_secs_f64());
        self.proposed = n;
        n
    }

    /// Records that `items` items were sent over `elapsed` (for a batcher:
    /// the batch's items, and the time from the previous batch's last send
    /// to this one's). The arrival rate over about the last 1000 batches sets
    /// the open-loop cap (see the type's docs); without these calls the size
    /// is bound by the latency target alone.
    pub fn observe_arrivals(&mut self, items: usize, elapsed: Duration) {
        self.sent_items += LONG_WEIGHT * (items as f64 - self.sent_items);
        self.sent_secs += LONG_WEIGHT * (elapsed.as_secs_f64() - self.sent_secs);
    }

    fn pick(&mut self, waited: f64) -> usize {
        if self.min == self.max {
            return self.min;
        }
        if self.model.is_none() {
            // No line yet: alternate two sizes so one can be drawn (the
            // double, or the half when the double is over the maximum, or
            // the maximum when the half is under the minimum too: with
            // sizes 16..=20 the half is the initial 16 again, and one
            // size draws no line).
            return if self.calls.is_multiple_of(2) {
                let double = self.initial.saturating_mul(2);
                let half = (self.initial / 2).max(self.min);
                if double <= self.max {
                    double
                } else if half != self.initial {
                    half
                } else {
                    self.max
                }
            } else {
                self.initial
            };
        }
        let size = match self.model {
            // Waited longer than a whole write at the target: a backlog.
            Some((overhead, per_item))
                if waited > overhead.max(0.0) + per_item.max(0.0) * self.bound as f64 =>
            {
                self.bound
            }
            _ => self.size,
        };
        // Partial batches already vary the sizes the fit sees; only a run
        // of full ones (a saturated producer) needs a probe.
        if self.full_streak >= self.probe_every {
            self.full_streak = 0;
            let half = (size / 2).max(self.min);
            // At the minimum, probe above it instead.
            return if half == size {
                (size + 1).min(self.max)
            } else {
                half
            };
        }
        size
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
        let (x, y) = (n as f64, latency.as_secs_f64());
        for (sum, v) in self.long.iter_mut().zip([1.0, x, y, x * x, x * y, y * y]) {
            *sum += LONG_WEIGHT * (v - *sum);
        }
        self.long_weight_sq = (1.0 - LONG_WEIGHT) * (1.0 - LONG_WEIGHT) * self.long_weight_sq
            + LONG_WEIGHT * LONG_WEIGHT;
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((x, y));
        self.refit();
    }

    /// The long-run fit, from the weighted sums, with its uncertainty.
    fn long_model(&self) -> Option<WriteBound> {
        let [w, sx, sy, sxx, sxy, syy] = self.long;
        if w <= 0.0 || self.long_weight_sq <= 0.0 {
            return None;
        }
        let (mx, my) = (sx / w, sy / w);
        let vxx = sxx / w - mx * mx;
        if vxx <= 1e-12 * (1.0 + mx * mx) {
            return None;
        }
        let cxy = sxy / w - mx * my;
        let per_item = cxy / vxx;
        let overhead = my - per_item * mx;
        // The residuals' mean square, `var(y) − slope·cov(x, y)`.
        let residual = (syy / w - my * my - per_item * cxy).max(0.0);
        let batches = w * w / self.long_weight_sq;
        let bound = WriteBound {
            overhead,
            per_item,
            mean_n: mx,
            var_n: vxx,
            mean_var: residual / batches,
        };
        (per_item.is_finite() && overhead.is_finite() && bound.mean_var.is_finite())
            .then_some(bound)
    }

    /// The open-loop cap (see [`tail_cap`]), `None` until arrivals and
    /// a model are known.
    fn cap(&self, overhead: f64, per_item: f64) -> Option<usize> {
        if self.sent_secs <= 0.0 {
            return None;
        }
        let rate = self.sent_items / self.sent_secs;
        // The write times' squared coefficient of variation, from the
        // recent fit's residuals.
        let (r2, p2) = self.samples.iter().fold((0.0, 0.0), |(r2, p2), &(x, y)| {
            let p = overhead + per_item * x;
            (r2 + (y - p) * (y - p), p2 + p * p)
        });
        let cv2 = if p2 > 0.0 { r2 / p2 } else { 0.0 };
        let write = self.long_model().unwrap_or(WriteBound {
            overhead,
            per_item,
            mean_n: 0.0,
            var_n: 1.0,
            mean_var: 0.0,
        });
        tail_cap(rate, write, cv2, self.max)
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
        // The step bound guards against a noisy fit, so it follows the
        // latency-target size, not the open-loop cap below it.
        let cap = self.bound.saturating_mul(4).max(self.min);
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
        self.bound = bound;
        let queue_cap = self
            .cap(overhead, per_item)
            .map_or(self.max, |m| m.clamp(self.min, self.max));
        self.size = bound.min(queue_cap);
    }
}

/// How many standard errors of the fitted line the cap adds to a predicted
/// write: it plans against a one-sided 84 % upper bound of the write time.
/// The tail estimate is lopsided — a write underestimated by a few percent
/// near saturation can halve `μ(m) − λ`, one overestimated costs a slightly
/// longer write — and while the long-run fit has seen few batches (the
/// first ~100) its per-item cost is off by up to 15 %.
const WRITE_BOUND_Z: f64 = 1.0;

/// A fitted `overhead + m·per_item` with the uncertainty of the fit: the
/// batch sizes' mean and variance and the residuals' mean square over the
/// effective number of batches, which give the standard error of the line
/// at `m`, `√(s²/n · (1 + (m − n̄)²/var(n)))` (ordinary least squares;
/// Wasserman, All of Statistics, §13.3).
#[derive(Debug, Clone, Copy)]
struct WriteBound {
    overhead: f64,
    per_item: f64,
    mean_n: f64,
    var_n: f64,
    /// `s² / n`: the residual variance over the effective batch count.
    mean_var: f64,
}

impl WriteBound {
    /// The write time of `m` items the cap plans for: the fit plus
    /// `WRITE_BOUND_Z` standard errors.
    fn at(&self, m: f64) -> f64 {
        let dev = m - self.mean_n;
        let se = (self.mean_var * (1.0 + dev * dev / self.var_n)).sqrt();
        self.overhead.max(0.0) + m * self.per_item + WRITE_BOUND_Z * se
    }
}

/// The batch size `m` that minimises an estimate of the 99th-percentile
/// latency in an open loop: items arrive at `rate` (Poisson, variance `rate`
/// per second) and a backlog drains in batches of `m` at
/// `μ(m) = m / write(m)`, whose write times vary with squared coefficient of
/// variation `cv2` (variance `m·μ·cv2` items² per second); `write(m)` is
/// the fitted `overhead + m·per_item` plus a margin for the fit's error
/// (see [`WriteBound`]).
/// In heavy traffic the backlog is about exponential with mean
/// `σ² / (2(μ − λ))` (Kingman 1962; the diffusion approximation, Harrison,
/// Brownian Motion and Stochastic Flow Systems, ch. 5), so its 99th
/// percentile is `ln 100` times that, which takes `/ μ` to drain; add the
/// item's own write. Small `m` drains slowly (more overheads), large `m`
/// writes long: about 2.5 × the keep-up size when items dominate the cost,
/// about the keep-up size plus a few write-noise margins when the overhead
/// does. `None` when no size keeps up with `rate` (no cap then: the biggest
/// batches drain fastest) or `per_item` is not positive.
fn tail_cap(rate: f64, write: WriteBound, cv2: f64, max: usize) -> Option<usize> {
    let (overhead, per_item) = (write.overhead.max(0.0), write.per_item);
    if per_item <= 0.0 || !(rate.is_finite() && rate >= 0.0) {
        return None;
    }
    // Infinite where `m` does not keep up.
    let latency = |m: usize| {
        let m = m as f64;
        let w = write.at(m);
        let mu = m / w;
        if mu <= rate {
            return f64::INFINITY;
        }
        TAIL_LN * (rate + m * mu * cv2) / (2.0 * mu * (mu - rate)) + w
    };
    // μ(m) > rate ⟺ m·(1 − rate·per_item) > rate·overhead, before the
    // margin, which only raises the write: a lower bound.
    let slack = 1.0 - rate * per_item;
    if slack <= 0.0 {
        return None;
    }
    let keep_up = rate * overhead / slack;
    // `as` saturates; the next size above the keep-up size.
    let mut lo = (keep_up.floor() as usize).saturating_add(1).max(1);
    if lo > max || latency(max).is_infinite() {
        return None;
    }
    if latency(lo).is_infinite() {
        // The margin moved the keep-up size up: bisect for it.
        let mut hi = max;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if latency(mid).is_infinite() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo = hi;
    }
    // The estimate falls then rises in m: ternary search on the integers.
    let mut hi = max;
    while hi - lo > 2 {
        let a = lo + (hi - lo) / 3;
        let b = hi - (hi - lo) / 3;
        if latency(a) <= latency(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    (lo..=hi).min_by(|&a, &b| latency(a).total_cmp(&latency(b)))
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
    /// never the proposed size, each batch's items sent during the previous
    /// write.
    fn fill_partial_batches(sizer: &mut BatchSizer) {
        for i in 0..2_000u64 {
            let _ = sizer.next_size();
            let n = if i % 2 == 0 { 8 } else { 12 };
            let write = Duration::from_micros(10 + 10 * n as u64);
            sizer.observe_arrivals(n, write);
            sizer.observe(n, write);
        }
    }

    #[test]
    fn an_open_loop_caps_the_size_near_the_tail_optimum() {
        let mut sizer = BatchSizer::builder()
            .max_size(1_000)
            .latency_target(Duration::from_millis(10))
            .build()
            .unwrap();
        fill_partial_batches(&mut sizer);
        // λ = 10 items per 110 µs, so the keep-up size is 10. Minimising
        // ln(100)·λ / (2μ(μ − λ)) + 10 µs + m × 10 µs over m gives 27 (no
        // write noise here), not the ~1000 the 10 ms target alone allows.
        assert_eq!(sizer.size(), 27);
        assert!(sizer.next_size() <= 27);
        // Without arrivals there is nothing to cap for.
        let mut closed = BatchSizer::builder().max_size(1_000).build().unwrap();
        for _ in 0..200 {
            let n = closed.next_size();
            closed.observe(n, Duration::from_micros(10 + 10 * n as u64));
        }
        assert_eq!(closed.size(), 999);
    }

    #[test]
    fn a_backlog_lifts_the_cap_to_the_latency_target() {
        let mut sizer = BatchSizer::builder()
            .max_size(1_000)
            .latency_target(Duration::from_millis(10))
            .build()
            .unwrap();
        fill_partial_batches(&mut sizer);
        assert_eq!(sizer.size(), 27);
        // An oldest item that waited less than a 10 ms write: still capped.
        assert_eq!(sizer.next_size_after(Duration::from_millis(5)), 27);
        // One that waited longer: a backlog (a saturated producer, a load
        // step), sized by the latency target: (10 ms − 10 µs) / 10 µs.
        assert_eq!(sizer.next_size_after(Duration::from_millis(11)), 999);
    }

    #[test]
    fn arrivals_faster_than_any_batch_drains_lift_the_cap() {
        let mut sizer = BatchSizer::builder().max_size(1_000).build().unwrap();
        fill_partial_batches(&mut sizer);
        // 12 items every 100 µs: more than 10 µs per item can carry.
        for _ in 0..5_000 {
            let _ = sizer.next_size();
            sizer.observe_arrivals(12, Duration::from_micros(100));
            sizer.observe(12, Duration::from_micros(130));
            sizer.observe(8, Duration::from_micros(90));
        }
        assert_eq!(sizer.size(), 999);
    }

    #[test]
    fn a_fit_with_few_noisy_batches_plans_for_a_longer_write() {
        // 1 ms + 10 µs per item at 0.9 of the capacity at 1000 items.
        let rate = 0.9 * 1_000.0 / 11e-3;
        let exact = WriteBound {
            overhead: 1e-3,
            per_item: 10e-6,
            mean_n: 450.0,
            var_n: 100.0 * 100.0,
            mean_var: 0.0,
        };
        let cv2 = 0.4 * 0.4 / 12.0;
        // 654 with the costs known exactly (docs/parallel.md).
        let sure = tail_cap(rate, exact, cv2, 1_000).unwrap();
        // Writes of ~5 ms with ±20 % noise (s ≈ 0.6 ms): after 60 batches
        // the line is known to ±0.08 ms at the mean size, and less well
        // away from it.
        let young = WriteBound {
            mean_var: 0.6e-3 * 0.6e-3 / 60.0,
            ..exact
        };
        // 710: bigger batches drain faster if the writes are slower.
        let unsure = tail_cap(rate, young, cv2, 1_000).unwrap();
        assert!(unsure > sure + 20, "{unsure} vs {sure}");
        // After ~2000 effective batches (the long-run fit's horizon) the
        // margin is small: 662.
        let old = WriteBound {
            mean_var: 0.6e-3 * 0.6e-3 / 2_000.0,
            ..exact
        };
        let settled = tail_cap(rate, old, cv2, 1_000).unwrap();
        assert!(settled.abs_diff(sure) <= sure / 50, "{settled} vs {sure}");
    }

    proptest::proptest! {
        /// The ternary search finds the same size as a scan of every size,
        /// with or without a margin for the fit's error.
        #[test]
        fn tail_cap_matches_a_full_scan(
            overhead_us in 0.0f64..5_000.0,
            per_item_us in 0.1f64..100.0,
            load in 0.01f64..0.99,
            cv2 in 0.0f64..0.1,
            max in 1usize..3_000,
            error in proptest::prop_oneof![proptest::strategy::Just(0.0), 0.0f64..0.05],
            mean_n in 0.0f64..1.0,
        ) {
            let (o, c) = (overhead_us * 1e-6, per_item_us * 1e-6);
            let rate = load * max as f64 / (o + max as f64 * c);
            // A residual of `error` × the write at the maximum, from 100
            // batches spread around `mean_n` × the maximum.
            let write = WriteBound {
                overhead: o,
                per_item: c,
                mean_n: mean_n * max as f64,
                var_n: (0.2 * max as f64).powi(2).max(1.0),
                mean_var: (error * (o + max as f64 * c)).powi(2) / 100.0,
            };
            let latency = |m: usize| {
                let w = write.at(m as f64);
                let mu = m as f64 / w;
                TAIL_LN * (rate + m as f64 * mu * cv2) / (2.0 * mu * (mu - rate)) + w
            };
            let scan = (1..=max)
                .filter(|&m| m as f64 / write.at(m as f64) > rate)
                .min_by(|&a, &b| latency(a).total_cmp(&latency(b)));
            let found = tail_cap(rate, write, cv2, max);
            match (found, scan) {
                (Some(f), Some(s)) => proptest::prop_assert!(
                    latency(f) <= latency(s) * (1.0 + 1e-9),
                    "{f} vs {s}"
                ),
                (f, s) => proptest::prop_assert_eq!(f, s),
            }
        }

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
