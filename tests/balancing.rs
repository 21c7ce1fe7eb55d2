//! Several upstream targets behind one group: each balancing policy, a
//! request moved to the next target when one cannot take it (and only when
//! that is safe), active health checks taking a target out and back in,
//! and an event stream of a dying target ending cleanly so the client
//! resumes on another with `Last-Event-ID`.
//!
//! Every target is a `TestUpstream` that names itself in its answers
//! (`named_upstream`), so the client sees which target served a request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Version;
use ssegate::config::{Config, UpstreamUrl};
use ssegate::upstream::{Balance, HealthCheck};
use tokio::sync::mpsc;

/// A target that answers `GET /name` (and anything else but the two paths
/// below) with its name, `/events` with an event stream the test feeds,
/// and `/healthz` with the status in `health`, announcing each check on
/// `checks`.
struct Named {
    upstream: TestUpstream,
    health: Arc<AtomicU16>,
    checks: mpsc::UnboundedReceiver<()>,
}

async fn named_upstream(name: &'static str) -> Named {
    let health = Arc::new(AtomicU16::new(200));
    let (checked, checks) = mpsc::unbounded_channel();
    let status = health.clone();
    let upstream = TestUpstream::builder()
        .on("/events", Reply::event_stream().header("x-target", name))
        .on(
            "/healthz",
            Reply::with(move |_| {
                let _ = checked.send(());
                Reply::status(status.load(Ordering::SeqCst))
            }),
        )
        .otherwise(Reply::text(name).header("x-target", name))
        .start()
        .await;
    Named {
        upstream,
        health,
        checks,
    }
}

fn url(addr: SocketAddr) -> UpstreamUrl {
    UpstreamUrl::parse(&format!("http://{addr}")).expect("upstream url")
}

/// A proxy configuration for `targets`, in this order, picked by `balance`.
fn group_config(targets: &[SocketAddr], balance: Balance) -> Config {
    let mut config = proxy_config(targets[0]);
    default_group(&mut config).targets = targets.iter().map(|&addr| url(addr)).collect();
    default_group(&mut config).balance = balance;
    config
}

/// Targets `a`, `b` and `c`, in this order, behind a proxy picking by `balance`.
async fn three_targets(balance: Balance) -> ([Named; 3], ProxyHandle) {
    let targets = [
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    ];
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.upstream.addr).collect();
    let proxy = spawn_proxy_with(group_config(&addrs, balance)).await;
    (targets, proxy)
}

/// The name of the target that served `path`, with the response's status.
async fn served_by(client: &mut Client, path: &str) -> (u16, String) {
    let response = client.get(path).await;
    let status = response.status().as_u16();
    let body = read_body(response.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits for `count` more health checks of `target`.
async fn checks(target: &mut Named, count: usize) {
    for _ in 0..count {
        tokio::time::timeout(WAIT_LIMIT, target.checks.recv())
            .await
            .expect("a health check in time")
            .expect("the upstream is running");
    }
}

/// Fails without the rotation: every request would go to one target.
#[tokio::test]
async fn round_robin_takes_each_target_in_turn() {
    let (_targets, proxy) = three_targets(Balance::RoundRobin).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let mut names = Vec::new();
        for _ in 0..6 {
            let (status, name) = served_by(&mut client, "/name").await;
            assert_eq!(status, 200);
            names.push(name);
        }
        // Two full turns, whichever target the turn starts at.
        assert_eq!(names[..3], names[3..], "{version:?}: {names:?}");
        let mut turn = names[..3].to_vec();
        turn.sort();
        assert_eq!(turn, ["a", "b", "c"], "{version:?}: {names:?}");
    }
}

/// Fails if least-conn ignores open streams: after the client leaves the
/// stream of one of three targets, the next stream must go to that target,
/// wherever a rotation would be.
#[tokio::test]
async fn least_conn_gives_a_new_stream_to_the_target_with_the_fewest() {
    let ([mut a, mut b, mut c], proxy) = three_targets(Balance::LeastConn).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let response = client.get("/events").await;
        assert_eq!(response.status(), 200);
        let name = response.headers()["x-target"].to_str().unwrap().to_owned();
        open.push((name, response));
    }
    let mut names: Vec<&str> = open.iter().map(|(name, _)| name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let _on_a = a.upstream.next_stream().await;
    let on_b = b.upstream.next_stream().await;
    let _on_c = c.upstream.next_stream().await;

    // The client leaves b's stream; ordinary requests come and go.
    open.retain(|(name, _)| name != "b");
    tokio::time::timeout(WAIT_LIMIT, on_b.closed())
        .await
        .expect("the proxy lets go of b's stream");
    for _ in 0..2 {
        assert_eq!(served_by(&mut client, "/name").await.0, 200);
    }
    let response = client.get("/events").await;
    assert_eq!(response.headers()["x-target"], "b");
}

/// Fails if ip-hash rotates: one client address must stay on one target.
#[tokio::test]
async fn ip_hash_keeps_a_client_address_on_one_target() {
    let (_targets, proxy) = three_targets(Balance::IpHash).await;
    let mut names = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2, Version::HTTP_11] {
        let mut client = Client::connect(proxy.addr, version).await;
        for _ in 0..3 {
            names.push(served_by(&mut client, "/name").await.1);
        }
    }
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
}

/// Fails if a refused connection becomes a 502 while other targets are up,
/// for any method: nothing reached the dead target, so even a POST may go
/// elsewhere.
#[tokio::test]
async fn a_target_that_refuses_connections_costs_no_request_a_502() {
    let dead = dead_upstream_addr().await;
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::Random] {
        let mut config = group_config(&[dead, a.upstream.addr, b.upstream.addr], balance);
        // Left out only briefly, so the dead target is tried again and again.
        default_group(&mut config).health_interval = Duration::from_millis(1);
        let proxy = spawn_proxy_with(config).await;
        let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
        for i in 0..12 {
            let response = if i % 2 == 0 {
                client.get("/name").await
            } else {
                let req = request(Version::HTTP_11, "POST", "localhost", "/submit")
                    .body(full_body("payload"))
                    .unwrap();
                client.send(req).await
            };
            assert_eq!(response.status(), 200, "{balance:?}, request {i}");
        }
    }
}

/// Fails if a bodiless GET that meets a reset is not moved to another
/// target (the client would see a 502), or if a POST is: the target may
/// have acted on it.
#[tokio::test]
async fn a_reset_before_any_answer_moves_a_get_but_not_a_post() {
    let resetting = TestUpstream::builder()
        .otherwise(Reply::close())
        .start()
        .await;
    let b = named_upstream("b").await;
    let targets = [resetting.addr, b.upstream.addr];

    let proxy = spawn_proxy_with(group_config(&targets, Balance::RoundRobin)).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_2).await;
    // The turn starts at the first target.
    assert_eq!(served_by(&mut client, "/name").await, (200, "b".into()));
    assert_eq!(resetting.received(), 1, "the GET went to the first target");

    let proxy = spawn_proxy_with(group_config(&targets, Balance::RoundRobin)).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let req = request(Version::HTTP_11, "POST", "localhost", "/submit")
        .body(full_body("payload"))
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), 502);
    assert_eq!(resetting.received(), 2, "the POST went to the first target");
}

/// Fails if failed checks do not take a target out (requests would keep
/// reaching it), or passing checks do not bring it back.
#[tokio::test]
async fn health_checks_take_a_failing_target_out_and_bring_it_back() {
    let mut a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let mut config = group_config(&[a.upstream.addr, b.upstream.addr], Balance::RoundRobin);
    default_group(&mut config).health_check = Some(HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_millis(50),
    });
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(served_by(&mut client, "/name").await.1);
    }
    assert!(names.contains(&"a".to_owned()), "{names:?}");

    a.health.store(503, Ordering::SeqCst);
    // Every check announced from now on answers 503. Three failures mark
    // it down; the check after them shows the third was recorded (a
    // target's checks run one after another).
    while a.checks.try_recv().is_ok() {}
    checks(&mut a, 4).await;
    for _ in 0..6 {
        assert_eq!(served_by(&mut client, "/name").await, (200, "b".into()));
    }

    a.health.store(200, Ordering::SeqCst);
    while a.checks.try_recv().is_ok() {}
    checks(&mut a, 3).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(served_by(&mut client, "/name").await.1);
    }
    assert!(
        names.contains(&"a".to_owned()),
        "back in the turn: {names:?}"
    );
}

/// Fails if a dying target's stream is cut instead of ended (EventSource
/// would see an error), or if the reconnect with `Last-Event-ID` is lost to
/// the dead target (a 502) or loses the header.
#[tokio::test]
async fn an_event_stream_of_a_dying_target_ends_cleanly_and_resumes_on_another() {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let a = named_upstream("a").await;
        let b = named_upstream("b").await;
        let config = group_config(&[a.upstream.addr, b.upstream.addr], Balance::LeastConn);
        let proxy = spawn_proxy_with(config).await;
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.get("/events").await;
        let (mut dying, mut live) = if response.headers()["x-target"] == "a" {
            (a, b)
        } else {
            (b, a)
        };
        let stream = dying.upstream.next_stream().await;
        let mut events = EventReader::new(response.into_body());
        assert!(stream.write_event(7, "tick", &["seven"]).await);
        let event = events.next_event(WAIT_LIMIT).await.expect("event 7");
        assert_eq!(event.text, event_text(7, "tick", "seven"));

        // The target dies mid-stream: its connection is cut mid-body, and
        // it stops listening.
        let dead_addr = dying.upstream.addr;
        stream.cut();
        drop(dying);
        assert!(
            events.wait_end(WAIT_LIMIT).await,
            "{version:?}: the stream should end cleanly"
        );
        until_refused(dead_addr).await;

        // EventSource reconnects with the last id it saw (more than once
        // here, each time on a new connection).
        for _ in 0..3 {
            let mut client = Client::connect(proxy.addr, version).await;
            let response = client.get_with("/events", &[("last-event-id", "7")]).await;
            assert_eq!(response.status(), 200, "{version:?}");
            let stream = live.upstream.next_stream().await;
            assert_eq!(stream.header("last-event-id"), Some("7"));
        }
    }
}
