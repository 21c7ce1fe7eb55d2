//! A group of upstream targets: which one a request goes to (the balancing
//! policy), which ones are fit to take it (health), and trying the next
//! target when one fails before the request reached it.
//!
//! Balancing state is kept per serving thread (the round-robin position,
//! least-conn's open counts), as nginx keeps it per worker: a request then
//! writes no counter another thread writes, and with connections spread
//! evenly over the threads each thread's view is the group's in small.
//!
//! Health has two sources. Passive: a target that refuses a connection, does
//! not accept one in time, or resets a new one before any response byte is
//! left out for the health interval, then tried again. Active (with a health
//! check path): a GET every interval; three failures in a row mark a target
//! down, two successes mark it up again.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::{
    Endpoint, RequestBody, ResponseBody, TargetError, Upstream, UpstreamRequest, UpstreamSettings,
};
use crate::error::ProxyError;
use crate::message::ResponseHead;
use crate::metrics::{TargetMetrics, UpstreamResult};

/// The `result` label of one attempt at a target.
fn upstream_result<T>(sent: &Result<T, TargetError>) -> UpstreamResult {
    match sent {
        Ok(_) => UpstreamResult::Ok,
        Err(TargetError::Unreachable(_)) => UpstreamResult::Unreachable,
        Err(TargetError::Unanswered(_)) => UpstreamResult::Unanswered,
        Err(TargetError::Failed(err)) => match err {
            ProxyError::UpstreamTimeout(_) => UpstreamResult::Timeout,
            ProxyError::ClientBody(_)
            | ProxyError::ClientTimeout(_)
            | ProxyError::BodyTooLarge(_) => UpstreamResult::Client,
            _ => UpstreamResult::Error,
        },
    }
}

/// A counter on a cache line of its own: counters of different serving
/// threads must not share one, or each write would evict the other's.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counter(AtomicUsize);

/// Failed checks in a row that mark a target down.
const CHECKS_TO_FAIL: u32 = 3;
/// Passed checks in a row that mark a down target up again.
const CHECKS_TO_PASS: u32 = 2;

/// How a request picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// The target with the fewest open requests and streams (right for
    /// long-lived event streams, which a rotation would pile up unevenly).
    LeastConn,
    /// Each target in turn.
    RoundRobin,
    /// The same client address to the same target while the targets stay
    /// up.
    IpHash,
    /// A target at random.
    Random,
}

/// Active health checks: `GET path` every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
}

/// One target of a group.
#[derive(Debug)]
pub struct Target {
    /// The URL as configured, for logs (each access line holds a pointer
    /// to it).
    url: Arc<str>,
    /// Host header of health checks.
    authority: String,
    upstream: Upstream,
    /// Requests and streams open on this target, per serving thread.
    open: Vec<Arc<Counter>>,
    /// The active checks' verdict (true without active checks).
    up: AtomicBool,
    passed: AtomicU32,
    failed: AtomicU32,
    /// Left out by a passive failure until this time (ms since the group's
    /// start).
    out_until_ms: AtomicU64,
    /// Requests sent to it, by result (`--admin`).
    metrics: TargetMetrics,
}

impl Target {
    /// `url` for logs, `endpoint` to connect to.
    pub fn new(url: String, endpoint: Endpoint, settings: &UpstreamSettings) -> Self {
        Target {
            metrics: TargetMetrics::default(),
            url: url.into(),
            authority: endpoint.host_header().to_owned(),
            upstream: Upstream::new(endpoint, settings),
            open: (0..settings.threads.max(1))
                .map(|_| Arc::new(Counter::default()))
                .collect(),
            up: AtomicBool::new(true),
            passed: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            out_until_ms: AtomicU64::new(0),
        }
    }

    /// Counts its requests with `metrics`.
    pub fn with_metrics(mut self, metrics: TargetMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &TargetMetrics {
        &self.metrics
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This target's connections (for their pools' counters).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Requests and streams open on this target now, from every thread.
    pub fn open(&self) -> usize {
        self.open.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }

    /// The open count of serving thread `worker`.
    fn open_on(&self, worker: usize) -> &Arc<Counter> {
        &self.open[worker % self.open.len()]
    }

    /// Whether the active health checks find it up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn available(&self, now_ms: u64) -> bool {
        self.is_up() && self.out_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records one active check's result; logs a change of state.
    fn record_check(&self, result: Result<StatusCode, ProxyError>) {
        let passed =
            matches!(&result, Ok(status) if status.is_success() || status.is_redirection());
        if passed {
            self.failed.store(0, Ordering::Relaxed);
            let passes = self.passed.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_up() && passes >= CHECKS_TO_PASS {
                self.up.store(true, Ordering::Relaxed);
                tracing::info!(target_url = %self.url, "upstream target is up (health check passed)");
            }
        } else {
            self.passed.store(0, Ordering::Relaxed);
            let failures = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_up() && failures >= CHECKS_TO_FAIL {
                self.up.store(false, Ordering::Relaxed);
                let reason = match result {
                    Ok(status) => format!("status {status}"),
                    Err(err) => err.to_string(),
                };
                tracing::warn!(target_url = %self.url, %reason, "upstream target is down (health check failed {failures} times)");
            }
        }
    }
}

/// Counts a request or stream as open on its target until dropped.
#[derive(Debug)]
pub struct OpenGuard(Arc<Counter>);

impl OpenGuard {
    fn new(open: &Arc<Counter>) -> Self {
        open.0.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target's answer to a request.
pub struct Answer {
    pub head: ResponseHead,
    pub body: ResponseBody,
    /// The URL of the target that answered, as configured.
    pub target: Arc<str>,
}

/// The targets requests go to.
#[derive(Debug)]
pub struct Group {
    targets: Vec<Target>,
    balance: Balance,
    /// Round-robin position, and least-conn's tie-breaker, per serving
    /// thread.
    cursors: Vec<Counter>,
    /// How long a passive failure leaves a target out.
    out_for: Duration,
    check: Option<HealthCheck>,
    started: Instant,
    /// Stops the health checks when a reload drops the group.
    stop: CancellationToken,
}

impl Group {
    /// A group of `targets` (at least one) for `threads` serving threads.
    pub fn new(
        targets: Vec<Target>,
        threads: usize,
        balance: Balance,
        out_for: Duration,
        check: Option<HealthCheck>,
    ) -> Self {
        Group {
            targets,
            balance,
            cursors: (0..threads.max(1)).map(|_| Counter::default()).collect(),
            out_for,
            check,
            started: Instant::now(),
            stop: CancellationToken::new(),
        }
    }

    /// Ends the group's health checks (it is no longer configured; its
    /// open requests and streams go on).
    pub fn stop_health_checks(&self) {
        self.stop.cancel();
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether `target` takes requests now: up by the health checks and
    /// not left out after a failure.
    pub fn is_available(&self, target: &Target) -> bool {
        target.available(self.now_ms())
    }

    /// Whether requests and streams open on a target are counted (least
    /// conn needs them only with several targets).
    pub fn counts_open(&self) -> bool {
        self.targets.len() > 1
    }

    /// Sends `request` to a target chosen by the policy among the available
    /// ones. A target that cannot be reached, or (for a request that may be
    /// resent) closes a new connection before answering, is left out and
    /// the request goes to the next available target. The answer says
    /// which target gave it.
    pub async fn send<B: RequestBody>(
        &self,
        worker: usize,
        client_ip: Option<IpAddr>,
        mut request: UpstreamRequest<'_, B>,
    ) -> Result<Answer, ProxyError> {
        let count = self.targets.len();
        let first = self.pick(worker, client_ip);
        let mut last_error = None;
        for step in 0..count {
            let target = &self.targets[(first + step) % count];
            if step > 0 && !target.available(self.now_ms()) {
                continue;
            }
            // One target: nothing to balance, nothing to count.
            let open = (count > 1).then(|| OpenGuard::new(target.open_on(worker)));
            let sent = target.upstream.send(worker, &mut request).await;
            target.metrics.record(upstream_result(&sent));
            match sent {
                Ok((head, mut body)) => {
                    if let Some(open) = open {
                        body.count_as_open(open);
                    }
                    return Ok(Answer {
                        head,
                        body,
                        target: target.url.clone(),
                    });
                }
                Err(TargetError::Unreachable(err)) => {
                    self.leave_out(target, &err);
                    last_error = Some(err);
                }
                Err(TargetError::Unanswered(err)) if request.resendable => {
                    self.leave_out(target, &err);
                    last_error = Some(err);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(last_error.unwrap_or_else(|| ProxyError::UpstreamConnect("no upstream target".into())))
    }

    /// The first target to try: by the policy among the available targets,
    /// or by the policy alone when none is available (a request then still
    /// has a chance).
    fn pick(&self, worker: usize, client_ip: Option<IpAddr>) -> usize {
        let count = self.targets.len();
        if count == 1 {
            return 0;
        }
        let start = match (self.balance, client_ip) {
            (Balance::IpHash, Some(ip)) => {
                let mut hasher = std::hash::DefaultHasher::new();
                ip.hash(&mut hasher);
                hasher.finish() as usize % count
            }
            (Balance::Random, _) => std::hash::RandomState::new().hash_one(()) as usize % count,
            _ => {
                let cursor = &self.cursors[worker % self.cursors.len()].0;
                cursor.fetch_add(1, Ordering::Relaxed) % count
            }
        };
        let now = self.now_ms();
        let mut least: Option<(usize, usize)> = None;
        for step in 0..count {
            let index = (start + step) % count;
            let target = &self.targets[index];
            if !target.available(now) {
                continue;
            }
            if self.balance != Balance::LeastConn {
                return index;
            }
            let open = target.open_on(worker).0.load(Ordering::Relaxed);
            if least.is_none_or(|(_, fewest)| open < fewest) {
                least = Some((index, open));
            }
        }
        least.map_or(start, |(index, _)| index)
    }

    /// Leaves `target` out for the health interval after `err`.
    fn leave_out(&self, target: &Target, err: &ProxyError) {
        let now = self.now_ms();
        let until = now.saturating_add(u64::try_from(self.out_for.as_millis()).unwrap_or(u64::MAX));
        let before = target.out_until_ms.swap(until, Ordering::Relaxed);
        if self.targets.len() > 1 && before <= now {
            tracing::warn!(target_url = %target.url, error = %err, out_for = ?self.out_for, "upstream target left out");
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Starts the active health checks, if configured: one task per target
    /// on the current runtime, until `shutdown`. `base_path` prefixes the
    /// check's path, as it does every request's.
    pub fn spawn_health_checks(self: &Arc<Self>, base_path: &str, shutdown: &CancellationToken) {
        let Some(check) = self.check.clone() else {
            return;
        };
        for index in 0..self.targets.len() {
            let group = self.clone();
            let shutdown = shutdown.clone();
            let stop = self.stop.clone();
            let path = format!("{base_path}{}", check.path);
            tokio::spawn(async move {
                let target = &group.targets[index];
                let head = format!(
                    "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: ssegate-health-check\r\nconnection: close\r\n\r\n",
                    target.authority
                );
                let mut ticks = tokio::time::interval(check.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = shutdown.cancelled() => return,
                        () = stop.cancelled() => return,
                    }
                    let probe = target.upstream.probe(head.clone().into_bytes());
                    let result = match tokio::time::timeout(check.interval, probe).await {
                        Ok(result) => result,
                        Err(_) => Err(ProxyError::UpstreamConnect(format!(
                            "no answer within {:?}",
                            check.interval
                        ))),
                    };
                    target.record_check(result);
                }
            });
        }
    }
}
