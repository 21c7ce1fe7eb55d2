//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that an L4
//! load balancer writes first on each connection, naming the client it
//! came from (`--proxy-protocol`).
//!
//! `parse` is pure and judges any prefix of a connection's bytes;
//! `read_header` reads one header from the socket, never a byte past it:
//! the TLS handshake reads what follows.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Version 2's first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2's fixed part: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;
/// Addresses and TLVs after version 2's fixed part, at most. The spec
/// allows 64 KiB; balancers send tens of bytes (addresses and a few
/// TLVs), and a connection that is not yet anyone's should not make the
/// proxy hold 64 KiB for it.
pub const V2_MAX_BODY_LEN: usize = 4096;
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Version 1's longest line, CRLF included (spec §2.1).
const V1_MAX_LEN: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): reading
/// this much first never reads past a header.
const MIN_LEN: usize = 15;

/// What a header says about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The client's address, as the balancer saw it (the header's source).
    Client(SocketAddr),
    /// No client address: a v2 `LOCAL` header (the balancer's own health
    /// check), v1 `UNKNOWN`, or a v2 family without one (`UNSPEC`, Unix
    /// sockets). The TCP peer stands.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(&'static str),
    #[error("connection closed within the PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(io::Error),
}

impl From<io::Error> for HeaderError {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::UnexpectedEof => HeaderError::Closed,
            _ => HeaderError::Io(err),
        }
    }
}

/// Judges the first bytes of a connection: `Some((header, length))` once a
/// whole header is there (bytes after it are not looked at), `None` while
/// `bytes` may still be the start of one, an error as soon as they cannot.
pub fn parse(bytes: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let starts = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    if bytes.is_empty() {
        Ok(None)
    } else if starts(V2_SIGNATURE) {
        parse_v2(bytes)
    } else if starts(V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Err(HeaderError::Missing)
    }
}

/// Version 1: one text line, `PROXY TCP4|TCP6 src dst sport dport\r\n` or
/// `PROXY UNKNOWN ...\r\n`.
fn parse_v1(bytes: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let invalid = HeaderError::Invalid;
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| !(b' '..=b'~').contains(&b)) else {
        return if bytes.len() >= V1_MAX_LEN {
            Err(invalid("v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if window[cr] != b'\r' {
        return Err(invalid("v1 line with a control character"));
    }
    match window.get(cr + 1) {
        None if cr + 1 < V1_MAX_LEN => return Ok(None),
        Some(b'\n') => {}
        _ => return Err(invalid("v1 line not ended by CRLF")),
    }
    // Printable ASCII up to the CR, so UTF-8.
    let line = std::str::from_utf8(&window[..cr]).map_err(|_| invalid("v1 line not ASCII"))?;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let header = match fields.next() {
        // Whatever follows UNKNOWN is ignored (spec §2.1).
        Some("UNKNOWN") => ProxyHeader::Unknown,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(invalid("v1 line needs exactly two addresses and two ports"));
            };
            let address = |text: &str| match family {
                "TCP4" => text.parse::<Ipv4Addr>().ok().map(IpAddr::from),
                _ => text.parse::<Ipv6Addr>().ok().map(IpAddr::from),
            };
            let src = address(src).ok_or(invalid("v1 source is not an address of its family"))?;
            address(dst).ok_or(invalid("v1 destination is not an address of its family"))?;
            let sport = v1_port(sport).ok_or(invalid("v1 source port is not a port"))?;
            v1_port(dport).ok_or(invalid("v1 destination port is not a port"))?;
            ProxyHeader::Client(SocketAddr::new(src, sport))
        }
        _ => return Err(invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some((header, cr + 2)))
}

/// A port as v1 writes it: decimal, no sign, no leading zero.
fn v1_port(text: &str) -> Option<u16> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits_only || leading_zero {
        return None;
    }
    text.parse().ok()
}

/// Version 2: 16 bytes (signature, version and command, family and
/// transport, length), then `length` bytes of addresses and TLVs.
fn parse_v2(bytes: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let invalid = HeaderError::Invalid;
    let local = match bytes.get(12) {
        None => return Ok(None),
        Some(0x20) => true,
        Some(0x21) => false,
        Some(b) if b >> 4 != 2 => return Err(invalid("v2 signature with another version")),
        Some(_) => return Err(invalid("v2 command is neither LOCAL nor PROXY")),
    };
    let Some(&family) = bytes.get(13) else {
        return Ok(None);
    };
    // The address block each family needs (spec §2.2); LOCAL ignores it.
    let needed = match family {
        _ if local => 0,
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(invalid("v2 address family or transport unknown")),
    };
    let Some(len) = bytes.get(14..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len < needed {
        return Err(invalid("v2 length too short for its addresses"));
    }
    if len > V2_MAX_BODY_LEN {
        return Err(invalid("v2 addresses and TLVs longer than 4096 bytes"));
    }
    let Some(body) = bytes.get(V2_FIXED_LEN..V2_FIXED_LEN + len) else {
        return Ok(None);
    };
    let header = match family {
        _ if local => ProxyHeader::Unknown,
        0x11 | 0x12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            ProxyHeader::Client(SocketAddr::new(ip.into(), port))
        }
        0x21 | 0x22 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            ProxyHeader::Client(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // UNSPEC and Unix sockets carry no IP address.
        _ => ProxyHeader::Unknown,
    };
    Ok(Some((header, V2_FIXED_LEN + len)))
}

/// How much more of a header `bytes` (a valid, incomplete start) may be
/// read without reading past its end: `Some(n)` exactly, or `None` for a
/// v1 line, whose end only its CRLF tells.
fn known_rest(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < MIN_LEN {
        return Some(MIN_LEN - bytes.len());
    }
    if !bytes.starts_with(V2_SIGNATURE) {
        return None;
    }
    match bytes.get(14..16) {
        Some(len) => {
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            Some(V2_FIXED_LEN + len - bytes.len())
        }
        None => Some(V2_FIXED_LEN - bytes.len()),
    }
}

/// Reads one PROXY header from `tcp`, and not a byte more. Bound it with a
/// timeout: a peer that sends part of one and waits is waited for.
pub async fn read_header(tcp: &mut TcpStream) -> Result<ProxyHeader, HeaderError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    loop {
        if let Some((header, len)) = parse(&buf)? {
            debug_assert_eq!(len, buf.len(), "read past the header");
            return Ok(header);
        }
        let start = buf.len();
        match known_rest(&buf) {
            Some(rest) => {
                buf.resize(start + rest, 0);
                tcp.read_exact(&mut buf[start..]).await?;
            }
            None => {
                // A v1 line: look at what has arrived, and take it up to the
                // CRLF. Taking everything when there is no CRLF yet is what
                // makes the next peek wait for more, rather than spin.
                buf.resize(V1_MAX_LEN, 0);
                let arrived = tcp.peek(&mut buf[start..]).await?;
                if arrived == 0 {
                    return Err(HeaderError::Closed);
                }
                let peeked = &buf[start..start + arrived];
                let take = if buf[start - 1] == b'\r' && peeked[0] == b'\n' {
                    1
                } else {
                    peeked
                        .windows(2)
                        .position(|pair| pair == b"\r\n")
                        .map_or(arrived, |at| at + 2)
                };
                buf.truncate(start + take);
                // The same bytes as peeked, now taken off the socket.
                tcp.read_exact(&mut buf[start..]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[192, 0, 2, 1]);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    fn v2_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(0x21, 0x21, &body)
    }

    fn client(text: &str) -> ProxyHeader {
        ProxyHeader::Client(text.parse().unwrap())
    }

    /// Valid headers and what they say.
    fn valid() -> Vec<(Vec<u8>, ProxyHeader)> {
        let mut with_tlvs = v2_tcp4([198, 51, 100, 9], 1234);
        // A TLV (type 0x04, NOOP) after the addresses, counted in the length.
        with_tlvs.extend_from_slice(&[0x04, 0x00, 0x02, 0xAA, 0xBB]);
        with_tlvs[15] += 5;
        vec![
            (
                b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n".to_vec(),
                client("203.0.113.7:56324"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n".to_vec(),
                client("[2001:db8::7]:65535"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Unknown),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
                ProxyHeader::Unknown,
            ),
            (
                v2_tcp4([203, 0, 113, 7], 56324),
                client("203.0.113.7:56324"),
            ),
            (
                v2_tcp6("2001:db8::7".parse().unwrap(), 40000),
                client("[2001:db8::7]:40000"),
            ),
            (with_tlvs, client("198.51.100.9:1234")),
            // LOCAL: addresses (here IPv4 ones) are ignored.
            (v2(0x20, 0x11, &[0; 12]), ProxyHeader::Unknown),
            (v2(0x20, 0x00, &[]), ProxyHeader::Unknown),
            (v2(0x21, 0x00, &[]), ProxyHeader::Unknown),
            (v2(0x21, 0x31, &[0; 216]), ProxyHeader::Unknown),
        ]
    }

    #[test]
    fn every_valid_header_is_incomplete_at_every_split_and_whole_at_its_end() {
        for (bytes, expected) in valid() {
            for split in 0..bytes.len() {
                assert!(
                    matches!(parse(&bytes[..split]), Ok(None)),
                    "{:?} cut at {split}: {:?}",
                    String::from_utf8_lossy(&bytes),
                    parse(&bytes[..split])
                );
            }
            let (header, len) = parse(&bytes).unwrap().unwrap();
            assert_eq!((header, len), (expected, bytes.len()));
            // What follows (the TLS ClientHello) is not part of it.
            let mut followed = bytes.clone();
            followed.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00, b'\r', b'\n']);
            assert_eq!(parse(&followed).unwrap(), Some((expected, bytes.len())));
        }
    }

    #[test]
    fn garbage_is_refused_and_stays_refused_however_it_arrives() {
        let mut bad_version = v2_tcp4([1, 2, 3, 4], 1);
        bad_version[12] = 0x11;
        let mut bad_command = v2_tcp4([1, 2, 3, 4], 1);
        bad_command[12] = 0x22;
        let mut bad_family = v2_tcp4([1, 2, 3, 4], 1);
        bad_family[13] = 0x41;
        let mut too_short = v2_tcp4([1, 2, 3, 4], 1);
        too_short[15] = 11;
        let garbage: Vec<Vec<u8>> = vec![
            // A TLS ClientHello: a client that skipped the balancer.
            vec![
                0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
            ],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n".to_vec(),
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(),
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n".to_vec(),
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100], b"\r\n"].concat(),
            bad_version,
            bad_command,
            bad_family,
            too_short,
            v2(0x21, 0x11, &[0; V2_MAX_BODY_LEN + 1]),
        ];
        for bytes in garbage {
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            assert!(parse(&bytes).is_err(), "{shown:?} accepted");
            // Once refused, more bytes never make it acceptable.
            let first = (0..=bytes.len())
                .find(|&n| parse(&bytes[..n]).is_err())
                .unwrap();
            for n in first..=bytes.len() {
                assert!(parse(&bytes[..n]).is_err(), "{shown:?} cut at {n}");
            }
        }
    }

    #[test]
    fn the_first_reads_never_pass_the_shortest_header() {
        assert_eq!(known_rest(b""), Some(MIN_LEN));
        assert_eq!(known_rest(b"PROXY UNKNOWN\r"), Some(1));
        let v2 = v2_tcp4([1, 2, 3, 4], 5);
        assert_eq!(known_rest(&v2[..15]), Some(1));
        assert_eq!(known_rest(&v2[..16]), Some(12));
        assert_eq!(known_rest(&v2[..20]), Some(8));
        assert_eq!(known_rest(b"PROXY TCP4 1.2.3.4"), None);
    }

    /// A connected pair on loopback: (the proxy's side, the balancer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// Writes `header` in two pieces split at `split` (the reader sees the
    /// first alone), then bytes that are not the header's; the reader must
    /// return the header and leave exactly those bytes.
    async fn read_split(header: &[u8], split: usize) -> ProxyHeader {
        use tokio::io::AsyncWriteExt;
        const AFTER: &[u8] = b"\x16\x03\x01 not the header\r\n";
        let (mut server, mut client) = pair().await;
        let mut reading = Box::pin(async move {
            let header = read_header(&mut server).await;
            (header, server)
        });
        client.write_all(&header[..split]).await.unwrap();
        // The reader has taken what it could of the first piece.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), &mut reading).await;
        assert!(
            waited.is_err(),
            "a header cut at {split} was taken as whole"
        );
        client.write_all(&header[split..]).await.unwrap();
        client.write_all(AFTER).await.unwrap();
        let (parsed, mut server) = reading.await;
        let mut rest = vec![0u8; AFTER.len()];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, AFTER, "split at {split}");
        parsed.unwrap()
    }

    #[tokio::test]
    async fn the_reader_takes_the_header_and_not_a_byte_more() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n";
        for split in [1, 14, 15, 16, 30, v1.len() - 2, v1.len() - 1] {
            assert_eq!(
                read_split(v1, split).await,
                client("203.0.113.7:56324"),
                "v1 split at {split}"
            );
        }
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_split(unknown, 14).await, ProxyHeader::Unknown);
        let v2 = v2_tcp6("2001:db8::7".parse().unwrap(), 40000);
        for split in [1, 12, 15, 16, 17, 40, v2.len() - 1] {
            assert_eq!(
                read_split(&v2, split).await,
                client("[2001:db8::7]:40000"),
                "v2 split at {split}"
            );
        }
    }

    #[tokio::test]
    async fn the_reader_refuses_garbage_and_a_close_inside_the_header() {
        use tokio::io::AsyncWriteExt;
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::Missing)
        ));

        let (mut server, mut client) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::Closed)
        ));
    }
}
