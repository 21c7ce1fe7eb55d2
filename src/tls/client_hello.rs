//! Just enough ClientHello parsing to honour TLS_FALLBACK_SCSV (RFC 7507),
//! which rustls does not implement: rustls' `ClientHello` view exposes the
//! cipher suites but not the offered protocol versions.

/// The signalling cipher suite value a client adds when it retries a
/// handshake with a lower version than it supports.
pub const TLS_FALLBACK_SCSV: u16 = 0x5600;
const TLS13: u16 = 0x0304;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// Larger hellos are not plausible (post-quantum key shares are ~1.2 kB).
pub const MAX_HELLO_LEN: usize = 64 * 1024;

/// What the proxy needs to know of a ClientHello before rustls sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloSummary {
    pub offers_fallback_scsv: bool,
    pub offers_tls13: bool,
    /// The record-layer version, echoed in an alert.
    pub record_version: u16,
}

impl HelloSummary {
    /// A client that signals a fallback while not offering our highest
    /// version (TLS 1.3) is being downgraded: refuse it.
    pub fn is_inappropriate_fallback(&self) -> bool {
        self.offers_fallback_scsv && !self.offers_tls13
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloParse {
    /// More bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello; rustls will reject it with the proper alert.
    NotAHello,
    Complete(HelloSummary),
}

/// Parses the first handshake message from the start of a TLS connection,
/// possibly spread over several records.
pub fn parse(bytes: &[u8]) -> HelloParse {
    let mut message = Vec::new();
    let mut rest = bytes;
    let mut record_version = None;
    loop {
        if rest.len() < 5 {
            return HelloParse::Incomplete;
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return HelloParse::NotAHello;
        }
        record_version.get_or_insert(u16::from_be_bytes([rest[1], rest[2]]));
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return HelloParse::Incomplete;
        }
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return HelloParse::NotAHello;
            }
            let body_len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if body_len > MAX_HELLO_LEN {
                return HelloParse::NotAHello;
            }
            if message.len() >= 4 + body_len {
                return match summarize(&message[4..4 + body_len], record_version.unwrap_or(0x0303))
                {
                    Some(summary) => HelloParse::Complete(summary),
                    None => HelloParse::NotAHello,
                };
            }
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec_u8(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(self.u8()?);
        self.take(len)
    }
    fn vec_u16(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }
}

fn summarize(body: &[u8], record_version: u16) -> Option<HelloSummary> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    r.take(32)?; // random
    r.vec_u8()?; // legacy session id
    let suites = r.vec_u16()?;
    r.vec_u8()?; // compression methods
    let offers_fallback_scsv = suites
        .chunks_exact(2)
        .any(|s| u16::from_be_bytes([s[0], s[1]]) == TLS_FALLBACK_SCSV);
    let mut offers_tls13 = false;
    // Extensions are optional in old hellos.
    if let Some(extensions) = r.vec_u16() {
        let mut ext = Reader(extensions);
        while !ext.0.is_empty() {
            let kind = ext.u16()?;
            let data = ext.vec_u16()?;
            if kind == EXT_SUPPORTED_VERSIONS {
                let versions = Reader(data).vec_u8()?;
                offers_tls13 |= versions
                    .chunks_exact(2)
                    .any(|v| u16::from_be_bytes([v[0], v[1]]) == TLS13);
            }
        }
    }
    Some(HelloSummary {
        offers_fallback_scsv,
        offers_tls13,
        record_version,
    })
}

/// A fatal `inappropriate_fallback` (86) alert record.
pub fn inappropriate_fallback_alert(record_version: u16) -> [u8; 7] {
    let [hi, lo] = record_version.to_be_bytes();
    [21, hi, lo, 0, 2, 2, 86]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a ClientHello record with the given suites and supported versions.
    fn hello(suites: &[u16], versions: Option<&[u16]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        if let Some(versions) = versions {
            exts.extend_from_slice(&EXT_SUPPORTED_VERSIONS.to_be_bytes());
            exts.extend_from_slice(&((versions.len() * 2 + 1) as u16).to_be_bytes());
            exts.push((versions.len() * 2) as u8);
            for v in versions {
                exts.extend_from_slice(&v.to_be_bytes());
            }
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![
            HANDSHAKE_CLIENT_HELLO,
            0,
            (body.len() >> 8) as u8,
            body.len() as u8,
        ];
        msg.extend_from_slice(&body);
        let mut record = vec![
            CONTENT_HANDSHAKE,
            3,
            1,
            (msg.len() >> 8) as u8,
            msg.len() as u8,
        ];
        record.extend_from_slice(&msg);
        record
    }

    #[test]
    fn a_tls12_hello_with_the_scsv_is_an_inappropriate_fallback() {
        let HelloParse::Complete(summary) = parse(&hello(&[0xc02c, TLS_FALLBACK_SCSV], None))
        else {
            panic!("complete hello expected");
        };
        assert!(summary.is_inappropriate_fallback());
        assert_eq!(
            inappropriate_fallback_alert(summary.record_version),
            [21, 3, 1, 0, 2, 2, 86]
        );
    }

    #[test]
    fn the_scsv_beside_tls13_or_no_scsv_is_fine() {
        for bytes in [
            hello(&[0x1301, TLS_FALLBACK_SCSV], Some(&[0x0a0a, TLS13, 0x0303])),
            hello(&[0xc02c], None),
            hello(&[0x1301], Some(&[TLS13])),
        ] {
            let HelloParse::Complete(summary) = parse(&bytes) else {
                panic!("complete hello expected");
            };
            assert!(!summary.is_inappropriate_fallback(), "{summary:?}");
        }
    }

    #[test]
    fn partial_and_split_hellos() {
        let whole = hello(&[0xc02c, TLS_FALLBACK_SCSV], Some(&[0x0303]));
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), HelloParse::Incomplete, "cut at {cut}");
        }
        // The same handshake message split over two records.
        let msg = &whole[5..];
        let (a, b) = msg.split_at(10);
        let mut split = vec![CONTENT_HANDSHAKE, 3, 1, 0, a.len() as u8];
        split.extend_from_slice(a);
        split.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1, (b.len() >> 8) as u8, b.len() as u8]);
        split.extend_from_slice(b);
        assert!(matches!(parse(&split), HelloParse::Complete(s) if s.is_inappropriate_fallback()));
    }

    #[test]
    fn garbage_is_not_a_hello() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), HelloParse::NotAHello);
        let mut truncated_body = hello(&[0xc02c], None);
        truncated_body[9..].fill(0xff);
        assert_ne!(parse(&truncated_body), HelloParse::Incomplete);
    }
}
