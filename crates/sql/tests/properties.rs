//! Property tests: the scanner never panics, its ranges are sane on any bytes, and on generated
//! SQL whose statements hide `;` in every quoting form, splitting recovers exactly those statements.

use proptest::prelude::*;
use shardgate_sql::{
    comments, leading_keywords, session_command, session_command_with, split_statements, LexOptions,
};

const OPTS: [LexOptions; 2] = [
    LexOptions {
        standard_conforming_strings: true,
    },
    LexOptions {
        standard_conforming_strings: false,
    },
];

/// Bytes biased toward the scanner's special characters, so the rare paths get exercised.
fn sqlish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![
            "'", "''", "\"", "$", "$$", "$a$", "$1", "--", "/*", "*/", ";", "\\", "E'", "e'",
            "U&'", "u&\"", "B'", "X'", "N'", "\n", "\r", " ", "a", "1", ".", "\u{e9}", "-", "/",
            "*",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

fn check_ranges(sql: &[u8], opts: LexOptions) {
    let ranges = split_statements(sql, opts);
    let mut prev_end = 0;
    for r in &ranges {
        assert!(
            r.start >= prev_end && r.start < r.end && r.end <= sql.len(),
            "{ranges:?}"
        );
        // Trimmed: no whitespace at either end.
        let stmt = &sql[r.clone()];
        assert!(!stmt[0].is_ascii_whitespace() || stmt[0] == b'\x0b');
        // A statement re-split on its own is itself: it starts at top level and holds no
        // top-level `;`.
        assert_eq!(
            split_statements(stmt, opts),
            std::slice::from_ref(&(0..stmt.len()))
        );
        // Everything between statements is separators, whitespace and comments only.
        assert!(split_statements(&sql[prev_end..r.start], opts).is_empty());
        prev_end = r.end;
    }
    assert!(split_statements(&sql[prev_end..], opts).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_and_ranges_are_sane(sql in sqlish_bytes()) {
        for opts in OPTS {
            check_ranges(&sql, opts);
            for r in split_statements(&sql, opts) {
                let stmt = &sql[r];
                let _ = leading_keywords(stmt);
                let _ = comments(stmt).count();
                let _ = session_command(stmt);
                let _ = session_command_with(stmt, opts);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(sql in prop::collection::vec(any::<u8>(), 0..200)) {
        for opts in OPTS {
            check_ranges(&sql, opts);
        }
        let _ = leading_keywords(&sql);
        let _ = comments(&sql).count();
        let _ = session_command(&sql);
    }

    #[test]
    fn splits_generated_sql_exactly(stmts in prop::collection::vec(statement(), 0..6),
                                    seps in prop::collection::vec(separator(), 7)) {
        let mut sql = seps[0].clone();
        for (i, s) in stmts.iter().enumerate() {
            sql.push_str(s);
            sql.push_str(&seps[i + 1]);
        }
        let want: Vec<&str> = stmts.iter().map(|s| s.strip_suffix('\n').unwrap_or(s)).collect();
        for opts in OPTS {
            let got: Vec<&str> = split_statements(sql.as_bytes(), opts)
                .into_iter()
                .map(|r| &sql[r])
                .collect();
            prop_assert_eq!(&got, &want, "sql: {:?}", sql);
        }
    }
}

/// Text between statements: at least one `;`, blanks, and comments that sit between two `;` (a
/// comment next to a statement belongs to it, so it would be part of the expected range).
fn separator() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![";", " ", "\n", "; ", ";\n", "/* c; */;", "-- c;\n;"]),
        0..4,
    )
    .prop_map(|v| format!(";{}", v.concat()))
}

/// A statement: a leading word, then pieces in every quoting form, most holding a `;`. Pieces are
/// joined by one space, so none can glue onto its neighbour (`e` + `'`, `-` + `-`).
fn statement() -> impl Strategy<Value = String> {
    let text = |alphabet: &'static str| {
        prop::collection::vec(
            prop::sample::select(alphabet.chars().collect::<Vec<_>>()),
            0..8,
        )
        .prop_map(|v| v.into_iter().collect::<String>())
    };
    let piece = prop_oneof![
        "[a-z_][a-z0-9_$]{0,5}",
        "[0-9]{1,4}",
        Just("$1".to_owned()),
        prop::sample::select(vec!["(", ")", ",", "+", "=", "<", "*", ".", "-", "/", "::"])
            .prop_map(str::to_owned),
        // No backslash in plain literals, so both settings of standard_conforming_strings agree.
        prop::collection::vec(prop_oneof![text("a;\"$-*/ "), Just("''".to_owned())], 0..4)
            .prop_map(|v| format!("'{}'", v.concat())),
        prop::collection::vec(
            prop_oneof![
                text("a;\"$-*/ "),
                Just("''".to_owned()),
                Just("\\'".to_owned()),
                Just("\\\\".to_owned())
            ],
            0..4
        )
        .prop_map(|v| format!("E'{}'", v.concat())),
        text("a;'$-*/ ").prop_map(|t| format!("U&'{}'", t.replace('\'', "''"))),
        text("a;'$-*/ ").prop_map(|t| format!("\"{}\"", t.replace('"', "\"\""))),
        (
            prop::sample::select(vec!["", "t", "_x9"]),
            text("a;'\"-*/ \n")
        )
            .prop_map(|(tag, body)| format!("${tag}${body}${tag}$")),
        (text("a;'\"$- \n"), text("a;'\"$- \n")).prop_map(|(a, b)| format!("/*{a}/*{b}*/{a}*/")),
        text("a;'\"$-*/ ").prop_map(|t| format!("--{t}\n")),
    ];
    ("[a-z]{1,6}", prop::collection::vec(piece, 0..6)).prop_map(|(first, rest)| {
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(" ")
    })
}
