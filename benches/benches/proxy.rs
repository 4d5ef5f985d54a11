//! What the testkit's fault proxy costs a round trip: Redis `PING` straight to the
//! server and through a pass-through `FaultProxy`, side by side in one group, so
//! the ratio says how much a fault test's own plumbing distorts its timings.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use torque_testkit::{FaultProxy, RedisServer};

fn ping_round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (direct, proxied, _proxy) = rt.block_on(async {
        let server = RedisServer::shared().await;
        let addr = server
            .tcp_addr()
            .expect("the benchmark needs Redis over TCP");
        let proxy = FaultProxy::start(addr).await.expect("start proxy");
        let ns = server.namespace();
        let direct = ns.connect().await;
        let proxied = redis::Client::open(ns.url_via(proxy.addr()))
            .expect("proxy url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect through the proxy");
        (direct, proxied, proxy)
    });

    let mut group = c.benchmark_group("redis_ping");
    for (name, conn) in [("direct", direct), ("fault_proxy", proxied)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut conn = conn.clone();
                rt.block_on(async move {
                    let pong: String = redis::cmd("PING")
                        .query_async(&mut conn)
                        .await
                        .expect("PING");
                    black_box(pong)
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, ping_round_trip);
criterion_main!(benches);
