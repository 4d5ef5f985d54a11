//! The N+1 rules of the query contract (docs/query.md), positive and negative.

use torque_query::detect::{CallSite, Detector, DetectorConfig, Finding, FindingKind, OnFinding};

fn detector() -> Detector {
    Detector::new(DetectorConfig {
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    })
}

fn run(statements: impl IntoIterator<Item = String>) -> Vec<Finding> {
    let scope = detector().scope();
    for sql in statements {
        scope.record(&sql);
    }
    scope.finish()
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

#[test]
fn five_varying_lookups_are_an_n_plus_one() {
    let f = run((1..=5).map(|i| format!("SELECT * FROM comments WHERE post_id = {i}")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert_eq!(f[0].count, 5);
    assert_eq!(f[0].normalized, "select * from comments where post_id = ?");
    assert!(
        f[0].suggestion.contains("post_id = ANY($1)"),
        "{}",
        f[0].suggestion
    );
}

#[test]
fn four_are_below_the_threshold() {
    let f = run((1..=4).map(|i| format!("SELECT * FROM comments WHERE post_id = {i}")));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn threshold_is_configurable() {
    let d = Detector::new(DetectorConfig {
        threshold: 3,
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    });
    let scope = d.scope();
    for i in 0..3 {
        scope.record(&format!("SELECT * FROM users WHERE id = {i}"));
    }
    assert_eq!(kinds(&scope.finish()), [FindingKind::NPlusOne]);
}

#[test]
fn bind_parameters_count_as_varying() {
    let f = run((0..5).map(|_| "SELECT * FROM users WHERE id = $1".to_string()));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn interleaved_loops_over_two_queries_both_count() {
    let mut sqls = Vec::new();
    for i in 0..6 {
        sqls.push(format!("SELECT * FROM authors WHERE id = {i}"));
        sqls.push(format!("SELECT * FROM avatars WHERE author_id = {i}"));
        sqls.push("SELECT now()".to_string());
    }
    let f = run(sqls);
    assert_eq!(kinds(&f), [FindingKind::NPlusOne, FindingKind::NPlusOne]);
    assert!(f[0].normalized.contains("authors"));
    assert!(f[1].normalized.contains("avatars"));
}

#[test]
fn concurrent_loops_share_one_scope() {
    let scope = detector().scope();
    std::thread::scope(|s| {
        for t in 0..2 {
            let scope = scope.clone();
            s.spawn(move || {
                for i in 0..3 {
                    scope.record(&format!("SELECT * FROM items WHERE id = {}", t * 10 + i));
                }
            });
        }
    });
    let f = scope.finish();
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert_eq!(f[0].count, 6);
}

#[test]
fn in_lists_of_different_lengths_are_one_shape() {
    let f = run((1..=5).map(|n| {
        let list: Vec<String> = (0..n).map(|i| (i * 7).to_string()).collect();
        format!("SELECT * FROM tags WHERE post_id IN ({})", list.join(", "))
    }));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn single_row_inserts_are_an_n_plus_one_including_upserts_and_returning() {
    let f =
        run((0..5).map(|i| format!("INSERT INTO events (user_id, kind) VALUES ({i}, 'login')")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert!(f[0].suggestion.contains("UNNEST"));
    let f = run((0..5).map(|i| {
        format!(
            "INSERT INTO counters (id, n) VALUES ({i}, 1) ON CONFLICT (id) DO UPDATE SET n = counters.n + 1 RETURNING n"
        )
    }));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    let f =
        run((0..5).map(|_| "INSERT INTO events (user_id) VALUES ($1) RETURNING id".to_string()));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn multi_row_inserts_are_already_batched() {
    let f = run((0..6).map(|i| {
        format!(
            "INSERT INTO events (user_id) VALUES ({i}), ({}), ({})",
            i + 1,
            i + 2
        )
    }));
    assert!(f.iter().all(|f| f.kind != FindingKind::NPlusOne), "{f:?}");
}

#[test]
fn updates_and_deletes_by_key_are_an_n_plus_one() {
    let f = run((0..5).map(|i| format!("UPDATE accounts SET seen = now() WHERE id = {i}")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    let f = run((0..5).map(|i| format!("DELETE FROM sessions WHERE id = '{i}'")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn update_of_one_row_with_varying_set_values_is_not_an_n_plus_one() {
    // The key stays the same; only the assigned value changes.
    let f = run((0..5).map(|i| format!("UPDATE jobs SET progress = {i} WHERE id = 7")));
    assert!(
        kinds(&f).iter().all(|k| *k != FindingKind::NPlusOne),
        "{f:?}"
    );
}

#[test]
fn offset_pagination_is_not_an_n_plus_one() {
    let f = run((0..8).map(|p| {
        format!(
            "SELECT * FROM orders ORDER BY id LIMIT 50 OFFSET {}",
            p * 50
        )
    }));
    assert!(f.is_empty(), "{f:?}");
    let f = run((0..8).map(|p| {
        format!(
            "SELECT * FROM orders WHERE customer_id = 3 ORDER BY id LIMIT 50 OFFSET {}",
            p * 50
        )
    }));
    assert!(f.is_empty(), "{f:?}");
    let f = run((0..8).map(|_| {
        "SELECT * FROM orders WHERE customer_id = $1 ORDER BY id LIMIT $2 OFFSET $3".to_string()
    }));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn limit_only_differences_are_not_an_n_plus_one() {
    let f = run((1..=6).map(|n| format!("SELECT * FROM news ORDER BY id DESC LIMIT {n}")));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn keyset_pagination_is_not_an_n_plus_one_with_or_without_a_tenant_filter() {
    let f = run((0..8).map(|k| {
        format!(
            "SELECT * FROM events WHERE id > {} ORDER BY id LIMIT 100",
            k * 100
        )
    }));
    assert!(f.is_empty(), "{f:?}");
    let f = run((0..8).map(|k| {
        format!(
            "SELECT * FROM events WHERE tenant_id = 42 AND id > {} ORDER BY id LIMIT 100",
            k * 100
        )
    }));
    assert!(f.is_empty(), "{f:?}");
    let f = run((0..8).map(|_| {
        "SELECT * FROM events WHERE tenant_id = $1 AND created_at < $2 ORDER BY created_at DESC LIMIT 100"
            .to_string()
    }));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_varying_key_inside_a_paged_query_is_still_an_n_plus_one() {
    // "Top 3 comments of each post" in a loop.
    let f = run((0..5)
        .map(|p| format!("SELECT * FROM comments WHERE post_id = {p} ORDER BY id DESC LIMIT 3")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn identical_repeats_are_redundant_not_n_plus_one() {
    let f = run((0..5).map(|_| "SELECT * FROM settings WHERE key = 'theme'".to_string()));
    assert_eq!(kinds(&f), [FindingKind::Redundant]);
    assert_eq!(f[0].count, 5);
}

#[test]
fn tableless_selects_and_utility_statements_are_never_findings() {
    let mut sqls = Vec::new();
    for i in 0..10 {
        sqls.push("SELECT 1".to_string());
        sqls.push(format!("SELECT {i} + 1"));
        sqls.push("BEGIN".to_string());
        sqls.push(format!("SAVEPOINT sp_{i}"));
        sqls.push(format!("SET LOCAL statement_timeout = {i}"));
        sqls.push(format!("RELEASE SAVEPOINT sp_{i}"));
        sqls.push("COMMIT".to_string());
    }
    assert!(run(sqls).is_empty());
}

#[test]
fn alias_does_not_merge_different_relations() {
    let mut sqls = Vec::new();
    for i in 0..3 {
        sqls.push(format!("SELECT t.* FROM users t WHERE t.id = {i}"));
        sqls.push(format!("SELECT t.* FROM teams t WHERE t.id = {i}"));
    }
    assert!(
        run(sqls).is_empty(),
        "3 + 3 of two relations is not 6 of one"
    );
}

#[test]
fn different_aliases_of_one_relation_are_one_query() {
    let sqls = (0..5).map(|i| format!("SELECT a{i}.* FROM users a{i} WHERE a{i}.id = {i}"));
    assert_eq!(kinds(&run(sqls)), [FindingKind::NPlusOne]);
}

#[test]
fn quoted_identifiers_are_case_sensitive() {
    let mut sqls = Vec::new();
    for i in 0..3 {
        sqls.push(format!("SELECT * FROM \"Users\" WHERE id = {i}"));
        sqls.push(format!("SELECT * FROM users WHERE id = {}", i + 10));
    }
    assert!(run(sqls).is_empty());
    let mut sqls = Vec::new();
    for i in 0..3 {
        sqls.push(format!("SELECT * FROM \"users\" WHERE id = {i}"));
        sqls.push(format!("SELECT * FROM users WHERE id = {}", i + 10));
    }
    assert_eq!(kinds(&run(sqls)), [FindingKind::NPlusOne]);
}

#[test]
fn findings_name_the_distinct_call_sites() {
    let scope = detector().scope();
    for i in 0..3 {
        scope.record_at(
            &format!("SELECT * FROM users WHERE id = {i}"),
            CallSite::new("src/a.rs", 10, 5),
        );
    }
    for i in 3..6 {
        scope.record_at(
            &format!("SELECT * FROM users WHERE id = {i}"),
            CallSite::new("src/b.rs", 20, 9),
        );
    }
    let f = scope.finish();
    assert_eq!(
        f[0].call_sites,
        [
            CallSite::new("src/a.rs", 10, 5),
            CallSite::new("src/b.rs", 20, 9)
        ]
    );
    // `record` uses the caller's location.
    let scope = detector().scope();
    for i in 0..5 {
        scope.record(&format!("SELECT * FROM users WHERE id = {i}"));
    }
    let f = scope.finish();
    assert_eq!(f[0].call_sites.len(), 1);
    assert!(f[0].call_sites[0].file.ends_with("detector_contract.rs"));
}

#[test]
fn allow_lists_by_fingerprint_pattern_and_call_site() {
    let sql = |i: i32| format!("SELECT * FROM flags WHERE id = {i}");
    let fp = torque_query::fingerprint(&sql(0)).hash();
    for config in [
        DetectorConfig {
            allow_fingerprints: vec![fp],
            ..DetectorConfig::default()
        },
        DetectorConfig {
            allow_sql_patterns: vec!["SELECT * FROM FLAGS*".into()],
            ..DetectorConfig::default()
        },
        DetectorConfig {
            allow_call_sites: vec!["src/admin/".into()],
            ..DetectorConfig::default()
        },
    ] {
        let scope = Detector::new(DetectorConfig {
            on_finding: OnFinding::Return,
            ..config
        })
        .scope();
        for i in 0..5 {
            scope.record_at(&sql(i), CallSite::new("src/admin/flags.rs", 1, 1));
        }
        assert!(scope.finish().is_empty());
    }
}

#[test]
fn pause_guard_stops_recording_while_alive() {
    let scope = detector().scope();
    {
        let _paused = scope.pause();
        for i in 0..10 {
            scope.record(&format!("SELECT * FROM users WHERE id = {i}"));
        }
    }
    assert!(scope.is_empty());
    for i in 0..5 {
        scope.record(&format!("SELECT * FROM users WHERE id = {i}"));
    }
    assert_eq!(scope.len(), 5);
    assert_eq!(scope.finish().len(), 1);
}

#[test]
fn fail_mode_errors_and_panics() {
    let d = Detector::new(DetectorConfig {
        on_finding: OnFinding::Fail,
        ..DetectorConfig::default()
    });
    let scope = d.scope();
    for i in 0..5 {
        scope.record(&format!("SELECT * FROM users WHERE id = {i}"));
    }
    let err = scope.try_finish().unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.to_string().contains("N+1"));
    let panicked = std::panic::catch_unwind(|| scope.finish());
    assert!(panicked.is_err());
    let clean = d.scope();
    clean.record("SELECT 1");
    assert!(clean.finish().is_empty());
}

#[test]
fn varying_lookups_by_a_row_of_keys_are_an_n_plus_one() {
    // Composite keys: the rows' elements are IN slots, like a scalar list's.
    let f = run((1..=5).map(|i| {
        format!(
            "SELECT * FROM memberships WHERE (team_id, user_id) IN (({i}, 2), (3, {}))",
            i + 10
        )
    }));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert_eq!(
        f[0].normalized,
        "select * from memberships where (team_id, user_id) in ((?, ?))"
    );
    assert!(
        f[0].suggestion
            .contains("(team_id, user_id) IN (SELECT * FROM UNNEST($1::type[], $2::type[], ...))"),
        "{}",
        f[0].suggestion
    );
    // The same rows every time: a redundant query, not an N+1.
    let f = run((1..=5).map(|_| {
        "SELECT * FROM memberships WHERE (team_id, user_id) IN ((1, 2), (3, 4))".to_string()
    }));
    assert_eq!(kinds(&f), [FindingKind::Redundant]);
}

#[test]
fn keyset_pagination_by_a_row_comparison_is_not_an_n_plus_one() {
    // The row form of keyset pagination, with bind parameters (which count
    // as varying): the row's elements are range slots, as in `id > $2`.
    let f = run((1..=6).map(|page| {
        format!(
            "SELECT * FROM events WHERE tenant_id = $1 AND (created_at, id) > ($2, $3) \
             ORDER BY created_at, id LIMIT 50 /* page {page} */"
        )
    }));
    assert!(f.is_empty(), "{f:?}");
    // Without ORDER BY ... LIMIT it is no pagination, and the tenant key varies.
    let f = run((1..=6).map(|i| {
        format!("SELECT * FROM events WHERE tenant_id = {i} AND (created_at, id) > ($2, $3)")
    }));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
}

#[test]
fn a_function_of_a_varying_key_is_an_n_plus_one() {
    // Case-insensitive look-ups in a loop: the key is the call's argument.
    let f = run((1..=5)
        .map(|i| format!("SELECT * FROM users WHERE lower(email) = lower('user{i}@example.com')")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert!(
        f[0].suggestion.contains("lower(email) = ANY($1)"),
        "{}",
        f[0].suggestion
    );
    // The same key every time: redundant, not an N+1.
    let f = run((1..=5)
        .map(|_| "SELECT * FROM users WHERE lower(email) = lower('a@example.com')".to_string()));
    assert_eq!(kinds(&f), [FindingKind::Redundant]);
    // A qualified column is named as written.
    let f = run((1..=5).map(|i| {
        format!("SELECT * FROM users u WHERE lower(u.email) = lower('user{i}@example.com')")
    }));
    assert!(
        f[0].suggestion.contains("lower(users.email) = ANY($1)"),
        "{}",
        f[0].suggestion
    );
}

#[test]
fn only_a_one_argument_call_after_equals_is_a_key() {
    // `date_trunc('day', now())` is a computed constant, not a key: the key
    // is `id`.
    let f = run((1..=5).map(|i| {
        format!("SELECT * FROM events WHERE day = date_trunc('day', now()) AND id = {i}")
    }));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert!(
        f[0].suggestion.contains("id = ANY($1)"),
        "{}",
        f[0].suggestion
    );
    // `= ALL($1)` is no equality look-up.
    let f = run((1..=5).map(|_| "SELECT * FROM t WHERE x = ALL($1)".to_string()));
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_function_of_a_column_in_an_in_list_is_not_a_row_of_key_columns() {
    let f =
        run((1..=5).map(|i| format!("SELECT * FROM users WHERE lower(email) IN ('a{i}', 'b')")));
    assert_eq!(kinds(&f), [FindingKind::NPlusOne]);
    assert!(!f[0].suggestion.contains("UNNEST"), "{}", f[0].suggestion);
    let f = run((1..=5).map(|i| format!("SELECT * FROM t WHERE coalesce(a, b) IN ({i}, 9)")));
    assert!(!f[0].suggestion.contains("UNNEST"), "{}", f[0].suggestion);
}
