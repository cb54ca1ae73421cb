//! Tokens with scopes through the binary: every endpoint with no token, a token of the wrong
//! scope or sources, and the right one; WebSocket tails with a subprotocol or query token;
//! native ingest's `auth=TOKEN`; the CLI's `--token` and `SLUICE_TOKEN`; drains to this machine
//! for operators only.

mod common;

use std::process::{Command, Stdio};

use common::{SLUICE, Server};
use serde_json::json;
use sluice::auth::hash_hex;
use sluice::client::{IngestAddr, connect_ingest_as};
use sluice_router::Envelope;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OPS: &str = "ops-token-0123456789";
const READER: &str = "reader-token-0123456789";
const INGESTER: &str = "ingester-token-0123456789";

fn server() -> Server {
    Server::start(&format!(
        r#"auth:
  tokens:
    - name: ops
      sha256: "{}"
      scopes: [operator]
    - name: reader
      sha256: "{}"
      scopes: [read]
      sources: ["app-*"]
    - name: ingester
      sha256: "{}"
      scopes: [ingest]
      sources: ["app-*"]
"#,
        hash_hex(OPS),
        hash_hex(READER),
        hash_hex(INGESTER)
    ))
}

/// Status and body of a request with `token` as a bearer token (none: no header).
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut req = server
        .client
        .request(method.parse().unwrap(), server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 401 {
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"sluice\"",
            "{method} {path}"
        );
    }
    (status, resp.text().await.unwrap())
}

async fn ws_status(server: &Server, path: &str, protocol: Option<&str>) -> u16 {
    let mut req = server.ws(path).into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match connect_async(req).await {
        Ok((_, resp)) => {
            if let Some(p) = protocol {
                // A subprotocol offered is a subprotocol answered, or browsers drop the socket.
                assert_eq!(resp.headers()["sec-websocket-protocol"], p);
            }
            resp.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_with_no_token_the_wrong_scope_and_the_right_one() {
    let server = server();
    // Something to read: one line of app-1, sent with the ingest token.
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/ingest",
        Some(INGESTER),
        Some(r#"{"source_id":"app-1","message":"hello"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // (method, path, body, wrong token, right token)
    let cases: &[(&str, &str, Option<&str>, &str, &str)] = &[
        ("GET", "/metrics", None, READER, OPS),
        ("GET", "/api/v1/sources", None, READER, OPS),
        (
            "GET",
            "/api/v1/sources/app-1/recent",
            None,
            INGESTER,
            READER,
        ),
        ("GET", "/api/v1/sources/app-1/stats", None, INGESTER, READER),
        ("GET", "/api/jobs/app-1/logs", None, INGESTER, READER),
        (
            "GET",
            "/api/jobs/app-1/steps/x/logs",
            None,
            INGESTER,
            READER,
        ),
        (
            "POST",
            "/api/v1/ingest",
            Some(r#"{"source_id":"app-2","message":"x"}"#),
            READER,
            INGESTER,
        ),
        (
            "POST",
            "/worker/jobs/app-3/logs",
            Some(r#"{"step_name":"build","lines":[{"line":"compiling"}]}"#),
            READER,
            INGESTER,
        ),
        ("GET", "/api/v1/drains", None, INGESTER, OPS),
        (
            "POST",
            "/api/v1/sources/app-3/complete",
            Some(r#"{"status":"completed"}"#),
            READER,
            OPS,
        ),
        (
            "POST",
            "/worker/jobs/app-2/complete",
            Some(r#"{"status":"completed"}"#),
            INGESTER,
            OPS,
        ),
    ];
    for &(method, path, body, wrong, right) in cases {
        let (status, text) = call(&server, method, path, None, body).await;
        assert_eq!(status, 401, "{method} {path} without a token: {text}");
        assert!(text.contains("needs a token"), "{text}");
        let (status, text) = call(&server, method, path, Some("not-a-token"), body).await;
        assert_eq!(status, 401, "{method} {path} with an unknown token: {text}");
        assert!(text.contains("not one this server knows"), "{text}");
        let (status, text) = call(&server, method, path, Some(wrong), body).await;
        assert_eq!(status, 403, "{method} {path} with the wrong scope: {text}");
        assert!(text.contains("scope"), "{text}");
        let (status, text) = call(&server, method, path, Some(right), body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} with the right token: {status} {text}"
        );
    }
    // Sources outside a token's globs.
    let (status, text) = call(
        &server,
        "GET",
        "/api/v1/sources/db/recent",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(text.contains("does not cover source \\\"db\\\""), "{text}");
    let (status, text) = call(
        &server,
        "POST",
        "/api/v1/ingest",
        Some(INGESTER),
        Some("{\"source_id\":\"app-1\"}\n{\"source_id\":\"db\"}"),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("envelope 1: token \\\"ingester\\\" does not cover source"),
        "{text}"
    );
    // Health checks stay open.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(call(&server, "GET", path, None, None).await.0, 200);
    }

    // WebSocket tails: a subprotocol token (browsers), a query token, or neither.
    let stream = "/api/v1/sources/app-1/stream";
    assert_eq!(ws_status(&server, stream, None).await, 401);
    assert_eq!(
        ws_status(&server, stream, Some(&format!("bearer.{INGESTER}"))).await,
        403
    );
    assert_eq!(
        ws_status(&server, stream, Some(&format!("bearer.{READER}"))).await,
        101
    );
    assert_eq!(
        ws_status(&server, &format!("{stream}?token={READER}"), None).await,
        101
    );
    assert_eq!(
        ws_status(
            &server,
            "/api/v1/firehose",
            Some(&format!("bearer.{READER}"))
        )
        .await,
        403
    );
    assert_eq!(
        ws_status(&server, "/api/v1/firehose", Some(&format!("bearer.{OPS}"))).await,
        101
    );
    // Every WebSocket endpoint: no token, the wrong one, the right one.
    for (path, wrong, right) in [
        ("/api/v1/firehose", READER, OPS),
        ("/api/v1/sources/app-1/stream", INGESTER, READER),
        ("/api/jobs/app-1/logs/stream", INGESTER, READER),
    ] {
        assert_eq!(ws_status(&server, path, None).await, 401, "{path}");
        let wrong = format!("bearer.{wrong}");
        assert_eq!(ws_status(&server, path, Some(&wrong)).await, 403, "{path}");
        let right = format!("bearer.{right}");
        assert_eq!(ws_status(&server, path, Some(&right)).await, 101, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_are_a_readers_for_their_sources_and_this_machine_is_an_operators() {
    let server = server();
    let post = async |token: &str, body: serde_json::Value| {
        call(
            &server,
            "POST",
            "/api/v1/drains",
            Some(token),
            Some(&body.to_string()),
        )
        .await
    };
    // A reader of app-1 may drain it to another machine (TEST-NET-1: nothing answers).
    let (status, text) = post(
        READER,
        json!({"source_id": "app-1", "url": "syslog://192.0.2.1:514"}),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Not to this machine or its link, not every source, not another tenant's source.
    for (body, says) in [
        (
            json!({"source_id": "app-1", "url": "syslog://127.0.0.1:514"}),
            "needs an operator token",
        ),
        (
            json!({"source_id": "app-1", "url": "syslog://localhost:514"}),
            "needs an operator token",
        ),
        (
            json!({"source_id": "app-1", "url": "syslog://169.254.169.254:514"}),
            "needs an operator token",
        ),
        (
            json!({"source_id": "app-1", "url": "syslog://[::1]:514"}),
            "needs an operator token",
        ),
        (json!({"url": "syslog://192.0.2.1:514"}), "operator scope"),
        (
            json!({"source_id": "victim-app", "url": "syslog://192.0.2.1:514"}),
            "does not cover source",
        ),
    ] {
        let (status, text) = post(READER, body.clone()).await;
        assert_eq!(status, 403, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    // An operator may.
    let (status, text) = post(
        OPS,
        json!({"source_id": "app-1", "url": "syslog://127.0.0.1:514"}),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    // The reader sees and removes its source's drains; the list of all is an operator's.
    let (status, _) = call(
        &server,
        "GET",
        "/api/v1/drains?source_id=app-1",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&server, "GET", "/api/v1/drains", Some(READER), None).await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        "GET",
        &format!("/api/v1/drains/{id}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/v1/drains/{id}"),
        Some(INGESTER),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        "DELETE",
        &format!("/api/v1/drains/{id}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_ingest_and_the_cli_present_their_token() {
    let server = server();
    let addr = IngestAddr::Tcp(server.ingest.clone());
    // No token: the first batch closes the connection with the reason.
    let mut conn = connect_ingest_as(&addr, "ack=count", None).await.unwrap();
    let err = conn
        .send_batch(&[Envelope::new("app-1", "x")])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("send the control word auth=TOKEN first"),
        "{err}"
    );
    // An unknown token: closed with the reason.
    let mut conn = connect_ingest_as(&addr, "ack=count", Some("guess"))
        .await
        .unwrap();
    let err = conn
        .send_batch(&[Envelope::new("app-1", "x")])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not one this server knows"),
        "{err}"
    );
    // The ingest token: its sources accepted, others refused, the connection goes on.
    let mut conn = connect_ingest_as(&addr, "ack=count", Some(INGESTER))
        .await
        .unwrap();
    assert_eq!(
        conn.send_batch(&[Envelope::new("app-1", "a")])
            .await
            .unwrap(),
        1
    );
    let err = conn
        .send_batch(&[Envelope::new("db", "b")])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not cover source \"db\""),
        "{err}"
    );
    assert_eq!(
        conn.send_batch(&[Envelope::new("app-1", "c")])
            .await
            .unwrap(),
        1
    );
    // Events about a source need the same token as its lines.
    let exit = |source: &str| json!({"event": "exit", "source_id": source, "status": 0});
    let err = conn.send_event(&exit("db")).await.unwrap_err();
    assert!(
        err.to_string().contains("does not cover source \"db\""),
        "{err}"
    );
    assert_eq!(conn.send_event(&exit("app-1")).await.unwrap(), 1);
    let (status, notices) = call(
        &server,
        "GET",
        "/api/v1/sources/app-1/recent?origin=LGR",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let notices: serde_json::Value = serde_json::from_str(&notices).unwrap();
    assert_eq!(notices[0]["message"], "exited with status 0");
    let mut anonymous = connect_ingest_as(&addr, "ack=count", None).await.unwrap();
    let err = anonymous.send_event(&exit("app-1")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("send the control word auth=TOKEN first"),
        "{err}"
    );

    // `sluice emit --token` and `sluice logs` with SLUICE_TOKEN.
    let mut emit = Command::new(SLUICE)
        .args([
            "emit",
            "--source",
            "app-cli",
            "--ingest",
            &server.ingest,
            "--token",
            INGESTER,
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(emit.stdin.take().unwrap(), "from the cli").unwrap();
    }
    let out = emit.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = |token: Option<&str>| {
        let mut cmd = Command::new(SLUICE);
        cmd.args(["logs", "app-cli", "--recent", "--http", &server.http]);
        cmd.env_remove("SLUICE_TOKEN");
        if let Some(t) = token {
            cmd.env("SLUICE_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = logs(Some(READER));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the cli"));
    let out = logs(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sluice_token_prints_a_token_and_the_entry_that_accepts_it() {
    let out = Command::new(SLUICE)
        .args(["token", "--name", "ci", "--scopes", "ingest,read"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("token: ")
        .unwrap();
    assert!(
        text.contains(&format!("sha256: \"{}\"", hash_hex(token))),
        "{text}"
    );
    assert!(text.contains("scopes: [ingest, read]"), "{text}");
    let out = Command::new(SLUICE)
        .args(["token", "--scopes", "admin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
