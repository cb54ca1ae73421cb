//! TLS material, loaded once where a connection is set up (a drain bound, a listener started),
//! so that a bad file is an error someone can read rather than a failure at every handshake:
//! the client configuration of `syslog-tls://` and `https://` drains, and the server
//! configuration of a TLS listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::syslog::url::DrainUrl;

/// Why TLS material could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or is not PEM.
    #[error("cannot read {what} {}: {reason}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A PEM file holds no certificate.
    #[error("no certificates in {what} {}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    /// rustls refused what was read.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A client certificate without its key, or a key without its certificate.
    #[error("mutual TLS needs both cert_file and key_file")]
    HalfPair,
}

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
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            what: "TLS versions",
            reason: e.to_string(),
        })?;
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
        for cert in certificates("CA file", &file)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                what: "CA certificate",
                reason: format!("{e} (in {})", file.display()),
            })?;
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certificates("client certificate", cert)?,
                private_key("client key", key)?,
            )
            .map_err(|e| TlsError::Invalid {
                what: "client certificate or key",
                reason: e.to_string(),
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfPair),
    };
    Ok(Arc::new(config))
}

/// The rustls server configuration for a TLS listener, from PEM files; with `client_ca`, a
/// client must present a certificate that CA signed (mutual TLS).
pub fn tls_server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates("tls.cert_file", cert_file)?;
    let key = private_key("tls.key_file", key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            what: "TLS versions",
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("tls.client_ca_file", ca)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    what: "tls.client_ca_file",
                    reason: e.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Invalid {
                        what: "tls.client_ca_file",
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            what: "tls certificate or key",
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: pem_reason(e),
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The private key in a PEM file.
fn private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: pem_reason(e),
    })
}

/// "no such file or directory", not "I/O error: No such file or directory (os error 2)".
fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => crate::short_reason(&io),
        other => crate::short_reason(&other),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_kind_and_a_short_line() {
        let url = DrainUrl::parse("syslog-tls://127.0.0.1:6514").unwrap();
        let missing = TlsOptions {
            ca_file: Some("/nonexistent.pem".into()),
            ..TlsOptions::default()
        };
        let e = tls_client_config(&missing, &url).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read CA file /nonexistent.pem: no such file or directory"
        );
        assert!(matches!(
            e,
            TlsError::Read {
                what: "CA file",
                ..
            }
        ));

        let empty = std::env::temp_dir().join(format!("sluice-tls-{}.pem", std::process::id()));
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = tls_server_config(&empty, &empty, None).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Empty {
                    what: "tls.cert_file",
                    ..
                }
            ),
            "{e}"
        );
        let half = TlsOptions {
            ca_file: Some(empty.clone()),
            cert_file: Some(empty.clone()),
            insecure_skip_verify: true,
            ..TlsOptions::default()
        };
        assert_eq!(
            tls_client_config(&half, &url).unwrap_err(),
            TlsError::HalfPair
        );
        std::fs::remove_file(&empty).unwrap();
    }
}
