//! Busy polling (`busy_poll_us`): session threads find replies by polling instead of sleeping,
//! and `/metrics` counts both, with one worker thread and with several, against real
//! PostgreSQL.

mod support;

use shardgate_testkit::{free_port, Topology};
use support::{Proxy, ProxyOptions};

/// The tests here count how a proxy's threads wait, so they run one at a time: a test starting
/// PostgreSQL beside another would make the other's waits long.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The window the polling test sets: the longest allowed, so that on a machine busy with
/// other work a reply still comes within it. The test checks that every worker count polls,
/// not how fast the machine is; the default window's worth is measured by `benches/`.
const WIDE_WINDOW: &str = "busy_poll_us: 1000\n";

/// Queries one client runs back to back: each waits for PostgreSQL's reply and then for the
/// client's next query, both far shorter than the window.
const QUERIES: usize = 300;

fn start(topology: &Topology, top: &str) -> Proxy {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = Proxy::config_yaml(topology, port, admin_port, &ProxyOptions::default());
    Proxy::start_yaml(&format!("{top}{yaml}"), port, admin_port)
}

async fn run_queries(proxy: &Proxy, topology: &Topology) {
    let client = proxy.connect(topology).await;
    for i in 0..QUERIES {
        let row = client
            .query_one("SELECT $1::int4 + 1", &[&(i as i32)])
            .await
            .expect("query");
        assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
    }
}

fn counts(proxy: &Proxy) -> (f64, f64) {
    let polls = proxy.metric("shardgate_worker_polls_total").expect("polls");
    let sleeps = proxy
        .metric("shardgate_worker_sleeps_total")
        .expect("sleeps");
    (polls, sleeps)
}

#[tokio::test]
async fn session_threads_poll_and_most_replies_are_found_without_sleeping() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let topology = Topology::builder().build().expect("topology");
    for workers in ["workers: 1\n", "workers: 2\n"] {
        let top = format!("{workers}{WIDE_WINDOW}");
        let proxy = start(&topology, &top);
        let (polls_before, _) = counts(&proxy);
        run_queries(&proxy, &topology).await;
        let (polls, sleeps) = counts(&proxy);
        eprintln!(
            "{}: {polls} polls, {sleeps} sleeps over {QUERIES} queries",
            workers.trim()
        );
        // Each query is at least two waits (extended protocol: one request, one reply).
        // Polling catches most of them; a loaded CI machine may make some waits longer than
        // even the widest window.
        assert!(
            polls - polls_before >= (QUERIES / 4) as f64,
            "{workers}: only {polls} waits were caught by polling ({sleeps} sleeps) over \
             {QUERIES} queries"
        );
    }
}

#[tokio::test]
async fn busy_poll_us_0_turns_polling_off_and_every_wait_is_a_sleep() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let topology = Topology::builder().build().expect("topology");
    let proxy = start(&topology, "busy_poll_us: 0\n");
    run_queries(&proxy, &topology).await;
    let (polls, sleeps) = counts(&proxy);
    assert_eq!(polls, 0.0);
    assert!(
        sleeps >= QUERIES as f64,
        "{sleeps} sleeps over {QUERIES} queries"
    );
}
