//! A full disk: the persister reports it, consumers lose nothing, and once there is room again
//! every accepted line reaches the file exactly once, in order. The disk is a real tmpfs of a
//! few kilobytes (the tests run as root, as CI does here).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Server, Tmpfs, temp_dir};
use futures_util::StreamExt;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn line ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_nothing_accepted_and_the_file_catches_up_when_room_returns() {
    let logs = temp_dir("disk-full").join("logs");
    let _disk = Tmpfs::mount(&logs, "256k");
    // Leave a few kilobytes: room for some lines, not for all.
    let filler = logs.join("filler");
    std::fs::write(&filler, vec![0u8; 240 * 1024]).unwrap();
    let server = Server::start(&format!("log_storage:\n  local_dir: {}\n", logs.display()));
    let (mut tail, _) = connect_async(server.ws("/api/v1/sources/disk/stream"))
        .await
        .unwrap();

    const N: u64 = 400;
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..N)
        .map(|i| Envelope::new("disk", format!("line {i:04} {}", "y".repeat(100))))
        .collect();
    assert_eq!(
        conn.send_batch(&batch).await.unwrap(),
        N,
        "accepted while the disk is full"
    );

    // The tail gets everything, full disk or not.
    let mut seen = 0;
    while seen < N {
        let msg = tokio::time::timeout(Duration::from_secs(10), tail.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(msg, Message::Text(_)) {
            seen += 1;
        }
    }
    // The persister says so, and the file is short.
    server.wait_metric("sluice_persister_errors_total", 1).await;
    let file = logs.join("disk.jsonl");
    // While full, the last line may be half written; the retry appends exactly the rest.
    let complete = std::fs::read(&file)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    assert!(
        (complete as u64) < N,
        "{complete} lines fit on the full disk"
    );

    // Room again: the retry writes the rest, each line once, none torn.
    std::fs::remove_file(&filler).unwrap();
    let written = common::until("every line once room returned", 30, async || {
        let complete = std::fs::read(&file)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        if complete >= N {
            Ok(lines(&file))
        } else {
            Err(format!("{complete} of {N} lines"))
        }
    })
    .await;
    let seqs: Vec<u64> = written.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    assert_eq!(server.metric("sluice_persister_lost_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_lines_leave_whole_jsonl_an_exact_count_and_a_notice_with_a_seq_of_its_own() {
    let logs = temp_dir("disk-torn").join("logs");
    let _disk = Tmpfs::mount(&logs, "256k");
    let filler = logs.join("filler");
    // A few kilobytes of room: a write will stop in the middle of a line.
    std::fs::write(&filler, vec![0u8; 246 * 1024 + 517]).unwrap();
    let server = Server::start(&format!(
        "ingest:\n  max_frame_bytes: 8388608\nlog_storage:\n  local_dir: {}\n",
        logs.display()
    ));
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    // 18 MiB of lines: past the 16 MiB the persister keeps for a retry, so it gives up on some.
    let body = "y".repeat(1000);
    let mut sent = 0u64;
    for _ in 0..18 {
        let batch: Vec<Envelope> = (0..1024)
            .map(|_| Envelope::new("torn", body.clone()))
            .collect();
        sent += conn.send_batch(&batch).await.unwrap();
    }
    let given_up = common::eventually("the persister to give up", 60, async || {
        let lost = server.metric("sluice_persister_lost_total").await;
        (lost > 0).then_some(lost)
    })
    .await;
    // Room returns (the disk grows); one more line, and the notice, are written.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&logs)
        .status()
        .unwrap();
    assert!(grown.success());
    sent += conn
        .send_batch(&[Envelope::new("torn", "after")])
        .await
        .unwrap();
    let file = logs.join("torn.jsonl");
    let written = common::eventually("the last line and the notice", 60, async || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let done = text.contains("\"line\":\"after\",\"origin\":\"APP/0\",\"seq\":18433}\n")
            && text.contains("\"step\":\"_server\"");
        done.then(|| lines(&file)) // every line parses: none torn, none glued
    })
    .await;
    let notices: Vec<&serde_json::Value> =
        written.iter().filter(|l| l["step"] == "_server").collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let text = notices[0]["line"].as_str().unwrap();
    assert!(
        text == format!(
            "sluice could not write {given_up} messages for this persister: no space left on device"
        ),
        "{text}"
    );
    // Exact: what is in the file and what was announced add up to what was sent.
    let data = (written.len() - 1) as u64;
    assert_eq!(
        data + given_up,
        sent,
        "{data} written + {given_up} announced"
    );
    // Every line has a seq of its own, the notice included.
    let mut seqs: Vec<u64> = written.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a seq is used twice");
    // And the job API shows the notice, hidden before behind a real line's seq.
    let api = server.get_json("/api/jobs/torn/steps/_server/logs").await;
    assert!(api["logs"].as_str().unwrap().contains("could not write"));
}

/// `/readyz` names a `local_dir` it cannot write (a full disk) and is ready again once there is
/// room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_local_dir_cannot_be_written() {
    let logs = temp_dir("disk-ready").join("logs");
    let _disk = Tmpfs::mount(&logs, "64k");
    let server = Server::start(&format!("log_storage:\n  local_dir: {}\n", logs.display()));
    let readyz = async || {
        let resp = reqwest::get(server.url("/readyz")).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(readyz().await, (200, "ready\n".to_owned()));
    // Fill the disk to the last byte.
    let filler = logs.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    let _ = std::io::Write::write_all(&mut f, &[0u8]);
    drop(f);
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "log_storage.local_dir {} is not writable: No space left on device",
            logs.display()
        )),
        "{body}"
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz().await, (200, "ready\n".to_owned()));
}
