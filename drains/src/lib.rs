//! Consumers that take envelopes out of Sluice to other systems, each reading its own
//! [`sluice_router::Cursor`] so a dead or slow one costs the others nothing.
//!
//! # Layout
//!
//! - `syslog`: RFC 5424 format (a pure function), octet-counting framing, and TCP, TLS, UDP and
//!   HTTPS transports that only move bytes.
//! - `tls`: TLS material loaded once (drains' client configuration, a TLS listener's server
//!   configuration), with typed errors.
//!
//! The JSONL persister and the S3 archive are the stored log's, in `sluice-store`.
//!
//! # Data path
//!
//! A drain's task (`syslog::drain`) reads its own cursor on the source it is bound to, formats
//! each envelope as RFC 5424 (`syslog::format`), frames it (octet counting over TCP and TLS, one
//! datagram over UDP, a newline-separated batch over HTTPS) and writes it through
//! `syslog::transport`. When it falls a ring behind, the cursor's exact loss count becomes one
//! `LGR` line in the drain's own stream; when the peer is down, it reconnects with backoff and
//! says so in the source's log.
pub mod syslog;
pub mod tls;

pub use sluice_router::short_reason;
