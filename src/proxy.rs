//! The per-request path, the same for HTTP/1.1 and HTTP/2 clients: check
//! the request (`rules`), pick the way (a shared stream, or the upstream),
//! write the upstream head (`rules`), exchange it (`upstream`), filter the
//! response (`rules`) and wrap its body for the way to the client
//! (`sse::RelayBody`), or, for a WebSocket the upstream accepted, hand the
//! client's protocol a `websocket::Tunnel`. Never fails: every error
//! becomes a response.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{BoxError, ProxyError};
use crate::http1::Framing;
use crate::message::{Fields, RequestHead, ResponseHead};
use crate::rules::{self, Forwarding};
use crate::sse::hub::{Hub, HubSettings};
use crate::sse::{AccessLog, BodyKind, Outcome, RelayBody, RelaySettings};
use crate::upstream::{
    Group, Limits, RequestBody, ResponseBody, Target, UpstreamRequest, UpstreamSettings,
};
use crate::websocket::Tunnel;

/// Body type of every response ssegate sends.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// What the proxy knows of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Subject of the client certificate verified in the TLS handshake.
    pub client_subject: Option<Arc<str>>,
    /// The serving thread (see `workers`), whose upstream pool it uses.
    pub worker: usize,
}

/// A response on its way to the client, whichever protocol carries it.
pub struct ProxyResponse {
    pub head: ResponseHead,
    pub body: ProxyBody,
    /// The proxy refused the request for the client's fault: an HTTP/1.1
    /// connection closes after this response, as its state is unknown.
    pub client_error: bool,
    /// A WebSocket the upstream accepted: once `head` is sent, the client's
    /// protocol runs it on the client's connection (HTTP/1.1) or stream
    /// (HTTP/2); `body` is empty.
    pub websocket: Option<Box<Tunnel>>,
}

/// Shared by every connection: the rules' settings, the upstream, the hub.
pub struct Proxy {
    base_path: String,
    keep_underscore_headers: bool,
    max_header_size: usize,
    max_body: Option<u64>,
    hsts: Option<Bytes>,
    upstream: Arc<Group>,
    ordinary_relay: Arc<RelaySettings>,
    event_stream_relay: Arc<RelaySettings>,
    subscriber_relay: Arc<RelaySettings>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    /// Whether WebSocket upgrades are forwarded (always, for now); without,
    /// an upgrade goes on as a plain request and an extended CONNECT is
    /// refused.
    websocket: bool,
    websocket_idle: std::time::Duration,
}

impl Proxy {
    pub fn new(config: &Config, shutdown: CancellationToken) -> Arc<Self> {
        let settings = UpstreamSettings {
            connect_timeout: config.timeouts.connect,
            limits: Limits {
                request_timeout: config.timeouts.request,
                max_header_size: config.max_header_size,
            },
            max_idle: crate::defaults::UPSTREAM_MAX_IDLE,
            idle_timeout: crate::defaults::UPSTREAM_IDLE_TIMEOUT,
            threads: config.threads.get(),
        };
        let targets = config
            .upstream
            .targets
            .iter()
            .map(|url| Target::new(url.to_string(), url.address(), &settings))
            .collect();
        let upstream = Arc::new(Group::new(
            targets,
            config.threads.get(),
            config.upstream.balance,
            config.upstream.health_interval,
            config.upstream.health_check.clone(),
        ));
        let hub_settings = HubSettings {
            prefixes: config.streams.shared_prefixes.clone(),
            replay: config.streams.replay,
            queue: config.streams.subscriber_queue,
            linger: config.streams.linger,
            response_timeout: config.timeouts.request,
            idle_timeout: config.timeouts.sse_idle,
            base_path: config.upstream.base_path().to_owned(),
        };
        let hub = Hub::new(hub_settings, upstream.clone(), shutdown.clone());
        Arc::new(Proxy {
            base_path: config.upstream.base_path().to_owned(),
            keep_underscore_headers: config.keep_underscore_headers,
            max_header_size: config.max_header_size,
            max_body: config.max_body,
            hsts: config.hsts.clone(),
            upstream,
            ordinary_relay: Arc::new(relay_settings(config, BodyKind::Ordinary)),
            event_stream_relay: Arc::new(relay_settings(config, BodyKind::EventStream)),
            // The hub watches the shared stream's upstream for silence.
            subscriber_relay: Arc::new(RelaySettings {
                idle_timeout: None,
                ..relay_settings(config, BodyKind::EventStream)
            }),
            hub,
            shutdown,
            websocket: true,
            websocket_idle: config.timeouts.websocket_idle,
        })
    }

    /// The shared-stream hub (for its counters).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The upstream targets (for their counters and health checks).
    pub fn upstream(&self) -> &Arc<Group> {
        &self.upstream
    }

    /// Cancelled when the proxy starts to drain.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Handles one request from either protocol.
    pub async fn handle<B: RequestBody>(
        &self,
        head: RequestHead,
        body: B,
        conn: &ConnInfo,
    ) -> ProxyResponse {
        let mut access = AccessLog::new(
            conn.peer,
            head.method.clone(),
            head.target.clone(),
            head.version,
        );
        // The one decision on WebSockets, for both protocols.
        let websocket = if self.websocket {
            rules::websocket_upgrade(&head)
        } else {
            None
        };
        let host = match rules::check_request(&head, self.max_header_size, websocket) {
            Ok(host) => host,
            Err(err) => return self.failed(err, access),
        };
        if websocket.is_none() && head.method == Method::GET && self.hub.is_shared(head.path()) {
            return self.subscribe(&head, host, conn.worker, access).await;
        }
        let body = match LimitedBody::new(body, self.max_body) {
            Ok(body) => body,
            Err(err) => return self.failed(err, access),
        };
        let framing = body_framing(&body);
        let websocket_key = match websocket.map(|ws| crate::websocket::upstream_key(ws, &head)) {
            Some(Ok(key)) => Some(key),
            Some(Err(err)) => return self.failed(err, access),
            None => None,
        };
        let mut upstream_head = Vec::with_capacity(512 + head.fields.len() * 32);
        let forwarding = Forwarding {
            base_path: &self.base_path,
            client_ip: Some(conn.peer.ip()),
            client_subject: conn.client_subject.as_deref(),
            keep_underscore_headers: self.keep_underscore_headers,
            websocket_key: websocket_key.as_deref(),
        };
        rules::write_upstream_head(&mut upstream_head, &head, &host, &forwarding, framing);
        // An extended CONNECT goes upstream as a GET (see `write_upstream_head`).
        let method = match websocket {
            Some(_) => &Method::GET,
            None => &head.method,
        };
        let request = UpstreamRequest {
            method,
            head: upstream_head,
            body: (framing != Framing::None).then_some(body),
            framing,
            resendable: rules::may_resend(method, framing),
            upgrade: websocket.is_some(),
        };
        let sent = self
            .upstream
            .send(conn.worker, Some(conn.peer.ip()), request)
            .await;
        let (response, body) = match sent {
            Ok(exchanged) => exchanged,
            Err(err) => return self.failed(err, access),
        };
        if let (Some(websocket), Some(key)) = (websocket, &websocket_key) {
            match rules::websocket_answer(&response, websocket, key) {
                Ok(Some(head)) => return self.open_websocket(head, body, access),
                // Refused: relayed as an ordinary response.
                Ok(None) => {}
                Err(err) => return self.failed(err, access),
            }
        }
        let filtered = rules::filter_response(response, &head.method);
        access.status = filtered.head.status;
        let (kind, settings) = if filtered.event_stream {
            (BodyKind::EventStream, &self.event_stream_relay)
        } else {
            (BodyKind::Ordinary, &self.ordinary_relay)
        };
        debug_assert_eq!(settings.kind, kind);
        let mut head = filtered.head;
        rules::add_hsts(&mut head, self.hsts.as_deref());
        let body = RelayBody::new(body, settings.clone(), &self.shutdown, access).boxed();
        ProxyResponse {
            head,
            body,
            client_error: false,
            websocket: None,
        }
    }

    /// Where every WebSocket starts, whichever protocol the client speaks:
    /// the upstream has switched, and `head` (its `101`, or a `200` for an
    /// extended CONNECT) goes to the client ahead of the tunnel. Whatever
    /// counts open WebSockets holds its count in the `Tunnel`, which lives
    /// exactly as long as the WebSocket.
    fn open_websocket(
        &self,
        mut head: ResponseHead,
        body: ResponseBody,
        mut access: AccessLog,
    ) -> ProxyResponse {
        let Some(upstream) = body.into_upgraded() else {
            let err = ProxyError::Upstream("connection gone after 101".into());
            return self.failed(err, access);
        };
        access.status = head.status;
        rules::add_hsts(&mut head, self.hsts.as_deref());
        let tunnel = Tunnel::new(upstream, self.websocket_idle, access);
        ProxyResponse {
            head,
            body: Empty::new().map_err(|never| match never {}).boxed(),
            client_error: false,
            websocket: Some(Box::new(tunnel)),
        }
    }

    /// Joins a shared stream: one upstream request serves every subscriber.
    async fn subscribe(
        &self,
        head: &RequestHead,
        host: String,
        worker: usize,
        mut access: AccessLog,
    ) -> ProxyResponse {
        let last_event_id = head
            .fields
            .get("last-event-id")
            .and_then(|id| std::str::from_utf8(id).ok());
        match self
            .hub
            .subscribe(&head.target, host, last_event_id, worker)
            .await
        {
            Ok(subscription) => {
                access.status = StatusCode::OK;
                let settings = self.subscriber_relay.clone();
                let body = RelayBody::new(subscription, settings, &self.shutdown, access).boxed();
                let mut fields = Fields::builder();
                fields
                    .push(b"content-type", b"text/event-stream")
                    .push(b"cache-control", b"no-cache");
                let mut head = ResponseHead {
                    status: StatusCode::OK,
                    fields: fields.finish(),
                };
                rules::add_hsts(&mut head, self.hsts.as_deref());
                ProxyResponse {
                    head,
                    body,
                    client_error: false,
                    websocket: None,
                }
            }
            Err(err) => self.failed(err, access),
        }
    }

    /// The response for a request that could not be forwarded, logged.
    pub fn failed(&self, err: ProxyError, mut access: AccessLog) -> ProxyResponse {
        access.status = err.status();
        access.outcome = Outcome::ProxyError;
        tracing::warn!(peer = %access.peer, path = %access.path, status = err.status().as_u16(), "{err}");
        self.error_response(&err)
    }

    /// The short text response for `err` (not logged).
    pub fn error_response(&self, err: &ProxyError) -> ProxyResponse {
        let message = err.client_message().as_bytes();
        let mut fields = Fields::builder();
        fields.push(b"content-type", b"text/plain; charset=utf-8");
        if matches!(err, ProxyError::MethodNotAllowed) {
            fields.push(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        }
        let mut head = ResponseHead {
            status: err.status(),
            fields: fields.finish(),
        };
        rules::add_hsts(&mut head, self.hsts.as_deref());
        let body = Full::new(Bytes::from_static(message))
            .map_err(|never| match never {})
            .boxed();
        ProxyResponse {
            head,
            body,
            client_error: err.is_client_error(),
            websocket: None,
        }
    }
}

/// A request body held to `--max-body`: refused at once when its length is
/// known to exceed it, and failed (413 if no response has started) once it
/// grows past it.
struct LimitedBody<B> {
    inner: B,
    limit: u64,
    /// Bytes still allowed.
    left: u64,
}

impl<B: RequestBody> LimitedBody<B> {
    fn new(inner: B, limit: Option<u64>) -> Result<Self, ProxyError> {
        let limit = limit.unwrap_or(u64::MAX);
        if inner.size_hint().lower() > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        Ok(LimitedBody {
            inner,
            limit,
            left: limit,
        })
    }
}

impl<B: RequestBody> Body for LimitedBody<B> {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, |d| d.len() as u64);
            if len > this.left {
                return Poll::Ready(Some(Err(ProxyError::BodyTooLarge(this.limit))));
            }
            this.left -= len;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a client's body goes upstream: none, its exact length, or chunked.
fn body_framing<B: RequestBody>(body: &B) -> Framing {
    if body.is_end_stream() {
        Framing::None
    } else if let Some(len) = body.size_hint().exact() {
        Framing::Length(len)
    } else {
        Framing::Chunked
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
