//! PostgreSQL for tests: one server per test process, one fresh database per test.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::throwaway::ThrowawayServer;

/// Name of the template every test database is created from.
const TEMPLATE: &str = "torque_testkit_template";
/// Prefix of every test database's name; followed by the process id and a counter.
const DB_PREFIX: &str = "torque_test_";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const HOW_TO_GET_ONE: &str = "\
Tests need a PostgreSQL server. Any one of these works:
  - set DATABASE_URL=postgres://USER[:PASSWORD]@HOST:PORT/DB to a server whose user may CREATE DATABASE;
  - run a server on 127.0.0.1:5432 with trust auth for user `postgres`;
  - install the binaries so the testkit starts a throwaway cluster itself:
      Debian/Ubuntu: apt-get install postgresql   (initdb lands in /usr/lib/postgresql/*/bin)
      macOS:         brew install postgresql";

/// Where the test server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// `DATABASE_URL` named it.
    Env,
    /// A server already answering on 127.0.0.1:5432.
    Local,
    /// A throwaway cluster the testkit started from local binaries.
    Throwaway,
}

/// A PostgreSQL server that tests may create databases on.
///
/// Most tests never touch this type: [`pg_database`] finds the process-wide
/// server and hands out a fresh database. Use [`PgServer::throwaway`] for a test
/// that needs a server of its own (to restart it, say).
pub struct PgServer {
    /// Connects to the maintenance database, as a user allowed to create databases.
    admin: Config,
    origin: Origin,
    template_ready: OnceCell<()>,
    throwaway: Option<ThrowawayServer>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("origin", &self.origin)
            .field("hosts", &self.admin.get_hosts())
            .field("ports", &self.admin.get_ports())
            .field("throwaway", &self.throwaway)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceCell<PgServer> = OnceCell::const_new();

/// A fresh, empty database on the process-wide test server, dropped when the
/// returned value is dropped.
///
/// # Panics
/// When no PostgreSQL server can be had (the message says how to get one), or
/// when the server refuses to create the database. A test that needs PostgreSQL
/// fails loudly rather than skipping.
///
/// # Example
/// ```no_run
/// # async fn demo() {
/// let db = torque_testkit::pg_database().await;
/// let client = db.connect().await;
/// let row = client.query_one("SELECT current_database()", &[]).await.unwrap();
/// assert_eq!(row.get::<_, String>(0), db.name());
/// # }
/// ```
pub async fn pg_database() -> TestDatabase {
    PgServer::shared().await.database().await
}

impl PgServer {
    /// The process-wide test server, found on first use: a throwaway cluster if
    /// `TORQUE_TESTKIT_PG=throwaway`; else `DATABASE_URL` if set;
    /// else PostgreSQL on 127.0.0.1:5432 (user `postgres`, database `postgres`);
    /// else a throwaway cluster started from local binaries, stopped and removed
    /// when the process exits.
    ///
    /// # Panics
    /// When none of those works, with a message saying how to get a server.
    pub async fn shared() -> &'static PgServer {
        SHARED
            .get_or_init(|| async {
                match Self::discover().await {
                    Ok(server) => server,
                    Err(why) => panic!("no PostgreSQL for tests: {why}\n\n{HOW_TO_GET_ONE}"),
                }
            })
            .await
    }

    async fn discover() -> Result<PgServer, String> {
        if std::env::var("TORQUE_TESTKIT_PG").as_deref() == Ok("throwaway") {
            return tokio::task::spawn_blocking(Self::throwaway)
                .await
                .map_err(|e| format!("starting a throwaway cluster panicked: {e}"))?
                .map_err(|e| format!("TORQUE_TESTKIT_PG=throwaway: {e}"));
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let admin: Config = url
                .parse()
                .map_err(|e| format!("DATABASE_URL={url:?} does not parse: {e}"))?;
            // The user asked for this server: not reaching it is an error, not a
            // reason to quietly test against another one.
            connect(&admin)
                .await
                .map_err(|e| format!("DATABASE_URL={url:?} is set but unusable: {e}"))?;
            return Ok(Self::new(admin, Origin::Env, None));
        }
        let mut local = Config::new();
        local
            .host("127.0.0.1")
            .port(5432)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(CONNECT_TIMEOUT);
        let local_err = match connect(&local).await {
            Ok(_) => {
                let server = Self::new(local, Origin::Local, None);
                server.drop_stale_databases().await;
                return Ok(server);
            }
            Err(e) => e,
        };
        match tokio::task::spawn_blocking(Self::throwaway).await {
            Ok(Ok(server)) => Ok(server),
            Ok(Err(throwaway_err)) => Err(format!(
                "DATABASE_URL is not set; 127.0.0.1:5432: {local_err}; throwaway cluster: {throwaway_err}"
            )),
            Err(join) => Err(format!("starting a throwaway cluster panicked: {join}")),
        }
    }

    /// Starts a throwaway cluster owned by the caller: stopped and removed when
    /// the returned server is dropped (or, failing that, when the process exits).
    ///
    /// This blocks for a second or two while `initdb` runs; from async code call
    /// it through `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    /// What is missing (binaries) or what failed, with the server's log.
    pub fn throwaway() -> Result<PgServer, String> {
        let server = ThrowawayServer::start_postgres()?;
        let mut admin = Config::new();
        admin
            .host("127.0.0.1")
            .port(server.addr().port())
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Self::new(admin, Origin::Throwaway, Some(server)))
    }

    fn new(admin: Config, origin: Origin, throwaway: Option<ThrowawayServer>) -> Self {
        Self {
            admin,
            origin,
            template_ready: OnceCell::new(),
            throwaway,
        }
    }

    /// Where this server came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Connection settings for the maintenance database.
    pub fn config(&self) -> &Config {
        &self.admin
    }

    /// The server's TCP address, when it is reached over TCP (what a
    /// [`FaultProxy`](crate::FaultProxy) needs); `None` for a Unix socket.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        tcp_addr(&self.admin)
    }

    /// The throwaway server behind this one, if the testkit started it.
    pub fn throwaway_server(&self) -> Option<&ThrowawayServer> {
        self.throwaway.as_ref()
    }

    /// Creates a fresh database from the testkit's template; it is dropped (with
    /// any connections still open to it) when the returned value is dropped.
    ///
    /// # Panics
    /// When the server refuses, with its error.
    pub async fn database(&self) -> TestDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{DB_PREFIX}{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
        self.template_ready
            .get_or_init(|| async {
                // Several test processes may race to create it: the loser's
                // "already exists" (42P04, or 23505 from the catalog index) is fine.
                if let Err(e) = admin
                    .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
                    .await
                {
                    let code = e.code().map(|c| c.code());
                    if !matches!(code, Some("42P04" | "23505")) {
                        panic!("cannot create the template database {TEMPLATE}: {e}");
                    }
                }
            })
            .await;
        // CREATE DATABASE fails with 55006 while anyone is connected to the
        // template; nobody should be, but a developer's psql might.
        let mut attempts = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempts < 50 && e.code().map(|c| c.code()) == Some("55006") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database {name}: {e}"),
            }
        }
        let mut config = self.admin.clone();
        config.dbname(&name);
        TestDatabase {
            name,
            config,
            admin: self.admin.clone(),
        }
    }

    /// Drops test databases left by test processes that died before dropping them.
    /// Only for a server on this machine, where process ids mean something.
    async fn drop_stale_databases(&self) {
        let Ok(admin) = connect(&self.admin).await else {
            return;
        };
        let Ok(rows) = admin
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                &[&DB_PREFIX],
            )
            .await
        else {
            return;
        };
        for row in rows {
            let name: String = row.get(0);
            let pid = name
                .strip_prefix(DB_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    }
}

/// A database of its own for one test, dropped when this value is dropped.
///
/// Dropping closes every connection still open to it (`WITH (FORCE)`).
pub struct TestDatabase {
    name: String,
    config: Config,
    admin: Config,
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection settings for this database.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// Connection settings for this database, reached through `addr` instead of
    /// the server's own address: point it at a [`FaultProxy`](crate::FaultProxy).
    pub fn config_via(&self, addr: SocketAddr) -> Config {
        let mut config = Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .dbname(&self.name)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        config
    }

    /// The server's TCP address, for a [`FaultProxy`](crate::FaultProxy) to forward to.
    ///
    /// # Panics
    /// When the server is reached over a Unix socket (set `DATABASE_URL` to a
    /// TCP address for fault tests).
    pub fn tcp_addr(&self) -> SocketAddr {
        tcp_addr(&self.config).unwrap_or_else(|| {
            panic!(
                "the test PostgreSQL server is not reached over TCP ({:?}); fault tests need a TCP address",
                self.config.get_hosts()
            )
        })
    }

    /// A connection to this database, driven by a task on the current runtime.
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn connect(&self) -> Client {
        connect(&self.config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside or outside a runtime, and the test's runtime may be
        // shutting down: run the DROP on a thread with a runtime of its own.
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let client = connect(&admin).await.map_err(|e| e.to_string())?;
                client.batch_execute(&sql).await.map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = result {
            eprintln!(
                "torque-testkit: could not drop test database {}: {e}",
                self.name
            );
        }
    }
}

/// Connects and spawns the connection's driver on the current runtime.
async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Ends with an error when the server or a fault proxy cuts the connection;
        // the client's next call reports that, so nothing to do here.
        let _ = connection.await;
    });
    Ok(client)
}

fn tcp_addr(config: &Config) -> Option<SocketAddr> {
    let host = match config.get_hosts().first()? {
        Host::Tcp(host) => host.clone(),
        Host::Unix(_) => return None,
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse().ok().or_else(|| {
            use std::net::ToSocketAddrs;
            (host.as_str(), port)
                .to_socket_addrs()
                .ok()?
                .next()
                .map(|a| a.ip())
        })?
    };
    Some(SocketAddr::new(ip, port))
}
