//! The request timeout applies to response headers and to silences inside
//! ordinary bodies; event streams are only ended by the (long) SSE idle timeout.

mod common;

use std::time::Duration;

use common::*;
use http::Version;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- 504

/// Far beyond the request timeout: the upstream would answer only then.
const SLOW_UPSTREAM_DELAY: Duration = Duration::from_secs(5);

async fn slow_headers_get_504(version: Version) {
    let upstream = TestUpstream::builder()
        .otherwise(Reply::text("too late").delayed(SLOW_UPSTREAM_DELAY))
        .start()
        .await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let started = tokio::time::Instant::now();
    let response = get_once(proxy.addr, "/slow", version).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(
        elapsed >= REQUEST_TIMEOUT,
        "504 after {elapsed:?}, before the request timeout"
    );
    assert!(
        elapsed < SLOW_UPSTREAM_DELAY / 2,
        "504 only after {elapsed:?}"
    );
    assert_plain_error(response, 504).await;
}

#[tokio::test]
async fn slow_response_headers_get_504_over_http1() {
    slow_headers_get_504(Version::HTTP_11).await;
}

#[tokio::test]
async fn slow_response_headers_get_504_over_http2() {
    slow_headers_get_504(Version::HTTP_2).await;
}

// ---------------------------------------------------------------- event streams

/// Longer than the request timeout, several times over.
const LONG_SILENCE: Duration = Duration::from_millis(1000);

async fn event_stream_outlives_request_timeout(version: Version) {
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let response = get_once(proxy.addr, "/events", version).await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;
    let mut reader = EventReader::new(response.into_body());

    assert!(stream.write_event(1, "tick", &["before"]).await);
    let first = reader.next_event(WAIT_LIMIT).await;
    assert_eq!(
        first.map(|e| e.text).as_deref(),
        Some("id: 1\nevent: tick\ndata: before")
    );

    // The behaviour under test: silence past the request timeout.
    tokio::time::sleep(LONG_SILENCE).await;
    assert!(
        stream.write_event(2, "tick", &["after"]).await,
        "the upstream body was dropped during the silence"
    );
    let second = reader.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        second.map(|e| e.text).as_deref(),
        Some("id: 2\nevent: tick\ndata: after"),
        "the event stream did not survive {LONG_SILENCE:?} of silence"
    );
    assert!(stream.is_open(), "the upstream stream must still be open");
}

#[tokio::test]
async fn event_stream_outlives_request_timeout_over_http1() {
    event_stream_outlives_request_timeout(Version::HTTP_11).await;
}

#[tokio::test]
async fn event_stream_outlives_request_timeout_over_http2() {
    event_stream_outlives_request_timeout(Version::HTTP_2).await;
}

const SSE_IDLE: Duration = Duration::from_millis(400);

async fn idle_event_stream_is_ended(version: Version) {
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.sse_idle = SSE_IDLE;
    let proxy = spawn_proxy_with(config).await;

    let response = get_once(proxy.addr, "/events", version).await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;
    let mut reader = EventReader::new(response.into_body());

    // The proxy's idle timer restarts no earlier than this.
    let last_write = tokio::time::Instant::now();
    assert!(stream.write_event(1, "tick", &["only"]).await);
    let first = reader.next_event(WAIT_LIMIT).await;
    assert_eq!(
        first.map(|e| e.text).as_deref(),
        Some("id: 1\nevent: tick\ndata: only")
    );

    assert!(
        reader.wait_end(SSE_IDLE + Duration::from_secs(5)).await,
        "the idle event stream must end cleanly"
    );
    let ended_after = last_write.elapsed();
    assert!(
        ended_after >= SSE_IDLE,
        "ended {ended_after:?} after the last event, before the SSE idle timeout"
    );
    assert!(reader.leftover().is_empty(), "{:?}", reader.leftover());

    tokio::time::timeout(Duration::from_secs(2), stream.closed())
        .await
        .expect("the upstream body is dropped after the idle timeout");
}

#[tokio::test]
async fn idle_event_stream_is_ended_over_http1() {
    idle_event_stream_is_ended(Version::HTTP_11).await;
}

#[tokio::test]
async fn idle_event_stream_is_ended_over_http2() {
    idle_event_stream_is_ended(Version::HTTP_2).await;
}

// ---------------------------------------------------------------- ordinary bodies

async fn silent_ordinary_body_is_cut(version: Version) {
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::stream("text/plain"))
        .start()
        .await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let response = get_once(proxy.addr, "/report", version).await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;

    stream.send("first half").await;
    let (received, outcome) = read_body_until_end(
        response.into_body(),
        REQUEST_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    assert_eq!(received, b"first half");
    assert_eq!(
        outcome,
        BodyEnd::Cut,
        "a body silent past the request timeout must be cut, not ended"
    );
    // Held until here: the upstream never finished its body.
    drop(stream);
}

#[tokio::test]
async fn silent_ordinary_body_is_cut_over_http1() {
    silent_ordinary_body_is_cut(Version::HTTP_11).await;
}

#[tokio::test]
async fn silent_ordinary_body_is_cut_over_http2() {
    silent_ordinary_body_is_cut(Version::HTTP_2).await;
}
