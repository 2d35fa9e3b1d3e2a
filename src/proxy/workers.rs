//! Thread-per-core: each worker thread runs its own single-threaded runtime, and a client's
//! session lives on one worker from accept to close, with server connections from that
//! worker's lane of each pool. Nothing on a session's relay path wakes another thread.
//!
//! The thread that accepts (and runs the admin API, the lag monitors and reloads) hands each
//! accepted socket to the worker with the fewest sessions. With one worker there are no
//! worker threads: sessions run on the accepting thread's runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::busy_poll;

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// One worker thread as seen from the accepting thread.
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    load: Arc<Load>,
}

/// Sessions running on a worker.
#[derive(Default)]
struct Load {
    sessions: AtomicUsize,
    idle: Notify,
}

/// One session counted on its worker, from dispatch until the session ends (or its job is
/// dropped, or it panics).
struct Counted(Arc<Load>);

impl Counted {
    fn new(load: &Arc<Load>) -> Counted {
        load.sessions.fetch_add(1, Ordering::AcqRel);
        Counted(load.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// Binds the calling thread to worker `lane`: its pool lane ([`shardgate_pool::bind_thread`])
/// and its classification cache ([`shardgate_sql::bind_thread_cache`]).
pub(crate) fn bind_thread(lane: usize) {
    shardgate_pool::bind_thread(lane);
    shardgate_sql::bind_thread_cache(lane);
}

/// A single-threaded runtime whose thread may poll for work before it sleeps, once
/// [`busy_poll::enable`] is called on it.
pub(crate) fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder
        .enable_all()
        .on_thread_park(busy_poll::before_park)
        .on_thread_unpark(busy_poll::after_unpark);
    builder
}

/// Where sessions run: on worker threads, or (none) on the calling runtime.
pub(crate) struct Workers(Vec<Worker>);

impl Workers {
    /// `count` worker threads, each keeping [`shardgate_pool::heartbeat`] running. With a
    /// `count` of 1 there are none: sessions run on the calling runtime (bound to pool lane 0,
    /// see `app::build_runtime`), which then gets the heartbeat and the busy polling. Worker
    /// `i` serves lane `i`.
    ///
    /// Each session thread polls for up to `poll_window` before it sleeps (see
    /// [`super::busy_poll`]).
    pub(crate) fn start(count: u32, poll_window: Duration) -> std::io::Result<Workers> {
        if count <= 1 {
            busy_poll::enable(poll_window);
            tokio::spawn(shardgate_pool::heartbeat());
            return Ok(Workers(Vec::new()));
        }
        let mut workers = Vec::with_capacity(count as usize);
        for lane in 0..count as usize {
            let runtime = runtime_builder().build()?;
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            let load = Arc::new(Load::default());
            let worker_load = load.clone();
            std::thread::Builder::new()
                .name(format!("shardgate-worker-{lane}"))
                .spawn(move || {
                    bind_thread(lane);
                    runtime.block_on(async move {
                        busy_poll::enable(poll_window);
                        tokio::spawn(shardgate_pool::heartbeat());
                        while let Some(job) = queue.recv().await {
                            tokio::spawn(job());
                        }
                        // No more clients: stay up while this worker's sessions drain.
                        while worker_load.sessions.load(Ordering::Acquire) > 0 {
                            worker_load.idle.notified().await;
                        }
                    });
                })?;
            workers.push(Worker { jobs, load });
        }
        Ok(Workers(workers))
    }

    /// Runs `session` for the accepted `stream`, on the least loaded worker.
    pub(crate) fn run<F, Fut>(&self, stream: TcpStream, session: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .0
            .iter()
            .min_by_key(|w| w.load.sessions.load(Ordering::Relaxed))
        else {
            tokio::spawn(session(stream));
            return;
        };
        // Off this thread's reactor, onto the worker's.
        let socket = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let counted = Counted::new(&worker.load);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _counted = counted;
                match TcpStream::from_std(socket) {
                    Ok(stream) => session(stream).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "worker cannot take an accepted connection")
                    }
                }
            })
        });
        if worker.jobs.send(job).is_err() {
            // The worker is gone (it panicked outside any session): the client is dropped.
            tracing::error!("a worker thread has stopped; dropping a client connection");
        }
    }
}
