//! `--admin`: the metrics a real Prometheus server scrapes, every metric of
//! the contract on `/metrics`, the status page in headless Chromium,
//! `/readyz` during a drain, the admin token, and reload results.
//!
//! Needs the Debian packages `prometheus` and `chromium`; a test whose
//! tool is missing fails, naming the package.
//!
//! The Chromium test writes the page's screenshot to
//! `target/admin-page.png`, and to `docs/admin.png` (the README's picture)
//! when run with `SSEGATE_UPDATE_SCREENSHOT=1`.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ssegate::config::Config;
use ssegate::{CancellationToken, Server};
use tokio::net::TcpStream;

/// Starting Prometheus or a browser on two busy cores.
const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "t0ken-for-tests";

// ---------------------------------------------------------------- setup

/// A proxy in-process, configured by a file as a user would, with the
/// admin listener on 127.0.0.1:0.
struct Started {
    proxy: ProxyHandle,
    admin: SocketAddr,
    _dir: TempDir,
}

/// The configuration file's text for `upstream`: routes `/live/`
/// (shared streams, on a group with a second target where nothing
/// listens) and `/` (everything else), the admin listener with `TOKEN`,
/// and `extra` top-level keys.
fn config_text(upstream: SocketAddr, dead: SocketAddr, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
threads = 1
admin = "127.0.0.1:0"
admin_token = "{TOKEN}"
{extra}

[[certificate]]
cert = "{cert}"
key = "{key}"

[upstream.app]
targets = ["http://{upstream}"]

[upstream.realtime]
targets = ["http://{upstream}", "http://{dead}"]

[[route]]
path = "/live/"
upstream = "realtime"
sse_shared = true

[[route]]
path = "/"
upstream = "app"
"#,
        cert = dev_cert_path().display(),
        key = dev_key_path().display(),
    )
}

async fn start(text: &str) -> Started {
    init_tracing();
    let dir = TempDir::new("admin");
    let file = dir.write("ssegate.toml", text);
    let argv: Vec<OsString> = vec!["ssegate".into(), "--config".into(), file.into()];
    let config = Config::load(&argv).unwrap_or_else(|e| panic!("config loads: {e}"));
    let server = Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr();
    let admin = server.admin_addr().expect("--admin is set");
    let hub = server.hub().expect("a route");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Started {
        proxy: ProxyHandle {
            addr,
            hub,
            shutdown,
            task: Some(task),
        },
        admin,
        _dir: dir,
    }
}

/// The upstream of these tests: event streams under `/events` and
/// `/live/`, WebSockets under `/ws` (handed to the test), text elsewhere.
async fn upstream() -> TestUpstream {
    TestUpstream::builder()
        .on("/events*", Reply::event_stream())
        .on("/live/*", Reply::event_stream())
        .on("/ws*", Reply::hand_over())
        .start()
        .await
}

// ---------------------------------------------------------------- plain HTTP

/// A response from a plain HTTP/1.1 server (the admin listener,
/// Prometheus), its head and, unless it is an event stream, its body.
struct Plain {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Option<Incoming>,
}

impl Plain {
    async fn text(self) -> String {
        let body = self.body.expect("a body");
        let bytes = tokio::time::timeout(WAIT_LIMIT, body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// `GET path` on a fresh connection to `addr`, with `headers`.
async fn plain_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Plain {
    plain_request(addr, "GET", path, headers).await
}

async fn plain_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Plain {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).expect("request");
        sender.send_request(request).await.expect("response")
    };
    let response = tokio::time::timeout(WAIT_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {path} from {addr}"));
    let (parts, body) = response.into_parts();
    Plain {
        status: parts.status,
        headers: parts.headers,
        body: Some(body),
    }
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

// ---------------------------------------------------------------- exposition

/// One scrape of `/metrics`, parsed line by line: `name{labels} value`.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Scrape { text, samples }
    }

    /// The value of the series `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like `get`, failing when the series is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }

    /// Every label set `name` has.
    fn series(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}

/// `k="v",k2="v2"` with `\"` and `\\` escapes.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("key=\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => value.push(chars.next().expect("escaped").1),
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let (name, value) = bearer();
    let response = plain_get(admin, "/metrics", &[(name, &value)]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(response.text().await)
}

/// Scrapes until `done` holds for a scrape (counters that change after
/// the test's request has been answered: a connection closing, a
/// handshake failing); fails after `WAIT_LIMIT`.
async fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let scraped = scrape(admin).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed in\n{}",
            scraped.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- tests

/// Every metric of the contract, driven by real traffic and read from
/// `/metrics`: connections by protocol, handshakes, responses by route
/// and status class (routed and unrouted), durations, event streams
/// (open, events, ends by reason, durations, heartbeats), shared streams
/// and subscribers, replay hits and misses, WebSockets, upstream results
/// and health, certificate expiry and the build. Catches: a metric
/// missing or renamed, a label value that is a request path rather than
/// the route, a gauge that does not come back down.
#[tokio::test]
async fn every_metric_of_the_contract_is_on_metrics_with_bounded_labels() {
    let mut upstream = upstream().await;
    let dead = dead_upstream_addr().await;
    let extra = "sse_heartbeat = \"200ms\"\nhealth_interval = \"1h\"";
    let started = start(&config_text(upstream.addr, dead, extra)).await;
    let admin = started.admin;
    let proxy = started.proxy.addr;
    let app = format!("http://{}", upstream.addr);
    let dead_url = format!("http://{dead}");

    // Before any traffic: every route's series exist at zero, the build
    // and the certificate are there.
    let before = scrape(admin).await;
    for route in ["/", "/live/"] {
        assert_eq!(
            before.value("ssegate_sse_streams_open", &[("route", route)]),
            0.0
        );
        assert_eq!(
            before.value("ssegate_websockets_open", &[("route", route)]),
            0.0
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        before.value("ssegate_build_info", &[("version", version)]),
        1.0
    );
    let expiry = before.value(
        "ssegate_certificate_expiry_timestamp_seconds",
        &[("name", "localhost")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expiry > now, "the dev certificate is valid: {expiry}");

    // An HTTP/1.1 and an HTTP/2 connection; ordinary requests on both, one
    // that no route... all routes match, so a bad request is unrouted.
    let mut h1 = Client::connect(proxy, Version::HTTP_11).await;
    let mut h2 = Client::connect(proxy, Version::HTTP_2).await;
    for client in [&mut h1, &mut h2] {
        let response = client.get("/page/1?x=2").await;
        assert_eq!(response.status(), 200);
        read_body(response.into_body()).await;
    }
    let mut bad = raw_connect(proxy, &[b"http/1.1"]).await;
    bad.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nbad header line\r\n\r\n")
        .await;
    assert_eq!(bad.read_head().await.status(), 400);
    drop(bad);
    // A client that closes during the handshake.
    drop(TcpStream::connect(proxy).await.expect("connect"));

    // Two event streams on `/`: one the client leaves, one the upstream
    // ends; three events each.
    let mut streams = Vec::new();
    let mut readers = Vec::new();
    for n in 0..2 {
        let response = h2.get(&format!("/events/{n}")).await;
        assert_eq!(response.status(), 200);
        streams.push(upstream.next_stream().await);
        readers.push(EventReader::new(response.into_body()));
    }
    for stream in &streams {
        for id in 1..=3 {
            assert!(stream.write_event(id, "tick", &["x"]).await);
        }
    }
    for reader in &mut readers {
        assert_eq!(reader.events(3, WAIT_LIMIT).await.len(), 3);
    }
    // Silence past --sse-heartbeat: a heartbeat each.
    // (The refused connection closes once the proxy sees the client go.)
    let scraped = scrape_until(admin, "heartbeats", |s| {
        s.value("ssegate_sse_heartbeats_total", &[]) >= 2.0
            && s.get("ssegate_connections_open", &[("protocol", "h1")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        scraped.value("ssegate_sse_streams_open", &[("route", "/")]),
        2.0
    );
    assert_eq!(
        scraped.value("ssegate_sse_events_total", &[("route", "/")]),
        6.0
    );
    assert_eq!(
        scraped.value("ssegate_connections_open", &[("protocol", "h1")]),
        1.0
    );
    assert_eq!(
        scraped.value("ssegate_connections_open", &[("protocol", "h2")]),
        1.0
    );

    // A shared stream on `/live/`: two subscribers, one resuming from an
    // id the replay buffer holds, one from an id it does not.
    let first = h2.get("/live/scores").await;
    assert_eq!(first.status(), 200);
    let live = upstream.next_stream_for("/live/scores").await;
    let mut first = EventReader::new(first.into_body());
    assert!(live.write_event(7, "score", &["1-0"]).await);
    first.events(1, WAIT_LIMIT).await;
    let hit = h2.get_with("/live/scores", &[("last-event-id", "7")]).await;
    let miss = h2
        .get_with("/live/scores", &[("last-event-id", "unknown")])
        .await;
    assert_eq!((hit.status().as_u16(), miss.status().as_u16()), (200, 200));

    // A WebSocket on `/`.
    let mut ws = raw_connect(proxy, &[b"http/1.1"]).await;
    ws.write(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let mut socket = upstream.next_conn().await;
    let accept = ssegate::websocket::accept_for(b"dGhlIHNhbXBsZSBub25jZQ==");
    socket
        .write(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(ws.read_head().await.status(), 101);

    let scraped = scrape_until(admin, "the handshake closed early", |s| {
        s.get(
            "ssegate_tls_handshakes_total",
            &[("version", "unknown"), ("result", "closed")],
        ) == Some(1.0)
            && s.get("ssegate_shared_subscribers", &[]) == Some(3.0)
    })
    .await;
    let ok13 = scraped.value(
        "ssegate_tls_handshakes_total",
        &[("version", "TLSv1.3"), ("result", "ok")],
    );
    assert!(
        ok13 >= 4.0,
        "h1, h2, the bad request and the WebSocket: {ok13}"
    );
    assert_eq!(
        scraped.value(
            "ssegate_tls_handshakes_total",
            &[("version", "TLSv1.2"), ("result", "ok")]
        ),
        0.0
    );
    assert_eq!(scraped.value("ssegate_shared_streams_open", &[]), 1.0);
    assert_eq!(
        scraped.value("ssegate_replay_total", &[("result", "hit")]),
        1.0
    );
    assert_eq!(
        scraped.value("ssegate_replay_total", &[("result", "miss")]),
        1.0
    );
    assert_eq!(
        scraped.value("ssegate_sse_streams_open", &[("route", "/live/")]),
        3.0
    );
    assert_eq!(
        scraped.value("ssegate_websockets_open", &[("route", "/")]),
        1.0
    );
    assert_eq!(
        scraped.value(
            "ssegate_requests_total",
            &[("route", "unrouted"), ("status", "4xx")]
        ),
        1.0
    );
    // Two pages, two event streams, the 101 (routed), and three shared
    // subscriptions.
    assert_eq!(
        scraped.value(
            "ssegate_requests_total",
            &[("route", "/"), ("status", "2xx")]
        ),
        4.0
    );
    assert_eq!(
        scraped.value(
            "ssegate_requests_total",
            &[("route", "/"), ("status", "1xx")]
        ),
        1.0
    );
    assert_eq!(
        scraped.value(
            "ssegate_requests_total",
            &[("route", "/live/"), ("status", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        scraped.value("ssegate_request_duration_seconds_count", &[("route", "/")]),
        5.0
    );
    let app_ok = [
        ("upstream", "app"),
        ("target", app.as_str()),
        ("result", "ok"),
    ];
    assert_eq!(
        scraped.value("ssegate_upstream_requests_total", &app_ok),
        5.0
    );
    assert_eq!(
        scraped.value(
            "ssegate_upstream_healthy",
            &[("upstream", "app"), ("target", app.as_str())]
        ),
        1.0
    );
    // The shared stream's group: its dead target was tried and left out,
    // or not tried yet; either way the request found the live one.
    let realtime_ok = [
        ("upstream", "realtime"),
        ("target", app.as_str()),
        ("result", "ok"),
    ];
    assert_eq!(
        scraped.value("ssegate_upstream_requests_total", &realtime_ok),
        1.0
    );
    let dead_tried = scraped.value(
        "ssegate_upstream_requests_total",
        &[
            ("upstream", "realtime"),
            ("target", dead_url.as_str()),
            ("result", "unreachable"),
        ],
    );
    let dead_healthy = scraped.value(
        "ssegate_upstream_healthy",
        &[("upstream", "realtime"), ("target", dead_url.as_str())],
    );
    assert_eq!(dead_healthy, 1.0 - dead_tried, "left out once tried");

    // Streams end: the client leaves one, the upstream ends the other,
    // the WebSocket closes; every gauge comes back down.
    drop(readers.remove(0));
    streams.remove(1).end().await;
    assert!(readers[0].wait_end(WAIT_LIMIT).await);
    drop((ws, socket, first, hit, miss));
    let scraped = scrape_until(admin, "every stream ended", |s| {
        s.get("ssegate_sse_streams_open", &[("route", "/")]) == Some(0.0)
            && s.get("ssegate_sse_streams_open", &[("route", "/live/")]) == Some(0.0)
            && s.get("ssegate_websockets_open", &[("route", "/")]) == Some(0.0)
            && s.get("ssegate_shared_subscribers", &[]) == Some(0.0)
    })
    .await;
    let ends = |reason| {
        scraped.value(
            "ssegate_sse_stream_ends_total",
            &[("route", "/"), ("reason", reason)],
        )
    };
    assert_eq!((ends("client"), ends("upstream")), (1.0, 1.0));
    assert_eq!((ends("idle"), ends("drain"), ends("slow")), (0.0, 0.0, 0.0));
    assert_eq!(
        scraped.value(
            "ssegate_sse_stream_duration_seconds_count",
            &[("route", "/")]
        ),
        2.0
    );
    assert_eq!(
        scraped.value(
            "ssegate_sse_stream_ends_total",
            &[("route", "/live/"), ("reason", "client")]
        ),
        3.0
    );
    drop((h1, h2, readers));
    scrape_until(admin, "connections closed", |s| {
        s.get("ssegate_connections_open", &[("protocol", "h1")]) == Some(0.0)
            && s.get("ssegate_connections_open", &[("protocol", "h2")]) == Some(0.0)
    })
    .await;

    // Labels are the routes as configured, never a request path.
    for labels in scraped.series("ssegate_requests_total") {
        let route = labels["route"].as_str();
        assert!(["/", "/live/", "unrouted"].contains(&route), "{labels:?}");
    }
    // Unchanged since start: no reload happened.
    assert_eq!(
        scraped.value("ssegate_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        scraped.value("ssegate_config_reloads_total", &[("result", "failed")]),
        0.0
    );
    started.proxy.shutdown_and_wait().await;
}

/// `--admin-token`: 401 without it (or with another) on `/metrics`, `/`
/// and `/events`; `?token=` works on `/` and `/events` only; `/healthz`
/// and `/readyz` need none. Catches: an endpoint left open, a query token
/// accepted where a scraper's header belongs.
#[tokio::test]
async fn the_admin_token_is_required_except_for_health_checks() {
    let upstream = upstream().await;
    let dead = dead_upstream_addr().await;
    let started = start(&config_text(upstream.addr, dead, "")).await;
    let admin = started.admin;
    let (name, good) = bearer();
    for path in ["/metrics", "/", "/events"] {
        let none = plain_get(admin, path, &[]).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            none.header("www-authenticate"),
            "Bearer realm=\"ssegate admin\""
        );
        let wrong = plain_get(admin, path, &[(name, "Bearer t0ken-for-testS")]).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let right = plain_get(admin, path, &[(name, &good)]).await;
        assert_eq!(right.status, StatusCode::OK, "{path}");
    }
    let query = format!("token={TOKEN}");
    assert_eq!(
        plain_get(admin, &format!("/metrics?{query}"), &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "scrapers send the header"
    );
    let page = plain_get(admin, &format!("/?{query}"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert!(page.text().await.contains("new EventSource"));
    let events = plain_get(admin, &format!("/events?{query}"), &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.header("content-type"), "text/event-stream");
    // The first snapshot comes at once.
    let mut body = events.body.expect("body");
    let frame = tokio::time::timeout(WAIT_LIMIT, body.frame())
        .await
        .expect("a snapshot in time")
        .expect("a frame")
        .expect("data");
    let text = String::from_utf8(frame.into_data().expect("data").to_vec()).unwrap();
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("{text:?}"));
    let snapshot: serde_json::Value = serde_json::from_str(json).expect("JSON");
    assert_eq!(snapshot["ready"], true);
    let routes: Vec<&str> = snapshot["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"/live/") && routes.contains(&"/"),
        "{routes:?}"
    );

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            plain_get(admin, path, &[]).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let unknown = plain_get(admin, "/nope", &[(name, &good)]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let post = plain_request(admin, "POST", "/metrics", &[(name, &good)]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    started.proxy.shutdown_and_wait().await;
    assert!(
        refused(admin).await,
        "the admin listener closes with the proxy"
    );
}

/// The binary with `--admin` and `--drain-timeout`: on SIGTERM, `/readyz`
/// answers 503 while an event stream is still open (it waits for its
/// event boundary), `/healthz` stays 200, and the admin listener closes
/// when the process exits. Catches: readiness flipped only at exit (a
/// load balancer would keep sending clients to a draining instance).
#[tokio::test]
async fn readyz_fails_from_the_start_of_the_drain_while_streams_are_open() {
    let mut upstream = upstream().await;
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let upstream_url = format!("http://{}", upstream.addr);
    let mut binary = SsegateProcess::start(
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "--upstream",
            &upstream_url,
            "--admin",
            "127.0.0.1:0",
            "--drain-timeout",
            "20s",
        ],
        LIMIT,
    )
    .await;
    binary.wait_for_log("admin listening on http://").await;
    let log = binary.log();
    let admin: SocketAddr = log
        .split("admin listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {log}"));
    assert_eq!(
        plain_get(admin, "/readyz", &[]).await.status,
        StatusCode::OK
    );

    // A stream in the middle of an event: the drain waits for its end.
    let mut client = Client::connect(binary.addr, Version::HTTP_11).await;
    let response = client.get("/events").await;
    let stream = upstream.next_stream().await;
    let mut reader = RawReader::new(response.into_body());
    stream.send("id: 1\ndata: hal").await;
    reader.read_until_ends_with("data: hal").await;

    sigterm(binary.pid());
    binary.wait_for_log("shutting down: listener closed").await;
    let ready = plain_get(admin, "/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text().await, "draining\n");
    assert_eq!(
        plain_get(admin, "/healthz", &[]).await.status,
        StatusCode::OK
    );
    assert!(stream.is_open(), "the stream is still being drained");
    assert!(binary.is_running());

    stream.send("f\n\n").await;
    reader.read_to_end().await;
    assert_eq!(reader.text(), "id: 1\ndata: half\n\n");
    binary.wait_for_log("all connections closed").await;
    until_refused(admin).await;
}

/// Reloads through the file and SIGHUP are counted by result, and the
/// page's snapshot shows the last one. Catches: reloads not counted, or
/// a failed one counted as ok.
#[tokio::test]
async fn reloads_are_counted_by_result() {
    let upstream = upstream().await;
    let dead = dead_upstream_addr().await;
    let dir = TempDir::new("reload");
    let text = config_text(upstream.addr, dead, "");
    let file = dir.write("ssegate.toml", &text);
    let file_arg = file.display().to_string();
    let mut binary = SsegateProcess::start(&["--config", &file_arg], LIMIT).await;
    binary.wait_for_log("admin listening on http://").await;
    let log = binary.log();
    let admin: SocketAddr = log
        .split("admin listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {log}"));

    send_signal(binary.pid(), "-HUP");
    binary.wait_for_log("configuration reloaded").await;
    let scraped = scrape(admin).await;
    assert_eq!(
        scraped.value("ssegate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        scraped.value("ssegate_config_reloads_total", &[("result", "failed")]),
        0.0
    );

    std::fs::write(
        &file,
        text.replace("[upstream.app]", "[upstream.app]\nnot_a_key = 1"),
    )
    .expect("write");
    send_signal(binary.pid(), "-HUP");
    binary
        .wait_for_log("still serving the previous configuration")
        .await;
    let scraped = scrape(admin).await;
    // SIGHUP, and perhaps the file watcher too.
    assert!(scraped.value("ssegate_config_reloads_total", &[("result", "failed")]) >= 1.0);
    assert_eq!(
        scraped.value("ssegate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success());
}

// ---------------------------------------------------------------- Prometheus

/// A Prometheus server scraping `target` every second with `TOKEN`,
/// storing in a temporary directory; killed on Drop.
struct Prometheus {
    addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ssegate\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   authorization:\n      credentials: {TOKEN}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        // Prometheus cannot listen on port 0: take a free port, close it,
        // and try another if something took it meanwhile.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = tokio::process::Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path("stderr.log")).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{}", missing_tool("prometheus", "prometheus", &e)));
            let deadline = Instant::now() + LIMIT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken; try another.
                }
                let ready = TcpStream::connect(addr).await.is_ok()
                    && plain_get(addr, "/-/ready", &[]).await.status == StatusCode::OK;
                if ready {
                    return Prometheus {
                        addr,
                        _child: child,
                        _dir: dir,
                    };
                }
                let log = std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default();
                assert!(Instant::now() < deadline, "Prometheus not ready:\n{log}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let log = std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default();
        panic!("Prometheus did not start:\n{log}");
    }

    /// The instant vector of `query` as (labels, value) pairs.
    async fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = plain_get(self.addr, &format!("/api/v1/query?query={encoded}"), &[]).await;
        assert_eq!(response.status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&response.text().await).expect("JSON");
        assert_eq!(json["status"], "success", "{json}");
        json["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|sample| {
                let value = sample["value"][1]
                    .as_str()
                    .expect("value")
                    .parse()
                    .expect("number");
                (sample["metric"].clone(), value)
            })
            .collect()
    }

    /// Queries until the single value of `query` satisfies `done`.
    async fn until(&self, query: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let result = self.query(query).await;
            if let [(_, value)] = result[..] {
                if done(value) {
                    return value;
                }
            }
            assert!(Instant::now() < deadline, "{query} gave {result:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A real Prometheus scrapes the admin listener (with the token) while
/// the test opens three event streams and relays twenty events on each:
/// Prometheus sees the streams open, the events counted and their rate,
/// then the streams closed. Catches: an exposition Prometheus cannot
/// parse, counters without `_total`, gauges that do not come back down.
#[tokio::test]
async fn prometheus_scrapes_streams_and_event_rates() {
    const STREAMS: usize = 3;
    const EVENTS: u64 = 20;
    let mut upstream = upstream().await;
    let dead = dead_upstream_addr().await;
    let started = start(&config_text(upstream.addr, dead, "")).await;
    let prometheus = Prometheus::start(started.admin).await;
    prometheus
        .until(r#"up{job="ssegate"}"#, |up| up == 1.0)
        .await;
    prometheus
        .until(r#"ssegate_sse_events_total{route="/"}"#, |n| n == 0.0)
        .await;

    let mut client = Client::connect(started.proxy.addr, Version::HTTP_2).await;
    let mut streams = Vec::new();
    let mut readers = Vec::new();
    for n in 0..STREAMS {
        let response = client.get(&format!("/events/{n}")).await;
        streams.push(upstream.next_stream().await);
        readers.push(EventReader::new(response.into_body()));
    }
    let open = prometheus
        .until(r#"ssegate_sse_streams_open{route="/"}"#, |n| {
            n == STREAMS as f64
        })
        .await;
    assert_eq!(open, STREAMS as f64);
    for id in 1..=EVENTS {
        for stream in &streams {
            assert!(stream.write_event(id, "tick", &["x"]).await);
        }
    }
    for reader in &mut readers {
        assert_eq!(
            reader.events(EVENTS as usize, WAIT_LIMIT).await.len(),
            EVENTS as usize
        );
    }
    let total = STREAMS as f64 * EVENTS as f64;
    prometheus
        .until(r#"ssegate_sse_events_total{route="/"}"#, |n| n == total)
        .await;
    // increase() extrapolates to the window's end, so it may show a little
    // more than was sent, never less.
    let increase = prometheus
        .until(
            r#"increase(ssegate_sse_events_total{route="/"}[1m])"#,
            |n| n >= total,
        )
        .await;
    assert!(increase <= 3.0 * total, "{increase}");
    let rate = prometheus
        .until(r#"rate(ssegate_sse_events_total{route="/"}[1m])"#, |n| {
            n > 0.0
        })
        .await;
    assert!(rate <= total, "{rate}");

    drop(readers);
    drop(client);
    prometheus
        .until(r#"ssegate_sse_streams_open{route="/"}"#, |n| n == 0.0)
        .await;
    started.proxy.shutdown_and_wait().await;
}

// ---------------------------------------------------------------- the page

/// Evaluated in the page: resolves with the numbers shown once the
/// EventSource is live and `#streams-open` shows `want` (or after 20 s).
fn watch_js(want: usize) -> String {
    format!(
        r#"
new Promise((resolve) => {{
  const shown = () => [
    document.getElementById('status').textContent,
    document.getElementById('streams-open').textContent,
    document.getElementById('connections-h2').textContent,
    document.getElementById('events-total').textContent,
    document.getElementById('shared-subscribers').textContent,
    document.querySelectorAll('#routes tr').length,
  ].join('|');
  const done = () => document.getElementById('status').textContent === 'live'
    && document.getElementById('streams-open').textContent === '{want}'
    && document.getElementById('events-total').textContent !== '0';
  const check = () => {{ if (done()) {{ resolve('ok|' + shown()); return true; }} return false; }};
  if (check()) return;
  const observer = new MutationObserver(() => {{ if (check()) observer.disconnect(); }});
  observer.observe(document.body, {{ subtree: true, childList: true, characterData: true }});
  setTimeout(() => resolve('timeout|' + shown()), 20000);
}})
"#
    )
}

/// The status page in headless Chromium: it loads with the token, its
/// EventSource connects, and the numbers follow the streams the test
/// opens; a screenshot is taken. Catches: a page that does not render
/// the snapshot, an EventSource refused for the token, a snapshot that
/// does not change.
#[tokio::test]
async fn the_status_page_shows_live_numbers_in_headless_chromium() {
    let mut upstream = upstream().await;
    let dead = dead_upstream_addr().await;
    let started = start(&config_text(
        upstream.addr,
        dead,
        r#"sse_heartbeat = "15s""#,
    ))
    .await;
    let proxy = started.proxy.addr;

    // Some traffic before the page opens, so nothing is empty.
    let mut client = Client::connect(proxy, Version::HTTP_2).await;
    for n in 0..5 {
        let response = client.get(&format!("/page/{n}")).await;
        read_body(response.into_body()).await;
    }
    let first = client.get("/events/a").await;
    let stream_a = upstream.next_stream().await;
    let mut first = EventReader::new(first.into_body());
    assert!(stream_a.write_event(1, "tick", &["x"]).await);
    first.events(1, WAIT_LIMIT).await;

    let url = format!("http://{}/?token={TOKEN}", started.admin);
    let admin_log = started.admin;
    let report = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + LIMIT;
        let mut browser = Browser::launch();
        let page = browser.open_page(&url, 1280, 800, deadline);
        let before = browser.evaluate(&page, &watch_js(1), deadline);
        (browser, page, before)
    })
    .await
    .expect("browser thread");
    let (mut browser, page, before) = report;
    let parts: Vec<&str> = before.split('|').collect();
    assert_eq!(
        parts[0],
        "ok",
        "the page never showed the first stream: {before}\n{}",
        browser.diagnostics()
    );
    assert_eq!(parts[1], "live", "{before}");
    assert_eq!(parts[3], "1", "one HTTP/2 connection: {before}");

    // More streams, a shared stream with subscribers, events.
    let mut readers = vec![first];
    let mut streams = vec![stream_a];
    for n in 0..2 {
        let response = client.get(&format!("/events/{n}")).await;
        streams.push(upstream.next_stream().await);
        readers.push(EventReader::new(response.into_body()));
    }
    for _ in 0..3 {
        let response = client.get("/live/scores").await;
        readers.push(EventReader::new(response.into_body()));
    }
    let live = upstream.next_stream_for("/live/scores").await;
    for id in 2..=4 {
        for stream in &streams {
            assert!(stream.write_event(id, "tick", &["x"]).await);
        }
        assert!(live.write_event(id, "score", &["1-0"]).await);
    }
    let (mut browser, page, after) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + LIMIT;
        let after = browser.evaluate(&page, &watch_js(6), deadline);
        (browser, page, after)
    })
    .await
    .expect("browser thread");
    let parts: Vec<&str> = after.split('|').collect();
    assert_eq!(
        parts[0], "ok",
        "the numbers did not follow: {after} (admin {admin_log})"
    );
    assert_eq!(
        parts[2], "6",
        "three streams and three subscribers: {after}"
    );
    assert_eq!(
        parts[5], "3",
        "one shared stream's three subscribers: {after}"
    );
    assert_eq!(parts[6], "2", "two routes listed: {after}");

    // For the README's picture, a minute of varying traffic first, so
    // the charts have a history to show.
    let update_screenshot = std::env::var_os("SSEGATE_UPDATE_SCREENSHOT").is_some();
    if update_screenshot {
        for second in 0..60u64 {
            let burst = 2 + (second * 7 % 11);
            for id in 0..burst {
                for stream in &streams {
                    assert!(
                        stream
                            .write_event(100 + second * 20 + id, "tick", &["x"])
                            .await
                    );
                }
                assert!(
                    live.write_event(100 + second * 20 + id, "score", &["1-0"])
                        .await
                );
            }
            for n in 0..(second % 5) * 3 {
                let response = client.get(&format!("/page/{n}")).await;
                read_body(response.into_body()).await;
            }
            // Paced: the chart shows a rate per second.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // A second for the charts to have a point more, then the picture.
    let png = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + LIMIT;
        std::thread::sleep(Duration::from_millis(1500));
        let png = browser.screenshot(&page, deadline);
        browser.send("Browser.close", "{}", None);
        png
    })
    .await
    .expect("browser thread");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    std::fs::write(repo_path("target/admin-page.png"), &png).expect("write the screenshot");
    if update_screenshot {
        std::fs::write(repo_path("docs/admin.png"), &png).expect("write docs/admin.png");
    }
    drop(readers);
    started.proxy.shutdown_and_wait().await;
}

/// `--admin-token` belongs to `--admin`, and an empty token is refused:
/// one line and a non-zero exit, before anything listens. Catches: a
/// token silently ignored (no admin listener), or an empty one that every
/// request matches.
#[test]
fn an_admin_token_needs_the_admin_listener_and_must_not_be_empty() {
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let base = [
        "--cert",
        &cert,
        "--key",
        &key,
        "--upstream",
        "http://127.0.0.1:9",
    ];
    let run = |extra: &[&str]| {
        let output = ssegate_command()
            .args(base)
            .args(extra)
            .output()
            .expect("run ssegate");
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let without = run(&["--admin-token", "x"]);
    assert!(without.contains("--admin"), "{without}");
    let empty = run(&["--admin", "127.0.0.1:0", "--admin-token", ""]);
    assert!(empty.contains("--admin-token must be non-empty"), "{empty}");
}
