//! Publishing into one source's ring with 0, 1, 100 and 1,000 cursors open (stalled: they never
//! read, which is the worst case for neither side, and shows that writers never wait for them),
//! and with one cursor draining everything published.

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

criterion_group!(benches, publish);
criterion_main!(benches);
