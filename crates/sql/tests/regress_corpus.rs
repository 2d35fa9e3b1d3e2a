//! Splits PostgreSQL's own regression SQL (about 45k statements) the way psql feeds it to the
//! server: meta-command lines skipped, `COPY ... FROM stdin` data skipped up to `\.`. Asserts that
//! nothing panics and every statement re-splits to itself, and reports the count.

use shardgate_sql::{comments, leading_keywords, session_command, split_statements, LexOptions};
use std::path::PathBuf;

/// Statements in the complete buffer, and whether the last one is `COPY ... FROM stdin`.
fn flush(buf: &[u8], count: &mut usize) -> bool {
    let opts = LexOptions::default();
    let ranges = split_statements(buf, opts);
    for r in &ranges {
        let stmt = &buf[r.clone()];
        assert_eq!(
            split_statements(stmt, opts),
            std::slice::from_ref(&(0..stmt.len()))
        );
        let _ = leading_keywords(stmt);
        let _ = comments(stmt).count();
        let _ = session_command(stmt);
    }
    *count += ranges.len();
    ranges.last().is_some_and(|r| {
        let stmt = String::from_utf8_lossy(&buf[r.clone()]).to_ascii_lowercase();
        let words: Vec<&str> = stmt.split_ascii_whitespace().collect();
        leading_keywords(&buf[r.clone()]).starts_with(&["COPY"])
            && words.windows(2).any(|w| w == ["from", "stdin"])
    })
}

/// True when `buf` ends right after a top-level `;` (plus blanks or comments): psql would send it.
fn is_complete(buf: &[u8]) -> bool {
    let opts = LexOptions::default();
    let Some(last) = split_statements(buf, opts).pop() else {
        return false;
    };
    let tail = &buf[last.end..];
    let trimmed = tail.trim_ascii_start();
    trimmed.first() == Some(&b';') && split_statements(trimmed, opts).is_empty()
}

#[test]
fn regression_corpus_splits_without_panics() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/postgres-regress");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: corpus not found at {}", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut count = 0;
    for path in &files {
        let Ok(text) = std::fs::read(path) else {
            continue;
        };
        let mut buf = Vec::new();
        let mut in_copy = false;
        for line in text.split(|&b| b == b'\n') {
            if in_copy {
                in_copy = line.trim_ascii_end() != b"\\.";
                continue;
            }
            if line.first() == Some(&b'\\') {
                continue;
            }
            buf.extend_from_slice(line);
            buf.push(b'\n');
            if line.contains(&b';') && is_complete(&buf) {
                in_copy = flush(&buf, &mut count);
                buf.clear();
            }
        }
        flush(&buf, &mut count);
    }
    eprintln!("{} files, {count} statements", files.len());
    assert!(
        files.is_empty() || count > 40_000,
        "only {count} statements"
    );
}
