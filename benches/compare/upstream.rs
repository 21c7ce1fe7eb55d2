//! The upstream every peer forwards to, run as a child process of the harness
//! (`--role upstream`) so its CPU and file descriptors are its own.
//!
//! - `GET /sse/events`: the broadcast stream. One publisher writes each event
//!   to every connected client in turn, as an Express app does with
//!   `clients.forEach(res => res.write(event))`: one chunk per event per client.
//! - `GET /sse/idle`: an event stream that sends nothing after its prelude
//!   (holding test).
//!
//! Both event streams start with `STREAM_PRELUDE`, an SSE comment, right
//! after the response head, as many SSE servers do: nginx over HTTP/2 holds
//! a response's HEADERS frame until the first body bytes, so a stream that
//! sent only its head would never open through it.
//! - `GET /static`: a fixed 1 KiB document (request/response tests).
//! - `POST /control/...`: the harness drives the publisher through these;
//!   `GET /control/requests` counts the `GET /sse/events` requests made
//!   since the upstream started (how many upstream readers a cluster had).
//!
//! Every event is `id: SEQ\ndata: RUN SEQ TIMESTAMP_NS PADDING\n\n`, padded to
//! the requested size. The timestamp is CLOCK_MONOTONIC when the event was
//! published; run 0 is reserved for warm-up events, which carry no `id:`
//! (see [`warmup_bytes`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::sys;

/// Every event stream lives under this prefix, so `--sse-shared /sse` shares
/// them all while /static stays an ordinary request.
pub const SHARED_PREFIX: &str = "/sse";
pub const EVENTS_PATH: &str = "/sse/events";
pub const IDLE_PATH: &str = "/sse/idle";
pub const STATIC_PATH: &str = "/static";
pub const STATIC_BODY_LEN: usize = 1024;
/// Run number of warm-up events, which no stream counts.
pub const WARMUP_RUN: u32 = 0;
/// The first bytes of every event stream: a comment, which clients skip.
pub const STREAM_PRELUDE: &[u8] = b": open\n\n";

type UpstreamBody = BoxBody<Bytes, Infallible>;

/// `id: SEQ\ndata: RUN SEQ TS PADDING\n\n`, padded with `x` to `size` bytes
/// (or longer when `size` is below the minimum).
pub fn event_bytes(run: u32, seq: u64, timestamp_ns: u64, size: usize) -> Bytes {
    let head = format!("id: {seq}\ndata: {run} {seq} {timestamp_ns} ");
    let mut event = Vec::with_capacity(size.max(head.len() + 2));
    event.extend_from_slice(head.as_bytes());
    let padding = size.saturating_sub(head.len() + 2);
    event.resize(event.len() + padding, b'x');
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// A warm-up event: `data: 0 0 TS PADDING\n\n`, without an `id:` line. A
/// warm-up sent `id: 0` before a run's first event (also `id: 0`) would
/// make the run's event a repeat of an ID the stream just had, and an
/// ssegate `--cluster` instance drops a log entry whose ID is still in its
/// replay buffer: every subscriber lost event 0 (found by the cluster
/// fan-out). IDs within a run stay unique.
pub fn warmup_bytes(timestamp_ns: u64, size: usize) -> Bytes {
    let event = event_bytes(WARMUP_RUN, 0, timestamp_ns, size + "id: 0\n".len());
    event.slice("id: 0\n".len()..)
}

/// The broadcast publisher's list of connected clients.
#[derive(Default)]
struct Broadcast {
    clients: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
}

impl Broadcast {
    /// A new client's stream, which starts with `STREAM_PRELUDE`.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Bytes::from_static(STREAM_PRELUDE));
        self.lock().push(tx);
        rx
    }

    /// Writes `event` to every client in turn; forgets clients that left.
    /// Returns the number of clients written to.
    fn publish(&self, event: &Bytes) -> usize {
        let mut clients = self.lock();
        clients.retain(|client| client.send(event.clone()).is_ok());
        clients.len()
    }

    fn client_count(&self) -> usize {
        let mut clients = self.lock();
        clients.retain(|client| !client.is_closed());
        clients.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Bytes>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client's event stream: whatever the publisher queued for it.
struct ClientStream {
    events: mpsc::UnboundedReceiver<Bytes>,
}

impl Body for ClientStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.events
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// An event stream that sends `STREAM_PRELUDE`, then stays open and silent
/// until the client leaves.
struct SilentStream {
    prelude_sent: bool,
}

impl Body for SilentStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.prelude_sent {
            return Poll::Pending;
        }
        self.prelude_sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(STREAM_PRELUDE)))))
    }
}

struct Upstream {
    broadcast: Broadcast,
    static_body: Bytes,
    /// `GET /sse/events` requests made since start.
    event_requests: AtomicU64,
}

/// Entry point of the `--role upstream` child: binds, prints `listening ADDR`
/// on stdout, serves until its stdin closes (the harness went away).
pub fn run_child(listen: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("upstream runtime: {e}"))?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("upstream cannot bind {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("upstream address: {e}"))?;
    println!("listening {addr}");
    let upstream = Arc::new(Upstream {
        broadcast: Broadcast::default(),
        static_body: Bytes::from(vec![b's'; STATIC_BODY_LEN]),
        event_requests: AtomicU64::new(0),
    });
    let accept_loop = async {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("upstream: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| upstream.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    };
    // The harness holds our stdin open; EOF means it is gone.
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = accept_loop => {}
        () = parent_gone => {}
    }
    Ok(())
}

impl Upstream {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, Infallible> {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let response = match (req.method(), path) {
            (&Method::GET, EVENTS_PATH) => {
                self.event_requests.fetch_add(1, Ordering::Relaxed);
                event_stream(ClientStream {
                    events: self.broadcast.subscribe(),
                })
            }
            (&Method::GET, IDLE_PATH) => event_stream(SilentStream {
                prelude_sent: false,
            }),
            (&Method::GET, STATIC_PATH) => Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Full::new(self.static_body.clone()).boxed()),
            (&Method::POST, "/control/publish") => {
                let text = match PublishPlan::from_query(query) {
                    Ok(plan) => self.publish_run(plan).await,
                    Err(err) => err,
                };
                text_response(text)
            }
            (&Method::POST, "/control/warmup") => {
                let size = query_value(query, "size").unwrap_or(64) as usize;
                let event = warmup_bytes(sys::monotonic_ns(), size);
                let clients = self.broadcast.publish(&event);
                text_response(format!("clients={clients}"))
            }
            (&Method::GET, "/control/clients") => {
                text_response(format!("clients={}", self.broadcast.client_count()))
            }
            (&Method::GET, "/control/requests") => text_response(format!(
                "requests={}",
                self.event_requests.load(Ordering::Relaxed)
            )),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(b"not found\n")).boxed()),
        };
        Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())))
    }

    /// Publishes `count` events at `rate` per second to every client.
    async fn publish_run(&self, plan: PublishPlan) -> String {
        let started = Instant::now();
        let interval_ns = 1e9 / plan.rate.max(1) as f64;
        let mut deliveries: u64 = 0;
        for seq in 0..plan.count {
            let due = started + Duration::from_nanos((seq as f64 * interval_ns) as u64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let event = event_bytes(plan.run, seq, sys::monotonic_ns(), plan.size);
            deliveries += self.broadcast.publish(&event) as u64;
        }
        format!(
            "published={} deliveries={} elapsed_us={}",
            plan.count,
            deliveries,
            started.elapsed().as_micros()
        )
    }
}

fn event_stream<B>(body: B) -> Result<Response<UpstreamBody>, http::Error>
where
    B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body.boxed())
}

fn text_response(text: String) -> Result<Response<UpstreamBody>, http::Error> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(text)).boxed())
}

struct PublishPlan {
    run: u32,
    count: u64,
    rate: u64,
    size: usize,
}

impl PublishPlan {
    fn from_query(query: &str) -> Result<Self, String> {
        let need = |name: &str| query_value(query, name).ok_or(format!("error: missing {name}"));
        Ok(PublishPlan {
            run: need("run")? as u32,
            count: need("count")?,
            rate: need("rate")?,
            size: need("size")? as usize,
        })
    }
}

fn query_value(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// What the publisher reported after a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishReport {
    pub published: u64,
    pub deliveries: u64,
    pub elapsed: Duration,
}

/// The harness's handle on the upstream child process.
pub struct UpstreamProcess {
    child: Child,
    /// Kept open so the child never writes into a closed pipe.
    _stdout: BufReader<tokio::process::ChildStdout>,
    pub addr: SocketAddr,
}

impl UpstreamProcess {
    /// Starts `harness_exe --role upstream` and waits for its address.
    pub async fn spawn(harness_exe: &std::path::Path) -> Result<Self, String> {
        let mut command = Command::new(harness_exe);
        command
            .args(["--role", "upstream", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        sys::kill_with_harness(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the upstream ({}): {e}", harness_exe.display()))?;
        let stdout = child.stdout.take().ok_or("upstream stdout not captured")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err("upstream exited before listening".into()),
            Ok(Err(e)) => return Err(format!("reading upstream stdout: {e}")),
            Err(_) => return Err("upstream did not start within 10 s".into()),
        }
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected upstream output {line:?}"))?;
        Ok(UpstreamProcess {
            child,
            _stdout: stdout,
            addr,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn usage(&self) -> sys::Usage {
        self.pid()
            .and_then(|pid| sys::tree_usage(pid).ok())
            .unwrap_or_default()
    }

    /// Publishes `count` events of `size` bytes at `rate`/s; returns when done.
    pub async fn publish(
        &self,
        run: u32,
        count: u64,
        rate: u64,
        size: usize,
    ) -> Result<PublishReport, String> {
        let text = self
            .control(&format!(
                "POST /control/publish?run={run}&count={count}&rate={rate}&size={size}"
            ))
            .await?;
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|kv| {
                    kv.strip_prefix(name)?
                        .strip_prefix('=')?
                        .parse::<u64>()
                        .ok()
                })
                .ok_or_else(|| format!("upstream publish answered {text:?}"))
        };
        Ok(PublishReport {
            published: field("published")?,
            deliveries: field("deliveries")?,
            elapsed: Duration::from_micros(field("elapsed_us")?),
        })
    }

    /// Publishes one warm-up event; returns the number of connected clients.
    pub async fn warmup(&self, size: usize) -> Result<usize, String> {
        let text = self
            .control(&format!("POST /control/warmup?size={size}"))
            .await?;
        Self::clients_field(&text)
    }

    /// Number of clients connected to the broadcast stream.
    pub async fn clients(&self) -> Result<usize, String> {
        let text = self.control("GET /control/clients").await?;
        Self::clients_field(&text)
    }

    /// `GET /sse/events` requests the upstream has answered since it started.
    pub async fn event_requests(&self) -> Result<u64, String> {
        let text = self.control("GET /control/requests").await?;
        text.trim()
            .strip_prefix("requests=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected upstream answer {text:?}"))
    }

    fn clients_field(text: &str) -> Result<usize, String> {
        text.trim()
            .strip_prefix("clients=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected upstream answer {text:?}"))
    }

    /// One plain HTTP/1.1 control request with `Connection: close`; the body.
    async fn control(&self, method_and_path: &str) -> Result<String, String> {
        let exchange = async {
            let mut tcp = TcpStream::connect(self.addr).await?;
            let request = format!(
                "{method_and_path} HTTP/1.1\r\nHost: upstream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(600), exchange)
            .await
            .map_err(|_| format!("upstream control {method_and_path}: no answer"))?
            .map_err(|e| format!("upstream control {method_and_path}: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .ok_or_else(|| format!("upstream control {method_and_path}: malformed answer"))
    }

    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
