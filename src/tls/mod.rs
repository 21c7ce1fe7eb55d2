//! TLS: the rustls `ServerConfig`, certificates, and the handshake; the
//! `ClientConfig` of https upstreams (`client`).
//!
//! Only TLS 1.2 and 1.3 are enabled, with the aws-lc-rs provider's default
//! suites (ECDHE key exchange, AEAD ciphers only) in the server's order, and
//! TLS_FALLBACK_SCSV honoured. Everything is loaded and checked at start-up so
//! a bad file is one clear line, not a failed handshake later.

pub mod accept;
pub mod certs;
pub mod client;
pub mod client_hello;

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use certs::{
    certified_key_from_pem, load_cert_chain, load_certified_key, load_private_key, load_source,
    CertPair, CertReloader, CertSource, CertStore, CertSummary,
};
pub use client::upstream_client_config;

use crate::error::StartError;

/// ALPN protocols offered to clients, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The development certificate and key from `certs/`, built into the binary so
/// `ssegate demo` works from any directory.
pub const DEV_CERT_PEM: &str = include_str!("../../certs/localhost.pem");
pub const DEV_KEY_PEM: &str = include_str!("../../certs/localhost-key.pem");

/// Client certificates (mTLS): which CA signs them, and whether they are required.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub roots: Arc<RootCertStore>,
    /// Ask for a certificate but accept clients without one.
    pub optional: bool,
}

impl ClientAuth {
    /// Loads the CA certificates from a PEM file.
    pub fn load(path: &std::path::Path, optional: bool) -> Result<Self, StartError> {
        Ok(ClientAuth {
            roots: Arc::new(load_roots(path)?),
            optional,
        })
    }

    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, StartError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider);
        let builder = if self.optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| StartError::Config(format!("--client-ca: {e}")))
    }
}

/// The CA certificates of a PEM file (client certificates' CAs, or a
/// private CA of https upstreams); every one must be usable.
pub fn load_roots(path: &std::path::Path) -> Result<RootCertStore, StartError> {
    let mut roots = RootCertStore::empty();
    for cert in load_cert_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| StartError::file(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server configuration: TLS 1.2 + 1.3, ECDHE + AEAD suites, the server's
/// suite order, ALPN h2 and http/1.1, and stateless session tickets.
pub fn server_config(certs: impl Into<Arc<CertStore>>) -> Result<Arc<ServerConfig>, StartError> {
    server_config_with(certs.into(), None)
}

/// As `server_config`, optionally requiring or asking for client certificates.
pub fn server_config_with(
    certs: Arc<CertStore>,
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>, StartError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(auth.verifier()?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    // The strongest suites first, whatever order the client prefers.
    config.ignore_client_order = true;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // Stateless tickets for TLS 1.2 and 1.3: 12-hour lifetime, keys rotated.
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

/// The subject of the client's verified certificate, if it sent one.
pub fn client_subject(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    certs?.first().and_then(certs::subject)
}
