//! Startup parameters as the client sees them: the greeting's ParameterStatus values, and a
//! startup setting the server refuses, each compared with a direct connection to PostgreSQL.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{startup_message, sync, RawConn};
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

/// One client logged in with the same startup packet twice: straight to PostgreSQL and through
/// shardgate, to run the same messages on both and compare every reply.
struct Twins {
    direct: RawConn,
    proxied: RawConn,
}

/// What a reply says, comparable between a direct and a proxied connection: every message as
/// is, except an error, reduced to its SQLSTATE and message.
fn comparable(got: &[(u8, Vec<u8>)]) -> Vec<(char, String)> {
    got.iter()
        .map(|(tag, body)| {
            let text = if *tag == b'E' {
                format!(
                    "{} {}",
                    support::raw::error_field(body, b'C').unwrap_or_default(),
                    support::raw::error_field(body, b'M').unwrap_or_default()
                )
            } else {
                String::from_utf8_lossy(body).into_owned()
            };
            (char::from(*tag), text)
        })
        .collect()
}

impl Twins {
    async fn login(topo: &Topology, proxy: &Proxy, params: &[(&str, &str)]) -> Twins {
        let mut packet = vec![("user", topo.user()), ("database", topo.database())];
        packet.extend_from_slice(params);
        let direct_addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], topo.shards[0].primary.port()));
        let mut direct = RawConn::connect(direct_addr).await;
        let mut proxied = RawConn::connect(proxy.addr()).await;
        for conn in [&mut direct, &mut proxied] {
            conn.send(&startup_message(&packet)).await;
            let greeting = conn.until_ready(Duration::from_secs(10)).await;
            assert!(greeting.iter().all(|(t, _)| *t != b'E'), "{greeting:?}");
        }
        Twins { direct, proxied }
    }

    /// Sends `bytes` to both, reads each reply up to ReadyForQuery, and asserts they are the
    /// same; returns the reply.
    async fn same(&mut self, bytes: &[u8], what: &str) -> Vec<(char, String)> {
        let t = Duration::from_secs(10);
        self.direct.send(bytes).await;
        let want = comparable(&self.direct.until_ready(t).await);
        self.proxied.send(bytes).await;
        let got = comparable(&self.proxied.until_ready(t).await);
        assert_eq!(got, want, "{what}");
        got
    }

    async fn query(&mut self, sql: &str) -> Vec<(char, String)> {
        self.same(&support::raw::query(sql), sql).await
    }
}

/// Parse of a named statement, then Sync.
fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    let mut out = support::raw::message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    out.extend(sync());
    out
}

/// Bind of a named statement to the unnamed portal, Execute, Sync.
fn run_named(name: &str) -> Vec<u8> {
    let mut out = support::raw::message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
    out.extend(support::raw::message(b'E', b"\0\0\0\0\0"));
    out.extend(sync());
    out
}

/// The values a reply's ParameterStatus messages report for `name`, in order.
fn reported(got: &[(char, String)], name: &str) -> Vec<String> {
    got.iter()
        .filter(|(t, _)| *t == 'S')
        .filter_map(|(_, body)| {
            let mut parts = body.split('\0');
            (parts.next() == Some(name)).then(|| parts.next().unwrap_or("").to_owned())
        })
        .collect()
}

const STARTUP: [(&str, &str); 2] = [
    ("application_name", "alpha"),
    ("options", "-c search_path=s1 -c DateStyle=sql,dmy"),
];

const SHOW_ALL: &str = "SHOW search_path; SHOW application_name; SHOW DateStyle";
const SET_ALL: &str = "SET search_path = x; SET application_name = 'x'; SET DateStyle = ISO";

fn trust_proxy(topo: &Topology) -> Proxy {
    support::start_trust(
        topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    )
}

/// `RESET` in a longer simple query, and sent through the extended protocol, returns to the
/// startup value at once, with the ParameterStatus PostgreSQL sends; a failure or a ROLLBACK
/// undoes it as on PostgreSQL. Another client shares the one server connection throughout.
#[tokio::test]
async fn reset_anywhere_returns_to_the_startup_value_as_on_a_direct_connection() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    let proxy = trust_proxy(&topo);
    let mut c = Twins::login(&topo, &proxy, &STARTUP).await;
    let other = proxy.connect(&topo).await;

    c.query(SET_ALL).await;
    let got = c.query("RESET search_path; SHOW search_path").await;
    assert!(
        got.contains(&('D', "\0\u{1}\0\0\0\u{2}s1".to_owned())),
        "{got:?}"
    );
    let got = c
        .query("SELECT 1; RESET application_name; SHOW application_name")
        .await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    c.query(SET_ALL).await;
    let got = c
        .query(&format!("SET search_path = y; RESET ALL; {SHOW_ALL}"))
        .await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    assert_eq!(reported(&got, "DateStyle"), ["SQL, DMY"]);
    other.batch_execute("SELECT 1").await.expect("other");
    c.query(SHOW_ALL).await;

    // A later statement fails: the RESET is undone with the request's implicit transaction.
    c.query(SET_ALL).await;
    c.query("RESET ALL; SELECT 1/0").await;
    c.query(SHOW_ALL).await;
    // In a block: seen at once, undone by ROLLBACK (and by ROLLBACK TO), kept by COMMIT.
    c.query("BEGIN; RESET ALL; SHOW search_path").await;
    c.query("SHOW application_name").await;
    let got = c.query("ROLLBACK").await;
    assert_eq!(reported(&got, "application_name"), ["x"]);
    c.query(SHOW_ALL).await;
    c.query("BEGIN; SAVEPOINT s; RESET search_path; SHOW search_path; ROLLBACK TO s; SHOW search_path; RESET application_name").await;
    c.query("COMMIT").await;
    other.batch_execute("SELECT 1").await.expect("other");
    c.query(SHOW_ALL).await;

    // The extended protocol: the unnamed statement, a pipeline, a named statement run twice.
    c.query(SET_ALL).await;
    let mut reset = support::raw::extended("RESET search_path");
    reset.extend(sync());
    c.same(&reset, "extended RESET").await;
    c.query(SHOW_ALL).await;
    let mut pipeline = support::raw::extended("RESET ALL");
    pipeline.extend(support::raw::extended("SHOW application_name"));
    pipeline.extend(sync());
    let got = c.same(&pipeline, "pipelined RESET ALL").await;
    assert!(
        got.iter().any(|(t, b)| *t == 'D' && b.ends_with("alpha")),
        "{got:?}"
    );
    c.query(SET_ALL).await;
    c.same(&parse_named("r", "RESET application_name"), "parse")
        .await;
    let got = c.same(&run_named("r"), "run r").await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    c.query("SET application_name = 'z'").await;
    other.batch_execute("SELECT 1").await.expect("other");
    let got = c.same(&run_named("r"), "run r again").await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    c.same(&parse_named("d", "SET DateStyle TO DEFAULT"), "parse")
        .await;
    c.same(&run_named("d"), "run d").await;
    c.query(SHOW_ALL).await;
    // In a block, then ROLLBACK.
    c.query("BEGIN; SET search_path = w").await;
    c.same(&reset, "extended RESET in a block").await;
    c.query("SHOW search_path").await;
    c.query("ROLLBACK").await;
    c.query(SHOW_ALL).await;
    // The unnamed statement the client parsed before still runs after a RESET through a
    // named one.
    let mut parse = support::raw::message(b'P', b"\0SHOW search_path\0\0\0");
    parse.extend(sync());
    c.same(&parse, "parse unnamed").await;
    c.same(&run_named("r"), "run r after the unnamed").await;
    let got = c.same(&run_named(""), "run the unnamed").await;
    assert!(got.iter().any(|(t, _)| *t == 'D'), "{got:?}");

    let row = other
        .query_one("SHOW search_path", &[])
        .await
        .expect("other");
    assert_eq!(row.get::<_, String>(0), "\"$user\", public");
}

/// `DISCARD ALL`, as a simple query or through the extended protocol, leaves the client's
/// startup values (and tells it so) and no prepared statement, as on PostgreSQL; on the next
/// server connection it gets, the startup values are re-applied.
#[tokio::test]
async fn discard_all_returns_to_the_startup_values_as_on_a_direct_connection() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    let proxy = trust_proxy(&topo);
    let mut c = Twins::login(&topo, &proxy, &STARTUP).await;
    let other = proxy.connect(&topo).await;

    c.query(SET_ALL).await;
    c.same(&parse_named("ps", "SELECT 2"), "parse ps").await;
    let got = c.query("DISCARD ALL").await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    assert_eq!(reported(&got, "DateStyle"), ["SQL, DMY"]);
    c.query(SHOW_ALL).await;
    let got = c.same(&run_named("ps"), "run ps").await;
    assert!(
        got.iter().any(|(t, b)| *t == 'E' && b.starts_with("26000")),
        "{got:?}"
    );
    other
        .batch_execute("SET search_path = q; SELECT 1")
        .await
        .expect("other");
    c.query(SHOW_ALL).await;

    // Refused in a block and in a longer text, as directly.
    c.query(SET_ALL).await;
    c.query("BEGIN").await;
    c.query("DISCARD ALL").await;
    c.query("ROLLBACK").await;
    c.query("SELECT 1; DISCARD ALL").await;
    c.query(SHOW_ALL).await;

    // Through the extended protocol, as drivers' pools send it.
    c.same(&parse_named("ps", "SELECT 2"), "parse ps").await;
    let mut discard = support::raw::extended("DISCARD ALL");
    discard.extend(sync());
    let got = c.same(&discard, "extended DISCARD ALL").await;
    assert_eq!(reported(&got, "application_name"), ["alpha"]);
    c.query(SHOW_ALL).await;
    let got = c.same(&run_named("ps"), "run ps").await;
    assert!(
        got.iter().any(|(t, b)| *t == 'E' && b.starts_with("26000")),
        "{got:?}"
    );
    c.same(&parse_named("dd", "DISCARD ALL"), "parse dd").await;
    c.query(SET_ALL).await;
    c.same(&run_named("dd"), "run dd").await;
    other
        .batch_execute("RESET ALL; SELECT 1")
        .await
        .expect("other");
    c.query(SHOW_ALL).await;
}

/// `SET LOCAL x TO DEFAULT` of a startup parameter gives the startup value for the rest of the
/// transaction, as on PostgreSQL (the hunt of session 10 found the server's default: another
/// `search_path`); outside a transaction block it warns, and through the extended protocol
/// still holds until the Sync, as there.
#[tokio::test]
async fn set_local_to_default_gives_the_startup_value_as_on_a_direct_connection() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    let proxy = trust_proxy(&topo);
    let mut c = Twins::login(&topo, &proxy, &STARTUP).await;
    let other = proxy.connect(&topo).await;

    c.query(SET_ALL).await;
    let got = c
        .query("BEGIN; SET LOCAL search_path TO DEFAULT; SHOW search_path")
        .await;
    assert!(
        got.contains(&('D', "\0\u{1}\0\0\0\u{2}s1".to_owned())),
        "{got:?}"
    );
    let got = c.query("SET LOCAL DateStyle = DEFAULT").await;
    assert_eq!(reported(&got, "DateStyle"), ["SQL, DMY"]);
    c.query(SHOW_ALL).await;
    c.query("COMMIT").await;
    c.query(SHOW_ALL).await;
    // In the implicit block of a longer text; alone outside a block, a warning and no change.
    c.query("SET LOCAL search_path TO DEFAULT; SHOW search_path")
        .await;
    c.query("SET LOCAL search_path TO DEFAULT").await;
    c.query(SHOW_ALL).await;
    other.batch_execute("SELECT 1").await.expect("other");

    // The extended protocol: in a block, then outside one.
    let mut local = support::raw::extended("SET LOCAL search_path TO DEFAULT");
    local.extend(support::raw::extended("SHOW search_path"));
    local.extend(sync());
    c.query("BEGIN").await;
    c.same(&local, "extended SET LOCAL in a block").await;
    c.query("SHOW search_path").await;
    c.query("ROLLBACK").await;
    c.same(&local, "extended SET LOCAL outside a block").await;
    c.query(SHOW_ALL).await;
}
