//! Listening: bind, accept, TLS handshake, HTTP/1.1 or HTTP/2, shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MAX_REQUEST_HEADER_BYTES};
use crate::error::StartError;
use crate::lean_h1::{self, ClientTls, Next, Rewind};
use crate::listener::Listener;
use crate::proxy::{ConnInfo, Proxy, Transport};
use crate::workers::Workers;

/// hyper's read buffer limit for HTTP/1.1. Above the proxy's own header limit,
/// so an oversized header section usually reaches the proxy and gets a 431
/// with a body; past this hyper answers 431 itself.
const H1_MAX_BUF_SIZE: usize = 2 * MAX_REQUEST_HEADER_BYTES;
/// HTTP/2 pings on a quiet connection, and how long to wait for the answer.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A bound, not yet serving, proxy. Binding first lets callers learn the real
/// address when they asked for port 0.
pub struct Server {
    listener: Listener,
    local_addr: SocketAddr,
    redirect: Option<TcpListener>,
    config: Config,
    proxy: Arc<Proxy>,
    workers: Workers,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let listener = Listener::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let redirect = match config.redirect_http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        // The proxy's own token: cancelled by `run` when its caller's fires.
        let proxy = Proxy::new(config.clone(), CancellationToken::new());
        let workers = Workers::start(config.threads)
            .map_err(|e| StartError::Config(format!("cannot start serving threads: {e}")))?;
        Ok(Server {
            listener,
            local_addr,
            redirect,
            config,
            proxy,
            workers,
        })
    }

    /// The address of the `--redirect-http` listener, if any.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared-stream hub, e.g. to read its counters.
    pub fn hub(&self) -> Arc<crate::sse::hub::Hub> {
        self.proxy.hub().clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets open
    /// connections finish (event streams end at an event boundary) and returns
    /// once they have, or when the drain timeout runs out.
    ///
    /// Connections are accepted on the caller's runtime and served on the
    /// server's `threads` (see [`crate::workers`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listener,
            local_addr,
            redirect,
            config,
            proxy,
            workers,
        } = self;
        if let Some(reloader) = config.cert_reloader.clone() {
            reloader.spawn(shutdown.clone());
        }
        tracing::info!(
            threads = config.threads,
            "listening on https://{local_addr}"
        );
        if let Some(redirect) = redirect {
            tokio::spawn(crate::redirect::serve(
                redirect,
                local_addr.port(),
                shutdown.clone(),
            ));
        }
        let drain_timeout = config.timeouts.drain;
        let connections = Arc::new(ConnectionSettings::new(&config));
        let graceful = GracefulShutdown::new();
        let mut tasks = tokio::task::JoinSet::new();

        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let worker = workers.assign();
            let watcher = graceful.watcher();
            let proxy = proxy.clone();
            let connections = connections.clone();
            // Reap finished connection tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
            // Started here so the task holds the boxed handshake, not the
            // socket it has moved on from.
            let handshake = connections.handshake(tcp, peer);
            // Made here, so the task holds it once: the serving futures
            // below borrow it instead of keeping copies of its parts.
            let mut client = lean_h1::Client {
                proxy: proxy.clone(),
                conn: ConnInfo {
                    peer,
                    client_subject: None,
                },
                header_read_timeout: connections.header_read_timeout,
                worker: worker.index,
            };
            let open = worker.open;
            let task = async move {
                let _open = open;
                let Some(tls) = handshake.await else {
                    return;
                };
                // Boxed: futures copy their arguments, and the TLS state is large.
                let tls = Box::new(tls);
                client.conn.client_subject = client_subject(&tls);
                // The protocol follows ALPN, as browsers negotiate it; without
                // ALPN, HTTP/1.1 (HTTP/2 over TLS requires ALPN, RFC 9113 §3.2).
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve_h2(tls, &client, &connections, watcher).await;
                } else {
                    serve_h1(tls, &client, &connections, watcher).await;
                }
            };
            tasks.spawn_on(task, &worker.handle);
        }

        drop(listener);
        // Event streams end at their next event boundary; hyper finishes
        // in-flight requests, closes idle keep-alive connections and sends
        // HTTP/2 GOAWAY.
        proxy.shutdown_token().cancel();
        tracing::info!("shutting down: listener closed, draining open connections");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(drain_timeout) => {
                tracing::warn!(?drain_timeout, "drain timeout reached; closing remaining connections");
                tasks.shutdown().await;
            }
        }
    }
}

/// HTTP/1.1: plain bodiless GETs are served by the lean path; the first
/// other request, and everything after it, by hyper.
///
/// (Written as a function returning an `async move` block rather than an
/// `async fn`: an `async fn` keeps a second copy of its arguments for as long
/// as it runs, and this one runs as long as the connection.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn serve_h1<'a>(
    tls: ClientTls,
    client: &'a lean_h1::Client,
    connections: &'a ConnectionSettings,
    watcher: Watcher,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    async move {
        let (io, slot) = match lean_h1::serve(tls, client).await {
            Next::Hyper { io, slot } => (io, slot),
            Next::Closed => return,
        };
        // One upstream connection for this client connection's requests,
        // the same the lean path used, if it needed one.
        let slot = slot.unwrap_or_else(|| client.proxy.affine_slot(client.worker));
        let upstream = Transport::Affine(slot);
        serve_h1_with_hyper(io, client, upstream, connections, watcher).await;
    }
}

// The futures below are returned boxed: each connection task's size is that
// of the largest future it awaits inline, for as long as it lives, so the
// large, short-lived or hyper-owned states go to the heap. (Boxing at the
// call site is not enough: the future would still be a temporary there.)
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

fn serve_h1_with_hyper<'a>(
    io: Rewind<ClientTls>,
    client: &lean_h1::Client,
    upstream: Transport,
    connections: &'a ConnectionSettings,
    watcher: Watcher,
) -> Boxed<'a, ()> {
    let (proxy, conn) = (client.proxy.clone(), client.conn.clone());
    Box::pin(async move {
        let peer = conn.peer;
        let service =
            service_fn(move |req| proxy.clone().handle(req, conn.clone(), upstream.clone()));
        let serving = connections.h1.serve_connection(TokioIo::new(io), service);
        if let Err(err) = watcher.watch(serving).await {
            log_connection_error(peer, &err);
        }
    })
}

fn serve_h2<'a>(
    tls: ClientTls,
    client: &lean_h1::Client,
    connections: &'a ConnectionSettings,
    watcher: Watcher,
) -> Boxed<'a, ()> {
    let (proxy, conn) = (client.proxy.clone(), client.conn.clone());
    Box::pin(async move {
        let peer = conn.peer;
        let got_request = Arc::new(AtomicBool::new(false));
        let service = {
            let got_request = got_request.clone();
            service_fn(move |req| {
                got_request.store(true, Ordering::Relaxed);
                proxy.clone().handle(req, conn.clone(), Transport::Pooled)
            })
        };
        let serving = watcher.watch(connections.h2.serve_connection(TokioIo::new(tls), service));
        // hyper has no header-read timeout for HTTP/2: a client that sends no
        // request in that time is disconnected.
        let limit = connections.header_read_timeout;
        match with_first_request_deadline(serving, &got_request, limit).await {
            Some(Ok(())) => {}
            Some(Err(err)) => log_connection_error(peer, &err),
            None => tracing::info!(%peer, "no HTTP/2 request received in time; connection closed"),
        }
    })
}

/// Runs `conn` but gives up (None) if no request has arrived by `limit`.
async fn with_first_request_deadline<F: std::future::Future>(
    conn: F,
    got_request: &AtomicBool,
    limit: Duration,
) -> Option<F::Output> {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return Some(result),
        () = tokio::time::sleep(limit) => {}
    }
    if got_request.load(Ordering::Relaxed) {
        Some(conn.await)
    } else {
        None
    }
}

/// What every connection needs: the TLS configuration and the HTTP builders.
struct ConnectionSettings {
    tls: Arc<rustls::ServerConfig>,
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl ConnectionSettings {
    fn new(config: &Config) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.timeouts.header_read)
            .max_buf_size(H1_MAX_BUF_SIZE)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(H1_MAX_BUF_SIZE as u32)
            // Pings find dead peers of idle connections and silent streams.
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        ConnectionSettings {
            tls: config.tls.clone(),
            tls_handshake_timeout: config.timeouts.tls_handshake,
            header_read_timeout: config.timeouts.header_read,
            h1,
            h2,
        }
    }

    /// The TLS handshake of an accepted connection; polled first on the
    /// worker's runtime, which registers the socket with its event loop.
    fn handshake(
        &self,
        tcp: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Boxed<'static, Option<tokio_rustls::server::TlsStream<TcpStream>>> {
        let config = self.tls.clone();
        let timeout = self.tls_handshake_timeout;
        Box::pin(async move {
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(err) => {
                    tracing::warn!(%peer, error = %err, "cannot register the connection");
                    return None;
                }
            };
            let handshake = crate::tls::accept::accept(tcp, config);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        })
    }
}

/// The verified client certificate's subject, as a header value.
fn client_subject(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
) -> Option<Box<http::HeaderValue>> {
    let subject = crate::tls::client_subject(tls.get_ref().1.peer_certificates())?;
    http::HeaderValue::from_str(&subject).ok().map(Box::new)
}

fn log_connection_error(peer: SocketAddr, err: &hyper::Error) {
    if err.is_parse_too_large() {
        tracing::warn!(%peer, "request header section too large: 431 sent, connection closed")
    } else if err.is_parse() {
        tracing::warn!(%peer, error = %err, "malformed request: 400 sent, connection closed")
    } else if err.is_timeout() {
        tracing::info!(%peer, "request headers not received in time; connection closed")
    } else {
        tracing::debug!(%peer, error = %err, "connection ended with an error")
    }
}
