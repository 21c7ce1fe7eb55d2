//! Idle upstream keep-alive connections, one pool per serving thread: a
//! connection is registered with the event loop of the thread that opened
//! it and stays with that thread's requests.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::stream::UpstreamStream;

/// Idle connections to one upstream, most recently used last.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    stream: UpstreamStream,
    since: Instant,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    fn idle(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A panic elsewhere cannot leave a list of sockets inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that is still open, if any.
    /// Last in, first out: the warmest connection is the least likely to
    /// have hit the upstream's keep-alive timeout.
    pub fn take(&self) -> Option<UpstreamStream> {
        let mut idle = self.idle();
        while let Some(conn) = idle.pop_back() {
            if conn.since.elapsed() >= self.idle_timeout {
                // Everything older has expired too.
                idle.clear();
                return None;
            }
            if conn.stream.is_reusable() {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end.
    pub fn put(&self, stream: UpstreamStream) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle();
        let expired = idle
            .iter()
            .take_while(|conn| conn.since.elapsed() >= self.idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.idle().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UnixStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn tcp_port(stream: &UpstreamStream) -> u16 {
        match stream {
            UpstreamStream::Tcp(tcp) => tcp.local_addr().unwrap().port(),
            other => panic!("not TCP: {other:?}"),
        }
    }

    /// A TLS connection as `Upstream::connect` makes one, and the server's
    /// end of it, after the server sent `sent` and the client read its
    /// first byte: that takes in the session tickets a TLS 1.3 server sends
    /// after the handshake, as reading a response does.
    async fn tls_pair(
        listener: &TcpListener,
        sent: &[u8],
    ) -> (UpstreamStream, tokio_rustls::server::TlsStream<TcpStream>) {
        let (cert, key) = crate::tls::generate_self_signed(&["localhost".to_owned()], 1).unwrap();
        let key = crate::tls::certified_key_from_pem(&cert, &key).unwrap();
        let server = crate::tls::server_config(crate::tls::CertStore::new(key)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
            .unwrap();
        let client = crate::tls::client::client_config(roots).unwrap();
        let (client_tcp, server_tcp) = pair(listener).await;
        let name = ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            TlsConnector::from(client).connect(name, client_tcp),
            TlsAcceptor::from(server).accept(server_tcp)
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        server.write_all(sent).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(client.read_u8().await.unwrap(), sent[0]);
        (UpstreamStream::Tls(Box::new(client)), server)
    }

    /// Waits until the socket under `stream` has something to read.
    async fn readable(stream: &UpstreamStream) {
        match stream {
            UpstreamStream::Tcp(tcp) => tcp.readable().await.unwrap(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.readable().await.unwrap(),
            UpstreamStream::Unix(unix) => unix.readable().await.unwrap(),
        }
    }

    #[tokio::test]
    async fn the_warmest_open_connection_is_reused_and_closed_ones_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, Duration::from_secs(60));
        let (first, _first_server) = pair(&listener).await;
        let (second, mut second_server) = pair(&listener).await;
        let (first, second) = (UpstreamStream::Tcp(first), UpstreamStream::Tcp(second));
        let first_port = tcp_port(&first);
        // The upstream closes the newer one: it is skipped.
        second_server.shutdown().await.unwrap();
        drop(second_server);
        readable(&second).await;
        pool.put(first);
        pool.put(second);
        let taken = pool.take().expect("the open connection");
        assert_eq!(tcp_port(&taken), first_port);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_expires_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(1, Duration::from_secs(60));
        let (a, _a) = pair(&listener).await;
        let (b, _b) = pair(&listener).await;
        pool.put(UpstreamStream::Tcp(a));
        pool.put(UpstreamStream::Tcp(b));
        assert_eq!(pool.len(), 1);

        let expiring = Pool::new(4, Duration::ZERO);
        let (c, _c) = pair(&listener).await;
        expiring.put(UpstreamStream::Tcp(c));
        assert!(expiring.take().is_none());
    }

    /// Catches a liveness check that only knows TCP: a closed or chatty
    /// Unix socket would be reused and the request sent into it lost.
    #[tokio::test]
    async fn unix_connections_that_were_closed_or_got_stray_bytes_are_skipped() {
        let pool = Pool::new(4, Duration::from_secs(60));
        let (open, _open_peer) = UnixStream::pair().unwrap();
        let (closed, closed_peer) = UnixStream::pair().unwrap();
        let (chatty, mut chatty_peer) = UnixStream::pair().unwrap();
        let (open, closed, chatty) = (
            UpstreamStream::Unix(open),
            UpstreamStream::Unix(closed),
            UpstreamStream::Unix(chatty),
        );
        drop(closed_peer);
        chatty_peer.write_all(b"HTTP/1.1 408").await.unwrap();
        readable(&closed).await;
        readable(&chatty).await;
        pool.put(open);
        pool.put(closed);
        pool.put(chatty);
        let taken = pool.take().expect("the open connection");
        assert!(matches!(taken, UpstreamStream::Unix(_)));
        assert!(pool.take().is_none());
    }

    /// Catches a liveness check that looks only at rustls or only at the
    /// socket: a close_notify and stray bytes sit in the socket until read,
    /// unseen by rustls; bytes rustls has decrypted but nobody read are
    /// gone from the socket.
    #[tokio::test]
    async fn tls_connections_that_were_closed_or_got_stray_bytes_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(5, Duration::from_secs(60));
        let (open, _open_server) = tls_pair(&listener, b"x").await;
        let (closed, mut closed_server) = tls_pair(&listener, b"x").await;
        let (chatty, mut chatty_server) = tls_pair(&listener, b"x").await;
        // One record: rustls took in both bytes, the client read one.
        let (unread, _unread_server) = tls_pair(&listener, b"xy").await;
        // close_notify, with the TCP connection still open.
        closed_server.get_mut().1.send_close_notify();
        closed_server.flush().await.unwrap();
        chatty_server.write_all(b"HTTP/1.1 408").await.unwrap();
        chatty_server.flush().await.unwrap();
        readable(&closed).await;
        readable(&chatty).await;
        let open_port = match &open {
            UpstreamStream::Tls(tls) => tls.get_ref().0.local_addr().unwrap().port(),
            other => panic!("not TLS: {other:?}"),
        };
        pool.put(open);
        pool.put(closed);
        pool.put(chatty);
        pool.put(unread);
        let taken = pool.take().expect("the open connection");
        match &taken {
            UpstreamStream::Tls(tls) => {
                assert_eq!(tls.get_ref().0.local_addr().unwrap().port(), open_port)
            }
            other => panic!("not TLS: {other:?}"),
        }
        assert!(pool.take().is_none());
    }
}
