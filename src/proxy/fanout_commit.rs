//! All-or-nothing autocommit writes on several shards: whether the request can run inside a
//! transaction shardgate opens on each shard (or must run as it is, or be refused), and ending
//! those transactions: committed on every shard only if every shard succeeded (two-phase when
//! configured), else rolled back everywhere. A connection whose COMMIT, ROLLBACK or probe failed
//! is closed, never pooled in a state nobody knows.

use shardgate_pool::BackendError;
use shardgate_sql::{for_each_statement, has_keyword, leading_keywords, LexOptions, WhyWrite};
use shardgate_wire::{peek_header, ErrorFields, FrontendRef};
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::request::Scanned;
use super::session::Session;
use super::shard_catalog::first_value;
use super::shard_legs::Leg;
use super::sqlstate;
use super::topology::Snapshot;

/// How a fanned-out autocommit write is kept from committing on some shards only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Atomicity {
    /// Runs inside a transaction shardgate opens on each shard.
    Wrap,
    /// One statement PostgreSQL refuses inside a transaction block: it runs as it is.
    Alone,
    /// Several statements, one of which cannot run inside a transaction block: refused, since
    /// unwrapped they could commit on some shards and fail on others.
    Refuse,
}

/// 0A000 for [`Atomicity::Refuse`].
pub(super) fn not_in_block_error() -> ErrorFields {
    ErrorFields::new(
        "ERROR",
        sqlstate::FEATURE_NOT_SUPPORTED,
        "shardgate: a statement of this request cannot run inside a transaction block, and the \
         request writes on several shards",
    )
    .with(
        b'D',
        "Several statements on several shards run in one transaction per shard, so that they \
         commit on every shard or none.",
    )
    .with(
        b'H',
        "Send that statement (VACUUM, CREATE INDEX CONCURRENTLY, ...) as a request of its own.",
    )
}

/// Whether PostgreSQL accepts `stmt` inside a transaction block (false for the statements that
/// call `PreventInTransactionBlock`, as far as their words show).
fn runs_in_block(stmt: &[u8]) -> bool {
    let kw = leading_keywords(stmt);
    let first_two = (kw.get(0).unwrap_or(""), kw.get(1).unwrap_or(""));
    let refused = match first_two {
        ("CREATE" | "DROP" | "ALTER", "DATABASE" | "TABLESPACE" | "SYSTEM" | "SUBSCRIPTION") => {
            true
        }
        ("VACUUM", _) | ("DISCARD", "ALL") | ("PREPARE", "TRANSACTION") => true,
        ("COMMIT" | "ROLLBACK", "PREPARED") => true,
        // CLUSTER without a table name clusters the whole database.
        ("CLUSTER", "" | "VERBOSE") => kw.len() <= 2,
        ("REINDEX", _) => ["CONCURRENTLY", "DATABASE", "SYSTEM"]
            .iter()
            .any(|w| has_keyword(stmt, w)),
        // CREATE/DROP INDEX CONCURRENTLY, ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY.
        ("CREATE" | "DROP" | "ALTER", _) => has_keyword(stmt, "CONCURRENTLY"),
        _ => false,
    };
    !refused
}

/// Counts the statements of `sql` (one Query's text) into `runs` and clears `in_block` if one
/// cannot run inside a transaction block.
fn check_text(sql: &[u8], count: bool, runs: &mut usize, in_block: &mut bool) {
    for_each_statement(sql, LexOptions::default(), |r| {
        if count {
            *runs += 1;
        }
        *in_block &= runs_in_block(sql.get(r).unwrap_or_default());
    });
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// How the buffered write, about to run on several shards outside a transaction, is made
    /// all-or-nothing.
    pub(super) fn atomicity(&self, scanned: &Scanned) -> Result<Atomicity, ClientError> {
        // Statements run (a Query's statements, Executes) and whether every text seen (a
        // Query's, Parses', named statements bound) may run inside a transaction block. The
        // text of an unnamed statement parsed by an earlier request is not kept: its class
        // (`Maintenance`) is all that is known.
        let (mut runs, mut in_block) = (0usize, true);
        let buf = &self.cbuf[..];
        let mut pos = 0;
        while let Some(h) = peek_header(&buf[pos..], self.max_len)? {
            if buf.len() - pos < h.len {
                break;
            }
            match FrontendRef::decode(h.tag, &buf[pos + 5..pos + h.len])? {
                FrontendRef::Query { sql } => check_text(sql, true, &mut runs, &mut in_block),
                FrontendRef::Parse(p) => check_text(p.query, false, &mut runs, &mut in_block),
                FrontendRef::Bind(b) if !b.statement.is_empty() => {
                    if let Some(p) = self.statements.get(b.statement) {
                        let sql = p.parse.get(p.query.clone()).unwrap_or_default();
                        check_text(sql, false, &mut runs, &mut in_block);
                    }
                }
                FrontendRef::Execute { .. } | FrontendRef::FunctionCall(_) => runs += 1,
                _ => {}
            }
            pos += h.len;
            if matches!(h.tag, b'Q' | b'S' | b'F' | b'H') {
                break;
            }
        }
        let maintenance = matches!(
            scanned.class.as_ref().and_then(|c| c.write.as_ref()),
            Some(WhyWrite::Maintenance)
        );
        Ok(if runs > 1 {
            // Maintenance that may run in a block (ANALYZE t) is wrapped with the rest.
            if in_block {
                Atomicity::Wrap
            } else {
                Atomicity::Refuse
            }
        } else if in_block && !maintenance {
            Atomicity::Wrap
        } else {
            Atomicity::Alone
        })
    }

    /// Ends the transactions shardgate opened on `legs` for an autocommit write: commits them
    /// (two-phase when configured and more than one shard ran it) if no shard `failed`, else
    /// rolls them back. Returns the client's error if committing failed.
    pub(super) async fn end_wrapped(
        &mut self,
        snapshot: &Snapshot,
        legs: &mut [Leg],
        failed: bool,
    ) -> Option<ErrorFields> {
        let track = snapshot.policy.read_your_writes && snapshot.policy.read_write_split;
        if let (false, Some(tp), true) = (failed, &snapshot.two_phase, legs.len() > 1) {
            let mut conns: Vec<(&str, &mut shardgate_pool::ServerConn)> = legs
                .iter_mut()
                .map(|l| (&*snapshot.shards[l.co.shard].name, &mut *l.co.conn))
                .collect();
            let settled = super::two_phase::commit_all(tp, &mut conns, &self.shared.metrics).await;
            drop(conns);
            for (leg, unsettled) in legs.iter_mut().zip(settled.unsettled) {
                leg.flight.tx_status = b'I';
                leg.unsettled = unsettled;
            }
            if let Err(fields) = settled.result {
                return Some(fields);
            }
            if track {
                for leg in legs.iter_mut() {
                    let lsn = if leg.unsettled {
                        None
                    } else {
                        // The write is committed: a failed probe must not say otherwise.
                        match first_value(&mut leg.co.conn, "SELECT pg_current_wal_insert_lsn()")
                            .await
                        {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::warn!(shard = %snapshot.shards[leg.co.shard].name, error = %e, "read-your-writes probe after a two-phase commit failed");
                                leg.unsettled = true;
                                None
                            }
                        }
                    };
                    self.note_written(snapshot, leg.co.shard, lsn.as_deref());
                }
            }
            return None;
        }
        let mut committed: Vec<&str> = Vec::new();
        let mut rolled_back: Vec<&str> = Vec::new();
        let mut unknown: Vec<&str> = Vec::new();
        // (shard, SQLSTATE, message) of the COMMIT that failed.
        let mut failure: Option<(&str, String, String)> = None;
        for leg in legs.iter_mut() {
            let name = &*snapshot.shards[leg.co.shard].name;
            let commit = !failed && failure.is_none();
            let sql = match (commit, track) {
                (false, _) => "ROLLBACK",
                (true, true) => "COMMIT; SELECT pg_current_wal_insert_lsn()",
                (true, false) => "COMMIT",
            };
            let result = first_value(&mut leg.co.conn, sql).await;
            leg.flight.tx_status = b'I';
            match result {
                Ok(lsn) if commit => {
                    committed.push(name);
                    if track {
                        self.note_written(snapshot, leg.co.shard, lsn.as_deref());
                    }
                }
                Ok(_) => rolled_back.push(name),
                Err(e) => {
                    // Closed, not pooled; a server rolls back what a lost connection left open.
                    leg.unsettled = true;
                    if !commit {
                        rolled_back.push(name);
                        continue;
                    }
                    let (code, message) = match &e {
                        BackendError::Server { fields, .. } => {
                            rolled_back.push(name);
                            (
                                fields.code().unwrap_or("XX000").to_owned(),
                                fields.message().unwrap_or_default().to_owned(),
                            )
                        }
                        other => {
                            unknown.push(name);
                            (
                                sqlstate::TRANSACTION_RESOLUTION_UNKNOWN.to_owned(),
                                other.to_string(),
                            )
                        }
                    };
                    failure = Some((name, code, message));
                }
            }
        }
        let (shard, code, message) = failure?;
        let list = |names: &[&str]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let mut detail = format!(
            "Committed on shards: {}. Rolled back on shards: {}.",
            list(&committed),
            list(&rolled_back)
        );
        if !unknown.is_empty() {
            detail.push_str(&format!(
                " Outcome unknown (connection lost during COMMIT) on shards: {}.",
                unknown.join(", ")
            ));
        }
        Some(
            ErrorFields::new(
                "ERROR",
                &code,
                format!("shardgate: COMMIT failed on shard {shard}: {message}"),
            )
            .with(b'D', detail)
            .with(
                b'H',
                "The write may be applied on some shards only: check them. With \
                 sharding.two_phase_commit such a write commits on every shard or none.",
            ),
        )
    }

    /// Remembers where a committed write stands on `shard` for read-your-writes. An unknown
    /// position counts as beyond any replica's, so this session's reads of that shard go to
    /// the primary, which has the write; a replica could be stale.
    fn note_written(&mut self, snapshot: &Snapshot, shard: usize, lsn: Option<&str>) {
        let lsn = lsn
            .and_then(shardgate_pool::lag::parse_lsn)
            .unwrap_or(u64::MAX);
        self.routing.note_lsn(snapshot, shard, lsn);
    }
}
