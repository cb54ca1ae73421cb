//! Sources, their rings, and the cursors that read them (SPEC §3).
//!
//! Each source owns a ring of `Arc<Envelope>` behind a short mutex. Writers assign `seq` under
//! that lock, evict from the front when the ring is full (by entries or by bytes), and never wait
//! for a reader. A reader is a [`Cursor`]: the next `seq` it wants per source, plus a [`Filter`].
//!
//! Exact loss counts under a filter: every ring keeps, per distinct `(origin, channel, step)`
//! key, how many entries it has published and evicted; every cursor keeps how many matching
//! entries lie before its position (`matched_before`). When a cursor is overtaken, the entries
//! it skipped are gone, but `evicted(matching keys) - matched_before` is exactly how many of them
//! matched its filter.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::envelope::validate_source_id;
use crate::envelope::{Channel, Envelope, EnvelopeError, now_ns, rfc3339_seconds};

/// Sizes of the in-memory rings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Most entries one source's ring retains.
    pub ring_max_entries: usize,
    /// Most bytes (message plus metadata) one source's ring retains.
    pub ring_max_bytes: usize,
    /// All rings together; past it the oldest entries across sources are evicted.
    pub memory_budget_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            ring_max_entries: 65_536,
            ring_max_bytes: 16 * 1024 * 1024,
            memory_budget_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Which envelopes of the selected sources a cursor wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `RTR` matches `RTR`; `APP` matches `APP` and `APP/PROC/WEB`, but not `APPX`.
    pub origin: Option<String>,
    pub channel: Option<Channel>,
    pub step: Option<String>,
}

impl Filter {
    pub fn matches(&self, env: &Envelope) -> bool {
        self.matches_parts(&env.origin, env.channel, env.step.as_deref())
    }

    fn matches_parts(&self, origin: &str, channel: Channel, step: Option<&str>) -> bool {
        if let Some(prefix) = self.origin.as_deref().filter(|p| !p.is_empty()) {
            let hit = origin == prefix
                || (origin.starts_with(prefix) && origin.as_bytes()[prefix.len()] == b'/');
            if !hit {
                return false;
            }
        }
        if self.channel.is_some_and(|c| c != channel) {
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

/// What a cursor hands its reader.
#[derive(Debug, Clone)]
pub enum Delivery {
    Log(Arc<Envelope>),
    Missed(MissedNotice),
}

impl Delivery {
    /// The envelope to show: the log itself, or the router's `LGR` line about the loss, phrased
    /// for `consumer` ("tail", "syslog drain", …).
    pub fn into_envelope(self, consumer: &str) -> Arc<Envelope> {
        match self {
            Delivery::Log(env) => env,
            Delivery::Missed(notice) => Arc::new(notice.to_envelope(consumer)),
        }
    }
}

/// A cursor was overtaken: exactly `count` envelopes matching its filter were overwritten
/// before it read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissedNotice {
    pub source_id: Arc<str>,
    pub count: u64,
    /// When the loss began: the time of the last envelope the cursor received from this source
    /// (or of the cursor's creation).
    pub since_ns: i64,
    /// The `seq` of the newest envelope lost; the next delivered envelope has a larger one.
    pub last_missed_seq: u64,
}

impl MissedNotice {
    pub fn message(&self, consumer: &str) -> String {
        let noun = if self.count == 1 {
            "message"
        } else {
            "messages"
        };
        format!(
            "sluice dropped {} {noun} for this {consumer} since {}: consumer too slow",
            self.count,
            rfc3339_seconds(self.since_ns)
        )
    }

    /// The in-band `LGR`/`ERR` envelope, carrying the tags `missed` and `since`.
    pub fn to_envelope(&self, consumer: &str) -> Envelope {
        let mut env = Envelope::notice(&*self.source_id, self.message(consumer));
        // A reader's loss is its own, not a server event of the source.
        env.step = None;
        env.seq = self.last_missed_seq;
        env.tags.insert("missed".into(), self.count.to_string());
        env.tags
            .insert("since".into(), rfc3339_seconds(self.since_ns));
        env
    }
}

/// What Sluice stored of sources before this start. A source's seqs continue after the highest
/// one it already has, so a reader resuming with `since_seq` across a restart is never handed a
/// new line under an old number.
pub trait History: Send + Sync + std::fmt::Debug {
    /// The highest seq `source_id` has in storage; 0 if none. Asked once, when the source is
    /// first seen in this process.
    fn last_seq(&self, source_id: &str) -> u64;

    /// How many seqs past its stored ones a stored source skips: 0 after a clean stop; after a
    /// crash, at least as many as the last process can have published and not yet written
    /// (readers may have seen lines under those seqs, so they are never reused).
    fn skipped_after_crash(&self) -> u64 {
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
    /// Bumped after each new source is inserted; firehose cursors compare it to learn of new
    /// sources without walking the map on every read.
    sources_version: AtomicU64,
    /// Sum of all rings' bytes, for the global memory budget.
    total_bytes: AtomicUsize,
    /// Only one task evicts for the global budget at a time; others carry on publishing.
    evicting: Mutex<()>,
    /// Wakes cursors over several sources (and the firehose) on any publish.
    notify: Notify,
    /// How many multi-source cursors are waiting: publishers skip the notify when none are.
    waiting: AtomicUsize,
    published: AtomicU64,
    evicted_for_budget: AtomicU64,
    /// Whether a held cursor exists (see [`Router::subscribe_held`]): new sources start held.
    held: std::sync::atomic::AtomicBool,
    /// Wakes publishers waiting for a held cursor to make room.
    room: Notify,
    room_waiting: AtomicUsize,
    /// Envelopes that waited for room (counted once per envelope per wait).
    waited_for_room: AtomicU64,
}

#[derive(Debug)]
struct Source {
    id: Arc<str>,
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
}

#[derive(Debug)]
struct Ring {
    slots: VecDeque<Slot>,
    /// `seq` of `slots[0]`; equals `next_seq` when the ring is empty.
    first_seq: u64,
    next_seq: u64,
    bytes: usize,
    /// Distinct `(origin, channel, step)` seen, with their counts; see the module docs.
    keys: Vec<Key>,
    /// Index of the key the previous envelope had: consecutive lines usually share it.
    last_key: usize,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Slot {
    env: Arc<Envelope>,
    key: u32,
    size: u32,
}

#[derive(Debug)]
struct Key {
    origin: Box<str>,
    channel: Channel,
    step: Option<Box<str>>,
    published: u64,
    evicted: u64,
}

impl Ring {
    fn new(config: &RouterConfig, resumed_after: u64) -> Ring {
        Ring {
            slots: VecDeque::new(),
            first_seq: resumed_after + 1,
            next_seq: resumed_after + 1,
            bytes: 0,
            keys: Vec::new(),
            last_key: 0,
            max_entries: config.ring_max_entries.max(1),
            max_bytes: config.ring_max_bytes.max(1),
        }
    }

    fn key_of(&mut self, env: &Envelope) -> usize {
        let same = |k: &Key| {
            k.channel == env.channel
                && *k.origin == *env.origin
                && k.step.as_deref() == env.step.as_deref()
        };
        if self.keys.get(self.last_key).is_some_and(same) {
            return self.last_key;
        }
        let idx = match self.keys.iter().position(same) {
            Some(i) => i,
            None => {
                self.keys.push(Key {
                    origin: env.origin.as_str().into(),
                    channel: env.channel,
                    step: env.step.as_deref().map(Into::into),
                    published: 0,
                    evicted: 0,
                });
                self.keys.len() - 1
            }
        };
        self.last_key = idx;
        idx
    }

    /// Evicts from the front until an entry of `size` bytes fits. Returns the bytes freed, and
    /// whether it fits: not when eviction would remove entries from `gate` on, unless
    /// `overshoot` lets the ring grow past its limits instead.
    fn make_room(&mut self, size: usize, gate: u64, overshoot: bool) -> (usize, bool) {
        let mut freed = 0;
        while !self.slots.is_empty()
            && (self.slots.len() >= self.max_entries || self.bytes + size > self.max_bytes)
        {
            if self.first_seq >= gate {
                return (freed, overshoot);
            }
            freed += self.evict_front();
        }
        (freed, true)
    }

    /// Appends `env` of `size` bytes (after [`Ring::make_room`]), assigning its `seq`.
    fn push(&mut self, mut env: Envelope, size: usize) {
        env.seq = self.next_seq;
        self.next_seq += 1;
        let key = self.key_of(&env);
        self.keys[key].published += 1;
        self.slots.push_back(Slot {
            env: Arc::new(env),
            key: key as u32,
            size: size as u32,
        });
        self.bytes += size;
    }

    fn evict_front(&mut self) -> usize {
        let Some(slot) = self.slots.pop_front() else {
            return 0;
        };
        self.keys[slot.key as usize].evicted += 1;
        self.first_seq += 1;
        self.bytes -= slot.size as usize;
        slot.size as usize
    }
}

impl Router {
    pub fn new(config: RouterConfig) -> Router {
        Router::with_history(config, None)
    }

    /// A router whose sources continue the seqs `history` says they have in storage.
    pub fn with_history(config: RouterConfig, history: Option<Arc<dyn History>>) -> Router {
        Router {
            shared: Arc::new(Shared {
                config,
                durability: Arc::default(),
                history,
                sources: DashMap::new(),
                sources_version: AtomicU64::new(0),
                total_bytes: AtomicUsize::new(0),
                evicting: Mutex::new(()),
                notify: Notify::new(),
                waiting: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                evicted_for_budget: AtomicU64::new(0),
                held: std::sync::atomic::AtomicBool::new(false),
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
        batch.iter().try_for_each(Envelope::validate)?;
        let mut rest = Vec::new();
        Ok(self.publish_validated(batch, None, false, &mut rest))
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
        batch.iter().try_for_each(Envelope::validate)?;
        let count = batch.len();
        let mut rest = Vec::new();
        self.publish_validated(batch, ranges.as_deref_mut(), false, &mut rest);
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
            self.publish_validated(batch, ranges.as_deref_mut(), false, &mut rest);
            if rest.is_empty() {
                break;
            }
            notified.await;
        }
        Ok(count)
    }

    /// Publishes one of Sluice's own notices about a source (origin `LGR`, step `_server`),
    /// which [`Router::publish`] refuses from producers. Never waits and never drops: a ring
    /// a held cursor has not read may grow past its limits by these.
    pub fn publish_notice(&self, notice: Envelope) -> Result<usize, EnvelopeError> {
        notice.validate_fields()?;
        let mut rest = Vec::new();
        Ok(self.publish_validated(vec![notice], None, true, &mut rest))
    }

    /// Publishes what fits; what a held cursor keeps out goes to `rest`, in order.
    fn publish_validated(
        &self,
        batch: Vec<Envelope>,
        mut ranges: Option<&mut Vec<(Arc<str>, u64, u64)>>,
        overshoot: bool,
        rest: &mut Vec<Envelope>,
    ) -> usize {
        let mut now = 0;
        let mut iter = batch.into_iter().peekable();
        let shared = &*self.shared;
        let mut added = 0usize;
        let mut freed = 0usize;
        let mut count = 0usize;
        if !overshoot && shared.held.load(Ordering::Relaxed) && shared.over_budget() && {
            // What the held cursor has read since may go now.
            shared.enforce_budget();
            shared.over_budget()
        } {
            // The rings hold more than the budget that a held cursor has not read yet.
            rest.extend(iter);
            return 0;
        }
        while let Some(first) = iter.next() {
            let source = shared.source(&first.source_id);
            {
                let mut ring = source.ring.lock();
                let gate = source.gate.load(Ordering::Acquire);
                let first_seq = ring.next_seq;
                let mut env = Some(first);
                while let Some(mut e) = env.take() {
                    if e.timestamp == 0 {
                        if now == 0 {
                            now = now_ns();
                        }
                        e.timestamp = now;
                    }
                    let size = e.size_bytes();
                    let (f, fits) = ring.make_room(size, gate, overshoot);
                    freed += f;
                    if !fits {
                        rest.push(e);
                        break;
                    }
                    ring.push(e, size);
                    added += size;
                    count += 1;
                    env = iter.next_if(|n| n.source_id == *source.id);
                }
                source.next_seq.store(ring.next_seq, Ordering::Release);
                if let Some(r) = ranges.as_deref_mut()
                    && ring.next_seq > first_seq
                {
                    r.push((source.id.clone(), first_seq, ring.next_seq - 1));
                }
            }
            // Pairs with the fence in `WaitGuard::new`: either the waiter sees the new entries,
            // or we see the waiter and wake it.
            fence(Ordering::SeqCst);
            if source.waiting.load(Ordering::Relaxed) > 0 {
                source.notify.notify_waiters();
            }
            if !rest.is_empty() {
                // Kept out: the rest of the batch waits too, so its order holds.
                rest.extend(iter.by_ref());
            }
        }
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
        if shared.waiting.load(Ordering::Relaxed) > 0 {
            shared.notify.notify_waiters();
        }
        if shared.total_bytes.load(Ordering::Relaxed) > shared.config.memory_budget_bytes {
            shared.enforce_budget();
        }
        count
    }

    /// Opens the held cursor: writers never evict what it has not read, and wait for it instead
    /// ([`Router::publish_waiting`]). For the persister with `when_behind: block`; one at a
    /// time. Dropping it lets writers evict again.
    pub fn subscribe_held(
        &self,
        selector: Selector,
        filter: Filter,
        start: Start,
    ) -> Result<Cursor, EnvelopeError> {
        // Set first: a source created from here on starts held; one created before is in the
        // snapshot `subscribe` takes, or learnt of by `refresh_all`, which holds it.
        self.shared.held.store(true, Ordering::SeqCst);
        let mut cursor = self.subscribe(selector, filter, start)?;
        cursor.held = true;
        for m in &cursor.members {
            m.source.gate.store(m.state.next, Ordering::Release);
        }
        Ok(cursor)
    }

    /// Envelopes that had to wait for the held cursor before their ring took them.
    pub fn waited_for_room_total(&self) -> u64 {
        self.shared.waited_for_room.load(Ordering::Relaxed)
    }

    /// Opens a cursor. Selected sources that do not exist yet are created (empty), so a tail
    /// can wait for an app's first line.
    pub fn subscribe(
        &self,
        selector: Selector,
        filter: Filter,
        start: Start,
    ) -> Result<Cursor, EnvelopeError> {
        let shared = self.shared.clone();
        let mut cursor = Cursor {
            held: false,
            wait_on: WaitOn::Global,
            filter,
            all: None,
            members: Vec::new(),
            rr: 0,
            delivered: 0,
            missed: 0,
            created_ns: now_ns(),
            shared,
        };
        match selector {
            Selector::Source(id) => {
                validate_source_id(&id)?;
                let source = cursor.shared.source(&id);
                cursor.add_member(source.clone(), start);
                cursor.wait_on = WaitOn::Source(source);
            }
            Selector::Sources(ids) => {
                for id in &ids {
                    validate_source_id(id)?;
                }
                let mut seen = HashSet::new();
                for id in ids {
                    if seen.insert(id.clone()) {
                        let source = cursor.shared.source(&id);
                        cursor.add_member(source, start);
                    }
                }
            }
            Selector::All => {
                // Read the version first: every source created under it is in the map by now.
                let version = cursor.shared.sources_version.load(Ordering::Acquire);
                let existing: Vec<Arc<Source>> = cursor
                    .shared
                    .sources
                    .iter()
                    .map(|e| e.value().clone())
                    .collect();
                let mut known = HashSet::new();
                for source in existing {
                    known.insert(source.id.clone());
                    cursor.add_member(source, start);
                }
                cursor.all = Some(AllSources { version, known });
            }
        }
        Ok(cursor)
    }

    /// The last `limit` retained envelopes of `source_id` that match `filter`, oldest first;
    /// `None` if the source has never been seen.
    pub fn recent(
        &self,
        source_id: &str,
        limit: usize,
        filter: &Filter,
    ) -> Option<Vec<Arc<Envelope>>> {
        let source = self.shared.sources.get(source_id)?.value().clone();
        let ring = source.ring.lock();
        let mut out: Vec<Arc<Envelope>> = ring
            .slots
            .iter()
            .rev()
            .filter(|s| {
                let k = &ring.keys[s.key as usize];
                filter.matches_parts(&k.origin, k.channel, k.step.as_deref())
            })
            .take(limit)
            .map(|s| s.env.clone())
            .collect();
        out.reverse();
        Some(out)
    }

    /// The stats of `source_id`, creating it (empty, its seqs continuing from storage) if it
    /// has not been seen yet.
    pub fn touch(&self, source_id: &str) -> Result<SourceStats, EnvelopeError> {
        validate_source_id(source_id)?;
        Ok(self.shared.source(source_id).stats())
    }

    pub fn source_stats(&self, source_id: &str) -> Option<SourceStats> {
        let source = self.shared.sources.get(source_id)?.value().clone();
        Some(source.stats())
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

    /// Bytes held by all rings together.
    pub fn retained_bytes(&self) -> usize {
        self.shared.total_bytes.load(Ordering::Relaxed)
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

impl Shared {
    fn source(&self, id: &str) -> Arc<Source> {
        if let Some(s) = self.sources.get(id) {
            return s.value().clone();
        }
        // Looked up before the map's entry is locked: it may read a file.
        let (stored, skipped) = self.history.as_ref().map_or((0, 0), |h| {
            let stored = h.last_seq(id);
            (
                stored,
                if stored > 0 {
                    h.skipped_after_crash()
                } else {
                    0
                },
            )
        });
        let resumed_after = stored + skipped;
        let mut created = false;
        let mut notice_bytes = 0;
        let source = self
            .sources
            .entry(Arc::from(id))
            .or_insert_with(|| {
                created = true;
                let mut ring = Ring::new(&self.config, resumed_after);
                if skipped > 0 {
                    // The first line of the source in this process says why its seqs jump.
                    let notice = Envelope::notice(
                        id,
                        format!(
                            "sluice stopped without a clean shutdown after storing seq {stored} \
                             of this source: seqs {} to {resumed_after} are skipped, never \
                             reused (readers may have seen lines under them that were not \
                             stored)",
                            stored + 1
                        ),
                    );
                    notice_bytes = notice.size_bytes();
                    ring.push(notice, notice_bytes);
                }
                let next_seq = ring.next_seq;
                Arc::new(Source {
                    id: Arc::from(id),
                    ring: Mutex::new(ring),
                    notify: Notify::new(),
                    waiting: AtomicUsize::new(0),
                    next_seq: AtomicU64::new(next_seq),
                    resumed_after,
                    gate: AtomicU64::new(if self.held.load(Ordering::SeqCst) {
                        resumed_after + 1
                    } else {
                        u64::MAX
                    }),
                    created_version: self.sources_version.load(Ordering::Acquire) + 1,
                })
            })
            .value()
            .clone();
        if created {
            if notice_bytes > 0 {
                self.total_bytes.fetch_add(notice_bytes, Ordering::Relaxed);
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            self.sources_version.fetch_add(1, Ordering::AcqRel);
        }
        source
    }

    /// Evicts the oldest entries across all sources until the rings hold 90% of the budget.
    /// Runs on a publisher's thread, but only one at a time; concurrent publishers skip it.
    fn enforce_budget(&self) {
        let Some(_one) = self.evicting.try_lock() else {
            return;
        };
        let budget = self.config.memory_budget_bytes;
        let low_water = budget - budget / 10;
        while self.total_bytes.load(Ordering::Relaxed) > low_water {
            let sources: Vec<Arc<Source>> =
                self.sources.iter().map(|e| e.value().clone()).collect();
            // Only what a held cursor has read may go.
            let victim = sources
                .into_iter()
                .filter_map(|s| {
                    let gate = s.gate.load(Ordering::Acquire);
                    let ring = s.ring.lock();
                    let front = ring.slots.front().filter(|_| ring.first_seq < gate);
                    let ts = front.map(|slot| slot.env.timestamp);
                    drop(ring);
                    ts.map(|ts| (ts, s))
                })
                .min_by_key(|(ts, _)| *ts);
            let Some((_, source)) = victim else { break };
            let gate = source.gate.load(Ordering::Acquire);
            let mut ring = source.ring.lock();
            // A slice at a time, so one old source does not lose everything to a brief spike.
            let chunk = ((ring.slots.len() / 8).max(1) as u64)
                .min(gate.saturating_sub(ring.first_seq)) as usize;
            let mut freed = 0;
            let mut evicted = 0;
            while evicted < chunk
                && self
                    .total_bytes
                    .load(Ordering::Relaxed)
                    .saturating_sub(freed)
                    > low_water
            {
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
            drop(ring);
            self.total_bytes.fetch_sub(freed, Ordering::Relaxed);
            self.evicted_for_budget
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Past the memory budget by a tenth: what eviction could not free is held.
    fn over_budget(&self) -> bool {
        let budget = self.config.memory_budget_bytes;
        self.total_bytes.load(Ordering::Relaxed) > budget.saturating_add(budget / 10)
    }
}

impl Source {
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

/// Reads one or more sources, in `seq` order per source, with exact loss accounting.
#[derive(Debug)]
pub struct Cursor {
    shared: Arc<Shared>,
    /// Writers wait for this cursor rather than evict what it has not read.
    held: bool,
    filter: Filter,
    /// What to wait on when there is nothing to read.
    wait_on: WaitOn,
    /// Set for the firehose: how it learns of sources created after it.
    all: Option<AllSources>,
    members: Vec<Member>,
    /// Where the next read starts among `members`, so a busy source cannot starve the others.
    rr: usize,
    delivered: u64,
    missed: u64,
    created_ns: i64,
}

#[derive(Debug)]
enum WaitOn {
    Source(Arc<Source>),
    Global,
}

#[derive(Debug)]
struct AllSources {
    version: u64,
    known: HashSet<Arc<str>>,
}

#[derive(Debug)]
struct Member {
    source: Arc<Source>,
    state: Position,
}

/// A cursor's place in one source.
#[derive(Debug)]
struct Position {
    /// The next `seq` wanted.
    next: u64,
    /// How many entries before `next` match the filter (delivered, missed, or before the start).
    matched_before: u64,
    /// Per ring key: 0 not yet known, 1 matches the filter, 2 does not.
    key_match: Vec<u8>,
    /// Timestamp of the last envelope delivered from this source, for loss notices.
    last_ts: i64,
}

/// Reads at most this many ring entries per lock hold, so a selective filter over a big ring
/// cannot stall writers.
const SCAN_LIMIT: usize = 4096;

impl Position {
    fn matches(&mut self, key: usize, ring: &Ring, filter: &Filter) -> bool {
        if key >= self.key_match.len() {
            self.key_match.resize(ring.keys.len(), 0);
        }
        if self.key_match[key] == 0 {
            let k = &ring.keys[key];
            let hit = filter.matches_parts(&k.origin, k.channel, k.step.as_deref());
            self.key_match[key] = if hit { 1 } else { 2 };
        }
        self.key_match[key] == 1
    }

    /// Sum of a per-key counter over the keys that match the filter.
    fn matching(&mut self, ring: &Ring, filter: &Filter, count: impl Fn(&Key) -> u64) -> u64 {
        (0..ring.keys.len())
            .filter(|&k| self.matches(k, ring, filter))
            .map(|k| count(&ring.keys[k]))
            .sum()
    }
}

impl Cursor {
    fn add_member(&mut self, source: Arc<Source>, start: Start) {
        let mut m = Position {
            next: 1,
            matched_before: 0,
            key_match: Vec::new(),
            last_ts: 0,
        };
        {
            let ring = source.ring.lock();
            let filter = &self.filter;
            let published = m.matching(&ring, filter, |k| k.published);
            match start {
                Start::Live => {
                    m.next = ring.next_seq;
                    m.matched_before = published;
                }
                Start::Back(n) => {
                    let mut found = 0u64;
                    let mut next = ring.next_seq;
                    for (i, slot) in ring.slots.iter().enumerate().rev() {
                        if found as usize >= n {
                            break;
                        }
                        if m.matches(slot.key as usize, &ring, filter) {
                            found += 1;
                            next = ring.first_seq + i as u64;
                        }
                    }
                    if (found as usize) < n {
                        next = ring.first_seq;
                    }
                    m.next = next;
                    m.matched_before = published - found;
                }
                Start::AfterSeq(seq) => {
                    let want = seq.saturating_add(1).min(ring.next_seq);
                    if want >= ring.first_seq {
                        let skip = (want - ring.first_seq) as usize;
                        let mut after = 0u64;
                        for slot in ring.slots.iter().skip(skip) {
                            if m.matches(slot.key as usize, &ring, filter) {
                                after += 1;
                            }
                        }
                        m.matched_before = published - after;
                    } else {
                        let evicted = m.matching(&ring, filter, |k| k.evicted);
                        m.matched_before = evicted.saturating_sub(ring.first_seq - want);
                    }
                    m.next = want;
                }
            }
        }
        self.members.push(Member { source, state: m });
    }

    /// Learns of sources created since the firehose cursor last looked.
    fn refresh_all(&mut self) {
        let Some(all) = &self.all else { return };
        let version = self.shared.sources_version.load(Ordering::Acquire);
        if version == all.version {
            return;
        }
        let fresh: Vec<Arc<Source>> = self
            .shared
            .sources
            .iter()
            .filter(|e| !all.known.contains(e.key()))
            .map(|e| e.value().clone())
            .collect();
        let created_under = all.version;
        for source in fresh {
            // A source created after this cursor is read from its first line; one that raced
            // with the cursor's creation starts live, as the others did.
            let start = if source.created_version > created_under {
                Start::AfterSeq(0)
            } else {
                Start::Live
            };
            if let Some(all) = &mut self.all {
                all.known.insert(source.id.clone());
            }
            self.add_member(source, start);
        }
        if let Some(all) = &mut self.all {
            all.version = version;
        }
    }

    /// Appends up to `max` deliveries (plus at most one loss notice per source) to `out`
    /// without waiting. Returns how many were appended.
    pub fn poll_into(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        self.refresh_all();
        let before = out.len();
        let n = self.members.len();
        for k in 0..n {
            let idx = (self.rr + k) % n;
            if out.len() - before >= max {
                self.rr = idx;
                break;
            }
            let Member { source, state: m } = &mut self.members[idx];
            if source.next_seq.load(Ordering::Acquire) <= m.next {
                continue; // nothing new, so nothing overwritten either
            }
            let ring = source.ring.lock();
            if m.next < ring.first_seq {
                let evicted = m.matching(&ring, &self.filter, |k| k.evicted);
                let missed = evicted.saturating_sub(m.matched_before);
                if missed > 0 {
                    out.push(Delivery::Missed(MissedNotice {
                        source_id: source.id.clone(),
                        count: missed,
                        since_ns: if m.last_ts != 0 {
                            m.last_ts
                        } else {
                            self.created_ns
                        },
                        last_missed_seq: ring.first_seq - 1,
                    }));
                    self.missed += missed;
                }
                m.matched_before = m.matched_before.max(evicted);
                m.next = ring.first_seq;
            }
            let skip = (m.next - ring.first_seq) as usize;
            let room = max - (out.len() - before);
            let mut taken = 0;
            let mut scanned = 0;
            for slot in ring.slots.range(skip..) {
                if taken >= room || scanned >= SCAN_LIMIT {
                    break;
                }
                scanned += 1;
                if m.matches(slot.key as usize, &ring, &self.filter) {
                    m.last_ts = slot.env.timestamp;
                    out.push(Delivery::Log(slot.env.clone()));
                    taken += 1;
                }
            }
            m.next += scanned as u64;
            m.matched_before += taken as u64;
            self.delivered += taken as u64;
            if self.held {
                source.gate.store(m.next, Ordering::Release);
            }
        }
        if self.held && out.len() > before {
            // Pairs with the fence in `WaitGuard::new`, as for readers.
            fence(Ordering::SeqCst);
            if self.shared.room_waiting.load(Ordering::Relaxed) > 0 {
                self.shared.room.notify_waiters();
            }
        }
        out.len() - before
    }

    /// Appends at least one and at most `max` deliveries to `out`, waiting for new entries if
    /// there are none. Cancel-safe: dropping the future loses nothing.
    pub async fn next_batch(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        loop {
            let n = self.poll_into(out, max);
            if n > 0 {
                return n;
            }
            let target = match &self.wait_on {
                WaitOn::Source(s) => WaitTarget::Source(s.clone()),
                WaitOn::Global => WaitTarget::Global(self.shared.clone()),
            };
            // Created before the re-check below, so a notify in between is not lost.
            let notified = target.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _guard = WaitGuard::new(target.waiting());
            let n = self.poll_into(out, max);
            if n > 0 {
                return n;
            }
            notified.await;
        }
    }

    /// Envelopes delivered so far (loss notices not included).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Envelopes reported missed so far.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next `seq` wanted from each source read, for resuming elsewhere.
    pub fn positions(&self) -> Vec<(Arc<str>, u64)> {
        self.members
            .iter()
            .map(|m| (m.source.id.clone(), m.state.next))
            .collect()
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Writers evict again, and those waiting go on.
        self.shared.held.store(false, Ordering::SeqCst);
        for e in self.shared.sources.iter() {
            e.value().gate.store(u64::MAX, Ordering::Release);
        }
        self.shared.room.notify_waiters();
    }
}

enum WaitTarget {
    Source(Arc<Source>),
    Global(Arc<Shared>),
}

impl WaitTarget {
    fn notify(&self) -> &Notify {
        match self {
            WaitTarget::Source(s) => &s.notify,
            WaitTarget::Global(g) => &g.notify,
        }
    }
    fn waiting(&self) -> &AtomicUsize {
        match self {
            WaitTarget::Source(s) => &s.waiting,
            WaitTarget::Global(g) => &g.waiting,
        }
    }
}

/// Counts a waiting reader for as long as it lives, so publishers know to notify.
struct WaitGuard<'a>(&'a AtomicUsize);

impl<'a> WaitGuard<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        WaitGuard(count)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
