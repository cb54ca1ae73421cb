//! Consumers that take envelopes out of Sluice, each reading its own
//! [`sluice_router::Cursor`] so a dead or slow one costs the others nothing.
//!
//! # Layout (as it fills in)
//!
//! - `syslog`: RFC 5424 format (a pure function), octet-counting framing, and TCP, TLS, UDP and
//!   HTTPS transports that only move bytes.
//! - `persister`: JSONL files per source, batched, with rotation and fsync policy.
//! - `archive`: gzip and upload of finished jobs' files to S3, behind a small storage trait.
//!
pub mod archive;
pub mod persister;
pub mod syslog;
