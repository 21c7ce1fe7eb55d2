//! Client connections after the TLS handshake: HTTP/1.1 (`h1`, ssegate's
//! own) or HTTP/2 (`h2`, hyper's), chosen once per connection by ALPN.
//! Both hand requests to `proxy::Proxy::handle` and write what it returns.

pub mod h1;
pub mod h2;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use tokio::time::Sleep;

/// The client connection as both protocols serve it.
pub type ClientIo = SendTimeout<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection whose writes fail with `TimedOut` when the peer takes no
/// bytes for `timeout` (its receive window stays full), so a client that
/// stops reading does not pin its connection, task and upstream forever
/// (nginx's `send_timeout`). The timer exists only while a write waits.
pub struct SendTimeout<IO> {
    io: IO,
    timeout: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<IO> SendTimeout<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        SendTimeout {
            io,
            timeout,
            blocked: None,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Passes a write's progress on; while it waits, runs the timer.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("client took no data for {timeout:?}"),
                )))
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_times_out() {
        let (client, _server) = tokio::io::duplex(16);
        let mut io = SendTimeout::new(client, Duration::from_secs(60));
        io.write_all(b"fits").await.unwrap();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 16];
            while got.len() < 256 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let n = server.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            got.len()
        });
        let mut io = SendTimeout::new(client, Duration::from_secs(60));
        io.write_all(&[7u8; 256]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 256);
    }
}
