//! What a scatter's merge reads from the session rather than from the rows: LIMIT/OFFSET
//! parameters (read by their type, refused when they cannot be read exactly) and the client's
//! encoding (text ordered in the merge is in it, so an encoding that orders bytes differently
//! from the server's is refused).

mod support;

use std::time::Duration;

use support::sharded::{expect_code, int_keys_on, sharded_setup};
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

/// Six rows on each shard: keys 1.. on s0 and s1, in key order 0..12 overall.
async fn twelve_keys(c: &tokio_postgres::Client) -> Vec<i64> {
    let mut keys: Vec<i64> = int_keys_on(0, 1, 6)
        .into_iter()
        .chain(int_keys_on(1, 1, 6))
        .collect();
    keys.sort_unstable();
    for k in &keys {
        c.execute("INSERT INTO orders (user_id, note) VALUES ($1, 'n')", &[k])
            .await
            .expect("insert");
    }
    keys
}

fn ids(rows: &[tokio_postgres::Row]) -> Vec<i64> {
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_parameters_are_read_by_their_type() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys = twelve_keys(c).await;
        let sql = "SELECT user_id FROM orders ORDER BY user_id LIMIT $1 OFFSET $2";
        // Integers of every width, in binary, are read as the server reads them.
        for ty in [Type::INT2, Type::INT4, Type::INT8] {
            let st = c
                .prepare_typed(sql, &[ty.clone(), ty.clone()])
                .await
                .expect("prepare");
            let rows = match ty {
                Type::INT2 => c.query(&st, &[&3i16, &2i16]).await,
                Type::INT4 => c.query(&st, &[&3i32, &2i32]).await,
                _ => c.query(&st, &[&3i64, &2i64]).await,
            }
            .expect("integer limit");
            assert_eq!(ids(&rows), keys[2..5], "{ty}");
        }
        // A float8's bytes are not an int8's: refused, not read as a huge limit (which
        // returned every row) or a zero one.
        let st = c
            .prepare_typed(sql, &[Type::FLOAT8, Type::FLOAT8])
            .await
            .expect("prepare float8");
        let msg = expect_code(
            c.query(&st, &[&3.0f64, &2.0f64]).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "float8 limit",
        );
        assert!(msg.contains("LIMIT/OFFSET parameter"), "{msg}");
        let st = c
            .prepare_typed(
                "SELECT user_id FROM orders ORDER BY user_id LIMIT $1",
                &[Type::FLOAT4],
            )
            .await
            .expect("prepare float4");
        expect_code(
            c.query(&st, &[&5.0f32]).await,
            &SqlState::FEATURE_NOT_SUPPORTED,
            "float4 limit",
        );
        // The session goes on.
        let rows = c
            .query(
                "SELECT user_id FROM orders ORDER BY user_id LIMIT $1",
                &[&4i64],
            )
            .await
            .expect("after");
        assert_eq!(ids(&rows), keys[..4]);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_near_bigint_max_plus_an_offset_does_not_overflow() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        let keys = twelve_keys(c).await;
        let rows = c
            .query(
                "SELECT user_id FROM orders ORDER BY user_id LIMIT $1 OFFSET $2",
                &[&i64::MAX, &5i64],
            )
            .await
            .expect("LIMIT max OFFSET $2");
        assert_eq!(ids(&rows), keys[5..]);
        let rows = c
            .query(
                "SELECT user_id FROM orders ORDER BY user_id LIMIT $1 OFFSET 3",
                &[&i64::MAX],
            )
            .await
            .expect("LIMIT max OFFSET 3");
        assert_eq!(ids(&rows), keys[3..]);
        let rows = c
            .query(
                "SELECT user_id FROM orders ORDER BY user_id LIMIT 2 OFFSET $1",
                &[&i64::MAX],
            )
            .await
            .expect("OFFSET max");
        assert!(rows.is_empty());
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_is_not_ordered_in_an_encoding_that_sorts_differently() {
    timeout(Duration::from_secs(90), async {
        let s = sharded_setup(None).await;
        let c = &s.client;
        // In UTF-8 'é' (U+00E9) sorts before '€' (U+20AC); in WIN1252 '€' is 0x80, 'é' 0xE9.
        let euro = int_keys_on(0, 1, 1)[0];
        let e_acute = int_keys_on(1, 1, 1)[0];
        s.direct[0]
            .execute("INSERT INTO orders VALUES ($1, '€')", &[&euro])
            .await
            .expect("seed s0");
        s.direct[1]
            .execute("INSERT INTO orders VALUES ($1, 'é')", &[&e_acute])
            .await
            .expect("seed s1");
        let by_note = "SELECT user_id FROM orders ORDER BY note";
        assert_eq!(
            ids(&c.query(by_note, &[]).await.expect("utf8")),
            [e_acute, euro]
        );
        c.batch_execute("SET client_encoding = 'WIN1252'")
            .await
            .expect("set encoding");
        for sql in [
            by_note,
            "SELECT user_id FROM orders ORDER BY note DESC LIMIT 1",
            "SELECT min(note) FROM orders",
            "SELECT user_id, max(note) FROM orders GROUP BY user_id ORDER BY user_id",
        ] {
            let msg = expect_code(
                c.query(sql, &[]).await,
                &SqlState::FEATURE_NOT_SUPPORTED,
                sql,
            );
            assert!(msg.contains("client_encoding WIN1252"), "{sql}: {msg}");
            let msg = expect_code(
                c.simple_query(sql).await,
                &SqlState::FEATURE_NOT_SUPPORTED,
                sql,
            );
            assert!(msg.contains("client_encoding"), "{sql}: {msg}");
        }
        // What does not order text still merges.
        let rows = c
            .query("SELECT user_id FROM orders ORDER BY user_id", &[])
            .await
            .expect("integer order");
        let mut want = vec![euro, e_acute];
        want.sort_unstable();
        assert_eq!(ids(&rows), want);
        let n: i64 = c
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 2);
        // LATIN1 orders bytes as UTF-8 orders code points ('€' has no LATIN1 byte: left out).
        let ascii = int_keys_on(0, 1, 2)[1];
        s.direct[0]
            .execute("INSERT INTO orders VALUES ($1, 'z')", &[&ascii])
            .await
            .expect("seed z");
        c.batch_execute("SET client_encoding = 'LATIN1'")
            .await
            .expect("latin1");
        let rows = c
            .query(
                "SELECT user_id FROM orders WHERE user_id <> $1 ORDER BY note",
                &[&euro],
            )
            .await
            .expect("latin1 order");
        assert_eq!(ids(&rows), [ascii, e_acute]);
    })
    .await
    .expect("bounded");
}

/// asyncpg's `fetchrow`/`fetchval` run a statement with an Execute row limit: a scatter sends
/// at most that many merged rows, then PortalSuspended when it sent exactly that many (as a
/// server does, whether or not rows remain), CommandComplete otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn an_execute_row_limit_cuts_the_merged_rows_as_a_server_does() {
    use shardgate_testkit::Topology;
    use support::raw::{first_column, login_trust, message, tags};
    use support::sharded::{primaries, sharded_options, SCHEMA};

    timeout(Duration::from_secs(90), async {
        let topology = Topology::builder().shards(2).build().expect("topology");
        let direct = primaries(&topology).await;
        let mut keys = Vec::new();
        for (shard, d) in direct.iter().enumerate() {
            d.batch_execute(SCHEMA).await.expect("schema");
            for k in int_keys_on(shard, 1, 3) {
                d.execute("INSERT INTO orders (user_id, note) VALUES ($1, 'n')", &[&k])
                    .await
                    .expect("seed");
                keys.push(k);
            }
        }
        keys.sort_unstable();
        let proxy = support::start_trust(&topology, sharded_options(None));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
        let mut raw = login_trust(addr, topology.user(), topology.database()).await;
        let wait = Duration::from_secs(10);
        let run = |sql: &str, max_rows: u32| {
            let mut out = message(b'P', format!("\0{sql}\0\0\0").as_bytes());
            out.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
            let mut execute = vec![0u8];
            execute.extend_from_slice(&max_rows.to_be_bytes());
            out.extend(message(b'E', &execute));
            out.extend(message(b'S', b""));
            out
        };
        let sorted = "SELECT user_id FROM orders ORDER BY user_id";
        // Fewer rows than there are: the first ones in order, then PortalSuspended.
        raw.send(&run(sorted, 2)).await;
        let got = raw.until_ready(wait).await;
        assert_eq!(tags(&got), b"12DDsZ".to_vec(), "{got:?}");
        let firsts: Vec<String> = got
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| first_column(b))
            .collect();
        assert_eq!(firsts, vec![keys[0].to_string(), keys[1].to_string()]);
        // More than there are: every row and the command tag.
        raw.send(&run(sorted, 100)).await;
        let got = raw.until_ready(wait).await;
        assert_eq!(tags(&got), b"12DDDDDDCZ".to_vec(), "{got:?}");
        // Exactly as many as asked for: suspended, as a server reports it.
        raw.send(&run("SELECT count(*) FROM orders", 1)).await;
        let got = raw.until_ready(wait).await;
        assert_eq!(tags(&got), b"12DsZ".to_vec(), "{got:?}");
        assert_eq!(first_column(&got[2].1), "6");
    })
    .await
    .expect("test timed out");
}
