//! One source's ring: entries in `seq` order, evicted from the front, with per-key counts
//! of what was published and evicted (for exact loss under a filter).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::entry::{Entry, Meta};
use crate::envelope::{Channel, Envelope};

use super::RouterConfig;

#[derive(Debug)]
pub(super) struct Ring {
    pub(super) slots: VecDeque<Slot>,
    /// `seq` of `slots[0]`; equals `next_seq` when the ring is empty.
    pub(super) first_seq: u64,
    pub(super) next_seq: u64,
    pub(super) bytes: usize,
    /// Distinct `(origin, channel, step, instance)` seen, with their counts; see the module docs.
    pub(super) keys: Vec<Key>,
    /// Index of the key the previous envelope had: consecutive lines usually share it.
    pub(super) last_key: usize,
    pub(super) max_entries: usize,
    pub(super) max_bytes: usize,
    /// When its entries arrived, for the global budget (which evicts in arrival order, not by
    /// the timestamps producers chose): `(seq, ns)` where a run of entries arriving together
    /// began, one per [`ARRIVAL_GRAIN_NS`] at most; the first covers `first_seq`.
    arrivals: VecDeque<(u64, i64)>,
    /// When the newest mark was made, and the seq of the second mark (`u64::MAX`: none): so
    /// that a push or an eviction looks at `arrivals` only when a mark is made or dropped.
    last_arrival: i64,
    next_mark: u64,
    /// Listed for the global budget's eviction (`Shared::to_evict`, then its queue) since it
    /// last gained an entry: publishers list a ring once, when this is false.
    pub(super) queued: bool,
    /// Forgotten (`Source::retired` mirrors it for readers): a publisher that finds this set
    /// under the lock looks the id up again.
    pub(super) retired: bool,
    /// When a line was last pushed (or the ring was made), in ns.
    pub(super) last_active: i64,
}

/// How finely a ring remembers when its entries arrived: entries within this of the previous
/// mark share it.
const ARRIVAL_GRAIN_NS: i64 = 250_000_000;

/// What an arrival mark costs against the budget (charged to the entry that makes one; a
/// ring's first is part of the ring).
const ARRIVAL_MARK_BYTES: usize = 16;

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) entry: Entry,
    pub(super) key: u32,
    pub(super) size: u32,
}

/// Most distinct keys one ring keeps. Producers choose origins, steps and instances, so the
/// number of combinations is theirs; past this, new combinations share one mixed key, whose
/// entries readers check one by one (see [`Key::mixed`]).
pub(super) const MAX_KEYS: usize = 1024;

#[derive(Debug)]
pub(super) struct Key {
    /// The key of every combination past [`MAX_KEYS`]: its fields are empty, a filter is
    /// checked against each of its entries, and for loss counting every entry of it counts as
    /// matching (an entry that was never seen has no kind left to check), so a loss among them
    /// is reported as an upper bound rather than missed.
    pub(super) mixed: bool,
    pub(super) origin: Box<str>,
    pub(super) channel: Channel,
    pub(super) step: Option<Box<str>>,
    pub(super) instance: Box<str>,
    pub(super) published: u64,
    pub(super) evicted: u64,
    /// The fields of the key's latest entry: the next entry with the same fields (tags
    /// included) points at it too. Kept inline: every publish looks at it.
    pub(super) meta: Option<Arc<Meta>>,
    /// The metas before it, most recent first, so that lines whose tags alternate (two
    /// hosts' structured data interleaved) still share theirs.
    pub(super) older: Vec<Arc<Meta>>,
}

/// Most metas a key keeps to share: [`Key::meta`] and [`Key::older`].
const METAS_PER_KEY: usize = 4;

/// What [`Ring::admit`] found for an envelope: its key, the meta its entry will point at, and
/// what holding it costs (a new meta's bytes included).
#[derive(Debug)]
pub(super) struct Admit {
    key: usize,
    meta: Arc<Meta>,
    pub(super) size: usize,
}

impl Ring {
    pub(super) fn new(config: &RouterConfig, resumed_after: u64) -> Ring {
        Ring {
            slots: VecDeque::new(),
            first_seq: resumed_after + 1,
            next_seq: resumed_after + 1,
            bytes: 0,
            keys: Vec::new(),
            last_key: 0,
            max_entries: config.ring_max_entries.max(1),
            max_bytes: config.ring_max_bytes.max(1),
            arrivals: VecDeque::new(),
            last_arrival: 0,
            next_mark: u64::MAX,
            queued: false,
            retired: false,
            last_active: crate::envelope::now_ns(),
        }
    }

    #[inline]
    pub(super) fn key_of(&mut self, env: &Envelope) -> usize {
        let same = |k: &Key| {
            !k.mixed
                && k.channel == env.channel
                && *k.origin == *env.origin
                && k.step.as_deref() == env.step.as_deref()
                && *k.instance == *env.instance_id
        };
        if self.keys.get(self.last_key).is_some_and(same) {
            return self.last_key;
        }
        let idx = match self.keys.iter().position(same) {
            Some(i) => i,
            None if self.keys.len() < MAX_KEYS => {
                if self.keys.len() == self.keys.capacity() && self.keys.len() < 4 {
                    // Most sources have one to three keys: a first growth to four (~450
                    // bytes) was a third of what a quiet source costs outside the budget.
                    self.keys.reserve_exact(1);
                }
                self.keys.push(Key {
                    mixed: false,
                    origin: env.origin.as_str().into(),
                    channel: env.channel,
                    step: env.step.as_deref().map(Into::into),
                    instance: env.instance_id.as_str().into(),
                    published: 0,
                    evicted: 0,
                    meta: None,
                    older: Vec::new(),
                });
                self.keys.len() - 1
            }
            None => match self.keys.iter().position(|k| k.mixed) {
                Some(i) => i,
                None => {
                    self.keys.push(Key {
                        mixed: true,
                        origin: "".into(),
                        channel: Channel::Out,
                        step: None,
                        instance: "".into(),
                        published: 0,
                        evicted: 0,
                        meta: None,
                        older: Vec::new(),
                    });
                    self.keys.len() - 1
                }
            },
        };
        self.last_key = idx;
        idx
    }

    /// Evicts from the front until an entry of `size` bytes fits. Returns the bytes freed, and
    /// whether it fits: not when eviction would remove entries from `gate` on, unless
    /// `overshoot` lets the ring grow past its limits instead.
    #[inline]
    pub(super) fn make_room(&mut self, size: usize, gate: u64, overshoot: bool) -> (usize, bool) {
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

    /// Notes that what is pushed next arrived at `now` (ns): a new mark if the last one is
    /// older than [`ARRIVAL_GRAIN_NS`] or the ring is empty. Returns the bytes it costs, to be
    /// added to the next entry's size.
    #[inline]
    pub(super) fn arriving(&mut self, now: i64) -> usize {
        if !self.arrivals.is_empty() && now.saturating_sub(self.last_arrival) < ARRIVAL_GRAIN_NS {
            return 0;
        }
        self.last_arrival = now;
        let mark = (self.next_seq, now);
        if self.slots.is_empty() {
            // An empty ring's marks are all behind it (one is left): a ring's first mark is
            // part of the ring, like its other fields.
            self.arrivals.clear();
            self.arrivals.push_back(mark);
            return 0;
        }
        self.arrivals.push_back(mark);
        if self.arrivals.len() == 2 {
            self.next_mark = mark.0;
        }
        ARRIVAL_MARK_BYTES
    }

    /// Finds `env`'s key and the meta its entry shares (a new one when the key's latest entry
    /// had other fields), and what holding it costs.
    #[inline]
    pub(super) fn admit(&mut self, env: &Envelope) -> Admit {
        let size = Entry::size_bytes(env.message.len());
        if let Some(meta) = self.keys.get(self.last_key).and_then(|k| k.meta.as_ref())
            && meta.describes(env)
        {
            return Admit {
                key: self.last_key,
                meta: meta.clone(),
                size,
            };
        }
        let key = self.key_of(env);
        let k = &self.keys[key];
        if let Some(meta) = k.meta.iter().chain(&k.older).find(|m| m.describes(env)) {
            return Admit {
                key,
                meta: meta.clone(),
                size,
            };
        }
        let meta = Arc::new(Meta::of(env));
        Admit {
            key,
            size: size + meta.size_bytes(),
            meta,
        }
    }

    /// Appends `env` as [`Ring::admit`] found it (after [`Ring::make_room`]), assigning its
    /// `seq`.
    #[inline]
    pub(super) fn push(&mut self, env: &Envelope, admit: Admit) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = &mut self.keys[admit.key];
        key.published += 1;
        if !key
            .meta
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &admit.meta))
        {
            // Another meta becomes the latest: the one it replaces goes first among the
            // older (the oldest out), and this one leaves them if it was there.
            key.older.retain(|m| !Arc::ptr_eq(m, &admit.meta));
            if let Some(previous) = key.meta.replace(admit.meta.clone()) {
                key.older.insert(0, previous);
                key.older.truncate(METAS_PER_KEY - 1);
            }
        }
        self.slots.push_back(Slot {
            entry: Entry::new(admit.meta, seq, env.timestamp, &env.message),
            key: admit.key as u32,
            size: admit.size as u32,
        });
        self.bytes += admit.size;
    }

    /// Whether the global budget's eviction must be told of this ring now: it has entries and
    /// is not queued yet (from here on it is, until eviction finds it empty).
    #[inline]
    pub(super) fn enters_queue(&mut self) -> bool {
        if self.queued || self.slots.is_empty() {
            return false;
        }
        self.queued = true;
        true
    }

    /// When the oldest entry arrived (to within [`ARRIVAL_GRAIN_NS`]).
    pub(super) fn oldest_arrival(&self) -> Option<i64> {
        self.slots.front()?;
        self.arrivals.front().map(|&(_, at)| at)
    }

    #[inline]
    pub(super) fn evict_front(&mut self) -> usize {
        let Some(slot) = self.slots.pop_front() else {
            return 0;
        };
        self.keys[slot.key as usize].evicted += 1;
        self.first_seq += 1;
        // The first mark covers `first_seq`: drop it once the next one does.
        while self.next_mark <= self.first_seq {
            self.arrivals.pop_front();
            self.next_mark = self.arrivals.get(1).map_or(u64::MAX, |&(seq, _)| seq);
        }
        self.bytes -= slot.size as usize;
        slot.size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow source's every line arrives on its own: its marks go with the lines they
    /// cover, so they never outnumber what the ring holds by more than one.
    #[test]
    fn arrival_marks_leave_with_their_lines() {
        let config = RouterConfig {
            ring_max_entries: 10,
            ..RouterConfig::default()
        };
        let mut ring = Ring::new(&config, 0);
        let mut charged = 0;
        for i in 0..1000i64 {
            let env = Envelope::new("slow", format!("line {i}"));
            let admit = ring.admit(&env);
            let (_, fits) = ring.make_room(admit.size, u64::MAX, false);
            assert!(fits);
            charged += ring.arriving(i * 2 * ARRIVAL_GRAIN_NS);
            ring.push(&env, admit);
            assert!(ring.arrivals.len() <= ring.slots.len() + 1);
            // The oldest line's mark: when it arrived.
            let first = (ring.first_seq - 1) as i64;
            assert_eq!(ring.oldest_arrival(), Some(first * 2 * ARRIVAL_GRAIN_NS));
        }
        assert_eq!(
            charged,
            999 * ARRIVAL_MARK_BYTES,
            "all but the ring's first"
        );
        // Within the grain, lines share a mark.
        let before = ring.arrivals.len();
        for k in 0..5 {
            let env = Envelope::new("slow", "burst".to_owned());
            let admit = ring.admit(&env);
            ring.make_room(admit.size, u64::MAX, false);
            let at = 2000 * 2 * ARRIVAL_GRAIN_NS + k;
            let cost = if k == 0 { ARRIVAL_MARK_BYTES } else { 0 };
            assert_eq!(ring.arriving(at), cost);
            ring.push(&env, admit);
        }
        assert!(ring.arrivals.len() <= before + 1);
    }
}
