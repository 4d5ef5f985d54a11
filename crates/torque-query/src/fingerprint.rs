//! SQL fingerprints: which statements are the same shape.
//!
//! The rules are the project's query contract (docs/query.md): literals and bind
//! parameters become one placeholder `?`; an `IN (...)` list of constants of any
//! length, and `ANY(ARRAY[...])` of constants, collapse to one slot; keyword
//! case, white space, comments and a trailing `;` do not matter; unquoted
//! identifiers fold to lower case, quoted ones keep their case; schema
//! qualifiers are dropped; aliases are replaced by the relation they stand for;
//! savepoint names do not matter.
//!
//! The same pass records what the N+1 detector needs: the statement's kind, the
//! tables it touches, and the values in its equality, IN/ANY and VALUES slots.

use crate::lexer::{Kind, Token, tokenize};

/// The shape of a SQL statement: its normalized text and a 64-bit hash of it.
///
/// Two statements that differ only in literal values, bind parameters, the
/// length of an `IN` list, keyword case, white space, comments, schema
/// qualifiers or alias names have the same fingerprint.
///
/// # Example
/// ```
/// use torque_query::fingerprint;
///
/// let a = fingerprint("SELECT * FROM users WHERE id IN (1, 2, 3)");
/// let b = fingerprint("select *\n  from public.users\n where id in ($1) -- by id");
/// assert_eq!(a.hash(), b.hash());
/// assert_eq!(a.normalized(), "select * from users where id in (?)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    hash: u64,
    normalized: String,
    kind: StatementKind,
    tables: Vec<String>,
}

impl Fingerprint {
    /// A stable 64-bit hash of [`normalized`](Self::normalized) (FNV-1a): the
    /// same across processes, machines and runs.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The normalized statement: placeholders for values, lower-case keywords
    /// and identifiers, single spaces, no comments.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// What kind of statement this is.
    pub fn kind(&self) -> StatementKind {
        self.kind
    }

    /// The tables the statement names (after `FROM`, `JOIN`, `INTO`, `UPDATE`,
    /// `USING`), without schema, in order of first mention.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }
}

/// The kind of a statement, from its leading verb (after any `WITH` clause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// Anything else: `BEGIN`, `SET`, `CREATE`, `COPY`, ...
    Utility,
}

/// What a placeholder stands for, by where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `col = ?`, `col IN (...)`, `col = ANY(...)` in a predicate.
    Key,
    /// A value of a single-row `INSERT ... VALUES`.
    Value,
    /// `LIMIT ?`, `OFFSET ?`.
    Page,
    /// `col > ?`, `BETWEEN ? AND ?`.
    Range,
    /// Anything else (`SET col = ?`, a projection, `LIKE ?`, ...).
    Other,
}

/// The fingerprint plus what the detector needs to know about the values.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    pub(crate) fingerprint: Fingerprint,
    /// Hash of the literal values in key and insert-value slots, in order.
    pub(crate) key_values: u64,
    /// A bind parameter sits in a key or insert-value slot (its value is unknown).
    pub(crate) key_params: bool,
    /// At least one key or insert-value slot exists.
    pub(crate) has_key_slot: bool,
    /// Hash of every literal value, in order (identical repeats share it).
    pub(crate) all_values: u64,
    /// Some slot is a bind parameter.
    pub(crate) any_params: bool,
    /// `LIMIT`/`OFFSET` paging or a range predicate under `ORDER BY ... LIMIT`.
    pub(crate) paginated: bool,
    /// Rows in a top-level `INSERT ... VALUES` (0 when not such an insert).
    pub(crate) insert_rows: usize,
    /// The column compared in the first key slot, for the suggested fix.
    pub(crate) key_column: Option<String>,
}

/// Fingerprints one SQL statement (or a `;`-separated batch as a whole).
///
/// Never panics, whatever the input: text it cannot make sense of is kept as
/// it is, lower-cased.
pub fn fingerprint(sql: &str) -> Fingerprint {
    analyze(sql).fingerprint
}

/// Words that end a relation reference: after `FROM users`, one of these is not
/// an alias.
fn is_clause_word(w: &str) -> bool {
    matches!(
        w,
        "where"
            | "join"
            | "inner"
            | "left"
            | "right"
            | "full"
            | "cross"
            | "natural"
            | "outer"
            | "on"
            | "using"
            | "group"
            | "order"
            | "having"
            | "limit"
            | "offset"
            | "fetch"
            | "for"
            | "window"
            | "union"
            | "intersect"
            | "except"
            | "set"
            | "values"
            | "select"
            | "returning"
            | "default"
            | "from"
            | "as"
            | "lateral"
            | "only"
            | "tablesample"
            | "with"
            | "do"
            | "overriding"
            | "when"
            | "then"
            | "and"
            | "or"
            | "not"
            | "into"
            | "is"
            | "in"
            | "partition"
    )
}

/// Words after which a `-` starts a negative number rather than a subtraction.
fn is_operand_position_word(w: &str) -> bool {
    matches!(
        w,
        "select"
            | "where"
            | "and"
            | "or"
            | "not"
            | "values"
            | "then"
            | "else"
            | "when"
            | "limit"
            | "offset"
            | "between"
            | "in"
            | "set"
            | "by"
            | "having"
            | "on"
            | "return"
            | "like"
            | "ilike"
            | "is"
            | "case"
            | "array"
            | "any"
            | "all"
            | "some"
    )
}

/// The statement's clause at one parenthesis depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    None,
    Select,
    From,
    Predicate,
    Set,
    Values,
    Page,
    Order,
    Returning,
    Other,
}

/// One normalized output token.
#[derive(Debug, Clone)]
enum Out<'a> {
    /// Text to emit as is (already lower-cased where needed).
    Text(std::borrow::Cow<'a, str>, Kind),
    /// A placeholder `?`.
    Slot,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// `"users"` is the same identifier as `users`; `"Users"` is not.
fn unquote_if_plain(quoted: &str) -> Option<&str> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes = inner.bytes();
    let first = bytes.next()?;
    let plain = (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    plain.then_some(inner)
}

/// The identifier's canonical text: lower-cased when unquoted, unquoted when
/// the quotes change nothing.
fn ident_text<'a>(sql: &'a str, t: &Token) -> std::borrow::Cow<'a, str> {
    let text = t.text(sql);
    match t.kind {
        Kind::Quoted => match unquote_if_plain(text) {
            Some(inner) => std::borrow::Cow::Borrowed(inner),
            None => std::borrow::Cow::Borrowed(text),
        },
        _ => lower(text),
    }
}

fn is_ident(t: &Token) -> bool {
    matches!(t.kind, Kind::Word | Kind::Quoted)
}

pub(crate) fn analyze(sql: &str) -> Analysis {
    let mut tokens = Vec::with_capacity(sql.len() / 4 + 4);
    tokenize(sql, &mut tokens);
    // A trailing `;` (or several) does not matter.
    while tokens.last().is_some_and(|t| t.kind == Kind::Semicolon) {
        tokens.pop();
    }
    let words: Vec<std::borrow::Cow<'_, str>> = tokens
        .iter()
        .map(|t| {
            if t.kind == Kind::Word {
                lower(t.text(sql))
            } else {
                std::borrow::Cow::Borrowed("")
            }
        })
        .collect();
    let word = |i: usize| -> &str { words.get(i).map_or("", |w| w.as_ref()) };

    // Pass 1: relation references, their schema qualifiers and aliases.
    let n = tokens.len();
    let mut drop_token = vec![false; n];
    let mut tables: Vec<String> = Vec::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    let mut kind = StatementKind::Utility;
    let mut kind_found = false;
    {
        let mut depth = 0usize;
        let mut expect_relation = false;
        let mut from_depth: Option<usize> = None;
        let mut i = 0;
        while i < n {
            let t = tokens[i];
            match t.kind {
                Kind::Open => depth += 1,
                Kind::Close => {
                    depth = depth.saturating_sub(1);
                    if from_depth.is_some_and(|d| d > depth) {
                        from_depth = None;
                    }
                }
                _ => {}
            }
            if t.kind == Kind::Word {
                let w = word(i);
                if !kind_found && depth == 0 {
                    let k = match w {
                        "select" | "values" | "table" => Some(StatementKind::Select),
                        "insert" => Some(StatementKind::Insert),
                        "update" => Some(StatementKind::Update),
                        "delete" => Some(StatementKind::Delete),
                        "merge" => Some(StatementKind::Merge),
                        "with" | "recursive" => None,
                        _ if i == 0 => Some(StatementKind::Utility),
                        _ => None,
                    };
                    if let Some(k) = k {
                        kind = k;
                        kind_found = true;
                    }
                }
                match w {
                    "from" | "join" | "into" | "update" | "using" => {
                        // `DISTINCT FROM`, `IS [NOT] DISTINCT FROM` compare values.
                        let distinct = w == "from" && i > 0 && word(i - 1) == "distinct";
                        // `ON CONFLICT ... DO UPDATE SET` updates no new relation.
                        let do_update = w == "update" && i > 0 && word(i - 1) == "do";
                        // `FOR UPDATE` locks rows.
                        let for_update = w == "update" && i > 0 && word(i - 1) == "for";
                        if !distinct && !do_update && !for_update {
                            expect_relation = true;
                            if w == "from" {
                                from_depth = Some(depth);
                            }
                        }
                        i += 1;
                        continue;
                    }
                    "only" | "lateral" if expect_relation => {
                        i += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            if t.kind == Kind::Comma && from_depth == Some(depth) {
                expect_relation = true;
                i += 1;
                continue;
            }
            if expect_relation && is_ident(&t) && !(t.kind == Kind::Word && is_clause_word(word(i)))
            {
                expect_relation = false;
                // Qualified name: ident (. ident)*
                let mut last = i;
                while last + 2 < n + 1
                    && tokens.get(last + 1).is_some_and(|d| d.kind == Kind::Dot)
                    && tokens.get(last + 2).is_some_and(is_ident)
                {
                    last += 2;
                }
                let after = last + 1;
                let into_columns = i > 0 && word(i - 1) == "into";
                if tokens.get(after).is_some_and(|t| t.kind == Kind::Open) && !into_columns {
                    // A function in FROM (`generate_series(...)`): not a relation.
                    i = after;
                    continue;
                }
                for d in drop_token.iter_mut().take(last).skip(i) {
                    *d = true; // schema (and catalog) qualifiers
                }
                let relation = ident_text(sql, &tokens[last]).into_owned();
                if !tables.contains(&relation) {
                    tables.push(relation.clone());
                }
                // Alias: `AS a` or a bare non-clause word.
                let mut j = after;
                let has_as = word(j) == "as";
                if has_as {
                    j += 1;
                }
                if let Some(a) = tokens.get(j)
                    && is_ident(a)
                    && !(a.kind == Kind::Word && is_clause_word(word(j)))
                    && !(a.kind == Kind::Word && !has_as && is_reserved_after_relation(word(j)))
                {
                    aliases.push((ident_text(sql, a).into_owned(), relation));
                    if has_as {
                        drop_token[after] = true;
                    }
                    drop_token[j] = true;
                    i = j + 1;
                    continue;
                }
                i = after;
                continue;
            }
            if expect_relation && !(t.kind == Kind::Word && matches!(word(i), "only" | "lateral")) {
                // A subquery or something else: no relation here.
                expect_relation = false;
            }
            i += 1;
        }
    }

    // Pass 2: emit normalized tokens, classify slots, collapse lists.
    let mut out: Vec<Out<'_>> = Vec::with_capacity(n);
    let mut key_values = FNV_OFFSET;
    let mut all_values = FNV_OFFSET;
    let mut key_params = false;
    let mut has_key_slot = false;
    let mut any_params = false;
    let mut key_column: Option<String> = None;
    let mut has_order = false;
    let mut has_limit = false;
    let mut has_range = false;
    let mut has_offset = false;
    let mut insert_rows = 0usize;
    let mut clauses: Vec<Clause> = vec![Clause::None];
    let mut between_pending = false;

    let savepoint_stmt = matches!(word(0), "savepoint" | "release")
        || (word(0) == "rollback" && (word(1) == "to" || word(2) == "to"));

    let mut i = 0;
    while i < n {
        let t = tokens[i];
        if drop_token[i] {
            i += 1;
            continue;
        }
        let depth = clauses.len() - 1;
        let clause = clauses[depth];
        match t.kind {
            Kind::Word => {
                let w = word(i);
                let next_clause = match w {
                    "select" => Some(Clause::Select),
                    "from" | "join" | "using" | "into" | "update" | "table" => Some(Clause::From),
                    "where" | "on" | "having" | "when" => Some(Clause::Predicate),
                    "set" => Some(Clause::Set),
                    "values" => Some(Clause::Values),
                    "limit" | "offset" | "fetch" => Some(Clause::Page),
                    "order" => Some(Clause::Order),
                    "group" | "window" | "for" => Some(Clause::Other),
                    "returning" => Some(Clause::Returning),
                    _ => None,
                };
                match w {
                    "order" => has_order = true,
                    "limit" | "fetch" => has_limit = true,
                    "offset" => has_offset = true,
                    "between" => between_pending = true,
                    _ => {}
                }
                if w == "values" && depth == 0 && kind == StatementKind::Insert {
                    insert_rows = count_values_rows(&tokens, i + 1);
                }
                if let Some(c) = next_clause
                    && !(w == "from" && i > 0 && word(i - 1) == "distinct")
                {
                    clauses[depth] = c;
                }
                if savepoint_stmt
                    && !matches!(
                        w,
                        "savepoint" | "release" | "rollback" | "to" | "transaction" | "work"
                    )
                {
                    out.push(Out::Slot);
                    i += 1;
                    continue;
                }
                if matches!(w, "true" | "false") {
                    let slot = classify(&out, clause, between_pending, next_is_eq(&tokens, i, sql));
                    let mut sink = SlotSink {
                        key_values: &mut key_values,
                        all_values: &mut all_values,
                        has_key_slot: &mut has_key_slot,
                        has_range: &mut has_range,
                    };
                    note_key_column(&out, slot, &mut key_column);
                    push_slot(&mut out, slot, w, &mut sink);
                    i += 1;
                    continue;
                }
                // Qualified reference `alias.col` → `relation.col`.
                if tokens.get(i + 1).is_some_and(|d| d.kind == Kind::Dot)
                    && let Some((_, rel)) = aliases.iter().find(|(a, _)| a == w)
                {
                    out.push(Out::Text(std::borrow::Cow::Owned(rel.clone()), Kind::Word));
                    i += 1;
                    continue;
                }
                // `schema.table.col` → `table.col`.
                if is_three_part(&tokens, i) {
                    i += 2;
                    continue;
                }
                out.push(Out::Text(words[i].clone(), Kind::Word));
            }
            Kind::Quoted => {
                if savepoint_stmt {
                    out.push(Out::Slot);
                    i += 1;
                    continue;
                }
                let text = ident_text(sql, &t);
                if tokens.get(i + 1).is_some_and(|d| d.kind == Kind::Dot)
                    && let Some((_, rel)) = aliases.iter().find(|(a, _)| a.as_str() == text)
                {
                    out.push(Out::Text(std::borrow::Cow::Owned(rel.clone()), Kind::Word));
                    i += 1;
                    continue;
                }
                if is_three_part(&tokens, i) {
                    i += 2;
                    continue;
                }
                out.push(Out::Text(text, Kind::Quoted));
            }
            Kind::Literal | Kind::Param => {
                // Fold a unary minus into the number: `= -5` is `= ?`.
                if let Some(Out::Text(op, Kind::Op)) = out.last()
                    && op == "-"
                    && unary_minus_position(&out)
                {
                    out.pop();
                }
                let slot = classify(&out, clause, between_pending, next_is_eq(&tokens, i, sql));
                if slot == Slot::Range && between_pending && word(i + 1) != "and" {
                    between_pending = false;
                }
                if t.kind == Kind::Param {
                    any_params = true;
                    if matches!(slot, Slot::Key | Slot::Value) {
                        key_params = true;
                    }
                }
                note_key_column(&out, slot, &mut key_column);
                let mut sink = SlotSink {
                    key_values: &mut key_values,
                    all_values: &mut all_values,
                    has_key_slot: &mut has_key_slot,
                    has_range: &mut has_range,
                };
                let text = if t.kind == Kind::Param {
                    "$"
                } else {
                    t.text(sql)
                };
                push_slot(&mut out, slot, text, &mut sink);
            }
            Kind::Open => {
                clauses.push(clause_inside(clause));
                out.push(Out::Text(std::borrow::Cow::Borrowed("("), Kind::Open));
            }
            Kind::Close => {
                if clauses.len() > 1 {
                    clauses.pop();
                }
                out.push(Out::Text(std::borrow::Cow::Borrowed(")"), Kind::Close));
                collapse_list(&mut out);
            }
            Kind::CloseBracket => {
                out.push(Out::Text(
                    std::borrow::Cow::Borrowed("]"),
                    Kind::CloseBracket,
                ));
                collapse_list(&mut out);
            }
            Kind::Op => {
                out.push(Out::Text(std::borrow::Cow::Borrowed(t.text(sql)), Kind::Op));
            }
            k => out.push(Out::Text(std::borrow::Cow::Borrowed(t.text(sql)), k)),
        }
        i += 1;
    }

    let normalized = render(&out);
    let hash = fnv(FNV_OFFSET, normalized.as_bytes());
    let paginated = has_offset || (has_order && has_limit && has_range);
    Analysis {
        fingerprint: Fingerprint {
            hash,
            normalized,
            kind,
            tables,
        },
        key_values,
        key_params,
        has_key_slot,
        all_values,
        any_params,
        paginated,
        insert_rows,
        key_column,
    }
}

/// Words that cannot be a bare alias after a relation name.
fn is_reserved_after_relation(w: &str) -> bool {
    matches!(
        w,
        "limit" | "offset" | "order" | "group" | "returning" | "on" | "where" | "set" | "for"
    )
}

fn is_three_part(tokens: &[Token], i: usize) -> bool {
    tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Dot)
        && tokens.get(i + 2).is_some_and(is_ident)
        && tokens.get(i + 3).is_some_and(|t| t.kind == Kind::Dot)
        && tokens
            .get(i + 4)
            .is_some_and(|t| is_ident(t) || t.kind == Kind::Op)
        && !(i > 0 && tokens[i - 1].kind == Kind::Dot)
}

/// Rows in `VALUES (..), (..)` starting at token `i`.
fn count_values_rows(tokens: &[Token], mut i: usize) -> usize {
    let mut rows = 0;
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i].kind {
            Kind::Open => {
                if depth == 0 {
                    rows += 1;
                }
                depth += 1;
            }
            Kind::Close => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            Kind::Comma if depth == 0 => {}
            _ if depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    rows
}

/// The clause a parenthesised group inherits from its surroundings.
fn clause_inside(outer: Clause) -> Clause {
    match outer {
        Clause::Values => Clause::Values,
        Clause::Predicate => Clause::Predicate,
        Clause::Set => Clause::Set,
        Clause::From => Clause::From,
        _ => Clause::Other,
    }
}

fn unary_minus_position(out: &[Out<'_>]) -> bool {
    match out.len().checked_sub(2).and_then(|i| out.get(i)) {
        None => true,
        Some(Out::Text(_, Kind::Op | Kind::Open | Kind::Comma | Kind::OpenBracket)) => true,
        Some(Out::Text(w, Kind::Word)) => is_operand_position_word(w),
        _ => false,
    }
}

fn last_text<'b>(out: &'b [Out<'_>], back: usize) -> Option<(&'b str, Kind)> {
    match out.len().checked_sub(back + 1).and_then(|i| out.get(i)) {
        Some(Out::Text(t, k)) => Some((t.as_ref(), *k)),
        Some(Out::Slot) => Some(("?", Kind::Literal)),
        None => None,
    }
}

/// Decides what the placeholder about to be pushed stands for.
fn classify(out: &[Out<'_>], clause: Clause, between: bool, next_is_eq: bool) -> Slot {
    let prev = last_text(out, 0);
    match clause {
        Clause::Page => return Slot::Page,
        Clause::Values => return Slot::Value,
        Clause::Set => return Slot::Other,
        _ => {}
    }
    if let Some((p, Kind::Word)) = prev
        && matches!(p, "limit" | "offset")
    {
        return Slot::Page;
    }
    if clause != Clause::Predicate {
        return Slot::Other;
    }
    if between {
        return Slot::Range;
    }
    match prev {
        Some(("=", Kind::Op)) => return Slot::Key,
        Some(("<" | ">" | "<=" | ">=", Kind::Op)) => return Slot::Range,
        // `IN (` or `ANY(` / `ANY(ARRAY[`: list elements are keys.
        Some(("(", Kind::Open) | (",", Kind::Comma) | ("[", Kind::OpenBracket))
            if in_key_list(out) =>
        {
            return Slot::Key;
        }
        _ => {}
    }
    // `? = col`: a key compared the other way round.
    if next_is_eq {
        return Slot::Key;
    }
    Slot::Other
}

fn next_is_eq(tokens: &[Token], i: usize, sql: &str) -> bool {
    tokens
        .get(i + 1)
        .is_some_and(|t| t.kind == Kind::Op && t.text(sql) == "=")
}

/// Whether the innermost open `(`/`[` belongs to `IN (`, `ANY(` or `ANY(ARRAY[`.
fn in_key_list(out: &[Out<'_>]) -> bool {
    let mut depth = 0i32;
    for (idx, o) in out.iter().enumerate().rev() {
        match o {
            Out::Text(_, Kind::Close | Kind::CloseBracket) => depth += 1,
            Out::Text(_, Kind::Open | Kind::OpenBracket) => {
                if depth == 0 {
                    let before = idx.checked_sub(1).and_then(|b| out.get(b));
                    return match before {
                        Some(Out::Text(w, Kind::Word)) => {
                            matches!(w.as_ref(), "in" | "any" | "some")
                                || (w == "array"
                                    && {
                                        let b2 = idx.checked_sub(2).and_then(|b| out.get(b));
                                        let b3 = idx.checked_sub(3).and_then(|b| out.get(b));
                                        matches!(b2, Some(Out::Text(p, Kind::Open)) if p == "(")
                                            && matches!(b3, Some(Out::Text(w, Kind::Word)) if matches!(w.as_ref(), "any" | "some"))
                                    })
                        }
                        _ => false,
                    };
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    false
}

fn note_key_column(out: &[Out<'_>], slot: Slot, key_column: &mut Option<String>) {
    if slot != Slot::Key || key_column.is_some() {
        return;
    }
    // `col = ?`, `col IN (?`, `col = ANY(?` : walk back to the identifier.
    let mut back = 0;
    while let Some((t, k)) = last_text(out, back) {
        match k {
            Kind::Word if !matches!(t, "in" | "any" | "some" | "array" | "not") => {
                *key_column = Some(t.to_string());
                return;
            }
            Kind::Quoted => {
                *key_column = Some(t.to_string());
                return;
            }
            Kind::Close | Kind::Literal | Kind::Param => return,
            _ => back += 1,
        }
        if back > 6 {
            return;
        }
    }
}

struct SlotSink<'s> {
    key_values: &'s mut u64,
    all_values: &'s mut u64,
    has_key_slot: &'s mut bool,
    has_range: &'s mut bool,
}

fn push_slot(out: &mut Vec<Out<'_>>, slot: Slot, value: &str, sink: &mut SlotSink<'_>) {
    *sink.all_values = fnv(fnv(*sink.all_values, value.as_bytes()), &[0xff]);
    match slot {
        Slot::Key | Slot::Value => {
            *sink.has_key_slot = true;
            *sink.key_values = fnv(fnv(*sink.key_values, value.as_bytes()), &[0xff]);
        }
        Slot::Range => *sink.has_range = true,
        Slot::Page | Slot::Other => {}
    }
    out.push(Out::Slot);
}

/// After a `)` or `]`: if the group holds only placeholders and commas (and
/// casts of placeholders) and follows `IN`, `ANY` or `ARRAY`, collapse it to one
/// placeholder.
fn collapse_list(out: &mut Vec<Out<'_>>) {
    let close = out.len() - 1;
    let (open_text, want) = match &out[close] {
        Out::Text(_, Kind::Close) => ("(", Kind::Open),
        Out::Text(_, Kind::CloseBracket) => ("[", Kind::OpenBracket),
        _ => return,
    };
    // Find the matching opener, checking the contents as we go.
    let mut idx = close;
    let mut only_slots = true;
    let mut slots = 0;
    loop {
        if idx == 0 {
            return;
        }
        idx -= 1;
        match &out[idx] {
            Out::Text(t, k) if *k == want && t == open_text => break,
            Out::Slot => slots += 1,
            Out::Text(_, Kind::Comma | Kind::Cast) => {}
            // The type of a `?::int` cast inside the list.
            Out::Text(_, Kind::Word)
                if idx > 0 && matches!(out[idx - 1], Out::Text(_, Kind::Cast)) => {}
            _ => {
                only_slots = false;
                break;
            }
        }
    }
    if !only_slots || slots == 0 {
        return;
    }
    let before_word = match idx.checked_sub(1).map(|b| &out[b]) {
        Some(Out::Text(w, Kind::Word)) => Some(w.to_string()),
        _ => None,
    };
    let collapsible = before_word
        .as_deref()
        .is_some_and(|w| matches!(w, "in" | "any" | "some" | "array"));
    if !collapsible {
        return;
    }
    out.truncate(idx + 1);
    out.push(Out::Slot);
    out.push(if want == Kind::Open {
        Out::Text(std::borrow::Cow::Borrowed(")"), Kind::Close)
    } else {
        Out::Text(std::borrow::Cow::Borrowed("]"), Kind::CloseBracket)
    });
    // `ANY(ARRAY[?])` → `ANY(?)`: one array of keys either way.
    if want == Kind::OpenBracket && before_word.as_deref() == Some("array") {
        let array_at = idx - 1;
        out.truncate(array_at);
        out.push(Out::Slot);
    }
}

fn render(out: &[Out<'_>]) -> String {
    let mut s = String::with_capacity(out.len() * 6);
    let mut prev: Option<Kind> = None;
    let mut prev_word_is_fn = false;
    for o in out {
        let (text, kind) = match o {
            Out::Text(t, k) => (t.as_ref(), *k),
            Out::Slot => ("?", Kind::Literal),
        };
        let space = match (prev, kind) {
            (None, _) => false,
            (Some(Kind::Open | Kind::OpenBracket | Kind::Dot | Kind::Cast), _) => false,
            (_, Kind::Close | Kind::CloseBracket | Kind::Comma | Kind::Dot | Kind::Cast) => false,
            (_, Kind::Semicolon) => false,
            (Some(Kind::Word | Kind::Quoted), Kind::Open | Kind::OpenBracket) => !prev_word_is_fn,
            _ => true,
        };
        if space {
            s.push(' ');
        }
        s.push_str(text);
        prev_word_is_fn = match kind {
            Kind::Word => !is_spaced_keyword(text),
            Kind::Quoted => true,
            _ => false,
        };
        prev = Some(kind);
    }
    s
}

/// Keywords followed by a space before `(`: `in (`, `values (`, `as (`.
fn is_spaced_keyword(w: &str) -> bool {
    matches!(
        w,
        "in" | "values"
            | "as"
            | "and"
            | "or"
            | "not"
            | "exists"
            | "from"
            | "join"
            | "where"
            | "on"
            | "select"
            | "into"
            | "using"
            | "set"
            | "returning"
            | "conflict"
            | "by"
            | "then"
            | "else"
            | "when"
            | "union"
            | "all"
            | "lateral"
            | "with"
            | "over"
            | "filter"
            | "within"
            | "partition"
            | "table"
            | "is"
            | "between"
            | "like"
            | "ilike"
            | "case"
            | "do"
            | "update"
            | "distinct"
    )
}
