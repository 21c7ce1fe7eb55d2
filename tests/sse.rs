//! Event streams are relayed event by event, over HTTP/1.1 and HTTP/2.

mod common;

use std::time::Duration;

use common::*;
use http::{Response, Version};
use hyper::body::Incoming;

/// An upstream whose every request opens an event stream the test feeds.
async fn event_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await
}

/// Writes `retry: 1000`, then `count` events, one every `interval` (the
/// pacing is what the test looks at), Express-style; then ends the stream.
fn write_periodically(stream: UpstreamStream, count: u64, interval: Duration) {
    tokio::spawn(async move {
        if !stream.try_send("retry: 1000\n\n").await {
            return;
        }
        for id in 1..=count {
            tokio::time::sleep(interval).await;
            if !stream
                .write_event(id, "tick", &["first line", "second line"])
                .await
            {
                return;
            }
        }
        stream.end().await;
    });
}

async fn events_arrive_one_by_one(version: Version) {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let started = tokio::time::Instant::now();
    let response = get_once(proxy.addr, "/events", version).await;
    assert_eq!(response.status(), 200);
    write_periodically(upstream.next_stream().await, 5, Duration::from_millis(200));
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

async fn first_event_arrives_promptly(version: Version) {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;
    let requested = tokio::time::Instant::now();
    // The upstream writes one event as soon as it has the request, then
    // stays open, silent: the test is about the first event only.
    let (response, _stream) = tokio::join!(client.get("/events"), async {
        let stream = upstream.next_stream().await;
        assert!(stream.write_event(1, "hello", &["right away"]).await);
        stream
    });
    assert_eq!(response.status(), 200);
    let mut reader = EventReader::new(response.into_body());
    let event = reader
        .next_event(Duration::from_secs(5))
        .await
        .expect("the first event arrives");
    assert_eq!(event.text, event_text(1, "hello", "right away"));
    let latency = event.at - requested;
    assert!(
        latency < Duration::from_millis(300),
        "first event took {latency:?} after the request"
    );
}

#[tokio::test]
async fn first_event_arrives_within_300ms_over_http1() {
    first_event_arrives_promptly(Version::HTTP_11).await;
}

#[tokio::test]
async fn first_event_arrives_within_300ms_over_http2() {
    first_event_arrives_promptly(Version::HTTP_2).await;
}

// ---------------------------------------------------------------- h2 multiplexing

const CONCURRENT_STREAMS: usize = 20;
const EVENTS_PER_STREAM: u64 = 10;

#[tokio::test]
async fn twenty_concurrent_event_streams_share_one_http2_connection() {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let sender = h2_client(proxy.addr).await;

    let mut streams = tokio::task::JoinSet::new();
    for stream in 0..CONCURRENT_STREAMS {
        let mut sender = sender.clone();
        streams.spawn(async move {
            let response = sender
                .send_request(get(&format!("/stream/{stream}"), Version::HTTP_2))
                .await
                .expect("response");
            assert_eq!(response.status(), 200, "stream {stream}");
            assert_eq!(response.version(), Version::HTTP_2);
            let mut reader = EventReader::new(response.into_body());
            let events = reader
                .events(EVENTS_PER_STREAM as usize, Duration::from_secs(15))
                .await;
            let texts: Vec<String> = events.into_iter().map(|e| e.text).collect();
            let expected: Vec<String> = (1..=EVENTS_PER_STREAM)
                .map(|id| event_text(id, "tick", &format!("stream {stream}")))
                .collect();
            assert_eq!(texts, expected, "stream {stream}");
            assert!(
                reader.wait_end(Duration::from_secs(5)).await,
                "stream {stream} ends cleanly"
            );
            stream
        });
    }
    // No stream gets an event before all of them are open upstream at once:
    // a proxy that serialised the streams would never get them all here.
    let mut upstream_streams = Vec::new();
    for _ in 0..CONCURRENT_STREAMS {
        upstream_streams.push(upstream.next_stream().await);
    }
    for stream in upstream_streams {
        let number: usize = stream
            .path_and_query()
            .trim_start_matches("/stream/")
            .parse()
            .expect("stream number in the path");
        tokio::spawn(async move {
            for id in 1..=EVENTS_PER_STREAM {
                // Pacing only, so events of different streams interleave.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let data = format!("stream {number}");
                if !stream.write_event(id, "tick", &[&data]).await {
                    return;
                }
            }
            stream.end().await;
        });
    }
    let mut finished = Vec::new();
    while let Some(done) = streams.join_next().await {
        finished.push(done.expect("stream task succeeds"));
    }
    finished.sort_unstable();
    assert_eq!(finished, (0..CONCURRENT_STREAMS).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- volume

const MANY_EVENTS: u64 = 3000;

async fn many_events_arrive_in_order(version: Version) {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;
    let response = client.get("/firehose").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;
    tokio::spawn(async move {
        for id in 1..=MANY_EVENTS {
            if !stream.write_event(id, "n", &["payload"]).await {
                return;
            }
        }
        stream.end().await;
    });
    let mut reader = EventReader::new(response.into_body());
    let events = reader
        .events(MANY_EVENTS as usize, Duration::from_secs(20))
        .await;
    assert_eq!(events.len(), MANY_EVENTS as usize, "events were lost");
    for (event, id) in events.iter().zip(1..) {
        assert_eq!(event.text, event_text(id, "n", "payload"), "event #{id}");
    }
    assert!(reader.wait_end(Duration::from_secs(5)).await);
    assert!(reader.leftover().is_empty(), "{:?}", reader.leftover());
}

#[tokio::test]
async fn three_thousand_events_arrive_in_order_over_http1() {
    many_events_arrive_in_order(Version::HTTP_11).await;
}

#[tokio::test]
async fn three_thousand_events_arrive_in_order_over_http2() {
    many_events_arrive_in_order(Version::HTTP_2).await;
}

// ---------------------------------------------------------------- detection

/// Short enough that the silence below exceeds it several times over.
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the upstream stays silent between its two events.
const SILENCE: Duration = Duration::from_millis(1000);

/// An upstream whose response type is picked by the path (each with
/// Express' headers, `Connection: keep-alive` among them). `/sse-charset`
/// also announces an exact Content-Length, which an event stream must not
/// carry to the client.
async fn typed_upstream() -> TestUpstream {
    let length = event_text(1, "tick", "before").len() + event_text(2, "tick", "after").len() + 4;
    TestUpstream::builder()
        .on(
            "/sse-charset",
            Reply::stream("text/event-stream; charset=utf-8").header("Content-Length", length),
        )
        .on("/sse-upper", Reply::stream("TEXT/EVENT-STREAM"))
        .on(
            "/accel",
            Reply::stream("application/json").header("X-Accel-Buffering", "no"),
        )
        .on("/plain", Reply::stream("text/plain"))
        .start()
        .await
}

/// Sends a GET for `path` on a connection of its own, and makes its
/// upstream response write one event, stay silent for `SILENCE`, write a
/// second event and end.
async fn get_with_silence(
    proxy: std::net::SocketAddr,
    upstream: &mut TestUpstream,
    path: &'static str,
) -> (Client, Response<Incoming>) {
    let mut client = Client::connect(proxy, Version::HTTP_11).await;
    let response = client.get(path).await;
    let stream = upstream.next_stream_for(path).await;
    tokio::spawn(async move {
        if !stream.write_event(1, "tick", &["before"]).await {
            return;
        }
        // The silence the test is about.
        tokio::time::sleep(SILENCE).await;
        if stream.write_event(2, "tick", &["after"]).await {
            stream.end().await;
        }
    });
    (client, response)
}

/// The response is relayed as an event stream: no length, no hop-by-hop
/// headers, and the request timeout does not cut it during the silence.
async fn survives_silence_as_event_stream(
    path: &str,
    (_client, response): (Client, Response<Incoming>),
) {
    assert_eq!(response.status(), 200, "{path}");
    assert!(
        response.headers().get("content-length").is_none(),
        "{path}: {:?}",
        response.headers()
    );
    assert!(
        response.headers().get("connection").is_none(),
        "{path}: {:?}",
        response.headers()
    );
    let mut reader = EventReader::new(response.into_body());
    let first = reader.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        first.map(|e| e.text),
        Some(event_text(1, "tick", "before")),
        "{path}"
    );
    let second = reader.next_event(SILENCE + Duration::from_secs(5)).await;
    assert_eq!(
        second.map(|e| e.text),
        Some(event_text(2, "tick", "after")),
        "{path}: the event stream was cut during the silence"
    );
    assert!(
        reader.wait_end(Duration::from_secs(5)).await,
        "{path}: clean end"
    );
}

/// The same pattern as an ordinary response is cut by the request timeout.
async fn ordinary_response_is_cut((_client, response): (Client, Response<Incoming>)) {
    assert_eq!(response.status(), 200);
    let (received, outcome) =
        read_body_until_end(response.into_body(), SILENCE + Duration::from_secs(5)).await;
    let received = String::from_utf8_lossy(&received);
    assert_eq!(outcome, BodyEnd::Cut, "text/plain body after {received:?}");
    assert!(received.starts_with("id: 1\n"), "{received:?}");
    assert!(!received.contains("id: 2"), "{received:?}");
}

#[tokio::test]
async fn event_stream_content_types_are_detected() {
    let mut upstream = typed_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.request = SHORT_REQUEST_TIMEOUT;
    let proxy = spawn_proxy_with(config).await;
    let charset = get_with_silence(proxy.addr, &mut upstream, "/sse-charset").await;
    let upper = get_with_silence(proxy.addr, &mut upstream, "/sse-upper").await;
    let accel = get_with_silence(proxy.addr, &mut upstream, "/accel").await;
    let plain = get_with_silence(proxy.addr, &mut upstream, "/plain").await;
    tokio::join!(
        survives_silence_as_event_stream("/sse-charset", charset),
        survives_silence_as_event_stream("/sse-upper", upper),
        survives_silence_as_event_stream("/accel", accel),
        ordinary_response_is_cut(plain),
    );
}

// ---------------------------------------------------------------- end of stream

async fn upstream_end_ends_client_stream(version: Version) {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;
    let response = client.get("/events").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream().await;
    for id in 1..=2 {
        assert!(stream.write_event(id, "tick", &["last words"]).await);
    }
    // The last chunk ends the upstream's body.
    stream.end().await;
    let mut reader = EventReader::new(response.into_body());
    let events = reader.events(2, Duration::from_secs(5)).await;
    let texts: Vec<String> = events.into_iter().map(|e| e.text).collect();
    assert_eq!(
        texts,
        [
            event_text(1, "tick", "last words"),
            event_text(2, "tick", "last words")
        ]
    );
    assert!(
        reader.wait_end(Duration::from_secs(5)).await,
        "the client's stream must end cleanly when the upstream's does"
    );
    assert!(reader.leftover().is_empty(), "{:?}", reader.leftover());
}

#[tokio::test]
async fn upstream_end_ends_the_stream_cleanly_over_http1() {
    upstream_end_ends_client_stream(Version::HTTP_11).await;
}

#[tokio::test]
async fn upstream_end_ends_the_stream_cleanly_over_http2() {
    upstream_end_ends_client_stream(Version::HTTP_2).await;
}
