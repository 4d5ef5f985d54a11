//! A tokio-postgres client wrapper that records every statement it runs.

use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, GenericClient, Row, SimpleQueryMessage, Transaction};

use crate::detect::{CallSite, Scope};

/// Wraps a client — a `Client`, a `Transaction`, a reference to either, an
/// `Arc<Client>`, or a pooled connection as `&**conn` (anything implementing
/// [`AsClient`]) — and records each statement, with the
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
///
/// A connection from a pool is wrapped by reference: with torque-pool,
/// `Instrumented::new(&**conn)` (`Pooled<PgManager>` derefs to `PgConnection`,
/// which derefs to the `Client`). Statements sent that way bypass
/// `PgConnection`'s own methods, which the pool watches: report their errors
/// with `PgConnection::note_error` if the pool should see them, and open a
/// transaction with `conn.transaction()` (rolled back if dropped) and wrap
/// that, rather than sending `BEGIN` here — the pool would not see the block
/// left open by an early return, and would hand it to the next caller.
#[derive(Debug)]
pub struct Instrumented<C> {
    inner: C,
    scope: Option<Scope>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What [`Instrumented`] can wrap: something that lends a [`GenericClient`]
/// to run statements on. Implemented for [`Client`] and [`Transaction`]
/// (`GenericClient` is sealed, and implemented by those two only), and for
/// references, `Box`es and `Arc`s of anything that implements it — so a
/// pooled connection is wrapped as `&**conn`, a shared client as an
/// `Arc<Client>`.
pub trait AsClient: Sync {
    /// The client statements run on.
    type Client: GenericClient + Sync;
    /// Lends the client.
    fn as_client(&self) -> &Self::Client;
}

impl AsClient for Client {
    type Client = Client;
    fn as_client(&self) -> &Client {
        self
    }
}

impl<'t> AsClient for Transaction<'t> {
    type Client = Transaction<'t>;
    fn as_client(&self) -> &Transaction<'t> {
        self
    }
}

impl<T: AsClient + ?Sized> AsClient for &T {
    type Client = T::Client;
    fn as_client(&self) -> &T::Client {
        (**self).as_client()
    }
}

impl<T: AsClient + ?Sized + Send> AsClient for Box<T> {
    type Client = T::Client;
    fn as_client(&self) -> &T::Client {
        (**self).as_client()
    }
}

impl<T: AsClient + ?Sized + Send> AsClient for Arc<T> {
    type Client = T::Client;
    fn as_client(&self) -> &T::Client {
        (**self).as_client()
    }
}

impl<C: AsClient> Instrumented<C> {
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
        self.inner.as_client().query(sql, params)
    }

    /// [`GenericClient::query_one`], recorded.
    #[track_caller]
    pub fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.as_client().query_one(sql, params)
    }

    /// [`GenericClient::query_opt`], recorded.
    #[track_caller]
    pub fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.as_client().query_opt(sql, params)
    }

    /// [`GenericClient::execute`], recorded.
    #[track_caller]
    pub fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.as_client().execute(sql, params)
    }

    /// [`GenericClient::batch_execute`], recorded (as one statement text).
    #[track_caller]
    pub fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.as_client().batch_execute(sql)
    }

    /// [`GenericClient::simple_query`], recorded.
    #[track_caller]
    pub fn simple_query<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a {
        self.note(sql, Location::caller());
        self.inner.as_client().simple_query(sql)
    }
}

impl<C: GenericClient + Sync> Instrumented<C> {
    /// Starts a transaction whose statements are recorded the same way.
    /// (Only on an owned `Client` or `Transaction`: a borrowed client cannot
    /// start one; call `transaction()` on the connection and wrap that.)
    ///
    /// # Errors
    /// The driver's error.
    pub async fn transaction(&mut self) -> Result<Instrumented<Transaction<'_>>, Error> {
        let scope = self.scope.clone();
        let tx = self.inner.transaction().await?;
        Ok(Instrumented { inner: tx, scope })
    }
}
