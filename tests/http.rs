//! Plain HTTP behaviour of the proxy: large bodies both ways, keep-alive on
//! both sides, slow clients, oversized and malformed requests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Response, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Generous: the machine is small and shared with parallel builds.
const LIMIT: Duration = Duration::from_secs(10);

const UPLOAD_LEN: usize = 4 * 1024 * 1024;
const DOWNLOAD_LEN: usize = 8 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// The proxy's own 431 body (src/error.rs).
const TOO_LARGE_BODY: &str = "431 Request Header Fields Too Large\n";

// ---------------------------------------------------------------- helpers

/// A deterministic pseudo-random byte pattern (xorshift64*).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, 64 bit: enough to tell bodies apart in a report.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first differing byte at offset {at}");
    }
}

async fn body_text(response: Response<Incoming>) -> String {
    let body = tokio::time::timeout(LIMIT, read_body(response.into_body()))
        .await
        .expect("body in time");
    String::from_utf8(body.to_vec()).expect("utf-8 body")
}

/// A fresh connection, one GET, the status and body. Proves the proxy serves.
async fn proxy_serves(addr: SocketAddr) {
    let response = tokio::time::timeout(LIMIT, get_once(addr, "/ping", Version::HTTP_11))
        .await
        .expect("proxy answers in time");
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, "pong");
}

/// An upstream answering "pong" to anything.
async fn pong_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::body("pong"))
        .start()
        .await
}

/// An upstream that answers every request with its path (and counts the
/// TCP connections it accepts, as every `TestUpstream` does).
async fn path_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| Reply::body(req.path().to_owned())))
        .start()
        .await
}

/// Reads from a raw stream until the peer closes it (EOF or error), or
/// `limit` passes. Returns what was read and whether it closed.
async fn read_until_closed(stream: &mut TlsStream<TcpStream>, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads a raw HTTP/1.1 response head (through the blank line).
async fn read_head(stream: &mut TlsStream<TcpStream>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + LIMIT;
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let r = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("response head in time");
        let n = r.expect("read");
        assert!(n > 0, "closed before a response head: {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------- large bodies

/// Echoes the length and hash of a request body.
async fn hashing_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| {
            Reply::body(format!("{} {:016x}", req.body.len(), fnv1a(&req.body)))
        }))
        .start()
        .await
}

async fn upload(version: Version) {
    let upstream = hashing_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let data = Bytes::from(pattern(UPLOAD_LEN, 0x5eed_0001));
    let (tx, body, _closed) = channel_body();
    let chunks = data.clone();
    let upstream_side = &upstream;
    // Moves the sender in: the body ends when the writer is done.
    let writer = async move {
        let mut offset = 0;
        while offset < chunks.len() {
            let end = (offset + CHUNK).min(chunks.len());
            tx.send(chunks.slice(offset..end))
                .await
                .expect("proxy reads the upload");
            if offset == 0 {
                // The body streams through: the upstream sees the first
                // chunk before the client has sent the rest.
                upstream_side.body_bytes_at_least(1).await;
            }
            offset = end;
        }
    };
    let req = request(version, "POST", "localhost", "/upload")
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let (response, ()) = tokio::join!(client.send(req), writer);
    assert_eq!(response.status(), 200);
    let echoed = body_text(response).await;
    assert_eq!(echoed, format!("{} {:016x}", UPLOAD_LEN, fnv1a(&data)));
}

/// curl sends `Expect: 100-continue` and holds the body back until the proxy
/// answers 100 (told to wait up to 30 s, beyond the run's limit, so a missing
/// 100 fails the test instead of slowing it down).
#[tokio::test]
async fn curl_upload_with_expect_100_continue_is_byte_exact_over_http1() {
    let upstream = hashing_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let data = pattern(256 * 1024, 0x5eed_0003);
    let dir = TempDir::new("expect-100");
    let file = dir.write("upload.bin", &data);
    let url = format!("https://localhost:{}/upload", proxy.addr.port());
    let mut curl = curl_command(proxy.addr.port(), &dev_cert_path(), 20);
    curl.args([
        "--http1.1",
        "--expect100-timeout",
        "30",
        "-H",
        "Expect: 100-continue",
    ])
    .arg("--data-binary")
    .arg(format!("@{}", file.display()))
    .args(["-w", "\n%{response_code}", &url]);
    let run = run_tool(curl, "curl").await;
    assert!(run.success, "curl failed:\n{}", run.all);
    assert_eq!(
        run.stdout,
        format!("{} {:016x}\n200", data.len(), fnv1a(&data)),
        "{}",
        run.all
    );
}

#[tokio::test]
async fn upload_of_4_mib_is_byte_exact_over_http1() {
    upload(Version::HTTP_11).await;
}

#[tokio::test]
async fn upload_of_4_mib_is_byte_exact_over_http2() {
    upload(Version::HTTP_2).await;
}

/// Answers with a Content-Length of 8 MiB; the test writes the body.
async fn download_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::stream_head(
            200,
            &[
                ("content-type", "application/octet-stream"),
                ("content-length", &DOWNLOAD_LEN.to_string()),
            ],
        ))
        .start()
        .await
}

/// Writes the 8 MiB pattern into `stream` in 64 KiB writes.
fn write_download(stream: UpstreamStream) {
    tokio::spawn(async move {
        let data = Bytes::from(pattern(DOWNLOAD_LEN, 0x5eed_0002));
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + CHUNK).min(data.len());
            if !stream.try_send(data.slice(offset..end)).await {
                return;
            }
            offset = end;
        }
        stream.end().await;
    });
}

async fn download(version: Version) {
    let mut upstream = download_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let req = request(version, "GET", "localhost", "/download")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    write_download(upstream.next_stream().await);
    assert_eq!(
        response.headers()["content-length"],
        DOWNLOAD_LEN.to_string().as_str()
    );
    let body = read_body_within(response.into_body(), Duration::from_secs(20)).await;
    assert_same_bytes(&body, &pattern(DOWNLOAD_LEN, 0x5eed_0002), "download");
}

#[tokio::test]
async fn download_of_8_mib_is_byte_exact_over_http1() {
    download(Version::HTTP_11).await;
}

#[tokio::test]
async fn download_of_8_mib_is_byte_exact_over_http2() {
    download(Version::HTTP_2).await;
}

// ------------------------------------------------------------- keep-alive

#[tokio::test]
async fn keep_alive_on_both_sides() {
    let upstream = path_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;

    for i in 0..5 {
        let path = format!("/request/{i}");
        let req = request(Version::HTTP_11, "GET", "localhost", &path)
            .body(empty_body())
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), 200, "request {i}");
        assert!(response.headers().get("connection").is_none());
        assert_eq!(body_text(response).await, path);
    }
    assert_eq!(
        upstream.accepts(),
        1,
        "the proxy reuses its pooled upstream connection"
    );
}

#[tokio::test]
async fn client_connections_on_one_thread_share_its_pooled_upstream_connection() {
    let upstream = path_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut first = Client::connect(proxy.addr, Version::HTTP_11).await;
    let mut second = Client::connect(proxy.addr, Version::HTTP_11).await;
    for i in 0..3 {
        for (name, client) in [("first", &mut first), ("second", &mut second)] {
            let path = format!("/{name}/{i}");
            let response = client.get(&path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(body_text(response).await, path);
        }
    }
    assert_eq!(
        upstream.accepts(),
        1,
        "requests taking turns use one pooled upstream connection"
    );
}

#[tokio::test]
async fn a_new_client_connection_takes_the_upstream_connection_a_closed_one_left() {
    let upstream = path_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    one_request_per_connection(proxy.addr, 3).await;
    assert_eq!(
        upstream.accepts(),
        1,
        "the upstream connection outlives each client connection"
    );
}

#[tokio::test]
async fn a_parked_upstream_connection_stays_with_its_serving_thread() {
    let upstream = path_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.threads = 2.try_into().unwrap();
    let proxy = spawn_proxy_with(config).await;
    // One connection at a time: the threads take turns, so connections 0 and
    // 2 share thread 0 and its parked upstream connection, while connection
    // 1 on thread 1 needs one of its own.
    one_request_per_connection(proxy.addr, 3).await;
    assert_eq!(
        upstream.accepts(),
        2,
        "one upstream connection per serving thread"
    );
}

/// `count` requests, each on a TLS connection of its own that the client
/// closes with `Connection: close`, one after the other.
async fn one_request_per_connection(addr: SocketAddr, count: usize) {
    for i in 0..count {
        // One request per TLS connection, as clients without keep-alive do.
        let mut tls = tls_connect(addr, &[b"http/1.1"]).await;
        let request =
            format!("GET /conn/{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let (response, closed) = read_until_closed(&mut tls, WAIT_LIMIT).await;
        let response = String::from_utf8_lossy(&response);
        assert!(closed, "the proxy closes after `Connection: close`");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with(&format!("/conn/{i}")), "{response}");
    }
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_replaced_without_an_error() {
    let mut upstream = path_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    for (i, path) in ["/one", "/two", "/three"].into_iter().enumerate() {
        // Each request arrives on a new upstream connection, which answers
        // it as keep-alive ...
        let response = client.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(body_text(response).await, path);
        let seen = upstream.next_request().await;
        assert_eq!(seen.start_line(), format!("GET {path} HTTP/1.1"));
        assert_eq!((seen.conn, seen.seq), (i + 1, 1), "{path}");
        // ... and, once the proxy holds it idle, closes it unannounced, as
        // an upstream's idle timeout does.
        upstream.close_conn(seen.conn).await;
    }
}

/// Answers the request on `conn` with `body`, keeping the connection open.
async fn answer_keep_alive(conn: &mut RawUpstreamConn, body: &str) {
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write(response.as_bytes()).await;
}

/// Serves `/one` keep-alive and returns the upstream connection it came on.
async fn first_exchange(upstream: &mut RawUpstream, client: &mut Client) -> RawUpstreamConn {
    let first = async {
        let mut conn = upstream.next().await;
        answer_keep_alive(&mut conn, "one").await;
        conn
    };
    let (response, conn) = tokio::join!(client.get("/one"), first);
    assert_eq!(body_text(response).await, "one");
    conn
}

/// Reads the next request on `conn`, then closes the connection without
/// answering, as an upstream does when its keep-alive timeout fires while a
/// request is on its way. Returns the request's start line.
async fn close_under_request(mut conn: RawUpstreamConn) -> String {
    let head = conn.conn.read_head().await;
    drop(conn);
    head.start_line
}

#[tokio::test]
async fn a_get_that_meets_the_upstream_closing_its_idle_connection_is_sent_again() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let conn = first_exchange(&mut upstream, &mut client).await;
    let upstream_side = async {
        let dropped = close_under_request(conn).await;
        let mut again = upstream.next().await;
        answer_keep_alive(&mut again, "two").await;
        (dropped, again.request.start_line.clone(), again)
    };
    let (response, (dropped, resent, _again)) =
        tokio::join!(client.send(get("/two", Version::HTTP_11)), upstream_side);
    assert_eq!(dropped, "GET /two HTTP/1.1");
    assert_eq!(
        resent, "GET /two HTTP/1.1",
        "sent again on a new connection"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, "two");
}

#[tokio::test]
async fn a_post_that_meets_the_upstream_closing_its_idle_connection_is_not_sent_twice() {
    let mut upstream = RawUpstream::start().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let conn = first_exchange(&mut upstream, &mut client).await;
    let post = request(Version::HTTP_11, "POST", "localhost", "/order")
        .body(full_body("item=1"))
        .unwrap();
    let (response, dropped) = tokio::join!(client.send(post), close_under_request(conn));
    assert_eq!(dropped, "POST /order HTTP/1.1");
    assert_eq!(response.status(), 502);
    // The next upstream connection carries the next request, not the POST again.
    let next = async {
        let mut conn = upstream.next().await;
        answer_keep_alive(&mut conn, "three").await;
        conn.request.start_line.clone()
    };
    let (response, start_line) = tokio::join!(client.get("/three"), next);
    assert_eq!(start_line, "GET /three HTTP/1.1");
    assert_eq!(body_text(response).await, "three");
}

// -------------------------------------------------------------- slowloris

const SLOW_CLIENTS: usize = 300;
const PARTIAL_HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: x\r\n";

/// Opens `n` TLS connections that each send a request head without its final
/// blank line. Each comes with the instant its handshake finished.
async fn open_slow_clients(addr: SocketAddr, n: usize) -> Vec<(TlsStream<TcpStream>, Instant)> {
    futures_util::stream::iter(0..n)
        .map(|_| async move {
            let mut tls = tls_connect(addr, &[b"http/1.1"]).await;
            let connected = Instant::now();
            tls.write_all(PARTIAL_HEAD)
                .await
                .expect("write partial head");
            tls.flush().await.expect("flush");
            (tls, connected)
        })
        .buffer_unordered(32)
        .collect()
        .await
}

#[tokio::test]
async fn slow_clients_do_not_block_others() {
    let upstream = pong_upstream().await;
    let mut config = proxy_config(upstream.addr);
    // Long enough that no slow client is cut during this test.
    config.timeouts.header_read = Duration::from_secs(60);
    let proxy = spawn_proxy_with(config).await;

    let slow = tokio::time::timeout(
        Duration::from_secs(20),
        open_slow_clients(proxy.addr, SLOW_CLIENTS),
    )
    .await
    .expect("slow clients connect");
    assert_eq!(slow.len(), SLOW_CLIENTS);

    let started = Instant::now();
    proxy_serves(proxy.addr).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "normal request took {took:?}"
    );

    // The slow clients were kept, not dropped: each can still finish.
    let finished = futures_util::stream::iter(slow)
        .map(|(mut tls, _)| async move {
            tls.write_all(b"\r\n").await.expect("finish head");
            tls.flush().await.expect("flush");
            let head = read_head(&mut tls).await;
            head.starts_with("HTTP/1.1 200")
        })
        .buffer_unordered(64)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(finished, SLOW_CLIENTS, "slow clients answered with 200");
}

#[tokio::test]
async fn slow_clients_are_closed_after_the_header_read_timeout() {
    let upstream = pong_upstream().await;
    let mut config = proxy_config(upstream.addr);
    let header_read = Duration::from_secs(1);
    config.timeouts.header_read = header_read;
    let proxy = spawn_proxy_with(config).await;

    let slow = tokio::time::timeout(
        Duration::from_secs(20),
        open_slow_clients(proxy.addr, SLOW_CLIENTS),
    )
    .await
    .expect("slow clients connect");

    let closed: Vec<(bool, Duration, Vec<u8>)> = futures_util::stream::iter(slow)
        .map(|(mut tls, connected)| async move {
            let (data, closed) = read_until_closed(&mut tls, Duration::from_secs(15)).await;
            (closed, connected.elapsed(), data)
        })
        .buffer_unordered(SLOW_CLIENTS)
        .collect()
        .await;
    for (closed, after, data) in &closed {
        assert!(closed, "a slow client was still open after {after:?}");
        // The timer starts once the proxy serves the connection, which is
        // after the client's handshake finished.
        assert!(
            *after >= header_read - Duration::from_millis(100),
            "a slow client was closed after only {after:?}"
        );
        assert!(
            data.is_empty() || data.starts_with(b"HTTP/1.1 408"),
            "unexpected answer to a slow client: {:?}",
            String::from_utf8_lossy(data)
        );
    }
    assert_eq!(closed.len(), SLOW_CLIENTS);
    proxy_serves(proxy.addr).await;
}

/// The same attack one step earlier: TLS completes, then nothing is sent.
#[tokio::test]
async fn silent_clients_are_closed_after_the_header_read_timeout() {
    let upstream = pong_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.header_read = Duration::from_secs(1);
    let proxy = spawn_proxy_with(config).await;

    // Ten of each: ALPN http/1.1, ALPN h2 (not even the preface is sent), no ALPN.
    let alpns: [&[&[u8]]; 3] = [&[b"http/1.1"], &[b"h2"], &[]];
    let silent: Vec<TlsStream<TcpStream>> =
        futures_util::stream::iter(alpns.into_iter().cycle().take(30))
            .then(|alpn| tls_connect(proxy.addr, alpn))
            .collect()
            .await;
    // Five times the timeout, all waited for at once.
    let still_open = futures_util::stream::iter(silent)
        .map(|mut tls| async move {
            let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
            closed
        })
        .buffer_unordered(30)
        .filter(|closed| std::future::ready(!*closed))
        .count()
        .await;
    assert_eq!(
        still_open, 0,
        "connections that sent nothing after the TLS handshake were still open 5 s later"
    );
    proxy_serves(proxy.addr).await;
}

// ------------------------------------------------------- oversized heads

async fn oversized_header_value(version: Version) {
    let upstream = pong_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let big = "a".repeat(100_000);
    let req = request(version, "GET", "localhost", "/big")
        .header("x-big", big.as_str())
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 431);
    assert_eq!(body_text(response).await, TOO_LARGE_BODY);

    // HTTP/2 goes on on the same connection; HTTP/1.1 closes after the
    // refusal (where the head would have ended is not known), and a new
    // connection works.
    if version == Version::HTTP_11 {
        client = Client::connect(proxy.addr, version).await;
    }
    let req = request(version, "GET", "localhost", "/small")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, "pong");
    proxy_serves(proxy.addr).await;
}

#[tokio::test]
async fn header_value_of_100_kb_gets_431_over_http1() {
    oversized_header_value(Version::HTTP_11).await;
}

#[tokio::test]
async fn header_value_of_100_kb_gets_431_over_http2() {
    oversized_header_value(Version::HTTP_2).await;
}

/// A raw request head with `count` headers of `each` bytes of value.
fn raw_head_with_headers(count: usize, each: usize) -> Vec<u8> {
    let mut head = b"GET /many HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    let value = "v".repeat(each);
    for i in 0..count {
        head.extend_from_slice(format!("x-filler-{i:02}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test]
async fn header_section_between_64_and_128_kib_gets_431_with_a_body() {
    let upstream = pong_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // 20 headers of 4 KiB: about 80 KiB, no single header remarkable.
    let head = raw_head_with_headers(20, 4096);
    assert!(head.len() > 64 * 1024 && head.len() < 128 * 1024);
    let mut tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
    tls.write_all(&head).await.expect("write head");
    let response = read_head(&mut tls).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "expected 431, got {response:?}"
    );
    let length = format!("content-length: {}\r\n", TOO_LARGE_BODY.len());
    assert!(
        response.to_ascii_lowercase().contains(&length),
        "expected the proxy's text body: {response:?}"
    );
    let (_, headroom) = response.split_once("\r\n\r\n").unwrap();
    let mut body = headroom.as_bytes().to_vec();
    while body.len() < TOO_LARGE_BODY.len() {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(LIMIT, tls.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(n > 0, "closed before the body");
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&body), TOO_LARGE_BODY);

    // The connection closes after the refusal: where the head would have
    // ended is not known.
    let (_, closed) = read_until_closed(&mut tls, LIMIT).await;
    assert!(closed, "the connection stays open after a 431");

    // Just under the limit is forwarded.
    let head = raw_head_with_headers(14, 4096);
    assert!(head.len() < 64 * 1024);
    let mut tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
    tls.write_all(&head).await.expect("write head");
    let response = read_head(&mut tls).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    proxy_serves(proxy.addr).await;
}

#[tokio::test]
async fn header_section_past_hypers_buffer_gets_431_and_the_proxy_stays_up() {
    let upstream = pong_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // 40 headers of 4 KiB: about 160 KiB, past the 128 KiB read buffer.
    let head = raw_head_with_headers(40, 4096);
    let tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
    let (mut read, mut write) = tokio::io::split(tls);
    // Written concurrently: the proxy stops reading before the end.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&head).await;
        write
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, read.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    drop(writer);
    proxy_serves(proxy.addr).await;
}

// ------------------------------------------------------- malformed heads

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_stays_up() {
    let upstream = pong_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    for raw in [
        &b"GET / HTTP/1.1\r\nHost x\r\n\r\n"[..],
        b"\x01\x02 nonsense\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
        // HTTP/1.1 requires Host; the proxy has nothing to forward.
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
        tls.write_all(raw).await.expect("write");
        let answer = read_head(&mut tls).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(raw)
        );
        proxy_serves(proxy.addr).await;
    }
}
