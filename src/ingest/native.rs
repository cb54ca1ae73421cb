//! The native envelope stream (SPEC §2.1) over TCP and Unix sockets.
//!
//! A connection carries frames (see [`sluice_router::codec`]). It may first send the control
//! word `ack=count`; from then on every frame is answered with a [`Reply`] carrying the number of
//! envelopes accepted, so an emitter knows what arrived. With `ack=durable` the answer waits
//! until the persister has the batch in its file (synced, with `fsync: always`), so an emitter
//! can retry without loss. Without either, the server only answers frames it refuses.
//!
//! Bad input costs only the connection that sent it: a malformed, oversized or truncated frame
//! is answered with a reply naming the problem, then that connection is closed; a batch with an
//! invalid field is refused whole, answered, and the connection carries on.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_drains::persister::Durability;
use sluice_router::Router;
use sluice_router::codec::{self, FrameError, Payload, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Accept, accept_loop};
use crate::metrics::Metrics;

/// What every native ingest connection shares.
#[derive(Debug, Clone)]
pub struct NativeIngest {
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub max_frame_bytes: usize,
    /// How far the persister has written, for `ack=durable`.
    pub durability: Arc<Durability>,
}

/// How long an `ack=durable` batch may wait for the persister.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

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
        "unknown control word {0:?}: the server understands ack=count, ack=durable and ack=none"
    )]
    Control(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads this many bytes at a time at most; frames larger than this are assembled across reads.
const READ_CHUNK: usize = 64 * 1024;

impl NativeIngest {
    /// Accepts TCP connections until `shutdown`, each on its own task tracked by `tasks`.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        self.serve(listener, shutdown, tasks).await;
    }

    /// Accepts Unix socket connections until `shutdown`.
    pub async fn serve_unix(
        self,
        listener: UnixListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        self.serve(listener, shutdown, tasks).await;
    }

    async fn serve<L>(self, listener: L, shutdown: CancellationToken, tasks: TaskTracker)
    where
        L: Accept,
        L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        accept_loop(listener, &shutdown, |stream, peer| {
            let this = self.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move { this.connection(stream, peer, stop).await });
        })
        .await;
    }

    async fn connection<S>(self, mut stream: S, peer: String, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Metrics::add(&self.metrics.ingest_connections, 1);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::new();
        let mut ack = Ack::None;
        let mut ranges: Vec<(Arc<str>, u64, u64)> = Vec::new();
        let result: Result<(), ConnError> = async {
            loop {
                while let Some(frame) = codec::decode_frame(&mut buf, self.max_frame_bytes)? {
                    self.frame(&frame, &mut ack, &mut out, &mut ranges)?;
                    if !ranges.is_empty() {
                        // Durable: the answer waits for the disk. Later frames wait behind it.
                        let reply = self.wait_durable(&mut ranges).await;
                        reply.encode_frame(&mut out);
                    }
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(READ_CHUNK);
                }
                let n = tokio::select! {
                    n = stream.read_buf(&mut buf) => n?,
                    // Stop reading; what was accepted is already in the router.
                    () = shutdown.cancelled() => return Ok(()),
                };
                if n == 0 {
                    codec::check_eof(&buf)?;
                    return Ok(());
                }
            }
        }
        .await;
        match result {
            Ok(()) => tracing::debug!(%peer, "ingest connection closed"),
            Err(ConnError::Io(e)) => tracing::debug!(%peer, error = %e, "ingest connection failed"),
            Err(e) => {
                Metrics::add(&self.metrics.ingest_malformed, 1);
                tracing::warn!(%peer, reason = %e, "closing ingest connection");
                if !matches!(e, ConnError::Frame(FrameError::Truncated { .. })) {
                    // Best effort: a peer that is not reading must not hold the task open.
                    let mut reply = BytesMut::new();
                    Reply {
                        accepted: 0,
                        error: Some(e.to_string()),
                    }
                    .encode_frame(&mut reply);
                    let write = async {
                        stream.write_all(&reply).await?;
                        stream.shutdown().await
                    };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
                }
            }
        }
    }

    /// Waits until every range of the batch just published is on disk.
    async fn wait_durable(&self, ranges: &mut Vec<(Arc<str>, u64, u64)>) -> Reply {
        let accepted: u64 = ranges.iter().map(|(_, first, last)| last - first + 1).sum();
        for (source, first, last) in ranges.drain(..) {
            if let Err(e) = self
                .durability
                .wait(&source, first, last, DURABLE_TIMEOUT)
                .await
            {
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

    /// Handles one frame, appending any reply to `out`; with `ack=durable`, leaves the seq
    /// ranges published in `ranges` for the caller to wait on.
    fn frame(
        &self,
        frame: &[u8],
        ack: &mut Ack,
        out: &mut BytesMut,
        ranges: &mut Vec<(Arc<str>, u64, u64)>,
    ) -> Result<(), ConnError> {
        match codec::decode_payload(frame)? {
            Payload::Control(word) => match word.as_str() {
                "ack=count" => *ack = Ack::Count,
                "ack=durable" => *ack = Ack::Durable,
                "ack=none" => *ack = Ack::None,
                _ => return Err(ConnError::Control(word)),
            },
            Payload::Envelopes(envelopes) => {
                let n = envelopes.len() as u64;
                let published = if *ack == Ack::Durable {
                    self.router.publish_ranges(envelopes, ranges)
                } else {
                    self.router.publish(envelopes)
                };
                match published {
                    Ok(_) => {
                        Metrics::add(&self.metrics.ingest_frames, 1);
                        Metrics::add(&self.metrics.ingest_envelopes, n);
                        if *ack == Ack::Count {
                            Reply {
                                accepted: n,
                                error: None,
                            }
                            .encode_frame(out);
                        }
                    }
                    Err(e) => {
                        Metrics::add(&self.metrics.ingest_refused, n);
                        tracing::warn!(reason = %e, envelopes = n, "refused an ingest batch");
                        Reply {
                            accepted: 0,
                            error: Some(e.to_string()),
                        }
                        .encode_frame(out);
                    }
                }
            }
        }
        Ok(())
    }
}
