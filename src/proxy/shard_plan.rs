//! Which shards a whole request needs: hints and session settings first, then each statement's
//! plan (`shardgate_router::plan_statement`) with its key values read from literals or from the
//! request's Bind, combined over the request. A multi-row INSERT split across shards gets one
//! rewritten request per shard here. Nothing is sent; the session executes the plan.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_router::{KeyValue, Refusal, ShardSet, StatementPlan, Target};
use shardgate_sql::{for_each_statement, Hint, LexOptions, ShardAnalysis};
use shardgate_wire::{peek_header, BindRef, FrontendRef, ParseRef};

use super::routing::SessionRouting;
use super::shard_batch::{batch_requests, flush_ended, Step};
use super::shard_combine::Combined;
use super::shard_split::split_requests;
use super::shard_statement::plan_one;
use super::sharding_runtime::ShardingRuntime;
use super::sqlstate;
use super::statements::ClientStatements;
use shardgate_wire::ErrorFields;

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
        /// The shards it runs on: every shard, or those of its keys.
        shards: ShardSet,
    },
    /// The same request on each of these shards, results combined: rows concatenated, and
    /// counts summed when `sum` (different rows per shard) rather than taken from the first
    /// (a broadcast to full copies).
    Many {
        shards: ShardSet,
        sum: bool,
    },
    /// One rewritten request per shard (a split INSERT, or a batch); `parse` says whether the
    /// client's request had a Parse (its ParseComplete is then expected).
    Split {
        requests: Vec<(usize, BytesMut)>,
        client_parse: bool,
        /// Per shard, the `VALUES` positions of its rows, to return `RETURNING` rows in order.
        rows: Vec<(usize, Vec<usize>)>,
        /// A batch's messages in client order and where each ran (`shard_batch.rs`); empty
        /// for a split INSERT.
        batch: Vec<Step>,
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

pub(super) fn refusal_fields(r: Refusal) -> ErrorFields {
    ErrorFields::new("ERROR", r.code, r.message).with(b'H', r.hint)
}

/// The extended-protocol context of one statement: its Bind and declared parameter types.
pub(super) struct Bound<'a> {
    pub(super) bind: Option<BindRef<'a>>,
    pub(super) types: Vec<u32>,
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
    // Per Bind, its one shard (a batch may run each on its own); None: no batch.
    let mut batch_units: Option<Vec<usize>> = Some(Vec::new());
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
                batch_units = None;
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
                    batch_units = None;
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
                match (&p, &mut batch_units) {
                    (
                        Ok(StatementPlan {
                            target: Target::Shards(set),
                            ..
                        }),
                        Some(units),
                    ) if set.count_ones() == 1 => units.push(set.trailing_zeros() as usize),
                    _ => batch_units = None,
                }
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
    if let Some(plan) = batch_plan(rt, &acc, batch_units, buf, max_len) {
        return plan;
    }
    if acc.scatter && acc.refused.is_none() {
        let why = acc.scatter_why(rt);
        let all = (0..rt.names.len()).fold(0, |m, i| m | shardgate_router::bit(i));
        return RequestPlan {
            need: scatter_need(units, last_unit, all),
            why,
            missing_types: acc.missing,
            write: acc.write,
        };
    }
    let mut plan = acc.finish(rt);
    // A read whose keys live on several shards is merged like a scatter over those shards:
    // concatenating would break its ORDER BY, LIMIT and aggregates.
    if let (Need::Many { shards, sum: true }, false) = (&plan.need, plan.write) {
        let shards = *shards;
        plan.need = scatter_need(units, last_unit, shards);
        return plan;
    }
    if let Need::Split { requests, rows, .. } = &mut plan.need {
        match (units, split_source) {
            (1, Some((stmt, a, bound, extended, per))) => {
                *rows = per.clone();
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

/// The plan of a batch: several Bind/Execute units in one request, each on one shard (its
/// key's), not all on the same one. None for any other request.
fn batch_plan(
    rt: &ShardingRuntime,
    acc: &Combined,
    units: Option<Vec<usize>>,
    buf: &[u8],
    max_len: usize,
) -> Option<RequestPlan> {
    let units = units?;
    let first = *units.first()?;
    if units.iter().all(|&s| s == first) || acc.refused.is_some() || !acc.missing.is_empty() {
        return None;
    }
    let Some((requests, steps)) = batch_requests(buf, max_len, &units) else {
        return flush_ended(buf, max_len).then(|| flush_refusal(rt, &units));
    };
    let names: Vec<&str> = requests
        .iter()
        .filter_map(|(s, _)| rt.names.get(*s).map(|n| &**n))
        .collect();
    Some(RequestPlan {
        need: Need::Split {
            requests,
            client_parse: true,
            rows: Vec::new(),
            batch: steps,
        },
        why: format!(
            "batch of {} statements by key → {}",
            units.len(),
            names.join(", ")
        ),
        missing_types: Vec::new(),
        write: acc.write,
    })
}

/// The refusal of a batch over several shards whose client reads the replies before it syncs.
fn flush_refusal(rt: &ShardingRuntime, units: &[usize]) -> RequestPlan {
    let mut shards = units.to_vec();
    shards.sort_unstable();
    shards.dedup();
    let names: Vec<&str> = shards
        .iter()
        .filter_map(|s| rt.names.get(*s).map(|n| &**n))
        .collect();
    let fields = refusal_fields(Refusal {
        code: shardgate_router::FEATURE_NOT_SUPPORTED,
        message: format!(
            "shardgate: a batch whose statements need different shards ({}) must end with Sync, \
             not Flush: it commits or rolls back on every shard at its Sync",
            names.join(", ")
        ),
        hint: "psycopg's executemany(..., returning=True) ends with Flush: use returning=False, \
               or run the statements with execute() in a `with conn.pipeline():` block and read \
               their results after the block; or keep each executemany's rows on one shard."
            .to_owned(),
    });
    RequestPlan::new(Need::Refuse(fields), String::new())
}

/// The plan of a read merged across `shards` (a single statement), or its refusal.
fn scatter_need(units: usize, last_unit: Option<(Vec<u8>, Vec<u32>)>, shards: ShardSet) -> Need {
    match (units, last_unit) {
        (1, Some((stmt, types))) => match shardgate_sql::scatter_select(trim_end(&stmt)) {
            Ok(select) => Need::Scatter {
                select: Box::new(select),
                types,
                text_order: false,
                shards,
            },
            Err(u) => Need::Refuse(refusal_fields(Refusal {
                code: shardgate_router::FEATURE_NOT_SUPPORTED,
                message: format!(
                    "shardgate: cannot merge this query across shards exactly: {}",
                    u.construct
                ),
                hint: "Add a shard-key filter that names one shard's keys, or pin it with \
                       /* shardgate: shard=<name> */ to run it on one shard."
                    .to_owned(),
            })),
        },
        _ => Need::Refuse(refusal_fields(Refusal {
            code: shardgate_router::FEATURE_NOT_SUPPORTED,
            message: "shardgate: a query across shards must be the only statement of its request"
                .to_owned(),
            hint: "Send it as a request of its own.".to_owned(),
        })),
    }
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
