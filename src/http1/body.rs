//! HTTP/1.1 message bodies, for both sides of the proxy: how a body is
//! delimited (RFC 9112 §6), decoding one as its bytes arrive, and encoding
//! chunks. Requests from clients and responses from the upstream go through
//! the same decoder, so both are held to the same strictness.

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};

use crate::message::Fields;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a message's framing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndTransferEncoding,
    #[error("Transfer-Encoding other than chunked")]
    UnsupportedTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
}

/// The framing of a client's request body (RFC 9112 §6.1-6.3). Stricter
/// than the RFC allows, where a proxy that passes the request on must be:
/// a request with both headers, or with a coding other than `chunked`, is
/// refused rather than interpreted, so no two parsers along the way can
/// read it differently.
pub fn request_framing(version: Version, fields: &Fields) -> Result<Framing, FramingError> {
    let mut codings = fields.get_all("transfer-encoding").peekable();
    if codings.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if fields.contains("content-length") {
            return Err(FramingError::LengthAndTransferEncoding);
        }
        return if only_chunked(codings) {
            Ok(Framing::Chunked)
        } else {
            Err(FramingError::UnsupportedTransferEncoding)
        };
    }
    Ok(match content_length(fields)? {
        None | Some(0) => Framing::None,
        Some(len) => Framing::Length(len),
    })
}

/// The framing of an upstream response to a `method` request (RFC 9112
/// §6.3), and whether the connection must close after it whatever the
/// upstream says (a response that carried both Content-Length and
/// Transfer-Encoding: the chunked framing wins, but the connection is not
/// trusted for another request).
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    fields: &Fields,
) -> Result<(Framing, bool), FramingError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::None, false));
    }
    let mut codings = fields.get_all("transfer-encoding").peekable();
    if codings.peek().is_some() {
        if !only_chunked(codings) {
            // A coding the proxy would pass on undecoded, with nothing left
            // to tell the client about it.
            return Err(FramingError::UnsupportedTransferEncoding);
        }
        return Ok((Framing::Chunked, fields.contains("content-length")));
    }
    Ok(match content_length(fields)? {
        Some(0) => (Framing::None, false),
        Some(len) => (Framing::Length(len), false),
        None => (Framing::UntilClose, false),
    })
}

/// Whether the Transfer-Encoding values (one list over every line) are
/// exactly `chunked`. Empty list elements do not count (RFC 9110 §5.6.1).
fn only_chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut codings = values.flat_map(list_elements).filter(|c| !c.is_empty());
    codings
        .next()
        .is_some_and(|first| first.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// The Content-Length, if any. Several lines or list elements must agree
/// (RFC 9110 §8.6); each must be digits only, so `+5`, ` 5 5` or `0x5` are
/// errors rather than numbers.
fn content_length(fields: &Fields) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for element in fields.get_all("content-length").flat_map(list_elements) {
        let parsed = parse_digits(element).ok_or(FramingError::InvalidLength)?;
        if length.is_some_and(|known| known != parsed) {
            return Err(FramingError::InvalidLength);
        }
        length = Some(parsed);
    }
    Ok(length)
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The elements of a comma-separated header value (RFC 9110 §5.6.1), trimmed.
pub fn list_elements(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a connection may carry another message after this one, by its
/// version and `Connection` header (RFC 9112 §9.3).
pub fn keeps_alive(version: Version, fields: &Fields) -> bool {
    let has = |option: &[u8]| {
        fields
            .get_all("connection")
            .flat_map(list_elements)
            .any(|token| token.eq_ignore_ascii_case(option))
    };
    match version {
        Version::HTTP_11 => !has(b"close"),
        Version::HTTP_10 => has(b"keep-alive") && !has(b"close"),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid chunked encoding: {0}")]
    Chunked(&'static str),
    #[error("chunked trailer section larger than {0} bytes")]
    TrailerTooLarge(usize),
    #[error("connection closed before the body was complete")]
    Incomplete,
}

/// Hex digits allowed in a chunk size: 15 keep it below 2^60, and no real
/// chunk is larger than an exabyte.
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    /// Reading the hex digits of a chunk size.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension (ignored) up to CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line that ends them.
    TrailerLineStart,
    TrailerLine,
    TrailerLineLf,
    TrailerEndLf,
    UntilClose,
    Done,
}

/// Decodes a body as its bytes arrive. Chunked bodies are held to RFC 9112
/// §7.1 strictly: every line ends in CRLF, the size is hex digits only,
/// nothing but whitespace and `;` extensions may follow it.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    trailer_bytes: usize,
    max_trailer: usize,
}

impl Decoder {
    /// A decoder for `framing`; trailers of a chunked body may take up to
    /// `max_trailer` bytes.
    pub fn new(framing: Framing, max_trailer: usize) -> Self {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::Size { size: 0, digits: 0 },
            Framing::UntilClose => State::UntilClose,
        };
        Decoder {
            state,
            trailer_bytes: 0,
            max_trailer,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Body bytes still expected, when that is known.
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
                State::Length(len) | State::Data(len) => {
                    let Some(data) = take(buf, len) else {
                        return Ok(None);
                    };
                    let left = len - data.len() as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::DataCr,
                        (_, _) => State::Data(left),
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
    fn step(&mut self, byte: u8) -> Result<State, DecodeError> {
        use DecodeError::Chunked as bad;
        let is_space = byte == b' ' || byte == b'\t';
        Ok(match self.state {
            State::Size { size, digits } => match byte {
                b'\r' if digits > 0 => State::SizeLf { size },
                b';' if digits > 0 => State::Extension { size },
                _ if is_space && digits > 0 => State::SizeSpace { size },
                _ => {
                    let value = (byte as char)
                        .to_digit(16)
                        .ok_or(bad("chunk size is not hexadecimal"))?;
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(bad("chunk size too large"));
                    }
                    State::Size {
                        size: size * 16 + u64::from(value),
                        digits: digits + 1,
                    }
                }
            },
            State::SizeSpace { size } => match byte {
                b'\r' => State::SizeLf { size },
                b';' => State::Extension { size },
                _ if is_space => State::SizeSpace { size },
                _ => return Err(bad("unexpected bytes after the chunk size")),
            },
            State::Extension { size } => match byte {
                b'\r' => State::SizeLf { size },
                _ if byte.is_ascii_control() && byte != b'\t' => {
                    return Err(bad("control character in a chunk extension"))
                }
                _ => State::Extension { size },
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::TrailerLineStart,
                b'\n' => State::Data(size),
                _ => return Err(bad("chunk size line not ended by CRLF")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(bad("chunk data not followed by CRLF")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(bad("chunk data not followed by CRLF")),
            },
            State::TrailerLineStart => match byte {
                b'\r' => State::TrailerEndLf,
                b'\n' => return Err(bad("bare LF in the trailer section")),
                _ => self.trailer_byte(byte)?,
            },
            State::TrailerLine => match byte {
                b'\r' => State::TrailerLineLf,
                b'\n' => return Err(bad("bare LF in the trailer section")),
                _ => self.trailer_byte(byte)?,
            },
            State::TrailerLineLf => match byte {
                b'\n' => State::TrailerLineStart,
                _ => return Err(bad("trailer line not ended by CRLF")),
            },
            State::TrailerEndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(bad("trailer section not ended by CRLF")),
            },
            // `decode` handles the other states itself.
            State::Length(_) | State::Data(_) | State::UntilClose | State::Done => {
                return Err(bad("decoder out of step"))
            }
        })
    }

    /// One byte of a trailer field (which is read and dropped).
    fn trailer_byte(&mut self, byte: u8) -> Result<State, DecodeError> {
        if byte.is_ascii_control() && byte != b'\t' {
            return Err(DecodeError::Chunked("control character in a trailer field"));
        }
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer {
            return Err(DecodeError::TrailerTooLarge(self.max_trailer));
        }
        Ok(State::TrailerLine)
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

/// Appends `data` as one chunk of a chunked body.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut size = [0u8; 16];
    let mut at = size.len();
    let mut n = data.len();
    loop {
        at -= 1;
        size[at] = HEX[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.reserve(size.len() - at + data.len() + 4);
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunk that ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut builder = Fields::builder();
        for (name, value) in pairs {
            builder.push(name.as_bytes(), value.as_bytes());
        }
        builder.finish()
    }

    /// Feeds `input` in pieces of `step` bytes; returns the body and whether it ended.
    fn run(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, bool), DecodeError> {
        let mut decoder = Decoder::new(framing, LIMIT);
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
        let wire = b"5;name=v\r\nhello\r\n7 ; x\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
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
        let mut decoder = Decoder::new(Framing::Chunked, LIMIT);
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
    fn malformed_chunks_are_errors_before_any_of_their_data() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"+5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"5 junk\r\nhello\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"123456789012345678\r\n",
            b"5;a\nb\r\nhello",
            b"0\r\n\n",
            b"0\r\nX: y\n\r\n",
        ] {
            let result = run(Framing::Chunked, wire, wire.len());
            assert!(
                matches!(result, Err(DecodeError::Chunked(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(wire)
            );
            // Data of a chunk whose size line fails never comes out.
            if !wire.starts_with(b"5\r\nhello") {
                let mut decoder = Decoder::new(Framing::Chunked, LIMIT);
                let mut buf = BytesMut::from(wire);
                match decoder.decode(&mut buf) {
                    Ok(Some(data)) => {
                        panic!("{:?} came out of {wire:?}", String::from_utf8_lossy(&data))
                    }
                    Ok(None) => panic!("{wire:?} was not refused"),
                    Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn trailers_are_bounded() {
        let mut wire = b"0\r\nX: ".to_vec();
        wire.resize(wire.len() + LIMIT, b'a');
        wire.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            run(Framing::Chunked, &wire, 7),
            Err(DecodeError::TrailerTooLarge(LIMIT))
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        assert_eq!(
            run(Framing::Length(5), b"hello", 2).unwrap(),
            (b"hello".to_vec(), true)
        );
        let mut decoder = Decoder::new(Framing::Length(5), LIMIT);
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), "hel");
        assert_eq!(decoder.remaining(), Some(2));
        assert_eq!(decoder.finish(), Err(DecodeError::Incomplete));
    }

    #[test]
    fn close_delimited_bodies_end_at_close() {
        let mut decoder = Decoder::new(Framing::UntilClose, LIMIT);
        let mut buf = BytesMut::from(&b"data: 1\n\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), "data: 1\n\n");
        assert_eq!(decoder.finish(), Ok(()));
        assert!(decoder.is_done());
    }

    #[test]
    fn chunks_are_hex_sized() {
        let mut out = Vec::new();
        push_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(out, [b"1A\r\n".as_slice(), &[b'x'; 26], b"\r\n"].concat());
        let mut empty = Vec::new();
        push_chunk(&mut empty, b"");
        assert_eq!(empty, b"0\r\n\r\n");
    }

    #[test]
    fn request_framing_refuses_what_two_parsers_could_read_differently() {
        let framing = |pairs: &[(&str, &str)]| request_framing(Version::HTTP_11, &fields(pairs));
        assert_eq!(framing(&[]), Ok(Framing::None));
        assert_eq!(
            framing(&[("Content-Length", "12")]),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&[("content-length", "12"), ("Content-Length", "12, 12")]),
            Ok(Framing::Length(12))
        );
        assert_eq!(framing(&[("content-length", "0")]), Ok(Framing::None));
        assert_eq!(
            framing(&[("transfer-encoding", "chunked")]),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "Chunked,")]),
            Ok(Framing::Chunked)
        );
        for bad in ["+5", "5 5", "0x5", "", "-1", "99999999999999999999"] {
            assert_eq!(
                framing(&[("content-length", bad)]),
                Err(FramingError::InvalidLength),
                "{bad}"
            );
        }
        assert_eq!(
            framing(&[("content-length", "1"), ("content-length", "2")]),
            Err(FramingError::InvalidLength)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
            Err(FramingError::LengthAndTransferEncoding)
        );
        for bad in [
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "chunked, chunked",
        ] {
            assert_eq!(
                framing(&[("transfer-encoding", bad)]),
                Err(FramingError::UnsupportedTransferEncoding),
                "{bad}"
            );
        }
        assert_eq!(
            request_framing(
                Version::HTTP_10,
                &fields(&[("transfer-encoding", "chunked")])
            ),
            Err(FramingError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let framing = |pairs: &[(&str, &str)]| response_framing(&get, ok, &fields(pairs));
        assert_eq!(
            framing(&[("Transfer-Encoding", "chunked")]),
            Ok((Framing::Chunked, false))
        );
        assert_eq!(
            framing(&[("Transfer-Encoding", "chunked,")]),
            Ok((Framing::Chunked, false))
        );
        // Both: chunked wins, and the connection is not kept.
        assert_eq!(
            framing(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing(&[("Transfer-Encoding", "gzip, chunked")]),
            Err(FramingError::UnsupportedTransferEncoding)
        );
        assert_eq!(
            framing(&[("Content-Length", "12")]),
            Ok((Framing::Length(12), false))
        );
        assert_eq!(
            framing(&[("Content-Length", "+5")]),
            Err(FramingError::InvalidLength)
        );
        assert_eq!(framing(&[]), Ok((Framing::UntilClose, false)));
        let no_body = |method: Method, status: u16| {
            response_framing(
                &method,
                StatusCode::from_u16(status).unwrap(),
                &fields(&[("Content-Length", "7")]),
            )
        };
        assert_eq!(no_body(Method::HEAD, 200), Ok((Framing::None, false)));
        assert_eq!(no_body(Method::GET, 204), Ok((Framing::None, false)));
        assert_eq!(no_body(Method::GET, 304), Ok((Framing::None, false)));
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let v11 = Version::HTTP_11;
        let v10 = Version::HTTP_10;
        assert!(keeps_alive(v11, &fields(&[])));
        assert!(!keeps_alive(
            v11,
            &fields(&[("Connection", "keep-alive, Close")])
        ));
        assert!(!keeps_alive(v10, &fields(&[])));
        assert!(keeps_alive(v10, &fields(&[("connection", "Keep-Alive")])));
    }
}
