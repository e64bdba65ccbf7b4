//! The DNSPort: A and AAAA through Tor, PTR, and virtual addresses for .onion names.
//!
//! - `service`: the protocol core (bytes in, bytes out; no sockets).
//! - `automap`: the bounded name <-> virtual address table the TransPort also reads.
//! - `cache`: answers kept for a fixed TTL.
//! - `server`: UDP and TCP listeners.

pub mod automap;
pub mod cache;
pub mod server;
pub mod service;

pub use self::{
    automap::Automap,
    cache::Cache,
    service::{DnsService, LookupError, Resolver},
};
