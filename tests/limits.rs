//! `--max-body`: a request body over the limit gets 413, at once when its
//! length says so (before any of it is read or forwarded), or as soon as a
//! body of unknown length grows past it; bodies within it pass whole.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Version;

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
