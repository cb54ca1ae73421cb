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
//!
//! # Data paths
//!
//! - A line leaves the router through the persister's cursor (held, with `when_behind: block`)
//!   into `<local_dir>/<source>.jsonl`; rotation renames it to `.jsonl.1` … or, with S3, keeps
//!   it as a segment under `.archive/segments/` until the job completes.
//! - A completion moves the job's files to `.archive/files/<job>#<n>/` and records them in
//!   `.archive/pending/`; the archive uploads one gzip object and moves the record to `done/`.
//! - A read walks the tiers oldest first: S3 objects of completions whose files are gone, the
//!   files of each completion, the source's live files, then the ring.
//! - At start, a source's seqs continue from `history` (the tail of its newest file or record);
//!   after a crash (no clean-stop mark in `.sluice.lock`), past what the dead process could
//!   have left unwritten.

pub mod archive;
pub mod complete;
pub mod files;
pub mod history;
pub mod objects;
pub mod persister;
pub mod private;
pub mod read;

pub use sluice_router::short_reason;
