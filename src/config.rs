//! The validated configuration. Everything that can be checked before serving
//! (files, keys, URLs) is checked here, so a running proxy has no late surprises.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::cli::{ProxyArgs, SecurityArgs, StreamArgs, TimeoutArgs};
use crate::defaults;
use crate::error::StartError;
use crate::tls::{self, CertPair, CertReloader, CertSource, CertStore, ClientAuth};
use crate::upstream::{Balance, HealthCheck};

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub request: Duration,
    pub sse_idle: Duration,
    /// No byte in either direction of a WebSocket for this long closes it.
    pub websocket_idle: Duration,
    pub connect: Duration,
    pub header_read: Duration,
    pub tls_handshake: Duration,
    /// A client that takes no bytes of a response for this long is cut.
    pub send: Duration,
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: defaults::REQUEST_TIMEOUT,
            sse_idle: defaults::SSE_IDLE_TIMEOUT,
            websocket_idle: defaults::WEBSOCKET_IDLE_TIMEOUT,
            connect: defaults::CONNECT_TIMEOUT,
            header_read: defaults::HEADER_READ_TIMEOUT,
            tls_handshake: defaults::TLS_HANDSHAKE_TIMEOUT,
            send: defaults::SEND_TIMEOUT,
            drain: defaults::DRAIN_TIMEOUT,
        }
    }
}

impl From<&TimeoutArgs> for Timeouts {
    fn from(args: &TimeoutArgs) -> Self {
        Timeouts {
            request: args.request_timeout.into(),
            sse_idle: args.sse_idle_timeout.into(),
            websocket_idle: args.websocket_idle_timeout.into(),
            connect: args.connect_timeout.into(),
            header_read: args.header_read_timeout.into(),
            tls_handshake: args.tls_handshake_timeout.into(),
            send: args.send_timeout.into(),
            ..Timeouts::default()
        }
    }
}

/// Where requests go: `http://host:port` plus an optional base path that is
/// prefixed to every request path.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub authority: Authority,
    /// Empty, or a path starting with `/` and without a trailing `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, StartError> {
        let invalid = |reason: &str| StartError::Upstream {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(_) => return Err(invalid("only http:// upstreams are supported")),
            None => return Err(invalid("expected http://host:port[/base-path]")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not supported"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(UpstreamUrl {
            authority,
            base_path,
        })
    }

    /// `host:port` to connect to (port 80 when the URL has none).
    pub fn address(&self) -> String {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        format!("{host}:{port}")
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

/// The targets requests go to, and how a request picks one.
#[derive(Debug, Clone)]
pub struct UpstreamGroup {
    /// At least one; all with the same base path.
    pub targets: Vec<UpstreamUrl>,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    /// How long a target that failed a connection is left out.
    pub health_interval: Duration,
}

impl UpstreamGroup {
    /// One target, least-conn (moot with one), no active checks.
    pub fn single(url: UpstreamUrl) -> Self {
        UpstreamGroup {
            targets: vec![url],
            balance: Balance::LeastConn,
            health_check: None,
            health_interval: defaults::HEALTH_INTERVAL,
        }
    }

    /// Targets from `urls`, which must share their base path (the path is
    /// part of the request the rules write before a target is chosen).
    pub fn parse(urls: &[String]) -> Result<Self, StartError> {
        let targets = urls
            .iter()
            .map(|url| UpstreamUrl::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = targets.first() else {
            return Err(StartError::Config("--upstream is required".into()));
        };
        if let Some(other) = targets.iter().find(|t| t.base_path != first.base_path) {
            return Err(StartError::Upstream {
                url: other.to_string(),
                reason: format!(
                    "every target must have the same base path (the first has {:?})",
                    first.base_path
                ),
            });
        }
        let defaults = UpstreamGroup::single(first.clone());
        Ok(UpstreamGroup {
            targets,
            ..defaults
        })
    }

    /// The path every request path is prefixed with.
    pub fn base_path(&self) -> &str {
        self.targets.first().map_or("", |t| t.base_path.as_str())
    }
}

/// Event-stream features beyond plain relaying.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Comment written after this much silence, at an event boundary.
    pub heartbeat: Option<Duration>,
    /// `retry:` written to each event stream when it is drained at shutdown.
    pub drain_retry: Option<Duration>,
    /// Path prefixes served as shared streams.
    pub shared_prefixes: Vec<String>,
    /// Replay buffer length per shared stream.
    pub replay: usize,
    /// Events a shared-stream subscriber may fall behind before it is dropped.
    pub subscriber_queue: usize,
    /// How long a shared stream's upstream stays open without subscribers.
    pub linger: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            heartbeat: None,
            drain_retry: None,
            shared_prefixes: Vec::new(),
            replay: defaults::SSE_REPLAY,
            subscriber_queue: defaults::SSE_SUBSCRIBER_QUEUE,
            linger: defaults::SSE_LINGER,
        }
    }
}

impl StreamSettings {
    fn from_args(args: &StreamArgs) -> Result<Self, StartError> {
        for prefix in &args.sse_shared {
            if !prefix.starts_with('/') {
                return Err(StartError::Config(format!(
                    "--sse-shared {prefix:?}: a path prefix must start with /"
                )));
            }
        }
        if args.sse_heartbeat.is_some_and(|d| d.is_zero()) {
            return Err(StartError::Config(
                "--sse-heartbeat must be longer than 0s".into(),
            ));
        }
        Ok(StreamSettings {
            heartbeat: args.sse_heartbeat.map(Into::into),
            drain_retry: args.drain_retry.map(Into::into),
            shared_prefixes: args.sse_shared.clone(),
            replay: args.sse_replay,
            ..StreamSettings::default()
        })
    }
}

/// humantime's year (365.25 days) and the 365-day year HSTS guides count in.
const HUMANTIME_YEAR_SECS: u64 = 31_557_600;
const HSTS_YEAR_SECS: u64 = 365 * 86_400;

/// Seconds for `max-age`: whole years count as 365 days, so `2y` is the
/// customary 63072000 rather than humantime's 63115200.
pub fn hsts_max_age(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    secs / HUMANTIME_YEAR_SECS * HSTS_YEAR_SECS + secs % HUMANTIME_YEAR_SECS
}

/// The `Strict-Transport-Security` value for `--hsts` and its modifiers.
pub fn hsts_header(max_age: Duration, include_subdomains: bool, preload: bool) -> bytes::Bytes {
    let mut value = format!("max-age={}", hsts_max_age(max_age));
    if include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if preload {
        value.push_str("; preload");
    }
    bytes::Bytes::from(value)
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub upstream: UpstreamGroup,
    pub timeouts: Timeouts,
    pub streams: StreamSettings,
    /// Reloads the certificates on SIGHUP or file change (None: fixed certificates).
    pub cert_reloader: Option<CertReloader>,
    /// `Strict-Transport-Security` added to responses that lack one.
    pub hsts: Option<bytes::Bytes>,
    /// Whether clients may present certificates (then the verified subject is forwarded).
    pub client_auth: bool,
    /// Plain-HTTP listener that redirects everything to https.
    pub redirect_http: Option<SocketAddr>,
    /// Threads serving connections, each with its own event loop.
    pub threads: NonZeroUsize,
    /// Largest request or response header section (then 431 or 502).
    pub max_header_size: usize,
    /// Largest request body (then 413); None: no limit.
    pub max_body: Option<u64>,
    /// Forward request header names with underscores (dropped by default).
    pub keep_underscore_headers: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("timeouts", &self.timeouts)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with default timeouts.
    pub fn new(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        upstream: UpstreamGroup,
    ) -> Self {
        Config {
            listen,
            tls,
            upstream,
            timeouts: Timeouts::default(),
            streams: StreamSettings::default(),
            cert_reloader: None,
            hsts: None,
            client_auth: false,
            redirect_http: None,
            threads: NonZeroUsize::MIN,
            max_header_size: defaults::MAX_HEADER_SIZE,
            max_body: None,
            keep_underscore_headers: false,
        }
    }

    /// Validates the command line: loads and checks every certificate, key
    /// and OCSP file, parses the upstream URL.
    pub fn from_args(args: &ProxyArgs) -> Result<Self, StartError> {
        let missing = |flag: &str| StartError::Config(format!("{flag} is required"));
        let mut upstream = UpstreamGroup::parse(&args.upstream)?;
        upstream.balance = args.balance;
        upstream.health_interval = args.health_interval.into();
        upstream.health_check = args
            .health_check
            .as_deref()
            .map(|path| health_check(path, upstream.health_interval))
            .transpose()?;
        let sources = cert_sources(args)?;
        let keys = sources
            .iter()
            .map(tls::load_source)
            .collect::<Result<Vec<_>, _>>()?;
        let store = Arc::new(CertStore::from_keys(keys).ok_or_else(|| missing("--cert"))?);
        let client_auth = security_client_auth(&args.security)?;
        let tls = tls::server_config_with(store.clone(), client_auth.as_ref())?;
        let mut config = Config::new(args.listen, tls, upstream);
        config.timeouts = Timeouts::from(&args.timeouts);
        config.timeouts.drain = args.streams.drain_timeout.into();
        config.streams = StreamSettings::from_args(&args.streams)?;
        config.cert_reloader = Some(CertReloader { store, sources });
        config.client_auth = client_auth.is_some();
        config.hsts = args.security.hsts.map(|max_age| {
            hsts_header(
                max_age.into(),
                args.security.hsts_include_subdomains,
                args.security.hsts_preload,
            )
        });
        config.redirect_http = args.security.redirect_http;
        config.max_header_size = args.max_header_size.0;
        config.max_body = args.max_body.map(|size| size.0 as u64);
        config.keep_underscore_headers = args.keep_underscore_headers;
        config.threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN));
        Ok(config)
    }
}

/// `--health-check PATH`: an origin-form path, checked every `interval`.
fn health_check(path: &str, interval: Duration) -> Result<HealthCheck, StartError> {
    let valid = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !valid || interval.is_zero() {
        return Err(StartError::Config(format!(
            "--health-check {path:?}: expected a path starting with / and a non-zero --health-interval"
        )));
    }
    Ok(HealthCheck {
        path: path.to_owned(),
        interval,
    })
}

fn security_client_auth(args: &SecurityArgs) -> Result<Option<ClientAuth>, StartError> {
    args.client_ca
        .as_deref()
        .map(|path| ClientAuth::load(path, args.client_ca_optional))
        .transpose()
}

/// Pairs `--cert` and `--key` in order, and attaches each `--ocsp` to the
/// pair it follows on the command line (or, without positions, in order).
fn cert_sources(args: &ProxyArgs) -> Result<Vec<CertSource>, StartError> {
    if args.cert.len() != args.key.len() {
        return Err(StartError::Config(format!(
            "{} --cert but {} --key: give them in pairs",
            args.cert.len(),
            args.key.len()
        )));
    }
    let mut sources: Vec<CertSource> = args
        .cert
        .iter()
        .zip(&args.key)
        .map(|(cert, key)| CertSource {
            pair: CertPair {
                cert: cert.clone(),
                key: key.clone(),
            },
            ocsp: None,
        })
        .collect();
    for (i, ocsp) in args.ocsp.iter().enumerate() {
        let pair = args.ocsp_pair.get(i).copied().unwrap_or(i);
        let source = sources.get_mut(pair).ok_or_else(|| {
            StartError::Config(format!("--ocsp {}: no --cert before it", ocsp.display()))
        })?;
        if source.ocsp.replace(ocsp.clone()).is_some() {
            return Err(StartError::Config(format!(
                "--ocsp {}: certificate {} already has one",
                ocsp.display(),
                source.pair.cert.display()
            )));
        }
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_with_and_without_base_path() {
        let plain = UpstreamUrl::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(plain.base_path, "");
        assert_eq!(plain.address(), "127.0.0.1:3000");
        let based = UpstreamUrl::parse("http://backend/api/").unwrap();
        assert_eq!(based.base_path, "/api");
        assert_eq!(based.address(), "backend:80");
    }

    #[test]
    fn targets_of_a_group_share_their_base_path() {
        let urls = |list: &[&str]| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        let group = UpstreamGroup::parse(&urls(&["http://a:1/api", "http://b:2/api/"])).unwrap();
        assert_eq!(group.targets.len(), 2);
        assert_eq!(group.base_path(), "/api");
        assert!(UpstreamGroup::parse(&urls(&["http://a:1/api", "http://b:2"])).is_err());
        assert!(UpstreamGroup::parse(&[]).is_err());
        assert!(health_check("healthz", Duration::from_secs(1)).is_err());
        assert!(health_check("/healthz", Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn hsts_years_are_365_days() {
        let two_years: Duration = humantime::parse_duration("2y").unwrap();
        assert_eq!(hsts_header(two_years, false, false), "max-age=63072000");
        let day: Duration = humantime::parse_duration("1d").unwrap();
        assert_eq!(
            hsts_header(day, true, true),
            "max-age=86400; includeSubDomains; preload"
        );
    }

    #[test]
    fn upstream_url_rejects_what_it_cannot_serve() {
        for bad in [
            "https://x:1",
            "127.0.0.1:3000",
            "http://x:1/?q=1",
            "http://u@x:1",
            "http://",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
