//! ssegate: a TLS-terminating reverse proxy that relays Server-Sent Events
//! event by event. The binary is a thin shell over this library so tests and
//! benchmarks start the same proxy in-process.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod defaults;
pub mod demo;
pub mod error;
pub mod http1;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod redirect;
pub mod reload;
pub mod routes;
pub mod rules;
pub mod server;
pub mod sse;
pub mod tls;
pub mod upstream;
pub mod websocket;
pub mod workers;

pub use config::Config;
pub use error::StartError;
pub use server::Server;
pub use tokio_util::sync::CancellationToken;

/// Binds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let server = Server::bind(config).await?;
    server.run(shutdown).await;
    Ok(())
}
