//! Planning a request's shards from the session: the whole request read first, then
//! `shard_plan.rs` asked, with the catalog facts it needs (key column types, which functions
//! are aggregates, whether text sorts as in C) read once from the first shard and kept.

use bytes::Bytes;
use shardgate_config::PoolMode;
use shardgate_pool::BackendError;
use shardgate_wire::ErrorFields;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::errors::ClientError;
use super::fanout::request_len;
use super::params::SessionParams;
use super::request::Scanned;
use super::session::{reserve, Session};
use super::shard_plan::{plan_request, Need, RequestPlan};
use super::sharding_runtime::ShardingRuntime;
use super::sqlstate;
use super::topology::Snapshot;

/// Largest request shardgate buffers whole to plan it (a pipeline up to its Sync).
const MAX_PLANNED_REQUEST: usize = 64 << 20;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Which shards the buffered request needs; None without sharding. Reads the rest of the
    /// request first if it is not all buffered (its Bind may carry the key).
    pub(super) async fn plan_shards(
        &mut self,
        snapshot: &Snapshot,
        scanned: &mut Scanned,
    ) -> Result<Option<RequestPlan>, ClientError> {
        let Some(rt) = snapshot.sharding.clone() else {
            return Ok(None);
        };
        if self.mode != PoolMode::Transaction {
            return Ok(None);
        }
        if !scanned.complete {
            while request_len(&self.cbuf, self.max_len)?.is_none() {
                if self.cbuf.len() > MAX_PLANNED_REQUEST {
                    return Err(ClientError::Protocol(
                        "a pipelined request without Sync exceeds 64 MiB",
                    ));
                }
                reserve(&mut self.cbuf);
                if self.client.read_buf(&mut self.cbuf).await? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            *scanned = self.scan_request(&snapshot.classifier)?;
        }
        if let Some(r) = scanned.unnamed_parse.clone() {
            self.unnamed_parse = Some(Bytes::copy_from_slice(&self.cbuf[r]));
        }
        let mut plan = self.plan_once(&rt, scanned);
        if !plan.missing_types.is_empty() {
            self.learn_key_types(snapshot, &rt, &plan.missing_types)
                .await;
            plan = self.plan_once(&rt, scanned);
        }
        if let Need::Scatter { .. } = plan.need {
            self.check_scatter(snapshot, &rt, &mut plan).await;
        }
        if is_ddl(scanned) {
            // Before and after (fan_out) the change: nothing learned before it is trusted.
            rt.forget_catalog();
        }
        Ok(Some(plan))
    }

    /// What a scatter needs from the catalog (read once from the first shard and kept): no
    /// function it calls may be an aggregate shardgate does not know, and whether text sorts
    /// as in C. A catalog that cannot be read refuses the scatter rather than guess.
    async fn check_scatter(
        &self,
        snapshot: &Snapshot,
        rt: &ShardingRuntime,
        plan: &mut RequestPlan,
    ) {
        const MERGEABLE: &[&str] = &[
            "count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every",
        ];
        let Need::Scatter {
            select, text_order, ..
        } = &mut plan.need
        else {
            return;
        };
        let names: Vec<String> = shardgate_sql::called_functions(&select.shard_sql)
            .into_iter()
            .filter(|n| !MERGEABLE.contains(&n.as_str()))
            .collect();
        let unknown: Vec<String> = {
            let known = super::sharding_runtime::lock(&rt.aggregates);
            names
                .iter()
                .filter(|n| !known.contains_key(*n))
                .cloned()
                .collect()
        };
        let collation = *super::sharding_runtime::lock(&rt.collation_c);
        if !unknown.is_empty() || collation.is_none() {
            let quoted: Vec<String> = unknown
                .iter()
                .map(|n| format!("'{}'", n.replace('\'', "''")))
                .collect();
            let learned = self.catalog(snapshot, &quoted).await;
            match learned {
                Some((aggs, c)) => {
                    let mut known = super::sharding_runtime::lock(&rt.aggregates);
                    for n in &unknown {
                        known.insert(n.clone(), aggs.contains(n));
                    }
                    *super::sharding_runtime::lock(&rt.collation_c) = Some(c);
                }
                None => {
                    plan.need = Need::Refuse(ErrorFields::new(
                        "ERROR",
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "shardgate: cannot read the catalog of the first shard to check a query across shards",
                    ));
                    return;
                }
            }
        }
        let aggregate = {
            let known = super::sharding_runtime::lock(&rt.aggregates);
            names.into_iter().find(|n| known.get(n) == Some(&true))
        };
        if let Some(name) = aggregate {
            plan.need = Need::Refuse(
                ErrorFields::new(
                    "ERROR",
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("shardgate: cannot merge this query across shards exactly: aggregate function {name}"),
                )
                .with(b'H', "Add a shard-key filter, or pin it with /* shardgate: shard=<name> */ to run it on one shard."),
            );
            return;
        }
        *text_order = super::sharding_runtime::lock(&rt.collation_c).unwrap_or(false);
    }

    /// Which of the (quoted) names are aggregates, and whether the database collates as C.
    async fn catalog(&self, snapshot: &Snapshot, quoted: &[String]) -> Option<(Vec<String>, bool)> {
        let mut conn = catalog_conn(snapshot, &self.user).await?;
        let aggs = if quoted.is_empty() {
            Vec::new()
        } else {
            let sql = format!(
                "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid WHERE p.proname IN ({})",
                quoted.join(", ")
            );
            match conn.first_column(&sql).await {
                Ok(v) => v,
                Err(_) => {
                    conn.discard();
                    return None;
                }
            }
        };
        let collate = match first_value(
            &mut conn,
            "SELECT datcollate FROM pg_database WHERE datname = current_database()",
        )
        .await
        {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => {
                conn.discard();
                return None;
            }
        };
        conn.release();
        // C.UTF-8 orders by code point, which for UTF-8 is byte order, as C does.
        let c = matches!(
            collate.as_str(),
            "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "C.UTF8" | "ucs_basic"
        );
        Some((aggs, c))
    }

    pub(super) fn plan_once(&self, rt: &ShardingRuntime, scanned: &Scanned) -> RequestPlan {
        plan_request(
            rt,
            &self.cbuf,
            self.max_len,
            &self.statements,
            self.unnamed_parse.as_ref(),
            &self.routing,
            scanned.shard_hint.as_ref(),
        )
    }

    /// Reads each table's key column type on the first shard's primary. A table that does
    /// not exist yet stays unknown (its keys are read by the hash rule's text form).
    async fn learn_key_types(&self, snapshot: &Snapshot, rt: &ShardingRuntime, tables: &[String]) {
        let Some(mut conn) = catalog_conn(snapshot, &self.user).await else {
            return;
        };
        for table in tables {
            let Some(sql) = rt.key_type_sql(table) else {
                continue;
            };
            match first_value(&mut conn, &sql).await {
                Ok(Some(v)) => {
                    if let Ok(oid) = v.parse::<u32>() {
                        rt.learn_key_type(table, oid);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    conn.discard();
                    return;
                }
            }
        }
        conn.release();
    }
}

/// A connection to the first shard's primary for catalog lookups, at the server's default
/// settings: what it learns is shared by every client, so a table name must resolve the same
/// for all of them, not through whatever `search_path` the connection's last client set.
async fn catalog_conn(snapshot: &Snapshot, user: &str) -> Option<shardgate_pool::PooledConn> {
    let pool = snapshot.shards[0].primary.pool(user).cloned()?;
    let mut conn = pool.checkout(snapshot.checkout_timeout()).await.ok()?;
    match super::relay::apply_session_state(&mut conn, &SessionParams::default()).await {
        Ok(None) => Some(conn),
        _ => {
            conn.discard();
            None
        }
    }
}

/// The first column of the first row of a simple query (if any).
pub(super) async fn first_value(
    conn: &mut shardgate_pool::ServerConn,
    sql: &str,
) -> Result<Option<String>, BackendError> {
    Ok(conn.first_column(sql).await?.into_iter().next())
}

/// The request changes the schema (through shardgate, so shardgate's catalog caches must go).
pub(super) fn is_ddl(scanned: &Scanned) -> bool {
    matches!(
        scanned.class.as_ref().and_then(|c| c.write.as_ref()),
        Some(shardgate_sql::WhyWrite::Ddl)
    )
}
