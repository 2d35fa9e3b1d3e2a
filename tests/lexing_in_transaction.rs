//! `SET standard_conforming_strings` inside an open transaction changes how the server reads
//! the transaction's later statements at once, not at COMMIT: shardgate must split them the
//! same way, or it tracks a SET hidden in a string literal (or misses a real one) and applies
//! the wrong settings to the client's next server connection.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::ProxyOptions;
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    let row = c
        .query_one(&format!("SELECT current_setting('{name}')"), &[])
        .await
        .expect("current_setting");
    row.get(0)
}

#[tokio::test]
async fn statements_after_a_set_of_standard_conforming_strings_are_read_as_the_server_reads_them() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().build().expect("topology");
        // One server connection: every checkout after another client's re-applies the client's
        // settings as shardgate believes them.
        let proxy = support::Proxy::start_with(
            &topology,
            ProxyOptions {
                pool_size: 1,
                ..ProxyOptions::default()
            },
        );
        let a = proxy.connect(&topology).await;
        let other = proxy.connect(&topology).await;
        let default_path = show(&other, "search_path").await;
        a.batch_execute("CREATE SCHEMA IF NOT EXISTS lex_x; CREATE SCHEMA IF NOT EXISTS lex_y")
            .await
            .expect("schemas");

        // Off inside the transaction: the rest of this text is one string literal.
        for sql in [
            "BEGIN",
            "SET standard_conforming_strings = off",
            r"SELECT 'a\'; SET search_path TO lex_x; --'",
            "COMMIT",
        ] {
            a.simple_query(sql).await.expect(sql);
        }
        show(&other, "search_path").await;
        assert_eq!(show(&a, "search_path").await, default_path, "no SET ran");
        assert_eq!(show(&a, "standard_conforming_strings").await, "off");

        // On again inside a transaction: the same text now holds a real SET.
        for sql in [
            "BEGIN",
            "SET standard_conforming_strings = on",
            r"SELECT 'a\'; SET search_path TO lex_y; --'",
            "COMMIT",
        ] {
            a.simple_query(sql).await.expect(sql);
        }
        show(&other, "search_path").await;
        assert_eq!(show(&a, "search_path").await, "lex_y", "the SET ran");
        assert_eq!(show(&a, "standard_conforming_strings").await, "on");

        // SET LOCAL, and a rolled-back SET, hold for their transaction only.
        for (sql, ok) in [
            ("SET search_path TO DEFAULT", true),
            ("BEGIN", true),
            ("SET LOCAL standard_conforming_strings = off", true),
            (r"SELECT 'a\'; SET search_path TO lex_x; --'", true),
            ("COMMIT", true),
            ("BEGIN", true),
            ("SET standard_conforming_strings = off", true),
            ("ROLLBACK", true),
            (r"SELECT 'a\'; SET search_path TO lex_y; --'", true),
        ] {
            assert_eq!(a.simple_query(sql).await.is_ok(), ok, "{sql}");
        }
        show(&other, "search_path").await;
        assert_eq!(show(&a, "search_path").await, "lex_y");
        assert_eq!(show(&a, "standard_conforming_strings").await, "on");
    })
    .await
    .expect("test timed out");
}
