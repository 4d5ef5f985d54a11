//! The keywords the fingerprint knows, and their ids.
//!
//! The lexer gives every word its keyword id (0 for an identifier) while it
//! scans it: the word's bytes, lower-cased eight at a time, packed into one
//! integer and looked up in a table built at compile time. The fingerprint
//! then compares one-byte ids, never strings.

/// The statement's clause at one parenthesis depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clause {
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

/// Properties of a keyword, looked up once per word.
pub(crate) mod tag {
    pub(crate) const OPERAND_POS: u16 = 1;
    pub(crate) const SPACED: u16 = 1 << 1;
    pub(crate) const IN: u16 = 1 << 2;
    pub(crate) const ANY: u16 = 1 << 3;
    pub(crate) const ARRAY: u16 = 1 << 4;
    pub(crate) const PAGE: u16 = 1 << 5;
    pub(crate) const NOT: u16 = 1 << 6;
    /// Ends a relation reference: never an alias.
    pub(crate) const CLAUSE: u16 = 1 << 7;
    /// Cannot be a bare alias after a relation name.
    pub(crate) const RESERVED_AFTER_REL: u16 = 1 << 8;
}

/// Every keyword the fingerprint cares about, sorted, with its properties and
/// the clause it opens. Words with no properties are here so that the
/// fingerprint can compare them by id (`kw!("insert")`).
const KEYWORDS: &[(&str, u16, Option<Clause>)] = &[
    ("all", tag::OPERAND_POS | tag::SPACED, None),
    ("and", tag::CLAUSE | tag::OPERAND_POS | tag::SPACED, None),
    ("any", tag::OPERAND_POS | tag::ANY, None),
    ("array", tag::OPERAND_POS | tag::ARRAY, None),
    ("as", tag::CLAUSE | tag::SPACED, None),
    ("between", tag::OPERAND_POS | tag::SPACED, None),
    ("by", tag::OPERAND_POS | tag::SPACED, None),
    ("case", tag::OPERAND_POS | tag::SPACED, None),
    ("conflict", tag::SPACED, None),
    ("cross", tag::CLAUSE, None),
    ("default", tag::CLAUSE, None),
    ("delete", 0, None),
    ("distinct", tag::SPACED, None),
    ("do", tag::CLAUSE | tag::SPACED, None),
    ("else", tag::OPERAND_POS | tag::SPACED, None),
    ("except", tag::CLAUSE, None),
    ("exists", tag::SPACED, None),
    ("false", 0, None),
    ("fetch", tag::CLAUSE, Some(Clause::Page)),
    ("filter", tag::SPACED, None),
    (
        "for",
        tag::CLAUSE | tag::RESERVED_AFTER_REL,
        Some(Clause::Other),
    ),
    ("from", tag::CLAUSE | tag::SPACED, Some(Clause::From)),
    ("full", tag::CLAUSE, None),
    (
        "group",
        tag::CLAUSE | tag::RESERVED_AFTER_REL,
        Some(Clause::Other),
    ),
    (
        "having",
        tag::CLAUSE | tag::OPERAND_POS,
        Some(Clause::Predicate),
    ),
    ("ilike", tag::OPERAND_POS | tag::SPACED, None),
    (
        "in",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED | tag::IN,
        None,
    ),
    ("inner", tag::CLAUSE, None),
    ("insert", 0, None),
    ("intersect", tag::CLAUSE, None),
    ("into", tag::CLAUSE | tag::SPACED, Some(Clause::From)),
    ("is", tag::CLAUSE | tag::OPERAND_POS | tag::SPACED, None),
    ("join", tag::CLAUSE | tag::SPACED, Some(Clause::From)),
    ("lateral", tag::CLAUSE | tag::SPACED, None),
    ("left", tag::CLAUSE, None),
    ("like", tag::OPERAND_POS | tag::SPACED, None),
    (
        "limit",
        tag::CLAUSE | tag::OPERAND_POS | tag::RESERVED_AFTER_REL | tag::PAGE,
        Some(Clause::Page),
    ),
    ("merge", 0, None),
    ("natural", tag::CLAUSE, None),
    (
        "not",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED | tag::NOT,
        None,
    ),
    (
        "offset",
        tag::CLAUSE | tag::OPERAND_POS | tag::RESERVED_AFTER_REL | tag::PAGE,
        Some(Clause::Page),
    ),
    (
        "on",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED | tag::RESERVED_AFTER_REL,
        Some(Clause::Predicate),
    ),
    ("only", tag::CLAUSE, None),
    ("or", tag::CLAUSE | tag::OPERAND_POS | tag::SPACED, None),
    (
        "order",
        tag::CLAUSE | tag::RESERVED_AFTER_REL,
        Some(Clause::Order),
    ),
    ("outer", tag::CLAUSE, None),
    ("over", tag::SPACED, None),
    ("overriding", tag::CLAUSE, None),
    ("partition", tag::CLAUSE | tag::SPACED, None),
    ("recursive", 0, None),
    ("release", 0, None),
    ("return", tag::OPERAND_POS, None),
    (
        "returning",
        tag::CLAUSE | tag::SPACED | tag::RESERVED_AFTER_REL,
        Some(Clause::Returning),
    ),
    ("right", tag::CLAUSE, None),
    ("rollback", 0, None),
    ("savepoint", 0, None),
    (
        "select",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED,
        Some(Clause::Select),
    ),
    (
        "set",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED | tag::RESERVED_AFTER_REL,
        Some(Clause::Set),
    ),
    ("some", tag::OPERAND_POS | tag::ANY, None),
    ("table", tag::SPACED, Some(Clause::From)),
    ("tablesample", tag::CLAUSE, None),
    ("then", tag::CLAUSE | tag::OPERAND_POS | tag::SPACED, None),
    ("to", 0, None),
    ("transaction", 0, None),
    ("true", 0, None),
    ("union", tag::CLAUSE | tag::SPACED, None),
    ("update", tag::SPACED, Some(Clause::From)),
    ("using", tag::CLAUSE | tag::SPACED, Some(Clause::From)),
    (
        "values",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED,
        Some(Clause::Values),
    ),
    (
        "when",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED,
        Some(Clause::Predicate),
    ),
    (
        "where",
        tag::CLAUSE | tag::OPERAND_POS | tag::SPACED | tag::RESERVED_AFTER_REL,
        Some(Clause::Predicate),
    ),
    ("window", tag::CLAUSE, Some(Clause::Other)),
    ("with", tag::CLAUSE | tag::SPACED, None),
    ("within", tag::SPACED, None),
    ("work", 0, None),
];

/// How many keywords there are; ids run from 1 to this.
pub(crate) const KEYWORD_COUNT: usize = KEYWORDS.len();

/// Packs up to 16 bytes little-endian, zero-padded: byte `i` in bits
/// `8 * i ..`, as [`id_of_word`] loads them.
const fn pack(b: &[u8]) -> u128 {
    let mut v = 0u128;
    let mut i = 0;
    while i < 16 && i < b.len() {
        v |= (b[i] as u128) << (8 * i);
        i += 1;
    }
    v
}

const KEYWORD_KEYS: [u128; KEYWORD_COUNT] = {
    let mut keys = [0u128; KEYWORD_COUNT];
    let mut i = 0;
    while i < KEYWORD_COUNT {
        // `keyword_of_word` folds case by setting bit 5, which is exact
        // only for lower-case letters.
        let k = KEYWORDS[i].0.as_bytes();
        let mut b = 0;
        while b < k.len() {
            assert!(k[b].is_ascii_lowercase(), "keywords are lower-case letters");
            b += 1;
        }
        keys[i] = pack(KEYWORDS[i].0.as_bytes());
        i += 1;
    }
    keys
};

/// The id of a keyword, for `kw!`: a compile error for a word not in the table.
pub(crate) const fn id(word: &str) -> u8 {
    let key = pack(word.as_bytes());
    let mut i = 0;
    while i < KEYWORD_COUNT {
        if KEYWORD_KEYS[i] == key {
            return (i + 1) as u8;
        }
        i += 1;
    }
    panic!("not in KEYWORDS")
}

/// The id of a keyword literal, computed at compile time.
macro_rules! kw {
    ($s:literal) => {
        const { $crate::fingerprint::keywords::id($s) }
    };
}
pub(crate) use kw;

/// Per id (index 0: not a keyword): properties and the clause it opens.
/// 256 entries, one per `u8`, so that indexing by an id needs no bounds
/// check (ids above the keyword count read an empty entry).
const PROPS: [(u16, Option<Clause>); 256] = {
    let mut t = [(0, None); 256];
    let mut i = 0;
    while i < KEYWORD_COUNT {
        t[i + 1] = (KEYWORDS[i].1, KEYWORDS[i].2);
        i += 1;
    }
    t
};

/// Per id, the keyword's text (`""` for 0 and unused ids), like [`PROPS`].
const TEXTS: [&str; 256] = {
    let mut t = [""; 256];
    let mut i = 0;
    while i < KEYWORD_COUNT {
        t[i + 1] = KEYWORDS[i].0;
        i += 1;
    }
    t
};

/// A keyword id's properties (0 for an identifier).
#[inline]
pub(crate) fn flags_of(id: u8) -> u16 {
    PROPS[usize::from(id)].0
}

/// The clause a keyword id opens, if any.
#[inline]
pub(crate) fn clause_of(id: u8) -> Option<Clause> {
    PROPS[usize::from(id)].1
}

/// A keyword id's text, lower case ("" for an identifier).
#[inline]
pub(crate) fn text_of(id: u8) -> &'static str {
    TEXTS[usize::from(id)]
}

const EMPTY: u8 = u8::MAX;

/// Multiplicative hash of a packed word into the 256-slot table.
const fn keyword_hash(key: u128) -> usize {
    let x = ((key >> 64) as u64) ^ (key as u64).rotate_left(17);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize
}

/// Open addressing with linear probing, built at compile time: a keyword
/// look-up is one hash and, on average, little more than one comparison.
const KEYWORD_TABLE: [u8; 256] = {
    assert!(KEYWORD_COUNT < 128, "keep the table under half full");
    let mut table = [EMPTY; 256];
    let mut i = 0;
    while i < KEYWORD_COUNT {
        let mut h = keyword_hash(KEYWORD_KEYS[i]);
        while table[h] != EMPTY {
            h = (h + 1) & 255;
        }
        table[h] = i as u8;
        i += 1;
    }
    table
};

/// The keyword id of a packed, lower-cased word (0: not a keyword).
#[inline]
fn id_of_key(key: u128) -> u8 {
    let mut h = keyword_hash(key);
    loop {
        let idx = KEYWORD_TABLE[h];
        if idx == EMPTY {
            return 0;
        }
        if KEYWORD_KEYS[usize::from(idx)] == key {
            return idx + 1;
        }
        h = (h + 1) & (KEYWORD_TABLE.len() - 1);
    }
}

/// Lower-cases the ASCII letters of eight bytes at once (other bytes,
/// including those of multi-byte characters, stay as they are).
#[inline]
fn lower8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HIGH;
    // Per byte, no carries (low7 + 0x3f <= 0xbe): the high bit of
    // `low7 + 0x3f` says byte >= 'A', that of `low7 + 0x25` says byte > 'Z'.
    let ge_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
    let gt_z = low7 + 0x2525_2525_2525_2525;
    let upper = ge_a & !gt_z & !x & HIGH;
    x | (upper >> 2)
}

/// The keyword id of the word `bytes[start..end]` (0 for an identifier or a
/// word longer than any keyword), and whether the word may hold ASCII upper
/// case (exact up to 16 bytes, `true` beyond).
#[inline]
pub(crate) fn id_of_word(bytes: &[u8], start: usize, end: usize) -> (u8, bool) {
    let len = end - start;
    if len == 0 || len > 16 {
        return (0, len > 16);
    }
    if len <= 8 {
        // Most words: one little-endian word is enough.
        let lo = match bytes.get(start..start + 8) {
            Some(b) => le_u64(b),
            None => {
                let mut buf = [0u8; 8];
                buf[..len].copy_from_slice(&bytes[start..end]);
                u64::from_le_bytes(buf)
            }
        } & low_bytes(len);
        let l = lower8(lo);
        return (id_of_key(u128::from(l)), l != lo);
    }
    // Two little-endian words straight from the input when 16 bytes are
    // there to read, else from a zero-padded copy (the input's last word).
    let (lo, hi) = match bytes.get(start..start + 16) {
        Some(b) => (le_u64(&b[..8]), le_u64(&b[8..])),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(&bytes[start..end]);
            (le_u64(&buf[..8]), le_u64(&buf[8..]))
        }
    };
    // Keep the word's own bytes (9 to 16 of them), zero the rest.
    let hi = hi & low_bytes(len - 8);
    let (llo, lhi) = (lower8(lo), lower8(hi));
    let upper = (llo ^ lo) | (lhi ^ hi) != 0;
    let key = (u128::from(lhi) << 64) | u128::from(llo);
    (id_of_key(key), upper)
}

/// The word `bytes[start..end]`, of one to eight bytes, ASCII lower-cased
/// and packed little-endian into one integer, zero-padded (`None` when
/// longer or empty). Identifier bytes are never zero, so two words have the
/// same key exactly when they are equal up to ASCII case. `upper` false
/// says the word has no ASCII upper case (the lexer knows): nothing to fold.
#[inline]
pub(crate) fn folded_key(bytes: &[u8], start: usize, end: usize, upper: bool) -> Option<u64> {
    let len = end.checked_sub(start)?;
    if len == 0 || len > 8 {
        return None;
    }
    let packed = match bytes.get(start..start + 8) {
        Some(b) => le_u64(b),
        None => {
            let mut buf = [0u8; 8];
            buf[..len].copy_from_slice(bytes.get(start..end)?);
            u64::from_le_bytes(buf)
        }
    } & low_bytes(len);
    Some(if upper { lower8(packed) } else { packed })
}

/// A mask of the low `n` bytes, `n` in 1..=8.
#[inline]
fn low_bytes(n: usize) -> u64 {
    u64::MAX >> (8 * (8 - n))
}

#[inline]
fn le_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Per first letter (`(b | 0x20) & 31`), one bit per word length (1..=16)
/// at which some keyword starts with that letter. A word outside it is no
/// keyword and skips the look-up; most identifiers are. Letters map one to
/// one; other bytes share a slot with some letter, which only costs them the
/// look-up.
const CANDIDATES: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut i = 0;
    while i < KEYWORD_COUNT {
        let k = KEYWORDS[i].0.as_bytes();
        t[((k[0] | 0x20) & 31) as usize] |= 1 << k.len();
        i += 1;
    }
    t
};

/// The keyword id of the word `bytes[start..end]`, whose first byte is
/// `first` (0 for an identifier), with a cheap test first that rules most
/// identifiers out.
#[inline]
pub(crate) fn keyword_of_word(bytes: &[u8], first: u8, start: usize, end: usize) -> u8 {
    let len = end - start;
    if len > 16 || CANDIDATES[usize::from((first | 0x20) & 31)] & (1 << len) == 0 {
        return 0;
    }
    // Setting bit 5 of every byte folds ASCII upper case onto lower case.
    // Against keywords, which are lower-case letters only, that is exact: a
    // byte folds onto such a letter only if it is that letter in either
    // case (`_`, `$`, digits and bytes >= 0x80 fold onto no letter), so it
    // saves `lower8` here. The case flag comes from the lexer instead.
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if len <= 8 {
        let lo = match bytes.get(start..start + 8) {
            Some(b) => le_u64(b),
            None => {
                let mut buf = [0u8; 8];
                buf[..len].copy_from_slice(&bytes[start..end]);
                u64::from_le_bytes(buf)
            }
        };
        return id_of_key(u128::from((lo | FOLD) & low_bytes(len)));
    }
    let (lo, hi) = match bytes.get(start..start + 16) {
        Some(b) => (le_u64(&b[..8]), le_u64(&b[8..])),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(&bytes[start..end]);
            (le_u64(&buf[..8]), le_u64(&buf[8..]))
        }
    };
    let hi = (hi | FOLD) & low_bytes(len - 8);
    id_of_key((u128::from(hi) << 64) | u128::from(lo | FOLD))
}

/// The keyword id of a word given as text.
pub(crate) fn id_of(word: &str) -> u8 {
    id_of_word(word.as_bytes(), 0, word.len()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_table_is_sorted_and_found() {
        assert!(KEYWORDS.windows(2).all(|w| w[0].0 < w[1].0));
        for (i, (k, flags, clause)) in KEYWORDS.iter().enumerate() {
            let id = id_of(k);
            assert_eq!(usize::from(id), i + 1, "{k}");
            assert_eq!(
                (flags_of(id), clause_of(id), text_of(id)),
                (*flags, *clause, *k)
            );
            assert_eq!(id_of(&k.to_ascii_uppercase()), id, "{k}");
        }
        assert_eq!(id_of("users"), 0);
        assert_eq!(id_of("a_very_long_identifier_name"), 0);
        assert_eq!(id_of("selectx"), 0);
        assert_eq!(id_of("selec"), 0);
        assert_eq!((flags_of(0), clause_of(0), text_of(0)), (0, None, ""));
    }

    #[test]
    fn words_inside_longer_input_are_found() {
        let sql = b"xx SeLeCt FROM@[`{ in";
        assert_eq!(id_of_word(sql, 3, 9), (kw!("select"), true));
        assert_eq!(id_of_word(sql, 10, 14), (kw!("from"), true));
        assert_eq!(id_of_word(sql, 19, 21), (kw!("in"), false));
        assert_eq!(id_of_word(sql, 0, 2), (0, false));
        assert_eq!(id_of_word(b"a_very_long_identifier", 0, 22), (0, true));
        for k in KEYWORDS.iter().map(|k| k.0) {
            let upper = k.to_ascii_uppercase();
            assert_eq!(
                keyword_of_word(upper.as_bytes(), upper.as_bytes()[0], 0, k.len()),
                id_of(k),
                "{k}"
            );
        }
        for w in [
            "o",
            "id",
            "users",
            "_x",
            "ünï",
            "select_",
            "a_very_long_identifier",
        ] {
            assert_eq!(
                keyword_of_word(w.as_bytes(), w.as_bytes()[0], 0, w.len()),
                0,
                "{w}"
            );
        }
        // `@[`{` are the bytes just outside 'A'..='Z': never folded.
        assert_eq!(
            lower8(u64::from_be_bytes(*b"@AZ[`az{")),
            u64::from_be_bytes(*b"@az[`az{")
        );
        assert_eq!(
            lower8(u64::from_be_bytes([
                0xc3, 0x89, b'Q', 0x80, 0xff, b'a', 0, 0x41
            ])),
            u64::from_be_bytes([0xc3, 0x89, b'q', 0x80, 0xff, b'a', 0, 0x61])
        );
    }
}
