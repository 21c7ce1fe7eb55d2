//! Request and response heads as the proxy sees them, whichever way they
//! came: parsed off an HTTP/1.1 connection, handed over by hyper's HTTP/2
//! server, or made by the proxy itself. The forwarding rules (`rules`) are
//! written once, over these types.
//!
//! Header fields stay in one buffer in the order and spelling the peer
//! used, with the positions of each name and value beside it: a head read
//! off the wire is not copied field by field, and one written out again
//! keeps the names as the client wrote them.

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};

/// Where one field's name and value lie in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    name_start: u32,
    name_len: u32,
    value_start: u32,
    value_len: u32,
}

impl Span {
    /// The span of `name` and `value`, both slices of `buf`. None if they are
    /// not (or the buffer is larger than 4 GiB, which no head is).
    pub fn within(buf: &[u8], name: &[u8], value: &[u8]) -> Option<Span> {
        let offset = |part: &[u8]| -> Option<u32> {
            let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            (start + part.len() <= buf.len()).then_some(u32::try_from(start).ok()?)
        };
        Some(Span {
            name_start: offset(name)?,
            name_len: u32::try_from(name.len()).ok()?,
            value_start: offset(value)?,
            value_len: u32::try_from(value.len()).ok()?,
        })
    }

    fn name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let start = self.name_start as usize;
        &buf[start..start + self.name_len as usize]
    }

    fn value<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let start = self.value_start as usize;
        &buf[start..start + self.value_len as usize]
    }
}

/// Header fields, in order.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    buf: Bytes,
    spans: Vec<Span>,
}

impl Fields {
    /// Fields whose names and values lie in `buf` at `spans` (as a parser
    /// found them). Spans outside `buf` are a caller's bug; they are left out.
    pub fn from_spans(buf: Bytes, mut spans: Vec<Span>) -> Self {
        spans.retain(|span| {
            let end = |start: u32, len: u32| start as usize + len as usize;
            end(span.name_start, span.name_len) <= buf.len()
                && end(span.value_start, span.value_len) <= buf.len()
        });
        Fields { buf, spans }
    }

    /// Fields built one by one.
    pub fn builder() -> FieldsBuilder {
        FieldsBuilder::default()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The size of the fields as HTTP/1.1 header lines (`name: value` and
    /// CRLF each), the measure the header size limit applies to.
    pub fn wire_size(&self) -> usize {
        self.spans
            .iter()
            .map(|span| span.name_len as usize + span.value_len as usize + 4)
            .sum()
    }

    /// Every field as (name, value), in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.spans
            .iter()
            .map(|span| (span.name(&self.buf), span.value(&self.buf)))
    }

    /// Every field with its value as shared bytes (no copy), for header
    /// types that keep their values that way.
    pub fn iter_shared(&self) -> impl Iterator<Item = (&[u8], Bytes)> + '_ {
        self.spans.iter().map(|span| {
            let start = span.value_start as usize;
            let value = self.buf.slice(start..start + span.value_len as usize);
            (span.name(&self.buf), value)
        })
    }

    /// The values of the fields named `name` (any case), in order.
    pub fn get_all<'a>(
        &'a self,
        name: &'a str,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + Clone + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of the first field named `name` (any case).
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Keeps the fields for which `keep(name, value)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let buf = &self.buf;
        self.spans
            .retain(|span| keep(span.name(buf), span.value(buf)));
    }

    /// Fields with `name: value` added at the end (copies the fields once).
    pub fn with(&self, name: &[u8], value: &[u8]) -> Fields {
        let mut builder = FieldsBuilder::with_capacity(self.buf.len() + name.len() + value.len());
        for (n, v) in self.iter() {
            builder.push(n, v);
        }
        builder.push(name, value);
        builder.finish()
    }
}

/// Builds `Fields` by appending to one buffer.
#[derive(Debug, Default)]
pub struct FieldsBuilder {
    buf: BytesMut,
    spans: Vec<Span>,
}

impl FieldsBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        FieldsBuilder {
            buf: BytesMut::with_capacity(bytes),
            spans: Vec::new(),
        }
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        // A head is far below 4 GiB: the limits reject larger ones first.
        let at = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        let name_start = at(self.buf.len());
        self.buf.extend_from_slice(name);
        let value_start = at(self.buf.len());
        self.buf.extend_from_slice(value);
        self.spans.push(Span {
            name_start,
            name_len: at(name.len()),
            value_start,
            value_len: at(value.len()),
        });
        self
    }

    pub fn finish(self) -> Fields {
        Fields {
            buf: self.buf.freeze(),
            spans: self.spans,
        }
    }
}

/// A request head, from either protocol.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// Path and query, as the client asked for them (origin form).
    pub target: String,
    /// The authority of an absolute-form target (HTTP/1.1) or `:authority`
    /// (HTTP/2). It names the host where present, ahead of `Host`.
    pub authority: Option<String>,
    pub version: Version,
    /// HTTP/2's `:protocol` (RFC 8441 extended CONNECT, e.g. `websocket`);
    /// None over HTTP/1.1.
    pub protocol: Option<String>,
    pub fields: Fields,
}

impl RequestHead {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A response head, from the upstream or made by the proxy.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub fields: Fields,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_order_and_spelling_and_look_up_in_any_case() {
        let mut builder = Fields::builder();
        builder
            .push(b"Host", b"example.com")
            .push(b"X-Tag", b"a")
            .push(b"x-tag", b"b");
        let fields = builder.finish();
        let all: Vec<_> = fields.iter().collect();
        assert_eq!(
            all,
            [
                (&b"Host"[..], &b"example.com"[..]),
                (b"X-Tag", b"a"),
                (b"x-tag", b"b")
            ]
        );
        assert_eq!(fields.get("host"), Some(&b"example.com"[..]));
        assert_eq!(fields.get_all("X-TAG").collect::<Vec<_>>(), [b"a", b"b"]);
        assert!(!fields.contains("cookie"));
    }

    #[test]
    fn spans_point_into_a_parsed_buffer_and_retain_filters_them() {
        let buf = Bytes::from_static(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n");
        let spans = vec![
            Span::within(&buf, &buf[16..17], &buf[19..20]).unwrap(),
            Span::within(&buf, &buf[22..23], &buf[25..26]).unwrap(),
        ];
        let mut fields = Fields::from_spans(buf.clone(), spans);
        assert_eq!(fields.get("a"), Some(&b"1"[..]));
        fields.retain(|name, _| name != b"A");
        assert_eq!(fields.iter().collect::<Vec<_>>(), [(&b"B"[..], &b"2"[..])]);
        let shared: Vec<_> = fields.iter_shared().collect();
        assert_eq!(shared[0].1, "2");
        let more = fields.with(b"c", b"3");
        assert_eq!(more.len(), 2);
        assert_eq!(more.get("C"), Some(&b"3"[..]));
        assert!(Span::within(&buf, b"elsewhere", b"x").is_none());
    }
}
