//! A cancel reaches a request that is still waiting for a pooled server connection.

mod support;

use std::time::{Duration, Instant};

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;

#[tokio::test]
async fn cancel_while_waiting_for_a_server() {
    timeout(Duration::from_secs(60), async {
        let topology = Topology::builder().build().expect("topology");
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                pool_size: 1,
                checkout_timeout_ms: 20_000,
                ..ProxyOptions::default()
            },
        );
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
