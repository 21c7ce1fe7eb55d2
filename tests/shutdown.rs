//! Graceful drain: on shutdown the listener closes, in-flight requests
//! finish, every event stream ends at its next event boundary (with `retry:`
//! when configured), HTTP/2 connections get GOAWAY, and `run` returns when all
//! is done or when the drain timeout runs out. Also through the real binary
//! and SIGTERM.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Version;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Upper bound for anything the test waits on; far above what it needs.
const LIMIT: Duration = Duration::from_secs(10);
/// How long the upstream takes to answer `/slow`.
const SLOW: Duration = Duration::from_millis(500);
/// How long after shutdown the upstream completes the half-written event.
const COMPLETES_AFTER: Duration = Duration::from_millis(300);
const SLOW_BODY_LEN: usize = 256 * 1024;
/// How long the upstream takes to answer `/live/late`.
const LATE: Duration = Duration::from_secs(1);

fn slow_body() -> Bytes {
    (0..SLOW_BODY_LEN)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------- upstream

/// An upstream with an event stream under `/events` and `/live` (under
/// `/live/late` only after `LATE`), a slow ordinary response under `/slow`
/// and a fast one everywhere else. Every request is reported on arrival
/// (`take_request`), before it is answered.
async fn start_upstream() -> TestUpstream {
    TestUpstream::builder()
        .on("/live/late", Reply::event_stream().delayed(LATE))
        .on("/events", Reply::event_stream())
        .on("/live*", Reply::event_stream())
        .on(
            "/slow",
            Reply::body(slow_body())
                .header("content-type", "application/octet-stream")
                .delayed(SLOW),
        )
        .otherwise(Reply::body("fast"))
        .start()
        .await
}

/// Waits until the upstream has received a request for `path`.
async fn request_started(upstream: &mut TestUpstream, path: &str) {
    upstream.take_request(|r| r.target == path).await;
}

// ---------------------------------------------------------------- helpers

const FIRST_EVENT: &str = "id: 1\nevent: tick\ndata: one\n\n";

/// Opens `/events` through `client`, relays one whole event and half of the
/// next one, and returns the stream and the client's reader.
async fn stream_mid_event(
    client: &mut Client,
    upstream: &mut TestUpstream,
) -> (UpstreamStream, RawReader) {
    let response = client.get("/events").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;
    let mut reader = RawReader::new(response.into_body());
    assert!(stream.write_event(1, "tick", &["one"]).await);
    reader.read_until_ends_with(FIRST_EVENT).await;
    stream.send("id: 2\n").await;
    stream.send("data: ha").await;
    reader.read_until_ends_with("data: ha").await;
    (stream, reader)
}

/// The upstream completes event 2 and writes event 3, which must not be
/// relayed any more.
async fn complete_event(stream: &UpstreamStream) {
    stream.send("lf\n").await;
    stream.send("\n").await;
    let _ = stream.write_event(3, "tick", &["too late"]).await;
}

// ---------------------------------------------------------------- drain

/// With two serving threads, the event stream's connection is served by the
/// test's runtime and the slow request's by the proxy's second thread.
async fn drain_ends_streams_at_a_boundary_and_finishes_requests(version: Version, threads: usize) {
    const DRAIN_RETRY: Duration = Duration::from_millis(2500);
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.threads = threads.try_into().expect("threads > 0");
    config.streams.drain_retry = Some(DRAIN_RETRY);
    config.timeouts.drain = DRAIN_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;
    let addr = proxy.addr;

    // A live event stream, mid-event.
    let mut stream_client = Client::connect(addr, version).await;
    let (stream, mut reader) = stream_mid_event(&mut stream_client, &mut upstream).await;

    // A slow ordinary request, in flight: over HTTP/2 on the same connection.
    let mut slow_client = match &stream_client {
        Client::H2(sender) => Client::H2(sender.clone()),
        Client::H1(_) => Client::connect(addr, version).await,
    };
    let slow = tokio::spawn(async move {
        let response = slow_client.get("/slow").await;
        let status = response.status();
        let body = tokio::time::timeout(LIMIT, response.into_body().collect())
            .await
            .expect("slow body in time")
            .expect("slow body complete")
            .to_bytes();
        (status, body)
    });
    request_started(&mut upstream, "/slow").await;

    // Shut down.
    let started = Instant::now();
    let run = tokio::spawn(proxy.shutdown_and_wait());

    // The listener closes at once, while the stream and the request go on.
    until_refused(addr).await;
    if let Client::H2(sender) = &mut stream_client {
        // GOAWAY: the connection takes no new streams, though its open ones
        // (the event stream, the slow request) carry on below.
        // (Requests sent before the GOAWAY arrives may still be served.)
        let deadline = Instant::now() + LIMIT;
        while sender
            .send_request(get("/fast", Version::HTTP_2))
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "no GOAWAY");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The upstream completes the event a bit later: the stream ends right
    // after it, with the retry line.
    tokio::time::sleep(COMPLETES_AFTER).await;
    assert!(
        !run.is_finished(),
        "run() returned before the stream reached a boundary"
    );
    complete_event(&stream).await;
    reader.read_to_end().await;
    assert_eq!(
        reader.text(),
        format!(
            "{FIRST_EVENT}id: 2\ndata: half\n\nretry: {}\n\n",
            DRAIN_RETRY.as_millis()
        ),
        "{version:?}"
    );

    let (status, body) = tokio::time::timeout(LIMIT, slow)
        .await
        .expect("the slow request completes")
        .expect("slow request task");
    assert_eq!(status, 200);
    assert!(body == slow_body(), "slow body: {} bytes", body.len());

    tokio::time::timeout(LIMIT, run)
        .await
        .expect("run() returns")
        .expect("run task");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "run() returned {took:?} after shutdown (drain timeout {DRAIN_TIMEOUT:?})"
    );
    assert!(
        took >= SLOW.min(COMPLETES_AFTER),
        "run() returned too early: {took:?}"
    );
    assert!(refused(addr).await, "the port is still open");
    // The upstream request behind the ended stream is released.
    tokio::time::timeout(LIMIT, stream.closed())
        .await
        .expect("the upstream stream is released");
}

#[tokio::test]
async fn drain_finishes_requests_and_ends_streams_at_the_next_boundary_over_http1() {
    drain_ends_streams_at_a_boundary_and_finishes_requests(Version::HTTP_11, 1).await;
}

#[tokio::test]
async fn drain_covers_the_connections_of_every_serving_thread() {
    drain_ends_streams_at_a_boundary_and_finishes_requests(Version::HTTP_11, 2).await;
}

#[tokio::test]
async fn drain_sends_goaway_finishes_requests_and_ends_streams_at_the_next_boundary_over_http2() {
    drain_ends_streams_at_a_boundary_and_finishes_requests(Version::HTTP_2, 1).await;
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown_when_a_stream_never_reaches_a_boundary() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.drain = DRAIN_TIMEOUT;
    config.streams.drain_retry = Some(Duration::from_secs(1));
    let proxy = spawn_proxy_with(config).await;
    let addr = proxy.addr;
    let mut client = Client::connect(addr, Version::HTTP_11).await;
    // The upstream never completes event 2.
    let (_stream, mut reader) = stream_mid_event(&mut client, &mut upstream).await;

    let started = Instant::now();
    tokio::time::timeout(DRAIN_TIMEOUT + LIMIT, proxy.shutdown_and_wait())
        .await
        .expect("run() returns");
    let took = started.elapsed();
    assert!(took >= DRAIN_TIMEOUT, "run() returned after {took:?}");
    assert!(
        took < DRAIN_TIMEOUT + Duration::from_secs(2),
        "run() returned {took:?} after shutdown, drain timeout {DRAIN_TIMEOUT:?}"
    );
    assert!(refused(addr).await, "the port is still open");
    // Nothing was written into the unfinished event.
    let more = tokio::time::timeout(Duration::from_millis(100), reader.body.frame()).await;
    if let Ok(Some(Ok(frame))) = more {
        panic!("written into an unfinished event: {frame:?}");
    }
    assert_eq!(reader.text(), format!("{FIRST_EVENT}id: 2\ndata: ha"));
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let upstream = start_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let addr = proxy.addr;
    let mut h1 = Client::connect(addr, Version::HTTP_11).await;
    let mut h2 = Client::connect(addr, Version::HTTP_2).await;
    for client in [&mut h1, &mut h2] {
        let response = client.get("/fast").await;
        assert_eq!(response.status(), 200);
        assert_eq!(read_body(response.into_body()).await, "fast");
    }
    let started = Instant::now();
    tokio::time::timeout(LIMIT, proxy.shutdown_and_wait())
        .await
        .expect("run() returns");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "run() returned after {took:?}"
    );
    // Both connections were closed by the proxy.
    if let Client::H1(h1) = &mut h1 {
        tokio::time::timeout(LIMIT, &mut h1.conn)
            .await
            .expect("the h1 connection is closed")
            .expect("h1 connection task");
    }
    assert!(
        h2.try_get("/fast").await.is_err(),
        "the h2 connection still takes requests"
    );
}

#[tokio::test]
async fn shared_stream_subscribers_end_with_retry_and_the_upstream_is_released() {
    const PATH: &str = "/live/news";
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.shared_prefixes = vec!["/live".into()];
    config.streams.drain_retry = Some(Duration::from_millis(2000));
    let proxy = spawn_proxy_with(config).await;
    let hub = proxy.hub.clone();
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.get(PATH).await;
        assert_eq!(response.status(), 200);
        readers.push(RawReader::new(response.into_body()));
        clients.push(client);
    }
    let stream = upstream.next_stream().await;
    stream.send("retry: 1000\n\n").await;
    assert!(stream.write_event(1, "tick", &["one"]).await);
    // Half an event: the hub relays whole events only, so every subscriber
    // sits on a boundary.
    stream.send("id: 2\ndata: ha").await;
    for reader in &mut readers {
        reader
            .read_until_ends_with(&format!("retry: 1000\n\n{FIRST_EVENT}"))
            .await;
    }

    let started = Instant::now();
    tokio::time::timeout(LIMIT, proxy.shutdown_and_wait())
        .await
        .expect("run() returns");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for reader in &mut readers {
        reader.read_to_end().await;
        assert_eq!(
            reader.text(),
            format!("retry: 1000\n\n{FIRST_EVENT}retry: 2000\n\n")
        );
    }
    tokio::time::timeout(LIMIT, stream.closed())
        .await
        .expect("the shared upstream request is closed");
    assert_eq!(hub.stream_count(), 0);
}

#[tokio::test]
async fn a_shared_stream_still_connecting_at_shutdown_does_not_hold_up_the_drain() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    let mut upstream = start_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.shared_prefixes = vec!["/live".into()];
    config.streams.drain_retry = Some(Duration::from_millis(2000));
    config.timeouts.drain = DRAIN_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    // The first subscriber of a shared stream waits for the upstream's headers.
    let subscriber = tokio::spawn(async move {
        let response = client.get("/live/late").await;
        let status = response.status();
        let mut reader = RawReader::new(response.into_body());
        reader.read_to_end().await;
        (status, reader.text())
    });
    request_started(&mut upstream, "/live/late").await;

    let started = Instant::now();
    let run = tokio::spawn(proxy.shutdown_and_wait());
    // Either answer is fine: an error at once, or the stream, ended at its
    // first boundary. Waiting out the request timeout is not.
    let answered = tokio::time::timeout(LATE + Duration::from_secs(2), subscriber).await;
    let waited = started.elapsed();
    let (status, body) = answered
        .unwrap_or_else(|_| panic!("the subscriber still had no answer {waited:?} after shutdown"))
        .expect("subscriber task");
    assert!(
        status != 200 || body == "retry: 2000\n\n",
        "{status}: {body:?}"
    );
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("run() returns")
        .expect("run task");
    let took = started.elapsed();
    assert!(
        took < LATE + Duration::from_secs(2),
        "run() returned {took:?} after shutdown (drain timeout {DRAIN_TIMEOUT:?})"
    );
}

// ---------------------------------------------------------------- the binary

/// The proxy binary, killed if the test ends before it exits.
struct Binary {
    child: tokio::process::Child,
    stderr: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl Binary {
    fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::from(ssegate_command())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ssegate");
        let stderr = output_lines(child.stderr.take().expect("stderr"));
        Binary {
            child,
            stderr,
            log: Vec::new(),
        }
    }

    /// Everything the binary has logged so far.
    fn log_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Waits for a log line containing `needle`; returns it.
    async fn line_containing(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                _ => panic!(
                    "no log line with {needle:?}; stderr so far: {:#?}",
                    self.log
                ),
            }
        }
    }
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_with_status_0() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    let mut upstream = start_upstream().await;
    let cert = repo_path("certs/localhost.pem");
    let key = repo_path("certs/localhost-key.pem");
    let upstream_url = format!("http://{}", upstream.addr);
    let mut binary = Binary::start(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--upstream",
        &upstream_url,
        "--drain-timeout",
        &format!("{}s", DRAIN_TIMEOUT.as_secs()),
        "--drain-retry",
        "1500ms",
    ]);
    let line = binary.line_containing("listening on https://").await;
    let addr = listening_addr(&line);

    let mut client = Client::connect(addr, Version::HTTP_11).await;
    let (stream, mut reader) = stream_mid_event(&mut client, &mut upstream).await;

    sigterm(binary.child.id().expect("running"));
    let signalled = Instant::now();
    // Draining: the listener is closed while the stream is still open.
    until_refused(addr).await;

    tokio::time::sleep(COMPLETES_AFTER).await;
    complete_event(&stream).await;
    reader.read_to_end().await;
    assert_eq!(
        reader.text(),
        format!("{FIRST_EVENT}id: 2\ndata: half\n\nretry: 1500\n\n")
    );

    let status = tokio::time::timeout(DRAIN_TIMEOUT, binary.child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still running {DRAIN_TIMEOUT:?} after SIGTERM: {:#?}",
                binary.log_so_far()
            )
        })
        .expect("wait for ssegate");
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}: {:#?}",
        binary.log_so_far()
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM (--drain-timeout {DRAIN_TIMEOUT:?})"
    );
}
