//! Classifies every statement of PostgreSQL's regression SQL: nothing may panic, and the test
//! reports how much sqlparser could read and how many statements came out read vs write.

mod common;

use shardgate_sql::{leading_keywords, Classifier, WhyWrite};
use std::collections::BTreeMap;

#[test]
fn regression_corpus_classifies_without_panics() {
    let classifier = Classifier::new(0, &[]);
    let (mut total, mut reads, mut unparsed) = (0usize, 0usize, 0usize);
    let (mut candidates, mut candidates_parsed) = (0usize, 0usize);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let files = common::for_each_corpus_statement(|stmt| {
        let c = classifier.classify_uncached(stmt);
        total += 1;
        assert_eq!(c.statements, 1);
        let first = leading_keywords(stmt);
        if first.is_empty()
            || ["SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"]
                .iter()
                .any(|k| first.starts_with(&[k]))
        {
            candidates += 1;
            candidates_parsed += usize::from(c.parsed);
        }
        unparsed += usize::from(!c.parsed);
        match &c.write {
            None => reads += 1,
            Some(WhyWrite::WriteFunction(_)) => {
                *reasons.entry("WriteFunction".into()).or_default() += 1
            }
            Some(why) => *reasons.entry(format!("{why:?}")).or_default() += 1,
        }
    });
    if files.is_none() {
        return;
    }
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    eprintln!(
        "{total} statements: {reads} read ({:.1}%), {} write; sqlparser parsed {candidates_parsed} of \
         {candidates} possible reads ({:.1}%); {unparsed} statements unparsed overall",
        pct(reads, total),
        total - reads,
        pct(candidates_parsed, candidates),
    );
    for (why, n) in &reasons {
        eprintln!("  {n:>6}  {why}");
    }
    assert!(total > 40_000, "only {total} statements");
}

/// sqlparser's coverage of the whole corpus, for comparison with the README's 89.4% (the
/// classifier itself only parses statements that might be reads).
#[test]
fn sqlparser_coverage_of_the_whole_corpus() {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    let (mut total, mut ok) = (0usize, 0usize);
    let files = common::for_each_corpus_statement(|stmt| {
        total += 1;
        let Ok(text) = std::str::from_utf8(stmt) else {
            return;
        };
        let parsed = Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(50)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_statements());
        ok += usize::from(parsed.is_ok_and(|v| v.len() == 1));
    });
    if files.is_some() {
        eprintln!(
            "sqlparser parses {ok} of {total} corpus statements ({:.1}%)",
            100.0 * ok as f64 / total.max(1) as f64
        );
    }
}
