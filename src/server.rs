//! Listening: bind, accept, TLS handshake, HTTP/1.1 or HTTP/2, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminListener;
use crate::config::Config;
use crate::conn::{self, ClientIo, SendTimeout};
use crate::error::StartError;
use crate::limits::{PerIpGuard, PerIpLimit};
use crate::listener::Listener;
use crate::metrics::{Metrics, Protocol, TlsFailure, TlsHandshake};
use crate::proxy::{ConnInfo, Proxy};
use crate::proxy_protocol::ProxyHeader;
use crate::workers::Workers;

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
    /// `--admin`: bound with the proxy, served while it runs.
    admin: Option<AdminListener>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let tls_target = config.upstreams.values().find_map(|g| g.first_tls_target());
        if let (Some(url), None) = (tls_target, &config.upstream_tls) {
            return Err(StartError::Upstream {
                url: url.to_string(),
                reason: "an https target needs a TLS client configuration (Config::upstream_tls)"
                    .into(),
            });
        }
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
        let admin = match &config.admin {
            Some(settings) => Some(AdminListener::bind(settings).await?),
            None => None,
        };
        // Counted only when someone can read the counts.
        let metrics = match admin {
            Some(_) if config.cluster.is_some() => Metrics::with_cluster(),
            Some(_) => Metrics::new(),
            None => Metrics::disabled(),
        };
        // The proxy's own token: cancelled by `run` when its caller's fires.
        let proxy = Proxy::new(&config, CancellationToken::new(), metrics);
        let workers = Workers::start(config.threads)
            .map_err(|e| StartError::Config(format!("cannot start serving threads: {e}")))?;
        Ok(Server {
            listener,
            local_addr,
            redirect,
            config,
            proxy,
            workers,
            admin,
        })
    }

    /// The address of the `--admin` listener, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminListener::local_addr)
    }

    /// The address of the `--redirect-http` listener, if any.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared-stream hub of the first route, e.g. to read its counters.
    pub fn hub(&self) -> Option<Arc<crate::sse::hub::Hub>> {
        self.proxy.hub()
    }

    /// The proxy, e.g. to reload its configuration.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
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
            admin,
        } = self;
        if let Some(reloader) = crate::reload::Reloader::new(&config, proxy.clone()) {
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
        // Ready from here on (/readyz), until `shutdown` fires.
        let admin = admin.map(|admin| {
            let certs = config.cert_reloader.as_ref().map(|r| r.store.clone());
            admin.serve(proxy.clone(), certs, shutdown.clone())
        });
        let drain_timeout = config.timeouts.drain;
        let connections = Arc::new(ConnectionSettings::new(&config, proxy.metrics().clone()));
        // --max-connections: a permit per open connection, taken before
        // accepting, so beyond the limit connections wait in the backlog.
        let open_limit = config
            .limits
            .max_connections
            .map(|max| Arc::new(Semaphore::new(max.get() as usize)));
        let mut tasks = tokio::task::JoinSet::new();

        loop {
            let permit = match &open_limit {
                Some(limit) => tokio::select! {
                    permit = limit.clone().acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        // Never closed; if it were, stop like a shutdown.
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                },
                None => None,
            };
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
            let proxy = proxy.clone();
            let connections = connections.clone();
            // Reap finished connection tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
            // Started here so the task holds the boxed handshake, not the
            // socket it has moved on from.
            let handshake = connections.handshake(tcp, peer);
            let open = worker.open;
            let index = worker.index;
            let task = async move {
                let _open = open;
                let _permit = permit;
                let Some(accepted) = handshake.await else {
                    return;
                };
                let Accepted {
                    mut io,
                    client,
                    per_ip: _per_ip,
                } = accepted;
                let conn = ConnInfo {
                    peer: client,
                    client_subject: client_subject(io.get_ref()),
                    worker: index,
                };
                // The protocol follows ALPN, as browsers negotiate it; without
                // ALPN, HTTP/1.1 (HTTP/2 over TLS requires ALPN, RFC 9113 §3.2).
                if io.get_ref().get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _counted = connections.metrics.connection(Protocol::Http2);
                    let first_request = connections.h1.header_read_timeout;
                    conn::h2::serve(io, proxy, conn, &connections.h2, first_request).await;
                } else {
                    let _counted = connections.metrics.connection(Protocol::Http1);
                    serve_h1(&mut io, &proxy, &conn, connections.h1).await;
                }
            };
            tasks.spawn_on(task, &worker.handle);
        }

        drop(listener);
        // Event streams end at their next event boundary, idle HTTP/1.1
        // connections close, HTTP/2 connections get GOAWAY, and requests in
        // flight finish.
        proxy.shutdown_token().cancel();
        tracing::info!("shutting down: listener closed, draining open connections");
        let drained = tokio::time::timeout(drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        });
        if drained.await.is_ok() {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!(
                ?drain_timeout,
                "drain timeout reached; closing remaining connections"
            );
            tasks.shutdown().await;
        }
        // Last: a load balancer saw /readyz fail while the streams drained.
        if let Some(admin) = admin {
            admin.close().await;
        }
    }
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// HTTP/1.1, boxed: the connection task then holds a pointer to this
/// state rather than the state itself in each of its variants.
fn serve_h1<'a>(
    io: &'a mut ClientIo,
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    settings: conn::h1::Settings,
) -> Boxed<'a, ()> {
    Box::pin(conn::h1::serve(io, proxy, conn, settings))
}

/// A connection through its handshake, ready for HTTP.
struct Accepted {
    io: Box<ClientIo>,
    /// The client's address: the TCP peer, or the PROXY header's source.
    client: SocketAddr,
    /// Counts the connection for its client address while it is open.
    per_ip: Option<PerIpGuard>,
}

/// What every connection needs: the TLS configuration, the protocols'
/// settings, and the limits checked before the TLS handshake.
struct ConnectionSettings {
    tls: Arc<rustls::ServerConfig>,
    tls_handshake_timeout: Duration,
    proxy_protocol: bool,
    per_ip: Option<Arc<PerIpLimit>>,
    send_timeout: Duration,
    h1: conn::h1::Settings,
    h2: http2::Builder<TokioExecutor>,
    /// Connections open by protocol, handshakes by result.
    metrics: Metrics,
}

impl ConnectionSettings {
    fn new(config: &Config, metrics: Metrics) -> Self {
        ConnectionSettings {
            tls: config.tls.clone(),
            tls_handshake_timeout: config.timeouts.tls_handshake,
            proxy_protocol: config.limits.proxy_protocol,
            per_ip: config.limits.max_connections_per_ip.map(PerIpLimit::new),
            send_timeout: config.timeouts.send,
            h1: conn::h1::Settings {
                header_read_timeout: config.timeouts.header_read,
                max_header_size: config.max_header_size,
            },
            h2: conn::h2::builder(config.max_header_size),
            metrics,
        }
    }

    /// The TLS handshake of an accepted connection, after its PROXY header
    /// (`--proxy-protocol`) and the per-address limit; all within the
    /// handshake timeout. Polled first on the worker's runtime, which
    /// registers the socket with its event loop.
    ///
    /// The connection comes out boxed: the TLS state is large, and a value
    /// that passes through the task's future keeps a slot in it (and so in
    /// every connection's task) for the connection's life.
    fn handshake(
        &self,
        tcp: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Boxed<'static, Option<Accepted>> {
        let config = self.tls.clone();
        let timeout = self.tls_handshake_timeout;
        let send_timeout = self.send_timeout;
        let proxy_protocol = self.proxy_protocol;
        let per_ip = self.per_ip.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let mut tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(err) => {
                    tracing::warn!(%peer, error = %err, "cannot register the connection");
                    return None;
                }
            };
            // Known once the PROXY header is read; the TCP peer until then.
            let mut client = peer;
            // Whether the TLS part began (the timeout counts as its failure).
            let mut tls_started = false;
            let handshake = async {
                if proxy_protocol {
                    match crate::proxy_protocol::read_header(&mut tcp).await {
                        Ok(ProxyHeader::Client(source)) => client = source,
                        Ok(ProxyHeader::Unknown) => {}
                        Err(err) => {
                            tracing::debug!(%peer, error = %err, "connection closed");
                            return None;
                        }
                    }
                }
                let per_ip = match &per_ip {
                    Some(limit) => match limit.try_acquire(client.ip()) {
                        Some(guard) => Some(guard),
                        None => {
                            tracing::debug!(
                                %peer,
                                %client,
                                max = limit.max(),
                                "connection closed: too many from this address"
                            );
                            return None;
                        }
                    },
                    None => None,
                };
                tls_started = true;
                match crate::tls::accept::accept(tcp, config).await {
                    Ok(tls) => Some((tls, per_ip)),
                    Err(err) => {
                        metrics.tls_handshake(TlsHandshake::Failed(err.failure()));
                        tracing::debug!(%client, error = %err, "TLS handshake failed");
                        None
                    }
                }
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Some((tls, per_ip))) => {
                    metrics.tls_handshake(match tls.get_ref().1.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_2) => TlsHandshake::Tls12,
                        _ => TlsHandshake::Tls13,
                    });
                    Some(Accepted {
                        io: Box::new(SendTimeout::new(tls, send_timeout)),
                        client,
                        per_ip,
                    })
                }
                Ok(None) => None,
                Err(_) => {
                    if tls_started {
                        metrics.tls_handshake(TlsHandshake::Failed(TlsFailure::Timeout));
                    }
                    tracing::debug!(%client, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        })
    }
}

/// The verified client certificate's subject, if it can go in a header
/// value as it is (visible ASCII and spaces only).
fn client_subject(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<Arc<str>> {
    let subject = crate::tls::client_subject(tls.get_ref().1.peer_certificates())?;
    let printable = subject.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    printable.then(|| Arc::from(subject))
}
