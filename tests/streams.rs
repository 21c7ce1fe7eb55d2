//! Stream management: heartbeats between events, and shared streams (one
//! upstream request fanned out to every subscriber, `Last-Event-ID` replay,
//! slow subscribers dropped, upstream restarts resumed, linger after the last
//! subscriber has left).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Version;
use rustls::pki_types::ServerName;
use ssegate::config::Config;
use ssegate::sse::hub::StatsSnapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Upper bound for anything the test waits on; far above what it needs.
const LIMIT: Duration = Duration::from_secs(10);
/// Shared-stream prefix used by every shared-stream test.
const SHARED: &str = "/live";

// ---------------------------------------------------------------- upstream

/// This file's own addition to the shared `UpstreamStream`.
impl UpstreamStream {
    /// Writes the event `tick(id)` stands for, the way Express apps do.
    async fn tick(&self, id: u64) {
        assert!(
            self.write_event(id, "tick", &[&format!("event {id}")])
                .await,
            "the proxy dropped the upstream body before event {id}"
        );
    }
}

/// An upstream whose every request opens an event stream the test feeds.
async fn event_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await
}

fn shared_config(upstream: SocketAddr) -> Config {
    let mut config = proxy_config(upstream);
    config.streams.shared_prefixes = vec![SHARED.into()];
    config
}

fn stats(proxy: &ProxyHandle, path_and_query: &str) -> StatsSnapshot {
    proxy
        .hub
        .stats(path_and_query)
        .unwrap_or_else(|| panic!("no shared stream for {path_and_query}"))
}

/// Polls `condition` every 10 ms, for counters nothing can be awaited on.
async fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- clients

/// Opens an event stream through `client` and checks the response head.
async fn subscribe(client: &mut Client, path: &str, headers: &[(&str, &str)]) -> EventReader {
    let response = client.get_with(path, headers).await;
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("text/event-stream"),
        "{path}"
    );
    EventReader::new(response.into_body())
}

/// The text `UpstreamStream::tick` produces, as `EventReader` reports it.
fn tick(id: u64) -> String {
    event_text(id, "tick", &format!("event {id}"))
}

/// The next `count` events' texts; fails if they do not arrive in time.
async fn texts(reader: &mut EventReader, count: usize) -> Vec<String> {
    let events = reader.events(count, LIMIT).await;
    let texts: Vec<String> = events.into_iter().map(|e| e.text).collect();
    assert_eq!(texts.len(), count, "only {texts:?} arrived");
    texts
}

/// Events up to and including `last`.
async fn texts_until(reader: &mut EventReader, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some(last) {
        match reader.next_event(LIMIT).await {
            Some(event) => texts.push(event.text),
            None => panic!("stream ended or stalled before {last:?}; got {texts:?}"),
        }
    }
    texts
}

// ---------------------------------------------------------------- heartbeats

const HEARTBEAT: &str = ":\n\n";

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What EventSource dispatches for an event stream (HTML standard, "Event
/// stream interpretation"): comments ignored, data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dispatched {
    event: String,
    data: String,
    last_event_id: String,
}

fn dispatch(raw: &[u8]) -> Vec<Dispatched> {
    let text = String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // the unfinished last line, if any
    let (mut event, mut data, mut last_event_id) = (String::new(), String::new(), String::new());
    let mut dispatched = Vec::new();
    for line in lines {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                dispatched.push(Dispatched {
                    event: if event.is_empty() {
                        "message".to_owned()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: last_event_id.clone(),
                });
            }
            event.clear();
            data.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_event_id = value.to_owned(),
            _ => {}
        }
    }
    dispatched
}

const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// How long the upstream pauses inside an event: several heartbeat periods.
const MID_EVENT_PAUSE: Duration = Duration::from_millis(700);

async fn heartbeats_only_between_events(version: Version) {
    let mut upstream = event_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.streams.heartbeat = Some(HEARTBEAT_EVERY);
    let proxy = spawn_proxy_with(config).await;
    let mut client = Client::connect(proxy.addr, version).await;
    let response = client.get("/events").await;
    assert_eq!(response.status(), 200);
    let stream = upstream.next_stream_for("/events").await;
    let mut reader = RawReader::new(response.into_body());
    let mut upstream_wrote = String::new();

    // An event, then silence on a boundary: heartbeats.
    let first = "id: 1\nevent: tick\ndata: one\n\n";
    for part in ["id: 1\n", "event: tick\n", "data: one\n", "\n"] {
        stream.send(part).await;
        upstream_wrote.push_str(part);
    }
    reader
        .read_until("event 1", |raw| find(raw, first.as_bytes()).is_some())
        .await;
    let first_at = Instant::now();
    let after_first = |raw: &[u8]| {
        let end = find(raw, first.as_bytes()).unwrap() + first.len();
        raw[end..].to_vec()
    };
    reader
        .read_until("two heartbeats after event 1", |raw| {
            count(&after_first(raw), HEARTBEAT.as_bytes()) >= 2
        })
        .await;
    assert!(
        first_at.elapsed() >= HEARTBEAT_EVERY,
        "two heartbeats {:?} after an event, with --sse-heartbeat {HEARTBEAT_EVERY:?}",
        first_at.elapsed()
    );
    let tail = after_first(&reader.raw);
    assert_eq!(
        tail,
        HEARTBEAT.repeat(tail.len() / HEARTBEAT.len()).as_bytes(),
        "between events only heartbeats: {:?}",
        reader.text()
    );

    // The upstream pauses inside an event: first mid-line, then after a
    // complete field line. No heartbeat until the event is complete.
    for part in ["id: 2\n", "data: ha"] {
        stream.send(part).await;
        upstream_wrote.push_str(part);
    }
    reader
        .read_until("half of event 2", |raw| raw.ends_with(b"data: ha"))
        .await;
    tokio::time::sleep(MID_EVENT_PAUSE).await;
    stream.send("lf\n").await;
    upstream_wrote.push_str("lf\n");
    reader
        .read_until("the rest of the data line", |raw| {
            raw.ends_with(b"data: half\n")
        })
        .await;
    tokio::time::sleep(MID_EVENT_PAUSE).await;
    stream.send("\n").await;
    upstream_wrote.push('\n');
    reader
        .read_until("the end of event 2", |raw| raw.ends_with(b"data: half\n\n"))
        .await;
    let second = find(&reader.raw, b"id: 2\n").expect("event 2");
    assert_eq!(
        String::from_utf8_lossy(&reader.raw[second..]),
        "id: 2\ndata: half\n\n",
        "{version:?}: a heartbeat was written inside an event"
    );

    // On a boundary again: heartbeats resume.
    let before = reader.raw.len();
    reader
        .read_until("a heartbeat after event 2", |raw| {
            raw.len() > before && raw[before..].starts_with(HEARTBEAT.as_bytes())
        })
        .await;

    let third = "id: 3\nevent: tick\ndata: three\n\n";
    stream.send(third).await;
    upstream_wrote.push_str(third);
    drop(stream);
    reader.read_to_end().await;

    // Byte level: the upstream's events, whole, with heartbeats between them.
    let blocks: Vec<&str> = std::str::from_utf8(&reader.raw)
        .expect("UTF-8")
        .split_terminator("\n\n")
        .collect();
    let heartbeats = blocks.iter().filter(|b| **b == ":").count();
    let events: Vec<&str> = blocks.iter().copied().filter(|b| *b != ":").collect();
    assert_eq!(
        events,
        [
            "id: 1\nevent: tick\ndata: one",
            "id: 2\ndata: half",
            "id: 3\nevent: tick\ndata: three"
        ],
        "{version:?}: {:?}",
        reader.text()
    );
    assert!(
        heartbeats >= 3,
        "{version:?}: {heartbeats} heartbeats: {:?}",
        reader.text()
    );
    // What an EventSource sees: exactly the upstream's events.
    let seen = dispatch(&reader.raw);
    assert_eq!(seen, dispatch(upstream_wrote.as_bytes()));
    assert_eq!(
        seen,
        [
            Dispatched {
                event: "tick".into(),
                data: "one".into(),
                last_event_id: "1".into()
            },
            Dispatched {
                event: "message".into(),
                data: "half".into(),
                last_event_id: "2".into()
            },
            Dispatched {
                event: "tick".into(),
                data: "three".into(),
                last_event_id: "3".into()
            },
        ]
    );
}

#[tokio::test]
async fn heartbeats_are_written_only_between_events_over_http1() {
    heartbeats_only_between_events(Version::HTTP_11).await;
}

#[tokio::test]
async fn heartbeats_are_written_only_between_events_over_http2() {
    heartbeats_only_between_events(Version::HTTP_2).await;
}

// ---------------------------------------------------------------- one upstream request

#[tokio::test]
async fn fifty_subscribers_share_one_upstream_request_and_get_every_event_in_order() {
    const PATH: &str = "/live/ticker?room=1";
    const CLIENTS: usize = 50;
    const EVENTS: u64 = 20;
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy_with(shared_config(upstream.addr)).await;
    // Half the subscribers have their own HTTP/1.1 connection, half are
    // streams on one HTTP/2 connection.
    let h2 = h2_client(proxy.addr).await;
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    let mut clients = JoinSet::new();
    for n in 0..CLIENTS {
        let h2 = h2.clone();
        let addr = proxy.addr;
        let subscribed_tx = subscribed_tx.clone();
        clients.spawn(async move {
            let mut client = if n % 2 == 0 {
                Client::h1(addr).await
            } else {
                Client::H2(h2)
            };
            let mut reader = subscribe(&mut client, PATH, &[]).await;
            subscribed_tx.send(()).expect("test running");
            let texts = texts(&mut reader, 1 + EVENTS as usize).await;
            (n, texts, client, reader)
        });
    }

    let stream = upstream.next_stream_for(PATH).await;
    // Written while subscribers are still joining: the early ones get it
    // live, the later ones as the first thing of their stream.
    stream.send("retry: 1000\n\n").await;
    for _ in 0..CLIENTS {
        tokio::time::timeout(LIMIT, subscribed.recv())
            .await
            .expect("every client subscribes")
            .expect("test running");
    }
    assert_eq!(stats(&proxy, PATH).subscribers, CLIENTS);
    for id in 1..=EVENTS {
        stream.tick(id).await;
    }

    let expected: Vec<String> = std::iter::once("retry: 1000".to_owned())
        .chain((1..=EVENTS).map(tick))
        .collect();
    let mut done = Vec::new();
    while let Some(joined) = clients.join_next().await {
        let (n, texts, client, reader) = joined.expect("client task succeeds");
        assert_eq!(texts, expected, "client {n}");
        done.push((client, reader));
    }
    assert_eq!(done.len(), CLIENTS);
    assert_eq!(upstream.received(), 1, "upstream requests");
    assert!(upstream.no_more_streams());
    let stats = stats(&proxy, PATH);
    assert_eq!(stats.upstream_requests, 1);
    assert_eq!(stats.subscribers, CLIENTS);
    assert_eq!(stats.events_in, EVENTS + 1);
    assert!(stats.events_out >= EVENTS * CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.subscribers_dropped, 0);
}

// ---------------------------------------------------------------- replay

#[tokio::test]
async fn last_event_id_resumes_from_the_replay_buffer_and_older_ids_start_live() {
    const PATH: &str = "/live/replay";
    let mut upstream = event_upstream().await;
    let mut config = shared_config(upstream.addr);
    config.streams.replay = 5;
    let proxy = spawn_proxy_with(config).await;

    // The first subscriber keeps the stream alive and sees events 1..=10.
    let mut first = Client::h1(proxy.addr).await;
    let mut first_reader = subscribe(&mut first, PATH, &[]).await;
    let stream = upstream.next_stream_for(PATH).await;
    stream.send("retry: 1500\n\n").await;
    for id in 1..=10 {
        stream.tick(id).await;
    }
    let expected: Vec<String> = std::iter::once("retry: 1500".to_owned())
        .chain((1..=10).map(tick))
        .collect();
    assert_eq!(texts(&mut first_reader, 11).await, expected);

    // The buffer now holds events 6..=10.
    let h2 = h2_client(proxy.addr).await;
    let mut resumed = subscribe(&mut Client::H2(h2.clone()), PATH, &[("last-event-id", "7")]).await;
    let mut newest = subscribe(
        &mut Client::H2(h2.clone()),
        PATH,
        &[("last-event-id", "10")],
    )
    .await;
    let mut too_old_client = Client::h1(proxy.addr).await;
    let mut too_old = subscribe(&mut too_old_client, PATH, &[("last-event-id", "2")]).await;
    let mut unknown = subscribe(
        &mut Client::H2(h2.clone()),
        PATH,
        &[("last-event-id", "nope")],
    )
    .await;
    let mut fresh_client = Client::h1(proxy.addr).await;
    let mut fresh = subscribe(&mut fresh_client, PATH, &[]).await;
    assert_eq!(stats(&proxy, PATH).subscribers, 6);

    stream.tick(11).await;
    stream.tick(12).await;
    let live = |replayed: &[u64]| -> Vec<String> {
        std::iter::once("retry: 1500".to_owned())
            .chain(replayed.iter().copied().chain([11, 12]).map(tick))
            .collect()
    };
    assert_eq!(
        texts(&mut resumed, 6).await,
        live(&[8, 9, 10]),
        "Last-Event-ID: 7"
    );
    assert_eq!(texts(&mut newest, 3).await, live(&[]), "Last-Event-ID: 10");
    assert_eq!(
        texts(&mut too_old, 3).await,
        live(&[]),
        "Last-Event-ID: 2 (older than the buffer)"
    );
    assert_eq!(
        texts(&mut unknown, 3).await,
        live(&[]),
        "unknown Last-Event-ID"
    );
    assert_eq!(texts(&mut fresh, 3).await, live(&[]), "no Last-Event-ID");
    assert_eq!(texts(&mut first_reader, 2).await, [tick(11), tick(12)]);

    // All of that came from the one upstream request, which carried no
    // Last-Event-ID: the clients' IDs are the hub's business.
    assert_eq!(upstream.received(), 1);
    assert!(upstream.no_more_streams());
    assert_eq!(stats(&proxy, PATH).upstream_requests, 1);
    assert_eq!(stream.header("last-event-id"), None);
}

// ---------------------------------------------------------------- slow subscribers

/// A client that sends its request, reads the response head, then stops
/// reading, with a small socket receive buffer so the proxy soon has to queue.
struct StalledClient {
    tls: TlsStream<TcpStream>,
    received: Vec<u8>,
}

impl StalledClient {
    async fn subscribe(addr: SocketAddr, path: &str) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect to proxy");
        let mut tls = TlsConnector::from(client_tls_config(&[b"http/1.1"]))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        tls.write_all(request.as_bytes()).await.expect("request");
        let mut received = Vec::new();
        let mut byte = [0u8; 1];
        while !received.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(LIMIT, tls.read(&mut byte))
                .await
                .expect("response head in time")
                .expect("read");
            assert_eq!(n, 1, "connection closed after {received:?}");
            received.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&received).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        StalledClient {
            tls,
            received: Vec::new(),
        }
    }

    /// Reads again, to the end of the chunked body; returns the body.
    async fn resume(mut self) -> Vec<u8> {
        let deadline = Instant::now() + LIMIT;
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            // Decode what is there: size line, data, CRLF.
            if let Some(eol) = find(&self.received[pos..], b"\r\n") {
                let line = std::str::from_utf8(&self.received[pos..pos + eol]).expect("size");
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                let start = pos + eol + 2;
                if self.received.len() >= start + size + 2 {
                    if size == 0 {
                        return body;
                    }
                    body.extend_from_slice(&self.received[start..start + size]);
                    assert_eq!(&self.received[start + size..start + size + 2], b"\r\n");
                    pos = start + size + 2;
                    continue;
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.tls.read(&mut buf))
                .await
                .expect("the dropped subscriber's stream ends in time")
                .expect("read");
            assert!(n > 0, "connection closed before the end of the body");
            self.received.extend_from_slice(&buf[..n]);
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_without_delaying_the_others() {
    const PATH: &str = "/live/firehose";
    const QUEUE: usize = 16;
    /// Events the writer lets the fast subscribers fall behind: well under
    /// the queue, so only a subscriber that stopped reading can fill it.
    const WINDOW: u64 = 4;
    /// Events beyond what the socket buffers can hold.
    const AFTER_DROP: u64 = 500;
    let data = "x".repeat(1000);
    let mut upstream = event_upstream().await;
    let mut config = shared_config(upstream.addr);
    config.streams.subscriber_queue = QUEUE;
    let proxy = spawn_proxy_with(config).await;

    let stalled = StalledClient::subscribe(proxy.addr, PATH).await;
    let stream = upstream.next_stream_for(PATH).await;

    // Fast subscribers: two HTTP/1.1 connections, two streams on one HTTP/2
    // connection. Each reports the last ID it received.
    let h2 = h2_client(proxy.addr).await;
    let mut progress = Vec::new();
    let mut readers = JoinSet::new();
    for n in 0..4 {
        let mut client = if n % 2 == 0 {
            Client::h1(proxy.addr).await
        } else {
            Client::H2(h2.clone())
        };
        let mut reader = subscribe(&mut client, PATH, &[]).await;
        let (progress_tx, progress_rx) = watch::channel(0u64);
        progress.push(progress_rx);
        let data = data.clone();
        readers.spawn(async move {
            let mut next = 1;
            loop {
                let event = reader.next_event(LIMIT).await.unwrap_or_else(|| {
                    panic!(
                        "fast subscriber {n}: stream ended or stalled after event {}",
                        next - 1
                    )
                });
                if event.text == "event: end\ndata: end" {
                    return (n, next - 1, client, reader);
                }
                assert_eq!(
                    event.text,
                    format!("id: {next}\ndata: {data}"),
                    "fast subscriber {n}"
                );
                progress_tx.send_replace(next);
                next += 1;
            }
        });
    }
    assert_eq!(stats(&proxy, PATH).subscribers, 5);

    // Enough events to fill every socket buffer between the proxy and the
    // stalled client (the send buffer grows up to tcp_wmem's maximum) and then
    // the shared ring: the stalled subscriber must fall behind.
    let total = max_send_buffer() / data.len() as u64 + QUEUE as u64 + AFTER_DROP;
    for id in 1..=total {
        for (n, progress) in progress.iter_mut().enumerate() {
            tokio::time::timeout(LIMIT, progress.wait_for(|&got| got + WINDOW >= id))
                .await
                .unwrap_or_else(|_| panic!("fast subscriber {n} was held up before event {id}"))
                .unwrap_or_else(|_| panic!("fast subscriber {n} failed before event {id}"));
        }
        stream.send(&format!("id: {id}\ndata: {data}\n\n")).await;
    }
    stream.send("event: end\ndata: end\n\n").await;

    let mut fast = Vec::new();
    while let Some(joined) = readers.join_next().await {
        let (n, last, client, reader) = joined.expect("fast subscriber succeeds");
        assert_eq!(last, total, "fast subscriber {n} missed events");
        fast.push((client, reader));
    }

    // The stalled subscriber, reading again, gets what was on its way to it,
    // in order, then its stream ends: it fell too far behind and was dropped
    // (its EventSource reconnects and resumes from the replay buffer).
    let body = stalled.resume().await;
    let text = String::from_utf8(body).expect("UTF-8");
    let blocks: Vec<&str> = text.split_terminator("\n\n").collect();
    let got = blocks.len() as u64;
    for (block, id) in blocks.iter().zip(1..) {
        assert_eq!(
            *block,
            format!("id: {id}\ndata: {data}"),
            "stalled subscriber, event {id}"
        );
    }
    assert!(text.ends_with("\n\n"), "ends between events");
    assert!(
        got < total,
        "the stalled subscriber got all {got} events; it should have been dropped"
    );
    let stats = stats(&proxy, PATH);
    assert_eq!(stats.subscribers_dropped, 1, "{stats:?}");
    assert_eq!(stats.subscribers, 4, "{stats:?}");
    assert_eq!(stats.upstream_requests, 1, "{stats:?}");
    eprintln!(
        "stalled subscriber dropped: it had {got} of {total} events (~{} KiB) in flight",
        got * (data.len() as u64 + 16) / 1024
    );
}

/// The largest TCP send buffer the kernel grows a socket to (tcp_wmem's maximum).
fn max_send_buffer() -> u64 {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("read tcp_wmem");
    wmem.split_whitespace()
        .nth(2)
        .and_then(|max| max.parse().ok())
        .expect("tcp_wmem has three numbers")
}

// ---------------------------------------------------------------- upstream restart

const CREDENTIALS: [(&str, &str); 2] = [
    ("authorization", "Bearer secret-token"),
    ("cookie", "session=secret-cookie"),
];

fn assert_no_credentials(stream: &UpstreamStream, what: &str) {
    assert_eq!(stream.header("authorization"), None, "{what}");
    assert_eq!(stream.header("cookie"), None, "{what}");
}

#[tokio::test]
async fn an_upstream_restart_is_resumed_with_last_event_id_and_no_gap() {
    const PATH: &str = "/live/restart";
    const RETRY: Duration = Duration::from_millis(100);
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy_with(shared_config(upstream.addr)).await;
    let mut h1 = Client::h1(proxy.addr).await;
    let mut a = subscribe(&mut h1, PATH, &CREDENTIALS).await;
    let mut h2 = Client::connect(proxy.addr, Version::HTTP_2).await;
    let mut b = subscribe(&mut h2, PATH, &CREDENTIALS).await;

    // The first upstream response writes events 1..=5 and ends.
    let first = upstream.next_stream_for(PATH).await;
    assert_eq!(first.header("last-event-id"), None);
    assert_no_credentials(&first, "first upstream request");
    first
        .send(&format!("retry: {}\n\n", RETRY.as_millis()))
        .await;
    for id in 1..=5 {
        first.tick(id).await;
    }
    first.end().await;
    let ended = Instant::now();

    // The hub reconnects after `retry:`, resuming from the last event ID; the
    // upstream resumes from the ID it is given.
    let second = upstream.next_stream_for(PATH).await;
    let waited = ended.elapsed();
    assert!(
        waited >= RETRY,
        "reconnected after {waited:?}, retry was {RETRY:?}"
    );
    assert_eq!(second.header("last-event-id"), Some("5"));
    assert_no_credentials(&second, "reconnect request");
    let resume_from: u64 = second.header("last-event-id").unwrap().parse().unwrap();
    second
        .send(&format!("retry: {}\n\n", RETRY.as_millis()))
        .await;
    for id in resume_from + 1..=10 {
        second.tick(id).await;
    }

    // The subscribers stayed connected and saw every event exactly once.
    for (name, reader) in [("h1", &mut a), ("h2", &mut b)] {
        let texts = texts_until(reader, &tick(10)).await;
        assert_eq!(texts[0], "retry: 100", "{name}");
        let events: Vec<String> = texts
            .into_iter()
            .filter(|t| !t.starts_with("retry:"))
            .collect();
        assert_eq!(events, (1..=10).map(tick).collect::<Vec<_>>(), "{name}");
    }
    assert_eq!(upstream.received(), 2);
    let stats = stats(&proxy, PATH);
    assert_eq!(stats.upstream_requests, 2, "{stats:?}");
    assert_eq!(stats.subscribers, 2, "{stats:?}");
}

#[tokio::test]
async fn a_silent_upstream_is_replaced_while_its_subscribers_stay_connected() {
    const PATH: &str = "/live/silent";
    const IDLE: Duration = Duration::from_millis(300);
    let mut upstream = event_upstream().await;
    let mut config = shared_config(upstream.addr);
    config.timeouts.sse_idle = IDLE;
    let proxy = spawn_proxy_with(config).await;
    let mut h1 = Client::h1(proxy.addr).await;
    let mut a = subscribe(&mut h1, PATH, &[]).await;
    let mut h2 = Client::connect(proxy.addr, Version::HTTP_2).await;
    let mut b = subscribe(&mut h2, PATH, &[]).await;

    // The first upstream response sends one event, then goes silent without
    // closing: the hub gives up on it after the SSE idle timeout ...
    let first = upstream.next_stream_for(PATH).await;
    first.send("retry: 50\n\n").await;
    first.tick(1).await;
    // ... and asks again, resuming after the last event.
    let second = upstream.next_stream_for(PATH).await;
    assert_eq!(second.header("last-event-id"), Some("1"));
    second.tick(2).await;

    // The subscribers were not ended by the silence (the hub watches the
    // upstream for them) and got both events.
    for (name, reader) in [("h1", &mut a), ("h2", &mut b)] {
        let texts = texts_until(reader, &tick(2)).await;
        let events: Vec<String> = texts
            .into_iter()
            .filter(|t| !t.starts_with("retry:"))
            .collect();
        assert_eq!(events, vec![tick(1), tick(2)], "{name}");
    }
    let stats = stats(&proxy, PATH);
    assert_eq!(stats.upstream_requests, 2, "{stats:?}");
    assert_eq!(stats.subscribers, 2, "{stats:?}");
    drop(first);
}

// ---------------------------------------------------------------- credentials

#[tokio::test]
async fn authorization_and_cookie_never_reach_the_upstream_of_a_shared_stream() {
    let mut upstream = event_upstream().await;
    let proxy = spawn_proxy_with(shared_config(upstream.addr)).await;

    // Control: an ordinary stream forwards them, so the upstream would see them.
    let mut private = Client::h1(proxy.addr).await;
    let _private = subscribe(&mut private, "/private/feed", &CREDENTIALS).await;
    let forwarded = upstream.next_stream_for("/private/feed").await;
    assert_eq!(
        forwarded.header("authorization"),
        Some("Bearer secret-token")
    );
    assert_eq!(forwarded.header("cookie"), Some("session=secret-cookie"));

    // The subscriber that opens the shared stream, and one that joins it.
    let mut opener = Client::connect(proxy.addr, Version::HTTP_2).await;
    let mut a = subscribe(&mut opener, "/live/feed", &CREDENTIALS).await;
    let shared = upstream.next_stream_for("/live/feed").await;
    assert_no_credentials(&shared, "shared stream request");
    let mut joiner = Client::h1(proxy.addr).await;
    let other = [
        ("authorization", "Basic b3RoZXI6dXNlcg=="),
        ("cookie", "session=other"),
    ];
    let mut b = subscribe(&mut joiner, "/live/feed", &other).await;
    shared.tick(1).await;
    assert_eq!(texts(&mut a, 1).await, [tick(1)]);
    assert_eq!(texts(&mut b, 1).await, [tick(1)]);
    assert_eq!(upstream.received(), 2, "one ordinary, one shared");
}

// ---------------------------------------------------------------- linger

const LINGER: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_upstream_request_closes_a_linger_after_the_last_subscriber_leaves() {
    const PATH: &str = "/live/linger";
    let mut upstream = event_upstream().await;
    let mut config = shared_config(upstream.addr);
    config.streams.linger = LINGER;
    let proxy = spawn_proxy_with(config).await;
    let mut h1 = Client::h1(proxy.addr).await;
    let mut a = subscribe(&mut h1, PATH, &[]).await;
    let h2 = h2_client(proxy.addr).await;
    let mut b = subscribe(&mut Client::H2(h2.clone()), PATH, &[]).await;
    let stream = upstream.next_stream_for(PATH).await;
    stream.tick(1).await;
    assert_eq!(texts(&mut a, 1).await, [tick(1)]);
    assert_eq!(texts(&mut b, 1).await, [tick(1)]);

    // One leaves (its TCP connection closes): the stream goes on.
    drop(a);
    drop(h1);
    poll_until("the proxy to notice the h1 client left", || {
        stats(&proxy, PATH).subscribers == 1
    })
    .await;
    stream.tick(2).await;
    assert_eq!(texts(&mut b, 1).await, [tick(2)]);
    assert!(stream.is_open());

    // The last one leaves (HTTP/2 stream reset): the upstream request is
    // closed once the linger has passed, not before.
    drop(b);
    let left = Instant::now();
    tokio::time::timeout(LINGER + LIMIT, stream.closed())
        .await
        .expect("the upstream request is closed after the linger");
    let after = left.elapsed();
    assert!(
        after >= LINGER,
        "closed {after:?} after the last subscriber left"
    );
    poll_until("the shared stream to be removed", || {
        proxy.hub.stream_count() == 0
    })
    .await;
    assert!(proxy.hub.stats(PATH).is_none());

    // A later subscriber opens a new upstream request.
    let mut c = subscribe(&mut Client::H2(h2.clone()), PATH, &[]).await;
    let again = upstream.next_stream_for(PATH).await;
    again.tick(1).await;
    assert_eq!(texts(&mut c, 1).await, [tick(1)]);
    assert_eq!(upstream.received(), 2);
    assert_eq!(
        stats(&proxy, PATH).upstream_requests,
        1,
        "a new stream's counters"
    );
}

#[tokio::test]
async fn a_subscriber_returning_within_the_linger_reuses_the_upstream_request() {
    const PATH: &str = "/live/return";
    let mut upstream = event_upstream().await;
    let mut config = shared_config(upstream.addr);
    config.streams.linger = LINGER;
    let proxy = spawn_proxy_with(config).await;
    let h2 = h2_client(proxy.addr).await;
    let mut a = subscribe(&mut Client::H2(h2.clone()), PATH, &[]).await;
    let stream = upstream.next_stream_for(PATH).await;
    stream.tick(1).await;
    assert_eq!(texts(&mut a, 1).await, [tick(1)]);

    // The only subscriber leaves; the proxy notices; it comes back at once
    // (connection already open), as EventSource does, with its last ID.
    drop(a);
    poll_until("the proxy to notice the subscriber left", || {
        stats(&proxy, PATH).subscribers == 0
    })
    .await;
    let left = Instant::now();
    let mut back = subscribe(&mut Client::H2(h2.clone()), PATH, &[("last-event-id", "1")]).await;
    let returned = left.elapsed();
    assert!(
        returned < LINGER,
        "test too slow: came back after {returned:?}"
    );

    // The linger passes and the upstream request is still the same, open one.
    let still_open = tokio::time::timeout(LINGER * 2, stream.closed()).await;
    assert!(still_open.is_err(), "the upstream request was closed");
    stream.tick(2).await;
    assert_eq!(texts(&mut back, 1).await, [tick(2)]);
    assert_eq!(upstream.received(), 1);
    assert!(upstream.no_more_streams());
    let stats = stats(&proxy, PATH);
    assert_eq!(stats.upstream_requests, 1, "{stats:?}");
    assert_eq!(stats.subscribers, 1, "{stats:?}");
    assert_eq!(proxy.hub.stream_count(), 1);
}
