//! Header rewriting, as small pure functions: over `HeaderMap` for the
//! requests hyper serves, and the same rules over raw header names and
//! values for the lean path (`lean_h1`, `upstream::dedicated`), which
//! rewrites heads byte for byte.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy, by name
/// (in any case). HTTP/2 forbids them outright, and Express sends
/// `Connection: keep-alive` on every response, so they must be removed
/// before a response reaches an h2 client.
pub fn is_fixed_hop_by_hop_name(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|fixed| name.eq_ignore_ascii_case(fixed))
        || name
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"proxy-"))
}

/// The elements of a comma-separated header value (RFC 9110 §5.6.1), trimmed.
pub fn list_elements(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    raw_list_elements(value.as_bytes())
}

/// `list_elements` of a raw header value.
pub fn raw_list_elements(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The values of the headers named `name` (in any case) in a head parsed by
/// httparse, in order.
pub fn raw_values<'h, 'b>(
    headers: &'h [httparse::Header<'b>],
    name: &'h str,
) -> impl DoubleEndedIterator<Item = &'b [u8]> + Clone + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Writes one header line of an HTTP/1.1 head: `name: value` and CRLF.
pub fn push_header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes an HTTP/1.1 status line, with the status's canonical reason.
pub fn push_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether one of the `Connection` header values names the header `name`
/// (which makes it hop-by-hop).
pub fn named_in_connection<'a>(
    connection_values: impl IntoIterator<Item = &'a [u8]>,
    name: &[u8],
) -> bool {
    connection_values
        .into_iter()
        .flat_map(raw_list_elements)
        .any(|token| token.eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .flat_map(list_elements)
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let fixed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_fixed_hop_by_hop_name(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in fixed {
        headers.remove(name);
    }
}

/// Adds the `X-Forwarded-*` headers: the client address is appended to any
/// existing `X-Forwarded-For` chain; proto is `https`; host is the host the
/// client asked for.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: IpAddr, host: Option<&HeaderValue>) {
    let mut chain = Vec::with_capacity(64);
    let prior = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes());
    push_forwarded_for(&mut chain, prior, client_ip);
    // Both parts are visible ASCII, so this cannot fail; if it ever did, the
    // header is dropped rather than forwarded wrong.
    match HeaderValue::from_maybe_shared(Bytes::from(chain)) {
        Ok(chain) => headers.insert(X_FORWARDED_FOR.clone(), chain),
        Err(_) => headers.remove(&X_FORWARDED_FOR),
    };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Writes the `X-Forwarded-For` value: the chain of the prior values (several
/// header lines are one list), then `client_ip`. Prior values that are not
/// visible ASCII are left out, as a header value must not carry them.
pub fn push_forwarded_for<'a>(
    out: &mut Vec<u8>,
    prior: impl IntoIterator<Item = &'a [u8]>,
    client_ip: IpAddr,
) {
    for value in prior {
        let value = value.trim_ascii();
        if !value.is_empty()
            && value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    push_ip(out, client_ip);
}

/// Writes `ip` as text: IPv4 by hand (this runs for every request; the
/// formatting machinery costs more than the rest of the header), IPv6 by
/// its `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether a response must be relayed as an event stream: its media type is
/// `text/event-stream` (any case, any parameters) or the upstream asked for no
/// buffering with `X-Accel-Buffering: no`.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    let sse_content_type = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream_type(v.as_bytes()));
    let no_buffering = headers
        .get(&X_ACCEL_BUFFERING)
        .is_some_and(|v| asks_no_buffering(v.as_bytes()));
    sse_content_type || no_buffering
}

/// A `Content-Type` value whose media type is `text/event-stream`.
pub fn is_event_stream_type(content_type: &[u8]) -> bool {
    content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

/// An `X-Accel-Buffering` value that switches buffering off.
pub fn asks_no_buffering(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"no")
}

/// A header map from a head parsed by httparse out of `buf`. The values are
/// slices of `head`, one copy of the head's bytes, instead of one allocation
/// each. None if a name or value is not valid for a `HeaderMap`.
pub fn map_from_httparse(
    parsed: &[httparse::Header<'_>],
    buf: &[u8],
    head: &Bytes,
) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(parsed.len());
    for raw in parsed {
        let name = HeaderName::from_bytes(raw.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(same_place(raw.value, buf, head)?).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// The bytes of `head`, a copy of the start of `buf`, where `part` (a slice
/// of `buf`, as httparse returns them) stands in `buf`. None if `part` is
/// not within the copied bytes.
pub fn same_place(part: &[u8], buf: &[u8], head: &Bytes) -> Option<Bytes> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= head.len()).then(|| head.slice(start..end))
}

/// Total size of a header section as it would appear on the wire.
pub fn header_section_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("last-event-id", "42"),
            ("cache-control", "no-cache"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["last-event-id", "cache-control"]);
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.7")]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(&mut headers, "127.0.0.1".parse().unwrap(), Some(&host));
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "example.com");

        // Several lines are one list (RFC 9110 §5.3).
        let mut two = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", " 198.51.100.2 "),
            ("x-forwarded-for", ""),
        ]);
        add_forwarded(&mut two, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(
            two.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
        );

        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::1".parse().unwrap(), None);
        assert_eq!(fresh["x-forwarded-for"], "::1");
        assert!(fresh.get("x-forwarded-host").is_none());
    }

    #[test]
    fn ipv4_addresses_are_written_as_their_display_writes_them() {
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "203.0.113.7"] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
    }

    #[test]
    fn event_streams_are_recognised_by_media_type_or_accel_buffering() {
        for ct in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "TEXT/EVENT-STREAM",
            " Text/Event-Stream ;charset=UTF-8",
        ] {
            assert!(is_event_stream(&map(&[("content-type", ct)])), "{ct}");
        }
        for ct in ["text/html", "text/event-streamx", "application/json"] {
            assert!(!is_event_stream(&map(&[("content-type", ct)])), "{ct}");
        }
        assert!(is_event_stream(&map(&[
            ("content-type", "application/json"),
            ("x-accel-buffering", "no")
        ])));
        assert!(!is_event_stream(&map(&[("x-accel-buffering", "yes")])));
        assert!(!is_event_stream(&HeaderMap::new()));
    }
}
