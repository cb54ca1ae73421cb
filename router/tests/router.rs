//! Behaviour of the router as a reader sees it: starts, filters, losses, the firehose.

use sluice_router::{
    Channel, Delivery, Entry, Envelope, Fields, Filter, Meta, Router, RouterConfig, Selector,
    Shard, Start,
};

fn router(entries: usize) -> Router {
    Router::new(RouterConfig {
        ring_max_entries: entries,
        ..RouterConfig::default()
    })
}

fn line(source: &str, origin: &str, channel: Channel, msg: &str) -> Envelope {
    let mut e = Envelope::new(source, msg.to_owned());
    e.origin = origin.into();
    e.channel = channel;
    e
}

fn publish(r: &Router, source: &str, n: usize) {
    let batch = (0..n)
        .map(|i| Envelope::new(source, format!("line {i}")))
        .collect();
    r.publish(batch).unwrap();
}

fn drain(c: &mut sluice_router::Cursor) -> Vec<Delivery> {
    let mut out = Vec::new();
    while c.poll_into(&mut out, 1000) > 0 {}
    out
}

fn seqs(d: &[Delivery]) -> Vec<u64> {
    d.iter()
        .filter_map(|d| match d {
            Delivery::Log(e) => Some(e.seq()),
            Delivery::Missed(_) => None,
        })
        .collect()
}

#[test]
fn seqs_start_at_one_per_source_and_have_no_gaps() {
    let r = router(100);
    publish(&r, "a", 3);
    publish(&r, "b", 2);
    publish(&r, "a", 2);
    let got = r.recent("a", 100, &Filter::default()).unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(got.iter().all(|e| e.timestamp() > 0), "stamped on receipt");
    let b = r.recent("b", 100, &Filter::default()).unwrap();
    assert_eq!(b.iter().map(|e| e.seq()).collect::<Vec<_>>(), [1, 2]);
    assert!(r.recent("nobody", 10, &Filter::default()).is_none());
}

/// Storage that says `old` had seqs up to 41 before this start.
#[derive(Debug)]
struct Stored;

impl sluice_router::History for Stored {
    fn last_seq(&self, source_id: &str) -> Result<u64, String> {
        match source_id {
            "old" => Ok(41),
            "unreadable" => Err("the disk said no".into()),
            _ => Ok(0),
        }
    }
}

#[test]
fn a_source_in_storage_continues_its_seqs_and_readers_of_older_seqs_are_not_told_of_a_loss() {
    let r = Router::with_history(RouterConfig::default(), Some(std::sync::Arc::new(Stored)));
    let mut firehose = r
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    let mut resumed = r
        .subscribe(
            Selector::Source("old".into()),
            Filter::default(),
            Start::AfterSeq(30),
        )
        .unwrap();
    publish(&r, "old", 2);
    publish(&r, "new", 1);
    let stats = r.source_stats("old").unwrap();
    assert_eq!((stats.published, stats.resumed_after), (43, 41));
    assert_eq!(stats.oldest_seq, Some(42));
    // Seqs 31..=41 are in storage, not lost: the ring reader gets what it holds, no notice.
    let got = drain(&mut resumed);
    assert_eq!(seqs(&got), [42, 43]);
    assert_eq!(got.len(), 2, "{got:?}");
    let got = drain(&mut firehose);
    assert_eq!(got.len(), 3, "{got:?}");
    let new = r.source_stats("new").unwrap();
    assert_eq!((new.published, new.resumed_after), (1, 0));
}

#[test]
fn a_batch_with_one_invalid_id_is_refused_whole() {
    let r = router(100);
    let err = r
        .publish(vec![Envelope::new("ok", "x"), Envelope::new("not ok", "y")])
        .unwrap_err();
    assert!(err.to_string().starts_with("invalid source_id \"not ok\""));
    assert!(r.recent("ok", 10, &Filter::default()).is_none());
}

#[test]
fn past_max_sources_a_batch_that_would_create_one_is_refused_whole_and_the_rest_go_on() {
    let r = Router::new(RouterConfig {
        max_sources: 3,
        ..RouterConfig::default()
    });
    publish(&r, "a", 1);
    publish(&r, "b", 1);
    // Lines of a held source in front of two new ones: one more fits, the second does not.
    let err = r
        .publish(vec![
            Envelope::new("a", "held"),
            Envelope::new("c", "new"),
            Envelope::new("d", "one too many"),
        ])
        .unwrap_err();
    assert_eq!(err.reason(), "too_many_sources");
    assert!(
        err.to_string().starts_with(
            "new source \"d\" refused: sluice holds 3 sources, its limit (router.max_sources)"
        ),
        "{err}"
    );
    assert_eq!(
        r.source_stats("a").unwrap().published,
        1,
        "nothing published"
    );
    assert_eq!(r.source_stats("c").unwrap().published, 0, "c fit, empty");
    assert!(r.source_stats("d").is_none());
    // The sources held go on; a new one is refused to every way in.
    publish(&r, "a", 2);
    publish(&r, "c", 1);
    assert_eq!(r.source_stats("a").unwrap().published, 3);
    assert_eq!(
        r.publish(vec![Envelope::new("e", "x")])
            .unwrap_err()
            .reason(),
        "too_many_sources"
    );
    assert_eq!(r.touch("e").unwrap_err().reason(), "too_many_sources");
    let sub = r.subscribe(Selector::Source("e".into()), Filter::default(), Start::Live);
    assert_eq!(sub.unwrap_err().reason(), "too_many_sources");
    let sub = r.subscribe(
        Selector::Sources(vec!["a".into(), "e".into()]),
        Filter::default(),
        Start::Live,
    );
    assert_eq!(sub.unwrap_err().reason(), "too_many_sources");
    assert_eq!(r.shard_of("e", 2), None);
    assert!(
        r.subscribe(Selector::Source("b".into()), Filter::default(), Start::Live)
            .is_ok()
    );
    // Sluice's own notices about a source are never refused.
    r.publish_notice(Envelope::notice("f", "about f")).unwrap();
    assert_eq!(r.source_stats("f").unwrap().published, 1);
    assert_eq!(r.source_ids().len(), 4);
}

/// Runs `each(t)` on `threads` threads at once, `t` from 0; the sum of what they return.
fn race(threads: usize, each: impl Fn(usize) -> usize + Sync) -> usize {
    std::thread::scope(|s| {
        let each = &each;
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || each(t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn max_sources_holds_exactly_under_racing_writers_of_new_sources() {
    const MAX: usize = 1000;
    let r = Router::new(RouterConfig {
        max_sources: MAX,
        ..RouterConfig::default()
    });
    // Eight writers, each sending batches of 50 new sources: every batch is taken whole or
    // refused whole, and never more than MAX sources exist.
    let taken = race(8, |t| {
        let mut taken = 0;
        for b in 0..10 {
            let batch = (0..50)
                .map(|i| Envelope::new(format!("w{t}-b{b}-s{i}"), "x"))
                .collect();
            match r.publish(batch) {
                Ok(n) => taken += n,
                Err(e) => assert_eq!(e.reason(), "too_many_sources"),
            }
        }
        taken
    });
    let ids = r.source_ids();
    assert!(ids.len() <= MAX, "{} sources", ids.len());
    assert!(
        ids.len() >= MAX - 50,
        "refused early: {} sources",
        ids.len()
    );
    assert_eq!(taken % 50, 0, "batches taken whole");
    let published: u64 = ids
        .iter()
        .map(|id| r.source_stats(id).unwrap().published)
        .sum();
    assert_eq!(published, taken as u64);
}

#[test]
fn live_back_and_after_seq_starts() {
    let r = router(100);
    publish(&r, "a", 10);
    let mut live = r
        .subscribe(Selector::Source("a".into()), Filter::default(), Start::Live)
        .unwrap();
    let mut back = r
        .subscribe(
            Selector::Source("a".into()),
            Filter::default(),
            Start::Back(3),
        )
        .unwrap();
    let mut after = r
        .subscribe(
            Selector::Source("a".into()),
            Filter::default(),
            Start::AfterSeq(6),
        )
        .unwrap();
    let mut all_back = r
        .subscribe(
            Selector::Source("a".into()),
            Filter::default(),
            Start::Back(1000),
        )
        .unwrap();
    publish(&r, "a", 2);
    assert_eq!(seqs(&drain(&mut live)), [11, 12]);
    assert_eq!(seqs(&drain(&mut back)), [8, 9, 10, 11, 12]);
    assert_eq!(seqs(&drain(&mut after)), [7, 8, 9, 10, 11, 12]);
    assert_eq!(seqs(&drain(&mut all_back)), (1..=12).collect::<Vec<_>>());
}

#[test]
fn an_overtaken_cursor_is_told_exactly_what_it_missed() {
    let r = router(10);
    let mut slow = r
        .subscribe(Selector::Source("a".into()), Filter::default(), Start::Live)
        .unwrap();
    publish(&r, "a", 4);
    let mut out = Vec::new();
    slow.poll_into(&mut out, 2);
    assert_eq!(seqs(&out), [1, 2]);
    publish(&r, "a", 30); // seqs 5..=34 published, ring holds 25..=34
    let rest = drain(&mut slow);
    let Delivery::Missed(notice) = &rest[0] else {
        panic!("first is the notice")
    };
    assert_eq!(notice.count, 22, "seqs 3..=24");
    assert_eq!(notice.last_missed_seq, 24);
    assert_eq!(seqs(&rest[1..]), (25..=34).collect::<Vec<_>>());
    assert_eq!(slow.delivered() + slow.missed(), 34);

    let env = rest[0].clone().into_entry("tail").to_envelope();
    assert_eq!(env.origin, "LGR");
    assert_eq!(env.channel, Channel::Err);
    assert_eq!(env.tags["missed"], "22");
    let since = &env.tags["since"];
    assert_eq!(
        String::from_utf8_lossy(&env.message),
        format!("sluice dropped 22 messages for this tail since {since}: consumer too slow")
    );
}

#[test]
fn losses_under_a_filter_count_only_matching_envelopes() {
    let r = router(4);
    let f = Filter {
        origins: vec!["RTR".into()],
        ..Filter::default()
    };
    let mut c = r
        .subscribe(Selector::Source("a".into()), f, Start::Live)
        .unwrap();
    // 3 RTR lines among 20, all overwritten but the last 4 entries.
    let batch: Vec<Envelope> = (0..20)
        .map(|i| {
            let origin = if i % 7 == 0 { "RTR" } else { "APP/PROC/WEB" };
            line("a", origin, Channel::Out, &format!("{i}"))
        })
        .collect();
    r.publish(batch).unwrap();
    let out = drain(&mut c);
    // i = 0, 7, 14 are RTR; the ring keeps i = 16..=19, so all three are lost.
    assert!(matches!(&out[..], [Delivery::Missed(n)] if n.count == 3));
    r.publish(vec![line("a", "RTR", Channel::Out, "late")])
        .unwrap();
    assert_eq!(seqs(&drain(&mut c)), [21]);
    assert_eq!((c.delivered(), c.missed()), (1, 3));
}

#[test]
fn filters_by_origin_prefix_channel_and_step() {
    let r = router(100);
    let mut step = line("a", "STG", Channel::Out, "staging");
    step.step = Some("build".into());
    r.publish(vec![
        line("a", "APP/PROC/WEB", Channel::Out, "1"),
        line("a", "APPX", Channel::Out, "2"),
        line("a", "APP", Channel::Err, "3"),
        line("a", "RTR", Channel::Out, "4"),
        step,
    ])
    .unwrap();
    let get = |f: Filter| {
        r.recent("a", 100, &f)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(e.message()).into_owned())
            .collect::<Vec<_>>()
    };
    let app = Filter {
        origins: vec!["APP".into()],
        ..Filter::default()
    };
    assert_eq!(get(app), ["1", "3"]);
    let err = Filter {
        channel: Some(Channel::Err),
        ..Filter::default()
    };
    assert_eq!(get(err), ["3"]);
    let build = Filter {
        step: Some("build".into()),
        ..Filter::default()
    };
    assert_eq!(get(build), ["staging"]);
    let either = Filter {
        origins: vec!["RTR".into(), "STG".into()],
        ..Filter::default()
    };
    assert_eq!(get(either), ["4", "staging"]);
    assert_eq!(r.recent("a", 2, &Filter::default()).unwrap().len(), 2);
}

#[test]
fn filters_by_instance_and_counts_an_instances_losses_exactly() {
    let r = router(4);
    let web = Filter {
        instances: vec!["1".into()],
        ..Filter::default()
    };
    let mut c = r
        .subscribe(Selector::Source("a".into()), web.clone(), Start::Live)
        .unwrap();
    // Instances 0, 1, 2 in turn: 20 lines, 7 of instance 1, all but the last 4 entries
    // overwritten before the cursor reads.
    let batch: Vec<Envelope> = (0..20)
        .map(|i| {
            let mut e = line("a", "APP/PROC/WEB", Channel::Out, &format!("{i}"));
            e.instance_id = (i % 3).to_string().into();
            e
        })
        .collect();
    r.publish(batch).unwrap();
    let out = drain(&mut c);
    // Kept: 16..=19, of which 16 and 19 are instance 1; lost: 1, 4, 7, 10, 13.
    assert!(
        matches!(&out[..], [Delivery::Missed(n), ..] if n.count == 5),
        "{out:?}"
    );
    assert_eq!(seqs(&out[1..]), [17, 20]);
    let recent: Vec<_> = r
        .recent("a", 100, &web)
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(e.message()).into_owned())
        .collect();
    assert_eq!(recent, ["16", "19"]);
}

#[test]
fn the_firehose_sees_sources_created_after_it() {
    let r = router(100);
    publish(&r, "old", 5);
    let mut fire = r
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    publish(&r, "old", 1);
    publish(&r, "new", 3);
    let out = drain(&mut fire);
    let mut got: Vec<(String, u64)> = out
        .iter()
        .map(|d| match d {
            Delivery::Log(e) => (e.source_id().to_string(), e.seq()),
            Delivery::Missed(_) => panic!("no loss"),
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("new".into(), 1),
            ("new".into(), 2),
            ("new".into(), 3),
            ("old".into(), 6)
        ]
    );
}

#[test]
fn several_sources_at_once() {
    let r = router(100);
    let mut c = r
        .subscribe(
            Selector::Sources(vec!["a".into(), "b".into(), "a".into()]),
            Filter::default(),
            Start::Live,
        )
        .unwrap();
    publish(&r, "a", 2);
    publish(&r, "b", 2);
    publish(&r, "c", 2);
    assert_eq!(drain(&mut c).len(), 4);
    assert!(
        r.subscribe(
            Selector::Sources(vec!["a b".into()]),
            Filter::default(),
            Start::Live
        )
        .is_err()
    );
}

#[test]
fn rings_are_bounded_by_bytes_and_by_the_global_budget() {
    let r = Router::new(RouterConfig {
        ring_max_entries: 1_000_000,
        ring_max_bytes: 64 * 1024,
        memory_budget_bytes: 256 * 1024,
        ..RouterConfig::default()
    });
    let big = "x".repeat(1000);
    for _ in 0..500 {
        r.publish(vec![Envelope::new("a", big.clone())]).unwrap();
    }
    let a = r.source_stats("a").unwrap();
    assert!(a.retained_bytes <= 64 * 1024, "{a:?}");
    assert!(a.retained < 64);
    assert_eq!(a.published, 500);
    for s in 0..20 {
        for _ in 0..100 {
            r.publish(vec![Envelope::new(format!("s{s}"), big.clone())])
                .unwrap();
        }
    }
    assert!(r.retained_bytes() <= 256 * 1024, "{}", r.retained_bytes());
    assert!(r.evicted_for_budget_total() > 0);
    let total: usize = r.sources().iter().map(|s| s.retained_bytes).sum();
    assert_eq!(
        total,
        r.retained_bytes(),
        "the running total matches the rings"
    );
    // The newest source keeps its newest lines.
    let newest = r.recent("s19", 1, &Filter::default()).unwrap();
    assert_eq!(newest[0].seq(), 100);
}

/// "Oldest" for the global budget is the order lines arrived in, not the timestamps producers
/// put on them: a backfill of last year's lines is not the first to go, and a producer whose
/// clock runs a century ahead does not keep its lines while everyone else loses theirs.
#[test]
fn the_budget_evicts_in_arrival_order_whatever_the_timestamps_say() {
    let big = "x".repeat(1000);
    let stamped = |source: &str, ts: i64| {
        let mut e = Envelope::new(source, big.clone());
        e.timestamp = ts;
        e
    };
    // A budget of two and a half batches of 100 such lines.
    let probe = Router::new(RouterConfig::default());
    probe
        .publish((0..100).map(|_| stamped("probe", 0)).collect())
        .unwrap();
    let r = Router::new(RouterConfig {
        ring_max_entries: 1_000_000,
        ring_max_bytes: 1 << 30,
        memory_budget_bytes: probe.retained_bytes() * 5 / 2,
        ..RouterConfig::default()
    });
    let year = 365 * 24 * 3600 * 1_000_000_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    // In this order: a clock a century ahead, the present, then last year's backfill. The
    // third takes the rings past the budget, and eviction frees three quarters of a batch.
    r.publish(
        (0..100)
            .map(|_| stamped("ahead", now + 100 * year))
            .collect(),
    )
    .unwrap();
    r.publish((0..100).map(|_| stamped("present", 0)).collect())
        .unwrap();
    r.publish((0..100).map(|_| stamped("backfill", now - year)).collect())
        .unwrap();
    assert!(r.evicted_for_budget_total() > 0);
    let kept = |s: &str| r.source_stats(s).unwrap().retained;
    // What arrived first went first.
    assert!(kept("ahead") < 100, "{}", kept("ahead"));
    assert_eq!(kept("present"), 100);
    assert_eq!(kept("backfill"), 100, "the last to arrive");
}

/// Eviction keeps its queue of rings between rounds: a ring emptied by the budget is queued
/// again when it gains a line, and goes first again once its lines are the oldest.
#[test]
fn a_ring_the_budget_emptied_is_evicted_again_when_its_lines_are_oldest() {
    let big = "x".repeat(1000);
    let lines = |source: &str, n: usize| -> Vec<Envelope> {
        (0..n).map(|_| Envelope::new(source, big.clone())).collect()
    };
    let probe = Router::new(RouterConfig::default());
    probe.publish(lines("probe", 100)).unwrap();
    let batch = probe.retained_bytes();
    let r = Router::new(RouterConfig {
        ring_max_entries: 1_000_000,
        ring_max_bytes: 1 << 30,
        memory_budget_bytes: batch * 5 / 2,
        ..RouterConfig::default()
    });
    for cycle in 0..5 {
        r.publish(lines("first", 100)).unwrap();
        for s in 0..10 {
            r.publish(lines(&format!("s{s}"), 30)).unwrap();
        }
        let first = r.source_stats("first").unwrap();
        assert_eq!(first.retained, 0, "cycle {cycle}: {first:?}");
        assert_eq!(first.published, 100 * (cycle + 1));
        assert!(
            r.retained_bytes() <= batch * 5 / 2,
            "{}",
            r.retained_bytes()
        );
        let total: usize = r.sources().iter().map(|s| s.retained_bytes).sum();
        assert_eq!(total, r.retained_bytes());
    }
}

#[tokio::test]
async fn a_waiting_cursor_wakes_on_publish() {
    let r = router(10_000);
    let mut c = r
        .subscribe(Selector::Source("a".into()), Filter::default(), Start::Live)
        .unwrap();
    let mut fire = r
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    let r2 = r.clone();
    let producer = tokio::spawn(async move {
        for i in 0..1000 {
            r2.publish(vec![Envelope::new("a", format!("{i}"))])
                .unwrap();
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 1000 {
        c.next_batch(&mut got, 64).await;
    }
    let mut fired = Vec::new();
    while fired.len() < 1000 {
        fire.next_batch(&mut fired, 64).await;
    }
    producer.await.unwrap();
    assert_eq!(seqs(&got), (1..=1000).collect::<Vec<_>>());
    assert_eq!(seqs(&fired), (1..=1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_wait_for_the_held_cursor_and_everyone_else_is_still_overwritten() {
    let r = router(8);
    let mut held = r.subscribe_held(Shard::ALL, Filter::default(), Start::Live);
    let mut tail = r
        .subscribe(Selector::Source("a".into()), Filter::default(), Start::Live)
        .unwrap();
    // A sender that cannot wait keeps what fits and is told how many that was.
    let batch = (0..20)
        .map(|i| Envelope::new("udp", format!("{i}")))
        .collect();
    assert_eq!(r.publish(batch).unwrap(), 8);
    // Sluice's own notices never wait and are never dropped.
    let mut notice = Envelope::new("udp", "a notice");
    notice.origin = sluice_router::envelope::ORIGIN_ROUTER.into();
    assert_eq!(r.publish_notice(notice).unwrap(), 1);
    assert_eq!(r.source_stats("udp").unwrap().retained, 9);

    // A sender that can wait loses nothing: 10,000 lines through a ring of 8.
    let r2 = r.clone();
    let producer = tokio::spawn(async move {
        let mut ranges = Vec::new();
        for chunk in 0..100 {
            let batch = (0..100)
                .map(|i| Envelope::new("a", format!("{}", chunk * 100 + i)))
                .collect();
            r2.publish_waiting(batch, Some(&mut ranges)).await.unwrap();
        }
        ranges
    });
    let mut got = Vec::new();
    while got.len() < 9 + 10_000 {
        held.next_batch(&mut got, 3).await;
    }
    let ranges = producer.await.unwrap();
    assert!(got.iter().all(|d| matches!(d, Delivery::Log(_))), "no loss");
    let a: Vec<u64> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Log(e) if e.source_id() == "a" => Some(e.seq()),
            _ => None,
        })
        .collect();
    assert_eq!(a, (1..=10_000).collect::<Vec<_>>());
    let covered: u64 = ranges.iter().map(|(_, f, l)| l - f + 1).sum();
    assert_eq!(covered, 10_000, "every seq reported once");
    assert!(r.waited_for_room_total() > 0);
    // The tail that never read was overwritten, and is told exactly how much.
    let seen = drain(&mut tail);
    let missed: u64 = seen
        .iter()
        .map(|d| match d {
            Delivery::Missed(m) => m.count,
            Delivery::Log(_) => 0,
        })
        .sum();
    assert_eq!(missed + seqs(&seen).len() as u64, 10_000);
    assert!(missed >= 10_000 - 8, "{missed}");

    // Without the held cursor, writers evict again.
    drop(held);
    let batch = (0..20)
        .map(|i| Envelope::new("udp", format!("{i}")))
        .collect();
    assert_eq!(r.publish(batch).unwrap(), 20);
}

/// While a writer waits for the held cursor, the router says so (readiness reads it), and
/// stops saying so once the cursor has read and the writer is through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_tells_how_many_writers_wait_for_the_held_cursor() {
    let r = router(4);
    let mut held = r.subscribe_held(Shard::ALL, Filter::default(), Start::Live);
    assert_eq!(r.publishers_waiting(), 0);
    let r2 = r.clone();
    let writer = tokio::spawn(async move {
        let batch = (0..10)
            .map(|i| Envelope::new("w", format!("{i}")))
            .collect();
        r2.publish_waiting(batch, None).await.unwrap()
    });
    // Poll (bounded) until the writer is parked on the full ring.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.publishers_waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never waited"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(r.publishers_waiting(), 1);
    let mut got = Vec::new();
    while got.len() < 10 {
        held.next_batch(&mut got, 16).await;
    }
    assert_eq!(writer.await.unwrap(), 10);
    assert_eq!(r.publishers_waiting(), 0);
}

#[test]
fn lines_whose_tags_alternate_share_their_metas() {
    let router = Router::new(RouterConfig::default());
    let line = |i: usize, hosts: usize| {
        let mut e = Envelope::new("app", format!("line {i:04}"));
        e.tags.insert("host".into(), format!("h{}", i % hosts));
        e
    };
    // Two hosts' lines interleaved: one meta each, not one per line.
    router
        .publish((0..1000).map(|i| line(i, 2)).collect())
        .unwrap();
    let lines = 1000 * Entry::size_bytes("line 0000".len());
    let meta = Meta::of(&line(0, 2)).size_bytes();
    assert_eq!(router.retained_bytes(), lines + 2 * meta);
    // More kinds than a key keeps in turn: each line has a meta of its own, and the budget
    // counts every one.
    let other = Router::new(RouterConfig::default());
    other
        .publish((0..1000).map(|i| line(i, 10)).collect())
        .unwrap();
    assert_eq!(other.retained_bytes(), 1000 * (Entry::size_bytes(9) + meta));
}

fn sources_of(out: &[Delivery]) -> std::collections::BTreeSet<String> {
    out.iter()
        .filter_map(|d| match d {
            Delivery::Log(e) => Some(e.source_id().to_owned()),
            Delivery::Missed(_) => None,
        })
        .collect()
}

/// Shard cursors split the firehose: every source, created before or after them, is read by
/// exactly one, the one `shard_of` names; `of` sources created one after another land in `of`
/// different shards.
#[test]
fn shards_split_every_source_between_them_once() {
    let r = router(64);
    let before: Vec<String> = (0..5).map(|i| format!("early-{i}")).collect();
    for id in &before {
        r.publish(vec![Envelope::new(id.as_str(), "one")]).unwrap();
    }
    let mut shards: Vec<_> = (0..3)
        .map(|index| {
            r.subscribe(
                Selector::Shard(Shard { index, of: 3 }),
                Filter::default(),
                Start::AfterSeq(0),
            )
            .unwrap()
        })
        .collect();
    let after: Vec<String> = (0..7).map(|i| format!("late-{i}")).collect();
    for id in &after {
        r.publish(vec![Envelope::new(id.as_str(), "one")]).unwrap();
    }
    let got: Vec<_> = shards.iter_mut().map(|c| sources_of(&drain(c))).collect();
    for id in before.iter().chain(&after) {
        let holders: Vec<usize> = (0..3).filter(|&i| got[i].contains(id)).collect();
        assert_eq!(holders, [r.shard_of(id, 3).unwrap()], "{id}");
    }
    // Round robin by creation: the 12 sources are 4 per shard.
    assert!(got.iter().all(|g| g.len() == 4), "{got:?}");
    assert_eq!(r.shard_of("not an id", 3), None);
}

/// Held shards: a writer waits only for the cursor of its own source's shard; once that cursor
/// is dropped, its sources (and new ones of its shard) are overwritten again while the other
/// shard still holds its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_shard_holds_only_its_own_sources() {
    let r = router(4);
    // Created first, so "zero" is in shard 0 and "one" in shard 1.
    r.touch("zero").unwrap();
    r.touch("one").unwrap();
    let mut s0 = r.subscribe_held(Shard { index: 0, of: 2 }, Filter::default(), Start::Live);
    let mut s1 = r.subscribe_held(Shard { index: 1, of: 2 }, Filter::default(), Start::Live);
    let lines = |id: &str, n: usize| -> Vec<Envelope> {
        (0..n).map(|i| Envelope::new(id, format!("{i}"))).collect()
    };
    // A full ring of shard 1 keeps what fits; shard 0 is not in the way.
    assert_eq!(r.publish(lines("one", 10)).unwrap(), 4);
    assert_eq!(r.publish(lines("zero", 10)).unwrap(), 4);
    // A waiting writer of "one" is let through by shard 1's reads alone.
    let r2 = r.clone();
    let writer = tokio::spawn(async move { r2.publish_waiting(lines("one", 100), None).await });
    let mut got = Vec::new();
    while got.len() < 104 {
        s1.next_batch(&mut got, 8).await;
    }
    writer.await.unwrap().unwrap();
    assert_eq!(sources_of(&got), ["one".to_owned()].into());
    assert_eq!(seqs(&got), (1..=104).collect::<Vec<_>>(), "nothing lost");
    // Shard 1 goes: its sources, old and new, evict again; shard 0 still holds "zero".
    drop(s1);
    assert_eq!(r.publish(lines("one", 10)).unwrap(), 10);
    r.touch("two").unwrap(); // created third: shard 0
    r.touch("three").unwrap(); // shard 1
    assert_eq!(r.shard_of("three", 2), Some(1));
    assert_eq!(r.publish(lines("three", 10)).unwrap(), 10);
    assert_eq!(r.publish(lines("two", 10)).unwrap(), 4);
    assert_eq!(r.publish(lines("zero", 10)).unwrap(), 0);
    let mut got = Vec::new();
    while s0.poll_into(&mut got, 100) > 0 {}
    assert_eq!(
        sources_of(&got),
        ["two".to_owned(), "zero".to_owned()].into()
    );
    assert!(got.iter().all(|d| matches!(d, Delivery::Log(_))), "no loss");
}

/// A shard cursor waiting for lines is woken by a publish to one of its sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_shard_cursor_is_woken_by_its_own_sources() {
    let r = router(64);
    r.touch("zero").unwrap();
    r.touch("one").unwrap();
    let mut s1 = r
        .subscribe(
            Selector::Shard(Shard { index: 1, of: 2 }),
            Filter::default(),
            Start::Live,
        )
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        s1.next_batch(&mut got, 10).await;
        got
    });
    tokio::task::yield_now().await;
    r.publish(vec![Envelope::new("zero", "not mine")]).unwrap();
    r.publish(vec![Envelope::new("one", "mine")]).unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(sources_of(&got), ["one".to_owned()].into());
}

/// Held shard cursors read by the sources published to (not by walking every source): four
/// producers that wait, 300 sources (a third created after the cursors) among 10,000 idle
/// ones, rings of 16. Every source's lines reach the cursor of its shard, all of them, in
/// order, nothing missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_shards_read_every_line_of_busy_sources_among_idle_ones() {
    const SHARDS: usize = 2;
    const BUSY: usize = 300;
    const LINES: u64 = 200;
    // Room for 10,000 idle sources made by readers (a tenth of max_sources may be).
    let r = Router::new(RouterConfig {
        ring_max_entries: 16,
        max_sources: 200_000,
        ..RouterConfig::default()
    });
    for i in 0..10_000 {
        r.touch(&format!("idle-{i}")).unwrap();
    }
    for s in 0..BUSY / 3 * 2 {
        r.touch(&format!("busy-{s}")).unwrap();
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..SHARDS)
        .map(|index| {
            let done = done.clone();
            let mut c =
                r.subscribe_held(Shard { index, of: SHARDS }, Filter::default(), Start::Live);
            tokio::spawn(async move {
                let mut got: std::collections::HashMap<String, Vec<u64>> = Default::default();
                let mut out = Vec::new();
                loop {
                    out.clear();
                    let wait = std::time::Duration::from_millis(100);
                    let read = tokio::time::timeout(wait, c.next_batch(&mut out, 64)).await;
                    if read.is_err() && done.load(std::sync::atomic::Ordering::SeqCst) {
                        break; // everything is published, and nothing is left to read
                    }
                    for d in &out {
                        match d {
                            Delivery::Log(e) => {
                                got.entry(e.source_id().to_owned())
                                    .or_default()
                                    .push(e.seq());
                            }
                            Delivery::Missed(m) => panic!("missed {m:?}"),
                        }
                    }
                }
                (index, got)
            })
        })
        .collect();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let r = r.clone();
            tokio::spawn(async move {
                for round in 0..LINES / 10 {
                    for s in (p..BUSY).step_by(4) {
                        let batch = (0..10)
                            .map(|i| {
                                Envelope::new(format!("busy-{s}"), format!("{}", round * 10 + i))
                            })
                            .collect();
                        r.publish_waiting(batch, None).await.unwrap();
                    }
                }
            })
        })
        .collect();
    // A source its cursor never visits holds its producer forever: fail instead of hanging.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for p in producers {
        tokio::time::timeout_at(deadline, p)
            .await
            .expect("a producer held by a source that was never read")
            .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = 0;
    for reader in readers {
        let (index, got) = reader.await.unwrap();
        for (id, seqs) in got {
            assert_eq!(r.shard_of(&id, SHARDS), Some(index), "{id}");
            assert_eq!(seqs, (1..=LINES).collect::<Vec<_>>(), "{id}");
            seen += 1;
        }
    }
    assert_eq!(seen, BUSY);
}

/// Cursors over every source read by the sources published to, as the persister's do: more of
/// them than there are ready lists (the rest look at every source), among 5,000 idle sources,
/// with sources created after them, and one whose list was left with sources listed and
/// taken over by a new cursor. Every one gets every line, in order, and no loss.
#[test]
fn firehoses_among_idle_sources_get_every_line() {
    let r = router(1000);
    for i in 0..5_000 {
        r.touch(&format!("idle-{i}")).unwrap();
    }
    publish(&r, "busy-0", 3);
    let open = || {
        r.subscribe(Selector::All, Filter::default(), Start::Live)
            .unwrap()
    };
    // 40 firehoses: the first 32 get a ready list, 8 walk.
    let mut fires: Vec<_> = (0..40).map(|_| open()).collect();
    // One that leaves its list with a source listed and never visited.
    let gone = fires.remove(0);
    publish(&r, "busy-0", 1);
    drop(gone);
    let mut late = open();
    let mut got: Vec<std::collections::BTreeMap<String, Vec<u64>>> =
        vec![Default::default(); fires.len() + 1];
    let mut read = |fires: &mut Vec<sluice_router::Cursor>, late: &mut sluice_router::Cursor| {
        for (k, c) in fires.iter_mut().chain(std::iter::once(late)).enumerate() {
            for d in drain(c) {
                match d {
                    Delivery::Log(e) => got[k]
                        .entry(e.source_id().to_owned())
                        .or_default()
                        .push(e.seq()),
                    Delivery::Missed(m) => panic!("missed {m:?}"),
                }
            }
        }
    };
    read(&mut fires, &mut late);
    for round in 0..5 {
        for s in 0..4 {
            publish(&r, &format!("busy-{s}"), 2 + round);
        }
        read(&mut fires, &mut late);
    }
    // busy-0: lines 1-3 before any cursor, 4 before the late one, then 20 more; the other
    // busy sources were created after every cursor, which read them from their first line.
    for (k, g) in got.iter().enumerate() {
        let first = if k == fires.len() { 5 } else { 4 };
        let mut expect = std::collections::BTreeMap::new();
        expect.insert("busy-0".to_owned(), (first..=24).collect::<Vec<u64>>());
        for s in 1..4 {
            expect.insert(format!("busy-{s}"), (1..=20).collect());
        }
        assert_eq!(g, &expect, "cursor {k}");
    }
}

/// Writers held by the memory budget (not by a full ring) behind a slow held cursor: fewer
/// entries fit the budget than eviction waits to see read after a round that freed nothing,
/// and still every line arrives, the writer finishes, and the rings stay within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_held_by_the_budget_go_on_as_the_held_cursor_reads() {
    let r = Router::new(RouterConfig {
        ring_max_entries: 1_000_000,
        ring_max_bytes: 1 << 30,
        memory_budget_bytes: 256 * 1024,
        ..RouterConfig::default()
    });
    let mut held = r.subscribe_held(Shard::ALL, Filter::default(), Start::Live);
    let big = "x".repeat(1000);
    let r2 = r.clone();
    let producer = tokio::spawn(async move {
        for b in 0..200 {
            let batch = (0..10)
                .map(|i| Envelope::new(format!("s{}", (b * 10 + i) % 40), big.clone()))
                .collect();
            r2.publish_waiting(batch, None).await.unwrap();
        }
    });
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while got.len() < 2000 {
        // Read only once the writer waits for room: each read finds the budget full of lines
        // not read yet.
        while r.publishers_waiting() == 0 && !producer.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never waited"
            );
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        tokio::time::timeout_at(deadline, held.next_batch(&mut out, 16))
            .await
            .expect("every line reaches the held cursor");
        assert!(r.retained_bytes() <= 256 * 1024 + 256 * 1024 / 10 + 16 * 1100);
        got.extend(out);
    }
    tokio::time::timeout_at(deadline, producer)
        .await
        .expect("the writer finishes")
        .unwrap();
    assert!(got.iter().all(|d| matches!(d, Delivery::Log(_))), "no loss");
    assert!(r.evicted_for_budget_total() > 0);
}

#[test]
fn readers_wait_for_at_most_a_tenth_of_max_sources_each_until_its_first_line() {
    let r = Router::new(RouterConfig {
        max_sources: 20,
        ..RouterConfig::default()
    });
    let tail = |id: &str| r.subscribe(Selector::Source(id.into()), Filter::default(), Start::Live);
    let mut a = tail("a").unwrap();
    let _b = r.touch("b").unwrap();
    assert_eq!(r.awaited_sources(), (2, 2));
    let err = tail("c").unwrap_err();
    assert_eq!(err.reason(), "too_many_sources");
    assert!(
        err.to_string().starts_with(
            "new source \"c\" refused: readers have opened as many sources that have no lines yet as they may (2,"
        ),
        "{err}"
    );
    assert!(r.source_stats("c").is_none(), "nothing made of it");
    // A completion's writer settles a source's shard as a producer, not as a reader.
    assert!(r.shard_of("done", 2).is_some());
    assert_eq!(r.awaited_sources(), (2, 2));
    // Sources held, and producers' new ones, are not held to it.
    assert!(tail("a").is_ok());
    publish(&r, "p", 1);
    // A's first line: a producer's source now, and room for another reader's.
    publish(&r, "a", 1);
    let mut out = Vec::new();
    assert_eq!(a.poll_into(&mut out, 10), 1);
    assert_eq!(r.awaited_sources(), (1, 2));
    assert!(tail("c").is_ok());
    assert_eq!(r.awaited_sources(), (2, 2));
    // Readers racing for the last places: never more than the most.
    let r2 = Router::new(RouterConfig {
        max_sources: 1000,
        ..RouterConfig::default()
    });
    let opened = race(8, |t| {
        (0..50)
            .filter(|i| r2.touch(&format!("t{t}-{i}")).is_ok())
            .count()
    });
    assert_eq!(opened, 100);
    assert_eq!(r2.awaited_sources(), (100, 100));
    assert_eq!(r2.source_count(), 100);
}

/// Storage as the tests below keep it: what a source's newest stored seq is.
#[derive(Debug, Default)]
struct Kept(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl sluice_router::History for Kept {
    fn last_seq(&self, source_id: &str) -> Result<u64, String> {
        Ok(self.0.lock().unwrap().get(source_id).copied().unwrap_or(0))
    }
}

impl Kept {
    /// What a persister does once it wrote `source` through `seq`: storage has it, and the
    /// durability mark says so.
    fn store(&self, r: &Router, source: &str, seq: u64) {
        self.0.lock().unwrap().insert(source.to_owned(), seq);
        r.durability().update(&std::sync::Arc::from(source), seq, 0);
    }
}

#[test]
fn an_idle_source_is_forgotten_once_stored_and_unread_and_its_next_line_continues_its_seqs() {
    let kept = std::sync::Arc::new(Kept::default());
    let r = Router::with_history(
        RouterConfig {
            max_sources: 3,
            ..RouterConfig::default()
        },
        Some(kept.clone()),
    );
    let mut firehose = r
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    let mut persister = r
        .subscribe(Selector::Shard(Shard::ALL), Filter::default(), Start::Live)
        .unwrap();
    persister.track_forgotten();
    publish(&r, "a", 5);
    publish(&r, "b", 2);
    publish(&r, "c", 1);
    let mut tail = r
        .subscribe(Selector::Source("c".into()), Filter::default(), Start::Live)
        .unwrap();
    let mut out = Vec::new();
    firehose.poll_into(&mut out, 3);
    assert_eq!(seqs(&out), [1, 2, 3], "the firehose read 3 of a's 5");
    assert_eq!(seqs(&drain(&mut persister)).len(), 8);
    let idle = std::time::Duration::ZERO;
    // Nothing is on disk yet: nothing is forgotten.
    assert_eq!(r.forget_idle(idle), 0);
    kept.store(&r, "a", 5);
    kept.store(&r, "b", 2);
    kept.store(&r, "c", 1);
    // Not idle long enough.
    assert_eq!(r.forget_idle(std::time::Duration::from_secs(60)), 0);
    // a and b go; c has a tail of its own.
    assert_eq!(r.forget_idle(idle), 2);
    assert_eq!((r.source_count(), r.forgotten_total()), (1, 2));
    assert!(r.source_stats("a").is_none() && r.recent("b", 10, &Filter::default()).is_none());
    assert_eq!(r.retained_bytes(), {
        let c = r.source_stats("c").unwrap();
        c.retained_bytes
    });
    // The firehose is told of the lines of a and b it had not read, once each, and lets
    // them go.
    let got = drain(&mut firehose);
    let mut missed: Vec<_> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Missed(m) => Some((m.source_id.to_string(), m.count, m.last_missed_seq)),
            Delivery::Log(_) => None,
        })
        .collect();
    missed.sort();
    assert_eq!(
        missed,
        [("a".to_owned(), 2, 5), ("b".to_owned(), 2, 2)],
        "{got:?}"
    );
    assert_eq!(seqs(&got), [1], "c's line");
    assert_eq!(firehose.positions().len(), 1);
    assert_eq!(drain(&mut persister).len(), 0);
    let mut gone: Vec<String> = persister
        .take_forgotten()
        .iter()
        .map(|s| s.to_string())
        .collect();
    gone.sort();
    assert_eq!(gone, ["a", "b"]);
    // Room for new sources again; a's next line continues from what storage holds.
    publish(&r, "d", 1);
    publish(&r, "a", 2);
    assert_eq!(r.source_stats("a").unwrap().resumed_after, 5);
    assert_eq!(seqs(&drain(&mut persister)), [1, 6, 7]);
    assert_eq!(seqs(&drain(&mut firehose)), [1, 6, 7]);
    assert_eq!(
        firehose.positions().len(),
        3,
        "a again, c, d: places reused"
    );
    // With its tail gone, c is forgotten too.
    assert_eq!(seqs(&drain(&mut tail)), Vec::<u64>::new());
    drop(tail);
    assert_eq!(r.forget_idle(idle), 1);
    assert!(r.source_stats("c").is_none());
}

#[test]
fn a_source_a_reader_made_and_left_without_a_line_is_forgotten() {
    let r = Router::new(RouterConfig {
        max_sources: 30,
        ..RouterConfig::default()
    });
    let tails: Vec<_> = (0..3)
        .map(|i| {
            r.subscribe(
                Selector::Source(format!("wait-{i}")),
                Filter::default(),
                Start::Live,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(r.awaited_sources().0, 3);
    let idle = std::time::Duration::ZERO;
    assert_eq!(r.forget_idle(idle), 0, "each has its reader");
    drop(tails);
    // Without storage only sources without a line of this process may go: these are.
    publish(&r, "busy", 1);
    assert_eq!(r.forget_idle(idle), 3);
    assert_eq!(r.awaited_sources().0, 0);
    assert_eq!(r.source_count(), 1, "busy has a line nothing stored");
}

/// Publishers, a persister-like held reader and the forgetting all at once: every line is read
/// once, each source's seqs run on without a gap or a repeat across every time it is
/// forgotten and made again, and nothing is left counted.
#[test]
fn sources_forgotten_while_written_to_lose_nothing_and_never_repeat_a_seq() {
    const SOURCES: usize = 40;
    const BATCHES: usize = 3000;
    let kept = std::sync::Arc::new(Kept::default());
    let r = Router::with_history(
        RouterConfig {
            // Room for a source made again while its forgotten self is still counted.
            max_sources: SOURCES * 2,
            ..RouterConfig::default()
        },
        Some(kept.clone()),
    );
    let mut held = r.subscribe_held(Shard::ALL, Filter::default(), Start::Live);
    held.track_forgotten();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut read = 0usize;
    let mut forgotten = 0usize;
    let published = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let (r, done) = (&r, &done);
                s.spawn(move || {
                    let mut n = 0;
                    for i in 0..BATCHES {
                        let source = format!("s{}", (i * 7 + t * 13) % SOURCES);
                        let batch: Vec<_> = (0..3)
                            .map(|k| Envelope::new(source.as_str(), format!("{k}")))
                            .collect();
                        n += r.publish(batch).unwrap();
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    n
                })
            })
            .collect();
        let mut out = Vec::new();
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 3;
            out.clear();
            while held.poll_into(&mut out, 1000) > 0 {}
            for d in &out {
                let Delivery::Log(e) = d else {
                    panic!("a held reader loses nothing: {d:?}")
                };
                let prev = last.insert(e.source_id().to_owned(), e.seq()).unwrap_or(0);
                assert_eq!(e.seq(), prev + 1, "{}", e.source_id());
                read += 1;
            }
            for (source, seq) in &last {
                kept.store(&r, source, *seq);
            }
            forgotten += held.take_forgotten().len();
            r.forget_idle(std::time::Duration::ZERO);
            if finished && out.is_empty() {
                break;
            }
        }
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(read, published);
    assert_eq!(published, 3 * BATCHES * 3);
    assert!(
        forgotten > 0 && r.forgotten_total() > 0,
        "some were forgotten on the way"
    );
    r.forget_idle(std::time::Duration::ZERO);
    assert_eq!(r.source_count(), 0);
    assert_eq!(r.retained_bytes(), 0);
}

#[test]
fn a_source_made_since_a_firehose_last_looked_stays_until_it_has_looked() {
    let kept = std::sync::Arc::new(Kept::default());
    let r = Router::with_history(RouterConfig::default(), Some(kept.clone()));
    let mut firehose = r
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    publish(&r, "new", 4);
    kept.store(&r, "new", 4);
    let idle = std::time::Duration::ZERO;
    // Forgotten now, the firehose would never hear of these four lines.
    assert_eq!(r.forget_idle(idle), 0);
    let mut out = Vec::new();
    assert_eq!(
        firehose.poll_into(&mut out, 1),
        1,
        "it looks, and reads one"
    );
    assert_eq!(r.forget_idle(idle), 1);
    let got = drain(&mut firehose);
    match got.as_slice() {
        [Delivery::Missed(m)] => assert_eq!((m.count, m.last_missed_seq), (3, 4)),
        other => panic!("{other:?}"),
    }
    // A firehose that is gone holds nothing back.
    publish(&r, "later", 1);
    kept.store(&r, "later", 1);
    drop(firehose);
    assert_eq!(r.forget_idle(idle), 1);
}

#[test]
fn a_source_whose_storage_cannot_be_read_is_refused_not_restarted() {
    let r = Router::with_history(RouterConfig::default(), Some(std::sync::Arc::new(Stored)));
    let batch = vec![
        Envelope::new("fine", "1".to_owned()),
        Envelope::new("unreadable", "2".to_owned()),
    ];
    match r.publish(batch) {
        Err(sluice_router::EnvelopeError::StorageUnreadable { source_id, reason }) => {
            assert_eq!(
                (source_id.as_str(), reason.as_str()),
                ("unreadable", "the disk said no")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(r.source_stats("unreadable").is_none());
    assert_eq!(r.published_total(), 0, "nothing of the batch was taken");
    assert!(matches!(
        r.subscribe(
            Selector::Source("unreadable".into()),
            Filter::default(),
            Start::Live
        ),
        Err(sluice_router::EnvelopeError::StorageUnreadable { .. })
    ));
}
