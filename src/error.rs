//! Typed errors. Start-up errors name the file and the reason; request errors
//! say which side failed, which decides the status code the client sees.

use std::path::PathBuf;

use http::StatusCode;

/// Anything that stops ssegate from starting. Printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid --upstream {url:?}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

impl StartError {
    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        StartError::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why one proxied request failed before a response could be relayed.
/// The variant says which side failed, which decides the status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream refused the connection or could not be reached.
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),
    /// The upstream accepted the request but failed before a usable
    /// response head (closed, reset, malformed or unexpected response).
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// No response headers within `--request-timeout`.
    #[error("upstream sent no response headers within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The client's request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke off or is malformed.
    #[error("bad request body: {0}")]
    ClientBody(String),
    /// The client stopped sending its request body.
    #[error("client sent no request body data within {0:?}")]
    ClientTimeout(std::time::Duration),
    /// The request's header section exceeds the proxy's limit.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request body exceeds `--max-body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// A method the proxy does not forward (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No route matches the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The client's address holds `--max-streams-per-ip` streams already.
    #[error("too many event streams from this address (limit {0})")]
    TooManyStreams(u32),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The short text body sent to the client: status reason only, no internals.
    pub fn client_message(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_GATEWAY => "502 Bad Gateway\n",
            StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
            StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "431 Request Header Fields Too Large\n",
            StatusCode::METHOD_NOT_ALLOWED => "405 Method Not Allowed\n",
            StatusCode::PAYLOAD_TOO_LARGE => "413 Content Too Large\n",
            StatusCode::NOT_FOUND => "404 Not Found\n",
            StatusCode::TOO_MANY_REQUESTS => {
                "429 Too Many Requests: too many event streams from this address\n"
            }
            _ => "400 Bad Request\n",
        }
    }

    /// Whether the client's side failed (its connection then closes after
    /// the error response), rather than the upstream's. A stream refused
    /// for a limit is not a failure: the request was read whole, and the
    /// connection goes on.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error() && !matches!(self, ProxyError::TooManyStreams(_))
    }
}

/// Error type carried by relayed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error with its sources, e.g. "client error (Connect): tcp connect error: Connection refused".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
