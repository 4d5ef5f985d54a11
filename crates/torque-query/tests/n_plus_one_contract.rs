//! Adversarial tests of the contract's "N+1: which repetitions are findings"
//! (/work/shared/QUERY_CONTRACT.md, restated in docs/query.md): every
//! batchable form at exactly `threshold - 1` and `threshold` runs, the
//! non-findings, a finding's contents, and the statements ORMs really send.

use torque_query::detect::{CallSite, Detector, DetectorConfig, Finding, FindingKind, OnFinding};

fn detector_with(threshold: usize) -> Detector {
    Detector::new(DetectorConfig {
        threshold,
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    })
}

fn run(statements: impl IntoIterator<Item = String>) -> Vec<Finding> {
    run_with(5, statements)
}

fn run_with(threshold: usize, statements: impl IntoIterator<Item = String>) -> Vec<Finding> {
    let scope = detector_with(threshold).scope();
    for sql in statements {
        scope.record(&sql);
    }
    scope.finish()
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

/// `n` runs of `sql(i)`, `i` from 0.
fn times(n: usize, sql: impl Fn(usize) -> String) -> Vec<String> {
    (0..n).map(sql).collect()
}

fn assert_n_plus_one(name: &str, findings: &[Finding], count: usize) {
    assert_eq!(
        kinds(findings),
        [FindingKind::NPlusOne],
        "{name}: {findings:#?}"
    );
    assert_eq!(findings[0].count, count, "{name}");
}

fn assert_no_n_plus_one(name: &str, findings: &[Finding]) {
    assert!(
        findings.iter().all(|f| f.kind != FindingKind::NPlusOne),
        "{name}: {findings:#?}"
    );
}

fn assert_nothing(name: &str, findings: &[Finding]) {
    assert!(findings.is_empty(), "{name}: {findings:#?}");
}

/// Each batchable form, as a function of the loop index (the varying slot).
type Form = (&'static str, fn(usize) -> String);

const BATCHABLE: &[Form] = &[
    ("select =", |i| {
        format!("SELECT * FROM comments WHERE post_id = {i}")
    }),
    ("select = $1", |_| {
        "SELECT * FROM comments WHERE post_id = $1".into()
    }),
    ("select in", |i| {
        format!("SELECT * FROM tags WHERE post_id IN ({i}, {})", i + 100)
    }),
    ("select in one element", |i| {
        format!("SELECT * FROM tags WHERE post_id IN ({i})")
    }),
    ("select = any(array[..])", |i| {
        format!("SELECT * FROM tags WHERE post_id = ANY(ARRAY[{i}, 7])")
    }),
    ("select = any($1)", |_| {
        "SELECT * FROM tags WHERE post_id = ANY($1)".into()
    }),
    ("update =", |i| {
        format!("UPDATE accounts SET seen_at = now() WHERE id = {i}")
    }),
    ("update in", |i| {
        format!(
            "UPDATE accounts SET flagged = true WHERE id IN ({i}, {})",
            i + 1
        )
    }),
    ("update = any($1)", |_| {
        "UPDATE accounts SET flagged = true WHERE id = ANY($1)".into()
    }),
    ("delete =", |i| {
        format!("DELETE FROM sessions WHERE id = '{i}'")
    }),
    ("delete in", |i| {
        format!("DELETE FROM sessions WHERE user_id IN ({i})")
    }),
    ("delete = any($1)", |_| {
        "DELETE FROM sessions WHERE user_id = ANY($1::int8[])".into()
    }),
    ("insert one column", |i| {
        format!("INSERT INTO events (user_id) VALUES ({i})")
    }),
    ("insert several columns", |i| {
        format!("INSERT INTO events (user_id, kind, at) VALUES ({i}, 'login', now())")
    }),
    ("insert $n", |_| {
        "INSERT INTO events (user_id, kind) VALUES ($1, $2)".into()
    }),
    ("insert returning", |i| {
        format!("INSERT INTO events (user_id) VALUES ({i}) RETURNING id")
    }),
    ("upsert do update", |i| {
        format!(
            "INSERT INTO counters (id, n) VALUES ({i}, 1) \
             ON CONFLICT (id) DO UPDATE SET n = counters.n + EXCLUDED.n RETURNING n"
        )
    }),
    ("upsert do nothing", |i| {
        format!("INSERT INTO tags (name) VALUES ('t{i}') ON CONFLICT DO NOTHING")
    }),
    ("upsert on constraint", |_| {
        "INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT ON CONSTRAINT kv_pkey \
         DO UPDATE SET v = EXCLUDED.v"
            .into()
    }),
];

#[test]
fn every_batchable_form_is_an_n_plus_one_at_the_threshold_and_nothing_below_it() {
    for &(name, sql) in BATCHABLE {
        assert_nothing(name, &run(times(4, sql)));
        assert_n_plus_one(name, &run(times(5, sql)), 5);
        assert_n_plus_one(name, &run(times(9, sql)), 9);
    }
}

#[test]
fn a_configured_threshold_moves_the_edge_for_every_form() {
    for &(name, sql) in BATCHABLE {
        assert_nothing(name, &run_with(3, times(2, sql)));
        assert_n_plus_one(name, &run_with(3, times(3, sql)), 3);
        assert_nothing(name, &run_with(8, times(7, sql)));
        assert_n_plus_one(name, &run_with(8, times(8, sql)), 8);
    }
}

#[test]
fn thresholds_of_0_and_1_act_as_2() {
    // One run of a statement is no repetition: a threshold below 2 would
    // flag every statement in every request.
    for threshold in [0, 1] {
        let d = detector_with(threshold);
        assert_eq!(d.config().threshold, 2);
        let scope = d.scope();
        scope.record("SELECT * FROM users WHERE id = 1");
        assert_nothing("one run", &scope.finish());
        assert_n_plus_one(
            "two runs",
            &run_with(
                threshold,
                times(2, |i| format!("SELECT * FROM users WHERE id = {i}")),
            ),
            2,
        );
    }
}

#[test]
fn interleaved_loops_over_two_queries_are_two_findings_counted_apart() {
    let mut sqls = Vec::new();
    for i in 0..5 {
        sqls.push(format!("SELECT * FROM orders WHERE customer_id = {i}"));
        sqls.push("BEGIN".to_string());
        sqls.push(format!("UPDATE customers SET seen = true WHERE id = {i}"));
        sqls.push("SELECT now()".to_string());
        sqls.push("COMMIT".to_string());
    }
    let f = run(sqls);
    assert_eq!(kinds(&f), [FindingKind::NPlusOne, FindingKind::NPlusOne]);
    assert_eq!((f[0].count, f[1].count), (5, 5));
    assert!(f[0].normalized.starts_with("select"), "{f:#?}");
    assert!(f[1].normalized.starts_with("update"), "{f:#?}");
    // Interleaved runs of two queries below the threshold each do not add up.
    let mut sqls = Vec::new();
    for i in 0..4 {
        sqls.push(format!("SELECT * FROM orders WHERE customer_id = {i}"));
        sqls.push(format!("SELECT * FROM invoices WHERE customer_id = {i}"));
    }
    assert_nothing("4 + 4 of two queries", &run(sqls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_run_concurrently_in_one_scope_count_together() {
    let scope = detector_with(5).scope();
    // Joined futures inherit the scope ...
    scope
        .run(async {
            let a = async {
                for i in 0..2 {
                    torque_query::detect::record(&format!("SELECT * FROM items WHERE id = {i}"));
                    tokio::task::yield_now().await;
                }
            };
            let b = async {
                for i in 10..12 {
                    torque_query::detect::record(&format!("SELECT * FROM items WHERE id = {i}"));
                    tokio::task::yield_now().await;
                }
            };
            tokio::join!(a, b);
        })
        .await;
    // ... and a spawned task given the scope lands in it too.
    let task = tokio::spawn(scope.run(async {
        torque_query::detect::record("SELECT * FROM items WHERE id = 99");
    }));
    task.await.unwrap();
    let f = scope.finish();
    assert_n_plus_one("joined + spawned", &f, 5);
}

#[test]
fn every_bind_parameter_style_counts_as_varying() {
    for sql in [
        "SELECT * FROM users WHERE id = $1",
        "SELECT * FROM users WHERE id = ?",
        "SELECT * FROM users WHERE id = %s",
        "SELECT * FROM users WHERE id = %(id)s",
        "SELECT * FROM users WHERE id = :id",
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.id=?",
        "INSERT INTO users (name) VALUES (?)",
        "INSERT INTO users (name) VALUES (%s)",
        "INSERT INTO users (name) VALUES (:name)",
    ] {
        // The same text every time: values unknown, so not redundant either.
        assert_n_plus_one(sql, &run(times(5, |_| sql.to_string())), 5);
        assert_nothing(sql, &run(times(4, |_| sql.to_string())));
    }
}

#[test]
fn limit_and_offset_only_differences_are_not_an_n_plus_one_in_any_parameter_style() {
    let literal = [
        |p: usize| {
            format!(
                "SELECT * FROM orders ORDER BY id LIMIT 20 OFFSET {}",
                p * 20
            )
        },
        |p: usize| {
            format!(
                "SELECT * FROM orders WHERE shop_id = 7 ORDER BY id LIMIT 20 OFFSET {}",
                p * 20
            )
        },
        |p: usize| {
            format!(
                "SELECT * FROM orders WHERE shop_id = 7 ORDER BY id LIMIT {}",
                p + 1
            )
        },
        |p: usize| {
            format!(
                "SELECT * FROM orders WHERE shop_id = 7 ORDER BY id OFFSET {p} ROWS FETCH NEXT 20 ROWS ONLY"
            )
        },
    ];
    for sql in literal {
        assert_nothing(&sql(1), &run(times(8, sql)));
    }
    for sql in [
        "SELECT * FROM orders WHERE shop_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
        "SELECT * FROM orders WHERE shop_id = ? ORDER BY id LIMIT ? OFFSET ?",
        "SELECT * FROM orders WHERE shop_id = %s ORDER BY id LIMIT %s OFFSET %s",
        "SELECT * FROM orders WHERE shop_id = :shop ORDER BY id LIMIT :n OFFSET :skip",
        "select o1_0.id from orders o1_0 where o1_0.shop_id=? order by o1_0.id offset ? rows fetch first ? rows only",
    ] {
        assert_nothing(sql, &run(times(8, |_| sql.to_string())));
    }
}

#[test]
fn keyset_pagination_is_not_an_n_plus_one_with_or_without_a_tenant_in_any_parameter_style() {
    let literal = [
        |k: usize| {
            format!(
                "SELECT * FROM events WHERE id > {} ORDER BY id LIMIT 100",
                k * 100
            )
        },
        |k: usize| {
            format!(
                "SELECT * FROM events WHERE tenant_id = 42 AND id > {} ORDER BY id LIMIT 100",
                k * 100
            )
        },
        |k: usize| {
            format!(
                "SELECT * FROM events WHERE id < {k} AND tenant_id = 'acme' ORDER BY id DESC LIMIT 100"
            )
        },
        |k: usize| {
            format!(
                "SELECT * FROM events WHERE tenant_id = 42 AND (created_at, id) > ('2024-01-01', {k}) ORDER BY created_at, id LIMIT 50"
            )
        },
        |k: usize| {
            format!(
                "SELECT * FROM events WHERE tenant_id = 42 AND id > {k} ORDER BY id FETCH FIRST 50 ROWS ONLY"
            )
        },
    ];
    for sql in literal {
        assert_nothing(&sql(1), &run(times(8, sql)));
    }
    for sql in [
        "SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2",
        "SELECT * FROM events WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        "SELECT * FROM events WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?",
        "SELECT * FROM events WHERE tenant_id = %s AND id > %s ORDER BY id LIMIT %s",
        "SELECT * FROM events WHERE tenant_id = %(t)s AND id > %(after)s ORDER BY id LIMIT 100",
        "SELECT * FROM events WHERE tenant_id = :tenant AND id > :after ORDER BY id LIMIT :n",
        // Django REST framework's CursorPagination.
        r#"SELECT "app_event"."id" FROM "app_event" WHERE "app_event"."created" < %s ORDER BY "app_event"."created" DESC LIMIT 11"#,
        // Prisma's cursor pagination.
        r#"SELECT "public"."Post"."id" FROM "public"."Post" WHERE "public"."Post"."id" >= (SELECT "public"."Post"."id" FROM "public"."Post" WHERE ("public"."Post"."id") = ($1)) ORDER BY "public"."Post"."id" ASC LIMIT $2 OFFSET $3"#,
        // Rails' in_batches / find_each.
        r#"SELECT "users"."id" FROM "users" WHERE "users"."id" > $1 ORDER BY "users"."id" ASC LIMIT $2"#,
    ] {
        assert_nothing(sql, &run(times(8, |_| sql.to_string())));
    }
}

#[test]
fn regression_keyset_pagination_spelled_out_with_or_is_not_an_n_plus_one() {
    // `(a, id) > (x, y)` as jOOQ's seek() and hand-written SQL spell it:
    // `a > x OR (a = x AND id > y)`. The `a = x` is part of the keyset, not a
    // key; the constant tenant is the only key.
    let f = run(times(8, |k| {
        format!(
            "SELECT * FROM events WHERE tenant_id = 42 AND (created_at > '2024-01-0{k}' \
             OR (created_at = '2024-01-0{k}' AND id > {k})) ORDER BY created_at, id LIMIT 50"
        )
    }));
    assert_nothing("keyset with OR, literal", &f);
    let sql = "SELECT * FROM events WHERE tenant_id = $1 AND (created_at > $2 \
               OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT 50";
    assert_nothing(
        "keyset with OR, params",
        &run(times(8, |_| sql.to_string())),
    );
    // A tenant that does vary is still an N+1.
    let f = run(times(5, |k| {
        format!(
            "SELECT * FROM events WHERE tenant_id = {k} AND (created_at > '2024-01-01' \
             OR (created_at = '2024-01-01' AND id > 7)) ORDER BY created_at, id LIMIT 50"
        )
    }));
    assert_n_plus_one("keyset with OR, varying tenant", &f, 5);
}

#[test]
fn regression_a_key_named_like_another_tables_keyset_column_is_still_a_key() {
    // One page of comments per post, the post joined: `posts.id = k` is the
    // loop's key, and `comments.id > 100` the page's range. The keyset rule
    // took `posts.id` for part of a keyset on `comments.id` (it compared
    // the columns' last names only) and the N+1 went unreported.
    let f = run(times(5, |k| {
        format!(
            "SELECT c.* FROM comments c JOIN posts p ON p.id = c.post_id \
             WHERE p.id = {k} AND c.id > 100 ORDER BY c.id LIMIT 20"
        )
    }));
    assert_n_plus_one("a key on posts.id, a page on comments.id", &f, 5);
    // The keyset's own equality, qualified the same way, is still no key.
    let f = run(times(8, |k| {
        format!(
            "SELECT * FROM events e WHERE e.tenant_id = 42 AND (e.created_at > '2024-01-0{k}' \
             OR (e.created_at = '2024-01-0{k}' AND e.id > {k})) ORDER BY e.created_at, e.id LIMIT 50"
        )
    }));
    assert_nothing("qualified keyset with OR", &f);
}

#[test]
fn identical_repeats_are_one_redundant_finding_not_an_n_plus_one() {
    for sql in [
        "SELECT * FROM settings WHERE key = 'theme'",
        "SELECT * FROM users WHERE id = 1 LIMIT 1",
        "SELECT * FROM posts WHERE author_id IN (1, 2, 3)",
        "SELECT * FROM flags",
    ] {
        let f = run(times(5, |_| sql.to_string()));
        assert_eq!(kinds(&f), [FindingKind::Redundant], "{sql}: {f:#?}");
        assert_eq!(f[0].count, 5, "{sql}");
        assert_eq!(f[0].normalized, torque_query::fingerprint(sql).normalized());
    }
    // Spelled differently (case, comments, spacing), still the same values.
    let f = run([
        "SELECT * FROM settings WHERE key = 'theme'".to_string(),
        "select *  from settings where key = 'theme' /* app:web */".to_string(),
        "SELECT * FROM public.settings WHERE key = 'theme';".to_string(),
    ]);
    assert_eq!(kinds(&f), [FindingKind::Redundant], "{f:#?}");
    assert_eq!(f[0].count, 3);
}

#[test]
fn tableless_selects_and_utility_statements_are_never_findings() {
    let mut sqls = Vec::new();
    for i in 0..10 {
        for sql in [
            "SELECT 1".to_string(),
            format!("SELECT {i}"),
            "SELECT now()".to_string(),
            "SELECT $1::int8".to_string(),
            format!("SELECT set_config('app.tenant', '{i}', true)"),
            "SELECT nextval('users_id_seq')".to_string(),
            format!("SELECT pg_advisory_xact_lock({i})"),
            "SELECT * FROM generate_series(1, $1) g WHERE g = $2".to_string(),
            format!("VALUES ({i})"),
            "BEGIN".to_string(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE".to_string(),
            format!("SAVEPOINT active_record_{i}"),
            format!("RELEASE SAVEPOINT active_record_{i}"),
            format!("ROLLBACK TO SAVEPOINT sa_savepoint_{i}"),
            format!("SET LOCAL app.user_id = {i}"),
            format!("SET search_path TO tenant_{i}, public"),
            "SET TIME ZONE 'UTC'".to_string(),
            "SHOW transaction_isolation".to_string(),
            "COMMIT".to_string(),
            "ROLLBACK".to_string(),
            "DISCARD ALL".to_string(),
            format!("LISTEN channel_{i}"),
            format!("NOTIFY jobs, '{i}'"),
            "LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE".to_string(),
            "DEALLOCATE ALL".to_string(),
        ] {
            sqls.push(sql);
        }
    }
    assert_nothing("tableless and utility", &run(sqls));
}

#[test]
fn a_finding_names_fingerprint_normalized_sql_count_call_sites_and_suggestion() {
    let scope = detector_with(5).scope();
    let sites = [
        CallSite::new("src/posts.rs", 10, 5),
        CallSite::new("src/feed.rs", 3, 1),
        CallSite::new("src/posts.rs", 10, 5),
    ];
    for i in 0..7 {
        scope.record_at(
            &format!("SELECT * FROM Public.Comments c WHERE c.post_id = {i} -- loop"),
            sites[i % 3].clone(),
        );
    }
    let f = scope.finish();
    assert_n_plus_one("lookup", &f, 7);
    let sql = "select * from comments where comments.post_id = $1";
    assert_eq!(f[0].fingerprint, torque_query::fingerprint(sql).hash());
    assert_eq!(f[0].normalized, torque_query::fingerprint(sql).normalized());
    assert_eq!(
        f[0].normalized,
        "select * from comments where comments.post_id = ?"
    );
    assert_eq!(f[0].call_sites, sites[..2]);
    assert!(
        f[0].suggestion.contains("post_id = ANY($1)"),
        "{}",
        f[0].suggestion
    );
    assert!(f[0].suggestion.contains("JOIN"), "{}", f[0].suggestion);
    // The finding prints the same facts.
    let shown = f[0].to_string();
    assert!(
        shown.contains("(7x)") && shown.contains("src/feed.rs:3:1"),
        "{shown}"
    );
}

#[test]
fn the_suggestion_is_the_batched_form_of_the_statement_kind() {
    let suggestion = |sql: fn(usize) -> String| {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        f[0].suggestion.clone()
    };
    let s = suggestion(|i| format!("SELECT * FROM users WHERE email = 'u{i}@x.org'"));
    assert!(s.contains("email = ANY($1)") && s.contains("JOIN"), "{s}");
    let s = suggestion(|i| format!("UPDATE users SET active = false WHERE id = {i}"));
    assert!(
        s.contains("UPDATE ... FROM UNNEST") && s.contains("id = ANY($1)"),
        "{s}"
    );
    let s = suggestion(|i| format!("DELETE FROM sessions WHERE token = 't{i}'"));
    assert!(
        s.contains("token = ANY($1)") && !s.contains("UNNEST"),
        "{s}"
    );
    let s = suggestion(|i| format!("INSERT INTO events (user_id) VALUES ({i})"));
    assert!(s.contains("UNNEST") && s.contains("multi-row"), "{s}");
    let s = suggestion(|i| {
        format!(
            "INSERT INTO kv (k, v) VALUES ({i}, 1) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
        )
    });
    assert!(s.contains("UNNEST") && s.contains("multi-row"), "{s}");
}

#[test]
fn regression_a_key_written_before_the_equals_sign_is_named_in_the_suggestion() {
    // `WHERE 5 = id` (and `$1 = id`): the key column is after the `=`; the
    // suggestion named the clause keyword: "WHERE where = ANY($1)".
    for sql in [
        |i: usize| format!("SELECT * FROM users WHERE {i} = id"),
        |_: usize| "SELECT * FROM users u WHERE $1 = u.id".to_string(),
        |i: usize| format!("SELECT * FROM users WHERE active AND {i} = \"Id\""),
    ] {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        let s = &f[0].suggestion;
        assert!(
            !s.contains("where = ANY") && !s.contains("and = ANY"),
            "{s}"
        );
        assert!(
            s.contains("id = ANY($1)") || s.contains("\"Id\" = ANY($1)"),
            "{s}"
        );
    }
}

#[test]
fn regression_a_key_cast_on_the_column_side_is_named_for_its_column() {
    // `id::text = ?` (Rails' and Django's lookups on a uuid or citext
    // column cast to text): the suggestion named the type, "WHERE text =
    // ANY($1)". Its column is before the cast.
    // Each case: the column the suggestion must name, and the statement.
    let cases: [Form; 2] = [
        ("id", |i| {
            format!("SELECT * FROM users WHERE id::text = '{i}'")
        }),
        ("email", |_| {
            "SELECT * FROM users u WHERE u.email::citext = $1".to_string()
        }),
    ];
    for (column, sql) in cases {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        let s = &f[0].suggestion;
        assert!(s.contains(&format!("WHERE {column} = ANY($1)")), "{s}");
    }
}

#[test]
fn regression_a_key_cast_to_a_type_of_several_words_is_named_for_its_column() {
    // ca9e1c1 stepped over a one-word type only: `id::character varying = ?`
    // (PostgreSQL's own spelling of varchar, as it deparses casts) named
    // "varying", `double precision` "precision", `timestamp with time zone`
    // "zone", a schema-qualified type its last part.
    // Each case: the column the suggestion must name, and the statement.
    let cases: [Form; 5] = [
        ("id", |_| {
            "SELECT * FROM users WHERE id::character varying = $1".to_string()
        }),
        ("score", |_| {
            "SELECT * FROM users WHERE score::double precision = $1".to_string()
        }),
        ("created_at", |_| {
            "SELECT * FROM events WHERE created_at::timestamp with time zone = $1".to_string()
        }),
        ("created_at", |_| {
            "SELECT * FROM events WHERE created_at::timestamp without time zone = $1".to_string()
        }),
        ("id", |_| {
            "SELECT * FROM users u WHERE u.id::pg_catalog.text = $1".to_string()
        }),
    ];
    for (column, sql) in cases {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        let s = &f[0].suggestion;
        assert!(s.contains(&format!("WHERE {column} = ANY($1)")), "{s}");
    }
    // A column named like a type's tail, after another cast, is a column.
    let f = run(times(5, |_| {
        "SELECT * FROM t WHERE a::int > 0 AND zone = $1".to_string()
    }));
    assert_n_plus_one("zone", &f, 5);
    assert!(
        f[0].suggestion.contains("WHERE zone = ANY($1)"),
        "{}",
        f[0].suggestion
    );
}

#[test]
fn regression_a_limit_offset_on_an_unordered_lookup_does_not_hide_the_n_plus_one() {
    // Prisma's findUnique / findFirst and findMany of a relation add
    // `LIMIT $2 OFFSET $3` (or `OFFSET $2`) to every lookup: a loop of them is
    // an N+1 over `id = $1`, not pagination (pages have an order).
    for sql in [
        r#"SELECT "public"."User"."id", "public"."User"."email" FROM "public"."User" WHERE ("public"."User"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3"#,
        r#"SELECT "public"."Post"."id", "public"."Post"."title" FROM "public"."Post" WHERE "public"."Post"."authorId" = $1 OFFSET $2"#,
        r#"SELECT "public"."Post"."id" FROM "public"."Post" WHERE "public"."Post"."authorId" IN ($1) OFFSET $2"#,
    ] {
        assert_n_plus_one(sql, &run(times(5, |_| sql.to_string())), 5);
    }
}

#[test]
fn regression_an_order_by_inside_a_call_or_subquery_makes_no_page() {
    // Only the statement's own ORDER BY orders its pages: one inside a
    // window, an aggregate or a subquery does not, and a loop of these
    // lookups is an N+1 like the unordered ones above.
    for sql in [
        "SELECT id, row_number() OVER (ORDER BY created_at) FROM posts WHERE user_id = $1 LIMIT $2 OFFSET $3",
        "SELECT string_agg(name, ',' ORDER BY name) FROM tags WHERE post_id = $1 LIMIT $2 OFFSET $3",
        "SELECT * FROM posts WHERE user_id = $1 AND id IN (SELECT post_id FROM likes ORDER BY created_at LIMIT 10) LIMIT $2 OFFSET $3",
    ] {
        assert_n_plus_one(sql, &run(times(5, |_| sql.to_string())), 5);
    }
    // The statement's own ORDER BY still makes pages, also when the whole
    // statement or a set operation's result is ordered.
    for sql in [
        "(SELECT * FROM posts WHERE user_id = $1 ORDER BY id LIMIT $2 OFFSET $3)",
        "SELECT id FROM posts WHERE user_id = $1 UNION ALL (SELECT id FROM drafts WHERE user_id = $1) ORDER BY id LIMIT $2 OFFSET $3",
        "SELECT id, row_number() OVER (ORDER BY created_at) FROM posts WHERE user_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
    ] {
        assert_no_n_plus_one(sql, &run(times(8, |_| sql.to_string())));
    }
}

#[test]
fn orm_lookups_with_a_constant_limit_are_an_n_plus_one() {
    // The LIMIT an ORM adds to `find` is the same on every call; the key varies.
    let forms: &[Form] = &[
        // ActiveRecord `User.find(id)`.
        ("rails", |_| {
            r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2"#.into()
        }),
        ("rails inlined", |i| {
            format!(r#"SELECT "users".* FROM "users" WHERE "users"."id" = {i} LIMIT 1"#)
        }),
        // Django `User.objects.get(pk=...)`.
        ("django", |_| {
            r#"SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."id" = %s LIMIT 21"#.into()
        }),
        ("django inlined", |i| {
            format!(
                r#"SELECT "auth_user"."id" FROM "auth_user" WHERE "auth_user"."id" = {i} LIMIT 21"#
            )
        }),
        // GORM `db.First(&u, id)`.
        ("gorm", |_| {
            r#"SELECT * FROM "users" WHERE "users"."id" = $1 AND "users"."deleted_at" IS NULL ORDER BY "users"."id" LIMIT $2"#.into()
        }),
        // Diesel `users.find(id).first(conn)`.
        ("diesel", |_| {
            r#"SELECT "users"."id", "users"."name" FROM "users" WHERE "users"."id" = $1 LIMIT $2"#
                .into()
        }),
        // SQLAlchemy `.filter_by(id=...).first()`.
        ("sqlalchemy", |_| {
            "SELECT users.id, users.name \nFROM users \nWHERE users.id = %(id_1)s \n LIMIT %(param_1)s".into()
        }),
        // Sequelize `findOne`.
        ("sequelize", |i| {
            format!(
                r#"SELECT "id", "name" FROM "users" AS "User" WHERE "User"."id" = {i} LIMIT 1;"#
            )
        }),
        // Spring Data `findFirstByEmail`.
        ("hibernate", |_| {
            "select u1_0.id,u1_0.email from users u1_0 where u1_0.email=? fetch first ? rows only"
                .into()
        }),
        // Top 3 comments of each post.
        ("top-n per parent", |i| {
            format!("SELECT * FROM comments WHERE post_id = {i} ORDER BY id DESC LIMIT 3")
        }),
    ];
    for &(name, sql) in forms {
        assert_n_plus_one(name, &run(times(5, sql)), 5);
        assert_nothing(name, &run(times(4, sql)));
    }
}

#[test]
fn orm_statement_shapes_are_n_plus_ones() {
    let forms: &[Form] = &[
        ("hibernate", |_| {
            "select b1_0.id,b1_0.title from book b1_0 where b1_0.author_id=?".into()
        }),
        ("jooq", |i| {
            format!(
                r#"select "public"."book"."id" from "public"."book" where "public"."book"."author_id" = {i}"#
            )
        }),
        ("django prefetch", |_| {
            r#"SELECT "app_tag"."id" FROM "app_tag" WHERE "app_tag"."post_id" IN (%s, %s, %s)"#
                .into()
        }),
        ("asyncpg", |_| {
            "SELECT * FROM accounts WHERE id = $1::uuid".into()
        }),
        // SQLAlchemy's lazy loader puts the parameter first.
        ("sqlalchemy lazy load", |_| {
            "SELECT addresses.id AS addresses_id, addresses.email AS addresses_email \nFROM addresses \nWHERE %(param_1)s = addresses.user_id".into()
        }),
        // Prisma's findFirst (no orderBy) adds LIMIT and OFFSET.
        ("prisma findFirst", |_| {
            r#"SELECT "public"."Post"."id" FROM "public"."Post" WHERE "public"."Post"."authorId" = $1 LIMIT $2 OFFSET $3"#.into()
        }),
        ("cte", |i| {
            format!(
                "WITH u AS (SELECT * FROM users WHERE id = {i}) SELECT * FROM u JOIN teams t ON t.id = u.team_id"
            )
        }),
        ("recursive cte", |_| {
            "WITH RECURSIVE tree AS (SELECT id, parent_id FROM nodes WHERE id = $1 \
             UNION ALL SELECT n.id, n.parent_id FROM nodes n JOIN tree ON n.parent_id = tree.id) \
             SELECT * FROM tree"
                .into()
        }),
        ("subquery in where", |i| {
            format!(
                "SELECT * FROM posts WHERE author_id IN (SELECT id FROM users WHERE org_id = {i})"
            )
        }),
        ("exists subquery", |i| {
            format!("SELECT EXISTS (SELECT 1 FROM posts WHERE user_id = {i})")
        }),
        ("slot on a joined table", |i| {
            format!("SELECT p.* FROM posts p JOIN users u ON u.id = p.user_id WHERE u.org_id = {i}")
        }),
        ("slot in a join condition", |i| {
            format!(
                "SELECT p.* FROM posts p LEFT JOIN likes l ON l.post_id = p.id AND l.user_id = {i}"
            )
        }),
        ("for update", |_| {
            "SELECT * FROM accounts WHERE id = $1 FOR UPDATE".into()
        }),
        ("for no key update", |i| {
            format!("SELECT * FROM accounts WHERE id = {i} FOR NO KEY UPDATE")
        }),
        ("for update skip locked", |i| {
            format!(
                "SELECT * FROM jobs WHERE queue = 'q{i}' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
        }),
        ("quoted identifiers", |i| {
            format!(r#"SELECT "Users"."Id" FROM "Users" WHERE "Users"."Id" = {i}"#)
        }),
        ("schema-qualified", |i| {
            format!("SELECT * FROM billing.invoices WHERE billing.invoices.customer_id = {i}")
        }),
        ("sqlcommenter tag varying per call", |i| {
            format!(
                "SELECT * FROM users WHERE id = {i} /*controller='users',action='show',\
                 traceparent='00-{i:032x}-{i:016x}-01'*/"
            )
        }),
        ("leading query-log tag", |i| {
            format!(
                "/*application:Blog,controller:posts,action:index*/ SELECT * FROM users WHERE id = {i}"
            )
        }),
        ("leading line comment", |i| {
            format!("-- load author\nSELECT * FROM users WHERE id = {i}")
        }),
        ("count per parent", |i| {
            format!("SELECT COUNT(*) FROM comments WHERE post_id = {i}")
        }),
        ("update returning", |_| {
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance".into()
        }),
        ("update from", |i| {
            format!(
                "UPDATE items SET price = p.price FROM prices p WHERE p.sku = items.sku AND items.id = {i}"
            )
        }),
        ("delete using", |i| {
            format!("DELETE FROM a USING b WHERE a.b_id = b.id AND b.owner = {i}")
        }),
        ("rails insert", |_| {
            r#"INSERT INTO "comments" ("post_id", "body", "created_at") VALUES ($1, $2, $3) RETURNING "id""#.into()
        }),
        ("insert with a cte", |i| {
            format!("WITH cfg AS (SELECT 1) INSERT INTO events (user_id) VALUES ({i})")
        }),
    ];
    for &(name, sql) in forms {
        assert_n_plus_one(name, &run(times(5, sql)), 5);
        assert_nothing(name, &run(times(4, sql)));
    }
}

#[test]
fn regression_a_parenthesized_select_is_a_select() {
    // jOOQ and hand-written SQL wrap set operations' operands:
    // `(SELECT ...) UNION (SELECT ...)`. The leading `(` made the statement a
    // utility statement, never a finding.
    let forms: &[Form] = &[
        ("parenthesized", |i| {
            format!("(SELECT * FROM users WHERE id = {i})")
        }),
        ("union of parenthesized", |_| {
            r#"(select "t"."id" from "t" where "t"."a" = ?) union (select "u"."id" from "u" where "u"."a" = ?)"#
                .into()
        }),
        ("nested", |i| {
            format!(
                "((SELECT id FROM a WHERE x = {i}) UNION ALL (SELECT id FROM b WHERE y = {i})) ORDER BY 1"
            )
        }),
    ];
    for &(name, sql) in forms {
        assert_eq!(
            torque_query::fingerprint(&sql(1)).kind(),
            torque_query::StatementKind::Select,
            "{name}"
        );
        assert_n_plus_one(name, &run(times(5, sql)), 5);
    }
    // Still no table: still never a finding.
    assert_nothing("(SELECT 1)", &run(times(5, |_| "(SELECT 1)".into())));
}

#[test]
fn regression_a_key_compared_to_a_cast_is_a_key() {
    // `= CAST(? AS uuid)` (jOOQ, Hibernate) is `= ?::uuid`.
    for sql in [
        |i: usize| format!("SELECT * FROM users WHERE id = CAST('{i}' AS uuid)"),
        |_: usize| "select u.id from users u where u.id = cast(? as uuid)".to_string(),
        |_: usize| "DELETE FROM sessions WHERE user_id = CAST($1 AS int8)".to_string(),
        // A typed literal (jOOQ's inlined dates): `= date '...'` is `= ?::date`.
        |i: usize| {
            format!(
                "SELECT * FROM visits WHERE visit_id = DATE '2024-01-{:02}'",
                i + 1
            )
        },
        |i: usize| {
            format!("UPDATE visits SET seen = true WHERE visit_id = timestamp '2024-01-01 0{i}:00'")
        },
    ] {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        assert!(
            f[0].suggestion.contains("id = ANY($1)"),
            "{}",
            f[0].suggestion
        );
    }
}

#[test]
fn non_batchable_predicates_are_not_an_n_plus_one() {
    for sql in [
        |i: usize| format!("SELECT * FROM users WHERE id <> {i}"),
        |i: usize| format!("SELECT * FROM users WHERE name LIKE 'a{i}%'"),
        |i: usize| format!("SELECT * FROM users WHERE id > {i}"),
        |i: usize| format!("SELECT * FROM users WHERE created_at BETWEEN '{i}' AND '9'"),
        |i: usize| format!("UPDATE jobs SET progress = {i} WHERE id = 7"),
        |i: usize| {
            format!(
                "INSERT INTO events (user_id) VALUES ({i}), ({}), (3)",
                i + 1
            )
        },
        |i: usize| format!("INSERT INTO archive SELECT * FROM events WHERE created_at < '{i}'"),
    ] {
        assert_no_n_plus_one(&sql(0), &run(times(8, sql)));
    }
}

#[test]
fn regression_psycopg2_in_with_one_tuple_parameter_is_a_key() {
    // psycopg2 adapts a Python tuple to a list: `WHERE id IN %s` (one
    // placeholder, no parentheses) is `IN (...)`.
    for sql in [
        "SELECT * FROM users WHERE id IN %s",
        "SELECT * FROM users WHERE id IN %(ids)s",
        "DELETE FROM sessions WHERE user_id IN %s",
    ] {
        let f = run(times(5, |_| sql.to_string()));
        assert_n_plus_one(sql, &f, 5);
        assert!(
            f[0].suggestion.contains("id = ANY($1)"),
            "{}",
            f[0].suggestion
        );
    }
}

#[test]
fn regression_a_row_compared_for_equality_is_a_composite_key() {
    // `(a, b) = (?, ?)`: jOOQ's row(...).eq(...), and composite primary keys.
    let f = run(times(5, |i| {
        format!("SELECT * FROM memberships WHERE (team_id, user_id) = ({i}, 7)")
    }));
    assert_n_plus_one("row equality", &f, 5);
    assert!(
        f[0].suggestion
            .contains("(team_id, user_id) IN (SELECT * FROM UNNEST("),
        "{}",
        f[0].suggestion
    );
    let sql = "select * from memberships m where (m.team_id, m.user_id) = (?, ?)";
    assert_n_plus_one(sql, &run(times(5, |_| sql.to_string())), 5);
    // The same row every time is redundant, not an N+1.
    let f = run(times(5, |_| {
        "SELECT * FROM memberships WHERE (team_id, user_id) = (1, 7)".to_string()
    }));
    assert_eq!(kinds(&f), [FindingKind::Redundant], "{f:#?}");
}

#[test]
fn regression_from_inside_a_function_call_names_no_table() {
    // `EXTRACT(field FROM source)`, `SUBSTRING(s FROM n)`, `TRIM(BOTH FROM s)`:
    // the FROM is an argument's, not a relation list's. `current_date` was
    // taken for a table, so `SELECT extract(...)` touched one and its repeats
    // were a redundant-query finding.
    for sql in [
        "SELECT EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)",
        "SELECT extract(year from current_date)",
        "SELECT substring(current_user FROM 1 FOR 3)",
        "SELECT trim(both from session_user)",
    ] {
        assert!(
            torque_query::fingerprint(sql).tables().is_empty(),
            "{sql}: {:?}",
            torque_query::fingerprint(sql).tables()
        );
        assert_nothing(sql, &run(times(6, |_| sql.to_string())));
    }
    // The relations of a statement around such a call are still found.
    let f = torque_query::fingerprint(
        "SELECT extract(epoch FROM o.created_at) FROM orders o WHERE o.id IN (SELECT order_id FROM items WHERE sku = $1)",
    );
    assert_eq!(f.tables(), ["orders", "items"]);
    let f = torque_query::fingerprint(
        "WITH d AS (DELETE FROM jobs WHERE id = $1 RETURNING *), u AS (UPDATE runs r SET n = 1 FROM d WHERE r.job = d.id) SELECT * FROM d",
    );
    assert_eq!(f.tables(), ["jobs", "runs", "d"]);
}

#[test]
fn regression_is_not_distinct_from_is_an_equality() {
    // The null-safe equality (SQLAlchemy's is_not_distinct_from, jOOQ's
    // isNotDistinctFrom) is a key; `IS DISTINCT FROM` (not equal) is not.
    let sql = "SELECT * FROM profiles WHERE profiles.user_id IS NOT DISTINCT FROM $1";
    let f = run(times(5, |_| sql.to_string()));
    assert_n_plus_one(sql, &f, 5);
    assert!(
        f[0].suggestion.contains("user_id = ANY($1)"),
        "{}",
        f[0].suggestion
    );
    let f = run(times(5, |i| {
        format!("DELETE FROM profiles WHERE user_id IS NOT DISTINCT FROM {i}")
    }));
    assert_n_plus_one("literal", &f, 5);
    let f = run(times(8, |i| {
        format!("SELECT * FROM profiles WHERE user_id IS DISTINCT FROM {i}")
    }));
    assert_no_n_plus_one("IS DISTINCT FROM", &f);
}

#[test]
fn regression_typed_literals_and_casts_in_an_in_list_are_keys() {
    // `IN (DATE '...')` and `IN (CAST('...' AS date))` (and in `ANY(ARRAY[`,
    // or in a row of composite keys) were not key slots: a loop over them was
    // no N+1, where `IN ('...'::date)` was. The suggestion names the column,
    // not the type or `cast`.
    let cases: [Form; 7] = [
        ("visit_day", |i| {
            format!(
                "SELECT * FROM visits WHERE visit_day IN (DATE '2024-01-{:02}')",
                i + 1
            )
        }),
        ("visit_day", |i| {
            format!(
                "SELECT * FROM visits WHERE visit_day IN (DATE '2024-01-{:02}', DATE '2024-02-01')",
                i + 1
            )
        }),
        ("visit_day", |i| {
            format!(
                "SELECT * FROM visits WHERE visit_day IN (pg_catalog.timestamp with time zone '2024-01-01 0{i}:00')"
            )
        }),
        ("visit_day", |i| {
            format!(
                "SELECT * FROM visits WHERE visit_day IN (CAST('2024-01-0{}' AS date))",
                i + 1
            )
        }),
        ("visit_day", |_| {
            "SELECT * FROM visits WHERE visit_day IN (CAST($1 AS date), CAST($2 AS date))"
                .to_string()
        }),
        ("visit_day", |i| {
            format!("SELECT * FROM visits WHERE visit_day = ANY(ARRAY[INTERVAL '{i}' DAY])")
        }),
        ("(site, visit_day)", |i| {
            format!(
                "SELECT * FROM visits WHERE (site, visit_day) IN ((1, DATE '2024-01-0{}'))",
                i + 1
            )
        }),
    ];
    for (column, sql) in cases {
        let f = run(times(5, sql));
        assert_n_plus_one(&sql(0), &f, 5);
        let s = &f[0].suggestion;
        assert!(s.contains(column), "{}: {s}", sql(0));
        assert!(
            !s.contains("date = ANY") && !s.contains("cast = ANY") && !s.contains("interval = ANY"),
            "{}: {s}",
            sql(0)
        );
        // Below the threshold: nothing.
        assert_no_n_plus_one(&sql(0), &run(times(4, sql)));
    }
}

#[test]
fn regression_a_null_in_an_in_list_does_not_split_a_loop_into_two_shapes() {
    // A loop looking up `IN (parent_id, NULL)` for some rows and
    // `IN (parent_id)` for others (an optional second key left NULL) is one
    // query shape: NULL is one more constant of the list. The two spellings
    // were two fingerprints of 3 runs each, under the threshold: no finding.
    let f = run(times(6, |i| {
        if i % 2 == 0 {
            format!("SELECT * FROM comments WHERE post_id IN ({i}, NULL)")
        } else {
            format!("SELECT * FROM comments WHERE post_id IN ({i})")
        }
    }));
    assert_n_plus_one("IN (i, NULL) / IN (i)", &f, 6);
    assert_eq!(
        f[0].normalized,
        "select * from comments where post_id in (?)"
    );
    // A list of NULL alone, repeated, is an identical repeat, not an N+1.
    let f = run(times(6, |_| {
        "SELECT * FROM comments WHERE post_id IN (NULL)".to_string()
    }));
    assert_eq!(kinds(&f), [FindingKind::Redundant], "{f:#?}");
}
