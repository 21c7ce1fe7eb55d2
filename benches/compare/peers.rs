//! The proxies under comparison, each started by the harness as its own
//! process(es) with the same certificate, TLS versions (1.2 + 1.3), X25519
//! key exchange, ALPN h2 and http/1.1 (the client picks one per run), two
//! worker threads or processes, and the same X-Forwarded-For/-Proto/-Host
//! headers toward the upstream:
//!
//! - ssegate: the release binary (target/release/ssegate), per stream or
//!   with `--sse-shared /sse` (one upstream request per stream path);
//! - nginx, configured as SSE guides say (proxy_buffering off, HTTP/1.1 with
//!   upstream keepalive, long proxy_read_timeout);
//! - HAProxy in HTTP mode; Caddy's reverse_proxy;
//! - nginx and Caddy keep up to `UPSTREAM_IDLE_POOL` idle upstream
//!   connections (HAProxy and ssegate have no such cap), so that 320
//!   requests in flight over HTTP/2 do not churn their upstream connections;
//! - direct: no proxy, plain HTTP/1.1 to the upstream (the floor; HTTP/1.1
//!   only, as there is no TLS to negotiate h2 on).
//!
//! ssegate's binary has no option to restrict key-exchange groups; the load
//! generator offers only X25519, which pins it for every peer alike, and the
//! negotiated group is checked and reported.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::loadgen::{self, ClientTls, Protocol, Target, TlsInfo};
use crate::sys;
use crate::upstream::{SHARED_PREFIX, STATIC_PATH};

/// Worker threads (ssegate, HAProxy, Caddy) or worker processes (nginx).
pub const WORKERS: usize = 2;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors a process needs besides its connections.
const FD_SLACK: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum PeerKind {
    /// No proxy: plain HTTP straight to the upstream.
    Direct,
    /// ssegate, one upstream request per client stream.
    Ssegate,
    /// ssegate with `--sse-shared /sse`: one upstream request per stream path.
    SsegateShared,
    /// nginx as SSE guides configure it (proxy_buffering off, HTTP/1.1 keepalive upstream).
    Nginx,
    /// HAProxy in HTTP mode.
    Haproxy,
    /// Caddy's reverse_proxy with flush_interval -1.
    Caddy,
}

impl PeerKind {
    pub const ALL: [PeerKind; 6] = [
        PeerKind::Direct,
        PeerKind::Ssegate,
        PeerKind::SsegateShared,
        PeerKind::Nginx,
        PeerKind::Haproxy,
        PeerKind::Caddy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::Ssegate => "ssegate",
            PeerKind::SsegateShared => "ssegate-shared",
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Caddy => "caddy",
        }
    }

    /// The external program and the Debian package that provides it.
    pub fn program(self) -> Option<(&'static str, &'static str)> {
        match self {
            PeerKind::Nginx => Some(("nginx", "nginx")),
            PeerKind::Haproxy => Some(("haproxy", "haproxy")),
            PeerKind::Caddy => Some(("caddy", "caddy")),
            _ => None,
        }
    }

    /// File descriptors the busiest process of this peer needs for `streams`
    /// open event streams (for the direct path: the upstream process).
    pub fn fds_needed(self, streams: usize) -> usize {
        let per_stream = match self {
            PeerKind::Direct | PeerKind::SsegateShared => 1,
            _ => 2,
        };
        // nginx spreads connections over its workers (listen ... reuseport);
        // allow 10% imbalance.
        let per_process = match self {
            PeerKind::Nginx => streams * per_stream * 11 / (10 * WORKERS),
            _ => streams * per_stream,
        };
        per_process + FD_SLACK
    }
}

impl std::fmt::Display for PeerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Finds `program` in PATH or the usual sbin directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails with the packages to install when a selected peer is missing.
pub fn check_installed(kinds: &[PeerKind]) -> Result<(), String> {
    let missing: Vec<(&str, &str)> = kinds
        .iter()
        .filter_map(|kind| kind.program())
        .filter(|(program, _)| find_program(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    Err(format!(
        "peer program(s) not installed: {}. Install them with `apt-get install -y {}`, \
         or leave them out with --peers.",
        programs.join(", "),
        packages.join(" ")
    ))
}

/// The program's version line, for the report.
pub fn version(kind: PeerKind, ssegate_bin: &Path) -> String {
    let (program, args): (PathBuf, &[&str]) = match kind {
        PeerKind::Direct => return "-".into(),
        PeerKind::Ssegate | PeerKind::SsegateShared => (ssegate_bin.to_path_buf(), &["--version"]),
        PeerKind::Nginx => (find_program("nginx").unwrap_or_default(), &["-v"]),
        PeerKind::Haproxy => (find_program("haproxy").unwrap_or_default(), &["-v"]),
        PeerKind::Caddy => (find_program("caddy").unwrap_or_default(), &["version"]),
    };
    match std::process::Command::new(program).args(args).output() {
        Ok(output) => {
            let text = [output.stdout, output.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(err) => format!("unknown ({err})"),
    }
}

/// What every peer is started with.
pub struct PeerSetup {
    pub workdir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub upstream: SocketAddr,
    pub ssegate_bin: PathBuf,
    /// A command prefix ssegate is started through (profilers, allocators).
    pub ssegate_wrapper: Vec<String>,
    /// How many times ssegate gets the upstream as a target (more than one:
    /// a group of targets, to measure what balancing costs).
    pub ssegate_targets: usize,
    pub open_file_limit: u64,
    /// What the load generator connects with, per protocol.
    pub client_tls: ClientTls,
    pub sources: Arc<Vec<std::net::Ipv4Addr>>,
}

/// A started peer, measured over one protocol. Stop it with `stop`;
/// dropping it kills it.
pub struct RunningPeer {
    pub kind: PeerKind,
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub target: Target,
    pub tls: Option<TlsInfo>,
    child: Option<Child>,
    log: PathBuf,
}

impl RunningPeer {
    /// "nginx h2": the peer and the protocol it is measured over.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.protocol)
    }

    /// Memory and CPU of the peer's processes; None for the direct path.
    pub fn usage(&self) -> Option<sys::Usage> {
        let pid = self.child.as_ref()?.id()?;
        sys::tree_usage(pid).ok()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Everything the peer has written to its stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Graceful stop (SIGTERM to its process group), then kill after a few seconds.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pid) = child.id() else {
            return;
        };
        sys::signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            sys::signal_group(pid, libc::SIGKILL);
            let _ = child.kill().await;
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Whether the peer is measured over `protocol`: everything but the direct
/// path (plain HTTP/1.1 to the upstream) speaks both.
pub fn speaks(kind: PeerKind, protocol: Protocol) -> bool {
    kind != PeerKind::Direct || protocol == Protocol::H1
}

/// Writes the peer's configuration, starts it and waits until it proxies a
/// request over TLS with `protocol` (or, for the direct path, until the
/// upstream answers).
pub async fn start(
    kind: PeerKind,
    protocol: Protocol,
    setup: &PeerSetup,
) -> Result<RunningPeer, String> {
    if !speaks(kind, protocol) {
        return Err(format!("{kind} is not measured over {protocol}"));
    }
    if kind == PeerKind::Direct {
        let target = Target::new(setup.upstream, None, protocol, setup.sources.clone());
        loadgen::probe(&target, STATIC_PATH).await?;
        return Ok(RunningPeer {
            kind,
            protocol,
            addr: setup.upstream,
            target,
            tls: None,
            child: None,
            log: PathBuf::new(),
        });
    }
    let port = free_port()?;
    let dir = setup.workdir.join(kind.name());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let command = command_for(kind, setup, &dir, port)?;
    spawn_and_probe(kind, protocol, setup, &dir, port, command).await
}

/// One ssegate instance of a group that shares the upstream (the cluster
/// fan-out): ssegate with `--sse-shared /sse` as [`PeerKind::SsegateShared`]
/// is started, plus `extra` arguments and environment, in its own directory
/// `name` of the work directory.
pub async fn start_instance(
    protocol: Protocol,
    setup: &PeerSetup,
    name: &str,
    extra: &[String],
    env: &[(&str, &str)],
) -> Result<RunningPeer, String> {
    let kind = PeerKind::SsegateShared;
    let port = free_port()?;
    let dir = setup.workdir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut command = command_for(kind, setup, &dir, port)?;
    command.args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_and_probe(kind, protocol, setup, &dir, port, command).await
}

/// Starts `command` (the peer `kind` listening on `port`), its output going
/// to `dir`/output.log, and waits until it proxies a request over TLS with
/// `protocol`.
async fn spawn_and_probe(
    kind: PeerKind,
    protocol: Protocol,
    setup: &PeerSetup,
    dir: &Path,
    port: u16,
    mut command: Command,
) -> Result<RunningPeer, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join("output.log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    // Its own process group, so stopping it reaches every process it started.
    command
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(true);
    sys::kill_with_harness(&mut command);
    let child = command
        .spawn()
        .map_err(|e| format!("{kind}: cannot start: {e}"))?;
    let target = Target::new(
        addr,
        Some(setup.client_tls.get(protocol)),
        protocol,
        setup.sources.clone(),
    );
    let mut peer = RunningPeer {
        kind,
        protocol,
        addr,
        target,
        tls: None,
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if let Some(child) = peer.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{kind} exited during start-up ({status}); its output:\n{}",
                    peer.log_tail()
                ));
            }
        }
        match loadgen::probe(&peer.target, STATIC_PATH).await {
            Ok(info) => {
                peer.tls = info;
                return Ok(peer);
            }
            Err(err) => last_error = err,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tail = peer.log_tail();
    peer.stop().await;
    Err(format!(
        "{kind} did not proxy a request within {START_TIMEOUT:?} (last error: {last_error}); its output:\n{tail}"
    ))
}

fn command_for(
    kind: PeerKind,
    setup: &PeerSetup,
    dir: &Path,
    port: u16,
) -> Result<Command, String> {
    let write = |name: &str, text: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let program = |name: &str| {
        find_program(name).ok_or_else(|| format!("{name} not found (apt-get install -y {name})"))
    };
    let upstream = setup.upstream;
    let command = match kind {
        PeerKind::Direct => unreachable!("the direct path starts no process"),
        PeerKind::Ssegate | PeerKind::SsegateShared => {
            let mut command = match setup.ssegate_wrapper.split_first() {
                Some((wrapper, wrapper_args)) => {
                    let mut command = Command::new(wrapper);
                    command.args(wrapper_args).arg(&setup.ssegate_bin);
                    command
                }
                None => Command::new(&setup.ssegate_bin),
            };
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--cert")
                .arg(&setup.cert)
                .arg("--key")
                .arg(&setup.key)
                .arg("--upstream")
                .arg(vec![format!("http://{upstream}"); setup.ssegate_targets.max(1)].join(","))
                .args(["--drain-timeout", "1s"])
                .args(["--threads", &WORKERS.to_string()])
                .env("RUST_LOG", "warn");
            if kind == PeerKind::SsegateShared {
                command.args(["--sse-shared", SHARED_PREFIX]);
            }
            command
        }
        PeerKind::Nginx => {
            let config = nginx_config(setup, dir, port);
            let path = write("nginx.conf", config)?;
            let mut command = Command::new(program("nginx")?);
            command
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(path)
                .arg("-e")
                .arg(dir.join("error.log"));
            command
        }
        PeerKind::Haproxy => {
            // HAProxy wants the certificate and its key in one file.
            let cert = std::fs::read_to_string(&setup.cert)
                .map_err(|e| format!("{}: {e}", setup.cert.display()))?;
            let key = std::fs::read_to_string(&setup.key)
                .map_err(|e| format!("{}: {e}", setup.key.display()))?;
            let combined = write("cert-and-key.pem", format!("{cert}\n{key}"))?;
            let config = haproxy_config(setup, &combined, port);
            let path = write("haproxy.cfg", config)?;
            let mut command = Command::new(program("haproxy")?);
            command.arg("-db").arg("-f").arg(path);
            command
        }
        PeerKind::Caddy => {
            let config = caddy_config(setup, dir, port);
            let path = write("Caddyfile", config)?;
            let mut command = Command::new(program("caddy")?);
            command
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(path)
                .env("GOMAXPROCS", WORKERS.to_string())
                .env("HOME", dir)
                .env("XDG_DATA_HOME", dir.join("data"))
                .env("XDG_CONFIG_HOME", dir.join("config"));
            command
        }
    };
    Ok(command)
}

/// Idle upstream connections each proxy may keep for reuse: above the most
/// requests in flight at once (request/response over HTTP/2: 32 connections
/// x 10 streams), so no peer closes and reopens upstream connections
/// because its cache is smaller than another's.
const UPSTREAM_IDLE_POOL: usize = 1024;

/// nginx's version from `nginx -v` ("nginx version: nginx/1.22.1").
fn nginx_version() -> Option<(u32, u32, u32)> {
    let line = version(PeerKind::Nginx, Path::new(""));
    let number = line.split('/').nth(1)?.split_whitespace().next()?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// How an nginx server block enables HTTP/2 (by ALPN, beside HTTP/1.1):
/// the `http2 on;` directive from 1.25.1, the `http2` parameter of
/// `listen` before (Debian 12 ships 1.22; an unknown version gets the
/// parameter too, which later versions still accept with a warning).
/// Returns (listen parameter, directive).
fn nginx_http2_syntax(version: Option<(u32, u32, u32)>) -> (&'static str, &'static str) {
    match version {
        Some(v) if v >= (1, 25, 1) => ("", "\n        http2 on;"),
        _ => (" http2", ""),
    }
}

/// nginx as SSE guides configure it: no response buffering, HTTP/1.1 to a
/// keepalive upstream, a long read timeout; HTTP/2 and HTTP/1.1 by ALPN.
/// `reuseport` spreads connections over both workers (each has its own
/// open-file limit).
fn nginx_config(setup: &PeerSetup, dir: &Path, port: u16) -> String {
    let limit = setup.open_file_limit;
    let dir = dir.display();
    let (listen_http2, http2_on) = nginx_http2_syntax(nginx_version());
    format!(
        r#"# Written by benches/compare (peers.rs).
daemon off;
master_process on;
user root;
worker_processes {WORKERS};
worker_rlimit_nofile {limit};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {connections};
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # ssegate, HAProxy and Caddy do not cap requests per keep-alive connection.
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream backend {{
        server {upstream};
        keepalive {UPSTREAM_IDLE_POOL};
    }}

    server {{
        listen 127.0.0.1:{port} ssl{listen_http2} reuseport backlog=4096;{http2_on}
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519;

        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            # The headers ssegate (and Caddy) add, so every peer does the same work.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#,
        connections = limit.saturating_sub(100),
        upstream = setup.upstream,
        cert = setup.cert.display(),
        key = setup.key.display(),
    )
}

fn haproxy_config(setup: &PeerSetup, combined_pem: &Path, port: u16) -> String {
    // Each proxied connection needs two descriptors in this one process.
    let maxconn = (setup.open_file_limit as usize).saturating_sub(FD_SLACK) / 2;
    format!(
        r#"# Written by benches/compare (peers.rs).
global
    nbthread {WORKERS}
    maxconn {maxconn}
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-keep-alive 75s
    option http-no-delay

frontend sse_in
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1 ssl-min-ver TLSv1.2 curves X25519 backlog 4096
    # The headers ssegate (and Caddy) add, so every peer does the same work.
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend sse_upstream

backend sse_upstream
    http-reuse safe
    server upstream {upstream}
"#,
        pem = combined_pem.display(),
        upstream = setup.upstream,
    )
}

fn caddy_config(setup: &PeerSetup, dir: &Path, port: u16) -> String {
    format!(
        r#"# Written by benches/compare (peers.rs).
{{
    admin off
    auto_https off
    storage file_system {{
        root {dir}/data
    }}
    servers {{
        protocols h1 h2
    }}
}}

https://localhost:{port} {{
    bind 127.0.0.1
    tls {cert} {key} {{
        protocols tls1.2 tls1.3
        curves x25519
        alpn h2 http/1.1
    }}
    reverse_proxy {upstream} {{
        flush_interval -1
        transport http {{
            keepalive_idle_conns_per_host {UPSTREAM_IDLE_POOL}
        }}
    }}
}}
"#,
        dir = dir.display(),
        cert = setup.cert.display(),
        key = setup.key.display(),
        upstream = setup.upstream,
    )
}

// -------------------------------------------------------------------- Redis

/// The Debian package that provides `redis-server`.
const REDIS_PACKAGE: &str = "redis-server";

/// Fails with the package to install when `redis-server` is missing (the
/// cluster fan-out cannot run without it, and is not skipped).
pub fn check_redis_installed() -> Result<PathBuf, String> {
    find_program("redis-server").ok_or_else(|| {
        format!(
            "redis-server not found: the cluster-fanout scenario starts a real Redis. Install it with \
             `apt-get install -y {REDIS_PACKAGE}`, or leave the scenario out with --only."
        )
    })
}

/// `redis-server --version`'s line, e.g. "Redis server v=7.0.15 sha=... bits=64 ...".
pub fn redis_version() -> String {
    let Ok(program) = check_redis_installed() else {
        return "not installed".into();
    };
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(err) => format!("unknown ({err})"),
    }
}

/// A real `redis-server` on a free loopback port, without persistence, for
/// the cluster fan-out. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` in `dir` and waits until it answers PING.
    pub async fn start(dir: &Path) -> Result<Self, String> {
        let program = check_redis_installed()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // redis-server cannot be told to take port 0: bind, release, pass it on.
        let port = free_port()?;
        let log = dir.join("redis.log");
        let mut command = Command::new(program);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        sys::kill_with_harness(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("redis-server: cannot start: {e}"))?;
        let mut server = RedisServer { port, child, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match server.command(&["PING"]).await {
                Ok(pong) if pong == "PONG" => return Ok(server),
                Ok(_) | Err(_) if Instant::now() < deadline => {}
                Ok(other) => return Err(format!("redis-server answered PING with {other:?}")),
                Err(err) => {
                    return Err(format!(
                        "redis-server did not answer PING within {START_TIMEOUT:?} ({err}); its log:\n{}",
                        log_tail(&server.log)
                    ))
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited during start-up ({status}); its log:\n{}",
                    log_tail(&server.log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Memory and CPU of the server process.
    pub fn usage(&self) -> Option<sys::Usage> {
        sys::tree_usage(self.child.id()?).ok()
    }

    /// One command on a new connection; the answer as text (integers too).
    pub async fn command(&self, args: &[&str]) -> Result<String, String> {
        let exchange = async {
            let client = redis::Client::open(self.url())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let mut command = redis::cmd(args.first().copied().unwrap_or("PING"));
            for arg in args.iter().skip(1) {
                command.arg(*arg);
            }
            let value: redis::Value = command.query_async(&mut connection).await?;
            Ok::<_, redis::RedisError>(value)
        };
        let value = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| format!("redis {args:?}: no answer within 5 s"))?
            .map_err(|e| format!("redis {args:?}: {e}"))?;
        Ok(match value {
            redis::Value::SimpleString(s) => s,
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::Int(n) => n.to_string(),
            redis::Value::Okay => "OK".into(),
            other => format!("{other:?}"),
        })
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            sys::signal_group(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
