//! Bad input on native ingest: each gets its documented answer, costs nothing already
//! accepted, and never disturbs other connections.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::Server;
use futures_util::StreamExt;
use sluice::client::{IngestAddr, IngestConnection, connect_ingest};
use sluice_router::Envelope;
use sluice_router::codec::{self, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Sends `bytes`, optionally closes the write side, and returns every reply the server sent
/// before it closed the connection (`None` if it kept the connection open).
async fn send_raw(server: &Server, bytes: &[u8], close_write: bool) -> Option<Vec<Reply>> {
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await {
        Err(_) => None,
        Ok(r) => {
            r.unwrap();
            let mut b = BytesMut::from(&buf[..]);
            let mut replies = Vec::new();
            while let Some(f) = codec::decode_frame(&mut b, 1 << 20).unwrap() {
                replies.push(codec::decode_exact(&f).unwrap());
            }
            Some(replies)
        }
    }
}

fn error(text: &str) -> Reply {
    Reply {
        accepted: 0,
        error: Some(text.to_owned()),
    }
}

/// The well-behaved neighbour: after every bad case, it still gets its batch accepted.
async fn still_fine(good: &mut IngestConnection, n: usize) {
    let batch = vec![Envelope::new("neighbour", format!("line {n}"))];
    assert_eq!(good.send_batch(&batch).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_own_connection_with_a_reason() {
    let server = Server::start("ingest:\n  max_frame_bytes: 1048576\n");
    let mut good = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let (mut tail, _) = connect_async(server.ws("/api/v1/sources/neighbour/stream"))
        .await
        .unwrap();
    still_fine(&mut good, 0).await;

    // Random bytes (an HTTP request on the wrong port): its first four bytes read as a length.
    let replies = send_raw(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    assert_eq!(
        replies,
        Some(vec![error(
            "frame of 1195725856 bytes exceeds the limit of 1048576 bytes (an HTTP request? \
             this port takes length-prefixed MessagePack frames; the HTTP API is on listen.http)"
        )])
    );
    still_fine(&mut good, 1).await;

    // Deterministic noise behind a plausible length.
    let mut noise = vec![0, 0, 0, 64];
    let mut x: u32 = 0x2545_f491;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push((x % 251) as u8 | 0xc1);
    }
    let replies = send_raw(&server, &noise, false).await.expect("closed");
    assert_eq!(replies.len(), 1);
    let reason = replies[0].error.as_deref().unwrap();
    assert!(
        reason.starts_with("frame payload is not a MessagePack map, array or string")
            || reason.starts_with("malformed MessagePack payload"),
        "{reason}"
    );
    still_fine(&mut good, 2).await;

    // A frame that declares 4 GiB is refused before anything is buffered for it.
    let replies = send_raw(&server, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], false).await;
    assert_eq!(
        replies,
        Some(vec![error(
            "frame of 4294967295 bytes exceeds the limit of 1048576 bytes"
        )])
    );
    still_fine(&mut good, 3).await;

    // A complete frame, then a truncated one: the first is kept, the second is counted and
    // answered (the peer closed only its writing side).
    let malformed_before = server.metric("sluice_ingest_malformed_frames_total").await;
    let mut bytes = codec::batch_frame(&[Envelope::new("half", "kept")]).to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 100, 0x91, 0x81]);
    assert_eq!(
        send_raw(&server, &bytes, true).await,
        Some(vec![error(
            "connection closed in the middle of a frame (6 of 104 bytes received)"
        )])
    );
    assert_eq!(
        server.metric("sluice_ingest_malformed_frames_total").await,
        malformed_before + 1
    );
    let kept = server.get_json("/api/v1/sources/half/recent").await;
    assert_eq!(kept[0]["message"], "kept");
    still_fine(&mut good, 4).await;

    // An unknown control word.
    let mut hello = BytesMut::new();
    codec::encode_control_frame("ack=maybe", &mut hello);
    assert_eq!(
        send_raw(&server, &hello, false).await,
        Some(vec![error(
            "unknown control word \"ack=maybe\": the server understands ack=count, ack=durable, ack=none, auth=TOKEN and event=JSON"
        )])
    );
    still_fine(&mut good, 5).await;

    // The neighbour's tail saw all six of its lines, in order.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(10), tail.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            seen.push(v["message"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        seen,
        (0..6).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    assert!(server.metric("sluice_ingest_malformed_frames_total").await >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_source_id_is_refused_with_what_is_allowed_and_the_connection_goes_on() {
    let server = Server::start("");
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let bad = vec![Envelope::new("ok", "1"), Envelope::new("has space", "2")];
    let err = conn.send_batch(&bad).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "the server refused the request: invalid source_id \"has space\": a source_id is 1 to 256 bytes of printable ASCII (0x21-0x7E), without spaces"
    );
    let long = vec![Envelope::new("y".repeat(300), "3")];
    assert!(
        conn.send_batch(&long)
            .await
            .unwrap_err()
            .to_string()
            .contains("(300 bytes)")
    );
    // The refused batch cost nothing, and the same connection still works.
    assert_eq!(
        conn.send_batch(&[Envelope::new("ok", "4")]).await.unwrap(),
        1
    );
    let ok = server.get_json("/api/v1/sources/ok/recent").await;
    assert_eq!(
        ok.as_array().unwrap().len(),
        1,
        "the whole bad batch was refused"
    );
    assert_eq!(ok[0]["message"], "4");
    assert_eq!(
        server.metric("sluice_ingest_refused_envelopes_total").await,
        3
    );

    // Same answer over HTTP for an invalid id in a path.
    let resp = reqwest::get(server.url("/api/v1/sources/has%20space/recent"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid source_id \"has space\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_bytes_and_invalid_utf8_is_kept_exactly() {
    let server = Server::start("");
    let raw = b"caf\xc3\xa9 \xff\xfe end\n\x00two".to_vec();
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    assert_eq!(
        conn.send_batch(&[Envelope::new("bin", raw.clone())])
            .await
            .unwrap(),
        1
    );

    // msgpack tails carry the exact bytes…
    let (mut ws, _) =
        connect_async(server.ws("/api/v1/sources/bin/stream?backfill=10&format=msgpack"))
            .await
            .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(b) = msg else {
        panic!("{msg:?}")
    };
    let envs: Vec<Envelope> = codec::decode_exact(&b).unwrap();
    assert_eq!(envs[0].message, raw);
    // …and JSON shows text with the invalid bytes replaced.
    let json = server.get_json("/api/v1/sources/bin/recent").await;
    assert_eq!(json[0]["message"], "café \u{fffd}\u{fffd} end\n\u{0}two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_takes_the_same_frames() {
    let dir = common::temp_dir("unix");
    let sock = dir.join("ingest.sock");
    // Appended to the `listen:` block the helper writes.
    let server = Server::start(&format!("  ingest_unix: {}\n", sock.display()));
    let mut conn = connect_ingest(&IngestAddr::Unix(sock.clone()))
        .await
        .unwrap();
    assert_eq!(
        conn.send_batch(&[Envelope::new("via-unix", "hello")])
            .await
            .unwrap(),
        1
    );
    server.wait_published("via-unix", 1).await;
}
