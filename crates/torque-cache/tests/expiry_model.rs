//! State-machine property test of expiry against a shadow model: random
//! writes with mixed time-to-lives (cache-wide, per entry through
//! `insert_with_ttl` and an `Expiry`, zero and `Duration::MAX`), reads that
//! refresh a time-to-idle, replacements, removals, `retain`,
//! `invalidate_all`, weighted entries, every policy, one to four shards, on
//! a clock that jumps ahead and, in some runs, steps back.
//!
//! After every step the cache must agree with the model: no expired value
//! is returned, each departure is heard once with the right cause, the
//! weight and the statistics add up, a write that evicts for capacity finds
//! nothing expired left anywhere, a shard's reads and writes free what is
//! due in it (checked with one shard), and `Ttl` evicts the entry nearest
//! expiry other than the one being written (with one shard).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use torque_cache::{Clock, LocalCache, Policy, RemovalCause};

const NEVER: u64 = u64::MAX;
const MS: u64 = 1_000_000;

/// A clock that moves both ways (never before where it started).
#[derive(Debug, Clone)]
struct TwoWayClock {
    base: Instant,
    offset: Arc<AtomicU64>,
}

impl TwoWayClock {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Arc::new(AtomicU64::new(0)),
        }
    }

    fn nanos(&self) -> u64 {
        self.offset.load(Ordering::SeqCst)
    }

    fn set(&self, nanos: u64) {
        self.offset.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for TwoWayClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos())
    }
}

#[derive(Debug, Clone, Copy)]
enum Ttl {
    Zero,
    Ms(u8),
    Long,
    Max,
}

impl Ttl {
    fn duration(self) -> Duration {
        match self {
            Ttl::Zero => Duration::ZERO,
            Ttl::Ms(ms) => Duration::from_millis(u64::from(ms)),
            Ttl::Long => Duration::from_secs(3600),
            Ttl::Max => Duration::MAX,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    InsertTtl(u8, u16, Ttl),
    Get(u8),
    GetOrLoad(u8, u16),
    Contains(u8),
    Remove(u8),
    Advance(u8),
    Jump,
    Back(u8),
    RunPending,
    Retain(u8),
    InvalidateAll,
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![
        1 => Just(Ttl::Zero),
        8 => (1..40u8).prop_map(Ttl::Ms),
        1 => Just(Ttl::Long),
        1 => Just(Ttl::Max),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..16u8;
    prop_oneof![
        6 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        6 => (key.clone(), any::<u16>(), ttl()).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        6 => key.clone().prop_map(Op::Get),
        3 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::GetOrLoad(k, v)),
        1 => key.clone().prop_map(Op::Contains),
        2 => key.prop_map(Op::Remove),
        4 => (1..20u8).prop_map(Op::Advance),
        1 => Just(Op::Jump),
        1 => (1..20u8).prop_map(Op::Back),
        1 => Just(Op::RunPending),
        1 => (2..5u8).prop_map(Op::Retain),
        1 => Just(Op::InvalidateAll),
    ]
}

#[derive(Debug, Clone)]
struct Config {
    policy: Policy,
    shards: usize,
    capacity: u64,
    weighted: bool,
    ttl: Option<u8>,
    tti: Option<u8>,
    expiry: bool,
    steps_back: bool,
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            Just(Policy::Adaptive),
            Just(Policy::Lru),
            Just(Policy::Lfu),
            Just(Policy::Fifo),
            Just(Policy::Ttl),
        ],
        prop_oneof![Just(1usize), Just(2), Just(4)],
        4..14u64,
        any::<bool>(),
        prop_oneof![4 => Just(None), 4 => (5..40u8).prop_map(Some), 1 => Just(Some(0))],
        prop_oneof![8 => Just(None), 4 => (5..30u8).prop_map(Some), 1 => Just(Some(0))],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(policy, shards, capacity, weighted, ttl, tti, expiry, steps_back)| Config {
                policy,
                shards,
                capacity,
                weighted,
                ttl,
                tti,
                expiry,
                steps_back,
            },
        )
}

fn weight_of(weighted: bool, value: u16) -> u64 {
    if weighted {
        u64::from(value % 3) + 1
    } else {
        1
    }
}

/// The `Expiry` of the runs that have one: keys 0 mod 3 live 7 ms, 1 mod 3
/// the cache-wide time-to-live, 2 mod 3 an hour.
fn expiry_of(key: u8) -> Option<Duration> {
    match key % 3 {
        0 => Some(Duration::from_millis(7)),
        1 => None,
        _ => Some(Duration::from_secs(3600)),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: u16,
    weight: u64,
    expires: u64,
    accessed: u64,
}

struct Model {
    tti: u64,
    entries: BTreeMap<u8, Entry>,
    hits: u64,
    misses: u64,
    expired: u64,
    capacity: u64,
    replaced: u64,
    removed: u64,
}

impl Model {
    fn deadline(&self, e: &Entry) -> u64 {
        e.expires.min(e.accessed.saturating_add(self.tti))
    }

    fn is_expired(&self, e: &Entry, now: u64) -> bool {
        self.deadline(e) <= now
    }

    fn live(&self, key: u8, now: u64) -> Option<&Entry> {
        self.entries.get(&key).filter(|e| !self.is_expired(e, now))
    }

    /// A read of `key` at `now`, as the cache counts it: a hit refreshes
    /// the entry's last use.
    fn read(&mut self, key: u8, now: u64) -> Option<u16> {
        let want = self.live(key, now).map(|e| e.value);
        if want.is_some() {
            self.hits += 1;
            let e = self.entries.get_mut(&key).unwrap();
            e.accessed = e.accessed.max(now);
        } else {
            self.misses += 1;
        }
        want
    }

    fn expired_keys(&self, now: u64) -> Vec<u8> {
        self.entries
            .iter()
            .filter(|(_, e)| self.is_expired(e, now))
            .map(|(k, _)| *k)
            .collect()
    }
}

type Event = (u8, u16, RemovalCause);

fn run(cfg: &Config, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = TwoWayClock::new();
    let log: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = Arc::clone(&log);
    let weighted = cfg.weighted;
    let mut builder = LocalCache::<u8, u16>::builder()
        .max_capacity(cfg.capacity)
        .shards(cfg.shards)
        .policy(cfg.policy)
        .clock(clock.clone())
        .eviction_listener(move |k: &u8, v: &u16, c| sink.lock().unwrap().push((*k, *v, c)));
    if weighted {
        builder = builder.weigher(|_: &u8, v: &u16| (*v % 3) as u32 + 1);
    }
    if let Some(ttl) = cfg.ttl {
        builder = builder.time_to_live(Duration::from_millis(u64::from(ttl)));
    }
    if let Some(tti) = cfg.tti {
        builder = builder.time_to_idle(Duration::from_millis(u64::from(tti)));
    }
    if cfg.expiry {
        builder = builder.expiry(|k: &u8, _: &u16| expiry_of(*k));
    }
    let cache = builder.build().unwrap();
    let cache_ttl = cfg.ttl.map_or(NEVER, |t| u64::from(t) * MS);
    let mut m = Model {
        tti: cfg.tti.map_or(NEVER, |t| u64::from(t) * MS),
        entries: BTreeMap::new(),
        hits: 0,
        misses: 0,
        expired: 0,
        capacity: 0,
        replaced: 0,
        removed: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        let now = clock.nanos();
        // The entry an insert replaces, and whether the op evicts.
        let mut old: Option<Entry> = None;
        let mut new_key = None;
        let mut returned = None;
        let mut expect_get = None;
        match *op {
            Op::Insert(k, v) | Op::InsertTtl(k, v, _) => {
                let ttl = match *op {
                    Op::InsertTtl(_, _, t) => Some(t.duration()),
                    _ if cfg.expiry => expiry_of(k),
                    _ => None,
                };
                let ttl = ttl.map_or(cache_ttl, |d| u64::try_from(d.as_nanos()).unwrap_or(NEVER));
                let ttl = if m.tti == 0 { 0 } else { ttl };
                let expires = now.saturating_add(ttl);
                old = m.entries.remove(&k);
                m.entries.insert(
                    k,
                    Entry {
                        value: v,
                        weight: weight_of(weighted, v),
                        expires,
                        accessed: now,
                    },
                );
                new_key = Some(k);
                match *op {
                    Op::InsertTtl(_, _, t) => cache.insert_with_ttl(k, v, t.duration()),
                    _ => cache.insert(k, v),
                }
            }
            Op::Get(k) => {
                let want = m.read(k, now);
                expect_get = Some(want);
                returned = Some(cache.get(&k));
            }
            Op::GetOrLoad(k, v) => {
                let want = m.read(k, now);
                if want.is_none() {
                    let ttl = if cfg.expiry { expiry_of(k) } else { None };
                    let ttl =
                        ttl.map_or(cache_ttl, |d| u64::try_from(d.as_nanos()).unwrap_or(NEVER));
                    let ttl = if m.tti == 0 { 0 } else { ttl };
                    old = m.entries.remove(&k);
                    m.entries.insert(
                        k,
                        Entry {
                            value: v,
                            weight: weight_of(weighted, v),
                            expires: now.saturating_add(ttl),
                            accessed: now,
                        },
                    );
                    new_key = Some(k);
                }
                expect_get = Some(Some(want.unwrap_or(v)));
                returned = Some(cache.get_or_load(k, || Ok::<_, ()>(v)).ok());
            }
            Op::Contains(k) => {
                let want = m.live(k, now).is_some();
                prop_assert_eq!(cache.contains_key(&k), want, "step {}: {:?}", step, op);
            }
            Op::Remove(k) => {
                let want = m.live(k, now).map(|e| e.value);
                expect_get = Some(want);
                returned = Some(cache.remove(&k));
            }
            Op::Advance(ms) => clock.set(now + u64::from(ms) * MS),
            Op::Jump => clock.set(now + 3_600_000 * MS),
            Op::Back(ms) => {
                if cfg.steps_back {
                    clock.set(now.saturating_sub(u64::from(ms) * MS));
                }
            }
            Op::RunPending => cache.run_pending_tasks(),
            Op::Retain(n) => cache.retain(|k, _| k % n != 0),
            Op::InvalidateAll => cache.invalidate_all(),
        }
        let now = clock.nanos();
        if let (Some(want), Some(got)) = (expect_get, returned) {
            prop_assert_eq!(got, want, "step {}: {:?} returned", step, op);
        }
        let events = std::mem::take(&mut *log.lock().unwrap());
        let mut evicted = false;
        for &(k, v, cause) in &events {
            let ctx = format!(
                "step {step}: {op:?}: event {:?} of {events:?}",
                (k, v, cause)
            );
            match cause {
                RemovalCause::Replaced => {
                    prop_assert_eq!(new_key, Some(k), "{}", ctx);
                    let o = old.take();
                    prop_assert!(o.is_some(), "{}: nothing to replace", ctx);
                    let o = o.unwrap();
                    prop_assert_eq!(o.value, v, "{}", ctx);
                    prop_assert!(!m.is_expired(&o, now), "{}: an expired entry replaced", ctx);
                    m.replaced += 1;
                }
                RemovalCause::Expired => {
                    // The old value of the key written may be freed as
                    // expired by the write's sweep.
                    if new_key == Some(k)
                        && let Some(o) = old.as_ref().filter(|o| o.value == v)
                        && m.is_expired(o, now)
                    {
                        old = None;
                        m.expired += 1;
                        continue;
                    }
                    let e = m.entries.get(&k);
                    prop_assert!(e.is_some(), "{}: not in the model", ctx);
                    let e = e.unwrap();
                    prop_assert_eq!(e.value, v, "{}", ctx);
                    prop_assert!(m.is_expired(e, now), "{}: freed alive", ctx);
                    m.entries.remove(&k);
                    m.expired += 1;
                }
                RemovalCause::Capacity => {
                    let e = m.entries.get(&k);
                    prop_assert!(e.is_some(), "{}: not in the model", ctx);
                    let e = e.unwrap().clone();
                    prop_assert_eq!(e.value, v, "{}", ctx);
                    prop_assert!(!m.is_expired(&e, now), "{}: expired entry evicted", ctx);
                    if cfg.policy == Policy::Ttl && cfg.shards == 1 {
                        // Nearest its expiry, the entry being written
                        // aside (never its own write's victim unless
                        // alone).
                        let d = m.deadline(&e);
                        let alone = m.entries.len() == 1;
                        let nearest = m
                            .entries
                            .iter()
                            .filter(|&(key, _)| alone || Some(*key) != new_key)
                            .map(|(_, e)| m.deadline(e))
                            .min();
                        prop_assert_eq!(Some(d), nearest, "{}: Ttl's victim", ctx);
                    }
                    m.entries.remove(&k);
                    m.capacity += 1;
                    evicted = true;
                }
                RemovalCause::Removed => {
                    let e = m.entries.get(&k);
                    prop_assert!(e.is_some(), "{}: not in the model", ctx);
                    let e = e.unwrap();
                    prop_assert_eq!(e.value, v, "{}", ctx);
                    prop_assert!(!m.is_expired(e, now), "{}: an expired entry removed", ctx);
                    m.entries.remove(&k);
                    m.removed += 1;
                }
                _ => prop_assert!(false, "{}: unexpected cause", ctx),
            }
        }
        prop_assert!(
            old.is_none(),
            "step {}: {:?}: old value not heard: {:?}",
            step,
            op,
            old
        );
        let expired = m.expired_keys(now);
        if evicted {
            prop_assert!(
                expired.is_empty(),
                "step {}: {:?}: evicted for capacity while {:?} had expired",
                step,
                op,
                expired
            );
        }
        let sweeps = match op {
            Op::RunPending | Op::Retain(_) | Op::InvalidateAll => true,
            Op::Insert(..) | Op::InsertTtl(..) | Op::Get(_) => cfg.shards == 1,
            _ => false,
        };
        if sweeps {
            prop_assert!(
                expired.is_empty(),
                "step {}: {:?}: {:?} expired and not freed",
                step,
                op,
                expired
            );
        }
        let weight: u64 = m.entries.values().map(|e| e.weight).sum();
        prop_assert_eq!(cache.weighted_size(), weight, "step {}: {:?}", step, op);
        prop_assert!(weight <= cfg.capacity, "step {}: over capacity", step);
        let stats = cache.stats();
        prop_assert_eq!(
            (stats.hits, stats.misses),
            (m.hits, m.misses),
            "step {}",
            step
        );
        let ev = stats.evictions;
        prop_assert_eq!(
            (ev.expired, ev.capacity, ev.replaced, ev.removed),
            (m.expired, m.capacity, m.replaced, m.removed),
            "step {}: {:?}",
            step,
            op
        );
    }
    // At the end, every entry the model holds alive is there.
    let now = clock.nanos();
    let live: Vec<(u8, u16)> = m
        .entries
        .iter()
        .filter(|(_, e)| !m.is_expired(e, now))
        .map(|(k, e)| (*k, e.value))
        .collect();
    for (k, v) in live {
        prop_assert!(cache.contains_key(&k), "{} missing at the end", k);
        prop_assert_eq!(cache.get(&k), Some(v), "{} at the end", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn expiry_agrees_with_a_shadow_model(cfg in config(), ops in prop::collection::vec(op(), 1..120)) {
        run(&cfg, &ops)?;
    }
}

/// Writers, readers and removers on 2 to 4 threads, with mixed per-entry
/// time-to-lives, a time-to-idle in some rounds and a clock that one thread
/// moves on: every value written is heard exactly once (by the end, with
/// everything invalidated), never as expired if it could not have expired,
/// a read never returns a value past its deadline, and the statistics add
/// up.
#[test]
fn concurrent_writes_and_reads_hear_every_value_once() {
    use std::collections::HashMap;
    const PER_THREAD: u32 = 1500;
    for round in 0..12_u64 {
        let threads = 2 + (round % 3) as u32;
        let policy = [
            Policy::Adaptive,
            Policy::Lru,
            Policy::Lfu,
            Policy::Fifo,
            Policy::Ttl,
        ][(round % 5) as usize];
        let tti = round % 4 == 3;
        let clock = TwoWayClock::new();
        let log: Arc<Mutex<Vec<(u32, u32, RemovalCause)>>> = Arc::default();
        let sink = Arc::clone(&log);
        let mut builder = LocalCache::<u32, u32>::builder()
            .max_capacity(48)
            .shards(4)
            .policy(policy)
            .clock(clock.clone())
            .weigher(|_: &u32, v: &u32| v % 3 + 1)
            .eviction_listener(move |k: &u32, v: &u32, c| sink.lock().unwrap().push((*k, *v, c)));
        if tti {
            builder = builder.time_to_idle(Duration::from_millis(20));
        }
        let cache = builder.build().unwrap();
        // Per value: the clock after its write returned, and its ttl.
        let written: Vec<Mutex<HashMap<u32, (u64, u64)>>> =
            (0..threads).map(|_| Mutex::default()).collect();
        // Per read: the clock before it, and the value it returned.
        let reads: Mutex<Vec<(u64, u32)>> = Mutex::default();
        let counts: Mutex<(u64, u64)> = Mutex::default();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (cache, clock, written, reads, counts) =
                    (&cache, &clock, &written, &reads, &counts);
                s.spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (round << 16 | u64::from(t));
                    let (mut inserts, mut gets) = (0, 0);
                    for i in 0..PER_THREAD {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let key = (rng >> 8) as u32 % 96;
                        let value = t << 24 | i;
                        match rng % 8 {
                            0..=3 => {
                                let ttl = match (rng >> 40) % 8 {
                                    0 => Duration::MAX,
                                    1 => Duration::from_secs(3600),
                                    n => Duration::from_millis(n * 4),
                                };
                                cache.insert_with_ttl(key, value, ttl);
                                let nanos = u64::try_from(ttl.as_nanos()).unwrap_or(NEVER);
                                written[t as usize]
                                    .lock()
                                    .unwrap()
                                    .insert(value, (clock.nanos(), nanos));
                                inserts += 1;
                            }
                            4..=6 => {
                                let before = clock.nanos();
                                if let Some(v) = cache.get(&key) {
                                    reads.lock().unwrap().push((before, v));
                                }
                                gets += 1;
                            }
                            _ => {
                                cache.remove(&key);
                            }
                        }
                        if t == 0 && i % 8 == 0 {
                            clock.set(clock.nanos() + MS);
                        }
                    }
                    let mut c = counts.lock().unwrap();
                    c.0 += inserts;
                    c.1 += gets;
                });
            }
        });
        let written: HashMap<u32, (u64, u64)> = written
            .into_iter()
            .flat_map(|w| w.into_inner().unwrap())
            .collect();
        let end = clock.nanos();
        let tti_nanos = if tti { 20 * MS } else { NEVER };
        for (before, v) in reads.into_inner().unwrap() {
            let (after, ttl) = written[&v];
            assert!(
                after.saturating_add(ttl) > before,
                "round {round}: {v} read at {before}, written by {after} with ttl {ttl}"
            );
        }
        let stats = cache.stats();
        let (inserts, gets) = counts.into_inner().unwrap();
        assert_eq!(stats.inserts, inserts, "round {round}");
        assert_eq!(stats.hits + stats.misses, gets, "round {round}");
        cache.invalidate_all();
        assert_eq!(cache.weighted_size(), 0, "round {round}");
        let events = std::mem::take(&mut *log.lock().unwrap());
        let mut heard = HashMap::new();
        for &(_, v, cause) in &events {
            assert!(
                heard.insert(v, cause).is_none(),
                "round {round}: {v} heard twice"
            );
            let (_, ttl) = written[&v];
            if cause == RemovalCause::Expired {
                assert!(
                    ttl.min(tti_nanos) <= end,
                    "round {round}: {v} (ttl {ttl}) heard as expired"
                );
            }
        }
        assert_eq!(heard.len(), written.len(), "round {round}: values unheard");
        assert_eq!(
            cache.stats().evictions.total(),
            events.len() as u64,
            "round {round}"
        );
    }
}
