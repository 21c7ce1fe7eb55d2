//! Event streams are relayed event by event, over HTTP/1.1 and HTTP/2.

mod common;

use std::time::Duration;

use common::*;
use http::Version;

/// An upstream that writes `count` events, one every `interval`, Express-style.
async fn periodic_upstream(count: u64, interval: Duration) -> UpstreamHandle {
    spawn_upstream(move |_req| async move {
        let (tx, body, _closed) = channel_body();
        tokio::spawn(async move {
            if tx.send("retry: 1000\n\n".into()).await.is_err() {
                return;
            }
            for id in 1..=count {
                tokio::time::sleep(interval).await;
                if !write_event(&tx, id, "tick", &["first line", "second line"]).await {
                    return;
                }
            }
        });
        sse_response("text/event-stream", body)
    })
    .await
}

async fn events_arrive_one_by_one(version: Version) {
    let upstream = periodic_upstream(5, Duration::from_millis(200)).await;
    let proxy = spawn_proxy(upstream.addr).await;
    let started = tokio::time::Instant::now();
    let response = match version {
        Version::HTTP_2 => {
            h2_client(proxy.addr)
                .await
                .send_request(get("/events", version))
                .await
        }
        _ => {
            h1_client(proxy.addr)
                .await
                .send_request(get("/events", version))
                .await
        }
    }
    .expect("response");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("connection").is_none());
    assert!(response.headers().get("content-length").is_none());
    let mut reader = EventReader::new(response.into_body());
    let events = reader.events(6, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 6, "retry + 5 events: {events:?}");
    assert_eq!(events[0].text, "retry: 1000");
    assert!(events[1].at - started < Duration::from_millis(300) + Duration::from_millis(200));
    for (i, event) in events[1..].iter().enumerate() {
        assert_eq!(
            event.batch,
            1,
            "event {} arrived together with another",
            i + 1
        );
        assert!(
            event.text.starts_with(&format!("id: {}\n", i + 1)),
            "{}",
            event.text
        );
    }
    for pair in events[1..].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(100),
            "events arrived {gap:?} apart"
        );
    }
}

#[tokio::test]
async fn events_arrive_one_by_one_over_http1() {
    events_arrive_one_by_one(Version::HTTP_11).await;
}

#[tokio::test]
async fn events_arrive_one_by_one_over_http2() {
    events_arrive_one_by_one(Version::HTTP_2).await;
}
