//! The per-request path, the same for HTTP/1.1 and HTTP/2 clients: check
//! the request (`rules`), pick the way (a shared stream, or the upstream),
//! write the upstream head (`rules`), exchange it (`upstream`), filter the
//! response (`rules`) and wrap its body for the way to the client
//! (`sse::RelayBody`), or, for a WebSocket the upstream accepted, hand the
//! client's protocol a `websocket::Tunnel`. Never fails: every error
//! becomes a response.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;

use crate::cluster::Cluster;
use crate::config::{Config, RouteConfig, UpstreamGroup};
use crate::error::{BoxError, ProxyError};
use crate::http1::Framing;
use crate::limits::{PerIpGuard, PerIpLimit};
use crate::message::{Fields, RequestHead, ResponseHead};
use crate::metrics::{Metrics, RequestMetrics, RouteMetrics};
use crate::routes::RouteTable;
use crate::rules::{self, Forwarding, WebSocket};
use crate::sse::hub::{Hub, HubSettings};
use crate::sse::{AccessLog, BodyKind, Outcome, RelayBody, RelaySettings, RouteLabel};
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

/// Shared by every connection: the routing table (replaced whole when the
/// configuration is reloaded) and the shutdown token.
pub struct Proxy {
    routing: ArcSwap<Routing>,
    /// `--max-streams-per-ip`; None: no limit. Not reloaded: the counts
    /// are of streams that outlive a reload.
    streams_per_ip: Option<Arc<PerIpLimit>>,
    shutdown: CancellationToken,
    /// The registry every route's and group's handles come from (`--admin`).
    metrics: Metrics,
    /// Responses to requests no route took.
    unrouted: RequestMetrics,
    /// `--cluster`: Redis, shared by every route's hub. Not reloaded.
    cluster: Option<Arc<Cluster>>,
}

/// What one configuration decides about requests. A request takes the
/// current one when it starts; what it holds from it (its group's
/// connection, its relay settings, its shared stream) lives on after a
/// reload replaces it.
pub struct Routing {
    routes: RouteTable<Route>,
    /// Groups by name, with the definition each was built from, so a
    /// reload keeps a group that did not change (its connections, counts
    /// and health).
    groups: BTreeMap<String, (UpstreamSettingsKey, Arc<Group>)>,
    keep_underscore_headers: bool,
    max_header_size: usize,
    hsts: Option<Bytes>,
    shutdown: CancellationToken,
}

/// What a group is built from: its definition and the settings of its
/// targets' connections.
type UpstreamSettingsKey = (UpstreamGroup, std::time::Duration, usize);

/// One route and everything a request on it needs.
struct Route {
    config: RouteConfig,
    /// Its label and group's name, for the access lines of its requests.
    label: Arc<RouteLabel>,
    /// Its counters, resolved when the route is built.
    metrics: RouteMetrics,
    /// The group's base path, prefixed to every request path.
    base_path: String,
    group: Arc<Group>,
    hub: Arc<Hub>,
    ordinary_relay: Arc<RelaySettings>,
    event_stream_relay: Arc<RelaySettings>,
    subscriber_relay: Arc<RelaySettings>,
}

impl Proxy {
    /// Builds the routing of `config`, counting with `metrics`; starts its
    /// groups' health checks (so it must run within the runtime that
    /// should run them).
    pub fn new(config: &Config, shutdown: CancellationToken, metrics: Metrics) -> Arc<Self> {
        // The URL was checked with the configuration.
        let cluster = config.cluster.clone().and_then(|settings| {
            match Cluster::new(settings, metrics.cluster()) {
                Ok(cluster) => Some(Arc::new(cluster)),
                Err(err) => {
                    tracing::error!("cluster mode off: {err}");
                    None
                }
            }
        });
        if let Some(cluster) = &cluster {
            cluster.spawn_monitor(shutdown.clone());
        }
        let routing = Routing::build(config, None, &shutdown, &metrics, cluster.as_ref());
        Arc::new(Proxy {
            cluster,
            routing: ArcSwap::from_pointee(routing),
            streams_per_ip: config.limits.max_streams_per_ip.map(PerIpLimit::new),
            shutdown,
            unrouted: metrics.unrouted(),
            metrics,
        })
    }

    /// `--cluster`'s Redis, if configured.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_deref()
    }

    /// The registry the proxy counts with.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves new requests with `config`'s routes and groups from now on.
    /// Unchanged groups (and the shared streams of unchanged routes) are
    /// kept; requests, event streams and WebSockets under way go on where
    /// they are; groups no longer configured stop their health checks.
    pub fn reload(&self, config: &Config) {
        let old = self.routing.load_full();
        let new = Arc::new(Routing::build(
            config,
            Some(&old),
            &self.shutdown,
            &self.metrics,
            self.cluster.as_ref(),
        ));
        for (_, group) in old.groups.values() {
            let kept = new.groups.values().any(|(_, g)| Arc::ptr_eq(g, group));
            if !kept {
                group.stop_health_checks();
            }
        }
        self.routing.store(new);
    }

    /// The shared-stream hub of the first route (for counters).
    pub fn hub(&self) -> Option<Arc<Hub>> {
        let routing = self.routing.load();
        let hub = routing.routes.iter().next().map(|route| route.hub.clone());
        hub
    }

    /// The routes being served, in the routing table's order, for the
    /// admin page.
    pub fn routes(&self) -> Vec<RouteStatus> {
        let routing = self.routing.load();
        routing
            .routes
            .iter()
            .map(|route| RouteStatus {
                label: route.label.route.to_string(),
                upstream: route.config.upstream.clone(),
                metrics: route.metrics.clone(),
                hub: route.hub.clone(),
            })
            .collect()
    }

    /// The upstream groups by name (for their counters).
    pub fn groups(&self) -> BTreeMap<String, Arc<Group>> {
        let routing = self.routing.load();
        routing
            .groups
            .iter()
            .map(|(name, (_, group))| (name.clone(), group.clone()))
            .collect()
    }

    /// Counts one more long-lived stream (an event stream, a shared-stream
    /// subscription, a WebSocket) for the client's address against
    /// `--max-streams-per-ip`, until the returned guard is dropped: hold it
    /// for exactly as long as the stream. `Ok(None)` without the limit;
    /// `Err(TooManyStreams)` (429) when the address is at it.
    pub fn stream_slot(&self, conn: &ConnInfo) -> Result<Option<PerIpGuard>, ProxyError> {
        let Some(limit) = &self.streams_per_ip else {
            return Ok(None);
        };
        match limit.try_acquire(conn.peer.ip()) {
            Some(guard) => Ok(Some(guard)),
            None => Err(ProxyError::TooManyStreams(limit.max())),
        }
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
        let routing = self.routing.load_full();
        let access = AccessLog::new(
            conn.peer,
            head.method.clone(),
            head.target.clone(),
            head.version,
        );
        let started = access.started;
        let mut route = None;
        let response = self
            .forward(&routing, head, body, conn, access, &mut route)
            .await;
        // Counted once the head is ready, whichever way the request took.
        match route {
            Some(route) => route.metrics.response(response.head.status, started),
            None => self.unrouted.response(response.head.status, started),
        }
        response
    }

    /// `handle`'s request path; sets `taken` to the route once known.
    async fn forward<'r, B: RequestBody>(
        &self,
        routing: &'r Routing,
        head: RequestHead,
        body: B,
        conn: &ConnInfo,
        mut access: AccessLog,
        taken: &mut Option<&'r Route>,
    ) -> ProxyResponse {
        // The one decision on WebSockets, for both protocols.
        let websocket = rules::websocket_upgrade(&head);
        let host = match rules::check_request(&head, routing.max_header_size, websocket) {
            Ok(host) => host,
            Err(err) => return routing.failed(err, access),
        };
        let Some(route) = routing.routes.find(&host, head.path()) else {
            return routing.failed(ProxyError::NoRoute, access);
        };
        *taken = Some(route);
        access.route = Some(route.label.clone());
        // A route with `websocket = false`: an upgrade goes on as a plain
        // request, an extended CONNECT is refused like any CONNECT.
        let websocket = match websocket {
            Some(WebSocket::ExtendedConnect) if !route.config.websocket => {
                return routing.failed(ProxyError::MethodNotAllowed, access)
            }
            Some(_) if !route.config.websocket => None,
            other => other,
        };
        // A WebSocket counts against the client's streams before anything
        // is sent upstream.
        let slot = match websocket.map(|_| self.stream_slot(conn)) {
            Some(Err(err)) => return routing.failed(err, access),
            Some(Ok(slot)) => slot,
            None => None,
        };
        let strip_prefix = route.strip_prefix();
        if websocket.is_none() && head.method == Method::GET && route.hub.is_shared(head.path()) {
            // Before subscribing, so a refused client starts no upstream stream.
            let slot = match self.stream_slot(conn) {
                Ok(slot) => slot,
                Err(err) => return routing.failed(err, access),
            };
            return routing
                .subscribe(route, &head, host, conn.worker, slot, access)
                .await;
        }
        let body = match LimitedBody::new(body, route.config.max_body) {
            Ok(body) => body,
            Err(err) => return routing.failed(err, access),
        };
        let framing = body_framing(&body);
        let websocket_key = match websocket.map(|ws| crate::websocket::upstream_key(ws, &head)) {
            Some(Ok(key)) => Some(key),
            Some(Err(err)) => return routing.failed(err, access),
            None => None,
        };
        let mut upstream_head = Vec::with_capacity(512 + head.fields.len() * 32);
        let forwarding = Forwarding {
            base_path: &route.base_path,
            strip_prefix,
            client_ip: Some(conn.peer.ip()),
            client_subject: conn.client_subject.as_deref(),
            keep_underscore_headers: routing.keep_underscore_headers,
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
            response_timeout: route.config.request_timeout,
            upgrade: websocket.is_some(),
        };
        let sent = route
            .group
            .send(conn.worker, Some(conn.peer.ip()), request)
            .await;
        let (response, body) = match sent {
            Ok(answer) => {
                access.target = Some(answer.target);
                (answer.head, answer.body)
            }
            Err(err) => return routing.failed(err, access),
        };
        if let (Some(websocket), Some(key)) = (websocket, &websocket_key) {
            match rules::websocket_answer(&response, websocket, key) {
                Ok(Some(head)) => return routing.open_websocket(route, head, body, access, slot),
                // Refused: relayed as an ordinary response.
                Ok(None) => {}
                Err(err) => return routing.failed(err, access),
            }
        }
        let filtered = rules::filter_response(response, &head.method);
        // Only known to be a stream now: over the limit, the upstream's
        // response is dropped unread (its connection closes) for a 429.
        let slot = match filtered.event_stream.then(|| self.stream_slot(conn)) {
            Some(Err(err)) => return routing.failed(err, access),
            Some(Ok(stream_slot)) => stream_slot,
            None => slot,
        };
        access.status = filtered.head.status;
        let (kind, settings, counted) = if filtered.event_stream {
            let counted = route.metrics.streams();
            (BodyKind::EventStream, &route.event_stream_relay, counted)
        } else {
            (BodyKind::Ordinary, &route.ordinary_relay, None)
        };
        debug_assert_eq!(settings.kind, kind);
        let mut head = filtered.head;
        routing.finish_head(route, &mut head);
        let body = RelayBody::new(body, settings.clone(), &self.shutdown, access)
            .holding(slot)
            .counted(counted)
            .boxed();
        ProxyResponse {
            head,
            body,
            client_error: false,
            websocket: None,
        }
    }

    /// The short text response for `err` (not logged), to a request the
    /// client's protocol refused before the proxy saw it (counted as
    /// unrouted).
    pub fn error_response(&self, err: &ProxyError) -> ProxyResponse {
        let response = self.routing.load().error_response(err);
        self.unrouted
            .response(response.head.status, std::time::Instant::now());
        response
    }
}

/// A route as the admin page shows it.
pub struct RouteStatus {
    pub label: String,
    /// Its group's name.
    pub upstream: String,
    pub metrics: RouteMetrics,
    pub hub: Arc<Hub>,
}

impl Route {
    /// The prefix removed from request paths, if the route strips it.
    fn strip_prefix(&self) -> &str {
        if self.config.strip_prefix {
            self.config.path.trim_end_matches('/')
        } else {
            ""
        }
    }
}

impl Routing {
    /// The routing of `config`, keeping from `old` the groups and hubs
    /// that did not change.
    fn build(
        config: &Config,
        old: Option<&Routing>,
        shutdown: &CancellationToken,
        metrics: &Metrics,
        cluster: Option<&Arc<Cluster>>,
    ) -> Routing {
        let settings = UpstreamSettings {
            connect_timeout: config.timeouts.connect,
            tls: config.upstream_tls.clone(),
            limits: Limits {
                request_timeout: config.timeouts.request,
                max_header_size: config.max_header_size,
            },
            max_idle: crate::defaults::UPSTREAM_MAX_IDLE,
            idle_timeout: crate::defaults::UPSTREAM_IDLE_TIMEOUT,
            threads: config.threads.get(),
        };
        let mut groups = BTreeMap::new();
        for (name, definition) in &config.upstreams {
            let key = (
                definition.clone(),
                config.timeouts.connect,
                config.max_header_size,
            );
            // A group with https targets is built anew: the CA file may
            // have changed.
            let kept = old
                .and_then(|old| old.groups.get(name))
                .filter(|(old_key, _)| *old_key == key && definition.first_tls_target().is_none())
                .map(|(_, group)| group.clone());
            let group = kept.unwrap_or_else(|| {
                let group = Arc::new(build_group(
                    name,
                    definition,
                    &settings,
                    config.threads.get(),
                    metrics,
                ));
                group.spawn_health_checks(definition.base_path(), shutdown);
                group
            });
            groups.insert(name.clone(), (key, group));
        }
        let routes = config
            .effective_routes()
            .into_iter()
            .filter_map(|route| {
                let (key, group) = groups.get(&route.upstream)?;
                let base_path = key.0.base_path().to_owned();
                let label = Arc::new(RouteLabel::new(
                    route.host.as_ref(),
                    &route.path,
                    &route.upstream,
                ));
                let hub_settings = HubSettings {
                    prefixes: route.streams.shared_prefixes.clone(),
                    replay: route.streams.replay,
                    queue: route.streams.subscriber_queue,
                    linger: route.streams.linger,
                    response_timeout: route.request_timeout,
                    idle_timeout: route.sse_idle_timeout,
                    base_path: base_path.clone(),
                    redis_prefixes: route.streams.redis_prefixes.clone(),
                    route: label.route.to_string(),
                };
                let kept_hub = old.and_then(|old| {
                    old.routes
                        .iter()
                        .find(|r| {
                            r.config.host == route.host
                                && r.config.path == route.path
                                && Arc::ptr_eq(&r.group, group)
                                && r.hub.settings() == &hub_settings
                        })
                        .map(|r| r.hub.clone())
                });
                let hub = kept_hub.unwrap_or_else(|| {
                    Hub::new(
                        hub_settings,
                        group.clone(),
                        shutdown.clone(),
                        metrics.hub(),
                        cluster.cloned(),
                    )
                });
                let relay = |kind| Arc::new(relay_settings(&route, kind));
                let served = Route {
                    metrics: metrics.route(&label.route),
                    label,
                    base_path,
                    group: group.clone(),
                    hub,
                    ordinary_relay: relay(BodyKind::Ordinary),
                    event_stream_relay: relay(BodyKind::EventStream),
                    // The hub watches the shared stream's upstream for silence.
                    subscriber_relay: Arc::new(RelaySettings {
                        idle_timeout: None,
                        ..relay_settings(&route, BodyKind::EventStream)
                    }),
                    config: route,
                };
                Some((
                    served.config.host.clone(),
                    served.config.path.clone(),
                    served,
                ))
            })
            .collect();
        Routing {
            routes: RouteTable::new(routes),
            groups,
            keep_underscore_headers: config.keep_underscore_headers,
            max_header_size: config.max_header_size,
            hsts: config.hsts.clone(),
            shutdown: shutdown.clone(),
        }
    }

    /// Where every WebSocket starts, whichever protocol the client speaks:
    /// the upstream has switched, and `head` (its `101`, or a `200` for an
    /// extended CONNECT) goes to the client ahead of the tunnel, which
    /// holds the client's stream `slot` for as long as it runs.
    fn open_websocket(
        &self,
        route: &Route,
        mut head: ResponseHead,
        body: ResponseBody,
        mut access: AccessLog,
        slot: Option<PerIpGuard>,
    ) -> ProxyResponse {
        let Some(upstream) = body.into_upgraded() else {
            let err = ProxyError::Upstream("connection gone after 101".into());
            return self.failed(err, access);
        };
        access.status = head.status;
        rules::add_hsts(&mut head, self.hsts.as_deref());
        let tunnel = Tunnel::new(
            upstream,
            route.config.websocket_idle_timeout,
            access,
            slot,
            route.metrics.websocket_opened(),
        );
        ProxyResponse {
            head,
            body: Empty::new().map_err(|never| match never {}).boxed(),
            client_error: false,
            websocket: Some(Box::new(tunnel)),
        }
    }

    /// HSTS and the route's response fields, on a response to the client.
    fn finish_head(&self, route: &Route, head: &mut ResponseHead) {
        rules::set_response_fields(head, &route.config.response_headers);
        rules::add_hsts(head, self.hsts.as_deref());
    }

    /// Joins a shared stream: one upstream request serves every subscriber.
    async fn subscribe(
        &self,
        route: &Route,
        head: &RequestHead,
        host: String,
        worker: usize,
        slot: Option<PerIpGuard>,
        mut access: AccessLog,
    ) -> ProxyResponse {
        let last_event_id = head
            .fields
            .get("last-event-id")
            .and_then(|id| std::str::from_utf8(id).ok());
        let (lead, rest) = rules::upstream_target(&head.target, route.strip_prefix());
        let target = format!("{lead}{rest}");
        match route
            .hub
            .subscribe(head.path(), &target, host, last_event_id, worker)
            .await
        {
            Ok((subscription, upstream_target)) => {
                access.status = StatusCode::OK;
                access.target = Some(upstream_target);
                let settings = route.subscriber_relay.clone();
                let body = RelayBody::new(subscription, settings, &self.shutdown, access)
                    .holding(slot)
                    .counted(route.metrics.streams())
                    .boxed();
                let mut fields = Fields::builder();
                fields
                    .push(b"content-type", b"text/event-stream")
                    .push(b"cache-control", b"no-cache");
                let mut head = ResponseHead {
                    status: StatusCode::OK,
                    fields: fields.finish(),
                };
                self.finish_head(route, &mut head);
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

/// Builds group `name`'s targets, each with its connection pools and its
/// counters.
fn build_group(
    name: &str,
    definition: &UpstreamGroup,
    settings: &UpstreamSettings,
    threads: usize,
    metrics: &Metrics,
) -> Group {
    let targets = definition
        .targets
        .iter()
        .map(|url| {
            let counted = metrics.target(name, &url.to_string());
            Target::new(url.to_string(), url.endpoint.clone(), settings).with_metrics(counted)
        })
        .collect();
    Group::new(
        targets,
        threads,
        definition.balance,
        definition.health_interval,
        definition.health_check.clone(),
    )
}

fn relay_settings(route: &RouteConfig, kind: BodyKind) -> RelaySettings {
    RelaySettings {
        kind,
        idle_timeout: Some(match kind {
            BodyKind::Ordinary => route.request_timeout,
            BodyKind::EventStream => route.sse_idle_timeout,
        }),
        heartbeat: route.streams.heartbeat,
        drain_retry: route.streams.drain_retry,
    }
}
