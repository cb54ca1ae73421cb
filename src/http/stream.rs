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
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warp::Filter;
use warp::reply::Response;

use super::ws::{Message, Socket, Upgrade};
use super::{ApiError, AppState, filter_from_query, number_param, split_source_path};
use crate::format::json_line;

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
/// Most sources one tail may name in `sources=`: each is a member of its cursor (and, if new,
/// a source made to wait for). More is what the firehose with a filter is for.
const MAX_SOURCES_PER_TAIL: usize = 1_000;

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
            "instance",
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
        if let Some(n) = backfill
            && n > super::MAX_LINES_BACK
        {
            return Err(ApiError::bad_request(format!(
                "backfill {n} is over {}: read more with since_seq (since_seq=0 is the whole stored log)",
                super::MAX_LINES_BACK
            )));
        }
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
                let ids: Vec<String> = list.split(',').map(str::to_owned).collect();
                if ids.len() > MAX_SOURCES_PER_TAIL {
                    return Err(ApiError::bad_request(format!(
                        "sources names {} sources, more than {MAX_SOURCES_PER_TAIL}: tail the firehose (no sources=) with a filter, or open several tails",
                        ids.len()
                    )));
                }
                Selector::Sources(ids)
            }
            (None, _) => Selector::All,
        };
        // A backfill from storage is gathered in memory (a source at a time): its room in
        // the read budget is taken before it starts, and kept until it has been sent.
        let reading = match backfill {
            Some(n) if n > 0 => Some(state.gather(n)?),
            _ => None,
        };
        let (cursor, prelude) = match selector {
            // One source: what the ring no longer holds comes from storage first.
            Selector::Source(id) => open_source(&state, &id, filter, start),
            selector => sluice_store::read::open_many(
                &state.router,
                &state.stored(),
                selector,
                filter,
                start,
            ),
        }
        .map_err(|e| ApiError::envelope(e, warp::http::StatusCode::BAD_REQUEST))?;
        // Served from the ring alone, it costs nothing to hold.
        let reading = reading
            .filter(|_| prelude.is_some())
            .map(|permit| Gathered {
                _permit: permit,
                clock: ws.clock(),
            });
        Ok((cursor, prelude, reading, format))
    })();
    match opened {
        Ok((cursor, prelude, reading, format)) => {
            ws.on_upgrade(move |socket| tail(socket, cursor, prelude, reading, format, state))
        }
        Err(e) => e.into_response(),
    }
}

async fn tail(
    socket: Socket,
    cursor: Cursor,
    prelude: Option<Prelude>,
    reading: Option<Gathered>,
    format: Format,
    state: AppState,
) {
    // A tail is told what it lost: no refill.
    pump(
        socket,
        cursor,
        (prelude, reading),
        state,
        move |batch| render(batch, format),
        |_| None,
    )
    .await;
}

pub(crate) use sluice_store::read::Prelude;

/// [`sluice_store::read::open_source`] on this server's router and storage.
pub(crate) fn open_source(
    state: &AppState,
    id: &str,
    filter: sluice_router::Filter,
    start: Start,
) -> Result<(Cursor, Option<Prelude>), sluice_router::EnvelopeError> {
    sluice_store::read::open_source(&state.router, &state.stored(), id, filter, start)
}

/// Runs a WebSocket from a cursor until the client leaves or the server stops: each batch read
/// becomes the messages `render` makes of it; pings keep the connection alive. Shared by every
/// streaming endpoint.
///
/// `refill` may turn a loss notice from the cursor into a [`Prelude`] that reads the lost lines
/// back from storage (Strøm's job stream): the notice is dropped, the prelude's lines (and its
/// own notices for what storage lacks) go out, then the rest of the batch.
pub(crate) async fn pump(
    socket: Socket,
    mut cursor: Cursor,
    (mut prelude, mut reading): (Option<Prelude>, Option<Gathered>),
    state: AppState,
    mut render: impl FnMut(&mut Vec<Delivery>) -> Vec<Message>,
    mut refill: impl FnMut(&sluice_router::MissedNotice) -> Option<Prelude>,
) {
    // warp spawns this task; the token makes shutdown wait for it all the same.
    let _running = state.tasks.token();
    if let Some(backfill) = &reading {
        backfill.start();
    }
    state.metrics.tails_opened.inc();
    let (mut tx, mut rx) = socket.split();
    let period = Duration::from_secs(state.config.http.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH_MIN);
    let mut batch_max = BATCH_MIN;
    let mut streak = 0u32;
    let mut reported = (0u64, 0u64);
    // What came after a refilled loss, sent once the refill is done.
    let mut held_back: Vec<Delivery> = Vec::new();
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
                            if reading.as_ref().is_some_and(Gathered::expired) {
                                state.metrics.http_send_timeouts.inc();
                            }
                            break Err(e);
                        }
                    }
                    None => {
                        prelude = None;
                        // Sent: its room in the read budget goes back.
                        drop(reading.take());
                        let mut rest = std::mem::take(&mut held_back);
                        if let Some((p, later)) = split_for_refill(&mut rest, &mut refill) {
                            (prelude, held_back) = (Some(p), later);
                        }
                        if let Err(e) = send(&mut tx, render(&mut rest)).await {
                            break Err(e);
                        }
                    }
                }
            }
            n = cursor.next_batch(&mut batch, batch_max), if prelude.is_none() => {
                // A slow client blocks here; meanwhile its cursor falls behind in the ring, which
                // is what turns into an exact loss notice once it reads again.
                if let Some((p, later)) = split_for_refill(&mut batch, &mut refill) {
                    (prelude, held_back) = (Some(p), later);
                }
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
                state.metrics.tail_delivered.inc_by(now.0 - reported.0);
                state.metrics.tail_missed.inc_by(now.1 - reported.1);
                reported = now;
            }
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "tail closed");
    }
    state.metrics.tails_closed.inc();
}

/// A tail's backfill from storage while it is being sent: its share of the read budget, and
/// the connection's send timeout, which runs again meanwhile (a backfill the client takes
/// none of is cut off, as a response is) and stops once it is sent or the tail goes.
pub(crate) struct Gathered {
    _permit: OwnedSemaphorePermit,
    clock: Option<super::serve::SendClock>,
}

impl Gathered {
    fn start(&self) {
        if let Some(c) = &self.clock {
            c.start();
        }
    }

    fn expired(&self) -> bool {
        self.clock
            .as_ref()
            .is_some_and(super::serve::SendClock::expired)
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        if let Some(c) = &self.clock {
            c.stop();
        }
    }
}

/// Cuts `batch` at the first loss notice `refill` takes: the deliveries before it stay in
/// `batch`, the notice goes, and the refill and what came after it are returned.
fn split_for_refill(
    batch: &mut Vec<Delivery>,
    refill: &mut impl FnMut(&sluice_router::MissedNotice) -> Option<Prelude>,
) -> Option<(Prelude, Vec<Delivery>)> {
    for i in 0..batch.len() {
        if let Delivery::Missed(m) = &batch[i]
            && let Some(p) = refill(m)
        {
            let later = batch.split_off(i + 1);
            batch.pop();
            return Some((p, later));
        }
    }
    None
}

/// JSON: one envelope per text frame; msgpack: the whole batch in one binary frame.
fn render(batch: &mut Vec<Delivery>, format: Format) -> Vec<Message> {
    match format {
        Format::Json => batch
            .drain(..)
            .map(|d| Message::text(json_line(&d.into_entry("tail"))))
            .collect(),
        Format::MsgPack => {
            let envs: Vec<_> = batch.drain(..).map(|d| d.into_entry("tail")).collect();
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
