//! Four producer threads and many cursors on one source, at full speed on real threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use sluice_router::{Delivery, Envelope, Fields, Filter, Router, RouterConfig, Selector, Start};

const PRODUCERS: usize = 4;
const PER_PRODUCER: u64 = 1_000_000;
const BATCH: u64 = 100;
const RING: usize = 65_536;
const STALLED: usize = 100;

#[test]
fn four_producers_one_reader_keeping_up_and_a_hundred_stalled() {
    let router = Router::new(RouterConfig {
        ring_max_entries: RING,
        ..RouterConfig::default()
    });
    let total = PRODUCERS as u64 * PER_PRODUCER;
    let sub = |start| {
        router
            .subscribe(Selector::Source("load".into()), Filter::default(), start)
            .unwrap()
    };
    let mut stalled: Vec<_> = (0..STALLED).map(|_| sub(Start::Live)).collect();
    let mut reader = sub(Start::Live);
    let done = Arc::new(AtomicBool::new(false));

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let router = router.clone();
            thread::spawn(move || {
                for b in 0..PER_PRODUCER / BATCH {
                    let batch = (0..BATCH)
                        .map(|i| Envelope::new("load", format!("{p} {}", b * BATCH + i)))
                        .collect();
                    router.publish(batch).unwrap();
                }
            })
        })
        .collect();

    // Samples the ring while the load runs: it never holds more than its size.
    let sampler = {
        let router = router.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(s) = router.source_stats("load") {
                    assert!(s.retained <= RING, "{} retained", s.retained);
                }
                samples += 1;
                thread::yield_now();
            }
            samples
        })
    };

    // The reader keeps up as best it can, on this thread.
    let mut next_per_producer = [0u64; PRODUCERS];
    let mut last_seq = 0u64;
    let mut missed_notices = 0u64;
    let mut out = Vec::with_capacity(4096);
    loop {
        out.clear();
        let n = reader.poll_into(&mut out, 4096);
        for d in &out {
            match d {
                Delivery::Log(e) => {
                    assert!(e.seq() > last_seq);
                    last_seq = e.seq();
                    let text = std::str::from_utf8(e.message()).unwrap();
                    let (p, i) = text.split_once(' ').unwrap();
                    let (p, i): (usize, u64) = (p.parse().unwrap(), i.parse().unwrap());
                    // Each producer's lines keep their order; losses only skip ahead.
                    assert!(
                        i >= next_per_producer[p],
                        "producer {p} line {i} out of order"
                    );
                    next_per_producer[p] = i + 1;
                }
                Delivery::Missed(m) => {
                    assert_eq!(
                        m.last_missed_seq,
                        last_seq + m.count,
                        "the notice covers the gap exactly"
                    );
                    last_seq = m.last_missed_seq;
                    missed_notices += m.count;
                }
            }
        }
        if n == 0 {
            if producers.iter().all(|p| p.is_finished())
                && reader.delivered() + reader.missed() == total
            {
                break;
            }
            thread::yield_now();
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(sampler.join().unwrap() > 0);

    assert_eq!(reader.delivered() + reader.missed(), total);
    assert_eq!(reader.missed(), missed_notices);
    assert_eq!(last_seq, total);

    let stats = router.source_stats("load").unwrap();
    assert_eq!(stats.published, total);
    assert_eq!(stats.retained, RING);
    for c in &mut stalled {
        let mut out = Vec::new();
        while c.poll_into(&mut out, 10_000) > 0 {}
        assert_eq!(c.missed(), total - RING as u64);
        assert_eq!(c.delivered(), RING as u64);
        assert!(matches!(&out[0], Delivery::Missed(m) if m.count == total - RING as u64));
    }
    eprintln!(
        "reader: delivered {} missed {} of {total}",
        reader.delivered(),
        reader.missed()
    );
}
