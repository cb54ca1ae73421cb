//! Cursors: a reader's place in each source it reads, the reads themselves, and the wait
//! for new entries (a fence pairs each waiter with the publishers that must wake it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

use tokio::sync::Notify;

use super::ring::{Key, Ring, Slot};
use super::{Delivery, Filter, MissedNotice, Shard, Shared, Source, Start, held_shards, pack_held};
use crate::entry::Fields;

/// Reads one or more sources, in `seq` order per source, with exact loss accounting.
#[derive(Debug)]
pub struct Cursor {
    pub(super) shared: Arc<Shared>,
    /// Writers of this shard's sources wait for this cursor rather than evict what it has not
    /// read.
    pub(super) held: Option<Shard>,
    pub(super) filter: Filter,
    /// What to wait on when there is nothing to read.
    pub(super) wait_on: WaitOn,
    /// Set for the firehose: how it learns of sources created after it.
    pub(super) all: Option<AllSources>,
    pub(super) members: Vec<Member>,
    /// Places in `members` of sources let go (forgotten), holding `Shared::vacant`: the next
    /// member added takes one.
    pub(super) free: Vec<usize>,
    /// A cursor over one source or a list of them: while it is open, its sources are not
    /// forgotten (each counts it in `Source::readers`).
    pub(super) pinned: bool,
    /// Set by [`Cursor::track_forgotten`]: the ids of the sources let go since
    /// [`Cursor::take_forgotten`] was last called.
    pub(super) forgotten: Option<Vec<Arc<str>>>,
    /// Where the next read starts among `members`, so a busy source cannot starve the others.
    pub(super) rr: usize,
    /// Set when this cursor reads by the sources published to (see [`Cursor::claim_any`])
    /// instead of looking at every member on each read.
    pub(super) ready: Option<Ready>,
    pub(super) delivered: u64,
    pub(super) missed: u64,
    pub(super) created_ns: i64,
}

/// What a cursor waits on when there is nothing to read: its one source, publishes to a
/// shard's sources, or every publish.
#[derive(Debug, Clone)]
pub(super) enum WaitOn {
    Source(Arc<Source>),
    Shard(Arc<Shared>, usize),
    Global(Arc<Shared>),
}

impl WaitOn {
    fn notify(&self) -> &Notify {
        match self {
            WaitOn::Source(s) => &s.notify,
            WaitOn::Shard(g, i) => &g.shard_waits[*i].notify,
            WaitOn::Global(g) => &g.notify,
        }
    }

    fn waiting(&self) -> &AtomicUsize {
        match self {
            WaitOn::Source(s) => &s.waiting,
            WaitOn::Shard(g, i) => &g.shard_waits[*i].waiting,
            WaitOn::Global(g) => &g.waiting,
        }
    }
}

#[derive(Debug)]
pub(super) struct AllSources {
    /// The `sources_version` the cursor was created under (what was created after it is read
    /// from its first line), and the one it last looked at.
    pub(super) created_under: u64,
    pub(super) version: u64,
    /// How much of the router's creation-ordered source list this cursor has taken.
    pub(super) seen: usize,
    /// The sources it reads of those ([`Shard::ALL`]: every one).
    pub(super) shard: Shard,
    /// `seen`, where forgetting looks (`Shared::taken`).
    pub(super) taken: Arc<AtomicUsize>,
}

/// What a cursor that owns a ready list visits next.
#[derive(Debug)]
pub(super) struct Ready {
    /// The list (its bit in `Shared::claimed` and `Source::listed`).
    list: usize,
    /// Members to visit, in turn: taken from the shard's list, and those left with more to
    /// read.
    pending: VecDeque<usize>,
    /// The member index of each source read, by `ordinal / of` (`usize::MAX`: none).
    index_of: Vec<usize>,
    of: usize,
}

impl Ready {
    fn index(&self, ordinal: usize) -> Option<usize> {
        self.index_of
            .get(ordinal / self.of)
            .copied()
            .filter(|&i| i != usize::MAX)
    }

    fn insert(&mut self, ordinal: usize, member: usize) {
        let at = ordinal / self.of;
        if at >= self.index_of.len() {
            self.index_of.resize(at + 1, usize::MAX);
        }
        self.index_of[at] = member;
    }
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) source: Arc<Source>,
    pub(super) state: Position,
}

/// A cursor's place in one source.
#[derive(Debug)]
pub(super) struct Position {
    /// The next `seq` wanted.
    pub(super) next: u64,
    /// How many entries before `next` match the filter (delivered, missed, or before the start).
    pub(super) matched_before: u64,
    /// Per ring key: 0 not yet known, 1 matches the filter, 2 does not.
    pub(super) key_match: Vec<u8>,
    /// Timestamp of the last envelope delivered from this source, for loss notices.
    pub(super) last_ts: i64,
}

/// Reads at most this many ring entries per lock hold, so a selective filter over a big ring
/// cannot stall writers.
pub(super) const SCAN_LIMIT: usize = 4096;

impl Position {
    /// Whether entries of `key` count as matching, for loss accounting (every entry of the
    /// mixed key does).
    #[inline]
    pub(super) fn matches(&mut self, key: usize, ring: &Ring, filter: &Filter) -> bool {
        if key >= self.key_match.len() {
            self.key_match.resize(ring.keys.len(), 0);
        }
        if self.key_match[key] == 0 {
            let k = &ring.keys[key];
            let hit = k.mixed
                || filter.matches_parts(&k.origin, k.channel, k.step.as_deref(), &k.instance);
            self.key_match[key] = if hit { 1 } else { 2 };
        }
        self.key_match[key] == 1
    }

    /// Whether `slot` is delivered: its key matches, and an entry of the mixed key matches
    /// itself.
    #[inline]
    pub(super) fn delivers(&mut self, slot: &Slot, ring: &Ring, filter: &Filter) -> bool {
        self.matches(slot.key as usize, ring, filter)
            && (!ring.keys[slot.key as usize].mixed || filter.matches(&slot.entry))
    }

    /// Sum of a per-key counter over the keys that match the filter.
    pub(super) fn matching(
        &mut self,
        ring: &Ring,
        filter: &Filter,
        count: impl Fn(&Key) -> u64,
    ) -> u64 {
        (0..ring.keys.len())
            .filter(|&k| self.matches(k, ring, filter))
            .map(|k| count(&ring.keys[k]))
            .sum()
    }
}

impl Cursor {
    /// Adds `source` from `start`. Returns false, adding nothing, if it was forgotten (a
    /// cursor over one source looks it up again).
    pub(super) fn add_member(&mut self, source: Arc<Source>, start: Start) -> bool {
        let mut m = Position {
            next: 1,
            matched_before: 0,
            key_match: Vec::new(),
            last_ts: 0,
        };
        {
            let ring = source.ring.lock();
            if ring.retired {
                return false;
            }
            if self.pinned {
                // Under the lock, as forgetting looks: either it sees this reader, or this
                // reader saw it forgotten.
                source.readers.fetch_add(1, Ordering::Relaxed);
            }
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
                        if m.delivers(slot, &ring, filter) {
                            found += 1;
                            next = ring.first_seq + i as u64;
                        }
                    }
                    if (found as usize) < n {
                        next = ring.first_seq;
                    }
                    // What counts for loss accounting from there on: the entries found, and
                    // every other entry of the mixed key.
                    let counted = ring
                        .slots
                        .range((next - ring.first_seq) as usize..)
                        .filter(|s| m.matches(s.key as usize, &ring, filter))
                        .count() as u64;
                    m.next = next;
                    m.matched_before = published - counted;
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
        let at = self.free.pop().unwrap_or(self.members.len());
        if let Some(r) = &mut self.ready {
            r.insert(source.ordinal, at);
            r.pending.push_back(at);
        }
        let member = Member { source, state: m };
        match self.members.get_mut(at) {
            Some(place) => *place = member,
            None => self.members.push(member),
        }
        true
    }

    /// Adds `source` as a member that keeps it from being forgotten; if it was forgotten
    /// meanwhile, the source made again under its id (storage holds what it had). Returns
    /// the source added.
    pub(super) fn pin(
        &mut self,
        mut source: Arc<Source>,
        start: Start,
    ) -> Result<Arc<Source>, crate::EnvelopeError> {
        while !self.add_member(source.clone(), start) {
            source = self.shared.renew(&source)?;
        }
        Ok(source)
    }

    /// Lets go of member `idx`, whose source was forgotten: first tells the reader of what
    /// it had not read (the forgetting evicted it), then leaves its place to the next source
    /// added.
    fn let_go(&mut self, idx: usize, out: &mut Vec<Delivery>) {
        {
            let Member { source, state: m } = &mut self.members[idx];
            let ring = source.ring.lock();
            self.missed += overtaken(source, m, &ring, &self.filter, self.created_ns, out);
        }
        let vacant = Member {
            source: self.shared.vacant.clone(),
            state: Position {
                next: u64::MAX,
                matched_before: 0,
                key_match: Vec::new(),
                last_ts: 0,
            },
        };
        let gone = std::mem::replace(&mut self.members[idx], vacant);
        if let Some(r) = &mut self.ready
            && let Some(place) = r.index_of.get_mut(gone.source.ordinal / r.of)
        {
            *place = usize::MAX;
        }
        if self.pinned {
            gone.source.readers.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ids) = &mut self.forgotten {
            ids.push(gone.source.id.clone());
        }
        self.free.push(idx);
    }

    /// Has [`Cursor::take_forgotten`] say which sources this cursor let go because the
    /// router forgot them (the persister drops what it kept of their files).
    pub fn track_forgotten(&mut self) {
        self.forgotten.get_or_insert_with(Vec::new);
    }

    /// The ids of the sources let go since the last call (see [`Cursor::track_forgotten`]).
    /// Each was let go after everything it had was delivered (or reported missed) and before
    /// anything of a source made again under its id.
    pub fn take_forgotten(&mut self) -> Vec<Arc<str>> {
        self.forgotten
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Reads by the first ready list of `lists` (a bit each) that no other cursor has, if
    /// any: publishers list each source they add to (once until it is visited), so a read
    /// visits those instead of every source ever created (100,000 idle sources cost nothing).
    /// The first read visits every member once. `of`: the members are every `of`th source.
    pub(super) fn claim_any(&mut self, lists: u64, of: usize) {
        let claimed = &self.shared.claimed;
        let mut now = claimed.load(Ordering::Acquire);
        let list = loop {
            let free = lists & !now;
            if free == 0 {
                return; // all taken: this cursor looks at every member on each read
            }
            let bit = free & free.wrapping_neg();
            match claimed.compare_exchange(now, now | bit, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break bit.trailing_zeros() as usize,
                Err(seen) => now = seen,
            }
        };
        let mut ready = Ready {
            list,
            pending: (0..self.members.len()).collect(),
            index_of: Vec::new(),
            of,
        };
        for (i, m) in self.members.iter().enumerate() {
            ready.insert(m.source.ordinal, i);
        }
        self.ready = Some(ready);
    }

    /// Reads every source of `shard`, and those created later.
    pub(super) fn add_all(&mut self, shard: Shard, start: Start) {
        // Read the version first: every source created under it is in the list by now.
        let version = self.shared.sources_version.load(Ordering::Acquire);
        let (existing, taken) = {
            let created = self.shared.created.lock();
            // Registered while the list is locked: no source is forgotten past `seen` from
            // here on.
            let taken = Arc::new(AtomicUsize::new(created.len()));
            self.shared
                .taken
                .lock()
                .push((Arc::downgrade(&taken), shard));
            (created.clone(), taken)
        };
        let seen = existing.len();
        for source in existing.into_iter().flatten() {
            if shard.has(source.ordinal) {
                self.add_member(source, start);
            }
        }
        self.all = Some(AllSources {
            created_under: version,
            version,
            seen,
            shard,
            taken,
        });
    }

    /// Learns of sources created since the firehose cursor last looked: only the new end of
    /// the router's creation-ordered list, so creating N sources costs a firehose O(N) in all,
    /// not a walk of every source per creation.
    pub(super) fn refresh_all(&mut self) {
        let Some(all) = &self.all else { return };
        let version = self.shared.sources_version.load(Ordering::Acquire);
        if version == all.version {
            return;
        }
        let (created_under, seen, shard) = (all.created_under, all.seen, all.shard);
        let fresh: Vec<Option<Arc<Source>>> = self.shared.created.lock()[seen..].to_vec();
        let taken = seen + fresh.len();
        for source in fresh.into_iter().flatten().filter(|s| shard.has(s.ordinal)) {
            // A source created after this cursor is read from its first line; one that raced
            // with the cursor's creation starts live, as the others did.
            let start = if source.created_version > created_under {
                Start::AfterSeq(0)
            } else {
                Start::Live
            };
            self.add_member(source, start);
        }
        if let Some(all) = &mut self.all {
            all.version = version;
            all.seen = taken;
            // After the members: what is forgotten from here on, this cursor lets go of.
            all.taken.store(taken, Ordering::Release);
        }
    }

    /// Appends up to `max` deliveries (plus at most one loss notice per source) to `out`
    /// without waiting. Returns how many were appended.
    pub fn poll_into(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        let before = out.len();
        if self.ready.is_some() {
            self.poll_ready(out, max);
        } else {
            self.refresh_all();
            let n = self.members.len();
            for k in 0..n {
                let idx = (self.rr + k) % n;
                if out.len() - before >= max {
                    self.rr = idx;
                    break;
                }
                self.read_member(idx, out, max - (out.len() - before));
            }
        }
        if self.held.is_some() && out.len() > before {
            self.shared
                .held_reads
                .fetch_add((out.len() - before) as u64, Ordering::AcqRel);
            let stuck = self.shared.fruitless_at.load(Ordering::Acquire) != u64::MAX;
            if stuck && out.len() - before < max {
                // Read all it had while writers wait for eviction: evict what it read now,
                // however little (they would wait for more reads that cannot come).
                self.shared.enforce_budget(true);
            }
            // Pairs with the fence in `WaitGuard::new`, as for readers.
            fence(Ordering::SeqCst);
            if self.shared.room_waiting.load(Ordering::Relaxed) > 0 {
                self.shared.room.notify_waiters();
            }
        }
        out.len() - before
    }

    /// Visits the members the shard's `ready` list names, and those left with more to read,
    /// each in turn, until `max` deliveries are out or none is left.
    fn poll_ready(&mut self, out: &mut Vec<Delivery>, max: usize) {
        let before = out.len();
        let Some(r) = &self.ready else { return };
        let list = r.list;
        let fresh = std::mem::take(&mut *self.shared.ready_lists[list].lock());
        // In the order they were published to (a new source, in its place).
        for ordinal in fresh {
            let idx = self.ready.as_ref().and_then(|r| r.index(ordinal));
            match (idx, &mut self.ready) {
                (Some(i), Some(r)) => r.pending.push_back(i),
                // Created since this cursor last looked: taking it on lists it.
                _ => self.refresh_all(),
            }
        }
        // And those created before this cursor claimed its list that no publish listed.
        self.refresh_all();
        while out.len() - before < max {
            let Some(idx) = self.ready.as_mut().and_then(|r| r.pending.pop_front()) else {
                break;
            };
            // Cleared before the read: what is published after it lists the source again.
            self.members[idx]
                .source
                .listed
                .fetch_and(!(1 << list), Ordering::SeqCst);
            self.read_member(idx, out, max - (out.len() - before));
            let Member { source, state } = &self.members[idx];
            if source.next_seq.load(Ordering::Acquire) > state.next
                && let Some(r) = &mut self.ready
            {
                r.pending.push_back(idx); // more than this read could take
            }
        }
    }

    /// Reads up to `room` deliveries (plus a loss notice) of member `idx` into `out`.
    fn read_member(&mut self, idx: usize, out: &mut Vec<Delivery>, room: usize) {
        let Member { source, state: m } = &mut self.members[idx];
        if source.next_seq.load(Ordering::Acquire) <= m.next {
            // Nothing new, so nothing overwritten either; unless it was forgotten (and listed
            // for this visit).
            if source.retired.load(Ordering::Acquire) {
                self.let_go(idx, out);
            }
            return;
        }
        let ring = source.ring.lock();
        if ring.retired {
            drop(ring);
            self.let_go(idx, out);
            return;
        }
        self.missed += overtaken(source, m, &ring, &self.filter, self.created_ns, out);
        let skip = (m.next - ring.first_seq) as usize;
        let mut taken = 0;
        let mut counted = 0;
        let mut scanned = 0;
        for slot in ring.slots.range(skip..) {
            if taken >= room || scanned >= SCAN_LIMIT {
                break;
            }
            scanned += 1;
            if m.matches(slot.key as usize, &ring, &self.filter) {
                counted += 1;
                if m.delivers(slot, &ring, &self.filter) {
                    m.last_ts = slot.entry.timestamp();
                    out.push(Delivery::Log(slot.entry.clone()));
                    taken += 1;
                }
            }
        }
        m.next += scanned as u64;
        m.matched_before += counted as u64;
        self.delivered += taken as u64;
        if self.held.is_some() {
            source.gate.store(m.next, Ordering::Release);
        }
    }

    /// Appends at least one and at most `max` deliveries to `out`, waiting for new entries if
    /// there are none. Cancel-safe: dropping the future loses nothing.
    pub async fn next_batch(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        loop {
            let n = self.poll_into(out, max);
            if n > 0 {
                return n;
            }
            // Owned: the reads below borrow the cursor.
            let target = self.wait_on.clone();
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
            .filter(|m| !Arc::ptr_eq(&m.source, &self.shared.vacant))
            .map(|m| (m.source.id.clone(), m.state.next))
            .collect()
    }
}

/// When the ring no longer holds `m.next`: moves `m` to the ring's first entry and, if any of
/// what it skipped matched the filter, appends the loss notice to `out`. Returns how many.
fn overtaken(
    source: &Source,
    m: &mut Position,
    ring: &Ring,
    filter: &Filter,
    created_ns: i64,
    out: &mut Vec<Delivery>,
) -> u64 {
    if m.next >= ring.first_seq {
        return 0;
    }
    let evicted = m.matching(ring, filter, |k| k.evicted);
    let missed = evicted.saturating_sub(m.matched_before);
    if missed > 0 {
        out.push(Delivery::Missed(MissedNotice {
            source_id: source.id.clone(),
            count: missed,
            since_ns: if m.last_ts != 0 {
                m.last_ts
            } else {
                created_ns
            },
            last_missed_seq: ring.first_seq - 1,
        }));
    }
    m.matched_before = m.matched_before.max(evicted);
    m.next = ring.first_seq;
    missed
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if self.pinned {
            for m in &self.members {
                if !Arc::ptr_eq(&m.source, &self.shared.vacant) {
                    m.source.readers.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(r) = &self.ready {
            // The next cursor to claim the list visits every member first (and so clears the
            // bits this one left set).
            self.shared.ready_lists[r.list].lock().clear();
            self.shared
                .claimed
                .fetch_and(!(1 << r.list), Ordering::Release);
        }
        let Some(shard) = self.held else {
            return;
        };
        // What it held may go now.
        self.shared.fruitless_at.store(u64::MAX, Ordering::Release);
        // Writers of the shard evict again, and those waiting go on. The bit goes first: a
        // source created from here on starts free; one created before is in the map by the
        // time the walk below reaches its part of it.
        let bit = 1u64 << shard.index;
        let _ = self
            .shared
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                let (of, mask) = held_shards(h);
                Some(pack_held(of, mask & !bit))
            });
        for e in self.shared.sources.iter() {
            if shard.has(e.value().ordinal) {
                e.value().gate.store(u64::MAX, Ordering::Release);
            }
        }
        self.shared.room.notify_waiters();
    }
}

/// Counts a waiting reader for as long as it lives, so publishers know to notify.
pub(super) struct WaitGuard<'a>(&'a AtomicUsize);

impl<'a> WaitGuard<'a> {
    pub(super) fn new(count: &'a AtomicUsize) -> Self {
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

#[cfg(test)]
mod tests {
    use crate::entry::Fields;
    use crate::envelope::Envelope;
    use crate::router::ring::MAX_KEYS;
    use crate::{Delivery, Filter, Router, RouterConfig, Selector, Start};

    fn step(i: usize) -> Envelope {
        let mut e = Envelope::new("hostile", format!("line {i}"));
        e.step = Some(format!("s{i}").into());
        e
    }

    fn logs(out: &[Delivery]) -> Vec<String> {
        out.iter()
            .filter_map(|d| match d {
                Delivery::Log(e) => Some(String::from_utf8_lossy(e.message()).into_owned()),
                Delivery::Missed(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_producer_with_endless_kinds_gets_a_bounded_key_table_and_filters_still_hold() {
        let r = Router::new(RouterConfig {
            ring_max_entries: 4000,
            ..RouterConfig::default()
        });
        let past = |i: usize| Filter {
            step: Some(format!("s{i}")),
            ..Filter::default()
        };
        let mut live = r
            .subscribe(Selector::Source("hostile".into()), past(3500), Start::Live)
            .unwrap();
        r.publish((0..3000).map(step).collect()).unwrap();
        let keys = r
            .shared
            .sources
            .get("hostile")
            .unwrap()
            .ring
            .lock()
            .keys
            .len();
        assert_eq!(keys, MAX_KEYS + 1, "the table stops growing");
        // Behind the cap, a filter still sees only its own lines: from memory, backfilled, live.
        let recent = r.recent("hostile", 100, &past(2000)).unwrap();
        assert_eq!(recent.len(), 1);
        let mut back = r
            .subscribe(
                Selector::Source("hostile".into()),
                past(2500),
                Start::Back(5),
            )
            .unwrap();
        let mut out = Vec::new();
        back.poll_into(&mut out, 10_000);
        assert_eq!(logs(&out), ["line 2500"]);
        r.publish((3000..3600).map(step).collect()).unwrap();
        let mut out = Vec::new();
        while live.poll_into(&mut out, 10_000) > 0 {}
        assert_eq!(logs(&out), ["line 3500"]);
        assert_eq!(live.missed(), 0, "nothing was overwritten");
        // Overrun: 8,000 more lines through a 4,000-entry ring. A reader of everything is told
        // exactly; a filtered one is told at least what it lost (line 5000) and at most every
        // line overwritten: the kinds of the mixed key's lost entries are gone.
        let mut all = r
            .subscribe(
                Selector::Source("hostile".into()),
                Filter::default(),
                Start::Live,
            )
            .unwrap();
        let mut one = r
            .subscribe(Selector::Source("hostile".into()), past(5000), Start::Live)
            .unwrap();
        r.publish((3600..11_600).map(step).collect()).unwrap();
        let mut out = Vec::new();
        while all.poll_into(&mut out, 10_000) > 0 {}
        assert_eq!((all.missed(), all.delivered()), (4000, 4000));
        let mut out = Vec::new();
        while one.poll_into(&mut out, 10_000) > 0 {}
        assert!(logs(&out).is_empty());
        assert!((1..=4000).contains(&one.missed()), "{}", one.missed());
        drop(back);
    }
}
