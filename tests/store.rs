//! The stored log across restarts and under load: seqs continue where storage left off, and
//! with `log_storage.when_behind: block` the persister loses nothing however fast senders are.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;

use std::process::Command;

use common::{SLUICE, Server, eventually, file_lines, jsonl, output_ok, recent_lines};
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

/// With four writer threads (a 2-core machine runs one by default): each writes its own share
/// of the sources, and a clean stop of all four leaves nothing to skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_continue_across_restarts_so_reads_show_every_line_once_in_order() {
    let mut server = Server::start("log_storage:\n  local_dir: {logs}\n  writers: 4\n");
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

    history_reads_join_storage_and_memory(&server, "src-5", &expected).await;

    // The firehose's backfill reaches into storage too, for each source it follows.
    let (mut fire, _) =
        connect_async(server.ws("/api/v1/firehose?sources=src-11,src-12&backfill=8"))
            .await
            .unwrap();
    let got = common::next_json(&mut fire, 16).await;
    for id in ["src-11", "src-12"] {
        let mine: Vec<(u64, &str)> = got
            .iter()
            .filter(|e| e["source_id"] == id)
            .map(|e| (e["seq"].as_u64().unwrap(), e["message"].as_str().unwrap()))
            .collect();
        let want: Vec<(u64, &str)> = (1..=8).zip(expected.iter().map(String::as_str)).collect();
        assert_eq!(mine, want, "{id}");
    }

    // A crash too: what was durably acknowledged is on disk. What the dead process published
    // but had not written, readers may have seen: those seqs are skipped, never reused, and the
    // source's first line after the crash says so.
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
    let lines = eventually("src-7's 11 lines", 30, async || {
        let lines = jsonl(&server.get_json("/api/jobs/src-7/logs").await);
        (lines.len() >= 11).then_some(lines)
    })
    .await;
    // The bound for the default ring: 65,536 + a 4,096-line batch + 16 MiB of retries and the
    // 64 KiB a closed file gathers, over 64 bytes a line.
    let skip = 65_536 + 4_096 + (16 * 1024 * 1024 + 64 * 1024) / 64;
    let tail: Vec<(u64, &str)> = lines[8..]
        .iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert_eq!(tail[0], (9, "durable"));
    assert_eq!(tail[2], (9 + skip + 2, "after the crash"));
    assert_eq!(tail[1].0, 9 + skip + 1);
    assert_eq!(
        tail[1].1,
        format!(
            "sluice stopped without a clean shutdown after storing seq 9 of this source: seqs 10 \
             to {} are skipped, never reused (readers may have seen lines under them that were \
             not stored)",
            9 + skip
        )
    );
    assert_eq!(lines[9]["step"], "_server");
    // A reader resuming inside the skipped seqs is told exactly how many it cannot have.
    let (mut ws, _) = connect_async(server.ws("/api/v1/sources/src-7/stream?since_seq=100"))
        .await
        .unwrap();
    let got = common::next_json(&mut ws, 3).await;
    assert_eq!(got[0]["seq"], 9 + skip, "{got:?}");
    assert_eq!(got[0]["tags"]["missed"], (9 + skip - 100).to_string());
    assert_eq!(got[1]["seq"], 9 + skip + 1);
    assert_eq!(got[2]["message"], "after the crash");
    // A clean stop marks the directory, and the next start skips nothing.
    server.stop_and_restart();
    conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    conn.send_batch(&[Envelope::new("src-7", "after a clean stop")])
        .await
        .unwrap();
    let lines = eventually("src-7's 12 lines", 30, async || {
        let lines = jsonl(&server.get_json("/api/jobs/src-7/logs").await);
        (lines.len() >= 12).then_some(lines)
    })
    .await;
    assert_eq!(lines[11]["seq"], 9 + skip + 3);
    assert_eq!(lines[11]["line"], "after a clean stop");

    // Sources are listed with where their lines live, those only on disk too.
    let list = server.get_json("/api/v1/sources").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), SOURCES);
    let find = |id: &str| list.iter().find(|s| s["source_id"] == id).unwrap().clone();
    assert_eq!(
        find("src-7")["lines_in"],
        serde_json::json!(["memory", "files"])
    );
    assert_eq!(find("src-9")["lines_in"], serde_json::json!(["files"]));
    assert!(find("src-9")["published"].is_null());

    // A source this process has not seen yet is read from its files alone.
    let stats = server.get_json("/api/v1/sources/src-9/stats").await;
    assert_eq!(
        (stats["published"].as_u64(), stats["retained"].as_u64()),
        (Some(8), Some(0))
    );
    let recent = server
        .get_json("/api/v1/sources/src-9/recent?limit=100")
        .await;
    let text: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected);
    let out = sluice(&server, &["logs", "src-9", "--recent"]);
    assert_eq!(out.lines().count(), 8, "{out}");
    assert!(out.lines().next().unwrap().ends_with("before 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_list_comes_in_pages_and_names_long_ids_only_storage_knows() {
    let mut server = Server::start("");
    let long = format!("org/{}", "long-".repeat(50));
    let mut ids: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    ids.push(long.clone());
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = ids.iter().map(|id| Envelope::new(id, "hello")).collect();
    conn.send_batch(&batch).await.unwrap();
    server.stop_and_restart();
    ids.sort();

    // Pages of 10, each naming the next in its Link header, until the last names none.
    let mut url = "/api/v1/sources?limit=10".to_owned();
    let mut listed: Vec<Value> = Vec::new();
    let mut pages = 0;
    loop {
        let resp = server.client.get(server.url(&url)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let next = resp
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Vec<Value> = resp.json().await.unwrap();
        assert!(page.len() <= 10);
        listed.extend(page);
        pages += 1;
        let Some(next) = next else { break };
        let (target, rel) = next.split_once(">; ").unwrap();
        assert_eq!(rel, "rel=\"next\"");
        url = target.trim_start_matches('<').to_owned();
    }
    assert_eq!(pages, 3);
    let got: Vec<&str> = listed
        .iter()
        .map(|s| s["source_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    // The long id names its file only by a hash; it is listed by its whole id all the same.
    let entry = listed
        .iter()
        .find(|s| s["source_id"] == long.as_str())
        .unwrap();
    assert_eq!(entry["lines_in"], serde_json::json!(["files"]));

    for (query, error) in [
        ("limit=0", "limit 0 is not between 1 and 10000"),
        ("limit=10001", "limit 10001 is not between 1 and 10000"),
        ("limit=x", "invalid limit"),
        ("page=2", "unknown query parameter page"),
    ] {
        let resp = server
            .client
            .get(server.url(&format!("/api/v1/sources?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(error), "{query}: {body}");
    }
}

fn sluice(server: &Server, args: &[&str]) -> String {
    let out = output_ok(
        Command::new(SLUICE)
            .args(args)
            .args(["--http", &server.http]),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The seqs and texts of the next `n` JSON envelopes (or Strøm's lines) of a WebSocket.
async fn next_envelopes(ws: &mut common::Ws, n: usize) -> Vec<(u64, String)> {
    common::next_json(ws, n)
        .await
        .iter()
        .map(|v| {
            let text = v["message"].as_str().or(v["line"].as_str()).unwrap();
            (v["seq"].as_u64().unwrap(), text.to_owned())
        })
        .collect()
}

/// After a restart `id` has 3 lines in its file and 5 in the ring: every read returns all of
/// them, in seq order, and streams go on live from there.
async fn history_reads_join_storage_and_memory(server: &Server, id: &str, expected: &[String]) {
    let seqs_texts = |from: usize| -> Vec<(u64, String)> {
        (from..8)
            .map(|i| (i as u64 + 1, expected[i].clone()))
            .collect()
    };
    let stats = server
        .get_json(&format!("/api/v1/sources/{id}/stats"))
        .await;
    assert_eq!(stats["resumed_after"], 3);
    assert_eq!(stats["published"], 8);
    for (limit, from) in [(100, 0), (6, 2), (3, 5)] {
        let got = recent_lines(server, id, limit).await;
        assert_eq!(got, seqs_texts(from), "recent?limit={limit}");
    }
    let out = sluice(server, &["logs", id, "--recent"]);
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed.len(), 8, "{out}");
    for (line, text) in printed.iter().zip(expected) {
        assert!(line.ends_with(text.as_str()), "{line} / {text}");
    }
    let all = sluice(server, &["logs", id, "--from-start", "--json"]);
    let all: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 8);
    assert_eq!(all[0]["message"], "before 0");

    // WebSockets: a resume across the restart, a backfill reaching into the file, Strøm's
    // stream of the whole job; each then goes on live without a gap.
    let (mut resumed, _) =
        connect_async(server.ws(&format!("/api/v1/sources/{id}/stream?since_seq=2")))
            .await
            .unwrap();
    let (mut backfilled, _) =
        connect_async(server.ws(&format!("/api/v1/sources/{id}/stream?backfill=5")))
            .await
            .unwrap();
    let (mut job, _) = connect_async(server.ws(&format!("/api/jobs/{id}/logs/stream")))
        .await
        .unwrap();
    assert_eq!(next_envelopes(&mut resumed, 6).await, seqs_texts(2));
    assert_eq!(next_envelopes(&mut backfilled, 5).await, seqs_texts(3));
    assert_eq!(next_envelopes(&mut job, 8).await, seqs_texts(0));
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    conn.send_batch(&[Envelope::new(id, "live")]).await.unwrap();
    let live = vec![(9, "live".to_owned())];
    assert_eq!(next_envelopes(&mut resumed, 1).await, live);
    assert_eq!(next_envelopes(&mut backfilled, 1).await, live);
    assert_eq!(next_envelopes(&mut job, 1).await, live);
}

const SENDERS: usize = 8;
const PER_SENDER: usize = 25_000;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_that_cannot_wait_for_the_persister_is_dropped_counted_and_announced() {
    // A ring of one line and a synced write per batch: a burst of datagrams outruns it.
    let server = Server::start(
        "router:\n  ring_max_entries: 1\nlog_storage:\n  local_dir: {logs}\n  fsync: always\n",
    );
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    const SENT: usize = 20_000;
    for i in 0..SENT {
        let msg = format!("<14>1 - h burst [APP/0] - - line {i}");
        socket.send_to(msg.as_bytes(), &server.syslog_udp).unwrap();
    }
    let file = server.logs.join("burst.jsonl");
    // Each drop is announced in the source within a second, with the exact count.
    let (written, announced) = eventually("the drops announced", 30, async || {
        let dropped = server.metric("sluice_syslog_udp_dropped_total").await;
        let lines = file_lines(&file);
        let announced: u64 = lines
            .iter()
            .filter(|l| l["step"] == "_server")
            .map(|l| {
                let text = l["line"].as_str().unwrap();
                assert!(text.contains("syslog UDP"), "{text}");
                assert!(
                    text.ends_with("the persister is behind (log_storage.when_behind: block)"),
                    "{text}"
                );
                text.split(' ').nth(2).unwrap().parse::<u64>().unwrap()
            })
            .sum();
        // Every message taken is on disk.
        let received = server.metric("sluice_syslog_messages_total").await;
        let data = lines.iter().filter(|l| l["step"] != "_server").count() as u64;
        (dropped > 0 && announced == dropped && data == received).then_some((data, announced))
    })
    .await;
    // The kernel may drop datagrams too, before Sluice sees them; what Sluice saw adds up.
    assert!(written + announced <= SENT as u64);
}

/// Lines a closed file is still gathering when the ring lets them go are read back whole:
/// `recent` has the persister write them first instead of showing a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_reads_lines_the_ring_let_go_while_their_file_was_still_gathering_them() {
    // A 20-line ring, and closed files that would gather for an hour if nobody asked.
    let server = Server::start(
        "router:\n  ring_max_entries: 20\nlog_storage:\n  local_dir: {logs}\n  fsync_interval_millis: 3600000\n  max_open_files: 2\n",
    );
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    for b in 0..10 {
        let batch: Vec<Envelope> = (0..10)
            .map(|i| Envelope::new("quiet", format!("line {}", b * 10 + i)))
            .collect();
        conn.send_batch(&batch).await.unwrap();
    }
    // The ring holds the last 20; the other 80 are gathered, not yet in a file.
    let lines = recent_lines(&server, "quiet", 100).await;
    let want: Vec<(u64, String)> = (0..100).map(|i| (i + 1, format!("line {i}"))).collect();
    assert_eq!(lines, want);
}
