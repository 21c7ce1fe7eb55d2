//! Serving threads, each with a single-threaded runtime of its own, like
//! nginx's worker processes.
//!
//! The accept loop gives each new connection to the thread with the fewest
//! open connections, and the connection stays there: serving it wakes no
//! other thread and shares no run queue, and its upstream connections are
//! registered with the same thread's event loop. Counting open connections
//! rather than taking turns keeps long-lived event streams spread evenly.
//!
//! Thread 0 is the runtime that runs the accept loop; the others are started
//! here and stop when [`Workers`] is dropped.

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least loaded worker starts, so ties rotate.
    next: AtomicUsize,
    /// Cancelled on drop: the started threads end their runtimes.
    stop: CancellationToken,
}

struct Worker {
    handle: Handle,
    open: Arc<AtomicUsize>,
}

/// A worker chosen for a new connection.
pub struct Assigned {
    /// The worker's index, from 0 to `threads - 1`.
    pub index: usize,
    /// The runtime to spawn the connection's task on.
    pub handle: Handle,
    /// Counts the connection as open on this worker until dropped.
    pub open: OpenConnection,
}

/// Counts one open connection; the count goes down when this is dropped.
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// The current runtime as worker 0, and `threads - 1` more on threads of
    /// their own. Fails outside a tokio runtime.
    pub fn start(threads: NonZeroUsize) -> io::Result<Self> {
        let current = Handle::try_current().map_err(io::Error::other)?;
        // Built first, so that an early return stops the threads started so far.
        let mut started = Workers {
            workers: vec![Worker::new(current)],
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        };
        for index in 1..threads.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = started.stop.clone();
            std::thread::Builder::new()
                .name(format!("ssegate-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Whatever still runs here was given up by the drain;
                    // blocking tasks (DNS lookups) are not waited for.
                    runtime.shutdown_background();
                })?;
            started.workers.push(Worker::new(handle));
        }
        Ok(started)
    }

    /// The worker with the fewest open connections, counting the new one.
    pub fn assign(&self) -> Assigned {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let counts: Vec<usize> = self
            .workers
            .iter()
            .map(|worker| worker.open.load(Ordering::Relaxed))
            .collect();
        let index = least_loaded(&counts, start);
        let worker = &self.workers[index];
        worker.open.fetch_add(1, Ordering::Relaxed);
        Assigned {
            index,
            handle: worker.handle.clone(),
            open: OpenConnection(worker.open.clone()),
        }
    }
}

impl Worker {
    fn new(handle: Handle) -> Self {
        Worker {
            handle,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The index of the smallest count; among equal ones, the first at or after
/// `start` (modulo the length), so that ties take turns.
fn least_loaded(counts: &[usize], start: usize) -> usize {
    let len = counts.len();
    (0..len)
        .map(|offset| (start + offset) % len)
        .min_by_key(|&index| counts[index])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fewest_open_connections_win() {
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        assert_eq!(least_loaded(&[3, 1, 2], 2), 1);
        assert_eq!(least_loaded(&[0, 5], 1), 0);
    }

    #[test]
    fn ties_take_turns() {
        assert_eq!(least_loaded(&[2, 2, 2], 0), 0);
        assert_eq!(least_loaded(&[2, 2, 2], 1), 1);
        assert_eq!(least_loaded(&[2, 2, 2], 5), 2);
        assert_eq!(least_loaded(&[4, 2, 2], 3), 1);
    }

    #[test]
    fn one_worker_takes_everything() {
        assert_eq!(least_loaded(&[7], 42), 0);
    }

    #[tokio::test]
    async fn connections_spread_over_threads_and_are_counted_until_closed() {
        let workers = Workers::start(NonZeroUsize::new(2).unwrap()).unwrap();
        let first = workers.assign();
        let second = workers.assign();
        assert_ne!(first.index, second.index);
        // Worker 1 runs on a thread of its own.
        let on_other = if first.index == 1 { &first } else { &second };
        let name = on_other
            .handle
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("ssegate-1"));

        // While `first` stays open, its worker is the busier one.
        let first_index = first.index;
        drop(second);
        let third = workers.assign();
        assert_ne!(third.index, first_index);
        drop(first);
        drop(third);
        let counts: Vec<usize> = workers
            .workers
            .iter()
            .map(|worker| worker.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [0, 0]);
    }
}
