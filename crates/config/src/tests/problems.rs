//! Every kind of problem is reported at its exact key path, and all of them at once.

use super::parse;
use crate::{Config, ConfigError};

/// The reported problems as `(path, message)` pairs, in order.
fn problems(text: &str) -> Vec<(String, String)> {
    match Config::from_yaml_str(text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(ConfigError::Invalid { problems }) => {
            problems.into_iter().map(|p| (p.path, p.message)).collect()
        }
        Err(err) => panic!("unexpected error: {err}"),
    }
}

/// Asserts exactly one problem, at `path`, whose message contains `message`.
#[track_caller]
fn assert_one(text: &str, path: &str, message: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, path, "{found:#?}");
    assert!(
        found[0].1.contains(message),
        "{:?} lacks {message:?}",
        found[0].1
    );
}

/// A valid config with `extra` appended; later keys in `extra` must be new top-level keys.
fn valid_with(extra: &str) -> String {
    format!(
        "database: app\nusers:\n  - {{name: app, password: pw}}\n\
         shards:\n  - {{name: s0, primary: db0:5432, replicas: [db1:5432]}}\n{extra}"
    )
}

const BASE_SHARDS: &str = "shards: [{name: s0, primary: db0:5432}]\n";
const BASE_USERS: &str = "users: [{name: app, password: pw}]\n";

#[test]
fn unknown_keys_list_what_was_expected() {
    assert_one(
        &valid_with("pool: {sise: 5}"),
        "pool.sise",
        "unknown key \"sise\" (expected one of: mode, size, checkout_timeout_ms, max_client_connections, multiplex)",
    );
    assert_one(
        &valid_with("sharing: {}"),
        "sharing",
        "unknown key \"sharing\" (expected one of: listen, admin_listen, workers, busy_poll_us, database, users, pool, shards, sharding, routing, reload, tls)",
    );
    assert_one(
        &valid_with("tls: {cert: c, key: k, ca: x}"),
        "tls.ca",
        "unknown key \"ca\"",
    );
    let text =
        format!("database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1, weight: 2}}]");
    assert_one(&text, "shards[0].weight", "unknown key \"weight\"");
    assert_one(
        &valid_with("pool: {1: 2}"),
        "pool",
        "keys must be strings, got a number (1)",
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    assert_one(
        &valid_with("pool: {size: \"20\"}"),
        "pool.size",
        "expected an integer, got a string (\"20\")",
    );
    assert_one(
        &valid_with("pool: {size: 1.5}"),
        "pool.size",
        "expected an integer, got 1.5",
    );
    assert_one(
        &valid_with("pool: [1]"),
        "pool",
        "expected a mapping, got a list",
    );
    assert_one(
        &valid_with("tls: yes"),
        "tls",
        "expected a mapping, got a string (\"yes\")",
    );
    assert_one(
        &valid_with("listen: 6432"),
        "listen",
        "expected ip:port (e.g. 127.0.0.1:6432 or [::]:6432), got a number (6432)",
    );
    let text = format!("database: 5\n{BASE_USERS}{BASE_SHARDS}");
    assert_one(&text, "database", "expected a string, got a number (5)");
    let text = format!("database: app\nusers: {{name: app}}\n{BASE_SHARDS}");
    assert_one(&text, "users", "expected a list, got a mapping");
    let text =
        format!("database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1, replicas: db:2}}]");
    assert_one(
        &text,
        "shards[0].replicas",
        "expected a list, got a string (\"db:2\")",
    );
    assert_one(
        &valid_with("pool: {mode: !session x}"),
        "pool.mode",
        "tagged value",
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_one(
        &format!("{BASE_USERS}{BASE_SHARDS}"),
        "database",
        "missing required key \"database\"",
    );
    assert_one(
        &format!("database: app\n{BASE_SHARDS}"),
        "users",
        "missing required key \"users\"",
    );
    assert_one(
        &format!("database:\n{BASE_USERS}{BASE_SHARDS}"),
        "database",
        "required key \"database\" has no value",
    );
    let text = format!("database: app\nusers: [{{name: app}}]\n{BASE_SHARDS}");
    assert_one(
        &text,
        "users[0].password",
        "missing required key \"password\"",
    );
    let text = format!("database: app\n{BASE_USERS}shards: [{{name: s0}}]");
    assert_one(
        &text,
        "shards[0].primary",
        "missing required key \"primary\"",
    );
    assert_one(
        &valid_with("tls: {cert: /c.pem}"),
        "tls.key",
        "missing required key \"key\"",
    );
}

#[test]
fn bad_addresses_are_reported_where_they_are() {
    assert_one(
        &valid_with("listen: localhost:6432"),
        "listen",
        "expected ip:port (e.g. 127.0.0.1:6432 or [::]:6432), got \"localhost:6432\"",
    );
    assert_one(
        &valid_with("admin_listen: 127.0.0.1"),
        "admin_listen",
        "got \"127.0.0.1\"",
    );
    let text = format!("database: app\n{BASE_USERS}shards: [{{name: s0, primary: localhost}}]");
    assert_one(
        &text,
        "shards[0].primary",
        "expected host:port, got \"localhost\"",
    );
    let text = format!(
        "database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1, replicas: [db:2, db:3, db:0]}}]"
    );
    assert_one(&text, "shards[0].replicas[2]", "invalid port \"0\"");
    let text = format!("database: app\n{BASE_USERS}shards: [{{name: s0, primary: \"::1:5432\"}}]");
    assert_one(&text, "shards[0].primary", "must be in brackets");
}

#[test]
fn duplicates_point_at_the_first_occurrence() {
    let text = format!(
        "database: app\nusers: [{{name: a, password: x}}, {{name: a, password: y}}]\n{BASE_SHARDS}"
    );
    assert_one(
        &text,
        "users[1].name",
        "duplicate user name \"a\" (also at users[0].name)",
    );
    let text = format!(
        "database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1}}, {{name: s0, primary: db:2}}]"
    );
    assert_one(
        &text,
        "shards[1].name",
        "duplicate shard name \"s0\" (also at shards[0].name)",
    );
    let text = format!(
        "database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1, replicas: [db:2, DB:2]}}]"
    );
    assert_one(
        &text,
        "shards[0].replicas[1]",
        "duplicate node address \"db:2\" (also at shards[0].replicas[0])",
    );
    let text = format!(
        "database: app\n{BASE_USERS}shards: [{{name: s0, primary: db:1}}, {{name: s1, primary: db:2, replicas: [db:1]}}]"
    );
    assert_one(
        &text,
        "shards[1].replicas[0]",
        "duplicate node address \"db:1\" (also at shards[0].primary)",
    );
}

#[test]
fn numbers_out_of_range() {
    assert_one(
        &valid_with("pool: {size: 0}"),
        "pool.size",
        "must be at least 1",
    );
    assert_one(
        &valid_with("pool: {size: -3}"),
        "pool.size",
        "must be at least 1",
    );
    assert_one(
        &valid_with("pool: {size: 4294967296}"),
        "pool.size",
        "must be at most 4294967295",
    );
    assert_one(
        &valid_with("pool: {checkout_timeout_ms: 0}"),
        "pool.checkout_timeout_ms",
        "must be at least 1",
    );
    assert_one(
        &valid_with("pool: {max_client_connections: 0}"),
        "pool.max_client_connections",
        "must be at least 1",
    );
    assert_one(
        &valid_with("pool: {multiplex: 1025}"),
        "pool.multiplex",
        "must be at most 1024",
    );
}

#[test]
fn multiplexing_needs_transaction_pooling() {
    assert_one(
        &valid_with("pool: {mode: session, multiplex: 2}"),
        "pool.multiplex",
        "needs pool.mode transaction",
    );
    let config = Config::from_yaml_str(&valid_with("pool: {mode: session, multiplex: 0}"))
        .expect("multiplex 0 is off");
    assert_eq!(config.pool.multiplex, 0);
    let config = Config::from_yaml_str(&valid_with("pool: {multiplex: 4}")).expect("valid");
    assert_eq!(config.pool.multiplex, 4);
}

#[test]
fn bad_enum_values_list_the_choices() {
    assert_one(
        &valid_with("pool: {mode: txn}"),
        "pool.mode",
        "unknown pool mode \"txn\" (expected one of: transaction, session)",
    );
    let text =
        format!("database: app\nusers: [{{name: a, password: x, auth: SCRAM}}]\n{BASE_SHARDS}");
    assert_one(
        &text,
        "users[0].auth",
        "unknown auth method \"SCRAM\" (expected one of: scram, md5, trust)",
    );
}

#[test]
fn empty_strings_and_lists_are_rejected() {
    assert_one(
        &format!("database: ''\n{BASE_USERS}{BASE_SHARDS}"),
        "database",
        "must not be empty",
    );
    let text = format!("database: app\nusers: [{{name: '', password: x}}]\n{BASE_SHARDS}");
    assert_one(&text, "users[0].name", "must not be empty");
    assert_one(
        &valid_with("tls: {cert: '', key: k}"),
        "tls.cert",
        "must not be empty",
    );
    assert_one(
        &format!("database: app\nusers: []\n{BASE_SHARDS}"),
        "users",
        "at least one user",
    );
    assert_one(
        &format!("database: app\n{BASE_USERS}shards: []"),
        "shards",
        "at least one shard",
    );
    let text = format!("database: app\n{BASE_USERS}shards: [{{name: '', primary: db:1}}]");
    assert_one(&text, "shards[0].name", "must not be empty");
    let text = format!("database: app\n{BASE_USERS}shards: [{{name: s 0, primary: db:1}}]");
    assert_one(&text, "shards[0].name", "invalid shard name \"s 0\"");
    assert_one(
        &format!("database: \"a\\0b\"\n{BASE_USERS}{BASE_SHARDS}"),
        "database",
        "NUL",
    );
}

#[test]
fn passwords_are_checked_but_never_quoted() {
    let text = format!("database: app\nusers: [{{name: a, password: 123456}}]\n{BASE_SHARDS}");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "users[0].password");
    assert!(!found[0].1.contains("123456"), "{}", found[0].1);
    let text = format!("database: app\nusers: [{{name: a, password: ''}}]\n{BASE_SHARDS}");
    assert_one(
        &text,
        "users[0].password",
        "must not be empty when auth is scram",
    );
    // trust never checks the client's password, so an empty one is allowed.
    parse(&format!(
        "database: app\nusers: [{{name: a, password: '', auth: trust}}]\n{BASE_SHARDS}"
    ));
}

#[test]
fn listeners_and_nodes_must_not_collide() {
    assert_one(
        &valid_with("listen: 127.0.0.1:7000\nadmin_listen: 127.0.0.1:7000"),
        "admin_listen",
        "must differ from listen",
    );
    let text = format!("listen: 0.0.0.0:6432\ndatabase: app\n{BASE_USERS}shards: [{{name: s0, primary: localhost:6432}}]");
    assert_one(&text, "shards[0].primary", "shardgate's own listen address");
    // Port 0 lets the OS pick, so two port-0 listeners do not collide.
    parse(&valid_with(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0",
    ));
}

#[test]
fn document_level_problems_have_an_empty_path() {
    for text in ["", "   \n", "# only a comment\n"] {
        assert_one(text, "", "config is empty");
    }
    assert_one("- a\n- b\n", "", "expected a mapping, got a list");
    let found = problems("database: app\nusers: [\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "");
    assert!(
        found[0].1.contains("invalid YAML") && found[0].1.contains("line"),
        "{}",
        found[0].1
    );
    let found = problems(&valid_with("database: other\n"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "");
    assert!(found[0].1.contains("duplicate"), "{}", found[0].1);
}

#[test]
fn a_file_with_five_problems_reports_all_five_in_order() {
    let text = "\
listen: nowhere
database: app
users:
  - name: app
    password: pw
    auth: kerberos
pool:
  sise: 5
  mode: session
shards:
  - name: s0
    primary: db:5432
  - name: s0
    primary: db:5433
    replicas: [db:5432]
";
    let found = problems(text);
    let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listen",
            "users[0].auth",
            "pool.sise",
            "shards[1].name",
            "shards[1].replicas[0]"
        ],
        "{found:#?}"
    );
}

#[test]
fn merge_keys_are_resolved_before_checking() {
    let config = parse(&format!(
        "database: app\nusers: [&base {{name: a, password: pw, auth: md5}}, {{<<: *base, name: b}}]\n{BASE_SHARDS}"
    ));
    assert_eq!(
        config.user("b").map(|u| (u.password.as_str(), u.auth)),
        Some(("pw", crate::AuthMethod::Md5))
    );
}
