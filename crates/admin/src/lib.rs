//! shardgate's HTTP admin API (axum): health, Prometheus metrics, the topology with
//! each replica's lag and routability, recent routing decisions, and what a statement
//! would be routed to. It reads proxy state through [`AdminSource`] and never touches
//! client traffic.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

/// What the admin API needs from the proxy.
pub trait AdminSource: Send + Sync + 'static {
    /// Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// `GET /api/topology`: config version, shards, nodes with role, health, lag, reason.
    fn topology(&self) -> Value;
    /// `GET /api/decisions?limit=N`: the most recent routing decisions, newest first.
    fn decisions(&self, limit: usize) -> Value;
    /// `GET /api/route?sql=...`: the decision that statement would get now.
    fn route(&self, sql: &str) -> Value;
    /// `POST /api/reload`: 200 with the new version, or 422 with every problem.
    fn reload(&self) -> (u16, Value);
    /// `GET /api/config`: the config in force (passwords redacted), version, load time, file hash.
    fn config(&self) -> Value;
}

/// Decisions returned when `limit` is not given.
const DEFAULT_DECISIONS: usize = 100;

#[derive(serde::Deserialize)]
struct LimitParams {
    limit: Option<usize>,
}

#[derive(serde::Deserialize)]
struct RouteParams {
    sql: Option<String>,
}

type Source = Arc<dyn AdminSource>;

/// The admin routes.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/topology", get(topology))
        .route("/api/decisions", get(decisions))
        .route("/api/route", get(route))
        .route("/api/reload", post(reload))
        .route("/api/config", get(config))
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

async fn topology(State(source): State<Source>) -> Json<Value> {
    Json(source.topology())
}

async fn decisions(State(source): State<Source>, Query(p): Query<LimitParams>) -> Json<Value> {
    Json(source.decisions(p.limit.unwrap_or(DEFAULT_DECISIONS)))
}

async fn route(State(source): State<Source>, Query(p): Query<RouteParams>) -> impl IntoResponse {
    match p.sql {
        Some(sql) if !sql.trim().is_empty() => (StatusCode::OK, Json(source.route(&sql))),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "missing query parameter: sql"})),
        ),
    }
}

async fn reload(State(source): State<Source>) -> impl IntoResponse {
    // Reloading reads a file and derives keys: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || source.reload()).await;
    match result {
        Ok((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(body),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": format!("reload task failed: {e}")})),
        ),
    }
}

async fn config(State(source): State<Source>) -> Json<Value> {
    Json(source.config())
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
