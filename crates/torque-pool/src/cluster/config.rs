//! Settings of a [`Cluster`]: the plain [`ClusterConfig`] and the [`ClusterBuilder`].

use std::time::Duration;

use super::hosts::Balance;
use super::{Cluster, RoleProbe};
use crate::config::PoolConfig;
use crate::error::BuildError;

/// Every setting of a [`Cluster`], as a plain struct with sensible defaults
/// (`serde` feature for files). Each host gets a pool with the settings in
/// `pool`.
///
/// ```
/// use std::time::Duration;
/// use torque_pool::{Balance, ClusterConfig};
///
/// let mut config = ClusterConfig::default();
/// config.balance = Balance::LeastBusy;
/// config.role_check_interval = Duration::from_secs(2);
/// config.pool.max_size = 8;
/// assert!(config.validate().is_ok());
///
/// config.host_backoff_max = Duration::from_millis(1);
/// let err = config.validate().unwrap_err();
/// assert!(err.to_string().contains("raise host_backoff_max"));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct ClusterConfig {
    /// How reads pick among healthy replicas. Default [`Balance::PeakEwma`].
    pub balance: Balance,
    /// How often each host's role is re-checked (PostgreSQL:
    /// `pg_is_in_recovery()`); a "read-only" error (SQLSTATE 25006) on a
    /// connection re-checks its host at once, and a host found to have
    /// changed role re-checks every other host at once (a failover).
    /// Default 5 s.
    pub role_check_interval: Duration,
    /// A host that failed is skipped, and probed again after this delay,
    /// doubling per failure, with jitter. Default 100 ms.
    pub host_backoff_min: Duration,
    /// Longest delay between probes of a down host. Default 5 s.
    pub host_backoff_max: Duration,
    /// Time constant of the peak-EWMA latency estimate used by
    /// [`Balance::PeakEwma`]: an old sample weighs `exp(-age / latency_decay)`.
    /// Default 10 s.
    pub latency_decay: Duration,
    /// Settings of each host's pool. Its `acquire_timeout` also bounds a
    /// cluster `get()` that fails over from one host to another.
    pub pool: PoolConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            balance: Balance::default(),
            role_check_interval: Duration::from_secs(5),
            host_backoff_min: Duration::from_millis(100),
            host_backoff_max: Duration::from_secs(5),
            latency_decay: Duration::from_secs(10),
            pool: PoolConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// Checks every setting (the pool's too), with a message that says what
    /// to change.
    ///
    /// # Errors
    /// [`BuildError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), BuildError> {
        let invalid = |setting: &'static str, message: &str| {
            Err(BuildError::Invalid {
                setting,
                message: message.to_owned(),
            })
        };
        if self.role_check_interval.is_zero() {
            return invalid(
                "role_check_interval",
                "must be above zero (a few seconds is usual)",
            );
        }
        if self.host_backoff_min.is_zero() {
            return invalid("host_backoff_min", "must be above zero");
        }
        if self.host_backoff_max < self.host_backoff_min {
            return invalid(
                "host_backoff_max",
                "is below host_backoff_min: raise host_backoff_max or lower host_backoff_min",
            );
        }
        if self.latency_decay.is_zero() {
            return invalid("latency_decay", "must be above zero");
        }
        self.pool.validate()
    }
}

/// Builds a [`Cluster`]; from [`Cluster::builder`]. Host 0 is the primary
/// given to `builder`; replicas are numbered 1.. in the order added.
#[derive(Debug)]
#[must_use = "call .build() to get a Cluster"]
pub struct ClusterBuilder<M> {
    pub(super) managers: Vec<M>,
    pub(super) config: ClusterConfig,
    pub(super) seed: Option<u64>,
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

impl<M: RoleProbe> ClusterBuilder<M> {
    /// Adds a replica (a host expected to be read-only; its role is checked).
    pub fn replica(mut self, manager: M) -> Self {
        self.managers.push(manager);
        self
    }

    /// Replaces every setting at once (for example, loaded from a file).
    pub fn config(mut self, config: ClusterConfig) -> Self {
        self.config = config;
        self
    }

    setter!(
        /// See [`ClusterConfig::balance`].
        balance: Balance
    );
    setter!(
        /// See [`ClusterConfig::role_check_interval`].
        role_check_interval: Duration
    );
    setter!(
        /// See [`ClusterConfig::host_backoff_min`].
        host_backoff_min: Duration
    );
    setter!(
        /// See [`ClusterConfig::host_backoff_max`].
        host_backoff_max: Duration
    );
    setter!(
        /// See [`ClusterConfig::latency_decay`].
        latency_decay: Duration
    );
    setter!(
        /// See [`ClusterConfig::pool`]: the settings of each host's pool.
        pool: PoolConfig
    );

    /// Seeds the balancing and backoff randomness (and the pools' jitter),
    /// for reproducible tests. Default: random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the settings, starts one pool per host and the task that
    /// checks roles and retries down hosts (every host's role is probed at
    /// once).
    ///
    /// # Errors
    /// [`BuildError::Invalid`] for a bad setting; [`BuildError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn build(self) -> Result<Cluster<M>, BuildError> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let seed = self.seed.unwrap_or_else(crate::config::random_seed);
        Ok(Cluster::start(self.managers, self.config, seed, runtime))
    }
}
