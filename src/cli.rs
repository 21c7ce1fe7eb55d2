//! The command line, as users type it. Parsed here, validated in `config`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::defaults;
use crate::logging::LogFormat;
use crate::upstream::Balance;

/// A clap default from a `defaults` duration.
fn dur(duration: std::time::Duration) -> humantime::Duration {
    duration.into()
}

/// A TLS-terminating reverse proxy that relays Server-Sent Events unbuffered.
///
/// Responses with Content-Type text/event-stream (or X-Accel-Buffering: no)
/// are streamed event by event with a long idle timeout; everything else is
/// proxied with ordinary timeouts.
#[derive(Debug, Parser)]
#[command(
    name = "ssegate",
    version,
    subcommand_negates_reqs = true,
    override_usage = "ssegate --cert <PATH> --key <PATH> --upstream <URL> [OPTIONS]\n       \
                      ssegate --config <PATH> [OPTIONS]\n       \
                      ssegate <COMMAND>"
)]
pub struct Cli {
    #[command(flatten)]
    pub proxy: ProxyArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a demo: an SSE backend and an EventSource page behind the proxy,
    /// using the built-in development certificate.
    Demo(DemoArgs),
    /// Write a self-signed development certificate and key (PEM).
    Cert(CertArgs),
    /// Check a configuration file (and the files it names): print every
    /// error with its line and column and exit 1, or print "ok".
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file (TOML) to check.
    #[arg(long, value_name = "PATH", env = "SSEGATE_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Read the settings from this TOML file: every option below as a
    /// top-level key (underscores for dashes), plus [[certificate]],
    /// [upstream.NAME] groups and [[route]]s. Options given on the command
    /// line or in the environment win over the file's.
    #[arg(long, value_name = "PATH", env = "SSEGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to accept TLS connections on. Port 0 picks a free port.
    #[arg(
        long,
        value_name = "ADDR",
        env = "SSEGATE_LISTEN",
        default_value = defaults::LISTEN
    )]
    pub listen: SocketAddr,

    /// PEM certificate chain, leaf first. Repeat --cert/--key for several
    /// certificates, chosen by SNI from their DNS names; the first pair also
    /// serves clients that send no or an unknown name.
    #[arg(
        long,
        value_name = "PATH",
        env = "SSEGATE_CERT",
        required_unless_present = "config"
    )]
    pub cert: Vec<PathBuf>,

    /// PEM private key for the --cert before it (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(
        long,
        value_name = "PATH",
        env = "SSEGATE_KEY",
        required_unless_present = "config"
    )]
    pub key: Vec<PathBuf>,

    /// DER OCSP response to staple for the --cert before it; reloaded with it.
    #[arg(long, value_name = "PATH", env = "SSEGATE_OCSP")]
    pub ocsp: Vec<PathBuf>,

    /// For each --ocsp, the index of the pair it belongs to (from the order of
    /// the flags on the command line; filled in by `main`).
    #[arg(skip)]
    pub ocsp_pair: Vec<usize>,

    /// Backend to forward to: http://host:port[/base-path],
    /// https://host:port[/base-path] (HTTP/1.1 over TLS, the certificate
    /// checked for host) or unix:/path/to.sock. Repeat it (or separate with
    /// commas) for several targets of one group; they must share the base
    /// path.
    #[arg(
        long,
        value_name = "URL",
        env = "SSEGATE_UPSTREAM",
        required_unless_present = "config",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,

    /// How a request picks among several --upstream targets.
    #[arg(
        long,
        value_name = "POLICY",
        env = "SSEGATE_BALANCE",
        value_enum,
        default_value_t = Balance::LeastConn
    )]
    pub balance: Balance,

    /// Check every target with a GET of this path each --health-interval: a
    /// target is down after 3 failures (not 2xx/3xx) in a row and up again
    /// after 2 successes. Off by default.
    #[arg(long, value_name = "PATH", env = "SSEGATE_HEALTH_CHECK")]
    pub health_check: Option<String>,

    /// Interval of the health checks, and how long a target that refused a
    /// connection (or reset one before answering) is left out.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_HEALTH_INTERVAL",
        default_value_t = dur(defaults::HEALTH_INTERVAL)
    )]
    pub health_interval: humantime::Duration,

    /// Trust only the CA certificates in this PEM file for https upstreams
    /// (a private CA), instead of the system's.
    #[arg(long, value_name = "PATH", env = "SSEGATE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// Threads serving connections, each with its own event loop (a
    /// connection stays on the thread that accepted it). Default: one per CPU.
    #[arg(long, value_name = "N", env = "SSEGATE_THREADS")]
    pub threads: Option<NonZeroUsize>,

    /// Largest request header section (then 431) and upstream response
    /// header section (then 502), in bytes; k and m suffixes (1024-based).
    #[arg(long, value_name = "SIZE", env = "SSEGATE_MAX_HEADER_SIZE", default_value_t = ByteSize(defaults::MAX_HEADER_SIZE))]
    pub max_header_size: ByteSize,

    /// Largest request body, in bytes (k and m suffixes, 1024-based): a
    /// larger one gets 413, at once when its Content-Length says so, or as
    /// soon as it grows past the limit. No limit by default.
    #[arg(long, value_name = "SIZE", env = "SSEGATE_MAX_BODY")]
    pub max_body: Option<ByteSize>,

    /// Forward request header names that contain underscores. By default
    /// they are dropped, as nginx does: CGI, WSGI, Rack and PHP backends
    /// read X_Client_Cert_Subject as X-Client-Cert-Subject, so a client
    /// could forge headers the proxy sets.
    #[arg(long, env = "SSEGATE_KEEP_UNDERSCORE_HEADERS")]
    pub keep_underscore_headers: bool,

    /// How log lines are written to stderr: text for people, or json (one
    /// JSON object per line, every field a key) for log collectors.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "SSEGATE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Several instances sharing their shared streams through Redis.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Share the shared streams' upstream reading and history with the
    /// other instances using this Redis (redis://[:PASSWORD@]HOST:PORT/DB,
    /// or redis+unix:///path/to.sock): one instance reads each stream's upstream into a Redis
    /// Stream, every instance serves its clients from it, and a client
    /// reconnecting to any instance gets its missed events. Config file:
    /// `[cluster] redis = "..."`.
    #[arg(
        long,
        value_name = "URL",
        env = "SSEGATE_CLUSTER",
        hide_env_values = true
    )]
    pub cluster: Option<String>,

    /// Prefix of every Redis key ssegate uses.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "SSEGATE_CLUSTER_KEY_PREFIX",
        default_value = defaults::CLUSTER_KEY_PREFIX,
        requires = "cluster"
    )]
    pub cluster_key_prefix: String,

    /// How long a shared stream's reader holds its lease without renewing
    /// it: how soon another instance takes over when the reader dies.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_CLUSTER_LEASE",
        default_value_t = dur(defaults::CLUSTER_LEASE),
        requires = "cluster"
    )]
    pub cluster_lease: humantime::Duration,
}

/// The admin listener: metrics, health and a live status page.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Serve plain HTTP here (127.0.0.1 or a private network: no TLS):
    /// Prometheus metrics on /metrics, /healthz, /readyz (503 once
    /// draining starts), and a live status page on /. Off by default.
    #[arg(long, value_name = "ADDR", env = "SSEGATE_ADMIN")]
    pub admin: Option<SocketAddr>,

    /// Require `Authorization: Bearer TOKEN` on every admin path except
    /// /healthz and /readyz (the status page and its /events stream also
    /// take `?token=TOKEN`, as a browser cannot send the header).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SSEGATE_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "admin"
    )]
    pub admin_token: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct SecurityArgs {
    /// Add Strict-Transport-Security with this max-age to every response
    /// (an upstream's own header is kept). Off by default; use e.g. 2y in production.
    #[arg(long, value_name = "DUR", env = "SSEGATE_HSTS")]
    pub hsts: Option<humantime::Duration>,

    /// Add includeSubDomains to the HSTS header.
    #[arg(long, env = "SSEGATE_HSTS_INCLUDE_SUBDOMAINS", requires = "hsts")]
    pub hsts_include_subdomains: bool,

    /// Add preload to the HSTS header.
    #[arg(long, env = "SSEGATE_HSTS_PRELOAD", requires = "hsts")]
    pub hsts_preload: bool,

    /// Require client certificates signed by a CA in this PEM file (mTLS).
    /// The verified subject reaches the upstream as X-Client-Cert-Subject.
    #[arg(long, value_name = "PATH", env = "SSEGATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// With --client-ca: ask for a client certificate but accept clients without one.
    #[arg(long, env = "SSEGATE_CLIENT_CA_OPTIONAL", requires = "client_ca")]
    pub client_ca_optional: bool,

    /// Also listen for plain HTTP here and answer every request with a 308
    /// redirect to https.
    #[arg(long, env = "SSEGATE_REDIRECT_HTTP", value_name = "ADDR")]
    pub redirect_http: Option<SocketAddr>,
}

#[derive(Debug, Args, Clone)]
pub struct StreamArgs {
    /// Write an SSE comment (":") on an event stream that has been silent this
    /// long, only between events, so idle timers along the way do not cut it.
    /// Off by default.
    #[arg(long, value_name = "DUR", env = "SSEGATE_SSE_HEARTBEAT")]
    pub sse_heartbeat: Option<humantime::Duration>,

    /// Serve GET requests under this path prefix as shared public broadcast
    /// streams: one upstream request per path+query, fanned out to every
    /// client, with Last-Event-ID replay. Repeatable. Authorization and Cookie
    /// are never sent upstream for these; put only public streams here.
    #[arg(
        long = "sse-shared",
        env = "SSEGATE_SSE_SHARED",
        value_name = "PATH-PREFIX",
        value_delimiter = ','
    )]
    pub sse_shared: Vec<String>,

    /// Serve GET requests under this path prefix from Redis (needs
    /// --cluster): GET /events/orders streams the Redis Stream
    /// `<prefix>events:orders` (entries with fields data, event, id) and
    /// what is PUBLISHed on the channel of that name. Repeatable.
    #[arg(
        long = "sse-redis",
        env = "SSEGATE_SSE_REDIS",
        value_name = "PATH-PREFIX",
        value_delimiter = ','
    )]
    pub sse_redis: Vec<String>,

    /// Events kept per shared stream for clients that reconnect with Last-Event-ID.
    #[arg(long, value_name = "N", env = "SSEGATE_SSE_REPLAY", default_value_t = defaults::SSE_REPLAY)]
    pub sse_replay: usize,

    /// On shutdown, how long to wait for ordinary requests to finish and event
    /// streams to reach an event boundary before exiting anyway.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_DRAIN_TIMEOUT",
        default_value_t = dur(defaults::DRAIN_TIMEOUT)
    )]
    pub drain_timeout: humantime::Duration,

    /// On shutdown, end each event stream with "retry: <ms>" so browsers
    /// reconnect (to another instance) after this delay. Off by default.
    #[arg(long, value_name = "DUR", env = "SSEGATE_DRAIN_RETRY")]
    pub drain_retry: Option<humantime::Duration>,
}

#[derive(Debug, Args, Clone)]
pub struct TimeoutArgs {
    /// How long to wait for the upstream's response headers (then 504), and the
    /// longest silence inside an ordinary (non-SSE) response body (then the body is cut).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_REQUEST_TIMEOUT",
        default_value_t = dur(defaults::REQUEST_TIMEOUT)
    )]
    pub request_timeout: humantime::Duration,

    /// The longest silence from the upstream on an event stream before the proxy
    /// ends the stream (the browser's EventSource then reconnects).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_SSE_IDLE_TIMEOUT",
        default_value_t = dur(defaults::SSE_IDLE_TIMEOUT)
    )]
    pub sse_idle_timeout: humantime::Duration,

    /// The longest silence on a WebSocket, no byte in either direction,
    /// before the proxy closes it.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_WEBSOCKET_IDLE_TIMEOUT",
        default_value_t = dur(defaults::WEBSOCKET_IDLE_TIMEOUT)
    )]
    pub websocket_idle_timeout: humantime::Duration,

    /// How long to wait for a connection to the upstream, TLS handshake
    /// included (then 502).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_CONNECT_TIMEOUT",
        default_value_t = dur(defaults::CONNECT_TIMEOUT)
    )]
    pub connect_timeout: humantime::Duration,

    /// A client that has not sent complete request headers by then is
    /// disconnected (slowloris protection).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_HEADER_READ_TIMEOUT",
        default_value_t = dur(defaults::HEADER_READ_TIMEOUT)
    )]
    pub header_read_timeout: humantime::Duration,

    /// A client that has not completed the TLS handshake by then is disconnected.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_TLS_HANDSHAKE_TIMEOUT",
        default_value_t = dur(defaults::TLS_HANDSHAKE_TIMEOUT)
    )]
    pub tls_handshake_timeout: humantime::Duration,

    /// A client that accepts no bytes of a response for this long (its
    /// receive window stays full) is disconnected, as nginx's send_timeout.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_SEND_TIMEOUT",
        default_value_t = dur(defaults::SEND_TIMEOUT)
    )]
    pub send_timeout: humantime::Duration,
}

/// A size in bytes, written as a number with an optional k or m suffix
/// (1024-based): `65536`, `64k`, `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (digits, factor) = match text.char_indices().last() {
            Some((at, 'k' | 'K')) => (&text[..at], 1024),
            Some((at, 'm' | 'M')) => (&text[..at], 1024 * 1024),
            _ => (text, 1),
        };
        digits
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .filter(|&n| n > 0)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is not a size (e.g. 65536, 64k, 1m)"))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            n if n % (1024 * 1024) == 0 => write!(f, "{}m", n / (1024 * 1024)),
            n if n % 1024 == 0 => write!(f, "{}k", n / 1024),
            n => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_k_and_m_suffixes() {
        assert_eq!("65536".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("64k".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("1M".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        for bad in ["", "k", "0", "-1", "1g", "1.5k"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ByteSize(65536).to_string(), "64k");
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo proxy listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// PEM certificate chain; the built-in certs/localhost.pem when omitted.
    #[arg(long, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory to write <name>.pem and <name>-key.pem into.
    #[arg(long, value_name = "PATH", default_value = "certs")]
    pub out_dir: PathBuf,

    /// Subject alternative names (DNS names or IP addresses). The first also
    /// names the files.
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
    pub names: Vec<String>,

    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

/// Limits on connections and streams, and the PROXY protocol.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Client connections open at once, TLS handshakes included. Beyond it
    /// ssegate stops accepting: new connections wait in the kernel's listen
    /// backlog until one closes. No limit by default.
    #[arg(long, value_name = "N", env = "SSEGATE_MAX_CONNECTIONS", value_parser = at_least_one)]
    pub max_connections: Option<NonZeroU32>,

    /// Connections open at once from one client address; a further one is
    /// closed before its TLS handshake. No limit by default.
    #[arg(long, value_name = "N", env = "SSEGATE_MAX_CONNECTIONS_PER_IP", value_parser = at_least_one)]
    pub max_connections_per_ip: Option<NonZeroU32>,

    /// Event streams (shared-stream subscriptions included) open at once
    /// from one client address; a further one gets 429 Too Many Requests.
    /// No limit by default.
    #[arg(long, value_name = "N", env = "SSEGATE_MAX_STREAMS_PER_IP", value_parser = at_least_one)]
    pub max_streams_per_ip: Option<NonZeroU32>,

    /// Expect a PROXY protocol header (v1 or v2, from a load balancer in
    /// front) first on every connection: its source address is the client's
    /// address, for X-Forwarded-For, logs and the per-address limits. A
    /// connection without a valid header is closed.
    #[arg(long, env = "SSEGATE_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
}

/// A limit: a whole number of at least 1 (no flag is no limit).
fn at_least_one(text: &str) -> Result<NonZeroU32, String> {
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            "expected a whole number of at least 1 (leave the flag out for no limit)".to_owned()
        })
}
