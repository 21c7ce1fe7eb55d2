//! HTTP/1.1 client connections, served by ssegate's own code for their
//! whole life: heads parsed and written by `http1::head`, bodies framed by
//! `http1::body`, the same modules the upstream side uses.
//!
//! An idle event stream is most of what an SSE proxy holds, so a waiting
//! connection holds no buffer: the head's buffer is released once it is
//! parsed, the response is written as frames arrive and its buffer freed
//! after each write, and the client is watched for hang-ups through a
//! small stack buffer.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::ClientIo;
use crate::error::{BoxError, ProxyError};
use crate::http1::body::{keeps_alive, list_elements, push_chunk, request_framing, LAST_CHUNK};
use crate::http1::head::{parse_request, push_decimal, push_field, push_status_line, HeadError};
use crate::http1::{Decoder, Framing};
use crate::message::ResponseHead;
use crate::proxy::{ConnInfo, Proxy, ProxyBody, ProxyResponse};
use crate::upstream::NoBody;
use crate::websocket::Tunnel;

/// First read size for a request head; a browser's usually fits.
const HEAD_READ_SIZE: usize = 2048;
/// Bytes read at once from a request body.
const BODY_READ_SIZE: usize = 8 * 1024;
/// Bytes a client may pipeline behind a response before the proxy stops
/// reading from it.
const MAX_PIPELINED: usize = 64 * 1024;
/// Body bytes gathered into one write at most: one full TLS record.
const MAX_WRITE: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// After refusing a request whose rest the client may still be sending,
/// how long and how much to read before closing: closing with unread
/// bytes would reset the connection and could destroy the response before
/// the client reads it (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// What an HTTP/1.1 connection needs besides the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
}

/// Serves requests on `io` until the client closes, an error, or shutdown.
///
/// Returns an `async move` block rather than being an `async fn`: an
/// `async fn` keeps a second copy of its arguments in its state, and this
/// state lives as long as the connection.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub fn serve<'a>(
    io: &'a mut ClientIo,
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    settings: Settings,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        // Bytes received and not yet used: the next request's start.
        let mut buf = BytesMut::new();
        loop {
            let Some(exchange) = next_exchange(io, &mut buf, proxy, conn, settings).await else {
                return;
            };
            let Exchange {
                mut response,
                no_body,
                version,
                mut close,
                linger,
            } = *exchange;
            if let Some(tunnel) = response.websocket.take() {
                // The connection is the WebSocket's from here on.
                return run_websocket(io, &mut buf, &response.head, *tunnel).await;
            }
            close |= proxy.shutdown_token().is_cancelled();
            let written = write_response(io, &mut buf, response, no_body, version, close).await;
            match written {
                Written::Complete if !close => {}
                Written::Complete => {
                    let _ = close_notify(io).await;
                    if linger {
                        let _ = tokio::time::timeout(LINGER_TIME, discard_input(io)).await;
                    }
                    return;
                }
                Written::ClientGone | Written::Cut => return,
            }
        }
    }
}

/// Writes the `101` and runs the WebSocket on the connection until it
/// ends. Bytes the client sent behind its request head go upstream first.
/// Boxed, as the other long-lived phases are.
fn run_websocket<'a>(
    io: &'a mut ClientIo,
    buf: &mut BytesMut,
    head: &ResponseHead,
    tunnel: Tunnel,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let out = encode_head(head, Delimit::NoBody, false);
    let client_ahead = buf.split().freeze();
    Box::pin(async move {
        if let Err(err) = write_flushed(io, &out).await {
            tracing::debug!(error = %err, "writing the 101 failed");
            return;
        }
        tunnel.run(io, client_ahead).await;
    })
}

/// A response ready to write, and how.
struct Exchange {
    response: ProxyResponse,
    /// The response carries no body (HEAD, 204, 304).
    no_body: bool,
    version: Version,
    /// The connection closes after this response.
    close: bool,
    /// Read what the client still sends before closing (see `LINGER_TIME`).
    linger: bool,
}

/// Reads a request and gets its response from the proxy. None: the
/// connection is done (closed, timed out, shutdown, or an error response
/// could not be written).
///
/// Returned boxed: this phase is large and short-lived, and an inline
/// future would size the task of every stream by it for as long as the
/// stream lives.
fn next_exchange<'a>(
    io: &'a mut ClientIo,
    buf: &'a mut BytesMut,
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    settings: Settings,
) -> Pin<Box<dyn Future<Output = Option<Box<Exchange>>> + Send + 'a>> {
    Box::pin(async move {
        let read = tokio::select! {
            read = tokio::time::timeout(settings.header_read_timeout, read_head(io, buf, settings.max_header_size)) => read,
            // A connection between requests does not hold up a drain.
            () = proxy.shutdown_token().cancelled(), if buf.is_empty() => return None,
        };
        let head = match read {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return None,
            Ok(Err(ReadError::Io(err))) => {
                tracing::debug!(peer = %conn.peer, error = %err, "reading request head failed");
                return None;
            }
            Ok(Err(ReadError::Head(err))) => {
                tracing::warn!(peer = %conn.peer, error = %err, "bad request head; connection closed");
                let err = match err {
                    HeadError::TooLarge(limit) => ProxyError::HeadersTooLarge(limit),
                    HeadError::TooManyFields => {
                        ProxyError::HeadersTooLarge(settings.max_header_size)
                    }
                    HeadError::Malformed(reason) => ProxyError::BadRequest(reason),
                };
                return Some(refused(proxy, &err));
            }
            Err(_) => {
                tracing::info!(peer = %conn.peer, "request headers not received in time; connection closed");
                return None;
            }
        };
        // What follows the head (usually nothing) is copied out, so the
        // read buffer does not stay behind while the request is served.
        *buf = BytesMut::from(&buf[..]);
        let framing = match request_framing(head.version, &head.fields) {
            Ok(framing) => framing,
            Err(err) => {
                tracing::warn!(peer = %conn.peer, error = %err, "request body framing refused");
                return Some(refused(
                    proxy,
                    &ProxyError::BadRequest("invalid request body framing"),
                ));
            }
        };
        let version = head.version;
        let keep_alive = keeps_alive(version, &head.fields);
        let method = head.method.clone();
        let expects_continue = version == Version::HTTP_11
            && head
                .fields
                .get_all("expect")
                .flat_map(list_elements)
                .any(|e| e.eq_ignore_ascii_case(b"100-continue"));

        let (response, body_read) = if framing == Framing::None {
            // Watch the client while the upstream answers: one that leaves
            // cancels the request.
            let handle = Box::pin(proxy.handle(head, NoBody, conn));
            (until_client_leaves(io, buf, handle).await?, true)
        } else {
            let mut state = BodyState::Reading;
            let mut body = ClientBody {
                io: &mut *io,
                buf: &mut *buf,
                decoder: Decoder::new(framing, settings.max_header_size),
                ready: VecDeque::new(),
                continue_left: if expects_continue { CONTINUE.len() } else { 0 },
                state: &mut state,
            };
            // A malformed chunk already received is refused before anything
            // goes upstream.
            if let Err(err) = body.decode_received() {
                drop(body);
                tracing::warn!(peer = %conn.peer, error = %err, "malformed request body");
                return Some(refused(proxy, &err));
            }
            let response = Box::pin(proxy.handle(head, body, conn)).await;
            (response, state == BodyState::Done)
        };
        let no_body = method == Method::HEAD
            || response.head.status.is_informational()
            || response.head.status == StatusCode::NO_CONTENT
            || response.head.status == StatusCode::NOT_MODIFIED;
        // A body the upstream did not take leaves the connection somewhere
        // inside it: close rather than read on.
        let close = !keep_alive || !body_read || response.client_error;
        Some(Box::new(Exchange {
            response,
            no_body,
            version,
            close,
            linger: !body_read,
        }))
    })
}

/// An error response, after which the connection closes.
fn refused(proxy: &Proxy, err: &ProxyError) -> Box<Exchange> {
    Box::new(Exchange {
        response: proxy.error_response(err),
        no_body: false,
        version: Version::HTTP_11,
        close: true,
        linger: true,
    })
}

/// Reads and drops what the client sends, up to `LINGER_BYTES`, until it
/// closes. The sink lives on the stack of each poll: an array held across
/// an await would size every connection's future by it.
async fn discard_input(io: &mut ClientIo) {
    let mut left = LINGER_BYTES;
    poll_fn(|cx| {
        let mut sink = [0u8; 4096];
        while left > 0 {
            let mut read = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => {
                    left = left.saturating_sub(read.filled().len());
                }
                Ok(()) | Err(_) => break,
            }
        }
        Poll::Ready(())
    })
    .await;
}

enum ReadError {
    Io(io::Error),
    Head(HeadError),
}

/// Reads until a request head is complete. None: the client closed
/// before sending one.
async fn read_head(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    max_header_size: usize,
) -> Result<Option<crate::message::RequestHead>, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_request(buf, max_header_size).map_err(ReadError::Head)? {
                return Ok(Some(head));
            }
        }
        buf.reserve(HEAD_READ_SIZE);
        match io.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(err) => return Err(ReadError::Io(err)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Reading,
    Done,
    Failed,
}

/// A request body, read from the client connection as the upstream takes
/// it and decoded strictly: a chunk that fails to parse is never passed on.
struct ClientBody<'a> {
    io: &'a mut ClientIo,
    buf: &'a mut BytesMut,
    decoder: Decoder,
    /// Data decoded from bytes received with the head.
    ready: VecDeque<Bytes>,
    /// Bytes of `100 Continue` still to write before reading from the client.
    continue_left: usize,
    /// Where the body's end (or failure) is recorded for the connection.
    state: &'a mut BodyState,
}

impl ClientBody<'_> {
    /// Decodes what was received with the head, so its errors are found
    /// before the request is forwarded.
    fn decode_received(&mut self) -> Result<(), ProxyError> {
        loop {
            match self.decoder.decode(self.buf) {
                Ok(Some(data)) => self.ready.push_back(data),
                Ok(None) => break,
                Err(err) => {
                    *self.state = BodyState::Failed;
                    return Err(ProxyError::ClientBody(err.to_string()));
                }
            }
        }
        if self.decoder.is_done() {
            *self.state = BodyState::Done;
            // Nothing more will be read from the client for this body.
            self.continue_left = 0;
        }
        Ok(())
    }

    fn fail(&mut self, reason: String) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        *self.state = BodyState::Failed;
        Poll::Ready(Some(Err(ProxyError::ClientBody(reason))))
    }
}

impl Body for ClientBody<'_> {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            if *this.state == BodyState::Failed {
                return Poll::Ready(None);
            }
            match this.decoder.decode(this.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.decoder.is_done() => {
                    *this.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(err) => return this.fail(err.to_string()),
            }
            // The client waits for this before it sends the body.
            while this.continue_left > 0 {
                let sent = CONTINUE.len() - this.continue_left;
                match ready!(Pin::new(&mut *this.io).poll_write(cx, &CONTINUE[sent..])) {
                    Ok(n) => this.continue_left -= n.min(this.continue_left),
                    Err(err) => return this.fail(err.to_string()),
                }
                if this.continue_left == 0 {
                    if let Err(err) = ready!(Pin::new(&mut *this.io).poll_flush(cx)) {
                        return this.fail(err.to_string());
                    }
                }
            }
            this.buf.reserve(BODY_READ_SIZE);
            match ready!(poll_read_buf(Pin::new(&mut *this.io), cx, this.buf)) {
                Ok(0) => return this.fail("client closed before the body was complete".into()),
                Ok(_) => {}
                Err(err) => return this.fail(err.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let ready: u64 = self.ready.iter().map(|data| data.len() as u64).sum();
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left + ready),
            None => SizeHint::default(),
        }
    }
}

/// Runs `future` while reading what the client pipelines into `buf`; None
/// if the client closed (or failed) first.
async fn until_client_leaves<F>(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    future: F,
) -> Option<F::Output>
where
    F: Future + Unpin,
{
    let mut future = future;
    loop {
        tokio::select! {
            biased;
            output = &mut future => return Some(output),
            read = read_pipelined(io, buf), if buf.len() < MAX_PIPELINED => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Reads what the client sends into `buf`, through a stack buffer, so an
/// idle connection holds no allocation (`read_buf` would reserve one just
/// to wait).
fn read_pipelined<'a>(
    io: &'a mut ClientIo,
    buf: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + 'a {
    poll_fn(move |cx| {
        let mut stack = [0u8; 1024];
        let mut read = ReadBuf::new(&mut stack);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
}

/// How the response body is delimited toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimit {
    NoBody,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, length unknown: the connection's close ends it.
    Close,
}

enum Written {
    /// The whole response was written; the connection may carry another.
    Complete,
    /// The client closed (or failed, or stopped reading) while the body streamed.
    ClientGone,
    /// The body failed after its head was sent: the connection closes
    /// without completing the body, so the client sees it is incomplete.
    Cut,
}

/// Writes head and body: the head and whatever the body has ready leave
/// together (a whole small response in one TLS record), then each frame as
/// it comes, with the frames that came with it, flushed at once, while the
/// client is watched for hang-ups and what it pipelines is kept.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_response<'a>(
    io: &'a mut ClientIo,
    buf: &'a mut BytesMut,
    response: ProxyResponse,
    no_body: bool,
    version: Version,
    close: bool,
) -> impl Future<Output = Written> + Send + 'a {
    async move {
        let ProxyResponse { head, mut body, .. } = response;
        let delimit = match body.size_hint().exact() {
            _ if no_body => Delimit::NoBody,
            Some(len) => Delimit::Length(len),
            None if version == Version::HTTP_11 => Delimit::Chunked,
            None => Delimit::Close,
        };
        let close = close || delimit == Delimit::Close;
        let mut out = encode_head(&head, delimit, close);
        drop(head);
        let mut ended = match delimit {
            Delimit::NoBody => Some(Written::Complete),
            _ => poll_fn(|cx| Poll::Ready(add_ready(&mut out, &mut body, delimit, cx))).await,
        };
        // One await per step, and nothing held across more than one of
        // them: a value kept across several awaits keeps a slot in this
        // state for the stream's life.
        loop {
            let write = if close && matches!(ended, Some(Written::Complete)) {
                write_last(io, &out).await
            } else {
                write_flushed(io, &out).await
            };
            if let Err(err) = write {
                tracing::debug!(error = %err, "writing the response failed");
                return Written::ClientGone;
            }
            // Released, so an idle stream holds no buffer.
            out = Vec::new();
            if let Some(ended) = ended {
                return ended;
            }
            match until_client_leaves(io, buf, body.frame()).await {
                None => return Written::ClientGone,
                Some(frame) => ended = add(&mut out, frame, delimit),
            }
            // Events that arrived together leave in one TLS record and one
            // write: a busy stream pays per read from the upstream, not per event.
            if ended.is_none() {
                ended =
                    poll_fn(|cx| Poll::Ready(add_ready(&mut out, &mut body, delimit, cx))).await;
            }
        }
    }
}

/// Adds the body frames that are ready now, up to `MAX_WRITE` bytes
/// waiting; Some once the body has ended.
fn add_ready(
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    delimit: Delimit,
    cx: &mut Context<'_>,
) -> Option<Written> {
    while out.len() < MAX_WRITE {
        let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) else {
            break;
        };
        if let Some(ended) = add(out, frame, delimit) {
            return Some(ended);
        }
    }
    None
}

/// Adds a body frame's bytes as they go on the wire; Some once the body
/// has ended.
fn add(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    delimit: Delimit,
) -> Option<Written> {
    match frame {
        Some(Ok(frame)) => {
            // Trailers are not relayed over HTTP/1.1.
            if let Ok(data) = frame.into_data() {
                if delimit == Delimit::Chunked {
                    if !data.is_empty() {
                        push_chunk(out, &data);
                    }
                } else {
                    out.extend_from_slice(&data);
                }
            }
            None
        }
        Some(Err(err)) => {
            tracing::debug!(error = %err, "response body failed; connection cut");
            Some(Written::Cut)
        }
        None => {
            if delimit == Delimit::Chunked {
                out.extend_from_slice(LAST_CHUNK);
            }
            Some(Written::Complete)
        }
    }
}

/// The status line and fields (filtered by `rules` already), `Date` if
/// missing, the body's framing and `Connection: close` if closing, or
/// `Connection: upgrade` for a `101`.
fn encode_head(head: &ResponseHead, delimit: Delimit, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + head.fields.len() * 48);
    push_status_line(&mut out, head.status);
    let mut has_date = false;
    for (name, value) in head.fields.iter() {
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"connection")
            || (delimit != Delimit::NoBody && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        push_field(&mut out, name, value);
    }
    if !has_date {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        push_field(&mut out, b"date", now.as_bytes());
    }
    match delimit {
        Delimit::NoBody | Delimit::Close => {}
        Delimit::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(&mut out, len);
            out.extend_from_slice(b"\r\n");
        }
        Delimit::Chunked => push_field(&mut out, b"transfer-encoding", b"chunked"),
    }
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        push_field(&mut out, b"connection", b"upgrade");
    } else if close {
        push_field(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the last bytes of a connection with its close_notify behind
/// them, in one write instead of two.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn write_last<'a>(
    io: &'a mut ClientIo,
    bytes: &'a [u8],
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    async move {
        // What did not fit the send buffer (usually nothing) goes the
        // ordinary way, and the close_notify with it.
        let rest = buffer_with_close_notify(io, bytes);
        write_flushed(io, rest).await
    }
}

/// Sends close_notify, so the client knows nothing was cut. No
/// shutdown(2) after it: the socket is closed right after, and closing
/// sends the FIN as well.
async fn close_notify(io: &mut ClientIo) -> io::Result<()> {
    io.get_mut().get_mut().1.send_close_notify();
    io.flush().await
}

/// Encrypts as much of `bytes` as the send buffer takes without writing
/// it, and if that is all of them, a close_notify after them. Returns the rest.
fn buffer_with_close_notify<'b>(io: &mut ClientIo, bytes: &'b [u8]) -> &'b [u8] {
    let connection = io.get_mut().get_mut().1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Fields;

    fn head(status: u16, pairs: &[(&str, &str)]) -> ResponseHead {
        let mut fields = Fields::builder();
        for (name, value) in pairs {
            fields.push(name.as_bytes(), value.as_bytes());
        }
        ResponseHead {
            status: StatusCode::from_u16(status).unwrap(),
            fields: fields.finish(),
        }
    }

    #[test]
    fn heads_get_date_framing_and_close() {
        let dated = [
            ("content-type", "text/event-stream"),
            ("Date", "Sun, 06 Dec 2026 02:00:00 GMT"),
        ];
        let out = encode_head(&head(200, &dated), Delimit::Chunked, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nDate: Sun, 06 Dec 2026 02:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let out =
            String::from_utf8(encode_head(&head(502, &[]), Delimit::Length(12), true)).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 502 Bad Gateway\r\ndate: "),
            "{out}"
        );
        assert!(
            out.ends_with("GMT\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"),
            "{out}"
        );
    }

    #[test]
    fn a_head_response_keeps_the_upstreams_length() {
        let out = encode_head(
            &head(200, &[("Content-Length", "42"), ("date", "x")]),
            Delimit::NoBody,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\ndate: x\r\n\r\n"
        );
    }
}
