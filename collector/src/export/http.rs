//! HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/api/v1/pinning`, `/api/v1/flows/dirty`.

use crate::config::ExportConfig;
use crate::export::metrics;
use crate::state::SharedState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
struct App {
    state: SharedState,
    registry: Arc<Registry>,
}

/// The router with every endpoint.
pub fn router(state: SharedState, build: metrics::BuildInfo, limits: ExportConfig) -> Router {
    let registry = Arc::new(metrics::registry(state.clone(), build, limits));
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/pinning", get(api_pinning))
        .route("/api/v1/sources", get(api_sources))
        .route("/api/v1/flows", get(api_flows))
        .route("/api/v1/flows/dirty", get(api_flows_dirty))
        .with_state(App { state, registry })
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics and /api/v1");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body><h1>pinflow</h1><ul><li><a href=\"/metrics\">/metrics</a></li>\
         <li><a href=\"/api/v1/pinning\">/api/v1/pinning</a></li>\
         <li><a href=\"/api/v1/flows/dirty\">/api/v1/flows/dirty</a></li>\
         <li><a href=\"/api/v1/sources\">/api/v1/sources</a></li></ul></body></html>\n",
    )
}

/// Serves OpenMetrics to clients that accept it (Prometheus does), else the Prometheus text format.
async fn serve_metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match metrics::render(&app.registry) {
        Ok(body) if openmetrics => (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Ok(body) => (
            [(header::CONTENT_TYPE, metrics::PROMETHEUS_CONTENT_TYPE)],
            metrics::openmetrics_to_prometheus(&body),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn api_pinning(State(app): State<App>) -> Response {
    axum::Json(app.state.pinning().as_ref().clone()).into_response()
}

/// Bridges, dirty counts, ports and dirty flows.
async fn api_flows(State(app): State<App>) -> Response {
    axum::Json(app.state.flows().as_ref().clone()).into_response()
}

/// Every dirty flow: bridge, table, rule, the flow text, the instance.
async fn api_flows_dirty(State(app): State<App>) -> Response {
    axum::Json(app.state.flows().dirty.clone()).into_response()
}

async fn api_sources(State(app): State<App>) -> Response {
    axum::Json(app.state.sources.snapshot()).into_response()
}
