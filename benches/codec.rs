//! The native wire format: encoding a batch into a frame, and decoding it back.

// The allocator the `sluice` binary uses, so that figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_router::Envelope;
use sluice_router::codec::{
    FrameError, Payload, batch_frame, decode_frame, decode_payload, decode_payload_shared,
};

const BATCH: usize = 100;

/// A payload decoder under test.
type Decode = fn(&Bytes) -> Result<Payload, FrameError>;

fn frames(c: &mut Criterion) {
    let line = "x".repeat(150);
    let envs: Vec<Envelope> = (0..BATCH)
        .map(|i| {
            let mut e = Envelope::new("bench-app", line.clone());
            e.origin = "APP/PROC/WEB".into();
            e.timestamp = 1_700_000_000_000_000_000 + i as i64;
            e.tags.insert("app_name".into(), "bench".into());
            e
        })
        .collect();
    let frame = batch_frame(&envs);

    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("encode_batch", |b| {
        b.iter(|| black_box(batch_frame(black_box(&envs))))
    });
    // Copying each message, and what native ingest does: messages sliced out of the frame.
    let decoders: [(&str, Decode); 2] = [
        ("decode_batch", |p| decode_payload(p)),
        ("decode_batch_shared", decode_payload_shared),
    ];
    for (name, decode) in decoders {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&frame[..]);
                let payload = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
                let Payload::Envelopes(envs) = decode(&payload).unwrap() else {
                    unreachable!()
                };
                black_box(envs)
            })
        });
    }
    group.bench_function("encode_decode_batch", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch_frame(black_box(&envs))[..]);
            let payload = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
            black_box(decode_payload(&payload).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
