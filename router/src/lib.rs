//! The core of Sluice, with no I/O: the [`Envelope`], its wire [`codec`], and the
//! [`Router`] of per-source rings read through [`Cursor`]s.
//!
//! # Layout
//!
//! - [`envelope`]: the envelope of SPEC §1, field validation, timestamps.
//! - [`entry`]: the envelope as a ring holds it and readers get it: one allocation, shared ids.
//! - [`codec`]: `u32 length | MessagePack` frames, envelopes, batches, control words, replies.
//! - [`msgpack`]: the envelope's MessagePack form, written and read by hand for speed.
//! - [`router`]: sources, rings, cursors, filters, start positions and exact loss notices.
//! - [`durable`]: the watermark of what the persister has on disk, for `ack=durable`.
//! - [`backoff`]: exponential backoff with jitter, for every retry loop.
//!
//! Transports (TCP, WebSocket, syslog, files) live in the `sluice` and `sluice-drains` crates
//! and only move bytes in and out of what is defined here.
//!
//! # Data path
//!
//! Ingest decodes an envelope ([`codec`], [`msgpack`]) and calls [`Router::publish`] (or
//! `publish_waiting`), which assigns its `seq` in its source's ring and keeps it there as an
//! [`Entry`] (one allocation: the message, and a pointer to the ids and tags it shares with the
//! ring's other lines of its kind). Every reader (a tail, a drain, the persister) holds a
//! [`Cursor`] and gets [`Delivery`]s: entries in `seq` order, read through [`Fields`], or a
//! [`MissedNotice`] with the exact count it lost when a writer overtook it.

pub mod backoff;
pub mod codec;
pub mod durable;
pub mod entry;
pub mod envelope;
pub mod msgpack;
pub mod router;

pub use backoff::Backoff;
pub use durable::{Durability, DurableError};
pub use entry::{Entry, Fields, Meta};
pub use envelope::{Channel, Envelope, EnvelopeError, validate_source_id};
pub use router::{
    Cursor, Delivery, Filter, History, MAX_SHARDS, MissedNotice, Router, RouterConfig, Selector,
    Shard, Start,
};

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
