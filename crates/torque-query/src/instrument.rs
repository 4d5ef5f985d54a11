//! A tokio-postgres client wrapper that records every statement it runs.

use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, GenericClient, Row, SimpleQueryMessage, Transaction};

use crate::detect::{CallSite, Scope};

/// Wraps a client — a `Client`, a `Transaction`, a reference to either, an
/// `Arc<Client>`, a pooled connection as `&**conn` (anything implementing
/// [`QueryClient`]) — and records each statement, with the
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
/// `PgConnection`'s own methods: its statement cache, and the watching of
/// errors and of `BEGIN` by which the pool keeps a broken connection or an
/// open transaction block from the next caller. Open transactions with
/// `conn.transaction()` (rolled back if dropped) rather than `BEGIN`, or
/// implement [`QueryClient`] for a newtype whose methods call the
/// connection's, and wrap that (`docs/query.md`).
///
/// Batch writes ([`BatchInsert`](crate::BatchInsert),
/// [`BatchUpdate`](crate::BatchUpdate)) take the driver's client: pass
/// [`inner`](Self::inner). Their statements are then not recorded; to put a
/// batch in the trace, call [`detect::record`](crate::detect::record) with
/// its statement (`insert.unnest_sql()`) before sending it.
#[derive(Debug)]
pub struct Instrumented<C> {
    inner: C,
    scope: Option<Scope>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What [`Instrumented`] can wrap: a client that runs SQL text.
///
/// Implemented for [`Client`] and [`Transaction`] (through
/// [`GenericClient`], which is sealed), and for references, `Box`es and
/// `Arc`s of anything that implements it: a shared client is wrapped as an
/// `Arc<Client>`, a pooled connection as `&**conn`. For a pool whose
/// connection has methods of its own (torque-pool's `PgConnection` caches
/// statements and watches errors and `BEGIN`), implement it for a newtype
/// that forwards to them; see `docs/query.md`.
pub trait QueryClient: Sync {
    /// Like [`GenericClient::query`].
    fn query<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a;
    /// Like [`GenericClient::query_one`].
    fn query_one<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a;
    /// Like [`GenericClient::query_opt`].
    fn query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a;
    /// Like [`GenericClient::execute`].
    fn execute<'a>(
        &'a self,
        sql: &'a str,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a;
    /// Like [`GenericClient::batch_execute`].
    fn batch_execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
    /// Like [`GenericClient::simple_query`].
    fn simple_query<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a;
}

/// `QueryClient` for a type, by `$via` (`$via(self)` is the `QueryClient`
/// or `GenericClient` to call).
macro_rules! forward {
    ($via:ident) => {
        fn query<'a>(
            &'a self,
            sql: &'a str,
            params: Params<'a>,
        ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
            $via::query(self.forward_to(), sql, params)
        }
        fn query_one<'a>(
            &'a self,
            sql: &'a str,
            params: Params<'a>,
        ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
            $via::query_one(self.forward_to(), sql, params)
        }
        fn query_opt<'a>(
            &'a self,
            sql: &'a str,
            params: Params<'a>,
        ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
            $via::query_opt(self.forward_to(), sql, params)
        }
        fn execute<'a>(
            &'a self,
            sql: &'a str,
            params: Params<'a>,
        ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
            $via::execute(self.forward_to(), sql, params)
        }
        fn batch_execute<'a>(
            &'a self,
            sql: &'a str,
        ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
            $via::batch_execute(self.forward_to(), sql)
        }
        fn simple_query<'a>(
            &'a self,
            sql: &'a str,
        ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a {
            $via::simple_query(self.forward_to(), sql)
        }
    };
}

/// What a forwarding impl calls: the value itself for a driver client, the
/// pointee for a pointer.
trait ForwardTo {
    type Target: ?Sized;
    fn forward_to(&self) -> &Self::Target;
}

impl ForwardTo for Client {
    type Target = Client;
    fn forward_to(&self) -> &Client {
        self
    }
}

impl<'t> ForwardTo for Transaction<'t> {
    type Target = Transaction<'t>;
    fn forward_to(&self) -> &Transaction<'t> {
        self
    }
}

impl<T: ?Sized> ForwardTo for &T {
    type Target = T;
    fn forward_to(&self) -> &T {
        self
    }
}

impl<T: ?Sized> ForwardTo for Box<T> {
    type Target = T;
    fn forward_to(&self) -> &T {
        self
    }
}

impl<T: ?Sized> ForwardTo for Arc<T> {
    type Target = T;
    fn forward_to(&self) -> &T {
        self
    }
}

impl QueryClient for Client {
    forward!(GenericClient);
}

impl QueryClient for Transaction<'_> {
    forward!(GenericClient);
}

impl<T: QueryClient + ?Sized> QueryClient for &T {
    forward!(QueryClient);
}

impl<T: QueryClient + ?Sized + Send> QueryClient for Box<T> {
    forward!(QueryClient);
}

impl<T: QueryClient + ?Sized + Send> QueryClient for Arc<T> {
    forward!(QueryClient);
}

impl<C: QueryClient> Instrumented<C> {
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
