//! Requests shardgate answers itself, without a server: its own settings
//! (`SET/RESET/SHOW shardgate.target | shard | shard_key`, which never reach PostgreSQL), and a lone
//! `BEGIN` whose routing waits for the transaction's first statement.

use bytes::BytesMut;
use shardgate_router::TargetSetting;
use shardgate_sql::ShardgateCommand;
use shardgate_wire::{backend, encode_data_row, ErrorFields, FieldDescription, RowDescription};

use super::routing::SessionRouting;

/// The OID of type `text`, the type of every setting's value.
const TEXT_OID: u32 = 25;
/// SQLSTATE 42704: unknown setting.
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE 22023: bad value for a setting.
const INVALID_PARAMETER_VALUE: &str = "22023";

fn target_name(t: TargetSetting) -> &'static str {
    match t {
        TargetSetting::Auto => "auto",
        TargetSetting::Primary => "primary",
        TargetSetting::Replica => "replica",
    }
}

/// What one of shardgate's own commands did.
pub(crate) enum Answer {
    /// A command tag: `SET` or `RESET`.
    Done(&'static str),
    /// `SHOW`: the value.
    Show(String),
    Error(ErrorFields),
}

/// Whether a command returns a row (its RowDescription is part of the answer).
pub(crate) fn returns_row(cmd: &ShardgateCommand) -> bool {
    matches!(cmd, ShardgateCommand::Show { .. })
}

const SETTINGS_HINT: &str = "shardgate's session settings: shardgate.target (primary | replica | \
     auto), shardgate.shard (a shard name | auto), shardgate.shard_key (a key value | auto).";

/// The setting a command names, as shown in its RowDescription.
fn setting(name: &str) -> Option<&'static str> {
    match name {
        "target" => Some("shardgate.target"),
        "shard" => Some("shardgate.shard"),
        "shard_key" => Some("shardgate.shard_key"),
        _ => None,
    }
}

fn invalid(name: &str, value: &str, hint: &str) -> Answer {
    Answer::Error(
        ErrorFields::new(
            "ERROR",
            INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"shardgate.{name}\": \"{value}\""),
        )
        .with(b'H', hint),
    )
}

/// Applies `SET/RESET/SHOW shardgate.<name>` to the session. `shards` are the configured
/// shard names, which `shardgate.shard` must name.
pub(crate) fn apply_shardgate(
    cmd: &ShardgateCommand,
    routing: &mut SessionRouting,
    shards: &[std::sync::Arc<str>],
) -> Answer {
    let name = match cmd {
        ShardgateCommand::Set { name, .. }
        | ShardgateCommand::Reset { name }
        | ShardgateCommand::Show { name } => name.as_str(),
    };
    if setting(name).is_none() {
        return Answer::Error(
            ErrorFields::new(
                "ERROR",
                UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"shardgate.{name}\""),
            )
            .with(b'H', SETTINGS_HINT),
        );
    }
    match cmd {
        ShardgateCommand::Set { value, .. } => {
            let auto = matches!(value.to_ascii_lowercase().as_str(), "auto" | "default");
            match name {
                "target" => {
                    routing.target = match value.to_ascii_lowercase().as_str() {
                        "primary" => TargetSetting::Primary,
                        "replica" => TargetSetting::Replica,
                        "auto" | "default" => TargetSetting::Auto,
                        _ => {
                            return invalid(
                                name,
                                value,
                                "Available values: primary, replica, auto.",
                            )
                        }
                    }
                }
                "shard" if auto => routing.shard = None,
                "shard" => match shards.iter().find(|s| ***s == **value) {
                    Some(s) => routing.shard = Some(s.clone()),
                    None => {
                        let names: Vec<&str> = shards.iter().map(|s| &**s).collect();
                        return invalid(
                            name,
                            value,
                            &format!("Available values: {}, auto.", names.join(", ")),
                        );
                    }
                },
                _ if auto => routing.shard_key = None,
                _ => routing.shard_key = Some(std::sync::Arc::from(value.as_str())),
            }
            Answer::Done("SET")
        }
        ShardgateCommand::Reset { .. } => {
            match name {
                "target" => routing.target = TargetSetting::Auto,
                "shard" => routing.shard = None,
                _ => routing.shard_key = None,
            }
            Answer::Done("RESET")
        }
        ShardgateCommand::Show { .. } => {
            let value = match name {
                "target" => target_name(routing.target).to_owned(),
                "shard" => routing.shard.as_deref().unwrap_or("auto").to_owned(),
                _ => routing.shard_key.as_deref().unwrap_or("auto").to_owned(),
            };
            Answer::Show(value)
        }
    }
}

/// The RowDescription of `SHOW shardgate.<name>`: one column of type `text`.
pub(crate) fn show_description(cmd: &ShardgateCommand) -> RowDescription {
    let name = match cmd {
        ShardgateCommand::Show { name } => setting(name).unwrap_or("shardgate.target"),
        _ => "shardgate.target",
    };
    RowDescription {
        fields: vec![FieldDescription {
            name: name.to_owned(),
            table_oid: 0,
            column_attr: 0,
            type_oid: TEXT_OID,
            type_len: -1,
            type_modifier: -1,
            format: 0,
        }],
    }
}

/// The result of a command, as an Execute (or the tail of a simple Query) returns it.
pub(crate) fn write_result(answer: &Answer, out: &mut BytesMut) {
    match answer {
        Answer::Done(tag) => backend::command_complete(tag, out),
        Answer::Show(value) => {
            encode_data_row(&[Some(value.as_bytes())], out);
            backend::command_complete("SHOW", out);
        }
        Answer::Error(e) => backend::error_response(e, out),
    }
}

/// Answers a simple-protocol `SET/RESET/SHOW shardgate.<name>` into `out`, up to the
/// ReadyForQuery the caller adds. True if the answer is an error.
pub(crate) fn answer_shardgate(
    cmd: &ShardgateCommand,
    routing: &mut SessionRouting,
    shards: &[std::sync::Arc<str>],
    out: &mut BytesMut,
) -> bool {
    let answer = apply_shardgate(cmd, routing, shards);
    if matches!(answer, Answer::Show(..)) {
        show_description(cmd).encode(out);
    }
    write_result(&answer, out);
    matches!(answer, Answer::Error(_))
}

/// The reply to a lone `BEGIN` that shardgate holds back until it knows whether the
/// transaction is read-only. `start`: it was `START TRANSACTION`, which has its own tag.
pub(crate) fn answer_deferred_begin(start: bool, out: &mut BytesMut) {
    backend::command_complete(if start { "START TRANSACTION" } else { "BEGIN" }, out);
    backend::ready_for_query(b'T', out);
}

/// The reply to COMMIT/ROLLBACK right after a held-back BEGIN: nothing ever ran. `tx_status`
/// is `T` after `AND CHAIN`.
pub(crate) fn answer_empty_transaction_end(commit: bool, tx_status: u8, out: &mut BytesMut) {
    backend::command_complete(if commit { "COMMIT" } else { "ROLLBACK" }, out);
    backend::ready_for_query(tx_status, out);
}

/// The reply to anything but COMMIT/ROLLBACK in a held-back transaction that failed.
pub(crate) fn answer_aborted_transaction(out: &mut BytesMut) {
    let e = ErrorFields::new(
        "ERROR",
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    );
    backend::error_response(&e, out);
    backend::ready_for_query(b'E', out);
}
