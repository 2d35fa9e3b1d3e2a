//! Statement splitting, keywords and comments against each rule of PostgreSQL's scanner.

use shardgate_sql::{comments, has_keyword, leading_keywords, split_statements, LexOptions};

fn split_with(sql: &str, opts: LexOptions) -> Vec<&str> {
    split_statements(sql.as_bytes(), opts)
        .into_iter()
        .map(|r| &sql[r])
        .collect()
}

fn split(sql: &str) -> Vec<&str> {
    split_with(sql, LexOptions::default())
}

const SCS_OFF: LexOptions = LexOptions {
    standard_conforming_strings: false,
};

#[test]
fn plain_split_trims_and_drops_empty_statements() {
    assert_eq!(split("select 1; select 2"), ["select 1", "select 2"]);
    assert_eq!(
        split("  select 1 ;;  ; \n select 2;\n"),
        ["select 1", "select 2"]
    );
    assert!(split("").is_empty());
    assert!(split(" ; ;\n\t;").is_empty());
    assert!(split("-- only a comment\n; /* and another */").is_empty());
    assert_eq!(split("select (1; 2)"), ["select (1", "2)"]);
}

#[test]
fn leading_comments_are_kept_trailing_comment_only_parts_dropped() {
    let sql = "/* shard=1 */ select 1; -- hint\nselect 2; -- bye";
    assert_eq!(split(sql), ["/* shard=1 */ select 1", "-- hint\nselect 2"]);
    assert_eq!(split("select 1 /* tail */ ;"), ["select 1 /* tail */"]);
}

#[test]
fn single_quotes_with_doubling() {
    assert_eq!(
        split("select 'a;b'; select 2"),
        ["select 'a;b'", "select 2"]
    );
    assert_eq!(
        split("select 'it''s; fine'; x"),
        ["select 'it''s; fine'", "x"]
    );
    assert_eq!(split("select ''; x"), ["select ''", "x"]);
    // A backslash is an ordinary byte in a standard literal.
    assert_eq!(split(r"select 'a\'; x"), [r"select 'a\'", "x"]);
}

#[test]
fn escape_strings_take_backslashes() {
    assert_eq!(split(r"select E'\''; x"), [r"select E'\''", "x"]);
    assert_eq!(split(r"select e'a\';b'; x"), [r"select e'a\';b'", "x"]);
    assert_eq!(split(r"select E'\\'; x"), [r"select E'\\'", "x"]);
    assert_eq!(split(r"select E'it''s;'; x"), [r"select E'it''s;'", "x"]);
    // Longest match: `ee` is an identifier, so the literal is a standard one.
    assert_eq!(split(r"select ee'\'; x"), [r"select ee'\'", "x"]);
}

#[test]
fn standard_conforming_strings_off_makes_plain_literals_escape() {
    let sql = r"select 'a\';b'; x";
    assert_eq!(split_with(sql, SCS_OFF), [r"select 'a\';b'", "x"]);
    assert_eq!(split(sql), [r"select 'a\'", "b'; x"]);
    assert_eq!(
        split_with(r"select N'\';'; x", SCS_OFF),
        [r"select N'\';'", "x"]
    );
    // U& and bit strings never take backslash escapes.
    assert_eq!(
        split_with(r"select U&'\'; x", SCS_OFF),
        [r"select U&'\'", "x"]
    );
    assert_eq!(
        split_with(r"select B'\'; x", SCS_OFF),
        [r"select B'\'", "x"]
    );
}

#[test]
fn unicode_bit_and_hex_literals() {
    assert_eq!(
        split("select U&'d\\0061t;a'; x"),
        ["select U&'d\\0061t;a'", "x"]
    );
    assert_eq!(split("select u&'a'' ;'; x"), ["select u&'a'' ;'", "x"]);
    assert_eq!(
        split("select B'10;1', X'f;F'; x"),
        ["select B'10;1', X'f;F'", "x"]
    );
    assert_eq!(split("select n'a;b'; x"), ["select n'a;b'", "x"]);
}

#[test]
fn continuation_keeps_the_escape_rule_of_the_first_part() {
    // The second part continues the E literal, so `\'` inside it is an escape.
    let sql = "select E'a'\n  'b\\'; c'; x";
    assert_eq!(split(sql), ["select E'a'\n  'b\\'; c'", "x"]);
    let with_comment = "select E'a' -- note\n -- more\n'\\';'; x";
    assert_eq!(
        split(with_comment),
        ["select E'a' -- note\n -- more\n'\\';'", "x"]
    );
    // Without a newline there is no continuation: the second literal is a standard one.
    assert_eq!(split("select E'a' '\\'; x"), ["select E'a' '\\'", "x"]);
    // A block comment breaks continuation too.
    assert_eq!(
        split("select E'a' /**/\n'\\'; x"),
        ["select E'a' /**/\n'\\'", "x"]
    );
}

#[test]
fn double_quoted_identifiers() {
    assert_eq!(split(r#"select "a;""b"; x"#), [r#"select "a;""b""#, "x"]);
    assert_eq!(
        split(r#"select U&"a;\0041"; x"#),
        [r#"select U&"a;\0041""#, "x"]
    );
    assert_eq!(split(r#"select "--"; x"#), [r#"select "--""#, "x"]);
}

#[test]
fn dollar_quotes() {
    assert_eq!(split("select $$a;b$$; x"), ["select $$a;b$$", "x"]);
    assert_eq!(
        split("do $f$ begin; end $f$; x"),
        ["do $f$ begin; end $f$", "x"]
    );
    // A different tag, or the tag as a prefix of a longer one, does not close.
    let sql = "select $a$ $b$; $ab$; $a$; x";
    assert_eq!(split(sql), ["select $a$ $b$; $ab$; $a$", "x"]);
    // A non-matching delimiter gives back its final `$`, which can open the real one.
    assert_eq!(split("select $a$x$b$a$; y"), ["select $a$x$b$a$", "y"]);
    assert_eq!(split("select $_9é$;$_9é$; y"), ["select $_9é$;$_9é$", "y"]);
    // Nested dollar quotes with distinct tags.
    let body = "create function f() returns int as $body$ select $q$;$q$; $body$ language sql; x";
    assert_eq!(split(body).len(), 2);
}

#[test]
fn dollar_that_is_not_a_quote() {
    assert_eq!(split("select $1; select $2"), ["select $1", "select $2"]);
    // `$1$` is a parameter then a lone `$`... and `$$` after a parameter does open a quote.
    assert_eq!(split("select $1$$;$$; x"), ["select $1$$;$$", "x"]);
    // `$` is an identifier character, so no quote opens inside `a$b$`.
    assert_eq!(split("select a$b$; c$b$; x"), ["select a$b$", "c$b$", "x"]);
    // A tag may not start with a digit; `$abc` without a closing `$` is a lone `$`.
    assert_eq!(split("select $abc; x"), ["select $abc", "x"]);
    assert_eq!(split("select 1$$;$$"), ["select 1$$;$$"]);
}

#[test]
fn line_comments() {
    assert_eq!(split("select 1 -- a; b\n; x"), ["select 1 -- a; b", "x"]);
    assert_eq!(split("select 1 --;\r; x"), ["select 1 --;", "x"]);
    // `--` inside an operator still starts a comment.
    assert_eq!(
        split("select 1 +-- ;\n+ 2; x"),
        ["select 1 +-- ;\n+ 2", "x"]
    );
}

#[test]
fn nested_block_comments() {
    assert_eq!(
        split("select /* a /* b; */ c; */ 1; x"),
        ["select /* a /* b; */ c; */ 1", "x"]
    );
    assert_eq!(split("select /**/ 1; x"), ["select /**/ 1", "x"]);
    // `/*/` opens only one level; `*/*` closes then lets `*` through.
    assert_eq!(split("select /*/ ; */ 1; x"), ["select /*/ ; */ 1", "x"]);
    assert_eq!(
        split("select 2 */* ; */ 1; x"),
        ["select 2 */* ; */ 1", "x"]
    );
    assert_eq!(
        split("select /* ' \" $$ -- */ 1; x"),
        ["select /* ' \" $$ -- */ 1", "x"]
    );
}

#[test]
fn unterminated_runs_to_the_end() {
    assert_eq!(
        split("select 1; select 'a; b"),
        ["select 1", "select 'a; b"]
    );
    assert_eq!(
        split("select 1; select E'a\\"),
        ["select 1", "select E'a\\"]
    );
    assert_eq!(
        split("select 1; select \"a; b"),
        ["select 1", "select \"a; b"]
    );
    assert_eq!(
        split("select 1; select $t$ a; b $t"),
        ["select 1", "select $t$ a; b $t"]
    );
    assert_eq!(
        split("select 1; select /* /* */ ; x"),
        ["select 1", "select /* /* */ ; x"]
    );
    // An unterminated comment alone is still only a comment.
    assert_eq!(split("select 1; /* a; b"), ["select 1"]);
    assert_eq!(split("select 1; -- a; b"), ["select 1"]);
}

#[test]
fn invalid_utf8_is_fine() {
    let sql: &[u8] = b"select '\xff;\xfe'; select \xc3; \xff";
    let parts = split_statements(sql, LexOptions::default());
    assert_eq!(parts, [0..12, 14..22, 24..25]);
}

#[test]
fn leading_keywords_skip_comments_and_stop_at_non_words() {
    let k = leading_keywords(b"  /* x */ begin -- c\n isolation level serializable read");
    assert_eq!(
        k.iter().collect::<Vec<_>>(),
        ["BEGIN", "ISOLATION", "LEVEL", "SERIALIZABLE"]
    );
    assert_eq!(k.len(), 4);
    assert_eq!(k.get(0), Some("BEGIN"));
    assert_eq!(k.get(4), None);
    assert!(k.starts_with(&["BEGIN", "ISOLATION"]));
    assert!(!k.starts_with(&["ISOLATION"]));
    let k = leading_keywords(b"select 1, a");
    assert_eq!(k.iter().collect::<Vec<_>>(), ["SELECT"]);
    assert_eq!(leading_keywords(b"select\"a\"").len(), 1);
    assert_eq!(leading_keywords(b"set x='1'").len(), 2);
    assert_eq!(leading_keywords(b"(select 1)").len(), 0);
    assert!(leading_keywords(b"").is_empty());
    assert!(leading_keywords(b"E'x' y").is_empty());
    assert_eq!(
        format!("{:?}", leading_keywords(b"show all")),
        r#"["SHOW", "ALL"]"#
    );
    // Words that cannot be keywords stop the scan rather than being mangled.
    assert_eq!(leading_keywords("select caf\u{e9}".as_bytes()).len(), 1);
    let long = format!("select {}", "a".repeat(33));
    assert_eq!(leading_keywords(long.as_bytes()).len(), 1);
    let fits = format!("select {}", "a".repeat(32));
    assert_eq!(
        leading_keywords(fits.as_bytes()).get(1),
        Some("A".repeat(32).as_str())
    );
}

#[test]
fn comments_yield_inner_text() {
    let stmt =
        b"/* shard=1 */ select '/* no */', \"--no\", $$--no$$ -- tail\n/* a /* b */ c */ 1 /* open";
    let got: Vec<&[u8]> = comments(stmt).collect();
    assert_eq!(
        got,
        [&b" shard=1 "[..], b" tail", b" a /* b */ c ", b" open"]
    );
    assert_eq!(comments(b"--").collect::<Vec<_>>(), [&b""[..]]);
    assert_eq!(comments(b"/**/").collect::<Vec<_>>(), [&b""[..]]);
    assert_eq!(comments(b"/*/").collect::<Vec<_>>(), [&b"/"[..]]);
    assert_eq!(comments(b"select 1").count(), 0);
}

#[test]
fn has_keyword_matches_bare_words_only() {
    let yes = [
        "CREATE INDEX CONCURRENTLY i ON t (x)",
        "create unique index concurrently i on t (x)",
        "/* c */ REINDEX (concurrently) TABLE t",
        "DROP INDEX\nConcurrently i",
    ];
    for sql in yes {
        assert!(has_keyword(sql.as_bytes(), "CONCURRENTLY"), "{sql}");
    }
    let no = [
        "UPDATE t SET note = 'concurrently' WHERE id > 0",
        "UPDATE t SET note = E'x\\' concurrently' WHERE id > 0",
        "UPDATE t SET note = $$ concurrently $$",
        "UPDATE t SET \"concurrently\" = 1",
        "UPDATE t SET a = 1 -- concurrently",
        "UPDATE t SET a = 1 /* concurrently */",
        "UPDATE t SET a = s.concurrently FROM s",
        "UPDATE t SET a = s . concurrently FROM s",
        "UPDATE t SET concurrently_done = true",
        "CREATE INDEX i ON t (x)",
    ];
    for sql in no {
        assert!(!has_keyword(sql.as_bytes(), "CONCURRENTLY"), "{sql}");
    }
}
