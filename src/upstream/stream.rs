//! `UpstreamStream`: one upstream connection, whichever transport carries
//! it (TCP, TLS over TCP, a Unix domain socket), and `Endpoint`, where a
//! target listens. Everything above this module (the exchange, the response
//! body, the pool, health checks, shared streams) sees one type, so each
//! transport gets every behaviour and none has a code path of its own.
//!
//! An idle event stream's upstream connection is most of what the proxy
//! holds, so the enum stays as small as a `TcpStream` plus its tag: the TLS
//! variant (a rustls connection is a few KiB) is boxed.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// Where a target listens, as its URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://`: TCP to `host:port`.
    Tcp(String),
    /// `https://`: TLS over TCP to `address` (`host:port`), the
    /// certificate checked for `name` (the URL's host name or IP address).
    Tls {
        address: String,
        name: ServerName<'static>,
    },
    /// `unix:`: a Unix domain socket.
    Unix(PathBuf),
}

impl Endpoint {
    /// The Host header of requests the proxy makes itself (health checks):
    /// `host:port`, or `localhost` for a socket, as Docker and curl use.
    pub fn host_header(&self) -> &str {
        match self {
            Endpoint::Tcp(address) | Endpoint::Tls { address, .. } => address,
            Endpoint::Unix(_) => "localhost",
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Endpoint::Tls { .. })
    }
}

/// The address connected to, for error messages.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(address) | Endpoint::Tls { address, .. } => f.write_str(address),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One upstream connection.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    /// Boxed: the rustls state would make every connection as large.
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// Runs `$body` with `$s` bound to the transport inside `$stream`.
macro_rules! each {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            UpstreamStream::Tcp($s) => $body,
            UpstreamStream::Tls($s) => $body,
            UpstreamStream::Unix($s) => $body,
        }
    };
}

impl UpstreamStream {
    /// The reading and the writing side, for an exchange that writes the
    /// request while it reads the response. TCP and Unix sockets split by
    /// borrowing (no allocation, no lock: the common case stays as cheap as
    /// before there were other transports). A TLS session is one state
    /// machine for both directions, so its halves share it through
    /// `tokio::io::split` (one allocation and an uncontended lock per
    /// exchange, small next to the record encryption).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            UpstreamStream::Tcp(tcp) => {
                let (read, write) = tcp.split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            UpstreamStream::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
            UpstreamStream::Unix(unix) => {
                let (read, write) = unix.split();
                (ReadHalf::Unix(read), WriteHalf::Unix(write))
            }
        }
    }

    /// Ready when a read may make progress, without a buffer to read into
    /// (an idle event stream then holds none). For TLS it is always ready:
    /// rustls may hold decrypted bytes or an error the socket's readiness
    /// does not show, so the caller reads, and lets go of its buffer if
    /// the read is pending.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            UpstreamStream::Tcp(tcp) => tcp.poll_read_ready(cx),
            UpstreamStream::Tls(_) => Poll::Ready(Ok(())),
            UpstreamStream::Unix(unix) => unix.poll_read_ready(cx),
        }
    }

    /// Whether an idle connection may carry another request: it must have
    /// nothing to read, neither the upstream's close nor stray bytes. For
    /// TLS, rustls must hold no unread data and no close_notify, and the
    /// TCP socket under it nothing either. A byte read here is lost, but a
    /// connection with one is not reused anyway.
    pub fn is_reusable(&self) -> bool {
        fn would_block(read: io::Result<usize>) -> bool {
            matches!(read, Err(err) if err.kind() == io::ErrorKind::WouldBlock)
        }
        let mut byte = [0u8; 1];
        match self {
            UpstreamStream::Tcp(tcp) => would_block(tcp.try_read(&mut byte)),
            UpstreamStream::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                session.wants_read() && would_block(tcp.try_read(&mut byte))
            }
            UpstreamStream::Unix(unix) => would_block(unix.try_read(&mut byte)),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The reading side of a split `UpstreamStream`.
pub enum ReadHalf<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
    Unix(tokio::net::unix::ReadHalf<'a>),
}

/// The writing side of a split `UpstreamStream`.
pub enum WriteHalf<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
    Unix(tokio::net::unix::WriteHalf<'a>),
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

macro_rules! each_write_half {
    ($half:expr, $s:ident => $body:expr) => {
        match $half {
            WriteHalf::Tcp($s) => $body,
            WriteHalf::Tls($s) => $body,
            WriteHalf::Unix($s) => $body,
        }
    };
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_write_half!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_write_half!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each_write_half!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_write_half!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_write_half!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches an unboxed TLS variant: every pooled connection and every
    /// idle event stream would carry the size of a rustls session.
    #[test]
    fn the_stream_is_no_larger_than_a_tcp_stream_and_its_tag() {
        let tcp = std::mem::size_of::<TcpStream>();
        let stream = std::mem::size_of::<UpstreamStream>();
        assert!(
            stream <= tcp + 8,
            "UpstreamStream is {stream} bytes, TcpStream {tcp}"
        );
    }
}
