//! An upstream connection driven by hand: the request head (written by the
//! lean path) goes out as it is, the response head is parsed with httparse
//! and filtered byte for byte, and the body decoded straight from the socket
//! when it becomes readable, so an idle stream holds no buffer and no
//! connection task (a hyper connection keeps two 8 KiB buffers, a task and
//! a request channel).
//!
//! Used for the lean path's bodiless GETs: an EventSource request gets a
//! connection of its own (`send`, `Connection: close`); other GETs use their
//! client connection's keep-alive connection (`exchange`), which returns to
//! its slot once the response is read to its end.

use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::affine::AffineSlot;
use super::decode::{DecodeError, Decoder, Framing};
use crate::error::ProxyError;
use crate::headers::{
    asks_no_buffering, is_event_stream_type, is_fixed_hop_by_hop_name, named_in_connection,
    push_header_line, push_status_line, raw_list_elements, raw_values,
};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// hyper's default header count limit, kept the same here.
const MAX_HEADERS: usize = 100;
/// Bytes read at once from the upstream.
const READ_SIZE: usize = 8 * 1024;
/// A body up to this size gets room in the buffer of its response head.
const SMALL_BODY: u64 = 16 * 1024;

/// Sends a bodiless request `head` (as `lean_h1` writes it) on a new
/// connection to `upstream` of its own, asking it to close the connection
/// after the response, and reads the response head.
pub async fn send(
    upstream: &Authority,
    mut head: Vec<u8>,
    connect_timeout: Duration,
) -> Result<(ResponseHead, DedicatedBody), ProxyError> {
    // The connection serves this one request.
    ask_to_close(&mut head);
    let stream = super::connect_to(upstream, connect_timeout).await?;
    exchange(stream, &head, None).await.map_err(Into::into)
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// Not a byte of a response came back: the connection was closed or
    /// reset first. On a reused connection this is the upstream's keep-alive
    /// timeout, and a safe request can be sent again.
    Unanswered(ProxyError),
    Failed(ProxyError),
}

impl From<ExchangeError> for ProxyError {
    fn from(err: ExchangeError) -> Self {
        match err {
            ExchangeError::Unanswered(err) | ExchangeError::Failed(err) => err,
        }
    }
}

/// Sends a bodiless request `head` over `stream` and reads the response
/// head. With `recycle`, a connection the upstream keeps open returns to
/// that slot once the body is read to its end.
pub async fn exchange(
    mut stream: TcpStream,
    head: &[u8],
    recycle: Option<Weak<AffineSlot>>,
) -> Result<(ResponseHead, DedicatedBody), ExchangeError> {
    let upstream_failed = |err: io::Error| ProxyError::Upstream(format!("connection error: {err}"));
    if let Err(err) = stream.write_all(head).await {
        return Err(ExchangeError::Unanswered(upstream_failed(err)));
    }

    let mut buf = BytesMut::new();
    loop {
        if let Some(parsed) = parse_head(&mut buf).map_err(ExchangeError::Failed)? {
            let (head, framing, reusable) = parsed;
            let body = DedicatedBody {
                stream: Some(stream),
                buf,
                decoder: Decoder::new(framing),
                recycle: recycle.filter(|_| reusable),
            };
            return Ok((head, body));
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(ExchangeError::Failed(ProxyError::Upstream(
                "response head too large".into(),
            )));
        }
        buf.reserve(READ_SIZE);
        let nothing_yet = buf.is_empty();
        let failed = match stream.read_buf(&mut buf).await {
            Ok(0) => ProxyError::Upstream("connection closed before the response head".into()),
            Ok(_) => continue,
            Err(err) => upstream_failed(err),
        };
        return Err(if nothing_yet {
            ExchangeError::Unanswered(failed)
        } else {
            ExchangeError::Failed(failed)
        });
    }
}

/// Adds `Connection: close` to a complete request head.
fn ask_to_close(head: &mut Vec<u8>) {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"connection: close\r\n\r\n");
    }
}

/// An upstream response head, ready to be relayed over HTTP/1.1.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The status line and the header lines to relay: the upstream's own,
    /// in its order, without the hop-by-hop ones (and those `Connection`
    /// names) and without `Content-Length`, which the writer sets from the
    /// body. The empty line that ends a head is not there yet.
    pub lines: Vec<u8>,
    /// Relayed as an event stream: `text/event-stream`, or the upstream
    /// asked for no buffering (`X-Accel-Buffering: no`).
    pub event_stream: bool,
    /// The upstream sent a `Date`.
    pub has_date: bool,
    /// The upstream sent its own `Strict-Transport-Security`.
    pub has_hsts: bool,
}

impl ResponseHead {
    /// Adds a header line.
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) {
        push_header_line(&mut self.lines, name, value);
    }
}

/// Parses a complete final response head off the front of `buf`, with its
/// body's framing and whether the connection may carry another request;
/// 1xx interim responses are skipped. `Ok(None)`: more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(ResponseHead, Framing, bool)>, ProxyError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => {
                return Err(ProxyError::Upstream(format!(
                    "invalid response head: {err}"
                )))
            }
        };
        let status = parsed
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| ProxyError::Upstream("invalid response status".into()))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProxyError::Upstream(
                "unexpected 101 Switching Protocols".into(),
            ));
        }
        if status.is_informational() {
            let _ = buf.split_to(head_len);
            continue;
        }
        let headers = &*parsed.headers;
        let framing = framing(status, headers)?;
        let connection_values = raw_values(headers, "connection");
        let has_connection = connection_values.clone().next().is_some();
        // HTTP/1.1 keeps the connection unless it says otherwise (RFC 9112
        // §9.3); HTTP/1.0 keep-alive is not relied on.
        let reusable = parsed.version == Some(1)
            && framing != Framing::UntilClose
            && !connection_values
                .clone()
                .flat_map(raw_list_elements)
                .any(|token| token.eq_ignore_ascii_case(b"close"));

        // Room for the writer's own headers, and for a small body, which
        // leaves in the same write as the head.
        let body_room = match framing {
            Framing::Length(len) => len.min(SMALL_BODY) as usize,
            _ => 0,
        };
        let mut head = ResponseHead {
            status,
            lines: Vec::with_capacity(head_len + 128 + body_room),
            event_stream: false,
            has_date: false,
            has_hsts: false,
        };
        push_status_line(&mut head.lines, status);
        for header in headers {
            let name = header.name.as_bytes();
            if is_fixed_hop_by_hop_name(name)
                || name.eq_ignore_ascii_case(b"content-length")
                || (has_connection && named_in_connection(connection_values.clone(), name))
            {
                continue;
            }
            if (name.eq_ignore_ascii_case(b"content-type") && is_event_stream_type(header.value))
                || (name.eq_ignore_ascii_case(b"x-accel-buffering")
                    && asks_no_buffering(header.value))
            {
                head.event_stream = true;
            } else if name.eq_ignore_ascii_case(b"date") {
                head.has_date = true;
            } else if name.eq_ignore_ascii_case(b"strict-transport-security") {
                head.has_hsts = true;
            }
            push_header_line(&mut head.lines, name, header.value);
        }
        // It borrows `buf`'s headers, which are done with.
        drop(connection_values);
        let _ = buf.split_to(head_len);
        return Ok(Some((head, framing, reusable)));
    }
}

/// RFC 9112 §6.3, for a response to GET.
fn framing(status: StatusCode, headers: &[httparse::Header<'_>]) -> Result<Framing, ProxyError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(last) = raw_values(headers, "transfer-encoding").next_back() {
        let chunked_last = raw_list_elements(last)
            .next_back()
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in raw_values(headers, "content-length") {
        let parsed = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ProxyError::Upstream("invalid Content-Length".into()))?;
        if length.is_some_and(|known| known != parsed) {
            return Err(ProxyError::Upstream(
                "conflicting Content-Length values".into(),
            ));
        }
        length = Some(parsed);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// The response body, read from the socket only when it is readable.
pub struct DedicatedBody {
    /// None once the connection went back to its slot.
    stream: Option<TcpStream>,
    /// Bytes read but not yet decoded; released whenever it empties.
    buf: BytesMut,
    decoder: Decoder,
    /// Where the connection goes once the body is read to its end.
    recycle: Option<Weak<AffineSlot>>,
}

impl DedicatedBody {
    /// Hands the connection back to its slot if the response was read to
    /// its end and nothing followed it.
    fn recycle(&mut self) {
        if !self.decoder.is_done() || !self.buf.is_empty() {
            return;
        }
        let slot = self.recycle.take().and_then(|slot| slot.upgrade());
        if let (Some(slot), Some(stream)) = (slot, self.stream.take()) {
            slot.put_raw(stream);
        }
    }
}

impl Drop for DedicatedBody {
    /// A body without content (204, 304) is never read, yet complete.
    fn drop(&mut self) {
        self.recycle();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("upstream connection error: {0}")]
    Io(#[from] io::Error),
}

impl Body for DedicatedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.decoder.is_done() => {
                    this.recycle();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            // Wait for readability without a buffer (an idle stream keeps none;
            // the frames already handed out hold what they need), then read. A
            // read through AsyncRead that does not fill the buffer tells tokio
            // the socket is drained, which saves a read that says "would block".
            if this.buf.is_empty() {
                this.buf = BytesMut::new();
            }
            if let Err(err) = ready!(stream.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(err.into())));
            }
            this.buf.reserve(READ_SIZE);
            let read = poll_read_buf(Pin::new(stream), cx, &mut this.buf);
            if read.is_pending() && this.buf.is_empty() {
                // Readiness was stale: wait without holding the buffer.
                this.buf = BytesMut::new();
            }
            match ready!(read) {
                Ok(0) => {
                    return match this.decoder.finish() {
                        Ok(()) => Poll::Ready(None),
                        Err(err) => Poll::Ready(Some(Err(err.into()))),
                    }
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<(ResponseHead, Framing, bool)>, ProxyError> {
        parse_head(&mut BytesMut::from(bytes))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing_of = |bytes: &[u8]| head(bytes).unwrap().unwrap().1;
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
            ),
            Framing::UntilClose
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(framing_of(b"HTTP/1.0 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(
            framing_of(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Framing::Empty
        );
    }

    /// The rules `headers::remove_hop_by_hop` and `is_event_stream` apply to
    /// header maps, byte for byte: what is relayed keeps the upstream's
    /// order and spelling.
    #[test]
    fn the_head_to_relay_leaves_out_hop_by_hop_and_framing_headers() {
        let (head, framing, reusable) = head(
            b"HTTP/1.1 200 OK\r\n\
              X-Private: 1\r\n\
              Content-Type: Text/Event-Stream; charset=utf-8\r\n\
              Connection: keep-alive, x-private\r\n\
              Keep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\n\
              Proxy-Authenticate: Basic\r\n\
              Content-Length: 5\r\n\
              Cache-Control: no-cache\r\n\
              Date: Sun, 06 Dec 2026 01:00:00 GMT\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            String::from_utf8(head.lines).unwrap(),
            "HTTP/1.1 200 OK\r\n\
             Content-Type: Text/Event-Stream; charset=utf-8\r\n\
             Cache-Control: no-cache\r\n\
             Date: Sun, 06 Dec 2026 01:00:00 GMT\r\n"
        );
        assert!(head.event_stream);
        assert!(head.has_date);
        assert!(!head.has_hsts);
        assert_eq!(framing, Framing::Chunked);
        assert!(reusable);

        let (head, ..) = head_of(b"HTTP/1.1 404 Not Found\r\nX-Accel-Buffering: no\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 0\r\n\r\n");
        assert!(head.event_stream, "X-Accel-Buffering: no");
        assert!(head.has_hsts);
        assert!(!head.has_date);
        let (head, ..) = head_of(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-streams\r\n\r\n");
        assert!(!head.event_stream);
    }

    fn head_of(bytes: &[u8]) -> (ResponseHead, Framing, bool) {
        head(bytes).unwrap().unwrap()
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..]);
        let (head, framing, _) = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(framing, Framing::Length(2));
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn bad_heads_are_upstream_errors() {
        assert!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(head(b"garbage\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_body_waiting_for_the_next_event_holds_no_read_buffer() {
        use http_body_util::BodyExt;
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
            // Head, one event and the chunk's CRLF in one write, as Node sends them.
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nD\r\ndata: first\n\n\r\n")
                .await
                .unwrap();
            (tcp, head)
        });
        let authority: Authority = addr.to_string().parse().unwrap();
        let request = b"GET /events HTTP/1.1\r\nhost: example.com\r\n\r\n".to_vec();
        let (head, mut body) = send(&authority, request, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(head.event_stream);
        let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(event, "data: first\n\n");
        drop(event);
        let waiting =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(waiting, "no second event was sent");
        assert_eq!(body.buf.capacity(), 0, "idle body keeps a read buffer");
        let (_tcp, sent) = upstream.await.unwrap();
        assert_eq!(
            sent, b"GET /events HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n",
            "a connection of its own is closed after the response"
        );
    }

    #[test]
    fn only_a_kept_http_1_1_connection_is_reused() {
        let reusable = |bytes: &[u8]| head(bytes).unwrap().unwrap().2;
        assert!(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"));
        assert!(reusable(
            b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive, Close\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.1 200 OK\r\n\r\n"), "delimited by close");
        assert!(!reusable(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        ));
    }
}
