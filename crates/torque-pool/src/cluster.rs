//! [`Cluster`]: one primary and N replicas, a [`Pool`] per host; writes go
//! to the primary, reads are balanced across healthy replicas.
//!
//! The decisions (which host, which is down, when a role check is due, load
//! and latency per host) are in the sans-IO [`hosts`] module; this file runs
//! them: one pool per host, a background task that probes roles and retries
//! down hosts, and the [`ClusterConn`] guard that reports load, latency and
//! read-only errors back.

mod config;
mod hosts;

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout, timeout_at};

pub use config::{ClusterBuilder, ClusterConfig};
pub use hosts::{Balance, Role};

use crate::error::{Chain, PoolError, TimeoutKind};
use crate::manager::Manager;
use crate::pool::{Pool, Pooled};
use crate::status::Status;
use crate::telemetry;
use hosts::{Hosts, HostsConfig};

type BackendError<M> = <M as Manager>::Error;

/// What a [`Cluster`] needs from a manager beyond [`Manager`]: asking a
/// server for its role, and noticing errors that say a server has become
/// read-only.
///
/// `PgManager` implements it (feature `postgres`) with
/// `SELECT pg_is_in_recovery()` and SQLSTATE 25006.
pub trait RoleProbe: Manager {
    /// Asks the server behind `conn` whether it takes writes. Run by the
    /// cluster's background task every `role_check_interval`, bounded by the
    /// pool's `check_timeout`; an error marks the host down.
    fn role(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Role, Self::Error>> + Send;

    /// Whether `conn` has seen an error saying its server does not take
    /// writes (PostgreSQL: SQLSTATE 25006, `read_only_sql_transaction`)
    /// since the last call; clears the mark. Asked when a connection comes
    /// back from a caller; `true` re-checks the host's role at once. The
    /// default never reports one.
    fn take_read_only_error(&self, conn: &Self::Connection) -> bool {
        let _ = conn;
        false
    }
}

/// The state machine's clock is the runtime's (so tests can pause it).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

struct State<E> {
    hosts: Hosts,
    /// Each host's last backend error since its last successful probe.
    last_error: Vec<Option<Arc<E>>>,
    closed: bool,
}

struct Inner<M: RoleProbe> {
    pools: Vec<Pool<M>>,
    state: Mutex<State<BackendError<M>>>,
    wake: Arc<Notify>,
    config: ClusterConfig,
    runtime: tokio::runtime::Handle,
}

/// One primary and N replicas of one database, a [`Pool`] per host.
///
/// - [`get`](Self::get) is for writes: a connection to the primary, never a
///   replica; if the primary is down it fails fast with the primary's error.
/// - [`get_read`](Self::get_read) is for reads that tolerate replication lag:
///   a healthy replica chosen by [`Balance`], else the primary.
/// - Each host's role is re-checked on a timer and when a connection reports
///   a read-only error (PostgreSQL: SQLSTATE 25006), so a demoted primary
///   stops taking writes and a promoted replica starts.
/// - A host whose connect, check or role probe fails is skipped by callers
///   and probed again with exponential backoff; a `get` that hit it moves on
///   to another host within its acquire timeout.
///
/// Cloning is cheap and shares the cluster; dropping the last clone closes
/// it (see [`close`](Self::close)). With the `postgres` feature,
/// `PgCluster` is `Cluster<PgManager>`; docs/pool.md has a guide.
///
/// # Example
/// With a stand-in manager (two in-memory "servers"); `PgManager` is used
/// the same way.
/// ```
/// use torque_pool::{Balance, Cluster, Manager, Role, RoleProbe};
///
/// #[derive(Debug)]
/// struct Server(Role);
///
/// impl Manager for Server {
///     type Connection = Role;
///     type Error = std::io::Error;
///     async fn create(&self) -> Result<Role, std::io::Error> {
///         Ok(self.0)
///     }
///     async fn check(&self, _: &mut Role) -> Result<(), std::io::Error> {
///         Ok(())
///     }
///     fn is_broken(&self, _: &Role) -> bool {
///         false
///     }
/// }
///
/// impl RoleProbe for Server {
///     async fn role(&self, _: &mut Role) -> Result<Role, std::io::Error> {
///         Ok(self.0)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::builder(Server(Role::Primary))
///     .replica(Server(Role::Replica))
///     .balance(Balance::RoundRobin)
///     .build()?;
///
/// let write = cluster.get().await?;
/// assert_eq!((*write, write.host()), (Role::Primary, 0));
/// let read = cluster.get_read().await?;
/// assert_eq!((*read, read.host()), (Role::Replica, 1));
/// # Ok(()) }
/// ```
pub struct Cluster<M: RoleProbe> {
    inner: Arc<Inner<M>>,
    /// Shared by the cluster's handles alone, not by checked-out
    /// connections or the probes, which also hold `inner`.
    handle: Arc<Handle<M>>,
}

impl<M: RoleProbe> Clone for Cluster<M> {
    fn clone(&self) -> Self {
        Cluster {
            inner: self.inner.clone(),
            handle: self.handle.clone(),
        }
    }
}

/// Closes the cluster when the last [`Cluster`] handle goes (a
/// [`ClusterConn`] still out keeps its state alive, but must not keep role
/// probes and its pools' refills going for nobody).
struct Handle<M: RoleProbe> {
    inner: Weak<Inner<M>>,
}

impl<M: RoleProbe> Drop for Handle<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.close();
        }
    }
}

impl<M: RoleProbe + fmt::Debug> fmt::Debug for Cluster<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("pools", &self.inner.pools)
            .field("hosts", &self.hosts())
            .finish_non_exhaustive()
    }
}

/// A snapshot of one host of a [`Cluster`], from [`Cluster::hosts`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HostStatus {
    /// The host's number: 0 is the primary given to the builder, replicas
    /// follow in the order added.
    pub index: usize,
    /// Its role, as its last role probe said (or as configured, before one).
    pub role: Role,
    /// `false` while it is skipped after a failure, until a probe succeeds.
    pub up: bool,
    /// Checkouts from it not yet returned (including ones still waiting).
    pub in_flight: usize,
    /// Its peak-EWMA latency estimate (checkouts held, role probes).
    pub latency: Duration,
    /// Its pool's status.
    pub pool: Status,
}

impl<M: RoleProbe> Cluster<M> {
    /// Starts building a cluster whose primary is `primary`'s server; add
    /// replicas with [`ClusterBuilder::replica`].
    pub fn builder(primary: M) -> ClusterBuilder<M> {
        ClusterBuilder {
            managers: vec![primary],
            config: ClusterConfig::default(),
            seed: None,
        }
    }

    fn start(
        managers: Vec<M>,
        config: ClusterConfig,
        seed: u64,
        runtime: tokio::runtime::Handle,
    ) -> Cluster<M> {
        let roles: Vec<Role> = (0..managers.len())
            .map(|i| if i == 0 { Role::Primary } else { Role::Replica })
            .collect();
        let pools: Vec<Pool<M>> = managers
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let seed = seed.wrapping_add(i as u64 + 1);
                Pool::start(
                    m,
                    config.pool.clone(),
                    seed,
                    runtime.clone(),
                    telemetry::Labels::host(i),
                )
            })
            .collect();
        let hosts = Hosts::new(
            HostsConfig {
                balance: config.balance,
                role_check_interval: config.role_check_interval,
                backoff_min: config.host_backoff_min,
                backoff_max: config.host_backoff_max,
                latency_decay: config.latency_decay,
                seed,
            },
            &roles,
            now(),
        );
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                hosts,
                last_error: vec![None; pools.len()],
                closed: false,
            }),
            pools,
            wake: Arc::new(Notify::new()),
            config,
            runtime,
        });
        inner
            .runtime
            .spawn(watch(Arc::downgrade(&inner), inner.wake.clone()));
        Cluster {
            handle: Arc::new(Handle {
                inner: Arc::downgrade(&inner),
            }),
            inner,
        }
    }

    /// A connection to the primary, for writes (and reads that must see them).
    ///
    /// # Errors
    /// As [`Pool::get`]; when the primary is known down, its last backend
    /// error at once ([`PoolError::Backend`]); [`PoolError::NoHost`] when no
    /// host is primary (for example, mid-failover, before the promoted
    /// replica's role is seen).
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl Future<Output = Result<ClusterConn<M>, PoolError<BackendError<M>>>> + Send + '_ {
        let caller = Location::caller();
        self.checkout(Role::Primary, caller)
    }

    /// A connection for a read: a healthy replica chosen by the [`Balance`]
    /// policy, else the primary. Replicas may lag the primary.
    ///
    /// If the chosen host fails (connect refused, timed out), it is marked
    /// down and the next is tried, all within the pool's `acquire_timeout`.
    ///
    /// # Errors
    /// As [`Pool::get`]; the last host's error when every host failed;
    /// [`PoolError::NoHost`] when none is up.
    #[track_caller]
    pub fn get_read(
        &self,
    ) -> impl Future<Output = Result<ClusterConn<M>, PoolError<BackendError<M>>>> + Send + '_ {
        let caller = Location::caller();
        self.checkout(Role::Replica, caller)
    }

    async fn checkout(
        &self,
        want: Role,
        caller: &'static Location<'static>,
    ) -> Result<ClusterConn<M>, PoolError<BackendError<M>>> {
        let inner = &self.inner;
        let start = Instant::now();
        let deadline = crate::pool::later(start, inner.config.pool.acquire_timeout);
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<PoolError<BackendError<M>>> = None;
        loop {
            let host = {
                let mut st = inner.state.lock();
                if st.closed {
                    return Err(PoolError::Closed);
                }
                let pick = match want {
                    Role::Primary => st.hosts.pick_write(&tried),
                    Role::Replica => st.hosts.pick_read(now(), &tried),
                };
                match pick {
                    Some(i) => {
                        st.hosts.started(i);
                        i
                    }
                    None => return Err(last.unwrap_or_else(|| no_host(&st, want))),
                }
            };
            // Latency is this host's: from its pick, not from the first try.
            let picked_at = if tried.is_empty() {
                start
            } else {
                Instant::now()
            };
            let mut pending = Pending {
                inner,
                host,
                armed: true,
            };
            let acquire = inner.pools[host].acquire(caller);
            // The first try runs under the pool's own deadline; a retry on
            // another host gets what is left of the caller's.
            let result = if tried.is_empty() {
                acquire.await
            } else {
                timeout_at(deadline, acquire)
                    .await
                    .unwrap_or_else(|_| Err(acquire_timed_out(start, &last)))
            };
            match result {
                Ok(conn) => {
                    pending.armed = false;
                    return Ok(ClusterConn {
                        conn: Some(conn),
                        host,
                        since: picked_at,
                        cluster: inner.clone(),
                    });
                }
                Err(e) if is_host_failure(&e) => {
                    drop(pending);
                    inner.host_failed(host, backend_error(&e));
                    tried.push(host);
                    last = Some(e);
                    if Instant::now() >= deadline {
                        return Err(last.unwrap_or_else(|| no_host(&inner.state.lock(), want)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A snapshot of every host, primary first.
    pub fn hosts(&self) -> Vec<HostStatus> {
        let now = now();
        let st = self.inner.state.lock();
        (0..st.hosts.len())
            .map(|i| {
                let h = st.hosts.host(i, now);
                HostStatus {
                    index: i,
                    role: h.role,
                    up: h.up,
                    in_flight: h.in_flight,
                    latency: h.latency,
                    pool: self.inner.pools[i].status(),
                }
            })
            .collect()
    }

    /// Host `index`'s pool (0 is the configured primary).
    ///
    /// # Panics
    /// When there is no such host.
    pub fn pool(&self, index: usize) -> &Pool<M> {
        &self.inner.pools[index]
    }

    /// The settings the cluster runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Closes every host's pool (see [`Pool::close`]) and stops role checks.
    pub fn close(&self) {
        self.inner.close();
    }
}

/// Whether an error from a host's pool means the host itself is failing (as
/// opposed to the pool being busy or closed).
fn is_host_failure<E>(e: &PoolError<E>) -> bool {
    match e {
        PoolError::Backend(_) | PoolError::ConnectPanicked { .. } => true,
        PoolError::Timeout {
            kind, last_error, ..
        } => *kind == TimeoutKind::Create || last_error.is_some(),
        _ => false,
    }
}

fn backend_error<E>(e: &PoolError<E>) -> Option<Arc<E>> {
    match e {
        PoolError::Backend(e) => Some(e.clone()),
        PoolError::Timeout { last_error, .. } => last_error.clone(),
        _ => None,
    }
}

fn acquire_timed_out<E>(start: Instant, last: &Option<PoolError<E>>) -> PoolError<E> {
    PoolError::Timeout {
        kind: TimeoutKind::Acquire,
        waited: start.elapsed(),
        last_error: last.as_ref().and_then(backend_error),
        occupancy: None,
    }
}

/// No host to try: the error of a down host with the wanted role (the
/// primary, for a read that found no replica), else `NoHost`.
fn no_host<E>(st: &State<E>, want: Role) -> PoolError<E> {
    let now = now();
    let down_with = |role: Role| {
        (0..st.hosts.len()).find_map(|i| {
            let h = st.hosts.host(i, now);
            if h.role == role && !h.up {
                st.last_error[i].clone()
            } else {
                None
            }
        })
    };
    let err = match want {
        Role::Primary => down_with(Role::Primary),
        Role::Replica => down_with(Role::Primary).or_else(|| down_with(Role::Replica)),
    };
    match err {
        Some(e) => PoolError::Backend(e),
        None => PoolError::NoHost { role: want },
    }
}

impl<M: RoleProbe> Inner<M> {
    fn close(&self) {
        self.state.lock().closed = true;
        for pool in &self.pools {
            pool.close();
        }
        self.wake.notify_one();
    }

    fn host_failed(&self, host: usize, err: Option<Arc<BackendError<M>>>) {
        {
            let mut st = self.state.lock();
            let was_up = st.hosts.host(host, now()).up;
            // Callers that were on their way when it went down fail on it
            // together: one outage, marked once. Only probes grow the
            // backoff of a host already down.
            if was_up {
                st.hosts.failed(host, now());
                tracing::warn!(host, "host failed; skipping it until a probe succeeds");
            }
            if err.is_some() {
                st.last_error[host] = err;
            }
        }
        self.wake.notify_one();
    }
}

/// Un-counts a checkout that did not complete (failed, or its future was
/// dropped).
struct Pending<'a, M: RoleProbe> {
    inner: &'a Arc<Inner<M>>,
    host: usize,
    armed: bool,
}

impl<M: RoleProbe> Drop for Pending<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            self.inner
                .state
                .lock()
                .hosts
                .finished(self.host, None, now());
        }
    }
}

/// The background task: probes each host's role every
/// `role_check_interval` (sooner after a read-only error) and retries down
/// hosts after their backoff. Holds the cluster weakly, so it ends when the
/// cluster is dropped or closed.
async fn watch<M: RoleProbe>(cluster: Weak<Inner<M>>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = cluster.upgrade() else {
                return;
            };
            let (due, next) = {
                let mut st = inner.state.lock();
                if st.closed {
                    return;
                }
                let due = st.hosts.probes_due(now());
                (due, st.hosts.next_due())
            };
            for host in due {
                inner.runtime.spawn(probe(inner.clone(), host));
            }
            next
        };
        match next {
            Some(at) => {
                let _ = timeout_at(Instant::from_std(at), wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

/// One role probe of `host`: a connection from its pool, then
/// [`RoleProbe::role`].
async fn probe<M: RoleProbe>(inner: Arc<Inner<M>>, host: usize) {
    let mut unfinished = Unfinished {
        inner: &inner,
        host,
        armed: true,
    };
    let pool = &inner.pools[host];
    let start = Instant::now();
    let before = pool.status();
    let outcome: Result<Role, Probed<M>> = async {
        let mut conn = pool.get().await.map_err(|e| {
            if busy(&e, &before, &pool.status()) {
                Probed::Busy
            } else {
                Probed::Failed(backend_error(&e))
            }
        })?;
        // A mark left by a caller is answered by this very probe.
        pool.manager().take_read_only_error(&conn);
        match timeout(pool.config().check_timeout, pool.manager().role(&mut conn)).await {
            Ok(Ok(role)) => Ok(role),
            Ok(Err(e)) => Err(Probed::Failed(Some(Arc::new(e)))),
            Err(_) => Err(Probed::Failed(None)),
        }
    }
    .await;
    let rtt = start.elapsed();
    unfinished.armed = false;
    {
        let mut st = inner.state.lock();
        let now = now();
        let was_up = st.hosts.host(host, now).up;
        match outcome {
            Ok(role) => {
                if let Some(old) = st.hosts.probe_succeeded(host, role, rtt, now) {
                    tracing::warn!(host, from = %old, to = %role, "host changed role");
                }
                st.last_error[host] = None;
                if !was_up {
                    tracing::info!(host, %role, "host is back");
                }
            }
            Err(Probed::Busy) => {
                st.hosts.probe_postponed(host, now);
                tracing::debug!(
                    host,
                    "role probe found every connection in use; the host keeps its state"
                );
            }
            Err(Probed::Failed(e)) => {
                st.hosts.probe_failed(host, now);
                match &e {
                    Some(e) => tracing::debug!(host, error = %Chain(e), "role probe failed"),
                    None => tracing::debug!(host, "role probe timed out"),
                }
                if e.is_some() {
                    st.last_error[host] = e;
                }
            }
        }
    }
    inner.wake.notify_one();
}

/// Why a role probe did not learn the host's role.
enum Probed<M: Manager> {
    /// The host failed: its backend error, or `None` for a timeout.
    Failed(Option<Arc<BackendError<M>>>),
    /// Every connection of the host's pool stayed checked out by callers
    /// for the whole acquire timeout: see [`busy`].
    Busy,
}

/// Whether a probe's failed `get` only says that the host's pool is busy:
/// it timed out waiting for a connection while callers held every one, no
/// connect was in flight or had failed, and the pool handed connections
/// out to other callers meanwhile (`before` and `after` are the pool's
/// status when the probe began waiting and when it gave up). That is a host
/// seen serving requests, not a down host; marking it down would turn its
/// callers away (reads to other hosts, writes failing) for no fault of its
/// own. A connect that hangs or fails, or a check that fails, still counts
/// as a failure, even when the wait ends in the backoff between two
/// connects that timed out (no connect in flight at that instant); and so
/// does a whole wait in which no connection came back to be handed out (a
/// query that hangs on a half-open host looks just like that).
fn busy<E>(e: &PoolError<E>, before: &Status, after: &Status) -> bool {
    matches!(
        e,
        PoolError::Timeout {
            kind: TimeoutKind::Acquire,
            last_error: None,
            ..
        }
    ) && after.in_use > 0
        && after.connecting == 0
        && after.acquired > before.acquired
        && after.create_failures == before.create_failures
        && after.closed.check_failed == before.closed.check_failed
}

/// Counts a probe that did not finish (the manager's `role` or `check`
/// panicked, or the runtime is shutting down) as failed. Left marked as
/// being probed, the host would never be probed again: its role frozen, and
/// if it was down, down for good.
struct Unfinished<'a, M: RoleProbe> {
    inner: &'a Arc<Inner<M>>,
    host: usize,
    armed: bool,
}

impl<M: RoleProbe> Drop for Unfinished<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.state.lock().hosts.probe_failed(self.host, now());
            self.inner.wake.notify_one();
        }
    }
}

/// A connection checked out of a [`Cluster`]: derefs to the connection (like
/// [`Pooled`]) and goes back to its host's pool when dropped, reporting how
/// long it was held (for [`Balance::PeakEwma`]) and any read-only error it
/// saw (which re-checks the host's role).
pub struct ClusterConn<M: RoleProbe> {
    /// `Some` until dropped.
    conn: Option<Pooled<M>>,
    host: usize,
    since: Instant,
    cluster: Arc<Inner<M>>,
}

impl<M: RoleProbe> ClusterConn<M> {
    /// The host it came from (0 is the configured primary).
    pub fn host(&self) -> usize {
        self.host
    }

    fn pooled(&self) -> &Pooled<M> {
        self.conn
            .as_ref()
            .expect("a ClusterConn holds its connection until dropped")
    }
}

impl<M: RoleProbe> fmt::Debug for ClusterConn<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConn")
            .field("host", &self.host)
            .field("conn", self.pooled())
            .finish()
    }
}

impl<M: RoleProbe> Deref for ClusterConn<M> {
    type Target = M::Connection;
    fn deref(&self) -> &M::Connection {
        self.pooled()
    }
}

impl<M: RoleProbe> DerefMut for ClusterConn<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.conn
            .as_mut()
            .expect("a ClusterConn holds its connection until dropped")
    }
}

impl<M: RoleProbe> Drop for ClusterConn<M> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Declared after `conn`, so dropped before it if a hook panics: the
        // checkout is counted finished even then (the manager's
        // `take_read_only_error` here, its `is_broken` or `reset` in the
        // `Pooled`'s drop). Left counted, the host would look busier than it
        // is to the balancer for ever.
        let mut finished = Finished {
            inner: &self.cluster,
            host: self.host,
            since: self.since,
            read_only: false,
        };
        finished.read_only = self.cluster.pools[self.host]
            .manager()
            .take_read_only_error(&conn);
        drop(conn);
    }
}

/// Counts a [`ClusterConn`]'s checkout finished when it goes out of scope,
/// and has its host's role re-checked after a read-only error.
struct Finished<'a, M: RoleProbe> {
    inner: &'a Arc<Inner<M>>,
    host: usize,
    since: Instant,
    read_only: bool,
}

impl<M: RoleProbe> Drop for Finished<'_, M> {
    fn drop(&mut self) {
        {
            let mut st = self.inner.state.lock();
            let now = now();
            st.hosts
                .finished(self.host, Some(self.since.elapsed()), now);
            if self.read_only {
                tracing::info!(
                    host = self.host,
                    "read-only error on a connection; re-checking the host's role"
                );
                st.hosts.read_only_seen(self.host, now);
            }
        }
        if self.read_only {
            self.inner.wake.notify_one();
        }
    }
}
