//! Metrics: the one Prometheus registry (`prometheus-client`) and the
//! handles the rest of the proxy counts with.
//!
//! The request path never looks a metric up. Every label set is resolved
//! once, when the thing it describes is built: a route's counters when a
//! `Route` is built (at start and on each reload), a target's when its
//! `Target` is, the connection and TLS counters when the server starts.
//! What the handles hold are `prometheus-client` counters and gauges (an
//! `Arc` of an atomic each) and a lock-free [`Histogram`] of this module,
//! so counting is an atomic add: no map lookup, no allocation, no lock.
//!
//! Without `--admin` every handle is empty (`None`) and counting is a
//! branch: nothing is registered, nothing is counted.
//!
//! Gauges of open things (connections, event streams, shared streams and
//! their subscribers, WebSockets) go up when the thing starts and down
//! through a drop guard or the owner's `Drop`, so every way it ends counts.
//!
//! Two families are filled when they are scraped, from the live state
//! rather than by the request path: upstream target health (passive health
//! changes with time alone) and certificate expiry (certificates change on
//! reload). [`Metrics::encode`] takes them from the caller.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `route` label of requests no route took (bad requests, 404): no
/// route label (`sse::RouteLabel`: the route's host and path as
/// configured) has this form, as every route's path starts with `/`.
pub const UNROUTED: &str = "unrouted";

/// Upper bounds of `ssegate_request_duration_seconds`, in microseconds.
const REQUEST_BUCKETS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
/// Upper bounds of `ssegate_sse_stream_duration_seconds`, in microseconds:
/// one second to a day.
const STREAM_BUCKETS_US: [u64; 12] = [
    1_000_000,
    5_000_000,
    15_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    1_800_000_000,
    3_600_000_000,
    7_200_000_000,
    21_600_000_000,
    86_400_000_000,
];

/// The `status` label: the status class, `2xx` and so on.
pub fn status_class(status: StatusCode) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

// ---------------------------------------------------------------- labels

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    version: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResult {
    upstream: String,
    target: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

// ---------------------------------------------------------------- label values

/// A client connection's protocol, chosen by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
        }
    }
}

/// How a TLS handshake went: the version it agreed, or why it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    Tls12,
    Tls13,
    Failed(TlsFailure),
}

/// Why a TLS handshake failed (the `result` label, beside `ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not done within `--tls-handshake-timeout`.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// A downgraded retry signalled by TLS_FALLBACK_SCSV, refused.
    FallbackScsv,
    /// No protocol version or cipher suite in common (TLS 1.0/1.1 clients).
    Incompatible,
    /// `--client-ca` requires a certificate and the client sent none.
    NoCert,
    /// The client's certificate did not verify.
    BadCert,
    /// Any other TLS protocol error (not TLS, a bad message, an alert).
    Protocol,
    /// A socket error other than a close.
    Io,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 8] = [
        TlsFailure::Timeout,
        TlsFailure::Closed,
        TlsFailure::FallbackScsv,
        TlsFailure::Incompatible,
        TlsFailure::NoCert,
        TlsFailure::BadCert,
        TlsFailure::Protocol,
        TlsFailure::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
            TlsFailure::FallbackScsv => "fallback_scsv",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::NoCert => "no_cert",
            TlsFailure::BadCert => "bad_cert",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Io => "io",
        }
    }
}

/// The `version` label of a handshake that failed before one was agreed.
pub const TLS_VERSION_UNKNOWN: &str = "unknown";

/// Why an event stream ended (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client went away (or its connection was cut, e.g. by
    /// `--send-timeout`).
    Client,
    /// The upstream ended the stream or failed.
    Upstream,
    /// `--sse-idle-timeout` passed without a byte from the upstream.
    Idle,
    /// Ended at an event boundary because ssegate is shutting down.
    Drain,
    /// A shared-stream subscriber fell too far behind and was dropped.
    Slow,
}

impl StreamEnd {
    pub const ALL: [StreamEnd; 5] = [
        StreamEnd::Client,
        StreamEnd::Upstream,
        StreamEnd::Idle,
        StreamEnd::Drain,
        StreamEnd::Slow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Client => "client",
            StreamEnd::Upstream => "upstream",
            StreamEnd::Idle => "idle",
            StreamEnd::Drain => "drain",
            StreamEnd::Slow => "slow",
        }
    }
}

/// What one attempt at an upstream target gave (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    /// A response head.
    Ok,
    /// No connection: refused, not accepted in time, TLS failed.
    Unreachable,
    /// A new connection closed before any response byte.
    Unanswered,
    /// No response head within the request timeout.
    Timeout,
    /// Anything else on the upstream's side (a malformed response, a reset).
    Error,
    /// The client's request body broke off or was too large.
    Client,
}

impl UpstreamResult {
    pub const ALL: [UpstreamResult; 6] = [
        UpstreamResult::Ok,
        UpstreamResult::Unreachable,
        UpstreamResult::Unanswered,
        UpstreamResult::Timeout,
        UpstreamResult::Error,
        UpstreamResult::Client,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamResult::Ok => "ok",
            UpstreamResult::Unreachable => "unreachable",
            UpstreamResult::Unanswered => "unanswered",
            UpstreamResult::Timeout => "timeout",
            UpstreamResult::Error => "error",
            UpstreamResult::Client => "client",
        }
    }
}

// ---------------------------------------------------------------- histogram

/// A histogram with fixed buckets, counted with atomics only
/// (`prometheus-client`'s own takes a lock per observation). Counts are
/// per bucket; the exposition adds them up.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramState>);

#[derive(Debug)]
struct HistogramState {
    /// Upper bounds in microseconds, ascending; one more count for +Inf.
    bounds_us: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        Histogram(Arc::new(HistogramState {
            bounds_us,
            counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }))
    }

    fn for_requests() -> Self {
        Histogram::new(&REQUEST_BUCKETS_US)
    }

    fn for_streams() -> Self {
        Histogram::new(&STREAM_BUCKETS_US)
    }

    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let state = &*self.0;
        // `le` buckets: the first bound at or above the value.
        let bucket = state.bounds_us.partition_point(|&bound| bound < us);
        state.counts[bucket].fetch_add(1, Ordering::Relaxed);
        state.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let state = &*self.0;
        let buckets: Vec<(f64, u64)> = state
            .bounds_us
            .iter()
            .map(|&bound| bound as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(state.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = state.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

// ---------------------------------------------------------------- the registry

/// The registry and every family, or nothing (no `--admin`). Cloned into
/// whatever builds handles; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Registered>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Metrics").field(&self.0.is_some()).finish()
    }
}

struct Registered {
    registry: Registry,
    connections: [Gauge; 2],
    tls_ok: [Counter; 2],
    tls_failed: [Counter; TlsFailure::ALL.len()],
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    streams_open: Family<RouteLabel, Gauge>,
    events: Family<RouteLabel, Counter>,
    stream_duration: HistogramFamily<RouteLabel>,
    stream_ends: Family<RouteReason, Counter>,
    heartbeats: Counter,
    hub: Arc<HubCounters>,
    cluster: Arc<ClusterCounters>,
    websockets: Family<RouteLabel, Gauge>,
    upstream_requests: Family<TargetResult, Counter>,
    upstream_healthy: Family<TargetLabels, Gauge>,
    reloads: [Counter; 2],
    certificate_expiry: Family<NameLabel, Gauge>,
    unrouted: Arc<RequestCounters>,
    /// Every route's counters by label: a route built again (a reload)
    /// gets the same ones, and the admin page adds them up.
    routes: Mutex<BTreeMap<String, Arc<RouteCounters>>>,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// Scrape-time families are cleared and refilled: one scrape at a time.
    scrape: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of the last configuration (or certificate) reload.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub ok: bool,
    /// What triggered it and what came of it (the first error, if any).
    pub message: String,
}

/// A target's health as the proxy sees it now, for the scrape.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub upstream: String,
    pub target: String,
    pub healthy: bool,
}

/// A certificate's name and end of validity, for the scrape.
#[derive(Debug, Clone)]
pub struct CertificateExpiry {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl Metrics {
    /// Counting nothing (no `--admin`).
    pub fn disabled() -> Self {
        Metrics(None)
    }

    /// A registry with every family of ssegate registered, but the
    /// cluster's.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// The same with the cluster's families too (`--cluster`): without
    /// it, a Redis gauge at 0 would read as Redis being down.
    pub fn with_cluster() -> Self {
        Self::build(true)
    }

    fn build(cluster: bool) -> Self {
        let mut registry = Registry::default();
        let connections_family = Family::<ProtocolLabel, Gauge>::default();
        registry.register(
            "ssegate_connections_open",
            "Client connections open, by protocol (after the TLS handshake)",
            connections_family.clone(),
        );
        let connections = Protocol::ALL.map(|protocol| {
            connections_family.get_or_create_owned(&ProtocolLabel {
                protocol: protocol.as_str(),
            })
        });
        let tls = Family::<TlsLabels, Counter>::default();
        registry.register(
            "ssegate_tls_handshakes",
            "TLS handshakes, by version agreed and result (ok, or why they failed)",
            tls.clone(),
        );
        let tls_ok = ["TLSv1.2", "TLSv1.3"].map(|version| {
            tls.get_or_create_owned(&TlsLabels {
                version,
                result: "ok",
            })
        });
        let tls_failed = TlsFailure::ALL.map(|failure| {
            tls.get_or_create_owned(&TlsLabels {
                version: TLS_VERSION_UNKNOWN,
                result: failure.as_str(),
            })
        });
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "ssegate_requests",
            "Responses to clients, by route and status class",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(Histogram::for_requests);
        registry.register(
            "ssegate_request_duration_seconds",
            "Time from the request to its response head, by route",
            request_duration.clone(),
        );
        let streams_open = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "ssegate_sse_streams_open",
            "Event streams open (shared-stream subscriptions included), by route",
            streams_open.clone(),
        );
        let events = Family::<RouteLabel, Counter>::default();
        registry.register(
            "ssegate_sse_events",
            "Events relayed to clients, by route",
            events.clone(),
        );
        let stream_duration: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(Histogram::for_streams);
        registry.register(
            "ssegate_sse_stream_duration_seconds",
            "How long event streams were open, by route",
            stream_duration.clone(),
        );
        let stream_ends = Family::<RouteReason, Counter>::default();
        registry.register(
            "ssegate_sse_stream_ends",
            "Event streams ended, by route and reason (client, upstream, idle, drain, slow)",
            stream_ends.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "ssegate_sse_heartbeats",
            "Heartbeat comments written to idle event streams",
            heartbeats.clone(),
        );
        let shared_streams = Gauge::default();
        registry.register(
            "ssegate_shared_streams_open",
            "Shared streams open (one upstream request each)",
            shared_streams.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "ssegate_shared_subscribers",
            "Clients subscribed to shared streams",
            subscribers.clone(),
        );
        let replay = Family::<ResultLabel, Counter>::default();
        registry.register(
            "ssegate_replay",
            "Subscriptions with Last-Event-ID: the id was in the replay buffer (hit) or not (miss)",
            replay.clone(),
        );
        let hub = Arc::new(HubCounters {
            streams: shared_streams,
            subscribers,
            replay_hit: replay.get_or_create_owned(&ResultLabel { result: "hit" }),
            replay_miss: replay.get_or_create_owned(&ResultLabel { result: "miss" }),
        });
        let redis_up = Gauge::default();
        let leases_held = Gauge::default();
        let appends_refused = Counter::default();
        if cluster {
            registry.register(
                "ssegate_cluster_redis_up",
                "Whether Redis answered the last ping (--cluster): 1 up, 0 down (streams are read per instance)",
                redis_up.clone(),
            );
            registry.register(
                "ssegate_cluster_leases_held",
                "Shared streams whose upstream this instance reads for the cluster",
                leases_held.clone(),
            );
            registry.register(
                "ssegate_cluster_appends_refused",
                "Events a reader could not append to a shared log because its lease had passed to another instance",
                appends_refused.clone(),
            );
        }
        let cluster = Arc::new(ClusterCounters {
            redis_up,
            leases_held,
            appends_refused,
        });
        let websockets = Family::<RouteLabel, Gauge>::default();
        registry.register(
            "ssegate_websockets_open",
            "WebSockets open, by route",
            websockets.clone(),
        );
        let upstream_requests = Family::<TargetResult, Counter>::default();
        registry.register(
            "ssegate_upstream_requests",
            "Requests sent to upstream targets, by group, target and result",
            upstream_requests.clone(),
        );
        let upstream_healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "ssegate_upstream_healthy",
            "Whether a target takes requests (1) or is left out by health checks or a failure (0)",
            upstream_healthy.clone(),
        );
        let reload_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "ssegate_config_reloads",
            "Configuration and certificate reloads, by result",
            reload_family.clone(),
        );
        let reloads = ["ok", "failed"]
            .map(|result| reload_family.get_or_create_owned(&ResultLabel { result }));
        let certificate_expiry = Family::<NameLabel, Gauge>::default();
        registry.register(
            "ssegate_certificate_expiry_timestamp_seconds",
            "End of validity (notAfter) of each certificate served, by name",
            certificate_expiry.clone(),
        );
        registry.register(
            "ssegate_build",
            "The running version of ssegate",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let unrouted = Arc::new(RequestCounters::resolve(
            &requests,
            &request_duration,
            UNROUTED,
        ));
        Metrics(Some(Arc::new(Registered {
            registry,
            connections,
            tls_ok,
            tls_failed,
            requests,
            request_duration,
            streams_open,
            events,
            stream_duration,
            stream_ends,
            heartbeats,
            hub,
            cluster,
            websockets,
            upstream_requests,
            upstream_healthy,
            reloads,
            certificate_expiry,
            unrouted,
            routes: Mutex::new(BTreeMap::new()),
            last_reload: Mutex::new(None),
            scrape: Mutex::new(()),
        })))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The handles of the route labelled `label` (see [`route_label`]).
    pub fn route(&self, label: &str) -> RouteMetrics {
        let Some(registered) = &self.0 else {
            return RouteMetrics(None);
        };
        let mut routes = lock(&registered.routes);
        if let Some(counters) = routes.get(label) {
            return RouteMetrics(Some(counters.clone()));
        }
        let counters = Arc::new(RouteCounters::resolve(registered, label));
        routes.insert(label.to_owned(), counters.clone());
        RouteMetrics(Some(counters))
    }

    /// The handle of requests no route took.
    pub fn unrouted(&self) -> RequestMetrics {
        RequestMetrics(self.0.as_ref().map(|r| r.unrouted.clone()))
    }

    /// The handles of target `target` of group `upstream`.
    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let Some(registered) = &self.0 else {
            return TargetMetrics(None);
        };
        let counters = UpstreamResult::ALL.map(|result| {
            registered
                .upstream_requests
                .get_or_create_owned(&TargetResult {
                    upstream: upstream.to_owned(),
                    target: target.to_owned(),
                    result: result.as_str(),
                })
        });
        TargetMetrics(Some(Arc::new(counters)))
    }

    /// The handles of the shared-stream hubs.
    pub fn hub(&self) -> HubMetrics {
        HubMetrics(self.0.as_ref().map(|r| r.hub.clone()))
    }

    pub fn cluster(&self) -> ClusterMetrics {
        ClusterMetrics(self.0.as_ref().map(|r| r.cluster.clone()))
    }

    /// Counts a connection of `protocol` as open until the guard is dropped.
    pub fn connection(&self, protocol: Protocol) -> Option<GaugeGuard<'_>> {
        let gauge = &self.0.as_ref()?.connections[protocol as usize];
        gauge.inc();
        Some(GaugeGuard(gauge))
    }

    pub fn tls_handshake(&self, handshake: TlsHandshake) {
        let Some(registered) = &self.0 else { return };
        let counter = match handshake {
            TlsHandshake::Tls12 => &registered.tls_ok[0],
            TlsHandshake::Tls13 => &registered.tls_ok[1],
            TlsHandshake::Failed(failure) => &registered.tls_failed[failure as usize],
        };
        counter.inc();
    }

    /// Counts a reload and keeps its result for the admin page.
    pub fn config_reload(&self, ok: bool, message: impl Into<String>) {
        let Some(registered) = &self.0 else { return };
        registered.reloads[usize::from(!ok)].inc();
        *lock(&registered.last_reload) = Some(ReloadRecord {
            at: SystemTime::now(),
            ok,
            message: message.into(),
        });
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        lock(&self.0.as_ref()?.last_reload).clone()
    }

    /// The text exposition, with target health and certificate expiry as
    /// they are now. Empty when disabled.
    pub fn encode(&self, health: &[TargetHealth], certificates: &[CertificateExpiry]) -> String {
        let Some(registered) = &self.0 else {
            return String::new();
        };
        let _one_at_a_time = lock(&registered.scrape);
        registered.upstream_healthy.clear();
        for target in health {
            registered
                .upstream_healthy
                .get_or_create(&TargetLabels {
                    upstream: target.upstream.clone(),
                    target: target.target.clone(),
                })
                .set(i64::from(target.healthy));
        }
        registered.certificate_expiry.clear();
        for certificate in certificates {
            registered
                .certificate_expiry
                .get_or_create(&NameLabel {
                    name: certificate.name.clone(),
                })
                .set(certificate.not_after);
        }
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registered.registry);
        text
    }

    /// What the admin page shows of the counters.
    pub fn summary(&self) -> Summary {
        let Some(registered) = &self.0 else {
            return Summary::default();
        };
        let routes = lock(&registered.routes);
        let requests =
            registered.unrouted.total() + routes.values().map(|r| r.requests.total()).sum::<u64>();
        let events = routes.values().map(|r| r.stream.events.get()).sum();
        drop(routes);
        let tls = TlsHandshakeCounts {
            ok: [
                ("TLSv1.2", registered.tls_ok[0].get()),
                ("TLSv1.3", registered.tls_ok[1].get()),
            ],
            failed: TlsFailure::ALL.map(|f| (f.as_str(), registered.tls_failed[f as usize].get())),
        };
        Summary {
            connections: Protocol::ALL
                .map(|p| (p.as_str(), registered.connections[p as usize].get())),
            tls: Some(tls),
            requests,
            events,
            heartbeats: registered.heartbeats.get(),
            shared_streams: registered.hub.streams.get(),
            shared_subscribers: registered.hub.subscribers.get(),
            replay: [
                ("hit", registered.hub.replay_hit.get()),
                ("miss", registered.hub.replay_miss.get()),
            ],
        }
    }
}

/// Totals for the admin page.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub connections: [(&'static str, i64); 2],
    pub tls: Option<TlsHandshakeCounts>,
    /// Responses so far, every route and unrouted.
    pub requests: u64,
    /// Events relayed so far, every route.
    pub events: u64,
    pub heartbeats: u64,
    pub shared_streams: i64,
    pub shared_subscribers: i64,
    pub replay: [(&'static str, u64); 2],
}

#[derive(Debug, Clone)]
pub struct TlsHandshakeCounts {
    pub ok: [(&'static str, u64); 2],
    pub failed: [(&'static str, u64); TlsFailure::ALL.len()],
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Decrements its gauge when dropped; owns a handle to it, for things
/// that outlive whatever made them (a WebSocket's tunnel).
#[derive(Debug, Default)]
pub struct OpenGuard(Option<Gauge>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0 {
            gauge.dec();
        }
    }
}

// ---------------------------------------------------------------- requests

/// Responses of one route (or of no route) by status class, and the time
/// to their heads.
#[derive(Debug)]
struct RequestCounters {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RequestCounters {
    fn resolve(
        requests: &Family<RouteStatus, Counter>,
        durations: &HistogramFamily<RouteLabel>,
        label: &str,
    ) -> Self {
        RequestCounters {
            by_class: STATUS_CLASSES.map(|status| {
                requests.get_or_create_owned(&RouteStatus {
                    route: label.to_owned(),
                    status,
                })
            }),
            duration: durations.get_or_create_owned(&RouteLabel {
                route: label.to_owned(),
            }),
        }
    }

    fn record(&self, status: StatusCode, started: Instant) {
        self.by_class[status_class_index(status)].inc();
        self.duration.observe(started.elapsed());
    }

    fn total(&self) -> u64 {
        self.by_class.iter().map(Counter::get).sum()
    }
}

/// Counts responses to requests no route took.
#[derive(Debug, Clone, Default)]
pub struct RequestMetrics(Option<Arc<RequestCounters>>);

impl RequestMetrics {
    /// A response with `status`, its head ready now, to a request that
    /// arrived at `started`.
    pub fn response(&self, status: StatusCode, started: Instant) {
        if let Some(counters) = &self.0 {
            counters.record(status, started);
        }
    }
}

// ---------------------------------------------------------------- routes

#[derive(Debug)]
struct RouteCounters {
    requests: RequestCounters,
    stream: Arc<StreamMetrics>,
    websockets: Gauge,
}

impl RouteCounters {
    fn resolve(registered: &Registered, label: &str) -> Self {
        let route = RouteLabel {
            route: label.to_owned(),
        };
        RouteCounters {
            requests: RequestCounters::resolve(
                &registered.requests,
                &registered.request_duration,
                label,
            ),
            stream: Arc::new(StreamMetrics {
                open: registered.streams_open.get_or_create_owned(&route),
                events: registered.events.get_or_create_owned(&route),
                duration: registered.stream_duration.get_or_create_owned(&route),
                ends: StreamEnd::ALL.map(|end| {
                    registered.stream_ends.get_or_create_owned(&RouteReason {
                        route: label.to_owned(),
                        reason: end.as_str(),
                    })
                }),
                heartbeats: registered.heartbeats.clone(),
            }),
            websockets: registered.websockets.get_or_create_owned(&route),
        }
    }
}

/// The handles of one route.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics(Option<Arc<RouteCounters>>);

impl RouteMetrics {
    /// A response with `status`, its head ready now, to a request that
    /// arrived at `started`.
    pub fn response(&self, status: StatusCode, started: Instant) {
        if let Some(counters) = &self.0 {
            counters.requests.record(status, started);
        }
    }

    /// The route's event-stream counters, for a stream's body to hold
    /// (see [`StreamMetrics::opened`]).
    pub fn streams(&self) -> Option<Arc<StreamMetrics>> {
        self.0.as_ref().map(|c| c.stream.clone())
    }

    /// Counts a WebSocket as open until the guard is dropped.
    pub fn websocket_opened(&self) -> OpenGuard {
        OpenGuard(self.0.as_ref().map(|c| {
            c.websockets.inc();
            c.websockets.clone()
        }))
    }

    pub fn requests_total(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.requests.total())
    }

    pub fn streams_open(&self) -> i64 {
        self.0.as_ref().map_or(0, |c| c.stream.open.get())
    }

    pub fn events_total(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.stream.events.get())
    }

    pub fn websockets_open(&self) -> i64 {
        self.0.as_ref().map_or(0, |c| c.websockets.get())
    }
}

/// One route's event-stream counters, shared by its streams: a stream's
/// body holds one `Arc` of it, and nothing else of the metrics.
#[derive(Debug)]
pub struct StreamMetrics {
    open: Gauge,
    events: Counter,
    duration: Histogram,
    ends: [Counter; StreamEnd::ALL.len()],
    heartbeats: Counter,
}

impl StreamMetrics {
    /// A stream opened; pair with exactly one [`StreamMetrics::ended`].
    pub fn opened(&self) {
        self.open.inc();
    }

    /// A stream that was open for `open_for` ended.
    pub fn ended(&self, end: StreamEnd, open_for: Duration) {
        self.open.dec();
        self.ends[end as usize].inc();
        self.duration.observe(open_for);
    }

    pub fn events(&self, count: u64) {
        self.events.inc_by(count);
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }
}

// ---------------------------------------------------------------- upstreams

/// The request counters of one target, by result.
#[derive(Debug, Clone, Default)]
pub struct TargetMetrics(Option<Arc<[Counter; UpstreamResult::ALL.len()]>>);

impl TargetMetrics {
    pub fn record(&self, result: UpstreamResult) {
        if let Some(counters) = &self.0 {
            counters[result as usize].inc();
        }
    }

    pub fn requests_total(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |counters| counters.iter().map(Counter::get).sum())
    }
}

// ---------------------------------------------------------------- shared streams

#[derive(Debug)]
struct ClusterCounters {
    redis_up: Gauge,
    leases_held: Gauge,
    appends_refused: Counter,
}

/// Cluster mode's gauges and counter (`--cluster`).
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics(Option<Arc<ClusterCounters>>);

impl ClusterMetrics {
    pub fn set_redis_up(&self, up: bool) {
        if let Some(c) = &self.0 {
            c.redis_up.set(i64::from(up));
        }
    }

    /// This instance took a stream's lease; pair with one [`ClusterMetrics::lease_lost`].
    pub fn lease_taken(&self) {
        if let Some(c) = &self.0 {
            c.leases_held.inc();
        }
    }

    pub fn lease_lost(&self) {
        if let Some(c) = &self.0 {
            c.leases_held.dec();
        }
    }

    pub fn append_refused(&self) {
        if let Some(c) = &self.0 {
            c.appends_refused.inc();
        }
    }
}

#[derive(Debug)]
struct HubCounters {
    streams: Gauge,
    subscribers: Gauge,
    replay_hit: Counter,
    replay_miss: Counter,
}

/// The shared-stream counters (every hub shares them).
#[derive(Debug, Clone, Default)]
pub struct HubMetrics(Option<Arc<HubCounters>>);

impl HubMetrics {
    /// A shared stream opened; pair with one [`HubMetrics::stream_closed`].
    pub fn stream_opened(&self) {
        if let Some(c) = &self.0 {
            c.streams.inc();
        }
    }

    pub fn stream_closed(&self) {
        if let Some(c) = &self.0 {
            c.streams.dec();
        }
    }

    /// A subscriber joined; pair with one [`HubMetrics::subscriber_left`].
    pub fn subscriber_joined(&self) {
        if let Some(c) = &self.0 {
            c.subscribers.inc();
        }
    }

    pub fn subscriber_left(&self) {
        if let Some(c) = &self.0 {
            c.subscribers.dec();
        }
    }

    /// A subscriber came with a `Last-Event-ID` the replay buffer held
    /// (`hit`) or did not.
    pub fn replay(&self, hit: bool) {
        if let Some(c) = &self.0 {
            if hit {
                c.replay_hit.inc();
            } else {
                c.replay_miss.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` in `text`, e.g.
    /// `sample(text, "ssegate_requests_total", "route=\"/\",status=\"2xx\"")`.
    fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
        let prefix = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
    }

    #[test]
    fn status_classes_cover_every_status() {
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::PERMANENT_REDIRECT), "3xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
        assert_eq!(status_class(StatusCode::from_u16(999).unwrap()), "5xx");
    }

    #[test]
    fn the_cluster_families_are_there_only_with_a_cluster() {
        assert!(!Metrics::new().encode(&[], &[]).contains("ssegate_cluster_"));
        let metrics = Metrics::with_cluster();
        metrics.cluster().set_redis_up(true);
        metrics.cluster().lease_taken();
        let text = metrics.encode(&[], &[]);
        assert_eq!(sample(&text, "ssegate_cluster_redis_up", ""), Some(1.0));
        assert_eq!(sample(&text, "ssegate_cluster_leases_held", ""), Some(1.0));
        assert_eq!(
            sample(&text, "ssegate_cluster_appends_refused_total", ""),
            Some(0.0)
        );
    }

    #[test]
    fn a_route_resolves_its_label_sets_once_and_again_to_the_same_counters() {
        let metrics = Metrics::new();
        let first = metrics.route("api.example.com/");
        first.response(StatusCode::OK, Instant::now());
        first.response(StatusCode::BAD_GATEWAY, Instant::now());
        // A reload builds the route again: same series, same counts.
        let again = metrics.route("api.example.com/");
        again.response(StatusCode::OK, Instant::now());
        assert_eq!(first.requests_total(), 3);
        let text = metrics.encode(&[], &[]);
        let ok = r#"route="api.example.com/",status="2xx""#;
        assert_eq!(
            sample(&text, "ssegate_requests_total", ok),
            Some(2.0),
            "{text}"
        );
        let bad = r#"route="api.example.com/",status="5xx""#;
        assert_eq!(sample(&text, "ssegate_requests_total", bad), Some(1.0));
        let route = r#"route="api.example.com/""#;
        assert_eq!(
            sample(&text, "ssegate_request_duration_seconds_count", route),
            Some(3.0)
        );
        // Every series of the route exists from the start, at zero.
        assert_eq!(sample(&text, "ssegate_sse_streams_open", route), Some(0.0));
        let idle = r#"route="api.example.com/",reason="idle""#;
        assert_eq!(
            sample(&text, "ssegate_sse_stream_ends_total", idle),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "ssegate_build_info",
                &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
            ),
            Some(1.0)
        );
    }

    #[test]
    fn gauges_of_open_things_return_to_zero() {
        let metrics = Metrics::new();
        let route = metrics.route("/");
        let streams = route.streams().expect("enabled");
        streams.opened();
        streams.opened();
        assert_eq!(route.streams_open(), 2);
        streams.ended(StreamEnd::Client, Duration::from_secs(2));
        streams.ended(StreamEnd::Drain, Duration::from_secs(3));
        assert_eq!(route.streams_open(), 0);

        let websocket = route.websocket_opened();
        assert_eq!(route.websockets_open(), 1);
        drop(websocket);
        assert_eq!(route.websockets_open(), 0);

        let connection = metrics.connection(Protocol::Http2);
        assert_eq!(metrics.summary().connections[1], ("h2", 1));
        drop(connection);
        assert_eq!(metrics.summary().connections[1], ("h2", 0));

        let text = metrics.encode(&[], &[]);
        assert_eq!(
            sample(&text, "ssegate_sse_streams_open", r#"route="/""#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "ssegate_sse_stream_ends_total",
                r#"route="/",reason="drain""#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "ssegate_sse_stream_duration_seconds_sum",
                r#"route="/""#
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "ssegate_connections_open", r#"protocol="h2""#),
            Some(0.0)
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_le_bounds() {
        let metrics = Metrics::new();
        let route = metrics.route("/");
        let streams = route.streams().expect("enabled");
        for seconds in [1, 3, 3, 100_000] {
            streams.opened();
            streams.ended(StreamEnd::Upstream, Duration::from_secs(seconds));
        }
        let text = metrics.encode(&[], &[]);
        let bucket = |le: &str| {
            sample(
                &text,
                "ssegate_sse_stream_duration_seconds_bucket",
                &format!(r#"route="/",le="{le}""#),
            )
        };
        assert_eq!(bucket("1"), Some(1.0), "{text}");
        assert_eq!(bucket("5"), Some(3.0));
        assert_eq!(bucket("86400"), Some(3.0));
        assert_eq!(bucket("+Inf"), Some(4.0));
    }

    #[test]
    fn scrape_time_families_hold_only_what_is_there_now() {
        let metrics = Metrics::new();
        let a = TargetHealth {
            upstream: "app".into(),
            target: "http://127.0.0.1:3000".into(),
            healthy: true,
        };
        let text = metrics.encode(std::slice::from_ref(&a), &[]);
        let labels = r#"upstream="app",target="http://127.0.0.1:3000""#;
        assert_eq!(sample(&text, "ssegate_upstream_healthy", labels), Some(1.0));
        let text = metrics.encode(
            &[TargetHealth {
                healthy: false,
                ..a
            }],
            &[],
        );
        assert_eq!(sample(&text, "ssegate_upstream_healthy", labels), Some(0.0));
        // The target left the configuration: its series goes.
        let text = metrics.encode(&[], &[]);
        assert_eq!(sample(&text, "ssegate_upstream_healthy", labels), None);
    }

    #[test]
    fn disabled_metrics_count_nothing_and_export_nothing() {
        let metrics = Metrics::disabled();
        let route = metrics.route("/");
        route.response(StatusCode::OK, Instant::now());
        assert!(route.streams().is_none());
        assert!(metrics.connection(Protocol::Http1).is_none());
        assert_eq!(route.requests_total(), 0);
        assert_eq!(metrics.encode(&[], &[]), "");
    }
}
