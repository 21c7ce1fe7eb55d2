//! The listening socket, accepting connections for the serving threads.
//!
//! tokio's `TcpListener::accept` registers each new socket with the
//! accepting thread's event loop, and handing it to a worker means taking
//! it out again and registering it there: four `epoll_ctl` calls per
//! connection where two do. So connections are accepted here with mio,
//! unregistered, and only the worker that serves one registers it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpSocket;

/// Pending connections the kernel queues before `accept` (tokio's default).
const BACKLOG: u32 = 1024;

pub struct Listener {
    socket: AsyncFd<mio::net::TcpListener>,
}

impl Listener {
    /// Binds `addr` (SO_REUSEADDR, as tokio's `bind` does). Accepted
    /// connections have TCP_NODELAY: events are small writes, and Nagle
    /// would hold them back 40-200 ms. On Linux they inherit it from the
    /// listening socket, which saves a system call per connection.
    /// Must be called within a tokio runtime, whose event loop then
    /// watches the listener.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?.into_std()?;
        let listener = mio::net::TcpListener::from_std(listener);
        // SAFETY: the AsyncFd owns the listener, which owns its descriptor
        // and always returns the same one, open until the AsyncFd drops it.
        let socket = unsafe { AsyncFd::register(listener) }?;
        Ok(Listener { socket })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
    }

    /// The next connection: non-blocking, with TCP_NODELAY, registered
    /// with no event loop yet.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.socket.readable().await?;
            // Err: nothing to accept after all; readiness was cleared.
            if let Ok(accepted) = ready.try_io(|socket| socket.get_ref().accept()) {
                let (tcp, peer) = accepted?;
                let tcp = std::net::TcpStream::from(OwnedFd::from(tcp));
                #[cfg(not(target_os = "linux"))]
                tcp.set_nodelay(true)?;
                return Ok((tcp, peer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_are_nonblocking_with_nodelay_and_keep_their_bytes() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not set");

        // Non-blocking, so a worker's runtime can take it as it is.
        let mut accepted = tokio::net::TcpStream::from_std(accepted).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error() {
        let first = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = first.local_addr().unwrap();
        assert!(Listener::bind(taken).is_err());
    }
}
