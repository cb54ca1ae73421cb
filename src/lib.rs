//! Sluice: a pub/sub log router. Envelopes come in over the native stream, syslog and HTTP, are
//! kept in per-source rings by [`sluice_router`], and go out to WebSocket tails, the CLI,
//! syslog drains ([`sluice_drains`]) and the stored log ([`sluice_store`]).
//!
//! # Layout
//!
//! - [`config`]: `sluice.yaml`, every default embedded.
//! - [`ingest`]: listeners that decode envelopes and publish them (native TCP / Unix socket,
//!   syslog TCP / UDP / TLS).
//! - [`http`]: the API: sources, recent, WebSocket tails, firehose, drains, HTTP ingest, Strøm's
//!   job API, health and metrics; [`http::auth`] is the one table from endpoint to scope.
//! - [`auth`]: bearer tokens (hashed, compared in constant time) and their scopes.
//! - [`tls`]: the server's certificate for every TLS listener, reloadable.
//! - [`bindings`]: the drain bindings of this server (source → syslog URL), each drain running
//!   as its own task on its own cursor.
//! - the stored log (persister, reads from every tier, completion, archive) is
//!   [`sluice_store`]'s; HTTP only parses, calls it and renders.
//! - [`net`]: the accept loop, connection limits and the byte budget every listener shares,
//!   and the throttle on what clients cause to be logged.
//! - [`server`]: binds listeners, starts every task with one stop signal, reloads tokens, TLS
//!   and `drains.bind` (SIGHUP), stops gracefully (the persister last).
//! - [`format`](mod@format): the `cf logs` line and the JSON shape of an envelope.
//! - [`client`]: what `sluice emit` and `sluice logs` use to talk to a server.
//! - [`cli`]: the `sluice` command line.
//! - [`metrics`]: counters for `/metrics`.
//! - [`procfs`]: memory and CPU of a process from `/proc`, for the tests and `sluice-load`.
//! - [`fuzzing`]: the properties the fuzz targets check (also run as tests over the corpus).
//!
//! # Data paths
//!
//! - A native frame enters in [`ingest::native`]; a syslog line in [`ingest::syslog`]; an HTTP
//!   batch in [`http::ingest`].
//! - Either is ring-buffered by [`sluice_router::Router::publish`] (with `when_behind: block`,
//!   `publish_waiting`, which waits for the persister rather than overwrite what it has not
//!   written).
//! - It leaves through a [`sluice_router::Cursor`] each: a tail in [`http::stream`], a drain in
//!   `sluice_drains::syslog::drain`, the JSONL file in `sluice_store::persister`.
//! - Reads of what the ring let go (recent, backfill, `since_seq`, job logs) go through
//!   `sluice_store::read`, files first, then S3.

pub mod auth;
pub mod bindings;
pub mod cli;
pub mod client;
pub mod config;
pub mod format;
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod procfs;
pub mod server;
pub mod tls;

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
