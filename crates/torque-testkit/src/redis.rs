//! Redis for tests: one server per test process, one key namespace per test.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::throwaway::ThrowawayServer;

const HOW_TO_GET_ONE: &str = "\
Tests need a Redis server. Any one of these works:
  - set REDIS_URL=redis://HOST:PORT[/DB] to a server the tests may write to;
  - run a server on 127.0.0.1:6379;
  - install redis-server so the testkit starts a throwaway one itself:
      Debian/Ubuntu: apt-get install redis-server
      macOS:         brew install redis";

/// Where the test server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisOrigin {
    /// `REDIS_URL` named it.
    Env,
    /// A server already answering on 127.0.0.1:6379.
    Local,
    /// A throwaway `redis-server` the testkit started.
    Throwaway,
}

/// A Redis server that tests may write to.
///
/// Most tests use [`redis_namespace`] instead, which finds the process-wide
/// server and hands out an isolated key prefix.
pub struct RedisServer {
    url: String,
    addr: Option<SocketAddr>,
    origin: RedisOrigin,
    throwaway: Option<ThrowawayServer>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .field("throwaway", &self.throwaway)
            .finish()
    }
}

static SHARED: OnceCell<RedisServer> = OnceCell::const_new();

/// An isolated key namespace on the process-wide test Redis; its keys are
/// deleted when the returned value is dropped.
///
/// # Panics
/// When no Redis server can be had; the message says how to get one.
///
/// # Example
/// ```no_run
/// # async fn demo() {
/// let ns = torque_testkit::redis_namespace().await;
/// let mut conn = ns.connect().await;
/// let key = ns.key("greeting");
/// let _: () = redis::cmd("SET").arg(&key).arg("hello").query_async(&mut conn).await.unwrap();
/// # }
/// ```
pub async fn redis_namespace() -> RedisNamespace {
    RedisServer::shared().await.namespace()
}

impl RedisServer {
    /// The process-wide test server, found on first use: a throwaway server if
    /// `TORQUE_TESTKIT_REDIS=throwaway`; else `REDIS_URL` if set;
    /// else Redis on 127.0.0.1:6379; else a throwaway `redis-server` started
    /// from PATH, stopped when the process exits.
    ///
    /// # Panics
    /// When none of those works, with a message saying how to get a server.
    pub async fn shared() -> &'static RedisServer {
        SHARED
            .get_or_init(|| async {
                match Self::discover().await {
                    Ok(server) => server,
                    Err(why) => panic!("no Redis for tests: {why}\n\n{HOW_TO_GET_ONE}"),
                }
            })
            .await
    }

    async fn discover() -> Result<RedisServer, String> {
        if std::env::var("TORQUE_TESTKIT_REDIS").as_deref() == Ok("throwaway") {
            return tokio::task::spawn_blocking(Self::throwaway)
                .await
                .map_err(|e| format!("starting a throwaway redis-server panicked: {e}"))?
                .map_err(|e| format!("TORQUE_TESTKIT_REDIS=throwaway: {e}"));
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            ping(&url)
                .await
                .map_err(|e| format!("REDIS_URL={url:?} is set but unusable: {e}"))?;
            let addr = addr_of(&url);
            return Ok(Self {
                url,
                addr,
                origin: RedisOrigin::Env,
                throwaway: None,
            });
        }
        let local = "redis://127.0.0.1:6379";
        let local_err = match ping(local).await {
            Ok(()) => {
                return Ok(Self {
                    url: local.to_string(),
                    addr: addr_of(local),
                    origin: RedisOrigin::Local,
                    throwaway: None,
                });
            }
            Err(e) => e,
        };
        match tokio::task::spawn_blocking(Self::throwaway).await {
            Ok(Ok(server)) => Ok(server),
            Ok(Err(throwaway_err)) => Err(format!(
                "REDIS_URL is not set; 127.0.0.1:6379: {local_err}; throwaway server: {throwaway_err}"
            )),
            Err(join) => Err(format!(
                "starting a throwaway redis-server panicked: {join}"
            )),
        }
    }

    /// Starts a throwaway `redis-server` owned by the caller: stopped and removed
    /// when the returned value is dropped (or, failing that, when the process exits).
    ///
    /// Blocks while the server starts; from async code call it through
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    /// What is missing or what failed.
    pub fn throwaway() -> Result<RedisServer, String> {
        let server = ThrowawayServer::start_redis()?;
        let addr = server.addr();
        Ok(Self {
            url: format!("redis://{addr}"),
            addr: Some(addr),
            origin: RedisOrigin::Throwaway,
            throwaway: Some(server),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where this server came from.
    pub fn origin(&self) -> RedisOrigin {
        self.origin
    }

    /// The server's TCP address, for a [`FaultProxy`](crate::FaultProxy).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The throwaway server behind this one, if the testkit started it.
    pub fn throwaway_server(&self) -> Option<&ThrowawayServer> {
        self.throwaway.as_ref()
    }

    /// A fresh key namespace (prefix) on this server.
    pub fn namespace(&self) -> RedisNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        RedisNamespace {
            url: self.url.clone(),
            addr: self.addr,
            prefix: format!(
                "torque-test:{}:{}:",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

/// A key prefix of its own for one test on a shared Redis; every key under it is
/// deleted when this value is dropped.
///
/// Isolation holds for keys (and pub/sub channels) that the test names through
/// [`key`](Self::key). Commands that act on the whole database (`FLUSHDB`,
/// `KEYS *`, keyspace notifications) see other tests' keys: a test that needs
/// those should start a [`RedisServer::throwaway`] of its own.
pub struct RedisNamespace {
    url: String,
    addr: Option<SocketAddr>,
    prefix: String,
}

impl fmt::Debug for RedisNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisNamespace")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisNamespace {
    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the same server reached through `addr` (a
    /// [`FaultProxy`](crate::FaultProxy)), keeping the database number and
    /// credentials.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return format!("redis://{addr}");
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((creds, _)) => format!("{scheme}://{creds}@{addr}{path}"),
            None => format!("{scheme}://{addr}{path}"),
        }
    }

    /// The server's TCP address, for a [`FaultProxy`](crate::FaultProxy).
    ///
    /// # Panics
    /// When the server is reached over a Unix socket.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| {
            panic!(
                "the test Redis ({}) is not reached over TCP; fault tests need a TCP address",
                self.url
            )
        })
    }

    /// The prefix every key of this namespace starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` inside this namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A client for the server.
    ///
    /// # Panics
    /// When the URL does not parse (it was checked when the server was found).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str())
            .unwrap_or_else(|e| panic!("bad Redis URL {}: {e}", self.url))
    }

    /// A multiplexed async connection, driven on the current runtime.
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test Redis at {}: {e}", self.url))
    }

    /// The keys currently under this namespace's prefix.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.connect().await;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(&self.prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("SCAN on the test Redis failed: {e}"));
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        // The blocking client needs no runtime, so this works wherever drop runs.
        let result = (|| -> redis::RedisResult<()> {
            let client = redis::Client::open(self.url.as_str())?;
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
            let pattern = format!("{}*", glob_escape(&self.prefix));
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK").arg(&keys).query::<()>(&mut conn)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })();
        if let Err(e) = result {
            eprintln!(
                "torque-testkit: could not delete test keys {}*: {e}",
                self.prefix
            );
        }
    }
}

async fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer to PING within 5 s".to_string()),
    }
}

fn addr_of(url: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let info = redis::Client::open(url).ok()?.get_connection_info().clone();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.as_str(), *port)
            .to_socket_addrs()
            .ok()?
            .find(|a| a.is_ipv4())
            .or_else(|| (host.as_str(), *port).to_socket_addrs().ok()?.next()),
        _ => None,
    }
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
