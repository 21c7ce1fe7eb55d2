//! The forwarding rules, held to the same result on every path a request can
//! take (see `common::paths`): HTTP/1.1 as the first request on a
//! connection, HTTP/1.1 after a POST with a body on the same connection,
//! HTTP/2, and a shared stream (the proxy's own upstream request). Each
//! scenario below is one test per path: `scenario_name::http1_first`, ...
//!
//! A shared stream's upstream request is the proxy's own, made once for
//! every subscriber: it carries none of any one client's fields (no
//! `X-Forwarded-For`, `Cookie`, `Authorization`, `Last-Event-ID`), and its
//! response head is the proxy's own too (the upstream's end-to-end fields
//! are not relayed). Where a scenario expects that, it says so.

mod common;

use std::time::Duration;

use common::*;
use http::{Response, Version};
use hyper::body::Incoming;
use ssegate::config::{UpstreamGroup, UpstreamUrl};

/// Hop-by-hop fields an upstream might send on a response, each of which
/// must stop at the proxy (with `x-private`, which its `Connection` names).
const HOP_BY_HOP_RESPONSE: &[(&str, &str)] = &[
    ("Connection", "keep-alive, X-Private"),
    ("Keep-Alive", "timeout=5"),
    ("X-Private", "1"),
    ("Upgrade", "h2c"),
    ("Proxy-Authenticate", "Basic realm=\"upstream\""),
    ("Trailer", "x-checksum"),
];

/// The names of `HOP_BY_HOP_RESPONSE`.
const HOP_BY_HOP_NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "x-private",
    "upgrade",
    "proxy-authenticate",
    "trailer",
];

fn values<'a>(response: &'a Response<Incoming>, name: &str) -> Vec<&'a str> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("visible ASCII"))
        .collect()
}

/// An upstream whose every request opens an event stream (which a shared
/// stream needs) that the test feeds.
async fn event_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await
}

/// Sends `req` through `client`, takes the upstream's stream for it, and
/// checks that an event goes through: the exchange works at all.
async fn exchange(
    client: &mut Client,
    upstream: &mut TestUpstream,
    req: http::Request<TestBody>,
) -> (Response<Incoming>, UpstreamStream) {
    let response = client.send(req).await;
    let stream = upstream.next_stream().await;
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    (response, stream)
}

/// Reads the next event of `reader`, which must be `expected` (without its
/// blank line).
async fn expect_event(reader: &mut EventReader, expected: &str) {
    let event = reader.next_event(WAIT_LIMIT).await;
    assert_eq!(event.map(|e| e.text).as_deref(), Some(expected));
}

// ---------------------------------------------------------------- request heads

/// Hop-by-hop request fields, and those the client's `Connection`
/// names, never reach the upstream; end-to-end ones do. HTTP/2 forbids
/// connection-specific fields outright (hyper's client refuses to send
/// them), so over HTTP/2 only the two that are legal there are sent:
/// `te: trailers` and `proxy-authorization`.
async fn hop_by_hop_request_fields_are_dropped(path: Path) {
    let mut upstream = event_upstream().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;

    let mut req = path
        .request("GET", "/hop")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("authorization", "Bearer end-to-end")
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-foo", "bar");
    if path.version() == Version::HTTP_11 {
        req = req
            .header("connection", "keep-alive, X-Private")
            .header("connection", "x-other")
            .header("keep-alive", "timeout=5, max=100")
            .header("x-private", "secret")
            .header("x-other", "also secret")
            .header("proxy-connection", "keep-alive")
            .header("trailer", "x-checksum")
            .header("upgrade", "websocket");
    }
    let (response, stream) =
        exchange(&mut client, &mut upstream, req.body(empty_body()).unwrap()).await;
    let seen = &stream.request;
    for name in [
        "connection",
        "keep-alive",
        "x-private",
        "x-other",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !seen.has(name),
            "{name} reached the upstream: {:?}",
            seen.raw_head
        );
    }
    assert_eq!(
        seen.header("host"),
        Some("localhost"),
        "{:?}",
        seen.raw_head
    );
    assert_eq!(seen.header("accept"), Some("text/event-stream"));
    // End-to-end: passed on (a shared stream's request asks for the same
    // itself).
    assert_eq!(
        seen.all("cache-control"),
        ["no-cache"],
        "{:?}",
        seen.raw_head
    );
    if path.is_shared() {
        // The proxy's own request: nothing of the client's.
        assert_eq!(seen.header("authorization"), None, "{:?}", seen.raw_head);
        assert_eq!(seen.header("x-foo"), None, "{:?}", seen.raw_head);
    } else {
        assert_eq!(seen.header("authorization"), Some("Bearer end-to-end"));
        assert_eq!(seen.header("x-foo"), Some("bar"));
    }
    stream.send("data: ok\n\n").await;
    let mut reader = EventReader::new(response.into_body());
    expect_event(&mut reader, "data: ok").await;
}
path_matrix!(hop_by_hop_request_fields_are_dropped);

/// `Host`, `X-Forwarded-Proto` and `X-Forwarded-Host` are the proxy's:
/// a client's own are replaced. `X-Forwarded-For` is the client's chain
/// (every line of it) with the client appended; a shared stream's
/// request has none, nor the client's `Cookie`, `Authorization` or
/// `Last-Event-ID`, and asks for an event stream itself.
async fn forwarding_fields_are_set_by_the_proxy(path: Path) {
    let mut upstream = event_upstream().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;

    // A client behind two other proxies, trying to spoof proto and host.
    let req = request(
        path.version(),
        "GET",
        "app.example:8443",
        &path.target("/events?topic=news"),
    )
    .header("x-forwarded-for", "203.0.113.7")
    .header("x-forwarded-for", "198.51.100.2")
    .header("x-forwarded-proto", "http")
    .header("x-forwarded-host", "spoofed.example")
    .header("last-event-id", "42")
    .header("authorization", "Bearer t0ken")
    .header("cookie", "session=abc; theme=dark")
    .header("accept", "text/event-stream")
    .body(empty_body())
    .unwrap();
    let (_response, stream) = exchange(&mut client, &mut upstream, req).await;
    let seen = &stream.request;
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.version, "HTTP/1.1", "the upstream speaks HTTP/1.1");
    assert_eq!(seen.target, path.target("/events?topic=news"));
    assert_eq!(
        seen.all("host"),
        ["app.example:8443"],
        "{:?}",
        seen.raw_head
    );
    assert_eq!(
        seen.all("x-forwarded-proto"),
        ["https"],
        "{:?}",
        seen.raw_head
    );
    assert_eq!(
        seen.all("x-forwarded-host"),
        ["app.example:8443"],
        "{:?}",
        seen.raw_head
    );
    assert_eq!(
        seen.all("accept"),
        ["text/event-stream"],
        "{:?}",
        seen.raw_head
    );
    if path.is_shared() {
        for name in [
            "x-forwarded-for",
            "authorization",
            "cookie",
            "last-event-id",
        ] {
            assert!(
                !seen.has(name),
                "{name} reached a shared stream: {:?}",
                seen.raw_head
            );
        }
    } else {
        assert_eq!(
            seen.all("x-forwarded-for"),
            ["203.0.113.7, 198.51.100.2, 127.0.0.1"],
            "{:?}",
            seen.raw_head
        );
        assert_eq!(seen.all("last-event-id"), ["42"]);
        assert_eq!(seen.all("authorization"), ["Bearer t0ken"]);
        assert_eq!(seen.all("cookie"), ["session=abc; theme=dark"]);
    }

    // Without a prior chain, X-Forwarded-For is just the client (on a
    // new client connection: the first still holds its stream).
    let mut client = path.client(&proxy, &mut upstream).await;
    let (_response, stream) = exchange(&mut client, &mut upstream, path.get("/plain", &[])).await;
    let seen = &stream.request;
    assert_eq!(seen.all("host"), ["localhost"], "{:?}", seen.raw_head);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["localhost"]);
    if path.is_shared() {
        assert!(!seen.has("x-forwarded-for"), "{:?}", seen.raw_head);
        assert_eq!(seen.all("accept"), ["text/event-stream"]);
    } else {
        assert_eq!(
            seen.all("x-forwarded-for"),
            ["127.0.0.1"],
            "{:?}",
            seen.raw_head
        );
        assert!(!seen.has("accept"), "{:?}", seen.raw_head);
    }
    assert!(!seen.has("last-event-id"));
}
path_matrix!(forwarding_fields_are_set_by_the_proxy);

/// An `X-Forwarded-For` chain that the client's `Connection` names is
/// dropped: only the client's own address goes on. `Connection` exists
/// only in HTTP/1.1, and a shared stream's request carries no chain at
/// all.
async fn a_forwarded_for_chain_named_in_connection_is_dropped(path: Path) {
    let mut upstream = event_upstream().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    let req = path.get(
        "/events",
        &[
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "192.0.2.1"),
        ],
    );
    let (_response, stream) = exchange(&mut client, &mut upstream, req).await;
    assert_eq!(
        stream.request.all("x-forwarded-for"),
        ["127.0.0.1"],
        "{:?}",
        stream.request.raw_head
    );
}
path_matrix!(a_forwarded_for_chain_named_in_connection_is_dropped: http1_first, http1_after_post);

// ---------------------------------------------------------------- paths

/// Paths and queries the upstream must see byte for byte.
const PATHS: &[&str] = &[
    "/",
    "/events",
    "/a/b%20c/d.json?x=1&y=%2F&z",
    "/search?q=caf%C3%A9&lang=fr&empty=&flag",
    "/stream/?lastEventId=7&topic=a%26b",
    "/x;param=1/y?",
];

/// Requests each of `PATHS` (on a client connection of its own) through a
/// proxy whose upstream URL has the path `base`; the upstream must see
/// `base` (without a trailing slash) followed by the client's target.
async fn paths_reach_the_upstream(path: Path, base: &str) {
    let mut upstream = event_upstream().await;
    let mut config = path.config(&upstream);
    *default_group(&mut config) = UpstreamGroup::single(
        UpstreamUrl::parse(&format!("http://{}{base}", upstream.addr)).expect("upstream url"),
    );
    let proxy = path.proxy_with(config).await;
    let prefix = base.trim_end_matches('/');
    // Kept open: an ended shared stream would be asked for again.
    let mut streams = Vec::new();
    for asked in PATHS {
        let mut client = path.client(&proxy, &mut upstream).await;
        let (_response, stream) = exchange(&mut client, &mut upstream, path.get(asked, &[])).await;
        assert_eq!(
            stream.request.target,
            format!("{prefix}{}", path.target(asked)),
            "the client asked for {}",
            path.target(asked)
        );
        streams.push((client, stream));
    }
}

async fn path_and_query_pass_unchanged(path: Path) {
    paths_reach_the_upstream(path, "").await;
}
path_matrix!(path_and_query_pass_unchanged);

/// The base path goes before the client's; a trailing slash on it is not
/// doubled.
async fn the_upstream_base_path_is_prefixed(path: Path) {
    paths_reach_the_upstream(path, "/base").await;
    paths_reach_the_upstream(path, "/base/").await;
}
path_matrix!(the_upstream_base_path_is_prefixed);

// ---------------------------------------------------------------- request bodies

/// A request body goes upstream whole, framed by its length. A shared
/// stream is a GET that no client's body can join, so that path is
/// left out.
async fn request_bodies_are_forwarded(path: Path) {
    let mut upstream = TestUpstream::start().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    let req = path
        .request("POST", "/orders?x=1")
        .header("content-type", "application/json")
        .body(full_body("{\"item\":1}"))
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "ok");
    let seen = upstream.next_request().await;
    assert_eq!(seen.start_line(), "POST /orders?x=1 HTTP/1.1");
    assert_eq!(seen.body_text(), "{\"item\":1}");
    assert_eq!(
        seen.header("content-length"),
        Some("10"),
        "{:?}",
        seen.raw_head
    );
    assert!(!seen.chunked, "{:?}", seen.raw_head);
    assert_eq!(seen.header("content-type"), Some("application/json"));
}
path_matrix!(request_bodies_are_forwarded: http1_first, http1_after_post, http2);

// ---------------------------------------------------------------- response heads

/// Hop-by-hop response fields, and those the upstream's `Connection`
/// names, never reach the client: over HTTP/2 they would be a protocol
/// error (the request must succeed at all). End-to-end ones do, except
/// on a shared stream, whose head is the proxy's own.
async fn hop_by_hop_response_fields_are_dropped(path: Path) {
    let mut reply = Reply::event_stream().header("X-Custom", "yes");
    for (name, value) in HOP_BY_HOP_RESPONSE {
        reply = reply.header(name, value);
    }
    let mut upstream = TestUpstream::builder().otherwise(reply).start().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    let (response, stream) = exchange(&mut client, &mut upstream, path.get("/sse", &[])).await;
    for name in HOP_BY_HOP_NAMES {
        assert!(
            values(&response, name).is_empty(),
            "{name} reached the client: {:?}",
            response.headers()
        );
    }
    assert_eq!(values(&response, "cache-control"), ["no-cache"]);
    assert_eq!(values(&response, "content-type"), ["text/event-stream"]);
    if path.is_shared() {
        assert!(
            values(&response, "x-custom").is_empty(),
            "{:?}",
            response.headers()
        );
    } else {
        assert_eq!(values(&response, "x-custom"), ["yes"]);
    }
    stream.send("data: hi\n\n").await;
    let mut reader = EventReader::new(response.into_body());
    expect_event(&mut reader, "data: hi").await;

    if path.version() == Version::HTTP_11 {
        // The client connection stays usable after the stream's end.
        stream.end().await;
        assert!(reader.wait_end(WAIT_LIMIT).await, "the stream ends cleanly");
        let (response, _next) = exchange(&mut client, &mut upstream, path.get("/again", &[])).await;
        assert!(values(&response, "connection").is_empty());
    }
}
path_matrix!(hop_by_hop_response_fields_are_dropped);

/// The same for an ordinary response (a shared stream serves only
/// event streams).
async fn hop_by_hop_fields_of_an_ordinary_response_are_dropped(path: Path) {
    let mut reply = Reply::text("hello")
        .header("Cache-Control", "no-cache")
        .header("X-Custom", "yes");
    for (name, value) in HOP_BY_HOP_RESPONSE {
        reply = reply.header(name, value);
    }
    let mut upstream = TestUpstream::builder().otherwise(reply).start().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    for round in ["first", "again on the same connection"] {
        let response = client.send(path.get("/plain", &[])).await;
        assert_eq!(response.status(), 200, "{round}");
        for name in HOP_BY_HOP_NAMES {
            assert!(
                values(&response, name).is_empty(),
                "{round}: {name} reached the client: {:?}",
                response.headers()
            );
        }
        assert_eq!(values(&response, "cache-control"), ["no-cache"], "{round}");
        assert_eq!(values(&response, "x-custom"), ["yes"], "{round}");
        assert_eq!(read_body(response.into_body()).await, "hello", "{round}");
    }
}
path_matrix!(hop_by_hop_fields_of_an_ordinary_response_are_dropped: http1_first, http1_after_post, http2);

/// Express sends `Connection: keep-alive` (and `Keep-Alive`) on every
/// event stream: it never reaches the client, and over HTTP/2 it would
/// break Safari and others.
async fn an_express_keep_alive_never_reaches_the_client(path: Path) {
    let reply = Reply::event_stream().header("Keep-Alive", "timeout=5");
    let mut upstream = TestUpstream::builder().otherwise(reply).start().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    let (response, stream) = exchange(&mut client, &mut upstream, path.get("/events", &[])).await;
    assert_eq!(
        stream.request.header("accept"),
        path.is_shared().then_some("text/event-stream")
    );
    assert_eq!(response.version(), path.version());
    assert!(
        values(&response, "connection").is_empty(),
        "{:?}",
        response.headers()
    );
    assert!(
        values(&response, "keep-alive").is_empty(),
        "{:?}",
        response.headers()
    );
    stream.send("data: one\n\n").await;
    let mut reader = EventReader::new(response.into_body());
    expect_event(&mut reader, "data: one").await;
}
path_matrix!(an_express_keep_alive_never_reaches_the_client);

/// `Strict-Transport-Security` is added when configured, unless the
/// upstream sent its own. A shared stream's head is the proxy's, so it
/// always carries the proxy's policy.
async fn hsts_is_added_unless_the_upstream_sent_one(path: Path) {
    let mut upstream = TestUpstream::builder()
        .on(
            &path.target("/own"),
            Reply::event_stream().header("Strict-Transport-Security", "max-age=1"),
        )
        .otherwise(Reply::event_stream())
        .start()
        .await;
    let mut config = path.config(&upstream);
    config.hsts = Some(bytes::Bytes::from_static(b"max-age=63072000"));
    let proxy = path.proxy_with(config).await;
    let mut streams = Vec::new();
    for (asked, expected) in [
        ("/events", "max-age=63072000"),
        (
            "/own",
            if path.is_shared() {
                "max-age=63072000"
            } else {
                "max-age=1"
            },
        ),
    ] {
        let mut client = path.client(&proxy, &mut upstream).await;
        let (response, stream) = exchange(&mut client, &mut upstream, path.get(asked, &[])).await;
        assert_eq!(
            values(&response, "strict-transport-security"),
            [expected],
            "{asked}"
        );
        streams.push((client, stream, response));
    }
}
path_matrix!(hsts_is_added_unless_the_upstream_sent_one);

// ---------------------------------------------------------------- event streams

/// How long the upstream stays silent in `event_streams_are_detected`: well
/// past the request timeout there.
const SILENCE: Duration = Duration::from_millis(1000);
/// Short enough that `SILENCE` exceeds it several times over.
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// A response is relayed as an event stream when its media type is
/// `text/event-stream` in any case, with parameters, or when the
/// upstream sends `X-Accel-Buffering: no`: then the request timeout
/// does not cut it while it is silent, and it has no Content-Length.
/// Any other response is cut by the request timeout; a shared stream
/// refuses it at once (it serves event streams only).
async fn event_streams_are_detected_by_their_head(path: Path) {
    let first = "id: 1\ndata: before\n\n";
    let second = "id: 2\ndata: after\n\n";
    let length = first.len() + second.len();
    let mut upstream = TestUpstream::builder()
        .on(
            &path.target("/sse-charset"),
            Reply::stream("text/event-stream; charset=utf-8").header("Content-Length", length),
        )
        .on(
            &path.target("/sse-upper"),
            Reply::stream("TEXT/EVENT-STREAM"),
        )
        .on(
            &path.target("/accel"),
            Reply::stream("application/json").header("X-Accel-Buffering", "no"),
        )
        .on(&path.target("/plain"), Reply::stream("text/plain"))
        .start()
        .await;
    let mut config = path.config(&upstream);
    config.timeouts.request = SHORT_REQUEST_TIMEOUT;
    let proxy = path.proxy_with(config).await;

    let mut open = Vec::new();
    for asked in ["/sse-charset", "/sse-upper", "/accel"] {
        let mut client = path.client(&proxy, &mut upstream).await;
        let (response, stream) = exchange(&mut client, &mut upstream, path.get(asked, &[])).await;
        assert!(
            values(&response, "content-length").is_empty(),
            "{asked}: {:?}",
            response.headers()
        );
        stream.send(first).await;
        let mut reader = EventReader::new(response.into_body());
        expect_event(&mut reader, "id: 1\ndata: before").await;
        open.push((asked, client, stream, reader));
    }
    let mut client = path.client(&proxy, &mut upstream).await;
    let plain = client.send(path.get("/plain", &[])).await;
    let plain_stream = upstream.next_stream().await;
    let plain_body = if path.is_shared() {
        assert_eq!(
            plain.status(),
            502,
            "a shared stream that is no event stream"
        );
        None
    } else {
        assert_eq!(plain.status(), 200);
        plain_stream.send(first).await;
        Some(plain.into_body())
    };

    // The silence the test is about: not a wait for anything.
    tokio::time::sleep(SILENCE).await;
    for (asked, _client, stream, reader) in &mut open {
        assert!(
            stream.try_send(second).await,
            "{asked}: the upstream request was cut"
        );
        let event = reader.next_event(WAIT_LIMIT).await;
        assert_eq!(
            event.map(|e| e.text).as_deref(),
            Some("id: 2\ndata: after"),
            "{asked}: the event stream was cut during the silence"
        );
    }
    if let Some(body) = plain_body {
        let (received, end) = read_body_until_end(body, WAIT_LIMIT).await;
        assert_eq!(
            end,
            BodyEnd::Cut,
            "text/plain after {:?}",
            String::from_utf8_lossy(&received)
        );
        assert_eq!(received, first.as_bytes());
    }
}
path_matrix!(event_streams_are_detected_by_their_head);

/// Each event reaches the client before the upstream writes the next:
/// nothing is buffered, and an event written in two pieces arrives
/// whole.
async fn events_are_delivered_one_by_one(path: Path) {
    let mut upstream = event_upstream().await;
    let proxy = path.proxy(&upstream).await;
    let mut client = path.client(&proxy, &mut upstream).await;
    let (response, stream) = exchange(&mut client, &mut upstream, path.get("/events", &[])).await;
    let mut reader = EventReader::new(response.into_body());
    for id in 1..=5u64 {
        assert!(stream.write_event(id, "tick", &["one", "two"]).await);
        expect_event(
            &mut reader,
            &format!("id: {id}\nevent: tick\ndata: one\ndata: two"),
        )
        .await;
    }
    stream.send("id: 6\n").await;
    stream.send("data: in two writes\n\n").await;
    expect_event(&mut reader, "id: 6\ndata: in two writes").await;
}
path_matrix!(events_are_delivered_one_by_one);
