//! [`PgManager`]: PostgreSQL connections on tokio-postgres (feature `postgres`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Error, NoTls, Row, SimpleQueryMessage, Socket, Statement};

use crate::cluster::{Cluster, Role, RoleProbe};
use crate::manager::Manager;
use crate::pool::Pool;

/// A pool of PostgreSQL connections.
pub type PgPool<T = NoTls> = Pool<PgManager<T>>;

/// A primary and its replicas, a pool each: writes to the primary, reads
/// balanced across replicas (see [`Cluster`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use torque_pool::{Balance, PgCluster, PgManager};
///
/// let cluster = PgCluster::builder(PgManager::new("host=db-1 user=app".parse()?))
///     .replica(PgManager::new("host=db-2 user=app".parse()?))
///     .replica(PgManager::new("host=db-3 user=app".parse()?))
///     .balance(Balance::PeakEwma)
///     .build()?;
/// cluster.get().await?.execute("UPDATE t SET n = n + 1", &[]).await?;
/// let row = cluster.get_read().await?.query_one("SELECT count(*) FROM t", &[]).await?;
/// # let _ = row; Ok(()) }
/// ```
pub type PgCluster<T = NoTls> = Cluster<PgManager<T>>;

const ROLE_QUERY: &str = "SELECT pg_is_in_recovery()";

/// Makes, checks and vets PostgreSQL connections for a [`Pool`].
///
/// - `create` connects with the given [`Config`] and spawns the connection's
///   driver task on the current runtime;
/// - `check` runs `SELECT 1` (bounded by the pool's `check_timeout`);
/// - `is_broken` is true once the client is closed, or once a query through
///   [`PgConnection`] failed with SQLSTATE class 08 (connection exception),
///   57P01–57P03 (admin shutdown, crash shutdown, cannot connect now) or
///   57014 (query cancelled or timed out), or was itself dropped halfway (a
///   caller's timeout): such a connection is closed, not reused.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use torque_pool::{PgManager, Pool};
///
/// let manager = PgManager::new("host=127.0.0.1 user=postgres".parse()?);
/// let pool = Pool::builder(manager).max_size(16).build()?;
/// let conn = pool.get().await?;
/// let row = conn.query_one("SELECT $1::int + 1", &[&41i32]).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgManager<T = NoTls> {
    config: Config,
    tls: T,
    statement_cache_capacity: usize,
    role_query: String,
}

impl<T> fmt::Debug for PgManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgManager")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("role_query", &self.role_query)
            .finish_non_exhaustive()
    }
}

impl PgManager<NoTls> {
    /// A manager for plain-TCP connections with `config`.
    pub fn new(config: Config) -> Self {
        PgManager::with_tls(config, NoTls)
    }
}

impl<T> PgManager<T> {
    /// A manager whose connections use `tls`.
    pub fn with_tls(config: Config, tls: T) -> Self {
        PgManager {
            config,
            tls,
            statement_cache_capacity: 256,
            role_query: ROLE_QUERY.to_owned(),
        }
    }

    /// Most prepared statements cached per connection by
    /// [`PgConnection::prepare_cached`]; past it the cache starts over.
    /// Default 256; 0 turns caching off.
    pub fn statement_cache_capacity(mut self, capacity: usize) -> Self {
        self.statement_cache_capacity = capacity;
        self
    }

    /// The query a [`Cluster`] runs to learn the server's role: one row, one
    /// boolean column, true for a read-only replica. Default
    /// `SELECT pg_is_in_recovery()`. Replace it where "in recovery" is not
    /// the right test (a proxy in front of the servers, or a test that plays
    /// a failover out through a table).
    pub fn role_query(mut self, sql: impl Into<String>) -> Self {
        self.role_query = sql.into();
        self
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<T> Manager for PgManager<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Connection = PgConnection;
    type Error = Error;

    async fn create(&self) -> Result<PgConnection, Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(
                    error = %crate::error::Chain(&e),
                    "PostgreSQL connection ended with an error"
                );
            }
        });
        Ok(PgConnection {
            client,
            statements: Mutex::new(HashMap::new()),
            capacity: self.statement_cache_capacity,
            poisoned: AtomicBool::new(false),
            read_only_error: AtomicBool::new(false),
            in_transaction: AtomicBool::new(false),
        })
    }

    async fn check(&self, conn: &mut PgConnection) -> Result<(), Error> {
        conn.simple_query("SELECT 1").await.map(|_| ())
    }

    /// Broken, or still inside a transaction block as far as its watched
    /// methods saw ([`PgConnection::in_transaction`]): the next caller would
    /// get someone else's transaction, or a failed one in which every
    /// statement fails with 25P02 until a `ROLLBACK`.
    fn is_broken(&self, conn: &PgConnection) -> bool {
        conn.is_broken() || conn.in_transaction()
    }
}

/// `role` runs the role query (`SELECT pg_is_in_recovery()` by default):
/// `t` is [`Role::Replica`], `f` is [`Role::Primary`]; any other answer is
/// taken as a replica, so that writes never go to a server that did not say
/// it takes them. `take_read_only_error` reports SQLSTATE 25006
/// (`read_only_sql_transaction`) seen by [`PgConnection`]'s watched methods
/// or [`PgConnection::note_error`].
impl<T> RoleProbe for PgManager<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    async fn role(&self, conn: &mut PgConnection) -> Result<Role, Error> {
        let messages = conn.simple_query(&self.role_query).await?;
        let takes_writes = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0) == Some("f")),
            _ => None,
        });
        Ok(match takes_writes {
            Some(true) => Role::Primary,
            _ => Role::Replica,
        })
    }

    fn take_read_only_error(&self, conn: &PgConnection) -> bool {
        conn.read_only_error.swap(false, Ordering::Relaxed)
    }
}

/// A pooled PostgreSQL connection: a tokio-postgres [`Client`] (it derefs to
/// one) with a statement cache, whose query methods watch for errors that
/// make the connection unfit for reuse.
///
/// The methods defined here (`query`, `query_one`, `query_opt`, `execute`,
/// `simple_query`, `batch_execute`, `prepare_cached`) shadow the client's and
/// are the ones that mark the connection broken; methods reached through
/// `Deref` (transactions, `COPY`, ...) are not watched, except that a closed
/// client is always noticed. Use [`note_error`](Self::note_error) to report
/// their errors.
pub struct PgConnection {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    capacity: usize,
    poisoned: AtomicBool,
    /// Saw SQLSTATE 25006: its server may have become a replica.
    read_only_error: AtomicBool,
    /// Inside a transaction block, as far as the watched methods saw.
    in_transaction: AtomicBool,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.client.is_closed())
            .field("poisoned", &self.poisoned.load(Ordering::Relaxed))
            .field("cached_statements", &self.statements.lock().len())
            .finish()
    }
}

impl Deref for PgConnection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Marks the connection broken if the query future is dropped before it
/// finishes: the server may still be running it, and its reply would
/// confuse the next user.
struct Unfinished<'a> {
    poisoned: &'a AtomicBool,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether `err` means the connection must not be reused.
pub(crate) fn is_fatal(err: &Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::QUERY_CANCELED
        }
        // No SQLSTATE: an I/O or protocol error, not a query the server
        // rejected, unless the client raised it itself.
        None => err.as_db_error().is_none() && !is_client_side(err),
    }
}

/// Whether tokio-postgres raised `err` itself, about the caller's request
/// or its result rather than the connection: a parameter it could not
/// serialize or a parameter count that does not match (found before
/// anything is sent), a row count, column or value that does not fit what
/// the caller asked for (found once the reply was read in full). The
/// connection is as good as before. Its error kind is private, so this goes
/// by the messages it prints; an error not recognized here stays fatal.
fn is_client_side(err: &Error) -> bool {
    let message = err.to_string();
    [
        "error serializing parameter ",
        "error deserializing column ",
        "invalid column ",
        "query returned an unexpected number of ",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
        || (message.starts_with("expected ") && message.contains(" parameters but got "))
}

/// Whether a statement that failed with `err` never ran: the server did
/// not know its prepared statement (SQLSTATE 26000, after `DEALLOCATE`),
/// could not parse the text (42601: the server parses a whole text before
/// it runs any of it), or the client refused its parameters before sending
/// anything.
fn never_ran(err: &Error) -> bool {
    if err.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        || err.code() == Some(&SqlState::SYNTAX_ERROR)
    {
        return true;
    }
    let message = err.to_string();
    err.as_db_error().is_none()
        && (message.starts_with("error serializing parameter ")
            || (message.starts_with("expected ") && message.contains(" parameters but got ")))
}

/// How a statement text leaves the transaction block, by the first words
/// of each statement in it: `Some(true)` if its last `BEGIN` / `START`
/// (or `COMMIT AND CHAIN`) is not followed by an end, `Some(false)` if it
/// ends one (`COMMIT`, `END`, `ROLLBACK` but not `ROLLBACK TO`, `ABORT`,
/// `PREPARE TRANSACTION`), `None` if it does neither (`COMMIT PREPARED` and
/// `ROLLBACK PREPARED` included).
fn transaction_effect(sql: &str) -> Option<bool> {
    let mut effect = None;
    for statement in statements(sql) {
        let mut words = first_words(statement);
        let Some(first) = words.next() else {
            continue;
        };
        let rest: Vec<&str> = words.take(4).collect();
        let is = |w: &str, kw: &str| w.eq_ignore_ascii_case(kw);
        let has = |kw: &str| rest.iter().any(|w| is(w, kw));
        if is(first, "begin") || is(first, "start") {
            effect = Some(true);
        } else if (is(first, "commit") || is(first, "rollback"))
            && rest.first().is_some_and(|w| is(w, "prepared"))
        {
            // `COMMIT PREPARED 'x'` / `ROLLBACK PREPARED 'x'` end a prepared
            // transaction, not this session's block: they cannot run inside
            // one, and failing there they leave it open (and failed).
        } else if is(first, "commit")
            || is(first, "end")
            || is(first, "abort")
            || (is(first, "rollback") && !has("to"))
        {
            // `AND CHAIN` starts the next transaction at once.
            effect = Some(has("chain") && !has("no"));
        } else if is(first, "prepare") && rest.first().is_some_and(|w| is(w, "transaction")) {
            effect = Some(false);
        }
    }
    effect
}

/// The words a statement starts with: split at white space and `(`, with
/// comments anywhere between them skipped (`ROLLBACK /* to */` is a
/// `ROLLBACK`, not a `ROLLBACK TO`).
fn first_words(statement: &str) -> impl Iterator<Item = &str> {
    let mut rest = statement;
    std::iter::from_fn(move || {
        loop {
            let trimmed = skip_leading_comments(rest);
            let opened = trimmed.trim_start_matches('(');
            rest = opened;
            if opened.len() == trimmed.len() {
                break;
            }
        }
        let bytes = rest.as_bytes();
        let len = (0..bytes.len())
            .find(|&i| {
                bytes[i].is_ascii_whitespace()
                    || bytes[i] == b'('
                    || bytes[i..].starts_with(b"--")
                    || bytes[i..].starts_with(b"/*")
            })
            .unwrap_or(bytes.len());
        // `len` is at an ASCII byte or the end: a char boundary.
        let (word, after) = rest.split_at(len);
        rest = after;
        (!word.is_empty()).then_some(word)
    })
}

/// The index just past the block comment that opens at `start` (`/*`), or
/// the end of `bytes` if it is unterminated. Block comments nest, as
/// PostgreSQL nests them.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0u32, start);
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// `statement` after its leading white space and comments (`-- ...` lines,
/// `/* ... */` blocks, nested as PostgreSQL nests them).
fn skip_leading_comments(mut statement: &str) -> &str {
    loop {
        statement = statement.trim_start();
        if let Some(rest) = statement.strip_prefix("--") {
            statement = rest.find('\n').map_or("", |n| &rest[n..]);
        } else if statement.starts_with("/*") {
            let i = block_comment_end(statement.as_bytes(), 0);
            // `i` is past an ASCII `*/` or at the end: a char boundary.
            statement = statement.get(i..).unwrap_or("");
        } else {
            return statement;
        }
    }
}

/// Whether any statement of `sql` opens a transaction block.
fn sql_opens_block(sql: &str) -> bool {
    statements(sql).any(|statement| transaction_effect(statement) == Some(true))
}

/// Whether `sql` holds more than one statement (empty ones not counted).
fn more_than_one_statement(sql: &str) -> bool {
    statements(sql)
        .filter(|statement| !statement.trim().is_empty())
        .nth(1)
        .is_some()
}

/// The identifier-like word starting at `i` (empty if none): letters,
/// digits, `_`, `$` and non-ASCII bytes, so it ends on a char boundary.
fn word_at(bytes: &[u8], i: usize) -> &[u8] {
    let rest = bytes.get(i..).unwrap_or(&[]);
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
        .unwrap_or(rest.len());
    &rest[..len]
}

/// The statements of a text: split at each `;` outside quotes, dollar
/// quotes and comments, with the comments left in (a statement's first
/// words are read after its leading comments).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    let bytes = sql.as_bytes();
    let mut cuts = Vec::new();
    // Inside a SQL-standard function body (`BEGIN ATOMIC ... END`, whose
    // statements end in `;`): its `CASE ... END` nesting, as psql counts it.
    let mut atomic_depth = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' if atomic_depth == 0 => cuts.push(i),
            b if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                // A word, read whole (an identifier's `$` opens no quote).
                let word = word_at(bytes, i);
                let mut end = i + word.len();
                if word.eq_ignore_ascii_case(b"e") && bytes.get(end) == Some(&b'\'') {
                    // An escape string, `E'it\'s'`: a backslash escapes the
                    // byte after it, a quote too, so the string goes on.
                    end += 1;
                    while end < bytes.len() {
                        match bytes[end] {
                            b'\\' => end += 2,
                            b'\'' if bytes.get(end + 1) == Some(&b'\'') => end += 2,
                            b'\'' => break,
                            _ => end += 1,
                        }
                    }
                    // Past the closing quote (or the end of the text).
                    end = (end + 1).min(bytes.len());
                } else if atomic_depth > 0 {
                    if word.eq_ignore_ascii_case(b"case") {
                        atomic_depth += 1;
                    } else if word.eq_ignore_ascii_case(b"end") {
                        atomic_depth -= 1;
                    }
                } else if word.eq_ignore_ascii_case(b"begin") {
                    let mut next = end;
                    while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                        next += 1;
                    }
                    let following = word_at(bytes, next);
                    if following.eq_ignore_ascii_case(b"atomic") {
                        atomic_depth = 1;
                        end = next + following.len();
                    }
                }
                i = end - 1;
            }
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // At the byte after `*/`, which the loop's step would skip.
                i = block_comment_end(bytes, i) - 1;
            }
            b'$' => {
                // `$tag$ ... $tag$` (a function or DO body); `$1` is no quote.
                // A tag is spelled as an identifier: non-ASCII letters too.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80))
                    .map(|n| i + 1 + n);
                if let Some(t) = tag_end
                    && bytes[t] == b'$'
                    && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    let tag = &bytes[i..=t];
                    let body = t + 1;
                    i = bytes[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(bytes.len(), |n| body + n + tag.len() - 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut start = 0;
    cuts.push(bytes.len());
    cuts.into_iter().map(move |cut| {
        // Cuts fall on ASCII `;` or the end: char boundaries.
        let statement = sql.get(start..cut).unwrap_or("");
        start = cut + 1;
        statement
    })
}

impl PgConnection {
    /// Whether this connection must not be reused.
    pub fn is_broken(&self) -> bool {
        self.client.is_closed() || self.poisoned.load(Ordering::Relaxed)
    }

    /// Reports an error seen on this connection through a method not watched
    /// here; a fatal one (see [`PgManager`]) marks the connection broken, and
    /// a read-only one (SQLSTATE 25006) makes a [`Cluster`] re-check the
    /// role of the connection's server when it comes back.
    pub fn note_error(&self, err: &Error) {
        if is_fatal(err) {
            self.poisoned.store(true, Ordering::Relaxed);
        }
        if err.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
            self.read_only_error.store(true, Ordering::Relaxed);
        }
        if err.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) {
            self.in_transaction.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this connection is inside a transaction block, as far as the
    /// methods defined here saw: a `BEGIN` (or `START TRANSACTION`) run
    /// through them and not yet ended through them, or a statement refused
    /// with SQLSTATE 25P02 (the block failed). The pool discards a
    /// connection handed back in that state. Transactions made with
    /// tokio-postgres's own `transaction()` (through `Deref`) end
    /// themselves, committed or rolled back on drop, and are not tracked.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// Follows the transaction block through a statement text that ran
    /// (`Ok`) or failed.
    fn track<R>(&self, sql: &str, result: &Result<R, Error>) {
        let effect = transaction_effect(sql);
        let now = match (effect, result) {
            (Some(state), Ok(_)) => state,
            // A failed text that opened a block may have failed inside it,
            // which leaves the block open (and failed); a failed end
            // (`COMMIT` of a deferred violation) still ends it, but only
            // when it is the text's one statement and it ran: in
            // `UPDATE ...; COMMIT` the failure may have come before the
            // `COMMIT`, and a `COMMIT` whose cached statement the server
            // forgot, that it could not parse, or whose parameters the
            // client refused, never ran; a block open before stays open
            // (and failed).
            (Some(state), Err(e)) => {
                state
                    || sql_opens_block(sql)
                    || (self.in_transaction() && (more_than_one_statement(sql) || never_ran(e)))
            }
            (None, _) => return,
        };
        self.in_transaction.store(now, Ordering::Relaxed);
    }

    async fn watch<R>(&self, fut: impl Future<Output = Result<R, Error>>) -> Result<R, Error> {
        let mut guard = Unfinished {
            poisoned: &self.poisoned,
            finished: false,
        };
        let result = fut.await;
        guard.finished = true;
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    /// Prepares `sql` once per connection and reuses the statement after.
    ///
    /// # Errors
    /// The server's error for a statement it cannot prepare.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, Error> {
        if let Some(stmt) = self.statements.lock().get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.watch(self.client.prepare(sql)).await?;
        if self.capacity > 0 {
            let mut cache = self.statements.lock();
            if cache.len() >= self.capacity {
                cache.clear();
            }
            cache.insert(sql.to_owned(), stmt.clone());
        }
        Ok(stmt)
    }

    /// Drops `sql`'s cached statement when the server no longer accepts it:
    /// a table it reads was altered (0A000, "cached plan must not change
    /// result type") or the server forgot it (26000, after `DISCARD ALL` or
    /// `DEALLOCATE`). Kept, it would fail on this connection until the
    /// connection retires; dropped, the next call prepares it again.
    fn forget_if_stale<R>(&self, sql: &str, result: &Result<R, Error>) {
        if let Err(e) = result
            && matches!(
                e.code(),
                Some(&SqlState::FEATURE_NOT_SUPPORTED | &SqlState::INVALID_SQL_STATEMENT_NAME)
            )
        {
            self.statements.lock().remove(sql);
        }
    }

    /// Statements in the cache.
    pub fn cached_statements(&self) -> usize {
        self.statements.lock().len()
    }

    /// [`Client::query`] through the statement cache, watched.
    ///
    /// # Errors
    /// The server's or the connection's error.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let stmt = self.prepare_cached(sql).await?;
        let result = self.watch(self.client.query(&stmt, params)).await;
        self.forget_if_stale(sql, &result);
        self.track(sql, &result);
        result
    }

    /// [`Client::query_one`] through the statement cache, watched.
    ///
    /// # Errors
    /// The server's or the connection's error, or not exactly one row.
    pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let stmt = self.prepare_cached(sql).await?;
        let result = self.watch(self.client.query_one(&stmt, params)).await;
        self.forget_if_stale(sql, &result);
        self.track(sql, &result);
        result
    }

    /// [`Client::query_opt`] through the statement cache, watched.
    ///
    /// # Errors
    /// The server's or the connection's error, or more than one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let stmt = self.prepare_cached(sql).await?;
        let result = self.watch(self.client.query_opt(&stmt, params)).await;
        self.forget_if_stale(sql, &result);
        self.track(sql, &result);
        result
    }

    /// [`Client::execute`] through the statement cache, watched.
    ///
    /// # Errors
    /// The server's or the connection's error.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let stmt = self.prepare_cached(sql).await?;
        let result = self.watch(self.client.execute(&stmt, params)).await;
        self.forget_if_stale(sql, &result);
        self.track(sql, &result);
        result
    }

    /// [`Client::simple_query`], watched.
    ///
    /// # Errors
    /// The server's or the connection's error.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let result = self.watch(self.client.simple_query(sql)).await;
        self.track(sql, &result);
        result
    }

    /// [`Client::batch_execute`], watched.
    ///
    /// # Errors
    /// The server's or the connection's error.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        let result = self.watch(self.client.batch_execute(sql)).await;
        self.track(sql, &result);
        result
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::transaction_effect;

    #[test]
    fn statements_that_open_and_end_transaction_blocks() {
        for (sql, want) in [
            ("BEGIN", Some(true)),
            ("begin isolation level serializable", Some(true)),
            ("START TRANSACTION READ ONLY", Some(true)),
            ("COMMIT", Some(false)),
            ("end", Some(false)),
            ("ROLLBACK", Some(false)),
            ("rollback work", Some(false)),
            ("ABORT", Some(false)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("rollback to a", None),
            ("ROLLBACK TRANSACTION TO SAVEPOINT a", None),
            ("COMMIT AND CHAIN", Some(true)),
            ("COMMIT AND NO CHAIN", Some(false)),
            ("PREPARE TRANSACTION 'x'", Some(false)),
            ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", Some(false)),
            ("INSERT INTO t VALUES ('a;begin')", None),
            ("SELECT 1; BEGIN", Some(true)),
            ("SELECT 1", None),
            ("SAVEPOINT a", None),
            // Bodies in dollar quotes are not statements of the text.
            ("DO $$ BEGIN PERFORM 1; END $$", None),
            (
                "CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$ LANGUAGE plpgsql",
                None,
            ),
            ("BEGIN; DO $$ BEGIN PERFORM 1; END $$", Some(true)),
            ("SELECT $1::int", None),
            ("-- c; begin\nSELECT 1", None),
            ("/* ; begin */ SELECT 1", None),
            ("SELECT '$a$'; COMMIT", Some(false)),
            ("", None),
            (";;", None),
            ("$", None),
            ("SELECT $a", None),
            // A statement's first word comes after its leading comments.
            ("/* app:web */ BEGIN", Some(true)),
            ("-- tagged\n  COMMIT", Some(false)),
            ("BEGIN; /* a */ /* b */ ROLLBACK", Some(false)),
            // `$` inside an identifier opens no dollar quote.
            ("SELECT a$b$c FROM t; COMMIT", Some(false)),
            ("BEGIN; SELECT é$x$ FROM t", Some(true)),
            // A SQL-standard body's `;` and `END` are the body's.
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
                None,
            ),
            (
                "create or replace procedure p() language sql begin atomic\n  select case when true then 1 end;\n  select 2;\nend; COMMIT",
                Some(false),
            ),
            (
                "BEGIN; CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
                Some(true),
            ),
            // In an escape string a backslash escapes the quote after it:
            // the string goes on, and the statements after it count.
            ("INSERT INTO t VALUES (E'it\\'s'); BEGIN", Some(true)),
            ("select e'a\\'b'; commit", Some(false)),
            ("SELECT E'\\\\'; BEGIN", Some(true)),
            ("SELECT E'a''b\\'c'; BEGIN", Some(true)),
            ("SELECT E'it\\'s; BEGIN'", None),
            // Comments between or after a statement's words are not words.
            ("ROLLBACK /* to */", Some(false)),
            ("ROLLBACK -- back to the start", Some(false)),
            ("COMMIT -- and chain", Some(false)),
            ("COMMIT /* app */ AND /* x */ CHAIN", Some(true)),
            ("COMMIT AND CHAIN -- no more", Some(true)),
            ("BEGIN/* app */", Some(true)),
            ("ROLLBACK/**/TO s", None),
            // Block comments nest, as in PostgreSQL.
            ("SELECT 1 /* /* */ ; BEGIN */", None),
            // Two-phase commit's second phase ends another session's
            // prepared transaction, not this one's block: it cannot run
            // inside a block, and failing there it leaves the block open
            // (and failed), not ended.
            ("COMMIT PREPARED 'x'", None),
            ("rollback prepared 'x'", None),
            ("COMMIT /* c */ PREPARED 'x'", None),
            ("BEGIN; COMMIT PREPARED 'x'", Some(true)),
            // A dollar quote's tag may hold non-ASCII letters, as an
            // identifier may.
            ("BEGIN; DO $é$ BEGIN PERFORM 1; END $é$", Some(true)),
            ("DO $_é1$ BEGIN PERFORM 1; END $_é1$; COMMIT", Some(false)),
        ] {
            assert_eq!(transaction_effect(sql), want, "{sql:?}");
        }
    }
}
