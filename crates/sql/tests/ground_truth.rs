//! The classifier against PostgreSQL's own grammar (libpg_query, via the `pg_query` crate):
//! `cargo test -p shardgate-sql --features ground-truth`. For every corpus statement PostgreSQL
//! accepts, it decides read or write from PostgreSQL's parse tree and asserts that no statement
//! it calls a write is classified as a read by ours.
#![cfg(feature = "ground-truth")]

mod common;

use serde_json::Value;
use shardgate_sql::{Classifier, TxnControl};

/// Top-level statement kinds that do not write (the brief's definition).
const READ_KINDS: &[&str] = &[
    "SelectStmt",
    "ExplainStmt",
    "VariableShowStmt",
    "TransactionStmt",
];

/// Written independently of the classifier's own list, from the examples.
fn is_write_function(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "nextval",
        "setval",
        "pg_notify",
        "txid_current",
        "pg_current_xact_id",
        "set_config",
    ]
    .contains(&name.as_str())
        || ["pg_advisory_", "pg_try_advisory_", "lo_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// PostgreSQL's verdict on one parsed statement (`node` is the RawStmt's `stmt.node`): the
/// reason it is a write, or `None` for a read.
fn pg_write_reason(node: &Value) -> Option<String> {
    let (kind, body) = node.as_object()?.iter().next()?;
    if !READ_KINDS.contains(&kind.as_str()) {
        return Some(format!("top {kind}"));
    }
    if kind == "ExplainStmt" {
        let inner = body.get("query")?.get("node")?;
        let inner_kind = inner.as_object()?.keys().next()?;
        if inner_kind != "SelectStmt" {
            return Some(format!("top ExplainStmt of {inner_kind}"));
        }
    }
    walk(body)
}

/// Looks through the whole tree for a SELECT with INTO or a locking clause, a data-modifying
/// CTE, or a call to a write function.
fn walk(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items.iter().find_map(walk),
        Value::Object(map) => {
            for (key, child) in map {
                match key.as_str() {
                    "SelectStmt" => {
                        if child.get("into_clause").is_some_and(|c| !c.is_null()) {
                            return Some("SELECT INTO".into());
                        }
                        if child
                            .get("locking_clause")
                            .and_then(Value::as_array)
                            .is_some_and(|l| !l.is_empty())
                        {
                            return Some("locking clause".into());
                        }
                    }
                    "CommonTableExpr" => {
                        let q = child.get("ctequery").and_then(|q| q.get("node"));
                        if let Some(k) = q.and_then(Value::as_object).and_then(|o| o.keys().next())
                        {
                            if k != "SelectStmt" {
                                return Some(format!("CTE {k}"));
                            }
                        }
                    }
                    "FuncCall" => {
                        let name = child
                            .get("funcname")
                            .and_then(Value::as_array)
                            .and_then(|parts| parts.last())
                            .and_then(|n| n.pointer("/node/String/sval"))
                            .and_then(Value::as_str);
                        if let Some(name) = name.filter(|n| is_write_function(n)) {
                            return Some(format!("function {name}"));
                        }
                    }
                    _ => {}
                }
                if let Some(why) = walk(child) {
                    return Some(why);
                }
            }
            None
        }
        _ => None,
    }
}

#[test]
fn no_statement_postgres_calls_a_write_is_classified_read() {
    // Cached, with room for every shape: statements that differ only in literal values share
    // one entry, so this also proves that sharing never turns a write into a read.
    let classifier = Classifier::new(100_000, &[]);
    let (mut total, mut rejected) = (0usize, 0usize);
    let (mut pg_writes, mut pg_reads, mut both_read, mut exempt) = (0usize, 0usize, 0usize, 0usize);
    let mut offenders = Vec::new();
    // How often each in-query reason fired, to prove the tree walk finds what it looks for.
    let mut query_reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let files = common::for_each_corpus_statement(|stmt| {
        total += 1;
        let Ok(text) = std::str::from_utf8(stmt) else {
            rejected += 1;
            return;
        };
        let Ok(parsed) = pg_query::parse(text, 0) else {
            // Not SQL PostgreSQL accepts (psql variables, the corpus's deliberate errors).
            rejected += 1;
            return;
        };
        let Ok(tree) = serde_json::to_value(&parsed.protobuf) else {
            rejected += 1;
            return;
        };
        let stmts = tree
            .get("stmts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let pg_why = stmts
            .iter()
            .find_map(|s| s.pointer("/stmt/node").and_then(pg_write_reason));
        let ours = classifier.classify(stmt);
        match pg_why {
            None => {
                pg_reads += 1;
                both_read += usize::from(ours.is_read());
            }
            Some(why) => {
                pg_writes += 1;
                if !why.starts_with("top ") {
                    let key = why.split(' ').next().unwrap_or_default().to_owned();
                    *query_reasons.entry(key).or_default() += 1;
                }
                // Transaction control and shardgate's own commands are not writes by the
                // brief's rules, though PostgreSQL files them under VariableSetStmt.
                if ours.txn == [TxnControl::SetTransactionReadOnly] || ours.shardgate.is_some() {
                    exempt += 1;
                } else if ours.is_read() {
                    offenders.push(format!("{why}: {text}"));
                }
            }
        }
    });
    if files.is_none() {
        return;
    }
    for o in &offenders {
        eprintln!("WRITE CLASSIFIED READ: {o}");
    }
    eprintln!(
        "{total} statements; PostgreSQL rejects {rejected}; of the rest it calls {pg_writes} \
         writes and {pg_reads} reads. Ours: {} writes classified read, {both_read} of the \
         {pg_reads} reads kept on replicas ({:.1}%), {exempt} exempt (SET TRANSACTION READ ONLY).",
        offenders.len(),
        100.0 * both_read as f64 / pg_reads.max(1) as f64,
    );
    eprintln!("writes found inside queries: {query_reasons:?}");
    assert!(total > 40_000, "only {total} statements");
    for reason in ["SELECT", "locking", "CTE", "function"] {
        assert!(
            query_reasons.contains_key(reason),
            "ground truth never saw {reason}"
        );
    }
    assert!(
        offenders.is_empty(),
        "{} writes classified as reads",
        offenders.len()
    );
}
