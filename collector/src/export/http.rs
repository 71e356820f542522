//! HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/api/v1/*`, on one or more listen
//! addresses, plain or TLS, optionally behind basic auth (`--web.config.file`).
//!
//! Connections are accepted by pinflow's own loop (hyper + hyper-util, not `axum::serve`) so that
//! each one is bounded: at most [`MAX_CONNECTIONS`] at once, the TLS handshake and every request's
//! headers within [`HEADER_TIMEOUT`].

use crate::cli::ListenAddress;
use crate::config::ExportConfig;
use crate::export::metrics;
use crate::export::web_config::{BasicAuth, WebConfig, sha256};
use crate::state::SharedState;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has for the TLS handshake and for each request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
struct App {
    state: SharedState,
    registry: Arc<Registry>,
}

/// What the router serves.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Path of the metrics endpoint (`--web.telemetry-path`).
    pub telemetry_path: String,
    /// Leave out `/api/v1` (`--web.disable-api`).
    pub disable_api: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            telemetry_path: "/metrics".into(),
            disable_api: false,
        }
    }
}

/// The router with every endpoint, behind basic auth and with the extra headers of `web`.
pub fn router(
    state: SharedState,
    build: metrics::BuildInfo,
    limits: ExportConfig,
    options: &RouterOptions,
    web: Option<&WebConfig>,
) -> Router {
    let registry = Arc::new(metrics::registry(state.clone(), build, limits));
    let index = index_page(options);
    let mut r = Router::new()
        .route("/", get(move || async move { axum::response::Html(index) }))
        .route(&options.telemetry_path, get(serve_metrics))
        .route("/healthz", get(healthz));
    if !options.disable_api {
        r = r
            .route("/api/v1/pinning", get(api_pinning))
            .route("/api/v1/sources", get(api_sources))
            .route("/api/v1/flows", get(api_flows))
            .route("/api/v1/flows/dirty", get(api_flows_dirty));
    }
    let mut r = r.with_state(App { state, registry });
    if let Some(auth) = web.and_then(|w| w.auth.clone()) {
        r = r.layer(axum::middleware::from_fn_with_state(auth, basic_auth));
    }
    if let Some(w) = web.filter(|w| !w.headers.is_empty()) {
        let headers = Arc::new(w.headers.clone());
        r = r.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let headers = headers.clone();
                async move {
                    let mut resp = next.run(req).await;
                    for (k, v) in headers.iter() {
                        resp.headers_mut().insert(k.clone(), v.clone());
                    }
                    resp
                }
            },
        ));
    }
    r
}

fn index_page(o: &RouterOptions) -> String {
    let mut links = vec![o.telemetry_path.clone()];
    if !o.disable_api {
        links.extend(
            [
                "/api/v1/pinning",
                "/api/v1/flows/dirty",
                "/api/v1/flows",
                "/api/v1/sources",
            ]
            .map(String::from),
        );
    }
    let items: String = links
        .iter()
        .map(|l| format!("<li><a href=\"{l}\">{l}</a></li>"))
        .collect();
    format!("<html><body><h1>pinflow</h1><ul>{items}</ul></body></html>\n")
}

/// Refuses requests without valid basic-auth credentials (401 with a `WWW-Authenticate`
/// challenge). bcrypt runs on the blocking pool, never on the async thread; verified credentials
/// are cached.
async fn basic_auth(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let ok = match creds {
        None => false,
        Some((user, password)) => {
            if auth.is_cached(&user, &sha256(password.as_bytes())) {
                true
            } else {
                let auth = auth.clone();
                tokio::task::spawn_blocking(move || auth.verify(&user, &password))
                    .await
                    .unwrap_or(false)
            }
        }
    };
    if ok {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"pinflow\""),
    );
    resp
}

/// Binds every address (all before serving any, so a bad one stops the start) and serves until
/// `shutdown` resolves.
pub async fn serve(
    addrs: &[ListenAddress],
    router: Router,
    web: Option<&WebConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for a in addrs {
        let l = bind(a).await?;
        let local = l.local_addr()?;
        tracing::info!(
            address = %local,
            tls = web.is_some_and(|w| w.tls.is_some()),
            auth = web.is_some_and(|w| w.auth.is_some()),
            "listening"
        );
        listeners.push(l);
    }
    let tls = web
        .and_then(|w| w.tls.clone())
        .map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(accept_loop(l, router.clone(), tls.clone(), slots.clone()));
    }
    tokio::select! {
        _ = shutdown => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("listener task failed: {e}")),
        },
    }
}

/// Binds one `--web.listen-address`. `:PORT` binds `[::]:PORT`, which also takes IPv4 on Linux,
/// and falls back to `0.0.0.0:PORT` on hosts without IPv6.
async fn bind(a: &ListenAddress) -> anyhow::Result<tokio::net::TcpListener> {
    use tokio::net::TcpListener;
    let r = match a {
        ListenAddress::Addr(s) => TcpListener::bind(s).await,
        ListenAddress::Host(h, p) => TcpListener::bind((h.as_str(), *p)).await,
        ListenAddress::Any(p) => match TcpListener::bind(SocketAddr::from(([0u16; 8], *p))).await {
            Ok(l) => Ok(l),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                TcpListener::bind(SocketAddr::from(([0u8; 4], *p))).await
            }
            Err(e) => Err(e),
        },
    };
    r.map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays open.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = match tls {
                None => serve_connection(stream, router).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, router).await,
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                    }
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

async fn serve_connection<S>(stream: S, router: Router) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await?;
    Ok(())
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

/// `ok` (200), or 503 naming every source whose data went stale or whose collection hangs: a
/// wedged source must fail the health check, not hide behind the last values it published.
async fn healthz(State(app): State<App>) -> Response {
    let stale = app.state.sources.stale();
    if stale.is_empty() {
        return "ok\n".into_response();
    }
    let body: String = stale
        .iter()
        .map(|(source, why)| format!("source {source} is down: {why}\n"))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
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
