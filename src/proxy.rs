//! The per-request service: rewrite, forward, classify, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MAX_REQUEST_HEADER_BYTES};
use crate::error::{error_chain, BoxError, ProxyError};
use crate::headers;
use crate::lean_h1::LeanRequest;
use crate::sse::hub::{Hub, HubSettings};
use crate::sse::{AccessLog, BodyKind, Outcome, RelayBody, RelaySettings};
use crate::upstream::affine::{AffineBody, AffineSlot, IdleUpstreams};
use crate::upstream::dedicated::{self, ResponseHead};
use crate::upstream::{self, UpstreamPool};

/// Body type of every response ssegate sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// What a client request's body may be: hyper's, or none (the lean path).
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}
impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}

/// Shared by every connection: configuration, the upstream pool, shutdown.
pub struct Proxy {
    config: Config,
    ordinary_relay: Arc<RelaySettings>,
    event_stream_relay: Arc<RelaySettings>,
    subscriber_relay: Arc<RelaySettings>,
    pool: UpstreamPool,
    /// Upstream connections between HTTP/1.1 client connections, one set
    /// per serving thread: a connection stays with the event loop it is
    /// registered with.
    idle_upstreams: Vec<Arc<IdleUpstreams>>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

impl Proxy {
    pub fn new(config: Config, shutdown: CancellationToken) -> Arc<Self> {
        let pool = upstream::pool(config.timeouts.connect);
        let hub_settings = HubSettings {
            prefixes: config.streams.shared_prefixes.clone(),
            replay: config.streams.replay,
            queue: config.streams.subscriber_queue,
            linger: config.streams.linger,
            response_timeout: config.timeouts.request,
            idle_timeout: config.timeouts.sse_idle,
        };
        let hub = Hub::new(
            hub_settings,
            config.upstream.clone(),
            pool.clone(),
            shutdown.clone(),
        );
        let idle_upstreams = (0..config.threads.get())
            .map(|_| IdleUpstreams::new())
            .collect();
        Arc::new(Proxy {
            ordinary_relay: Arc::new(relay_settings(&config, BodyKind::Ordinary)),
            event_stream_relay: Arc::new(relay_settings(&config, BodyKind::EventStream)),
            // The hub watches the shared stream's upstream for silence.
            subscriber_relay: Arc::new(RelaySettings {
                idle_timeout: None,
                ..relay_settings(&config, BodyKind::EventStream)
            }),
            config,
            pool,
            idle_upstreams,
            hub,
            shutdown,
        })
    }

    /// The upstream side of a new HTTP/1.1 client connection on serving
    /// thread `worker`: a slot for its own upstream connection, filled from
    /// the ones parked by that thread's earlier connections when it can be.
    pub fn affine_slot(&self, worker: usize) -> Arc<AffineSlot> {
        let parked = &self.idle_upstreams[worker % self.idle_upstreams.len()];
        Arc::new(AffineSlot::new(parked.clone()))
    }

    /// The shared-stream hub (for its counters).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Cancelled when the proxy starts to drain.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Handles one request (as a hyper service). Never fails: every error
    /// becomes a response.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        conn: ConnInfo,
        transport: Transport,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible>
    where
        B: RequestBody,
    {
        Ok(self.handle_over(req, conn, transport).await)
    }

    /// Handles one request, reaching the upstream over `transport`.
    pub async fn handle_over<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
        transport: Transport,
    ) -> Response<ProxyBody> {
        let response = self.respond(req, conn, transport).await;
        self.with_hsts(response)
    }

    /// Adds `Strict-Transport-Security` if configured; an upstream's own
    /// policy wins.
    fn with_hsts(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        if let Some(hsts) = &self.config.hsts {
            response
                .headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
        response
    }

    async fn respond<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
        transport: Transport,
    ) -> Response<ProxyBody> {
        let peer = conn.peer;
        let path = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let access = AccessLog::new(peer, req.method().clone(), path, req.version());
        if req.method() == http::Method::GET && self.hub.is_shared(req.uri().path()) {
            return self.subscribe(req, access).await;
        }
        match transport {
            Transport::Pooled => self.relay(self.forward(req, &conn).await, access),
            Transport::Affine(slot) => {
                self.relay(self.forward_affine(req, &conn, &slot).await, access)
            }
        }
    }

    /// The `--upstream` URL's path, prefixed to every request path.
    pub fn upstream_base_path(&self) -> &str {
        &self.config.upstream.base_path
    }

    /// Whether `path` is served as a shared stream.
    pub fn is_shared(&self, path: &str) -> bool {
        self.hub.is_shared(path)
    }

    /// Forwards a plain GET from the lean path, whose head `lean_h1` has
    /// already rewritten for the upstream, over `transport`, and gets the
    /// response head filtered byte for byte (see `upstream::dedicated`): the
    /// bulk of traffic builds no header map. Errors become responses, as in
    /// `handle_over`.
    pub async fn forward_lean(
        &self,
        request: LeanRequest,
        conn: &ConnInfo,
        transport: LeanTransport,
    ) -> LeanResponse {
        let mut access = AccessLog::new(conn.peer, Method::GET, request.target, Version::HTTP_11);
        let exchanged = match request.upstream_head {
            Err(err) => Err(err),
            Ok(head) => {
                let upstream = &self.config.upstream.authority;
                let connect_timeout = self.config.timeouts.connect;
                let exchange = async {
                    match transport {
                        LeanTransport::Affine(slot) => {
                            slot.send_bodiless(&head, upstream, connect_timeout).await
                        }
                        LeanTransport::Dedicated => {
                            dedicated::send(upstream, head, connect_timeout).await
                        }
                    }
                };
                let timeout = self.config.timeouts.request;
                tokio::time::timeout(timeout, exchange)
                    .await
                    .unwrap_or(Err(ProxyError::UpstreamTimeout(timeout)))
            }
        };
        let (mut head, body) = match exchanged {
            Ok(response) => response,
            Err(err) => return LeanResponse::Other(self.with_hsts(failed(&err, access))),
        };
        access.status = head.status;
        if let (Some(hsts), false) = (&self.config.hsts, head.has_hsts) {
            // An upstream's own policy wins.
            head.push_header(b"strict-transport-security", hsts.as_bytes());
        }
        let kind = if head.event_stream {
            BodyKind::EventStream
        } else {
            BodyKind::Ordinary
        };
        let settings = self.relay_settings(kind);
        let body = RelayBody::new(body, settings, &self.shutdown, access).boxed();
        LeanResponse::Relayed { head, body }
    }

    /// Wraps an upstream response body for its way to the client, or turns
    /// the failure to get one into an error response.
    fn relay<B>(
        &self,
        forwarded: Result<(Response<B>, BodyKind), ProxyError>,
        mut access: AccessLog,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let (response, kind) = match forwarded {
            Ok(forwarded) => forwarded,
            Err(err) => return failed(&err, access),
        };
        access.status = response.status();
        let settings = self.relay_settings(kind);
        response.map(|body| RelayBody::new(body, settings, &self.shutdown, access).boxed())
    }

    fn relay_settings(&self, kind: BodyKind) -> Arc<RelaySettings> {
        match kind {
            BodyKind::Ordinary => self.ordinary_relay.clone(),
            BodyKind::EventStream => self.event_stream_relay.clone(),
        }
    }

    /// Joins a shared stream: one upstream request serves every subscriber.
    async fn subscribe<B>(&self, req: Request<B>, mut access: AccessLog) -> Response<ProxyBody> {
        // Copied: the shared stream keeps it, and a value parsed on the lean
        // path shares its buffer with the whole request head.
        let host =
            request_host(&req).and_then(|host| HeaderValue::from_bytes(host.as_bytes()).ok());
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match self
            .hub
            .subscribe(&access.path, host, last_event_id.as_deref())
            .await
        {
            Ok(subscription) => {
                access.status = http::StatusCode::OK;
                let settings = self.subscriber_relay.clone();
                let body = RelayBody::new(subscription, settings, &self.shutdown, access).boxed();
                let mut response = Response::new(body);
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            Err(err) => {
                access.status = err.status();
                access.outcome = Outcome::ProxyError;
                tracing::warn!(peer = %access.peer, path = %access.path, status = err.status().as_u16(), "shared stream: {err}");
                error_response(&err)
            }
        }
    }

    /// Sends the request over the shared pool.
    async fn forward<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Result<(Response<Incoming>, BodyKind), ProxyError> {
        let upstream_req = self.upstream_request(req, conn)?;
        let exchange = async {
            self.pool.request(upstream_req).await.map_err(|err| {
                if err.is_connect() {
                    ProxyError::UpstreamConnect(error_chain(&err))
                } else {
                    ProxyError::Upstream(error_chain(&err))
                }
            })
        };
        self.response_head(exchange).await
    }

    /// Like `forward`, over the client connection's own upstream connection.
    async fn forward_affine<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
        slot: &Arc<AffineSlot>,
    ) -> Result<(Response<AffineBody>, BodyKind), ProxyError> {
        let upstream_req = self.upstream_request(req, conn)?;
        self.response_head(slot.send(upstream_req, self.config.timeouts.connect))
            .await
    }

    /// Waits up to the request timeout for `exchange` to bring the upstream's
    /// response head, then prepares the response for the client.
    async fn response_head<B>(
        &self,
        exchange: impl std::future::Future<Output = Result<Response<B>, ProxyError>>,
    ) -> Result<(Response<B>, BodyKind), ProxyError> {
        let timeout = self.config.timeouts.request;
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
            Ok(response) => Ok(prepare_response(response?)),
        }
    }

    /// Rewrites a client request for the upstream: URI, Host, hop-by-hop and
    /// forwarding headers. The body streams through untouched.
    fn upstream_request<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Result<Request<upstream::UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        if headers::header_section_len(&parts.headers) > MAX_REQUEST_HEADER_BYTES {
            return Err(ProxyError::HeadersTooLarge(MAX_REQUEST_HEADER_BYTES));
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if !path_and_query.starts_with('/') {
            // CONNECT and absolute-form targets without a path are not proxied.
            return Err(ProxyError::BadRequest("request target must be a path"));
        }
        let host = host_of(&parts.headers, &parts.uri);
        parts.uri = self
            .config
            .upstream
            .join(path_and_query)
            .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        let host = host.ok_or(ProxyError::BadRequest("missing Host"))?;
        headers::remove_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, host.clone());
        headers::add_forwarded(&mut parts.headers, conn.peer.ip(), Some(&host));
        // Only the proxy vouches for a client certificate, never the client.
        parts.headers.remove(&headers::X_CLIENT_CERT_SUBJECT);
        if let Some(subject) = &conn.client_subject {
            parts
                .headers
                .insert(headers::X_CLIENT_CERT_SUBJECT.clone(), (**subject).clone());
        }
        parts.version = Version::HTTP_11;

        let body = body.map_err(Into::into).boxed();
        Ok(Request::from_parts(parts, body))
    }
}

fn relay_settings(config: &Config, kind: BodyKind) -> RelaySettings {
    let timeouts = &config.timeouts;
    RelaySettings {
        kind,
        idle_timeout: Some(match kind {
            BodyKind::Ordinary => timeouts.request,
            BodyKind::EventStream => timeouts.sse_idle,
        }),
        heartbeat: config.streams.heartbeat,
        drain_retry: config.streams.drain_retry,
    }
}

/// How a request reaches the upstream.
#[derive(Debug, Clone)]
pub enum Transport {
    /// hyper's pool of keep-alive connections (HTTP/2 clients, whose
    /// requests run concurrently).
    Pooled,
    /// The client connection's own upstream connection, driven by the task
    /// that serves the client (HTTP/1.1 clients: one request at a time).
    Affine(Arc<AffineSlot>),
}

/// How a plain GET from the lean path reaches the upstream, over a
/// connection driven by hand.
#[derive(Debug, Clone)]
pub enum LeanTransport {
    /// The client connection's own upstream connection (see `Transport::Affine`).
    Affine(Arc<AffineSlot>),
    /// A new connection of the request's own, holding no buffer while the
    /// response is idle (EventSource requests).
    Dedicated,
}

/// What the lean path gets back for a plain GET.
pub enum LeanResponse {
    /// The upstream's response: its head, filtered for the client, and its
    /// body on its way there.
    Relayed { head: ResponseHead, body: ProxyBody },
    /// Any other response (an error, a shared stream's), as a `Response`.
    Other(Response<ProxyBody>),
}

/// What the proxy knows of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Subject of the client certificate verified in the TLS handshake.
    /// (Boxed: this lives in every connection's task, and is rarely set.)
    pub client_subject: Option<Box<HeaderValue>>,
}

/// The host the client asked for. HTTP/2 carries it in `:authority`; the
/// upstream speaks HTTP/1.1 and needs it as Host.
fn host_of(headers: &http::HeaderMap, uri: &http::Uri) -> Option<HeaderValue> {
    match headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    host_of(req.headers(), req.uri())
}

/// Strips hop-by-hop headers and decides how the body is relayed.
fn prepare_response<B>(response: Response<B>) -> (Response<B>, BodyKind) {
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    let kind = if headers::is_event_stream(&parts.headers) {
        // Open-ended: never a length, and the body is written as it arrives.
        parts.headers.remove(header::CONTENT_LENGTH);
        BodyKind::EventStream
    } else {
        BodyKind::Ordinary
    };
    (Response::from_parts(parts, body), kind)
}

/// The response for a request that could not be forwarded, logged.
fn failed(err: &ProxyError, mut access: AccessLog) -> Response<ProxyBody> {
    access.status = err.status();
    access.outcome = Outcome::ProxyError;
    tracing::warn!(peer = %access.peer, path = %access.path, status = err.status().as_u16(), "{err}");
    error_response(err)
}

fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from_static(err.client_message().as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = err.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
