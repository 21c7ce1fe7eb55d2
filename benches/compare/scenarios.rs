//! The four scenarios, each run against one started peer over one protocol
//! (HTTP/1.1 or HTTP/2, the peer's `target.protocol`):
//!
//! - holding: N idle TLS event streams; proxy memory per stream, idle CPU;
//! - fanout: K subscribers of one published stream; delivery latency, losses,
//!   proxy CPU per delivered event;
//! - throughput: one stream, rising event rates; the highest rate delivered
//!   in full with p99 under 10 ms, for 64 B and 1 KiB events;
//! - reqresp: requests/s over TLS keep-alive (HTTP/2: `h2_streams` requests
//!   in flight per connection), and full handshakes/s with a new connection
//!   per request, against the static upstream;
//! - cluster-fanout: N subscribers of one shared stream spread over three
//!   ssegate instances that share one upstream reader through a real
//!   `redis-server` (`--cluster`), against the same N on one instance and on
//!   three instances without Redis; delivery latency, losses, upstream
//!   requests. It starts its own instances rather than taking a peer.
//!
//! Every scenario records what it measured in `Results`; failures (lost
//! events, streams that could not open) are recorded there too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::loadgen::{
    self, BatchOutcome, ClientTls, ConnectionUse, Protocol, RequestOutcome, StreamOutcome,
    StreamPlan, StreamProgress, Target, TlsInfo,
};
use crate::peers::{self, PeerKind, PeerSetup, RedisServer, RunningPeer};
use crate::sys::{self, Usage};
use crate::upstream::{UpstreamProcess, EVENTS_PATH, IDLE_PATH, STATIC_PATH};

/// The longest wait for late events after the publisher is done.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// Open files above the start-up count that still count as released (idle
/// keep-alive connections to the upstream, listeners, logs).
const RELEASE_SLACK: usize = 200;
/// Stream connections being set up at once (TCP + TLS + request).
const CONNECT_CONCURRENCY: usize = 128;
/// A delivery latency p99 this high fails a throughput step.
pub const THROUGHPUT_P99_LIMIT: Duration = Duration::from_millis(10);
/// A throughput step also fails when fewer events per second arrive than this
/// share of the offered rate (the chain could not keep up).
const THROUGHPUT_MIN_ACHIEVED: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ScenarioKind {
    /// N idle TLS event streams: proxy memory per stream and idle CPU.
    Holding,
    /// K subscribers of one published stream: delivery latency, losses, CPU per event.
    Fanout,
    /// One stream: highest event rate with p99 under 10 ms (64 B and 1 KiB events).
    Throughput,
    /// Requests/s over TLS keep-alive, and full TLS handshakes/s.
    Reqresp,
    /// N subscribers over 3 ssegate instances sharing one upstream reader
    /// through Redis (--cluster), against 1 instance: latency, losses,
    /// upstream requests. Needs redis-server.
    ClusterFanout,
}

impl ScenarioKind {
    /// Holding runs first on a fresh peer so memory growth is not hidden by
    /// memory freed from earlier scenarios.
    pub const ALL: [ScenarioKind; 5] = [
        ScenarioKind::Holding,
        ScenarioKind::Fanout,
        ScenarioKind::Throughput,
        ScenarioKind::Reqresp,
        ScenarioKind::ClusterFanout,
    ];
}

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub fanout_subscribers: Vec<usize>,
    /// How long each fan-out run publishes; see [`Sizes::fanout_pace`].
    pub fanout_duration: Duration,
    /// Deliveries per second (events/s x K) a fan-out run aims at, within
    /// `FANOUT_RATES`; see [`Sizes::fanout_pace`].
    pub fanout_deliveries_per_second: u64,
    /// Events/s for every K instead of the paced rate (`--fanout-rate`).
    pub fanout_rate: Option<u64>,
    /// Events per run for every K instead of rate x duration (`--fanout-events`).
    pub fanout_events: Option<u64>,
    pub fanout_event_size: usize,
    pub holding_streams: Vec<usize>,
    pub holding_settle: Duration,
    pub holding_idle_window: Duration,
    pub throughput_event_sizes: Vec<usize>,
    pub throughput_rates: Vec<u64>,
    pub throughput_step: Duration,
    /// Bisection steps between the last passing and the first failing rate.
    pub throughput_refinements: usize,
    pub reqresp_connections: usize,
    /// Requests in flight per connection in the HTTP/2 keep-alive run (as
    /// h2load `-m`); HTTP/1.1 has one.
    pub h2_streams: usize,
    pub reqresp_duration: Duration,
    pub reqresp_warmup: Duration,
    /// Rounds of fan-out and of request/response, each taking every peer in
    /// turn on a fresh process.
    pub rounds: usize,
    /// After the publisher is done, streams are read until every event has
    /// arrived or none has arrived for this long (at most `MAX_DRAIN`):
    /// late events count as delivered, with their latency; the rest are lost.
    pub drain: Duration,
    /// How long a peer may take to close the connections of departed
    /// clients (before it is restarted for the next scenario).
    pub release_timeout: Duration,
    /// Cluster fan-out: subscribers, spread evenly over the instances.
    pub cluster_subscribers: usize,
    /// Cluster fan-out: events per second, and events per run.
    pub cluster_rate: u64,
    pub cluster_events: u64,
    /// Cluster fan-out: rounds, each taking every layout over every protocol in turn.
    pub cluster_rounds: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            fanout_subscribers: vec![100, 1000, 5000],
            // 25/s at K=100 (250 bursts a run), 10/s at K=1000, 5/s at K=5000.
            fanout_duration: Duration::from_secs(10),
            fanout_deliveries_per_second: 10_000,
            fanout_rate: None,
            fanout_events: None,
            fanout_event_size: 256,
            holding_streams: vec![1000, 5000, 15000],
            holding_settle: Duration::from_secs(2),
            holding_idle_window: Duration::from_secs(5),
            throughput_event_sizes: vec![64, 1024],
            throughput_rates: vec![
                1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
            ],
            throughput_step: Duration::from_secs(2),
            throughput_refinements: 2,
            reqresp_connections: 32,
            h2_streams: 10,
            reqresp_duration: Duration::from_secs(5),
            reqresp_warmup: Duration::from_secs(1),
            // The machine drifts by 10-25 % between rounds minutes apart;
            // five rounds taking the peers in turn spread that drift over
            // every peer, and their median leaves out the outliers.
            rounds: 5,
            drain: Duration::from_secs(3),
            release_timeout: Duration::from_secs(5),
            // 6000 deliveries/s for 10 s: 100 subscribers per instance.
            cluster_subscribers: 300,
            cluster_rate: 20,
            cluster_events: 200,
            cluster_rounds: 5,
        }
    }

    /// Tiny sizes that prove the harness works end to end, over both
    /// protocols, in a few seconds per peer and protocol.
    pub fn smoke() -> Self {
        Sizes {
            fanout_subscribers: vec![50],
            fanout_duration: Duration::from_millis(500),
            fanout_deliveries_per_second: 1_000,
            fanout_rate: None,
            fanout_events: None,
            fanout_event_size: 256,
            holding_streams: vec![100, 300],
            holding_settle: Duration::from_millis(200),
            holding_idle_window: Duration::from_millis(300),
            throughput_event_sizes: vec![64, 1024],
            throughput_rates: vec![500, 2_000],
            throughput_step: Duration::from_millis(250),
            throughput_refinements: 0,
            reqresp_connections: 8,
            h2_streams: 10,
            reqresp_duration: Duration::from_millis(500),
            reqresp_warmup: Duration::from_millis(100),
            // Two, so the smoke run takes the rounds' path too.
            rounds: 2,
            drain: Duration::from_secs(2),
            release_timeout: Duration::from_secs(2),
            cluster_subscribers: 30,
            cluster_rate: 20,
            cluster_events: 10,
            cluster_rounds: 1,
        }
    }

    /// The publishing pace for K subscribers: the same deliveries per second
    /// for every K (within `FANOUT_RATES`) for the same duration. A run's p99
    /// is then the 1% slowest of about as many deliveries at every K, spread
    /// over many bursts: at one rate for all K (5/s for 10 s), p99 at K=100
    /// was the 50 slowest of 5000 deliveries, all from the one or two worst
    /// of 50 bursts, and rounds of one peer spread 2-3x.
    pub fn fanout_pace(&self, subscribers: usize) -> FanoutPace {
        let paced = self.fanout_deliveries_per_second / subscribers.max(1) as u64;
        let rate = self
            .fanout_rate
            .unwrap_or_else(|| paced.clamp(*FANOUT_RATES.start(), *FANOUT_RATES.end()))
            .max(1);
        let events = self
            .fanout_events
            .unwrap_or_else(|| (rate as f64 * self.fanout_duration.as_secs_f64()).round() as u64)
            .max(1);
        FanoutPace { rate, events }
    }
}

/// Events per second a paced fan-out run stays within. At 25/s bursts are
/// 40 ms apart, ten times what a burst to 100 subscribers takes to cross the
/// chain here, so each event measures one burst rather than a queue; 5/s is
/// what 5000 subscribers get.
const FANOUT_RATES: std::ops::RangeInclusive<u64> = 5..=25;

/// How fast a fan-out run publishes, and how many events.
#[derive(Debug, Clone, Copy)]
pub struct FanoutPace {
    pub rate: u64,
    pub events: u64,
}

// ------------------------------------------------------------------ results

#[derive(Debug)]
pub struct FanoutResult {
    pub peer: PeerKind,
    pub protocol: Protocol,
    pub subscribers: usize,
    /// Which round of `Sizes::rounds`, from 1.
    pub round: usize,
    pub events: BatchOutcome,
    pub proxy_cpu_seconds: Option<f64>,
    pub upstream_cpu_seconds: f64,
    pub upstream_clients: usize,
}

impl FanoutResult {
    /// Proxy CPU per delivered event, microseconds.
    pub fn proxy_cpu_us_per_event(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_seconds?;
        (self.events.received > 0).then(|| cpu * 1e6 / self.events.received as f64)
    }
}

#[derive(Debug)]
pub struct HoldingResult {
    pub peer: PeerKind,
    pub protocol: Protocol,
    pub streams: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub baseline: Usage,
    pub loaded: Usage,
    /// Proxy CPU while the streams sat idle, percent of one core.
    pub idle_cpu_percent: f64,
}

impl HoldingResult {
    pub fn bytes_per_stream(&self) -> f64 {
        (self.loaded.rss_bytes as f64 - self.baseline.rss_bytes as f64) / self.streams.max(1) as f64
    }
}

#[derive(Debug)]
pub struct ThroughputStep {
    pub rate: u64,
    pub expected: u64,
    pub received: u64,
    pub achieved_rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub error: Option<String>,
    pub passed: bool,
}

#[derive(Debug)]
pub struct ThroughputResult {
    pub peer: PeerKind,
    pub protocol: Protocol,
    pub event_size: usize,
    pub steps: Vec<ThroughputStep>,
}

impl ThroughputResult {
    /// The highest offered rate that passed.
    pub fn max_passing_rate(&self) -> Option<u64> {
        self.steps.iter().filter(|s| s.passed).map(|s| s.rate).max()
    }
}

#[derive(Debug)]
pub struct ReqRespResult {
    pub peer: PeerKind,
    pub protocol: Protocol,
    /// Which round of `Sizes::rounds`, from 1.
    pub round: usize,
    /// Requests over keep-alive connections.
    pub keepalive: LoadPhase,
    /// A new connection (a full TLS handshake) per request.
    pub handshakes: LoadPhase,
}

/// One measured load: what the clients saw, and the CPU spent meanwhile.
#[derive(Debug)]
pub struct LoadPhase {
    pub outcome: RequestOutcome,
    /// The proxy's CPU.
    pub cpu_seconds: Option<f64>,
    /// CPU of the load generator and the upstream in the same interval: what
    /// the proxy shares the cores with.
    pub harness_cpu_seconds: Option<f64>,
}

/// How the cluster fan-out's subscribers are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterLayout {
    /// One ssegate with `--sse-shared /sse`: the single-instance baseline.
    Single,
    /// Three ssegate instances with `--sse-shared /sse` and no Redis: each
    /// reads the upstream itself (what several instances do without --cluster).
    Separate,
    /// Three ssegate instances with `--sse-shared /sse --cluster redis://...`:
    /// one reads the upstream into the Redis log, all three tail it.
    Cluster,
}

impl ClusterLayout {
    pub const ALL: [ClusterLayout; 3] = [
        ClusterLayout::Single,
        ClusterLayout::Separate,
        ClusterLayout::Cluster,
    ];

    pub fn instances(self) -> usize {
        match self {
            ClusterLayout::Single => 1,
            ClusterLayout::Separate | ClusterLayout::Cluster => 3,
        }
    }

    /// Upstream requests a correct run makes: one per stream per reader.
    pub fn expected_upstream_requests(self) -> u64 {
        match self {
            ClusterLayout::Single | ClusterLayout::Cluster => 1,
            ClusterLayout::Separate => 3,
        }
    }

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            ClusterLayout::Single => "1 instance",
            ClusterLayout::Separate => "3 instances, no Redis",
            ClusterLayout::Cluster => "3 instances, --cluster (Redis)",
        }
    }

    /// Machine-readable name (results.json, work directories).
    pub fn name(self) -> &'static str {
        match self {
            ClusterLayout::Single => "single",
            ClusterLayout::Separate => "separate",
            ClusterLayout::Cluster => "cluster",
        }
    }
}

/// One cluster fan-out run: one layout over one protocol in one round.
#[derive(Debug)]
pub struct ClusterResult {
    pub layout: ClusterLayout,
    pub protocol: Protocol,
    /// Which round of `Sizes::cluster_rounds`, from 1.
    pub round: usize,
    /// Every subscriber's events, all instances together.
    pub events: BatchOutcome,
    /// The same per instance (subscriber i went to instance i mod instances).
    pub by_instance: Vec<BatchOutcome>,
    /// `GET /sse/events` requests the upstream got from the instances, from
    /// their start to their stop.
    pub upstream_requests: Option<u64>,
    /// Instances that logged "cluster: reading the upstream", with how many
    /// times (a lease taken again shows as more than one).
    pub readers: Vec<(usize, usize)>,
    /// CPU of all instances during the run.
    pub proxy_cpu_seconds: Option<f64>,
    /// CPU of redis-server during the run (cluster layout only).
    pub redis_cpu_seconds: Option<f64>,
    /// Commands redis-server ran while the events were published and
    /// delivered (`INFO commandstats` after `CONFIG RESETSTAT`), most
    /// called first (cluster layout only).
    pub redis_calls: Vec<(String, u64)>,
}

impl ClusterResult {
    /// CPU per delivered event, microseconds.
    fn per_event(&self, seconds: Option<f64>) -> Option<f64> {
        let cpu = seconds?;
        (self.events.received > 0).then(|| cpu * 1e6 / self.events.received as f64)
    }

    pub fn proxy_cpu_us_per_event(&self) -> Option<f64> {
        self.per_event(self.proxy_cpu_seconds)
    }

    pub fn redis_cpu_us_per_event(&self) -> Option<f64> {
        self.per_event(self.redis_cpu_seconds)
    }
}

/// Everything one harness run measured, plus what went wrong.
#[derive(Debug, Default)]
pub struct Results {
    pub fanout: Vec<FanoutResult>,
    pub holding: Vec<HoldingResult>,
    pub throughput: Vec<ThroughputResult>,
    pub reqresp: Vec<ReqRespResult>,
    pub cluster: Vec<ClusterResult>,
    /// `redis-server --version`, when the cluster fan-out ran.
    pub redis_version: Option<String>,
    /// Lost events, streams that failed, peers that did not start: a failed run.
    pub failures: Vec<String>,
    /// Things the reader should know (skipped sizes, caveats).
    pub notes: Vec<String>,
    /// Each peer run, in the order first started.
    pub peers: Vec<PeerRecord>,
}

/// A peer's version and, per protocol, how its first start went.
#[derive(Debug)]
pub struct PeerRecord {
    pub kind: PeerKind,
    pub version: String,
    pub negotiated: Vec<(Protocol, Negotiated)>,
}

/// What the load generator's first connection to a peer ended up with.
#[derive(Debug, Clone)]
pub enum Negotiated {
    Tls(TlsInfo),
    /// Plain HTTP (the direct path).
    Plain,
    /// The peer did not start.
    Failed,
}

impl PeerRecord {
    /// Whether the peer was started (or tried) over `protocol`.
    pub fn tried(&self, protocol: Protocol) -> bool {
        self.negotiated.iter().any(|(p, _)| *p == protocol)
    }
}

// ------------------------------------------------------------------ running

/// What the scenarios share: the upstream, sizes and client TLS settings.
pub struct Bench {
    pub upstream: UpstreamProcess,
    pub sizes: Sizes,
    pub open_file_limit: u64,
    /// Client TLS without session resumption (every handshake a full one),
    /// checking neither the certificate nor the handshake signature.
    pub full_handshake_tls: ClientTls,
    next_run: AtomicU32,
}

impl Bench {
    pub fn new(
        upstream: UpstreamProcess,
        sizes: Sizes,
        open_file_limit: u64,
        full_handshake_tls: ClientTls,
    ) -> Self {
        Bench {
            upstream,
            sizes,
            open_file_limit,
            full_handshake_tls,
            next_run: AtomicU32::new(1),
        }
    }

    fn next_run(&self) -> u32 {
        self.next_run.fetch_add(1, Ordering::Relaxed)
    }

    /// Usage of the process(es) that stand between client and upstream.
    fn proxy_usage(&self, peer: &RunningPeer) -> Option<Usage> {
        peer.usage()
    }

    /// CPU seconds of the load generator (this process) and the upstream.
    fn harness_cpu_seconds(&self) -> Option<f64> {
        let own = sys::own_cpu_seconds().ok()?;
        Some(own + self.upstream.usage().cpu_seconds)
    }

    /// Runs `scenario` against `peer`; `round` counts the rounds of the
    /// scenarios that run in rounds (fan-out, request/response).
    pub async fn run(
        &self,
        scenario: ScenarioKind,
        peer: &RunningPeer,
        round: usize,
        results: &mut Results,
    ) {
        match scenario {
            ScenarioKind::Holding => self.holding(peer, results).await,
            ScenarioKind::Fanout => {
                for &subscribers in &self.sizes.fanout_subscribers {
                    self.fanout(peer, subscribers, round, results).await;
                }
            }
            ScenarioKind::Throughput => {
                for &size in &self.sizes.throughput_event_sizes {
                    self.throughput(peer, size, results).await;
                }
            }
            ScenarioKind::Reqresp => self.reqresp(peer, round, results).await,
            // It starts its own instances: see `cluster_fanout`.
            ScenarioKind::ClusterFanout => {
                unreachable!("the cluster fan-out takes no peer; run it with Bench::cluster_fanout")
            }
        }
    }

    /// Waits until the upstream has closed the connections of a peer that
    /// stopped (or of the direct path's clients), so that the next peer
    /// starts beside a quiet upstream. Err describes what is still held.
    pub async fn upstream_released(&self) -> Result<(), String> {
        let timeout = self.sizes.release_timeout;
        let released =
            wait_until(timeout, || self.upstream.usage().open_fds <= RELEASE_SLACK).await;
        if released {
            Ok(())
        } else {
            Err(format!(
                "the upstream still had {} open files {timeout:?} after the peer stopped",
                self.upstream.usage().open_fds
            ))
        }
    }

    /// Waits until the peer (and the upstream) have closed the connections
    /// of streams whose clients left. Err describes what is still held.
    pub async fn connections_released(
        &self,
        peer: &RunningPeer,
        peer_baseline_fds: usize,
    ) -> Result<(), String> {
        let timeout = self.sizes.release_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let peer_fds = self.proxy_usage(peer).map_or(0, |u| u.open_fds);
            let upstream_fds = self.upstream.usage().open_fds;
            let peer_held = peer_fds.saturating_sub(peer_baseline_fds);
            if peer_held <= RELEASE_SLACK && upstream_fds <= RELEASE_SLACK {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still {peer_held} more open files than at start (upstream: {upstream_fds} open files) \
                     {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // -------------------------------------------------------------- fan-out

    async fn fanout(
        &self,
        peer: &RunningPeer,
        subscribers: usize,
        round: usize,
        results: &mut Results,
    ) {
        let sizes = &self.sizes;
        let pace = sizes.fanout_pace(subscribers);
        if let Err(reason) = self.fd_budget(peer.kind, subscribers) {
            if round == 1 {
                results.notes.push(format!(
                    "fanout K={subscribers}: {} skipped: {reason}",
                    peer.label()
                ));
            }
            return;
        }
        let plan = Arc::new(StreamPlan {
            path: EVENTS_PATH.into(),
            run: self.next_run(),
            expected: pace.events,
        });
        let batch = StreamBatch::open(&peer.target, plan.clone(), subscribers);
        let label = format!("fanout K={subscribers} {} (round {round})", peer.label());
        if let Err(err) = batch.wait_connected(Duration::from_secs(120)).await {
            results.failures.push(format!("{label}: {err}"));
        }
        if let Err(err) = batch.warm_up(&self.upstream, sizes.fanout_event_size).await {
            results.failures.push(format!("{label}: {err}"));
        }
        let upstream_clients = self.upstream.clients().await.unwrap_or(0);
        let proxy_before = self.proxy_usage(peer);
        let upstream_before = self.upstream.usage();
        let published = self
            .upstream
            .publish(plan.run, pace.events, pace.rate, sizes.fanout_event_size)
            .await;
        match &published {
            Ok(report) => {
                let planned = pace.events as f64 / pace.rate as f64;
                if report.elapsed.as_secs_f64() > planned * 1.1 + 0.1 {
                    results.notes.push(format!(
                        "{label}: the publisher fell behind: {} events took {:.2} s (planned {planned:.2} s), {} writes",
                        report.published,
                        report.elapsed.as_secs_f64(),
                        report.deliveries
                    ));
                }
            }
            Err(err) => results.failures.push(format!("{label}: publisher: {err}")),
        }
        batch.wait_complete(sizes.drain).await;
        let proxy_after = self.proxy_usage(peer);
        let upstream_after = self.upstream.usage();
        let events = batch.finish().await;
        // Some proxies notice that a client left only when they next write to
        // it: publish twice more so the closed streams are gone before the next run.
        for _ in 0..2 {
            let _ = self.upstream.warmup(64).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(failure) = events.failure(&label) {
            results.failures.push(failure);
        }
        println!(
            "  {label}: delivered {}/{} p50 {} us p99 {} us max {} us (upstream: {} clients, {} open files)",
            events.received,
            events.expected,
            events.latency_us.value_at_quantile(0.5),
            events.latency_us.value_at_quantile(0.99),
            events.latency_us.max(),
            upstream_clients,
            upstream_before.open_fds
        );
        results.fanout.push(FanoutResult {
            peer: peer.kind,
            protocol: peer.protocol,
            subscribers,
            round,
            events,
            proxy_cpu_seconds: proxy_before
                .zip(proxy_after)
                .map(|(before, after)| after.cpu_since(&before)),
            upstream_cpu_seconds: upstream_after.cpu_since(&upstream_before),
            upstream_clients,
        });
    }

    // -------------------------------------------------------------- holding

    async fn holding(&self, peer: &RunningPeer, results: &mut Results) {
        let sizes = &self.sizes;
        if peer.kind == PeerKind::Direct {
            results
                .notes
                .push("holding: the direct path has no proxy process to measure; left out".into());
            return;
        }
        let plan = Arc::new(StreamPlan {
            path: IDLE_PATH.into(),
            run: self.next_run(),
            expected: 0,
        });
        tokio::time::sleep(sizes.holding_settle).await;
        let Some(baseline) = self.proxy_usage(peer) else {
            results.failures.push(format!(
                "holding {}: cannot read the proxy's /proc entries",
                peer.label()
            ));
            return;
        };
        let mut counts = sizes.holding_streams.clone();
        counts.sort_unstable();
        let mut batch = StreamBatch::open(&peer.target, plan, 0);
        for streams in counts {
            let label = format!("holding N={streams} {}", peer.label());
            if let Err(reason) = self.fd_budget(peer.kind, streams) {
                results.notes.push(format!("{label}: skipped: {reason}"));
                break;
            }
            batch.grow(streams);
            if let Err(err) = batch.wait_connected(Duration::from_secs(180)).await {
                results.failures.push(format!("{label}: {err}"));
            }
            tokio::time::sleep(sizes.holding_settle).await;
            let (Some(idle_start), start) = (self.proxy_usage(peer), Instant::now()) else {
                results
                    .failures
                    .push(format!("{label}: the proxy process is gone"));
                break;
            };
            tokio::time::sleep(sizes.holding_idle_window).await;
            let Some(idle_end) = self.proxy_usage(peer) else {
                results
                    .failures
                    .push(format!("{label}: the proxy process is gone"));
                break;
            };
            let idle_cpu_percent =
                idle_end.cpu_since(&idle_start) * 100.0 / start.elapsed().as_secs_f64();
            let progress = batch.progress.clone();
            let result = HoldingResult {
                peer: peer.kind,
                protocol: peer.protocol,
                streams,
                connected: progress.connected(),
                failed: progress.failed(),
                first_error: None,
                baseline,
                loaded: idle_end,
                idle_cpu_percent,
            };
            println!(
                "  {label}: {} connected, {} failed, {:.0} bytes/stream, idle CPU {:.1}%",
                result.connected,
                result.failed,
                result.bytes_per_stream(),
                idle_cpu_percent
            );
            let failed = result.failed > 0;
            results.holding.push(result);
            if failed {
                break;
            }
        }
        let outcome = batch.finish().await;
        if outcome.failed > 0 {
            results.failures.push(format!(
                "holding {}: {} of {} streams failed (first error: {})",
                peer.label(),
                outcome.failed,
                outcome.streams,
                outcome.first_error.as_deref().unwrap_or("-")
            ));
            if let Some(last) = results
                .holding
                .iter_mut()
                .rev()
                .find(|r| r.peer == peer.kind && r.protocol == peer.protocol)
            {
                last.first_error = outcome.first_error;
            }
        }
    }

    /// Whether `streams` connections fit the open-file limit of the peer's
    /// busiest process and of the load generator.
    fn fd_budget(&self, kind: PeerKind, streams: usize) -> Result<(), String> {
        let limit = self.open_file_limit as usize;
        let needed = kind.fds_needed(streams);
        if needed > limit {
            return Err(format!(
                "needs ~{needed} open files in one {kind} process (limit {limit}: one per client \
                 connection plus one per upstream connection)"
            ));
        }
        if streams + 200 > limit {
            return Err(format!(
                "the load generator would need {} open files (limit {limit})",
                streams + 200
            ));
        }
        Ok(())
    }

    // ----------------------------------------------------------- throughput

    async fn throughput(&self, peer: &RunningPeer, event_size: usize, results: &mut Results) {
        let mut steps: Vec<ThroughputStep> = Vec::new();
        let mut last_pass: Option<u64> = None;
        let mut first_fail: Option<u64> = None;
        for &rate in &self.sizes.throughput_rates {
            let step = self.throughput_step(peer, event_size, rate).await;
            let passed = step.passed;
            steps.push(step);
            if passed {
                last_pass = Some(rate);
            } else {
                first_fail = Some(rate);
                break;
            }
        }
        if let (Some(mut low), Some(mut high)) = (last_pass, first_fail) {
            for _ in 0..self.sizes.throughput_refinements {
                let rate = (low + high) / 2;
                if rate <= low || rate >= high {
                    break;
                }
                let step = self.throughput_step(peer, event_size, rate).await;
                if step.passed {
                    low = rate;
                } else {
                    high = rate;
                }
                steps.push(step);
            }
        }
        // Losing events at the lowest rate is a broken chain, not a limit.
        if let Some(first) = steps.first() {
            if first.received < first.expected {
                results.failures.push(format!(
                    "throughput {} {event_size} B at {}/s: lost {} of {} events{}",
                    peer.label(),
                    first.rate,
                    first.expected - first.received,
                    first.expected,
                    first
                        .error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        results.throughput.push(ThroughputResult {
            peer: peer.kind,
            protocol: peer.protocol,
            event_size,
            steps,
        });
    }

    async fn throughput_step(
        &self,
        peer: &RunningPeer,
        event_size: usize,
        rate: u64,
    ) -> ThroughputStep {
        let count = ((rate as f64) * self.sizes.throughput_step.as_secs_f64()).max(1.0) as u64;
        let plan = Arc::new(StreamPlan {
            path: EVENTS_PATH.into(),
            run: self.next_run(),
            expected: count,
        });
        let batch = StreamBatch::open(&peer.target, plan.clone(), 1);
        let mut error = batch.wait_connected(Duration::from_secs(10)).await.err();
        if error.is_none() {
            error = batch.warm_up(&self.upstream, event_size).await.err();
        }
        if error.is_none() {
            error = self
                .upstream
                .publish(plan.run, count, rate, event_size)
                .await
                .err();
        }
        batch.wait_complete(self.sizes.drain).await;
        let events = batch.finish().await;
        let error = error.or(events.first_error.clone());
        let achieved_rate = if events.receive_span.is_zero() {
            0.0
        } else {
            events.received.saturating_sub(1) as f64 / events.receive_span.as_secs_f64()
        };
        let p99_us = events.latency_us.value_at_quantile(0.99);
        let passed = error.is_none()
            && events.lost() == 0
            && events.duplicates == 0
            && p99_us < THROUGHPUT_P99_LIMIT.as_micros() as u64
            && (count < 10 || achieved_rate >= THROUGHPUT_MIN_ACHIEVED * rate as f64);
        println!(
            "  throughput {} {event_size} B {rate}/s: {}/{} achieved {:.0}/s p99 {} us {}",
            peer.label(),
            events.received,
            count,
            achieved_rate,
            p99_us,
            if passed { "pass" } else { "FAIL" }
        );
        ThroughputStep {
            rate,
            expected: count,
            received: events.received,
            achieved_rate,
            p50_us: events.latency_us.value_at_quantile(0.5),
            p99_us,
            max_us: events.latency_us.max(),
            error,
            passed,
        }
    }

    // ------------------------------------------------------ request/response

    /// One round of request/response against `peer`.
    async fn reqresp(&self, peer: &RunningPeer, round: usize, results: &mut Results) {
        // HTTP/2 keeps several requests in flight per connection; a new
        // connection per request carries one.
        let streams = match peer.protocol {
            Protocol::H1 => 1,
            Protocol::H2 => self.sizes.h2_streams.max(1),
        };
        let keepalive = self
            .load_phase(peer, peer.target.clone(), streams, ConnectionUse::KeepAlive)
            .await;
        let handshake_target: Target = if peer.target.tls.is_some() {
            peer.target
                .with_tls(Some(self.full_handshake_tls.get(peer.protocol)))
        } else {
            peer.target.clone()
        };
        let handshakes = self
            .load_phase(peer, handshake_target, 1, ConnectionUse::NewPerRequest)
            .await;
        for (what, phase) in [("keep-alive", &keepalive), ("new connection", &handshakes)] {
            let outcome = &phase.outcome;
            println!(
                "  reqresp {} {what} (round {round}): {:.0} req/s, {} errors, p99 {} us",
                peer.label(),
                outcome.per_second(),
                outcome.errors,
                outcome.latency_us.value_at_quantile(0.99)
            );
            if outcome.completed == 0 {
                results.failures.push(format!(
                    "reqresp {} {what} (round {round}): no request completed ({})",
                    peer.label(),
                    outcome
                        .first_error
                        .as_deref()
                        .unwrap_or("no error reported")
                ));
            } else if outcome.errors > 0 {
                results.notes.push(format!(
                    "reqresp {} {what} (round {round}): {} errors (first: {})",
                    peer.label(),
                    outcome.errors,
                    outcome.first_error.as_deref().unwrap_or("-")
                ));
            }
        }
        results.reqresp.push(ReqRespResult {
            peer: peer.kind,
            protocol: peer.protocol,
            round,
            keepalive,
            handshakes,
        });
    }

    /// A warm-up, then `target` under load for the run's duration, with the
    /// CPU the proxy and the harness spent meanwhile.
    async fn load_phase(
        &self,
        peer: &RunningPeer,
        target: Target,
        streams: usize,
        connections: ConnectionUse,
    ) -> LoadPhase {
        let sizes = &self.sizes;
        let load = |duration| {
            loadgen::request_load(
                target.clone(),
                STATIC_PATH,
                sizes.reqresp_connections,
                streams,
                duration,
                connections,
            )
        };
        let _ = load(sizes.reqresp_warmup).await;
        let before = self.proxy_usage(peer);
        let harness_before = self.harness_cpu_seconds();
        let outcome = load(sizes.reqresp_duration).await;
        let after = self.proxy_usage(peer);
        LoadPhase {
            outcome,
            cpu_seconds: before.zip(after).map(|(b, a)| a.cpu_since(&b)),
            harness_cpu_seconds: spent(harness_before, self.harness_cpu_seconds()),
        }
    }

    // ------------------------------------------------------- cluster fan-out

    /// The cluster fan-out: a real `redis-server`, then in each round every
    /// protocol and every layout in turn (one instance; three without Redis;
    /// three with --cluster), each on fresh instances. Every layout gets the
    /// same subscribers and events. False if Redis or an instance did not
    /// start: a missing redis-server fails the run rather than skipping it.
    pub async fn cluster_fanout(
        &self,
        setup: &PeerSetup,
        protocols: &[Protocol],
        results: &mut Results,
    ) -> bool {
        results.redis_version = Some(peers::redis_version());
        let redis = match RedisServer::start(&setup.workdir.join("redis")).await {
            Ok(redis) => redis,
            Err(err) => {
                eprintln!("cluster-fanout: {err}");
                results.failures.push(format!("cluster-fanout: {err}"));
                return false;
            }
        };
        println!("cluster-fanout: redis-server on {}", redis.url());
        let mut all_started = true;
        let rounds = self.sizes.cluster_rounds;
        for round in 1..=rounds {
            println!("ClusterFanout: round {round} of {rounds}");
            for &protocol in protocols {
                for layout in ClusterLayout::ALL {
                    all_started &= self
                        .cluster_run(setup, &redis, layout, protocol, round, results)
                        .await;
                }
            }
        }
        redis.stop().await;
        all_started
    }

    /// One layout over one protocol: start its instances, spread the
    /// subscribers over them, publish, count, stop. False if an instance
    /// did not start.
    async fn cluster_run(
        &self,
        setup: &PeerSetup,
        redis: &RedisServer,
        layout: ClusterLayout,
        protocol: Protocol,
        round: usize,
        results: &mut Results,
    ) -> bool {
        let sizes = &self.sizes;
        let run = self.next_run();
        let label = format!(
            "cluster-fanout {} {protocol} N={} (round {round})",
            layout.name(),
            sizes.cluster_subscribers
        );
        // A key prefix of its own per run: no lease or log of an earlier
        // run (whose lease may not have expired yet) is in the way.
        let mut extra: Vec<String> = Vec::new();
        let mut env: Vec<(&str, &str)> = Vec::new();
        if layout == ClusterLayout::Cluster {
            extra.extend([
                "--cluster".to_string(),
                redis.url(),
                "--cluster-key-prefix".to_string(),
                format!("ssegate-bench-{run}:"),
            ]);
            // "cluster: reading the upstream ..." says which instance reads it.
            env.push(("RUST_LOG", "warn,ssegate::cluster=info"));
        }
        let requests_before = self.upstream.event_requests().await;
        let mut instances: Vec<RunningPeer> = Vec::new();
        for i in 0..layout.instances() {
            let name = format!("cluster-{}-{protocol}-{}", layout.name(), i + 1);
            println!("{label}: starting instance {}", i + 1);
            match peers::start_instance(protocol, setup, &name, &extra, &env).await {
                Ok(instance) => {
                    record_instance(results, &setup.ssegate_bin, &instance);
                    instances.push(instance);
                }
                Err(err) => {
                    eprintln!("{label}: instance {} FAILED TO START: {err}", i + 1);
                    results.failures.push(format!(
                        "{label}: instance {} failed to start: {err}",
                        i + 1
                    ));
                    for instance in instances {
                        instance.stop().await;
                    }
                    let _ = self.upstream_released().await;
                    return false;
                }
            }
        }
        let targets: Vec<Target> = instances.iter().map(|i| i.target.clone()).collect();
        let plan = Arc::new(StreamPlan {
            path: EVENTS_PATH.into(),
            run,
            expected: sizes.cluster_events,
        });
        let batch = StreamBatch::open_spread(&targets, plan.clone(), sizes.cluster_subscribers);
        if let Err(err) = batch.wait_connected(Duration::from_secs(60)).await {
            results.failures.push(format!("{label}: {err}"));
        }
        if let Err(err) = batch.warm_up(&self.upstream, sizes.fanout_event_size).await {
            results.failures.push(format!("{label}: {err}"));
        }
        let cpu = |instances: &[RunningPeer]| -> Option<f64> {
            instances
                .iter()
                .map(|i| i.usage().map(|u| u.cpu_seconds))
                .sum()
        };
        let cluster = layout == ClusterLayout::Cluster;
        if cluster {
            if let Err(err) = redis.command(&["CONFIG", "RESETSTAT"]).await {
                results.notes.push(format!("{label}: {err}"));
            }
        }
        let proxy_before = cpu(&instances);
        let redis_before = redis.usage();
        let published = self
            .upstream
            .publish(
                run,
                sizes.cluster_events,
                sizes.cluster_rate,
                sizes.fanout_event_size,
            )
            .await;
        if let Err(err) = &published {
            results.failures.push(format!("{label}: publisher: {err}"));
        }
        batch.wait_complete(sizes.drain).await;
        let proxy_after = cpu(&instances);
        let redis_after = redis.usage();
        let redis_calls = if cluster {
            match redis.command(&["INFO", "commandstats"]).await {
                Ok(info) => command_calls(&info),
                Err(err) => {
                    results.notes.push(format!("{label}: {err}"));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let (events, by_instance) = batch.finish_by_target().await;
        // The instances notice that a client left when they next write to it.
        for _ in 0..2 {
            let _ = self.upstream.warmup(64).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut readers = Vec::new();
        for (i, instance) in instances.iter().enumerate() {
            let log = instance.log_text();
            let reads = log.matches("cluster: reading the upstream").count();
            if reads > 0 {
                readers.push((i + 1, reads));
            }
            if log.contains("redis unavailable") {
                results.notes.push(format!(
                    "{label}: instance {} logged \"redis unavailable\" (it read the upstream itself meanwhile)",
                    i + 1
                ));
            }
            if instance.usage().is_none() {
                results.failures.push(format!(
                    "{label}: instance {} exited during the run; its output:\n{}",
                    i + 1,
                    instance.log_tail()
                ));
            }
        }
        for instance in instances {
            instance.stop().await;
        }
        if let Err(held) = self.upstream_released().await {
            results.notes.push(format!("{label}: {held}"));
        }
        let upstream_requests = match (requests_before, self.upstream.event_requests().await) {
            (Ok(before), Ok(after)) => Some(after.saturating_sub(before)),
            (Err(err), _) | (_, Err(err)) => {
                results.failures.push(format!("{label}: {err}"));
                None
            }
        };
        if let Some(failure) = events.failure(&label) {
            results.failures.push(failure);
        }
        let expected_requests = layout.expected_upstream_requests();
        if upstream_requests.is_some_and(|n| n != expected_requests) {
            results.failures.push(format!(
                "{label}: the upstream got {} requests for the stream (expected {expected_requests})",
                upstream_requests.unwrap_or(0)
            ));
        }
        if layout == ClusterLayout::Cluster && readers.iter().map(|(_, n)| n).sum::<usize>() != 1 {
            results.failures.push(format!(
                "{label}: expected one \"cluster: reading the upstream\" log line over all instances, found {}",
                if readers.is_empty() {
                    "none".to_string()
                } else {
                    readers
                        .iter()
                        .map(|(i, n)| format!("{n} on instance {i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        println!(
            "  {label}: delivered {}/{} p50 {} us p99 {} us max {} us, upstream requests {}, readers {:?}",
            events.received,
            events.expected,
            events.latency_us.value_at_quantile(0.5),
            events.latency_us.value_at_quantile(0.99),
            events.latency_us.max(),
            upstream_requests.map_or("?".into(), |n| n.to_string()),
            readers
        );
        if !redis_calls.is_empty() {
            println!("  {label}: redis commands {redis_calls:?}");
        }
        results.cluster.push(ClusterResult {
            layout,
            protocol,
            round,
            events,
            by_instance,
            upstream_requests,
            readers,
            proxy_cpu_seconds: spent(proxy_before, proxy_after),
            redis_calls,
            redis_cpu_seconds: cluster
                .then(|| {
                    spent(
                        redis_before.map(|u| u.cpu_seconds),
                        redis_after.map(|u| u.cpu_seconds),
                    )
                })
                .flatten(),
        });
        true
    }
}

/// `cmdstat_xadd:calls=200,usec=...` lines of `INFO commandstats` as
/// (command, calls), most called first.
fn command_calls(info: &str) -> Vec<(String, u64)> {
    let mut calls: Vec<(String, u64)> = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect();
    calls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    calls
}

/// Records the cluster fan-out's ssegate (as ssegate-shared, which it is
/// but for its flags) in the report's peer table the first time an
/// instance starts over a protocol.
fn record_instance(results: &mut Results, ssegate_bin: &std::path::Path, instance: &RunningPeer) {
    let kind = PeerKind::SsegateShared;
    if !results.peers.iter().any(|r| r.kind == kind) {
        results.peers.push(PeerRecord {
            kind,
            version: peers::version(kind, ssegate_bin),
            negotiated: Vec::new(),
        });
    }
    if let Some(record) = results.peers.iter_mut().find(|r| r.kind == kind) {
        if !record.tried(instance.protocol) {
            let negotiated = match &instance.tls {
                Some(tls) => Negotiated::Tls(tls.clone()),
                None => Negotiated::Plain,
            };
            record.negotiated.push((instance.protocol, negotiated));
        }
    }
}

/// CPU seconds between two readings, when both were taken.
fn spent(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some((after? - before?).max(0.0))
}

/// A set of event streams opened together, with their shared progress
/// counters; stream i goes to target i mod targets.
struct StreamBatch {
    targets: Vec<Target>,
    plan: Arc<StreamPlan>,
    progress: Arc<StreamProgress>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<StreamOutcome>>,
}

impl StreamBatch {
    fn open(target: &Target, plan: Arc<StreamPlan>, streams: usize) -> Self {
        Self::open_spread(std::slice::from_ref(target), plan, streams)
    }

    /// Streams spread evenly over `targets` (not empty).
    fn open_spread(targets: &[Target], plan: Arc<StreamPlan>, streams: usize) -> Self {
        let mut batch = StreamBatch {
            targets: targets.to_vec(),
            plan,
            progress: Arc::new(StreamProgress::default()),
            slots: Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        batch.grow(streams);
        batch
    }

    /// Opens streams until there are `streams` in all.
    fn grow(&mut self, streams: usize) {
        for index in self.tasks.len()..streams {
            self.tasks.push(tokio::spawn(loadgen::event_stream(
                self.targets[index % self.targets.len()].clone(),
                index,
                self.plan.clone(),
                self.progress.clone(),
                self.slots.clone(),
                self.stop.clone(),
            )));
        }
    }

    async fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        let total = self.tasks.len();
        let progress = &self.progress;
        let settled = wait_until(timeout, || {
            progress.connected() + progress.failed() >= total
        })
        .await;
        if !settled {
            return Err(format!(
                "only {} of {total} streams connected within {timeout:?} ({} failed)",
                progress.connected(),
                progress.failed()
            ));
        }
        if progress.failed() > 0 {
            return Err(format!(
                "{} of {total} streams failed to open",
                progress.failed()
            ));
        }
        Ok(())
    }

    /// Publishes warm-up events until every open stream has seen one, so the
    /// measured run starts with every subscription live end to end.
    async fn warm_up(&self, upstream: &UpstreamProcess, event_size: usize) -> Result<(), String> {
        let total = self.tasks.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            upstream.warmup(event_size).await?;
            let progress = &self.progress;
            if wait_until(Duration::from_millis(200), || {
                progress.warmed() + progress.failed() >= total
            })
            .await
            {
                return Ok(());
            }
        }
        Err(format!(
            "only {} of {total} streams saw a warm-up event within 30 s",
            self.progress.warmed()
        ))
    }

    /// Waits until every stream has all its events (or failed). Late events
    /// still count as delivered (with their latency): the wait ends only when
    /// no event has arrived for `drain`, or after `MAX_DRAIN`.
    async fn wait_complete(&self, drain: Duration) {
        let total = self.tasks.len();
        let progress = &self.progress;
        let started = Instant::now();
        let mut last_count = progress.events();
        let mut last_change = Instant::now();
        while progress.complete() + progress.failed() < total {
            let now = Instant::now();
            if now - last_change >= drain || now - started >= MAX_DRAIN {
                return;
            }
            let count = progress.events();
            if count != last_count {
                last_count = count;
                last_change = now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes every stream and merges what they counted.
    async fn finish(self) -> BatchOutcome {
        let plan = self.plan.clone();
        BatchOutcome::merge(&plan, self.close().await)
    }

    /// Closes every stream; what they counted, all together and per target.
    async fn finish_by_target(self) -> (BatchOutcome, Vec<BatchOutcome>) {
        let plan = self.plan.clone();
        let targets = self.targets.len();
        let outcomes = self.close().await;
        let mut groups: Vec<Vec<StreamOutcome>> = vec![Vec::new(); targets];
        for (index, outcome) in outcomes.iter().enumerate() {
            groups[index % targets].push(outcome.clone());
        }
        let parts = groups
            .into_iter()
            .map(|group| BatchOutcome::merge(&plan, group))
            .collect();
        (BatchOutcome::merge(&plan, outcomes), parts)
    }

    /// Closes every stream; each stream's outcome, in index order.
    async fn close(self) -> Vec<StreamOutcome> {
        self.stop.cancel();
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match task.await {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) => outcomes.push(StreamOutcome {
                    error: Some(format!("stream task failed: {err}")),
                    ..StreamOutcome::default()
                }),
            }
        }
        outcomes
    }
}

/// Polls `done` every 10 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Latency quantile in milliseconds.
pub fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
}
