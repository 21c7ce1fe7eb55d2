//! `TestUpstream`: the one plain-HTTP/1.1 upstream every test runs the proxy
//! against. It records every request it receives (method, target, version,
//! header lines in order as sent, body, the connection it came on) and
//! answers per path or by default:
//!
//! - fixed responses (`Reply::text`, `Reply::status`, `.header(..)`), or
//!   one picked per request (`Reply::with`),
//! - streams kept open and fed by the test through an `UpstreamStream`
//!   handle (`Reply::stream`), or requests held until the test answers them
//!   (`Reply::hold`),
//! - delays (`.delayed(..)`), closing the connection instead of answering
//!   (`Reply::close`), and handing the raw connection to the test
//!   (`Reply::hand_over`, what `RawUpstream` does for every request).
//!
//! Between requests the test can write bytes nobody asked for on a
//! connection (`write_conn`) or close it (`close_conn`), as upstreams do
//! when their idle timeout fires.
//!
//! A route's reply (`on`) wins over the default (`otherwise`; at first a
//! 200 `text/plain` "ok"). Connections stay open (keep-alive) unless a reply
//! or the request's `Connection: close` ends them. Tests wait on events
//! (`next_request`, `next_stream`, `conn_closed`), never on sleeps, and every
//! wait is bounded by `WAIT_LIMIT`. The listener binds 127.0.0.1:0 and stops,
//! with every connection, when the `TestUpstream` is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use ssegate::CancellationToken;

use super::{chunk_bytes, RawConn, RawHead, RawUpstreamConn, WAIT_LIMIT};

// ---------------------------------------------------------------- requests

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The connection it came on: 1 for the first the upstream accepted.
    pub conn: usize,
    /// Its place on that connection: 1 for the first request.
    pub seq: usize,
    pub method: String,
    /// The request target as it was on the wire.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The header lines in order, names as sent (not lowercased).
    pub headers: Vec<(String, String)>,
    /// The body, decoded (empty for a hand-over: the test reads it).
    pub body: Bytes,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The whole head, for failure messages.
    pub raw_head: String,
}

impl UpstreamRequest {
    /// `METHOD target VERSION`.
    pub fn start_line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Every value of the header `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the header `name`, which must appear at most once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.all(name);
        assert!(
            values.len() <= 1,
            "{name} appears {} times in {:?}",
            values.len(),
            self.raw_head
        );
        values.first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// ---------------------------------------------------------------- replies

/// How the upstream answers a request.
#[derive(Clone)]
pub enum Reply {
    /// A whole response. Framed by a `Content-Length` of the body unless the
    /// headers frame it themselves (then the body is written as given), or
    /// the status has no body (1xx, 204, 304).
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A response head written at once, its body fed by the test through the
    /// `UpstreamStream` that `next_stream` returns: chunked, unless the
    /// headers carry a `Content-Length` (the test writes that many bytes).
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Nothing yet: the test gets the request as an `UpstreamStream` and
    /// answers it (`start`) when it wants.
    Hold,
    /// Closes the connection without answering.
    Close,
    /// Right after the request head (before any body), the connection goes
    /// to the test as a `RawUpstreamConn` (`next_conn`).
    HandOver,
    /// The reply, after a delay (cut short if the proxy closes first).
    Delayed(Duration, Box<Reply>),
    /// The reply the function picks for the request (body included).
    With(Arc<dyn Fn(&UpstreamRequest) -> Reply + Send + Sync>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Fixed { status, .. } => write!(f, "Fixed({status})"),
            Reply::Stream { status, .. } => write!(f, "Stream({status})"),
            Reply::Hold => write!(f, "Hold"),
            Reply::Close => write!(f, "Close"),
            Reply::HandOver => write!(f, "HandOver"),
            Reply::Delayed(delay, reply) => write!(f, "Delayed({delay:?}, {reply:?})"),
            Reply::With(_) => write!(f, "With(..)"),
        }
    }
}

impl Reply {
    /// 200, `text/plain`, `body`.
    pub fn text(body: impl Into<Bytes>) -> Reply {
        Reply::Fixed {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    /// `status` with an empty body and no headers.
    pub fn status(status: u16) -> Reply {
        Reply::Fixed {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// 200 with `body` and no headers but its length.
    pub fn body(body: impl Into<Bytes>) -> Reply {
        Reply::Fixed {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A streamed 200 with Express' headers: `content_type`,
    /// `Cache-Control: no-cache` and the hop-by-hop `Connection: keep-alive`
    /// that must never reach an HTTP/2 client.
    pub fn stream(content_type: &str) -> Reply {
        Reply::Stream {
            status: 200,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Cache-Control".into(), "no-cache".into()),
                ("Connection".into(), "keep-alive".into()),
            ],
        }
    }

    /// `Reply::stream("text/event-stream")`.
    pub fn event_stream() -> Reply {
        Reply::stream("text/event-stream")
    }

    /// A streamed response with `status` and only the given headers.
    pub fn stream_head(status: u16, headers: &[(&str, &str)]) -> Reply {
        Reply::Stream {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub fn hold() -> Reply {
        Reply::Hold
    }

    pub fn close() -> Reply {
        Reply::Close
    }

    pub fn hand_over() -> Reply {
        Reply::HandOver
    }

    pub fn with(pick: impl Fn(&UpstreamRequest) -> Reply + Send + Sync + 'static) -> Reply {
        Reply::With(Arc::new(pick))
    }

    /// The same reply with another status (fixed and streamed responses
    /// only).
    pub fn with_status(mut self, code: u16) -> Reply {
        match &mut self {
            Reply::Fixed { status, .. } | Reply::Stream { status, .. } => *status = code,
            other => panic!("no status on {other:?}"),
        }
        self
    }

    /// Adds a header line (fixed and streamed responses only).
    pub fn header(mut self, name: &str, value: impl ToString) -> Reply {
        match &mut self {
            Reply::Fixed { headers, .. } | Reply::Stream { headers, .. } => {
                headers.push((name.to_owned(), value.to_string()))
            }
            other => panic!("no headers on {other:?}"),
        }
        self
    }

    pub fn delayed(self, delay: Duration) -> Reply {
        Reply::Delayed(delay, Box::new(self))
    }
}

fn has_header(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// A status line and header lines, through the blank line.
fn response_head(
    status: u16,
    headers: &[(String, String)],
    framing: Option<(&str, String)>,
) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some((name, value)) = framing {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The bytes of a fixed response to `method`.
fn fixed_bytes(status: u16, headers: &[(String, String)], body: &[u8], method: &str) -> Vec<u8> {
    let framed = has_header(headers, "content-length") || has_header(headers, "transfer-encoding");
    let bodiless_status = (100..200).contains(&status) || status == 204 || status == 304;
    let framing = (!framed && !bodiless_status).then(|| ("content-length", body.len().to_string()));
    let mut out = response_head(status, headers, framing);
    if method != "HEAD" && !bodiless_status {
        out.extend_from_slice(body);
    }
    out
}

// ---------------------------------------------------------------- the upstream

/// Where a route applies: `/exact`, `/prefix*` or `*/suffix`.
#[derive(Debug, Clone)]
struct Route {
    pattern: String,
    reply: Reply,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        if let Some(prefix) = self.pattern.strip_suffix('*') {
            path.starts_with(prefix)
        } else if let Some(suffix) = self.pattern.strip_prefix('*') {
            path.ends_with(suffix)
        } else {
            path == self.pattern
        }
    }
}

struct Replies {
    routes: Vec<Route>,
    otherwise: Reply,
}

impl Replies {
    fn pick(&self, path: &str) -> Reply {
        match self.routes.iter().find(|r| r.matches(path)) {
            Some(route) => route.reply.clone(),
            None => self.otherwise.clone(),
        }
    }
}

enum Control {
    Write(Bytes, oneshot::Sender<()>),
    Close,
}

struct ConnEntry {
    control: mpsc::UnboundedSender<Control>,
    closed: watch::Receiver<bool>,
}

struct Shared {
    replies: Mutex<Replies>,
    accepts: AtomicUsize,
    received: AtomicUsize,
    conns: Mutex<HashMap<usize, ConnEntry>>,
    body_bytes: watch::Sender<u64>,
    requests: mpsc::UnboundedSender<UpstreamRequest>,
    streams: mpsc::UnboundedSender<UpstreamStream>,
    handed_over: mpsc::UnboundedSender<RawUpstreamConn>,
    stop: CancellationToken,
}

/// Routes and default reply for a `TestUpstream` about to start.
pub struct TestUpstreamBuilder {
    replies: Replies,
}

impl TestUpstreamBuilder {
    /// Answers requests for `pattern` (an `/exact` path, `/prefix*`, or
    /// `*/suffix` whatever comes before it, such as a base path) with
    /// `reply`. Routes are tried in the order they were added.
    pub fn on(mut self, pattern: &str, reply: Reply) -> Self {
        self.replies.routes.push(Route {
            pattern: pattern.to_owned(),
            reply,
        });
        self
    }

    /// The reply when no route has one.
    pub fn otherwise(mut self, reply: Reply) -> Self {
        self.replies.otherwise = reply;
        self
    }

    pub async fn start(self) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("upstream binds");
        let addr = listener.local_addr().expect("upstream addr");
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let (handed_tx, handed_over) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            replies: Mutex::new(self.replies),
            accepts: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            body_bytes: watch::Sender::new(0),
            requests: requests_tx,
            streams: streams_tx,
            handed_over: handed_tx,
            stop: stop.clone(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    () = accepting.stop.cancelled() => return,
                };
                let _ = tcp.set_nodelay(true);
                let id = accepting.accepts.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(tcp, id, accepting.clone()));
            }
        });
        TestUpstream {
            addr,
            shared,
            requests,
            passed_over: VecDeque::new(),
            streams,
            handed_over,
        }
    }

    /// Starts the upstream on a runtime of its own, for tests that have
    /// none (plain `#[test]`s).
    pub fn start_in_background(self) -> BackgroundUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("upstream runtime");
        let upstream = runtime.block_on(self.start());
        BackgroundUpstream {
            addr: upstream.addr,
            upstream,
            runtime,
        }
    }
}

/// The test upstream (see the module's documentation).
pub struct TestUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<UpstreamRequest>,
    /// Received, passed over by `take_request`, not taken yet.
    passed_over: VecDeque<UpstreamRequest>,
    streams: mpsc::UnboundedReceiver<UpstreamStream>,
    handed_over: mpsc::UnboundedReceiver<RawUpstreamConn>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl TestUpstream {
    pub fn builder() -> TestUpstreamBuilder {
        TestUpstreamBuilder {
            replies: Replies {
                routes: Vec::new(),
                otherwise: Reply::text("ok"),
            },
        }
    }

    /// An upstream that answers every request with a 200 "ok".
    pub async fn start() -> TestUpstream {
        TestUpstream::builder().start().await
    }

    /// Adds a route while running (see `TestUpstreamBuilder::on`).
    pub fn on(&self, pattern: &str, reply: Reply) {
        self.shared.replies.lock().unwrap().routes.push(Route {
            pattern: pattern.to_owned(),
            reply,
        });
    }

    /// The next request received (in the order they arrived), whatever the
    /// reply; fails unless one arrives within `WAIT_LIMIT`.
    pub async fn next_request(&mut self) -> UpstreamRequest {
        if let Some(request) = self.passed_over.pop_front() {
            return request;
        }
        tokio::time::timeout(WAIT_LIMIT, self.requests.recv())
            .await
            .expect("the upstream gets a request in time")
            .expect("upstream running")
    }

    /// The first request received (or still to come) for which `wanted`
    /// holds; the others stay for `next_request`, in order.
    pub async fn take_request(
        &mut self,
        wanted: impl Fn(&UpstreamRequest) -> bool,
    ) -> UpstreamRequest {
        if let Some(at) = self.passed_over.iter().position(&wanted) {
            return self.passed_over.remove(at).expect("position in range");
        }
        loop {
            let request = tokio::time::timeout(WAIT_LIMIT, self.requests.recv())
                .await
                .expect("the upstream gets the request in time")
                .expect("upstream running");
            if wanted(&request) {
                return request;
            }
            self.passed_over.push_back(request);
        }
    }

    /// A request received that the test has not taken yet, if any.
    pub fn try_next_request(&mut self) -> Option<UpstreamRequest> {
        self.passed_over
            .pop_front()
            .or_else(|| self.requests.try_recv().ok())
    }

    /// True if no request arrived that the test has not taken yet.
    pub fn saw_nothing_more(&mut self) -> bool {
        match self.try_next_request() {
            Some(request) => {
                eprintln!("unexpected upstream request: {:?}", request.raw_head);
                false
            }
            None => true,
        }
    }

    /// The next request answered by `Reply::stream` or `Reply::hold`, with
    /// the handle that answers it.
    pub async fn next_stream(&mut self) -> UpstreamStream {
        tokio::time::timeout(WAIT_LIMIT, self.streams.recv())
            .await
            .expect("the upstream gets a streamed request in time")
            .expect("upstream running")
    }

    /// The next streamed request, which must be for `target`.
    pub async fn next_stream_for(&mut self, target: &str) -> UpstreamStream {
        let stream = self.next_stream().await;
        assert_eq!(
            stream.request.target, target,
            "{:?}",
            stream.request.raw_head
        );
        stream
    }

    /// The next streamed request, however long it takes; None once the
    /// upstream has stopped. For a task that answers every streamed request
    /// for the whole test (the test bounds its own waits).
    pub async fn next_stream_unbounded(&mut self) -> Option<UpstreamStream> {
        self.streams.recv().await
    }

    /// True if no streamed request arrived that the test has not taken yet.
    pub fn no_more_streams(&mut self) -> bool {
        self.streams.try_recv().is_err()
    }

    /// The next connection handed over (`Reply::hand_over`).
    pub async fn next_conn(&mut self) -> RawUpstreamConn {
        tokio::time::timeout(WAIT_LIMIT, self.handed_over.recv())
            .await
            .expect("the upstream gets a request in time")
            .expect("upstream running")
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    /// Requests received so far, on all connections.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }

    fn conn_entry<T>(&self, conn: usize, f: impl FnOnce(&ConnEntry) -> T) -> T {
        let conns = self.shared.conns.lock().unwrap();
        f(conns
            .get(&conn)
            .unwrap_or_else(|| panic!("no upstream connection #{conn}")))
    }

    /// Closes connection `conn` while it waits for a request, as an
    /// upstream's idle timeout does; returns once it is closed.
    pub async fn close_conn(&self, conn: usize) {
        let mut closed = self.conn_entry(conn, |entry| {
            let _ = entry.control.send(Control::Close);
            entry.closed.clone()
        });
        let _ = tokio::time::timeout(WAIT_LIMIT, closed.wait_for(|c| *c))
            .await
            .unwrap_or_else(|_| panic!("upstream connection #{conn} closes in time"));
    }

    /// Writes `bytes` on connection `conn` while it waits for a request
    /// (bytes nobody asked for); returns once they are written.
    pub async fn write_conn(&self, conn: usize, bytes: &[u8]) {
        let (done_tx, done) = oneshot::channel();
        self.conn_entry(conn, |entry| {
            let _ = entry
                .control
                .send(Control::Write(Bytes::copy_from_slice(bytes), done_tx));
        });
        tokio::time::timeout(WAIT_LIMIT, done)
            .await
            .unwrap_or_else(|_| panic!("write on upstream connection #{conn} in time"))
            .unwrap_or_else(|_| panic!("upstream connection #{conn} was closed"));
    }

    /// Waits up to `limit` for connection `conn` to close (either side);
    /// whether it did.
    pub async fn conn_closed(&self, conn: usize, limit: Duration) -> bool {
        let mut closed = self.conn_entry(conn, |entry| entry.closed.clone());
        let waited = tokio::time::timeout(limit, closed.wait_for(|c| *c)).await;
        waited.is_ok()
    }

    /// Waits until at least `bytes` request body bytes have arrived, over
    /// all requests (so a test can see a body stream through before its
    /// end was sent).
    pub async fn body_bytes_at_least(&self, bytes: u64) {
        let mut received = self.shared.body_bytes.subscribe();
        tokio::time::timeout(WAIT_LIMIT, received.wait_for(|n| *n >= bytes))
            .await
            .unwrap_or_else(|_| panic!("{bytes} body bytes reach the upstream in time"))
            .expect("upstream running");
    }
}

/// A `TestUpstream` on a runtime of its own (for plain `#[test]`s); both
/// stop on Drop.
pub struct BackgroundUpstream {
    pub addr: SocketAddr,
    // Dropped before the runtime it runs on.
    upstream: TestUpstream,
    runtime: tokio::runtime::Runtime,
}

impl BackgroundUpstream {
    pub fn next_request(&mut self) -> UpstreamRequest {
        self.runtime.block_on(self.upstream.next_request())
    }
}

// ---------------------------------------------------------------- connections

/// The reading side of one upstream connection.
struct Reader {
    read: OwnedReadHalf,
    buf: Vec<u8>,
    closed: watch::Sender<bool>,
}

impl Reader {
    /// Reads more into `buf`; false (and the connection marked closed) once
    /// the proxy has closed it.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(16 * 1024);
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.closed.send_replace(true);
                false
            }
            Ok(_) => true,
        }
    }

    /// Reads (and drops) until the proxy closes the connection.
    async fn until_closed(&mut self) {
        while self.fill().await {
            self.buf.clear();
        }
    }

    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line).map_err(|_| "a line that is not UTF-8".into());
            }
            if !self.fill().await {
                return Err("closed in the middle of a body".into());
            }
        }
    }

    async fn exact(
        &mut self,
        len: usize,
        progress: &watch::Sender<u64>,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if self.buf.is_empty() && !self.fill().await {
                return Err(format!("closed after {} of {len} body bytes", out.len()));
            }
            let take = (len - out.len()).min(self.buf.len());
            out.extend(self.buf.drain(..take));
            progress.send_modify(|n| *n += take as u64);
        }
        Ok(out)
    }

    async fn chunked(&mut self, progress: &watch::Sender<u64>) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let digits = line.split(';').next().unwrap_or_default();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad chunk-size line {line:?}"));
            }
            let size = usize::from_str_radix(digits, 16).map_err(|e| format!("{line:?}: {e}"))?;
            if size == 0 {
                // Trailer lines up to the blank line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.exact(size, progress).await?);
            if !self.line().await?.is_empty() {
                return Err(format!("a chunk of {size} bytes not followed by CRLF"));
            }
        }
    }
}

/// A request head as parsed, before its body is read.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
}

impl Head {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn chunked(&self) -> bool {
        self.values("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    }

    fn content_length(&self) -> Result<usize, String> {
        match self.values("content-length").next() {
            None => Ok(0),
            Some(value) => value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}")),
        }
    }

    /// Whether the connection ends after this request's response.
    fn closes(&self) -> bool {
        self.has_token("connection", "close")
            || (self.version == "HTTP/1.0" && !self.has_token("connection", "keep-alive"))
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            version: format!("HTTP/1.{}", request.version.unwrap_or(1)),
            headers: request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            raw: buf[..len].to_vec(),
        })),
        Err(err) => Err(format!(
            "the upstream got a malformed request head ({err}): {:?}",
            String::from_utf8_lossy(buf)
        )),
    }
}

/// What happens to the connection once a reply is done.
enum After {
    KeepServing,
    Closed,
}

/// Serves one connection: requests in turn, each answered by its reply.
async fn serve(tcp: TcpStream, id: usize, shared: Arc<Shared>) {
    let (read, write) = tcp.into_split();
    let (closed, closed_rx) = watch::channel(false);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    shared.conns.lock().unwrap().insert(
        id,
        ConnEntry {
            control: control_tx,
            closed: closed_rx,
        },
    );
    let mut reader = Reader {
        read,
        buf: Vec::new(),
        closed,
    };
    let mut write = Some(write);
    let mut seq = 0;
    loop {
        // Idle: wait for a request head, or for the test to act.
        let head = loop {
            match parse_head(&reader.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(err) => {
                    eprintln!("{err}");
                    reader.closed.send_replace(true);
                    return;
                }
            }
            tokio::select! {
                more = reader.fill() => if !more { return },
                order = control.recv() => match order {
                    Some(Control::Write(bytes, done)) => {
                        if let Some(write) = write.as_mut() {
                            if write.write_all(&bytes).await.is_ok() {
                                let _ = done.send(());
                            }
                        }
                    }
                    Some(Control::Close) | None => {
                        reader.closed.send_replace(true);
                        return;
                    }
                },
                () = shared.stop.cancelled() => {
                    reader.closed.send_replace(true);
                    return;
                }
            }
        };
        reader.buf.drain(..head.raw.len());
        seq += 1;
        shared.received.fetch_add(1, Ordering::SeqCst);
        let reply = shared
            .replies
            .lock()
            .unwrap()
            .pick(head.target.split('?').next().unwrap_or_default());
        let mut request = UpstreamRequest {
            conn: id,
            seq,
            method: head.method.clone(),
            target: head.target.clone(),
            version: head.version.clone(),
            headers: head.headers.clone(),
            body: Bytes::new(),
            chunked: head.chunked(),
            raw_head: String::from_utf8_lossy(&head.raw).into_owned(),
        };

        if matches!(reply, Reply::HandOver) {
            let _ = shared.requests.send(request);
            let Some(write) = write.take() else { return };
            let tcp = reader
                .read
                .reunite(write)
                .expect("halves of one connection");
            let raw_head = RawHead::parse(&head.raw).expect("a head httparse accepted");
            let conn = RawConn::with_buffered(tcp, std::mem::take(&mut reader.buf));
            let _ = shared.handed_over.send(RawUpstreamConn {
                id,
                request: raw_head,
                conn,
            });
            return;
        }

        // The body, answering `Expect: 100-continue` first, as servers do.
        let has_body = request.chunked || head.content_length().map(|n| n > 0).unwrap_or(true);
        if has_body && head.has_token("expect", "100-continue") {
            if let Some(write) = write.as_mut() {
                let _ = write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
        }
        let body = if request.chunked {
            reader.chunked(&shared.body_bytes).await
        } else {
            match head.content_length() {
                Ok(len) => reader.exact(len, &shared.body_bytes).await,
                Err(err) => Err(err),
            }
        };
        match body {
            Ok(body) => request.body = body.into(),
            Err(err) => {
                eprintln!("upstream connection #{id}: {err}: {:?}", request.raw_head);
                let _ = shared.requests.send(request);
                reader.closed.send_replace(true);
                return;
            }
        }
        let _ = shared.requests.send(request.clone());

        let Some(conn_write) = write.take() else {
            return;
        };
        let mut exchange = Exchange {
            reader: &mut reader,
            write: Some(conn_write),
            shared: &shared,
            request: &request,
        };
        match exchange.answer(reply).await {
            After::KeepServing if !head.closes() => write = exchange.write.take(),
            After::KeepServing => {
                if let Some(mut conn_write) = exchange.write.take() {
                    let _ = conn_write.shutdown().await;
                }
                reader.until_closed().await;
                return;
            }
            After::Closed => {
                drop(exchange);
                reader.closed.send_replace(true);
                return;
            }
        }
    }
}

/// One request being answered on its connection.
struct Exchange<'a> {
    reader: &'a mut Reader,
    write: Option<OwnedWriteHalf>,
    shared: &'a Shared,
    request: &'a UpstreamRequest,
}

impl Exchange<'_> {
    async fn write(&mut self, bytes: &[u8]) -> bool {
        match self.write.as_mut() {
            Some(write) => write.write_all(bytes).await.is_ok(),
            None => false,
        }
    }

    async fn answer(&mut self, reply: Reply) -> After {
        let mut reply = reply;
        loop {
            match reply {
                Reply::With(pick) => reply = pick(self.request),
                Reply::Delayed(delay, inner) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => reply = *inner,
                        () = self.reader.until_closed() => return After::Closed,
                    }
                }
                _ => break,
            }
        }
        match reply {
            Reply::Fixed {
                status,
                headers,
                body,
            } => {
                let bytes = fixed_bytes(status, &headers, &body, &self.request.method);
                if !self.write(&bytes).await {
                    return After::Closed;
                }
                After::KeepServing
            }
            Reply::Stream { .. } | Reply::Hold => {
                let (back_tx, back) = oneshot::channel();
                let mut stream = UpstreamStream {
                    request: self.request.clone(),
                    write: tokio::sync::Mutex::new(self.write.take()),
                    framing: StreamFraming::NotStarted,
                    closed: self.reader.closed.subscribe(),
                    back: Some(back_tx),
                };
                if let Reply::Stream { .. } = reply {
                    stream.start(reply).await;
                }
                if self.shared.streams.send(stream).is_err() {
                    return After::Closed;
                }
                self.wait_for_handle(back).await
            }
            Reply::Close => After::Closed,
            Reply::HandOver | Reply::With(_) | Reply::Delayed(..) => {
                unreachable!("resolved above")
            }
        }
    }

    /// Waits for the test to finish with its `UpstreamStream`, watching for
    /// the proxy closing the connection meanwhile.
    async fn wait_for_handle(&mut self, mut back: oneshot::Receiver<Returned>) -> After {
        let returned = loop {
            tokio::select! {
                returned = &mut back => break returned,
                more = self.reader.fill() => if !more { return After::Closed },
                () = self.shared.stop.cancelled() => return After::Closed,
            }
        };
        let Ok(Returned { write, finish }) = returned else {
            return After::Closed;
        };
        self.write = write;
        match finish {
            Finish::Done => After::KeepServing,
            Finish::LastChunk => {
                if self.write(b"0\r\n\r\n").await {
                    After::KeepServing
                } else {
                    After::Closed
                }
            }
            Finish::Close => After::Closed,
        }
    }
}

// ---------------------------------------------------------------- stream handles

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamFraming {
    /// No head written yet (a held request).
    NotStarted,
    Chunked,
    /// `Content-Length`: the test writes exactly that many bytes.
    Length,
}

/// How the connection goes on once the test lets go of its stream.
enum Finish {
    /// The response is complete; the connection serves the next request.
    Done,
    /// The last chunk still has to be written.
    LastChunk,
    /// Close at once (a response cut short).
    Close,
}

struct Returned {
    write: Option<OwnedWriteHalf>,
    finish: Finish,
}

/// A request answered by the test: an open stream it feeds (`send`,
/// `write_event`), or a held request it answers with a stream when it
/// wants (`start`).
/// `end` finishes the response and gives the connection back for the next
/// request; dropping the handle does the same (a held request that was
/// never answered closes the connection instead).
pub struct UpstreamStream {
    pub request: UpstreamRequest,
    write: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    framing: StreamFraming,
    closed: watch::Receiver<bool>,
    back: Option<oneshot::Sender<Returned>>,
}

impl UpstreamStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }

    pub fn path_and_query(&self) -> &str {
        &self.request.target
    }

    /// Answers a held request with a stream's head (then fed with `send`).
    pub async fn start(&mut self, reply: Reply) {
        assert_eq!(self.framing, StreamFraming::NotStarted, "answered twice");
        let (bytes, framing) = match reply {
            Reply::Stream { status, headers } => {
                if has_header(&headers, "content-length") {
                    (response_head(status, &headers, None), StreamFraming::Length)
                } else {
                    let chunked = Some(("Transfer-Encoding", "chunked".to_owned()));
                    (
                        response_head(status, &headers, chunked),
                        StreamFraming::Chunked,
                    )
                }
            }
            other => panic!("a held request cannot be answered with {other:?}"),
        };
        self.framing = framing;
        self.write_raw(&bytes).await;
    }

    /// Writes bytes exactly as given; false if the proxy is gone.
    pub async fn try_write_raw(&self, bytes: &[u8]) -> bool {
        if !self.is_open() {
            return false;
        }
        let mut write = self.write.lock().await;
        match write.as_mut() {
            Some(write) => tokio::time::timeout(WAIT_LIMIT, write.write_all(bytes))
                .await
                .is_ok_and(|written| written.is_ok()),
            None => false,
        }
    }

    /// Writes bytes exactly as given; the proxy must still be reading.
    pub async fn write_raw(&self, bytes: &[u8]) {
        assert!(
            self.try_write_raw(bytes).await,
            "the proxy no longer reads the upstream response to {}",
            self.request.target
        );
    }

    /// Writes one piece of the body (one chunk when chunked); false if the
    /// proxy is gone.
    pub async fn try_send(&self, data: impl AsRef<[u8]>) -> bool {
        let data = data.as_ref();
        match self.framing {
            StreamFraming::Chunked => self.try_write_raw(&chunk_bytes(data)).await,
            StreamFraming::Length => self.try_write_raw(data).await,
            other => panic!("send on a stream that is {other:?}"),
        }
    }

    /// Writes one piece of the body; the proxy must still be reading.
    pub async fn send(&self, data: impl AsRef<[u8]>) {
        assert!(
            self.try_send(data).await,
            "the proxy no longer reads the upstream body of {}",
            self.request.target
        );
    }

    /// Writes one event the way Express apps do, one write per line; false
    /// if the proxy is gone.
    pub async fn write_event(&self, id: u64, event: &str, data_lines: &[&str]) -> bool {
        let mut lines = vec![format!("id: {id}\n"), format!("event: {event}\n")];
        for line in data_lines {
            lines.push(format!("data: {line}\n"));
        }
        lines.push("\n".to_owned());
        for line in lines {
            if !self.try_send(line).await {
                return false;
            }
        }
        true
    }

    /// True while the proxy holds the connection open.
    pub fn is_open(&self) -> bool {
        !*self.closed.borrow()
    }

    /// Completes when the proxy has closed the connection (let go of the
    /// response); wrap it in a timeout.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    fn give_back(&mut self, finish: Finish) {
        if let Some(back) = self.back.take() {
            let write = self.write.get_mut().take();
            let _ = back.send(Returned { write, finish });
        }
    }

    /// Ends the response cleanly (with the last chunk when chunked) and
    /// hands the connection back.
    pub async fn end(mut self) {
        let finish = self.finish();
        if matches!(finish, Finish::LastChunk) {
            let _ = self.try_write_raw(b"0\r\n\r\n").await;
            self.give_back(Finish::Done);
        } else {
            self.give_back(finish);
        }
    }

    /// Cuts the response where it is: the connection closes without the
    /// rest of the body, as when the upstream process dies.
    pub fn cut(mut self) {
        self.give_back(Finish::Close);
    }

    fn finish(&self) -> Finish {
        match self.framing {
            StreamFraming::NotStarted => Finish::Close,
            StreamFraming::Chunked => Finish::LastChunk,
            StreamFraming::Length => Finish::Done,
        }
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        let finish = self.finish();
        self.give_back(finish);
    }
}

/// The exact text `UpstreamStream::write_event` produces for an event with
/// one data line, without the blank line that ends it (as `EventReader`
/// reports it).
pub fn event_text(id: u64, event: &str, data: &str) -> String {
    format!("id: {id}\nevent: {event}\ndata: {data}")
}

/// An address where nothing listens: bound, then closed.
pub async fn dead_upstream_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}
