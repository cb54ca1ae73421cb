//! `https://` (one POST per message) and `https-batch://` (POSTs of newline-joined messages)
//! drains. The body is the RFC 5424 text, as for the socket transports; TLS is the same rustls
//! configuration, so certificate checks and mutual TLS work alike.

use std::sync::Arc;
use std::time::Duration;

use super::url::DrainUrl;

/// Most bytes in one `https-batch` POST.
pub const BATCH_MAX_BYTES: usize = 1024 * 1024;
/// How long an `https-batch` drain waits for more messages before posting a short batch.
pub const BATCH_WAIT: Duration = Duration::from_millis(200);

/// An HTTP client for one drain.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    client: reqwest::Client,
    endpoint: String,
}

/// Why a POST failed, phrased without the url (it may hold credentials).
#[derive(Debug)]
pub struct PostError {
    pub connect: bool,
    pub reason: String,
}

impl HttpsClient {
    pub fn new(
        url: &DrainUrl,
        tls: &Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<HttpsClient, String> {
        // reqwest wants a process-wide provider even with a preconfigured client; ring is the
        // one this build has. A provider installed already (by the binary) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = (**tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(connect_timeout)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.without_url().to_string())?;
        Ok(HttpsClient {
            client,
            endpoint: url.endpoint.clone(),
        })
    }

    pub async fn post(&self, body: Vec<u8>) -> Result<(), PostError> {
        let resp = self
            .client
            .post(&self.endpoint)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| PostError {
                connect: e.is_connect(),
                reason: reason(e),
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError {
                connect: false,
                reason: format!("HTTP {status}"),
            })
        }
    }
}

/// The innermost cause, lowercase, without the url.
fn reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut inner: &dyn std::error::Error = &e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    crate::short_reason(&inner)
}
