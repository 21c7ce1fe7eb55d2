//! Decoding an HTTP/1.1 response body as its bytes arrive: by length, chunked
//! or until the connection closes (RFC 9112 §6.3, §7.1).

use bytes::{Bytes, BytesMut};

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid chunked encoding: {0}")]
    Chunked(&'static str),
    #[error("upstream closed the connection before the body was complete")]
    Incomplete,
}

#[derive(Debug)]
enum State {
    Length(u64),
    /// Reading a chunk-size line; `digits` counts hex digits seen, `ext`
    /// whether a chunk extension (ignored) has begun.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer fields (ignored) up to the empty line.
    Trailer {
        line_start: bool,
    },
    TrailerLf,
    UntilClose,
    Done,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Body bytes still expected, when the length is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(len) => Some(len),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body data out of `buf`, consuming framing
    /// bytes on the way. `Ok(None)`: more input is needed, or the body is done.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::UntilClose => return Ok(take(buf, u64::MAX)),
                State::Length(len) => {
                    let Some(data) = take(buf, len) else {
                        return Ok(None);
                    };
                    let left = len - data.len() as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Some(data));
                }
                State::Data(len) => {
                    let Some(data) = take(buf, len) else {
                        return Ok(None);
                    };
                    let left = len - data.len() as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(data));
                }
                _ => {
                    let Some(&byte) = buf.first() else {
                        return Ok(None);
                    };
                    let _ = buf.split_to(1);
                    self.state = self.step(byte)?;
                }
            }
        }
    }

    /// One byte of chunk framing.
    fn step(&self, byte: u8) -> Result<State, DecodeError> {
        use DecodeError::Chunked as bad;
        Ok(match self.state {
            State::Size { size, digits, ext } => match byte {
                b'\r' if digits > 0 => State::SizeLf { size },
                _ if ext => {
                    if byte == b'\n' || (byte.is_ascii_control() && byte != b'\t') {
                        return Err(bad("control character in chunk extension"));
                    }
                    State::Size { size, digits, ext }
                }
                b';' | b' ' | b'\t' if digits > 0 => State::Size {
                    size,
                    digits,
                    ext: true,
                },
                _ => {
                    let Some(value) = (byte as char).to_digit(16) else {
                        return Err(bad("chunk size is not hexadecimal"));
                    };
                    if digits >= 15 {
                        return Err(bad("chunk size too large"));
                    }
                    State::Size {
                        size: size * 16 + u64::from(value),
                        digits: digits + 1,
                        ext,
                    }
                }
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::Trailer { line_start: true },
                b'\n' => State::Data(size),
                _ => return Err(bad("chunk size line not ended by CRLF")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(bad("chunk data not followed by CRLF")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                },
                _ => return Err(bad("chunk data not followed by CRLF")),
            },
            State::Trailer { line_start } => match byte {
                b'\r' if line_start => State::TrailerLf,
                b'\n' => State::Trailer { line_start: true },
                _ => State::Trailer { line_start: false },
            },
            State::TrailerLf => match byte {
                b'\n' => State::Done,
                _ => return Err(bad("trailer section not ended by CRLF")),
            },
            // `decode` handles the other states itself.
            State::Length(_) | State::Data(_) | State::UntilClose | State::Done => {
                return Err(bad("decoder out of step"))
            }
        })
    }

    /// The connection closed: fine only where the body was complete or is
    /// delimited by the close.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        match self.state {
            State::Done | State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(DecodeError::Incomplete),
        }
    }
}

/// Up to `max` bytes from the front of `buf`, or None if it is empty.
fn take(buf: &mut BytesMut, max: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let len = usize::try_from(max).map_or(buf.len(), |max| max.min(buf.len()));
    Some(buf.split_to(len).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the body and whether it ended.
    fn run(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, bool), DecodeError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = decoder.decode(&mut buf)? {
                body.extend_from_slice(&data);
            }
        }
        Ok((body, decoder.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;name=v\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        for step in 1..wire.len() {
            assert_eq!(
                run(Framing::Chunked, wire, step).unwrap(),
                (b"hello, world".to_vec(), true),
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_events_come_out_as_they_arrive() {
        let mut decoder = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"D\r\ndata: first\n\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap(),
            "data: first\n\n"
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(!decoder.is_done());
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(
                run(Framing::Chunked, wire, wire.len()).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        assert_eq!(
            run(Framing::Length(5), b"hello", 2).unwrap(),
            (b"hello".to_vec(), true)
        );
        let mut decoder = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), "hel");
        assert_eq!(decoder.remaining(), Some(2));
        assert_eq!(decoder.finish(), Err(DecodeError::Incomplete));
    }

    #[test]
    fn close_delimited_bodies_end_at_close() {
        let mut decoder = Decoder::new(Framing::UntilClose);
        let mut buf = BytesMut::from(&b"data: 1\n\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), "data: 1\n\n");
        assert_eq!(decoder.finish(), Ok(()));
        assert!(decoder.is_done());
    }
}
