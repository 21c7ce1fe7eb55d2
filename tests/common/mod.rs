//! Shared test harness: an in-process proxy, the test upstream (also behind
//! TLS or a Unix socket: `fronts`) and TLS clients, all on real sockets at
//! 127.0.0.1:0, plus the child processes (the `ssegate` binary, curl, ...)
//! and temporary directories some tests need. Everything stops or is
//! removed on Drop.
//!
//! Each test file compiles this module on its own and uses only part of it,
//! hence `dead_code` is allowed. Everything is re-exported here, so a test
//! file only needs `mod common; use common::*;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use ssegate::tls::CertPair;

mod browser;
mod clients;
mod fronts;
mod paths;
mod process;
mod proxy;
mod raw;
mod readers;
mod redis_server;
mod script;
mod tempdir;
mod tools;
mod upstream;

// A test file that uses nothing of a module would warn about its re-export.
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use fronts::*;
#[allow(unused_imports)]
pub use paths::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use readers::*;
#[allow(unused_imports)]
pub use redis_server::*;
#[allow(unused_imports)]
pub use script::*;
#[allow(unused_imports)]
pub use tempdir::*;
#[allow(unused_imports)]
pub use tools::*;
#[allow(unused_imports)]
pub use upstream::*;

/// Upper bound for one wait inside the shared helpers (a response, a body,
/// a stream's end): far above what they need, since the machine is small and
/// shared with parallel builds.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Path of a file in the repository (certs/, ...).
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The development certificate for `localhost` (also the CA to trust).
pub fn dev_cert_path() -> PathBuf {
    repo_path("certs/localhost.pem")
}

/// The development certificate's private key.
pub fn dev_key_path() -> PathBuf {
    repo_path("certs/localhost-key.pem")
}

pub fn dev_cert_pair() -> CertPair {
    CertPair {
        cert: dev_cert_path(),
        key: dev_key_path(),
    }
}

/// Logs to the test's output when RUST_LOG is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A `[[certificate]]` table with the development certificate, to start a
/// test's configuration file with.
pub fn certificate_section() -> String {
    format!(
        "[[certificate]]\ncert = {:?}\nkey = {:?}\n\n",
        dev_cert_path().display().to_string(),
        dev_key_path().display().to_string()
    )
}

/// The first TOML block of the README's section `## heading`, with the
/// example certificate paths replaced by the development certificate's.
pub fn readme_toml(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let section = &readme[readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("the README has a section {heading:?}"))..];
    let start = section.find("```toml\n").expect("a configuration in it") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block ends");
    section[start..end]
        .replace(
            "/etc/ssl/example.com/fullchain.pem",
            &dev_cert_path().display().to_string(),
        )
        .replace(
            "/etc/ssl/example.com/privkey.pem",
            &dev_key_path().display().to_string(),
        )
}
