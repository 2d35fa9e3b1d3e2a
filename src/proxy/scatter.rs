//! Scatter-gather: a SELECT on a sharded table with no usable key runs on every shard (the
//! rewritten text `shardgate_sql::scatter_select` produced), and the replies are merged by
//! `shardgate_merge` into what one server holding all the rows would send: concatenated,
//! k-way merged by ORDER BY (streaming: at most a batch per shard is held), or grouped with
//! aggregates, HAVING, DISTINCT, and LIMIT/OFFSET applied last.
//!
//! The client's messages are mirrored: shards always run `Parse/Bind/Describe/Execute/Sync` on
//! the unnamed statement (or one simple Query), and the client gets exactly the replies its own
//! messages ask for. A shard's error fails the statement: the other shards' connections are
//! closed (the cheapest way to stop them), and the error names the shard. Rows still in the
//! output buffer are dropped, so the client gets the error alone; only a reply large enough to
//! have been flushed already (`FLUSH_AT`) has rows before the ErrorResponse, as PostgreSQL
//! itself does when a query fails midway: drivers report the statement as failed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_merge::{Column, Distinct, MergeError};
use shardgate_sql::ScatterSelect;
use shardgate_wire::{
    backend, frontend, split_frame, BackendMessage, DataRow, ErrorFields, RowDescription,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::fanout::{read_more, request_len};
use super::flight::SERVER_MAX_MESSAGE;
use super::mirror::{reply_before_results, Description, Msg};
use super::request::Scanned;
use super::scatter_encoding::{may_compare_text, read_probe, Encodings, PROBE};
use super::scatter_group::{check_text_order, compares_text};
use super::scatter_request::{
    count_value, needs_param_types, param_types, read_request, shard_formats, ClientRequest,
};
use super::scatter_stream::Sink;
use super::session::Session;
use super::shard_legs::Leg;
use super::shard_plan::{Need, RequestPlan};
use super::sqlstate;
use super::topology::Snapshot;

/// Why the scatter stopped.
pub(super) enum Failure {
    /// A shard's error (index of the shard's leg).
    Shard(usize, ErrorFields),
    /// shardgate's own (a merge it cannot do exactly, a malformed reply).
    Own(ErrorFields),
    /// The connection to a shard failed (index of the shard in the snapshot, the cause).
    Lost(usize, String),
}

pub(super) fn own(code: &str, message: impl Into<String>) -> Failure {
    Failure::Own(ErrorFields::new("ERROR", code, message))
}

/// [`own`] with a hint (the `H` field) saying what to do instead.
pub(super) fn own_with_hint(code: &str, message: impl Into<String>, hint: &str) -> Failure {
    Failure::Own(ErrorFields::new("ERROR", code, message).with(b'H', hint))
}

impl From<MergeError> for Failure {
    fn from(e: MergeError) -> Failure {
        let message = format!("shardgate: {e}");
        match e {
            MergeError::NotIsoDateStyle(_) => own_with_hint(
                e.sqlstate(),
                message,
                "Keep DateStyle's output ISO for queries that sort, group or aggregate dates and timestamps across shards (SET DateStyle = 'ISO, DMY' keeps day-month input), or request binary results.",
            ),
            _ => own(e.sqlstate(), message),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs a scatter plan and answers the client.
    pub(super) async fn scatter(
        &mut self,
        snapshot: Arc<Snapshot>,
        mut scanned: Scanned,
        plan: RequestPlan,
    ) -> Result<(), ClientError> {
        let Need::Scatter {
            select,
            types,
            text_order,
            shards,
        } = plan.need
        else {
            return Ok(());
        };
        let Some((req_len, false)) = request_len(&self.cbuf, self.max_len)? else {
            let fields = ErrorFields::new(
                "ERROR",
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: a query across all shards must end with Sync, not Flush",
            );
            return self.reject_request(fields).await;
        };
        let Some(client) = read_request(&self.cbuf[..req_len], self.max_len)? else {
            let fields = ErrorFields::new(
                "ERROR",
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: a query across all shards must be one Bind and one Execute in its request",
            );
            return self.reject_request(fields).await;
        };
        if let Some(fields) = self.fanned_request_problem(&scanned) {
            return self.reject_request(fields).await;
        }
        let in_txn = self.server.is_some() || self.deferred_begin.is_some();
        let targets = shardgate_router::shards_in(shards)
            .filter(|&s| s < snapshot.shards.len())
            .map(|s| (s, None))
            .collect();
        let Some(mut legs) = self
            .take_legs(&snapshot, targets, false, false, &scanned)
            .await?
        else {
            return Ok(());
        };
        if !self.start_legs(&mut legs).await? {
            return Ok(());
        }
        self.record_scatter(&snapshot, &legs, &scanned, &plan.why, in_txn);
        let request = self.cbuf.split_to(req_len).freeze();
        self.register_parses(&request, &snapshot)?;
        self.unnamed = scanned.unnamed.take();
        let mut shard_req = BytesMut::new();
        if client.extended {
            let formats = shard_formats(&select, &client.result_formats);
            let params: Vec<Option<&[u8]>> = client.params.iter().map(|p| p.as_deref()).collect();
            frontend::parse(b"", &select.shard_sql, &types, &mut shard_req);
            frontend::bind(
                b"",
                b"",
                &client.param_formats,
                &params,
                &formats,
                &mut shard_req,
            );
            if shards_describe_statement(&select, &client) {
                frontend::describe(b'S', b"", &mut shard_req);
            }
            frontend::describe(b'P', b"", &mut shard_req);
            frontend::execute(b"", 0, &mut shard_req);
            frontend::sync(&mut shard_req);
        } else {
            frontend::query(&select.shard_sql, &mut shard_req);
        }
        let mut sent = Ok(());
        // Text ordered in the merge is in the client's encoding: ask which it is.
        let probe = text_order && may_compare_text(&select);
        for (i, leg) in legs.iter_mut().enumerate() {
            let mut bytes = BytesMut::new();
            for sql in std::mem::take(&mut leg.replay) {
                frontend::query(&sql, &mut bytes);
                leg.skip_replies += 1;
            }
            if probe && i == 0 {
                frontend::query(PROBE, &mut bytes);
            }
            bytes.extend_from_slice(&shard_req);
            if let Err(e) = leg.co.conn.stream.write_all(&bytes).await {
                sent = Err(e);
                break;
            }
        }
        // The query is on every shard now: a cancel for it may follow it there.
        self.registration.slot.mark_sent();
        // Where this statement's reply starts in the output buffer, and whether any of it was
        // flushed: a failure before the first flush sends the error alone, no partial rows.
        let mark = self.out.len();
        let mut flushed = false;
        let outcome = match sent {
            Ok(()) => {
                let order = TextOrder {
                    collation_c: text_order,
                    probe,
                };
                self.run_scatter(&mut legs, &select, &client, &mut flushed, order)
                    .await
            }
            Err(e) => Err(own(sqlstate::CONNECTION_FAILURE, format!("shardgate: {e}"))),
        };
        match outcome {
            Ok(()) => {
                for leg in &mut legs {
                    leg.flight.tx_status = leg.last_status;
                }
                let status = if in_txn { b'T' } else { b'I' };
                backend::ready_for_query(status, &mut self.out);
                self.finish_legs(legs, in_txn);
                if in_txn && client.extended && self.txn.active() {
                    // Inside a transaction the client may Execute the portal again; it
                    // exists on no shard, so that Execute is refused (shard_catalog.rs).
                    let open = &mut self.txn.scatter_portals;
                    open.retain(|p| *p != client.portal);
                    open.push(client.portal.clone());
                }
            }
            Err(failure) => {
                let fields = match failure {
                    Failure::Shard(i, mut fields) => {
                        // A shard's FATAL ends that shard's connection, not the client's
                        // session, which goes on: the client must not read it as its own end.
                        for (code, value) in &mut fields.fields {
                            let fatal = matches!(value.as_str(), "FATAL" | "PANIC");
                            if matches!(*code, b'S' | b'V') && fatal {
                                "ERROR".clone_into(value);
                            }
                        }
                        let name = &snapshot.shards[legs[i].co.shard].name;
                        let from = format!("shardgate: this error came from shard {name}.");
                        match fields.fields.iter_mut().find(|(c, _)| *c == b'D') {
                            Some(d) => d.1 = format!("{} ({from})", d.1),
                            None => fields.fields.push((b'D', from)),
                        }
                        fields
                    }
                    Failure::Own(fields) => fields,
                    Failure::Lost(shard, cause) => {
                        let name = snapshot.shards.get(shard).map_or("?", |s| &*s.name);
                        ErrorFields::new(
                            "ERROR",
                            sqlstate::CONNECTION_FAILURE,
                            format!("shardgate: lost shard {name} during a query across all shards: {cause}"),
                        )
                    }
                };
                if fields.code() == Some(sqlstate::FEATURE_NOT_SUPPORTED) {
                    self.shared.metrics.refused("merge");
                }
                if !flushed {
                    self.out.truncate(mark);
                }
                backend::error_response(&fields, &mut self.out);
                // Shards stopped mid-stream: their connections are closed, which also rolls
                // back a transaction's part there.
                for leg in legs {
                    leg.co.conn.discard();
                }
                if !in_txn {
                    // A cancel still on its way finds them closed; none goes anywhere else.
                    self.registration.slot.clear();
                }
                if in_txn {
                    self.abort_locally().await;
                    backend::ready_for_query(b'E', &mut self.out);
                } else {
                    backend::ready_for_query(b'I', &mut self.out);
                }
            }
        }
        self.flush_out().await?;
        Ok(())
    }

    /// Reads every shard's reply and writes the client's (everything but ReadyForQuery).
    async fn run_scatter(
        &mut self,
        legs: &mut [Leg],
        select: &ScatterSelect,
        client: &ClientRequest,
        flushed: &mut bool,
        text_order: TextOrder,
    ) -> Result<(), Failure> {
        let encodings = match (text_order.probe, legs.first_mut()) {
            (true, Some(leg)) => Some(read_probe(leg).await?),
            _ => None,
        };
        // Each shard's RowDescription (and ParameterDescription) first. With a Describe of the
        // statement, the shards describe it before the portal: that description always says
        // text (a statement does not know its result formats), so rows are decoded with the
        // portal's, which carries the formats the Bind asked for.
        let statement_described = shards_describe_statement(select, client);
        let mut described: Option<(RowDescription, Option<Bytes>)> = None;
        for (i, leg) in legs.iter_mut().enumerate() {
            let mut params_desc = None;
            let mut statement_pending = statement_described;
            let rd = loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
                    b'T' | b'n' if statement_pending => statement_pending = false,
                    b'T' => {
                        break RowDescription::decode(&body)
                            .map_err(|e| own("08P01", e.to_string()))?
                    }
                    b't' => params_desc = Some(body),
                    b'E' => return Err(Failure::Shard(i, error_fields(&body))),
                    b'n' => {
                        return Err(own(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "shardgate: the query returns no rows to merge",
                        ))
                    }
                    _ => {}
                }
            };
            match &described {
                None => described = Some((rd, params_desc)),
                Some((first, _)) => {
                    if let Some(problem) = describe_mismatch(first, &rd) {
                        return Err(Failure::Shard(i, problem));
                    }
                }
            }
        }
        let Some((rd, params_desc)) = described else {
            return Err(own("XX000", "shardgate: no shard answered"));
        };
        let columns: Vec<Column> = rd
            .fields
            .iter()
            .map(|f| Column {
                type_oid: f.type_oid,
                typmod: f.type_modifier,
                format: f.format,
            })
            .collect();
        // With `SELECT *` the client's columns are all but the hidden sort keys at the end,
        // and sort keys count each `*` as one item.
        let (width, order_by) = if select.wildcard {
            let hidden = select.shard_columns.saturating_sub(select.outputs.len());
            let width = columns.len().saturating_sub(hidden);
            let order = select
                .order_by
                .iter()
                .map(|k| shardgate_sql::SortCol {
                    column: width + k.column.saturating_sub(select.outputs.len()),
                    ..*k
                })
                .collect();
            (width, order)
        } else {
            (select.outputs.len(), select.order_by.clone())
        };
        if !text_order.collation_c {
            check_text_order(select, &order_by, &columns)?;
        } else if compares_text(select, &order_by, &columns) {
            // Without the probe (it should have been sent) the encoding is unknown: refused.
            match &encodings {
                Some(e) if e.keep_byte_order() => {}
                Some(e) => return Err(e.refusal()),
                None => return Err(Encodings::unknown()),
            }
        }
        let types = param_types(params_desc.as_ref());
        let (params, formats) = (&client.params, &client.param_formats);
        let limit = count_value(select.limit, params, formats, &types)?;
        let offset = count_value(select.offset, params, formats, &types)?.unwrap_or(0);
        // An Execute's row limit stops the rows as a LIMIT does; whether the portal then
        // reports PortalSuspended is decided below.
        let row_limit = (client.row_limit > 0).then_some(u64::from(client.row_limit));
        let mut sink = Sink {
            limit: match (limit, row_limit) {
                (Some(l), Some(r)) => Some(l.min(r)),
                (l, r) => l.or(r),
            },
            offset,
            sent: 0,
            distinct: None,
            width,
            columns: columns.len(),
            flushed: false,
        };
        let merged: Result<(), Failure> = async {
            if select.aggregated {
                let (client_rd, rows) = self.group(legs, select, &rd, &columns).await?;
                self.write_head(client, &client_rd, params_desc.as_ref());
                for row in rows {
                    self.emit(&mut sink, row).await?;
                }
            } else {
                if select.distinct {
                    sink.distinct =
                        Some(Distinct::new(columns[..width.min(columns.len())].to_vec()));
                }
                let client_rd = RowDescription {
                    fields: rd.fields.iter().take(width).cloned().collect(),
                };
                self.write_head(client, &client_rd, params_desc.as_ref());
                if order_by.is_empty() {
                    self.concat(legs, &mut sink).await?;
                } else {
                    self.ordered(legs, &order_by, &columns, &mut sink).await?;
                }
            }
            // Every shard ends its reply with ReadyForQuery; an error before it (its implicit
            // commit failing) still fails the statement.
            for (i, leg) in legs.iter_mut().enumerate() {
                while !leg.done {
                    let (tag, body) = next_frame(leg).await?;
                    if tag == b'E' {
                        return Err(Failure::Shard(i, error_fields(&body)));
                    }
                }
            }
            Ok(())
        }
        .await;
        *flushed = sink.flushed;
        merged?;
        self.shared.metrics.merge_rows.inc_by(sink.sent);
        if row_limit.is_some_and(|r| sink.sent == r) {
            // As the server: a portal that returned as many rows as asked for is suspended,
            // whether or not rows remain.
            backend::portal_suspended(&mut self.out);
        } else if client.msgs.contains(&Msg::Execute) || !client.extended {
            backend::command_complete(&format!("SELECT {}", sink.sent), &mut self.out);
        }
        Ok(())
    }

    /// The replies before the rows: ParseComplete, BindComplete, the descriptions asked for.
    fn write_head(&mut self, client: &ClientRequest, rd: &RowDescription, params: Option<&Bytes>) {
        let described = Description {
            params: params.map(|p| &p[..]),
            rows: Some(rd),
        };
        for &m in &client.msgs {
            reply_before_results(m, described, &mut self.out);
        }
    }

    fn record_scatter(
        &self,
        snapshot: &Snapshot,
        legs: &[Leg],
        scanned: &Scanned,
        why: &str,
        in_txn: bool,
    ) {
        self.shared.metrics.scatter.inc();
        self.record_legs(snapshot, legs, scanned, why, in_txn);
    }
}

/// How text sorts: as in C on the shards, and whether the first shard was asked for the
/// session's encodings.
#[derive(Clone, Copy)]
struct TextOrder {
    collation_c: bool,
    probe: bool,
}

/// The shards describe the statement when the client does, and when a LIMIT/OFFSET parameter
/// must be read (its type is in the description).
fn shards_describe_statement(select: &ScatterSelect, client: &ClientRequest) -> bool {
    client.extended && (client.msgs.contains(&Msg::DescribeStatement) || needs_param_types(select))
}

/// Why a shard's description of the result cannot be merged with the first shard's: another
/// column count or type (the table differs between shards). Merging would put one shard's
/// values under another's columns.
fn describe_mismatch(first: &RowDescription, rd: &RowDescription) -> Option<ErrorFields> {
    let problem = if rd.fields.len() != first.fields.len() {
        format!(
            "{} columns where the first shard returns {}",
            rd.fields.len(),
            first.fields.len()
        )
    } else {
        let (n, (a, b)) = first
            .fields
            .iter()
            .zip(&rd.fields)
            .enumerate()
            .find(|(_, (a, b))| (a.type_oid, a.format) != (b.type_oid, b.format))?;
        format!(
            "column {} ({}) of type oid {} where the first shard's is of type oid {}",
            n + 1,
            b.name,
            b.type_oid,
            a.type_oid
        )
    };
    Some(
        ErrorFields::new(
            "ERROR",
            sqlstate::DATATYPE_MISMATCH,
            format!("shardgate: this shard returns {problem}; results that differ in shape cannot be merged"),
        )
        .with(
            b'H',
            "Give the table the same columns, in the same order and of the same types, on every shard.",
        ),
    )
}

pub(super) fn data_row(body: &Bytes) -> Result<DataRow, Failure> {
    DataRow::decode(body).map_err(|e| own("08P01", format!("shardgate: {e}")))
}

pub(super) fn error_fields(body: &[u8]) -> ErrorFields {
    match BackendMessage::decode(b'E', body) {
        Ok(BackendMessage::ErrorResponse(f)) => f,
        _ => ErrorFields::new("ERROR", "XX000", "malformed error from a shard"),
    }
}

/// The next frame of a shard's reply to the scatter (the replies to what shardgate sent first
/// skipped, but not a BEGIN's error: a failed BEGIN leaves that shard outside the transaction,
/// so its error is returned like any other and fails the statement; a replayed state change
/// fails or not as it did where it first ran, and the transaction's state is then the same). Marks the leg done at its ReadyForQuery;
/// asking a done leg for more is a reply that ended early, not a wait for bytes that never come.
pub(super) async fn next_frame(leg: &mut Leg) -> Result<(u8, Bytes), Failure> {
    if leg.done {
        return Err(Failure::Lost(
            leg.co.shard,
            "its reply ended before the rows did".to_owned(),
        ));
    }
    loop {
        let frame = split_frame(&mut leg.co.conn.rbuf, SERVER_MAX_MESSAGE)
            .map_err(|e| own("08P01", format!("shardgate: {e}")))?;
        let Some(frame) = frame else {
            let shard = leg.co.shard;
            read_more(&mut leg.co.conn)
                .await
                .map_err(|e| Failure::Lost(shard, e.to_string()))?;
            continue;
        };
        if frame.tag == b'Z' {
            let status = frame.body.first().copied().unwrap_or(b'I');
            if leg.skip_replies > 0 {
                leg.skip_replies -= 1;
                leg.replay_begins = false;
                continue;
            }
            leg.last_status = status;
            leg.done = true;
            return Ok((frame.tag, frame.body));
        }
        if leg.skip_replies > 0 && (frame.tag != b'E' || !leg.replay_begins) {
            continue;
        }
        if frame.tag == b'S' {
            // A setting changed where no command showed it (a function's set_config): the
            // connection's settings are unknown. It stays with its request (or transaction),
            // and the next checkout after it is pooled applies settings from scratch.
            leg.co.conn.settings_unknown = true;
        }
        return Ok((frame.tag, frame.body));
    }
}
