//! What is in flight on a server connection, kept without IO: client frames are
//! translated for the server (prepared statements renamed, re-prepared or answered
//! locally), and server frames are matched against what each client message expects,
//! so that synthetic replies land in exactly the right place of the response stream
//! and the session knows when the server connection is idle again.
//!
//! Both directions forward runs of frames they need not touch straight from the read
//! buffer; only rewritten or dropped frames break a run.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use shardgate_config::PoolMode;
use shardgate_sql::Classifier;
use shardgate_wire::{backend, frontend, peek_header, FrontendRef, ParseRef};

use super::errors::ClientError;
use super::params::{Effects, Restore, SessionParams};
use super::statements::{ClientStatements, Prepared, NAME_LEN};

/// The statement and portal of [`Flight::send_restore`]: never a client's in transaction mode,
/// where the server knows the client's statements under internal names.
const RESTORE_NAME: &[u8] = b"shardgate.restore_startup";

/// A statement name no server connection has: a Bind or Describe of a stale statement (see
/// [`Expect::StaleStatement`]) is sent under it, so that the server fails it (26000) with the
/// skip to Sync and the rollback it does for any error.
const STALE_NAME: &[u8] = b"shardgate.result_type_changed";

/// Largest server message shardgate buffers whole. Servers are trusted, but not with
/// the proxy's memory.
pub(crate) const SERVER_MAX_MESSAGE: usize = 1 << 30;

/// A reply shardgate produces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synthetic {
    ParseComplete,
    CloseComplete,
}

/// What the server will answer to one forwarded client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A client Parse; if it named a statement, its internal id on the server.
    Parse(Option<u128>),
    /// A client Parse of a name the client already has, sent under that statement's internal
    /// name so that the server refuses it (see [`Flight::refuse_duplicate`]).
    DuplicateParse,
    /// A simple Query or an Execute that runs a `DEALLOCATE` of one of the client's statements
    /// in a shape shardgate does not answer itself (see [`deallocate_refusal`]): it goes to the
    /// server as is, which knows the statement only under its internal name; its 26000 is
    /// replaced by shardgate's 0A000.
    RefusedQuery,
    RefusedExecute,
    /// shardgate's own Parse re-creating a statement: its ParseComplete is dropped.
    HiddenParse(u128),
    /// shardgate's own Close of the unnamed statement: its CloseComplete is dropped.
    HiddenClose,
    /// shardgate's own Close of a statement's copy on this connection, whose shape is the one
    /// keyed (see `ServerConn::prepared`), ahead of a Parse analysing it again (see
    /// [`Flight::replace_copy`]): its CloseComplete is dropped. Skipped, the copy stays.
    ReplaceClose(u128, u64),
    /// shardgate's own Describe of a statement the client just parsed: its shape is learnt
    /// (see [`super::statements::Shape`]), its replies dropped.
    ShapeProbe(u128),
    /// shardgate's own Describe of a statement it re-created on this connection: its shape is
    /// compared with the one the client's Parse got, its replies dropped. Translation waits for
    /// it (see [`Flight::shape_pending`]).
    ShapeCheck(u128),
    /// A Bind or Describe of a statement whose shape changed, sent under [`STALE_NAME`]: the
    /// server's 26000 is replaced by PostgreSQL's 0A000 "cached plan must not change result
    /// type".
    StaleStatement,
    Bind,
    Describe,
    Execute,
    Close,
    /// Ends at ReadyForQuery.
    Sync,
    /// A simple Query or FunctionCall: ends at ReadyForQuery, errors do not skip.
    Query,
    /// A client's simple Query resetting startup parameters, sent with shardgate's
    /// `set_config` of their startup values right behind each such statement (see
    /// [`Restore::InText`]): those statements' rows and CommandComplete are dropped;
    /// `hiding` while one of them is being answered.
    RestoringQuery {
        hiding: bool,
    },
    /// shardgate's own Bind and Execute (of [`Flight::send_restore`]): their replies are
    /// dropped.
    HiddenBind,
    HiddenExecute,
    Synthetic(Synthetic),
    /// The client ended a COPY here (CopyDone/CopyFail): no reply of its own, it only
    /// tells which Syncs the server ignored in copy-in mode.
    CopyEnd,
    /// shardgate's own Sync ending a run that only prepared and described named statements
    /// (see [`Flight::can_end_prepares`]): its ReadyForQuery is dropped.
    HiddenSync,
    /// shardgate's own simple Query: every reply is dropped. A probe's DataRow carries
    /// the primary's WAL insert position.
    Hidden {
        probe: bool,
    },
}

/// Per-connection bookkeeping of one client.
#[derive(Debug)]
pub(crate) struct Flight {
    expect: VecDeque<Expect>,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// Every message of the unsynced run so far prepared or described a tracked named
    /// statement (or was a Flush).
    prepares_only: bool,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    had_error: bool,
    /// The server sent the client a FATAL (or PANIC) ErrorResponse: it is closing the
    /// connection, and the client has been told why.
    pub(crate) server_fatal: bool,
    /// Transaction status from the last ReadyForQuery.
    pub(crate) tx_status: u8,
    /// The server is in copy-in mode and the client has not ended it: the server
    /// ignores Syncs meanwhile, so they expect no ReadyForQuery.
    copy_in: bool,
    /// The LSN a running probe has read so far.
    probe_lsn: Option<u64>,
    /// The names of the client's named Parses in `expect` (see [`names_statement`]), in order:
    /// one the server skips or refuses never existed, as directly.
    named: VecDeque<NamedParse>,
    /// A server frame rewritten for the client, sent in place of the one it replaces.
    rewritten: BytesMut,
    /// An [`Expect::ShapeCheck`] is unanswered: the client's Bind or Describe that needed it
    /// is translated once it is, as a stale statement's or as usual.
    shape_pending: bool,
    /// The connection carries other sessions' requests behind this one's (multiplexing):
    /// relaying stops at the ReadyForQuery that makes the flight idle, and what follows is
    /// theirs.
    pub(crate) stop_at_idle: bool,
}

/// A client's named Parse awaiting its answer.
#[derive(Debug)]
struct NamedParse {
    client: Bytes,
    /// The internal name the server knows the statement by.
    internal: [u8; NAME_LEN],
}

/// Whether an expectation stands for a client's named Parse (it has an entry in `named`).
fn names_statement(e: Expect) -> bool {
    matches!(
        e,
        Expect::Parse(Some(_))
            | Expect::DuplicateParse
            | Expect::Synthetic(Synthetic::ParseComplete)
    )
}

impl Default for Flight {
    fn default() -> Self {
        Flight {
            expect: VecDeque::with_capacity(8),
            unsynced: false,
            prepares_only: true,
            had_error: false,
            server_fatal: false,
            tx_status: b'I',
            copy_in: false,
            probe_lsn: None,
            named: VecDeque::new(),
            rewritten: BytesMut::new(),
            shape_pending: false,
            stop_at_idle: false,
        }
    }
}

/// The result of translating buffered client frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Translated {
    /// Bytes of the client buffer covered by whole frames that were handled.
    pub(crate) consumed: usize,
    /// Forward `input[..consumed]` as is; otherwise send the translated buffer.
    pub(crate) direct: bool,
    /// The client sent Terminate (not forwarded; nothing after it is handled).
    pub(crate) terminate: bool,
}

/// The result of handling buffered server frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    pub(crate) consumed: usize,
    /// Forward `input[..consumed]` to the client as is; otherwise `out` holds it all.
    pub(crate) direct: bool,
    /// Number of ReadyForQuery messages seen.
    pub(crate) cycles_ended: u32,
    /// A read-your-writes probe finished: the LSN it read and the transaction status it
    /// ran in (only an LSN read outside a transaction is after the commit).
    pub(crate) probe: Option<(Option<u64>, u8)>,
    pub(crate) effects: Effects,
    /// The server refused a prepared statement whose result type its tables changed (see
    /// [`super::statements::PlanEpoch`]): the connection keeps failing it.
    pub(crate) stale_statement: bool,
}

/// The client-side state the translation reads and updates.
pub(crate) struct ClientSide<'a> {
    pub(crate) statements: &'a mut ClientStatements,
    pub(crate) params: &'a mut SessionParams,
    pub(crate) classifier: &'a Classifier,
    /// The [`super::statements::PlanEpoch`] now.
    pub(crate) plan_epoch: u64,
    /// Learn the row shape of each named statement the client parses, and check it on every
    /// copy re-created on another connection, holding the client's Bind or Describe until the
    /// server has described the copy (see [`Expect::ShapeCheck`]). Off where translation must
    /// take a whole request at once (a fan-out leg).
    pub(crate) check_shapes: bool,
}

/// The parts of a server connection the translation touches.
pub(crate) struct ServerSide<'a> {
    pub(crate) prepared: &'a mut HashMap<u128, u64>,
    /// Whose unnamed statement the connection holds (see `ServerConn::unnamed_owner`).
    pub(crate) unnamed_owner: &'a mut u128,
}

impl Flight {
    /// A fresh flight for an idle connection whose transaction status is `tx_status`.
    pub(crate) fn with_status(tx_status: u8) -> Flight {
        Flight {
            tx_status,
            ..Flight::default()
        }
    }

    /// The server is in copy-in mode: client frames are COPY data until CopyDone/CopyFail.
    pub(crate) fn in_copy(&self) -> bool {
        self.copy_in
    }

    /// Nothing in flight: every forwarded message has been answered.
    pub(crate) fn idle(&self) -> bool {
        self.expect.is_empty() && !self.unsynced
    }

    /// Translates whole client frames at the start of `input`, appending to `to_server`
    /// what must be sent (unless the result is `direct`) and to `to_client` any reply
    /// shardgate gives itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn translate(
        &mut self,
        input: &[u8],
        max_len: usize,
        mode: PoolMode,
        client: ClientSide<'_>,
        server: ServerSide<'_>,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<Translated, ClientError> {
        let ClientSide {
            statements,
            params,
            classifier,
            plan_epoch,
            check_shapes,
        } = client;
        if self.shape_pending {
            return Ok(Translated {
                consumed: 0,
                direct: true,
                terminate: false,
            });
        }
        let rename = mode == PoolMode::Transaction;
        let busy_at_start = !self.idle();
        let (mut pos, mut run_start) = (0usize, 0usize);
        let mut terminate = false;
        while let Some(h) = peek_header(&input[pos..], max_len)? {
            if input.len() - pos < h.len {
                break;
            }
            let frame = &input[pos..pos + h.len];
            let msg = FrontendRef::decode(h.tag, &frame[5..])?;
            // shardgate's own commands are answered locally, once what comes before them
            // has been answered: stop in front of one (it may arrive pipelined).
            let own_command = match &msg {
                FrontendRef::Query { sql } => {
                    is_own_command(classifier, sql)
                        || (rename && deallocates_tracked(statements, sql))
                }
                FrontendRef::Parse(p) => {
                    is_own_command(classifier, p.query)
                        || (rename && p.name.is_empty() && deallocates_tracked(statements, p.query))
                }
                FrontendRef::Bind(b) => statements
                    .get(b.statement)
                    .is_some_and(|p| p.class.shardgate.is_some()),
                _ => false,
            };
            // Nothing unanswered before it: the caller already had its chance to answer it
            // locally and did not recognize the request, so the server answers it.
            if own_command && (pos > 0 || busy_at_start) {
                break;
            }
            // None: forward the frame as is. Some: it was handled (rewritten or answered).
            let mut handled = false;
            match msg {
                FrontendRef::Query { sql } => {
                    // A simple query destroys the unnamed statement, the client's included.
                    *server.unnamed_owner = 0;
                    statements.forget_unnamed();
                    let refused = rename
                        && self.tx_status != b'E'
                        && !statements.is_empty()
                        && params.deallocates_any(sql, |n| statements.get(n).is_some());
                    match params.observe(sql) {
                        _ if refused => self.expect.push_back(Expect::RefusedQuery),
                        Some(Restore::InText(points)) => {
                            // In the same text, so that the client's next statement sees the
                            // startup value, and so that the ParameterStatus messages come before
                            // its ReadyForQuery; in the same transaction: a ROLLBACK or a later
                            // error undoes both. The newline ends a trailing `--` comment.
                            handled = true;
                            to_server.extend_from_slice(&input[run_start..pos]);
                            let mut text = Vec::with_capacity(sql.len() + 80 * points.len());
                            let mut from = 0;
                            for (end, restore) in points {
                                text.extend_from_slice(&sql[from..end]);
                                text.extend_from_slice(b"\n;");
                                text.extend_from_slice(restore.as_bytes());
                                from = end;
                            }
                            text.extend_from_slice(&sql[from..]);
                            frontend::query(&text, to_server);
                            self.expect
                                .push_back(Expect::RestoringQuery { hiding: false });
                        }
                        Some(Restore::AfterDiscard(restore)) => {
                            // DISCARD ALL refuses to share a simple Query with anything: the same
                            // request in the extended protocol, with one Sync and so one
                            // ReadyForQuery and one transaction. The client's unnamed statement
                            // is gone anyway (above).
                            handled = true;
                            to_server.extend_from_slice(&input[run_start..pos]);
                            frontend::parse(b"", sql, &[], to_server);
                            frontend::bind(b"", b"", &[], &[], &[], to_server);
                            frontend::execute(b"", 0, to_server);
                            self.expect.push_back(Expect::HiddenParse(0));
                            self.expect.push_back(Expect::HiddenBind);
                            self.expect.push_back(Expect::Execute);
                            self.send_restore(&restore, to_server);
                            frontend::sync(to_server);
                            self.expect.push_back(Expect::Sync);
                        }
                        None => self.expect.push_back(Expect::Query),
                    }
                }
                FrontendRef::FunctionCall(_) => {
                    params.observe_sync();
                    self.expect.push_back(Expect::Query);
                }
                FrontendRef::Parse(p) => {
                    self.unsynced = true;
                    // The client's statement of that name, if it has one.
                    let existing = for_server(
                        rename,
                        statements,
                        p.name,
                        params,
                        server.prepared,
                        plan_epoch,
                    );
                    if let Some(old) = existing {
                        handled = true;
                        to_server.extend_from_slice(&input[run_start..pos]);
                        self.refuse_duplicate(&p, old, server.prepared, to_server);
                    } else if rename && !p.name.is_empty() {
                        params.observe_parse(p.name, p.query);
                        handled = true;
                        let prepared = Prepared::new(
                            &p,
                            classifier.classify(p.query),
                            params.statement_settings(),
                            plan_epoch,
                        );
                        let id = prepared.id;
                        to_server.extend_from_slice(&input[run_start..pos]);
                        let on_server = server.prepared.get(&id).copied();
                        if let (Some(key), true) = (on_server, check_shapes) {
                            // The copy here was analysed at an earlier Parse, maybe another
                            // client's, maybe before its tables changed: as on one server, the
                            // client's own Parse is analysed now and defines its shape.
                            self.replace_copy(&prepared, key, to_server);
                        }
                        if on_server.is_some() && !check_shapes {
                            self.expect
                                .push_back(Expect::Synthetic(Synthetic::ParseComplete));
                        } else {
                            to_server.extend_from_slice(&prepared.parse);
                            server.prepared.insert(id, 0);
                            self.expect.push_back(Expect::Parse(Some(id)));
                        }
                        self.named.push_back(NamedParse {
                            client: Bytes::copy_from_slice(p.name),
                            internal: prepared.name,
                        });
                        if check_shapes {
                            frontend::describe(b'S', &prepared.name, to_server);
                            self.expect.push_back(Expect::ShapeProbe(id));
                        }
                        statements.insert(p.name, prepared);
                    } else {
                        params.observe_parse(p.name, p.query);
                        if rename {
                            *server.unnamed_owner = statements.parsed_unnamed(frame);
                        }
                        self.expect.push_back(Expect::Parse(None));
                    }
                }
                FrontendRef::Bind(b) => {
                    if rename
                        && b.statement.is_empty()
                        && !statements.owns_unnamed(*server.unnamed_owner)
                    {
                        to_server.extend_from_slice(&input[run_start..pos]);
                        run_start = pos;
                        self.restore_unnamed(statements, server.unnamed_owner, to_server);
                    }
                    let mut expect = Expect::Bind;
                    if let Some(prep) = for_server(
                        rename,
                        statements,
                        b.statement,
                        params,
                        server.prepared,
                        plan_epoch,
                    ) {
                        to_server.extend_from_slice(&input[run_start..pos]);
                        run_start = pos;
                        if self.prepare_checked(prep, check_shapes, server.prepared, to_server) {
                            break;
                        }
                        handled = true;
                        if prep.stale {
                            frontend::bind_renamed(b.portal, STALE_NAME, b.rest(), to_server);
                            expect = Expect::StaleStatement;
                        } else {
                            frontend::bind_renamed(b.portal, &prep.name, b.rest(), to_server);
                        }
                    }
                    self.unsynced = true;
                    params.observe_bind(b.portal, b.statement);
                    self.expect.push_back(expect);
                }
                FrontendRef::Describe { kind, name } => {
                    self.unsynced = true;
                    if rename
                        && kind == b'S'
                        && name.is_empty()
                        && !statements.owns_unnamed(*server.unnamed_owner)
                    {
                        to_server.extend_from_slice(&input[run_start..pos]);
                        run_start = pos;
                        self.restore_unnamed(statements, server.unnamed_owner, to_server);
                    }
                    let mut expect = Expect::Describe;
                    if kind == b'S' {
                        if let Some(prep) = for_server(
                            rename,
                            statements,
                            name,
                            params,
                            server.prepared,
                            plan_epoch,
                        ) {
                            to_server.extend_from_slice(&input[run_start..pos]);
                            run_start = pos;
                            if self.prepare_checked(prep, check_shapes, server.prepared, to_server)
                            {
                                break;
                            }
                            handled = true;
                            if prep.stale {
                                frontend::describe(b'S', STALE_NAME, to_server);
                                expect = Expect::StaleStatement;
                            } else {
                                frontend::describe(b'S', &prep.name, to_server);
                            }
                        }
                    }
                    self.expect.push_back(expect);
                }
                FrontendRef::Execute { portal, .. } => {
                    self.unsynced = true;
                    let refused = rename
                        && params
                            .portal_deallocates(portal)
                            .is_some_and(|n| statements.get(n.as_bytes()).is_some());
                    let restore = params.observe_execute(portal);
                    self.expect.push_back(if refused {
                        Expect::RefusedExecute
                    } else {
                        Expect::Execute
                    });
                    if let Some(restore) = restore {
                        handled = true;
                        to_server.extend_from_slice(&input[run_start..pos + h.len]);
                        self.send_restore(&restore, to_server);
                    }
                }
                FrontendRef::Close { kind, name } => {
                    self.unsynced = true;
                    if kind == b'S' && rename && name.is_empty() {
                        *server.unnamed_owner = 0;
                        statements.forget_unnamed();
                    }
                    if kind == b'S' && rename && !name.is_empty() {
                        // Server-side statements are shared; only the client's name goes.
                        handled = true;
                        to_server.extend_from_slice(&input[run_start..pos]);
                        statements.remove(name);
                        self.expect
                            .push_back(Expect::Synthetic(Synthetic::CloseComplete));
                    } else {
                        self.expect.push_back(Expect::Close);
                    }
                }
                FrontendRef::Sync if self.copy_in => {}
                FrontendRef::Sync => {
                    params.observe_sync();
                    self.unsynced = false;
                    self.expect.push_back(Expect::Sync);
                }
                FrontendRef::CopyDone | FrontendRef::CopyFail { .. } => {
                    self.copy_in = false;
                    if !self.expect.is_empty() {
                        self.expect.push_back(Expect::CopyEnd);
                    }
                }
                FrontendRef::Flush | FrontendRef::CopyData(_) => {}
                FrontendRef::Terminate => {
                    to_server.extend_from_slice(&input[run_start..pos]);
                    run_start = pos;
                    terminate = true;
                    break;
                }
                FrontendRef::Password(_) => {
                    return Err(ClientError::Protocol(
                        "password message outside authentication",
                    ))
                }
            }
            // A Parse or Describe that was handled named a tracked statement.
            let prepare_like = match h.tag {
                b'P' | b'D' => handled,
                b'H' => true,
                _ => false,
            };
            if !self.unsynced {
                self.prepares_only = true;
            } else if !prepare_like {
                self.prepares_only = false;
            }
            pos += h.len;
            if handled {
                run_start = pos;
            }
        }
        self.emit_ready_synthetics(to_client);
        let direct = run_start == 0 && to_server.is_empty();
        if !direct {
            to_server.extend_from_slice(&input[run_start..pos]);
        }
        Ok(Translated {
            consumed: if terminate { input.len() } else { pos },
            direct,
            terminate,
        })
    }

    /// shardgate's own statement `sql` (restoring startup values), sent as Parse, Bind, Execute
    /// and Close of its own statement and portal, within the client's run: it runs in the
    /// client's transaction, right after what precedes it, and only if that succeeded. The
    /// client's unnamed statement and portal are left alone. Every reply is dropped.
    fn send_restore(&mut self, sql: &str, to_server: &mut BytesMut) {
        frontend::parse(RESTORE_NAME, sql.as_bytes(), &[], to_server);
        frontend::bind(RESTORE_NAME, RESTORE_NAME, &[], &[], &[], to_server);
        frontend::execute(RESTORE_NAME, 0, to_server);
        frontend::close(b'P', RESTORE_NAME, to_server);
        frontend::close(b'S', RESTORE_NAME, to_server);
        self.expect.extend([
            Expect::HiddenParse(0),
            Expect::HiddenBind,
            Expect::HiddenExecute,
            Expect::HiddenClose,
            Expect::HiddenClose,
        ]);
    }

    /// Before a Bind or Describe of the unnamed statement (transaction mode) on a server
    /// connection that does not hold this client's: the client parsed it on another connection
    /// or in an earlier transaction, and this one may hold another client's, or none. The
    /// client's own Parse is sent again (its ParseComplete hidden). A client without one gets
    /// the server's unnamed statement closed, so that the server answers as it would this
    /// client directly (26000), rather than run another client's statement.
    fn restore_unnamed(
        &mut self,
        statements: &ClientStatements,
        unnamed_owner: &mut u128,
        to_server: &mut BytesMut,
    ) {
        match statements.unnamed_parse() {
            Some(parse) => {
                to_server.extend_from_slice(parse);
                self.expect.push_back(Expect::HiddenParse(0));
                *unnamed_owner = statements.unnamed_token();
            }
            None => {
                frontend::close(b'S', b"", to_server);
                self.expect.push_back(Expect::HiddenClose);
                *unnamed_owner = 0;
            }
        }
    }

    /// A Parse of a name the client already has (`old`), not closed: PostgreSQL analyses the
    /// new text, then refuses the name with 42P05 and keeps the old statement. The server is
    /// sent the new text under `old`'s internal name, which it holds (re-created first if
    /// need be), so that it answers exactly as it would the client directly: the text's own
    /// errors first, then 42P05 (its name put back to the client's when relayed), the skip to
    /// Sync and the rollback of the implicit transaction.
    fn refuse_duplicate(
        &mut self,
        p: &ParseRef<'_>,
        old: &Prepared,
        server_prepared: &mut HashMap<u128, u64>,
        to_server: &mut BytesMut,
    ) {
        self.ensure_prepared(old, server_prepared, to_server);
        frontend::parse_raw_types(&old.name, p.query, p.param_types.raw(), to_server);
        self.expect.push_back(Expect::DuplicateParse);
        self.named.push_back(NamedParse {
            client: Bytes::copy_from_slice(p.name),
            internal: old.name,
        });
    }

    /// Drops the front expectation, and the name of the named Parse it stands for, if any.
    fn pop_expect(&mut self) -> Option<(Expect, Option<NamedParse>)> {
        let e = self.expect.pop_front()?;
        if let Expect::ShapeCheck(_) = e {
            self.shape_pending = false;
        }
        let named = if names_statement(e) {
            self.named.pop_front()
        } else {
            None
        };
        Some((e, named))
    }

    /// Before a Bind or Describe of `prep`: a connection that lacks it gets it re-created (unless
    /// it is stale: see [`STALE_NAME`]). So does one whose copy returns another row shape than
    /// the client was told, or whose shape the client was never told (its Parse was answered
    /// locally): that copy was analysed for another client's Parse, maybe before its tables
    /// changed, and using it could fail with the server's 0A000 where the client's own statement
    /// would not (see [`Flight::replace_copy`]). A statement whose shape is not known yet gets
    /// a Describe of shardgate's own that learns it. One whose shape is known and that was
    /// re-created gets one too, and translation stops in front of the client's message until
    /// the server has answered (the Flush asks it to). The server analyses the text against its
    /// tables as they are now; a changed shape makes the statement stale (see
    /// [`Expect::ShapeCheck`]), so that the client gets PostgreSQL's 0A000 rather than rows it
    /// would decode with the old description. Returns whether translation waits. A statement
    /// the connection has costs one map lookup.
    fn prepare_checked(
        &mut self,
        prep: &Prepared,
        check_shapes: bool,
        server_prepared: &mut HashMap<u128, u64>,
        to_server: &mut BytesMut,
    ) -> bool {
        if prep.stale {
            return false;
        }
        let on_server = server_prepared.get(&prep.id).copied();
        // A copy of unknown shape (0: re-created by a fan-out leg, or its probe unanswered) is
        // used as it is.
        let replace = check_shapes && on_server.is_some_and(|k| k != 0 && k != prep.shape_key);
        if let (Some(key), true) = (on_server, replace) {
            self.replace_copy(prep, key, to_server);
        }
        let created = on_server.is_none() || replace;
        if created {
            to_server.extend_from_slice(&prep.parse);
            self.expect.push_back(Expect::HiddenParse(prep.id));
            server_prepared.insert(prep.id, 0);
        }
        if !check_shapes {
            return false;
        }
        if prep.shape.is_none() {
            frontend::describe(b'S', &prep.name, to_server);
            self.expect.push_back(Expect::ShapeProbe(prep.id));
            return false;
        }
        if !created {
            return false;
        }
        frontend::describe(b'S', &prep.name, to_server);
        frontend::flush(to_server);
        self.expect.push_back(Expect::ShapeCheck(prep.id));
        self.shape_pending = true;
        // The client's run goes on once the check is answered; no Sync of shardgate's own may
        // end it meanwhile.
        self.unsynced = true;
        self.prepares_only = false;
        true
    }

    /// Closes the connection's copy of `prep` (whose shape has key `key`), so that a Parse
    /// behind it analyses the text against the tables as they are now. Other clients' copies
    /// elsewhere are untouched; one that later finds this copy's shape differing from what it
    /// was told gets a copy of its own analysis, checked as any re-created one.
    fn replace_copy(&mut self, prep: &Prepared, key: u64, to_server: &mut BytesMut) {
        frontend::close(b'S', &prep.name, to_server);
        self.expect.push_back(Expect::ReplaceClose(prep.id, key));
    }

    fn ensure_prepared(
        &mut self,
        prep: &Prepared,
        server_prepared: &mut HashMap<u128, u64>,
        to_server: &mut BytesMut,
    ) {
        if let std::collections::hash_map::Entry::Vacant(copy) = server_prepared.entry(prep.id) {
            copy.insert(0);
            to_server.extend_from_slice(&prep.parse);
            self.expect.push_back(Expect::HiddenParse(prep.id));
        }
    }

    /// Whether a Sync of shardgate's own may end the unsynced run now, so that the connection
    /// can go back to the pool: the server answered everything, outside a transaction and
    /// without error, and the run only prepared and described named statements, which are
    /// tracked and re-created on whichever connection the client gets next. asyncpg
    /// prepares that way (Parse, Describe, Flush) and sends its Sync only with the next
    /// execution, which would otherwise hold a server connection for as long as it waits.
    pub(crate) fn can_end_prepares(&self) -> bool {
        self.unsynced
            && self.prepares_only
            && self.expect.is_empty()
            && !self.had_error
            && !self.copy_in
            && self.tx_status == b'I'
    }

    /// The server answered everything sent, but the client has not ended its run with a Sync
    /// (it sent a Flush): the flight goes idle only through the client's next messages.
    pub(crate) fn waits_on_client_sync(&self) -> bool {
        self.unsynced && self.expect.is_empty() && !self.copy_in
    }

    /// [`Flight::waits_on_client_sync`], without error, inside a transaction block: a Sync of
    /// shardgate's own there changes nothing the client can see (it commits nothing, and
    /// portals and statements live on to the transaction's end), so it may end the run.
    pub(crate) fn can_end_run_in_transaction(&self) -> bool {
        self.waits_on_client_sync() && !self.had_error && self.tx_status == b'T'
    }

    /// Ends the unsynced run with a Sync of shardgate's own (see [`Flight::can_end_prepares`],
    /// [`Flight::can_end_run_in_transaction`]).
    pub(crate) fn end_prepares(&mut self, to_server: &mut BytesMut) {
        frontend::sync(to_server);
        self.expect.push_back(Expect::HiddenSync);
        self.unsynced = false;
        self.prepares_only = true;
    }

    /// Sends a query of shardgate's own after what was translated so far; the client
    /// never sees its replies.
    /// `unnamed_owner` is the connection's (a simple query destroys its unnamed statement).
    pub(crate) fn send_hidden(
        &mut self,
        sql: &[u8],
        probe: bool,
        to_server: &mut BytesMut,
        unnamed_owner: &mut u128,
    ) {
        frontend::query(sql, to_server);
        self.expect.push_back(Expect::Hidden { probe });
        *unnamed_owner = 0;
    }

    /// Everything sent ends a request and the server owes only replies: the client need
    /// not be read until they come (pipelined data waits in the socket meanwhile). Not
    /// during COPY IN, when the server waits for the client.
    pub(crate) fn awaiting_replies_only(&self) -> bool {
        !self.expect.is_empty() && !self.unsynced && !self.copy_in
    }

    /// Whether every message sent so far ends a request (a probe may follow).
    pub(crate) fn at_request_boundary(&self) -> bool {
        !self.unsynced
    }

    /// Synthetic replies whose turn has come (everything before them was answered).
    fn emit_ready_synthetics(&mut self, to_client: &mut BytesMut) {
        while let Some(Expect::Synthetic(s)) = self.expect.front().copied() {
            self.pop_expect();
            match s {
                Synthetic::ParseComplete => backend::parse_complete(to_client),
                Synthetic::CloseComplete => backend::close_complete(to_client),
            }
        }
    }
}

/// Whether a statement is `SET/RESET/SHOW shardgate.*` (a byte search first, so other
/// statements cost almost nothing).
fn is_own_command(classifier: &Classifier, sql: &[u8]) -> bool {
    super::params::may_start_with(sql, shardgate_sql::SHARDGATE_COMMAND_WORDS)
        && mentions_shardgate(sql)
        && classifier.classify(sql).shardgate.is_some()
}

/// Whether a simple Query (or an unnamed Parse) is exactly one `DEALLOCATE` of a statement the
/// client has: in transaction mode shardgate answers it (see `Session::answer_deallocate`),
/// since the server knows the statement only under its internal name.
pub(crate) fn deallocates_tracked(statements: &ClientStatements, sql: &[u8]) -> bool {
    if statements.is_empty() {
        return false;
    }
    super::params::lone_deallocate(sql)
        .is_some_and(|name| statements.get(name.as_bytes()).is_some())
}

/// A `DEALLOCATE` of one of the client's statements, in a shape `Session::answer_deallocate`
/// does not answer (pipelined with other messages, parsed in one request and run in another,
/// through a named statement, inside a multi-statement Query), runs on the server, which knows
/// the statement only under its shared internal name: it fails with 26000 while the client's
/// name stays. shardgate replaces that error with [`deallocate_refusal`], which says what
/// works; the failure itself (the skip to Sync, the aborted transaction) is the server's.
pub(crate) fn deallocate_refusal(out: &mut BytesMut) {
    let fields = shardgate_wire::ErrorFields::new(
        "ERROR",
        super::sqlstate::FEATURE_NOT_SUPPORTED,
        "shardgate: DEALLOCATE of a protocol-level prepared statement works only sent alone, \
         as a simple Query or as Parse, Bind, Execute and Sync",
    )
    .with(
        b'H',
        "Close the statement with the protocol's Close message, or send the DEALLOCATE alone.",
    );
    backend::error_response(&fields, out);
}

/// Whether `sql` contains "shardgate" in any case: only positions holding an `s` are compared.
fn mentions_shardgate(sql: &[u8]) -> bool {
    const WORD: &[u8] = b"shardgate";
    memchr::memchr2_iter(b's', b'S', sql).any(|i| {
        sql.get(i..i + WORD.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(WORD))
    })
}

/// The client's statement behind `name`, when shardgate renames it, as this server runs it.
fn for_server<'s>(
    rename: bool,
    statements: &'s mut ClientStatements,
    name: &[u8],
    params: &SessionParams,
    server_prepared: &HashMap<u128, u64>,
    plan_epoch: u64,
) -> Option<&'s Prepared> {
    if rename && !name.is_empty() {
        statements.for_server(
            name,
            server_prepared,
            || params.statement_settings(),
            plan_epoch,
        )
    } else {
        None
    }
}

#[cfg(test)]
#[test]
fn shardgate_is_found_in_any_case_and_place() {
    for yes in [
        &b"shardgate"[..],
        b"SHOW ShardGate.route",
        b"set x.y = 1; set SHARDGATE.target",
    ] {
        assert!(mentions_shardgate(yes), "{}", String::from_utf8_lossy(yes));
    }
    for no in [&b""[..], b"shardgat", b"SELECT shard_gate", b"hardgate s"] {
        assert!(!mentions_shardgate(no), "{}", String::from_utf8_lossy(no));
    }
}

#[path = "flight_replies.rs"]
mod replies;

#[cfg(test)]
#[path = "flight_tests.rs"]
mod tests;
