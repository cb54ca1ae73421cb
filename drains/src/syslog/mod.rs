//! Syslog drains: the RFC 5424 [`format`](mod@format) (pure), and transports that only move its bytes.

pub mod drain;
pub mod format;
pub mod https;
pub mod transport;
pub mod url;
