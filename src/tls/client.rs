//! The client side of TLS, for `https` upstreams: one `ClientConfig`, built
//! at start-up, trusting either the CA certificates of `--upstream-ca` (a
//! private CA) or the system's roots.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::{ClientConfig, RootCertStore};

use super::load_roots;
use crate::error::StartError;

/// The upstream protocol: the exchange speaks HTTP/1.1 only.
const UPSTREAM_ALPN: &[u8] = b"http/1.1";

/// TLS 1.2 and 1.3 with the aws-lc-rs provider's defaults, ALPN http/1.1,
/// server certificates checked against the CA certificates in `ca`, or the
/// system's roots without one.
pub fn upstream_client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, StartError> {
    let roots = match ca {
        Some(path) => load_roots(path)?,
        None => system_roots()?,
    };
    client_config(roots)
}

/// As `upstream_client_config`, trusting `roots`.
pub fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, StartError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![UPSTREAM_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The system's CA certificates (the OpenSSL locations, SSL_CERT_FILE and
/// SSL_CERT_DIR on Linux). An error only when none is usable: a bundle with
/// a few odd entries still serves.
fn system_roots() -> Result<RootCertStore, StartError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(StartError::Config(format!(
            "https upstream: no system CA certificates could be loaded ({why}); give --upstream-ca"
        )));
    }
    Ok(roots)
}
