//! Connections toward the upstream: hyper's pool of keep-alive HTTP/1.1
//! connections for ordinary requests, and a dedicated connection per
//! EventSource request on the lean path.

pub mod affine;
mod decode;
pub mod dedicated;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UPSTREAM_POOL_IDLE_TIMEOUT;
use tokio::net::TcpStream;

use crate::error::{BoxError, ProxyError};

/// Body type of requests sent upstream: the client's streamed body, or none.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// A pooled HTTP/1.1 client with TCP_NODELAY and a connect timeout.
pub type UpstreamPool = Client<HttpConnector, UpstreamBody>;

pub fn pool(connect_timeout: Duration) -> UpstreamPool {
    let mut connector = HttpConnector::new();
    // Small event writes must not wait for Nagle's algorithm (40-200 ms).
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // Keep the client's Host header: set below from the client request.
        .set_host(false)
        .build(connector)
}

/// Opens a TCP connection to the authority of `uri` (the absolute URI the
/// proxy builds; port 80 by default) within `timeout`, with TCP_NODELAY.
pub(crate) async fn connect(uri: &http::Uri, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::Upstream("request has no upstream authority".into()))?;
    connect_to(authority, timeout).await
}

/// Opens a TCP connection to `authority` (port 80 by default) within
/// `timeout`, with TCP_NODELAY.
pub(crate) async fn connect_to(
    authority: &http::uri::Authority,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let addr = (authority.host(), authority.port_u16().unwrap_or(80));
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            return Err(ProxyError::UpstreamConnect(format!(
                "tcp connect error: {err}"
            )))
        }
        Err(_) => {
            return Err(ProxyError::UpstreamConnect(format!(
                "tcp connect timed out after {timeout:?}"
            )))
        }
    };
    // Small event writes must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
