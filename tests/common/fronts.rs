//! The test upstream behind other transports: a TLS or Unix-socket listener
//! that relays each connection it accepts, byte for byte, to a
//! `TestUpstream` over a TCP connection of its own (one for each), so every
//! `TestUpstream` reply and count works for `https://` and `unix:` targets.
//! `TestCa` is a private certificate authority for the TLS front's
//! certificate. Fronts stop, with their connections, on Drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::TlsAcceptor;

use ssegate::CancellationToken;

use super::TempDir;

/// A private CA, made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    /// The CA certificate as PEM, as `--upstream-ca` reads it.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `dir` and returns its path.
    pub fn write_pem(&self, dir: &TempDir) -> PathBuf {
        dir.write("upstream-ca.pem", self.pem())
    }

    /// A TLS server configuration (ALPN http/1.1 only) with a certificate
    /// for `names` (DNS names or IP addresses) issued by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test upstream");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What a front saw.
#[derive(Default)]
struct FrontCounts {
    accepted: AtomicUsize,
    handshakes: AtomicUsize,
    alpn: Mutex<Vec<Option<Vec<u8>>>>,
}

/// A TLS listener on 127.0.0.1:0 in front of a `TestUpstream`.
pub struct TlsFront {
    pub addr: SocketAddr,
    counts: Arc<FrontCounts>,
    stop: CancellationToken,
}

impl TlsFront {
    /// Relays to the test upstream at `upstream`, presenting `config`'s
    /// certificate.
    pub async fn start(upstream: SocketAddr, config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("front binds");
        let addr = listener.local_addr().expect("front addr");
        let counts = Arc::new(FrontCounts::default());
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(config);
        let (seen, stopped) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen, stopped) = (acceptor.clone(), seen.clone(), stopped.clone());
                tokio::spawn(async move {
                    // A handshake the proxy refuses ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    seen.alpn.lock().unwrap().push(alpn);
                    seen.handshakes.fetch_add(1, Ordering::SeqCst);
                    relay(tls, upstream, stopped).await;
                });
            }
        });
        TlsFront { addr, counts, stop }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// TCP connections accepted, whether their handshake succeeded or not.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// The protocol ALPN settled on, for each completed handshake.
    pub fn alpn(&self) -> Vec<Option<Vec<u8>>> {
        self.counts.alpn.lock().unwrap().clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A Unix-socket listener in a temporary directory in front of a
/// `TestUpstream`.
pub struct UnixFront {
    path: PathBuf,
    counts: Arc<FrontCounts>,
    stop: CancellationToken,
    // Removed after the listener stops (fields drop in order).
    _dir: TempDir,
}

impl UnixFront {
    pub async fn start(upstream: SocketAddr) -> Self {
        let dir = TempDir::new("unix-front");
        let path = dir.path("upstream.sock");
        let listener = UnixListener::bind(&path).expect("front binds its socket");
        let counts = Arc::new(FrontCounts::default());
        let stop = CancellationToken::new();
        let (seen, stopped) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let unix = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((unix, _)) => unix,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(unix, upstream, stopped.clone()));
            }
        });
        UnixFront {
            path,
            counts,
            stop,
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `unix:/tmp/.../upstream.sock`.
    pub fn url(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// Connections accepted.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixFront {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies both ways between `front` and a new connection to `upstream`
/// until either side closes or the front stops. tokio's copy flushes
/// whenever its source has nothing more for now, so each event the test
/// upstream writes goes on at once.
async fn relay<S>(mut front: S, upstream: SocketAddr, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut tcp) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut front, &mut tcp) => {}
        () = stop.cancelled() => {}
    }
}
