//! A tolerant SQL lexer for PostgreSQL's dialect.
//!
//! It never fails: anything it does not recognise becomes a one-character
//! operator token, an unterminated string or comment runs to the end of the
//! input. That is all a fingerprint needs; it is not a parser.

use crate::fingerprint::keywords;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// An unquoted word: keyword or identifier (compared case-insensitively).
    Word,
    /// A `"quoted"` identifier (text includes the quotes).
    Quoted,
    /// A string, number, bit/hex/escape/dollar-quoted string.
    Literal,
    /// A bind parameter: `$1`, `?`, `:name`, `%s`, `%(name)s`.
    Param,
    /// An operator: `=`, `<>`, `>=`, `||`, `-`, ...
    Op,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `[`
    OpenBracket,
    /// `]`
    CloseBracket,
    /// `,`
    Comma,
    /// `;`
    Semicolon,
    /// `.`
    Dot,
    /// `::`
    Cast,
}

/// How many kinds there are (`Kind as usize` is below this).
pub(crate) const KIND_COUNT: usize = Kind::Cast as usize + 1;

/// A token: its kind, its keyword id and its byte range in the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    /// For a [`Kind::Word`], its keyword id; 0 for an identifier and for
    /// every other kind.
    pub(crate) kw: u8,
    /// For a [`Kind::Word`], whether it may hold ASCII upper case.
    pub(crate) upper: bool,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Token {
    pub(crate) fn text<'a>(&self, sql: &'a str) -> &'a str {
        // Ranges always fall on char boundaries: the lexer only splits at ASCII.
        sql.get(self.start as usize..self.end as usize)
            .unwrap_or("")
    }
}

const START: u8 = 1;
const IDENT: u8 = 2;
const OP: u8 = 4;
const UPPER: u8 = 8;
const SPACE: u8 = 16;
/// A byte after leading digits that `skip_number` must look at: a radix
/// letter, `_`, `.` or an exponent.
const NUMBER_TAIL: u8 = 32;
const SLASH_STAR: u8 = 64;

/// Byte classes, looked up instead of compared in the lexer's inner loops.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] |= START | IDENT;
        }
        if c.is_ascii_uppercase() {
            t[b] |= UPPER;
        }
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            t[b] |= SPACE;
        }
        if matches!(
            c,
            b'x' | b'X' | b'o' | b'O' | b'b' | b'B' | b'_' | b'.' | b'e' | b'E'
        ) {
            t[b] |= NUMBER_TAIL;
        }
        if c == b'/' || c == b'*' {
            t[b] |= SLASH_STAR;
        }
        if c.is_ascii_digit() || c == b'$' {
            t[b] |= IDENT;
        }
        if matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            t[b] |= OP;
        }
        b += 1;
    }
    t
};

fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & START != 0
}

fn is_ident_char(b: u8) -> bool {
    CLASS[b as usize] & IDENT != 0
}

fn is_op_char(b: u8) -> bool {
    CLASS[b as usize] & OP != 0
}

/// Splits `sql` into tokens, dropping white space and comments, into `out`.
/// Inputs longer than 4 GiB are truncated at that length (offsets are `u32`).
///
/// The byte-class table decides the two commonest cases before anything
/// else: white space (skipped in a tight loop) and words (scanned, then
/// checked for a one-letter string prefix such as `E'`); every other byte
/// goes through the `match`.
///
/// `marks` receives, in order, the indices of the tokens that can matter to
/// the fingerprint's relation finder outside a relation reference: keywords,
/// parentheses, brackets and commas. It skips the others by jumping from mark to mark.
pub(crate) fn tokenize(sql: &str, out: &mut Vec<Token>, marks: &mut Vec<u32>) {
    let bytes = sql.as_bytes();
    let len = bytes.len().min(u32::MAX as usize);
    let bytes = &bytes[..len];
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        let class = CLASS[b as usize];
        if class & SPACE != 0 {
            i += 1;
            continue;
        }
        let start = i;
        if class & START != 0 {
            // The classes seen say whether the word holds upper case.
            let mut seen = class;
            i += 1;
            while let Some(&c) = bytes.get(i) {
                let class = CLASS[c as usize];
                if class & IDENT == 0 {
                    break;
                }
                seen |= class;
                i += 1;
            }
            // Prefixed strings: E'..', B'..', X'..', N'..', U&'..' (the
            // quote and `&` end a word, so the prefix is a one-byte word).
            if i == start + 1 && i < len {
                let next = bytes[i];
                if next == b'\'' && matches!(b | 0x20, b'e' | b'b' | b'x' | b'n') {
                    let escapes = b | 0x20 == b'e';
                    i = skip_string(bytes, i + 1, len, escapes);
                    i = skip_continuations(bytes, i, len, escapes);
                    push(out, Kind::Literal, 0, false, start, i);
                    continue;
                }
                if next == b'&' && (b | 0x20) == b'u' && bytes.get(i + 1) == Some(&b'\'') {
                    i = skip_string(bytes, i + 2, len, false);
                    i = skip_continuations(bytes, i, len, false);
                    push(out, Kind::Literal, 0, false, start, i);
                    continue;
                }
            }
            let kw = keywords::keyword_of_word(bytes, b, start, i);
            if kw != 0 {
                marks.push(out.len() as u32);
            }
            push(out, Kind::Word, kw, seen & UPPER != 0, start, i);
            continue;
        }
        let kind = match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < len && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                while i < len {
                    // Only `/` and `*` can open or close one.
                    if CLASS[bytes[i] as usize] & SLASH_STAR == 0 {
                        i += 1;
                        continue;
                    }
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' => {
                i = skip_string(bytes, i + 1, len, false);
                i = skip_continuations(bytes, i, len, false);
                Kind::Literal
            }
            b'"' => {
                i += 1;
                while i < len {
                    if bytes[i] == b'"' {
                        if bytes.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                Kind::Quoted
            }
            b'0'..=b'9' => {
                // Most numbers are plain digits: scan those here, and leave
                // anything with a radix prefix, `_`, fraction or exponent
                // to `skip_number`, which rescans from the start.
                i += 1;
                while let Some(c) = bytes.get(i)
                    && c.is_ascii_digit()
                {
                    i += 1;
                }
                if bytes
                    .get(i)
                    .is_some_and(|&c| CLASS[c as usize] & NUMBER_TAIL != 0)
                {
                    i = skip_number(bytes, start, len);
                }
                Kind::Literal
            }
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_number(bytes, i, len);
                Kind::Literal
            }
            b'$' => {
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < len && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    Kind::Param
                } else if let Some(end) = dollar_quote_end(bytes, i, len) {
                    i = end;
                    Kind::Literal
                } else {
                    i += 1;
                    Kind::Op
                }
            }
            b'(' => {
                marks.push(out.len() as u32);
                i += 1;
                Kind::Open
            }
            b')' => {
                marks.push(out.len() as u32);
                i += 1;
                Kind::Close
            }
            b'[' => {
                marks.push(out.len() as u32);
                i += 1;
                Kind::OpenBracket
            }
            b']' => {
                marks.push(out.len() as u32);
                i += 1;
                Kind::CloseBracket
            }
            b',' => {
                marks.push(out.len() as u32);
                i += 1;
                Kind::Comma
            }
            b';' => {
                i += 1;
                Kind::Semicolon
            }
            b'.' => {
                i += 1;
                Kind::Dot
            }
            b':' if bytes.get(i + 1) == Some(&b':') => {
                i += 2;
                Kind::Cast
            }
            b':' if bytes.get(i + 1).copied().is_some_and(is_ident_start) => {
                i += 1;
                while i < len && is_ident_char(bytes[i]) {
                    i += 1;
                }
                Kind::Param
            }
            b'%' if pyformat_end(bytes, i, len).is_some() => {
                i = pyformat_end(bytes, i, len).unwrap_or(i + 1);
                Kind::Param
            }
            b'?' if !(bytes.get(i + 1).copied().is_some_and(is_op_char)
                || (i > 0 && is_op_char(bytes[i - 1]))) =>
            {
                // A lone `?` is a JDBC-style placeholder (`?1`: numbered, as
                // in JPA); `?|`, `?&` are operators.
                i = skip_digits(bytes, i + 1, len);
                Kind::Param
            }
            _ if is_op_char(b) => {
                i += 1;
                while i < len && is_op_char(bytes[i]) {
                    // `a=-1`: stop before a comment start inside an operator.
                    // `id=%s`: nor inside a placeholder.
                    if (bytes[i] == b'-' && bytes.get(i + 1) == Some(&b'-'))
                        || (bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*'))
                        || (bytes[i] == b'%' && pyformat_end(bytes, i, len).is_some())
                    {
                        break;
                    }
                    i += 1;
                }
                // PostgreSQL's rule: a multi-character operator ends in
                // `+` or `-` only if it holds one of ~ ! @ # % ^ & | ` ?;
                // otherwise those trailing signs are the next token's
                // (`a=-5` is `a = -5`, `a*-1` is `a * -1`).
                if i - start > 1
                    && matches!(bytes[i - 1], b'+' | b'-')
                    && !bytes[start..i - 1].iter().any(|c| {
                        matches!(
                            c,
                            b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                        )
                    })
                {
                    while i - start > 1 && matches!(bytes[i - 1], b'+' | b'-') {
                        i -= 1;
                    }
                }
                // `id=?` (as Hibernate prints it): a placeholder glued to a
                // comparison or arithmetic operator, which with the `?` is no
                // operator PostgreSQL has (its `?` operators are `?`, `?|`,
                // `?&`, `@?` and the geometric ones, which start with `?`).
                if bytes[i - 1] == b'?'
                    && !bytes.get(i).copied().is_some_and(is_op_char)
                    && matches!(
                        &bytes[start..i - 1],
                        b"=" | b"<>"
                            | b"!="
                            | b"<"
                            | b">"
                            | b"<="
                            | b">="
                            | b"+"
                            | b"-"
                            | b"*"
                            | b"/"
                            | b"%"
                            | b"||"
                    )
                {
                    push(out, Kind::Op, 0, false, start, i - 1);
                    let end = skip_digits(bytes, i, len);
                    push(out, Kind::Param, 0, false, i - 1, end);
                    i = end;
                    continue;
                }
                Kind::Op
            }
            _ => {
                // Any other byte (including the rest of a multi-byte char): one token.
                i += 1;
                while i < len && !sql.is_char_boundary(i) {
                    i += 1;
                }
                Kind::Op
            }
        };
        push(out, kind, 0, false, start, i);
    }
}

#[inline(always)]
fn push(out: &mut Vec<Token>, kind: Kind, kw: u8, upper: bool, start: usize, end: usize) {
    out.push(Token {
        kind,
        kw,
        upper,
        start: start as u32,
        end: end as u32,
    });
}

/// The end of a Python DB-API placeholder at `i` (psycopg's `%s` and
/// `%(name)s`, as Django and SQLAlchemy print statements), if one starts
/// there: a `%` directly followed by `s` or a parenthesised name and `s`,
/// and then no identifier character. The modulo operator is written with an
/// operand after it; only `a%s` on a column named `s` reads otherwise.
fn pyformat_end(bytes: &[u8], i: usize, len: usize) -> Option<usize> {
    let mut j = i + 1;
    if bytes.get(j) == Some(&b'(') {
        j += 1;
        let name = j;
        while j < len && is_ident_char(bytes[j]) && bytes[j] != b'$' {
            j += 1;
        }
        if j == name || bytes.get(j) != Some(&b')') {
            return None;
        }
        j += 1;
    }
    if bytes.get(j) != Some(&b's') || bytes.get(j + 1).copied().is_some_and(is_ident_char) {
        return None;
    }
    Some(j + 1)
}

fn skip_digits(bytes: &[u8], mut i: usize, len: usize) -> usize {
    while i < len && bytes[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Skips the continuations of a string constant that ended at `i`: string
/// constants separated only by white space holding a newline are one
/// constant in PostgreSQL (`'foo'` newline `'bar'` is `'foobar'`). Returns
/// the end of the last one, or `i`.
fn skip_continuations(bytes: &[u8], mut i: usize, len: usize, backslash_escapes: bool) -> usize {
    loop {
        let mut j = i;
        let mut newline = false;
        while j < len && CLASS[bytes[j] as usize] & SPACE != 0 {
            newline |= bytes[j] == b'\n' || bytes[j] == b'\r';
            j += 1;
        }
        if !newline || bytes.get(j) != Some(&b'\'') {
            return i;
        }
        i = skip_string(bytes, j + 1, len, backslash_escapes);
    }
}

/// Skips a single-quoted string body starting after the opening quote; returns
/// the index after the closing quote (or the end).
fn skip_string(bytes: &[u8], mut i: usize, len: usize, backslash_escapes: bool) -> usize {
    while i < len {
        match bytes[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' => {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    len
}

fn skip_number(bytes: &[u8], mut i: usize, len: usize) -> usize {
    if bytes[i] == b'0'
        && matches!(
            bytes.get(i + 1),
            Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        )
    {
        i += 2;
        while i < len && (bytes[i].is_ascii_hexdigit() || bytes[i] == b'_') {
            i += 1;
        }
        return i;
    }
    while i < len && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
        i += 1;
    }
    if i < len && bytes[i] == b'.' && bytes.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < len && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
            i += 1;
        }
    }
    if i < len && (bytes[i] | 0x20) == b'e' {
        let mut j = i + 1;
        if j < len && (bytes[j] == b'+' || bytes[j] == b'-') {
            j += 1;
        }
        if j < len && bytes[j].is_ascii_digit() {
            i = j;
            while i < len && bytes[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// `$tag$ ... $tag$`: returns the index after the closing delimiter, or `None`
/// when `bytes[i..]` does not open a dollar-quoted string.
fn dollar_quote_end(bytes: &[u8], i: usize, len: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < len && bytes[j] != b'$' {
        if !(is_ident_char(bytes[j]) && bytes[j] != b'$') {
            return None;
        }
        j += 1;
    }
    if j >= len {
        return None;
    }
    let tag = &bytes[i..=j];
    let body = j + 1;
    let mut k = body;
    while k + tag.len() <= len {
        if &bytes[k..k + tag.len()] == tag {
            return Some(k + tag.len());
        }
        k += 1;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        let mut out = Vec::new();
        tokenize(sql, &mut out, &mut Vec::new());
        out.iter().map(|t| (t.kind, t.text(sql))).collect()
    }

    #[test]
    fn splits_the_usual_tokens() {
        assert_eq!(
            kinds("SELECT a.b, 'it''s' FROM t WHERE x>=$1::int -- c\n;"),
            vec![
                (Kind::Word, "SELECT"),
                (Kind::Word, "a"),
                (Kind::Dot, "."),
                (Kind::Word, "b"),
                (Kind::Comma, ","),
                (Kind::Literal, "'it''s'"),
                (Kind::Word, "FROM"),
                (Kind::Word, "t"),
                (Kind::Word, "WHERE"),
                (Kind::Word, "x"),
                (Kind::Op, ">="),
                (Kind::Param, "$1"),
                (Kind::Cast, "::"),
                (Kind::Word, "int"),
                (Kind::Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn strings_numbers_and_comments() {
        assert_eq!(
            kinds("E'a\\'b' $x$ ' $x$ 1.5e-3 .5 /* a /* nested */ b */ \"Q\"\"x\""),
            vec![
                (Kind::Literal, "E'a\\'b'"),
                (Kind::Literal, "$x$ ' $x$"),
                (Kind::Literal, "1.5e-3"),
                (Kind::Literal, ".5"),
                (Kind::Quoted, "\"Q\"\"x\""),
            ]
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for sql in [
            "'abc",
            "\"abc",
            "/* abc",
            "$tag$ abc",
            "E'\\",
            "$",
            "é'",
            "x::",
        ] {
            let mut out = Vec::new();
            tokenize(sql, &mut out, &mut Vec::new());
            for t in &out {
                let _ = t.text(sql);
            }
        }
    }
}
