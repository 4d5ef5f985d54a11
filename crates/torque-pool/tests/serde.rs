//! With the `serde` feature: `PoolConfig` read from a config file's format
//! (JSON here), and `status()` written as a plain record for a `/stats`
//! endpoint.
#![cfg(feature = "serde")]

mod common;

use std::time::Duration;

use common::{Fake, quiet};
use torque_pool::PoolConfig;

#[test]
fn a_config_file_with_some_fields_defaults_the_others() {
    let config: PoolConfig =
        serde_json::from_str(r#"{ "max_size": 8, "acquire_timeout": { "secs": 2, "nanos": 0 } }"#)
            .unwrap();
    let mut expected = PoolConfig::default();
    expected.max_size = 8;
    expected.acquire_timeout = Duration::from_secs(2);
    assert_eq!(config, expected);
    let written = serde_json::to_string(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<PoolConfig>(&written).unwrap(),
        config
    );
}

#[tokio::test(start_paused = true)]
async fn status_is_written_with_its_field_names() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(3).build().unwrap();
    let conn = pool.get().await.unwrap();
    let json = serde_json::to_value(pool.status()).unwrap();
    assert_eq!(json["max_size"].as_u64(), Some(3), "{json}");
    assert_eq!(json["in_use"].as_u64(), Some(1), "{json}");
    assert_eq!(json["closed"]["broken"].as_u64(), Some(0), "{json}");
    assert_eq!(json["timeouts"]["acquire"].as_u64(), Some(0), "{json}");
    drop(conn);
}
