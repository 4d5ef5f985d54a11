//! The trait a backend implements to be pooled.

use std::future::Future;

/// Creates, checks and recycles the connections of one backend.
///
/// Tiny on purpose, like deadpool's: the pool does the rest (sizing, waiters,
/// timeouts, lifetime, backoff). Every future it returns is run under one of
/// the pool's timeouts, so an implementation needs no timeouts of its own.
///
/// # Example
/// A manager for an in-memory "connection" (the crate front page has the pool around it):
/// ```
/// use torque_pool::Manager;
///
/// #[derive(Debug)]
/// struct Numbers;
///
/// impl Manager for Numbers {
///     type Connection = Vec<u64>;
///     type Error = std::io::Error;
///
///     async fn create(&self) -> Result<Vec<u64>, std::io::Error> {
///         Ok(Vec::new())
///     }
///     async fn check(&self, _conn: &mut Vec<u64>) -> Result<(), std::io::Error> {
///         Ok(())
///     }
///     fn is_broken(&self, conn: &Vec<u64>) -> bool {
///         conn.len() > 1_000
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The pooled connection.
    type Connection: Send + 'static;
    /// The backend's error, reachable through [`PoolError`](crate::PoolError)'s `source()`.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection. Bounded by the pool's `create_timeout`.
    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// A real liveness probe (a round trip), run at checkout when the
    /// connection has been idle longer than the check bypass window, and by
    /// keepalive. Bounded by the pool's `check_timeout`. An error, or a
    /// panic, discards the connection; at checkout the caller goes on to
    /// another.
    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// A cheap local test, run at every checkout and return: `true` discards the
    /// connection (for example, its socket is known closed, or a query on it
    /// was cancelled halfway).
    fn is_broken(&self, conn: &Self::Connection) -> bool;

    /// Cleans a connection up as it comes back to the pool; an error discards
    /// it. Runs synchronously in `Pooled`'s `Drop`, so it must be cheap; work
    /// that needs a round trip belongs in [`check`](Self::check). The default
    /// does nothing.
    ///
    /// # Errors
    /// When the connection cannot be made clean for its next user.
    fn reset(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        let _ = conn;
        Ok(())
    }
}
