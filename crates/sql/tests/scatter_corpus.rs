//! `scatter_select` over every `SELECT` of PostgreSQL's regression SQL: it must never panic, and
//! every statement it accepts must come back as shard SQL that parses as one `SELECT` whose
//! select list has exactly `shard_columns` items. Prints how many were accepted and why the
//! rest were refused.

mod common;

use shardgate_sql::leading_keywords;
use shardgate_sql::scatter::scatter_select;
use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::BTreeMap;

/// The number of select-list items of `sql`, if it parses as exactly one plain `SELECT`.
fn select_items(sql: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(sql).ok()?;
    let mut v = Parser::parse_sql(&PostgreSqlDialect {}, text).ok()?;
    if v.len() != 1 {
        return None;
    }
    match v.pop()? {
        Statement::Query(q) => match *q.body {
            SetExpr::Select(s) => Some(s.projection.len()),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn corpus_selects_split_into_parseable_shard_sql() {
    let (mut total, mut accepted) = (0usize, 0usize);
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let files = common::for_each_corpus_statement(|stmt| {
        if !leading_keywords(stmt).starts_with(&["SELECT"]) {
            return;
        }
        total += 1;
        match scatter_select(stmt) {
            Ok(s) => {
                accepted += 1;
                if select_items(&s.shard_sql) != Some(s.shard_columns) {
                    bad.push(format!(
                        "{}\n  => {}",
                        String::from_utf8_lossy(stmt),
                        String::from_utf8_lossy(&s.shard_sql)
                    ));
                }
                assert_eq!(s.outputs.len(), select_items(stmt).unwrap_or(usize::MAX));
            }
            Err(e) => *refused.entry(e.construct).or_default() += 1,
        }
    });
    let Some(files) = files else { return };
    eprintln!("{files} files, {total} SELECTs: {accepted} accepted, refused:");
    let mut by_count: Vec<(&String, &usize)> = refused.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    for (construct, n) in by_count {
        eprintln!("  {n:6}  {construct}");
    }
    assert!(
        bad.is_empty(),
        "{} bad shard statements:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(files == 0 || accepted > 1000, "only {accepted} accepted");
}

/// A diagnostic, not a check: prints refused statements whose construct starts with
/// `$SCATTER_DUMP` (`cargo test --test scatter_corpus dump -- --ignored --nocapture`).
#[test]
#[ignore]
fn dump_refusals() {
    let want = std::env::var("SCATTER_DUMP").unwrap_or_default();
    let mut n = 0;
    common::for_each_corpus_statement(|stmt| {
        if !leading_keywords(stmt).starts_with(&["SELECT"]) {
            return;
        }
        if let Err(e) = scatter_select(stmt) {
            if e.construct.starts_with(&want) && n < 60 && select_items(stmt).is_some() {
                n += 1;
                eprintln!("--- {}", String::from_utf8_lossy(stmt));
            }
        }
    });
}
