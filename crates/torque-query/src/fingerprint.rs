//! SQL fingerprints: which statements are the same shape.
//!
//! The rules are the project's query contract (docs/query.md): literals and bind
//! parameters become one placeholder `?`; an `IN (...)` list of constants of any
//! length, and `ANY(ARRAY[...])` of constants, collapse to one slot (a
//! constant as PostgreSQL 18's pg_stat_statements squashes one: a literal,
//! signed, typed or cast, `date '2024-01-01'`, `CAST(? AS date)`, `?::text`,
//! `NULL`, or a sub-array of constants); keyword
//! case, white space, comments and a trailing `;` do not matter; unquoted
//! identifiers fold to lower case, quoted ones keep their case; schema
//! qualifiers are dropped; aliases are replaced by the relation they stand for;
//! savepoint names do not matter.
//!
//! The same pass records what the N+1 detector needs: the statement's kind, the
//! tables it touches, and the values in its equality, IN/ANY and VALUES slots.

#[cfg(test)]
mod differential;
pub(crate) mod keywords;

use crate::lexer::{KIND_COUNT, Kind, Token, tokenize};
use keywords::{Clause, clause_of, flags_of, folded_key, kw, tag, text_of};

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
    /// A stable 64-bit hash of [`normalized`](Self::normalized) (XXH3-64,
    /// seed 0): the same across processes, machines and runs.
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
    /// `ORDER BY ... OFFSET` paging or a range predicate under `ORDER BY ...
    /// LIMIT`.
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
    with_scratch(sql, analyze_with::<false>).fingerprint
}

/// One normalized output token: a slice of the input (or of a static string)
/// rendered by kind, or a placeholder.
#[derive(Debug, Clone, Copy)]
struct Out<'a> {
    text: &'a str,
    kind: Kind,
    tags: u16,
    slot: bool,
    /// A word whose text holds no ASCII upper case: rendered as it is.
    lower: bool,
}

impl<'a> Out<'a> {
    fn text(text: &'a str, kind: Kind) -> Self {
        Self {
            text,
            kind,
            tags: 0,
            slot: false,
            lower: true,
        }
    }

    /// A word token: a keyword as its lower-case text, an identifier as
    /// written (lower-cased when rendered).
    fn word(sql: &'a str, t: &Token) -> Self {
        let (text, lower) = match t.kw {
            0 => (t.text(sql), !t.upper),
            kw => (text_of(kw), true),
        };
        Self {
            text,
            kind: Kind::Word,
            tags: flags_of(t.kw),
            slot: false,
            lower,
        }
    }

    /// A word known to be lower case (a plain quoted identifier, unquoted).
    fn lower_word(text: &'a str) -> Self {
        Self {
            text,
            kind: Kind::Word,
            tags: flags_of(keywords::id_of(text)),
            slot: false,
            lower: true,
        }
    }

    const SLOT: Out<'static> = Out {
        text: "?",
        kind: Kind::Literal,
        tags: 0,
        slot: true,
        lower: true,
    };
}

/// An open `(` or `[` in the output.
#[derive(Debug, Clone, Copy)]
struct Frame {
    clause: Clause,
    /// Index of the opener in the output.
    open: usize,
    /// The group is `IN (`, `ANY(`, `SOME(` or `ANY(ARRAY[`: its elements are keys.
    key_list: bool,
    /// The word before the opener allows collapsing (`in`, `any`, `some`, `array`).
    collapsible: bool,
    /// The word before the opener is `array`.
    after_array: bool,
    /// Only placeholders, commas and casts so far.
    only_slots: bool,
    slots: u32,
    /// The statement's own parentheses (around it, or around a set
    /// operation's operand), inside no other kind: its ORDER BY, LIMIT and
    /// OFFSET are the statement's, not a window's, an aggregate's or a
    /// subquery's.
    top: bool,
}

/// The seed of the value hashes.
const VALUES_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds one value's hash into a running hash of a sequence: the order
/// matters, and no value can stand in for two.
fn fold(acc: u64, value: u64) -> u64 {
    (acc ^ value)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29)
}

/// `"users"` is the same identifier as `users`; `"Users"` is not.
///
/// Plain is what an unquoted name folds to: PostgreSQL lower-cases only
/// ASCII letters (in UTF-8), so non-ASCII characters and, after the first
/// character, digits and `$` are plain too (`"café"` is `café`, `"a$b"`
/// is `a$b`).
fn unquote_if_plain(quoted: &str) -> Option<&str> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes = inner.bytes();
    let first = bytes.next()?;
    let plain = (first.is_ascii_lowercase() || first == b'_' || first >= 0x80)
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$' || b >= 0x80
        });
    plain.then_some(inner)
}

/// An identifier token as emitted: a word (lower-cased when rendered) or a
/// quoted identifier whose quotes change nothing, unquoted.
fn ident_out<'a>(sql: &'a str, t: &Token) -> Out<'a> {
    match t.kind {
        Kind::Quoted => {
            let text = t.text(sql);
            match unquote_if_plain(text) {
                Some(inner) => Out::lower_word(inner),
                None => Out::text(text, Kind::Quoted),
            }
        }
        _ => Out::word(sql, t),
    }
}

/// The identifier's canonical text, owned (for table names).
fn ident_string(sql: &str, t: &Token) -> String {
    let text = t.text(sql);
    match t.kind {
        Kind::Quoted => unquote_if_plain(text).unwrap_or(text).to_string(),
        // The lexer knows whether there is anything to lower-case.
        _ if t.upper => text.to_ascii_lowercase(),
        _ => text.to_string(),
    }
}

/// Two identifier tokens name the same thing.
fn same_ident(sql: &str, a: &Token, b: &Token) -> bool {
    if a.kind == Kind::Word && b.kind == Kind::Word {
        // The common case, `u.id` against the alias `u`: bytes, no unquoting.
        let bytes = sql.as_bytes();
        let range = |t: &Token| t.start as usize..t.end as usize;
        return match (bytes.get(range(a)), bytes.get(range(b))) {
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            _ => false,
        };
    }
    let canon = |t: &Token| -> (bool, &str) {
        let text = t.text(sql);
        match t.kind {
            Kind::Quoted => match unquote_if_plain(text) {
                Some(inner) => (false, inner),
                None => (true, text),
            },
            _ => (false, text),
        }
    };
    let ((qa, ta), (qb, tb)) = (canon(a), canon(b));
    if qa || qb {
        qa == qb && ta == tb
    } else {
        ta.eq_ignore_ascii_case(tb)
    }
}

/// An alias found in pass 1 and the relation it stands for.
#[derive(Debug, Clone, Copy)]
struct Alias<'a> {
    /// The alias token.
    token: usize,
    /// The alias's canonical text folded into one word (see [`folded_key`]),
    /// when it has at most eight bytes: most aliases (`o`, `u`, `li`) are
    /// then found by one comparison.
    key: Option<u64>,
    /// The relation as it is written out, in place of the alias.
    out: Out<'a>,
    /// The tokens the alias is visible in, `start..end`: the query that
    /// declares it (a subquery's parentheses, one operand of a set
    /// operation, or the whole statement), subqueries inside it included.
    start: u32,
    end: u32,
    /// The parenthesis depth of that query, while its end is not known.
    depth: u32,
}

/// The alias named `matches` that is visible at token `i`: of those whose
/// query holds `i`, the innermost (scopes nest, so the one that starts last).
///
/// `scoped` false: no two aliases share a name, so the only one named so
/// is the one (a reference out of its alias's query is no valid SQL).
fn alias_at<'s, 'a>(
    aliases: &'s [Alias<'a>],
    scoped: bool,
    i: usize,
    matches: impl Fn(&Alias<'a>) -> bool,
) -> Option<&'s Alias<'a>> {
    if !scoped {
        return aliases.iter().find(|a| matches(a));
    }
    let mut best: Option<&Alias<'a>> = None;
    for a in aliases {
        if (a.start as usize) <= i
            && i < a.end as usize
            && best.is_none_or(|b| a.start > b.start)
            && matches(a)
        {
            best = Some(a);
        }
    }
    best
}

/// Whether the identifier `tokens[i]` is where a bare alias can stand:
/// an element of a list or of a call's arguments (after `(` or `,`), an
/// operand after a keyword (`SELECT u`, `WHERE u IS NULL`) or the relation
/// of a lock (`OF u`). The cheap test before [`bare_alias`]: not after a
/// `.`, a relation's keyword (`FROM users`), an operator or another name.
#[inline(always)]
fn may_be_bare_alias(sql: &str, tokens: &[Token], i: usize) -> bool {
    let Some(before) = i.checked_sub(1).and_then(|p| tokens.get(p)) else {
        return false;
    };
    match before.kind {
        Kind::Open | Kind::Comma => true,
        // `IS NULL`: a null test's `NULL` (no keyword id) is no alias.
        Kind::Word if before.kw != 0 => {
            flags_of(before.kw) & tag::OPERAND_POS != 0 && before.kw != kw!("is")
        }
        Kind::Word => before.end - before.start == 2 && before.text(sql).eq_ignore_ascii_case("of"),
        _ => false,
    }
}

/// The alias that the identifier `tokens[i]`, standing alone, names: a
/// whole-row reference (`row_to_json(u)`, `SELECT u`) or a locked relation
/// (`FOR UPDATE OF u`). Not a qualified name's part (`x.u`, `u.x`), a
/// call (`u(`), a type (`::u`), a column alias (`AS u`) or a CTE's name
/// (`u AS (`); the caller leaves out `SET` and `VALUES`, whose names are
/// columns (`UPDATE t a SET a = 1`), and `ORDER BY` and `GROUP BY`, whose
/// names may be output columns' (`count(*) AS c ... ORDER BY c`). Out of
/// line: only statements with aliases get here.
#[cold]
#[inline(never)]
fn bare_alias<'s, 'a>(
    sql: &str,
    tokens: &[Token],
    i: usize,
    aliases: &'s [Alias<'a>],
    scoped: bool,
) -> Option<&'s Alias<'a>> {
    let before = i.checked_sub(1).and_then(|p| tokens.get(p));
    if before.is_some_and(|b| matches!(b.kind, Kind::Dot | Kind::Cast) || b.kw == kw!("as")) {
        return None;
    }
    let after = tokens.get(i + 1);
    if after.is_some_and(|a| matches!(a.kind, Kind::Dot | Kind::Open) || a.kw == kw!("as")) {
        return None;
    }
    let t = &tokens[i];
    let alias = match folded_key(sql.as_bytes(), t.start as usize, t.end as usize, t.upper) {
        Some(key) if t.kind == Kind::Word => alias_at(aliases, scoped, i, |a| a.key == Some(key)),
        _ => alias_at(aliases, scoped, i, |a| same_ident(sql, &tokens[a.token], t)),
    }?;
    // The clause it is in, at its own level: not ORDER BY or GROUP BY. Only
    // for a name that is an alias's, and at most [`MAX_CLAUSE_LOOK_BACK`]
    // tokens back (a longer walk leaves the name as written), so a long
    // list of names stays linear.
    let mut nested = 0usize;
    for b in tokens[i.saturating_sub(MAX_CLAUSE_LOOK_BACK)..i]
        .iter()
        .rev()
    {
        match b.kind {
            Kind::Close | Kind::CloseBracket => nested += 1,
            Kind::Open | Kind::OpenBracket if nested == 0 => return Some(alias),
            Kind::Open | Kind::OpenBracket => nested -= 1,
            Kind::Word if nested == 0 && clause_of(b.kw).is_some() => {
                return (b.kw != kw!("order") && b.kw != kw!("group")).then_some(alias);
            }
            _ => {}
        }
    }
    // The statement's start, or too far back to tell.
    (i <= MAX_CLAUSE_LOOK_BACK).then_some(alias)
}

/// How far [`bare_alias`] looks back for the clause a name is in.
const MAX_CLAUSE_LOOK_BACK: usize = 256;

/// Where the query holding token `i` starts, `up` parentheses out of the
/// group `i` is in: its `(`, or the set operator that begins its operand
/// (`UNION SELECT ...`). Only aliases declared in a subquery get here.
#[cold]
#[inline(never)]
fn query_start(tokens: &[Token], i: usize, up: usize) -> u32 {
    let mut up = up;
    let mut nested = 0usize;
    for j in (0..i).rev() {
        let t = &tokens[j];
        match t.kind {
            Kind::Close | Kind::CloseBracket => nested += 1,
            Kind::Open | Kind::OpenBracket if nested > 0 => nested -= 1,
            Kind::Open | Kind::OpenBracket if up == 0 => return j as u32,
            Kind::Open | Kind::OpenBracket => up -= 1,
            Kind::Word
                if nested == 0
                    && up == 0
                    && (t.kw == kw!("union")
                        || t.kw == kw!("intersect")
                        || t.kw == kw!("except")) =>
            {
                return j as u32;
            }
            _ => {}
        }
    }
    0
}

/// Most relations of a statement [`number_instances`] compares (it is
/// quadratic in them).
const MAX_INSTANCES: usize = 64;

/// For each alias of a relation used more than once where the alias is
/// declared, its index and the name written in its place: `relation#k`,
/// the alias's use being the k-th of those in view (the enclosing queries'
/// uses first, then its own query's in order), for k >= 2. Out of line:
/// only statements that name a relation twice get here.
#[cold]
#[inline(never)]
fn number_instances(
    sql: &str,
    tokens: &[Token],
    declarations: &[Declaration],
) -> Vec<(usize, String)> {
    let mut named = Vec::new();
    if declarations.len() > MAX_INSTANCES {
        return named;
    }
    // Each use's scope, `start..end`, as for aliases.
    let scopes: Vec<(usize, usize)> = declarations
        .iter()
        .map(|d| {
            let start = query_start(tokens, d.relation as usize, d.up as usize) as usize;
            (start, query_end(tokens, start))
        })
        .collect();
    for (a, (da, &(start_a, _))) in declarations.iter().zip(&scopes).enumerate() {
        if da.alias == u32::MAX {
            continue;
        }
        let rel_a = &tokens[da.relation as usize];
        let before = declarations
            .iter()
            .zip(&scopes)
            .enumerate()
            .filter(|&(b, (db, &(start_b, end_b)))| {
                let at = da.relation as usize;
                b != a
                    && start_b <= at
                    && at < end_b
                    && (start_b < start_a || (start_b == start_a && db.relation < da.relation))
                    && same_ident(sql, &tokens[db.relation as usize], rel_a)
            })
            .count();
        if before > 0 {
            named.push((
                da.alias as usize,
                format!("{}#{}", ident_string(sql, rel_a), before + 1),
            ));
        }
    }
    named
}

/// Where the query starting at token `start` (see [`query_start`]) ends:
/// at the `)` that closes its `(`, or at the next set operator or the
/// enclosing group's `)` after an operand that starts with one, or at the
/// statement's end.
fn query_end(tokens: &[Token], start: usize) -> usize {
    let opened = tokens.get(start).is_some_and(|t| t.kind == Kind::Open);
    let mut nested = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(start + 1) {
        match t.kind {
            Kind::Open | Kind::OpenBracket => nested += 1,
            Kind::Close | Kind::CloseBracket if nested > 0 => nested -= 1,
            Kind::Close | Kind::CloseBracket => return j,
            Kind::Word
                if !opened
                    && nested == 0
                    && (t.kw == kw!("union")
                        || t.kw == kw!("intersect")
                        || t.kw == kw!("except")) =>
            {
                return j;
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Whether two of `aliases` have the same name.
#[cold]
#[inline(never)]
fn duplicate_alias(sql: &str, tokens: &[Token], aliases: &[Alias<'_>]) -> bool {
    // Many aliases, all with keys: a set, so that a statement of thousands
    // of aliases (a long `UNION ALL` of aliased queries) stays linear.
    if aliases.len() > 16 && aliases.iter().all(|a| a.key.is_some()) {
        let mut seen = std::collections::HashSet::with_capacity(aliases.len());
        return !aliases.iter().all(|a| seen.insert(a.key));
    }
    aliases.iter().enumerate().any(|(n, a)| {
        aliases[..n].iter().any(|b| match (a.key, b.key) {
            (Some(x), Some(y)) => x == y,
            _ => same_ident(sql, &tokens[a.token], &tokens[b.token]),
        })
    })
}

/// Ends, at token `i`, the scope of the aliases of the query at `depth`.
/// The scope's aliases are the latest declared since its start, so the
/// walk back stops at the first alias declared before that: a long `UNION
/// ALL` of aliased queries stays linear.
#[cold]
#[inline(never)]
fn end_scope(aliases: &mut [Alias<'_>], depth: usize, i: usize) {
    let mut start = None;
    for a in aliases.iter_mut().rev() {
        if start.is_some_and(|s| (a.token as u32) < s) {
            break;
        }
        if a.depth as usize == depth && a.end == u32::MAX {
            start.get_or_insert(a.start);
            a.end = i as u32;
            a.depth = u32::MAX;
        }
    }
}

/// The canonical text of an identifier token (lower-cased word, or a plain
/// quoted identifier unquoted), folded by [`folded_key`] when it is short.
fn ident_key(sql: &str, t: &Token) -> Option<u64> {
    let (start, end, upper) = match t.kind {
        Kind::Quoted => {
            // Plain means lower case already.
            let inner = unquote_if_plain(t.text(sql))?;
            (
                t.start as usize + 1,
                t.start as usize + 1 + inner.len(),
                false,
            )
        }
        _ => (t.start as usize, t.end as usize, t.upper),
    };
    folded_key(sql.as_bytes(), start, end, upper)
}

fn is_ident(t: &Token) -> bool {
    matches!(t.kind, Kind::Word | Kind::Quoted)
}

/// Buffers reused from one call to the next on a thread, so a fingerprint
/// allocates only what it returns.
#[derive(Default)]
struct Scratch {
    tokens: Vec<Token>,
    /// The lexer's marks (see [`tokenize`]).
    marks: Vec<u32>,
    /// Indices of the tokens pass 2 skips (schema qualifiers, `AS`,
    /// aliases), in increasing order: pass 1 finds them left to right.
    drops: Vec<u32>,
    frames: Vec<Frame>,
    /// Kept empty between calls, like `out`.
    aliases: Vec<Alias<'static>>,
    /// The output tokens' buffer, kept empty between calls (its items borrow
    /// each call's input, so only the allocation is kept: see [`recycle`]).
    out: Vec<Out<'static>>,
    /// [`SlotState::keys`], kept empty between calls.
    keys: Vec<KeySlot>,
    /// [`SlotState::range_columns`], kept empty between calls.
    range_columns: Vec<Column>,
    /// Every relation pass 1 found (see [`Declaration`]).
    declarations: Vec<Declaration>,
}

/// A relation named in a statement, for telling apart two uses of one
/// relation (a self-join).
#[derive(Debug, Clone, Copy)]
struct Declaration {
    /// The relation's name token.
    relation: u32,
    /// Parentheses between it and the group of the query that declares it.
    up: u32,
    /// Its alias's index in the alias list, or `u32::MAX`.
    alias: u32,
}

/// An empty vector of another lifetime on the same allocation (the standard
/// library collects a `Vec`'s `into_iter` back into its own buffer when the
/// item layouts match; were it not to, this would merely allocate).
#[expect(
    clippy::unnecessary_filter_map,
    reason = "the closure changes the item's lifetime; it never yields"
)]
fn recycle<'b>(mut v: Vec<Out<'_>>) -> Vec<Out<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// [`recycle`] for the alias buffer.
#[expect(
    clippy::unnecessary_filter_map,
    reason = "the closure changes the item's lifetime; it never yields"
)]
fn recycle_aliases<'b>(mut v: Vec<Alias<'_>>) -> Vec<Alias<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Above this many tokens the buffers are released after use, so one huge
/// statement does not pin its memory to the thread.
const SCRATCH_KEEP: usize = 1 << 14;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The fingerprint and what the detector needs to know about the values.
pub(crate) fn analyze(sql: &str) -> Analysis {
    with_scratch(sql, analyze_with::<true>)
}

fn with_scratch(sql: &str, f: fn(&str, &mut Scratch) -> Analysis) -> Analysis {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let a = f(sql, &mut scratch);
            if scratch.tokens.capacity() > SCRATCH_KEEP {
                *scratch = Scratch::default();
            }
            a
        }
        Err(_) => f(sql, &mut Scratch::default()),
    })
}

/// `VALUES`: with `VALUES` false, only the fingerprint is computed (the
/// value hashes, slot kinds, paging and row counts stay at their defaults),
/// which is all [`fingerprint`] returns.
fn analyze_with<const VALUES: bool>(sql: &str, scratch: &mut Scratch) -> Analysis {
    let Scratch {
        tokens,
        marks,
        drops,
        frames,
        aliases: alias_buffer,
        out: out_buffer,
        keys: keys_buffer,
        range_columns: range_buffer,
        declarations,
    } = scratch;
    tokens.clear();
    marks.clear();
    tokenize(sql, tokens, marks);
    // A trailing `;` (or several) does not matter.
    while tokens.last().is_some_and(|t| t.kind == Kind::Semicolon) {
        tokens.pop();
    }
    let tokens: &[Token] = tokens;
    // Keyword ids come from the lexer: keyword tests compare bytes.
    let word = |i: usize| -> u8 { tokens.get(i).map_or(0, |t| t.kw) };
    let flags = |i: usize| -> u16 { flags_of(word(i)) };

    // Pass 1: relation references, their schema qualifiers and aliases.
    let n = tokens.len();
    drops.clear();
    declarations.clear();
    let mut tables: Vec<String> = Vec::new();
    // A relation named twice (a self-join) repeats.
    let mut repeated = false;
    // Names of relations written in place of aliases of a self-join
    // (`employees#2`): the aliases below borrow them.
    let mut instance_names: Vec<String> = Vec::new();
    let mut aliases: Vec<Alias<'_>> = recycle_aliases(std::mem::take(alias_buffer));
    let mut kind = StatementKind::Utility;
    let mut kind_found = false;
    {
        let mut depth = 0usize;
        let mut expect_relation = false;
        // The relation expected is a FROM list's or a JOIN's, which may be
        // a parenthesized join: `FROM (users u JOIN posts p ON ...)`.
        let mut join_may_open = false;
        // Bit `d`: a FROM list is open at parenthesis depth `d` (its commas
        // separate relations). A subquery in it has its own, and the outer
        // list goes on after it: `FROM a, (SELECT ... FROM c) s, b`.
        let mut from_lists: u64 = 0;
        // Bit `d`: the group at depth `d` holds a SELECT, UPDATE or DELETE,
        // whose FROM lists relations; the FROM of `EXTRACT(EPOCH FROM x)`
        // or `SUBSTRING(s FROM 2)` is an argument's.
        let mut verbs: u64 = 0;
        let in_from_list = |lists: u64, depth: usize| depth < 64 && lists & (1 << depth) != 0;
        // Bit `d`: the group at depth `d` is a query (SELECT, INSERT,
        // UPDATE, DELETE, MERGE), whose aliases are its own; a
        // parenthesized join's are the enclosing query's.
        let mut queries: u64 = 1;
        // Where the statement's query (or the current operand of its set
        // operation) starts; a subquery's start is looked up when one of
        // its aliases is found (see `query_start`).
        let mut top_start = 0u32;
        // Bit `d`: an alias of the query at depth `d` has no end yet.
        let mut open_scopes: u64 = 0;
        let mut next_mark = 0;
        // `(SELECT ...) UNION (SELECT ...)`: the statement starts inside
        // its opening parentheses (their closers leave the depth at 0), so
        // its verb is the first word at depth 0.
        let mut i = tokens.iter().take_while(|t| t.kind == Kind::Open).count();
        while i < n {
            if !expect_relation && i > 0 {
                // Outside a relation reference only keywords, parentheses
                // and the commas of a FROM list change anything: jump to the
                // next of those among the tokens the lexer marked.
                let from_list = in_from_list(from_lists, depth);
                i = loop {
                    let Some(&m) = marks.get(next_mark) else {
                        break n;
                    };
                    let m = m as usize;
                    if m < i || (!from_list && tokens.get(m).is_some_and(|t| t.kind == Kind::Comma))
                    {
                        next_mark += 1;
                        continue;
                    }
                    break m;
                };
                if i >= n {
                    break;
                }
            }
            let t = &tokens[i];
            match t.kind {
                // A bracket nests like a parenthesis: the commas of
                // `ON x = ARRAY[1, 2]` separate no relations.
                Kind::Open | Kind::OpenBracket => {
                    depth += 1;
                    if depth < 64 {
                        verbs &= !(1 << depth);
                        queries &= !(1 << depth);
                    }
                }
                Kind::Close | Kind::CloseBracket => {
                    if depth < 64 && open_scopes & (1 << depth) != 0 {
                        end_scope(&mut aliases, depth, i);
                        open_scopes &= !(1 << depth);
                    }
                    depth = depth.saturating_sub(1);
                    // The lists opened inside the group end with it.
                    if depth < 63 {
                        from_lists &= (2 << depth) - 1;
                    }
                }
                _ => {}
            }
            // Identifiers (keyword id 0) skip the keyword tests: most words are.
            if t.kind == Kind::Word && (t.kw != 0 || i == 0) {
                let w = t.kw;
                if !kind_found && depth == 0 {
                    let k = if w == kw!("select") || w == kw!("values") || w == kw!("table") {
                        Some(StatementKind::Select)
                    } else if w == kw!("insert") {
                        Some(StatementKind::Insert)
                    } else if w == kw!("update") {
                        Some(StatementKind::Update)
                    } else if w == kw!("delete") {
                        Some(StatementKind::Delete)
                    } else if w == kw!("merge") {
                        Some(StatementKind::Merge)
                    } else if w == kw!("with") || w == kw!("recursive") {
                        None
                    } else if i == 0 {
                        Some(StatementKind::Utility)
                    } else {
                        None
                    };
                    if let Some(k) = k {
                        kind = k;
                        kind_found = true;
                    }
                }
                // The clauses after a FROM list end it: their commas
                // (`ORDER BY a, b`, `RETURNING id, x`, an upsert's `ON
                // CONFLICT ... DO UPDATE SET a = .., b = ..` after an
                // `INSERT ... SELECT ... FROM s`) separate no relations.
                // (Not `ON`: a join's condition goes on to the list's next
                // relation.)
                if (w == kw!("where")
                    || w == kw!("group")
                    || w == kw!("having")
                    || w == kw!("window")
                    || w == kw!("order")
                    || w == kw!("limit")
                    || w == kw!("offset")
                    || w == kw!("fetch")
                    || w == kw!("for")
                    || w == kw!("returning")
                    || w == kw!("union")
                    || w == kw!("intersect")
                    || w == kw!("except")
                    || w == kw!("do"))
                    && depth < 64
                {
                    from_lists &= !(1 << depth);
                }
                if (w == kw!("select") || w == kw!("update") || w == kw!("delete")) && depth < 64 {
                    verbs |= 1 << depth;
                    queries |= 1 << depth;
                }
                if (w == kw!("insert") || w == kw!("merge")) && depth < 64 {
                    queries |= 1 << depth;
                }
                // Each operand of a set operation is a query of its own.
                if (w == kw!("union") || w == kw!("intersect") || w == kw!("except")) && depth < 64
                {
                    if open_scopes & (1 << depth) != 0 {
                        end_scope(&mut aliases, depth, i);
                        open_scopes &= !(1 << depth);
                    }
                    if depth == 0 {
                        top_start = i as u32;
                    }
                }
                let opens_relation = w == kw!("from")
                    || w == kw!("join")
                    || w == kw!("into")
                    || w == kw!("update")
                    || w == kw!("using");
                if opens_relation {
                    {
                        // `IS [NOT] DISTINCT FROM` compares values.
                        let distinct = w == kw!("from") && i > 0 && word(i - 1) == kw!("distinct");
                        // `ON CONFLICT ... DO UPDATE SET` updates no new relation.
                        let do_update = w == kw!("update") && i > 0 && word(i - 1) == kw!("do");
                        // `EXTRACT(EPOCH FROM x)`: no statement's FROM.
                        let argument = w == kw!("from") && depth < 64 && verbs & (1 << depth) == 0;
                        // `FOR UPDATE` locks rows.
                        let for_update = w == kw!("update")
                            && i > 0
                            && (word(i - 1) == kw!("for") || for_no_key(sql, tokens, i));
                        if !distinct && !do_update && !for_update && !argument {
                            expect_relation = true;
                            join_may_open = w == kw!("from") || w == kw!("join");
                            if w == kw!("from") && depth < 64 {
                                from_lists |= 1 << depth;
                            }
                        }
                        i += 1;
                        continue;
                    }
                }
                if expect_relation && (w == kw!("only") || w == kw!("lateral")) {
                    i += 1;
                    continue;
                }
            }
            if t.kind == Kind::Comma && in_from_list(from_lists, depth) {
                expect_relation = true;
                join_may_open = true;
                i += 1;
                continue;
            }
            if expect_relation
                && is_ident(t)
                && !(t.kind == Kind::Word && flags(i) & tag::CLAUSE != 0)
            {
                expect_relation = false;
                // Qualified name: ident (. ident)*
                let mut last = i;
                while tokens.get(last + 1).is_some_and(|d| d.kind == Kind::Dot)
                    && tokens.get(last + 2).is_some_and(is_ident)
                {
                    last += 2;
                }
                let after = last + 1;
                let into_columns = i > 0 && word(i - 1) == kw!("into");
                if tokens.get(after).is_some_and(|t| t.kind == Kind::Open) && !into_columns {
                    // A function in FROM (`generate_series(...)`): not a relation.
                    i = after;
                    continue;
                }
                // Schema (and catalog) qualifiers.
                for d in i..last {
                    drops.push(d as u32);
                }
                let relation = ident_string(sql, &tokens[last]);
                if tables.contains(&relation) {
                    repeated = true;
                } else {
                    tables.push(relation);
                }
                // The innermost query around (a parenthesized join's
                // relations are the enclosing query's).
                let scope_depth = if depth < 64 {
                    63 - (queries & (u64::MAX >> (63 - depth))).leading_zeros()
                } else {
                    0
                };
                declarations.push(Declaration {
                    relation: last as u32,
                    up: (depth - scope_depth as usize) as u32,
                    alias: u32::MAX,
                });
                // Alias: `AS a` or a bare non-clause word.
                let mut j = after;
                let has_as = word(j) == kw!("as");
                if has_as {
                    j += 1;
                }
                if let Some(a) = tokens.get(j)
                    && is_ident(a)
                    && !(a.kind == Kind::Word && flags(j) & tag::CLAUSE != 0)
                    && !(a.kind == Kind::Word && !has_as && flags(j) & tag::RESERVED_AFTER_REL != 0)
                {
                    // The innermost query around: its scope.
                    let (start, end, scope_depth) = if depth < 64 {
                        let d = scope_depth;
                        open_scopes |= 1 << d;
                        let start = if d == 0 {
                            top_start
                        } else {
                            query_start(tokens, i, depth - d as usize)
                        };
                        (start, u32::MAX, d)
                    } else {
                        (0, u32::MAX, u32::MAX)
                    };
                    if let Some(d) = declarations.last_mut() {
                        d.alias = aliases.len() as u32;
                    }
                    aliases.push(Alias {
                        token: j,
                        key: ident_key(sql, a),
                        out: ident_out(sql, &tokens[last]),
                        start,
                        end,
                        depth: scope_depth,
                    });
                    if has_as {
                        drops.push(after as u32);
                    }
                    drops.push(j as u32);
                    i = j + 1;
                    continue;
                }
                i = after;
                continue;
            }
            if expect_relation
                && join_may_open
                && t.kind == Kind::Open
                && tokens.get(i + 1).is_some_and(|n| {
                    // Not `(SELECT`, `(VALUES`, `(TABLE t)`: no keyword.
                    matches!(n.kind, Kind::Open | Kind::Quoted)
                        || (n.kind == Kind::Word && n.kw == 0)
                })
            {
                // A parenthesized join: its first relation comes next.
                i += 1;
                continue;
            }
            if expect_relation
                && !(t.kind == Kind::Word && (word(i) == kw!("only") || word(i) == kw!("lateral")))
            {
                // A subquery or something else: no relation here.
                expect_relation = false;
            }
            i += 1;
        }
    }

    // Aliases need their scopes only when two share a name.
    let scoped = aliases.len() > 1 && duplicate_alias(sql, tokens, &aliases);
    // A self-join: the aliases of the second and later uses of a relation
    // in view stand for `relation#2`, ... (the order of the uses decides,
    // never the aliases' names).
    if repeated && !aliases.is_empty() {
        let numbered = number_instances(sql, tokens, declarations);
        instance_names.extend(numbered.iter().map(|(_, name)| name.clone()));
        for ((alias, _), name) in numbered.iter().zip(&instance_names) {
            if let Some(a) = aliases.get_mut(*alias) {
                a.out = Out {
                    text: name,
                    kind: a.out.kind,
                    tags: 0,
                    slot: false,
                    lower: true,
                };
            }
        }
    }

    // Pass 2: emit normalized tokens, classify slots, collapse lists.
    let mut out: Vec<Out<'_>> = recycle(std::mem::take(out_buffer));
    out.reserve(n);
    frames.clear();
    let mut st = SlotState {
        key_values: VALUES_SEED,
        all_values: VALUES_SEED,
        key_params: false,
        has_key_slot: false,
        any_params: false,
        has_range: false,
        key_column: None,
        // Only the detector's analysis uses them.
        keys: if VALUES {
            std::mem::take(keys_buffer)
        } else {
            Vec::new()
        },
        range_columns: if VALUES {
            std::mem::take(range_buffer)
        } else {
            Vec::new()
        },
    };
    let mut clause = Clause::None;
    let mut has_order = false;
    let mut has_limit = false;
    let mut has_offset = false;
    let mut insert_rows = 0usize;
    let mut between_pending = false;
    // Bytes of relation names written in place of aliases.
    let mut alias_bytes = 0usize;

    let savepoint_stmt = (word(0) == kw!("savepoint") || word(0) == kw!("release"))
        || (word(0) == kw!("rollback") && (word(1) == kw!("to") || word(2) == kw!("to")));

    // The next dropped token (`usize::MAX`: none): `drops` is sorted, so
    // one comparison per token decides.
    let mut drops_left = drops.iter();
    let mut next_drop = drops_left.next().map_or(usize::MAX, |&d| d as usize);

    let mut i = 0;
    while i < n {
        if i >= next_drop {
            // `is_three_part` jumps: skip the drops it jumped over.
            while next_drop < i {
                next_drop = drops_left.next().map_or(usize::MAX, |&d| d as usize);
            }
            if next_drop == i {
                next_drop = drops_left.next().map_or(usize::MAX, |&d| d as usize);
                i += 1;
                continue;
            }
        }
        let t = &tokens[i];
        match t.kind {
            Kind::Word => {
                let w = t.kw;
                let mut is_bool = false;
                if w != 0 {
                    match ACTIONS[usize::from(w)] {
                        Action::None => {}
                        Action::Bool => is_bool = true,
                        // Only the statement's own: an ORDER BY in a
                        // window (`OVER (ORDER BY ...)`), an aggregate or
                        // a subquery orders no page.
                        Action::Order => has_order |= frames.iter().all(|f| f.top),
                        Action::Limit => has_limit |= frames.iter().all(|f| f.top),
                        Action::Offset => has_offset |= frames.iter().all(|f| f.top),
                        Action::Between => between_pending = true,
                        Action::Values => {
                            if VALUES && frames.is_empty() && kind == StatementKind::Insert {
                                insert_rows = count_values_rows(tokens, i + 1);
                            }
                        }
                    }
                    if let Some(c) = clause_of(w)
                        && !(w == kw!("from") && i > 0 && word(i - 1) == kw!("distinct"))
                    {
                        clause = c;
                    }
                }
                if savepoint_stmt && savepoint_word(&mut out, frames, w, i, tokens) {
                    i += 1;
                    continue;
                }
                if is_bool {
                    if VALUES {
                        let slot = classify(
                            &out,
                            frames,
                            clause,
                            between_pending,
                            next_is_eq(tokens, i, sql),
                            next_closes(tokens, i),
                        );
                        st.note(slot, t.text(sql), false, &out);
                    }
                    push(&mut out, frames, Out::SLOT);
                    i += 1;
                    continue;
                }
                // Both rewrites below need a `.` next: test it once.
                if tokens.get(i + 1).is_some_and(|d| d.kind == Kind::Dot) {
                    // Qualified reference `alias.col` → `relation.col`.
                    if !aliases.is_empty()
                        && let Some(alias) = match folded_key(
                            sql.as_bytes(),
                            t.start as usize,
                            t.end as usize,
                            t.upper,
                        ) {
                            // Equal keys: the same length and the same bytes up to
                            // ASCII case, which is what `same_ident` checks.
                            Some(key) => alias_at(&aliases, scoped, i, |a| a.key == Some(key)),
                            None => alias_at(&aliases, scoped, i, |a| {
                                same_ident(sql, &tokens[a.token], t)
                            }),
                        }
                    {
                        alias_bytes += alias.out.text.len();
                        push(&mut out, frames, alias.out);
                        i += 1;
                        continue;
                    }
                    // `schema.table.col` → `table.col`.
                    if is_three_part(tokens, i) {
                        i += 2;
                        continue;
                    }
                }
                // A bare alias: the relation's row (`row_to_json(u)`) or
                // the relation to lock (`FOR UPDATE OF u`).
                if w == 0
                    && !aliases.is_empty()
                    && may_be_bare_alias(sql, tokens, i)
                    && !matches!(clause, Clause::Set | Clause::Values)
                    && let Some(alias) = bare_alias(sql, tokens, i, &aliases, scoped)
                {
                    alias_bytes += alias.out.text.len();
                    push(&mut out, frames, alias.out);
                    i += 1;
                    continue;
                }
                // `null` has no keyword id (relations and aliases are
                // parsed as before): its length, inside a group, is the
                // cheap test before the out-of-line one.
                if w == 0
                    && t.end - t.start == 4
                    && !frames.is_empty()
                    && null_list_element(sql, tokens, i, &out, frames)
                {
                    // One more literal of the list (no sign, no range, no
                    // `? = col` can be around it: it is a whole element).
                    if VALUES {
                        let slot = classify(
                            &out,
                            frames,
                            clause,
                            between_pending,
                            false,
                            next_closes(tokens, i) || ends_cast_operand(&out, word(i + 1)),
                        );
                        st.note(slot, "null", false, &out);
                    }
                    push(&mut out, frames, Out::SLOT);
                } else {
                    push(&mut out, frames, Out::word(sql, t));
                }
            }
            Kind::Quoted => {
                if savepoint_stmt {
                    push(&mut out, frames, Out::SLOT);
                    i += 1;
                    continue;
                }
                if tokens.get(i + 1).is_some_and(|d| d.kind == Kind::Dot)
                    && let Some(alias) = alias_at(&aliases, scoped, i, |a| {
                        same_ident(sql, &tokens[a.token], t)
                    })
                {
                    alias_bytes += alias.out.text.len();
                    push(&mut out, frames, alias.out);
                    i += 1;
                    continue;
                }
                if is_three_part(tokens, i) {
                    i += 2;
                    continue;
                }
                if !aliases.is_empty()
                    && may_be_bare_alias(sql, tokens, i)
                    && !matches!(clause, Clause::Set | Clause::Values)
                    && let Some(alias) = bare_alias(sql, tokens, i, &aliases, scoped)
                {
                    alias_bytes += alias.out.text.len();
                    push(&mut out, frames, alias.out);
                    i += 1;
                    continue;
                }
                push(&mut out, frames, ident_out(sql, t));
            }
            Kind::Literal | Kind::Param => {
                // Fold a sign into the number: `= -5` and `= +5` are `= ?`.
                if out
                    .last()
                    .is_some_and(|o| o.kind == Kind::Op && matches!(o.text, "-" | "+"))
                    && unary_minus_position(&out)
                {
                    out.pop();
                }
                if VALUES {
                    let slot = classify(
                        &out,
                        frames,
                        clause,
                        between_pending,
                        next_is_eq(tokens, i, sql),
                        next_closes(tokens, i) || ends_cast_operand(&out, word(i + 1)),
                    );
                    if slot == Slot::Range && between_pending && word(i + 1) != kw!("and") {
                        between_pending = false;
                    }
                    if slot == Slot::Key && st.key_column.is_none() && next_is_eq(tokens, i, sql) {
                        // `? = col`: the column is on the right of the `=`.
                        st.key_column = column_after_eq(sql, tokens, i + 2);
                    }
                    let is_param = t.kind == Kind::Param;
                    st.note(
                        slot,
                        if is_param { "$" } else { t.text(sql) },
                        is_param,
                        &out,
                    );
                }
                push(&mut out, frames, Out::SLOT);
            }
            Kind::Open | Kind::OpenBracket => {
                let before = out.last().copied();
                let before_tags = before
                    .filter(|o| o.kind == Kind::Word)
                    .map_or(0, |o| o.tags);
                let after_array = before_tags & tag::ARRAY != 0;
                // `ANY(ARRAY[`: the bracket's elements are keys too.
                let array_in_any = after_array
                    && out.len() >= 3
                    && out[out.len() - 2].kind == Kind::Open
                    && out[out.len() - 3].tags & tag::ANY != 0;
                let key_list = before_tags & (tag::IN | tag::ANY) != 0 || array_in_any;
                let collapsible = before_tags & (tag::IN | tag::ANY | tag::ARRAY) != 0;
                let opener = if t.kind == Kind::Open { "(" } else { "[" };
                // At the statement's start, after another of its own
                // parentheses, or after a set operator (`UNION [ALL] (`).
                let set_op =
                    |w: u8| w == kw!("union") || w == kw!("intersect") || w == kw!("except");
                let top = t.kind == Kind::Open
                    && frames.iter().all(|f| f.top)
                    && (i == 0
                        || tokens[i - 1].kind == Kind::Open
                        || set_op(word(i - 1))
                        || ((word(i - 1) == kw!("all") || word(i - 1) == kw!("distinct"))
                            && i >= 2
                            && set_op(word(i - 2))));
                push(&mut out, frames, Out::text(opener, t.kind));
                frames.push(Frame {
                    clause,
                    open: out.len() - 1,
                    key_list,
                    collapsible,
                    after_array,
                    only_slots: true,
                    slots: 0,
                    top,
                });
                clause = clause_inside(clause);
            }
            Kind::Close | Kind::CloseBracket => {
                let closer = if t.kind == Kind::Close { ")" } else { "]" };
                match frames.pop() {
                    Some(frame) => {
                        clause = frame.clause;
                        let mut rows = false;
                        if frame.key_list && !frame.only_slots {
                            match collapse_rows(&mut out, frames, &frame, t.kind) {
                                Some(true) => {
                                    i += 1;
                                    continue;
                                }
                                Some(false) => rows = true,
                                None => {}
                            }
                        }
                        let constants = frame.collapsible
                            && !rows
                            && if frame.only_slots {
                                frame.slots > 0
                            } else {
                                // Typed literals, casts with a type
                                // modifier, sub-arrays: rarer, parsed here.
                                constant_list(
                                    &out[frame.open + 1..],
                                    frame.after_array && t.kind == Kind::CloseBracket,
                                )
                            };
                        if constants {
                            // A list of constants: one placeholder, whatever its length.
                            out.truncate(frame.open + 1);
                            if frame.after_array && t.kind == Kind::CloseBracket {
                                // `ARRAY[?]` → `?`: one array of keys either way.
                                out.truncate(frame.open - 1);
                                push(&mut out, frames, Out::SLOT);
                                i += 1;
                                continue;
                            }
                            out.push(Out::SLOT);
                        }
                        push(&mut out, frames, Out::text(closer, t.kind));
                    }
                    None => push(&mut out, frames, Out::text(closer, t.kind)),
                }
            }
            Kind::Op => push(&mut out, frames, Out::text(t.text(sql), t.kind)),
            // Punctuation has one spelling: no need to slice the input.
            Kind::Comma => push(&mut out, frames, Out::text(",", t.kind)),
            Kind::Dot => push(&mut out, frames, Out::text(".", t.kind)),
            Kind::Cast => push(&mut out, frames, Out::text("::", t.kind)),
            Kind::Semicolon => push(&mut out, frames, Out::text(";", t.kind)),
        }
        i += 1;
    }

    // An upper bound of the text's length, without a pass over `out`: every
    // output token stands for an input token at most as long (a keyword,
    // the same word; `?`, one value or a whole list), except relations
    // written in place of their alias; plus a space per token.
    let normalized = render(&out, sql.len() + alias_bytes + out.len());
    *out_buffer = recycle(out);
    *alias_buffer = recycle_aliases(aliases);
    let hash = xxhash_rust::xxh3::xxh3_64(normalized.as_bytes());
    // Pages have an order: `LIMIT $2 OFFSET $3` on an unordered look-up is
    // an ORM's boilerplate on every single-row fetch (Prisma's findUnique),
    // not a page.
    let paginated = has_order && (has_offset || (has_limit && st.has_range));
    if VALUES {
        if has_order && has_limit {
            st.drop_keyset_equalities();
        }
        st.keys.clear();
        st.range_columns.clear();
        *keys_buffer = std::mem::take(&mut st.keys);
        *range_buffer = std::mem::take(&mut st.range_columns);
    }
    Analysis {
        fingerprint: Fingerprint {
            hash,
            normalized,
            kind,
            tables,
        },
        key_values: st.key_values,
        key_params: st.key_params,
        has_key_slot: st.has_key_slot,
        all_values: st.all_values,
        any_params: st.any_params,
        paginated,
        insert_rows,
        key_column: st.key_column,
    }
}

/// What pass 2 notes about a keyword, beyond its clause.
#[derive(Debug, Clone, Copy)]
enum Action {
    None,
    /// `true`, `false`: a value.
    Bool,
    Order,
    /// `LIMIT`, `FETCH`.
    Limit,
    Offset,
    Between,
    Values,
}

/// Per keyword id (256 entries: no bounds check), its [`Action`]: one
/// look-up instead of a chain of comparisons for every keyword.
const ACTIONS: [Action; 256] = {
    let mut t = [Action::None; 256];
    t[kw!("true") as usize] = Action::Bool;
    t[kw!("false") as usize] = Action::Bool;
    t[kw!("order") as usize] = Action::Order;
    t[kw!("limit") as usize] = Action::Limit;
    t[kw!("fetch") as usize] = Action::Limit;
    t[kw!("offset") as usize] = Action::Offset;
    t[kw!("between") as usize] = Action::Between;
    t[kw!("values") as usize] = Action::Values;
    t
};

/// Pushes an output token, keeping the innermost frame's "only constants"
/// flag up to date.
fn push<'a>(out: &mut Vec<Out<'a>>, frames: &mut [Frame], o: Out<'a>) {
    if let Some(f) = frames.last_mut() {
        if o.slot {
            f.slots += 1;
        } else {
            let prev_cast = out.last().is_some_and(|p| p.kind == Kind::Cast);
            let ok = matches!(o.kind, Kind::Comma | Kind::Cast)
                // the type of a `?::int` cast
                || (o.kind == Kind::Word && prev_cast)
                // a sign, folded into the number that follows
                || (o.kind == Kind::Op && matches!(o.text, "-" | "+"));
            if !ok {
                f.only_slots = false;
            }
        }
    }
    out.push(o);
}

/// A word of a savepoint statement (`SAVEPOINT`, `RELEASE`, `ROLLBACK ...
/// TO`); returns whether it was written (or dropped) here. The name becomes
/// a placeholder; the optional words of `RELEASE [SAVEPOINT] x` and
/// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] x` are dropped (the same
/// statement either way); the other keywords are left to the caller. Out of
/// line: only savepoint statements get here.
#[cold]
#[inline(never)]
fn savepoint_word(
    out: &mut Vec<Out<'_>>,
    frames: &mut [Frame],
    w: u8,
    i: usize,
    tokens: &[Token],
) -> bool {
    let before = if i > 0 { tokens[i - 1].kw } else { 0 };
    let optional = if w == kw!("savepoint") {
        before == kw!("release") || before == kw!("to")
    } else if w == kw!("transaction") || w == kw!("work") {
        before == kw!("rollback")
    } else {
        false
    };
    if optional {
        return true;
    }
    let keyword = [
        kw!("savepoint"),
        kw!("release"),
        kw!("rollback"),
        kw!("to"),
        kw!("transaction"),
        kw!("work"),
    ]
    .contains(&w);
    if !keyword {
        push(out, frames, Out::SLOT);
    }
    !keyword
}

/// `(a, b) IN ((1, 2), (3, 4))`: a list of rows of constants is one row,
/// whatever its length, as a list of constants is one constant. Called when
/// a key list that is not all placeholders closes; rewrites `out` if it is
/// such a list: `Some(true)` if `ANY(ARRAY[(1, 2), ...])` became `ANY(?)`
/// (the closer is consumed, as for a list of constants), `Some(false)` if
/// the list became one row, `None` if it is no list of rows. Out of line:
/// the common statement never gets here.
#[cold]
#[inline(never)]
fn collapse_rows<'a>(
    out: &mut Vec<Out<'a>>,
    frames: &mut [Frame],
    frame: &Frame,
    closer: Kind,
) -> Option<bool> {
    let arity = row_list_arity(&out[frame.open + 1..])?;
    out.truncate(frame.open + 1);
    if frame.after_array && closer == Kind::CloseBracket {
        out.truncate(frame.open - 1);
        push(out, frames, Out::SLOT);
        return Some(true);
    }
    if arity == 1 {
        // `IN ((1), (2))` is `IN (1, 2)`.
        out.push(Out::SLOT);
        return Some(false);
    }
    out.push(Out::text("(", Kind::Open));
    for n in 0..arity {
        if n > 0 {
            out.push(Out::text(",", Kind::Comma));
        }
        out.push(Out::SLOT);
    }
    out.push(Out::text(")", Kind::Close));
    Some(false)
}

/// If `items` (the normalized inside of an `IN (...)` list) is one or more
/// parenthesized rows of constants (see [`constant`]), all of the same arity,
/// that arity; `None` otherwise: `(1 + 2)` is an expression, not a row of
/// two.
fn row_list_arity(items: &[Out<'_>]) -> Option<usize> {
    let mut arity = None;
    let mut at = 0;
    while at < items.len() {
        if arity.is_some() {
            // Rows are separated by commas.
            if items[at].kind != Kind::Comma {
                return None;
            }
            at += 1;
        }
        // `ROW(1, 2)` is the row `(1, 2)`.
        if items.get(at).is_some_and(is_row_word) {
            at += 1;
        }
        if items.get(at)?.kind != Kind::Open {
            return None;
        }
        at += 1;
        let mut elements = 0;
        loop {
            // One element: a constant (see `constant`).
            at = constant(items, at, false, 0)?;
            elements += 1;
            match items.get(at)?.kind {
                Kind::Comma => at += 1,
                Kind::Close => break,
                _ => return None,
            }
        }
        at += 1;
        if arity.is_some_and(|a| a != elements) {
            return None;
        }
        arity = Some(elements);
    }
    arity
}

/// Whether `items` (the normalized inside of an `IN (...)`, `ANY(...)` or
/// `ARRAY[...]`) is a comma-separated list of one or more constants (see
/// [`constant`]); `sub_arrays`: the list is an `ARRAY[...]`'s, whose
/// elements may be sub-arrays, `[1, 2]`.
///
/// Called when a list that is not all placeholders closes: out of line, the
/// common statement never gets here.
#[cold]
#[inline(never)]
fn constant_list(items: &[Out<'_>], sub_arrays: bool) -> bool {
    let mut at = 0;
    loop {
        let Some(end) = constant(items, at, sub_arrays, 0) else {
            return false;
        };
        match items.get(end) {
            None => return true,
            Some(o) if o.kind == Kind::Comma => at = end + 1,
            Some(_) => return false,
        }
    }
}

/// Nesting of parentheses and sub-arrays [`constant`] follows: deeper is
/// taken as no constant (the parse is recursive).
const CONSTANT_NESTING: u32 = 32;

/// Where the constant starting at `items[at]` ends, if one does: what
/// PostgreSQL 18's pg_stat_statements squashes in a list
/// (`IsSquashableConstant`: a constant, possibly cast). That is a
/// placeholder, possibly signed or parenthesized (`-1`, `(2)`), a typed
/// literal (`date ?`, `pg_catalog.date ?`, `timestamp(3) with time zone ?`,
/// `interval ? day to second`), `cast(constant as type)`, any of these with
/// `::type` casts after it (`?::varchar(10)`, `?::int[]`), and, with
/// `sub_arrays`, a sub-array of constants (`ARRAY[[1, 2], [3, 4]]`). A
/// column, a call or an operator makes it no constant.
fn constant(items: &[Out<'_>], mut at: usize, sub_arrays: bool, depth: u32) -> Option<usize> {
    if depth > CONSTANT_NESTING {
        return None;
    }
    let mut o = items.get(at)?;
    if o.kind == Kind::Op && !o.slot && matches!(o.text, "-" | "+") {
        at += 1;
        o = items.get(at)?;
    }
    let mut end = if o.slot {
        at + 1
    } else if o.kind == Kind::Open {
        let inner = constant(items, at + 1, false, depth + 1)?;
        (items.get(inner)?.kind == Kind::Close).then_some(inner + 1)?
    } else if o.kind == Kind::OpenBracket && sub_arrays {
        let mut p = at + 1;
        loop {
            p = constant(items, p, true, depth + 1)?;
            match items.get(p)?.kind {
                Kind::Comma => p += 1,
                Kind::CloseBracket => break p + 1,
                _ => return None,
            }
        }
    } else if o.kind == Kind::Word
        && o.text.eq_ignore_ascii_case("cast")
        && items.get(at + 1)?.kind == Kind::Open
    {
        let inner = constant(items, at + 2, false, depth + 1)?;
        let as_ = items.get(inner)?;
        if !(as_.kind == Kind::Word && !as_.slot && as_.text == "as") {
            return None;
        }
        let ty = type_name(items, inner + 1)?;
        (items.get(ty)?.kind == Kind::Close).then_some(ty + 1)?
    } else {
        // A typed literal: `date '2024-01-01'` (PostgreSQL takes only a
        // string after the type, so a column is never followed by one).
        let ty = type_name(items, at)?;
        if !items.get(ty)?.slot {
            return None;
        }
        let mut e = ty + 1;
        if o.kind == Kind::Word && o.text.eq_ignore_ascii_case("interval") {
            e = interval_fields(items, e);
        }
        e
    };
    while items.get(end).is_some_and(|c| c.kind == Kind::Cast) {
        end = type_name(items, end + 1)?;
    }
    Some(end)
}

/// The words a type of several words goes on with (`character varying`,
/// `double precision`, `timestamp with time zone`).
const TYPE_TAILS: [&str; 6] = ["varying", "precision", "with", "without", "time", "zone"];

/// Where the type name starting at `items[at]` ends, if one does: a name
/// (schema-qualified, of several words), with an optional modifier of
/// placeholders (`varchar(?)`, `numeric(?, ?)`) and array bounds (`int[]`).
fn type_name(items: &[Out<'_>], at: usize) -> Option<usize> {
    // An identifier or a keyword of no syntax (`select`, `and`, `array` are no type).
    let name =
        |o: &Out<'_>| (o.kind == Kind::Word && !o.slot && o.tags == 0) || o.kind == Kind::Quoted;
    let tail = |o: &Out<'_>| {
        o.kind == Kind::Word && !o.slot && TYPE_TAILS.iter().any(|t| o.text.eq_ignore_ascii_case(t))
    };
    if !name(items.get(at)?) {
        return None;
    }
    let mut p = at + 1;
    while items.get(p).is_some_and(|d| d.kind == Kind::Dot) && items.get(p + 1).is_some_and(name) {
        p += 2;
    }
    while items.get(p).is_some_and(tail) {
        p += 1;
    }
    if items.get(p).is_some_and(|o| o.kind == Kind::Open) {
        p += 1;
        loop {
            if !items.get(p)?.slot {
                return None;
            }
            match items.get(p + 1)?.kind {
                Kind::Comma => p += 2,
                Kind::Close => break p += 2,
                _ => return None,
            }
        }
        // `timestamp(3) with time zone`
        while items.get(p).is_some_and(tail) {
            p += 1;
        }
    }
    while items.get(p).is_some_and(|o| o.kind == Kind::OpenBracket) {
        p += 1;
        if items.get(p)?.slot {
            p += 1;
        }
        if items.get(p)?.kind != Kind::CloseBracket {
            return None;
        }
        p += 1;
    }
    Some(p)
}

/// Past the fields of an interval literal starting at `items[at]`, if any:
/// `interval ? day`, `? hour to minute`, `? second(?)`.
fn interval_fields(items: &[Out<'_>], mut at: usize) -> usize {
    const FIELDS: [&str; 7] = ["year", "month", "day", "hour", "minute", "second", "to"];
    while let Some(o) = items.get(at) {
        if o.kind == Kind::Word && !o.slot && FIELDS.iter().any(|f| o.text.eq_ignore_ascii_case(f))
        {
            at += 1;
        } else if o.kind == Kind::Open
            && items.get(at + 1).is_some_and(|o| o.slot)
            && items.get(at + 2).is_some_and(|o| o.kind == Kind::Close)
        {
            at += 3;
        } else {
            break;
        }
    }
    at
}

/// A key or insert-value slot: the column it is compared with (see
/// [`compared_column`]), its value's hash, and whether it is a bind
/// parameter.
#[derive(Debug, Clone, Copy)]
struct KeySlot {
    column: Option<Column>,
    value: u64,
    param: bool,
}

/// What the slots of a statement told us so far.
struct SlotState {
    key_values: u64,
    all_values: u64,
    key_params: bool,
    has_key_slot: bool,
    any_params: bool,
    has_range: bool,
    key_column: Option<String>,
    /// Every key and insert-value slot, in order.
    keys: Vec<KeySlot>,
    /// The columns range slots compare (`col > ?`, `col BETWEEN ?`).
    range_columns: Vec<Column>,
}

impl SlotState {
    fn note(&mut self, slot: Slot, value: &str, is_param: bool, out: &[Out<'_>]) {
        let h = xxhash_rust::xxh3::xxh3_64(value.as_bytes());
        self.all_values = fold(self.all_values, h);
        if is_param {
            self.any_params = true;
        }
        match slot {
            Slot::Key | Slot::Value => {
                self.has_key_slot = true;
                self.key_values = fold(self.key_values, h);
                if is_param {
                    self.key_params = true;
                }
                if slot == Slot::Key && self.key_column.is_none() {
                    self.key_column = key_column(out);
                }
                self.keys.push(KeySlot {
                    column: if slot == Slot::Key {
                        compared_column(out)
                    } else {
                        None
                    },
                    value: h,
                    param: is_param,
                });
            }
            Slot::Range => {
                self.has_range = true;
                if let Some(c) = compared_column(out)
                    && !self.range_columns.contains(&c)
                {
                    self.range_columns.push(c);
                }
            }
            Slot::Page | Slot::Other => {}
        }
    }
}

impl SlotState {
    /// Keyset pagination spelled out, `a > x OR (a = x AND id > y)` (jOOQ's
    /// `seek()`, hand-written cursors): the equality on a column the
    /// statement also compares by range is the keyset's, not a key, so it
    /// leaves the key values. Called for statements under `ORDER BY ...
    /// LIMIT`.
    fn drop_keyset_equalities(&mut self) {
        let in_keyset = |k: &KeySlot| {
            k.column
                .is_some_and(|c| self.range_columns.iter().any(|r| r.may_be(c)))
        };
        if self.range_columns.is_empty() || !self.keys.iter().any(in_keyset) {
            return;
        }
        let (mut values, mut params) = (VALUES_SEED, false);
        for k in self.keys.iter().filter(|k| !in_keyset(k)) {
            values = fold(values, k.value);
            params |= k.param;
        }
        self.key_values = values;
        self.key_params = params;
    }
}

/// A column as a statement names it: hashes of its name and of its
/// qualifier (0 when none is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column {
    qualifier: u64,
    name: u64,
}

impl Column {
    /// Whether the two may be one column: the same name, and the same
    /// qualifier unless one is left out (`created_at` may be
    /// `events.created_at`; `posts.id` is not `comments.id`).
    fn may_be(self, other: Column) -> bool {
        self.name == other.name
            && (self.qualifier == other.qualifier || self.qualifier == 0 || other.qualifier == 0)
    }
}

/// The column the slot about to be pushed is compared with, when `out`
/// ends with `col =`, `col >` (`<`, `<=`, `>=`) or `col between` (`t.col`,
/// `"Col"` alike): which keys and ranges share a column.
fn compared_column(out: &[Out<'_>]) -> Option<Column> {
    let [.., col, op] = out else {
        return None;
    };
    let compares = match op.kind {
        Kind::Op => matches!(op.text, "=" | "<" | ">" | "<=" | ">="),
        Kind::Word => op.text == "between",
        _ => false,
    };
    let named = match col.kind {
        Kind::Word => !col.slot && col.tags & tag::CLAUSE == 0,
        Kind::Quoted => true,
        _ => false,
    };
    if !(compares && !op.slot && named) {
        return None;
    }
    // The qualifier as written: `t.col`, `s.t.col`.
    let name = &out[..out.len() - 1];
    let mut first = name.len() - 1;
    while first >= 2
        && name[first - 1].kind == Kind::Dot
        && matches!(name[first - 2].kind, Kind::Word | Kind::Quoted)
        && !name[first - 2].slot
    {
        first -= 2;
    }
    let qualifier = match &name[first..name.len() - 1] {
        [] => 0,
        parts => name_hash(parts).max(1),
    };
    Some(Column {
        qualifier,
        name: name_hash(std::slice::from_ref(col)),
    })
}

/// FNV-1a over `parts` as rendered (ASCII lower case for a word).
fn name_hash(parts: &[Out<'_>]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, part| {
        let fold_case = part.kind == Kind::Word && !part.lower;
        part.text.bytes().fold(h, |h, b| {
            let b = if fold_case { b.to_ascii_lowercase() } else { b };
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

/// Whether `update` at token `i` is the one of `FOR NO KEY UPDATE`.
fn for_no_key(sql: &str, tokens: &[Token], i: usize) -> bool {
    i >= 3
        && tokens[i - 1].text(sql).eq_ignore_ascii_case("key")
        && tokens[i - 2].text(sql).eq_ignore_ascii_case("no")
        && tokens[i - 3].kw == kw!("for")
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

/// Whether a `-` just emitted (the last output token) is a sign, not a minus.
fn unary_minus_position(out: &[Out<'_>]) -> bool {
    match out.len().checked_sub(2).map(|i| out[i]) {
        None => true,
        Some(o) if o.slot => false,
        Some(o) => match o.kind {
            Kind::Op | Kind::Open | Kind::Comma | Kind::OpenBracket => true,
            Kind::Word => o.tags & tag::OPERAND_POS != 0,
            _ => false,
        },
    }
}

/// Decides what the placeholder about to be pushed stands for.
fn classify(
    out: &[Out<'_>],
    frames: &[Frame],
    clause: Clause,
    between: bool,
    next_is_eq: bool,
    next_closes: bool,
) -> Slot {
    match clause {
        Clause::Page => return Slot::Page,
        Clause::Values => return Slot::Value,
        Clause::Set => return Slot::Other,
        _ => {}
    }
    let prev = out.last().copied();
    if prev.is_some_and(|p| p.kind == Kind::Word && p.tags & tag::PAGE != 0) {
        return Slot::Page;
    }
    if clause != Clause::Predicate {
        return Slot::Other;
    }
    if between {
        return Slot::Range;
    }
    if let Some(p) = prev
        && !p.slot
    {
        match (p.kind, p.text) {
            (Kind::Op, "=") => return Slot::Key,
            (Kind::Op, "<" | ">" | "<=" | ">=") => return Slot::Range,
            // Elements of `IN (`, `ANY(`, `ANY(ARRAY[` are keys.
            (Kind::Open | Kind::Comma | Kind::OpenBracket, _)
                if frames.last().is_some_and(|f| f.key_list) =>
            {
                return Slot::Key;
            }
            // Elements of a row in such a list: `IN ((1, 2), (3, 4))`.
            (Kind::Open | Kind::Comma, _) if in_row_of_key_list(out, frames) => {
                return Slot::Key;
            }
            // A typed literal or a cast as such an element: `IN (date ?`,
            // `IN (cast(? as date)`.
            (Kind::Word | Kind::Quoted | Kind::Close, _)
                if typed_literal_in_key_list(out, frames) =>
            {
                return Slot::Key;
            }
            (Kind::Open, _) if next_closes && cast_in_key_list(out, frames) => return Slot::Key,
            // The argument of a function compared for equality:
            // `lower(email) = lower(?)`, `id = cast(? as uuid)`.
            (Kind::Open, _) if next_closes && in_call_after_eq(out, frames) => return Slot::Key,
            // A typed literal compared for equality: `day = date '2024-01-01'`.
            (Kind::Word, _) if typed_literal_after_eq(out) => return Slot::Key,
            // The null-safe equality: `col IS NOT DISTINCT FROM ?`.
            (Kind::Word, "from") if ends_not_distinct_from(out) => return Slot::Key,
            // psycopg2's `IN %s`: one parameter, a tuple of keys.
            (Kind::Word, _) if p.tags & tag::IN != 0 => return Slot::Key,
            // Elements of a row compared for equality: `(a, b) = (?, ?)`.
            (Kind::Open | Kind::Comma, _) if in_row_after_op(out, frames, &["="]) => {
                return Slot::Key;
            }
            // Elements of a row compared by order: keyset pagination's
            // `(created_at, id) > (?, ?)`.
            (Kind::Open | Kind::Comma, _)
                if in_row_after_op(out, frames, &["<", ">", "<=", ">="]) =>
            {
                return Slot::Range;
            }
            _ => {}
        }
    }
    // `? = col`: a key compared the other way round.
    if next_is_eq {
        return Slot::Key;
    }
    Slot::Other
}

/// Whether the word `tokens[i]` is a `NULL` that is a whole element of a
/// list whose constants collapse: of `IN (`, `ANY(`, `ARRAY[` (or of a
/// sub-array, or a subscript), of a row in an `IN` list, or the operand of
/// `CAST(NULL AS type)` as such an element; `NULL::type` included. There it
/// is one more literal: PostgreSQL parses it to a constant, and
/// pg_stat_statements squashes it in a list like any other. Not a null test
/// (`x IS NULL`, `NULL IS NULL`: the element does not start, or end, with
/// the `NULL`), and not the `NULL` of a `SET` or a `VALUES` row.
#[cold]
#[inline(never)]
fn null_list_element(
    sql: &str,
    tokens: &[Token],
    i: usize,
    out: &[Out<'_>],
    frames: &[Frame],
) -> bool {
    // Cheap tests first: most words are no element of a list.
    let Some(prev) = out.last() else {
        return false;
    };
    if prev.slot || !matches!(prev.kind, Kind::Open | Kind::OpenBracket | Kind::Comma) {
        return false;
    }
    let next = tokens.get(i + 1).map(|t| (t.kind, t.kw));
    let ends_element = matches!(
        next,
        Some((
            Kind::Comma | Kind::Close | Kind::CloseBracket | Kind::Cast,
            _
        ))
    );
    let cast_operand = next == Some((Kind::Word, kw!("as")));
    if !(ends_element || cast_operand) || !tokens[i].text(sql).eq_ignore_ascii_case("null") {
        return false;
    }
    // A list whose elements are constants when they are: `IN (`, `ANY(`,
    // `ARRAY[`, a sub-array or a row of an `IN` list.
    let list = |frames: &[Frame]| {
        frames.last().is_some_and(|f| {
            f.collapsible
                || out[f.open].kind == Kind::OpenBracket
                || in_row_of_key_list(out, frames)
        })
    };
    if cast_operand {
        // `IN (CAST(NULL AS int)`: the `cast(` is an element of such a list.
        let [outer @ .., call] = frames else {
            return false;
        };
        return call.open + 1 == out.len()
            && call.open >= 2
            && out[call.open - 1].kind == Kind::Word
            && !out[call.open - 1].slot
            && out[call.open - 1].text.eq_ignore_ascii_case("cast")
            && matches!(
                out[call.open - 2].kind,
                Kind::Open | Kind::OpenBracket | Kind::Comma
            )
            && list(outer);
    }
    list(frames)
}

/// Whether the innermost group is a row that is an element of a key list
/// (`IN ((`, `IN (..., (`, `ANY(ARRAY[(`).
fn in_row_of_key_list(out: &[Out<'_>], frames: &[Frame]) -> bool {
    match frames {
        [.., list, row] => {
            list.key_list
                && !row.key_list
                && out[row.open].kind == Kind::Open
                && row_start(out, row.open).is_some_and(|start| {
                    start > 0
                        && matches!(
                            out[start - 1].kind,
                            Kind::Open | Kind::OpenBracket | Kind::Comma
                        )
                })
        }
        _ => false,
    }
}

/// Where the row whose `(` is `out[open]` starts: at the `(`, or at the
/// `ROW` keyword of an explicit row constructor (`ROW(1, 2)` is `(1, 2)`).
fn row_start(out: &[Out<'_>], open: usize) -> Option<usize> {
    let before = out.get(open.checked_sub(1)?)?;
    Some(if is_row_word(before) { open - 1 } else { open })
}

fn is_row_word(o: &Out<'_>) -> bool {
    o.kind == Kind::Word && !o.slot && o.text.eq_ignore_ascii_case("row")
}

/// Most tokens of a type name the detector looks back over for a typed
/// literal (`pg_catalog.timestamp(?) with time zone[]` is 13): a bound,
/// so that looking back at every value of a long list element stays linear.
const TYPE_NAME_TOKENS: usize = 32;

/// Where the element being written of the group opened at `out[open]`
/// starts (after the group's last comma at its own level), if it is no
/// longer than [`TYPE_NAME_TOKENS`].
fn short_element_start(out: &[Out<'_>], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for i in (open + 1..out.len()).rev().take(TYPE_NAME_TOKENS) {
        match out[i].kind {
            Kind::Close | Kind::CloseBracket => depth += 1,
            Kind::Open | Kind::OpenBracket => depth = depth.saturating_sub(1),
            Kind::Comma if depth == 0 => return Some(i + 1),
            _ => {}
        }
    }
    (out.len() - (open + 1) <= TYPE_NAME_TOKENS).then_some(open + 1)
}

/// Whether `out` ends with the type of a typed literal that is an element
/// of a key list, or of a row in one (`IN (date`, `IN ((1, date`).
fn typed_literal_in_key_list(out: &[Out<'_>], frames: &[Frame]) -> bool {
    let Some(f) = frames.last() else {
        return false;
    };
    if !(f.key_list || in_row_of_key_list(out, frames)) {
        return false;
    }
    short_element_start(out, f.open)
        .is_some_and(|start| start < out.len() && type_name(out, start) == Some(out.len()))
}

/// Whether the innermost group is `cast(` as an element of a key list, or
/// of a row in one (`IN (cast(`).
fn cast_in_key_list(out: &[Out<'_>], frames: &[Frame]) -> bool {
    let [.., list, call] = frames else {
        return false;
    };
    (list.key_list || in_row_of_key_list(out, &frames[..frames.len() - 1]))
        && call.open >= 2
        && out[call.open].kind == Kind::Open
        && out[call.open - 1].kind == Kind::Word
        && !out[call.open - 1].slot
        && out[call.open - 1].text.eq_ignore_ascii_case("cast")
        && matches!(
            out[call.open - 2].kind,
            Kind::Open | Kind::OpenBracket | Kind::Comma
        )
}

/// Whether the token after `i` closes a group, a `::type` cast between
/// them allowed (`lower(?)`, `lower(?::text)`).
fn next_closes(tokens: &[Token], i: usize) -> bool {
    match tokens.get(i + 1).map(|t| t.kind) {
        Some(Kind::Close) => true,
        Some(Kind::Cast) => {
            tokens.get(i + 2).is_some_and(|t| t.kind == Kind::Word)
                && tokens.get(i + 3).is_some_and(|t| t.kind == Kind::Close)
        }
        _ => false,
    }
}

/// Whether the innermost group is a call of a function (not `ALL(`,
/// `ANY(`, `IN (`) right after `=` (`= lower(`).
fn in_call_after_eq(out: &[Out<'_>], frames: &[Frame]) -> bool {
    frames.last().is_some_and(|call| {
        call.open > 1
            && out[call.open].kind == Kind::Open
            && out[call.open - 1].kind == Kind::Word
            && !out[call.open - 1].slot
            && out[call.open - 1].tags & (tag::IN | tag::ANY | tag::ARRAY | tag::SPACED) == 0
            && out[call.open - 2].kind == Kind::Op
            && out[call.open - 2].text == "="
    })
}

/// Whether the slot about to be pushed is the operand of `cast(? as type)`:
/// `out` ends with `cast (` and the next word is `as`.
fn ends_cast_operand(out: &[Out<'_>], next_word: u8) -> bool {
    next_word == kw!("as")
        && matches!(out, [.., f, open]
            if open.kind == Kind::Open
                && f.kind == Kind::Word
                && !f.slot
                && f.text.eq_ignore_ascii_case("cast"))
}

/// Whether `out` ends with `IS NOT DISTINCT FROM`.
fn ends_not_distinct_from(out: &[Out<'_>]) -> bool {
    matches!(out, [.., is, not, distinct, from]
        if [is, not, distinct, from]
            .iter()
            .all(|o| o.kind == Kind::Word && !o.slot)
            && (is.text, not.text, distinct.text, from.text) == ("is", "not", "distinct", "from"))
}

/// Whether `out` ends with `= type`, the type of a typed literal
/// (`date '2024-01-01'`): an identifier, not a keyword.
fn typed_literal_after_eq(out: &[Out<'_>]) -> bool {
    matches!(out, [.., eq, ty]
        if eq.kind == Kind::Op
            && eq.text == "="
            && !eq.slot
            && ty.kind == Kind::Word
            && !ty.slot
            && ty.tags == 0)
}

/// Whether the innermost group is a row right after one of `ops`.
fn in_row_after_op(out: &[Out<'_>], frames: &[Frame], ops: &[&str]) -> bool {
    frames.last().is_some_and(|row| {
        row.open > 0
            && out[row.open].kind == Kind::Open
            && out[row.open - 1].kind == Kind::Op
            && ops.contains(&out[row.open - 1].text)
    })
}

/// The column named by a (possibly qualified) identifier starting at token
/// `i`: the last part of `a.b.col`, as [`key_column`] names it.
fn column_after_eq(sql: &str, tokens: &[Token], mut i: usize) -> Option<String> {
    if !tokens.get(i).is_some_and(is_ident) {
        return None;
    }
    while tokens.get(i + 1).is_some_and(|d| d.kind == Kind::Dot)
        && tokens.get(i + 2).is_some_and(is_ident)
    {
        i += 2;
    }
    let t = &tokens[i];
    (t.kw == 0 || t.kind == Kind::Quoted).then(|| ident_string(sql, t))
}

fn next_is_eq(tokens: &[Token], i: usize, sql: &str) -> bool {
    tokens
        .get(i + 1)
        .is_some_and(|t| t.kind == Kind::Op && t.text(sql) == "=")
}

/// The column a key slot compares: walks back over `=`, `IN (`, `ANY(`; for
/// a row of keys (`(a, b) IN ((`), the row of columns, as `(a, b)`.
fn key_column(out: &[Out<'_>]) -> Option<String> {
    // `col = date ?`: the type of a typed literal is no column.
    if typed_literal_after_eq(out) {
        return key_column(&out[..out.len() - 1]);
    }
    // `col IN (cast(?`: `cast` is no column.
    if let [.., sep, f, open] = out
        && matches!(sep.kind, Kind::Open | Kind::OpenBracket | Kind::Comma)
        && f.kind == Kind::Word
        && !f.slot
        && f.text.eq_ignore_ascii_case("cast")
        && open.kind == Kind::Open
    {
        return key_column(&out[..out.len() - 2]);
    }
    // `col IN (date ?`: the type of a typed literal is no column either.
    if out
        .last()
        .is_some_and(|o| !o.slot && matches!(o.kind, Kind::Word | Kind::Quoted | Kind::Close))
        && let Some(back) = out
            .iter()
            .rev()
            .take(TYPE_NAME_TOKENS + 1)
            .position(|o| matches!(o.kind, Kind::Open | Kind::OpenBracket | Kind::Comma))
        && let sep = out.len() - 1 - back
        && type_name(out, sep + 1) == Some(out.len())
    {
        return key_column(&out[..=sep]);
    }
    // `col IS NOT DISTINCT FROM ?`: the column is before the four words.
    if ends_not_distinct_from(out) {
        return key_column(&out[..out.len() - 4]);
    }
    // `lower(email) = lower(?`: the column is on the other side of `=`.
    if let [.., eq, f, open] = out
        && eq.kind == Kind::Op
        && eq.text == "="
        && f.kind == Kind::Word
        && !f.slot
        && f.tags & (tag::IN | tag::ANY | tag::ARRAY | tag::SPACED) == 0
        && open.kind == Kind::Open
    {
        return key_column(&out[..out.len() - 2]);
    }
    let mut after_in = false;
    // Up to six tokens back, a cast's type (of any length) counting as one.
    let (mut end, mut steps) = (out.len(), 0);
    while steps < 6 && end > 0 {
        let back = out.len() - end;
        end -= 1;
        steps += 1;
        let o = &out[end];
        if o.slot {
            return None;
        }
        match o.kind {
            Kind::Word if o.tags & (tag::IN | tag::ANY | tag::ARRAY | tag::NOT) == 0 => {
                // `WHERE ?`, `AND ?`: no column before the slot.
                if o.tags & tag::CLAUSE != 0 {
                    return None;
                }
                // `id::text = ?`, `id::character varying = ?`: a type; the
                // column is before the cast.
                if let Some(cast) = cast_before_type(&out[..=end]) {
                    end = cast;
                    steps += 1;
                    continue;
                }
                return Some(o.text.to_ascii_lowercase());
            }
            Kind::Word if o.tags & tag::IN != 0 => after_in = true,
            Kind::Quoted => return Some(o.text.to_string()),
            Kind::Close if after_in => return column_row(&out[..out.len() - back]),
            // `lower(email) = ?`, or a row of columns: `(a, b) = (?, ?)`.
            Kind::Close => {
                let before = &out[..out.len() - back];
                return column_call(before).or_else(|| column_row(before));
            }
            Kind::Literal | Kind::Param => return None,
            _ => {}
        }
    }
    None
}

/// The index of the cast (`::`) whose type `out` ends with: `::text`,
/// `::pg_catalog.text`, and the types of several words (`::character
/// varying`, `::double precision`, `::timestamp with time zone`).
fn cast_before_type(out: &[Out<'_>]) -> Option<usize> {
    let mut i = out.len().checked_sub(1)?;
    loop {
        let o = &out[i];
        if o.kind != Kind::Word || o.slot {
            return None;
        }
        let before = i.checked_sub(1)?;
        match out[before].kind {
            Kind::Cast => return Some(before),
            // A schema-qualified type: `pg_catalog.text`.
            Kind::Dot => i = before.checked_sub(1)?,
            Kind::Word if TYPE_TAILS.iter().any(|t| o.text.eq_ignore_ascii_case(t)) => i = before,
            _ => return None,
        }
    }
}

/// `lower(email)` (or `lower(t.email)`) if `out` ends with a call of one
/// function on one column.
fn column_call(out: &[Out<'_>]) -> Option<String> {
    let name = |o: &Out<'_>| match o.kind {
        Kind::Word if !o.slot => Some(o.text.to_ascii_lowercase()),
        Kind::Quoted => Some(o.text.to_string()),
        _ => None,
    };
    let (f, col) = match out {
        [.., f, open, q, dot, col, close]
            if open.kind == Kind::Open && dot.kind == Kind::Dot && close.kind == Kind::Close =>
        {
            (f, format!("{}.{}", name(q)?, name(col)?))
        }
        [.., f, open, col, close] if open.kind == Kind::Open && close.kind == Kind::Close => {
            (f, name(col)?)
        }
        _ => return None,
    };
    (f.kind == Kind::Word && !f.slot && f.tags & tag::SPACED == 0)
        .then(|| format!("{}({col})", f.text.to_ascii_lowercase()))
}

/// `(a, b)` if `out` ends with a parenthesized list of two or more column
/// names (not a call: `coalesce(a, b) IN` has no row of key columns).
fn column_row(out: &[Out<'_>]) -> Option<String> {
    let open = out.iter().rposition(|o| o.kind == Kind::Open)?;
    let call =
        open > 0 && out[open - 1].kind == Kind::Word && out[open - 1].tags & tag::SPACED == 0;
    if call || !out[open..].iter().any(|o| o.kind == Kind::Comma) {
        return None;
    }
    let mut row = String::from("(");
    for o in &out[open + 1..out.len() - 1] {
        match o.kind {
            Kind::Word if !o.slot => row.push_str(&o.text.to_ascii_lowercase()),
            Kind::Quoted => row.push_str(o.text),
            Kind::Dot => row.push('.'),
            Kind::Comma => row.push_str(", "),
            _ => return None,
        }
    }
    row.push(')');
    (row.len() > 2).then_some(row)
}

/// A bit no keyword tag uses: or-ed into the first token's tags, it selects
/// the "always" entries of [`SPACE`].
const ALWAYS: u16 = 1 << 15;
const _: () = {
    let all_tags = tag::OPERAND_POS
        | tag::SPACED
        | tag::IN
        | tag::ANY
        | tag::ARRAY
        | tag::PAGE
        | tag::NOT
        | tag::CLAUSE
        | tag::RESERVED_AFTER_REL;
    assert!(all_tags & ALWAYS == 0, "a keyword tag uses the ALWAYS bit");
};

/// Whether a space separates two output tokens, by their kinds (`Kind as
/// usize`), as a mask of the first token's tags (or-ed with [`ALWAYS`]): 0
/// never, `ALWAYS` always, `SPACED` when the first is a keyword that keeps
/// its space before `(` (`in (`, `values (`; but `count(`).
///
/// Flat, indexed by `first << 4 | second`: a shift, not a multiplication.
const SPACE: [u16; 256] = {
    assert!(KIND_COUNT <= 16);
    let mut t = [ALWAYS; 256];
    let mut p = 0;
    while p < KIND_COUNT {
        let mut k = 0;
        while k < KIND_COUNT {
            let glued_after = p == Kind::Open as usize
                || p == Kind::OpenBracket as usize
                || p == Kind::Dot as usize
                || p == Kind::Cast as usize;
            let glued_before = k == Kind::Close as usize
                || k == Kind::CloseBracket as usize
                || k == Kind::Comma as usize
                || k == Kind::Dot as usize
                || k == Kind::Cast as usize
                || k == Kind::Semicolon as usize;
            let opens = k == Kind::Open as usize || k == Kind::OpenBracket as usize;
            t[p << 4 | k] = if glued_after || glued_before {
                0
            } else if opens && p == Kind::Word as usize {
                tag::SPACED
            } else if opens && p == Kind::Quoted as usize {
                0
            } else {
                ALWAYS
            };
            k += 1;
        }
        p += 1;
    }
    t
};

fn render(out: &[Out<'_>], capacity: usize) -> String {
    let mut s = String::with_capacity(capacity);
    let Some((first, rest)) = out.split_first() else {
        return s;
    };
    s.push_str(first.text);
    if !first.lower {
        s.make_ascii_lowercase();
    }
    let mut prev = first;
    for o in rest {
        if (prev.tags | ALWAYS) & SPACE[(prev.kind as usize) << 4 | o.kind as usize] != 0 {
            s.push(' ');
        }
        // Punctuation, operators and placeholders are one byte: a push, not
        // a call to `memcpy`.
        if let &[b] = o.text.as_bytes()
            && b.is_ascii()
            && o.lower
        {
            s.push(char::from(b));
            prev = o;
            continue;
        }
        let start = s.len();
        push_short(&mut s, o.text);
        if !o.lower {
            s[start..].make_ascii_lowercase();
        }
        prev = o;
    }
    // The capacity was an upper bound, to write with no reallocation; a
    // long statement that shrank (a 100 KB IN list becomes `in (?)`) must
    // not keep its input's size in every fingerprint that outlives it.
    if s.capacity() > 2 * s.len() + 64 {
        s.shrink_to_fit();
    }
    s
}

/// `push_str` with the common short lengths spelled out: each arm's copy
/// has a constant length, which the compiler does inline, where a variable
/// length is a call to `memcpy`.
#[inline(always)]
fn push_short(s: &mut String, text: &str) {
    match text.len() {
        2 => s.push_str(text),
        3 => s.push_str(text),
        4 => s.push_str(text),
        5 => s.push_str(text),
        6 => s.push_str(text),
        7 => s.push_str(text),
        8 => s.push_str(text),
        9 => s.push_str(text),
        10 => s.push_str(text),
        11 => s.push_str(text),
        12 => s.push_str(text),
        13 => s.push_str(text),
        14 => s.push_str(text),
        15 => s.push_str(text),
        16 => s.push_str(text),
        _ => s.push_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// `fingerprint` skips the detector's value bookkeeping; the
        /// fingerprint must not depend on it.
        #[test]
        fn fingerprint_alone_equals_the_detectors_fingerprint(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("SELECT"), Just("FROM"), Just("WHERE"), Just("IN"), Just("("), Just(")"),
                    Just("'x'"), Just("\"Q\""), Just("\"q\""), Just("$1"), Just("::"), Just("."),
                    Just(","), Just(";"), Just("ANY"), Just("ARRAY"), Just("["), Just("]"), Just("-"),
                    Just("5"), Just("t"), Just("u"), Just("s"), Just("AS"), Just("JOIN"), Just("="),
                    Just(">"), Just("?"), Just("SAVEPOINT"), Just("VALUES"), Just("INSERT"),
                    Just("INTO"), Just("LIMIT"), Just("OFFSET"), Just("BETWEEN"), Just("AND"),
                    Just("ORDER"), Just("BY"), Just("true"), Just("UPDATE"), Just("SET"),
                ],
                0..40,
            ),
            sep in prop_oneof![Just(""), Just(" ")],
        ) {
            let sql = parts.join(sep);
            prop_assert_eq!(fingerprint(&sql), analyze(&sql).fingerprint);
        }
    }

    /// The detector's look for a typed literal in a key list (`IN (date ?`)
    /// scanned back over the whole list element at every value after a word:
    /// a subquery in an `IN` with many `LIKE ?` terms took time quadratic in
    /// its length (20,000 terms: 0.67 s in release, against 3 ms for the same
    /// terms outside the `IN`). A type name is short; the scan is now bounded.
    #[test]
    fn regression_a_long_element_of_an_in_list_is_analyzed_in_linear_time() {
        let terms = "c LIKE 'x' OR ".repeat(200_000);
        let sql = format!("SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE {terms}c LIKE 'y')");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(analyze(&sql).fingerprint.kind()));
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(60)),
            Ok(StatementKind::Select),
            "analysis of a 2.8 MB statement did not end within 60 s"
        );
    }

    #[test]
    fn deeply_nested_list_elements_are_parsed_to_a_bound_not_a_stack_overflow() {
        let depth = 200_000;
        for (open, close) in [("(", ")"), ("[", "]")] {
            let sql = format!(
                "SELECT * FROM t WHERE a = ANY(ARRAY[{}1{}, DATE 'x'])",
                open.repeat(depth),
                close.repeat(depth)
            );
            let f = fingerprint(&sql);
            assert!(
                f.normalized()
                    .starts_with("select * from t where a = any(array[")
            );
        }
        let shallow = "SELECT * FROM t WHERE a = ANY(ARRAY[[[1]], ((2)), DATE 'x'])";
        assert_eq!(
            fingerprint(shallow).normalized(),
            "select * from t where a = any(?)"
        );
    }

    #[test]
    fn identifiers_fold_to_lower_case_at_any_length() {
        let f = fingerprint(
            "SELECT A_Very_Long_Column_Name_Over_16, Short, x, \"Quoted\", \"plain\" FROM Ünïcode_T",
        );
        assert_eq!(
            f.normalized(),
            "select a_very_long_column_name_over_16, short, x, \"Quoted\", plain from Ünïcode_t"
        );
    }
}
