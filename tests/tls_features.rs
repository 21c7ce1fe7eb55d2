//! The TLS features beyond the handshake basics (those are in tests/tls.rs):
//! SNI certificate choice, TLS_FALLBACK_SCSV, the server's suite order,
//! session resumption, certificate reload (file change and SIGHUP), start-up
//! key checks, OCSP stapling, client certificates (mTLS), HSTS and the
//! plain-HTTP redirect.
//!
//! Certificates come from throw-away test CAs made with rcgen at run time and
//! written to temporary directories that are removed afterwards. Clients are
//! `openssl s_client` (Debian package `openssl`) and rustls; a missing openssl
//! fails the test and says so. Everything listens on 127.0.0.1:0, and waiting
//! is done on observable conditions (a log line, a handshake that serves the
//! expected certificate), polled with deadlines.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime};

use common::*;
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use ssegate::config::{hsts_header, Config};
use ssegate::tls::{
    certified_key_from_pem, load_source, server_config, server_config_with, CertPair, CertReloader,
    CertSource, CertStore, ClientAuth,
};
use ssegate::{CancellationToken, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous bound for one outside tool run or one wait (two cores, tests in parallel).
const LIMIT: Duration = Duration::from_secs(30);
/// How long a reload may take to show: the files are polled every 2 s.
const RELOAD_LIMIT: Duration = Duration::from_secs(30);
/// Pause between two polls of an observable condition.
const POLL: Duration = Duration::from_millis(100);

// ================================================================ helpers

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

// ---------------------------------------------------------------- test PKI

/// A throw-away certificate authority (ECDSA P-256).
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate issued by a `TestCa`, with its key, as PEM and DER.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A serial number unique within this run: 16 bytes, first byte 0x10..0x7f
/// (positive, fixed length), so two certificates never share one.
fn unique_serial() -> rcgen::SerialNumber {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&(nanos ^ u64::from(std::process::id())).to_be_bytes());
    bytes.extend_from_slice(&n.to_be_bytes());
    bytes[0] = 0x10 + bytes[0] % 0x60;
    rcgen::SerialNumber::from(bytes)
}

fn validity(params: &mut rcgen::CertificateParams) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(90 * 86_400)).into();
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(unique_serial());
        validity(&mut params);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn issue(&self, mut params: rcgen::CertificateParams, cn: &str, org: Option<&str>) -> Leaf {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        params.serial_number = Some(unique_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names` (the first is also the CN).
    fn server(&self, names: &[&str]) -> Leaf {
        self.server_with_cn(names, names[0])
    }

    fn server_with_cn(&self, names: &[&str], cn: &str) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, cn, None)
    }

    /// A client certificate with subject `CN=<cn>, O=ssegate tests`.
    fn client(&self, cn: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, cn, Some("ssegate tests"))
    }
}

/// Writes `<name>.pem` and `<name>-key.pem` into `dir`.
fn write_pair(dir: &TempDir, name: &str, leaf: &Leaf) -> CertPair {
    CertPair {
        cert: dir.write(&format!("{name}.pem"), &leaf.cert_pem),
        key: dir.write(&format!("{name}-key.pem"), &leaf.key_pem),
    }
}

/// A certificate store serving `leaves`, the first being the default.
fn store_of(leaves: &[&Leaf]) -> Arc<CertStore> {
    let keys = leaves
        .iter()
        .map(|l| certified_key_from_pem(&l.cert_pem, &l.key_pem).expect("test key loads"))
        .collect();
    Arc::new(CertStore::from_keys(keys).expect("at least one certificate"))
}

// ---------------------------------------------------------------- logs

/// Everything the in-process proxies log at INFO and above, for tests that
/// wait for a log line. Installed before any proxy starts (so it wins over
/// the harness' optional RUST_LOG subscriber).
static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if std::env::var_os("RUST_LOG").is_some() {
            eprint!("{text}");
        }
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn logs() -> String {
    LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Waits until a logged line contains every one of `needles`.
async fn wait_for_log_line(needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = logs()
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} within {limit:?}; log:\n{}",
            logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An in-process proxy (logs captured).
async fn start_proxy(config: Config) -> ProxyHandle {
    capture_logs();
    spawn_proxy_with(config).await
}

/// The harness config (dev certificate) with the TLS configuration replaced.
fn config_with_tls(upstream: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Config {
    let mut config = proxy_config(upstream);
    config.tls = tls;
    config
}

// ---------------------------------------------------------------- outside tools

/// Runs `openssl` with `args`, writing `input` to its stdin (then closed),
/// or with stdin closed; killed if it outlives `LIMIT`. (The harness'
/// `openssl` cannot feed stdin, which `-ign_eof` sessions need.)
async fn openssl_with_input(args: &[&str], input: Option<&[u8]>) -> ToolRun {
    let mut child = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}", missing_tool("openssl", "openssl", &e)));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).await.expect("write openssl stdin");
        drop(stdin);
    }
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`openssl {}` did not finish in {LIMIT:?}", args.join(" ")))
        .expect("collect openssl output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ToolRun {
        success: output.status.success(),
        all: format!("{stdout}\n{stderr}"),
        stdout,
    }
}

/// What `openssl s_client` saw.
#[derive(Debug)]
struct SClient {
    success: bool,
    /// "New" or "Reused".
    session: String,
    /// e.g. "TLSv1.3", or "(NONE)".
    protocol: String,
    /// e.g. "TLS_AES_256_GCM_SHA384", or "(NONE)".
    cipher: String,
    /// The server certificate's subject without spaces, e.g. "CN=a.test".
    subject: Option<String>,
    output: String,
}

impl SClient {
    fn established(&self) -> bool {
        self.success && self.cipher != "(NONE)" && self.protocol != "(NONE)"
    }
}

/// `openssl s_client -connect addr` plus `args`, with `input` on stdin (or none).
async fn s_client_with_input(addr: SocketAddr, args: &[&str], input: Option<&[u8]>) -> SClient {
    let connect = addr.to_string();
    let mut all_args = vec!["s_client", "-connect", &connect];
    all_args.extend_from_slice(args);
    let run = openssl_with_input(&all_args, input).await;
    // "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" / "Reused, TLSv1.2, Cipher is ..."
    let session_line = run
        .all
        .lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or_else(|| panic!("s_client {args:?} printed no session line:\n{}", run.all));
    let (session, rest) = session_line.split_once(", ").expect("session line");
    let (protocol, cipher) = rest
        .split_once(", Cipher is ")
        .unwrap_or_else(|| panic!("unexpected session line {session_line:?}"));
    // OpenSSL 3.0 prints "subject=CN = a.test", later versions "subject=CN=a.test".
    let subject = run
        .all
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.replace(' ', ""));
    SClient {
        success: run.success,
        session: session.to_owned(),
        protocol: protocol.trim().to_owned(),
        cipher: cipher.trim().to_owned(),
        subject,
        output: run.all,
    }
}

async fn s_client(addr: SocketAddr, args: &[&str]) -> SClient {
    s_client_with_input(addr, args, None).await
}

// ---------------------------------------------------------------- rustls clients

fn client_config(
    ca: &TestCa,
    client_cert: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("test CA is a usable root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn tls_to(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    tokio::time::timeout(LIMIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap_or_else(|_| panic!("TLS handshake with {addr} took over {LIMIT:?}"))
}

/// The subject of the certificate the server presented, e.g. "CN=a.test".
fn served_subject(tls: &TlsStream<TcpStream>) -> String {
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate");
    ssegate::tls::certs::subject(&certs[0]).expect("parsable certificate")
}

/// One fresh handshake as `localhost`, verified against `ca`: the subject served.
async fn handshake_subject(addr: SocketAddr, ca: &TestCa) -> Result<String, String> {
    let config = client_config(ca, None, ALL_VERSIONS, b"http/1.1");
    match tls_to(addr, "localhost", config).await {
        Ok(tls) => Ok(served_subject(&tls)),
        Err(e) => Err(e.to_string()),
    }
}

/// Polls fresh handshakes until the server presents `want`. Every handshake
/// on the way must succeed: a reload swaps certificates whole.
async fn wait_until_served(addr: SocketAddr, ca: &TestCa, want: &str) {
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let subject = handshake_subject(addr, ca)
            .await
            .unwrap_or_else(|e| panic!("a handshake failed while waiting for {want}: {e}"));
        if subject == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still served {subject} after {RELOAD_LIMIT:?}, expected {want}; log:\n{}",
            logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn h1_over(tls: TlsStream<TcpStream>) -> H1Sender {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2_over(tls: TlsStream<TcpStream>) -> H2Sender {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

// ---------------------------------------------------------------- upstreams

/// An upstream that answers `hello <uri>`.
async fn hello_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| {
            Reply::text(format!("hello {}\n", req.target))
        }))
        .start()
        .await
}

/// An upstream whose every request opens an event stream the test feeds.
async fn event_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::event_stream())
        .start()
        .await
}

// ---------------------------------------------------------------- the binary

/// The binary (clean environment: no SSEGATE_*, default log level) with
/// `args`, stderr piped, killed on Drop.
fn binary_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(ssegate_command());
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `ssegate --listen 127.0.0.1:0 <args>`, listening.
async fn start_binary(args: &[&str]) -> SsegateProcess {
    SsegateProcess::start(args, LIMIT).await
}

// ================================================================ SNI

#[tokio::test]
async fn sni_chooses_the_certificate_by_name_and_falls_back_to_the_first() {
    let ca = TestCa::new("ssegate SNI test CA");
    let default = ca.server(&["default.test"]);
    let a = ca.server(&["a.test"]);
    let b = ca.server(&["b.test"]);
    let wild = ca.server(&["*.w.test"]);
    let tls = server_config(store_of(&[&default, &a, &b, &wild])).expect("server config");
    let proxy = start_proxy(config_with_tls(dead_upstream_addr().await, tls)).await;
    let dir = TempDir::new("sni");
    let ca_file = dir.write("ca.pem", ca.pem());

    // (what the client sends as SNI, the certificate expected, the name it must verify for)
    let cases: [(Option<&str>, &str, Option<&str>); 8] = [
        (Some("a.test"), "CN=a.test", Some("a.test")),
        (Some("b.test"), "CN=b.test", Some("b.test")),
        (Some("A.TEST"), "CN=a.test", Some("a.test")),
        (None, "CN=default.test", Some("default.test")),
        (Some("unknown.test"), "CN=default.test", None),
        (Some("x.w.test"), "CN=*.w.test", Some("x.w.test")),
        // A wildcard covers exactly one label.
        (Some("y.x.w.test"), "CN=default.test", None),
        // An IP address is not a host name: the default certificate.
        (Some("127.0.0.1"), "CN=default.test", None),
    ];
    for (sni, want, verify_name) in cases {
        let mut args = vec!["-CAfile", s(&ca_file), "-verify_return_error"];
        match sni {
            Some(name) => args.extend(["-servername", name]),
            None => args.push("-noservername"),
        }
        if let Some(name) = verify_name {
            args.extend(["-verify_hostname", name]);
        }
        let hs = s_client(proxy.addr, &args).await;
        assert!(
            hs.established(),
            "SNI {sni:?}: handshake failed:\n{}",
            hs.output
        );
        assert_eq!(
            hs.subject.as_deref(),
            Some(want),
            "SNI {sni:?} should get {want}:\n{}",
            hs.output
        );
        assert!(
            hs.output.contains("Verify return code: 0 (ok)"),
            "SNI {sni:?}: the chain (and name {verify_name:?}) should verify:\n{}",
            hs.output
        );
    }
}

// ================================================================ fallback SCSV

#[tokio::test]
async fn fallback_scsv_below_tls13_gets_an_inappropriate_fallback_alert() {
    let proxy = start_proxy(proxy_config(dead_upstream_addr().await)).await;
    let base = ["-servername", "localhost"];

    // A client that fell back to TLS 1.2 although the server speaks TLS 1.3.
    let hs = s_client(
        proxy.addr,
        &[&base[..], &["-tls1_2", "-fallback_scsv"]].concat(),
    )
    .await;
    assert!(
        !hs.established(),
        "the downgrade must be refused:\n{}",
        hs.output
    );
    assert!(
        hs.output.contains("inappropriate fallback") && hs.output.contains("alert number 86"),
        "expected alert 86 (inappropriate_fallback):\n{}",
        hs.output
    );

    // The same client without the signal is served TLS 1.2.
    let hs = s_client(proxy.addr, &[&base[..], &["-tls1_2"]].concat()).await;
    assert!(hs.established(), "plain TLS 1.2:\n{}", hs.output);
    assert_eq!(hs.protocol, "TLSv1.2");

    // The signal beside TLS 1.3 is no downgrade.
    let hs = s_client(proxy.addr, &[&base[..], &["-fallback_scsv"]].concat()).await;
    assert!(
        hs.established(),
        "SCSV with TLS 1.3 offered must succeed:\n{}",
        hs.output
    );
    assert_eq!(hs.protocol, "TLSv1.3");
}

// ================================================================ suite order

#[tokio::test]
async fn the_server_order_wins_over_the_clients() {
    let proxy = start_proxy(proxy_config(dead_upstream_addr().await)).await;
    let hs = s_client(
        proxy.addr,
        &[
            "-servername",
            "localhost",
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
        ],
    )
    .await;
    assert!(hs.established(), "{}", hs.output);
    assert_eq!(
        hs.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS 1.2: the server's order must win:\n{}",
        hs.output
    );
    let hs = s_client(
        proxy.addr,
        &[
            "-servername",
            "localhost",
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
    )
    .await;
    assert!(hs.established(), "{}", hs.output);
    assert_eq!(
        hs.cipher, "TLS_AES_256_GCM_SHA384",
        "TLS 1.3: the server's order must win:\n{}",
        hs.output
    );
}

// ================================================================ resumption

/// A request that makes the server close the connection after answering, so
/// s_client (with -ign_eof) reads everything, including TLS 1.3 tickets.
const CLOSE_REQUEST: &[u8] =
    b"GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// "TLS session ticket lifetime hint: 43200 (seconds)" -> 43200.
fn ticket_lifetime_hint(output: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("TLS session ticket lifetime hint: ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

async fn resumes(version_flag: &str, want_protocol: &str) {
    let upstream = hello_upstream().await;
    let proxy = start_proxy(proxy_config(upstream.addr)).await;
    let dir = TempDir::new("resume");
    let session = dir.path("session.pem");
    let first = s_client_with_input(
        proxy.addr,
        &[
            "-servername",
            "localhost",
            version_flag,
            "-ign_eof",
            "-sess_out",
            s(&session),
        ],
        Some(CLOSE_REQUEST),
    )
    .await;
    assert!(first.established(), "first handshake:\n{}", first.output);
    assert_eq!(first.session, "New", "{}", first.output);
    assert_eq!(first.protocol, want_protocol, "{}", first.output);
    assert!(
        first.output.contains("hello /resume"),
        "the request should have been answered:\n{}",
        first.output
    );
    let hint = ticket_lifetime_hint(&first.output)
        .unwrap_or_else(|| panic!("no session ticket was issued:\n{}", first.output));
    assert!(
        hint > 0 && hint < 86_400,
        "ticket lifetime hint {hint} s should be under a day"
    );
    assert!(
        std::fs::metadata(&session).is_ok_and(|m| m.len() > 0),
        "s_client wrote no session"
    );

    let second = s_client_with_input(
        proxy.addr,
        &[
            "-servername",
            "localhost",
            version_flag,
            "-ign_eof",
            "-sess_in",
            s(&session),
        ],
        Some(CLOSE_REQUEST),
    )
    .await;
    assert!(
        second.established(),
        "resumed handshake:\n{}",
        second.output
    );
    assert_eq!(
        second.session, "Reused",
        "the session should be resumed:\n{}",
        second.output
    );
    assert_eq!(second.protocol, want_protocol);
    assert!(second.output.contains("hello /resume"), "{}", second.output);
}

#[tokio::test]
async fn tls13_sessions_resume_with_tickets() {
    resumes("-tls1_3", "TLSv1.3").await;
}

#[tokio::test]
async fn tls12_sessions_resume_with_tickets() {
    resumes("-tls1_2", "TLSv1.2").await;
}

// ================================================================ hot reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_file_change_while_a_stream_stays_open() {
    let ca = TestCa::new("ssegate reload test CA");
    let dir = TempDir::new("reload");
    let pair = write_pair(&dir, "live", &ca.server_with_cn(&["localhost"], "reload-1"));
    let source = CertSource {
        pair: pair.clone(),
        ocsp: None,
    };
    let store = Arc::new(
        CertStore::from_keys(vec![load_source(&source).expect("first pair loads")])
            .expect("one certificate"),
    );
    let mut upstream = event_upstream().await;
    let mut config = config_with_tls(upstream.addr, server_config(store.clone()).expect("tls"));
    config.cert_reloader = Some(CertReloader {
        store,
        sources: vec![source],
    });
    let proxy = start_proxy(config).await;

    // A live event stream over a connection made with the first certificate.
    let tls = tls_to(
        proxy.addr,
        "localhost",
        client_config(&ca, None, ALL_VERSIONS, b"http/1.1"),
    )
    .await
    .expect("first handshake");
    assert_eq!(served_subject(&tls), "CN=reload-1");
    let mut sender = h1_over(tls).await;
    let response = sender
        .send_request(get("/events", Version::HTTP_11))
        .await
        .expect("event stream response");
    assert_eq!(response.status(), StatusCode::OK);
    let stream = upstream.next_stream().await;
    let mut events = EventReader::new(response.into_body());
    let mut expect_event = async |id: u64| {
        assert!(stream.write_event(id, "tick", &[&format!("n{id}")]).await);
        let event = events
            .next_event(LIMIT)
            .await
            .unwrap_or_else(|| panic!("event {id} did not arrive on the open stream"));
        assert!(
            event.text.contains(&format!("id: {id}")),
            "unexpected event {:?}",
            event.text
        );
    };
    expect_event(1).await;

    // New certificate and key: new handshakes see them, the stream goes on.
    // Key first: a poll between the two writes sees a mismatched pair, fails
    // (logged), and the certificate write then triggers the reload anew.
    let second = ca.server_with_cn(&["localhost"], "reload-2");
    std::fs::write(&pair.key, &second.key_pem).expect("replace key");
    std::fs::write(&pair.cert, &second.cert_pem).expect("replace cert");
    wait_until_served(proxy.addr, &ca, "CN=reload-2").await;
    expect_event(2).await;

    // A broken key: the reload fails, is logged, and the new certificate stays.
    std::fs::write(&pair.key, "this is not a private key\n").expect("break key");
    let line = wait_for_log_line(
        &[
            "certificate reload failed",
            s(&pair.key),
            "contains no PRIVATE KEY section",
        ],
        RELOAD_LIMIT,
    )
    .await;
    assert!(
        line.contains("WARN"),
        "a failed reload is a warning: {line}"
    );
    for _ in 0..5 {
        assert_eq!(
            handshake_subject(proxy.addr, &ca).await.as_deref(),
            Ok("CN=reload-2"),
            "after a failed reload the last good certificate is served"
        );
    }
    expect_event(3).await;

    // Fixed files are picked up again: the watcher survived the failure.
    let third = ca.server_with_cn(&["localhost"], "reload-3");
    std::fs::write(&pair.key, &third.key_pem).expect("replace key");
    std::fs::write(&pair.cert, &third.cert_pem).expect("replace cert");
    wait_until_served(proxy.addr, &ca, "CN=reload-3").await;
    expect_event(4).await;
}

/// Whether `pid` has a handler installed for SIGHUP (Linux /proc).
fn catches_sighup(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
}

#[tokio::test]
async fn sighup_reloads_the_certificates_of_the_binary() {
    let ca = TestCa::new("ssegate SIGHUP test CA");
    let dir = TempDir::new("sighup");
    let first = ca.server_with_cn(&["localhost"], "sighup-1");
    let pair = write_pair(&dir, "live", &first);
    let mut proxy = start_binary(&[
        "--cert",
        s(&pair.cert),
        "--key",
        s(&pair.key),
        "--upstream",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(
        handshake_subject(proxy.addr, &ca).await.as_deref(),
        Ok("CN=sighup-1")
    );

    // The 2 s file poll may notice the new files before the signal arrives;
    // either way the reload SIGHUP triggers reads them, and logs its trigger.
    let second = ca.server_with_cn(&["localhost"], "sighup-2");
    std::fs::write(&pair.key, &second.key_pem).expect("replace key");
    std::fs::write(&pair.cert, &second.cert_pem).expect("replace cert");

    // SIGHUP's default action ends the process: wait until ssegate catches it.
    let deadline = Instant::now() + LIMIT;
    while !catches_sighup(proxy.pid() as i32) {
        assert!(
            Instant::now() < deadline,
            "ssegate never installed a SIGHUP handler"
        );
        tokio::time::sleep(POLL).await;
    }
    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    let sent = unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP {}", proxy.pid());
    proxy.wait_for_log("trigger=\"SIGHUP\"").await;
    wait_until_served(proxy.addr, &ca, "CN=sighup-2").await;
    let log = proxy.log();
    assert!(
        log.contains("certificates reloaded trigger=\"SIGHUP\""),
        "the reload should be logged as SIGHUP's:\n{log}"
    );
    assert!(proxy.is_running(), "ssegate must keep running after SIGHUP");
}

// ================================================================ start-up

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_the_start() {
    let ca = TestCa::new("ssegate mismatch test CA");
    let dir = TempDir::new("mismatch");
    let a = write_pair(&dir, "a", &ca.server(&["a.test"]));
    let b = write_pair(&dir, "b", &ca.server(&["b.test"]));
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cert",
        s(&a.cert),
        "--key",
        s(&b.key),
        "--upstream",
        "http://127.0.0.1:9",
    ];
    let output = tokio::time::timeout(LIMIT, binary_command(&args).output())
        .await
        .expect("ssegate should exit at once")
        .expect("run ssegate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a mismatched key must stop the start:\n{stderr}"
    );
    assert!(
        stderr.contains(s(&b.key)) && stderr.contains("does not match"),
        "the error should name the key file and say it does not match:\n{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[tokio::test]
async fn several_cert_key_pairs_are_served_by_name() {
    let ca = TestCa::new("ssegate pairs test CA");
    let dir = TempDir::new("pairs");
    let a = write_pair(&dir, "a", &ca.server(&["a.test"]));
    let b = write_pair(&dir, "b", &ca.server(&["b.test"]));
    let proxy = start_binary(&[
        "--cert",
        s(&a.cert),
        "--key",
        s(&a.key),
        "--cert",
        s(&b.cert),
        "--key",
        s(&b.key),
        "--upstream",
        "http://127.0.0.1:9",
    ])
    .await;
    for (sni, want) in [
        (Some("a.test"), "CN=a.test"),
        (Some("b.test"), "CN=b.test"),
        (None, "CN=a.test"),
    ] {
        let mut args = vec![];
        match sni {
            Some(name) => args.extend(["-servername", name]),
            None => args.push("-noservername"),
        }
        let hs = s_client(proxy.addr, &args).await;
        assert!(hs.established(), "{}", hs.output);
        assert_eq!(
            hs.subject.as_deref(),
            Some(want),
            "SNI {sni:?}:\n{}",
            hs.output
        );
    }
}

// ================================================================ OCSP

/// A real OCSP response ("good") for `cert`, signed by the CA with `openssl
/// ocsp` from a one-line CA database. Returns its file and the serial number.
async fn ocsp_response(dir: &TempDir, ca: &TestCa, cert: &Path) -> (PathBuf, String) {
    let ca_cert = dir.write("ca.pem", ca.pem());
    let ca_key = dir.write("ca-key.pem", ca.key.serialize_pem());
    let serial = openssl(&["x509", "-in", s(cert), "-noout", "-serial"]).await;
    assert!(serial.success, "{}", serial.all);
    let serial = serial
        .all
        .trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("unexpected serial output {:?}", serial.all))
        .to_owned();
    // The CA database `openssl ocsp` answers from (looked up by serial):
    // status V(alid), expiry, no revocation date, serial, file, subject.
    let index = dir.write(
        "index.txt",
        format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=ocsp-test\n"),
    );
    let request = dir.path("ocsp-req.der");
    let response = dir.path("ocsp-resp.der");
    let run = openssl(&[
        "ocsp",
        "-issuer",
        s(&ca_cert),
        "-cert",
        s(cert),
        "-no_nonce",
        "-reqout",
        s(&request),
    ])
    .await;
    assert!(run.success, "OCSP request:\n{}", run.all);
    let run = openssl(&[
        "ocsp",
        "-index",
        s(&index),
        "-rsigner",
        s(&ca_cert),
        "-rkey",
        s(&ca_key),
        "-CA",
        s(&ca_cert),
        "-reqin",
        s(&request),
        "-respout",
        s(&response),
        "-ndays",
        "1",
    ])
    .await;
    assert!(run.success, "OCSP response:\n{}", run.all);
    assert!(std::fs::metadata(&response).is_ok_and(|m| m.len() > 0));
    (response, serial)
}

#[tokio::test]
async fn ocsp_responses_are_stapled_for_the_certificate_they_follow() {
    let ca = TestCa::new("ssegate OCSP test CA");
    let dir = TempDir::new("ocsp");
    let a = write_pair(&dir, "a", &ca.server(&["a.test"]));
    let b = write_pair(&dir, "b", &ca.server(&["b.test"]));
    let (response, serial) = ocsp_response(&dir, &ca, &b.cert).await;
    // --ocsp follows the second pair: it belongs to b.test only.
    let proxy = start_binary(&[
        "--cert",
        s(&a.cert),
        "--key",
        s(&a.key),
        "--cert",
        s(&b.cert),
        "--key",
        s(&b.key),
        "--ocsp",
        s(&response),
        "--upstream",
        "http://127.0.0.1:9",
    ])
    .await;
    for version in ["-tls1_3", "-tls1_2"] {
        let hs = s_client(proxy.addr, &["-servername", "b.test", "-status", version]).await;
        assert!(hs.established(), "{}", hs.output);
        assert_eq!(hs.subject.as_deref(), Some("CN=b.test"));
        for expected in [
            "OCSP Response Data:",
            "OCSP Response Status: successful (0x0)",
            "Cert Status: good",
            &format!("Serial Number: {serial}"),
        ] {
            assert!(
                hs.output.contains(expected),
                "{version}: stapled response should show {expected:?}:\n{}",
                hs.output
            );
        }
        let hs = s_client(proxy.addr, &["-servername", "a.test", "-status", version]).await;
        assert!(hs.established(), "{}", hs.output);
        assert_eq!(hs.subject.as_deref(), Some("CN=a.test"));
        assert!(
            hs.output.contains("OCSP response: no response sent"),
            "{version}: a.test has no OCSP response:\n{}",
            hs.output
        );
    }
}

// ================================================================ mTLS

/// An upstream that answers with the X-Client-Cert-Subject values it received
/// ("none" without); it counts requests, as every `TestUpstream` does.
async fn subject_echo_upstream() -> TestUpstream {
    TestUpstream::builder()
        .otherwise(Reply::with(|req| {
            let values = req.all("x-client-cert-subject");
            if values.is_empty() {
                Reply::body("none")
            } else {
                Reply::body(values.join(" | "))
            }
        }))
        .start()
        .await
}

struct MtlsSetup {
    server_ca: TestCa,
    client_ca: TestCa,
    proxy: ProxyHandle,
    upstream: TestUpstream,
}

async fn mtls_proxy(optional: bool) -> MtlsSetup {
    let server_ca = TestCa::new("ssegate mTLS server CA");
    let client_ca = TestCa::new("ssegate mTLS client CA");
    let server = server_ca.server(&["localhost"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der()).expect("client CA root");
    let auth = ClientAuth {
        roots: Arc::new(roots),
        optional,
    };
    let tls = server_config_with(store_of(&[&server]), Some(&auth)).expect("mTLS config");
    let upstream = subject_echo_upstream().await;
    let mut config = config_with_tls(upstream.addr, tls);
    config.client_auth = true;
    let proxy = start_proxy(config).await;
    MtlsSetup {
        server_ca,
        client_ca,
        proxy,
        upstream,
    }
}

/// GET /whoami over h1 or h2 with `client_cert`, optionally forging the
/// subject header; returns what the upstream saw.
async fn whoami(
    setup: &MtlsSetup,
    client_cert: Option<&Leaf>,
    version: Version,
    forged: Option<&str>,
) -> String {
    let alpn: &[u8] = if version == Version::HTTP_2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    let config = client_config(&setup.server_ca, client_cert, ALL_VERSIONS, alpn);
    let tls = tls_to(setup.proxy.addr, "localhost", config)
        .await
        .expect("handshake");
    let mut request = get("/whoami", version);
    if let Some(forged) = forged {
        request
            .headers_mut()
            .insert("x-client-cert-subject", forged.parse().expect("header"));
    }
    let response = if version == Version::HTTP_2 {
        h2_over(tls).await.send_request(request).await
    } else {
        h1_over(tls).await.send_request(request).await
    }
    .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned()
}

/// The server must refuse the client with `alert`: the handshake fails, or
/// (TLS 1.3, where the client finishes first) the first read returns it.
async fn assert_refused(
    setup: &MtlsSetup,
    client_cert: Option<&Leaf>,
    version: &'static rustls::SupportedProtocolVersion,
    alert: &str,
    why: &str,
) {
    let config = client_config(&setup.server_ca, client_cert, &[version], b"http/1.1");
    let error = match tls_to(setup.proxy.addr, "localhost", config).await {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut received = Vec::new();
            match tokio::time::timeout(LIMIT, tls.read_to_end(&mut received)).await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => panic!(
                    "{why} ({version:?}): the server answered:\n{}",
                    String::from_utf8_lossy(&received)
                ),
                Err(_) => panic!("{why} ({version:?}): neither refused nor answered"),
            }
        }
    };
    assert!(
        error.contains(&format!("received fatal alert: {alert}")),
        "{why} ({version:?}): expected the server's {alert} alert, got: {error}"
    );
}

#[tokio::test]
async fn mtls_required_accepts_only_clients_with_a_certificate_from_the_ca() {
    let setup = mtls_proxy(false).await;
    let alice = setup.client_ca.client("alice");
    let expected = ssegate::tls::certs::subject(&alice.der).expect("subject");
    assert!(expected.contains("CN=alice"), "{expected}");
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let seen = whoami(&setup, Some(&alice), version, None).await;
        assert_eq!(
            seen, expected,
            "{version:?}: upstream should see the verified subject"
        );
        // A forged header is replaced by the verified subject, not added to it.
        let seen = whoami(&setup, Some(&alice), version, Some("CN=admin")).await;
        assert_eq!(
            seen, expected,
            "{version:?}: forged subject must be replaced"
        );
    }
    let before = setup.upstream.received();

    let other_ca = TestCa::new("ssegate unrelated CA");
    let mallory = other_ca.client("mallory");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_refused(
            &setup,
            None,
            version,
            "CertificateRequired",
            "a client without a certificate",
        )
        .await;
        assert_refused(
            &setup,
            Some(&mallory),
            version,
            "UnknownCA",
            "a certificate from another CA",
        )
        .await;
    }
    assert_eq!(
        setup.upstream.received(),
        before,
        "refused clients must not reach the upstream"
    );
}

#[tokio::test]
async fn mtls_optional_accepts_anonymous_clients_and_strips_forged_subjects() {
    let setup = mtls_proxy(true).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let seen = whoami(&setup, None, version, None).await;
        assert_eq!(seen, "none", "{version:?}: no certificate, no header");
        let seen = whoami(&setup, None, version, Some("CN=alice, O=ssegate tests")).await;
        assert_eq!(
            seen, "none",
            "{version:?}: a forged header must be stripped"
        );
    }
    // With a certificate, the subject is still forwarded.
    let bob = setup.client_ca.client("bob");
    let seen = whoami(&setup, Some(&bob), Version::HTTP_11, Some("CN=admin")).await;
    assert_eq!(
        seen,
        ssegate::tls::certs::subject(&bob.der).expect("subject")
    );
    // A certificate from another CA is still refused when one is presented.
    let other_ca = TestCa::new("ssegate unrelated CA");
    assert_refused(
        &setup,
        Some(&other_ca.client("mallory")),
        &rustls::version::TLS13,
        "UnknownCA",
        "an untrusted certificate (optional mode)",
    )
    .await;
}

#[tokio::test]
async fn without_client_auth_a_forged_subject_header_is_stripped() {
    let upstream = subject_echo_upstream().await;
    let proxy = start_proxy(proxy_config(upstream.addr)).await;
    let mut sender = h1_client(proxy.addr).await;
    let mut request = get("/whoami", Version::HTTP_11);
    request
        .headers_mut()
        .insert("x-client-cert-subject", "CN=admin".parse().expect("header"));
    let response = sender.send_request(request).await.expect("response");
    let body = read_body(response.into_body()).await;
    assert_eq!(&body[..], b"none");
}

// ================================================================ HSTS

/// An upstream with an ordinary page, a page with its own HSTS policy and an
/// event stream.
async fn hsts_upstream() -> TestUpstream {
    TestUpstream::builder()
        .on(
            "/own",
            Reply::body("own policy").header("strict-transport-security", "max-age=60"),
        )
        .on("/events*", Reply::event_stream())
        .on("/shared*", Reply::event_stream())
        .otherwise(Reply::body("page"))
        .start()
        .await
}

/// One GET over a new h1 or h2 connection trusting the dev certificate.
async fn fetch(addr: SocketAddr, version: Version, path: &str) -> Response<hyper::body::Incoming> {
    let response = if version == Version::HTTP_2 {
        h2_client(addr).await.send_request(get(path, version)).await
    } else {
        h1_client(addr).await.send_request(get(path, version)).await
    };
    response.expect("response")
}

fn sts(response: &Response<hyper::body::Incoming>) -> Vec<String> {
    response
        .headers()
        .get_all("strict-transport-security")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

#[tokio::test]
async fn hsts_is_added_to_every_response_unless_the_upstream_has_its_own() {
    let mut upstream = hsts_upstream().await;
    let policy = hsts_header(Duration::from_secs(31_536_000), true, false);
    assert_eq!(policy, "max-age=31536000; includeSubDomains");
    let mut config = proxy_config(upstream.addr);
    config.hsts = Some(policy.clone());
    config.streams.shared_prefixes = vec!["/shared".to_owned()];
    let proxy = start_proxy(config).await;

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let response = fetch(proxy.addr, version, "/page").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            sts(&response),
            [std::str::from_utf8(&policy).unwrap()],
            "{version:?} 200"
        );
        let response = fetch(proxy.addr, version, "/own").await;
        assert_eq!(
            sts(&response),
            ["max-age=60"],
            "{version:?}: the upstream's own policy is kept"
        );
    }

    // Event streams, relayed and shared, carry it from the first byte.
    for path in ["/events", "/shared/feed"] {
        let mut sender = h1_client(proxy.addr).await;
        let pending = tokio::spawn(sender.send_request(get(path, Version::HTTP_11)));
        let stream = upstream.next_stream().await;
        let response = tokio::time::timeout(LIMIT, pending)
            .await
            .expect("response headers")
            .expect("task")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            sts(&response),
            [std::str::from_utf8(&policy).unwrap()],
            "{path}"
        );
        assert!(stream.write_event(1, "tick", &["x"]).await);
        let mut events = EventReader::new(response.into_body());
        assert!(events.next_event(LIMIT).await.is_some(), "{path}: event");
    }

    // A proxy error (502) carries it too.
    let mut config = proxy_config(dead_upstream_addr().await);
    config.hsts = Some(policy.clone());
    let failing = start_proxy(config).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let response = fetch(failing.addr, version, "/page").await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            sts(&response),
            [std::str::from_utf8(&policy).unwrap()],
            "{version:?} 502"
        );
    }
}

#[tokio::test]
async fn hsts_is_off_by_default() {
    let upstream = hsts_upstream().await;
    let proxy = start_proxy(proxy_config(upstream.addr)).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let response = fetch(proxy.addr, version, "/page").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            sts(&response).is_empty(),
            "{version:?}: no HSTS unless configured"
        );
        let response = fetch(proxy.addr, version, "/own").await;
        assert_eq!(
            sts(&response),
            ["max-age=60"],
            "{version:?}: the upstream's own"
        );
    }
}

async fn binary_hsts(flags: &[&str]) -> Vec<String> {
    let upstream = hello_upstream().await;
    let dev = dev_cert_pair();
    let upstream_url = format!("http://{}", upstream.addr);
    let mut args = vec![
        "--cert",
        s(&dev.cert),
        "--key",
        s(&dev.key),
        "--upstream",
        &upstream_url,
    ];
    args.extend_from_slice(flags);
    let proxy = start_binary(&args).await;
    let response = fetch(proxy.addr, Version::HTTP_11, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    sts(&response)
}

#[tokio::test]
async fn the_binary_hsts_flags_set_the_header() {
    assert_eq!(binary_hsts(&["--hsts", "2y"]).await, ["max-age=63072000"]);
    assert_eq!(
        binary_hsts(&[
            "--hsts",
            "1y",
            "--hsts-include-subdomains",
            "--hsts-preload"
        ])
        .await,
        ["max-age=31536000; includeSubDomains; preload"]
    );
    assert!(binary_hsts(&[]).await.is_empty(), "off without --hsts");
}

// ================================================================ redirect

#[tokio::test]
async fn plain_http_is_redirected_to_https_with_308() {
    let upstream = TestUpstream::builder()
        .otherwise(Reply::body("upstream"))
        .start()
        .await;
    let mut config = proxy_config(upstream.addr);
    config.redirect_http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    capture_logs();
    let server = Server::bind(config).await.expect("bind");
    let https_port = server.local_addr().port();
    let http_addr = server.redirect_addr().expect("redirect listener bound");
    assert_ne!(http_addr.port(), 0);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    // (method, target, Host, body, expected Location)
    let cases = [
        (
            "GET",
            "/a?b=1",
            "example.test",
            "",
            format!("https://example.test:{https_port}/a?b=1"),
        ),
        (
            "POST",
            "/form",
            "example.test",
            "x=1",
            format!("https://example.test:{https_port}/form"),
        ),
        (
            "GET",
            "/",
            "example.test:8080",
            "",
            format!("https://example.test:{https_port}/"),
        ),
    ];
    for (method, target, host, body, location) in cases {
        let tcp = TcpStream::connect(http_addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("plain h1 handshake");
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", host)
            .body(full_body(body.to_owned()))
            .expect("request");
        let response = tokio::time::timeout(LIMIT, sender.send_request(request))
            .await
            .expect("redirect in time")
            .expect("response");
        assert_eq!(
            response.status(),
            StatusCode::PERMANENT_REDIRECT,
            "{method} {target}"
        );
        assert_eq!(
            response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap()),
            Some(location.as_str()),
            "{method} {target} Host {host}"
        );
    }
    assert_eq!(upstream.received(), 0, "redirects never reach the upstream");

    // The https side is unaffected.
    let response = h1_client(SocketAddr::from(([127, 0, 0, 1], https_port)))
        .await
        .send_request(get("/", Version::HTTP_11))
        .await
        .expect("https response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.received(), 1);

    shutdown.cancel();
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("server stops")
        .expect("server task");
}
