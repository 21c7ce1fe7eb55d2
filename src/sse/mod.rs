//! Server-Sent Events: where events begin and end, and the relaying body.

pub mod body;
pub mod framing;
pub mod hub;
pub mod parser;

pub use body::{AccessLog, BodyKind, Outcome, RelayBody, RelaySettings, RouteLabel};
pub use framing::EventBoundary;
