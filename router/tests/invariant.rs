//! The router's invariant (SPEC §3): for every cursor,
//! `delivered + reported_missed == published matching its filter` since its start, and what
//! it delivers comes in `seq` order per source, with no duplicate.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sluice_router::{
    Channel, Delivery, Envelope, Fields, Filter, Router, RouterConfig, Selector, Start,
};

const SOURCES: [&str; 3] = ["a", "b", "cf/doppler"];
/// (origin, channel, step, instance) of the envelopes published.
const KINDS: [(&str, Channel, Option<&str>, &str); 5] = [
    ("APP/PROC/WEB", Channel::Out, None, "0"),
    ("APP/PROC/WEB", Channel::Err, None, "0"),
    ("RTR", Channel::Out, None, "0"),
    ("STG", Channel::Out, Some("build"), "0"),
    ("APP/PROC/WEB", Channel::Out, None, "1"),
];

fn filters() -> Vec<Filter> {
    vec![
        Filter::default(),
        Filter {
            origins: vec!["APP".into()],
            ..Filter::default()
        },
        Filter {
            channel: Some(Channel::Err),
            ..Filter::default()
        },
        Filter {
            origins: vec!["RTR".into()],
            channel: Some(Channel::Out),
            ..Filter::default()
        },
        Filter {
            step: Some("build".into()),
            ..Filter::default()
        },
        Filter {
            instances: vec!["1".into()],
            ..Filter::default()
        },
        Filter {
            origins: vec!["RTR".into(), "STG".into()],
            ..Filter::default()
        },
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        source: usize,
        kinds: Vec<usize>,
    },
    Subscribe {
        sel: Sel,
        filter: usize,
        start: StartOp,
    },
    Read {
        cursor: usize,
        max: usize,
    },
}

#[derive(Debug, Clone)]
enum Sel {
    One(usize),
    Two(usize, usize),
    All,
}

#[derive(Debug, Clone)]
enum StartOp {
    Live,
    Back(usize),
    /// Resume after the entry this many places from the newest retained one.
    AfterRetained(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, prop::collection::vec(0..KINDS.len(), 1..12))
            .prop_map(|(source, kinds)| Op::Publish { source, kinds }),
        1 => (
            prop_oneof![
                (0..3usize).prop_map(Sel::One),
                (0..3usize, 0..3usize).prop_map(|(a, b)| Sel::Two(a, b)),
                Just(Sel::All)
            ],
            0..7usize,
            prop_oneof![
                Just(StartOp::Live),
                (0..15usize).prop_map(StartOp::Back),
                (0..15usize).prop_map(StartOp::AfterRetained)
            ]
        )
            .prop_map(|(sel, filter, start)| Op::Subscribe { sel, filter, start }),
        3 => (0..8usize, 1..20usize).prop_map(|(cursor, max)| Op::Read { cursor, max }),
    ]
}

/// What the test itself knows, independent of the router.
struct Model {
    cap: usize,
    /// Per source, the kind of every envelope published, index = seq - 1.
    published: BTreeMap<usize, Vec<usize>>,
}

impl Model {
    fn retained(&self, source: usize) -> std::ops::Range<u64> {
        let n = self.published.get(&source).map_or(0, Vec::len) as u64;
        (n.saturating_sub(self.cap as u64) + 1)..(n + 1)
    }

    fn matches(filter: &Filter, kind: usize) -> bool {
        let (origin, channel, step, instance) = KINDS[kind];
        let mut e = Envelope::new("x", "");
        e.instance_id = instance.into();
        e.origin = origin.into();
        e.channel = channel;
        e.step = step.map(Into::into);
        filter.matches(&e)
    }

    /// The first seq a new cursor on `source` is owed, per the start it was given.
    fn start_seq(&self, source: usize, filter: &Filter, start: &StartOp) -> u64 {
        let kinds = self.published.get(&source).cloned().unwrap_or_default();
        let retained = self.retained(source);
        match *start {
            StartOp::Live => retained.end,
            StartOp::Back(n) => {
                let hits: Vec<u64> = retained
                    .clone()
                    .filter(|&s| Self::matches(filter, kinds[(s - 1) as usize]))
                    .collect();
                if hits.len() >= n {
                    hits[hits.len() - n..]
                        .first()
                        .copied()
                        .unwrap_or(retained.end)
                } else {
                    retained.start
                }
            }
            StartOp::AfterRetained(k) => {
                let len = retained.end - retained.start;
                retained.end - (k as u64).min(len)
            }
        }
    }
}

struct Tracked {
    cursor: sluice_router::Cursor,
    filter: Filter,
    /// Per source, the first seq owed; `None` for sources that appear after a firehose opens.
    owed_from: BTreeMap<usize, u64>,
    firehose: bool,
    got: Vec<Delivery>,
}

fn source_index(id: &str) -> usize {
    SOURCES.iter().position(|s| *s == id).unwrap()
}

fn check(cap: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let router = Router::new(RouterConfig {
        ring_max_entries: cap,
        ..RouterConfig::default()
    });
    let mut model = Model {
        cap,
        published: BTreeMap::new(),
    };
    let mut cursors: Vec<Tracked> = Vec::new();
    let filters = filters();
    for op in ops {
        match op {
            Op::Publish { source, kinds } => {
                let batch = kinds
                    .iter()
                    .map(|&k| {
                        let (origin, channel, step, instance) = KINDS[k];
                        let mut e = Envelope::new(SOURCES[source], "m");
                        e.instance_id = instance.into();
                        e.origin = origin.into();
                        e.channel = channel;
                        e.step = step.map(Into::into);
                        e
                    })
                    .collect();
                router.publish(batch).unwrap();
                model.published.entry(source).or_default().extend(kinds);
                let stats = router.source_stats(SOURCES[source]).unwrap();
                prop_assert!(stats.retained <= cap);
            }
            Op::Subscribe { sel, filter, start } => {
                let filter = filters[filter].clone();
                let (selector, members, firehose) = match sel {
                    Sel::One(a) => (Selector::Source(SOURCES[a].into()), vec![a], false),
                    Sel::Two(a, b) => {
                        let set: BTreeSet<usize> = [a, b].into();
                        (
                            Selector::Sources(vec![SOURCES[a].into(), SOURCES[b].into()]),
                            set.into_iter().collect(),
                            false,
                        )
                    }
                    // The firehose starts where asked in the sources that exist now; the model
                    // counts a source as existing once published to or subscribed to.
                    Sel::All => (Selector::All, existing(&router), true),
                };
                // Resuming after a seq is per source: other selectors start live instead.
                let start = match (start, &sel) {
                    (StartOp::AfterRetained(k), Sel::One(_)) => StartOp::AfterRetained(k),
                    (StartOp::AfterRetained(_), _) => StartOp::Live,
                    (other, _) => other,
                };
                let owed_from: BTreeMap<usize, u64> = members
                    .iter()
                    .map(|&s| (s, model.start_seq(s, &filter, &start)))
                    .collect();
                let router_start = match start {
                    StartOp::Live => Start::Live,
                    StartOp::Back(n) => Start::Back(n),
                    StartOp::AfterRetained(_) => Start::AfterSeq(owed_from[&members[0]] - 1),
                };
                let cursor = router
                    .subscribe(selector, filter.clone(), router_start)
                    .unwrap();
                cursors.push(Tracked {
                    cursor,
                    filter,
                    owed_from,
                    firehose,
                    got: Vec::new(),
                });
            }
            Op::Read { cursor, max } => {
                if let Some(t) = cursors.get_mut(cursor) {
                    t.cursor.poll_into(&mut t.got, max);
                }
            }
        }
    }
    for (i, t) in cursors.iter_mut().enumerate() {
        while t.cursor.poll_into(&mut t.got, 7) > 0 {}
        // Owed: per source, what matches from its start on.
        let mut owed = 0u64;
        for (&s, kinds) in &model.published {
            let from = match t.owed_from.get(&s) {
                Some(&from) => from,
                None if t.firehose => 1,
                None => continue,
            };
            owed += kinds
                .iter()
                .enumerate()
                .filter(|(idx, k)| *idx as u64 + 1 >= from && Model::matches(&t.filter, **k))
                .count() as u64;
        }
        let mut delivered = 0u64;
        let mut missed = 0u64;
        let mut last: BTreeMap<usize, u64> = BTreeMap::new();
        for d in &t.got {
            match d {
                Delivery::Log(e) => {
                    let s = source_index(e.source_id());
                    prop_assert!(
                        t.filter.matches(e),
                        "cursor {i} got a line its filter refuses"
                    );
                    let prev = last.insert(s, e.seq()).unwrap_or(0);
                    prop_assert!(e.seq() > prev, "cursor {i}: seq {} after {}", e.seq(), prev);
                    delivered += 1;
                }
                Delivery::Missed(n) => {
                    let s = source_index(&n.source_id);
                    prop_assert!(n.count > 0);
                    let prev = last.insert(s, n.last_missed_seq).unwrap_or(0);
                    prop_assert!(n.last_missed_seq > prev);
                    missed += n.count;
                }
            }
        }
        prop_assert_eq!(delivered, t.cursor.delivered());
        prop_assert_eq!(missed, t.cursor.missed());
        prop_assert_eq!(
            delivered + missed,
            owed,
            "cursor {}: delivered {} + missed {} != owed {}",
            i,
            delivered,
            missed,
            owed
        );
    }
    Ok(())
}

fn existing(router: &Router) -> Vec<usize> {
    router
        .sources()
        .iter()
        .map(|s| source_index(&s.source_id))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivered_plus_missed_equals_published_matching(
        cap in 1usize..24,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        check(cap, ops)?;
    }
}
