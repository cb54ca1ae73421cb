//! Syslog both ways: formatting envelopes as RFC 5424 for drains, and parsing RFC 5424 lines
//! (with RFC 6587 octet-counting framing) into envelopes at ingress.

// The allocator the `sluice` binary uses, so that figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::ingest::syslog::parse::{
    SyslogError, next_frame, parse_message, parse_message_general,
};
use sluice_drains::syslog::format::{FormatOptions, format_rfc5424};
use sluice_router::Envelope;

const BATCH: usize = 100;

fn envelopes() -> Vec<Envelope> {
    (0..BATCH)
        .map(|i| {
            let mut e = Envelope::new(
                "spring-music",
                format!(
                    "GET /api/{i} HTTP/1.1 200 0 103455 response_time:0.059468637 {}",
                    "x".repeat(40)
                ),
            );
            e.timestamp = 1_700_000_000_000_000_000 + i as i64 * 1000;
            e.origin = "RTR".into();
            e.instance_id = "1".into();
            e.tags.insert("organization_name".into(), "acme".into());
            e.tags.insert("space_name".into(), "prod".into());
            e.tags.insert("app_name".into(), "spring-music".into());
            e
        })
        .collect()
}

fn format(c: &mut Criterion) {
    let envs = envelopes();
    let mut group = c.benchmark_group("syslog_format");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("rfc5424_with_tags", |b| {
        b.iter(|| {
            out.clear();
            for e in &envs {
                format_rfc5424(black_box(e), FormatOptions::default(), &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("rfc5424_without_metadata", |b| {
        b.iter(|| {
            out.clear();
            for e in &envs {
                format_rfc5424(
                    black_box(e),
                    FormatOptions {
                        disable_metadata: true,
                    },
                    &mut out,
                );
            }
            black_box(out.len())
        })
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    // ~160-byte octet-counted RFC 5424 lines, as SPEC §9's syslog row uses.
    let mut stream = Vec::new();
    for e in envelopes() {
        let mut line = Vec::new();
        format_rfc5424(
            &e,
            FormatOptions {
                disable_metadata: true,
            },
            &mut line,
        );
        stream.extend_from_slice(format!("{} ", line.len()).as_bytes());
        stream.extend_from_slice(&line);
    }
    let mut group = c.benchmark_group("syslog_parse");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out = Vec::with_capacity(BATCH);
    group.bench_function("octet_counted_rfc5424", |b| {
        b.iter(|| black_box(frame_and_parse(&stream, parse_message, &mut out)))
    });
    // The same lines through syslog_loose alone (what the fast reader replaced for this shape).
    group.bench_function("octet_counted_rfc5424_general", |b| {
        b.iter(|| black_box(frame_and_parse(&stream, parse_message_general, &mut out)))
    });
    // The same lines as RFC 3164 (`<PRI>Mmm dd hh:mm:ss host app[instance]: msg`).
    let mut stream3164 = Vec::new();
    for e in envelopes() {
        let line = format!(
            "<14>Jun 14 21:10:05 web-01 {}[{}]: {}",
            e.source_id,
            e.instance_id,
            String::from_utf8_lossy(&e.message)
        );
        stream3164.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
    }
    group.bench_function("octet_counted_rfc3164", |b| {
        b.iter(|| black_box(frame_and_parse(&stream3164, parse_message, &mut out)))
    });
    group.finish();
}

/// `parse_message` or `parse_message_general`.
type Parse = fn(&[u8], usize, &mut Vec<Envelope>) -> Result<(), SyslogError>;

/// Splits `stream` into frames and parses each with `parse`; how many envelopes came out.
fn frame_and_parse(stream: &[u8], parse: Parse, out: &mut Vec<Envelope>) -> usize {
    out.clear();
    let mut buf = BytesMut::from(stream);
    while let Some(frame) = next_frame(&mut buf, 1 << 20).unwrap() {
        parse(&frame, 64 * 1024, out).unwrap();
    }
    out.len()
}

criterion_group!(benches, format, parse);
criterion_main!(benches);
