//! The key column's type on a cold catalog: shardgate reads it from the first shard before it
//! decodes a key bound in binary. The lookup must not wait for a pool slot the session itself
//! holds (pool.size 1, in a transaction on s0), and a key whose type could not be read is
//! refused with 0A000, never hashed as if its bytes were text.

mod support;

use std::time::{Duration, Instant};

use shardgate_testkit::{free_port, Topology};
use support::raw::{error_field, login_trust, message, RawConn};
use support::sharded::{primaries, shard_of_int};
use support::{start_trust, Proxy, ProxyOptions};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
/// The pool's checkout timeout: a statement that waited for it took this long.
const CHECKOUT_MS: u64 = 3000;

fn topology() -> Topology {
    Topology::builder()
        .shards(2)
        .replicas(0)
        .conf("max_prepared_transactions = 10")
        .build()
        .expect("topology")
}

/// `orders (user_id int4, note text)` on each primary: an int4 key arrives as 4 binary bytes.
async fn create_int4_orders(direct: &[tokio_postgres::Client]) {
    for c in direct {
        c.batch_execute(
            "CREATE TABLE orders (user_id int NOT NULL, note text NOT NULL); \
             GRANT ALL ON orders TO PUBLIC",
        )
        .await
        .expect("create orders");
    }
}

/// A fresh proxy (nothing learned yet) with one server connection per node and 2PC.
fn start(topology: &Topology, log: &std::path::Path) -> Proxy {
    let options = ProxyOptions {
        pool_size: 1,
        checkout_timeout_ms: CHECKOUT_MS,
        extra_yaml: format!(
            "sharding:\n  logical_shards: 1024\n  tables:\n    orders: user_id\n  two_phase_commit: true\n  two_phase_log: {}\n",
            log.display()
        ),
        ..ProxyOptions::default()
    };
    let (port, admin) = (free_port(), free_port());
    Proxy::start_yaml(
        &Proxy::config_yaml(topology, port, admin, &options),
        port,
        admin,
    )
}

/// Each primary's `orders.user_id` values with `note`, sorted.
async fn keys_by_shard(direct: &[tokio_postgres::Client], note: &str) -> Vec<Vec<i32>> {
    let mut out = Vec::new();
    for d in direct {
        let rows = d
            .query(
                "SELECT user_id FROM orders WHERE note = $1 ORDER BY 1",
                &[&note],
            )
            .await
            .expect("keys");
        out.push(rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

/// Where the hash rule puts each of `keys`.
fn expected(keys: &[i32]) -> Vec<Vec<i32>> {
    let mut out = vec![Vec::new(), Vec::new()];
    for k in keys {
        out[shard_of_int(i64::from(*k))].push(*k);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_key_on_a_cold_catalog_lands_on_its_shard_while_the_session_holds_shard_0() {
    timeout(LIMIT, async {
        let topology = topology();
        let direct = primaries(&topology).await;
        create_int4_orders(&direct).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = start(&topology, &dir.path().join("2pc.log"));
        let client = proxy.connect(&topology).await;

        // Key 1 is on s0, written pinned (no key type needed): the transaction then holds s0's
        // only connection. The following
        // statements are prepared inside it (as asyncpg does), so the key type is first needed
        // there; tokio-postgres sends an int4 parameter in binary, its type left undeclared.
        assert_eq!(shard_of_int(1), 0, "key 1 must be on s0 for this test");
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute(
                "/* shardgate: shard=s0 */ INSERT INTO orders (user_id, note) VALUES (1, 'cold')",
            )
            .await
            .expect("insert key 1");
        let insert = client
            .prepare("INSERT INTO orders (user_id, note) VALUES ($1, 'cold')")
            .await
            .expect("prepare");
        for k in 2..=6i32 {
            let started = Instant::now();
            client
                .execute(&insert, &[&k])
                .await
                .unwrap_or_else(|e| panic!("insert key {k}: {e:?}"));
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(CHECKOUT_MS / 2),
                "insert key {k} took {took:?}: the key type lookup waited for a pool slot"
            );
        }
        client.batch_execute("COMMIT").await.expect("commit");
        let keys: Vec<i32> = (1..=6).collect();
        assert_eq!(keys_by_shard(&direct, "cold").await, expected(&keys));
        assert!(
            expected(&keys).iter().all(|s| !s.is_empty()),
            "keys 1..6 must cover both shards"
        );
    })
    .await
    .expect("test timed out");
}

/// Parse (parameter type left undeclared), Bind of `value` in `format` (0 text, 1 binary),
/// Execute and Sync of `sql`, in one request: no Describe that would need a server first.
fn bound_request(sql: &str, format: i16, value: &[u8]) -> Vec<u8> {
    let mut out = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend(1i16.to_be_bytes());
    bind.extend(format.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(i32::try_from(value.len()).expect("len").to_be_bytes());
    bind.extend(value);
    bind.extend(0i16.to_be_bytes());
    out.extend(message(b'B', &bind));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out.extend(message(b'S', b""));
    out
}

/// The SQLSTATE and message of the reply's ErrorResponse, if any.
async fn run(conn: &mut RawConn, request: &[u8]) -> Option<(String, String)> {
    conn.send(request).await;
    let reply = conn.until_ready(Duration::from_secs(10)).await;
    let (_, body) = reply.iter().find(|(t, _)| *t == b'E')?;
    Some((
        error_field(body, b'C').unwrap_or_default(),
        error_field(body, b'M').unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_key_whose_type_cannot_be_read_is_refused_not_guessed() {
    timeout(LIMIT, async {
        let topology = topology();
        let direct = primaries(&topology).await;
        create_int4_orders(&direct).await;
        let proxy = start_trust(
            &topology,
            ProxyOptions {
                extra_yaml: "sharding:\n  logical_shards: 1024\n  tables:\n    orders: user_id\n"
                    .to_owned(),
                ..ProxyOptions::default()
            },
        );
        let mut conn = login_trust(proxy.addr(), topology.user(), topology.database()).await;
        // s0's primary is down: the key type cannot be read (nothing was learned before).
        drop(direct);
        topology.shards[0].primary.stop().expect("stop s0");
        let s1 = primaries_one(&topology, 1).await;

        let b = (1..).find(|k| shard_of_int(*k) == 1).expect("key") as i32;
        let sql = "INSERT INTO orders (user_id, note) VALUES ($1, 'k')";
        let (code, msg) = run(&mut conn, &bound_request(sql, 1, &b.to_be_bytes()))
            .await
            .expect("binary key of unknown type must be refused");
        assert_eq!(code, "0A000", "message: {msg}");
        assert!(
            msg.contains("cannot read the type of the shard key user_id of orders"),
            "message: {msg}"
        );
        // A key in text form that any key type reads the same is routed.
        assert_eq!(
            run(&mut conn, &bound_request(sql, 0, b.to_string().as_bytes())).await,
            None,
            "canonical text key"
        );
        // One that an integer column reads differently from a text one is refused.
        let (code, msg) = run(
            &mut conn,
            &bound_request(sql, 0, format!("0{b}").as_bytes()),
        )
        .await
        .expect("non-canonical text key of unknown type must be refused");
        assert_eq!(code, "0A000", "message: {msg}");
        let rows: Vec<i32> = s1
            .query("SELECT user_id FROM orders", &[])
            .await
            .expect("s1 rows")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(rows, vec![b]);
    })
    .await
    .expect("test timed out");
}

/// A direct client of shard `i`'s primary.
async fn primaries_one(topology: &Topology, i: usize) -> tokio_postgres::Client {
    support::connect(&support::direct_conn_str(
        topology,
        &topology.shards[i].primary,
    ))
    .await
    .expect("direct connection")
}
