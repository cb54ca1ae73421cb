//! The server's TLS: one certificate and key (`tls.cert_file`, `tls.key_file`) for every
//! listener that speaks TLS (`syslog_tls`, and HTTP and native ingest with `tls.http` and
//! `tls.ingest`), re-read on SIGHUP without dropping a connection: handshakes from then on use
//! the new pair, connections already up keep theirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_drains::tls::{TlsError, tls_server_config};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and key the server presents, reloadable.
#[derive(Debug)]
pub struct ServerTls {
    config: parking_lot::RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// The certificate and key; with `client_ca`, clients must present a certificate it signed.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        Ok(Arc::new(ServerTls {
            config: parking_lot::RwLock::new(tls_server_config(cert, key, client_ca)?),
        }))
    }

    /// Reads a certificate and key (the same files again, or others) without using them yet.
    pub fn read(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        tls_server_config(cert, key, client_ca)
    }

    /// Handshakes from now on present `config` (from [`ServerTls::read`]).
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.write() = config;
    }

    /// The handshake with the pair in use now, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config.read().clone());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake timed out")
            })?
    }
}
