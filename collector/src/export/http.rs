//! HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/api/v1/*`, on one or more listen
//! addresses, plain or TLS, optionally behind basic auth (`--web.config.file`).
//!
//! `/api/v1` bodies are serialised once per report version and shared by every request for that
//! version ([`JsonCache`]): a client polling the API costs a copy of a reference, not a deep
//! clone and a serialisation of the whole report.
//!
//! Connections are accepted by pinflow's own loop (hyper + hyper-util, not `axum::serve`) so that
//! each one is bounded: at most [`MAX_CONNECTIONS`] at once (a new one closes the oldest, so idle
//! and slowloris clients cannot lock a scraper out), the TLS handshake and every request's headers
//! within [`HEADER_TIMEOUT`], and no write stalled longer than [`WRITE_STALL_TIMEOUT`] (a client
//! that stops reading is cut off).
//!
//! `/api/v1` bodies can be megabytes (100 000 mirrored flows are ~3 MiB). On the one async thread,
//! fifty clients polling them would each write megabytes per turn and a scrape would wait behind
//! all of them, so at most [`API_BODIES_IN_FLIGHT`] API bodies are written at once, in
//! [`API_FRAME`]-sized frames; the other API requests wait for a turn. `/metrics` and `/healthz`
//! never wait for one. All API bodies together are paced to [`API_BYTES_PER_SECOND`]
//! ([`ApiPacer`]): without a cap, clients polling in a loop made pinflow copy gigabytes a second
//! into sockets, a core's worth of CPU on a hypervisor, and kept the async thread (and its
//! OpenFlow, OVSDB and scrape work) runnable behind them.

use crate::export::ExportConfig;
use crate::export::metrics;
use crate::export::web_config::{BasicAuth, WebConfig, sha256};
use crate::model::flows::FlowsReport;
use crate::model::pinning::{IntrusionsReport, PinningReport};
use crate::model::state::SharedState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One `--web.listen-address` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListenAddress {
    /// `:PORT`: every interface (IPv6 and IPv4 where the host has IPv6, else IPv4).
    Any(u16),
    /// A literal address.
    Addr(SocketAddr),
    /// `HOST:PORT` with a host name, resolved when the server binds.
    Host(String, u16),
}

impl ListenAddress {
    /// Parses `:PORT`, `HOST:PORT` or `[IPv6]:PORT`.
    pub(crate) fn parse(s: &str) -> Result<ListenAddress, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddress::Addr(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected [HOST]:PORT, e.g. :9105 or 127.0.0.1:9105"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        if host.is_empty() {
            return Ok(ListenAddress::Any(port));
        }
        let valid_name = host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if host.starts_with('[') || !valid_name {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a host name"
            ));
        }
        Ok(ListenAddress::Host(host.to_string(), port))
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Any(p) => write!(f, ":{p}"),
            ListenAddress::Addr(a) => write!(f, "{a}"),
            ListenAddress::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Connections open at once; a new one beyond this closes the oldest ([`ConnectionSlots`]).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Time a client has for the TLS handshake and for each request's headers.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a connection's write may make no progress (its client stopped reading) before the
/// connection is closed.
pub(crate) const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `/api/v1` bodies being written at once; other API requests wait their turn.
pub(crate) const API_BODIES_IN_FLIGHT: usize = 2;
/// Size of the frames an `/api/v1` body is handed to the connection in.
pub(crate) const API_FRAME: usize = 64 * 1024;
/// Bytes of `/api/v1` bodies written per second, all connections together: twenty full-size
/// flow reports (100 000 flows) a second, at a few per cent of one core.
pub(crate) const API_BYTES_PER_SECOND: u64 = 64 << 20;
/// Bytes of `/api/v1` bodies written at once without waiting after an idle spell: one full-size
/// flow report goes out unpaced.
pub(crate) const API_BURST_BYTES: u64 = 4 << 20;

/// What the handlers share.
#[derive(Clone)]
struct App {
    state: SharedState,
    metrics: Arc<metrics::Exposition>,
    bodies: Arc<ApiBodies>,
    /// Turns to write an `/api/v1` body ([`API_BODIES_IN_FLIGHT`]).
    api_turns: Arc<tokio::sync::Semaphore>,
    /// The pace of every `/api/v1` body together ([`API_BYTES_PER_SECOND`]).
    api_pace: Arc<ApiPacer>,
}

/// A byte-rate limit shared by every `/api/v1` body (the generic cell rate algorithm: each
/// frame moves a theoretical arrival time on by its size over the rate; a frame goes out when
/// that time is at most a burst's worth ahead of now, else it waits until it is).
pub(crate) struct ApiPacer {
    bytes_per_second: u64,
    burst: Duration,
    /// When the bytes handed out so far would have gone out at the rate, from a standing start.
    arrival: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl ApiPacer {
    pub(crate) fn new(bytes_per_second: u64, burst_bytes: u64) -> ApiPacer {
        let bytes_per_second = bytes_per_second.max(1);
        ApiPacer {
            bytes_per_second,
            burst: Duration::from_secs_f64(burst_bytes as f64 / bytes_per_second as f64),
            arrival: std::sync::Mutex::new(None),
        }
    }

    /// Takes `n` bytes at `now`, or says when to ask again.
    pub(crate) fn take(
        &self,
        n: usize,
        now: tokio::time::Instant,
    ) -> Result<(), tokio::time::Instant> {
        // A poisoned lock only means a panic elsewhere; the instant stays meaningful.
        let mut arrival = self.arrival.lock().unwrap_or_else(|e| e.into_inner());
        let at = arrival.map_or(now, |a| a.max(now));
        if at > now + self.burst {
            return Err(at - self.burst);
        }
        *arrival = Some(at + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64));
        Ok(())
    }
}

/// The `/api/v1` bodies of the current reports, each serialised once per report version.
#[derive(Default)]
struct ApiBodies {
    pinning: JsonCache<PinningReport>,
    intrusions: JsonCache<IntrusionsReport>,
    flows: JsonCache<FlowsReport>,
    flows_dirty: JsonCache<FlowsReport>,
}

/// A JSON body serialised once per version of a report and shared (`Bytes` clones are
/// reference counts) by every request until the report is replaced. The version is the report's
/// `Arc` itself: the engine publishes a new `Arc` for every change. The cache keeps a `Weak` to
/// it, which keeps its allocation (not the report) alive, so the address cannot be reused by a
/// later report while it is compared.
pub(crate) struct JsonCache<T> {
    last: std::sync::Mutex<Option<(std::sync::Weak<T>, Bytes)>>,
}

impl<T> Default for JsonCache<T> {
    fn default() -> Self {
        JsonCache {
            last: std::sync::Mutex::new(None),
        }
    }
}

impl<T> JsonCache<T> {
    /// The body of `report`: the cached bytes when `report` is the version they were made
    /// from, else `serialise(report)`, which then replaces them.
    pub(crate) fn body(
        &self,
        report: &Arc<T>,
        serialise: impl FnOnce(&T) -> serde_json::Result<Vec<u8>>,
    ) -> serde_json::Result<Bytes> {
        // A poisoned lock only means a panic elsewhere; the slot is replaced whole.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, body)) = last.as_ref()
            && std::ptr::eq(version.as_ptr(), Arc::as_ptr(report))
        {
            return Ok(body.clone());
        }
        let body = Bytes::from(serialise(report)?);
        *last = Some((Arc::downgrade(report), body.clone()));
        Ok(body)
    }
}

/// A JSON body that holds one of the API's turns ([`API_BODIES_IN_FLIGHT`]) until the connection
/// has taken its last frame (or is dropped), and hands itself out in [`API_FRAME`]s.
struct TurnBody {
    rest: Bytes,
    _turn: tokio::sync::OwnedSemaphorePermit,
    pace: Arc<ApiPacer>,
    /// Set while the next frame waits for the pace.
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for TurnBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        use std::future::Future as _;
        let n = self.rest.len().min(API_FRAME);
        loop {
            if let Some(wait) = self.wait.as_mut() {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.pace.take(n, tokio::time::Instant::now()) {
                Ok(()) => {
                    return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                        self.rest.split_to(n),
                    ))));
                }
                Err(until) => self.wait = Some(Box::pin(tokio::time::sleep_until(until))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// A cached JSON body as a response once a turn to write it is free (500 with the reason when
/// serialising failed).
async fn json_response(app: &App, body: serde_json::Result<Bytes>) -> Response {
    match body {
        Ok(rest) => {
            let Ok(turn) = app.api_turns.clone().acquire_owned().await else {
                // The semaphore is never closed; answer rather than assume.
                return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
            };
            (
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::new(TurnBody {
                    rest,
                    _turn: turn,
                    pace: app.api_pace.clone(),
                    wait: None,
                }),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON failed: {e}\n"),
        )
            .into_response(),
    }
}

/// What the router serves.
#[derive(Clone, Debug)]
pub(crate) struct RouterOptions {
    /// Path of the metrics endpoint (`--web.telemetry-path`).
    pub(crate) telemetry_path: String,
    /// Leave out `/api/v1` (`--web.disable-api`).
    pub(crate) disable_api: bool,
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
pub(crate) fn router(
    state: SharedState,
    build: super::health::BuildInfo,
    limits: ExportConfig,
    options: &RouterOptions,
    web: Option<&WebConfig>,
) -> Router {
    let metrics = Arc::new(metrics::Exposition::new(state.clone(), build, limits));
    let index = index_page(options);
    let mut r = Router::new()
        .route("/", get(move || async move { axum::response::Html(index) }))
        .route(&options.telemetry_path, get(serve_metrics))
        .route("/healthz", get(healthz));
    if !options.disable_api {
        r = r
            .route("/api/v1/pinning", get(api_pinning))
            .route("/api/v1/intrusions", get(api_intrusions))
            .route("/api/v1/host_cpu", get(api_host_cpu))
            .route("/api/v1/conntrack", get(api_conntrack))
            .route("/api/v1/sources", get(api_sources))
            .route("/api/v1/flows", get(api_flows))
            .route("/api/v1/flows/dirty", get(api_flows_dirty));
    }
    let mut r = r.with_state(App {
        state,
        metrics,
        bodies: Arc::default(),
        api_turns: Arc::new(tokio::sync::Semaphore::new(API_BODIES_IN_FLIGHT)),
        api_pace: Arc::new(ApiPacer::new(API_BYTES_PER_SECOND, API_BURST_BYTES)),
    });
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
                "/api/v1/intrusions",
                "/api/v1/host_cpu",
                "/api/v1/conntrack",
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

/// Binds every address, all before serving any (a bad one stops the start). Synchronous, so that
/// `serve` opens its sockets before the async runtime (and any thread) exists, and then drops
/// its capabilities (a port below 1024 needs `CAP_NET_BIND_SERVICE` only here).
pub(crate) fn bind_all(
    addrs: &[ListenAddress],
    web: Option<&WebConfig>,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::new();
    for a in addrs {
        let l = bind(a)?;
        let local = l.local_addr()?;
        tracing::info!(
            address = %local,
            tls = web.is_some_and(|w| w.tls.is_some()),
            auth = web.is_some_and(|w| w.auth.is_some()),
            "listening"
        );
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serves on `listeners` (from [`bind_all`]) until `shutdown` resolves.
pub(crate) async fn serve(
    listeners: Vec<std::net::TcpListener>,
    router: Router,
    web: Option<&WebConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = web
        .and_then(|w| w.tls.clone())
        .map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(ConnectionSlots::default());
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let l = tokio::net::TcpListener::from_std(l)?;
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
/// and falls back to `0.0.0.0:PORT` on hosts without IPv6. A host name is resolved here, on the
/// calling thread, and the first of its addresses that binds is taken.
fn bind(a: &ListenAddress) -> anyhow::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let r = match a {
        ListenAddress::Addr(s) => listen_on(*s),
        ListenAddress::Host(h, p) => (h.as_str(), *p).to_socket_addrs().and_then(|addrs| {
            let mut last = std::io::Error::other("the name resolves to no address");
            for addr in addrs {
                match listen_on(addr) {
                    Ok(l) => return Ok(l),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }),
        ListenAddress::Any(p) => match listen_on(SocketAddr::from(([0u16; 8], *p))) {
            Ok(l) => Ok(l),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                listen_on(SocketAddr::from(([0u8; 4], *p)))
            }
            Err(e) => Err(e),
        },
    };
    r.map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))
}

/// A non-blocking listening socket on `addr`, as Tokio's `TcpListener::bind` makes it
/// (`SO_REUSEADDR`, a backlog of 1024; std's `bind` would queue only 128).
fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<ConnectionSlots>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays open.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stream = StallTimeout::new(stream, WRITE_STALL_TIMEOUT);
        let (id, mut evicted, busy) = slots.admit();
        let router = router.clone();
        let tls = tls.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let r = match tls {
                None => serve_connection(stream, router, &mut evicted, busy).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                    tokio::select! {
                        h = handshake => match h {
                            Ok(Ok(s)) => serve_connection(s, router, &mut evicted, busy).await,
                            Ok(Err(e)) => Err(e.into()),
                            Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                        },
                        _ = &mut evicted => Err(anyhow::anyhow!("closed for a newer connection")),
                    }
                }
            };
            slots.release(id);
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
        // Let the new connection read its request before the next accept can evict it: under a
        // reconnect storm, a burst of accepts would otherwise evict connections whose tasks never
        // ran, a scrape among them.
        tokio::task::yield_now().await;
    }
}

/// The open connections, oldest first. At [`MAX_CONNECTIONS`], a new connection closes the
/// oldest one that is not answering a request (the oldest of all when every one is) instead of
/// waiting for a free slot: connections that sit idle or trickle their headers (slowloris) can
/// then never lock a scraper out, they only shorten each other's lives, and a scrape being
/// answered is not cut off by a flood of new connections. An evicted connection finishes a
/// request it is answering (hyper's graceful shutdown) and is closed at once when idle or still
/// reading headers.
#[derive(Default)]
struct ConnectionSlots {
    /// The last id given out, and the open connections with their eviction signals.
    open: std::sync::Mutex<(u64, std::collections::VecDeque<OpenConnection>)>,
}

/// An open connection: its id, the sender that tells it to close, and whether it is answering
/// a request.
type OpenConnection = (u64, tokio::sync::oneshot::Sender<()>, Arc<AtomicBool>);

impl ConnectionSlots {
    /// Registers a new connection (evicting one when full); returns its id, the signal that it
    /// is evicted in turn, and the flag its server sets while it answers a request.
    fn admit(&self) -> (u64, tokio::sync::oneshot::Receiver<()>, Arc<AtomicBool>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (next, open) = &mut *g;
        while open.len() >= MAX_CONNECTIONS {
            let victim = open
                .iter()
                .position(|(_, _, busy)| !busy.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some((_, victim, _)) = open.remove(victim) {
                // The victim may have ended already; then there is nothing to signal.
                let _ = victim.send(());
            }
        }
        *next += 1;
        open.push_back((*next, tx, busy.clone()));
        (*next, rx, busy)
    }

    /// Forgets a connection that ended.
    fn release(&self, id: u64) {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        g.1.retain(|(i, _, _)| *i != id);
    }
}

/// A connection whose writes fail with `TimedOut` once they have made no progress for `limit`
/// (its client stopped reading): hyper has no write timeout of its own, and a stalled response
/// would otherwise hold its connection slot, and an API turn, forever.
struct StallTimeout<S> {
    io: S,
    limit: Duration,
    /// Armed when a write could make no progress; disarmed by any progress.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallTimeout<S> {
    fn new(io: S, limit: Duration) -> Self {
        StallTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    /// `r`, the outcome of a write-side poll; a `Pending` that lasts past the limit becomes an
    /// error.
    fn check<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            )));
        }
        std::task::Poll::Pending
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallTimeout<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StallTimeout<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.check(cx, r)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_shutdown(cx);
        this.check(cx, r)
    }
}

/// Time an evicted connection has to finish the response it is writing.
const EVICTION_GRACE: Duration = Duration::from_secs(2);

async fn serve_connection<S>(
    stream: S,
    router: Router,
    evicted: &mut tokio::sync::oneshot::Receiver<()>,
    busy: Arc<AtomicBool>,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // `busy` while a request is being answered (from its headers to its response's head).
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        use tower::ServiceExt as _;
        busy.store(true, Ordering::Relaxed);
        let busy = busy.clone();
        let answer = router.clone().oneshot(req);
        async move {
            let r = answer.await;
            busy.store(false, Ordering::Relaxed);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r?,
        _ = evicted => {
            conn.as_mut().graceful_shutdown();
            // Idle or reading headers: closes at once; answering: finishes, within the grace.
            let _ = tokio::time::timeout(EVICTION_GRACE, conn.as_mut()).await;
        }
    }
    Ok(())
}

/// Serves OpenMetrics to clients that accept it (Prometheus does), else the Prometheus text format.
async fn serve_metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (format, content_type) = if openmetrics {
        (
            metrics::Format::OpenMetrics,
            metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            metrics::Format::Prometheus,
            metrics::PROMETHEUS_CONTENT_TYPE,
        )
    };
    match app.metrics.render(format) {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
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
    let report = app.state.pinning.get();
    json_response(&app, app.bodies.pinning.body(&report, serde_json::to_vec)).await
}

/// Nova's CPU sets, the kernel's isolation and each host CPU check's findings.
/// Top intruders per dedicated pCPU over the placement window, as the pinning pipeline
/// published them.
async fn api_intrusions(State(app): State<App>) -> Response {
    let report = app.state.intrusions.get();
    json_response(
        &app,
        app.bodies.intrusions.body(&report, serde_json::to_vec),
    )
    .await
}

async fn api_host_cpu(State(app): State<App>) -> Response {
    axum::Json(app.state.host_cpu.get()).into_response()
}

/// Conntrack entries per zone with each zone's ports and instances (small: one row per zone
/// and port the flows load).
async fn api_conntrack(State(app): State<App>) -> Response {
    axum::Json(app.state.conntrack.get()).into_response()
}

/// Bridges, dirty counts, ports and dirty flows.
async fn api_flows(State(app): State<App>) -> Response {
    let report = app.state.flows.get();
    json_response(&app, app.bodies.flows.body(&report, serde_json::to_vec)).await
}

/// Every dirty flow: bridge, table, rule, the flow text, the instance.
async fn api_flows_dirty(State(app): State<App>) -> Response {
    let report = app.state.flows.get();
    json_response(
        &app,
        app.bodies
            .flows_dirty
            .body(&report, |r| serde_json::to_vec(&r.dirty)),
    )
    .await
}

async fn api_sources(State(app): State<App>) -> Response {
    axum::Json(app.state.sources.snapshot()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_connection_beyond_the_cap_closes_the_oldest() {
        let slots = ConnectionSlots::default();
        let mut open: Vec<_> = (0..MAX_CONNECTIONS).map(|_| slots.admit()).collect();
        assert!(open.iter_mut().all(|(_, rx, _)| rx.try_recv().is_err()));
        // The first one ends by itself: its slot is free, nobody is evicted.
        let (first, _, _) = open.remove(0);
        slots.release(first);
        let mut newer = slots.admit();
        assert!(open.iter_mut().all(|(_, rx, _)| rx.try_recv().is_err()));
        // Full again: the next one evicts the oldest still open, and only it.
        let _newest = slots.admit();
        assert!(open[0].1.try_recv().is_ok(), "the oldest is told to close");
        assert!(
            open[1..]
                .iter_mut()
                .all(|(_, rx, _)| rx.try_recv().is_err())
        );
        assert!(newer.1.try_recv().is_err());
        // A connection answering a request is passed over: the oldest idle one goes instead.
        open[1].2.store(true, Ordering::Relaxed);
        let _another = slots.admit();
        assert!(open[1].1.try_recv().is_err(), "busy: kept");
        assert!(
            open[2].1.try_recv().is_ok(),
            "the oldest idle one is told to close"
        );
    }

    #[test]
    fn a_body_is_serialised_once_per_report_version() {
        let cache = JsonCache::<Vec<u32>>::default();
        let calls = Cell::new(0);
        let ser = |r: &Vec<u32>| {
            calls.set(calls.get() + 1);
            serde_json::to_vec(r)
        };
        let v1 = Arc::new(vec![1, 2]);
        let a = cache.body(&v1, ser).unwrap();
        let b = cache.body(&v1, ser).unwrap();
        assert_eq!(&a[..], b"[1,2]");
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes are shared");
        assert_eq!(calls.get(), 1);
        // A new version (even with equal content) is serialised anew, once.
        let v2 = Arc::new(vec![3]);
        assert_eq!(&cache.body(&v2, ser).unwrap()[..], b"[3]");
        assert_eq!(&cache.body(&v2, ser).unwrap()[..], b"[3]");
        assert_eq!(calls.get(), 2);
        // The old version dropped and a new one made: never served the stale body.
        drop(v1);
        let v3 = Arc::new(vec![4]);
        assert_eq!(&cache.body(&v3, ser).unwrap()[..], b"[4]");
        assert_eq!(calls.get(), 3);
    }

    /// `/api/v1/intrusions` serialises what the pinning pipeline published, nothing more.
    #[tokio::test]
    async fn intrusions_are_served_as_published() {
        use crate::model::pinning::{IntruderReport, IntrusionsReport, PcpuIntrusions};
        use tower::ServiceExt as _;
        let state = SharedState::default();
        state.intrusions.set(IntrusionsReport {
            window_seconds: 5.0,
            stolen_share_limit: 0.05,
            pcpus: vec![PcpuIntrusions {
                cpu: 3,
                domain: "instance-1".into(),
                vcpu: Some(0),
                vcpu_tid: 4242,
                stolen_share: 0.5,
                stolen_seconds: [("host", 2.5)].into_iter().collect(),
                top: vec![IntruderReport {
                    pid: 77,
                    tid: 78,
                    comm: "stress".into(),
                    class: "host",
                    seconds: 2.5,
                }],
            }],
        });
        let build = crate::export::health::BuildInfo {
            version: "0".into(),
            revision: "r".into(),
            rustc: "rustc".into(),
            kernel: "k".into(),
        };
        let app = router(
            state,
            build,
            ExportConfig::default(),
            &RouterOptions::default(),
            None,
        );
        let r = app.oneshot(get("/api/v1/intrusions")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["pcpus"][0]["domain"], "instance-1");
        assert_eq!(v["pcpus"][0]["top"][0]["comm"], "stress");
        assert_eq!(v["pcpus"][0]["top"][0]["pid"], 77);
        assert_eq!(v["pcpus"][0]["stolen_seconds"]["host"], 2.5);
    }

    /// A router over empty reports.
    fn test_router() -> Router {
        let build = crate::export::health::BuildInfo {
            version: "0".into(),
            revision: "r".into(),
            rustc: "rustc".into(),
            kernel: "k".into(),
        };
        router(
            SharedState::default(),
            build,
            ExportConfig::default(),
            &RouterOptions::default(),
            None,
        )
    }

    fn get(path: &str) -> Request {
        Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn api_bodies_take_turns_and_metrics_never_waits_for_one() {
        use tower::ServiceExt as _;
        let app = test_router();
        // Every turn taken by a response whose body nobody reads yet.
        let mut held = Vec::new();
        for _ in 0..API_BODIES_IN_FLIGHT {
            let r = app.clone().oneshot(get("/api/v1/flows")).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            held.push(r);
        }
        let mut waiting = Box::pin(app.clone().oneshot(get("/api/v1/pinning")));
        let soon = Duration::from_millis(200);
        assert!(
            tokio::time::timeout(soon, waiting.as_mut()).await.is_err(),
            "a third API body waits for a turn"
        );
        let metrics = tokio::time::timeout(soon, app.clone().oneshot(get("/metrics")))
            .await
            .expect("/metrics does not wait for an API turn")
            .unwrap();
        assert_eq!(metrics.status(), StatusCode::OK);
        // Reading one body to its end gives its turn back.
        let first = held.remove(0);
        let body = axum::body::to_bytes(first.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(body.starts_with(b"{"), "{body:?}");
        let third = tokio::time::timeout(soon, waiting)
            .await
            .expect("turn given back");
        assert_eq!(third.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_api_body_is_handed_out_in_frames_with_its_exact_length() {
        use http_body::Body as _;
        let turns = Arc::new(tokio::sync::Semaphore::new(1));
        let rest = Bytes::from(vec![7u8; API_FRAME * 2 + 5]);
        let mut body = TurnBody {
            rest,
            _turn: turns.clone().acquire_owned().await.unwrap(),
            pace: Arc::new(ApiPacer::new(API_BYTES_PER_SECOND, API_BURST_BYTES)),
            wait: None,
        };
        assert_eq!(body.size_hint().exact(), Some(API_FRAME as u64 * 2 + 5));
        let mut sizes = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [API_FRAME, API_FRAME, 5]);
        assert_eq!(
            turns.available_permits(),
            0,
            "held until the body is dropped"
        );
        drop(body);
        assert_eq!(turns.available_permits(), 1);
    }

    #[test]
    fn the_pacer_lets_a_burst_through_then_holds_to_the_rate() {
        let pace = ApiPacer::new(1000, 3000);
        let t0 = tokio::time::Instant::now();
        // From idle, a burst's worth (and one frame more) goes out at once.
        for _ in 0..4 {
            assert_eq!(pace.take(1000, t0), Ok(()));
        }
        // The next waits until the arrival time is a burst ahead: 1 s at 1 000 B/s.
        let until = pace.take(1000, t0).unwrap_err();
        assert_eq!(until, t0 + Duration::from_secs(1));
        assert_eq!(pace.take(1000, until), Ok(()));
        assert!(pace.take(1000, until).is_err());
        // A long idle spell gives back one burst, not more.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..4 {
            assert_eq!(pace.take(1000, later), Ok(()));
        }
        assert!(pace.take(1000, later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn api_bodies_together_are_written_at_the_pace() {
        use http_body::Body as _;
        let pace = Arc::new(ApiPacer::new(API_BYTES_PER_SECOND, API_BURST_BYTES));
        let turns = Arc::new(tokio::sync::Semaphore::new(2));
        let size = API_BURST_BYTES as usize * 2;
        let t0 = tokio::time::Instant::now();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let mut body = TurnBody {
                rest: Bytes::from(vec![1u8; size]),
                _turn: turns.clone().acquire_owned().await.unwrap(),
                pace: pace.clone(),
                wait: None,
            };
            readers.push(tokio::spawn(async move {
                let mut got = 0;
                while let Some(frame) =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
                {
                    got += frame.unwrap().into_data().unwrap().len();
                }
                got
            }));
        }
        for r in readers {
            assert_eq!(r.await.unwrap(), size);
        }
        // Four bursts' worth, one of them unpaced: three bursts' time at the rate (less the
        // timer's millisecond rounding).
        let floor = Duration::from_secs_f64(
            (4 * API_BURST_BYTES - API_BURST_BYTES) as f64 / API_BYTES_PER_SECOND as f64,
        ) - Duration::from_millis(1);
        let took = t0.elapsed();
        assert!(
            took >= floor && took < floor + Duration::from_millis(50),
            "{took:?} for {floor:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off() {
        use tokio::io::AsyncWriteExt as _;
        let (near, _far) = tokio::io::duplex(1024);
        let mut conn = StallTimeout::new(near, Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        let e = conn.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // A reader that keeps reading is never cut off, however long the whole write takes.
        let (near, mut far) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
            total
        });
        let mut conn = StallTimeout::new(near, Duration::from_millis(100));
        conn.write_all(&[1u8; 64 * 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64 * 1024);
    }
}
