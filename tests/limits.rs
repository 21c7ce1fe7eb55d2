//! Limits, and the PROXY protocol that tells them who the client is.
//!
//! - `--max-body`: a request body over the limit gets 413, at once when its
//!   length says so (before any of it is read or forwarded), or as soon as a
//!   body of unknown length grows past it; bodies within it pass whole.
//! - `--max-connections`: beyond it, connections wait in the listen backlog
//!   (their TLS handshake stalls) until one closes.
//! - `--max-connections-per-ip`: beyond it, a connection is closed before
//!   its TLS handshake; other addresses are unaffected.
//! - `--max-streams-per-ip`: beyond it, an event stream or shared-stream
//!   subscription gets 429; ordinary requests are not counted.
//! - `--proxy-protocol`: the header's source address is the client's (for
//!   X-Forwarded-For and the limits); no header, no connection.
//! - the flags on the command line.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use common::*;
use http::{Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use ssegate::cli::Cli;
use ssegate::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const LIMIT: u64 = 1024;

async fn limited_proxy(upstream: &TestUpstream) -> ProxyHandle {
    let mut config = proxy_config(upstream.addr);
    config.max_body = Some(LIMIT);
    spawn_proxy_with(config).await
}

fn post(version: Version, body: TestBody) -> http::Request<TestBody> {
    request(version, "POST", "localhost", "/upload")
        .body(body)
        .unwrap()
}

/// Fails if the limit is not applied, or is applied one byte early.
#[tokio::test]
async fn a_body_within_the_limit_passes_whole() {
    let mut upstream = TestUpstream::start().await;
    let proxy = limited_proxy(&upstream).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let body = vec![b'x'; LIMIT as usize];
        let response = client.send(post(version, full_body(body.clone()))).await;
        assert_eq!(response.status(), 200, "{version:?}");
        assert_eq!(upstream.next_request().await.body, body);
    }
}

/// Fails if a body announced too large is read or forwarded before the 413.
#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_before_anything_is_forwarded() {
    let mut upstream = TestUpstream::start().await;
    let proxy = limited_proxy(&upstream).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let body = vec![b'x'; LIMIT as usize + 1];
        let response = client.send(post(version, full_body(body))).await;
        assert_plain_error(response, 413).await;
    }
    // Over HTTP/1.1 with Expect: 100-continue the body is never invited.
    let mut conn = raw_connect(proxy.addr, &[b"http/1.1"]).await;
    conn.write(
        format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            LIMIT + 1
        )
        .as_bytes(),
    )
    .await;
    let response = conn.read_response(false).await;
    assert_eq!(response.head.status(), 413);
    conn.assert_closed("after refusing the body").await;
    assert!(upstream.saw_nothing_more(), "nothing reached the upstream");
}

/// Fails if a body of unknown length is forwarded past the limit, or the
/// client is not told why.
#[tokio::test]
async fn a_streamed_body_growing_past_the_limit_gets_413() {
    let upstream = TestUpstream::builder()
        .otherwise(Reply::hold())
        .start()
        .await;
    let proxy = limited_proxy(&upstream).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let (tx, body, _closed) = channel_body();
        let sending = tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send(Bytes::from(vec![b'x'; 512])).await.is_err() {
                    return;
                }
            }
            // Held open: the proxy must not wait for the end to refuse it.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let response = tokio::time::timeout(WAIT_LIMIT, client.send(post(version, body)))
            .await
            .expect("an answer before the body ends");
        assert_plain_error(response, 413).await;
        sending.abort();
    }
}

// ---------------------------------------------------------------- helpers

fn at_most(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

/// The TLS handshake (as `localhost`) over a TCP connection already made;
/// an error if the proxy closes the connection first.
async fn tls_over(tcp: TcpStream, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(client_tls_config(alpn))
        .connect(name, tcp)
        .await
}

/// An HTTP/1.1 or HTTP/2 client over a TCP connection already made (after
/// a PROXY header, or from another local address).
async fn client_over(tcp: TcpStream, version: Version) -> Client {
    tcp.set_nodelay(true).expect("nodelay");
    let alpn: &[&[u8]] = match version {
        Version::HTTP_2 => &[b"h2"],
        _ => &[b"http/1.1"],
    };
    let tls = timeout(WAIT_LIMIT, tls_over(tcp, alpn))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    match version {
        Version::HTTP_2 => {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            Client::H2(sender)
        }
        _ => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("h1 handshake");
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Client::H1(H1Connection { sender, conn })
        }
    }
}

/// Whether the proxy closes `tcp` instead of completing a TLS handshake.
async fn handshake_refused(tcp: TcpStream) -> bool {
    let handshake = timeout(WAIT_LIMIT, tls_over(tcp, &[b"http/1.1"])).await;
    matches!(handshake, Ok(Err(_)))
}

/// A TCP connection to `addr` from the local address `local` (any address
/// of 127.0.0.0/8 is this machine's).
async fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind a local address");
    socket.connect(addr).await.expect("connect")
}

/// A TCP connection to `addr` that starts with `header`.
async fn connect_with(addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(header).await.expect("write the header");
    tcp
}

/// A PROXY v1 header from `src` (to a made-up destination).
fn v1(src: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("address");
    let (family, dst) = match src {
        SocketAddr::V4(_) => ("TCP4", "192.0.2.1"),
        SocketAddr::V6(_) => ("TCP6", "2001:db8::1"),
    };
    format!("PROXY {family} {} {dst} {} 443\r\n", src.ip(), src.port()).into_bytes()
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 header, command PROXY over TCP, from `src`.
fn v2(src: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("address");
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match src.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0x11, 0, 12]); // TCP over IPv4, 12 bytes
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(&[192, 0, 2, 1]);
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0x21, 0, 36]); // TCP over IPv6, 36 bytes
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&443u16.to_be_bytes());
    out
}

/// A PROXY v2 LOCAL header, as a balancer's health check sends.
fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// An upstream that streams events under /events and answers "ok" elsewhere.
async fn events_upstream() -> TestUpstream {
    TestUpstream::builder()
        .on("/events*", Reply::event_stream())
        .on("/shared*", Reply::event_stream())
        .start()
        .await
}

async fn assert_ok(response: Response<Incoming>) {
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "ok");
}

/// Asks for `path` until it is not refused with 429: the proxy frees a
/// stream's slot when it sees the client leave, which a test cannot await.
async fn until_not_refused(client: &mut Client, path: &str) -> Response<Incoming> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let response = client.send(get(path, client.version())).await;
        if response.status() != 429 {
            return response;
        }
        assert!(Instant::now() < deadline, "{path} still refused");
        read_body(response.into_body()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- --max-connections

/// Catches: connections accepted (and handshaken) beyond the limit, or
/// accepted and closed rather than left in the backlog, or a closed
/// connection's place never given back.
#[tokio::test]
async fn beyond_max_connections_a_connection_waits_in_the_backlog_until_one_closes() {
    let upstream = TestUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.limits.max_connections = at_most(2);
    let proxy = spawn_proxy_with(config).await;

    let mut first = Client::connect(proxy.addr, Version::HTTP_11).await;
    let mut second = Client::connect(proxy.addr, Version::HTTP_2).await;
    // The kernel completes the TCP handshake; nobody accepts it.
    let third = TcpStream::connect(proxy.addr)
        .await
        .expect("the kernel queues the connection");
    let mut third = Box::pin(tls_over(third, &[b"http/1.1"]));
    assert_ok(first.get("/one").await).await;
    assert_ok(second.get("/two").await).await;
    let early = timeout(Duration::from_millis(500), &mut third).await;
    assert!(
        early.is_err(),
        "a third connection was served while two were open: {early:?}"
    );

    drop(first);
    let tls = timeout(WAIT_LIMIT, third)
        .await
        .expect("accepted once one of the two closed")
        .expect("TLS handshake");
    let mut third = RawConn::new(tls);
    third
        .write(b"GET /three HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(third.read_response(false).await.head.status(), 200);
    assert_ok(second.get("/two-again").await).await;
}

// ---------------------------------------------------------------- --max-connections-per-ip

/// Catches: the per-address limit not applied, applied to every address
/// together, or never released when a connection closes.
#[tokio::test]
async fn beyond_max_connections_per_ip_a_connection_is_closed_and_other_addresses_are_not() {
    let mut upstream = TestUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.limits.max_connections_per_ip = at_most(2);
    let proxy = spawn_proxy_with(config).await;

    let first = Client::connect(proxy.addr, Version::HTTP_11).await;
    let mut second = Client::connect(proxy.addr, Version::HTTP_2).await;
    let third = TcpStream::connect(proxy.addr).await.expect("connect");
    assert!(
        handshake_refused(third).await,
        "a third connection from 127.0.0.1 was served"
    );

    let other_address = connect_from([127, 0, 0, 2].into(), proxy.addr).await;
    let mut other = client_over(other_address, Version::HTTP_11).await;
    assert_ok(other.get("/other").await).await;
    let seen = upstream.next_request().await;
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.2"));
    assert_ok(second.get("/second").await).await;
    assert_eq!(upstream.next_request().await.path(), "/second");

    // Once one of 127.0.0.1's connections is closed (which the proxy sees
    // in its own time), 127.0.0.1 gets one again.
    drop(first);
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut again = loop {
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        if let Ok(tls) = tls_over(tcp, &[b"http/1.1"]).await {
            break RawConn::new(tls);
        }
        assert!(Instant::now() < deadline, "127.0.0.1 stays refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    again
        .write(b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(again.read_response(false).await.head.status(), 200);
}

// ---------------------------------------------------------------- --max-streams-per-ip

async fn streams_proxy(upstream: &TestUpstream, max: u32) -> ProxyHandle {
    let mut config = proxy_config(upstream.addr);
    config.limits.max_streams_per_ip = at_most(max);
    config.streams.shared_prefixes = vec!["/shared".into()];
    spawn_proxy_with(config).await
}

/// Catches: event streams not counted, ordinary requests counted, a
/// refused stream's upstream response kept (or its connection reused), a
/// 429 that closes the HTTP/1.1 connection, or a slot not freed when its
/// stream ends or its client leaves.
#[tokio::test]
async fn a_second_event_stream_from_one_address_gets_429_until_the_first_is_over() {
    let mut upstream = events_upstream().await;
    let proxy = streams_proxy(&upstream, 1).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut first_client = Client::connect(proxy.addr, version).await;
        let first = first_client.send(get("/events/1", version)).await;
        assert_eq!(first.status(), 200, "{version:?}");
        let first_upstream = upstream.next_stream_for("/events/1").await;

        let mut client = Client::connect(proxy.addr, version).await;
        assert_ok(client.send(get("/plain", version)).await).await;
        let refused = client.send(get("/events/2", version)).await;
        assert_plain_error(refused, 429).await;
        // The upstream answered; its response was dropped unread.
        let refused_upstream = upstream.next_stream_for("/events/2").await;
        timeout(WAIT_LIMIT, refused_upstream.closed())
            .await
            .expect("the refused stream's upstream connection is closed");
        // The connection that got the 429 goes on.
        assert_ok(client.send(get("/plain", version)).await).await;

        // The first stream ends: the address may open another.
        first_upstream.send("data: one\n\n").await;
        first_upstream.end().await;
        let (body, end) = read_body_until_end(first.into_body(), WAIT_LIMIT).await;
        assert_eq!(
            (body.as_slice(), end),
            (&b"data: one\n\n"[..], BodyEnd::Clean)
        );
        let third = client.send(get("/events/3", version)).await;
        assert_eq!(third.status(), 200, "{version:?} after the first ended");
        let third_upstream = upstream.next_stream_for("/events/3").await;

        // Its client leaves: by the time the upstream sees its connection
        // close, the slot is free.
        drop(third);
        drop(client);
        timeout(WAIT_LIMIT, third_upstream.closed())
            .await
            .expect("the proxy lets go of the stream its client left");
        let fourth = first_client.send(get("/events/4", version)).await;
        assert_eq!(fourth.status(), 200, "{version:?} after the client left");
        upstream.next_stream_for("/events/4").await.end().await;
        read_body(fourth.into_body()).await;
        while upstream.try_next_request().is_some() {}
    }
}

/// Catches: shared-stream subscriptions not counted (they never reach the
/// upstream on their own, so only the proxy can count them), or counted
/// apart from ordinary event streams.
#[tokio::test]
async fn shared_stream_subscriptions_count_as_event_streams() {
    let mut upstream = events_upstream().await;
    let proxy = streams_proxy(&upstream, 1).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let subscription = client.get("/shared/live").await;
    assert_eq!(subscription.status(), 200);
    let shared_upstream = upstream.next_stream_for("/shared/live").await;

    assert_plain_error(client.get("/shared/live").await, 429).await;
    assert_plain_error(client.get("/shared/other").await, 429).await;
    assert_plain_error(client.get("/events/1").await, 429).await;
    assert_ok(client.get("/plain").await).await;
    // Refused before subscribing: no second shared stream was opened.
    assert_eq!(proxy.hub.stream_count(), 1);
    let refused_upstream = upstream.next_stream_for("/events/1").await;
    timeout(WAIT_LIMIT, refused_upstream.closed())
        .await
        .expect("the refused stream's upstream connection is closed");

    // An ordinary event stream holds the slot as well.
    drop(subscription);
    let stream = until_not_refused(&mut client, "/events/2").await;
    assert_eq!(stream.status(), 200);
    assert_plain_error(client.get("/shared/live").await, 429).await;
    drop(shared_upstream);
}

// ---------------------------------------------------------------- --proxy-protocol

async fn proxy_protocol_proxy(upstream: &TestUpstream) -> ProxyHandle {
    let mut config = proxy_config(upstream.addr);
    config.limits.proxy_protocol = true;
    spawn_proxy_with(config).await
}

/// Catches: the TCP peer (the balancer) forwarded instead of the client
/// the header names, a header version or family misread, or LOCAL and
/// UNKNOWN not falling back to the TCP peer.
#[tokio::test]
async fn the_proxy_header_source_is_the_client_address_the_upstream_sees() {
    let mut upstream = TestUpstream::start().await;
    let proxy = proxy_protocol_proxy(&upstream).await;
    let cases: [(&str, Vec<u8>, &str, Version); 6] = [
        (
            "v1 TCP4",
            v1("203.0.113.7:40000"),
            "203.0.113.7",
            Version::HTTP_11,
        ),
        (
            "v1 TCP6",
            v1("[2001:db8::7]:40000"),
            "2001:db8::7",
            Version::HTTP_2,
        ),
        (
            "v2 TCP4",
            v2("198.51.100.9:1234"),
            "198.51.100.9",
            Version::HTTP_2,
        ),
        (
            "v2 TCP6",
            v2("[2001:db8::9]:1234"),
            "2001:db8::9",
            Version::HTTP_11,
        ),
        ("v2 LOCAL", v2_local(), "127.0.0.1", Version::HTTP_11),
        (
            "v1 UNKNOWN",
            b"PROXY UNKNOWN\r\n".to_vec(),
            "127.0.0.1",
            Version::HTTP_2,
        ),
    ];
    for (name, header, client_ip, version) in cases {
        let tcp = connect_with(proxy.addr, &header).await;
        let mut client = client_over(tcp, version).await;
        assert_ok(client.get("/who").await).await;
        let seen = upstream.next_request().await;
        assert_eq!(seen.header("x-forwarded-for"), Some(client_ip), "{name}");
    }
}

/// Catches: a connection served without a header (a client that went
/// around the balancer could then claim any address), or with one that is
/// not valid.
#[tokio::test]
async fn without_a_valid_proxy_header_a_connection_is_closed_before_the_upstream() {
    let mut upstream = TestUpstream::start().await;
    let proxy = proxy_protocol_proxy(&upstream).await;
    let mut bad_v2 = v2("198.51.100.9:1234");
    bad_v2[12] = 0x31; // version 3
    let refused: [(&str, Vec<u8>); 5] = [
        ("no header", Vec::new()),
        (
            "HTTP instead",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("garbage v1", b"PROXY TCP4 nonsense\r\n".to_vec()),
        ("v1 cut short", b"PROXY TCP4 203.0.113.7 ".to_vec()),
        ("v2 version 3", bad_v2),
    ];
    for (name, header) in refused {
        let tcp = connect_with(proxy.addr, &header).await;
        assert!(handshake_refused(tcp).await, "{name}: served");
    }
    assert!(
        upstream.saw_nothing_more(),
        "a request reached the upstream"
    );
    assert_eq!(upstream.accepts(), 0);

    // The listener goes on serving connections with a header.
    let tcp = connect_with(proxy.addr, &v1("203.0.113.7:40000")).await;
    assert_ok(client_over(tcp, Version::HTTP_11).await.get("/after").await).await;
    let seen = upstream.next_request().await;
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7"));
}

/// Catches: a header that never completes holding a connection open past
/// the TLS handshake timeout.
#[tokio::test]
async fn a_proxy_header_that_never_completes_is_cut_at_the_handshake_timeout() {
    let upstream = TestUpstream::start().await;
    let mut config = proxy_config(upstream.addr);
    config.limits.proxy_protocol = true;
    config.timeouts.tls_handshake = Duration::from_millis(300);
    let proxy = spawn_proxy_with(config).await;
    let mut tcp = connect_with(proxy.addr, b"PROXY TCP4 203.0.113.7 ").await;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = timeout(WAIT_LIMIT, tcp.read(&mut byte))
        .await
        .expect("the proxy closes the connection in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// Catches: per-address limits that count the TCP peer (the balancer, the
/// same for every client) rather than the address in the PROXY header.
#[tokio::test]
async fn per_ip_limits_count_the_address_in_the_proxy_header() {
    let mut upstream = events_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.limits.proxy_protocol = true;
    config.limits.max_connections_per_ip = at_most(1);
    config.limits.max_streams_per_ip = at_most(1);
    let proxy = spawn_proxy_with(config).await;

    let tcp = connect_with(proxy.addr, &v1("203.0.113.7:40000")).await;
    let mut a = client_over(tcp, Version::HTTP_2).await;
    let tcp = connect_with(proxy.addr, &v2("203.0.113.7:40001")).await;
    assert!(
        handshake_refused(tcp).await,
        "a second connection from 203.0.113.7 was served"
    );
    let tcp = connect_with(proxy.addr, &v2("[2001:db8::8]:40002")).await;
    let mut b = client_over(tcp, Version::HTTP_2).await;

    let a_stream = a.get("/events/a").await;
    assert_eq!(a_stream.status(), 200);
    let a_upstream = upstream.next_stream_for("/events/a").await;
    assert_eq!(a_upstream.header("x-forwarded-for"), Some("203.0.113.7"));
    let b_stream = b.get("/events/b").await;
    assert_eq!(
        b_stream.status(),
        200,
        "another address has a slot of its own"
    );
    let b_upstream = upstream.next_stream_for("/events/b").await;
    assert_eq!(b_upstream.header("x-forwarded-for"), Some("2001:db8::8"));
    assert_plain_error(a.get("/events/a2").await, 429).await;
}

// ---------------------------------------------------------------- command line

const BIN_LIMIT: Duration = Duration::from_secs(30);

fn base_args() -> Vec<String> {
    vec![
        "ssegate".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        dev_cert_path().display().to_string(),
        "--key".into(),
        dev_key_path().display().to_string(),
        "--upstream".into(),
        "http://127.0.0.1:9".into(),
    ]
}

fn parse_config(extra: &[&str]) -> Config {
    let mut args = base_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let cli = Cli::try_parse_from(args).expect("the command line parses");
    Config::from_args(&cli.proxy).expect("a valid configuration")
}

/// Runs the binary with `args` after the required flags, and `env`, to its
/// exit; returns its exit code and stderr.
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd: Command = ssegate_command();
    cmd.args(&base_args()[1..]).args(args);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut running = Running::spawn(cmd);
    let status = running.wait_exit(BIN_LIMIT);
    (status.code(), running.stderr.join("\n"))
}

/// Catches: a flag that does not reach `Config::limits`, or a limit on by
/// default.
#[test]
fn limit_flags_reach_the_config_and_are_off_by_default() {
    let limits = parse_config(&[]).limits;
    assert_eq!(limits.max_connections, None);
    assert_eq!(limits.max_connections_per_ip, None);
    assert_eq!(limits.max_streams_per_ip, None);
    assert!(!limits.proxy_protocol);

    let limits = parse_config(&[
        "--max-connections",
        "1000",
        "--max-connections-per-ip",
        "20",
        "--max-streams-per-ip",
        "6",
        "--proxy-protocol",
    ])
    .limits;
    assert_eq!(limits.max_connections, at_most(1000));
    assert_eq!(limits.max_connections_per_ip, at_most(20));
    assert_eq!(limits.max_streams_per_ip, at_most(6));
    assert!(limits.proxy_protocol);
}

/// Catches: a zero (which would refuse everything) or a non-number taken
/// as a limit, or an error that does not say what is wrong.
#[test]
fn a_limit_of_zero_or_not_a_number_is_a_usage_error() {
    for flag in [
        "--max-connections",
        "--max-connections-per-ip",
        "--max-streams-per-ip",
    ] {
        for bad in ["0", "-1", "ten", "1.5"] {
            let (code, stderr) = run_binary(&[&format!("{flag}={bad}")], &[]);
            assert_eq!(code, Some(2), "{flag} {bad}: {stderr}");
            assert!(stderr.contains(flag), "{flag} {bad}: {stderr}");
            assert!(stderr.contains("at least 1"), "{flag} {bad}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    let (code, stderr) = run_binary(&[], &[("SSEGATE_MAX_STREAMS_PER_IP", "0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at least 1"), "{stderr}");
}

/// Catches: a new flag missing from --help or without its env variable.
#[test]
fn help_lists_the_limit_flags_with_their_env_vars() {
    let mut cmd = ssegate_command();
    cmd.arg("--help");
    let mut running = Running::spawn(cmd);
    assert!(running.wait_exit(BIN_LIMIT).success());
    let help = running.stdout.join("\n");
    for (flag, env) in [
        ("--max-connections <N>", "[env: SSEGATE_MAX_CONNECTIONS="),
        (
            "--max-connections-per-ip <N>",
            "[env: SSEGATE_MAX_CONNECTIONS_PER_IP=",
        ),
        (
            "--max-streams-per-ip <N>",
            "[env: SSEGATE_MAX_STREAMS_PER_IP=",
        ),
        ("--proxy-protocol", "[env: SSEGATE_PROXY_PROTOCOL="),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(help.contains(env), "--help lacks {env}:\n{help}");
    }
}
