//! A client connection's own upstream connection.
//!
//! An HTTP/1.1 client sends one request at a time, so its connection can keep
//! one upstream connection for itself, reused request after request and
//! driven by the very task that serves the client. Compared with the shared
//! pool, a request then crosses no task boundary (no wake-ups between threads)
//! and takes no pool lock. The upstream connection closes with the client's.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::UpstreamBody;
use crate::error::{error_chain, ProxyError};

type Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// The upstream connection of one client connection, while it is idle.
#[derive(Default)]
pub struct AffineSlot {
    idle: Mutex<Option<Upstream>>,
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
        if let Some(mut upstream) = self.take_idle() {
            if upstream.wait_ready().await {
                match upstream.send(request).await {
                    Ok(response) => return Ok(self.body_for(response, upstream)),
                    // Closed by the upstream before the request went out: a
                    // new connection can still take it.
                    Err(mut err) => match err.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(upstream_error(err.into_error())),
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

    fn take_idle(&self) -> Option<Upstream> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn put_idle(&self, upstream: Upstream) {
        *self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(upstream);
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
    let (sender, connection) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(upstream_error)?;
    Ok(Upstream {
        sender,
        connection: Box::pin(connection),
        closed: false,
    })
}

fn upstream_error(err: hyper::Error) -> ProxyError {
    ProxyError::Upstream(error_chain(&err))
}

impl Upstream {
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
