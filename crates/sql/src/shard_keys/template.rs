//! Reusing one statement's analysis for every statement of the same shape: the same tokens but
//! for the contents of literals (pgbench-style traffic sends a new literal every time, and a
//! parse per statement is most of the routing cost). Tokens other than literals decide the
//! parse, so two statements of one shape have the same tree; only the literal key values
//! differ, and those are read back from the new text by the position of their token.
//!
//! A shape is only reused when that is exact: every literal key value of the analyzed statement
//! must come from exactly one literal token, in a form the lexer can read back (plain `'...'`
//! strings, numbers, optionally negated, dollar quotes). Any other shape is analyzed afresh
//! every time.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use super::scope::dedup;
use super::{analyze_with, insert, KeyConstraint, KeySource, ShardAnalysis, ShardingSpec};
use crate::lexer::{LexOptions, Lexer, TokenKind};

/// Analyses by shape, for one [`ShardingSpec`].
#[derive(Debug)]
pub struct AnalysisCache {
    entries: Mutex<LruCache<Vec<u8>, Arc<Entry>>>,
    /// Analyses served from a template (for tests and benchmarks).
    hits: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
enum Entry {
    /// The analysis of one statement of the shape and where its literal keys come from.
    Template {
        analysis: Box<ShardAnalysis>,
        slots: Vec<Slot>,
    },
    /// The shape's literal keys cannot be read back exactly: analyze every statement.
    Fresh,
}

/// Where one literal key value comes from: the `ordinal`-th literal token, negated or not.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ordinal: usize,
    negated: bool,
}

/// A literal token: its value as the analysis reports it (None when the lexer alone cannot
/// read it exactly), and whether a `-` token comes right before it.
#[derive(Debug)]
struct Literal {
    value: Option<String>,
    after_minus: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AnalysisCache {
    /// A cache of at most `capacity` shapes.
    pub fn new(capacity: usize) -> AnalysisCache {
        AnalysisCache {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            hits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many analyses a template has served so far.
    pub fn template_hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The analysis of `stmt`, exactly as [`analyze_with`] would give it.
    pub fn analyze(&self, stmt: &[u8], spec: &ShardingSpec, write: Option<bool>) -> ShardAnalysis {
        if stmt.len() > crate::ast::MAX_PARSE_LEN {
            // Beyond the parser's limit a fresh analysis reads nothing; so must this.
            return analyze_with(stmt, spec, write);
        }
        let (shape, literals) = lex(stmt);
        let entry = lock(&self.entries).get(&shape).cloned();
        if let Some(entry) = entry {
            return match &*entry {
                Entry::Template { analysis, slots } => {
                    match rebuild(analysis, slots, &literals, stmt) {
                        Some(mut a) => {
                            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Some(w) = write {
                                a.write = w;
                            }
                            a
                        }
                        None => analyze_with(stmt, spec, write),
                    }
                }
                Entry::Fresh => analyze_with(stmt, spec, write),
            };
        }
        let analysis = analyze_with(stmt, spec, write);
        // Only the hot path gets templates: a keyed SELECT or DML statement that parsed. Some
        // other statements' parse depends on a literal's contents (COPY's one-byte DELIMITER).
        let kind = crate::keywords::leading_keywords(stmt);
        let dml = matches!(kind.get(0), Some("SELECT" | "INSERT" | "UPDATE" | "DELETE"));
        let keyed = matches!(analysis.key, Some(KeyConstraint::Values(_)));
        // Where several constraints on the key were merged (`k IN (..) AND k = ..`, a join
        // pinning two tables), the result depends on which values are equal, which a template
        // cannot redo: one sharded table, its key column named once.
        let single_pin = analysis.sharded.len() == 1
            && analysis
                .key_column
                .as_deref()
                .is_some_and(|k| mentions(stmt, k) <= 1);
        let slots = (dml && keyed && single_pin && analysis.parsed)
            .then(|| slots_of(&analysis, &literals))
            .flatten();
        let entry = match slots {
            Some(slots) => Entry::Template {
                analysis: Box::new(analysis.clone()),
                slots,
            },
            None => Entry::Fresh,
        };
        lock(&self.entries).put(shape, Arc::new(entry));
        analysis
    }
}

/// The literal key sources of an analysis, in a fixed order: the key values, each INSERT row's
/// key, the key an UPDATE assigns.
fn sources(a: &mut ShardAnalysis) -> Vec<&mut KeySource> {
    let mut out: Vec<&mut KeySource> = Vec::new();
    if let Some(KeyConstraint::Values(v)) = &mut a.key {
        out.extend(v.iter_mut());
    }
    if let Some(ins) = &mut a.insert {
        out.extend(ins.rows.iter_mut().map(|(_, k)| k));
    }
    if let Some(k) = &mut a.key_update {
        out.push(k);
    }
    out
}

/// Each literal key value's unique token, or None if one is ambiguous or unreadable.
fn slots_of(a: &ShardAnalysis, literals: &[Literal]) -> Option<Vec<Slot>> {
    let mut a = a.clone();
    let mut slots = Vec::new();
    for src in sources(&mut a) {
        let KeySource::Literal { text, .. } = src else {
            continue;
        };
        let mut found = None;
        for (i, lit) in literals.iter().enumerate() {
            let Some(v) = &lit.value else { continue };
            let plain = v == text;
            let negated = lit.after_minus && text.strip_prefix('-') == Some(v.as_str());
            if plain || negated {
                if found.is_some() {
                    return None;
                }
                found = Some(Slot {
                    ordinal: i,
                    negated,
                });
            }
            // A token whose value is unknown could be this key: not exact.
        }
        if literals.iter().any(|l| l.value.is_none()) {
            return None;
        }
        slots.push(found?);
    }
    Some(slots)
}

/// How many identifier tokens name `column` (folded as the server folds them).
fn mentions(stmt: &[u8], column: &str) -> usize {
    Lexer::new(stmt, LexOptions::default())
        .filter(|t| {
            let text = stmt.get(t.start..t.end).unwrap_or_default();
            match t.kind {
                TokenKind::Word => text.eq_ignore_ascii_case(column.as_bytes()),
                TokenKind::QuotedIdent => {
                    text.strip_prefix(b"\"").and_then(|q| q.strip_suffix(b"\""))
                        == Some(column.as_bytes())
                }
                _ => false,
            }
        })
        .count()
}

/// The template's analysis with this statement's literal values (None: analyze afresh).
fn rebuild(
    template: &ShardAnalysis,
    slots: &[Slot],
    literals: &[Literal],
    stmt: &[u8],
) -> Option<ShardAnalysis> {
    std::str::from_utf8(stmt).ok()?;
    let mut a = template.clone();
    let mut slots = slots.iter();
    for src in sources(&mut a) {
        let KeySource::Literal { text, .. } = src else {
            continue;
        };
        let slot = slots.next()?;
        let lit = literals.get(slot.ordinal)?;
        let value = lit.value.as_ref()?;
        *text = if slot.negated {
            format!("-{value}")
        } else {
            value.clone()
        };
    }
    if let Some(KeyConstraint::Values(v)) = &mut a.key {
        *v = dedup(std::mem::take(v));
    }
    if let Some(ins) = &mut a.insert {
        let ranges = insert::row_ranges(stmt)?;
        if ranges.len() != ins.rows.len() {
            return None;
        }
        ins.values_range = ranges.first()?.start..ranges.last()?.end;
        for ((range, _), new) in ins.rows.iter_mut().zip(ranges) {
            *range = new;
        }
    }
    Some(a)
}

/// The statement's shape (every token's bytes, literals replaced by their kind) and its
/// literal tokens in order.
fn lex(stmt: &[u8]) -> (Vec<u8>, Vec<Literal>) {
    let mut shape = Vec::with_capacity(stmt.len());
    let mut literals = Vec::new();
    let mut prev_minus = false;
    for t in Lexer::new(stmt, LexOptions::default()) {
        let text = stmt.get(t.start..t.end).unwrap_or_default();
        let literal = matches!(
            t.kind,
            TokenKind::String | TokenKind::Number | TokenKind::DollarString
        );
        if literal {
            shape.extend_from_slice(&[0, t.kind as u8]);
            // What can change how the parser reads a literal stays in the shape: a string's
            // prefix (E, B, X, N, U&) and a number's form (digit runs collapsed: `12.5e3` and
            // `1.0e7` agree, `12` and `0x1F` do not).
            match t.kind {
                TokenKind::String => {
                    let quote = text.iter().position(|&b| b == b'\'').unwrap_or(0);
                    shape.extend_from_slice(text.get(..quote).unwrap_or_default());
                }
                TokenKind::Number => {
                    let mut prev_digit = false;
                    for &b in text {
                        let digit = b.is_ascii_digit();
                        if !(digit && prev_digit) {
                            shape.push(if digit { b'9' } else { b });
                        }
                        prev_digit = digit;
                    }
                }
                _ => {}
            }
            shape.push(1);
            literals.push(Literal {
                value: literal_value(t.kind, text, t.terminated),
                after_minus: prev_minus,
            });
        } else {
            shape.extend_from_slice(text);
            shape.push(1);
        }
        prev_minus = t.kind == TokenKind::Punct && text == b"-";
    }
    (shape, literals)
}

/// A literal token's value as the analysis reports literal keys; None where the lexer alone
/// cannot be sure (escapes, prefixes, continuations).
fn literal_value(kind: TokenKind, text: &[u8], terminated: bool) -> Option<String> {
    if !terminated {
        return None;
    }
    let s = std::str::from_utf8(text).ok()?;
    match kind {
        TokenKind::Number => Some(s.to_owned()),
        TokenKind::String => {
            let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
            if inner.contains(['\n', '\r']) {
                return None;
            }
            let value = inner.replace("''", "'");
            // A lone quote left means two adjacent literals, not one.
            (value.matches('\'').count() * 2 == inner.matches('\'').count()).then_some(value)
        }
        TokenKind::DollarString => {
            let body = s.strip_prefix('$')?;
            let tag_end = body.find('$')?;
            let tag = &body[..tag_end];
            let rest = body.get(tag_end + 1..)?;
            let closing = format!("${tag}$");
            rest.strip_suffix(closing.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}
