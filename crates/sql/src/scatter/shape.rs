//! The token-level shape of one top-level `SELECT`: where its clauses begin and end and where
//! each select-list, `GROUP BY` and `ORDER BY` item lies, as byte ranges of the client's text.
//! sqlparser's tree says what the statement means; this says where to cut. The caller checks
//! that both agree on the number of items before it splices anything.

use crate::lexer::{LexOptions, Lexer, Token, TokenKind};
use std::ops::Range;

/// The code tokens (comments dropped) of a statement, with helpers to read them.
#[derive(Debug)]
pub(crate) struct Code<'a> {
    pub(crate) src: &'a [u8],
    pub(crate) toks: Vec<Token>,
}

impl<'a> Code<'a> {
    pub(crate) fn new(src: &'a [u8]) -> Self {
        let toks = Lexer::new(src, LexOptions::default())
            .filter(|t| !t.is_comment())
            .collect();
        Code { src, toks }
    }

    pub(crate) fn text(&self, i: usize) -> &'a [u8] {
        self.toks
            .get(i)
            .and_then(|t| self.src.get(t.start..t.end))
            .unwrap_or_default()
    }

    /// Token `i` is the unquoted keyword `kw` (given in uppercase).
    pub(crate) fn is_word(&self, i: usize, kw: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == TokenKind::Word)
            && self.text(i).eq_ignore_ascii_case(kw.as_bytes())
    }

    pub(crate) fn is_punct(&self, i: usize, c: u8) -> bool {
        self.toks.get(i).is_some_and(|t| t.kind == TokenKind::Punct) && self.text(i) == [c]
    }

    /// The bytes from the start of token `r.start` to the end of token `r.end - 1`.
    pub(crate) fn bytes(&self, r: &Range<usize>) -> Range<usize> {
        match (
            self.toks.get(r.start),
            r.end.checked_sub(1).and_then(|e| self.toks.get(e)),
        ) {
            (Some(a), Some(b)) if r.start < r.end => a.start..b.end,
            _ => 0..0,
        }
    }

    pub(crate) fn slice(&self, r: &Range<usize>) -> &'a [u8] {
        self.src.get(self.bytes(r)).unwrap_or_default()
    }

    /// The tokens of `r` as compared for "textual" equality: unquoted words fold to lowercase,
    /// everything else (literals, quoted names, operators) must match byte for byte, and
    /// whitespace and comments do not count.
    pub(crate) fn normalized(&self, r: &Range<usize>) -> Vec<Vec<u8>> {
        r.clone()
            .map(|i| {
                let t = self.text(i);
                match self.toks.get(i).map(|t| t.kind) {
                    Some(TokenKind::Word) => t.to_ascii_lowercase(),
                    _ => t.to_vec(),
                }
            })
            .collect()
    }

    /// Index of the `)` or `]` closing the bracket opened at `open`.
    pub(crate) fn closing(&self, open: usize) -> Option<usize> {
        let mut depth = 0usize;
        for i in open..self.toks.len() {
            if self.is_punct(i, b'(') || self.is_punct(i, b'[') {
                depth += 1;
            } else if self.is_punct(i, b')') || self.is_punct(i, b']') {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Bracket depth before each token.
    fn depths(&self) -> Option<Vec<usize>> {
        let mut depth = 0usize;
        let mut out = Vec::with_capacity(self.toks.len());
        for i in 0..self.toks.len() {
            if self.is_punct(i, b')') || self.is_punct(i, b']') {
                depth = depth.checked_sub(1)?;
            }
            out.push(depth);
            if self.is_punct(i, b'(') || self.is_punct(i, b'[') {
                depth += 1;
            }
        }
        (depth == 0).then_some(out)
    }
}

/// A top-level clause keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    Into,
    From,
    Where,
    Group,
    Having,
    Window,
    Order,
    /// `LIMIT`, `OFFSET` or `FETCH`: the limit clauses, always last in a PostgreSQL `SELECT`.
    Limit,
    For,
    SetOp,
}

/// Where the parts of a top-level `SELECT` lie, as token index ranges into [`Code::toks`].
#[derive(Debug)]
pub(crate) struct Shape {
    /// `DISTINCT` follows `SELECT`.
    pub(crate) distinct_kw: bool,
    pub(crate) items: Vec<Range<usize>>,
    pub(crate) group: Vec<Range<usize>>,
    /// From the `HAVING` keyword to the next clause.
    pub(crate) having: Option<Range<usize>>,
    /// The `ORDER` keyword and each key's expression (modifiers such as `DESC` excluded).
    pub(crate) order: Option<(usize, Vec<Range<usize>>)>,
    /// The first `LIMIT`/`OFFSET`/`FETCH` token; the limit clauses run to the end.
    pub(crate) limit: Option<usize>,
}

impl Shape {
    /// `None` when the tokens do not read as one plain `SELECT` (the caller then refuses).
    pub(crate) fn read(code: &Code) -> Option<Shape> {
        if !code.is_word(0, "SELECT") {
            return None;
        }
        let depths = code.depths()?;
        let n = code.toks.len();
        let mut clauses: Vec<(usize, Clause)> = Vec::new();
        for (i, &d) in depths.iter().enumerate() {
            if d != 0 || code.toks.get(i).map(|t| t.kind) != Some(TokenKind::Word) {
                continue;
            }
            let prev_is = |kw: &str| i > 0 && code.is_word(i - 1, kw);
            let clause = match code.text(i).to_ascii_uppercase().as_slice() {
                b"INTO" => Clause::Into,
                // `a IS DISTINCT FROM b` is an operator, not the FROM clause.
                b"FROM" if !prev_is("DISTINCT") => Clause::From,
                b"WHERE" => Clause::Where,
                b"GROUP" if code.is_word(i + 1, "BY") && !prev_is("WITHIN") => Clause::Group,
                b"HAVING" => Clause::Having,
                b"WINDOW" => Clause::Window,
                b"ORDER" if code.is_word(i + 1, "BY") => Clause::Order,
                b"LIMIT" | b"OFFSET" | b"FETCH" => Clause::Limit,
                b"FOR" => Clause::For,
                b"UNION" | b"INTERSECT" | b"EXCEPT" => Clause::SetOp,
                _ => continue,
            };
            clauses.push((i, clause));
        }
        if clauses
            .iter()
            .any(|&(_, c)| matches!(c, Clause::For | Clause::SetOp | Clause::Into))
        {
            return None;
        }
        // Everything from the first limit keyword on is the limit clauses.
        let limit = clauses
            .iter()
            .find(|&&(_, c)| c == Clause::Limit)
            .map(|&(i, _)| i);
        clauses.retain(|&(_, c)| c != Clause::Limit);
        let end_of = |start: usize| {
            clauses
                .iter()
                .map(|&(i, _)| i)
                .chain(limit)
                .filter(|&i| i > start)
                .min()
                .unwrap_or(n)
        };
        // `Some(None)`: absent; `None`: twice at the top level, so not a plain SELECT.
        let find = |c: Clause| -> Option<Option<usize>> {
            let mut it = clauses.iter().filter(|&&(_, k)| k == c);
            let first = it.next().map(|&(i, _)| i);
            it.next().is_none().then_some(first)
        };
        let (mut list_start, mut distinct_kw) = (1, false);
        if code.is_word(1, "DISTINCT") || code.is_word(1, "ALL") {
            distinct_kw = code.is_word(1, "DISTINCT");
            list_start = 2;
        }
        let list_end = end_of(0);
        let items = split_commas(code, &depths, list_start..list_end)?;
        let group = match find(Clause::Group)? {
            Some(g) => split_commas(code, &depths, g + 2..end_of(g))?,
            None => Vec::new(),
        };
        let having = find(Clause::Having)?.map(|h| h..end_of(h));
        let order = match find(Clause::Order)? {
            Some(o) => {
                let keys = split_commas(code, &depths, o + 2..end_of(o))?;
                Some((
                    o,
                    keys.into_iter().map(|k| strip_modifiers(code, k)).collect(),
                ))
            }
            None => None,
        };
        // Every other clause found once at most, each after the previous.
        for c in [Clause::From, Clause::Where, Clause::Window] {
            find(c)?;
        }
        let mut order_seen: Vec<usize> = clauses.iter().map(|&(i, _)| i).collect();
        order_seen.extend(limit);
        if order_seen.windows(2).any(|w| w.first() >= w.get(1)) {
            return None;
        }
        Some(Shape {
            distinct_kw,
            items,
            group,
            having,
            order,
            limit,
        })
    }
}

/// The comma-separated items of `r` (commas inside brackets do not split). `None` if an item
/// is empty.
fn split_commas(code: &Code, depths: &[usize], r: Range<usize>) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::new();
    let mut start = r.start;
    for i in r.clone() {
        if depths.get(i) == Some(&0) && code.is_punct(i, b',') {
            out.push(start..i);
            start = i + 1;
        }
    }
    out.push(start..r.end);
    out.iter().all(|x| x.start < x.end).then_some(out)
}

/// An `ORDER BY` key without its trailing `ASC`/`DESC` and `NULLS FIRST`/`NULLS LAST`.
fn strip_modifiers(code: &Code, mut r: Range<usize>) -> Range<usize> {
    if r.end >= r.start + 2
        && code.is_word(r.end - 2, "NULLS")
        && (code.is_word(r.end - 1, "FIRST") || code.is_word(r.end - 1, "LAST"))
    {
        r.end -= 2;
    }
    if r.end > r.start && (code.is_word(r.end - 1, "ASC") || code.is_word(r.end - 1, "DESC")) {
        r.end -= 1;
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn texts(code: &Code, rs: &[Range<usize>]) -> Vec<String> {
        rs.iter()
            .map(|r| String::from_utf8_lossy(code.slice(r)).into_owned())
            .collect()
    }

    #[test]
    fn clauses_and_items() {
        let sql = b"SELECT DISTINCT a, f(b, c) AS \"x,\", ARRAY[1,2] FROM t WHERE a IS DISTINCT FROM b \
                    GROUP BY a, 2 HAVING count(*) > 1 ORDER BY a DESC NULLS LAST, 2 LIMIT 3 OFFSET 4";
        let code = Code::new(sql);
        let s = Shape::read(&code).unwrap();
        assert!(s.distinct_kw);
        assert_eq!(
            texts(&code, &s.items),
            ["a", "f(b, c) AS \"x,\"", "ARRAY[1,2]"]
        );
        assert_eq!(texts(&code, &s.group), ["a", "2"]);
        assert_eq!(
            texts(&code, &[s.having.clone().unwrap()]),
            ["HAVING count(*) > 1"]
        );
        assert_eq!(texts(&code, &s.order.as_ref().unwrap().1), ["a", "2"]);
        assert!(code.is_word(s.limit.unwrap(), "LIMIT"));
    }

    #[test]
    fn refuses_what_is_not_one_select() {
        for sql in [
            "SELECT 1 UNION SELECT 2",
            "SELECT a FROM t FOR UPDATE",
            "SELECT a INTO x FROM t",
            "SELECT (a FROM t",
            "SELECT a,, b FROM t",
            "VALUES (1)",
        ] {
            assert!(Shape::read(&Code::new(sql.as_bytes())).is_none(), "{sql}");
        }
    }
}
