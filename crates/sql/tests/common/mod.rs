//! Reads PostgreSQL's own regression SQL (about 45k statements) the way psql feeds it to the
//! server: meta-command lines skipped, `COPY ... FROM stdin` data skipped up to `\.`. Shared by the
//! corpus tests so they all see the same statements.

use shardgate_sql::{leading_keywords, split_statements, LexOptions};
use std::path::PathBuf;

/// Calls `f` with every statement of every corpus file, in order, and returns how many files
/// were read; `None` (after saying so) when the corpus is not there.
pub fn for_each_corpus_statement(mut f: impl FnMut(&[u8])) -> Option<usize> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/postgres-regress");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: corpus not found at {}", dir.display());
        return None;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
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
                in_copy = flush(&buf, &mut f);
                buf.clear();
            }
        }
        flush(&buf, &mut f);
    }
    Some(files.len())
}

/// Hands each statement in the complete buffer to `f`; true if the last one is
/// `COPY ... FROM stdin` (its data follows in the file).
fn flush(buf: &[u8], f: &mut impl FnMut(&[u8])) -> bool {
    let ranges = split_statements(buf, LexOptions::default());
    for r in &ranges {
        f(&buf[r.clone()]);
    }
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
