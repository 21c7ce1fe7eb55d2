//! Idle upstream keep-alive connections, one pool per serving thread: a
//! connection is registered with the event loop of the thread that opened
//! it and stays with that thread's requests.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections to one upstream, most recently used last.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
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
    pub fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle();
        while let Some(conn) = idle.pop_back() {
            if conn.since.elapsed() >= self.idle_timeout {
                // Everything older has expired too.
                idle.clear();
                return None;
            }
            if is_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end.
    pub fn put(&self, stream: TcpStream) {
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

/// Whether an idle connection is still open: it must have nothing to read
/// (neither the upstream's close nor stray bytes).
fn is_open(stream: &TcpStream) -> bool {
    matches!(
        stream.try_read(&mut [0u8; 1]),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_warmest_open_connection_is_reused_and_closed_ones_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, Duration::from_secs(60));
        let (first, _first_server) = pair(&listener).await;
        let (second, mut second_server) = pair(&listener).await;
        let first_port = first.local_addr().unwrap().port();
        // The upstream closes the newer one: it is skipped.
        second_server.shutdown().await.unwrap();
        drop(second_server);
        second.readable().await.unwrap();
        pool.put(first);
        pool.put(second);
        let taken = pool.take().expect("the open connection");
        assert_eq!(taken.local_addr().unwrap().port(), first_port);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_expires_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(1, Duration::from_secs(60));
        let (a, _a) = pair(&listener).await;
        let (b, _b) = pair(&listener).await;
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.len(), 1);

        let expiring = Pool::new(4, Duration::ZERO);
        let (c, _c) = pair(&listener).await;
        expiring.put(c);
        assert!(expiring.take().is_none());
    }
}
