//! Named prepared statements in transaction mode, which shardgate shares between clients under
//! internal names: one whose table changed under it (the server fails it with 0A000 "cached
//! plan must not change result type" until it is prepared again).

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{error_field, login_trust, message, RawConn};
use support::ProxyOptions;

/// Bound for any single step that should be quick.
const STEP: Duration = Duration::from_secs(10);

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn describe_statement(name: &str) -> Vec<u8> {
    message(b'D', format!("S{name}\0").as_bytes())
}

/// Bind of `name` (no parameters) to the unnamed portal, Execute, Sync.
fn run_statement(name: &str) -> Vec<u8> {
    [
        message(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()),
        message(b'E', b"\0\0\0\0\0"),
        message(b'S', b""),
    ]
    .concat()
}

/// Every column of a DataRow body, as text (NULL as "NULL").
fn columns(data_row: &[u8]) -> Vec<String> {
    let count = i16::from_be_bytes([data_row[0], data_row[1]]);
    let mut rest = &data_row[2..];
    let mut out = Vec::new();
    for _ in 0..count {
        let len = i32::from_be_bytes(rest[..4].try_into().expect("length"));
        rest = &rest[4..];
        if len < 0 {
            out.push("NULL".to_owned());
        } else {
            let len = len as usize;
            out.push(String::from_utf8(rest[..len].to_vec()).expect("text"));
            rest = &rest[len..];
        }
    }
    out
}

/// The rows of a reply, and the SQLSTATE of its error if it has one.
fn rows_and_error(got: &[(u8, Vec<u8>)]) -> (Vec<Vec<String>>, Option<String>) {
    let rows = got
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| columns(b))
        .collect();
    let error = got
        .iter()
        .find(|(t, _)| *t == b'E')
        .and_then(|(_, b)| error_field(b, b'C'));
    (rows, error)
}

/// The transaction status of the ReadyForQuery that ends a reply.
fn status(got: &[(u8, Vec<u8>)]) -> u8 {
    let (tag, body) = got.last().expect("a reply");
    assert_eq!(*tag, b'Z', "{got:?}");
    body[0]
}

async fn client(proxy: &support::Proxy, topo: &Topology) -> RawConn {
    login_trust(proxy.addr(), topo.user(), topo.database()).await
}

/// One server connection, so that every client's statement lives on the connection the
/// `ALTER TABLE` changed. Directly, a statement prepared before the change fails with 0A000
/// until it is prepared again, and preparing it again works. Through shardgate the retry maps
/// to the same shared internal statement, which the server keeps failing: before the fix every
/// retry, and every client preparing the text afterwards, failed forever.
#[tokio::test]
async fn a_statement_changed_by_alter_table_works_once_prepared_again() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = support::start_trust(
        &topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let mut admin = client(&proxy, &topo).await;
    admin
        .run_ok(
            "CREATE TABLE ddl_t (a int); INSERT INTO ddl_t VALUES (1)",
            STEP,
        )
        .await;

    let mut old = client(&proxy, &topo).await;
    old.send(&[parse("st", "SELECT * FROM ddl_t"), run_statement("st")].concat())
        .await;
    let got = old.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![vec!["1".to_owned()]], None));

    admin
        .run_ok("ALTER TABLE ddl_t ADD COLUMN b text DEFAULT 'new'", STEP)
        .await;

    // A client preparing the text for the first time meets the shared statement the server
    // now fails: as the statement's own client would directly.
    let mut fresh = client(&proxy, &topo).await;
    let prepare_and_run = |name: &str| {
        [
            parse(name, "SELECT * FROM ddl_t"),
            describe_statement(name),
            run_statement(name),
        ]
        .concat()
    };
    fresh.send(&prepare_and_run("st")).await;
    let got = fresh.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![], Some("0A000".to_owned())),
        "{got:?}"
    );
    let routine = got
        .iter()
        .find(|(t, _)| *t == b'E')
        .and_then(|(_, b)| error_field(b, b'R'));
    assert_eq!(routine.as_deref(), Some("RevalidateCachedQuery"));

    // Preparing it again, under another name (asyncpg) or the same one, now works.
    let new_shape = vec![vec!["1".to_owned(), "new".to_owned()]];
    for name in ["st_retry", "st"] {
        fresh.send(&prepare_and_run(name)).await;
        let got = fresh.until_ready(STEP).await;
        assert_eq!(
            rows_and_error(&got),
            (new_shape.clone(), None),
            "{name}: {got:?}"
        );
        assert_eq!(status(&got), b'I');
    }
    // So does any client preparing the text from now on.
    let mut later = client(&proxy, &topo).await;
    later.send(&prepare_and_run("mine")).await;
    let got = later.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (new_shape, None), "{got:?}");

    // The client that described the old columns and never prepared again keeps failing,
    // as directly: rows with columns it does not expect would be silently wrong.
    old.send(&run_statement("st")).await;
    let got = old.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![], Some("0A000".to_owned())),
        "{got:?}"
    );
}
