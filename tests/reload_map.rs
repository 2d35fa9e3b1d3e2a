//! Moving a logical shard by hot reload (issue 6): with an explicit map, editing the map and
//! reloading sends the moved logical shard's keys to the new shard for every new
//! transaction at once, leaves the other keys where they were, and lets a transaction open
//! across the reload finish on the map it started with. A map that does not cover every
//! logical shard is refused and the old one keeps routing.

mod support;

use std::time::Duration;

use support::sharded::{int_keys_on, logical_of_int, sharded_config, sharded_setup, Sharded};
use tokio::time::timeout;
use tokio_postgres::Client;

const TEST_TIMEOUT: Duration = Duration::from_secs(45);
const MAP: &str = r#"{"0-511": s0, "512-1023": s1}"#;

/// The 2-shard map with logical shard `l` (on s0 in [`MAP`]) moved to s1.
fn map_moving(l: u64) -> String {
    assert!(l <= 511, "logical {l} is not on s0");
    let mut ranges = Vec::new();
    if l > 0 {
        ranges.push(format!(r#""0-{}": s0"#, l - 1));
    }
    ranges.push(format!(r#""{l}": s1"#));
    if l < 511 {
        ranges.push(format!(r#""{}-511": s0"#, l + 1));
    }
    ranges.push(r#""512-1023": s1"#.to_owned());
    format!("{{{}}}", ranges.join(", "))
}

/// Writes `map` into the proxy's config and reloads; asserts it applied; the new version.
fn reload_map(s: &Sharded, map: &str) -> u64 {
    s.proxy
        .rewrite_config(&sharded_config(&s.topology, &s.proxy, Some(map)));
    let (status, body) = s.proxy.reload();
    assert_eq!(status, 200, "reload refused: {body}");
    body["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no config_version: {body}"))
}

/// How many `orders` rows of `key` with `note` each primary holds.
async fn placed(direct: &[Client], key: i64, note: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for d in direct {
        let n: i64 = d
            .query_one(
                "SELECT count(*) FROM orders WHERE user_id = $1 AND note = $2",
                &[&key, &note],
            )
            .await
            .expect("count")
            .get(0);
        out.push(n);
    }
    out
}

/// Two keys on s0 in different logical shards: the one to move and one that stays.
fn keys() -> (i64, i64) {
    let moved = int_keys_on(0, 1, 1)[0];
    let stays = int_keys_on(0, moved + 1, 64)
        .into_iter()
        .find(|k| logical_of_int(*k) != logical_of_int(moved))
        .expect("another logical shard on s0");
    (moved, stays)
}

#[tokio::test]
async fn moving_one_logical_shards_range_sends_its_keys_to_the_new_shard() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(Some(MAP)).await;
        let c = &s.client;
        let (k, other) = keys();
        let l = logical_of_int(k);
        // Prepared once and kept: see `texts` in tests/sharding.rs.
        let insert = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, $2)")
            .await
            .expect("prepare");
        c.execute(&insert, &[&k, &"before"]).await.expect("insert");
        assert_eq!(placed(&s.direct, k, "before").await, vec![1, 0]);
        let v1 = s.proxy.config_version();

        let v2 = reload_map(&s, &map_moving(l));
        assert!(v2 > v1, "version {v1} -> {v2}");
        let config = s.proxy.admin_json("/api/config");
        assert!(
            config.to_string().contains(&l.to_string()),
            "the moved range is not in /api/config: {config}"
        );

        // The same session, a new statement: the moved key goes to s1, the other stays.
        c.execute(&insert, &[&k, &"after"]).await.expect("insert");
        assert_eq!(placed(&s.direct, k, "after").await, vec![0, 1]);
        c.execute(&insert, &[&other, &"after"])
            .await
            .expect("insert");
        assert_eq!(placed(&s.direct, other, "after").await, vec![1, 0]);
        c.simple_query(&format!(
            "INSERT INTO orders (user_id, note) VALUES ({k}, 'simple')"
        ))
        .await
        .expect("simple insert");
        assert_eq!(placed(&s.direct, k, "simple").await, vec![0, 1]);

        // A point read of the key now reads s1 (s0 still holds the old row: not seen).
        let rows = c
            .query(
                "SELECT note FROM orders WHERE user_id = $1 ORDER BY note",
                &[&k],
            )
            .await
            .expect("point read");
        let notes: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(notes, vec!["after", "simple"]);
        let fresh = s.proxy.connect(&s.topology).await;
        fresh
            .batch_execute("SET shardgate.target = 'primary'")
            .await
            .expect("target");
        let rows = fresh
            .query(
                "SELECT note FROM orders WHERE user_id = $1 ORDER BY note",
                &[&k],
            )
            .await
            .expect("point read (new session)");
        let notes: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(notes, vec!["after", "simple"]);

        let route = s.proxy.admin_json(&format!(
            "/api/route?sql=SELECT%201%20FROM%20orders%20WHERE%20user_id%20%3D%20{k}"
        ));
        assert_eq!(route["shards"], serde_json::json!(["s1"]), "{route}");

        // Moving it back sends the key to s0 again.
        reload_map(&s, MAP);
        c.execute(&insert, &[&k, &"back"]).await.expect("insert");
        assert_eq!(placed(&s.direct, k, "back").await, vec![1, 0]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_transaction_open_across_the_move_finishes_on_its_map() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(Some(MAP)).await;
        let c = &s.client;
        let (k, _) = keys();
        // Prepared once and kept: see `texts` in tests/sharding.rs.
        let insert = c
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, $2)")
            .await
            .expect("prepare");
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(&insert, &[&k, &"txn"]).await.expect("insert");
        reload_map(&s, &map_moving(logical_of_int(k)));
        c.execute(&insert, &[&k, &"txn"])
            .await
            .expect("insert in the same transaction after the reload");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(placed(&s.direct, k, "txn").await, vec![2, 0]);

        // The next transaction uses the new map.
        c.batch_execute("BEGIN").await.expect("begin");
        c.execute(&insert, &[&k, &"next"]).await.expect("insert");
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(placed(&s.direct, k, "next").await, vec![0, 1]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_map_with_a_gap_is_refused_and_the_old_map_keeps_routing() {
    timeout(TEST_TIMEOUT, async {
        let s = sharded_setup(Some(MAP)).await;
        let c = &s.client;
        let (k, _) = keys();
        let v1 = s.proxy.config_version();
        let gap = r#"{"0-99": s0, "200-511": s0, "512-1023": s1}"#;
        s.proxy
            .rewrite_config(&sharded_config(&s.topology, &s.proxy, Some(gap)));
        let (status, body) = s.proxy.reload();
        assert_eq!(status, 422, "{body}");
        let problems = body["problems"].as_array().expect("problems");
        assert!(
            problems.iter().any(|p| p["path"]
                .as_str()
                .is_some_and(|x| x.starts_with("sharding.map"))),
            "{body}"
        );
        assert_eq!(s.proxy.config_version(), v1);
        c.execute(
            "INSERT INTO orders (user_id, note) VALUES ($1, 'still')",
            &[&k],
        )
        .await
        .expect("insert");
        assert_eq!(placed(&s.direct, k, "still").await, vec![1, 0]);
    })
    .await
    .expect("test timed out");
}
