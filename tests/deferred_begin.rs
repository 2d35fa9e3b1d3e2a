//! The BEGIN shardgate answers itself and holds back until the transaction's first statement
//! (to route it), and the empty transaction's end it answers itself, must look exactly like
//! PostgreSQL: the same replies, transaction statuses and warnings, and the same rows left
//! behind. Every sequence runs once straight on the primary and once through shardgate, and
//! the transcripts are compared.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{
    bind, describe, error_field, execute, extended, login_trust, message, parse, query, sync,
    RawConn,
};
use support::{start_trust, wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;

/// Bound on each whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on each reply.
const T: Duration = Duration::from_secs(10);

struct Setup {
    topology: Topology,
    proxy: Proxy,
    primary: SocketAddr,
}

/// One primary and one replica (read/write splitting on, so a lone BEGIN is held back), and
/// a table `dbt(a int)`.
async fn setup() -> Setup {
    let topology = Topology::builder().replicas(1).build().expect("topology");
    let proxy = start_trust(
        &topology,
        ProxyOptions {
            extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
            ..ProxyOptions::default()
        },
    );
    wait_routable(&proxy, 1, Duration::from_secs(15)).await;
    let primary = topology.shards[0].primary.addr();
    let mut c = login_trust(primary, "postgres", topology.database()).await;
    c.run_ok("CREATE TABLE dbt(a int); GRANT ALL ON dbt TO PUBLIC", T)
        .await;
    Setup {
        topology,
        proxy,
        primary,
    }
}

/// One request: a simple Query, or an extended-protocol run ending with Sync.
fn simple(sql: &str) -> Vec<u8> {
    query(sql)
}

fn ext(sql: &str) -> Vec<u8> {
    let mut out = extended(sql);
    out.extend(message(b'S', b""));
    out
}

/// What a request got back, reduced to what must match: command tags, SQLSTATE and message
/// of errors and notices, DataRow first columns, and the transaction status.
async fn transcript(conn: &mut RawConn, request: &[u8]) -> Vec<String> {
    conn.send(request).await;
    let mut out = Vec::new();
    for (tag, body) in conn.until_ready(T).await {
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned();
        match tag {
            b'C' => out.push(format!("C {}", text(&body))),
            b'E' | b'N' => out.push(format!(
                "{} {} {}",
                tag as char,
                error_field(&body, b'C').unwrap_or_default(),
                error_field(&body, b'M').unwrap_or_default()
            )),
            b'D' => out.push(format!("D {}", support::raw::first_column(&body))),
            b'Z' => out.push(format!("Z {}", body[0] as char)),
            _ => {}
        }
    }
    out
}

impl Setup {
    async fn direct(&self) -> RawConn {
        login_trust(self.primary, "postgres", self.topology.database()).await
    }

    async fn proxied(&self) -> RawConn {
        login_trust(
            self.proxy.addr(),
            self.topology.user(),
            self.topology.database(),
        )
        .await
    }

    /// Runs `requests` on a fresh connection (after emptying `dbt`), then reads `dbt` on the
    /// primary: the transcript of both.
    async fn run(&self, mut conn: RawConn, requests: &[Vec<u8>]) -> Vec<Vec<String>> {
        let mut check = self.direct().await;
        check.run_ok("TRUNCATE dbt", T).await;
        let mut out = Vec::new();
        for r in requests {
            out.push(transcript(&mut conn, r).await);
        }
        drop(conn);
        out.push(transcript(&mut check, &query("SELECT count(*) FROM dbt")).await);
        out
    }

    /// The sequence straight on the primary and through shardgate must read the same.
    async fn same_as_direct(&self, name: &str, requests: &[Vec<u8>]) {
        let direct = self.run(self.direct().await, requests).await;
        let proxied = self.run(self.proxied().await, requests).await;
        assert_eq!(proxied, direct, "{name}: through shardgate vs directly");
    }
}

const INSERT: &str = "INSERT INTO dbt VALUES (1)";

/// A BEGIN PostgreSQL refuses is answered by PostgreSQL, not by shardgate: the client is not
/// told it is in a transaction that the server never opened (its next statement would then
/// autocommit, and its ROLLBACK undo nothing).
#[tokio::test]
async fn begin_texts_match_postgres() {
    timeout(TEST_TIMEOUT, async {
        let s = setup().await;
        for begin in [
            "BEGIN ISOLATION LEVEL READ UNCOMMITED",
            "BEGIN ISOLATION LEVEL bogus",
            "BEGIN READ WRITE,",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "begin transaction /* c */ isolation level read committed, not deferrable;",
            "BEGIN;",
        ] {
            s.same_as_direct(
                begin,
                &[
                    simple(begin),
                    simple(INSERT),
                    simple("SHOW transaction_isolation"),
                    simple("ROLLBACK"),
                ],
            )
            .await;
            s.same_as_direct(
                &format!("{begin} (extended)"),
                &[ext(begin), ext(INSERT), ext("ROLLBACK")],
            )
            .await;
        }
        // Modes a hot standby refuses: a transaction that turns read-only still runs on the
        // primary, where its BEGIN works.
        for begin in ["BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN READ WRITE"] {
            s.same_as_direct(
                &format!("{begin}, then SET TRANSACTION READ ONLY"),
                &[
                    simple(begin),
                    simple("SET TRANSACTION READ ONLY"),
                    simple("SHOW transaction_isolation"),
                    simple("SELECT pg_is_in_recovery()"),
                    simple("COMMIT"),
                ],
            )
            .await;
        }
    })
    .await
    .expect("test timed out");
}

/// The end of an empty transaction, answered by shardgate, reads as PostgreSQL's: `AND CHAIN`
/// opens the next transaction with the same modes, `END`/`ABORT` are COMMIT/ROLLBACK, and an
/// end with anything else in it goes to the server.
#[tokio::test]
async fn empty_transaction_ends_match_postgres() {
    timeout(TEST_TIMEOUT, async {
        let s = setup().await;
        let seqs: &[(&str, &[&str])] = &[
            (
                "commit and chain",
                &["BEGIN", "COMMIT AND CHAIN", INSERT, "ROLLBACK"],
            ),
            (
                "rollback and chain",
                &["BEGIN", "ROLLBACK AND CHAIN", INSERT, "ROLLBACK"],
            ),
            (
                "chain keeps the modes",
                &[
                    "BEGIN ISOLATION LEVEL REPEATABLE READ",
                    "COMMIT AND CHAIN",
                    "SHOW transaction_isolation",
                    "COMMIT",
                ],
            ),
            (
                "and no chain",
                &["BEGIN", "COMMIT AND NO CHAIN", INSERT, "ROLLBACK"],
            ),
            (
                "end/abort and chain",
                &[
                    "BEGIN",
                    "END AND CHAIN",
                    "ABORT WORK AND CHAIN",
                    INSERT,
                    "ABORT",
                ],
            ),
            ("end", &["BEGIN", "END", "COMMIT"]),
            ("abort", &["BEGIN", "ABORT TRANSACTION;", "ROLLBACK"]),
            ("bad end", &["BEGIN", "COMMIT garbage", "ROLLBACK"]),
            ("bad chain", &["BEGIN", "COMMIT AND NO", "ROLLBACK"]),
            (
                "savepoint",
                &[
                    "BEGIN",
                    "ROLLBACK TO SAVEPOINT nosuch",
                    "SELECT 1",
                    "ROLLBACK",
                ],
            ),
            (
                "failed then chain",
                &[
                    "BEGIN",
                    "SELECT 1/0",
                    "COMMIT AND CHAIN",
                    INSERT,
                    "ROLLBACK",
                ],
            ),
            (
                "commit outside",
                &["COMMIT", "ROLLBACK AND CHAIN", "SELECT 1"],
            ),
        ];
        for (name, seq) in seqs {
            let requests: Vec<Vec<u8>> = seq.iter().map(|q| simple(q)).collect();
            s.same_as_direct(name, &requests).await;
        }
        s.same_as_direct(
            "commit and chain (extended)",
            &[
                simple("BEGIN"),
                ext("COMMIT AND CHAIN"),
                ext(INSERT),
                simple("ROLLBACK"),
            ],
        )
        .await;
    })
    .await
    .expect("test timed out");
}

/// A held-back BEGIN the chosen node refuses after all (SERIALIZABLE on a hot standby, where a
/// hint sent the transaction): the statement that carried it fails with the server's error
/// and does not run, and the client's transaction is aborted, as it was told one was open.
#[tokio::test]
async fn a_held_back_begin_a_node_refuses_fails_the_statement() {
    timeout(TEST_TIMEOUT, async {
        let s = setup().await;
        let mut c = s.proxied().await;
        assert_eq!(
            transcript(&mut c, &query("BEGIN ISOLATION LEVEL SERIALIZABLE")).await,
            ["C BEGIN", "Z T"]
        );
        c.send(&query("/* shardgate: replica */ SELECT 1")).await;
        let got = c.until_ready(T).await;
        let error = got.iter().find(|(t, _)| *t == b'E').map(|(_, b)| b.clone());
        let error = error.unwrap_or_else(|| panic!("no error: {got:?}"));
        assert_eq!(
            error_field(&error, b'C').as_deref(),
            Some("0A000"),
            "{got:?}"
        );
        assert_eq!(
            error_field(&error, b'M').as_deref(),
            Some("cannot use serializable mode in a hot standby")
        );
        assert!(
            !got.iter().any(|(t, _)| *t == b'D'),
            "the SELECT ran: {got:?}"
        );
        assert_eq!(got.last().map(|(t, b)| (*t, b[0])), Some((b'Z', b'E')));
        assert_eq!(
            transcript(&mut c, &query("SELECT 1")).await,
            [
                "E 25P02 current transaction is aborted, commands ignored until end of \
                 transaction block",
                "Z E"
            ]
        );
        // As PostgreSQL ends an aborted transaction: COMMIT AND CHAIN rolls back and opens
        // the next one.
        let mut d = s.direct().await;
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        transcript(&mut d, &query("BEGIN ISOLATION LEVEL SERIALIZABLE")).await;
        transcript(&mut d, &query("SELECT 1/0")).await;
        for q in ["COMMIT AND CHAIN", "SELECT 2", "COMMIT"] {
            direct.push(transcript(&mut d, &query(q)).await);
            proxied.push(transcript(&mut c, &query(q)).await);
        }
        assert_eq!(proxied, direct);
        assert_eq!(proxied[0], ["C ROLLBACK", "Z T"]);

        // The serializable transaction above ran on the primary, and its end was probed for
        // read-your-writes (it was not READ ONLY): the session reads from the primary until the
        // replica has replayed that position. Wait for it, bounded.
        let mut on_replica = false;
        for _ in 0..100 {
            let got = transcript(
                &mut c,
                &query("/* shardgate: replica */ SELECT pg_is_in_recovery()"),
            )
            .await;
            if got.first().map(String::as_str) == Some("D t") {
                on_replica = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(on_replica, "the replica never caught up with the session");
        // A write it carried never ran anywhere.
        assert_eq!(
            transcript(&mut c, &query("BEGIN READ WRITE")).await,
            ["C BEGIN", "Z T"]
        );
        let got = transcript(
            &mut c,
            &query(&format!("/* shardgate: replica */ {INSERT}")),
        )
        .await;
        assert_eq!(got.last().map(String::as_str), Some("Z E"), "{got:?}");
        assert_eq!(
            transcript(&mut c, &query("ROLLBACK")).await,
            ["C ROLLBACK", "Z I"]
        );
        assert_eq!(
            transcript(&mut d, &query("SELECT count(*) FROM dbt")).await,
            ["D 0", "C SELECT 1", "Z I"]
        );

        // Ended through the extended protocol, the aborted transaction ends as directly too.
        for end in ["COMMIT", "COMMIT AND CHAIN", "ROLLBACK"] {
            let begin = query("BEGIN ISOLATION LEVEL SERIALIZABLE");
            let mut d = s.direct().await;
            transcript(&mut d, &begin).await;
            transcript(&mut d, &query("SELECT 1/0")).await;
            let mut c = s.proxied().await;
            transcript(&mut c, &begin).await;
            let got = transcript(&mut c, &query("/* shardgate: replica */ SELECT 1")).await;
            assert_eq!(got.last().map(String::as_str), Some("Z E"), "{got:?}");
            let mut direct = Vec::new();
            let mut proxied = Vec::new();
            for r in [ext(end), query("SELECT 1"), query("ROLLBACK")] {
                direct.push(transcript(&mut d, &r).await);
                proxied.push(transcript(&mut c, &r).await);
            }
            assert_eq!(proxied, direct, "{end} (extended) after the failed BEGIN");
        }
    })
    .await
    .expect("test timed out");
}

/// pgjdbc's shape of a statement with no metadata wanted (its BEGIN): Parse, Bind, Execute.
fn pbe(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", "", &[]), execute("", 0)].concat()
}

/// libpq's `PQsendQueryParams` (psycopg 3), or pgjdbc's query: Parse, Bind, Describe portal,
/// Execute.
fn pbde(sql: &str) -> Vec<u8> {
    [
        parse("", sql),
        bind("", "", &[]),
        describe(b'P', ""),
        execute("", 0),
    ]
    .concat()
}

/// Every reply, in order: message types, with command tags, SQLSTATEs, first columns and the
/// transaction status spelled out.
async fn full_transcript(conn: &mut RawConn, request: &[u8]) -> Vec<String> {
    conn.send(request).await;
    let mut out = Vec::new();
    for (tag, body) in conn.until_ready(T).await {
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned();
        out.push(match tag {
            b'C' => format!("C {}", text(&body)),
            b'E' | b'N' => format!(
                "{} {}",
                tag as char,
                error_field(&body, b'C').unwrap_or_default()
            ),
            b'D' => format!("D {}", support::raw::first_column(&body)),
            b'Z' => format!("Z {}", body[0] as char),
            other => (other as char).to_string(),
        });
    }
    out
}

/// A BEGIN run through the extended protocol, alone in its request (psycopg 3) or pipelined
/// in front of the transaction's first statement (pgjdbc), in each of the shapes drivers send,
/// is held back and answered by shardgate: every reply reads as PostgreSQL's, and the
/// transaction has the BEGIN's modes when it reaches its node.
#[tokio::test]
async fn extended_begin_shapes_match_postgres() {
    timeout(TEST_TIMEOUT, async {
        let s = setup().await;
        let jdbc = |begin: &str, sql: &str| [pbe(begin), pbde(sql), sync()].concat();
        let psycopg = |sql: &str| [pbde(sql), sync()].concat();
        let sequences: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "psycopg BEGIN, INSERT, COMMIT",
                vec![psycopg("BEGIN"), psycopg(INSERT), psycopg("COMMIT")],
            ),
            (
                "pgjdbc BEGIN ahead of a read",
                vec![jdbc("BEGIN", "SELECT 1"), psycopg("ROLLBACK")],
            ),
            (
                "pgjdbc BEGIN READ ONLY ahead of a read, then a write",
                vec![
                    jdbc("BEGIN READ ONLY", "SHOW transaction_read_only"),
                    psycopg(INSERT),
                    psycopg("ROLLBACK"),
                ],
            ),
            (
                "START TRANSACTION with a Describe of the statement",
                vec![
                    [
                        parse("", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
                        describe(b'S', ""),
                        bind("", "", &[]),
                        describe(b'P', ""),
                        execute("", 0),
                        pbde("SHOW transaction_isolation"),
                        sync(),
                    ]
                    .concat(),
                    psycopg("COMMIT"),
                ],
            ),
            (
                "pgjdbc's named BEGIN, prepared then bound again",
                vec![
                    [
                        parse("S_1", "BEGIN"),
                        bind("", "S_1", &[]),
                        execute("", 0),
                        pbde("SELECT 1"),
                        sync(),
                    ]
                    .concat(),
                    psycopg("ROLLBACK"),
                    [bind("", "S_1", &[]), execute("", 0), pbde(INSERT), sync()].concat(),
                    psycopg("COMMIT"),
                ],
            ),
            (
                "an error right after the pipelined BEGIN",
                vec![
                    jdbc("BEGIN", "SELECT 1/0"),
                    psycopg("SELECT 1"),
                    psycopg("COMMIT"),
                ],
            ),
            (
                "a prepare only, then its run, in the held-back transaction",
                vec![
                    psycopg("BEGIN"),
                    [parse("q", "SELECT 1"), sync()].concat(),
                    [bind("", "q", &[]), execute("", 0), sync()].concat(),
                    psycopg("ROLLBACK"),
                ],
            ),
            (
                "the unnamed BEGIN bound again in a later request",
                vec![
                    psycopg("BEGIN"),
                    [
                        parse("c", "COMMIT"),
                        bind("", "c", &[]),
                        execute("", 0),
                        sync(),
                    ]
                    .concat(),
                    [bind("", "", &[]), execute("", 0), sync()].concat(),
                    psycopg(INSERT),
                    [bind("", "c", &[]), execute("", 0), sync()].concat(),
                ],
            ),
        ];
        for (name, requests) in sequences {
            let mut runs = Vec::new();
            for mut conn in [s.direct().await, s.proxied().await] {
                let mut check = s.direct().await;
                check.run_ok("TRUNCATE dbt", T).await;
                let mut out = Vec::new();
                for r in &requests {
                    out.push(full_transcript(&mut conn, r).await);
                }
                drop(conn);
                out.push(transcript(&mut check, &query("SELECT count(*) FROM dbt")).await);
                runs.push(out);
            }
            assert_eq!(runs[1], runs[0], "{name}: through shardgate vs directly");
        }
    })
    .await
    .expect("test timed out");
}
