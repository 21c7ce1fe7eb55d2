//! The forwarding rules, written once over the heads of `message` and
//! applied to every request whichever way it came (HTTP/1.1, HTTP/2, a
//! shared stream's own upstream request):
//!
//! - `websocket_upgrade`: whether a request is a WebSocket upgrade (an
//!   HTTP/1.1 `Upgrade: websocket` or an HTTP/2 extended CONNECT), decided
//!   once for both protocols.
//! - `check_request`: what is refused before anything is forwarded
//!   (CONNECT other than a WebSocket's, targets that are not paths,
//!   missing, repeated or malformed `Host`, a `host` that disagrees with
//!   HTTP/2's `:authority`).
//! - `write_upstream_head`: the request head the upstream gets: hop-by-hop
//!   and `Connection`-named fields dropped, the proxy's own fields
//!   (`Host`, `X-Forwarded-*`, `X-Client-Cert-Subject`) set only by the
//!   proxy, underscore names dropped, the body's framing written by the
//!   proxy; a WebSocket upgrade as an HTTP/1.1 `GET` with its own
//!   `Connection`, `Upgrade` and `Sec-WebSocket-Key`.
//! - `filter_response`: the response head the client gets: hop-by-hop
//!   fields dropped, event streams recognised, HSTS added.
//! - `websocket_answer`: the upstream's answer to an upgrade checked, and
//!   the head the client gets when it switched.

use std::net::IpAddr;

use http::{Method, StatusCode, Version};

use crate::error::ProxyError;
use crate::http1::body::list_elements;
use crate::http1::head::{push_decimal, push_field, push_request_line};
use crate::http1::Framing;
use crate::message::{Fields, RequestHead, ResponseHead};

/// What the proxy adds to a request on its way upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The `--upstream` URL's path, prefixed to every request path.
    pub base_path: &'a str,
    /// Removed from the start of the request path first (a route's
    /// `strip_prefix`); empty for none.
    pub strip_prefix: &'a str,
    /// The client's address for `X-Forwarded-For`; None for requests the
    /// proxy makes itself (shared streams).
    pub client_ip: Option<IpAddr>,
    /// The verified client certificate's subject.
    pub client_subject: Option<&'a str>,
    /// Forward header names with underscores (dropped by default).
    pub keep_underscore_headers: bool,
    /// A WebSocket upgrade to forward (see `websocket_upgrade`): the
    /// `Sec-WebSocket-Key` the upstream gets, the client's over HTTP/1.1 or
    /// the proxy's own for an extended CONNECT. None: no upgrade.
    pub websocket_key: Option<&'a [u8]>,
}

/// How a client asks for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocket {
    /// HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`
    /// (RFC 6455 §4.1): passed through, and the client gets the `101`.
    Http1,
    /// HTTP/2 `CONNECT` with `:protocol` `websocket` (RFC 8441): sent
    /// upstream as the HTTP/1.1 upgrade, and the client gets a `200`.
    ExtendedConnect,
}

/// Whether `head` asks for a WebSocket, the one decision both protocols
/// share. An HTTP/1.1 upgrade needs `GET`, the `upgrade` option in
/// `Connection`, `websocket` among the `Upgrade` protocols, a
/// `Sec-WebSocket-Key` and no body; any other upgrade (`h2c`, ...) is not
/// one, and its `Upgrade` is dropped as hop-by-hop.
pub fn websocket_upgrade(head: &RequestHead) -> Option<WebSocket> {
    let has_token = |name: &'static str, token: &[u8]| {
        head.fields
            .get_all(name)
            .flat_map(list_elements)
            .any(|element| element.eq_ignore_ascii_case(token))
    };
    match head.version {
        Version::HTTP_2 => {
            let websocket = head.method == Method::CONNECT
                && head
                    .protocol
                    .as_deref()
                    .is_some_and(|protocol| protocol.eq_ignore_ascii_case("websocket"));
            websocket.then_some(WebSocket::ExtendedConnect)
        }
        Version::HTTP_11 => {
            let bodiless = !head.fields.contains("transfer-encoding")
                && head
                    .fields
                    .get_all("content-length")
                    .all(|length| length.trim_ascii() == b"0");
            let websocket = head.method == Method::GET
                && has_token("connection", b"upgrade")
                && has_token("upgrade", b"websocket")
                && head.fields.contains("sec-websocket-key")
                && bodiless;
            websocket.then_some(WebSocket::Http1)
        }
        _ => None,
    }
}

/// Checks that a client request can be forwarded, and returns the host it
/// names (RFC 9112 §3.2: an absolute-form target's authority, else `Host`;
/// RFC 9113 §8.3.1: `:authority`, which a `host` field must agree with).
/// `websocket` is the proxy's decision on the request (`websocket_upgrade`):
/// the only CONNECT forwarded is a WebSocket's extended CONNECT.
pub fn check_request(
    head: &RequestHead,
    max_header_size: usize,
    websocket: Option<WebSocket>,
) -> Result<String, ProxyError> {
    if head.fields.wire_size() > max_header_size {
        return Err(ProxyError::HeadersTooLarge(max_header_size));
    }
    if head.method == Method::CONNECT && websocket != Some(WebSocket::ExtendedConnect) {
        return Err(ProxyError::MethodNotAllowed);
    }
    if !head.target.starts_with('/') {
        return Err(ProxyError::BadRequest("request target must be a path"));
    }
    let mut hosts = head.fields.get_all("host");
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host"));
    }
    let host = match host {
        Some(host) => Some(
            std::str::from_utf8(host)
                .ok()
                .filter(|host| is_valid_host(host))
                .ok_or(ProxyError::BadRequest("invalid Host"))?,
        ),
        None => None,
    };
    match (head.authority.as_deref(), host) {
        (Some(authority), _) if authority.contains('@') => Err(ProxyError::BadRequest(
            "user information in the request target",
        )),
        (Some(authority), _) if !is_valid_host(authority) => {
            Err(ProxyError::BadRequest("invalid authority"))
        }
        (Some(authority), Some(host))
            if head.version == http::Version::HTTP_2 && !authority.eq_ignore_ascii_case(host) =>
        {
            Err(ProxyError::BadRequest("Host differs from :authority"))
        }
        (Some(authority), _) => Ok(authority.to_owned()),
        (None, Some(host)) => Ok(host.to_owned()),
        (None, None) => Err(ProxyError::BadRequest("missing Host")),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): a reg-name or an IP literal,
/// nothing else. Rejects what a Host value must not carry (spaces, `/`,
/// `?`, `@`), which backends would otherwise read in different ways.
pub fn is_valid_host(value: &str) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        let literal_ok = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !literal_ok {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("x", port),
                None => return false,
            },
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (value, ""),
        }
    };
    let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    !host.is_empty() && host.bytes().all(reg_name) && port.bytes().all(|b| b.is_ascii_digit())
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that never cross the proxy, in
/// either direction; HTTP/2 forbids them outright, and Express sends
/// `Connection: keep-alive` on every response.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
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

/// Fields only the proxy sets on a forwarded request: a client's own are
/// dropped (its `X-Forwarded-For` chain is kept, with the client appended).
fn is_set_by_proxy(name: &[u8]) -> bool {
    const SET: [&[u8]; 7] = [
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-client-cert-subject",
        b"content-length",
        // The proxy answers (or forwards) the body itself; the upstream
        // never sees an expectation it would answer a second time.
        b"expect",
    ];
    SET.iter().any(|set| name.eq_ignore_ascii_case(set))
}

/// Whether a `Connection` value of `fields` names `name` (making it hop-by-hop).
fn named_in_connection(fields: &Fields, name: &[u8]) -> bool {
    fields
        .get_all("connection")
        .flat_map(list_elements)
        .any(|token| token.eq_ignore_ascii_case(name))
}

/// Writes the request head for the upstream: request line (with the base
/// path), the client's end-to-end fields in their order, then `Host`,
/// `X-Forwarded-*`, the client certificate's subject, a WebSocket
/// upgrade's fields and the body's framing. `body` is how the proxy sends
/// the body on.
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    host: &str,
    forwarding: &Forwarding<'_>,
    body: Framing,
) {
    let websocket_key = forwarding.websocket_key;
    // An extended CONNECT goes on as the HTTP/1.1 upgrade, a GET.
    let method = match websocket_key {
        Some(_) => &Method::GET,
        None => &head.method,
    };
    let (lead, rest) = upstream_target(&head.target, forwarding.strip_prefix);
    push_request_line(out, method, &[forwarding.base_path, lead, rest]);
    let has_connection = head.fields.contains("connection");
    let dropped = |name: &[u8]| {
        is_hop_by_hop(name)
            || is_set_by_proxy(name)
            || (!forwarding.keep_underscore_headers && name.contains(&b'_'))
            || (has_connection && named_in_connection(&head.fields, name))
            // Written below, from the key the proxy checks the answer by.
            || (websocket_key.is_some() && name.eq_ignore_ascii_case(b"sec-websocket-key"))
    };
    for (name, value) in head.fields.iter() {
        if !dropped(name) {
            push_field(out, name, value);
        }
    }
    push_field(out, b"host", host.as_bytes());
    if let Some(ip) = forwarding.client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        let keep_chain = !(has_connection && named_in_connection(&head.fields, b"x-forwarded-for"));
        if keep_chain {
            for value in head.fields.get_all("x-forwarded-for") {
                let value = value.trim_ascii();
                // Only visible ASCII may go on in a header value.
                if !value.is_empty()
                    && value
                        .iter()
                        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
                {
                    out.extend_from_slice(value);
                    out.extend_from_slice(b", ");
                }
            }
        }
        push_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    push_field(out, b"x-forwarded-proto", b"https");
    push_field(out, b"x-forwarded-host", host.as_bytes());
    if let Some(subject) = forwarding.client_subject {
        push_field(out, b"x-client-cert-subject", subject.as_bytes());
    }
    if let Some(key) = websocket_key {
        push_field(out, b"connection", b"upgrade");
        push_field(out, b"upgrade", b"websocket");
        push_field(out, b"sec-websocket-key", key);
        // HTTP/2 clients send it too (RFC 8441 §5); the one version there is.
        if !head.fields.contains("sec-websocket-version") {
            push_field(out, b"sec-websocket-version", b"13");
        }
    }
    match body {
        Framing::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => push_field(out, b"transfer-encoding", b"chunked"),
        // Methods that define a body say it is empty, as clients do.
        Framing::None if expects_body(&head.method) => push_field(out, b"content-length", b"0"),
        Framing::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The request target without `strip` (a path prefix it starts with, by
/// whole segments), as a leading `/` where one is needed and the rest:
/// `/live/x?a` less `/live` is `/x?a`; `/live?a` less `/live` is `/?a`.
pub fn upstream_target<'t>(target: &'t str, strip: &str) -> (&'static str, &'t str) {
    match target.strip_prefix(strip) {
        Some(rest) if !strip.is_empty() && !rest.starts_with('/') => ("/", rest),
        Some(rest) => ("", rest),
        None => ("", target),
    }
}

/// Sets a route's `response_headers` (lower-case names): each replaces
/// the upstream's fields of its name; an empty value only removes them.
pub fn set_response_fields(head: &mut ResponseHead, fields: &[(String, String)]) {
    if fields.is_empty() {
        return;
    }
    head.fields.retain(|name, _| {
        !fields
            .iter()
            .any(|(set, _)| set.as_bytes().eq_ignore_ascii_case(name))
    });
    for (name, value) in fields {
        if !value.is_empty() {
            head.fields = head.fields.with(name.as_bytes(), value.as_bytes());
        }
    }
}

fn expects_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

/// Writes `ip` as text: IPv4 by hand (this runs for every request), IPv6
/// by its `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether the request may be sent again on another connection when its
/// first connection failed before any response byte: only methods that
/// are safe to repeat (RFC 9110 §9.2.2), and only without a body, which
/// has been consumed by the first attempt.
pub fn may_resend(method: &Method, body: Framing) -> bool {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && body == Framing::None
}

/// A response head filtered for the client.
#[derive(Debug)]
pub struct FilteredResponse {
    pub head: ResponseHead,
    /// Relayed as an event stream: `text/event-stream`, or the upstream
    /// asked for no buffering (`X-Accel-Buffering: no`).
    pub event_stream: bool,
}

/// Filters an upstream response head for the client: hop-by-hop and
/// `Connection`-named fields go, and `Content-Length` too unless it is
/// all the client gets (HEAD, 304): the writer frames the body itself.
pub fn filter_response(mut head: ResponseHead, method: &Method) -> FilteredResponse {
    let keep_length = *method == Method::HEAD || head.status == StatusCode::NOT_MODIFIED;
    let has_connection = head.fields.contains("connection");
    let connection = has_connection.then(|| head.fields.clone());
    head.fields.retain(|name, _| {
        !(is_hop_by_hop(name)
            || (!keep_length && name.eq_ignore_ascii_case(b"content-length"))
            || connection
                .as_ref()
                .is_some_and(|fields| named_in_connection(fields, name)))
    });
    let event_stream = is_event_stream(&head.fields);
    FilteredResponse { head, event_stream }
}

/// Checks the upstream's answer to a WebSocket upgrade sent with `key`.
/// Ok(Some(head)): it switched, and `head` is what the client gets before
/// the bytes flow: the `101` with `Upgrade: websocket` over HTTP/1.1, a
/// `200` over HTTP/2 (without the HTTP/1.1 handshake's `Sec-WebSocket-
/// Accept`); the upstream's end-to-end fields (`Sec-WebSocket-Protocol`,
/// `-Extensions`, cookies) either way. Ok(None): it did not switch, and
/// the answer is relayed as an ordinary response. An error (then 502): a
/// `101` that is not a WebSocket's or has the wrong accept key, or a
/// success other than `101` to an extended CONNECT, which the client would
/// take for an open WebSocket.
pub fn websocket_answer(
    response: &ResponseHead,
    websocket: WebSocket,
    key: &[u8],
) -> Result<Option<ResponseHead>, ProxyError> {
    if response.status != StatusCode::SWITCHING_PROTOCOLS {
        if websocket == WebSocket::ExtendedConnect && response.status.is_success() {
            return Err(ProxyError::Upstream(format!(
                "WebSocket upgrade answered with {} instead of 101",
                response.status
            )));
        }
        return Ok(None);
    }
    let upgrades_to_websocket = response
        .fields
        .get_all("upgrade")
        .flat_map(list_elements)
        .any(|protocol| protocol.eq_ignore_ascii_case(b"websocket"));
    if !upgrades_to_websocket {
        return Err(ProxyError::Upstream(
            "101 Switching Protocols to a protocol other than websocket".into(),
        ));
    }
    let accept = response.fields.get("sec-websocket-accept");
    if accept.map(<[u8]>::trim_ascii) != Some(crate::websocket::accept_for(key).as_bytes()) {
        return Err(ProxyError::Upstream(
            "WebSocket upgrade with a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    let mut head = filter_response(response.clone(), &Method::GET).head;
    match websocket {
        WebSocket::Http1 => {
            // The writer adds `Connection: upgrade`; it owns that field.
            head.fields = head.fields.with(b"upgrade", b"websocket");
        }
        WebSocket::ExtendedConnect => {
            head.status = StatusCode::OK;
            head.fields
                .retain(|name, _| !name.eq_ignore_ascii_case(b"sec-websocket-accept"));
        }
    }
    Ok(Some(head))
}

/// Adds `Strict-Transport-Security` (if configured) unless the response
/// has its own: an upstream's policy wins.
pub fn add_hsts(head: &mut ResponseHead, hsts: Option<&[u8]>) {
    if let Some(hsts) = hsts {
        if !head.fields.contains("strict-transport-security") {
            head.fields = head.fields.with(b"strict-transport-security", hsts);
        }
    }
}

/// Whether a response is an event stream: media type `text/event-stream`
/// (any case, any parameters) or `X-Accel-Buffering: no`.
pub fn is_event_stream(fields: &Fields) -> bool {
    let sse_type = fields.get("content-type").is_some_and(|value| {
        value
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    });
    let no_buffering = fields
        .get("x-accel-buffering")
        .is_some_and(|value| value.trim_ascii().eq_ignore_ascii_case(b"no"));
    sse_type || no_buffering
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut builder = Fields::builder();
        for (name, value) in pairs {
            builder.push(name.as_bytes(), value.as_bytes());
        }
        builder.finish()
    }

    fn request(method: Method, target: &str, pairs: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method,
            target: target.to_owned(),
            authority: None,
            version: http::Version::HTTP_11,
            protocol: None,
            fields: fields(pairs),
        }
    }

    fn check_request_(head: &RequestHead) -> Result<String, ProxyError> {
        check_request(head, 64 * 1024, websocket_upgrade(head))
    }

    #[test]
    fn header_sections_over_the_limit_are_refused() {
        let head = request(
            Method::GET,
            "/",
            &[("host", "a"), ("x-big", &"x".repeat(100))],
        );
        assert!(check_request(&head, 200, None).is_ok());
        assert_eq!(
            check_request(&head, 100, None).unwrap_err().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn hosts_are_checked() {
        let host = |value: &str| check_request_(&request(Method::GET, "/", &[("Host", value)]));
        assert_eq!(host("example.com").unwrap(), "example.com");
        assert_eq!(host("example.com:8443").unwrap(), "example.com:8443");
        assert_eq!(host("[::1]:8443").unwrap(), "[::1]:8443");
        for bad in [
            "a b",
            "evil.example/x?y",
            "u@evil.example",
            "",
            "[::1",
            "x:80a",
        ] {
            assert!(host(bad).is_err(), "{bad:?} accepted");
        }
        let two = request(Method::GET, "/", &[("Host", "a"), ("host", "a")]);
        assert!(check_request_(&two).is_err());
        assert!(check_request_(&request(Method::GET, "/", &[])).is_err());
    }

    #[test]
    fn the_authority_wins_but_must_agree_over_http2() {
        let mut head = request(Method::GET, "/", &[("host", "other.example")]);
        head.authority = Some("example.com".into());
        assert_eq!(check_request_(&head).unwrap(), "example.com");
        head.version = http::Version::HTTP_2;
        assert!(check_request_(&head).is_err());
        head.fields = fields(&[("host", "EXAMPLE.com")]);
        assert_eq!(check_request_(&head).unwrap(), "example.com");
        head.authority = Some("u@example.com".into());
        assert!(check_request_(&head).is_err());
    }

    #[test]
    fn connect_and_non_path_targets_are_refused() {
        let mut connect = request(Method::CONNECT, "", &[("host", "a:443")]);
        connect.authority = Some("a:443".into());
        assert_eq!(
            check_request_(&connect).unwrap_err().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let star = request(Method::OPTIONS, "*", &[("host", "a")]);
        assert_eq!(
            check_request_(&star).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    fn upstream_head(head: &RequestHead, keep_underscore_headers: bool, body: Framing) -> String {
        upstream_head_with_key(head, keep_underscore_headers, body, None)
    }

    fn upstream_head_with_key(
        head: &RequestHead,
        keep_underscore_headers: bool,
        body: Framing,
        websocket_key: Option<&[u8]>,
    ) -> String {
        let forwarding = Forwarding {
            base_path: "/api",
            strip_prefix: "",
            client_ip: Some("10.0.0.7".parse().unwrap()),
            client_subject: Some("CN=alice"),
            keep_underscore_headers,
            websocket_key,
        };
        let mut out = Vec::new();
        write_upstream_head(&mut out, head, "example.com", &forwarding, body);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_upstream_head_carries_only_end_to_end_fields_and_the_proxys_own() {
        let head = request(
            Method::GET,
            "/events?x=1",
            &[
                ("Host", "example.com"),
                ("Accept", "text/event-stream"),
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "300"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "x"),
                ("X-Forwarded-For", "192.0.2.1"),
                ("X-Forwarded-Proto", "http"),
                ("X-Client-Cert-Subject", "CN=mallory"),
                ("X_Client_Cert_Subject", "CN=mallory"),
                ("Transfer_Encoding", "chunked"),
                ("Expect", "100-continue"),
                ("Last-Event-ID", "41"),
            ],
        );
        assert_eq!(
            upstream_head(&head, false, Framing::None),
            "GET /api/events?x=1 HTTP/1.1\r\n\
             Accept: text/event-stream\r\n\
             Last-Event-ID: 41\r\n\
             host: example.com\r\n\
             x-forwarded-for: 192.0.2.1, 10.0.0.7\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: example.com\r\n\
             x-client-cert-subject: CN=alice\r\n\r\n"
        );
        let kept = upstream_head(&head, true, Framing::Chunked);
        assert!(
            kept.contains("X_Client_Cert_Subject: CN=mallory\r\n"),
            "{kept}"
        );
        assert!(
            kept.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{kept}"
        );
    }

    #[test]
    fn a_forwarded_for_chain_named_in_connection_is_dropped() {
        let head = request(
            Method::POST,
            "/",
            &[
                ("host", "a"),
                ("connection", "x-forwarded-for"),
                ("x-forwarded-for", "192.0.2.1"),
            ],
        );
        let out = upstream_head(&head, false, Framing::None);
        assert!(out.contains("x-forwarded-for: 10.0.0.7\r\n"), "{out}");
        assert!(out.ends_with("content-length: 0\r\n\r\n"), "{out}");
    }

    /// An HTTP/1.1 WebSocket handshake (RFC 6455 §1.3), plus `extra`.
    fn websocket_request(extra: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![
            ("Host", "example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        pairs.extend_from_slice(extra);
        request(Method::GET, "/chat", &pairs)
    }

    /// An HTTP/2 extended CONNECT with `:protocol` `protocol`.
    fn extended_connect(protocol: Option<&str>) -> RequestHead {
        RequestHead {
            method: Method::CONNECT,
            target: "/chat".into(),
            authority: Some("example.com".into()),
            version: http::Version::HTTP_2,
            protocol: protocol.map(str::to_owned),
            fields: fields(&[
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "chat"),
                ("origin", "https://example.com"),
            ]),
        }
    }

    #[test]
    fn websocket_upgrades_are_recognised_on_both_protocols_and_nothing_else_is() {
        assert_eq!(
            websocket_upgrade(&websocket_request(&[])),
            Some(WebSocket::Http1)
        );
        let listed = websocket_request(&[("Connection", "keep-alive, upgrade")]);
        assert_eq!(websocket_upgrade(&listed), Some(WebSocket::Http1));
        assert_eq!(
            websocket_upgrade(&extended_connect(Some("websocket"))),
            Some(WebSocket::ExtendedConnect)
        );
        let not_upgrades = [
            // Another protocol, or no Upgrade option in Connection.
            request(
                Method::GET,
                "/",
                &[
                    ("Upgrade", "h2c"),
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Sec-WebSocket-Key", "x"),
                ],
            ),
            request(
                Method::GET,
                "/",
                &[
                    ("Upgrade", "websocket"),
                    ("Connection", "keep-alive"),
                    ("Sec-WebSocket-Key", "x"),
                ],
            ),
            // Not a GET, no key, or with a body.
            RequestHead {
                method: Method::POST,
                ..websocket_request(&[])
            },
            request(
                Method::GET,
                "/",
                &[("Upgrade", "websocket"), ("Connection", "upgrade")],
            ),
            websocket_request(&[("Content-Length", "5")]),
            websocket_request(&[("Transfer-Encoding", "chunked")]),
            // HTTP/1.0 has no upgrades.
            RequestHead {
                version: http::Version::HTTP_10,
                ..websocket_request(&[])
            },
            // CONNECT without :protocol, or with another one.
            extended_connect(None),
            extended_connect(Some("connect-udp")),
        ];
        for head in not_upgrades {
            assert_eq!(websocket_upgrade(&head), None, "{head:?}");
        }
        assert_eq!(
            websocket_upgrade(&websocket_request(&[("Content-Length", "0")])),
            Some(WebSocket::Http1)
        );
    }

    #[test]
    fn only_a_websockets_extended_connect_passes_the_check() {
        let websocket = extended_connect(Some("websocket"));
        assert_eq!(check_request_(&websocket).unwrap(), "example.com");
        // With WebSockets switched off for the request: refused as before.
        assert_eq!(
            check_request(&websocket, 64 * 1024, None)
                .unwrap_err()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            check_request_(&extended_connect(Some("connect-udp")))
                .unwrap_err()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn a_websocket_upgrade_goes_upstream_as_an_http1_get_with_its_own_fields() {
        let head = websocket_request(&[("Sec-WebSocket-Protocol", "chat")]);
        let out = upstream_head_with_key(
            &head,
            false,
            Framing::None,
            Some(b"dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            out,
            "GET /api/chat HTTP/1.1\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat\r\n\
             host: example.com\r\n\
             x-forwarded-for: 10.0.0.7\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: example.com\r\n\
             x-client-cert-subject: CN=alice\r\n\
             connection: upgrade\r\n\
             upgrade: websocket\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        // Without the key the same request loses its upgrade (hop-by-hop).
        let plain = upstream_head(&head, false, Framing::None);
        assert!(!plain.contains("pgrade"), "{plain}");

        let connect = extended_connect(Some("websocket"));
        let out = upstream_head_with_key(&connect, false, Framing::None, Some(b"a2V5"));
        assert!(out.starts_with("GET /api/chat HTTP/1.1\r\n"), "{out}");
        assert_eq!(out.matches("sec-websocket-version: 13\r\n").count(), 1);
        assert!(out.contains("sec-websocket-protocol: chat\r\n"), "{out}");
        assert!(out.contains("origin: https://example.com\r\n"), "{out}");
        assert!(out.contains("sec-websocket-key: a2V5\r\n"), "{out}");
        let bare = RequestHead {
            fields: fields(&[]),
            ..connect
        };
        let out = upstream_head_with_key(&bare, false, Framing::None, Some(b"a2V5"));
        assert!(out.contains("sec-websocket-version: 13\r\n"), "{out}");
    }

    #[test]
    fn a_websocket_answer_is_checked_and_becomes_the_clients_head() {
        const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
        let answer = |status: u16, pairs: &[(&str, &str)]| ResponseHead {
            status: StatusCode::from_u16(status).unwrap(),
            fields: fields(pairs),
        };
        let switched = answer(
            101,
            &[
                ("Upgrade", "WebSocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                ("Sec-WebSocket-Protocol", "chat"),
            ],
        );
        let h1 = websocket_answer(&switched, WebSocket::Http1, KEY)
            .unwrap()
            .unwrap();
        assert_eq!(h1.status, StatusCode::SWITCHING_PROTOCOLS);
        let names = |head: &ResponseHead| -> Vec<String> {
            head.fields
                .iter()
                .map(|(n, _)| String::from_utf8_lossy(n).to_lowercase())
                .collect()
        };
        assert_eq!(
            names(&h1),
            ["sec-websocket-accept", "sec-websocket-protocol", "upgrade"]
        );
        let h2 = websocket_answer(&switched, WebSocket::ExtendedConnect, KEY)
            .unwrap()
            .unwrap();
        assert_eq!(h2.status, StatusCode::OK);
        assert_eq!(names(&h2), ["sec-websocket-protocol"]);

        // A wrong accept key, or another protocol: 502.
        let wrong = answer(
            101,
            &[
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Accept", "bm9wZQ=="),
            ],
        );
        let h2c = answer(
            101,
            &[
                ("Upgrade", "h2c"),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
        );
        for bad in [&wrong, &h2c] {
            let err = websocket_answer(bad, WebSocket::Http1, KEY).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        }
        // A refusal is relayed as it is; a 200 cannot be, to an extended
        // CONNECT, where it would mean the WebSocket is open.
        let refused = answer(403, &[]);
        for websocket in [WebSocket::Http1, WebSocket::ExtendedConnect] {
            assert!(websocket_answer(&refused, websocket, KEY)
                .unwrap()
                .is_none());
        }
        let ignored = answer(200, &[]);
        assert!(websocket_answer(&ignored, WebSocket::Http1, KEY)
            .unwrap()
            .is_none());
        assert!(websocket_answer(&ignored, WebSocket::ExtendedConnect, KEY).is_err());
    }

    #[test]
    fn only_safe_bodiless_requests_are_resent() {
        assert!(may_resend(&Method::GET, Framing::None));
        assert!(!may_resend(&Method::GET, Framing::Chunked));
        assert!(!may_resend(&Method::POST, Framing::None));
    }

    #[test]
    fn responses_lose_hop_by_hop_fields_and_event_streams_are_recognised() {
        let head = ResponseHead {
            status: StatusCode::OK,
            fields: fields(&[
                ("Content-Type", "Text/Event-Stream; charset=utf-8"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "5"),
                ("Cache-Control", "no-cache"),
            ]),
        };
        let filtered = filter_response(head.clone(), &Method::GET);
        assert!(filtered.event_stream);
        let names: Vec<&[u8]> = filtered.head.fields.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"Cache-Control"]);
        let head_request = filter_response(head, &Method::HEAD);
        assert!(head_request.head.fields.contains("content-length"));

        let buffered = fields(&[("X-Accel-Buffering", " no ")]);
        assert!(is_event_stream(&buffered));
        assert!(!is_event_stream(&fields(&[(
            "content-type",
            "text/event-streams"
        )])));
    }

    #[test]
    fn hsts_is_added_unless_the_upstream_has_its_own() {
        let mut head = ResponseHead {
            status: StatusCode::OK,
            fields: fields(&[]),
        };
        add_hsts(&mut head, Some(b"max-age=1"));
        assert_eq!(
            head.fields.get("strict-transport-security"),
            Some(&b"max-age=1"[..])
        );
        add_hsts(&mut head, Some(b"max-age=2"));
        assert_eq!(head.fields.get_all("strict-transport-security").count(), 1);
    }
}
