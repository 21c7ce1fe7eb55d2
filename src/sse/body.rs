//! `RelayBody`: the upstream response body on its way to the client.
//!
//! Every frame is passed on the moment it arrives; hyper flushes when the body
//! next returns `Pending`, so an event written upstream is written downstream
//! at once. The body also enforces the idle timeout that fits its kind, writes
//! heartbeats and ends event streams at event boundaries on shutdown, and logs
//! one access line when it is done.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::framing::EventBoundary;
use super::hub::SlowSubscriber;
use crate::error::BoxError;
use crate::limits::PerIpGuard;
use crate::metrics::{StreamEnd, StreamMetrics};

/// The comment written as a heartbeat: ignored by EventSource, but traffic for
/// every idle timer between the proxy and the browser.
const HEARTBEAT: &[u8] = b":\n\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Ordinary response: cut when the upstream is silent for the request timeout.
    Ordinary,
    /// Event stream: relayed event by event, long idle timeout, ended cleanly.
    EventStream,
}

/// How one body is relayed.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub kind: BodyKind,
    /// Longest silence from the upstream before the body is ended. None for
    /// shared-stream subscribers: the hub watches the one upstream for them.
    pub idle_timeout: Option<Duration>,
    /// Event streams only: write a comment after this much silence, at a boundary.
    pub heartbeat: Option<Duration>,
    /// Event streams only: on shutdown, tell the browser to reconnect after this.
    pub drain_retry: Option<Duration>,
}

/// One access-log line per request, written when the response is finished
/// or abandoned, whichever comes first. An idle event stream holds one:
/// what it says of the route and the target are pointers to strings built
/// with the routing table.
#[derive(Debug)]
pub struct AccessLog {
    pub peer: SocketAddr,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub status: StatusCode,
    pub started: std::time::Instant,
    pub bytes: u64,
    pub sse: bool,
    pub outcome: Outcome,
    /// The route the request took; None if it was refused before routing.
    pub route: Option<Arc<RouteLabel>>,
    /// The URL of the upstream target that answered, as configured; None
    /// if none did.
    pub target: Option<Arc<str>>,
}

/// What the access log says of a route, built once per route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel {
    /// The route's `host` and `path` as configured: `/live/`,
    /// `api.example.com/`, `*.example.com/app`; `/` for the one route of a
    /// configuration without `[[route]]`s.
    pub route: Box<str>,
    /// The name of its upstream group.
    pub upstream: Box<str>,
}

impl RouteLabel {
    pub fn new(host: Option<&impl std::fmt::Display>, path: &str, upstream: &str) -> Self {
        let route = match host {
            Some(host) => format!("{host}{path}"),
            None => path.to_owned(),
        };
        RouteLabel {
            route: route.into(),
            upstream: upstream.into(),
        }
    }
}

/// The protocol's name for the access log: `HTTP/1.1`, `HTTP/2`.
fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// How a response ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ClientClosed,
    Complete,
    ProxyError,
    UpstreamError,
    IdleTimeout,
    Shutdown,
}

impl Outcome {
    /// Why an event stream that ended this way ended, for its metrics.
    fn stream_end(self, slow: bool) -> StreamEnd {
        match self {
            _ if slow => StreamEnd::Slow,
            Outcome::ClientClosed => StreamEnd::Client,
            Outcome::Complete | Outcome::UpstreamError | Outcome::ProxyError => StreamEnd::Upstream,
            Outcome::IdleTimeout => StreamEnd::Idle,
            Outcome::Shutdown => StreamEnd::Drain,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::ClientClosed => "client closed",
            Outcome::Complete => "complete",
            Outcome::ProxyError => "proxy error",
            Outcome::UpstreamError => "upstream error",
            Outcome::IdleTimeout => "idle timeout",
            Outcome::Shutdown => "shutdown",
        }
    }
}

impl AccessLog {
    pub fn new(peer: SocketAddr, method: Method, path: String, version: Version) -> Self {
        AccessLog {
            peer,
            method,
            path,
            version,
            status: StatusCode::OK,
            started: std::time::Instant::now(),
            bytes: 0,
            sse: false,
            // Replaced when the body completes; still set if the client left first.
            outcome: Outcome::ClientClosed,
            route: None,
            target: None,
        }
    }
}

impl Drop for AccessLog {
    /// The one access line, in either log format (`logging`): fields that
    /// are None are left out.
    fn drop(&mut self) {
        let route = self.route.as_deref();
        tracing::info!(
            target: "ssegate::access",
            peer = %self.peer,
            method = %self.method,
            path = %self.path,
            protocol = %protocol_name(self.version),
            status = self.status.as_u16(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes = self.bytes,
            sse = self.sse,
            outcome = self.outcome.as_str(),
            route = route.map(|r| tracing::field::display(&*r.route)),
            upstream = route.map(|r| tracing::field::display(&*r.upstream)),
            target_url = self.target.as_deref().map(tracing::field::display),
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    #[project = RelayBodyProj]
    pub struct RelayBody<B = Incoming> {
        // Counts an event stream against --max-streams-per-ip; released
        // when the stream ends. First, so that a client that leaves frees
        // it before the upstream sees its connection close.
        stream_slot: Option<PerIpGuard>,
        #[pin]
        inner: B,
        // Armed the first time the upstream is quiet (a response that arrives
        // whole never needs one), boxed, and never for shared-stream
        // subscribers (`idle_timeout` is None for them).
        idle: Option<Pin<Box<Sleep>>>,
        // Shared: there are only three per proxy, and an idle stream is small.
        settings: Arc<RelaySettings>,
        heartbeat: Option<Pin<Box<Sleep>>>,
        boundary: EventBoundary,
        // Fires when the proxy shuts down; `None` once it has fired.
        shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        // The same token, for a lock-free check on the fast path.
        shutdown_token: CancellationToken,
        // When the upstream last sent a frame, and when data was last written.
        last_frame: Instant,
        last_write: Instant,
        draining: bool,
        done: bool,
        // A shared-stream subscriber dropped for falling behind.
        slow: bool,
        // The route's event-stream counters (`--admin`), while the stream
        // counts as open; taken when its end is counted.
        metrics: Option<Arc<StreamMetrics>>,
        access: AccessLog,
    }

    impl<B> PinnedDrop for RelayBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // The client left before the stream ended.
            this.project().count_end();
        }
    }
}

impl<B> RelayBody<B> {
    pub fn new(
        inner: B,
        settings: Arc<RelaySettings>,
        shutdown_token: &CancellationToken,
        mut access: AccessLog,
    ) -> Self {
        access.sse = settings.kind == BodyKind::EventStream;
        let now = Instant::now();
        let heartbeat = match (settings.kind, settings.heartbeat) {
            (BodyKind::EventStream, Some(every)) => {
                Some(Box::pin(tokio::time::sleep_until(now + every)))
            }
            _ => None,
        };
        let shutdown = match settings.kind {
            BodyKind::EventStream => Some(Box::pin(shutdown_token.clone().cancelled_owned())),
            BodyKind::Ordinary => None,
        };
        RelayBody {
            stream_slot: None,
            inner,
            idle: None,
            settings,
            heartbeat,
            boundary: EventBoundary::new(),
            shutdown,
            shutdown_token: shutdown_token.clone(),
            last_frame: now,
            last_write: now,
            draining: false,
            done: false,
            slow: false,
            metrics: None,
            access,
        }
    }
}

impl<B> RelayBody<B> {
    /// Holds `slot` (see `Proxy::stream_slot`) for as long as the body is
    /// relayed: until it ends, or is dropped when the client leaves.
    pub fn holding(mut self, slot: Option<PerIpGuard>) -> Self {
        self.stream_slot = slot;
        self
    }

    /// Counts the body as an event stream of the route `metrics` belongs
    /// to, from now until it ends or is dropped (ordinary bodies are not
    /// counted).
    pub fn counted(mut self, metrics: Option<Arc<StreamMetrics>>) -> Self {
        if self.settings.kind == BodyKind::EventStream {
            if let Some(metrics) = &metrics {
                metrics.opened();
            }
            self.metrics = metrics;
        }
        self
    }
}

impl<B> RelayBodyProj<'_, B> {
    /// Counts the stream's end, once: when it ends, or when it is dropped
    /// unended (the client left).
    fn count_end(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            let end = self.access.outcome.stream_end(*self.slow);
            metrics.ended(end, self.access.started.elapsed());
        }
    }
}

/// Whether a lazily re-armed timer has really reached `deadline`. A timer
/// that fires early (its deadline moved on since it was armed) is re-armed
/// and registered again.
pub(crate) fn fired(mut timer: Pin<&mut Sleep>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if timer.as_mut().poll(cx).is_pending() {
        return false;
    }
    if Instant::now() >= deadline {
        return true;
    }
    timer.as_mut().reset(deadline);
    timer.as_mut().poll(cx).is_ready()
}

impl<B> Body for RelayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.as_mut().relay(cx);
        // Released before the client sees the end, so that a stream it
        // opens next is not refused for this one.
        if self.done && (self.stream_slot.is_some() || self.metrics.is_some()) {
            let mut this = self.as_mut().project();
            *this.stream_slot = None;
            this.count_end();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.settings.kind {
            BodyKind::Ordinary => self.inner.size_hint(),
            // Never a Content-Length on an event stream: it is open-ended.
            BodyKind::EventStream => SizeHint::default(),
        }
    }
}

impl<B> RelayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    /// The next frame for the client (see the module's description).
    fn relay(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        // Only event streams are drained; ordinary bodies run to their end.
        if this.shutdown.is_some() && this.shutdown_token.is_cancelled() {
            *this.draining = true;
        }

        // Fast path: relay what the upstream has. Timers are only re-armed
        // when they fire (from `last_frame`), so a busy stream pays one clock
        // read per frame, not a timer-wheel update.
        if !(*this.draining && this.boundary.at_boundary()) {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.last_frame = Instant::now();
                    if let Some(data) = frame.data_ref() {
                        *this.last_write = *this.last_frame;
                        this.access.bytes += data.len() as u64;
                        if this.settings.kind == BodyKind::EventStream {
                            let events = this.boundary.feed(data);
                            if let (Some(metrics), 1..) = (this.metrics.as_ref(), events) {
                                metrics.events(events);
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(err))) => {
                    *this.done = true;
                    let err: BoxError = err.into();
                    if err.is::<SlowSubscriber>() {
                        // The hub has logged it; the client just reconnects.
                        *this.slow = true;
                        this.access.outcome = Outcome::Complete;
                        return Poll::Ready(None);
                    }
                    this.access.outcome = Outcome::UpstreamError;
                    tracing::warn!(path = %this.access.path, error = %err, "upstream body failed");
                    // An event stream ends cleanly so EventSource reconnects; an
                    // ordinary body is cut so the client sees it is incomplete.
                    return match this.settings.kind {
                        BodyKind::EventStream => Poll::Ready(None),
                        BodyKind::Ordinary => Poll::Ready(Some(Err(err))),
                    };
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    this.access.outcome = Outcome::Complete;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
        }

        // The upstream is quiet. Shutdown: an event stream ends at its next
        // event boundary.
        if let Some(shutdown) = this.shutdown.as_mut() {
            if shutdown.as_mut().poll(cx).is_ready() {
                *this.shutdown = None;
                *this.draining = true;
            }
        }
        if *this.draining && this.boundary.at_boundary() {
            *this.done = true;
            this.access.outcome = Outcome::Shutdown;
            if let Some(retry) = this.settings.drain_retry {
                let line = format!("retry: {}\n\n", retry.as_millis());
                this.access.bytes += line.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))));
            }
            return Poll::Ready(None);
        }

        if let Some(idle) = this.settings.idle_timeout {
            let deadline = *this.last_frame + idle;
            let timer = this
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if fired(timer.as_mut(), deadline, cx) {
                *this.done = true;
                this.access.outcome = Outcome::IdleTimeout;
                return match this.settings.kind {
                    BodyKind::EventStream => {
                        tracing::info!(path = %this.access.path, ?idle, "event stream idle; ended");
                        Poll::Ready(None)
                    }
                    BodyKind::Ordinary => {
                        tracing::warn!(path = %this.access.path, ?idle, "upstream body idle; cut");
                        Poll::Ready(Some(Err(format!("upstream body idle for {idle:?}").into())))
                    }
                };
            }
        }

        if let (Some(heartbeat), Some(every)) = (this.heartbeat.as_mut(), this.settings.heartbeat) {
            if fired(heartbeat.as_mut(), *this.last_write + every, cx) {
                let now = Instant::now();
                if this.boundary.at_boundary() {
                    *this.last_write = now;
                    heartbeat.as_mut().reset(now + every);
                    let _ = heartbeat.as_mut().poll(cx);
                    this.access.bytes += HEARTBEAT.len() as u64;
                    if let Some(metrics) = this.metrics.as_ref() {
                        metrics.heartbeat();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
                }
                // Mid-event: no heartbeat; look again one interval later.
                heartbeat.as_mut().reset(now + every);
                let _ = heartbeat.as_mut().poll(cx);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU32, Ordering};

    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::limits::PerIpLimit;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn stream_of<B>(inner: B, limit: &Arc<PerIpLimit>) -> RelayBody<B> {
        let settings = Arc::new(RelaySettings {
            kind: BodyKind::EventStream,
            idle_timeout: None,
            heartbeat: None,
            drain_retry: None,
        });
        let access = AccessLog::new(
            SocketAddr::new(CLIENT, 40000),
            Method::GET,
            "/events".into(),
            Version::HTTP_11,
        );
        RelayBody::new(inner, settings, &CancellationToken::new(), access)
            .holding(limit.try_acquire(CLIENT))
    }

    /// The upstream body, noting how many streams its client held when it
    /// was dropped (when the proxy closes the upstream connection).
    struct Upstream {
        limit: Arc<PerIpLimit>,
        held_at_drop: Arc<AtomicU32>,
    }

    impl Body for Upstream {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            let held = self.limit.count(CLIENT);
            self.held_at_drop.store(held, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_stream_slot_is_released_when_the_stream_ends_before_the_body_is_dropped() {
        let limit = PerIpLimit::new(NonZeroU32::MIN);
        let inner = Full::new(Bytes::from_static(b"data: x\n\n"));
        let mut body = stream_of(inner, &limit);
        assert_eq!(limit.count(CLIENT), 1);
        assert!(body.frame().await.is_some());
        assert_eq!(limit.count(CLIENT), 1, "held while the stream is open");
        assert!(body.frame().await.is_none());
        assert_eq!(limit.count(CLIENT), 0, "released as the stream ends");
    }

    #[test]
    fn a_stream_slot_is_released_before_the_upstream_sees_the_client_leave() {
        let limit = PerIpLimit::new(NonZeroU32::MIN);
        let held_at_drop = Arc::new(AtomicU32::new(u32::MAX));
        let upstream = Upstream {
            limit: limit.clone(),
            held_at_drop: held_at_drop.clone(),
        };
        let body = stream_of(upstream, &limit);
        assert_eq!(limit.count(CLIENT), 1);
        drop(body);
        assert_eq!(held_at_drop.load(Ordering::SeqCst), 0);
    }

    /// An event stream counted in `metrics`' route `/`.
    fn counted_stream<B>(inner: B, metrics: &crate::metrics::Metrics) -> RelayBody<B> {
        let limit = PerIpLimit::new(NonZeroU32::MAX);
        stream_of(inner, &limit).counted(metrics.route("/").streams())
    }

    fn ends(metrics: &crate::metrics::Metrics, reason: &str) -> f64 {
        let text = metrics.encode(&[], &[]);
        let series = format!("ssegate_sse_stream_ends_total{{route=\"/\",reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    #[tokio::test]
    async fn an_event_stream_counts_as_open_until_it_ends_and_counts_its_events() {
        let metrics = crate::metrics::Metrics::new();
        let route = metrics.route("/");
        let inner = Full::new(Bytes::from_static(b"data: a\n\n: ping\n\ndata: b\n\n"));
        let mut body = counted_stream(inner, &metrics);
        assert_eq!(route.streams_open(), 1);
        assert!(body.frame().await.is_some());
        assert_eq!(route.events_total(), 2, "two events, the comment is none");
        assert!(body.frame().await.is_none());
        assert_eq!(route.streams_open(), 0, "down as the stream ends");
        drop(body);
        assert_eq!(route.streams_open(), 0, "and not again when dropped");
        assert_eq!(ends(&metrics, "upstream"), 1.0);
    }

    #[test]
    fn an_event_stream_the_client_leaves_is_counted_as_ended_by_the_client() {
        let metrics = crate::metrics::Metrics::new();
        let route = metrics.route("/");
        let limit = PerIpLimit::new(NonZeroU32::MIN);
        let upstream = Upstream {
            limit: limit.clone(),
            held_at_drop: Arc::new(AtomicU32::new(0)),
        };
        let body = counted_stream(upstream, &metrics);
        assert_eq!(route.streams_open(), 1);
        drop(body);
        assert_eq!(route.streams_open(), 0);
        assert_eq!(ends(&metrics, "client"), 1.0);
    }

    #[tokio::test]
    async fn a_drained_stream_and_a_slow_subscriber_have_their_own_reasons() {
        let metrics = crate::metrics::Metrics::new();
        let route = metrics.route("/");
        let shutdown = CancellationToken::new();
        let settings = Arc::new(RelaySettings {
            kind: BodyKind::EventStream,
            idle_timeout: None,
            heartbeat: None,
            drain_retry: None,
        });
        let access = || {
            AccessLog::new(
                SocketAddr::new(CLIENT, 40000),
                Method::GET,
                "/events".into(),
                Version::HTTP_11,
            )
        };
        let mut drained = RelayBody::new(
            Upstream {
                limit: PerIpLimit::new(NonZeroU32::MIN),
                held_at_drop: Arc::new(AtomicU32::new(0)),
            },
            settings.clone(),
            &shutdown,
            access(),
        )
        .counted(route.streams());
        shutdown.cancel();
        assert!(drained.frame().await.is_none());
        assert_eq!(ends(&metrics, "drain"), 1.0);

        struct Slow;
        impl Body for Slow {
            type Data = Bytes;
            type Error = crate::sse::hub::SlowSubscriber;
            fn poll_frame(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Ready(Some(Err(crate::sse::hub::SlowSubscriber)))
            }
        }
        let mut slow = RelayBody::new(Slow, settings, &CancellationToken::new(), access())
            .counted(route.streams());
        assert!(
            slow.frame().await.is_none(),
            "ended cleanly, no error frame"
        );
        assert_eq!(ends(&metrics, "slow"), 1.0);
        assert_eq!(route.streams_open(), 0);
    }

    /// What an idle stream holds for its metrics: one pointer (the route's
    /// counters, shared) and a flag that fits beside the others. Printed
    /// for the record (`cargo test --lib sizes -- --nocapture`).
    #[test]
    fn sizes_of_what_a_stream_holds() {
        use std::mem::size_of;
        let relay = size_of::<RelayBody<crate::upstream::ResponseBody>>();
        let subscriber = size_of::<RelayBody<crate::sse::hub::Subscription>>();
        eprintln!(
            "RelayBody<ResponseBody> {relay} B, RelayBody<Subscription> {subscriber} B, EventBoundary {} B",
            size_of::<EventBoundary>()
        );
        // Without the metrics: 376 and 304 bytes (352 and 280 measured
        // before the access log gained its route, group and target, 24
        // bytes); the metrics add one pointer.
        assert!(relay <= 376 + 8, "{relay}");
        assert!(subscriber <= 304 + 8, "{subscriber}");
    }

    /// Catches an access log that grew: every idle event stream holds one
    /// (112 bytes before the route, group and target were added; the
    /// three are 3 pointers more, and leave the boxed `RelayBody` in the
    /// same allocation size class).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_access_log_stays_small() {
        let size = std::mem::size_of::<AccessLog>();
        assert!(size <= 136, "AccessLog is {size} bytes");
    }

    #[test]
    fn a_route_label_is_its_host_and_path() {
        let host = crate::routes::HostPattern::parse("*.example.com").unwrap();
        assert_eq!(
            &*RouteLabel::new(Some(&host), "/app", "api").route,
            "*.example.com/app"
        );
        let none: Option<&crate::routes::HostPattern> = None;
        let label = RouteLabel::new(none, "/live/", "app");
        assert_eq!((&*label.route, &*label.upstream), ("/live/", "app"));
    }

    #[test]
    fn protocols_are_named_as_in_http() {
        assert_eq!(protocol_name(Version::HTTP_11), "HTTP/1.1");
        assert_eq!(protocol_name(Version::HTTP_2), "HTTP/2");
        assert_eq!(protocol_name(Version::HTTP_10), "HTTP/1.0");
    }
}
