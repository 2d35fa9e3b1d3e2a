//! Unit tests for the flight bookkeeping: what reaches the server, what reaches the
//! client, and in which order, without any IO.

use std::collections::HashMap;

use bytes::BytesMut;
use shardgate_config::PoolMode;
use shardgate_wire::{backend, frontend, scan_frames, DEFAULT_MAX_MESSAGE_LEN};

use super::*;

struct Harness {
    flight: Flight,
    statements: ClientStatements,
    params: SessionParams,
    prepared: HashMap<u128, u64>,
    unnamed_owner: u128,
    classifier: Classifier,
    plan_epoch: u64,
    check_shapes: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            flight: Flight::default(),
            statements: ClientStatements::default(),
            params: SessionParams::default(),
            prepared: HashMap::new(),
            unnamed_owner: 0,
            classifier: Classifier::new(64, &[]),
            plan_epoch: 0,
            check_shapes: false,
        }
    }

    /// Returns (bytes for the server, bytes for the client, translation result).
    fn client(&mut self, input: &[u8]) -> (Vec<u8>, Vec<u8>, Translated) {
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let t = self
            .flight
            .translate(
                input,
                DEFAULT_MAX_MESSAGE_LEN,
                PoolMode::Transaction,
                ClientSide {
                    statements: &mut self.statements,
                    params: &mut self.params,
                    classifier: &self.classifier,
                    plan_epoch: self.plan_epoch,
                    check_shapes: self.check_shapes,
                },
                ServerSide {
                    prepared: &mut self.prepared,
                    unnamed_owner: &mut self.unnamed_owner,
                },
                &mut to_server,
                &mut to_client,
            )
            .expect("translate");
        let sent = if t.direct {
            input[..t.consumed].to_vec()
        } else {
            to_server.to_vec()
        };
        (sent, to_client.to_vec(), t)
    }

    /// Returns the bytes the client receives.
    fn server(&mut self, input: &[u8]) -> Vec<u8> {
        let mut to_client = BytesMut::new();
        let r = self
            .flight
            .relay(
                input,
                &mut self.params,
                &mut self.statements,
                ServerSide {
                    prepared: &mut self.prepared,
                    unnamed_owner: &mut self.unnamed_owner,
                },
                &mut to_client,
            )
            .expect("relay");
        assert_eq!(r.consumed, input.len(), "all whole frames consumed");
        if r.direct {
            input[..r.consumed].to_vec()
        } else {
            to_client.to_vec()
        }
    }
}

/// The tags of the frames in a byte stream.
fn tags(bytes: &[u8]) -> String {
    let mut out = String::new();
    scan_frames(bytes, usize::MAX, |h, _| {
        out.push(h.tag as char);
        std::ops::ControlFlow::Continue(())
    })
    .expect("frames");
    out
}

/// Statement names mentioned in Parse/Bind frames sent to the server.
fn names_sent(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    scan_frames(bytes, usize::MAX, |h, body| {
        if h.tag == b'P' {
            names.push(cstr(body));
        } else if h.tag == b'B' {
            let portal_end = body.iter().position(|b| *b == 0).unwrap_or(0);
            names.push(cstr(&body[portal_end + 1..]));
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("frames");
    names
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn request(name: &[u8], with_parse: bool) -> BytesMut {
    let mut b = BytesMut::new();
    if with_parse {
        frontend::parse(name, b"SELECT $1::int", &[23], &mut b);
    }
    frontend::bind(b"", name, &[0], &[Some(b"7".as_slice())], &[0], &mut b);
    frontend::execute(b"", 0, &mut b);
    frontend::sync(&mut b);
    b
}

fn reply(tags: &str) -> BytesMut {
    let mut b = BytesMut::new();
    for t in tags.chars() {
        match t {
            '1' => backend::parse_complete(&mut b),
            '2' => backend::bind_complete(&mut b),
            '3' => backend::close_complete(&mut b),
            'C' => backend::command_complete("SELECT 1", &mut b),
            'Z' => backend::ready_for_query(b'I', &mut b),
            'E' => backend::error_response(
                &shardgate_wire::ErrorFields::new("ERROR", "42601", "syntax error"),
                &mut b,
            ),
            other => panic!("no canned reply for {other}"),
        }
    }
    b
}

#[test]
fn simple_query_is_forwarded_untouched() {
    let mut h = Harness::new();
    let mut q = BytesMut::new();
    frontend::query(b"SELECT 1", &mut q);
    let (sent, to_client, t) = h.client(&q);
    assert!(t.direct);
    assert_eq!(sent, q.to_vec());
    assert!(to_client.is_empty());
    assert!(!h.flight.idle());
    let r = reply("CZ");
    assert_eq!(h.server(&r), r.to_vec());
    assert!(h.flight.idle());
}

#[test]
fn named_parse_is_renamed_and_replies_pass_through() {
    let mut h = Harness::new();
    let (sent, to_client, t) = h.client(&request(b"s1", true));
    assert!(!t.direct);
    assert!(to_client.is_empty());
    let names = names_sent(&sent);
    assert_eq!(names.len(), 2);
    assert!(
        names[0].starts_with("sg_") && names[0] == names[1],
        "{names:?}"
    );
    assert_eq!(tags(&h.server(&reply("12CZ"))), "12CZ");
    assert!(h.flight.idle());
}

#[test]
fn parse_already_on_server_is_answered_locally_in_order() {
    let mut h = Harness::new();
    h.client(&request(b"s1", true));
    h.server(&reply("12CZ"));
    // Another client name, same SQL: the server already has it.
    let (sent, to_client, _) = h.client(&request(b"other", true));
    assert_eq!(tags(&sent), "BES");
    assert_eq!(tags(&to_client), "1");
    assert_eq!(tags(&h.server(&reply("2CZ"))), "2CZ");
    assert!(h.flight.idle());
}

#[test]
fn statement_missing_on_server_is_prepared_and_its_reply_hidden() {
    let mut h = Harness::new();
    h.client(&request(b"s1", true));
    h.server(&reply("12CZ"));
    h.prepared.clear(); // the client now lands on a fresh server connection
    let (sent, to_client, _) = h.client(&request(b"s1", false));
    assert_eq!(tags(&sent), "PBES");
    assert!(to_client.is_empty());
    assert_eq!(tags(&h.server(&reply("12CZ"))), "2CZ");
    assert!(h.flight.idle());
}

#[test]
fn error_skips_to_sync_and_forgets_the_failed_parse() {
    let mut h = Harness::new();
    h.client(&request(b"s1", true));
    assert_eq!(h.prepared.len(), 1);
    assert_eq!(tags(&h.server(&reply("EZ"))), "EZ");
    assert!(h.flight.idle());
    assert!(
        h.prepared.is_empty(),
        "a Parse that failed is not on the server"
    );
}

#[test]
fn close_of_named_statement_is_answered_after_earlier_replies() {
    let mut h = Harness::new();
    h.client(&request(b"s1", true));
    h.server(&reply("12CZ"));
    let mut b = BytesMut::new();
    frontend::bind(b"", b"s1", &[], &[], &[], &mut b);
    frontend::execute(b"", 0, &mut b);
    frontend::close(b'S', b"s1", &mut b);
    frontend::sync(&mut b);
    let (sent, to_client, _) = h.client(&b);
    assert_eq!(tags(&sent), "BES", "the Close never reaches the server");
    assert!(
        to_client.is_empty(),
        "CloseComplete waits for the earlier replies"
    );
    assert_eq!(tags(&h.server(&reply("2CZ"))), "2C3Z");
    assert!(h.statements.get(b"s1").is_none());
}

#[test]
fn partial_frames_wait_for_the_rest() {
    let mut h = Harness::new();
    let mut q = BytesMut::new();
    frontend::query(b"SELECT 1", &mut q);
    let (_, _, t) = h.client(&q[..q.len() - 1]);
    assert_eq!(t.consumed, 0);
    let (sent, _, t) = h.client(&q);
    assert_eq!(t.consumed, q.len());
    assert_eq!(sent, q.to_vec());
}

#[test]
fn terminate_stops_translation() {
    let mut h = Harness::new();
    let mut b = BytesMut::new();
    frontend::terminate(&mut b);
    let (_, _, t) = h.client(&b);
    assert!(t.terminate);
}

#[test]
fn hidden_probe_replies_are_dropped_and_the_lsn_reported() {
    let mut h = Harness::new();
    let mut q = BytesMut::new();
    frontend::query(b"INSERT INTO t VALUES (1)", &mut q);
    let (_, _, _) = h.client(&q);
    let mut probe = BytesMut::new();
    h.flight.send_hidden(
        b"SELECT pg_current_wal_insert_lsn()",
        true,
        &mut probe,
        &mut h.unnamed_owner,
    );
    let mut r = BytesMut::new();
    backend::command_complete("INSERT 0 1", &mut r);
    backend::ready_for_query(b'I', &mut r);
    backend::row_description_text(&["pg_current_wal_insert_lsn"], &mut r);
    shardgate_wire::encode_data_row(&[Some(b"0/3000060".as_slice())], &mut r);
    backend::command_complete("SELECT 1", &mut r);
    backend::ready_for_query(b'I', &mut r);
    let mut to_client = BytesMut::new();
    let relayed = h
        .flight
        .relay(
            &r,
            &mut h.params,
            &mut h.statements,
            ServerSide {
                prepared: &mut h.prepared,
                unnamed_owner: &mut h.unnamed_owner,
            },
            &mut to_client,
        )
        .expect("relay");
    let seen = if relayed.direct {
        r[..relayed.consumed].to_vec()
    } else {
        to_client.to_vec()
    };
    assert_eq!(tags(&seen), "CZ");
    assert_eq!(relayed.probe, Some((Some(0x3000060), b'I')));
    assert!(h.flight.idle());
}

#[test]
fn a_run_that_only_prepares_named_statements_may_be_ended_by_shardgate() {
    let prepare = |name: &[u8]| {
        let mut b = BytesMut::new();
        frontend::parse(name, b"SELECT 1", &[], &mut b);
        frontend::describe(b'S', name, &mut b);
        frontend::flush(&mut b);
        b
    };
    let mut h = Harness::new();
    h.client(&prepare(b"s1"));
    assert!(
        !h.flight.can_end_prepares(),
        "not before the server answered"
    );
    let mut answer = reply("1");
    backend::no_data(&mut answer);
    h.server(&answer);
    assert!(h.flight.can_end_prepares());
    let mut to_server = BytesMut::new();
    h.flight.end_prepares(&mut to_server);
    assert_eq!(tags(&to_server), "S");
    // Its ReadyForQuery is the proxy's: the client sees nothing, and the flight is idle.
    assert!(h.server(&reply("Z")).is_empty());
    assert!(h.flight.idle());

    // Anything that runs or binds, an unnamed Parse, or an error: the client's Sync ends it.
    let mut with_bind = prepare(b"s2");
    with_bind.extend_from_slice(&request(b"s2", false)[..]);
    let without_sync = with_bind.len() - 5;
    let mut h = Harness::new();
    h.client(&with_bind[..without_sync]);
    h.server(&reply("12"));
    assert!(!h.flight.can_end_prepares());
    let mut h = Harness::new();
    h.client(&prepare(b""));
    h.server(&answer);
    assert!(!h.flight.can_end_prepares());
    let mut h = Harness::new();
    h.client(&prepare(b"bad"));
    h.server(&reply("E"));
    assert!(!h.flight.can_end_prepares());

    // Inside a transaction block, any run answered without error may be ended when a request
    // behind it needs another shard (the relay asks); outside one, none but the above.
    let mut h = Harness::new();
    h.flight = Flight::with_status(b'T');
    h.client(&prepare(b""));
    assert!(!h.flight.waits_on_client_sync(), "replies still owed");
    h.server(&answer);
    assert!(h.flight.waits_on_client_sync());
    assert!(!h.flight.can_end_prepares());
    assert!(h.flight.can_end_run_in_transaction());
    let mut to_server = BytesMut::new();
    h.flight.end_prepares(&mut to_server);
    assert!(!h.flight.waits_on_client_sync());
    let mut ready = BytesMut::new();
    backend::ready_for_query(b'T', &mut ready);
    assert!(h.server(&ready).is_empty());
    assert!(h.flight.idle());
    assert_eq!(h.flight.tx_status, b'T');
    let mut h = Harness::new();
    h.client(&prepare(b""));
    h.server(&answer);
    assert!(h.flight.waits_on_client_sync());
    assert!(
        !h.flight.can_end_run_in_transaction(),
        "outside a transaction block"
    );
    let mut h = Harness::new();
    h.flight = Flight::with_status(b'T');
    h.client(&prepare(b"bad"));
    h.server(&reply("E"));
    assert!(!h.flight.can_end_run_in_transaction(), "after an error");
}

#[test]
fn a_statement_parsed_behind_an_unanswered_set_is_shared_with_nobody() {
    let parse = |h: &mut Harness, before: &[u8]| {
        let mut b = BytesMut::from(before);
        frontend::parse(b"s1", b"SELECT now()", &[], &mut b);
        h.client(&b);
        h.statements.get(b"s1").expect("tracked").id
    };
    let mut plain = Harness::new();
    let shared = parse(&mut plain, b"");
    // The server analyses this Parse under the new time zone; the fingerprint is still the
    // old one until the SET is answered.
    let mut set = BytesMut::new();
    frontend::query(b"SET TIME ZONE 'Asia/Tokyo'", &mut set);
    let mut h = Harness::new();
    let behind_set = parse(&mut h, &set);
    assert_ne!(behind_set, shared);
    let mut again = Harness::new();
    assert_ne!(parse(&mut again, &set), behind_set, "not even with itself");
}

#[test]
fn a_stale_statement_error_is_told_by_code_and_routine_not_message() {
    let error = |code: &str, routine: &str| {
        let mut b = BytesMut::new();
        backend::error_response(
            &shardgate_wire::ErrorFields::new(
                "ERROR",
                code,
                "le plan en cache ne doit pas changer",
            )
            .with(b'F', "plancache.c")
            .with(b'R', routine),
            &mut b,
        );
        backend::ready_for_query(b'I', &mut b);
        b
    };
    for (code, routine, stale) in [
        ("0A000", "RevalidateCachedQuery", true),
        ("0A000", "transformSelectStmt", false),
        ("42P01", "RevalidateCachedQuery", false),
    ] {
        let mut h = Harness::new();
        h.client(&request(b"s1", true));
        let input = error(code, routine);
        let r = h
            .flight
            .relay(
                &input,
                &mut h.params,
                &mut h.statements,
                ServerSide {
                    prepared: &mut h.prepared,
                    unnamed_owner: &mut h.unnamed_owner,
                },
                &mut BytesMut::new(),
            )
            .expect("relay");
        assert_eq!(r.stale_statement, stale, "{code} {routine}");
    }
}

#[test]
fn after_a_stale_report_statements_get_names_no_server_has() {
    let mut h = Harness::new();
    let (sent, _, _) = h.client(&request(b"s1", true));
    let old = names_sent(&sent)[0].clone();
    h.server(&reply("12CZ"));
    h.plan_epoch = 1;
    // The server that has the old statement keeps running it under its old name (it fails it
    // if it is stale, as it would directly, until the client prepares again).
    let (sent, _, _) = h.client(&request(b"s1", false));
    assert_eq!(names_sent(&sent), std::slice::from_ref(&old));
    h.server(&reply("2CZ"));
    // A server that lacks it gets it under a new name; so does a client preparing it again.
    h.prepared.clear();
    let (sent, _, _) = h.client(&request(b"s1", false));
    let new = names_sent(&sent);
    assert_eq!(new.len(), 2, "{new:?}");
    assert_ne!(new[0], old);
    h.server(&reply("12CZ"));
    let (sent, _, _) = h.client(&request(b"s2", true));
    assert_eq!(names_sent(&sent)[0], new[0]);
}

#[test]
fn a_deallocate_of_a_tracked_statement_waits_for_the_replies_before_it() {
    let mut h = Harness::new();
    h.client(&request(b"s1", true));
    h.server(&reply("12CZ"));
    let mut q = BytesMut::new();
    frontend::query(b"SELECT 1", &mut q);
    let first = q.len();
    frontend::query(b"DEALLOCATE s1", &mut q);
    let (_, _, t) = h.client(&q);
    assert_eq!(t.consumed, first, "stops in front of the DEALLOCATE");
    h.server(&reply("CZ"));
    // Alone and idle, it reaches here only when the session did not answer it (a failed
    // transaction): it goes to the server.
    let (sent, _, t) = h.client(&q[first..]);
    assert_eq!(t.consumed, q.len() - first);
    assert_eq!(tags(&sent), "Q");
    // A DEALLOCATE of a name the client does not have is an ordinary query.
    h.server(&reply("CZ"));
    let mut q = BytesMut::new();
    frontend::query(b"SELECT 1", &mut q);
    frontend::query(b"DEALLOCATE other", &mut q);
    let (_, _, t) = h.client(&q);
    assert_eq!(t.consumed, q.len());
}

#[test]
fn a_duplicate_parse_error_names_the_clients_statement() {
    let internal = b"sg_0123456789abcdef0123456789abcdef";
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', &b"ERROR"[..]),
        (b'V', b"ERROR"),
        (b'C', b"42P05"),
        (
            b'M',
            b"prepared statement \"sg_0123456789abcdef0123456789abcdef\" already exists",
        ),
    ] {
        body.push(field);
        body.extend_from_slice(value);
        body.push(0);
    }
    body.push(0);
    let mut out = BytesMut::new();
    super::replies::rename_in_error(&body, internal, b"my stmt", &mut out);
    let mut want = BytesMut::new();
    backend::error_response(
        &shardgate_wire::ErrorFields::new(
            "ERROR",
            "42P05",
            "prepared statement \"my stmt\" already exists",
        ),
        &mut want,
    );
    assert_eq!(out, want);
}
