//! The stored log across restarts and under load: seqs continue where storage left off, and
//! with `log_storage.when_behind: block` the persister loses nothing however fast senders are.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;

use common::{Server, eventually, jsonl};
use futures_util::StreamExt;
use serde_json::Value;
use sluice::client::{IngestAddr, connect_ingest, connect_ingest_with};
use sluice_router::Envelope;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const SOURCES: usize = 1_000;

/// `per_source` lines for each of `SOURCES` sources, `"{tag} {i}"`, in one batch per source.
async fn send_all(server: &Server, tag: &str, per_source: usize) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    for s in 0..SOURCES {
        let batch: Vec<Envelope> = (0..per_source)
            .map(|i| Envelope::new(format!("src-{s}"), format!("{tag} {i}")))
            .collect();
        conn.send_batch(&batch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_continue_across_restarts_so_reads_show_every_line_once_in_order() {
    let mut server = Server::start("");
    send_all(&server, "before", 3).await;
    server.stop_and_restart();
    send_all(&server, "after", 5).await;
    let expected: Vec<String> = (0..3)
        .map(|i| format!("before {i}"))
        .chain((0..5).map(|i| format!("after {i}")))
        .collect();
    for s in 0..SOURCES {
        let id = format!("src-{s}");
        let lines = eventually(&format!("{id}'s 8 lines"), 30, async || {
            let lines = jsonl(&server.get_json(&format!("/api/jobs/{id}/logs")).await);
            (lines.len() >= 8).then_some(lines)
        })
        .await;
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "{id}");
        let text: Vec<&str> = lines.iter().map(|l| l["line"].as_str().unwrap()).collect();
        assert_eq!(text, expected, "{id}");
    }

    // A crash too: what was durably acknowledged is on disk, and the next seq follows it.
    let mut conn = connect_ingest_with(&IngestAddr::Tcp(server.ingest.clone()), "ack=durable")
        .await
        .unwrap();
    let batch = vec![Envelope::new("src-7", "durable")];
    assert_eq!(conn.send_batch(&batch).await.unwrap(), 1);
    server.crash_and_restart();
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    conn.send_batch(&[Envelope::new("src-7", "after the crash")])
        .await
        .unwrap();
    let lines = eventually("src-7's 10 lines", 30, async || {
        let lines = jsonl(&server.get_json("/api/jobs/src-7/logs").await);
        (lines.len() >= 10).then_some(lines)
    })
    .await;
    let tail: Vec<(u64, &str)> = lines[8..]
        .iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert_eq!(tail, [(9, "durable"), (10, "after the crash")]);
}

const SENDERS: usize = 8;
const PER_SENDER: usize = 25_000;

/// Every line of `path` as JSON.
fn file_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_when_behind_block_flat_out_senders_lose_nothing_on_disk_and_a_slow_tail_is_told_exactly()
 {
    // Small rings, so the persister is a ring behind all the time.
    let server = Server::start(
        "router:\n  ring_max_entries: 512\nlog_storage:\n  local_dir: {logs}\n  fsync: never\n",
    );
    // A tail that reads nothing until the end.
    let (mut tail, _) = connect_async(server.ws("/api/v1/sources/flood/stream"))
        .await
        .unwrap();

    let mut native = Vec::new();
    for c in 0..SENDERS {
        let addr = IngestAddr::Tcp(server.ingest.clone());
        native.push(tokio::spawn(async move {
            let mut conn = connect_ingest(&addr).await.unwrap();
            for chunk in 0..PER_SENDER / 1000 {
                let batch: Vec<Envelope> = (0..1000)
                    .map(|i| Envelope::new("flood", format!("native {c} {}", chunk * 1000 + i)))
                    .collect();
                assert_eq!(conn.send_batch(&batch).await.unwrap(), 1000);
            }
        }));
    }
    let mut syslog = Vec::new();
    for c in 0..SENDERS {
        let addr = server.syslog_tcp.clone();
        syslog.push(std::thread::spawn(move || {
            let mut all = Vec::new();
            for i in 0..PER_SENDER {
                let msg = format!("<14>1 - h flood [APP/0] - - syslog {c} {i}");
                write!(all, "{} {msg}", msg.len()).unwrap();
            }
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(&all).unwrap();
        }));
    }
    for t in native {
        t.await.unwrap();
    }
    for t in syslog {
        t.join().unwrap();
    }
    let total = 2 * SENDERS * PER_SENDER;
    let file = server.logs.join("flood.jsonl");
    let lines = eventually("every line in the file", 120, async || {
        let lines = file_lines(&file);
        (lines.len() >= total).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), total, "no loss notice, no extra line");
    let distinct: HashSet<&str> = lines.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), total, "every line once");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    assert!(
        server
            .metric("sluice_router_waited_for_persister_total")
            .await
            > 0
    );

    // The tail was overwritten like any slow reader, and every line is either delivered or
    // counted in a notice.
    let (mut delivered, mut missed) = (0u64, 0u64);
    while delivered + missed < total as u64 {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), tail.next())
            .await
            .expect("the tail goes on")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let env: Value = serde_json::from_str(&text).unwrap();
        match env["tags"]["missed"].as_str() {
            Some(n) => missed += n.parse::<u64>().unwrap(),
            None => delivered += 1,
        }
    }
    assert_eq!(delivered + missed, total as u64);
    assert!(missed > 0, "the tail was overwritten");
}
