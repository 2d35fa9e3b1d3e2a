//! Splitting a multi-row `INSERT ... VALUES` by shard: the statement for one shard is the
//! original text with only that shard's rows between the prefix and the suffix, spliced at the
//! byte ranges [`super::InsertRows`] reports. Nothing is re-printed, so literals keep their exact
//! spelling. Parameters are renumbered densely (`$1..$k` in order of first use), because the
//! server refuses a parameter it cannot type, and an unused one has no type.

use super::InsertRows;
use crate::lexer::{LexOptions, Lexer, TokenKind};

/// One shard's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplicedInsert {
    /// The statement text.
    pub sql: Vec<u8>,
    /// For each new parameter `$i` (index `i - 1`), the original parameter number.
    pub params: Vec<u16>,
}

/// The statement `stmt` restricted to the rows at `rows` (indices into `ins.rows`).
pub fn splice_insert(stmt: &[u8], ins: &InsertRows, rows: &[usize]) -> Option<SplicedInsert> {
    let prefix = stmt.get(..ins.values_range.start)?;
    let suffix = stmt.get(ins.values_range.end..)?;
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(rows.len() + 2);
    pieces.push(prefix);
    for &i in rows {
        let (range, _) = ins.rows.get(i)?;
        pieces.push(stmt.get(range.clone())?);
    }
    pieces.push(suffix);
    let mut out = SplicedInsert {
        sql: Vec::with_capacity(stmt.len()),
        params: Vec::new(),
    };
    let last = pieces.len() - 1;
    for (n, piece) in pieces.iter().enumerate() {
        renumber(piece, &mut out);
        // Rows are joined by commas; the prefix ends where the first row began.
        if n > 0 && n + 1 < last {
            out.sql.extend_from_slice(b", ");
        }
    }
    Some(out)
}

/// Appends `piece` to `out.sql` with every `$n` replaced by its dense number.
fn renumber(piece: &[u8], out: &mut SplicedInsert) {
    let mut copied = 0;
    for t in Lexer::new(piece, LexOptions::default()) {
        if t.kind != TokenKind::Param {
            continue;
        }
        let Some(n) = piece
            .get(t.start + 1..t.end)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u16>().ok())
        else {
            continue;
        };
        let new = match out.params.iter().position(|&p| p == n) {
            Some(i) => i + 1,
            None => {
                out.params.push(n);
                out.params.len()
            }
        };
        out.sql
            .extend_from_slice(piece.get(copied..t.start).unwrap_or_default());
        out.sql.extend_from_slice(format!("${new}").as_bytes());
        copied = t.end;
    }
    out.sql
        .extend_from_slice(piece.get(copied..).unwrap_or_default());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::{analyze, ShardingSpec};

    fn rows_of(sql: &str) -> InsertRows {
        let spec = ShardingSpec::new(&[(None, "t".into(), "k".into())], &[]);
        analyze(sql.as_bytes(), &spec).insert.expect("rows")
    }

    #[test]
    fn keeps_text_and_renumbers_parameters() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, 'a''b'), ($2, $3) , (7, $1) RETURNING k, $4";
        let ins = rows_of(sql);
        let s = splice_insert(sql.as_bytes(), &ins, &[1, 2]).unwrap();
        assert_eq!(
            String::from_utf8(s.sql).unwrap(),
            "INSERT INTO t (k, v) VALUES ($1, $2), (7, $3) RETURNING k, $4"
        );
        assert_eq!(s.params, vec![2, 3, 1, 4]);
        let s = splice_insert(sql.as_bytes(), &ins, &[0]).unwrap();
        assert_eq!(
            String::from_utf8(s.sql).unwrap(),
            "INSERT INTO t (k, v) VALUES ($1, 'a''b') RETURNING k, $2"
        );
        assert_eq!(s.params, vec![1, 4]);
    }
}
