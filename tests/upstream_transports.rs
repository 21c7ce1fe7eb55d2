//! Upstream targets over TLS (`https://`) and Unix sockets (`unix:`): the
//! same requests, event streams, keep-alive, health checks and shared
//! streams as over TCP, and the failures that make them unreachable (an
//! untrusted or misnamed certificate, a missing socket): a 502, or the next
//! target of a group.
//!
//! The upstream is a `TestUpstream` behind a `TlsFront` (its certificate
//! issued by a `TestCa` made in the test) or a `UnixFront`, each relaying
//! one TCP connection per connection it accepts. Each test says, above it,
//! which broken behaviour makes it fail.

mod common;

use std::time::Duration;

use common::*;
use http::Version;
use ssegate::config::{Config, UpstreamUrl};
use ssegate::upstream::{Balance, HealthCheck};

/// An upstream that answers `/events` with an event stream the test feeds
/// and anything else with "ok".
async fn upstream() -> TestUpstream {
    TestUpstream::builder()
        .on("/events", Reply::event_stream())
        .otherwise(Reply::text("ok"))
        .start()
        .await
}

fn url(text: &str) -> UpstreamUrl {
    UpstreamUrl::parse(text).expect("upstream url")
}

/// A proxy configuration whose only target is `target`; `ca` (a PEM file)
/// is trusted for https targets instead of the system's roots, as
/// `--upstream-ca` does.
fn config_for(upstream: &TestUpstream, target: &str, ca: Option<&std::path::Path>) -> Config {
    let mut config = proxy_config(upstream.addr);
    default_group(&mut config).targets = vec![url(target)];
    config.upstream_tls =
        Some(ssegate::tls::upstream_client_config(ca).expect("upstream TLS configuration"));
    config
}

/// A TLS front with a certificate for 127.0.0.1 issued by `ca`.
async fn tls_front(upstream: &TestUpstream, ca: &TestCa) -> TlsFront {
    TlsFront::start(upstream.addr, ca.server_config(&["127.0.0.1"])).await
}

/// One GET that must succeed with "ok"; its request as the upstream got it.
async fn get_ok(client: &mut Client, upstream: &mut TestUpstream, path: &str) -> UpstreamRequest {
    let response = client.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(read_body(response.into_body()).await, "ok");
    upstream.next_request().await
}

/// Three events, each written only after the client has the one before,
/// each arriving alone (neither held back nor batched).
async fn events_arrive_one_by_one(client: &mut Client, upstream: &mut TestUpstream) {
    let response = client.get("/events").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let stream = upstream.next_stream_for("/events").await;
    let mut reader = EventReader::new(response.into_body());
    for id in 1..=3 {
        assert!(stream.write_event(id, "tick", &["hello"]).await);
        let event = reader
            .next_event(WAIT_LIMIT)
            .await
            .unwrap_or_else(|| panic!("event {id} arrives on its own"));
        assert_eq!(event.text, event_text(id, "tick", "hello"));
        assert!(reader.leftover().is_empty(), "more than event {id} arrived");
    }
}

// ---------------------------------------------------------------- https

/// Catches an https target that is not spoken TLS to, not verified against
/// `--upstream-ca`, or not offered http/1.1 by ALPN, and events held back
/// on their way through TLS, for HTTP/1.1 and HTTP/2 clients alike.
async fn https_upstream_with_its_private_ca(version: Version) {
    let dir = TempDir::new("https");
    let ca = TestCa::new("ssegate test upstream CA");
    let mut upstream = upstream().await;
    let front = tls_front(&upstream, &ca).await;
    let config = config_for(&upstream, &front.url(), Some(&ca.write_pem(&dir)));
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let request = get_ok(&mut client, &mut upstream, "/plain").await;
    assert_eq!(request.start_line(), "GET /plain HTTP/1.1");
    assert_eq!(
        request.header("host"),
        Some("localhost"),
        "the client's host"
    );
    events_arrive_one_by_one(&mut client, &mut upstream).await;
    assert_eq!(front.alpn()[0].as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn https_upstream_with_its_private_ca_over_http1() {
    https_upstream_with_its_private_ca(Version::HTTP_11).await;
}

#[tokio::test]
async fn https_upstream_with_its_private_ca_over_http2() {
    https_upstream_with_its_private_ca(Version::HTTP_2).await;
}

/// Catches TLS connections left out of the pool, or found dead in it (a
/// liveness check that mistakes the TLS layer's state for a close): each
/// request would pay a handshake.
#[tokio::test]
async fn https_upstream_connections_are_kept_alive() {
    let dir = TempDir::new("https-keepalive");
    let ca = TestCa::new("ssegate test upstream CA");
    let mut upstream = upstream().await;
    let front = tls_front(&upstream, &ca).await;
    let proxy = spawn_proxy_with(config_for(
        &upstream,
        &front.url(),
        Some(&ca.write_pem(&dir)),
    ))
    .await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let first = get_ok(&mut client, &mut upstream, "/one").await;
    let second = get_ok(&mut client, &mut upstream, "/two").await;
    assert_eq!((first.conn, second.conn), (1, 1), "one upstream connection");
    assert_eq!(second.seq, 2);
    assert_eq!(front.handshakes(), 1, "one TLS handshake in all");
}

/// Catches certificate verification that is off, or that trusts a private
/// CA nobody configured: the system's roots do not know it.
#[tokio::test]
async fn https_upstream_without_its_ca_is_a_502() {
    let ca = TestCa::new("ssegate test upstream CA");
    let mut upstream = upstream().await;
    let front = tls_front(&upstream, &ca).await;
    let proxy = spawn_proxy_with(config_for(&upstream, &front.url(), None)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let response = get_once(proxy.addr, "/plain", version).await;
        assert_plain_error(response, 502).await;
    }
    assert!(front.accepted() >= 1, "the proxy never tried the target");
    assert_eq!(front.handshakes(), 0);
    assert!(upstream.saw_nothing_more());
}

/// Catches a certificate checked for its issuer only: this one is from the
/// trusted CA, but for another name than the URL's host.
#[tokio::test]
async fn https_upstream_with_a_certificate_for_another_name_is_a_502() {
    let dir = TempDir::new("https-name");
    let ca = TestCa::new("ssegate test upstream CA");
    let mut upstream = upstream().await;
    let front = TlsFront::start(upstream.addr, ca.server_config(&["localhost"])).await;
    let proxy = spawn_proxy_with(config_for(
        &upstream,
        &front.url(),
        Some(&ca.write_pem(&dir)),
    ))
    .await;
    let response = get_once(proxy.addr, "/plain", Version::HTTP_11).await;
    assert_plain_error(response, 502).await;
    assert!(front.accepted() >= 1, "the proxy never tried the target");
    assert_eq!(front.handshakes(), 0);
    assert!(upstream.saw_nothing_more());
}

/// Catches a failed handshake that is not taken for an unreachable target:
/// the request would get the 502 instead of going to the next target.
#[tokio::test]
async fn a_group_moves_on_from_an_untrusted_https_target() {
    let ca = TestCa::new("ssegate test upstream CA");
    let untrusted_upstream = upstream().await;
    let untrusted = tls_front(&untrusted_upstream, &ca).await;
    let good = TestUpstream::builder()
        .otherwise(Reply::text("good"))
        .start()
        .await;
    let mut config = config_for(&good, &untrusted.url(), None);
    default_group(&mut config)
        .targets
        .push(url(&format!("http://{}", good.addr)));
    // The first request starts at the first target.
    default_group(&mut config).balance = Balance::RoundRobin;
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let response = client.get("/name").await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "good");
    assert_eq!(
        untrusted.accepted(),
        1,
        "the untrusted target was tried first"
    );
    assert_eq!(untrusted.handshakes(), 0);
}

// ---------------------------------------------------------------- unix

/// Catches a `unix:` target connected to as anything but its socket, or
/// whose connections are not pooled, for HTTP/1.1 and HTTP/2 clients.
async fn unix_socket_upstream(version: Version) {
    let mut upstream = upstream().await;
    let front = UnixFront::start(upstream.addr).await;
    let proxy = spawn_proxy_with(config_for(&upstream, &front.url(), None)).await;
    let mut client = Client::connect(proxy.addr, version).await;

    let first = get_ok(&mut client, &mut upstream, "/plain").await;
    assert_eq!(first.start_line(), "GET /plain HTTP/1.1");
    assert_eq!(first.header("host"), Some("localhost"));
    let second = get_ok(&mut client, &mut upstream, "/again").await;
    assert_eq!(second.conn, first.conn, "the socket connection is reused");
    events_arrive_one_by_one(&mut client, &mut upstream).await;
    assert_eq!(
        front.accepted(),
        1,
        "one connection, reused for each request"
    );
}

#[tokio::test]
async fn unix_socket_upstream_over_http1() {
    unix_socket_upstream(Version::HTTP_11).await;
}

#[tokio::test]
async fn unix_socket_upstream_over_http2() {
    unix_socket_upstream(Version::HTTP_2).await;
}

/// Catches a missing socket taken for a start-up error or a hang: the
/// upstream may not be there yet, and the client must hear so at once.
#[tokio::test]
async fn a_unix_socket_that_does_not_exist_is_a_502() {
    let dir = TempDir::new("no-socket");
    let upstream = upstream().await;
    let target = format!("unix:{}", dir.path("nobody-listens.sock").display());
    let proxy = spawn_proxy_with(config_for(&upstream, &target, None)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let response = get_once(proxy.addr, "/plain", version).await;
        assert_plain_error(response, 502).await;
    }
}

// ---------------------------------------------------------------- one connect for all

/// Catches health checks that connect their own way: an https and a unix
/// target must both be checked over their own transport.
#[tokio::test]
async fn health_checks_reach_https_and_unix_targets() {
    let dir = TempDir::new("health");
    let ca = TestCa::new("ssegate test upstream CA");
    let mut over_tls = upstream().await;
    let mut over_unix = upstream().await;
    let tls = tls_front(&over_tls, &ca).await;
    let unix = UnixFront::start(over_unix.addr).await;
    let mut config = config_for(&over_tls, &tls.url(), Some(&ca.write_pem(&dir)));
    default_group(&mut config).targets.push(url(&unix.url()));
    default_group(&mut config).health_check = Some(HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_millis(100),
    });
    let _proxy = spawn_proxy_with(config).await;
    let checked = over_tls.take_request(|r| r.path() == "/healthz").await;
    assert_eq!(checked.header("host"), Some(tls.addr.to_string().as_str()));
    let checked = over_unix.take_request(|r| r.path() == "/healthz").await;
    assert_eq!(checked.header("host"), Some("localhost"));
    assert_eq!(checked.header("user-agent"), Some("ssegate-health-check"));
}

/// Catches shared streams that open their upstream request some other way
/// than the one connect.
#[tokio::test]
async fn a_shared_stream_reaches_an_https_upstream() {
    let dir = TempDir::new("shared");
    let ca = TestCa::new("ssegate test upstream CA");
    let mut upstream = TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await;
    let front = tls_front(&upstream, &ca).await;
    let mut config = config_for(&upstream, &front.url(), Some(&ca.write_pem(&dir)));
    config.streams.shared_prefixes = vec!["/shared/".into()];
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = client.get("/shared/news").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream_for("/shared/news").await;
    assert!(stream.write_event(1, "news", &["first"]).await);
    let mut reader = EventReader::new(response.into_body());
    let event = reader.next_event(WAIT_LIMIT).await.expect("the event");
    assert!(event.text.ends_with("data: first"), "{:?}", event.text);
    assert_eq!(front.handshakes(), 1);
}

// ---------------------------------------------------------------- the binary

/// Catches `--upstream-ca` not reaching the proxy, and a failed upstream
/// handshake logged without its reason.
#[tokio::test]
async fn the_binary_trusts_upstream_ca_and_logs_why_a_handshake_failed() {
    let dir = TempDir::new("binary");
    let ca = TestCa::new("ssegate test upstream CA");
    let upstream = upstream().await;
    let front = tls_front(&upstream, &ca).await;
    let ca_path = ca.write_pem(&dir);
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let limit = Duration::from_secs(30);
    let target = front.url();
    let base = ["--cert", &cert, "--key", &key, "--upstream", &target];

    let ca_arg = ca_path.display().to_string();
    let trusting = [&base[..], &["--upstream-ca", &ca_arg]].concat();
    let trusting = SsegateProcess::start(&trusting, limit).await;
    let response = get_once(trusting.addr, "/plain", Version::HTTP_11).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "ok");

    let mut untrusting = SsegateProcess::start(&base, limit).await;
    let response = get_once(untrusting.addr, "/plain", Version::HTTP_11).await;
    assert_plain_error(response, 502).await;
    untrusting.wait_for_log("TLS handshake with").await;
    let log = untrusting.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake with"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("UnknownIssuer"), "the reason: {line}");
}
