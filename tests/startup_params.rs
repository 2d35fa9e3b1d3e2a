//! Startup parameters as the client sees them: the greeting's ParameterStatus values, and a
//! startup setting the server refuses, each compared with a direct connection to PostgreSQL.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{startup_message, RawConn};
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

/// The parameters the greeting reports that the settings below change.
const REPORTED: [&str; 5] = [
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "client_encoding",
    "application_name",
];

/// Logs in with `options` and returns what the greeting reported for each of [`REPORTED`].
async fn greeting_values(conn_str: &str, options: &str) -> Vec<String> {
    let conn_str = format!("{conn_str} options='{options}'");
    let (client, connection) = timeout(
        Duration::from_secs(15),
        tokio_postgres::connect(&conn_str, tokio_postgres::NoTls),
    )
    .await
    .expect("login in time")
    .unwrap_or_else(|e| panic!("{options}: {e:?}"));
    let values = REPORTED
        .iter()
        .map(|n| connection.parameter(n).unwrap_or("<none>").to_owned())
        .collect();
    drop(client);
    drop(connection);
    values
}

/// The login error for `options`: (severity, SQLSTATE, message).
async fn login_error(conn_str: &str, options: &str) -> (String, SqlState, String) {
    let conn_str = format!("{conn_str} options='{options}'");
    let err = timeout(Duration::from_secs(15), support::connect(&conn_str))
        .await
        .expect("answer in time")
        .expect_err(options);
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{options}: not a server error: {err:?}"));
    (
        db.severity().to_owned(),
        db.code().clone(),
        db.message().to_owned(),
    )
}

/// One primary behind a proxy with a pool of one, and the primary's direct connection string.
fn one_server_proxy() -> (Topology, Proxy, String) {
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
    (topo, proxy, direct)
}

#[tokio::test]
async fn the_greeting_reports_startup_settings_as_the_server_spells_them() {
    let (topo, proxy, direct) = one_server_proxy();
    for options in [
        r"-c DateStyle=sql,dmy -c TimeZone=utc -c IntervalStyle=SQL_STANDARD",
        r"-c datestyle=german -c timezone=europe/paris --application-name=app",
        // Settings the greeting does not report, and ones spelled as the server does.
        r"-c statement_timeout=5s -c DateStyle=ISO,\\ MDY",
    ] {
        let want = greeting_values(&direct, options).await;
        let got = greeting_values(&proxy.conn_str(&topo), options).await;
        assert_eq!(got, want, "{options}");
    }
    let got = greeting_values(
        &proxy.conn_str(&topo),
        "-c DateStyle=sql,dmy -c TimeZone=utc",
    )
    .await;
    assert_eq!(got[0], "SQL, DMY");
    assert_eq!(got[2], "UTC");

    // A startup parameter of its own, as asyncpg and psql send client_encoding.
    let trust = support::start_trust(&topo, ProxyOptions::default());
    for (value, reported) in [("utf8", "UTF8"), ("UTF8", "UTF8"), ("unicode", "UTF8")] {
        let mut raw = RawConn::connect(trust.addr()).await;
        raw.send(&startup_message(&[
            ("user", topo.user()),
            ("database", topo.database()),
            ("client_encoding", value),
        ]))
        .await;
        let greeting = raw.until_ready(Duration::from_secs(10)).await;
        let statuses: Vec<String> = greeting
            .iter()
            .filter(|(t, _)| *t == b'S')
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
            .collect();
        assert!(
            statuses.contains(&format!("client_encoding\0{reported}\0")),
            "{value}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn a_startup_setting_the_server_refuses_fails_the_login_with_its_error() {
    let (topo, proxy, direct) = one_server_proxy();
    for (options, code) in [
        ("-c DateStyle=bogus", SqlState::INVALID_PARAMETER_VALUE),
        (
            "-c statement_timeout=abc",
            SqlState::INVALID_PARAMETER_VALUE,
        ),
        ("-c no_such_setting=1", SqlState::UNDEFINED_OBJECT),
        (
            "-c application_name=ok -c TimeZone=Mars/Base",
            SqlState::INVALID_PARAMETER_VALUE,
        ),
    ] {
        let want = login_error(&direct, options).await;
        assert_eq!((want.0.as_str(), &want.1), ("FATAL", &code), "{options}");
        let got = login_error(&proxy.conn_str(&topo), options).await;
        assert_eq!(got, want, "{options}");
    }
    // The refused settings reached nobody: the one server connection is fine for the next.
    let c = proxy.connect(&topo).await;
    let row = c.query_one("SHOW DateStyle", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "ISO, MDY");
}

#[tokio::test]
async fn a_login_with_settings_and_no_free_server_gets_the_checkout_error() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 1,
            checkout_timeout_ms: 500,
            ..ProxyOptions::default()
        },
    );
    // The short timeout bounds connecting too: retry the first login on a loaded machine.
    let mut holder = None;
    for _ in 0..40 {
        if let Ok(c) = support::connect(&proxy.conn_str(&topo)).await {
            if c.batch_execute("BEGIN; SELECT 1").await.is_ok() {
                holder = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let holder = holder.expect("a client holding the only server connection");
    let (severity, code, _) = login_error(&proxy.conn_str(&topo), "-c DateStyle=sql").await;
    assert_eq!(
        (severity.as_str(), code),
        ("FATAL", SqlState::TOO_MANY_CONNECTIONS)
    );
    // Without settings beyond the server's defaults, no server is needed to log in.
    let c = timeout(Duration::from_secs(5), proxy.connect(&topo))
        .await
        .expect("login without a server");
    drop(c);
    holder.batch_execute("COMMIT").await.expect("commit");
    let c = timeout(
        Duration::from_secs(5),
        support::connect(&format!(
            "{} options='-c DateStyle=sql'",
            proxy.conn_str(&topo)
        )),
    )
    .await
    .expect("in time")
    .expect("login once the server is free");
    let row = c.query_one("SHOW DateStyle", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "SQL, MDY");
}

/// The last value a reply reported for `name` in a ParameterStatus.
fn last_status(got: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    got.iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, body)| {
            let text = String::from_utf8_lossy(body).into_owned();
            let mut parts = text.split('\0');
            (parts.next() == Some(name)).then(|| parts.next().unwrap_or("").to_owned())
        })
        .next_back()
}

/// Runs `sql` and returns the first column of its only row.
async fn show(raw: &mut RawConn, sql: &str) -> String {
    let got = raw.run_ok(sql, Duration::from_secs(10)).await;
    let row = got.iter().find(|(t, _)| *t == b'D').expect("a row");
    support::raw::first_column(&row.1)
}

/// As on a direct connection, `RESET` of a startup parameter (and `RESET ALL`, `SET x TO
/// DEFAULT`) returns to the client's startup value at once, inside the transaction too, and
/// the client is told that value. Another client shares the one server connection throughout.
#[tokio::test]
async fn reset_returns_to_the_startup_value_at_once_as_on_a_direct_connection() {
    let topo = Topology::builder().build().expect("topology");
    let trust = support::start_trust(
        &topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let mut a = RawConn::connect(trust.addr()).await;
    a.send(&startup_message(&[
        ("user", topo.user()),
        ("database", topo.database()),
        ("application_name", "alpha"),
        ("options", "-c DateStyle=sql,dmy"),
    ]))
    .await;
    a.until_ready(Duration::from_secs(10)).await;
    let other = trust.connect(&topo).await;
    let t = Duration::from_secs(10);

    a.run_ok("SET DateStyle = ISO", t).await;
    a.run_ok("BEGIN", t).await;
    a.run_ok("RESET DateStyle", t).await;
    assert_eq!(
        show(&mut a, "SHOW DateStyle").await,
        "SQL, DMY",
        "in a block"
    );
    a.run_ok("COMMIT", t).await;
    other.batch_execute("SELECT 1").await.expect("other");
    assert_eq!(show(&mut a, "SHOW DateStyle").await, "SQL, DMY");

    a.run_ok("SET DateStyle = ISO", t).await;
    a.run_ok("RESET DateStyle", t).await;
    assert_eq!(show(&mut a, "SHOW DateStyle").await, "SQL, DMY", "plain");
    a.run_ok("SET DateStyle = ISO", t).await;
    a.run_ok("SET DateStyle TO DEFAULT", t).await;
    assert_eq!(
        show(&mut a, "SHOW DateStyle").await,
        "SQL, DMY",
        "TO DEFAULT"
    );
    a.run_ok("SET DateStyle = ISO", t).await;
    a.run_ok("reset datestyle; -- back", t).await;
    assert_eq!(
        show(&mut a, "SHOW DateStyle").await,
        "SQL, DMY",
        "a comment"
    );

    // RESET ALL: the client is told its own application_name, not the server's default.
    a.run_ok("SET application_name = 'x'; SET DateStyle = ISO", t)
        .await;
    let got = a.run_ok("RESET ALL", t).await;
    assert_eq!(
        last_status(&got, "application_name").as_deref(),
        Some("alpha")
    );
    assert_eq!(last_status(&got, "DateStyle").as_deref(), Some("SQL, DMY"));
    assert_eq!(show(&mut a, "SHOW application_name").await, "alpha");
    a.run_ok("BEGIN; SET application_name = 'y'; COMMIT", t)
        .await;
    let got = a.run_ok("RESET application_name", t).await;
    assert_eq!(
        last_status(&got, "application_name").as_deref(),
        Some("alpha")
    );
    // A rolled-back RESET leaves the SET, as directly.
    a.run_ok("SET application_name = 'z'", t).await;
    a.run_ok("BEGIN", t).await;
    a.run_ok("RESET application_name", t).await;
    let got = a.run_ok("ROLLBACK", t).await;
    assert_eq!(last_status(&got, "application_name").as_deref(), Some("z"));
    assert_eq!(show(&mut a, "SHOW application_name").await, "z");
    other.batch_execute("SELECT 1").await.expect("other");
    assert_eq!(show(&mut a, "SHOW application_name").await, "z");
    let row = other
        .query_one("SHOW application_name", &[])
        .await
        .expect("other");
    assert_eq!(row.get::<_, String>(0), "");
}
