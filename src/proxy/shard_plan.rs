//! Which shards a whole request needs: hints and session settings first, then each statement's
//! plan (`shardgate_router::plan_statement`) with its key values read from literals or from the
//! request's Bind, combined over the request. A multi-row INSERT split across shards gets one
//! rewritten request per shard here. Nothing is sent; the session executes the plan.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use shardgate_config::Config;
use shardgate_router::{
    bit, plan_statement, shards_in, KeyValue, Refusal, ShardMap, ShardSet, ShardWhy, StatementPlan,
    Target,
};
use shardgate_sql::{
    analyze_with, for_each_statement, splice_insert, Hint, KeyConstraint, KeySource, LexOptions,
    ShardAnalysis, ShardingSpec,
};
use shardgate_wire::{frontend, peek_header, BindRef, FrontendRef, ParseRef};
use xxhash_rust::xxh3::xxh3_128;

use super::routing::SessionRouting;
use super::sqlstate;
use super::statements::ClientStatements;
use shardgate_wire::ErrorFields;

/// Distinct statement texts whose analysis is kept.
const ANALYSIS_CACHE: usize = 4096;

/// The sharding part of a config snapshot.
pub(crate) struct ShardingRuntime {
    pub(crate) map: ShardMap,
    pub(crate) spec: ShardingSpec,
    pub(crate) names: Vec<Arc<str>>,
    classifier: Arc<shardgate_sql::Classifier>,
    /// Sharded tables as `(display name, key column)`, for type lookups.
    tables: Vec<(String, String)>,
    analyses: Mutex<LruCache<u128, Arc<ShardAnalysis>>>,
    /// The key column's type oid per sharded table, learned from the first shard.
    key_types: Mutex<HashMap<String, u32>>,
    /// Function names seen in scattered queries: whether each is an aggregate (a
    /// user-defined aggregate would otherwise be merged as a plain value).
    pub(crate) aggregates: Mutex<HashMap<String, bool>>,
    /// The database's collation sorts like C (text ORDER BY and min/max merge exactly).
    pub(crate) collation_c: Mutex<Option<bool>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardingRuntime {
    pub(crate) fn build(
        config: &Config,
        classifier: Arc<shardgate_sql::Classifier>,
    ) -> Option<ShardingRuntime> {
        let s = config.sharding.as_ref()?;
        let index = |name: &str| {
            config
                .shards
                .iter()
                .position(|x| x.name == name)
                .unwrap_or(0)
        };
        let ranges: Vec<(u32, u32, usize)> =
            s.map.iter().map(|(a, b, n)| (*a, *b, index(n))).collect();
        let tables: Vec<(Option<String>, String, String)> = s
            .tables
            .iter()
            .map(|t| (t.table.schema.clone(), t.table.name.clone(), t.key.clone()))
            .collect();
        let reference: Vec<(Option<String>, String)> = s
            .reference_tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        let display = |schema: &Option<String>, name: &str| match schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        };
        Some(ShardingRuntime {
            map: ShardMap::new(s.logical_shards, &ranges),
            spec: ShardingSpec::new(&tables, &reference),
            names: config
                .shards
                .iter()
                .map(|x| Arc::from(x.name.as_str()))
                .collect(),
            tables: tables
                .iter()
                .map(|(s, n, k)| (display(s, n), k.clone()))
                .collect(),
            analyses: Mutex::new(LruCache::new(
                NonZeroUsize::new(ANALYSIS_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            classifier,
            key_types: Mutex::new(HashMap::new()),
            aggregates: Mutex::new(HashMap::new()),
            collation_c: Mutex::new(None),
        })
    }

    /// The analysis of one statement, cached by its exact text.
    fn analyze(&self, stmt: &[u8]) -> Arc<ShardAnalysis> {
        let key = xxh3_128(stmt);
        if let Some(a) = lock(&self.analyses).get(&key) {
            return a.clone();
        }
        // The classifier's verdict is cached by the literal-blind shape: reusing it saves the
        // analysis one of its two parses when only literals changed.
        let c = self.classifier.classify(stmt);
        let write = (c.statements == 1).then_some(c.write.is_some());
        let a = Arc::new(analyze_with(stmt, &self.spec, write));
        lock(&self.analyses).put(key, a.clone());
        a
    }

    fn key_type(&self, table: &str) -> Option<u32> {
        lock(&self.key_types).get(table).copied()
    }

    pub(crate) fn learn_key_type(&self, table: &str, oid: u32) {
        lock(&self.key_types).insert(table.to_owned(), oid);
    }

    /// The SQL that reads a sharded table's key column type (one row, one column: the oid).
    pub(crate) fn key_type_sql(&self, table: &str) -> Option<String> {
        let (_, column) = self.tables.iter().find(|(t, _)| t == table)?;
        let quote = |s: &str| s.replace('\'', "''");
        let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let qualified: Vec<String> = table.split('.').map(ident).collect();
        Some(format!(
            "SELECT atttypid FROM pg_attribute WHERE attrelid = to_regclass('{}') AND attname = '{}'",
            quote(&qualified.join(".")),
            quote(column)
        ))
    }
}

/// Where a request goes.
#[derive(Debug)]
pub(crate) enum Need {
    /// No particular shard: the transaction's, else the first.
    Any,
    /// Reference tables only: the transaction's shard, else the first.
    AnyReference,
    /// One shard.
    One(usize),
    /// Every shard runs the rewritten SELECT; the replies are merged (`select` says how).
    Scatter {
        select: Box<shardgate_sql::ScatterSelect>,
        /// The statement's declared parameter types.
        types: Vec<u32>,
        /// Text sorts as in C on the shards (else text ORDER BY and min/max are refused).
        text_order: bool,
    },
    /// The same request on each of these shards, results combined: rows concatenated, and
    /// counts summed when `sum` (different rows per shard) rather than taken from the first
    /// (a broadcast to full copies).
    Many {
        shards: ShardSet,
        sum: bool,
    },
    /// One rewritten request per shard (a split INSERT); `parse` says whether the client's
    /// request had a Parse (its ParseComplete is then expected).
    Split {
        requests: Vec<(usize, BytesMut)>,
        client_parse: bool,
    },
    Refuse(ErrorFields),
}

/// A request's plan and why, for the decision log.
#[derive(Debug)]
pub(crate) struct RequestPlan {
    pub(crate) need: Need,
    pub(crate) why: String,
    /// Sharded tables whose key type is not known yet: learn them, then plan again.
    pub(crate) missing_types: Vec<String>,
    /// Some statement writes.
    pub(crate) write: bool,
}

impl RequestPlan {
    fn new(need: Need, why: String) -> RequestPlan {
        RequestPlan {
            need,
            why,
            missing_types: Vec::new(),
            write: false,
        }
    }
}

fn refusal_fields(r: Refusal) -> ErrorFields {
    ErrorFields::new("ERROR", r.code, r.message).with(b'H', r.hint)
}

/// The extended-protocol context of one statement: its Bind and declared parameter types.
struct Bound<'a> {
    bind: Option<BindRef<'a>>,
    types: Vec<u32>,
}

/// Plans the complete request at the start of `buf`.
pub(crate) fn plan_request(
    rt: &ShardingRuntime,
    buf: &[u8],
    max_len: usize,
    statements: &ClientStatements,
    unnamed_parse: Option<&Bytes>,
    routing: &SessionRouting,
    hint: Option<&Hint>,
) -> RequestPlan {
    let name = |i: usize| rt.names.get(i).cloned().unwrap_or_else(|| Arc::from("?"));
    // Hints, then session settings, pin the whole request.
    let pinned = match hint {
        Some(Hint::Shard(s)) => Some((Some(s.as_str()), None, "hint ")),
        Some(Hint::ShardKey(k)) => Some((None, Some(k.as_str()), "hint ")),
        _ => match (&routing.shard, &routing.shard_key) {
            (Some(s), _) => Some((Some(&**s), None, "setting shardgate.")),
            (None, Some(k)) => Some((None, Some(&**k), "setting shardgate.")),
            _ => None,
        },
    };
    if let Some((shard, key, source)) = pinned {
        if let Some(s) = shard {
            return match rt.names.iter().position(|n| **n == *s) {
                Some(i) => RequestPlan::new(Need::One(i), format!("{source}shard={s} → {s}")),
                None => RequestPlan::new(
                    Need::Refuse(
                        ErrorFields::new(
                            "ERROR",
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!("shardgate: no shard named \"{s}\""),
                        )
                        .with(
                            b'H',
                            format!("Configured shards: {}.", join_names(&rt.names)),
                        ),
                    ),
                    String::new(),
                ),
            };
        }
        let k = KeyValue::from_text(key.unwrap_or_default());
        let logical = rt.map.logical_of(&k);
        let i = rt.map.shard_of_logical(logical);
        return RequestPlan::new(
            Need::One(i),
            format!(
                "{source}shard_key={} → logical {logical} → {}",
                key.unwrap_or_default(),
                name(i)
            ),
        );
    }
    let mut acc = Combined::default();
    let mut parses: Vec<ParseRef<'_>> = Vec::new();
    let mut units = 0usize;
    let mut pos = 0;
    let mut client_parse = false;
    type Split<'b> = (
        Vec<u8>,
        Arc<ShardAnalysis>,
        Bound<'b>,
        bool,
        Vec<(usize, Vec<usize>)>,
    );
    let mut split_source: Option<Split<'_>> = None;
    // The last statement planned and its declared parameter types (for a scatter).
    let mut last_unit: Option<(Vec<u8>, Vec<u32>)> = None;
    while let Ok(Some(h)) = peek_header(&buf[pos..], max_len) {
        if buf.len() - pos < h.len {
            break;
        }
        let Ok(msg) = FrontendRef::decode(h.tag, &buf[pos + 5..pos + h.len]) else {
            break;
        };
        pos += h.len;
        match msg {
            FrontendRef::Query { sql } => {
                let mut stmts = Vec::new();
                for_each_statement(sql, LexOptions::default(), |r| stmts.push(r));
                for r in stmts {
                    let stmt = &sql[r];
                    let a = rt.analyze(stmt);
                    let bound = Bound {
                        bind: None,
                        types: Vec::new(),
                    };
                    units += 1;
                    last_unit = Some((stmt.to_vec(), Vec::new()));
                    let p = plan_one(rt, stmt, &a, &bound, &mut acc.missing);
                    if let Ok(StatementPlan {
                        target: Target::Split(per),
                        ..
                    }) = &p
                    {
                        split_source = Some((stmt.to_vec(), a.clone(), bound, false, per.clone()));
                    }
                    acc.add(p, a.write);
                }
                break;
            }
            FrontendRef::Parse(p) => {
                client_parse = true;
                parses.push(p);
            }
            FrontendRef::Bind(b) => {
                let own = parses.iter().rev().find(|p| p.name == b.statement).copied();
                let saved;
                let parse = match own {
                    Some(p) => Some(p),
                    None if b.statement.is_empty() => {
                        saved = unnamed_parse.cloned();
                        saved.as_ref().and_then(decode_parse)
                    }
                    None => statements
                        .get(b.statement)
                        .and_then(|prep| decode_parse(&prep.parse)),
                };
                let Some(parse) = parse else {
                    // The server will report the unknown statement; it needs no shard.
                    continue;
                };
                let a = rt.analyze(parse.query);
                let bound = Bound {
                    bind: Some(b),
                    types: parse.param_types.iter().collect(),
                };
                units += 1;
                last_unit = Some((parse.query.to_vec(), bound.types.clone()));
                let p = plan_one(rt, parse.query, &a, &bound, &mut acc.missing);
                if let Ok(StatementPlan {
                    target: Target::Split(per),
                    ..
                }) = &p
                {
                    split_source =
                        Some((parse.query.to_vec(), a.clone(), bound, true, per.clone()));
                }
                acc.add(p, a.write);
            }
            FrontendRef::Sync | FrontendRef::FunctionCall(_) => break,
            _ => {}
        }
    }
    if acc.scatter && acc.refused.is_none() {
        let why = acc.scatter_why(rt);
        let need = match (units, last_unit) {
            (1, Some((stmt, types))) => match shardgate_sql::scatter_select(trim_end(&stmt)) {
                Ok(select) => Need::Scatter {
                    select: Box::new(select),
                    types,
                    text_order: false,
                },
                Err(u) => Need::Refuse(refusal_fields(Refusal {
                    code: shardgate_router::FEATURE_NOT_SUPPORTED,
                    message: format!(
                        "shardgate: cannot merge this query across shards exactly: {}",
                        u.construct
                    ),
                    hint: "Add a shard-key filter, or pin it with /* shardgate: shard=<name> */ \
                           to run it on one shard."
                        .to_owned(),
                })),
            },
            _ => Need::Refuse(refusal_fields(Refusal {
                code: shardgate_router::FEATURE_NOT_SUPPORTED,
                message: "shardgate: a query across all shards must be the only statement of its \
                          request"
                    .to_owned(),
                hint: "Send it as a request of its own.".to_owned(),
            })),
        };
        return RequestPlan {
            need,
            why,
            missing_types: acc.missing,
            write: acc.write,
        };
    }
    let mut plan = acc.finish(rt);
    if let Need::Split { requests, .. } = &mut plan.need {
        match (units, split_source) {
            (1, Some((stmt, a, bound, extended, per))) => {
                match split_requests(&stmt, &a, &bound, extended, per, buf, max_len) {
                    Some(r) => *requests = r,
                    None => {
                        plan.need = Need::Refuse(refusal_fields(Refusal {
                            code: shardgate_router::FEATURE_NOT_SUPPORTED,
                            message: "shardgate: this multi-row INSERT cannot be split by shard"
                                .to_owned(),
                            hint: "Insert the rows of each shard in separate statements."
                                .to_owned(),
                        }))
                    }
                }
            }
            _ => {
                plan.need = Need::Refuse(refusal_fields(Refusal {
                    code: shardgate_router::FEATURE_NOT_SUPPORTED,
                    message: "shardgate: a multi-row INSERT whose rows live on different shards \
                              must be the only statement of its request"
                        .to_owned(),
                    hint: "Send it as a request of its own.".to_owned(),
                }))
            }
        }
    }
    if let Need::Split {
        client_parse: cp, ..
    } = &mut plan.need
    {
        *cp = client_parse;
    }
    plan
}

/// A statement without its trailing semicolon and whitespace.
fn trim_end(stmt: &[u8]) -> &[u8] {
    let end = stmt
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
        .map_or(0, |i| i + 1);
    &stmt[..end]
}

fn decode_parse(frame: &Bytes) -> Option<ParseRef<'_>> {
    match FrontendRef::decode(*frame.first()?, frame.get(5..)?) {
        Ok(FrontendRef::Parse(p)) => Some(p),
        _ => None,
    }
}

fn join_names(names: &[Arc<str>]) -> String {
    names.iter().map(|n| &**n).collect::<Vec<_>>().join(", ")
}

/// Plans one statement, reading its keys with the key column's type.
fn plan_one(
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
        t.unwrap_or(0)
    } else {
        0
    };
    let mut resolve = |src: &KeySource| resolve_key(src, bound, column_type);
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

fn resolve_key(
    src: &KeySource,
    bound: &Bound<'_>,
    column_type: u32,
) -> Result<Option<KeyValue>, String> {
    match src {
        KeySource::Literal { text, cast } => {
            let oid = cast.as_deref().and_then(cast_oid).unwrap_or(column_type);
            KeyValue::from_param(oid, 0, text.as_bytes())
                .map(Some)
                .map_err(|e| e.to_string())
        }
        KeySource::Param(n) => {
            let Some(bind) = &bound.bind else {
                return Err(format!("parameter ${n} has no value in this request"));
            };
            let i = usize::from(*n).checked_sub(1).ok_or("parameter $0")?;
            let value = bind
                .params()
                .nth(i)
                .ok_or_else(|| format!("parameter ${n} has no value in the Bind"))?;
            let formats: Vec<i16> = bind.param_formats().collect();
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            let declared = bound.types.get(i).copied().unwrap_or(0);
            match value {
                None => Ok(None),
                Some(bytes) => {
                    let oid = if declared != 0 {
                        declared
                    } else {
                        undeclared_oid(column_type, format, bytes.len())
                    };
                    KeyValue::from_param(oid, format, bytes)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
            }
        }
    }
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

/// The statements' plans folded into one.
#[derive(Default)]
struct Combined {
    any_reference: bool,
    first: bool,
    shards: ShardSet,
    many: bool,
    all: bool,
    split: bool,
    scatter: bool,
    scatter_write: bool,
    refused: Option<Refusal>,
    write: bool,
    why: Option<ShardWhy>,
    statements: usize,
    missing: Vec<String>,
}

impl Combined {
    fn add(&mut self, p: Result<StatementPlan, Refusal>, write: bool) {
        self.write |= write;
        let p = match p {
            Ok(p) => p,
            Err(r) => {
                self.refused.get_or_insert(r);
                return;
            }
        };
        self.statements += 1;
        match &p.target {
            Target::Any => return,
            Target::AnyReference => self.any_reference = true,
            Target::First => self.first = true,
            Target::Shards(s) => {
                self.many |= s.count_ones() > 1;
                self.shards |= s;
            }
            Target::All => self.all = true,
            Target::Scatter => self.scatter = true,
            Target::ScatterWrite => self.scatter_write = true,
            Target::Split(per) => {
                self.split = true;
                for (s, _) in per {
                    self.shards |= bit(*s);
                }
            }
        }
        if self.why.is_none() || matches!(p.why, ShardWhy::Key { .. }) {
            self.why = Some(p.why);
        }
    }

    /// The reason of a scatter: "no shard key for table ev: scatter to 2 shards".
    fn scatter_why(&self, rt: &ShardingRuntime) -> String {
        let table = match &self.why {
            Some(ShardWhy::NoKey { table }) => table.as_str(),
            _ => "?",
        };
        format!(
            "no shard key for table {table}: scatter to {} shards",
            rt.names.len()
        )
    }

    fn finish(self, rt: &ShardingRuntime) -> RequestPlan {
        let scatter_why = self.scatter_why(rt);
        let names = &rt.names;
        let write = self.write;
        let missing = self.missing;
        let with = |need: Need, why: String| RequestPlan {
            need,
            why,
            missing_types: missing.clone(),
            write,
        };
        if let Some(r) = self.refused {
            return with(Need::Refuse(refusal_fields(r)), String::new());
        }
        let list = |set: ShardSet| {
            shards_in(set)
                .filter_map(|i| names.get(i).map(|n| &**n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let why_key = |set: ShardSet| match &self.why {
            Some(ShardWhy::Key {
                column,
                value,
                logical,
                count,
            }) => {
                let v = match value {
                    KeyValue::Int(i) => i.to_string(),
                    KeyValue::Text(t) => t.clone(),
                };
                if *count > 1 || set.count_ones() > 1 {
                    format!("keys {column} ({count} values) → {}", list(set))
                } else {
                    format!("key {column}={v} → logical {logical} → {}", list(set))
                }
            }
            _ => String::new(),
        };
        let all: ShardSet = if names.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << names.len()) - 1
        };
        let conflict = |what: &str| {
            with(
                Need::Refuse(
                    ErrorFields::new(
                        "ERROR",
                        shardgate_router::FEATURE_NOT_SUPPORTED,
                        format!("shardgate: the statements of this request need different shards ({what})"),
                    )
                    .with(b'H', "Send statements for different shards as separate requests."),
                ),
                String::new(),
            )
        };
        if self.all {
            if self.shards != 0 && self.shards != all && names.len() > 1 {
                return conflict(&format!("every shard, and {}", list(self.shards)));
            }
            let why = match self.why {
                Some(ShardWhy::Ddl) => "DDL → every shard",
                Some(ShardWhy::ReferenceWrite) => "write to a reference table → every shard",
                _ => "write to an unsharded table → every shard",
            };
            return with(
                Need::Many {
                    shards: all,
                    sum: false,
                },
                why.to_owned(),
            );
        }
        if self.scatter_write {
            if self.statements > 1 {
                return conflict("an UPDATE/DELETE on every shard and other statements");
            }
            return with(
                Need::Many {
                    shards: all,
                    sum: true,
                },
                scatter_why,
            );
        }
        if self.split {
            if self.statements > 1 {
                return conflict("a split INSERT and other statements");
            }
            let why = format!("INSERT rows split by key → {}", list(self.shards));
            return with(
                Need::Split {
                    requests: Vec::new(),
                    client_parse: false,
                },
                why,
            );
        }
        let mut shards = self.shards;
        if self.first {
            shards |= 1;
        }
        if shards == 0 {
            return match (self.any_reference, self.first) {
                (true, _) => with(Need::AnyReference, "reads reference tables only".to_owned()),
                _ => with(Need::Any, "names no sharded table".to_owned()),
            };
        }
        if self.first && self.shards & !1 != 0 {
            return conflict(&format!(
                "an unsharded table on {}, and {}",
                list(1),
                list(self.shards)
            ));
        }
        if shards.count_ones() == 1 {
            let i = shards.trailing_zeros() as usize;
            let why = if self.shards != 0 {
                why_key(shards)
            } else {
                format!("reads an unsharded table → {}", list(shards))
            };
            return with(Need::One(i), why);
        }
        if !self.many && self.statements > 1 {
            return conflict(&list(shards));
        }
        with(Need::Many { shards, sum: true }, why_key(shards))
    }
}

/// One request per shard for a split INSERT: the statement with that shard's rows, and for the
/// extended protocol the client's messages mirrored on the unnamed statement and portal with
/// the Bind's parameters renumbered.
fn split_requests(
    stmt: &[u8],
    a: &ShardAnalysis,
    bound: &Bound<'_>,
    extended: bool,
    per: Vec<(usize, Vec<usize>)>,
    buf: &[u8],
    max_len: usize,
) -> Option<Vec<(usize, BytesMut)>> {
    let ins = a.insert.as_ref()?;
    let mut out = Vec::with_capacity(per.len());
    for (shard, rows) in per {
        let spliced = splice_insert(stmt, ins, &rows)?;
        let mut req = BytesMut::new();
        if !extended {
            frontend::query(&spliced.sql, &mut req);
            out.push((shard, req));
            continue;
        }
        let bind = bound.bind.as_ref()?;
        let types: Vec<u32> = spliced
            .params
            .iter()
            .map(|&n| bound.types.get(usize::from(n) - 1).copied().unwrap_or(0))
            .collect();
        let values: Vec<Option<&[u8]>> = bind.params().collect();
        let formats: Vec<i16> = bind.param_formats().collect();
        let new_values: Vec<Option<&[u8]>> = spliced
            .params
            .iter()
            .map(|&n| values.get(usize::from(n) - 1).copied().flatten())
            .collect();
        let new_formats: Vec<i16> = if formats.len() > 1 {
            spliced
                .params
                .iter()
                .map(|&n| formats.get(usize::from(n) - 1).copied().unwrap_or(0))
                .collect()
        } else {
            formats.clone()
        };
        let results: Vec<i16> = bind.result_formats().collect();
        let mut parsed = false;
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&buf[pos..], max_len) {
            if buf.len() - pos < h.len {
                return None;
            }
            let msg = FrontendRef::decode(h.tag, &buf[pos + 5..pos + h.len]).ok()?;
            pos += h.len;
            match msg {
                FrontendRef::Parse(_) => {}
                FrontendRef::Bind(_) => {
                    frontend::parse(b"", &spliced.sql, &types, &mut req);
                    parsed = true;
                    frontend::bind(b"", b"", &new_formats, &new_values, &results, &mut req);
                }
                FrontendRef::Describe { kind: b'P', .. } if parsed => {
                    frontend::describe(b'P', b"", &mut req)
                }
                FrontendRef::Execute { max_rows, .. } => frontend::execute(b"", max_rows, &mut req),
                FrontendRef::Sync => {
                    frontend::sync(&mut req);
                    break;
                }
                _ => return None,
            }
        }
        out.push((shard, req));
    }
    Some(out)
}
