//! Malformed client bytes, written by hand on raw sockets: shardgate answers protocol
//! violations with 08P01 and closes that one connection, never allocates what a length
//! field claims, and keeps serving every other client meanwhile.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, login_trust, message, startup_message, RawConn};
use support::{start_trust, Proxy, ProxyOptions};

const WAIT: Duration = Duration::from_secs(5);

/// A tokio-postgres client that keeps querying until stopped; any failure fails the test.
struct HealthyClient {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl HealthyClient {
    async fn start(proxy: &Proxy, topology: &Topology) -> HealthyClient {
        let client = proxy.connect(topology).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut ok = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let n = i32::try_from(ok % 1000).unwrap_or(0);
                let row = tokio::time::timeout(WAIT, client.query_one("SELECT $1::int + 1", &[&n]))
                    .await
                    .map_err(|_| "healthy query timed out".to_owned())?
                    .map_err(|e| format!("healthy query failed: {e}"))?;
                if row.get::<_, i32>(0) != n + 1 {
                    return Err("healthy query returned a wrong value".to_owned());
                }
                ok += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(ok)
        });
        HealthyClient { stop, task }
    }

    /// Stops the loop and asserts it ran without a single failure.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let ok = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("healthy client did not stop")
            .expect("healthy client panicked")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok > 0, "healthy client never completed a query");
    }
}

async fn setup() -> (Topology, Proxy) {
    let topology = Topology::builder().build().expect("topology");
    let proxy = start_trust(&topology, ProxyOptions::default());
    (topology, proxy)
}

/// The proxy still accepts, authenticates and serves a fresh raw client, and its health
/// endpoint answers.
async fn assert_still_serving(proxy: &Proxy, topology: &Topology) {
    let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    conn.send(&support::raw::query("SELECT 7")).await;
    let reply = conn.until_ready(WAIT).await;
    assert!(
        reply.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"7")),
        "{reply:?}"
    );
    let (status, body) = proxy.admin_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// After a good login, `bad` must get one FATAL ErrorResponse with 08P01, then a close.
async fn assert_rejected_after_login(bad: &[u8]) {
    let (topology, proxy) = setup().await;
    let healthy = HealthyClient::start(&proxy, &topology).await;
    let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
    conn.send(bad).await;
    let (tag, body) = conn
        .next(WAIT)
        .await
        .expect("closed without an ErrorResponse");
    assert_eq!(
        tag,
        b'E',
        "expected ErrorResponse, got {:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        error_field(&body, b'C').as_deref(),
        Some("08P01"),
        "{:?}",
        support::raw::error_fields(&body)
    );
    assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
    let after = conn
        .closed_within(WAIT)
        .await
        .expect("connection left open after 08P01");
    assert!(
        after.is_empty(),
        "messages after the fatal error: {after:?}"
    );
    assert_still_serving(&proxy, &topology).await;
    healthy.finish().await;
}

#[tokio::test]
async fn http_request_instead_of_startup_is_closed() {
    let (topology, proxy) = setup().await;
    let healthy = HealthyClient::start(&proxy, &topology).await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let seen = conn
        .closed_within(WAIT)
        .await
        .expect("HTTP garbage left the connection open");
    // An ErrorResponse before closing is allowed; anything else is not.
    for (tag, body) in &seen {
        assert_eq!(*tag, b'E', "unexpected reply to garbage: {seen:?}");
        assert_eq!(error_field(body, b'C').as_deref(), Some("08P01"));
    }
    assert_still_serving(&proxy, &topology).await;
    healthy.finish().await;
}

#[tokio::test]
async fn startup_length_lie_is_closed_without_waiting_for_the_bytes() {
    let (topology, proxy) = setup().await;
    let healthy = HealthyClient::start(&proxy, &topology).await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    let mut bad = 0x7fff_ffff_i32.to_be_bytes().to_vec();
    bad.extend_from_slice(&196_608_i32.to_be_bytes());
    bad.extend_from_slice(b"user\0app\0");
    conn.send(&bad).await;
    // Waiting for 2 GiB that never come would hit the 15 s startup timeout instead.
    let seen = conn
        .closed_within(Duration::from_secs(2))
        .await
        .expect("a 2 GiB startup length must be refused at once");
    for (tag, body) in &seen {
        assert_eq!(*tag, b'E', "unexpected reply: {seen:?}");
        assert_eq!(error_field(body, b'C').as_deref(), Some("08P01"));
    }
    assert_still_serving(&proxy, &topology).await;
    healthy.finish().await;
}

#[tokio::test]
async fn truncated_startup_then_close_does_not_disturb_others() {
    let (topology, proxy) = setup().await;
    let healthy = HealthyClient::start(&proxy, &topology).await;
    for cut in [1usize, 3, 7, 12] {
        let mut conn = RawConn::connect(proxy.addr()).await;
        let full = startup_message(&[("user", topology.user()), ("database", topology.database())]);
        conn.send(&full[..cut]).await;
        drop(conn);
    }
    assert_still_serving(&proxy, &topology).await;
    healthy.finish().await;
}

#[tokio::test]
async fn unknown_message_type_gets_08p01() {
    assert_rejected_after_login(&message(b'y', b"")).await;
}

#[tokio::test]
async fn one_gib_message_length_gets_08p01() {
    let mut bad = vec![b'Q'];
    bad.extend_from_slice(&(1_i32 << 30).to_be_bytes());
    bad.extend_from_slice(b"SELECT 1\0");
    assert_rejected_after_login(&bad).await;
}

#[tokio::test]
async fn bind_with_more_params_than_its_body_gets_08p01() {
    // portal "", statement "", 0 format codes, 100 parameters, then nothing.
    let mut body = vec![0u8, 0u8];
    body.extend_from_slice(&0_i16.to_be_bytes());
    body.extend_from_slice(&100_i16.to_be_bytes());
    let mut bad = message(b'B', &body);
    bad.extend_from_slice(&message(b'S', b""));
    assert_rejected_after_login(&bad).await;
}

#[tokio::test]
async fn message_length_below_four_gets_08p01() {
    let mut bad = vec![b'Q'];
    bad.extend_from_slice(&2_i32.to_be_bytes());
    bad.extend_from_slice(b"SELECT 1\0");
    assert_rejected_after_login(&bad).await;
}

#[tokio::test]
async fn negative_message_length_gets_08p01() {
    let mut bad = vec![b'Q'];
    bad.extend_from_slice(&(-5_i32).to_be_bytes());
    assert_rejected_after_login(&bad).await;
}
