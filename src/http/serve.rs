//! Serving HTTP connections: Sluice's own accept loop (shared with ingest, so the same
//! connection limit and EMFILE backoff), hyper with a header read timeout, and graceful
//! shutdown. warp's built-in server can set neither, and logs every client disconnect as an
//! error.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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
    let service = warp::service(routes(state));
    let graceful = GracefulShutdown::new();
    let connection = |stream, peer: String, slot| {
        let service = TowerToHyperService::new(service.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tasks.spawn(async move {
            let ended = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "https handshake failed");
                        Ok(())
                    }
                },
            };
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
