//! Each test gets a key namespace of its own, and the throwaway server works.

use torque_testkit::{RedisOrigin, RedisServer, redis_namespace};

#[tokio::test]
async fn namespaces_are_distinct_and_cleaned_up() {
    let a = redis_namespace().await;
    let b = redis_namespace().await;
    assert_ne!(a.prefix(), b.prefix());
    assert!(a.key("k").starts_with(a.prefix()));

    let mut conn = a.connect().await;
    let _: () = redis::cmd("SET")
        .arg(a.key("k"))
        .arg("from a")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seen_by_b: Option<String> = redis::cmd("GET")
        .arg(b.key("k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen_by_b, None);
    assert_eq!(a.keys().await, vec![a.key("k")]);
    assert!(b.keys().await.is_empty());

    let key = a.key("k");
    drop(a);
    let left: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "keys of a dropped namespace are deleted");
}

#[tokio::test]
async fn neighbouring_namespaces_do_not_see_each_other() {
    // `…:1:` must not match `…:10:`, `…:11:`: each sees exactly its own key.
    let server = RedisServer::shared().await;
    let ns: Vec<_> = (0..12).map(|_| server.namespace()).collect();
    let mut conn = ns[0].connect().await;
    for n in &ns {
        let _: () = redis::cmd("SET")
            .arg(n.key("x"))
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for n in &ns {
        assert_eq!(n.keys().await, vec![n.key("x")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_server_serves_and_stops_when_dropped() {
    let server = tokio::task::spawn_blocking(RedisServer::throwaway)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("throwaway redis-server: {e}"));
    assert_eq!(server.origin(), RedisOrigin::Throwaway);
    let addr = server.tcp_addr().unwrap();
    let dir = server.throwaway_server().unwrap().dir().to_path_buf();
    {
        let ns = server.namespace();
        let mut conn = ns.connect().await;
        let _: () = redis::cmd("SET")
            .arg(ns.key("k"))
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg(ns.key("k"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, "v");
    }
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(!dir.exists());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the throwaway redis-server should be stopped"
    );
}
