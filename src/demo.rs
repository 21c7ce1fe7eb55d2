//! `ssegate demo`: a small SSE backend and an EventSource page behind the proxy.
//!
//! The backend behaves like the classic Express SSE demo: `/stream/date` sends
//! `retry:` first, then the server's date every second with `id:` and `event:`
//! lines, and resumes from `Last-Event-ID` when the browser reconnects.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, UpstreamGroup, UpstreamUrl};
use crate::error::StartError;
use crate::server::Server;
use crate::tls::{self, CertStore};

const PAGE: &str = include_str!("demo.html");
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
const RETRY_MS: u64 = 3000;

type DemoBody = BoxBody<Bytes, Infallible>;

/// A body fed by a channel: each message is one write, like `res.write()`.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelBody { rx }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Starts the demo backend on `addr` (plain HTTP) and returns its address.
pub async fn spawn_backend(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(err) => {
                        tracing::warn!(error = %err, "demo backend: accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(route(req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn route(req: Request<Incoming>) -> Response<DemoBody> {
    match req.uri().path() {
        "/" | "/index.html" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(full(PAGE)),
        "/stream/date" => {
            let last_id = req
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .header(header::CONNECTION, "keep-alive")
                .body(date_stream(last_id + 1).boxed())
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full("not found\n")),
    }
    .unwrap_or_else(|_| Response::new(full("")))
}

fn full(text: &'static str) -> DemoBody {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// Writes the date every second, one `write` per line as Express apps do.
fn date_stream(first_id: u64) -> ChannelBody {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
            .await
            .is_err()
        {
            return;
        }
        let mut ticker = tokio::time::interval(EVENT_INTERVAL);
        for id in first_id.. {
            ticker.tick().await;
            let date = humantime::format_rfc3339_seconds(SystemTime::now());
            for line in [
                format!("id: {id}\n"),
                "event: date\n".to_owned(),
                format!("data: {date}\n\n"),
            ] {
                if tx.send(Bytes::from(line)).await.is_err() {
                    return; // the client went away
                }
            }
        }
    });
    ChannelBody::new(rx)
}

/// Runs the demo: the backend on a free loopback port, the proxy on
/// `args.listen` with the built-in development certificate (or the given one).
pub async fn run(
    args: &crate::cli::DemoArgs,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let backend = spawn_backend(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .map_err(|e| StartError::Config(format!("demo backend: {e}")))?;
    let key = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::load_certified_key(&tls::CertPair {
            cert: cert.clone(),
            key: key.clone(),
        })?,
        _ => tls::certified_key_from_pem(tls::DEV_CERT_PEM, tls::DEV_KEY_PEM)?,
    };
    let upstream = UpstreamGroup::single(UpstreamUrl::parse(&format!("http://{backend}"))?);
    let config = Config::new(
        args.listen,
        tls::server_config(CertStore::new(key))?,
        upstream,
    );
    let server = Server::bind(config).await?;
    let port = server.local_addr().port();
    tracing::info!("demo backend on http://{backend}");
    println!("ssegate demo: open https://localhost:{port}/ in a browser (development certificate: accept the warning). Ctrl-C stops it.");
    server.run(shutdown).await;
    Ok(())
}
