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
use shardgate_merge::{
    decode, decode_row, eval, order_sensitive, sort_rows, AggKind, AggSpec, Column, Distinct,
    GroupMerge, KWayMerge, MergeError, Operand, Output, Pred, Row, SortKey, Value,
};
use shardgate_sql::{AggFn, Count, HavingExpr, HavingOperand, OutputCol, ScatterSelect};
use shardgate_wire::{
    backend, frontend, peek_header, split_frame, BackendMessage, DataRow, ErrorFields,
    FieldDescription, FrontendRef, RowDescription,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::errors::ClientError;
use super::fanout::{read_more, request_len, Leg};
use super::flight::SERVER_MAX_MESSAGE;
use super::request::Scanned;
use super::session::Session;
use super::shard_plan::{Need, RequestPlan};
use super::sqlstate;
use super::topology::Snapshot;

const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_INT8: u32 = 20;
const OID_NUMERIC: u32 = 1700;
const OID_FLOAT8: u32 = 701;
const OID_BOOL: u32 = 16;
const OID_TIMESTAMPTZ: u32 = 1184;
/// Client output is flushed whenever this much is buffered.
/// Merged rows are held back until this much is buffered, so a result smaller than this never
/// reaches the client in part when a shard fails late; larger ones stream (memory stays
/// bounded) and a late failure ends them with the ErrorResponse.
const FLUSH_AT: usize = 4 << 20;

/// One message of the client's request, as far as the replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    Query,
}

/// What the client sent: its messages, and the Bind the shards re-run.
struct ClientRequest {
    msgs: Vec<Msg>,
    extended: bool,
    param_formats: Vec<i16>,
    params: Vec<Option<Bytes>>,
    result_formats: Vec<i16>,
}

/// Why the scatter stopped.
enum Failure {
    /// A shard's error (index of the shard's leg).
    Shard(usize, ErrorFields),
    /// shardgate's own (a merge it cannot do exactly, a malformed reply).
    Own(ErrorFields),
    /// The connection to a shard failed (index of the shard in the snapshot, the cause).
    Lost(usize, String),
}

fn own(code: &str, message: impl Into<String>) -> Failure {
    Failure::Own(ErrorFields::new("ERROR", code, message))
}

impl From<MergeError> for Failure {
    fn from(e: MergeError) -> Failure {
        own(e.sqlstate(), format!("shardgate: {e}"))
    }
}

fn read_request(request: &[u8], max_len: usize) -> Result<Option<ClientRequest>, ClientError> {
    let mut r = ClientRequest {
        msgs: Vec::new(),
        extended: false,
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    };
    let mut pos = 0;
    while let Some(h) = peek_header(&request[pos..], max_len)? {
        if request.len() - pos < h.len {
            break;
        }
        let msg = FrontendRef::decode(h.tag, &request[pos + 5..pos + h.len])?;
        pos += h.len;
        let m = match msg {
            FrontendRef::Query { .. } => Msg::Query,
            FrontendRef::Parse(_) => Msg::Parse,
            FrontendRef::Bind(b) => {
                r.param_formats = b.param_formats().collect();
                r.params = b.params().map(|p| p.map(Bytes::copy_from_slice)).collect();
                r.result_formats = b.result_formats().collect();
                Msg::Bind
            }
            FrontendRef::Describe { kind: b'S', .. } => Msg::DescribeStatement,
            FrontendRef::Describe { .. } => Msg::DescribePortal,
            FrontendRef::Execute { max_rows: 0, .. } => Msg::Execute,
            FrontendRef::Sync => Msg::Sync,
            // A portal fetched in parts, a Close, a Flush: not mirrored.
            _ => return Ok(None),
        };
        r.extended |= m != Msg::Query;
        r.msgs.push(m);
    }
    let binds = r.msgs.iter().filter(|m| **m == Msg::Bind).count();
    let executes = r.msgs.iter().filter(|m| **m == Msg::Execute).count();
    if r.extended && (binds != 1 || executes != 1) {
        return Ok(None);
    }
    Ok(Some(r))
}

/// The result format the shards should use for each shard column: the client's format of the
/// output that reads it (text for hidden columns).
fn shard_formats(select: &ScatterSelect, client: &[i16]) -> Vec<i16> {
    if client.len() <= 1 {
        return client.to_vec();
    }
    let mut f = vec![0i16; select.shard_columns];
    for (i, out) in select.outputs.iter().enumerate() {
        let code = client.get(i).copied().unwrap_or(0);
        let cols: &[usize] = match out {
            OutputCol::Column(c) => std::slice::from_ref(c),
            OutputCol::Agg { columns, .. } => columns,
        };
        for &c in cols {
            if let Some(slot) = f.get_mut(c) {
                *slot = code;
            }
        }
    }
    f
}

fn agg_kind(f: AggFn) -> AggKind {
    match f {
        AggFn::CountStar => AggKind::CountStar,
        AggFn::Count => AggKind::Count,
        AggFn::Sum => AggKind::Sum,
        AggFn::Min => AggKind::Min,
        AggFn::Max => AggKind::Max,
        AggFn::BoolAnd => AggKind::BoolAnd,
        AggFn::BoolOr => AggKind::BoolOr,
        AggFn::Avg => AggKind::Avg,
    }
}

/// The merge's argument type for an aggregate, from its first partial column's type: the
/// partial of sum(int2|int4) is int8, of sum(int8|numeric) numeric.
fn arg_type(kind: AggFn, partial: u32) -> u32 {
    match (kind, partial) {
        (AggFn::Sum | AggFn::Avg, OID_INT8) => OID_INT4,
        _ => partial,
    }
}

/// A LIMIT/OFFSET value: None for no limit (`ALL`, `NULL`). Err when a parameter cannot be
/// read: guessing would return the wrong number of rows.
fn count_value(
    c: Option<Count>,
    params: &[Option<Bytes>],
    formats: &[i16],
) -> Result<Option<u64>, Failure> {
    let unreadable = || {
        own(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: cannot read the LIMIT/OFFSET parameter of a query across shards",
        )
    };
    let n = match c {
        None | Some(Count::All) => return Ok(None),
        Some(Count::Literal(n)) => return Ok(Some(n)),
        Some(Count::Param(n)) => n,
    };
    let i = usize::from(n).checked_sub(1).ok_or_else(unreadable)?;
    let Some(raw) = params.get(i).ok_or_else(unreadable)? else {
        return Ok(None);
    };
    let format = match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => formats.get(i).copied().unwrap_or(0),
    };
    let value: i64 = if format == 1 {
        match raw.len() {
            8 => <[u8; 8]>::try_from(&raw[..]).map(i64::from_be_bytes).ok(),
            4 => <[u8; 4]>::try_from(&raw[..])
                .map(|b| i32::from_be_bytes(b).into())
                .ok(),
            2 => <[u8; 2]>::try_from(&raw[..])
                .map(|b| i16::from_be_bytes(b).into())
                .ok(),
            _ => None,
        }
    } else {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
    .ok_or_else(unreadable)?;
    // PostgreSQL refuses a negative LIMIT/OFFSET; the shards already did, with the same value.
    Ok(Some(value.max(0) as u64))
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
                "shardgate: a query across all shards must be one Bind and one Execute (without a row limit) in its request",
            );
            return self.reject_request(fields).await;
        };
        let in_txn = self.server.is_some() || self.deferred_begin.is_some();
        let targets = (0..snapshot.shards.len()).map(|s| (s, None)).collect();
        let Some(mut legs) = self
            .take_legs(&snapshot, targets, false, false, &scanned)
            .await?
        else {
            return Ok(());
        };
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
            if client.msgs.contains(&Msg::DescribeStatement) {
                frontend::describe(b'S', b"", &mut shard_req);
            }
            frontend::describe(b'P', b"", &mut shard_req);
            frontend::execute(b"", 0, &mut shard_req);
            frontend::sync(&mut shard_req);
        } else {
            frontend::query(&select.shard_sql, &mut shard_req);
        }
        let mut sent = Ok(());
        for leg in &mut legs {
            let mut bytes = BytesMut::new();
            if let Some(b) = leg.begin.take() {
                frontend::query(&b, &mut bytes);
                leg.skip_replies = true;
            }
            bytes.extend_from_slice(&shard_req);
            if let Err(e) = leg.co.conn.stream.write_all(&bytes).await {
                sent = Err(e);
                break;
            }
        }
        // Where this statement's reply starts in the output buffer, and whether any of it was
        // flushed: a failure before the first flush sends the error alone, no partial rows.
        let mark = self.out.len();
        let mut flushed = false;
        let outcome = match sent {
            Ok(()) => {
                self.run_scatter(&mut legs, &select, &client, &mut flushed, text_order)
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
            }
            Err(failure) => {
                let fields = match failure {
                    Failure::Shard(i, mut fields) => {
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
        text_order: bool,
    ) -> Result<(), Failure> {
        // Each shard's RowDescription (and ParameterDescription) first.
        let mut described: Option<(RowDescription, Option<Bytes>)> = None;
        for (i, leg) in legs.iter_mut().enumerate() {
            let mut params_desc = None;
            let rd = loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
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
            if described.is_none() {
                described = Some((rd, params_desc));
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
        if !text_order {
            check_text_order(select, &order_by, &columns)?;
        }
        let limit = count_value(select.limit, &client.params, &client.param_formats)?;
        let offset =
            count_value(select.offset, &client.params, &client.param_formats)?.unwrap_or(0);
        let mut sink = Sink {
            limit,
            offset,
            sent: 0,
            distinct: None,
            width,
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
            // Every shard ends its reply with ReadyForQuery.
            for leg in legs.iter_mut() {
                while !leg.done {
                    next_frame(leg).await?;
                }
            }
            Ok(())
        }
        .await;
        *flushed = sink.flushed;
        merged?;
        self.shared.metrics.merge_rows.inc_by(sink.sent);
        if client.msgs.contains(&Msg::Execute) || !client.extended {
            backend::command_complete(&format!("SELECT {}", sink.sent), &mut self.out);
        }
        Ok(())
    }

    /// The replies before the rows: ParseComplete, BindComplete, the descriptions asked for.
    fn write_head(&mut self, client: &ClientRequest, rd: &RowDescription, params: Option<&Bytes>) {
        for m in &client.msgs {
            match m {
                Msg::Parse => backend::parse_complete(&mut self.out),
                Msg::Bind => backend::bind_complete(&mut self.out),
                Msg::DescribeStatement => {
                    if let Some(p) = params {
                        write_frame(b't', p, &mut self.out);
                    }
                    rd.encode(&mut self.out);
                }
                Msg::DescribePortal | Msg::Query => rd.encode(&mut self.out),
                Msg::Execute | Msg::Sync => {}
            }
        }
    }

    /// Sends one merged row (with OFFSET, LIMIT and DISTINCT applied). False once the limit
    /// is reached.
    async fn emit(&mut self, sink: &mut Sink, mut row: Row) -> Result<bool, Failure> {
        if sink.limit.is_some_and(|l| sink.sent >= l) {
            return Ok(false);
        }
        row.truncate(sink.width);
        if let Some(d) = &mut sink.distinct {
            if !d.insert(&row)? {
                return Ok(true);
            }
        }
        if sink.offset > 0 {
            sink.offset -= 1;
            return Ok(true);
        }
        let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        shardgate_wire::encode_data_row(&values, &mut self.out);
        sink.sent += 1;
        if self.out.len() >= FLUSH_AT {
            sink.flushed = true;
            self.flush_out()
                .await
                .map_err(|e| own(sqlstate::CONNECTION_FAILURE, e.to_string()))?;
        }
        Ok(sink.limit.is_none_or(|l| sink.sent < l))
    }

    /// No ORDER BY: each shard's rows in turn.
    async fn concat(&mut self, legs: &mut [Leg], sink: &mut Sink) -> Result<(), Failure> {
        let mut open = true;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
                    b'D' if open => {
                        let row = data_row(&body)?;
                        open = self.emit(sink, row.values).await?;
                    }
                    b'D' => {}
                    b'C' => break,
                    b'E' => return Err(Failure::Shard(i, error_fields(&body))),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// ORDER BY: a streaming k-way merge of the shards' sorted streams.
    async fn ordered(
        &mut self,
        legs: &mut [Leg],
        order_by: &[shardgate_sql::SortCol],
        columns: &[Column],
        sink: &mut Sink,
    ) -> Result<(), Failure> {
        let keys: Vec<SortKey> = order_by
            .iter()
            .map(|k| SortKey {
                column: k.column,
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
            .collect();
        for k in &keys {
            let ok = columns
                .get(k.column)
                .is_some_and(|c| shardgate_merge::sortable(c.type_oid));
            if !ok {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: cannot merge ORDER BY on a column of this type exactly",
                ));
            }
        }
        let mut merge = KWayMerge::new(columns.to_vec(), keys, legs.len());
        let mut open = true;
        loop {
            while let Some(s) = merge.needs() {
                let leg = &mut legs[s];
                loop {
                    let (tag, body) = next_frame(leg).await?;
                    match tag {
                        b'D' => {
                            let row = data_row(&body)?;
                            merge.push(s, row.values)?;
                            break;
                        }
                        b'C' => {
                            merge.finish(s);
                            break;
                        }
                        b'E' => return Err(Failure::Shard(s, error_fields(&body))),
                        _ => {}
                    }
                }
            }
            match merge.pop() {
                Some(row) if open => open = self.emit(sink, row).await?,
                Some(_) => {}
                None => break,
            }
            if !open {
                // The limit is reached: the rest only needs reading to the end.
                for (s, leg) in legs.iter_mut().enumerate() {
                    loop {
                        let (tag, body) = next_frame(leg).await?;
                        match tag {
                            b'C' => break,
                            b'E' => return Err(Failure::Shard(s, error_fields(&body))),
                            _ => {}
                        }
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// Aggregates: every shard's partial rows folded per group, then HAVING, ORDER BY.
    async fn group(
        &mut self,
        legs: &mut [Leg],
        select: &ScatterSelect,
        rd: &RowDescription,
        columns: &[Column],
    ) -> Result<(RowDescription, Vec<Row>), Failure> {
        let agg_spec = |kind: AggFn, cols: &[usize]| -> Result<AggSpec, Failure> {
            let partial = cols
                .first()
                .and_then(|c| columns.get(*c))
                .map_or(0, |c| c.type_oid);
            let arg = arg_type(kind, partial);
            let k = agg_kind(kind);
            if order_sensitive(&k, arg) {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: cannot merge sum/avg of floating-point values exactly (the result depends on summation order)",
                ));
            }
            Ok(AggSpec {
                kind: k,
                shard_columns: cols.to_vec(),
                arg_type: arg,
            })
        };
        // Merged columns: the client's outputs, then HAVING's aggregates and group keys that
        // are not among them.
        let mut outputs: Vec<Output> = Vec::new();
        for o in &select.outputs {
            outputs.push(match o {
                OutputCol::Column(c) => Output::Group(*c),
                OutputCol::Agg { kind, columns } => Output::Agg(agg_spec(*kind, columns)?),
            });
        }
        let visible = outputs.len();
        let mut extra = |outputs: &mut Vec<Output>, o: Output| -> usize {
            match outputs.iter().position(|x| *x == o) {
                Some(i) => i,
                None => {
                    outputs.push(o);
                    outputs.len() - 1
                }
            }
        };
        let pred = match &select.having {
            Some(h) => Some(having(h, columns, &mut outputs, &mut extra, &agg_spec)?),
            None => None,
        };
        let mut keys = Vec::new();
        for k in &select.order_by {
            // A key naming an aggregate's first column sorts by its final value.
            let agg = select.outputs.iter().position(
                |o| matches!(o, OutputCol::Agg { columns, .. } if columns.first() == Some(&k.column)),
            );
            let column = match agg {
                Some(i) => i,
                None => extra(&mut outputs, Output::Group(k.column)),
            };
            keys.push(SortKey {
                column,
                descending: k.descending,
                nulls_first: k.nulls_first,
            });
        }
        let mut merge =
            GroupMerge::new(columns.to_vec(), select.group_by.clone(), outputs.clone())?;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (tag, body) = next_frame(leg).await?;
                match tag {
                    b'D' => {
                        let row = data_row(&body)?;
                        merge.push(row.values)?;
                    }
                    b'C' => break,
                    b'E' => return Err(Failure::Shard(i, error_fields(&body))),
                    _ => {}
                }
            }
        }
        let (merged_cols, mut rows) = merge.finish()?;
        if let Some(p) = &pred {
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let values = decode_row(&merged_cols, &row)?;
                if eval(p, &values)? == Some(true) {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        if !keys.is_empty() {
            sort_rows(&merged_cols, &mut rows, &keys)?;
        }
        if select.distinct {
            let mut d = Distinct::new(merged_cols[..visible].to_vec());
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                let mut visible_row = row.clone();
                visible_row.truncate(visible);
                if d.insert(&visible_row)? {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        // The client's RowDescription: each output's field, with an avg's type and name.
        let mut fields: Vec<FieldDescription> = Vec::with_capacity(visible);
        for (i, o) in select.outputs.iter().enumerate() {
            let first = match o {
                OutputCol::Column(c) => *c,
                OutputCol::Agg { columns, .. } => columns.first().copied().unwrap_or(0),
            };
            let mut f = rd
                .fields
                .get(first)
                .cloned()
                .ok_or_else(|| own("XX000", "shardgate: a shard returned too few columns"))?;
            if let OutputCol::Agg {
                kind: AggFn::Avg, ..
            } = o
            {
                let col = merged_cols
                    .get(i)
                    .copied()
                    .unwrap_or(Column::new(OID_NUMERIC, 0));
                f.type_oid = col.type_oid;
                f.type_len = if col.type_oid == OID_FLOAT8 { 8 } else { -1 };
                f.type_modifier = -1;
                f.table_oid = 0;
                f.column_attr = 0;
                if f.name == "sum" {
                    f.name = "avg".to_owned();
                }
            }
            fields.push(f);
        }
        Ok((RowDescription { fields }, rows))
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

/// With a database collation other than C, text does not sort byte by byte: an ORDER BY or a
/// min/max over text cannot be merged exactly.
fn check_text_order(
    select: &ScatterSelect,
    order_by: &[shardgate_sql::SortCol],
    columns: &[Column],
) -> Result<(), Failure> {
    const TEXTS: &[u32] = &[25, 1043, 1042, 19];
    let is_text = |c: usize| columns.get(c).is_some_and(|c| TEXTS.contains(&c.type_oid));
    let sorts_text = order_by.iter().any(|k| is_text(k.column));
    let min_max_text = select.outputs.iter().any(|o| {
        matches!(o, OutputCol::Agg { kind: AggFn::Min | AggFn::Max, columns } if columns.first().is_some_and(|c| is_text(*c)))
    });
    let having_text = select.having.is_some() && select.group_by.iter().any(|c| is_text(*c));
    if sorts_text || min_max_text || having_text {
        return Err(own(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: cannot merge ORDER BY, min or max over text across shards: the database's collation is not C",
        ));
    }
    Ok(())
}

/// Where merged rows go: LIMIT/OFFSET/DISTINCT state and the count sent.
struct Sink {
    limit: Option<u64>,
    offset: u64,
    sent: u64,
    distinct: Option<Distinct>,
    /// Client-visible columns (hidden sort columns are cut off).
    width: usize,
    /// Part of the reply has been flushed to the client (a later error cannot take it back).
    flushed: bool,
}

/// HAVING over merged columns: aggregates and group keys become merged columns (added to
/// `outputs` when not already there), literals take the type of what they are compared with.
fn having(
    h: &HavingExpr,
    columns: &[Column],
    outputs: &mut Vec<Output>,
    extra: &mut impl FnMut(&mut Vec<Output>, Output) -> usize,
    agg_spec: &impl Fn(AggFn, &[usize]) -> Result<AggSpec, Failure>,
) -> Result<Pred, Failure> {
    Ok(match h {
        HavingExpr::And(a, b) => Pred::And(
            Box::new(having(a, columns, outputs, extra, agg_spec)?),
            Box::new(having(b, columns, outputs, extra, agg_spec)?),
        ),
        HavingExpr::Or(a, b) => Pred::Or(
            Box::new(having(a, columns, outputs, extra, agg_spec)?),
            Box::new(having(b, columns, outputs, extra, agg_spec)?),
        ),
        HavingExpr::Not(a) => Pred::Not(Box::new(having(a, columns, outputs, extra, agg_spec)?)),
        HavingExpr::IsNull(o, is_null) => match operand(o, outputs, extra, agg_spec)? {
            Ok(i) => Pred::IsNull(Operand::Column(i), *is_null),
            Err(_) => {
                return Err(own(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "shardgate: HAVING <constant> IS NULL",
                ))
            }
        },
        HavingExpr::Cmp(l, op, r) => {
            let l = operand(l, outputs, extra, agg_spec)?;
            let r = operand(r, outputs, extra, agg_spec)?;
            let op = match op {
                shardgate_sql::CmpOp::Eq => shardgate_merge::CmpOp::Eq,
                shardgate_sql::CmpOp::NotEq => shardgate_merge::CmpOp::Ne,
                shardgate_sql::CmpOp::Lt => shardgate_merge::CmpOp::Lt,
                shardgate_sql::CmpOp::LtEq => shardgate_merge::CmpOp::Le,
                shardgate_sql::CmpOp::Gt => shardgate_merge::CmpOp::Gt,
                shardgate_sql::CmpOp::GtEq => shardgate_merge::CmpOp::Ge,
            };
            match (l, r) {
                (Ok(a), Ok(b)) => Pred::Cmp(Operand::Column(a), op, Operand::Column(b)),
                (Ok(a), Err(t)) => Pred::Cmp(
                    Operand::Column(a),
                    op,
                    literal_for(columns, outputs, a, &t)?,
                ),
                (Err(t), Ok(b)) => Pred::Cmp(
                    literal_for(columns, outputs, b, &t)?,
                    op,
                    Operand::Column(b),
                ),
                (Err(_), Err(_)) => {
                    return Err(own(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "shardgate: HAVING comparing two constants",
                    ))
                }
            }
        }
    })
}

/// A HAVING operand: the merged column it reads (Ok), or a literal's text (Err).
fn operand(
    o: &HavingOperand,
    outputs: &mut Vec<Output>,
    extra: &mut impl FnMut(&mut Vec<Output>, Output) -> usize,
    agg_spec: &impl Fn(AggFn, &[usize]) -> Result<AggSpec, Failure>,
) -> Result<Result<usize, String>, Failure> {
    Ok(match o {
        HavingOperand::Column(c) => Ok(extra(outputs, Output::Group(*c))),
        HavingOperand::Agg { kind, columns } => {
            Ok(extra(outputs, Output::Agg(agg_spec(*kind, columns)?)))
        }
        HavingOperand::Literal(t) => Err(t.clone()),
        HavingOperand::Param(_) => {
            return Err(own(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardgate: HAVING with a parameter across shards",
            ))
        }
    })
}

/// A HAVING literal read as the type of the merged column it is compared with: an aggregate's
/// result type, or a group key's type as the shards described it (`columns`, by shard column).
/// A literal that type's output syntax cannot read, or a timestamptz literal (which the server
/// would read in the session's TimeZone), is refused rather than guessed.
fn literal_for(
    columns: &[Column],
    outputs: &[Output],
    column: usize,
    text: &str,
) -> Result<Operand, Failure> {
    let ty = match outputs.get(column) {
        Some(Output::Agg(spec)) => match spec.kind {
            AggKind::Count | AggKind::CountStar => OID_INT8,
            _ => shardgate_merge::result_type(&spec.kind, spec.arg_type).unwrap_or(OID_NUMERIC),
        },
        Some(Output::Group(c)) => columns.get(*c).map_or(OID_NUMERIC, |c| c.type_oid),
        _ => OID_NUMERIC,
    };
    let ty = if matches!(ty, OID_INT2 | OID_INT4 | OID_INT8) && text.contains(['.', 'e', 'E']) {
        OID_NUMERIC
    } else {
        ty
    };
    let refuse = || {
        own(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("shardgate: HAVING compares with the constant '{text}', which shardgate cannot read exactly as its type across shards"),
        )
    };
    if ty == OID_TIMESTAMPTZ {
        return Err(refuse());
    }
    let text = match (ty, text.to_ascii_lowercase().as_str()) {
        (OID_BOOL, "true") => "t",
        (OID_BOOL, "false") => "f",
        _ => text,
    };
    let v: Value = decode(&Column::new(ty, 0), Some(text.as_bytes())).map_err(|_| refuse())?;
    Ok(Operand::Const(v))
}

fn data_row(body: &Bytes) -> Result<DataRow, Failure> {
    DataRow::decode(body).map_err(|e| own("08P01", format!("shardgate: {e}")))
}

fn write_frame(tag: u8, body: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn error_fields(body: &[u8]) -> ErrorFields {
    match BackendMessage::decode(b'E', body) {
        Ok(BackendMessage::ErrorResponse(f)) => f,
        _ => ErrorFields::new("ERROR", "XX000", "malformed error from a shard"),
    }
}

/// The next frame of a shard's reply to the scatter (shardgate's BEGIN's replies skipped).
/// Marks the leg done at its ReadyForQuery.
async fn next_frame(leg: &mut Leg) -> Result<(u8, Bytes), Failure> {
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
            if leg.skip_replies {
                leg.skip_replies = false;
                continue;
            }
            leg.last_status = status;
            leg.done = true;
            return Ok((frame.tag, frame.body));
        }
        if leg.skip_replies {
            continue;
        }
        return Ok((frame.tag, frame.body));
    }
}
