//! Raw HTTP/1.1 on a socket, for tests about the exact bytes on the wire:
//! a buffered connection that reads response heads and decodes chunked
//! bodies one chunk at a time, and a raw upstream that hands each accepted
//! connection (with its request head) to the test, which then writes
//! whatever response bytes it wants.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::{tls_connect, WAIT_LIMIT};

// ---------------------------------------------------------------- heads

/// A request or response head as it was on the wire: the start line and the
/// header fields in order, names lowercased, values trimmed.
#[derive(Debug, Clone)]
pub struct RawHead {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    /// The whole head, for failure messages.
    pub raw: String,
}

impl RawHead {
    /// Parses a head that ends with its blank line.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let text = raw
            .strip_suffix("\r\n\r\n")
            .ok_or_else(|| format!("head does not end in CRLF CRLF: {raw:?}"))?;
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line without a colon: {line:?} in {raw:?}"))?;
            if name.is_empty() || name.trim() != name {
                return Err(format!("bad header name {name:?} in {raw:?}"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(RawHead {
            start_line,
            headers,
            raw,
        })
    }

    /// The status code of a response head.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.start_line))
    }

    /// Every value of the header `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the header `name`, which must appear at most once.
    pub fn get(&self, name: &str) -> Option<&str> {
        let values = self.all(name);
        assert!(
            values.len() <= 1,
            "header {name} appears {} times in {:?}",
            values.len(),
            self.raw
        );
        values.first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

/// A whole response read from a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub head: RawHead,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// The data of each chunk when the body was chunked.
    pub chunks: Option<Vec<Vec<u8>>>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// ---------------------------------------------------------------- chunks

/// What reading the next chunk of a chunked body found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkRead {
    /// A data chunk.
    Data(Vec<u8>),
    /// The last chunk, exactly `0\r\n\r\n` (no extensions, no trailers).
    Last,
    /// The peer closed the connection (possibly in the middle of a chunk).
    Closed,
    /// Nothing complete arrived within the time allowed.
    Silent,
}

/// Parses one chunk at the start of `buf`: None when incomplete.
fn parse_chunk(buf: &[u8]) -> Result<Option<(ChunkRead, usize)>, String> {
    let Some(line_end) = find(buf, b"\r\n") else {
        if buf.len() > 64 {
            return Err(format!(
                "no chunk-size line: {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let digits = line.split(';').next().unwrap_or_default();
    let size =
        usize::from_str_radix(digits, 16).map_err(|_| format!("bad chunk-size line {line:?}"))?;
    let data_start = line_end + 2;
    if size == 0 {
        if buf.len() < data_start + 2 {
            return Ok(None);
        }
        if line != "0" || &buf[data_start..data_start + 2] != b"\r\n" {
            return Err(format!(
                "the last chunk is not exactly 0 CRLF CRLF: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(data_start + 64)])
            ));
        }
        return Ok(Some((ChunkRead::Last, data_start + 2)));
    }
    if buf.len() < data_start + size + 2 {
        return Ok(None);
    }
    if &buf[data_start + size..data_start + size + 2] != b"\r\n" {
        return Err(format!(
            "chunk of {size} bytes not followed by CRLF: {:?}",
            String::from_utf8_lossy(buf)
        ));
    }
    let data = buf[data_start..data_start + size].to_vec();
    Ok(Some((ChunkRead::Data(data), data_start + size + 2)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `data` as one chunk of a chunked body.
pub fn chunk_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------- connections

enum Fill {
    Data,
    Closed,
    TimedOut,
}

/// A raw byte stream with a read buffer: write requests (or responses) as
/// bytes, read heads and bodies back.
pub struct RawConn<S> {
    pub io: S,
    buf: Vec<u8>,
}

/// A raw HTTP/1.1 connection to the proxy over TLS.
pub type TlsConn = RawConn<TlsStream<TcpStream>>;

/// A raw TLS connection to the proxy with the given ALPN.
pub async fn raw_connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsConn {
    RawConn::new(tls_connect(addr, alpn).await)
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(io: S) -> Self {
        RawConn {
            io,
            buf: Vec::new(),
        }
    }

    /// A connection of which `buf` has been read already.
    pub fn with_buffered(io: S, buf: Vec<u8>) -> Self {
        RawConn { io, buf }
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Writes and flushes `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT_LIMIT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .expect("write in time")
        .expect("write");
    }

    /// Writes and flushes `bytes`; false if the peer is gone.
    pub async fn try_write(&mut self, bytes: &[u8]) -> bool {
        let written = tokio::time::timeout(WAIT_LIMIT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await;
        matches!(written, Ok(Ok(())))
    }

    async fn fill(&mut self, deadline: Instant) -> Fill {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
            Err(_) => Fill::TimedOut,
            // A TCP close without TLS close_notify is an error: closed too.
            Ok(Ok(0)) | Ok(Err(_)) => Fill::Closed,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
        }
    }

    /// Reads one head (through its blank line); an error if the peer closed
    /// or nothing complete arrived by `deadline`.
    pub async fn try_read_head(&mut self, deadline: Instant) -> Result<RawHead, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return RawHead::parse(&head);
            }
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => {
                    return Err(format!(
                        "closed before a complete head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Fill::TimedOut => {
                    return Err(format!(
                        "no complete head in time; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
            }
        }
    }

    /// Reads one head; fails unless it arrives within `WAIT_LIMIT`.
    pub async fn read_head(&mut self) -> RawHead {
        let deadline = Instant::now() + WAIT_LIMIT;
        self.try_read_head(deadline)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Reads a response head, skipping interim (1xx) responses.
    pub async fn read_response_head(&mut self) -> RawHead {
        loop {
            let head = self.read_head().await;
            if !(100..200).contains(&head.status()) {
                return head;
            }
        }
    }

    /// The next chunk of a chunked body, waiting at most `limit`.
    pub async fn try_chunk(&mut self, limit: Duration) -> ChunkRead {
        let deadline = Instant::now() + limit;
        loop {
            match parse_chunk(&self.buf) {
                Ok(Some((chunk, used))) => {
                    self.buf.drain(..used);
                    return chunk;
                }
                Ok(None) => {}
                Err(err) => panic!("{err}"),
            }
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => return ChunkRead::Closed,
                Fill::TimedOut => return ChunkRead::Silent,
            }
        }
    }

    /// The next data chunk; fails on anything else within `WAIT_LIMIT`.
    pub async fn chunk(&mut self) -> Vec<u8> {
        match self.try_chunk(WAIT_LIMIT).await {
            ChunkRead::Data(data) => data,
            other => panic!("expected a data chunk, got {other:?}"),
        }
    }

    /// The next data chunk, as text.
    pub async fn chunk_text(&mut self) -> String {
        String::from_utf8(self.chunk().await).expect("UTF-8 chunk")
    }

    /// Reads the last chunk (`0\r\n\r\n`); fails on anything else.
    pub async fn last_chunk(&mut self) {
        match self.try_chunk(WAIT_LIMIT).await {
            ChunkRead::Last => {}
            other => panic!("expected the last chunk, got {other:?}"),
        }
    }

    /// Data chunks up to and including the last chunk, concatenated.
    pub async fn chunks_to_end(&mut self) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        loop {
            match self.try_chunk(WAIT_LIMIT).await {
                ChunkRead::Data(data) => chunks.push(data),
                ChunkRead::Last => return chunks,
                other => panic!("expected more chunks after {chunks:?}, got {other:?}"),
            }
        }
    }

    /// Exactly `n` body bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT_LIMIT;
        while self.buf.len() < n {
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => panic!(
                    "closed after {} of {n} body bytes: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
                Fill::TimedOut => panic!(
                    "only {} of {n} body bytes in time: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads a whole response: interim responses skipped, the body framed by
    /// Content-Length or chunked encoding, or none at all for 204, 304 and
    /// (with `head_request`) a HEAD request. A body delimited by the end of
    /// the connection is read to that end.
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let head = self.read_response_head().await;
        let status = head.status();
        if head_request || status == 204 || status == 304 {
            return RawResponse {
                head,
                body: Vec::new(),
                chunks: None,
            };
        }
        if let Some(te) = head.get("transfer-encoding") {
            assert_eq!(te, "chunked", "{:?}", head.raw);
            let chunks = self.chunks_to_end().await;
            return RawResponse {
                head,
                body: chunks.concat(),
                chunks: Some(chunks),
            };
        }
        if let Some(length) = head.get("content-length") {
            let length: usize = length.parse().expect("numeric content-length");
            let body = self.read_exact(length).await;
            return RawResponse {
                head,
                body,
                chunks: None,
            };
        }
        let (body, closed) = self.read_to_close(WAIT_LIMIT).await;
        assert!(closed, "close-delimited body did not end: {:?}", head.raw);
        RawResponse {
            head,
            body,
            chunks: None,
        }
    }

    /// Reads until the peer closes or `limit` passes: what arrived (buffered
    /// bytes included) and whether it closed.
    pub async fn read_to_close(&mut self, limit: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + limit;
        loop {
            match self.fill(deadline).await {
                Fill::Data => {}
                Fill::Closed => return (std::mem::take(&mut self.buf), true),
                Fill::TimedOut => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// Asserts that the peer closes within `WAIT_LIMIT` without sending more.
    pub async fn assert_closed(&mut self, what: &str) {
        let (rest, closed) = self.read_to_close(WAIT_LIMIT).await;
        assert!(closed, "{what}: the connection stayed open");
        assert!(
            rest.is_empty(),
            "{what}: unexpected bytes before the close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Asserts that nothing arrives (and the peer does not close) for `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: bytes already waiting: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.fill(Instant::now() + quiet).await {
            Fill::TimedOut => {}
            Fill::Data => panic!(
                "{what}: unexpected bytes {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Fill::Closed => panic!("{what}: the connection closed"),
        }
    }
}

// ---------------------------------------------------------------- raw upstream

/// One connection the raw upstream accepted, after its first request head.
pub struct RawUpstreamConn {
    /// The connection's number: 1 for the first the upstream accepted.
    pub id: usize,
    pub request: RawHead,
    pub conn: RawConn<TcpStream>,
}

impl RawUpstreamConn {
    /// Writes raw response bytes to the proxy.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.conn.write(bytes).await;
    }

    /// Writes `data` as one chunk of a chunked body.
    pub async fn write_chunk(&mut self, data: &str) {
        self.conn.write(&chunk_bytes(data.as_bytes())).await;
    }
}

/// A plain-TCP upstream that hands every connection, with the request head
/// it starts with, to the test: a `TestUpstream` whose every reply is
/// `Reply::hand_over`. Stops accepting on Drop.
pub struct RawUpstream {
    pub addr: SocketAddr,
    upstream: super::TestUpstream,
}

impl RawUpstream {
    pub async fn start() -> Self {
        let upstream = super::TestUpstream::builder()
            .otherwise(super::Reply::hand_over())
            .start()
            .await;
        RawUpstream {
            addr: upstream.addr,
            upstream,
        }
    }

    /// The next request head the upstream receives, on its connection.
    pub async fn next(&mut self) -> RawUpstreamConn {
        self.upstream.next_conn().await
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.upstream.accepts()
    }
}

// ---------------------------------------------------------------- dates

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994
/// 08:49:37 GMT`, RFC 9110 §5.6.7), or None if `text` is not one. The
/// weekday must match the date. httpdate also reads the two obsolete
/// formats, so only a date it writes back unchanged counts.
pub fn parse_imf_fixdate(text: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(text).ok()?;
    if httpdate::fmt_http_date(time) != text {
        return None;
    }
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
}
