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
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
pub async fn serve_first_request<IO>(
    mut io: IO,
    proxy: &Arc<Proxy>,
    conn: &ConnInfo,
    header_read_timeout: Duration,
) -> Next<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ready = match until_response_head(&mut io, proxy, conn, header_read_timeout).await {
        Head::Ready(ready) => ready,
        Head::ForHyper(prefix) => return Next::Hyper(Rewind::new(io, prefix)),
        Head::Closed => return Next::Closed,
    };
    let HeadReady {
        head,
        framing,
        body,
        close,
        mut pipelined,
    } = *ready;
    match write_response(&mut io, head, framing, body, &mut pipelined).await {
        Ok(Written::Complete) if !close && !proxy.shutdown_token().is_cancelled() => {
            Next::Hyper(Rewind::new(io, pipelined.freeze()))
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
            read = io.read_buf(pipelined), if pipelined.len() < MAX_PIPELINED => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
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
async fn write_response<IO>(
    io: &mut IO,
    head: Vec<u8>,
    framing: Framing,
    mut body: ProxyBody,
    pipelined: &mut BytesMut,
) -> io::Result<Written>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&head).await?;
    drop(head);
    io.flush().await?;
    if framing == Framing::NoBody {
        return Ok(Written::Complete);
    }

    loop {
        let Some(frame) = until_client_leaves(io, body.frame(), pipelined).await else {
            return Ok(Written::ClientGone);
        };
        let bytes = match response::wire_bytes(frame, framing) {
            WireBytes::Write(bytes) => bytes,
            WireBytes::Skip => continue,
            WireBytes::End(last) => {
                io.write_all(last).await?;
                io.flush().await?;
                return Ok(Written::Complete);
            }
            WireBytes::Failed(err) => {
                tracing::debug!(error = %err, "response body failed; connection cut");
                return Ok(Written::Cut);
            }
        };
        io.write_all(&bytes).await?;
        io.flush().await?;
    }
}
