//! Header rewriting as the upstream and the client see it: forwarding headers,
//! hop-by-hop removal in both directions, paths and queries, over HTTP/1.1
//! and HTTP/2.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use ssegate::config::UpstreamUrl;

/// Generous: the machine is small and shared with parallel builds.
const LIMIT: Duration = Duration::from_secs(10);

/// What the upstream received.
#[derive(Debug)]
struct Seen {
    method: Method,
    /// The request target as it arrived on the wire (origin form).
    target: String,
    version: Version,
    headers: HeaderMap,
}

/// An upstream that answers "ok" and sends every request head it receives
/// through the returned channel.
async fn recording_upstream() -> (UpstreamHandle, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let upstream = spawn_upstream(move |req: Request<Incoming>| {
        let seen = Seen {
            method: req.method().clone(),
            target: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
        };
        let _ = tx.send(seen);
        async move {
            Response::builder()
                .header("content-type", "text/plain")
                .body(full_body("ok"))
                .expect("valid response")
        }
    })
    .await;
    (upstream, rx)
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("upstream saw a request in time")
        .expect("upstream still running")
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("visible ASCII"))
        .collect()
}

// ------------------------------------------------------ forwarding headers

async fn forwarding_headers(version: Version) {
    let (upstream, mut seen) = recording_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;

    // A client behind another proxy, trying to spoof proto and host as well.
    let req = request(version, "GET", "app.example:8443", "/events?topic=news")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "spoofed.example")
        .header("last-event-id", "42")
        .header("authorization", "Bearer t0ken")
        .header("cookie", "session=abc; theme=dark")
        .header("x-foo", "bar")
        .header("accept", "text/event-stream")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "ok");

    let up = next_seen(&mut seen).await;
    assert_eq!(up.method, Method::GET);
    assert_eq!(up.version, Version::HTTP_11, "the upstream speaks HTTP/1.1");
    assert_eq!(up.target, "/events?topic=news");
    let h = &up.headers;
    assert_eq!(values(h, "host"), ["app.example:8443"], "{h:?}");
    assert_eq!(
        values(h, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"],
        "{h:?}"
    );
    assert_eq!(values(h, "x-forwarded-proto"), ["https"], "{h:?}");
    assert_eq!(values(h, "x-forwarded-host"), ["app.example:8443"], "{h:?}");
    assert_eq!(values(h, "last-event-id"), ["42"]);
    assert_eq!(values(h, "authorization"), ["Bearer t0ken"]);
    assert_eq!(values(h, "cookie"), ["session=abc; theme=dark"]);
    assert_eq!(values(h, "x-foo"), ["bar"]);
    assert_eq!(values(h, "accept"), ["text/event-stream"]);

    // Without a prior chain, X-Forwarded-For is just the client.
    let req = request(version, "GET", "localhost", "/plain")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    read_body(response.into_body()).await;
    let up = next_seen(&mut seen).await;
    let h = &up.headers;
    assert_eq!(values(h, "host"), ["localhost"], "{h:?}");
    assert_eq!(values(h, "x-forwarded-for"), ["127.0.0.1"], "{h:?}");
    assert_eq!(values(h, "x-forwarded-proto"), ["https"], "{h:?}");
    assert_eq!(values(h, "x-forwarded-host"), ["localhost"], "{h:?}");
    assert!(h.get("last-event-id").is_none());
}

#[tokio::test]
async fn forwarding_headers_over_http1() {
    forwarding_headers(Version::HTTP_11).await;
}

#[tokio::test]
async fn forwarding_headers_over_http2() {
    forwarding_headers(Version::HTTP_2).await;
}

// ---------------------------------------------- hop-by-hop request headers

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed_over_http1() {
    let (upstream, mut seen) = recording_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;

    let req = request(Version::HTTP_11, "GET", "localhost", "/hop")
        .header("connection", "keep-alive, X-Private")
        .header("connection", "x-other")
        .header("keep-alive", "timeout=5, max=100")
        .header("x-private", "secret")
        .header("x-other", "also secret")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("upgrade", "websocket")
        .header("authorization", "Bearer end-to-end")
        .header("cache-control", "no-cache")
        .header("x-foo", "bar")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "ok");

    let up = next_seen(&mut seen).await;
    let h = &up.headers;
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
        assert!(h.get(name).is_none(), "{name} reached the upstream: {h:?}");
    }
    assert_eq!(values(h, "authorization"), ["Bearer end-to-end"]);
    assert_eq!(values(h, "cache-control"), ["no-cache"]);
    assert_eq!(values(h, "x-foo"), ["bar"]);
    assert_eq!(values(h, "host"), ["localhost"]);
}

/// HTTP/2 forbids connection-specific fields, but `te: trailers` and
/// `proxy-authorization` are legal there and still must not travel on.
#[tokio::test]
async fn hop_by_hop_request_headers_are_removed_over_http2() {
    let (upstream, mut seen) = recording_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;

    let req = request(Version::HTTP_2, "GET", "localhost", "/hop")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("x-foo", "bar")
        .body(empty_body())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 200);
    read_body(response.into_body()).await;

    let up = next_seen(&mut seen).await;
    let h = &up.headers;
    assert!(h.get("te").is_none(), "{h:?}");
    assert!(h.get("proxy-authorization").is_none(), "{h:?}");
    assert_eq!(values(h, "x-foo"), ["bar"]);
}

// --------------------------------------------- hop-by-hop response headers

/// Adds the hop-by-hop headers a careless upstream might send, plus two
/// end-to-end ones that must survive.
fn with_hop_by_hop(builder: http::response::Builder) -> http::response::Builder {
    builder
        .header("connection", "keep-alive, x-private")
        .header("keep-alive", "timeout=5")
        .header("x-private", "1")
        .header("upgrade", "h2c")
        .header("proxy-authenticate", "Basic realm=\"upstream\"")
        .header("trailer", "x-checksum")
        .header("x-custom", "yes")
}

/// `/sse`: an event stream (Express headers plus the hop-by-hop ones) with
/// one event; anything else: a plain "hello" with the same headers.
async fn hop_by_hop_upstream() -> UpstreamHandle {
    spawn_upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/sse" {
            let (tx, body, _closed) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: hi\n\n")).await;
            });
            with_hop_by_hop(Response::builder())
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body)
                .expect("valid response")
        } else {
            with_hop_by_hop(Response::builder())
                .header("content-type", "text/plain")
                .header("cache-control", "no-cache")
                .body(full_body("hello"))
                .expect("valid response")
        }
    })
    .await
}

async fn hop_by_hop_response_headers(version: Version) {
    let upstream = hop_by_hop_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let mut client = Client::connect(proxy.addr, version).await;

    for (path, expected_body) in [("/sse", "data: hi\n\n"), ("/plain", "hello")] {
        let req = request(version, "GET", "localhost", path)
            .body(empty_body())
            .unwrap();
        // On h2 a Connection header would be a protocol error: the request
        // must succeed at all.
        let response = client.send(req).await;
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers().clone();
        for name in [
            "connection",
            "keep-alive",
            "x-private",
            "upgrade",
            "proxy-authenticate",
            "trailer",
        ] {
            assert!(
                h.get(name).is_none(),
                "{path}: {name} reached the client: {h:?}"
            );
        }
        assert_eq!(values(&h, "cache-control"), ["no-cache"], "{path}");
        assert_eq!(values(&h, "x-custom"), ["yes"], "{path}");
        let body = tokio::time::timeout(LIMIT, read_body(response.into_body()))
            .await
            .expect("body in time");
        assert_eq!(body, expected_body, "{path}");
    }
    if let Client::H1(_) = client {
        // The proxy's connection to the client stays usable afterwards.
        let req = request(version, "GET", "localhost", "/again")
            .body(empty_body())
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), 200);
        assert_eq!(read_body(response.into_body()).await, "hello");
    }
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed_over_http1() {
    hop_by_hop_response_headers(Version::HTTP_11).await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed_over_http2() {
    hop_by_hop_response_headers(Version::HTTP_2).await;
}

// ------------------------------------------------------ path and query

const PATHS: &[&str] = &[
    "/",
    "/events",
    "/a/b%20c/d.json?x=1&y=%2F&z",
    "/search?q=caf%C3%A9&lang=fr&empty=&flag",
    "/stream/?lastEventId=7&topic=a%26b",
    "/x;param=1/y?",
];

async fn paths_and_queries(version: Version, base: &str) {
    let (upstream, mut seen) = recording_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.upstream =
        UpstreamUrl::parse(&format!("http://{}{base}", upstream.addr)).expect("upstream url");
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let prefix = base.trim_end_matches('/');
    for path in PATHS {
        let req = request(version, "GET", "localhost", path)
            .body(empty_body())
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), 200, "{path}");
        read_body(response.into_body()).await;
        let up = next_seen(&mut seen).await;
        assert_eq!(
            up.target,
            format!("{prefix}{path}"),
            "client asked for {path}"
        );
    }
}

#[tokio::test]
async fn path_and_query_pass_unchanged_over_http1() {
    paths_and_queries(Version::HTTP_11, "").await;
}

#[tokio::test]
async fn path_and_query_pass_unchanged_over_http2() {
    paths_and_queries(Version::HTTP_2, "").await;
}

#[tokio::test]
async fn upstream_base_path_is_prefixed_over_http1() {
    paths_and_queries(Version::HTTP_11, "/base").await;
}

#[tokio::test]
async fn upstream_base_path_is_prefixed_over_http2() {
    // A trailing slash on the base is not doubled.
    paths_and_queries(Version::HTTP_2, "/base/").await;
}
