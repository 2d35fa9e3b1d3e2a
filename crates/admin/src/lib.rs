//! shardgate's HTTP admin API (axum): health and Prometheus metrics now; topology,
//! routing decisions and reload later. It reads proxy state through [`AdminSource`]
//! and never touches client traffic.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// What the admin API needs from the proxy.
pub trait AdminSource: Send + Sync + 'static {
    /// Prometheus text exposition.
    fn metrics_text(&self) -> String;
}

type Source = Arc<dyn AdminSource>;

/// The admin routes.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(source)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(source): State<Source>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        source.metrics_text(),
    )
}

/// Serves the admin API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Source,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await
}
