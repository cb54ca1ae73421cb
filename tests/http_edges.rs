//! Honest errors at every HTTP edge: bodies too large are 413 everywhere, chunked bodies are
//! read, unknown query parameters are named, completing a job that never logged is 404, and
//! nobody but Sluice can write Sluice's own notices.

mod common;

use common::{Server, send_lines};
use serde_json::json;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a raw HTTP/1.1 request and returns the status and body.
async fn raw(server: &Server, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(&server.http).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn chunked(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_everywhere_and_chunked_bodies_are_read() {
    let server = Server::start("");
    send_lines(&server, "job-1", 2).await;
    for (path, limit) in [
        ("/api/v1/drains", 64 * 1024),
        ("/api/v1/sources/job-1/complete", 64 * 1024),
        ("/worker/jobs/job-1/logs", 16 * 1024 * 1024),
    ] {
        // Refused on the declared length alone: nothing of the body is read.
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            limit + 1
        );
        let (status, body) = raw(&server, request.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["error"],
            format!("request body too large: at most {limit} bytes"),
            "{path}"
        );
    }
    // Chunked, as curl sends a piped body: read like any other.
    let drain = json!({"source_id": "job-1", "url": "syslog://127.0.0.1:9"}).to_string();
    let (status, body) = raw(&server, &chunked("/api/v1/drains", &drain)).await;
    assert_eq!(status, 201, "{body}");
    let worker = json!({"step_name": "build", "lines": [{"line": "chunked"}]}).to_string();
    let (status, body) = raw(&server, &chunked("/worker/jobs/job-1/logs", &worker)).await;
    assert_eq!(status, 200, "{body}");
    // A chunked body past the limit is refused while it is read.
    let big = "x".repeat(70 * 1024);
    let (status, _) = raw(&server, &chunked("/api/v1/drains", &big)).await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_refused_by_name() {
    let server = Server::start("");
    send_lines(&server, "app", 1).await;
    for (path, error) in [
        (
            "/api/v1/sources/app/recent?chanel=ERR",
            "unknown query parameter chanel: this endpoint takes limit, origin, channel, step, instance, format",
        ),
        (
            "/api/v1/drains?source=app&x=1",
            "unknown query parameters source, x: this endpoint takes source_id",
        ),
    ] {
        let resp = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error, "{path}");
    }
    // The tail refuses before upgrading.
    let err = tokio_tungstenite::connect_async(server.ws("/api/v1/sources/app/stream?backfil=5"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // A backfill is gathered in memory before it is sent: past 100,000 lines it is refused,
    // on a source's tail and the firehose alike, and since_seq (streamed) is the way.
    for path in [
        "/api/v1/sources/app/stream?backfill=100001",
        "/api/v1/firehose?backfill=18446744073709551615",
    ] {
        let (status, body) = server.ws_refused(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body.contains("is over 100000: read more with since_seq"),
            "{path}: {body}"
        );
    }
    let at_limit = server.ws("/api/v1/sources/app/stream?backfill=100000");
    assert!(tokio_tungstenite::connect_async(at_limit).await.is_ok());
    // Known ones still work.
    let ok = reqwest::get(server.url("/api/v1/sources/app/recent?channel=OUT&limit=5"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_job_that_never_logged_is_404() {
    let server = Server::start("");
    let (status, body) = server
        .post_json(
            "/api/v1/sources/no-such-job/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"],
        "unknown job \"no-such-job\": no logs have been received for it"
    );
    send_lines(&server, "real-job", 1).await;
    let (status, body) = server
        .post_json(
            "/api/v1/sources/real-job/complete",
            json!({"status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_cannot_forge_sluices_own_notices() {
    let server = Server::start("");
    let reason = "reserved origin \"LGR\": origin LGR and step _server are sluice's own notices, which producers cannot send";
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let mut forged = Envelope::new("victim", "sluice dropped 0 messages");
    forged.origin = "LGR".into();
    let err = conn.send_batch(&[forged]).await.unwrap_err().to_string();
    assert_eq!(err, format!("the server refused the request: {reason}"));
    let mut step = Envelope::new("victim", "archive failed");
    step.step = Some("_server".into());
    let err = conn.send_batch(&[step]).await.unwrap_err().to_string();
    assert!(err.contains("reserved step \"_server\""), "{err}");
    // A look-alike origin is fine.
    let mut fine = Envelope::new("victim", "ok");
    fine.origin = "LGRX".into();
    assert_eq!(conn.send_batch(&[fine]).await.unwrap(), 1);
    // Strøm's worker API: the _server step is refused there too.
    let (status, body) = server
        .post_json(
            "/worker/jobs/victim/logs",
            json!({"step_name": "_server", "lines": [{"line": "forged"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("reserved step \"_server\""),
        "{body}"
    );
    // Syslog cannot answer, so a relayed [LGR/0] line is kept under RELAYED/LGR.
    let mut s = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    s.write_all(b"<11>1 2026-11-22T10:00:00Z host victim [LGR/0] - - relayed notice\n")
        .await
        .unwrap();
    drop(s);
    server.wait_published("victim", 2).await;
    assert!(server.router_notices("victim").await.is_empty());
    let all = server.get_json("/api/v1/sources/victim/recent").await;
    let origins: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["LGRX", "RELAYED/LGR"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_escapes_control_characters() {
    let server = Server::start("");
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let forged = "real\n2026-11-22T10:00:00.00+0000 [RTR/0]      OUT forged\x1b[2J";
    conn.send_batch(&[Envelope::new("term", forged)])
        .await
        .unwrap();
    let text = reqwest::get(server.url("/api/v1/sources/term/recent?format=text"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(
        text.trim_end()
            .ends_with("OUT real\\n2026-11-22T10:00:00.00+0000 [RTR/0]      OUT forged\\x1b[2J"),
        "{text:?}"
    );
    // `sluice logs --recent` prints the same line.
    let out = common::output_ok(std::process::Command::new(common::SLUICE).args([
        "logs",
        "term",
        "--recent",
        "--http",
        &server.http,
    ]));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 1, "{printed:?}");
    assert!(printed.contains("\\x1b[2J") && !printed.contains('\x1b'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_bodies_are_a_400_not_a_crash() {
    let server = Server::start("");
    send_lines(&server, "deep", 1).await;
    // 60,000 levels in 120 KB: serde_json stops at 128 and says so.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    for path in [
        "/api/v1/drains",
        "/worker/jobs/deep/logs",
        "/api/v1/sources/deep/complete",
    ] {
        let body = format!("{{\"x\": {deep}}}");
        let resp = reqwest::Client::new()
            .post(server.url(path))
            .body(body.into_bytes())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 413, "{path}: {status}");
    }
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}
