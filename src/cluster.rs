//! Cluster mode (`--cluster`): several instances share their shared streams
//! through Redis, and event streams can be served from Redis itself
//! (`--sse-redis`).
//!
//! This module is the Redis side only: keys, the lease and append scripts,
//! connections with timeouts, and turning log entries into events. What a
//! shared stream does with them is in `sse::hub::cluster`.
//!
//! Per shared stream there are three keys, with one hash tag (the scripts
//! touch two at once, which a Redis Cluster allows only on one node; the
//! crate's cluster client is not built in today):
//! `<prefix>shared:{<route>|<path>}:lease` (the reader's token,
//! `<instance>#<epoch>`, with a TTL), `...:epoch` (a counter: each new
//! holder's token is new) and `...:log` (a Redis Stream of events).
//! Appending checks the token in the same script, so a reader that lost
//! its lease cannot write after the next one started (fencing).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamId;
use redis::{AsyncConnectionConfig, Script, Value};
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::metrics::ClusterMetrics;
use crate::sse::parser::ParsedEvent;

/// How long a Redis command may take before Redis counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one `XREAD BLOCK` waits for new entries before asking again.
const TAIL_BLOCK: Duration = Duration::from_secs(2);
/// How often Redis is pinged to know whether it is up.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Entries read per `XREAD`.
const TAIL_BATCH: usize = 512;
/// Entries a shared stream's log keeps at least, whatever `--sse-replay`
/// says: instances that fall behind read them from there.
const MIN_LOG_LENGTH: usize = 1000;

/// `--cluster`, `--cluster-key-prefix`, `--cluster-lease`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub redis: String,
    pub key_prefix: String,
    pub lease: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis closed the connection")]
    Closed,
    #[error("unexpected redis reply: {0}")]
    Reply(String),
}

type Result<T> = std::result::Result<T, ClusterError>;

/// Takes or renews the lease. KEYS: lease, epoch. ARGV: instance, TTL in
/// ms, the token this instance holds (or ""). Returns the token when this
/// instance holds the lease, else the holder's remaining TTL in ms.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return holder
end
if holder then
  return redis.call('PTTL', KEYS[1])
end
local token = ARGV[1] .. '#' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
";

/// Appends an event if the caller still holds the lease. KEYS: lease,
/// log. ARGV: token, MAXLEN, then field/value pairs. Returns the entry ID,
/// or nil when the token is no longer the holder's.
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
";

/// Gives the lease up if it is still the caller's. KEYS: lease. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis keys of one shared stream.
#[derive(Debug, Clone)]
pub struct StreamKeys {
    pub lease: String,
    pub epoch: String,
    pub log: String,
}

/// The lease, as `acquire` found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Lease {
    /// This instance holds it, under this token.
    Held(String),
    /// Another instance holds it for this much longer.
    Other(Duration),
}

/// An event read from a log: what subscribers receive, and how it is known.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// The Redis entry ID (where the next read starts).
    pub entry: String,
    pub event: ParsedEvent,
    /// The upstream's last event ID after this event: where a new reader
    /// resumes the upstream.
    pub resume: Option<String>,
}

/// Entries read from a Redis Stream: the events among them, and the ID of
/// the last entry read, event or not (where the next read starts).
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<LogEvent>,
    pub last_entry: Option<String>,
}

impl Batch {
    /// Entries in stream order.
    fn of(entries: Vec<StreamId>) -> Batch {
        Batch {
            last_entry: entries.last().map(|e| e.id.clone()),
            events: entries.iter().filter_map(decode).collect(),
        }
    }
}

pub struct Cluster {
    settings: ClusterSettings,
    client: redis::Client,
    /// Commands (lease, append, history) of every stream, on one
    /// connection made on first use.
    commands: OnceCell<ConnectionManager>,
    /// Names this process in lease tokens.
    instance: String,
    up: watch::Sender<bool>,
    metrics: ClusterMetrics,
    acquire: Script,
    append: Script,
    release: Script,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .field("key_prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Parses a Redis URL as `--cluster` takes it.
pub fn parse_url(url: &str) -> std::result::Result<redis::Client, String> {
    redis::Client::open(url).map_err(|err| format!("{url:?} is not a Redis URL: {err}"))
}

impl Cluster {
    /// No connection is made here: Redis may be down when ssegate starts.
    pub fn new(
        settings: ClusterSettings,
        metrics: ClusterMetrics,
    ) -> std::result::Result<Self, String> {
        let client = parse_url(&settings.redis)?;
        let instance = format!("{}-{}-{:08x}", hostname(), std::process::id(), rand_u32());
        Ok(Cluster {
            settings,
            client,
            commands: OnceCell::new(),
            instance,
            // Unknown until the first ping: assume up, the first error says otherwise.
            up: watch::Sender::new(true),
            metrics,
            acquire: Script::new(ACQUIRE),
            append: Script::new(APPEND),
            release: Script::new(RELEASE),
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Whether Redis answered last time it was asked.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Pings Redis every second until `shutdown`, so `/readyz`, the metric
    /// and the streams waiting for Redis know when it is back.
    pub fn spawn_monitor(self: &std::sync::Arc<Self>, shutdown: CancellationToken) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(PING_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                match cluster.ping().await {
                    Ok(()) => cluster.mark_up(),
                    Err(err) => cluster.mark_down(&err),
                }
            }
        });
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.commands().await?;
        timed(redis::cmd("PING").query_async::<()>(&mut conn)).await
    }

    fn mark_up(&self) {
        if !self.up.send_replace(true) {
            tracing::info!(target: "ssegate::cluster", "cluster: redis is reachable again");
        }
        self.metrics.set_redis_up(true);
    }

    /// Records that Redis failed a command (logged on the change only).
    pub fn mark_down(&self, err: &ClusterError) {
        if self.up.send_replace(false) {
            tracing::warn!(target: "ssegate::cluster", error = %err, "cluster: redis unavailable");
        }
        self.metrics.set_redis_up(false);
    }

    /// Resolves once Redis answers again.
    pub async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        // The sender lives as long as `self`.
        let _ = up.wait_for(|up| *up).await;
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// The keys of the shared stream `path` of route `route`.
    pub fn stream_keys(&self, route: &str, path: &str) -> StreamKeys {
        let base = format!("{}shared:{{{route}|{path}}}", self.settings.key_prefix);
        StreamKeys {
            lease: format!("{base}:lease"),
            epoch: format!("{base}:epoch"),
            log: format!("{base}:log"),
        }
    }

    /// The Redis Stream (and Pub/Sub channel) a `--sse-redis` path is
    /// served from: `/events/orders` → `<prefix>events:orders`.
    pub fn source_key(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.settings.key_prefix,
            path.trim_start_matches('/').replace('/', ":")
        )
    }

    async fn commands(&self) -> Result<ConnectionManager> {
        let manager = self
            .commands
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(COMMAND_TIMEOUT);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(manager.clone())
    }

    /// A connection of its own for one stream's blocking reads (a blocked
    /// `XREAD` would hold up every command behind it on a shared one).
    pub async fn tail_connection(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(TAIL_BLOCK + COMMAND_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(conn)
    }

    /// A Pub/Sub connection subscribed to `channel`.
    pub async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub> {
        timed(async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub)
        })
        .await
    }

    /// Takes the lease of `keys` or renews `held`.
    pub async fn acquire(&self, keys: &StreamKeys, held: Option<&str>) -> Result<Lease> {
        let mut conn = self.commands().await?;
        let ttl = self.settings.lease.as_millis() as u64;
        let value: Value = timed(
            self.acquire
                .key(&keys.lease)
                .key(&keys.epoch)
                .arg(&self.instance)
                .arg(ttl)
                .arg(held.unwrap_or(""))
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(match value {
            Value::Int(ms) => Lease::Other(Duration::from_millis(ms.max(0) as u64)),
            other => Lease::Held(
                redis::from_redis_value::<String>(other)
                    .map_err(|err| ClusterError::Reply(err.to_string()))?,
            ),
        })
    }

    /// Gives the lease up (best effort: it expires anyway).
    pub async fn release(&self, keys: &StreamKeys, token: &str) {
        let Ok(mut conn) = self.commands().await else {
            return;
        };
        let released: Result<i64> = timed(
            self.release
                .key(&keys.lease)
                .arg(token)
                .invoke_async(&mut conn),
        )
        .await;
        if let Err(err) = released {
            tracing::debug!(target: "ssegate::cluster", error = %err, "cluster: lease not released; it expires");
        }
    }

    /// Appends `event` to the log under `token`. `Ok(false)`: the lease is
    /// no longer this token's, nothing was written.
    pub async fn append(
        &self,
        keys: &StreamKeys,
        token: &str,
        replay: usize,
        event: &ParsedEvent,
        resume: Option<&str>,
    ) -> Result<bool> {
        let mut conn = self.commands().await?;
        let mut invocation = self.append.key(&keys.lease);
        invocation
            .key(&keys.log)
            .arg(token)
            .arg(replay.max(MIN_LOG_LENGTH))
            .arg("raw")
            .arg(event.raw.as_ref());
        if let Some(id) = &event.id {
            invocation.arg("sid").arg(id);
        }
        if let Some(resume) = resume {
            invocation.arg("resume").arg(resume);
        }
        if let Some(retry) = event.retry {
            invocation.arg("retry").arg(retry);
        }
        let written: Option<String> = timed(invocation.invoke_async(&mut conn)).await?;
        if written.is_none() {
            self.metrics.append_refused();
        }
        Ok(written.is_some())
    }

    /// The newest `count` entries of `log`, oldest first.
    pub async fn history(&self, log: &str, count: usize) -> Result<Batch> {
        let mut conn = self.commands().await?;
        let reply: redis::streams::StreamRangeReply = timed(
            redis::cmd("XREVRANGE")
                .arg(log)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut conn),
        )
        .await?;
        let mut entries = reply.ids;
        entries.reverse();
        Ok(Batch::of(entries))
    }

    /// The entries of `key` after entry ID `after` up to `up_to` (both
    /// entry IDs), at most `count`, oldest first. An `after` that is not
    /// an entry ID (`<ms>-<seq>`) has nothing after it here.
    pub async fn range(
        &self,
        key: &str,
        after: &str,
        up_to: &str,
        count: usize,
    ) -> Result<Vec<LogEvent>> {
        if !is_entry_id(after) {
            return Ok(Vec::new());
        }
        let mut conn = self.commands().await?;
        let reply: redis::streams::StreamRangeReply = timed(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({after}"))
                .arg(up_to)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn),
        )
        .await?;
        Ok(Batch::of(reply.ids).events)
    }

    /// The entries of `log` after entry `after`, waiting up to a few
    /// seconds for one (an empty batch then).
    pub async fn read_after(
        &self,
        conn: &mut MultiplexedConnection,
        log: &str,
        after: &str,
    ) -> Result<Batch> {
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(TAIL_BATCH)
            .arg("BLOCK")
            .arg(TAIL_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(log)
            .arg(after)
            .query_async(conn)
            .await?;
        Ok(Batch::of(
            reply
                .into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|key| key.ids)
                .collect(),
        ))
    }
}

/// Whether `id` is a full Redis Stream entry ID, `<ms>-<seq>` (a bare
/// number is more likely an application's own ID).
fn is_entry_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let mut number = || {
        parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    number() && number() && parts.next().is_none()
}

/// Runs a Redis command with the command timeout.
async fn timed<T>(command: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout(COMMAND_TIMEOUT)),
    }
}

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name)? {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn text_field(entry: &StreamId, name: &str) -> Option<String> {
    field(entry, name).map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// An entry as subscribers receive it. A shared stream's log holds the
/// upstream's bytes (`raw`, its `sid`, `resume`, `retry`); an entry an
/// application wrote holds `data`, optional `event` and `id`. Either way
/// the event has an ID afterwards: its own, or the entry's.
pub fn decode(entry: &StreamId) -> Option<LogEvent> {
    if let Some(raw) = field(entry, "raw") {
        let sid = text_field(entry, "sid");
        let raw = match &sid {
            Some(_) => Bytes::copy_from_slice(raw),
            // SSE fields may come in any order: the ID goes first.
            None => {
                let mut out = BytesMut::with_capacity(raw.len() + entry.id.len() + 5);
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(entry.id.as_bytes());
                out.extend_from_slice(b"\n");
                out.extend_from_slice(raw);
                out.freeze()
            }
        };
        return Some(LogEvent {
            event: ParsedEvent {
                raw,
                id: Some(sid.unwrap_or_else(|| entry.id.clone())),
                retry: text_field(entry, "retry").and_then(|r| r.parse().ok()),
                has_data: true,
            },
            resume: text_field(entry, "resume"),
            entry: entry.id.clone(),
        });
    }
    let data = field(entry, "data")?;
    let id = text_field(entry, "id")
        .filter(|id| !id.is_empty() && !id.contains(['\n', '\r']))
        .unwrap_or_else(|| entry.id.clone());
    let mut out = BytesMut::with_capacity(data.len() + 64);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\n");
    if let Some(event) = field(entry, "event").filter(|e| !e.is_empty()) {
        // One line: a line break would start a field of its own.
        let event = event
            .split(|b| *b == b'\n' || *b == b'\r')
            .next()
            .unwrap_or_default();
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event);
        out.extend_from_slice(b"\n");
    }
    write_data(&mut out, data);
    Some(LogEvent {
        event: ParsedEvent {
            raw: out.freeze(),
            id: Some(id),
            retry: None,
            has_data: true,
        },
        resume: None,
        entry: entry.id.clone(),
    })
}

/// A Pub/Sub message as an event: its payload as data, no ID.
pub fn published(payload: &[u8]) -> ParsedEvent {
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    write_data(&mut out, payload);
    ParsedEvent {
        raw: out.freeze(),
        id: None,
        retry: None,
        has_data: true,
    }
}

/// `data:` lines for each line of `data`, then the blank line.
fn write_data(out: &mut BytesMut, data: &[u8]) {
    let text = data.strip_suffix(b"\n").unwrap_or(data);
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ssegate".to_owned())
}

/// A random number, so two processes with the same host and PID (in two
/// containers) still hold different tokens.
fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // Only the time then; the PID is in the token too.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.to_owned(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn an_upstream_event_keeps_its_bytes_and_id() {
        let e = decode(&entry(
            "1-0",
            &[("raw", "id: 7\ndata: x\n\n"), ("sid", "7"), ("resume", "7")],
        ))
        .unwrap();
        assert_eq!(e.event.raw, "id: 7\ndata: x\n\n");
        assert_eq!(e.event.id.as_deref(), Some("7"));
        assert_eq!(e.resume.as_deref(), Some("7"));
    }

    #[test]
    fn an_event_without_id_gets_the_entry_id() {
        let e = decode(&entry("5-1", &[("raw", "data: x\n\n")])).unwrap();
        assert_eq!(e.event.raw, "id: 5-1\ndata: x\n\n");
        assert_eq!(e.event.id.as_deref(), Some("5-1"));
    }

    #[test]
    fn an_application_entry_is_rendered_as_an_event() {
        let e = decode(&entry("9-0", &[("event", "order"), ("data", "a\nb")])).unwrap();
        assert_eq!(e.event.raw, "id: 9-0\nevent: order\ndata: a\ndata: b\n\n");
        let e = decode(&entry("9-1", &[("data", "x"), ("id", "42")])).unwrap();
        assert_eq!(e.event.raw, "id: 42\ndata: x\n\n");
        assert_eq!(e.event.id.as_deref(), Some("42"));
        // Neither raw nor data: not an event.
        assert!(decode(&entry("9-2", &[("other", "x")])).is_none());
    }

    #[test]
    fn only_full_entry_ids_are_read_as_positions() {
        assert!(is_entry_id("1733500000000-0"));
        assert!(!is_entry_id("42"));
        assert!(!is_entry_id("1-2-3"));
        assert!(!is_entry_id("a-1"));
        assert!(!is_entry_id("-1"));
    }

    #[test]
    fn a_published_payload_is_data_lines() {
        assert_eq!(published(b"one\r\ntwo").raw, "data: one\ndata: two\n\n");
    }

    #[test]
    fn source_keys_follow_the_path() {
        let cluster = Cluster::new(
            ClusterSettings {
                redis: "redis://127.0.0.1:1/0".into(),
                key_prefix: "ssegate:".into(),
                lease: Duration::from_secs(3),
            },
            ClusterMetrics::default(),
        )
        .unwrap();
        assert_eq!(
            cluster.source_key("/events/orders"),
            "ssegate:events:orders"
        );
        let keys = cluster.stream_keys("/", "/live?x=1");
        assert_eq!(keys.log, "ssegate:shared:{/|/live?x=1}:log");
    }
}
