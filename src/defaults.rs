//! Every default in one place: the command line shows them (`--help`) and
//! the configuration falls back to them, from these same constants.

use std::time::Duration;

/// Address the proxy listens on.
pub const LISTEN: &str = "0.0.0.0:8443";

/// How long to wait for the upstream's response head (then 504), and the
/// longest silence inside an ordinary response body (then it is cut).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest silence from the upstream on an event stream.
pub const SSE_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The longest silence, in both directions, on a WebSocket.
pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long to wait for a connection to the upstream, TLS handshake
/// included (then 502).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send a complete request head within this (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must complete the TLS handshake within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a client that makes no progress for this long closes the
/// connection (nginx's `send_timeout`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of active upstream health checks, and how long a target that
/// failed a connection is left out.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for open connections before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request or response head (request line or status line and
/// header fields), and the largest chunked-body trailer section. Browsers
/// send a few KiB; nginx allows 8 KiB per line and 32 KiB in all.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;
/// Most header fields in one head (hyper's and nginx's order of magnitude).
pub const MAX_HEADERS: usize = 100;

/// How long an unused upstream keep-alive connection stays pooled.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per serving thread and target. Above
/// the requests a thread has in flight at its busiest, or every burst
/// closes connections the next one opens again: 32 HTTP/2 clients with 10
/// requests each in flight keep 160 per thread busy, and a limit of 128
/// cost 15 % of their requests/s in reconnects (nginx's `keepalive` in the
/// benchmark is 1024 too).
pub const UPSTREAM_MAX_IDLE: usize = 1024;

/// Events kept per shared stream for `Last-Event-ID` replay.
pub const SSE_REPLAY: usize = 1000;
/// Events a shared-stream subscriber may fall behind (the shared ring's
/// size). The ring holds the same events as the replay buffer, so a larger
/// one costs only its slots (about 56 KiB per stream); at 75,000 events/s it
/// gives a subscriber 14 ms of stall before it is dropped, where 256 events
/// (3 ms, a scheduler time slice) dropped healthy clients of a busy machine.
pub const SSE_SUBSCRIBER_QUEUE: usize = 1024;
/// How long a shared stream's upstream stays open without subscribers.
pub const SSE_LINGER: Duration = Duration::from_secs(5);

/// Prefix of the Redis keys of `--cluster`.
pub const CLUSTER_KEY_PREFIX: &str = "ssegate:";
/// How long a shared stream's reader holds its lease in cluster mode.
pub const CLUSTER_LEASE: Duration = Duration::from_secs(3);
