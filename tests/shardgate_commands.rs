//! `SET/SHOW/RESET shardgate.target` through both protocols: answered by shardgate,
//! applied to routing, and never seen by PostgreSQL.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

async fn show_simple(client: &tokio_postgres::Client) -> String {
    support::first_cell(client, "SHOW shardgate.target")
        .await
        .expect("a row")
}

#[tokio::test]
async fn extended_protocol_commands_are_answered_by_shardgate() {
    timeout(LIMIT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                pool_size: 1,
                extra_yaml: "routing:\n  lag_check_interval_ms: 50\n".into(),
                ..ProxyOptions::default()
            },
        );
        support::wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let client = proxy.connect(&topology).await;

        // Extended protocol (tokio-postgres prepares, binds and executes).
        client
            .execute("SET shardgate.target = 'primary'", &[])
            .await
            .expect("extended SET");
        let row = client.query_one("SHOW shardgate.target", &[]).await.expect("extended SHOW");
        assert_eq!(row.get::<_, &str>(0), "primary");
        assert_eq!(show_simple(&client).await, "primary");
        let on_replica: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("read")
            .get(0);
        assert!(!on_replica, "target=primary sends reads to the primary");

        let err = client
            .execute("SET shardgate.target = 'bogus'", &[])
            .await
            .expect_err("bad value");
        assert_eq!(err.code().map(|c| c.code()), Some("22023"));
        assert_eq!(show_simple(&client).await, "primary", "a refused SET changes nothing");

        client.execute("RESET shardgate.target", &[]).await.expect("extended RESET");
        assert_eq!(show_simple(&client).await, "auto");

        // PostgreSQL never saw a SET of it: with no custom setting the lookup is empty,
        // on the primary and on the replica alike.
        for hint in ["primary", "replica"] {
            let sql = format!(
                "/* shardgate: {hint} */ SELECT coalesce(current_setting('shardgate.target', true), '')"
            );
            let v: String = client.query_one(sql.as_str(), &[]).await.expect("lookup").get(0);
            assert_eq!(v, "", "shardgate.target reached the {hint}");
        }
    })
    .await
    .expect("test timed out");
}
