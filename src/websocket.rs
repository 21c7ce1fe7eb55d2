//! WebSockets through the proxy, after the one request path (`proxy`) has
//! forwarded the upgrade and the upstream switched protocols: the
//! handshake's keys, and `Tunnel`, which copies bytes between the client
//! and the upstream connection for both client protocols (an HTTP/1.1
//! connection after its `101`, an HTTP/2 extended-CONNECT stream after its
//! `200`). Frames are not parsed: a WebSocket is bytes both ways.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::limits::PerIpGuard;
use crate::message::RequestHead;
use crate::metrics::OpenGuard;
use crate::rules::WebSocket;
use crate::sse::body::fired;
use crate::sse::{AccessLog, Outcome};
use crate::upstream::UpgradedConn;

/// RFC 6455 §1.3: appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Bytes read at once in each direction: one full TLS record.
const READ_SIZE: usize = 16 * 1024;
/// Reads in one direction before the relay lets other tasks run, so a
/// peer that always has data cannot hold the thread.
const MAX_READS_PER_POLL: usize = 16;

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1),
/// for the upstream request of an HTTP/2 client's extended CONNECT, which
/// carries none.
pub fn new_key() -> Result<String, ProxyError> {
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| ProxyError::Upstream("no random bytes for a WebSocket key".into()))?;
    Ok(BASE64.encode(nonce))
}

/// The `Sec-WebSocket-Key` the upstream gets for a `websocket` request:
/// the client's own over HTTP/1.1 (the client checks the answer too), a
/// fresh one for an extended CONNECT.
pub fn upstream_key(websocket: WebSocket, head: &RequestHead) -> Result<Bytes, ProxyError> {
    match websocket {
        WebSocket::Http1 => head
            .fields
            .get("sec-websocket-key")
            .map(|key| Bytes::copy_from_slice(key.trim_ascii()))
            .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key")),
        WebSocket::ExtendedConnect => new_key().map(Bytes::from),
    }
}

/// The `Sec-WebSocket-Accept` an upstream must answer `key` with
/// (RFC 6455 §4.2.2): base64 of SHA-1 of the key and the GUID.
pub fn accept_for(key: &[u8]) -> String {
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key);
    input.extend_from_slice(ACCEPT_GUID);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64.encode(digest.as_ref())
}

/// A WebSocket the upstream has accepted, waiting for the client side:
/// made by `Proxy::handle`, run by the client's protocol once the client
/// has its answer (`101` or `200`).
pub struct Tunnel {
    /// The client's count against `--max-streams-per-ip`, released when
    /// the WebSocket ends.
    slot: Option<PerIpGuard>,
    upstream: UpgradedConn,
    idle_timeout: Duration,
    /// Written when the WebSocket ends (or is dropped unrun).
    access: AccessLog,
    /// Counts it in `ssegate_websockets_open` until it ends.
    open: OpenGuard,
}

impl Tunnel {
    pub(crate) fn new(
        upstream: UpgradedConn,
        idle_timeout: Duration,
        access: AccessLog,
        slot: Option<PerIpGuard>,
        open: OpenGuard,
    ) -> Self {
        Tunnel {
            slot,
            upstream,
            idle_timeout,
            access,
            open,
        }
    }

    /// Copies bytes between `client` and the upstream until both have
    /// closed, either fails, or no byte has moved for the idle timeout.
    /// `client_ahead`: bytes the client sent behind its request head.
    pub async fn run<C>(self, client: C, client_ahead: Bytes)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Tunnel {
            slot,
            mut upstream,
            idle_timeout,
            mut access,
            open,
        } = self;
        let upstream_ahead = std::mem::take(&mut upstream.ahead);
        let relayed = relay(
            client,
            client_ahead,
            &mut upstream.stream,
            upstream_ahead,
            idle_timeout,
        )
        .await;
        access.bytes = relayed.to_client;
        // Released before the access line: the WebSocket is over.
        drop(slot);
        drop(open);
        access.outcome = match relayed.end {
            End::Closed => Outcome::Complete,
            End::IdleTimeout => {
                tracing::info!(path = %access.path, idle = ?idle_timeout, "WebSocket idle; closed");
                Outcome::IdleTimeout
            }
            End::Failed(Side::Client, err) => {
                tracing::debug!(path = %access.path, error = %err, "WebSocket client side failed");
                Outcome::ClientClosed
            }
            End::Failed(Side::Upstream, err) => {
                tracing::debug!(path = %access.path, error = %err, "WebSocket upstream side failed");
                Outcome::UpstreamError
            }
        };
    }
}

/// Which connection of a relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their direction.
    Closed,
    /// No byte in either direction for the idle timeout.
    IdleTimeout,
    Failed(Side, io::Error),
}

/// What a relay did.
#[derive(Debug)]
pub struct Relayed {
    pub end: End,
    pub to_client: u64,
    pub to_upstream: u64,
}

/// Copies bytes both ways between `client` and `upstream`, each write as
/// soon as its bytes are read, and flushed. The `*_ahead` bytes were read
/// before the relay started and go first. A side that closes its
/// direction has it shut down on the other side (half-close); the relay
/// ends when both directions are closed, on the first error, or when
/// `idle` passes with no byte in either direction. Generic, so it serves
/// every client and upstream connection type alike.
pub async fn relay<C, U>(
    mut client: C,
    client_ahead: Bytes,
    mut upstream: U,
    upstream_ahead: Bytes,
    idle: Duration,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(client_ahead);
    let mut down = Pipe::new(upstream_ahead);
    let mut last_moved = Instant::now();
    // Re-armed only when it fires (from `last_moved`), so busy sockets pay
    // a clock read per read, not a timer update.
    let mut timer = Box::pin(tokio::time::sleep_until(last_moved + idle));
    let end = poll_fn(|cx| {
        let mut moved = false;
        if !up.done {
            match up.poll(
                cx,
                Pin::new(&mut client),
                Pin::new(&mut upstream),
                &mut moved,
            ) {
                Poll::Ready(Ok(())) => up.done = true,
                Poll::Ready(Err(PipeError::Read(err))) => {
                    return Poll::Ready(End::Failed(Side::Client, err))
                }
                Poll::Ready(Err(PipeError::Write(err))) => {
                    return Poll::Ready(End::Failed(Side::Upstream, err))
                }
                Poll::Pending => {}
            }
        }
        if !down.done {
            match down.poll(
                cx,
                Pin::new(&mut upstream),
                Pin::new(&mut client),
                &mut moved,
            ) {
                Poll::Ready(Ok(())) => down.done = true,
                Poll::Ready(Err(PipeError::Read(err))) => {
                    return Poll::Ready(End::Failed(Side::Upstream, err))
                }
                Poll::Ready(Err(PipeError::Write(err))) => {
                    return Poll::Ready(End::Failed(Side::Client, err))
                }
                Poll::Pending => {}
            }
        }
        if up.done && down.done {
            return Poll::Ready(End::Closed);
        }
        if moved {
            last_moved = Instant::now();
        }
        if fired(timer.as_mut(), last_moved + idle, cx) {
            return Poll::Ready(End::IdleTimeout);
        }
        Poll::Pending
    })
    .await;
    Relayed {
        end,
        to_client: down.bytes,
        to_upstream: up.bytes,
    }
}

enum PipeError {
    Read(io::Error),
    Write(io::Error),
}

/// One direction of a relay. Reads go through a stack buffer and are
/// written from it at once; only what the writer does not take at once is
/// kept, so an idle WebSocket holds no buffer.
struct Pipe {
    /// Bytes read and not yet written.
    pending: Bytes,
    /// Bytes were written since the last flush.
    flush: bool,
    /// The reader has closed its direction.
    eof: bool,
    /// The writer has been shut down after the reader's close.
    done: bool,
    /// Bytes carried, for the access log.
    bytes: u64,
}

impl Pipe {
    fn new(ahead: Bytes) -> Self {
        Pipe {
            bytes: ahead.len() as u64,
            pending: ahead,
            flush: false,
            eof: false,
            done: false,
        }
    }

    /// Moves what `reader` has to `writer`; Ready(Ok) once the reader has
    /// closed and the writer is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<Result<(), PipeError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        for _ in 0..MAX_READS_PER_POLL {
            while !self.pending.is_empty() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.pending))
                    .map_err(PipeError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PipeError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.pending.advance(n);
                self.flush = true;
            }
            // Released: an idle direction holds no allocation.
            self.pending = Bytes::new();
            if self.flush {
                ready!(writer.as_mut().poll_flush(cx)).map_err(PipeError::Write)?;
                self.flush = false;
            }
            if self.eof {
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(PipeError::Write)?;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [0u8; READ_SIZE];
            let mut read = ReadBuf::new(&mut stack);
            ready!(reader.as_mut().poll_read(cx, &mut read)).map_err(PipeError::Read)?;
            let data = read.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            *moved = true;
            self.bytes += data.len() as u64;
            match writer.as_mut().poll_write(cx, data) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(PipeError::Write(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    self.flush = true;
                    if n < data.len() {
                        self.pending = Bytes::copy_from_slice(&data[n..]);
                    }
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(PipeError::Write(err))),
                Poll::Pending => self.pending = Bytes::copy_from_slice(data),
            }
        }
        // More may be ready: come back after other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn new_keys_are_16_random_bytes_in_base64() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_what_came_ahead_first_and_half_closes_pass() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(
            client,
            Bytes::from_static(b"early "),
            upstream,
            Bytes::from_static(b"hello "),
            Duration::from_secs(60),
        ));
        client_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 10];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early ping");
        upstream_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello pong");
        // The client closes its direction: the upstream reads the end, and
        // can still answer.
        client_peer.shutdown().await.unwrap();
        assert_eq!(upstream_peer.read(&mut got).await.unwrap(), 0);
        upstream_peer.write_all(b"bye").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        let relayed = relay.await.unwrap();
        assert!(matches!(relayed.end, End::Closed), "{relayed:?}");
        assert_eq!((relayed.to_client, relayed.to_upstream), (13, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_ends_after_the_idle_timeout_and_traffic_keeps_it_open() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let started = Instant::now();
        let relay = tokio::spawn(relay(
            client,
            Bytes::new(),
            upstream,
            Bytes::new(),
            Duration::from_secs(10),
        ));
        let mut byte = [0u8; 1];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"x").await.unwrap();
            upstream_peer.read_exact(&mut byte).await.unwrap();
        }
        let relayed = relay.await.unwrap();
        assert!(matches!(relayed.end, End::IdleTimeout), "{relayed:?}");
        // Ten seconds after the last byte, not after the first.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(40) && elapsed < Duration::from_secs(41),
            "{elapsed:?}"
        );
    }
}
