//! `LIMIT`, `OFFSET` and `FETCH FIRST`: what the client asked for, and the limit each shard gets
//! instead. A shard must return `limit + offset` rows, since the rows the merge skips may come
//! from any shard; the merge then applies both.

use super::shape::Code;
use super::{Count, Unsupported};
use sqlparser::ast::{Expr, LimitClause, Query, Value};

/// The client's limit and offset (`None`: absent, or `OFFSET NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) limit: Option<Count>,
    pub(crate) offset: Option<Count>,
}

/// Reads the limit clauses of `q`; `limit_tok` is the first limit keyword's token, if any.
pub(crate) fn read(
    q: &Query,
    code: &Code,
    limit_tok: Option<usize>,
) -> Result<Limits, Unsupported> {
    let mut out = Limits {
        limit: None,
        offset: None,
    };
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(Unsupported::new("LIMIT ... BY"));
            }
            out.limit = limit.as_ref().map(|e| count(e, "LIMIT")).transpose()?;
            out.offset = match offset {
                Some(o) => match count(&o.value, "OFFSET")? {
                    Count::All => None,
                    c => Some(c),
                },
                None => None,
            };
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => {
            return Err(Unsupported::new("LIMIT offset, count"));
        }
    }
    if let Some(f) = &q.fetch {
        if f.with_ties {
            return Err(Unsupported::new("FETCH FIRST ... WITH TIES"));
        }
        if f.percent {
            return Err(Unsupported::new("FETCH FIRST ... PERCENT"));
        }
        if out.limit.is_some() {
            return Err(Unsupported::new("both LIMIT and FETCH FIRST"));
        }
        out.limit = Some(match &f.quantity {
            Some(e) => count(e, "FETCH FIRST")?,
            None => Count::Literal(1),
        });
    }
    // sqlparser reads `LIMIT ALL` as no limit; the tokens tell them apart.
    if out.limit.is_none() {
        if let Some(start) = limit_tok {
            let all = (start..code.toks.len())
                .any(|i| code.is_word(i, "LIMIT") && code.is_word(i + 1, "ALL"));
            if all {
                out.limit = Some(Count::All);
            }
        }
    }
    Ok(out)
}

fn count(e: &Expr, clause: &str) -> Result<Count, Unsupported> {
    let not_plain = || Unsupported::new(format!("{clause} that is not a literal or a parameter"));
    let Expr::Value(v) = e else {
        return Err(not_plain());
    };
    match &v.value {
        Value::Number(n, false) => n
            .parse::<u64>()
            .map(Count::Literal)
            .map_err(|_| not_plain()),
        Value::Null => Ok(Count::All),
        Value::Placeholder(p) => p
            .strip_prefix('$')
            .and_then(|d| d.parse::<u16>().ok())
            .filter(|&n| n >= 1)
            .map(Count::Param)
            .ok_or_else(not_plain),
        _ => Err(not_plain()),
    }
}

/// The limit clause every shard runs (empty when shards must return every row).
pub(crate) fn shard_limit(l: &Limits) -> Vec<u8> {
    let term = |c: &Count| match c {
        Count::Literal(n) => n.to_string(),
        // Typed so that `$1 + $2` resolves: LIMIT and OFFSET take bigint anyway.
        Count::Param(p) => format!("${p}::int8"),
        Count::All => String::new(),
    };
    match (&l.limit, &l.offset) {
        (None | Some(Count::All), _) => Vec::new(),
        (Some(Count::Literal(n)), None) => format!("LIMIT {n}").into_bytes(),
        (Some(Count::Param(p)), None) => format!("LIMIT ${p}").into_bytes(),
        (Some(Count::Literal(a)), Some(Count::Literal(b))) => match a.checked_add(*b) {
            Some(sum) if sum <= i64::MAX as u64 => format!("LIMIT {sum}").into_bytes(),
            // Past bigint no shard could return that many rows anyway.
            _ => Vec::new(),
        },
        // Summed as numeric and capped at bigint's maximum: `$1 + $2` in bigint overflows
        // (22003) for a limit near it, which one server never reports.
        (Some(lim), Some(off)) => format!(
            "LIMIT LEAST(({})::numeric + ({}), 9223372036854775807)::int8",
            term(lim),
            term(off)
        )
        .into_bytes(),
    }
}

/// For a shard that must not be limited: clauses that still mention the client's `$n` limit and
/// offset parameters, with no effect (`NULLIF(x, x)` is a NULL limit, `0 * x` a zero offset), so
/// that the shard statement has the same parameters, with the same types, as the client's.
pub(crate) fn unlimited_keeping_params(l: &Limits) -> Vec<u8> {
    let mut out = String::new();
    if let Some(Count::Param(p)) = l.limit {
        out.push_str(&format!("LIMIT NULLIF(${p}::int8, ${p}::int8)"));
    }
    if let Some(Count::Param(p)) = l.offset {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("OFFSET 0 * ${p}::int8"));
    }
    out.into_bytes()
}
