//! The upstream connection pool, seen from both ends. Upstream connections
//! are pooled per serving thread and shared by every client connection that
//! thread serves: a response read to its end gives its connection back for
//! the next request, from the same client connection or another; a response
//! that ends the connection (`Connection: close`, HTTP/1.0, a body delimited
//! by the close) does not; a pooled connection the upstream closed while
//! idle is replaced, and a GET that meets such a close is sent again once;
//! bytes the upstream sent unasked on an idle connection are never taken
//! for an answer. Also the HTTP/1.1 client side of keep-alive around it:
//! pipelining, 204 and 304 without a body, chunked bodies, the header read
//! timeout between requests, the drain, and `close_notify` with the last
//! response.
//!
//! Which upstream connection carried a request is seen from the upstream:
//! `tagged_upstream` (a `TestUpstream`) names the connection that answered
//! in `x-upstream-conn`; where a test writes the upstream's bytes itself,
//! `RawUpstream` hands it each connection with its first request head
//! (`RawUpstreamConn`), and the test reads the requests that follow on it.
//! The client side is raw bytes over TLS (`RawConn`).
//!
//! Each test says, above it, which broken behaviour makes it fail.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ssegate::config::Config;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The header in which `tagged_upstream` names the connection that answered.
const CONN_HEADER: &str = "x-upstream-conn";
/// How soon the proxy must close an upstream connection it may not reuse,
/// or a client connection it drains.
const PROMPTLY: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------- tagged upstream

/// A `TestUpstream` that answers each request with the number of the
/// connection it came on (1 for the first, in `x-upstream-conn`):
/// `/no-content` 204, `/not-modified` 304 with an ETag, `/echo` "METHOD
/// path body", `/bytes/N` N bytes of `pattern`, anything else its path as
/// the body.
async fn tagged_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| {
            let path = req.path();
            let reply = match path {
                "/no-content" => Reply::status(204),
                "/not-modified" => Reply::status(304).header("etag", "\"v1\""),
                "/echo" => Reply::text(format!("{} {path} {}", req.method, req.body_text())),
                p if p.starts_with("/bytes/") => {
                    let len = p["/bytes/".len()..].parse().expect("/bytes/N");
                    Reply::body(pattern(len)).header("content-type", "application/octet-stream")
                }
                _ => Reply::text(path.to_owned()),
            };
            reply.header(CONN_HEADER, req.conn)
        }))
        .start()
        .await
}

/// `len` bytes in which a shifted or repeated stretch shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 251) % 251) as u8).collect()
}

// ---------------------------------------------------------------- raw upstream

/// This file's additions to the connections `RawUpstream` hands over.
impl RawUpstreamConn {
    /// The request head the connection came with; the proxy sends bodiless
    /// GETs only here.
    fn first_request(&self) -> &RawHead {
        assert_bodiless(&self.request);
        &self.request
    }

    /// The next request head on this connection; an error if the proxy
    /// closes it or sends nothing in `limit`.
    async fn try_next_request(&mut self, limit: Duration) -> Result<RawHead, String> {
        let id = self.id;
        let head = self
            .conn
            .try_read_head(Instant::now() + limit)
            .await
            .map_err(|err| format!("upstream connection #{id}: {err}"))?;
        assert_bodiless(&head);
        Ok(head)
    }

    /// Answers with `body` and a Content-Length, keeping the connection.
    async fn answer(&mut self, body: &str) {
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.write(response.as_bytes()).await;
    }

    /// Asserts that the proxy closes the connection within `PROMPTLY`
    /// without sending anything more on it.
    async fn assert_closed_by_proxy(&mut self, what: &str) {
        let (sent, closed) = self.conn.read_to_close(PROMPTLY).await;
        assert!(
            sent.is_empty(),
            "{what}: the proxy sent {:?} on upstream connection #{}",
            String::from_utf8_lossy(&sent),
            self.id
        );
        assert!(
            closed,
            "{what}: upstream connection #{} still open {PROMPTLY:?} later",
            self.id
        );
    }
}

fn assert_bodiless(request: &RawHead) {
    assert!(
        !request.has("content-length") && !request.has("transfer-encoding"),
        "a request with a body reached the raw upstream: {:?}",
        request.raw
    );
}

/// The next request, which must come on `conn`: fails at once if the proxy
/// sends it on a new upstream connection instead, or closes `conn`.
async fn next_request_on(upstream: &mut RawUpstream, conn: &mut RawUpstreamConn) -> RawHead {
    let id = conn.id;
    tokio::select! {
        biased;
        request = conn.try_next_request(WAIT_LIMIT) => request.unwrap_or_else(|err| {
            panic!("expected the next request on upstream connection #{id}: {err}")
        }),
        new = upstream.next() => panic!(
            "the proxy sent {:?} on upstream connection #{} instead of reusing #{id}",
            new.request.start_line,
            new.id
        ),
    }
}

// ---------------------------------------------------------------- client side

/// A plain GET, as curl sends it.
fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").into_bytes()
}

async fn client(proxy: &ProxyHandle) -> TlsConn {
    raw_connect(proxy.addr, &[b"http/1.1"]).await
}

/// Sends a GET for `path` and reads the whole response.
async fn get(conn: &mut TlsConn, path: &str) -> RawResponse {
    conn.write(&get_request(path)).await;
    conn.read_response(false).await
}

/// A complete 200 with exactly `body`, framed by a Content-Length that
/// matches it, and nothing that would close the client connection.
fn assert_ok_with(response: &RawResponse, body: &[u8], what: &str) {
    let head = &response.head;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{what}: {:?}", head.raw);
    let expected_length = body.len().to_string();
    assert_eq!(
        head.get("content-length"),
        Some(expected_length.as_str()),
        "{what}: {:?}",
        head.raw
    );
    assert!(
        !head.has("transfer-encoding"),
        "{what}: both framings: {:?}",
        head.raw
    );
    assert!(
        !head.has("connection"),
        "{what}: the client connection is not kept: {:?}",
        head.raw
    );
    assert!(
        response.body == body,
        "{what}: body of {} bytes differs from the {} expected (starts {:?})",
        response.body.len(),
        body.len(),
        String::from_utf8_lossy(&response.body[..response.body.len().min(64)])
    );
}

/// The number of the upstream connection that answered (`tagged_upstream`).
fn upstream_conn(response: &RawResponse) -> usize {
    response
        .head
        .get(CONN_HEADER)
        .unwrap_or_else(|| panic!("no {CONN_HEADER}: {:?}", response.head.raw))
        .parse()
        .expect("numeric connection id")
}

/// Reads chunks of a chunked body until `expected` bytes arrived in all
/// (`so_far` holds what arrived before); they must be exactly `expected`.
async fn chunks_until(conn: &mut TlsConn, so_far: &mut Vec<u8>, expected: &str) {
    while so_far.len() < expected.len() {
        so_far.extend_from_slice(&conn.chunk().await);
    }
    assert_eq!(String::from_utf8_lossy(so_far), expected);
}

/// Closes the client side (close_notify, then FIN) and waits until the
/// proxy has closed the connection too, so it has let go of its upstream
/// connection by the time this returns.
async fn close_and_wait(mut conn: TlsConn, what: &str) {
    tokio::time::timeout(WAIT_LIMIT, conn.io.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
    conn.assert_closed(what).await;
}

/// The next upstream connection the proxy opens, which must come before
/// the client gets any answer: fails at once, with the answer, if the proxy
/// answered the client instead of (re)sending its request upstream.
async fn next_conn_before_any_answer(
    upstream: &mut RawUpstream,
    client: &mut TlsConn,
) -> RawUpstreamConn {
    tokio::select! {
        biased;
        conn = upstream.next() => conn,
        response = client.read_response(false) => panic!(
            "the client got {:?} ({:?}) instead of the request going to a new upstream connection",
            response.head.start_line,
            response.body_text()
        ),
    }
}

/// One serving thread, so that every client connection shares the pooled
/// upstream connections of the same thread.
fn one_thread(upstream: SocketAddr) -> Config {
    let mut config = proxy_config(upstream);
    config.threads = 1.try_into().expect("non-zero");
    config
}

// ---------------------------------------------------------------- 1. reuse

/// Catches: a GET's upstream connection not going back to the pool once its
/// body is read (a new upstream connection per request), and any framing
/// error in the HTTP/1.1 writer: a wrong or missing Content-Length, a body
/// cut, repeated or shifted where the writer gathers head and body (the
/// 100 kB body spans several 16 KiB writes), or stray bytes left between
/// responses.
#[tokio::test]
async fn several_gets_on_one_client_connection_share_one_upstream_connection() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    let cases: [(&str, Vec<u8>); 6] = [
        ("/first", b"/first".to_vec()),
        ("/bytes/0", Vec::new()),
        ("/bytes/100000", pattern(100_000)),
        ("/second", b"/second".to_vec()),
        ("/bytes/16384", pattern(16_384)),
        ("/third", b"/third".to_vec()),
    ];
    for (path, body) in &cases {
        let response = get(&mut conn, path).await;
        assert_ok_with(&response, body, path);
        assert_eq!(
            upstream_conn(&response),
            1,
            "{path} went over another upstream connection"
        );
    }
    assert_eq!(upstream.accepts(), 1, "one upstream connection in all");
    assert_eq!(upstream.received(), cases.len());
    assert!(
        conn.buffered().is_empty(),
        "bytes after the last response: {:?}",
        String::from_utf8_lossy(conn.buffered())
    );
}

// ---------------------------------------------------------------- 2. not reusable

/// Catches: reusing an upstream connection whose response said
/// `Connection: close` or was HTTP/1.0 (the proxy would send the next GET on
/// a connection the upstream is about to close, or leave it open), and
/// passing the upstream's `Connection: close` on to the client or closing
/// the client connection because of it. The upstream here keeps the socket
/// open after `Connection: close`, so only the proxy's own decision closes
/// it. Also catches a close-delimited body not relayed whole, and the warm-up
/// GETs catch a connection that is never reused at all.
#[tokio::test]
async fn a_response_that_ends_the_upstream_connection_is_relayed_and_the_next_get_gets_a_new_one() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    struct Case {
        name: &'static str,
        response: &'static str,
        body: &'static str,
        /// The upstream closes after the body (it delimits it).
        then_close: bool,
    }
    let cases = [
        Case {
            name: "connection-close",
            response:
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\nlast one\r\n",
            body: "last one\r\n",
            then_close: false,
        },
        Case {
            name: "http-1.0",
            response: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\n1.0!",
            body: "1.0!",
            then_close: false,
        },
        Case {
            name: "until-close",
            response: "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
            body: "until the end",
            then_close: true,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let what = case.name;
        // A fresh upstream connection, shown reusable by a first exchange.
        conn.write(&get_request(&format!("/warm/{i}"))).await;
        let mut up = upstream.next().await;
        let request = up.first_request().clone();
        assert_eq!(request.start_line, format!("GET /warm/{i} HTTP/1.1"));
        assert_eq!(
            request.get("connection"),
            None,
            "{what}: a keep-alive GET asks the upstream to close"
        );
        up.answer("warm").await;
        assert_ok_with(&conn.read_response(false).await, b"warm", what);

        conn.write(&get_request(&format!("/{}", case.name))).await;
        let request = next_request_on(&mut upstream, &mut up).await;
        assert_eq!(request.start_line, format!("GET /{} HTTP/1.1", case.name));
        up.write(case.response.as_bytes()).await;
        if case.then_close {
            up.conn.io.shutdown().await.expect("upstream half-close");
        }
        let response = conn.read_response(false).await;
        let head = &response.head;
        assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{what}: {:?}", head.raw);
        assert_eq!(response.body_text(), case.body, "{what}");
        assert!(
            !head.has("connection"),
            "{what}: the upstream's connection header reached the client: {:?}",
            head.raw
        );
        if case.then_close {
            assert_eq!(head.all("transfer-encoding"), ["chunked"], "{what}");
            assert!(!head.has("content-length"), "{what}: {:?}", head.raw);
        } else {
            let length = case.body.len().to_string();
            assert_eq!(head.get("content-length"), Some(length.as_str()), "{what}");
        }
        up.assert_closed_by_proxy(what).await;
    }

    // The client connection is still open, and its next GET gets a new
    // upstream connection.
    conn.write(&get_request("/after")).await;
    let mut up = upstream.next().await;
    assert_eq!(up.first_request().start_line, "GET /after HTTP/1.1");
    up.answer("after").await;
    assert_ok_with(&conn.read_response(false).await, b"after", "after");
    assert_eq!(upstream.accepts(), cases.len() + 1);
}

// ---------------------------------------------------------------- 3. requests with bodies

/// Catches: a request with a body taking another upstream connection than
/// the GETs around it (the POST would open a second upstream connection),
/// its connection not going back to the pool for the GET after it, and
/// request bytes lost or reordered between a GET and a POST on one client
/// connection.
#[tokio::test]
async fn gets_then_a_post_then_a_get_all_go_over_one_upstream_connection() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    for path in ["/one", "/two"] {
        let response = get(&mut conn, path).await;
        assert_ok_with(&response, path.as_bytes(), path);
        assert_eq!(upstream_conn(&response), 1, "{path}");
    }
    conn.write(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    let response = conn.read_response(false).await;
    assert_ok_with(&response, b"POST /echo hello world", "POST");
    assert_eq!(
        upstream_conn(&response),
        1,
        "the POST went over another upstream connection"
    );
    let response = get(&mut conn, "/three").await;
    assert_ok_with(&response, b"/three", "GET after the POST");
    assert_eq!(upstream_conn(&response), 1, "GET after the POST");
    assert_eq!(upstream.accepts(), 1, "one upstream connection in all");
    assert_eq!(upstream.received(), 4);
}

// ---------------------------------------------------------------- 4. pipelining

/// Catches: a request that arrived behind another in the same read being
/// dropped, answered out of order, or answered twice, and the writer mixing
/// two responses' bytes (the middle body spans several writes).
#[tokio::test]
async fn gets_pipelined_in_one_write_are_answered_in_order() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    let mut pipelined = get_request("/first");
    pipelined.extend_from_slice(&get_request("/bytes/40000"));
    pipelined.extend_from_slice(&get_request("/last"));
    conn.write(&pipelined).await;
    let expected: [(&str, Vec<u8>); 3] = [
        ("/first", b"/first".to_vec()),
        ("/bytes/40000", pattern(40_000)),
        ("/last", b"/last".to_vec()),
    ];
    for (path, body) in &expected {
        let response = conn.read_response(false).await;
        assert_ok_with(&response, body, path);
        assert_eq!(upstream_conn(&response), 1, "{path}");
    }
    // Nothing more: three requests, three responses.
    conn.assert_silent(Duration::from_millis(200), "after three responses")
        .await;
    assert_eq!(upstream.received(), 3);
    assert_eq!(upstream.accepts(), 1);
}

/// Catches: request bytes read behind a GET (while its response was on the
/// way) being lost when the request behind is a POST with a body, and the
/// POST not getting the GET's upstream connection back from the pool.
#[tokio::test]
async fn a_post_pipelined_behind_a_get_is_answered_after_it_on_the_same_upstream_connection() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    let mut pipelined = get_request("/bytes/20000");
    pipelined.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9\r\n\r\npipelined",
    );
    pipelined.extend_from_slice(&get_request("/after"));
    conn.write(&pipelined).await;
    let expected: [(&str, Vec<u8>); 3] = [
        ("GET", pattern(20_000)),
        ("POST", b"POST /echo pipelined".to_vec()),
        ("GET after", b"/after".to_vec()),
    ];
    for (what, body) in &expected {
        let response = conn.read_response(false).await;
        assert_ok_with(&response, body, what);
        assert_eq!(upstream_conn(&response), 1, "{what}");
    }
    assert_eq!(upstream.received(), 3);
    assert_eq!(upstream.accepts(), 1);
}

// ---------------------------------------------------------------- 5. no body

/// Catches: a body (or a chunked terminator, or a Content-Length) written
/// after a 204 or 304, which the client would read as the start of the next
/// response, and the upstream connection of a bodiless response not going
/// back to the pool (its body is never polled, only dropped).
#[tokio::test]
async fn no_content_and_not_modified_have_no_body_and_keep_the_upstream_connection() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    let response = get(&mut conn, "/no-content").await;
    let head = &response.head;
    assert_eq!(head.start_line, "HTTP/1.1 204 No Content", "{:?}", head.raw);
    assert!(!head.has("content-length"), "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    assert!(!head.has("connection"), "{:?}", head.raw);
    assert_eq!(upstream_conn(&response), 1);

    let response = get(&mut conn, "/not-modified").await;
    let head = &response.head;
    assert_eq!(
        head.start_line, "HTTP/1.1 304 Not Modified",
        "{:?}",
        head.raw
    );
    assert_eq!(head.get("etag"), Some("\"v1\""), "{:?}", head.raw);
    assert!(!head.has("transfer-encoding"), "{:?}", head.raw);
    assert!(!head.has("connection"), "{:?}", head.raw);
    assert_eq!(upstream_conn(&response), 1);

    // Had a body followed either, this head would not parse as one.
    let response = get(&mut conn, "/after").await;
    assert_ok_with(&response, b"/after", "after 204 and 304");
    assert_eq!(
        upstream_conn(&response),
        1,
        "the upstream connection was not reused"
    );
    assert_eq!(upstream.accepts(), 1);
}

// ---------------------------------------------------------------- 6. chunked

/// Catches: an ordinary body of unknown length buffered to its end instead
/// of relayed as it comes (the upstream only writes on once the client has
/// the previous part), a chunk split across upstream writes mis-decoded, a
/// body not re-chunked for the client or ended without its last chunk, and
/// the connection not reused after a chunked body, or reused before the
/// last chunk's final CRLF was read (the next response would not parse).
#[tokio::test]
async fn a_chunked_body_of_unknown_length_arrives_whole_and_the_connection_is_reused() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    conn.write(&get_request("/stream")).await;
    let mut up = upstream.next().await;
    assert_eq!(up.first_request().start_line, "GET /stream HTTP/1.1");
    let mut first =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    first.extend_from_slice(&chunk_bytes(b"[1,"));
    up.write(&first).await;

    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    assert_eq!(head.all("transfer-encoding"), ["chunked"], "{:?}", head.raw);
    assert!(!head.has("content-length"), "{:?}", head.raw);
    assert_eq!(head.get("content-type"), Some("application/json"));
    let mut body = Vec::new();
    chunks_until(&mut conn, &mut body, "[1,").await;

    up.write(&chunk_bytes(b"2,")).await;
    chunks_until(&mut conn, &mut body, "[1,2,").await;

    // One chunk in two writes, split inside its data.
    up.write(b"5\r\n3,").await;
    up.write(b"4,5\r\n").await;
    chunks_until(&mut conn, &mut body, "[1,2,3,4,5").await;

    // The last chunk, its final CRLF in a write of its own.
    let mut end = chunk_bytes(b"]");
    end.extend_from_slice(b"0\r\n");
    up.write(&end).await;
    up.write(b"\r\n").await;
    chunks_until(&mut conn, &mut body, "[1,2,3,4,5]").await;
    conn.last_chunk().await;

    conn.write(&get_request("/next")).await;
    let request = next_request_on(&mut upstream, &mut up).await;
    assert_eq!(request.start_line, "GET /next HTTP/1.1");
    up.answer("next").await;
    assert_ok_with(&conn.read_response(false).await, b"next", "after chunked");
    assert_eq!(upstream.accepts(), 1);
}

// ---------------------------------------------------------------- 7. upstream closes

/// Catches: a reused upstream connection that the upstream closed while it
/// was idle (its keep-alive timeout) turning the next GET into a 502
/// instead of being replaced (the proxy only learns of the close when its
/// request meets it), and the replacement not being kept for the GET after.
#[tokio::test]
async fn an_upstream_connection_closed_while_idle_between_gets_costs_no_502() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    conn.write(&get_request("/one")).await;
    let mut first = upstream.next().await;
    assert_eq!(first.first_request().start_line, "GET /one HTTP/1.1");
    first.answer("one").await;
    assert_ok_with(&conn.read_response(false).await, b"one", "one");
    // The client has its answer; the upstream now closes the idle connection.
    drop(first);

    conn.write(&get_request("/two")).await;
    let mut second = next_conn_before_any_answer(&mut upstream, &mut conn).await;
    assert_eq!(second.first_request().start_line, "GET /two HTTP/1.1");
    second.answer("two").await;
    assert_ok_with(
        &conn.read_response(false).await,
        b"two",
        "GET after the upstream closed",
    );

    conn.write(&get_request("/three")).await;
    let request = next_request_on(&mut upstream, &mut second).await;
    assert_eq!(request.start_line, "GET /three HTTP/1.1");
    second.answer("three").await;
    assert_ok_with(&conn.read_response(false).await, b"three", "three");
    assert_eq!(upstream.accepts(), 2);
}

/// Catches: a GET that meets the upstream closing its reused connection
/// under it (the request was written, then the connection closed without a
/// byte of answer) getting 502 instead of being sent again on a new
/// connection, and a resend that loops: on a fresh connection that closes
/// unanswered the proxy must give 502, not try again.
#[tokio::test]
async fn a_get_that_meets_the_upstream_closing_its_reused_connection_is_sent_again_once() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    conn.write(&get_request("/one")).await;
    let mut first = upstream.next().await;
    assert_eq!(first.first_request().start_line, "GET /one HTTP/1.1");
    first.answer("one").await;
    assert_ok_with(&conn.read_response(false).await, b"one", "one");

    conn.write(&get_request("/two")).await;
    let request = next_request_on(&mut upstream, &mut first).await;
    assert_eq!(request.start_line, "GET /two HTTP/1.1");
    drop(first);
    let mut second = next_conn_before_any_answer(&mut upstream, &mut conn).await;
    assert_eq!(
        second.first_request().start_line,
        "GET /two HTTP/1.1",
        "sent again on a new connection"
    );
    second.answer("two").await;
    assert_ok_with(&conn.read_response(false).await, b"two", "resent GET");

    // The reused connection closes under the request, and so does the new
    // one it is sent again on: 502, and no third attempt.
    conn.write(&get_request("/three")).await;
    let request = next_request_on(&mut upstream, &mut second).await;
    assert_eq!(request.start_line, "GET /three HTTP/1.1");
    drop(second);
    let third = next_conn_before_any_answer(&mut upstream, &mut conn).await;
    assert_eq!(third.first_request().start_line, "GET /three HTTP/1.1");
    drop(third);
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 502, "{:?}", response.head.raw);
    assert_eq!(response.body_text(), "502 Bad Gateway\n");
    assert_eq!(upstream.accepts(), 3, "sent again once only");

    // The 502 leaves the client connection open, and no dead upstream
    // connection in the pool.
    conn.write(&get_request("/four")).await;
    let mut fourth = next_conn_before_any_answer(&mut upstream, &mut conn).await;
    assert_eq!(fourth.first_request().start_line, "GET /four HTTP/1.1");
    fourth.answer("four").await;
    assert_ok_with(&conn.read_response(false).await, b"four", "after the 502");
}

// ---------------------------------------------------------------- 8. timeouts, drain

/// Catches: an idle keep-alive wait between requests that is not bounded
/// by the header read timeout (idle or slowloris connections would
/// be held forever), and, the other way, a connection closed right after a
/// response instead of kept alive for the timeout.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    const HEADER_READ: Duration = Duration::from_millis(300);
    let upstream = tagged_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.header_read = HEADER_READ;
    let proxy = spawn_proxy_with(config).await;

    // Nothing at all after a response.
    let mut idle = client(&proxy).await;
    let sent = Instant::now();
    assert_ok_with(&get(&mut idle, "/one").await, b"/one", "one");
    let (data, closed) = idle.read_to_close(WAIT_LIMIT).await;
    let after = sent.elapsed();
    assert!(closed, "an idle keep-alive connection was still open");
    assert!(data.is_empty(), "{:?}", String::from_utf8_lossy(&data));
    // The wait starts after the response, so after the request was sent.
    assert!(after >= HEADER_READ, "closed after only {after:?}");
    assert!(
        after < HEADER_READ + Duration::from_secs(2),
        "closed only after {after:?}"
    );

    // Half a second head after a response.
    let mut half = client(&proxy).await;
    let sent = Instant::now();
    assert_ok_with(&get(&mut half, "/two").await, b"/two", "two");
    half.write(b"GET /never HTTP/1.1\r\nHost: local").await;
    let (data, closed) = half.read_to_close(WAIT_LIMIT).await;
    let after = sent.elapsed();
    assert!(closed, "a half-sent second head was still open");
    assert!(
        data.is_empty() || data.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&data)
    );
    assert!(after >= HEADER_READ, "closed after only {after:?}");
    assert!(
        after < HEADER_READ + Duration::from_secs(2),
        "closed only after {after:?}"
    );
    assert_eq!(
        upstream.received(),
        2,
        "the half-sent request went upstream"
    );
}

/// Catches: a drain that waits for an idle keep-alive connection (until its
/// header read timeout, 30 s here, or the drain timeout) instead of closing
/// it at once.
#[tokio::test]
async fn a_drain_closes_an_idle_keep_alive_connection_at_once() {
    let upstream = tagged_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.header_read = Duration::from_secs(30);
    let mut proxy = spawn_proxy_with(config).await;
    let mut conn = client(&proxy).await;
    assert_ok_with(&get(&mut conn, "/one").await, b"/one", "one");
    assert_ok_with(&get(&mut conn, "/two").await, b"/two", "two");

    let task = proxy.task.take().expect("proxy task");
    let started = Instant::now();
    proxy.shutdown.cancel();
    let (data, closed) = conn.read_to_close(PROMPTLY).await;
    assert!(
        closed,
        "an idle keep-alive connection was still open {PROMPTLY:?} into the drain"
    );
    assert!(data.is_empty(), "{:?}", String::from_utf8_lossy(&data));
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("the drain was held up")
        .expect("proxy task");
    assert!(started.elapsed() < PROMPTLY);
}

/// Catches: a GET whose response head arrives during a drain not saying
/// `Connection: close` (the client would send its next request into a
/// closing connection), the response being cut instead of completed, and
/// the connection left open after it.
#[tokio::test]
async fn a_get_in_flight_during_a_drain_is_answered_with_connection_close() {
    let mut upstream = RawUpstream::start().await;
    let mut proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;
    conn.write(&get_request("/slow")).await;
    let mut up = upstream.next().await;
    assert_eq!(up.first_request().start_line, "GET /slow HTTP/1.1");

    let task = proxy.task.take().expect("proxy task");
    proxy.shutdown.cancel();
    until_refused(proxy.addr).await;
    up.answer("slow").await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.start_line, "HTTP/1.1 200 OK");
    assert_eq!(response.head.get("connection"), Some("close"));
    assert_eq!(response.head.get("content-length"), Some("4"));
    assert_eq!(response.body_text(), "slow");
    conn.assert_closed("after a response during the drain")
        .await;
    tokio::time::timeout(PROMPTLY, task)
        .await
        .expect("the drain was held up")
        .expect("proxy task");
}

// ---------------------------------------------------------------- 9. shared by client connections

/// Catches: an upstream connection that does not outlive the client
/// connection it served (closed when that client connection closes, by the
/// client or after `Connection: close`), and a new client connection on the
/// same serving thread not taking it from the pool: a client that opens a
/// TLS connection per request would cost a TCP connection upstream each
/// time.
#[tokio::test]
async fn a_new_client_connection_reuses_the_upstream_connection_a_closed_one_left() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy_with(one_thread(upstream.addr)).await;

    let mut first = client(&proxy).await;
    for path in ["/a", "/b"] {
        let response = get(&mut first, path).await;
        assert_ok_with(&response, path.as_bytes(), path);
        assert_eq!(upstream_conn(&response), 1, "{path}");
    }
    close_and_wait(first, "closed by the client").await;

    let mut second = client(&proxy).await;
    let response = get(&mut second, "/c").await;
    assert_ok_with(&response, b"/c", "/c");
    assert_eq!(
        upstream_conn(&response),
        1,
        "the second client connection did not take the pooled upstream connection"
    );
    // This time the client asks to close.
    second
        .write(b"GET /d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let response = second.read_response(false).await;
    assert_eq!(response.head.start_line, "HTTP/1.1 200 OK");
    assert_eq!(response.head.get("connection"), Some("close"));
    assert_eq!(response.body_text(), "/d");
    assert_eq!(upstream_conn(&response), 1, "/d");
    second.assert_closed("after Connection: close").await;

    let mut third = client(&proxy).await;
    let response = get(&mut third, "/e").await;
    assert_ok_with(&response, b"/e", "/e");
    assert_eq!(
        upstream_conn(&response),
        1,
        "the third client connection did not take the pooled upstream connection"
    );
    assert_eq!(upstream.accepts(), 1);
}

/// Catches: an upstream connection that carried a request body not going
/// back to the pool (closed with its client connection instead), and the
/// next client connection's GET opening a new one.
#[tokio::test]
async fn an_upstream_connection_that_carried_a_post_is_pooled_too() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy_with(one_thread(upstream.addr)).await;

    let mut first = client(&proxy).await;
    let response = get(&mut first, "/a").await;
    assert_ok_with(&response, b"/a", "/a");
    first
        .write(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let response = first.read_response(false).await;
    assert_ok_with(&response, b"POST /echo body", "POST");
    assert_eq!(upstream_conn(&response), 1, "POST");
    close_and_wait(first, "closed after a POST").await;

    let mut second = client(&proxy).await;
    let response = get(&mut second, "/b").await;
    assert_ok_with(&response, b"/b", "/b");
    assert_eq!(
        upstream_conn(&response),
        1,
        "the upstream connection of the POST was not pooled"
    );
    assert_eq!(upstream.accepts(), 1);
}

// ---------------------------------------------------------------- event streams

/// Catches: an event stream not taking the pooled upstream connection (a
/// new connection per stream), the proxy asking the upstream to close it
/// (`Connection: close`), and the connection not going back to the pool
/// after the stream's clean end.
#[tokio::test]
async fn an_event_stream_rides_the_pooled_connection_which_is_kept_after_a_clean_end() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    conn.write(&get_request("/plain")).await;
    let mut kept = upstream.next().await;
    assert_eq!(kept.first_request().start_line, "GET /plain HTTP/1.1");
    kept.answer("plain").await;
    assert_ok_with(&conn.read_response(false).await, b"plain", "plain");

    conn.write(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let request = next_request_on(&mut upstream, &mut kept).await;
    assert_eq!(request.start_line, "GET /events HTTP/1.1");
    assert_eq!(request.get("connection"), None);
    kept.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await;
    let head = conn.read_response_head().await;
    assert_eq!(head.start_line, "HTTP/1.1 200 OK", "{:?}", head.raw);
    kept.write(&chunk_bytes(b"data: one\n\n")).await;
    assert_eq!(conn.chunk_text().await, "data: one\n\n");
    kept.write(b"0\r\n\r\n").await;
    conn.last_chunk().await;

    conn.write(&get_request("/plain-again")).await;
    let request = next_request_on(&mut upstream, &mut kept).await;
    assert_eq!(request.start_line, "GET /plain-again HTTP/1.1");
    kept.answer("again").await;
    assert_ok_with(
        &conn.read_response(false).await,
        b"again",
        "after the stream",
    );
    assert_eq!(upstream.accepts(), 1);
}

// ------------------------------------------------------ unsolicited bytes

/// Catches: bytes the upstream sent on an idle kept connection, unasked,
/// being taken for the answer to the next GET. Here the upstream announces
/// its idle timeout with a 408 and closes, as some servers do. Relaying it
/// as the answer to `/two` (or any stale bytes, even a whole 200) would put
/// responses and requests out of step; the connection must be dropped and
/// the GET sent on a new one, as hyper's client does.
#[tokio::test]
async fn bytes_the_upstream_sent_on_an_idle_connection_are_not_taken_for_the_next_answer() {
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = client(&proxy).await;

    let response = get(&mut conn, "/one").await;
    assert_ok_with(&response, b"/one", "one");
    assert_eq!(upstream_conn(&response), 1, "one");
    // Written before the client sends its next request; it reaches the
    // proxy long before that request crosses TLS.
    upstream
        .write_conn(
            1,
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
    upstream.close_conn(1).await;

    let response = get(&mut conn, "/two").await;
    assert_ok_with(&response, b"/two", "two");
    assert_eq!(
        upstream_conn(&response),
        2,
        "the GET after the stale bytes did not go to a new upstream connection"
    );
}

// ------------------------------------------------------------- clean close

/// Catches: a `Connection: close` response followed by a bare TCP close,
/// without TLS close_notify (the proxy sends the last response and its
/// close_notify in one write), so that the client cannot tell a complete
/// response from a cut one. rustls reports a close without close_notify
/// as `UnexpectedEof`.
#[tokio::test]
async fn a_connection_close_response_ends_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tagged_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    for path in ["/bytes/0", "/last", "/bytes/100000"] {
        let mut tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let mut received = Vec::new();
        let read = tokio::time::timeout(PROMPTLY, tls.read_to_end(&mut received))
            .await
            .expect("the proxy closes the connection");
        read.unwrap_or_else(|err| panic!("{path}: not a clean TLS close: {err}"));
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {text:.200}"
        );
        assert!(
            text.contains("\r\nconnection: close\r\n"),
            "{path}: {text:.400}"
        );
    }
}
