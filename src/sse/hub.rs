//! Shared streams: one upstream request per path+query, fanned out to every
//! subscriber, with a replay buffer that serves `Last-Event-ID` reconnects.
//!
//! Locking: `Hub::streams`, then `SharedStream::state`, always in that order,
//! and never across an await. Subscribing and removing an unused stream both
//! hold the hub lock, so a stream is never removed under a new subscriber.
//!
//! A stream's events come from its own upstream request, or with
//! `--cluster` from a log in Redis that one instance of the cluster writes
//! (`cluster`), or from a Redis Stream an application writes
//! (`--sse-redis`). Subscribers see the same thing either way.

mod cluster;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::sync::ReusableBoxFuture;

use super::parser::{EventParser, ParsedEvent};
use crate::cluster::{Batch, Cluster, ClusterError, LogEvent, StreamKeys};
use crate::error::ProxyError;
use crate::http1::Framing;
use crate::message::{Fields, RequestHead};
use crate::metrics::HubMetrics;
use crate::rules::{self, Forwarding};
use crate::upstream::{Group, NoBody, ResponseBody, UpstreamRequest};

/// Reconnect delay when the upstream has not sent `retry:` (EventSource's usual default).
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Longest wait between reconnect attempts after repeated failures.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct HubSettings {
    /// Path prefixes whose GET requests are shared streams.
    pub prefixes: Vec<String>,
    /// Events kept per stream for `Last-Event-ID` replay.
    pub replay: usize,
    /// Events a subscriber may fall behind before it counts as too slow and is dropped.
    pub queue: usize,
    /// How long an upstream stays open after its last subscriber left.
    pub linger: Duration,
    /// How long the first subscriber waits for the upstream's response headers.
    pub response_timeout: Duration,
    /// Longest upstream silence before the hub reconnects.
    pub idle_timeout: Duration,
    /// The `--upstream` URL's path, prefixed to every request path.
    pub base_path: String,
    /// Path prefixes whose GET requests are served from Redis Streams
    /// (`--sse-redis`; needs `--cluster`).
    pub redis_prefixes: Vec<String>,
    /// The route's name (host and path), which cluster keys include.
    pub route: String,
}

/// Counters per shared stream, for tests now and metrics later.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub subscribers: AtomicUsize,
    pub events_in: AtomicU64,
    pub events_out: AtomicU64,
    pub subscribers_dropped: AtomicU64,
    pub upstream_requests: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub subscribers: usize,
    pub events_in: u64,
    pub events_out: u64,
    pub subscribers_dropped: u64,
    pub upstream_requests: u64,
}

impl StreamStats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            subscribers: self.subscribers.load(Ordering::Relaxed),
            events_in: self.events_in.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            subscribers_dropped: self.subscribers_dropped.load(Ordering::Relaxed),
            upstream_requests: self.upstream_requests.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Connecting,
    /// Relaying the response of the target at this URL.
    Live(Arc<str>),
    Failed(String),
}

/// An event kept for replay, tagged with the stream's last event ID after it.
#[derive(Debug)]
struct ReplayEntry {
    last_id: Option<String>,
    raw: Bytes,
}

#[derive(Debug)]
struct StreamState {
    replay: VecDeque<ReplayEntry>,
    /// Live events, one ring shared by every subscriber: a subscriber costs a
    /// read position, not a queue of its own.
    live: broadcast::Sender<Bytes>,
    lag_limit: usize,
    retry: Option<u64>,
    last_id: Option<String>,
    /// The upstream's last event ID: what a new upstream request resumes
    /// from. The same as `last_id`, except for events whose ID the
    /// cluster's log gave them.
    resume_id: Option<String>,
    /// The Redis entry ID of the newest logged event, for a stream fed
    /// from Redis.
    newest_entry: Option<String>,
    /// Back on a cluster's log after reading the upstream on its own: the
    /// log's events this instance sent already are skipped (by ID) until
    /// the first one it has not.
    catching_up: bool,
}

impl StreamState {
    fn new(lag_limit: usize) -> Self {
        let lag_limit = lag_limit.max(1);
        StreamState {
            replay: VecDeque::new(),
            live: broadcast::Sender::new(lag_limit),
            lag_limit,
            retry: None,
            last_id: None,
            resume_id: None,
            newest_entry: None,
            catching_up: false,
        }
    }

    /// Keeps `event` for replay and as the stream's state (retry, last ID).
    fn record(&mut self, event: &ParsedEvent, replay_capacity: usize) {
        if let Some(retry) = event.retry {
            self.retry = Some(retry);
        }
        if let Some(id) = &event.id {
            self.last_id = (!id.is_empty()).then(|| id.clone());
        }
        if (event.has_data || event.id.is_some()) && replay_capacity > 0 {
            if self.replay.len() == replay_capacity {
                self.replay.pop_front();
            }
            let last_id = self.last_id.clone();
            self.replay.push_back(ReplayEntry {
                last_id,
                raw: event.raw.clone(),
            });
        }
    }

    /// Whether an event with this ID is in the replay buffer.
    fn holds(&self, id: &str) -> bool {
        self.replay
            .iter()
            .rev()
            .any(|e| e.last_id.as_deref() == Some(id))
    }
}

/// One upstream event stream and its subscribers.
#[derive(Debug)]
pub struct SharedStream {
    key: String,
    state: Mutex<StreamState>,
    status: watch::Sender<Status>,
    subscriber_left: Notify,
    /// Subscribers waiting to join until the stream is live (see
    /// `Hub::subscribe`); they keep it from being removed as unused.
    waiting: AtomicUsize,
    stats: StreamStats,
    /// Counts the stream as open while it exists, and its subscribers.
    metrics: HubMetrics,
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        self.metrics.stream_closed();
    }
}

/// A shared stream as the admin page shows it.
#[derive(Debug, Clone)]
pub struct SharedStreamInfo {
    /// The path and query it serves.
    pub key: String,
    pub subscribers: usize,
    /// Events in its replay buffer.
    pub replay: usize,
    /// `connecting`, `live` or `failed`.
    pub upstream: &'static str,
}

impl SharedStream {
    fn new(key: String, lag_limit: usize, metrics: HubMetrics) -> Self {
        metrics.stream_opened();
        SharedStream {
            key,
            state: Mutex::new(StreamState::new(lag_limit)),
            status: watch::Sender::new(Status::Connecting),
            subscriber_left: Notify::new(),
            waiting: AtomicUsize::new(0),
            stats: StreamStats::default(),
            metrics,
        }
    }

    fn info(&self) -> SharedStreamInfo {
        let replay = self.state().replay.len();
        let upstream = match &*self.status.borrow() {
            Status::Connecting => "connecting",
            Status::Live(_) => "live",
            Status::Failed(_) => "failed",
        };
        SharedStreamInfo {
            key: self.key.clone(),
            subscribers: self.stats.subscribers.load(Ordering::Relaxed),
            replay,
            upstream,
        }
    }

    fn state(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock cannot leave the state half-updated
        // in a way that matters more than losing the stream, so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a subscriber: the `retry:` line, missed events from the
    /// replay buffer, then live events. Under the state lock, so no event
    /// falls between replay and live or arrives twice.
    ///
    /// Also returns, when the ID was not in the buffer, the entry ID of the
    /// newest event from a Redis log so far: the events between the two
    /// may still be in Redis.
    fn add_subscriber(&self, last_event_id: Option<&str>) -> Joined {
        let state = self.state();
        let mut initial = VecDeque::new();
        let mut missed_up_to = None;
        if let Some(retry) = state.retry {
            initial.push_back(Bytes::from(format!("retry: {retry}\n\n")));
        }
        if let Some(id) = last_event_id {
            let seen = state
                .replay
                .iter()
                .rposition(|e| e.last_id.as_deref() == Some(id));
            self.metrics.replay(seen.is_some());
            match seen {
                Some(seen) => {
                    initial.extend(state.replay.iter().skip(seen + 1).map(|e| e.raw.clone()))
                }
                None => missed_up_to = state.newest_entry.clone(),
            }
        }
        let rx = state.live.subscribe();
        self.stats
            .subscribers
            .store(state.live.receiver_count(), Ordering::Relaxed);
        Joined {
            initial,
            rx,
            missed_up_to,
        }
    }

    /// Records an upstream event and publishes it to every subscriber. A
    /// subscriber that falls too far behind is dropped by its `Subscription`,
    /// so it never slows the rest.
    fn publish(&self, event: ParsedEvent, replay_capacity: usize) {
        let mut state = self.state();
        if let Some(id) = &event.id {
            state.resume_id = (!id.is_empty()).then(|| id.clone());
        }
        self.send(state, event, replay_capacity);
    }

    /// Publishes an event read from a Redis Stream; while catching up,
    /// not if an event with its ID was sent already (this instance read it
    /// from the upstream itself while Redis was away). False if skipped.
    fn publish_logged(&self, logged: LogEvent, replay_capacity: usize) -> bool {
        let mut state = self.state();
        if state.catching_up {
            if logged.event.id.as_deref().is_some_and(|id| state.holds(id)) {
                state.newest_entry = Some(logged.entry);
                return false;
            }
            // Past what this instance read on its own: from here on, an
            // upstream that repeats an ID means another event.
            state.catching_up = false;
        }
        if logged.resume.is_some() {
            state.resume_id = logged.resume;
        }
        state.newest_entry = Some(logged.entry);
        self.send(state, logged.event, replay_capacity);
        true
    }

    /// Back on a cluster's log after reading the upstream on its own.
    fn catch_up(&self) {
        self.state().catching_up = true;
    }

    /// The entry ID of the newest event read from a Redis Stream, if any:
    /// where reading goes on after Redis was away.
    fn newest_entry(&self) -> Option<String> {
        self.state().newest_entry.clone()
    }

    /// Loads a log's newest events, the first time the stream reads it.
    /// A stream that has sent nothing yet keeps them as history: for
    /// replay, not sent, since its subscribers start live. One that read
    /// its upstream on its own while Redis was away sends what follows the
    /// newest event it has too, or (none in common) every event it has not
    /// sent.
    fn load_history(&self, history: Batch, replay_capacity: usize) {
        let mut state = self.state();
        state.newest_entry.clone_from(&history.last_entry);
        if state.replay.is_empty() && state.last_id.is_none() {
            for logged in history.events {
                state.record(&logged.event, replay_capacity);
                if logged.resume.is_some() {
                    state.resume_id = logged.resume;
                }
            }
            return;
        }
        let common = history
            .events
            .iter()
            .rposition(|e| e.event.id.as_deref().is_some_and(|id| state.holds(id)));
        state.catching_up = true;
        drop(state);
        let start = common.map_or(0, |common| common + 1);
        for logged in history.events.into_iter().skip(start) {
            self.publish_logged(logged, replay_capacity);
        }
    }

    /// Records `event` and sends it to every subscriber.
    fn send(
        &self,
        mut state: MutexGuard<'_, StreamState>,
        event: ParsedEvent,
        replay_capacity: usize,
    ) {
        state.record(&event, replay_capacity);
        self.stats.events_in.fetch_add(1, Ordering::Relaxed);
        // Err only when nobody listens.
        let delivered = state.live.send(event.raw).unwrap_or(0);
        self.stats
            .events_out
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.stats.subscribers.store(delivered, Ordering::Relaxed);
    }

    /// Forgets subscribers that went away; returns how many remain,
    /// counting those waiting to join.
    fn prune(&self) -> usize {
        let count = self.state().live.receiver_count();
        self.stats.subscribers.store(count, Ordering::Relaxed);
        count + self.waiting.load(Ordering::Relaxed)
    }

    fn resume_id(&self) -> Option<String> {
        self.state().resume_id.clone()
    }

    fn retry_delay(&self) -> Duration {
        self.state()
            .retry
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_RETRY)
    }

    /// Ends every subscriber's stream (their EventSource reconnects).
    fn close_subscribers(&self) {
        // Receivers see the end once the sender is gone.
        let mut state = self.state();
        state.live = broadcast::Sender::new(state.lag_limit);
        self.stats.subscribers.store(0, Ordering::Relaxed);
    }
}

/// A new subscriber's start (see `SharedStream::add_subscriber`).
struct Joined {
    initial: VecDeque<Bytes>,
    rx: broadcast::Receiver<Bytes>,
    missed_up_to: Option<String>,
}

/// Most events a subscriber to a Redis-sourced stream is sent from Redis
/// at once when its Last-Event-ID is older than the replay buffer: its
/// response ends after them and the browser reconnects for the next page.
const REDIS_REPLAY_PAGE: usize = 10_000;

/// All shared streams of one proxy.
pub struct Hub {
    settings: HubSettings,
    upstream: Arc<Group>,
    shutdown: CancellationToken,
    streams: Mutex<HashMap<String, Arc<SharedStream>>>,
    metrics: HubMetrics,
    /// `--cluster`: shared streams go through Redis.
    cluster: Option<Arc<Cluster>>,
}

/// Where a shared stream's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This instance's own upstream request.
    Upstream,
    /// The cluster's log in Redis, which the instance holding the
    /// stream's lease writes from its upstream request.
    Cluster,
    /// A Redis Stream (and Pub/Sub channel) an application writes.
    Redis,
}

/// Covers every path that `prefix` covers by whole segments: `/live`
/// covers `/live` and `/live/x`, not `/lively`.
fn covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// A subscriber waiting for a stream to go live: counted as one, so the
/// stream is not removed as unused meanwhile.
struct Waiting(Arc<SharedStream>);

impl Waiting {
    /// Under the hub lock.
    fn new(stream: &Arc<SharedStream>) -> Self {
        stream.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(stream.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.subscriber_left.notify_one();
    }
}

/// Resolves once a stream has had no subscriber for the linger time.
type UntilUnused<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Hub {
    pub fn new(
        settings: HubSettings,
        upstream: Arc<Group>,
        shutdown: CancellationToken,
        metrics: HubMetrics,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Hub {
            settings,
            upstream,
            shutdown,
            streams: Mutex::new(HashMap::new()),
            metrics,
            cluster,
        })
    }

    /// Every open shared stream, for the admin page.
    pub fn streams_info(&self) -> Vec<SharedStreamInfo> {
        let streams: Vec<Arc<SharedStream>> = self.streams().values().cloned().collect();
        // The hub lock is not held while each stream's is taken.
        streams.iter().map(|s| s.info()).collect()
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Arc<SharedStream>>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Whether `path` lies under one of the shared prefixes, or is served
    /// from Redis.
    pub fn is_shared(&self, path: &str) -> bool {
        self.settings
            .prefixes
            .iter()
            .chain(&self.settings.redis_prefixes)
            .any(|prefix| covers(prefix, path))
    }

    fn source(&self, path: &str) -> Source {
        match &self.cluster {
            Some(_) if self.settings.redis_prefixes.iter().any(|p| covers(p, path)) => {
                Source::Redis
            }
            Some(_) => Source::Cluster,
            None => Source::Upstream,
        }
    }

    /// Counters of the stream for `path_and_query`, while it exists.
    pub fn stats(&self, path_and_query: &str) -> Option<StatsSnapshot> {
        self.streams()
            .get(path_and_query)
            .map(|s| s.stats.snapshot())
    }

    /// Number of open shared streams.
    pub fn stream_count(&self) -> usize {
        self.streams().len()
    }

    /// Joins (or opens) the shared stream of a GET for `request_path`,
    /// whose upstream target is `path_and_query`, asked for under `host`,
    /// from serving thread `worker` (whose upstream pool a new stream
    /// uses). Waits for the upstream's response headers when the stream is
    /// new. Also returns the URL of the target whose response the stream
    /// relays (for the access log).
    pub async fn subscribe(
        self: &Arc<Self>,
        request_path: &str,
        path_and_query: &str,
        host: String,
        last_event_id: Option<&str>,
        worker: usize,
    ) -> Result<(Subscription, Arc<str>), ProxyError> {
        let source = self.source(request_path);
        // A Redis Stream is named by the request's path alone.
        let key = match source {
            Source::Redis => request_path,
            Source::Upstream | Source::Cluster => path_and_query,
        };
        let (stream, joined, waiting) = {
            let mut streams = self.streams();
            let stream = match streams.get(key) {
                Some(stream) => stream.clone(),
                None => {
                    let stream = Arc::new(SharedStream::new(
                        key.to_owned(),
                        self.settings.queue,
                        self.metrics.clone(),
                    ));
                    streams.insert(key.to_owned(), stream.clone());
                    self.spawn_source(source, &stream, host, worker);
                    stream
                }
            };
            // A stream fed from Redis loads the log's history before it is
            // live: a subscriber with a Last-Event-ID joins then, so its
            // replay can come from that history. Everyone else joins now
            // and misses nothing from the first event on.
            let join_when_live = source != Source::Upstream
                && last_event_id.is_some()
                && *stream.status.borrow() == Status::Connecting;
            if join_when_live {
                let waiting = Waiting::new(&stream);
                (stream, None, Some(waiting))
            } else {
                let joined = stream.add_subscriber(last_event_id);
                (stream, Some(joined), None)
            }
        };

        let mut status = stream.status.subscribe();
        let wait = status.wait_for(|s| *s != Status::Connecting);
        let live = match tokio::time::timeout(self.settings.response_timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                Status::Live(target) => Ok(target.clone()),
                Status::Failed(reason) => Err(ProxyError::Upstream(reason.clone())),
                Status::Connecting => Err(ProxyError::Upstream("shared stream closed".to_owned())),
            },
            Ok(Err(_)) => Err(ProxyError::Upstream("shared stream closed".to_owned())),
            Err(_) => Err(ProxyError::UpstreamTimeout(self.settings.response_timeout)),
        };
        let target = live?;
        let Joined {
            mut initial,
            rx,
            missed_up_to,
        } = match joined {
            Some(joined) => joined,
            None => stream.add_subscriber(last_event_id),
        };
        // Joined: no longer waiting.
        drop(waiting);
        let mut subscription_ends = false;
        if let (Source::Redis, Some(after), Some(up_to), Some(cluster)) =
            (source, last_event_id, missed_up_to, &self.cluster)
        {
            // Older than the replay buffer: the rest may be in Redis.
            let key = cluster.source_key(&stream.key);
            match cluster.range(&key, after, &up_to, REDIS_REPLAY_PAGE).await {
                Ok(events) => {
                    subscription_ends = events.len() == REDIS_REPLAY_PAGE;
                    initial.extend(events.into_iter().map(|e| e.event.raw));
                }
                Err(err) => {
                    tracing::warn!(stream = %stream.key, error = %err, "replay from redis failed; the subscriber starts live");
                }
            }
        }
        let mut subscription = Subscription::new(initial, rx, stream);
        if subscription_ends {
            subscription.end_after_initial();
        }
        Ok((subscription, target))
    }

    /// Starts the task that feeds a new stream.
    fn spawn_source(
        self: &Arc<Self>,
        source: Source,
        stream: &Arc<SharedStream>,
        host: String,
        worker: usize,
    ) {
        let stream = stream.clone();
        match (source, self.cluster.clone()) {
            (Source::Cluster, Some(cluster)) => {
                tokio::spawn(self.clone().run_cluster(cluster, stream, host, worker));
            }
            (Source::Redis, Some(cluster)) => {
                tokio::spawn(self.clone().run_redis(cluster, stream));
            }
            _ => {
                tokio::spawn(self.clone().run_local(stream, host, worker));
            }
        }
    }

    /// Removes `stream` if it has no subscribers; true if it was removed.
    fn remove_if_unused(&self, stream: &Arc<SharedStream>) -> bool {
        let mut streams = self.streams();
        if stream.prune() > 0 {
            return false;
        }
        if streams
            .get(&stream.key)
            .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.key);
        }
        true
    }

    /// Resolves once `stream` has had no subscriber for the linger time,
    /// having removed it from the hub.
    fn until_unused<'a>(&'a self, stream: &'a Arc<SharedStream>) -> UntilUnused<'a> {
        Box::pin(async move {
            loop {
                if stream.prune() == 0 {
                    tokio::time::sleep(self.settings.linger).await;
                    if self.remove_if_unused(stream) {
                        return;
                    }
                }
                stream.subscriber_left.notified().await;
            }
        })
    }

    fn remove(&self, stream: &Arc<SharedStream>) {
        let mut streams = self.streams();
        if streams
            .get(&stream.key)
            .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.key);
        }
        drop(streams);
        // Subscribers still waiting for the first response get a 502 now
        // rather than a 504 at the end of the request timeout.
        stream.status.send_if_modified(|status| {
            let connecting = *status == Status::Connecting;
            if connecting {
                *status = Status::Failed("shared stream closed".to_owned());
            }
            connecting
        });
        stream.close_subscribers();
    }

    /// The stream's upstream request head: a fresh one, by the same rules
    /// as any request. Nothing of any one client, and never its
    /// Authorization or Cookie, reaches a stream that everyone shares.
    fn upstream_head(&self, stream: &SharedStream, host: &str, resume_id: Option<&str>) -> Vec<u8> {
        let mut fields = Fields::builder();
        fields
            .push(b"accept", b"text/event-stream")
            .push(b"cache-control", b"no-cache");
        if let Some(id) = resume_id {
            fields.push(b"last-event-id", id.as_bytes());
        }
        let head = RequestHead {
            method: Method::GET,
            target: stream.key.clone(),
            authority: None,
            version: Version::HTTP_11,
            protocol: None,
            fields: fields.finish(),
        };
        let forwarding = Forwarding {
            base_path: &self.settings.base_path,
            strip_prefix: "",
            client_ip: None,
            client_subject: None,
            keep_underscore_headers: false,
            websocket_key: None,
        };
        let mut out = Vec::with_capacity(256);
        rules::write_upstream_head(&mut out, &head, host, &forwarding, Framing::None);
        out
    }

    /// A stream of this instance alone: its upstream request, until the
    /// last subscriber has gone.
    async fn run_local(self: Arc<Self>, stream: Arc<SharedStream>, host: String, worker: usize) {
        let end = tokio::select! {
            end = self.read_upstream(&stream, &host, worker, Sink::Local) => end,
            () = self.until_unused(&stream) => ReadEnd::Unused,
        };
        self.finish(&stream, end);
    }

    /// Ends `stream`: its subscribers' responses end (and reconnect);
    /// those still waiting for it get the reason as an error.
    fn finish(&self, stream: &Arc<SharedStream>, end: ReadEnd) {
        match end {
            ReadEnd::Failed(reason) => self.fail(stream, reason),
            ReadEnd::Unused | ReadEnd::Shutdown | ReadEnd::Sink(_) => self.remove(stream),
        }
    }

    /// The stream's upstream side: connect, relay events into `sink`,
    /// reconnect with `Last-Event-ID` when the upstream ends, until the
    /// upstream fails for good, the sink refuses, the stream is unused,
    /// or shutdown.
    async fn read_upstream(
        &self,
        stream: &Arc<SharedStream>,
        host: &str,
        worker: usize,
        mut sink: Sink<'_>,
    ) -> ReadEnd {
        let mut failures: u32 = 0;
        loop {
            let resume_id = sink.resume_id(stream);
            let request = UpstreamRequest::<NoBody> {
                method: &Method::GET,
                head: self.upstream_head(stream, host, resume_id.as_deref()),
                body: None,
                framing: Framing::None,
                resendable: true,
                response_timeout: self.settings.response_timeout,
                upgrade: false,
            };
            stream
                .stats
                .upstream_requests
                .fetch_add(1, Ordering::Relaxed);
            let response = tokio::select! {
                r = self.upstream.send(worker, None, request) => r,
                () = self.shutdown.cancelled() => return ReadEnd::Shutdown,
            };
            let outcome = match response {
                Ok(answer) => {
                    let filtered = rules::filter_response(answer.head, &Method::GET);
                    if filtered.head.status == StatusCode::OK && filtered.event_stream {
                        failures = 0;
                        stream.status.send_replace(Status::Live(answer.target));
                        self.relay(stream, answer.body, &mut sink).await
                    } else {
                        // The backend does not (or no longer) serve this stream.
                        return ReadEnd::Failed(format!(
                            "upstream answered {} without an event stream",
                            filtered.head.status
                        ));
                    }
                }
                Err(err) => RelayEnd::Failed(err.to_string()),
            };
            match outcome {
                RelayEnd::Shutdown => return ReadEnd::Shutdown,
                RelayEnd::Sink(err) => return ReadEnd::Sink(err),
                RelayEnd::Failed(reason) if *stream.status.borrow() == Status::Connecting => {
                    return ReadEnd::Failed(reason);
                }
                RelayEnd::Failed(reason) => {
                    failures += 1;
                    tracing::warn!(stream = %stream.key, %reason, "shared stream upstream lost; reconnecting");
                }
                RelayEnd::Ended => {
                    tracing::info!(stream = %stream.key, "shared stream upstream ended; reconnecting");
                }
            }
            if self.remove_if_unused(stream) {
                return ReadEnd::Unused;
            }
            let delay = backoff(stream.retry_delay(), failures);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return ReadEnd::Shutdown,
            }
        }
    }

    fn fail(&self, stream: &Arc<SharedStream>, reason: String) {
        tracing::warn!(stream = %stream.key, %reason, "shared stream failed");
        stream.status.send_replace(Status::Failed(reason));
        self.remove(stream);
    }

    /// Relays one upstream response into `sink` until it ends.
    async fn relay(
        &self,
        stream: &Arc<SharedStream>,
        mut body: ResponseBody,
        sink: &mut Sink<'_>,
    ) -> RelayEnd {
        let mut parser = EventParser::new();
        let idle = tokio::time::sleep(self.settings.idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(frame)) => {
                        idle.as_mut().reset(Instant::now() + self.settings.idle_timeout);
                        if let Some(data) = frame.data_ref() {
                            for event in parser.feed(data) {
                                if let Err(err) = sink.accept(stream, event, self.settings.replay).await {
                                    return RelayEnd::Sink(err);
                                }
                            }
                        }
                    }
                    Some(Err(err)) => return RelayEnd::Failed(err.to_string()),
                    None => return RelayEnd::Ended,
                },
                () = &mut idle => return RelayEnd::Failed(format!("upstream silent for {:?}", self.settings.idle_timeout)),
                () = self.shutdown.cancelled() => return RelayEnd::Shutdown,
            }
        }
    }
}

/// Where a stream's upstream events go.
enum Sink<'a> {
    /// Straight to this instance's subscribers.
    Local,
    /// Into the cluster's log, under the stream's lease.
    Log(LogWriter<'a>),
}

/// Appends a reader's events to a shared stream's log.
struct LogWriter<'a> {
    cluster: &'a Cluster,
    keys: &'a StreamKeys,
    token: String,
    /// The upstream's last event ID so far.
    resume: Option<String>,
}

#[derive(Debug)]
enum SinkError {
    /// Another instance holds the lease now: nothing was written.
    LeaseLost,
    Redis(ClusterError),
}

impl Sink<'_> {
    fn resume_id(&self, stream: &SharedStream) -> Option<String> {
        match self {
            Sink::Local => stream.resume_id(),
            Sink::Log(writer) => writer.resume.clone(),
        }
    }

    async fn accept(
        &mut self,
        stream: &SharedStream,
        event: ParsedEvent,
        replay_capacity: usize,
    ) -> Result<(), SinkError> {
        let writer = match self {
            Sink::Local => {
                stream.publish(event, replay_capacity);
                return Ok(());
            }
            Sink::Log(writer) => writer,
        };
        // A comment (the upstream's heartbeat) is not an event to keep;
        // each instance writes its own heartbeats.
        if !event.has_data && event.id.is_none() && event.retry.is_none() {
            return Ok(());
        }
        if let Some(id) = &event.id {
            writer.resume = (!id.is_empty()).then(|| id.clone());
        }
        let appended = writer
            .cluster
            .append(
                writer.keys,
                &writer.token,
                replay_capacity,
                &event,
                writer.resume.as_deref(),
            )
            .await;
        match appended {
            Ok(true) => Ok(()),
            Ok(false) => Err(SinkError::LeaseLost),
            Err(err) => Err(SinkError::Redis(err)),
        }
    }
}

/// How reading a stream's upstream ended.
#[derive(Debug)]
enum ReadEnd {
    /// It cannot be served: its subscribers get this reason.
    Failed(String),
    Sink(SinkError),
    Unused,
    Shutdown,
}

enum RelayEnd {
    Ended,
    Failed(String),
    Sink(SinkError),
    Shutdown,
}

/// The upstream's `retry:` delay, doubled for each consecutive failure.
fn backoff(retry: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    retry
        .saturating_mul(factor)
        .min(MAX_RECONNECT_BACKOFF.max(retry))
}

type Received = (Result<Bytes, RecvError>, broadcast::Receiver<Bytes>);

/// How a subscription ends when its subscriber fell more than the live
/// ring behind: `RelayBody` ends the client's stream cleanly, and counts
/// it as dropped for being slow.
#[derive(Debug, thiserror::Error)]
#[error("slow subscriber dropped: fell too far behind")]
pub struct SlowSubscriber;

/// One subscriber's view of a shared stream: replayed events, then live ones.
pub struct Subscription {
    initial: VecDeque<Bytes>,
    /// The pending receive; `None` once the subscription has ended.
    next: Option<ReusableBoxFuture<'static, Received>>,
    stream: Arc<SharedStream>,
}

async fn receive(mut rx: broadcast::Receiver<Bytes>) -> Received {
    (rx.recv().await, rx)
}

impl Subscription {
    /// Sends what it has to replay, then ends (the client reconnects
    /// with the last ID it got).
    fn end_after_initial(&mut self) {
        if self.next.take().is_some() {
            self.stream.subscriber_left.notify_one();
        }
    }

    fn new(
        initial: VecDeque<Bytes>,
        rx: broadcast::Receiver<Bytes>,
        stream: Arc<SharedStream>,
    ) -> Self {
        stream.metrics.subscriber_joined();
        Subscription {
            initial,
            next: Some(ReusableBoxFuture::new(receive(rx))),
            stream,
        }
    }
}

impl Body for Subscription {
    type Data = Bytes;
    type Error = SlowSubscriber;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SlowSubscriber>>> {
        if let Some(bytes) = self.initial.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (received, rx) = ready!(next.poll(cx));
        match received {
            Ok(bytes) => {
                next.set(receive(rx));
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Err(RecvError::Lagged(missed)) => {
                self.next = None;
                drop(rx);
                self.stream
                    .stats
                    .subscribers_dropped
                    .fetch_add(1, Ordering::Relaxed);
                self.stream.subscriber_left.notify_one();
                tracing::warn!(stream = %self.stream.key, missed, "slow subscriber dropped: fell too far behind");
                Poll::Ready(Some(Err(SlowSubscriber)))
            }
            Err(RecvError::Closed) => {
                self.next = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The receiver goes first, so the hub counts one subscriber fewer.
        self.next = None;
        self.stream.subscriber_left.notify_one();
        self.stream.metrics.subscriber_left();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_retry_then_doubles_up_to_a_cap() {
        let retry = Duration::from_millis(500);
        assert_eq!(backoff(retry, 0), retry);
        assert_eq!(backoff(retry, 1), retry);
        assert_eq!(backoff(retry, 2), retry * 2);
        assert_eq!(backoff(retry, 3), retry * 4);
        assert_eq!(backoff(retry, 60), MAX_RECONNECT_BACKOFF);
    }

    fn stream() -> SharedStream {
        stream_counted(HubMetrics::default())
    }

    fn stream_counted(metrics: HubMetrics) -> SharedStream {
        let stream = SharedStream::new("/s".into(), 2, metrics);
        stream
            .status
            .send_replace(Status::Live("http://127.0.0.1:1".into()));
        stream
    }

    fn event(id: &str) -> ParsedEvent {
        ParsedEvent {
            raw: Bytes::from(format!("id: {id}\ndata: {id}\n\n")),
            id: Some(id.to_owned()),
            retry: None,
            has_data: true,
        }
    }

    #[test]
    fn replay_starts_after_the_last_seen_id_and_is_bounded() {
        let s = stream();
        for i in 1..=5 {
            s.publish(event(&i.to_string()), 3);
        }
        let Joined {
            initial, rx: _rx, ..
        } = s.add_subscriber(Some("3"));
        assert_eq!(
            initial,
            vec![
                Bytes::from("id: 4\ndata: 4\n\n"),
                Bytes::from("id: 5\ndata: 5\n\n")
            ]
        );
        // "1" fell out of the 3-event buffer: start live.
        let Joined {
            initial, rx: _rx, ..
        } = s.add_subscriber(Some("1"));
        assert!(initial.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_is_dropped_alone() {
        use http_body_util::BodyExt;
        let s = Arc::new(stream());
        let subscribe = || {
            let Joined { initial, rx, .. } = s.add_subscriber(None);
            Subscription::new(initial, rx, s.clone())
        };
        let (mut fast, mut slow) = (subscribe(), subscribe());
        // The ring holds 2 events: the slow one misses the first of 3.
        for i in 1..=3 {
            s.publish(event(&i.to_string()), 10);
            let frame = fast.frame().await.unwrap().unwrap();
            assert_eq!(
                frame.into_data().unwrap(),
                format!("id: {i}\ndata: {i}\n\n")
            );
        }
        assert!(matches!(slow.frame().await, Some(Err(SlowSubscriber))));
        assert!(slow.frame().await.is_none());
        let stats = s.stats.snapshot();
        assert_eq!(stats.subscribers_dropped, 1);
        assert_eq!(s.prune(), 1);
    }

    fn logged(entry: &str, id: &str) -> LogEvent {
        LogEvent {
            entry: entry.to_owned(),
            event: event(id),
            resume: Some(id.to_owned()),
        }
    }

    fn batch(events: Vec<LogEvent>) -> Batch {
        Batch {
            last_entry: events.last().map(|e| e.entry.clone()),
            events,
        }
    }

    fn ids(initial: &VecDeque<Bytes>) -> Vec<String> {
        initial
            .iter()
            .map(|raw| {
                String::from_utf8_lossy(raw)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn a_first_history_is_kept_for_replay_without_being_sent() {
        let s = stream();
        let Joined {
            initial: _,
            rx: mut live,
            ..
        } = s.add_subscriber(None);
        s.load_history(batch(vec![logged("1-0", "1"), logged("2-0", "2")]), 10);
        assert_eq!(s.newest_entry().as_deref(), Some("2-0"));
        assert!(live.try_recv().is_err(), "history is not sent live");
        let Joined { initial, rx: _, .. } = s.add_subscriber(Some("1"));
        assert_eq!(ids(&initial), ["id: 2"]);
        assert_eq!(s.resume_id().as_deref(), Some("2"));
    }

    #[test]
    fn an_event_already_sent_is_not_sent_again_from_the_log() {
        let s = stream();
        // Read from the upstream while Redis was away.
        s.publish(event("1"), 10);
        s.publish(event("2"), 10);
        let Joined {
            initial: _,
            rx: mut live,
            ..
        } = s.add_subscriber(None);
        // Rejoining: the log has 1 and 2 from another reader, then 3.
        s.catch_up();
        s.load_history(
            batch(vec![
                logged("1-0", "1"),
                logged("2-0", "2"),
                logged("3-0", "3"),
            ]),
            10,
        );
        assert_eq!(live.try_recv().unwrap(), Bytes::from("id: 3\ndata: 3\n\n"));
        assert!(live.try_recv().is_err());
        // And from the tail: 3 again is skipped, 4 is sent.
        s.catch_up();
        assert!(!s.publish_logged(logged("3-0", "3"), 10));
        assert!(s.publish_logged(logged("4-0", "4"), 10));
        assert_eq!(live.try_recv().unwrap(), Bytes::from("id: 4\ndata: 4\n\n"));
        // Caught up: an upstream (or application) that repeats an ID
        // means another event.
        assert!(s.publish_logged(logged("5-0", "4"), 10));
        assert_eq!(s.newest_entry().as_deref(), Some("5-0"));
    }

    #[test]
    fn a_log_with_nothing_in_common_is_sent_whole() {
        // This instance read "a" on its own; the log has what another
        // reader wrote meanwhile (after a Redis restart, say).
        let s = stream();
        s.publish(event("a"), 10);
        let Joined {
            initial: _,
            rx: mut live,
            ..
        } = s.add_subscriber(None);
        s.load_history(batch(vec![logged("1-0", "x"), logged("2-0", "y")]), 10);
        assert_eq!(live.try_recv().unwrap(), Bytes::from("id: x\ndata: x\n\n"));
        assert_eq!(live.try_recv().unwrap(), Bytes::from("id: y\ndata: y\n\n"));
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn shared_stream_and_subscriber_gauges_return_to_zero() {
        let metrics = crate::metrics::Metrics::new();
        let s = Arc::new(stream_counted(metrics.hub()));
        s.publish(event("1"), 10);
        let subscribe = |last_id: Option<&str>| {
            let Joined { initial, rx, .. } = s.add_subscriber(last_id);
            Subscription::new(initial, rx, s.clone())
        };
        let (a, b) = (subscribe(Some("1")), subscribe(Some("gone")));
        let summary = metrics.summary();
        assert_eq!(summary.shared_streams, 1);
        assert_eq!(summary.shared_subscribers, 2);
        assert_eq!(summary.replay, [("hit", 1), ("miss", 1)]);
        drop(a);
        drop(b);
        assert_eq!(metrics.summary().shared_subscribers, 0);
        drop(s);
        assert_eq!(metrics.summary().shared_streams, 0);
    }
}
