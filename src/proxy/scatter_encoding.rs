//! Text compared across shards in the client's encoding: the shards sort text byte by byte in
//! the server's encoding (collation C), and the merge compares the bytes the client gets. The
//! two orders agree only when the client's encoding orders bytes as the server's does; for
//! the others (WIN1252 puts '€' at 0x80, before 'é' at 0xE9, where UTF-8 puts it after) an
//! ORDER BY, min or max over text is refused rather than merged in another order.

use bytes::Bytes;
use shardgate_sql::{AggFn, OutputCol, ScatterSelect};

use super::scatter::{data_row, error_fields, next_frame, own_with_hint, Failure};
use super::shard_legs::Leg;
use super::sqlstate;

/// Asks the first shard, before the statement and in the same write, for the encodings the
/// statement runs under (a session may change `client_encoding` in ways shardgate does not
/// track: `set_config`, a function's SET clause).
pub(super) const PROBE: &[u8] =
    b"SELECT pg_catalog.current_setting('client_encoding'), pg_catalog.current_setting('server_encoding')";

/// The session's client and server encodings, as the shard reported them.
pub(super) struct Encodings {
    client: String,
    server: String,
}

impl Encodings {
    /// Text bytes the client gets sort as the server sorts them: no conversion, or a
    /// conversion from UTF-8 that keeps code-point order (ASCII, LATIN1's U+0000-U+00FF).
    pub(super) fn keep_byte_order(&self) -> bool {
        self.client == self.server
            || self.server == "SQL_ASCII"
            || (self.server == "UTF8" && matches!(self.client.as_str(), "SQL_ASCII" | "LATIN1"))
    }

    pub(super) fn unknown() -> Failure {
        own_with_hint(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "shardgate: cannot read the session's client_encoding from the first shard",
            "Add a shard-key filter to run the query on one shard.",
        )
    }

    pub(super) fn refusal(&self) -> Failure {
        own_with_hint(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "shardgate: cannot merge ORDER BY, min or max over text across shards: client_encoding {} does not order text as the server's encoding {} does",
                self.client, self.server
            ),
            "Set client_encoding to UTF8 (or the server's encoding) for queries that sort text across shards, sort by <column> COLLATE \"C\" on one shard, or add a shard-key filter.",
        )
    }
}

/// Whether the statement may compare text in the merge (ORDER BY, min/max, HAVING): only then
/// is the probe worth sending.
pub(super) fn may_compare_text(select: &ScatterSelect) -> bool {
    !select.order_by.is_empty()
        || select.having.is_some()
        || select.outputs.iter().any(|o| {
            matches!(
                o,
                OutputCol::Agg {
                    kind: AggFn::Min | AggFn::Max,
                    ..
                }
            )
        })
}

/// Reads the probe's reply on `leg` (after what shardgate replayed there), leaving the leg
/// ready for the statement's own reply.
pub(super) async fn read_probe(leg: &mut Leg) -> Result<Encodings, Failure> {
    let mut row: Option<Bytes> = None;
    loop {
        let (tag, body) = next_frame(leg).await?;
        match tag {
            b'D' => row = Some(body),
            b'E' => return Err(Failure::Shard(0, error_fields(&body))),
            b'Z' => break,
            _ => {}
        }
    }
    // next_frame took the probe's ReadyForQuery for the end of the reply.
    leg.done = false;
    let unreadable = Encodings::unknown;
    let row = data_row(&row.ok_or_else(unreadable)?)?;
    let field = |i: usize| {
        row.values
            .get(i)
            .cloned()
            .flatten()
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    match (field(0), field(1)) {
        (Some(client), Some(server)) => Ok(Encodings { client, server }),
        _ => Err(unreadable()),
    }
}
