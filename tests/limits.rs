//! Memory and descriptors have a bound: a global budget for bytes buffered by all connections,
//! a cap on decoded batches, connection limits per listener, and idle, frame and header
//! timeouts. Each with real sockets against a real server.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use sluice_router::codec::{self, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes (bounded), as reply frames.
async fn replies_until_close(s: &mut TcpStream, within: Duration) -> Vec<Reply> {
    let mut buf = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .expect("the server closed the connection in time")
        .unwrap();
    let mut b = bytes::BytesMut::from(&buf[..]);
    let mut out = Vec::new();
    while let Some(f) = codec::decode_frame(&mut b, 1 << 20).unwrap() {
        out.push(codec::decode_exact(&f).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_half_sent_8_mib_frames_cost_the_budget_not_800_mib() {
    let server = Server::start(
        "ingest:\n  max_frame_bytes: 8388608\n  max_batch_envelopes: 16384\n  buffer_budget_bytes: 25165824\n  frame_timeout_secs: 3\n",
    );
    let before = server.rss_bytes();
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(&server.ingest).await.unwrap();
        // An 8 MiB frame, of which 2 MiB are sent, then nothing.
        let mut bytes = (8u32 << 20).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(0xc0, 2 << 20));
        let writer = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&bytes)).await;
            s
        });
        conns.push(writer);
    }
    // Time for the 100 writers to push what the server will take of their 2 MiB (the frames
    // are never finished, so there is no event to wait for): then memory is at its peak.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(
        grown < 80 << 20,
        "100 half-sent frames grew the server by {} MiB",
        grown >> 20
    );
    // A well-behaved client is not starved meanwhile: small frames need no budget.
    let mut good = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    assert_eq!(
        good.send_batch(&[Envelope::new("fine", "still here")])
            .await
            .unwrap(),
        1
    );
    // Each held frame is given up after the frame timeout, with a reason.
    let mut first = conns.remove(0).await.unwrap();
    let replies = replies_until_close(&mut first, Duration::from_secs(30)).await;
    assert_eq!(
        replies,
        vec![Reply {
            accepted: 0,
            error: Some(
                "frame not complete 3 s after its first bytes: closing the connection".into()
            )
        }]
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_millions_of_tiny_envelopes_is_refused_before_it_is_decoded() {
    let server = Server::start("");
    let before = server.rss_bytes();
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    // An array of 8,388,600 empty maps: 8 MiB on the wire, over a GiB decoded.
    let n: u32 = 8_388_600;
    let mut payload = vec![0xdd];
    payload.extend_from_slice(&n.to_be_bytes());
    payload.extend(std::iter::repeat_n(0x80, n as usize));
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut hello = bytes::BytesMut::new();
    codec::encode_control_frame("ack=count", &mut hello);
    s.write_all(&hello).await.unwrap();
    s.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let reply: Reply = codec::decode_exact(&body).unwrap();
    assert_eq!(
        reply.error.as_deref(),
        Some(
            "a batch of 8388600 envelopes is over the limit of 65536 (ingest.max_batch_envelopes): send smaller batches"
        )
    );
    // The connection goes on, and the refusal cost next to nothing.
    s.write_all(&codec::batch_frame(&[Envelope::new("tiny", "ok")]))
        .await
        .unwrap();
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(codec::decode_exact::<Reply>(&body).unwrap().accepted, 1);
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "grew {} MiB", grown >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_caps_its_connections_and_says_so() {
    let server = Server::start(
        "ingest:\n  max_connections: 3\nsyslog:\n  max_connections: 2\nhttp:\n  max_connections: 4\n",
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
                .await
                .unwrap(),
        );
    }
    let mut fourth = TcpStream::connect(&server.ingest).await.unwrap();
    let replies = replies_until_close(&mut fourth, Duration::from_secs(10)).await;
    assert_eq!(
        replies[0].error.as_deref(),
        Some("too many connections: the server is at ingest.max_connections; try again later")
    );
    // One leaves, another may come.
    drop(held.pop());
    common::eventually("a freed slot", 10, async || {
        let attempt = async {
            let mut c = connect_ingest(&IngestAddr::Tcp(server.ingest.clone())).await?;
            c.send_batch(&[Envelope::new("capped", "in")]).await
        };
        matches!(attempt.await, Ok(1)).then_some(())
    })
    .await;

    // Syslog: the third stream connection is closed at once.
    let _a = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    let _b = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    // Once the server has taken both, a third is closed as soon as it comes.
    common::eventually("a third syslog connection closed at once", 10, async || {
        let mut c = TcpStream::connect(&server.syslog_tcp).await.ok()?;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(200), c.read_to_end(&mut rest));
        read.await.ok().map(|_| ())
    })
    .await;

    // HTTP: past the limit, a 503 that says why.
    let mut idle = Vec::new();
    for _ in 0..4 {
        // Each answered once, so the server holds all four before the fifth comes.
        let mut s = TcpStream::connect(&server.http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        idle.push(s);
    }
    let mut over = TcpStream::connect(&server.http).await.unwrap();
    over.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.ends_with("\"too many connections: the server is at http.max_connections\"}"));
    drop(idle);
    common::eventually("http back", 10, async || {
        let status = reqwest::get(server.url("/healthz")).await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for listener in ["ingest", "syslog", "http"] {
        let line = format!("sluice_connections_refused_total{{listener=\"{listener}\"}} ");
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line} missing"))
            .parse()
            .unwrap();
        assert!(n >= 1, "{listener}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_headers_time_out() {
    let server = Server::start(
        "ingest:\n  idle_timeout_secs: 1\nsyslog:\n  idle_timeout_secs: 1\n  frame_timeout_secs: 1\nhttp:\n  header_read_timeout_secs: 1\n",
    );
    let started = Instant::now();
    // Native: idle after a good batch, then closed with a reason.
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    s.write_all(&codec::batch_frame(&[Envelope::new("idle", "one")]))
        .await
        .unwrap();
    let replies = replies_until_close(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        replies,
        vec![Reply {
            accepted: 0,
            error: Some("idle for 1 s: closing the connection".into())
        }]
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    server.wait_published("idle", 1).await;

    // Syslog: half a line, then silence; and a connection that never says anything.
    let mut half = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    half.write_all(b"<14>1 2026-11-22T10:00:00Z host app - - - never ends")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    for s in [&mut half, &mut silent] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .unwrap();
    }

    // HTTP: headers that never finish.
    let mut slow = TcpStream::connect(&server.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
        .await
        .expect("closed by the server")
        .ok();
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// A stream that never pauses between frames must not be taken for a stalled frame: the frame
/// timeout runs from each frame's own first bytes. (It ran from the first partial frame the
/// connection ever had, so a flat-out producer was cut off after `frame_timeout_secs`.)
#[tokio::test]
async fn a_busy_stream_is_never_taken_for_a_stalled_frame() {
    let server =
        Server::start("ingest:\n  frame_timeout_secs: 1\nsyslog:\n  frame_timeout_secs: 1\n");
    let frame = codec::batch_frame(&[Envelope::new("busy", "x".repeat(200))]);
    let line = |i: usize| {
        let text = format!("<14>1 2026-11-23T10:00:00Z host busy-syslog - - - line {i}");
        format!("{} {text}", text.len()).into_bytes()
    };
    let mut native = TcpStream::connect(&server.ingest).await.unwrap();
    let mut syslog = TcpStream::connect(&server.syslog_tcp).await.unwrap();
    // For 3 s (three timeouts), every write ends in the middle of a frame and of a line.
    let (mut native_bytes, mut syslog_bytes) = (Vec::new(), Vec::new());
    let writes = 60;
    for i in 0..writes * 3 {
        native_bytes.extend_from_slice(&frame);
        syslog_bytes.extend_from_slice(&line(i));
    }
    let (n_step, s_step) = (native_bytes.len() / writes, syslog_bytes.len() / writes);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for w in 0..writes {
        tick.tick().await;
        let end = |step: usize, len: usize| if w + 1 == writes { len } else { (w + 1) * step };
        native
            .write_all(&native_bytes[w * n_step..end(n_step, native_bytes.len())])
            .await
            .unwrap();
        syslog
            .write_all(&syslog_bytes[w * s_step..end(s_step, syslog_bytes.len())])
            .await
            .unwrap();
    }
    native.shutdown().await.unwrap();
    assert_eq!(
        replies_until_close(&mut native, Duration::from_secs(10)).await,
        vec![],
        "no refusal: the connection was not cut"
    );
    server.wait_published("busy", (writes * 3) as u64).await;
    server
        .wait_published("busy-syslog", (writes * 3) as u64)
        .await;
}

/// Octet-counted RFC 5424 messages, one per `(app, text)`.
fn syslog_frames(lines: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (app, text) in lines {
        let msg = format!("<14>1 2026-12-07T10:00:00.000Z host {app} - - - {text}");
        out.extend(format!("{} {msg}", msg.len()).into_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_sources_a_new_source_is_refused_by_every_way_in_and_the_held_ones_go_on() {
    let server = Server::start("router:\n  max_sources: 3\n");
    assert_eq!(server.metric("sluice_router_max_sources").await, 3);
    let mut native = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch = [Envelope::new("a", "1"), Envelope::new("b", "1")];
    assert_eq!(native.send_batch(&batch).await.unwrap(), 2);
    let (status, _) = server
        .post_json(
            "/api/v1/ingest",
            serde_json::json!([{"source_id": "c", "message": "1"}]),
        )
        .await;
    assert_eq!(status, 200);

    // Native: the whole batch is refused with the reason, and the connection goes on.
    let err = native
        .send_batch(&[Envelope::new("a", "2"), Envelope::new("d", "1")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "new source \"d\" refused: sluice holds 3 sources, its limit (router.max_sources)"
        ),
        "{err}"
    );
    assert_eq!(
        native.send_batch(&[Envelope::new("a", "2")]).await.unwrap(),
        1
    );
    // A producer's event about a new source is refused as its lines would be; about a held
    // one it is recorded.
    let exit =
        |source: &str| serde_json::json!({"event": "exit", "source_id": source, "status": 0});
    let err = native.send_event(&exit("d")).await.unwrap_err().to_string();
    assert!(err.contains("router.max_sources"), "{err}");
    assert_eq!(native.send_event(&exit("b")).await.unwrap(), 1);

    // HTTP: 429 with the reason, nothing of the batch taken.
    let (status, body) = server
        .post_json(
            "/api/v1/ingest",
            serde_json::json!([{"source_id": "c", "message": "2"}, {"source_id": "e", "message": "1"}]),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("router.max_sources"),
        "{body}"
    );

    // A tail of a new source is refused before the upgrade; one of a held source opens.
    let (status, _) = server.ws_refused("/api/v1/sources/f/stream").await;
    assert_eq!(status, 429);
    assert!(
        tokio_tungstenite::connect_async(server.ws("/api/v1/sources/a/stream"))
            .await
            .is_ok()
    );
    // The web page cannot see a refused handshake's status; it asks the source's stats why.
    let (status, why) = server.get_text("/api/v1/sources/f/stats").await;
    assert_eq!(status, 404);
    assert!(
        why.contains("sluice holds 3 sources, its limit (router.max_sources)"),
        "{why}"
    );

    // Syslog cannot be answered: a new source's lines are dropped and counted, and the held
    // sources' lines around them in the same stream are all kept.
    let mut tcp = std::net::TcpStream::connect(&server.syslog_tcp).unwrap();
    std::io::Write::write_all(
        &mut tcp,
        &syslog_frames(&[
            ("b", "2"),
            ("g", "lost"),
            ("b", "3"),
            ("g", "lost too"),
            ("b", "4"),
        ]),
    )
    .unwrap();
    server.wait_published("b", 5).await;
    server.wait_metric("sluice_syslog_refused_total", 2).await;
    drop(tcp);

    let sources = server.get_json("/api/v1/sources").await;
    let mut ids: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(server.published("a").await, 2);
    assert_eq!(server.published("c").await, 1);
    assert_eq!(server.metric("sluice_router_sources").await, 3);
    // 2 native (a's and d's) + 1 event + 2 HTTP (c's and e's), by reason.
    let text = server.metrics_text().await;
    assert!(
        text.contains("sluice_ingest_refused_envelopes_total{reason=\"too_many_sources\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("sluice_syslog_refused_total{reason=\"too_many_sources\"} 2"),
        "{text}"
    );
}

/// `GET /api/v1/sources/big/recent?limit=N` (the stored job `common::write_big_job` wrote):
/// the status and the body.
async fn recent_of_big(server: &Server, limit: usize) -> (u16, String) {
    server
        .get_text(&format!("/api/v1/sources/big/recent?limit={limit}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_gather_lines_share_a_budget_and_one_that_stalls_holds_only_its_share() {
    let server = Server::start("http:\n  read_budget_lines: 150000\n");
    // A stored log of 150,000 lines (~30 MiB), as an earlier run wrote it.
    common::write_big_job(&server.logs.join("big.jsonl"), 150_000);
    let recent = async |limit: usize| recent_of_big(&server, limit).await;
    // A tail asks for 100,000 lines back, all from storage, and never reads: more than the
    // sockets' buffers hold, so its backfill stays in the server, and so does its share.
    let url = server.ws("/api/v1/sources/big/stream?backfill=100000");
    let (stalled, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (status, body) = recent(60_000).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(
            "other reads are gathering 150000 lines now, the limit (http.read_budget_lines)"
        ),
        "{body}"
    );
    // What is left of the budget still serves.
    let (status, body) = recent(1000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1000
    );
    // The tail goes: its share comes back.
    drop(stalled);
    let lines = common::eventually("the stalled tail's share back", 30, async || {
        let (status, body) = recent(100_000).await;
        (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    })
    .await;
    assert_eq!(lines.as_array().unwrap().len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_takes_nothing_is_cut_off_and_gives_its_share_back() {
    let server = Server::start("http:\n  read_budget_lines: 100000\n  send_timeout_secs: 1\n");
    common::write_big_job(&server.logs.join("big.jsonl"), 100_000);
    let recent = async |limit: usize| recent_of_big(&server, limit).await;
    let held = async || {
        common::eventually("a stalled read holding the whole budget", 30, async || {
            (recent(1).await.0 == 503).then_some(())
        })
        .await
    };
    let given_back = async || {
        common::eventually("the stalled read's share back", 30, async || {
            let (status, body) = recent(100_000).await;
            (status == 200).then_some(body)
        })
        .await
    };

    // A `recent` answer of 100,000 lines (~25 MB, far more than the sockets' buffers) to a
    // client that sends its request and then reads nothing, and keeps the connection open.
    let addr = server.http.trim_start_matches("http://").to_owned();
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"GET /api/v1/sources/big/recent?limit=100000 HTTP/1.1\r\nhost: sluice\r\n\r\n")
        .await
        .unwrap();
    // Its status line first: it holds its share by then (a probe sent before it could take
    // part of the budget, and have it refused).
    let mut got = vec![0u8; 12];
    stalled.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"HTTP/1.1 200");
    held().await;
    let whole = given_back().await;
    server
        .wait_metric("sluice_http_send_timeouts_total", 1)
        .await;
    // The server closed it, part way through the body.
    let _ = tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut got))
        .await
        .expect("the server closed the stalled connection");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < whole.len(), "{} of {}", got.len(), whole.len());

    // A tail's backfill from storage, which its client never reads, likewise.
    let url = server.ws("/api/v1/sources/big/stream?backfill=100000");
    let (mut tail, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    held().await;
    given_back().await;
    server
        .wait_metric("sluice_http_send_timeouts_total", 2)
        .await;
    let mut lines = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        use futures_util::StreamExt as _;
        while let Some(Ok(m)) = tail.next().await {
            lines += usize::from(m.is_text());
        }
    })
    .await;
    assert!(ended.is_ok(), "the server closed the stalled tail");
    assert!(lines < 100_000, "{lines}");
}

/// A reader can make a source wait for its first line, but only a tenth of `max_sources` such
/// sources at once: a token with the read scope alone cannot take every source from producers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_wait_for_at_most_a_tenth_of_max_sources_and_producers_keep_the_rest() {
    let server = Server::start("router:\n  max_sources: 20\n");
    let tail = async |id: &str| {
        let (ws, _) =
            tokio_tungstenite::connect_async(server.ws(&format!("/api/v1/sources/{id}/stream")))
                .await
                .unwrap();
        ws
    };
    let mut w1 = tail("w1").await;
    let _w2 = tail("w2").await;
    let (status, body) = server.ws_refused("/api/v1/sources/w3/stream").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains(
            "readers have opened as many sources that have no lines yet as they may (2, a tenth of router.max_sources)"
        ),
        "{body}"
    );
    // The web page asks a source's stats why its tail was refused.
    let (status, body) = server.get_text("/api/v1/sources/w3/stats").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("a tenth of router.max_sources"), "{body}");
    assert_eq!(server.metric("sluice_router_awaited_sources").await, 2);

    // Producers have the rest: 17 sources of their own, then w1's first line.
    let mut native = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let batch: Vec<Envelope> = (0..17)
        .map(|i| Envelope::new(format!("p{i}"), "x"))
        .collect();
    assert_eq!(native.send_batch(&batch).await.unwrap(), 17);
    assert_eq!(
        native
            .send_batch(&[Envelope::new("w1", "at last")])
            .await
            .unwrap(),
        1
    );
    let got = common::next_json(&mut w1, 1).await;
    assert_eq!(got[0]["message"], "at last");
    // w1 has a line: no longer waited for, so another reader may wait for one.
    assert_eq!(server.metric("sluice_router_awaited_sources").await, 1);
    let _w3 = tail("w3").await;
    assert_eq!(server.metric("sluice_router_sources").await, 20);
    let err = native
        .send_batch(&[Envelope::new("p17", "x")])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("router.max_sources"), "{err}");

    // One tail names at most 1,000 sources.
    let many: Vec<String> = (0..1001).map(|i| format!("m{i}")).collect();
    let (status, body) = server
        .ws_refused(&format!("/api/v1/firehose?sources={}", many.join(",")))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 1000"), "{body}");
}

/// The seqs of a source's recent lines (from memory and storage), oldest first.
async fn recent_seqs(server: &Server, source: &str) -> Vec<u64> {
    let lines = common::recent_lines(server, source, 1000).await;
    lines.into_iter().map(|(seq, _)| seq).collect()
}

/// Sources are forgotten once idle for `router.forget_idle_secs`, every line on disk and no
/// tail or drain of their own open: room under `router.max_sources` comes back without a
/// restart, and a forgotten source reads and continues as it would after one. After a crash,
/// a source made again skips no seqs a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sources_are_forgotten_and_come_back_whole() {
    // Two writers: b (made second) is written by the second, and made again (fifth) by the
    // first, which must start from the file the other left.
    let mut server = Server::start(
        "router:\n  max_sources: 3\n  forget_idle_secs: 1\nlog_storage:\n  local_dir: {logs}\n  writers: 2\n",
    );
    for source in ["a", "b", "c"] {
        common::send_lines(&server, source, 3).await;
    }
    let (mut tail, _) = tokio_tungstenite::connect_async(server.ws("/api/v1/sources/c/stream"))
        .await
        .unwrap();
    let ingest = |source: &str, message: &str| serde_json::json!([{"source_id": source, "message": message}]);
    let (status, _) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("d", "1"))
        .await;
    assert_eq!(status, 429, "three sources held");

    // a and b go, making room for d; c has its tail.
    server
        .wait_metric("sluice_router_sources_forgotten_total", 2)
        .await;
    let (status, body) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("d", "1"))
        .await;
    assert_eq!(status, 200, "{body}");
    // Once d, idle since after c, is gone too, the looks have passed c over.
    server
        .wait_metric("sluice_router_sources_forgotten_total", 3)
        .await;
    assert_eq!(server.metric("sluice_router_sources").await, 1);
    assert!(
        !server.get_json("/api/v1/sources/c/stats").await["newest_seq"].is_null(),
        "c is held"
    );
    // A forgotten source is read from storage, and its next line continues its seqs.
    assert_eq!(recent_seqs(&server, "b").await, [1, 2, 3]);
    let (status, _) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("b", "again"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(recent_seqs(&server, "b").await, [1, 2, 3, 4]);
    let seqs: Vec<u64> = common::file_lines(&server.logs.join("b.jsonl"))
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The tail of c was never disturbed.
    let (status, _) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("c", "live"))
        .await;
    assert_eq!(status, 200);
    let got = common::next_json(&mut tail, 1).await;
    assert_eq!(got[0]["seq"], 4, "{got:?}");
    assert_eq!(got[0]["message"], "live");
    drop(tail);

    // After a crash each stored source skips seqs once, with a notice; made again after it
    // was forgotten, it skips none.
    server.crash_and_restart();
    let (status, _) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("a", "after the crash"))
        .await;
    assert_eq!(status, 200);
    let first = recent_seqs(&server, "a").await;
    let skipped_to = *first.last().unwrap();
    assert!(skipped_to > 4, "seqs skipped after the crash: {first:?}");
    let forgotten = server.metric("sluice_router_sources_forgotten_total").await;
    server
        .wait_metric("sluice_router_sources_forgotten_total", forgotten + 1)
        .await;
    common::eventually("a to be forgotten", 30, async || {
        (server.get_json("/api/v1/sources/a/stats").await["newest_seq"].is_null()).then_some(())
    })
    .await;
    let (status, _) = server
        .post_json("/api/v1/ingest?ack=durable", ingest("a", "later"))
        .await;
    assert_eq!(status, 200);
    let then = recent_seqs(&server, "a").await;
    assert_eq!(then.last(), Some(&(skipped_to + 1)), "{then:?}");
    let notices = server.router_notices("a").await;
    assert_eq!(
        notices
            .iter()
            .filter(|n| n.contains("without a clean shutdown"))
            .count(),
        1,
        "{notices:?}"
    );
}

/// A source whose stored file exists but cannot be read is refused with the reason (503: try
/// again), not made with seqs from 1 again; nothing of the batch is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_file_cannot_be_read_is_refused_rather_than_restarted() {
    let server = Server::start("");
    common::send_lines(&server, "fine", 1).await;
    // A directory where the file should be: opening it works, reading it does not.
    std::fs::create_dir_all(server.logs.join("broken.jsonl")).unwrap();
    let (status, body) = server
        .post_json(
            "/api/v1/ingest",
            serde_json::json!([{"source_id": "fine", "message": "2"}, {"source_id": "broken", "message": "1"}]),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"broken\" refused for now: its stored lines cannot be read"),
        "{error}"
    );
    assert_eq!(server.published("fine").await, 1);
    assert_eq!(
        server
            .metric("sluice_ingest_refused_envelopes_total{reason=\"storage_unreadable\"}")
            .await,
        2
    );
}
