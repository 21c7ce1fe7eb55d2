//! Event streams served straight from Redis (`--sse-redis`): ssegate
//! instances in cluster mode on a real `redis-server`, EventSource clients
//! under Node.js (the `eventsource` package, which reconnects as browsers
//! do), and entries written with `XADD` by the test or by the Node publisher
//! of `examples/redis-publisher`, run as written. Covered: delivery through
//! every instance with the right `id`, `event` and `data`; `Last-Event-ID`
//! replay on any instance, by entry id and by an `id` field; `PUBLISH`
//! delivered live without replay; Redis restarted, killed and paused while
//! streams are open; start-up checks and the configuration file.
//!
//! Needs `redis-server` (Debian package `redis-server`), Node.js (`nodejs`,
//! with `npm`) and the npm packages of `tests/express` and
//! `examples/redis-publisher` (`npm ci --prefix DIR`, which `.ci/run` does);
//! a test whose tool is missing fails.

mod common;

use std::time::Duration;

use common::*;
use http::Version;
use redis::aio::MultiplexedConnection;

/// Node and several ssegate processes starting on two busy cores.
const LIMIT: Duration = Duration::from_secs(30);
/// The Redis Stream behind `GET /events/orders` (default key prefix).
const ORDERS: &str = "ssegate:events:orders";

// ---------------------------------------------------------------- helpers

/// The upstream of every request that is not a Redis stream.
async fn upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::text("from the upstream"))
        .start()
        .await
}

fn upstream_url(upstream: &TestUpstream) -> String {
    format!("http://{}", upstream.addr)
}

/// ssegate with the dev certificate in front of `upstream`, in cluster mode
/// on `redis`, serving GETs under `/events` from Redis, plus `extra`.
async fn instance(redis: &RedisServer, upstream: &str, extra: &[&str]) -> SsegateProcess {
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let url = redis.url();
    let mut args = vec![
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "--upstream",
        upstream,
        "--cluster",
        url.as_str(),
        "--sse-redis",
        "/events",
    ];
    args.extend_from_slice(extra);
    SsegateProcess::start(&args, LIMIT).await
}

/// `https://localhost:PORT<path>` on `instance`.
fn url(instance: &SsegateProcess, path: &str) -> String {
    format!("https://localhost:{}{path}", instance.addr.port())
}

/// `XADD key * field value ...`; returns the entry id.
async fn xadd(conn: &mut MultiplexedConnection, key: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// `PUBLISH channel payload`; returns how many subscribers got it.
async fn publish(conn: &mut MultiplexedConnection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .expect("PUBLISH")
}

/// Sends `signal` (`STOP`, `KILL`, ...) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// An event as the EventSource client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    /// `lastEventId`: the event's `id:`, or "" without one.
    id: String,
    /// The event type: `message` without an `event:` field.
    event: String,
    data: String,
}

fn event(id: &str, event: &str, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: event.to_owned(),
        data: data.to_owned(),
    }
}

/// One line of `tests/express/redis_source_client.js`.
enum Line {
    Open(String),
    Event(Event),
    Error(String),
}

/// One EventSource client under Node.js, listening to `message` and
/// `order` events; each (re)connection goes to the next of its URLs.
struct EventClient {
    script: Script,
}

impl EventClient {
    /// Opens `urls[0]`, sending `Last-Event-ID: last_event_id` if given.
    fn start(urls: &[String], last_event_id: Option<&str>) -> Self {
        let urls = urls.join(",");
        let mut args = vec![urls.as_str()];
        args.extend(last_event_id);
        let script = Script::node(
            "redis_source_client.js",
            &args,
            &[
                ("NODE_EXTRA_CA_CERTS", dev_cert_path().display().to_string()),
                ("TYPES", "message,order".to_owned()),
            ],
        );
        EventClient { script }
    }

    /// A client of `url` whose stream is open.
    async fn open(url: String, last_event_id: Option<&str>) -> Self {
        let mut client = EventClient::start(&[url], last_event_id);
        client.opened().await;
        client
    }

    async fn line(&mut self) -> Line {
        let line = self.script.line().await;
        if let Some(url) = line.strip_prefix("open ") {
            Line::Open(url.to_owned())
        } else if let Some(message) = line.strip_prefix("error") {
            Line::Error(message.trim().to_owned())
        } else if let Some(json) = line.strip_prefix("event ") {
            let value: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("client line {line:?}: {e}"));
            let field = |name: &str| value[name].as_str().expect(name).to_owned();
            Line::Event(Event {
                id: field("id"),
                event: field("type"),
                data: field("data"),
            })
        } else {
            panic!("unexpected client line {line:?}");
        }
    }

    /// Waits until a stream is open (200, text/event-stream); returns its URL.
    async fn opened(&mut self) -> String {
        loop {
            match self.line().await {
                Line::Open(url) => return url,
                Line::Event(event) => panic!("{event:?} before the stream opened"),
                Line::Error(_) => {}
            }
        }
    }

    /// Waits until the connection fails or ends (the client then
    /// reconnects); fails on an event first.
    async fn lost(&mut self) -> String {
        loop {
            match self.line().await {
                Line::Error(message) => return message,
                Line::Event(event) => panic!("{event:?} instead of the connection's end"),
                Line::Open(_) => {}
            }
        }
    }

    /// The next event, whatever reconnections happen before it.
    async fn event(&mut self) -> Event {
        loop {
            if let Line::Event(event) = self.line().await {
                return event;
            }
        }
    }

    async fn events(&mut self, count: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            events.push(self.event().await);
        }
        events
    }
}

/// Fails if each client's next events are not exactly `expected`, then
/// writes a marker entry and fails unless it is every client's very next
/// one (nothing was repeated or left over).
async fn expect_exactly(
    clients: &mut [&mut EventClient],
    conn: &mut MultiplexedConnection,
    key: &str,
    expected: &[Event],
) {
    for client in clients.iter_mut() {
        assert_eq!(client.events(expected.len()).await, expected);
    }
    let marker = xadd(conn, key, &[("event", "order"), ("data", "marker")]).await;
    for client in clients.iter_mut() {
        assert_eq!(
            client.event().await,
            event(&marker, "order", "marker"),
            "nothing between the expected events and the marker"
        );
    }
}

/// A connection without the crate's response timeout (500 ms), for a
/// command that waits out a `CLIENT PAUSE`.
async fn patient_connection(redis: &RedisServer) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(redis.url())
        .expect("redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to redis-server")
}

/// Reads the stream until its text ends with `tail`, and checks that
/// nothing but comments (`:` lines, heartbeats) and `retry:` lines came
/// between the first `checked` bytes and `tail`; returns the new length.
async fn read_until_tail(reader: &mut RawReader, checked: usize, tail: &str) -> usize {
    reader.read_until_ends_with(tail).await;
    let text = reader.text();
    let between = &text[checked..text.len() - tail.len()];
    assert!(
        between
            .lines()
            .all(|l| l.is_empty() || l.starts_with(':') || l.starts_with("retry:")),
        "only comments before {tail:?}: {text:?}"
    );
    text.len()
}

// ---------------------------------------------------------------- delivery

/// Fails if an entry is missing on one instance, arrives with another id,
/// type or data (a multi-line `data` field, blank line included, must
/// arrive whole), if the entry id is not the SSE id when the entry has no
/// `id` field, or if another stream's entries reach these clients.
#[tokio::test]
async fn xadd_reaches_eventsource_clients_through_each_of_three_instances() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&redis, &upstream_url(&up), &[]).await);
    }
    let mut clients = Vec::new();
    for proxy in &instances {
        clients.push(EventClient::open(url(proxy, "/events/orders"), None).await);
    }

    let mut conn = redis.connection().await;
    let first = xadd(
        &mut conn,
        ORDERS,
        &[("event", "order"), ("data", r#"{"order":1}"#)],
    )
    .await;
    let second = xadd(
        &mut conn,
        ORDERS,
        &[("data", "line one\nline two\n\nline four")],
    )
    .await;
    xadd(
        &mut conn,
        ORDERS,
        &[("id", "order-3"), ("event", "order"), ("data", "three")],
    )
    .await;
    // Another stream: for /events/other only.
    xadd(
        &mut conn,
        "ssegate:events:other",
        &[("data", "not for orders")],
    )
    .await;

    let expected = [
        event(&first, "order", r#"{"order":1}"#),
        event(&second, "message", "line one\nline two\n\nline four"),
        event("order-3", "order", "three"),
    ];
    let mut clients: Vec<&mut EventClient> = clients.iter_mut().collect();
    expect_exactly(&mut clients, &mut conn, ORDERS, &expected).await;
}

/// Fails if an entry is not written as `id:`, `event:` and one `data:` line
/// per line of its data, over HTTP/1.1 or HTTP/2; if the answer is not a
/// 200 `text/event-stream` sent before any entry; or if the key ignores
/// `--cluster-key-prefix`, the path's segments, or takes the query in.
#[tokio::test]
async fn entries_are_written_as_sse_fields_over_http1_and_http2() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(
        &redis,
        &upstream_url(&up),
        &["--cluster-key-prefix", "shop:"],
    )
    .await;
    let mut conn = redis.connection().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.addr, version).await;
        let response = client.get("/events/eu/orders?lang=en").await;
        assert_eq!(response.status(), 200, "{version:?}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{version:?}: {content_type}"
        );
        let mut reader = RawReader::new(response.into_body());

        // Not this stream: the default prefix, and the path without its
        // last segment.
        xadd(
            &mut conn,
            "ssegate:events:eu:orders",
            &[("data", "wrong prefix")],
        )
        .await;
        xadd(&mut conn, "shop:events:eu", &[("data", "wrong path")]).await;
        let id = xadd(
            &mut conn,
            "shop:events:eu:orders",
            &[("event", "order"), ("data", "a\nb")],
        )
        .await;
        let checked = read_until_tail(
            &mut reader,
            0,
            &format!("id: {id}\nevent: order\ndata: a\ndata: b\n\n"),
        )
        .await;
        let custom = format!("c-{version:?}");
        xadd(
            &mut conn,
            "shop:events:eu:orders",
            &[("data", "c"), ("id", &custom)],
        )
        .await;
        read_until_tail(&mut reader, checked, &format!("id: {custom}\ndata: c\n\n")).await;
        let text = reader.text();
        assert!(!text.contains("wrong"), "{version:?}: {text:?}");
    }
}

/// Fails if a later entry whose `id` field repeats an earlier one's (an
/// order's id on each of its updates) is dropped: every entry is an event.
#[tokio::test]
async fn entries_that_repeat_an_id_field_are_all_delivered() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let mut conn = redis.connection().await;
    for data in ["placed", "paid"] {
        xadd(
            &mut conn,
            ORDERS,
            &[("id", "order-7"), ("event", "order"), ("data", data)],
        )
        .await;
    }
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[
            event("order-7", "order", "placed"),
            event("order-7", "order", "paid"),
        ],
    )
    .await;
}

/// Fails if entries without a `data` field are not skipped, or if a run of
/// them longer than one read stalls the stream for the entries after it.
#[tokio::test]
async fn entries_without_data_are_skipped_and_do_not_stall_the_stream() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "message", "1"));

    let mut pipe = redis::pipe();
    for _ in 0..1500 {
        pipe.cmd("XADD")
            .arg(ORDERS)
            .arg("*")
            .arg("event")
            .arg("order")
            .ignore();
    }
    let () = pipe
        .query_async(&mut conn)
        .await
        .expect("XADD without data");
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2")],
    )
    .await;
}

// ---------------------------------------------------------------- replay

/// Fails if `Last-Event-ID` (an entry id on one instance, an `id` field on
/// the other) does not replay exactly the entries after it, then live
/// ones; or if a client without `Last-Event-ID` gets history.
#[tokio::test]
async fn last_event_id_replays_the_entries_after_it_on_any_instance_then_live() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let a = instance(&redis, &upstream_url(&up), &[]).await;
    let b = instance(&redis, &upstream_url(&up), &[]).await;

    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("event", "order"), ("data", "1")]).await;
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    xadd(
        &mut conn,
        ORDERS,
        &[("id", "custom-3"), ("event", "order"), ("data", "3")],
    )
    .await;
    let four = xadd(&mut conn, ORDERS, &[("data", "4\nfour")]).await;
    let five = xadd(&mut conn, ORDERS, &[("event", "order"), ("data", "5")]).await;
    assert!(!one.is_empty());
    let three_to_five = [
        event("custom-3", "order", "3"),
        event(&four, "message", "4\nfour"),
        event(&five, "order", "5"),
    ];

    // By entry id, on a.
    let mut by_entry = EventClient::open(url(&a, "/events/orders"), Some(&two)).await;
    assert_eq!(by_entry.events(3).await, three_to_five);
    let six = xadd(&mut conn, ORDERS, &[("data", "6")]).await;
    assert_eq!(by_entry.event().await, event(&six, "message", "6"));

    // By an `id` field, on b.
    let mut by_field = EventClient::open(url(&b, "/events/orders"), Some("custom-3")).await;
    assert_eq!(
        by_field.events(3).await,
        [
            event(&four, "message", "4\nfour"),
            event(&five, "order", "5"),
            event(&six, "message", "6")
        ]
    );

    // Without Last-Event-ID: live entries only.
    let mut fresh = EventClient::open(url(&a, "/events/orders"), None).await;
    let seven = xadd(&mut conn, ORDERS, &[("data", "7")]).await;
    expect_exactly(
        &mut [&mut by_entry, &mut by_field, &mut fresh],
        &mut conn,
        ORDERS,
        &[event(&seven, "message", "7")],
    )
    .await;
}

/// Fails if a `Last-Event-ID` older than the replay buffer (`--sse-replay 3`)
/// is not replayed from the Redis Stream itself: all entries after it, and
/// past 10 000 of them a page at a time (the response ends after a page and
/// EventSource reconnects with the last id it got), with nothing lost or
/// repeated, then live entries.
#[tokio::test]
async fn an_old_last_event_id_is_replayed_from_the_redis_stream_page_by_page() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let a = instance(&redis, &upstream_url(&up), &["--sse-replay", "3"]).await;

    // 10 005 entries in one pipeline: the first is the client's last seen.
    let mut conn = redis.connection().await;
    const ENTRIES: usize = 10_005;
    let mut pipe = redis::pipe();
    for n in 1..=ENTRIES {
        pipe.cmd("XADD").arg(ORDERS).arg("*").arg("data").arg(n);
    }
    let ids: Vec<String> = pipe.query_async(&mut conn).await.expect("XADD pipeline");

    let mut client = EventClient::open(url(&a, "/events/orders"), Some(&ids[0])).await;
    let replayed = client.events(ENTRIES - 1).await;
    for (n, event) in replayed.iter().enumerate() {
        let expected = n + 2;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (ids[expected - 1].as_str(), expected.to_string().as_str()),
            "replayed event {n}"
        );
    }
    let live = xadd(&mut conn, ORDERS, &[("data", "live")]).await;
    assert_eq!(client.event().await, event(&live, "message", "live"));
}

/// Fails if a client whose instance dies does not get, on the instance it
/// reconnects to (with the `Last-Event-ID` EventSource sends: here an `id`
/// field), the entry written while its instance was frozen, exactly once,
/// then live ones.
#[tokio::test]
async fn a_client_whose_instance_dies_resumes_on_another_without_loss_or_repeats() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let a = instance(&redis, &upstream_url(&up), &[]).await;
    let b = instance(&redis, &upstream_url(&up), &[]).await;
    let urls = [url(&a, "/events/orders"), url(&b, "/events/orders")];
    let mut client = EventClient::start(&urls, None);
    assert_eq!(client.opened().await, urls[0]);

    let mut conn = redis.connection().await;
    xadd(
        &mut conn,
        ORDERS,
        &[("id", "o-1"), ("event", "order"), ("data", "1")],
    )
    .await;
    assert_eq!(client.event().await, event("o-1", "order", "1"));

    // a stops serving, then dies: what was written meanwhile reaches the
    // client only through b's replay.
    signal(a.pid(), "STOP");
    let two = xadd(&mut conn, ORDERS, &[("event", "order"), ("data", "2")]).await;
    drop(a); // SIGKILL
    client.lost().await;
    assert_eq!(client.opened().await, urls[1], "reconnected to b");
    let three = xadd(&mut conn, ORDERS, &[("data", "3")]).await;
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "order", "2"), event(&three, "message", "3")],
    )
    .await;
}

/// Fails if SIGTERM does not end an open Redis stream (the drain timeout
/// is far longer than the client waits), or the client does not resume on
/// the other instance with what it missed.
#[tokio::test]
async fn drain_ends_a_redis_stream_and_the_client_resumes_on_another_instance() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let args = ["--drain-timeout", "5m", "--drain-retry", "100ms"];
    let a = instance(&redis, &upstream_url(&up), &args).await;
    let b = instance(&redis, &upstream_url(&up), &args).await;
    let urls = [url(&a, "/events/orders"), url(&b, "/events/orders")];
    let mut client = EventClient::start(&urls, None);
    assert_eq!(client.opened().await, urls[0]);

    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "message", "1"));
    sigterm(a.pid());
    client.lost().await;
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    assert_eq!(client.opened().await, urls[1], "reconnected to b");
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2")],
    )
    .await;
}

// ---------------------------------------------------------------- PUBLISH

/// Fails if a `PUBLISH` to the stream's name is not delivered live as
/// `data:` without an id (a payload with line breaks, blank line included,
/// must stay one `message` event: it cannot inject fields), or if it is
/// replayed to a client that reconnects with `Last-Event-ID`.
#[tokio::test]
async fn publish_is_delivered_live_as_data_without_id_or_replay() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;

    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("event", "order"), ("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "order", "1"));

    for payload in [
        "hello",
        "two\nlines",
        "x\n\nid: 99\nevent: order\ndata: injected",
    ] {
        assert!(publish(&mut conn, ORDERS, payload).await >= 1, "subscribed");
        assert_eq!(client.event().await, event("", "message", payload));
    }
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    assert_eq!(client.event().await, event(&two, "message", "2"));

    // Reconnecting after entry one: entry two, never the published ones.
    let mut again = EventClient::open(url(&proxy, "/events/orders"), Some(&one)).await;
    expect_exactly(
        &mut [&mut again],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2")],
    )
    .await;
}

// ---------------------------------------------------------------- the example

/// Fails if the Node publisher of `examples/redis-publisher`, run as
/// written behind ssegate, does not reach a client of another ssegate
/// instance with its `order` event, its JSON body and the entry id it
/// answered.
#[tokio::test]
async fn the_node_publisher_example_reaches_clients_through_ssegate() {
    let redis = RedisServer::start().await;
    let mut app = Script::node_in(
        "examples/redis-publisher",
        "index.js",
        &[("REDIS_URL", redis.url()), ("PORT", "0".to_owned())],
    );
    let port = app.line_after("listening ").await;
    let app_url = format!("http://127.0.0.1:{port}");
    let front = instance(&redis, &app_url, &[]).await;
    let other = instance(&redis, &app_url, &[]).await;
    let mut client = EventClient::open(url(&other, "/events/orders"), None).await;

    let body = r#"{"item":"book","qty":2}"#;
    let mut publisher = Client::connect(front.addr, Version::HTTP_2).await;
    let response = publisher
        .send(
            request(Version::HTTP_2, "POST", "localhost", "/orders")
                .header("content-type", "application/json")
                .body(full_body(body))
                .expect("valid request"),
        )
        .await;
    assert_eq!(response.status(), 201);
    let answer = read_body(response.into_body()).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON answer");
    let id = answer["id"].as_str().expect("the entry id");

    assert_eq!(client.event().await, event(id, "order", body));
}

// ---------------------------------------------------------------- Redis failures

/// Fails if ssegate stops, or the client that stayed connected does not
/// get, exactly once, the entries an application writes as soon as the
/// restarted Redis answers, before ssegate has noticed it is back (the
/// stream must resume after the last entry it sent, not after the newest
/// entry it finds then).
#[tokio::test]
async fn redis_restarted_mid_stream_the_client_gets_later_entries() {
    let mut redis = RedisServer::start().await;
    let up = upstream().await;
    let mut proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "message", "1"));

    redis.restart().await; // empty, same port
    let mut conn = redis.connection().await;
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    let three = xadd(&mut conn, ORDERS, &[("data", "3")]).await;
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2"), event(&three, "message", "3")],
    )
    .await;
    assert!(proxy.is_running());
}

/// Fails if, with Redis gone, other routes stop answering, a new Redis
/// stream is not refused with 502 or 503, or an open stream does not get
/// the entries written once Redis is back.
#[tokio::test]
async fn redis_down_other_routes_answer_and_open_streams_resume() {
    let mut redis = RedisServer::start().await;
    let up = upstream().await;
    let mut proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "message", "1"));

    redis.kill().await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut other = Client::connect(proxy.addr, version).await;
        let response = other.send(get("/name", version)).await;
        assert_eq!(response.status(), 200, "{version:?}");
        assert_eq!(read_body(response.into_body()).await, "from the upstream");
        let response = other.send(get("/events/other", version)).await;
        let status = response.status().as_u16();
        assert!(
            status == 502 || status == 503,
            "{version:?}: a new stream without Redis: {status}"
        );
    }
    assert!(proxy.is_running());

    redis.restart().await;
    let mut conn = redis.connection().await;
    let two = xadd(&mut conn, ORDERS, &[("data", "2")]).await;
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2")],
    )
    .await;
    let mut fresh = EventClient::open(url(&proxy, "/events/other"), None).await;
    let other = xadd(&mut conn, "ssegate:events:other", &[("data", "o")]).await;
    assert_eq!(fresh.event().await, event(&other, "message", "o"));
}

/// Fails if a request to the upstream waits for Redis while Redis is
/// paused (`CLIENT PAUSE`), or if the stream does not deliver the entry
/// written once the pause ends.
#[tokio::test]
async fn redis_paused_other_routes_answer_and_the_stream_resumes() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(&redis, &upstream_url(&up), &[]).await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let mut conn = redis.connection().await;
    let one = xadd(&mut conn, ORDERS, &[("data", "1")]).await;
    assert_eq!(client.event().await, event(&one, "message", "1"));

    redis.pause(Duration::from_secs(5)).await;
    // Written as soon as the pause ends.
    let mut writer = patient_connection(&redis).await;
    let write = tokio::spawn(async move { xadd(&mut writer, ORDERS, &[("data", "2")]).await });
    let mut other = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = other.send(get("/name", Version::HTTP_2)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "from the upstream");
    assert!(
        !write.is_finished(),
        "the upstream's answer came only after the pause"
    );

    let two = write.await.expect("XADD after the pause");
    expect_exactly(
        &mut [&mut client],
        &mut conn,
        ORDERS,
        &[event(&two, "message", "2")],
    )
    .await;
}

// ---------------------------------------------------------------- limits

/// Fails if a silent Redis stream gets no heartbeat comment, or if
/// `--max-streams-per-ip` does not count Redis streams (429) while
/// ordinary requests stay uncounted.
#[tokio::test]
async fn heartbeats_and_the_stream_limit_apply_to_redis_streams() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let proxy = instance(
        &redis,
        &upstream_url(&up),
        &["--sse-heartbeat", "200ms", "--max-streams-per-ip", "1"],
    )
    .await;
    let mut client = Client::connect(proxy.addr, Version::HTTP_11).await;
    let response = client.get("/events/orders").await;
    assert_eq!(response.status(), 200);
    let mut reader = RawReader::new(response.into_body());
    reader
        .read_until("a heartbeat", |raw| raw.starts_with(b":"))
        .await;

    let mut second = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = second.send(get("/events/orders", Version::HTTP_2)).await;
    assert_eq!(response.status(), 429);
    let response = second.send(get("/name", Version::HTTP_2)).await;
    assert_eq!(response.status(), 200);

    let mut conn = redis.connection().await;
    let id = xadd(&mut conn, ORDERS, &[("data", "after heartbeats")]).await;
    reader
        .read_until_ends_with(&format!("id: {id}\ndata: after heartbeats\n\n"))
        .await;
    let text = reader.text();
    assert!(
        text.lines().all(|l| l.is_empty()
            || l.starts_with(':')
            || l.starts_with("id: ")
            || l.starts_with("data: ")),
        "{text:?}"
    );
}

// ---------------------------------------------------------------- configuration

/// Fails unless `--sse-redis` without `--cluster` stops start-up with one
/// line naming both flags, exit code 1.
#[test]
fn sse_redis_without_cluster_is_a_one_line_start_error() {
    let mut cmd = ssegate_command();
    cmd.args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(dev_cert_path())
        .arg("--key")
        .arg(dev_key_path())
        .args(["--upstream", "http://127.0.0.1:9", "--sse-redis", "/events"]);
    let mut running = Running::spawn(cmd);
    let status = running.wait_exit(LIMIT);
    let all = running.stderr.join("\n");
    assert_eq!(status.code(), Some(1), "exit code\n{all}");
    assert!(running.stdout.is_empty(), "{:?}", running.stdout);
    assert_eq!(running.stderr.len(), 1, "exactly one line:\n{all}");
    let line = &running.stderr[0];
    assert!(line.starts_with("ssegate: "), "{line}");
    assert!(
        line.contains("--sse-redis") && line.contains("--cluster"),
        "{line:?} should name --sse-redis and --cluster"
    );
}

/// Writes the dev certificate's section, then `sections`, as `name` in
/// `dir`.
fn write_config(dir: &TempDir, name: &str, sections: &str) -> std::path::PathBuf {
    dir.write(name, format!("{}{sections}", certificate_section()))
}

/// Fails unless `[cluster]` (with `key_prefix` and `lease`) and a route with
/// `sse_redis = true` serve that route's GETs from Redis and other routes
/// from the upstream; a top-level `sse_redis` list works likewise; a
/// route with `sse_redis` and no `[cluster]` fails `ssegate check`.
#[tokio::test]
async fn a_config_file_with_cluster_and_sse_redis_routes_works() {
    let redis = RedisServer::start().await;
    let up = upstream().await;
    let dir = TempDir::new("redis-source");

    let with_route = write_config(
        &dir,
        "routes.toml",
        &format!(
            "[cluster]\nredis = {:?}\nkey_prefix = \"app:\"\nlease = \"2s\"\n\n\
             [upstream.app]\ntargets = [{:?}]\n\n\
             [[route]]\npath = \"/feed/\"\nupstream = \"app\"\nsse_redis = true\n\n\
             [[route]]\npath = \"/stripped/\"\nupstream = \"app\"\nsse_redis = true\nstrip_prefix = true\n\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\n",
            redis.url(),
            upstream_url(&up)
        ),
    );
    let (ok, output) = ssegate_check(&with_route);
    assert!(ok, "{output}");
    let path = with_route.display().to_string();
    let proxy = SsegateProcess::start(&["--config", &path], LIMIT).await;
    let mut client = EventClient::open(url(&proxy, "/feed/orders"), None).await;
    let mut conn = redis.connection().await;
    let id = xadd(
        &mut conn,
        "app:feed:orders",
        &[("event", "order"), ("data", "from the route")],
    )
    .await;
    assert_eq!(client.event().await, event(&id, "order", "from the route"));
    // The Redis Stream is named by the request's path, whatever the
    // route strips before the upstream.
    let mut stripped = EventClient::open(url(&proxy, "/stripped/orders"), None).await;
    let id = xadd(&mut conn, "app:stripped:orders", &[("data", "stripped")]).await;
    assert_eq!(stripped.event().await, event(&id, "message", "stripped"));
    let mut other = Client::connect(proxy.addr, Version::HTTP_2).await;
    let response = other.send(get("/feed", Version::HTTP_2)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "from the upstream");
    // Only GETs are read from Redis.
    let post = request(Version::HTTP_2, "POST", "localhost", "/feed/orders")
        .body(full_body("an order"))
        .expect("valid request");
    let response = other.send(post).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response.into_body()).await, "from the upstream");
    drop(proxy);

    let top_level = dir.write(
        "top-level.toml",
        format!(
            "sse_redis = [\"/events\"]\n\n[cluster]\nredis = {:?}\n",
            redis.url()
        ),
    );
    let cert = dev_cert_path().display().to_string();
    let key = dev_key_path().display().to_string();
    let upstream = upstream_url(&up);
    let top = top_level.display().to_string();
    let proxy = SsegateProcess::start(
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "--upstream",
            &upstream,
            "--config",
            &top,
        ],
        LIMIT,
    )
    .await;
    let mut client = EventClient::open(url(&proxy, "/events/orders"), None).await;
    let id = xadd(&mut conn, ORDERS, &[("data", "from the list")]).await;
    assert_eq!(client.event().await, event(&id, "message", "from the list"));

    let without_cluster = write_config(
        &dir,
        "no-cluster.toml",
        &format!(
            "[upstream.app]\ntargets = [{upstream:?}]\n\n\
             [[route]]\npath = \"/feed/\"\nsse_redis = true\n"
        ),
    );
    let (ok, output) = ssegate_check(&without_cluster);
    assert!(
        !ok,
        "sse_redis without [cluster] passes the check:\n{output}"
    );
    assert!(output.contains("cluster"), "{output}");
}

/// Fails unless the configuration of the README's "Scale out" section
/// passes `ssegate check` (with the dev certificate for its paths).
#[test]
fn the_readme_scale_out_configuration_checks_ok() {
    let dir = TempDir::new("readme-scale-out");
    let file = dir.write("scale-out.toml", readme_toml("Scale out"));
    let (ok, output) = ssegate_check(&file);
    assert!(ok, "{output}");
}
