//! The persister through the real binary: one JSONL file per source in the documented format,
//! path safety, rotation, and durable acknowledgements that survive `kill -9`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Server, eventually};
use sluice::client::{IngestAddr, connect_ingest, connect_ingest_with};
use sluice_router::{Channel, Envelope};

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    common::until(
        &format!("{n} lines in {}", path.display()),
        30,
        async || {
            let lines = read_lines(path);
            if lines.len() >= n {
                Ok(lines)
            } else {
                Err(format!("{} lines", lines.len()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_gets_a_jsonl_file_in_the_documented_format() {
    let server = Server::start("");
    let logs = &server.logs;
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let mut a = Envelope::new("job-1", "Hello World");
    a.timestamp = 1_739_357_805_123_456_789;
    a.step = Some("say-hello".into());
    let mut b = Envelope::new("job-1", "bad \"news\"\n");
    b.timestamp = 1_739_357_806_000_000_000;
    b.channel = Channel::Err;
    b.origin = "STG".into();
    b.instance_id = "2".into();
    let c = Envelope::new("cf/doppler", "from a nested id");
    conn.send_batch(&[a, b, c]).await.unwrap();

    let lines = wait_for_lines(&logs.join("job-1.jsonl"), 2).await;
    let text = std::fs::read_to_string(logs.join("job-1.jsonl")).unwrap();
    assert_eq!(
        text,
        concat!(
            "{\"ts\":\"2025-02-12T10:56:45.123Z\",\"stream\":\"stdout\",\"step\":\"say-hello\",\"line\":\"Hello World\",\"origin\":\"APP/0\",\"seq\":1}\n",
            "{\"ts\":\"2025-02-12T10:56:46.000Z\",\"stream\":\"stderr\",\"line\":\"bad \\\"news\\\"\\n\",\"origin\":\"STG/2\",\"seq\":2}\n",
        )
    );
    assert_eq!(lines.len(), 2);
    let nested = wait_for_lines(&logs.join("cf%2Fdoppler.jsonl"), 1).await;
    assert_eq!(nested[0]["line"], "from a nested id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_never_create_files_outside_the_directory() {
    let server = Server::start("");
    let logs = &server.logs;
    let ids = [
        "../../etc/passwd".to_owned(),
        "a/b".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        "%2e%2e%2f".to_owned(),
        "./hidden".to_owned(),
        "/".repeat(256),
        "x".repeat(256),
    ];
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = ids
        .iter()
        .map(|id| Envelope::new(id.clone(), "probe"))
        .collect();
    conn.send_batch(&batch).await.unwrap();
    let names = common::until("a file per id", 30, async || {
        let names: BTreeSet<String> = std::fs::read_dir(logs)
            .unwrap()
            // The whole ids of names cut and hashed are kept in `.ids/` (checked below).
            .filter(|e| e.as_ref().unwrap().file_name() != ".ids")
            .map(|e| {
                let e = e.unwrap();
                assert!(
                    e.file_type().unwrap().is_file(),
                    "{:?} is not a plain file",
                    e.path()
                );
                e.file_name().into_string().unwrap()
            })
            // The server's lock on the directory, beside the sources' files.
            .filter(|n| n != ".sluice.lock")
            .collect();
        if names.len() == ids.len() {
            Ok(names)
        } else {
            Err(names)
        }
    })
    .await;
    for name in &names {
        assert!(
            name.ends_with(".jsonl") && !name.starts_with('.') && name.len() <= 255,
            "{name}"
        );
    }
    let mut kept: Vec<String> = std::fs::read_dir(logs.join(".ids"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file());
            std::fs::read_to_string(e.path()).unwrap()
        })
        .collect();
    kept.sort();
    assert_eq!(kept, ["/".repeat(256), "x".repeat(256)]);
    // Nothing appeared next to the directory, or above it.
    let beside: Vec<String> = std::fs::read_dir(&server.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, ["logs", "sluice.yaml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rotate_by_size_keeping_max_files() {
    let server = Server::start(
        "log_storage:\n  local_dir: {logs}\n  max_file_size_bytes: 4096\n  max_files: 3\n",
    );
    let logs = &server.logs;
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..300)
        .map(|i| Envelope::new("busy", format!("{i:04} {}", "x".repeat(80))))
        .collect();
    conn.send_batch(&batch).await.unwrap();
    let seqs = common::until("seq 300 in the kept files", 30, async || {
        let files = ["busy.jsonl.2", "busy.jsonl.1", "busy.jsonl"];
        let lines: Vec<serde_json::Value> = files
            .iter()
            .flat_map(|f| read_lines(&logs.join(f)))
            .collect();
        // (Notices of deleted lines come after, with seqs of their own.)
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| l["step"] != "_server")
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        match seqs.last() {
            Some(300) => Ok(seqs),
            last => Err(last.copied()),
        }
    })
    .await;
    let names = |logs: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != ".sluice.lock")
            .collect();
        names.sort();
        names
    };
    // The oldest file is set aside and deleted off the writer's thread, and the notice of it is
    // written after (into a new current file, when line 300 happened to fill the last one):
    // wait for both, then three files are kept.
    common::until("three files kept", 30, async || {
        let now = names(logs);
        if now == ["busy.jsonl", "busy.jsonl.1", "busy.jsonl.2"] {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
    // Oldest to newest, the kept files hold a contiguous run ending with the newest line.
    let first = seqs[0];
    assert_eq!(seqs, (first..=300).collect::<Vec<_>>());
    assert!(first > 1, "the oldest file was dropped");
    // Every deleted line was announced: notices (step `_server`, seqs of their own) whose
    // ranges and the kept lines together are every seq once.
    eventually("every deleted line announced", 30, async || {
        let metric = server.metric("sluice_persister_deleted_lines_total").await;
        let notices = server
            .get_json("/api/v1/sources/busy/recent?step=_server&limit=1000")
            .await;
        let ranges: Vec<(u64, u64, u64)> = notices
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["message"].as_str().unwrap())
            .filter(|m| m.starts_with("sluice deleted "))
            .map(|m| {
                let words: Vec<&str> = m.split([' ', '(', ')']).collect();
                let count = words[2].parse().unwrap();
                let at = words.iter().position(|w| *w == "seqs").expect(m);
                (
                    count,
                    words[at + 1].parse().unwrap(),
                    words[at + 3].parse().unwrap(),
                )
            })
            .collect();
        let announced: u64 = ranges.iter().map(|r| r.0).sum();
        if metric == 0 || announced != metric {
            return None;
        }
        for &(count, a, b) in &ranges {
            assert_eq!(count, b - a + 1, "{ranges:?}");
        }
        let mut covered: Vec<u64> = ranges.iter().flat_map(|&(_, a, b)| a..=b).collect();
        covered.extend(
            ["busy.jsonl.2", "busy.jsonl.1", "busy.jsonl"]
                .iter()
                .flat_map(|f| read_lines(&logs.join(f)))
                .map(|l| l["seq"].as_u64().unwrap()),
        );
        covered.sort();
        let newest = *covered.last().unwrap();
        // Each seq once: kept, or in exactly one announced deletion.
        (covered == (1..=newest).collect::<Vec<_>>()).then_some(())
    })
    .await;
    for f in ["busy.jsonl.2", "busy.jsonl.1"] {
        assert!(std::fs::metadata(logs.join(f)).unwrap().len() >= 4096);
    }
    // A deletion the process did not finish is finished at the next start.
    std::fs::write(logs.join("busy.jsonl.3.deleting"), "old\n").unwrap();
    let mut server = server;
    server.crash_and_restart();
    assert_eq!(
        names(&server.logs),
        ["busy.jsonl", "busy.jsonl.1", "busy.jsonl.2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durably_acknowledged_envelopes_survive_kill_9() {
    let mut server = Server::start("log_storage:\n  local_dir: {logs}\n  fsync: always\n");
    let logs = server.logs.clone();
    let mut conn = connect_ingest_with(&IngestAddr::Tcp(server.ingest.clone()), "ack=durable")
        .await
        .unwrap();
    let mut acked = 0u64;
    // Send until the server is killed under us; count what was acknowledged.
    let pid = server.child.id();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    });
    for b in 0u64.. {
        let batch: Vec<Envelope> = (0..50)
            .map(|i| Envelope::new("ledger", format!("entry {}", b * 50 + i)))
            .collect();
        match conn.send_batch(&batch).await {
            Ok(n) => acked += n,
            Err(_) => break,
        }
    }
    killer.await.unwrap();
    let _ = server.child.wait();
    assert!(
        acked >= 50,
        "some batches were acknowledged before the kill ({acked})"
    );
    let lines = read_lines(&logs.join("ledger.jsonl"));
    assert!(
        lines.len() as u64 >= acked,
        "{} lines on disk, {acked} acknowledged",
        lines.len()
    );
    for (i, l) in lines.iter().take(acked as usize).enumerate() {
        assert_eq!(l["line"], format!("entry {i}"));
        assert_eq!(l["seq"], i as u64 + 1);
    }
}
