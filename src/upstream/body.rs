//! The body of an upstream response, decoded straight from the socket when
//! it becomes readable: an idle event stream holds no read buffer and no
//! task of its own (a hyper client connection keeps two 8 KiB buffers, a
//! task and a request channel per stream). A connection whose response was
//! read to its end goes back to its pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::group::OpenGuard;
use super::pool::Pool;
use super::stream::UpstreamStream;
use crate::http1::body::DecodeError;
use crate::http1::Decoder;

/// Bytes read at once from the upstream.
const READ_SIZE: usize = 8 * 1024;

pub struct ResponseBody {
    /// Counts this response among its target's open ones while it lives
    /// (for least-conn balancing). First, so it is dropped before the
    /// connection closes: whoever sees the close sees the count without it.
    open: Option<OpenGuard>,
    /// None once the connection went back to its pool.
    stream: Option<UpstreamStream>,
    /// Bytes read but not yet decoded; released whenever it empties.
    buf: BytesMut,
    decoder: Decoder,
    /// Where the connection goes once the body is read to its end; None if
    /// it cannot carry another request.
    recycle: Option<Arc<Pool>>,
}

impl ResponseBody {
    pub(super) fn new(
        stream: UpstreamStream,
        buf: BytesMut,
        decoder: Decoder,
        recycle: Option<Arc<Pool>>,
    ) -> Self {
        ResponseBody {
            open: None,
            stream: Some(stream),
            buf,
            decoder,
            recycle,
        }
    }

    /// Counts this response among its target's open ones until it is dropped.
    pub(super) fn count_as_open(&mut self, guard: OpenGuard) {
        self.open = Some(guard);
    }

    /// The connection of a `101 Switching Protocols` to an upgrade request
    /// (`UpstreamRequest::upgrade`), with the bytes the upstream sent right
    /// behind the head. None if the connection is gone.
    pub fn into_upgraded(mut self) -> Option<UpgradedConn> {
        // Never pooled: the exchange marked it not reusable already.
        self.recycle = None;
        let stream = self.stream.take()?;
        Some(UpgradedConn {
            stream,
            ahead: std::mem::take(&mut self.buf).freeze(),
            _open: self.open.take(),
        })
    }

    /// Hands the connection back to its pool if the response was read to
    /// its end and nothing followed it.
    fn recycle(&mut self) {
        if !self.decoder.is_done() || !self.buf.is_empty() {
            return;
        }
        if let (Some(pool), Some(stream)) = (self.recycle.take(), self.stream.take()) {
            pool.put(stream);
        }
    }
}

/// An upstream connection that switched protocols: bytes both ways from
/// here on. It still counts among its target's open ones (least-conn)
/// while it lives.
pub struct UpgradedConn {
    pub stream: UpstreamStream,
    /// Bytes the upstream sent right behind its `101` head.
    pub ahead: Bytes,
    _open: Option<OpenGuard>,
}

impl Drop for ResponseBody {
    /// A body without content (HEAD, 204, 304) is never read, yet complete.
    fn drop(&mut self) {
        self.recycle();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Decode(#[from] DecodeError),
    #[error("upstream connection error: {0}")]
    Io(#[from] io::Error),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.decoder.is_done() => {
                    this.recycle();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            // Wait for readability without a buffer (an idle stream keeps
            // none; the frames handed out hold what they need), then read.
            if this.buf.is_empty() {
                this.buf = BytesMut::new();
            }
            if let Err(err) = ready!(stream.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(err.into())));
            }
            this.buf.reserve(READ_SIZE);
            let read = poll_read_buf(Pin::new(stream), cx, &mut this.buf);
            if read.is_pending() && this.buf.is_empty() {
                // Readiness was stale: wait without holding the buffer.
                this.buf = BytesMut::new();
            }
            match ready!(read) {
                Ok(0) => {
                    return match this.decoder.finish() {
                        Ok(()) => Poll::Ready(None),
                        Err(err) => Poll::Ready(Some(Err(err.into()))),
                    }
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
impl ResponseBody {
    pub(super) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }
}
