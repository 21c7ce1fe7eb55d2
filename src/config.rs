//! The validated configuration. Everything that can be checked before serving
//! (files, keys, URLs) is checked here, so a running proxy has no late surprises.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use http::uri::Scheme;
use http::Uri;
use rustls::pki_types::ServerName;

use crate::cli::{AdminArgs, Cli, ClusterArgs, ProxyArgs, SecurityArgs, StreamArgs, TimeoutArgs};
use crate::cluster::ClusterSettings;
use crate::config_file::{ConfigFile, FileError, GroupSpec, RouteSpec};
use crate::defaults;
use crate::error::StartError;
use crate::limits::ConnectionLimits;
use crate::logging::LogFormat;
use crate::routes::HostPattern;
use crate::tls::{self, CertPair, CertReloader, CertSource, CertStore, ClientAuth};
use crate::upstream::{Balance, Endpoint, HealthCheck};

#[derive(Debug, Clone, PartialEq)]
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

/// Where requests go: `http://host:port` or `https://host:port`, plus an
/// optional base path that is prefixed to every request path, or
/// `unix:/path/to.sock` (no base path: the rest is the socket's path).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamUrl {
    /// The URL as given, for logs and messages.
    url: String,
    pub endpoint: Endpoint,
    /// Empty, or a path starting with `/` and without a trailing `/`.
    pub base_path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, StartError> {
        let invalid = |reason: &str| StartError::Upstream {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("expected unix:/path/to.sock"));
            }
            // Whether the socket exists is a matter of request time: the
            // upstream may start after the proxy.
            return Ok(UpstreamUrl {
                url: url.to_owned(),
                endpoint: Endpoint::Unix(PathBuf::from(path)),
                base_path: String::new(),
            });
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) if *s == Scheme::HTTPS => true,
            Some(_) => return Err(invalid("only http://, https:// and unix: upstreams are supported")),
            None => {
                return Err(invalid(
                    "expected http://host:port[/base-path], https://host:port[/base-path] or unix:/path/to.sock",
                ))
            }
        };
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not supported"));
        }
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let address = format!("{host}:{port}");
        let endpoint = if tls {
            // The certificate is checked for the host: a DNS name or an IP
            // address (without the brackets of an IPv6 one).
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|_| invalid("the host is not a valid TLS server name"))?;
            Endpoint::Tls { address, name }
        } else {
            Endpoint::Tcp(address)
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(UpstreamUrl {
            url: url.to_owned(),
            endpoint,
            base_path,
        })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// The targets requests go to, and how a request picks one.
#[derive(Debug, Clone, PartialEq)]
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

    /// The first `https` target, if any (it needs `Config::upstream_tls`).
    pub fn first_tls_target(&self) -> Option<&UpstreamUrl> {
        self.targets.iter().find(|t| t.endpoint.is_tls())
    }
}

/// Event-stream features beyond plain relaying.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Comment written after this much silence, at an event boundary.
    pub heartbeat: Option<Duration>,
    /// `retry:` written to each event stream when it is drained at shutdown.
    pub drain_retry: Option<Duration>,
    /// Path prefixes served as shared streams.
    pub shared_prefixes: Vec<String>,
    /// Path prefixes served from Redis Streams (`--sse-redis`).
    pub redis_prefixes: Vec<String>,
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
            redis_prefixes: Vec::new(),
            replay: defaults::SSE_REPLAY,
            subscriber_queue: defaults::SSE_SUBSCRIBER_QUEUE,
            linger: defaults::SSE_LINGER,
        }
    }
}

impl StreamSettings {
    fn from_args(args: &StreamArgs) -> Result<Self, StartError> {
        let prefixes = [
            ("--sse-shared", &args.sse_shared),
            ("--sse-redis", &args.sse_redis),
        ];
        for (flag, list) in prefixes {
            if let Some(prefix) = list.iter().find(|p| !p.starts_with('/')) {
                return Err(StartError::Config(format!(
                    "{flag} {prefix:?}: a path prefix must start with /"
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
            redis_prefixes: args.sse_redis.clone(),
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
    /// Upstream groups by name; `--upstream` makes the one named `default`.
    pub upstreams: BTreeMap<String, UpstreamGroup>,
    /// The file's `[[route]]`s. None: every request goes to the one group,
    /// with the top-level settings.
    pub routes: Vec<RouteConfig>,
    /// How to load this configuration again (SIGHUP, a changed file).
    pub source: Option<ConfigSource>,
    /// The TLS client for `https` targets: TLS 1.2 and 1.3, ALPN http/1.1,
    /// trusting `--upstream-ca` or the system's roots. Built once at
    /// start-up; None when no target needs it (`Server::bind` refuses an
    /// https target without it).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
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
    /// Connection and stream limits, and the PROXY protocol (all off by default).
    pub limits: ConnectionLimits,
    /// `--admin`: the metrics, health and status listener (off by default).
    pub admin: Option<AdminSettings>,
    /// `--cluster`: shared streams through Redis (off by default).
    pub cluster: Option<ClusterSettings>,
    /// How log lines are written (`main` starts logging with it; a reload
    /// cannot change it).
    pub log_format: LogFormat,
}

/// `--cluster`, `--cluster-key-prefix`, `--cluster-lease`.
fn cluster_settings(args: &ClusterArgs) -> Result<Option<ClusterSettings>, StartError> {
    let Some(redis) = &args.cluster else {
        return Ok(None);
    };
    crate::cluster::parse_url(redis).map_err(|e| StartError::Config(format!("--cluster {e}")))?;
    let lease: Duration = args.cluster_lease.into();
    if lease < Duration::from_millis(300) {
        return Err(StartError::Config(
            "--cluster-lease must be at least 300ms".into(),
        ));
    }
    Ok(Some(ClusterSettings {
        redis: redis.clone(),
        key_prefix: args.cluster_key_prefix.clone(),
        lease,
    }))
}

/// The admin listener (`--admin`, `--admin-token`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Bearer token required on every path but /healthz and /readyz.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminSettings {
    fn from_args(args: &AdminArgs) -> Result<Option<Self>, StartError> {
        let Some(listen) = args.admin else {
            return Ok(None);
        };
        let token = match &args.admin_token {
            Some(token)
                if token.is_empty()
                    || token.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(StartError::Config(
                    "--admin-token must be non-empty, without spaces or control characters".into(),
                ))
            }
            token => token.clone(),
        };
        Ok(Some(AdminSettings { listen, token }))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstreams", &self.upstreams)
            .field("routes", &self.routes)
            .field("timeouts", &self.timeouts)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration with default timeouts that sends every request to
    /// `upstream`.
    pub fn new(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        upstream: UpstreamGroup,
    ) -> Self {
        let mut config = Config::without_upstreams(listen, tls);
        config
            .upstreams
            .insert(DEFAULT_UPSTREAM.to_owned(), upstream);
        config
    }

    fn without_upstreams(listen: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Self {
        Config {
            listen,
            tls,
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            source: None,
            upstream_tls: None,
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
            limits: ConnectionLimits::default(),
            admin: None,
            cluster: None,
            log_format: LogFormat::Text,
        }
    }

    /// Validates the command line: loads and checks every certificate, key
    /// and OCSP file and the upstream CA, parses the upstream URLs.
    pub fn from_args(args: &ProxyArgs) -> Result<Self, StartError> {
        let sources = cert_sources(args)?;
        let keys = sources
            .iter()
            .map(tls::load_source)
            .collect::<Result<Vec<_>, _>>()?;
        let store = Arc::new(CertStore::from_keys(keys).ok_or_else(|| {
            StartError::Config(
                "--cert and --key are required (or [[certificate]] in a --config file)".into(),
            )
        })?);
        let client_auth = security_client_auth(&args.security)?;
        let tls = tls::server_config_with(store.clone(), client_auth.as_ref())?;
        let mut config = Config::without_upstreams(args.listen, tls);
        if !args.upstream.is_empty() {
            let mut upstream = UpstreamGroup::parse(&args.upstream)?;
            upstream.balance = args.balance;
            upstream.health_interval = args.health_interval.into();
            upstream.health_check = args
                .health_check
                .as_deref()
                .map(|path| health_check(path, upstream.health_interval))
                .transpose()?;
            config
                .upstreams
                .insert(DEFAULT_UPSTREAM.to_owned(), upstream);
        }
        config.upstream_tls = args
            .upstream_ca
            .as_deref()
            .map(|ca| tls::upstream_client_config(Some(ca)))
            .transpose()?;
        config.ensure_upstream_tls()?;
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
        config.limits = ConnectionLimits::from(&args.limits);
        config.admin = AdminSettings::from_args(&args.admin)?;
        config.cluster = cluster_settings(&args.cluster)?;
        if config.cluster.is_none() && !config.streams.redis_prefixes.is_empty() {
            return Err(StartError::Config(
                "--sse-redis needs --cluster (the Redis to read from)".into(),
            ));
        }
        config.log_format = args.log_format;
        config.threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN));
        Ok(config)
    }
    /// Loads the configuration the command line `argv` describes: its
    /// flags, and the `--config` file's keys for what the flags leave out.
    pub fn load(argv: &[OsString]) -> Result<Config, LoadError> {
        Config::parse(argv)?.check()
    }

    /// The first half of `load`: the command line and its `--config` file
    /// read and merged, nothing checked yet.
    pub fn parse(argv: &[OsString]) -> Result<ParsedConfig, LoadError> {
        let cmd = Cli::command();
        let matches = cmd
            .clone()
            .try_get_matches_from(argv)
            .map_err(LoadError::Usage)?;
        let args = proxy_args(&matches)?;
        let Some(path) = args.config.clone() else {
            return Ok(ParsedConfig {
                argv: argv.to_vec(),
                args,
                file: None,
            });
        };
        let given_elsewhere = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let file = ConfigFile::load(&path, &cmd, given_elsewhere).map_err(LoadError::File)?;
        // The file's flags first: the command line's own follow them.
        let merged: Vec<OsString> = argv
            .iter()
            .take(1)
            .chain(&file.flags)
            .chain(argv.iter().skip(1))
            .cloned()
            .collect();
        let matches = cmd
            .try_get_matches_from(&merged)
            .map_err(LoadError::Usage)?;
        Ok(ParsedConfig {
            argv: argv.to_vec(),
            args: proxy_args(&matches)?,
            file: Some(file),
        })
    }

    /// Adds the file's upstream groups and routes, resolved against the
    /// top-level settings.
    fn add_file_sections(&mut self, file: &ConfigFile) -> Result<(), Vec<FileError>> {
        let mut errors = Vec::new();
        for spec in &file.upstreams {
            if self.upstreams.contains_key(&spec.name.value) {
                errors.push(file.error(
                    spec.name.span.clone(),
                    format!("upstream {:?} is defined twice", spec.name.value),
                ));
                continue;
            }
            match self.group_from(spec) {
                Ok(group) => {
                    self.upstreams.insert(spec.name.value.clone(), group);
                }
                Err((span, message)) => errors.push(file.error(span, message)),
            }
        }
        for spec in &file.routes {
            match self.route_from(spec) {
                Ok(route) => {
                    let same = self
                        .routes
                        .iter()
                        .any(|other| other.host == route.host && other.path == route.path);
                    if same {
                        errors.push(file.error(
                            spec.span.clone(),
                            format!("[[route]]: path {:?} is routed twice", route.path),
                        ));
                    }
                    self.routes.push(route);
                }
                Err((span, message)) => errors.push(file.error(span, message)),
            }
        }
        if self.upstreams.is_empty() {
            errors.push(FileError {
                path: file.path.clone(),
                at: None,
                message: "no upstream: add [upstream.NAME] with targets, or give --upstream".into(),
            });
        } else if self.routes.is_empty() && self.upstreams.len() > 1 {
            errors.push(FileError {
                path: file.path.clone(),
                at: None,
                message: "several upstream groups but no [[route]] saying which requests go where"
                    .into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `[upstream.NAME]`, with the top-level balance and health settings
    /// for the keys it leaves out.
    fn group_from(
        &self,
        spec: &GroupSpec,
    ) -> Result<UpstreamGroup, (std::ops::Range<usize>, String)> {
        let at_name = |message: String| (spec.name.span.clone(), message);
        let urls: Vec<String> = spec.targets.iter().map(|t| t.value.clone()).collect();
        let mut group = UpstreamGroup::parse(&urls).map_err(|err| {
            let span = spec
                .targets
                .first()
                .map_or(spec.name.span.clone(), |t| t.span.clone());
            (span, err.to_string())
        })?;
        let defaults = self.upstreams.get(DEFAULT_UPSTREAM);
        group.balance = spec
            .balance
            .or(defaults.map(|d| d.balance))
            .unwrap_or(group.balance);
        group.health_interval = spec
            .health_interval
            .or(defaults.map(|d| d.health_interval))
            .unwrap_or(group.health_interval);
        group.health_check = match &spec.health_check {
            Some(path) => Some(
                health_check(&path.value, group.health_interval)
                    .map_err(|err| (path.span.clone(), err.to_string()))?,
            ),
            None => defaults.and_then(|d| d.health_check.clone()),
        };
        if group.targets.is_empty() {
            return Err(at_name("`targets` is required".into()));
        }
        Ok(group)
    }

    /// `[[route]]`, with the top-level settings for the keys it leaves out.
    fn route_from(
        &self,
        spec: &RouteSpec,
    ) -> Result<RouteConfig, (std::ops::Range<usize>, String)> {
        let whole = |message: &str| (spec.span.clone(), format!("[[route]]: {message}"));
        let path = spec
            .path
            .as_ref()
            .ok_or_else(|| whole("`path` is required"))?;
        if !path.value.starts_with('/') {
            return Err((
                path.span.clone(),
                "[[route]]: `path` must start with /".into(),
            ));
        }
        let host = spec
            .host
            .as_ref()
            .map(|host| {
                HostPattern::parse(&host.value)
                    .map_err(|reason| (host.span.clone(), format!("[[route]]: `host`: {reason}")))
            })
            .transpose()?;
        let upstream = match &spec.upstream {
            Some(name) if self.upstreams.contains_key(&name.value) => name.value.clone(),
            Some(name) => {
                return Err((
                    name.span.clone(),
                    format!(
                        "[[route]]: no upstream named {:?} (defined: {})",
                        name.value,
                        self.upstreams
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
            None if self.upstreams.len() == 1 => {
                self.upstreams.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(whole(
                    "`upstream` is required when there are several groups",
                ))
            }
        };
        let mut response_headers = Vec::new();
        for header in &spec.response_headers {
            let (name, value) = &header.value;
            check_response_header(name, value).map_err(|reason| {
                (
                    header.span.clone(),
                    format!("[[route]]: `response_headers`: {reason}"),
                )
            })?;
            response_headers.push((name.clone(), value.clone()));
        }
        let mut streams = self.streams.clone();
        if let Some(redis) = spec.sse_redis {
            if redis && self.cluster.is_none() {
                return Err((
                    path.span.clone(),
                    "[[route]]: `sse_redis` needs `[cluster] redis` (or --cluster)".to_owned(),
                ));
            }
            streams.redis_prefixes = if redis {
                vec![path.value.clone()]
            } else {
                Vec::new()
            };
        }
        if let Some(shared) = spec.sse_shared {
            streams.shared_prefixes = if shared {
                vec![path.value.clone()]
            } else {
                Vec::new()
            };
        }
        if spec.sse_heartbeat.is_some() {
            streams.heartbeat = spec.sse_heartbeat.filter(|d| !d.is_zero());
        }
        streams.replay = spec.sse_replay.unwrap_or(streams.replay);
        streams.drain_retry = spec.drain_retry.or(streams.drain_retry);
        Ok(RouteConfig {
            host,
            path: path.value.clone(),
            upstream,
            strip_prefix: spec.strip_prefix,
            request_timeout: spec.request_timeout.unwrap_or(self.timeouts.request),
            sse_idle_timeout: spec.sse_idle_timeout.unwrap_or(self.timeouts.sse_idle),
            streams,
            max_body: spec.max_body.or(self.max_body),
            websocket: spec.websocket.unwrap_or(true),
            websocket_idle_timeout: spec
                .websocket_idle_timeout
                .unwrap_or(self.timeouts.websocket_idle),
            response_headers,
        })
    }

    /// The TLS client for https targets, with the system's roots when no
    /// `--upstream-ca` built it (read only when a target needs them).
    fn ensure_upstream_tls(&mut self) -> Result<(), StartError> {
        let needs_tls = self
            .upstreams
            .values()
            .any(|group| group.first_tls_target().is_some());
        if self.upstream_tls.is_none() && needs_tls {
            self.upstream_tls = Some(tls::upstream_client_config(None)?);
        }
        Ok(())
    }

    /// The routes requests take: the file's, or one for every request to
    /// the only group, with the top-level settings.
    pub fn effective_routes(&self) -> Vec<RouteConfig> {
        if !self.routes.is_empty() {
            return self.routes.clone();
        }
        let upstream = self
            .upstreams
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
        vec![RouteConfig {
            host: None,
            path: "/".into(),
            upstream,
            strip_prefix: false,
            request_timeout: self.timeouts.request,
            sse_idle_timeout: self.timeouts.sse_idle,
            streams: self.streams.clone(),
            max_body: self.max_body,
            websocket: true,
            websocket_idle_timeout: self.timeouts.websocket_idle,
            response_headers: Vec::new(),
        }]
    }
}

/// The group `--upstream` makes.
pub const DEFAULT_UPSTREAM: &str = "default";

/// Where a configuration came from, to load it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub argv: Vec<OsString>,
    pub file: PathBuf,
}

/// One route: which requests, where they go, and its settings (the
/// top-level ones where the route sets none).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Path prefix, by whole segments (see `routes::path_matches`).
    pub path: String,
    /// The name of its upstream group.
    pub upstream: String,
    /// Remove `path` from the request path before forwarding.
    pub strip_prefix: bool,
    pub request_timeout: Duration,
    pub sse_idle_timeout: Duration,
    pub streams: StreamSettings,
    pub max_body: Option<u64>,
    /// Forward WebSocket upgrades.
    pub websocket: bool,
    pub websocket_idle_timeout: Duration,
    /// Lower-case names; an empty value removes the field.
    pub response_headers: Vec<(String, String)>,
}

/// A command line merged with its `--config` file's keys: every setting
/// known, the command line's not checked yet. `main` starts logging in
/// between, in the format this names, so the checks' own log lines (an
/// expired certificate) come out in it too. (Reading the file loads its
/// `[[certificate]]` pairs to report their errors with a position; a
/// warning that logs before logging starts is lost, and comes again from
/// `check`.)
#[derive(Debug)]
pub struct ParsedConfig {
    argv: Vec<OsString>,
    args: ProxyArgs,
    file: Option<ConfigFile>,
}

impl ParsedConfig {
    /// `--log-format`, from the command line, the environment or the file.
    pub fn log_format(&self) -> LogFormat {
        self.args.log_format
    }

    /// The second half of `Config::load`: checks the settings and loads
    /// every file they name.
    pub fn check(self) -> Result<Config, LoadError> {
        let mut config = Config::from_args(&self.args)?;
        let Some(file) = self.file else {
            if config.upstreams.is_empty() {
                return Err(StartError::Config("--upstream is required".into()).into());
            }
            return Ok(config);
        };
        config.add_file_sections(&file).map_err(LoadError::File)?;
        config.ensure_upstream_tls()?;
        config.source = Some(ConfigSource {
            argv: self.argv,
            file: file.path,
        });
        Ok(config)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The command line itself (also help and version requests).
    Usage(clap::Error),
    /// Mistakes in the configuration file, each with its position.
    File(Vec<FileError>),
    Start(StartError),
}

impl From<StartError> for LoadError {
    fn from(err: StartError) -> Self {
        LoadError::Start(err)
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Usage(err) => write!(f, "{}", err.render().to_string().trim_end()),
            LoadError::File(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("\n"))
            }
            LoadError::Start(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The proxy's arguments from parsed matches, with each `--ocsp` paired.
fn proxy_args(matches: &clap::ArgMatches) -> Result<ProxyArgs, LoadError> {
    let mut cli = Cli::from_arg_matches(matches).map_err(LoadError::Usage)?;
    cli.proxy.ocsp_pair = ocsp_pairs(matches);
    Ok(cli.proxy)
}

/// For each `--ocsp`, the index of the `--cert` that precedes it.
pub fn ocsp_pairs(matches: &clap::ArgMatches) -> Vec<usize> {
    let certs: Vec<usize> = matches
        .indices_of("cert")
        .map(Iterator::collect)
        .unwrap_or_default();
    matches
        .indices_of("ocsp")
        .map(|ocsp| {
            ocsp.map(|at| {
                certs
                    .iter()
                    .filter(|&&cert| cert < at)
                    .count()
                    .saturating_sub(1)
            })
            .collect()
        })
        .unwrap_or_default()
}

/// A response field a route may set or remove: not one the proxy frames
/// the response with.
fn check_response_header(name: &str, value: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a header name"));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!("{name}: {value:?} is not a header value"));
    }
    let framing = ["content-length", "transfer-encoding", "content-type"];
    if crate::rules::is_hop_by_hop(name.as_bytes()) || framing.contains(&name) {
        return Err(format!(
            "{name} belongs to the response itself and cannot be set"
        ));
    }
    Ok(())
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

    fn tcp(address: &str) -> Endpoint {
        Endpoint::Tcp(address.to_owned())
    }

    fn tls(address: &str, name: &str) -> Endpoint {
        Endpoint::Tls {
            address: address.to_owned(),
            name: ServerName::try_from(name.to_owned()).unwrap(),
        }
    }

    #[test]
    fn upstream_url_with_and_without_base_path() {
        let plain = UpstreamUrl::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(plain.base_path, "");
        assert_eq!(plain.endpoint, tcp("127.0.0.1:3000"));
        let based = UpstreamUrl::parse("http://backend/api/").unwrap();
        assert_eq!(based.base_path, "/api");
        assert_eq!(based.endpoint, tcp("backend:80"));
        assert_eq!(based.to_string(), "http://backend/api/", "shown as given");
    }

    #[test]
    fn https_upstreams_check_the_certificate_for_the_host() {
        let named = UpstreamUrl::parse("https://backend.internal/api").unwrap();
        assert_eq!(
            named.endpoint,
            tls("backend.internal:443", "backend.internal")
        );
        assert_eq!(named.base_path, "/api");
        let ip = UpstreamUrl::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(ip.endpoint, tls("127.0.0.1:8443", "127.0.0.1"));
        let v6 = UpstreamUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(v6.endpoint, tls("[::1]:8443", "::1"));
        assert_eq!(v6.base_path, "");
        assert_eq!(v6.endpoint.host_header(), "[::1]:8443");
    }

    #[test]
    fn unix_upstreams_are_a_socket_path_without_base_path() {
        let unix = UpstreamUrl::parse("unix:/run/app/http.sock").unwrap();
        assert_eq!(unix.endpoint, Endpoint::Unix("/run/app/http.sock".into()));
        assert_eq!(unix.base_path, "");
        assert_eq!(unix.endpoint.host_header(), "localhost");
        assert_eq!(unix.to_string(), "unix:/run/app/http.sock");
        // The whole rest is the path, even what would be a query elsewhere;
        // a socket that does not exist (yet) is not a start-up error.
        let odd = UpstreamUrl::parse("unix:/tmp/a b?c").unwrap();
        assert_eq!(odd.endpoint, Endpoint::Unix("/tmp/a b?c".into()));
    }

    #[test]
    fn a_group_may_mix_transports_with_one_base_path() {
        let urls = |list: &[&str]| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        let group =
            UpstreamGroup::parse(&urls(&["http://a:1", "https://b:2", "unix:/s.sock"])).unwrap();
        assert_eq!(group.targets.len(), 3);
        assert_eq!(group.first_tls_target().unwrap().to_string(), "https://b:2");
        assert!(UpstreamGroup::parse(&urls(&["https://a:1/api", "unix:/s.sock"])).is_err());
        let plain = UpstreamGroup::parse(&urls(&["http://a:1", "unix:/s.sock"])).unwrap();
        assert!(plain.first_tls_target().is_none());
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
            "ftp://x:1",
            "ws://x:1",
            "127.0.0.1:3000",
            "http://x:1/?q=1",
            "https://x:1/?q=1",
            "http://u@x:1",
            "https://u@x:1",
            "http://",
            "https://",
            "unix:",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
