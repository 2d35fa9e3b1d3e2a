//! Shard-key extraction: for one statement, which sharded, reference and other tables it
//! touches, and which shard-key values (literals or `$n` parameters) confine it, so that the
//! router can send it to one shard, split a multi-row `INSERT`, or refuse it. Pure and
//! synchronous; it never rewrites SQL and never re-prints the AST: values are read from the tree
//! and byte ranges from the crate's lexer over the original text.
//!
//! It fails towards "no key": any shape it does not fully understand leaves the statement
//! unconstrained (the caller scatters or refuses), never pinned to a wrong shard. Two token-level
//! cross-checks back the AST walk: a sharded table named somewhere the walk did not look is
//! still reported (unconstrained), and a `SELECT` keyword the walk did not visit (a subquery in
//! an expression it does not descend into) drops every key constraint.

mod insert;
mod insert_select;
mod scope;
mod splice;
mod template;
mod values;
mod walk;

use crate::ast::{MAX_OPERATORS, MAX_PARSE_LEN};
use crate::guards::{scan, WriteFunctions};
use crate::keywords::leading_keywords;
use crate::lexer::{LexOptions, Lexer, TokenKind};
use crate::statement::classify_statement;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::ops::Range;

pub use insert_select::colocated_insert_select;
pub use splice::{splice_insert, SplicedInsert};
pub use template::AnalysisCache;

/// The sharded and reference tables of one configuration, built once per config snapshot.
#[derive(Debug)]
pub struct ShardingSpec {
    sharded: Vec<SpecTable>,
    reference: Vec<SpecTable>,
    functions: WriteFunctions,
}

#[derive(Debug)]
struct SpecTable {
    schema: Option<String>,
    name: String,
    /// Empty for reference tables.
    key: String,
    display: String,
}

/// What a (folded) table name refers to in a [`ShardingSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    Sharded(usize),
    Reference(usize),
    Other,
}

impl ShardingSpec {
    /// `tables`: (schema, name, key column) of each sharded table, already folded (lowercase
    /// unless quoted); `reference`: (schema, name) of each reference table. A table without a
    /// schema matches that name in any schema (the search path is not known here).
    pub fn new(
        tables: &[(Option<String>, String, String)],
        reference: &[(Option<String>, String)],
    ) -> ShardingSpec {
        let table = |schema: &Option<String>, name: &String, key: &str| SpecTable {
            schema: schema.clone(),
            name: name.clone(),
            key: key.to_owned(),
            display: match schema {
                Some(s) => format!("{s}.{name}"),
                None => name.clone(),
            },
        };
        ShardingSpec {
            sharded: tables.iter().map(|(s, n, k)| table(s, n, k)).collect(),
            reference: reference.iter().map(|(s, n)| table(s, n, "")).collect(),
            functions: WriteFunctions::new(&[]),
        }
    }

    /// Resolves a folded, possibly qualified name (`[catalog.]schema.table`).
    pub(crate) fn resolve(&self, parts: &[String]) -> TableKind {
        let Some((name, qualifier)) = parts.split_last() else {
            return TableKind::Other;
        };
        let schema = qualifier.last();
        let hit = |t: &SpecTable| {
            &t.name == name
                && (t.schema.is_none() || schema.is_none() || t.schema.as_ref() == schema)
        };
        if let Some(i) = self.sharded.iter().position(hit) {
            TableKind::Sharded(i)
        } else if let Some(i) = self.reference.iter().position(hit) {
            TableKind::Reference(i)
        } else {
            TableKind::Other
        }
    }

    pub(crate) fn key_of(&self, table: usize) -> Option<&str> {
        self.sharded.get(table).map(|t| t.key.as_str())
    }
}

/// Where a shard-key value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A constant, in PostgreSQL text form: numbers as written (`42`, `-7`), strings unescaped.
    Literal {
        /// The value's text.
        text: String,
        /// The lowercase type name of a cast applied to it (`'42'::bigint` -> `bigint`), so the
        /// caller can normalize the text (e.g. a uuid's spelling) before hashing.
        cast: Option<String>,
    },
    /// `$n`, 1-based; the value arrives in Bind.
    Param(u16),
}

/// What the statement's predicates or values say about the shard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyConstraint {
    /// Every row the statement reads or writes lives on the shards of these values.
    Values(Vec<KeySource>),
    /// Nothing is known: the statement may touch any shard.
    NoKey,
}

/// The rows of an `INSERT ... VALUES` into a sharded table, for splitting it by shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRows {
    /// The byte range of the whole list of rows, from the first row's `(` to the last row's `)`.
    pub values_range: Range<usize>,
    /// Each row's byte range (its parentheses included) and its key value.
    pub rows: Vec<(Range<usize>, KeySource)>,
    /// The statement has a `RETURNING` clause.
    pub returning: bool,
    /// The statement has an `ON CONFLICT` clause.
    pub on_conflict: bool,
}

/// Everything [`analyze`] found out about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAnalysis {
    /// Sharded tables touched (display names: `schema.name` as configured, or `name`).
    pub sharded: Vec<String>,
    /// Reference tables touched.
    pub reference: Vec<String>,
    /// Tables in neither list (catalog tables included), folded and as qualified as written.
    pub other: Vec<String>,
    /// A schema change: `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `COMMENT`, `GRANT`, `REVOKE`, ...
    pub ddl: bool,
    /// Not provably read-only (the classifier's verdict).
    pub write: bool,
    /// The combined key constraint over all sharded tables (`None` if the statement touches no
    /// sharded table).
    pub key: Option<KeyConstraint>,
    /// The first sharded table's key column, for messages, e.g. `user_id`.
    pub key_column: Option<String>,
    /// For `INSERT ... VALUES` into a sharded table with every row's key known.
    pub insert: Option<InsertRows>,
    /// An `UPDATE` (or `ON CONFLICT DO UPDATE`) sets the key column to this literal/parameter.
    pub key_update: Option<KeySource>,
    /// The statement assigns the key column at all, even to an expression `key_update` cannot
    /// show (`SET user_id = user_id + 1`): the router must refuse a possible move either way.
    pub key_assigned: bool,
    /// False: sqlparser could not read it (the caller refuses it on a multi-shard setup).
    pub parsed: bool,
    /// An outer join keeps the rows of a side that reads no sharded table (a reference or
    /// unsharded table, a function such as `generate_series`, `VALUES`) against a side that
    /// reads one (`rr LEFT JOIN t`, `t RIGHT JOIN rr`, `FULL JOIN`): every shard holds the kept
    /// side in full and would add its own NULL-extended rows, so the statement cannot run on
    /// several shards (one shard, pinned by a key filter, answers it exactly).
    pub outer_join_of_copies: bool,
    /// How many times sharded tables are referenced (a self-join or a subquery on the same
    /// table counts each reference; `sharded` lists each table once).
    pub sharded_refs: usize,
}

const DDL_WORDS: &[&str] = &[
    "CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE", "SECURITY", "IMPORT",
    "REASSIGN",
];

/// Analyzes one statement (as the crate's splitter cuts it) against `spec`. Never panics.
pub fn analyze(stmt: &[u8], spec: &ShardingSpec) -> ShardAnalysis {
    analyze_with(stmt, spec, None)
}

/// [`analyze`] with the statement's read/write verdict already known (from the classifier's
/// cache), which saves a parse: `write` must be what the classifier says of this statement.
pub fn analyze_with(stmt: &[u8], spec: &ShardingSpec, write: Option<bool>) -> ShardAnalysis {
    let write = write.unwrap_or_else(|| classify_statement(stmt, &spec.functions).write.is_some());
    let kw = leading_keywords(stmt);
    let mentions = Mentions::scan(stmt, spec);
    let mut out = ShardAnalysis {
        sharded: Vec::new(),
        reference: Vec::new(),
        other: Vec::new(),
        ddl: kw.get(0).is_some_and(|w| DDL_WORDS.contains(&w)),
        write,
        key: None,
        key_column: None,
        insert: None,
        key_update: None,
        key_assigned: false,
        parsed: false,
        outer_join_of_copies: false,
        sharded_refs: 0,
    };
    let Some(tree) = parse_one(stmt, spec) else {
        // Unreadable: report the configured tables the text names, none of them constrained.
        let sharded: Vec<usize> = mentions.sharded.iter().map(|&(i, _)| i).collect();
        finish_tables(&mut out, spec, &sharded, &mentions.reference);
        out.key = (!sharded.is_empty()).then_some(KeyConstraint::NoKey);
        return out;
    };
    out.parsed = true;
    let mut walk = walk::Walker::new(spec);
    walk.statement(&tree, true, 0);
    // The token cross-checks of the module doc. A name the statement defines for itself (`AS t`)
    // explains the word, unless part of the tree went unread.
    let blind = walk.too_deep || mentions.selects > walk.selects;
    let explained =
        |name: &String| walk.seen_names.contains(name) || (!blind && walk.aliases.contains(name));
    let missed_sharded: Vec<usize> = (mentions.sharded.iter())
        .filter(|(_, name)| !explained(name))
        .map(|&(table, _)| table)
        .collect();
    let missed_reference: Vec<usize> = (mentions.reference_names.iter())
        .filter(|(i, name)| !explained(name) && !walk.reference.contains(i))
        .map(|&(i, _)| i)
        .collect();
    for table in missed_sharded {
        walk.sharded.push(walk::ShardedRef { table, key: None });
    }
    walk.reference.extend(missed_reference);
    let tables: Vec<usize> = walk.sharded.iter().map(|r| r.table).collect();
    finish_tables(&mut out, spec, &tables, &walk.reference);
    out.other = std::mem::take(&mut walk.other);
    out.key_update = walk.key_update.take();
    out.key_assigned = walk.key_assigned;
    out.outer_join_of_copies = walk.outer_join_of_copies;
    out.sharded_refs = walk.sharded.len();
    if walk.sharded.is_empty() {
        return out;
    }
    let key = if blind { None } else { combine(&walk.sharded) };
    out.key = Some(key.map_or(KeyConstraint::NoKey, KeyConstraint::Values));
    if let (Some(ins), Some(KeyConstraint::Values(_))) = (walk.insert.take(), &out.key) {
        out.insert = insert::rows(stmt, ins);
    }
    out
}

/// The one value set every sharded reference is pinned to, if they all agree.
fn combine(refs: &[walk::ShardedRef]) -> Option<Vec<KeySource>> {
    let (first, rest) = refs.split_first()?;
    let values = first.key.as_ref()?;
    let set: HashSet<&KeySource> = values.iter().collect();
    for r in rest {
        let other: HashSet<&KeySource> = r.key.as_ref()?.iter().collect();
        if other != set {
            return None;
        }
    }
    Some(values.clone())
}

fn finish_tables(
    out: &mut ShardAnalysis,
    spec: &ShardingSpec,
    sharded: &[usize],
    reference: &[usize],
) {
    for &i in sharded {
        if let Some(t) = spec.sharded.get(i) {
            if !out.sharded.contains(&t.display) {
                out.sharded.push(t.display.clone());
            }
            out.key_column.get_or_insert_with(|| t.key.clone());
        }
    }
    for &i in reference {
        if let Some(t) = spec.reference.get(i) {
            if !out.reference.contains(&t.display) {
                out.reference.push(t.display.clone());
            }
        }
    }
}

/// Parses exactly one statement, within the same bounds as the classifier.
fn parse_one(stmt: &[u8], spec: &ShardingSpec) -> Option<Statement> {
    let text = std::str::from_utf8(stmt).ok()?;
    if text.len() > MAX_PARSE_LEN || scan(stmt, &spec.functions).operators > MAX_OPERATORS {
        return None;
    }
    // As in the classifier: a panic inside sqlparser must cost one statement, not the proxy.
    std::panic::catch_unwind(|| {
        let mut v = Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(50)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_statements())
            .ok()?;
        if v.len() == 1 {
            v.pop()
        } else {
            None
        }
    })
    .ok()
    .flatten()
}

/// What the tokens say, independent of the parser: configured table names and `SELECT`s.
#[derive(Debug, Default)]
struct Mentions {
    sharded: Vec<(usize, String)>,
    reference: Vec<usize>,
    reference_names: Vec<(usize, String)>,
    selects: usize,
}

impl Mentions {
    fn scan(stmt: &[u8], spec: &ShardingSpec) -> Mentions {
        let mut m = Mentions::default();
        for t in Lexer::new(stmt, LexOptions::default()) {
            let Some(text) = stmt.get(t.start..t.end) else {
                continue;
            };
            let names = |table: &SpecTable| match t.kind {
                // An unquoted word folds to lowercase, so it never names a table whose configured
                // name has an uppercase letter.
                TokenKind::Word => {
                    table.name.as_bytes().eq_ignore_ascii_case(text)
                        && !table.name.bytes().any(|b| b.is_ascii_uppercase())
                }
                TokenKind::QuotedIdent if t.terminated => text
                    .strip_prefix(b"\"")
                    .and_then(|q| q.strip_suffix(b"\""))
                    .is_some_and(|inner| quoted_equals(inner, &table.name)),
                _ => false,
            };
            if t.kind == TokenKind::Word && text.eq_ignore_ascii_case(b"SELECT") {
                m.selects += 1;
            }
            for (i, table) in spec.sharded.iter().enumerate() {
                if names(table) && !m.sharded.iter().any(|&(j, _)| j == i) {
                    m.sharded.push((i, table.name.clone()));
                }
            }
            for (i, table) in spec.reference.iter().enumerate() {
                if names(table) && !m.reference.contains(&i) {
                    m.reference.push(i);
                    m.reference_names.push((i, table.name.clone()));
                }
            }
        }
        m
    }
}

/// The body of a `"..."` identifier (with `""` for a quote) equals `name`.
fn quoted_equals(inner: &[u8], name: &str) -> bool {
    if inner.contains(&b'"') {
        String::from_utf8_lossy(inner).replace("\"\"", "\"") == name
    } else {
        inner == name.as_bytes()
    }
}
