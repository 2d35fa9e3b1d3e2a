//! Starting and stopping the proxy: config loading, listeners, signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use shardgate_config::{Config, ConfigError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::admin_view::AdminView;
use crate::decisions::DecisionLog;
use crate::metrics::Metrics;
use crate::proxy::{CancelRegistry, Shared, Snapshot, Workers};
use crate::reload::Reloader;

/// Logs to stderr; `SHARDGATE_LOG` overrides `default` (e.g. `debug`, `shardgate=trace`).
pub(crate) fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn print_config_error(path: &Path, e: &ConfigError) {
    match e {
        ConfigError::Read { .. } => eprintln!("error: {e}"),
        ConfigError::Invalid { problems } => {
            eprintln!(
                "error: {} has {} problem(s):",
                path.display(),
                problems.len()
            );
            for p in problems {
                eprintln!("  {p}");
            }
        }
    }
}

/// `shardgate check`.
pub(crate) fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} shard(s), {} user(s), pool {} x {:?})",
                path.display(),
                c.shards.len(),
                c.users.len(),
                c.pool.size,
                c.pool.mode
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(path, &e);
            ExitCode::from(2)
        }
    }
}

/// `shardgate [--config PATH]`.
pub(crate) fn run_from_file(path: &Path) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(source) => {
            print_config_error(
                path,
                &ConfigError::Read {
                    path: path.to_owned(),
                    source,
                },
            );
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_yaml_str(&String::from_utf8_lossy(&bytes)) {
        Ok(c) => c,
        Err(e) => {
            print_config_error(path, &e);
            return ExitCode::from(2);
        }
    };
    let source = Source {
        path: Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())),
        sha256: crate::reload::sha256_hex(&bytes),
    };
    let runtime = match build_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; shutting down gracefully");
            let _ = stop_tx.send(true);
        });
        match run(config, source, stop_rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// The runtime of the calling (main) thread: it accepts clients and runs the admin API, the
/// monitors and reloads; sessions run there too when `workers` is 1, else on worker threads
/// of their own ([`Workers`]). The thread is bound to lane 0 (pool lane and classification
/// cache).
pub(crate) fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    crate::proxy::workers::bind_thread(0);
    crate::proxy::workers::runtime_builder().build()
}

/// Where a running config came from, for reloads and `/api/config`.
pub(crate) struct Source {
    pub(crate) path: Option<PathBuf>,
    pub(crate) sha256: String,
}

/// Runs the proxy until `stop` turns true, then drains.
pub(crate) async fn run(
    config: Config,
    source: Source,
    stop: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let watch_file = config.reload.watch;
    let (tls, tls_end_point) = match &config.tls {
        Some(t) => {
            let (acceptor, end_point) =
                crate::app_tls::acceptor(&t.cert, &t.key).map_err(StartError::Tls)?;
            (Some(acceptor), end_point)
        }
        None => (None, None),
    };
    // Before binding: once a client can connect, a SIGHUP must reload, not kill the
    // process (the default action while no handler is installed).
    let hangup = listen_for_hangup();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let admin = TcpListener::bind(admin_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: admin_listen,
            source,
        })?;
    let workers =
        Workers::start(config.worker_threads(), config.busy_poll()).map_err(StartError::Workers)?;
    let lanes = config.worker_threads() as usize;
    let max_clients = config.pool.max_client_connections as usize;
    let metrics = Arc::new(Metrics::new());
    let snapshot = Snapshot::build(config, 1, &metrics, None);
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        cancel: CancelRegistry::new(),
        metrics,
        shutdown: stop.clone(),
        client_slots: Arc::new(Semaphore::new(max_clients)),
        tls,
        tls_end_point,
        mock_key: rand::random(),
        decisions: Arc::new(DecisionLog::new(lanes)),
        plan_epoch: Default::default(),
    });
    let reloader = Arc::new(Reloader::new(shared.clone(), source.path, source.sha256));
    tokio::spawn(crate::proxy::recovery_loop(
        shared.snapshot.clone(),
        shared.metrics.clone(),
        stop.clone(),
    ));
    tokio::spawn(reload_on_sighup(reloader.clone(), stop.clone(), hangup));
    if watch_file {
        tokio::spawn(crate::watch::watch_file(reloader.clone(), stop.clone()));
    }
    tracing::info!(%listen, admin = %admin_listen, config_version = 1, "shardgate listening");
    let mut admin_stop = stop.clone();
    let admin_task = tokio::spawn(shardgate_admin::serve(
        admin,
        Arc::new(AdminView(shared.clone(), reloader.clone())),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    crate::proxy::serve(listener, shared.clone(), workers).await;
    for pool in shared.snapshot.load().pools() {
        pool.close_idle();
    }
    let _ = admin_task.await;
    for m in reloader.stop() {
        let _ = m.await;
    }
    tracing::info!("shardgate stopped");
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(unix)]
type Hangup = std::io::Result<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

/// Installs the SIGHUP handler (from then on SIGHUP no longer terminates the process).
#[cfg(unix)]
fn listen_for_hangup() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
}

#[cfg(not(unix))]
fn listen_for_hangup() -> Hangup {}

/// SIGHUP reloads the config file.
async fn reload_on_sighup(
    reloader: Arc<Reloader>,
    mut stop: watch::Receiver<bool>,
    hangup: Hangup,
) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = hangup else {
            tracing::warn!("cannot listen for SIGHUP; reload through POST /api/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                }
                _ = stopped(&mut stop) => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, hangup);
        stopped(&mut stop).await;
    }
}
