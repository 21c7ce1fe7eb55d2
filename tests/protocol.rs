//! Protocol edge cases, each held to the RFC behaviour or a clear 4xx/5xx,
//! over HTTP/1.1 (raw bytes, to control exactly what is sent) and HTTP/2
//! (hyper's client): CONNECT, Host checks, underscore header names,
//! request bodies on GET, malformed chunked bodies from either side,
//! conflicting framing and unexpected 101 from the upstream, and clients
//! that stop reading.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

fn h1_get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

/// Asserts the next request the upstream gets is `GET /next`: nothing of an
/// earlier, refused request reached it. Answers it.
async fn assert_next_upstream_request_is(
    upstream: &mut RawUpstream,
    proxy: &ProxyHandle,
    what: &str,
) {
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&h1_get("/next", "")).await;
    let mut seen = upstream.next().await;
    assert_eq!(
        seen.request.start_line, "GET /next HTTP/1.1",
        "{what}: something else reached the upstream"
    );
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 200, "{what}");
}

/// An HTTP/2 request with a body, sent by hyper's client.
async fn h2_send(proxy: &ProxyHandle, req: Request<TestBody>) -> (u16, String) {
    let mut sender = h2_client(proxy.addr).await;
    let response = tokio::time::timeout(WAIT_LIMIT, sender.send_request(req))
        .await
        .expect("h2 response in time")
        .expect("h2 response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("h2 body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn body(bytes: &'static [u8]) -> TestBody {
    Full::new(Bytes::from_static(bytes))
        .map_err(|never| match never {})
        .boxed()
}

// ---------------------------------------------------------------- CONNECT

#[tokio::test]
async fn connect_is_refused_with_405_over_http1() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 405, "{:?}", response.head.raw);
    assert!(response.head.has("allow"), "{:?}", response.head.raw);
    conn.assert_closed("after a refused CONNECT").await;
    assert_next_upstream_request_is(&mut upstream, &proxy, "CONNECT").await;
}

#[tokio::test]
async fn connect_is_refused_with_405_over_http2() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri("example.com:443")
        .body(empty_body())
        .unwrap();
    let (status, _) = h2_send(&proxy, req).await;
    assert_eq!(status, 405);
    assert_next_upstream_request_is(&mut upstream, &proxy, "CONNECT over h2").await;
}

// ---------------------------------------------------------------- Host

#[tokio::test]
async fn bad_hosts_get_400_and_nothing_is_forwarded_over_http1() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let cases: [(&str, &[u8]); 7] = [
        (
            "two Host lines",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        ("space in Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        (
            "path in Host",
            b"GET / HTTP/1.1\r\nHost: evil.example/x?y\r\n\r\n",
        ),
        (
            "userinfo in Host",
            b"GET / HTTP/1.1\r\nHost: u@evil.example\r\n\r\n",
        ),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "userinfo in the target",
            b"GET http://u@evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        ),
        (
            "asterisk target",
            b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(request).await;
        let response = conn.read_response(false).await;
        assert_eq!(
            response.head.status(),
            400,
            "{what}: {:?}",
            response.head.raw
        );
        conn.assert_closed(what).await;
    }
    assert_next_upstream_request_is(&mut upstream, &proxy, "bad Host").await;
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"GET https://app.example/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    let mut seen = upstream.next().await;
    assert_eq!(seen.request.start_line, "GET /x?y=1 HTTP/1.1");
    assert_eq!(seen.request.get("host"), Some("app.example"));
    seen.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    assert_eq!(conn.read_response(false).await.head.status(), 204);
}

#[tokio::test]
async fn a_host_that_disagrees_with_the_authority_gets_400_over_http2() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri("https://localhost/x")
        .header("host", "evil.example")
        .body(empty_body())
        .unwrap();
    let (status, _) = h2_send(&proxy, req).await;
    assert_eq!(status, 400);

    // Agreeing (in any case) is fine.
    let req = Request::builder()
        .version(Version::HTTP_2)
        .uri("https://localhost/agree")
        .header("host", "LOCALHOST")
        .body(empty_body())
        .unwrap();
    let sent = tokio::spawn({
        let addr = proxy.addr;
        async move {
            let mut sender = h2_client(addr).await;
            sender.send_request(req).await.map(|r| r.status().as_u16())
        }
    });
    let mut seen = upstream.next().await;
    assert_eq!(seen.request.start_line, "GET /agree HTTP/1.1");
    assert_eq!(seen.request.get("host"), Some("localhost"));
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(sent.await.unwrap().unwrap(), 200);
}

// ---------------------------------------------------------------- underscores

const UNDERSCORED: [(&str, &str); 3] = [
    ("X_Forwarded_For", "203.0.113.9"),
    ("X_Client_Cert_Subject", "CN=admin"),
    ("Transfer_Encoding", "chunked"),
];

async fn underscored_headers_reach_upstream(keep: bool, version: Version) -> Vec<String> {
    let mut upstream = RawUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.keep_underscore_headers = keep;
    let proxy = spawn_proxy_with(config).await;
    let mut req = request(version, "GET", "localhost", "/u");
    for (name, value) in UNDERSCORED {
        req = req.header(name, value);
    }
    let req = req.body(empty_body()).unwrap();
    let addr = proxy.addr;
    let sent = tokio::spawn(async move { get_once_with(addr, req, version).await });
    let mut seen = upstream.next().await;
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(sent.await.unwrap(), 200);
    seen.request
        .headers
        .iter()
        .filter(|(name, _)| name.contains('_'))
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

async fn get_once_with(
    addr: std::net::SocketAddr,
    req: Request<TestBody>,
    version: Version,
) -> u16 {
    let response = match version {
        Version::HTTP_2 => h2_client(addr).await.send_request(req).await,
        _ => h1_client(addr).await.send_request(req).await,
    };
    response.expect("response").status().as_u16()
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_unless_kept() {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let dropped = underscored_headers_reach_upstream(false, version).await;
        assert!(dropped.is_empty(), "{version:?}: forwarded {dropped:?}");
        let kept = underscored_headers_reach_upstream(true, version).await;
        assert_eq!(kept.len(), UNDERSCORED.len(), "{version:?}: {kept:?}");
    }
}

// ---------------------------------------------------------------- GET bodies

#[tokio::test]
async fn a_get_with_a_chunked_body_forwards_the_body_over_http1() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"GET /search HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let mut seen = upstream.next().await;
    // A body received whole with its head may go on with its length.
    let body = match seen.request.get("content-length") {
        Some(length) => seen.conn.read_exact(length.parse().unwrap()).await,
        None => seen.conn.chunks_to_end().await.concat(),
    };
    assert_eq!(body, b"hello", "{:?}", seen.request.raw);
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await;
    assert_eq!(conn.read_response(false).await.body_text(), "ok");
}

#[tokio::test]
async fn a_get_with_data_frames_forwards_the_body_over_http2() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let req = request(Version::HTTP_2, "GET", "localhost", "/search")
        .body(body(b"hello"))
        .unwrap();
    let addr = proxy.addr;
    let sent = tokio::spawn(async move { get_once_with(addr, req, Version::HTTP_2).await });
    let mut seen = upstream.next().await;
    let body = match seen.request.get("content-length") {
        Some(length) => seen.conn.read_exact(length.parse().unwrap()).await,
        None => seen.conn.chunks_to_end().await.concat(),
    };
    assert_eq!(body, b"hello", "{:?}", seen.request.raw);
    seen.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(sent.await.unwrap(), 200);
}

// ---------------------------------------------------------------- client chunked bodies

#[tokio::test]
async fn malformed_client_chunks_get_400_before_anything_is_forwarded() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let sizes: [&[u8]; 6] = [
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"100000000000000000\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
    ];
    for chunked in sizes {
        let what = String::from_utf8_lossy(chunked).into_owned();
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        request.extend_from_slice(chunked);
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(&request).await;
        let response = conn.read_response(false).await;
        assert_eq!(
            response.head.status(),
            400,
            "{what:?}: {:?}",
            response.head.raw
        );
        conn.assert_closed(&what).await;
    }
    assert_next_upstream_request_is(&mut upstream, &proxy, "malformed chunks").await;
}

#[tokio::test]
async fn a_malformed_chunk_after_the_head_went_upstream_is_never_forwarded() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        .await;
    let mut seen = upstream.next().await;
    assert_eq!(seen.conn.chunk().await, b"first");
    conn.write(b"5 junk\r\nworse\r\n0\r\n\r\n").await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 400, "{:?}", response.head.raw);
    // The upstream gets neither the bad chunk nor an end: the connection is cut.
    assert_eq!(seen.conn.try_chunk(WAIT_LIMIT).await, ChunkRead::Closed);
}

// ---------------------------------------------------------------- upstream framing

#[tokio::test]
async fn length_with_chunked_from_upstream_is_read_as_chunked_and_not_reused() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let addr = proxy.addr;
        let read = tokio::spawn(async move {
            let response = get_once(addr, "/both", version).await;
            let length = response.headers().get("content-length").cloned();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (length, body)
        });
        let mut seen = upstream.next().await;
        seen.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nB\r\nhello world\r\n0\r\n\r\n")
            .await;
        let (length, body) = read.await.unwrap();
        assert_eq!(body, "hello world", "{version:?}");
        assert!(length.is_none() || length.unwrap() == "11", "{version:?}");
        // Not trusted for another request: the proxy closes it.
        assert_eq!(
            seen.conn.try_chunk(WAIT_LIMIT).await,
            ChunkRead::Closed,
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn an_unasked_for_101_from_upstream_is_a_502() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let addr = proxy.addr;
        let read = tokio::spawn(async move { get_once(addr, "/plain", version).await.status() });
        let mut seen = upstream.next().await;
        seen.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .await;
        assert_eq!(read.await.unwrap(), 502, "{version:?}");
    }
}

#[tokio::test]
async fn malformed_upstream_framing_is_refused_or_cut_at_once() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // A head the proxy cannot frame: 502.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&h1_get("/plus", "")).await;
    let mut seen = upstream.next().await;
    seen.write(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")
        .await;
    assert_eq!(conn.read_response(false).await.head.status(), 502);

    // `chunked,` is chunked (empty list elements do not count).
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(&h1_get("/comma", "")).await;
    let mut seen = upstream.next().await;
    seen.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(conn.read_response(false).await.body_text(), "hello");

    // A bad chunk size or a last chunk with a bare LF, after the head was
    // relayed: the body is cut at once (no last chunk), not held until a
    // timeout.
    for (path, wire) in [
        ("/junk", &b"5 junk\r\nhello\r\n0\r\n\r\n"[..]),
        ("/bare-lf", &b"5\r\nhello\r\n0\r\n\n"[..]),
    ] {
        let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
        conn.write(&h1_get(path, "")).await;
        let mut seen = upstream.next().await;
        seen.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        seen.write(wire).await;
        let head = conn.read_response_head().await;
        assert_eq!(head.status(), 200, "{path}");
        let mut chunks = Vec::new();
        let end = loop {
            match conn.try_chunk(WAIT_LIMIT).await {
                ChunkRead::Data(data) => chunks.push(data),
                other => break other,
            }
        };
        assert_eq!(end, ChunkRead::Closed, "{path}: got {chunks:?}");
    }
}

// ---------------------------------------------------------------- send timeout

/// A client connection whose reads can be stopped, as a client that stops
/// reading (its TCP window then fills up).
struct Pausable<IO> {
    io: IO,
    paused: Arc<AtomicBool>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Pausable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.paused.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Pausable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Feeds an event stream as fast as the proxy takes it, until the proxy
/// closes the upstream connection; returns the bytes written.
async fn flood(mut seen: RawUpstreamConn) -> usize {
    seen.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    let event = format!("data: {}\n\n", "x".repeat(16 * 1024));
    let chunk = chunk_bytes(event.as_bytes());
    let mut written = 0;
    loop {
        if seen.conn.io.write_all(&chunk).await.is_err() {
            return written;
        }
        written += chunk.len();
    }
}

async fn stalled_client_is_cut(version: Version, shared: bool) {
    let mut upstream = RawUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.send = Duration::from_millis(500);
    if shared {
        config.streams.shared_prefixes = vec!["/live".into()];
    }
    let proxy = spawn_proxy_with(config).await;
    let paused = Arc::new(AtomicBool::new(false));
    let tls = tls_connect(
        proxy.addr,
        if version == Version::HTTP_2 {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        },
    )
    .await;
    let io = TokioIo::new(Pausable {
        io: tls,
        paused: paused.clone(),
    });
    let path = if shared { "/live/feed" } else { "/feed" };
    let req = request(version, "GET", "localhost", path)
        .body(empty_body())
        .unwrap();
    let response = if version == Version::HTTP_2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            // Windows larger than the socket buffers: the client's TCP
            // window, not HTTP/2 flow control, is what stops the proxy.
            .initial_stream_window_size(1 << 30)
            .initial_connection_window_size(1 << 30)
            .handshake(io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let responding = tokio::spawn(async move { sender.send_request(req).await });
        let seen = upstream.next().await;
        let flooding = tokio::spawn(flood(seen));
        (responding.await.unwrap().expect("response"), flooding)
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let responding = tokio::spawn(async move { sender.send_request(req).await });
        let seen = upstream.next().await;
        let flooding = tokio::spawn(flood(seen));
        (responding.await.unwrap().expect("response"), flooding)
    };
    let (response, flooding) = response;
    assert_eq!(response.status(), 200);
    // The client stops reading; the proxy must give up on it and release
    // the upstream (which then fails to write).
    paused.store(true, Ordering::SeqCst);
    let written = tokio::time::timeout(4 * WAIT_LIMIT, flooding)
        .await
        .expect("the upstream connection is released after the send timeout")
        .unwrap();
    assert!(written > 0);
    drop(response);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout_over_http1() {
    stalled_client_is_cut(Version::HTTP_11, false).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout_over_http2() {
    stalled_client_is_cut(Version::HTTP_2, false).await;
}

#[tokio::test]
async fn a_shared_stream_subscriber_that_stops_reading_is_cut() {
    stalled_client_is_cut(Version::HTTP_11, true).await;
}
