//! Consumers that take envelopes out of Sluice, each reading its own
//! [`sluice_router::Cursor`] so a dead or slow one costs the others nothing.
//!
//! # Layout (as it fills in)
//!
//! - `syslog`: RFC 5424 format (a pure function), octet-counting framing, and TCP, TLS, UDP and
//!   HTTPS transports that only move bytes.
//! - `persister`: JSONL files per source, batched, with rotation and fsync policy.
//! - `archive`: gzip and upload of finished jobs' files to S3, behind a small storage trait.
//! - `history`: what storage holds of a source (the seq it left off at), for the router.
//!
pub mod archive;
pub mod history;
pub mod persister;
pub mod syslog;

/// An error message as one short line for people: "connection refused", not "Connection refused
/// (os error 111)". Used wherever an error reaches a log line, a notice or an API answer.
pub fn short_reason(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).trim();
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".into(),
    }
}
