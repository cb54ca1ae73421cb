//! Transports for syslog drains. They only move bytes that [`super::format`] produced: TCP and
//! TLS write octet-counted streams; UDP sends one message per datagram.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::url::{DrainUrl, Scheme};

/// TLS settings for `syslog-tls://` drains.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the CAs to trust; the system's CAs when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Off by default; `?insecure-skip-verify=true` also sets it.
    pub insecure_skip_verify: bool,
}

/// Where Debian keeps the system's CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the rustls client configuration once, when the drain is bound, so a bad file is an
/// error the API can report instead of a failure at every reconnect.
pub fn tls_client_config(
    opts: &TlsOptions,
    url: &DrainUrl,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if opts.insecure_skip_verify || url.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let file = opts
            .ca_file
            .clone()
            .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
        let certs = CertificateDer::pem_file_iter(&file)
            .map_err(|e| format!("cannot read CA file {}: {e}", file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("invalid CA file {}: {e}", file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid CA certificate in {}: {e}", file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("no CA certificates in {}", file.display()));
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read client certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("invalid client certificate or key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("mutual TLS needs both cert_file and key_file".into()),
    };
    Ok(Arc::new(config))
}

/// The opt-out verifier: checks signatures are well formed, trusts any certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

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
