//! When a client's settings can no longer be applied, the client is told, and its
//! request never runs with some other client's settings.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::time::timeout;

async fn current_user(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn a_setting_that_no_longer_applies_is_an_error_not_a_silent_default() {
    timeout(Duration::from_secs(60), async {
        let topology = Topology::builder().build().expect("topology");
        let primary = &topology.shards[0].primary;
        primary
            .sql("app", "CREATE ROLE other NOLOGIN; GRANT other TO app")
            .expect("role");
        // Pool of 1: both clients share one server connection.
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                pool_size: 1,
                ..ProxyOptions::default()
            },
        );
        let a = proxy.connect(&topology).await;
        let b = proxy.connect(&topology).await;
        a.batch_execute("SET ROLE other").await.expect("set role");
        assert_eq!(current_user(&a).await.expect("a"), "other");
        assert_eq!(
            current_user(&b).await.expect("b"),
            "app",
            "B never sees A's role"
        );

        primary.sql("app", "REVOKE other FROM app").expect("revoke");
        // The connection now carries B's settings; A's cannot be re-applied.
        let err = current_user(&a)
            .await
            .expect_err("A must not silently run as app");
        let db = err.as_db_error().expect("a server error");
        assert!(
            db.message()
                .starts_with("shardgate could not re-apply this session's settings"),
            "{db:?}"
        );
        assert!(db.hint().is_some_and(|h| h.contains("reconnect")), "{db:?}");
        // It keeps failing the same way rather than ever running without its role.
        assert!(current_user(&a).await.is_err(), "A ran without its role");
        // B is unaffected, and a new session works.
        assert_eq!(current_user(&b).await.expect("b after"), "app");
        let a2 = proxy.connect(&topology).await;
        assert_eq!(current_user(&a2).await.expect("new session"), "app");
    })
    .await
    .expect("test timed out");
}
