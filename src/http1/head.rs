//! HTTP/1.1 heads: parsing request heads (from clients) and response heads
//! (from the upstream) with httparse, and writing start lines and fields.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode, Version};

use crate::defaults::MAX_HEADERS;
use crate::message::{Fields, RequestHead, ResponseHead, Span};

/// Why a head cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("malformed head: {0}")]
    Malformed(&'static str),
}

/// Parses a complete request head off the front of `buf` (which then holds
/// what follows it). `Ok(None)`: the head is not complete yet.
pub fn parse_request(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Some(len) = complete_len(parsed.parse(buf), buf.len(), max_size)? else {
        return Ok(None);
    };
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed("invalid method"))?;
    let version = version(parsed.version)?;
    let (target, authority) = request_target(parsed.path.unwrap_or_default())?;
    let spans = spans(buf, parsed.headers)?;
    let head = take_head(buf, len);
    Ok(Some(RequestHead {
        method,
        target,
        authority,
        version,
        protocol: None,
        fields: Fields::from_spans(head, spans),
    }))
}

/// The head's `len` bytes off the front of `buf`, copied into an
/// allocation of their own. A head outlives its read buffer's purpose:
/// its values can stay referenced for a connection's life (hyper's HPACK
/// table keeps response values an HTTP/2 connection sent), and a slice
/// would keep the whole read buffer with them.
fn take_head(buf: &mut BytesMut, len: usize) -> Bytes {
    let head = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    head
}

/// The length of a head httparse found complete, or None while it is
/// partial; either way bounded by `max_size` (what `buf_len` holds counts).
fn complete_len(
    parsed: httparse::Result<usize>,
    buf_len: usize,
    max_size: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= max_size => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buf_len <= max_size => Ok(None),
        Ok(_) => Err(HeadError::TooLarge(max_size)),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(err) => Err(malformed(err)),
    }
}

/// A parsed upstream response head, with its HTTP version.
#[derive(Debug)]
pub struct ParsedResponse {
    pub head: ResponseHead,
    pub version: Version,
}

/// Parses a complete response head off the front of `buf`, as
/// `parse_request` does.
pub fn parse_response(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<ParsedResponse>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let Some(len) = complete_len(parsed.parse(buf), buf.len(), max_size)? else {
        return Ok(None);
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(HeadError::Malformed("invalid status code"))?;
    let version = version(parsed.version)?;
    let spans = spans(buf, parsed.headers)?;
    let head = take_head(buf, len);
    Ok(Some(ParsedResponse {
        head: ResponseHead {
            status,
            fields: Fields::from_spans(head, spans),
        },
        version,
    }))
}

fn malformed(err: httparse::Error) -> HeadError {
    HeadError::Malformed(match err {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    })
}

fn version(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::Malformed("invalid HTTP version")),
    }
}

fn spans(buf: &[u8], headers: &[httparse::Header<'_>]) -> Result<Vec<Span>, HeadError> {
    headers
        .iter()
        .map(|h| Span::within(buf, h.name.as_bytes(), h.value))
        .collect::<Option<Vec<_>>>()
        .ok_or(HeadError::Malformed("header outside the head"))
}

/// The request target as path-and-query, and the authority of an
/// absolute-form target (RFC 9112 §3.2). An authority-form target
/// (CONNECT) has no path; an asterisk-form one is `*`. Whether the proxy
/// forwards such a request is the rules' decision, not the parser's.
fn request_target(target: &str) -> Result<(String, Option<String>), HeadError> {
    let invalid = HeadError::Malformed("invalid request target");
    if target.starts_with('/') {
        return Ok((path_and_query(target).ok_or(invalid)?, None));
    }
    if target == "*" {
        return Ok((target.to_owned(), None));
    }
    let uri: http::Uri = target.parse().map_err(|_| invalid.clone())?;
    let authority = uri.authority().map(|a| a.as_str().to_owned());
    match uri.scheme_str() {
        Some(scheme)
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let path = if path.is_empty() { "/" } else { path };
            Ok((path.to_owned(), authority))
        }
        Some(_) => Err(HeadError::Malformed("unsupported scheme in request target")),
        // host:port, as CONNECT sends it.
        None if authority.is_some() && uri.path_and_query().is_none() => {
            Ok((String::new(), authority))
        }
        None => Err(invalid),
    }
}

/// An origin-form target, as the `http` crate reads it (what hyper's
/// HTTP/2 path gets too): at once when it holds only the characters RFC
/// 3986 allows there, else through the crate (which drops a fragment).
fn path_and_query(target: &str) -> Option<String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/?".contains(&b);
    if target.bytes().all(plain) {
        return Some(target.to_owned());
    }
    let parsed = http::uri::PathAndQuery::try_from(target).ok()?;
    Some(parsed.as_str().to_owned())
}

/// Writes a request line.
pub fn push_request_line(out: &mut Vec<u8>, method: &Method, target: &[&str]) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    for part in target {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Writes an HTTP/1.1 status line, with the status's canonical reason.
pub fn push_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes one header line: `name: value` and CRLF.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal (this runs for every response; the formatting
/// machinery costs more than the rest of the line).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(bytes), 1024)
    }

    #[test]
    fn a_request_head_keeps_its_fields_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            &b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Case: Kept\r\n\r\nbody"[..],
        );
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.target, "/a/b?c=d");
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.authority, None);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(
            head.fields.iter().collect::<Vec<_>>(),
            [(&b"Host"[..], &b"example.com"[..]), (b"X-Case", b"Kept")]
        );
        assert_eq!(&buf[..], b"body");
    }

    #[test]
    fn a_parsed_head_shares_no_memory_with_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n",
        );
        let response = parse_response(&mut buf, 1024).unwrap().unwrap();
        let _ = buf.split();
        // The read buffer's allocation is ours alone again (a head slicing
        // it would keep it, e.g. in an HTTP/2 connection's HPACK table).
        assert!(buf.try_reclaim(8192));
        assert_eq!(
            response.head.fields.get("content-type"),
            Some(&b"text/event-stream"[..])
        );
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_errors() {
        assert!(request(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(2000, b'a');
        assert_eq!(request(&big).unwrap_err(), HeadError::TooLarge(1024));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(request(&big).unwrap_err(), HeadError::TooLarge(1024));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(&mut BytesMut::from(head.as_bytes()), 1 << 20).unwrap_err(),
            HeadError::TooManyFields
        );
    }

    #[test]
    fn target_forms() {
        let head = request(b"GET http://Example.com:8080/x?y HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.target, "/x?y");
        assert_eq!(head.authority.as_deref(), Some("Example.com:8080"));
        let head = request(b"GET http://example.com HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.target, "/");
        let head = request(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.target, "");
        assert_eq!(head.authority.as_deref(), Some("example.com:443"));
        let head = request(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.target, "*");
        let head = request(b"GET /x{y}|\"z\"#frag HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.target, "/x{y}|\"z\"");
        assert!(request(b"GET ftp://a/ HTTP/1.1\r\n\r\n").is_err());
        assert!(request(b"GET a/b HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\r\n\r\n",
            b"\x01GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_response_head() {
        let mut buf = BytesMut::from(&b"HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\nhi"[..]);
        let parsed = parse_response(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(parsed.head.status, StatusCode::NOT_FOUND);
        assert_eq!(parsed.version, Version::HTTP_10);
        assert_eq!(parsed.head.fields.get("content-length"), Some(&b"2"[..]));
        assert_eq!(&buf[..], b"hi");
        assert!(parse_response(&mut BytesMut::from(&b"garbage\r\n\r\n"[..]), 1024).is_err());
    }

    #[test]
    fn lines_are_written_as_http_1_1() {
        let mut out = Vec::new();
        push_request_line(&mut out, &Method::GET, &["/base", "/x?y"]);
        push_status_line(&mut out, StatusCode::BAD_GATEWAY);
        push_field(&mut out, b"Content-Length", b"0");
        out.extend_from_slice(b"n=");
        push_decimal(&mut out, 1234567890);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /base/x?y HTTP/1.1\r\nHTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nn=1234567890"
        );
    }
}
