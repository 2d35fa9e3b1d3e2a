//! One test per classifier rule: each write kind, each guard against a known sqlparser misparse,
//! hints, transaction control, shardgate's own commands and how statements combine.

use shardgate_sql::{Classifier, Hint, ShardgateCommand, TxnControl, WhyWrite};

fn classify(sql: &str) -> shardgate_sql::Classification {
    Classifier::new(0, &["audit.log_access".to_owned()]).classify_uncached(sql.as_bytes())
}

fn why(sql: &str) -> Option<WhyWrite> {
    classify(sql).write
}

#[track_caller]
fn assert_read(sql: &str) {
    let c = classify(sql);
    assert!(c.is_read(), "{sql:?} should be a read: {c:?}");
}

#[test]
fn plain_queries_are_reads() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "select 1; select 2;",
        "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        "VALUES (1, 'a'), (2, 'b')",
        "TABLE accounts",
        "TABLE ONLY public.accounts",
        "(SELECT 1) UNION (SELECT 2)",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t",
        "SHOW search_path",
        "SHOW ALL",
        "SHOW TIME ZONE",
        "SELECT 'nextval(1)', \"note\" FROM t -- nextval('s')",
        "SELECT count(*) FROM t WHERE note = 'FOR UPDATE INTO'",
        "",
    ] {
        assert_read(sql);
    }
}

#[test]
fn dml_and_ddl_are_writes() {
    assert_eq!(why("INSERT INTO t VALUES (1)"), Some(WhyWrite::Dml));
    assert_eq!(why("update t set a = 1"), Some(WhyWrite::Dml));
    assert_eq!(why("DELETE FROM t"), Some(WhyWrite::Dml));
    assert_eq!(
        why("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
        Some(WhyWrite::Dml)
    );
    assert_eq!(
        why("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"),
        Some(WhyWrite::Dml)
    );
    assert_eq!(why("CREATE TABLE t (a int)"), Some(WhyWrite::Ddl));
    assert_eq!(why("ALTER TABLE t ADD b int"), Some(WhyWrite::Ddl));
    assert_eq!(why("DROP TABLE t"), Some(WhyWrite::Ddl));
    assert_eq!(why("TRUNCATE t"), Some(WhyWrite::Ddl));
}

#[test]
fn other_write_kinds() {
    let cases: &[(&str, WhyWrite)] = &[
        ("COPY t FROM STDIN", WhyWrite::CopyFrom),
        (
            "COPY t (a, b) FROM '/tmp/x' WITH (FORMAT csv)",
            WhyWrite::CopyFrom,
        ),
        (
            "COPY (SELECT 1 FROM t) TO STDOUT",
            WhyWrite::Other("copy to"),
        ),
        ("VACUUM (VERBOSE) t", WhyWrite::Maintenance),
        ("ANALYZE t", WhyWrite::Maintenance),
        ("CLUSTER t USING t_pkey", WhyWrite::Maintenance),
        ("REINDEX (CONCURRENTLY) TABLE t", WhyWrite::Maintenance),
        (
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
            WhyWrite::Maintenance,
        ),
        ("GRANT SELECT ON t TO bob", WhyWrite::Grant),
        ("REVOKE ALL ON t FROM bob", WhyWrite::Grant),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", WhyWrite::Lock),
        ("CALL do_things(1)", WhyWrite::Call),
        ("DO $$ BEGIN PERFORM 1; END $$", WhyWrite::Do),
        ("LISTEN chan", WhyWrite::ListenNotify),
        ("NOTIFY chan, 'x'", WhyWrite::ListenNotify),
        ("UNLISTEN *", WhyWrite::ListenNotify),
        ("DECLARE c CURSOR FOR SELECT 1", WhyWrite::Other("cursor")),
        ("FETCH 10 FROM c", WhyWrite::Other("cursor")),
        ("MOVE NEXT IN c", WhyWrite::Other("cursor")),
        ("CLOSE c", WhyWrite::Other("cursor")),
        ("SET search_path TO app", WhyWrite::Other("session")),
        ("RESET ALL", WhyWrite::Other("session")),
        ("DISCARD ALL", WhyWrite::Other("session")),
        ("SET CONSTRAINTS ALL DEFERRED", WhyWrite::Other("session")),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            WhyWrite::Other("session"),
        ),
        (
            "PREPARE p AS SELECT 1",
            WhyWrite::Other("prepared statement"),
        ),
        ("EXECUTE p", WhyWrite::Other("prepared statement")),
        ("SHOW 'x'", WhyWrite::Other("show")),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", WhyWrite::Dml),
        ("EXPLAIN ANALYZE DELETE FROM t", WhyWrite::Dml),
    ];
    for (sql, want) in cases {
        assert_eq!(why(sql).as_ref(), Some(want), "{sql}");
    }
}

#[test]
fn locking_reads_are_writes() {
    for sql in [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR SHARE OF t NOWAIT",
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        "WITH l AS (SELECT * FROM t FOR UPDATE) SELECT * FROM l",
    ] {
        assert_eq!(why(sql), Some(WhyWrite::Locking), "{sql}");
    }
    // sqlparser rejects NO KEY UPDATE: still a write, as unparsed.
    for sql in [
        "SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
        "select * from t for key share",
    ] {
        assert_eq!(why(sql), Some(WhyWrite::Unparsed), "{sql}");
    }
}

#[test]
fn writable_ctes_are_writes() {
    assert_eq!(
        why("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
        Some(WhyWrite::WritableCte)
    );
    assert_eq!(
        why("WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT count(*) FROM u"),
        Some(WhyWrite::WritableCte)
    );
    assert_eq!(
        why("WITH a AS (SELECT 1), i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i"),
        Some(WhyWrite::WritableCte)
    );
}

#[test]
fn select_into_is_a_write_even_when_sqlparser_reads_it_as_a_select() {
    // The corpus README's misparse: sqlparser accepts this as a plain read.
    assert_eq!(why("SELECT INTO t FROM s"), Some(WhyWrite::SelectInto));
    assert_eq!(
        why("SELECT * INTO new_t FROM s"),
        Some(WhyWrite::SelectInto)
    );
    assert_eq!(
        why("WITH x AS (SELECT 1) SELECT * INTO y FROM x"),
        Some(WhyWrite::SelectInto)
    );
    let temp = classify("SELECT * INTO TEMP t2 FROM s");
    assert!(temp.write.is_some() && temp.sticky_primary, "{temp:?}");
}

#[test]
fn write_functions_are_found_at_token_level() {
    let cases = [
        ("SELECT nextval('s')", "nextval"),
        ("SELECT pg_catalog.setval('s', 1)", "setval"),
        ("SELECT \"nextval\"('s')", "nextval"),
        ("SELECT NEXTVAL /* c */ ('s')", "nextval"),
        ("SELECT pg_advisory_xact_lock(1)", "pg_advisory_xact_lock"),
        ("SELECT pg_notify('c', 'x')", "pg_notify"),
        ("SELECT txid_current()", "txid_current"),
        ("SELECT pg_current_xact_id()", "pg_current_xact_id"),
        ("SELECT lo_create(0)", "lo_create"),
        ("SELECT set_config('a.b', 'c', false)", "set_config"),
        (
            "SELECT x FROM t WHERE y = audit.log_access(x)",
            "log_access",
        ),
        ("SELECT Log_Access(1)", "log_access"),
        ("EXPLAIN ANALYZE SELECT nextval('s')", "nextval"),
        ("WITH s AS (SELECT nextval('q')) SELECT * FROM s", "nextval"),
        ("VALUES (nextval('s'))", "nextval"),
    ];
    for (sql, f) in cases {
        assert_eq!(
            why(sql),
            Some(WhyWrite::WriteFunction(f.to_owned())),
            "{sql}"
        );
    }
    // Hidden inside something sqlparser cannot read: still a write, just for a vaguer reason.
    assert!(why("SELECT nextval('s') FROM t WHERE x = pg_lsn '0/1' !!!").is_some());
}

#[test]
fn temp_tables_and_session_advisory_locks_stick_to_the_primary() {
    for sql in [
        "CREATE TEMP TABLE t (a int)",
        "create temporary table t as select 1",
        "CREATE GLOBAL TEMPORARY TABLE t (a int)",
        "CREATE TABLE pg_temp.t (a int)",
    ] {
        let c = classify(sql);
        assert_eq!(c.write, Some(WhyWrite::TempTable), "{sql}");
        assert!(c.sticky_primary, "{sql}");
    }
    let c = classify("SELECT pg_advisory_lock(42)");
    assert!(c.sticky_primary && c.write.is_some());
    let c = classify("SELECT pg_try_advisory_lock_shared(1, 2)");
    assert!(c.sticky_primary && c.write.is_some());
    let c = classify("DO $$ BEGIN CREATE TEMP TABLE x (a int); END $$");
    assert!(c.sticky_primary && c.write == Some(WhyWrite::Do));
    // Transaction-scoped locks and plain tables do not pin the session.
    assert!(!classify("SELECT pg_advisory_xact_lock(1)").sticky_primary);
    assert!(!classify("CREATE TABLE t (temp int)").sticky_primary);
    assert!(!classify("SELECT temp FROM weather").sticky_primary);
}

#[test]
fn hints_come_from_comments_anywhere() {
    assert_eq!(
        classify("/* shardgate: primary */ SELECT 1").hint,
        Some(Hint::Primary)
    );
    assert_eq!(
        classify("SELECT 1 -- shardgate: replica").hint,
        Some(Hint::Replica)
    );
    assert_eq!(
        classify("SELECT 1; /* shardgate: shard=s1 */ SELECT 2").hint,
        Some(Hint::Shard("s1".to_owned()))
    );
    assert_eq!(
        classify("SELECT /* ShardGate:  shard_key = 42 */ 1").hint,
        Some(Hint::ShardKey("42".to_owned()))
    );
    assert_eq!(classify("SELECT '/* shardgate: primary */'").hint, None);
    assert_eq!(classify("/* shardgate: bogus */ SELECT 1").hint, None);
}

#[test]
fn transaction_control_from_leading_keywords() {
    let txn = |sql: &str| classify(sql).txn;
    use TxnControl::*;
    assert_eq!(txn("BEGIN"), [Begin { read_only: false }]);
    assert_eq!(
        txn("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE"),
        [Begin { read_only: true }]
    );
    assert_eq!(
        txn("start transaction read only"),
        [Begin { read_only: true }]
    );
    assert_eq!(
        txn("START TRANSACTION READ WRITE"),
        [Begin { read_only: false }]
    );
    assert_eq!(txn("COMMIT"), [Commit]);
    assert_eq!(txn("END WORK"), [Commit]);
    assert_eq!(txn("ROLLBACK"), [Rollback]);
    assert_eq!(txn("ABORT TRANSACTION"), [Rollback]);
    assert_eq!(txn("COMMIT AND NO CHAIN"), [Commit]);
    assert_eq!(
        txn("COMMIT AND CHAIN"),
        [Commit, Begin { read_only: false }]
    );
    assert_eq!(txn("SAVEPOINT a"), [Savepoint]);
    assert_eq!(txn("RELEASE SAVEPOINT a"), [Savepoint]);
    assert_eq!(txn("ROLLBACK TO SAVEPOINT a"), [Savepoint]);
    assert_eq!(txn("ROLLBACK WORK TO a"), [Savepoint]);
    assert_eq!(txn("SET TRANSACTION READ ONLY"), [SetTransactionReadOnly]);
    // A hot standby refuses serializable transactions: read-only or not, they need a primary.
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        "BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION ISOLATION LEVEL serializable READ ONLY",
    ] {
        assert_eq!(txn(sql), [Begin { read_only: false }], "{sql}");
    }
    let c = classify("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY");
    assert!(c.txn.is_empty() && c.write.is_some(), "{c:?}");
    for sql in [
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
    ] {
        let c = classify(sql);
        assert_eq!(c.txn, [Other], "{sql}");
        assert!(c.write.is_some(), "{sql}");
    }
    // Transaction control alone is not a write; the proxy routes transactions itself.
    assert!(classify("BEGIN; SELECT 1; COMMIT").is_read());
    assert!(classify("SET TRANSACTION READ ONLY").is_read());
    let c = classify("BEGIN; INSERT INTO t VALUES (1); COMMIT");
    assert_eq!(c.write, Some(WhyWrite::Dml));
    assert_eq!(c.txn, [Begin { read_only: false }, Commit]);
    // Right even where the statement around it cannot be parsed.
    assert_eq!(
        classify("BEGIN; SELECT !!!; COMMIT").txn,
        [Begin { read_only: false }, Commit]
    );
}

#[test]
fn shardgate_commands() {
    let cmd = |sql: &str| classify(sql).shardgate;
    assert_eq!(
        cmd("SET shardgate.route = 'primary'"),
        Some(ShardgateCommand::Set {
            name: "route".to_owned(),
            value: "primary".to_owned()
        })
    );
    assert_eq!(
        cmd("set ShardGate.Route to Replica;"),
        Some(ShardgateCommand::Set {
            name: "route".to_owned(),
            value: "replica".to_owned()
        })
    );
    assert_eq!(
        cmd("RESET shardgate.route"),
        Some(ShardgateCommand::Reset {
            name: "route".to_owned()
        })
    );
    assert_eq!(
        cmd("SHOW shardgate.route"),
        Some(ShardgateCommand::Show {
            name: "route".to_owned()
        })
    );
    assert!(classify("SHOW shardgate.route").is_read());
    assert_eq!(cmd("SET search_path = x"), None);
    // Not alone in its message: not handled by the proxy, and sent to the primary.
    let c = classify("SET shardgate.route = 'primary'; SELECT 1");
    assert_eq!(c.shardgate, None);
    assert!(c.write.is_some());
}

#[test]
fn statements_combine_first_write_wins() {
    let c = classify("SELECT 1; DELETE FROM t; SELECT nextval('s'); CREATE TEMP TABLE x (a int)");
    assert_eq!(c.statements, 4);
    assert_eq!(c.write, Some(WhyWrite::Dml));
    assert!(c.sticky_primary);
    assert!(c.parsed);
}

#[test]
fn copy_from_stdin_followed_by_more_statements() {
    assert_eq!(
        why("COPY t FROM STDIN; SELECT 1"),
        Some(WhyWrite::CopyFromStdinThenMore)
    );
    assert_eq!(
        why("SELECT 1; COPY t FROM stdin WITH (FORMAT csv); SELECT 2"),
        Some(WhyWrite::CopyFromStdinThenMore)
    );
    assert_eq!(
        why("SELECT 1; COPY t FROM STDIN;"),
        Some(WhyWrite::CopyFrom)
    );
}

#[test]
fn unparsable_reads_fail_closed() {
    for sql in [
        "SELECT FROM WHERE (",
        "SELECT 1 +",
        "\u{1F600}",
        "(((",
        "WITH x",
    ] {
        let c = classify(sql);
        assert_eq!(c.write, Some(WhyWrite::Unparsed), "{sql}");
        assert!(!c.parsed, "{sql}");
    }
    // An unknown leading keyword is a write for that reason alone.
    assert_eq!(why("SELEC 1"), Some(WhyWrite::Other("statement")));
    // Invalid UTF-8 cannot be handed to sqlparser.
    let c = Classifier::new(0, &[]).classify_uncached(b"SELECT '\xff'");
    assert_eq!(c.write, Some(WhyWrite::Unparsed));
}

#[test]
fn pathological_input_does_not_crash() {
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert_eq!(why(&deep), Some(WhyWrite::Unparsed));
    let unions = vec!["SELECT 1"; 20_000].join(" UNION ");
    assert!(why(&unions).is_some());
    let ors = format!(
        "SELECT 1 FROM t WHERE {}",
        vec!["a = 1"; 20_000].join(" OR ")
    );
    let _ = why(&ors);
    let long_in = format!(
        "SELECT 1 FROM t WHERE a IN ({})",
        vec!["1"; 100_000].join(",")
    );
    let _ = why(&long_in);
}

#[test]
fn cache_hits_return_the_same_answer() {
    let c = Classifier::new(2, &[]);
    let a = c.classify(b"SELECT 1");
    let b = c.classify(b"SELECT 1");
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(c.cache_stats(), (1, 1));
    // Literal values do not make a new entry: the key is the shape of the text.
    c.classify(b"SELECT 2");
    assert_eq!(c.cache_stats(), (2, 1));
    c.classify(b"SELECT a FROM t");
    c.classify(b"SELECT b FROM t"); // evicts SELECT <literal>
    c.classify(b"SELECT 1");
    assert_eq!(c.cache_stats(), (2, 4));
    // A different spelling is a different entry.
    c.classify(b"select 1");
    assert_eq!(c.cache_stats(), (2, 5));
    let none = Classifier::new(0, &[]);
    assert!(none.classify(b"SELECT 1").is_read());
}

#[test]
fn each_thread_uses_the_cache_it_is_bound_to_and_every_cache_answers_the_same() {
    let c = shardgate_sql::Classifier::with_caches(16, 2, &[]);
    // Two texts, one key each (the key blanks literals), classified three times on threads
    // bound to caches 0, 1 and 2 (which wraps to 0).
    for slot in [0, 1, 2] {
        std::thread::scope(|s| {
            s.spawn(|| {
                shardgate_sql::bind_thread_cache(slot);
                assert!(!c.classify(b"INSERT INTO t VALUES (1)").is_read());
                assert!(c.classify(b"SELECT 1").is_read());
            });
        });
    }
    // Cache 0 missed both texts once and then hit both; cache 1 missed both. One shared cache
    // would have missed twice and hit four times.
    assert_eq!(c.cache_stats(), (2, 4));
    assert!(shardgate_sql::Classifier::with_caches(0, 4, &[])
        .classify(b"SELECT 1")
        .is_read());
}

#[test]
fn long_operator_chains_fit_a_small_stack() {
    // A left-deep tree as long as the parse-length cap allows, on a thread with a
    // tokio-worker-sized stack: dropping or walking it must not overflow.
    let sql = format!("SELECT 1 WHERE {}1 = 1", "1+".repeat(120_000));
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || classify(&sql).write)
        .expect("spawn");
    assert!(handle.join().is_ok());
}

#[test]
fn statements_leaving_session_state_pin_the_session_and_say_why() {
    for (sql, why) in [
        ("CREATE TEMP TABLE t (a int)", "a temporary table"),
        ("SELECT 1 INTO TEMP t", "a temporary table"),
        ("CREATE TABLE pg_temp.t (a int)", "an object in pg_temp"),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
            "an object in pg_temp",
        ),
        (
            "SELECT pg_advisory_lock(42)",
            "a session-level advisory lock",
        ),
        (
            "select pg_try_advisory_lock_shared(1, 2)",
            "a session-level advisory lock",
        ),
        ("LISTEN chan", "LISTEN"),
        ("listen \"Chan\"", "LISTEN"),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "a cursor WITH HOLD",
        ),
        ("PREPARE q (int) AS SELECT $1", "PREPARE"),
        (
            "SELECT set_config('search_path', 'x', false)",
            "set_config(..., false)",
        ),
        (
            "SELECT pg_catalog.set_config('a.b', 'x', $3)",
            "set_config(..., false)",
        ),
        (
            "SELECT set_config('a.b', 'x', true), set_config('a.c', 'y', 'off')",
            "set_config(..., false)",
        ),
        ("LOAD 'auto_explain'", "LOAD"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET SESSION CHARACTERISTICS",
        ),
        ("SELECT dblink_connect('c', 'dbname=x')", "dblink_connect()"),
        (
            "DO $$ BEGIN PERFORM set_config('a.b', 'x', false); END $$",
            "set_config(..., false)",
        ),
        ("SELECT 1; LISTEN chan; SELECT 2", "LISTEN"),
    ] {
        assert_eq!(classify(sql).pins_session, Some(why), "{sql}");
    }
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "SELECT pg_advisory_xact_lock(1)",
        "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
        "SELECT set_config('request.jwt.claims', $1, true)",
        "SELECT set_config('a.b', 'x', 't'), set_config('a.c', 'y', TRUE)",
        "SELECT temp, hold, listen FROM weather",
        "UNLISTEN *",
        "NOTIFY chan",
        "DECLARE c CURSOR FOR SELECT 1",
        "PREPARE TRANSACTION 'gid'",
        "SET search_path TO x",
        "DISCARD ALL",
        "SELECT 'set_config(1, 2, false)'",
        "-- LISTEN chan\nSELECT 1",
    ] {
        assert_eq!(classify(sql).pins_session, None, "{sql}");
    }
}

#[test]
fn variants_that_leave_session_state_pin_too() {
    for (sql, why) in [
        // A set_config nested in another's arguments runs too.
        (
            "SELECT set_config('a.b', set_config('search_path', 'x', false), true)",
            "set_config(..., false)",
        ),
        // pg_temp first in search_path: a plain CREATE TABLE then makes a temporary table.
        (
            "SET search_path = pg_temp, public",
            "a search_path naming pg_temp",
        ),
        (
            "SET LOCAL search_path TO 'PG_TEMP'",
            "a search_path naming pg_temp",
        ),
        (
            "SELECT set_config('search_path', 'pg_temp', true)",
            "a search_path naming pg_temp",
        ),
        ("CREATE TABLE \"pg_temp\".t (a int)", "an object in pg_temp"),
        ("DO $$ BEGIN LISTEN chan; END $$", "LISTEN"),
        // A SET inside a DO block: its value is not seen, so it cannot be carried.
        (
            "DO $$BEGIN SET search_path TO do_leak; END$$",
            "SET inside a DO block",
        ),
        (
            "DO $$ BEGIN IF true THEN reset all; END IF; END $$",
            "SET inside a DO block",
        ),
        (
            "DO $$BEGIN EXECUTE 'SET search_path TO ' || quote_ident('s'); END$$",
            "SET inside a DO block",
        ),
        (
            "DO LANGUAGE plpgsql $b$ BEGIN PERFORM 1; SET statement_timeout = 5; END $b$",
            "SET inside a DO block",
        ),
        // The command in a tagged dollar-quoted or escape string.
        (
            "DO $$BEGIN EXECUTE $e$SET search_path TO do_leak$e$; END$$",
            "SET inside a DO block",
        ),
        (
            "DO $$BEGIN EXECUTE E'SET search_path TO ' || quote_ident('s'); END$$",
            "SET inside a DO block",
        ),
        (
            "DO E'BEGIN SET search_path TO do_leak; END'",
            "SET inside a DO block",
        ),
    ] {
        assert_eq!(classify(sql).pins_session, Some(why), "{sql}");
    }
    for sql in [
        "SELECT set_config('a.b', set_config('a.c', 'x', true), true)",
        "SET LOCAL search_path TO public",
        "DO $$ BEGIN PERFORM 1; END $$",
        "DO $$ BEGIN SET LOCAL search_path TO x; UPDATE t SET a = 1; END $$",
        "DO $$ BEGIN SET TRANSACTION READ ONLY; SET CONSTRAINTS ALL DEFERRED; END $$",
        "DO $$ BEGIN INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2; END $$",
    ] {
        assert_eq!(classify(sql).pins_session, None, "{sql}");
    }
}
