//! `POST /api/v1/ingest` against a real `sluice serve`: NDJSON, JSON arrays and MessagePack in;
//! `ack=durable` answered only once the lines are in the source's file; bad and oversized
//! bodies refused whole, with a reason, costing nothing already accepted.

mod common;

use common::Server;
use serde_json::{Value, json};
use sluice_router::Envelope;

async fn post(server: &Server, query: &str, kind: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = server
        .client
        .post(server.url(&format!("/api/v1/ingest{query}")))
        .header("content-type", kind)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn messages(server: &Server, source: &str) -> Vec<String> {
    server
        .get_json(&format!("/api/v1/sources/{source}/recent"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_arrays_and_msgpack_are_ingested_with_their_fields() {
    let server = Server::start("");
    let nd = concat!(
        r#"{"source_id":"web","message":"GET / 200","origin":"RTR","instance_id":"1","tags":{"k":"v"}}"#,
        "\n",
        r#"{"source_id":"web","message":"boom","channel":"stderr","step":"build","timestamp":1700000000000000000}"#,
        "\n"
    );
    let (status, body) = post(&server, "", "application/x-ndjson", nd.into()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 2})));
    let recent = server.get_json("/api/v1/sources/web/recent").await;
    assert_eq!(recent[0]["origin"], "RTR");
    assert_eq!(recent[0]["instance_id"], "1");
    assert_eq!(recent[0]["tags"]["k"], "v");
    assert_eq!(recent[1]["channel"], "ERR");
    assert_eq!(recent[1]["timestamp"], 1_700_000_000_000_000_000i64);
    assert_eq!(recent[1]["seq"], 2);

    // A tail's own output can be sent again: `seq` is ignored, the router assigns it.
    let again = serde_json::to_vec(&json!([recent[0]])).unwrap();
    let (status, _) = post(&server, "", "application/json", again).await;
    assert_eq!(status, 200);
    assert_eq!(
        messages(&server, "web").await,
        ["GET / 200", "boom", "GET / 200"]
    );

    let mut packed = bytes::BytesMut::new();
    sluice_router::codec::encode_batch(
        &[Envelope::new("mp", "one"), Envelope::new("mp", "two")],
        &mut packed,
    );
    let (status, body) = post(&server, "", "application/msgpack", packed.to_vec()).await;
    assert_eq!((status, &body), (200, &json!({"accepted": 2})));
    assert_eq!(messages(&server, "mp").await, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_durable_answers_once_the_lines_are_on_disk() {
    let server = Server::start("");
    let lines: Vec<Value> = (0..500)
        .map(|i| json!({"source_id": "durable", "message": format!("line {i}")}))
        .collect();
    let (status, body) = post(
        &server,
        "?ack=durable",
        "application/json",
        serde_json::to_vec(&lines).unwrap(),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"accepted": 500})));
    // Answered: every line is in the file already, without waiting.
    let file = std::fs::read_to_string(server.logs.join("durable.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 500);
    assert!(file.contains("\"line\":\"line 499\""), "{file}");
    let (status, body) = post(&server, "?ack=maybe", "application/json", b"[]".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ack=durable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_whole_with_a_reason() {
    let server = Server::start("ingest:\n  max_frame_bytes: 4096\n  max_batch_envelopes: 3\n");
    let refused = async |query: &str, kind: &str, body: Vec<u8>, status: u16, says: &str| {
        let (got, answer) = post(&server, query, kind, body).await;
        assert_eq!(got, status, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{error}");
    };
    // The second line is bad: nothing of the request is published.
    refused(
        "",
        "application/x-ndjson",
        b"{\"source_id\":\"bad\",\"message\":\"ok\"}\n{\"source_id\":\"bad\",\"mesage\":\"typo\"}"
            .to_vec(),
        400,
        "line 2: unknown field `mesage`",
    )
    .await;
    refused(
        "",
        "application/x-ndjson",
        b"{\"source_id\":\"bad\",\"message\":\"ok\"}\n{\"source_id\":\"bad\",\"origin\":\"LGR\"}"
            .to_vec(),
        400,
        "envelope 1: reserved origin",
    )
    .await;
    refused(
        "",
        "application/x-ndjson",
        b"not json".to_vec(),
        400,
        "line 1:",
    )
    .await;
    refused(
        "",
        "application/json",
        b"[{\"source_id\": 5}]".to_vec(),
        400,
        "invalid JSON array",
    )
    .await;
    refused(
        "",
        "application/msgpack",
        b"\xc1".to_vec(),
        400,
        "invalid MessagePack",
    )
    .await;
    refused(
        "",
        "application/x-ndjson",
        b"\n".to_vec(),
        400,
        "no envelopes",
    )
    .await;
    // Nested past any sense: refused at the first bracket the envelope's shape does not allow
    // (typed fields; serde_json's depth limit stands behind that).
    let deep = [&b"{\"source_id\":\"bad\",\"tags\":"[..], &[b'['; 4000]].concat();
    refused(
        "",
        "application/x-ndjson",
        deep,
        400,
        "line 1: invalid type",
    )
    .await;
    refused(
        "",
        "application/x-ndjson",
        b"{\"source_id\":\"has space\"}".to_vec(),
        400,
        "invalid source_id",
    )
    .await;
    // Over ingest.max_frame_bytes, and over ingest.max_batch_envelopes.
    refused(
        "",
        "application/x-ndjson",
        vec![b' '; 5000],
        413,
        "at most 4096 bytes",
    )
    .await;
    let four = "{\"source_id\":\"bad\"}\n".repeat(4).into_bytes();
    refused(
        "",
        "application/x-ndjson",
        four,
        413,
        "ingest.max_batch_envelopes",
    )
    .await;
    let four = serde_json::to_vec(&vec![json!({"source_id": "bad"}); 4]).unwrap();
    refused(
        "",
        "application/json",
        four,
        413,
        "ingest.max_batch_envelopes",
    )
    .await;
    // Nothing of any of them was published: the source does not even exist.
    let recent = server.get_json("/api/v1/sources/bad/recent").await;
    assert!(
        recent["error"].as_str().unwrap().contains("unknown source"),
        "{recent}"
    );
    // And the server goes on.
    let (status, _) = post(
        &server,
        "",
        "application/x-ndjson",
        b"{\"source_id\":\"bad\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(server.metric("sluice_ingest_refused_envelopes_total").await >= 9);
    assert_eq!(server.metric("sluice_http_ingest_envelopes_total").await, 1);
}

/// Large bodies are paid for from `ingest.buffer_budget_bytes` before they are read: clients
/// that each start the largest body and stall hold the budget, not the server's memory, and the
/// one that finds no room is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_bodies_hold_the_budget_and_the_next_is_told_to_retry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MIB: usize = 1024 * 1024;
    let server = Server::start(
        "ingest:\n  max_frame_bytes: 1048576\n  max_batch_envelopes: 1000\n  buffer_budget_bytes: 2621440\n  frame_timeout_secs: 1\nsyslog:\n  max_frame_bytes: 1048576\n",
    );
    let start = |len: usize| {
        let http = server.http.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&http).await.unwrap();
            let head = format!(
                "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n{{\"source_id\":\"big\",\"message\":\""
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s
        }
    };
    // Three bodies of 1 MiB, their senders stalled: two take 2 of the 2.5 MiB, and the one
    // that finds no room (whichever came last) is answered 503 with the reason once
    // frame_timeout_secs has passed. The other two wait for their bodies, unanswered.
    let [mut a, mut b, mut c] = [start(MIB).await, start(MIB).await, start(MIB).await];
    let mut bufs = [[0u8; 4096]; 3];
    let first = {
        let [ba, bb, bc] = &mut bufs;
        let answer = async {
            tokio::select! {
                n = a.read(ba) => (0, n),
                n = b.read(bb) => (1, n),
                n = c.read(bc) => (2, n),
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), answer)
            .await
            .expect("one is answered")
    };
    let (which, n) = (first.0, first.1.unwrap());
    let answer = String::from_utf8_lossy(&bufs[which][..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("ingest.buffer_budget_bytes"), "{answer}");
    // Small bodies need no budget and go through meanwhile.
    let (status, _) = post(
        &server,
        "",
        "application/x-ndjson",
        b"{\"source_id\":\"small\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
}
