//! Shared streams fed from Redis: the cluster's log of a shared stream
//! (`--cluster`), and Redis Streams an application writes (`--sse-redis`).
//!
//! In both, a tail task reads the Redis Stream after the newest entry this
//! instance has and the stream publishes what it reads, as it would an
//! upstream's events. For a shared stream, the instances with subscribers
//! also compete for its lease; the holder reads the upstream into the log.
//! When Redis fails, a shared stream reads its upstream on this instance
//! until Redis answers again, then rejoins the log after the last entry it
//! read (the events it sent already are skipped by ID until it is past
//! them).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Hub, LogWriter, ReadEnd, SharedStream, Sink, SinkError, Status, UntilUnused};
use crate::cluster::{Batch, Cluster, ClusterError, Lease, StreamKeys};

/// Batches of log entries read ahead of the stream.
const TAIL_QUEUE: usize = 4;
/// Added to the holder's remaining lease before asking again, so the
/// lease has expired when a successor asks.
const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// How a session on the log ended.
enum Session {
    /// The stream ends.
    Done(ReadEnd),
    /// Redis failed: go on without it.
    RedisDown(ClusterError),
}

/// The lease this instance holds for one stream, if any (counted in the
/// leases-held gauge).
struct HeldLease<'a> {
    cluster: &'a Cluster,
    token: Option<String>,
}

impl HeldLease<'_> {
    fn set(&mut self, token: String) {
        if self.token.is_none() {
            self.cluster.metrics().lease_taken();
        }
        self.token = Some(token);
    }

    fn take(&mut self) -> Option<String> {
        let token = self.token.take();
        if token.is_some() {
            self.cluster.metrics().lease_lost();
        }
        token
    }
}

/// Reads a Redis Stream from a position on a connection of its own, in a
/// task whose reads are never cut short (a cancelled `XREAD BLOCK` would
/// delay the next one on the same connection). Stops when dropped.
struct Tail {
    batches: mpsc::Receiver<Result<Batch, ClusterError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tail {
    async fn start(
        cluster: Arc<Cluster>,
        key: String,
        after: String,
    ) -> Result<Tail, ClusterError> {
        let mut conn = cluster.tail_connection().await?;
        let (tx, batches) = mpsc::channel(TAIL_QUEUE);
        let task = tokio::spawn(async move {
            let mut after = after;
            loop {
                let batch = cluster.read_after(&mut conn, &key, &after).await;
                let failed = batch.is_err();
                // Past entries that are not events too.
                if let Some(last) = batch.as_ref().ok().and_then(|b| b.last_entry.as_ref()) {
                    after.clone_from(last);
                }
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Tail { batches, task })
    }

    /// The next batch; an error ends the tail.
    async fn next(&mut self) -> Result<Batch, ClusterError> {
        match self.batches.recv().await {
            Some(batch) => batch,
            None => Err(ClusterError::Closed),
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls the reader when there is one; pending otherwise.
async fn reading(reader: &mut Option<UntilRead<'_>>) -> ReadEnd {
    match reader.as_mut() {
        Some(reader) => reader.await,
        None => std::future::pending().await,
    }
}

type UntilRead<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ReadEnd> + Send + 'a>>;

/// Where a new reader resumes the upstream: where the log ends, unless
/// this instance read further while Redis was away (its own events go on
/// from the log's last one) or the log is empty (Redis restarted).
fn resume_point(stream: &SharedStream, logged: Option<String>) -> Option<String> {
    let local = stream.resume_id();
    match logged {
        Some(logged)
            if local.as_ref().is_some_and(|l| *l != logged) && stream.state().holds(&logged) =>
        {
            local
        }
        Some(logged) => Some(logged),
        None => local,
    }
}

impl Hub {
    /// A shared stream in cluster mode, from its first subscriber here
    /// until its last one has gone.
    pub(super) async fn run_cluster(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        stream: Arc<SharedStream>,
        host: String,
        worker: usize,
    ) {
        let keys = cluster.stream_keys(&self.settings.route, &stream.key);
        let mut unused = self.until_unused(&stream);
        let mut lease = HeldLease {
            cluster: &cluster,
            token: None,
        };
        loop {
            let session = self
                .cluster_session(
                    &cluster,
                    &keys,
                    &stream,
                    &host,
                    worker,
                    &mut lease,
                    &mut unused,
                )
                .await;
            let err = match session {
                Session::Done(end) => {
                    if let Some(token) = lease.take() {
                        // Let another instance take over now rather than at expiry.
                        cluster.release(&keys, &token).await;
                    }
                    return self.finish(&stream, end);
                }
                Session::RedisDown(err) => err,
            };
            cluster.mark_down(&err);
            tracing::warn!(
                target: "ssegate::cluster",
                stream = %stream.key,
                error = %err,
                "cluster: redis unavailable; reading the upstream on this instance until it is back"
            );
            let local = tokio::select! {
                end = self.read_upstream(&stream, &host, worker, Sink::Local) => Some(end),
                () = cluster.wait_up() => None,
                () = &mut unused => Some(ReadEnd::Unused),
            };
            if let Some(end) = local {
                lease.take();
                return self.finish(&stream, end);
            }
            stream.catch_up();
            tracing::info!(target: "ssegate::cluster", stream = %stream.key, "cluster: back on the shared log");
        }
    }

    /// Serves the stream from its log while Redis answers: tails the log
    /// and, while this instance holds the lease, reads the upstream into it.
    #[allow(clippy::too_many_arguments)]
    async fn cluster_session(
        &self,
        cluster: &Arc<Cluster>,
        keys: &StreamKeys,
        stream: &Arc<SharedStream>,
        host: &str,
        worker: usize,
        lease: &mut HeldLease<'_>,
        unused: &mut UntilUnused<'_>,
    ) -> Session {
        let replay = self.settings.replay;
        let after = match self.start_of_tail(cluster, &keys.log, stream).await {
            Ok(after) => after,
            Err(err) => return Session::RedisDown(err),
        };
        let mut tail = match Tail::start(cluster.clone(), keys.log.clone(), after).await {
            Ok(tail) => tail,
            Err(err) => return Session::RedisDown(err),
        };
        let mut reader: Option<UntilRead<'_>> = None;
        let mut next_check = Instant::now();
        loop {
            tokio::select! {
                batch = tail.next() => match batch {
                    Ok(batch) => {
                        for event in batch.events {
                            stream.publish_logged(event, replay);
                        }
                    }
                    Err(err) => return Session::RedisDown(err),
                },
                () = tokio::time::sleep_until(next_check) => {
                    match cluster.acquire(keys, lease.token.as_deref()).await {
                        Ok(Lease::Held(token)) => {
                            if reader.is_none() {
                                let logged = match cluster.history(&keys.log, 1).await {
                                    Ok(last) => last.events.into_iter().next_back().and_then(|e| e.resume),
                                    Err(err) => return Session::RedisDown(err),
                                };
                                let resume = resume_point(stream, logged);
                                tracing::info!(
                                    target: "ssegate::cluster",
                                    stream = %stream.key,
                                    lease = %token,
                                    "cluster: reading the upstream"
                                );
                                let writer = LogWriter {
                                    cluster,
                                    keys,
                                    token: token.clone(),
                                    resume,
                                };
                                reader = Some(Box::pin(self.read_upstream(stream, host, worker, Sink::Log(writer))));
                            }
                            lease.set(token);
                            next_check = Instant::now() + cluster.settings().lease / 3;
                        }
                        Ok(Lease::Other(remaining)) => {
                            if lease.take().is_some() {
                                reader = None;
                                tracing::warn!(target: "ssegate::cluster", stream = %stream.key, "cluster: lease lost; another instance reads the upstream");
                            }
                            // Someone reads the upstream: the stream is live.
                            stream.status.send_if_modified(|status| {
                                let connecting = *status == Status::Connecting;
                                if connecting {
                                    *status = Status::Live(Arc::from(format!("redis:{}", keys.log)));
                                }
                                connecting
                            });
                            let wait = remaining.min(cluster.settings().lease / 2) + LEASE_MARGIN;
                            next_check = Instant::now() + wait;
                        }
                        Err(err) => return Session::RedisDown(err),
                    }
                },
                end = reading(&mut reader) => match end {
                    ReadEnd::Sink(SinkError::LeaseLost) => {
                        reader = None;
                        lease.take();
                        tracing::warn!(target: "ssegate::cluster", stream = %stream.key, "cluster: lease lost; another instance reads the upstream");
                        next_check = Instant::now();
                    }
                    ReadEnd::Sink(SinkError::Redis(err)) => return Session::RedisDown(err),
                    end => return Session::Done(end),
                },
                () = &mut *unused => return Session::Done(ReadEnd::Unused),
                () = self.shutdown.cancelled() => return Session::Done(ReadEnd::Shutdown),
            }
        }
    }

    /// Where a stream starts reading the Redis Stream `key`: after the last
    /// entry it read, when Redis was away (that also finds what was
    /// written since Redis restarted empty); the first time, after the
    /// newest entry, with the history loaded.
    async fn start_of_tail(
        &self,
        cluster: &Cluster,
        key: &str,
        stream: &SharedStream,
    ) -> Result<String, ClusterError> {
        if let Some(entry) = stream.newest_entry() {
            return Ok(entry);
        }
        let history = cluster.history(key, self.settings.replay).await?;
        let after = history
            .last_entry
            .clone()
            .unwrap_or_else(|| "0-0".to_owned());
        stream.load_history(history, self.settings.replay);
        Ok(after)
    }

    /// A stream served from the Redis Stream of its path (`--sse-redis`),
    /// plus what is published on the channel of the same name.
    pub(super) async fn run_redis(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        stream: Arc<SharedStream>,
    ) {
        let key = cluster.source_key(&stream.key);
        let mut unused = self.until_unused(&stream);
        loop {
            let err = match self
                .redis_session(&cluster, &key, &stream, &mut unused)
                .await
            {
                Ok(end) => return self.finish(&stream, end),
                Err(err) => err,
            };
            cluster.mark_down(&err);
            if *stream.status.borrow() == Status::Connecting {
                return self.fail(&stream, format!("cannot read {key}: {err}"));
            }
            tracing::warn!(target: "ssegate::cluster", stream = %stream.key, error = %err, "cluster: redis unavailable; the stream waits for it");
            tokio::select! {
                () = cluster.wait_up() => {}
                () = &mut unused => return self.finish(&stream, ReadEnd::Unused),
                () = self.shutdown.cancelled() => return self.finish(&stream, ReadEnd::Shutdown),
            }
            tracing::info!(target: "ssegate::cluster", stream = %stream.key, "cluster: back on the Redis stream");
        }
    }

    async fn redis_session(
        &self,
        cluster: &Arc<Cluster>,
        key: &str,
        stream: &Arc<SharedStream>,
        unused: &mut UntilUnused<'_>,
    ) -> Result<ReadEnd, ClusterError> {
        let replay = self.settings.replay;
        // Subscribed before the history is read: nothing falls in between.
        let mut published = cluster.subscribe(key).await?.into_on_message();
        let after = self.start_of_tail(cluster, key, stream).await?;
        let mut tail = Tail::start(cluster.clone(), key.to_owned(), after).await?;
        stream.status.send_if_modified(|status| {
            let connecting = *status == Status::Connecting;
            if connecting {
                *status = Status::Live(Arc::from(format!("redis:{key}")));
            }
            connecting
        });
        loop {
            tokio::select! {
                batch = tail.next() => {
                    for event in batch?.events {
                        stream.publish_logged(event, replay);
                    }
                }
                message = published.next() => match message {
                    Some(message) => stream.publish(crate::cluster::published(message.get_payload_bytes()), replay),
                    None => return Err(ClusterError::Closed),
                },
                () = &mut *unused => return Ok(ReadEnd::Unused),
                () = self.shutdown.cancelled() => return Ok(ReadEnd::Shutdown),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HubMetrics;
    use crate::sse::parser::ParsedEvent;

    fn publish(stream: &SharedStream, id: &str) {
        let event = ParsedEvent {
            raw: bytes::Bytes::from(format!("id: {id}\ndata: {id}\n\n")),
            id: Some(id.to_owned()),
            retry: None,
            has_data: true,
        };
        stream.publish(event, 10);
    }

    #[test]
    fn a_new_reader_resumes_where_the_log_ends_unless_it_read_further() {
        let stream = SharedStream::new("/s".into(), 4, HubMetrics::default());
        // Nothing here, nothing logged: from the start.
        assert_eq!(resume_point(&stream, None), None);
        publish(&stream, "1");
        publish(&stream, "2");
        // The log is empty (Redis restarted): where this instance is.
        assert_eq!(resume_point(&stream, None).as_deref(), Some("2"));
        // The log ends at 1, which this instance has, and it read 2 on its own.
        assert_eq!(
            resume_point(&stream, Some("1".into())).as_deref(),
            Some("2")
        );
        // The log ends at 9, which this instance has not seen: the log's.
        assert_eq!(
            resume_point(&stream, Some("9".into())).as_deref(),
            Some("9")
        );
    }
}
