//! A tolerant SQL lexer for PostgreSQL's dialect.
//!
//! It never fails: anything it does not recognise becomes a one-character
//! operator token, an unterminated string or comment runs to the end of the
//! input. That is all a fingerprint needs; it is not a parser.

use super::keywords;

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
    /// A bind parameter: `$1`, `?`, `:name`.
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
pub(crate) fn tokenize(sql: &str, out: &mut Vec<Token>) {
    let bytes = sql.as_bytes();
    let len = bytes.len().min(u32::MAX as usize);
    let mut i = 0usize;
    while i < len {
        let b = bytes[i];
        let start = i;
        let mut kw = 0;
        let mut upper = false;
        let kind = match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
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
                i = skip_number(bytes, i, len);
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
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b'[' => {
                i += 1;
                Kind::OpenBracket
            }
            b']' => {
                i += 1;
                Kind::CloseBracket
            }
            b',' => {
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
            b'?' if !(bytes.get(i + 1).copied().is_some_and(is_op_char)
                || (i > 0 && is_op_char(bytes[i - 1]))) =>
            {
                // A lone `?` is a JDBC-style placeholder; `?|`, `?&` are operators.
                i += 1;
                Kind::Param
            }
            _ if is_ident_start(b) => {
                // Prefixed strings: E'..', B'..', X'..', N'..', U&'..'.
                let next = bytes.get(i + 1).copied();
                if next == Some(b'\'') && matches!(b | 0x20, b'e' | b'b' | b'x' | b'n') {
                    i = skip_string(bytes, i + 2, len, b | 0x20 == b'e');
                    Kind::Literal
                } else if (b | 0x20) == b'u'
                    && next == Some(b'&')
                    && bytes.get(i + 2) == Some(&b'\'')
                {
                    i = skip_string(bytes, i + 3, len, false);
                    Kind::Literal
                } else {
                    // The classes seen say whether the word holds upper case.
                    let mut seen = CLASS[b as usize];
                    i += 1;
                    while i < len {
                        let class = CLASS[bytes[i] as usize];
                        if class & IDENT == 0 {
                            break;
                        }
                        seen |= class;
                        i += 1;
                    }
                    upper = seen & UPPER != 0;
                    kw = keywords::keyword_of_word(bytes, start, i);
                    Kind::Word
                }
            }
            _ if is_op_char(b) => {
                i += 1;
                while i < len && is_op_char(bytes[i]) {
                    // `a=-1`: stop before a comment start inside an operator.
                    if (bytes[i] == b'-' && bytes.get(i + 1) == Some(&b'-'))
                        || (bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*'))
                    {
                        break;
                    }
                    i += 1;
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
        out.push(Token {
            kind,
            kw,
            upper,
            start: start as u32,
            end: i.min(len) as u32,
        });
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
