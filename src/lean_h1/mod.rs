//! The lean HTTP/1.1 path for EventSource requests.
//!
//! An idle event stream is most of what an SSE proxy holds, and hyper keeps
//! two 8 KiB buffers per HTTP/1.1 connection for as long as it lives. So the
//! first request of a new HTTP/1.1 connection is read here: an EventSource
//! request (see `request::sniff`) is answered by a small writer that holds no
//! buffer between events; anything else, and whatever follows a finished
//! lean response on a keep-alive connection, is handed to hyper together with
//! the bytes already read.

mod request;
mod response;
mod rewind;

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy::{ConnInfo, Proxy, ProxyBody, Transport};
use request::Sniffed;
use response::{Framing, WireBytes};
pub use rewind::Rewind;

/// Bytes a client may pipeline behind a streaming response before the
/// proxy stops reading from it.
const MAX_PIPELINED: usize = 64 * 1024;
/// First read size for a request head; a browser's usually fits.
const HEAD_READ_SIZE: usize = 2048;

/// How a connection goes on after `serve_first_request`.
pub enum Next<IO> {
    /// hyper serves the rest, starting with the bytes already read.
    Hyper(Rewind<IO>),
    /// The connection is finished.
    Closed,
}

/// Reads the first request head; serves it here if it is an EventSource
/// request, else hands it to hyper.
///
/// This and `write_response` return `async move` blocks instead of being
/// `async fn`s: an `async fn` keeps a second copy of its arguments in its
/// state, and this state lives as long as the event stream.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn serve_first_request<'a, IO>(
    mut io: IO,
    proxy: &'a Arc<Proxy>,
    conn: &'a ConnInfo,
    header_read_timeout: Duration,
) -> impl Future<Output = Next<IO>> + Send + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    async move {
        let mut ready = match until_response_head(&mut io, proxy, conn, header_read_timeout).await {
            Head::Ready(ready) => ready,
            Head::ForHyper(prefix) => return Next::Hyper(Rewind::new(io, prefix)),
            Head::Closed => return Next::Closed,
        };
        let written = write_response(&mut io, &mut ready).await;
        match written {
            Ok(Written::Complete) if !ready.close && !proxy.shutdown_token().is_cancelled() => {
                Next::Hyper(Rewind::new(io, ready.pipelined.split().freeze()))
            }
            Ok(Written::Complete) => {
                // close_notify, so the client knows nothing was cut.
                let _ = io.shutdown().await;
                Next::Closed
            }
            Ok(Written::ClientGone) => Next::Closed,
            Ok(Written::Cut) => Next::Closed,
            Err(err) => {
                tracing::debug!(peer = %conn.peer, error = %err, "writing response failed");
                Next::Closed
            }
        }
    }
}

/// How the first exchange got on up to the response head.
enum Head {
    /// An EventSource request, forwarded; its response is ready to write.
    Ready(Box<HeadReady>),
    /// Not an EventSource request: hyper serves it from these bytes on.
    ForHyper(Bytes),
    Closed,
}

struct HeadReady {
    head: Vec<u8>,
    framing: Framing,
    body: ProxyBody,
    /// The connection closes after this response.
    close: bool,
    /// What the client sent after its request.
    pipelined: BytesMut,
}

/// Reads and sniffs the request head, then forwards an EventSource request
/// and encodes the response head. Returned boxed: this phase is large and
/// short-lived, and an inline future would size the task of every stream by
/// it for as long as the stream lives.
fn until_response_head<'a, IO>(
    io: &'a mut IO,
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    header_read_timeout: Duration,
) -> Pin<Box<dyn Future<Output = Head> + Send + 'a>>
where
    IO: AsyncRead + Unpin + Send,
{
    Box::pin(async move {
        let mut buf = BytesMut::new();
        let read = tokio::select! {
            read = tokio::time::timeout(header_read_timeout, read_head(io, &mut buf)) => read,
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
        let Sniffed::EventSource {
            request,
            head_len,
            keep_alive,
        } = sniffed
        else {
            return Head::ForHyper(buf.freeze());
        };
        // Whatever followed the head is the client's next request. Copied (it
        // is usually empty), so the head's buffer is freed, not kept alive.
        let mut pipelined = BytesMut::from(&buf[head_len..]);
        drop(buf);

        let request = (*request).map(|()| Empty::<Bytes>::new());
        let forwarding = pin!(proxy.handle_over(request, conn.clone(), Transport::Dedicated));
        // A client that leaves before the response head cancels the upstream request.
        let Some(response) = until_client_leaves(io, forwarding, &mut pipelined).await else {
            return Head::Closed;
        };
        let close = !keep_alive || proxy.shutdown_token().is_cancelled();
        let (head, framing, body) = response::encode(response, close);
        Head::Ready(Box::new(HeadReady {
            head,
            framing,
            body,
            close,
            pipelined,
        }))
    })
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
) -> io::Result<Option<Sniffed>> {
    loop {
        if !buf.is_empty() {
            match request::sniff(buf) {
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

/// Writes head and body, each body frame as it comes (one chunk, one TLS
/// record, flushed at once), while watching the client for hang-ups and
/// keeping what it pipelines.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_response<'a, IO>(
    io: &'a mut IO,
    ready: &'a mut HeadReady,
) -> impl Future<Output = io::Result<Written>> + Send + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        write_flushed(io, &ready.head).await?;
        ready.head = Vec::new();
        if ready.framing == Framing::NoBody {
            return Ok(Written::Complete);
        }
        // One await per step, and nothing held across more than one of them:
        // a value kept across several awaits keeps a slot in this state for
        // the stream's life.
        loop {
            let (bytes, last) = {
                let frame = until_client_leaves(io, ready.body.frame(), &mut ready.pipelined);
                let wire = match frame.await {
                    None => return Ok(Written::ClientGone),
                    Some(frame) => response::wire_bytes(frame, ready.framing),
                };
                match wire {
                    WireBytes::Write(bytes) => (bytes, false),
                    WireBytes::Skip => continue,
                    WireBytes::End(last) => (Bytes::from_static(last), true),
                    WireBytes::Failed(err) => {
                        tracing::debug!(error = %err, "response body failed; connection cut");
                        return Ok(Written::Cut);
                    }
                }
            };
            write_flushed(io, &bytes).await?;
            if last {
                return Ok(Written::Complete);
            }
        }
    }
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
