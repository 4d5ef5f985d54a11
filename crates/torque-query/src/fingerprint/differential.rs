//! Differential test: the fingerprint and the detector's analysis of
//! 30,000 generated statements, of every prefix of the fuzz seeds and of the
//! bench's statements agree byte for byte with what the implementation
//! before the lexer's fast paths (2026-12-05, 0127f14) gave. Its output is
//! kept as digests, one per block of statements, in `differential.golden`
//! (written by that implementation, run as a test-only oracle beside the
//! new one before the oracle was removed): a change of output fails here,
//! with the block's statements and their new fingerprints printed.
//!
//! A deliberate change of the fingerprint rules rewrites the file:
//! `TORQUE_FP_GOLDEN=write cargo test -p torque-query --lib differential`,
//! and the diff of the golden file shows which blocks moved. To see which
//! statements moved, dump every record before and after the change with
//! `TORQUE_FP_DUMP=/tmp/before.txt cargo test -p torque-query --lib
//! differential` (one line a statement: block, statement, record) and diff
//! the dumps.
//!
//! The generator is seeded and covers what the fast paths special-case:
//! keyword case, white space and nested comments, every literal form
//! (prefixed and dollar-quoted strings, radix and exponent numbers), quoted
//! and unicode identifiers, aliases with and without `AS`, schema and
//! three-part names, IN lists, `ANY(ARRAY[...])`, casts, placeholders
//! (`$1`, `?`, `:name`), VALUES rows, utility statements, token soups and
//! random cuts and splices of all of these.

use std::fmt::Write as _;

/// xorshift64*: small, seeded, good enough to pick grammar branches.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `p` percent.
    fn pct(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const IDENTS: &[&str] = &[
    "id",
    "name",
    "email",
    "user_id",
    "account_id",
    "created_at",
    "status",
    "total",
    "x",
    "a",
    "t",
    "u",
    "o",
    "li",
    "amount",
    "Price",
    "CamelCase",
    "ÜnÏcode_col",
    "naïve",
    "日本",
    "_under",
    "col1",
    "abcdefghijklmnopq",
    "very_long_identifier_name_over_sixteen",
    "selectx",
    "fromage",
    "in_stock",
    "a$b",
];
const TABLES: &[&str] = &[
    "users",
    "orders",
    "customers",
    "line_items",
    "accounts",
    "Users",
    "Ürün",
    "t1",
    "big_table_with_long_name",
    "\"users\"",
    "\"Users\"",
    "\"line items\"",
];
const SCHEMAS: &[&str] = &["public", "app", "\"Public\"", "cat.public"];
const ALIASES: &[&str] = &[
    "o", "c", "u", "t", "b", "x1", "usr", "\"Q\"", "\"q\"", "\"A b\"", "OO",
];
const NUMBERS: &[&str] = &[
    "0",
    "7",
    "42",
    "123456789012",
    "-5",
    "3.25",
    ".5",
    "1e5",
    "1.5e-3",
    "2E+10",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "3.",
    "1..2",
];
const STRINGS: &[&str] = &[
    "'open'",
    "'it''s'",
    "''",
    "'7 days'",
    "E'a\\'b'",
    "e'\\\\'",
    "B'0101'",
    "X'FF'",
    "N'nat'",
    "U&'\\0041'",
    "u&'x'",
    "$$dollar ' quoted$$",
    "$tag$ x $ y $tag$",
    "$a$$a$",
    "'ünï'",
    "'a\nb'",
    "'--not a comment'",
    "'/* not */'",
    "'{1,2,3}'",
];
const PARAMS: &[&str] = &["$1", "$2", "$12", "?", ":name", ":id"];
const SPACES: &[&str] = &[
    "  ",
    "\n",
    "\t",
    "\r\n",
    " /* c */ ",
    "/**/",
    " -- x\n",
    " /* a /* nested */ b */ ",
    "\u{b}",
];

struct Gen {
    rng: Rng,
}

impl Gen {
    /// Keywords in any case.
    fn kw(&mut self, s: &str) -> String {
        match self.rng.below(5) {
            0 | 1 => s.to_ascii_uppercase(),
            2 | 3 => s.to_string(),
            _ => s
                .chars()
                .map(|c| {
                    if self.rng.pct(50) {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect(),
        }
    }

    /// One of `options`, in any case.
    fn kw_of(&mut self, options: &[&str]) -> String {
        let w = self.rng.pick(options);
        self.kw(w)
    }

    fn ws(&mut self) -> String {
        if self.rng.pct(15) {
            self.rng.pick(SPACES).to_string()
        } else {
            " ".to_string()
        }
    }

    fn ident(&mut self) -> String {
        let i = self.rng.pick(IDENTS);
        match self.rng.below(10) {
            0 => format!("\"{i}\""),
            1 => i.to_ascii_uppercase(),
            _ => i.to_string(),
        }
    }

    fn table(&mut self) -> String {
        let t = self.rng.pick(TABLES);
        if self.rng.pct(25) {
            format!("{}.{t}", self.rng.pick(SCHEMAS))
        } else {
            t.to_string()
        }
    }

    fn value(&mut self, depth: u32) -> String {
        match self.rng.below(20) {
            0..=5 => self.rng.pick(NUMBERS).to_string(),
            6..=10 => self.rng.pick(STRINGS).to_string(),
            11..=14 => self.rng.pick(PARAMS).to_string(),
            15 => self.kw_of(&["true", "false", "null"]),
            16 if depth < 2 => {
                let ty = self
                    .rng
                    .pick(&["int", "text", "int[]", "\"Type\"", "numeric(10,2)"]);
                format!("{}::{ty}", self.value(depth + 1))
            }
            17 if depth < 2 => {
                let n = self.rng.below(4);
                let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                format!("{}[{}]", self.kw("array"), items.join(", "))
            }
            18 => format!("{}({})", self.kw("now"), ""),
            19 => format!("{} {}", self.kw("interval"), self.rng.pick(STRINGS)),
            _ => self.rng.pick(NUMBERS).to_string(),
        }
    }

    fn column(&mut self, aliases: &[String]) -> String {
        if !aliases.is_empty() && self.rng.pct(60) {
            let a = aliases[self.rng.below(aliases.len())].clone();
            let a = if self.rng.pct(10) {
                a.to_ascii_uppercase()
            } else {
                a
            };
            format!("{a}.{}", self.ident())
        } else if self.rng.pct(5) {
            format!(
                "{}.{}.{}",
                self.rng.pick(SCHEMAS),
                self.rng.pick(TABLES),
                self.ident()
            )
        } else {
            self.ident()
        }
    }

    fn predicate(&mut self, aliases: &[String], depth: u32) -> String {
        let c = self.column(aliases);
        match self.rng.below(16) {
            0..=3 => {
                let op = self.rng.pick(&["=", "=", "<>", "!=", "<", ">", "<=", ">="]);
                format!("{c} {op} {}", self.value(0))
            }
            4 | 5 => {
                let n = 1 + self.rng.below(10);
                let items: Vec<String> = (0..n).map(|_| self.value(1)).collect();
                let sp = if self.rng.pct(50) { " " } else { "" };
                format!("{c} {}{sp}({})", self.kw("in"), items.join(", "))
            }
            6 => {
                let n = 1 + self.rng.below(5);
                let items: Vec<String> = (0..n).map(|_| self.value(1)).collect();
                format!(
                    "{c} = {}({}[{}])",
                    self.kw("any"),
                    self.kw("array"),
                    items.join(", ")
                )
            }
            7 => format!(
                "{c} = {}({})",
                self.kw_of(&["any", "some"]),
                self.rng.pick(PARAMS)
            ),
            8 => format!(
                "{c} {} {} {} {}",
                self.kw("between"),
                self.value(0),
                self.kw("and"),
                self.value(0)
            ),
            9 => format!("{c} {} {}", self.kw("is"), self.kw("not null")),
            10 => format!("{c} {} {}", self.kw("like"), self.value(0)),
            11 => format!("{} = {c}", self.value(0)),
            12 => format!("{c} {} {}", self.kw("is distinct from"), self.value(0)),
            13 if depth < 2 => format!("{} ({})", self.kw("exists"), self.select(depth + 1)),
            14 => format!("{c}=-{}", self.rng.pick(NUMBERS)),
            _ if depth < 3 => format!(
                "({} {} {})",
                self.predicate(aliases, depth + 1),
                self.kw("or"),
                self.predicate(aliases, depth + 1)
            ),
            _ => format!("{c} = 1"),
        }
    }

    fn relations(&mut self, depth: u32) -> (String, Vec<String>) {
        let mut aliases = Vec::new();
        let mut s = String::new();
        for k in 0..1 + self.rng.below(3) {
            let t = self.table();
            let item = match self.rng.below(10) {
                0 if depth < 2 => {
                    let a = self.rng.pick(ALIASES).to_string();
                    aliases.push(a.clone());
                    format!("({}) {} {a}", self.select(depth + 1), self.kw("as"))
                }
                1 => format!("{}(1, 10) g", self.kw("generate_series")),
                2..=5 => {
                    let a = self.rng.pick(ALIASES).to_string();
                    aliases.push(a.clone());
                    format!("{t} {a}")
                }
                6 | 7 => {
                    let a = self.rng.pick(ALIASES).to_string();
                    aliases.push(a.clone());
                    format!("{t} {} {a}", self.kw("as"))
                }
                _ => {
                    aliases.push(t.rsplit('.').next().unwrap_or("").to_string());
                    if self.rng.pct(10) {
                        format!("{} {t}", self.kw_of(&["only", "lateral"]))
                    } else {
                        t
                    }
                }
            };
            if k == 0 {
                s.push_str(&item);
            } else if self.rng.pct(40) {
                s.push_str(&format!(", {item}"));
            } else {
                let join = self.kw_of(&[
                    "join",
                    "left join",
                    "inner join",
                    "left outer join",
                    "cross join",
                ]);
                let on = if join.eq_ignore_ascii_case("cross join") {
                    String::new()
                } else {
                    format!(" {} {}", self.kw("on"), self.predicate(&aliases, depth))
                };
                s.push_str(&format!(" {join} {item}{on}"));
            }
        }
        (s, aliases)
    }

    fn select(&mut self, depth: u32) -> String {
        let (from, aliases) = self.relations(depth);
        let n = 1 + self.rng.below(4);
        let cols: Vec<String> = (0..n)
            .map(|_| match self.rng.below(6) {
                0 => "*".to_string(),
                1 => format!("{}(*)", self.kw("count")),
                2 => self.value(0),
                3 => format!(
                    "{} {} {}",
                    self.column(&aliases),
                    self.kw("as"),
                    self.ident()
                ),
                _ => self.column(&aliases),
            })
            .collect();
        let mut s = format!(
            "{} {}{}{} {from}",
            self.kw("select"),
            cols.join(", "),
            self.ws(),
            self.kw("from")
        );
        if self.rng.pct(80) {
            let n = 1 + self.rng.below(3);
            let preds: Vec<String> = (0..n).map(|_| self.predicate(&aliases, depth)).collect();
            let and = format!(" {} ", self.kw("and"));
            s.push_str(&format!(
                "{}{} {}",
                self.ws(),
                self.kw("where"),
                preds.join(&and)
            ));
        }
        if self.rng.pct(15) {
            s.push_str(&format!(
                " {} {}",
                self.kw("group by"),
                self.column(&aliases)
            ));
        }
        if self.rng.pct(35) {
            let c = self.column(&aliases);
            s.push_str(&format!(" {} {c} {}", self.kw("order by"), self.kw("desc")));
        }
        if self.rng.pct(30) {
            let v = self.value(0);
            s.push_str(&format!(" {} {v}", self.kw("limit")));
        }
        if self.rng.pct(15) {
            let v = self.value(0);
            s.push_str(&format!(" {} {v}", self.kw("offset")));
        }
        if self.rng.pct(5) {
            s.push_str(&format!(" {}", self.kw("for update")));
        }
        s
    }

    fn insert(&mut self) -> String {
        let n = 1 + self.rng.below(4);
        let cols: Vec<String> = (0..n).map(|_| self.ident()).collect();
        let mut s = format!(
            "{} {} ({}) ",
            self.kw("insert into"),
            self.table(),
            cols.join(", ")
        );
        if self.rng.pct(15) {
            s.push_str(&self.select(1));
        } else {
            let rows = [1, 1, 1, 2, 3][self.rng.below(5)];
            let rows: Vec<String> = (0..rows)
                .map(|_| {
                    let v: Vec<String> = (0..n).map(|_| self.value(0)).collect();
                    format!("({})", v.join(", "))
                })
                .collect();
            s.push_str(&format!("{} {}", self.kw("values"), rows.join(", ")));
        }
        if self.rng.pct(30) {
            s.push_str(&format!(
                " {} ({}) {} {c} = {}.{c}",
                self.kw("on conflict"),
                cols[0],
                self.kw("do update set"),
                self.kw("excluded"),
                c = cols[n - 1]
            ));
        }
        if self.rng.pct(30) {
            s.push_str(&format!(" {} id", self.kw("returning")));
        }
        s
    }

    fn update(&mut self) -> String {
        let alias = ["", " u", " AS u"][self.rng.below(3)];
        let aliases = if alias.is_empty() {
            Vec::new()
        } else {
            vec!["u".to_string()]
        };
        let set = format!("{} = {}", self.ident(), self.value(0));
        format!(
            "{} {}{alias} {} {set} {} {}",
            self.kw("update"),
            self.table(),
            self.kw("set"),
            self.kw("where"),
            self.predicate(&aliases, 0)
        )
    }

    fn utility(&mut self) -> String {
        match self.rng.below(12) {
            0 => self.kw("begin"),
            1 => self.kw("commit"),
            2 => format!("{} {} = {}", self.kw("set"), self.ident(), self.value(0)),
            3 => format!("{} sp_{}", self.kw("savepoint"), self.rng.below(99)),
            4 => format!("{} \"Sp\"", self.kw("savepoint")),
            5 => format!("{} sp_{}", self.kw("release savepoint"), self.rng.below(9)),
            6 => format!(
                "{} sp_{}",
                self.kw("rollback to savepoint"),
                self.rng.below(9)
            ),
            7 => format!("{} s1", self.kw("rollback to")),
            8 => format!(
                "{} {} (id int8 primary key)",
                self.kw("create table"),
                self.table()
            ),
            9 => format!(
                "{} {} {}",
                self.kw("copy"),
                self.table(),
                self.kw("from stdin")
            ),
            10 => format!("{} {}", self.kw("delete from"), self.table()),
            _ => format!(
                "{} r {} ({}) {}",
                self.kw("with"),
                self.kw("as"),
                self.select(1),
                self.select(0)
            ),
        }
    }

    fn statement(&mut self) -> String {
        let mut s = match self.rng.below(20) {
            0..=8 => self.select(0),
            9..=11 => self.insert(),
            12 | 13 => self.update(),
            14..=16 => self.utility(),
            17 => format!(
                "{} {} {}",
                self.select(0),
                self.kw("union all"),
                self.select(0)
            ),
            _ => {
                let v = format!("({}, {})", self.value(0), self.value(0));
                format!("{} {v}", self.kw("values"))
            }
        };
        if self.rng.pct(10) {
            s.push_str(" /*controller='x',action='y',traceparent='00-4bf92f3577b34da6-01'*/");
        }
        if self.rng.pct(10) {
            s.push_str(self.rng.pick(&[";", " ;", ";;", " -- trailing"]));
        }
        s
    }

    fn soup(&mut self) -> String {
        const PARTS: &[&str] = &[
            "SELECT",
            "FROM",
            "WHERE",
            "IN",
            "(",
            ")",
            "'",
            "\"",
            "$",
            "$$",
            "$1",
            "--",
            "/*",
            "*/",
            "::",
            ":",
            ".",
            ",",
            ";",
            "ANY",
            "ARRAY",
            "[",
            "]",
            "-",
            "+",
            "1e",
            "E'\\",
            "é",
            "t",
            "u",
            "AS",
            "JOIN",
            "=",
            "?",
            "\n",
            "SAVEPOINT",
            "VALUES",
            "LIMIT",
            "BETWEEN",
            "'x'",
            "\"Q\"",
            "\"q\"",
            "5",
            "INSERT",
            "INTO",
            "OFFSET",
            "AND",
            "ORDER",
            "BY",
            "true",
            "UPDATE",
            "SET",
            "ON",
            "DISTINCT",
            "DO",
            "FOR",
            "ROLLBACK",
            "TO",
            "?|",
            "@>",
            "<>",
            "0x",
            "U&'",
            "B'",
            "$a$",
            "日",
            "\\",
            "/",
            "*",
            "ONLY",
            "WITH",
            ":name",
            "||",
        ];
        let sep = if self.rng.pct(50) { " " } else { "" };
        let n = self.rng.below(40);
        let parts: Vec<&str> = (0..n).map(|_| self.rng.pick(PARTS)).collect();
        parts.join(sep)
    }

    /// Cuts, deletions and insertions at character boundaries.
    fn mutate(&mut self, s: &str) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        for _ in 0..1 + self.rng.below(3) {
            let at = self.rng.below(chars.len() + 1);
            match self.rng.below(3) {
                0 => chars.truncate(at),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => {
                    const INSERTS: &[char] = &[
                        '\'', '"', '$', ';', ':', '.', ',', '(', ')', '[', '-', '/', '*', '?',
                        '\n', ' ', 'é', '\0', '日',
                    ];
                    chars.insert(at, INSERTS[self.rng.below(INSERTS.len())]);
                }
            }
        }
        chars.into_iter().collect()
    }

    fn any(&mut self) -> String {
        match self.rng.below(20) {
            0..=13 => self.statement(),
            14..=16 => self.soup(),
            _ => {
                let s = self.statement();
                self.mutate(&s)
            }
        }
    }
}

/// Everything the fingerprint and the detector make of `sql`, as one line;
/// also checks that `fingerprint` alone (the other path through the
/// passes) agrees with `analyze`.
fn record(sql: &str) -> String {
    let a = super::analyze(sql);
    let f = super::fingerprint(sql);
    let (af, line) = (
        &a.fingerprint,
        |n: &str, h: u64, t: &[String], k: &dyn std::fmt::Debug| {
            format!("{n:?} {h:016x} {t:?} {k:?}")
        },
    );
    let expected = line(af.normalized(), af.hash(), af.tables(), &af.kind());
    assert_eq!(
        line(f.normalized(), f.hash(), f.tables(), &f.kind()),
        expected,
        "fingerprint against analyze: {sql:?}"
    );
    format!(
        "{expected} {:?}",
        (
            a.key_values,
            a.key_params,
            a.has_key_slot,
            a.all_values,
            a.any_params,
            a.paginated,
            a.insert_rows,
            &a.key_column,
        )
    )
}

/// FNV-1a, 64 bits: the same on every platform and Rust version (std's
/// hasher promises neither).
fn fnv(records: &[(String, String)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for (_, record) in records {
        for &b in record.as_bytes().iter().chain(b"\n") {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The realistic statements of the crate's fingerprint bench, as they were
/// when the digests were written (a copy: the bench may change them).
const REALISTIC: &[&str] = &[
    "SELECT u.id, u.email, u.created_at FROM public.users u WHERE u.id = $1 AND u.deleted_at IS NULL LIMIT 1",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open' AND o.created_at > now() - interval '7 days' ORDER BY o.created_at DESC LIMIT 50",
    "select * from products where category_id in (12, 17, 23, 31, 44, 58, 61, 77) and price between 10.00 and 99.99 /*controller='products',action='index',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
    "INSERT INTO events (account_id, kind, payload, created_at) VALUES ($1, $2, $3, now()) ON CONFLICT (account_id, kind) DO UPDATE SET payload = EXCLUDED.payload RETURNING id",
    "UPDATE accounts SET balance = balance - $1, updated_at = now() WHERE id = $2 AND balance >= $1",
    "DELETE FROM sessions WHERE user_id = 42 AND expires_at < '2026-11-23 00:00:00+00'",
    "SELECT count(*) FROM line_items li WHERE li.order_id = ANY(ARRAY[101, 102, 103, 104])",
    "BEGIN",
    "SAVEPOINT sp_17",
    "WITH recent AS (SELECT account_id, sum(amount) AS total FROM transfers WHERE created_at > $1 GROUP BY account_id) SELECT a.id, r.total FROM accounts a JOIN recent r ON r.account_id = a.id WHERE r.total > 1000",
];

/// Statements per digest: small enough to print a failing block whole.
const BLOCK: usize = 200;
const CASES_PER_SEED: usize = 10_000;

/// Named groups of `(statement, record)`.
fn groups() -> Vec<(String, Vec<(String, String)>)> {
    let mut groups = Vec::new();
    for seed in [1u64, 0x5eed, 0xdead_beef] {
        let mut g = Gen {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        };
        let all: Vec<_> = (0..CASES_PER_SEED)
            .map(|_| {
                let sql = g.any();
                let r = record(&sql);
                (sql, r)
            })
            .collect();
        for (i, block) in all.chunks(BLOCK).enumerate() {
            groups.push((format!("generated seed {seed:x} block {i}"), block.to_vec()));
        }
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/fingerprint");
    // The committed seeds only: a local `cargo fuzz run` adds its finds
    // (and a `.tmp` directory) beside them.
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .expect("the fuzz seed corpus is in the workspace")
        .map(|e| e.expect("seed entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed_") && n.ends_with(".sql"))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for path in seeds {
        let bytes = std::fs::read(&path).expect("read seed");
        let sql = String::from_utf8_lossy(&bytes);
        // Every prefix: cuts inside strings, comments and names.
        let mut all: Vec<_> = sql
            .char_indices()
            .map(|(i, _)| sql[..i].to_owned())
            .chain([sql.to_string()])
            .map(|s| {
                let r = record(&s);
                (s, r)
            })
            .collect();
        let name = path.file_name().expect("file name").to_string_lossy();
        for (i, block) in all.chunks_mut(BLOCK).enumerate() {
            groups.push((format!("fuzz seed {name} block {i}"), block.to_vec()));
        }
    }
    let bench: Vec<_> = REALISTIC
        .iter()
        .map(|&sql| (sql.to_owned(), record(sql)))
        .collect();
    groups.push(("bench statements".to_owned(), bench));
    groups
}

#[test]
fn fingerprints_and_analyses_match_the_golden_digests() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/fingerprint/differential.golden");
    let groups = groups();
    let mut got = String::new();
    for (name, records) in &groups {
        writeln!(got, "{name}: {:016x}", fnv(records)).expect("write to a String");
    }
    if let Ok(dump) = std::env::var("TORQUE_FP_DUMP") {
        let mut all = String::new();
        for (name, records) in &groups {
            for (sql, record) in records {
                writeln!(all, "{name}\t{sql:?}\t{record}").expect("write to a String");
            }
        }
        std::fs::write(dump, all).expect("write the dump");
    }
    if std::env::var("TORQUE_FP_GOLDEN").as_deref() == Ok("write") {
        std::fs::write(&path, &got).expect("write the golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("the golden file is in the crate");
    let (got_lines, want_lines): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
    for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        if g != w {
            let mut report = format!("{w}\nnow {g}\nthe block's statements and records now:\n");
            for (sql, record) in &groups[i].1 {
                writeln!(report, "{sql:?}\n    => {record}").expect("write to a String");
            }
            panic!("fingerprint output changed in {report}");
        }
    }
    assert_eq!(
        got_lines.len(),
        want_lines.len(),
        "a different number of blocks"
    );
}
