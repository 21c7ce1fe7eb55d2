//! A request head on an HTTP/1.1 connection: is it a plain bodiless GET the
//! lean path serves, or something to hand to hyper untouched?

use bytes::Bytes;
use http::header;
use http::{Method, Request, Uri, Version};

use crate::headers::{list_elements, map_from_httparse, same_place};

/// Heads larger than this go to hyper, which enforces the real limits
/// (and answers 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// hyper's default header count limit; more goes to hyper, which answers 431.
const MAX_HEADERS: usize = 100;

#[derive(Debug)]
pub enum Sniffed {
    /// A complete plain GET; the head was the first `head_len` bytes.
    Lean {
        request: Box<Request<()>>,
        head_len: usize,
        /// False when the client sent `Connection: close`.
        keep_alive: bool,
        /// It asked for `text/event-stream` (an EventSource).
        event_source: bool,
    },
    /// Anything else, including malformed heads: hyper serves it (and rejects
    /// what is malformed) from the same bytes.
    Other,
    /// The head is not complete yet.
    Partial,
}

/// Decides from the bytes read so far. Only the plainest requests qualify:
/// GET, HTTP/1.1, origin-form target, no body and nothing that changes the
/// connection (Upgrade, Expect). Everything unusual is hyper's to judge.
pub fn sniff(buf: &[u8]) -> Sniffed {
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
    let Some(path) = parsed.path.filter(|path| path.starts_with('/')) else {
        return Sniffed::Other;
    };
    // One copy of the head, which the target and the header values share.
    let head = Bytes::copy_from_slice(&buf[..head_len]);
    let Some(map) = map_from_httparse(parsed.headers, buf, &head) else {
        return Sniffed::Other;
    };
    let Some(uri) = same_place(path.as_bytes(), buf, &head)
        .and_then(|target| Uri::from_maybe_shared(target).ok())
    else {
        return Sniffed::Other;
    };

    let mut wants_event_stream = false;
    let mut keep_alive = true;
    for (name, value) in &map {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Sniffed::Other;
        }
        if name == header::ACCEPT && contains_ignore_case(value.as_bytes(), b"text/event-stream") {
            wants_event_stream = true;
        }
        if name == header::CONNECTION
            && list_elements(value).any(|token| token.eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }

    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Sniffed::Lean {
        request: Box::new(request),
        head_len,
        keep_alive,
        event_source: wants_event_stream,
    }
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

    #[test]
    fn event_source_request_qualifies() {
        let mut bytes = EVENT_SOURCE.to_vec();
        bytes.extend_from_slice(b"GET /next");
        match sniff(&bytes) {
            Sniffed::Lean {
                request,
                head_len,
                keep_alive,
                event_source,
            } => {
                assert_eq!(head_len, EVENT_SOURCE.len());
                assert!(keep_alive);
                assert!(event_source);
                assert_eq!(request.uri(), "/events?x=1");
                assert_eq!(request.headers()["last-event-id"], "7");
                assert_eq!(request.headers()["host"], "example.com");
            }
            other => panic!("expected Lean, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_get_qualifies_too() {
        let head = b"GET /static HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        assert!(matches!(
            sniff(head),
            Sniffed::Lean {
                event_source: false,
                keep_alive: true,
                ..
            }
        ));
    }

    #[test]
    fn partial_head_waits_for_more() {
        assert!(matches!(
            sniff(&EVENT_SOURCE[..EVENT_SOURCE.len() - 2]),
            Sniffed::Partial
        ));
    }

    #[test]
    fn connection_close_is_noticed() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: TEXT/Event-Stream\r\nConnection: keep-alive, Close\r\n\r\n";
        assert!(matches!(
            sniff(head),
            Sniffed::Lean {
                keep_alive: false,
                ..
            }
        ));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let others: [&[u8]; 8] = [
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\nAccept: text/event-stream\r\n\r\n",
        ];
        for head in others {
            assert!(
                matches!(sniff(head), Sniffed::Other),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn oversized_heads_go_to_hyper() {
        let mut head = b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\nX-Big: ".to_vec();
        head.resize(MAX_HEAD_BYTES + 1, b'a');
        assert!(matches!(sniff(&head), Sniffed::Other));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nAccept: text/event-stream\r\n{many}\r\n");
        assert!(matches!(sniff(head.as_bytes()), Sniffed::Other));
    }
}
