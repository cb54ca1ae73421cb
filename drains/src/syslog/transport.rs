//! Transports for syslog drains. They only move bytes that [`super::format`] produced: TCP and
//! TLS write octet-counted streams; UDP sends one message per datagram.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::url::{DrainUrl, Scheme};
pub use crate::tls::{TlsOptions, tls_client_config};

/// How long a TLS 1.3 connection waits after its handshake for the receiver to refuse it.
const TLS13_REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// An open connection to a drain's target.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

/// Messages ready to send: for stream transports the octet-counted bytes back to back; for UDP
/// the bare messages, with `ends` marking where each one stops.
#[derive(Debug, Default)]
pub struct Outbox {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

impl Connection {
    pub async fn open(
        url: &DrainUrl,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> io::Result<Connection> {
        let addr = resolve(url).await?;
        match url.scheme {
            Scheme::Tcp => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Connection::Tcp(s))
            }
            Scheme::Tls => {
                let config =
                    tls.ok_or_else(|| io::Error::other("tls drain without tls configuration"))?;
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                let mut stream = TlsConnector::from(config.clone()).connect(name, s).await?;
                if stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                    // In TLS 1.3 the client is done once it has sent its Finished; a receiver
                    // that refuses the client's certificate (or its absence) says so only
                    // after. Wait briefly for that answer, so a refused drain is a failed
                    // connect and no line is counted as sent into it.
                    let mut byte = [0u8; 1];
                    match tokio::time::timeout(TLS13_REFUSAL_WAIT, stream.read(&mut byte)).await {
                        Err(_) | Ok(Ok(1..)) => {}
                        Ok(Ok(0)) => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the receiver closed the connection after the handshake",
                            ));
                        }
                        Ok(Err(e)) => return Err(e),
                    }
                }
                Ok(Connection::Tls(Box::new(stream)))
            }
            Scheme::Udp => {
                let local: SocketAddr = if addr.is_ipv4() {
                    if addr.ip().is_loopback() {
                        ([127, 0, 0, 1], 0).into()
                    } else {
                        ([0, 0, 0, 0], 0).into()
                    }
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local).await?;
                s.connect(addr).await?;
                Ok(Connection::Udp(s))
            }
            Scheme::Https | Scheme::HttpsBatch => {
                Err(io::Error::other("https drains do not use a socket"))
            }
        }
    }

    /// Whether this transport frames with octet counting (streams) or datagrams.
    pub fn is_stream(scheme: Scheme) -> bool {
        matches!(scheme, Scheme::Tcp | Scheme::Tls)
    }

    /// Sends everything in `outbox`.
    pub async fn send(&mut self, outbox: &Outbox) -> io::Result<()> {
        match self {
            Connection::Tcp(s) => s.write_all(&outbox.bytes).await,
            Connection::Tls(s) => {
                s.write_all(&outbox.bytes).await?;
                s.flush().await
            }
            Connection::Udp(s) => {
                let mut start = 0;
                for &end in &outbox.ends {
                    s.send(&outbox.bytes[start..end]).await?;
                    start = end;
                }
                Ok(())
            }
        }
    }

    /// Resolves when the peer closes a stream connection (syslog receivers never send data),
    /// or, for UDP, when the kernel reports the target unreachable (an ICMP error for an
    /// earlier datagram).
    pub async fn closed(&mut self) -> io::Error {
        let mut buf = [0u8; 256];
        loop {
            let read = match self {
                Connection::Tcp(s) => s.read(&mut buf).await,
                Connection::Tls(s) => s.read(&mut buf).await,
                Connection::Udp(s) => match s.recv(&mut buf).await {
                    Ok(_) => continue, // a datagram from the target: not ours to read
                    Err(e) => Err(e),
                },
            };
            match read {
                Ok(0) => {
                    return io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the receiver closed the connection",
                    );
                }
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    }
}

async fn resolve(url: &DrainUrl) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(url.authority())
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} did not resolve", url.host),
            )
        })
}
