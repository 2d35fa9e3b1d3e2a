//! A transaction made serializable after it began (`BEGIN READ ONLY` then `SET TRANSACTION
//! ISOLATION LEVEL SERIALIZABLE`, and the `SET TRANSACTION READ ONLY` variants) must run on
//! the primary, as one opened serializable does: a hot standby refuses serializable mode.
//! Each transaction reads where it ran, its isolation and read-only mode, as directly on the
//! primary.

mod support;

use std::time::Duration;

use shardgate_testkit::Topology;
use support::{wait_routable, Proxy, ProxyOptions};
use tokio::time::timeout;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

const PROBE: &str = "SELECT inet_server_port()::text, current_setting('transaction_isolation'), \
                     current_setting('transaction_read_only')";

/// Runs `steps` (each a simple Query), the probe and COMMIT; returns the probe's row, or the
/// first error's SQLSTATE and message.
async fn run(c: &tokio_postgres::Client, steps: &[&str]) -> Result<(u16, String, String), String> {
    let mut outcome = Ok(None);
    for sql in steps.iter().copied().chain([PROBE]) {
        match c.simple_query(sql).await {
            Ok(msgs) => {
                if sql == PROBE {
                    let row = msgs.into_iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                        _ => None,
                    });
                    outcome = Ok(row.map(|r| {
                        (
                            r.get(0).unwrap_or("0").parse().unwrap_or(0),
                            r.get(1).unwrap_or("").to_owned(),
                            r.get(2).unwrap_or("").to_owned(),
                        )
                    }));
                }
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
                outcome = Err(format!("{sql}: {code} {e}"));
                break;
            }
        }
    }
    c.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    outcome.and_then(|row| row.ok_or_else(|| "no row".to_owned()))
}

#[tokio::test]
async fn a_transaction_made_serializable_after_begin_runs_on_the_primary() {
    timeout(TEST_TIMEOUT, async {
        let topology = Topology::builder().replicas(1).build().expect("topology");
        let proxy = Proxy::start_with(
            &topology,
            ProxyOptions {
                extra_yaml: "routing:\n  lag_check_interval_ms: 100\n".to_owned(),
                ..ProxyOptions::default()
            },
        );
        wait_routable(&proxy, 1, Duration::from_secs(15)).await;
        let c = proxy.connect(&topology).await;
        let direct = support::connect(&support::direct_conn_str(
            &topology,
            &topology.shards[0].primary,
        ))
        .await
        .expect("direct");
        let primary = topology.shards[0].primary.port();
        let replica = topology.shards[0].replicas[0].port();

        // A read-only transaction otherwise runs on the replica.
        let got = run(&c, &["BEGIN READ ONLY"]).await;
        assert_eq!(got, Ok((replica, "read committed".into(), "on".into())));

        let cases: &[&[&str]] = &[
            &[
                "BEGIN READ ONLY",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            ],
            &["BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
            &[
                "START TRANSACTION READ ONLY",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            ],
            &[
                "BEGIN READ ONLY",
                "SET transaction_isolation = 'serializable'",
            ],
            &[
                "BEGIN READ ONLY",
                "SET LOCAL transaction_isolation TO serializable",
            ],
            &[
                "BEGIN",
                "SET TRANSACTION READ ONLY ISOLATION LEVEL SERIALIZABLE",
            ],
            &[
                "BEGIN",
                "SET TRANSACTION READ ONLY",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            ],
            &[
                "BEGIN",
                "SET TRANSACTION READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            ],
            &[
                "BEGIN ISOLATION LEVEL SERIALIZABLE",
                "SET TRANSACTION READ ONLY",
            ],
        ];
        for steps in cases {
            let want = run(&direct, steps).await;
            assert_eq!(
                want.as_ref().map(|w| (&w.1, &w.2)),
                Ok((&"serializable".to_owned(), &"on".to_owned())),
                "directly: {steps:?}"
            );
            let got = run(&c, steps).await;
            assert_eq!(
                got,
                Ok((primary, "serializable".into(), "on".into())),
                "{steps:?}"
            );
        }
    })
    .await
    .expect("test timed out");
}
