//! A minimal HTTP/1.1 GET client for the request/response load: it writes
//! each request and parses each response itself (httparse), in the task
//! that asked, as wrk does. One write and, for a small response, one read
//! per request.
//!
//! Why not hyper's client: it drives each connection from a second task,
//! so every request crosses two tasks (and often the load generator's two
//! threads). The load generator shares the two cores with the proxy it
//! measures, and with hyper's client it spent more CPU per keep-alive
//! request than some of the proxies; whatever it spends is taken from the
//! proxy and flattens the differences between peers.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Response head fields looked at; a response with more fails.
const MAX_HEADERS: usize = 64;
/// Read size: one full TLS record.
const READ_SIZE: usize = 16 * 1024;

/// What a response said, once its body has been read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The server closes the connection after this response.
    pub closes: bool,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// One HTTP/1.1 connection sending GETs for one path, one at a time.
pub struct GetConnection<IO> {
    io: IO,
    /// The encoded request, the same every time.
    request: Vec<u8>,
    /// Read from the connection and not yet parsed.
    buf: BytesMut,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> GetConnection<IO> {
    /// `close` asks the server to close the connection after each response.
    pub fn new(io: IO, path: &str, accept: &str, close: bool) -> Self {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: {accept}\r\ncache-control: no-cache\r\n"
        );
        if close {
            request.push_str("connection: close\r\n");
        }
        request.push_str("\r\n");
        GetConnection {
            io,
            request: request.into_bytes(),
            buf: BytesMut::new(),
        }
    }

    /// Sends the GET and reads its whole response.
    pub async fn get(&mut self) -> Result<Answer, String> {
        self.io
            .write_all(&self.request)
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        self.io
            .flush()
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let (status, framing, closes) = self.read_head().await?;
        match framing {
            Framing::Length(len) => self.skip_exactly(len).await?,
            Framing::Chunked => self.skip_chunked().await?,
            Framing::UntilClose => self.skip_to_end().await?,
        }
        Ok(Answer {
            status,
            closes: closes || framing == Framing::UntilClose,
        })
    }

    /// Reads more from the connection; an error at its end.
    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(READ_SIZE);
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err("connection closed before the response ended".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("reading the response: {e}")),
        }
    }

    async fn read_head(&mut self) -> Result<(u16, Framing, bool), String> {
        loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                let (head_len, status, framing, closes) = parsed;
                self.buf.advance(head_len);
                return Ok((status, framing, closes));
            }
            self.fill().await?;
        }
    }

    async fn skip_exactly(&mut self, len: u64) -> Result<(), String> {
        let mut left = len;
        loop {
            let take = left.min(self.buf.len() as u64);
            self.buf.advance(take as usize);
            left -= take;
            if left == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// A line ending in CRLF, without it.
    async fn line(&mut self) -> Result<BytesMut, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(end);
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err("chunk size line too long".into());
            }
            self.fill().await?;
        }
    }

    async fn skip_chunked(&mut self) -> Result<(), String> {
        loop {
            let line = self.line().await?;
            let size = chunk_size(&line)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip_exactly(size).await?;
            if !self.line().await?.is_empty() {
                return Err("chunk data longer than its size".into());
            }
        }
    }

    async fn skip_to_end(&mut self) -> Result<(), String> {
        loop {
            self.buf.clear();
            self.buf.reserve(READ_SIZE);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
    }
}

/// A complete response head in `buf`: its length, status, body framing and
/// whether the server closes the connection after it. None if incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, Framing, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let mut closes = response.version == Some(0);
    let mut framing = Framing::UntilClose;
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad content-length")?;
            if framing != Framing::Chunked {
                framing = Framing::Length(len);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            {
                framing = Framing::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    closes = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    closes = false;
                }
            }
        }
    }
    // No body, whatever the headers say.
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some((head_len, status, framing, closes)))
}

/// The size of a chunk from its size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits.trim_ascii()).map_err(|_| "bad chunk size")?;
    u64::from_str_radix(digits, 16).map_err(|_| format!("bad chunk size {digits:?}"))
}
