//! `cargo bench --bench compare`: ssegate side by side with nginx, HAProxy,
//! Caddy and the direct path, on fan-out latency, idle-stream memory,
//! single-stream throughput and request/response rates, each over HTTP/1.1
//! and over HTTP/2 (the browser's path); and ssegate's fan-out over three
//! instances sharing one upstream reader through Redis against one instance
//! (`cluster-fanout`, needs redis-server). Writes
//! target/bench-report/report.md (+ SVG plots and results.json).
//!
//! `cargo bench --bench compare -- --smoke` runs tiny sizes (CI) and exits
//! non-zero when any scenario loses events or a peer fails to start.
//! `-- --only fanout --peers ssegate,nginx --protocols h2` runs pieces;
//! `-- --help` lists all.
//!
//! Modules: `upstream` (the event publisher and static upstream, a child
//! process), `loadgen` (TLS clients and event counting), `http_get` (the
//! request/response client), `peers` (starting and
//! configuring the proxies), `scenarios` (what is measured), `report`
//! (markdown, SVG, JSON), `sys` (/proc, rlimits, the shared clock).

mod http_get;
mod loadgen;
mod peers;
mod report;
mod scenarios;
mod sys;
mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

use loadgen::{CertCheck, ClientTls, Protocol};
use peers::{PeerKind, PeerSetup};
use scenarios::{Bench, Negotiated, PeerRecord, Results, ScenarioKind, Sizes};

/// ssegate side by side with nginx, HAProxy, Caddy and the direct path.
///
/// Run as `cargo bench --bench compare [-- OPTIONS]`; the report goes to
/// target/bench-report/report.md. Needs nginx, haproxy and caddy installed
/// (Debian packages of the same names) unless left out with --peers.
#[derive(Debug, Parser)]
#[command(name = "compare")]
struct Options {
    /// Tiny sizes that prove the harness works (for CI); fails on any lost event.
    #[arg(long)]
    smoke: bool,

    /// Scenarios to run (comma-separated); all when omitted.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<ScenarioKind>,

    /// Peers to run (comma-separated); all when omitted.
    #[arg(long, value_delimiter = ',', value_enum)]
    peers: Vec<PeerKind>,

    /// HTTP versions to measure every scenario over (comma-separated): h1
    /// offers ALPN http/1.1, h2 offers ALPN h2 (the direct path is h1 only).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "h1,h2")]
    protocols: Vec<Protocol>,

    /// Fan-out subscriber counts, overriding the mode's (e.g. 100,1000).
    #[arg(long, value_delimiter = ',')]
    fanout_subscribers: Option<Vec<usize>>,

    /// Fan-out events published per second at every K, overriding the mode's
    /// pacing (the same deliveries per second at every K).
    #[arg(long)]
    fanout_rate: Option<u64>,

    /// Fan-out events per run at every K, overriding rate x the mode's duration.
    #[arg(long)]
    fanout_events: Option<u64>,

    /// Throughput event rates to try, overriding the mode's ladder (e.g. 1000,50000).
    #[arg(long, value_delimiter = ',')]
    throughput_rates: Option<Vec<u64>>,

    /// Request/response concurrent clients (connections), overriding the mode's.
    #[arg(long)]
    reqresp_connections: Option<usize>,

    /// Requests in flight per connection in the HTTP/2 keep-alive run (as
    /// h2load -m) [default: 10].
    #[arg(long)]
    h2_streams: Option<usize>,

    /// Rounds of fan-out, request/response and cluster fan-out, overriding the mode's.
    #[arg(long)]
    rounds: Option<usize>,

    /// Cluster fan-out subscribers, spread over the instances, overriding
    /// the mode's (full: 300, smoke: 30).
    #[arg(long)]
    cluster_subscribers: Option<usize>,

    /// Holding stream counts, overriding the mode's (e.g. 1000,5000,15000).
    #[arg(long, value_delimiter = ',')]
    holding_streams: Option<Vec<usize>>,

    /// Start ssegate through this command prefix, split on spaces (profiling,
    /// e.g. "env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" or "heaptrack -o /tmp/ssegate").
    #[arg(long)]
    ssegate_wrapper: Option<String>,

    /// Give ssegate the upstream this many times, as a group of targets
    /// balanced least-conn (to compare against 1, the default: what the
    /// group layer costs).
    #[arg(long, default_value_t = 1)]
    ssegate_targets: usize,

    /// Where to write the report [default: target/bench-report].
    #[arg(long)]
    out: Option<PathBuf>,

    /// Exit non-zero on lost events in a full run too (a smoke run always does).
    #[arg(long)]
    strict: bool,

    /// Keep the peers' generated configurations and logs (printed at the end).
    #[arg(long)]
    keep_workdir: bool,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,

    /// Internal: run as the upstream child process.
    #[arg(long, hide = true)]
    role: Option<String>,

    /// Internal: the upstream child's listen address.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let options = Options::parse();
    if options.role.as_deref() == Some("upstream") {
        let _ = sys::raise_open_file_limit();
        return match upstream::run_child(options.listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("upstream: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("compare: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("compare: {err}");
            ExitCode::FAILURE
        }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/ of this build: the bench binary lives in target/<profile>/deps/.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join("release").is_dir() || dir.join("debug").is_dir())
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// Starts a peer for a scenario over `protocol`, recording it (name,
/// version, negotiated TLS and ALPN) the first time, or its failure to start.
async fn start_peer(
    kind: PeerKind,
    protocol: Protocol,
    setup: &PeerSetup,
    results: &mut Results,
) -> Option<peers::RunningPeer> {
    println!("{kind} {protocol}: starting");
    let started = peers::start(kind, protocol, setup).await;
    if !results.peers.iter().any(|r| r.kind == kind) {
        results.peers.push(PeerRecord {
            kind,
            version: peers::version(kind, &setup.ssegate_bin),
            negotiated: Vec::new(),
        });
    }
    let record = results.peers.iter_mut().find(|r| r.kind == kind)?;
    let first_time = !record.tried(protocol);
    match started {
        Ok(peer) => {
            println!("{kind} {protocol}: listening on {}", peer.addr);
            if first_time {
                let negotiated = match &peer.tls {
                    Some(tls) => Negotiated::Tls(tls.clone()),
                    None => Negotiated::Plain,
                };
                record.negotiated.push((protocol, negotiated));
            }
            Some(peer)
        }
        Err(err) => {
            eprintln!("{kind} {protocol}: FAILED TO START: {err}");
            if first_time {
                record.negotiated.push((protocol, Negotiated::Failed));
            }
            results
                .failures
                .push(format!("{kind} {protocol} failed to start: {err}"));
            None
        }
    }
}

/// Stops a peer, recording a failure if it had exited on its own, and waits
/// for the upstream to close that peer's connections.
async fn stop_peer(bench: &Bench, peer: peers::RunningPeer, results: &mut Results) {
    let label = peer.label();
    if peer.usage().is_none() && peer.kind != PeerKind::Direct {
        results.failures.push(format!(
            "{label} exited during the run; its output:\n{}",
            peer.log_tail()
        ));
    }
    peer.stop().await;
    if let Err(held) = bench.upstream_released().await {
        results.notes.push(format!("{label}: {held}"));
    }
}

/// Runs `scenario` in `sizes.rounds` rounds, each taking every peer over
/// every protocol in turn on a fresh process: the machine's speed drifts by
/// more than the differences measured (seen: ±10% between runs minutes
/// apart), and taking turns puts every peer under the same drift. The
/// report gives each peer's median round. False if a peer did not start.
async fn run_in_rounds(
    bench: &Bench,
    scenario: ScenarioKind,
    units: &[(PeerKind, Protocol)],
    setup: &PeerSetup,
    results: &mut Results,
) -> bool {
    let mut all_started = true;
    // --sse-shared changes only event streams: /static takes ssegate's path.
    let skip_shared = scenario == ScenarioKind::Reqresp;
    if skip_shared && units.iter().any(|(k, _)| *k == PeerKind::SsegateShared) {
        results.notes.push(
            "reqresp: ssegate-shared left out: --sse-shared changes only event streams, so /static takes ssegate's path".into(),
        );
    }
    let rounds = bench.sizes.rounds;
    for round in 1..=rounds {
        println!("{scenario:?}: round {round} of {rounds}");
        for &(kind, protocol) in units
            .iter()
            .filter(|(k, _)| !(skip_shared && *k == PeerKind::SsegateShared))
        {
            let Some(peer) = start_peer(kind, protocol, setup, results).await else {
                all_started = false;
                continue;
            };
            bench.run(scenario, &peer, round, results).await;
            stop_peer(bench, peer, results).await;
        }
    }
    all_started
}

fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {memory}, Linux {}, loopback only",
        kernel.trim()
    )
}

/// Runs the selected scenarios; Ok(false) when the run failed (lost events,
/// a peer that did not start) in a mode where that counts.
async fn run(options: Options) -> Result<bool, String> {
    let started = Instant::now();
    let strict = options.smoke || options.strict;
    let mut sizes = if options.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if let Some(k) = &options.fanout_subscribers {
        sizes.fanout_subscribers = k.clone();
    }
    sizes.fanout_rate = options.fanout_rate;
    sizes.fanout_events = options.fanout_events;
    if let Some(rates) = &options.throughput_rates {
        sizes.throughput_rates = rates.clone();
    }
    if let Some(connections) = options.reqresp_connections {
        sizes.reqresp_connections = connections.max(1);
    }
    if let Some(streams) = options.h2_streams {
        sizes.h2_streams = streams.max(1);
    }
    if let Some(rounds) = options.rounds {
        sizes.rounds = rounds.max(1);
        sizes.cluster_rounds = rounds.max(1);
    }
    if let Some(n) = options.cluster_subscribers {
        sizes.cluster_subscribers = n.max(1);
    }
    if let Some(n) = &options.holding_streams {
        sizes.holding_streams = n.clone();
    }
    let scenarios: Vec<ScenarioKind> = if options.only.is_empty() {
        ScenarioKind::ALL.to_vec()
    } else {
        ScenarioKind::ALL
            .into_iter()
            .filter(|s| options.only.contains(s))
            .collect()
    };
    let peer_kinds: Vec<PeerKind> = if options.peers.is_empty() {
        PeerKind::ALL.to_vec()
    } else {
        PeerKind::ALL
            .into_iter()
            .filter(|p| options.peers.contains(p))
            .collect()
    };
    let protocols: Vec<Protocol> = Protocol::ALL
        .into_iter()
        .filter(|p| options.protocols.contains(p))
        .collect();
    if protocols.is_empty() {
        return Err("--protocols: name at least one of h1, h2".into());
    }
    // Each peer over each protocol it speaks, protocols of one peer together.
    let units: Vec<(PeerKind, Protocol)> = peer_kinds
        .iter()
        .flat_map(|&kind| protocols.iter().map(move |&protocol| (kind, protocol)))
        .filter(|&(kind, protocol)| peers::speaks(kind, protocol))
        .collect();
    if units.is_empty() {
        return Err(
            "none of the selected peers is measured over the selected protocols \
                    (the direct path is h1 only)"
                .into(),
        );
    }
    // The cluster fan-out starts its own ssegate instances, whatever --peers says.
    let with_peers = scenarios.iter().any(|s| *s != ScenarioKind::ClusterFanout);
    if with_peers {
        peers::check_installed(&peer_kinds)?;
    }
    if scenarios.contains(&ScenarioKind::ClusterFanout) {
        peers::check_redis_installed()?;
    }

    let open_file_limit =
        sys::raise_open_file_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let ssegate_bin = PathBuf::from(env!("CARGO_BIN_EXE_ssegate"));
    if !ssegate_bin.is_file() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release`",
            ssegate_bin.display()
        ));
    }
    let cert = manifest_dir().join("certs/localhost.pem");
    let key = manifest_dir().join("certs/localhost-key.pem");
    let client_tls = ClientTls::new(&cert, true, CertCheck::Chain)?;
    let full_handshake_tls = ClientTls::new(&cert, false, CertCheck::Unchecked)?;
    let workdir = std::env::temp_dir().join(format!("ssegate-compare-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let harness_exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let upstream = upstream::UpstreamProcess::spawn(&harness_exe).await?;
    // Client connections come from 127.0.0.1-4 so ephemeral ports never run short.
    let sources: Arc<Vec<Ipv4Addr>> =
        Arc::new((1..=4).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect());
    let setup = PeerSetup {
        workdir: workdir.clone(),
        cert,
        key,
        upstream: upstream.addr,
        ssegate_bin: ssegate_bin.clone(),
        ssegate_wrapper: options
            .ssegate_wrapper
            .as_deref()
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        ssegate_targets: options.ssegate_targets,
        open_file_limit,
        client_tls,
        sources,
    };
    println!(
        "compare: {} run, scenarios {:?}, peers {:?}, protocols {:?}, upstream {} , open-file limit {open_file_limit}",
        if options.smoke { "smoke" } else { "full" },
        scenarios,
        peer_kinds.iter().map(|p| p.name()).collect::<Vec<_>>(),
        protocols.iter().map(|p| p.name()).collect::<Vec<_>>(),
        upstream.addr
    );
    let bench = Bench::new(upstream, sizes.clone(), open_file_limit, full_handshake_tls);
    let mut results = Results::default();
    if options.ssegate_targets > 1 {
        results.notes.push(format!(
            "ssegate got the upstream {} times (--ssegate-targets): a group of that many targets, balanced least-conn",
            options.ssegate_targets
        ));
    }
    if with_peers && peer_kinds.contains(&PeerKind::Direct) && protocols.contains(&Protocol::H2) {
        results.notes.push(
            "direct: measured over HTTP/1.1 only: it is plain HTTP to the upstream, with no TLS to negotiate h2 on"
                .into(),
        );
    }

    // Holding and throughput run peer by peer on one process each; fan-out
    // and request/response follow, in rounds that take the peers in turn
    // (see `run_in_rounds`).
    // The cluster fan-out comes last, on instances of its own.
    let in_rounds = [ScenarioKind::Fanout, ScenarioKind::Reqresp];
    let per_peer: Vec<ScenarioKind> = scenarios
        .iter()
        .copied()
        .filter(|s| !in_rounds.contains(s) && *s != ScenarioKind::ClusterFanout)
        .collect();
    let mut failed_to_start = Vec::new();
    let mut peer_failed = false;
    for &(kind, protocol) in units.iter().filter(|_| !per_peer.is_empty()) {
        let Some(peer) = start_peer(kind, protocol, &setup, &mut results).await else {
            failed_to_start.push((kind, protocol));
            peer_failed = true;
            continue;
        };
        let label = peer.label();
        let baseline_fds = peer.usage().map_or(0, |u| u.open_fds);
        let mut running = Some(peer);
        for (i, &scenario) in per_peer.iter().enumerate() {
            let Some(peer) = running.as_ref() else { break };
            bench.run(scenario, peer, 1, &mut results).await;
            if i + 1 == per_peer.len() {
                break;
            }
            // A peer that still holds the closed streams' connections would
            // start the next scenario with fewer free descriptors: restart it.
            if let Err(held) = bench.connections_released(peer, baseline_fds).await {
                results.notes.push(format!(
                    "{label}: {held} after the {scenario:?} scenario's clients had closed their \
                     connections; restarted it before the next scenario"
                ));
                println!("{label}: {held}; restarting");
                if let Some(peer) = running.take() {
                    stop_peer(&bench, peer, &mut results).await;
                }
                match peers::start(kind, protocol, &setup).await {
                    Ok(peer) => running = Some(peer),
                    Err(err) => {
                        results
                            .failures
                            .push(format!("{label} failed to restart: {err}"));
                        peer_failed = true;
                    }
                }
            }
        }
        if let Some(peer) = running {
            stop_peer(&bench, peer, &mut results).await;
        }
    }
    let started_units: Vec<(PeerKind, Protocol)> = units
        .iter()
        .copied()
        .filter(|unit| !failed_to_start.contains(unit))
        .collect();
    for scenario in in_rounds.into_iter().filter(|s| scenarios.contains(s)) {
        peer_failed |= !run_in_rounds(&bench, scenario, &started_units, &setup, &mut results).await;
    }
    if scenarios.contains(&ScenarioKind::ClusterFanout) {
        peer_failed |= !bench.cluster_fanout(&setup, &protocols, &mut results).await;
    }
    let Bench { upstream, .. } = bench;
    upstream.stop().await;

    let mode = if options.smoke { "smoke" } else { "full" };
    let mut command = String::from("cargo bench --bench compare");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    let info = report::RunInfo {
        command,
        mode,
        protocols,
        machine: machine_description(),
        open_file_limit,
        sizes,
        elapsed: started.elapsed(),
    };
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-report"));
    let written = report::write(&out, &info, &results)?;
    println!("\nreport: {}", written.markdown.display());
    for file in &written.files {
        println!("        {}", file.display());
    }
    if options.keep_workdir {
        println!("peer configurations and logs kept in {}", workdir.display());
    } else {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    if !results.failures.is_empty() {
        eprintln!("\n{} failure(s):", results.failures.len());
        for failure in &results.failures {
            eprintln!("  - {failure}");
        }
    }
    println!(
        "compare: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // A peer that does not start fails every run; lost events fail a smoke
    // (or --strict) run, while a full run reports them and succeeds.
    Ok(!peer_failed && (results.failures.is_empty() || !strict))
}
