//! Scripted plain-HTTP/1.1 upstreams and the bodies they answer with.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use ssegate::CancellationToken;

pub type TestBody = BoxBody<Bytes, Infallible>;

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

/// Binds 127.0.0.1:0 and hands every accepted connection (TCP_NODELAY set)
/// to `serve`, on a task of its own, until the handle is dropped.
pub async fn accept_loop<F, Fut>(serve: F) -> UpstreamHandle
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream binds");
    let addr = listener.local_addr().expect("upstream addr");
    let stop = CancellationToken::new();
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
            tokio::spawn(serve(tcp));
        }
    });
    UpstreamHandle { addr, stop }
}

/// Starts an upstream whose every request is answered by `handler`.
pub async fn spawn_upstream<F, Fut>(handler: F) -> UpstreamHandle
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    accept_loop(move |tcp| {
        let handler = handler.clone();
        async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await
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

/// A streaming body and the sender that writes into it. The receiver of the
/// returned oneshot completes when the body is dropped (connection closed).
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::channel(64);
    let (closed_tx, closed_rx) = oneshot::channel();
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

/// The exact text `write_event` produces for an event with one data line,
/// without the blank line that ends it (as `EventReader` reports it).
pub fn event_text(id: u64, event: &str, data: &str) -> String {
    format!("id: {id}\nevent: {event}\ndata: {data}")
}

// ---------------------------------------------------------------- controlled streams

/// One request an upstream received, answered at once with an event-stream
/// head; the test writes the body through `tx`.
pub struct UpstreamStream {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub tx: mpsc::Sender<Bytes>,
    /// Completes when the proxy let go of the upstream response.
    pub closed: oneshot::Receiver<()>,
}

impl UpstreamStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Writes raw bytes into the body; the proxy must still be reading it.
    pub async fn send(&self, bytes: &str) {
        self.tx
            .send(Bytes::from(bytes.to_owned()))
            .await
            .expect("the proxy still reads the upstream body");
    }

    /// True while the proxy still holds the upstream response.
    pub fn is_open(&mut self) -> bool {
        matches!(
            self.closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Answers `req` with an event-stream head of `content_type` and a body that
/// the returned `UpstreamStream` writes.
pub fn stream_response(
    req: &Request<Incoming>,
    content_type: &str,
) -> (UpstreamStream, Response<TestBody>) {
    let (tx, body, closed) = channel_body();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let stream = UpstreamStream {
        path_and_query,
        headers: req.headers().clone(),
        tx,
        closed,
    };
    (stream, sse_response(content_type, body))
}

/// An upstream that answers every request at once with headers of
/// `content_type` and hands each body's writer to the test.
pub async fn controlled_upstream(
    content_type: &'static str,
) -> (UpstreamHandle, mpsc::UnboundedReceiver<UpstreamStream>) {
    let (streams_tx, streams_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |req| {
        let (stream, response) = stream_response(&req, content_type);
        let _ = streams_tx.send(stream);
        async move { response }
    })
    .await;
    (upstream, streams_rx)
}
