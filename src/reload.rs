//! Reloading without a restart. SIGHUP, or a change of the configuration
//! file or of a certificate, key or OCSP file it names, loads the
//! configuration again exactly as at start-up (same command line, same
//! checks). If it loads, new connections get its certificates and new
//! requests its routes and upstream groups at once; requests, event
//! streams and WebSockets under way go on where they are. If it does not,
//! every error is logged and the previous configuration goes on serving.
//!
//! Without a configuration file there is only the certificates to reload.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigSource};
use crate::proxy::Proxy;
use crate::tls::CertReloader;

/// How often the watched files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What a reload starts from: where the configuration comes from, the
/// certificates being served, and the proxy whose routing it replaces.
pub struct Reloader {
    source: Option<ConfigSource>,
    certs: CertReloader,
    proxy: Arc<Proxy>,
    /// The running configuration's settings that only a restart changes.
    fixed: FixedSettings,
}

/// Settings bound when the listener starts.
#[derive(Debug, PartialEq)]
struct FixedSettings {
    listen: std::net::SocketAddr,
    redirect_http: Option<std::net::SocketAddr>,
    threads: std::num::NonZeroUsize,
    client_auth: bool,
    limits: crate::limits::ConnectionLimits,
    admin: Option<crate::config::AdminSettings>,
    /// The subscriber is built once, at start-up.
    log_format: crate::logging::LogFormat,
    /// One connection to Redis, made at start-up.
    cluster: Option<crate::cluster::ClusterSettings>,
}

impl FixedSettings {
    fn of(config: &Config) -> Self {
        FixedSettings {
            listen: config.listen,
            redirect_http: config.redirect_http,
            threads: config.threads,
            client_auth: config.client_auth,
            limits: config.limits.clone(),
            admin: config.admin.clone(),
            log_format: config.log_format,
            cluster: config.cluster.clone(),
        }
    }
}

/// A hash of every watched file's contents: a rewrite is noticed even when
/// it keeps the size and the modification time (coarse timestamps, `cp -p`).
type Fingerprint = Vec<Option<u64>>;

impl Reloader {
    /// None when there is nothing to reload (fixed in-memory certificates
    /// and no configuration file).
    pub fn new(config: &Config, proxy: Arc<Proxy>) -> Option<Self> {
        Some(Reloader {
            source: config.source.clone(),
            certs: config.cert_reloader.clone()?,
            proxy,
            fixed: FixedSettings::of(config),
        })
    }

    /// Starts watching for SIGHUP and file changes until `shutdown`. The
    /// SIGHUP handler is installed before this returns, so a reload sent
    /// right after start-up is not taken for the default "terminate".
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hangup = hangup_signal();
        tokio::spawn(self.run(hangup, shutdown))
    }

    fn files(&self) -> Vec<PathBuf> {
        let config_file = self.source.as_ref().map(|source| source.file.clone());
        config_file
            .into_iter()
            .chain(self.certs.files().map(Path::to_path_buf))
            .collect()
    }

    fn fingerprint(&self) -> Fingerprint {
        self.files()
            .iter()
            .map(|path| {
                let contents = std::fs::read(path).ok()?;
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                contents.hash(&mut hasher);
                Some(hasher.finish())
            })
            .collect()
    }

    async fn run(mut self, mut hangup: Hangup, shutdown: CancellationToken) {
        let mut seen = self.fingerprint();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let now = self.fingerprint();
                    // Retry only when the files change again: a half-written
                    // file fails once, and the finished write triggers anew.
                    if now != seen {
                        self.reload("file change");
                        seen = self.fingerprint();
                    }
                }
                Some(()) = recv_hangup(&mut hangup) => {
                    self.reload("SIGHUP");
                    seen = self.fingerprint();
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn reload(&mut self, trigger: &str) {
        let metrics = self.proxy.metrics().clone();
        let Some(source) = &self.source else {
            match self.certs.reload() {
                Ok(()) => {
                    tracing::info!(trigger, "certificates reloaded");
                    metrics.config_reload(true, format!("{trigger}: certificates reloaded"));
                }
                Err(err) => {
                    tracing::warn!(
                        trigger,
                        "certificate reload failed, still serving the previous certificates: {err}"
                    );
                    metrics.config_reload(false, format!("{trigger}: {err}"));
                }
            }
            return;
        };
        let config = match Config::load(&source.argv) {
            Ok(config) => config,
            Err(err) => {
                let text = err.to_string();
                for line in text.lines() {
                    tracing::warn!(trigger, "configuration reload failed: {line}");
                }
                tracing::warn!(trigger, "still serving the previous configuration");
                let first = text.lines().next().unwrap_or_default();
                metrics.config_reload(false, format!("{trigger}: {first}"));
                return;
            }
        };
        if let Some(certs) = &config.cert_reloader {
            self.certs.store.adopt(&certs.store);
            self.certs.sources = certs.sources.clone();
        }
        self.proxy.reload(&config);
        let fixed = FixedSettings::of(&config);
        if fixed != self.fixed {
            tracing::warn!(
                trigger,
                "listen, redirect_http, threads, client_ca, the connection and stream limits, proxy_protocol, log_format, admin, admin_token and [cluster] take effect only after a restart"
            );
        }
        let routes = config.effective_routes().len();
        let upstreams = config.upstreams.len();
        tracing::info!(trigger, routes, upstreams, "configuration reloaded");
        metrics.config_reload(
            true,
            format!("{trigger}: {routes} routes, {upstreams} upstream groups"),
        );
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; files are still watched");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
