//! DataLoader: lookups made in the same scheduler tick become one batch.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// A function that loads many keys at once — typically one
/// `SELECT ... WHERE id = ANY($1)` — and returns the value of every key it
/// found. Keys it does not return load as `None`.
///
/// Implemented for every `Fn(Vec<K>) -> impl Future<Output = Result<HashMap<K, V>, E>>`.
/// A batch whose keys can fail one by one returns `HashMap<K, Result<T, E2>>`:
/// each caller then gets its own key's outcome.
pub trait BatchFn<K, V>: Send + Sync + 'static {
    /// The batch's error; every caller in a failed batch gets it (shared).
    type Error: Send + Sync + 'static;
    /// Loads `keys` (distinct, at most the loader's `max_batch`).
    fn load(&self, keys: Vec<K>)
    -> impl Future<Output = Result<HashMap<K, V>, Self::Error>> + Send;
}

impl<K, V, E, F, Fut> BatchFn<K, V> for F
where
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<HashMap<K, V>, E>> + Send,
    E: Send + Sync + 'static,
{
    type Error = E;
    fn load(&self, keys: Vec<K>) -> impl Future<Output = Result<HashMap<K, V>, E>> + Send {
        self(keys)
    }
}

type Outcome<V, E> = Result<Option<V>, Arc<E>>;
type Senders<V, E> = Vec<oneshot::Sender<Outcome<V, E>>>;
type Waiters<K, V, E> = HashMap<K, Senders<V, E>>;
/// With caching: keys whose batch is running, by batch id, with the callers
/// who asked for them meanwhile.
type InFlight<K, V, E> = HashMap<K, (u64, Senders<V, E>)>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxBatch<K, V, E> = Arc<dyn Fn(Vec<K>) -> BoxFuture<Result<HashMap<K, V>, E>> + Send + Sync>;

/// Coalesces `load(key)` calls made in the same scheduler tick into one call of
/// a [`BatchFn`], with duplicate keys removed and batches capped at
/// `max_batch` keys.
///
/// The first `load` of a batch yields to the scheduler once — letting every
/// other ready future and task of this tick add its key — then runs the batch.
/// There is no timer: a lone lookup costs one yield, not a millisecond.
/// Cancelling any caller, the one running the batch included, never strands
/// the others (they re-issue their keys).
///
/// Create one loader per request when caching (`cache(true)`), so that values
/// never outlive the request; without caching a loader can be shared.
///
/// # Example
/// ```
/// use std::collections::HashMap;
/// use torque_query::Loader;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // In a service: `SELECT id, name FROM users WHERE id = ANY($1)`.
/// let users = Loader::new(|ids: Vec<i64>| async move {
///     Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("user {id}"))).collect::<HashMap<_, _>>())
/// });
/// let (a, b) = tokio::join!(users.load(1), users.load(2));
/// assert_eq!(a.unwrap().as_deref(), Some("user 1"));
/// assert_eq!(b.unwrap().as_deref(), Some("user 2"));
/// assert_eq!(users.stats().batches, 1); // both in one round trip
/// # }
/// ```
pub struct Loader<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> Clone for Loader<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, E> fmt::Debug for Loader<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("max_batch", &self.inner.max_batch)
            .field("cache", &self.inner.cache.is_some())
            .field("batches", &self.inner.batches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner<K, V, E> {
    batch_fn: BoxBatch<K, V, E>,
    max_batch: usize,
    cache: Option<Mutex<HashMap<K, Option<V>>>>,
    /// Bumped (under the cache's lock) by `clear_cache`: a batch that started
    /// before a clear does not store what it read.
    cache_epoch: AtomicU64,
    /// Lock order: `pending`, a batch's `state`, `in_flight`, then `cache`.
    in_flight: Mutex<InFlight<K, V, E>>,
    batch_ids: AtomicU64,
    /// Batches not yet taken by their runner.
    pending: Mutex<Pending<K, V, E>>,
    batches: AtomicU64,
    keys: AtomicU64,
    cache_hits: AtomicU64,
}

struct Batch<K, V, E> {
    state: Mutex<BatchState<K, V, E>>,
}

/// The batches not yet taken by their runner: the open one, which takes new
/// keys, and the full ones, which still take callers of a key they hold
/// (keys are de-duplicated across them), indexed by key.
struct Pending<K, V, E> {
    open: Option<Arc<Batch<K, V, E>>>,
    full: HashMap<K, Arc<Batch<K, V, E>>>,
}

impl<K: Eq + Hash, V, E> Pending<K, V, E> {
    /// Unlists `batch` (whose state the caller has locked, as `state`): no
    /// key joins it any more.
    fn remove(&mut self, batch: &Arc<Batch<K, V, E>>, state: &BatchState<K, V, E>) {
        if self.open.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch)) {
            self.open = None;
        } else if !self.full.is_empty() {
            for key in &state.keys {
                if self.full.get(key).is_some_and(|b| Arc::ptr_eq(b, batch)) {
                    self.full.remove(key);
                }
            }
        }
    }
}

struct BatchState<K, V, E> {
    waiters: Waiters<K, V, E>,
    /// Keys in arrival order (the batch function sees them in that order).
    keys: Vec<K>,
    taken: bool,
}

/// Counters of a [`Loader`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoaderStats {
    /// Calls of the batch function.
    pub batches: u64,
    /// Keys passed to the batch function, over all batches.
    pub keys: u64,
    /// Loads answered from the per-loader cache.
    pub cache_hits: u64,
}

/// Builds a [`Loader`]: `Loader::builder(batch_fn).max_batch(500).cache(true).build()`.
pub struct LoaderBuilder<K, V, E> {
    batch_fn: BoxBatch<K, V, E>,
    max_batch: usize,
    cache: bool,
}

impl<K, V, E> fmt::Debug for LoaderBuilder<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoaderBuilder")
            .field("max_batch", &self.max_batch)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Default cap on keys per batch: large enough to amortize the round trip,
/// small enough to keep one statement's array and result modest.
pub(crate) const DEFAULT_MAX_BATCH: usize = 1000;

impl<K, V, E> LoaderBuilder<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Most distinct keys per batch (default 1000); a batch that fills up is
    /// sent at once and later keys start the next one. 0 is taken as 1.
    pub fn max_batch(mut self, keys: usize) -> Self {
        self.max_batch = keys.max(1);
        self
    }

    /// Remember loaded values (found or not) for the loader's lifetime, so a
    /// key is fetched at most once: a load of a key whose batch is still
    /// running waits for that batch. A batch's error is never cached; a
    /// per-key `Err` (a batch returning `HashMap<K, Result<T, E2>>`) is that
    /// key's value to the loader and is cached like any other (call
    /// [`clear_cache`](Loader::clear_cache) to retry it). Off by default.
    pub fn cache(mut self, on: bool) -> Self {
        self.cache = on;
        self
    }

    /// The loader.
    pub fn build(self) -> Loader<K, V, E> {
        Loader {
            inner: Arc::new(Inner {
                batch_fn: self.batch_fn,
                max_batch: self.max_batch,
                cache: self.cache.then(|| Mutex::new(HashMap::new())),
                cache_epoch: AtomicU64::new(0),
                in_flight: Mutex::new(HashMap::new()),
                batch_ids: AtomicU64::new(0),
                pending: Mutex::new(Pending {
                    open: None,
                    full: HashMap::new(),
                }),
                batches: AtomicU64::new(0),
                keys: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, V, E> Loader<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A loader with default settings (batches of up to 1000 keys, no cache).
    pub fn new<F>(batch_fn: F) -> Self
    where
        F: BatchFn<K, V, Error = E>,
    {
        Self::builder(batch_fn).build()
    }

    /// A builder, to set the batch cap or turn on caching.
    pub fn builder<F>(batch_fn: F) -> LoaderBuilder<K, V, E>
    where
        F: BatchFn<K, V, Error = E>,
    {
        let batch_fn = Arc::new(batch_fn);
        LoaderBuilder {
            batch_fn: Arc::new(move |keys| {
                let f = Arc::clone(&batch_fn);
                Box::pin(async move { f.load(keys).await })
            }),
            max_batch: DEFAULT_MAX_BATCH,
            cache: false,
        }
    }

    /// What the loader has done so far.
    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            batches: self.inner.batches.load(Ordering::Relaxed),
            keys: self.inner.keys.load(Ordering::Relaxed),
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// Forgets cached values (when caching is on), including those of batches
    /// still running: their callers get them, the cache does not.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            let mut in_flight = lock(&self.inner.in_flight);
            let mut cache = lock(cache);
            cache.clear();
            self.inner.cache_epoch.fetch_add(1, Ordering::SeqCst);
            // Later loads fetch again; those who joined a running batch retry.
            in_flight.clear();
        }
    }

    /// Forgets `key`'s cached value (when caching is on), including the one
    /// a batch still running would store: its callers get that value, the
    /// cache does not, and the next load of `key` fetches it again. Call it
    /// after writing `key`'s row; [`clear_cache`](Self::clear_cache)
    /// forgets every key. (JavaScript DataLoader's `clear(key)`.)
    pub fn forget(&self, key: &K) {
        if let Some(cache) = &self.inner.cache {
            let mut in_flight = lock(&self.inner.in_flight);
            lock(cache).remove(key);
            // A running batch stores only keys it still marks; those who
            // joined it for this key retry.
            in_flight.remove(key);
        }
    }

    /// Caches `value` for `key` unless a value is cached for it already
    /// (when caching is on; otherwise it does nothing), so that loads of
    /// `key` are answered without a fetch: for rows the caller has just read
    /// or written anyway. A batch running for `key` still stores what it
    /// reads when it finishes. To replace a cached value, [`forget`] the key
    /// first. (JavaScript DataLoader's `prime`.)
    ///
    /// [`forget`]: Self::forget
    pub fn prime(&self, key: K, value: V) {
        if let Some(cache) = &self.inner.cache {
            lock(cache).entry(key).or_insert(Some(value));
        }
    }

    /// The value of `key`: `Ok(None)` when the batch did not return it.
    ///
    /// # Errors
    /// The batch function's error, shared by every key of the failed batch.
    pub async fn load(&self, key: K) -> Result<Option<V>, Arc<E>> {
        loop {
            let (rx, leader) = match self.cached(&key) {
                Cached::Hit(v) => return Ok(v),
                Cached::Running(rx) => (rx, None),
                Cached::Miss => match self.enqueue(&key) {
                    Queued::Hit(v) => return Ok(v),
                    Queued::Wait(rx, leader) => (rx, leader),
                },
            };
            if let Some(batch) = leader {
                let mut guard = LeaderGuard {
                    inner: &self.inner,
                    batch: Some(batch),
                };
                // Let every other future and task that is ready in this tick
                // add its key before the batch goes.
                tokio::task::yield_now().await;
                guard.run().await;
            }
            match rx.await {
                Ok(outcome) => return outcome,
                // The caller running our batch was cancelled before answering:
                // issue the key again (into a new batch).
                Err(_) => continue,
            }
        }
    }

    /// Loads several keys, in one batch when they fit (several when they
    /// exceed `max_batch`), returning their values in the order given.
    ///
    /// Cheaper than joining many [`load`](Self::load) futures: the keys are
    /// queued directly, with no future per key.
    ///
    /// # Errors
    /// The first error among the keys' batches.
    pub async fn load_many(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<V>>, Arc<E>> {
        enum Slot<K, V, E> {
            Ready(Option<V>),
            Waiting(K, oneshot::Receiver<Outcome<V, E>>),
        }
        let mut slots = Vec::new();
        let mut guards = Vec::new();
        for key in keys {
            let (rx, leader) = match self.cached(&key) {
                Cached::Hit(v) => {
                    slots.push(Slot::Ready(v));
                    continue;
                }
                Cached::Running(rx) => (rx, None),
                Cached::Miss => match self.enqueue(&key) {
                    Queued::Hit(v) => {
                        slots.push(Slot::Ready(v));
                        continue;
                    }
                    Queued::Wait(rx, leader) => (rx, leader),
                },
            };
            if let Some(batch) = leader {
                guards.push(LeaderGuard {
                    inner: &self.inner,
                    batch: Some(batch),
                });
            }
            slots.push(Slot::Waiting(key, rx));
        }
        if !guards.is_empty() {
            // As in `load`: let the rest of this tick join our batches.
            tokio::task::yield_now().await;
            for guard in &mut guards {
                guard.run().await;
            }
        }
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            out.push(match slot {
                Slot::Ready(v) => v,
                Slot::Waiting(key, rx) => match rx.await {
                    Ok(outcome) => outcome?,
                    // Its batch's runner was cancelled: load it again.
                    Err(_) => self.load(key).await?,
                },
            });
        }
        Ok(out)
    }

    /// With caching: the cached value, or a receiver for the outcome of the
    /// running batch that loads `key`.
    fn cached(&self, key: &K) -> Cached<V, E> {
        let Some(cache) = &self.inner.cache else {
            return Cached::Miss;
        };
        // Under `in_flight`'s lock, a batch either still runs (and will answer
        // us) or has stored its values (before leaving `in_flight`).
        let mut in_flight = lock(&self.inner.in_flight);
        if let Some(v) = lock(cache).get(key) {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Cached::Hit(v.clone());
        }
        match in_flight.get_mut(key) {
            Some((_, callers)) => {
                let (tx, rx) = oneshot::channel();
                callers.push(tx);
                Cached::Running(rx)
            }
            None => Cached::Miss,
        }
    }

    /// Adds `key` to the open batch (opening one if needed); returns the
    /// receiver for its outcome and, for the caller who opened the batch, the
    /// batch to run. With caching, a key whose batch was taken to run since
    /// [`cached`](Self::cached) looked joins that batch instead, or is
    /// answered from the cache if that batch is done.
    fn enqueue(&self, key: &K) -> Queued<K, V, E> {
        let (tx, rx) = oneshot::channel();
        let mut pending = lock(&self.inner.pending);
        // A key already in a batch not yet sent joins it, full or not: keys
        // are de-duplicated across them.
        if let Some(batch) = pending.full.get(key) {
            let mut state = lock(&batch.state);
            if let Some(senders) = state.waiters.get_mut(key) {
                senders.push(tx);
                return Queued::Wait(rx, None);
            }
        }
        // Under `pending`'s lock a key is queued, or marked in flight (a
        // batch is taken and marked under this lock), or cached (stored
        // before it is unmarked), or nowhere: only then is it fetched. A key
        // in the open batch is in neither, so this look-up misses for it.
        if self.inner.cache.is_some() {
            match self.cached(key) {
                Cached::Hit(v) => return Queued::Hit(v),
                Cached::Running(rx) => return Queued::Wait(rx, None),
                Cached::Miss => {}
            }
        }
        if let Some(batch) = pending.open.clone() {
            let mut state = lock(&batch.state);
            match state.waiters.get_mut(key) {
                Some(senders) => senders.push(tx),
                None => {
                    state.keys.push(key.clone());
                    state.waiters.insert(key.clone(), vec![tx]);
                    if state.keys.len() >= self.inner.max_batch {
                        // Full: later keys start a new batch; its runner sends this one.
                        pending.open = None;
                        for k in &state.keys {
                            pending.full.insert(k.clone(), Arc::clone(&batch));
                        }
                    }
                }
            }
            return Queued::Wait(rx, None);
        }
        let batch = Arc::new(Batch {
            state: Mutex::new(BatchState {
                waiters: HashMap::from([(key.clone(), vec![tx])]),
                keys: vec![key.clone()],
                taken: false,
            }),
        });
        if self.inner.max_batch <= 1 {
            pending.full.insert(key.clone(), Arc::clone(&batch));
        } else {
            pending.open = Some(Arc::clone(&batch));
        }
        drop(pending);
        Queued::Wait(rx, Some(batch))
    }
}

enum Cached<V, E> {
    Hit(Option<V>),
    Running(oneshot::Receiver<Outcome<V, E>>),
    Miss,
}

/// What [`Loader::enqueue`] did with a key.
enum Queued<K, V, E> {
    /// Cached by a batch that finished after [`Loader::cached`] looked.
    Hit(Option<V>),
    /// Waits for a batch; the caller who opened it gets it, to run.
    Wait(
        oneshot::Receiver<Outcome<V, E>>,
        Option<Arc<Batch<K, V, E>>>,
    ),
}

/// With caching, marks a running batch's keys in `in_flight`; when dropped
/// (the batch finished, or its runner was cancelled) unmarks them, dropping
/// the senders of callers not yet answered so that they retry.
struct InFlightGuard<'a, K: Eq + Hash, V, E> {
    inner: &'a Inner<K, V, E>,
    id: u64,
    keys: Vec<K>,
}

impl<K: Eq + Hash, V, E> InFlightGuard<'_, K, V, E> {
    /// Unmarks the keys; returns the callers who joined, by key.
    fn finish(&mut self) -> Vec<(K, Senders<V, E>)> {
        let mut in_flight = lock(&self.inner.in_flight);
        let mut joined = Vec::new();
        for key in self.keys.drain(..) {
            if in_flight.get(&key).is_some_and(|(id, _)| *id == self.id)
                && let Some((_, callers)) = in_flight.remove(&key)
            {
                joined.push((key, callers));
            }
        }
        joined
    }
}

impl<K: Eq + Hash, V, E> Drop for InFlightGuard<'_, K, V, E> {
    fn drop(&mut self) {
        drop(self.finish());
    }
}

/// Runs the batch; if dropped first (the leader was cancelled), releases the
/// batch so its waiters retry instead of waiting forever.
struct LeaderGuard<'a, K: Eq + Hash, V, E> {
    inner: &'a Inner<K, V, E>,
    batch: Option<Arc<Batch<K, V, E>>>,
}

impl<'a, K, V, E> LeaderGuard<'a, K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Unlists the batch and, with caching, marks its keys in flight before
    /// `pending`'s lock is released: a load of one of them on another thread
    /// finds it queued or in flight, never neither (and fetched again).
    #[allow(clippy::type_complexity)]
    fn take(&mut self) -> Option<(Vec<K>, Waiters<K, V, E>, InFlightGuard<'a, K, V, E>, u64)> {
        let batch = self.batch.take()?;
        let mut pending = lock(&self.inner.pending);
        let mut state = lock(&batch.state);
        pending.remove(&batch, &state);
        state.taken = true;
        let keys = std::mem::take(&mut state.keys);
        let waiters = std::mem::take(&mut state.waiters);
        drop(state);
        let epoch = self.inner.cache_epoch.load(Ordering::SeqCst);
        let mut in_flight = InFlightGuard {
            inner: self.inner,
            id: self.inner.batch_ids.fetch_add(1, Ordering::Relaxed),
            keys: Vec::new(),
        };
        if self.inner.cache.is_some() {
            let mut marked = lock(&self.inner.in_flight);
            for key in &keys {
                // A key another running batch already loads stays its.
                if !marked.contains_key(key) {
                    marked.insert(key.clone(), (in_flight.id, Vec::new()));
                    in_flight.keys.push(key.clone());
                }
            }
        }
        drop(pending);
        Some((keys, waiters, in_flight, epoch))
    }

    async fn run(&mut self) {
        let Some((keys, waiters, mut in_flight, epoch)) = self.take() else {
            return;
        };
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
        self.inner
            .keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        // If this future is dropped while the batch runs, `waiters` and
        // `in_flight` are dropped with it and every receiver sees a closed
        // channel and retries.
        let outcome = (self.inner.batch_fn)(keys).await;
        if let (Ok(values), Some(cache)) = (&outcome, &self.inner.cache) {
            // Values read before a `clear_cache`, or a `forget` of their key
            // (which unmarks it), are answered, not kept.
            let marked = lock(&self.inner.in_flight);
            let mut cache = lock(cache);
            if self.inner.cache_epoch.load(Ordering::SeqCst) == epoch {
                for key in waiters.keys() {
                    if marked.get(key).is_some_and(|(id, _)| *id == in_flight.id) {
                        cache.insert(key.clone(), values.get(key).cloned());
                    }
                }
            }
        }
        // Stored first: a caller who misses `in_flight` now finds the cache.
        let joined = in_flight.finish();
        let waiters = waiters.into_iter().chain(joined);
        match outcome {
            Ok(values) => {
                for (key, senders) in waiters {
                    let value = values.get(&key);
                    for tx in senders {
                        let _ = tx.send(Ok(value.cloned()));
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for tx in waiters.flat_map(|(_, senders)| senders) {
                    let _ = tx.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

impl<K: Eq + Hash, V, E> Drop for LeaderGuard<'_, K, V, E> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            // Cancelled before running: close the batch so no new key joins
            // it, and drop its senders so its waiters retry.
            let mut pending = lock(&self.inner.pending);
            let mut state = lock(&batch.state);
            pending.remove(&batch, &state);
            drop(pending);
            state.taken = true;
            state.waiters.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Polls all futures to completion concurrently: a minimal `join_all`.
    async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut all_done = true;
            for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
                if out.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *out = Some(v),
                        std::task::Poll::Pending => all_done = false,
                    }
                }
            }
            if all_done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }

    fn squares(calls: Arc<AtomicUsize>) -> Loader<u32, u64, String> {
        Loader::new(move |keys: Vec<u32>| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if keys.contains(&13) {
                    return Err(format!("unlucky batch {keys:?}"));
                }
                Ok(keys
                    .into_iter()
                    .filter(|k| k % 2 == 0)
                    .map(|k| (k, u64::from(k) * u64::from(k)))
                    .collect())
            }
        })
    }

    #[tokio::test]
    async fn concurrent_loads_share_one_batch_and_dedupe() {
        let calls = Arc::new(AtomicUsize::new(0));
        let loader = squares(Arc::clone(&calls));
        let keys = [2u32, 4, 2, 6, 3];
        let results = join_all(keys.iter().map(|&k| loader.load(k)).collect()).await;
        let values: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, vec![Some(4), Some(16), Some(4), Some(36), None]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(loader.stats().keys, 4, "duplicate keys are sent once");
    }

    #[tokio::test]
    async fn sequential_loads_are_separate_batches() {
        let calls = Arc::new(AtomicUsize::new(0));
        let loader = squares(Arc::clone(&calls));
        assert_eq!(loader.load(2).await.unwrap(), Some(4));
        assert_eq!(loader.load(4).await.unwrap(), Some(16));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn batch_error_reaches_every_key_of_that_batch_only() {
        let calls = Arc::new(AtomicUsize::new(0));
        let loader = squares(Arc::clone(&calls));
        let (a, b) = tokio::join!(loader.load(13), loader.load(2));
        assert!(a.unwrap_err().contains("unlucky"));
        assert!(b.is_err());
        assert_eq!(
            loader.load(2).await.unwrap(),
            Some(4),
            "errors are not cached"
        );
    }

    #[tokio::test]
    async fn max_batch_splits_large_tick() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let loader: Loader<u32, u32, String> = Loader::builder(move |keys: Vec<u32>| {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                assert!(keys.len() <= 10);
                Ok(keys.into_iter().map(|k| (k, k)).collect())
            }
        })
        .max_batch(10)
        .build();
        let results = loader.load_many(0..95).await.unwrap();
        assert_eq!(results, (0..95).map(Some).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_key_repeated_after_its_batch_filled_up_is_not_fetched_again() {
        // Keys are de-duplicated within a tick, also when the batch holding
        // a key filled up before the key came again.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let loader: Loader<u32, u32, String> = Loader::builder(move |keys: Vec<u32>| {
            let s = Arc::clone(&s);
            async move {
                lock(&s).push(keys.clone());
                Ok(keys.into_iter().map(|k| (k, k * 10)).collect())
            }
        })
        .max_batch(2)
        .build();
        let results = loader.load_many([1, 2, 1, 3, 2, 4, 1]).await.unwrap();
        assert_eq!(
            results,
            [10, 20, 10, 30, 20, 40, 10].map(Some).to_vec(),
            "each caller gets its own key's value"
        );
        let joined = join_all(vec![loader.load(5), loader.load(6), loader.load(5)]).await;
        assert_eq!(
            joined.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![Some(50), Some(60), Some(50)]
        );
        let batches = lock(&seen).clone();
        assert_eq!(
            batches,
            vec![vec![1, 2], vec![3, 4], vec![5, 6]],
            "a key was sent twice in one tick"
        );
        assert_eq!(loader.stats().keys, 6);
    }

    #[tokio::test]
    async fn cache_answers_repeats_without_a_batch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let loader: Loader<u32, u32, String> = Loader::builder(move |keys: Vec<u32>| {
            let c = Arc::clone(&c);
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(keys
                    .into_iter()
                    .filter(|k| *k > 0)
                    .map(|k| (k, k))
                    .collect())
            }
        })
        .cache(true)
        .build();
        assert_eq!(loader.load(1).await.unwrap(), Some(1));
        assert_eq!(loader.load(0).await.unwrap(), None);
        assert_eq!(loader.load(1).await.unwrap(), Some(1));
        assert_eq!(loader.load(0).await.unwrap(), None);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(loader.stats().cache_hits, 2);
    }

    #[tokio::test]
    async fn cancelled_leader_does_not_strand_waiters() {
        let calls = Arc::new(AtomicUsize::new(0));
        let loader = squares(Arc::clone(&calls));
        let mut leader = Box::pin(loader.load(2));
        // Poll the leader once: it opens the batch and yields.
        assert!(futures_poll_once(leader.as_mut()).await.is_none());
        let follower = loader.load(4);
        drop(leader);
        assert_eq!(follower.await.unwrap(), Some(16));
    }

    /// A caching loader whose batches read the current `version` for every
    /// key, tell `started_rx`, and answer only once `gate` is notified: a
    /// batch in flight whose rows change meanwhile.
    struct Gated {
        loader: Loader<u32, usize, String>,
        started_rx: tokio::sync::mpsc::UnboundedReceiver<()>,
        gate: Arc<tokio::sync::Notify>,
        version: Arc<AtomicUsize>,
    }

    fn gated() -> Gated {
        let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Notify::new());
        let version = Arc::new(AtomicUsize::new(1));
        let (g, v) = (Arc::clone(&gate), Arc::clone(&version));
        let loader = Loader::builder(move |keys: Vec<u32>| {
            let (g, v, started) = (Arc::clone(&g), Arc::clone(&v), started_tx.clone());
            async move {
                // The batch reads the rows, then its answer is delayed.
                let read = v.load(Ordering::SeqCst);
                started.send(()).unwrap();
                g.notified().await;
                Ok(keys.into_iter().map(|k| (k, read)).collect())
            }
        })
        .cache(true)
        .build();
        Gated {
            loader,
            started_rx,
            gate,
            version,
        }
    }

    #[tokio::test]
    async fn clear_cache_forgets_values_of_a_batch_in_flight() {
        let Gated {
            loader,
            mut started_rx,
            gate,
            version,
        } = gated();
        let control = async {
            started_rx.recv().await.unwrap();
            // The row changes and the caller forgets what it had cached...
            version.store(2, Ordering::SeqCst);
            loader.clear_cache();
            gate.notify_one();
        };
        let (first, ()) = tokio::join!(loader.load(1), control);
        assert_eq!(first.unwrap(), Some(1));
        // ...so the value read before clear_cache must not answer this load.
        gate.notify_one();
        assert_eq!(
            loader.load(1).await.unwrap(),
            Some(2),
            "a batch that started before clear_cache filled the cache after it"
        );
    }

    /// A loader whose batch function answers each key with the current
    /// `version`, counting its calls.
    fn versioned(
        version: &Arc<AtomicUsize>,
        calls: &Arc<AtomicUsize>,
    ) -> Loader<u32, usize, String> {
        let (v, c) = (Arc::clone(version), Arc::clone(calls));
        Loader::builder(move |keys: Vec<u32>| {
            let read = v.load(Ordering::SeqCst);
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok(keys.into_iter().map(|k| (k, read)).collect()) }
        })
        .cache(true)
        .build()
    }

    #[tokio::test]
    async fn forget_makes_the_next_load_of_that_key_alone_fetch_again() {
        let (version, calls) = (Arc::new(AtomicUsize::new(1)), Arc::new(AtomicUsize::new(0)));
        let loader = versioned(&version, &calls);
        assert_eq!(
            loader.load_many([1, 2]).await.unwrap(),
            vec![Some(1), Some(1)]
        );
        version.store(2, Ordering::SeqCst);
        loader.forget(&1);
        assert_eq!(loader.load(1).await.unwrap(), Some(2), "fetched again");
        assert_eq!(loader.load(2).await.unwrap(), Some(1), "still cached");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn forget_drops_the_value_a_batch_in_flight_would_store() {
        let Gated {
            loader,
            mut started_rx,
            gate,
            version,
        } = gated();
        let control = async {
            started_rx.recv().await.unwrap();
            // Row 1 changes and the caller forgets it; row 2 does not.
            version.store(2, Ordering::SeqCst);
            loader.forget(&1);
            gate.notify_one();
        };
        let (first, ()) = tokio::join!(loader.load_many([1, 2]), control);
        assert_eq!(first.unwrap(), vec![Some(1), Some(1)]);
        gate.notify_one();
        assert_eq!(
            loader.load(1).await.unwrap(),
            Some(2),
            "a batch that started before forget(1) cached 1's old value after it"
        );
        assert_eq!(loader.load(2).await.unwrap(), Some(1), "2 stayed cached");
    }

    #[tokio::test]
    async fn prime_answers_loads_without_a_fetch_and_keeps_a_cached_value() {
        let (version, calls) = (Arc::new(AtomicUsize::new(1)), Arc::new(AtomicUsize::new(0)));
        let loader = versioned(&version, &calls);
        loader.prime(7, 70);
        assert_eq!(loader.load(7).await.unwrap(), Some(70));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no fetch for a primed key");
        loader.prime(7, 71);
        assert_eq!(
            loader.load(7).await.unwrap(),
            Some(70),
            "prime keeps what is cached"
        );
        loader.forget(&7);
        loader.prime(7, 72);
        assert_eq!(
            loader.load(7).await.unwrap(),
            Some(72),
            "forget, then prime, replaces"
        );
        let uncached: Loader<u32, usize, String> =
            Loader::new(
                |keys: Vec<u32>| async move { Ok(keys.into_iter().map(|k| (k, 0)).collect()) },
            );
        uncached.prime(7, 70);
        uncached.forget(&7);
        assert_eq!(
            uncached.load(7).await.unwrap(),
            Some(0),
            "without a cache both do nothing"
        );
    }

    #[tokio::test]
    async fn cache_fetches_a_key_once_even_while_its_batch_is_in_flight() {
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, c) = (Arc::clone(&gate), Arc::clone(&calls));
        let loader: Loader<u32, u32, String> = Loader::builder(move |keys: Vec<u32>| {
            let (g, c, started) = (Arc::clone(&g), Arc::clone(&c), started_tx.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                started.send(()).unwrap();
                drop(g.acquire().await.unwrap());
                Ok(keys.into_iter().map(|k| (k, k + 100)).collect())
            }
        })
        .cache(true)
        .build();
        let late = async {
            // Asked for again while the first batch is still waiting on the server.
            started_rx.recv().await.unwrap();
            let again = loader.load(1);
            let mut again = Box::pin(again);
            assert!(futures_poll_once(again.as_mut()).await.is_none());
            // Open the gate for good (for a second batch too, should one start).
            gate.add_permits(1);
            tokio::time::timeout(std::time::Duration::from_secs(5), again).await
        };
        let (first, second) = tokio::join!(loader.load(1), late);
        assert_eq!(first.unwrap(), Some(101));
        assert_eq!(second.expect("the late load hangs").unwrap(), Some(101));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "cache(true) promises a key is fetched at most once"
        );
    }

    #[tokio::test]
    async fn a_caller_joining_a_running_batch_retries_when_its_runner_is_cancelled() {
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (g, c) = (Arc::clone(&gate), Arc::clone(&calls));
        let loader: Loader<u32, u32, String> = Loader::builder(move |keys: Vec<u32>| {
            let (g, c, started) = (Arc::clone(&g), Arc::clone(&c), started_tx.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                started.send(()).unwrap();
                drop(g.acquire().await.unwrap());
                Ok(keys.into_iter().map(|k| (k, k + 100)).collect())
            }
        })
        .cache(true)
        .build();
        let mut runner = Box::pin(loader.load(1));
        assert!(futures_poll_once(runner.as_mut()).await.is_none()); // queued, yielded
        assert!(futures_poll_once(runner.as_mut()).await.is_none()); // batch running
        started_rx.recv().await.unwrap();
        let mut late = Box::pin(loader.load(1));
        assert!(futures_poll_once(late.as_mut()).await.is_none()); // joined the running batch
        drop(runner);
        gate.add_permits(1);
        let v = tokio::time::timeout(std::time::Duration::from_secs(5), late)
            .await
            .expect("the caller who joined a cancelled batch hangs");
        assert_eq!(v.unwrap(), Some(101));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "fetched again by the late caller"
        );
    }

    /// A key whose `Hash` runs a hook armed for the current thread (once):
    /// the loader hashes keys under its locks, so a hook can hold one thread
    /// at a known point while another goes on, with no sleep.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct HookedKey(u32);

    thread_local! {
        static HASH_HOOK: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            std::cell::RefCell::new(None);
    }

    fn arm_hash_hook(f: impl FnOnce() + 'static) {
        HASH_HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    impl Hash for HookedKey {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            if let Some(f) = HASH_HOOK.with(|h| h.borrow_mut().take()) {
                f();
            }
            self.0.hash(state);
        }
    }

    fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// Two worker threads load one key with `cache(true)`: the second checks
    /// the cache while the first's batch is queued, and queues its key just
    /// after the first thread took that batch to run it. The key was in no
    /// queue, not yet marked in flight and not cached: it went into a second
    /// batch and was fetched twice.
    #[test]
    fn cache_does_not_fetch_a_key_twice_when_a_load_races_the_start_of_its_batch() {
        const LIVENESS: std::time::Duration = std::time::Duration::from_secs(60);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let loader: Loader<HookedKey, u32, String> =
            Loader::builder(move |keys: Vec<HookedKey>| {
                let c = Arc::clone(&c);
                async move {
                    c.fetch_add(keys.iter().filter(|k| k.0 == 1).count(), Ordering::SeqCst);
                    Ok(keys.into_iter().map(|k| (k.clone(), k.0)).collect())
                }
            })
            // One key per batch: a queued batch is then found by key, and
            // taking it to run hashes the key (the first thread's signal).
            .max_batch(1)
            .cache(true)
            .build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Something cached, so that the cache look-up hashes the key.
        assert_eq!(rt.block_on(loader.load(HookedKey(0))).unwrap(), Some(0));

        // This thread queues key 1 in a batch and yields before running it.
        let mut first = Box::pin(loader.load(HookedKey(1)));
        assert!(poll_once(first.as_mut()).is_pending());

        // The other thread checks the cache (holding the loader's in-flight
        // lock) and waits there until this thread is taking its batch.
        let (checking_tx, checking_rx) = std::sync::mpsc::channel();
        let (taking_tx, taking_rx) = std::sync::mpsc::channel::<()>();
        let other = loader.clone();
        let second = std::thread::spawn(move || {
            arm_hash_hook(move || {
                checking_tx.send(()).unwrap();
                taking_rx.recv_timeout(LIVENESS).unwrap();
            });
            let mut second = Box::pin(async move { other.load(HookedKey(1)).await });
            // Pending, or already answered from the cache.
            match poll_once(second.as_mut()) {
                std::task::Poll::Ready(v) => Err(v),
                std::task::Poll::Pending => Ok(second),
            }
        });
        checking_rx
            .recv_timeout(LIVENESS)
            .expect("the second load never checked the cache");
        arm_hash_hook(move || taking_tx.send(()).unwrap());
        // Runs the batch: takes it (letting the other thread go on), fetches.
        let first = match poll_once(first.as_mut()) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => rt.block_on(async {
                tokio::time::timeout(LIVENESS, first)
                    .await
                    .expect("first load hangs")
            }),
        };
        assert_eq!(first.unwrap(), Some(1));
        let second = match second.join().unwrap() {
            Err(answered) => answered,
            Ok(second) => rt.block_on(async {
                tokio::time::timeout(LIVENESS, second)
                    .await
                    .expect("second load hangs")
            }),
        };
        assert_eq!(second.unwrap(), Some(1));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "cache(true) promises a key is fetched at most once"
        );
    }

    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
