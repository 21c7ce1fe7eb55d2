//! TLS: PEM loading, the rustls `ServerConfig`, and the dev-certificate generator.
//!
//! Only TLS 1.2 and 1.3 are enabled, and only the aws-lc-rs provider's default
//! suites: ECDHE key exchange with AEAD ciphers. Everything is loaded and checked
//! at start-up so a bad file is one clear line, not a failed handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::error::StartError;

/// ALPN protocols offered to clients, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The development certificate and key from `certs/`, built into the binary so
/// `ssegate demo` works from any directory.
pub const DEV_CERT_PEM: &str = include_str!("../certs/localhost.pem");
pub const DEV_KEY_PEM: &str = include_str!("../certs/localhost-key.pem");

/// A certificate chain with its private key, as named on the command line.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads a PEM certificate chain, leaf first.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let pem = std::fs::read(path).map_err(|e| StartError::file(path, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::file(path, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(StartError::file(path, "contains no CERTIFICATE section"));
    }
    Ok(chain)
}

/// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    let pem = std::fs::read(path).map_err(|e| StartError::file(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => StartError::file(
            path,
            "contains no PRIVATE KEY section (PKCS#8, RSA or EC expected)",
        ),
        other => StartError::file(path, format!("not a PEM private key: {other}")),
    })
}

/// Loads one pair and checks that the key belongs to the certificate.
pub fn load_certified_key(pair: &CertPair) -> Result<CertifiedKey, StartError> {
    let chain = load_cert_chain(&pair.cert)?;
    let key = load_private_key(&pair.key)?;
    certified_key_from_der(chain, key, &pair.cert, &pair.key)
}

/// Builds a `CertifiedKey` from in-memory PEM (the built-in dev certificate).
pub fn certified_key_from_pem(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, StartError> {
    let name = Path::new("<built-in dev certificate>");
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::file(name, e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| StartError::file(name, e))?;
    certified_key_from_der(chain, key, name, name)
}

fn certified_key_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, StartError> {
    let provider = aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| StartError::file(key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        StartError::file(
            key_path,
            format!("does not match certificate {}: {e}", cert_path.display()),
        )
    })?;
    Ok(certified)
}

/// Serves one certificate to every client, with or without SNI.
///
/// Scanners and some clients send no SNI; rustls' SNI resolver would refuse
/// them, so the certificate is the fallback for every hello.
#[derive(Debug)]
pub struct CertStore {
    default: Arc<CertifiedKey>,
}

impl CertStore {
    pub fn new(default: CertifiedKey) -> Self {
        CertStore {
            default: Arc::new(default),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.default.clone())
    }
}

/// The server configuration: TLS 1.2 + 1.3, ECDHE + AEAD suites, the server's
/// suite order, ALPN h2 and http/1.1, and stateless session tickets.
pub fn server_config(certs: CertStore) -> Result<Arc<ServerConfig>, StartError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.ignore_client_order = true;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for local development, as PEM (certificate, key).
pub fn generate_self_signed(names: &[String], days: u32) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    dn.push(rcgen::DnType::OrganizationName, "ssegate development");
    params.distinguished_name = dn;
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}
