//! The command line, as users type it. Parsed here, validated in `config`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A TLS-terminating reverse proxy that relays Server-Sent Events unbuffered.
///
/// Responses with Content-Type text/event-stream (or X-Accel-Buffering: no)
/// are streamed event by event with a long idle timeout; everything else is
/// proxied with ordinary timeouts.
#[derive(Debug, Parser)]
#[command(name = "ssegate", version, subcommand_negates_reqs = true)]
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
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to accept TLS connections on. Port 0 picks a free port.
    #[arg(
        long,
        value_name = "ADDR",
        env = "SSEGATE_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,

    /// PEM certificate chain, leaf first. Repeat --cert/--key for several
    /// certificates, chosen by SNI from their DNS names; the first pair also
    /// serves clients that send no or an unknown name.
    #[arg(long, value_name = "PATH", env = "SSEGATE_CERT", required = true)]
    pub cert: Vec<PathBuf>,

    /// PEM private key for the --cert before it (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, value_name = "PATH", env = "SSEGATE_KEY", required = true)]
    pub key: Vec<PathBuf>,

    /// DER OCSP response to staple for the --cert before it; reloaded with it.
    #[arg(long, value_name = "PATH", env = "SSEGATE_OCSP")]
    pub ocsp: Vec<PathBuf>,

    /// For each --ocsp, the index of the pair it belongs to (from the order of
    /// the flags on the command line; filled in by `main`).
    #[arg(skip)]
    pub ocsp_pair: Vec<usize>,

    /// Backend to forward to: http://host:port[/base-path].
    #[arg(long, value_name = "URL", env = "SSEGATE_UPSTREAM", required = true)]
    pub upstream: Option<String>,

    /// Threads serving connections, each with its own event loop (a
    /// connection stays on the thread that accepted it). Default: one per CPU.
    #[arg(long, value_name = "N", env = "SSEGATE_THREADS")]
    pub threads: Option<NonZeroUsize>,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    #[command(flatten)]
    pub streams: StreamArgs,

    #[command(flatten)]
    pub security: SecurityArgs,
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

    /// Events kept per shared stream for clients that reconnect with Last-Event-ID.
    #[arg(long, value_name = "N", env = "SSEGATE_SSE_REPLAY", default_value_t = crate::sse::hub::DEFAULT_REPLAY)]
    pub sse_replay: usize,

    /// On shutdown, how long to wait for ordinary requests to finish and event
    /// streams to reach an event boundary before exiting anyway.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_DRAIN_TIMEOUT",
        default_value = "30s"
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
        default_value = "60s"
    )]
    pub request_timeout: humantime::Duration,

    /// The longest silence from the upstream on an event stream before the proxy
    /// ends the stream (the browser's EventSource then reconnects).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_SSE_IDLE_TIMEOUT",
        default_value = "1h"
    )]
    pub sse_idle_timeout: humantime::Duration,

    /// How long to wait for a TCP connection to the upstream (then 502).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_CONNECT_TIMEOUT",
        default_value = "5s"
    )]
    pub connect_timeout: humantime::Duration,

    /// A client that has not sent complete request headers by then is
    /// disconnected (slowloris protection).
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_HEADER_READ_TIMEOUT",
        default_value = "10s"
    )]
    pub header_read_timeout: humantime::Duration,

    /// A client that has not completed the TLS handshake by then is disconnected.
    #[arg(
        long,
        value_name = "DUR",
        env = "SSEGATE_TLS_HANDSHAKE_TIMEOUT",
        default_value = "10s"
    )]
    pub tls_handshake_timeout: humantime::Duration,
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
