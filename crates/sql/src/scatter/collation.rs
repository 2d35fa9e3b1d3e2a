//! Text the merge compares (sort keys, group keys, `DISTINCT` items, `min`/`max` arguments,
//! `HAVING`) is compared byte by byte, as the C collation orders it. An explicit `COLLATE`
//! other than a bytewise one there is refused; the column names those expressions read are
//! collected so the proxy can refuse columns whose own collation is not bytewise (which only
//! the catalog knows).

use super::shape::Code;
use super::Unsupported;
use crate::lexer::TokenKind;
use std::ops::Range;

/// Refuses `COLLATE <name>` in `toks` unless the collation orders text bytewise; `what` names
/// the clause for the client's message (e.g. "ORDER BY").
pub(crate) fn check_collation(
    code: &Code,
    toks: &Range<usize>,
    what: &str,
) -> Result<(), Unsupported> {
    for i in toks.clone() {
        if !code.is_word(i, "COLLATE") {
            continue;
        }
        let bytewise = collation_name_end(code, i + 1).is_some_and(|(_, b)| b);
        if !bytewise {
            return Err(Unsupported::new(format!(
                "{what} under a collation other than \"C\""
            )));
        }
    }
    Ok(())
}

/// The end (exclusive) of the possibly schema-qualified collation name starting at token `i`,
/// and whether that collation orders text bytewise. "default" is the database's collation,
/// which the proxy checks on its own.
fn collation_name_end(code: &Code, i: usize) -> Option<(usize, bool)> {
    let mut j = i;
    while code.is_punct(j + 1, b'.') {
        j += 2;
    }
    code.toks.get(j)?;
    let bytewise = matches!(
        code.text(j),
        b"\"C\"" | b"\"POSIX\"" | b"\"ucs_basic\"" | b"\"default\""
    ) || code.is_word(j, "ucs_basic")
        || code.is_word(j, "default");
    Some((j + 1, bytewise))
}

/// `r` is `<column> COLLATE <bytewise>`, or a one-argument call `f(<column> COLLATE
/// <bytewise>)` (whose result, if text, takes its argument's explicit collation): the
/// column's own collation does not matter there.
fn under_bytewise(code: &Code, r: &Range<usize>) -> bool {
    let r = if code.is_punct(r.start + 1, b'(')
        && code.closing(r.start + 1) == Some(r.end.wrapping_sub(1))
        && code
            .toks
            .get(r.start)
            .is_some_and(|t| t.kind == TokenKind::Word)
    {
        r.start + 2..r.end - 1
    } else {
        r.clone()
    };
    let name = |i: usize| {
        code.toks
            .get(i)
            .is_some_and(|t| matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent))
    };
    let mut i = r.start;
    if !name(i) {
        return false;
    }
    while code.is_punct(i + 1, b'.') && name(i + 2) {
        i += 2;
    }
    code.is_word(i + 1, "COLLATE") && collation_name_end(code, i + 2) == Some((r.end, true))
}

/// The names (folded, unquoted) of every identifier in `ranges`: the columns the merge may
/// compare. Keywords and function names come along; a column sharing one of their names is
/// only refused more often, never merged wrongly.
/// A `U&"..."` name is refused rather than decoded.
pub(crate) fn compared_names(
    code: &Code,
    ranges: &[Range<usize>],
) -> Result<Vec<String>, Unsupported> {
    let mut names = Vec::new();
    let read = ranges.iter().filter(|r| !under_bytewise(code, r));
    for i in read.flat_map(|r| r.clone()) {
        let text = code.text(i);
        match code.toks.get(i).map(|t| t.kind) {
            Some(TokenKind::Word) => {
                names.push(String::from_utf8_lossy(text).to_ascii_lowercase());
            }
            Some(TokenKind::QuotedIdent) => match text.get(1..text.len().saturating_sub(1)) {
                Some(inner) if text.first() == Some(&b'"') && text.len() >= 2 => {
                    names.push(String::from_utf8_lossy(inner).replace("\"\"", "\""));
                }
                _ => {
                    return Err(Unsupported::new(
                        "a U&\"...\" name in GROUP BY, ORDER BY, DISTINCT, min/max or HAVING",
                    ))
                }
            },
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
