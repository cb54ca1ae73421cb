//! What every listener shares: the accept loop, the cap on connections per listener, and the
//! budget of bytes that all stream connections together may hold in their buffers.
//!
//! Every input is bounded before it is buffered: a connection past its listener's
//! `max_connections` is answered and closed at once; a frame larger than a connection's base
//! buffer is paid for from one [`Budget`] before it is read, so 100 clients each half-sending an
//! 8 MiB frame cost at most the budget, not 800 MiB (the rest wait, unread, in their sockets).
//! What clients cause is logged through a [`Throttle`]: a client refused a million times a
//! second writes a log line a second, not a million (the metrics count every one).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// One kind of log line that clients cause (a refused batch, a connection closed for bad
/// framing): written at most once a second, with how many were held back since the last.
#[derive(Debug)]
pub struct Throttle {
    /// When the next line may be written (ns since the epoch).
    next_ns: AtomicI64,
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            next_ns: AtomicI64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines held back since the last
    /// one; `None` (counted) otherwise.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(sluice_router::envelope::now_ns())
    }

    fn admit_at(&self, now: i64) -> Option<u64> {
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now + 1_000_000_000,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// `tracing::warn!` through a [`Throttle`] of its own call site: at most a line a second, with
/// `held_back`, the lines of that site not written since the last. For what clients cause.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::net::Throttle = $crate::net::Throttle::new();
        if let Some(held_back) = THROTTLE.admit() {
            tracing::warn!(held_back, $($arg)+);
        }
    }};
}

/// A listener the accept loop takes connections from; TCP sockets get `TCP_NODELAY`.
pub(crate) trait Accept {
    type Stream;
    /// The next connection, with a name for it in logs.
    fn next(&self) -> impl Future<Output = std::io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<(TcpStream, String)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn next(&self) -> std::io::Result<(UnixStream, String)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, "unix".to_owned()))
    }
}

/// A listener's cap on open connections. Each connection holds a [`Slot`] until it ends.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// The listener's name, for logs.
    what: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
}

/// One connection's place under its listener's [`ConnectionLimit`].
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionLimit {
    pub fn new(what: &'static str, max: usize) -> ConnectionLimit {
        ConnectionLimit {
            what,
            max,
            slots: Arc::new(Semaphore::new(max)),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// Accepts until `shutdown`. Each connection within `limit` goes to `on_connection` (which
/// spawns its task, holding the slot); one past it goes to `on_refused`, which may say why
/// before it is dropped.
///
/// Accept errors (out of file descriptors, mostly) are transient: the loop backs off, from 10 ms
/// doubling to a second, so that a process at its descriptor limit does not spin, and logs once
/// per streak of failures rather than once per try.
pub(crate) async fn accept_loop<L: Accept>(
    listener: L,
    shutdown: &CancellationToken,
    limit: &ConnectionLimit,
    mut on_connection: impl FnMut(L::Stream, String, Slot),
    mut on_refused: impl FnMut(L::Stream, String),
) {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);
    let mut pause = FIRST;
    let mut failures = 0u64;
    // Refusals are logged once a second at most, per listener: a flood must not become a
    // flood of logs.
    let refusals = Throttle::new();
    loop {
        let accepted = tokio::select! {
            a = listener.next() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failures > 0 {
                    tracing::info!(failures, "accepting connections again");
                }
                pause = FIRST;
                failures = 0;
                match limit.slots.clone().try_acquire_owned() {
                    Ok(permit) => on_connection(stream, peer, Slot(permit)),
                    Err(_) => {
                        if let Some(held_back) = refusals.admit() {
                            tracing::warn!(
                                listener = limit.what,
                                max_connections = limit.max,
                                refused = held_back + 1,
                                "refusing connections: the listener is at its limit"
                            );
                        }
                        on_refused(stream, peer);
                    }
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                failures += 1;
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
                pause = (pause * 2).min(MOST);
            }
        }
    }
}

/// Bytes that all stream connections together may hold beyond their base buffers: frames being
/// assembled, and envelopes being decoded from them. Paid for before the bytes are read; a
/// connection that cannot pay waits, unread (TCP backpressure), and holds nothing meanwhile.
#[derive(Debug, Clone)]
pub struct Budget {
    total: usize,
    bytes: Arc<Semaphore>,
}

impl Budget {
    pub fn new(total: usize) -> Budget {
        // A semaphore counts at most usize::MAX >> 3 permits; budgets are far below that.
        let total = total.min(Semaphore::MAX_PERMITS);
        Budget {
            total,
            bytes: Arc::new(Semaphore::new(total)),
        }
    }

    /// Bytes of the budget in use now.
    pub fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// Waits until `bytes` are free and takes them. `bytes` larger than the whole budget are
    /// taken as the whole budget (config validation keeps frames below it).
    pub async fn take(&self, bytes: usize) -> Held {
        let n = bytes.min(self.total).min(u32::MAX as usize) as u32;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget's semaphore is never closed");
        Held(Some(permit))
    }
}

/// Bytes taken from a [`Budget`]; given back on drop.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives the bytes back now.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

/// Sleeps until `deadline`; never wakes for `None`.
pub(crate) async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends a refused connection its `answer`, ends our side, and reads what the client sent until
/// it closes (a second at most, in all): closing with its request unread would reset the
/// connection, and the client could lose the answer.
pub(crate) async fn answer_and_close<S>(mut stream: S, answer: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = Throttle::new();
        let s = 1_000_000_000;
        assert_eq!(t.admit_at(10 * s), Some(0));
        for i in 1..=5 {
            assert_eq!(t.admit_at(10 * s + i * s / 10), None);
        }
        assert_eq!(t.admit_at(11 * s), Some(5), "the five held back are told");
        assert_eq!(t.admit_at(11 * s + 1), None);
        assert_eq!(t.admit_at(20 * s), Some(1));
    }
}
