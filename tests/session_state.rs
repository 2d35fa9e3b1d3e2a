//! Session state in transaction mode: with a pool of ONE server connection every client
//! shares it, so any setting that leaks from one client to another shows up here.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const SETTINGS: [&str; 4] = [
    "search_path",
    "application_name",
    "statement_timeout",
    "TimeZone",
];

fn one_server(topo: &Topology) -> Proxy {
    Proxy::start_with(
        topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    )
}

async fn show(client: &Client, name: &str) -> String {
    let sql = format!("SHOW {name}");
    let row = timeout(Duration::from_secs(10), client.query_one(sql.as_str(), &[]))
        .await
        .expect("SHOW in time")
        .expect("SHOW");
    row.get(0)
}

async fn show_all(client: &Client) -> Vec<String> {
    let mut values = Vec::new();
    for name in SETTINGS {
        values.push(show(client, name).await);
    }
    values
}

async fn exec(client: &Client, sql: &str) {
    timeout(Duration::from_secs(10), client.batch_execute(sql))
        .await
        .expect("in time")
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn sets_stay_with_their_client() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    let defaults = show_all(&b).await;
    assert_eq!(defaults[2], "0");

    exec(&a, "SET search_path TO pg_catalog, public").await;
    exec(&a, "SET application_name = 'client-a'").await;
    // Extended protocol SET, too.
    a.execute("SET statement_timeout = '42s'", &[])
        .await
        .expect("set");
    exec(&a, "SET TimeZone TO 'Pacific/Chatham'").await;
    let mine = vec![
        "pg_catalog, public".to_owned(),
        "client-a".to_owned(),
        "42s".to_owned(),
        "Pacific/Chatham".to_owned(),
    ];
    assert_ne!(mine[3], defaults[3]);
    assert_eq!(show_all(&a).await, mine);
    assert_eq!(show_all(&b).await, defaults, "B sees A's settings");
    assert_eq!(show_all(&a).await, mine, "A lost its settings after B ran");
    // Interleaved one statement at a time.
    for name in SETTINGS {
        let (x, y) = (show(&a, name).await, show(&b, name).await);
        assert_ne!(x, y, "{name}");
    }
    // A's statement_timeout really applies to A only.
    let err = a
        .batch_execute("SET statement_timeout = '100ms'; SELECT pg_sleep(0.5)")
        .await
        .expect_err("times out");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    b.batch_execute("SELECT pg_sleep(0.3)")
        .await
        .expect("B has no timeout");
}

#[tokio::test]
async fn startup_parameters_are_per_client() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let a = support::connect(&format!("{conn} application_name=alpha"))
        .await
        .expect("a");
    let b = support::connect(&format!("{conn} application_name=beta"))
        .await
        .expect("b");
    let c = proxy.connect(&topo).await;
    for _ in 0..3 {
        assert_eq!(show(&a, "application_name").await, "alpha");
        assert_eq!(show(&b, "application_name").await, "beta");
        assert_eq!(show(&c, "application_name").await, "");
    }
    // A SET overrides the startup value for that client only.
    exec(&a, "SET application_name = 'alpha2'").await;
    assert_eq!(show(&b, "application_name").await, "beta");
    assert_eq!(show(&a, "application_name").await, "alpha2");
}

#[tokio::test]
async fn rolled_back_sets_do_not_stick_committed_ones_do() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;

    exec(&a, "BEGIN").await;
    exec(&a, "SET search_path TO pg_catalog").await;
    assert_eq!(show(&a, "search_path").await, "pg_catalog");
    exec(&a, "ROLLBACK").await;
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");

    // A failed transaction's SET is undone even when it ends with COMMIT.
    exec(&a, "BEGIN; SET search_path TO pg_catalog").await;
    a.batch_execute("SELECT 1/0").await.expect_err("fails");
    exec(&a, "COMMIT").await;
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");

    exec(&a, "BEGIN; SET search_path TO pg_catalog, public; COMMIT").await;
    exec(&a, "BEGIN").await;
    exec(&a, "SET TimeZone TO 'Asia/Kolkata'").await;
    exec(&a, "COMMIT").await;
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
    assert_eq!(show(&a, "search_path").await, "pg_catalog, public");
    assert_eq!(show(&a, "TimeZone").await, "Asia/Kolkata");
    assert_ne!(show(&b, "TimeZone").await, "Asia/Kolkata");
}

#[tokio::test]
async fn reset_all_returns_to_the_clients_own_defaults() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let a = support::connect(&format!("{conn} application_name=alpha"))
        .await
        .expect("a");
    let b = support::connect(&format!("{conn} application_name=beta"))
        .await
        .expect("b");
    exec(
        &a,
        "SET application_name = 'x'; SET statement_timeout = '5s'",
    )
    .await;
    exec(&a, "RESET ALL").await;
    // As on a real server: RESET restores the value the session started with.
    assert_eq!(show(&a, "application_name").await, "alpha");
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "application_name").await, "beta");
    assert_eq!(show(&a, "application_name").await, "alpha");

    exec(&a, "SET application_name = 'y'").await;
    exec(&a, "RESET application_name").await;
    assert_eq!(show(&a, "application_name").await, "alpha");
    exec(&b, "SELECT 1").await;
    assert_eq!(show(&a, "application_name").await, "alpha");
}

#[tokio::test]
async fn discard_all_resets_settings_and_drops_prepared_statements() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let a = support::connect(&format!("{conn} application_name=alpha"))
        .await
        .expect("a");
    let b = proxy.connect(&topo).await;
    let stmt = a.prepare("SELECT $1::int4 + 1").await.expect("prepare");
    let b_stmt = b.prepare("SELECT $1::int4 + 1").await.expect("prepare b");
    assert_eq!(
        a.query_one(&stmt, &[&1i32])
            .await
            .expect("run")
            .get::<_, i32>(0),
        2
    );
    exec(&a, "SET statement_timeout = '7s'").await;
    exec(&a, "DISCARD ALL").await;
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&a, "application_name").await, "alpha");
    let err = a.query(&stmt, &[&1i32]).await.expect_err("statement gone");
    assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    // B's statement with the same text on the same server still works.
    let row = b
        .query_one(&b_stmt, &[&2i32])
        .await
        .expect("b's statement survives");
    assert_eq!(row.get::<_, i32>(0), 3);
    // A can prepare again.
    let again = a
        .prepare("SELECT $1::int4 + 1")
        .await
        .expect("prepare again");
    assert_eq!(
        a.query_one(&again, &[&4i32])
            .await
            .expect("run")
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test]
async fn set_local_does_not_leak() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    exec(&a, "BEGIN").await;
    exec(&a, "SET LOCAL statement_timeout = '3s'").await;
    exec(&a, "SET LOCAL search_path TO pg_catalog").await;
    assert_eq!(show(&a, "statement_timeout").await, "3s");
    exec(&a, "COMMIT").await;
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "statement_timeout").await, "0");
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
    exec(&a, "SET LOCAL statement_timeout = '3s'").await;
    assert_eq!(show(&a, "statement_timeout").await, "0");
    assert_eq!(show(&b, "statement_timeout").await, "0");
}

/// `options` (libpq's PGOPTIONS) and list-valued startup parameters reach the client's session
/// exactly as PostgreSQL reads them when connected directly, and stay with that client.
#[tokio::test]
async fn options_and_list_valued_parameters_match_a_direct_connection() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let options =
        r"options='-c search_path=s1,s2 -cstatement_timeout=7s --application-name=my\\ app'";
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let d = support::connect(&format!("{direct} {options}"))
        .await
        .expect("direct");
    let a = support::connect(&format!("{} {options}", proxy.conn_str(&topo)))
        .await
        .expect("through shardgate");
    let b = proxy.connect(&topo).await;
    let names = ["search_path", "statement_timeout", "application_name"];
    let mut want = Vec::new();
    for n in names {
        want.push(show(&d, n).await);
    }
    assert_eq!(want, ["s1,s2", "7s", "my app"]);
    for _ in 0..2 {
        for (n, w) in names.iter().zip(&want) {
            assert_eq!(&show(&a, n).await, w, "{n}");
        }
        // The other client on the same server connection has none of it.
        assert_eq!(show(&b, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "statement_timeout").await, "0");
    }

    // A list-valued startup parameter of its own (asyncpg's server_settings, JDBC's
    // currentSchema) names two schemas, not one called "s1,s2".
    let trust = support::start_trust(&topo, ProxyOptions::default());
    let mut raw = support::raw::RawConn::connect(trust.addr()).await;
    raw.send(&support::raw::startup_message(&[
        ("user", topo.user()),
        ("database", topo.database()),
        ("search_path", "s1,s2"),
    ]))
    .await;
    raw.until_ready(Duration::from_secs(10)).await;
    let got = raw
        .run_ok("SHOW search_path", Duration::from_secs(10))
        .await;
    let row = got.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert_eq!(support::raw::first_column(&row.1), "s1,s2");
}

#[tokio::test]
async fn startup_options_shardgate_cannot_honour_are_refused() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    for (options, code) in [
        ("-B 100", SqlState::FEATURE_NOT_SUPPORTED),
        ("-c search_path", SqlState::SYNTAX_ERROR),
    ] {
        let err = support::connect(&format!("{} options='{options}'", proxy.conn_str(&topo)))
            .await
            .expect_err(options);
        assert_eq!(err.code(), Some(&code), "{options}: {err:?}");
    }
    // The proxy carries on.
    let c = proxy.connect(&topo).await;
    assert_eq!(show(&c, "statement_timeout").await, "0");
}

/// Each form of SET gives the client the value a direct connection gets, even after another
/// client used the (only) server connection in between, so that its settings were re-applied.
#[tokio::test]
async fn every_form_of_set_survives_reapplication_as_on_a_direct_connection() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let other = proxy.connect(&topo).await;
    let cases = [
        ("SET TIME ZONE 'Europe/Paris'", "TimeZone"),
        ("SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE", "TimeZone"),
        ("SET TIME ZONE -7", "TimeZone"),
        (
            "SET timezone = 'UTC'; SET TIME ZONE 'Asia/Tokyo'",
            "TimeZone",
        ),
        ("SET search_path = a, b", "search_path"),
        (
            "SET search_path = \"$user\", public, \"Weird Name\"",
            "search_path",
        ),
        ("SET SCHEMA 'x'", "search_path"),
        ("SET XML OPTION DOCUMENT", "xmloption"),
        ("SET datestyle = iso, dmy", "DateStyle"),
        ("set \"application_name\" = 'x y'", "application_name"),
        ("SET statement_timeout = 5000", "statement_timeout"),
        ("SET SESSION my.custom = 'z2'", "my.custom"),
        ("SET work_mem = '8MB'; SET work_mem TO DEFAULT", "work_mem"),
        ("SET intervalstyle = postgres_verbose", "IntervalStyle"),
        ("SET ROLE NONE", "role"),
        ("BEGIN; SET search_path = inside; COMMIT", "search_path"),
        ("BEGIN; SET search_path = inside; ROLLBACK", "search_path"),
        ("SET search_path = a; SELECT 1/0", "search_path"),
    ];
    for (sql, name) in cases {
        let mut got = Vec::new();
        for through_proxy in [false, true] {
            let conn = if through_proxy {
                proxy.conn_str(&topo)
            } else {
                direct.clone()
            };
            let c = support::connect(&conn).await.expect("connect");
            let _ = c.batch_execute(sql).await;
            if through_proxy {
                exec(&other, "SELECT 1").await;
            }
            got.push(show(&c, &format!("\"{name}\"")).await);
        }
        assert_eq!(got[1], got[0], "{sql}: through shardgate vs direct");
    }
}

/// Clients whose settings differ do not share a server-side statement: under another
/// `search_path` the same text reads another table, and a statement analysed for one client
/// would fail for the other ("cached plan must not change result type").
#[tokio::test]
async fn the_same_text_prepared_under_other_settings_is_another_statement() {
    let topo = Topology::builder().build().expect("topology");
    topo.shards[0]
        .primary
        .sql(
            "app",
            "CREATE SCHEMA sa; CREATE SCHEMA sb; CREATE TABLE sa.t (x int); \
             CREATE TABLE sb.t (y text, z text); INSERT INTO sa.t VALUES (1); \
             INSERT INTO sb.t VALUES ('b', 'c'); GRANT ALL ON SCHEMA sa, sb TO app; \
             GRANT ALL ON ALL TABLES IN SCHEMA sa, sb TO app",
        )
        .expect("schemas");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let a = support::connect(&format!("{conn} options='-c search_path=sa'"))
        .await
        .expect("a");
    let b = support::connect(&format!("{conn} options='-c search_path=sb'"))
        .await
        .expect("b");
    let sa = a.prepare("SELECT * FROM t").await.expect("prepare a");
    let row = a.query_one(&sa, &[]).await.expect("a");
    assert_eq!(row.get::<_, i32>(0), 1);
    let sb = b.prepare("SELECT * FROM t").await.expect("prepare b");
    for _ in 0..2 {
        let row = b.query_one(&sb, &[]).await.expect("b");
        assert_eq!(row.get::<_, String>(1), "c");
        let row = a.query_one(&sa, &[]).await.expect("a");
        assert_eq!(row.get::<_, i32>(0), 1);
    }
}

/// A statement re-created on a server connection is analysed under the client's settings of
/// that moment: it must not be shared with clients whose settings are those the statement
/// was first prepared under. A time stamp literal is read at analysis, in the session's time
/// zone, and PostgreSQL does not re-analyse when the time zone changes.
#[tokio::test]
async fn a_statement_re_created_under_changed_settings_is_not_shared() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let utc = format!("{conn} options='-c TimeZone=UTC'");
    let sql = "SELECT extract(epoch FROM '2020-01-01 00:00'::timestamptz)::int8";
    let a = support::connect(&utc).await.expect("a");
    let b = support::connect(&utc).await.expect("b");
    let other = proxy.connect(&topo).await;
    let sa = a.prepare(sql).await.expect("prepare a");
    // The only server connection forgets every statement; a then changes its time zone and
    // runs its statement, which shardgate re-creates under Asia/Tokyo.
    exec(&other, "DEALLOCATE ALL").await;
    exec(&a, "SET TIME ZONE 'Asia/Tokyo'").await;
    let _ = a.query_one(&sa, &[]).await.expect("a runs");
    // b, still in UTC, prepares the same text: it must read the literal in UTC.
    let sb = b.prepare(sql).await.expect("prepare b");
    let row = timeout(Duration::from_secs(10), b.query_one(&sb, &[]))
        .await
        .expect("in time")
        .expect("b runs");
    assert_eq!(
        row.get::<_, i64>(0),
        1_577_836_800,
        "b's literal read in UTC"
    );
}

/// A startup value with a backslash is re-applied intact even on a connection the previous
/// client left with standard_conforming_strings off (where '\a' would read as an escape).
#[tokio::test]
async fn a_backslash_in_a_startup_value_survives_a_connection_left_without_standard_strings() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let conn = proxy.conn_str(&topo);
    let a = support::connect(&format!(r"{conn} application_name='C:\\app\\new'"))
        .await
        .expect("a");
    let b = proxy.connect(&topo).await;
    for _ in 0..2 {
        exec(&b, "SET standard_conforming_strings = off").await;
        assert_eq!(show(&a, "application_name").await, r"C:\app\new");
    }
}

/// A setting the server takes only at backend start (`ignore_system_indexes`) cannot be
/// applied on a pooled connection: the login fails with a clear error that says so, rather than
/// the session running without it. (Before session 9 the login succeeded and every request
/// failed.)
#[tokio::test]
async fn a_backend_only_setting_in_options_fails_clearly_rather_than_being_dropped() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let err = support::connect(&format!(
        "{} options='-c ignore_system_indexes=on'",
        proxy.conn_str(&topo)
    ))
    .await
    .expect_err("the setting cannot be applied");
    let db = err.as_db_error().expect("server-style error");
    assert_eq!(db.code(), &SqlState::CANT_CHANGE_RUNTIME_PARAM, "{db:?}");
    assert!(
        db.severity() == "FATAL"
            && db.message().contains("ignore_system_indexes")
            && db.hint().is_some_and(|h| h.contains("pool.mode session")),
        "{db:?}"
    );
    // Other clients are unaffected.
    let other = proxy.connect(&topo).await;
    assert_eq!(show(&other, "ignore_system_indexes").await, "off");
}

#[tokio::test]
async fn a_prepared_set_takes_effect_when_it_runs_not_when_it_is_prepared() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    let default_path = show(&b, "search_path").await;
    exec(
        &b,
        "CREATE SCHEMA IF NOT EXISTS sa; CREATE SCHEMA IF NOT EXISTS sb",
    )
    .await;
    // Parse and Describe only: nothing runs on the server.
    let to_sa = a
        .prepare("SET search_path = sa")
        .await
        .expect("prepare SET");
    exec(&b, "SELECT 1").await;
    assert_eq!(
        show(&a, "search_path").await,
        default_path,
        "a SET that was only prepared changed the session"
    );
    // Run later, after a SET by simple query: the prepared one is the last to run.
    exec(&a, "SET search_path = sb").await;
    a.execute(&to_sa, &[]).await.expect("run the prepared SET");
    exec(&b, "SELECT 1").await;
    assert_eq!(show(&a, "search_path").await, "sa");
    assert_eq!(show(&b, "search_path").await, default_path);
}

/// Multi-statement requests, savepoints and failures: each client's `search_path` afterwards is
/// what a direct connection has after the same requests, and the other client never sees it.
#[tokio::test]
async fn sets_kept_or_undone_by_transactions_within_a_request_match_a_direct_connection() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let scenarios: [&[&str]; 6] = [
        &["BEGIN; SET search_path TO x1; COMMIT; BEGIN; SELECT 1; ROLLBACK"],
        &["BEGIN; SET search_path TO x2; ROLLBACK; SELECT 1"],
        &["BEGIN; SET search_path TO x3; COMMIT; SELECT 1/0"],
        &["BEGIN; SAVEPOINT s; SET search_path TO x4; ROLLBACK TO SAVEPOINT s; COMMIT"],
        &[
            "BEGIN; SAVEPOINT s; SET search_path TO x5; RELEASE s",
            "COMMIT",
        ],
        &[
            "BEGIN",
            "SET search_path TO x6",
            "COMMIT AND CHAIN",
            "SET search_path TO x7",
            "ROLLBACK",
        ],
    ];
    for steps in scenarios {
        let d = support::connect(&direct).await.expect("direct");
        let (a, b) = (proxy.connect(&topo).await, proxy.connect(&topo).await);
        let default_path = show(&b, "search_path").await;
        for step in steps {
            let on_direct = d.batch_execute(step).await.map_err(|e| e.code().cloned());
            let on_proxy = a.batch_execute(step).await.map_err(|e| e.code().cloned());
            assert_eq!(on_proxy, on_direct, "{steps:?}: {step}");
        }
        // The other client takes the only server connection, then the first gets it back.
        assert_eq!(
            show(&b, "search_path").await,
            default_path,
            "{steps:?}: leaked"
        );
        assert_eq!(
            show(&a, "search_path").await,
            show(&d, "search_path").await,
            "{steps:?}"
        );
    }
}

/// With `standard_conforming_strings` off, `'it\'s'` is one literal: the SET after it is seen,
/// kept for its client, and never reaches another.
#[tokio::test]
async fn a_set_after_a_backslash_quote_is_seen_when_standard_strings_are_off() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let off = format!(
        "{} options='-c standard_conforming_strings=off'",
        proxy.conn_str(&topo)
    );
    let a = support::connect(&off).await.expect("a");
    let b = support::connect(&off).await.expect("b");
    let default_path = show(&b, "search_path").await;
    exec(&a, r"SELECT 'it\'s'; SET search_path TO scs_seen").await;
    assert_eq!(show(&b, "search_path").await, default_path, "leaked");
    assert_eq!(show(&a, "search_path").await, "scs_seen");
}

/// More transaction shapes, each compared with a direct connection: savepoints named alike or
/// quoted, PREPARE TRANSACTION, a BEGIN inside a multi-statement request, a chained transaction
/// that then fails.
#[tokio::test]
async fn savepoints_prepared_transactions_and_chains_keep_what_a_direct_connection_keeps() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let long = "a".repeat(63);
    let long_a = format!("{long}_one");
    let long_b = format!("{long}_two");
    let s1 = format!("BEGIN; SAVEPOINT {long_a}; SET search_path TO r9; ROLLBACK TO {long_b}");
    let scenarios: Vec<Vec<&str>> = vec![
        vec!["BEGIN; SAVEPOINT a; SET search_path TO r1; SAVEPOINT a; SET search_path TO r2; RELEASE a; ROLLBACK TO a; COMMIT"],
        vec!["BEGIN; SAVEPOINT \"A\"; SET search_path TO r3; ROLLBACK TO a", "COMMIT"],
        vec!["BEGIN; SAVEPOINT A; SET search_path TO r4; ROLLBACK TO \"a\"; COMMIT"],
        vec!["SET search_path TO r5; BEGIN; SELECT 1/0", "ROLLBACK"],
        vec!["BEGIN; SET search_path TO r6; COMMIT AND CHAIN; SELECT 1/0", "ROLLBACK"],
        vec!["BEGIN", "SET search_path TO r7", "PREPARE TRANSACTION 'GID'", "ROLLBACK PREPARED 'GID'"],
        vec![&s1, "COMMIT"],
    ];
    for steps in &scenarios {
        let d = support::connect(&direct).await.expect("direct");
        let (a, b) = (proxy.connect(&topo).await, proxy.connect(&topo).await);
        let default_path = show(&b, "search_path").await;
        for step in steps {
            let on_direct = d
                .batch_execute(&step.replace("GID", "review_d"))
                .await
                .map_err(|e| e.code().cloned());
            let on_proxy = a
                .batch_execute(&step.replace("GID", "review_p"))
                .await
                .map_err(|e| e.code().cloned());
            assert_eq!(on_proxy, on_direct, "{steps:?}: {step}");
        }
        assert_eq!(
            show(&b, "search_path").await,
            default_path,
            "{steps:?}: leaked"
        );
        assert_eq!(
            show(&a, "search_path").await,
            show(&d, "search_path").await,
            "{steps:?}"
        );
    }
}

/// `standard_conforming_strings` off by the database's own default (not by the client): the
/// server reads `'it\'s'` as one literal, so the SET after it runs, and must stay with its
/// client as on a direct connection.
#[tokio::test]
async fn a_set_after_a_backslash_quote_is_kept_when_the_database_turns_standard_strings_off() {
    let topo = Topology::builder().build().expect("topology");
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let d = support::connect(&direct).await.expect("direct");
    exec(
        &d,
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', current_database()); END$$",
    )
    .await;
    let proxy = one_server(&topo);
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    assert_eq!(show(&a, "standard_conforming_strings").await, "off");
    let default_path = show(&b, "search_path").await;
    exec(&a, r"SELECT 'it\'s'; SET search_path TO scs_db").await;
    assert_eq!(show(&b, "search_path").await, default_path, "leaked");
    assert_eq!(show(&a, "search_path").await, "scs_db");
}

/// A function that changes a setting for the session (`set_config(name, value, false)` in its
/// body, where shardgate cannot see it): the change stays with its client, as on a direct
/// connection, and never reaches the next client of the server connection. PostgreSQL reports
/// such changes of the settings it reports (TimeZone, DateStyle, application_name, ...) in a
/// ParameterStatus, which is what shardgate follows.
#[tokio::test]
async fn a_setting_a_function_changes_stays_with_its_client() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_server(&topo);
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    let setup = support::connect(&direct).await.expect("direct");
    setup
        .batch_execute(
            "CREATE FUNCTION sg_set(name text, value text, is_local bool DEFAULT false) \
             RETURNS text LANGUAGE plpgsql AS \
             $$ BEGIN RETURN pg_catalog.set_config(name, value, is_local); END $$",
        )
        .await
        .expect("create function");
    const REPORTED: [&str; 3] = ["TimeZone", "DateStyle", "application_name"];
    let scenarios: [&[&str]; 11] = [
        // Found by the hunt of session 12: the function's value is the one COMMIT keeps.
        &[
            "BEGIN",
            "SET LOCAL TimeZone = 'Europe/Paris'",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "COMMIT",
        ],
        &[
            "BEGIN",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "SET LOCAL TimeZone = 'Europe/Paris'",
            "COMMIT",
        ],
        &["SET TimeZone = 'Europe/Paris'; SELECT sg_set('TimeZone', 'Asia/Tokyo')"],
        &["SELECT sg_set('TimeZone', 'Asia/Tokyo')"],
        &["SELECT sg_set('application_name', 'by-function'); SELECT 1"],
        &["BEGIN; SELECT sg_set('DateStyle', 'SQL, DMY'); COMMIT"],
        &[
            "BEGIN",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "ROLLBACK",
        ],
        &[
            "BEGIN",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo', true)",
            "COMMIT",
        ],
        &[
            "SET TimeZone = 'Europe/Paris'",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "SELECT sg_set('DateStyle', 'German')",
            "RESET TimeZone",
        ],
        &[
            "BEGIN",
            "SAVEPOINT s",
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "ROLLBACK TO SAVEPOINT s",
            "SELECT sg_set('application_name', 'kept')",
            "COMMIT",
        ],
        &[
            "SELECT sg_set('TimeZone', 'Asia/Tokyo')",
            "SELECT sg_set('TimeZone', 'America/Lima'); SELECT 1/0",
        ],
    ];
    for steps in scenarios {
        let d = support::connect(&direct).await.expect("direct");
        let (a, b) = (proxy.connect(&topo).await, proxy.connect(&topo).await);
        let mut defaults = Vec::new();
        for name in REPORTED {
            defaults.push(show(&b, name).await);
        }
        for step in steps {
            let on_direct = d.batch_execute(step).await.map_err(|e| e.code().cloned());
            let on_proxy = a.batch_execute(step).await.map_err(|e| e.code().cloned());
            assert_eq!(on_proxy, on_direct, "{steps:?}: {step}");
        }
        for (name, default) in REPORTED.iter().zip(&defaults) {
            // The other client takes the only server connection, then the first gets it back.
            assert_eq!(&show(&b, name).await, default, "{steps:?}: {name} leaked");
            assert_eq!(
                show(&a, name).await,
                show(&d, name).await,
                "{steps:?}: {name}"
            );
        }
    }
}

/// A startup `role` through `DISCARD ALL`, `SET ROLE NONE` and `RESET ROLE`, with another client
/// taking the one server connection in between: each step shows the user and role a direct
/// connection shows (PostgreSQL 15 keeps the startup role through `DISCARD ALL`, and gives it
/// back after `SET ROLE NONE` and `DISCARD ALL`).
#[tokio::test]
async fn a_startup_role_through_discard_all_matches_a_direct_connection() {
    let topo = Topology::builder().build().expect("topology");
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    topo.shards[0]
        .primary
        .sql(
            topo.database(),
            &format!(
                "CREATE ROLE sg_startup_role NOLOGIN; GRANT sg_startup_role TO {}",
                topo.user()
            ),
        )
        .expect("role");
    let proxy = one_server(&topo);
    let role = "options='-c role=sg_startup_role'";
    async fn steps(a: &Client, b: &Client) -> Vec<String> {
        let who = "SELECT current_user || ' / ' || current_setting('role')";
        let mut seen = Vec::new();
        for (client, sql) in [
            (a, ""),
            (a, "DISCARD ALL"),
            (b, ""),
            (a, ""),
            (a, "SET ROLE NONE"),
            (b, ""),
            (a, "DISCARD ALL"),
            (b, ""),
            (a, ""),
            (a, "BEGIN; SET LOCAL ROLE NONE; DISCARD PLANS; COMMIT"),
            (a, "RESET ROLE"),
            (b, ""),
            (a, ""),
        ] {
            if !sql.is_empty() {
                exec(client, sql).await;
            }
            let row = client.query_one(who, &[]).await.expect("who");
            seen.push(format!("{sql} -> {}", row.get::<_, String>(0)));
        }
        seen
    }
    let d_a = support::connect(&format!("{direct} {role}"))
        .await
        .expect("direct a");
    let d_b = support::connect(&direct).await.expect("direct b");
    let want = steps(&d_a, &d_b).await;
    assert!(
        want[1].ends_with("sg_startup_role / sg_startup_role"),
        "{want:?}"
    );
    let a = support::connect(&format!("{} {role}", proxy.conn_str(&topo)))
        .await
        .expect("a");
    let b = proxy.connect(&topo).await;
    assert_eq!(steps(&a, &b).await, want);
}
