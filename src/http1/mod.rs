//! HTTP/1.1 on the wire, for both sides of the proxy: the client's
//! connection (`conn::h1`) and the upstream's (`upstream`) parse heads,
//! decode bodies and write chunks with the same code, as pingora's `v1`
//! does: one head parser, one framing type, one body decoder.

pub mod body;
pub mod head;

pub use body::{Decoder, Framing};
