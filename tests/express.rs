//! ssegate in front of a real Express app run as three processes (as pm2 or
//! a container platform would), with real EventSource clients (the
//! `eventsource` npm package, which reconnects as browsers do: after
//! `retry:`, with `Last-Event-ID`). One process is killed with SIGKILL while
//! streams flow: its clients resume on the others without losing or
//! repeating an event, no request gets a 502, and when the process comes
//! back the health check returns it to the group.
//!
//! Needs Node.js (Debian package `nodejs`, with `npm`) and the packages of
//! `tests/express/package.json` (`npm ci --prefix tests/express`, which
//! `.ci/run` does); a test whose tool is missing fails.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::Version;

/// Node starting, three apps and a proxy on two cores.
const LIMIT: Duration = Duration::from_secs(30);
/// EventSource clients in the test.
const CLIENTS: usize = 6;

/// `tests/express/app.js` named `name` on `port` (0: any), and its port.
async fn express(name: &str, port: u16) -> (Script, u16) {
    let mut app = Script::node(
        "app.js",
        &[],
        &[("NAME", name.to_owned()), ("PORT", port.to_string())],
    );
    let line = app.line().await;
    let port = line
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from app.js: {line}"));
    (app, port)
}

/// What one EventSource client received: (id, target name) per event.
type Received = HashMap<usize, Vec<(u64, String)>>;

/// Reads client lines until `done` holds for what has been received.
async fn receive_until(
    clients: &mut Script,
    received: &mut Received,
    done: impl Fn(&Received) -> bool,
) {
    while !done(received) {
        let line = clients.line().await;
        let mut words = line.split(' ');
        if words.next() != Some("event") {
            continue;
        }
        let (Some(k), Some(id), Some(name)) = (words.next(), words.next(), words.next()) else {
            panic!("malformed client line {line:?}");
        };
        let k: usize = k.parse().expect("client number");
        let id: u64 = id.parse().expect("event id");
        received.entry(k).or_default().push((id, name.to_owned()));
    }
}

/// Fails if a reconnect lands on the dead process and gets a 502 (the
/// client would stall, retrying), if any id is lost or repeated across the
/// failover, if a request gets a 502 or reaches the dead process once it is
/// down, or if the health check does not bring the restarted process back.
#[tokio::test]
async fn three_express_processes_survive_one_killed_and_get_it_back() {
    let mut apps = HashMap::new();
    let mut ports = HashMap::new();
    for name in ["a", "b", "c"] {
        let (app, port) = express(name, 0).await;
        apps.insert(name, app);
        ports.insert(name, port);
    }
    let upstreams: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| format!("http://127.0.0.1:{}", ports[name]))
        .collect();
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let mut args: Vec<&str> = vec!["--cert", cert.as_str(), "--key", key.as_str()];
    for upstream in &upstreams {
        args.extend(["--upstream", upstream.as_str()]);
    }
    args.extend(["--health-check", "/healthz", "--health-interval", "200ms"]);
    let mut proxy = SsegateProcess::start(&args, LIMIT).await;

    let url = format!("https://localhost:{}/events", proxy.addr.port());
    let mut clients = Script::node(
        "clients.js",
        &[&url, &CLIENTS.to_string()],
        &[("NODE_EXTRA_CA_CERTS", cert.clone())],
    );
    let mut received = Received::new();
    receive_until(&mut clients, &mut received, |r| {
        r.len() == CLIENTS && r.values().all(|events| events.len() >= 3)
    })
    .await;

    // least-conn spread the streams: every process serves some.
    let serving = |r: &Received, name: &str| {
        r.values()
            .filter(|events| events.last().is_some_and(|(_, n)| n == name))
            .count()
    };
    for name in ["a", "b", "c"] {
        assert!(
            serving(&received, name) > 0,
            "{name} serves no stream: {received:?}"
        );
    }

    // Kill one process mid-stream.
    let victim = "b";
    let moved: Vec<usize> = received
        .iter()
        .filter(|(_, events)| events.last().is_some_and(|(_, n)| n == victim))
        .map(|(&k, _)| k)
        .collect();
    let before: HashMap<usize, usize> = received.iter().map(|(&k, e)| (k, e.len())).collect();
    apps.get_mut(victim).expect("victim").kill().await;
    receive_until(&mut clients, &mut received, |r| {
        r.iter().all(|(k, events)| events.len() >= before[k] + 10)
    })
    .await;
    for k in &moved {
        let latest: Vec<_> = received[k].iter().rev().take(5).collect();
        assert!(
            latest.iter().all(|(_, name)| name != victim),
            "client {k} did not move off {victim}: {latest:?}"
        );
    }
    for (k, events) in &received {
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        let expected: Vec<u64> = (ids[0]..ids[0] + ids.len() as u64).collect();
        assert_eq!(ids, expected, "client {k}: every id once, in order");
    }

    // Marked down by the health check; requests go to the others.
    proxy.wait_for_log("upstream target is down").await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    for _ in 0..10 {
        let response = client.get("/name").await;
        assert_eq!(response.status(), 200);
        let body = read_body(response.into_body()).await;
        assert_ne!(body, victim, "a request reached the dead process");
    }

    // Back on its port: the health check returns it, and least-conn gives
    // the next request to the target without streams.
    let (back, _) = express(victim, ports[victim]).await;
    apps.insert(victim, back);
    proxy.wait_for_log("upstream target is up").await;
    let response = client.get("/name").await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, victim);
}
