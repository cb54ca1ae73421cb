//! A tail that stops reading is overwritten, not waited for, and is told exactly what it lost;
//! a fast tail on the same source loses nothing; the server's memory stays bounded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Server;
use futures_util::StreamExt;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const TOTAL: u64 = 100_000;
const RING: u64 = 10_000;
const BATCH: u64 = 1_000;

/// What a tail received: (log envelopes, loss notices as (missed, last_missed_seq)).
#[derive(Default, Debug)]
struct Received {
    delivered: u64,
    notices: Vec<(u64, u64)>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until the envelope with seq `TOTAL` (or a notice covering it), checking that seqs run
/// without gaps except where a notice accounts for them exactly.
async fn read_all(ws: &mut Ws, progress: &AtomicU64) -> Received {
    let mut got = Received::default();
    let mut last = 0u64;
    while last < TOTAL {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("tail stalled")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let env: serde_json::Value = serde_json::from_str(&text).unwrap();
        let seq = env["seq"].as_u64().unwrap();
        if env["origin"] == "LGR" {
            let missed: u64 = env["tags"]["missed"].as_str().unwrap().parse().unwrap();
            assert_eq!(env["channel"], "ERR");
            assert_eq!(seq, last + missed, "the notice covers the gap exactly");
            let since = env["tags"]["since"].as_str().unwrap();
            assert_eq!(
                env["message"],
                format!(
                    "sluice dropped {missed} messages for this tail since {since}: consumer too slow"
                )
            );
            got.notices.push((missed, seq));
        } else {
            assert_eq!(seq, last + 1, "no gap without a notice");
            got.delivered += 1;
        }
        last = seq;
        progress.store(last, Ordering::Release);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tail_learns_exactly_what_it_missed_and_a_fast_one_misses_nothing() {
    // A tail is never cut off for reading slowly, however long it stalls: the send timeout
    // is for responses and backfills, not live tails.
    let server = Server::start(&format!(
        "router:\n  ring_max_entries: {RING}\nhttp:\n  send_timeout_secs: 1\n"
    ));
    let path = "/api/v1/sources/busy/stream";
    // The cursor is opened before the upgrade completes: both tails are live from here on.
    let (mut slow, _) = connect_async(server.ws(path)).await.unwrap();
    let stalled_since = tokio::time::Instant::now();
    let (mut fast, _) = connect_async(server.ws(path)).await.unwrap();

    let fast_progress = Arc::new(AtomicU64::new(0));
    let fast_task = {
        let progress = fast_progress.clone();
        tokio::spawn(async move { read_all(&mut fast, &progress).await })
    };

    // Publish with acknowledgements, never more than one batch ahead of the fast tail, so only
    // the stalled one can be overtaken.
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let payload = "x".repeat(300);
    for b in 0..TOTAL / BATCH {
        let batch: Vec<Envelope> = (0..BATCH)
            .map(|i| Envelope::new("busy", format!("{} {payload}", b * BATCH + i)))
            .collect();
        assert_eq!(conn.send_batch(&batch).await.unwrap(), BATCH);
        // Paced by the fast tail (an atomic its task bumps): it must never fall a ring behind.
        while fast_progress.load(Ordering::Acquire) + BATCH < (b + 1) * BATCH {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let fast_got = fast_task.await.unwrap();
    assert_eq!(fast_got.delivered, TOTAL);
    assert!(fast_got.notices.is_empty(), "{:?}", fast_got.notices);

    // While the slow tail is still stalled: the ring is within its size, memory is bounded.
    let sources = server.get_json("/api/v1/sources").await;
    let busy = &sources[0];
    assert_eq!(busy["source_id"], "busy");
    assert_eq!(busy["published"], TOTAL);
    assert_eq!(busy["retained"], RING);
    assert!(busy["retained_bytes"].as_u64().unwrap() <= 16 * 1024 * 1024);
    let rss = server.rss_bytes();
    assert!(
        rss < 150 * 1024 * 1024,
        "server resident memory {rss} bytes"
    );

    // Stalled past the send timeout (the stall's length is what is tested; publishing above
    // usually took that long already, and then nothing is waited for here), then it reads:
    // what the socket buffers held, then the notice, then the ring.
    tokio::time::sleep_until(stalled_since + Duration::from_secs(2)).await;
    let slow_got = read_all(&mut slow, &AtomicU64::new(0)).await;
    let missed: u64 = slow_got.notices.iter().map(|n| n.0).sum();
    assert!(missed > 0, "the stalled tail was overtaken");
    assert_eq!(slow_got.delivered + missed, TOTAL);
    assert!(
        slow_got.delivered >= RING,
        "it still gets everything the ring holds"
    );
    assert_eq!(server.metric("sluice_tail_missed_total").await, missed);
}

/// Idle tails must be cheap: each holds a cursor and a socket, not a 128 KiB read buffer (what
/// tungstenite allocates, and zero-fills, by default). A thousand of them stay well under what a
/// thousand such buffers would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_tails_cost_little_memory() {
    const TAILS: usize = 1000;
    let server = Server::start("");
    let before = server.rss_bytes();
    let mut held = Vec::with_capacity(TAILS);
    for _ in 0..TAILS {
        let (ws, _) = connect_async(server.ws("/api/v1/sources/idle/stream"))
            .await
            .unwrap();
        held.push(ws);
    }
    // Every tail is subscribed once the server has counted it.
    server
        .wait_metric("sluice_tails_opened_total", TAILS as u64)
        .await;
    let grown = server.rss_bytes().saturating_sub(before);
    // ~10 KiB a tail today; 128 KiB read buffers alone would be 125 MiB.
    assert!(
        grown < 40 << 20,
        "{TAILS} idle tails grew the server by {} MiB",
        grown >> 20
    );
    drop(held);
}
