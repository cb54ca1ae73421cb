//! Completed jobs archived to a real S3-compatible server (moto): the exact key, the exact bytes,
//! reads after the local file is gone, and an upload that survives `kill -9`.

mod common;

use common::Server;
use common::rsyslog::free_tcp_port;
use common::s3::{Moto, client, gunzipped, keys};
use serde_json::{Value, json};
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use tokio_tungstenite::connect_async;

const BUCKET: &str = "sluice-logs";

fn config(endpoint: &str, keep_local: bool) -> String {
    format!(
        "log_storage:\n  local_dir: {{logs}}\n  keep_local: {keep_local}\n  s3:\n    bucket: {BUCKET}\n    prefix: \"logs/\"\n    endpoint: {endpoint}\n    part_size_bytes: 5242880\n"
    )
}

/// Lines that do not compress much, so 100,000 of them take a multipart upload.
fn noisy(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = format!("entry {i} ");
    for _ in 0..10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s
}

async fn send(server: &Server, job: &str, n: u64) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    for start in (0..n).step_by(1000) {
        let batch: Vec<Envelope> = (start..(start + 1000).min(n))
            .map(|i| {
                let mut e = Envelope::new(job, noisy(i));
                e.step = Some("run".into());
                e.tags.insert("workspace".into(), "acme".into());
                e.tags.insert("task".into(), "nightly-build".into());
                e.tags.insert("job_id".into(), job.into());
                e
            })
            .collect();
        conn.send_batch(&batch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_becomes_one_gzip_object_at_the_dated_key_and_reads_come_back_from_it() {
    let moto = Moto::start_on(free_tcp_port());
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let server = Server::start(&config(&moto.endpoint(), true));
    const N: u64 = 100_000;
    send(&server, "job-42", N).await;
    let (status, done) = server
        .post_json(
            "/api/v1/sources/job-42/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let key = done["archive"]["key"].as_str().unwrap().to_owned();
    assert_eq!(done["archive"]["bucket"], BUCKET);
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert!(
        key.starts_with(&format!("logs/acme/nightly-build/{today}/")),
        "{key}"
    );
    assert!(key.ends_with("_job-42.jsonl.gz"), "{key}");
    let stamp = key
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches("_job-42.jsonl.gz");
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S").is_ok(),
        "{stamp}"
    );

    let done_record = server.logs.join(".archive/done/job-42#1.json");
    common::eventually("the upload", 120, async || {
        done_record.exists().then_some(())
    })
    .await;
    assert_eq!(
        keys(&s3, BUCKET).await,
        std::slice::from_ref(&key),
        "exactly one object, at the exact key"
    );
    // Completion moved the job's file aside for the archive (kept here: keep_local).
    let kept = server.logs.join(".archive/files/job-42#1/job-42.jsonl");
    assert!(!server.logs.join("job-42.jsonl").exists());
    let on_disk = std::fs::read(&kept).unwrap();
    assert_eq!(on_disk.iter().filter(|&&b| b == b'\n').count() as u64, N);
    assert_eq!(
        gunzipped(&s3, BUCKET, &key).await,
        on_disk,
        "the object is the file, gzipped"
    );
    let head = s3
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap_or_default();
    assert!(
        etag.trim_matches('"').contains('-'),
        "a multipart upload's ETag ({etag})"
    );

    // Without the local file, the job reads back from S3, the same lines.
    std::fs::remove_file(&kept).unwrap();
    let logs = server.get_json("/api/jobs/job-42/logs").await;
    assert_eq!(logs["logs"].as_str().unwrap().as_bytes(), &on_disk[..]);
    let steps = server.get_json("/api/jobs/job-42/steps/run/logs").await;
    assert_eq!(steps["logs"].as_str().unwrap().lines().count() as u64, N);

    // Hostile ids and tags still land under the prefix.
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let mut e = Envelope::new("../../etc/passwd", "x");
    e.tags.insert("workspace".into(), "../..".into());
    e.tags.insert("job_id".into(), "a/../b".into());
    conn.send_batch(&[e]).await.unwrap();
    let (status, done) = server
        .post_json(
            "/api/v1/sources/..%2F..%2Fetc%2Fpasswd/complete",
            json!({"status": "failed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let key = done["archive"]["key"].as_str().unwrap();
    assert!(
        key.starts_with("logs/") && !key.split('/').any(|s| s == ".." || s == "."),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_pending_at_kill_9_completes_after_restart_once_s3_is_back() {
    let port = free_tcp_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = Server::start(&config(&endpoint, false));
    send(&server, "job-7", 1_000).await;
    let (status, done) = server
        .post_json(
            "/api/v1/sources/job-7/complete",
            json!({"status": "failed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let key = done["archive"]["key"].as_str().unwrap().to_owned();
    // S3 is down: the upload waits, recorded on disk, and the failure is a server event in the
    // job's file. Then the server dies.
    assert!(server.logs.join(".archive/pending/job-7#1.json").exists());
    let moved = server.logs.join(".archive/files/job-7#1/job-7.jsonl");
    // Later lines of the job (these notices) start a file of their own.
    let file = server.logs.join("job-7.jsonl");
    common::eventually("the failure in the job's file", 60, async || {
        std::fs::read_to_string(&file)
            .ok()?
            .contains("failed to archive job logs to s3://")
            .then_some(())
    })
    .await;
    server.crash_and_restart();
    assert!(moved.exists(), "the local file stays until S3 confirms");

    let moto = Moto::start_on(port);
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    common::eventually("the archive after restart", 120, async || {
        server
            .logs
            .join(".archive/done/job-7#1.json")
            .exists()
            .then_some(())
    })
    .await;
    assert_eq!(
        keys(&s3, BUCKET).await,
        std::slice::from_ref(&key),
        "one object, no duplicate"
    );
    let text = String::from_utf8(gunzipped(&s3, BUCKET, &key).await).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let entries: Vec<&Value> = lines.iter().filter(|l| l["step"] == "run").collect();
    assert_eq!(entries.len(), 1_000, "nothing lost");
    for (i, l) in entries.iter().enumerate() {
        assert_eq!(l["line"], noisy(i as u64));
        assert_eq!(l["seq"], i as u64 + 1);
    }
    assert!(!moved.exists(), "the local file goes once S3 has it");
    // The failures while S3 was down were written as server events, each one short line; the
    // job's API shows them beside the archived lines.
    let events = server.get_json("/api/jobs/job-7/steps/_server/logs").await;
    let events = events["logs"].as_str().unwrap();
    let failures: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|l| l.starts_with("failed to archive job logs to s3://sluice-logs/"))
        .collect();
    assert!(
        failures.iter().any(|f| f.ends_with("connection refused")),
        "{events}"
    );
    // (The job's API also merges the archived lines with these events by seq; until seqs
    // continue across a restart, the store issue's, events written after the restart can hide
    // archived lines of the same seq, so the full merge is not asserted here.)
    // While S3 was down the endpoint refused; a retry can also land in the moment between
    // the S3 server starting and this test creating the bucket.
    for f in failures {
        assert!(
            f.ends_with(": cannot reach the S3 endpoint: connection refused")
                || f.ends_with(": NoSuchBucket: The specified bucket does not exist"),
            "{f}"
        );
        assert!(f.len() < 250 && !f.contains('{'), "{f}");
    }
}

/// Sends `lines` for `source`, every one tagged `job_id: job_id`.
async fn send_tagged(server: &Server, source: &str, job_id: &str, lines: &[&str]) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = lines
        .iter()
        .map(|l| {
            let mut e = Envelope::new(source, l.to_string());
            e.tags.insert("job_id".into(), job_id.into());
            e
        })
        .collect();
    conn.send_batch(&batch).await.unwrap();
}

async fn complete(server: &Server, source: &str) -> Value {
    let (status, done) = server
        .post_json(
            &format!("/api/v1/sources/{source}/complete"),
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    done
}

/// The `line`s of a job as its API reads them.
async fn job_lines(server: &Server, source: &str) -> Vec<String> {
    let logs = server.get_json(&format!("/api/jobs/{source}/logs")).await;
    logs["logs"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_keys_never_collide_and_no_job_reads_another_jobs_lines() {
    let moto = Moto::start_on(free_tcp_port());
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let mut server = Server::start(&config(&moto.endpoint(), false));
    // Two sources whose job_id tags are equal, completed in the same second; and a job completed
    // twice in that second.
    send_tagged(&server, "job-a", "42", &["a1", "a2"]).await;
    send_tagged(&server, "job-b", "42", &["b1"]).await;
    send_tagged(&server, "twice", "twice", &["t1"]).await;
    let a = complete(&server, "job-a").await;
    let b = complete(&server, "job-b").await;
    let t1 = complete(&server, "twice").await;
    send_tagged(&server, "twice", "twice", &["t2", "t3"]).await;
    let t2 = complete(&server, "twice").await;
    let mut wanted: Vec<String> = [&a, &b, &t1, &t2]
        .iter()
        .map(|d| d["archive"]["key"].as_str().unwrap().to_owned())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = wanted.iter().collect();
    assert_eq!(distinct.len(), 4, "{wanted:?}");
    // Strøm's key for the first, `.2` before `.jsonl.gz` for a key already taken.
    let (ka, kb) = (wanted[0].clone(), wanted[1].clone());
    assert!(ka.ends_with("_42.jsonl.gz"), "{ka}");
    if ka.rsplit('/').next().unwrap()[..19] == kb.rsplit('/').next().unwrap()[..19] {
        assert_eq!(kb, ka.replace("_42.jsonl.gz", "_42.2.jsonl.gz"));
    }
    // Nothing more was logged since: no empty object for a third completion.
    let t3 = complete(&server, "twice").await;
    assert!(t3["archive"].is_null(), "{t3}");

    wanted.sort();
    common::eventually("four objects", 120, async || {
        (keys(&s3, BUCKET).await == wanted).then_some(())
    })
    .await;
    common::eventually("the records to be done", 60, async || {
        std::fs::read_dir(server.logs.join(".archive/pending"))
            .unwrap()
            .next()
            .is_none()
            .then_some(())
    })
    .await;
    for (source, lines) in [
        ("job-a", vec!["a1", "a2"]),
        ("job-b", vec!["b1"]),
        ("twice", vec!["t1", "t2", "t3"]),
    ] {
        assert_eq!(job_lines(&server, source).await, lines, "{source}");
    }
    // After a restart, every completion still reads back: the done records list them all.
    server.crash_and_restart();
    assert_eq!(job_lines(&server, "twice").await, ["t1", "t2", "t3"]);
    send_tagged(&server, "twice", "twice", &["t4"]).await;
    let t4 = complete(&server, "twice").await;
    let k4 = t4["archive"]["key"].as_str().unwrap().to_owned();
    assert!(!wanted.contains(&k4), "{k4}");
    wanted.push(k4);
    wanted.sort();
    common::eventually("the fifth object", 120, async || {
        (keys(&s3, BUCKET).await == wanted).then_some(())
    })
    .await;
    common::eventually("its record to be done", 60, async || {
        server
            .logs
            .join(".archive/done/twice#3.json")
            .exists()
            .then_some(())
    })
    .await;
    // (Reading t4 beside t1..t3 needs seqs that continue across the restart: today they start
    // again at 1, and the merge by seq would hide t1. That is the store issue's to fix.)
    let object = gunzipped(
        &s3,
        BUCKET,
        wanted.iter().find(|k| k.contains("twice")).unwrap(),
    )
    .await;
    assert!(!object.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_rotates_many_times_is_read_and_archived_whole() {
    let moto = Moto::start_on(free_tcp_port());
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    // Small files, three kept: 600 lines rotate about 25 times.
    let server = Server::start(&format!(
        "log_storage:\n  local_dir: {{logs}}\n  max_file_size_bytes: 4096\n  max_files: 3\n  s3:\n    bucket: {BUCKET}\n    endpoint: {}\n",
        moto.endpoint()
    ));
    send(&server, "job-r", 600).await;
    let run_lines = |text: &str| -> Vec<u64> {
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["step"] == "run")
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    };
    // While it runs, every line reads back: the rotated-out files wait for the archive.
    let running = common::eventually("every line on disk", 30, async || {
        let logs = server.get_json("/api/jobs/job-r/logs").await;
        let seqs = run_lines(logs["logs"].as_str().unwrap());
        (seqs.len() == 600).then_some(seqs)
    })
    .await;
    assert_eq!(running, (1..=600).collect::<Vec<_>>());
    assert!(server.metric("sluice_persister_rotations_total").await >= 10);
    let (status, done) = server
        .post_json(
            "/api/v1/sources/job-r/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let key = done["archive"]["key"].as_str().unwrap().to_owned();
    common::eventually("the archive", 60, async || {
        server
            .logs
            .join(".archive/done/job-r#1.json")
            .exists()
            .then_some(())
    })
    .await;
    let text = String::from_utf8(gunzipped(&s3, BUCKET, &key).await).unwrap();
    assert_eq!(
        run_lines(&text),
        (1..=600).collect::<Vec<_>>(),
        "every line"
    );
    assert_eq!(
        server.metric("sluice_persister_deleted_lines_total").await,
        0
    );
    assert!(
        !server.logs.join(".archive/segments/job-r").exists(),
        "the segments went with the archive"
    );
}

/// The seqs of the next `n` JSON messages of a WebSocket.
async fn next_seqs(ws: &mut common::Ws, n: usize) -> Vec<u64> {
    common::next_json(ws, n)
        .await
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_archiving_and_a_restart_every_read_comes_back_from_s3() {
    let moto = Moto::start_on(free_tcp_port());
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let mut server = Server::start(&config(&moto.endpoint(), false));
    send(&server, "job-s", 300).await;
    let (status, done) = server
        .post_json(
            "/api/v1/sources/job-s/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    common::eventually("the archive", 60, async || {
        server
            .logs
            .join(".archive/done/job-s#1.json")
            .exists()
            .then_some(())
    })
    .await;
    assert!(
        !server.logs.join(".archive/files/job-s#1").exists(),
        "local files gone"
    );
    server.stop_and_restart();

    // Only S3 has the lines now; the list says so.
    let list = server.get_json("/api/v1/sources").await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source_id"] == "job-s")
        .expect("a source only S3 holds is listed");
    assert_eq!(listed["lines_in"], json!(["s3"]), "{listed}");
    let stats = server.get_json("/api/v1/sources/job-s/stats").await;
    assert_eq!(stats["published"], 300, "{stats}");
    let recent = server
        .get_json("/api/v1/sources/job-s/recent?limit=5")
        .await;
    let seqs: Vec<u64> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (296..=300).collect::<Vec<_>>());
    assert_eq!(recent[4]["message"], noisy(299));
    let out = common::output_ok(std::process::Command::new(common::SLUICE).args([
        "logs",
        "job-s",
        "--recent",
        "-n",
        "1000",
        "--json",
        "--http",
        &server.http,
    ]));
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 300);
    assert_eq!(printed[0]["message"], noisy(0));
    let ws = |path: &str| server.ws(path);
    let (mut backfilled, _) = connect_async(ws("/api/v1/sources/job-s/stream?backfill=10"))
        .await
        .unwrap();
    let (mut resumed, _) = connect_async(ws("/api/v1/sources/job-s/stream?since_seq=100"))
        .await
        .unwrap();
    let (mut job, _) = connect_async(ws("/api/jobs/job-s/logs/stream"))
        .await
        .unwrap();
    assert_eq!(
        next_seqs(&mut backfilled, 10).await,
        (291..=300).collect::<Vec<_>>()
    );
    assert_eq!(
        next_seqs(&mut resumed, 200).await,
        (101..=300).collect::<Vec<_>>()
    );
    assert_eq!(
        next_seqs(&mut job, 300).await,
        (1..=300).collect::<Vec<_>>()
    );
    // And on, live: the job's next line continues its seqs.
    send(&server, "job-s", 1).await;
    for ws in [&mut backfilled, &mut resumed, &mut job] {
        assert_eq!(next_seqs(ws, 1).await, [301]);
    }

    // S3 out of reach: a read that needs it says so, as 503 (try again later).
    drop(moto);
    let resp = server
        .client
        .get(server.url("/api/v1/sources/job-s/recent?limit=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "cannot read the stored lines of \"job-s\": cannot read s3://sluice-logs/"
        ) && error.ends_with("cannot reach the S3 endpoint: connection refused"),
        "{error}"
    );
}

/// A job only S3 holds is read as the object downloads: the server never holds the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_job_read_back_from_s3_streams_in_bounded_memory() {
    let moto = Moto::start_on(free_tcp_port());
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let server = Server::start(&config(&moto.endpoint(), false));
    // 64 MiB of a job's lines, as an earlier run of the persister wrote them.
    const LINES: u64 = 320_000;
    let path = server.logs.join("big-job.jsonl");
    common::write_big_job(&path, LINES);
    let (status, done) = server
        .post_json(
            "/api/v1/sources/big-job/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    common::eventually("the archive", 120, async || {
        let record = server.logs.join(".archive/done/big-job#1.json");
        record.exists().then_some(())
    })
    .await;
    assert!(!path.exists(), "only S3 has the lines");
    let before = server.peak_rss_bytes();

    let got = common::JobLogCount::read(&server, "big-job", async |_| {}).await;
    let tail = String::from_utf8_lossy(&got.tail);
    assert_eq!(got.lines, LINES, "{tail}");
    assert!(got.bytes > 64 << 20, "{} bytes", got.bytes);
    assert!(
        tail.contains(&format!("{} {LINES}", common::BIG_PAD)),
        "{tail}"
    );
    let growth = server.peak_rss_bytes().saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "reading a 64 MiB job from S3 grew peak RSS by {} MiB",
        growth >> 20
    );
}

/// `/readyz` says "not ready" once archive uploads have failed for
/// `unready_after_failing_secs`, with the reason, and "ready" once one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_uploads_keep_failing_and_recovers_when_one_succeeds() {
    let port = free_tcp_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start(&format!(
        "{}    unready_after_failing_secs: 1\n",
        config(&endpoint, false)
    ));
    let readyz = async || {
        let resp = reqwest::get(server.url("/readyz")).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(readyz().await, (200, "ready\n".to_owned()));
    send(&server, "job-r", 10).await;
    let (status, _) = server
        .post_json(
            "/api/v1/sources/job-r/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = common::eventually("readyz to fail", 30, async || {
        let (status, body) = readyz().await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready:\n")
            && body.contains("archive uploads to s3://sluice-logs have failed for")
            && body.contains("unready_after_failing_secs: 1"),
        "{body}"
    );
    // S3 comes up: the retry succeeds and the server is ready again.
    let moto = Moto::start_on(port);
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    common::eventually("readyz to recover", 120, async || {
        (readyz().await.0 == 200).then_some(())
    })
    .await;
}

/// Sends `n` short lines to `source`, with `job_id` and the workspace and task tags when given,
/// or with no tags at all.
async fn send_lines_tagged(server: &Server, source: &str, job_id: Option<&str>, n: u64) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..n)
        .map(|i| {
            let mut e = Envelope::new(source, format!("line {i}"));
            if let Some(job_id) = job_id {
                e.tags.insert("workspace".into(), "acme".into());
                e.tags.insert("task".into(), "nightly-build".into());
                e.tags.insert("job_id".into(), job_id.into());
            }
            e
        })
        .collect();
    conn.send_batch(&batch).await.unwrap();
    server.wait_published(source, n).await;
}

async fn completed_key(server: &Server, source: &str) -> String {
    let done = complete(server, source).await;
    done["archive"]["key"].as_str().unwrap().to_owned()
}

/// The key takes each tag from the newest line that had it, whatever came after: lines without
/// tags, Sluice's own notices, the router forgetting the source, a crash. (Lines on disk keep
/// no tags: the persister keeps the key's beside them, until the job is archived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_key_keeps_the_jobs_tags_across_forgetting_untagged_lines_and_a_crash() {
    // S3 is down throughout: keys are chosen at completion, the uploads wait.
    let endpoint = format!("http://127.0.0.1:{}", free_tcp_port());
    let mut server = Server::start(&format!(
        "router:\n  forget_idle_secs: 1\n{}",
        config(&endpoint, false)
    ));
    let dated = |key: &str, job: &str| {
        key.starts_with("logs/acme/nightly-build/") && key.ends_with(&format!("_{job}.jsonl.gz"))
    };
    let kept = |source: &str| server.logs.join(format!(".tags/{source}.json"));

    // Forgotten (idle, on disk, unread), then completed: the router holds nothing of it. Once
    // archived, the job leaves no tags behind.
    send_lines_tagged(&server, "build-1", Some("job-1"), 50).await;
    send_lines_tagged(&server, "build-2", Some("job-2"), 50).await;
    server
        .wait_metric("sluice_router_sources_forgotten_total", 2)
        .await;
    assert!(kept("build-1").exists());
    let key = completed_key(&server, "build-1").await;
    assert!(dated(&key, "job-1"), "{key}");
    assert!(!kept("build-1").exists());

    // Untagged lines after tagged ones, then a crash: the ring's newest lines have no tags, and
    // after the restart no line in memory has any.
    send_lines_tagged(&server, "build-2", None, 20).await;
    server.crash_and_restart();
    send_lines_tagged(&server, "build-2", None, 5).await;
    let key = completed_key(&server, "build-2").await;
    assert!(dated(&key, "job-2"), "{key}");

    // A drain that cannot connect: its failure notice is the job's newest line.
    send_lines_tagged(&server, "build-3", Some("job-3"), 10).await;
    let url = format!("syslog://127.0.0.1:{}", free_tcp_port());
    let (status, view) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "build-3", "url": url}),
        )
        .await;
    assert_eq!(status, 201, "{view}");
    send_lines_tagged(&server, "build-3", None, 1).await;
    common::eventually("the drain's failure notice", 60, async || {
        let notices = server.router_notices("build-3").await;
        notices
            .iter()
            .any(|n| n.starts_with("failed to connect to syslog drain"))
            .then_some(())
    })
    .await;
    let key = completed_key(&server, "build-3").await;
    assert!(dated(&key, "job-3"), "{key}");

    // The same source again, a new job id: the new tags.
    send_lines_tagged(&server, "build-1", Some("job-1b"), 3).await;
    let key = completed_key(&server, "build-1").await;
    assert!(dated(&key, "job-1b"), "{key}");

    // A source whose lines never had tags takes the documented defaults.
    send_lines_tagged(&server, "plain", None, 3).await;
    let key = completed_key(&server, "plain").await;
    assert!(
        key.starts_with("logs/default/default/") && key.ends_with("_plain.jsonl.gz"),
        "{key}"
    );
}
