//! Listening: bind, accept, TLS handshake, HTTP/1.1 or HTTP/2, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MAX_REQUEST_HEADER_BYTES};
use crate::error::StartError;
use crate::proxy::{ConnInfo, Proxy};

/// hyper's read buffer limit for HTTP/1.1. Above the proxy's own header limit,
/// so an oversized header section usually reaches the proxy and gets a 431
/// with a body; past this hyper answers 431 itself.
const H1_MAX_BUF_SIZE: usize = 2 * MAX_REQUEST_HEADER_BYTES;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A bound, not yet serving, proxy. Binding first lets callers learn the real
/// address when they asked for port 0.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    redirect: Option<TcpListener>,
    config: Config,
    proxy: Arc<Proxy>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
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
        Ok(Server {
            listener,
            local_addr,
            redirect,
            config,
            proxy,
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
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listener,
            local_addr,
            redirect,
            config,
            proxy,
        } = self;
        tracing::info!("listening on https://{local_addr}");
        if let Some(redirect) = redirect {
            tokio::spawn(crate::redirect::serve(
                redirect,
                local_addr.port(),
                shutdown.clone(),
            ));
        }
        if let Some(reloader) = config.cert_reloader.clone() {
            tokio::spawn(reloader.run(shutdown.clone()));
        }
        let drain_timeout = config.timeouts.drain;
        let connections = Arc::new(ConnectionSettings::new(&config));
        let graceful = GracefulShutdown::new();

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
            let watcher = graceful.watcher();
            let proxy = proxy.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let Some(tls) = connections.handshake(tcp, peer).await else {
                    return;
                };
                let conn = ConnInfo {
                    peer,
                    client_subject: client_subject(&tls),
                };
                let service = service_fn(move |req| proxy.clone().handle(req, conn.clone()));
                let conn = connections
                    .http
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(err) = watcher.watch(conn).await {
                    log_connection_error(peer, err.as_ref());
                }
            });
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
                tracing::warn!(?drain_timeout, "drain timeout reached; closing remaining connections")
            }
        }
    }
}

/// What every connection needs: the TLS configuration and the HTTP builder.
struct ConnectionSettings {
    tls: Arc<rustls::ServerConfig>,
    tls_handshake_timeout: Duration,
    http: auto::Builder<TokioExecutor>,
}

impl ConnectionSettings {
    fn new(config: &Config) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.timeouts.header_read)
            .max_buf_size(H1_MAX_BUF_SIZE)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(H1_MAX_BUF_SIZE as u32);
        ConnectionSettings {
            tls: config.tls.clone(),
            tls_handshake_timeout: config.timeouts.tls_handshake,
            http,
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        // Events are small writes; Nagle would hold them back 40-200 ms.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let handshake = crate::tls::accept::accept(tcp, self.tls.clone());
        match tokio::time::timeout(self.tls_handshake_timeout, handshake).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, timeout = ?self.tls_handshake_timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

/// The verified client certificate's subject, as a header value.
fn client_subject(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<http::HeaderValue> {
    let subject = crate::tls::client_subject(tls.get_ref().1.peer_certificates())?;
    http::HeaderValue::from_str(&subject).ok()
}

fn log_connection_error(peer: SocketAddr, err: &(dyn std::error::Error + 'static)) {
    match err.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse_too_large() => {
            tracing::warn!(%peer, "request header section too large: 431 sent, connection closed")
        }
        Some(e) if e.is_parse() => {
            tracing::warn!(%peer, error = %e, "malformed request: 400 sent, connection closed")
        }
        Some(e) if e.is_timeout() => {
            tracing::info!(%peer, "request headers not received in time; connection closed")
        }
        _ => tracing::debug!(%peer, error = %err, "connection ended with an error"),
    }
}
