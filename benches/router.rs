//! Publishing into one source's ring with 0, 1, 100 and 1,000 cursors open (stalled: they never
//! read, which is the worst case for neither side, and shows that writers never wait for them),
//! and with one cursor draining everything published. And what forgetting idle sources costs:
//! the look at 100,000 sources none of which may go yet (what the server pays every minute),
//! and forgetting 10,000.

// The allocator the `sluice` binary uses, so that figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice_router::{Envelope, Filter, Router, RouterConfig, Selector, Start};

/// Envelopes per publish call, as one native ingest frame carries them.
const BATCH: usize = 100;

fn batch() -> Vec<Envelope> {
    // ~150-byte lines, as in SPEC §9.
    let line = "x".repeat(150);
    (0..BATCH)
        .map(|_| {
            let mut e = Envelope::new("bench-app", line.clone());
            e.origin = "APP/PROC/WEB".into();
            e.timestamp = 1;
            e
        })
        .collect()
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(BATCH as u64));
    for cursors in [0usize, 1, 100, 1000] {
        let router = Router::new(RouterConfig::default());
        let _open: Vec<_> = (0..cursors)
            .map(|_| {
                router
                    .subscribe(
                        Selector::Source("bench-app".into()),
                        Filter::default(),
                        Start::Live,
                    )
                    .unwrap()
            })
            .collect();
        group.bench_function(format!("{cursors}_cursors"), |b| {
            b.iter_batched(
                batch,
                |envs| router.publish(black_box(envs)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    let router = Router::new(RouterConfig::default());
    let mut reader = router
        .subscribe(
            Selector::Source("bench-app".into()),
            Filter::default(),
            Start::Live,
        )
        .unwrap();
    let mut out = Vec::with_capacity(BATCH);
    group.bench_function("1_cursor_draining", |b| {
        b.iter_batched(
            batch,
            |envs| {
                router.publish(envs).unwrap();
                out.clear();
                reader.poll_into(&mut out, BATCH);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// A router holding `n` sources of one line each, every line on disk as far as it knows.
fn stored_sources(n: usize) -> Router {
    let router = Router::new(RouterConfig::default());
    for i in 0..n {
        let id = format!("job-{i}");
        router
            .publish(vec![Envelope::new(id.as_str(), "done")])
            .unwrap();
        router
            .durability()
            .update(&std::sync::Arc::from(id.as_str()), 1, 0);
    }
    router
}

fn forget(c: &mut Criterion) {
    let mut group = c.benchmark_group("forget");
    group.sample_size(10);
    let router = stored_sources(100_000);
    let an_hour = std::time::Duration::from_secs(3600);
    group.bench_function("look_at_100000_none_idle", |b| {
        b.iter(|| assert_eq!(router.forget_idle(an_hour), 0))
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("forget_10000", |b| {
        b.iter_batched(
            || stored_sources(10_000),
            |r| {
                assert_eq!(r.forget_idle(std::time::Duration::ZERO), 10_000);
                r
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, publish, forget);
criterion_main!(benches);
