//! The persister: envelopes/s from the router into JSONL files, `fsync: interval`. Each sample
//! publishes a run of 150-byte lines into one source and times until the persister has written
//! and closed them all (publishing included, which is ~5% of the time per `benches/router.rs`).

// The allocator the `sluice` binary uses, so that figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_router::{Envelope, Filter, Router, RouterConfig, Selector, Start};
use sluice_store::persister::{Fsync, Persister, PersisterConfig, write_line};
use tokio_util::sync::CancellationToken;

const N: u64 = 100_000;

fn persister(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-persister-{}", std::process::id()));
    let mut group = c.benchmark_group("persister");
    group.throughput(Throughput::Elements(N));
    group.sample_size(10);
    group.bench_function("jsonl_fsync_interval", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let _ = std::fs::remove_dir_all(&dir);
                    let router = Router::new(RouterConfig {
                        ring_max_entries: 1 << 20,
                        ring_max_bytes: 1 << 30,
                        memory_budget_bytes: 1 << 31,
                        ..RouterConfig::default()
                    });
                    let cursor = router
                        .subscribe(Selector::All, Filter::default(), Start::Live)
                        .unwrap();
                    let (p, handle, control) = Persister::new(
                        PersisterConfig {
                            local_dir: dir.clone(),
                            fsync: Fsync::Interval,
                            fsync_interval: Duration::from_secs(1),
                            max_file_size_bytes: 1 << 30,
                            max_files: 2,
                            max_open_files: 16,
                            keep_segments: 0,
                        },
                        &router,
                    )
                    .unwrap();
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(p.run(cursor, control, stop.clone()));
                    let line = "x".repeat(150);
                    let source = format!("bench-{i}");
                    let start = Instant::now();
                    for _ in 0..N / 100 {
                        let batch = (0..100)
                            .map(|_| Envelope::new(source.clone(), line.clone()))
                            .collect();
                        router.publish(batch).unwrap();
                    }
                    handle.complete(&source, N, None).await.unwrap();
                    total += start.elapsed();
                    stop.cancel();
                    task.await.unwrap();
                }
                total
            })
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);

    // The line format alone, no I/O: what the persister's thread spends per line before write().
    let mut group = c.benchmark_group("persister");
    group.throughput(Throughput::Elements(100));
    let text = "GET /v2/catalog?page=7 HTTP/1.1 200 user_agent=curl/8.5 vcap_request_id=3f2a9c1e response_time=0.004213 \"quoted\" and more text to 150 bytes.....";
    let envs: Vec<Envelope> = (0..100)
        .map(|i| {
            let mut e = Envelope::new("bench", text);
            e.timestamp = 1_763_700_000_000_000_000 + i * 1_000_000;
            e.seq = i as u64;
            e
        })
        .collect();
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("write_line", |b| {
        b.iter(|| {
            out.clear();
            for e in &envs {
                write_line(e, &mut out);
            }
            std::hint::black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, persister);
criterion_main!(benches);
