//! The stored log of every source: one home for writing it, reading it back from every tier,
//! completing jobs and archiving them.
//!
//! # Layout
//!
//! - `persister`: JSONL files per source, batched, with rotation (segments kept for the
//!   archive), fsync policy and exact loss notices; it moves the router's durability
//!   watermark.
//! - `files`: a source's JSONL files read without reading them whole: backwards, by seq range.
//! - `history`: what storage holds of a source: the seq it left off at, the files it has, the
//!   sources it knows.
//! - `read`: reads across tiers in seq order (S3 objects of completions, files, the ring) for
//!   `recent`, streams and Strøm's job API, streamed with bounded memory.
//! - `complete`: a job's completion: written through, closed, moved aside and recorded.
//! - `objects`: the `ObjectStore` trait the archive writes through: S3, or memory in tests.
//! - `archive`: gzip and upload of completed jobs' files to S3, records of what is pending and
//!   done.

pub mod archive;
pub mod complete;
pub mod files;
pub mod history;
pub mod objects;
pub mod persister;
pub mod read;

pub use sluice_router::short_reason;
