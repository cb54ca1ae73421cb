//! Sluice: a pub/sub log router. Envelopes come in over the native stream, are kept in
//! per-source rings by [`sluice_router`], and go out to WebSocket tails and the CLI.
//!
//! # Layout
//!
//! - [`config`]: `sluice.yaml`, every default embedded.
//! - [`ingest`]: listeners that decode envelopes and publish them (native TCP / Unix socket).
//! - [`http`]: the warp API: sources, recent, WebSocket tails, firehose, health and metrics.
//! - [`drains`]: the syslog drains bound on this server, each reading its own cursor.
//! - the stored log (persister, reads from every tier, completion, archive) is
//!   [`sluice_store`]'s; HTTP only parses, calls it and renders.
//! - [`net`]: the accept loop, connection limits and the byte budget every listener shares.
//! - [`server`]: binds listeners, starts every task with one stop signal, stops gracefully.
//! - [`format`]: the `cf logs` line and the JSON shape of an envelope.
//! - [`client`]: what `sluice emit` and `sluice logs` use to talk to a server.
//! - [`cli`]: the `sluice` command line.
//! - [`metrics`]: counters for `/metrics`.
//! - [`fuzzing`]: the properties the fuzz targets check (also run as tests over the corpus).
//!
//! A native frame enters in [`ingest::native`], is ring-buffered by
//! [`sluice_router::Router::publish`], and leaves through a [`sluice_router::Cursor`] in
//! [`http::stream`].

pub mod cli;
pub mod client;
pub mod config;
pub mod drains;
pub mod format;
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod procfs;
pub mod server;

/// A short, lowercase reason for an I/O error ("connection refused").
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        NotFound => "no such file or directory".into(),
        AddrInUse => "address in use".into(),
        PermissionDenied => "permission denied".into(),
        TimedOut => "timed out".into(),
        ConnectionReset => "connection reset".into(),
        BrokenPipe => "the server closed the connection".into(),
        _ => sluice_router::short_reason(e),
    }
}

/// Makes ring rustls's process-wide crypto provider (reqwest asks for one; Sluice builds without
/// aws-lc). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
