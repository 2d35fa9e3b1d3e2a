//! Requests shardgate answers itself, without a server: its own settings
//! (`SET/RESET/SHOW shardgate.target`, which never reach PostgreSQL), and a lone
//! `BEGIN` whose routing waits for the transaction's first statement.

use bytes::BytesMut;
use shardgate_router::TargetSetting;
use shardgate_sql::ShardgateCommand;
use shardgate_wire::{backend, encode_data_row, ErrorFields};

use super::routing::SessionRouting;

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

/// Answers `SET/RESET/SHOW shardgate.<name>` into `out`, ending with ReadyForQuery(`tx_status`).
pub(crate) fn answer_shardgate(
    cmd: &ShardgateCommand,
    routing: &mut SessionRouting,
    tx_status: u8,
    out: &mut BytesMut,
) {
    let name = match cmd {
        ShardgateCommand::Set { name, .. }
        | ShardgateCommand::Reset { name }
        | ShardgateCommand::Show { name } => name.as_str(),
    };
    if name != "target" {
        let e = ErrorFields::new(
            "ERROR",
            UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"shardgate.{name}\""),
        )
        .with(
            b'H',
            "shardgate's session settings: shardgate.target (primary | replica | auto).",
        );
        backend::error_response(&e, out);
        backend::ready_for_query(tx_status, out);
        return;
    }
    match cmd {
        ShardgateCommand::Set { value, .. } => {
            let target = match value.to_ascii_lowercase().as_str() {
                "primary" => Some(TargetSetting::Primary),
                "replica" => Some(TargetSetting::Replica),
                "auto" | "default" => Some(TargetSetting::Auto),
                _ => None,
            };
            match target {
                Some(t) => {
                    routing.target = t;
                    backend::command_complete("SET", out);
                }
                None => {
                    let e = ErrorFields::new(
                        "ERROR",
                        INVALID_PARAMETER_VALUE,
                        format!("invalid value for parameter \"shardgate.target\": \"{value}\""),
                    )
                    .with(b'H', "Available values: primary, replica, auto.");
                    backend::error_response(&e, out);
                }
            }
        }
        ShardgateCommand::Reset { .. } => {
            routing.target = TargetSetting::Auto;
            backend::command_complete("RESET", out);
        }
        ShardgateCommand::Show { .. } => {
            backend::row_description_text(&["shardgate.target"], out);
            encode_data_row(&[Some(target_name(routing.target).as_bytes())], out);
            backend::command_complete("SHOW", out);
        }
    }
    backend::ready_for_query(tx_status, out);
}

/// The reply to a lone `BEGIN` that shardgate holds back until it knows whether the
/// transaction is read-only.
pub(crate) fn answer_deferred_begin(out: &mut BytesMut) {
    backend::command_complete("BEGIN", out);
    backend::ready_for_query(b'T', out);
}

/// The reply to COMMIT/ROLLBACK right after a held-back BEGIN: nothing ever ran.
pub(crate) fn answer_empty_transaction_end(commit: bool, out: &mut BytesMut) {
    backend::command_complete(if commit { "COMMIT" } else { "ROLLBACK" }, out);
    backend::ready_for_query(b'I', out);
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
