//! `--redirect-http`: a plain-HTTP listener that sends every request to the
//! https URL with 308 (method and body preserved) and does nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::defaults::HEADER_READ_TIMEOUT as DEFAULT_HEADER_READ_TIMEOUT;

/// The https URL for a plain-HTTP request, or None without a usable Host.
pub fn https_location(host: &str, https_port: u16, path_and_query: &str) -> Option<String> {
    let host = host.trim();
    // Drop the port: "[::1]:80" -> "[::1]", "example.com:80" -> "example.com".
    let name = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    };
    if name.is_empty() || name.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let port = match https_port {
        443 => String::new(),
        port => format!(":{port}"),
    };
    Some(format!("https://{name}{port}{path_and_query}"))
}

fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut response = Response::new(Full::new(Bytes::new()));
    match host.and_then(|h| https_location(h, https_port, path)) {
        Some(location) => match header::HeaderValue::from_str(&location) {
            Ok(location) => {
                *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
                response.headers_mut().insert(header::LOCATION, location);
                *response.body_mut() =
                    Full::new(Bytes::from_static(b"308 Permanent Redirect: use https\n"));
            }
            Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
        },
        None => {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            *response.body_mut() =
                Full::new(Bytes::from_static(b"400 Bad Request: missing Host\n"));
        }
    }
    response
}

/// Serves redirects on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, https_port: u16, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("redirecting http://{addr} to https");
    }
    loop {
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "redirect listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service =
                service_fn(
                    move |req| async move { Ok::<_, Infallible>(redirect(&req, https_port)) },
                );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(DEFAULT_HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "redirect connection ended with an error");
                },
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::https_location;

    #[test]
    fn locations_keep_name_path_and_query_and_use_the_https_port() {
        assert_eq!(
            https_location("example.com", 443, "/a?b=1").as_deref(),
            Some("https://example.com/a?b=1")
        );
        assert_eq!(
            https_location("example.com:80", 8443, "/").as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            https_location("[::1]:8080", 443, "/x").as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(
            https_location("[::1]", 8443, "/x").as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(https_location("", 443, "/"), None);
        assert_eq!(https_location("evil.com/path", 443, "/"), None);
    }
}
