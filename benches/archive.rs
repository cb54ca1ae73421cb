//! Archiving a big job log to S3: MB/s of log gzipped and uploaded, and the process's peak
//! resident memory, against a real S3-compatible server (moto, as in the tests).
//!
//! `cargo bench --bench archive` (1 GiB; `SLUICE_ARCHIVE_BENCH_BYTES` changes it). Needs
//! `moto_server`: run `./test.sh` once, or set `SLUICE_MOTO_SERVER`.

// The allocator the `sluice` binary uses, so that figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_router::{Router, RouterConfig};
use sluice_store::archive::{Archive, Record, S3Config, s3_client};
use tokio_util::sync::CancellationToken;

fn peak_rss_bytes() -> u64 {
    sluice::procfs::memory("self").map_or(0, |m| m.peak_rss_bytes)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing for test harnesses to enumerate
    }
    let size: u64 = std::env::var("SLUICE_ARCHIVE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let moto = std::env::var("SLUICE_MOTO_SERVER").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice-test-tools/moto/bin/moto_server",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{moto}: {e} (run ./test.sh once to install it)"));
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }

    // A job log of realistic router lines: request ids and latencies keep it from compressing
    // like a run of one repeated line.
    let dir = std::env::temp_dir().join(format!("sluice-bench-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big-job.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&file).unwrap());
    let (mut written, mut seq, mut x) = (0u64, 0u64, 0x2545_f491_4f6c_dd1du64);
    while written < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seq += 1;
        let line = format!(
            "{{\"ts\":\"2026-11-21T10:{:02}:{:02}.{:03}Z\",\"stream\":\"stdout\",\"step\":\"serve\",\"line\":\"GET /api/v1/items/{} HTTP/1.1 200 {}ms req={:016x}\",\"origin\":\"RTR/0\",\"seq\":{seq}}}\n",
            (seq / 60_000) % 60,
            (seq / 1000) % 60,
            seq % 1000,
            x % 100_000,
            x % 977,
            x
        );
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
    }
    out.flush().unwrap();
    drop(out);
    let rss_before = peak_rss_bytes();
    // SLUICE_BENCH_GZIP_LEVEL compares levels; the default is the config's default.
    let level: u32 = std::env::var("SLUICE_BENCH_GZIP_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (elapsed, compressed) = rt.block_on(async {
        let config = S3Config {
            bucket: "bench".into(),
            region: "us-east-1".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            part_size_bytes: 8 << 20,
            compression_level: level,
            unready_after_failing_secs: 600,
        };
        let creds = aws_sdk_s3::config::Credentials::new("bench", "bench", None, None, "bench");
        let client = s3_client(&config, Some(creds)).await;
        client.create_bucket().bucket("bench").send().await.unwrap();
        let archive = Archive::new_with_client(config, &dir, true, client.clone()).unwrap();
        let stop = CancellationToken::new();
        let start = Instant::now();
        archive
            .enqueue(&Record {
                source: "big-job".into(),
                status: "completed".into(),
                key: "big-job.jsonl.gz".into(),
                files: vec![file.clone()],
                completion: 1,
                last_seq: 0,
            })
            .unwrap();
        let task = tokio::spawn(
            archive
                .clone()
                .run(Router::new(RouterConfig::default()), stop.clone()),
        );
        // keep_local: the record moves to done/ once S3 has the object.
        while !dir.join(".archive/done/big-job#1.json").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed();
        stop.cancel();
        let _ = task.await;
        let head = client
            .head_object()
            .bucket("bench")
            .key("big-job.jsonl.gz")
            .send()
            .await
            .unwrap();
        (elapsed, head.content_length().unwrap_or(0) as u64)
    });
    let peak = peak_rss_bytes();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("archive/upload_gzip_{size}_bytes (gzip level {level})");
    println!("  input            {:.1} MiB", written as f64 / 1048576.0);
    println!(
        "  compressed       {:.1} MiB ({:.1}x)",
        compressed as f64 / 1048576.0,
        written as f64 / compressed.max(1) as f64
    );
    println!("  time             {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput       {:.1} MB/s of log",
        written as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "  peak RSS         {:.1} MiB (before the upload: {:.1} MiB)",
        peak as f64 / 1048576.0,
        rss_before as f64 / 1048576.0
    );
}
