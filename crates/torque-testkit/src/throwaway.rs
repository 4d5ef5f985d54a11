//! Throwaway servers started from local binaries, for machines with no server running.
//!
//! Each server lives in a temporary directory and is watched by a detached shell
//! (`setsid sh -c …`) that stops it and removes the directory once the test process
//! is gone, however it ends: normal exit, panic, abort or SIGKILL. Rust statics are
//! never dropped, so this watchdog is what makes "removed at exit" hold for the
//! process-wide server; an owned [`ThrowawayServer`] also stops at drop.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which server a [`ThrowawayServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// PostgreSQL, started with `initdb` + `postgres`.
    Postgres,
    /// Redis, started with `redis-server`.
    Redis,
}

/// A server started by the testkit from local binaries, in its own temporary
/// directory, on a free loopback port.
///
/// Dropping it stops the server and removes the directory. If the process dies
/// first, a detached watchdog does the same.
pub struct ThrowawayServer {
    kind: ServerKind,
    addr: SocketAddr,
    dir: PathBuf,
    /// Shell command that stops the server (run by drop and by the watchdog).
    stop: String,
    /// For PostgreSQL: `[runuser -u U --] pg_ctl -D DATA`, to which a
    /// subcommand is appended (`promote`).
    pg_ctl: Option<String>,
    watchdog: Option<std::process::Child>,
}

impl fmt::Debug for ThrowawayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrowawayServer")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ThrowawayServer {
    /// Starts a throwaway PostgreSQL cluster: `initdb` (trust auth, superuser
    /// `postgres`) into a temporary directory, then `postgres` on a free port of
    /// 127.0.0.1 with durability off (fsync, full-page writes) since nothing in it
    /// outlives the tests. When running as root, the binaries run as an unprivileged
    /// user (`postgres` if it exists, else `nobody`) through `runuser`.
    ///
    /// # Errors
    /// A message saying what is missing or what failed, with the server's log.
    pub fn start_postgres() -> Result<Self, String> {
        let bin = find_postgres_bin().ok_or_else(|| {
            "no PostgreSQL binaries: looked for initdb and postgres on PATH and under \
             /usr/lib/postgresql/*/bin"
                .to_string()
        })?;
        let dir = make_temp_dir("pg")?;
        let data = dir.join("data");
        let run_as = unprivileged_user();
        if let Some(user) = &run_as {
            chown_to(&dir, user)?;
        }
        let initdb = bin.join("initdb");
        let out = as_user(run_as.as_deref(), &initdb)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Self::start_postgres_data(&bin, dir, run_as.as_deref())
    }

    /// Starts a streaming replica of `primary` (a throwaway PostgreSQL from
    /// [`start_postgres`](Self::start_postgres)): `pg_basebackup -R -X stream`
    /// into a temporary directory, then `postgres` in hot standby on a free
    /// port. Its `pg_is_in_recovery()` is true until
    /// [`promote`](Self::promote).
    ///
    /// # Errors
    /// A message saying what is missing or what failed, with the server's log.
    pub fn start_postgres_replica(primary: &ThrowawayServer) -> Result<Self, String> {
        if primary.kind != ServerKind::Postgres {
            return Err("a replica needs a PostgreSQL primary".to_string());
        }
        let bin = find_postgres_bin().ok_or("no PostgreSQL binaries found")?;
        let basebackup = bin.join("pg_basebackup");
        if !basebackup.is_file() {
            return Err(format!("no {}", basebackup.display()));
        }
        let dir = make_temp_dir("pg-replica")?;
        let data = dir.join("data");
        let run_as = unprivileged_user();
        if let Some(user) = &run_as {
            chown_to(&dir, user)?;
        }
        let out = as_user(run_as.as_deref(), &basebackup)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(primary.addr.port().to_string())
            .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", basebackup.display()))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "pg_basebackup failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Self::start_postgres_data(&bin, dir, run_as.as_deref())
    }

    /// Starts `postgres` on `dir/data` on a free port of 127.0.0.1.
    fn start_postgres_data(bin: &Path, dir: PathBuf, run_as: Option<&str>) -> Result<Self, String> {
        let data = dir.join("data");
        let port = free_port()?;
        let pg_ctl = bin.join("pg_ctl");
        let runuser = run_as
            .map(|u| format!("runuser -u {u} -- "))
            .unwrap_or_default();
        let opts = format!(
            "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c synchronous_commit=off -c max_connections=200",
            data = data.display()
        );
        let ctl = format!(
            "{runuser}{pg_ctl} -D {data}",
            pg_ctl = pg_ctl.display(),
            data = data.display()
        );
        let start = format!(
            "{ctl} -l {data}/server.log -s -o '{opts}' start",
            data = data.display()
        );
        let stop = format!("{ctl} -s -m immediate stop");
        let mut server = Self::launch(ServerKind::Postgres, port, dir, &start, stop)?;
        server.pg_ctl = Some(ctl);
        server.wait_ready(&data.join("server.log"))?;
        Ok(server)
    }

    /// Promotes a replica started by
    /// [`start_postgres_replica`](Self::start_postgres_replica) to primary
    /// (`pg_ctl promote`, waiting until it takes writes).
    ///
    /// # Errors
    /// When this is not a PostgreSQL server or `pg_ctl promote` fails.
    pub fn promote(&self) -> Result<(), String> {
        let ctl = self.pg_ctl.as_ref().ok_or("not a PostgreSQL server")?;
        let out = Command::new("sh")
            .args(["-c", &format!("{ctl} -w -s promote")])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl promote failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts a throwaway `redis-server` on a free port of 127.0.0.1 that keeps
    /// nothing on disk.
    ///
    /// # Errors
    /// A message saying what is missing or what failed.
    pub fn start_redis() -> Result<Self, String> {
        let bin = which("redis-server").ok_or("no redis-server on PATH")?;
        let dir = make_temp_dir("redis")?;
        let port = free_port()?;
        let log = dir.join("server.log");
        let start = format!(
            "{bin} --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
             --dir {dir} --pidfile {dir}/redis.pid --logfile {log}",
            bin = bin.display(),
            dir = dir.display(),
            log = log.display()
        );
        // Waits (at most 10 s) for the process to be gone, so the port is closed
        // when drop returns.
        let stop = format!(
            "pid=$(cat {dir}/redis.pid 2>/dev/null) && kill $pid 2>/dev/null && \
             for _ in $(seq 200); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done",
            dir = dir.display()
        );
        let server = Self::launch(ServerKind::Redis, port, dir, &start, stop)?;
        server.wait_ready(&log)?;
        Ok(server)
    }

    /// Runs `start`, then a detached watchdog that runs `stop` and removes `dir`
    /// once this process has gone (or once it is told to, by [`Drop`]).
    fn launch(
        kind: ServerKind,
        port: u16,
        dir: PathBuf,
        start: &str,
        stop: String,
    ) -> Result<Self, String> {
        let out = Command::new("sh")
            .args(["-c", start])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("data/server.log"))
                .or_else(|_| std::fs::read_to_string(dir.join("server.log")))
                .unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "starting the {kind:?} server failed ({}): {}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        // The watchdog polls for the parent once a second: no signal reaches it
        // when the test process is killed, and `setsid` keeps Ctrl-C (sent to the
        // foreground process group) from killing it before it has cleaned up.
        let script = format!(
            "trap '' INT HUP; while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             {stop}; rm -rf {dir}",
            parent = std::process::id(),
            dir = dir.display(),
        );
        let watchdog = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the watchdog (setsid sh): {e}"))?;
        Ok(Self {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            stop,
            pg_ctl: None,
            watchdog: Some(watchdog),
        })
    }

    fn wait_ready(&self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {:?} server at {} did not accept connections within 60 s; log:\n{}",
                    self.kind,
                    self.addr,
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The loopback address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temporary directory the server lives in (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(mut watchdog) = self.watchdog.take() {
            // The server is stopped and its directory gone: the watchdog has
            // nothing left to do.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Looks for a directory holding both `initdb` and `postgres`: on PATH first, then
/// the newest of `/usr/lib/postgresql/*/bin` (Debian and Ubuntu put them there).
fn find_postgres_bin() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        let dir = std::fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))?;
        if dir.join("postgres").is_file() && dir.join("pg_ctl").is_file() {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root; pick the user to run it as.
fn unprivileged_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    ["postgres", "nobody"]
        .into_iter()
        .find(|u| {
            Command::new("id")
                .arg("-u")
                .arg(u)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn chown_to(dir: &Path, user: &str) -> Result<(), String> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run chown: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chown -R {user} {} failed", dir.display()))
    }
}

fn make_temp_dir(tag: &str) -> Result<PathBuf, String> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("torque-testkit-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A port the kernel just handed out on 127.0.0.1 (released at once, so another
/// process could take it first; the server's start then fails loudly).
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
