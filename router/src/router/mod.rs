//! Sources, their rings, and the cursors that read them (SPEC §3).
//!
//! Each source owns a ring of [`Entry`]s behind a short mutex. Writers assign `seq` under
//! that lock, evict from the front when the ring is full (by entries or by bytes), and never wait
//! for a reader. A reader is a [`Cursor`]: the next `seq` it wants per source, plus a [`Filter`].
//!
//! Exact loss counts under a filter: every ring keeps, per distinct `(origin, channel, step, instance)`
//! key, how many entries it has published and evicted; every cursor keeps how many matching
//! entries lie before its position (`matched_before`). When a cursor is overtaken, the entries
//! it skipped are gone, but `evicted(matching keys) - matched_before` is exactly how many of them
//! matched its filter.
//!
//! # Layout
//!
//! - this module: the [`Router`] (the registry of sources, publishing, the memory budget, the
//!   held cursor's gate) and [`History`], what storage had of a source before this start.
//! - `ring`: one source's ring and its per-key counts.
//! - `cursor`: [`Cursor`]s, their positions, reads and the wait for new entries.
//! - `filter`: [`Filter`], [`Selector`], [`Start`]: what a cursor reads and from where.
//! - `delivery`: [`Delivery`] and [`MissedNotice`]: what a reader is handed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::entry::Entry;
use crate::envelope::validate_source_id;
use crate::envelope::{Envelope, EnvelopeError, now_ns};
use compact_str::CompactString;

mod cursor;
mod delivery;
mod filter;
mod ring;

pub use cursor::Cursor;
use cursor::{WaitGuard, WaitOn};
pub use delivery::{Delivery, MissedNotice};
pub use filter::{Filter, MAX_SHARDS, Selector, Shard, Start};
use ring::Ring;

/// Sizes of the in-memory rings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Most entries one source's ring retains.
    pub ring_max_entries: usize,
    /// Most bytes (message plus metadata) one source's ring retains.
    pub ring_max_bytes: usize,
    /// All rings together; past it the entries that arrived first, across sources, are evicted
    /// (by arrival, not by the timestamps producers put on them).
    pub memory_budget_bytes: usize,
    /// Most sources this process holds at once. Each one held costs memory outside the budget
    /// (its ring's bookkeeping, the persister's note of its file) until it is forgotten (see
    /// `forget_idle_secs`), so past this a batch or read that would create a source is refused
    /// ([`EnvelopeError::TooManySources`]); the sources already held go on as before.
    pub max_sources: usize,
    /// A source nothing was published to for this long, that no reader of it alone holds (a
    /// tail, a drain of that source), and whose every line is on disk is forgotten: its ring
    /// and bookkeeping go, as at a restart, and its next line or reader makes it again, its
    /// seqs continuing from storage. 0: sources are forgotten only at a restart.
    pub forget_idle_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            ring_max_entries: 65_536,
            ring_max_bytes: 16 * 1024 * 1024,
            memory_budget_bytes: 1024 * 1024 * 1024,
            max_sources: 100_000,
            forget_idle_secs: 3600,
        }
    }
}

/// What Sluice stored of sources before this start. A source's seqs continue after the highest
/// one it already has, so a reader resuming with `since_seq` across a restart is never handed a
/// new line under an old number.
pub trait History: Send + Sync + std::fmt::Debug {
    /// The highest seq `source_id` has in storage; 0 if none. Asked whenever the source is
    /// made: first seen in this process, or seen again after it was forgotten. An error (the
    /// reason) when storage holds something of it that cannot be read: the source is refused
    /// rather than given seqs it may already have.
    fn last_seq(&self, source_id: &str) -> Result<u64, String>;

    /// How many seqs past its stored ones a stored source skips: 0 after a clean stop; after a
    /// crash, at least as many as the last process can have published and not yet written
    /// (readers may have seen lines under those seqs, so they are never reused); 0 again for
    /// a source this process has stored lines of (one made again after it was forgotten).
    /// Asked only of a source with stored lines, after [`History::last_seq`].
    fn skipped_after_crash(&self, _source_id: &str) -> u64 {
        0
    }
}

/// What `/api/v1/sources` shows of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    pub source_id: String,
    /// Entries held in the ring now.
    pub retained: usize,
    pub retained_bytes: usize,
    pub oldest_seq: Option<u64>,
    pub newest_seq: Option<u64>,
    /// The newest `seq` of this source, stored before this start or published since.
    pub published: u64,
    /// Where this process took over the source's seqs (0 for a source new to this storage):
    /// seqs up to it live in storage, not in the ring, or were skipped after a crash (a
    /// `_server` notice right after them says which).
    pub resumed_after: u64,
}

/// The router: a concurrent map of sources. Cheap to clone; all clones share the same state.
#[derive(Clone, Debug)]
pub struct Router {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: RouterConfig,
    durability: Arc<crate::Durability>,
    history: Option<Arc<dyn History>>,
    sources: DashMap<Arc<str>, Arc<Source>>,
    /// Every source, in the order they were created: firehose cursors take only what was
    /// added since they last looked. A forgotten source's place is emptied, never reused (8
    /// bytes per source ever made, where a held one costs a ring's bookkeeping).
    created: Mutex<Vec<Option<Arc<Source>>>>,
    /// Bumped after each new source is inserted and listed; firehose cursors compare it to
    /// learn of new sources without looking at the list on every read.
    sources_version: AtomicU64,
    /// Sum of all rings' bytes, for the global memory budget; moved with wrapping adds and
    /// subtracts, read through [`Shared::held_bytes`].
    total_bytes: AtomicUsize,
    /// Only one task evicts for the global budget at a time; others carry on publishing.
    evicting: Mutex<Evictor>,
    /// Ordinals of sources whose ring has entries and is not in the evictor's queue yet (see
    /// `Ring::queued`): each is listed once, when its ring gains its first entry.
    to_evict: Mutex<Vec<usize>>,
    /// Entries held cursors have read, in all: what they read may be evicted.
    held_reads: AtomicU64,
    /// `held_reads` when the last round of eviction found nothing more it could evict while
    /// still above its mark (`u64::MAX`: it did not): the next round waits until held cursors
    /// have read a tenth of the budget's worth since, or one of them has read all it had,
    /// rather than look at every source again for each batch a writer retries (with 100,000
    /// sources behind a slow disk, that scan was half of ingest's CPU).
    fruitless_at: AtomicU64,
    /// Wakes cursors over several sources (and the firehose) on any publish.
    notify: Notify,
    /// How many multi-source cursors are waiting: publishers skip the notify when none are.
    waiting: AtomicUsize,
    published: AtomicU64,
    evicted_for_budget: AtomicU64,
    /// The held cursors (see [`Router::subscribe_held`]): their shard count in the high 32
    /// bits, a bit per shard held below (0: none). A new source starts held if its shard is.
    held: AtomicU64,
    /// The shard count of the first shard cursor: shard cursors of that count wait on
    /// `shard_waits`, woken only by publishes to their own shard's sources.
    shards: AtomicUsize,
    shard_waits: Box<[Waiters]>,
    /// Cursors that read by the sources published to (see `Cursor::claim_any`): a bit per ready
    /// list in use. Lists `0..MAX_SHARDS` are the shards' (their first cursor, the
    /// persister's writer); the rest are for cursors over every source (firehose tails,
    /// drains of every source), first come first served.
    claimed: AtomicU64,
    /// Per list, the ordinals of the sources published to since its cursor last looked, each
    /// once (see `Source::listed`).
    ready_lists: Box<[Mutex<Vec<usize>>]>,
    /// The next source's place in creation order (its shard). Never reused: a source made
    /// again after it was forgotten is a new one.
    next_ordinal: AtomicUsize,
    /// Sources held now (what `max_sources` bounds).
    live: AtomicUsize,
    /// Sources forgotten since the start; also how makers learn that storage may have moved
    /// under what they read of it.
    forgotten: AtomicU64,
    /// How much of `created` each cursor over every source (or a shard) has taken, and its
    /// shard: a source with lines is forgotten only once every such cursor of its shard has
    /// it (so each is told of what it did not read), never from under one that has not
    /// looked since the source was made.
    taken: Mutex<Vec<(std::sync::Weak<AtomicUsize>, Shard)>>,
    /// What a cursor's place for a forgotten source holds until a new source takes it: never
    /// published to, never forgotten.
    vacant: Arc<Source>,
    /// Sources readers opened that have no line yet (see [`Maker::Reader`]).
    awaited: AtomicUsize,
    /// Wakes publishers waiting for a held cursor to make room.
    room: Notify,
    room_waiting: AtomicUsize,
    /// Envelopes that waited for room (counted once per envelope per wait).
    waited_for_room: AtomicU64,
}

/// What the global budget's eviction keeps between rounds, so that a round costs what it
/// evicts, not a look at every source: every ring with entries is in `queue` (or `blocked`, or
/// still in `Shared::to_evict`) exactly once, by when its oldest entry arrived.
#[derive(Debug, Default)]
struct Evictor {
    /// Every source by ordinal, taken from `Shared::created` as sources appear.
    by_ordinal: Vec<Option<Arc<Source>>>,
    /// How much of `Shared::created` is in `by_ordinal`.
    seen: usize,
    /// `(arrival of the ring's oldest entry, ordinal)`: when a ring's own limits evicted
    /// meanwhile the arrival is older than the ring's, and it is put back with the right one.
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    /// Rings whose oldest entries a held cursor has not read yet: looked at again next round.
    blocked: Vec<usize>,
}

impl Evictor {
    /// Puts a ring into `queue` by when its oldest entry arrived, or, empty, lets publishers
    /// list it again when it gains one.
    fn requeue(queue: &mut BinaryHeap<Reverse<(i64, usize)>>, ring: &mut Ring, ordinal: usize) {
        match ring.oldest_arrival() {
            Some(at) => queue.push(Reverse((at, ordinal))),
            None => ring.queued = false,
        }
    }
}

/// A shard's readers waiting, and how to wake them.
#[derive(Debug, Default)]
struct Waiters {
    notify: Notify,
    waiting: AtomicUsize,
}

/// Ready lists: one per shard, then these for cursors over every source. Past them, a
/// cursor over every source looks at each one on every read.
const READY_LISTS: usize = 64;
/// The ready lists a cursor over every source may claim: those past the shards'.
const ALL_SOURCES_LISTS: u64 = !((1u64 << MAX_SHARDS) - 1);

#[derive(Debug)]
struct Source {
    id: Arc<str>,
    /// Its place in creation order, from 0: its shard is `ordinal % of`.
    ordinal: usize,
    /// A bit per ready list it is in, not yet visited by that list's cursor: publishers list
    /// it only where its bit is clear.
    listed: AtomicU64,
    ring: Mutex<Ring>,
    notify: Notify,
    waiting: AtomicUsize,
    /// Mirror of `ring.next_seq`, so an idle source can be skipped without taking its lock.
    next_seq: AtomicU64,
    /// The last seq the source had in storage when it was created here.
    resumed_after: u64,
    /// The next seq the held cursor wants: entries from it on are never evicted (`u64::MAX`
    /// while no cursor is held).
    gate: AtomicU64,
    /// The `sources_version` this source was created under.
    created_version: u64,
    /// Opened by a reader and no line yet: counted in `Shared::awaited` until one arrives.
    awaited: AtomicBool,
    /// Its place in `Shared::created`.
    created_at: usize,
    /// Forgotten (set with `Ring::retired`, under the ring's lock): readers that find it so
    /// look the id up again, and cursors over many sources let it go.
    retired: AtomicBool,
    /// Cursors over this source alone or a list of sources (tails, drains of it): while any
    /// is open it is not forgotten. Raised under the ring's lock, where forgetting looks.
    readers: AtomicUsize,
}

/// Who makes a new source, and so what limits it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maker {
    /// A producer's lines: `max_sources`.
    Producer,
    /// A reader that waits for the source's first line (a tail, a drain):
    /// `max_sources`, and [`Shared::awaited_max`] for such sources until their first line, so
    /// that a reader, who only needs the read scope, cannot take every source from producers.
    Reader,
    /// Sluice's own notices: never refused.
    Sluice,
}

impl Router {
    pub fn new(config: RouterConfig) -> Router {
        Router::with_history(config, None)
    }

    /// A router whose sources continue the seqs `history` says they have in storage.
    pub fn with_history(config: RouterConfig, history: Option<Arc<dyn History>>) -> Router {
        Router {
            shared: Arc::new(Shared {
                config: config.clone(),
                durability: Arc::default(),
                history,
                sources: DashMap::new(),
                created: Mutex::new(Vec::new()),
                live: AtomicUsize::new(0),
                forgotten: AtomicU64::new(0),
                taken: Mutex::new(Vec::new()),
                vacant: Arc::new(Source::new(
                    Arc::from(""),
                    usize::MAX,
                    Ring::new(&config, 0),
                    0,
                    u64::MAX,
                    0,
                    false,
                    usize::MAX,
                )),
                sources_version: AtomicU64::new(0),
                total_bytes: AtomicUsize::new(0),
                evicting: Mutex::new(Evictor::default()),
                to_evict: Mutex::new(Vec::new()),
                held_reads: AtomicU64::new(0),
                fruitless_at: AtomicU64::new(u64::MAX),
                notify: Notify::new(),
                waiting: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                evicted_for_budget: AtomicU64::new(0),
                held: AtomicU64::new(0),
                shards: AtomicUsize::new(0),
                shard_waits: (0..MAX_SHARDS).map(|_| Waiters::default()).collect(),
                claimed: AtomicU64::new(0),
                ready_lists: (0..READY_LISTS).map(|_| Mutex::default()).collect(),
                next_ordinal: AtomicUsize::new(0),
                awaited: AtomicUsize::new(0),
                room: Notify::new(),
                room_waiting: AtomicUsize::new(0),
                waited_for_room: AtomicU64::new(0),
            }),
        }
    }

    /// How far each source is on disk (moved by the persister).
    pub fn durability(&self) -> &Arc<crate::Durability> {
        &self.shared.durability
    }

    pub fn config(&self) -> &RouterConfig {
        &self.shared.config
    }

    /// Publishes a batch: validates every envelope first (a batch is accepted whole or not at
    /// all), stamps those without a timestamp, assigns `seq`s and wakes waiting cursors.
    /// Never waits. While a held cursor (the persister with `when_behind: block`) has not read
    /// what a full ring would evict, the envelopes that do not fit are dropped: returns how
    /// many were published, the rest dropped. For senders that cannot wait (UDP); those that
    /// can use [`Router::publish_waiting`].
    pub fn publish(&self, batch: Vec<Envelope>) -> Result<usize, EnvelopeError> {
        validate_batch(&batch)?;
        let mut rest = Vec::new();
        self.publish_validated(batch, None, false, &mut rest)
    }

    /// Publishes a batch as [`Router::publish`] does, waiting (not reading the sender's next
    /// batch meanwhile) whenever a held cursor has not read what a full ring would evict, so
    /// nothing is lost to it. With `ranges`, reports the `seq`s assigned: one
    /// `(source, first, last)` per run of consecutive envelopes of the same source, for
    /// acknowledgements that wait on disk. Cancel-safe only in that what was published stays
    /// published.
    pub async fn publish_waiting(
        &self,
        batch: Vec<Envelope>,
        mut ranges: Option<&mut Vec<(Arc<str>, u64, u64)>>,
    ) -> Result<usize, EnvelopeError> {
        validate_batch(&batch)?;
        let count = batch.len();
        let mut rest = Vec::new();
        self.publish_validated(batch, ranges.as_deref_mut(), false, &mut rest)?;
        let shared = &*self.shared;
        while !rest.is_empty() {
            shared
                .waited_for_room
                .fetch_add(rest.len() as u64, Ordering::Relaxed);
            let notified = shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _guard = WaitGuard::new(&shared.room_waiting);
            let batch = std::mem::take(&mut rest);
            // Its sources exist now: only the room is waited for.
            self.publish_validated(batch, ranges.as_deref_mut(), false, &mut rest)?;
            if rest.is_empty() {
                break;
            }
            // Woken when a held cursor reads. A writer held by the budget also looks again
            // after a while without reads: eviction waits for a tenth of the budget to be read
            // after a round that freed nothing, and the reader may have nothing more to read.
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {
                    if shared.over_budget() {
                        shared.enforce_budget(true);
                    }
                }
            }
        }
        Ok(count)
    }

    /// Publishes one of Sluice's own notices about a source (origin `LGR`, step `_server`),
    /// which [`Router::publish`] refuses from producers. Never waits and never drops: a ring
    /// a held cursor has not read may grow past its limits by these.
    pub fn publish_notice(&self, notice: Envelope) -> Result<usize, EnvelopeError> {
        notice.validate_fields()?;
        let mut rest = Vec::new();
        self.publish_validated(vec![notice], None, true, &mut rest)
    }

    /// Publishes a notice a producer asked for (Sluice's words about its source, such as an
    /// exit status), as [`Router::publish_notice`] does, except that a new source past
    /// `max_sources` is refused, as a producer's lines would be.
    pub fn publish_producer_notice(&self, notice: Envelope) -> Result<usize, EnvelopeError> {
        notice.validate_fields()?;
        self.shared.source(&notice.source_id, Maker::Producer)?;
        self.publish_notice(notice)
    }

    /// Publishes what fits; what a held cursor keeps out goes to `rest`, in order. Refuses
    /// the whole batch, before publishing any of it, when it would create sources past
    /// `max_sources` (those of `overshoot`, Sluice's own notices, never are).
    fn publish_validated(
        &self,
        mut batch: Vec<Envelope>,
        mut ranges: Option<&mut Vec<(Arc<str>, u64, u64)>>,
        overshoot: bool,
        rest: &mut Vec<Envelope>,
    ) -> Result<usize, EnvelopeError> {
        // The time of receipt: stamps envelopes without a timestamp, and tells the budget
        // which lines are oldest.
        let now = now_ns();
        let shared = &*self.shared;
        let mut added = 0usize;
        let mut freed = 0usize;
        let mut count = 0usize;
        if !overshoot && shared.held.load(Ordering::Relaxed) != 0 && shared.over_budget() && {
            // What the held cursor has read since may go now.
            shared.enforce_budget(false);
            shared.over_budget()
        } {
            // The rings hold more than the budget that a held cursor has not read yet.
            rest.extend(batch);
            return Ok(0);
        }
        // One source per run of envelopes of the same source, each new one created here:
        // all of them fit under the limit, or nothing is published.
        let mut runs: Vec<Arc<Source>> = Vec::new();
        for e in &batch {
            if runs.last().is_none_or(|s| *s.id != *e.source_id) {
                let maker = if overshoot {
                    Maker::Sluice
                } else {
                    Maker::Producer
                };
                runs.push(shared.source(&e.source_id, maker)?);
            }
        }
        let mut runs = runs.into_iter();
        // Envelopes are read in place (an envelope is ~180 bytes: moving each out of the batch
        // was ~3% of ingest); only what a held cursor keeps out is moved, to `rest`.
        let mut i = 0;
        // Shard cursors: the shards published to, and the sources to list for them.
        let of = shared.shards.load(Ordering::Relaxed);
        let mut shards_touched = 0u64;
        let mut listed: Vec<(usize, usize)> = Vec::new();
        let mut queued: Vec<usize> = Vec::new();
        while i < batch.len() {
            let mut source = runs.next().expect("a source per run");
            let mut kept_out = false;
            {
                let mut ring = loop {
                    let ring = source.ring.lock();
                    if !ring.retired {
                        break ring;
                    }
                    drop(ring);
                    // Forgotten since it was looked up: made again (as Sluice's own, not held
                    // to the limit: the batch was admitted whole). Refused only if storage
                    // cannot be read, which then ends the batch where it is.
                    source = shared.renew(&source)?;
                };
                let gate = source.gate.load(Ordering::Acquire);
                let first_seq = ring.next_seq;
                while let Some(e) = batch.get_mut(i)
                    && e.source_id == *source.id
                {
                    if e.timestamp == 0 {
                        e.timestamp = now;
                    }
                    let mut admit = ring.admit(e);
                    let (f, fits) = ring.make_room(admit.size, gate, overshoot);
                    freed += f;
                    if !fits {
                        kept_out = true;
                        break;
                    }
                    admit.size += ring.arriving(now);
                    added += admit.size;
                    ring.push(e, admit);
                    count += 1;
                    i += 1;
                }
                source.next_seq.store(ring.next_seq, Ordering::Release);
                if ring.next_seq > first_seq {
                    ring.last_active = now;
                }

                if ring.next_seq > first_seq
                    && source.awaited.load(Ordering::Relaxed)
                    && source.awaited.swap(false, Ordering::Relaxed)
                {
                    // Its first line: no longer a reader's.
                    shared.awaited.fetch_sub(1, Ordering::Relaxed);
                }
                if ring.enters_queue() {
                    queued.push(source.ordinal);
                }
                if let Some(r) = ranges.as_deref_mut()
                    && ring.next_seq > first_seq
                {
                    r.push((source.id.clone(), first_seq, ring.next_seq - 1));
                }
            }
            // The ready lists that take this source: its shard's, and those over every
            // source. Loaded after the ring's lock: a list claimed before that lock was
            // taken is seen here; one claimed after first visits every source it reads.
            shards_touched |= shared.shard_bit(&source, of);
            // Listed below, one lock per list for the whole batch.
            shared.to_list(&source, of, &mut listed);
            // Pairs with the fence in `WaitGuard::new`: either the waiter sees the new entries,
            // or we see the waiter and wake it.
            fence(Ordering::SeqCst);
            if source.waiting.load(Ordering::Relaxed) > 0 {
                source.notify.notify_waiters();
            }
            if kept_out {
                // Kept out: the rest of the batch waits too, so its order holds.
                rest.extend(batch.drain(i..));
                break;
            }
        }
        // Counted once per batch, after the rings' locks: an evictor may have taken some of
        // these entries (and their bytes) out already, so the sum can dip below zero for a
        // moment (see `Shared::held_bytes`).
        if added >= freed {
            shared
                .total_bytes
                .fetch_add(added - freed, Ordering::Relaxed);
        } else {
            shared
                .total_bytes
                .fetch_sub(freed - added, Ordering::Relaxed);
        }
        shared.published.fetch_add(count as u64, Ordering::Relaxed);
        if !queued.is_empty() {
            shared.to_evict.lock().extend(queued);
        }
        if !listed.is_empty() || shards_touched != 0 {
            shared.list_ready(&mut listed, shards_touched);
        }
        if shared.waiting.load(Ordering::Relaxed) > 0 {
            shared.notify.notify_waiters();
        }
        if shared.held_bytes() > shared.config.memory_budget_bytes {
            shared.enforce_budget(false);
        }
        Ok(count)
    }

    /// Opens a held cursor over one shard of the sources ([`Shard::ALL`]: every source):
    /// writers never evict what it has not read, and wait for it instead
    /// ([`Router::publish_waiting`]). For the persister with `when_behind: block`, one cursor
    /// per writer thread. Dropping it lets writers of its shard evict again.
    ///
    /// Panics if `shard` is out of range, if its shard is held already, or if held cursors of
    /// another shard count are open.
    pub fn subscribe_held(&self, shard: Shard, filter: Filter, start: Start) -> Cursor {
        shard.check();
        let bit = 1u64 << shard.index;
        let mut held = self.shared.held.load(Ordering::SeqCst);
        loop {
            let (of, mask) = held_shards(held);
            assert!(
                mask == 0 || of == shard.of,
                "held cursors of {of} shards are open: cannot hold one of {}",
                shard.of
            );
            assert!(mask & bit == 0, "shard {} is held already", shard.index);
            let new = pack_held(shard.of, mask | bit);
            // Set first: a source of the shard created from here on starts held; one created
            // before is in the snapshot `subscribe` takes, or learnt of by `refresh_all`.
            match self
                .shared
                .held
                .compare_exchange(held, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        let mut cursor = self
            .subscribe(Selector::Shard(shard), filter, start)
            .expect("a shard needs no id");
        cursor.held = Some(shard);
        for m in &cursor.members {
            m.source.gate.store(m.state.next, Ordering::Release);
        }
        cursor
    }

    /// Which of `of` shards `source_id` is in (see [`Shard`]); the source is created (empty)
    /// if it has not been seen yet, so that its shard is settled. `None` for an invalid id, or
    /// a new one past `max_sources` (no shard will ever write it).
    pub fn shard_of(&self, source_id: &str, of: usize) -> Option<usize> {
        validate_source_id(source_id).ok()?;
        // Asked by the writer of a completion (a producer's act): not a reader's wait.
        let source = self.shared.source(source_id, Maker::Producer).ok()?;
        Some(source.ordinal % of.max(1))
    }

    /// Publishers waiting now for the held cursor to make room: the persister is a ring behind
    /// (`when_behind: block`).
    pub fn publishers_waiting(&self) -> usize {
        self.shared.room_waiting.load(Ordering::Relaxed)
    }

    /// Envelopes that had to wait for the held cursor before their ring took them.
    pub fn waited_for_room_total(&self) -> u64 {
        self.shared.waited_for_room.load(Ordering::Relaxed)
    }

    /// Opens a cursor. Selected sources that do not exist yet are created (empty), so a tail
    /// can wait for an app's first line; past `max_sources` that is refused.
    pub fn subscribe(
        &self,
        selector: Selector,
        filter: Filter,
        start: Start,
    ) -> Result<Cursor, EnvelopeError> {
        let shared = self.shared.clone();
        let mut cursor = Cursor {
            held: None,
            wait_on: WaitOn::Global(self.shared.clone()),
            filter,
            all: None,
            members: Vec::new(),
            free: Vec::new(),
            pinned: matches!(selector, Selector::Source(_) | Selector::Sources(_)),
            forgotten: None,
            rr: 0,
            ready: None,
            delivered: 0,
            missed: 0,
            created_ns: now_ns(),
            shared,
        };
        match selector {
            Selector::Source(id) => {
                validate_source_id(&id)?;
                let source = cursor.shared.source(&id, Maker::Reader)?;
                let source = cursor.pin(source, start)?;
                cursor.wait_on = WaitOn::Source(source);
            }
            Selector::Sources(ids) => {
                for id in &ids {
                    validate_source_id(id)?;
                }
                let mut seen = HashSet::new();
                for id in ids {
                    if seen.insert(id.clone()) {
                        let source = cursor.shared.source(&id, Maker::Reader)?;
                        cursor.pin(source, start)?;
                    }
                }
            }
            Selector::All => {
                cursor.add_all(Shard::ALL, start);
                cursor.claim_any(ALL_SOURCES_LISTS, 1);
            }
            Selector::Shard(shard) => {
                shard.check();
                let shards = &cursor.shared.shards;
                let of =
                    match shards.compare_exchange(0, shard.of, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => shard.of,
                        Err(of) => of,
                    };
                cursor.add_all(shard, start);
                if of == shard.of {
                    cursor.wait_on = WaitOn::Shard(cursor.shared.clone(), shard.index);
                    cursor.claim_any(1 << shard.index, shard.of);
                }
            }
        }
        Ok(cursor)
    }

    /// The last `limit` retained envelopes of `source_id` that match `filter`, oldest first;
    /// `None` if the source has never been seen.
    pub fn recent(&self, source_id: &str, limit: usize, filter: &Filter) -> Option<Vec<Entry>> {
        let source = self.shared.sources.get(source_id)?.value().clone();
        let ring = source.ring.lock();
        let mut out: Vec<Entry> = ring
            .slots
            .iter()
            .rev()
            .filter(|s| {
                let k = &ring.keys[s.key as usize];
                if k.mixed {
                    filter.matches(&s.entry)
                } else {
                    filter.matches_parts(&k.origin, k.channel, k.step.as_deref(), &k.instance)
                }
            })
            .take(limit)
            .map(|s| s.entry.clone())
            .collect();
        out.reverse();
        Some(out)
    }

    /// The stats of `source_id`, creating it (empty, its seqs continuing from storage) if it
    /// has not been seen yet and fits under `max_sources`.
    pub fn touch(&self, source_id: &str) -> Result<SourceStats, EnvelopeError> {
        validate_source_id(source_id)?;
        Ok(self.shared.source(source_id, Maker::Reader)?.stats())
    }

    pub fn source_stats(&self, source_id: &str) -> Option<SourceStats> {
        let source = self.shared.sources.get(source_id)?.value().clone();
        Some(source.stats())
    }

    /// How many sources the router holds (each counts against `max_sources`).
    pub fn source_count(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Sources forgotten since the start (see [`RouterConfig::forget_idle_secs`]).
    pub fn forgotten_total(&self) -> u64 {
        self.shared.forgotten.load(Ordering::Relaxed)
    }

    /// How many sources readers opened that have no line yet, and the most there may be (a
    /// tenth of `max_sources`): past it a reader's new source is refused
    /// ([`EnvelopeError::TooManyWaitingSources`]).
    pub fn awaited_sources(&self) -> (usize, usize) {
        (
            self.shared.awaited.load(Ordering::Relaxed),
            self.shared.awaited_max(),
        )
    }

    /// Drops from `batch` the envelopes whose source is new and does not fit under
    /// `max_sources`, creating (empty) those that fit; returns the first refusal and how many
    /// envelopes it dropped. For senders that cannot be answered (syslog), whose lines of the
    /// sources already held must not go with a new one's.
    pub fn keep_admitted(&self, batch: &mut Vec<Envelope>) -> Option<(EnvelopeError, usize)> {
        let shared = &*self.shared;
        let mut prev: Option<&str> = None;
        let all_held = batch.iter().all(|e| {
            let same = prev == Some(e.source_id.as_str());
            prev = Some(e.source_id.as_str());
            same || shared.sources.contains_key(e.source_id.as_str())
        });
        if all_held {
            return None;
        }
        let mut first = None;
        let mut dropped = 0;
        let mut last_refused: Option<CompactString> = None;
        for e in std::mem::take(batch) {
            if batch.last().is_some_and(|k| k.source_id == e.source_id) {
                batch.push(e);
            } else if last_refused.as_ref() == Some(&e.source_id) {
                dropped += 1;
            } else {
                match shared.source(&e.source_id, Maker::Producer) {
                    Ok(_) => batch.push(e),
                    Err(err) => {
                        first.get_or_insert(err);
                        last_refused = Some(e.source_id.clone());
                        dropped += 1;
                    }
                }
            }
        }
        first.map(|e| (e, dropped))
    }

    /// The ids of every known source, unsorted; cheaper than [`Router::sources`].
    pub fn source_ids(&self) -> Vec<Arc<str>> {
        self.shared
            .sources
            .iter()
            .map(|e| e.key().clone())
            .collect()
    }

    /// Every known source, sorted by id.
    pub fn sources(&self) -> Vec<SourceStats> {
        let all: Vec<Arc<Source>> = self
            .shared
            .sources
            .iter()
            .map(|e| e.value().clone())
            .collect();
        let mut stats: Vec<SourceStats> = all.iter().map(|s| s.stats()).collect();
        stats.sort_by(|a, b| a.source_id.cmp(&b.source_id));
        stats
    }

    /// For metrics: the `n` sources with the most published (their stats, by id), the number
    /// of sources, and the entries all rings hold. One pass without sorting or copying every
    /// source's id, so a scrape of 100,000 sources stays cheap.
    pub fn busiest(&self, n: usize) -> (Vec<SourceStats>, usize, u64) {
        let mut top: BinaryHeap<Reverse<(u64, Arc<str>)>> = BinaryHeap::with_capacity(n + 1);
        let mut count = 0;
        let mut retained = 0u64;
        let mut keep = Vec::new();
        for e in self.shared.sources.iter() {
            count += 1;
            let source = e.value();
            let (published, held) = {
                let ring = source.ring.lock();
                (ring.next_seq - 1, ring.slots.len() as u64)
            };
            retained += held;
            if n == 0 {
                continue;
            }
            if top.len() < n {
                top.push(Reverse((published, source.id.clone())));
            } else if top
                .peek()
                .is_some_and(|Reverse((least, _))| published > *least)
            {
                top.pop();
                top.push(Reverse((published, source.id.clone())));
            }
        }
        for Reverse((_, id)) in top {
            if let Some(source) = self.shared.sources.get(&id) {
                keep.push(source.value().stats());
            }
        }
        keep.sort_by(|a, b| a.source_id.cmp(&b.source_id));
        (keep, count, retained)
    }

    /// Forgets every source nothing was published to for `idle`, that no cursor over it
    /// alone or a list of sources reads, and whose lines are all on disk (those of this
    /// process written by the persister; without one, only sources that got none): its ring
    /// and bookkeeping go, cursors over every source (or a shard) let it go at their next
    /// look (told of what they had not read, as of any eviction), and its next line or
    /// reader makes it again, its seqs continuing from storage, as after a restart. Returns
    /// how many were forgotten. One look at every source, so call it seldom.
    pub fn forget_idle(&self, idle: std::time::Duration) -> usize {
        let shared = &*self.shared;
        let before = now_ns().saturating_sub(i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX));
        let taken = shared.taken();
        let candidates: Vec<Arc<Source>> = shared
            .sources
            .iter()
            .filter(|e| {
                let s = e.value();
                let next_seq = s.next_seq.load(Ordering::Acquire);
                s.readers.load(Ordering::Relaxed) == 0
                    && shared.on_disk(s, next_seq)
                    && s.taken_by(&taken, next_seq)
            })
            .map(|e| e.value().clone())
            .collect();
        candidates
            .into_iter()
            .filter(|s| shared.forget(s, before))
            .count()
    }

    /// Bytes held by all rings together.
    pub fn retained_bytes(&self) -> usize {
        self.shared.held_bytes()
    }

    /// Envelopes published since start.
    pub fn published_total(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Envelopes evicted to keep all rings within `memory_budget_bytes`.
    pub fn evicted_for_budget_total(&self) -> u64 {
        self.shared.evicted_for_budget.load(Ordering::Relaxed)
    }
}

/// `Shared::held` unpacked: the shard count of the held cursors, and a bit per shard held.
fn held_shards(held: u64) -> (usize, u64) {
    ((held >> 32) as usize, held & 0xffff_ffff)
}

/// `Shared::held` for `of` shards of which those in `mask` are held (0 when none is).
fn pack_held(of: usize, mask: u64) -> u64 {
    if mask == 0 {
        0
    } else {
        ((of as u64) << 32) | mask
    }
}

/// [`Envelope::validate`] for each envelope of `batch`. What it checks depends only on the ids,
/// origin and step, which consecutive envelopes usually share: an envelope with the same ones
/// as the one before it is not checked again.
fn validate_batch(batch: &[Envelope]) -> Result<(), EnvelopeError> {
    let mut prev: Option<&Envelope> = None;
    for e in batch {
        let same = prev.is_some_and(|p| {
            p.source_id == e.source_id
                && p.origin == e.origin
                && p.instance_id == e.instance_id
                && p.step == e.step
        });
        if !same {
            e.validate()?;
        }
        prev = Some(e);
    }
    Ok(())
}

impl Shared {
    /// Adds the `(list, ordinal)`s of `listed` to their ready lists (one lock per list), then
    /// wakes the cursors of the shards in `touched` (a bit per shard) that wait.
    fn list_ready(&self, listed: &mut [(usize, usize)], touched: u64) {
        listed.sort_unstable();
        for run in listed.chunk_by(|a, b| a.0 == b.0) {
            let mut ready = self.ready_lists[run[0].0].lock();
            ready.extend(run.iter().map(|&(_, ordinal)| ordinal));
        }
        // Pairs with the fence in `WaitGuard::new`, as for a source's readers.
        fence(Ordering::SeqCst);
        let mut bits = touched;
        while bits != 0 {
            let shard = &self.shard_waits[bits.trailing_zeros() as usize];
            if shard.waiting.load(Ordering::Relaxed) > 0 {
                shard.notify.notify_waiters();
            }
            bits &= bits - 1;
        }
    }

    /// The bit of `source`'s shard among `of` (0 while no shard cursor is open).
    fn shard_bit(&self, source: &Source, of: usize) -> u64 {
        if of > 0 {
            1 << (source.ordinal % of)
        } else {
            0
        }
    }

    /// Adds to `listed` a `(list, ordinal)` for each claimed ready list that takes `source`
    /// (its shard's, and those over every source) and does not list it yet: each list's
    /// cursor visits it next time, clearing its bit before it reads.
    fn to_list(&self, source: &Source, of: usize, listed: &mut Vec<(usize, usize)>) {
        let mine = ALL_SOURCES_LISTS | self.shard_bit(source, of);
        let want = self.claimed.load(Ordering::Acquire) & mine;
        if want & !source.listed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut bits = want & !source.listed.fetch_or(want, Ordering::AcqRel);
        while bits != 0 {
            listed.push((bits.trailing_zeros() as usize, source.ordinal));
            bits &= bits - 1;
        }
    }

    /// Whether a source with this creation `ordinal` starts held.
    fn holds(&self, ordinal: usize) -> bool {
        let (of, mask) = held_shards(self.held.load(Ordering::SeqCst));
        of > 0 && mask & (1 << (ordinal % of)) != 0
    }

    /// The source that replaces `old`, which was forgotten: `old` leaves the map (if the
    /// forgetting has not taken it out yet) and the id is made again, or found made. Not held
    /// to `max_sources` (whoever holds `old` was admitted with it); refused only when storage
    /// cannot be read.
    fn renew(&self, old: &Arc<Source>) -> Result<Arc<Source>, EnvelopeError> {
        self.sources.remove_if(&old.id, |_, s| Arc::ptr_eq(s, old));
        self.source(&old.id, Maker::Sluice)
    }

    /// Whether every line of `source` before `next_seq` is in storage: none were published in
    /// this process, or the persister has written (or given up on) them all.
    fn on_disk(&self, source: &Source, next_seq: u64) -> bool {
        let last = next_seq - 1;
        last == source.resumed_after || self.durability.through(&source.id) >= last
    }

    /// How much of `created` each cursor over every source (or a shard) has taken, with its
    /// shard.
    fn taken(&self) -> Vec<(usize, Shard)> {
        let mut all = self.taken.lock();
        all.retain(|(w, _)| w.strong_count() > 0);
        all.iter()
            .filter_map(|(w, shard)| Some((w.upgrade()?.load(Ordering::Acquire), *shard)))
            .collect()
    }

    /// Forgets `source` if it still may be (see [`Router::forget_idle`]). Returns whether it
    /// was.
    fn forget(&self, source: &Arc<Source>, idle_before: i64) -> bool {
        let (freed, idle_ns) = {
            let mut ring = source.ring.lock();
            // Readers are counted, and lines published, under this lock: checked again here,
            // nothing comes in after.
            if ring.retired
                || ring.last_active > idle_before
                || source.readers.load(Ordering::Relaxed) != 0
                || !self.on_disk(source, ring.next_seq)
                || !source.taken_by(&self.taken(), ring.next_seq)
            {
                return false;
            }
            ring.retired = true;
            source.retired.store(true, Ordering::Release);
            // Evicted as the budget would (its counts kept): a cursor over every source that
            // had not read them is told how many it lost.
            let mut freed = 0;
            loop {
                let f = ring.evict_front();
                if f == 0 {
                    break;
                }
                freed += f;
            }
            ring.slots = std::collections::VecDeque::new();
            (
                freed,
                u64::try_from(now_ns().saturating_sub(ring.last_active)).unwrap_or(0),
            )
        };
        self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
        if source.awaited.swap(false, Ordering::Relaxed) {
            self.awaited.fetch_sub(1, Ordering::Relaxed);
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        // Before it leaves the map: a maker that read storage before this sees the change
        // when it finds the id gone, and reads storage again.
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        {
            // The same lock order as a round of eviction.
            let mut ev = self.evicting.lock();
            if let Some(slot) = ev.by_ordinal.get_mut(source.ordinal) {
                *slot = None;
            }
            self.created.lock()[source.created_at] = None;
        }
        // Every cursor that reads by a ready list visits it once more, to let it go; those
        // that look at every member on each read are woken to.
        let of = self.shards.load(Ordering::Relaxed);
        let mut listed = Vec::new();
        self.to_list(source, of, &mut listed);
        self.list_ready(&mut listed, self.shard_bit(source, of));
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
        self.durability.forget(&source.id, idle_ns);
        self.sources
            .remove_if(&source.id, |_, s| Arc::ptr_eq(s, source));
        true
    }

    /// Most sources readers may have opened that have no line yet: a tenth of `max_sources`.
    fn awaited_max(&self) -> usize {
        (self.config.max_sources / 10).max(1)
    }

    /// The source `id`, created (empty, its seqs continuing from storage) if it is new, within
    /// the limits of its `maker`.
    fn source(&self, id: &str, maker: Maker) -> Result<Arc<Source>, EnvelopeError> {
        if let Some(s) = self.sources.get(id) {
            return Ok(s.value().clone());
        }
        let capped = maker != Maker::Sluice;
        let max = self.config.max_sources;
        let refused = || EnvelopeError::TooManySources {
            source_id: id.to_owned(),
            max,
        };
        if capped && self.live.load(Ordering::Relaxed) >= max {
            // Refused before storage is asked (that may read a file).
            return Err(refused());
        }
        // Looked up before the map's entry is locked: it may read a file. If a source is
        // forgotten meanwhile, it may have been this one, made and stored since this read:
        // looked up again.
        let epoch = self.forgotten.load(Ordering::SeqCst);
        let (stored, skipped) = match &self.history {
            None => (0, 0),
            Some(h) => {
                let stored = h
                    .last_seq(id)
                    .map_err(|reason| EnvelopeError::StorageUnreadable {
                        source_id: id.to_owned(),
                        reason,
                    })?;
                let skipped = if stored > 0 {
                    h.skipped_after_crash(id)
                } else {
                    0
                };
                (stored, skipped)
            }
        };
        let resumed_after = stored + skipped;
        let mut created = false;
        let mut notice_bytes = 0;
        let mut queue_it = false;
        let source = match self.sources.entry(Arc::from(id)) {
            dashmap::mapref::entry::Entry::Occupied(o) => o.get().clone(),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                if self.forgotten.load(Ordering::SeqCst) != epoch {
                    drop(v);
                    return self.source(id, maker);
                }
                let id = v.key().clone();
                let awaited = maker == Maker::Reader;
                if awaited {
                    let most = self.awaited_max();
                    self.awaited
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            (n < most).then_some(n + 1)
                        })
                        .map_err(|_| EnvelopeError::TooManyWaitingSources {
                            source_id: id.to_string(),
                            max: most,
                        })?;
                }
                // A place under the limit is taken before anything is made.
                if capped {
                    self.live
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            (n < max).then_some(n + 1)
                        })
                        .map_err(|_| {
                            if awaited {
                                self.awaited.fetch_sub(1, Ordering::Relaxed);
                            }
                            refused()
                        })?;
                } else {
                    self.live.fetch_add(1, Ordering::Relaxed);
                }
                created = true;
                let mut ring = Ring::new(&self.config, resumed_after);
                if skipped > 0 {
                    // The first line of the source in this process says why its seqs jump.
                    let notice = Envelope::notice(
                        &*id,
                        format!(
                            "sluice stopped without a clean shutdown after storing seq {stored} \
                             of this source: seqs {} to {resumed_after} are skipped, never \
                             reused (readers may have seen lines under them that were not \
                             stored)",
                            stored + 1
                        ),
                    );
                    let mut admit = ring.admit(&notice);
                    admit.size += ring.arriving(now_ns());
                    notice_bytes = admit.size;
                    ring.push(&notice, admit);
                    queue_it = ring.enters_queue();
                }
                // Its ordinal and its place in the list are taken together, so the list is in
                // ordinal order and a forgotten source's place is found without a search.
                let mut list = self.created.lock();
                let ordinal = self.next_ordinal.fetch_add(1, Ordering::Relaxed);
                let source = Arc::new(Source::new(
                    // The map's key: one allocation of the id for both.
                    id,
                    ordinal,
                    ring,
                    resumed_after,
                    if self.holds(ordinal) {
                        resumed_after + 1
                    } else {
                        u64::MAX
                    },
                    self.sources_version.load(Ordering::Acquire) + 1,
                    // A notice of a crash is its first line already.
                    awaited && notice_bytes == 0,
                    list.len(),
                ));
                list.push(Some(source.clone()));
                drop(list);
                v.insert(source).value().clone()
            }
        };
        if created {
            if notice_bytes > 0 {
                self.total_bytes.fetch_add(notice_bytes, Ordering::Relaxed);
                self.published.fetch_add(1, Ordering::Relaxed);
                if maker == Maker::Reader {
                    self.awaited.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if queue_it {
                self.to_evict.lock().push(source.ordinal);
            }
            self.sources_version.fetch_add(1, Ordering::AcqRel);
        }
        Ok(source)
    }

    /// Evicts the entries that arrived first across all sources until the rings hold 90% of
    /// the budget. Runs on a publisher's thread, but only one at a time; concurrent publishers
    /// skip it.
    ///
    /// The rings with entries wait in the [`Evictor`]'s heap, by when their oldest entry
    /// arrived, from one round to the next: a ring is added when it gains its first entry and
    /// leaves when eviction empties it, and after each slice evicted only that ring is looked
    /// at again. So a round costs a lock per slice it evicts (and one per ring that gained its
    /// first entry since), not a look at every source (with 100,000 sources, each round locked
    /// all of them to rebuild the heap).
    fn enforce_budget(&self, force: bool) {
        let Some(mut ev) = self.evicting.try_lock() else {
            return;
        };
        let budget = self.config.memory_budget_bytes;
        let low_water = budget - budget / 10;
        if self.held_bytes() <= low_water {
            return;
        }
        let reads = self.held_reads.load(Ordering::Acquire);
        let fruitless = self.fruitless_at.load(Ordering::Acquire);
        // A tenth of the budget in entries of ~256 bytes, at least one persister batch.
        let worth = ((budget / 10 / 256) as u64).max(4096);
        if !force && fruitless != u64::MAX && reads.wrapping_sub(fruitless) < worth {
            return;
        }
        let ev = &mut *ev;
        {
            // Only the end of the list is new (a forgotten source empties its place here and
            // in `by_ordinal` together).
            let created = self.created.lock();
            for source in created[ev.seen..].iter().flatten() {
                if source.ordinal >= ev.by_ordinal.len() {
                    ev.by_ordinal.resize(source.ordinal + 1, None);
                }
                ev.by_ordinal[source.ordinal] = Some(source.clone());
            }
            ev.seen = created.len();
        }
        // Rings that gained entries since, and those a held cursor kept last round.
        let mut fresh = std::mem::take(&mut *self.to_evict.lock());
        fresh.append(&mut ev.blocked);
        for ordinal in fresh {
            let Some(Some(source)) = ev.by_ordinal.get(ordinal) else {
                continue; // forgotten
            };
            Evictor::requeue(&mut ev.queue, &mut source.ring.lock(), ordinal);
        }
        while self.held_bytes() > low_water {
            let Some(Reverse((at, ordinal))) = ev.queue.pop() else {
                break;
            };
            let Some(Some(source)) = ev.by_ordinal.get(ordinal) else {
                continue; // forgotten since it was queued
            };
            let gate = source.gate.load(Ordering::Acquire);
            let mut ring = source.ring.lock();
            let Some(now) = ring.oldest_arrival() else {
                // Emptied meanwhile (its own limits): listed again when it gains an entry.
                ring.queued = false;
                continue;
            };
            if ring.first_seq >= gate {
                // Only what a held cursor has read may go.
                ev.blocked.push(ordinal);
                continue;
            }
            if now != at {
                // Its own limits evicted meanwhile: its oldest entry is younger now.
                ev.queue.push(Reverse((now, ordinal)));
                continue;
            }
            // A slice at a time, so one old source does not lose everything to a brief spike.
            let chunk = ((ring.slots.len() / 8).max(1) as u64)
                .min(gate.saturating_sub(ring.first_seq)) as usize;
            let mut freed = 0;
            let mut evicted = 0;
            while evicted < chunk && self.held_bytes().saturating_sub(freed) > low_water {
                let f = ring.evict_front();
                if f == 0 {
                    break;
                }
                freed += f;
                evicted += 1;
            }
            if ring.slots.len() < ring.slots.capacity() / 4 {
                ring.slots.shrink_to_fit();
            }
            Evictor::requeue(&mut ev.queue, &mut ring, ordinal);
            drop(ring);
            self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
            self.evicted_for_budget
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
        let stuck = ev.queue.is_empty() && self.held_bytes() > low_water;
        self.fruitless_at
            .store(if stuck { reads } else { u64::MAX }, Ordering::Release);
    }
}

impl Shared {
    /// Bytes all rings hold. A publisher counts its batch after it released the rings' locks,
    /// so an evictor can count entries out before they were counted in: the wrapped sum of
    /// such a moment reads as 0.
    fn held_bytes(&self) -> usize {
        let v = self.total_bytes.load(Ordering::Relaxed);
        if v > isize::MAX as usize { 0 } else { v }
    }

    /// Past the memory budget by a tenth: what eviction could not free is held.
    fn over_budget(&self) -> bool {
        let budget = self.config.memory_budget_bytes;
        self.held_bytes() > budget.saturating_add(budget / 10)
    }
}

impl Source {
    /// Whether every cursor over every source (or its shard) has taken this source, by what
    /// `taken` says they have, or it has no line of this process to tell them of (they pass
    /// over a forgotten source they had not taken).
    fn taken_by(&self, taken: &[(usize, Shard)], next_seq: u64) -> bool {
        next_seq - 1 == self.resumed_after
            || taken
                .iter()
                .all(|(seen, shard)| !shard.has(self.ordinal) || self.created_at < *seen)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        id: Arc<str>,
        ordinal: usize,
        ring: Ring,
        resumed_after: u64,
        gate: u64,
        created_version: u64,
        awaited: bool,
        created_at: usize,
    ) -> Source {
        Source {
            id,
            ordinal,
            listed: AtomicU64::new(0),
            next_seq: AtomicU64::new(ring.next_seq),
            ring: Mutex::new(ring),
            notify: Notify::new(),
            waiting: AtomicUsize::new(0),
            resumed_after,
            gate: AtomicU64::new(gate),
            created_version,
            awaited: AtomicBool::new(awaited),
            created_at,
            retired: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
        }
    }

    fn stats(&self) -> SourceStats {
        let ring = self.ring.lock();
        let retained = ring.slots.len();
        SourceStats {
            source_id: self.id.to_string(),
            retained,
            retained_bytes: ring.bytes,
            oldest_seq: (retained > 0).then_some(ring.first_seq),
            newest_seq: (retained > 0).then_some(ring.next_seq - 1),
            published: ring.next_seq - 1,
            resumed_after: self.resumed_after,
        }
    }
}
