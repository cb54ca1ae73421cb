//! What a ring holds of one envelope, and what its readers are handed: an [`Entry`].
//!
//! An [`Envelope`] is the owned, producer-side form: a struct of ids, a tag map and a message
//! buffer (~176 bytes before any of them). A ring holds hundreds of thousands of them, so it keeps
//! each as one allocation instead: `seq`, timestamp and a pointer to the entry's [`Meta`] (the
//! ids, channel, step and tags, shared by every line of the same kind in the ring), followed by
//! the message bytes. A 150-byte line costs 192 bytes of heap plus a 16-byte ring slot,
//! tagged or not (`tests/memory.rs`). Cloning an entry for a reader is one atomic increment;
//! readers never touch the shared [`Meta`]'s count.
//!
//! Code that formats envelopes takes `&impl` [`Fields`], which both forms implement.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use triomphe::ThinArc;

use crate::envelope::{Channel, Envelope, alloc_size};

/// Read access to an envelope's fields, whichever form holds them.
pub trait Fields {
    fn timestamp(&self) -> i64;
    fn source_id(&self) -> &str;
    fn instance_id(&self) -> &str;
    fn origin(&self) -> &str;
    fn channel(&self) -> Channel;
    fn step(&self) -> Option<&str>;
    fn tags(&self) -> &BTreeMap<String, String>;
    fn message(&self) -> &[u8];
    fn seq(&self) -> u64;

    /// `[ORIGIN/INSTANCE]`, as `cf logs` and the syslog PROCID show it.
    fn origin_tag(&self) -> String {
        format!("[{}/{}]", self.origin(), self.instance_id())
    }

    /// An owned copy.
    fn to_envelope(&self) -> Envelope {
        Envelope {
            timestamp: self.timestamp(),
            source_id: self.source_id().into(),
            instance_id: self.instance_id().into(),
            origin: self.origin().into(),
            channel: self.channel(),
            step: self.step().map(Into::into),
            tags: self.tags().clone(),
            message: bytes::Bytes::copy_from_slice(self.message()),
            seq: self.seq(),
        }
    }
}

impl Fields for Envelope {
    #[inline]
    fn timestamp(&self) -> i64 {
        self.timestamp
    }
    #[inline]
    fn source_id(&self) -> &str {
        &self.source_id
    }
    #[inline]
    fn instance_id(&self) -> &str {
        &self.instance_id
    }
    #[inline]
    fn origin(&self) -> &str {
        &self.origin
    }
    #[inline]
    fn channel(&self) -> Channel {
        self.channel
    }
    #[inline]
    fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }
    #[inline]
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
    #[inline]
    fn message(&self) -> &[u8] {
        &self.message
    }
    #[inline]
    fn seq(&self) -> u64 {
        self.seq
    }
    fn to_envelope(&self) -> Envelope {
        self.clone()
    }
}

/// An envelope's fields but its message, `seq` and timestamp: what consecutive lines of one
/// source usually share. A ring keeps one per kind of line and points every entry at it.
///
/// Aligned to a cache line of its own, so that its `Arc`'s count (written by the ring for
/// every entry pushed and evicted) does not share a line with the fields every reader reads:
/// sharing it cost ~4% of the server at 1.5 M env/s (BENCHMARKS.md).
#[derive(Debug, PartialEq, Eq)]
#[repr(align(64))]
pub struct Meta {
    pub source_id: CompactString,
    pub instance_id: CompactString,
    pub origin: CompactString,
    pub channel: Channel,
    pub step: Option<CompactString>,
    pub tags: BTreeMap<String, String>,
}

impl Meta {
    /// The shared fields of `env`.
    pub fn of(env: &Envelope) -> Meta {
        Meta {
            source_id: env.source_id.clone(),
            instance_id: env.instance_id.clone(),
            origin: env.origin.clone(),
            channel: env.channel,
            step: env.step.clone(),
            tags: env.tags.clone(),
        }
    }

    /// Whether `env`, an envelope of this meta's source, has exactly these fields (the source
    /// is not compared again: a ring holds one source, and this runs for every envelope).
    #[inline]
    pub(crate) fn describes(&self, env: &Envelope) -> bool {
        debug_assert_eq!(self.source_id, env.source_id);
        self.channel == env.channel
            && self.origin == env.origin
            && self.instance_id == env.instance_id
            && self.step == env.step
            && self.tags == env.tags
    }

    /// Heap bytes this meta holds, as the allocator hands them out: the `Arc`'d struct, each
    /// id longer than 24 bytes, and the tag map's nodes and strings (one 544-byte node per 11
    /// tags, which the allocator rounds to 640).
    pub fn size_bytes(&self) -> usize {
        // The `Arc`'s two counts, padded to the struct's alignment, then the struct.
        const ARC: usize = std::mem::align_of::<Meta>() + std::mem::size_of::<Meta>();
        const LEAF: usize = 16 + 22 * std::mem::size_of::<String>();
        const INTERNAL: usize = LEAF + 12 * std::mem::size_of::<usize>();
        let string = |s: &str| alloc_size(s.len());
        // Up to 24 bytes live inside the struct: nothing of their own.
        let text = |s: &CompactString| {
            if s.is_heap_allocated() {
                alloc_size(s.capacity())
            } else {
                0
            }
        };
        let tags = match self.tags.len() {
            0 => 0,
            n => {
                let leaves = n.div_ceil(11);
                let internal = if leaves > 1 { leaves.div_ceil(6) } else { 0 };
                leaves * alloc_size(LEAF)
                    + internal * alloc_size(INTERNAL)
                    + self
                        .tags
                        .iter()
                        .map(|(k, v)| string(k) + string(v))
                        .sum::<usize>()
            }
        };
        alloc_size(ARC)
            + text(&self.source_id)
            + text(&self.instance_id)
            + text(&self.origin)
            + self.step.as_ref().map_or(0, text)
            + tags
    }
}

#[derive(Debug)]
struct Head {
    seq: u64,
    timestamp: i64,
    meta: Arc<Meta>,
}

/// One envelope as a ring holds it: a single allocation (see the module docs), 8 bytes to hold,
/// one atomic increment to clone. Read it through [`Fields`].
#[derive(Clone)]
pub struct Entry(ThinArc<Head, u8>);

/// Bytes of a ring slot that holds an [`Entry`]: the pointer, a key index and the size.
pub const SLOT_BYTES: usize = 16;

impl Entry {
    /// An entry of `env`'s timestamp and message, numbered `seq`, described by `meta`.
    #[inline]
    pub fn new(meta: Arc<Meta>, seq: u64, timestamp: i64, message: &[u8]) -> Entry {
        Entry(ThinArc::from_header_and_slice(
            Head {
                seq,
                timestamp,
                meta,
            },
            message,
        ))
    }

    /// A standalone entry (a meta of its own) for an envelope that is not in a ring: a line
    /// read back from storage, a loss notice.
    pub fn from_envelope(env: &Envelope) -> Entry {
        Entry::new(
            Arc::new(Meta::of(env)),
            env.seq,
            env.timestamp,
            &env.message,
        )
    }

    /// The heap bytes an entry with a message of `len` bytes takes, its ring slot included
    /// (its meta not: that is shared and counted once).
    #[inline]
    pub fn size_bytes(len: usize) -> usize {
        // triomphe's layout: the count, the header, the slice's length, then the bytes.
        const FIXED: usize = 8 + std::mem::size_of::<Head>() + 8;
        SLOT_BYTES + alloc_size(FIXED + len)
    }

    #[inline]
    pub fn meta(&self) -> &Meta {
        &self.0.header.header.meta
    }

    /// Whether two entries share one meta (the same kind of line of one ring).
    pub fn same_meta(&self, other: &Entry) -> bool {
        Arc::ptr_eq(&self.0.header.header.meta, &other.0.header.header.meta)
    }
}

impl Fields for Entry {
    #[inline]
    fn timestamp(&self) -> i64 {
        self.0.header.header.timestamp
    }
    #[inline]
    fn source_id(&self) -> &str {
        &self.meta().source_id
    }
    #[inline]
    fn instance_id(&self) -> &str {
        &self.meta().instance_id
    }
    #[inline]
    fn origin(&self) -> &str {
        &self.meta().origin
    }
    #[inline]
    fn channel(&self) -> Channel {
        self.meta().channel
    }
    #[inline]
    fn step(&self) -> Option<&str> {
        self.meta().step.as_deref()
    }
    #[inline]
    fn tags(&self) -> &BTreeMap<String, String> {
        &self.meta().tags
    }
    #[inline]
    fn message(&self) -> &[u8] {
        &self.0.slice
    }
    #[inline]
    fn seq(&self) -> u64 {
        self.0.header.header.seq
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("seq", &self.seq())
            .field("timestamp", &self.timestamp())
            .field("meta", self.meta())
            .field("message", &String::from_utf8_lossy(self.message()))
            .finish()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.seq() == other.seq()
            && self.timestamp() == other.timestamp()
            && self.message() == other.message()
            && (self.same_meta(other) || self.meta() == other.meta())
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_its_envelope() {
        let mut env = Envelope::new("app", "hello\nworld");
        env.seq = 7;
        env.timestamp = 42;
        env.step = Some("build".into());
        env.tags.insert("k".into(), "v".into());
        let entry = Entry::from_envelope(&env);
        assert_eq!(entry.to_envelope(), env);
        assert_eq!(entry.message(), b"hello\nworld");
        assert_eq!(entry.clone(), entry);
    }

    #[test]
    fn a_150_byte_line_costs_what_the_ring_counts() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
        // 8 + 24 + 8 + 150 = 190, in the allocator's 192-byte class, and the slot.
        assert_eq!(Entry::size_bytes(150), 192 + 16);
    }
}
