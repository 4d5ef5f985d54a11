//! `LimiterConfig` and `ProcessorConfig` read from and written to a config
//! file's format (JSON here) with the `serde` feature, as their docs say:
//! field names as in the struct, snake-case algorithm names, missing fields
//! defaulted, unknown fields refused, durations as `{ secs, nanos }`.
#![cfg(feature = "serde")]

use std::time::Duration;

use torque_parallel::limit::{AlgorithmKind, Limiter, LimiterConfig};
use torque_parallel::{ProcessorBuilder, ProcessorConfig};

#[test]
fn a_limiter_config_file_builds_the_limiter_it_describes() {
    let config: LimiterConfig =
        serde_json::from_str(r#"{ "algorithm": "fixed", "initial_limit": 8 }"#).unwrap();
    assert_eq!(config.algorithm, AlgorithmKind::Fixed);
    assert_eq!(config.build().unwrap().stats().limit, 8);

    let adaptive: LimiterConfig = serde_json::from_str(
        r#"{ "max_limit": 64, "probe_interval": { "secs": 30, "nanos": 0 } }"#,
    )
    .unwrap();
    assert_eq!(adaptive.algorithm, AlgorithmKind::Adaptive);
    assert_eq!(adaptive.probe_interval, Some(Duration::from_secs(30)));
    assert!(adaptive.build().unwrap().stats().limit <= 64);

    for (kind, name) in [
        (AlgorithmKind::Fixed, "fixed"),
        (AlgorithmKind::Aimd, "aimd"),
        (AlgorithmKind::Vegas, "vegas"),
        (AlgorithmKind::Gradient2, "gradient2"),
        (AlgorithmKind::Adaptive, "adaptive"),
    ] {
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
    }
    let written = serde_json::to_string(&adaptive).unwrap();
    assert_eq!(
        serde_json::from_str::<LimiterConfig>(&written).unwrap(),
        adaptive
    );
    let unknown = serde_json::from_str::<LimiterConfig>(r#"{ "max_limt": 64 }"#).unwrap_err();
    assert!(unknown.to_string().contains("unknown field"), "{unknown}");
}

#[test]
fn a_processor_config_file_builds_the_processor_it_describes() {
    let config: ProcessorConfig = serde_json::from_str(
        r#"{ "blocking_threads": 2, "item_timeout": { "secs": 5, "nanos": 0 } }"#,
    )
    .unwrap();
    let mut expected = ProcessorConfig::default();
    expected.blocking_threads = Some(2);
    expected.item_timeout = Some(Duration::from_secs(5));
    assert_eq!(config, expected);
    let processor = ProcessorBuilder::from_config(config.clone())
        .build()
        .unwrap();
    assert_eq!(processor.config(), &config);

    assert_eq!(
        serde_json::from_str::<ProcessorConfig>("{}").unwrap(),
        ProcessorConfig::default()
    );
    let written = serde_json::to_string(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<ProcessorConfig>(&written).unwrap(),
        config
    );
    let unknown =
        serde_json::from_str::<ProcessorConfig>(r#"{ "blocking_thread": 2 }"#).unwrap_err();
    assert!(unknown.to_string().contains("unknown field"), "{unknown}");
}

/// The statistics are written as plain records (for a `/stats` endpoint),
/// every figure by its field name, durations as `{ secs, nanos }`.
#[test]
fn stats_are_written_with_their_field_names() {
    let limiter =
        serde_json::from_str::<LimiterConfig>(r#"{ "algorithm": "fixed", "initial_limit": 8 }"#)
            .unwrap()
            .build()
            .unwrap();
    let json = serde_json::to_value(limiter.stats()).unwrap();
    assert_eq!(json["limit"].as_u64(), Some(8), "{json}");
    assert!(json["busy"]["secs"].is_u64(), "{json}");

    let processor = ProcessorBuilder::from_config(ProcessorConfig::default())
        .build()
        .unwrap();
    let items: Vec<u64> = (0..10).collect();
    let sum: u64 = processor
        .map(&items, |&x| x)
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(sum, 45);
    let json = serde_json::to_value(processor.stats()).unwrap();
    assert_eq!(
        json["sequential_runs"].as_u64().unwrap() + json["parallel_runs"].as_u64().unwrap(),
        1,
        "{json}"
    );
    assert!(json["io"]["limit"].is_u64(), "{json}");
}
