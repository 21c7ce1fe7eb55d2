//! The TLS handshake of one accepted connection, with the fallback-SCSV check
//! in front of rustls.

use std::io;
use std::sync::Arc;

use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use super::client_hello::{self, HelloParse, MAX_HELLO_LEN};
use crate::metrics::TlsFailure;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client retried with a lower TLS version while signalling TLS_FALLBACK_SCSV (downgrade refused)")]
    InappropriateFallback,
    #[error("connection closed before the ClientHello")]
    ClosedEarly,
    #[error("ClientHello larger than {MAX_HELLO_LEN} bytes")]
    HelloTooLarge,
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl HandshakeError {
    /// Why the handshake failed, as the metrics count it.
    pub fn failure(&self) -> TlsFailure {
        match self {
            HandshakeError::InappropriateFallback => TlsFailure::FallbackScsv,
            HandshakeError::ClosedEarly => TlsFailure::Closed,
            HandshakeError::HelloTooLarge => TlsFailure::Protocol,
            HandshakeError::Tls(err) => tls_failure(err),
            // tokio-rustls reports rustls' errors as InvalidData.
            HandshakeError::Io(err) => match err.get_ref().and_then(|e| e.downcast_ref()) {
                Some(tls) => tls_failure(tls),
                None => match err.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => TlsFailure::Closed,
                    _ => TlsFailure::Io,
                },
            },
        }
    }
}

fn tls_failure(err: &rustls::Error) -> TlsFailure {
    match err {
        rustls::Error::NoCertificatesPresented => TlsFailure::NoCert,
        rustls::Error::InvalidCertificate(_) => TlsFailure::BadCert,
        rustls::Error::PeerIncompatible(_) => TlsFailure::Incompatible,
        _ => TlsFailure::Protocol,
    }
}

/// Reads the ClientHello, refuses downgrades signalled by TLS_FALLBACK_SCSV
/// with an `inappropriate_fallback` alert, and completes the handshake.
pub async fn accept(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let mut hello = Vec::with_capacity(2048);
    loop {
        match client_hello::parse(&hello) {
            HelloParse::Incomplete if hello.len() > MAX_HELLO_LEN => {
                return Err(HandshakeError::HelloTooLarge)
            }
            HelloParse::Incomplete => {
                if tcp.read_buf(&mut hello).await? == 0 {
                    return Err(HandshakeError::ClosedEarly);
                }
            }
            HelloParse::Complete(summary) if summary.is_inappropriate_fallback() => {
                let alert = client_hello::inappropriate_fallback_alert(summary.record_version);
                tcp.write_all(&alert).await?;
                tcp.shutdown().await?;
                return Err(HandshakeError::InappropriateFallback);
            }
            // A valid hello, or bytes rustls will reject with the right alert.
            HelloParse::Complete(_) | HelloParse::NotAHello => break,
        }
    }

    // Hand the bytes already read to rustls, then let tokio-rustls finish.
    let mut acceptor = Acceptor::default();
    let mut unread = &hello[..];
    let accepted = loop {
        while !unread.is_empty() {
            acceptor.read_tls(&mut unread)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {
                let mut more = Vec::with_capacity(1024);
                if tcp.read_buf(&mut more).await? == 0 {
                    return Err(HandshakeError::ClosedEarly);
                }
                hello = more;
                unread = &hello[..];
            }
            Err((err, mut alert)) => {
                let mut bytes = Vec::new();
                // Best effort: the client may already be gone.
                let _ = alert.write(&mut bytes);
                let _ = tcp.write_all(&bytes).await;
                return Err(HandshakeError::Tls(err));
            }
        }
    };
    StartHandshake::from_parts(accepted, tcp)
        .into_stream(config)
        .await
        .map_err(HandshakeError::Io)
}
