//! One `FROM` scope (a top-level `SELECT`, `UPDATE` or `DELETE`) and what its predicates say about
//! the shard keys of its tables: `key = value`, `key IN (...)`, `OR`s of those on one key, and
//! `a.key = b.key` equalities that tie two sharded tables to the same shard. Only conjuncts
//! (terms joined by `AND`) are used: any other shape says nothing, which is always safe.

use super::values::{fold, key_source};
use super::KeySource;
use sqlparser::ast::{BinaryOperator, Expr};
use std::collections::HashSet;

/// Past this nesting the predicate is not read further (it then constrains nothing).
const MAX_PREDICATE_DEPTH: usize = 100;

/// A table (or derived table, or CTE) visible in the scope under a name.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The folded name as written (`app.orders` -> `["app", "orders"]`); empty for a derived
    /// table.
    pub(crate) parts: Vec<String>,
    pub(crate) alias: Option<String>,
    /// Index into the walker's sharded references, and that table's key column.
    pub(crate) sharded: Option<(usize, String)>,
}

/// What one conjunct says.
#[derive(Debug)]
pub(crate) enum Term {
    /// The entry's key is one of these values.
    Pin(usize, Vec<KeySource>),
    /// The two entries' keys are equal.
    Edge(usize, usize),
}

#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) entries: Vec<Entry>,
    pub(crate) terms: Vec<Term>,
}

impl Scope {
    /// Adds the terms of every conjunct of `expr`; with `edges_only` (the `ON` of an outer join,
    /// which filters nothing on the preserved side) only key equalities are kept.
    pub(crate) fn add_conjuncts(&mut self, expr: &Expr, edges_only: bool) {
        let mut conjuncts = Vec::new();
        split_and(expr, &mut conjuncts, 0);
        for c in conjuncts {
            match self.term(c, 0) {
                Some(t @ Term::Edge(..)) => self.terms.push(t),
                Some(t @ Term::Pin(..)) if !edges_only => self.terms.push(t),
                _ => {}
            }
        }
    }

    fn term(&self, expr: &Expr, depth: usize) -> Option<Term> {
        if depth > MAX_PREDICATE_DEPTH {
            return None;
        }
        match expr {
            Expr::Nested(inner) => self.term(inner, depth + 1),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (self.key_ref(left), self.key_ref(right)) {
                (Some(a), Some(b)) => Some(Term::Edge(a, b)),
                (Some(a), None) => key_source(right).map(|v| Term::Pin(a, vec![v])),
                (None, Some(b)) => key_source(left).map(|v| Term::Pin(b, vec![v])),
                (None, None) => None,
            },
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                let entry = self.key_ref(expr)?;
                let values = list.iter().map(key_source).collect::<Option<Vec<_>>>()?;
                (!values.is_empty()).then(|| Term::Pin(entry, dedup(values)))
            }
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => {
                // Every branch must pin the same key; one other term and the OR says nothing.
                let mut branches = Vec::new();
                split_or(expr, &mut branches, depth);
                let mut on: Option<usize> = None;
                let mut values = Vec::new();
                for b in branches {
                    match self.term(b, depth + 1)? {
                        Term::Pin(e, v) if on.is_none_or(|o| o == e) => {
                            on = Some(e);
                            values.extend(v);
                        }
                        _ => return None,
                    }
                }
                on.map(|e| Term::Pin(e, dedup(values)))
            }
            _ => None,
        }
    }

    /// The entry whose shard key `expr` names, if it is a column reference to a sharded table's
    /// key that resolves to exactly one entry.
    fn key_ref(&self, mut expr: &Expr) -> Option<usize> {
        while let Expr::Nested(inner) = expr {
            expr = inner;
        }
        let is_key = |e: &Entry, col: &str| e.sharded.as_ref().is_some_and(|(_, k)| k == col);
        match expr {
            Expr::Identifier(ident) => {
                // Unqualified: the query only runs if the name is unambiguous, and a sharded
                // table in scope surely has its key column, so it must be that table's.
                let col = fold(ident);
                let mut hits = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| is_key(e, &col));
                let (i, _) = hits.next()?;
                hits.next().is_none().then_some(i)
            }
            Expr::CompoundIdentifier(idents) => {
                let parts: Vec<String> = idents.iter().map(fold).collect();
                let (col, qualifier) = parts.split_last()?;
                let mut hits = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| qualifies(e, qualifier));
                let (i, e) = hits.next()?;
                (hits.next().is_none() && is_key(e, col)).then_some(i)
            }
            _ => None,
        }
    }

    /// Folds the terms into each sharded entry's values: entries tied by equalities share one
    /// constraint, the intersection of their pins. `None` means the entry is not pinned.
    pub(crate) fn resolve(&self) -> Vec<(usize, Option<Vec<KeySource>>)> {
        let n = self.entries.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while let Some(&p) = parent.get(i) {
                if p == i {
                    break;
                }
                i = p;
            }
            i
        }
        for t in &self.terms {
            if let Term::Edge(a, b) = *t {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if let Some(slot) = parent.get_mut(ra) {
                    *slot = rb;
                }
            }
        }
        let mut pins: Vec<Option<Vec<KeySource>>> = vec![None; n];
        for t in &self.terms {
            if let Term::Pin(e, values) = t {
                let root = find(&mut parent, *e);
                if let Some(slot) = pins.get_mut(root) {
                    *slot = Some(match slot.take() {
                        None => values.clone(),
                        Some(old) => intersect(old, values),
                    });
                }
            }
        }
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some((r, _)) = &e.sharded {
                let root = find(&mut parent, i);
                out.push((*r, pins.get(root).cloned().flatten()));
            }
        }
        out
    }
}

/// `q.col` / `s.t.col` / `c.s.t.col`: does the qualifier name this entry?
fn qualifies(e: &Entry, qualifier: &[String]) -> bool {
    match (qualifier, &e.alias) {
        ([q], Some(alias)) => q == alias,
        (_, Some(_)) => false,
        ([q], None) => e.parts.last() == Some(q),
        // A schema-qualified column may name a table written without its schema; if the two
        // schemas differed the server would reject the query.
        ([.., s, t], None) => match e.parts.as_slice() {
            [name] => name == t,
            [.., es, et] => es == s && et == t,
            [] => false,
        },
        ([], None) => false,
    }
}

/// Rows satisfying both constraints have a key in both lists; if none does, no row matches and
/// either list routes correctly, so the first is kept.
fn intersect(old: Vec<KeySource>, new: &[KeySource]) -> Vec<KeySource> {
    let both: Vec<KeySource> = old.iter().filter(|v| new.contains(v)).cloned().collect();
    if both.is_empty() {
        old
    } else {
        both
    }
}

pub(crate) fn dedup(values: Vec<KeySource>) -> Vec<KeySource> {
    let mut seen = HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

fn split_and<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>, depth: usize) {
    match expr {
        _ if depth > MAX_PREDICATE_DEPTH => {}
        Expr::Nested(inner) => split_and(inner, out, depth + 1),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out, depth + 1);
            split_and(right, out, depth + 1);
        }
        _ => out.push(expr),
    }
}

fn split_or<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>, depth: usize) {
    match expr {
        _ if depth > MAX_PREDICATE_DEPTH => out.push(expr),
        Expr::Nested(inner) => split_or(inner, out, depth + 1),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            split_or(left, out, depth + 1);
            split_or(right, out, depth + 1);
        }
        _ => out.push(expr),
    }
}
