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

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proxy::{ConnInfo, Proxy, ProxyBody, Transport};
use request::Sniffed;
use response::Framing;
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
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let reading = tokio::time::timeout(header_read_timeout, read_head(&mut io, &mut buf));
    // A connection without a request yet does not hold up a drain.
    let read = tokio::select! {
        read = reading => read,
        () = proxy.shutdown_token().cancelled() => return Next::Closed,
    };
    let sniffed = match read {
        Ok(Ok(Some(sniffed))) => sniffed,
        Ok(Ok(None)) => return Next::Closed,
        Ok(Err(err)) => {
            tracing::debug!(peer = %conn.peer, error = %err, "reading request head failed");
            return Next::Closed;
        }
        Err(_) => {
            tracing::info!(peer = %conn.peer, "request headers not received in time; connection closed");
            return Next::Closed;
        }
    };
    let Sniffed::EventSource {
        request,
        head_len,
        keep_alive,
    } = sniffed
    else {
        return Next::Hyper(Rewind::new(io, buf.freeze()));
    };
    // Whatever followed the head is the client's next request. Copied (it is
    // usually empty), so the head's buffer is freed rather than kept alive.
    let mut pipelined = BytesMut::from(&buf[head_len..]);
    drop(buf);

    // Boxed: the proxy's future is large and needed only until the response
    // head arrives, while this task lives as long as the stream.
    let request = bodiless(request);
    let handling = Box::pin(proxy.handle_over(request, conn.clone(), Transport::Dedicated));
    // A client that leaves before the response head cancels the upstream request.
    let Some(response) = until_client_leaves(&mut io, handling, &mut pipelined).await else {
        return Next::Closed;
    };
    let close = !keep_alive || proxy.shutdown_token().is_cancelled();
    match write_response(&mut io, response, close, &mut pipelined).await {
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

/// The request as the proxy takes it. A function, so the box is freed here
/// and not at the end of the (long-lived) caller.
fn bodiless(request: Box<Request<()>>) -> Request<Empty<Bytes>> {
    (*request).map(|()| Empty::new())
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
    F: std::future::Future + Unpin,
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
    response: Response<ProxyBody>,
    close: bool,
    pipelined: &mut BytesMut,
) -> io::Result<Written>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let framing = Framing::for_response(parts.status, &body.size_hint());
    let head = response::encode_head(&parts, framing, close);
    // The header map is not needed again; an idle stream should not keep it.
    drop(parts);
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
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: not relayed over HTTP/1.1
                };
                if data.is_empty() {
                    continue;
                }
                match framing {
                    Framing::Chunked => io.write_all(&response::encode_chunk(&data)).await?,
                    _ => io.write_all(&data).await?,
                }
                io.flush().await?;
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "response body failed; connection cut");
                return Ok(Written::Cut);
            }
            None => {
                if framing == Framing::Chunked {
                    io.write_all(response::LAST_CHUNK).await?;
                }
                io.flush().await?;
                return Ok(Written::Complete);
            }
        }
    }
}
