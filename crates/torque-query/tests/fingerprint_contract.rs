//! The fingerprint rules of the query contract (docs/query.md), one test each.

use torque_query::{StatementKind, fingerprint};

#[path = "common/shapes.rs"]
mod shapes;
use shapes::{differ, same};

#[test]
fn literals_and_bind_parameters_are_one_placeholder() {
    same(
        "SELECT * FROM users WHERE id = 42",
        "SELECT * FROM users WHERE id = '19'",
    );
    same(
        "SELECT * FROM users WHERE id = 42",
        "SELECT * FROM users WHERE id = $1",
    );
    same(
        "SELECT * FROM users WHERE id = -42",
        "SELECT * FROM users WHERE id = 7",
    );
    same(
        "SELECT * FROM t WHERE a = 1.5e3 AND b = E'x\\'y'",
        "SELECT * FROM t WHERE a = $1 AND b = $2",
    );
    same(
        "SELECT * FROM t WHERE d = $tag$x$tag$",
        "SELECT * FROM t WHERE d = 'x'",
    );
    same(
        "SELECT * FROM t WHERE flag = true",
        "SELECT * FROM t WHERE flag = false",
    );
    same(
        "SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id = 1",
    );
    assert_eq!(
        fingerprint("SELECT name FROM users WHERE id = 42").normalized(),
        "select name from users where id = ?"
    );
}

#[test]
fn arithmetic_minus_is_not_folded_into_a_literal() {
    differ("SELECT a - 1 FROM t", "SELECT a FROM t");
    same("SELECT a - 1 FROM t", "SELECT a - 2 FROM t");
}

#[test]
fn in_lists_of_any_length_collapse_to_one_slot() {
    same(
        "SELECT * FROM users WHERE id IN (1)",
        "SELECT * FROM users WHERE id IN (1, 2, 3, 4)",
    );
    same(
        "SELECT * FROM users WHERE id IN ($1, $2)",
        "SELECT * FROM users WHERE id IN ('a')",
    );
    same(
        "SELECT * FROM users WHERE id IN (1::int, 2::int)",
        "SELECT * FROM users WHERE id IN (3::int)",
    );
    assert_eq!(
        fingerprint("SELECT * FROM users WHERE id IN (1, 2, 3)").normalized(),
        "select * from users where id in (?)"
    );
    differ(
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM admins)",
        "SELECT * FROM users WHERE id IN (1, 2)",
    );
}

#[test]
fn in_lists_of_typed_literals_collapse_to_one_slot() {
    // A typed literal, a cast or `CAST(... AS type)` of a constant is a
    // constant (what PostgreSQL 18's pg_stat_statements squashes in a list):
    // a list of them is one slot, whatever its length, like `IN (1, 2, 3)`.
    let one = "SELECT * FROM t WHERE d IN ($1)";
    for sql in [
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01', DATE '2024-02-01')",
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (date '2024-01-01', Date '2024-02-01', DATE '2024-03-01')",
        "SELECT * FROM t WHERE d IN (pg_catalog.date '2024-01-01', pg_catalog.date '2024-02-01')",
        "SELECT * FROM t WHERE d IN (TIMESTAMP WITH TIME ZONE '2024-01-01', timestamptz '2024-02-01')",
        "SELECT * FROM t WHERE d IN (TIMESTAMP(3) '2024-01-01 00:00', TIMESTAMP(3) '2024-02-01')",
        "SELECT * FROM t WHERE d IN (INTERVAL '1 day', INTERVAL '2 days')",
        "SELECT * FROM t WHERE d IN (INTERVAL '1' DAY, INTERVAL '2' HOUR TO MINUTE)",
        "SELECT * FROM t WHERE d IN (INTERVAL '1' SECOND(3), INTERVAL(3) '2 s')",
        "SELECT * FROM t WHERE d IN ('a'::text, 'b'::text)",
        "SELECT * FROM t WHERE d IN ('a'::varchar(10), 'b'::varchar(10), 'c'::varchar(10))",
        "SELECT * FROM t WHERE d IN ('1.5'::numeric(10, 2), '2'::numeric(10, 2))",
        "SELECT * FROM t WHERE d IN ('a'::character varying, 'b'::character varying)",
        "SELECT * FROM t WHERE d IN ('2024-01-01'::timestamp with time zone, '2024-02-01'::timestamp with time zone)",
        "SELECT * FROM t WHERE d IN ('{1}'::int[], '{2, 3}'::int[])",
        "SELECT * FROM t WHERE d IN (CAST('a' AS text), CAST('b' AS text))",
        "SELECT * FROM t WHERE d IN (CAST($1 AS date), CAST($2 AS date), CAST($3 AS date))",
        "SELECT * FROM t WHERE d IN (CAST('1' AS numeric(10, 2)))",
        "SELECT * FROM t WHERE d IN (\"MyType\" 'x', \"MyType\" 'y')",
        "SELECT * FROM t WHERE d IN (-1, +2, (3), ((4)), -5::int)",
        "SELECT * FROM t WHERE d IN ($1::uuid, $2::uuid, '8c1b'::uuid)",
        "SELECT * FROM t WHERE d IN (1, DATE '2024-01-01', 'x'::text, CAST(2 AS int))",
    ] {
        same(one, sql);
    }
    assert_eq!(
        fingerprint("SELECT * FROM t WHERE d IN (DATE '2024-01-01', DATE '2024-02-01')")
            .normalized(),
        "select * from t where d in (?)"
    );
    same(
        "SELECT * FROM t WHERE d = ANY(ARRAY[DATE '2024-01-01', DATE '2024-02-01'])",
        "SELECT * FROM t WHERE d = ANY(ARRAY[DATE '2024-03-01'])",
    );
    same(
        "SELECT * FROM t WHERE d = ANY(ARRAY['a'::varchar(3), 'b'::varchar(3)])",
        "SELECT * FROM t WHERE d = ANY(ARRAY[$1])",
    );
    // Rows of typed literals are rows of constants.
    same(
        "SELECT * FROM m WHERE (a, d) IN ((1, DATE '2024-01-01'), (2, DATE '2024-02-01'))",
        "SELECT * FROM m WHERE (a, d) IN (($1, $2))",
    );
}

#[test]
fn lists_mixing_a_column_or_expression_with_literals_do_not_collapse() {
    let constants = "SELECT * FROM t WHERE d IN (DATE '2024-01-01', DATE '2024-02-01')";
    for sql in [
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01', x)",
        "SELECT * FROM t WHERE d IN (x, DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (x::date, DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (CAST(x AS date), DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01' + x)",
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01' + INTERVAL '1 day')",
        "SELECT * FROM t WHERE d IN (now(), DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (current_date, DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN (SELECT DATE '2024-01-01')",
        "SELECT * FROM t WHERE d IN ('a' || x, 'b')",
        "SELECT * FROM t WHERE d IN ((x), 'b')",
        "SELECT * FROM t WHERE d IN (NOT true, false)",
    ] {
        differ(constants, sql);
        let f = fingerprint(sql);
        assert!(
            !f.normalized().ends_with("in (?)"),
            "collapsed a list that is not all constants:\n  {sql}\n  -> {}",
            f.normalized()
        );
    }
    same(
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01', x)",
        "SELECT * FROM t WHERE d IN (DATE '2025-05-05', x)",
    );
    differ(
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01', x)",
        "SELECT * FROM t WHERE d IN (DATE '2024-01-01', DATE '2024-01-02', x)",
    );
}

/// A fresh-user review found `IN (1, NULL, 3)`, `IN (1, 2)` and `IN (NULL)`
/// were three shapes: `NULL` kept the list from collapsing. It is a literal
/// (PostgreSQL parses it to a constant, which pg_stat_statements squashes in
/// a list like any other), so it is one more element of a list of
/// constants, in `IN`, `ANY(ARRAY[...])`, `ARRAY[...]` and rows alike.
#[test]
fn regression_null_in_a_list_is_one_more_constant() {
    let one = "SELECT * FROM users WHERE id IN ($1)";
    for sql in [
        "SELECT * FROM users WHERE id IN (1, NULL, 3)",
        "SELECT * FROM users WHERE id IN (1, 2)",
        "SELECT * FROM users WHERE id IN (NULL)",
        "SELECT * FROM users WHERE id IN (null, Null)",
        "SELECT * FROM users WHERE id IN (NULL, $1)",
        "SELECT * FROM users WHERE id IN (NULL::int, 2)",
        "SELECT * FROM users WHERE id IN (CAST(NULL AS int), 2)",
        "SELECT * FROM users WHERE id IN ((NULL), 2)",
        "SELECT * FROM users WHERE id IN (DATE '2024-01-01', NULL)",
    ] {
        same(one, sql);
    }
    assert_eq!(
        fingerprint("SELECT * FROM users WHERE id IN (1, NULL, 3)").normalized(),
        "select * from users where id in (?)"
    );
    let any = "SELECT * FROM users WHERE id = ANY(ARRAY[1, 2])";
    same(any, "SELECT * FROM users WHERE id = ANY(ARRAY[NULL])");
    same(any, "SELECT * FROM users WHERE id = ANY(ARRAY[1, NULL, 3])");
    same(
        any,
        "SELECT * FROM users WHERE id = ANY(ARRAY[[1, NULL], [NULL, 4]])",
    );
    same("SELECT ARRAY[1, 2]", "SELECT ARRAY[NULL, 2, 3]");
    same(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
        "SELECT * FROM m WHERE (a, b) IN ((1, NULL), (NULL, 4))",
    );
}

/// The other half: `NULL` outside a list's elements keeps its meaning. A
/// null test is no literal (`x IS NULL` is not `x IS NOT NULL`, nor `x =
/// ?`), in a list too, and the `NULL` of an assignment or a VALUES row is
/// left as written.
#[test]
fn null_outside_a_lists_elements_keeps_its_meaning() {
    let is_null = "SELECT * FROM users WHERE deleted_at IS NULL";
    assert_eq!(
        fingerprint(is_null).normalized(),
        "select * from users where deleted_at is null"
    );
    differ(is_null, "SELECT * FROM users WHERE deleted_at IS NOT NULL");
    differ(is_null, "SELECT * FROM users WHERE deleted_at = 1");
    differ(
        "SELECT * FROM users WHERE id IN (1, 2) AND deleted_at IS NULL",
        "SELECT * FROM users WHERE id IN (1, 2) AND deleted_at IS NOT NULL",
    );
    // A null test as a list element is an expression: no collapse.
    assert_eq!(
        fingerprint("SELECT * FROM t WHERE b IN (x IS NULL, true)").normalized(),
        "select * from t where b in (x is null, ?)"
    );
    differ(
        "SELECT * FROM t WHERE b IN (NULL IS NULL)",
        "SELECT * FROM t WHERE b IN (1)",
    );
    assert_eq!(
        fingerprint("UPDATE t SET x = NULL WHERE id = 1").normalized(),
        "update t set x = null where id = ?"
    );
    assert_eq!(
        fingerprint("INSERT INTO t (a, b) VALUES (1, NULL)").normalized(),
        "insert into t(a, b) values (?, null)"
    );
    assert_eq!(
        fingerprint("SELECT coalesce(x, NULL) FROM t").normalized(),
        "select coalesce(x, null) from t"
    );
}

#[test]
fn nested_array_literals_collapse_like_flat_ones() {
    let flat = "SELECT * FROM t WHERE v = ANY(ARRAY[1, 2, 3])";
    for sql in [
        "SELECT * FROM t WHERE v = ANY(ARRAY[[1, 2], [3, 4]])",
        "SELECT * FROM t WHERE v = ANY(ARRAY[[1, 2], [3, 4], [5, 6]])",
        "SELECT * FROM t WHERE v = ANY(ARRAY[[[1]], [[2]]])",
        "SELECT * FROM t WHERE v = ANY(ARRAY[ARRAY[1, 2], ARRAY[3, 4]])",
        "SELECT * FROM t WHERE v = ANY(ARRAY[[DATE '2024-01-01'], ['2024-02-01'::date]])",
    ] {
        same(flat, sql);
    }
    same("SELECT ARRAY[[1, 2], [3, 4]]", "SELECT ARRAY[1, 2, 3]");
    assert_eq!(
        fingerprint("SELECT ARRAY[[1, 2], [3, 4]] FROM t").normalized(),
        "select ? from t"
    );
    // A column in a sub-array keeps the shape.
    differ("SELECT ARRAY[[1, x], [3, 4]]", "SELECT ARRAY[1, 2, 3]");
    differ(
        "SELECT ARRAY[[1, 2], [3, x]]",
        "SELECT ARRAY[[1, 2], [3, 4], [5, x]]",
    );
}

#[test]
fn in_lists_of_rows_collapse_to_one_row() {
    // Composite keys: a list of rows of constants is one row, whatever its
    // length, as a list of constants is one constant.
    same(
        "SELECT * FROM memberships WHERE (team_id, user_id) IN ((1, 2))",
        "SELECT * FROM memberships WHERE (team_id, user_id) IN ((3, -4), ($1, '5'::int), (6, 7))",
    );
    assert_eq!(
        fingerprint("SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4))").normalized(),
        "select * from m where (a, b) in ((?, ?))"
    );
    same(
        "SELECT * FROM m WHERE (a, b) = ANY(ARRAY[(1, 2), (3, 4)])",
        "SELECT * FROM m WHERE (a, b) = ANY(ARRAY[(5, 6)])",
    );
    // Rows of another arity, or rows that are not all constants, are
    // another shape.
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2, 3))",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2), (3, 4, 5))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, x), (3, y))",
        "SELECT * FROM m WHERE (a, b) IN ((1, x))",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1, 2), (SELECT 3, 4))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
    );
    // An expression in parentheses is no row: `(1 + 2)` is one value.
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1 + 2))",
        "SELECT * FROM m WHERE (a, b) IN ((1, 2))",
    );
    differ(
        "SELECT * FROM m WHERE (a, b) IN ((1 + 2))",
        "SELECT * FROM m WHERE (a, b) IN ((1 - 2))",
    );
    // Rows of one are plain values.
    same(
        "SELECT * FROM m WHERE x IN ((1), (2))",
        "SELECT * FROM m WHERE x IN (3, 4, 5)",
    );
}

#[test]
fn any_array_of_constants_collapses_and_any_param_differs_from_eq_param() {
    same(
        "SELECT * FROM users WHERE id = ANY(ARRAY[1, 2, 3])",
        "SELECT * FROM users WHERE id = ANY(ARRAY[4])",
    );
    differ(
        "SELECT * FROM users WHERE id = ANY($1)",
        "SELECT * FROM users WHERE id = $1",
    );
    differ(
        "SELECT * FROM users WHERE id = ANY(ARRAY[1, 2])",
        "SELECT * FROM users WHERE id = 1",
    );
}

#[test]
fn case_white_space_comments_and_trailing_semicolon_do_not_matter() {
    same(
        "SELECT id FROM users WHERE id = 1",
        "  select   ID\n\tfrom USERS   where id=1 ;",
    );
    same(
        "SELECT id FROM users WHERE id = 1",
        "/* controller='users',traceparent='00-abc-def-01' */ SELECT id FROM users WHERE id = 1 -- trailing",
    );
    same(
        "SELECT id FROM users WHERE id = 1",
        "SELECT id FROM users WHERE id = 1 /*action='show',db_driver='tokio-postgres'*/;",
    );
    same(
        "SELECT id FROM users",
        "SELECT id /* a /* nested */ comment */ FROM users;;",
    );
}

#[test]
fn unquoted_identifiers_fold_quoted_ones_keep_case() {
    differ("SELECT * FROM \"Users\"", "SELECT * FROM users");
    same("SELECT * FROM \"users\"", "SELECT * FROM users");
    same("SELECT * FROM \"users\"", "SELECT * FROM Users");
    differ("SELECT \"Name\" FROM users", "SELECT name FROM users");
}

#[test]
fn schema_qualifier_does_not_matter() {
    same(
        "SELECT * FROM public.products WHERE id = 1",
        "SELECT * FROM products WHERE id = 2",
    );
    same(
        "SELECT public.products.id FROM public.products",
        "SELECT products.id FROM products",
    );
    same(
        "INSERT INTO public.t (a) VALUES (1)",
        "INSERT INTO t (a) VALUES (2)",
    );
    same(
        "UPDATE shop.products SET a = 1 WHERE id = 2",
        "UPDATE products SET a = 3 WHERE id = 4",
    );
}

#[test]
fn relation_decides_never_its_alias() {
    differ(
        "SELECT t.id FROM users t WHERE t.id = 1",
        "SELECT t.id FROM teams t WHERE t.id = 1",
    );
    same(
        "SELECT t.id FROM users t WHERE t.id = 1",
        "SELECT u.id FROM users u WHERE u.id = 2",
    );
    same(
        "SELECT t.id FROM users AS t WHERE t.id = 1",
        "SELECT x.id FROM users x WHERE x.id = 2",
    );
    same(
        "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1",
        "SELECT a.id, b.name FROM orders a JOIN customers b ON b.id = a.customer_id WHERE a.id = 9",
    );
    differ(
        "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id",
        "SELECT o.id FROM orders o JOIN suppliers c ON c.id = o.customer_id",
    );
}

#[test]
fn savepoint_names_do_not_matter() {
    same("SAVEPOINT sp_1", "SAVEPOINT other");
    same("RELEASE SAVEPOINT sp_1", "RELEASE SAVEPOINT sp_2");
    same("RELEASE sp_1", "RELEASE sp_2");
    same("ROLLBACK TO SAVEPOINT a", "ROLLBACK TO SAVEPOINT b");
    // SAVEPOINT, WORK and TRANSACTION are optional there: the same statement.
    same("RELEASE SAVEPOINT sp_1", "release sp_2");
    same("ROLLBACK TO SAVEPOINT a", "ROLLBACK TRANSACTION TO b");
    same("ROLLBACK WORK TO SAVEPOINT a", "rollback to b");
    differ("SAVEPOINT a", "RELEASE SAVEPOINT a");
    differ("RELEASE SAVEPOINT a", "ROLLBACK TO SAVEPOINT a");
}

#[test]
fn every_statement_has_a_fingerprint_utility_included() {
    for sql in [
        "BEGIN",
        "COMMIT",
        "SET statement_timeout = 500",
        "SHOW work_mem",
        "",
        ";",
        "  ",
    ] {
        let f = fingerprint(sql);
        assert_eq!(f.kind(), StatementKind::Utility, "{sql:?}");
        let _ = f.hash();
    }
    differ("BEGIN", "COMMIT");
    same(
        "SET statement_timeout = 500",
        "set statement_timeout = 1000",
    );
}

#[test]
fn kinds_and_tables() {
    let f = fingerprint("WITH x AS (SELECT 1) INSERT INTO logs (a) SELECT * FROM x");
    assert_eq!(f.kind(), StatementKind::Insert);
    let f = fingerprint("SELECT * FROM a JOIN public.b ON a.id = b.a_id, c WHERE a.x = 1");
    assert_eq!(f.tables(), ["a", "b", "c"]);
    let f = fingerprint("SELECT 1");
    assert!(f.tables().is_empty());
    let f = fingerprint("SELECT now() IS DISTINCT FROM NULL");
    assert!(f.tables().is_empty());
    let f = fingerprint("SELECT * FROM generate_series(1, 10) g");
    assert!(f.tables().is_empty());
    assert_eq!(
        fingerprint("DELETE FROM t WHERE id = 1").kind(),
        StatementKind::Delete
    );
    assert_eq!(
        fingerprint("update t set a = 1").kind(),
        StatementKind::Update
    );
}

#[test]
fn hash_is_stable_across_runs() {
    // XXH3-64 (seed 0) of the normalized text: a stored fingerprint stays valid.
    let f = fingerprint("SELECT 1");
    assert_eq!(f.normalized(), "select ?");
    assert_eq!(f.hash(), xxhash_rust::xxh3::xxh3_64(b"select ?"));
    // Pinned: a change here breaks every stored fingerprint.
    assert_eq!(f.hash(), 0x61a0_463a_1c92_eb55);
}

#[test]
fn placeholders_glued_to_an_operator_are_placeholders() {
    // Hibernate 6 and other JDBC-style clients print `u1_0.id=?`.
    same(
        "select u1_0.id,u1_0.name from users u1_0 where u1_0.id=?",
        "SELECT u.id, u.name FROM users u WHERE u.id = 7",
    );
    same(
        "SELECT * FROM t WHERE a<>? AND b>=? AND c<? AND d!=?",
        "SELECT * FROM t WHERE a <> 1 AND b >= 2 AND c < 3 AND d != 4",
    );
    same(
        "UPDATE t SET n=n+? WHERE id=?",
        "UPDATE t SET n = n + 1 WHERE id = 2",
    );
    // Numbered JDBC/JPA placeholders.
    same(
        "SELECT * FROM t WHERE a = ?1",
        "SELECT * FROM t WHERE a = $1",
    );
    // jsonb operators that contain `?` stay operators.
    differ(
        "SELECT * FROM t WHERE doc ?| ARRAY['a']",
        "SELECT * FROM t WHERE doc | ARRAY['a']",
    );
    differ(
        "SELECT * FROM t WHERE doc @? '$.a'",
        "SELECT * FROM t WHERE doc @ '$.a'",
    );
    differ(
        "SELECT * FROM t WHERE doc ?& ARRAY['a']",
        "SELECT * FROM t WHERE doc ?| ARRAY['a']",
    );
}

#[test]
fn a_unary_plus_is_folded_like_a_unary_minus() {
    same(
        "SELECT * FROM t WHERE a = +1",
        "SELECT * FROM t WHERE a = 1",
    );
    same(
        "SELECT * FROM t WHERE a IN (+1, -2)",
        "SELECT * FROM t WHERE a IN (3)",
    );
    // A binary plus stays.
    differ("SELECT a + 1 FROM t", "SELECT a 1 FROM t");
}

#[test]
fn string_constants_continued_across_a_newline_are_one_literal() {
    // PostgreSQL concatenates string constants separated by white space
    // that holds a newline (SQL standard continuation).
    same(
        "SELECT * FROM t WHERE a = 'x'\n  'y'",
        "SELECT * FROM t WHERE a = 'z'",
    );
    same(
        "SELECT * FROM t WHERE a = E'x'\n'y' AND b = 1",
        "SELECT * FROM t WHERE a = $1 AND b = $2",
    );
}

#[test]
fn python_db_api_placeholders_are_placeholders() {
    // psycopg's `%s` and `%(name)s`, as Django and SQLAlchemy print them.
    same(
        "SELECT \"app_user\".\"id\" FROM \"app_user\" WHERE \"app_user\".\"id\" = %s",
        "SELECT app_user.id FROM app_user WHERE app_user.id = $1",
    );
    same(
        "SELECT users.id FROM users WHERE users.id = %(id_1)s::INTEGER",
        "SELECT users.id FROM users WHERE users.id = $1::integer",
    );
    same(
        "SELECT * FROM t WHERE a IN (%s, %s, %s)",
        "SELECT * FROM t WHERE a IN ($1)",
    );
    same(
        "INSERT INTO t (a, b) VALUES (%s, %(b)s)",
        "INSERT INTO t (a, b) VALUES ($1, $2)",
    );
    same(
        "UPDATE t SET a=%s WHERE id<>%s",
        "UPDATE t SET a = $1 WHERE id <> $2",
    );
    // The modulo operator stays an operator.
    same("SELECT a % 2 FROM t", "SELECT a % 3 FROM t");
    differ("SELECT a % 2 FROM t", "SELECT a 2 FROM t");
    differ("SELECT a % s FROM t", "SELECT a ? FROM t");
}

/// PostgreSQL ends no multi-character operator in `+` or `-` unless it
/// holds one of `~ ! @ # % ^ & | ` ?`: `a=-5` is `a = -5` to the server
/// (and `a*-1` is `a * -1`), so the spacing must not change the fingerprint.
#[test]
fn a_sign_glued_to_a_comparison_is_the_literals() {
    same("SELECT * FROM t WHERE a=-5", "SELECT * FROM t WHERE a = -5");
    same("SELECT * FROM t WHERE a=+5", "SELECT * FROM t WHERE a = 5");
    same(
        "SELECT * FROM t WHERE a<>-1",
        "SELECT * FROM t WHERE a <> 7",
    );
    same("UPDATE t SET a=a*-1", "UPDATE t SET a = a * -2");
    // Operators that may end in a sign keep it.
    differ("SELECT a @- b FROM t", "SELECT a @ - b FROM t");
}

#[test]
fn regression_a_list_after_the_from_list_is_no_relation_list() {
    // A comma in ORDER BY / GROUP BY / RETURNING after a FROM list at the same
    // depth was read as the FROM list's: the next word became a table, the
    // word after it its alias (dropped), a qualifier a schema (dropped).
    differ(
        "SELECT * FROM t WHERE a = 1 ORDER BY a, id DESC",
        "SELECT * FROM t WHERE a = 1 ORDER BY a, id ASC",
    );
    differ(
        "SELECT p.* FROM posts p JOIN users u ON u.id = p.user_id ORDER BY p.created_at, u.id",
        "SELECT p.* FROM posts p JOIN users u ON u.id = p.user_id ORDER BY p.created_at, p.id",
    );
    let f = fingerprint("SELECT a, count(*) FROM t WHERE x = 1 GROUP BY a, b ORDER BY a, b DESC");
    assert_eq!(f.tables(), ["t"]);
    assert_eq!(
        f.normalized(),
        "select a, count(*) from t where x = ? group by a, b order by a, b desc"
    );
    let f = fingerprint("DELETE FROM t WHERE id = 1 RETURNING id, created_at AS c");
    assert_eq!(f.tables(), ["t"]);
    assert_eq!(
        f.normalized(),
        "delete from t where id = ? returning id, created_at as c"
    );
    // The FROM list itself, and one after a subquery in it, still are.
    let f = fingerprint("SELECT * FROM a x, (SELECT * FROM c) s, b y WHERE x.id = y.id");
    assert_eq!(f.tables(), ["a", "c", "b"]);
    assert_eq!(
        f.normalized(),
        "select * from a, (select * from c) s, b where a.id = b.id"
    );
}

#[test]
fn regression_for_no_key_update_locks_no_relation() {
    // `FOR NO KEY UPDATE SKIP LOCKED` (Rails' lock("FOR NO KEY UPDATE"),
    // Diesel's for_no_key_update) named a table `skip` aliased `locked`.
    let f = fingerprint("SELECT * FROM jobs WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED");
    assert_eq!(f.tables(), ["jobs"]);
    assert_eq!(
        f.normalized(),
        "select * from jobs where id = ? for no key update skip locked"
    );
    differ(
        "SELECT * FROM jobs WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED",
        "SELECT * FROM jobs WHERE id = 1 FOR NO KEY UPDATE SKIP",
    );
    assert_eq!(
        fingerprint("SELECT * FROM jobs j WHERE j.id = 1 FOR NO KEY UPDATE OF j NOWAIT").tables(),
        ["jobs"]
    );
}

#[test]
fn regression_an_upserts_set_list_after_an_insert_select_is_no_relation_list() {
    // INSERT ... SELECT ... FROM s ON CONFLICT ... DO UPDATE SET a = .., b = ..
    // (an upsert from a staging table): the FROM list went on into the SET
    // list, so `b` was read as a table.
    let sql = "INSERT INTO t (a, x, y) SELECT a, x, y FROM s \
               ON CONFLICT (a) DO UPDATE SET x = excluded.x, y = excluded.y";
    let f = fingerprint(sql);
    assert_eq!(f.tables(), ["t", "s"]);
    assert_eq!(
        f.normalized(),
        "insert into t(a, x, y) select a, x, y from s \
         on conflict (a) do update set x = excluded.x, y = excluded.y"
    );
    differ(
        sql,
        "INSERT INTO t (a, x, y) SELECT a, x, y FROM s \
         ON CONFLICT (a) DO UPDATE SET x = excluded.x, y = excluded.x",
    );
    // A join's condition still goes on to the next relation of the list.
    let f = fingerprint("SELECT * FROM a JOIN b ON a.id = b.id, c WHERE c.x = 1");
    assert_eq!(f.tables(), ["a", "b", "c"]);
}

#[test]
fn regression_a_quoted_name_an_unquoted_one_could_spell_is_that_name() {
    // PostgreSQL folds only ASCII letters (UTF-8 server encoding): `"café"`
    // is `café`, `"a$b"` is `a$b`, `"t2"` is `t2`; `"CAFÉ"` stays distinct
    // from `CAFÉ` (which folds to `cafÉ`), and `"cafÉ"` equals it.
    same(
        "SELECT * FROM \"café\" WHERE id = 1",
        "SELECT * FROM café WHERE id = 2",
    );
    same(
        "SELECT * FROM \"a$b\" WHERE id = 1",
        "SELECT * FROM a$b WHERE id = 2",
    );
    same("SELECT \"straße\" FROM t", "SELECT STRAßE FROM t");
    same("SELECT * FROM \"cafÉ\"", "SELECT * FROM CAFÉ");
    differ("SELECT * FROM \"CAFÉ\"", "SELECT * FROM CAFÉ");
    differ("SELECT * FROM \"$ab\"", "SELECT * FROM ab");
    differ("SELECT * FROM \"1ab\"", "SELECT * FROM ab");
}
