//! A fault-injecting TCP proxy on loopback.
//!
//! Tests put a [`FaultProxy`] between a client and a server and change its faults
//! while traffic flows, instead of ever stopping a shared server. Every setter
//! takes effect for data that arrives after it returns; the `async` ones
//! ([`reset_all`](FaultProxy::reset_all), [`refuse_for`](FaultProxy::refuse_for),
//! [`restart`](FaultProxy::restart)) return once the fault is in place.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest chunk forwarded at once.
const CHUNK: usize = 16 * 1024;

/// The faults applied to data as it crosses the proxy.
#[derive(Debug, Clone, Default)]
struct Faults {
    latency: Duration,
    jitter: Duration,
    blackhole: bool,
    cut: Option<CutRule>,
    bandwidth: Option<u64>,
}

/// "Cut each connection once it has carried `bytes` more bytes", counted from
/// the moment the rule was set (its `epoch`) for connections already open.
#[derive(Debug, Clone, Copy)]
struct CutRule {
    bytes: u64,
    epoch: u64,
}

enum Command {
    Refuse {
        until: Option<Instant>,
        ack: oneshot::Sender<()>,
    },
}

/// Counters of what the proxy has done, from [`FaultProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections open now.
    pub open: u64,
    /// Connections the proxy reset (by `reset_all`, a cut, or a reset on the other side).
    pub reset: u64,
    /// Bytes forwarded from clients to the server.
    pub bytes_to_server: u64,
    /// Bytes forwarded from the server to clients.
    pub bytes_to_client: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: Counters,
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_id: AtomicU64,
    cut_epoch: AtomicU64,
    rng: Mutex<u64>,
    /// When the port last opened: at start, or when a refusal ended.
    accepting_since: Mutex<Option<Instant>>,
}

struct ConnHandle {
    kill: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

/// A TCP proxy on 127.0.0.1 that forwards to one server and injects faults on
/// demand: added latency with jitter, a blackhole (a half-open server), reset of
/// every open connection, refusal of new connections for a while (a restart),
/// a cut after N bytes, and a bandwidth limit.
///
/// The proxy runs on the runtime that started it and stops when dropped, closing
/// every connection through it.
///
/// # Example
/// ```no_run
/// # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
/// use std::time::Duration;
/// use torque_testkit::FaultProxy;
///
/// let proxy = FaultProxy::start(server).await?;
/// // point the client under test at proxy.addr(), then:
/// proxy.set_latency(Duration::from_millis(50), Duration::from_millis(10));
/// proxy.restart(Duration::from_secs(2)).await; // reset everything, refuse for 2 s
/// proxy.pass_through().await;
/// # Ok(()) }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("faults", &*self.shared.faults.borrow())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`,
    /// passing everything through until told otherwise.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (faults, _) = watch::channel(Faults::default());
        let shared = Arc::new(Shared {
            upstream,
            faults,
            counters: Counters::default(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            cut_epoch: AtomicU64::new(0),
            rng: Mutex::new(0x5eed_1234_abcd_0001),
            accepting_since: Mutex::new(Some(Instant::now())),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let accept_task = tokio::spawn(accept_loop(listener, addr, Arc::clone(&shared), rx));
        Ok(FaultProxy {
            addr,
            shared,
            commands,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            bytes_to_server: c.bytes_to_server.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
        }
    }

    /// When the proxy last began accepting connections: when it started, or
    /// when its port was bound again at the end of a refusal (which, on a busy
    /// machine, can be a little after the refusal was due to end). `None`
    /// while it refuses. A test that times a recovery from the server's
    /// return measures from this instant.
    pub fn accepting_since(&self) -> Option<Instant> {
        *lock(&self.shared.accepting_since)
    }

    /// Clears every fault: no latency, no blackhole, no cut, no bandwidth limit,
    /// and new connections are accepted again. Open connections carry on.
    pub async fn pass_through(&self) {
        self.shared.faults.send_replace(Faults::default());
        self.refuse(None).await;
    }

    /// Delays every chunk by `latency` plus a uniformly random extra of up to
    /// `jitter`, in each direction, keeping the byte order.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.shared.faults.send_modify(|f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// Seeds the jitter's random generator, for a repeatable run.
    pub fn set_seed(&self, seed: u64) {
        *lock(&self.shared.rng) = seed;
    }

    /// While on, the proxy behaves like a half-open server or a network
    /// partition: connections are accepted, data is neither forwarded nor
    /// answered, and nothing is closed. Data held back is delivered, in order,
    /// once the blackhole is turned off (as TCP retransmission would).
    pub fn set_blackhole(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = on);
    }

    /// Cuts (resets both sides of) each connection once it has carried `bytes`
    /// more bytes, both directions together, counted from this call for open
    /// connections and from their start for new ones; `None` removes the rule.
    /// The first `bytes` bytes are forwarded, then the connection is reset.
    pub fn set_cut_after(&self, bytes: Option<u64>) {
        let epoch = self.shared.cut_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared
            .faults
            .send_modify(|f| f.cut = bytes.map(|bytes| CutRule { bytes, epoch }));
    }

    /// Limits each connection to `bytes_per_sec` in each direction; `None`
    /// removes the limit. A limit of 0 is taken as 1 byte per second.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .faults
            .send_modify(|f| f.bandwidth = bytes_per_sec.map(|b| b.max(1)));
    }

    /// Resets (TCP RST) every open connection, on both sides; returns once they
    /// are all closed. New connections are still accepted.
    pub async fn reset_all(&self) {
        let handles: Vec<ConnHandle> = lock(&self.shared.conns).drain().map(|(_, h)| h).collect();
        let mut done = Vec::with_capacity(handles.len());
        for handle in handles {
            let _ = handle.kill.send(());
            done.push(handle.done);
        }
        for d in done {
            let _ = d.await;
        }
    }

    /// Refuses new connections (the port is closed: clients see "connection
    /// refused") for `duration`, then accepts again. Open connections carry on.
    /// Returns once the port is closed.
    pub async fn refuse_for(&self, duration: Duration) {
        self.refuse(Some(Instant::now() + duration)).await;
    }

    /// What a server restart looks like to its clients: every open connection is
    /// reset and new ones are refused for `down_for`.
    pub async fn restart(&self, down_for: Duration) {
        self.refuse_for(down_for).await;
        self.reset_all().await;
    }

    async fn refuse(&self, until: Option<Instant>) {
        let (ack, acked) = oneshot::channel();
        if self.commands.send(Command::Refuse { until, ack }).is_ok() {
            let _ = acked.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task and so closes their sockets.
        self.accept_task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    // SO_REUSEADDR lets the port be bound again after a refusal window while
    // connections accepted on it are still open or in TIME_WAIT.
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut listener = Some(listener);
    let mut refuse_until: Option<Instant> = None;
    let mut tasks = JoinSet::new();
    loop {
        if let Some(until) = refuse_until
            && Instant::now() >= until
        {
            refuse_until = None;
        }
        if refuse_until.is_none() && listener.is_none() {
            match bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    *lock(&shared.accepting_since) = Some(Instant::now());
                }
                Err(e) => {
                    // Someone took the port during the refusal window: nothing
                    // can be done but try again; tests will see refusals go on.
                    eprintln!("torque-testkit: FaultProxy cannot rebind {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Refuse { until, ack }) => {
                    refuse_until = until;
                    if until.is_some() {
                        // Closing the listener also resets connections still in
                        // its backlog, never accepted.
                        listener = None;
                        *lock(&shared.accepting_since) = None;
                    } else if listener.is_none() {
                        // Accepting again before the ack, so a caller that
                        // connects right after `pass_through` gets in.
                        listener = bind(addr).ok();
                        if listener.is_some() {
                            *lock(&shared.accepting_since) = Some(Instant::now());
                        }
                    }
                    let _ = ack.send(());
                }
                None => return,
            },
            () = tokio::time::sleep_until(refuse_until.unwrap_or_else(Instant::now)), if refuse_until.is_some() => {}
            accepted = accept(listener.as_ref()), if listener.is_some() => {
                if let Ok((client, _)) = accepted {
                    spawn_connection(&mut tasks, client, &shared);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_connection(tasks: &mut JoinSet<()>, client: TcpStream, shared: &Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (kill, killed) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    lock(&shared.conns).insert(id, ConnHandle { kill, done });
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::clone(shared);
    tasks.spawn(async move {
        serve(client, &shared, killed).await;
        lock(&shared.conns).remove(&id);
        shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        drop(done_tx);
    });
}

/// Why a pump stopped forwarding before a clean end of stream.
#[derive(Debug)]
struct Broken;

async fn serve(mut client: TcpStream, shared: &Shared, mut killed: oneshot::Receiver<()>) {
    let mut faults = shared.faults.subscribe();
    // A connection accepted during a blackhole is held, unconnected, until the
    // blackhole ends (or it is reset).
    tokio::select! {
        open = async { faults.wait_for(|f| !f.blackhole).await.is_ok() } => {
            if !open {
                return reset(&client, None, shared);
            }
        }
        _ = &mut killed => return reset(&client, None, shared),
    }
    let connected = tokio::select! {
        c = TcpStream::connect(shared.upstream) => c,
        _ = &mut killed => return reset(&client, None, shared),
    };
    let Ok(mut upstream) = connected else {
        return reset(&client, None, shared);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let conn = ConnState {
        carried: AtomicU64::new(0),
        cut_base: Mutex::new((0, 0)),
    };
    // New connections count a cut rule from their start.
    let cut = shared.faults.borrow().cut;
    if let Some(rule) = cut {
        *lock(&conn.cut_base) = (rule.epoch, 0);
    }
    let outcome = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, shared, &conn, &shared.counters.bytes_to_server);
        let down = pump(ur, cw, shared, &conn, &shared.counters.bytes_to_client);
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
            _ = &mut killed => Err(Broken),
        }
    };
    if outcome.is_err() {
        reset(&client, Some(&upstream), shared);
    }
}

struct ConnState {
    /// Bytes carried in both directions since the connection opened.
    carried: AtomicU64,
    /// (cut rule epoch, `carried` when this connection first saw that rule).
    cut_base: Mutex<(u64, u64)>,
}

impl ConnState {
    /// How many of the next `n` bytes may pass under `rule`; fewer than `n`
    /// means the connection must be cut after forwarding them.
    fn allowance(&self, rule: Option<CutRule>, n: usize) -> usize {
        let before = self.carried.fetch_add(n as u64, Ordering::Relaxed);
        let Some(rule) = rule else { return n };
        let mut base = lock(&self.cut_base);
        if base.0 != rule.epoch {
            *base = (rule.epoch, before);
        }
        let used = before - base.1;
        let left = rule.bytes.saturating_sub(used);
        usize::try_from(left).map_or(n, |left| left.min(n))
    }
}

fn reset(client: &TcpStream, upstream: Option<&TcpStream>, shared: &Shared) {
    // Linger 0 turns the close into a RST, which is what a crashed or restarted
    // server (or a middlebox) looks like to the other side.
    let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
    if let Some(u) = upstream {
        let _ = socket2::SockRef::from(u).set_linger(Some(Duration::ZERO));
    }
    shared.counters.reset.fetch_add(1, Ordering::Relaxed);
}

enum Item {
    Data { at: Instant, bytes: Vec<u8> },
    Eof { at: Instant },
    Cut { at: Instant },
}

/// Forwards one direction: a reader that applies blackhole, cut and latency, and
/// a writer that delivers each chunk at its time under the bandwidth limit.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    shared: &Shared,
    conn: &ConnState,
    counter: &AtomicU64,
) -> Result<(), Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let reader = async {
        let mut faults = shared.faults.subscribe();
        let mut last_at = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let bandwidth = faults.borrow().bandwidth;
            let chunk = match bandwidth {
                // Small chunks keep a slow link smooth instead of bursty.
                Some(rate) => usize::try_from(rate / 20).unwrap_or(CHUNK).clamp(1, CHUNK),
                None => CHUNK,
            };
            let n = from.read(&mut buf[..chunk]).await.map_err(|_| Broken)?;
            // Data that arrives during a blackhole waits here, in order.
            let held = faults.borrow_and_update().blackhole;
            if held && faults.wait_for(|f| !f.blackhole).await.is_err() {
                return Err(Broken);
            }
            let f = faults.borrow().clone();
            let at = deliver_at(&f, shared, &mut last_at);
            if n == 0 {
                let _ = tx.send(Item::Eof { at }).await;
                return Ok(());
            }
            let allowed = conn.allowance(f.cut, n);
            if allowed > 0 {
                let bytes = buf[..allowed].to_vec();
                tx.send(Item::Data { at, bytes })
                    .await
                    .map_err(|_| Broken)?;
            }
            if allowed < n {
                let _ = tx.send(Item::Cut { at }).await;
                return Ok(());
            }
        }
    };
    let writer = async {
        let mut next_free = Instant::now();
        while let Some(item) = rx.recv().await {
            match item {
                Item::Data { at, bytes } => {
                    sleep_until(at).await;
                    let bandwidth = shared.faults.borrow().bandwidth;
                    if let Some(rate) = bandwidth {
                        let slot = next_free.max(Instant::now());
                        sleep_until(slot).await;
                        next_free =
                            slot + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                    }
                    to.write_all(&bytes).await.map_err(|_| Broken)?;
                    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Item::Eof { at } => {
                    sleep_until(at).await;
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Item::Cut { at } => {
                    sleep_until(at).await;
                    let _ = to.flush().await;
                    return Err(Broken);
                }
            }
        }
        Err(Broken)
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// When a chunk read now should be delivered: after the latency plus jitter, and
/// never before the previous chunk (jitter must not reorder a byte stream).
fn deliver_at(faults: &Faults, shared: &Shared, last_at: &mut Instant) -> Instant {
    let mut delay = faults.latency;
    if !faults.jitter.is_zero() {
        let r = splitmix64(&mut lock(&shared.rng));
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        delay += faults.jitter.mul_f64(frac);
    }
    let at = (Instant::now() + delay).max(*last_at);
    *last_at = at;
    at
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator, enough for jitter.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sleeps until `at` only when it is in the future: tokio's timer rounds a
/// deadline up to the next millisecond tick, which would add ~1 ms per chunk to
/// pass-through traffic.
async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}
