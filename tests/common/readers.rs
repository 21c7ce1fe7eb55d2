//! Reading what the proxy sent back: whole bodies, event streams split into
//! events, raw event-stream bytes, and the proxy's own error answers.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::WAIT_LIMIT;

/// Reads a whole response body; fails unless it ends within `WAIT_LIMIT`.
pub async fn read_body(body: Incoming) -> Bytes {
    read_body_within(body, WAIT_LIMIT).await
}

/// Reads a whole response body; fails unless it ends within `limit`.
pub async fn read_body_within(body: Incoming, limit: Duration) -> Bytes {
    tokio::time::timeout(limit, body.collect())
        .await
        .expect("the whole body in time")
        .expect("body")
        .to_bytes()
}

/// How reading a body to its end stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// No frame and no end within the silence allowed.
    StillOpen,
    /// The body ended normally.
    Clean,
    /// The body failed: the proxy cut it.
    Cut,
}

/// Reads `body` until it ends, fails, or stays silent for `silence`; returns
/// the bytes received and how it stopped.
pub async fn read_body_until_end(mut body: Incoming, silence: Duration) -> (Vec<u8>, BodyEnd) {
    let mut received = Vec::new();
    let end = loop {
        match tokio::time::timeout(silence, body.frame()).await {
            Err(_) => break BodyEnd::StillOpen,
            Ok(None) => break BodyEnd::Clean,
            Ok(Some(Err(_))) => break BodyEnd::Cut,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
            }
        }
    };
    (received, end)
}

/// Asserts an error answer of the proxy itself: `status`, text/plain, and a
/// short body that starts with the status code.
pub async fn assert_plain_error(response: Response<Incoming>, status: u16) {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .expect("content-type")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = tokio::time::timeout(Duration::from_secs(5), read_body(response.into_body()))
        .await
        .unwrap_or_else(|_| panic!("the {status} body is complete"));
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with(&status.to_string()), "{body:?}");
    assert!(body.len() < 100, "{body:?}");
}

// ---------------------------------------------------------------- events

/// Reads an event-stream body frame by frame and splits it into events
/// (blank-line separated), recording when each complete event arrived.
pub struct EventReader {
    body: Incoming,
    buffer: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub text: String,
    pub at: Instant,
    /// How many complete events arrived in the same read as this one.
    pub batch: usize,
}

impl EventReader {
    pub fn new(body: Incoming) -> Self {
        EventReader {
            body,
            buffer: Vec::new(),
        }
    }

    /// The next complete event (the text before its blank line), or None at
    /// the end of the stream. Gives up after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Option<ReceivedEvent> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<ReceivedEvent> = Vec::new();
        loop {
            if let Some(event) = self.take_event(Instant::now(), 1) {
                pending.push(event);
                return pending.pop();
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            let frame = frame.ok()?;
            if let Some(data) = frame.data_ref() {
                self.buffer.extend_from_slice(data);
            }
        }
    }

    /// Reads frames until `count` events have arrived; each records how many
    /// events completed in the same frame, so batching shows.
    pub async fn events(&mut self, count: usize, limit: Duration) -> Vec<ReceivedEvent> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while out.len() < count {
            let now = Instant::now();
            let mut batch = Vec::new();
            while let Some(event) = self.take_event(now, 0) {
                batch.push(event);
            }
            let n = batch.len();
            out.extend(batch.into_iter().map(|mut e| {
                e.batch = n;
                e
            }));
            if out.len() >= count {
                break;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        out
    }

    fn take_event(&mut self, at: Instant, batch: usize) -> Option<ReceivedEvent> {
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let text = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
        self.buffer.drain(..end + 2);
        Some(ReceivedEvent { text, at, batch })
    }

    /// Waits for the end of the stream; true if it ended cleanly.
    pub async fn wait_end(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(None) => return true,
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
    }

    pub fn leftover(&self) -> &[u8] {
        &self.buffer
    }
}

// ---------------------------------------------------------------- raw bytes

/// Reads an event-stream body as raw bytes, for tests about what exactly is
/// on the wire (heartbeats, half-written events).
pub struct RawReader {
    pub body: Incoming,
    pub raw: Vec<u8>,
}

impl RawReader {
    pub fn new(body: Incoming) -> Self {
        RawReader {
            body,
            raw: Vec::new(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Reads until `done` holds for the bytes so far; `what` names the wait
    /// in the failure message.
    pub async fn read_until(&mut self, what: &str, done: impl Fn(&[u8]) -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !done(&self.raw) {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.raw.extend_from_slice(data);
                    }
                }
                Ok(Some(Err(err))) => panic!("{what}: body failed ({err}) after {:?}", self.text()),
                Ok(None) => panic!("{what}: stream ended after {:?}", self.text()),
                Err(_) => panic!("{what}: timed out after {:?}", self.text()),
            }
        }
    }

    /// Reads until the bytes so far end with `tail`.
    pub async fn read_until_ends_with(&mut self, tail: &str) {
        self.read_until(&format!("waiting for {tail:?}"), |raw| {
            raw.ends_with(tail.as_bytes())
        })
        .await;
    }

    /// Reads to the end of the body, which must end cleanly.
    pub async fn read_to_end(&mut self) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.raw.extend_from_slice(data);
                    }
                }
                Ok(None) => return,
                Ok(Some(Err(err))) => panic!("body failed ({err}) after {:?}", self.text()),
                Err(_) => panic!("stream did not end; got {:?}", self.text()),
            }
        }
    }
}
