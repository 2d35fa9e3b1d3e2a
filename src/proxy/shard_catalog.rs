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
use super::request::Scanned;
use super::scatter_request::{refetch_error, refetched_scatter_portal};
use super::session::{reserve, Session};
use super::shard_plan::{plan_request, Need, RequestPlan};
use super::sharding_runtime::ShardingRuntime;
use super::sqlstate;
use super::topology::Snapshot;

/// The database's collation as `<provider>:<datcollate>` (`c` for libc).
const DATABASE_COLLATION_SQL: &str = "SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') || ':' || datcollate FROM pg_database d WHERE datname = current_database()";

/// Names of the table, view and foreign-table columns, and of the domains, in any schema,
/// whose collation is neither the database's (checked on its own) nor a bytewise one (a cast
/// to such a domain gives its collation to an expression). By name and in any schema: the
/// catalog connection cannot resolve names as each client's `search_path` would, and another
/// table's column of the same name only makes the check refuse more, never less.
const COLLATED_NAMES_SQL: &str =
    "WITH c AS (SELECT oid FROM pg_collation WHERE collprovider <> 'd' \
    AND NOT (collprovider = 'c' AND collcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8', 'C.UTF8'))) \
    SELECT a.attname FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid \
    WHERE a.attcollation IN (SELECT oid FROM c) AND a.attnum > 0 AND NOT a.attisdropped \
    AND r.relkind IN ('r', 'p', 'v', 'm', 'f') \
    UNION SELECT typname FROM pg_type WHERE typtype = 'd' AND typcollation IN (SELECT oid FROM c)";

/// What a scatter needs from the catalog, read in one go.
struct Catalog {
    /// Which of the asked names are aggregates.
    aggregates: Vec<String>,
    /// The database's own collation orders text bytewise.
    collation_c: bool,
    /// See [`COLLATED_NAMES_SQL`].
    collated_names: std::collections::HashSet<String>,
}

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
        let open = &mut self.txn.scatter_portals;
        if let Some(portal) = refetched_scatter_portal(&self.cbuf, self.max_len, open) {
            plan.need = Need::Refuse(refetch_error(&portal));
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
        let columns_known = super::sharding_runtime::lock(&rt.collated_names).is_some();
        if !unknown.is_empty() || collation.is_none() || !columns_known {
            let quoted: Vec<String> = unknown
                .iter()
                .map(|n| format!("'{}'", n.replace('\'', "''")))
                .collect();
            match self.catalog(snapshot, &quoted).await {
                Some(learned) => {
                    let mut known = super::sharding_runtime::lock(&rt.aggregates);
                    for n in &unknown {
                        known.insert(n.clone(), learned.aggregates.contains(n));
                    }
                    *super::sharding_runtime::lock(&rt.collation_c) = Some(learned.collation_c);
                    *super::sharding_runtime::lock(&rt.collated_names) =
                        Some(learned.collated_names);
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
        let collated = super::sharding_runtime::lock(&rt.collated_names)
            .as_ref()
            .and_then(|set| {
                select
                    .compared_names
                    .iter()
                    .find(|n| set.contains(*n))
                    .cloned()
            });
        if let Some(name) = collated {
            plan.need = Need::Refuse(
                ErrorFields::new(
                    "ERROR",
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("shardgate: cannot merge this query across shards exactly: column or domain \"{name}\" has a collation other than \"C\" and the merge compares text byte by byte (in ORDER BY, GROUP BY, DISTINCT, min/max or HAVING)"),
                )
                .with(b'H', "Write the column as <column> COLLATE \"C\" if byte order will do, add a shard-key filter, or pin it with /* shardgate: shard=<name> */ to run it on one shard."),
            );
            return;
        }
        *text_order = super::sharding_runtime::lock(&rt.collation_c).unwrap_or(false);
    }

    /// Which of the (quoted) names are aggregates, whether the database collates as C, and
    /// which columns and domains have a collation of their own that does not.
    async fn catalog(&self, snapshot: &Snapshot, quoted: &[String]) -> Option<Catalog> {
        let rt = snapshot.sharding.as_ref()?;
        let lookup = async {
            let _one = rt.catalog_lookup.lock().await;
            let conn = catalog_conn(snapshot, &self.user).await?;
            read_catalog(conn, quoted).await
        };
        tokio::time::timeout(snapshot.checkout_timeout(), lookup)
            .await
            .ok()
            .flatten()
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
    /// not exist there, or a catalog that cannot be read, leaves the type unknown: a key whose
    /// reading depends on it (bound in binary, say) is then refused, not guessed.
    async fn learn_key_types(&self, snapshot: &Snapshot, rt: &ShardingRuntime, tables: &[String]) {
        let lookup = async {
            let _one = rt.catalog_lookup.lock().await;
            // Another session may have learned them while this one waited.
            let tables: Vec<&String> = tables.iter().filter(|t| rt.key_type(t).is_none()).collect();
            if tables.is_empty() {
                return;
            }
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
                    Err(_) => return,
                }
            }
        };
        // Bounded like a checkout: the statement waits no longer for the catalog than for a
        // connection.
        let _ = tokio::time::timeout(snapshot.checkout_timeout(), lookup).await;
    }
}

/// A connection of its own to the first shard's primary for catalog lookups, outside the
/// pool's slots: the session asking may hold that node's only pooled connection in its
/// transaction (pool.size 1), and waiting for a slot would wait for itself. A new connection
/// is at the server's default settings, so a table name resolves the same for every client
/// (what it learns is shared), not through whatever `search_path` a client set. Opened per
/// lookup (lookups are rare: once per table and snapshot) and closed when dropped.
async fn catalog_conn(snapshot: &Snapshot, user: &str) -> Option<shardgate_pool::ServerConn> {
    let pool = snapshot.shards[0].primary.pool(user)?;
    shardgate_pool::ServerConn::connect(
        pool.addr(),
        pool.credentials(),
        snapshot.checkout_timeout(),
        0,
    )
    .await
    .ok()
}

/// See [`Session::catalog`], over `conn` (closed when done).
async fn read_catalog(mut conn: shardgate_pool::ServerConn, quoted: &[String]) -> Option<Catalog> {
    let aggs = if quoted.is_empty() {
        Ok(Vec::new())
    } else {
        let sql = format!(
            "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid WHERE p.proname IN ({})",
            quoted.join(", ")
        );
        conn.first_column(&sql).await
    };
    // datlocprovider (PostgreSQL 15+) read through to_jsonb so older servers answer too:
    // with ICU as the database's provider, datcollate says nothing about text order.
    let learned = match aggs {
        Ok(aggs) => match (
            first_value(&mut conn, DATABASE_COLLATION_SQL).await,
            conn.first_column(COLLATED_NAMES_SQL).await,
        ) {
            (Ok(c), Ok(columns)) => Some((aggs, c.unwrap_or_default(), columns)),
            _ => None,
        },
        Err(_) => None,
    };
    let (aggregates, collate, columns) = learned?;
    // C.UTF-8 orders by code point, which for UTF-8 is byte order, as C does.
    let collation_c = matches!(
        collate.as_str(),
        "c:C" | "c:POSIX" | "c:C.UTF-8" | "c:C.utf8" | "c:C.UTF8" | "c:ucs_basic"
    );
    Some(Catalog {
        aggregates,
        collation_c,
        collated_names: columns.into_iter().collect(),
    })
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
