//! `--admin`: a plain HTTP/1.1 listener (hyper's server) beside the proxy,
//! meant for 127.0.0.1 or a private network.
//!
//! - `GET /metrics`: the Prometheus text exposition of `metrics`.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while serving, 503 from the moment draining starts,
//!   so a load balancer stops sending new clients before streams end.
//! - `GET /`: the status page (`admin.html`, one static file), which opens
//!   an `EventSource` on `/events`: one JSON snapshot a second.
//!
//! With `--admin-token`, every path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN`; `/` and `/events` also take
//! `?token=TOKEN`, since a browser cannot send the header on a navigation
//! or an `EventSource`. Tokens are compared in constant time.
//!
//! One sampler task builds the snapshot once a second, whatever the
//! number of viewers, and keeps the per-second history of events and
//! requests the page charts. The listener closes after the proxy's drain.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AdminSettings;
use crate::error::StartError;
use crate::metrics::{CertificateExpiry, Summary, TargetHealth};
use crate::proxy::Proxy;
use crate::tls::CertStore;

/// The status page: one file, no build step, no outside assets.
const PAGE: &str = include_str!("admin.html");
/// How often the page gets a snapshot.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds of events/s and requests/s history the page charts.
const HISTORY_SECONDS: usize = 300;
/// Shared streams listed on the page at most (they are keyed by path and
/// query, which clients choose).
const MAX_SHARED_LISTED: usize = 100;
/// Bound on reading a request head on the admin listener.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long admin connections get to finish when the listener closes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// The admin listener, bound at start-up so a bad address fails early
/// and port 0 can be learned.
pub struct AdminListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    token: Option<String>,
}

impl AdminListener {
    pub async fn bind(settings: &AdminSettings) -> Result<Self, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: settings.listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(AdminListener {
            listener,
            local_addr,
            token: settings.token.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on the current runtime until `AdminHandle::close`. Ready
    /// (/readyz) from now until `draining` fires or the proxy drains.
    pub fn serve(
        self,
        proxy: Arc<Proxy>,
        certs: Option<Arc<CertStore>>,
        draining: CancellationToken,
    ) -> AdminHandle {
        let close = CancellationToken::new();
        let (snapshots, receiver) = watch::channel(Arc::<str>::from("{}"));
        let shared = Arc::new(Shared {
            proxy,
            certs,
            token: self.token,
            draining,
            snapshots: receiver,
            history: Mutex::new(History::default()),
            close: close.clone(),
        });
        tracing::info!("admin listening on http://{}", self.local_addr);
        let mut tasks = JoinSet::new();
        tasks.spawn(sample(shared.clone(), snapshots));
        tasks.spawn(accept(self.listener, shared));
        AdminHandle { close, tasks }
    }
}

/// The running admin listener.
pub struct AdminHandle {
    close: CancellationToken,
    tasks: JoinSet<()>,
}

impl AdminHandle {
    /// Stops accepting, ends `/events` streams, lets connections finish
    /// for a moment, then closes them.
    pub async fn close(mut self) {
        self.close.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What every admin request needs.
struct Shared {
    proxy: Arc<Proxy>,
    certs: Option<Arc<CertStore>>,
    token: Option<String>,
    /// The caller's shutdown: fires first on SIGTERM.
    draining: CancellationToken,
    /// The latest snapshot (JSON), built while someone watches.
    snapshots: watch::Receiver<Arc<str>>,
    history: Mutex<History>,
    close: CancellationToken,
}

impl Shared {
    fn ready(&self) -> bool {
        !self.draining.is_cancelled() && !self.proxy.shutdown_token().is_cancelled()
    }

    /// Every target of every group now, and whether it takes requests.
    fn target_health(&self) -> Vec<TargetHealth> {
        let mut health = Vec::new();
        for (name, group) in self.proxy.groups() {
            for target in group.targets() {
                health.push(TargetHealth {
                    upstream: name.clone(),
                    target: target.url().to_owned(),
                    healthy: group.is_available(target),
                });
            }
        }
        health
    }

    /// Every name of every certificate served, with its expiry; a name
    /// served by several certificates is listed for the first (the one SNI
    /// picks).
    fn certificate_expiry(&self) -> Vec<CertificateExpiry> {
        let mut seen = std::collections::BTreeSet::new();
        let summaries = self
            .certs
            .as_ref()
            .map(|c| c.summaries())
            .unwrap_or_default();
        let mut out = Vec::new();
        for summary in summaries {
            for name in summary.names {
                if seen.insert(name.clone()) {
                    out.push(CertificateExpiry {
                        name,
                        not_after: summary.not_after,
                    });
                }
            }
        }
        out
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.close.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(tcp, shared.clone()));
    }
    drop(listener);
    let finished = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if finished.await.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, shared: Arc<Shared>) {
    let close = shared.close.clone();
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, &request)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = close.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Where a request's token may come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenFrom {
    Header,
    HeaderOrQuery,
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<AdminBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let token_from = match request.uri().path() {
        "/healthz" => return text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.ready() => {
            // Ready without Redis too: streams are then read per instance.
            let body = match shared.proxy.cluster().map(|c| c.is_up()) {
                None => "ready\n",
                Some(true) => "ready\ncluster: redis up\n",
                Some(false) => {
                    "ready\ncluster: redis unavailable; shared streams are read per instance\n"
                }
            };
            return text(StatusCode::OK, body);
        }
        "/readyz" => return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/metrics" => TokenFrom::Header,
        "/" | "/events" => TokenFrom::HeaderOrQuery,
        _ => return text(StatusCode::NOT_FOUND, "404 Not Found\n"),
    };
    if !authorized(shared.token.as_deref(), request, token_from) {
        let mut response = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"ssegate admin\""),
        );
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let metrics = shared.proxy.metrics();
            let body = metrics.encode(&shared.target_health(), &shared.certificate_expiry());
            with_type(Response::new(full(body)), crate::metrics::CONTENT_TYPE)
        }
        "/events" => events(shared),
        _ => page(),
    }
}

/// Whether `request` carries the token (always, without one).
fn authorized(token: Option<&str>, request: &Request<Incoming>, from: TokenFrom) -> bool {
    let Some(token) = token else {
        return true;
    };
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    if let Some(given) = header {
        return same_token(given.as_bytes(), token.as_bytes());
    }
    if from == TokenFrom::HeaderOrQuery {
        if let Some(given) = request.uri().query().and_then(query_token) {
            return same_token(&given, token.as_bytes());
        }
    }
    false
}

/// The credentials of `Bearer <token>` (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Compares in constant time (for equal lengths; a length is no secret).
fn same_token(given: &[u8], token: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(given, token).is_ok()
}

/// The percent-decoded value of `token=` in a query string.
fn query_token(query: &str) -> Option<Vec<u8>> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    percent_decode(value)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Some(out)
}

fn full(body: impl Into<Bytes>) -> AdminBody {
    Full::new(body.into()).boxed_unsync()
}

fn with_type(mut response: Response<AdminBody>, content_type: &'static str) -> Response<AdminBody> {
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut response = with_type(
        Response::new(full(Bytes::from_static(body.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

fn page() -> Response<AdminBody> {
    let mut response = with_type(
        Response::new(full(Bytes::from_static(PAGE.as_bytes()))),
        "text/html; charset=utf-8",
    );
    let headers = response.headers_mut();
    // Inline script and style only, data only from this origin; the
    // token may be in the URL, so it never leaves in a Referer.
    headers.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    headers.insert(
        "referrer-policy",
        http::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/events`: a snapshot at once, then each new one, until the listener
/// closes.
fn events(shared: &Shared) -> Response<AdminBody> {
    let first = {
        let history = lock(&shared.history);
        snapshot(shared, &shared.proxy.metrics().summary(), &history)
    };
    let first = format!("retry: 2000\ndata: {first}\n\n");
    let mut rx = shared.snapshots.clone();
    rx.mark_unchanged();
    let state = (rx, shared.close.clone(), Some(first));
    let stream = futures_util::stream::unfold(state, |(mut rx, close, first)| async move {
        let event = match first {
            Some(first) => first,
            None => {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    () = close.cancelled() => return None,
                }
                let snapshot = rx.borrow_and_update().clone();
                format!("data: {snapshot}\n\n")
            }
        };
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
            (rx, close, None),
        ))
    });
    with_type(
        Response::new(StreamBody::new(stream).boxed_unsync()),
        "text/event-stream",
    )
}

/// Adds to the history every `SNAPSHOT_INTERVAL`, and builds a snapshot
/// for the `/events` streams when there are any (the `Shared` holds one
/// receiver of its own).
async fn sample(shared: Arc<Shared>, snapshots: watch::Sender<Arc<str>>) {
    let mut ticks = tokio::time::interval(SNAPSHOT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shared.close.cancelled() => return,
        }
        let summary = shared.proxy.metrics().summary();
        let mut history = lock(&shared.history);
        history.push(summary.events, summary.requests);
        if snapshots.receiver_count() > 1 {
            let snapshot = snapshot(&shared, &summary, &history);
            drop(history);
            snapshots.send_replace(Arc::from(snapshot.to_string()));
        }
    }
}

/// Events and requests per second, the last `HISTORY_SECONDS`.
#[derive(Default)]
struct History {
    last: Option<(u64, u64)>,
    events: VecDeque<u64>,
    requests: VecDeque<u64>,
}

impl History {
    fn push(&mut self, events: u64, requests: u64) {
        if let Some((last_events, last_requests)) = self.last {
            push_bounded(&mut self.events, events.saturating_sub(last_events));
            push_bounded(&mut self.requests, requests.saturating_sub(last_requests));
        }
        self.last = Some((events, requests));
    }
}

fn push_bounded(values: &mut VecDeque<u64>, value: u64) {
    if values.len() == HISTORY_SECONDS {
        values.pop_front();
    }
    values.push_back(value);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The JSON the page renders.
fn snapshot(shared: &Shared, summary: &Summary, history: &History) -> Value {
    let routes = shared.proxy.routes();
    let mut shared_streams = Vec::new();
    let mut shared_total = 0;
    for route in &routes {
        for stream in route.hub.streams_info() {
            shared_total += 1;
            if shared_streams.len() < MAX_SHARED_LISTED {
                shared_streams.push(json!({
                    "route": route.label,
                    "stream": stream.key,
                    "subscribers": stream.subscribers,
                    "replay": stream.replay,
                    "upstream": stream.upstream,
                }));
            }
        }
    }
    let routes: Vec<Value> = routes
        .iter()
        .map(|route| {
            json!({
                "route": route.label,
                "upstream": route.upstream,
                "streams": route.metrics.streams_open(),
                "events": route.metrics.events_total(),
                "requests": route.metrics.requests_total(),
                "websockets": route.metrics.websockets_open(),
            })
        })
        .collect();
    let mut upstreams = Vec::new();
    for (name, group) in shared.proxy.groups() {
        for target in group.targets() {
            upstreams.push(json!({
                "upstream": name,
                "target": target.url(),
                "healthy": group.is_available(target),
                // Counted only where least-conn needs it (several targets).
                "open": group.counts_open().then(|| target.open()),
                "requests": target.metrics().requests_total(),
            }));
        }
    }
    let certificates: Vec<Value> = shared
        .certs
        .as_ref()
        .map(|c| c.summaries())
        .unwrap_or_default()
        .into_iter()
        .map(|c| json!({ "names": c.names, "not_after": c.not_after }))
        .collect();
    let tls = summary.tls.as_ref().map(|tls| {
        json!({
            "ok": tls.ok.iter().map(|(v, n)| json!({"version": v, "count": n})).collect::<Vec<_>>(),
            "failed": tls.failed.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        })
    });
    let reload = shared
        .proxy
        .metrics()
        .last_reload()
        .map(|r| json!({ "at": unix_seconds(r.at), "ok": r.ok, "message": r.message }));
    json!({
        "time": unix_seconds(SystemTime::now()),
        "version": env!("CARGO_PKG_VERSION"),
        "ready": shared.ready(),
        "connections": summary.connections.iter().map(|(p, n)| (p.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "totals": {
            "requests": summary.requests,
            "events": summary.events,
            "heartbeats": summary.heartbeats,
            "shared_streams": summary.shared_streams,
            "shared_subscribers": summary.shared_subscribers,
            "replay_hit": summary.replay[0].1,
            "replay_miss": summary.replay[1].1,
        },
        "tls": tls,
        "routes": routes,
        "shared": { "total": shared_total, "listed": shared_streams },
        "upstreams": upstreams,
        "certificates": certificates,
        "reload": reload,
        "history": {
            "interval_seconds": SNAPSHOT_INTERVAL.as_secs(),
            "events": history.events,
            "requests": history.requests,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_query_tokens_are_read_as_sent() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(query_token("a=1&token=s%3Dx+y"), Some(b"s=x y".to_vec()));
        assert_eq!(query_token("tokens=1"), None);
        assert_eq!(query_token("token=%zz"), None);
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secreT", b"secret"));
        assert!(!same_token(b"secre", b"secret"));
    }

    #[test]
    fn history_keeps_per_second_deltas_for_a_bounded_time() {
        let mut history = History::default();
        history.push(10, 100);
        assert!(history.events.is_empty(), "no rate before two samples");
        history.push(15, 100);
        history.push(15, 130);
        assert_eq!(history.events, [5, 0]);
        assert_eq!(history.requests, [0, 30]);
        for i in 0..2 * HISTORY_SECONDS as u64 {
            history.push(15 + i, 130);
        }
        assert_eq!(history.events.len(), HISTORY_SECONDS);
    }
}
