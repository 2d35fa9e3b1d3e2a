//! The first few bare words of a statement, uppercased into a fixed array, so the classifier can
//! match `BEGIN ISOLATION ...` or `SET LOCAL ...` without touching the heap.

use crate::lexer::{LexOptions, Lexer, TokenKind};

/// How many leading words [`leading_keywords`] keeps.
pub const MAX_KEYWORDS: usize = 4;
/// The longest word [`leading_keywords`] keeps; longer than any PostgreSQL keyword.
pub const MAX_KEYWORD_LEN: usize = 32;

/// Up to [`MAX_KEYWORDS`] words, each ASCII-uppercased and at most [`MAX_KEYWORD_LEN`] bytes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Keywords {
    words: [[u8; MAX_KEYWORD_LEN]; MAX_KEYWORDS],
    lens: [u8; MAX_KEYWORDS],
    count: u8,
}

impl Keywords {
    /// The number of words held.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when the statement does not start with a bare word.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`th word, uppercased.
    pub fn get(&self, i: usize) -> Option<&str> {
        if i >= self.len() {
            return None;
        }
        let word = self.words.get(i)?;
        let len = usize::from(*self.lens.get(i)?);
        // Only ASCII words are stored, so this never fails.
        std::str::from_utf8(word.get(..len)?).ok()
    }

    /// The words in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// True when the statement starts with exactly these (uppercase) words.
    pub fn starts_with(&self, words: &[&str]) -> bool {
        words.len() <= self.len() && words.iter().zip(self.iter()).all(|(w, k)| *w == k)
    }

    fn push(&mut self, word: &[u8]) -> bool {
        let i = self.len();
        let (Some(slot), Some(len)) = (self.words.get_mut(i), self.lens.get_mut(i)) else {
            return false;
        };
        let Some(dst) = slot.get_mut(..word.len()) else {
            return false;
        };
        for (d, s) in dst.iter_mut().zip(word) {
            *d = s.to_ascii_uppercase();
        }
        // `word.len()` fitted in the slot, so it fits in a u8.
        *len = word.len() as u8;
        self.count += 1;
        true
    }
}

impl std::fmt::Debug for Keywords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The first [`MAX_KEYWORDS`] keywords or identifiers of `stmt`, skipping whitespace and comments,
/// ASCII-uppercased: `"  /* x */ begin isolation level"` gives `["BEGIN", "ISOLATION", "LEVEL"]`.
///
/// Stops at the first token that is not a bare word (a literal, quoted identifier, number,
/// operator or parenthesis), and also at a word that cannot be a keyword: one longer than
/// [`MAX_KEYWORD_LEN`] bytes or holding non-ASCII bytes.
pub fn leading_keywords(stmt: &[u8]) -> Keywords {
    let mut out = Keywords::default();
    // Literal rules cannot matter: scanning stops at the first token that is not a word.
    for tok in Lexer::new(stmt, LexOptions::default()) {
        if tok.is_comment() {
            continue;
        }
        if tok.kind != TokenKind::Word || out.len() == MAX_KEYWORDS {
            break;
        }
        match stmt.get(tok.start..tok.end) {
            Some(word) if word.is_ascii() && out.push(word) => {}
            _ => break,
        }
    }
    out
}

/// True when `stmt` holds `word` (given uppercase) as a bare keyword anywhere: outside literals,
/// quoted identifiers, dollar quotes and comments, and not as a field name after a `.` (where
/// any keyword may name a column). `'concurrently'` or `"concurrently"` do not count.
pub fn has_keyword(stmt: &[u8], word: &str) -> bool {
    let mut after_dot = false;
    for tok in Lexer::new(stmt, LexOptions::default()) {
        if tok.is_comment() {
            continue;
        }
        let text = stmt.get(tok.start..tok.end).unwrap_or_default();
        if tok.kind == TokenKind::Word && !after_dot && text.eq_ignore_ascii_case(word.as_bytes()) {
            return true;
        }
        after_dot = tok.kind == TokenKind::Punct && text == b".";
    }
    false
}
