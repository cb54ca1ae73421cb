//! Jobs the way Strøm's workers and users see them: worker ingest, JSONL reads by job and by
//! step, completion, reads that outlive the ring, legacy files, and a gapless stream.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, jsonl, output_ok};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

async fn worker_lines(server: &Server, job: &str, step: &str, lines: Vec<Value>) -> (u16, Value) {
    server
        .post_json(
            &format!("/worker/jobs/{job}/logs"),
            json!({"step_name": step, "lines": lines}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lines_read_back_by_job_and_by_step() {
    let server = Server::start("");
    let (status, answer) = worker_lines(
        &server,
        "job-1",
        "build",
        vec![
            json!({"ts": "2025-02-12T10:56:45.123Z", "stream": "stdout", "line": "compiling"}),
            json!({"ts": "2025-02-12T10:56:46Z", "stream": "stderr", "line": "warning: x"}),
        ],
    )
    .await;
    assert_eq!((status, answer), (200, json!({"accepted": 2})));
    worker_lines(
        &server,
        "job-1",
        "test",
        vec![json!({"ts": "2025-02-12T10:57:00.5+01:00", "line": "ok"})],
    )
    .await;

    let all = jsonl(&server.get_json("/api/jobs/job-1/logs").await);
    assert_eq!(
        all,
        [
            json!({"ts": "2025-02-12T10:56:45.123Z", "stream": "stdout", "step": "build", "line": "compiling", "origin": "APP/0", "seq": 1}),
            json!({"ts": "2025-02-12T10:56:46.000Z", "stream": "stderr", "step": "build", "line": "warning: x", "origin": "APP/0", "seq": 2}),
            json!({"ts": "2025-02-12T09:57:00.500Z", "stream": "stdout", "step": "test", "line": "ok", "origin": "APP/0", "seq": 3}),
        ]
    );
    let test_only = jsonl(&server.get_json("/api/jobs/job-1/steps/test/logs").await);
    assert_eq!(test_only.len(), 1);
    assert_eq!(
        server.get_json("/api/jobs/job-1/steps/_server/logs").await,
        json!({"logs": ""})
    );

    // Bad worker input is refused with the line at fault, and nothing of it is kept.
    let cases = [
        (
            json!({"step_name": "s", "lines": [{"line": "a"}, {"ts": "yesterday", "line": "b"}]}),
            "lines[1].ts: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            json!({"step_name": "s", "lines": [{"stream": "stdin", "line": "a"}]}),
            "lines[0].stream: \"stdin\" is not stdout or stderr",
        ),
        (
            json!({"step_name": "s"}),
            "invalid worker logs: missing field `lines`",
        ),
    ];
    for (body, reason) in cases {
        let (status, answer) = server.post_json("/worker/jobs/job-1/logs", body).await;
        assert_eq!(status, 400);
        assert!(
            answer["error"].as_str().unwrap().starts_with(reason),
            "{answer}"
        );
    }
    let (status, _) = server
        .post_json("/worker/jobs/bad%20id/logs", json!({"lines": []}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        jsonl(&server.get_json("/api/jobs/job-1/logs").await).len(),
        3
    );
    let resp = reqwest::get(server.url("/api/jobs/never-seen/logs"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stroms_documented_server_events_call_works_as_documented() {
    let server = Server::start("drains:\n  delivery:\n    reconnect_min_millis: 20\n");
    worker_lines(
        &server,
        "job-7",
        "deploy",
        vec![json!({"line": "starting"})],
    )
    .await;
    // A drain that cannot connect is a router-side event about the job: step _server, stderr.
    let (status, _) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "job-7", "url": "syslog://127.0.0.1:1"}),
        )
        .await;
    assert_eq!(status, 201);
    let out = common::until("the drain's server event", 30, async || {
        let out = output_ok(Command::new("sh").arg("-c").arg(format!(
            "curl -s http://{}/api/jobs/job-7/steps/_server/logs | jq -r .logs",
            server.http
        )));
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains("failed to connect") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["step"], "_server");
    assert_eq!(line["stream"], "stderr");
    assert_eq!(
        line["line"],
        "failed to connect to syslog drain syslog://127.0.0.1:1: connection refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_jobs_read_back_whole_after_the_ring_moved_on_and_stream_without_a_gap() {
    let server = Server::start("router:\n  ring_max_entries: 10\n");
    for chunk in 0..5 {
        let lines = (0..10)
            .map(|i| json!({"line": format!("line {}", chunk * 10 + i)}))
            .collect();
        worker_lines(&server, "job-9", "run", lines).await;
    }
    let (status, done) = server
        .post_json(
            "/api/v1/sources/job-9/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert!(
        done["file"]
            .as_str()
            .unwrap()
            .ends_with("/logs/job-9.jsonl")
    );

    // The ring holds 41..=50; the file has everything.
    let all = jsonl(&server.get_json("/api/jobs/job-9/logs").await);
    let seqs: Vec<u64> = all.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());

    // The stream: 1..=40 from the file, 41..=50 from the ring, then live, each once, in order.
    let (mut ws, _) = connect_async(server.ws("/api/jobs/job-9/logs/stream"))
        .await
        .unwrap();
    worker_lines(&server, "job-9", "run", vec![json!({"line": "late"})]).await;
    let mut got = Vec::new();
    while got.len() < 51 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            got.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    let seqs: Vec<u64> = got.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=51).collect::<Vec<_>>());
    assert_eq!(got[50]["line"], "late");

    // Strøm's worker path completes the same way.
    let (status, _) = server
        .post_json("/worker/jobs/job-9/complete", json!({"status": "failed"}))
        .await;
    assert_eq!(status, 200);

    // Bad completions.
    let (status, answer) = server
        .post_json("/api/v1/sources/job-9/complete", json!({"status": "done"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `done`"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_log_files_are_read_when_there_is_no_jsonl() {
    let server = Server::start("");
    std::fs::create_dir_all(&server.logs).unwrap();
    std::fs::write(server.logs.join("old-job.log"), "first line\nsecond line\n").unwrap();
    let logs = jsonl(&server.get_json("/api/jobs/old-job/logs").await);
    let text: Vec<&str> = logs.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(text, ["first line", "second line"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_job_log_streams_in_bounded_memory_while_the_server_keeps_answering() {
    let server = Server::start("");
    // 64 MiB of a job's lines, as an earlier run of the persister wrote them.
    const LINES: u64 = 320_000;
    common::write_big_job(&server.logs.join("big-job.jsonl"), LINES);
    let before = server.peak_rss_bytes();

    let mut health = 0;
    let got = common::JobLogCount::read(&server, "big-job", async |got| {
        if health < 20 && got.bytes > (health + 1) * (2 << 20) {
            let ok = server
                .client
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap();
            assert!(
                ok.status().is_success(),
                "the server answers during the read"
            );
            health += 1;
        }
    })
    .await;
    assert!(
        got.head.starts_with(b"{\"logs\":\"{\\\"ts\\\""),
        "{}",
        String::from_utf8_lossy(&got.head)
    );
    let tail = String::from_utf8_lossy(&got.tail).into_owned();
    assert!(
        tail.ends_with(&format!("\\\"seq\\\":{LINES}}}\\n\"}}")),
        "{tail}"
    );
    assert!(got.bytes > 64 << 20, "{}", got.bytes);
    assert_eq!(health, 20);
    let grown = server.peak_rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "peak RSS grew {} MiB", grown >> 20);
    assert_eq!(got.lines, LINES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_stream_reader_gets_what_the_ring_let_go_from_disk_without_a_gap() {
    let server = Server::start("router:\n  ring_max_entries: 64\n");
    let (mut ws, _) = connect_async(server.ws("/api/jobs/job-slow/logs/stream"))
        .await
        .unwrap();
    // 100,000 lines while the client reads nothing: far more than the socket buffers hold, so
    // its cursor is overtaken in a ring of 64 many times over.
    const N: u64 = 100_000;
    let mut conn =
        sluice::client::connect_ingest(&sluice::client::IngestAddr::Tcp(server.ingest.clone()))
            .await
            .unwrap();
    for chunk in 0..N / 1000 {
        let batch: Vec<sluice_router::Envelope> = (0..1000)
            .map(|i| sluice_router::Envelope::new("job-slow", format!("line {}", chunk * 1000 + i)))
            .collect();
        conn.send_batch(&batch).await.unwrap();
    }
    let got = common::next_json(&mut ws, N as usize).await;
    let seqs: Vec<u64> = got.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert!(got.iter().all(|l| l["step"].is_null()), "no loss notice");
    assert_eq!(got[N as usize - 1]["line"], format!("line {}", N - 1));
    // The ring did let them go: what the cursor missed came back from disk.
    assert!(server.metric("sluice_tail_missed_total").await > 0);
}
