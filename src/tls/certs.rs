//! Certificates: PEM loading, choice by SNI, and swapping them without a
//! restart (`reload` watches the files).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::error::StartError;

/// A certificate chain with its private key, as named on the command line.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A pair plus its optional stapled OCSP response (DER).
#[derive(Debug, Clone)]
pub struct CertSource {
    pub pair: CertPair,
    pub ocsp: Option<PathBuf>,
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

/// Loads a pair with its OCSP response, and warns when the certificate is
/// outside its validity period (it is still served: the operator decides).
pub fn load_source(source: &CertSource) -> Result<CertifiedKey, StartError> {
    let mut key = load_certified_key(&source.pair)?;
    if let Some(ocsp) = &source.ocsp {
        let response = std::fs::read(ocsp).map_err(|e| StartError::file(ocsp, e))?;
        if response.is_empty() {
            return Err(StartError::file(ocsp, "empty OCSP response"));
        }
        key.ocsp = Some(response);
    }
    if let Some(leaf) = key.cert.first() {
        warn_if_not_valid_now(leaf, &source.pair.cert);
    }
    Ok(key)
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
        let reason = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                format!(
                    "private key does not match certificate {}",
                    cert_path.display()
                )
            }
            other => format!(
                "cannot check the key against certificate {}: {other}",
                cert_path.display()
            ),
        };
        StartError::file(key_path, reason)
    })?;
    Ok(certified)
}

fn warn_if_not_valid_now(leaf: &CertificateDer<'_>, path: &Path) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return;
    };
    let validity = cert.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now > validity.not_after.timestamp() {
        tracing::warn!(file = %path.display(), not_after = %validity.not_after, "certificate has expired");
    } else if now < validity.not_before.timestamp() {
        tracing::warn!(file = %path.display(), not_before = %validity.not_before, "certificate is not valid yet");
    }
}

/// The DNS names a certificate is valid for (subjectAltName), lower case.
pub fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The subject of a certificate in RFC 4514 form, e.g. `CN=alice,O=Example`.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.subject().to_string())
}

/// One generation of certificates: the default plus those chosen by name.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    /// Every certificate, the default first.
    all: Vec<Arc<CertifiedKey>>,
}

/// What the admin page and the metrics show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Its DNS names, or its subject when it has none.
    pub names: Vec<String>,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertSet {
    fn new(keys: Vec<CertifiedKey>) -> Option<Self> {
        let mut keys = keys.into_iter();
        let first = keys.next()?;
        Some(Self::with_default(first, keys.collect()))
    }

    fn with_default(first: CertifiedKey, others: Vec<CertifiedKey>) -> Self {
        let keys: Vec<Arc<CertifiedKey>> =
            std::iter::once(first).chain(others).map(Arc::new).collect();
        let default = keys[0].clone();
        let by_name = keys
            .iter()
            .flat_map(|key| {
                let names = key.cert.first().map(dns_names).unwrap_or_default();
                names.into_iter().map(move |name| (name, key.clone()))
            })
            .collect();
        CertSet {
            default,
            by_name,
            all: keys,
        }
    }

    /// Exact name first, then a wildcard covering one label; else the default,
    /// which also serves clients that send no SNI or an IP address.
    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let exact = self.by_name.iter().find(|(n, _)| *n == name);
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.by_name
                .iter()
                .find(|(n, _)| n.strip_prefix("*.") == Some(parent))
        };
        exact
            .or_else(wildcard)
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

/// The certificates being served; swapped whole on reload, so a handshake
/// sees either the old set or the new one, never a mix.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertSet>>,
}

impl CertStore {
    /// One certificate for every client.
    pub fn new(default: CertifiedKey) -> Self {
        CertStore {
            current: RwLock::new(Arc::new(CertSet::with_default(default, Vec::new()))),
        }
    }

    /// Several certificates, chosen by SNI; the first is the default. None if empty.
    pub fn from_keys(keys: Vec<CertifiedKey>) -> Option<Self> {
        Some(CertStore {
            current: RwLock::new(Arc::new(CertSet::new(keys)?)),
        })
    }

    fn current(&self) -> Arc<CertSet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves `other`'s certificates from now on (a reloaded configuration's).
    pub fn adopt(&self, other: &CertStore) {
        let set = other.current();
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Replaces every certificate at once; returns false if `keys` is empty.
    pub fn replace(&self, keys: Vec<CertifiedKey>) -> bool {
        let Some(set) = CertSet::new(keys) else {
            return false;
        };
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        true
    }

    /// The certificate a client naming `server_name` gets.
    pub fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        self.current().choose(server_name)
    }

    /// The names and expiry of every certificate served now, the default
    /// first.
    pub fn summaries(&self) -> Vec<CertSummary> {
        self.current()
            .all
            .iter()
            .filter_map(|key| summary(key.cert.first()?))
            .collect()
    }
}

fn summary(leaf: &CertificateDer<'_>) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let mut names = dns_names(leaf);
    if names.is_empty() {
        names.push(cert.subject().to_string());
    }
    Some(CertSummary {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// The certificates being served and the files they came from, which
/// `reload` loads again on SIGHUP or when they change. A reload that fails
/// keeps the certificates that are being served.
#[derive(Debug, Clone)]
pub struct CertReloader {
    pub store: Arc<CertStore>,
    pub sources: Vec<CertSource>,
}

impl CertReloader {
    /// The certificate, key and OCSP files, to watch for changes.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().flat_map(|s| {
            [
                Some(s.pair.cert.as_path()),
                Some(s.pair.key.as_path()),
                s.ocsp.as_deref(),
            ]
            .into_iter()
            .flatten()
        })
    }

    /// Loads every pair; swaps them in only if all of them load.
    pub fn reload(&self) -> Result<(), StartError> {
        let keys = self
            .sources
            .iter()
            .map(load_source)
            .collect::<Result<Vec<_>, _>>()?;
        if !self.store.replace(keys) {
            return Err(StartError::Config("no certificates configured".into()));
        }
        Ok(())
    }
}
