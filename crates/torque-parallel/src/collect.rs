//! `collect` / `try_collect`: all-or-nothing results in a plain `Vec<R>`.
//!
//! `map` gives every item a `Result<R, ItemError>`, which for small `R`
//! doubles the output and gives it drop glue (3–6× a `Vec<u64>`). Most
//! callers want the values or one error, so the happy path here is what a
//! plain loop or rayon would run, and panic isolation costs only on the path
//! where something failed:
//!
//! - **Sequential**: one `catch_unwind` around `out.extend(items.map(f))`.
//!   `Vec::extend` of a `TrustedLen` iterator keeps its length in step with
//!   the elements written, so after a panic `out.len()` is the panicking
//!   item's position; the run then *resumes after it* item by item (each
//!   with its own `catch_unwind`), recording failures and dropping values.
//!   No item runs twice, so side effects are not repeated
//!   (`tests/collect.rs` pins both the index and the run counts).
//! - **Parallel**: rayon's `par_extend` of an indexed iterator writes
//!   straight into the vector's spare capacity, split into pieces (the
//!   `collect_into_vec` path). Our producer knows each leaf's range; an item
//!   that panics or fails records (index, error, the leaf's unrun rest) and
//!   unwinds out of its leaf with a private marker. rayon runs both halves
//!   of every `join` even when one panics, so every other leaf completes;
//!   the unrun rests are then run (on rayon too), again without repeating
//!   anything.
//!
//! Once an item has failed the batch can only return `Err`, so the values
//! already produced are dropped and later ones are not kept.

use std::convert::Infallible;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use parking_lot::Mutex;
use rayon::iter::plumbing::{
    Consumer, Folder, Producer, ProducerCallback, UnindexedConsumer, bridge,
};
use rayon::prelude::*;

use crate::cancel::CancelToken;
use crate::cpu::{LeafClock, Probe, Work, run_item};
use crate::outcome::{CollectError, ItemError, PanicError, drop_caught};

/// The item closure of a collection: plain (`collect`) or fallible
/// (`try_collect`).
pub(crate) trait Body<T>: Sync {
    type Out: Send;
    type Err: Send;

    fn call(&self, x: &T) -> Result<Self::Out, Self::Err>;

    /// Appends the items' values to `out` in order; stops at the first
    /// error and returns its position. A panic unwinds with `out` holding
    /// exactly the values of the items before the panicking one.
    fn extend(&self, items: &[T], out: &mut Vec<Self::Out>) -> Option<(usize, Self::Err)>;
}

/// `collect`'s closure.
pub(crate) struct Plain<F>(pub(crate) F);

impl<T, R, F> Body<T> for Plain<F>
where
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    type Out = R;
    type Err = Infallible;

    #[inline(always)]
    fn call(&self, x: &T) -> Result<R, Infallible> {
        Ok((self.0)(x))
    }

    #[inline(always)]
    fn extend(&self, items: &[T], out: &mut Vec<R>) -> Option<(usize, Infallible)> {
        // The same code as `items.iter().map(f).collect()`: one reserve, a
        // loop writing in place (no capacity check per item).
        out.extend(items.iter().map(&self.0));
        None
    }
}

/// `try_collect`'s closure.
pub(crate) struct Fallible<F>(pub(crate) F);

impl<T, R, E, F> Body<T> for Fallible<F>
where
    R: Send,
    E: Send,
    F: Fn(&T) -> Result<R, E> + Sync,
{
    type Out = R;
    type Err = E;

    #[inline(always)]
    fn call(&self, x: &T) -> Result<R, E> {
        (self.0)(x)
    }

    #[inline(always)]
    fn extend(&self, items: &[T], out: &mut Vec<R>) -> Option<(usize, E)> {
        for (k, x) in items.iter().enumerate() {
            match (self.0)(x) {
                Ok(v) => out.push(v),
                Err(e) => return Some((k, e)),
            }
        }
        None
    }
}

/// What a collection has gathered so far (the `Work` accumulator).
pub(crate) struct Collected<R, E> {
    out: Vec<R>,
    failures: Vec<(usize, ItemError<E>)>,
    cancelled: usize,
    /// Input index of the next item handed to `seq` or `par`.
    next: usize,
}

impl<R, E> Collected<R, E> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Collected {
            out: Vec::with_capacity(n),
            failures: Vec::new(),
            cancelled: 0,
            next: 0,
        }
    }

    #[inline]
    fn failed(&self) -> bool {
        !self.failures.is_empty() || self.cancelled > 0
    }

    /// Records the first failure: from here on the batch is an `Err`.
    #[cold]
    fn fail(&mut self, at: usize, error: ItemError<E>) {
        self.discard();
        self.record(at, error);
    }

    /// Drops the values kept so far (the batch can only fail now), each
    /// under `catch_unwind`: a value's panicking `Drop` must not escape the
    /// batch (its remaining items still run); it becomes that item's
    /// failure. `out[i]` is item `i`'s value: values are only kept while
    /// nothing has failed, from the first item on.
    #[cold]
    fn discard(&mut self) {
        for (i, value) in std::mem::take(&mut self.out).into_iter().enumerate() {
            if let Err(panic) = drop_caught(value) {
                self.failures.push((i, ItemError::Panicked(panic)));
            }
        }
    }

    fn record(&mut self, at: usize, error: ItemError<E>) {
        match error {
            ItemError::Cancelled => self.cancelled += 1,
            e => self.failures.push((at, e)),
        }
    }

    pub(crate) fn finish(mut self) -> Result<Vec<R>, CollectError<E>> {
        if !self.failed() {
            return Ok(self.out);
        }
        self.failures.sort_unstable_by_key(|&(i, _)| i);
        Err(CollectError {
            failures: self.failures,
            cancelled: self.cancelled,
        })
    }
}

pub(crate) struct CollectWork<'a, B> {
    pub(crate) body: B,
    pub(crate) cancel: Option<&'a CancelToken>,
}

impl<B> CollectWork<'_, B> {
    /// The whole batch as one plain loop into a `Vec` with its capacity
    /// (no token: the caller checked), for a batch the learned cost says is
    /// tiny ([`Cpu::untimed`](crate::cpu::Cpu::untimed)). The happy path is
    /// exactly `iter().map(f).collect()` plus one `catch_unwind`; the
    /// accumulator of the general path is only built after a failure.
    #[inline(always)]
    pub(crate) fn run_untimed<T>(&self, items: &[T]) -> Result<Vec<B::Out>, CollectError<B::Err>>
    where
        T: Sync,
        B: Body<T>,
    {
        let mut out = Vec::with_capacity(items.len());
        let (k, error) = match catch_unwind(AssertUnwindSafe(|| self.body.extend(items, &mut out)))
        {
            Ok(None) => return Ok(out),
            Ok(Some((k, e))) => (k, ItemError::Failed(e)),
            Err(payload) => (
                out.len(),
                ItemError::Panicked(PanicError::from_box(payload)),
            ),
        };
        self.resume_after(items, out, k, error)
    }

    /// The rest of `run_untimed` after item `k` failed: the values made
    /// before it (`out`) are dropped, the other items run, once each, for
    /// their failures only.
    #[cold]
    #[inline(never)]
    fn resume_after<T>(
        &self,
        items: &[T],
        out: Vec<B::Out>,
        k: usize,
        error: ItemError<B::Err>,
    ) -> Result<Vec<B::Out>, CollectError<B::Err>>
    where
        B: Body<T>,
    {
        let mut acc = Collected::with_capacity(0);
        acc.out = out;
        acc.next = items.len();
        acc.fail(k, error);
        self.tally(&items[k + 1..], k + 1, &mut acc);
        acc.finish()
    }

    /// Runs `items` (input indices from `base`) one by one, each isolated,
    /// keeping only their failures: the path after a first failure.
    #[cold]
    fn tally<T>(&self, items: &[T], base: usize, acc: &mut Collected<B::Out, B::Err>)
    where
        B: Body<T>,
    {
        let f = |x: &T| self.body.call(x);
        for (k, x) in items.iter().enumerate() {
            match run_item(&f, x, self.cancel).and_then(drop_value) {
                Ok(()) => {}
                // The token stays cancelled: the rest are counted without
                // a look each (over a huge input, a look per item took
                // minutes after the cancel).
                Err(ItemError::Cancelled) => {
                    acc.cancelled += items.len() - k;
                    return;
                }
                Err(e) => acc.record(base + k, e),
            }
        }
    }

    /// `extend` checking the token before every item.
    fn extend_cancellable<T>(
        &self,
        items: &[T],
        out: &mut Vec<B::Out>,
        token: &CancelToken,
    ) -> Option<(usize, ItemError<B::Err>)>
    where
        B: Body<T>,
    {
        for (k, x) in items.iter().enumerate() {
            if token.is_cancelled() {
                return Some((k, ItemError::Cancelled));
            }
            match self.body.call(x) {
                Ok(v) => out.push(v),
                Err(e) => return Some((k, ItemError::Failed(e))),
            }
        }
        None
    }
}

impl<T, B> Work<T> for CollectWork<'_, B>
where
    T: Sync,
    B: Body<T>,
{
    type Acc = Collected<B::Out, B::Err>;

    #[inline]
    fn seq(&self, items: &[T], acc: &mut Self::Acc) {
        let base = acc.next;
        acc.next += items.len();
        if acc.failed() {
            return self.tally(items, base, acc);
        }
        let start = acc.out.len();
        let out = &mut acc.out;
        let run = match self.cancel {
            None => catch_unwind(AssertUnwindSafe(|| {
                self.body
                    .extend(items, out)
                    .map(|(k, e)| (k, ItemError::Failed(e)))
            })),
            Some(token) => catch_unwind(AssertUnwindSafe(|| {
                self.extend_cancellable(items, out, token)
            })),
        };
        let (k, error) = match run {
            Ok(None) => return,
            Ok(Some(stop)) => stop,
            Err(payload) => (
                acc.out.len() - start,
                ItemError::Panicked(PanicError::from_box(payload)),
            ),
        };
        if matches!(error, ItemError::Cancelled) {
            // The token stays cancelled: nothing after it runs either.
            acc.discard();
            acc.cancelled += items.len() - k;
            return;
        }
        acc.fail(base + k, error);
        self.tally(&items[k + 1..], base + k + 1, acc);
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }

    fn par(&self, items: &[T], grain: usize, probe: &Probe, acc: &mut Self::Acc) {
        let base = acc.next;
        acc.next += items.len();
        if acc.failed() {
            return self.par_tally(items, base, grain, acc);
        }
        let stops = Mutex::new(Vec::new());
        let shared = Shared {
            body: &self.body,
            cancel: self.cancel,
            probe: (!probe.sparse()).then_some(probe),
            grain,
            stops: &stops,
        };
        let run = catch_unwind(AssertUnwindSafe(|| {
            acc.out.par_extend(Isolated {
                items,
                offset: 0,
                shared: &shared,
            });
        }));
        if let Err(payload) = run
            && !payload.is::<LeafStopped>()
        {
            // Not an item's panic (those were caught and recorded): ours.
            resume_unwind(payload);
        }
        let stops = stops.into_inner();
        if stops.is_empty() {
            return;
        }
        // A failed run's wall time holds the failures' cost (a panic's
        // unwinding, microseconds) and the tally of the rest: no evidence
        // of what a dispatch costs.
        probe.set_aside();
        acc.discard();
        let mut rests = Vec::new();
        for stop in stops {
            match stop.error {
                ItemError::Cancelled => acc.cancelled += 1 + stop.rest.len(),
                error => {
                    acc.record(base + stop.at, error);
                    rests.push(stop.rest);
                }
            }
        }
        // The stopped leaves' unrun rests, on rayon like the batch: a leaf
        // of a big batch holds about n / (2 × threads) items, so running
        // them one after another would make a batch with an early failure
        // in each leaf nearly sequential.
        let (failures, cancelled) = rests
            .par_iter()
            .map(|rest| self.tally_on_rayon(&items[rest.clone()], base + rest.start, grain))
            .reduce(|| (Vec::new(), 0), merge_tallies);
        acc.failures.extend(failures);
        acc.cancelled += cancelled;
    }
}

impl<B> CollectWork<'_, B> {
    /// The parallel form of `tally`, for a batch that failed in its timed
    /// prefix and whose rest is still worth running in parallel.
    #[cold]
    fn par_tally<T: Sync>(
        &self,
        items: &[T],
        base: usize,
        grain: usize,
        acc: &mut Collected<B::Out, B::Err>,
    ) where
        B: Body<T>,
    {
        let (failures, cancelled) = self.tally_on_rayon(items, base, grain);
        acc.failures.extend(failures);
        acc.cancelled += cancelled;
    }

    /// `tally` on rayon: the failures (by input index, from `base`) and
    /// the number of items cancelled.
    fn tally_on_rayon<T: Sync>(&self, items: &[T], base: usize, grain: usize) -> Tally<B::Err>
    where
        B: Body<T>,
    {
        let f = |x: &T| self.body.call(x);
        items
            .par_iter()
            .enumerate()
            .with_min_len(grain)
            .fold(
                || (Vec::new(), 0usize),
                |(mut failures, mut cancelled), (k, x)| {
                    match run_item(&f, x, self.cancel).and_then(drop_value) {
                        Ok(()) => {}
                        Err(ItemError::Cancelled) => cancelled += 1,
                        Err(e) => failures.push((base + k, e)),
                    }
                    (failures, cancelled)
                },
            )
            .reduce(|| (Vec::new(), 0), merge_tallies)
    }
}

/// The failures (input index, error) and the number of items cancelled of
/// a stretch run after a failure.
type Tally<E> = (Vec<(usize, ItemError<E>)>, usize);

/// Adds two tallies.
fn merge_tallies<E>((mut a, m): Tally<E>, (b, n): Tally<E>) -> Tally<E> {
    a.extend(b);
    (a, m + n)
}

/// Drops the value of an item of a failed batch; its `Drop`'s panic is
/// that item's failure.
#[cold]
fn drop_value<R, E>(value: R) -> Result<(), ItemError<E>> {
    drop_caught(value).map_err(ItemError::Panicked)
}

/// The unwinding payload that takes a leaf out of rayon after one of its
/// items failed (the failure itself is in `Shared::stops`). Raised with
/// `resume_unwind`, so the panic hook does not print it.
struct LeafStopped;

/// An item that stopped its leaf, and the leaf's items that did not run.
struct Stop<E> {
    at: usize,
    rest: Range<usize>,
    error: ItemError<E>,
}

/// What every leaf of a parallel collection shares.
struct Shared<'a, B, E> {
    body: &'a B,
    cancel: Option<&'a CancelToken>,
    /// Per-item cost probe, for items expensive enough to time in leaves.
    probe: Option<&'a Probe>,
    grain: usize,
    stops: &'a Mutex<Vec<Stop<E>>>,
}

/// The items as a rayon indexed parallel iterator and producer: a slice
/// with its offset in the parallel run, so a leaf knows its range.
struct Isolated<'a, T, B: Body<T>> {
    items: &'a [T],
    offset: usize,
    shared: &'a Shared<'a, B, B::Err>,
}

impl<'a, T: Sync, B: Body<T>> ParallelIterator for Isolated<'a, T, B> {
    type Item = B::Out;

    fn drive_unindexed<C: UnindexedConsumer<B::Out>>(self, consumer: C) -> C::Result {
        bridge(self, consumer)
    }

    fn opt_len(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

impl<'a, T: Sync, B: Body<T>> IndexedParallelIterator for Isolated<'a, T, B> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn drive<C: Consumer<B::Out>>(self, consumer: C) -> C::Result {
        bridge(self, consumer)
    }

    fn with_producer<CB: ProducerCallback<B::Out>>(self, callback: CB) -> CB::Output {
        callback.callback(self)
    }
}

impl<'a, T: Sync, B: Body<T>> Producer for Isolated<'a, T, B> {
    type Item = B::Out;
    type IntoIter = Leaf<'a, T, B>;

    fn into_iter(self) -> Leaf<'a, T, B> {
        Leaf {
            iter: self.items.iter(),
            front: self.offset,
            clock: LeafClock::default(),
            shared: self.shared,
        }
    }

    fn min_len(&self) -> usize {
        self.shared.grain
    }

    /// rayon drives a leaf through this, from the front. The loop is
    /// rayon's own `map` plus an index; the probe and the token are checked
    /// only when present (a separate loop, so the common one carries no
    /// per-item branch for them). The `Leaf` iterator form would keep its
    /// position in memory for its cold path, several instructions per item.
    fn fold_with<G: Folder<B::Out>>(self, folder: G) -> G {
        let shared = self.shared;
        let (offset, end) = (self.offset, self.offset + self.items.len());
        let run =
            move |at: usize, x: &T| match catch_unwind(AssertUnwindSafe(|| shared.body.call(x))) {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => stop(shared, at, end, ItemError::Failed(e)),
                Err(payload) => stop(
                    shared,
                    at,
                    end,
                    ItemError::Panicked(PanicError::from_box(payload)),
                ),
            };
        let items = self.items.iter().enumerate();
        if shared.probe.is_none() && shared.cancel.is_none() {
            return folder.consume_iter(items.map(move |(k, x)| run(offset + k, x)));
        }
        let mut clock = LeafClock::default();
        let clock_ref = &mut clock;
        let folder = folder.consume_iter(items.map(move |(k, x)| {
            let at = offset + k;
            if let Some(probe) = shared.probe {
                probe.tick(clock_ref, at);
            }
            if let Some(token) = shared.cancel
                && token.is_cancelled()
            {
                stop(shared, at, end, ItemError::Cancelled);
            }
            run(at, x)
        }));
        // Every item ran (a stop unwinds past this): time the last stretch.
        if let Some(probe) = shared.probe
            && end > offset
        {
            probe.finish(&clock, end - 1);
        }
        folder
    }

    fn split_at(self, index: usize) -> (Self, Self) {
        let (left, right) = self.items.split_at(index);
        (
            Isolated {
                items: left,
                offset: self.offset,
                shared: self.shared,
            },
            Isolated {
                items: right,
                offset: self.offset + index,
                shared: self.shared,
            },
        )
    }
}

/// Records that item `at` of a leaf run from the front up to `end` stopped
/// it, then unwinds out of rayon's leaf.
#[cold]
#[inline(never)]
fn stop<B, E>(shared: &Shared<'_, B, E>, at: usize, end: usize, error: ItemError<E>) -> ! {
    shared.stops.lock().push(Stop {
        at,
        rest: at + 1..end,
        error,
    });
    resume_unwind(Box::new(LeafStopped))
}

/// One rayon leaf: runs its items, each isolated.
struct Leaf<'a, T, B: Body<T>> {
    iter: std::slice::Iter<'a, T>,
    /// Index (in the parallel run) of the next item from the front.
    front: usize,
    clock: LeafClock,
    shared: &'a Shared<'a, B, B::Err>,
}

impl<T, B: Body<T>> Leaf<'_, T, B> {
    /// Runs item `x` at index `at`, or stops the leaf.
    #[inline(always)]
    fn run(&mut self, x: &T, at: usize) -> B::Out {
        let shared = self.shared;
        if let Some(probe) = shared.probe {
            probe.tick(&mut self.clock, at);
        }
        if let Some(token) = shared.cancel
            && token.is_cancelled()
        {
            self.stop(at, ItemError::Cancelled);
        }
        match catch_unwind(AssertUnwindSafe(|| shared.body.call(x))) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => self.stop(at, ItemError::Failed(e)),
            Err(payload) => self.stop(at, ItemError::Panicked(PanicError::from_box(payload))),
        }
    }

    /// Records why item `at` stopped the leaf and which of its items did
    /// not run, then unwinds out of rayon's leaf.
    #[cold]
    #[inline(never)]
    fn stop(&mut self, at: usize, error: ItemError<B::Err>) -> ! {
        // The unrun items are the rest of the slice iterator, contiguous:
        // after `at` when it was taken from the front, before it when it
        // was taken from the back.
        let left = self.iter.len();
        let rest = if at < self.front {
            at + 1..at + 1 + left
        } else {
            at - left..at
        };
        self.shared.stops.lock().push(Stop { at, rest, error });
        resume_unwind(Box::new(LeafStopped))
    }
}

impl<T, B: Body<T>> Iterator for Leaf<'_, T, B> {
    type Item = B::Out;

    #[inline]
    fn next(&mut self) -> Option<B::Out> {
        let x = self.iter.next()?;
        let at = self.front;
        self.front += 1;
        Some(self.run(x, at))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
}

impl<T, B: Body<T>> DoubleEndedIterator for Leaf<'_, T, B> {
    fn next_back(&mut self) -> Option<B::Out> {
        let x = self.iter.next_back()?;
        let at = self.front + self.iter.len();
        Some(self.run(x, at))
    }
}

impl<T, B: Body<T>> ExactSizeIterator for Leaf<'_, T, B> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared<'a, B: Body<u32>>(
        body: &'a B,
        stops: &'a Mutex<Vec<Stop<B::Err>>>,
        grain: usize,
    ) -> Shared<'a, B, B::Err> {
        Shared {
            body,
            cancel: None,
            probe: None,
            grain,
            stops,
        }
    }

    /// rayon drives our leaves through `fold_with`; adapters such as `rev`
    /// go through the `Leaf` iterator instead, from either end.
    #[test]
    fn the_leaf_iterator_records_the_unrun_rest_from_either_end() {
        let items: Vec<u32> = (0..10).collect();
        let body = Plain(|&x: &u32| if x == 6 { panic!("six") } else { x });
        let stops = Mutex::new(Vec::new());
        let shared = shared(&body, &stops, items.len());
        let one_leaf = || Isolated {
            items: &items,
            offset: 0,
            shared: &shared,
        };

        // From the back: 9, 8, 7 ran, 6 panicked, 0..6 did not run.
        let run = catch_unwind(AssertUnwindSafe(|| one_leaf().rev().collect::<Vec<u32>>()));
        assert!(run.unwrap_err().is::<LeafStopped>());
        let stop = stops.lock().pop().expect("a stop");
        assert_eq!((stop.at, stop.rest), (6, 0..6));

        // From the front, through the iterator: 7..10 did not run.
        let mut leaf = one_leaf().into_iter();
        assert_eq!(
            leaf.by_ref().take(6).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        let run = catch_unwind(AssertUnwindSafe(|| leaf.next()));
        assert!(run.unwrap_err().is::<LeafStopped>());
        let stop = stops.lock().pop().expect("a stop");
        assert_eq!((stop.at, stop.rest), (6, 7..10));
        assert!(matches!(stop.error, ItemError::Panicked(p) if p.message() == "six"));
    }

    #[test]
    fn split_leaves_know_their_offsets() {
        let items: Vec<u32> = (0..100).collect();
        let body = Fallible(|&x: &u32| if x % 40 == 39 { Err(x) } else { Ok(x) });
        let stops = Mutex::new(Vec::new());
        let shared = shared(&body, &stops, 10);
        let mut out = Vec::new();
        let run = catch_unwind(AssertUnwindSafe(|| {
            out.par_extend(Isolated {
                items: &items,
                offset: 0,
                shared: &shared,
            });
        }));
        assert!(run.unwrap_err().is::<LeafStopped>());
        let mut stops = stops.into_inner();
        stops.sort_by_key(|s| s.at);
        let seen: Vec<usize> = stops.iter().map(|s| s.at).collect();
        assert_eq!(seen, [39, 79]);
        for s in &stops {
            assert!(matches!(s.error, ItemError::Failed(x) if x as usize == s.at));
            // The rest is the tail of the leaf that held the failing item.
            assert_eq!(s.rest.start, s.at + 1);
            assert!(s.rest.end <= items.len());
        }
    }
}
