//! What a cursor reads: which sources, which of their envelopes, from where.

use crate::entry::Fields;
use crate::envelope::Channel;

/// Which envelopes of the selected sources a cursor wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these origins, or origins under one of them: `RTR` matches `RTR`; `APP` matches
    /// `APP` and `APP/PROC/WEB`, but not `APPX`. Empty: every origin.
    pub origins: Vec<String>,
    pub channel: Option<Channel>,
    pub step: Option<String>,
    /// Any of these instances (`instance_id`s). Empty: every instance.
    pub instances: Vec<String>,
}

impl Filter {
    /// A filter for one origin (or those under it).
    pub fn origin(origin: impl Into<String>) -> Filter {
        Filter {
            origins: vec![origin.into()],
            ..Filter::default()
        }
    }

    pub fn matches(&self, env: &impl Fields) -> bool {
        self.matches_parts(env.origin(), env.channel(), env.step(), env.instance_id())
    }

    pub(super) fn matches_parts(
        &self,
        origin: &str,
        channel: Channel,
        step: Option<&str>,
        instance: &str,
    ) -> bool {
        let under = |prefix: &String| {
            prefix.is_empty()
                || origin == prefix
                || (origin.starts_with(prefix.as_str()) && origin.as_bytes()[prefix.len()] == b'/')
        };
        if !self.origins.is_empty() && !self.origins.iter().any(under) {
            return false;
        }
        if self.channel.is_some_and(|c| c != channel) {
            return false;
        }
        if !self.instances.is_empty() && !self.instances.iter().any(|i| i == instance) {
            return false;
        }
        self.step.as_deref().is_none_or(|want| step == Some(want))
    }
}

/// The sources a cursor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Source(String),
    Sources(Vec<String>),
    /// Every source, including those that appear later: the firehose.
    All,
    /// One shard of every source (those that appear later included): the firehose split
    /// between several readers, each source in exactly one shard.
    Shard(Shard),
}

/// Most shards the sources can be split into.
pub const MAX_SHARDS: usize = 32;

/// Shard `index` of `of`: the sources the router created `index`th, `index + of`th, … (so
/// `of` sources created one after another land in `of` different shards). A source keeps its
/// shard for as long as the process runs; [`crate::Router::shard_of`] says which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub of: usize,
}

impl Shard {
    /// Every source: one shard of one.
    pub const ALL: Shard = Shard { index: 0, of: 1 };

    /// Panics unless `index < of <= MAX_SHARDS`.
    pub(super) fn check(self) {
        assert!(
            self.index < self.of && self.of <= MAX_SHARDS,
            "shard {} of {} (at most {MAX_SHARDS} shards)",
            self.index,
            self.of
        );
    }

    pub(super) fn has(self, ordinal: usize) -> bool {
        ordinal % self.of == self.index
    }
}

/// Where a cursor starts, in each source it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only what is published from now on.
    Live,
    /// The last `n` retained entries that match the filter, then live.
    Back(usize),
    /// Everything after this `seq` (pass the last `seq` you saw to resume without a gap or a
    /// duplicate). A `seq` older than the ring reports what was lost in between as missed; with a
    /// filter, entries of every kind in that gap are counted, since their kinds are gone.
    AfterSeq(u64),
}
