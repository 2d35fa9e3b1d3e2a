//! Splits PostgreSQL's own regression SQL (about 45k statements) the way psql feeds it to the
//! server. Asserts that nothing panics and every statement re-splits to itself, and reports the
//! count.

mod common;

use shardgate_sql::{comments, leading_keywords, session_command, split_statements, LexOptions};

#[test]
fn regression_corpus_splits_without_panics() {
    let mut count = 0;
    let files = common::for_each_corpus_statement(|stmt| {
        let opts = LexOptions::default();
        assert_eq!(
            split_statements(stmt, opts),
            std::slice::from_ref(&(0..stmt.len()))
        );
        let _ = leading_keywords(stmt);
        let _ = comments(stmt).count();
        let _ = session_command(stmt);
        count += 1;
    });
    let Some(files) = files else { return };
    eprintln!("{files} files, {count} statements");
    assert!(files == 0 || count > 40_000, "only {count} statements");
}
