//! Consumers that take envelopes out of Sluice to other systems, each reading its own
//! [`sluice_router::Cursor`] so a dead or slow one costs the others nothing.
//!
//! # Layout
//!
//! - `syslog`: RFC 5424 format (a pure function), octet-counting framing, and TCP, TLS, UDP and
//!   HTTPS transports that only move bytes.
//!
//! The JSONL persister and the S3 archive are the stored log's, in `sluice-store`.
pub mod syslog;

pub use sluice_router::short_reason;
