//! The report: target/bench-report/report.md with one table per scenario
//! (absolute figures and ssegate ÷ peer ratios; the row of the direct path
//! gives ssegate ÷ direct), the targets ssegate is held to, SVG plots
//! (latency distribution per proxy, memory per stream against N) and
//! results.json with the same figures for machines.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::{json, Value};

use crate::peers::PeerKind;
use crate::scenarios::{
    quantile_ms, FanoutResult, ReqRespResult, Results, Sizes, THROUGHPUT_P99_LIMIT,
};

/// Where the report was written.
pub struct Written {
    pub markdown: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Context printed at the top of the report.
pub struct RunInfo {
    pub command: String,
    pub mode: &'static str,
    pub machine: String,
    pub open_file_limit: u64,
    pub sizes: Sizes,
    pub elapsed: std::time::Duration,
}

pub fn write(dir: &Path, info: &RunInfo, results: &Results) -> Result<Written, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut plot_errors = Vec::new();

    let mut md = String::new();
    header(&mut md, info, results);
    targets(&mut md, results);

    // (a) fan-out
    let fanout_sizes: BTreeSet<usize> = results.fanout.iter().map(|r| r.subscribers).collect();
    if !fanout_sizes.is_empty() {
        md.push_str("\n## (a) Fan-out: K subscribers of one published stream\n\n");
        let _ = writeln!(
            md,
            "Events of {} B, published once to every subscriber of `/sse/events`: {}.{} Latency is from the \
             upstream's timestamp (taken when the publisher writes the event, before its write loop over \
             clients) to the load generator parsing the event. CPU is utime+stime of the proxy's processes \
             during the run, per delivered event. Late events count as delivered, with their latency; \
             \"lost\" events had not arrived when no event had arrived for {:?}. \"ssegate ÷ this\" compares \
             p99 latency and CPU per event (below 1 is better for ssegate). This ran in {} rounds, each \
             taking every peer in turn on a fresh process; each row (and plot) is the peer's round with the \
             median p99, and \"lost\" counts that round (the targets' zero-loss line counts every round).\n",
            info.sizes.fanout_event_size,
            fanout_sizes
                .iter()
                .map(|&k| {
                    let pace = info.sizes.fanout_pace(k);
                    format!("K={k}: {} events at {}/s", pace.events, pace.rate)
                })
                .collect::<Vec<_>>()
                .join("; "),
            if info.sizes.fanout_rate.is_none() {
                " The rate falls as K grows, for about the same deliveries per second at every K, so a \
                 round's p99 rests on many bursts rather than on its worst one or two."
            } else {
                ""
            },
            info.sizes.drain,
            info.sizes.rounds
        );
    }
    for &subscribers in &fanout_sizes {
        fanout_table(&mut md, results, subscribers);
        let name = format!("fanout-latency-K{subscribers}.svg");
        match plot_fanout(&dir.join(&name), results, subscribers) {
            Ok(()) => {
                let _ = writeln!(md, "\n![fan-out latency, K={subscribers}]({name})\n");
                files.push(dir.join(&name));
            }
            Err(err) => plot_errors.push(format!("{name}: {err}")),
        }
    }

    // (b) holding
    if !results.holding.is_empty() {
        holding_table(&mut md, results, info);
        let name = "holding-memory.svg";
        match plot_holding(&dir.join(name), results) {
            Ok(()) => {
                let _ = writeln!(md, "\n![memory per idle stream against N]({name})\n");
                files.push(dir.join(name));
            }
            Err(err) => plot_errors.push(format!("{name}: {err}")),
        }
    }

    // (c) throughput
    if !results.throughput.is_empty() {
        throughput_table(&mut md, results, info);
    }

    // (d) request/response
    if !results.reqresp.is_empty() {
        reqresp_table(&mut md, results, info);
    }

    failures_and_notes(&mut md, results, &plot_errors);

    let markdown = dir.join("report.md");
    std::fs::write(&markdown, md).map_err(|e| format!("{}: {e}", markdown.display()))?;
    let json_path = dir.join("results.json");
    let json = serde_json::to_string_pretty(&to_json(info, results)).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    files.push(json_path);
    Ok(Written { markdown, files })
}

// ----------------------------------------------------------------- helpers

fn ratio(ssegate: Option<f64>, peer: Option<f64>) -> String {
    match (ssegate, peer) {
        (Some(s), Some(p)) if p > 0.0 && s.is_finite() => format!("{:.2}", s / p),
        _ => "-".into(),
    }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn header(md: &mut String, info: &RunInfo, results: &Results) {
    let _ = writeln!(md, "# ssegate side by side ({} run)\n", info.mode);
    let _ = writeln!(md, "- Command: `{}`", info.command);
    let _ = writeln!(md, "- Machine: {}", info.machine);
    let _ = writeln!(
        md,
        "- Open-file limit per process: {} (hard; the load generator, the upstream and every peer process each have it)",
        info.open_file_limit
    );
    let _ = writeln!(md, "- Wall time: {:.0} s", info.elapsed.as_secs_f64());
    let _ = writeln!(
        md,
        "- Everything shares the machine's cores: the load generator (this process, 2 runtime threads), the upstream \
         (a child process, 2 threads) and the peer (2 worker threads or processes). Figures compare peers under \
         the same conditions; they are not the peers' absolute capacity.\n"
    );
    md.push_str(
        "| peer | version | workers | negotiated by the load generator |\n|---|---|---|---|\n",
    );
    for (kind, version, tls) in &results.peers {
        let workers = match kind {
            PeerKind::Direct => "-".to_string(),
            PeerKind::Nginx => "2 worker processes (+ master)".into(),
            PeerKind::Caddy => "GOMAXPROCS=2".into(),
            PeerKind::Haproxy => "nbthread 2".into(),
            _ => "--threads 2".into(),
        };
        let tls = tls.as_ref().map_or("plain HTTP".into(), |t| t.to_string());
        let _ = writeln!(md, "| {kind} | {version} | {workers} | {tls} |");
    }
    md.push_str(
        "\nThe client offers only X25519, TLS 1.3/1.2 with AES-128-GCM and ALPN http/1.1. nginx, HAProxy and Caddy are \
         also pinned to X25519 server-side; ssegate's binary has no option for key-exchange groups (its default \
         rustls provider also allows X25519MLKEM768, P-256 and P-384), so for ssegate X25519 is pinned by the \
         client only.\n",
    );
}

/// Pass/miss against the targets the issue sets for ssegate.
fn targets(md: &mut String, results: &Results) {
    let mut rows: Vec<(String, String, &'static str)> = Vec::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    // Fan-out p99 <= nginx, median rounds, with each round's ratio.
    let fanout_sizes: BTreeSet<usize> = results.fanout.iter().map(|r| r.subscribers).collect();
    for ssegate in [PeerKind::Ssegate, PeerKind::SsegateShared] {
        for &subscribers in &fanout_sizes {
            let summaries = fanout_summaries(results, subscribers);
            let find = |kind: PeerKind| summaries.iter().find(|r| r.peer() == kind);
            let (Some(s), Some(n)) = (find(ssegate), find(PeerKind::Nginx)) else {
                continue;
            };
            let (sp, np) = (p99_ms(s.median), p99_ms(n.median));
            rows.push((
                format!("fan-out K={subscribers}: {ssegate} p99 <= nginx p99"),
                format!(
                    "median {sp:.2} ms vs {np:.2} ms ({:.2}x; by round {})",
                    sp / np,
                    round_ratios(&s.rounds, &n.rounds, p99_ms)
                ),
                verdict(sp <= np),
            ));
        }
    }
    // Zero loss.
    for ssegate in [PeerKind::Ssegate, PeerKind::SsegateShared] {
        let mut lost = 0u64;
        let mut failed = 0usize;
        let mut measured = false;
        for r in results.fanout.iter().filter(|r| r.peer == ssegate) {
            lost += r.events.lost();
            failed += r.events.failed;
            measured = true;
        }
        for r in results.holding.iter().filter(|r| r.peer == ssegate) {
            failed += r.failed;
            measured = true;
        }
        for r in results.throughput.iter().filter(|r| r.peer == ssegate) {
            if let Some(first) = r.steps.first() {
                lost += first.expected - first.received.min(first.expected);
                measured = true;
            }
        }
        if measured {
            rows.push((
                format!("{ssegate}: zero loss (fan-out, holding, throughput's lowest rate)"),
                format!("{lost} events lost, {failed} streams failed"),
                verdict(lost == 0 && failed == 0),
            ));
        }
    }
    // Memory per idle stream.
    for (ssegate, factor) in [(PeerKind::Ssegate, 0.5), (PeerKind::SsegateShared, 0.25)] {
        for r in results.holding.iter().filter(|r| r.peer == ssegate) {
            if let Some(nginx) = results
                .holding
                .iter()
                .find(|n| n.peer == PeerKind::Nginx && n.streams == r.streams)
            {
                let (s, n) = (r.bytes_per_stream(), nginx.bytes_per_stream());
                rows.push((
                    format!(
                        "holding N={}: {ssegate} memory/stream <= {factor}x nginx",
                        r.streams
                    ),
                    format!(
                        "{:.1} KiB vs {:.1} KiB ({:.2}x)",
                        s / 1024.0,
                        n / 1024.0,
                        s / n
                    ),
                    verdict(s <= factor * n),
                ));
            }
        }
    }
    // Request/response: medians over the rounds, with each round's ratio.
    let summaries = reqresp_summaries(results);
    let find = |kind: PeerKind| summaries.iter().find(|r| r.peer == kind);
    if let (Some(s), Some(n)) = (find(PeerKind::Ssegate), find(PeerKind::Nginx)) {
        let keepalive = |r: &ReqRespResult| r.keepalive.per_second();
        let handshakes = |r: &ReqRespResult| r.handshakes.per_second();
        let (sr, nr) = (keepalive(s.keepalive), keepalive(n.keepalive));
        rows.push((
            "keep-alive req/s >= 1.0x nginx".into(),
            format!(
                "median {sr:.0} vs {nr:.0} ({:.2}x; by round {})",
                sr / nr,
                round_ratios(&s.rounds, &n.rounds, keepalive)
            ),
            verdict(sr >= nr),
        ));
        let (sh, nh) = (handshakes(s.handshakes), handshakes(n.handshakes));
        rows.push((
            "full TLS handshakes/s >= 1.5x nginx".into(),
            format!(
                "median {sh:.0} vs {nh:.0} ({:.2}x; by round {})",
                sh / nh,
                round_ratios(&s.rounds, &n.rounds, handshakes)
            ),
            verdict(sh >= 1.5 * nh),
        ));
    }
    if rows.is_empty() {
        return;
    }
    md.push_str("\n## Targets for ssegate\n\n| target | measured | verdict |\n|---|---|---|\n");
    for (target, measured, verdict) in rows {
        let _ = writeln!(md, "| {target} | {measured} | {verdict} |");
    }
}

fn fanout_table(md: &mut String, results: &Results, subscribers: usize) {
    let summaries = fanout_summaries(results, subscribers);
    let find = |kind: PeerKind| summaries.iter().find(|r| r.peer() == kind);
    let p99 = |kind: PeerKind| find(kind).map(|r| p99_ms(r.median));
    let cpu = |kind: PeerKind| find(kind).and_then(|r| r.median.proxy_cpu_us_per_event());
    let _ = writeln!(md, "\n### K = {subscribers}\n");
    md.push_str(
        "| peer | streams ok | delivered / expected | lost | dup | p50 ms | p99 ms | p99 ms by round | p99.9 ms | max ms | proxy CPU us/event | upstream CPU s (clients) | ssegate ÷ this p99 | ssegate-shared ÷ this p99 | ssegate ÷ this CPU/event | ssegate-shared ÷ this CPU/event |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for summary in &summaries {
        let r = summary.median;
        let h = &r.events.latency_us;
        let _ = writeln!(
            md,
            "| {} | {}/{} | {}/{} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} ({}) | {} | {} | {} | {} |",
            r.peer,
            r.events.streams - r.events.failed,
            r.events.streams,
            r.events.received,
            r.events.expected,
            r.events.lost(),
            r.events.duplicates,
            quantile_ms(h, 0.5),
            quantile_ms(h, 0.99),
            summary.p99_by_round(),
            quantile_ms(h, 0.999),
            h.max() as f64 / 1000.0,
            opt(r.proxy_cpu_us_per_event(), 2),
            r.upstream_cpu_seconds,
            r.upstream_clients,
            ratio(p99(PeerKind::Ssegate), p99(r.peer)),
            ratio(p99(PeerKind::SsegateShared), p99(r.peer)),
            ratio(cpu(PeerKind::Ssegate), cpu(r.peer)),
            ratio(cpu(PeerKind::SsegateShared), cpu(r.peer)),
        );
    }
}

fn holding_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (b) Holding: N idle TLS event streams\n\n");
    let _ = writeln!(
        md,
        "Streams of `/sse/idle` (headers, then silence) are opened in steps on one fresh peer process; after \
         {:?} the resident memory (VmRSS summed over the peer's processes) is read, then CPU over {:?} of \
         idleness. Memory per stream = (RSS at N − RSS before the first stream) / N. \"ssegate ÷ this\" compares \
         memory per stream.\n",
        info.sizes.holding_settle, info.sizes.holding_idle_window
    );
    md.push_str(
        "| peer | N | connected | failed | RSS before MiB | RSS at N MiB | KiB/stream | idle CPU % | open fds | processes | ssegate ÷ this | ssegate-shared ÷ this |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let per_stream = |kind: PeerKind, n: usize| {
        results
            .holding
            .iter()
            .find(|r| r.peer == kind && r.streams == n)
            .map(|r| r.bytes_per_stream())
    };
    for r in &results.holding {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.peer,
            r.streams,
            r.connected,
            r.failed,
            mib(r.baseline.rss_bytes),
            mib(r.loaded.rss_bytes),
            r.bytes_per_stream() / 1024.0,
            r.idle_cpu_percent,
            r.loaded.open_fds,
            r.loaded.processes,
            ratio(
                per_stream(PeerKind::Ssegate, r.streams),
                per_stream(r.peer, r.streams)
            ),
            ratio(
                per_stream(PeerKind::SsegateShared, r.streams),
                per_stream(r.peer, r.streams)
            ),
        );
    }
}

fn throughput_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (c) One stream: highest event rate with p99 under 10 ms\n\n");
    let _ = writeln!(
        md,
        "One subscriber of `/sse/events`; the publisher offers rates {:?} events/s for {:?} each (then bisects \
         between the last pass and the first failure). A step passes when every event arrives, p99 < {:?} and at \
         least 90% of the offered rate arrives. \"ssegate ÷ this\" compares the highest passing rate (above 1 is \
         better for ssegate).\n",
        info.sizes.throughput_rates, info.sizes.throughput_step, THROUGHPUT_P99_LIMIT
    );
    md.push_str(
        "| peer | event size | max events/s (p99 < 10 ms) | p50 / p99 ms there | first failing step | ssegate ÷ this | ssegate-shared ÷ this |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let max_rate = |kind: PeerKind, size: usize| {
        results
            .throughput
            .iter()
            .find(|r| r.peer == kind && r.event_size == size)
            .and_then(|r| r.max_passing_rate())
            .map(|r| r as f64)
    };
    for r in &results.throughput {
        let best = r.max_passing_rate();
        let at_best = best.and_then(|b| r.steps.iter().find(|s| s.rate == b && s.passed));
        let fail = r
            .steps
            .iter()
            .filter(|s| !s.passed)
            .min_by_key(|s| s.rate)
            .map(|s| {
                let why = if let Some(err) = &s.error {
                    err.clone()
                } else if s.received < s.expected {
                    format!("lost {}", s.expected - s.received)
                } else if s.p99_us >= THROUGHPUT_P99_LIMIT.as_micros() as u64 {
                    format!("p99 {:.1} ms", s.p99_us as f64 / 1000.0)
                } else {
                    format!("only {:.0}/s arrived", s.achieved_rate)
                };
                format!("{}/s: {why}", s.rate)
            })
            .unwrap_or_else(|| "none (ladder exhausted)".into());
        let _ = writeln!(
            md,
            "| {} | {} B | {} | {} | {} | {} | {} |",
            r.peer,
            r.event_size,
            best.map_or("none".into(), |b| b.to_string()),
            at_best.map_or("-".into(), |s| format!(
                "{:.2} / {:.2}",
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0
            )),
            fail.replace('|', "/"),
            ratio(
                max_rate(PeerKind::Ssegate, r.event_size),
                best.map(|b| b as f64)
            ),
            ratio(
                max_rate(PeerKind::SsegateShared, r.event_size),
                best.map(|b| b as f64)
            ),
        );
    }
}

fn reqresp_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (d) Request/response against the static upstream\n\n");
    let _ = writeln!(
        md,
        "GET `/static` (1 KiB) from {} concurrent clients for {:?} after {:?} of warm-up: over keep-alive \
         connections, then with a new connection per request (a full TLS handshake each: the client disables \
         session resumption, and checks neither the server's certificate nor its handshake signature, so that \
         the cores it shares with the proxy go to the proxy's handshake rather than to the client's ECDSA \
         verify; every other connection of the run verifies the chain). The direct path is plain HTTP, so its second figure is TCP connections/s. \
         \"harness CPU\" is the load generator's and the upstream's CPU in the same interval, per request: \
         they share the cores with the proxy, so requests/s is about 2 cores ÷ (proxy CPU + harness CPU). \
         \"ssegate ÷ this\" compares requests/s (above 1 is better for ssegate). This ran in {} rounds, \
         each taking every peer in turn on a fresh process, so that the machine's drift (±10% between runs \
         minutes apart) falls on every peer alike; each row is the peer's median round (\"by round\" lists \
         them all), chosen separately for keep-alive and for new connections.\n",
        info.sizes.reqresp_connections,
        info.sizes.reqresp_duration,
        info.sizes.reqresp_warmup,
        info.sizes.rounds
    );
    md.push_str(
        "| peer | keep-alive req/s | by round | p99 ms | proxy CPU us/req | harness CPU us/req | errors | new-connection req/s (handshakes/s) | by round | p99 ms | proxy CPU us/handshake | harness CPU us/handshake | errors | ssegate ÷ this req/s | ssegate ÷ this handshakes/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let summaries = reqresp_summaries(results);
    let find = |kind: PeerKind| summaries.iter().find(|r| r.peer == kind);
    let keepalive = |kind: PeerKind| find(kind).map(|r| r.keepalive.keepalive.per_second());
    let handshakes = |kind: PeerKind| find(kind).map(|r| r.handshakes.handshakes.per_second());
    for summary in &summaries {
        let per = |cpu: Option<f64>, n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
        let by_round = |rate: fn(&ReqRespResult) -> f64| {
            by_round(&summary.rounds, |r| format!("{:.0}", rate(r)))
        };
        let (k, h) = (summary.keepalive, summary.handshakes);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2} | {} | {} | {} | {:.0} | {} | {:.2} | {} | {} | {} | {} | {} |",
            summary.peer,
            k.keepalive.per_second(),
            by_round(|r| r.keepalive.per_second()),
            quantile_ms(&k.keepalive.latency_us, 0.99),
            opt(per(k.keepalive_cpu_seconds, k.keepalive.completed), 1),
            opt(
                per(k.keepalive_harness_cpu_seconds, k.keepalive.completed),
                1
            ),
            k.keepalive.errors,
            h.handshakes.per_second(),
            by_round(|r| r.handshakes.per_second()),
            quantile_ms(&h.handshakes.latency_us, 0.99),
            opt(per(h.handshakes_cpu_seconds, h.handshakes.completed), 1),
            opt(
                per(h.handshakes_harness_cpu_seconds, h.handshakes.completed),
                1
            ),
            h.handshakes.errors,
            ratio(keepalive(PeerKind::Ssegate), keepalive(summary.peer)),
            ratio(handshakes(PeerKind::Ssegate), handshakes(summary.peer)),
        );
    }
}

/// One peer's request/response rounds, and its median round for each rate.
struct ReqRespSummary<'a> {
    peer: PeerKind,
    /// The round with the median keep-alive requests/s.
    keepalive: &'a ReqRespResult,
    /// The round with the median handshakes/s.
    handshakes: &'a ReqRespResult,
    /// Every round, in the order run.
    rounds: Vec<&'a ReqRespResult>,
}

/// Each peer's rounds, peers in the order first run.
fn reqresp_summaries(results: &Results) -> Vec<ReqRespSummary<'_>> {
    rounds_by_peer(&results.reqresp)
        .into_iter()
        .map(|(peer, rounds)| ReqRespSummary {
            peer,
            keepalive: median(&rounds, |r| r.keepalive.per_second()),
            handshakes: median(&rounds, |r| r.handshakes.per_second()),
            rounds,
        })
        .collect()
}

/// One round's result of a scenario that runs in rounds.
trait RoundResult {
    fn peer(&self) -> PeerKind;
    fn round(&self) -> usize;
}

impl RoundResult for ReqRespResult {
    fn peer(&self) -> PeerKind {
        self.peer
    }

    fn round(&self) -> usize {
        self.round
    }
}

impl RoundResult for FanoutResult {
    fn peer(&self) -> PeerKind {
        self.peer
    }

    fn round(&self) -> usize {
        self.round
    }
}

/// `results` grouped by peer, peers in the order first run, each peer's
/// rounds in round order.
fn rounds_by_peer<'a, T: RoundResult>(
    results: impl IntoIterator<Item = &'a T>,
) -> Vec<(PeerKind, Vec<&'a T>)> {
    let mut groups: Vec<(PeerKind, Vec<&T>)> = Vec::new();
    for r in results {
        match groups.iter_mut().find(|(peer, _)| *peer == r.peer()) {
            Some((_, rounds)) => rounds.push(r),
            None => groups.push((r.peer(), vec![r])),
        }
    }
    for (_, rounds) in &mut groups {
        rounds.sort_by_key(|r| r.round());
    }
    groups
}

/// Each round's `value`, e.g. "3.31 / 2.95 / 4.02".
fn by_round<T>(rounds: &[&T], value: impl Fn(&T) -> String) -> String {
    let values: Vec<String> = rounds.iter().map(|r| value(r)).collect();
    values.join(" / ")
}

/// The round with the median `value` (of an even number, the lower middle
/// one); `rounds` is not empty.
fn median<'a, T>(rounds: &[&'a T], value: impl Fn(&T) -> f64) -> &'a T {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| value(a).total_cmp(&value(b)));
    sorted[(sorted.len() - 1) / 2]
}

/// One peer's fan-out rounds at one K, and its round with the median p99.
struct FanoutSummary<'a> {
    median: &'a FanoutResult,
    /// Every round, in the order run.
    rounds: Vec<&'a FanoutResult>,
}

impl FanoutSummary<'_> {
    fn peer(&self) -> PeerKind {
        self.median.peer
    }

    /// The rounds' p99 latencies, e.g. "3.31 / 2.95 / 4.02".
    fn p99_by_round(&self) -> String {
        by_round(&self.rounds, |r| format!("{:.2}", p99_ms(r)))
    }
}

fn p99_ms(r: &FanoutResult) -> f64 {
    quantile_ms(&r.events.latency_us, 0.99)
}

/// The fan-out rounds at `subscribers`, one summary per peer in the order
/// first run. A round's p99 comes from K × events samples but mostly from a
/// few slow events, so it varies from round to round: tables, plots and
/// targets use each peer's median round.
fn fanout_summaries(results: &Results, subscribers: usize) -> Vec<FanoutSummary<'_>> {
    let at_size = results
        .fanout
        .iter()
        .filter(|r| r.subscribers == subscribers);
    rounds_by_peer(at_size)
        .into_iter()
        .map(|(_, rounds)| FanoutSummary {
            median: median(&rounds, p99_ms),
            rounds,
        })
        .collect()
}

/// `a ÷ b` of `value` in each round both ran, e.g. "1.02x, 0.97x, 1.10x".
fn round_ratios<T: RoundResult>(a: &[&T], b: &[&T], value: impl Fn(&T) -> f64) -> String {
    let ratios: Vec<String> = a
        .iter()
        .filter_map(|ra| {
            let rb = b.iter().find(|rb| rb.round() == ra.round())?;
            Some(format!("{:.2}x", value(ra) / value(rb)))
        })
        .collect();
    ratios.join(", ")
}

fn failures_and_notes(md: &mut String, results: &Results, plot_errors: &[String]) {
    md.push_str("\n## Failures\n\n");
    if results.failures.is_empty() {
        md.push_str("None: no peer failed to start, no event was lost, no stream failed.\n");
    } else {
        for failure in &results.failures {
            let _ = writeln!(md, "- {}", failure.replace('\n', " "));
        }
    }
    if !results.notes.is_empty() || !plot_errors.is_empty() {
        md.push_str("\n## Notes\n\n");
        for note in results.notes.iter().chain(plot_errors) {
            let _ = writeln!(md, "- {}", note.replace('\n', " "));
        }
    }
}

// ------------------------------------------------------------------- plots

fn peer_color(kind: PeerKind) -> RGBColor {
    match kind {
        PeerKind::Direct => RGBColor(0, 0, 0),
        PeerKind::Ssegate => RGBColor(214, 39, 40),
        PeerKind::SsegateShared => RGBColor(148, 103, 189),
        PeerKind::Nginx => RGBColor(44, 160, 44),
        PeerKind::Haproxy => RGBColor(31, 119, 180),
        PeerKind::Caddy => RGBColor(255, 127, 14),
    }
}

/// Points (x, latency ms) of a percentile distribution, x = -log10(1 - q):
/// 0 is the minimum, 1 is p90, 2 is p99, 3 is p99.9.
fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    let count = histogram.len().max(1) as f64;
    // Beyond 1/count the quantiles all read the maximum.
    let x_max = count.log10().max(0.1);
    (0..=200)
        .map(|i| x_max * i as f64 / 200.0)
        .map(|x| {
            let q = 1.0 - 10f64.powf(-x);
            (
                x,
                (histogram.value_at_quantile(q) as f64 / 1000.0).max(0.001),
            )
        })
        .collect()
}

fn plot_fanout(path: &Path, results: &Results, subscribers: usize) -> Result<(), String> {
    let rows: Vec<&FanoutResult> = fanout_summaries(results, subscribers)
        .into_iter()
        .map(|s| s.median)
        .filter(|r| !r.events.latency_us.is_empty())
        .collect();
    if rows.is_empty() {
        return Err("no latencies recorded".into());
    }
    let curves: Vec<(PeerKind, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| (r.peer, percentile_curve(&r.events.latency_us)))
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        .ceil();
    let y_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.01, f64::max)
        * 1.5;
    let y_min = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .max(0.001)
        / 1.5;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Fan-out delivery latency, {subscribers} subscribers"),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (kind, curve) in curves {
        let color = peer_color(kind);
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(kind.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

fn plot_holding(path: &Path, results: &Results) -> Result<(), String> {
    let kinds: BTreeSet<PeerKind> = results.holding.iter().map(|r| r.peer).collect();
    let points = |kind: PeerKind| -> Vec<(f64, f64)> {
        results
            .holding
            .iter()
            .filter(|r| r.peer == kind)
            .map(|r| (r.streams as f64, r.bytes_per_stream() / 1024.0))
            .collect()
    };
    let all: Vec<(f64, f64)> = kinds.iter().flat_map(|&k| points(k)).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let y_min = all.iter().map(|p| p.1).fold(0.0, f64::min);
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Proxy memory per idle TLS event stream", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y_min..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("open streams N")
        .y_desc("RSS growth / N (KiB)")
        .draw()
        .map_err(|e| e.to_string())?;
    for kind in kinds {
        let color = peer_color(kind);
        let series = points(kind);
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(kind.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                series
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

// -------------------------------------------------------------------- json

fn to_json(info: &RunInfo, results: &Results) -> Value {
    let latency = |h: &Histogram<u64>| {
        json!({
            "count": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
        })
    };
    json!({
        "mode": info.mode,
        "command": info.command,
        "machine": info.machine,
        "open_file_limit": info.open_file_limit,
        "peers": results.peers.iter().map(|(k, v, tls)| json!({
            "peer": k.name(), "version": v, "tls": tls.as_ref().map(|t| t.to_string()),
        })).collect::<Vec<_>>(),
        "fanout": results.fanout.iter().map(|r| json!({
            "peer": r.peer.name(),
            "subscribers": r.subscribers,
            "round": r.round,
            "expected": r.events.expected,
            "received": r.events.received,
            "lost": r.events.lost(),
            "duplicates": r.events.duplicates,
            "streams_failed": r.events.failed,
            "latency": latency(&r.events.latency_us),
            "proxy_cpu_seconds": r.proxy_cpu_seconds,
            "proxy_cpu_us_per_event": r.proxy_cpu_us_per_event(),
            "upstream_cpu_seconds": r.upstream_cpu_seconds,
            "upstream_clients": r.upstream_clients,
        })).collect::<Vec<_>>(),
        "holding": results.holding.iter().map(|r| json!({
            "peer": r.peer.name(),
            "streams": r.streams,
            "connected": r.connected,
            "failed": r.failed,
            "rss_before_bytes": r.baseline.rss_bytes,
            "rss_bytes": r.loaded.rss_bytes,
            "bytes_per_stream": r.bytes_per_stream(),
            "idle_cpu_percent": r.idle_cpu_percent,
            "open_fds": r.loaded.open_fds,
        })).collect::<Vec<_>>(),
        "throughput": results.throughput.iter().map(|r| json!({
            "peer": r.peer.name(),
            "event_size": r.event_size,
            "max_passing_rate": r.max_passing_rate(),
            "steps": r.steps.iter().map(|s| json!({
                "rate": s.rate, "expected": s.expected, "received": s.received,
                "achieved_rate": s.achieved_rate, "p50_us": s.p50_us, "p99_us": s.p99_us,
                "max_us": s.max_us, "passed": s.passed, "error": s.error,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reqresp": results.reqresp.iter().map(|r| json!({
            "peer": r.peer.name(),
            "round": r.round,
            "keepalive_per_second": r.keepalive.per_second(),
            "keepalive_errors": r.keepalive.errors,
            "keepalive_latency": latency(&r.keepalive.latency_us),
            "keepalive_cpu_seconds": r.keepalive_cpu_seconds,
            "keepalive_harness_cpu_seconds": r.keepalive_harness_cpu_seconds,
            "handshakes_per_second": r.handshakes.per_second(),
            "handshake_errors": r.handshakes.errors,
            "handshake_latency": latency(&r.handshakes.latency_us),
            "handshakes_cpu_seconds": r.handshakes_cpu_seconds,
            "handshakes_harness_cpu_seconds": r.handshakes_harness_cpu_seconds,
        })).collect::<Vec<_>>(),
        "failures": results.failures,
        "notes": results.notes,
    })
}
