//! WebSocket tails: `GET /api/v1/sources/{id}/stream` and `GET /api/v1/firehose`.
//!
//! Query: `origin`, `channel`, `step` (filters); `backfill=N` (start N matching lines back) or
//! `since_seq=S` (resume after seq S); `format=json` (default: one envelope per text frame) or
//! `msgpack` (binary frames, each a MessagePack array of envelopes, bytes exact). The firehose
//! also takes `sources=a,b` to follow several sources instead of all.
//!
//! A tail sends backfill then live entries from one cursor, so there is no gap and no duplicate
//! between them. When the client reads too slowly its cursor is overtaken, and it receives an
//! `LGR` envelope on `ERR` with the exact count it missed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sluice_router::codec::encode_batch;
use sluice_router::{Cursor, Delivery, Selector, Start};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warp::Filter;
use warp::reply::Response;

use super::ws::{Message, Socket, Upgrade};
use super::{ApiError, AppState, filter_from_query, number_param, split_source_path};
use crate::format::json_line;
use crate::metrics::Metrics;

/// Envelopes read from the cursor per WebSocket write, at first; each write that has to wait for
/// the client halves the batch, down to this. A tail that stops reading holds one such message
/// (about 4 KiB of MessagePack) until it reads again or leaves: what 10,000 stalled tails cost.
const BATCH_MIN: usize = 16;
/// Batches double up to this while the client takes each write at once: fewer, larger writes
/// for a tail that keeps up.
const BATCH_MAX: usize = 512;
/// Full batches written at once before the batch may double: about 1 MiB, more than the kernel
/// buffers of a client that has stopped reading can take, so such a tail stays at `BATCH_MIN`.
const FAST_STREAK: u32 = 64;
/// A write that takes longer than this waited for the client.
const SLOW_WRITE: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    MsgPack,
}

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let st = state.clone();
    let source = warp::path!("api" / "v1" / "sources" / ..)
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(super::ws::upgrade())
        .and_then(
            move |tail: warp::path::Tail, q: HashMap<String, String>, ws: Upgrade| {
                let state = st.clone();
                async move {
                    match split_source_path(tail.as_str()) {
                        Some((id, "stream")) => Ok(open(state, Some(id), q, ws)),
                        _ => Err(warp::reject::not_found()),
                    }
                }
            },
        );
    let firehose = warp::path!("api" / "v1" / "firehose")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(super::ws::upgrade())
        .map(move |q, ws| open(state.clone(), None, q, ws));
    source.or(firehose).unify()
}

/// Validates the request, opens the cursor before upgrading (so backfill is fixed at request
/// time), and hands the socket to [`tail`].
fn open(
    state: AppState,
    source: Option<String>,
    q: HashMap<String, String>,
    ws: Upgrade,
) -> Response {
    let opened = (|| {
        let mut known = vec![
            "origin",
            "channel",
            "step",
            "backfill",
            "since_seq",
            "format",
        ];
        if source.is_none() {
            known.push("sources");
        }
        super::known_params(&q, &known)?;
        let filter = filter_from_query(&q)?;
        let backfill = number_param::<usize>(&q, "backfill")?;
        let since = number_param::<u64>(&q, "since_seq")?;
        let start = match (backfill, since) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("use backfill or since_seq, not both"));
            }
            (Some(n), None) => Start::Back(n),
            (None, Some(s)) => Start::AfterSeq(s),
            (None, None) => Start::Live,
        };
        let format = match q.get("format").map(String::as_str) {
            None | Some("") | Some("json") => Format::Json,
            Some("msgpack") => Format::MsgPack,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid format {other:?}: use json or msgpack"
                )));
            }
        };
        let selector = match (source, q.get("sources")) {
            (Some(id), _) => Selector::Source(id),
            (None, Some(list)) if !list.is_empty() => {
                Selector::Sources(list.split(',').map(str::to_owned).collect())
            }
            (None, _) => Selector::All,
        };
        let (cursor, prelude) = match selector {
            // One source: what the ring no longer holds comes from storage first.
            Selector::Source(id) => open_source(&state, &id, filter, start),
            selector => state
                .router
                .subscribe(selector, filter, start)
                .map(|c| (c, None)),
        }
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((cursor, prelude, format))
    })();
    match opened {
        Ok((cursor, prelude, format)) => {
            ws.on_upgrade(move |socket| tail(socket, cursor, prelude, format, state))
        }
        Err(e) => e.into_response(),
    }
}

async fn tail(
    socket: Socket,
    cursor: Cursor,
    prelude: Option<Prelude>,
    format: Format,
    state: AppState,
) {
    pump(socket, cursor, prelude, state, move |batch| {
        render(batch, format)
    })
    .await;
}

/// What a reader of one source gets from storage before its cursor takes over: batches of the
/// lines older than the ring, with exact loss notices where seqs are missing.
pub(crate) type Prelude = tokio::sync::mpsc::Receiver<Vec<Delivery>>;

/// Lines per batch read from storage.
const PRELUDE_BATCH: usize = 512;
/// How long a reader waits for the persister to write what the ring already let go, before
/// the seqs it lacks count as missed.
const PERSISTER_WAIT: Duration = Duration::from_secs(2);

/// Opens a cursor on one source at `start`; when `start` reaches back past the ring's oldest
/// line, the cursor starts at that line and the [`Prelude`] reads what comes before it from the
/// source's files (a backfill's missing lines; a resume's whole range, streamed), so the
/// reader gets every line once, in order, across restarts.
pub(crate) fn open_source(
    state: &AppState,
    id: &str,
    filter: sluice_router::Filter,
    start: Start,
) -> Result<(Cursor, Option<Prelude>), sluice_router::EnvelopeError> {
    let router = &state.router;
    let selector = || Selector::Source(id.to_owned());
    let stats = router.touch(id)?;
    let first_in_ring = stats.oldest_seq.unwrap_or(stats.published + 1);
    let stored = state.stored();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Delivery>>(4);
    let id = id.to_owned();
    match start {
        Start::Back(n) => {
            let cursor = router.subscribe(selector(), filter.clone(), start)?;
            let from = cursor.positions().first().map_or(1, |p| p.1);
            let in_ring = router
                .recent(&id, n, &filter)
                .map_or(0, |r| r.iter().filter(|e| e.seq >= from).count());
            if in_ring >= n || from <= 1 {
                return Ok((cursor, None));
            }
            tokio::spawn(async move {
                let keep = {
                    let (filter, id) = (filter.clone(), id.clone());
                    move |l: &sluice_drains::persister::Line| filter.matches(&l.to_envelope(&id))
                };
                let lines = match stored.last_lines(&id, from, n - in_ring, keep).await {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::warn!(source = %id, error = %e, "cannot read a backfill from storage");
                        return;
                    }
                };
                for chunk in lines.chunks(PRELUDE_BATCH) {
                    let batch = chunk
                        .iter()
                        .map(|l| Delivery::Log(std::sync::Arc::new(l.to_envelope(&id))))
                        .collect();
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
            });
            Ok((cursor, Some(rx)))
        }
        Start::AfterSeq(after) if after.saturating_add(1) < first_in_ring => {
            let cursor = router.subscribe(
                selector(),
                filter.clone(),
                Start::AfterSeq(first_in_ring - 1),
            )?;
            let durability = state.router.durability().clone();
            let resumed_after = stats.resumed_after;
            tokio::spawn(async move {
                // Lines the ring let go may still be on their way to the file.
                let from = (after + 1).max(resumed_after + 1);
                if from < first_in_ring {
                    let _ = durability
                        .wait(&id, from, first_in_ring - 1, PERSISTER_WAIT)
                        .await;
                }
                read_range(&stored, &id, after, first_in_ring, &filter, &tx).await;
            });
            Ok((cursor, Some(rx)))
        }
        start => Ok((router.subscribe(selector(), filter, start)?, None)),
    }
}

/// Streams the stored lines of `id` with a seq in `after + 1 .. before` into `tx`, in batches,
/// with a loss notice for each run of seqs storage lacks.
async fn read_range(
    stored: &crate::jobs::Stored,
    id: &str,
    after: u64,
    before: u64,
    filter: &sluice_router::Filter,
    tx: &tokio::sync::mpsc::Sender<Vec<Delivery>>,
) {
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel(2);
    let reading = stored.lines_between(id, after, before, PRELUDE_BATCH, lines_tx);
    let source: std::sync::Arc<str> = id.into();
    let gap = |expected: u64, to: u64, last_ts: i64, out: &mut Vec<Delivery>| {
        if to > expected {
            out.push(Delivery::Missed(sluice_router::MissedNotice {
                source_id: source.clone(),
                count: to - expected,
                since_ns: last_ts,
                last_missed_seq: to - 1,
            }));
        }
    };
    let forwarding = async {
        // Owned here: dropped when forwarding stops, which stops the reading too.
        let mut lines_rx = lines_rx;
        let mut expected = after + 1;
        let mut last_ts = 0i64;
        while let Some(lines) = lines_rx.recv().await {
            let mut out = Vec::with_capacity(lines.len());
            for line in lines {
                let env = line.to_envelope(id);
                gap(expected, env.seq, last_ts, &mut out);
                expected = expected.max(env.seq + 1);
                last_ts = env.timestamp;
                if filter.matches(&env) {
                    out.push(Delivery::Log(std::sync::Arc::new(env)));
                }
            }
            if !out.is_empty() && tx.send(out).await.is_err() {
                return None;
            }
        }
        Some((expected, last_ts))
    };
    let (read, forwarded) = tokio::join!(reading, forwarding);
    if let Err(e) = read {
        tracing::warn!(source = %id, error = %e, "cannot read a range from storage");
    }
    if let Some((expected, last_ts)) = forwarded {
        let mut out = Vec::new();
        gap(expected, before, last_ts, &mut out);
        if !out.is_empty() {
            let _ = tx.send(out).await;
        }
    }
}

/// Runs a WebSocket from a cursor until the client leaves or the server stops: each batch read
/// becomes the messages `render` makes of it; pings keep the connection alive. Shared by every
/// streaming endpoint.
pub(crate) async fn pump(
    socket: Socket,
    mut cursor: Cursor,
    mut prelude: Option<Prelude>,
    state: AppState,
    mut render: impl FnMut(&mut Vec<Delivery>) -> Vec<Message>,
) {
    // warp spawns this task; the token makes shutdown wait for it all the same.
    let _running = state.tasks.token();
    Metrics::add(&state.metrics.tails_opened, 1);
    let (mut tx, mut rx) = socket.split();
    let period = Duration::from_secs(state.config.http.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH_MIN);
    let mut batch_max = BATCH_MIN;
    let mut streak = 0u32;
    let mut reported = (0u64, 0u64);
    let outcome: Result<(), super::ws::Error> = loop {
        batch.clear();
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "sluice is shutting down".into(),
                }))).await;
                break Ok(());
            }
            msg = rx.next() => match msg {
                Some(Ok(m)) if !m.is_close() => continue,
                _ => break Ok(()),
            },
            _ = ping.tick() => {
                if let Err(e) = tx.send(Message::Ping(Bytes::new())).await {
                    break Err(e);
                }
            }
            // What storage holds first; then the cursor, which starts where it ends.
            read = async { prelude.as_mut().expect("guarded").recv().await }, if prelude.is_some() => {
                match read {
                    Some(mut lines) => {
                        let messages = render(&mut lines);
                        if let Err(e) = send(&mut tx, messages).await {
                            break Err(e);
                        }
                    }
                    None => prelude = None,
                }
            }
            n = cursor.next_batch(&mut batch, batch_max), if prelude.is_none() => {
                // A slow client blocks here; meanwhile its cursor falls behind in the ring, which
                // is what turns into an exact loss notice once it reads again.
                let messages = render(&mut batch);
                let started = Instant::now();
                if let Err(e) = send(&mut tx, messages).await {
                    break Err(e);
                }
                if started.elapsed() >= SLOW_WRITE {
                    // Halved, not reset: a busy machine makes a fast client's write slow now
                    // and then; a client that stops reading gets back to the minimum quickly.
                    (batch_max, streak) = ((batch_max / 2).max(BATCH_MIN), 0);
                } else if n >= batch_max {
                    streak += 1;
                    if streak >= FAST_STREAK {
                        (batch_max, streak) = ((batch_max * 2).min(BATCH_MAX), 0);
                    }
                }
                let now = (cursor.delivered(), cursor.missed());
                Metrics::add(&state.metrics.tail_delivered, now.0 - reported.0);
                Metrics::add(&state.metrics.tail_missed, now.1 - reported.1);
                reported = now;
            }
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "tail closed");
    }
    Metrics::add(&state.metrics.tails_closed, 1);
}

/// JSON: one envelope per text frame; msgpack: the whole batch in one binary frame.
fn render(batch: &mut Vec<Delivery>, format: Format) -> Vec<Message> {
    match format {
        Format::Json => batch
            .drain(..)
            .map(|d| Message::text(json_line(&d.into_envelope("tail"))))
            .collect(),
        Format::MsgPack => {
            let envs: Vec<_> = batch.drain(..).map(|d| d.into_envelope("tail")).collect();
            let mut buf = BytesMut::new();
            encode_batch(&envs, &mut buf);
            vec![Message::binary(buf.freeze())]
        }
    }
}

async fn send<S>(tx: &mut S, messages: Vec<Message>) -> Result<(), super::ws::Error>
where
    S: futures_util::Sink<Message, Error = super::ws::Error> + Unpin,
{
    for m in messages {
        tx.feed(m).await?;
    }
    tx.flush().await
}
