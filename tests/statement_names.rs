//! Statement names a client has, through shardgate (which tracks them in transaction mode) and
//! directly. A Parse of a statement name the client already has:
//! PostgreSQL analyses the new text first (its errors come first), then refuses the name with
//! 42P05 `prepared statement "x" already exists`, skips to Sync (rolling back the implicit
//! transaction) and keeps the old statement. shardgate tracks client statement names itself
//! in transaction mode, and used to replace the old statement silently. `DEALLOCATE` of a
//! protocol-level statement, in the shapes clients send it.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{describe, error_field, login_trust, message, parse, query, sync, RawConn};
use support::ProxyOptions;

/// Bound for any single step that should be quick.
const STEP: Duration = Duration::from_secs(10);

fn bind_execute(name: &str) -> Vec<u8> {
    [
        message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()),
        message(b'E', b"\0\0\0\0\0"),
    ]
    .concat()
}

fn close_statement(name: &str) -> Vec<u8> {
    message(b'C', format!("S{name}\0").as_bytes())
}

/// A reply as comparable text: tags, with DataRow values, command tags, error SQLSTATEs and
/// messages, and transaction status spelled out.
fn render(got: &[(u8, Vec<u8>)]) -> Vec<String> {
    got.iter()
        .filter(|(tag, _)| *tag != b'N')
        .map(|(tag, body)| match tag {
            b'D' => format!("D {}", support::raw::first_column(body)),
            b'C' => format!("C {}", String::from_utf8_lossy(&body[..body.len() - 1])),
            b'E' => format!(
                "E {} {}",
                error_field(body, b'C').unwrap_or_default(),
                error_field(body, b'M').unwrap_or_default()
            ),
            b'Z' => format!("Z {}", body[0] as char),
            other => (*other as char).to_string(),
        })
        .collect()
}

/// The same client, directly and through shardgate.
struct Pair {
    direct: RawConn,
    proxied: RawConn,
}

impl Pair {
    /// Sends `bytes` to both, and checks they answer alike; returns the answer.
    /// One after the other, as both share the database. Notices are left out.
    async fn step(&mut self, bytes: &[u8]) -> Vec<String> {
        let (direct, proxied) = self.both(bytes).await;
        assert_eq!(proxied, direct, "through shardgate vs. directly");
        direct
    }

    /// The answers directly and through shardgate.
    async fn both(&mut self, bytes: &[u8]) -> (Vec<String>, Vec<String>) {
        self.direct.send(bytes).await;
        let direct = render(&self.direct.until_ready(STEP).await);
        self.proxied.send(bytes).await;
        let proxied = render(&self.proxied.until_ready(STEP).await);
        (direct, proxied)
    }
}

async fn pair(topo: &Topology, options: ProxyOptions) -> (support::Proxy, Pair) {
    let proxy = support::start_trust(topo, options);
    let direct = login_trust(topo.shards[0].primary.addr(), topo.user(), topo.database()).await;
    let proxied = login_trust(proxy.addr(), topo.user(), topo.database()).await;
    (proxy, Pair { direct, proxied })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

const REFUSED: &str = "E 0A000 shardgate: DEALLOCATE of a protocol-level prepared statement \
                       works only sent alone, as a simple Query or as Parse, Bind, Execute and Sync";

const DUP_X: &str = "E 42P05 prepared statement \"x\" already exists";

#[tokio::test]
async fn a_second_parse_of_a_name_fails_and_keeps_the_first_statement() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    for pool_size in [1, 3] {
        let options = ProxyOptions {
            pool_size,
            ..ProxyOptions::default()
        };
        let (_proxy, mut c) = pair(&topo, options).await;

        // Prepared alone: shardgate answers that request itself.
        assert_eq!(
            c.step(&[parse("x", "SELECT 1"), sync()].concat()).await,
            strings(&["1", "Z I"])
        );
        // Again, alone and then pipelined with a run of it: refused, the rest skipped.
        assert_eq!(
            c.step(&[parse("x", "SELECT 2"), sync()].concat()).await,
            strings(&[DUP_X, "Z I"])
        );
        assert_eq!(
            c.step(&[parse("x", "SELECT 2"), bind_execute("x"), sync()].concat())
                .await,
            strings(&[DUP_X, "Z I"])
        );
        // The first statement is intact.
        assert_eq!(
            c.step(&[bind_execute("x"), sync()].concat()).await,
            strings(&["2", "D 1", "C SELECT 1", "Z I"])
        );

        // PostgreSQL analyses the new text before it looks at the name.
        let got = c
            .step(&[parse("x", "SELECT FROM no_such_table"), sync()].concat())
            .await;
        assert!(got[0].starts_with("E 42P01 "), "{got:?}");
        let got = c.step(&[parse("x", "SELEC 1"), sync()].concat()).await;
        assert!(got[0].starts_with("E 42601 "), "{got:?}");

        // Twice in one pipeline: the first stays, the second fails.
        assert_eq!(
            c.step(
                &[
                    parse("y", "SELECT 10"),
                    parse("y", "SELECT 20"),
                    bind_execute("y"),
                    sync(),
                ]
                .concat()
            )
            .await,
            strings(&[
                "1",
                "E 42P05 prepared statement \"y\" already exists",
                "Z I"
            ])
        );
        assert_eq!(
            c.step(&[bind_execute("y"), sync()].concat()).await,
            strings(&["2", "D 10", "C SELECT 1", "Z I"])
        );

        // A failed Parse leaves the name free; a closed name is free again. (A request of
        // nothing but Parses of new names is answered without a server, its errors coming at
        // the first use: each of these runs the statement.)
        let got = c
            .step(
                &[
                    parse("z", "SELECT FROM no_such_table"),
                    bind_execute("z"),
                    sync(),
                ]
                .concat(),
            )
            .await;
        assert!(got[0].starts_with("E 42P01 "), "{got:?}");
        assert_eq!(
            c.step(&[parse("z", "SELECT 3"), bind_execute("z"), sync()].concat())
                .await,
            strings(&["1", "2", "D 3", "C SELECT 1", "Z I"])
        );
        // A Parse skipped after an error leaves the name free too.
        let got = c
            .step(
                &[
                    parse("w", "SELEC"),
                    parse("v", "SELECT 4"),
                    bind_execute("v"),
                    sync(),
                ]
                .concat(),
            )
            .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            c.step(&[parse("v", "SELECT 5"), bind_execute("v"), sync()].concat())
                .await,
            strings(&["1", "2", "D 5", "C SELECT 1", "Z I"])
        );
        assert_eq!(
            c.step(
                &[
                    close_statement("x"),
                    parse("x", "SELECT 7"),
                    bind_execute("x"),
                    sync()
                ]
                .concat()
            )
            .await,
            strings(&["3", "1", "2", "D 7", "C SELECT 1", "Z I"])
        );

        // The unnamed statement is replaced silently.
        assert_eq!(
            c.step(
                &[
                    parse("", "SELECT 8"),
                    parse("", "SELECT 9"),
                    bind_execute(""),
                    sync()
                ]
                .concat()
            )
            .await,
            strings(&["1", "1", "2", "D 9", "C SELECT 1", "Z I"])
        );

        // In a transaction block the error aborts it.
        c.step(&query("BEGIN")).await;
        assert_eq!(
            c.step(&[parse("x", "SELECT 11"), sync()].concat()).await,
            strings(&[DUP_X, "Z E"])
        );
        c.step(&query("ROLLBACK")).await;
        // In a failed one, the text's analysis refuses first (25P02).
        c.step(&query("BEGIN")).await;
        c.step(&query("SELECT 1/0")).await;
        let got = c.step(&[parse("x", "SELECT 13"), sync()].concat()).await;
        assert!(got[0].starts_with("E 25P02 "), "{got:?}");
        c.step(&query("ROLLBACK")).await;

        // Outside one, it rolls back the implicit transaction of the pipeline.
        c.step(&query(
            "DROP TABLE IF EXISTS dup_t; CREATE TABLE dup_t (a int)",
        ))
        .await;
        assert_eq!(
            c.step(
                &[
                    parse("", "INSERT INTO dup_t VALUES (1)"),
                    bind_execute(""),
                    parse("x", "SELECT 12"),
                    sync(),
                ]
                .concat()
            )
            .await,
            strings(&["1", "2", "C INSERT 0 1", DUP_X, "Z I"])
        );
        assert_eq!(
            c.step(&query("SELECT count(*) FROM dup_t")).await,
            strings(&["T", "D 0", "C SELECT 1", "Z I"])
        );
        c.step(&query("DROP TABLE IF EXISTS dup_t")).await;
        // And x is still the statement it was.
        assert_eq!(
            c.step(&[bind_execute("x"), sync()].concat()).await,
            strings(&["2", "D 7", "C SELECT 1", "Z I"])
        );
    }
}

/// SQL `PREPARE` twice pins the session (SQL-level statements are not tracked): the server
/// itself refuses the second.
#[tokio::test]
async fn sql_prepare_twice_fails_as_directly() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    let (_proxy, mut c) = pair(&topo, ProxyOptions::default()).await;
    assert_eq!(
        c.step(&query("PREPARE p AS SELECT 1")).await,
        strings(&["C PREPARE", "Z I"])
    );
    assert_eq!(
        c.step(&query("PREPARE p AS SELECT 2")).await,
        strings(&["E 42P05 prepared statement \"p\" already exists", "Z I"])
    );
    assert_eq!(
        c.step(&query("EXECUTE p")).await,
        strings(&["T", "D 1", "C SELECT 1", "Z I"])
    );
}

/// `DEALLOCATE` of a protocol-level statement in other shapes than libpq's, and `DEALLOCATE
/// PREPARE`, `DEALLOCATE ALL`: each as directly.
#[tokio::test]
async fn deallocate_in_every_shape_matches_postgres() {
    let topo = Topology::builder().auth("trust").build().expect("topology");
    let (_proxy, mut c) = pair(&topo, ProxyOptions::default()).await;
    let prepare = |name: &str| [parse(name, "SELECT 1"), sync()].concat();
    let gone = |name: &str| format!("E 26000 prepared statement \"{name}\" does not exist");
    let ran = strings(&["2", "D 1", "C SELECT 1", "Z I"]);

    // Simple Query, with PREPARE.
    c.step(&prepare("a")).await;
    assert_eq!(
        c.step(&query("DEALLOCATE PREPARE a")).await,
        strings(&["C DEALLOCATE", "Z I"])
    );
    assert_eq!(
        c.step(&[bind_execute("a"), sync()].concat()).await,
        strings(&[&gone("a"), "Z I"])
    );

    // Unnamed statement without Describe; with Describe of the portal.
    for (name, described) in [("b", false), ("c", true)] {
        c.step(&prepare(name)).await;
        let mut req = parse("", &format!("DEALLOCATE {name}"));
        req.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        if described {
            req.extend(describe(b'P', ""));
        }
        req.extend(message(b'E', b"\0\0\0\0\0"));
        req.extend(sync());
        let got = c.step(&req).await;
        assert_eq!(got.last().map(String::as_str), Some("Z I"), "{got:?}");
        assert!(got.contains(&"C DEALLOCATE".to_owned()), "{got:?}");
        assert_eq!(
            c.step(&[bind_execute(name), sync()].concat()).await,
            strings(&[&gone(name), "Z I"])
        );
    }

    // Other shapes: shardgate refuses them with 0A000 (the server knows the statement only
    // under a shared internal name, and would answer 26000 while the client's name stayed).
    // Before the refusal they failed with 26000, or ran with the name still there.
    // Each: the name, the request(s), the answers directly and through shardgate.
    type Shape = (&'static str, Vec<u8>, Vec<String>, Vec<String>);
    let shapes: Vec<Shape> = vec![
        // Parsed in one request, run in the next.
        (
            "d",
            [parse("", "DEALLOCATE d"), sync(), bind_execute(""), sync()].concat(),
            strings(&["1", "Z I", "2", "C DEALLOCATE", "Z I"]),
            strings(&["1", "Z I", "2", REFUSED, "Z I"]),
        ),
        // Through a named statement.
        (
            "e",
            [
                parse("dealloc_e", "DEALLOCATE e"),
                bind_execute("dealloc_e"),
                sync(),
            ]
            .concat(),
            strings(&["1", "2", "C DEALLOCATE", "Z I"]),
            strings(&["1", "2", REFUSED, "Z I"]),
        ),
        // Pipelined with other statements.
        (
            "f",
            [
                parse("", "DEALLOCATE f"),
                bind_execute(""),
                parse("", "SELECT 1"),
                bind_execute(""),
                sync(),
            ]
            .concat(),
            strings(&[
                "1",
                "2",
                "C DEALLOCATE",
                "1",
                "2",
                "D 1",
                "C SELECT 1",
                "Z I",
            ]),
            strings(&["1", "2", REFUSED, "Z I"]),
        ),
        // In a multi-statement Query.
        (
            "g",
            query("DEALLOCATE g; SELECT 1"),
            strings(&["C DEALLOCATE", "T", "D 1", "C SELECT 1", "Z I"]),
            strings(&[REFUSED, "Z I"]),
        ),
    ];
    for (name, req, want_direct, want_proxied) in shapes {
        c.step(&prepare(name)).await;
        c.direct.send(&req).await;
        c.proxied.send(&req).await;
        let (mut direct, mut proxied) = (Vec::new(), Vec::new());
        while direct.len() < want_direct.len() {
            direct.extend(render(&c.direct.until_ready(STEP).await));
        }
        while proxied.len() < want_proxied.len() {
            proxied.extend(render(&c.proxied.until_ready(STEP).await));
        }
        assert_eq!(direct, want_direct, "{name}: directly");
        assert_eq!(proxied, want_proxied, "{name}: through shardgate");
        // The statement is still there, and the request, sent alone, works.
        c.direct.send(&prepare(name)).await;
        c.direct.until_ready(STEP).await;
        assert_eq!(c.step(&[bind_execute(name), sync()].concat()).await, ran);
        assert_eq!(
            c.step(&query(&format!("DEALLOCATE {name}"))).await,
            strings(&["C DEALLOCATE", "Z I"])
        );
    }
    // Alone inside a transaction it works too.
    c.step(&prepare("k")).await;
    c.step(&query("BEGIN")).await;
    assert_eq!(
        c.step(&query("DEALLOCATE k")).await,
        strings(&["C DEALLOCATE", "Z T"])
    );
    c.step(&query("COMMIT")).await;
    assert_eq!(
        c.step(&[bind_execute("k"), sync()].concat()).await,
        strings(&[&gone("k"), "Z I"])
    );
    // In a failed transaction the server answers, as directly.
    c.step(&prepare("j")).await;
    c.step(&query("BEGIN")).await;
    c.step(&query("SELECT 1/0")).await;
    let got = c.step(&query("DEALLOCATE j; SELECT 1")).await;
    assert!(got[0].starts_with("E 25P02 "), "{got:?}");
    c.step(&query("ROLLBACK")).await;
    assert_eq!(c.step(&[bind_execute("j"), sync()].concat()).await, ran);

    // DEALLOCATE ALL, simple and extended.
    for extended in [false, true] {
        c.step(&prepare("h")).await;
        c.step(&prepare("i")).await;
        let req = if extended {
            [parse("", "DEALLOCATE ALL"), bind_execute(""), sync()].concat()
        } else {
            query("DEALLOCATE ALL")
        };
        let got = c.step(&req).await;
        assert!(got.contains(&"C DEALLOCATE ALL".to_owned()), "{got:?}");
        for name in ["h", "i"] {
            assert_eq!(
                c.step(&[bind_execute(name), sync()].concat()).await,
                strings(&[&gone(name), "Z I"])
            );
        }
    }
    // A name the client does not have.
    assert_eq!(
        c.step(&query("DEALLOCATE nope")).await,
        strings(&[&gone("nope"), "Z I"])
    );
    // Whatever happened, a statement prepared afterwards works.
    c.step(&prepare("a")).await;
    assert_eq!(c.step(&[bind_execute("a"), sync()].concat()).await, ran);
}
