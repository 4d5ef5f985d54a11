//! Properties of `fingerprint` over generated input: it never panics, and the
//! contract's invariances hold for generated statements.

use proptest::prelude::*;
use torque_query::fingerprint;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(sql in any::<String>()) {
        let f = fingerprint(&sql);
        let _ = (f.hash(), f.normalized(), f.kind(), f.tables());
    }

    #[test]
    fn never_panics_on_sql_like_soup(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("SELECT"), Just("FROM"), Just("WHERE"), Just("IN"), Just("("), Just(")"),
                Just("'"), Just("\""), Just("$"), Just("$$"), Just("$1"), Just("--"), Just("/*"),
                Just("*/"), Just("::"), Just(":"), Just("."), Just(","), Just(";"), Just("ANY"),
                Just("ARRAY"), Just("["), Just("]"), Just("-"), Just("1e"), Just("E'\\"),
                Just("é"), Just("t"), Just("AS"), Just("JOIN"), Just("="), Just("?"), Just("\n"),
                Just("SAVEPOINT"), Just("VALUES"), Just("LIMIT"), Just("BETWEEN"),
            ],
            0..40,
        ),
        sep in prop_oneof![Just(""), Just(" ")],
    ) {
        let sql = parts.join(sep);
        let _ = fingerprint(&sql);
    }

    #[test]
    fn values_and_list_lengths_do_not_change_the_shape(
        id in any::<i64>(),
        name in "[a-zA-Z0-9 ']{0,20}",
        list in proptest::collection::vec(any::<i32>(), 1..20),
        alias in "[a-z]{1,8}",
    ) {
        // A prefix keeps generated aliases clear of reserved words (`do`, `on`).
        let alias = format!("a_{alias}");
        let list: Vec<String> = list.iter().map(i32::to_string).collect();
        let escaped = name.replace('\'', "''");
        let a = format!(
            "SELECT {alias}.id FROM public.users {alias} WHERE {alias}.id = {id} AND {alias}.name = '{escaped}' AND {alias}.team IN ({})",
            list.join(", ")
        );
        let b = "select x.id from users x where x.id = $1 and x.name = $2 and x.team in ($3)";
        prop_assert_eq!(fingerprint(&a).normalized().to_string(), fingerprint(b).normalized().to_string());
    }

    #[test]
    fn case_and_white_space_do_not_change_the_shape(
        upper in proptest::collection::vec(any::<bool>(), 64),
        spaces in proptest::collection::vec(prop_oneof![Just(" "), Just("  "), Just("\n\t"), Just(" /* c */ ")], 16),
    ) {
        let words = ["select", "name", "from", "users", "where", "id", "=", "1", "order", "by", "name"];
        let mut sql = String::new();
        for (i, w) in words.iter().enumerate() {
            let w: String = w
                .chars()
                .enumerate()
                .map(|(j, c)| if upper[(i * 7 + j) % 64] { c.to_ascii_uppercase() } else { c })
                .collect();
            sql.push_str(&w);
            sql.push_str(spaces[i % 16]);
        }
        prop_assert_eq!(
            fingerprint(&sql).normalized().to_string(),
            "select name from users where id = ? order by name"
        );
    }
}
