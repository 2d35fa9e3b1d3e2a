//! SQL identifiers in the `sharding` section: table names and key columns, folded the way
//! PostgreSQL folds them so they compare equal to what a statement names.

use std::borrow::Cow;
use std::fmt;

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1); a config name that the server
/// would silently shorten could never match, so it is refused instead.
const MAX_IDENT_BYTES: usize = 63;

/// A table name, already folded: unquoted parts lowercased (ASCII only, as PostgreSQL does in
/// a UTF-8 database), double-quoted parts kept as written.
///
/// `orders` and `app.orders` are different names: which schema an unqualified name means is
/// the statement's `search_path`, not the config's, to decide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// Prints the name as it would be written in the config, quoting parts that need it so the
/// text reads back as the same name (`app."Orders"`).
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", quote_ident(schema))?;
        }
        f.write_str(&quote_ident(&self.name))
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `ident` as it must be written to read back unchanged: bare when folding cannot alter it,
/// double-quoted (with `"` doubled) otherwise.
pub(crate) fn quote_ident(ident: &str) -> Cow<'_, str> {
    let mut chars = ident.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_' || !c.is_ascii())
        && chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '$') || !c.is_ascii()
        });
    if bare {
        Cow::Borrowed(ident)
    } else {
        Cow::Owned(format!("\"{}\"", ident.replace('"', "\"\"")))
    }
}

/// `table` or `schema.table`.
pub(crate) fn parse_table_name(text: &str) -> Result<TableName, String> {
    let mut parts = parse_dotted(text)?;
    match parts.len() {
        1 => Ok(TableName {
            schema: None,
            name: parts.remove(0),
        }),
        2 => {
            let name = parts.remove(1);
            Ok(TableName {
                schema: Some(parts.remove(0)),
                name,
            })
        }
        _ => Err(format!(
            "invalid table name {text:?}: write table or schema.table"
        )),
    }
}

/// A column name: one identifier.
pub(crate) fn parse_column(text: &str) -> Result<String, String> {
    let mut parts = parse_dotted(text)?;
    if parts.len() != 1 {
        return Err(format!(
            "invalid column name {text:?}: write the column alone, without its table"
        ));
    }
    Ok(parts.remove(0))
}

/// Identifiers separated by dots, each bare (folded) or double-quoted (kept).
fn parse_dotted(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let (ident, after) = match rest.strip_prefix('"') {
            Some(quoted) => take_quoted(quoted)
                .ok_or_else(|| format!("invalid name {text:?}: a double quote is not closed"))?,
            None => take_bare(rest),
        };
        if ident.is_empty() {
            return Err(format!(
                "invalid name {text:?}: expected an identifier (letters, digits, _ and $, \
                 not starting with a digit; or any text in double quotes)"
            ));
        }
        if ident.len() > MAX_IDENT_BYTES {
            return Err(format!(
                "invalid name {text:?}: {ident:?} is longer than {MAX_IDENT_BYTES} bytes, \
                 which PostgreSQL would truncate"
            ));
        }
        parts.push(ident);
        match after.chars().next() {
            None => return Ok(parts),
            Some('.') => rest = &after[1..],
            Some(c) => {
                return Err(format!(
                    "invalid name {text:?}: unexpected {c:?} (double-quote names with \
                     spaces or punctuation)"
                ))
            }
        }
    }
}

/// A bare identifier, folded; empty if `text` does not start with one.
fn take_bare(text: &str) -> (String, &str) {
    let starts = |c: char| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
    if !text.chars().next().is_some_and(starts) {
        return (String::new(), text);
    }
    let end = text
        .find(|c: char| !(starts(c) || c.is_ascii_digit() || c == '$'))
        .unwrap_or(text.len());
    (text[..end].to_ascii_lowercase(), &text[end..])
}

/// The body of a quoted identifier (after its opening quote), with `""` read as `"`;
/// `None` if it is not closed.
fn take_quoted(text: &str) -> Option<(String, &str)> {
    let mut ident = String::new();
    let mut rest = text;
    loop {
        let close = rest.find('"')?;
        ident.push_str(&rest[..close]);
        rest = &rest[close + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                ident.push('"');
                rest = after;
            }
            None => return Some((ident, rest)),
        }
    }
}
