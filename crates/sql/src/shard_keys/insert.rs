//! Byte ranges of an `INSERT ... VALUES` list in the original text, read with the crate's lexer
//! (sqlparser's spans are line/column and do not cover a row's parentheses). The caller splits a
//! multi-row `INSERT` by these ranges, so they are only reported when the token stream and the
//! parsed tree agree on the number of rows.

use super::walk::InsertKeys;
use super::InsertRows;
use crate::lexer::{LexOptions, Lexer, Token, TokenKind};
use std::ops::Range;

/// The rows of the statement's `VALUES` list paired with the keys read from the tree.
pub(crate) fn rows(stmt: &[u8], keys: InsertKeys) -> Option<InsertRows> {
    let ranges = row_ranges(stmt)?;
    if ranges.len() != keys.keys.len() {
        return None;
    }
    let values_range = ranges.first()?.start..ranges.last()?.end;
    Some(InsertRows {
        values_range,
        rows: ranges.into_iter().zip(keys.keys).collect(),
        returning: keys.returning,
        on_conflict: keys.on_conflict,
    })
}

/// Each `( ... )` after the first top-level `VALUES` keyword, as long as commas separate them.
pub(crate) fn row_ranges(stmt: &[u8]) -> Option<Vec<Range<usize>>> {
    let punct = |t: &Token, c: u8| t.kind == TokenKind::Punct && stmt.get(t.start) == Some(&c);
    let mut toks = Lexer::new(stmt, LexOptions::default()).filter(|t| !t.is_comment());
    let mut depth = 0usize;
    // Find `VALUES` outside any parentheses (a CTE or column list holds its own).
    loop {
        let t = toks.next()?;
        if punct(&t, b'(') {
            depth += 1;
        } else if punct(&t, b')') {
            depth = depth.checked_sub(1)?;
        } else if depth == 0
            && t.kind == TokenKind::Word
            && stmt.get(t.start..t.end)?.eq_ignore_ascii_case(b"VALUES")
        {
            break;
        }
    }
    let mut out = Vec::new();
    loop {
        let open = toks.next()?;
        if !punct(&open, b'(') {
            return None;
        }
        let mut depth = 1usize;
        let close = loop {
            let t = toks.next()?;
            if !t.terminated {
                return None;
            }
            if punct(&t, b'(') {
                depth += 1;
            } else if punct(&t, b')') {
                depth -= 1;
                if depth == 0 {
                    break t;
                }
            }
        };
        out.push(open.start..close.end);
        match toks.next() {
            Some(t) if punct(&t, b',') => continue,
            _ => return Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::row_ranges;

    fn slices(sql: &str) -> Vec<&str> {
        row_ranges(sql.as_bytes())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| sql.get(r))
            .collect()
    }

    #[test]
    fn rows_are_cut_at_their_parentheses() {
        assert_eq!(
            slices("INSERT INTO t (a, b) VALUES (1, 'a'), ((2), ')(' ) RETURNING a"),
            ["(1, 'a')", "((2), ')(' )"]
        );
        assert_eq!(
            slices(
                "WITH v AS (VALUES (9)) INSERT INTO t VALUES /* c */ (1) ON CONFLICT DO NOTHING"
            ),
            ["(1)"]
        );
        assert!(slices("INSERT INTO t SELECT 1").is_empty());
        assert!(slices("INSERT INTO t VALUES (1").is_empty());
    }
}
