//! Each of the fault proxy's faults has the effect it promises, against real
//! PostgreSQL and Redis (and a local echo server where exact bytes matter).
//!
//! Timing assertions here are lower bounds only ("took at least the injected
//! latency"), which a slow machine cannot break; upper bounds are generous
//! timeouts that mean "the fault did not clear".

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use torque_testkit::{FaultProxy, pg_database, redis_namespace};

async fn pg_via(
    db: &torque_testkit::TestDatabase,
    proxy: &FaultProxy,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = db
        .config_via(proxy.addr())
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect through the proxy");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, driver)
}

async fn redis_via(
    ns: &torque_testkit::RedisNamespace,
    proxy: &FaultProxy,
) -> redis::aio::MultiplexedConnection {
    redis::Client::open(ns.url_via(proxy.addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis through the proxy")
}

/// A TCP server that echoes everything back, for byte-exact checks.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Waits for `cond` to hold, polling, for at most `limit`.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn passes_postgres_traffic_through_and_counts_it() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let (client, _driver) = pg_via(&db, &proxy).await;
    let row = client
        .query_one("SELECT current_database(), 40 + 2", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db.name());
    assert_eq!(row.get::<_, i32>(1), 42);
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.open, 1);
    assert!(stats.bytes_to_server > 0 && stats.bytes_to_client > 0);
}

#[tokio::test]
async fn latency_delays_each_direction_and_jitter_keeps_order() {
    let ns = redis_namespace().await;
    let proxy = FaultProxy::start(ns.tcp_addr()).await.unwrap();
    let mut conn = redis_via(&ns, &proxy).await;

    let latency = Duration::from_millis(100);
    proxy.set_latency(latency, Duration::from_millis(50));
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert!(
        started.elapsed() >= 2 * latency,
        "a round trip crosses the proxy twice: {:?}",
        started.elapsed()
    );

    // Many pipelined commands with jitter: a reordered chunk would corrupt the
    // RESP stream or mismatch replies.
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET")
            .arg(ns.key(&format!("k{i}")))
            .arg(i)
            .ignore();
        pipe.cmd("GET").arg(ns.key(&format!("k{i}")));
    }
    let values: Vec<i64> = pipe.query_async(&mut conn).await.unwrap();
    assert_eq!(values, (0..200).collect::<Vec<i64>>());

    proxy.pass_through().await;
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert!(started.elapsed() < 2 * latency + Duration::from_secs(5));
}

#[tokio::test]
async fn blackhole_holds_traffic_without_closing_then_delivers_it() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let (client, _driver) = pg_via(&db, &proxy).await;
    client.simple_query("SELECT 1").await.unwrap();

    proxy.set_blackhole(true);
    let query = client.query_one("SELECT 7", &[]);
    tokio::pin!(query);
    assert!(
        timeout(Duration::from_millis(300), &mut query)
            .await
            .is_err(),
        "a blackholed server never answers"
    );
    assert!(
        !client.is_closed(),
        "a blackhole does not close connections"
    );
    assert_eq!(proxy.stats().open, 1);

    // A new connection is accepted at TCP level but its startup never completes.
    let raw = TcpStream::connect(proxy.addr()).await;
    assert!(raw.is_ok(), "the half-open server still accepts");
    let config = db.config_via(proxy.addr());
    let startup = config.connect(tokio_postgres::NoTls);
    assert!(timeout(Duration::from_millis(300), startup).await.is_err());

    proxy.set_blackhole(false);
    let row = timeout(Duration::from_secs(10), query)
        .await
        .expect("held traffic is delivered once the blackhole ends")
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn reset_all_breaks_open_connections_and_accepts_new_ones() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let (client, driver) = pg_via(&db, &proxy).await;
    client.simple_query("SELECT 1").await.unwrap();

    proxy.reset_all().await;
    assert_eq!(proxy.stats().open, 0);
    assert!(proxy.stats().reset >= 1);
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "a reset connection cannot serve queries"
    );
    timeout(Duration::from_secs(5), driver)
        .await
        .expect("the connection driver ends after a reset")
        .unwrap();

    let (fresh, _driver) = pg_via(&db, &proxy).await;
    fresh.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn refuse_for_closes_the_port_for_that_long_and_spares_open_connections() {
    let ns = redis_namespace().await;
    let proxy = FaultProxy::start(ns.tcp_addr()).await.unwrap();
    let mut open = redis_via(&ns, &proxy).await;

    let window = Duration::from_millis(800);
    let started = Instant::now();
    proxy.refuse_for(window).await;
    let err = TcpStream::connect(proxy.addr())
        .await
        .expect_err("new connections are refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(proxy.accepting_since(), None, "refusing");
    let _: String = redis::cmd("PING")
        .query_async(&mut open)
        .await
        .expect("connections opened before the refusal carry on");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(proxy.addr()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the port never reopened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() >= window,
        "reopened after {:?}, before the window of {window:?}",
        started.elapsed()
    );
    let reopened = proxy.accepting_since().expect("accepting again");
    assert!(
        reopened >= started + window && reopened <= Instant::now(),
        "the port reopened {:?} after the refusal began",
        reopened - started
    );
    let mut again = redis_via(&ns, &proxy).await;
    let _: String = redis::cmd("PING").query_async(&mut again).await.unwrap();
}

#[tokio::test]
async fn restart_resets_everything_and_refuses_until_back() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let (client, _driver) = pg_via(&db, &proxy).await;
    client.simple_query("SELECT 1").await.unwrap();

    proxy.restart(Duration::from_secs(30)).await;
    assert!(client.simple_query("SELECT 1").await.is_err());
    let Err(refused) = db
        .config_via(proxy.addr())
        .connect(tokio_postgres::NoTls)
        .await
    else {
        panic!("the restarting server refuses connections");
    };
    assert!(
        refused.to_string().contains("refused")
            || std::error::Error::source(&refused)
                .is_some_and(|s| s.to_string().contains("refused")),
        "expected a connection-refused error, got {refused}"
    );

    // Back up early.
    proxy.pass_through().await;
    let (fresh, _driver) = pg_via(&db, &proxy).await;
    fresh.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn cut_after_forwards_exactly_n_bytes_then_resets() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut early = TcpStream::connect(proxy.addr()).await.unwrap();
    early.write_all(b"0123456789").await.unwrap();
    let mut got = [0u8; 10];
    early.read_exact(&mut got).await.unwrap();

    // 10 bytes out and 10 echoed back: 20 bytes in all before the cut.
    proxy.set_cut_after(Some(20));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"abcdefghij").await.unwrap();
    let mut first = [0u8; 10];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"abcdefghij");
    let _ = s.write_all(b"klmnopqrstuvwxyz").await;
    let mut rest = Vec::new();
    let end = timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the cut connection ends");
    assert!(
        rest.is_empty(),
        "nothing beyond the allowance crosses: {rest:?}"
    );
    assert_eq!(
        end.expect_err("a cut is a reset, not a clean close").kind(),
        std::io::ErrorKind::ConnectionReset
    );

    // The connection opened before the rule counts from when it was set.
    early.write_all(b"ABCDEFGHIJ").await.unwrap();
    let mut echoed = [0u8; 10];
    early.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ABCDEFGHIJ");
    let _ = early.write_all(b"more").await;
    let mut tail = Vec::new();
    let end = timeout(Duration::from_secs(10), early.read_to_end(&mut tail))
        .await
        .expect("the older connection is cut too");
    assert!(end.is_err() && tail.is_empty());
    wait_until(Duration::from_secs(10), || proxy.stats().reset >= 2).await;
}

#[tokio::test]
async fn cut_after_breaks_a_redis_command_larger_than_the_allowance() {
    let ns = redis_namespace().await;
    let proxy = FaultProxy::start(ns.tcp_addr()).await.unwrap();
    let mut conn = redis_via(&ns, &proxy).await;
    proxy.set_cut_after(Some(64));
    let big = "x".repeat(10_000);
    let result: redis::RedisResult<()> = redis::cmd("SET")
        .arg(ns.key("big"))
        .arg(&big)
        .query_async(&mut conn)
        .await;
    assert!(
        result.is_err(),
        "a 10 kB command cannot cross a 64-byte cut"
    );
    let mut direct = ns.connect().await;
    let stored: Option<String> = redis::cmd("GET")
        .arg(ns.key("big"))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(stored, None, "the server never saw the whole command");
}

#[tokio::test]
async fn bandwidth_limit_paces_a_transfer() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let rate = 100_000u64; // bytes per second, each direction
    proxy.set_bandwidth(Some(rate));
    let payload = vec![7u8; 50_000];

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let started = Instant::now();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
    };
    let mut back = vec![0u8; payload.len()];
    let recv = async {
        r.read_exact(&mut back).await.unwrap();
    };
    timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
        .await
        .expect("the limited transfer completes");
    let took = started.elapsed();
    // 50 kB at 100 kB/s takes ≥ 0.5 s per direction; the two directions overlap.
    assert!(
        took >= Duration::from_millis(450),
        "50 kB at 100 kB/s finished in {took:?}"
    );
    assert_eq!(back, payload);
    assert_eq!(proxy.stats().bytes_to_client, payload.len() as u64);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    s.read_exact(&mut got).await.unwrap();
    let addr = proxy.addr();
    drop(proxy);
    let mut rest = Vec::new();
    let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the connection closes when the proxy is dropped");
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
}
