//! Pool lanes against a real server: slots and connections move between worker threads (each
//! running its own single-threaded runtime) without ever exceeding the pool size, and a
//! connection that changes thread still works.

use std::error::Error;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_pool::{bind_thread, Credentials, NodePool, PooledConn};
use shardgate_testkit::Topology;

type TestResult = Result<(), Box<dyn Error>>;

const TIMEOUT: Duration = Duration::from_secs(10);

fn pool(topo: &Topology, size: u32, lanes: usize) -> Result<Arc<NodePool>, Box<dyn Error>> {
    let creds = Credentials {
        user: topo.user().to_owned(),
        password: topo.password().to_owned(),
        database: topo.database().to_owned(),
    };
    let addr = topo.shards[0].primary.addr().to_string().parse()?;
    Ok(NodePool::with_lanes(addr, creds, size, lanes))
}

/// Runs `work` on a new thread bound to `lane`, with its own single-threaded runtime, as
/// shardgate's workers are.
fn on_worker<T, F, Fut>(lane: usize, work: F) -> thread::JoinHandle<Result<T, String>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    thread::spawn(move || {
        bind_thread(lane);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(work())
    })
}

async fn backend_pid(conn: &mut PooledConn) -> Result<String, String> {
    let mut pid = conn
        .first_column("SELECT pg_backend_pid()")
        .await
        .map_err(|e| e.to_string())?;
    pid.pop().ok_or_else(|| "no row".to_owned())
}

/// Holds two connections at once, then releases both; returns their backends' pids, sorted.
async fn two_at_once(pool: &Arc<NodePool>) -> Result<Vec<String>, String> {
    let mut a = pool.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut b = pool.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut pids = vec![backend_pid(&mut a).await?, backend_pid(&mut b).await?];
    a.release();
    b.release();
    pids.sort();
    Ok(pids)
}

fn joined<T>(h: thread::JoinHandle<Result<T, String>>) -> Result<T, Box<dyn Error>> {
    Ok(h.join().map_err(|_| "worker panicked")??)
}

#[test]
fn connections_move_to_the_thread_that_checks_them_out() -> TestResult {
    let topo = Topology::builder().build()?;
    let pool = pool(&topo, 2, 2)?;
    // Worker 0 takes both slots (its own and lane 1's), releases them, and keeps its runtime
    // (the reactor the connections are registered with) alive while worker 1 reuses them.
    let (pids_tx, pids_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let first = on_worker(0, move || async move {
        let pids = two_at_once(&p).await?;
        pids_tx.send(pids).map_err(|e| e.to_string())?;
        let _ = done_rx.recv_timeout(TIMEOUT);
        Ok(())
    });
    let first_pids = pids_rx.recv_timeout(TIMEOUT)?;
    assert_eq!(pool.stats.open.load(Ordering::Relaxed), 2);
    let p = pool.clone();
    let second = on_worker(1, move || async move { two_at_once(&p).await });
    let second_pids = joined(second)?;
    drop(done_tx);
    joined(first)?;
    assert_eq!(
        first_pids, second_pids,
        "worker 1 should reuse worker 0's two connections, not open new ones"
    );
    assert_eq!(pool.stats.open.load(Ordering::Relaxed), 2);
    assert_eq!(pool.idle_count(), 2);
    Ok(())
}

#[test]
fn a_waiting_lane_gets_the_slot_another_lane_releases() -> TestResult {
    let topo = Topology::builder().build()?;
    let pool = pool(&topo, 1, 2)?;
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let holder = on_worker(0, move || async move {
        let mut conn = p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
        let pid = backend_pid(&mut conn).await?;
        held_tx.send(()).map_err(|e| e.to_string())?;
        // Worker 1 is waiting by now; hold on a little longer, then release.
        let _ = go_rx.recv_timeout(TIMEOUT);
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.release();
        Ok(pid)
    });
    held_rx.recv_timeout(TIMEOUT)?;
    let p = pool.clone();
    let waiter = on_worker(1, move || async move {
        let started = Instant::now();
        let mut conn = p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
        let waited = started.elapsed();
        let pid = backend_pid(&mut conn).await?;
        conn.release();
        Ok((pid, waited))
    });
    go_tx.send(())?;
    let held_pid = joined(holder)?;
    let (pid, waited) = joined(waiter)?;
    assert_eq!(pid, held_pid, "the one connection should change threads");
    assert!(
        waited >= Duration::from_millis(250) && waited < TIMEOUT,
        "waited {waited:?}"
    );
    assert_eq!(pool.stats.open.load(Ordering::Relaxed), 1);
    Ok(())
}

#[test]
fn more_lanes_than_connections() -> TestResult {
    let topo = Topology::builder().build()?;
    let pool = pool(&topo, 1, 3)?;
    let workers: Vec<_> = (0..3)
        .map(|lane| {
            let p = pool.clone();
            on_worker(lane, move || async move {
                let mut most_open = 0;
                for _ in 0..30 {
                    let mut conn = p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
                    most_open = most_open.max(p.stats.open.load(Ordering::Relaxed));
                    backend_pid(&mut conn).await?;
                    conn.release();
                }
                Ok(most_open)
            })
        })
        .collect();
    for w in workers {
        assert_eq!(joined(w)?, 1, "a pool of 1 never opens a second connection");
    }
    assert_eq!(pool.idle_count(), 1);
    Ok(())
}

#[test]
fn shrinking_closes_connections_as_they_return_and_growing_adds_slots() -> TestResult {
    let topo = Topology::builder().build()?;
    let pool = pool(&topo, 3, 2)?;
    let p = pool.clone();
    joined(on_worker(0, move || async move {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?);
        }
        p.resize(1);
        for conn in held {
            conn.release();
        }
        let after_shrink = (p.stats.open.load(Ordering::Relaxed), p.idle_count());
        // Only one slot is left.
        let one = p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
        let second = p.checkout(Duration::from_millis(200)).await.is_err();
        one.release();
        p.resize(3);
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = p.checkout(TIMEOUT).await.map_err(|e| e.to_string())?;
            backend_pid(&mut conn).await?;
            held.push(conn);
        }
        let open = p.stats.open.load(Ordering::Relaxed);
        held.into_iter().for_each(PooledConn::release);
        Ok((after_shrink, second, open))
    }))
    .map(|(after_shrink, second_timed_out, open)| {
        assert_eq!(after_shrink, (1, 1), "(open, idle) after shrinking to 1");
        assert!(
            second_timed_out,
            "a second checkout must wait for the one slot"
        );
        assert_eq!(open, 3);
    })?;
    Ok(())
}

/// A TCP relay on 127.0.0.1 to `backend` whose first connection is accepted and then never
/// answered (a server stuck before the login completes); later ones are relayed.
async fn relay_stalling_first(backend: String) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let mut stalled = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            if stalled.is_empty() {
                stalled.push(client);
                continue;
            }
            let backend = backend.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(addr.to_string())
}

#[test]
fn a_checkout_dropped_while_connecting_gives_its_room_back() -> TestResult {
    let topo = Topology::builder().build()?;
    let creds = Credentials {
        user: topo.user().to_owned(),
        password: topo.password().to_owned(),
        database: topo.database().to_owned(),
    };
    let backend = topo.shards[0].primary.addr().to_string();
    joined(on_worker(0, move || async move {
        let relay = relay_stalling_first(backend).await?;
        let pool = NodePool::new(relay.parse().map_err(|e| format!("{e:?}"))?, creds, 1);
        // The client goes away (or cancels) while the pool logs in to the stuck server.
        let dropped =
            tokio::time::timeout(Duration::from_millis(300), pool.checkout(TIMEOUT)).await;
        if dropped.is_ok() {
            return Err("the first login should never finish".to_owned());
        }
        let open_after_drop = pool.stats.open.load(Ordering::Relaxed);
        // The one slot is free and nothing is open: the next checkout opens a connection.
        let next = pool.checkout(Duration::from_secs(3)).await;
        let works = match next {
            Ok(mut conn) => {
                backend_pid(&mut conn).await?;
                conn.release();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        Ok((
            open_after_drop,
            works,
            pool.stats.open.load(Ordering::Relaxed),
        ))
    }))
    .map(|(open_after_drop, works, open)| {
        assert_eq!(
            open_after_drop, 0,
            "a connect that never finished is not open"
        );
        assert_eq!(
            works,
            Ok(()),
            "the pool must not wait for a connection that does not exist"
        );
        assert_eq!(open, 1);
    })?;
    Ok(())
}

#[test]
fn connections_in_use_are_counted_over_the_threads_that_take_and_give_them_back() -> TestResult {
    let topo = Topology::builder().build()?;
    let pool = pool(&topo, 2, 2)?;
    let p = pool.clone();
    let conn = joined(on_worker(1, move || async move {
        p.checkout(TIMEOUT).await.map_err(|e| e.to_string())
    }))?;
    assert_eq!(pool.active(), 1);
    // Given back (closed) on this thread, whose lane is not the one that took it.
    drop(conn);
    assert_eq!(pool.active(), 0);
    assert_eq!(pool.stats.open.load(Ordering::Relaxed), 0);
    Ok(())
}
