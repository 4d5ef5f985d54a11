//! Errors: [`PoolError`] from `get()`, [`BuildError`] from `build()`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Role;

/// Which of the pool's timeouts fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum TimeoutKind {
    /// `acquire_timeout`: no healthy connection for the caller in time.
    Acquire,
    /// `create_timeout`: opening a connection took too long.
    Create,
    /// `check_timeout`: a liveness check took too long.
    Check,
}

impl TimeoutKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Acquire => "acquire",
            TimeoutKind::Create => "create",
            TimeoutKind::Check => "check",
        }
    }
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How full a pool was when a timeout fired (from
/// [`PoolError::Timeout`]): whether callers hold every connection (raise
/// `max_size`, or hold connections for less time) or connects do not come
/// back (look at the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Occupancy {
    /// The pool's `max_size`.
    pub max_size: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Connects in flight.
    pub connecting: usize,
    /// Callers waiting for a connection (the one that timed out no longer
    /// among them).
    pub waiting: usize,
}

impl fmt::Display for Occupancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max_size {}: {} in use, {} idle, {} connecting, {} waiting",
            self.max_size, self.in_use, self.idle, self.connecting, self.waiting
        )
    }
}

/// Why [`Pool::get`](crate::Pool::get) failed.
///
/// The backend's error is shared (an [`Arc`]) because one failed connect can
/// fail several waiting callers. [`source()`](StdError::source) returns the
/// backend error itself, so `err.source()?.downcast_ref::<E>()` works;
/// [`backend_error`](Self::backend_error) is the typed shortcut.
///
/// `Display` is the pool's own message only (which timeout, how long, how
/// full the pool was; or `cannot connect`): the backend's error is not
/// repeated there, as it is the `source()`. Log the whole chain — anyhow's
/// `{:#}`, or walk `source()` — to see why: tokio-postgres's own message
/// for anything the server refused is just `db error`, with the server's
/// words one level further down
/// (`cannot connect: db error: FATAL: password authentication failed for user "app"`).
///
/// ```
/// # use std::error::Error;
/// /// `outer: inner: innermost`, as anyhow's `{:#}` prints an error.
/// fn chain(err: &(dyn Error + 'static)) -> String {
///     let mut text = err.to_string();
///     let mut next = err.source();
///     while let Some(e) = next {
///         text = format!("{text}: {e}");
///         next = e.source();
///     }
///     text
/// }
/// let err = torque_pool::PoolError::Backend(std::sync::Arc::new(std::io::Error::new(
///     std::io::ErrorKind::ConnectionRefused,
///     "connection refused",
/// )));
/// assert_eq!(err.to_string(), "cannot connect");
/// assert_eq!(chain(&err), "cannot connect: connection refused");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// A timeout fired. `last_error` is the backend's most recent error
    /// while it is current: a connect that succeeds clears it, and a check
    /// (at checkout or keepalive) that succeeds clears a check's error but
    /// not a connect's (a server refusing new connections still serves the
    /// ones it has). A timeout while the server rejects every connect says
    /// why, and one after the backend has recovered carries no error from
    /// before.
    #[non_exhaustive]
    Timeout {
        /// Which timeout.
        kind: TimeoutKind,
        /// How long the caller waited in all.
        waited: Duration,
        /// The backend's most recent error, if any.
        last_error: Option<Arc<E>>,
        /// How full the pool was when the timeout fired: callers holding
        /// every connection, or connects not coming back. `None` for a
        /// [`Cluster`](crate::Cluster)'s own timeout, which spans hosts.
        occupancy: Option<Occupancy>,
    },
    /// Connecting failed and nothing in the pool could serve the caller, so it
    /// fails now with the backend's error instead of waiting out its timeout.
    Backend(Arc<E>),
    /// A [`Cluster`](crate::Cluster) has no healthy host for the request and
    /// no backend error to say why: no primary for a write (`role` is
    /// `Primary`), or neither a replica nor the primary for a read (`role` is
    /// `Replica`). When a host failed, its error is returned instead.
    NoHost {
        /// The role the request wanted.
        role: Role,
    },
    /// The manager's `create` panicked, and nothing in the pool could serve
    /// the caller: like [`Backend`](Self::Backend), a failed connect (the
    /// pool retries after its backoff), with the panic's message for an
    /// error. A bug in the manager.
    ConnectPanicked {
        /// The panic's message.
        message: Arc<str>,
    },
    /// The pool was closed.
    Closed,
}

impl<E> PoolError<E> {
    /// The backend error behind this one, if any.
    pub fn backend_error(&self) -> Option<&E> {
        match self {
            PoolError::Timeout { last_error, .. } => last_error.as_deref(),
            PoolError::Backend(e) => Some(e),
            PoolError::Closed | PoolError::NoHost { .. } | PoolError::ConnectPanicked { .. } => {
                None
            }
        }
    }

    /// Which timeout fired, if this is a timeout.
    pub fn timeout_kind(&self) -> Option<TimeoutKind> {
        match self {
            PoolError::Timeout { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl<E: StdError + 'static> fmt::Display for PoolError<E> {
    /// The pool's own message; the backend's error is [`source()`](StdError::source),
    /// not repeated here, so a reporter that walks the chain (anyhow's `{:#}`)
    /// prints each message once.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Timeout {
                kind,
                waited,
                last_error,
                occupancy,
            } => {
                write!(f, "{kind} timeout: no connection after {waited:?}")?;
                if let Some(occupancy) = occupancy {
                    write!(f, " ({occupancy})")?;
                }
                // Not the error itself (it is the source, and a reporter
                // prints it next), but that there is one: `{err}` alone
                // must not read as a pool merely held by its callers.
                if last_error.is_some() {
                    f.write_str("; the backend failed (the source says how)")?;
                }
                Ok(())
            }
            PoolError::Backend(_) => f.write_str("cannot connect"),
            PoolError::NoHost {
                role: Role::Primary,
            } => f.write_str("no healthy primary host for a write"),
            PoolError::NoHost {
                role: Role::Replica,
            } => f.write_str("no healthy replica or primary host for a read"),
            PoolError::ConnectPanicked { message } => {
                write!(
                    f,
                    "cannot connect: the manager's create panicked: {message}"
                )
            }
            PoolError::Closed => f.write_str("the pool is closed"),
        }
    }
}

impl<E: StdError + 'static> StdError for PoolError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.backend_error().map(|e| e as &(dyn StdError + 'static))
    }
}

/// An invalid setting, from [`PoolBuilder::build`](crate::PoolBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range; the message says which and what to change.
    #[error("invalid pool setting `{setting}`: {message}")]
    Invalid {
        /// The setting's name, as in [`PoolConfig`](crate::PoolConfig).
        setting: &'static str,
        /// What is wrong and what to change.
        message: String,
    },
    /// `build()` ran outside a tokio runtime, which the pool's background
    /// task needs.
    #[error(
        "Pool::build() must run inside a tokio runtime (its maintenance task is spawned there)"
    )]
    NoRuntime,
}

/// An error and its `source()` chain as one line (`a: b: c`), for the
/// pool's own log fields: a subscriber that records only `Display` would
/// otherwise log tokio-postgres's "db error" and never the server's words.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            write!(f, ": {error}")?;
            next = error.source();
        }
        Ok(())
    }
}
