//! HTTP/2 client connections, served by hyper. Each request becomes a
//! `RequestHead` and goes through `Proxy::handle` like an HTTP/1.1 one;
//! its response head becomes a header map again.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, COOKIE};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::ClientIo;
use crate::error::ProxyError;
use crate::message::{Fields, RequestHead};
use crate::proxy::{ConnInfo, Proxy, ProxyBody, ProxyResponse};

/// HTTP/2 pings on a quiet connection, and how long to wait for the answer.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// hyper's HTTP/2 server, configured once for every connection.
pub fn builder(max_header_size: usize) -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // Above the proxy's own limit, so an oversized header section
        // reaches the proxy and gets a 431 with a body, as over HTTP/1.1.
        .max_header_list_size(u32::try_from(2 * max_header_size).unwrap_or(u32::MAX))
        // Pings find dead peers of idle connections and silent streams.
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        // SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): browsers then open
        // WebSockets as streams of this connection, not new HTTP/1.1 ones.
        .enable_connect_protocol();
    h2
}

/// Serves an HTTP/2 connection until the client closes it, or shutdown
/// (GOAWAY, then open streams finish; event streams end at a boundary).
/// A client that sends no request within `first_request_timeout` is
/// disconnected (hyper has no header-read timeout for HTTP/2).
pub fn serve(
    io: Box<ClientIo>,
    proxy: Arc<Proxy>,
    conn: ConnInfo,
    builder: &http2::Builder<TokioExecutor>,
    first_request_timeout: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    let peer = conn.peer;
    let got_request = Arc::new(AtomicBool::new(false));
    let shutdown = proxy.shutdown_token().clone();
    let service = {
        let got_request = got_request.clone();
        service_fn(move |req: Request<Incoming>| {
            got_request.store(true, Ordering::Relaxed);
            respond(proxy.clone(), conn.clone(), req)
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    Box::pin(async move {
        let mut connection = std::pin::pin!(connection);
        let first = tokio::time::sleep(first_request_timeout);
        let mut first = std::pin::pin!(first);
        let mut waiting_for_first = true;
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                () = &mut first, if waiting_for_first => {
                    waiting_for_first = false;
                    if !got_request.load(Ordering::Relaxed) {
                        tracing::info!(%peer, "no HTTP/2 request received in time; connection closed");
                        return;
                    }
                }
                () = shutdown.cancelled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    })
}

/// One request. Boxed, so the task hyper spawns per stream holds a
/// pointer while the request is on its way, then only the body.
fn respond(
    proxy: Arc<Proxy>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>> {
    Box::pin(async move {
        // A CONNECT's stream becomes a byte stream once a 2xx is sent.
        let on_upgrade = (req.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let head = request_head(parts);
        let body = body.map_err(|err| ProxyError::ClientBody(err.to_string()));
        let mut response = proxy.handle(head, body, &conn).await;
        if let (Some(tunnel), Some(on_upgrade)) = (response.websocket.take(), on_upgrade) {
            // hyper hands over the stream after the 200 below is sent. The
            // task ends with the WebSocket; the connection, which carries
            // the stream, waits for it when draining.
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => tunnel.run(TokioIo::new(upgraded), Bytes::new()).await,
                    Err(err) => {
                        tracing::debug!(error = %err, "extended CONNECT stream not upgraded");
                    }
                }
            });
        }
        Ok(into_response(response))
    })
}

/// The request as the rules see it. Cookie crumbs (RFC 9113 §8.2.3) are
/// joined into one field, as an HTTP/1.1 upstream expects.
fn request_head(parts: http::request::Parts) -> RequestHead {
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let protocol = parts
        .extensions
        .get::<hyper::ext::Protocol>()
        .map(|protocol| protocol.as_str().to_owned());
    let mut fields = Fields::builder();
    let mut cookies = BytesMut::new();
    for (name, value) in &parts.headers {
        if name == COOKIE {
            if !cookies.is_empty() {
                cookies.extend_from_slice(b"; ");
            }
            cookies.extend_from_slice(value.as_bytes());
        } else {
            fields.push(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !cookies.is_empty() {
        fields.push(b"cookie", &cookies);
    }
    RequestHead {
        method: parts.method,
        target,
        authority,
        version: Version::HTTP_2,
        protocol,
        fields: fields.finish(),
    }
}

/// The response as hyper takes it. Field names are lowercased, as HTTP/2
/// requires; a field hyper cannot carry is left out.
fn into_response(response: ProxyResponse) -> Response<ProxyBody> {
    let ProxyResponse { head, body, .. } = response;
    let mut out = Response::new(body);
    *out.status_mut() = head.status;
    let headers = out.headers_mut();
    headers.reserve(head.fields.len());
    for (name, value) in head.fields.iter_shared() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    out
}
