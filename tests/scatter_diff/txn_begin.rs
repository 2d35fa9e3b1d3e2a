//! A scatter inside a transaction opens the transaction on the shards it has not touched yet
//! with a BEGIN of shardgate's own. If that BEGIN fails, the shard is not in the transaction:
//! the statement must fail with that shard's error (naming it) and the session must be in a
//! failed transaction (25P02 until ROLLBACK), with the other shards' part rolled back — never
//! rows read outside the transaction.
//!
//! No healthy server fails a plain BEGIN, so s1's primary sits behind a relay that, when armed,
//! turns the next simple-protocol BEGIN it forwards into a statement that fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardgate_testkit::{free_port, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::support::raw::query;
use super::support::sharded::int_keys_on;
use super::support::{connect, direct_conn_str, Proxy, ProxyOptions};
use super::TEST_TIMEOUT;

/// What the relay sends instead of the BEGIN: an error, then ReadyForQuery outside a
/// transaction, as a failed BEGIN answers.
const FAILING_BEGIN: &str =
    "DO $$BEGIN RAISE EXCEPTION 'injected: BEGIN failed' USING ERRCODE = '40001'; END$$";

/// SSLRequest and GSSENCRequest: untagged, answered before the real StartupMessage.
const NEGOTIATION_CODES: [i32; 2] = [80_877_103, 80_877_104];

struct BeginBreaker {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicUsize>,
}

/// Rewrites the client-to-server bytes of one connection frame by frame.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut startup = true;
    let mut chunk = [0u8; 16384];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        loop {
            if startup {
                if buf.len() < 8 {
                    break;
                }
                let len = i32::from_be_bytes(buf[0..4].try_into().expect("4")) as usize;
                if buf.len() < len {
                    break;
                }
                let code = i32::from_be_bytes(buf[4..8].try_into().expect("4"));
                out.extend(buf.drain(..len));
                startup = NEGOTIATION_CODES.contains(&code);
                continue;
            }
            if buf.len() < 5 {
                break;
            }
            let len = i32::from_be_bytes(buf[1..5].try_into().expect("4")) as usize + 1;
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            let begin = frame[0] == b'Q' && frame[5..].to_ascii_uppercase().starts_with(b"BEGIN");
            if begin && armed.swap(false, Ordering::SeqCst) {
                fired.fetch_add(1, Ordering::SeqCst);
                out.extend(query(FAILING_BEGIN));
            } else {
                out.extend(frame);
            }
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn begin_breaker(target: SocketAddr) -> BeginBreaker {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let armed = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicUsize::new(0));
    let (a, f) = (armed.clone(), fired.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (a, f) = (a.clone(), f.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, mut cw) = client.into_split();
                let (mut sr, sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                pump(cr, sw, a, f).await;
            });
        }
    });
    BeginBreaker { addr, armed, fired }
}

#[tokio::test]
async fn failed_hidden_begin_fails_the_scatter_and_the_transaction() {
    timeout(TEST_TIMEOUT, async {
        let a = Topology::builder()
            .shards(2)
            .replicas(0)
            .build()
            .expect("topology");
        let direct = [
            connect(&direct_conn_str(&a, &a.shards[0].primary))
                .await
                .expect("s0"),
            connect(&direct_conn_str(&a, &a.shards[1].primary))
                .await
                .expect("s1"),
        ];
        for d in &direct {
            d.batch_execute("CREATE TABLE tb (id bigint NOT NULL, note text)")
                .await
                .expect("schema");
        }
        let breaker = begin_breaker(a.shards[1].primary.addr()).await;
        let (port, admin_port) = (free_port(), free_port());
        let options = ProxyOptions {
            extra_yaml: "sharding:\n  logical_shards: 1024\n  tables: {tb: id}\n".into(),
            ..ProxyOptions::default()
        };
        let s1 = format!("primary: {}\n", a.shards[1].primary.addr());
        let yaml = Proxy::config_yaml(&a, port, admin_port, &options);
        assert!(yaml.contains(&s1), "{yaml}");
        let yaml = yaml.replacen(&s1, &format!("primary: {}\n", breaker.addr), 1);
        let proxy = Proxy::start_yaml(&yaml, port, admin_port);
        let c = proxy.connect(&a).await;
        let k0 = int_keys_on(0, 1, 2);
        let k1 = int_keys_on(1, 1, 1);
        for k in [k0[0], k1[0]] {
            c.batch_execute(&format!("INSERT INTO tb (id, note) VALUES ({k}, 'seed')"))
                .await
                .expect("seed");
        }

        c.batch_execute("BEGIN").await.expect("begin");
        c.batch_execute(&format!(
            "INSERT INTO tb (id, note) VALUES ({}, 'txn')",
            k0[1]
        ))
        .await
        .expect("write on s0");
        breaker.armed.store(true, Ordering::SeqCst);
        let r = c.simple_query("SELECT count(*) FROM tb").await;
        assert_eq!(
            breaker.fired.load(Ordering::SeqCst),
            1,
            "the BEGIN on s1 was not broken"
        );
        let e = r.expect_err("a scatter whose BEGIN failed on s1 must fail");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "40001", "{db:?}");
        assert_eq!(db.severity(), "ERROR", "{db:?}");
        let text = format!("{} {}", db.message(), db.detail().unwrap_or_default());
        assert!(
            text.contains("shard s1"),
            "the error names the shard: {text}"
        );

        // The session is in a failed transaction, like the shards: 25P02 until ROLLBACK.
        let e = c
            .simple_query("SELECT count(*) FROM tb")
            .await
            .expect_err("in a failed transaction");
        assert_eq!(e.code().map(|c| c.code()), Some("25P02"), "{e:?}");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        let txn: i64 = direct[0]
            .query_one("SELECT count(*) FROM tb WHERE note = 'txn'", &[])
            .await
            .expect("count on s0")
            .get(0);
        assert_eq!(txn, 0, "the transaction's write on s0 was not rolled back");

        // The next transaction's scatter (the relay disarmed) reads both shards in it.
        c.batch_execute("BEGIN").await.expect("begin again");
        let rows = c
            .simple_query("SELECT count(*) FROM tb")
            .await
            .expect("scatter");
        let count = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(count.as_deref(), Some("2"));
        c.batch_execute("COMMIT").await.expect("commit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .await
    .expect("test timed out");
}
