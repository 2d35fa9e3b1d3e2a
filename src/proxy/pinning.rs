//! Pinning: a transaction-pooled session that leaves state on its server connection which
//! outlives the transaction, and which no other connection could be given (a temporary table,
//! a session-level advisory lock, `LISTEN`, a cursor `WITH HOLD`, SQL `PREPARE`,
//! `set_config(..., false)`, ...), keeps that connection until it disconnects, as a
//! session-pooled one would. The connection is then closed (`DISCARD ALL` would leave a
//! dblink connection or a loaded library behind). So the session sees its own state, exactly
//! as on a server, and no other client ever sees it.
//!
//! A pinned session holds one server connection: what would need another one (a statement for
//! another shard, a fan-out, a scatter) is refused with 0A000, and so is pinning a session to
//! a replica or inside a transaction that spans shards.

use shardgate_config::PoolMode;
use shardgate_pool::BackendError;
use shardgate_router::Role;
use shardgate_sql::pin_reason;
use shardgate_wire::ErrorFields;
use tokio::io::{AsyncRead, AsyncWrite};

use super::errors::ClientError;
use super::fanout::request_len;
use super::flight::Flight;
use super::request::{scan, Scanned};
use super::session::Session;
use super::shard_plan::Need;
use super::sqlstate::FEATURE_NOT_SUPPORTED;

/// Puts the server's transaction in the failed state (what shardgate refused failed it).
const FAIL_TRANSACTION_SQL: &str = "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
     MESSAGE = 'shardgate refused a statement of this transaction'; END$$";

/// How to keep sessions unpinned, for hints.
const UNPINNED_FORMS: &str = "To keep a session unpinned, use the transaction-scoped forms: \
     pg_advisory_xact_lock, temporary tables ON COMMIT DROP, set_config(..., true), SET LOCAL.";

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Pins the session to the server connection it holds when `scanned` leaves session state
    /// (transaction mode only: session mode keeps its connection anyway).
    pub(super) fn pin_if_needed(&mut self, scanned: &Scanned) {
        let Some(why) = scanned.pins else { return };
        if self.mode == PoolMode::Session {
            // Session mode resets its connection with DISCARD ALL when the client leaves,
            // which leaves these behind: the connection is closed instead.
            self.close_at_end |= why == pin_reason::LOAD || why == pin_reason::DBLINK_CONNECT;
            return;
        }
        if self.pinned.is_some() {
            return;
        }
        self.pinned = Some(why);
        self.shared.metrics.pinned_sessions.inc();
        tracing::info!(
            user = %self.user,
            why,
            "session keeps its server connection until it disconnects"
        );
    }

    /// Why `scanned` cannot run as planned in a transaction-pooled session, if it cannot:
    /// `need` is where sharding sends it (None: the connection held, or no sharding), `role`
    /// the role of the connection it would run on.
    pub(super) fn pin_problem(
        &self,
        scanned: &Scanned,
        need: Option<&Need>,
        role: Role,
    ) -> Option<ErrorFields> {
        if self.mode != PoolMode::Transaction {
            return None;
        }
        let spans = match need {
            Some(Need::Scatter { .. } | Need::Many { .. } | Need::Split { .. }) => true,
            Some(Need::One(i)) => self.server.as_ref().is_some_and(|c| c.shard != *i),
            _ => false,
        };
        if let Some(why) = self.pinned {
            if !spans {
                return None;
            }
            let shard = self.server.as_ref().map_or(0, |c| c.shard);
            let name = self
                .server
                .as_ref()
                .and_then(|c| c.snapshot.shards.get(shard))
                .map_or_else(String::new, |s| format!(" on shard {}", s.name));
            return Some(refusal(
                format!(
                    "this session keeps its server connection{name}, since it used {why}; \
                     a statement for another shard, or for several, cannot run in it"
                ),
                format!(
                    "Run it from another connection, or send this session's statements to its \
                     shard (SET shardgate.shard, or /* shardgate: shard=NAME */). {UNPINNED_FORMS}"
                ),
            ));
        }
        let why = scanned.pins?;
        if spans && need.is_some_and(|n| !matches!(n, Need::One(_))) {
            return Some(refusal(
                format!("{why} cannot be left on several shards at once in transaction pooling"),
                format!(
                    "Send it to one shard (with its shard key, or /* shardgate: shard=NAME */). \
                     {UNPINNED_FORMS}"
                ),
            ));
        }
        if !self.parked.is_empty() {
            return Some(refusal(
                format!("{why} cannot be used in a transaction that spans shards"),
                format!("Use it in a transaction on one shard. {UNPINNED_FORMS}"),
            ));
        }
        if role == Role::Replica {
            return Some(refusal(
                format!(
                    "{why} cannot be used in a read-only transaction that shardgate sent to a \
                     replica: the session would have to keep that replica's connection"
                ),
                "Use it outside the read-only transaction, or start the transaction with \
                 /* shardgate: primary */."
                    .to_owned(),
            ));
        }
        None
    }

    /// Without sharding, or in session mode, everything the client sent goes to the server at
    /// once, and only the first request was planned (when the server was idle). The requests
    /// pipelined behind it are looked at here for one that pins the session: it pins it now,
    /// before the connection could go back to the pool (in session mode: one that makes the
    /// connection close at the end, see `pin_if_needed`). One that must be refused (on a replica)
    /// is held back, with what follows it, until the server is idle and it is planned.
    /// Returns how much of the client buffer may be translated.
    pub(super) fn unplanned_pins(&mut self) -> Result<usize, ClientError> {
        let (Some(checkout), false) = (self.server.as_ref(), self.flight.in_copy()) else {
            return Ok(self.cbuf.len());
        };
        let (classifier, role) = (checkout.snapshot.classifier.clone(), checkout.role);
        let mut pos = 0;
        if self.flight.idle() {
            match request_len(&self.cbuf, self.max_len)? {
                Some((len, _)) => pos = len,
                None => return Ok(self.cbuf.len()),
            }
        }
        let mut unnamed = self.unnamed.clone();
        // Every request, and the frames of one still arriving (they are sent as they come).
        while pos < self.cbuf.len() {
            let rest = &self.cbuf[pos..];
            let scanned = scan(
                rest,
                self.max_len,
                &classifier,
                &self.statements,
                unnamed.as_ref(),
            )?;
            if scanned.pins.is_some() {
                if self.pin_problem(&scanned, None, role).is_some() {
                    if pos == 0 && !self.flight.at_request_boundary() {
                        // Its first frames are on the server already: it can be neither held
                        // back (the server waits for the rest) nor refused alone.
                        return Err(ClientError::PinMidRequest);
                    }
                    return Ok(pos);
                }
                self.pin_if_needed(&scanned);
                if self.pinned.is_some() || self.close_at_end {
                    break;
                }
            }
            unnamed = scanned.unnamed;
            match request_len(&self.cbuf[pos..], self.max_len)? {
                Some((len, _)) => pos += len,
                None => break,
            }
        }
        Ok(self.cbuf.len())
    }

    /// Fails the open transaction of a pinned session on its own server connection, which it
    /// keeps (giving it back would hand its state to another client): the server then answers
    /// what follows as PostgreSQL would (25P02, and COMMIT rolls back). False if that did not
    /// work: the connection is closed, and the session ends at its next request. Not cancel
    /// safe.
    pub(super) async fn fail_pinned_transaction(&mut self) -> bool {
        let Some(co) = self.server.as_mut() else {
            return false;
        };
        match co.conn.run_discarding(FAIL_TRANSACTION_SQL).await {
            Err(BackendError::Server { .. }) => {
                self.flight = Flight::with_status(b'E');
                true
            }
            _ => {
                if let Some(co) = self.server.take() {
                    co.conn.discard();
                }
                self.registration.slot.clear();
                false
            }
        }
    }

    /// Refuses a request for [`Session::pin_problem`]'s reason; inside a transaction the
    /// refusal fails the transaction, as a server error would.
    pub(super) async fn refuse_pin(
        &mut self,
        fields: ErrorFields,
        in_transaction: bool,
    ) -> Result<(), ClientError> {
        self.shared.metrics.refused("pinned");
        if in_transaction {
            self.abort_locally().await;
        }
        self.reject_request(fields).await
    }
}

fn refusal(message: String, hint: String) -> ErrorFields {
    ErrorFields::new("ERROR", FEATURE_NOT_SUPPORTED, message).with(b'H', hint)
}
