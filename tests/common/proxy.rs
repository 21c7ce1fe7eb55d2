//! The proxy under test, in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use ssegate::config::{Config, UpstreamGroup, UpstreamUrl};
use ssegate::tls::{self, CertStore};
use ssegate::{CancellationToken, Server};

use super::{dev_cert_pair, init_tracing, WAIT_LIMIT};

/// A running proxy; cancelled (and awaited in the background) on Drop.
pub struct ProxyHandle {
    pub addr: SocketAddr,
    pub hub: Arc<ssegate::sse::hub::Hub>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Starts a graceful shutdown and waits until `run` has returned.
    pub async fn shutdown_and_wait(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config for a proxy in front of `upstream`, with the dev certificate and
/// default timeouts; adjust fields before passing it to `spawn_proxy_with`.
pub fn proxy_config(upstream: SocketAddr) -> Config {
    let key = tls::load_certified_key(&dev_cert_pair()).expect("dev certificate loads");
    let tls = tls::server_config(CertStore::new(key)).expect("server config");
    let upstream = UpstreamUrl::parse(&format!("http://{upstream}")).expect("upstream url");
    Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        UpstreamGroup::single(upstream),
    )
}

pub async fn spawn_proxy(upstream: SocketAddr) -> ProxyHandle {
    spawn_proxy_with(proxy_config(upstream)).await
}

pub async fn spawn_proxy_with(config: Config) -> ProxyHandle {
    init_tracing();
    let server = Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr();
    let hub = server.hub().expect("the configuration has a route");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    ProxyHandle {
        addr,
        hub,
        shutdown,
        task: Some(task),
    }
}

/// Whether a TCP connection to `addr` is refused (within `WAIT_LIMIT`).
pub async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(WAIT_LIMIT, TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}

/// Polls until connections to `addr` are refused: a closed listener cannot
/// be awaited from outside (the proxy cancels its own drain token right
/// after closing it).
pub async fn until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !refused(addr).await {
        assert!(Instant::now() < deadline, "the listener is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group `proxy_config` sends every request to.
pub fn default_group(config: &mut Config) -> &mut ssegate::config::UpstreamGroup {
    config
        .upstreams
        .get_mut(ssegate::config::DEFAULT_UPSTREAM)
        .expect("proxy_config has the default group")
}
