//! An upstream connection driven by hand: the request head is written, the
//! response head parsed with httparse, and the body decoded straight from
//! the socket when it becomes readable, so an idle stream holds no buffer
//! and no connection task (a hyper connection keeps two 8 KiB buffers, a
//! task and a request channel).
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
use http::header;
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::affine::AffineSlot;
use super::decode::{DecodeError, Decoder, Framing};
use crate::error::ProxyError;
use crate::headers::{list_elements, map_from_httparse};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// hyper's default header count limit, kept the same here.
const MAX_HEADERS: usize = 100;
/// Bytes read at once from the upstream.
const READ_SIZE: usize = 8 * 1024;

/// Sends a bodiless request on a new connection of its own, with
/// `Connection: close`, and reads the response head. The request's URI is
/// absolute (`http://host:port/path`), as the proxy builds it.
pub async fn send(
    request: &http::request::Parts,
    connect_timeout: Duration,
) -> Result<Response<DedicatedBody>, ProxyError> {
    let stream = super::connect(&request.uri, connect_timeout).await?;
    exchange(stream, request, None).await.map_err(Into::into)
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

/// Sends a bodiless request over `stream` (in origin form) and reads the
/// response head. With `recycle`, the request asks for keep-alive, and a
/// connection the upstream keeps open returns to that slot once the body is
/// read to its end; without, it is sent with `Connection: close`.
pub async fn exchange(
    mut stream: TcpStream,
    request: &http::request::Parts,
    recycle: Option<Weak<AffineSlot>>,
) -> Result<Response<DedicatedBody>, ExchangeError> {
    let upstream_failed = |err: io::Error| ProxyError::Upstream(format!("connection error: {err}"));
    let head = encode_request(request, recycle.is_some());
    if let Err(err) = stream.write_all(&head).await {
        return Err(ExchangeError::Unanswered(upstream_failed(err)));
    }
    drop(head);

    let mut buf = BytesMut::new();
    loop {
        if let Some(head) = parse_head(&mut buf).map_err(ExchangeError::Failed)? {
            let body = DedicatedBody {
                stream: Some(stream),
                buf,
                decoder: Decoder::new(head.framing),
                recycle: recycle.filter(|_| head.reusable),
            };
            return Ok(head.response.map(|()| body));
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

fn encode_request(request: &http::request::Parts, keep_alive: bool) -> Vec<u8> {
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &request.headers {
        if name == header::CONNECTION {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        // The connection serves this one request.
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A final response head, as parsed.
struct ResponseHead {
    response: Response<()>,
    framing: Framing,
    /// The upstream keeps the connection open after this response.
    reusable: bool,
}

/// Parses a complete final response head off the front of `buf`; 1xx
/// interim responses are skipped. `Ok(None)`: more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, ProxyError> {
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
        // One copy of the head, which the header values share; it is freed
        // with the header map, once the head is written to the client.
        let head = Bytes::copy_from_slice(&buf[..head_len]);
        let map = map_from_httparse(parsed.headers, buf, &head)
            .ok_or_else(|| ProxyError::Upstream("invalid response header".into()))?;
        let framing = framing(status, &map)?;
        // HTTP/1.1 keeps the connection unless it says otherwise (RFC 9112
        // §9.3); HTTP/1.0 keep-alive is not relied on.
        let reusable = parsed.version == Some(1)
            && framing != Framing::UntilClose
            && !map
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(list_elements)
                .any(|token| token.eq_ignore_ascii_case(b"close"));
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = map;
        let _ = buf.split_to(head_len);
        return Ok(Some(ResponseHead {
            response,
            framing,
            reusable,
        }));
    }
}

/// RFC 9112 §6.3, for a response to GET.
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, ProxyError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let chunked_last = list_elements(last)
            .next_back()
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let parsed = value
            .to_str()
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

    fn head(bytes: &[u8]) -> Result<Option<ResponseHead>, ProxyError> {
        parse_head(&mut BytesMut::from(bytes))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing_of = |bytes: &[u8]| head(bytes).unwrap().unwrap().framing;
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
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(framing_of(b"HTTP/1.0 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(
            framing_of(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Framing::Empty
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..]);
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
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
            tcp
        });
        let request = http::Request::get(format!("http://{addr}/events"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut body = send(&request, Duration::from_secs(5))
            .await
            .unwrap()
            .into_body();
        let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(event, "data: first\n\n");
        drop(event);
        let waiting =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending()))
                .await;
        assert!(waiting, "no second event was sent");
        assert_eq!(body.buf.capacity(), 0, "idle body keeps a read buffer");
        drop(upstream.await.unwrap());
    }

    #[test]
    fn requests_go_out_in_origin_form_with_connection_close() {
        let request = http::Request::get("http://127.0.0.1:9000/events?x=1")
            .header("host", "example.com")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let parts = request.into_parts().0;
        assert_eq!(
            String::from_utf8(encode_request(&parts, false)).unwrap(),
            "GET /events?x=1 HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(encode_request(&parts, true)).unwrap(),
            "GET /events?x=1 HTTP/1.1\r\nhost: example.com\r\n\r\n"
        );
    }

    #[test]
    fn only_a_kept_http_1_1_connection_is_reused() {
        let reusable = |bytes: &[u8]| head(bytes).unwrap().unwrap().reusable;
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
