//! Writing a response head and its body framing by hand.

use bytes::Bytes;
use http::header;
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::headers::{push_header_line, push_status_line};
use crate::upstream::dedicated::ResponseHead;

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// 1xx, 204 and 304 carry no body.
    NoBody,
    Length(u64),
    Chunked,
}

impl Framing {
    pub fn for_response(status: StatusCode, size: &SizeHint) -> Framing {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::NoBody
        } else if let Some(len) = size.exact() {
            Framing::Length(len)
        } else {
            Framing::Chunked
        }
    }
}

/// Splits a response into its encoded head, framing and body. Done before
/// the body streams, so an idle stream keeps neither the header map nor the
/// response around.
pub fn encode<B: Body>(response: Response<B>, close: bool) -> (Vec<u8>, Framing, B) {
    let (parts, body) = response.into_parts();
    let framing = Framing::for_response(parts.status, &body.size_hint());
    (encode_head(&parts, framing, close), framing, body)
}

/// The same for a response relayed from the upstream, whose head comes
/// filtered already (`ResponseHead::lines`, with room for a small body,
/// which then leaves in the same write).
pub fn encode_relayed<B: Body>(head: ResponseHead, body: B, close: bool) -> (Vec<u8>, Framing, B) {
    let framing = Framing::for_response(head.status, &body.size_hint());
    let mut out = head.lines;
    finish_head(&mut out, head.has_date, framing, close);
    (out, framing, body)
}

/// The status line and header section. Framing and connection headers are
/// the writer's own; hop-by-hop headers were stripped by the proxy already.
pub fn encode_head(parts: &Parts, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    push_status_line(&mut head, parts.status);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        push_header_line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    let has_date = parts.headers.contains_key(header::DATE);
    finish_head(&mut head, has_date, framing, close);
    head
}

/// Ends a head: `Date` if there is none yet, the framing and connection
/// headers, and the empty line.
fn finish_head(head: &mut Vec<u8>, has_date: bool, framing: Framing, close: bool) {
    if !has_date {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        push_header_line(head, b"date", now.as_bytes());
    }
    match framing {
        Framing::NoBody => {}
        Framing::Length(len) => {
            push_header_line(head, b"content-length", decimal(len, &mut [0; 20]))
        }
        Framing::Chunked => push_header_line(head, b"transfer-encoding", b"chunked"),
    }
    if close {
        push_header_line(head, b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");
}

/// `n` in decimal (this runs for every response; the formatting machinery
/// costs more than the rest of the header).
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[start..];
        }
    }
}

/// What to do with the next thing the body yielded.
pub enum WireBytes {
    Write(Bytes),
    /// Nothing to send (an empty frame, or trailers, not relayed over HTTP/1.1).
    Skip,
    /// The body is complete: send this, then the response is done.
    End(&'static [u8]),
    Failed(BoxError),
}

/// The bytes on the wire for a body frame: a chunk (one buffer, so it leaves
/// in one TLS record) or the data as it is. A plain function, so the frame is
/// not part of the writer's state while it waits.
pub fn wire_bytes(frame: Option<Result<Frame<Bytes>, BoxError>>, framing: Framing) -> WireBytes {
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) if data.is_empty() => WireBytes::Skip,
            Ok(data) if framing == Framing::Chunked => WireBytes::Write(encode_chunk(&data).into()),
            Ok(data) => WireBytes::Write(data),
            Err(_trailers) => WireBytes::Skip,
        },
        Some(Err(err)) => WireBytes::Failed(err),
        None if framing == Framing::Chunked => WireBytes::End(LAST_CHUNK),
        None => WireBytes::End(b""),
    }
}

fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let size = format!("{:X}\r\n", data.len());
    let mut chunk = Vec::with_capacity(size.len() + data.len() + 2);
    chunk.extend_from_slice(size.as_bytes());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// The chunk that ends a chunked body (no trailers).
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parts(status: u16, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        response.into_parts().0
    }

    #[test]
    fn event_stream_head_is_chunked() {
        let parts = parts(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("date", "Sun, 22 Nov 2026 02:00:00 GMT"),
                ("content-length", "5"),
            ],
        );
        let head = encode_head(&parts, Framing::Chunked, false);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: Sun, 22 Nov 2026 02:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn date_length_and_close_are_added() {
        let head = encode_head(&parts(502, &[]), Framing::Length(12), true);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 502 Bad Gateway\r\ndate: "),
            "{head}"
        );
        assert!(
            head.ends_with("GMT\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn framing_follows_status_and_size() {
        let exact = SizeHint::with_exact(3);
        let open = SizeHint::default();
        assert_eq!(
            Framing::for_response(StatusCode::NO_CONTENT, &exact),
            Framing::NoBody
        );
        assert_eq!(
            Framing::for_response(StatusCode::NOT_MODIFIED, &open),
            Framing::NoBody
        );
        assert_eq!(
            Framing::for_response(StatusCode::OK, &exact),
            Framing::Length(3)
        );
        assert_eq!(
            Framing::for_response(StatusCode::OK, &open),
            Framing::Chunked
        );
    }

    #[test]
    fn chunks_are_hex_sized() {
        assert_eq!(
            encode_chunk(&[b'x'; 26]),
            [b"1A\r\n".as_slice(), &[b'x'; 26], b"\r\n"].concat()
        );
    }
}
