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
