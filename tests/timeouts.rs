//! The request timeout applies to response headers and to silences inside
//! ordinary bodies; event streams are only ended by the (long) SSE idle timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// One upstream response whose body the test writes itself.
struct UpstreamStream {
    tx: mpsc::Sender<Bytes>,
    /// Completes when the upstream's body is dropped (connection closed).
    closed: oneshot::Receiver<()>,
}

/// An upstream that answers every request at once with headers of
/// `content_type` and hands the body's sender to the test.
async fn controlled_upstream(
    content_type: &'static str,
) -> (UpstreamHandle, mpsc::UnboundedReceiver<UpstreamStream>) {
    let (streams_tx, streams_rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |_req| {
        let streams_tx = streams_tx.clone();
        async move {
            let (tx, body, closed) = channel_body();
            let _ = streams_tx.send(UpstreamStream { tx, closed });
            sse_response(content_type, body)
        }
    })
    .await;
    (upstream, streams_rx)
}

async fn request(proxy: SocketAddr, path: &str, version: Version) -> Response<Incoming> {
    match version {
        Version::HTTP_2 => {
            h2_client(proxy)
                .await
                .send_request(get(path, version))
                .await
        }
        _ => {
            h1_client(proxy)
                .await
                .send_request(get(path, version))
                .await
        }
    }
    .expect("response")
}

// ---------------------------------------------------------------- 504

/// Far beyond the request timeout: the upstream would answer only then.
const SLOW_UPSTREAM_DELAY: Duration = Duration::from_secs(5);

async fn slow_headers_get_504(version: Version) {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(SLOW_UPSTREAM_DELAY).await;
        Response::new(full_body("too late"))
    })
    .await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let started = tokio::time::Instant::now();
    let response = request(proxy.addr, "/slow", version).await;
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
    let content_type = response
        .headers()
        .get("content-type")
        .expect("content-type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = tokio::time::timeout(Duration::from_secs(5), read_body(response.into_body()))
        .await
        .expect("the 504 body is complete");
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("504"), "{body:?}");
    assert!(body.len() < 100, "{body:?}");
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
    let (upstream, mut streams) = controlled_upstream("text/event-stream").await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let response = request(proxy.addr, "/events", version).await;
    assert_eq!(response.status(), 200);
    let mut stream = streams.recv().await.expect("upstream request");
    let mut reader = EventReader::new(response.into_body());

    assert!(write_event(&stream.tx, 1, "tick", &["before"]).await);
    let first = reader.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        first.map(|e| e.text).as_deref(),
        Some("id: 1\nevent: tick\ndata: before")
    );

    // The behaviour under test: silence past the request timeout.
    tokio::time::sleep(LONG_SILENCE).await;
    assert!(
        write_event(&stream.tx, 2, "tick", &["after"]).await,
        "the upstream body was dropped during the silence"
    );
    let second = reader.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        second.map(|e| e.text).as_deref(),
        Some("id: 2\nevent: tick\ndata: after"),
        "the event stream did not survive {LONG_SILENCE:?} of silence"
    );
    assert!(
        matches!(
            stream.closed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ),
        "the upstream stream must still be open"
    );
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
    let (upstream, mut streams) = controlled_upstream("text/event-stream").await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.sse_idle = SSE_IDLE;
    let proxy = spawn_proxy_with(config).await;

    let response = request(proxy.addr, "/events", version).await;
    assert_eq!(response.status(), 200);
    let stream = streams.recv().await.expect("upstream request");
    let mut reader = EventReader::new(response.into_body());

    // The proxy's idle timer restarts no earlier than this.
    let last_write = tokio::time::Instant::now();
    assert!(write_event(&stream.tx, 1, "tick", &["only"]).await);
    let first = reader.next_event(Duration::from_secs(5)).await;
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

    tokio::time::timeout(Duration::from_secs(2), stream.closed)
        .await
        .expect("the upstream body is dropped after the idle timeout")
        .expect("closed is signalled");
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
    let (upstream, mut streams) = controlled_upstream("text/plain").await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;

    let response = request(proxy.addr, "/report", version).await;
    assert_eq!(response.status(), 200);
    let stream = streams.recv().await.expect("upstream request");
    let mut body = response.into_body();

    assert!(stream
        .tx
        .send(Bytes::from_static(b"first half"))
        .await
        .is_ok());
    let mut received = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), body.frame()).await {
            Err(_) => break "still open",
            Ok(None) => break "clean end",
            Ok(Some(Err(_))) => break "error",
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
            }
        }
    };
    assert_eq!(received, b"first half");
    assert_eq!(
        outcome, "error",
        "a body silent past the request timeout must be cut, not ended"
    );
    // Held until here: the upstream never finished its body.
    drop(stream.tx);
}

#[tokio::test]
async fn silent_ordinary_body_is_cut_over_http1() {
    silent_ordinary_body_is_cut(Version::HTTP_11).await;
}

#[tokio::test]
async fn silent_ordinary_body_is_cut_over_http2() {
    silent_ordinary_body_is_cut(Version::HTTP_2).await;
}
