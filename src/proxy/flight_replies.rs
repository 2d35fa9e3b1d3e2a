//! The server side of the flight: each reply frame is matched against what the client
//! message it answers expects, so that shardgate's own replies are dropped, synthetic
//! ones are inserted in order, probes are read, and ReadyForQuery ends a cycle.

use std::collections::HashMap;

use bytes::BytesMut;
use shardgate_wire::peek_header;

use super::{Expect, Flight, Relayed, ServerSide, SERVER_MAX_MESSAGE};
use crate::proxy::errors::ClientError;
use crate::proxy::params::SessionParams;
use crate::proxy::statements::ClientStatements;

impl Flight {
    /// Handles whole server frames at the start of `input`. Frames for the client are
    /// forwarded from `input` (`direct`) or copied into `to_client` when a frame is
    /// dropped or a synthetic reply must be inserted.
    pub(crate) fn relay(
        &mut self,
        input: &[u8],
        params: &mut SessionParams,
        statements: &mut ClientStatements,
        server: ServerSide<'_>,
        to_client: &mut BytesMut,
    ) -> Result<Relayed, ClientError> {
        let copying_from_start = !to_client.is_empty();
        let (mut pos, mut run_start) = (0usize, 0usize);
        let mut result = Relayed::default();
        while let Some(h) = peek_header(&input[pos..], SERVER_MAX_MESSAGE)? {
            if input.len() - pos < h.len {
                break;
            }
            let body = &input[pos + 5..pos + h.len];
            let forward = self.on_server_message(
                h.tag,
                body,
                params,
                statements,
                server.prepared,
                &mut result,
            );
            let end = pos + h.len;
            if !forward {
                to_client.extend_from_slice(&input[run_start..pos]);
                to_client.extend_from_slice(&self.rewritten);
                self.rewritten.clear();
                run_start = end;
            }
            if matches!(self.expect.front(), Some(Expect::Synthetic(_))) {
                to_client.extend_from_slice(&input[run_start..end]);
                run_start = end;
                self.emit_ready_synthetics(to_client);
            }
            pos = end;
            if self.stop_at_idle && self.idle() {
                break;
            }
        }
        result.consumed = pos;
        result.direct = !copying_from_start && run_start == 0;
        if !result.direct {
            to_client.extend_from_slice(&input[run_start..pos]);
        }
        Ok(result)
    }

    /// Returns whether the frame goes to the client.
    fn on_server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        params: &mut SessionParams,
        statements: &mut ClientStatements,
        server_prepared: &mut HashMap<u128, u64>,
        result: &mut Relayed,
    ) -> bool {
        let Some(head) = self.expect.front().copied() else {
            // Notices, notifications, parameter changes: asynchronous, always forwarded.
            if tag == b'S' {
                params.observe_parameter_status(body);
            }
            return true;
        };
        let forward = self.expect_server_message(
            tag,
            head,
            body,
            params,
            statements,
            server_prepared,
            result,
        );
        while self.expect.front() == Some(&Expect::CopyEnd) {
            self.expect.pop_front();
        }
        forward
    }

    /// `on_server_message` for a frame that answers `head`.
    #[allow(clippy::too_many_arguments)]
    fn expect_server_message(
        &mut self,
        tag: u8,
        head: Expect,
        body: &[u8],
        params: &mut SessionParams,
        statements: &mut ClientStatements,
        server_prepared: &mut HashMap<u128, u64>,
        result: &mut Relayed,
    ) -> bool {
        if head == Expect::HiddenSync {
            if tag != b'Z' {
                // Nothing but ReadyForQuery answers a Sync after a complete run; pass
                // anything else (a notice, the run's parameter changes) on.
                if tag == b'S' {
                    params.observe_parameter_status(body);
                }
                return true;
            }
            self.pop_expect();
            // As at the client's own Sync: what the run's Parses held is settled.
            self.end_cycle(body, params, statements, server_prepared, result);
            return false;
        }
        if let Expect::Hidden { probe } = head {
            match tag {
                b'D' if probe => self.probe_lsn = first_column_lsn(body),
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    self.tx_status = status;
                    self.pop_expect();
                    if probe {
                        result.probe = Some((self.probe_lsn.take(), status));
                    }
                }
                _ => {}
            }
            return false;
        }
        if let Expect::RestoringQuery { hiding } = head {
            match tag {
                // A client statement: a RESET with shardgate's set_config behind it starts
                // hiding.
                b'C' if !hiding => {
                    if params.observe_command_tag(body) {
                        if let Some(front) = self.expect.front_mut() {
                            *front = Expect::RestoringQuery { hiding: true };
                        }
                    }
                    return true;
                }
                // The set_config is shardgate's: its row and CommandComplete are dropped. Its
                // ParameterStatus messages, an error and ReadyForQuery are the client's.
                b'T' | b'D' if hiding => return false,
                b'C' => {
                    if let Some(front) = self.expect.front_mut() {
                        *front = Expect::RestoringQuery { hiding: false };
                    }
                    return false;
                }
                _ => {}
            }
        }
        if let Expect::ShapeProbe(id) | Expect::ShapeCheck(id) = head {
            match tag {
                b't' => return false,
                b'T' | b'n' => {
                    self.pop_expect();
                    let shape = crate::proxy::statements::shape_of(tag, body);
                    if let Some(key) = server_prepared.get_mut(&id) {
                        *key = crate::proxy::statements::shape_key(&shape);
                    }
                    if head == Expect::ShapeProbe(id) {
                        statements.learn_shape(id, &shape);
                    } else if statements.check_shape(id, &shape) {
                        // As the server's own 0A000 does: whoever prepares the text from now on
                        // gets a statement of its own, analysed against the new columns.
                        result.stale_statement = true;
                    }
                    return false;
                }
                _ => {}
            }
        }
        if head == Expect::HiddenExecute {
            match tag {
                b'D' => return false,
                b'C' => {
                    self.pop_expect();
                    return false;
                }
                _ => {}
            }
        }
        match tag {
            b'G' => {
                let skipped = self.enter_copy_in(head);
                params.syncs_skipped(skipped);
                true
            }
            b'Z' => {
                // Everything up to and including the Sync/Query this answers is done.
                while let Some((e, _)) = self.pop_expect() {
                    if matches!(
                        e,
                        Expect::Sync
                            | Expect::Query
                            | Expect::RefusedQuery
                            | Expect::RestoringQuery { .. }
                    ) {
                        break;
                    }
                }
                self.end_cycle(body, params, statements, server_prepared, result);
                result.cycles_ended += 1;
                true
            }
            b'E' => {
                self.had_error = true;
                params.observe_error();
                result.stale_statement |= is_stale_statement_error(body);
                // An error ends copy-in mode; the client's next Sync is answered again.
                self.copy_in = false;
                let (mut forward, mut first) = (true, true);
                if matches!(head, Expect::RefusedQuery | Expect::RefusedExecute)
                    && error_code(body) == Some(&b"26000"[..])
                {
                    super::deallocate_refusal(&mut self.rewritten);
                    forward = false;
                }
                if head == Expect::StaleStatement && error_code(body) == Some(&b"26000"[..]) {
                    result_type_changed(&mut self.rewritten);
                    forward = false;
                }
                if !matches!(
                    head,
                    Expect::Query | Expect::RefusedQuery | Expect::RestoringQuery { .. }
                ) {
                    // Copies whose Close was skipped: they stay, whatever their Parse did.
                    let mut kept = Vec::new();
                    // The server skips to the next Sync: so do the expectations.
                    while let Some(e) = self.expect.front().copied() {
                        if e == Expect::Sync {
                            break;
                        }
                        if let Expect::Parse(Some(id)) | Expect::HiddenParse(id) = e {
                            server_prepared.remove(&id);
                        }
                        if let Expect::ReplaceClose(id, key) = e {
                            kept.push((id, key));
                        }
                        let Some((_, named)) = self.pop_expect() else {
                            break;
                        };
                        let answered = std::mem::replace(&mut first, false);
                        match (e, named) {
                            // The refusal of a name the client has: the server named its own
                            // statement.
                            (Expect::DuplicateParse, Some(n)) if answered => {
                                rename_in_error(body, &n.internal, &n.client, &mut self.rewritten);
                                forward = false;
                            }
                            // The old statement stays.
                            (Expect::DuplicateParse, _) => {}
                            // A named Parse that failed or was skipped never happened.
                            (_, Some(n)) => statements.remove(&n.client),
                            _ => {}
                        }
                    }
                    server_prepared.extend(kept);
                }
                let severity = error_field(body, b'V').or_else(|| error_field(body, b'S'));
                if forward && matches!(severity, Some(b"FATAL" | b"PANIC")) {
                    self.server_fatal = true;
                }
                forward
            }
            b'S' => {
                params.observe_parameter_status(body);
                true
            }
            b'C' => {
                params.observe_command_tag(body);
                if matches!(head, Expect::Execute | Expect::RefusedExecute) {
                    self.pop_expect();
                }
                true
            }
            b'1' => match head {
                Expect::HiddenParse(_) => {
                    self.pop_expect();
                    false
                }
                // A DuplicateParse cannot succeed: the server holds its name.
                Expect::Parse(_) | Expect::DuplicateParse => {
                    self.pop_expect();
                    true
                }
                _ => true,
            },
            b'3' if matches!(head, Expect::HiddenClose | Expect::ReplaceClose(..)) => {
                self.pop_expect();
                false
            }
            b'2' if head == Expect::HiddenBind => {
                self.pop_expect();
                false
            }
            b'2' | b'3' | b'T' | b'n' | b'I' | b's' => {
                let done = matches!(
                    (tag, head),
                    (b'2', Expect::Bind)
                        | (b'3', Expect::Close)
                        | (b'T' | b'n', Expect::Describe)
                        | (b'I' | b's', Expect::Execute | Expect::RefusedExecute)
                );
                if done {
                    self.pop_expect();
                }
                true
            }
            _ => true,
        }
    }
}

impl Flight {
    /// A ReadyForQuery (`body`) ended a cycle: its transaction status, and what the session
    /// commands seen in it did to the client's settings and statements.
    fn end_cycle(
        &mut self,
        body: &[u8],
        params: &mut SessionParams,
        statements: &mut ClientStatements,
        server_prepared: &mut HashMap<u128, u64>,
        result: &mut Relayed,
    ) {
        let status = body.first().copied().unwrap_or(b'I');
        self.tx_status = status;
        self.had_error = false;
        let effects = params.end_cycle(status);
        if effects.statements_dropped {
            statements.clear();
            server_prepared.clear();
        }
        result.effects.statements_dropped |= effects.statements_dropped;
        result.effects.server_reset |= effects.server_reset;
    }

    /// The server answered `head` with CopyInResponse. Syncs the client sent after it
    /// but before ending the COPY are ignored by the server (libpq and tokio-postgres
    /// send one right after Execute), so they expect nothing.
    fn enter_copy_in(&mut self, head: Expect) -> u64 {
        self.copy_in = true;
        let mut end = 1;
        while end < self.expect.len() && self.expect[end] != Expect::CopyEnd {
            end += 1;
        }
        if end < self.expect.len() {
            // The client already ended the COPY: from here its Syncs count again.
            self.copy_in = false;
        }
        let (mut i, mut skipped) = (1, 0);
        while i < end {
            if self.expect[i] == Expect::Sync {
                self.expect.remove(i);
                end -= 1;
                skipped += 1;
            } else {
                i += 1;
            }
        }
        if head == Expect::Execute && !self.expect.contains(&Expect::Sync) {
            // The extended-protocol COPY still needs a Sync from the client.
            self.unsynced = true;
        }
        skipped
    }
}

/// Whether an ErrorResponse is PostgreSQL's "cached plan must not change result type": a
/// prepared statement whose tables changed under it, which that server connection fails
/// until the statement is prepared again. Told by its SQLSTATE and the routine that raised
/// it, which do not depend on `lc_messages`.
fn is_stale_statement_error(body: &[u8]) -> bool {
    let (mut code, mut routine) = (false, false);
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = memchr::memchr(0, tail) else {
            break;
        };
        match field {
            b'C' => code = &tail[..end] == b"0A000",
            b'R' => routine = &tail[..end] == b"RevalidateCachedQuery",
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    code && routine
}

/// PostgreSQL's error for a prepared statement whose result type changed, with the routine
/// drivers tell it by (pgjdbc and asyncpg then prepare the statement again).
fn result_type_changed(out: &mut BytesMut) {
    let fields = shardgate_wire::ErrorFields::new(
        "ERROR",
        crate::proxy::sqlstate::FEATURE_NOT_SUPPORTED,
        "cached plan must not change result type",
    )
    .with(b'F', "plancache.c")
    .with(b'R', "RevalidateCachedQuery");
    shardgate_wire::backend::error_response(&fields, out);
}

/// The SQLSTATE of an ErrorResponse `body`.
fn error_code(body: &[u8]) -> Option<&[u8]> {
    error_field(body, b'C')
}

/// The field `code` of an ErrorResponse `body`.
fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = memchr::memchr(0, tail)?;
        if field == code {
            return tail.get(..end);
        }
        rest = tail.get(end + 1..)?;
    }
    None
}

/// The ErrorResponse `body` with `internal` replaced by `client` wherever a field holds it
/// (PostgreSQL's 42P05 quotes the statement name in its message), framed, into `out`.
pub(super) fn rename_in_error(body: &[u8], internal: &[u8], client: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(&[b'E', 0, 0, 0, 0]);
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = memchr::memchr(0, tail) else {
            break;
        };
        out.extend_from_slice(&[field]);
        let mut value = &tail[..end];
        while let Some(at) = memchr::memmem::find(value, internal) {
            out.extend_from_slice(&value[..at]);
            out.extend_from_slice(client);
            value = &value[at + internal.len()..];
        }
        out.extend_from_slice(value);
        out.extend_from_slice(&[0]);
        rest = &tail[end + 1..];
    }
    out.extend_from_slice(&[0]);
    let len = i32::try_from(out.len() - start - 1).unwrap_or(i32::MAX);
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The first column of a DataRow, read as a pg_lsn ("16/B374D848").
fn first_column_lsn(body: &[u8]) -> Option<u64> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if count < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let text = std::str::from_utf8(body.get(6..6 + usize::try_from(len).ok()?)?).ok()?;
    shardgate_pool::lag::parse_lsn(text)
}
