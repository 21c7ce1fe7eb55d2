//! The load generator: HTTP/1.1 and HTTP/2 clients over TLS (or plain TCP
//! for the direct path) that open event streams and count every event by run
//! and sequence number, and request/response loops over keep-alive or fresh
//! connections.
//!
//! - HTTP/1.1: event streams through hyper's client, requests through
//!   `http_get`'s lighter client.
//! - HTTP/2 (the browser's path): the `h2` crate, driven from the task that
//!   uses the connection (no second task per connection, so thousands of
//!   connections stay cheap). One event stream per connection, as a browser
//!   tab has; request/response with several concurrent streams per
//!   connection (as h2load `-m`).
//!
//! The client offers only X25519, TLS 1.3 + 1.2 and AES-128-GCM, and one
//! ALPN protocol (http/1.1, or h2 for the HTTP/2 runs), so every peer
//! negotiates the same handshake whatever its own preferences; what was
//! negotiated is recorded and reported, and an HTTP/2 run fails on a
//! connection that did not negotiate h2.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::http_get::GetConnection;
use crate::sys;
use crate::upstream::WARMUP_RUN;

/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Response headers after the request was sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// Latencies are recorded in microseconds, up to one minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// HTTP/2 stream flow-control window the client announces: Chrome's 6 MiB.
const H2_STREAM_WINDOW: u32 = 6 * 1024 * 1024;
/// HTTP/2 connection flow-control window: Chrome's 15 MiB.
const H2_CONNECTION_WINDOW: u32 = 15 * 1024 * 1024;

type Connection = Either<TcpStream, TlsStream<TcpStream>>;
type H2Connection = h2::client::Connection<Connection, Bytes>;
type H2Sender = h2::client::SendRequest<Bytes>;

/// The HTTP version the load generator speaks to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN http/1.1): one request or event stream per connection at a time.
    H1,
    /// HTTP/2 (ALPN h2), as browsers negotiate it.
    H2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::H1, Protocol::H2];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
        }
    }

    /// The one ALPN protocol the client offers.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::H1 => b"http/1.1",
            Protocol::H2 => b"h2",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The TLS parameters a connection ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher_suite: String,
    pub key_exchange: String,
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<String>,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} ALPN {}",
            self.version,
            self.cipher_suite,
            self.key_exchange,
            self.alpn.as_deref().unwrap_or("none")
        )
    }
}

/// How the client treats the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// Verify the chain against the trusted certificate, as a browser does.
    Chain,
    /// Check neither the chain nor the server's handshake signature. For
    /// the handshakes/s measurement only: the client shares the two cores
    /// with the proxy, and an ECDSA P-256 verify per connection (a fifth of
    /// the client's CPU) would be time the proxy under test cannot use.
    /// The server still does all of its work (key exchange, signing); every
    /// other connection of the run verifies the peer's chain.
    Unchecked,
}

/// One client TLS configuration per protocol, the same but for ALPN.
#[derive(Clone)]
pub struct ClientTls {
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl ClientTls {
    /// See [`tls_client_config`].
    pub fn new(trusted_cert: &Path, resume: bool, check: CertCheck) -> Result<Self, String> {
        Ok(ClientTls {
            h1: tls_client_config(trusted_cert, resume, check, Protocol::H1)?,
            h2: tls_client_config(trusted_cert, resume, check, Protocol::H2)?,
        })
    }

    pub fn get(&self, protocol: Protocol) -> Arc<ClientConfig> {
        match protocol {
            Protocol::H1 => self.h1.clone(),
            Protocol::H2 => self.h2.clone(),
        }
    }
}

/// The client TLS configuration every peer is measured with, offering only
/// `protocol` by ALPN. `resume: false` makes every handshake a full one.
pub fn tls_client_config(
    trusted_cert: &Path,
    resume: bool,
    check: CertCheck,
    protocol: Protocol,
) -> Result<Arc<ClientConfig>, String> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    provider.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(trusted_cert)
        .map_err(|e| format!("{}: {e}", trusted_cert.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", trusted_cert.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", trusted_cert.display()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("client TLS config: {e}"))?;
    let mut config = match check {
        CertCheck::Chain => builder.with_root_certificates(roots),
        CertCheck::Unchecked => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
    }
    .with_no_client_auth();
    config.alpn_protocols = vec![protocol.alpn().to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Accepts whatever certificate and handshake signature the server sends.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where the load goes: an address, TLS or not, the HTTP version, and the
/// local addresses the connections are spread over (127.0.0.x) so ephemeral
/// ports never run short.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
    pub protocol: Protocol,
    pub sources: Arc<Vec<Ipv4Addr>>,
}

impl Target {
    /// HTTP/2 needs TLS (h2 is chosen by ALPN; there is no cleartext h2c here).
    pub fn new(
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        protocol: Protocol,
        sources: Arc<Vec<Ipv4Addr>>,
    ) -> Self {
        debug_assert!(tls.is_some() || protocol == Protocol::H1);
        Target {
            addr,
            tls: tls.map(TlsConnector::from),
            protocol,
            sources,
        }
    }

    /// The same target with another TLS configuration (e.g. without resumption).
    pub fn with_tls(&self, tls: Option<Arc<ClientConfig>>) -> Self {
        Target {
            tls: tls.map(TlsConnector::from),
            ..self.clone()
        }
    }

    fn source_for(&self, index: usize) -> Option<Ipv4Addr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    /// TCP connect (from the index-th source address) and TLS handshake.
    async fn connect(&self, index: usize) -> Result<(Connection, Option<TlsInfo>), String> {
        let attempt = async {
            let tcp = connect_tcp(self.addr, self.source_for(index))
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            let Some(connector) = &self.tls else {
                return Ok((Either::Left(tcp), None));
            };
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
            let info = tls_info(tls.get_ref().1);
            if self.protocol == Protocol::H2 && info.alpn.as_deref() != Some("h2") {
                return Err(format!(
                    "{} did not negotiate h2 by ALPN (negotiated: {})",
                    self.addr,
                    info.alpn.as_deref().unwrap_or("nothing")
                ));
            }
            Ok((Either::Right(tls), Some(info)))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("connect {}: timed out", self.addr))?
    }

    /// Connects and starts an HTTP/2 client connection on it. The connection
    /// does nothing unless polled: see [`driving`].
    async fn open_h2(
        &self,
        index: usize,
    ) -> Result<(H2Sender, H2Connection, Option<TlsInfo>), String> {
        let (connection, info) = self.connect(index).await?;
        let handshake = h2_builder().handshake::<_, Bytes>(connection);
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| "HTTP/2 handshake: timed out".to_string())?
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        Ok((sender, connection, info))
    }

    /// Connects and starts an HTTP/1.1 client connection on it.
    async fn open_http(&self, index: usize) -> Result<(HttpConnection, Option<TlsInfo>), String> {
        let (connection, info) = self.connect(index).await?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(connection))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok((
            HttpConnection {
                sender,
                _driver: AbortOnDrop(driver),
            },
            info,
        ))
    }
}

fn tls_info(connection: &rustls::ClientConnection) -> TlsInfo {
    TlsInfo {
        version: connection
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "?".into()),
        cipher_suite: connection
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "?".into()),
        key_exchange: connection
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_else(|| "?".into()),
        alpn: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    }
}

/// The HTTP/2 client settings: a browser's (Chrome's) flow-control windows
/// and no server push; everything else the `h2` crate's defaults.
fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .enable_push(false);
    builder
}

/// `https://localhost{path}`: HTTP/2 requests carry scheme and authority.
fn h2_uri(path: &str) -> Result<Uri, String> {
    format!("https://localhost{path}")
        .parse()
        .map_err(|e| format!("request URI for {path}: {e}"))
}

/// A GET as the HTTP/1.1 clients send it (Host becomes :authority).
fn h2_request(uri: &Uri, accept: &str) -> Result<Request<()>, String> {
    Request::get(uri.clone())
        .header(header::ACCEPT, accept)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(())
        .map_err(|e| format!("request: {e}"))
}

/// Runs `work` while driving `connection` (which reads and writes the
/// frames `work` waits for); Err if the connection ends first, after which
/// it must not be polled again.
async fn driving<F: std::future::Future>(
    connection: &mut H2Connection,
    work: F,
) -> Result<F::Output, String> {
    tokio::select! {
        output = work => Ok(output),
        ended = connection => Err(connection_ended(ended)),
    }
}

fn connection_ended(ended: Result<(), h2::Error>) -> String {
    match ended {
        Ok(()) => "connection closed by the server".into(),
        Err(err) => format!("connection failed: {err}"),
    }
}

/// Sends `request` and waits for its response head.
async fn h2_send(
    sender: H2Sender,
    request: Request<()>,
) -> Result<http::Response<h2::RecvStream>, String> {
    let mut sender = sender
        .ready()
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    let (response, _) = sender
        .send_request(request, true)
        .map_err(|e| format!("request failed: {e}"))?;
    response.await.map_err(|e| format!("request failed: {e}"))
}

/// One GET over HTTP/2, its body read whole; Ok when it answered 200.
async fn h2_get(sender: H2Sender, uri: &Uri) -> Result<(), String> {
    let response = h2_send(sender, h2_request(uri, "*/*")?).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(())
}

/// Connects from `source` (port chosen at connect time, so the 4-tuple and not
/// the source port alone must be unique) to `dest`.
async fn connect_tcp(dest: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        let enable: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &enable as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    socket.connect(dest).await
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct HttpConnection {
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection; aborted (closing it) when this is dropped.
    _driver: AbortOnDrop,
}

impl HttpConnection {
    async fn get(
        &mut self,
        path: &str,
        accept: &str,
        close: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection closed: {e}"))?;
            let mut request = Request::get(path)
                .header(header::HOST, "localhost")
                .header(header::ACCEPT, accept)
                .header(header::CACHE_CONTROL, "no-cache");
            if close {
                request = request.header(header::CONNECTION, "close");
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| format!("request: {e}"))?;
            self.sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| "no response headers in time".to_string())?
    }
}

// ------------------------------------------------------------ event streams

/// What each stream of one batch expects: events of `run`, numbered 0..expected.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub path: String,
    pub run: u32,
    pub expected: u64,
}

/// Counters the harness watches while a batch of streams runs.
#[derive(Debug, Default)]
pub struct StreamProgress {
    /// Got response headers (status 200).
    pub connected: AtomicUsize,
    /// Failed to connect, or ended with an error.
    pub failed: AtomicUsize,
    /// Saw a warm-up event.
    pub warmed: AtomicUsize,
    /// Received every expected event.
    pub complete: AtomicUsize,
    /// Expected events received, over all streams.
    pub events: AtomicU64,
}

impl StreamProgress {
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn warmed(&self) -> usize {
        self.warmed.load(Ordering::Relaxed)
    }
    pub fn complete(&self) -> usize {
        self.complete.load(Ordering::Relaxed)
    }
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// One stream's account of its events.
#[derive(Debug, Default, Clone)]
pub struct StreamOutcome {
    pub connected: bool,
    pub error: Option<String>,
    /// Distinct expected events received.
    pub received: u64,
    pub duplicates: u64,
    /// Events of another run, or with a sequence number outside the plan.
    pub unexpected: u64,
    /// Delivery latency of each received event, microseconds.
    pub latencies_us: Vec<u64>,
    pub first_receive_ns: Option<u64>,
    pub last_receive_ns: Option<u64>,
    pub tls: Option<TlsInfo>,
    /// The first `MISSING_SAMPLE` sequence numbers of the plan this stream
    /// did not receive (filled when the stream was read to its end).
    pub missing: Vec<u64>,
}

/// How many missing sequence numbers a stream names.
const MISSING_SAMPLE: usize = 16;

/// Tallies events by sequence number so losses and duplicates show.
struct EventTally<'a> {
    plan: &'a StreamPlan,
    seen: Vec<u64>,
    warmed: bool,
}

impl<'a> EventTally<'a> {
    fn new(plan: &'a StreamPlan) -> Self {
        EventTally {
            plan,
            seen: vec![0; plan.expected.div_ceil(64) as usize],
            warmed: false,
        }
    }

    /// Records one event; returns true the first time a warm-up event is seen.
    fn record(&mut self, event: ParsedEvent, now_ns: u64, outcome: &mut StreamOutcome) -> bool {
        if event.run == WARMUP_RUN {
            let first = !self.warmed;
            self.warmed = true;
            return first;
        }
        if event.run != self.plan.run || event.seq >= self.plan.expected {
            outcome.unexpected += 1;
            return false;
        }
        let (word, bit) = ((event.seq / 64) as usize, 1u64 << (event.seq % 64));
        if self.seen[word] & bit != 0 {
            outcome.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        outcome.received += 1;
        outcome
            .latencies_us
            .push(now_ns.saturating_sub(event.timestamp_ns) / 1000);
        outcome.first_receive_ns.get_or_insert(now_ns);
        outcome.last_receive_ns = Some(now_ns);
        false
    }
}

#[derive(Debug, Clone, Copy)]
struct ParsedEvent {
    run: u32,
    seq: u64,
    timestamp_ns: u64,
}

/// Splits a byte stream into SSE events (blank-line terminated) and reads the
/// `data: RUN SEQ TS ...` line of each. Comments and other events are skipped.
#[derive(Default)]
struct EventSplitter {
    buffer: Vec<u8>,
}

impl EventSplitter {
    fn feed(&mut self, data: &[u8], mut on_event: impl FnMut(ParsedEvent)) {
        self.buffer.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = find_blank_line(&self.buffer[start..]) {
            let block = &self.buffer[start..start + end];
            if let Some(event) = parse_event(block) {
                on_event(event);
            }
            start += end + 2;
        }
        self.buffer.drain(..start);
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}

fn parse_event(block: &[u8]) -> Option<ParsedEvent> {
    let line = block
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"data: "))?;
    let mut fields = line.split(|&b| b == b' ');
    let mut number = || -> Option<u64> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
    Some(ParsedEvent {
        run: number()? as u32,
        seq: number()?,
        timestamp_ns: number()?,
    })
}

/// Opens one event stream and tallies its events until `stop` fires.
/// Connection attempts are limited by `connect_slots` so a thousand streams
/// do not overflow the peer's accept backlog.
pub async fn event_stream(
    target: Target,
    index: usize,
    plan: Arc<StreamPlan>,
    progress: Arc<StreamProgress>,
    connect_slots: Arc<Semaphore>,
    stop: CancellationToken,
) -> StreamOutcome {
    let mut outcome = StreamOutcome::default();
    let result = run_event_stream(
        &target,
        index,
        &plan,
        &progress,
        &connect_slots,
        &stop,
        &mut outcome,
    )
    .await;
    if let Err(err) = result {
        outcome.error = Some(err);
        progress.failed.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

async fn run_event_stream(
    target: &Target,
    index: usize,
    plan: &StreamPlan,
    progress: &StreamProgress,
    connect_slots: &Semaphore,
    stop: &CancellationToken,
    outcome: &mut StreamOutcome,
) -> Result<(), String> {
    match target.protocol {
        Protocol::H1 => {
            run_event_stream_h1(target, index, plan, progress, connect_slots, stop, outcome).await
        }
        Protocol::H2 => {
            run_event_stream_h2(target, index, plan, progress, connect_slots, stop, outcome).await
        }
    }
}

/// Tallies the events of one stream from the bytes of its body.
struct StreamReader<'a> {
    splitter: EventSplitter,
    tally: EventTally<'a>,
    progress: &'a StreamProgress,
    complete: bool,
}

impl<'a> StreamReader<'a> {
    fn new(plan: &'a StreamPlan, progress: &'a StreamProgress) -> Self {
        StreamReader {
            splitter: EventSplitter::default(),
            tally: EventTally::new(plan),
            progress,
            complete: plan.expected == 0,
        }
    }

    fn feed(&mut self, data: &[u8], outcome: &mut StreamOutcome) {
        let now_ns = sys::monotonic_ns();
        let received_before = outcome.received;
        let (tally, progress) = (&mut self.tally, self.progress);
        self.splitter.feed(data, |event| {
            if tally.record(event, now_ns, outcome) {
                progress.warmed.fetch_add(1, Ordering::Relaxed);
            }
        });
        if outcome.received > received_before {
            self.progress
                .events
                .fetch_add(outcome.received - received_before, Ordering::Relaxed);
        }
        if !self.complete && outcome.received == self.tally.plan.expected {
            self.complete = true;
            self.progress.complete.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Names the first sequence numbers the stream did not receive.
    fn note_missing(&self, outcome: &mut StreamOutcome) {
        let seen = &self.tally.seen;
        outcome.missing = (0..self.tally.plan.expected)
            .filter(|seq| seen[(seq / 64) as usize] & (1u64 << (seq % 64)) == 0)
            .take(MISSING_SAMPLE)
            .collect();
    }
}

/// Records that a stream got its response head; Err unless it was a 200.
fn stream_opened(
    status: StatusCode,
    info: Option<TlsInfo>,
    progress: &StreamProgress,
    outcome: &mut StreamOutcome,
) -> Result<(), String> {
    outcome.tls = info;
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    outcome.connected = true;
    progress.connected.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn run_event_stream_h1(
    target: &Target,
    index: usize,
    plan: &StreamPlan,
    progress: &StreamProgress,
    connect_slots: &Semaphore,
    stop: &CancellationToken,
    outcome: &mut StreamOutcome,
) -> Result<(), String> {
    let opened = async {
        let _slot = connect_slots
            .acquire()
            .await
            .map_err(|_| "connect slots closed".to_string())?;
        let (mut http, info) = target.open_http(index).await?;
        let response = http.get(&plan.path, "text/event-stream", false).await?;
        Ok::<_, String>((http, info, response))
    };
    let (http, info, response) = tokio::select! {
        opened = opened => opened?,
        () = stop.cancelled() => return Err("stopped before connecting".into()),
    };
    stream_opened(response.status(), info, progress, outcome)?;

    let mut body = response.into_body();
    let mut reader = StreamReader::new(plan, progress);
    loop {
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            frame = body.frame() => frame,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    reader.feed(data, outcome);
                }
            }
            Some(Err(err)) => return Err(format!("stream broken: {err}")),
            None => return Err("stream ended by the server".into()),
        }
    }
    reader.note_missing(outcome);
    drop(http);
    Ok(())
}

/// One event stream on its own HTTP/2 connection (as one browser tab),
/// the connection driven from this task.
async fn run_event_stream_h2(
    target: &Target,
    index: usize,
    plan: &StreamPlan,
    progress: &StreamProgress,
    connect_slots: &Semaphore,
    stop: &CancellationToken,
    outcome: &mut StreamOutcome,
) -> Result<(), String> {
    let uri = h2_uri(&plan.path)?;
    let opened = async {
        let _slot = connect_slots
            .acquire()
            .await
            .map_err(|_| "connect slots closed".to_string())?;
        let (sender, mut connection, info) = target.open_h2(index).await?;
        let request = h2_request(&uri, "text/event-stream")?;
        let head = tokio::time::timeout(RESPONSE_TIMEOUT, h2_send(sender, request));
        let response = driving(&mut connection, head)
            .await?
            .map_err(|_| "no response headers in time".to_string())??;
        Ok::<_, String>((connection, info, response))
    };
    let (mut connection, info, response) = tokio::select! {
        opened = opened => opened?,
        () = stop.cancelled() => return Err("stopped before connecting".into()),
    };
    stream_opened(response.status(), info, progress, outcome)?;

    let mut body = response.into_body();
    let mut reader = StreamReader::new(plan, progress);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            ended = &mut connection => return Err(connection_ended(ended)),
            data = body.data() => match data {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    reader.feed(&data, outcome);
                }
                Some(Err(err)) => return Err(format!("stream broken: {err}")),
                None => return Err("stream ended by the server".into()),
            },
        }
    }
    reader.note_missing(outcome);
    Ok(())
}

/// Events tallied over a batch of streams.
#[derive(Debug)]
pub struct BatchOutcome {
    pub streams: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub latency_us: Histogram<u64>,
    /// From the first to the last event received, over all streams.
    pub receive_span: Duration,
    pub tls: Option<TlsInfo>,
    /// Sequence numbers streams did not receive, with how many streams
    /// missed each (from each stream's first few).
    pub missing: std::collections::BTreeMap<u64, u64>,
}

impl BatchOutcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// "seq 0 (30 streams), seq 7 (1 stream)": the first few sequence
    /// numbers missed, for a failure message; empty when none was.
    pub fn missing_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .missing
            .iter()
            .take(8)
            .map(|(seq, streams)| {
                let plural = if *streams == 1 { "" } else { "s" };
                format!("seq {seq} ({streams} stream{plural})")
            })
            .collect();
        if self.missing.len() > 8 {
            parts.push("...".into());
        }
        parts.join(", ")
    }

    /// The failure line for `label` when an event was lost or repeated or
    /// a stream failed; None when the batch is clean.
    pub fn failure(&self, label: &str) -> Option<String> {
        if self.lost() == 0 && self.failed == 0 && self.duplicates == 0 {
            return None;
        }
        Some(format!(
            "{label}: lost {} of {} events, {} duplicates, {} of {} streams failed{}{}",
            self.lost(),
            self.expected,
            self.duplicates,
            self.failed,
            self.streams,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default(),
            match self.missing_summary() {
                m if m.is_empty() => String::new(),
                m => format!("; missing: {m}"),
            }
        ))
    }

    pub fn merge(plan: &StreamPlan, outcomes: Vec<StreamOutcome>) -> BatchOutcome {
        let mut batch = BatchOutcome {
            streams: outcomes.len(),
            connected: 0,
            failed: 0,
            first_error: None,
            expected: plan.expected * outcomes.len() as u64,
            received: 0,
            duplicates: 0,
            unexpected: 0,
            latency_us: new_histogram(),
            receive_span: Duration::ZERO,
            tls: None,
            missing: Default::default(),
        };
        let mut first_ns = u64::MAX;
        let mut last_ns = 0;
        for outcome in outcomes {
            batch.connected += usize::from(outcome.connected);
            if let Some(err) = outcome.error {
                batch.failed += 1;
                batch.first_error.get_or_insert(err);
            }
            batch.received += outcome.received;
            for seq in outcome.missing {
                *batch.missing.entry(seq).or_default() += 1;
            }
            batch.duplicates += outcome.duplicates;
            batch.unexpected += outcome.unexpected;
            for latency in outcome.latencies_us {
                record_latency(&mut batch.latency_us, latency);
            }
            first_ns = first_ns.min(outcome.first_receive_ns.unwrap_or(u64::MAX));
            last_ns = last_ns.max(outcome.last_receive_ns.unwrap_or(0));
            if batch.tls.is_none() {
                batch.tls = outcome.tls;
            }
        }
        if last_ns > first_ns {
            batch.receive_span = Duration::from_nanos(last_ns - first_ns);
        }
        batch
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant figures from 1 us to one minute.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

pub fn record_latency(histogram: &mut Histogram<u64>, latency_us: u64) {
    histogram.saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
}

// ------------------------------------------------------- request / response

/// Whether each request gets its own connection (and so a full TLS handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionUse {
    KeepAlive,
    NewPerRequest,
}

#[derive(Debug)]
pub struct RequestOutcome {
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub connections_opened: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    pub tls: Option<TlsInfo>,
}

impl RequestOutcome {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn empty() -> Self {
        RequestOutcome {
            completed: 0,
            errors: 0,
            first_error: None,
            connections_opened: 0,
            elapsed: Duration::ZERO,
            latency_us: new_histogram(),
            tls: None,
        }
    }

    /// One error that ended a worker.
    fn failed(error: String) -> Self {
        RequestOutcome {
            errors: 1,
            first_error: Some(error),
            ..Self::empty()
        }
    }

    /// The outcomes of several workers together (`elapsed` is left unset).
    fn sum(outcomes: Vec<RequestOutcome>) -> Self {
        let mut total = Self::empty();
        for outcome in outcomes {
            total.completed += outcome.completed;
            total.errors += outcome.errors;
            total.connections_opened += outcome.connections_opened;
            if total.first_error.is_none() {
                total.first_error = outcome.first_error;
            }
            if total.tls.is_none() {
                total.tls = outcome.tls;
            }
            let _ = total.latency_us.add(&outcome.latency_us);
        }
        total
    }
}

/// `workers` concurrent clients request `path` for `duration`, each as soon
/// as its previous answer is in. Over HTTP/2 each client is one connection
/// with `streams` requests in flight at once (as h2load `-m`); over
/// HTTP/1.1 each has one at a time.
pub async fn request_load(
    target: Target,
    path: &str,
    workers: usize,
    streams: usize,
    duration: Duration,
    connection_use: ConnectionUse,
) -> RequestOutcome {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let target = target.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                match target.protocol {
                    Protocol::H1 => {
                        request_worker(target, worker, path, deadline, connection_use).await
                    }
                    Protocol::H2 => {
                        h2_request_worker(target, worker, &path, streams, deadline, connection_use)
                            .await
                    }
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(match task.await {
            Ok(outcome) => outcome,
            Err(err) => RequestOutcome::failed(format!("worker panicked: {err}")),
        });
    }
    let mut total = RequestOutcome::sum(outcomes);
    total.elapsed = started.elapsed();
    total
}

async fn request_worker(
    target: Target,
    worker: usize,
    path: String,
    deadline: Instant,
    connection_use: ConnectionUse,
) -> RequestOutcome {
    let mut outcome = RequestOutcome::empty();
    let close = connection_use == ConnectionUse::NewPerRequest;
    let mut connection: Option<GetConnection<Connection>> = None;
    let mut attempt = worker;
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = async {
            if connection.is_none() {
                attempt += 1;
                let (io, info) = target.connect(attempt).await?;
                outcome.connections_opened += 1;
                if outcome.tls.is_none() {
                    outcome.tls = info;
                }
                connection = Some(GetConnection::new(io, &path, "*/*", close));
            }
            let http = connection.as_mut().ok_or("no connection")?;
            let answer = tokio::time::timeout(RESPONSE_TIMEOUT, http.get())
                .await
                .map_err(|_| "no response in time".to_string())??;
            if answer.status != 200 {
                return Err(format!("status {}", answer.status));
            }
            Ok::<bool, String>(answer.closes)
        }
        .await;
        match result {
            Ok(server_closes) => {
                outcome.completed += 1;
                record_latency(
                    &mut outcome.latency_us,
                    started.elapsed().as_micros() as u64,
                );
                if close || server_closes {
                    connection = None;
                }
            }
            Err(err) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(err);
                connection = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    outcome
}

/// One HTTP/2 client: a connection with `streams` GETs in flight until the
/// deadline (keep-alive), or a new connection for each single GET. After
/// an error the connection is dropped and a new one opened.
async fn h2_request_worker(
    target: Target,
    worker: usize,
    path: &str,
    streams: usize,
    deadline: Instant,
    connection_use: ConnectionUse,
) -> RequestOutcome {
    let mut outcome = RequestOutcome::empty();
    let uri = match h2_uri(path) {
        Ok(uri) => uri,
        Err(err) => return RequestOutcome::failed(err),
    };
    let mut attempt = worker;
    while Instant::now() < deadline {
        let started = Instant::now();
        attempt += 1;
        let result = async {
            let (sender, mut connection, info) = target.open_h2(attempt).await?;
            outcome.connections_opened += 1;
            if outcome.tls.is_none() {
                outcome.tls = info;
            }
            match connection_use {
                ConnectionUse::KeepAlive => {
                    h2_keepalive(
                        &mut connection,
                        sender,
                        &uri,
                        streams,
                        deadline,
                        &mut outcome,
                    )
                    .await
                }
                ConnectionUse::NewPerRequest => {
                    let get = tokio::time::timeout(RESPONSE_TIMEOUT, h2_get(sender, &uri));
                    driving(&mut connection, get)
                        .await?
                        .map_err(|_| "no response in time".to_string())??;
                    outcome.completed += 1;
                    record_latency(
                        &mut outcome.latency_us,
                        started.elapsed().as_micros() as u64,
                    );
                    Ok(())
                }
            }
        }
        .await;
        if let Err(err) = result {
            outcome.errors += 1;
            outcome.first_error.get_or_insert(err);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    outcome
}

/// Keeps `streams` GETs in flight on one connection, each replaced as soon
/// as it is answered, until `deadline`; then waits for those in flight.
async fn h2_keepalive(
    connection: &mut H2Connection,
    sender: H2Sender,
    uri: &Uri,
    streams: usize,
    deadline: Instant,
    outcome: &mut RequestOutcome,
) -> Result<(), String> {
    let timed_get = |sender: H2Sender| async move {
        let started = Instant::now();
        let result = tokio::time::timeout(RESPONSE_TIMEOUT, h2_get(sender, uri))
            .await
            .unwrap_or_else(|_| Err("no response in time".into()));
        (result, started.elapsed())
    };
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..streams.max(1) {
        in_flight.push(timed_get(sender.clone()));
    }
    loop {
        tokio::select! {
            answered = in_flight.next() => {
                let Some((result, latency)) = answered else {
                    return Ok(());
                };
                result?;
                outcome.completed += 1;
                record_latency(&mut outcome.latency_us, latency.as_micros() as u64);
                if Instant::now() < deadline {
                    in_flight.push(timed_get(sender.clone()));
                }
            }
            ended = &mut *connection => return Err(connection_ended(ended)),
        }
    }
}

/// One GET over a fresh connection; Ok when it answered 200. Used to tell
/// that a peer is up and proxying (over the target's protocol).
pub async fn probe(target: &Target, path: &str) -> Result<Option<TlsInfo>, String> {
    if target.protocol == Protocol::H2 {
        let (sender, mut connection, info) = target.open_h2(0).await?;
        let uri = h2_uri(path)?;
        let get = tokio::time::timeout(RESPONSE_TIMEOUT, h2_get(sender, &uri));
        driving(&mut connection, get)
            .await?
            .map_err(|_| "no response in time".to_string())?
            .map_err(|e| format!("{path}: {e}"))?;
        return Ok(info);
    }
    let (mut http, info) = target.open_http(0).await?;
    let response = http.get(path, "*/*", true).await?;
    let status = response.status();
    tokio::time::timeout(RESPONSE_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| "response body timed out".to_string())?
        .map_err(|e| format!("response body: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("{path} answered {status}"));
    }
    Ok(info)
}
