//! The PostgreSQL-aware tokenizer: it follows `src/backend/parser/scan.l` (PostgreSQL 17) for every
//! rule that decides where a token ends, so that a `;`, `--` or `/*` inside a literal, a quoted
//! identifier, a dollar quote or a comment is never mistaken for structure.
//!
//! It works on raw bytes (only ASCII is significant; bytes >= 0x80 are identifier characters, as in
//! the server), never allocates, and never panics: an unterminated literal or comment simply runs to
//! the end of the input, flagged as not terminated. It does not decode literal contents and does not
//! reject what the server's grammar would reject; it only has to agree on token boundaries.

/// Options that change how the scanner reads literals, mirroring the session's server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LexOptions {
    /// The session's `standard_conforming_strings`. When off, plain `'...'` literals take backslash
    /// escapes as `E'...'` literals do, so `'a\';'` is one literal rather than a literal and a `;`.
    pub standard_conforming_strings: bool,
}

impl Default for LexOptions {
    fn default() -> Self {
        // The server default since PostgreSQL 9.1.
        LexOptions {
            standard_conforming_strings: true,
        }
    }
}

/// What a token is, at the granularity the proxy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// `'...'`, `E'...'`, `N'...'`, `U&'...'`, `B'...'`, `X'...'`, continuation included.
    String,
    /// `$$...$$` or `$tag$...$tag$`.
    DollarString,
    /// `$1`.
    Param,
    Number,
    /// `-- ...` up to, not including, the newline.
    LineComment,
    /// `/* ... */`, nested.
    BlockComment,
    /// Any other single byte: operators, punctuation, `;`, parentheses.
    Punct,
}

/// One token: its kind and byte range in the scanned input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// False when a literal, quoted identifier or block comment ran into the end of the input.
    pub(crate) terminated: bool,
}

impl Token {
    pub(crate) fn is_comment(&self) -> bool {
        matches!(self.kind, TokenKind::LineComment | TokenKind::BlockComment)
    }
}

pub(crate) const SPACE: u8 = 1;
pub(crate) const IDENT_START: u8 = 2;
pub(crate) const IDENT_CONT: u8 = 4;
pub(crate) const DIGIT: u8 = 8;
/// `[ \t\f\v]`: whitespace that may precede the newline of a string continuation.
const NON_NEWLINE_SPACE: u8 = 16;

/// Byte classes from scan.l: `space`, `ident_start`, `ident_cont` (which, unlike `dolq_cont`,
/// includes `$`) and digits. A table keeps the per-byte cost to one load.
// `i` is bounded by the table's length; `get_mut` is not usable in a const initializer.
#[allow(clippy::indexing_slicing)]
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            c |= SPACE;
        }
        if matches!(b, b' ' | b'\t' | 0x0b | 0x0c) {
            c |= NON_NEWLINE_SPACE;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            c |= IDENT_START | IDENT_CONT;
        }
        if b.is_ascii_digit() {
            c |= DIGIT | IDENT_CONT;
        }
        if b == b'$' {
            c |= IDENT_CONT;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline]
pub(crate) fn class(b: u8) -> u8 {
    // Any u8 is in bounds, so the optimizer drops the check and the fallback.
    CLASS.get(usize::from(b)).copied().unwrap_or(0)
}

/// How a single-quoted literal treats its body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QuoteMode {
    /// `''` doubles a quote; a backslash is an ordinary byte (`'...'`, `N'...'`, `U&'...'`).
    Standard,
    /// `''` doubles a quote and a backslash escapes the next byte (`E'...'`, or `'...'` when
    /// `standard_conforming_strings` is off).
    Escape,
    /// `B'...'`, `X'...'`: no doubling and no escapes; a second quote starts a new literal.
    Bit,
}

/// A cursor producing the tokens of `src`, skipping whitespace.
#[derive(Debug, Clone)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    plain_mode_escapes: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a [u8], opts: LexOptions) -> Self {
        Lexer {
            src,
            pos: 0,
            plain_mode_escapes: !opts.standard_conforming_strings,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    fn plain_mode(&self) -> QuoteMode {
        if self.plain_mode_escapes {
            QuoteMode::Escape
        } else {
            QuoteMode::Standard
        }
    }

    /// The token starting at `start`, whose first byte `b` is not whitespace. Public to the crate
    /// so that scanners stepping over the common tokens themselves (the classifier's cache key)
    /// can hand every other token here and never disagree with the lexer on where it ends.
    #[inline]
    pub(crate) fn token_at(&self, start: usize, b: u8) -> Token {
        let (kind, end, terminated) = self.scan_token(start, b);
        // Every scanner returns an end past `start`, at most the input length.
        let end = end.clamp(start + 1, self.src.len());
        Token {
            kind,
            start,
            end,
            terminated,
        }
    }

    /// Scans the token starting at `start` (not whitespace) and returns (kind, end, terminated).
    fn scan_token(&self, start: usize, b: u8) -> (TokenKind, usize, bool) {
        let src = self.src;
        let next = self.at(start + 1);
        match b {
            b'\'' => string(src, start + 1, self.plain_mode()),
            b'"' => quoted_ident(src, start + 1),
            b'-' if next == Some(b'-') => (TokenKind::LineComment, line_end(src, start + 2), true),
            b'/' if next == Some(b'*') => block_comment(src, start + 2),
            b'$' => dollar(src, start),
            _ if class(b) & DIGIT != 0 => (TokenKind::Number, number_end(src, start), true),
            _ if class(b) & IDENT_START != 0 => {
                // Flex takes the longest match, so `e'` is an E literal but `ee'` is the
                // identifier `ee` followed by a plain literal.
                match (b | 0x20, next) {
                    (b'e', Some(b'\'')) => string(src, start + 2, QuoteMode::Escape),
                    (b'b' | b'x', Some(b'\'')) => string(src, start + 2, QuoteMode::Bit),
                    (b'n', Some(b'\'')) => string(src, start + 2, self.plain_mode()),
                    (b'u', Some(b'&')) => match self.at(start + 2) {
                        // U& literals never take backslash escapes in the scanner; the server
                        // interprets `\XXXX` after the literal is complete.
                        Some(b'\'') => string(src, start + 3, QuoteMode::Standard),
                        Some(b'"') => quoted_ident(src, start + 3),
                        _ => (TokenKind::Word, word_end(src, start + 1), true),
                    },
                    _ => (TokenKind::Word, word_end(src, start + 1), true),
                }
            }
            _ => (TokenKind::Punct, start + 1, true),
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    #[inline]
    fn next(&mut self) -> Option<Token> {
        let mut start = self.pos;
        let b = loop {
            let b = *self.src.get(start)?;
            if class(b) & SPACE == 0 {
                break b;
            }
            start += 1;
        };
        let token = self.token_at(start, b);
        self.pos = token.end;
        Some(token)
    }
}

pub(crate) fn word_end(src: &[u8], mut i: usize) -> usize {
    while src.get(i).is_some_and(|&b| class(b) & IDENT_CONT != 0) {
        i += 1;
    }
    i
}

fn digits_end(src: &[u8], mut i: usize) -> usize {
    while src.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Integer, decimal or real. Trailing letters are left for the next token, as older servers did
/// (PostgreSQL 15+ rejects them as "trailing junk", so either reading is safe for splitting).
pub(crate) fn number_end(src: &[u8], start: usize) -> usize {
    let mut i = digits_end(src, start);
    // `1..10` is an integer followed by `..` in the server too.
    if src.get(i) == Some(&b'.') && src.get(i + 1) != Some(&b'.') {
        i = digits_end(src, i + 1);
    }
    if matches!(src.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(src.get(i + 1), Some(b'+' | b'-')));
        if src.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits_end(src, i + 1 + sign);
        }
    }
    i
}

fn line_end(src: &[u8], from: usize) -> usize {
    let rest = src.get(from..).unwrap_or_default();
    rest.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(src.len(), |p| from + p)
}

/// `/*` nests: scan.l counts every `/*` and `*/` inside a comment, left to right.
fn block_comment(src: &[u8], mut i: usize) -> (TokenKind, usize, bool) {
    let mut depth = 1usize;
    while let Some(&b) = src.get(i) {
        match (b, src.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return (TokenKind::BlockComment, i, true);
                }
            }
            _ => i += 1,
        }
    }
    (TokenKind::BlockComment, src.len(), false)
}

/// `"..."` with `""` doubling; `body` is just past the opening quote.
fn quoted_ident(src: &[u8], mut i: usize) -> (TokenKind, usize, bool) {
    loop {
        let Some(p) = src.get(i..).and_then(|r| r.iter().position(|&b| b == b'"')) else {
            return (TokenKind::QuotedIdent, src.len(), false);
        };
        i += p + 1;
        if src.get(i) != Some(&b'"') {
            return (TokenKind::QuotedIdent, i, true);
        }
        i += 1;
    }
}

/// A single-quoted literal whose body starts at `i`, including any continuation.
fn string(src: &[u8], mut i: usize, mode: QuoteMode) -> (TokenKind, usize, bool) {
    loop {
        let Some(&b) = src.get(i) else {
            return (TokenKind::String, src.len(), false);
        };
        match b {
            b'\'' if mode != QuoteMode::Bit && src.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => match continuation(src, i + 1) {
                // The continued part keeps the escaping rule of the first part (scan.l returns
                // to `state_before_str_stop`), so `E'a'\n'\''` is one literal.
                Some(quote) => i = quote + 1,
                None => return (TokenKind::String, i + 1, true),
            },
            b'\\' if mode == QuoteMode::Escape => i += 2,
            _ => i += 1,
        }
    }
}

/// scan.l's `quotecontinue`: after a closing quote, whitespace holding at least one newline (and
/// possibly `--` comments) followed by another quote continues the same literal. Returns the
/// position of that quote.
fn continuation(src: &[u8], mut i: usize) -> Option<usize> {
    // non_newline_whitespace*
    loop {
        match src.get(i) {
            Some(&b) if class(b) & NON_NEWLINE_SPACE != 0 => i += 1,
            Some(b'-') if src.get(i + 1) == Some(&b'-') => i = line_end(src, i + 2),
            _ => break,
        }
    }
    if !matches!(src.get(i), Some(b'\n' | b'\r')) {
        return None;
    }
    i += 1;
    // special_whitespace*: spaces, or a comment that ends in a newline.
    loop {
        match src.get(i) {
            Some(&b) if class(b) & SPACE != 0 => i += 1,
            Some(b'-') if src.get(i + 1) == Some(&b'-') => {
                i = line_end(src, i + 2);
                src.get(i)?;
                i += 1;
            }
            _ => break,
        }
    }
    (src.get(i) == Some(&b'\'')).then_some(i)
}

/// A `$` at `start`: a parameter `$1`, a dollar quote `$tag$...$tag$`, or a lone `$` (scan.l's
/// `dolqfailed`, e.g. `$abc` with no closing `$`, gives back everything after the `$`).
fn dollar(src: &[u8], start: usize) -> (TokenKind, usize, bool) {
    let mut i = start + 1;
    match src.get(i) {
        Some(b) if b.is_ascii_digit() => return (TokenKind::Param, digits_end(src, i), true),
        Some(b'$') => {}
        Some(&b) if class(b) & IDENT_START != 0 => {
            // dolq_cont is ident_cont without `$`.
            i += 1;
            while src
                .get(i)
                .is_some_and(|&b| b != b'$' && class(b) & IDENT_CONT != 0)
            {
                i += 1;
            }
            if src.get(i) != Some(&b'$') {
                return (TokenKind::Punct, start + 1, true);
            }
        }
        _ => return (TokenKind::Punct, start + 1, true),
    }
    let Some(delim) = src.get(start..=i) else {
        return (TokenKind::Punct, start + 1, true);
    };
    // The body ends at the first `$` that begins the same delimiter: scan.l's `dolqdelim` rule
    // gives back the final `$` of a non-matching delimiter, so every `$` is a candidate.
    let mut j = i + 1;
    while let Some(p) = src.get(j..).and_then(|r| r.iter().position(|&b| b == b'$')) {
        j += p;
        if src.get(j..).is_some_and(|r| r.starts_with(delim)) {
            return (TokenKind::DollarString, j + delim.len(), true);
        }
        j += 1;
    }
    (TokenKind::DollarString, src.len(), false)
}

/// Byte ranges of each statement in `sql`, split at top-level `;` (the `;` excluded).
///
/// Statements that are empty or hold only whitespace and comments are omitted. A range starts at
/// its first token, comments included (routing hints live there), and ends at its last token, so
/// surrounding whitespace is trimmed. An unterminated literal or comment runs to the end of the
/// input and belongs to the last statement.
pub fn split_statements(sql: &[u8], opts: LexOptions) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    for_each_statement(sql, opts, |r| out.push(r));
    out
}

/// [`split_statements`] without the `Vec`: calls `f` with each statement's range, in order.
pub fn for_each_statement(sql: &[u8], opts: LexOptions, mut f: impl FnMut(std::ops::Range<usize>)) {
    let mut first = 0;
    let mut last_end = 0;
    let mut any_token = false;
    let mut has_code = false;
    for tok in Lexer::new(sql, opts) {
        if tok.kind == TokenKind::Punct && sql.get(tok.start) == Some(&b';') {
            if has_code {
                f(first..last_end);
            }
            any_token = false;
            has_code = false;
            continue;
        }
        if !any_token {
            first = tok.start;
            any_token = true;
        }
        last_end = tok.end;
        has_code |= !tok.is_comment();
    }
    if has_code {
        f(first..last_end);
    }
}

/// The inner text of each comment in `stmt`, in order: what lies between `/*` and the matching
/// `*/` (nested comments stay inside their outer one), or after `--` up to the end of the line.
/// An unterminated block comment yields everything after its `/*`. Comments inside literals,
/// quoted identifiers and dollar quotes are not comments and are not yielded.
pub fn comments(stmt: &[u8]) -> impl Iterator<Item = &[u8]> {
    Lexer::new(stmt, LexOptions::default()).filter_map(move |t| {
        let inner = match t.kind {
            TokenKind::LineComment => t.start + 2..t.end,
            TokenKind::BlockComment if t.terminated => t.start + 2..t.end - 2,
            TokenKind::BlockComment => t.start + 2..t.end,
            _ => return None,
        };
        stmt.get(inner)
    })
}

/// The names of the functions `stmt` calls (a word or quoted identifier right before `(`),
/// folded as PostgreSQL folds identifiers, each once. Keywords that take parentheses (`IN`,
/// `VALUES`, ...) come out too: callers look the names up, so extra names cost nothing.
pub fn called_functions(stmt: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<Token> = None;
    for t in Lexer::new(stmt, LexOptions::default()) {
        if t.is_comment() {
            continue;
        }
        let open = t.kind == TokenKind::Punct && stmt.get(t.start) == Some(&b'(');
        if let (true, Some(p)) = (open, prev) {
            let text = stmt.get(p.start..p.end).unwrap_or_default();
            let name = match p.kind {
                TokenKind::Word => Some(String::from_utf8_lossy(text).to_ascii_lowercase()),
                TokenKind::QuotedIdent if p.terminated => text
                    .strip_prefix(b"\"")
                    .and_then(|q| q.strip_suffix(b"\""))
                    .map(|q| String::from_utf8_lossy(q).replace("\"\"", "\"")),
                _ => None,
            };
            if let Some(name) = name.filter(|n| !out.contains(n)) {
                out.push(name);
            }
        }
        prev = Some(t);
    }
    out
}
