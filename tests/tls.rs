//! The TLS side of the proxy as real clients see it: `openssl s_client` for
//! protocol versions, cipher suites and ALPN; certificates made by `openssl`
//! with PKCS#1 RSA and SEC1 EC keys; the handshake timeout; and `curl`.
//!
//! openssl and curl are required (Debian packages `openssl` and `curl`): a
//! test whose tool is missing fails and says so.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use http::Version;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use ssegate::config::{Config, UpstreamGroup, UpstreamUrl};
use ssegate::tls::{CertPair, CertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------- helpers

/// What `openssl s_client` negotiated.
#[derive(Debug)]
struct Handshake {
    /// e.g. "TLSv1.3", or "(NONE)" when no session was established.
    protocol: String,
    /// e.g. "TLS_AES_256_GCM_SHA384", or "(NONE)".
    cipher: String,
    /// The ALPN protocol, if one was negotiated.
    alpn: Option<String>,
    output: String,
    success: bool,
}

impl Handshake {
    fn established(&self) -> bool {
        self.success && self.cipher != "(NONE)" && self.protocol != "(NONE)"
    }

    /// The server refused: the client received a TLS alert and no session
    /// exists. (A client that could not even offer the protocol fails
    /// locally with "no protocols available" and receives no alert.)
    fn refused_by_server(&self) -> bool {
        !self.success
            && self.cipher == "(NONE)"
            && self.output.contains("SSL alert number")
            && !self.output.contains("no protocols available")
            && !self.output.contains("no ciphers available")
    }
}

/// Connects `openssl s_client` to the proxy as `localhost` with `extra` args.
async fn s_client(addr: SocketAddr, extra: &[&str]) -> Handshake {
    let connect = addr.to_string();
    let mut args = vec!["s_client", "-connect", &connect, "-servername", "localhost"];
    args.extend_from_slice(extra);
    let run = openssl(&args).await;
    // "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" / "New, (NONE), Cipher is (NONE)"
    let new_line = run
        .all
        .lines()
        .find(|l| l.starts_with("New, "))
        .unwrap_or_else(|| panic!("s_client printed no session line:\n{}", run.all));
    let rest = new_line.trim_start_matches("New, ");
    let (protocol, cipher) = rest
        .split_once(", Cipher is ")
        .unwrap_or_else(|| panic!("unexpected session line {new_line:?}"));
    let alpn = run
        .all
        .lines()
        .find_map(|l| l.strip_prefix("ALPN protocol: "))
        .map(|p| p.trim().to_owned());
    Handshake {
        protocol: protocol.trim().to_owned(),
        cipher: cipher.trim().to_owned(),
        alpn,
        output: run.all,
        success: run.success,
    }
}

/// s_client arguments that verify the proxy's certificate for `localhost`.
fn verify_with(ca: &Path) -> Vec<String> {
    vec![
        "-CAfile".into(),
        ca.display().to_string(),
        "-verify_return_error".into(),
        "-verify_hostname".into(),
        "localhost".into(),
    ]
}

async fn handshake_verified(addr: SocketAddr, ca: &Path, extra: &[&str]) -> Handshake {
    let verify = verify_with(ca);
    let mut args: Vec<&str> = verify.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let hs = s_client(addr, &args).await;
    assert!(
        hs.established(),
        "handshake with {extra:?} should succeed:\n{}",
        hs.output
    );
    assert!(
        hs.output.contains("Verify return code: 0 (ok)"),
        "the certificate should verify for localhost:\n{}",
        hs.output
    );
    hs
}

/// An upstream that answers every request with `hello <path>`.
async fn hello_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| {
            Reply::text(format!("hello {}\n", req.target))
        }))
        .start()
        .await
}

/// A proxy whose upstream is never reached (handshake-only tests).
async fn handshake_only_proxy() -> ProxyHandle {
    spawn_proxy(dead_upstream_addr().await).await
}

/// One GET through the proxy with rustls + hyper, trusting only `ca`.
async fn request_trusting(
    addr: SocketAddr,
    ca: &Path,
    version: Version,
    path: &str,
) -> (u16, String) {
    let alpn: &[u8] = if version == Version::HTTP_2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    let config = client_tls_config_trusting(ca, &[alpn]);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake verifying the certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let response = if version == Version::HTTP_2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(get(path, version)).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(get(path, version)).await
    }
    .expect("response");
    let status = response.status().as_u16();
    let body = read_body(response.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------- versions

#[tokio::test]
async fn tls12_handshake_uses_ecdhe_and_an_aead_suite() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(proxy.addr, &dev_cert_path(), &["-tls1_2"]).await;
    assert_eq!(hs.protocol, "TLSv1.2", "{}", hs.output);
    assert!(
        hs.cipher.starts_with("ECDHE-ECDSA-")
            && (hs.cipher.contains("GCM") || hs.cipher.contains("CHACHA20-POLY1305")),
        "TLS 1.2 must use an ECDHE + AEAD suite, got {}",
        hs.cipher
    );
    assert!(
        hs.output.contains("Server Temp Key: X25519")
            || hs.output.contains("Server Temp Key: ECDH"),
        "ephemeral ECDH key exchange expected:\n{}",
        hs.output
    );
}

#[tokio::test]
async fn tls13_handshake_succeeds() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(proxy.addr, &dev_cert_path(), &["-tls1_3"]).await;
    assert_eq!(hs.protocol, "TLSv1.3", "{}", hs.output);
    assert!(
        [
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&hs.cipher.as_str()),
        "unexpected TLS 1.3 suite {}",
        hs.cipher
    );
}

#[tokio::test]
async fn a_client_offering_everything_gets_tls13() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(proxy.addr, &dev_cert_path(), &[]).await;
    assert_eq!(hs.protocol, "TLSv1.3", "{}", hs.output);
}

/// OpenSSL 3 only offers TLS 1.0/1.1 at security level 0.
const OLD_TLS_CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

#[tokio::test]
async fn tls10_is_refused_by_the_server() {
    let proxy = handshake_only_proxy().await;
    let hs = s_client(proxy.addr, &["-tls1", "-cipher", OLD_TLS_CIPHERS]).await;
    assert!(
        hs.refused_by_server(),
        "TLS 1.0 must be refused with an alert:\n{}",
        hs.output
    );
}

#[tokio::test]
async fn tls11_is_refused_by_the_server() {
    let proxy = handshake_only_proxy().await;
    let hs = s_client(proxy.addr, &["-tls1_1", "-cipher", OLD_TLS_CIPHERS]).await;
    assert!(
        hs.refused_by_server(),
        "TLS 1.1 must be refused with an alert:\n{}",
        hs.output
    );
}

// ---------------------------------------------------------------- cipher suites

#[tokio::test]
async fn weak_tls12_suites_are_refused() {
    let proxy = handshake_only_proxy().await;
    for (suite, why) in [
        ("AES128-SHA", "RSA key exchange, CBC, SHA-1"),
        ("AES256-SHA256", "RSA key exchange, CBC"),
        ("AES256-GCM-SHA384", "RSA key exchange (no forward secrecy)"),
        ("AES128-GCM-SHA256", "RSA key exchange (no forward secrecy)"),
        ("ECDHE-ECDSA-AES128-SHA", "CBC with SHA-1 (not AEAD)"),
        ("ECDHE-ECDSA-AES256-SHA384", "CBC (not AEAD)"),
        ("DHE-RSA-AES128-GCM-SHA256", "finite-field DHE"),
    ] {
        let hs = s_client(
            proxy.addr,
            &["-tls1_2", "-cipher", &format!("{suite}:@SECLEVEL=0")],
        )
        .await;
        assert!(
            hs.refused_by_server(),
            "{suite} ({why}) must be refused by the server:\n{}",
            hs.output
        );
    }
}

#[tokio::test]
async fn ecdhe_aead_tls12_suites_are_accepted() {
    let proxy = handshake_only_proxy().await;
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let hs =
            handshake_verified(proxy.addr, &dev_cert_path(), &["-tls1_2", "-cipher", suite]).await;
        assert_eq!(hs.protocol, "TLSv1.2");
        assert_eq!(hs.cipher, suite, "{}", hs.output);
    }
}

#[tokio::test]
async fn the_server_picks_the_suite_by_its_own_order() {
    let proxy = handshake_only_proxy().await;
    // The client lists its favourites first; the server prefers AES-256-GCM.
    let hs = handshake_verified(
        proxy.addr,
        &dev_cert_path(),
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
        ],
    )
    .await;
    assert_eq!(hs.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384", "{}", hs.output);
    let hs = handshake_verified(
        proxy.addr,
        &dev_cert_path(),
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
    )
    .await;
    assert_eq!(hs.cipher, "TLS_AES_256_GCM_SHA384", "{}", hs.output);
}

// ---------------------------------------------------------------- ALPN, SNI

#[tokio::test]
async fn alpn_h2_is_negotiated() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(proxy.addr, &dev_cert_path(), &["-alpn", "h2"]).await;
    assert_eq!(hs.alpn.as_deref(), Some("h2"), "{}", hs.output);
}

#[tokio::test]
async fn alpn_http11_is_negotiated() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(proxy.addr, &dev_cert_path(), &["-alpn", "http/1.1"]).await;
    assert_eq!(hs.alpn.as_deref(), Some("http/1.1"), "{}", hs.output);
}

#[tokio::test]
async fn alpn_prefers_h2_when_both_are_offered() {
    let proxy = handshake_only_proxy().await;
    let hs = handshake_verified(
        proxy.addr,
        &dev_cert_path(),
        &["-alpn", "http/1.1,h2", "-tls1_2"],
    )
    .await;
    assert_eq!(hs.alpn.as_deref(), Some("h2"), "{}", hs.output);
}

#[tokio::test]
async fn a_client_without_sni_still_gets_the_certificate() {
    let proxy = handshake_only_proxy().await;
    let connect = proxy.addr.to_string();
    let verify = verify_with(&dev_cert_path());
    let mut args = vec!["s_client", "-connect", &connect, "-noservername"];
    args.extend(verify.iter().map(String::as_str));
    let run = openssl(&args).await;
    assert!(run.success, "handshake without SNI:\n{}", run.all);
    assert!(
        run.all.contains("Verify return code: 0 (ok)"),
        "{}",
        run.all
    );
}

// ---------------------------------------------------------------- key formats

/// An openssl config for a self-signed end-entity certificate for localhost.
const REQ_CONFIG: &str = "\
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = localhost
O = ssegate tests
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
";

#[derive(Clone, Copy, Debug)]
enum KeyKind {
    /// `openssl genrsa -traditional`: `-----BEGIN RSA PRIVATE KEY-----`.
    RsaPkcs1,
    /// `openssl ecparam -genkey`: `-----BEGIN EC PRIVATE KEY-----` (with the
    /// `EC PARAMETERS` block that a plain `ecparam -genkey` puts before it).
    EcSec1,
}

/// Writes cert.pem and key.pem made by openssl into `dir`.
async fn openssl_cert(dir: &TempDir, kind: KeyKind) -> CertPair {
    let config = dir.path("req.cnf");
    let key = dir.path("key.pem");
    let cert = dir.path("cert.pem");
    std::fs::write(&config, REQ_CONFIG).expect("write openssl config");
    let key_s = key.to_str().expect("utf-8 path");
    let gen = match kind {
        KeyKind::RsaPkcs1 => openssl(&["genrsa", "-traditional", "-out", key_s, "2048"]).await,
        KeyKind::EcSec1 => {
            openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-out", key_s]).await
        }
    };
    assert!(gen.success, "key generation failed:\n{}", gen.all);
    let pem = std::fs::read_to_string(&key).expect("key written");
    let first_key_header = pem
        .lines()
        .find(|l| l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY"))
        .unwrap_or_default();
    match kind {
        KeyKind::RsaPkcs1 => {
            assert_eq!(first_key_header, "-----BEGIN RSA PRIVATE KEY-----", "{pem}")
        }
        KeyKind::EcSec1 => {
            assert_eq!(first_key_header, "-----BEGIN EC PRIVATE KEY-----", "{pem}");
            assert!(pem.starts_with("-----BEGIN EC PARAMETERS-----"), "{pem}");
        }
    }
    let req = openssl(&[
        "req",
        "-x509",
        "-new",
        "-config",
        config.to_str().expect("utf-8 path"),
        "-key",
        key_s,
        "-sha256",
        "-days",
        "2",
        "-out",
        cert.to_str().expect("utf-8 path"),
    ])
    .await;
    assert!(req.success, "certificate generation failed:\n{}", req.all);
    CertPair { cert, key }
}

async fn proxy_with_openssl_key(kind: KeyKind, expected_tls12_prefix: &str) {
    let dir = TempDir::new(&format!("{kind:?}").to_lowercase());
    let pair = openssl_cert(&dir, kind).await;
    let key = ssegate::tls::load_certified_key(&pair)
        .unwrap_or_else(|e| panic!("{kind:?} key should load: {e}"));
    let tls = ssegate::tls::server_config(CertStore::new(key)).expect("server config");
    let upstream = hello_upstream().await;
    let config = Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        UpstreamGroup::single(
            UpstreamUrl::parse(&format!("http://{}", upstream.addr)).expect("upstream url"),
        ),
    );
    let proxy = spawn_proxy_with(config).await;

    let hs = handshake_verified(proxy.addr, &pair.cert, &["-tls1_2"]).await;
    assert!(
        hs.cipher.starts_with(expected_tls12_prefix),
        "{kind:?} certificate: TLS 1.2 suite {} should start with {expected_tls12_prefix}",
        hs.cipher
    );
    let hs = handshake_verified(proxy.addr, &pair.cert, &["-tls1_3"]).await;
    assert_eq!(hs.protocol, "TLSv1.3");

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let (status, body) =
            request_trusting(proxy.addr, &pair.cert, version, "/through?key=1").await;
        assert_eq!(status, 200, "{kind:?} over {version:?}: {body}");
        assert_eq!(body, "hello /through?key=1\n", "{kind:?} over {version:?}");
    }
}

#[tokio::test]
async fn rsa_certificate_with_pkcs1_key_works() {
    proxy_with_openssl_key(KeyKind::RsaPkcs1, "ECDHE-RSA-").await;
}

#[tokio::test]
async fn ec_certificate_with_sec1_key_works() {
    proxy_with_openssl_key(KeyKind::EcSec1, "ECDHE-ECDSA-").await;
}

// ---------------------------------------------------------------- handshake timeout

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

async fn proxy_with_short_handshake_timeout() -> (ProxyHandle, TestUpstream) {
    let upstream = hello_upstream().await;
    let mut config = proxy_config(upstream.addr);
    config.timeouts.tls_handshake = HANDSHAKE_TIMEOUT;
    (spawn_proxy_with(config).await, upstream)
}

/// Reads until the server closes; returns what it sent and how long it took.
async fn wait_for_close(tcp: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf))
            .await
            .expect("the server should close a stalled handshake well within 15 s");
        match read {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading from the proxy: {e}"),
        }
    }
    (received, started.elapsed())
}

fn assert_closed_after_timeout(received: &[u8], elapsed: Duration) {
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "closed after {elapsed:?}, before the {HANDSHAKE_TIMEOUT:?} handshake timeout"
    );
    assert!(
        elapsed < HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        "closed only after {elapsed:?}"
    );
    // Nothing, or at most a TLS alert record (content type 21).
    assert!(
        received.is_empty() || received[0] == 21,
        "unexpected bytes from the server: {received:?}"
    );
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let (proxy, _upstream) = proxy_with_short_handshake_timeout().await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (received, elapsed) = wait_for_close(&mut tcp, started).await;
    assert_closed_after_timeout(&received, elapsed);
}

#[tokio::test]
async fn a_client_stalling_mid_hello_is_closed_after_the_handshake_timeout() {
    let (proxy, _upstream) = proxy_with_short_handshake_timeout().await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    // A handshake record header announcing 512 bytes, then only a few of them.
    tcp.write_all(&[22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3])
        .await
        .expect("send partial ClientHello");
    let (received, elapsed) = wait_for_close(&mut tcp, started).await;
    assert_closed_after_timeout(&received, elapsed);
}

#[tokio::test]
async fn the_handshake_timeout_does_not_limit_an_established_connection() {
    let (proxy, _upstream) = proxy_with_short_handshake_timeout().await;
    let mut sender = h1_client(proxy.addr).await;
    // Deliberately outlive the handshake timeout on an idle, established
    // connection: there is no event to wait for, only time passing.
    tokio::time::sleep(HANDSHAKE_TIMEOUT * 2).await;
    let response = sender
        .send_request(get("/later", Version::HTTP_11))
        .await
        .expect("connection still open after the handshake timeout");
    assert_eq!(response.status(), 200);
    let body = read_body(response.into_body()).await;
    assert_eq!(&body[..], b"hello /later\n");
}

// ---------------------------------------------------------------- curl

async fn curl_through_proxy(http_flag: &str, expected_version: &str) {
    let upstream = hello_upstream().await;
    let proxy = spawn_proxy(upstream.addr).await;
    let url = format!("https://localhost:{}/curl/path?q=1", proxy.addr.port());
    let mut curl = curl_command(proxy.addr.port(), &dev_cert_path(), 20);
    curl.args([http_flag, "-w", "%{http_version} %{response_code}", &url]);
    let run = run_tool(curl, "curl").await;
    assert!(run.success, "curl {http_flag} failed:\n{}", run.all);
    assert_eq!(
        run.stdout,
        format!("hello /curl/path?q=1\n{expected_version} 200"),
        "{}",
        run.all
    );
}

#[tokio::test]
async fn curl_over_http2_gets_the_upstream_body() {
    curl_through_proxy("--http2", "2").await;
}

#[tokio::test]
async fn curl_over_http11_gets_the_upstream_body() {
    curl_through_proxy("--http1.1", "1.1").await;
}
