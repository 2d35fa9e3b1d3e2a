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

#[tokio::test]
async fn the_greeting_reports_startup_settings_as_the_server_spells_them() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
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
    let topo = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let direct = support::direct_conn_str(&topo, &topo.shards[0].primary);
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
            checkout_timeout_ms: 300,
            ..ProxyOptions::default()
        },
    );
    let holder = proxy.connect(&topo).await;
    holder.batch_execute("BEGIN; SELECT 1").await.expect("hold");
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
