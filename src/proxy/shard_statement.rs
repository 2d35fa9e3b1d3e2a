//! Plans one statement of a request: `shardgate_router::plan_statement` with its shard key
//! values read from literals or from the request's Bind as the key column's type, and the
//! refusals reworded where the router's own would not tell the user what to do.

use shardgate_router::{plan_statement, KeyValue, Refusal, ShardWhy, StatementPlan, Target};
use shardgate_sql::{KeyConstraint, KeySource, ShardAnalysis};

use super::shard_plan::Bound;
use super::sharding_runtime::ShardingRuntime;

/// Plans one statement, reading its keys with the key column's type.
pub(super) fn plan_one(
    rt: &ShardingRuntime,
    stmt: &[u8],
    a: &ShardAnalysis,
    bound: &Bound<'_>,
    missing: &mut Vec<String>,
) -> Result<StatementPlan, Refusal> {
    let table = a.sharded.first().cloned().unwrap_or_default();
    let column_type = if a.key.is_some() {
        let t = rt.key_type(&table);
        if t.is_none() && !missing.contains(&table) {
            missing.push(table.clone());
        }
        t
    } else {
        Some(0)
    };
    // Set when a key could not be read exactly because the column's type is unknown.
    let untyped = std::cell::Cell::new(None::<String>);
    let mut resolve = |src: &KeySource| {
        resolve_key(src, bound, column_type).map_err(|e| match e {
            KeyProblem::Value(why) => why,
            KeyProblem::UnknownType(why) => {
                untyped.set(Some(why.clone()));
                why
            }
        })
    };
    let first = shardgate_sql::leading_keywords(stmt);
    let kind = first.get(0).unwrap_or("");
    if kind == "INSERT"
        && a.insert.is_none()
        && !a.ddl
        && shardgate_sql::colocated_insert_select(stmt, &rt.spec).is_ok()
    {
        // Every row stays on the shard it is read from: run it on every shard.
        return Ok(StatementPlan {
            target: Target::ScatterWrite,
            why: ShardWhy::NoKey {
                table: a.sharded.first().cloned().unwrap_or_default(),
            },
        });
    }
    let mut planned = plan_statement(a, &rt.map, rt.names.len(), &mut resolve);
    if let Ok(StatementPlan {
        target: Target::ScatterWrite,
        why: ShardWhy::NoKey { table },
    }) = &planned
    {
        if !matches!(kind, "UPDATE" | "DELETE") {
            let what = match kind {
                "INSERT" => "an INSERT ... SELECT",
                "SELECT" => "a locking SELECT (FOR UPDATE/SHARE)",
                "" => "this statement",
                other => other,
            };
            planned = Err(Refusal {
                code: shardgate_router::FEATURE_NOT_SUPPORTED,
                message: format!(
                    "shardgate: cannot run {what} on sharded table {table} across shards"
                ),
                hint: "Add a shard-key filter, or pin it with /* shardgate: shard=<name> */."
                    .to_owned(),
            });
        }
    }
    planned.map_err(|mut r| {
        if let Some(why) = untyped.take() {
            let column = a.key_column.as_deref().unwrap_or("its shard key");
            r.code = shardgate_router::FEATURE_NOT_SUPPORTED;
            r.message = format!(
                "shardgate: cannot read the type of the shard key {column} of {table} from the \
                 first shard's catalog, and {why}: shardgate will not guess its shard"
            );
            r.hint = "Retry once the first shard's primary answers, or send the key in text \
                      format as the column stores it (a plain integer such as 42, a lowercase \
                      uuid), or pin it with /* shardgate: shard=<name> */."
                .to_owned();
            return r;
        }
        let insert = shardgate_sql::leading_keywords(stmt).get(0) == Some("INSERT");
        let select = stmt.windows(6).any(|w| w.eq_ignore_ascii_case(b"SELECT"));
        if insert && a.insert.is_none() && select {
            let why = shardgate_sql::colocated_insert_select(stmt, &rt.spec)
                .err()
                .unwrap_or_default();
            r.message =
                format!("shardgate: cannot run this INSERT ... SELECT on every shard: {why}");
            r.hint = "An INSERT ... SELECT without a shard key runs on every shard when each row \
                      stays on its shard: name the target's key column and insert the source \
                      table's key column into it, row by row from one sharded table. Or add a \
                      shard-key filter, or pin it with /* shardgate: shard=<name> */."
                .to_owned();
        } else if insert && a.insert.is_none() && matches!(a.key, Some(KeyConstraint::NoKey)) {
            let column = a.key_column.as_deref().unwrap_or("its shard key");
            r.message = format!(
                "shardgate: cannot find the shard key {column} in this INSERT into {table}",
                table = a.sharded.first().map(String::as_str).unwrap_or_default()
            );
            r.hint = format!(
                "Name the columns (INSERT INTO t ({column}, ...) VALUES ...) and give {column} a \
                 literal or a parameter in every row (DEFAULT keys are not routable). Or pin it \
                 with /* shardgate: shard=<name> */."
            );
        }
        r
    })
}

fn cast_oid(cast: &str) -> Option<u32> {
    Some(match cast {
        "int2" | "smallint" => 21,
        "int4" | "int" | "integer" => 23,
        "int8" | "bigint" => 20,
        "uuid" => 2950,
        "text" | "varchar" | "character varying" => 25,
        _ => return None,
    })
}

/// Why a key value could not be read.
enum KeyProblem {
    /// The value itself is malformed or missing.
    Value(String),
    /// Its reading depends on the key column's type, which is unknown (the catalog lookup
    /// failed or the table is missing on the first shard).
    UnknownType(String),
}

fn resolve_key(
    src: &KeySource,
    bound: &Bound<'_>,
    column_type: Option<u32>,
) -> Result<Option<KeyValue>, KeyProblem> {
    let value_err = |e: shardgate_router::KeyError| KeyProblem::Value(e.to_string());
    match src {
        KeySource::Literal { text, cast } => {
            match cast.as_deref().and_then(cast_oid).or(column_type) {
                Some(oid) => KeyValue::from_param(oid, 0, text.as_bytes())
                    .map(Some)
                    .map_err(value_err),
                None => untyped_text(text).map(Some),
            }
        }
        KeySource::Param(n) => {
            let Some(bind) = &bound.bind else {
                return Err(KeyProblem::Value(format!(
                    "parameter ${n} has no value in this request"
                )));
            };
            let i = usize::from(*n)
                .checked_sub(1)
                .ok_or_else(|| KeyProblem::Value("parameter $0".to_owned()))?;
            let value = bind.params().nth(i).ok_or_else(|| {
                KeyProblem::Value(format!("parameter ${n} has no value in the Bind"))
            })?;
            let formats: Vec<i16> = bind.param_formats().collect();
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            let declared = bound.types.get(i).copied().unwrap_or(0);
            let Some(bytes) = value else {
                return Ok(None);
            };
            let oid = match (declared, column_type) {
                (0, Some(column_type)) => undeclared_oid(column_type, format, bytes.len()),
                (0, None) if format == 0 => {
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        KeyProblem::Value("malformed shard-key parameter: not UTF-8".to_owned())
                    })?;
                    return untyped_text(text).map(Some);
                }
                // Four bytes may be an int4 or four characters: only the type tells.
                (0, None) => {
                    return Err(KeyProblem::UnknownType(format!(
                        "parameter ${n} is bound in binary with no type declared"
                    )))
                }
                (declared, _) => declared,
            };
            KeyValue::from_param(oid, format, bytes)
                .map(Some)
                .map_err(value_err)
        }
    }
}

/// A key in text form whose column type is unknown: read as the hash rule reads text, which
/// is exact only when an integer or uuid column would read it the same (`42`, `abc`, a
/// lowercase uuid; not `042` or an uppercase uuid).
fn untyped_text(text: &str) -> Result<KeyValue, KeyProblem> {
    const INT8: u32 = 20;
    const UUID: u32 = 2950;
    let as_text = KeyValue::from_text(text);
    for oid in [INT8, UUID] {
        if let Ok(typed) = KeyValue::from_param(oid, 0, text.as_bytes()) {
            if typed != as_text {
                return Err(KeyProblem::UnknownType(format!(
                    "its value '{text}' reads differently as text and as {}",
                    if oid == INT8 { "an integer" } else { "a uuid" }
                )));
            }
        }
    }
    Ok(as_text)
}

/// The type to decode a parameter the Parse left undeclared: the key column's, except that a
/// binary integer's width tells which integer type the server inferred (`$1::int4` on an int8
/// key arrives as 4 bytes). Every integer width hashes as the same i64.
fn undeclared_oid(column_type: u32, format: i16, len: usize) -> u32 {
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    if format == 1 && matches!(column_type, INT2 | INT4 | INT8) {
        match len {
            2 => return INT2,
            4 => return INT4,
            8 => return INT8,
            _ => {}
        }
    }
    column_type
}
