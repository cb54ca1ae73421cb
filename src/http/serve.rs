//! Serving HTTP connections: Sluice's own accept loop (shared with ingest, so the same
//! connection limit and EMFILE backoff), hyper with a header read timeout, a send timeout, and
//! graceful shutdown. warp's built-in server can set none of these, and logs every client
//! disconnect as an error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppState, routes};
use crate::net::{ConnectionLimit, accept_loop, answer_and_close};
use crate::tls::ServerTls;

/// What a connection past `http.max_connections` is told before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 69\r\n\r\n{\"error\":\"too many connections: the server is at http.max_connections\"}";

/// Serves `listener` until `shutdown`, then lets open requests finish (tails close themselves
/// on the same signal).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let http = &state.config.http;
    let limit = ConnectionLimit::new("http", http.max_connections);
    let metrics = state.metrics.clone();
    metrics.track_listener("http", &limit);
    let header_timeout = Duration::from_secs(http.header_read_timeout_secs);
    let send_timeout = Duration::from_secs(http.send_timeout_secs);
    let service = warp::service(routes(state));
    let graceful = GracefulShutdown::new();
    let connection = |stream, peer: String, slot| {
        // Each request can reach its connection's clock (a WebSocket upgrade stops it).
        let clock = SendClock::new(send_timeout);
        let service = {
            let (service, clock) = (TowerToHyperService::new(service.clone()), clock.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(clock.clone());
                hyper::service::Service::call(&service, req)
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let ended = match tls {
                None => {
                    let io = TokioIo::new(SendTimeout::new(stream, clock.clone()));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let io = TokioIo::new(SendTimeout::new(stream, clock.clone()));
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "https handshake failed");
                        Ok(())
                    }
                },
            };
            if clock.expired() {
                metrics.http_send_timeouts.inc();
            }
            if let Err(e) = ended {
                // Clients that go away, headers that never came: the client's doing.
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
            drop(slot);
        });
    };
    let refused = |stream: tokio::net::TcpStream, _peer| {
        metrics.connection_refused("http");
        tasks.spawn(answer_and_close(stream, TOO_MANY));
    };
    accept_loop(listener, &shutdown, &limit, connection, refused).await;
    graceful.shutdown().await;
}

/// A connection's send timeout (`http.send_timeout_secs`), reachable from its requests as an
/// extension: while it runs, a connection whose client takes none of what is written to it
/// for that long is cut off. A WebSocket tail stops it once upgraded (see [`SendClock::stop`]).
#[derive(Debug, Clone)]
pub struct SendClock(Arc<ClockState>);

#[derive(Debug)]
struct ClockState {
    limit: Duration,
    running: AtomicBool,
    expired: AtomicBool,
}

impl SendClock {
    pub fn new(limit: Duration) -> SendClock {
        SendClock(Arc::new(ClockState {
            limit,
            running: AtomicBool::new(true),
            expired: AtomicBool::new(false),
        }))
    }

    /// From now on, writes to the connection may wait as long as the client makes them.
    pub fn stop(&self) {
        self.0.running.store(false, Ordering::Relaxed);
    }

    /// Runs it again: a WebSocket sending what it holds a share of a budget for (a tail's
    /// backfill from storage) is cut off as a response would be.
    pub fn start(&self) {
        self.0.running.store(true, Ordering::Relaxed);
    }

    /// Whether it cut the connection off.
    pub fn expired(&self) -> bool {
        self.0.expired.load(Ordering::Relaxed)
    }
}

/// A connection's stream, whose writes fail with `TimedOut` once they have made no progress for
/// its clock's limit (while the clock runs). The timer exists only while a write waits.
struct SendTimeout<S> {
    inner: S,
    clock: SendClock,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    fn new(inner: S, clock: SendClock) -> SendTimeout<S> {
        SendTimeout {
            inner,
            clock,
            waiting: None,
        }
    }

    /// What a write's poll becomes: progress resets the timer, waiting starts it (or finds it
    /// run out).
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() || !self.clock.0.running.load(Ordering::Relaxed) {
            self.waiting = None;
            return polled;
        }
        let limit = self.clock.0.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.clock.0.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing for {} s (http.send_timeout_secs)",
                limit.as_secs()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}
