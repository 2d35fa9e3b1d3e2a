//! Starting and stopping the proxy: config loading, listeners, signals.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use shardgate_config::{Config, ConfigError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::admin_view::AdminView;
use crate::decisions::DecisionLog;
use crate::metrics::Metrics;
use crate::proxy::{CancelRegistry, Shared, Snapshot};

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn print_config_error(path: &Path, e: &ConfigError) {
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
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            print_config_error(path, &e);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        match run(config, stop_rx).await {
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
}

/// Runs the proxy until `stop` turns true, then drains.
pub(crate) async fn run(config: Config, stop: watch::Receiver<bool>) -> Result<(), StartError> {
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let tls = match &config.tls {
        Some(t) => Some(crate::app_tls::acceptor(&t.cert, &t.key).map_err(StartError::Tls)?),
        None => None,
    };
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
    let max_clients = config.pool.max_client_connections as usize;
    let metrics = Arc::new(Metrics::new());
    let snapshot = Snapshot::build(config, 1, &metrics);
    let monitors = crate::monitors::spawn_all(&snapshot, stop.clone());
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        cancel: CancelRegistry::new(),
        metrics,
        shutdown: stop.clone(),
        client_slots: Arc::new(Semaphore::new(max_clients)),
        tls,
        mock_key: rand::random(),
        decisions: Arc::new(DecisionLog::default()),
    });
    tracing::info!(%listen, admin = %admin_listen, "shardgate listening");
    let mut admin_stop = stop.clone();
    let admin_task = tokio::spawn(shardgate_admin::serve(
        admin,
        Arc::new(AdminView(shared.clone())),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    crate::proxy::serve(listener, shared.clone()).await;
    for pool in shared.snapshot.load().pools() {
        pool.close_idle();
    }
    let _ = admin_task.await;
    for m in monitors {
        let _ = m.await;
    }
    tracing::info!("shardgate stopped");
    Ok(())
}
