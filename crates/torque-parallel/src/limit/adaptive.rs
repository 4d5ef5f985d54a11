use std::time::{Duration, Instant};

use super::{Algorithm, BuildError, Outcome, Sample, check_bounds, check_range, clamp_limit};

/// The default limit algorithm: windowed latency against a periodically
/// re-measured no-load latency, with AIMD only as an overload backstop.
///
/// How it decides, one window at a time:
/// - **Windows, not samples.** Latencies of requests admitted since the last
///   decision are averaged until the mean is precise enough to see one extra
///   queued request: its relative standard error must fall below
///   `1 / (3 × limit)` (a queue of one adds about `1 / limit` to the mean
///   latency at the knee), or the window reaches `max_window`. Service-time
///   variance then averages out instead of being read as queueing, the flaw
///   of per-sample delay control (Vegas, Gradient2). A window then stops
///   admitting and waits four mean latencies, and until every request in
///   flight at that moment has reported: closing on completions alone keeps
///   a cohort's fast requests and drops its slow ones (with a latency that
///   is sometimes a cache hit, all of them). A request that never reports
///   (a permit held for a stream) holds one window at most `max_window`
///   (or four mean latencies, if longer); later windows do not wait for it.
/// - **Queueing test.** With `ratio = mean / baseline` (the no-load
///   latency), `target = 1 + headroom` and `noise` two combined standard
///   errors of window and baseline: above `target + noise` the limit becomes
///   `limit / ratio × target` — `limit / ratio` requests are being served, by
///   Little's law (TCP Vegas' `expected / actual` rate, Envoy's gradient) —
///   plus the headroom's worth of queue. Below `target` it grows: doubling
///   per window until the first queue (slow start, never cutting below its
///   last queue-free limit), then by 1, 1, 1, 2, 3, … per window while no
///   queue shows (so it also finds a capacity that rose). In between, it
///   holds for one window. Slow start's windows are short (32 samples, so
///   the limit leaves the low start-up values within a second); a gross
///   queue (1.5 × the baseline, and significant), or a significant one in
///   two windows in a row, ends it.
/// - **Refusals (open loops).** Callers that use `try_acquire` and drop a
///   request when it is refused show their load only through refusals:
///   latencies stay at the limit's. While a window had refusals
///   ([`Algorithm::rejected`]), the limit is at least the requests being
///   served (`served`, admitted rate × no-load latency, by Little's law)
///   × 1.03 plus `√offered`, where `offered` counts the refusals too, at
///   most twice `served` (so a client retrying at once does not inflate
///   it): one standard deviation of Poisson arrivals over a no-load
///   latency, the Halfin–Whitt scale of a many-server queue's buffer.
///   Waiting callers (`acquire`) never refuse; a limiter shared by waiting
///   and refused callers gets the allowance whenever some are refused.
/// - **Re-measured no-load latency.** Every `probe_interval` the limit drops
///   to `probe_limit` (4) for one window to sample the no-load latency
///   again, as Envoy's adaptive concurrency filter re-measures its minRTT, so a
///   backend whose no-load latency rose (a slower dependency, a capacity drop
///   that lengthens service) does not leave the limit stuck low. A probe
///   consistent with the current baseline is merged into it (inverse-variance
///   weighting); an inconsistent one replaces it. Between probes, windows
///   that measured no queue sharpen it: in steady state, those within their
///   own standard error of it (the bottom of the limit's oscillation); not
///   a slow-start window grossly faster than it (by a third), which with
///   skewed latencies missed the slow requests and looks precise. And
///   when the window after a modest cut is no faster than the one that made
///   it (nor much slower: a capacity drop), there was no queue to drain: the
///   baseline was too low, and both windows re-measure it. A window also
///   re-measures it when a run of cuts (no queue-free window between them)
///   has taken the limit below the requests the run's first cut found
///   served, less four standard errors: no queue can remain there. The cuts
///   after the first are then undone, unless the next window is queued.
///   Between probes
///   the baseline never rises above the last probe's mean plus two standard
///   errors (for the start-up probe, of it and slow start's queue-free
///   windows together): beyond that, a window slow after a cut is another client's
///   queue on a shared backend, which this limiter cannot drain. Two windows
///   in a row significantly faster than the baseline start a probe at once:
///   the baseline was measured under a queue that has since drained (a
///   client that joined a shared backend late) or the backend got faster.
/// - **Overload backstop.** An [`Outcome::Overload`] (a timeout) multiplies
///   the limit by `backoff_ratio`, at most once per round trip (TCP Reno's
///   rule), whatever the latency says. During a probe, the overload of a
///   request admitted before it backs off the limit the probe returns to.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_parallel::limit::{Adaptive, Algorithm};
///
/// let adaptive = Adaptive::builder()
///     .initial_limit(4)
///     .min_limit(1)
///     .max_limit(512)
///     .probe_interval(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(adaptive.initial_limit(), 4);
/// # Ok::<(), torque_parallel::limit::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adaptive {
    config: AdaptiveBuilder,
    limit: usize,
    slow_start: bool,
    growth_streak: usize,
    /// The last window was in the band above the target and held.
    held: bool,
    /// Requests the backend served at the last queue (limit / ratio).
    capacity: Option<f64>,
    /// The cuts since the last window without a queue.
    descent: Option<Descent>,
    /// The limit before a descent's cuts were undone, until the next window
    /// confirms the undoing.
    restored: Option<usize>,
    /// In slow start, the last limit whose window showed no queue.
    last_clear: Option<usize>,
    /// The steady-state window that made the last cut: its limit, mean and
    /// variance of the mean.
    cut_by: Option<(usize, f64, f64)>,
    /// The last window was significantly faster than the no-load estimate.
    faster: bool,

    window: Window,
    baseline: Option<Baseline>,
    /// The highest no-load latency the last probe allows (its mean plus
    /// two standard errors).
    ceiling: Option<f64>,
    probe: Probe,
    last_backoff: Option<Instant>,
}

/// Builder of [`Adaptive`].
#[derive(Debug, Clone)]
pub struct AdaptiveBuilder {
    initial: usize,
    min: usize,
    max: usize,
    min_samples: usize,
    max_window: Duration,
    headroom: f64,
    probe_interval: Duration,
    probe_limit: usize,
    backoff_ratio: f64,
}

/// A run of cuts with no queue-free window between them, as its first cut
/// saw it.
#[derive(Debug, Clone, Copy)]
struct Descent {
    /// A limit at or below which no queue can remain: the requests the first
    /// cut found served (Little's law on the window's mean concurrency),
    /// less four of its standard errors.
    drained_below: f64,
    /// The limit the first cut set.
    restore: usize,
}

/// The no-load latency estimate: a mean and its variance (seconds²).
#[derive(Debug, Clone, Copy)]
struct Baseline {
    mean: f64,
    variance: f64,
}

#[derive(Debug, Clone, Copy)]
enum Probe {
    /// The next probe is due at this instant (set by the first sample).
    Due(Option<Instant>),
    /// Probing; the limit to go back to afterwards.
    Running { restore: usize },
}

/// A window's admission cut-off, and how long it waits for the requests
/// admitted before it.
#[derive(Debug, Clone, Copy)]
struct Cut {
    at: Instant,
    /// The admission number of the first request after the cut.
    admission: u64,
    /// Requests in flight at the cut that have not reported yet.
    outstanding: usize,
    /// Four mean latencies after the cut: the window closes at the first
    /// completion after both this and the last of `outstanding`.
    drained: Instant,
    /// The window closes at the first completion after this, reported or
    /// not: a request may never report (a token kept for ever, or one
    /// restarted after the cut). `max_window` after the cut, or `drained`
    /// if later.
    latest: Instant,
}

/// Sums over the latencies of one window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Option<Instant>,
    /// Admission cut-off: once set, the window is the cohort admitted before
    /// it, and waits for the cohort's slow requests.
    cut: Option<Cut>,
    count: usize,
    sum: f64,
    sum_squares: f64,
    max_in_flight: usize,
    /// Sum of the requests in flight as each was admitted.
    sum_in_flight: f64,
    /// `try_acquire` refusals before the cut-off.
    refused: usize,
    /// Requests that a window closed without (still in flight when it
    /// gave up on them: a permit held for a stream, say), admitted before
    /// `stale_before`, and not reported since. Later windows do not wait
    /// for them again.
    stale: usize,
    stale_before: u64,
}

impl Window {
    fn add(&mut self, sample: &Sample) {
        // A zero latency (a mock clock never advanced) would make a zero
        // baseline and infinite ratios.
        let latency = sample.latency.as_secs_f64().max(1e-9);
        self.count += 1;
        self.sum += latency;
        self.sum_squares += latency * latency;
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        self.sum_in_flight += sample.in_flight as f64;
    }

    /// The request with this admission number has reported.
    fn reported(&mut self, admission: u64) {
        if let Some(cut) = &mut self.cut
            && admission < cut.admission
        {
            cut.outstanding = cut.outstanding.saturating_sub(1);
        }
        if admission < self.stale_before {
            self.stale = self.stale.saturating_sub(1);
        }
    }

    fn reset(&mut self, now: Instant) {
        let (stale, stale_before) = match self.cut {
            Some(cut) if cut.outstanding > 0 => (cut.outstanding, cut.admission),
            _ => (self.stale, self.stale_before),
        };
        *self = Window {
            start: Some(now),
            stale,
            stale_before,
            ..Window::default()
        };
    }

    /// Every request in flight at the cut has reported, but for those an
    /// earlier window already gave up on.
    fn cohort_reported(&self) -> bool {
        self.cut.is_some_and(|cut| cut.outstanding <= self.stale)
    }

    fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Variance of the window's mean (seconds²).
    fn variance_of_mean(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.mean();
        let variance = (self.sum_squares / n - mean * mean).max(0.0) * n / (n - 1.0).max(1.0);
        variance / n
    }
}

/// One extra queued request raises the mean latency by about `1 / limit`;
/// the window's standard error must be this many times smaller to see it.
const RESOLUTION: f64 = 3.0;

/// A window whose mean is this far above the baseline closes early: the
/// queue is obvious and waiting for precision only prolongs it.
const OBVIOUS_QUEUE: f64 = 1.5;

/// Standard errors a window's mean must exceed the baseline by to count as
/// a queue: a false alarm costs a cut of the limit, so be sure.
const SIGNIFICANCE: f64 = 2.0;

/// Samples a slow-start window (and the start-up probe) needs: enough for
/// a standard error of about 12 % of the mean, which sees a doubling past
/// the capacity (a mean latency up to twice the baseline).
const SLOW_START_SAMPLES: usize = 32;

/// How long a closed window waits for its cohort's stragglers at least, in
/// mean latencies: with an exponential-like tail, what arrives later is
/// negligible. It also waits for the last request in flight at its cut.
const DRAIN: f64 = 4.0;

/// The baseline variance never drops below this fraction of its mean squared,
/// so that merged probes keep some weight and the estimate can drift.
const BASELINE_FLOOR: f64 = 0.005 * 0.005;

impl Adaptive {
    /// A builder with the defaults: initial limit 4, bounds 1..=1000, at
    /// least 64 samples (32 in slow start) and at most 1 s per window,
    /// headroom 3 % (the queueing aimed at), a no-load probe at a limit of 4
    /// at start-up and every 60 s, backoff 0.9 on overload.
    pub fn builder() -> AdaptiveBuilder {
        AdaptiveBuilder {
            initial: 4,
            min: 1,
            max: 1000,
            min_samples: 64,
            max_window: Duration::from_secs(1),
            headroom: 0.03,
            probe_interval: Duration::from_secs(60),
            probe_limit: 4,
            backoff_ratio: 0.9,
        }
    }

    /// The no-load latency estimate, once measured.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
            .map(|b| Duration::try_from_secs_f64(b.mean).unwrap_or(Duration::MAX))
    }

    /// Whether a no-load probe is under way.
    pub fn probing(&self) -> bool {
        matches!(self.probe, Probe::Running { .. })
    }

    fn set_limit(&mut self, limit: f64) {
        self.limit = clamp_limit(limit.round(), self.config.min, self.config.max);
    }

    fn next_probe(&self, now: Instant) -> Instant {
        // Capped so that a huge interval ("never") cannot overflow Instant.
        now + self.config.probe_interval.min(Duration::from_secs(1 << 32))
    }

    fn start_probe(&mut self, now: Instant) {
        let restore = self.limit;
        self.set_limit(restore.min(self.config.probe_limit) as f64);
        self.probe = Probe::Running { restore };
        // The window after the probe is not comparable with the one before.
        self.cut_by = None;
        self.descent = None;
        self.restored = None;
        self.faster = false;
        self.window.reset(now);
    }

    fn end_probe(&mut self, now: Instant, restore: usize, mean: f64, variance: f64) {
        let variance = variance.max(BASELINE_FLOOR * mean * mean);
        self.ceiling = Some(mean + SIGNIFICANCE * variance.sqrt());
        self.baseline = Some(match self.baseline {
            Some(old) if (mean - old.mean).abs() <= 3.0 * (variance + old.variance).sqrt() => {
                merge(old, mean, variance)
            }
            _ => Baseline { mean, variance },
        });
        if self.slow_start && restore <= self.limit {
            // The start-up probe doubles as the first slow-start window.
            self.last_clear = Some(self.limit);
            self.set_limit(self.limit as f64 * 2.0);
        } else {
            self.limit = restore;
        }
        self.probe = Probe::Due(Some(self.next_probe(now)));
        self.window.reset(now);
    }

    /// With refusals (an open loop that sheds what the limit does not
    /// admit), the limit must also cover the arrivals' bursts: Poisson
    /// arrivals over one no-load latency vary by the square root of the
    /// offered load in requests (the Halfin–Whitt scale, Halfin & Whitt
    /// 1981, "Heavy-traffic limits for queues with many exponential
    /// servers"), and a limit of only the requests being served refuses a
    /// burst and then leaves servers idle in the lull after it. So the
    /// limit is at least `served × (1 + headroom) + √offered`, where
    /// `served = admitted rate × no-load latency` (Little's law; with the
    /// headroom, what the latency target allows in a closed loop) and
    /// `offered` adds the refusals. Offered load is taken as at most twice
    /// the served load: beyond that the refusals are mostly a client
    /// retrying at once, not demand.
    fn burst_floor(&self, window: &Window, now: Instant) -> Option<f64> {
        if window.refused == 0 || window.count == 0 {
            return None;
        }
        let baseline = self.baseline?.mean;
        let start = window.start?;
        let end = window.cut.map_or(now, |cut| cut.at);
        let span = end.saturating_duration_since(start).as_secs_f64();
        if span <= 0.0 {
            return None;
        }
        let served = window.count as f64 / span * baseline;
        let offered = ((window.count + window.refused) as f64 / span * baseline).min(2.0 * served);
        Some(served * (1.0 + self.config.headroom) + offered.sqrt())
    }

    /// Between probes, windows may correct the no-load estimate only within
    /// the last probe's own error. A window that stays slower than that
    /// after a cut is a queue this limiter cannot drain — other clients of
    /// a shared backend keep it full — and taking it for the no-load
    /// latency raised the estimate 30–50 % with two or three clients
    /// (`limit_sim -- --only shared`), each then allowing a larger queue.
    fn capped(&self, baseline: Baseline) -> Baseline {
        match self.ceiling {
            Some(ceiling) if baseline.mean > ceiling => Baseline {
                mean: ceiling,
                ..baseline
            },
            _ => baseline,
        }
    }

    fn decide(&mut self, now: Instant) {
        let window = self.window;
        let probing = self.probing();
        self.decide_latency(now);
        if probing {
            return;
        }
        if let Some(floor) = self.burst_floor(&window, now) {
            let floor = clamp_limit(floor.round(), self.config.min, self.config.max);
            if floor > self.limit {
                self.limit = floor;
                // The next window is not the one after a latency cut: the
                // check that re-measures a low baseline would take the burst
                // queue for it and ratchet the baseline, and with it the
                // floor, up (tried: limits of 100–240 on 24–64 servers).
                self.cut_by = None;
            }
        }
    }

    fn decide_latency(&mut self, now: Instant) {
        let window = self.window;
        let mean = window.mean();
        let variance = window.variance_of_mean();
        if let Probe::Running { restore } = self.probe {
            self.end_probe(now, restore, mean, variance);
            return;
        }
        let baseline = match self.baseline {
            Some(baseline) => baseline,
            None => {
                let variance = variance.max(BASELINE_FLOOR * mean * mean);
                self.baseline = Some(Baseline { mean, variance });
                Baseline { mean, variance }
            }
        };
        let mut baseline = baseline;
        if let Some((cut_limit, cut_mean, cut_variance)) = self.cut_by.take() {
            // A modest queue made the last cut. If the lower limit did not
            // shorten the latency, there was no queue to drain: both
            // windows measured the no-load latency, and the baseline (too
            // low) is re-measured from them. Without this a low baseline
            // keeps cutting far below the capacity until the next probe.
            // A window much slower than the one before the cut (beyond two
            // standard errors), or grossly queued, is a queue that grew (a
            // capacity drop), not a wrong baseline.
            let spread = SIGNIFICANCE * (variance + cut_variance).sqrt();
            let steady = mean >= cut_mean && mean <= cut_mean + spread;
            if self.limit < cut_limit && steady && mean < OBVIOUS_QUEUE * baseline.mean {
                let floor = |m: f64, v: f64| v.max(BASELINE_FLOOR * m * m);
                baseline = merge(
                    Baseline {
                        mean: cut_mean,
                        variance: floor(cut_mean, cut_variance),
                    },
                    mean,
                    floor(mean, variance),
                );
                baseline = self.capped(baseline);
                self.baseline = Some(baseline);
            }
        }
        // Cut after cut without the latency falling, to below the requests
        // the descent's first cut found served: no queue can remain there,
        // so this window measured the no-load latency, and the estimate it
        // reads high against was low. The check above misses this when each
        // window after a cut is a little faster than the one that made it —
        // which it usually is, as that one was cut for being slow — and a
        // few per cent low estimate then ratchets the limit down for good
        // (`limit_sim -- --seeds 17 --only thrash`, 64 servers: from 64 to
        // 33 in 40 s, 0.74 × the oracle). The cuts since the first were
        // made against the low estimate: undo them, back to the limit the
        // first set, for one window that must confirm it (below). Now 64 to
        // 51 in 8 s, back to 64, 0.97 ×; only re-measuring, and growing
        // back from 51 one step a window, gave 0.95 ×. Undoing without the
        // confirming window starved clients on a shared backend (`--only
        // shared`, 24 servers, second client at 30 s, seed 1: limits 18.0 /
        // 7.8 became 1.2 / 30.6).
        let drained = !self.slow_start
            && mean < OBVIOUS_QUEUE * baseline.mean
            && self
                .descent
                .is_some_and(|d| self.limit as f64 <= d.drained_below.floor());
        if drained {
            baseline = self.capped(merge(
                baseline,
                mean,
                variance.max(BASELINE_FLOOR * mean * mean),
            ));
            self.baseline = Some(baseline);
            if let Some(descent) = self.descent.filter(|d| d.restore > self.limit) {
                self.restored = Some(self.limit);
                self.limit = descent.restore;
                self.descent = None;
                self.held = false;
                self.growth_streak = 0;
                self.window.reset(now);
                return;
            }
        }
        let ratio = mean / baseline.mean;
        let relative_error =
            (variance / (mean * mean) + baseline.variance / baseline.mean.powi(2)).sqrt();
        let noise = SIGNIFICANCE * relative_error;
        let target = 1.0 + self.config.headroom;
        // The window after undoing a descent: queued against the corrected
        // estimate, the cuts were right after all — another client's queue
        // on a shared backend, which this client's cuts cannot drain, looks
        // the same as a low estimate until its limit rises. Go back.
        if let Some(previous) = self.restored.take()
            && ratio > target + noise
        {
            self.limit = previous;
            self.descent = None;
            self.held = false;
            self.growth_streak = 0;
            self.window.reset(now);
            return;
        }
        // Two windows in a row significantly faster than the no-load
        // estimate: it was measured under a queue that has since drained —
        // typically another client's, on a shared backend this client joined
        // late — or the backend got faster. Re-measure now instead of at the
        // next `probe_interval`: a late joiner's high estimate lets it keep a
        // queue that the clients with a true estimate back away from, until
        // they starve (TCP Vegas' unfairness between flows with different
        // base-RTT estimates; Hengartner, Bolliger & Gross 2000, "TCP Vegas
        // revisited"). One such window alone is a false alarm about 2 % of
        // the time (a two-standard-error test); two in a row almost never.
        if ratio < 1.0 - noise {
            if self.faster {
                self.start_probe(now);
                return;
            }
            self.faster = true;
        } else {
            self.faster = false;
        }
        // Slow start's short windows and young baseline only see a gross
        // queue: the doubling that crossed the capacity.
        let queued = if self.slow_start {
            // A gross queue, or a significant one twice in a row (the hold
            // below): doubling past it would only thrash the backend.
            ratio > (target + noise).max(OBVIOUS_QUEUE) || (ratio > target + noise && self.held)
        } else {
            ratio > target + noise
        };
        if queued {
            // Little's law: limit / ratio requests are being served; allow
            // the headroom's worth of queue on top.
            let served = self.limit as f64 / ratio;
            self.capacity = Some(served);
            // A descent starts at a cut after a queue-free window, or at a
            // gross queue (a capacity drop, the end of slow start).
            let fresh = self.descent.is_none() || ratio >= OBVIOUS_QUEUE;
            // Concurrency, not the limit: an open loop does not always fill
            // it (with the limit, windows queued above 24 servers passed for
            // drained). Less four standard errors (twice `noise`), not two:
            // with two, a small limit's noisy windows set it off on a
            // correct estimate (thrash C = 8 seed 5: 0.990 → 0.987).
            let busy = (window.sum_in_flight / window.count as f64).min(self.limit as f64);
            let drained_below = busy / ratio / (1.0 + 2.0 * noise);
            let mut new = (served * target).round().min(self.limit as f64 - 1.0);
            if let Some(clear) = self.last_clear.take() {
                // The previous slow-start window showed no queue at `clear`:
                // thrashing makes Little's law undershoot, so do not go
                // below what is known to work.
                new = new.max(clear as f64).min(self.limit as f64 - 1.0);
            }
            // A gross queue is never a baseline error (and a capacity drop
            // leaves one that the next window still sees).
            if !self.slow_start && ratio < OBVIOUS_QUEUE {
                self.cut_by = Some((self.limit, mean, variance));
            }
            self.set_limit(new);
            if fresh {
                self.descent = Some(Descent {
                    drained_below,
                    restore: self.limit,
                });
            }
            self.slow_start = false;
            self.growth_streak = 0;
            self.held = false;
            self.window.reset(now);
            return;
        }
        let below_capacity = self
            .capacity
            .is_none_or(|capacity| self.limit as f64 <= capacity.floor());
        let variance = variance.max(BASELINE_FLOOR * mean * mean);
        // Which windows measured the no-load latency and sharpen the
        // baseline: in slow start, one with no significant queue (the same
        // test that ends slow start; with one standard error instead, a
        // start-up probe that read 14 % low was never corrected, as every
        // later window looked slower than it, and the limit stayed a sixth
        // below the capacity); in
        // steady state, one below the capacity the last queue revealed, or
        // one within its own standard error of the baseline — the bottom of
        // the limit's oscillation, where the queue has drained. Without the
        // latter the baseline keeps the precision of slow start's short
        // windows, and its error alone makes a noise band of several per
        // cent that lets the queue grow.
        let window_error = (variance / (mean * mean)).sqrt();
        let clean = if self.slow_start {
            ratio <= target + noise
        } else {
            below_capacity || ratio <= 1.0 + window_error
        };
        if ratio <= target {
            self.descent = None;
        }
        // A slow-start window grossly faster than the estimate (by a third,
        // the mirror of a gross queue) is a surprise, not a sharper
        // estimate: luck, or a faster backend (two such windows in a row
        // start a probe, above). Its standard error comes from its own few
        // samples, and when latencies are skewed a sample that missed the
        // slow ones is low in both mean and spread: merged by inverse
        // variance, it took over the estimate. With 90 % cache hits of 1 ms
        // and 10 % misses of 50 ms, a window of 36 hits (standard error 0)
        // replaced the probe's 7.1 ms with 1 ms; every later window then
        // read a gross queue, and the limit stayed at 1 on 8 servers for
        // the rest of the run (`limit_sim -- --model bimodal --only thrash
        // --seeds 1`: 0.12 × the oracle; now 0.97 ×).
        let surprise = self.slow_start && self.faster && ratio < 1.0 / OBVIOUS_QUEUE;
        if clean && !drained && !surprise {
            // Windows before the first queue, or below the capacity the last
            // queue revealed, are no-load samples: they sharpen the baseline.
            let merged = merge(baseline, mean, variance);
            if self.slow_start {
                // Slow start's queue-free windows measure the no-load
                // latency as the start-up probe does: the ceiling rests on
                // all of them, not on the probe's 32 samples alone. On one
                // seed the probe read 18 % low (its requests' service times
                // happened to be short, and so was their spread, which set
                // its standard error): the ceiling held the estimate below
                // the truth, every later window looked queued, and the
                // limit fell to 12 on 64 servers (`limit_sim -- --seeds 19
                // --only thrash`: 0.43 × the oracle).
                let ceiling = merged.mean + SIGNIFICANCE * merged.variance.sqrt();
                self.ceiling = Some(self.ceiling.map_or(ceiling, |c| c.max(ceiling)));
            }
            self.baseline = Some(self.capped(merged));
        }
        let band = if self.slow_start {
            target + noise
        } else {
            target
        };
        let in_band = ratio > band;
        if window.max_in_flight < self.limit || (in_band && !self.held) {
            // Not using the limit, or inside the noise band above the
            // target: hold, once. Two in-band windows in a row mean the
            // queue is not growing; holding on would let every noisy cut
            // ratchet the limit down when the baseline is a little low.
            self.held = in_band;
            self.window.reset(now);
            return;
        }
        self.held = false;
        if self.slow_start {
            self.last_clear = Some(self.limit);
            self.set_limit(self.limit as f64 * 2.0);
        } else {
            self.growth_streak += 1;
            // +1 near the last queue; faster while no queue shows (the
            // capacity rose).
            let step = self
                .growth_streak
                .saturating_sub(2)
                .clamp(1, (self.limit / 4).max(1));
            self.set_limit((self.limit + step) as f64);
        }
        self.window.reset(now);
    }
}

fn merge(old: Baseline, mean: f64, variance: f64) -> Baseline {
    let (w_old, w_new) = (1.0 / old.variance, 1.0 / variance);
    let merged = (old.mean * w_old + mean * w_new) / (w_old + w_new);
    Baseline {
        mean: merged,
        variance: (1.0 / (w_old + w_new)).max(BASELINE_FLOOR * merged * merged),
    }
}

impl Default for Adaptive {
    fn default() -> Self {
        Self::builder().build().unwrap_or_else(|_| unreachable!())
    }
}

impl AdaptiveBuilder {
    /// The limit slow start begins from (clamped into the bounds), once the
    /// start-up probe has measured the no-load latency: until then the
    /// limit is [`probe_limit`](Self::probe_limit) when that is lower (so
    /// `initial_limit(100)` admits 4 requests at first, and 100 once the
    /// probe's window has closed). Starting low is cheap (slow start
    /// doubles it per window) and gives a clean first no-load measurement.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The lowest limit (at least 1).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.min = limit;
        self
    }

    /// The highest limit.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// Samples a steady-state window needs before it may close (at least
    /// 2). Slow start, while the limit is still growing from its initial
    /// value, closes its windows after 32 samples (or this, if smaller), to
    /// reach the backend's capacity quickly.
    pub fn min_samples(mut self, samples: usize) -> Self {
        self.min_samples = samples;
        self
    }

    /// The longest window: at high limits, precision gives way to reaction
    /// time here.
    pub fn max_window(mut self, window: Duration) -> Self {
        self.max_window = window;
        self
    }

    /// The queueing accepted on purpose, as a fraction of the no-load
    /// latency, in [0, 1): a little queue keeps every server busy between
    /// one request and the next.
    pub fn headroom(mut self, headroom: f64) -> Self {
        self.headroom = headroom;
        self
    }

    /// How often the no-load latency is re-measured (more than zero). Each
    /// probe holds the limit at `probe_limit` for a window, so an interval
    /// of a window or two keeps it there.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The limit while the no-load latency is measured (at start-up and
    /// every `probe_interval`), at least 1. Envoy uses 3; it must be below
    /// the backend's capacity for the measurement to be clean.
    pub fn probe_limit(mut self, limit: usize) -> Self {
        self.probe_limit = limit;
        self
    }

    /// The factor applied on an overload, in (0, 1).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`BuildError`] when the bounds are empty or a knob is out of range.
    pub fn build(self) -> Result<Adaptive, BuildError> {
        check_bounds(self.min, self.max)?;
        check_range(
            "min_samples",
            self.min_samples as f64,
            self.min_samples >= 2,
            "at least 2",
        )?;
        check_range(
            "max_window",
            self.max_window.as_secs_f64(),
            !self.max_window.is_zero(),
            "more than zero",
        )?;
        // Every probe holds the limit at `probe_limit` for a window: an
        // interval of zero probes at every sample and never lets it go.
        check_range(
            "probe_interval",
            self.probe_interval.as_secs_f64(),
            !self.probe_interval.is_zero(),
            "more than zero (Duration::MAX: never re-measure)",
        )?;
        check_range(
            "headroom",
            self.headroom,
            (0.0..1.0).contains(&self.headroom),
            "in [0, 1)",
        )?;
        check_range(
            "probe_limit",
            self.probe_limit as f64,
            self.probe_limit >= 1,
            "at least 1",
        )?;
        check_range(
            "backoff_ratio",
            self.backoff_ratio,
            self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0,
            "between 0 and 1, exclusive",
        )?;
        let initial = self.initial.clamp(self.min, self.max);
        Ok(Adaptive {
            // The first window measures the no-load latency at the probe
            // limit, then the limit goes to `initial`.
            limit: initial.min(self.probe_limit).max(self.min),
            config: self,
            slow_start: true,
            growth_streak: 0,
            held: false,
            capacity: None,
            descent: None,
            restored: None,
            last_clear: None,
            cut_by: None,
            faster: false,

            window: Window::default(),
            baseline: None,
            ceiling: None,
            probe: Probe::Running { restore: initial },
            last_backoff: None,
        })
    }
}

impl Algorithm for Adaptive {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn rejected(&mut self) {
        if self.window.cut.is_none() {
            self.window.refused += 1;
        }
    }

    fn ignored(&mut self, admission: u64) {
        self.window.reported(admission);
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let now = sample.now;
        self.window.reported(sample.admission);
        if sample.outcome == Outcome::Overload {
            // AIMD backstop, once per round trip: only a request admitted
            // after the last cut may cut again.
            if self.last_backoff.is_none_or(|at| sample.started() >= at) {
                let admitted_before_probe = self
                    .window
                    .start
                    .is_some_and(|start| sample.started() < start);
                if let Probe::Running { restore } = self.probe
                    && admitted_before_probe
                {
                    // The request was admitted under the limit before the
                    // probe, and those requests drain during it (a timeout
                    // among them is likely): back off the limit the probe
                    // returns to, and let the probe finish. Cutting the
                    // probe's limit and cancelling the probe forgot that
                    // limit: 64 servers ran at 3–51 requests for the next
                    // 7 s.
                    let restore = (restore as f64 * self.config.backoff_ratio).floor();
                    let restore = clamp_limit(restore, self.config.min, self.config.max);
                    self.probe = Probe::Running { restore };
                    self.last_backoff = Some(now);
                    self.slow_start = false;
                    self.growth_streak = 0;
                    return self.limit;
                }
                self.set_limit((self.limit as f64 * self.config.backoff_ratio).floor());
                self.last_backoff = Some(now);
                self.cut_by = None;
                self.descent = None;
                self.restored = None;
                self.slow_start = false;
                self.growth_streak = 0;
                if let Probe::Running { .. } = self.probe {
                    self.probe = Probe::Due(Some(self.next_probe(now)));
                }
                self.window.reset(now);
            }
            return self.limit;
        }
        match self.probe {
            Probe::Due(None) => self.probe = Probe::Due(Some(self.next_probe(now))),
            Probe::Due(Some(at)) if now >= at => {
                self.start_probe(now);
                return self.limit;
            }
            _ => {}
        }
        let start = *self.window.start.get_or_insert(sample.started());
        if let Some(cut) = self.window.cut {
            // A request admitted before the window began saw the old limit.
            if sample.started() > start && sample.started() < cut.at {
                self.window.add(sample);
            }
            if (self.window.cohort_reported() && now >= cut.drained) || now >= cut.latest {
                self.decide(now);
            }
            return self.limit;
        }
        if sample.started() <= start {
            return self.limit;
        }
        self.window.add(sample);
        let slow_start = self.slow_start;
        let window = &mut self.window;
        // Slow start only looks for a gross queue (the decision's noise
        // band accounts for the small window), and every window spent
        // below the capacity is throughput lost: a short window suffices.
        let min_samples = if slow_start {
            self.config.min_samples.min(SLOW_START_SAMPLES)
        } else {
            self.config.min_samples
        };
        if window.count < min_samples {
            return self.limit;
        }
        let mean = window.mean();
        let relative_error = window.variance_of_mean().sqrt() / mean;
        let needed = 1.0 / (RESOLUTION * self.limit as f64);
        let precise = slow_start || relative_error <= needed;
        let long = now.saturating_duration_since(start) >= self.config.max_window;
        let obvious = !matches!(self.probe, Probe::Running { .. })
            && self.baseline.is_some_and(|b| mean > OBVIOUS_QUEUE * b.mean);
        if obvious {
            self.decide(now);
        } else if precise || long {
            // Closing on completions alone would keep the fast requests of
            // the cohort and drop its slow ones (a survivorship bias of
            // several per cent): stop admitting to the window and wait for
            // the stragglers — four mean latencies, and every request in
            // flight now. Four mean latencies alone lost them when
            // latencies are bimodal: with half the items cache hits of
            // 1 ms and half backend calls of 21 ms, a slow-start window
            // closed on 34 hits, waited 4 ms, took 1 ms for the no-load
            // latency and cut the limit to 1 for good (`cargo run
            // --release -p torque-parallel --features tokio --example
            // bimodal_limit`). Waiting only for the requests in flight
            // (closing sooner when they are quick) made the step and thrash
            // scenarios worse, and starved the first client of a shared
            // backend (`regression_a_late_joiner_on_a_shared_backend_
            // starves_the_first_client`). A request that never reports
            // (a permit held for a stream) holds one window for
            // `max_window`, not every one: later windows do not wait for
            // it again (`Window::stale`). Waiting at most four of the
            // longest latencies seen lately instead dropped the rare slow
            // requests again: with 95 % hits the limit fell to 1.
            let after = |seconds: f64| {
                // Saturating, and capped like the probe interval: a sample
                // of centuries (one built by hand) must not overflow the
                // conversion or the `Instant`.
                let wait = Duration::try_from_secs_f64(seconds)
                    .unwrap_or(Duration::MAX)
                    .min(Duration::from_secs(1 << 32));
                now.checked_add(wait).unwrap_or(now)
            };
            let drain = DRAIN * mean;
            window.cut = Some(Cut {
                at: now,
                admission: sample.admissions,
                outstanding: sample.remaining,
                drained: after(drain),
                latest: after(drain.max(self.config.max_window.as_secs_f64())),
            });
        }
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed-loop fluid model of C servers: every completion comes after
    /// `limit / rate` and took `no_load × max(1, limit / C)`, ±50 % noise.
    struct Model {
        now: Instant,
        rng: u64,
        /// Requests completed so far: in FIFO order, the next one's
        /// admission number.
        completed: u64,
    }

    impl Model {
        fn run(&mut self, adaptive: &mut Adaptive, no_load: f64, c: f64, seconds: f64) {
            self.run_beside(adaptive, no_load, c, 0.0, seconds);
        }

        /// The same, while another client keeps `other` requests in the
        /// same servers.
        fn run_beside(
            &mut self,
            adaptive: &mut Adaptive,
            no_load: f64,
            c: f64,
            other: f64,
            seconds: f64,
        ) {
            let end = self.now + Duration::from_secs_f64(seconds);
            while self.now < end {
                let limit = adaptive.limit as f64;
                let mean = no_load * ((limit + other) / c).max(1.0);
                // xorshift64*: a deterministic uniform in [0, 1).
                self.rng ^= self.rng >> 12;
                self.rng ^= self.rng << 25;
                self.rng ^= self.rng >> 27;
                let u = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64
                    / (1u64 << 53) as f64;
                self.now += Duration::from_secs_f64(mean / limit);
                adaptive.update(&Sample {
                    now: self.now,
                    latency: Duration::from_secs_f64(mean * (0.5 + u)),
                    in_flight: adaptive.limit,
                    // A closed loop: every completion admits the next.
                    admission: self.completed,
                    admissions: self.completed + adaptive.limit as u64,
                    remaining: adaptive.limit.saturating_sub(1),
                    outcome: Outcome::Success,
                });
                self.completed += 1;
            }
        }
    }

    #[test]
    fn probe_recovers_from_a_rise_in_no_load_latency() {
        let mut adaptive = Adaptive::builder()
            .probe_interval(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut model = Model {
            now: Instant::now(),
            rng: 0x9E37_79B9_7F4A_7C15,
            completed: 0,
        };
        model.run(&mut adaptive, 0.020, 16.0, 15.0);
        assert!((14..=20).contains(&adaptive.limit), "{}", adaptive.limit);

        // The backend's no-load latency triples (a slower dependency); its
        // capacity in requests stays 16. Until the next probe, every window
        // looks queued and the limit falls...
        model.run(&mut adaptive, 0.060, 16.0, 3.0);
        assert!(adaptive.limit < 10, "{}", adaptive.limit);
        // ...then the probe re-measures the no-load latency and it recovers.
        model.run(&mut adaptive, 0.060, 16.0, 60.0);
        let baseline = adaptive.baseline().unwrap().as_secs_f64();
        assert!((0.050..0.070).contains(&baseline), "{baseline}");
        assert!((14..=20).contains(&adaptive.limit), "{}", adaptive.limit);
    }

    #[test]
    fn regression_a_low_baseline_does_not_collapse_the_limit() {
        let mut adaptive = Adaptive::builder().build().unwrap();
        let mut model = Model {
            now: Instant::now(),
            rng: 0x9E37_79B9_7F4A_7C15,
            completed: 0,
        };
        model.run(&mut adaptive, 0.020, 16.0, 15.0);
        assert!((14..=20).contains(&adaptive.limit), "{}", adaptive.limit);
        // A no-load estimate 25 % too low (a lucky short window): every
        // window now looks queued, and cuts alone would take the limit far
        // below the capacity until the next probe, 60 s away.
        adaptive.baseline = Some(Baseline {
            mean: 0.015,
            variance: (0.015f64 * 0.01).powi(2),
        });
        model.run(&mut adaptive, 0.020, 16.0, 10.0);
        let baseline = adaptive.baseline().unwrap().as_secs_f64();
        assert!((0.018..0.023).contains(&baseline), "{baseline}");
        assert!((14..=20).contains(&adaptive.limit), "{}", adaptive.limit);
    }

    #[test]
    fn refusals_add_a_burst_allowance_of_the_square_root_of_the_offered_load() {
        let mut adaptive = Adaptive::builder().build().unwrap();
        let mut model = Model {
            now: Instant::now(),
            rng: 0x9E37_79B9_7F4A_7C15,
            completed: 0,
        };
        model.run(&mut adaptive, 0.020, 16.0, 15.0);
        let closed = adaptive.limit;
        assert!((14..=20).contains(&closed), "{closed}");
        // Now every third arrival is refused: 1.33 × what is served is
        // offered, and the limit covers √(1.33 × 16) ≈ 4.6 more requests.
        let mut with_refusals = adaptive.clone();
        let end = model.now + Duration::from_secs(15);
        let mut open = Vec::new();
        while model.now < end {
            let before = model.now;
            model.run(&mut with_refusals, 0.020, 16.0, 0.005);
            // About one completion per 20 ms / limit; refuse a third as many.
            let served = (model.now - before).as_secs_f64() * with_refusals.limit as f64 / 0.020;
            for _ in 0..(served / 3.0).round() as usize {
                with_refusals.rejected();
            }
            open.push(with_refusals.limit);
        }
        let late = &open[open.len() / 2..];
        let mean = late.iter().sum::<usize>() as f64 / late.len() as f64;
        assert!(
            (19.0..=24.0).contains(&mean),
            "{mean} (closed loop {closed})"
        );
        // Without refusals the same backend keeps the latency target's limit.
        model.run(&mut adaptive, 0.020, 16.0, 15.0);
        assert!((14..=20).contains(&adaptive.limit), "{}", adaptive.limit);
    }

    #[test]
    fn regression_another_clients_queue_is_not_taken_for_the_no_load_latency() {
        let mut adaptive = Adaptive::builder().build().unwrap();
        let mut model = Model {
            now: Instant::now(),
            rng: 0x9E37_79B9_7F4A_7C15,
            completed: 0,
        };
        model.run(&mut adaptive, 0.020, 16.0, 15.0);
        // A second client now keeps 12 requests in the same 16 servers. A
        // cut of this client's limit no longer shortens its latency, which
        // the check for a low no-load estimate took as proof that the
        // estimate was low: it re-measured it from the queued windows, again
        // and again.
        model.run_beside(&mut adaptive, 0.020, 16.0, 12.0, 30.0);
        let baseline = adaptive.baseline().unwrap().as_secs_f64();
        assert!(baseline <= 0.020 * 1.2, "{baseline}");
        // Nor does it grow past the servers the other client leaves it
        // (plus the latency target's queue).
        assert!(adaptive.limit <= 8, "{}", adaptive.limit);
    }

    /// A probe drops the limit to 4 while the requests admitted before it
    /// drain; one of them timing out is an overload about the limit before
    /// the probe. It used to cut the probe's limit (4 → 3) and cancel the
    /// probe, forgetting the limit to go back to: 64 servers ran at 3–51
    /// requests for 7 s, instead of 0.9 × the limit after a short probe.
    /// (A request admitted during the probe that times out still cuts the
    /// probe's limit and ends the probe.)
    #[test]
    fn regression_an_overload_during_a_probe_backs_off_the_limit_it_restores() {
        let mut adaptive = Adaptive::builder().build().unwrap();
        let mut model = Model {
            now: Instant::now(),
            rng: 0x9E37_79B9_7F4A_7C15,
            completed: 0,
        };
        model.run(&mut adaptive, 0.020, 64.0, 59.0);
        let before = adaptive.limit;
        assert!((60..=72).contains(&before), "{before}");
        while !adaptive.probing() {
            model.run(&mut adaptive, 0.020, 64.0, 0.001);
        }
        // A request admitted a second ago, before the probe, times out.
        adaptive.update(&Sample {
            now: model.now,
            latency: Duration::from_secs(1),
            in_flight: before,
            admission: 0,
            admissions: before as u64,
            remaining: before - 1,
            outcome: Outcome::Overload,
        });
        let probing = adaptive.probing();
        model.run(&mut adaptive, 0.020, 64.0, 2.0);
        let after = adaptive.limit;
        assert!(after as f64 >= 0.85 * before as f64, "{before} → {after}");
        assert!(probing, "the probe went on");
        let baseline = adaptive.baseline().unwrap().as_secs_f64();
        assert!((0.018..0.023).contains(&baseline), "{baseline}");
    }

    #[test]
    fn overload_backs_off_once_per_round_trip() {
        let mut adaptive = Adaptive::builder().initial_limit(4).build().unwrap();
        adaptive.limit = 100;
        let t0 = Instant::now();
        let overload = |now: Instant, latency_ms: u64| Sample {
            now,
            latency: Duration::from_millis(latency_ms),
            in_flight: 100,
            admission: 0,
            admissions: 100,
            remaining: 99,
            outcome: Outcome::Overload,
        };
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(adaptive.update(&overload(t1, 500)), 90);
        // Admitted before the cut: the same congestion, no second cut.
        assert_eq!(
            adaptive.update(&overload(t1 + Duration::from_millis(1), 500)),
            90
        );
        // Admitted after it: cut again.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(adaptive.update(&overload(t2, 100)), 81);
        for i in 0..200 {
            adaptive.update(&overload(t2 + Duration::from_secs(i + 1), 1));
        }
        assert_eq!(adaptive.limit, 1, "never below the minimum of 1");
    }
}
