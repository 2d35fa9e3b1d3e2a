//! Client authentication to shardgate (SCRAM, md5, trust, TLS) and shardgate's own login
//! to backends that ask for SCRAM, md5, cleartext password or nothing.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, startup_message, RawConn};
use support::{connect, run_tool, Proxy, ProxyOptions};
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(10);

fn conn_str(proxy: &Proxy, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
        proxy.port
    )
}

/// Connects and expects an ErrorResponse; returns (SQLSTATE, message).
async fn login_error(conn_str: &str) -> (SqlState, String) {
    let err = tokio::time::timeout(WAIT, connect(conn_str))
        .await
        .expect("login hung")
        .expect_err("login succeeded");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err:?}"));
    (db.code().clone(), db.message().to_owned())
}

async fn current_user(conn_str: &str) -> String {
    let client = tokio::time::timeout(WAIT, connect(conn_str))
        .await
        .expect("login hung")
        .unwrap_or_else(|e| panic!("login failed: {e:?}"));
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0)
}

/// Extra users that exist on the backend too (shardgate logs in to it with their password).
fn with_md5_and_trust_users(topology: &Topology) -> ProxyOptions {
    let primary = &topology.shards[0].primary;
    primary
        .sql(
            "app",
            "CREATE ROLE md5user LOGIN PASSWORD 'md5-secret'; \
             CREATE ROLE trustuser LOGIN PASSWORD 'trust-secret'",
        )
        .expect("create roles");
    ProxyOptions {
        extra_users: "  - name: md5user\n    password: md5-secret\n    auth: md5\n\
                      \x20 - name: trustuser\n    password: trust-secret\n    auth: trust\n"
            .to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn scram_login_works() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    assert_eq!(current_user(&proxy.conn_str(&topology)).await, "app");
}

#[tokio::test]
async fn wrong_password_unknown_user_and_wrong_database() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    assert_eq!(
        login_error(&conn_str(&proxy, "app", "wrong", "app")).await,
        (
            SqlState::INVALID_PASSWORD,
            "password authentication failed for user \"app\"".to_owned()
        )
    );
    // Same code and wording as a wrong password: nothing tells that the user does not exist.
    assert_eq!(
        login_error(&conn_str(&proxy, "nobody", "whatever", "app")).await,
        (
            SqlState::INVALID_PASSWORD,
            "password authentication failed for user \"nobody\"".to_owned()
        )
    );
    assert_eq!(
        login_error(&conn_str(&proxy, "app", topology.password(), "x")).await,
        (
            SqlState::INVALID_CATALOG_NAME,
            "database \"x\" does not exist".to_owned()
        )
    );
    // Good credentials still work afterwards.
    assert_eq!(current_user(&proxy.conn_str(&topology)).await, "app");
}

#[tokio::test]
async fn startup_without_user_is_refused_with_28000() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    for params in [
        vec![("database", "app")],
        vec![("user", ""), ("database", "app")],
    ] {
        let mut conn = RawConn::connect(proxy.addr()).await;
        conn.send(&startup_message(&params)).await;
        let (tag, body) = conn
            .next(WAIT)
            .await
            .expect("closed without an ErrorResponse");
        assert_eq!(tag, b'E');
        assert_eq!(error_field(&body, b'C').as_deref(), Some("28000"));
        assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
        assert!(
            conn.closed_within(WAIT).await.is_ok(),
            "connection left open"
        );
    }
}

#[tokio::test]
async fn md5_and_trust_users_log_in() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(&topology, with_md5_and_trust_users(&topology));
    assert_eq!(
        current_user(&conn_str(&proxy, "md5user", "md5-secret", "app")).await,
        "md5user"
    );
    assert_eq!(
        login_error(&conn_str(&proxy, "md5user", "wrong", "app")).await,
        (
            SqlState::INVALID_PASSWORD,
            "password authentication failed for user \"md5user\"".to_owned()
        )
    );
    // trust: no password at all, or a wrong one (never asked for).
    let no_password = format!(
        "host=127.0.0.1 port={} user=trustuser dbname=app",
        proxy.port
    );
    assert_eq!(current_user(&no_password).await, "trustuser");
    assert_eq!(
        current_user(&conn_str(&proxy, "trustuser", "ignored", "app")).await,
        "trustuser"
    );
    // And with psql (libpq).
    let port = proxy.port.to_string();
    for (user, password) in [("md5user", "md5-secret"), ("trustuser", "")] {
        let (ok, out, err) = run_tool(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                user,
                "-d",
                "app",
                "-c",
                "SELECT current_user",
            ],
            &[("PGPASSWORD", password), ("PGCONNECT_TIMEOUT", "10")],
        );
        assert!(ok, "psql as {user} failed: {err}");
        assert_eq!(out.trim(), user);
    }
    let (ok, _, err) = run_tool(
        "psql",
        &[
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "md5user",
            "-d",
            "app",
            "-c",
            "SELECT 1",
        ],
        &[("PGPASSWORD", "wrong"), ("PGCONNECT_TIMEOUT", "10")],
    );
    assert!(
        !ok && err.contains("password authentication failed for user \"md5user\""),
        "{err}"
    );
}

async fn backend_auth_works(method: &str) {
    let topology = Topology::builder().auth(method).build().expect("topology");
    let proxy = Proxy::start(&topology);
    let client = proxy.connect(&topology).await;
    let row = client
        .query_one("SELECT current_user::text, 40 + 2", &[])
        .await
        .unwrap_or_else(|e| panic!("backend auth {method}: {e:?}"));
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("app".to_owned(), 42)
    );
}

#[tokio::test]
async fn backend_asking_md5() {
    backend_auth_works("md5").await;
}

#[tokio::test]
async fn backend_asking_cleartext_password() {
    backend_auth_works("password").await;
}

#[tokio::test]
async fn backend_asking_nothing() {
    backend_auth_works("trust").await;
}

#[tokio::test]
async fn backend_refusing_login_is_reported() {
    let topology = Topology::builder()
        .auth("reject")
        .build()
        .expect("topology");
    let proxy = Proxy::start(&topology);
    let (code, message) = login_error(&proxy.conn_str(&topology)).await;
    assert_eq!(
        code,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "pg_hba reject is 28000 from the server: {message}"
    );
    assert!(
        message.contains("shardgate could not log in to the server"),
        "{message}"
    );
}

fn psql_select_1(proxy: &Proxy, topology: &Topology, sslmode: &str) -> (bool, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname={} sslmode={sslmode} connect_timeout=10",
        proxy.port,
        topology.user(),
        topology.database()
    );
    run_tool(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            &conninfo,
            "-c",
            "SELECT 1",
            "-c",
            "\\conninfo",
        ],
        &[("PGPASSWORD", topology.password())],
    )
}

#[tokio::test]
async fn tls_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let generated = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match generated {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipping tls_when_configured: openssl is not available ({e})");
            return;
        }
    }
    let topology = Topology::builder().build().expect("topology");
    let options = ProxyOptions {
        extra_yaml: format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let (ok, out, err) = psql_select_1(&proxy, &topology, "require");
    assert!(ok, "psql sslmode=require failed: {err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"));
    assert!(out.contains("SSL connection"), "not encrypted: {out}");
    let client = connect(&format!("{} sslmode=disable", proxy.conn_str(&topology)))
        .await
        .expect("plain connection next to TLS");
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn no_tls_configured_refuses_require_and_allows_prefer() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    let (ok, _, err) = psql_select_1(&proxy, &topology, "require");
    assert!(!ok, "sslmode=require succeeded without TLS configured");
    assert!(err.contains("server does not support SSL"), "{err}");
    let (ok, out, err) = psql_select_1(&proxy, &topology, "prefer");
    assert!(ok, "sslmode=prefer failed: {err}");
    assert_eq!(out.lines().next(), Some("1"));
    assert!(!out.contains("SSL connection"), "{out}");
}
