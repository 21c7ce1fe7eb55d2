//! Clients of the proxy: rustls over TCP, with hyper's HTTP/1.1 and HTTP/2
//! on top, and the requests (and request bodies) they send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{dev_cert_path, WAIT_LIMIT};

// ---------------------------------------------------------------- request bodies

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

pub fn empty_body() -> TestBody {
    Empty::new().boxed()
}

/// A request body fed by a channel, one frame per message. It also
/// reports, through `closed`, when the client let go of it.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    closed: Option<oneshot::Sender<()>>,
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

/// A streaming request body and the sender that writes into it. The
/// receiver of the returned oneshot completes when the body is dropped.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::channel(64);
    let (closed_tx, closed_rx) = oneshot::channel();
    let body = ChannelBody {
        rx,
        closed: Some(closed_tx),
    };
    (tx, body.boxed(), closed_rx)
}

// ---------------------------------------------------------------- connections

/// A rustls client config that trusts the dev certificate, with the given ALPN.
pub fn client_tls_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_tls_config_trusting(&dev_cert_path(), alpn)
}

/// A rustls client config that trusts only the certificates in the PEM file
/// `ca`, with the given ALPN.
pub fn client_tls_config_trusting(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .unwrap_or_else(|e| panic!("read CA file {}: {e}", ca.display()))
    {
        roots
            .add(cert.expect("CA parses"))
            .expect("CA is a usable root");
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

/// A request for `path` on `host`: Host header on h1, :authority on h2.
pub fn request(version: Version, method: &str, host: &str, path: &str) -> http::request::Builder {
    let builder = Request::builder().method(method).version(version);
    if version == Version::HTTP_2 {
        builder.uri(format!("https://{host}{path}"))
    } else {
        builder.uri(path).header("host", host)
    }
}

/// A GET for `path` with Host `localhost` (h1) or authority `localhost` (h2).
pub fn get(path: &str, version: Version) -> Request<TestBody> {
    request(version, "GET", "localhost", path)
        .body(empty_body())
        .expect("valid request")
}

/// One GET on a fresh connection of its own; the connection lives on in the
/// background for as long as the response body is read.
pub async fn get_once(addr: SocketAddr, path: &str, version: Version) -> Response<Incoming> {
    match version {
        Version::HTTP_2 => h2_client(addr).await.send_request(get(path, version)).await,
        _ => h1_client(addr).await.send_request(get(path, version)).await,
    }
    .expect("response")
}

/// An HTTP/1.1 connection whose connection task is owned: it can be watched
/// for its end, and it ends (TCP closed) on Drop.
pub struct H1Connection {
    pub sender: H1Sender,
    pub conn: JoinHandle<()>,
}

impl Drop for H1Connection {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One client of the proxy: its own HTTP/1.1 connection, or a handle on a
/// (possibly shared) HTTP/2 connection.
pub enum Client {
    H1(H1Connection),
    H2(H2Sender),
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Self {
        let tls = tls_connect(addr, &[b"http/1.1"]).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client::H1(H1Connection { sender, conn })
    }

    pub async fn connect(addr: SocketAddr, version: Version) -> Self {
        match version {
            Version::HTTP_2 => Client::H2(h2_client(addr).await),
            _ => Client::h1(addr).await,
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Client::H1(_) => Version::HTTP_11,
            Client::H2(_) => Version::HTTP_2,
        }
    }

    /// Sends `req` once the connection is ready; fails unless the response
    /// head arrives within `WAIT_LIMIT`.
    pub async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        let response = async {
            match self {
                Client::H1(h1) => {
                    h1.sender.ready().await?;
                    h1.sender.send_request(req).await
                }
                Client::H2(sender) => {
                    sender.ready().await?;
                    sender.send_request(req).await
                }
            }
        };
        tokio::time::timeout(WAIT_LIMIT, response)
            .await
            .expect("response in time")
            .expect("response")
    }

    /// A GET for `path` with extra request `headers`, or the error of a
    /// connection that takes no more requests.
    pub async fn try_get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Result<Response<Incoming>> {
        let mut request = get(path, self.version());
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        match self {
            Client::H1(h1) => {
                h1.sender.ready().await?;
                h1.sender.send_request(request).await
            }
            Client::H2(sender) => sender.send_request(request).await,
        }
    }

    pub async fn try_get(&mut self, path: &str) -> hyper::Result<Response<Incoming>> {
        self.try_get_with(path, &[]).await
    }

    /// Like `try_get_with`, failing on an error. Unlike `send`, it has no
    /// time limit of its own: the tests bound the waits that matter to them.
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
        self.try_get_with(path, headers).await.expect("response")
    }

    pub async fn get(&mut self, path: &str) -> Response<Incoming> {
        self.get_with(path, &[]).await
    }
}
