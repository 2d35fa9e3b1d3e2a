//! The classifier's fast cache key equals its reference implementation (the lexer's token stream)
//! byte for byte: on arbitrary bytes, on text built from the fragments where a literal's bounds
//! are subtle, and on every statement and whole file of PostgreSQL's regression SQL.

mod common;

use proptest::prelude::*;
use shardgate_sql::cache_key_internals::{cache_key, cache_key_reference};

fn fast(sql: &[u8]) -> Vec<u8> {
    let mut out = b"stale".to_vec();
    cache_key(sql, &mut out);
    out
}

fn reference(sql: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    cache_key_reference(sql, &mut out);
    out
}

/// Pieces of SQL that start, end or look like literals, words, comments and parameters.
fn sqlish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![
            "'", "''", "'x'", "\"", "\"\"", "E'", "e'", "U&'", "u&'", "U&\"", "U&", "u&x", "B'",
            "b'", "X'", "x'", "N'", "n'", "ee'", "$", "$$", "$tag$", "$tag", "$1", "$12", "--",
            "/*", "*/", "0", "12345", "1e5", "1E+", "1e-7", "1..2", ".5", "1.", ".", "t1", "a",
            "_x$", "SET", "set", "ReSeT", "show", "SHOWx", "s", "u", "e", "\\", "\\'", "\u{e9}",
            "\u{80}", "\n", "\r", " ", "\t", "\x0b", "\x0c", ";", "(", "-", "/", "*", "=", "&",
            ",", "\x00",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        Just(vec![0x80]),
        Just(vec![0xff]),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

/// What may come before the first word: nothing, space, comments, or SET/RESET/SHOW themselves.
fn opening() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        " \n\t",
        "SET ",
        "/* c */ reset ",
        "-- x\nShow ",
        "/* /* nested */ */SET",
        "--\rset",
        "(SET ",
        "SETx ",
        "/* unterminated",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn equals_reference_on_arbitrary_bytes(sql in prop::collection::vec(any::<u8>(), 0..300)) {
        prop_assert_eq!(fast(&sql), reference(&sql));
    }

    #[test]
    fn equals_reference_on_sqlish_text(open in opening(), rest in sqlish_bytes()) {
        let sql = [open.as_bytes(), &rest].concat();
        prop_assert_eq!(fast(&sql), reference(&sql));
    }
}

#[test]
fn literals_are_blanked_where_the_lexer_says() {
    let cases: [(&[u8], &[u8]); 12] = [
        (
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = \0;",
        ),
        (
            b"SELECT t1.a FROM t1 WHERE x = $1",
            b"SELECT t1.a FROM t1 WHERE x = $1",
        ),
        (b"SELECT 1..2, .5, 1e5", b"SELECT \0..\0, .\0, \0"),
        (b"SELECT E'a\\'b', 'c''d'", b"SELECT \0, \0"),
        (
            b"SELECT U&'x', u&\"y\", B'1', X'f', N'n'",
            b"SELECT \0, u&\"y\", \0, \0, \0",
        ),
        (b"SELECT ee'x'", b"SELECT ee\0"),
        (b"SELECT $t$ 'x' $t$, '1", b"SELECT $t$ 'x' $t$, '1"),
        (b"SELECT 'a'\n'b' -- 2\n", b"SELECT \0 -- 2\n"),
        (b"/* 1 */ SELECT 2", b"/* 1 */ SELECT \0"),
        (b"/* 1 */ set x = 2", b"/* 1 */ set x = 2"),
        (b"(SET) 1", b"(SET) \0"),
        (b"SETx = 1", b"SETx = \0"),
    ];
    for (sql, want) in cases {
        assert_eq!(fast(sql), want, "{}", String::from_utf8_lossy(sql));
        assert_eq!(reference(sql), want, "{}", String::from_utf8_lossy(sql));
    }
}

#[test]
fn equals_reference_on_the_regression_corpus() {
    let mut statements = 0usize;
    let files = common::for_each_corpus_statement(|stmt| {
        assert_eq!(
            fast(stmt),
            reference(stmt),
            "{}",
            String::from_utf8_lossy(stmt)
        );
        statements += 1;
    });
    let Some(files) = files else { return };
    // Whole files too: many statements per text, psql meta-commands and COPY data included.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpus/postgres-regress");
    let mut whole = 0usize;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read(entry.path()) else {
            continue;
        };
        assert_eq!(fast(&text), reference(&text), "{}", entry.path().display());
        whole += 1;
    }
    eprintln!("{files} files, {statements} statements, {whole} whole files: keys equal");
    assert!(
        files == 0 || (statements > 40_000 && whole == files),
        "{statements} statements, {whole} of {files} files"
    );
}
