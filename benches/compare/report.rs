//! The report: target/bench-report/report.md with one table per scenario
//! (absolute figures and ssegate ÷ peer ratios; the row of the direct path
//! gives ssegate ÷ direct), each metric over HTTP/1.1 and HTTP/2 side by
//! side (ratios compare the same protocol), the targets ssegate is held to
//! (met or missed, from the ratios measured in this run), SVG plots
//! (latency distribution per proxy, memory per stream against N) and
//! results.json with the same figures for machines.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::{json, Value};

use crate::loadgen::Protocol;
use crate::peers::PeerKind;
use crate::scenarios::{
    quantile_ms, ClusterLayout, ClusterResult, FanoutResult, HoldingResult, LoadPhase, Negotiated,
    ReqRespResult, Results, Sizes, ThroughputResult, THROUGHPUT_P99_LIMIT,
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
    /// The protocols measured, in column order.
    pub protocols: Vec<Protocol>,
    pub machine: String,
    pub open_file_limit: u64,
    pub sizes: Sizes,
    pub elapsed: std::time::Duration,
}

pub fn write(dir: &Path, info: &RunInfo, results: &Results) -> Result<Written, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut plot_errors = Vec::new();
    let protocols = &info.protocols;

    let mut md = String::new();
    header(&mut md, info, results);
    targets(&mut md, results, protocols);

    // (a) fan-out
    let fanout_sizes: BTreeSet<usize> = results.fanout.iter().map(|r| r.subscribers).collect();
    if !fanout_sizes.is_empty() {
        md.push_str("\n## (a) Fan-out: K subscribers of one published stream\n\n");
        let _ = writeln!(
            md,
            "Events of {} B, published once to every subscriber of `/sse/events`: {}.{} Each subscriber is \
             one event stream on its own TLS connection, over HTTP/1.1 or over HTTP/2 (one stream per \
             connection, as one browser tab). Latency is from the \
             upstream's timestamp (taken when the publisher writes the event, before its write loop over \
             clients) to the load generator parsing the event. CPU is utime+stime of the proxy's processes \
             during the run, per delivered event. Late events count as delivered, with their latency; \
             \"lost\" events had not arrived when no event had arrived for {:?}. \"ssegate ÷ this\" compares \
             p99 latency and CPU per event over the same protocol (below 1 is better for ssegate). This ran \
             in {} rounds, each taking every peer over every protocol in turn on a fresh process; each cell \
             (and plot) is the peer's round with the median p99, and \"lost\" counts that round (the \
             targets' zero-loss line counts every round).\n",
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
        fanout_table(&mut md, results, protocols, subscribers);
        let mut plots = Vec::new();
        for &protocol in protocols {
            let name = format!("fanout-latency-K{subscribers}-{protocol}.svg");
            match plot_fanout(&dir.join(&name), results, subscribers, protocol) {
                Ok(()) => {
                    plots.push(format!(
                        "![fan-out latency, K={subscribers}, {protocol}]({name})"
                    ));
                    files.push(dir.join(&name));
                }
                Err(err) => plot_errors.push(format!("{name}: {err}")),
            }
        }
        if !plots.is_empty() {
            let _ = writeln!(md, "\n{}\n", plots.join(" "));
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

    // (e) cluster fan-out
    if !results.cluster.is_empty() {
        cluster_table(&mut md, results, info);
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

/// One metric of a side-by-side table: its header and how a cell reads.
type Metric<'a, T> = (&'a str, &'a dyn Fn(&T) -> String);

/// A markdown table whose rows are keyed by `K` (a peer; a peer and N) and
/// which gives each metric once per protocol, side by side ("p99 ms h1 |
/// p99 ms h2"). `lookup` finds a row's result for a protocol; a cell without
/// one reads "-".
fn side_by_side<'a, K, T: 'a>(
    md: &mut String,
    protocols: &[Protocol],
    key_headers: &[&str],
    rows: &[(Vec<String>, K)],
    lookup: impl Fn(&K, Protocol) -> Option<&'a T>,
    metrics: &[Metric<'_, T>],
) {
    let mut headers: Vec<String> = key_headers.iter().map(|h| h.to_string()).collect();
    for (name, _) in metrics {
        for protocol in protocols {
            headers.push(format!("{name} {protocol}"));
        }
    }
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(headers.len()));
    for (keys, key) in rows {
        let found: Vec<Option<&T>> = protocols.iter().map(|&p| lookup(key, p)).collect();
        let mut cells = keys.clone();
        for (_, value) in metrics {
            for r in &found {
                cells.push(r.map_or("-".into(), |r| value(r).replace('|', "/")));
            }
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
}

/// Peers in the order first seen in `items`.
fn peers_in_order(items: impl IntoIterator<Item = PeerKind>) -> Vec<PeerKind> {
    let mut peers = Vec::new();
    for kind in items {
        if !peers.contains(&kind) {
            peers.push(kind);
        }
    }
    peers
}

fn header(md: &mut String, info: &RunInfo, results: &Results) {
    let _ = writeln!(md, "# ssegate side by side ({} run)\n", info.mode);
    let _ = writeln!(md, "- Command: `{}`", info.command);
    let _ = writeln!(md, "- Machine: {}", info.machine);
    let _ = writeln!(
        md,
        "- Protocols: {} (every metric below gives them side by side)",
        info.protocols
            .iter()
            .map(|p| match p {
                Protocol::H1 => "h1 = HTTP/1.1 (ALPN http/1.1)",
                Protocol::H2 => "h2 = HTTP/2 (ALPN h2), the browser's path",
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    let mut head = String::from("| peer | version | workers |");
    for protocol in &info.protocols {
        let _ = write!(head, " negotiated over {protocol} |");
    }
    let _ = writeln!(md, "{head}\n|{}", "---|".repeat(3 + info.protocols.len()));
    for record in &results.peers {
        let workers = match record.kind {
            PeerKind::Direct => "-".to_string(),
            PeerKind::Nginx => "2 worker processes (+ master)".into(),
            PeerKind::Caddy => "GOMAXPROCS=2".into(),
            PeerKind::Haproxy => "nbthread 2".into(),
            _ => "--threads 2".into(),
        };
        let mut row = format!("| {} | {} | {workers} |", record.kind, record.version);
        for &protocol in &info.protocols {
            let cell = match record.negotiated.iter().find(|(p, _)| *p == protocol) {
                None if record.kind == PeerKind::Direct => "not measured (no TLS)".to_string(),
                None => "not measured".into(),
                Some((_, Negotiated::Failed)) => "did not start".into(),
                Some((_, Negotiated::Plain)) => "plain HTTP/1.1".into(),
                Some((_, Negotiated::Tls(tls))) => tls.to_string(),
            };
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(
        md,
        "\nThe client offers only X25519, TLS 1.3/1.2 with AES-128-GCM and one ALPN protocol: http/1.1 for the h1 \
         runs, h2 for the h2 runs (an h2 run fails on a connection that did not negotiate h2). Over HTTP/2 it \
         announces a browser's (Chrome's) flow-control windows, 6 MiB per stream and 15 MiB per connection, and \
         no server push. Every peer serves both protocols on one TLS listener and picks by ALPN (nginx: HTTP/2 on \
         its `listen ... ssl`, as `listen ... ssl http2` before 1.25.1 and `http2 on;` from it; HAProxy: `alpn h2,http/1.1`; Caddy: `protocols h1 h2`; ssegate negotiates h2 \
         by ALPN); each peer is measured over each protocol on its own fresh process. nginx, HAProxy and Caddy \
         are also pinned to X25519 server-side; ssegate's binary has no option for key-exchange groups (its \
         default rustls provider also allows X25519MLKEM768, P-256 and P-384), so for ssegate X25519 is pinned \
         by the client only. Requests/s over HTTP/2 keep {} requests in flight per connection (as h2load -m {}).",
        info.sizes.h2_streams, info.sizes.h2_streams
    );
}

// ----------------------------------------------------------------- targets

/// Whether a measured ratio must stay at or below its limit, or reach it.
#[derive(Clone, Copy)]
enum Bound {
    AtMost,
    AtLeast,
}

/// One target's figures over one protocol: (ssegate figure, nginx figure,
/// how they read), or why it was not measured.
type Measured = Result<(f64, f64, String), String>;

/// One row of the targets table: a target, and per protocol its limit and
/// what this run measured.
struct TargetRow {
    target: String,
    cells: Vec<(Protocol, String, TargetCell)>,
}

enum TargetCell {
    /// A ratio ssegate ÷ nginx against its limit.
    Ratio {
        limit: f64,
        bound: Bound,
        measured: Measured,
    },
    /// Zero loss: (events lost, streams failed), None when not measured.
    Loss(Option<(u64, usize)>),
}

impl TargetCell {
    /// (measured, verdict), verdict None when not measured.
    fn judge(&self) -> (String, Option<bool>) {
        match self {
            TargetCell::Ratio {
                limit,
                bound,
                measured,
            } => match measured {
                Ok((s, n, text)) if *n > 0.0 && s.is_finite() => {
                    let r = s / n;
                    let met = match bound {
                        Bound::AtMost => r <= *limit,
                        Bound::AtLeast => r >= *limit,
                    };
                    (format!("**{r:.2}x**: {text}"), Some(met))
                }
                Ok((_, _, text)) => (format!("no ratio ({text})"), None),
                Err(why) => (why.clone(), None),
            },
            TargetCell::Loss(Some((lost, failed))) => (
                format!("{lost} events lost, {failed} streams failed"),
                Some(*lost == 0 && *failed == 0),
            ),
            TargetCell::Loss(None) => ("not measured".into(), None),
        }
    }
}

fn verdict_word(verdict: Option<bool>) -> &'static str {
    match verdict {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The targets ssegate is held to, as ratios to nginx in this same run,
/// each over HTTP/1.1 and HTTP/2 with its own limit.
const MEMORY_LIMITS: [(PeerKind, [(Protocol, f64); 2]); 2] = [
    (
        PeerKind::Ssegate,
        [(Protocol::H1, 0.3), (Protocol::H2, 0.5)],
    ),
    (
        PeerKind::SsegateShared,
        [(Protocol::H1, 0.25), (Protocol::H2, 0.4)],
    ),
];
const FANOUT_P99_LIMIT: f64 = 1.0;
const REQUESTS_LIMITS: [(Protocol, f64); 2] = [(Protocol::H1, 0.9), (Protocol::H2, 1.5)];

fn limit_for(limits: &[(Protocol, f64)], protocol: Protocol) -> f64 {
    limits
        .iter()
        .find(|(p, _)| *p == protocol)
        .map_or(f64::NAN, |(_, l)| *l)
}

/// "nginx h2 did not run" style reasons for a missing figure.
fn missing(what: &str, ssegate: PeerKind, found_ssegate: bool, protocol: Protocol) -> String {
    if found_ssegate {
        format!("not measured (nginx {protocol}: no {what})")
    } else {
        format!("not measured ({ssegate} {protocol}: no {what})")
    }
}

fn target_rows(results: &Results, protocols: &[Protocol]) -> Vec<TargetRow> {
    let mut rows = Vec::new();

    // Memory per idle TLS event stream, at every N measured.
    let holding_sizes: BTreeSet<usize> = results.holding.iter().map(|r| r.streams).collect();
    for (ssegate, limits) in MEMORY_LIMITS {
        for &n in &holding_sizes {
            let find = |kind: PeerKind, protocol: Protocol| {
                results
                    .holding
                    .iter()
                    .find(|r| r.peer == kind && r.protocol == protocol && r.streams == n)
            };
            if !protocols.iter().any(|&p| find(ssegate, p).is_some()) {
                continue;
            }
            let cells = protocols
                .iter()
                .map(|&protocol| {
                    let limit = limit_for(&limits, protocol);
                    let measured = match (find(ssegate, protocol), find(PeerKind::Nginx, protocol))
                    {
                        (Some(s), Some(nx)) => {
                            let (sb, nb) = (s.bytes_per_stream(), nx.bytes_per_stream());
                            Ok((
                                sb,
                                nb,
                                format!("{:.1} vs {:.1} KiB/stream", sb / 1024.0, nb / 1024.0),
                            ))
                        }
                        (s, _) => Err(missing("holding result", ssegate, s.is_some(), protocol)),
                    };
                    (
                        protocol,
                        format!("<= {limit:.2}x"),
                        TargetCell::Ratio {
                            limit,
                            bound: Bound::AtMost,
                            measured,
                        },
                    )
                })
                .collect();
            let mode = if ssegate == PeerKind::SsegateShared {
                " with --sse-shared"
            } else {
                ""
            };
            rows.push(TargetRow {
                target: format!(
                    "memory per idle TLS event stream proxied{mode}, N={n}: {ssegate} ÷ nginx"
                ),
                cells,
            });
        }
    }

    // Fan-out p99, median rounds, at every K measured.
    let fanout_sizes: BTreeSet<usize> = results.fanout.iter().map(|r| r.subscribers).collect();
    for ssegate in [PeerKind::Ssegate, PeerKind::SsegateShared] {
        for &k in &fanout_sizes {
            let summaries: Vec<(Protocol, Vec<FanoutSummary>)> = protocols
                .iter()
                .map(|&p| (p, fanout_summaries(results, k, p)))
                .collect();
            let find = |kind: PeerKind, protocol: Protocol| {
                summaries
                    .iter()
                    .find(|(p, _)| *p == protocol)
                    .and_then(|(_, s)| s.iter().find(|s| s.peer() == kind))
            };
            if !protocols.iter().any(|&p| find(ssegate, p).is_some()) {
                continue;
            }
            let cells = protocols
                .iter()
                .map(|&protocol| {
                    let measured = match (find(ssegate, protocol), find(PeerKind::Nginx, protocol))
                    {
                        (Some(s), Some(nx)) => {
                            let (sp, np) = (p99_ms(s.median), p99_ms(nx.median));
                            Ok((
                                sp,
                                np,
                                format!(
                                    "median p99 {sp:.2} vs {np:.2} ms (by round {})",
                                    round_ratios(&s.rounds, &nx.rounds, p99_ms)
                                ),
                            ))
                        }
                        (s, _) => Err(missing("fan-out result", ssegate, s.is_some(), protocol)),
                    };
                    (
                        protocol,
                        format!("<= {FANOUT_P99_LIMIT:.2}x"),
                        TargetCell::Ratio {
                            limit: FANOUT_P99_LIMIT,
                            bound: Bound::AtMost,
                            measured,
                        },
                    )
                })
                .collect();
            rows.push(TargetRow {
                target: format!("fan-out p99 latency, K={k}: {ssegate} ÷ nginx"),
                cells,
            });
        }
    }

    // Keep-alive requests/s, median rounds.
    if results.reqresp.iter().any(|r| r.peer == PeerKind::Ssegate) {
        let cells = protocols
            .iter()
            .map(|&protocol| {
                let summaries = reqresp_summaries(results, protocol);
                let find = |kind: PeerKind| summaries.iter().find(|r| r.peer == kind);
                let limit = limit_for(&REQUESTS_LIMITS, protocol);
                let rate = |r: &ReqRespResult| r.keepalive.outcome.per_second();
                let measured = match (find(PeerKind::Ssegate), find(PeerKind::Nginx)) {
                    (Some(s), Some(nx)) => {
                        let (sr, nr) = (rate(s.keepalive), rate(nx.keepalive));
                        Ok((
                            sr,
                            nr,
                            format!(
                                "median {sr:.0} vs {nr:.0} req/s (by round {})",
                                round_ratios(&s.rounds, &nx.rounds, rate)
                            ),
                        ))
                    }
                    (s, _) => Err(missing(
                        "request/response result",
                        PeerKind::Ssegate,
                        s.is_some(),
                        protocol,
                    )),
                };
                (
                    protocol,
                    format!(">= {limit:.2}x"),
                    TargetCell::Ratio {
                        limit,
                        bound: Bound::AtLeast,
                        measured,
                    },
                )
            })
            .collect();
        rows.push(TargetRow {
            target: "requests/s over keep-alive connections: ssegate ÷ nginx".into(),
            cells,
        });
    }

    // Zero loss over every round of every event-stream scenario.
    for ssegate in [PeerKind::Ssegate, PeerKind::SsegateShared] {
        let loss = |protocol: Protocol| {
            let mut lost = 0u64;
            let mut failed = 0usize;
            let mut measured = false;
            for r in results
                .fanout
                .iter()
                .filter(|r| r.peer == ssegate && r.protocol == protocol)
            {
                lost += r.events.lost();
                failed += r.events.failed;
                measured = true;
            }
            for r in results
                .holding
                .iter()
                .filter(|r| r.peer == ssegate && r.protocol == protocol)
            {
                failed += r.failed;
                measured = true;
            }
            for r in results
                .throughput
                .iter()
                .filter(|r| r.peer == ssegate && r.protocol == protocol)
            {
                if let Some(first) = r.steps.first() {
                    lost += first.expected - first.received.min(first.expected);
                    measured = true;
                }
            }
            measured.then_some((lost, failed))
        };
        let cells: Vec<(Protocol, String, TargetCell)> = protocols
            .iter()
            .map(|&p| (p, "0 lost, 0 failed".to_string(), TargetCell::Loss(loss(p))))
            .collect();
        if cells
            .iter()
            .any(|(_, _, c)| matches!(c, TargetCell::Loss(Some(_))))
        {
            rows.push(TargetRow {
                target: format!(
                    "{ssegate}: zero loss (fan-out, holding, throughput's lowest rate)"
                ),
                cells,
            });
        }
    }
    rows
}

/// The targets table: each target over every protocol, side by side, with
/// its limit, the measured ratio and the verdict.
fn targets(md: &mut String, results: &Results, protocols: &[Protocol]) {
    let rows = target_rows(results, protocols);
    if rows.is_empty() {
        return;
    }
    let mut judged = Vec::new();
    for row in &rows {
        for (_, _, cell) in &row.cells {
            judged.push(cell.judge().1);
        }
    }
    let met = judged.iter().filter(|v| **v == Some(true)).count();
    let missed = judged.iter().filter(|v| **v == Some(false)).count();
    let unmeasured = judged.iter().filter(|v| v.is_none()).count();
    md.push_str("\n## Targets for ssegate\n\n");
    let _ = writeln!(
        md,
        "Ratios of ssegate to nginx measured in this run, over the same protocol (memory: KiB per stream at the \
         same N; fan-out and requests/s: each peer's median round). {met} met, {missed} missed, {unmeasured} not \
         measured.\n"
    );
    let mut head = String::from("| target |");
    for protocol in protocols {
        let _ = write!(
            head,
            " {protocol} target | {protocol} measured | {protocol} verdict |"
        );
    }
    let _ = writeln!(md, "{head}\n|{}", "---|".repeat(1 + 3 * protocols.len()));
    for row in rows {
        let mut line = format!("| {} |", row.target);
        for &protocol in protocols {
            match row.cells.iter().find(|(p, _, _)| *p == protocol) {
                Some((_, limit, cell)) => {
                    let (measured, verdict) = cell.judge();
                    let _ = write!(
                        line,
                        " {limit} | {} | {} |",
                        measured.replace('|', "/"),
                        verdict_word(verdict)
                    );
                }
                None => line.push_str(" - | - | - |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
}

// ------------------------------------------------------------------ tables

fn fanout_table(md: &mut String, results: &Results, protocols: &[Protocol], subscribers: usize) {
    let summaries: Vec<(Protocol, Vec<FanoutSummary>)> = protocols
        .iter()
        .map(|&p| (p, fanout_summaries(results, subscribers, p)))
        .collect();
    let find = |kind: PeerKind, protocol: Protocol| {
        summaries
            .iter()
            .find(|(p, _)| *p == protocol)
            .and_then(|(_, s)| s.iter().find(|s| s.peer() == kind))
    };
    let p99 = |kind: PeerKind, protocol: Protocol| find(kind, protocol).map(|r| p99_ms(r.median));
    let cpu = |kind: PeerKind, protocol: Protocol| {
        find(kind, protocol).and_then(|r| r.median.proxy_cpu_us_per_event())
    };
    let peers = peers_in_order(
        results
            .fanout
            .iter()
            .filter(|r| r.subscribers == subscribers)
            .map(|r| r.peer),
    );
    let rows: Vec<(Vec<String>, PeerKind)> =
        peers.iter().map(|&k| (vec![k.to_string()], k)).collect();
    let _ = writeln!(md, "\n### K = {subscribers}\n");
    let h = |s: &FanoutSummary| s.median.events.latency_us.clone();
    side_by_side(
        md,
        protocols,
        &["peer"],
        &rows,
        |&kind, protocol| find(kind, protocol),
        &[
            ("streams ok", &|s: &FanoutSummary| {
                let e = &s.median.events;
                format!("{}/{}", e.streams - e.failed, e.streams)
            }),
            ("delivered / expected", &|s: &FanoutSummary| {
                format!("{}/{}", s.median.events.received, s.median.events.expected)
            }),
            ("lost", &|s: &FanoutSummary| {
                s.median.events.lost().to_string()
            }),
            ("dup", &|s: &FanoutSummary| {
                s.median.events.duplicates.to_string()
            }),
            ("p50 ms", &|s: &FanoutSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.5))
            }),
            ("p99 ms", &|s: &FanoutSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.99))
            }),
            ("p99 ms by round", &|s: &FanoutSummary| s.p99_by_round()),
            ("p99.9 ms", &|s: &FanoutSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.999))
            }),
            ("max ms", &|s: &FanoutSummary| {
                format!("{:.2}", s.median.events.latency_us.max() as f64 / 1000.0)
            }),
            ("proxy CPU us/event", &|s: &FanoutSummary| {
                opt(s.median.proxy_cpu_us_per_event(), 2)
            }),
            ("upstream CPU s (clients)", &|s: &FanoutSummary| {
                format!(
                    "{:.2} ({})",
                    s.median.upstream_cpu_seconds, s.median.upstream_clients
                )
            }),
            ("ssegate ÷ this p99", &|s: &FanoutSummary| {
                let p = s.median.protocol;
                ratio(p99(PeerKind::Ssegate, p), p99(s.peer(), p))
            }),
            ("ssegate-shared ÷ this p99", &|s: &FanoutSummary| {
                let p = s.median.protocol;
                ratio(p99(PeerKind::SsegateShared, p), p99(s.peer(), p))
            }),
            ("ssegate ÷ this CPU/event", &|s: &FanoutSummary| {
                let p = s.median.protocol;
                ratio(cpu(PeerKind::Ssegate, p), cpu(s.peer(), p))
            }),
            ("ssegate-shared ÷ this CPU/event", &|s: &FanoutSummary| {
                let p = s.median.protocol;
                ratio(cpu(PeerKind::SsegateShared, p), cpu(s.peer(), p))
            }),
        ],
    );
}

fn holding_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (b) Holding: N idle TLS event streams\n\n");
    let _ = writeln!(
        md,
        "Streams of `/sse/idle` (response head and a comment line, then silence) are opened in steps on one fresh peer process per protocol \
         (over HTTP/2, one stream per TLS connection, as one browser tab); after {:?} the resident memory (VmRSS \
         summed over the peer's processes) is read, then CPU over {:?} of idleness. Memory per stream = (RSS at N \
         − RSS before the first stream) / N. \"ssegate ÷ this\" compares memory per stream over the same \
         protocol.\n",
        info.sizes.holding_settle, info.sizes.holding_idle_window
    );
    let find = |kind: PeerKind, n: usize, protocol: Protocol| {
        results
            .holding
            .iter()
            .find(|r| r.peer == kind && r.streams == n && r.protocol == protocol)
    };
    let per_stream = |kind: PeerKind, n: usize, protocol: Protocol| {
        find(kind, n, protocol).map(|r| r.bytes_per_stream())
    };
    let mut rows: Vec<(Vec<String>, (PeerKind, usize))> = Vec::new();
    for kind in peers_in_order(results.holding.iter().map(|r| r.peer)) {
        let sizes: BTreeSet<usize> = results
            .holding
            .iter()
            .filter(|r| r.peer == kind)
            .map(|r| r.streams)
            .collect();
        for n in sizes {
            rows.push((vec![kind.to_string(), n.to_string()], (kind, n)));
        }
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    side_by_side(
        md,
        &info.protocols,
        &["peer", "N"],
        &rows,
        |&(kind, n), protocol| find(kind, n, protocol),
        &[
            ("connected", &|r: &HoldingResult| r.connected.to_string()),
            ("failed", &|r: &HoldingResult| r.failed.to_string()),
            ("RSS before MiB", &|r: &HoldingResult| {
                format!("{:.1}", mib(r.baseline.rss_bytes))
            }),
            ("RSS at N MiB", &|r: &HoldingResult| {
                format!("{:.1}", mib(r.loaded.rss_bytes))
            }),
            ("KiB/stream", &|r: &HoldingResult| {
                format!("{:.2}", r.bytes_per_stream() / 1024.0)
            }),
            ("idle CPU %", &|r: &HoldingResult| {
                format!("{:.2}", r.idle_cpu_percent)
            }),
            ("open fds", &|r: &HoldingResult| {
                r.loaded.open_fds.to_string()
            }),
            ("processes", &|r: &HoldingResult| {
                r.loaded.processes.to_string()
            }),
            ("ssegate ÷ this", &|r: &HoldingResult| {
                ratio(
                    per_stream(PeerKind::Ssegate, r.streams, r.protocol),
                    Some(r.bytes_per_stream()),
                )
            }),
            ("ssegate-shared ÷ this", &|r: &HoldingResult| {
                ratio(
                    per_stream(PeerKind::SsegateShared, r.streams, r.protocol),
                    Some(r.bytes_per_stream()),
                )
            }),
        ],
    );
}

fn throughput_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (c) One stream: highest event rate with p99 under 10 ms\n\n");
    let _ = writeln!(
        md,
        "One subscriber of `/sse/events` (over HTTP/2, one stream on its own connection); the publisher offers \
         rates {:?} events/s for {:?} each (then bisects between the last pass and the first failure). A step \
         passes when every event arrives, p99 < {:?} and at least 90% of the offered rate arrives. \"ssegate ÷ \
         this\" compares the highest passing rate over the same protocol (above 1 is better for ssegate).\n",
        info.sizes.throughput_rates, info.sizes.throughput_step, THROUGHPUT_P99_LIMIT
    );
    let find = |kind: PeerKind, size: usize, protocol: Protocol| {
        results
            .throughput
            .iter()
            .find(|r| r.peer == kind && r.event_size == size && r.protocol == protocol)
    };
    let max_rate = |kind: PeerKind, size: usize, protocol: Protocol| {
        find(kind, size, protocol)
            .and_then(|r| r.max_passing_rate())
            .map(|r| r as f64)
    };
    let mut rows: Vec<(Vec<String>, (PeerKind, usize))> = Vec::new();
    for kind in peers_in_order(results.throughput.iter().map(|r| r.peer)) {
        let sizes: BTreeSet<usize> = results
            .throughput
            .iter()
            .filter(|r| r.peer == kind)
            .map(|r| r.event_size)
            .collect();
        for size in sizes {
            rows.push((vec![kind.to_string(), format!("{size} B")], (kind, size)));
        }
    }
    side_by_side(
        md,
        &info.protocols,
        &["peer", "event size"],
        &rows,
        |&(kind, size), protocol| find(kind, size, protocol),
        &[
            ("max events/s (p99 < 10 ms)", &|r: &ThroughputResult| {
                r.max_passing_rate()
                    .map_or("none".into(), |b| b.to_string())
            }),
            ("p50 / p99 ms there", &|r: &ThroughputResult| {
                r.max_passing_rate()
                    .and_then(|b| r.steps.iter().find(|s| s.rate == b && s.passed))
                    .map_or("-".into(), |s| {
                        format!(
                            "{:.2} / {:.2}",
                            s.p50_us as f64 / 1000.0,
                            s.p99_us as f64 / 1000.0
                        )
                    })
            }),
            ("first failing step", &|r: &ThroughputResult| {
                first_failure(r)
            }),
            ("ssegate ÷ this", &|r: &ThroughputResult| {
                ratio(
                    max_rate(PeerKind::Ssegate, r.event_size, r.protocol),
                    r.max_passing_rate().map(|b| b as f64),
                )
            }),
            ("ssegate-shared ÷ this", &|r: &ThroughputResult| {
                ratio(
                    max_rate(PeerKind::SsegateShared, r.event_size, r.protocol),
                    r.max_passing_rate().map(|b| b as f64),
                )
            }),
        ],
    );
}

/// The lowest failing step of a throughput ladder, and why it failed.
/// One layout's cluster fan-out rounds over one protocol, and its round
/// with the median p99.
struct ClusterSummary<'a> {
    median: &'a ClusterResult,
    rounds: Vec<&'a ClusterResult>,
}

fn cluster_summary(
    results: &Results,
    layout: ClusterLayout,
    protocol: Protocol,
) -> Option<ClusterSummary<'_>> {
    let mut rounds: Vec<&ClusterResult> = results
        .cluster
        .iter()
        .filter(|r| r.layout == layout && r.protocol == protocol)
        .collect();
    if rounds.is_empty() {
        return None;
    }
    rounds.sort_by_key(|r| r.round);
    Some(ClusterSummary {
        median: median(&rounds, cluster_p99_ms),
        rounds,
    })
}

fn cluster_p99_ms(r: &ClusterResult) -> f64 {
    quantile_ms(&r.events.latency_us, 0.99)
}

/// "instance 2", "instance 1 (2 times), instance 3", or "none".
fn readers_cell(r: &ClusterResult) -> String {
    if r.layout != ClusterLayout::Cluster {
        return "-".into();
    }
    if r.readers.is_empty() {
        return "none".into();
    }
    r.readers
        .iter()
        .map(|&(i, n)| match n {
            1 => format!("instance {i}"),
            n => format!("instance {i} ({n} times)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// "evalsha 1.00, xread 3.01": the commands redis-server ran per
/// published event (the warm-up's few events included), most called first;
/// "-" for layouts without Redis.
fn redis_calls_cell(r: &ClusterResult, events: u64) -> String {
    if r.redis_calls.is_empty() {
        return "-".into();
    }
    r.redis_calls
        .iter()
        .take(6)
        .map(|(name, calls)| format!("{name} {:.2}", *calls as f64 / events.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cluster_table(md: &mut String, results: &Results, info: &RunInfo) {
    let sizes = &info.sizes;
    let rounds = results.cluster.iter().map(|r| r.round).max().unwrap_or(0);
    md.push_str("\n## (e) Fan-out across instances: one upstream reader through Redis\n\n");
    let _ = writeln!(
        md,
        "{n} subscribers of `/sse/events` (each one event stream on its own TLS connection, over HTTP/1.1 or \
         HTTP/2), {events} events of {size} B at {rate}/s, in three layouts, each on fresh ssegate processes \
         with `--sse-shared /sse` and `--threads 2`: **{single}** (all {n} subscribers on it); **{separate}** \
         (subscriber i on instance i mod 3; each instance reads the upstream itself, as several instances do \
         without `--cluster`); **{cluster}** (the same spread, each instance with `--cluster \
         redis://127.0.0.1:PORT/0` to one real redis-server ({redis}, no persistence, a key prefix of its own \
         per run) and the default `--cluster-lease 3s`: the instance that takes the lease reads the upstream \
         into the Redis Stream, and every instance, that one included, tails the stream and serves its own \
         subscribers). Latency as in (a): from the upstream's timestamp to the load generator parsing the \
         event. Every subscriber must receive every event of the run (ids 0 to {last}): \"lost\" counts the \
         (subscriber, event) pairs missing when no event had arrived for {drain:?}, \"dup\" those received \
         twice. \"upstream requests\" counts the `GET /sse/events` requests the upstream answered from the \
         instances' start to their stop (right: 1 for one instance and for the cluster, 3 without Redis); \
         \"reader\" is the instance that logged `cluster: reading the upstream`. CPU is utime+stime during \
         the run, per delivered event, of all the instances together and of redis-server; \"redis commands \
         per event\" divides the commands redis-server ran from `CONFIG RESETSTAT` before the run's first \
         event to its last delivery (`INFO commandstats`) by the events published. Everything (the \
         instances, redis-server, the upstream and the load generator) shares the machine's 2 cores. This \
         ran in {rounds} round{plural}, each taking every layout over every protocol in turn; each cell is the \
         layout's round with the median p99 (\"by round\" lists every round; \"lost, all rounds\" sums \
         them).\n",
        n = sizes.cluster_subscribers,
        events = sizes.cluster_events,
        size = sizes.fanout_event_size,
        rate = sizes.cluster_rate,
        single = ClusterLayout::Single.label(),
        separate = ClusterLayout::Separate.label(),
        cluster = ClusterLayout::Cluster.label(),
        redis = results.redis_version.as_deref().unwrap_or("version unknown"),
        last = sizes.cluster_events.saturating_sub(1),
        drain = sizes.drain,
        plural = if rounds == 1 { "" } else { "s" },
    );
    let protocols = &info.protocols;
    let summaries: Vec<(ClusterLayout, Protocol, ClusterSummary)> = ClusterLayout::ALL
        .iter()
        .flat_map(|&layout| {
            protocols.iter().filter_map(move |&protocol| {
                cluster_summary(results, layout, protocol).map(|s| (layout, protocol, s))
            })
        })
        .collect();
    let find = |layout: ClusterLayout, protocol: Protocol| {
        summaries
            .iter()
            .find(|(l, p, _)| *l == layout && *p == protocol)
            .map(|(_, _, s)| s)
    };
    let single_p99 = |protocol: Protocol| {
        find(ClusterLayout::Single, protocol).map(|s| cluster_p99_ms(s.median))
    };
    let rows: Vec<(Vec<String>, ClusterLayout)> = ClusterLayout::ALL
        .iter()
        .filter(|&&l| protocols.iter().any(|&p| find(l, p).is_some()))
        .map(|&l| (vec![l.label().to_string()], l))
        .collect();
    let h = |s: &ClusterSummary| s.median.events.latency_us.clone();
    let events = sizes.cluster_events;
    side_by_side(
        md,
        protocols,
        &["layout"],
        &rows,
        |&layout, protocol| find(layout, protocol),
        &[
            ("streams ok", &|s: &ClusterSummary| {
                let e = &s.median.events;
                format!("{}/{}", e.streams - e.failed, e.streams)
            }),
            ("delivered / expected", &|s: &ClusterSummary| {
                format!("{}/{}", s.median.events.received, s.median.events.expected)
            }),
            ("lost", &|s: &ClusterSummary| {
                s.median.events.lost().to_string()
            }),
            ("lost, all rounds", &|s: &ClusterSummary| {
                s.rounds
                    .iter()
                    .map(|r| r.events.lost())
                    .sum::<u64>()
                    .to_string()
            }),
            ("dup", &|s: &ClusterSummary| {
                s.median.events.duplicates.to_string()
            }),
            ("upstream requests by round", &|s: &ClusterSummary| {
                by_round(&s.rounds, |r| {
                    r.upstream_requests.map_or("?".into(), |n| n.to_string())
                })
            }),
            ("reader", &|s: &ClusterSummary| readers_cell(s.median)),
            ("p50 ms", &|s: &ClusterSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.5))
            }),
            ("p99 ms", &|s: &ClusterSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.99))
            }),
            ("p99 ms by round", &|s: &ClusterSummary| {
                by_round(&s.rounds, |r| format!("{:.2}", cluster_p99_ms(r)))
            }),
            ("p99.9 ms", &|s: &ClusterSummary| {
                format!("{:.2}", quantile_ms(&h(s), 0.999))
            }),
            ("max ms", &|s: &ClusterSummary| {
                format!("{:.2}", s.median.events.latency_us.max() as f64 / 1000.0)
            }),
            ("p99 ms by instance", &|s: &ClusterSummary| {
                let reader = |i: usize| s.median.readers.iter().any(|&(r, _)| r == i);
                s.median
                    .by_instance
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let p99 = format!("{:.2}", quantile_ms(&b.latency_us, 0.99));
                        if reader(i + 1) {
                            format!("{p99} (reader)")
                        } else {
                            p99
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" / ")
            }),
            ("instances' CPU us/event", &|s: &ClusterSummary| {
                opt(s.median.proxy_cpu_us_per_event(), 2)
            }),
            ("redis CPU us/event", &|s: &ClusterSummary| {
                opt(s.median.redis_cpu_us_per_event(), 2)
            }),
            ("redis commands per event", &|s: &ClusterSummary| {
                redis_calls_cell(s.median, events)
            }),
            ("p99 ÷ 1 instance", &|s: &ClusterSummary| {
                ratio(
                    Some(cluster_p99_ms(s.median)),
                    single_p99(s.median.protocol),
                )
            }),
        ],
    );
}

fn first_failure(r: &ThroughputResult) -> String {
    r.steps
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
        .unwrap_or_else(|| "none (ladder exhausted)".into())
}

fn reqresp_table(md: &mut String, results: &Results, info: &RunInfo) {
    md.push_str("\n## (d) Request/response against the static upstream\n\n");
    let _ = writeln!(
        md,
        "GET `/static` (1 KiB) from {} concurrent clients for {:?} after {:?} of warm-up: over keep-alive \
         connections (HTTP/1.1: one request at a time per connection; HTTP/2: {} requests in flight per \
         connection, as h2load -m {}), then with a new connection per request (a full TLS handshake each, one \
         request per connection over either protocol: the client disables \
         session resumption, and checks neither the server's certificate nor its handshake signature, so that \
         the cores it shares with the proxy go to the proxy's handshake rather than to the client's ECDSA \
         verify; every other connection of the run verifies the chain). The direct path is plain HTTP, so its second figure is TCP connections/s. \
         \"harness CPU\" is the load generator's and the upstream's CPU in the same interval, per request: \
         they share the cores with the proxy, so requests/s is about 2 cores ÷ (proxy CPU + harness CPU). \
         \"ssegate ÷ this\" compares requests/s over the same protocol (above 1 is better for ssegate). This ran in {} rounds, \
         each taking every peer over every protocol in turn on a fresh process, so that the machine's drift (±10% between runs \
         minutes apart) falls on every peer alike; each cell is the peer's median round (\"by round\" lists \
         them all), chosen separately for keep-alive and for new connections.\n",
        info.sizes.reqresp_connections,
        info.sizes.reqresp_duration,
        info.sizes.reqresp_warmup,
        info.sizes.h2_streams,
        info.sizes.h2_streams,
        info.sizes.rounds
    );
    let summaries: Vec<(Protocol, Vec<ReqRespSummary>)> = info
        .protocols
        .iter()
        .map(|&p| (p, reqresp_summaries(results, p)))
        .collect();
    let find = |kind: PeerKind, protocol: Protocol| {
        summaries
            .iter()
            .find(|(p, _)| *p == protocol)
            .and_then(|(_, s)| s.iter().find(|s| s.peer == kind))
    };
    let rate = |phase: Phase, kind: PeerKind, p: Protocol| {
        find(kind, p).map(|r| r.median(phase).outcome.per_second())
    };
    let rows: Vec<(Vec<String>, PeerKind)> = peers_in_order(results.reqresp.iter().map(|r| r.peer))
        .into_iter()
        .map(|k| (vec![k.to_string()], k))
        .collect();
    let mut columns = phase_columns(Phase::KeepAlive, "keep-alive req/s", "req");
    columns.extend(phase_columns(
        Phase::NewConnection,
        "new-connection req/s (handshakes/s)",
        "handshake",
    ));
    for (phase, what) in [
        (Phase::KeepAlive, "req/s"),
        (Phase::NewConnection, "handshakes/s"),
    ] {
        columns.push((
            format!("ssegate ÷ this {what}"),
            Box::new(move |s: &ReqRespSummary| {
                ratio(
                    rate(phase, PeerKind::Ssegate, s.protocol),
                    rate(phase, s.peer, s.protocol),
                )
            }),
        ));
    }
    let metrics: Vec<Metric<'_, ReqRespSummary>> = columns
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_ref()))
        .collect();
    side_by_side(
        md,
        &info.protocols,
        &["peer"],
        &rows,
        |&kind, protocol| find(kind, protocol),
        &metrics,
    );
}

/// The two loads of a request/response round.
#[derive(Debug, Clone, Copy)]
enum Phase {
    KeepAlive,
    NewConnection,
}

impl Phase {
    fn of(self, result: &ReqRespResult) -> &LoadPhase {
        match self {
            Phase::KeepAlive => &result.keepalive,
            Phase::NewConnection => &result.handshakes,
        }
    }
}

type Column<'a, T> = (String, Box<dyn Fn(&T) -> String + 'a>);

/// One phase's columns: its rate (`rate_name`), each round's, p99, the
/// proxy's and the harness's CPU per `unit`, and errors.
fn phase_columns<'a>(
    phase: Phase,
    rate_name: &str,
    unit: &str,
) -> Vec<Column<'a, ReqRespSummary<'a>>> {
    let per_unit = |cpu: Option<f64>, n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
    vec![
        (
            rate_name.to_owned(),
            Box::new(move |s: &ReqRespSummary| {
                format!("{:.0}", s.median(phase).outcome.per_second())
            }),
        ),
        (
            "by round".to_owned(),
            Box::new(move |s: &ReqRespSummary| {
                by_round(&s.rounds, |r| {
                    format!("{:.0}", phase.of(r).outcome.per_second())
                })
            }),
        ),
        (
            "p99 ms".to_owned(),
            Box::new(move |s: &ReqRespSummary| {
                format!(
                    "{:.2}",
                    quantile_ms(&s.median(phase).outcome.latency_us, 0.99)
                )
            }),
        ),
        (
            format!("proxy CPU us/{unit}"),
            Box::new(move |s: &ReqRespSummary| {
                let m = s.median(phase);
                opt(per_unit(m.cpu_seconds, m.outcome.completed), 1)
            }),
        ),
        (
            format!("harness CPU us/{unit}"),
            Box::new(move |s: &ReqRespSummary| {
                let m = s.median(phase);
                opt(per_unit(m.harness_cpu_seconds, m.outcome.completed), 1)
            }),
        ),
        (
            "errors".to_owned(),
            Box::new(move |s: &ReqRespSummary| s.median(phase).outcome.errors.to_string()),
        ),
    ]
}

/// One peer's request/response rounds over one protocol, and its median
/// round for each rate.
struct ReqRespSummary<'a> {
    peer: PeerKind,
    protocol: Protocol,
    /// The round with the median keep-alive requests/s.
    keepalive: &'a ReqRespResult,
    /// The round with the median handshakes/s.
    handshakes: &'a ReqRespResult,
    /// Every round, in the order run.
    rounds: Vec<&'a ReqRespResult>,
}

impl ReqRespSummary<'_> {
    /// `phase` of the round with the median rate for it.
    fn median(&self, phase: Phase) -> &LoadPhase {
        match phase {
            Phase::KeepAlive => &self.keepalive.keepalive,
            Phase::NewConnection => &self.handshakes.handshakes,
        }
    }
}

/// Each peer's rounds over `protocol`, peers in the order first run.
fn reqresp_summaries(results: &Results, protocol: Protocol) -> Vec<ReqRespSummary<'_>> {
    rounds_by_peer(results.reqresp.iter().filter(|r| r.protocol == protocol))
        .into_iter()
        .map(|(peer, rounds)| ReqRespSummary {
            peer,
            protocol,
            keepalive: median(&rounds, |r| r.keepalive.outcome.per_second()),
            handshakes: median(&rounds, |r| r.handshakes.outcome.per_second()),
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

/// One peer's fan-out rounds at one K over one protocol, and its round
/// with the median p99.
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

/// The fan-out rounds at `subscribers` over `protocol`, one summary per
/// peer in the order first run. A round's p99 comes from K × events
/// samples but mostly from a few slow events, so it varies from round to
/// round: tables, plots and targets use each peer's median round.
fn fanout_summaries(
    results: &Results,
    subscribers: usize,
    protocol: Protocol,
) -> Vec<FanoutSummary<'_>> {
    let at_size = results
        .fanout
        .iter()
        .filter(|r| r.subscribers == subscribers && r.protocol == protocol);
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

fn plot_fanout(
    path: &Path,
    results: &Results,
    subscribers: usize,
    protocol: Protocol,
) -> Result<(), String> {
    let rows: Vec<&FanoutResult> = fanout_summaries(results, subscribers, protocol)
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
            format!("Fan-out delivery latency, {subscribers} subscribers, {protocol}"),
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

/// Memory per stream against N: one line per peer and protocol, HTTP/2's
/// in a lighter shade of the peer's colour with hollow markers.
fn plot_holding(path: &Path, results: &Results) -> Result<(), String> {
    let series: BTreeSet<(PeerKind, Protocol)> = results
        .holding
        .iter()
        .map(|r| (r.peer, r.protocol))
        .collect();
    let points = |(kind, protocol): (PeerKind, Protocol)| -> Vec<(f64, f64)> {
        results
            .holding
            .iter()
            .filter(|r| r.peer == kind && r.protocol == protocol)
            .map(|r| (r.streams as f64, r.bytes_per_stream() / 1024.0))
            .collect()
    };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|&s| points(s)).collect();
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
    for (kind, protocol) in series {
        let base = peer_color(kind);
        let color = match protocol {
            Protocol::H1 => base.to_rgba(),
            Protocol::H2 => base.mix(0.5),
        };
        let line = points((kind, protocol));
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{kind} {protocol}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let marker = match protocol {
            Protocol::H1 => color.filled(),
            Protocol::H2 => color.stroke_width(2),
        };
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 4, marker)))
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
        "protocols": info.protocols.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "h2_streams_per_connection": info.sizes.h2_streams,
        "peers": results.peers.iter().map(|r| json!({
            "peer": r.kind.name(),
            "version": r.version,
            "negotiated": r.negotiated.iter().map(|(p, n)| json!({
                "protocol": p.name(),
                "started": !matches!(n, Negotiated::Failed),
                "tls": match n {
                    Negotiated::Tls(t) => Some(t.to_string()),
                    _ => None,
                },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": target_rows(results, &info.protocols).iter().map(|row| json!({
            "target": row.target,
            "by_protocol": row.cells.iter().map(|(p, limit, cell)| {
                let (measured, verdict) = cell.judge();
                json!({
                    "protocol": p.name(),
                    "limit": limit,
                    "measured": measured,
                    "met": verdict,
                })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "fanout": results.fanout.iter().map(|r| json!({
            "peer": r.peer.name(),
            "protocol": r.protocol.name(),
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
            "protocol": r.protocol.name(),
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
            "protocol": r.protocol.name(),
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
            "protocol": r.protocol.name(),
            "round": r.round,
            "keepalive_per_second": r.keepalive.outcome.per_second(),
            "keepalive_errors": r.keepalive.outcome.errors,
            "keepalive_latency": latency(&r.keepalive.outcome.latency_us),
            "keepalive_cpu_seconds": r.keepalive.cpu_seconds,
            "keepalive_harness_cpu_seconds": r.keepalive.harness_cpu_seconds,
            "handshakes_per_second": r.handshakes.outcome.per_second(),
            "handshake_errors": r.handshakes.outcome.errors,
            "handshake_latency": latency(&r.handshakes.outcome.latency_us),
            "handshakes_cpu_seconds": r.handshakes.cpu_seconds,
            "handshakes_harness_cpu_seconds": r.handshakes.harness_cpu_seconds,
        })).collect::<Vec<_>>(),
        "cluster": results.cluster.iter().map(|r| json!({
            "layout": r.layout.name(),
            "instances": r.layout.instances(),
            "protocol": r.protocol.name(),
            "round": r.round,
            "subscribers": r.events.streams,
            "expected": r.events.expected,
            "received": r.events.received,
            "lost": r.events.lost(),
            "duplicates": r.events.duplicates,
            "streams_failed": r.events.failed,
            "upstream_requests": r.upstream_requests,
            "readers": r.readers.iter().map(|&(i, n)| json!({"instance": i, "times": n})).collect::<Vec<_>>(),
            "latency": latency(&r.events.latency_us),
            "latency_by_instance": r.by_instance.iter().map(|b| latency(&b.latency_us)).collect::<Vec<_>>(),
            "instances_cpu_seconds": r.proxy_cpu_seconds,
            "instances_cpu_us_per_event": r.proxy_cpu_us_per_event(),
            "redis_cpu_seconds": r.redis_cpu_seconds,
            "redis_cpu_us_per_event": r.redis_cpu_us_per_event(),
            "redis_calls": r.redis_calls.iter().map(|(name, calls)| json!({"command": name, "calls": calls})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "redis_version": results.redis_version,
        "failures": results.failures,
        "notes": results.notes,
    })
}
