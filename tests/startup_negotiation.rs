//! A client's first packets, compared with what PostgreSQL 15 does with them: a cancel and
//! an SSLRequest are served even at `max_client_connections` (the limit is checked at the
//! startup packet), a wrong database is refused only after authentication completed, and
//! startup packets PostgreSQL explains (an unknown protocol version, a bad layout, a repeated
//! negotiation) are explained the same way rather than closed silently.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, login_trust, message, startup_message, RawConn};
use support::{connect, run_tool, start_trust, Proxy, ProxyOptions};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(5);
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// A StartupMessage asking for protocol `major.minor`.
fn startup_with_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = startup_message(params);
    packet[4..6].copy_from_slice(&major.to_be_bytes());
    packet[6..8].copy_from_slice(&minor.to_be_bytes());
    packet
}

/// The one-byte answer to an SSLRequest or GSSENCRequest.
async fn negotiation_answer(conn: &mut RawConn) -> u8 {
    let mut byte = [0u8; 1];
    timeout(WAIT, conn.stream.read_exact(&mut byte))
        .await
        .expect("no answer to the negotiation request")
        .expect("closed instead of answering the negotiation request");
    byte[0]
}

/// The next message must be a FATAL ErrorResponse with this code and message, and the
/// connection must close after it.
async fn assert_fatal_then_closed(conn: &mut RawConn, code: &str, text: &str) {
    let (tag, body) = conn.next(WAIT).await.expect("closed without an error");
    assert_eq!(tag, b'E', "{:?}", String::from_utf8_lossy(&body));
    let fields = support::raw::error_fields(&body);
    assert_eq!(
        error_field(&body, b'S').as_deref(),
        Some("FATAL"),
        "{fields:?}"
    );
    assert_eq!(
        error_field(&body, b'C').as_deref(),
        Some(code),
        "{fields:?}"
    );
    assert_eq!(
        error_field(&body, b'M').as_deref(),
        Some(text),
        "{fields:?}"
    );
    let after = conn
        .closed_within(WAIT)
        .await
        .expect("left open after FATAL");
    assert!(
        after.is_empty(),
        "messages after the FATAL error: {after:?}"
    );
}

fn limited(max_client_connections: u32) -> ProxyOptions {
    ProxyOptions {
        max_client_connections,
        ..ProxyOptions::default()
    }
}

#[tokio::test]
async fn cancel_is_served_at_the_client_limit() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start_with(&topology, limited(2));
    let runner = proxy.connect(&topology).await;
    let _other = proxy.connect(&topology).await;
    let token = runner.cancel_token();
    let sleeping = tokio::spawn(async move {
        let result = runner.simple_query("SELECT pg_sleep(30)").await;
        (runner, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    timeout(WAIT, token.cancel_query(tokio_postgres::NoTls))
        .await
        .expect("cancel hung")
        .expect("cancel request refused");
    let (_runner, result) = timeout(WAIT, sleeping)
        .await
        .expect("the query was not cancelled")
        .expect("query task panicked");
    let err = result.expect_err("the query completed");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    // The limit itself still holds.
    let refused = timeout(WAIT, connect(&proxy.conn_str(&topology)))
        .await
        .expect("hung")
        .expect_err("a third client was accepted");
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
}

#[tokio::test]
async fn negotiation_at_the_client_limit_is_answered_then_53300() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, limited(1));
    let mut holder = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(&GSSENC_REQUEST).await;
    assert_eq!(negotiation_answer(&mut conn).await, b'N');
    conn.send(&SSL_REQUEST).await;
    assert_eq!(negotiation_answer(&mut conn).await, b'N');
    conn.send(&startup_message(&[
        ("user", topology.user()),
        ("database", topology.database()),
    ]))
    .await;
    assert_fatal_then_closed(&mut conn, "53300", "sorry, too many clients already").await;
    holder.run_ok("SELECT 1", WAIT).await;
}

#[tokio::test]
async fn wrong_database_is_refused_after_authentication_ok() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(&startup_message(&[
        ("user", topology.user()),
        ("database", "nodb"),
    ]))
    .await;
    let (tag, body) = conn.next(WAIT).await.expect("closed at once");
    assert_eq!((tag, body.as_slice()), (b'R', &[0u8, 0, 0, 0][..]));
    assert_fatal_then_closed(&mut conn, "3D000", "database \"nodb\" does not exist").await;
}

#[tokio::test]
async fn wrong_database_never_reveals_a_user_or_password() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    let attempt = |user: &str, password: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=nodb",
            proxy.port
        )
    };
    for (user, password, code) in [
        ("app", "wrong", SqlState::INVALID_PASSWORD),
        ("nobody", "wrong", SqlState::INVALID_PASSWORD),
        ("app", topology.password(), SqlState::INVALID_CATALOG_NAME),
    ] {
        let err = timeout(WAIT, connect(&attempt(user, password)))
            .await
            .expect("hung")
            .expect_err("logged in to a database that does not exist");
        assert_eq!(err.code(), Some(&code), "{user}/{password}: {err:?}");
    }
}

#[tokio::test]
async fn unsupported_protocol_version_gets_0a000() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(&startup_with_version(4, 0, &[("user", topology.user())]))
        .await;
    assert_fatal_then_closed(
        &mut conn,
        "0A000",
        "unsupported frontend protocol 4.0: server supports 3.0 to 3.0",
    )
    .await;
}

#[tokio::test]
async fn newer_minor_version_is_negotiated_down() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(&startup_with_version(
        3,
        99,
        &[("user", topology.user()), ("database", topology.database())],
    ))
    .await;
    let greeting = conn.until_ready(WAIT).await;
    let (tag, body) = &greeting[0];
    // NegotiateProtocolVersion: newest minor 3.0, no unrecognized options.
    assert_eq!(
        (*tag, body.as_slice()),
        (b'v', &[0u8, 3, 0, 0, 0, 0, 0, 0][..])
    );
    assert_eq!(greeting[1], (b'R', vec![0, 0, 0, 0]));
    conn.run_ok("SELECT 1", WAIT).await;
}

#[tokio::test]
async fn startup_packet_without_terminator_gets_08p01() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    let mut conn = RawConn::connect(proxy.addr()).await;
    let mut packet = startup_message(&[("user", topology.user())]);
    packet.pop();
    let len = i32::try_from(packet.len()).expect("small").to_be_bytes();
    packet[..4].copy_from_slice(&len);
    conn.send(&packet).await;
    assert_fatal_then_closed(
        &mut conn,
        "08P01",
        "invalid startup packet layout: expected terminator as last byte",
    )
    .await;
}

#[tokio::test]
async fn unknown_message_type_is_refused_before_its_body_arrives() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    // Announces a megabyte and sends a few bytes of it.
    let mut bad = vec![b'x'];
    bad.extend_from_slice(&1_000_000i32.to_be_bytes());
    bad.extend_from_slice(b"hello");
    conn.send(&bad).await;
    assert_fatal_then_closed(&mut conn, "08P01", "invalid frontend message type 120").await;
    // A startup packet sent again after login reads as type 0, refused as soon.
    let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    conn.send(&startup_message(&[("user", topology.user())])[..6])
        .await;
    assert_fatal_then_closed(&mut conn, "08P01", "invalid frontend message type 0").await;
    let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    conn.run_ok("SELECT 1", WAIT).await;
    // A known type still waits for its whole body.
    conn.send(&message(b'Q', b"SELECT 2\0")[..7]).await;
    conn.send(&message(b'Q', b"SELECT 2\0")[7..]).await;
    conn.until_ready(WAIT).await;
}

#[tokio::test]
async fn the_same_negotiation_request_twice_gets_0a000() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    for (request, minor) in [(GSSENC_REQUEST, 5680), (SSL_REQUEST, 5679)] {
        let mut conn = RawConn::connect(proxy.addr()).await;
        conn.send(&request).await;
        assert_eq!(negotiation_answer(&mut conn).await, b'N');
        conn.send(&request).await;
        let text =
            format!("unsupported frontend protocol 1234.{minor}: server supports 3.0 to 3.0");
        assert_fatal_then_closed(&mut conn, "0A000", &text).await;
    }
    // Either order of the two requests is a normal negotiation.
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(&SSL_REQUEST).await;
    assert_eq!(negotiation_answer(&mut conn).await, b'N');
    conn.send(&GSSENC_REQUEST).await;
    assert_eq!(negotiation_answer(&mut conn).await, b'N');
    conn.send(&startup_message(&[
        ("user", topology.user()),
        ("database", topology.database()),
    ]))
    .await;
    conn.until_ready(WAIT).await;
    conn.run_ok("SELECT 1", WAIT).await;
}

/// A self-signed ECDSA P-256 / SHA-256 certificate and key in `dir`, or None when openssl is
/// unavailable.
fn self_signed(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    self_signed_with(
        dir,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    )
}

/// A self-signed certificate made with these extra `openssl req` arguments.
fn self_signed_with(
    dir: &std::path::Path,
    args: &[&str],
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let generated = std::process::Command::new("openssl")
        .args(["req", "-x509"])
        .args(args)
        .args(["-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match generated {
        Ok(out) if out.status.success() => Some((cert, key)),
        Ok(out) => panic!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipping: openssl is not available ({e})");
            None
        }
    }
}

fn psql(proxy: &Proxy, topology: &Topology, db: &str, sslmode: &str) -> (bool, String) {
    let (ok, _, err) = psql_out(proxy, topology, &format!("dbname={db} sslmode={sslmode}"));
    (ok, err)
}

/// psql `SELECT 1` with these extra connection settings: (success, stdout, stderr).
fn psql_out(proxy: &Proxy, topology: &Topology, settings: &str) -> (bool, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} connect_timeout=10 {settings}",
        proxy.port,
        topology.user(),
    );
    run_tool(
        "psql",
        &["-X", "-A", "-t", &conninfo, "-c", "SELECT 1"],
        &[("PGPASSWORD", topology.password())],
    )
}

/// libpq's `channel_binding=require` over TLS: SCRAM-SHA-256-PLUS bound to the certificate's
/// hash, SHA-256 or, for a certificate signed with SHA-384, SHA-384. A wrong password is still
/// 28P01, and without TLS libpq refuses to go on.
#[tokio::test]
async fn channel_binding_require_works_over_tls() {
    let ecdsa_sha256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let rsa_sha384: &[&str] = &["-newkey", "rsa:2048", "-sha384"];
    let topology = Topology::builder().build().expect("topology");
    for args in [ecdsa_sha256, rsa_sha384] {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some((cert, key)) = self_signed_with(dir.path(), args) else {
            return;
        };
        let options = ProxyOptions {
            extra_yaml: format!(
                "tls:\n  cert: {}\n  key: {}\n",
                cert.display(),
                key.display()
            ),
            ..ProxyOptions::default()
        };
        let proxy = Proxy::start_with(&topology, options);
        let db = format!("dbname={}", topology.database());
        let (ok, out, err) = psql_out(
            &proxy,
            &topology,
            &format!("{db} sslmode=require channel_binding=require"),
        );
        assert!(ok, "{args:?}: {err}");
        assert_eq!(out.trim(), "1");
        let (ok, out, err) = psql_out(
            &proxy,
            &topology,
            &format!("{db} sslmode=require channel_binding=disable"),
        );
        assert!(ok, "{args:?} without binding: {err}");
        assert_eq!(out.trim(), "1");
        let (ok, _, err) = psql_out(
            &proxy,
            &topology,
            &format!("{db} sslmode=require channel_binding=require password=wrong"),
        );
        assert!(!ok);
        assert!(
            err.contains("password authentication failed for user"),
            "{args:?}: {err}"
        );
        let (ok, _, err) = psql_out(
            &proxy,
            &topology,
            &format!("{db} sslmode=disable channel_binding=require"),
        );
        assert!(!ok, "bound without TLS?");
        assert!(err.contains("channel binding"), "{err}");
    }
}

/// libpq over TLS: a wrong database is reported once (not retried without TLS, as libpq
/// does for an error before authentication completed with sslmode=prefer), and a client
/// at the limit reads "too many clients", not a failed SSL exchange.
#[tokio::test]
async fn tls_clients_read_the_real_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((cert, key)) = self_signed(dir.path()) else {
        return;
    };
    let topology = Topology::builder().build().expect("topology");
    let options = ProxyOptions {
        max_client_connections: 1,
        extra_yaml: format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_with(&topology, options);
    let (ok, err) = psql(&proxy, &topology, "nodb", "prefer");
    assert!(!ok, "logged in to a database that does not exist");
    assert_eq!(
        err.matches("database \"nodb\" does not exist").count(),
        1,
        "{err}"
    );
    // The refused login's slot is freed as its task ends: poll briefly.
    let deadline = tokio::time::Instant::now() + WAIT;
    let _holder = loop {
        match connect(&proxy.conn_str(&topology)).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot never freed: {e:?}"),
        }
    };
    let (ok, err) = psql(&proxy, &topology, topology.database(), "require");
    assert!(!ok, "a client over the limit logged in");
    assert!(err.contains("sorry, too many clients already"), "{err}");
    assert!(!err.contains("SSL"), "{err}");
}
