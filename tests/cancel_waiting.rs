//! A cancel reaches a request that is still waiting for a pooled server connection.

mod support;

use std::time::{Duration, Instant};

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;

/// A proxy with one server connection, which clients wait for up to 20 s.
fn one_server(topology: &Topology) -> Proxy {
    Proxy::start_with(
        topology,
        ProxyOptions {
            pool_size: 1,
            checkout_timeout_ms: 20_000,
            ..ProxyOptions::default()
        },
    )
}

#[tokio::test]
async fn cancel_while_waiting_for_a_server() {
    timeout(Duration::from_secs(60), async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = one_server(&topology);
        let holder = proxy.connect(&topology).await;
        holder
            .batch_execute("BEGIN; SELECT 1")
            .await
            .expect("hold the only server");
        let waiter = proxy.connect(&topology).await;
        let token = waiter.cancel_token();
        let started = Instant::now();
        let query = tokio::spawn(async move {
            let r = waiter.simple_query("SELECT 42").await;
            (r, waiter)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("send cancel");
        let (result, waiter) = query.await.expect("join");
        let err = result.expect_err("the waiting request is cancelled");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cancel took {:?}",
            started.elapsed()
        );
        // The session stays usable once a server is free.
        holder.batch_execute("COMMIT").await.expect("release");
        let rows = waiter.simple_query("SELECT 7").await.expect("after cancel");
        assert!(!rows.is_empty());
    })
    .await
    .expect("test timed out");
}

/// How many settings the waiter has: re-applying them on each checkout takes milliseconds,
/// the window between a checkout and the query's start that a cancel used to be lost in.
const WAITER_SETTINGS: usize = 6000;

type Shared = std::sync::Arc<tokio_postgres::Client>;

/// Two clients of a one-server proxy: a holder, and a waiter with `WAITER_SETTINGS` settings.
async fn holder_and_waiter(proxy: &Proxy, topology: &Topology) -> (Shared, Shared) {
    let holder = std::sync::Arc::new(proxy.connect(topology).await);
    let waiter = std::sync::Arc::new(proxy.connect(topology).await);
    let settings: String = (0..WAITER_SETTINGS)
        .map(|i| format!("SET cancel_test.s{i} TO 'v{i}';"))
        .collect();
    waiter
        .batch_execute(&settings)
        .await
        .expect("waiter settings");
    (holder, waiter)
}

/// The waiter's `pg_sleep(10)` waits for the server connection the holder's transaction holds;
/// the waiter's cancel is sent `delay` after the holder's COMMIT: during the re-application of the
/// waiter's settings, well before its query is written (a cancel reaching a backend that has
/// not read its query yet is dropped by PostgreSQL itself, so this stays clear of that
/// instant). Returns the waiter's error, which must be 57014 and come soon.
async fn cancel_at_hand_over(
    holder: &Shared,
    waiter: &Shared,
    delay: Duration,
    round: u32,
) -> tokio_postgres::Error {
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("hold the only server");
    let w = waiter.clone();
    let waiting = tokio::spawn(async move { w.simple_query("SELECT pg_sleep(10)").await });
    // The waiter's request reaches shardgate and waits for the server.
    tokio::time::sleep(Duration::from_millis(30)).await;
    holder.batch_execute("COMMIT").await.expect("release");
    tokio::time::sleep(delay).await;
    let sent = Instant::now();
    waiter
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let err = match waiting.await.expect("join waiter") {
        Ok(_) => panic!(
            "round {round}: the cancel was lost, the waiter's query ran to its end ({:?} after the cancel)",
            sent.elapsed()
        ),
        Err(e) => e,
    };
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57014"),
        "round {round}: {err}"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "round {round}: cancel took {:?}",
        sent.elapsed()
    );
    err
}

/// A cancel that arrives after the waiting request got its server connection but before its
/// query reached the server is not lost. Before the fix it was lost in nearly every round
/// (from round 0) and the waiter's `pg_sleep(10)` ran to its end.
#[tokio::test]
async fn a_cancel_between_checkout_and_query_start_is_never_lost() {
    timeout(Duration::from_secs(120), async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = one_server(&topology);
        let (holder, waiter) = holder_and_waiter(&proxy, &topology).await;
        for round in 0..30u32 {
            // Sweeps the cancel across the start of the re-application (0 to 1 ms in).
            let delay = Duration::from_micros(u64::from(round % 5) * 250);
            cancel_at_hand_over(&holder, &waiter, delay, round).await;
        }
        // Neither session is harmed: both still run queries, the waiter with its settings.
        let value =
            support::first_cell(&waiter, "SELECT current_setting('cancel_test.s5999')").await;
        assert_eq!(value.as_deref(), Some("v5999"));
        holder
            .batch_execute("SELECT 1")
            .await
            .expect("holder after");
    })
    .await
    .expect("test timed out");
}

/// The same cancel for the first statement of a transaction whose BEGIN shardgate held back
/// (with modes, so it is opened on the server before that statement): the statement fails
/// with 57014 and the transaction is aborted, as on a direct connection, until ROLLBACK.
#[tokio::test]
async fn a_cancel_before_the_first_statement_of_a_transaction_aborts_it() {
    timeout(Duration::from_secs(120), async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = one_server(&topology);
        let (holder, waiter) = holder_and_waiter(&proxy, &topology).await;
        for round in 0..5u32 {
            waiter
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
                .expect("begin");
            let delay = Duration::from_micros(u64::from(round) * 250);
            cancel_at_hand_over(&holder, &waiter, delay, round).await;
            let err = waiter
                .simple_query("SELECT 1")
                .await
                .expect_err("the transaction is aborted");
            assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err}");
            waiter.batch_execute("ROLLBACK").await.expect("rollback");
            let level =
                support::first_cell(&waiter, "SELECT current_setting('transaction_isolation')")
                    .await;
            assert_eq!(level.as_deref(), Some("read committed"), "round {round}");
        }
        holder
            .batch_execute("SELECT 1")
            .await
            .expect("holder after");
    })
    .await
    .expect("test timed out");
}

/// A cancel sent for one client just as its query ends must not stop the query another client
/// runs next on the same server connection. Client A runs short queries while cancels for A are
/// sent every few milliseconds; client B shares the only server connection. Directly, a late
/// cancel can only hit A's own next query; before the fix B's queries were cancelled too
/// (dozens in a few hundred).
#[tokio::test]
async fn a_late_cancel_never_reaches_the_next_client_on_the_connection() {
    timeout(Duration::from_secs(90), async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = one_server(&topology);
        let a = proxy.connect(&topology).await;
        let b = proxy.connect(&topology).await;
        let token = a.cancel_token();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop_a, stop_c) = (stop.clone(), stop.clone());
        let run_a = tokio::spawn(async move {
            while !stop_a.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = a.simple_query("SELECT pg_sleep(0.002)").await;
            }
        });
        let cancels = tokio::spawn(async move {
            while !stop_c.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = token.cancel_query(tokio_postgres::NoTls).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        let (mut cancelled, mut ran) = (0, 0);
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until && ran < 400 {
            match b.simple_query("SELECT pg_sleep(0.01)").await {
                Ok(_) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                    cancelled += 1;
                }
                Err(e) => panic!("B: {e}"),
            }
            ran += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        run_a.await.expect("A");
        cancels.await.expect("cancels");
        assert!(ran > 50, "only {ran} queries ran");
        assert_eq!(
            cancelled, 0,
            "{cancelled} of B's {ran} queries were cancelled by A's cancels"
        );
    })
    .await
    .expect("test timed out");
}
