//! A `BatchError` prints its own message (the row, the column, the chunk)
//! and returns the encoder's or the server's error from `source()`, never
//! both: a reporter that walks the chain (anyhow's `{:#}`, eyre, tracing)
//! would print the inner message twice.

use std::error::Error as _;

use tokio_postgres::types::Type;
use torque_query::{BatchError, BatchInsert};
use torque_testkit::{assert_no_repeated_source_messages, display_chain, pg_database};

#[test]
fn regression_a_value_of_the_wrong_type_does_not_print_the_encoder_error_twice() {
    let mut batch = BatchInsert::new("t", &[("id", Type::INT8), ("name", Type::TEXT)]);
    let err = batch.push(&[&"not a number", &"b"]).unwrap_err();
    assert!(matches!(err, BatchError::Type { row: 0, .. }), "{err:?}");
    assert_no_repeated_source_messages(&err);
    assert_eq!(
        err.to_string(),
        "row 0, column \"id\": value cannot be sent as int8"
    );
    let source = err.source().expect("the encoder's error is the source");
    assert!(
        display_chain(&err).ends_with(&format!(": {source}")),
        "{}",
        display_chain(&err)
    );
}

#[tokio::test]
async fn regression_a_server_error_does_not_print_the_servers_message_twice() {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE items (id int8 PRIMARY KEY)")
        .await
        .unwrap();
    let mut batch = BatchInsert::new("items", &[("id", Type::INT8)]).chunk_rows(2);
    for id in [1i64, 2, 3, 2] {
        batch.push(&[&id]).unwrap();
    }
    for values in [false, true] {
        client.execute("DELETE FROM items", &[]).await.unwrap();
        let err = if values {
            batch.execute_values(&client).await.unwrap_err()
        } else {
            batch.execute(&client).await.unwrap_err()
        };
        assert!(
            matches!(err, BatchError::Postgres { first_row: 2, .. }),
            "{err:?}"
        );
        assert_no_repeated_source_messages(&err);
        // `{err}` says where; the server's words are further down the chain
        // (tokio-postgres's own message is only "db error").
        assert_eq!(err.to_string(), "chunk starting at row 2 failed");
        let chain = display_chain(&err);
        assert!(chain.contains("duplicate key value"), "{chain}");
        let pg = err
            .source()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .expect("the driver's error is the source");
        assert!(pg.as_db_error().is_some(), "{pg:?}");
    }
}
