//! The cluster's decisions, sans-IO: which host serves a write or a read,
//! which host is down and when to try it again, when a host's role is due
//! for a re-check, and each host's load (requests in flight, peak-EWMA
//! latency). No runtime, socket or clock of its own — every call takes `now` —
//! so its tests drive it deterministically in memory; the async
//! [`Cluster`](crate::Cluster) wraps it in one mutex.

use std::time::{Duration, Instant};

/// Which hosts take reads, and how a read picks among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Balance {
    /// Each healthy replica in turn.
    RoundRobin,
    /// The healthy replica with the fewest requests in flight (checkouts not
    /// yet returned); ties go round-robin.
    LeastBusy,
    /// Power of two choices on peak-EWMA latency: two healthy replicas at
    /// random, and the one with the lower cost, its latency estimate times
    /// one more than its requests in flight. Latency is how long checkouts
    /// were held (from the `get_read()` call to the connection's return) and
    /// role probes took, as a peak-sensitive moving average that decays over
    /// `latency_decay`. The default.
    #[default]
    PeakEwma,
}

/// A server's role, as its last role probe (or the configuration) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Read-only (for PostgreSQL: `pg_is_in_recovery()` is true).
    Replica,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state machine's settings.
#[derive(Debug, Clone)]
pub(crate) struct HostsConfig {
    pub(crate) balance: Balance,
    pub(crate) role_check_interval: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) latency_decay: Duration,
    pub(crate) seed: u64,
}

/// Peak-EWMA (Finagle's `PeakEwma`, as in linkerd and tower's `PeakEwma`): a
/// sample above the estimate replaces it at once; below, the estimate moves
/// toward it with weight `exp(-elapsed / decay)`. Read back, it decays toward
/// zero with the same weight, so an old peak fades; the cost multiplies it
/// by the load, so a slow host still gets work once the fast one is busy.
#[derive(Debug, Clone, Copy, Default)]
struct PeakEwma {
    nanos: f64,
    at: Option<Instant>,
}

impl PeakEwma {
    fn weight(at: Instant, now: Instant, decay: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        (-elapsed / decay.as_secs_f64().max(f64::MIN_POSITIVE)).exp()
    }

    fn observe(&mut self, sample: Duration, now: Instant, decay: Duration) {
        let sample = sample.as_nanos() as f64;
        self.nanos = match self.at {
            None => sample,
            Some(_) if sample > self.nanos => sample,
            Some(at) => {
                let w = Self::weight(at, now, decay);
                self.nanos * w + sample * (1.0 - w)
            }
        };
        self.at = Some(now);
    }

    fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        match self.at {
            None => 0.0,
            Some(at) => self.nanos * Self::weight(at, now, decay),
        }
    }
}

#[derive(Debug, Clone)]
struct Host {
    role: Role,
    /// `Some` while the host is down: skipped by callers until a probe
    /// succeeds; the next probe is at `next_check`.
    failures: Option<u32>,
    in_flight: usize,
    latency: PeakEwma,
    next_check: Instant,
    probing: bool,
    /// A change was reported while a probe was in flight, which may have
    /// read the role before it: probe again once that probe is in.
    recheck: bool,
}

impl Host {
    /// Something says this up host's role may have changed: probe it now,
    /// or, if a probe is in flight (it may have read the role before the
    /// change), again as soon as that one is in. A down host is probed on
    /// its backoff anyway.
    fn recheck_now(&mut self, now: Instant) {
        if self.failures.is_some() {
            return;
        }
        if self.probing {
            self.recheck = true;
        } else if self.next_check > now {
            self.next_check = now;
        }
    }
}

/// What the cluster knows about one host, from [`Hosts::host`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HostView {
    pub(crate) role: Role,
    pub(crate) up: bool,
    pub(crate) in_flight: usize,
    pub(crate) latency: Duration,
}

/// The hosts' state.
#[derive(Debug)]
pub(crate) struct Hosts {
    cfg: HostsConfig,
    hosts: Vec<Host>,
    next_turn: usize,
    rng: u64,
}

impl Hosts {
    /// Hosts with their configured roles, all due for a role probe at `now`.
    pub(crate) fn new(cfg: HostsConfig, roles: &[Role], now: Instant) -> Self {
        let hosts = roles
            .iter()
            .map(|&role| Host {
                role,
                failures: None,
                in_flight: 0,
                latency: PeakEwma::default(),
                next_check: now,
                probing: false,
                recheck: false,
            })
            .collect();
        Hosts {
            rng: cfg.seed,
            cfg,
            hosts,
            next_turn: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.hosts.len()
    }

    pub(crate) fn host(&self, i: usize, now: Instant) -> HostView {
        let h = &self.hosts[i];
        HostView {
            role: h.role,
            up: h.failures.is_none(),
            in_flight: h.in_flight,
            latency: Duration::from_nanos(h.latency.estimate(now, self.cfg.latency_decay) as u64),
        }
    }

    /// splitmix64, as in the pool's core.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn usable(&self, i: usize, role: Role, exclude: &[usize]) -> bool {
        let h = &self.hosts[i];
        h.role == role && h.failures.is_none() && !exclude.contains(&i)
    }

    /// The host for a write: the first healthy primary (in configuration
    /// order), skipping `exclude`.
    pub(crate) fn pick_write(&self, exclude: &[usize]) -> Option<usize> {
        (0..self.hosts.len()).find(|&i| self.usable(i, Role::Primary, exclude))
    }

    /// The host for a read: a healthy replica chosen by the balance policy,
    /// else the primary; skipping `exclude`. Allocates nothing: it runs on
    /// every `get_read()`.
    pub(crate) fn pick_read(&mut self, now: Instant, exclude: &[usize]) -> Option<usize> {
        let n = (0..self.hosts.len())
            .filter(|&i| self.usable(i, Role::Replica, exclude))
            .count();
        if n == 0 {
            return self.pick_write(exclude);
        }
        let turn = self.next_turn % n;
        self.next_turn = self.next_turn.wrapping_add(1);
        let (a, b) = if n > 1 && self.cfg.balance == Balance::PeakEwma {
            let a = (self.next_random() % n as u64) as usize;
            (
                a,
                (a + 1 + (self.next_random() % (n as u64 - 1)) as usize) % n,
            )
        } else {
            (0, 0)
        };
        let this = &*self;
        let replicas =
            || (0..this.hosts.len()).filter(move |&i| this.usable(i, Role::Replica, exclude));
        if n == 1 {
            return replicas().next();
        }
        match this.cfg.balance {
            Balance::RoundRobin => replicas().nth(turn),
            // Fewest in flight; among equals, the first at or after this turn.
            Balance::LeastBusy => replicas()
                .enumerate()
                .min_by_key(|&(pos, i)| (this.hosts[i].in_flight, (pos + n - turn) % n))
                .map(|(_, i)| i),
            Balance::PeakEwma => {
                let (a, b) = (replicas().nth(a)?, replicas().nth(b)?);
                Some(if this.cost(b, now) < this.cost(a, now) {
                    b
                } else {
                    a
                })
            }
        }
    }

    fn cost(&self, i: usize, now: Instant) -> f64 {
        let h = &self.hosts[i];
        h.latency.estimate(now, self.cfg.latency_decay) * (h.in_flight as f64 + 1.0)
    }

    /// A checkout from host `i` begins (counted until [`finished`](Self::finished)).
    pub(crate) fn started(&mut self, i: usize) {
        self.hosts[i].in_flight += 1;
    }

    /// A checkout from host `i` ended; `held` is how long it took, checkout
    /// to return, or `None` when it failed.
    pub(crate) fn finished(&mut self, i: usize, held: Option<Duration>, now: Instant) {
        let h = &mut self.hosts[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        if let Some(held) = held {
            h.latency.observe(held, now, self.cfg.latency_decay);
        }
    }

    /// Host `i` failed (a connect, a check or a probe): skip it, and probe it
    /// again after a backoff that doubles per failure, with equal jitter.
    pub(crate) fn failed(&mut self, i: usize, now: Instant) {
        let failures = self.hosts[i].failures.map_or(1, |f| f.saturating_add(1));
        let exp = self
            .cfg
            .backoff_min
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(self.cfg.backoff_max);
        let half = exp / 2;
        let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        let delay = half + half.mul_f64(fraction);
        let h = &mut self.hosts[i];
        h.failures = Some(failures);
        h.next_check = crate::core::later(now, delay);
    }

    /// A caller's connection to host `i` saw a "read-only" error (PostgreSQL's
    /// SQLSTATE 25006): re-check its role now.
    pub(crate) fn read_only_seen(&mut self, i: usize, now: Instant) {
        self.hosts[i].recheck_now(now);
    }

    /// Hosts whose role check (or retry, if down) is due; they are marked
    /// as being probed until [`probe_succeeded`](Self::probe_succeeded) or
    /// [`probe_failed`](Self::probe_failed).
    pub(crate) fn probes_due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if !h.probing && h.next_check <= now {
                h.probing = true;
                due.push(i);
            }
        }
        due
    }

    /// When the next probe is due, if any host is not being probed.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.hosts
            .iter()
            .filter(|h| !h.probing)
            .map(|h| h.next_check)
            .min()
    }

    /// A probe of host `i` answered `role` in `rtt`: the host is up. Returns
    /// the previous role if it changed.
    pub(crate) fn probe_succeeded(
        &mut self,
        i: usize,
        role: Role,
        rtt: Duration,
        now: Instant,
    ) -> Option<Role> {
        let decay = self.cfg.latency_decay;
        let h = &mut self.hosts[i];
        h.probing = false;
        h.failures = None;
        h.latency.observe(rtt, now, decay);
        let old = std::mem::replace(&mut h.role, role);
        // A change reported while this probe was in flight, and not seen by
        // it: it may have read the role before the change; ask again now.
        h.next_check = if std::mem::take(&mut h.recheck) && old == role {
            now
        } else {
            crate::core::later(now, self.cfg.role_check_interval)
        };
        if old != role {
            // A demotion or a promotion means a failover: learn the other
            // hosts' new roles now rather than at their next scheduled check
            // (until then, a promoted host and the old primary both look
            // writable, or neither does).
            for (j, other) in self.hosts.iter_mut().enumerate() {
                if j != i {
                    other.recheck_now(now);
                }
            }
        }
        (old != role).then_some(old)
    }

    /// A probe of host `i` got no connection because callers held them
    /// all: nothing was learnt, so the host keeps its role and its up or
    /// down state (and its backoff), and is probed again after the
    /// shortest backoff.
    pub(crate) fn probe_postponed(&mut self, i: usize, now: Instant) {
        let h = &mut self.hosts[i];
        h.probing = false;
        h.recheck = false;
        h.next_check = crate::core::later(now, self.cfg.backoff_min);
    }

    /// A probe of host `i` failed: it is down, retried after a backoff.
    pub(crate) fn probe_failed(&mut self, i: usize, now: Instant) {
        self.hosts[i].probing = false;
        self.hosts[i].recheck = false;
        self.failed(i, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(balance: Balance) -> HostsConfig {
        HostsConfig {
            balance,
            role_check_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            latency_decay: Duration::from_secs(10),
            seed: 7,
        }
    }

    const P: Role = Role::Primary;
    const R: Role = Role::Replica;

    fn count_reads(hosts: &mut Hosts, now: Instant, n: usize) -> Vec<usize> {
        let mut counts = vec![0; hosts.len()];
        for _ in 0..n {
            let i = hosts.pick_read(now, &[]).unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_takes_each_replica_in_turn_and_never_the_primary() {
        let now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::RoundRobin), &[P, R, R, R], now);
        let picks: Vec<_> = (0..6).map(|_| hosts.pick_read(now, &[]).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(hosts.pick_write(&[]), Some(0));
    }

    #[test]
    fn least_busy_picks_the_replica_with_fewest_in_flight() {
        let now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::LeastBusy), &[P, R, R, R], now);
        for _ in 0..3 {
            let i = hosts.pick_read(now, &[]).unwrap();
            hosts.started(i);
        }
        for i in 1..=3 {
            assert_eq!(hosts.host(i, now).in_flight, 1, "spread one each");
        }
        hosts.finished(2, Some(Duration::from_millis(1)), now);
        assert_eq!(hosts.pick_read(now, &[]), Some(2));
    }

    #[test]
    fn peak_ewma_prefers_the_faster_replica() {
        let mut now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::PeakEwma), &[P, R, R], now);
        let mut counts = [0usize; 3];
        for _ in 0..1000 {
            let i = hosts.pick_read(now, &[]).unwrap();
            counts[i] += 1;
            let held = if i == 1 { 50 } else { 5 };
            hosts.started(i);
            now += Duration::from_millis(held);
            hosts.finished(i, Some(Duration::from_millis(held)), now);
        }
        assert_eq!(
            counts[0], 0,
            "reads never go to the primary while replicas are up"
        );
        assert!(
            counts[2] > 4 * counts[1],
            "the fast replica takes most: {counts:?}"
        );
    }

    #[test]
    fn peak_ewma_weighs_load_too() {
        let now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::PeakEwma), &[P, R, R], now);
        hosts.observe_both(now, Duration::from_millis(10));
        // Host 1 has 5 requests in flight: 10 ms x 6 > 10 ms x 1.
        for _ in 0..5 {
            hosts.started(1);
        }
        let counts = count_reads(&mut hosts, now, 20);
        assert_eq!(counts[1], 0, "{counts:?}");
    }

    impl Hosts {
        fn observe_both(&mut self, now: Instant, d: Duration) {
            for i in 1..self.len() {
                self.hosts[i]
                    .latency
                    .observe(d, now, self.cfg.latency_decay);
            }
        }
    }

    #[test]
    fn peak_ewma_takes_a_peak_at_once_and_forgets_it_slowly() {
        let decay = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        e.observe(Duration::from_millis(10), t0, decay);
        e.observe(
            Duration::from_millis(100),
            t0 + Duration::from_millis(1),
            decay,
        );
        let at = t0 + Duration::from_millis(1);
        assert!(
            (e.estimate(at, decay) - 100e6).abs() < 1.0,
            "a peak is taken at once"
        );
        let later = at + decay;
        let expected = 100e6 * (-1.0f64).exp();
        assert!((e.estimate(later, decay) - expected).abs() < 1e3);
        // A low sample long after moves the estimate most of the way down.
        e.observe(Duration::from_millis(10), at + decay * 5, decay);
        assert!(e.estimate(at + decay * 5, decay) < 11e6);
    }

    #[test]
    fn reads_fall_back_to_the_primary_when_no_replica_is_up() {
        let now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::RoundRobin), &[P, R, R], now);
        hosts.failed(1, now);
        assert_eq!(count_reads(&mut hosts, now, 4), [0, 0, 4]);
        hosts.failed(2, now);
        assert_eq!(hosts.pick_read(now, &[]), Some(0));
        // Writes never go to a replica.
        hosts.failed(0, now);
        assert_eq!(hosts.pick_read(now, &[]), None);
        assert_eq!(hosts.pick_write(&[]), None);
    }

    #[test]
    fn a_down_host_is_probed_with_growing_backoff_and_comes_back() {
        let mut c = cfg(Balance::RoundRobin);
        // The primary's role check stays out of the way.
        c.role_check_interval = Duration::from_secs(3600);
        let mut now = Instant::now();
        let mut hosts = Hosts::new(c.clone(), &[P, R], now);
        let mut due = hosts.probes_due(now);
        assert_eq!(due, [0, 1], "every host is probed at start");
        hosts.probe_succeeded(0, P, Duration::from_millis(1), now);
        hosts.probe_failed(1, now);
        let mut delays = Vec::new();
        for _ in 0..8 {
            // The down host's retry comes before the primary's role check.
            let next = hosts.next_due().unwrap();
            assert!(next > now);
            delays.push(next - now);
            now = next;
            due = hosts.probes_due(now);
            assert_eq!(due, [1]);
            assert_eq!(hosts.pick_read(now, &[]), Some(0), "skipped while down");
            hosts.probe_failed(1, now);
        }
        // Equal jitter: each delay is in [exp/2, exp] with exp doubling from
        // backoff_min, so delays never shrink until exp reaches backoff_max.
        let uncapped = (0..)
            .take_while(|k| c.backoff_min * (1 << k) <= c.backoff_max)
            .count();
        assert!(uncapped >= 3 && uncapped < delays.len());
        for w in delays[..uncapped].windows(2) {
            assert!(w[1] >= w[0], "{delays:?}");
        }
        assert!(delays[0] >= c.backoff_min / 2 && delays[0] <= c.backoff_min);
        assert!(delays.iter().all(|d| *d <= c.backoff_max), "{delays:?}");
        // Back: the next probe succeeds, and reads go to it again.
        now = hosts.next_due().unwrap();
        assert_eq!(hosts.probes_due(now), [1]);
        hosts.probe_succeeded(1, R, Duration::from_millis(1), now);
        assert_eq!(hosts.pick_read(now, &[]), Some(1));
        assert!(hosts.host(1, now).up);
    }

    #[test]
    fn a_role_flip_is_seen_on_the_timer_and_moves_writes() {
        let c = cfg(Balance::RoundRobin);
        let mut now = Instant::now();
        let mut hosts = Hosts::new(c.clone(), &[P, R], now);
        for i in hosts.probes_due(now) {
            let role = if i == 0 { P } else { R };
            assert_eq!(hosts.probe_succeeded(i, role, Duration::ZERO, now), None);
        }
        assert_eq!(hosts.next_due(), Some(now + c.role_check_interval));
        now += c.role_check_interval;
        assert_eq!(hosts.probes_due(now), [0, 1]);
        assert_eq!(hosts.probe_succeeded(0, R, Duration::ZERO, now), Some(P));
        assert_eq!(hosts.probe_succeeded(1, P, Duration::ZERO, now), Some(R));
        assert_eq!(hosts.pick_write(&[]), Some(1));
        assert_eq!(hosts.pick_read(now, &[]), Some(0));
    }

    #[test]
    fn a_read_only_error_makes_the_role_check_due_now() {
        let c = cfg(Balance::RoundRobin);
        let now = Instant::now();
        let mut hosts = Hosts::new(c, &[P, R], now);
        for i in hosts.probes_due(now) {
            hosts.probe_succeeded(i, if i == 0 { P } else { R }, Duration::ZERO, now);
        }
        let later = now + Duration::from_millis(10);
        assert!(hosts.probes_due(later).is_empty());
        hosts.read_only_seen(0, later);
        assert_eq!(hosts.next_due(), Some(later));
        assert_eq!(hosts.probes_due(later), [0]);
        // While the probe runs, another report does not start a second one.
        hosts.read_only_seen(0, later);
        assert!(hosts.probes_due(later).is_empty());
        // It was demoted: every other host is re-checked at once, to find
        // the new primary (a promotion does the same).
        assert_eq!(hosts.probe_succeeded(0, R, Duration::ZERO, later), Some(P));
        assert_eq!(hosts.probes_due(later), [1]);
        hosts.probe_succeeded(1, P, Duration::ZERO, later);
        assert_eq!(hosts.pick_write(&[]), Some(1));
    }

    /// A probe in flight may have read the role before the change that a
    /// read-only error (or another host's role change) reports: its answer
    /// says nothing of the change, so the host is re-checked once it is in,
    /// not a whole `role_check_interval` later (writes going on to the
    /// demoted primary, or none to the promoted replica, meanwhile).
    #[test]
    fn a_change_reported_while_a_probe_is_in_flight_is_checked_after_it() {
        let c = cfg(Balance::RoundRobin);
        let now = Instant::now();
        let ms = |n| now + Duration::from_millis(n);
        let mut hosts = Hosts::new(c, &[P, R, R], now);
        for i in hosts.probes_due(now) {
            hosts.probe_succeeded(i, if i == 0 { P } else { R }, Duration::ZERO, now);
        }
        // A read-only error on host 0 while its probe is in flight; the
        // probe answers from before the demotion.
        hosts.read_only_seen(0, ms(10));
        assert_eq!(hosts.probes_due(ms(10)), [0]);
        hosts.read_only_seen(0, ms(11));
        assert!(hosts.probes_due(ms(11)).is_empty(), "one probe at a time");
        assert_eq!(hosts.probe_succeeded(0, P, Duration::ZERO, ms(12)), None);
        assert_eq!(hosts.probes_due(ms(12)), [0], "re-checked at once");
        // Host 0 is seen demoted while host 1's probe is in flight and
        // answers from before host 1's promotion: host 1 is re-checked after
        // it (host 2, not probing, at once).
        hosts.read_only_seen(1, ms(12));
        assert_eq!(hosts.probes_due(ms(12)), [1]);
        assert_eq!(hosts.probe_succeeded(0, R, Duration::ZERO, ms(13)), Some(P));
        assert_eq!(hosts.probes_due(ms(13)), [2]);
        assert_eq!(hosts.probe_succeeded(1, R, Duration::ZERO, ms(14)), None);
        assert_eq!(hosts.probes_due(ms(14)), [1], "re-checked at once");
        assert_eq!(hosts.probe_succeeded(1, P, Duration::ZERO, ms(15)), Some(R));
        assert_eq!(hosts.pick_write(&[]), Some(1));
    }

    #[test]
    fn exclude_skips_hosts_already_tried() {
        let now = Instant::now();
        let mut hosts = Hosts::new(cfg(Balance::LeastBusy), &[P, R, R], now);
        assert_eq!(hosts.pick_read(now, &[1]), Some(2));
        assert_eq!(hosts.pick_read(now, &[1, 2]), Some(0));
        assert_eq!(hosts.pick_read(now, &[0, 1, 2]), None);
        assert_eq!(hosts.pick_write(&[0]), None);
    }
}
