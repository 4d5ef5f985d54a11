//! Batch writes against real PostgreSQL: typed round trips, chunking across
//! the parameter limit, upserts, updates, COPY, and errors before sending.

use tokio_postgres::types::Type;
use torque_query::{BatchError, BatchInsert, BatchUpdate, Conflict};
use torque_testkit::{display_chain, pg_database};

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

/// Reserved words and mixed case as table and column names: every send method
/// and every clause (conflict target, update list, UPDATE ... FROM) must quote them.
#[tokio::test]
async fn reserved_words_and_mixed_case_identifiers_are_quoted() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute(
            r#"CREATE TABLE "order" ("user" int8 PRIMARY KEY, "select" text, "Group" int4)"#,
        )
        .await
        .unwrap();
    let cols = [
        ("user", Type::INT8),
        ("select", Type::TEXT),
        ("Group", Type::INT4),
    ];
    let mut insert = BatchInsert::new("order", &cols);
    insert.push(&[&1i64, &"a", &1i32]).unwrap();
    assert_eq!(insert.execute(&client).await.unwrap(), 1);

    let mut values = BatchInsert::new("order", &cols);
    values.push(&[&2i64, &"b", &2i32]).unwrap();
    assert_eq!(values.execute_values(&client).await.unwrap(), 1);

    let mut copy = BatchInsert::new("order", &cols);
    copy.push(&[&3i64, &"c", &3i32]).unwrap();
    assert_eq!(copy.copy_in(&client).await.unwrap(), 1);

    let mut upsert = BatchInsert::new("order", &cols).upsert(&["user"], &["select", "Group"]);
    upsert.push(&[&1i64, &"A", &10i32]).unwrap();
    assert_eq!(upsert.execute(&client).await.unwrap(), 1);
    assert_eq!(upsert.execute_values(&client).await.unwrap(), 1);

    let mut update = BatchUpdate::new(
        "order",
        &[("user", Type::INT8)],
        &[("select", Type::TEXT), ("Group", Type::INT4)],
    );
    update.push(&[&2i64, &"B", &20i32]).unwrap();
    assert_eq!(update.execute(&client).await.unwrap(), 1);
    assert_eq!(update.execute_values(&client).await.unwrap(), 1);

    let rows: Vec<(i64, String, i32)> = client
        .query(
            r#"SELECT "user", "select", "Group" FROM "order" ORDER BY 1"#,
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [(1, "A".into(), 10), (2, "B".into(), 20), (3, "c".into(), 3)]
    );
}

/// A `bit(n)` value in PostgreSQL's binary format: bit length, then the bits.
#[derive(Debug)]
struct Bits(u8);

impl tokio_postgres::types::ToSql for Bits {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i32(8);
        out.put_u8(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::BIT
    }

    tokio_postgres::types::to_sql_checked!();
}

/// `bit` and `"char"` are type names whose unquoted SQL spelling means
/// something else (`bit(1)`, `character(1)`): the casts must not use it.
#[tokio::test]
async fn bit_and_char_columns_round_trip() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute(r#"CREATE TABLE flags (id int4 PRIMARY KEY, bits bit(8), c "char")"#)
        .await
        .unwrap();
    let cols = [("id", Type::INT4), ("bits", Type::BIT), ("c", Type::CHAR)];
    let mut unnest = BatchInsert::new("flags", &cols);
    unnest
        .push(&[&1i32, &Bits(0b1010_0101), &(b'x' as i8)])
        .unwrap();
    assert_eq!(unnest.execute(&client).await.unwrap(), 1);
    let mut values = BatchInsert::new("flags", &cols);
    values
        .push(&[&2i32, &Bits(0b1100_0011), &(b'y' as i8)])
        .unwrap();
    assert_eq!(values.execute_values(&client).await.unwrap(), 1);
    let mut update = BatchUpdate::new("flags", &[("id", Type::INT4)], &[("bits", Type::BIT)]);
    update.push(&[&2i32, &Bits(0b1111_0000)]).unwrap();
    assert_eq!(update.execute(&client).await.unwrap(), 1);

    let rows: Vec<(i32, String, i8)> = client
        .query("SELECT id, bits::text, c FROM flags ORDER BY id", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "10100101".into(), b'x' as i8),
            (2, "11110000".into(), b'y' as i8)
        ]
    );
}

/// A column name may contain a dot (`"e.mail"`): only a table name is split
/// into schema and table.
#[tokio::test]
async fn column_names_with_dots_are_one_identifier() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute(r#"CREATE TABLE people (id int4 PRIMARY KEY, "e.mail" text)"#)
        .await
        .unwrap();
    let cols = [("id", Type::INT4), ("e.mail", Type::TEXT)];
    let mut insert = BatchInsert::new("public.people", &cols).upsert(&["id"], &["e.mail"]);
    insert.push(&[&1i32, &"a@x"]).unwrap();
    assert_eq!(insert.execute(&client).await.unwrap(), 1);
    assert_eq!(insert.execute_values(&client).await.unwrap(), 1);
    let mut update = BatchUpdate::new("people", &[("id", Type::INT4)], &[("e.mail", Type::TEXT)]);
    update.push(&[&1i32, &"b@x"]).unwrap();
    assert_eq!(update.execute(&client).await.unwrap(), 1);
    let mail: String = client
        .query_one(r#"SELECT "e.mail" FROM people WHERE id = 1"#, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mail, "b@x");
}

/// A key pushed twice is updated to the values pushed last, as if the rows
/// were applied in order — not to whichever row the join plan meets first.
#[tokio::test]
async fn batch_update_with_a_key_pushed_twice_keeps_the_last_values() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE u (id int4 PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO u VALUES (1, 'orig'), (2, 'orig')", &[])
        .await
        .unwrap();
    let mut update = BatchUpdate::new("u", &[("id", Type::INT4)], &[("v", Type::TEXT)]);
    update.push(&[&1i32, &"first"]).unwrap();
    update.push(&[&2i32, &"only"]).unwrap();
    update.push(&[&1i32, &"second"]).unwrap();
    let read = || async {
        client
            .query("SELECT v FROM u ORDER BY id", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(update.execute(&client).await.unwrap(), 2);
    assert_eq!(read().await, ["second", "only"], "execute");
    client
        .execute("UPDATE u SET v = 'orig'", &[])
        .await
        .unwrap();
    assert_eq!(update.execute_values(&client).await.unwrap(), 2);
    assert_eq!(read().await, ["second", "only"], "execute_values");
}

/// Binary COPY does not check types: a value declared with another type of the
/// same width is read as the column's type (an int8 as a float8). A batch
/// whose declared types do not match the table must be refused, not stored.
#[tokio::test]
async fn copy_refuses_declared_types_the_table_would_misread() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE m (id int4, price float8, name varchar(20), at timestamp)")
        .await
        .unwrap();
    let mut wrong = BatchInsert::new("m", &[("id", Type::INT4), ("price", Type::INT8)]);
    wrong.push(&[&1i32, &42i64]).unwrap();
    let err = wrong.copy_in(&client).await.unwrap_err();
    assert!(err.to_string().contains("price"), "{err}");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM m", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing stored");

    // Text for varchar has the same binary form: accepted.
    let mut ok = BatchInsert::new(
        "m",
        &[
            ("id", Type::INT4),
            ("price", Type::FLOAT8),
            ("name", Type::TEXT),
        ],
    );
    ok.push(&[&2i32, &1.5f64, &"two"]).unwrap();
    assert_eq!(ok.copy_in(&client).await.unwrap(), 1);
    let r = client
        .query_one("SELECT price, name FROM m WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, f64>(0), r.get::<_, String>(1)),
        (1.5, "two".into())
    );

    // Text is also the binary form of json and of enum labels: accepted.
    client
        .batch_execute("CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE TABLE j (doc json, m mood)")
        .await
        .unwrap();
    let mut as_text = BatchInsert::new("j", &[("doc", Type::TEXT), ("m", Type::TEXT)]);
    as_text.push(&[&r#"{"a": 1}"#, &"sad"]).unwrap();
    assert_eq!(as_text.copy_in(&client).await.unwrap(), 1);
    // But a timestamptz is not a timestamp, though both are 8 bytes.
    let mut tz = BatchInsert::new("m", &[("at", Type::TIMESTAMPTZ)]);
    tz.push(&[&std::time::SystemTime::UNIX_EPOCH]).unwrap();
    assert!(matches!(
        tz.copy_in(&client).await,
        Err(BatchError::Unsupported(_))
    ));
}

/// An upsert whose rows repeat a key is applied as if row by row: the last
/// pushed values win (PostgreSQL refuses one statement that updates a row twice).
#[tokio::test]
async fn upsert_with_a_key_pushed_twice_keeps_the_last_values() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE kv (k int4 PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    let mut upsert =
        BatchInsert::new("kv", &[("k", Type::INT4), ("v", Type::TEXT)]).upsert(&["k"], &["v"]);
    upsert.push(&[&1i32, &"first"]).unwrap();
    upsert.push(&[&2i32, &"only"]).unwrap();
    upsert.push(&[&1i32, &"second"]).unwrap();
    let read = || async {
        client
            .query("SELECT k, v FROM kv ORDER BY k", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let want = [(1, "second".to_string()), (2, "only".to_string())];
    upsert.execute(&client).await.unwrap();
    assert_eq!(read().await, want, "execute");
    client.execute("DELETE FROM kv", &[]).await.unwrap();
    upsert.execute_values(&client).await.unwrap();
    assert_eq!(read().await, want, "execute_values");

    // NULL keys never conflict: rows with them are all inserted.
    client
        .batch_execute("CREATE TABLE nk (k int4 UNIQUE, v text)")
        .await
        .unwrap();
    let mut nulls =
        BatchInsert::new("nk", &[("k", Type::INT4), ("v", Type::TEXT)]).upsert(&["k"], &["v"]);
    nulls.push(&[&None::<i32>, &"x"]).unwrap();
    nulls.push(&[&None::<i32>, &"y"]).unwrap();
    nulls.push(&[&3i32, &"a"]).unwrap();
    nulls.push(&[&3i32, &"b"]).unwrap();
    assert_eq!(nulls.execute(&client).await.unwrap(), 3);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM nk", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3);
}

/// The error's chain carries the server's message, not only "db error": a
/// log line that prints the chain (`{:#}` of anyhow, or walking `source()`)
/// says what went wrong; `{err}` alone says where (the chunk's first row).
#[tokio::test]
async fn server_error_text_says_what_the_server_said() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let mut batch = BatchInsert::new("items", &columns()).chunk_rows(2);
    fill(&mut batch, 0..3);
    fill(&mut batch, 1..2);
    for values in [false, true] {
        client.execute("DELETE FROM items", &[]).await.unwrap();
        let err = if values {
            batch.execute_values(&client).await.unwrap_err()
        } else {
            batch.execute(&client).await.unwrap_err()
        };
        let text = err.to_string();
        assert!(text.contains("row 2"), "{text}");
        let chain = display_chain(&err);
        assert!(chain.contains("duplicate key value"), "{chain}");
    }
}

/// An upsert with nothing to overwrite, or with no conflict target, cannot be
/// written as SQL: it is refused before anything is sent, saying why.
#[tokio::test]
async fn upserts_without_target_or_columns_are_refused_before_sending() {
    let db = pg_database().await;
    let client = db.connect().await;
    client.batch_execute(TABLE).await.unwrap();
    let cols = [
        ("id", Type::INT8),
        ("qty", Type::INT4),
        ("active", Type::BOOL),
    ];
    for (target, update) in [(&["id"][..], &[][..]), (&[][..], &["qty"][..])] {
        let mut upsert = BatchInsert::new("items", &cols).upsert(target, update);
        upsert.push(&[&1i64, &1i32, &true]).unwrap();
        assert!(
            matches!(
                upsert.execute(&client).await,
                Err(BatchError::Unsupported(_))
            ),
            "{target:?} {update:?}"
        );
        assert!(matches!(
            upsert.execute_values(&client).await,
            Err(BatchError::Unsupported(_))
        ));
    }
}

/// A composite value in PostgreSQL's binary format: its fields, each with
/// type, length and bytes.
#[derive(Debug)]
struct Pair(i32, i32);

impl tokio_postgres::types::ToSql for Pair {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i32(2);
        for v in [self.0, self.1] {
            out.put_u32(Type::INT4.oid());
            out.put_i32(4);
            out.put_i32(v);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Composite(_))
    }

    tokio_postgres::types::to_sql_checked!();
}

/// UNNEST expands a composite element into its fields: a composite column is
/// refused by `execute` before sending, and goes through `execute_values`.
#[tokio::test]
async fn composite_columns_are_refused_by_unnest_and_sent_by_values() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TYPE pair AS (a int4, b int4); CREATE TABLE pt (id int4, p pair)")
        .await
        .unwrap();
    let pair = client.prepare("SELECT $1::pair").await.unwrap().params()[0].clone();
    let mut batch = BatchInsert::new("pt", &[("id", Type::INT4), ("p", pair.clone())]);
    batch.push(&[&1i32, &Pair(2, 3)]).unwrap();
    let err = batch.execute(&client).await.unwrap_err();
    assert!(matches!(err, BatchError::Unsupported(_)), "{err}");
    assert_eq!(batch.execute_values(&client).await.unwrap(), 1);
    let mut update = BatchUpdate::new("pt", &[("id", Type::INT4)], &[("p", pair)]);
    update.push(&[&1i32, &Pair(4, 5)]).unwrap();
    assert!(matches!(
        update.execute(&client).await,
        Err(BatchError::Unsupported(_))
    ));
    assert_eq!(update.execute_values(&client).await.unwrap(), 1);
    let r = client
        .query_one("SELECT (p).a, (p).b FROM pt", &[])
        .await
        .unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (4, 5));
}
