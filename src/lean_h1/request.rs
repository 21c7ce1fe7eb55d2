//! A request head on an HTTP/1.1 connection: is it a plain bodiless GET the
//! lean path serves, or something to hand to hyper untouched? A lean one is
//! rewritten for the upstream right here, byte for byte, by the rules
//! `Proxy::upstream_request` applies to the header maps of other requests
//! (see `headers`): no header map is built for it.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Uri, Version};

use crate::error::ProxyError;
use crate::headers::{
    self, is_fixed_hop_by_hop_name, map_from_httparse, named_in_connection, push_header_line,
    raw_list_elements, raw_values, same_place,
};

/// Heads larger than this go to hyper, which enforces the real limits
/// (and answers 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// hyper's default header count limit; more goes to hyper, which answers 431.
const MAX_HEADERS: usize = 100;

#[derive(Debug)]
pub enum Sniffed {
    /// A complete plain GET, rewritten for the upstream.
    Lean(LeanRequest),
    /// Anything else, including malformed heads: hyper serves it (and rejects
    /// what is malformed) from the same bytes.
    Other,
    /// The head is not complete yet.
    Partial,
}

/// A plain bodiless GET.
#[derive(Debug)]
pub struct LeanRequest {
    /// The head was the first `head_len` bytes.
    pub head_len: usize,
    /// False when the client sent `Connection: close`.
    pub keep_alive: bool,
    /// It asked for `text/event-stream` (an EventSource).
    pub event_source: bool,
    /// The path and query, as the client asked for them.
    pub target: String,
    /// The request head for the upstream; a request that cannot be
    /// forwarded (no Host) gets its error response instead.
    pub upstream_head: Result<Vec<u8>, ProxyError>,
}

impl LeanRequest {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What the upstream request says beyond the client's head.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// Prefixed to every request path (the `--upstream` URL's path).
    pub base_path: &'a str,
    /// Appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// The subject of the verified client certificate, if there is one.
    pub client_subject: Option<&'a HeaderValue>,
}

/// Decides from the bytes read so far. Only the plainest requests qualify:
/// GET, HTTP/1.1, origin-form target, no body and nothing that changes the
/// connection (Upgrade, Expect). Everything unusual is hyper's to judge.
pub fn sniff(buf: &[u8], forwarding: &Forwarding<'_>) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Sniffed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Sniffed::Other,
    };
    if head_len > MAX_HEAD_BYTES || parsed.method != Some("GET") || parsed.version != Some(1) {
        return Sniffed::Other;
    }
    let Some(target) = parsed.path.filter(|path| path.starts_with('/')) else {
        return Sniffed::Other;
    };
    let Some(target) = checked_target(target) else {
        return Sniffed::Other;
    };

    let mut event_source = false;
    let mut keep_alive = true;
    let mut has_connection = false;
    for header in parsed.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Sniffed::Other;
        }
        if name.eq_ignore_ascii_case(b"accept")
            && contains_ignore_case(header.value, b"text/event-stream")
        {
            event_source = true;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            has_connection = true;
            if raw_list_elements(header.value).any(|token| token.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        }
    }
    let upstream_head = upstream_head(&target, parsed.headers, has_connection, forwarding);
    Sniffed::Lean(LeanRequest {
        head_len,
        keep_alive,
        event_source,
        target: target.into_owned(),
        upstream_head,
    })
}

/// The request target as the upstream gets it, if the `http` crate would
/// take it as a path and query (what hyper serves must be the same): at
/// once when it holds only the characters RFC 3986 allows there, else as
/// the `http` crate reads it (which drops a fragment).
fn checked_target(target: &str) -> Option<Cow<'_, str>> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/?".contains(&b);
    if target.bytes().all(plain) {
        return Some(Cow::Borrowed(target));
    }
    let parsed = http::uri::PathAndQuery::try_from(target).ok()?;
    Some(Cow::Owned(parsed.as_str().to_owned()))
}

/// The head the upstream gets: the request line with the base path, the
/// client's headers without the hop-by-hop ones (and those `Connection`
/// names) and without the ones the proxy sets, then Host, the
/// `X-Forwarded-*` headers and the client certificate's subject.
fn upstream_head(
    target: &str,
    headers: &[httparse::Header<'_>],
    has_connection: bool,
    forwarding: &Forwarding<'_>,
) -> Result<Vec<u8>, ProxyError> {
    let host = raw_values(headers, "host")
        .next()
        .ok_or(ProxyError::BadRequest("missing Host"))?;
    let connection_values = raw_values(headers, "connection");
    let proxy_sets = |name: &[u8]| {
        [
            &b"host"[..],
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            headers::X_CLIENT_CERT_SUBJECT.as_str().as_bytes(),
        ]
        .iter()
        .any(|set| name.eq_ignore_ascii_case(set))
    };

    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(forwarding.base_path.as_bytes());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    push_header_line(&mut head, b"host", host);
    for header in headers {
        let name = header.name.as_bytes();
        if is_fixed_hop_by_hop_name(name)
            || proxy_sets(name)
            || (has_connection && named_in_connection(connection_values.clone(), name))
        {
            continue;
        }
        push_header_line(&mut head, name, header.value);
    }
    head.extend_from_slice(b"x-forwarded-for: ");
    // A chain the client's `Connection` names is hop-by-hop too.
    let chain_dropped =
        has_connection && named_in_connection(connection_values, b"x-forwarded-for");
    let prior = raw_values(headers, "x-forwarded-for").filter(|_| !chain_dropped);
    headers::push_forwarded_for(&mut head, prior, forwarding.client_ip);
    head.extend_from_slice(b"\r\n");
    push_header_line(&mut head, b"x-forwarded-proto", b"https");
    push_header_line(&mut head, b"x-forwarded-host", host);
    if let Some(subject) = forwarding.client_subject {
        push_header_line(
            &mut head,
            headers::X_CLIENT_CERT_SUBJECT.as_str().as_bytes(),
            subject.as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

/// A lean request's head as a `Request`, for what takes requests that way
/// (shared streams). None if it does not make one.
pub fn http_request(head: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(head) else {
        return None;
    };
    // One copy of the head, which the target and the header values share.
    let copy = Bytes::copy_from_slice(&head[..head_len]);
    let map = map_from_httparse(parsed.headers, head, &copy)?;
    let uri = same_place(parsed.path?.as_bytes(), head, &copy)
        .and_then(|target| Uri::from_maybe_shared(target).ok())?;
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some(request)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT_SOURCE: &[u8] = b"GET /events?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: text/event-stream\r\nLast-Event-ID: 7\r\n\r\n";

    fn forwarding() -> Forwarding<'static> {
        Forwarding {
            base_path: "",
            client_ip: "127.0.0.1".parse().unwrap(),
            client_subject: None,
        }
    }

    fn lean(head: &[u8]) -> LeanRequest {
        match sniff(head, &forwarding()) {
            Sniffed::Lean(lean) => lean,
            other => panic!("expected Lean, got {other:?}"),
        }
    }

    fn upstream_text(lean: &LeanRequest) -> String {
        String::from_utf8(lean.upstream_head.as_ref().unwrap().clone()).unwrap()
    }

    #[test]
    fn event_source_request_qualifies() {
        let mut bytes = EVENT_SOURCE.to_vec();
        bytes.extend_from_slice(b"GET /next");
        let lean = lean(&bytes);
        assert_eq!(lean.head_len, EVENT_SOURCE.len());
        assert!(lean.keep_alive);
        assert!(lean.event_source);
        assert_eq!(lean.target, "/events?x=1");
        assert_eq!(lean.path(), "/events");
        assert_eq!(
            upstream_text(&lean),
            "GET /events?x=1 HTTP/1.1\r\nhost: example.com\r\nAccept: text/event-stream\r\n\
             Last-Event-ID: 7\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: example.com\r\n\r\n"
        );
    }

    #[test]
    fn a_plain_get_qualifies_too() {
        let lean = lean(b"GET /static HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n");
        assert!(!lean.event_source);
        assert!(lean.keep_alive);
    }

    #[test]
    fn partial_head_waits_for_more() {
        assert!(matches!(
            sniff(&EVENT_SOURCE[..EVENT_SOURCE.len() - 2], &forwarding()),
            Sniffed::Partial
        ));
    }

    #[test]
    fn connection_close_is_noticed() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: TEXT/Event-Stream\r\nConnection: keep-alive, Close\r\n\r\n";
        let lean = lean(head);
        assert!(!lean.keep_alive);
        assert!(lean.event_source);
    }

    /// The same rules `headers::remove_hop_by_hop` and `add_forwarded`
    /// apply to header maps: hop-by-hop headers and those `Connection`
    /// names go (whichever comes first), the proxy's own headers are
    /// replaced, the prior X-Forwarded-For lines become one chain, and
    /// everything else passes in its order, as the client wrote it.
    #[test]
    fn the_upstream_head_is_rewritten_as_header_maps_are() {
        let head = b"GET /a/b?c=d HTTP/1.1\r\n\
            X-Private: secret\r\n\
            Host: app.example:8443\r\n\
            Connection: keep-alive, X-Private\r\n\
            connection: x-other\r\n\
            Keep-Alive: timeout=5\r\n\
            x-other: also secret\r\n\
            Proxy-Authorization: Basic eA==\r\n\
            TE: trailers\r\n\
            Trailer: x-checksum\r\n\
            X-Forwarded-For: 203.0.113.7\r\n\
            X-Forwarded-For: 198.51.100.2\r\n\
            X-Forwarded-Proto: http\r\n\
            X-Forwarded-Host: spoofed.example\r\n\
            X-Client-Cert-Subject: CN=forged\r\n\
            Authorization: Bearer t0ken\r\n\
            Last-Event-ID: 42\r\n\
            Cookie: a=b\r\n\r\n";
        let subject = HeaderValue::from_static("CN=client");
        let forwarding = Forwarding {
            base_path: "/base",
            client_ip: "::1".parse().unwrap(),
            client_subject: Some(&subject),
        };
        let Sniffed::Lean(lean) = sniff(head, &forwarding) else {
            panic!("not lean");
        };
        assert_eq!(
            upstream_text(&lean),
            "GET /base/a/b?c=d HTTP/1.1\r\n\
             host: app.example:8443\r\n\
             Authorization: Bearer t0ken\r\n\
             Last-Event-ID: 42\r\n\
             Cookie: a=b\r\n\
             x-forwarded-for: 203.0.113.7, 198.51.100.2, ::1\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: app.example:8443\r\n\
             x-client-cert-subject: CN=client\r\n\r\n"
        );
    }

    #[test]
    fn a_chain_that_connection_names_is_dropped_as_header_maps_drop_it() {
        let lean = lean(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: X-Forwarded-For\r\n\r\n",
        );
        assert!(
            upstream_text(&lean).contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{}",
            upstream_text(&lean)
        );
    }

    #[test]
    fn a_request_without_host_gets_its_error() {
        let lean = lean(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n");
        assert!(matches!(
            lean.upstream_head,
            Err(ProxyError::BadRequest("missing Host"))
        ));
    }

    #[test]
    fn targets_are_taken_as_the_http_crate_takes_them() {
        let plain = lean(b"GET /a%20b/c;d?e=f&g=h:i@j HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(plain.target, "/a%20b/c;d?e=f&g=h:i@j");
        // Characters outside RFC 3986 that the http crate accepts, and a
        // fragment, which it drops.
        let unusual = lean(b"GET /x{y}|\"z\"#frag HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(unusual.target, "/x{y}|\"z\"");
        assert!(upstream_text(&unusual).starts_with("GET /x{y}|\"z\" HTTP/1.1\r\n"));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let others: [&[u8]; 9] = [
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        ];
        for head in others {
            assert!(
                matches!(sniff(head, &forwarding()), Sniffed::Other),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn oversized_heads_go_to_hyper() {
        let mut head = b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nX-Big: ".to_vec();
        head.resize(MAX_HEAD_BYTES + 1, b'a');
        assert!(matches!(sniff(&head, &forwarding()), Sniffed::Other));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nAccept: text/event-stream\r\n{many}\r\n");
        assert!(matches!(
            sniff(head.as_bytes(), &forwarding()),
            Sniffed::Other
        ));
    }

    #[test]
    fn the_head_as_a_request_for_shared_streams() {
        let request = http_request(EVENT_SOURCE).unwrap();
        assert_eq!(request.uri(), "/events?x=1");
        assert_eq!(request.headers()["last-event-id"], "7");
        assert_eq!(request.headers()["host"], "example.com");
    }
}
