//! The upstream layer: one connection type (`UpstreamStream`: HTTP/1.1
//! over TCP, TLS or a Unix socket, driven by `exchange`, its body read by
//! `ResponseBody`) and one pool of keep-alive connections per serving
//! thread, used by HTTP/1.1 clients, HTTP/2 clients and shared streams
//! alike.
//!
//! `Upstream` is one target address; `Group` is the targets requests go to,
//! with a balancing policy and health, each target with its own `Upstream`.

pub mod body;
mod exchange;
mod group;
mod pool;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body::Body;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

pub use body::{ResponseBody, UpgradedConn};
pub use exchange::Limits;
use exchange::{exchange, ExchangeError, Exchanged};
pub use group::{Answer, Balance, Group, HealthCheck, Target};
pub use pool::Pool;
pub use stream::{Endpoint, UpstreamStream};

use crate::error::ProxyError;
use crate::http1::{Decoder, Framing};
use crate::message::ResponseHead;

/// What a client request's body may be: an HTTP/1.1 client's (read from
/// its connection as the upstream takes it), an HTTP/2 client's, or none.
pub trait RequestBody: Body<Data = Bytes, Error = ProxyError> + Send + Unpin {}
impl<B> RequestBody for B where B: Body<Data = Bytes, Error = ProxyError> + Send + Unpin {}

/// One upstream address and its idle connections.
#[derive(Debug)]
pub struct Upstream {
    endpoint: Endpoint,
    /// The client side of TLS, for an `https` endpoint.
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    limits: Limits,
    /// One pool per serving thread.
    pools: Vec<Arc<Pool>>,
}

/// How to reach an upstream and how long to wait for it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// TCP connect plus, for https, the TLS handshake.
    pub connect_timeout: Duration,
    /// Trust and ALPN for https targets, built once at start-up (None: no
    /// https target can be reached).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub limits: Limits,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub threads: usize,
}

/// A request on its way upstream: the head as `rules` wrote it, and the
/// body with its framing.
pub struct UpstreamRequest<'a, B> {
    pub method: &'a Method,
    pub head: Vec<u8>,
    pub body: Option<B>,
    pub framing: Framing,
    /// The request may be sent again on a new connection if a reused one
    /// fails before any response byte (see `rules::may_resend`).
    pub resendable: bool,
    /// How long to wait for the response head (the route's request timeout).
    pub response_timeout: Duration,
    /// The request asks to switch protocols (a WebSocket upgrade): a `101`
    /// answer is taken, and its connection comes back whole through
    /// `ResponseBody::into_upgraded`. Such a connection never returns to
    /// the pool, whatever the answer.
    pub upgrade: bool,
}

impl Upstream {
    pub fn new(endpoint: Endpoint, settings: &UpstreamSettings) -> Self {
        Upstream {
            endpoint,
            tls: settings.tls.clone(),
            connect_timeout: settings.connect_timeout,
            limits: settings.limits,
            pools: (0..settings.threads.max(1))
                .map(|_| Arc::new(Pool::new(settings.max_idle, settings.idle_timeout)))
                .collect(),
        }
    }

    /// The pool of serving thread `worker`.
    pub fn pool(&self, worker: usize) -> &Arc<Pool> {
        &self.pools[worker % self.pools.len()]
    }

    /// Sends `request` from serving thread `worker` and returns the
    /// response head and body. A reused connection that fails before any
    /// response byte is retried once on a new connection, if allowed.
    /// On an error that left the request unsent (or resendable), `request`
    /// still holds what it needs to go to another target.
    pub async fn send<B: RequestBody>(
        &self,
        worker: usize,
        request: &mut UpstreamRequest<'_, B>,
    ) -> Result<(ResponseHead, ResponseBody), TargetError> {
        let pool = self.pool(worker);
        if let Some(stream) = pool.take() {
            match self.exchange(stream, request).await {
                Ok(exchanged) => return Ok(self.response(exchanged, pool)),
                Err(ExchangeError::Unanswered(err)) if request.resendable => {
                    tracing::debug!(error = %err, "reused upstream connection closed; sending again");
                }
                Err(err) => return Err(TargetError::Failed(err.into())),
            }
        }
        let stream = self.connect().await.map_err(TargetError::Unreachable)?;
        match self.exchange(stream, request).await {
            Ok(exchanged) => Ok(self.response(exchanged, pool)),
            Err(ExchangeError::Unanswered(err)) => Err(TargetError::Unanswered(err)),
            Err(ExchangeError::Failed(err)) => Err(TargetError::Failed(err)),
        }
    }

    /// One exchange of `request` over `stream`. The head is kept for
    /// another attempt when the request may be sent again.
    async fn exchange<B: RequestBody>(
        &self,
        stream: UpstreamStream,
        request: &mut UpstreamRequest<'_, B>,
    ) -> Result<Exchanged, ExchangeError> {
        let head = if request.resendable {
            request.head.clone()
        } else {
            std::mem::take(&mut request.head)
        };
        let body = request.body.take();
        let limits = Limits {
            request_timeout: request.response_timeout,
            ..self.limits
        };
        exchange(
            stream,
            request.method,
            head,
            body,
            request.framing,
            limits,
            request.upgrade,
        )
        .await
    }

    /// A health check: `head` (a bodiless GET) on a new connection, which
    /// is closed after the response head. Returns the response's status.
    pub async fn probe(&self, head: Vec<u8>) -> Result<http::StatusCode, ProxyError> {
        let stream = self.connect().await?;
        let exchanged = exchange(
            stream,
            &Method::GET,
            head,
            None::<NoBody>,
            Framing::None,
            self.limits,
            false,
        )
        .await?;
        Ok(exchanged.response.head.status)
    }

    fn response(&self, exchanged: Exchanged, pool: &Arc<Pool>) -> (ResponseHead, ResponseBody) {
        let Exchanged {
            response,
            framing,
            buf,
            stream,
            reusable,
        } = exchanged;
        let decoder = Decoder::new(framing, self.limits.max_header_size);
        let recycle = reusable.then(|| pool.clone());
        (
            response.head,
            ResponseBody::new(stream, buf, decoder, recycle),
        )
    }

    /// A new connection to the endpoint, within the connect timeout (a TLS
    /// handshake included). Every connection, of requests, shared streams
    /// and health checks alike, is made here.
    async fn connect(&self) -> Result<UpstreamStream, ProxyError> {
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, self.open()).await {
            Ok(opened) => opened,
            Err(_) => Err(ProxyError::UpstreamConnect(format!(
                "connect to {} timed out after {timeout:?}",
                self.endpoint
            ))),
        }
    }

    async fn open(&self) -> Result<UpstreamStream, ProxyError> {
        match &self.endpoint {
            Endpoint::Tcp(address) => Ok(UpstreamStream::Tcp(tcp_connect(address).await?)),
            Endpoint::Tls { address, name } => {
                let Some(config) = &self.tls else {
                    return Err(ProxyError::UpstreamConnect(
                        "no TLS client configuration for an https target".into(),
                    ));
                };
                let tcp = tcp_connect(address).await?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| {
                        ProxyError::UpstreamConnect(format!(
                            "TLS handshake with {address} failed: {err}"
                        ))
                    })?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
            Endpoint::Unix(path) => match UnixStream::connect(path).await {
                Ok(unix) => Ok(UpstreamStream::Unix(unix)),
                Err(err) => Err(ProxyError::UpstreamConnect(format!(
                    "connect to {} failed: {err}",
                    self.endpoint
                ))),
            },
        }
    }
}

/// A TCP connection with TCP_NODELAY.
async fn tcp_connect(address: &str) -> Result<TcpStream, ProxyError> {
    let tcp = TcpStream::connect(address).await.map_err(|err| {
        ProxyError::UpstreamConnect(format!("tcp connect error ({address}): {err}"))
    })?;
    // Small event writes must not wait for Nagle's algorithm (40-200 ms).
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Why a target gave no response, which says whether the request may go
/// to another target.
#[derive(Debug)]
pub enum TargetError {
    /// No connection could be made: nothing was sent.
    Unreachable(ProxyError),
    /// A new connection was closed or reset before any response byte.
    Unanswered(ProxyError),
    /// Anything else (a timeout, a bad response): the target may have
    /// acted on the request.
    Failed(ProxyError),
}

impl From<TargetError> for ProxyError {
    fn from(err: TargetError) -> Self {
        match err {
            TargetError::Unreachable(err)
            | TargetError::Unanswered(err)
            | TargetError::Failed(err) => err,
        }
    }
}

/// The body of a request without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBody;

impl Body for NoBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ProxyError>>> {
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings() -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(5),
            tls: None,
            limits: Limits {
                request_timeout: Duration::from_secs(5),
                max_header_size: 64 * 1024,
            },
            max_idle: 4,
            idle_timeout: Duration::from_secs(60),
            threads: 1,
        }
    }

    async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        head
    }

    #[tokio::test]
    async fn an_event_stream_waiting_for_its_next_event_holds_no_read_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let head = read_head(&mut tcp).await;
            // Head, one event and the chunk's CRLF in one write, as Node sends them.
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nD\r\ndata: first\n\n\r\n")
                .await
                .unwrap();
            (tcp, head)
        });
        let upstream = Upstream::new(Endpoint::Tcp(addr.to_string()), &settings());
        let mut request = UpstreamRequest::<NoBody> {
            method: &Method::GET,
            head: b"GET /events HTTP/1.1\r\nhost: example.com\r\n\r\n".to_vec(),
            body: None,
            framing: Framing::None,
            resendable: true,
            response_timeout: Duration::from_secs(5),
            upgrade: false,
        };
        let (head, mut body) = upstream.send(0, &mut request).await.unwrap();
        assert_eq!(head.status, http::StatusCode::OK);
        let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(event, "data: first\n\n");
        drop(event);
        let waiting =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(waiting, "no second event was sent");
        assert_eq!(body.buffer_capacity(), 0, "idle body keeps a read buffer");
        let (_tcp, sent) = served.await.unwrap();
        assert_eq!(sent, b"GET /events HTTP/1.1\r\nhost: example.com\r\n\r\n");
    }

    #[tokio::test]
    async fn a_reused_connection_closed_by_the_upstream_is_retried_once_on_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            // First connection: one answer, then a close that the proxy only
            // learns of when it writes the next request.
            let (mut first, _) = listener.accept().await.unwrap();
            read_head(&mut first).await;
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none")
                .await
                .unwrap();
            let second_request = read_head(&mut first).await;
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let resent = read_head(&mut second).await;
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo")
                .await
                .unwrap();
            (second_request, resent)
        });
        let upstream = Upstream::new(Endpoint::Tcp(addr.to_string()), &settings());
        let get = |path: &str| UpstreamRequest::<NoBody> {
            method: &Method::GET,
            head: format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").into_bytes(),
            body: None,
            framing: Framing::None,
            resendable: true,
            response_timeout: Duration::from_secs(5),
            upgrade: false,
        };
        let (_, body) = upstream.send(0, &mut get("/one")).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "one");
        assert_eq!(upstream.pool(0).len(), 1, "kept after a complete body");
        let (_, body) = upstream.send(0, &mut get("/two")).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "two");
        let (second_request, resent) = served.await.unwrap();
        assert_eq!(second_request, resent);
    }
}
