//! The simplest end-to-end check: a query through shardgate reaches PostgreSQL.

mod support;

use shardgate_testkit::Topology;
use support::Proxy;

#[tokio::test]
async fn select_through_the_proxy() {
    let topology = Topology::builder().build().expect("topology");
    let proxy = Proxy::start(&topology);
    let client = proxy.connect(&topology).await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let (status, body) = proxy.admin_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}
