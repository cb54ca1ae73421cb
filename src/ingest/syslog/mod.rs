//! Syslog ingress (SPEC §2.2): TCP with RFC 6587 framing, UDP, and TLS.
//!
//! Syslog senders get no answer, so bad input is logged and counted: a message that cannot
//! become an envelope (no usable source id, or a new source past `router.max_sources`) is
//! dropped and counted as refused; a stream that
//! cannot be framed (a bad octet count, a frame over `syslog.max_frame_bytes`) is closed, and
//! what was accepted before it is kept.

pub mod parse;
pub mod rfc3164;
pub mod rfc5424;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sluice_router::envelope::{now_ns, rfc3339_seconds};
use sluice_router::{Envelope, Router};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::net::{Budget, ConnectionLimit, Held, accept_loop, sleep_until_some};
use crate::tls::ServerTls;
use parse::{next_frame, parse_message};

/// What every syslog listener shares.
#[derive(Debug, Clone)]
pub struct SyslogIngest {
    pub router: Router,
    pub metrics: Arc<Metrics>,
    /// Messages longer than this are split into several envelopes.
    pub max_message_bytes: usize,
    /// A frame or line longer than this closes the connection.
    pub max_frame_bytes: usize,
    /// A connection with nothing half-received is closed after this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A frame must be complete this long after its first bytes arrived.
    pub frame_timeout: Duration,
    /// A frame longer than a connection's base buffer is paid for from here as it grows
    /// (shared with native ingest).
    pub frames: Budget,
}

const READ_CHUNK: usize = 64 * 1024;

impl SyslogIngest {
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        limit: ConnectionLimit,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let connection = |stream, peer: String, slot| {
            let this = self.clone();
            let stop = shutdown.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                match tls {
                    None => this.connection(stream, &peer, stop).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => this.connection(s, &peer, stop).await,
                        Err(e) => {
                            this.metrics.syslog_malformed("tls_handshake");
                            crate::warn_throttled!(%peer, error = %e, "syslog tls handshake failed");
                        }
                    },
                }
                drop(slot);
            });
        };
        // Syslog senders read nothing: a refused connection is just closed.
        let refused = |_stream, _peer| self.metrics.connection_refused("syslog");
        accept_loop(listener, &shutdown, &limit, connection, refused).await;
    }

    async fn connection<S: AsyncRead + Unpin>(
        self,
        mut stream: S,
        peer: &str,
        shutdown: CancellationToken,
    ) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut batch: Vec<Envelope> = Vec::new();
        // What a frame longer than the base buffer has taken from the budget.
        let mut held = Held::default();
        let mut frame_started: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        loop {
            loop {
                match next_frame(&mut buf, self.max_frame_bytes) {
                    Ok(Some(frame)) => {
                        // That line is complete: the clock runs for the next one from its own
                        // first bytes (a busy stream rarely leaves the buffer empty between them).
                        frame_started = None;
                        self.message(&frame, &mut batch)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.publish(&mut batch).await;
                        self.metrics.syslog_malformed(e.reason());
                        crate::warn_throttled!(%peer, reason = %e, "closing syslog connection");
                        return;
                    }
                }
            }
            // With `when_behind: block` this waits for the persister: the connection is not read
            // meanwhile, so the sender feels TCP backpressure.
            tokio::select! {
                () = self.publish(&mut batch) => {}
                () = shutdown.cancelled() => return,
            }
            if buf.is_empty() {
                held.release();
                frame_started = None;
                quiet_since = Instant::now();
                if buf.capacity() > 2 * READ_CHUNK {
                    buf = BytesMut::with_capacity(READ_CHUNK);
                }
            } else {
                frame_started.get_or_insert_with(Instant::now);
            }
            if buf.capacity() - buf.len() < 4096 {
                let want = buf.len() + READ_CHUNK;
                if want > READ_CHUNK && held.bytes() < want {
                    // Past the base buffer: grow in doublings, each paid for before it is read,
                    // and never for longer than the frame may take.
                    let target = (held.bytes() * 2)
                        .max(want)
                        .min(self.max_frame_bytes + READ_CHUNK);
                    let late = frame_started.unwrap_or_else(Instant::now) + self.frame_timeout;
                    held.release();
                    held = tokio::select! {
                        h = self.frames.take(target) => h,
                        () = tokio::time::sleep_until(late) => {
                            self.metrics.syslog_malformed("no_buffer_room");
                            crate::warn_throttled!(%peer, "closing syslog connection: no room for its frame in ingest.buffer_budget_bytes");
                            return;
                        }
                        () = shutdown.cancelled() => return,
                    };
                }
                buf.reserve(READ_CHUNK);
            }
            let deadline = match (frame_started, self.idle_timeout) {
                (Some(t), _) => Some(t + self.frame_timeout),
                (None, Some(idle)) => Some(quiet_since + idle),
                (None, None) => None,
            };
            let n = tokio::select! {
                n = stream.read_buf(&mut buf) => n,
                () = sleep_until_some(deadline) => {
                    if frame_started.is_some() {
                        self.metrics.syslog_malformed("frame_timeout");
                        crate::warn_throttled!(%peer, timeout_secs = self.frame_timeout.as_secs(), "closing syslog connection: frame not complete in time");
                    } else {
                        tracing::debug!(%peer, "closing idle syslog connection");
                    }
                    return;
                }
                () = shutdown.cancelled() => return,
            };
            match n {
                Ok(0) => {
                    // A last line without its line feed is still a line.
                    let rest = buf.split();
                    if !rest.is_empty() && !rest[0].is_ascii_digit() {
                        self.message(&rest, &mut batch);
                        self.publish(&mut batch).await;
                    } else if !rest.is_empty() {
                        self.metrics.syslog_malformed("truncated");
                        crate::warn_throttled!(%peer, bytes = rest.len(), "syslog connection closed in the middle of a frame");
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "syslog connection failed");
                    return;
                }
            }
        }
    }

    /// One datagram is one message. A datagram cannot wait: while the persister is a ring
    /// behind (`when_behind: block`), what its source's ring cannot take is dropped, counted,
    /// and announced in the source at most once a second with the exact count.
    pub async fn serve_udp(self, socket: UdpSocket, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 65_536];
        let mut batch = Vec::new();
        let mut dropped: HashMap<String, (u64, i64)> = HashMap::new();
        let mut announced = Instant::now();
        loop {
            let received = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                () = tokio::time::sleep(Duration::from_secs(1)), if !dropped.is_empty() => {
                    self.announce_dropped(&mut dropped);
                    announced = Instant::now();
                    continue;
                }
                () = shutdown.cancelled() => return,
            };
            match received {
                Ok((n, _)) => {
                    self.message(&buf[..n], &mut batch);
                    if batch.is_empty() {
                        continue;
                    }
                    self.keep_admitted(&mut batch);
                    if batch.is_empty() {
                        continue;
                    }
                    let source = batch[0].source_id.clone();
                    let n = batch.len() as u64;
                    match self.router.publish(std::mem::take(&mut batch)) {
                        Ok(published) => {
                            self.metrics.syslog_messages.inc_by(published as u64);
                            let lost = n - published as u64;
                            if lost > 0 {
                                self.metrics.syslog_udp_dropped.inc_by(lost);
                                let d = dropped.entry(source.to_string()).or_insert((0, now_ns()));
                                d.0 += lost;
                            }
                        }
                        Err(e) => {
                            self.metrics.syslog_refused(e.reason(), n);
                            crate::warn_throttled!(reason = %e, "syslog message refused");
                        }
                    }
                    if !dropped.is_empty() && announced.elapsed() >= Duration::from_secs(1) {
                        self.announce_dropped(&mut dropped);
                        announced = Instant::now();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "syslog udp receive failed"),
            }
        }
    }

    /// Tells each source how many of its UDP messages were dropped, and since when.
    fn announce_dropped(&self, dropped: &mut HashMap<String, (u64, i64)>) {
        for (source, (count, since)) in dropped.drain() {
            tracing::warn!(%source, count, "dropped syslog udp messages: the persister is behind");
            let text = format!(
                "sluice dropped {count} syslog UDP {} for this source since {}: the persister is behind (log_storage.when_behind: block)",
                if count == 1 { "message" } else { "messages" },
                rfc3339_seconds(since)
            );
            let mut env = Envelope::notice(source, text);
            env.tags.insert("missed".into(), count.to_string());
            env.tags.insert("since".into(), rfc3339_seconds(since));
            if let Err(e) = self.router.publish_notice(env) {
                tracing::warn!(error = %e, "cannot publish a udp loss notice");
            }
        }
    }

    fn message(&self, raw: &[u8], batch: &mut Vec<Envelope>) {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        if let Err(e) = parse_message(raw, self.max_message_bytes, batch) {
            self.metrics.syslog_refused(e.reason(), 1);
            tracing::debug!(reason = %e, "syslog message refused");
        }
    }

    /// Drops the lines of new sources past `router.max_sources`, counted and logged, so that
    /// they cannot take the lines of the sources already held down with them.
    fn keep_admitted(&self, batch: &mut Vec<Envelope>) {
        if let Some((e, dropped)) = self.router.keep_admitted(batch) {
            self.metrics.syslog_refused(e.reason(), dropped as u64);
            crate::warn_throttled!(reason = %e, messages = dropped, "syslog messages refused");
        }
    }

    async fn publish(&self, batch: &mut Vec<Envelope>) {
        self.keep_admitted(batch);
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match self
            .router
            .publish_waiting(std::mem::take(batch), None)
            .await
        {
            Ok(_) => {
                self.metrics.syslog_messages.inc_by(n);
            }
            Err(e) => {
                // parse_message validated each envelope and its sources are held: this is a
                // bug if it happens.
                self.metrics.syslog_refused(e.reason(), n);
                crate::warn_throttled!(reason = %e, "syslog batch refused");
            }
        }
    }
}
