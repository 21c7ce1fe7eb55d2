//! Shared test harness: an in-process proxy, scripted upstreams and TLS
//! clients, all on real sockets at 127.0.0.1:0. Everything stops on Drop.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use ssegate::config::{Config, UpstreamUrl};
use ssegate::tls::{self, CertPair, CertStore};
use ssegate::{CancellationToken, Server};

pub type TestBody = BoxBody<Bytes, Infallible>;

/// Path of a file in the repository (certs/, ...).
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn dev_cert_pair() -> CertPair {
    CertPair {
        cert: repo_path("certs/localhost.pem"),
        key: repo_path("certs/localhost-key.pem"),
    }
}

/// Logs to the test's output when RUST_LOG is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

// ---------------------------------------------------------------- proxy

/// A running proxy; cancelled (and awaited in the background) on Drop.
pub struct ProxyHandle {
    pub addr: SocketAddr,
    pub hub: Arc<ssegate::sse::hub::Hub>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Starts a graceful shutdown and waits until `run` has returned.
    pub async fn shutdown_and_wait(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config for a proxy in front of `upstream`, with the dev certificate and
/// default timeouts; adjust fields before passing it to `spawn_proxy_with`.
pub fn proxy_config(upstream: SocketAddr) -> Config {
    let key = tls::load_certified_key(&dev_cert_pair()).expect("dev certificate loads");
    let tls = tls::server_config(CertStore::new(key)).expect("server config");
    let upstream = UpstreamUrl::parse(&format!("http://{upstream}")).expect("upstream url");
    Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), tls, upstream)
}

pub async fn spawn_proxy(upstream: SocketAddr) -> ProxyHandle {
    spawn_proxy_with(proxy_config(upstream)).await
}

pub async fn spawn_proxy_with(config: Config) -> ProxyHandle {
    init_tracing();
    let server = Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr();
    let hub = server.hub();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    ProxyHandle {
        addr,
        hub,
        shutdown,
        task: Some(task),
    }
}

// ---------------------------------------------------------------- upstream

/// A scripted plain-HTTP/1.1 upstream; stops accepting on Drop.
pub struct UpstreamHandle {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts an upstream whose every request is answered by `handler`.
pub async fn spawn_upstream<F, Fut>(handler: F) -> UpstreamHandle
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream binds");
    let addr = listener.local_addr().expect("upstream addr");
    let stop = CancellationToken::new();
    let handler = Arc::new(handler);
    let stop_accepting = stop.clone();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                () = stop_accepting.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    UpstreamHandle { addr, stop }
}

/// An address where nothing listens: bound, then closed.
pub async fn dead_upstream_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

pub fn empty_body() -> TestBody {
    Empty::new().boxed()
}

/// A body fed by a channel, one frame per message, like Express' `res.write`.
/// It also reports, through `closed`, when the proxy dropped it (client gone).
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(());
        }
    }
}

/// A streaming body and the sender that writes into it. The receiver of the
/// returned oneshot completes when the body is dropped (connection closed).
pub fn channel_body() -> (
    mpsc::Sender<Bytes>,
    TestBody,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let body = ChannelBody {
        rx,
        closed: Some(closed_tx),
    };
    (tx, body.boxed(), closed_rx)
}

/// An event-stream response with Express' headers (including the
/// hop-by-hop `Connection: keep-alive` that must not reach h2 clients).
pub fn sse_response(content_type: &str, body: TestBody) -> Response<TestBody> {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("connection", "keep-alive")
        .body(body)
        .expect("valid response")
}

/// Writes one event the way Express apps do: one write per line.
pub async fn write_event(
    tx: &mpsc::Sender<Bytes>,
    id: u64,
    event: &str,
    data_lines: &[&str],
) -> bool {
    let mut lines = vec![format!("id: {id}\n"), format!("event: {event}\n")];
    for line in data_lines {
        lines.push(format!("data: {line}\n"));
    }
    lines.push("\n".to_owned());
    for line in lines {
        if tx.send(Bytes::from(line)).await.is_err() {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------- clients

/// A rustls client config that trusts the dev certificate, with the given ALPN.
pub fn client_tls_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(repo_path("certs/localhost.pem")).expect("read dev cert")
    {
        roots
            .add(cert.expect("dev cert parses"))
            .expect("dev cert is a usable root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to the proxy as `localhost`.
pub async fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect to proxy");
    tcp.set_nodelay(true).expect("nodelay");
    TlsConnector::from(client_tls_config(alpn))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with proxy")
}

pub type H1Sender = hyper::client::conn::http1::SendRequest<TestBody>;
pub type H2Sender = hyper::client::conn::http2::SendRequest<TestBody>;

/// An HTTP/1.1 connection over TLS (ALPN http/1.1).
pub async fn h1_client(addr: SocketAddr) -> H1Sender {
    let tls = tls_connect(addr, &[b"http/1.1"]).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 connection over TLS (ALPN h2).
pub async fn h2_client(addr: SocketAddr) -> H2Sender {
    let tls = tls_connect(addr, &[b"h2"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN must pick h2"
    );
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A GET for `path` with Host `localhost` (h1) or authority `localhost` (h2).
pub fn get(path: &str, version: http::Version) -> Request<TestBody> {
    let builder = Request::builder().method("GET").version(version);
    let builder = if version == http::Version::HTTP_2 {
        builder.uri(format!("https://localhost{path}"))
    } else {
        builder.uri(path).header("host", "localhost")
    };
    builder.body(empty_body()).expect("valid request")
}

/// Reads a whole response body.
pub async fn read_body(body: Incoming) -> Bytes {
    body.collect().await.expect("body").to_bytes()
}

/// Reads an event-stream body frame by frame and splits it into events
/// (blank-line separated), recording when each complete event arrived.
pub struct EventReader {
    body: Incoming,
    buffer: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub text: String,
    pub at: tokio::time::Instant,
    /// How many complete events arrived in the same read as this one.
    pub batch: usize,
}

impl EventReader {
    pub fn new(body: Incoming) -> Self {
        EventReader {
            body,
            buffer: Vec::new(),
        }
    }

    /// The next complete event (the text before its blank line), or None at
    /// the end of the stream. Gives up after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Option<ReceivedEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending: Vec<ReceivedEvent> = Vec::new();
        loop {
            if let Some(event) = self.take_event(tokio::time::Instant::now(), 1) {
                pending.push(event);
                return pending.pop();
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            let frame = frame.ok()?;
            if let Some(data) = frame.data_ref() {
                self.buffer.extend_from_slice(data);
            }
        }
    }

    /// Reads frames until `count` events have arrived; each records how many
    /// events completed in the same frame, so batching shows.
    pub async fn events(&mut self, count: usize, limit: Duration) -> Vec<ReceivedEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        while out.len() < count {
            let now = tokio::time::Instant::now();
            let mut batch = Vec::new();
            while let Some(event) = self.take_event(now, 0) {
                batch.push(event);
            }
            let n = batch.len();
            out.extend(batch.into_iter().map(|mut e| {
                e.batch = n;
                e
            }));
            if out.len() >= count {
                break;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        out
    }

    fn take_event(&mut self, at: tokio::time::Instant, batch: usize) -> Option<ReceivedEvent> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let text = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 2);
        Some(ReceivedEvent { text, at, batch })
    }

    /// Waits for the end of the stream; true if it ended cleanly.
    pub async fn wait_end(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(None) => return true,
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
    }

    pub fn leftover(&self) -> &[u8] {
        &self.buffer
    }
}
