//! Reads the constant side of a key comparison (`42`, `-7`, `'x'`, `E'\n'`, `$1`, `'42'::bigint`,
//! `CAST($1 AS int)`, `bigint '42'`) into a [`KeySource`], and folds identifiers the way the
//! server does. Anything that is not plainly a constant or a parameter is `None`: the caller
//! then knows nothing about the key, which is always safe.

use super::KeySource;
use sqlparser::ast::{
    CastKind, DataType, Expr, Ident, ObjectName, ObjectNamePart, UnaryOperator, Value,
};

/// The value `expr` stands for, if it is a literal or a parameter, possibly in parentheses and
/// under one cast.
pub(crate) fn key_source(expr: &Expr) -> Option<KeySource> {
    match expr {
        Expr::Nested(inner) => key_source(inner),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } => {
            // A second cast (`'4.7'::numeric::int`) can change the value in ways the caller
            // cannot redo from one type name, so only a single cast is read.
            match plain(strip_parens(expr))? {
                KeySource::Literal { text, cast: None } => Some(KeySource::Literal {
                    text,
                    cast: Some(type_name(data_type)),
                }),
                // A parameter's type comes from Parse or the server, not from this text.
                KeySource::Param(n) => Some(KeySource::Param(n)),
                KeySource::Literal { .. } => None,
            }
        }
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(KeySource::Literal {
                    text: s.clone(),
                    cast: Some(type_name(&ts.data_type)),
                })
            }
            _ => None,
        },
        _ => plain(expr),
    }
}

fn strip_parens(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// A literal or parameter with no cast.
fn plain(expr: &Expr) -> Option<KeySource> {
    let lit = |text: String| Some(KeySource::Literal { text, cast: None });
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => lit(n.clone()),
            // sqlparser has already undone `''` and, for E'', the backslash escapes.
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => lit(s.clone()),
            Value::DollarQuotedString(d) => lit(d.value.clone()),
            Value::Placeholder(p) => param_number(p).map(KeySource::Param),
            // NULL matches no row; booleans, bit strings and the rest are not keys we hash.
            _ => None,
        },
        Expr::UnaryOp { op, expr } => match (op, strip_parens(expr)) {
            (UnaryOperator::Minus, Expr::Value(v)) => match &v.value {
                Value::Number(n, false) if !n.starts_with('-') => lit(format!("-{n}")),
                _ => None,
            },
            (UnaryOperator::Plus, Expr::Value(v)) => match &v.value {
                Value::Number(n, false) => lit(n.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// `$3` -> 3; `$0`, `$x` and numbers past `u16` are not parameters PostgreSQL accepts here.
fn param_number(p: &str) -> Option<u16> {
    let digits = p.strip_prefix('$')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&n| n >= 1)
}

/// The lowercase name of a cast's target type, e.g. `bigint`, `uuid`, `character varying(10)`.
/// Printing a type name is safe (unlike re-printing SQL): it only labels the value.
fn type_name(t: &DataType) -> String {
    t.to_string().to_ascii_lowercase()
}

/// An identifier as the server sees it: unquoted names fold to lowercase (ASCII only, as
/// PostgreSQL does for multibyte encodings), quoted ones stay as written.
pub(crate) fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The folded parts of a dotted name; `None` if a part is not a plain identifier.
pub(crate) fn fold_name(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}
