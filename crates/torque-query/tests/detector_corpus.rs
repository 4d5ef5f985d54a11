//! A held-out corpus for the N+1 rules of the query contract (docs/query.md):
//! loops as real applications run them, in the forms `detector_contract.rs`
//! and `n_plus_one_contract.rs` do not spell out.

use torque_query::detect::{CallSite, Detector, DetectorConfig, Finding, FindingKind, OnFinding};

fn detector(threshold: usize) -> Detector {
    Detector::new(DetectorConfig {
        threshold,
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    })
}

/// The findings of one scope that ran `statements` in order.
fn run(statements: &[String]) -> Vec<Finding> {
    let scope = detector(5).scope();
    for sql in statements {
        scope.record_at(sql, CallSite::new("src/loop.rs", 1, 1));
    }
    scope.finish()
}

/// `n` runs of `sql` with `{i}` replaced by the loop index, from 1.
fn times(n: usize, sql: &str) -> Vec<String> {
    (1..=n)
        .map(|i| sql.replace("{i}", &i.to_string()))
        .collect()
}

fn n_plus_ones(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.kind == FindingKind::NPlusOne)
        .count()
}

/// Batchable loops in forms real applications send: each is an N+1 at 5
/// runs, and nothing at 4.
#[test]
fn batchable_loops_of_real_applications_are_n_plus_ones_at_five_not_four() {
    for sql in [
        // ORMs.
        "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = {i} LIMIT 1",
        "SELECT \"app_user\".\"id\" FROM \"app_user\" WHERE \"app_user\".\"id\" = %s LIMIT 21",
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.id=?",
        "SELECT \"public\".\"User\".\"id\" FROM \"public\".\"User\" WHERE (\"public\".\"User\".\"id\" = $1 AND 1=1) LIMIT $2 OFFSET $3",
        "SELECT count(*) FROM comments WHERE post_id = {i}",
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = {i})",
        // Literal forms of the varying key.
        "SELECT * FROM users WHERE name = $${i}$$",
        "SELECT * FROM users WHERE name = E'a\\'{i}'",
        "SELECT * FROM users WHERE id = -{i}",
        "SELECT * FROM users WHERE id = {i}::int8",
        "SELECT * FROM users WHERE id = CAST('{i}' AS int)",
        "SELECT * FROM users WHERE day = DATE '2024-01-0{i}'",
        "SELECT * FROM users WHERE data->>'id' = '{i}'",
        "SELECT * FROM users WHERE id IS NOT DISTINCT FROM {i}",
        // IN / ANY lists whose contents vary.
        "SELECT * FROM users WHERE id IN ({i}, 100)",
        "SELECT * FROM users WHERE id = ANY('{{i},2}')",
        "SELECT * FROM users WHERE id = ANY(ARRAY[{i}])",
        "SELECT * FROM users WHERE id = ANY($1::int[])",
        "SELECT * FROM users WHERE (a, b) IN (({i}, 2))",
        "SELECT * FROM users WHERE (a, b) IN (ROW({i}, 2))",
        // Keys inside CTEs, subqueries and set operations.
        "WITH u AS (SELECT * FROM users WHERE id = {i}) SELECT * FROM u",
        "SELECT * FROM (SELECT * FROM users WHERE id = {i}) s",
        "SELECT id FROM users WHERE id = {i} UNION ALL SELECT id FROM admins WHERE id = {i}",
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM teams u WHERE u.id = {i})",
        "SELECT * FROM users u WHERE u.id = {i} FOR UPDATE OF u",
        // Writes.
        "UPDATE users SET visits = visits + 1 WHERE id = {i}",
        "UPDATE accounts a SET balance = a.balance + t.amount FROM transfers t WHERE t.account_id = a.id AND t.id = {i}",
        "DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.id = {i}",
        "DELETE FROM sessions WHERE id = ANY($1)",
        // Single-row inserts: plain, upsert, RETURNING, DEFAULT, functions.
        "INSERT INTO logs (a, b) VALUES ({i}, 'x')",
        "INSERT INTO \"logs\" (\"a\", \"created_at\") VALUES ({i}, NOW()) RETURNING \"id\"",
        "INSERT INTO logs (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b RETURNING id",
        "INSERT INTO logs (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        "INSERT INTO logs AS l (a, b) VALUES ({i}, 1) ON CONFLICT (a) DO UPDATE SET b = l.b + 1",
        "INSERT INTO logs (a, b) VALUES ({i}, DEFAULT) RETURNING *",
        "INSERT INTO logs (a, b) VALUES (%s, %s)",
    ] {
        let five = run(&times(5, sql));
        assert_eq!(n_plus_ones(&five), 1, "{sql}\n  {five:?}");
        let four = run(&times(4, sql));
        assert_eq!(n_plus_ones(&four), 0, "{sql}\n  {four:?}");
    }
}

/// Not batchable, or no slot that varies: never an N+1.
#[test]
fn loops_that_are_not_n_plus_ones() {
    for sql in [
        // No table.
        "SELECT {i}",
        "SELECT now() + interval '{i} day'",
        "SELECT nextval('seq_{i}')",
        "SELECT set_config('app.user_id', '{i}', true)",
        "SELECT pg_advisory_xact_lock({i})",
        "SELECT * FROM generate_series(1, {i}) g",
        // Utility statements.
        "BEGIN",
        "SAVEPOINT sp_{i}",
        "RELEASE SAVEPOINT sp_{i}",
        "SET LOCAL app.user_id = '{i}'",
        "NOTIFY jobs, '{i}'",
        "CALL process_order({i})",
        "EXPLAIN SELECT * FROM users WHERE id = {i}",
        // Already batched: multi-row inserts.
        "INSERT INTO logs (a, b) VALUES ({i}, 'x'), ({i}, 'y')",
        "INSERT INTO logs (a, b) SELECT * FROM unnest($1::int[], $2::text[])",
        // Pagination: offset, keyset, FETCH, with or without a tenant.
        "SELECT * FROM events WHERE tenant_id = 3 ORDER BY id LIMIT 10 OFFSET {i}0",
        "SELECT * FROM events WHERE tenant_id = 3 ORDER BY id OFFSET {i}0 ROWS FETCH NEXT 10 ROWS ONLY",
        "SELECT * FROM events WHERE id > {i} ORDER BY id LIMIT 100",
        "SELECT * FROM events WHERE tenant_id = 1 AND id > {i} ORDER BY id LIMIT 100",
        "SELECT * FROM events WHERE id < {i} ORDER BY id DESC FETCH FIRST 10 ROWS ONLY",
        "SELECT * FROM events WHERE tenant_id = $1 AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT 50",
        "SELECT \"posts\".* FROM \"posts\" WHERE \"posts\".\"user_id\" = $1 ORDER BY \"posts\".\"created_at\" DESC LIMIT $2 OFFSET $3",
        "SELECT * FROM events WHERE tenant_id = 3 ORDER BY id LIMIT {i}",
        // Predicates that are no equality, IN or ANY.
        "SELECT * FROM users WHERE email LIKE 'a{i}%'",
        "SELECT * FROM users WHERE created_at > now() - interval '{i} days'",
        "SELECT * FROM users WHERE id <> {i}",
        "SELECT * FROM users WHERE id BETWEEN {i} AND 100",
        "SELECT * FROM users WHERE data @> '{\"id\": {i}}'",
        // The varying value is no key: an assignment, a projection.
        "UPDATE users SET name = 'n{i}' WHERE id = 7",
        "SELECT {i}, name FROM users WHERE id = 7",
    ] {
        let findings = run(&times(8, sql));
        assert_eq!(n_plus_ones(&findings), 0, "{sql}\n  {findings:?}");
    }
}

/// Identical repeats are one redundant finding, whatever differs outside
/// the statement's own text (comments, sqlcommenter tags, case, spacing).
#[test]
fn identical_repeats_in_disguise_are_redundant() {
    for sql in [
        "SELECT * FROM users WHERE id = 7 -- loop {i}",
        "/* traceparent='00-{i}-01' */ SELECT * FROM users WHERE id = 7",
        "SELECT * FROM users WHERE id = 7 /*request_id='{i}'*/",
        "SELECT * FROM users WHERE id IN (7, 8) /* {i} */",
    ] {
        let findings = run(&times(5, sql));
        assert_eq!(findings.len(), 1, "{sql}\n  {findings:?}");
        assert_eq!(findings[0].kind, FindingKind::Redundant, "{sql}");
        assert_eq!(findings[0].count, 5, "{sql}");
    }
    // The same key in a different spelling is the same value only when
    // the text is the same: `7` and `'7'` are two values to the detector.
    let mixed: Vec<String> = ["7", "'7'", "7", "'7'", "7"]
        .iter()
        .map(|v| format!("SELECT * FROM users WHERE id = {v}"))
        .collect();
    assert_eq!(n_plus_ones(&run(&mixed)), 1);
}

/// Interleaved loops over two (or three) queries: each fingerprint is
/// counted apart, at the threshold's edge.
#[test]
fn interleaved_loops_at_the_threshold_edge() {
    let mut statements = Vec::new();
    for i in 1..=5 {
        statements.push(format!("SELECT * FROM posts WHERE id = {i}"));
        statements.push(format!(
            "SELECT * FROM users u WHERE u.id = {i} FOR UPDATE OF u"
        ));
        if i <= 4 {
            statements.push(format!("SELECT * FROM tags WHERE post_id = {i}"));
        }
        statements.push("BEGIN".to_string());
    }
    let findings = run(&statements);
    let mut normalized: Vec<&str> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::NPlusOne)
        .map(|f| f.normalized.as_str())
        .collect();
    normalized.sort_unstable();
    assert_eq!(
        normalized,
        [
            "select * from posts where id = ?",
            "select * from users where users.id = ? for update of users"
        ]
    );
}

/// A loop whose alias names differ from one run to the next (a query
/// builder numbering its aliases, `u1_0`, `u2_0`) is one loop.
#[test]
fn regression_a_loop_with_renumbered_aliases_is_one_shape() {
    let statements: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                "select u{i}_0.id from users u{i}_0 where u{i}_0.id = {i} for no key update of u{i}_0"
            )
        })
        .collect();
    let findings = run(&statements);
    assert_eq!(n_plus_ones(&findings), 1, "{findings:?}");
    assert_eq!(findings[0].count, 5);
}
