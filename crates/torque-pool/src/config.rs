//! Settings: the plain [`PoolConfig`] struct and the [`PoolBuilder`].

use std::time::Duration;

use crate::core::CoreConfig;
use crate::error::BuildError;
use crate::manager::Manager;
use crate::pool::Pool;

/// Every setting of a [`Pool`], as a plain struct with sensible defaults, for
/// people who load settings from a file (`serde` feature). Pass it to
/// [`PoolBuilder::config`], or set knobs one by one on the builder.
///
/// Every timeout is on by default; none can be turned off, only lengthened
/// (any length is accepted: `Duration::MAX` waits as long as it takes).
/// The struct is `#[non_exhaustive]` so that settings can be added: start from
/// `PoolConfig::default()` and assign fields.
///
/// ```
/// use std::time::Duration;
/// use torque_pool::PoolConfig;
///
/// let mut config = PoolConfig::default();
/// config.max_size = 32;
/// config.acquire_timeout = Duration::from_secs(2);
/// assert!(config.validate().is_ok());
///
/// config.min_idle = 64;
/// let err = config.validate().unwrap_err();
/// assert!(err.to_string().contains("lower min_idle or raise max_size"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once, in use or not. Default 20.
    pub max_size: usize,
    /// Idle connections kept ready: the background task refills to this, and
    /// `idle_timeout` never retires below it. Default 5; with
    /// [`PoolBuilder`], unless set there (or by [`PoolBuilder::config`]),
    /// the default is lowered to `max_size` when that is smaller, so that
    /// `.max_size(2)` alone builds. Set above `max_size`, it is an error.
    pub min_idle: usize,
    /// Longest a `get()` waits in all, checks included. Default 5 s.
    pub acquire_timeout: Duration,
    /// Longest one connect may take. Default 5 s.
    pub create_timeout: Duration,
    /// Longest one liveness check may take. Default 1 s.
    pub check_timeout: Duration,
    /// A connection used (or checked) within this window is handed out without
    /// a real check; beyond it, `Manager::check` runs first (HikariCP's alive
    /// bypass window). Default 500 ms.
    pub check_bypass: Duration,
    /// Idle connections unchecked for this long are checked in the background,
    /// so that dead ones are found before a caller gets them. Default 60 s;
    /// `None` turns keepalive off.
    pub keepalive_interval: Option<Duration>,
    /// Connections are retired after this long (minus up to 2.5% random jitter
    /// per connection, so they do not all go at once), never while in use.
    /// Default 30 min; `None` keeps them forever.
    pub max_lifetime: Option<Duration>,
    /// Idle connections above `min_idle` are closed after idling this long.
    /// Default 10 min; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// A connection held longer than this is reported (a `tracing` warning with
    /// the call site of its `get()`), once. Default `None` (off).
    pub leak_threshold: Option<Duration>,
    /// Most connects in flight at once while the backend is healthy (one at a
    /// time once a connect has failed). Default 2.
    ///
    /// One exception: when the first connect succeeds after failures (the
    /// server is back from an outage) while callers are waiting, the pool
    /// opens a connection for every waiting caller at once, up to
    /// `max_size`, and returns to this limit once they are covered. That
    /// serves the backlog in one connect time instead of
    /// `waiting / max_connecting` of them (deadpool and bb8 likewise connect
    /// per waiting caller); it also means a restarted server sees up to
    /// `max_size` connects from each pool with callers waiting.
    pub max_connecting: usize,
    /// First delay before retrying after a failed connect; doubles per
    /// failure, with jitter. Default 10 ms.
    pub reconnect_backoff_min: Duration,
    /// Longest delay between connect attempts while the backend is down.
    /// Default 250 ms.
    pub reconnect_backoff_max: Duration,
    /// Longest delay between connect attempts while callers are waiting for
    /// a connection (it replaces `reconnect_backoff_max` when lower). A
    /// waiting caller fails with the next attempt's error or is served by it,
    /// so this bounds both how long a `get()` waits during an outage and how
    /// soon the pool sees the server back; still one attempt in flight at a
    /// time, with jitter. Default 50 ms.
    pub reconnect_backoff_max_waiting: Duration,
    /// How often the background task looks after idle connections (refill,
    /// keepalive, lifetime, idle timeout, leaks). Default 500 ms.
    pub maintenance_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 20,
            min_idle: 5,
            acquire_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            check_timeout: Duration::from_secs(1),
            check_bypass: Duration::from_millis(500),
            keepalive_interval: Some(Duration::from_secs(60)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            leak_threshold: None,
            max_connecting: 2,
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(250),
            reconnect_backoff_max_waiting: Duration::from_millis(50),
            maintenance_interval: Duration::from_millis(500),
        }
    }
}

impl PoolConfig {
    /// Checks every setting, with a message that says what to change.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), BuildError> {
        fn invalid(setting: &'static str, message: String) -> Result<(), BuildError> {
            Err(BuildError::Invalid { setting, message })
        }
        if self.max_size == 0 {
            return invalid("max_size", "must be at least 1".into());
        }
        if self.min_idle > self.max_size {
            return invalid(
                "min_idle",
                format!(
                    "is {} but max_size is {}: lower min_idle or raise max_size",
                    self.min_idle, self.max_size
                ),
            );
        }
        for (setting, d) in [
            ("acquire_timeout", self.acquire_timeout),
            ("create_timeout", self.create_timeout),
            ("check_timeout", self.check_timeout),
            ("maintenance_interval", self.maintenance_interval),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
        ] {
            if d.is_zero() {
                return invalid(setting, "must be above zero".into());
            }
        }
        for (setting, d) in [
            ("keepalive_interval", self.keepalive_interval),
            ("max_lifetime", self.max_lifetime),
            ("idle_timeout", self.idle_timeout),
            ("leak_threshold", self.leak_threshold),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return invalid(
                    setting,
                    "must be above zero; use None to turn it off".into(),
                );
            }
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return invalid(
                "reconnect_backoff_max",
                format!(
                    "{:?} is below reconnect_backoff_min {:?}",
                    self.reconnect_backoff_max, self.reconnect_backoff_min
                ),
            );
        }
        if self.reconnect_backoff_max_waiting < self.reconnect_backoff_min {
            return invalid(
                "reconnect_backoff_max_waiting",
                format!(
                    "{:?} is below reconnect_backoff_min {:?}: raise it or lower reconnect_backoff_min",
                    self.reconnect_backoff_max_waiting, self.reconnect_backoff_min
                ),
            );
        }
        if self.max_connecting == 0 {
            return invalid("max_connecting", "must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn core(&self, seed: u64) -> CoreConfig {
        CoreConfig {
            max_size: self.max_size,
            min_idle: self.min_idle,
            max_lifetime: self.max_lifetime,
            idle_timeout: self.idle_timeout,
            check_bypass: self.check_bypass,
            keepalive: self.keepalive_interval,
            max_connecting: self.max_connecting,
            backoff_min: self.reconnect_backoff_min,
            backoff_max: self.reconnect_backoff_max,
            backoff_max_waiting: self
                .reconnect_backoff_max_waiting
                .min(self.reconnect_backoff_max),
            seed,
        }
    }
}

/// Builds a [`Pool`]; from [`Pool::builder`].
///
/// ```
/// # use torque_pool::{Manager, Pool};
/// # #[derive(Debug)] struct Fake;
/// # impl Manager for Fake {
/// #     type Connection = (); type Error = std::io::Error;
/// #     async fn create(&self) -> Result<(), std::io::Error> { Ok(()) }
/// #     async fn check(&self, _: &mut ()) -> Result<(), std::io::Error> { Ok(()) }
/// #     fn is_broken(&self, _: &()) -> bool { false }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let pool = Pool::builder(Fake)
///     .max_size(16)
///     .min_idle(4)
///     .acquire_timeout(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(pool.status().max_size, 16);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "call .build() to get a Pool"]
pub struct PoolBuilder<M> {
    manager: M,
    config: PoolConfig,
    seed: Option<u64>,
    /// Whether `min_idle` was given (by its setter or in a whole config);
    /// if not, `build` lowers the default to `max_size`.
    min_idle_given: bool,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl<M: Manager> PoolBuilder<M> {
    pub(crate) fn new(manager: M) -> Self {
        PoolBuilder {
            manager,
            config: PoolConfig::default(),
            seed: None,
            min_idle_given: false,
        }
    }

    /// Replaces every setting at once (for example, loaded from a file):
    /// its `min_idle` is taken as given, even if it is the default.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self.min_idle_given = true;
        self
    }

    setter!(
        /// See [`PoolConfig::max_size`].
        max_size: usize
    );
    /// See [`PoolConfig::min_idle`].
    pub fn min_idle(mut self, value: usize) -> Self {
        self.config.min_idle = value;
        self.min_idle_given = true;
        self
    }
    setter!(
        /// See [`PoolConfig::acquire_timeout`].
        acquire_timeout: Duration
    );
    setter!(
        /// See [`PoolConfig::create_timeout`].
        create_timeout: Duration
    );
    setter!(
        /// See [`PoolConfig::check_timeout`].
        check_timeout: Duration
    );
    setter!(
        /// See [`PoolConfig::check_bypass`].
        check_bypass: Duration
    );
    setter!(
        /// See [`PoolConfig::keepalive_interval`].
        keepalive_interval: Option<Duration>
    );
    setter!(
        /// See [`PoolConfig::max_lifetime`].
        max_lifetime: Option<Duration>
    );
    setter!(
        /// See [`PoolConfig::idle_timeout`].
        idle_timeout: Option<Duration>
    );
    setter!(
        /// See [`PoolConfig::leak_threshold`].
        leak_threshold: Option<Duration>
    );
    setter!(
        /// See [`PoolConfig::max_connecting`].
        max_connecting: usize
    );
    setter!(
        /// See [`PoolConfig::reconnect_backoff_min`].
        reconnect_backoff_min: Duration
    );
    setter!(
        /// See [`PoolConfig::reconnect_backoff_max`].
        reconnect_backoff_max: Duration
    );
    setter!(
        /// See [`PoolConfig::reconnect_backoff_max_waiting`].
        reconnect_backoff_max_waiting: Duration
    );
    setter!(
        /// See [`PoolConfig::maintenance_interval`].
        maintenance_interval: Duration
    );

    /// Seeds the jitter of lifetimes and backoff, for reproducible tests.
    /// Default: a random seed per pool.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the settings and starts the pool's background task (which
    /// refills to `min_idle` at once).
    ///
    /// # Errors
    /// [`BuildError::Invalid`] for a bad setting; [`BuildError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn build(mut self) -> Result<Pool<M>, BuildError> {
        if !self.min_idle_given {
            self.config.min_idle = self.config.min_idle.min(self.config.max_size);
        }
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let seed = self.seed.unwrap_or_else(random_seed);
        Ok(Pool::start(
            self.manager,
            self.config,
            seed,
            runtime,
            crate::telemetry::Labels::default(),
        ))
    }
}

pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
