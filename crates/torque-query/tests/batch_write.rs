//! Batch writes against real PostgreSQL: typed round trips, chunking across
//! the parameter limit, upserts, updates, COPY, and errors before sending.

use tokio_postgres::types::Type;
use torque_query::{BatchError, BatchInsert, BatchUpdate, Conflict};
use torque_testkit::pg_database;

const TABLE: &str = "CREATE TABLE items (
    id int8 PRIMARY KEY,
    name text,
    qty int4 NOT NULL,
    price float8,
    active bool NOT NULL,
    tags text[],
    blob bytea
)";

fn columns() -> Vec<(&'static str, Type)> {
    vec![
        ("id", Type::INT8),
        ("name", Type::TEXT),
        ("qty", Type::INT4),
        ("price", Type::FLOAT8),
        ("active", Type::BOOL),
    ]
}

type Item = (i64, Option<String>, i32, Option<f64>, bool);

fn item(i: i64) -> Item {
    (
        i,
        (i % 7 != 0).then(|| format!("item \u{e9}{i} 'quoted' \"x\"")),
        (i % 1000) as i32,
        (i % 5 != 0).then(|| i as f64 / 3.0),
        i % 2 == 0,
    )
}

fn fill(batch: &mut BatchInsert, range: std::ops::Range<i64>) {
    for i in range {
        let (id, name, qty, price, active) = item(i);
        batch.push(&[&id, &name, &qty, &price, &active]).unwrap();
    }
}

async fn read_back(client: &tokio_postgres::Client) -> Vec<Item> {
    client
        .query(
            "SELECT id, name, qty, price, active FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn unnest_insert_round_trips_typed_rows_with_nulls() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut batch = BatchInsert::new("items", &columns()).chunk_rows(300);
    fill(&mut batch, 0..1000);
    assert_eq!(batch.execute(&client).await.unwrap(), 1000);
    assert_eq!(
        read_back(&client).await,
        (0..1000).map(item).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn values_insert_chunks_across_the_parameter_limit() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    // 5 columns: 65,535 / 5 = 13,107 rows per statement, so 30,000 rows take 3.
    let mut batch = BatchInsert::new("items", &columns()).chunk_rows(usize::MAX);
    fill(&mut batch, 0..30_000);
    assert_eq!(batch.execute_values(&client).await.unwrap(), 30_000);
    assert_eq!(
        read_back(&client).await,
        (0..30_000).map(item).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn values_insert_takes_array_columns_that_unnest_cannot() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut batch = BatchInsert::new(
        "items",
        &[
            ("id", Type::INT8),
            ("qty", Type::INT4),
            ("active", Type::BOOL),
            ("tags", Type::TEXT_ARRAY),
        ],
    );
    batch
        .push(&[&1i64, &1i32, &true, &vec!["a".to_string(), "b".to_string()]])
        .unwrap();
    let err = batch.execute(&client).await.unwrap_err();
    assert!(matches!(err, BatchError::Unsupported(_)), "{err}");
    assert_eq!(batch.execute_values(&client).await.unwrap(), 1);
    let tags: Vec<String> = client
        .query_one("SELECT tags FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tags, ["a", "b"]);
}

#[tokio::test]
async fn upsert_and_do_nothing() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut first = BatchInsert::new("items", &columns());
    fill(&mut first, 0..10);
    first.execute(&client).await.unwrap();

    let mut again = BatchInsert::new(
        "items",
        &[
            ("id", Type::INT8),
            ("qty", Type::INT4),
            ("active", Type::BOOL),
        ],
    )
    .upsert(&["id"], &["qty"]);
    for i in 5..15i64 {
        again.push(&[&i, &(-1i32), &true]).unwrap();
    }
    assert_eq!(again.execute(&client).await.unwrap(), 10);
    let negative: i64 = client
        .query_one("SELECT count(*) FROM items WHERE qty = -1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(negative, 10);

    let mut skip = BatchInsert::new(
        "items",
        &[
            ("id", Type::INT8),
            ("qty", Type::INT4),
            ("active", Type::BOOL),
        ],
    )
    .on_conflict(Conflict::DoNothing { target: vec![] });
    for i in 10..20i64 {
        skip.push(&[&i, &7i32, &false]).unwrap();
    }
    assert_eq!(skip.execute_values(&client).await.unwrap(), 5);
    let total: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 20);
}

#[tokio::test]
async fn batch_update_by_key_via_unnest_and_values() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut rows = BatchInsert::new("items", &columns());
    fill(&mut rows, 0..2000);
    rows.execute(&client).await.unwrap();

    let mut update = BatchUpdate::new(
        "items",
        &[("id", Type::INT8)],
        &[("name", Type::TEXT), ("qty", Type::INT4)],
    )
    .chunk_rows(700);
    for i in (0..2000i64).step_by(2) {
        update
            .push(&[&i, &format!("renamed {i}"), &(i as i32 * 2)])
            .unwrap();
    }
    update.push(&[&999_999i64, &"ghost", &0i32]).unwrap(); // no such row
    assert_eq!(update.execute(&client).await.unwrap(), 1000);
    assert_eq!(update.execute_values(&client).await.unwrap(), 1000);
    let r = client
        .query_one("SELECT name, qty FROM items WHERE id = 10", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "renamed 10");
    assert_eq!(r.get::<_, i32>(1), 20);
    let r = client
        .query_one("SELECT qty FROM items WHERE id = 11", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 11, "odd rows untouched");

    let bad = BatchUpdate::new("items", &[("id", Type::INT8)], &[]);
    assert!(matches!(
        bad.execute(&client).await,
        Err(BatchError::Unsupported(_))
    ));
}

#[tokio::test]
async fn copy_loads_100k_rows() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut batch = BatchInsert::new("items", &columns());
    fill(&mut batch, 0..100_000);
    assert_eq!(batch.copy_in(&client).await.unwrap(), 100_000);
    let (count, sum): (i64, i64) = {
        let r = client
            .query_one("SELECT count(*), sum(id)::int8 FROM items", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(count, 100_000);
    assert_eq!(sum, (0..100_000i64).sum::<i64>());
    let spot: Item = {
        let r = client
            .query_one(
                "SELECT id, name, qty, price, active FROM items WHERE id = 77777",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    assert_eq!(spot, item(77_777));

    let upsert = BatchInsert::new("items", &columns()).upsert(&["id"], &["qty"]);
    assert!(matches!(
        upsert.copy_in(&client).await,
        Err(BatchError::Unsupported(_))
    ));
}

#[tokio::test]
async fn server_errors_name_the_failing_chunk_and_a_transaction_keeps_it_all_or_nothing() {
    let db = pg_database().await;
    let mut client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut batch = BatchInsert::new("items", &columns()).chunk_rows(100);
    fill(&mut batch, 0..250);
    let (id, name, qty, price, active) = item(5); // duplicate key in the third chunk
    batch.push(&[&id, &name, &qty, &price, &active]).unwrap();
    let tx = client.transaction().await.unwrap();
    let err = batch.execute(&tx).await.unwrap_err();
    match &err {
        BatchError::Postgres { first_row, source } => {
            assert_eq!(*first_row, 200);
            assert_eq!(source.code().map(|c| c.code()), Some("23505"));
        }
        other => panic!("expected a server error, got {other}"),
    }
    tx.rollback().await.unwrap();
    let total: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 0);
}
