//! `sluice-load`: drives a Sluice (or any syslog receiver) over loopback and reports what went in,
//! what came out, how late, what was lost against what was announced, and the server's memory.
//!
//! ```sh
//! cargo run --release --bin sluice-load -- --connections 2 --tails 1 --duration 10
//! ```
//!
//! Without `--http`/`--ingest`/`--syslog` it starts the `sluice` binary beside itself on
//! `127.0.0.1:0` ports with a temporary log directory, and stops it at the end.

mod consume;
mod send;
mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;
use sluice_router::envelope::now_ns;
use tokio_util::sync::CancellationToken;

use consume::{LineCounter, SinkProgress, TailProgress};
use send::{Kind, Plan, Sent};
use target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Native frames (MessagePack batches) to the ingest port.
    Native,
    /// Octet-counted RFC 5424 lines to the syslog TCP port.
    Syslog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TailFormat {
    Msgpack,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "sluice-load",
    about = "Load generator for Sluice: envelopes/s and MiB/s in and out, send-to-tail latency, \
             announced vs actual losses, and the server's peak memory"
)]
struct Args {
    /// What to send.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Sources (`load-0`, `load-1`, …); connection i sends to source i mod N.
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Every connection writes to every source in turn, one envelope each (`load-0`, `load-1`,
    /// …, then again), instead of connection i to source i mod N: many active sources from
    /// few connections.
    #[arg(long)]
    spread: bool,
    /// Bytes of message text per envelope.
    #[arg(long, default_value_t = 150)]
    size: usize,
    /// Envelopes per native frame, or syslog lines per write.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Envelopes per second over all connections; 0 sends as fast as the server takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many envelopes in all (before `--duration` if it comes first).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to send the same load before measuring, then wait for the persister to write
    /// it all: sources, their files and the rings exist and are full when the measured run
    /// starts (a steady state; without it the run includes creating every source's file).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// WebSocket tails that read everything; tail i follows source i mod N.
    #[arg(long, default_value_t = 1)]
    tails: usize,
    /// Tails read the firehose (`/api/v1/firehose`, every source) instead of one source
    /// each; a tail checks one source's seqs, so this needs `--sources 1` (other sources may
    /// exist, idle: `benches/idle_sources.sh`).
    #[arg(long)]
    firehose: bool,
    /// How tails ask for envelopes.
    #[arg(long, value_enum, default_value_t = TailFormat::Msgpack)]
    tail_format: TailFormat,
    /// WebSocket tails of `load-0` that never read a byte.
    #[arg(long, default_value_t = 0)]
    stalled_tails: usize,
    /// Receive buffer of each stalled tail's socket, in bytes (see `consume::stalled_tails`).
    #[arg(long, default_value_t = 16 * 1024)]
    stalled_rcvbuf: u32,
    /// Syslog drains to bind on `load-0` (at most the server's drains.per_source_limit).
    #[arg(long, default_value_t = 0)]
    drains: usize,
    /// Where the drains send; by default a TCP sink of this tool's own that counts messages.
    #[arg(long)]
    drain_url: Option<String>,
    /// Count the lines written under this file or directory and wait until every envelope sent
    /// is there: how a server that only writes files (rsyslog, Vector) is measured.
    #[arg(long)]
    wait_lines: Option<PathBuf>,
    /// Seconds to wait, after sending, for consumers to catch up.
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// Attach to a running server's HTTP address instead of starting one.
    #[arg(long)]
    http: Option<String>,
    /// Attach: native ingest address.
    #[arg(long)]
    ingest: Option<String>,
    /// Attach: syslog TCP address.
    #[arg(long)]
    syslog: Option<String>,
    /// Attach: process id of the server, for its memory and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// The sluice binary to start (default: the one beside this tool).
    #[arg(long)]
    server: Option<PathBuf>,
    /// A YAML file whose text is appended to the started server's config; `{logs}` in it names
    /// the run's own log directory (a file holding `log_storage:\n  local_dir: {logs}\n  writers: 2`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sluice::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.sources > 0 && args.batch > 0,
        "--connections, --sources and --batch must be at least 1"
    );
    anyhow::ensure!(
        !args.firehose || args.sources == 1,
        "--firehose needs --sources 1 (a tail checks the seqs of one source)"
    );
    anyhow::ensure!(
        args.warmup.is_finite() && args.warmup >= 0.0,
        "--warmup must be a number of seconds, 0 or more"
    );
    let mut target = if args.http.is_some() || args.ingest.is_some() || args.syslog.is_some() {
        Target::attach(
            args.http.clone(),
            args.ingest.clone(),
            args.syslog.clone(),
            args.pid,
        )
    } else {
        let binary = match &args.server {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("sluice"),
        };
        let extra = match &args.config {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
            None => String::new(),
        };
        Target::spawn(&binary, &extra)?
    };
    let send_addr = match args.protocol {
        Protocol::Native => target.ingest.clone(),
        Protocol::Syslog => target.syslog.clone(),
    };
    let send_addr = send_addr.ok_or_else(|| {
        anyhow::anyhow!("no address to send to: give --ingest (native) or --syslog (syslog)")
    })?;
    let client = reqwest::Client::new();
    let stop = CancellationToken::new();
    if args.warmup > 0.0 {
        warm_up(&args, &send_addr, &target, &client).await?;
    }

    // Consumers first, so that they see everything from the first envelope on.
    let mut sinks = Vec::new();
    for _ in 0..args.drains {
        let http = target
            .http
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--drains needs a Sluice (--http)"))?;
        let url = match &args.drain_url {
            Some(u) => u.clone(),
            None => {
                let progress = Arc::new(SinkProgress::default());
                let addr = consume::sink(progress.clone()).await?;
                sinks.push(progress);
                format!("syslog://{addr}")
            }
        };
        let resp = client
            .post(format!("http://{http}/api/v1/drains"))
            .json(&json!({"source_id": "load-0", "url": url}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "binding drain {url}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let tail_url = |source: usize| -> anyhow::Result<String> {
        let http = target
            .http
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("tails need a Sluice (--http)"))?;
        let format = match args.tail_format {
            TailFormat::Msgpack => "msgpack",
            TailFormat::Json => "json",
        };
        Ok(if args.firehose {
            format!("ws://{http}/api/v1/firehose?format={format}")
        } else {
            format!("ws://{http}/api/v1/sources/load-{source}/stream?format={format}")
        })
    };
    let stalled = if args.stalled_tails > 0 {
        let t = Instant::now();
        let held =
            consume::stalled_tails(&tail_url(0)?, args.stalled_tails, args.stalled_rcvbuf).await?;
        eprintln!(
            "opened {} stalled tails in {:.1} s",
            held.len(),
            t.elapsed().as_secs_f64()
        );
        held
    } else {
        Vec::new()
    };
    let mut tails = Vec::new();
    for i in 0..args.tails {
        let progress = Arc::new(TailProgress::default());
        let task = tokio::spawn(consume::tail(
            tail_url(i % args.sources)?,
            progress.clone(),
            stop.clone(),
        ));
        tails.push((i % args.sources, progress, task));
    }
    // Drains connect eagerly and tails subscribe at upgrade; give both a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = Snapshot::take(&target, &client).await;
    let self_cpu_before = target::cpu_seconds_of("self");
    let start = Instant::now();
    let start_ns = now_ns();
    let producers = start_producers(&args, &send_addr, Duration::from_secs_f64(args.duration));
    let mut peak_rss_during = 0;
    let mut sending = true;
    let mut send_elapsed = Duration::ZERO;
    // Sample memory while sending, then wait for the consumers to catch up.
    let mut lines = args.wait_lines.as_deref().map(LineCounter::new);
    let mut persister_done: Option<Duration> = None;
    let mut lines_done: Option<(Duration, u64)> = None;
    let mut sinks_done: Option<Duration> = None;
    let mut last_progress = (Instant::now(), 0u64);
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticks += 1;
        // A server that died mid-run would otherwise leave this loop waiting for its counters.
        if let Some(status) = target.exited() {
            anyhow::bail!(
                "the server exited during the run ({status}); its log is on stderr above"
            );
        }
        if let Some((_, rss)) = target.memory() {
            peak_rss_during = peak_rss_during.max(rss);
        }
        if sending && producers.iter().all(|(_, _, t)| t.is_finished()) {
            sending = false;
            send_elapsed = start.elapsed();
        }
        // The server's counters every 100 ms: a `/metrics` scrape costs the server a look at
        // every source, which with 100,000 of them is not free.
        if sending || !ticks.is_multiple_of(5) {
            continue;
        }
        let sent_total: u64 = producers
            .iter()
            .map(|(_, s, _)| s.envelopes.load(Ordering::Relaxed))
            .sum();
        let now = Snapshot::take(&target, &client).await;
        let published = now.published - before.published;
        // Everything sent is published (syslog may still be in the socket), and written or lost.
        if persister_done.is_none()
            && target.http.is_some()
            && published >= sent_total
            && now.persisted + now.persist_lost - before.persisted - before.persist_lost
                >= published.max(1)
        {
            persister_done = Some(start.elapsed());
        }
        if let Some(counter) = &mut lines
            && lines_done.is_none()
        {
            let n = counter.poll()?;
            if n >= sent_total {
                lines_done = Some((start.elapsed(), n));
            }
        }
        let drained: u64 = sinks
            .iter()
            .map(|s| s.messages.load(Ordering::Relaxed))
            .sum();
        let drain_lost = now.drain_lost - before.drain_lost;
        if sinks_done.is_none() && drained + drain_lost >= published * sinks.len() as u64 {
            sinks_done = Some(start.elapsed());
        }
        let tails_done = tails.iter().all(|(source, p, _)| {
            let expected: u64 = producers
                .iter()
                .filter(|(s, _, _)| s == source)
                .map(|(_, s, _)| s.envelopes.load(Ordering::Relaxed))
                .sum();
            p.received.load(Ordering::Relaxed) + p.announced.load(Ordering::Relaxed) >= expected
        });
        let all_done = tails_done
            && (target.http.is_none() || persister_done.is_some())
            && (lines.is_none() || lines_done.is_some())
            && (sinks.is_empty() || sinks_done.is_some());
        if all_done {
            break;
        }
        // Give up once nothing has moved for a while, or after --settle.
        let moved = tails
            .iter()
            .map(|(_, p, _)| p.received.load(Ordering::Relaxed))
            .sum::<u64>()
            + now.persisted
            + drained
            + lines.as_ref().map_or(0, |l| l.lines());
        if moved != last_progress.1 {
            last_progress = (Instant::now(), moved);
        }
        if last_progress.0.elapsed() > Duration::from_secs(5)
            || start.elapsed() > send_elapsed + Duration::from_secs_f64(args.settle)
        {
            eprintln!("consumers stopped before receiving everything; reporting what arrived");
            break;
        }
    }
    let after = Snapshot::take(&target, &client).await;
    stop.cancel();
    drop(stalled);

    let mut errors = Vec::new();
    let mut sent_total = 0;
    let mut sent_bytes = 0;
    let mut sent_by_source = std::collections::HashMap::new();
    for (source, sent, task) in producers {
        if let Ok(Err(e)) = task.await {
            errors.push(format!("producer: {e}"));
        }
        sent_total += sent.envelopes.load(Ordering::Relaxed);
        sent_bytes += sent.bytes.load(Ordering::Relaxed);
        *sent_by_source.entry(source).or_insert(0) += sent.envelopes.load(Ordering::Relaxed);
    }
    let mut latency = consume::histogram();
    let mut tail_reports = Vec::new();
    for (source, p, task) in tails {
        match task.await {
            Ok(Ok(h)) => latency.add(&h)?,
            Ok(Err(e)) => errors.push(format!("tail: {e}")),
            Err(e) => errors.push(format!("tail: {e}")),
        }
        let received = p.received.load(Ordering::Relaxed);
        let secs = (p.last_ns.load(Ordering::Relaxed) as i64 - start_ns).max(1) as f64 / 1e9;
        let expected: u64 = sent_by_source.get(&source).copied().unwrap_or(0);
        let out_of_order = p.out_of_order.load(Ordering::Relaxed);
        tail_reports.push(json!({
            "source": format!("load-{source}"),
            "received": received,
            "envelopes_per_sec": received as f64 / secs,
            "mib_per_sec": p.bytes.load(Ordering::Relaxed) as f64 / secs / MIB,
            "announced_lost": p.announced.load(Ordering::Relaxed),
            // What never arrived: gaps between seqs, and any shortfall after the last one.
            "actual_lost": expected.saturating_sub(received - out_of_order),
            "seq_gaps": p.gaps.load(Ordering::Relaxed),
            "unannounced_gaps": p.unannounced.load(Ordering::Relaxed),
            "out_of_order": out_of_order,
        }));
    }

    let send_secs = send_elapsed.as_secs_f64().max(1e-9);
    let published = after.published - before.published;
    let mut report = json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "connections": args.connections,
        "message_bytes": args.size,
        "sent": sent_total,
        "send_seconds": send_secs,
        "in_envelopes_per_sec": sent_total as f64 / send_secs,
        "in_mib_per_sec": sent_bytes as f64 / send_secs / MIB,
        "server_accepted": published,
        "tails": tail_reports,
        "stalled_tails": args.stalled_tails,
    });
    if !latency.is_empty() {
        report["latency_us"] = json!({
            "p50": latency.value_at_quantile(0.50),
            "p99": latency.value_at_quantile(0.99),
            "p99_9": latency.value_at_quantile(0.999),
            "max": latency.max(),
            "samples": latency.len(),
        });
    }
    if target.http.is_some() {
        let persisted = after.persisted - before.persisted;
        let secs = persister_done.unwrap_or(start.elapsed()).as_secs_f64();
        report["persister"] = json!({
            "lines": persisted,
            "envelopes_per_sec": persisted as f64 / secs,
            "announced_lost": after.persist_lost - before.persist_lost,
        });
    }
    if args.drains > 0 {
        let secs = sinks_done.unwrap_or(start.elapsed()).as_secs_f64();
        let received: u64 = sinks
            .iter()
            .map(|s| s.messages.load(Ordering::Relaxed))
            .sum();
        report["drains"] = json!({
            "count": args.drains,
            "sink_received": received,
            "server_sent": after.drain_sent - before.drain_sent,
            "announced_lost": after.drain_lost - before.drain_lost,
            "messages_per_sec": if sinks.is_empty() {
                (after.drain_sent - before.drain_sent) as f64 / start.elapsed().as_secs_f64()
            } else {
                received as f64 / secs
            },
        });
    }
    if let Some(counter) = &lines {
        let (secs, n) = match lines_done {
            Some((t, n)) => (t.as_secs_f64(), n),
            None => (start.elapsed().as_secs_f64(), counter.lines()),
        };
        report["file"] = json!({
            "lines": n,
            "seconds": secs,
            "lines_per_sec": n as f64 / secs,
            "complete": lines_done.is_some(),
        });
    }
    if let (Some(a), Some(b)) = (after.cpu, before.cpu) {
        report["server_cpu_cores"] = json!((a - b) / start.elapsed().as_secs_f64());
        if published > 0 {
            // Less noisy than rates on a shared machine: what each envelope cost the server.
            report["server_cpu_us_per_envelope"] = json!((a - b) * 1e6 / published as f64);
        }
    }
    if let (Some(a), Some(b)) = (target::cpu_seconds_of("self"), self_cpu_before) {
        report["loadgen_cpu_cores"] = json!((a - b) / start.elapsed().as_secs_f64());
    }
    if let Some((hwm, _)) = target.memory() {
        report["server_peak_rss_mib"] = json!(hwm as f64 / MIB);
        report["server_rss_during_run_mib"] = json!(peak_rss_during as f64 / MIB);
    }
    if !errors.is_empty() {
        report["errors"] = json!(errors);
    }
    print_report(&report);
    if args.json {
        println!("{report}");
    }
    // A run with a failed producer or consumer measured something else than was asked.
    anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(())
}

type Producer = (
    usize,
    Arc<Sent>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// Starts `args.connections` producers sending for `duration`; each with the source it
/// writes to (the first, with `--spread`) and its counters.
fn start_producers(args: &Args, send_addr: &str, duration: Duration) -> Vec<Producer> {
    let per_conn_rate = args.rate / args.connections as u64;
    let per_conn_count = args.count.map(|c| c.div_ceil(args.connections as u64));
    let mut producers = Vec::new();
    for i in 0..args.connections {
        let sent = Arc::new(Sent::default());
        let plan = Plan {
            sources: if args.spread {
                // Each connection starts at a source of its own, so they do not march in step.
                (0..args.sources)
                    .map(|k| format!("load-{}", (i + k) % args.sources))
                    .collect()
            } else {
                vec![format!("load-{}", i % args.sources)]
            },
            message_bytes: args.size,
            batch: args.batch,
            rate: per_conn_rate,
            duration,
            count: per_conn_count,
        };
        let kind = match args.protocol {
            Protocol::Native => Kind::Native,
            Protocol::Syslog => Kind::Syslog,
        };
        let task = tokio::spawn(send::run(send_addr.to_string(), kind, plan, sent.clone()));
        producers.push((i % args.sources, sent, task));
    }
    producers
}

/// Sends for `--warmup` seconds, then waits until the server has published and written what
/// was sent (a server without HTTP: until the producers are done).
async fn warm_up(
    args: &Args,
    send_addr: &str,
    target: &Target,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let before = Snapshot::take(target, client).await;
    let mut sent = 0;
    for (_, s, task) in start_producers(args, send_addr, Duration::from_secs_f64(args.warmup)) {
        task.await??;
        sent += s.envelopes.load(Ordering::Relaxed);
    }
    if target.http.is_some() {
        let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
        loop {
            let now = Snapshot::take(target, client).await;
            let written = now.persisted + now.persist_lost - before.persisted - before.persist_lost;
            if now.published - before.published >= sent && written >= sent {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the persister did not write the warm-up's {sent} envelopes within --settle"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "warmed up: {sent} envelopes sent and written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Server counters at one moment.
#[derive(Debug, Default)]
struct Snapshot {
    published: u64,
    persisted: u64,
    persist_lost: u64,
    drain_sent: u64,
    drain_lost: u64,
    cpu: Option<f64>,
}

impl Snapshot {
    async fn take(target: &Target, client: &reqwest::Client) -> Snapshot {
        Snapshot {
            published: target.metric(client, "sluice_router_published_total").await,
            persisted: target.metric(client, "sluice_persister_lines_total").await,
            persist_lost: target.metric(client, "sluice_persister_lost_total").await,
            drain_sent: target.metric(client, "sluice_drain_sent_total").await,
            drain_lost: target.metric(client, "sluice_drain_lost_total").await,
            cpu: target.cpu_seconds(),
        }
    }
}

fn print_report(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!(
        "in        {} envelopes over {} {} connection(s) in {:.2} s: {:.0} env/s, {:.1} MiB/s (server accepted {})",
        r["sent"],
        r["connections"],
        r["protocol"].as_str().unwrap_or(""),
        f(&r["send_seconds"]),
        f(&r["in_envelopes_per_sec"]),
        f(&r["in_mib_per_sec"]),
        r["server_accepted"],
    );
    for t in r["tails"].as_array().into_iter().flatten() {
        println!(
            "tail      {}: {} received, {:.0} env/s, {:.1} MiB/s; lost {} announced, {} actual, {} unannounced{}",
            t["source"].as_str().unwrap_or(""),
            t["received"],
            f(&t["envelopes_per_sec"]),
            f(&t["mib_per_sec"]),
            t["announced_lost"],
            t["actual_lost"],
            t["unannounced_gaps"],
            match t["out_of_order"].as_u64() {
                Some(n) if n > 0 => format!(", {n} OUT OF ORDER OR DUPLICATED"),
                _ => String::new(),
            }
        );
    }
    if let Some(l) = r.get("latency_us") {
        println!(
            "latency   send → tail: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
            l["p50"], l["p99"], l["p99_9"], l["max"], l["samples"]
        );
    }
    if let Some(p) = r.get("persister") {
        println!(
            "persister {} lines, {:.0} env/s; lost {} announced",
            p["lines"],
            f(&p["envelopes_per_sec"]),
            p["announced_lost"]
        );
    }
    if let Some(d) = r.get("drains") {
        println!(
            "drains    {} drain(s): sink received {}, server sent {}, {:.0} msg/s; lost {} announced",
            d["count"],
            d["sink_received"],
            d["server_sent"],
            f(&d["messages_per_sec"]),
            d["announced_lost"]
        );
    }
    if let Some(l) = r.get("file") {
        println!(
            "file      {} lines in {:.2} s: {:.0} lines/s{}",
            l["lines"],
            f(&l["seconds"]),
            f(&l["lines_per_sec"]),
            if l["complete"] == true {
                ""
            } else {
                " (incomplete)"
            }
        );
    }
    if r.get("stalled_tails").and_then(|v| v.as_u64()) > Some(0) {
        println!("stalled   {} tails that never read", r["stalled_tails"]);
    }
    if let Some(c) = r.get("server_cpu_cores") {
        println!(
            "cpu       server {:.2} cores busy ({:.2} µs per envelope), load generator {:.2} cores",
            f(c),
            f(&r["server_cpu_us_per_envelope"]),
            f(&r["loadgen_cpu_cores"])
        );
    }
    if let Some(m) = r.get("server_peak_rss_mib") {
        println!(
            "memory    server peak RSS {:.1} MiB ({:.1} MiB at most while sending)",
            f(m),
            f(&r["server_rss_during_run_mib"])
        );
    }
    for e in r["errors"].as_array().into_iter().flatten() {
        println!("error     {}", e.as_str().unwrap_or(""));
    }
}
