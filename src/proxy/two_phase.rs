//! Two-phase commit across shards (`sharding.two_phase_commit`): a transaction that wrote on
//! several shards is prepared on each (`PREPARE TRANSACTION 'shardgate_<instance>_<n>'`), the
//! decision to commit is appended to a log file and fsynced, and only then is each shard told
//! `COMMIT PREPARED`. A recovery pass (at start and periodically) finds leftover prepared
//! transactions named `shardgate_*` on every primary and commits those whose decision is in the
//! log, rolling back the rest.
//!
//! Log format, one record per line: `C <gid>` (decided: commit) and `D <gid>` (every shard
//! committed; the record can be forgotten). Only `C` lines are fsynced: losing a `D` line only
//! makes recovery look for a transaction that is already gone.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::topology::Snapshot;
use crate::metrics::Metrics;

/// Prefix of every transaction name shardgate prepares.
pub(crate) const GID_PREFIX: &str = "shardgate_";

/// How often the recovery pass runs.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// A prepared transaction younger than this may belong to a live commit (of this or another
/// shardgate process): recovery leaves it alone.
const RECOVERY_MIN_AGE_SECS: u32 = 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The coordinator's durable state.
pub(crate) struct TwoPhase {
    path: PathBuf,
    file: Mutex<File>,
    /// Decided to commit, not yet known done.
    committed: Mutex<HashSet<String>>,
    instance: u64,
    counter: AtomicU64,
}

impl std::fmt::Debug for TwoPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoPhase")
            .field("path", &self.path)
            .finish()
    }
}

impl TwoPhase {
    /// Opens (creating) the log and reads the decisions still pending in it.
    pub(crate) fn open(path: &Path) -> std::io::Result<TwoPhase> {
        let mut committed = HashSet::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if let Some(gid) = line.strip_prefix("C ") {
                    committed.insert(gid.to_owned());
                } else if let Some(gid) = line.strip_prefix("D ") {
                    committed.remove(gid);
                }
            }
        }
        // Rewrite it with only the pending decisions, so it does not grow forever.
        let tmp = path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            for gid in &committed {
                writeln!(f, "C {gid}")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(TwoPhase {
            path: path.to_owned(),
            file: Mutex::new(file),
            committed: Mutex::new(committed),
            instance: rand::random::<u32>().into(),
            counter: AtomicU64::new(0),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A transaction name unique to this process.
    pub(crate) fn new_gid(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{GID_PREFIX}{:08x}_{n}", self.instance)
    }

    /// Makes the decision to commit `gid` durable. Nothing may be committed before this returns.
    pub(crate) fn log_commit(&self, gid: &str) -> std::io::Result<()> {
        let mut f = lock(&self.file);
        writeln!(f, "C {gid}")?;
        f.sync_data()?;
        lock(&self.committed).insert(gid.to_owned());
        Ok(())
    }

    /// Every shard committed `gid`.
    pub(crate) fn log_done(&self, gid: &str) {
        let mut f = lock(&self.file);
        if writeln!(f, "D {gid}").is_ok() {
            lock(&self.committed).remove(gid);
        }
    }

    pub(crate) fn is_committed(&self, gid: &str) -> bool {
        lock(&self.committed).contains(gid)
    }
}

/// Tuning for tests (recovery timing); unset in production.
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Test hook: `SHARDGATE_2PC_CRASH=after_prepare|after_decision` aborts the process at that
/// point of a commit, so tests can check recovery. Never set it in production.
pub(crate) fn crash_point(point: &str) {
    if std::env::var("SHARDGATE_2PC_CRASH").is_ok_and(|v| v == point) {
        eprintln!("shardgate: SHARDGATE_2PC_CRASH={point}: aborting");
        std::process::abort();
    }
}

/// Resolves leftover prepared transactions on every shard's primary, now and then every
/// `RECOVERY_INTERVAL`, until `stop`.
pub(crate) async fn recovery_loop(
    snapshot: Arc<arc_swap::ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let interval = env_u64("SHARDGATE_2PC_RECOVERY_INTERVAL_MS")
        .map(Duration::from_millis)
        .unwrap_or(RECOVERY_INTERVAL);
    loop {
        let snap = snapshot.load_full();
        if let Some(tp) = snap.two_phase.clone() {
            recover_once(&snap, &tp, &metrics, true).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One recovery pass. `min_age`: leave transactions prepared in the last few seconds alone.
pub(crate) async fn recover_once(snap: &Snapshot, tp: &TwoPhase, metrics: &Metrics, min_age: bool) {
    let Some(user) = snap.config.users.first().map(|u| u.name.clone()) else {
        return;
    };
    let min =
        env_u64("SHARDGATE_2PC_RECOVERY_MIN_AGE_SECS").unwrap_or(RECOVERY_MIN_AGE_SECS.into());
    let age = if min_age { min } else { 0 };
    let list = format!(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'shardgate\\_%' \
         AND database = current_database() AND prepared < now() - interval '{age} seconds'"
    );
    for shard in &snap.shards {
        let Some(pool) = shard.primary.pool(&user).cloned() else {
            continue;
        };
        let Ok(mut conn) = pool.checkout(snap.checkout_timeout()).await else {
            continue;
        };
        let gids = match conn.first_column(&list).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(shard = %shard.name, error = %e, "2pc recovery: cannot list prepared transactions");
                conn.discard();
                continue;
            }
        };
        let mut ok = true;
        for gid in gids {
            if !gid.starts_with(GID_PREFIX) || gid.contains('\'') {
                continue;
            }
            let commit = tp.is_committed(&gid);
            let sql = if commit {
                format!("COMMIT PREPARED '{gid}'")
            } else {
                format!("ROLLBACK PREPARED '{gid}'")
            };
            match conn.run_discarding(&sql).await {
                Ok(()) => {
                    tracing::info!(shard = %shard.name, %gid, commit, "2pc recovery resolved a prepared transaction");
                    metrics.two_pc(if commit {
                        "recovered_commit"
                    } else {
                        "recovered_rollback"
                    });
                }
                Err(e) => {
                    tracing::warn!(shard = %shard.name, %gid, error = %e, "2pc recovery failed");
                    ok = false;
                }
            }
        }
        if ok {
            conn.release();
        } else {
            conn.discard();
        }
    }
}

/// What [`commit_all`] did.
pub(super) struct Settled {
    /// Err: the transaction was rolled back on every shard; the client's error.
    pub(super) result: Result<(), shardgate_wire::ErrorFields>,
    /// Per connection given: its last command (ROLLBACK [PREPARED] or COMMIT PREPARED) failed,
    /// so its state is unknown and it must be closed, never given back to its pool.
    pub(super) unsettled: Vec<bool>,
}

/// Commits one distributed transaction over `conns` (each inside the transaction, on a
/// different shard's primary): prepare everywhere, log the decision, commit everywhere. On a
/// failure before the decision everything is rolled back and the error names the shard.
pub(super) async fn commit_all(
    tp: &TwoPhase,
    conns: &mut [(&str, &mut shardgate_pool::ServerConn)],
    metrics: &Metrics,
) -> Settled {
    let mut unsettled = vec![false; conns.len()];
    let gid = tp.new_gid();
    let prepare = format!("PREPARE TRANSACTION '{gid}'");
    // (where, SQLSTATE, message) of the first failure.
    let mut failure: Option<(String, String, String)> = None;
    let mut prepared = 0;
    for (name, conn) in conns.iter_mut() {
        match conn.run_discarding(&prepare).await {
            Ok(()) => prepared += 1,
            Err(e) => {
                let (code, message) = match &e {
                    shardgate_pool::BackendError::Server { fields, .. } => (
                        fields.code().unwrap_or("XX000").to_owned(),
                        fields.message().unwrap_or_default().to_owned(),
                    ),
                    other => ("08006".to_owned(), other.to_string()),
                };
                failure = Some((format!("shard {name}"), code, message));
                break;
            }
        }
    }
    if failure.is_none() {
        crash_point("after_prepare");
        if let Err(e) = tp.log_commit(&gid) {
            failure = Some((
                format!("the decision log {}", tp.path().display()),
                "58030".to_owned(),
                e.to_string(),
            ));
        }
    }
    if let Some((place, code, message)) = failure {
        let rollback = format!("ROLLBACK PREPARED '{gid}'");
        for (i, (_, conn)) in conns.iter_mut().enumerate() {
            let sql = if i < prepared {
                rollback.as_str()
            } else {
                "ROLLBACK"
            };
            if conn.run_discarding(sql).await.is_err() {
                // A prepared transaction left behind is rolled back by recovery (no decision).
                if let Some(u) = unsettled.get_mut(i) {
                    *u = true;
                }
            }
        }
        metrics.two_pc("rolled_back");
        let error = shardgate_wire::ErrorFields::new(
            "ERROR",
            &code,
            format!("shardgate: two-phase commit failed at {place}: {message}"),
        )
        .with(b'D', "The transaction was rolled back on every shard.")
        .with(
            b'H',
            "Two-phase commit needs max_prepared_transactions > 0 on every shard.",
        );
        return Settled {
            result: Err(error),
            unsettled,
        };
    }
    crash_point("after_decision");
    let commit = format!("COMMIT PREPARED '{gid}'");
    let mut all = true;
    for (i, (name, conn)) in conns.iter_mut().enumerate() {
        if let Err(e) = conn.run_discarding(&commit).await {
            // The decision is durable: recovery finishes it.
            tracing::warn!(shard = %name, %gid, error = %e, "COMMIT PREPARED failed; recovery will retry");
            all = false;
            if let Some(u) = unsettled.get_mut(i) {
                *u = true;
            }
        }
    }
    if all {
        tp.log_done(&gid);
    }
    metrics.two_pc("committed");
    Settled {
        result: Ok(()),
        unsettled,
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> super::session::Session<S> {
    /// The open transaction wrote on more than one shard.
    pub(super) fn distributed(&self) -> bool {
        // One written shard commits on its own (the others only read); only several need 2PC.
        self.txn_written.count_ones() > 1
    }

    /// Ends a transaction that wrote on several shards: the client's COMMIT (or ROLLBACK) is
    /// answered here, after a two-phase commit over the shards that were written (the others
    /// only read and are rolled back). A failed statement anywhere turns COMMIT into ROLLBACK.
    pub(super) async fn end_distributed(
        &mut self,
        snapshot: &Snapshot,
        scanned: &super::request::Scanned,
    ) -> Result<(), super::errors::ClientError> {
        let written = self.txn_written;
        let mut conns: Vec<(super::session::Checkout, u8)> =
            Vec::with_capacity(self.parked.len() + 1);
        for mut p in std::mem::take(&mut self.parked) {
            let mut status = p.tx_status;
            if written & shardgate_router::bit(p.co.shard) != 0 && status != b'E' {
                // A parked writer first runs what it missed: a ROLLBACK TO SAVEPOINT run on
                // another shard undoes its writes too.
                let missed: Vec<bytes::Bytes> =
                    self.txn.since_unchecked(p.replayed).cloned().collect();
                if !missed.is_empty() {
                    status = catch_up(&mut p.co.conn, &missed).await;
                }
            }
            conns.push((p.co, status));
        }
        if let Some(c) = self.server.take() {
            conns.push((c, self.flight.tx_status));
        }
        conns.sort_by_key(|(c, _)| c.shard);
        let failed = conns.iter().any(|(_, s)| *s == b'E');
        let commit = scanned.first_txn == Some(shardgate_sql::TxnControl::Commit) && !failed;
        // A SET run in the transaction: whatever the outcome, each connection's settings are
        // unknown from here (re-applied from scratch at their next checkout).
        if self.params.unsettled() {
            for (co, _) in &mut conns {
                co.conn.state_fingerprint = 0;
            }
        }
        let (mut writers, readers): (Vec<_>, Vec<_>) = conns
            .into_iter()
            .partition(|(c, _)| written & shardgate_router::bit(c.shard) != 0);
        // A cancel of this client's query may still arrive: its connections then go nowhere.
        let cancelling = self.registration.slot.clear();
        for (co, _) in readers {
            co.roll_back_and_release(cancelling).await;
        }
        let mut outcome = Ok(if commit { "COMMIT" } else { "ROLLBACK" });
        let unsettled = match (&snapshot.two_phase, commit) {
            (Some(tp), true) => {
                let mut list: Vec<(&str, &mut shardgate_pool::ServerConn)> = writers
                    .iter_mut()
                    .map(|(c, _)| (&*snapshot.shards[c.shard].name, &mut *c.conn))
                    .collect();
                let settled = commit_all(tp, &mut list, &self.shared.metrics).await;
                outcome = settled.result.map(|()| "COMMIT");
                settled.unsettled
            }
            _ => {
                let mut unsettled = Vec::with_capacity(writers.len());
                for (co, _) in &mut writers {
                    unsettled.push(co.conn.run_discarding("ROLLBACK").await.is_err());
                }
                self.shared.metrics.two_pc("rolled_back");
                unsettled
            }
        };
        for ((co, _), unsettled) in writers.into_iter().zip(unsettled) {
            let mut conn = co.conn;
            if unsettled || cancelling || conn.looks_dead() {
                conn.discard();
            } else {
                conn.release();
            }
        }
        self.params.end_unseen(outcome.is_ok() && commit);
        self.flight = super::flight::Flight::default();
        self.txn_written = 0;
        self.txn_write_shard = None;
        self.txn.clear();
        self.routing.txn_wrote = false;
        self.shared.metrics.transactions.inc();
        match outcome {
            Ok(tag) => self.answer_with_tag(tag).await,
            Err(fields) => self.reject_request(fields).await,
        }
    }

    /// Answers the buffered request (one transaction-control statement, in either protocol)
    /// as the server would have, with command tag `tag`, outside a transaction.
    async fn answer_with_tag(&mut self, tag: &str) -> Result<(), super::errors::ClientError> {
        use super::mirror::{reply_before_results, Description, Msg};
        use shardgate_wire::{backend, peek_header, FrontendRef};
        while let Some(h) = peek_header(&self.cbuf, self.max_len)? {
            if self.cbuf.len() < h.len {
                break;
            }
            let frame = self.cbuf.split_to(h.len);
            let Some(msg) = Msg::of(&FrontendRef::decode(h.tag, &frame[5..])?) else {
                continue;
            };
            // A transaction-control statement takes no parameters and returns no rows.
            reply_before_results(msg, Description::default(), &mut self.out);
            if matches!(msg, Msg::Query | Msg::Execute) {
                backend::command_complete(tag, &mut self.out);
            }
            if matches!(msg, Msg::Query | Msg::Sync) {
                backend::ready_for_query(b'I', &mut self.out);
                break;
            }
        }
        self.flush_out().await?;
        Ok(())
    }
}

/// Runs on a parked connection, one query each, the state changes it missed; the transaction
/// status it is left in (`E` if aborted or unreachable). A replayed statement may fail as it
/// did where it first ran (and was rolled back to a savepoint since): only the end state
/// counts. Not cancel safe.
async fn catch_up(conn: &mut shardgate_pool::ServerConn, missed: &[bytes::Bytes]) -> u8 {
    for sql in missed {
        let Ok(sql) = std::str::from_utf8(sql) else {
            return b'E';
        };
        // Its error is the one the client saw where it first ran.
        let _ = conn.run_discarding(sql).await;
    }
    match conn.run_discarding("SELECT 1").await {
        Ok(()) => b'T',
        Err(_) => b'E',
    }
}
