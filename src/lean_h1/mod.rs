//! The lean HTTP/1.1 path: plain GETs served without hyper.
//!
//! An idle event stream is most of what an SSE proxy holds, and hyper keeps
//! two 8 KiB buffers per HTTP/1.1 connection for as long as it lives; and a
//! plain GET, the bulk of ordinary traffic, costs hyper's dispatch on both
//! sides. So request heads on a new HTTP/1.1 connection are read here. A
//! plain bodiless GET (see `request::sniff`) is forwarded, and its response
//! written by a small writer that holds no buffer between writes: an
//! EventSource request over an upstream connection of its own, any other
//! over the client connection's own upstream keep-alive connection, driven
//! by hand. Both heads are rewritten byte for byte, by the rules `headers`
//! applies to header maps elsewhere: the request head in `request`, the
//! response head in `upstream::dedicated`, so a plain GET builds no header
//! map, URI or `Request` (shared streams aside). The first other request,
//! together with the bytes already read and that upstream connection, is
//! handed to hyper, which serves the rest of the connection.

mod request;
mod response;
mod rewind;

use std::future::poll_fn;
use std::future::Future;
use std::io::{self, Write};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::BoxError;
use crate::proxy::{ConnInfo, LeanResponse, LeanTransport, Proxy, ProxyBody, Transport};
use crate::upstream::affine::AffineSlot;
pub use request::LeanRequest;
use request::{Forwarding, Sniffed};
use response::{Framing, WireBytes};
pub use rewind::Rewind;

/// Bytes a client may pipeline behind a streaming response before the
/// proxy stops reading from it.
const MAX_PIPELINED: usize = 64 * 1024;
/// First read size for a request head; a browser's usually fits.
const HEAD_READ_SIZE: usize = 2048;
/// Body bytes gathered into one write at most: one full TLS record.
const MAX_WRITE: usize = 16 * 1024;

/// The client connection, as the server hands it over.
pub type ClientTls = Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// How a connection goes on after the lean path.
pub enum Next {
    /// hyper serves the rest, starting with the bytes already read, over
    /// the client connection's upstream slot if the lean path made one.
    Hyper {
        io: Rewind<ClientTls>,
        slot: Option<Arc<AffineSlot>>,
    },
    /// The connection is finished.
    Closed,
}

/// Serves requests on an HTTP/1.1 connection (served by thread `worker`)
/// for as long as they are plain bodiless GETs, then hands the connection
/// to hyper. EventSource requests get an upstream connection of their own;
/// other GETs share the client connection's own upstream connection, made
/// on the first of them, which hyper then takes over.
///
/// This and `write_response` return `async move` blocks instead of being
/// `async fn`s: an `async fn` keeps a second copy of its arguments in its
/// state, and this state lives as long as the event stream.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn serve(mut io: ClientTls, client: &Client) -> impl Future<Output = Next> + Send + '_ {
    async move {
        // What the client sent beyond the request just served.
        let mut received = BytesMut::new();
        let mut slot = None;
        loop {
            let head = until_response_head(client, &mut slot, &mut io, received);
            let mut ready = match head.await {
                Head::Ready(ready) => ready,
                Head::ForHyper(prefix) => {
                    let io = Rewind::new(io, prefix);
                    return Next::Hyper { io, slot };
                }
                Head::Closed => return Next::Closed,
            };
            let written = write_response(&mut io, &mut ready).await;
            match written {
                Ok(Written::Complete)
                    if !ready.close && !client.proxy.shutdown_token().is_cancelled() =>
                {
                    received = std::mem::take(&mut ready.pipelined);
                }
                Ok(Written::Complete) => {
                    let _ = close_notify(&mut io).await;
                    return Next::Closed;
                }
                Ok(Written::ClientGone) => return Next::Closed,
                Ok(Written::Cut) => return Next::Closed,
                Err(err) => {
                    tracing::debug!(peer = %client.conn.peer, error = %err, "writing response failed");
                    return Next::Closed;
                }
            }
        }
    }
}

/// How one exchange got on up to the response head.
enum Head {
    /// A lean request, forwarded; its response is ready to write.
    Ready(Box<HeadReady>),
    /// Not a lean request: hyper serves it from these bytes on.
    ForHyper(Bytes),
    Closed,
}

struct HeadReady {
    /// The encoded head, then the bytes waiting to be written.
    out: Vec<u8>,
    framing: Framing,
    body: ProxyBody,
    /// The connection closes after this response.
    close: bool,
    /// What the client sent after its request.
    pipelined: BytesMut,
}

/// The client connection the lean path serves, and what serving it takes.
/// (Held by the connection's task and lent to the lean path, which then
/// keeps one reference instead of a copy of each.)
pub struct Client {
    pub proxy: Arc<Proxy>,
    pub conn: ConnInfo,
    pub header_read_timeout: Duration,
    /// The serving thread, whose parked upstream connections it may take.
    pub worker: usize,
}

/// Reads and sniffs the request head (`received` holds what was already
/// read), then forwards a lean request and encodes the response head. A
/// GET that is not an event stream goes over `slot`, the client
/// connection's upstream slot, made when first needed.
/// Returned boxed: this phase is large and short-lived, and an inline
/// future would size the task of every stream by it for as long as the
/// stream lives.
fn until_response_head<'a, IO>(
    client: &'a Client,
    slot: &'a mut Option<Arc<AffineSlot>>,
    io: &'a mut IO,
    received: BytesMut,
) -> Pin<Box<dyn Future<Output = Head> + Send + 'a>>
where
    IO: AsyncRead + Unpin + Send,
{
    let Client {
        proxy,
        conn,
        header_read_timeout,
        worker,
    } = client;
    Box::pin(async move {
        let mut buf = received;
        let forwarding = Forwarding {
            base_path: proxy.upstream_base_path(),
            client_ip: conn.peer.ip(),
            client_subject: conn.client_subject.as_deref(),
        };
        let read_head = read_head(io, &mut buf, &forwarding);
        let read = tokio::select! {
            read = tokio::time::timeout(*header_read_timeout, read_head) => read,
            // A connection without a request yet does not hold up a drain.
            () = proxy.shutdown_token().cancelled() => return Head::Closed,
        };
        let sniffed = match read {
            Ok(Ok(Some(sniffed))) => sniffed,
            Ok(Ok(None)) => return Head::Closed,
            Ok(Err(err)) => {
                tracing::debug!(peer = %conn.peer, error = %err, "reading request head failed");
                return Head::Closed;
            }
            Err(_) => {
                tracing::info!(peer = %conn.peer, "request headers not received in time; connection closed");
                return Head::Closed;
            }
        };
        let Sniffed::Lean(request) = sniffed else {
            return Head::ForHyper(buf.freeze());
        };
        // A shared stream's subscriber: the hub takes requests as `Request`s
        // (a subscription is made once, not per event).
        let shared = if proxy.is_shared(request.path()) {
            match request::http_request(&buf) {
                Some(shared) => Some(shared.map(|()| Empty::<Bytes>::new())),
                // Not expected (`sniff` checked what a `Request` needs), but
                // hyper would judge it the same way.
                None => return Head::ForHyper(buf.freeze()),
            }
        } else {
            None
        };
        // Whatever followed the head is the client's next request. Copied
        // (it is usually empty), so the head's buffer is freed, not kept alive.
        let mut pipelined = BytesMut::from(&buf[request.head_len..]);
        drop(buf);
        let keep_alive = request.keep_alive;

        let forwarding = match shared {
            Some(shared) => Either::Left(async move {
                let response = proxy.handle_over(shared, conn.clone(), Transport::Pooled);
                LeanResponse::Other(response.await)
            }),
            None => {
                // An event stream holds its upstream connection for as long
                // as it lasts, so it gets one of its own.
                let transport = if request.event_source {
                    LeanTransport::Dedicated
                } else {
                    let slot = slot.get_or_insert_with(|| proxy.affine_slot(*worker));
                    LeanTransport::Affine(slot.clone())
                };
                Either::Right(proxy.forward_lean(request, conn, transport))
            }
        };
        let forwarding = pin!(forwarding);
        // A client that leaves before the response head cancels the upstream request.
        let Some(response) = until_client_leaves(io, forwarding, &mut pipelined).await else {
            return Head::Closed;
        };
        let close = !keep_alive || proxy.shutdown_token().is_cancelled();
        let (out, framing, body) = match response {
            LeanResponse::Relayed { head, body } => response::encode_relayed(head, body, close),
            LeanResponse::Other(response) => response::encode(response, close),
        };
        Head::Ready(Box::new(HeadReady {
            out,
            framing,
            body,
            close,
            pipelined,
        }))
    })
}

impl HeadReady {
    /// Adds the body frames that are ready now, up to `MAX_WRITE` bytes
    /// waiting; Some once the body has ended.
    fn add_ready(&mut self, cx: &mut Context<'_>) -> Option<Written> {
        while self.out.len() < MAX_WRITE {
            let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) else {
                break;
            };
            if let Some(ended) = self.add(frame) {
                return Some(ended);
            }
        }
        None
    }

    /// Adds a body frame's bytes to those waiting to be written; Some once
    /// the body has ended.
    fn add(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Option<Written> {
        match response::wire_bytes(frame, self.framing) {
            WireBytes::Write(bytes) => {
                self.out.extend_from_slice(&bytes);
                None
            }
            WireBytes::Skip => None,
            WireBytes::End(last) => {
                self.out.extend_from_slice(last);
                Some(Written::Complete)
            }
            WireBytes::Failed(err) => {
                tracing::debug!(error = %err, "response body failed; connection cut");
                Some(Written::Cut)
            }
        }
    }
}

/// Runs `future` while keeping what the client pipelines; None if the client
/// closed (or failed) first.
async fn until_client_leaves<IO, F>(
    io: &mut IO,
    future: F,
    pipelined: &mut BytesMut,
) -> Option<F::Output>
where
    IO: AsyncRead + Unpin,
    F: Future + Unpin,
{
    let mut future = future;
    loop {
        tokio::select! {
            biased;
            output = &mut future => return Some(output),
            read = read_pipelined(io, pipelined), if pipelined.len() < MAX_PIPELINED => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Reads what the client sends into `pipelined`. The read goes through a
/// stack buffer, so an idle connection's `pipelined` holds no allocation
/// (`read_buf` would reserve one just to wait).
fn read_pipelined<'a, IO: AsyncRead + Unpin>(
    io: &'a mut IO,
    pipelined: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut buf = [0u8; 1024];
        let mut read = ReadBuf::new(&mut buf);
        std::task::ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        pipelined.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
}

/// Reads until the head is complete (or qualifies as hyper's). None: the
/// client closed before sending a request.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    forwarding: &Forwarding<'_>,
) -> io::Result<Option<Sniffed>> {
    loop {
        if !buf.is_empty() {
            match request::sniff(buf, forwarding) {
                Sniffed::Partial => {}
                sniffed => return Ok(Some(sniffed)),
            }
        }
        buf.reserve(HEAD_READ_SIZE);
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

enum Written {
    /// The whole response was written; the connection may carry another.
    Complete,
    /// The client closed its side (or failed) while the body streamed.
    ClientGone,
    /// The body failed after its head was sent: the connection must close
    /// without completing the body, so the client sees it is incomplete.
    Cut,
}

/// Writes head and body: the head and whatever the body has ready leave
/// together (a whole small response in one TLS record), then each frame as
/// it comes, with the frames that came with it, flushed at once, while the
/// writer watches the client for hang-ups and keeps what it pipelines.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_response<'a>(
    io: &'a mut ClientTls,
    ready: &'a mut HeadReady,
) -> impl Future<Output = io::Result<Written>> + Send + 'a {
    async move {
        let mut ended = (ready.framing == Framing::NoBody).then_some(Written::Complete);
        if ended.is_none() {
            ended = poll_fn(|cx| Poll::Ready(ready.add_ready(cx))).await;
        }
        // One await per step, and nothing held across more than one of them:
        // a value kept across several awaits keeps a slot in this state for
        // the stream's life.
        loop {
            if ready.close && matches!(ended, Some(Written::Complete)) {
                write_last(io, &ready.out).await?;
            } else {
                write_flushed(io, &ready.out).await?;
            }
            // Released, so an idle stream holds no buffer.
            ready.out = Vec::new();
            if let Some(ended) = ended {
                return Ok(ended);
            }
            let frame = until_client_leaves(io, ready.body.frame(), &mut ready.pipelined);
            match frame.await {
                None => return Ok(Written::ClientGone),
                Some(frame) => ended = ready.add(frame),
            }
            // Events that arrived together leave in one TLS record and one
            // write: a busy stream pays per read from the upstream, not per
            // event (a quiet one pays one more poll that finds nothing).
            if ended.is_none() {
                ended = poll_fn(|cx| Poll::Ready(ready.add_ready(cx))).await;
            }
        }
    }
}

/// Writes the last bytes of a connection with its close_notify behind
/// them, in one write instead of two.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_last<'a>(
    io: &'a mut ClientTls,
    bytes: &'a [u8],
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    async move {
        // What did not fit the send buffer (usually nothing) goes the
        // ordinary way, and the close_notify with the shutdown after it.
        let rest = buffer_with_close_notify(io, bytes);
        write_flushed(io, rest).await
    }
}

/// Sends close_notify (if the last response did not carry it already), so
/// the client knows nothing was cut. No shutdown(2) after it: the socket is
/// closed right after, and closing sends the FIN as well (a syscall fewer
/// per connection, which shows in handshakes/s).
async fn close_notify(io: &mut ClientTls) -> io::Result<()> {
    io.get_mut().1.send_close_notify();
    io.flush().await
}

/// Encrypts as much of `bytes` as the send buffer takes without writing
/// it, and if that is all of them, a close_notify after them. Returns the
/// rest.
fn buffer_with_close_notify<'b>(tls: &mut ClientTls, bytes: &'b [u8]) -> &'b [u8] {
    let connection = tls.get_mut().1;
    let mut rest = bytes;
    while !rest.is_empty() {
        match connection.writer().write(rest) {
            Ok(0) | Err(_) => return rest,
            Ok(n) => rest = &rest[n..],
        }
    }
    connection.send_close_notify();
    rest
}

/// Writes `bytes` and flushes them (one TLS record, sent at once).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_flushed<'a, IO>(
    io: &'a mut IO,
    bytes: &'a [u8],
) -> impl Future<Output = io::Result<()>> + Send + 'a
where
    IO: AsyncWrite + Unpin + Send,
{
    async move {
        io.write_all(bytes).await?;
        io.flush().await
    }
}
