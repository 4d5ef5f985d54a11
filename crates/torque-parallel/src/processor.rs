//! [`Processor`]: the entry point, its builder, configuration and statistics.

use std::convert::Infallible;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::blocking::{BlockingMap, BlockingPool};
use crate::cancel::CancelToken;
use crate::collect::{Body, CollectWork, Collected, Fallible, Plain};
use crate::cpu::{Cpu, MapWork, Ran, ReduceWork, key_of};
use crate::error::BuildError;
use crate::outcome::{CollectError, ItemError, PanicError, Summary};

/// Runs batches of work: CPU-bound work on rayon with a learned sequential
/// cutoff ([`map`](Processor::map), [`try_map`](Processor::try_map),
/// [`for_each`](Processor::for_each), [`map_reduce`](Processor::map_reduce)),
/// and blocking work on bounded dedicated threads ([`blocking`](Processor::blocking)).
///
/// Every item's panic is caught and becomes that item's
/// [`ItemError::Panicked`]; the rest of the batch goes on. Cloning is cheap
/// and shares the pools and what the processor has learned.
///
/// ```
/// use torque_parallel::Processor;
///
/// let processor = Processor::builder().build()?;
/// let squares = processor.map(&[1u64, 2, 3], |x| x * x);
/// assert_eq!(squares.iter().map(|r| *r.as_ref().unwrap()).sum::<u64>(), 14);
/// # Ok::<(), torque_parallel::BuildError>(())
/// ```
#[derive(Clone)]
pub struct Processor {
    inner: Arc<Inner>,
    cancel: Option<CancelToken>,
}

struct Inner {
    cpu: Cpu,
    blocking: OnceLock<Result<BlockingPool, String>>,
    config: ProcessorConfig,
    blocking_threads: usize,
    queue_capacity: usize,
    #[cfg(feature = "tokio")]
    io: crate::io::Shared,
}

impl fmt::Debug for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.inner.config)
            .field("cancellable", &self.cancel.is_some())
            .finish_non_exhaustive()
    }
}

/// The plain configuration behind [`ProcessorBuilder`], for settings loaded
/// from files. `None` means the default each field names (derived from
/// `available_parallelism` for the thread counts, queue and buffer; rayon's
/// global pool, no budget, an adaptive limit and no timeout for the rest).
/// With the `serde` feature it is `Serialize`/`Deserialize` as
/// [`LimiterConfig`](crate::limit::LimiterConfig) is: field names as below,
/// missing fields take their defaults, unknown fields are refused, and
/// durations use serde's `{ secs, nanos }` form.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct ProcessorConfig {
    /// Threads of a dedicated rayon pool for the `Cpu` strategy; `None` (the
    /// default) uses rayon's global pool.
    pub cpu_threads: Option<usize>,
    /// Dedicated threads of the `Blocking` strategy; default
    /// `available_parallelism`.
    pub blocking_threads: Option<usize>,
    /// Jobs the `Blocking` queue holds before submitters wait; default twice
    /// the blocking threads.
    pub queue_capacity: Option<usize>,
    /// Maximum total weight of items in flight (queued or running) in a
    /// weighted batch (on the `Blocking` pool, where unweighted items
    /// weigh 1, in all its batches); default unlimited.
    pub memory_budget: Option<u64>,
    /// A batch predicted to take at least this long runs in parallel;
    /// default 50 µs (see `learn_dispatch`).
    pub parallel_threshold: Duration,
    /// Whether `parallel_threshold` is a floor that the `Cpu` strategy
    /// raises to what handing a batch to rayon is measured to cost (waking
    /// rayon's sleeping threads: tens to hundreds of microseconds for a
    /// call that comes after a pause, a few in a tight loop); default
    /// `true`. [`ProcessorBuilder::parallel_threshold`] sets it `false`: a
    /// threshold set by hand is kept as set.
    pub learn_dispatch: bool,
    /// Target work per rayon leaf; default 10 µs.
    pub grain_target: Duration,
    /// A fixed concurrency limit for the `Async` strategy; `None` (the
    /// default) adapts it with `limit::Adaptive`.
    pub async_limit: Option<usize>,
    /// The longest an `Async` or `Hybrid` item may run; default none.
    pub item_timeout: Option<Duration>,
    /// Items the `Hybrid` strategy's CPU stage may hold ahead of its I/O
    /// stage (running or done and waiting); default twice the CPU threads.
    pub hybrid_buffer: Option<usize>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            cpu_threads: None,
            blocking_threads: None,
            queue_capacity: None,
            memory_budget: None,
            parallel_threshold: Duration::from_micros(50),
            learn_dispatch: true,
            grain_target: Duration::from_micros(10),
            async_limit: None,
            item_timeout: None,
            hybrid_buffer: None,
        }
    }
}

/// The most `Blocking` threads a processor may be built with: far beyond
/// any useful count, and well below the point where the pool's bookkeeping
/// (or the operating system) gives out.
const MAX_BLOCKING_THREADS: usize = 1 << 16;

/// Builds a [`Processor`]; every setting has a default.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessorBuilder {
    config: ProcessorConfig,
}

impl ProcessorBuilder {
    /// A builder from a plain configuration.
    ///
    /// ```
    /// use torque_parallel::{ProcessorBuilder, ProcessorConfig};
    ///
    /// let mut config = ProcessorConfig::default();
    /// config.blocking_threads = Some(2);
    /// let processor = ProcessorBuilder::from_config(config).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn from_config(config: ProcessorConfig) -> Self {
        ProcessorBuilder { config }
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn config_mut(&mut self) -> &mut ProcessorConfig {
        &mut self.config
    }

    /// Runs the `Cpu` strategy on a dedicated rayon pool of `threads` threads
    /// instead of rayon's global pool.
    ///
    /// The global pool (the default) is shared with every other rayon user in
    /// the process, so nothing oversubscribes the cores; a dedicated pool
    /// isolates this processor's work from theirs.
    ///
    /// At most `rayon::max_num_threads()` (65,535 on 64-bit targets); more
    /// is a [`BuildError::OutOfRange`], as 0 is [`BuildError::Zero`].
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().cpu_threads(2).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn cpu_threads(mut self, threads: usize) -> Self {
        self.config.cpu_threads = Some(threads);
        self
    }

    /// Number of dedicated threads of the `Blocking` strategy (default
    /// `available_parallelism`, at most 65 536). They start on first use.
    /// Dropping the last handle to the processor joins them when they are
    /// idle. While a job runs or is queued (a `map_async` future dropped
    /// while its job ran, or one that outlives the processor) they are not
    /// waited for: they finish those jobs and exit. So the drop never waits
    /// for user code, which may wait for the dropping thread (say, for a
    /// task of the runtime that thread drives).
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().blocking_threads(8).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn blocking_threads(mut self, threads: usize) -> Self {
        self.config.blocking_threads = Some(threads);
        self
    }

    /// How many jobs the `Blocking` queue holds before a batch waits for room
    /// (default twice the blocking threads).
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().queue_capacity(16).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn queue_capacity(mut self, jobs: usize) -> Self {
        self.config.queue_capacity = Some(jobs);
        self
    }

    /// The most weight (bytes, rows — the unit of your weigher) in flight at
    /// once: per batch for [`Processor::map_weighted`]; for
    /// [`Blocking::map_weighted`], across the whole `Blocking` pool, so
    /// concurrent weighted batches on it share one budget, first come, first
    /// served: once an item waits for room, later items (of any batch) wait
    /// behind it, so a heavy item is not starved by light ones. The items of
    /// the unweighted `Blocking` methods ([`Blocking::map`] and the like)
    /// weigh 1 each against it. An item heavier than the whole budget runs
    /// alone.
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder()
    ///     .memory_budget(256 << 20)
    ///     .build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn memory_budget(mut self, weight: u64) -> Self {
        self.config.memory_budget = Some(weight);
        self
    }

    /// A batch whose predicted run time is at least this runs in parallel;
    /// shorter ones run on the calling thread. Set here, the threshold is
    /// kept as set. By default it is 50 µs raised to what handing a batch
    /// to rayon is measured to cost ([`ProcessorConfig::learn_dispatch`]):
    /// waking rayon's sleeping threads for a call that comes after a pause
    /// took about 200 µs on a 2-core VM, so there a batch of 60 µs runs
    /// faster on the calling thread (of every 64 calls that the measured
    /// cost keeps there, two in a row go to rayon anyway, to measure it
    /// again).
    ///
    /// ```
    /// use std::time::Duration;
    /// let processor = torque_parallel::Processor::builder()
    ///     .parallel_threshold(Duration::from_micros(100))
    ///     .build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn parallel_threshold(mut self, threshold: Duration) -> Self {
        self.config.parallel_threshold = threshold;
        self.config.learn_dispatch = false;
        self
    }

    /// The work each rayon leaf should hold at least (default 10 µs): rayon
    /// never splits a batch into pieces predicted to be smaller.
    ///
    /// ```
    /// use std::time::Duration;
    /// let processor = torque_parallel::Processor::builder()
    ///     .grain_target(Duration::from_micros(20))
    ///     .build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn grain_target(mut self, grain: Duration) -> Self {
        self.config.grain_target = grain;
        self
    }

    /// Validates the settings and builds the processor.
    ///
    /// # Errors
    /// [`BuildError::Zero`] for a zero count or budget, [`BuildError::Duration`]
    /// for a threshold or grain outside 1 ns..=1 s, [`BuildError::OutOfRange`]
    /// for more than 65 536 blocking threads, [`BuildError::CpuPool`]
    /// when a dedicated rayon pool cannot start.
    pub fn build(self) -> Result<Processor, BuildError> {
        let c = self.config;
        let parallelism = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        for (name, v) in [
            ("cpu_threads", c.cpu_threads),
            ("blocking_threads", c.blocking_threads),
            ("queue_capacity", c.queue_capacity),
            ("async_limit", c.async_limit),
            ("hybrid_buffer", c.hybrid_buffer),
        ] {
            if v == Some(0) {
                return Err(BuildError::Zero(name));
            }
        }
        if let Some(n) = c.cpu_threads
            && n > rayon::max_num_threads()
        {
            // rayon would cap it silently, after spawning that many threads.
            return Err(BuildError::OutOfRange {
                name: "cpu_threads",
                value: n as f64,
                expected: "at most rayon::max_num_threads() (65535)",
            });
        }
        if let Some(n) = c.blocking_threads
            && n > MAX_BLOCKING_THREADS
        {
            return Err(BuildError::OutOfRange {
                name: "blocking_threads",
                value: n as f64,
                expected: "at most 65536",
            });
        }
        if c.memory_budget == Some(0) {
            return Err(BuildError::Zero("memory_budget"));
        }
        if c.item_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::Zero("item_timeout"));
        }
        for (name, value) in [
            ("parallel_threshold", c.parallel_threshold),
            ("grain_target", c.grain_target),
        ] {
            if value.is_zero() || value > Duration::from_secs(1) {
                return Err(BuildError::Duration { name, value });
            }
        }
        let pool = match c.cpu_threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("torque-cpu-{i}"))
                    .build()
                    .map_err(BuildError::CpuPool)?,
            ),
            None => None,
        };
        let blocking_threads = c.blocking_threads.unwrap_or(parallelism);
        let queue_capacity = c
            .queue_capacity
            .unwrap_or(blocking_threads.saturating_mul(2));
        Ok(Processor {
            inner: Arc::new(Inner {
                cpu: Cpu::new(pool, c.parallel_threshold, c.learn_dispatch, c.grain_target),
                blocking: OnceLock::new(),
                blocking_threads,
                queue_capacity,
                #[cfg(feature = "tokio")]
                io: crate::io::Shared::new(match c.async_limit {
                    Some(n) => Box::new(crate::limit::Fixed::new(n)),
                    None => Box::new(crate::limit::Adaptive::default()),
                }),
                config: c,
            }),
            cancel: None,
        })
    }
}

/// A snapshot of what a [`Processor`] has done. The CPU counters are updated
/// without read-modify-write atomics (they sit on the hot path of tiny
/// batches), so under concurrent calls they may undercount slightly.
///
/// With the `serde` feature it is `Serialize` (fields by their names,
/// durations as `{ secs, nanos }`), for a statistics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// `Cpu` calls run entirely on the calling thread (an empty batch
    /// among them). Each call counts once here or in `parallel_runs`
    /// (`map_weighted` too, whatever its number of waves).
    pub sequential_runs: u64,
    /// `Cpu` calls run (at least partly) on rayon.
    pub parallel_runs: u64,
    /// Threads of the `Cpu` strategy's pool.
    pub cpu_threads: usize,
    /// What a parallel run started from outside the pool has been measured
    /// to cost beyond its items' work (waking the workers, splitting,
    /// joining) when it came more than 50 µs after the last parallel run
    /// (rayon's workers asleep): zero until measured, or when the
    /// threshold was set with [`ProcessorBuilder::parallel_threshold`]. A
    /// `Cpu` call goes to rayon from about this times
    /// `cpu_threads / (cpu_threads - 1)` of predicted work, never under the
    /// configured threshold; a call right after a parallel run, from
    /// `cpu_warm_dispatch` times that when it is lower.
    pub cpu_dispatch: std::time::Duration,
    /// The same for parallel runs that came within 50 µs of the last one's
    /// end, while rayon's workers were still awake (in a tight loop, most
    /// of them): usually several times less than `cpu_dispatch`.
    pub cpu_warm_dispatch: std::time::Duration,
    /// Live threads of the `Blocking` strategy (0 until first used).
    pub blocking_threads: usize,
    /// Jobs waiting in the `Blocking` queue.
    pub blocking_queued: usize,
    /// Weight of the `Blocking` items queued or running.
    pub blocking_in_flight_weight: u64,
    /// The highest `blocking_in_flight_weight` seen.
    pub blocking_peak_in_flight_weight: u64,
    /// The `Async` and `Hybrid` strategies: items taken and how they
    /// ended (these add up, see [`IoStats`](crate::IoStats)), throughput,
    /// in flight, limit, queue depth, latency percentiles, rejections.
    #[cfg(feature = "tokio")]
    pub io: crate::io::IoStats,
}

impl Processor {
    /// A builder with the defaults: rayon's global pool, blocking threads
    /// and queue sized from `available_parallelism`, no memory budget.
    pub fn builder() -> ProcessorBuilder {
        ProcessorBuilder::default()
    }

    /// This processor with a cancel token: batches run through the returned
    /// handle stop when the token is cancelled. Shares pools and learned
    /// costs with `self`. The token replaces any token `self` had (handles
    /// hold one token, they do not combine): to stop on either of two
    /// tokens, cancel one from the other's owner.
    ///
    /// ```
    /// use torque_parallel::{CancelToken, Processor};
    ///
    /// let token = CancelToken::new();
    /// let processor = Processor::builder().build()?.with_cancel(token.clone());
    /// token.cancel();
    /// let out = processor.map(&[1, 2, 3], |x| x + 1);
    /// assert!(out.iter().all(|r| r.as_ref().is_err_and(|e| e.is_cancelled())));
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn with_cancel(&self, token: CancelToken) -> Processor {
        Processor {
            inner: Arc::clone(&self.inner),
            cancel: Some(token),
        }
    }

    /// The configuration this processor was built with.
    pub fn config(&self) -> &ProcessorConfig {
        &self.inner.config
    }

    /// `f` applied to every item, results in input order (`Cpu` strategy).
    ///
    /// Runs on the calling thread when the batch is predicted to be cheaper
    /// than a parallel dispatch, on rayon otherwise. A panicking item becomes
    /// `Err(ItemError::Panicked)`; with a cancelled token, items not yet run
    /// become `Err(ItemError::Cancelled)`. Safe to call from inside an item
    /// of another batch (rayon runs nested work on the same threads).
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor.map(&[1, 2, 3], |&x| if x == 2 { panic!("two") } else { x });
    /// assert_eq!(*out[0].as_ref().unwrap(), 1);
    /// assert!(out[1].as_ref().is_err_and(|e| e.is_panic()));
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn map<T, R, F>(&self, items: &[T], f: F) -> Vec<Result<R, ItemError>>
    where
        T: Sync,
        R: Send,
        F: Fn(&T) -> R + Sync,
    {
        let work = MapWork {
            f: |x: &T| Ok::<R, Infallible>(f(x)),
            cancel: self.cancel.as_ref(),
        };
        let mut out = Vec::with_capacity(items.len());
        self.inner
            .cpu
            .run(key_of::<T, R, F>(), items, &work, &mut out);
        out
    }

    /// Like [`map`](Processor::map) for a fallible `f`: an `Err(e)` becomes
    /// that item's `ItemError::Failed(e)`.
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor.try_map(&["1", "x"], |s| s.parse::<u32>());
    /// assert_eq!(*out[0].as_ref().unwrap(), 1);
    /// assert!(matches!(out[1], Err(torque_parallel::ItemError::Failed(_))));
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn try_map<T, R, E, F>(&self, items: &[T], f: F) -> Vec<Result<R, ItemError<E>>>
    where
        T: Sync,
        R: Send,
        E: Send,
        F: Fn(&T) -> Result<R, E> + Sync,
    {
        let work = MapWork {
            f: &f,
            cancel: self.cancel.as_ref(),
        };
        let mut out = Vec::with_capacity(items.len());
        self.inner
            .cpu
            .run(key_of::<T, Result<R, E>, F>(), items, &work, &mut out);
        out
    }

    /// `f` applied to every item, the values in input order in a plain
    /// `Vec<R>`, or an error if any item panicked or the batch was cancelled
    /// (`Cpu` strategy).
    ///
    /// The all-or-nothing form of [`map`](Processor::map), for when one
    /// failed item fails the batch: with no per-item `Result` in the output
    /// it runs close to `iter().map(f).collect()` and rayon's `collect`
    /// (within about 10 % in our runs; docs/benchmarks.md has the figures).
    /// Panics are still isolated per item: the batch goes on past a
    /// panicking item, every other item runs exactly once (side effects
    /// are never repeated), and [`CollectError::failures`] lists every
    /// panicking item by input index. With a cancelled token, the items not
    /// run are counted in [`CollectError::cancelled`].
    ///
    /// # Errors
    /// [`CollectError`] when at least one item panicked or did not run.
    ///
    /// ```
    /// use torque_parallel::ItemError;
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let squares: Vec<u64> = processor.collect(&[1u64, 2, 3], |x| x * x).unwrap();
    /// assert_eq!(squares, [1, 4, 9]);
    ///
    /// let err = processor
    ///     .collect(&[1u64, 2, 3, 4], |&x| if x % 2 == 0 { panic!("even {x}") } else { x })
    ///     .unwrap_err();
    /// assert_eq!(err.indices().collect::<Vec<_>>(), [1, 3]);
    /// assert!(matches!(&err.failures[0].1, ItemError::Panicked(p) if p.message() == "even 2"));
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    #[inline]
    pub fn collect<T, R, F>(&self, items: &[T], f: F) -> Result<Vec<R>, CollectError>
    where
        T: Sync,
        R: Send,
        F: Fn(&T) -> R + Sync,
    {
        let work = CollectWork {
            body: Plain(&f),
            cancel: self.cancel.as_ref(),
        };
        let (cpu, key) = (&self.inner.cpu, key_of::<T, R, F>());
        if self.cancel.is_none() && cpu.untimed(key, items.len()) {
            return work.run_untimed(items);
        }
        self.collect_general(key, items, &work)
    }

    /// Like [`collect`](Processor::collect) for a fallible `f`: the values
    /// if every item returned `Ok`, otherwise every `Err(e)` as that item's
    /// `ItemError::Failed(e)` (and every panic) in
    /// [`CollectError::failures`]. The batch does not stop at the first
    /// error; cancel it through [`with_cancel`](Processor::with_cancel) to
    /// stop early.
    ///
    /// # Errors
    /// [`CollectError`] when at least one item returned `Err`, panicked or
    /// did not run.
    ///
    /// ```
    /// use torque_parallel::ItemError;
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let ok = processor.try_collect(&["1", "2"], |s| s.parse::<u32>());
    /// assert_eq!(ok.unwrap(), [1, 2]);
    ///
    /// let err = processor.try_collect(&["1", "x", "3"], |s| s.parse::<u32>()).unwrap_err();
    /// assert!(matches!(err.failures[..], [(1, ItemError::Failed(_))]));
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    #[inline]
    pub fn try_collect<T, R, E, F>(&self, items: &[T], f: F) -> Result<Vec<R>, CollectError<E>>
    where
        T: Sync,
        R: Send,
        E: Send,
        F: Fn(&T) -> Result<R, E> + Sync,
    {
        let work = CollectWork {
            body: Fallible(&f),
            cancel: self.cancel.as_ref(),
        };
        let (cpu, key) = (&self.inner.cpu, key_of::<T, Result<R, E>, F>());
        if self.cancel.is_none() && cpu.untimed(key, items.len()) {
            return work.run_untimed(items);
        }
        self.collect_general(key, items, &work)
    }

    /// `collect` and `try_collect` past their inlined fast path: the
    /// general cutoff (timed prefix, rayon, sampling, a token).
    #[inline(never)]
    fn collect_general<T, B>(
        &self,
        key: usize,
        items: &[T],
        work: &CollectWork<'_, B>,
    ) -> Result<Vec<B::Out>, CollectError<B::Err>>
    where
        T: Sync,
        B: Body<T>,
    {
        let mut acc = Collected::with_capacity(items.len());
        self.inner.cpu.run(key, items, work, &mut acc);
        acc.finish()
    }

    /// Maps every item and reduces the results with an associative `op`
    /// whose neutral element `identity` returns, without collecting them:
    /// the form for sums, minima and histograms.
    ///
    /// # Panics
    /// A panic of `identity` or `op` propagates to the caller (the running
    /// value is gone with it); only `map`'s panics are isolated per item.
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let items: Vec<u64> = (1..=100).collect();
    /// let sum = processor.map_reduce(&items, |&x| x, || 0, |a, b| a + b);
    /// assert_eq!(sum.value, 5050);
    /// assert!(sum.is_complete());
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn map_reduce<T, R, M, I, O>(&self, items: &[T], map: M, identity: I, op: O) -> Summary<R>
    where
        T: Sync,
        R: Send,
        M: Fn(&T) -> R + Sync,
        I: Fn() -> R + Sync,
        O: Fn(R, R) -> R + Sync,
    {
        let work = ReduceWork {
            map: |x: &T| Ok::<R, Infallible>(map(x)),
            identity,
            op,
            cancel: self.cancel.as_ref(),
        };
        let (cpu, key) = (&self.inner.cpu, key_of::<T, R, M>());
        if self.cancel.is_none() && cpu.untimed(key, items.len()) {
            return work.run_untimed(items).into_summary();
        }
        let mut acc = None;
        cpu.run(key, items, &work, &mut acc);
        acc.unwrap_or_else(|| work.empty()).into_summary()
    }

    /// Runs `f` on every item for its effect.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let total = AtomicU64::new(0);
    /// let summary = processor.for_each(&[1, 2, 3], |&x| {
    ///     total.fetch_add(x, Ordering::Relaxed);
    /// });
    /// assert!(summary.is_complete());
    /// assert_eq!(total.into_inner(), 6);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn for_each<T, F>(&self, items: &[T], f: F) -> Summary<()>
    where
        T: Sync,
        F: Fn(&T) + Sync,
    {
        self.map_reduce(items, f, || (), |(), ()| ())
    }

    /// [`map`](Processor::map) under the memory budget: the batch runs in
    /// consecutive waves whose items weigh at most the budget together (an
    /// item heavier than the budget is a wave of its own), so the memory the
    /// items need while they run stays bounded. Without a budget it is `map`
    /// (and `weigh` is not called). A panic of `weigh` is that item's
    /// `ItemError::Panicked`; the item is not run. Once the batch is
    /// cancelled, the items not yet weighed are not weighed: they are
    /// `ItemError::Cancelled`.
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().memory_budget(100).build()?;
    /// let blobs = vec![vec![0u8; 60], vec![1u8; 60], vec![2u8; 10]];
    /// let sums = processor.map_weighted(&blobs, |b| b.len() as u64, |b| b.iter().map(|&x| x as u64).sum::<u64>());
    /// assert_eq!(*sums[1].as_ref().unwrap(), 60);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn map_weighted<T, R, W, F>(&self, items: &[T], weigh: W, f: F) -> Vec<Result<R, ItemError>>
    where
        T: Sync,
        R: Send,
        W: Fn(&T) -> u64,
        F: Fn(&T) -> R + Sync,
    {
        let Some(budget) = self.inner.config.memory_budget else {
            return self.map(items, f);
        };
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        // One call in the stats, parallel if any wave was.
        let mut ran = Ran::Sequential;
        // The weight of the item that ended the last wave and starts the
        // next: each item is weighed once.
        let mut carried = None;
        while start < items.len() {
            let mut end = start;
            let mut weight = 0u64;
            // The weigher's panic on `items[end]`, which ends the wave: it
            // is that item's result (the item is not run), after the wave's.
            let mut panicked = None;
            while end < items.len() {
                if self.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                    // Nothing more will run: the rest is one wave that
                    // only marks its items cancelled, with no weigher call
                    // (user code, for nothing; its panic would have been
                    // the item's result instead of `Cancelled`).
                    end = items.len();
                    break;
                }
                let w = match carried.take() {
                    Some(w) => w,
                    None => match catch_unwind(AssertUnwindSafe(|| weigh(&items[end]))) {
                        Ok(w) => w,
                        Err(payload) => {
                            panicked = Some(PanicError::from_box(payload));
                            break;
                        }
                    },
                };
                // Checked, not saturating: a sum past `u64::MAX` is past
                // any budget, `u64::MAX` included.
                let sum = weight.checked_add(w);
                if end > start && sum.is_none_or(|sum| sum > budget) {
                    carried = Some(w);
                    break;
                }
                weight = sum.unwrap_or(u64::MAX);
                end += 1;
            }
            if end > start {
                let work = MapWork {
                    f: |x: &T| Ok::<R, Infallible>(f(x)),
                    cancel: self.cancel.as_ref(),
                };
                let wave = self.inner.cpu.run_uncounted(
                    key_of::<T, R, F>(),
                    &items[start..end],
                    &work,
                    &mut out,
                );
                if wave == Ran::Parallel {
                    ran = Ran::Parallel;
                }
            }
            if let Some(panic) = panicked {
                out.push(Err(ItemError::Panicked(panic)));
                end += 1;
            }
            start = end;
        }
        self.inner.cpu.count(ran);
        out
    }

    /// The per-item cost learned for the closure `f` with items `T`, as used
    /// for the sequential cutoff (`None` before the first call).
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().build()?;
    /// let f = |x: &u64| x.wrapping_mul(3);
    /// processor.map(&[1u64, 2, 3], f);
    /// assert!(processor.learned_cost(&f).is_some());
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn learned_cost<T, R, F: Fn(&T) -> R>(&self, _f: &F) -> Option<Duration> {
        self.inner.cpu.learned_cost(key_of::<T, R, F>())
    }

    /// The `Blocking` strategy: bounded dedicated threads (started on first
    /// use) fed through a bounded queue.
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().blocking_threads(2).build()?;
    /// let lens = processor.blocking().map(vec!["a".to_string(), "bcd".to_string()], |s| s.len());
    /// assert_eq!(*lens[1].as_ref().unwrap(), 3);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn blocking(&self) -> Blocking<'_> {
        Blocking { processor: self }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let cpu = &self.inner.cpu;
        let pool = self
            .inner
            .blocking
            .get()
            .and_then(|p| p.as_ref().ok())
            .map(BlockingPool::status)
            .unwrap_or_default();
        Stats {
            sequential_runs: cpu.counters.sequential.load(Relaxed),
            parallel_runs: cpu.counters.parallel.load(Relaxed),
            cpu_threads: cpu.threads(),
            cpu_dispatch: cpu.dispatch(),
            cpu_warm_dispatch: cpu.warm_dispatch(),
            blocking_threads: pool.threads,
            blocking_queued: pool.queued,
            blocking_in_flight_weight: pool.in_flight_weight,
            blocking_peak_in_flight_weight: pool.peak_in_flight_weight,
            #[cfg(feature = "tokio")]
            io: self.inner.io.stats(),
        }
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn io(&self) -> &crate::io::Shared {
        &self.inner.io
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn cancel_token(&self) -> Option<&CancelToken> {
        self.cancel.as_ref()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn cpu(&self) -> &Cpu {
        &self.inner.cpu
    }

    fn pool(&self) -> Option<&BlockingPool> {
        let inner = &self.inner;
        inner
            .blocking
            .get_or_init(|| {
                BlockingPool::new(
                    inner.blocking_threads,
                    inner.queue_capacity,
                    inner.config.memory_budget.unwrap_or(u64::MAX),
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .ok()
    }
}

/// The `Blocking` strategy of a [`Processor`], from [`Processor::blocking`].
///
/// Items are owned and `'static` because they cross to long-lived threads.
/// A batch submitted from inside a blocking job runs inline on that job's
/// thread (waiting for room from a worker could wait forever), and so does
/// what is left of a `map_async` future awaited there, even one first
/// polled elsewhere. If the threads cannot be started, every item comes
/// back `ItemError::Cancelled`.
///
/// Called on a rayon thread (in a `Cpu` item), `map` and its siblings
/// never wait for room nor for a blocking thread to take a job: they
/// submit every item at once (queued, or in the wait line), then the
/// calling thread runs the batch's jobs that no blocking thread has
/// started itself, so that it waits only for jobs that blocking threads
/// have started; it runs no other rayon work meanwhile (not the item's
/// siblings). So does a `map_async` future polled there (a `block_on` in
/// a `Cpu` item), which is pending only for such jobs, and takes back the
/// jobs that polls elsewhere left waiting. `Cpu` batches started in the
/// jobs of such a batch run on the job's own thread, not on rayon, whose
/// threads may all be waiting so.
///
/// A panic is caught wherever user code runs on the pool's behalf: an
/// item's (its result is `ItemError::Panicked`), the `Drop` of an item that
/// was not run because the batch was cancelled (that item's result is the
/// drop's panic instead of `Cancelled`), and the `Drop` of the closure when
/// a worker holds its last handle (a dropped `map_async` future's): the
/// worker lives on and the item's weight is given back either way.
#[derive(Debug, Clone, Copy)]
pub struct Blocking<'a> {
    processor: &'a Processor,
}

impl Blocking<'_> {
    /// `f` applied to every item on the blocking threads, results in input
    /// order; the calling thread blocks while it waits for room and results.
    /// Under a memory budget each item weighs 1.
    pub fn map<T, R, F>(&self, items: Vec<T>, f: F) -> Vec<Result<R, ItemError>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        self.map_weighted(items, |_| 1, f)
    }

    /// Like [`map`](Blocking::map) for a fallible `f`.
    pub fn try_map<T, R, E, F>(&self, items: Vec<T>, f: F) -> Vec<Result<R, ItemError<E>>>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
        F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    {
        self.run(items, |_| 1, f)
    }

    /// [`map`](Blocking::map) with a weight per item: the items queued or
    /// running never weigh more than the memory budget together (an item
    /// heavier than the budget runs alone). Items are admitted in arrival
    /// order across all batches on the pool: an item that finds no room
    /// holds back later arrivals, even ones that would fit, until it is in.
    /// A panic of `weigh` is that item's `ItemError::Panicked`; the item is
    /// dropped, not run.
    pub fn map_weighted<T, R, W, F>(
        &self,
        items: Vec<T>,
        weigh: W,
        f: F,
    ) -> Vec<Result<R, ItemError>>
    where
        T: Send + 'static,
        R: Send + 'static,
        W: Fn(&T) -> u64,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        self.run(items, weigh, move |x| Ok::<R, Infallible>(f(x)))
    }

    fn run<T, R, E, W, F>(&self, items: Vec<T>, weigh: W, f: F) -> Vec<Result<R, ItemError<E>>>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
        W: Fn(&T) -> u64,
        F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    {
        match self.processor.pool() {
            Some(pool) => pool.run(items, weigh, f, self.processor.cancel.as_ref()),
            None => items.iter().map(|_| Err(ItemError::Cancelled)).collect(),
        }
    }

    /// The async form of [`map`](Blocking::map): a future that submits items
    /// as room frees up and resolves to the results in input order, without
    /// blocking the runtime's thread. Dropping it cancels the batch.
    ///
    /// ```
    /// # let processor = torque_parallel::Processor::builder().blocking_threads(2).build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let out = processor.blocking().map_async(vec![1, 2, 3], |x| x * 10).await;
    /// assert_eq!(*out[2].as_ref().unwrap(), 30);
    /// # });
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    #[expect(
        clippy::type_complexity,
        reason = "the closure type is unnameable; an alias would hide the bounds users need"
    )]
    pub fn map_async<T, R, F>(
        &self,
        items: Vec<T>,
        f: F,
    ) -> BlockingMap<
        T,
        R,
        Infallible,
        impl Fn(T) -> Result<R, Infallible> + Send + Sync + 'static,
        fn(&T) -> u64,
    >
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        self.try_map_async(items, move |x| Ok::<R, Infallible>(f(x)))
    }

    /// The async form of [`try_map`](Blocking::try_map).
    pub fn try_map_async<T, R, E, F>(&self, items: Vec<T>, f: F) -> BlockingMap<T, R, E, F>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
        F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    {
        let weigh: fn(&T) -> u64 = |_| 1;
        self.map_weighted_async(items, weigh, f)
    }

    /// The async form of a weighted `try_map`: in-flight weight stays within
    /// the memory budget.
    pub fn map_weighted_async<T, R, E, W, F>(
        &self,
        items: Vec<T>,
        weigh: W,
        f: F,
    ) -> BlockingMap<T, R, E, F, W>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
        W: Fn(&T) -> u64,
        F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    {
        // With no pool, a pool-less future resolves every item as cancelled.
        let pool = self.processor.pool();
        let cancel = self.processor.cancel.clone();
        match pool {
            Some(pool) => BlockingMap::new(pool, items, weigh, f, cancel),
            None => BlockingMap::cancelled(items, weigh, f),
        }
    }
}
