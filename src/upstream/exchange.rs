//! One request and its response head over one upstream connection.
//!
//! The request head and body are written while the response head is read,
//! so an upstream that answers before it has read the whole body (a 413,
//! a redirect) is heard at once; the body then stops, and the connection is
//! not reused.

use std::future::poll_fn;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::{ReadHalf, UpstreamStream, WriteHalf};
use super::RequestBody;
use crate::error::ProxyError;
use crate::http1::body::{keeps_alive, push_chunk, response_framing, LAST_CHUNK};
use crate::http1::head::{parse_response, ParsedResponse};
use crate::http1::Framing;

/// Bytes read at once while waiting for a response head.
const READ_SIZE: usize = 8 * 1024;

/// What the exchange needs to know besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long the upstream may take to answer once the request is sent,
    /// and how long a request body may be silent (then 408).
    pub request_timeout: Duration,
    pub max_header_size: usize,
}

/// A response head, with what the body and the connection need.
#[derive(Debug)]
pub struct Exchanged {
    pub response: ParsedResponse,
    pub framing: Framing,
    /// Bytes read past the head: the start of the body.
    pub buf: BytesMut,
    pub stream: UpstreamStream,
    /// The connection may carry another request after this response.
    pub reusable: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// Not a byte of a response came back: the connection was closed or
    /// reset first. On a reused connection this is the upstream's
    /// keep-alive timeout, and a request that may be resent can be.
    Unanswered(ProxyError),
    Failed(ProxyError),
}

impl From<ExchangeError> for ProxyError {
    fn from(err: ExchangeError) -> Self {
        match err {
            ExchangeError::Unanswered(err) | ExchangeError::Failed(err) => err,
        }
    }
}

/// Sends `head` and `body` (framed as `framing`) over `stream` and reads the
/// final response head to a `method` request. With `upgrade` (the request
/// asks to switch protocols), a `101` is a final answer: what follows its
/// head in `buf` is no longer HTTP.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one request, passed as they are"
)]
pub async fn exchange<B: RequestBody>(
    mut stream: UpstreamStream,
    method: &Method,
    mut head: Vec<u8>,
    body: Option<B>,
    framing: Framing,
    limits: Limits,
    upgrade: bool,
) -> Result<Exchanged, ExchangeError> {
    let mut buf = BytesMut::new();
    let (sent, response) = {
        let (mut reader, mut writer) = stream.split();
        let send = pin!(send(&mut writer, &mut head, body, framing, limits));
        let receive = pin!(receive_head(
            &mut reader,
            &mut buf,
            limits.max_header_size,
            upgrade
        ));
        race(send, receive, limits.request_timeout).await?
    };
    let response = response?;
    let (framing, force_close) =
        response_framing(method, response.head.status, &response.head.fields)
            .map_err(|err| ExchangeError::Failed(ProxyError::Upstream(err.to_string())))?;
    // An upgrade's connection is not trusted for another request even when
    // the upstream declined to switch.
    let reusable = sent
        && !upgrade
        && !force_close
        && framing != Framing::UntilClose
        && response.version == http::Version::HTTP_11
        && keeps_alive(response.version, &response.head.fields);
    Ok(Exchanged {
        response,
        framing,
        buf,
        stream,
        reusable,
    })
}

/// Why sending the request stopped.
enum SendError {
    /// The client's body failed or stalled: the client gets the error.
    Client(ProxyError),
    /// Writing to the upstream failed; its response may still tell why.
    Upstream(ProxyError),
}

/// Runs the sending and the receiving side together. Returns whether the
/// request went out whole, and the response head. The request timeout
/// starts once the request is sent (a body's progress is bounded by
/// `send` itself).
async fn race<S, R>(
    mut send: Pin<&mut S>,
    mut receive: Pin<&mut R>,
    timeout: Duration,
) -> Result<(bool, Result<ParsedResponse, ExchangeError>), ExchangeError>
where
    S: std::future::Future<Output = Result<(), SendError>>,
    R: std::future::Future<Output = Result<ParsedResponse, ExchangeError>>,
{
    let mut sent = None;
    let deadline = tokio::time::sleep(Duration::MAX / 4);
    let mut deadline = pin!(deadline);
    loop {
        tokio::select! {
            biased;
            response = receive.as_mut() => return Ok((sent == Some(true), response)),
            result = send.as_mut(), if sent.is_none() => {
                match result {
                    Ok(()) => sent = Some(true),
                    Err(SendError::Client(err)) => return Err(ExchangeError::Failed(err)),
                    Err(SendError::Upstream(err)) => {
                        tracing::debug!(error = %err, "writing to the upstream failed");
                        sent = Some(false);
                    }
                }
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            () = deadline.as_mut(), if sent.is_some() => {
                return Err(ExchangeError::Failed(ProxyError::UpstreamTimeout(timeout)));
            }
        }
    }
}

/// Writes the head and the body. Body data that is ready at once leaves
/// with the head, in one write.
async fn send<B: RequestBody>(
    writer: &mut WriteHalf<'_>,
    head: &mut Vec<u8>,
    body: Option<B>,
    framing: Framing,
    limits: Limits,
) -> Result<(), SendError> {
    let upstream_failed = |err: std::io::Error| {
        SendError::Upstream(ProxyError::Upstream(format!("write failed: {err}")))
    };
    let Some(mut body) = body else {
        return write(writer, head, limits).await.map_err(upstream_failed);
    };
    let chunked = framing == Framing::Chunked;
    let mut ended = false;
    // What the body has ready now goes out with the head.
    while let Poll::Ready(frame) =
        poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await
    {
        if add_frame(head, frame, chunked).map_err(SendError::Client)? {
            ended = true;
            break;
        }
        if head.len() >= READ_SIZE {
            break;
        }
    }
    write(writer, head, limits).await.map_err(upstream_failed)?;
    let mut out = Vec::new();
    while !ended {
        let frame = tokio::time::timeout(limits.request_timeout, body.frame())
            .await
            .map_err(|_| SendError::Client(ProxyError::ClientTimeout(limits.request_timeout)))?;
        ended = add_frame(&mut out, frame, chunked).map_err(SendError::Client)?;
        if !out.is_empty() {
            write(writer, &out, limits).await.map_err(upstream_failed)?;
            out.clear();
        }
    }
    Ok(())
}

/// Appends a body frame as it goes on the wire; true at the end of the body.
fn add_frame(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<Bytes>, ProxyError>>,
    chunked: bool,
) -> Result<bool, ProxyError> {
    match frame {
        None => {
            if chunked {
                out.extend_from_slice(LAST_CHUNK);
            }
            Ok(true)
        }
        Some(Err(err)) => Err(err),
        Some(Ok(frame)) => {
            // Trailers are not forwarded.
            if let Ok(data) = frame.into_data() {
                if chunked && !data.is_empty() {
                    push_chunk(out, &data);
                } else {
                    out.extend_from_slice(&data);
                }
            }
            Ok(false)
        }
    }
}

/// Writes `bytes` whole, or fails after the request timeout: an upstream
/// that stops reading must not hold the request forever. The flush is free
/// on a socket; TLS may keep the last record until it.
async fn write(writer: &mut WriteHalf<'_>, bytes: &[u8], limits: Limits) -> std::io::Result<()> {
    let written = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(limits.request_timeout, written).await {
        Ok(written) => written,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads the final response head; interim (1xx) responses are skipped, a
/// `101` is final if an upgrade was asked for and an error otherwise.
async fn receive_head(
    reader: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    max_header_size: usize,
    upgrade: bool,
) -> Result<ParsedResponse, ExchangeError> {
    let mut received_any = false;
    loop {
        let parsed = parse_response(buf, max_header_size).map_err(|err| {
            ExchangeError::Failed(ProxyError::Upstream(format!(
                "invalid response head: {err}"
            )))
        })?;
        if let Some(response) = parsed {
            let status = response.head.status;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if upgrade {
                    return Ok(response);
                }
                return Err(ExchangeError::Failed(ProxyError::Upstream(
                    "unexpected 101 Switching Protocols".into(),
                )));
            }
            if status.is_informational() {
                continue;
            }
            return Ok(response);
        }
        buf.reserve(READ_SIZE);
        let failed = match reader.read_buf(buf).await {
            Ok(0) => ProxyError::Upstream("connection closed before the response head".into()),
            Ok(_) => {
                received_any = true;
                continue;
            }
            Err(err) => ProxyError::Upstream(format!("connection error: {err}")),
        };
        return Err(if received_any {
            ExchangeError::Failed(failed)
        } else {
            ExchangeError::Unanswered(failed)
        });
    }
}
