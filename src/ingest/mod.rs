//! Ways envelopes enter Sluice. Each listener decodes its wire format and publishes into the
//! [`sluice_router::Router`]; none of them waits for a consumer.

pub mod native;
pub mod syslog;

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A listener the ingest loops accept connections from; TCP sockets get `TCP_NODELAY`.
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

/// Accepts until `shutdown`, handing each connection to `on_connection` (which spawns its task).
/// Accept errors (out of file descriptors, mostly) are transient: log, pause, carry on.
pub(crate) async fn accept_loop<L: Accept>(
    listener: L,
    shutdown: &CancellationToken,
    mut on_connection: impl FnMut(L::Stream, String),
) {
    loop {
        let accepted = tokio::select! {
            a = listener.next() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => on_connection(stream, peer),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
