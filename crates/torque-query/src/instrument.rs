//! A tokio-postgres client wrapper that records every statement it runs.

use std::future::Future;
use std::panic::Location;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row, SimpleQueryMessage, Transaction};

use crate::detect::{CallSite, Scope};

/// Wraps anything implementing [`GenericClient`] — a `Client`, a
/// `Transaction`, a pooled connection — and records each statement, with the
/// call site that issued it, into the current task's detection scope
/// ([`detect::scoped`](crate::detect::scoped) or [`Scope::run`]), or into a
/// scope of its own ([`with_scope`](Self::with_scope)). Outside any scope it
/// only forwards.
///
/// The methods are plain functions returning futures so that `#[track_caller]`
/// sees the caller: a finding names the line in your code, not this crate's.
///
/// # Example
/// ```no_run
/// use torque_query::{Instrumented, detect};
///
/// # async fn demo(client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let db = Instrumented::new(client);
/// detect::scoped(async {
///     for id in 1..=10i64 {
///         db.query("SELECT * FROM comments WHERE post_id = $1", &[&id]).await?;
///     }
///     Ok::<_, tokio_postgres::Error>(())
/// })
/// .await?; // logs an N+1 finding naming the line above
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Instrumented<C> {
    inner: C,
    scope: Option<Scope>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl<C: GenericClient + Sync> Instrumented<C> {
    /// Wraps `client`; statements go to the current task's scope.
    pub fn new(client: C) -> Self {
        Self {
            inner: client,
            scope: None,
        }
    }

    /// Wraps `client`; statements go to `scope` (whatever the task's scope).
    pub fn with_scope(client: C, scope: Scope) -> Self {
        Self {
            inner: client,
            scope: Some(scope),
        }
    }

    /// The wrapped client (statements run on it directly are not recorded).
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> C {
        self.inner
    }

    fn note(&self, sql: &str, site: &'static Location<'static>) {
        match &self.scope {
            Some(scope) => scope.record_at(sql, CallSite::from(site)),
            None => {
                if let Some(scope) = Scope::current() {
                    scope.record_at(sql, CallSite::from(site));
                }
            }
        }
    }

    /// [`GenericClient::query`], recorded.
    #[track_caller]
    pub fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.query(sql, params)
    }

    /// [`GenericClient::query_one`], recorded.
    #[track_caller]
    pub fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.query_one(sql, params)
    }

    /// [`GenericClient::query_opt`], recorded.
    #[track_caller]
    pub fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.query_opt(sql, params)
    }

    /// [`GenericClient::execute`], recorded.
    #[track_caller]
    pub fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.execute(sql, params)
    }

    /// [`GenericClient::batch_execute`], recorded (as one statement text).
    #[track_caller]
    pub fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.batch_execute(sql)
    }

    /// [`GenericClient::simple_query`], recorded.
    #[track_caller]
    pub fn simple_query<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.simple_query(sql)
    }

    /// Starts a transaction whose statements are recorded the same way.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn transaction(&mut self) -> Result<Instrumented<Transaction<'_>>, Error> {
        let scope = self.scope.clone();
        let tx = self.inner.transaction().await?;
        Ok(Instrumented { inner: tx, scope })
    }
}
