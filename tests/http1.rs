//! ssegate's own HTTP/1.1 server on the wire. Every HTTP/1.1 connection
//! (ALPN `http/1.1`, or none) is served by it, whatever its requests look
//! like; hyper serves HTTP/2 only. These tests pin down the wire format of
//! what it writes: the exact status line and headers (framing, `Date`,
//! hop-by-hop fields dropped, HSTS), one chunk per upstream write of an event
//! stream (those read together leave in one TLS record), the last chunk,
//! Content-Length for known lengths, no body for 204 and 304, close-delimited
//! bodies for HTTP/1.0; and its behaviour around them: keep-alive and
//! pipelining, requests of every shape (bodies, `Expect`, `Upgrade`,
//! absolute-form targets, HEAD, HTTP/1.0), malformed and oversized heads,
//! hang-ups and upstream failures, shared streams, drain, heartbeats and the
//! header read timeout.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::Version;
use tokio::time::Instant;

/// A date the upstream sets itself, which must reach the client unchanged.
const FIXED_DATE: &str = "Thu, 01 Jan 2015 00:00:00 GMT";
/// The proxy's own error bodies (src/error.rs).
const BAD_GATEWAY_BODY: &str = "502 Bad Gateway\n";
const BAD_REQUEST_BODY: &str = "400 Bad Request\n";
const TOO_LARGE_BODY: &str = "431 Request Header Fields Too Large\n";
/// How soon the upstream request must end after the client hangs up.
const HANGUP_LIMIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- upstream

/// An upstream with an event stream under `/events` and `/live` (fed by
/// the test), an ordinary body of unknown length under `/json-stream` (also
/// written by the test), requests under `/late` held until the test answers
/// them, and fixed answers elsewhere: `/echo` answers "METHOD
/// path-and-query body", `/missing` 404, `/no-content` 204, `/not-modified`
/// 304, `/dated` a body with its own Date, anything else "plain\n". Every
/// request is reported (`next_request`).
async fn start_upstream() -> TestUpstream {
    TestUpstream::builder()
        .on("/json-stream", Reply::stream("application/json"))
        .on("/events*", Reply::event_stream())
        .on("/live*", Reply::event_stream())
        .on("/late*", Reply::hold())
        .on(
            "/echo",
            Reply::with(|req| {
                Reply::text(format!("{} {} {}", req.method, req.target, req.body_text()))
            }),
        )
        .on("/missing", Reply::text("no such stream\n").with_status(404))
        .on("/no-content", Reply::status(204))
        .on("/not-modified", Reply::status(304).header("etag", "\"v1\""))
        .on("/dated", Reply::text("dated\n").header("date", FIXED_DATE))
        .otherwise(Reply::text("plain\n"))
        .start()
        .await
}

// ---------------------------------------------------------------- requests

/// An EventSource request head for `path` with extra header lines.
fn eventsource_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut head =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A plain GET for `path` (no Accept).
fn plain_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------- assertions

/// Exactly one Date header, an IMF-fixdate within a few seconds of now.
fn assert_fresh_date(head: &RawHead) {
    let date = head
        .get("date")
        .unwrap_or_else(|| panic!("no date header: {:?}", head.raw));
    let secs = parse_imf_fixdate(date).unwrap_or_else(|| panic!("not an IMF-fixdate: {date:?}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    assert!(secs.abs_diff(now) <= 5, "date {date:?} is not now");
}

/// The head of a relayed event stream: 200, chunked, no length, no
/// hop-by-hop headers, a fresh date, and `connection` as given.
fn assert_event_stream_head(head: &RawHead, connection: Option<&str>) {
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(
        head.get("content-type"),
        Some("text/event-stream"),
        "{:?}",
        head.raw
    );
    assert_eq!(
        head.get("cache-control"),
        Some("no-cache"),
        "{:?}",
        head.raw
    );
    assert_eq!(head.all("transfer-encoding"), ["chunked"], "{:?}", head.raw);
    assert!(!head.has("content-length"), "{:?}", head.raw);
    assert!(!head.has("keep-alive"), "{:?}", head.raw);
    assert_eq!(head.get("connection"), connection, "{:?}", head.raw);
    assert_fresh_date(head);
}

/// The connection still serves a plain keep-alive request.
async fn assert_keeps_serving(conn: &mut TlsConn, what: &str) {
    conn.write(&plain_request("/plain")).await;
    let response = conn.read_response(false).await;
    assert_eq!(
        response.head.start_line, "HTTP/1.1 200 OK",
        "{what}: {:?}",
        response.head.raw
    );
    assert_eq!(response.head.get("content-length"), Some("6"), "{what}");
    assert_eq!(response.body_text(), "plain\n", "{what}");
}

/// Waits until the proxy lets go of an upstream response cut short: it
/// closes the connection (one in the middle of a response cannot be used
/// again).
async fn assert_upstream_released(stream: UpstreamStream, what: &str) {
    let started = Instant::now();
    let released = tokio::time::timeout(HANGUP_LIMIT, stream.closed()).await;
    assert!(
        released.is_ok(),
        "{what}: the upstream request was still open {:?} later",
        started.elapsed()
    );
}

/// Opens `/events`-like `path` on a fresh connection and reads the head.
async fn open_stream(
    addr: std::net::SocketAddr,
    upstream: &mut TestUpstream,
    path: &str,
) -> (TlsConn, UpstreamStream) {
    let mut conn = raw_connect(addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request(path, &[])).await;
    let stream = upstream.next_stream_for(path).await;
    let head = conn.read_response_head().await;
    assert_event_stream_head(&head, None);
    (conn, stream)
}

// ---------------------------------------------------------------- wire format

#[tokio::test]
async fn event_stream_is_chunked_one_chunk_per_upstream_write_and_ends_with_the_last_chunk() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events").await;

    // Each write arrives on its own before the next is made: no batching,
    // and no waiting for an event's end.
    for write in ["id: 1\ndata: one\n\n", "id: 2\n", "data: two\n\n", ":\n\n"] {
        stream.send(write).await;
        assert_eq!(conn.chunk_text().await, write);
    }
    assert!(stream.is_open());

    // The upstream ends the stream: the client's body ends cleanly.
    let upstream_conn = stream.request.conn;
    stream.end().await;
    conn.last_chunk().await;
    assert_keeps_serving(&mut conn, "after the event stream ended").await;
    // The upstream response was released whole: its connection, back in
    // the pool, carried the next request.
    let next = upstream.take_request(|r| r.target == "/plain").await;
    assert_eq!(
        next.conn, upstream_conn,
        "the upstream response was not released"
    );
}

/// Counts the TLS records that come in through it, from their headers.
struct RecordCounter {
    tcp: tokio::net::TcpStream,
    records: Arc<AtomicUsize>,
    /// The next record's header bytes seen so far.
    header: Vec<u8>,
    /// Bytes of the current record's body still to come.
    body_left: usize,
}

impl RecordCounter {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
                self.records.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl tokio::io::AsyncRead for RecordCounter {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        this.observe(&buf.filled()[before..]);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for RecordCounter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, bytes)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Catches: events that reach the proxy in one read leaving in a TLS
/// record (and a write) each, which caps a busy stream's event rate at the
/// proxy's writes per second. Each keeps its own chunk.
#[tokio::test]
async fn events_that_arrive_together_leave_in_one_tls_record() {
    const EVENTS: [&str; 3] = [
        "id: 1\ndata: a\n\n",
        "id: 2\ndata: b\n\n",
        "id: 3\ndata: c\n\n",
    ];
    // An upstream that sends the head at once; the test then writes all
    // three events (one chunk each) in a single write.
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::stream_head(
            200,
            &[("Content-Type", "text/event-stream")],
        ))
        .start()
        .await;
    let proxy = spawn_proxy(upstream.addr).await;

    let records = Arc::new(AtomicUsize::new(0));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect to proxy");
    let counted = RecordCounter {
        tcp,
        records: records.clone(),
        header: Vec::new(),
        body_left: 0,
    };
    let tls = tokio_rustls::TlsConnector::from(client_tls_config(&[b"http/1.1"]))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            counted,
        )
        .await
        .expect("TLS handshake with proxy");
    let mut conn = RawConn::new(tls);
    conn.write(&eventsource_request("/events/burst", &[])).await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    // Everything before the events (handshake, tickets, head) has arrived.
    let before = records.load(Ordering::SeqCst);

    let stream = upstream.next_stream_for("/events/burst").await;
    let burst: Vec<u8> = EVENTS
        .iter()
        .flat_map(|event| chunk_bytes(event.as_bytes()))
        .collect();
    stream.write_raw(&burst).await;
    for event in EVENTS {
        assert_eq!(conn.chunk_text().await, event);
    }
    assert_eq!(
        records.load(Ordering::SeqCst) - before,
        1,
        "three events read from the upstream at once took more than one TLS record"
    );
}

#[tokio::test]
async fn a_connection_without_alpn_is_http1_and_gets_the_same_wire_format() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[]).await;
    assert_eq!(conn.io.get_ref().1.alpn_protocol(), None);
    conn.write(&eventsource_request("/events/no-alpn", &[]))
        .await;
    let stream = upstream.next_stream_for("/events/no-alpn").await;
    assert_event_stream_head(&conn.read_response_head().await, None);

    stream.send("data: hello\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: hello\n\n");
    stream.end().await;
    conn.last_chunk().await;
    assert_keeps_serving(&mut conn, "no ALPN").await;
}

#[tokio::test]
async fn hsts_is_added_to_http1_event_streams() {
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.hsts = Some(bytes::Bytes::from_static(b"max-age=63072000"));
    let proxy = spawn_proxy_with(config).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/events/hsts", &[])).await;
    let stream = upstream.next_stream_for("/events/hsts").await;
    let head = conn.read_response_head().await;
    assert_event_stream_head(&head, None);
    assert_eq!(
        head.get("strict-transport-security"),
        Some("max-age=63072000")
    );
    stream.end().await;
    conn.last_chunk().await;
}

#[tokio::test]
async fn request_headers_are_rewritten_for_the_upstream() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    // Header names in mixed case; hop-by-hop headers the proxy must drop.
    conn.write(
        b"GET /events/h?x=1&y=%20 HTTP/1.1\r\n\
          host: example.test:8443\r\n\
          ACCEPT: text/html, text/event-stream;q=0.9\r\n\
          Last-Event-ID: 41\r\n\
          X-Forwarded-For: 203.0.113.7\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\n\
          Keep-Alive: 300\r\n\
          Proxy-Authorization: Basic eDp5\r\n\
          X-Client-Cert-Subject: CN=forged\r\n\
          Cookie: session=1\r\n\
          \r\n",
    )
    .await;
    let stream = upstream.next_stream_for("/events/h?x=1&y=%20").await;
    assert_eq!(stream.header("host"), Some("example.test:8443"));
    assert_eq!(stream.header("x-forwarded-host"), Some("example.test:8443"));
    assert_eq!(stream.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        stream.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(stream.header("last-event-id"), Some("41"));
    assert_eq!(
        stream.header("accept"),
        Some("text/html, text/event-stream;q=0.9")
    );
    assert_eq!(stream.header("cookie"), Some("session=1"));
    // The proxy may manage its own upstream connection (`Connection:
    // close` on a dedicated one), but never forwards the client's tokens.
    let connection = stream.header("connection").unwrap_or_default();
    assert!(
        !connection.to_ascii_lowercase().contains("x-hop"),
        "the client's Connection reached the upstream: {connection:?}"
    );
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "x-client-cert-subject",
    ] {
        assert_eq!(stream.header(gone), None, "{gone} reached the upstream");
    }
    let seen = upstream.next_request().await;
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/events/h?x=1&y=%20");

    assert_event_stream_head(&conn.read_response_head().await, None);
    stream.send("data: ok\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: ok\n\n");
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_removed_and_a_date_is_added() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/events/raw?q=1", &[]))
        .await;

    let mut up = upstream.next().await;
    assert_eq!(up.request.start_line, "GET /events/raw?q=1 HTTP/1.1");
    assert_eq!(up.request.get("host"), Some("localhost"));
    assert_eq!(up.request.get("accept"), Some("text/event-stream"));
    // No Date: the proxy adds one. Its own framing replaces the upstream's.
    up.write(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/event-stream\r\n\
          Cache-Control: no-cache\r\n\
          Connection: keep-alive, X-Secret\r\n\
          Keep-Alive: timeout=5\r\n\
          X-Secret: 1\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Multi: a\r\n\
          X-Multi: b\r\n\
          Transfer-Encoding: chunked\r\n\
          \r\n",
    )
    .await;
    let head = conn.read_response_head().await;
    assert_event_stream_head(&head, None);
    for gone in ["x-secret", "proxy-connection"] {
        assert!(!head.has(gone), "{gone} reached the client: {:?}", head.raw);
    }
    assert_eq!(head.all("x-multi"), ["a", "b"], "{:?}", head.raw);

    // Upstream chunks are re-framed one for one.
    for write in ["id: 1\ndata: one\n\n", "id: 2\n", "data: two\n\n"] {
        up.write_chunk(write).await;
        assert_eq!(conn.chunk_text().await, write);
    }
    up.write(b"0\r\n\r\n").await;
    conn.last_chunk().await;
}

#[tokio::test]
async fn connection_close_from_the_client_is_announced_and_honoured() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request(
        "/events/close",
        &["Connection: close"],
    ))
    .await;
    let stream = upstream.next_stream_for("/events/close").await;
    assert_event_stream_head(&conn.read_response_head().await, Some("close"));

    stream.send("data: last\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: last\n\n");
    stream.end().await;
    conn.last_chunk().await;
    conn.assert_closed("after a Connection: close response")
        .await;
}

// ---------------------------------------------------------------- ordinary answers

#[tokio::test]
async fn a_known_length_answer_gets_content_length_and_keeps_the_upstream_date() {
    let upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/dated", &[])).await;
    let response = conn.read_response(false).await;
    let head = &response.head;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(head.get("content-length"), Some("6"), "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    assert_eq!(head.all("date"), [FIXED_DATE], "{:?}", head.raw);
    assert_eq!(head.get("content-type"), Some("text/plain"));
    assert_eq!(response.body_text(), "dated\n");
    assert_keeps_serving(&mut conn, "after a known-length answer").await;
}

#[tokio::test]
async fn a_404_to_an_eventsource_request_then_the_connection_is_kept() {
    let upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/missing", &[])).await;
    let response = conn.read_response(false).await;
    let head = &response.head;
    assert_eq!(head.start_line, "HTTP/1.1 404 Not Found", "{:?}", head.raw);
    assert_eq!(head.get("content-length"), Some("15"), "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    assert_eq!(head.get("connection"), None, "{:?}", head.raw);
    assert_fresh_date(head);
    assert_eq!(response.body_text(), "no such stream\n");
    assert_keeps_serving(&mut conn, "after a 404").await;
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    let upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    for (path, status_line) in [
        ("/no-content", "HTTP/1.1 204 No Content"),
        ("/not-modified", "HTTP/1.1 304 Not Modified"),
    ] {
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(&eventsource_request(path, &[])).await;
        let head = conn.read_response_head().await;
        assert_eq!(head.start_line, status_line, "{:?}", head.raw);
        assert!(!head.has("transfer-encoding"), "{path}: {:?}", head.raw);
        assert!(!head.has("content-length"), "{path}: {:?}", head.raw);
        assert_fresh_date(&head);
        if path == "/not-modified" {
            assert_eq!(head.get("etag"), Some("\"v1\""));
        }
        // Not a byte of body: the next response follows the head directly.
        assert_keeps_serving(&mut conn, path).await;
    }
}

#[tokio::test]
async fn an_ordinary_body_of_unknown_length_is_chunked() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/json-stream", &[])).await;
    let stream = upstream.next_stream_for("/json-stream").await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(head.get("content-type"), Some("application/json"));
    assert_eq!(head.all("transfer-encoding"), ["chunked"], "{:?}", head.raw);
    assert!(!head.has("content-length"), "{:?}", head.raw);
    assert!(!head.has("connection"), "{:?}", head.raw);
    assert_fresh_date(&head);

    // Ordinary bodies may be batched: only the bytes and the end count.
    stream.send("{\"a\":").await;
    stream.send("1}").await;
    stream.end().await;
    assert_eq!(conn.chunks_to_end().await.concat(), b"{\"a\":1}");
    assert_keeps_serving(&mut conn, "after an ordinary chunked body").await;
}

#[tokio::test]
async fn upstream_down_gives_502_with_a_plain_text_body() {
    let proxy = spawn_proxy(dead_upstream_addr().await).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    for attempt in 1..=2 {
        // The second on the same connection: a 502 ends cleanly too.
        conn.write(&eventsource_request("/events", &[])).await;
        let response = conn.read_response(false).await;
        let head = &response.head;
        assert_eq!(
            head.start_line, "HTTP/1.1 502 Bad Gateway",
            "attempt {attempt}: {:?}",
            head.raw
        );
        assert_eq!(head.get("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(
            head.get("content-length"),
            Some(BAD_GATEWAY_BODY.len().to_string().as_str())
        );
        assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
        assert_fresh_date(head);
        assert_eq!(response.body_text(), BAD_GATEWAY_BODY);
    }
}

// ---------------------------------------------------------------- keep-alive and pipelining

#[tokio::test]
async fn a_request_pipelined_during_the_stream_is_answered_after_it() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events").await;
    stream.send("id: 1\ndata: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\ndata: one\n\n");

    // Written while the stream is open; answered once it has ended.
    conn.write(b"GET /echo?second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    stream.send("id: 2\ndata: two\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 2\ndata: two\n\n");
    stream.end().await;
    conn.last_chunk().await;
    let second = conn.read_response(false).await;
    assert_eq!(second.head.start_line, "HTTP/1.1 200 OK");
    assert_eq!(second.body_text(), "GET /echo?second ");

    // A third, again an EventSource request, on the same connection.
    conn.write(&eventsource_request("/events/third", &[])).await;
    let third = upstream.next_stream_for("/events/third").await;
    assert_event_stream_head(&conn.read_response_head().await, None);
    third.send("data: three\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: three\n\n");
    third.end().await;
    conn.last_chunk().await;
    assert_keeps_serving(&mut conn, "after three requests").await;
}

#[tokio::test]
async fn requests_pipelined_in_one_write_are_all_answered_in_order() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    let mut burst = eventsource_request("/missing", &[]);
    burst.extend_from_slice(b"GET /echo?2 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    burst.extend_from_slice(
        b"POST /echo?3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    );
    burst.extend_from_slice(&eventsource_request("/echo?4", &[]));
    conn.write(&burst).await;

    let first = conn.read_response(false).await;
    assert_eq!(first.head.start_line, "HTTP/1.1 404 Not Found");
    assert_eq!(first.body_text(), "no such stream\n");
    for expected in ["GET /echo?2 ", "POST /echo?3 hello", "GET /echo?4 "] {
        let response = conn.read_response(false).await;
        assert_eq!(response.head.start_line, "HTTP/1.1 200 OK", "{expected}");
        assert_eq!(response.body_text(), expected);
    }
    let methods_and_bodies: Vec<(String, String, Bytes)> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let seen = upstream.next_request().await;
            out.push((seen.method, seen.target, seen.body));
        }
        out
    };
    assert_eq!(
        methods_and_bodies,
        [
            ("GET".into(), "/missing".into(), Bytes::new()),
            ("GET".into(), "/echo?2".into(), Bytes::new()),
            (
                "POST".into(),
                "/echo?3".into(),
                Bytes::from_static(b"hello")
            ),
            ("GET".into(), "/echo?4".into(), Bytes::new()),
        ]
    );
    assert!(upstream.saw_nothing_more());
}

#[tokio::test]
async fn hyper_client_reuses_the_connection_after_an_event_stream() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::h1(proxy.addr).await;
    let response = client
        .get_with("/events/h1", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_11);
    let stream = upstream.next_stream_for("/events/h1").await;
    let mut reader = EventReader::new(response.into_body());
    for id in 1..=3 {
        assert!(stream.write_event(id, "tick", &[&format!("n{id}")]).await);
        let event = reader.next_event(WAIT_LIMIT).await.expect("event");
        assert_eq!(event.text, event_text(id, "tick", &format!("n{id}")));
    }
    stream.end().await;
    assert!(
        reader.wait_end(WAIT_LIMIT).await,
        "the stream ended cleanly"
    );
    assert!(reader.leftover().is_empty());

    let response = tokio::time::timeout(WAIT_LIMIT, client.get("/plain"))
        .await
        .expect("second response in time");
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "plain\n");
    let Client::H1(h1) = &client else {
        unreachable!()
    };
    assert!(!h1.conn.is_finished(), "the connection was closed");
}

// ---------------------------------------------------------------- requests of every shape

#[tokio::test]
async fn requests_with_bodies_upgrades_other_targets_and_versions_are_forwarded() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    const ACCEPT: &str = "Accept: text/event-stream\r\n";
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "POST",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}Content-Length: 5\r\n\r\nhello"),
            "HTTP/1.1 200 OK",
            "POST /echo hello",
        ),
        (
            "GET with Content-Length",
            format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}Content-Length: 5\r\n\r\nhello"),
            "HTTP/1.1 200 OK",
            "GET /echo hello",
        ),
        (
            // Forwarded, as nginx does, rather than lost.
            "GET with Transfer-Encoding",
            format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "HTTP/1.1 200 OK",
            "GET /echo hello",
        ),
        (
            "GET with Expect",
            format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            "HTTP/1.1 200 OK",
            "GET /echo hello",
        ),
        (
            "GET with Upgrade",
            format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            "HTTP/1.1 200 OK",
            "GET /echo ",
        ),
        (
            "absolute-form target",
            format!("GET https://localhost/echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}\r\n"),
            "HTTP/1.1 200 OK",
            "GET /echo ",
        ),
        (
            "Accept without text/event-stream",
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n".into(),
            "HTTP/1.1 200 OK",
            "GET /echo ",
        ),
        (
            "HTTP/1.0",
            format!("GET /echo HTTP/1.0\r\nHost: localhost\r\n{ACCEPT}\r\n"),
            // The proxy's own version (RFC 9112 §2.5), as nginx answers.
            "HTTP/1.1 200 OK",
            "GET /echo ",
        ),
        (
            "HEAD",
            format!("HEAD /echo HTTP/1.1\r\nHost: localhost\r\n{ACCEPT}\r\n"),
            "HTTP/1.1 200 OK",
            "",
        ),
    ];
    for (what, request, status_line, body) in cases {
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(request.as_bytes()).await;
        let response = conn.read_response(what == "HEAD").await;
        assert_eq!(
            response.head.start_line, status_line,
            "{what}: {:?}",
            response.head.raw
        );
        assert_eq!(response.body_text(), body, "{what}");
        let seen = upstream.next_request().await;
        let method = request.split(' ').next().unwrap_or_default();
        assert_eq!(seen.method, method, "{what}");
        assert_eq!(seen.target, "/echo", "{what}");
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{what}");
        assert_eq!(seen.header("upgrade"), None, "{what}");
        if what == "HTTP/1.0" {
            // No keep-alive asked for: HTTP/1.0 closes.
            conn.assert_closed(what).await;
        } else {
            // Nothing was lost or left over between the two requests.
            assert_keeps_serving(&mut conn, what).await;
            upstream.next_request().await;
        }
    }
    assert!(upstream.saw_nothing_more());
}

#[tokio::test]
async fn an_http10_eventsource_request_is_streamed_without_chunking_until_close() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"GET /events/old HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let stream = upstream.next_stream_for("/events/old").await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    assert!(!head.has("content-length"), "{:?}", head.raw);
    stream.send("data: one\n\n").await;
    assert_eq!(conn.read_exact(11).await, b"data: one\n\n");
    stream.end().await;
    conn.assert_closed("end of an HTTP/1.0 stream").await;
}

#[tokio::test]
async fn malformed_or_hostless_eventsource_requests_get_400() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // Malformed: the head parser's 400.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"GET /events HTTP/1.1\r\nHost localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let head = conn.read_response_head().await;
    assert!(
        head.start_line.starts_with("HTTP/1.1 400 "),
        "{:?}",
        head.raw
    );

    // Well-formed but without Host: the proxy's 400, with its body.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.start_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(
        response.head.get("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(response.body_text(), BAD_REQUEST_BODY);
    assert!(
        upstream.saw_nothing_more(),
        "a bad request reached the upstream"
    );
}

// ---------------------------------------------------------------- hang-ups and failures

#[tokio::test]
async fn client_hangup_closes_the_upstream_request() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // After an event...
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events/a").await;
    stream.send("id: 1\ndata: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\ndata: one\n\n");
    drop(conn);
    // ...with a silent upstream: the proxy must notice without writing.
    assert_upstream_released(stream, "hang-up after an event").await;

    // ...and before any event.
    let (conn, stream) = open_stream(proxy.addr, &mut upstream, "/events/b").await;
    drop(conn);
    assert_upstream_released(stream, "hang-up before any event").await;
}

/// Beyond the literal spec (the connection is watched while the upstream
/// is asked): a client that leaves before the upstream's response head does
/// not leave the upstream request behind.
#[tokio::test]
async fn client_hangup_before_the_response_head_releases_the_upstream_request() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/late/hangup", &[])).await;
    let held = upstream.next_stream_for("/late/hangup").await;
    drop(conn);
    let released = tokio::time::timeout(HANGUP_LIMIT, held.closed()).await;
    assert!(
        released.is_ok(),
        "the upstream request was still open {HANGUP_LIMIT:?} after the client left"
    );
}

#[tokio::test]
async fn upstream_failing_mid_event_stream_ends_the_body_cleanly() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/events", &[])).await;
    let mut up = upstream.next().await;
    up.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
          Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert_event_stream_head(&conn.read_response_head().await, None);
    up.write_chunk("id: 1\ndata: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\ndata: one\n\n");
    up.write_chunk("id: 2\n").await;
    assert_eq!(conn.chunk_text().await, "id: 2\n");

    // The upstream dies in the middle of its chunked body.
    drop(up);
    conn.last_chunk().await;

    // The client's connection carries on (to a fresh upstream connection).
    conn.write(&plain_request("/plain")).await;
    let mut up = upstream.next().await;
    assert_eq!(up.request.start_line, "GET /plain HTTP/1.1");
    up.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplain\n")
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.start_line, "HTTP/1.1 200 OK");
    assert_eq!(response.body_text(), "plain\n");
}

#[tokio::test]
async fn upstream_failing_mid_ordinary_body_cuts_the_connection() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // Chunked: no terminating chunk, the connection is cut.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/download", &[])).await;
    let mut up = upstream.next().await;
    up.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(head.all("transfer-encoding"), ["chunked"], "{:?}", head.raw);
    up.write_chunk("partial").await;
    drop(up);
    let mut received = Vec::new();
    loop {
        match conn.try_chunk(WAIT_LIMIT).await {
            ChunkRead::Data(data) => received.extend_from_slice(&data),
            ChunkRead::Closed => break,
            ChunkRead::Last => panic!("a failed body ended with the last chunk"),
            ChunkRead::Silent => panic!("a failed body was neither cut nor ended"),
        }
    }
    assert!(
        b"partial".starts_with(&received),
        "got {:?}",
        String::from_utf8_lossy(&received)
    );

    // Known length: fewer bytes than announced, then the cut.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/download-fixed", &[]))
        .await;
    let mut up = upstream.next().await;
    up.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
          Content-Length: 100\r\n\r\n0123456789",
    )
    .await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(head.get("content-length"), Some("100"), "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    drop(up);
    let (received, closed) = conn.read_to_close(WAIT_LIMIT).await;
    assert!(closed, "a failed fixed-length body was not cut");
    assert!(
        b"0123456789".starts_with(&received),
        "got {:?}",
        String::from_utf8_lossy(&received)
    );
}

// ---------------------------------------------------------------- shared streams

#[tokio::test]
async fn shared_stream_clients_get_the_same_events_from_one_upstream_request() {
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.shared_prefixes = vec!["/live".into()];
    let proxy = spawn_proxy_with(config).await;
    const PATH: &str = "/live/feed";

    let mut a = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    a.write(&eventsource_request(PATH, &["Cookie: session=a"]))
        .await;
    let stream = upstream.next_stream_for(PATH).await;
    assert_eq!(stream.header("cookie"), None);
    assert_eq!(stream.header("accept"), Some("text/event-stream"));
    assert_event_stream_head(&a.read_response_head().await, None);
    let mut b = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    b.write(&eventsource_request(PATH, &[])).await;
    assert_event_stream_head(&b.read_response_head().await, None);

    for event in ["id: 1\ndata: one\n\n", "id: 2\ndata: two\n\n"] {
        stream.send(event).await;
        assert_eq!(a.chunk_text().await, event);
        assert_eq!(b.chunk_text().await, event);
    }

    // A reconnecting client resumes from the replay buffer.
    let mut c = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    c.write(&eventsource_request(PATH, &["Last-Event-ID: 1"]))
        .await;
    assert_event_stream_head(&c.read_response_head().await, None);
    assert_eq!(c.chunk_text().await, "id: 2\ndata: two\n\n");
    stream.send("id: 3\ndata: three\n\n").await;
    for conn in [&mut a, &mut b, &mut c] {
        assert_eq!(conn.chunk_text().await, "id: 3\ndata: three\n\n");
    }

    let stats = proxy.hub.stats(PATH).expect("the shared stream exists");
    assert_eq!(stats.upstream_requests, 1, "{stats:?}");
    assert_eq!(stats.subscribers, 3, "{stats:?}");
    upstream.next_request().await;
    assert!(upstream.saw_nothing_more(), "a second upstream request");
}

// ---------------------------------------------------------------- drain

#[tokio::test]
async fn shutdown_ends_a_stream_at_the_event_boundary_with_retry_and_closes() {
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.drain_retry = Some(Duration::from_millis(250));
    let mut proxy = spawn_proxy_with(config).await;
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events").await;
    stream.send("id: 1\ndata: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\ndata: one\n\n");
    stream.send("id: 2\n").await;
    assert_eq!(conn.chunk_text().await, "id: 2\n");

    let task = proxy.task.take().expect("proxy task");
    proxy.shutdown.cancel();
    // In the middle of an event: nothing ends until the event does.
    conn.assert_silent(Duration::from_millis(300), "mid-event at shutdown")
        .await;
    stream.send("data: two\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: two\n\n");
    assert_eq!(conn.chunks_to_end().await.concat(), b"retry: 250\n\n");
    conn.assert_closed("after the drained stream").await;
    assert_upstream_released(stream, "drained stream").await;
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the proxy finishes draining")
        .expect("proxy task");
}

#[tokio::test]
async fn shutdown_at_an_event_boundary_ends_the_stream_at_once() {
    let mut upstream = start_upstream().await;
    let mut proxy = spawn_proxy(upstream.addr).await;
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events").await;
    stream.send("id: 1\ndata: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\ndata: one\n\n");

    let task = proxy.task.take().expect("proxy task");
    proxy.shutdown.cancel();
    // No drain_retry: no retry line, just the end.
    conn.last_chunk().await;
    conn.assert_closed("after the drained stream").await;
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the proxy finishes draining")
        .expect("proxy task");
}

#[tokio::test]
async fn a_response_head_written_during_shutdown_says_connection_close() {
    let mut upstream = start_upstream().await;
    let mut proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&eventsource_request("/late/drain", &[])).await;
    let mut held = upstream.next_stream_for("/late/drain").await;

    let task = proxy.task.take().expect("proxy task");
    proxy.shutdown.cancel();
    until_refused(proxy.addr).await;
    // Only now the upstream answers: the stream is drained at once.
    held.start(Reply::event_stream()).await;
    let stream = held;
    assert_event_stream_head(&conn.read_response_head().await, Some("close"));
    conn.last_chunk().await;
    conn.assert_closed("after a response during shutdown").await;
    assert_upstream_released(stream, "drained at once").await;
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("the proxy finishes draining")
        .expect("proxy task");
}

/// A new connection that has not sent a request (a browser's preconnect)
/// does not hold up the drain until the header read timeout.
#[tokio::test]
async fn shutdown_closes_a_new_connection_that_has_sent_nothing_at_once() {
    const PROMPTLY: Duration = Duration::from_secs(2);
    let upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.header_read = Duration::from_secs(30);
    let mut proxy = spawn_proxy_with(config).await;
    // The handshake is done, so the proxy has accepted the connection.
    let mut silent = raw_connect(proxy.addr, &[b"http/1.1"]).await;

    let task = proxy.task.take().expect("proxy task");
    let started = Instant::now();
    proxy.shutdown.cancel();
    let (data, closed) = silent.read_to_close(PROMPTLY).await;
    assert!(
        closed,
        "a connection without a request was still open {PROMPTLY:?} into the drain"
    );
    assert!(data.is_empty(), "{:?}", String::from_utf8_lossy(&data));
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("the drain was held up")
        .expect("proxy task");
    assert!(started.elapsed() < PROMPTLY);
}

// ---------------------------------------------------------------- heartbeats

#[tokio::test]
async fn heartbeats_are_comment_chunks_written_only_between_events() {
    const HEARTBEAT: Duration = Duration::from_millis(150);
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.heartbeat = Some(HEARTBEAT);
    let proxy = spawn_proxy_with(config).await;
    let started = Instant::now();
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events").await;

    assert_eq!(conn.chunk_text().await, ":\n\n");
    assert!(
        started.elapsed() >= HEARTBEAT,
        "heartbeat after only {:?}",
        started.elapsed()
    );
    stream.send("id: 1\n").await;
    assert_eq!(conn.chunk_text().await, "id: 1\n");
    conn.assert_silent(HEARTBEAT * 3, "no heartbeat inside an event")
        .await;
    stream.send("data: one\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: one\n\n");
    assert_eq!(conn.chunk_text().await, ":\n\n");
}

// ---------------------------------------------------------------- request heads

#[tokio::test]
async fn header_read_timeout_disconnects_half_sent_and_trickled_heads() {
    const HEADER_READ: Duration = Duration::from_millis(400);
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.header_read = HEADER_READ;
    let proxy = spawn_proxy_with(config).await;

    // Half a head, then nothing.
    let mut half = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    let connected = Instant::now();
    half.write(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n")
        .await;
    let (data, closed) = half.read_to_close(WAIT_LIMIT).await;
    let after = connected.elapsed();
    assert!(closed, "a half-sent head was still open after {after:?}");
    assert!(
        after >= HEADER_READ - Duration::from_millis(100),
        "closed after only {after:?}"
    );
    assert!(
        data.is_empty() || data.starts_with(b"HTTP/1.1 408"),
        "unexpected answer: {:?}",
        String::from_utf8_lossy(&data)
    );

    // A whole head, one byte every 50 ms: the limit is for the whole head.
    let head = eventsource_request("/events", &[]);
    let mut trickle = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    let connected = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    while sent < head.len() {
        if !trickle.try_write(&head[sent..sent + 1]).await {
            closed = true;
            break;
        }
        sent += 1;
        let (data, gone) = trickle.read_to_close(Duration::from_millis(50)).await;
        assert!(
            data.is_empty() || data.starts_with(b"HTTP/1.1 408"),
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&data)
        );
        if gone {
            closed = true;
            break;
        }
    }
    let after = connected.elapsed();
    assert!(
        closed,
        "a trickled head was served after {after:?} ({sent} bytes)"
    );
    assert!(sent < head.len());
    assert!(
        after < HEADER_READ + Duration::from_secs(1),
        "closed only after {after:?}"
    );
    assert!(
        upstream.saw_nothing_more(),
        "a request reached the upstream"
    );

    // The proxy still serves.
    let (mut conn, stream) = open_stream(proxy.addr, &mut upstream, "/events/ok").await;
    stream.send("data: ok\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: ok\n\n");
}

#[tokio::test]
async fn an_oversized_eventsource_head_gets_431() {
    let upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    conn.write(&eventsource_request("/events", &[big.as_str()]))
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(
        response.head.start_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        response.head.get("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(response.body_text(), TOO_LARGE_BODY);
}

#[tokio::test]
async fn an_eventsource_head_of_30_kib_is_streamed() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    let big = "b".repeat(30 * 1024);
    let line = format!("X-Big: {big}");
    conn.write(&eventsource_request("/events/big", &[line.as_str()]))
        .await;
    let stream = upstream.next_stream_for("/events/big").await;
    assert_eq!(stream.header("x-big"), Some(big.as_str()));
    assert_eq!(stream.header("accept"), Some("text/event-stream"));
    assert_event_stream_head(&conn.read_response_head().await, None);
    stream.send("data: big\n\n").await;
    assert_eq!(conn.chunk_text().await, "data: big\n\n");
    stream.end().await;
    conn.last_chunk().await;
    assert_keeps_serving(&mut conn, "after a large head").await;
}

// ---------------------------------------------------------------- HTTP/2

/// For comparison: hyper's HTTP/2 server relays the same event stream
/// (no connection-specific fields, events as they come, a clean end).
#[tokio::test]
async fn an_http2_event_stream_is_relayed_the_same_way() {
    let mut upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = client
        .get_with("/events/h2", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    assert!(response.headers().get("connection").is_none());
    let stream = upstream.next_stream_for("/events/h2").await;
    assert_eq!(stream.header("host"), Some("localhost"));
    let mut reader = EventReader::new(response.into_body());
    for id in 1..=2 {
        assert!(stream.write_event(id, "tick", &["h2"]).await);
        let event = reader.next_event(WAIT_LIMIT).await.expect("event");
        assert_eq!(event.text, event_text(id, "tick", "h2"));
    }
    stream.end().await;
    assert!(
        reader.wait_end(WAIT_LIMIT).await,
        "the stream ended cleanly"
    );
}
