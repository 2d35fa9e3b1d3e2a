//! The PostgreSQL protocol through shardgate's transaction pooler, driven by real clients:
//! simple and extended queries, prepared statements shared by more clients than server
//! connections, pipelining, COPY, errors and transaction status, notices, cancellation,
//! and many clients on a small pool.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{pin_mut, SinkExt, StreamExt};
use shardgate_testkit::Topology;
use support::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Bound for any single step that should be quick.
const STEP: Duration = Duration::from_secs(10);

fn topology() -> Topology {
    Topology::builder().build().expect("topology")
}

fn options(pool_size: u32) -> ProxyOptions {
    ProxyOptions {
        pool_size,
        ..ProxyOptions::default()
    }
}

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// Rows of a simple-query result, as text, and the command-complete counts.
fn simple_rows(messages: &[SimpleQueryMessage]) -> (Vec<Vec<String>>, Vec<u64>) {
    let mut rows = Vec::new();
    let mut completes = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => completes.push(*n),
            _ => {}
        }
    }
    (rows, completes)
}

#[tokio::test]
async fn simple_query_with_several_statements() {
    let topo = topology();
    let proxy = Proxy::start(&topo);
    let client = proxy.connect(&topo).await;
    let messages = step(
        "simple query",
        client.simple_query(
            "SELECT 1 AS a; SELECT 'x' AS b, 2 AS c; SELECT g FROM generate_series(1, 3) g",
        ),
    )
    .await
    .expect("three statements");
    let (rows, completes) = simple_rows(&messages);
    assert_eq!(
        rows,
        vec![
            vec!["1".to_owned()],
            vec!["x".to_owned(), "2".to_owned()],
            vec!["1".to_owned()],
            vec!["2".to_owned()],
            vec!["3".to_owned()],
        ]
    );
    assert_eq!(completes, vec![1, 1, 3]);

    step(
        "batch",
        client.batch_execute(
            "CREATE TABLE batch_t (id int primary key, v text); \
             INSERT INTO batch_t VALUES (1, 'one'), (2, 'two'); \
             UPDATE batch_t SET v = upper(v) WHERE id = 2",
        ),
    )
    .await
    .expect("batch of three");
    let rows = step(
        "read back",
        client.query("SELECT id, v FROM batch_t ORDER BY id", &[]),
    )
    .await
    .expect("select");
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "one".to_owned()), (2, "TWO".to_owned())]);
}

#[tokio::test]
async fn extended_protocol_parameters_and_prepared_reuse() {
    let topo = topology();
    let proxy = Proxy::start(&topo);
    let client = proxy.connect(&topo).await;

    let bytes: Vec<u8> = vec![0, 1, 2, 255];
    let ints: Vec<i32> = vec![3, -1, 7];
    let none: Option<i32> = None;
    let row = step(
        "typed params",
        client.query_one(
            "SELECT $1::int4 + 1, $2::int8 * 2, $3::float8 / 2, $4::text || '!', NOT $5::bool, \
             $6::bytea, $7::int4[], $8::int4 IS NULL",
            &[
                &41i32,
                &(1i64 << 40),
                &5.0f64,
                &"héllo",
                &false,
                &bytes,
                &ints,
                &none,
            ],
        ),
    )
    .await
    .expect("query with params");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, i64>(1), 1i64 << 41);
    assert_eq!(row.get::<_, f64>(2), 2.5);
    assert_eq!(row.get::<_, String>(3), "héllo!");
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<u8>>(5), bytes);
    assert_eq!(row.get::<_, Vec<i32>>(6), ints);
    assert!(row.get::<_, bool>(7));

    let stmt = step(
        "prepare",
        client.prepare("SELECT $1::int8 * $2::int8, $3::text"),
    )
    .await
    .expect("prepare");
    for i in 0..20i64 {
        let label = format!("row {i}");
        let row = step(
            "prepared query",
            client.query_one(&stmt, &[&i, &(i + 1), &label]),
        )
        .await
        .expect("prepared query");
        assert_eq!(row.get::<_, i64>(0), i * (i + 1));
        assert_eq!(row.get::<_, String>(1), label);
    }
}

#[tokio::test]
async fn prepared_statements_with_fewer_servers_than_clients() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(2));
    let conn_str = proxy.conn_str(&topo);
    let workers = (0..8i32).map(|i| {
        let conn_str = conn_str.clone();
        async move {
            let client = support::connect(&conn_str).await.expect("connect");
            // The same text in every client, and one text per client: both get the
            // client-side name "s0"/"s1" from tokio-postgres, which must not collide.
            let shared = client
                .prepare("SELECT $1::int4 * 2")
                .await
                .expect("prepare shared");
            let own = client
                .prepare(&format!("SELECT $1::int4 + {i}, '{i}'::text"))
                .await
                .expect("prepare own");
            for n in 0..50i32 {
                let a = client.query_one(&shared, &[&n]).await.expect("shared");
                assert_eq!(a.get::<_, i32>(0), n * 2);
                let b = client.query_one(&own, &[&n]).await.expect("own");
                assert_eq!(b.get::<_, i32>(0), n + i);
                assert_eq!(b.get::<_, String>(1), i.to_string());
                if n % 10 == 0 {
                    // Also inside an explicit transaction (one server for several statements).
                    client.batch_execute("BEGIN").await.expect("begin");
                    let a = client
                        .query_one(&shared, &[&n])
                        .await
                        .expect("shared in tx");
                    let b = client.query_one(&own, &[&n]).await.expect("own in tx");
                    client.batch_execute("COMMIT").await.expect("commit");
                    assert_eq!((a.get::<_, i32>(0), b.get::<_, i32>(0)), (n * 2, n + i));
                }
            }
            50
        }
    });
    let done = timeout(
        Duration::from_secs(40),
        futures_util::future::join_all(workers),
    )
    .await
    .expect("8 clients x 50 iterations finish");
    assert_eq!(done.iter().sum::<i32>(), 400);
}

#[tokio::test]
async fn pipelined_queries_on_one_client() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(2));
    let client = proxy.connect(&topo).await;
    let stmt = client
        .prepare("SELECT $1::int4, pg_sleep(0.01)::text")
        .await
        .expect("prepare");
    let futures = (0..16i32).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            if i % 2 == 0 {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            } else {
                client
                    .query_one("SELECT $1::int4 * 1000", &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        }
    });
    let results = step("pipelined", futures_util::future::try_join_all(futures))
        .await
        .expect("all pipelined queries succeed");
    let expected: Vec<i32> = (0..16)
        .map(|i| if i % 2 == 0 { i } else { i * 1000 })
        .collect();
    assert_eq!(results, expected);
}

#[tokio::test]
async fn copy_in_and_out() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(1));
    let client = proxy.connect(&topo).await;
    client
        .batch_execute("CREATE TABLE items (id int primary key, name text not null)")
        .await
        .expect("create");

    let sink = step(
        "copy in",
        client.copy_in("COPY items (id, name) FROM STDIN"),
    )
    .await
    .expect("copy in starts");
    pin_mut!(sink);
    for chunk in 0..10 {
        let mut data = BytesMut::new();
        for id in chunk * 1000 + 1..=(chunk + 1) * 1000 {
            data.extend_from_slice(format!("{id}\tname{id}\n").as_bytes());
        }
        step("copy chunk", sink.send(data.freeze()))
            .await
            .expect("send chunk");
    }
    let copied = step("copy finish", sink.finish())
        .await
        .expect("copy in finishes");
    assert_eq!(copied, 10_000);
    let row = client
        .query_one("SELECT count(*), sum(id) FROM items", &[])
        .await
        .expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (10_000, 50_005_000)
    );

    let stream = step(
        "copy out",
        client.copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT"),
    )
    .await
    .expect("copy out starts");
    pin_mut!(stream);
    let mut text = Vec::new();
    while let Some(chunk) = step("copy out data", stream.next()).await {
        text.extend_from_slice(&chunk.expect("copy data"));
    }
    let text = String::from_utf8(text).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10_000);
    assert_eq!(lines[0], "1\tname1");
    assert_eq!(lines[9_999], "10000\tname10000");

    // A COPY the server rejects mid-stream reports its SQLSTATE; the session goes on.
    let sink = client
        .copy_in("COPY items (id, name) FROM STDIN")
        .await
        .expect("copy in");
    pin_mut!(sink);
    let _ = sink.send(Bytes::from_static(b"not-a-number\tx\n")).await;
    let err = step("bad copy", sink.finish())
        .await
        .expect_err("bad row fails");
    assert_eq!(code(&err), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let row = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("usable");
    assert_eq!(row.get::<_, i64>(0), 10_000);

    // Every COPY gave the only server back to the pool.
    let other = proxy.connect(&topo).await;
    let row = step(
        "other client",
        other.query_one("SELECT count(*) FROM items", &[]),
    )
    .await
    .expect("server released after COPY");
    assert_eq!(row.get::<_, i64>(0), 10_000);
}

#[tokio::test]
async fn errors_keep_their_sqlstate_and_the_session() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(1));
    let client = proxy.connect(&topo).await;

    let err = client
        .query("SELECT 1/0", &[])
        .await
        .expect_err("extended error");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .simple_query("SELECT 1/0")
        .await
        .expect_err("simple error");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .simple_query("SELECT 1; SELECT 1/0; SELECT 2")
        .await
        .expect_err("error mid-string");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client.query("SELEC 1", &[]).await.expect_err("syntax");
    assert_eq!(code(&err), Some(&SqlState::SYNTAX_ERROR));
    let stmt = client
        .prepare("SELECT 10 / $1::int4")
        .await
        .expect("prepare");
    let err = client
        .query_one(&stmt, &[&0i32])
        .await
        .expect_err("param error");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    let row = client
        .query_one(&stmt, &[&5i32])
        .await
        .expect("prepared usable after error");
    assert_eq!(row.get::<_, i32>(0), 2);

    // Inside a transaction the error aborts it: every statement fails until ROLLBACK.
    client.batch_execute("BEGIN").await.expect("begin");
    client.query("SELECT 1", &[]).await.expect("in tx");
    let err = client.query("SELECT 1/0", &[]).await.expect_err("fails");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    for _ in 0..2 {
        let err = client.query("SELECT 1", &[]).await.expect_err("aborted tx");
        assert_eq!(code(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        let err = client
            .simple_query("SELECT 1")
            .await
            .expect_err("aborted tx");
        assert_eq!(code(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    }
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let row = client
        .query_one("SELECT 7", &[])
        .await
        .expect("usable after rollback");
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn failed_transaction_keeps_its_server() {
    let topo = topology();
    let proxy = Proxy::start_with(
        &topo,
        ProxyOptions {
            pool_size: 1,
            // Also bounds the first login's connect to PostgreSQL, which a loaded machine
            // (a parallel test run) can take longer than 300 ms to serve.
            checkout_timeout_ms: 1500,
            ..ProxyOptions::default()
        },
    );
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    a.batch_execute("BEGIN; SELECT 1/0")
        .await
        .expect_err("fails");
    // With one server held by A's failed transaction, B times out in the pool.
    let err = step("b waits", b.query("SELECT 1", &[]))
        .await
        .expect_err("no server");
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS));
    a.batch_execute("ROLLBACK").await.expect("rollback");
    let row = step("b after rollback", b.query_one("SELECT 2", &[]))
        .await
        .expect("b runs");
    assert_eq!(row.get::<_, i32>(0), 2);
}

/// A minimal protocol-level client, for what tokio-postgres does not expose
/// (ReadyForQuery's transaction status, EmptyQueryResponse).
struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    async fn connect(proxy: &Proxy, topo: &Topology) -> RawClient {
        let stream = TcpStream::connect(proxy.addr()).await.expect("raw connect");
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in [("user", topo.user()), ("database", topo.database())] {
            body.extend_from_slice(k.as_bytes());
            body.put_u8(0);
            body.extend_from_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32 + 4);
        frame.extend_from_slice(&body);
        let mut raw = RawClient {
            stream,
            buf: BytesMut::new(),
        };
        raw.stream.write_all(&frame).await.expect("startup");
        let (tags, status) = raw.until_ready().await;
        assert_eq!(
            tags.first(),
            Some(&b'R'),
            "trust auth answers AuthenticationOk"
        );
        assert!(tags.contains(&b'K'), "BackendKeyData in the greeting");
        assert_eq!(status, b'I');
        raw
    }

    async fn message(&mut self) -> (u8, Bytes) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    let tag = frame.get_u8();
                    frame.advance(4);
                    return (tag, frame.freeze());
                }
            }
            let n = step("raw read", self.stream.read_buf(&mut self.buf))
                .await
                .expect("raw read");
            assert!(n > 0, "proxy closed the connection");
        }
    }

    /// Message tags up to (not including) ReadyForQuery, and its status byte.
    async fn until_ready(&mut self) -> (Vec<u8>, u8) {
        let mut tags = Vec::new();
        loop {
            let (tag, body) = self.message().await;
            if tag == b'Z' {
                return (tags, body[0]);
            }
            tags.push(tag);
        }
    }

    async fn query(&mut self, sql: &str) -> (Vec<u8>, u8) {
        let mut frame = BytesMut::new();
        frame.put_u8(b'Q');
        frame.put_i32(sql.len() as i32 + 5);
        frame.extend_from_slice(sql.as_bytes());
        frame.put_u8(0);
        self.stream.write_all(&frame).await.expect("raw query");
        self.until_ready().await
    }
}

#[tokio::test]
async fn empty_query_and_transaction_status() {
    let topo = topology();
    let proxy = support::start_trust(&topo, options(1));

    // tokio-postgres sees an empty query as no results at all.
    let client = proxy.connect(&topo).await;
    let messages = client.simple_query("").await.expect("empty query");
    assert!(simple_rows(&messages).0.is_empty());

    let mut raw = RawClient::connect(&proxy, &topo).await;
    assert_eq!(
        raw.query("").await,
        (vec![b'I'], b'I'),
        "EmptyQueryResponse"
    );
    assert_eq!(raw.query("SELECT 1").await, (vec![b'T', b'D', b'C'], b'I'));
    assert_eq!(raw.query("BEGIN").await, (vec![b'C'], b'T'));
    assert_eq!(raw.query("SELECT 1").await.1, b'T');
    assert_eq!(raw.query("COMMIT").await, (vec![b'C'], b'I'));
    assert_eq!(
        raw.query("BEGIN; SELECT 1/0").await,
        (vec![b'C', b'E'], b'E')
    );
    assert_eq!(raw.query("SELECT 1").await, (vec![b'E'], b'E'));
    assert_eq!(raw.query("ROLLBACK").await, (vec![b'C'], b'I'));
    assert_eq!(raw.query("BEGIN").await.1, b'T');
    assert_eq!(raw.query("ROLLBACK").await.1, b'I');
    // COMMIT of a failed transaction reports ROLLBACK and ends it.
    assert_eq!(raw.query("BEGIN; SELECT 1/0").await.1, b'E');
    assert_eq!(raw.query("COMMIT").await, (vec![b'C'], b'I'));

    // The single server went back to the pool each time: another client gets it.
    let row = step("other client", client.query_one("SELECT 3", &[]))
        .await
        .expect("pool free");
    assert_eq!(row.get::<_, i32>(0), 3);
}

#[tokio::test]
async fn notices_reach_the_client() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(1));
    let (client, mut messages) = support::connect_with_messages(&proxy.conn_str(&topo))
        .await
        .expect("connect");
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        .await
        .expect("do block");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match step("notice", messages.recv()).await {
            Some(AsyncMessage::Notice(n)) => {
                seen.push((n.severity().to_owned(), n.message().to_owned()))
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            ("NOTICE".to_owned(), "hello 42".to_owned()),
            ("WARNING".to_owned(), "careful".to_owned())
        ]
    );
}

/// Waits until the server runs exactly `n` statements whose text starts with `prefix`.
async fn wait_active(observer: &Client, prefix: &str, n: i64) {
    let deadline = Instant::now() + STEP;
    loop {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND starts_with(query, $1)",
                &[&prefix],
            )
            .await
            .expect("pg_stat_activity");
        if row.get::<_, i64>(0) == n {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix} never became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn observer(topo: &Topology) -> Client {
    support::connect(&support::direct_conn_str(topo, &topo.shards[0].primary))
        .await
        .expect("direct connection")
}

#[tokio::test]
async fn cancel_reaches_only_its_own_query() {
    let topo = topology();
    let proxy = Proxy::start_with(&topo, options(2));
    let observer = observer(&topo).await;
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    let token = a.cancel_token();
    let started = Instant::now();
    let a_task = tokio::spawn(async move { a.simple_query("SELECT pg_sleep(10) /* a */").await });
    let b_task = tokio::spawn(async move { b.simple_query("SELECT pg_sleep(1.5) /* b */").await });
    wait_active(&observer, "SELECT pg_sleep(10) /* a */", 1).await;
    wait_active(&observer, "SELECT pg_sleep(1.5) /* b */", 1).await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let a_result = timeout(Duration::from_secs(3), a_task)
        .await
        .expect("cancel lands within 3 s")
        .expect("task");
    let err = a_result.expect_err("a was canceled");
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let b_result = step("b", b_task).await.expect("task");
    assert!(b_result.is_ok(), "b must not be canceled: {b_result:?}");
}

#[tokio::test]
async fn cancel_after_release_does_not_hit_the_next_client() {
    let topo = topology();
    // One server: A's earlier query and B's sleep run on the same server connection.
    let proxy = Proxy::start_with(&topo, options(1));
    let observer = observer(&topo).await;
    let a = proxy.connect(&topo).await;
    let b = proxy.connect(&topo).await;
    a.query_one("SELECT 1", &[]).await.expect("a ran once");
    let b_task = tokio::spawn(async move { b.simple_query("SELECT pg_sleep(1) /* b */").await });
    wait_active(&observer, "SELECT pg_sleep(1) /* b */", 1).await;
    a.cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("send cancel");
    let b_result = step("b", b_task).await.expect("task");
    assert!(b_result.is_ok(), "A's cancel hit B's query: {b_result:?}");
}

#[tokio::test]
async fn five_hundred_clients_on_five_servers() {
    let topo = topology();
    // Trust auth: 500 SCRAM handshakes in a debug build would dominate the test's time,
    // and the pooling under test starts after authentication.
    let proxy = support::start_trust(
        &topo,
        ProxyOptions {
            pool_size: 5,
            checkout_timeout_ms: 30_000,
            max_client_connections: 1_000,
            ..ProxyOptions::default()
        },
    );
    let conn_str = proxy.conn_str(&topo);
    let started = Instant::now();
    // Handshakes (SCRAM in debug builds) are limited in parallel; the connections all stay open.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(32));
    let connects = (0..500).map(|_| {
        let conn_str = conn_str.clone();
        let handshakes = handshakes.clone();
        async move {
            let _permit = handshakes.acquire().await.expect("semaphore");
            support::connect(&conn_str).await.expect("connect")
        }
    });
    let clients = timeout(
        Duration::from_secs(40),
        futures_util::future::join_all(connects),
    )
    .await
    .expect("500 clients connect");
    let connected = started.elapsed();
    let work = clients.iter().enumerate().map(|(i, client)| async move {
        let i = i as i32;
        let a = client
            .query_one("SELECT $1::int4 + 1", &[&i])
            .await?
            .get::<_, i32>(0);
        let b = client.simple_query("SELECT 2; SELECT 3").await?;
        client.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
        Ok::<_, tokio_postgres::Error>((a == i + 1) && simple_rows(&b).0.len() == 2)
    });
    let results = timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(work),
    )
    .await
    .expect("500 clients finish their queries");
    let ok = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let failures: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(true)))
        .take(3)
        .collect();
    assert_eq!(ok, 500, "failures (first 3): {failures:?}");
    // Five servers at most were ever opened for them.
    let observer = observer(&topo).await;
    let row = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("count servers");
    assert!(
        row.get::<_, i64>(0) <= 5,
        "servers: {}",
        row.get::<_, i64>(0)
    );
    eprintln!(
        "500 clients: connected in {connected:?}, all done in {:?}",
        started.elapsed()
    );
}

/// The next `n` messages from `x`.
async fn replies(n: usize, x: &mut support::raw::RawConn) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(x.next(STEP).await.expect("a reply"));
    }
    got
}

/// asyncpg prepares with Parse, Describe and Flush, and sends its Sync only with the next
/// execution. Once the server has answered such a run, shardgate ends it with a Sync of its
/// own and the connection goes back to the pool: here the only one, which another client then
/// uses while the first waits. After an error the server skips to the client's Sync, so the
/// connection stays until that Sync.
#[tokio::test]
async fn a_prepare_ended_by_flush_does_not_hold_the_server() {
    use support::raw::{login_trust, message, tags};
    let topo = topology();
    let proxy = support::start_trust(
        &topo,
        ProxyOptions {
            pool_size: 1,
            checkout_timeout_ms: 1000,
            ..ProxyOptions::default()
        },
    );
    let mut x = login_trust(proxy.addr(), topo.user(), topo.database()).await;
    let y = proxy.connect(&topo).await;
    x.send(
        &[
            message(b'P', b"s1\0SELECT 41 + 1\0\0\0"),
            message(b'D', b"Ss1\0"),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&replies(3, &mut x).await), b"1tT");
    step(
        "another client on the only connection",
        y.simple_query("SELECT 1"),
    )
    .await
    .expect("the connection went back after the prepare");
    x.send(
        &[
            message(b'B', b"\0s1\0\0\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat(),
    )
    .await;
    let got = x.until_ready(STEP).await;
    assert_eq!(tags(&got), b"2DCZ", "{got:?}");
    assert_eq!(support::raw::first_column(&got[1].1), "42");

    // A failed prepare keeps its connection until the client's Sync.
    x.send(
        &[
            message(b'P', b"s2\0SELEC 1\0\0\0"),
            message(b'D', b"Ss2\0"),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&replies(1, &mut x).await), b"E");
    let err = step("another client", y.simple_query("SELECT 1"))
        .await
        .expect_err("the failed run holds the only connection");
    assert_eq!(code(&err), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    x.send(&message(b'S', b"")).await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"Z");
    step("another client", y.simple_query("SELECT 1"))
        .await
        .expect("released at the client's Sync");
}
