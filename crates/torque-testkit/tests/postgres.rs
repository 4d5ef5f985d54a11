//! Each test gets a database of its own, and the throwaway cluster works.

use torque_testkit::{Origin, PgServer, pg_database};

async fn database_exists(name: &str) -> bool {
    let server = PgServer::shared().await;
    let (client, conn) = server
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the maintenance database");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("query pg_database");
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn two_databases_are_distinct_and_isolated() {
    let a = pg_database().await;
    let b = pg_database().await;
    assert_ne!(a.name(), b.name());

    let ca = a.connect().await;
    let cb = b.connect().await;
    let current: String = ca
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, a.name());

    ca.batch_execute("CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)")
        .await
        .unwrap();
    let err = cb
        .query("SELECT * FROM only_in_a", &[])
        .await
        .expect_err("a table made in one test database must not exist in another");
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
}

#[tokio::test]
async fn database_is_dropped_with_its_handle_even_with_open_connections() {
    let db = pg_database().await;
    let name = db.name().to_string();
    let client = db.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    assert!(database_exists(&name).await);
    drop(db);
    assert!(
        !database_exists(&name).await,
        "test database {name} should be gone"
    );
    assert!(client.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn shared_server_is_found_once() {
    let a = PgServer::shared().await;
    let b = PgServer::shared().await;
    assert!(std::ptr::eq(a, b));
    if std::env::var_os("DATABASE_URL").is_some() {
        assert_eq!(a.origin(), Origin::Env);
    }
    assert!(a.tcp_addr().is_some() || a.origin() == Origin::Env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throwaway_cluster_serves_tests_and_is_removed_when_dropped() {
    let server = tokio::task::spawn_blocking(PgServer::throwaway)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("throwaway cluster: {e}"));
    assert_eq!(server.origin(), Origin::Throwaway);
    let addr = server.tcp_addr().unwrap();
    let dir = server.throwaway_server().unwrap().dir().to_path_buf();
    assert!(dir.exists());
    {
        let db = server.database().await;
        let client = db.connect().await;
        let row = client
            .query_one("SELECT current_database(), current_user", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name());
        assert_eq!(row.get::<_, String>(1), "postgres");
    }
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the throwaway server should be stopped"
    );
}
