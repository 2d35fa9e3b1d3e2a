//! The classifier cache's key: the SQL text with its terminated number and single-quoted string
//! literals replaced by [`LITERAL_MARK`], or the exact text when the first token that is not a
//! comment is the word SET, RESET or SHOW (the classifier's module doc says why). It runs on
//! every query, so it scans once, builds no token for the common words, spaces and punctuation,
//! and allocates nothing beyond the caller's buffer. It must not decide on its own where a
//! literal starts or ends: every token that might be one is scanned by the crate's lexer.

use crate::lexer::{
    class, number_end, word_end, LexOptions, Lexer, Token, TokenKind, DIGIT, IDENT_START, SPACE,
};
use crate::statement::SHARDGATE_COMMAND_WORDS;

/// Stands in for a blanked literal; cannot occur in SQL text outside a literal.
const LITERAL_MARK: &[u8] = b"\x00";

/// Writes the cache key for `sql` into `out`. Equal, byte for byte, to
/// [`cache_key_reference`] on every input (tests/cache_key.rs).
pub fn cache_key(sql: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let lexer = Lexer::new(sql, LexOptions::default());
    // Until the first token that is not a comment: it decides whether the text is kept whole.
    let mut seen_code = false;
    let mut copied = 0;
    let mut i = 0;
    while let Some(&b) = sql.get(i) {
        let c = class(b);
        if c & (SPACE | IDENT_START) != 0 {
            if c & SPACE != 0 {
                i += 1;
                continue;
            }
            // A plain word: only `'` or `&` after a word's first byte can make it a prefixed
            // literal (E'', B'', X'', N'', U&'') or a U&"" identifier.
            if !matches!(sql.get(i + 1), Some(b'\'' | b'&')) {
                let end = word_end(sql, i + 1);
                if !seen_code {
                    seen_code = true;
                    if keeps_exact_text(sql.get(i..end).unwrap_or_default()) {
                        out.extend_from_slice(sql);
                        return;
                    }
                }
                i = end;
                continue;
            }
        } else if c & DIGIT != 0 {
            // The lexer's own number scanner without its dispatch (a digit starting a token is
            // always a terminated number there): numbers are most literals.
            let end = number_end(sql, i);
            seen_code = true;
            copied = blank(sql, copied, i, end, out);
            i = end;
            continue;
        } else if !matches!(b, b'\'' | b'"' | b'-' | b'/' | b'$') {
            // A byte the lexer returns as a one-byte punctuation token.
            seen_code = true;
            i += 1;
            continue;
        }
        let token = lexer.token_at(i, b);
        if !seen_code && !token.is_comment() {
            seen_code = true;
            if token.kind == TokenKind::Word
                && keeps_exact_text(sql.get(token.start..token.end).unwrap_or_default())
            {
                out.extend_from_slice(sql);
                return;
            }
        }
        if is_literal(token) {
            copied = blank(sql, copied, token.start, token.end, out);
        }
        i = token.end;
    }
    out.extend_from_slice(sql.get(copied..).unwrap_or_default());
}

/// Copies `sql[copied..start]` and a mark for the literal `start..end` to `out`; returns `end`,
/// the new start of what is left to copy.
#[inline]
fn blank(sql: &[u8], copied: usize, start: usize, end: usize, out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(sql.get(copied..start).unwrap_or_default());
    out.extend_from_slice(LITERAL_MARK);
    end
}

/// What the key blanks: a number or a single-quoted string that ends in the text.
fn is_literal(token: Token) -> bool {
    matches!(token.kind, TokenKind::Number | TokenKind::String) && token.terminated
}

/// SET, RESET and SHOW keep their literals: shardgate's own settings carry their value in one.
fn keeps_exact_text(first_word: &[u8]) -> bool {
    SHARDGATE_COMMAND_WORDS
        .iter()
        .any(|k| first_word.eq_ignore_ascii_case(k))
}

/// The key as first written, on the lexer's token stream: slower (a token per word and the first
/// word scanned twice) but plainly right, so the tests hold [`cache_key`]'s scanning to it (the
/// two share what counts as a literal and which first words keep the text whole).
pub fn cache_key_reference(sql: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut lexer = Lexer::new(sql, LexOptions::default());
    let first_word = lexer.clone().find(|t| !t.is_comment());
    let exact = first_word.is_some_and(|t| {
        t.kind == TokenKind::Word && sql.get(t.start..t.end).is_some_and(keeps_exact_text)
    });
    if exact {
        out.extend_from_slice(sql);
        return;
    }
    let mut copied = 0;
    for token in &mut lexer {
        if is_literal(token) {
            out.extend_from_slice(sql.get(copied..token.start).unwrap_or_default());
            out.extend_from_slice(LITERAL_MARK);
            copied = token.end;
        }
    }
    out.extend_from_slice(sql.get(copied..).unwrap_or_default());
}
