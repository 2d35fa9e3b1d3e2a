//! Named prepared statements in transaction mode, which shardgate shares between clients under
//! internal names: one whose table changed under it (the server fails it with 0A000 "cached
//! plan must not change result type" until it is prepared again), and a client's SQL-level
//! `DEALLOCATE` of a statement it prepared through the protocol (psycopg 3 evicts its cache
//! that way).

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::raw::{describe, error_field, login_trust, message, parse, query, tags, RawConn};
use support::ProxyOptions;

/// Bound for any single step that should be quick.
const STEP: Duration = Duration::from_secs(10);

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

/// A proxy with one server connection, which every client shares.
fn one_connection(topo: &Topology) -> support::Proxy {
    support::start_trust(
        topo,
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    )
}

async fn client(proxy: &support::Proxy, topo: &Topology) -> RawConn {
    login_trust(proxy.addr(), topo.user(), topo.database()).await
}

/// One server connection, so that every client's statement lives on the connection the
/// `ALTER TABLE` changed. Directly, a statement prepared before the change fails with 0A000
/// until it is prepared again, and preparing it again works. Through shardgate the retry maps
/// to the same shared internal statement, which the server keeps failing: before the fix every
/// retry, and every client preparing the text afterwards, failed forever. Since session 10 a
/// client preparing the text for the first time gets the new columns at once, as directly.
#[tokio::test]
async fn a_statement_changed_by_alter_table_works_once_prepared_again() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
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

    // A client preparing the text for the first time gets the table as it is now, although
    // the shared statement on the connection was analysed before the change.
    let mut fresh = client(&proxy, &topo).await;
    let prepare_and_run = |name: &str| {
        [
            parse(name, "SELECT * FROM ddl_t"),
            describe(b'S', name),
            run_statement(name),
        ]
        .concat()
    };
    let new_shape = vec![vec!["1".to_owned(), "new".to_owned()]];
    fresh.send(&prepare_and_run("st")).await;
    let got = fresh.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (new_shape.clone(), None), "{got:?}");

    // Preparing it again, under another name (asyncpg) or the same one once closed (a Parse
    // of a name the client has fails with 42P05, as directly), works too.
    for (name, close) in [("st_retry", vec![]), ("st", message(b'C', b"Sst\0"))] {
        fresh.send(&[close, prepare_and_run(name)].concat()).await;
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

/// psycopg 3 (with libpq before 17) evicts a statement from its cache with the SQL command
/// `DEALLOCATE _pg3_N`. The server knows the statement only under shardgate's internal name:
/// before the fix the command failed with 26000, and the client's name kept working.
#[tokio::test]
async fn sql_deallocate_of_a_protocol_statement_forgets_it() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut x = client(&proxy, &topo).await;

    // Outside a transaction.
    x.send(&[parse("_pg3_0", "SELECT 'dd'"), message(b'S', b"")].concat())
        .await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"1Z");
    x.send(&run_statement("_pg3_0")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![vec!["dd".to_owned()]], None));
    x.send(&query("DEALLOCATE _pg3_0")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(tags(&got), b"CZ", "{got:?}");
    assert_eq!(got[0].1, b"DEALLOCATE\0");
    assert_eq!(status(&got), b'I');
    // The name is gone, as on the server: Bind and a second DEALLOCATE fail with 26000.
    x.send(&run_statement("_pg3_0")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("26000"), "{got:?}");
    x.send(&query("DEALLOCATE _pg3_0")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("26000"), "{got:?}");

    // psycopg sends it as libpq's PQsendQueryParams does: through the unnamed statement.
    // Parsed and bound but never executed, it deallocates nothing.
    x.send(&[parse("_pg3_1", "SELECT 'ext'"), message(b'S', b"")].concat())
        .await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"1Z");
    x.send(
        &[
            parse("", "DEALLOCATE _pg3_1"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"12Z");
    x.send(&run_statement("_pg3_1")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![vec!["ext".to_owned()]], None));
    x.send(
        &[
            parse("", "DEALLOCATE _pg3_1"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'D', b"P\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat(),
    )
    .await;
    let got = x.until_ready(STEP).await;
    assert_eq!(tags(&got), b"12nCZ", "{got:?}");
    assert_eq!(got[3].1, b"DEALLOCATE\0");
    x.send(&run_statement("_pg3_1")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("26000"), "{got:?}");

    // Inside a transaction (`DEALLOCATE PREPARE`, pipelined behind another query, and a name
    // written in capitals, which the server folds as it folds any identifier).
    x.send(&[parse("ev", "SELECT 'ev'"), message(b'S', b"")].concat())
        .await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"1Z");
    x.run_ok("BEGIN", STEP).await;
    x.send(&[query("SELECT 1"), query("DEALLOCATE PREPARE EV;")].concat())
        .await;
    let first = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&first), (vec![vec!["1".to_owned()]], None));
    let got = x.until_ready(STEP).await;
    assert_eq!(tags(&got), b"CZ", "{got:?}");
    assert_eq!(status(&got), b'T');
    x.send(&run_statement("ev")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("26000"), "{got:?}");
    assert_eq!(status(&got), b'E');
    x.run_ok("ROLLBACK", STEP).await;

    // In a failed transaction the server answers, as it would directly: 25P02, and the
    // statement stays.
    x.send(&[parse("kept", "SELECT 'kept'"), message(b'S', b"")].concat())
        .await;
    assert_eq!(tags(&x.until_ready(STEP).await), b"1Z");
    x.run_ok("BEGIN", STEP).await;
    x.send(&query("SELECT 1/0")).await;
    assert_eq!(status(&x.until_ready(STEP).await), b'E');
    x.send(&query("DEALLOCATE kept")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("25P02"), "{got:?}");
    assert_eq!(status(&got), b'E');
    x.run_ok("ROLLBACK", STEP).await;
    x.send(&run_statement("kept")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![vec!["kept".to_owned()]], None));

    // DEALLOCATE ALL still reaches the server and drops every statement of the client.
    x.send(&query("DEALLOCATE ALL")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(tags(&got), b"CZ", "{got:?}");
    assert_eq!(got[0].1, b"DEALLOCATE ALL\0");
    x.send(&run_statement("kept")).await;
    let got = x.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got).1.as_deref(), Some("26000"), "{got:?}");
}

/// The unnamed statement across requests (libpq's `PQprepare(conn, "")` then
/// `PQexecPrepared`, asyncpg with `statement_cache_size=0`): each client runs its own, whichever
/// server connection it lands on, as directly. Before the fix a client could run the statement
/// another client had left on the connection.
#[tokio::test]
async fn each_client_runs_its_own_unnamed_statement_across_requests() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut a = client(&proxy, &topo).await;
    let mut b = client(&proxy, &topo).await;
    let prepare = |sql: &str| [parse("", sql), describe(b'S', ""), message(b'S', b"")].concat();
    a.send(&prepare("SELECT 'client A statement'")).await;
    assert_eq!(rows_and_error(&a.until_ready(STEP).await), (vec![], None));
    b.send(&prepare("SELECT 'client B statement'")).await;
    assert_eq!(rows_and_error(&b.until_ready(STEP).await), (vec![], None));
    for _ in 0..2 {
        a.send(&run_statement("")).await;
        assert_eq!(
            rows_and_error(&a.until_ready(STEP).await),
            (vec![vec!["client A statement".to_owned()]], None)
        );
        b.send(&run_statement("")).await;
        assert_eq!(
            rows_and_error(&b.until_ready(STEP).await),
            (vec![vec!["client B statement".to_owned()]], None)
        );
    }
    // A simple query destroys a client's unnamed statement, as on a server; a client that has
    // none is told so, even when the connection holds another client's.
    a.run_ok("SELECT 1", STEP).await;
    let mut c = client(&proxy, &topo).await;
    for conn in [&mut a, &mut c] {
        conn.send(&run_statement("")).await;
        let (rows, error) = rows_and_error(&conn.until_ready(STEP).await);
        assert_eq!((rows, error.as_deref()), (vec![], Some("26000")));
    }
}

/// A SET prepared with Parse and Sync alone (answered by shardgate without a server, as for
/// pgbench `-M prepared`) and run later is the client's setting from then on, on whichever
/// connection it gets, and nobody else's. Before the fix its run was a SET shardgate had not
/// seen coming: it reset the connection and the client lost its setting.
#[tokio::test]
async fn a_set_prepared_without_a_server_counts_when_it_runs() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut a = client(&proxy, &topo).await;
    let mut b = client(&proxy, &topo).await;
    a.send(
        &[
            parse("to_x", "SET search_path TO local_x"),
            message(b'S', b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(rows_and_error(&a.until_ready(STEP).await), (vec![], None));
    a.send(&run_statement("to_x")).await;
    assert_eq!(rows_and_error(&a.until_ready(STEP).await), (vec![], None));
    // The other client takes the only server connection, then the first gets it back.
    let show = [parse("", "SHOW search_path"), run_statement("")].concat();
    b.send(&show).await;
    let (rows, _) = rows_and_error(&b.until_ready(STEP).await);
    assert_ne!(rows, vec![vec!["local_x".to_owned()]], "leaked");
    a.send(&show).await;
    assert_eq!(
        rows_and_error(&a.until_ready(STEP).await),
        (vec![vec!["local_x".to_owned()]], None)
    );
}

/// A client's statement, prepared and run on the only server connection, then dropped from
/// that connection by another client's `DISCARD ALL` after `alter` changed the table: its next
/// use re-creates it there, as on any connection that never had it. `parse_alone`: prepared in
/// a request of its own (Parse, Sync), which shardgate answers without a server connection.
async fn recreated_after(
    alter: &str,
    table: &str,
    parse_alone: bool,
) -> (Topology, support::Proxy, RawConn, RawConn) {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut admin = client(&proxy, &topo).await;
    admin
        .run_ok(
            &format!(
                "CREATE TABLE {table} (id int, a text, b text); \
                 INSERT INTO {table} VALUES (1, 'A', 'B'); CREATE TABLE {table}_log (x int)"
            ),
            STEP,
        )
        .await;
    let mut user = client(&proxy, &topo).await;
    let sql = format!("SELECT * FROM {table} WHERE id = 1");
    if parse_alone {
        user.send(&[parse("s", &sql), message(b'S', b"")].concat())
            .await;
        assert_eq!(tags(&user.until_ready(STEP).await), vec![b'1', b'Z']);
    } else {
        user.send(&parse("s", &sql)).await;
    }
    user.send(&run_statement("s")).await;
    let got = user.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![row(&["1", "A", "B"])], None));
    admin.run_ok(alter, STEP).await;
    admin.run_ok("DISCARD ALL", STEP).await;
    (topo, proxy, user, admin)
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// The reply is PostgreSQL's own for a statement whose result type changed: 0A000, its message
/// and routine (pgjdbc and asyncpg prepare again on it), no row, the transaction status.
fn assert_result_type_changed(got: &[(u8, Vec<u8>)], status_after: u8) {
    assert_eq!(
        rows_and_error(got),
        (vec![], Some("0A000".to_owned())),
        "{got:?}"
    );
    let error = &got.iter().find(|(t, _)| *t == b'E').expect("an error").1;
    assert_eq!(
        error_field(error, b'M').as_deref(),
        Some("cached plan must not change result type")
    );
    assert_eq!(
        error_field(error, b'R').as_deref(),
        Some("RevalidateCachedQuery")
    );
    assert!(
        got.iter().all(|(t, _)| !matches!(t, b'T' | b'D' | b'C')),
        "nothing of the new layout: {got:?}"
    );
    assert_eq!(status(got), status_after);
}

/// The drivers hunt's silent wrong result: a statement re-created on a connection that lacked
/// it was analysed against the changed table, and the client got the new columns' values under
/// the names it had described (`a=B b=C`). As on one server it now fails with 0A000 until the
/// client prepares it again, which then gives the new columns.
#[tokio::test]
async fn a_recreated_statement_with_renamed_columns_fails_as_on_one_server() {
    let (_topo, _proxy, mut user, mut admin) = recreated_after(
        "ALTER TABLE shape_t DROP COLUMN a, ADD COLUMN c text DEFAULT 'C'",
        "shape_t",
        false,
    )
    .await;
    user.send(&run_statement("s")).await;
    assert_result_type_changed(&user.until_ready(STEP).await, b'I');

    // It keeps failing, by Bind or by Describe, as on one server; and like the server's own
    // error, it rolls back what ran before it in the same implicit transaction.
    let pipelined = [
        parse("", "INSERT INTO shape_t_log VALUES (1)"),
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
        run_statement("s"),
    ]
    .concat();
    user.send(&pipelined).await;
    let got = user.until_ready(STEP).await;
    assert_eq!(
        tags(&got),
        vec![b'1', b'2', b'C', b'E', b'Z'],
        "the INSERT ran, then the Bind failed: {got:?}"
    );
    assert_result_type_changed(&got[3..], b'I');
    let count = admin.run_ok("SELECT count(*) FROM shape_t_log", STEP).await;
    let counted: Vec<_> = count.iter().filter(|(t, _)| *t == b'D').collect();
    assert_eq!(
        columns(&counted[0].1),
        vec!["0"],
        "the INSERT was rolled back"
    );
    user.send(&[describe(b'S', "s"), message(b'S', b"")].concat())
        .await;
    assert_result_type_changed(&user.until_ready(STEP).await, b'I');
    // In a transaction block the error aborts it, as the server's would.
    user.send(&[query("BEGIN"), run_statement("s")].concat())
        .await;
    user.until_ready(STEP).await;
    assert_result_type_changed(&user.until_ready(STEP).await, b'E');
    user.run_ok("ROLLBACK", STEP).await;

    // Prepared again, it describes and returns the new columns.
    user.send(
        &[
            message(b'C', b"Ss\0"),
            parse("s", "SELECT * FROM shape_t WHERE id = 1"),
            describe(b'S', "s"),
            run_statement("s"),
        ]
        .concat(),
    )
    .await;
    let got = user.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![row(&["1", "B", "C"])], None),
        "{got:?}"
    );
}

/// The same with a changed column count (pgjdbc crashed decoding it, and in binary mode failed
/// with 08P01 forever), for a statement prepared in a request of its own (pgbench -M prepared,
/// libpq's PQprepare), which shardgate answers locally: its shape is learnt at its first run.
#[tokio::test]
async fn a_recreated_statement_with_fewer_columns_fails_as_on_one_server() {
    let (_topo, _proxy, mut user, _admin) =
        recreated_after("ALTER TABLE shape_n DROP COLUMN a", "shape_n", true).await;
    user.send(&run_statement("s")).await;
    assert_result_type_changed(&user.until_ready(STEP).await, b'I');
}

/// A re-created statement whose columns are still the ones described runs, on the first try:
/// also when a column was dropped and added again under its name and type, which PostgreSQL
/// does not count as a change of result type either (its value is now NULL).
#[tokio::test]
async fn a_recreated_statement_with_the_same_columns_runs() {
    let (_topo, _proxy, mut user, _admin) = recreated_after(
        "ALTER TABLE shape_s DROP COLUMN b, ADD COLUMN b text",
        "shape_s",
        false,
    )
    .await;
    user.send(&run_statement("s")).await;
    let got = user.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![row(&["1", "A", "NULL"])], None),
        "{got:?}"
    );
    assert_eq!(tags(&got), vec![b'2', b'D', b'C', b'Z'], "{got:?}");
}

/// Parse, Describe, Bind, Execute and Sync of `name`: how asyncpg and pgjdbc prepare and run.
fn prepare_and_run(name: &str, sql: &str) -> Vec<u8> {
    [parse(name, sql), describe(b'S', name), run_statement(name)].concat()
}

/// The fresh hunt's false 0A000: clients prepared a text, the table was dropped and created
/// again with other columns, and a client preparing the same text afterwards got 0A000 at its
/// own Parse (asyncpg does not retry an error raised while preparing). Its Parse mapped to the
/// shared internal statement the earlier clients had left on the connection, analysed against
/// the old table. As on one server, a new Parse now always gets the table as it is, and the
/// earlier clients' statements still fail with 0A000 until prepared again.
#[tokio::test]
async fn a_fresh_parse_after_the_table_was_recreated_gets_the_new_columns() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut admin = client(&proxy, &topo).await;
    admin
        .run_ok(
            "CREATE TABLE fresh_t (id int, v text, w int); INSERT INTO fresh_t VALUES (1, 'x', 7)",
            STEP,
        )
        .await;
    let sql = "SELECT * FROM fresh_t WHERE id = 1";
    let mut olds = Vec::new();
    for _ in 0..2 {
        let mut old = client(&proxy, &topo).await;
        old.send(&prepare_and_run("s", sql)).await;
        let got = old.until_ready(STEP).await;
        assert_eq!(rows_and_error(&got), (vec![row(&["1", "x", "7"])], None));
        olds.push(old);
    }
    admin
        .run_ok(
            "DROP TABLE fresh_t; CREATE TABLE fresh_t (id int, v text); \
             INSERT INTO fresh_t VALUES (1, 'y')",
            STEP,
        )
        .await;
    for round in 0..2 {
        let mut new = client(&proxy, &topo).await;
        new.send(&prepare_and_run("s", sql)).await;
        let got = new.until_ready(STEP).await;
        assert_eq!(
            rows_and_error(&got),
            (vec![row(&["1", "y"])], None),
            "new client {round}: {got:?}"
        );
        assert_eq!(
            tags(&got),
            vec![b'1', b't', b'T', b'2', b'D', b'C', b'Z'],
            "{got:?}"
        );
        // asyncpg's way: Parse, Describe, Flush now, Bind and Execute later.
        new.send(&[parse("s2", sql), describe(b'S', "s2"), message(b'H', b"")].concat())
            .await;
        let mut described = Vec::new();
        while described.last().map(|(t, _)| *t) != Some(b'T') {
            described.push(new.next(STEP).await.expect("a reply to the Flush"));
        }
        assert_eq!(tags(&described), vec![b'1', b't', b'T'], "{described:?}");
        new.send(&run_statement("s2")).await;
        let got = new.until_ready(STEP).await;
        assert_eq!(rows_and_error(&got), (vec![row(&["1", "y"])], None));
    }
    // The clients that prepared before the change get PostgreSQL's 0A000, as on one server.
    for old in &mut olds {
        old.send(&run_statement("s")).await;
        assert_result_type_changed(&old.until_ready(STEP).await, b'I');
    }
    // And the new clients' statement is not poisoned by that.
    let mut last = client(&proxy, &topo).await;
    last.send(&prepare_and_run("s", sql)).await;
    let got = last.until_ready(STEP).await;
    assert_eq!(rows_and_error(&got), (vec![row(&["1", "y"])], None));
}

/// The other false 0A000 of the fresh hunt: `t.*` expands to the table's columns at analysis,
/// so after `ADD COLUMN` a statement prepared before fails with 0A000; a client preparing the
/// text again under a new name (a driver re-preparing, or another statement of its cache) got
/// that 0A000 too, from the copy prepared before the change. It now gets the new columns, and
/// the old name still fails, as on one server.
#[tokio::test]
async fn a_star_statement_prepared_again_after_add_column_gets_the_new_columns() {
    let topo = Topology::builder().build().expect("topology");
    let proxy = one_connection(&topo);
    let mut admin = client(&proxy, &topo).await;
    admin
        .run_ok(
            "CREATE TABLE fresh_s (id int, v text); INSERT INTO fresh_s VALUES (1, 'x')",
            STEP,
        )
        .await;
    let sql = "SELECT t.*, 1 AS one FROM fresh_s t WHERE id = 1";
    let mut user = client(&proxy, &topo).await;
    let mut other = client(&proxy, &topo).await;
    for c in [&mut user, &mut other] {
        c.send(&prepare_and_run("a1", sql)).await;
        let got = c.until_ready(STEP).await;
        assert_eq!(rows_and_error(&got), (vec![row(&["1", "x", "1"])], None));
    }
    admin
        .run_ok("ALTER TABLE fresh_s ADD COLUMN w int DEFAULT 7", STEP)
        .await;
    user.send(&prepare_and_run("a2", sql)).await;
    let got = user.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![row(&["1", "x", "7", "1"])], None),
        "{got:?}"
    );
    for c in [&mut user, &mut other] {
        c.send(&run_statement("a1")).await;
        assert_result_type_changed(&c.until_ready(STEP).await, b'I');
    }
    user.send(&run_statement("a2")).await;
    let got = user.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![row(&["1", "x", "7", "1"])], None)
    );
    // In a transaction block too: the fresh Parse must not abort it.
    other
        .send(&[query("BEGIN"), prepare_and_run("a3", sql)].concat())
        .await;
    other.until_ready(STEP).await;
    let got = other.until_ready(STEP).await;
    assert_eq!(
        rows_and_error(&got),
        (vec![row(&["1", "x", "7", "1"])], None),
        "{got:?}"
    );
    assert_eq!(status(&got), b'T');
    other.run_ok("COMMIT", STEP).await;
}
