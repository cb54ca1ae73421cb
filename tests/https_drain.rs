//! `https://` and `https-batch://` drains into a real HTTPS server (Python's http.server over
//! TLS), with certificate checks.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::tls::Certs;
use common::{Server, send_lines};
use serde_json::{Value, json};

struct Sink {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Sink {
    fn start(certs: &Certs, status: u16) -> Sink {
        let out = certs
            .dir
            .join(format!("posts-{status}-{}.jsonl", rand_suffix()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/https_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([&certs.cert, &certs.key, &out])
            .arg(status.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Sink {
            child,
            port: line.trim().parse().expect("the sink prints its port"),
            out,
        }
    }

    fn posts(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .map(|s| {
                s.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    common::eventually(what, 30, async || done().then_some(())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drains_post_each_message_or_batches_of_them() {
    let certs = Certs::generate();
    let single = Sink::start(&certs, 200);
    let batched = Sink::start(&certs, 200);
    let server = Server::start("");
    let ca = certs.ca.display().to_string();
    for url in [
        format!(
            "https://user:secret@localhost:{}/ingest?token=abc",
            single.port
        ),
        format!("https-batch://localhost:{}/bulk", batched.port),
    ] {
        let (status, view) = server
            .post_json(
                "/api/v1/drains",
                json!({"source_id": "web", "url": url, "tls": {"ca_file": ca}}),
            )
            .await;
        assert_eq!(status, 201, "{view}");
        assert!(
            !view.to_string().contains("secret") && !view.to_string().contains("abc"),
            "{view}"
        );
    }
    const N: usize = 50;
    send_lines(&server, "web", N).await;

    wait_until("single posts", || single.posts().len() >= N).await;
    let posts = single.posts();
    assert_eq!(posts.len(), N, "one POST per message");
    for (i, p) in posts.iter().enumerate() {
        assert_eq!(p["path"], "/ingest?token=abc");
        assert_eq!(p["content_type"], "text/plain; charset=utf-8");
        let body = p["body"].as_str().unwrap();
        assert!(
            body.starts_with("<14>1 ")
                && body.ends_with(&format!(" web web [APP/0] - - line {i}\n")),
            "{body}"
        );
    }

    let lines = |sink: &Sink| -> Vec<String> {
        sink.posts()
            .iter()
            .flat_map(|p| {
                p["body"]
                    .as_str()
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_until("batched lines", || lines(&batched).len() >= N).await;
    let all = lines(&batched);
    assert_eq!(all.len(), N);
    assert!(
        batched.posts().len() < N,
        "messages were joined into batches"
    );
    for (i, line) in all.iter().enumerate() {
        assert!(
            line.ends_with(&format!(" web web [APP/0] - - line {i}")),
            "{line}"
        );
    }
    assert!(batched.posts().iter().all(|p| p["path"] == "/bulk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drains_check_certificates_and_report_refusals() {
    let certs = Certs::generate();
    let failing = Sink::start(&certs, 500);
    let trusted = Sink::start(&certs, 200);
    let server = Server::start(
        "drains:\n  delivery:\n    reconnect_min_millis: 20\n    reconnect_max_millis: 1000\n",
    );
    // No CA given: the system's CAs do not know the test CA.
    let (status, _) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "api", "url": format!("https://localhost:{}/", trusted.port)}),
        )
        .await;
    assert_eq!(status, 201);
    // A receiver that answers 500.
    let (status, _) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "api", "url": format!("https://localhost:{}/x", failing.port), "tls": {"ca_file": certs.ca}}),
        )
        .await;
    assert_eq!(status, 201);
    send_lines(&server, "api", 1).await;
    common::until("both drains' failure notices", 30, async || {
        let n = server.router_notices("api").await;
        let unverified = n.iter().any(|m| {
            m.starts_with(&format!(
                "failed to connect to syslog drain https://localhost:{}/: ",
                trusted.port
            )) && m.contains("certificate")
        });
        let refused = n.contains(&format!("failed to deliver to syslog drain https://localhost:{}/x: HTTP 500 Internal Server Error", failing.port));
        if unverified && refused { Ok(()) } else { Err(n) }
    })
    .await;
    assert!(
        trusted.posts().is_empty(),
        "nothing went to a server whose certificate did not verify"
    );
    assert!(
        !failing.posts().is_empty(),
        "the failing receiver was tried, and is retried"
    );
}
