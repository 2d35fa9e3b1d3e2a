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

/// PostgreSQL's tree says the statement leaves state on the session that outlives its
/// transaction: why, or `None`. Written from the grammar, independently of the classifier's
/// token rules. `DO` bodies are opaque to the parser and not judged here.
fn pg_pin_reason(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items.iter().find_map(pg_pin_reason),
        Value::Object(map) => {
            // A relation created temporary (CreateStmt, the IntoClause of CREATE TABLE AS and
            // SELECT INTO, views, sequences): the parser marks references permanent ('p'), so
            // 't' is only ever a creation. ON COMMIT DROP ends it with the transaction.
            let dropped = ["oncommit", "on_commit"].iter().any(|k| {
                map.get(*k).is_some_and(|o| {
                    o.as_i64() == Some(4) || o.as_str().is_some_and(|s| s.contains("DROP"))
                })
            });
            if dropped {
                return None;
            }
            if map.get("relpersistence").and_then(Value::as_str) == Some("t") {
                return Some("temporary relation".to_owned());
            }
            for (key, child) in map {
                let found = match key.as_str() {
                    "ListenStmt" => Some("LISTEN".to_owned()),
                    "PrepareStmt" => Some("PREPARE".to_owned()),
                    "LoadStmt" => Some("LOAD".to_owned()),
                    "DeclareCursorStmt" => child
                        .get("options")
                        .and_then(Value::as_i64)
                        // CURSOR_OPT_HOLD
                        .filter(|o| o & 0x20 != 0)
                        .map(|_| "WITH HOLD".to_owned()),
                    "VariableSetStmt" => child
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|n| n.eq_ignore_ascii_case("SESSION CHARACTERISTICS"))
                        .map(|_| "SESSION CHARACTERISTICS".to_owned()),
                    "FuncCall" => pg_pinning_call(child),
                    _ => None,
                };
                if found.is_some() {
                    return found;
                }
                if let Some(why) = pg_pin_reason(child) {
                    return Some(why);
                }
            }
            None
        }
        _ => None,
    }
}

/// A call that pins: a session-level advisory lock, `dblink_connect`, or `set_config` whose
/// third argument is not a constant true.
fn pg_pinning_call(call: &Value) -> Option<String> {
    let name = call
        .get("funcname")
        .and_then(Value::as_array)
        .and_then(|parts| parts.last())
        .and_then(|n| n.pointer("/node/String/sval"))
        .and_then(Value::as_str)?
        .to_ascii_lowercase();
    let session_lock = [
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    ];
    if session_lock.contains(&name.as_str()) || name.starts_with("dblink_connect") {
        return Some(name);
    }
    if name != "set_config" {
        return None;
    }
    let third = call.get("args").and_then(Value::as_array)?.get(2)?;
    let konst = third.pointer("/node/AConst");
    let local = konst.is_some_and(|c| {
        c.pointer("/val/Boolval/boolval").and_then(Value::as_bool) == Some(true)
            || c.pointer("/val/Sval/sval")
                .and_then(Value::as_str)
                .is_some_and(|s| {
                    ["t", "true", "y", "yes", "on", "1"].contains(&s.to_ascii_lowercase().as_str())
                })
    });
    (!local).then(|| "set_config".to_owned())
}

#[test]
fn no_statement_postgres_says_outlives_its_transaction_leaves_the_session_unpinned() {
    let classifier = Classifier::new(100_000, &[]);
    let (mut pg_pins, mut extra) = (0usize, 0usize);
    let mut offenders = Vec::new();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut extra_reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    let files = common::for_each_corpus_statement(|stmt| {
        let Ok(text) = std::str::from_utf8(stmt) else {
            return;
        };
        let Ok(parsed) = pg_query::parse(text, 0) else {
            return;
        };
        let Ok(tree) = serde_json::to_value(&parsed.protobuf) else {
            return;
        };
        let ours = classifier.classify(stmt).pins_session;
        match pg_pin_reason(&tree) {
            Some(why) => {
                pg_pins += 1;
                let key = why.split(' ').next().unwrap_or_default().to_owned();
                *reasons.entry(key).or_default() += 1;
                if ours.is_none() {
                    offenders.push(format!("{why}: {text}"));
                }
            }
            None => {
                if let Some(why) = ours {
                    extra += 1;
                    *extra_reasons.entry(why).or_default() += 1;
                }
            }
        }
    });
    if files.is_none() {
        return;
    }
    for o in &offenders {
        eprintln!("PINNING STATEMENT NOT PINNED: {o}");
    }
    eprintln!(
        "PostgreSQL's tree finds {pg_pins} statements that outlive their transaction ({reasons:?}); \
         ours misses {}, and pins {extra} more, by our reasons {extra_reasons:?} (objects \
         named in pg_temp: temporary functions, types, views, tables created by schema, and \
         search_paths naming it; SETs inside DO blocks, which PostgreSQL's tree keeps as text).",
        offenders.len()
    );
    for reason in [
        "LISTEN",
        "PREPARE",
        "WITH",
        "temporary",
        "pg_advisory_lock",
        "set_config",
    ] {
        assert!(
            reasons.contains_key(reason),
            "ground truth never saw {reason}"
        );
    }
    assert!(
        offenders.is_empty(),
        "{} pinning statements not pinned",
        offenders.len()
    );
}
