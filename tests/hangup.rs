//! Hang-ups on either side: a client that leaves releases the upstream
//! request at once; an upstream that is gone or hangs up gives 502.

mod common;

use std::time::Duration;

use common::*;
use http::Version;
use hyper_util::rt::TokioIo;

/// How soon the upstream request must end after the client hangs up.
const HANGUP_LIMIT: Duration = Duration::from_secs(1);

/// An upstream whose every request opens an event stream the test feeds.
async fn event_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await
}

/// Writes one event upstream and checks that the client receives it.
async fn relay_one(stream: &UpstreamStream, reader: &mut EventReader, id: u64) {
    let path = stream.path_and_query();
    assert!(
        stream.write_event(id, "tick", &[path]).await,
        "{path}: upstream body dropped"
    );
    let event = reader.next_event(WAIT_LIMIT).await;
    assert_eq!(
        event.map(|e| e.text),
        Some(event_text(id, "tick", path)),
        "{path}"
    );
}

async fn assert_upstream_released(stream: &UpstreamStream, what: &str) {
    let started = tokio::time::Instant::now();
    let released = tokio::time::timeout(HANGUP_LIMIT, stream.closed()).await;
    assert!(
        released.is_ok(),
        "{what}: the upstream request was still open {:?} after the client hung up",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- client hang-up

#[tokio::test]
async fn client_hangup_ends_upstream_request_over_http1() {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;

    // Built by hand rather than with h1_client, to own the connection task.
    let tls = tls_connect(proxy.addr, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    let conn_task = tokio::spawn(conn);

    let response = sender
        .send_request(get("/events", Version::HTTP_11))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream_for("/events").await;
    let mut reader = EventReader::new(response.into_body());
    relay_one(&stream, &mut reader, 1).await;
    assert!(stream.is_open());

    // Hang up: body, sender and the connection itself (TLS and TCP).
    drop(reader);
    drop(sender);
    conn_task.abort();
    let _ = conn_task.await;

    // The upstream stays silent: the proxy must notice without writing.
    assert_upstream_released(&stream, "h1 hang-up").await;
}

#[tokio::test]
async fn client_stream_reset_ends_upstream_request_over_http2() {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let sender = h2_client(proxy.addr).await;

    let response_a = sender
        .clone()
        .send_request(get("/a", Version::HTTP_2))
        .await
        .expect("response a");
    let stream_a = upstream.next_stream_for("/a").await;
    let response_b = sender
        .clone()
        .send_request(get("/b", Version::HTTP_2))
        .await
        .expect("response b");
    let stream_b = upstream.next_stream_for("/b").await;
    let mut reader_a = EventReader::new(response_a.into_body());
    let mut reader_b = EventReader::new(response_b.into_body());
    relay_one(&stream_a, &mut reader_a, 1).await;
    relay_one(&stream_b, &mut reader_b, 1).await;

    // Dropping the body resets stream a only (RST_STREAM); the connection
    // stays open.
    drop(reader_a);
    assert_upstream_released(&stream_a, "h2 stream reset").await;

    // Stream b, on the same connection, carries on.
    assert!(stream_b.is_open(), "stream b was closed too");
    relay_one(&stream_b, &mut reader_b, 2).await;

    // And the connection still takes new streams.
    let response_c = sender
        .clone()
        .send_request(get("/c", Version::HTTP_2))
        .await
        .expect("a new stream on the same connection");
    assert_eq!(response_c.status(), 200);
    let stream_c = upstream.next_stream_for("/c").await;
    let mut reader_c = EventReader::new(response_c.into_body());
    relay_one(&stream_c, &mut reader_c, 1).await;
    relay_one(&stream_b, &mut reader_b, 3).await;
    assert!(stream_b.is_open());
}

// ---------------------------------------------------------------- upstream gone

/// Far above what a refused connection takes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn dead_upstream_gives_502(version: Version) {
    let mut config = proxy_config(dead_upstream_addr().await);
    config.timeouts.connect = CONNECT_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;
    let started = tokio::time::Instant::now();
    let response = get_once(proxy.addr, "/events", version).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "502 only after {elapsed:?}: the refused connection should fail at once"
    );
    assert_plain_error(response, 502).await;
}

#[tokio::test]
async fn dead_upstream_gives_502_at_once_over_http1() {
    dead_upstream_gives_502(Version::HTTP_11).await;
}

#[tokio::test]
async fn dead_upstream_gives_502_at_once_over_http2() {
    dead_upstream_gives_502(Version::HTTP_2).await;
}

/// The upstream reads the request's head and closes the connection without
/// answering.
async fn upstream_hangup_gives_502(version: Version) {
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::close())
        .start()
        .await;
    let proxy = spawn_proxy(upstream.addr).await;
    let response = tokio::time::timeout(WAIT_LIMIT, get_once(proxy.addr, "/events", version))
        .await
        .expect("the proxy answers");
    let seen = upstream
        .try_next_request()
        .expect("the upstream got the request");
    assert_eq!(seen.target, "/events");
    assert!(
        upstream.conn_closed(seen.conn, WAIT_LIMIT).await,
        "the upstream hung up"
    );
    assert_plain_error(response, 502).await;
}

#[tokio::test]
async fn upstream_closing_without_answer_gives_502_over_http1() {
    upstream_hangup_gives_502(Version::HTTP_11).await;
}

#[tokio::test]
async fn upstream_closing_without_answer_gives_502_over_http2() {
    upstream_hangup_gives_502(Version::HTTP_2).await;
}
