//! State-machine property tests: random operation sequences run against the
//! cache and against a simple reference model, checked after every step.
//!
//! With one shard, `Lru`, `Lfu`, `Fifo` and `Ttl` must pick exactly the
//! victim the textbook policy picks. For every policy and shard count, the
//! listener must report each entry's departure exactly once with the right
//! cause, reads must agree with the model (never an expired value, on a mock
//! clock), and the weight must never exceed the capacity.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use torque_cache::{LocalCache, MockClock, Policy, RemovalCause};

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u16),
    InsertTtl(u8, u16, u8),
    Get(u8),
    Remove(u8),
    Contains(u8),
    Advance(u8),
    Retain(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..12u8;
    prop_oneof![
        6 => (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (key.clone(), any::<u16>(), 0..6u8).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        6 => key.clone().prop_map(Op::Get),
        1 => key.clone().prop_map(Op::Remove),
        1 => key.prop_map(Op::Contains),
        1 => (0..4u8).prop_map(Op::Advance),
        1 => (0..3u8).prop_map(Op::Retain),
    ]
}

type Event = (u8, u16, RemovalCause);

#[derive(Debug, Clone)]
struct Entry {
    value: u16,
    inserted: u64,
    used: u64,
    uses: u64,
    deadline: u64,
}

/// The textbook policies over a plain map; time in whole seconds.
#[derive(Debug)]
struct Model {
    policy: Policy,
    capacity: usize,
    /// Whether the model predicts victims and sweeps (one shard, textbook
    /// policy); otherwise it follows the cache's reported evictions.
    exact: bool,
    now: u64,
    tick: u64,
    entries: BTreeMap<u8, Entry>,
}

impl Model {
    fn expired(&self, e: &Entry) -> bool {
        e.deadline <= self.now
    }

    fn sweep(&mut self, out: &mut Vec<Event>) {
        if !self.exact {
            return;
        }
        let now = self.now;
        let gone: Vec<u8> = self
            .entries
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            let e = self.entries.remove(&k).unwrap();
            out.push((k, e.value, RemovalCause::Expired));
        }
    }

    /// The entry to evict for the write of `written`: the textbook
    /// policies make room before they insert, so the entry written is never
    /// its own write's victim while another is left (for `Lru` it never is
    /// anyway; for `Lfu` its one use, for `Ttl` a deadline nearer than every
    /// resident's, and for `Fifo` a rewrite of the oldest entry with a
    /// weigher would make it one).
    fn victim(&self, written: u8) -> u8 {
        let by = |e: &Entry| match self.policy {
            Policy::Lru => (e.used, 0),
            Policy::Fifo => (e.inserted, 0),
            Policy::Lfu => (e.uses, e.used),
            Policy::Ttl => (e.deadline, e.inserted),
            _ => unreachable!("no exact model"),
        };
        let spared = |k: &u8| *k == written && self.entries.len() > 1;
        *self
            .entries
            .iter()
            .filter(|(k, _)| !spared(k))
            .min_by_key(|(_, e)| by(e))
            .unwrap()
            .0
    }

    fn insert(&mut self, k: u8, v: u16, ttl: Option<u64>, out: &mut Vec<Event>) {
        self.tick += 1;
        self.sweep(out);
        // A write sweeps its own shard first, which holds this key.
        if self.entries.get(&k).is_some_and(|e| e.deadline <= self.now) {
            let e = self.entries.remove(&k).unwrap();
            out.push((k, e.value, RemovalCause::Expired));
        }
        let deadline = ttl.map_or(u64::MAX, |t| self.now + t);
        if deadline <= self.now || self.capacity == 0 {
            if let Some(old) = self.entries.remove(&k) {
                out.push((k, old.value, RemovalCause::Replaced));
            }
            let cause = if deadline <= self.now {
                RemovalCause::Expired
            } else {
                RemovalCause::Capacity
            };
            out.push((k, v, cause));
            return;
        }
        let tick = self.tick;
        match self.entries.get_mut(&k) {
            Some(e) => {
                out.push((k, e.value, RemovalCause::Replaced));
                e.value = v;
                e.used = tick;
                e.uses += 1;
                e.deadline = deadline;
            }
            None => {
                self.entries.insert(
                    k,
                    Entry {
                        value: v,
                        inserted: tick,
                        used: tick,
                        uses: 1,
                        deadline,
                    },
                );
            }
        }
        if self.exact {
            while self.entries.len() > self.capacity {
                let k = self.victim(k);
                let e = self.entries.remove(&k).unwrap();
                out.push((k, e.value, RemovalCause::Capacity));
            }
        }
    }

    /// What a read must return.
    fn get(&mut self, k: u8, out: &mut Vec<Event>) -> Option<u16> {
        self.tick += 1;
        self.sweep(out);
        let tick = self.tick;
        let now = self.now;
        let e = self.entries.get_mut(&k)?;
        if e.deadline <= now {
            return None;
        }
        e.used = tick;
        e.uses += 1;
        Some(e.value)
    }

    /// Applies the cache's reported departures that the model did not
    /// predict itself, checking each is legitimate.
    fn follow(&mut self, events: &[Event]) -> Result<(), TestCaseError> {
        for &(k, v, cause) in events {
            match cause {
                RemovalCause::Capacity => {
                    // Rejections on arrival (capacity 0) are not entries.
                    if self.capacity == 0 {
                        continue;
                    }
                    let e = self.entries.remove(&k);
                    // An expired entry leaves as expired, never for capacity.
                    prop_assert!(
                        !e.as_ref().is_some_and(|e| self.expired(e)),
                        "{} evicted for capacity after it expired",
                        k
                    );
                    prop_assert_eq!(e.map(|e| e.value), Some(v), "evicted {} not resident", k);
                }
                RemovalCause::Expired => {
                    if let Some(e) = self.entries.get(&k)
                        && e.value == v
                        && self.expired(e)
                    {
                        self.entries.remove(&k);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn run(policy: Policy, capacity: usize, shards: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let log: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = Arc::clone(&log);
    let clock = MockClock::new();
    let cache: LocalCache<u8, u16> = LocalCache::builder()
        .max_capacity(capacity as u64)
        .policy(policy)
        .shards(shards)
        .clock(clock.clone())
        .eviction_listener(move |k: &u8, v: &u16, c| sink.lock().unwrap().push((*k, *v, c)))
        .build()
        .unwrap();
    let exact = shards == 1 && policy != Policy::Adaptive;
    let mut model = Model {
        policy,
        capacity,
        exact,
        now: 0,
        tick: 0,
        entries: BTreeMap::new(),
    };
    let (mut gets, mut departures) = (0u64, 0u64);
    for op in ops {
        let mut expected = Vec::new();
        match *op {
            Op::Insert(k, v) => {
                cache.insert(k, v);
                model.insert(k, v, None, &mut expected);
            }
            Op::InsertTtl(k, v, t) => {
                cache.insert_with_ttl(k, v, Duration::from_secs(u64::from(t)));
                model.insert(k, v, Some(u64::from(t)), &mut expected);
            }
            Op::Get(k) => {
                gets += 1;
                let got = cache.get(&k);
                let want = model.get(k, &mut expected);
                prop_assert_eq!(got, want, "get({}) after {:?}", k, op);
            }
            Op::Contains(k) => {
                let want = model
                    .entries
                    .get(&k)
                    .is_some_and(|e| e.deadline > model.now);
                prop_assert_eq!(cache.contains_key(&k), want);
                // About one read in 64 sweeps a shard (here the only
                // one): whatever has expired then leaves.
                if exact && !log.lock().unwrap().is_empty() {
                    model.sweep(&mut expected);
                }
            }
            Op::Remove(k) => {
                let got = cache.remove(&k);
                // A remove write-locks the key's shard (here the only one)
                // and frees what has expired in it first, the key too.
                model.sweep(&mut expected);
                let want = match model.entries.remove(&k) {
                    Some(e) if e.deadline <= model.now => {
                        expected.push((k, e.value, RemovalCause::Expired));
                        None
                    }
                    Some(e) => {
                        expected.push((k, e.value, RemovalCause::Removed));
                        Some(e.value)
                    }
                    None => None,
                };
                prop_assert_eq!(got, want);
            }
            Op::Advance(s) => {
                clock.advance(Duration::from_secs(u64::from(s)));
                model.now += u64::from(s);
            }
            Op::Retain(m) => {
                cache.retain(|k, _| k % 3 != m);
                // Expired entries leave first, as expired, in every shard;
                // the predicate never sees them.
                let now = model.now;
                let expired: Vec<u8> = model
                    .entries
                    .iter()
                    .filter(|(_, e)| e.deadline <= now)
                    .map(|(k, _)| *k)
                    .collect();
                for k in expired {
                    let e = model.entries.remove(&k).unwrap();
                    expected.push((k, e.value, RemovalCause::Expired));
                }
                let gone: Vec<u8> = model
                    .entries
                    .keys()
                    .copied()
                    .filter(|k| k % 3 == m)
                    .collect();
                for k in gone {
                    let e = model.entries.remove(&k).unwrap();
                    expected.push((k, e.value, RemovalCause::Removed));
                }
            }
        }
        let mut seen = std::mem::take(&mut *log.lock().unwrap());
        departures += seen.len() as u64;
        if exact {
            seen.sort_by_key(|e| (e.0, e.1, e.2 as u8));
            expected.sort_by_key(|e| (e.0, e.1, e.2 as u8));
            prop_assert_eq!(&seen, &expected, "departures after {:?}", op);
        } else {
            // The model predicted the replaced/removed/expired-on-arrival
            // ones; the cache decides the rest.
            for e in &expected {
                prop_assert!(seen.contains(e), "missing {:?} after {:?}", e, op);
            }
            model.follow(&seen)?;
        }
        prop_assert!(cache.weighted_size() <= capacity as u64);
        prop_assert_eq!(
            cache.weighted_size() as usize,
            model.entries.len(),
            "after {:?}",
            op
        );
    }
    let s = cache.stats();
    prop_assert_eq!(s.hits + s.misses, gets);
    prop_assert_eq!(s.evictions.total(), departures);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lru_matches_model(cap in 0..6usize, ops in prop::collection::vec(op(), 1..120)) {
        run(Policy::Lru, cap, 1, &ops)?;
    }

    #[test]
    fn lfu_matches_model(cap in 0..6usize, ops in prop::collection::vec(op(), 1..120)) {
        run(Policy::Lfu, cap, 1, &ops)?;
    }

    #[test]
    fn fifo_matches_model(cap in 0..6usize, ops in prop::collection::vec(op(), 1..120)) {
        run(Policy::Fifo, cap, 1, &ops)?;
    }

    #[test]
    fn ttl_matches_model(cap in 0..6usize, ops in prop::collection::vec(op(), 1..120)) {
        run(Policy::Ttl, cap, 1, &ops)?;
    }

    #[test]
    fn adaptive_keeps_invariants(cap in 0..6usize, ops in prop::collection::vec(op(), 1..120)) {
        run(Policy::Adaptive, cap, 1, &ops)?;
    }

    #[test]
    fn sharded_caches_keep_invariants(
        policy in prop::sample::select(vec![Policy::Lru, Policy::Lfu, Policy::Fifo, Policy::Ttl, Policy::Adaptive]),
        shards in prop::sample::select(vec![2usize, 4, 8]),
        cap in 0..10usize,
        ops in prop::collection::vec(op(), 1..150),
    ) {
        run(policy, cap, shards, &ops)?;
    }
}
