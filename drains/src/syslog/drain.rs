//! One syslog drain: reads its own cursor, formats, sends, reconnects.
//!
//! A drain that cannot deliver stops reading its cursor; the ring goes on without it, and when
//! it is overtaken it learns exactly how many lines it lost. Both the connection failures (at
//! most one notice per `failure_notice_interval`) and the losses are written into the source's
//! own stream as `LGR` lines on `ERR`, so the app's owner sees them in `sluice logs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_router::{Backoff, Cursor, Delivery, Envelope, Fields, Router};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::format::{format_octet_counted, format_rfc5424};
use super::https::{BATCH_MAX_BYTES, BATCH_WAIT, HttpsClient};
use super::transport::{Connection, Outbox};
use super::url::{DrainUrl, Scheme};

/// Timing of reconnects and notices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainSettings {
    /// First reconnect delay; it doubles after each failure.
    pub reconnect_min_millis: u64,
    /// Longest reconnect delay (milliseconds too: the two bound one range).
    pub reconnect_max_millis: u64,
    /// At most one "failed to connect" notice per drain in this many seconds.
    pub failure_notice_interval_secs: u64,
    /// Give up a connection attempt after this long.
    pub connect_timeout_secs: u64,
    /// Most messages written per batch.
    pub batch_messages: usize,
}

impl DrainSettings {
    /// The reconnect delays these settings describe.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.reconnect_min_millis),
            Duration::from_millis(self.reconnect_max_millis),
        )
    }
}

impl Default for DrainSettings {
    fn default() -> Self {
        DrainSettings {
            reconnect_min_millis: 100,
            reconnect_max_millis: 30_000,
            failure_notice_interval_secs: 30,
            connect_timeout_secs: 10,
            batch_messages: 512,
        }
    }
}

/// What a drain has done, for `/api/v1/drains` and `/metrics`.
#[derive(Debug, Default)]
pub struct DrainCounters {
    pub sent: AtomicU64,
    /// Messages overwritten before the drain could read them.
    pub lost: AtomicU64,
    /// Failed connection attempts and failed writes.
    pub errors: AtomicU64,
    pub connected: AtomicBool,
}

/// Everything a drain task needs besides its cursor.
#[derive(Debug, Clone)]
pub struct SyslogDrain {
    pub url: DrainUrl,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub settings: DrainSettings,
    /// Where notices about the drain are published.
    pub router: Router,
    /// The source this drain is bound to; `None` for a drain of every source.
    pub source: Option<String>,
    pub counters: Arc<DrainCounters>,
}

impl SyslogDrain {
    /// Runs until `shutdown`; then sends what it holds (briefly) and returns.
    pub async fn run(self, mut cursor: Cursor, shutdown: CancellationToken) {
        if matches!(self.url.scheme, Scheme::Https | Scheme::HttpsBatch) {
            return self.run_https(cursor, shutdown).await;
        }
        let stream = Connection::is_stream(self.url.scheme);
        let mut conn: Option<Connection> = None;
        let mut outbox = Outbox::default();
        let mut scratch = Vec::with_capacity(512);
        let mut deliveries = Vec::with_capacity(self.settings.batch_messages);
        let mut backoff = self.settings.backoff();
        let mut last_failure_notice: Option<Instant> = None;
        // When the current connection was opened: one that fails sooner than STABLE after it
        // (a handshake rejected after the client's Finished, a reset on the first write, ICMP
        // unreachable on UDP) is a failure like a refused connect, with the same backoff,
        // error count and notice; reconnecting at once spun a core at thousands of tries a second.
        let mut opened_at: Option<Instant> = None;
        loop {
            // Connect first, even with nothing to send: a dead target is announced at once.
            let failure = if conn.is_none() {
                let timeout = Duration::from_secs(self.settings.connect_timeout_secs.max(1));
                let attempt =
                    tokio::time::timeout(timeout, Connection::open(&self.url, self.tls.as_ref()));
                let result = tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = attempt => r.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))),
                };
                match result {
                    Ok(c) => {
                        conn = Some(c);
                        opened_at = Some(Instant::now());
                        self.counters.connected.store(true, Ordering::Relaxed);
                        None
                    }
                    Err(e) => Some(Failure::Connect(e)),
                }
            } else {
                None
            };
            let failure = match failure {
                Some(f) => Some(f),
                None => {
                    self.step(
                        &mut conn,
                        &mut cursor,
                        &mut deliveries,
                        &mut outbox,
                        &mut scratch,
                        stream,
                        &shutdown,
                    )
                    .await
                }
            };
            let Some(failure) = failure else {
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            };
            if let Failure::Stop = failure {
                break;
            }
            conn = None;
            self.counters.connected.store(false, Ordering::Relaxed);
            let stable = opened_at.take().is_some_and(|t| t.elapsed() >= STABLE);
            let (verb, e) = match failure {
                Failure::Connect(e) => ("connect to", e),
                Failure::Deliver(e) => ("deliver to", e),
                Failure::Closed(e) => {
                    if stable {
                        // A connection that worked for a while and then closed (a receiver's
                        // idle timeout, a restart): reconnect at once.
                        tracing::debug!(drain = %self.url, error = %e, "syslog drain connection closed");
                        backoff.reset();
                        continue;
                    }
                    ("deliver to", e)
                }
                Failure::Stop => unreachable!("handled above"),
            };
            if stable {
                backoff.reset();
            }
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            let interval = Duration::from_secs(self.settings.failure_notice_interval_secs);
            if last_failure_notice.is_none_or(|t| t.elapsed() >= interval) {
                last_failure_notice = Some(Instant::now());
                let text = format!(
                    "failed to {verb} syslog drain {}: {}",
                    self.url,
                    crate::short_reason(&e)
                );
                tracing::warn!("{text}");
                if let Some(source) = &self.source {
                    self.notice(source, text);
                }
            } else {
                tracing::debug!(drain = %self.url, error = %e, "syslog drain failed again");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        // Shutting down: one short try to deliver what is already formatted.
        if let (Some(c), false) = (conn.as_mut(), outbox.is_empty())
            && let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), c.send(&outbox)).await
        {
            self.counters
                .sent
                .fetch_add(outbox.len() as u64, Ordering::Relaxed);
        }
        self.counters.connected.store(false, Ordering::Relaxed);
    }

    /// One round on an open connection: wait for lines (or the peer's close), format, send.
    /// Returns what went wrong, if anything; `None` when the round went well.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        conn: &mut Option<Connection>,
        cursor: &mut Cursor,
        deliveries: &mut Vec<Delivery>,
        outbox: &mut Outbox,
        scratch: &mut Vec<u8>,
        stream: bool,
        shutdown: &CancellationToken,
    ) -> Option<Failure> {
        let c = conn.as_mut()?;
        if outbox.is_empty() {
            deliveries.clear();
            tokio::select! {
                () = shutdown.cancelled() => return Some(Failure::Stop),
                e = c.closed() => return Some(Failure::Closed(e)),
                _ = cursor.next_batch(deliveries, self.settings.batch_messages) => {}
            }
            for d in deliveries.drain(..) {
                match d {
                    Delivery::Log(env) => push_message(&env, &self.url, stream, outbox, scratch),
                    Delivery::Missed(m) => self.announce_loss(&m),
                }
            }
            if outbox.is_empty() {
                return None;
            }
        }
        match c.send(outbox).await {
            Ok(()) => {
                self.counters
                    .sent
                    .fetch_add(outbox.len() as u64, Ordering::Relaxed);
                outbox.clear();
                None
            }
            // Keep the outbox: it is sent again on the next connection.
            Err(e) => Some(Failure::Deliver(e)),
        }
    }

    /// The HTTPS variant: the same cursor, notices and backoff; POSTs instead of a socket.
    /// `https://` posts each message on its own; `https-batch://` joins what is waiting (up to
    /// [`BATCH_MAX_BYTES`], waiting at most [`BATCH_WAIT`] for more) into one POST.
    async fn run_https(self, mut cursor: Cursor, shutdown: CancellationToken) {
        let batch = self.url.scheme == Scheme::HttpsBatch;
        let timeout = Duration::from_secs(self.settings.connect_timeout_secs.max(1));
        let client = match self
            .tls
            .as_ref()
            .map(|tls| HttpsClient::new(&self.url, tls, timeout))
        {
            Some(Ok(c)) => c,
            other => {
                let reason = other
                    .and_then(Result::err)
                    .unwrap_or_else(|| "no tls configuration".into());
                tracing::error!(drain = %self.url, %reason, "cannot build the https client");
                return;
            }
        };
        // Messages formatted and not yet delivered, oldest first.
        let mut pending: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
        let mut pending_bytes = 0usize;
        let mut deliveries = Vec::with_capacity(self.settings.batch_messages);
        let mut backoff = self.settings.backoff();
        let mut last_failure_notice: Option<Instant> = None;
        loop {
            if pending.is_empty() {
                let deadline = Instant::now() + BATCH_WAIT;
                loop {
                    deliveries.clear();
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(deadline), if !pending.is_empty() => break,
                        _ = cursor.next_batch(&mut deliveries, self.settings.batch_messages) => {}
                    }
                    for d in deliveries.drain(..) {
                        match d {
                            Delivery::Log(env) => {
                                let mut msg = Vec::with_capacity(256);
                                format_rfc5424(&env, self.url.format, &mut msg);
                                pending_bytes += msg.len();
                                pending.push_back(msg);
                            }
                            Delivery::Missed(m) => self.announce_loss(&m),
                        }
                    }
                    if !batch || pending_bytes >= BATCH_MAX_BYTES {
                        break;
                    }
                }
                if pending.is_empty() {
                    continue;
                }
            }
            let attempt = if batch {
                let mut body = Vec::with_capacity(pending_bytes.min(BATCH_MAX_BYTES));
                let mut n = 0;
                for msg in &pending {
                    if n > 0 && body.len() + msg.len() > BATCH_MAX_BYTES {
                        break;
                    }
                    body.extend_from_slice(msg);
                    n += 1;
                }
                client.post(body).await.map(|()| n)
            } else {
                let msg = pending.front().cloned().unwrap_or_default();
                client.post(msg).await.map(|()| 1)
            };
            match attempt {
                Ok(n) => {
                    for msg in pending.drain(..n) {
                        pending_bytes -= msg.len();
                    }
                    self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                    self.counters.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.counters.connected.store(false, Ordering::Relaxed);
                    let interval = Duration::from_secs(self.settings.failure_notice_interval_secs);
                    if last_failure_notice.is_none_or(|t| t.elapsed() >= interval) {
                        last_failure_notice = Some(Instant::now());
                        let verb = if e.connect {
                            "connect to"
                        } else {
                            "deliver to"
                        };
                        let text =
                            format!("failed to {verb} syslog drain {}: {}", self.url, e.reason);
                        tracing::warn!("{text}");
                        if let Some(source) = &self.source {
                            self.notice(source, text);
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn announce_loss(&self, m: &sluice_router::MissedNotice) {
        self.counters.lost.fetch_add(m.count, Ordering::Relaxed);
        let text = format!(
            "{} messages lost for source {} in syslog drain {}",
            m.count, m.source_id, self.url
        );
        tracing::warn!("{text}");
        self.notice(&m.source_id, text);
    }

    /// Writes a router notice into `source`'s own stream.
    fn notice(&self, source: &str, text: String) {
        let mut env = Envelope::notice(source, text);
        env.tags.insert("drain".into(), self.url.to_string());
        if let Err(e) = self.router.publish_notice(env) {
            tracing::warn!(error = %e, "cannot publish a drain notice");
        }
    }
}

fn push_message(
    env: &(impl Fields + ?Sized),
    url: &DrainUrl,
    stream: bool,
    outbox: &mut Outbox,
    scratch: &mut Vec<u8>,
) {
    if stream {
        format_octet_counted(env, url.format, &mut outbox.bytes, scratch);
    } else {
        format_rfc5424(env, url.format, &mut outbox.bytes);
        outbox.bytes.pop(); // a datagram is one message: no trailing newline
    }
    outbox.ends.push(outbox.bytes.len());
}

/// How long a connection must stay up before its closing is a normal event rather than a
/// failure that backs off.
const STABLE: Duration = Duration::from_secs(1);

/// Why a drain's connection ended.
#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Deliver(std::io::Error),
    /// The peer closed or reset the connection, or rejected it after the handshake.
    Closed(std::io::Error),
    Stop,
}
