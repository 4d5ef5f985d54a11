//! A held-out corpus of statements as real applications send them (Diesel,
//! SQLx, SeaORM, ActiveRecord, Django, Hibernate, Prisma, psql scripts,
//! pg_stat_statements text), checked against every fingerprint rule of the
//! query contract (docs/query.md). `fingerprint_contract.rs` has one test
//! per rule; this file has the forms that test does not spell out.

use torque_query::{StatementKind, fingerprint};

#[path = "common/shapes.rs"]
mod shapes;
use shapes::{differ, same};

fn normalized(sql: &str, expected: &str) {
    assert_eq!(fingerprint(sql).normalized(), expected, "{sql}");
}

/// Every literal form PostgreSQL has is one placeholder, as a bind parameter is.
#[test]
fn every_literal_form_is_one_placeholder() {
    let param = "SELECT * FROM t WHERE a = $1";
    for sql in [
        "SELECT * FROM t WHERE a = E'it\\'s'",
        "SELECT * FROM t WHERE a = e'\\n\\t\\\\'",
        "SELECT * FROM t WHERE a = U&'d\\0061t\\+000061'",
        "SELECT * FROM t WHERE a = u&'x'",
        "SELECT * FROM t WHERE a = $$it's$$",
        "SELECT * FROM t WHERE a = $fn$ body $x$ inner $x$ $fn$",
        "SELECT * FROM t WHERE a = $_1$x$_1$",
        "SELECT * FROM t WHERE a = B'0101'",
        "SELECT * FROM t WHERE a = X'ff'",
        "SELECT * FROM t WHERE a = N'national'",
        "SELECT * FROM t WHERE a = 1e10",
        "SELECT * FROM t WHERE a = 1E+10",
        "SELECT * FROM t WHERE a = 2.5e-3",
        "SELECT * FROM t WHERE a = .5",
        "SELECT * FROM t WHERE a = 5.",
        "SELECT * FROM t WHERE a = 0x1F",
        "SELECT * FROM t WHERE a = 0o17",
        "SELECT * FROM t WHERE a = 0b101",
        "SELECT * FROM t WHERE a = 1_000_000",
        "SELECT * FROM t WHERE a = 0x_FF_FF",
        "SELECT * FROM t WHERE a = -1",
        "SELECT * FROM t WHERE a = - 1",
        "SELECT * FROM t WHERE a = -1.5e3",
        "SELECT * FROM t WHERE a = TRUE",
        "SELECT * FROM t WHERE a = false",
        "SELECT * FROM t WHERE a = ''",
        "SELECT * FROM t WHERE a = 'multi\nline'",
        "SELECT * FROM t WHERE a = ?",
        "SELECT * FROM t WHERE a = :a",
        "SELECT * FROM t WHERE a = %s",
        "SELECT * FROM t WHERE a = %(a)s",
        "SELECT * FROM t WHERE a = $12",
    ] {
        same(param, sql);
    }
    // Literal text that looks like SQL stays inside its literal.
    for sql in [
        "SELECT * FROM t WHERE a = 'x -- y'",
        "SELECT * FROM t WHERE a = '/* y */'",
        "SELECT * FROM t WHERE a = 'it''s; DROP TABLE t'",
        "SELECT * FROM t WHERE a = $$ ' \" $$",
        "SELECT * FROM t WHERE a = E'\\' -- still a string'",
        "SELECT * FROM t WHERE a = 'IN (1, 2)'",
    ] {
        same(param, sql);
    }
}

/// A sign is part of the literal; the minus operator is not.
#[test]
fn negative_numbers_versus_the_minus_operator() {
    same(
        "SELECT * FROM t WHERE a = -1 AND b = -2.5",
        "SELECT * FROM t WHERE a = 3 AND b = 4",
    );
    same("SELECT a - 1 FROM t", "SELECT a-1 FROM t");
    same("SELECT a - 1 FROM t", "SELECT a -1 FROM t");
    differ("SELECT a - 1 FROM t", "SELECT a FROM t");
    differ("SELECT a - 1 FROM t", "SELECT a + 1 FROM t");
    same(
        "SELECT * FROM t WHERE a > now() - INTERVAL '1 day'",
        "SELECT * FROM t WHERE a > now() - INTERVAL '7 days'",
    );
    same(
        "SELECT * FROM t WHERE a IN (-1, -2)",
        "SELECT * FROM t WHERE a IN (5)",
    );
    same(
        "UPDATE t SET n = n - 1 WHERE id = 1",
        "UPDATE t SET n = n - 5 WHERE id = 2",
    );
    differ(
        "UPDATE t SET n = n - 1 WHERE id = 1",
        "UPDATE t SET n = n WHERE id = 2",
    );
}

/// Typed literals and casts keep their type; the value is a placeholder.
#[test]
fn typed_literals_and_casts_keep_their_type() {
    same(
        "SELECT * FROM t WHERE d = DATE '2024-01-01'",
        "SELECT * FROM t WHERE d = date '1999-12-31'",
    );
    same(
        "SELECT * FROM t WHERE d = '1'::int",
        "SELECT * FROM t WHERE d = $1::INT",
    );
    same(
        "SELECT * FROM t WHERE d = CAST('1' AS int)",
        "SELECT * FROM t WHERE d = cast($1 as INT)",
    );
    same(
        "SELECT * FROM t WHERE d = TIMESTAMP WITH TIME ZONE '2024-01-01 00:00+00'",
        "SELECT * FROM t WHERE d = timestamp with time zone $1",
    );
    same(
        "SELECT * FROM t WHERE d < now() - INTERVAL '1' DAY",
        "SELECT * FROM t WHERE d < now() - interval '3' day",
    );
    differ(
        "SELECT * FROM t WHERE d = '1'::int",
        "SELECT * FROM t WHERE d = '1'::bigint",
    );
    differ(
        "SELECT * FROM t WHERE d = DATE '2024-01-01'",
        "SELECT * FROM t WHERE d = '2024-01-01'",
    );
    normalized(
        "SELECT * FROM t WHERE d = '2024-01-01'::timestamptz AND x = 1::numeric(10,2)",
        "select * from t where d = ?::timestamptz and x = ?::numeric(?, ?)",
    );
}

/// Bind parameters of every style, in lists too.
#[test]
fn parameter_lists_of_every_style_collapse() {
    let one = "SELECT * FROM users WHERE id IN ($1)";
    for sql in [
        "SELECT * FROM users WHERE id IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        "SELECT * FROM users WHERE id IN (?, ?, ?)",
        "SELECT * FROM users WHERE id IN (?,?,?)",
        "SELECT * FROM users WHERE id IN (:a, :b)",
        "SELECT * FROM users WHERE id IN (%s, %s)",
        "SELECT * FROM users WHERE id IN ($1::int8, $2::int8)",
        "SELECT * FROM users WHERE id IN (1, $1, '2', ?)",
        "SELECT * FROM users WHERE id IN ( 1 , 2 , 3 )",
        "SELECT * FROM users WHERE id IN (\n  1,\n  2\n)",
        // pg_stat_statements (PostgreSQL 18) prints a squashed list so.
        "SELECT * FROM users WHERE id IN ($1 /*, ... */)",
        // Comments between the elements.
        "SELECT * FROM users WHERE id IN (1 /* one */, 2 -- two\n, 3)",
        "SELECT * FROM users WHERE id IN (/* none */ 1)",
    ] {
        same(one, sql);
    }
    same(
        "SELECT * FROM users WHERE id NOT IN (1, 2, 3)",
        "SELECT * FROM users WHERE id NOT IN ($1)",
    );
    differ(
        "SELECT * FROM users WHERE id NOT IN (1, 2, 3)",
        "SELECT * FROM users WHERE id IN (1, 2, 3)",
    );
    // Two lists in one statement collapse apart.
    same(
        "SELECT * FROM t WHERE a IN (1, 2) AND b IN (3)",
        "SELECT * FROM t WHERE a IN ($1) AND b IN ($2, $3, $4)",
    );
    differ(
        "SELECT * FROM t WHERE a IN (1, 2) AND b IN (3)",
        "SELECT * FROM t WHERE a IN (1, 2) OR b IN (3)",
    );
}

/// `= ANY(...)` of constants, in every spelling, is one slot; `= ANY($1)`
/// is never `= $1`.
#[test]
fn any_of_an_array_in_every_spelling() {
    let any = "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])";
    for sql in [
        "SELECT * FROM t WHERE id = ANY(ARRAY[1])",
        "SELECT * FROM t WHERE id = ANY(ARRAY[$1, $2])",
        "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2]::bigint[])",
        "SELECT * FROM t WHERE id = ANY(ARRAY[$1, $2, $3]::int[])",
        "SELECT * FROM t WHERE id = any(array[1,2,3])",
        "SELECT * FROM t WHERE id = ANY ( ARRAY [ 1 , 2 ] )",
    ] {
        same(any, sql);
    }
    for eq in [
        "SELECT * FROM t WHERE id = $1",
        "SELECT * FROM t WHERE id = 1",
    ] {
        for any in [
            "SELECT * FROM t WHERE id = ANY($1)",
            "SELECT * FROM t WHERE id = ANY($1::int[])",
            "SELECT * FROM t WHERE id = ANY('{1,2,3}')",
            "SELECT * FROM t WHERE id = ANY('{1,2,3}'::int[])",
            "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2])",
        ] {
            differ(eq, any);
        }
    }
    same(
        "SELECT * FROM t WHERE id = ANY('{1,2,3}'::int[])",
        "SELECT * FROM t WHERE id = ANY('{4}'::int[])",
    );
    same(
        "SELECT * FROM t WHERE id = ANY($1::int[])",
        "SELECT * FROM t WHERE id = ANY($2::INT[])",
    );
    // `<> ALL(...)`, `= SOME(...)` collapse like `ANY`.
    same(
        "SELECT * FROM t WHERE id <> ALL(ARRAY[1, 2, 3])",
        "SELECT * FROM t WHERE id <> ALL(ARRAY[4])",
    );
    same(
        "SELECT * FROM t WHERE id = SOME(ARRAY[1, 2, 3])",
        "SELECT * FROM t WHERE id = SOME(ARRAY[4])",
    );
}

/// Composite keys: rows of constants, of parameters, nested parentheses.
#[test]
fn tuples_and_nested_parentheses_in_lists() {
    let one_row = "SELECT * FROM m WHERE (a, b) IN (($1, $2))";
    for sql in [
        "SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM m WHERE (a,b) IN ((1,2),(3,4),(5,6))",
        "SELECT * FROM m WHERE (a, b) IN ((?, ?), (?, ?))",
        "SELECT * FROM m WHERE (a, b) IN (('x', -1))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2) /* first */, (3, 4))",
    ] {
        same(one_row, sql);
    }
    same(
        "SELECT * FROM m WHERE x IN (((1)), ((2)))",
        "SELECT * FROM m WHERE x IN (3)",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
        "SELECT * FROM m WHERE (a, b, c) IN ((1, 2, 3))",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
        "SELECT * FROM m WHERE (b, a) IN ((1, 2))",
    );
}

/// Quoted identifiers: embedded quotes, case, unicode, qualified names.
#[test]
fn quoted_and_qualified_identifiers() {
    same(
        "SELECT * FROM \"a\"\"b\" WHERE id = 1",
        "SELECT * FROM \"a\"\"b\" WHERE id = 2",
    );
    differ(
        "SELECT * FROM \"a\"\"b\" WHERE id = 1",
        "SELECT * FROM \"ab\" WHERE id = 1",
    );
    differ(
        "SELECT * FROM \"a\"\"b\" WHERE id = 1",
        "SELECT * FROM \"a\"\"B\" WHERE id = 1",
    );
    // Schema-qualified, quoted or not, two and three parts.
    let users = "SELECT * FROM \"Users\" WHERE id = 1";
    for sql in [
        "SELECT * FROM \"public\".\"Users\" WHERE id = 1",
        "SELECT * FROM public.\"Users\" WHERE id = 1",
        "SELECT * FROM PUBLIC.\"Users\" WHERE id = 1",
        "SELECT * FROM app.\"Users\" WHERE id = 1",
        "SELECT * FROM mydb.public.\"Users\" WHERE id = 1",
    ] {
        same(users, sql);
    }
    differ(users, "SELECT * FROM public.users WHERE id = 1");
    // Qualified column references, quoted as ORMs quote them.
    let lower = "SELECT users.id FROM users WHERE users.id = $1";
    for sql in [
        "SELECT \"users\".\"id\" FROM \"users\" WHERE \"users\".\"id\" = $1",
        "SELECT \"users\".\"id\" FROM \"public\".\"users\" WHERE \"users\".\"id\" = $1",
        "SELECT public.users.id FROM public.users WHERE public.users.id = $1",
        "SELECT \"public\".\"users\".\"id\" FROM \"public\".\"users\" WHERE \"public\".\"users\".\"id\" = $1",
        "SELECT Users.ID FROM USERS WHERE users.Id = ?",
    ] {
        same(lower, sql);
    }
    // Prisma quotes a mixed-case model name: it stays case-sensitive.
    same(
        "SELECT \"public\".\"User\".\"id\" FROM \"public\".\"User\" WHERE \"public\".\"User\".\"id\" = $1",
        "SELECT \"User\".\"id\" FROM \"User\" WHERE \"User\".\"id\" = $2",
    );
    differ(
        "SELECT \"User\".\"id\" FROM \"User\" WHERE \"User\".\"id\" = $1",
        "SELECT users.id FROM users WHERE users.id = $1",
    );
    // Unicode identifiers: only ASCII folds.
    same(
        "SELECT * FROM ünïcødé WHERE id = 1",
        "SELECT * FROM \"ünïcødé\" WHERE id = 2",
    );
    differ("SELECT * FROM Ärger", "SELECT * FROM ärger");
    same("SELECT * FROM \"Ärger\"", "SELECT * FROM Ärger");
    same("SELECT * FROM ÄRGER", "SELECT * FROM \"Ärger\"");
}

/// Aliases, with and without `AS`, quoted or not, in every clause that
/// names relations.
#[test]
fn aliases_in_every_clause_that_names_relations() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT u.id FROM users u WHERE u.id = 1",
            "SELECT \"x\".id FROM users AS \"x\" WHERE \"x\".id = 2",
        ),
        (
            "SELECT U.id FROM users U WHERE U.id = 1",
            "SELECT v.id FROM users v WHERE v.id = 1",
        ),
        // Hibernate 5 and 6, Django's subquery aliases.
        (
            "select user0_.id as id1_0_ from users user0_ where user0_.id=?",
            "select u1_0.id as id1_0_ from users u1_0 where u1_0.id=?",
        ),
        (
            "SELECT \"app_user\".\"id\" FROM \"app_user\" WHERE \"app_user\".\"id\" IN (SELECT U0.\"user_id\" FROM \"app_membership\" U0 WHERE U0.\"team_id\" = %s)",
            "SELECT app_user.id FROM app_user WHERE app_user.id IN (SELECT m.user_id FROM app_membership AS m WHERE m.team_id = $1)",
        ),
        // UPDATE ... FROM, DELETE ... USING.
        (
            "UPDATE accounts a SET balance = a.balance + t.amount FROM transfers t WHERE t.account_id = a.id AND t.id = $1",
            "UPDATE accounts AS x SET balance = x.balance + y.amount FROM transfers AS y WHERE y.account_id = x.id AND y.id = $1",
        ),
        (
            "DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.email = $1",
            "DELETE FROM sessions AS a USING users AS b WHERE a.user_id = b.id AND b.email = $1",
        ),
        // INSERT ... SELECT, upsert with an aliased target.
        (
            "INSERT INTO archive (id, body) SELECT p.id, p.body FROM posts p WHERE p.id = $1",
            "INSERT INTO archive (id, body) SELECT q.id, q.body FROM posts q WHERE q.id = 9",
        ),
        (
            "INSERT INTO archive AS a (id, body) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body WHERE a.body IS DISTINCT FROM EXCLUDED.body RETURNING a.id",
            "INSERT INTO archive AS b (id, body) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET body = excluded.body WHERE b.body IS DISTINCT FROM excluded.body RETURNING b.id",
        ),
        // MERGE.
        (
            "MERGE INTO customers c USING staging s ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
            "MERGE INTO customers x USING staging y ON x.id = y.id WHEN MATCHED THEN UPDATE SET name = y.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (y.id, y.name)",
        ),
        // CTEs, subqueries, LATERAL.
        (
            "WITH recent AS (SELECT * FROM orders o WHERE o.created_at > $1) SELECT r.id FROM recent r WHERE r.user_id = $2",
            "WITH recent AS (SELECT * FROM orders x WHERE x.created_at > $1) SELECT y.id FROM recent y WHERE y.user_id = $2",
        ),
        (
            "SELECT u.id, p.title FROM users u CROSS JOIN LATERAL (SELECT * FROM posts p2 WHERE p2.user_id = u.id LIMIT 3) AS p",
            "SELECT v.id, p.title FROM users v CROSS JOIN LATERAL (SELECT * FROM posts q WHERE q.user_id = v.id LIMIT 3) AS p",
        ),
        (
            "SELECT * FROM users u JOIN teams t USING (team_id) WHERE u.id = 1",
            "SELECT * FROM users a JOIN teams b USING (team_id) WHERE a.id = 1",
        ),
        (
            "SELECT * FROM ONLY users u WHERE u.id = 1",
            "SELECT * FROM ONLY users v WHERE v.id = 1",
        ),
    ];
    for (a, b) in cases {
        same(a, b);
    }
    differ(
        "UPDATE accounts a SET balance = a.balance + t.amount FROM transfers t WHERE t.account_id = a.id AND t.id = $1",
        "UPDATE accounts a SET balance = a.balance + t.amount FROM ledger t WHERE t.account_id = a.id AND t.id = $1",
    );
    differ(
        "DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.email = $1",
        "DELETE FROM sessions s USING admins u WHERE s.user_id = u.id AND u.email = $1",
    );
    differ(
        "SELECT s.n FROM (SELECT id AS n FROM users u WHERE u.team_id = 1) s",
        "SELECT s.n FROM (SELECT id AS n FROM teams u WHERE u.team_id = 1) s",
    );
}

/// An alias is visible in the query that declares it (and the subqueries
/// inside that one): the same alias name declared again in another query of
/// the statement stands for that query's relation. A reference must be
/// rewritten to the relation its own query declares, or the alias's name
/// would decide the shape.
#[test]
fn regression_an_alias_stands_for_the_relation_of_its_own_query() {
    // `u` inside the subquery is `teams`, not the outer `users`.
    same(
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM teams u WHERE u.id = 1)",
        "SELECT * FROM users a WHERE EXISTS (SELECT 1 FROM teams b WHERE b.id = 1)",
    );
    differ(
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM teams u WHERE u.id = 1)",
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM teams t WHERE u.id = 1)",
    );
    // Two CTEs that both alias their relation `t`.
    same(
        "WITH a AS (SELECT t.id FROM orders t WHERE t.x = 1), b AS (SELECT t.id FROM users t WHERE t.y = 2) SELECT * FROM a, b",
        "WITH a AS (SELECT o.id FROM orders o WHERE o.x = 1), b AS (SELECT u.id FROM users u WHERE u.y = 2) SELECT * FROM a, b",
    );
    // The two sides of a UNION.
    same(
        "SELECT t.id FROM users t WHERE t.id = 1 UNION ALL SELECT t.id FROM admins t WHERE t.id = 2",
        "SELECT u.id FROM users u WHERE u.id = 1 UNION ALL SELECT a.id FROM admins a WHERE a.id = 2",
    );
    normalized(
        "SELECT t.id FROM users t UNION SELECT t.id FROM admins t",
        "select users.id from users union select admins.id from admins",
    );
    // A correlated subquery still sees the outer alias; a parenthesized
    // join's aliases are the enclosing query's.
    same(
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM posts p WHERE p.user_id = u.id)",
        "SELECT * FROM users x WHERE EXISTS (SELECT 1 FROM posts y WHERE y.user_id = x.id)",
    );
    normalized(
        "SELECT u.id, p.id FROM (users u JOIN posts p ON p.user_id = u.id) WHERE u.id = 1",
        "select users.id, posts.id from (users join posts on posts.user_id = users.id) where users.id = ?",
    );
}

/// A bare alias names its relation's row (`row_to_json(u)`, `SELECT u`) or
/// the relation to lock (`FOR UPDATE OF u`, as Hibernate writes it): it is
/// the relation there too, whatever the alias is called.
#[test]
fn regression_a_bare_alias_is_its_relation() {
    same(
        "SELECT * FROM users u WHERE u.id = $1 FOR UPDATE OF u",
        "SELECT * FROM users x WHERE x.id = $1 FOR UPDATE OF x",
    );
    same(
        "select u1_0.id from users u1_0 where u1_0.id=? for no key update of u1_0",
        "select u2_0.id from users u2_0 where u2_0.id=? for no key update of u2_0",
    );
    same(
        "SELECT row_to_json(t) FROM users t WHERE t.id = 1",
        "SELECT row_to_json(u) FROM users u WHERE u.id = 2",
    );
    same(
        "SELECT json_agg(p ORDER BY p.created_at) FROM posts AS p WHERE p.user_id = $1",
        "SELECT json_agg(x ORDER BY x.created_at) FROM posts AS x WHERE x.user_id = $1",
    );
    differ(
        "SELECT row_to_json(t) FROM users t WHERE t.id = 1",
        "SELECT row_to_json(t) FROM teams t WHERE t.id = 1",
    );
    differ(
        "SELECT * FROM users u JOIN teams t ON t.id = u.team_id FOR UPDATE OF u",
        "SELECT * FROM users u JOIN teams t ON t.id = u.team_id FOR UPDATE OF t",
    );
    // A column alias or a function of the same name is no relation.
    normalized(
        "SELECT count(*) AS u FROM users u",
        "select count(*) as u from users",
    );
    normalized(
        "SELECT p.id, p FROM posts p",
        "select posts.id, posts from posts",
    );
}

/// Comments: nested, inside lists, at the end without a newline,
/// sqlcommenter tags at either end.
#[test]
fn comments_everywhere() {
    let plain = "SELECT * FROM users WHERE id = 1";
    for sql in [
        "SELECT * FROM users /* a /* nested */ comment */ WHERE id = 1",
        "SELECT * FROM users /* a /* b /* c */ */ */ WHERE id = 1",
        "SELECT * FROM users WHERE id = 1 -- no newline at the end",
        "SELECT * FROM users WHERE id = 1 --",
        "-- leading\nSELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id = 1 /*application:Blog,controller:users,action:show*/",
        "/*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/ SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id = 1 /*db_driver='psycopg2',framework='django%3A4.2',route='%5Eusers%2F'*/;",
        "SELECT * FROM users WHERE id = 1; -- done",
        "SELECT * FROM users WHERE id = 1 ; /* x */",
        "SELECT/**/*/**/FROM/**/users/**/WHERE/**/id/**/=/**/1",
        "SELECT * FROM users WHERE id =/* glued */1",
        "SELECT * FROM users WHERE id = 1 --comment\n",
        "SELECT * FROM users WHERE id = 1\r\n-- windows line end\r\n",
    ] {
        same(plain, sql);
    }
    // A comment starts nothing inside a string or a quoted identifier.
    differ(
        "SELECT * FROM users WHERE \"weird--col\" = 1",
        "SELECT * FROM users WHERE \"weird\" = 1",
    );
    // An unclosed nested comment runs to the end.
    same(
        "SELECT * FROM users /* a /* b */ WHERE id = 1",
        "SELECT * FROM users",
    );
}

/// Statements of psql scripts and drivers' session set-up: every one has a
/// fingerprint, utility statements included, and their values don't matter.
#[test]
fn utility_statements_of_scripts_and_drivers() {
    for (a, b) in [
        (
            "SET statement_timeout TO 5000",
            "SET statement_timeout TO '5s'",
        ),
        ("SET TIME ZONE 'UTC'", "SET TIME ZONE $1"),
        ("SET search_path = $1", "SET search_path = 'app'"),
        (
            "SET LOCAL app.user_id = '42'",
            "set local app.user_id = '7'",
        ),
        ("NOTIFY jobs, 'payload 1'", "NOTIFY jobs, 'payload 2'"),
        ("EXECUTE q1(1)", "EXECUTE q1(2)"),
        ("CALL process_order(42)", "CALL process_order(43)"),
        (
            "DO $$ BEGIN PERFORM 1; END $$",
            "DO $body$ BEGIN PERFORM 2; END $body$",
        ),
        (
            "ALTER TABLE users ADD COLUMN age integer DEFAULT 0",
            "ALTER TABLE users ADD COLUMN age integer DEFAULT 18",
        ),
    ] {
        same(a, b);
        assert_eq!(fingerprint(a).kind(), StatementKind::Utility, "{a}");
    }
    for sql in [
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "COMMIT AND CHAIN",
        "ROLLBACK",
        "END",
        "ABORT",
        "DISCARD ALL",
        "RESET ALL",
        "LISTEN channel_1",
        "UNLISTEN *",
        "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
        "VACUUM (VERBOSE, ANALYZE) users",
        "CREATE INDEX CONCURRENTLY idx ON users (lower(email))",
        "COPY users (id, name) FROM STDIN WITH (FORMAT binary)",
        "\\copy users to 'x.csv'",
        "SHOW server_version",
        "DEALLOCATE ALL",
        "CHECKPOINT",
    ] {
        let f = fingerprint(sql);
        assert_eq!(f.kind(), StatementKind::Utility, "{sql}");
        assert!(!f.normalized().is_empty(), "{sql}");
    }
    differ("SET TIME ZONE 'UTC'", "SET search_path = 'UTC'");
    differ("LISTEN a", "LISTEN b");
}

/// Statement kinds, through `WITH` and parentheses.
#[test]
fn kinds_of_real_statements() {
    for (sql, kind) in [
        (
            "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 100) SELECT sum(n) FROM t",
            StatementKind::Select,
        ),
        (
            "WITH moved AS (DELETE FROM queue WHERE id = $1 RETURNING *) INSERT INTO done SELECT * FROM moved",
            StatementKind::Insert,
        ),
        (
            "WITH x AS MATERIALIZED (SELECT 1) UPDATE t SET a = 1 FROM x",
            StatementKind::Update,
        ),
        (
            "MERGE INTO customers c USING staging s ON c.id = s.id WHEN MATCHED THEN DELETE",
            StatementKind::Merge,
        ),
        ("((SELECT 1) UNION (SELECT 2))", StatementKind::Select),
        ("TABLE users", StatementKind::Select),
        ("VALUES (1, 2), (3, 4)", StatementKind::Select),
        (
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM users",
            StatementKind::Utility,
        ),
    ] {
        assert_eq!(fingerprint(sql).kind(), kind, "{sql}");
    }
    assert_eq!(
        fingerprint("WITH moved AS (DELETE FROM queue WHERE id = $1 RETURNING *) INSERT INTO done SELECT * FROM moved").tables(),
        ["queue", "done", "moved"]
    );
}

/// Shapes of the ORMs' statements, as their logs print them, equal the
/// same statement written by hand.
#[test]
fn orm_statements_equal_their_hand_written_form() {
    for (orm, hand) in [
        // Diesel, SeaORM, ActiveRecord.
        (
            "SELECT \"users\".\"id\", \"users\".\"name\" FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
            "select users.id, users.name from users where users.id = 7 limit 1",
        ),
        (
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2 /*application:Blog,controller:users,action:show*/",
            "SELECT users.* FROM users WHERE users.id = 3 LIMIT 1",
        ),
        (
            "INSERT INTO \"users\" (\"name\", \"created_at\", \"updated_at\") VALUES ($1, $2, $3) RETURNING \"id\"",
            "insert into users (name, created_at, updated_at) values ('a', '2024-01-01', '2024-01-01') returning id",
        ),
        // Django (psycopg), with its `LIMIT 21`.
        (
            "SELECT \"app_user\".\"id\", \"app_user\".\"email\" FROM \"app_user\" WHERE \"app_user\".\"id\" = %s LIMIT 21",
            "SELECT app_user.id, app_user.email FROM app_user WHERE app_user.id = 5 LIMIT 21",
        ),
        (
            "SELECT \"app_post\".\"id\" FROM \"app_post\" INNER JOIN \"app_user\" ON (\"app_post\".\"author_id\" = \"app_user\".\"id\") WHERE \"app_user\".\"email\" = %s",
            "SELECT app_post.id FROM app_post INNER JOIN app_user ON (app_post.author_id = app_user.id) WHERE app_user.email = 'a@b'",
        ),
        // Hibernate 6.
        (
            "select u1_0.id,u1_0.name,t1_0.id,t1_0.name from users u1_0 left join teams t1_0 on t1_0.id=u1_0.team_id where u1_0.id=?",
            "SELECT users.id, users.name, teams.id, teams.name FROM users LEFT JOIN teams ON teams.id = users.team_id WHERE users.id = 1",
        ),
        // Prisma.
        (
            "SELECT \"public\".\"User\".\"id\", \"public\".\"User\".\"email\" FROM \"public\".\"User\" WHERE (\"public\".\"User\".\"id\" = $1 AND 1=1) LIMIT $2 OFFSET $3",
            "SELECT \"User\".id, \"User\".email FROM \"User\" WHERE (\"User\".id = 4 AND 1 = 1) LIMIT 1 OFFSET 0",
        ),
        // pg_stat_statements.
        (
            "SELECT * FROM users WHERE id = $1 AND status IN ($2 /*, ... */)",
            "SELECT * FROM users WHERE id = 1 AND status IN ('a', 'b')",
        ),
    ] {
        same(orm, hand);
    }
}

/// Whatever the corpus, `fingerprint` returns: cut every statement of this
/// file's corpus at every byte, and it never panics.
#[test]
fn every_prefix_of_the_corpus_has_a_fingerprint() {
    let corpus = [
        "SELECT * FROM t WHERE a = E'it\\'s' AND b = U&'d\\0061t' UESCAPE '!'",
        "SELECT * FROM t WHERE a = $fn$ body $x$ inner $x$ $fn$ AND b = B'01' AND c = X'ff'",
        "SELECT * FROM t WHERE a = 0x_FF AND b = 1_000 AND c = .5e-3 AND d = 5.",
        "SELECT * FROM \"a\"\"b\" \"c\"\"d\" WHERE \"c\"\"d\".id IN (1, (2), ((3)))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4)) AND c = ANY('{1,2}'::int[])",
        "WITH a AS (SELECT t.id FROM orders t) SELECT t.id FROM a JOIN users t ON t.id = a.id FOR UPDATE OF t",
        "SELECT * FROM users /* a /* b */ c */ WHERE id = 1 -- x",
        "MERGE INTO c USING (SELECT $1 AS id) s ON c.id = s.id WHEN MATCHED THEN UPDATE SET n = s.n",
        "INSERT INTO a AS x (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = x.n + 1 RETURNING x.id",
        "SELECT ünï.ç FROM ünï WHERE ç = 'é'",
        "SELECT e.x FROM employees e JOIN (employees m JOIN employees) ON m.id = e.mid WHERE EXISTS (SELECT 1 FROM employees k WHERE k.id = m.id) UNION SELECT e.x FROM employees e",
        "SELECT * FROM m WHERE (a, b) IN (ROW(1, 2), ROW($1, (3)))",
    ];
    for sql in corpus {
        for end in (0..=sql.len()).filter(|&e| sql.is_char_boundary(e)) {
            let f = fingerprint(&sql[..end]);
            let _ = (f.hash(), f.normalized(), f.kind(), f.tables());
        }
    }
}

/// The other half of the bare-alias rule: a name an assignment or an
/// insert writes is a column, even when an alias is spelled the same.
#[test]
fn a_column_named_like_an_alias_in_an_assignment_stays_a_column() {
    normalized(
        "UPDATE users a SET a = 1 WHERE a.id = 2",
        "update users set a = ? where users.id = ?",
    );
    normalized(
        "INSERT INTO logs AS l (a, b) VALUES (1, 2) ON CONFLICT (a) DO UPDATE SET l = l.l + 1",
        "insert into logs(a, b) values (?, ?) on conflict (a) do update set l = logs.l + ?",
    );
}

/// `ROW(1, 2)` is the row `(1, 2)`: a list of explicit row constructors of
/// constants is one row of slots, whatever its length, like a list of
/// parenthesized rows ("an `IN (...)` list of any length collapses").
#[test]
fn regression_a_list_of_row_constructors_collapses_like_a_list_of_rows() {
    let rows = "SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4))";
    for sql in [
        "SELECT * FROM m WHERE (a, b) IN (ROW(1, 2), ROW(3, 4))",
        "SELECT * FROM m WHERE (a, b) IN (ROW(1, 2))",
        "SELECT * FROM m WHERE (a, b) IN (row($1, $2), (3, 4), ROW(5, 6))",
    ] {
        same(rows, sql);
    }
    same(
        "SELECT * FROM m WHERE (a, b) = ANY(ARRAY[ROW(1, 2), ROW(3, 4)])",
        "SELECT * FROM m WHERE (a, b) = ANY(ARRAY[ROW(5, 6)])",
    );
    // A row constructor holding a column keeps its shape.
    differ(
        "SELECT * FROM m WHERE (a, b) IN (ROW(1, x), ROW(3, 4))",
        "SELECT * FROM m WHERE (a, b) IN (ROW(1, x))",
    );
}

/// A self-join names one relation twice: the relation alone cannot say
/// which use a column belongs to, so `e.id = m.manager_id` (an employee's
/// reports) and `m.id = e.manager_id` (an employee's manager) were one
/// shape, and Django's `T3."name" = %s` (filter on the joined manager) was
/// `"app_employee"."name" = %s` (filter on the employee). Only alias names
/// may not matter: the second use of a relation in view is
/// `relation#2`, whatever its alias is called.
#[test]
fn regression_the_two_uses_of_a_relation_in_a_self_join_stay_apart() {
    let reports =
        "SELECT e.name FROM employees e JOIN employees m ON e.id = m.manager_id WHERE e.id = 1";
    let manager =
        "SELECT e.name FROM employees e JOIN employees m ON m.id = e.manager_id WHERE e.id = 1";
    differ(reports, manager);
    same(
        reports,
        "SELECT a.name FROM employees a JOIN employees b ON a.id = b.manager_id WHERE a.id = 2",
    );
    normalized(
        manager,
        "select employees.name from employees join employees on employees#2.id = employees.manager_id where employees.id = ?",
    );
    // Django: the first use unaliased, the second `T3`.
    differ(
        "SELECT \"app_employee\".\"id\" FROM \"app_employee\" INNER JOIN \"app_employee\" T3 ON (\"app_employee\".\"manager_id\" = T3.\"id\") WHERE T3.\"name\" = %s",
        "SELECT \"app_employee\".\"id\" FROM \"app_employee\" INNER JOIN \"app_employee\" T3 ON (\"app_employee\".\"manager_id\" = T3.\"id\") WHERE \"app_employee\".\"name\" = %s",
    );
    same(
        "SELECT \"app_employee\".\"id\" FROM \"app_employee\" INNER JOIN \"app_employee\" T3 ON (\"app_employee\".\"manager_id\" = T3.\"id\") WHERE T3.\"name\" = %s",
        "SELECT app_employee.id FROM app_employee INNER JOIN app_employee T4 ON (app_employee.manager_id = T4.id) WHERE T4.name = 'x'",
    );
    // A correlated subquery over the same relation.
    differ(
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM users v WHERE v.manager_id = u.id)",
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM users v WHERE v.id = u.manager_id)",
    );
    // Two CTEs over one relation see one use each: no numbering.
    normalized(
        "WITH a AS (SELECT t.x FROM orders t), b AS (SELECT t.y FROM orders t) SELECT * FROM a, b",
        "with a as (select orders.x from orders), b as (select orders.y from orders) select * from a, b",
    );
}

/// ORDER BY and GROUP BY may name an output column: a bare name there is
/// left as written even when an alias is spelled the same, so the alias's
/// name does not change the shape.
#[test]
fn a_name_in_order_by_or_group_by_is_left_as_written() {
    same(
        "SELECT count(*) AS c FROM comments c GROUP BY c.post_id ORDER BY c DESC",
        "SELECT count(*) AS c FROM comments x GROUP BY x.post_id ORDER BY c DESC",
    );
    same(
        "SELECT p.kind AS p, count(*) FROM posts p GROUP BY p",
        "SELECT x.kind AS p, count(*) FROM posts x GROUP BY p",
    );
    // A lock after the ORDER BY names its relation again.
    same(
        "SELECT * FROM users u ORDER BY u.id FOR SHARE OF u",
        "SELECT * FROM users x ORDER BY x.id FOR SHARE OF x",
    );
}
