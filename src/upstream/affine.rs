//! A client connection's own upstream connection.
//!
//! An HTTP/1.1 client sends one request at a time, so its connection can keep
//! one upstream connection for itself, reused request after request and
//! driven by the very task that serves the client. Compared with the shared
//! pool, a request then crosses no task boundary (no wake-ups between threads)
//! and takes no pool lock.
//!
//! The lean path's GETs drive the connection by hand (`send_bodiless`, see
//! `dedicated.rs`); every other request drives it through hyper's client
//! (`send`). The connection passes from one to the other when its client
//! connection does (at most once), and a parked one, kept as a plain
//! socket, goes to whichever path takes it.
//!
//! When the client connection closes, its upstream connection is parked in
//! [`IdleUpstreams`] for the next client connection to take, so a client that
//! opens a new TLS connection per request does not cost a new TCP connection
//! upstream as well (nginx's `keepalive` does the same). There is one set per
//! serving thread: a connection stays with the event loop it is registered with.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::dedicated::{self, DedicatedBody, ExchangeError, ResponseHead};
use super::UpstreamBody;
use crate::config::UPSTREAM_POOL_IDLE_TIMEOUT;
use crate::error::{error_chain, ProxyError};

type Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// At most this many upstream connections stay parked between client
/// connections; beyond it the oldest is closed.
const MAX_PARKED: usize = 128;

/// How often parked connections are checked for having been closed by the
/// upstream (Node closes idle keep-alive connections after 5 s).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The upstream connection of one client connection, while it is idle.
pub struct AffineSlot {
    idle: Mutex<Option<Idle>>,
    parked: Arc<IdleUpstreams>,
}

/// An idle upstream connection, as the path that used it last left it.
enum Idle {
    /// Driven by hand: just the socket.
    Raw(TcpStream),
    /// Driven by hyper's client.
    Hyper(Upstream),
}

impl Idle {
    /// False for a socket the upstream has closed, or sent something
    /// unasked on (a 408 before closing, say), which must not be taken for
    /// the answer to the next request. hyper's client checks its own.
    fn may_be_open(&self) -> bool {
        match self {
            Idle::Raw(tcp) => !is_closed(tcp, &mut Context::from_waker(std::task::Waker::noop())),
            Idle::Hyper(_) => true,
        }
    }
}

struct Upstream {
    sender: http1::SendRequest<UpstreamBody>,
    connection: Pin<Box<Connection>>,
    /// The connection future has finished: the connection is closed.
    closed: bool,
}

impl std::fmt::Debug for AffineSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffineSlot").finish_non_exhaustive()
    }
}

impl AffineSlot {
    pub fn new(parked: Arc<IdleUpstreams>) -> Self {
        AffineSlot {
            idle: Mutex::new(None),
            parked,
        }
    }

    /// Sends `request` over the slot's connection (a new one if there is none
    /// or it was closed) and waits for the response head. The request's URI
    /// is absolute, as the proxy builds it; the connection goes to its authority.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<UpstreamBody>,
        connect_timeout: Duration,
    ) -> Result<Response<AffineBody>, ProxyError> {
        let upstream_uri = request.uri().clone();
        let mut request = in_origin_form(request)?;
        if let Some(mut upstream) = self.take_hyper().await {
            if upstream.wait_ready().await {
                // The upstream may close an idle connection (its keep-alive
                // timeout) just as a request goes out on it. A request that
                // can safely be sent twice is then sent again on a new
                // connection, as nginx does with its cached connections.
                let replay = replayable_copy(&request);
                match upstream.send(request).await {
                    Ok(response) => return Ok(self.body_for(response, upstream)),
                    Err(mut err) => match (err.take_message(), replay) {
                        // Closed before the request went out.
                        (Some(unsent), _) => request = unsent,
                        (None, Some(copy)) if closed_under_request(err.error()) => {
                            tracing::debug!(error = %err.error(), "reused upstream connection was closed; request sent again");
                            request = copy;
                        }
                        (None, _) => return Err(upstream_error(err.into_error())),
                    },
                }
            }
        }
        let mut connection = connect(&upstream_uri, connect_timeout).await?;
        match connection.send(request).await {
            Ok(response) => Ok(self.body_for(response, connection)),
            Err(err) => Err(upstream_error(err.into_error())),
        }
    }

    /// Sends a bodiless GET's `head` (as `lean_h1` writes it) over the
    /// slot's connection (a new one to `upstream` if there is none), driven
    /// by hand, and reads the response head. The connection comes back to
    /// the slot once the body is read to its end.
    pub async fn send_bodiless(
        self: &Arc<Self>,
        head: &[u8],
        upstream: &Authority,
        connect_timeout: Duration,
    ) -> Result<(ResponseHead, DedicatedBody), ProxyError> {
        let recycle = || Some(Arc::downgrade(self));
        if let Some(tcp) = self.take_raw() {
            match dedicated::exchange(tcp, head, recycle()).await {
                Ok(response) => return Ok(response),
                // The upstream closed the idle connection (its keep-alive
                // timeout) as the request went out: a GET is sent again on a
                // new connection, as in `send`.
                Err(ExchangeError::Unanswered(err)) => {
                    tracing::debug!(error = %err, "reused upstream connection was closed; request sent again");
                }
                Err(err) => return Err(err.into()),
            }
        }
        let tcp = super::connect_to(upstream, connect_timeout).await?;
        Ok(dedicated::exchange(tcp, head, recycle()).await?)
    }

    /// The slot's own idle connection, or else a parked one.
    fn take_idle(&self) -> Option<Idle> {
        let own = lock(&self.idle).take().filter(Idle::may_be_open);
        own.or_else(|| self.parked.take().map(Idle::Raw))
    }

    /// The idle connection, for hyper's client.
    async fn take_hyper(&self) -> Option<Upstream> {
        match self.take_idle()? {
            Idle::Hyper(upstream) => Some(upstream),
            Idle::Raw(tcp) => Upstream::over(tcp).await.ok(),
        }
    }

    /// The idle connection, to drive by hand.
    fn take_raw(&self) -> Option<TcpStream> {
        match self.take_idle()? {
            Idle::Raw(tcp) => Some(tcp),
            Idle::Hyper(upstream) => upstream.into_raw(),
        }
    }

    fn put_idle(&self, upstream: Upstream) {
        *lock(&self.idle) = Some(Idle::Hyper(upstream));
    }

    /// Takes back a connection driven by hand, ready for the next request.
    pub(super) fn put_raw(&self, tcp: TcpStream) {
        *lock(&self.idle) = Some(Idle::Raw(tcp));
    }

    fn body_for(
        self: &Arc<Self>,
        response: Response<Incoming>,
        upstream: Upstream,
    ) -> Response<AffineBody> {
        response.map(|incoming| AffineBody {
            incoming,
            upstream: Some(upstream),
            slot: Arc::downgrade(self),
        })
    }
}

impl Drop for AffineSlot {
    /// The client connection is gone: its idle upstream connection is parked.
    fn drop(&mut self) {
        let idle = self
            .idle
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let tcp = match idle {
            Some(Idle::Raw(tcp)) => Some(tcp),
            Some(Idle::Hyper(upstream)) => upstream.into_raw(),
            None => None,
        };
        if let Some(tcp) = tcp {
            self.parked.park(tcp);
        }
    }
}

/// Idle upstream connections between client connections, newest last.
/// They are parked as sockets, so either path can take them.
#[derive(Default)]
pub struct IdleUpstreams {
    parked: Mutex<Vec<Parked>>,
}

struct Parked {
    since: Instant,
    tcp: TcpStream,
}

impl IdleUpstreams {
    /// A new set, swept every second by a task that ends with the set.
    pub fn new() -> Arc<Self> {
        let idle = Arc::new(IdleUpstreams::default());
        let weak = Arc::downgrade(&idle);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                match weak.upgrade() {
                    Some(idle) => idle.sweep(Instant::now()),
                    None => break,
                }
            }
        });
        idle
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Parked>> {
        lock(&self.parked)
    }

    fn park(&self, tcp: TcpStream) {
        let oldest = {
            let mut parked = self.lock();
            let oldest = (parked.len() >= MAX_PARKED).then(|| parked.remove(0));
            parked.push(Parked {
                since: Instant::now(),
                tcp,
            });
            oldest
        };
        drop(oldest);
    }

    /// The most recently parked connection that has not expired and is not
    /// known to be closed. The upstream may still close it at any moment.
    fn take(&self) -> Option<TcpStream> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut unusable = Vec::new();
        let taken = {
            let mut parked = self.lock();
            loop {
                let Some(newest) = parked.pop() else {
                    break None;
                };
                if newest.since.elapsed() >= UPSTREAM_POOL_IDLE_TIMEOUT {
                    // Everything below is older still.
                    unusable.push(newest);
                    unusable.append(&mut parked);
                    break None;
                }
                if is_closed(&newest.tcp, &mut cx) {
                    unusable.push(newest);
                    continue;
                }
                break Some(newest.tcp);
            }
        };
        // Closed here, after the lock is released.
        drop(unusable);
        taken
    }

    /// Closes connections parked too long, and lets every other one notice
    /// whether the upstream has closed it, so none lingers half-closed.
    fn sweep(&self, now: Instant) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let stale: Vec<Parked> = self
            .lock()
            .extract_if(.., |p| {
                now.duration_since(p.since) >= UPSTREAM_POOL_IDLE_TIMEOUT
                    || is_closed(&p.tcp, &mut cx)
            })
            .collect();
        // Closed here, after the lock is released.
        drop(stale);
    }
}

/// Locks `mutex`, also after a panic elsewhere: these locks guard whole
/// connections, put in or taken out, which a panic cannot leave half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The request with the origin-form target an HTTP/1.1 request line
/// carries, instead of the absolute URI the proxy built.
fn in_origin_form(request: Request<UpstreamBody>) -> Result<Request<UpstreamBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = target
        .parse()
        .map_err(|_| ProxyError::Upstream("request target cannot be sent".into()))?;
    Ok(Request::from_parts(parts, body))
}

async fn connect(uri: &http::Uri, timeout: Duration) -> Result<Upstream, ProxyError> {
    let tcp = super::connect(uri, timeout).await?;
    Upstream::over(tcp).await
}

/// Whether an idle connection has been closed by the upstream (or sent
/// something unasked, which makes it unusable too).
fn is_closed(tcp: &TcpStream, cx: &mut Context<'_>) -> bool {
    match tcp.poll_read_ready(cx) {
        Poll::Pending => false,
        Poll::Ready(Err(_)) => true,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            !matches!(tcp.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// A safe method (RFC 9110 §9.2.1): one a request may be sent twice with.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A copy of `request` to send again, if that is safe: a safe method and
/// no body.
fn replayable_copy(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if !is_safe(request.method()) || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(UpstreamBody::default());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Whether the connection was closed or reset under a request, before any
/// of its response arrived.
fn closed_under_request(err: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    if err.is_incomplete_message() {
        return true;
    }
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
            )
        })
}

fn upstream_error(err: hyper::Error) -> ProxyError {
    ProxyError::Upstream(error_chain(&err))
}

impl Upstream {
    /// hyper's client over an open connection.
    async fn over(tcp: TcpStream) -> Result<Upstream, ProxyError> {
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(upstream_error)?;
        Ok(Upstream {
            sender,
            connection: Box::pin(connection),
            closed: false,
        })
    }

    /// The socket, for the next request to be driven by hand; None unless
    /// the connection is open, between requests, with nothing unread.
    fn into_raw(self) -> Option<TcpStream> {
        if self.closed || !self.sender.is_ready() {
            return None;
        }
        let parts = Pin::into_inner(self.connection).into_parts();
        parts.read_buf.is_empty().then(|| parts.io.into_inner())
    }

    /// Lets the connection read and write what it can; true once it is closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed {
            // Its end, or failure, reaches the request or body as an error.
            self.closed = self.connection.as_mut().poll(cx).is_ready();
        }
        self.closed
    }

    /// Drives the idle connection until it can take a request; false if it
    /// closed meanwhile (the upstream's keep-alive timeout, say).
    async fn wait_ready(&mut self) -> bool {
        poll_fn(|cx| {
            if self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|ready| ready.is_ok())
        })
        .await
    }

    /// Sends the request, driving the connection until the response head is in.
    async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// The upstream response body; driving the connection as it is read, and
/// returning the connection to its slot once the body is complete.
pub struct AffineBody {
    incoming: Incoming,
    upstream: Option<Upstream>,
    slot: std::sync::Weak<AffineSlot>,
}

impl Body for AffineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // The connection reads the socket and feeds `incoming`; once it has
        // closed, what it fed is still there to read.
        if let Some(upstream) = this.upstream.as_mut() {
            upstream.drive(cx);
        }
        Pin::new(&mut this.incoming).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for AffineBody {
    /// A connection whose response was read to its end serves the client's
    /// next request; one abandoned mid-body closes.
    fn drop(&mut self) {
        let Some(upstream) = self.upstream.take() else {
            return;
        };
        if self.incoming.is_end_stream() && !upstream.closed {
            if let Some(slot) = self.slot.upgrade() {
                slot.put_idle(upstream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const SOON: Duration = Duration::from_secs(5);

    /// A listener that accepts connections and hands them to the test.
    async fn listener() -> (http::Uri, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        (uri, listener)
    }

    async fn open(uri: &http::Uri, listener: &TcpListener) -> (TcpStream, TcpStream) {
        let (upstream, accepted) = tokio::join!(
            super::super::connect(uri, Duration::from_secs(5)),
            listener.accept()
        );
        (upstream.unwrap(), accepted.unwrap().0)
    }

    /// Waits up to `within` until the proxy side of `peer`'s connection is closed.
    async fn closed(peer: &mut TcpStream, within: Duration) {
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(peer, &mut byte);
        let read = tokio::time::timeout(within, read).await;
        assert_eq!(read.expect("closed in time").unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn the_newest_parked_connection_is_taken_first() {
        let (uri, listener) = listener().await;
        let idle = IdleUpstreams::new();
        let (older, mut older_peer) = open(&uri, &listener).await;
        let (newer, mut newer_peer) = open(&uri, &listener).await;
        idle.park(older);
        idle.park(newer);
        // Each taken connection is closed here, and its peer tells which it was.
        drop(idle.take().expect("one parked"));
        closed(&mut newer_peer, SOON).await;
        drop(idle.take().expect("another parked"));
        closed(&mut older_peer, SOON).await;
        assert!(idle.take().is_none());
    }

    #[tokio::test]
    async fn the_oldest_is_closed_beyond_the_limit() {
        let (uri, listener) = listener().await;
        let idle = IdleUpstreams::new();
        let (first, mut first_peer) = open(&uri, &listener).await;
        idle.park(first);
        let mut peers = Vec::new();
        for _ in 0..MAX_PARKED {
            let (upstream, peer) = open(&uri, &listener).await;
            idle.park(upstream);
            peers.push(peer);
        }
        closed(&mut first_peer, SOON).await;
        assert_eq!(idle.lock().len(), MAX_PARKED);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_parked_too_long_is_not_taken() {
        let (uri, listener) = listener().await;
        let idle = IdleUpstreams::new();
        let (upstream, _peer) = open(&uri, &listener).await;
        idle.park(upstream);
        tokio::time::advance(UPSTREAM_POOL_IDLE_TIMEOUT).await;
        assert!(idle.take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_expired_connections() {
        let (uri, listener) = listener().await;
        let idle = IdleUpstreams::new();
        let (upstream, mut peer) = open(&uri, &listener).await;
        idle.park(upstream);
        // The sweeping task runs as time passes; the connection is closed.
        let within = UPSTREAM_POOL_IDLE_TIMEOUT + SWEEP_INTERVAL * 2;
        closed(&mut peer, within).await;
        assert!(idle.lock().is_empty());
    }

    #[tokio::test]
    async fn the_sweep_drops_connections_the_upstream_closed() {
        let (uri, listener) = listener().await;
        let idle = IdleUpstreams::new();
        let (upstream, peer) = open(&uri, &listener).await;
        idle.park(upstream);
        let (_kept, _kept_peer) = open(&uri, &listener).await;
        drop(peer);
        // The sweep notices within its interval.
        tokio::time::timeout(SOON, async {
            while !idle.lock().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the closed connection leaves the parked set");
    }
}
