//! Which function calls are aggregates the merge can combine, which are aggregates (or window
//! calls) it cannot, and the output column names PostgreSQL gives select-list items. The tree
//! says what one call is; a token scan finds every call in a piece of text, so an aggregate
//! buried in an expression (`sum(x) + 1`, `coalesce(max(x), 0)`) is never mistaken for a plain
//! per-row value.

use super::shape::Code;
use super::{AggFn, Unsupported};
use crate::lexer::TokenKind;
use sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, Ident, ObjectNamePart, SelectItem, Value,
};
use std::ops::Range;

/// The aggregates the merge combines, by name (`every` is the SQL-standard `bool_and`).
const MERGEABLE: &[(&str, AggFn)] = &[
    ("count", AggFn::Count),
    ("sum", AggFn::Sum),
    ("min", AggFn::Min),
    ("max", AggFn::Max),
    ("bool_and", AggFn::BoolAnd),
    ("every", AggFn::BoolAnd),
    ("bool_or", AggFn::BoolOr),
    ("avg", AggFn::Avg),
];

/// PostgreSQL's other built-in aggregates (`pg_aggregate`), besides every `*_agg`/`*agg` name.
const OTHER_AGGREGATES: &[&str] = &[
    "any_value",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "grouping",
];

fn mergeable(name: &str) -> Option<AggFn> {
    MERGEABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, kind)| kind)
}

fn other_aggregate(name: &str) -> bool {
    name.ends_with("agg") || OTHER_AGGREGATES.contains(&name)
}

/// An identifier as the server folds it.
pub(crate) fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// What `expr` is at its top: `Some(kind)` for a mergeable aggregate call, `None` for anything
/// else that is not an aggregate at its top; an error for aggregate or window calls the merge
/// cannot combine.
pub(crate) fn aggregate(expr: &Expr) -> Result<Option<AggFn>, Unsupported> {
    let Expr::Function(f) = expr else {
        return Ok(None);
    };
    let name = match f.name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => fold(i),
        _ => return Ok(None),
    };
    if f.over.is_some() {
        return Err(Unsupported::new("window functions"));
    }
    if !f.within_group.is_empty() {
        return Err(Unsupported::new("ordered-set aggregates (WITHIN GROUP)"));
    }
    let Some(mut kind) = mergeable(&name) else {
        if other_aggregate(&name) {
            return Err(Unsupported::new(name));
        }
        return Ok(None);
    };
    let FunctionArguments::List(list) = &f.args else {
        return Err(Unsupported::new(format!("{name} without an argument list")));
    };
    if f.null_treatment.is_some() || !matches!(f.parameters, FunctionArguments::None) {
        return Err(Unsupported::new(format!("{name} with this syntax")));
    }
    // An ORDER BY inside the call cannot change these aggregates' results.
    if list
        .clauses
        .iter()
        .any(|c| !matches!(c, FunctionArgumentClause::OrderBy(_)))
    {
        return Err(Unsupported::new(format!("{name} with this syntax")));
    }
    let distinct = list.duplicate_treatment == Some(DuplicateTreatment::Distinct);
    // Duplicates cannot change min, max, bool_and or bool_or; they change the others.
    if distinct && matches!(kind, AggFn::Count | AggFn::Sum | AggFn::Avg) {
        return Err(Unsupported::new(format!("{name}(DISTINCT ...)")));
    }
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if kind == AggFn::Count => {
            kind = AggFn::CountStar;
        }
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(_))] => {}
        _ => return Err(Unsupported::new(format!("{name} with these arguments"))),
    }
    if kind == AggFn::Avg && f.filter.is_some() {
        return Err(Unsupported::new("avg(...) FILTER"));
    }
    Ok(Some(kind))
}

/// A mergeable aggregate call found in the text: its kind and its token range, `FILTER (...)`
/// included.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) kind: AggFn,
    pub(crate) toks: Range<usize>,
    /// The tokens between the call's parentheses.
    pub(crate) args: Range<usize>,
}

/// Every aggregate call in the tokens `r`, in text order. Refuses window calls (`OVER`),
/// `WITHIN GROUP`, and aggregates the merge cannot combine. A `count` that is not `count(*)`
/// is reported as [`AggFn::Count`].
pub(crate) fn calls(code: &Code, r: &Range<usize>) -> Result<Vec<Call>, Unsupported> {
    let mut out = Vec::new();
    for i in r.clone() {
        if code.is_word(i, "OVER") && i > r.start && code.is_punct(i - 1, b')') {
            return Err(Unsupported::new("window functions"));
        }
        if code.is_word(i, "WITHIN") && code.is_word(i + 1, "GROUP") {
            return Err(Unsupported::new("ordered-set aggregates (WITHIN GROUP)"));
        }
        if !code.is_punct(i + 1, b'(') || i + 1 >= r.end {
            continue;
        }
        let text = code.text(i);
        let name = match code.toks.get(i).map(|t| t.kind) {
            Some(TokenKind::Word) => String::from_utf8_lossy(text).to_ascii_lowercase(),
            Some(TokenKind::QuotedIdent) => String::from_utf8_lossy(text)
                .trim_matches('"')
                .replace("\"\"", "\""),
            _ => continue,
        };
        if other_aggregate(&name) {
            return Err(Unsupported::new(name));
        }
        let Some(kind) = mergeable(&name) else {
            continue;
        };
        let close = code
            .closing(i + 1)
            .filter(|&c| c < r.end)
            .ok_or_else(Unsupported::unreadable)?;
        let mut end = close + 1;
        if code.is_word(end, "FILTER") && code.is_punct(end + 1, b'(') {
            end = code
                .closing(end + 1)
                .filter(|&c| c < r.end)
                .ok_or_else(Unsupported::unreadable)?
                + 1;
        }
        let star = close == i + 3 && code.is_punct(i + 2, b'*');
        out.push(Call {
            kind: if kind == AggFn::Count && star {
                AggFn::CountStar
            } else {
                kind
            },
            toks: i..end,
            args: i + 2..close,
        });
    }
    Ok(out)
}

/// The name PostgreSQL gives an output column (its `FigureColname`), when this module can tell
/// for sure; `None` when it cannot.
pub(crate) fn output_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(fold(alias)),
        SelectItem::UnnamedExpr(e) => figure(e, 0),
        _ => None,
    }
}

fn figure(e: &Expr, depth: usize) -> Option<String> {
    if depth > 50 {
        return None;
    }
    let unnamed = || Some("?column?".to_owned());
    match e {
        Expr::Identifier(i) => Some(fold(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold),
        Expr::Function(f) => match f.name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => Some(fold(i)),
            _ => None,
        },
        Expr::Nested(inner) => figure(inner, depth + 1),
        // A cast takes its operand's name, else the type's (which this module does not map).
        Expr::Cast { expr, .. } => match figure(expr, depth + 1) {
            Some(n) if n != "?column?" => Some(n),
            _ => None,
        },
        Expr::Case { .. } => Some("case".to_owned()),
        Expr::Value(v) => match v.value {
            // `true` is a cast to bool in PostgreSQL's grammar, named `bool`.
            Value::Boolean(_) => None,
            _ => unnamed(),
        },
        Expr::BinaryOp { .. }
        | Expr::UnaryOp { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::InList { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. } => unnamed(),
        _ => None,
    }
}
