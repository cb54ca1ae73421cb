//! The native envelope stream (SPEC §2.1) over TCP and Unix sockets.
//!
//! A connection carries frames (see [`sluice_router::codec`]). It may first send the control
//! word `ack=count`; from then on every frame is answered with a [`Reply`] carrying the number of
//! envelopes accepted, so an emitter knows what arrived. With `ack=durable` the answer waits
//! until the persister has the batch in its file (synced, with `fsync: always`), so an emitter
//! can retry without loss. Without either, the server only answers frames it refuses.
//!
//! The control word `event=JSON` reports something about a source that a producer may not write
//! as a line (its process exited, it dropped lines): the server records it as its own `_server`
//! notice (see [`super::event`]), answered like a batch of one.
//!
//! Bad input costs only the connection that sent it: a malformed, oversized or truncated frame
//! is answered with a reply naming the problem, then that connection is closed; a batch with an
//! invalid field (of any kind: a bad `channel` as much as a bad `source_id`) is refused whole,
//! answered, and the connection carries on.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesOrdered;
use sluice_router::Durability;
use sluice_router::codec::{self, FrameError, Payload, Reply};
use sluice_router::{Envelope, Router};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::{self, ProducerEvent};
use crate::auth::{Caller, Scope};
use crate::metrics::Metrics;
use crate::net::{
    Accept, Budget, ConnectionLimit, Held, accept_loop, answer_and_close, sleep_until_some,
};
use crate::tls::ServerTls;

/// What every native ingest connection shares.
#[derive(Debug, Clone)]
pub struct NativeIngest {
    pub router: Router,
    pub metrics: Arc<Metrics>,
    /// With tokens configured, a connection's first frame is `auth=TOKEN`.
    pub auth: Arc<crate::auth::Guard>,
    pub max_frame_bytes: usize,
    /// Most envelopes in one batch: decoded, each costs far more than its bytes on the wire.
    pub max_batch_envelopes: usize,
    /// How far the persister has written, for `ack=durable`.
    pub durability: Arc<Durability>,
    /// How long an `ack=durable` frame may wait for the persister.
    pub durable_timeout: Duration,
    /// A connection with nothing in flight is closed after this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A frame must be complete this long after its first bytes arrived.
    pub frame_timeout: Duration,
    /// Frames larger than a connection's base buffer are paid for from here before they are
    /// read (shared with syslog connections).
    pub frames: Budget,
    /// Envelopes being decoded from a batch, at [`DECODED_ENVELOPE_BYTES`] each.
    pub decoding: Budget,
}

/// Memory one decoded envelope takes besides its message and strings: the struct, its
/// allocations and its place in the batch (measured with a batch of empty envelopes: 8 MiB of
/// them grew the process by 16x their wire size before batches were bounded).
pub const DECODED_ENVELOPE_BYTES: usize = 256;

/// Batches of more envelopes than this pay for decoding from [`NativeIngest::decoding`].
const FREE_DECODE_ENVELOPES: usize = 256;

/// Frames read ahead while earlier ones wait for their answers; then reading pauses.
const MAX_ANSWERS_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    None,
    Count,
    /// Answer only once the persister has the batch on disk.
    Durable,
}

/// A reason to close one connection.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "unknown control word {0:?}: the server understands ack=count, ack=durable, ack=none, auth=TOKEN and event=JSON"
    )]
    Control(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame not complete {0} s after its first bytes: closing the connection")]
    FrameTimeout(u64),
    #[error("idle for {0} s: closing the connection")]
    Idle(u64),
    #[error("{0}")]
    Auth(String),
}

impl ConnError {
    /// One word for the kind, as metrics label it.
    fn reason(&self) -> &'static str {
        match self {
            ConnError::Frame(e) => e.reason(),
            ConnError::Control(_) => "control",
            ConnError::Io(_) => "io",
            ConnError::FrameTimeout(_) => "frame_timeout",
            ConnError::Idle(_) => "idle",
            ConnError::Auth(_) => "unauthenticated",
        }
    }
}

/// Reads this many bytes at a time at most; frames larger than this are assembled across reads.
const READ_CHUNK: usize = 64 * 1024;

impl NativeIngest {
    /// Accepts TCP connections until `shutdown`, each on its own task tracked by `tasks`.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        limit: ConnectionLimit,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        self.serve(listener, tls, limit, shutdown, tasks).await;
    }

    /// Accepts Unix socket connections until `shutdown`.
    pub async fn serve_unix(
        self,
        listener: UnixListener,
        limit: ConnectionLimit,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        self.serve(listener, None, limit, shutdown, tasks).await;
    }

    async fn serve<L>(
        self,
        listener: L,
        tls: Option<Arc<ServerTls>>,
        limit: ConnectionLimit,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) where
        L: Accept,
        L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = |stream, peer: String, slot| {
            let this = self.clone();
            let stop = shutdown.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                match tls {
                    None => this.connection(stream, peer, stop).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => this.connection(s, peer, stop).await,
                        Err(e) => {
                            this.metrics.ingest_malformed("tls_handshake");
                            crate::warn_throttled!(%peer, error = %e, "ingest tls handshake failed");
                        }
                    },
                }
                drop(slot);
            });
        };
        let refused = |stream: L::Stream, _peer| {
            self.metrics.connection_refused("ingest");
            // Say why, without waiting for a peer that may not read.
            tasks.spawn(async move {
                let mut reply = BytesMut::new();
                Reply {
                    accepted: 0,
                    error: Some("too many connections: the server is at ingest.max_connections; try again later".into()),
                }
                .encode_frame(&mut reply);
                answer_and_close(stream, &reply).await;
            });
        };
        accept_loop(listener, &shutdown, &limit, connection, refused).await;
    }

    async fn connection<S>(self, mut stream: S, peer: String, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.metrics.ingest_connections.inc();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::new();
        let mut ack = Ack::None;
        // Open without tokens configured; with them, anonymous until `auth=TOKEN`.
        let mut caller = self.auth.caller(None).unwrap_or(Caller::Anonymous);
        let mut ranges: Vec<(Arc<str>, u64, u64)> = Vec::new();
        // Answers not yet written, in the order of their frames. A durable answer waits for the
        // disk; reading goes on meanwhile, so every frame's wait starts when it arrives and each
        // is answered within its own timeout (one after another, a second frame waited twice).
        let mut answers = FuturesOrdered::new();
        let mut eof = false;
        // What the frame being assembled has taken from the budget.
        let mut held = Held::default();
        // When the frame being assembled began, or the connection last went quiet.
        let mut frame_started: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        let result: Result<(), ConnError> = async {
            loop {
                while answers.len() < MAX_ANSWERS_IN_FLIGHT
                    && let Some(frame) = codec::decode_frame(&mut buf, self.max_frame_bytes)?
                {
                    // That frame is complete: the clock runs for the next one from its own
                    // first bytes (a busy stream rarely leaves the buffer empty between them).
                    frame_started = None;
                    let immediate = match self.decode_cost(&frame) {
                        Err(refusal) => Some(refusal),
                        Ok(cost) => {
                            // Decoding waits for room; reading stops meanwhile.
                            let _decoding = match cost {
                                0 => Held::default(),
                                n => tokio::select! {
                                    h = self.decoding.take(n) => h,
                                    () = shutdown.cancelled() => return Ok(()),
                                },
                            };
                            match self.frame(&frame, &mut ack, &mut caller)? {
                                Handled::Answer(reply) => reply,
                                // With `when_behind: block` this waits for the persister, and
                                // the connection is not read meanwhile: TCP backpressure.
                                Handled::Publish(envelopes) => tokio::select! {
                                    r = self.publish(envelopes, ack, &mut ranges) => r,
                                    () = shutdown.cancelled() => return Ok(()),
                                },
                            }
                        }
                    };
                    if !ranges.is_empty() {
                        let wait = wait_durable(
                            self.durability.clone(),
                            std::mem::take(&mut ranges),
                            Instant::now() + self.durable_timeout,
                        );
                        answers.push_back(Either::Right(wait));
                    } else if let Some(reply) = immediate {
                        if answers.is_empty() {
                            reply.encode_frame(&mut out);
                        } else {
                            answers.push_back(Either::Left(std::future::ready(reply)));
                        }
                    }
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                if eof && answers.is_empty() {
                    codec::check_eof(&buf)?;
                    return Ok(());
                }
                if buf.is_empty() {
                    // Between frames: give back what a large frame took.
                    held.release();
                    frame_started = None;
                    if buf.capacity() > 2 * READ_CHUNK {
                        buf = BytesMut::with_capacity(READ_CHUNK);
                    }
                } else {
                    frame_started.get_or_insert_with(Instant::now);
                    // A large frame is paid for from the budget before the rest is read.
                    if let Some(len) = codec::declared_len(&buf) {
                        let need = codec::HEADER_BYTES + len;
                        if need > READ_CHUNK && held.bytes() < need {
                            held.release();
                            held = tokio::select! {
                                h = self.frames.take(need) => h,
                                () = shutdown.cancelled() => return Ok(()),
                            };
                            // The wait was the server's, not the client's.
                            frame_started = Some(Instant::now());
                            buf.reserve(need.saturating_sub(buf.len()));
                        }
                    }
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(READ_CHUNK);
                }
                let reading = !eof && answers.len() < MAX_ANSWERS_IN_FLIGHT;
                if !answers.is_empty() || !buf.is_empty() {
                    quiet_since = Instant::now();
                }
                if !reading {
                    // Paused for the server's own answers: the client is not late.
                    frame_started = None;
                }
                let deadline = match (reading, frame_started, self.idle_timeout) {
                    (false, _, _) => None,
                    (true, Some(t), _) => Some((t + self.frame_timeout, true)),
                    (true, None, Some(idle)) if answers.is_empty() => {
                        Some((quiet_since + idle, false))
                    }
                    _ => None,
                };
                tokio::select! {
                    n = stream.read_buf(&mut buf), if reading => {
                        eof = n? == 0;
                        if buf.is_empty() {
                            quiet_since = Instant::now();
                        }
                    }
                    Some(reply) = answers.next(), if !answers.is_empty() => {
                        reply.encode_frame(&mut out);
                    }
                    () = sleep_until_some(deadline.map(|d| d.0)), if deadline.is_some() => {
                        let frame = deadline.is_some_and(|d| d.1);
                        return Err(if frame {
                            ConnError::FrameTimeout(self.frame_timeout.as_secs())
                        } else {
                            ConnError::Idle(self.idle_timeout.unwrap_or_default().as_secs())
                        });
                    }
                    // Stop reading; what was accepted is already in the router.
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
        .await;
        drop(held);
        match result {
            Ok(()) => tracing::debug!(%peer, "ingest connection closed"),
            Err(ConnError::Io(e)) => tracing::debug!(%peer, error = %e, "ingest connection failed"),
            Err(e) => {
                if let ConnError::Idle(_) = e {
                    tracing::debug!(%peer, reason = %e, "closing ingest connection");
                } else {
                    self.metrics.ingest_malformed(e.reason());
                    crate::warn_throttled!(%peer, reason = %e, "closing ingest connection");
                }
                // Frames before the bad one are answered first, in order, then the reason.
                // Best effort, bounded: a peer that is not reading must not hold the task open.
                let write = async {
                    while let Some(reply) = answers.next().await {
                        reply.encode_frame(&mut out);
                    }
                    Reply {
                        accepted: 0,
                        error: Some(e.to_string()),
                    }
                    .encode_frame(&mut out);
                    stream.write_all(&out).await?;
                    stream.shutdown().await
                };
                let limit = self.durable_timeout + Duration::from_secs(1);
                let _ = tokio::time::timeout(limit, write).await;
            }
        }
    }

    /// What decoding `frame` will cost from the decoding budget (0 for small batches), or the
    /// refusal of a batch with more envelopes than allowed.
    fn decode_cost(&self, frame: &[u8]) -> Result<usize, Reply> {
        let n = codec::envelope_count(frame);
        if n > self.max_batch_envelopes {
            self.metrics.ingest_refused("batch_too_large", n as u64);
            return Err(Reply {
                accepted: 0,
                error: Some(format!(
                    "a batch of {n} envelopes is over the limit of {} (ingest.max_batch_envelopes): send smaller batches",
                    self.max_batch_envelopes
                )),
            });
        }
        Ok(if n > FREE_DECODE_ENVELOPES {
            n * DECODED_ENVELOPE_BYTES + frame.len()
        } else {
            0
        })
    }

    /// Decodes one frame: a control word is applied and answered here (if at all), envelopes
    /// are handed back to publish.
    fn frame(
        &self,
        frame: &Bytes,
        ack: &mut Ack,
        caller: &mut Caller,
    ) -> Result<Handled, ConnError> {
        let payload = match codec::decode_payload_shared(frame) {
            Ok(p) => p,
            // A field of the wrong type or value: that frame is refused, the stream is intact.
            Err(e) if e.is_recoverable() => {
                return Ok(Handled::Answer(self.refused(1, e.reason(), e.to_string())));
            }
            Err(e) => return Err(e.into()),
        };
        match payload {
            Payload::Control(word) if word.starts_with("auth=") => {
                *caller = self
                    .auth
                    .caller(Some(&word["auth=".len()..]))
                    .map_err(|d| ConnError::Auth(d.to_string()))?;
                Ok(Handled::Answer(None))
            }
            Payload::Control(word) if word.starts_with(event::PREFIX) => {
                if *caller == Caller::Anonymous {
                    return Err(ConnError::Auth(
                        "this server takes tokens: send the control word auth=TOKEN first".into(),
                    ));
                }
                Ok(Handled::Answer(self.event(
                    &word[event::PREFIX.len()..],
                    *ack,
                    caller,
                )))
            }
            Payload::Control(word) => {
                *ack = match word.as_str() {
                    "ack=count" => Ack::Count,
                    "ack=durable" => Ack::Durable,
                    "ack=none" => Ack::None,
                    _ => return Err(ConnError::Control(word)),
                };
                Ok(Handled::Answer(None))
            }
            Payload::Envelopes(envelopes) => {
                if *caller == Caller::Anonymous {
                    return Err(ConnError::Auth(
                        "this server takes tokens: send the control word auth=TOKEN first".into(),
                    ));
                }
                let n = envelopes.len() as u64;
                for e in &envelopes {
                    if let Err(d) = caller.allow(Scope::Ingest, Some(&e.source_id)) {
                        return Ok(Handled::Answer(self.refused(n, "forbidden", d.to_string())));
                    }
                }
                Ok(Handled::Publish(envelopes))
            }
        }
    }

    /// Publishes a batch, waiting for room when the persister is a ring behind (`when_behind:
    /// block`), and returns its immediate answer, if it has one; with `ack=durable`, leaves the
    /// seq ranges published in `ranges` for the caller to wait on instead.
    async fn publish(
        &self,
        envelopes: Vec<Envelope>,
        ack: Ack,
        ranges: &mut Vec<(Arc<str>, u64, u64)>,
    ) -> Option<Reply> {
        let n = envelopes.len() as u64;
        let ranges = (ack == Ack::Durable).then_some(ranges);
        match self.router.publish_waiting(envelopes, ranges).await {
            Ok(_) => {
                self.metrics.ingest_frames.inc();
                self.metrics.ingest_envelopes.inc_by(n);
                (ack == Ack::Count).then_some(Reply {
                    accepted: n,
                    error: None,
                })
            }
            Err(e) => self.refused(n, e.reason(), e.to_string()),
        }
    }

    /// Publishes a producer's event as the server's notice; answered like a one-envelope
    /// batch (with acknowledgements on, or when refused).
    fn event(&self, json: &str, ack: Ack, caller: &Caller) -> Option<Reply> {
        let notice = match ProducerEvent::parse(json).and_then(|e| e.notice()) {
            Ok(n) => n,
            Err(e) => return self.refused(1, "invalid", e.to_string()),
        };
        if let Err(d) = caller.allow(Scope::Ingest, Some(&notice.source_id)) {
            return self.refused(1, "forbidden", d.to_string());
        }
        match self.router.publish_producer_notice(notice) {
            Ok(_) => (ack != Ack::None).then_some(Reply {
                accepted: 1,
                error: None,
            }),
            Err(e) => self.refused(1, e.reason(), e.to_string()),
        }
    }

    fn refused(&self, n: u64, kind: &'static str, reason: String) -> Option<Reply> {
        self.metrics.ingest_refused(kind, n);
        crate::warn_throttled!(%reason, envelopes = n, "refused an ingest batch");
        Some(Reply {
            accepted: 0,
            error: Some(reason),
        })
    }
}

/// What a frame asks for.
enum Handled {
    /// Nothing to publish; this is the answer, if any.
    Answer(Option<Reply>),
    Publish(Vec<Envelope>),
}

/// Waits until every range of a batch is on disk, or `deadline`.
async fn wait_durable(
    durability: Arc<Durability>,
    ranges: Vec<(Arc<str>, u64, u64)>,
    deadline: Instant,
) -> Reply {
    let accepted: u64 = ranges.iter().map(|(_, first, last)| last - first + 1).sum();
    for (source, first, last) in ranges {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = durability.wait(&source, first, last, left).await {
            return Reply {
                accepted: 0,
                error: Some(e.to_string()),
            };
        }
    }
    Reply {
        accepted,
        error: None,
    }
}
