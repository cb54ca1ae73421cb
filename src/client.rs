//! Talking to a running server, for `sluice emit`, `sluice logs` and tests: native ingest with
//! acknowledgements, `recent` over HTTP, and WebSocket tails.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sluice_router::codec::{self, Reply};
use sluice_router::{Envelope, Filter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::io_reason;

/// Characters left as they are in a path segment or query value.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a client command failed, phrased for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to sluice at {addr}: {reason} (is `sluice serve` running there?)")]
    Connect { addr: String, reason: String },
    #[error("unknown source {0:?}: sluice has received no logs for it")]
    UnknownSource(String),
    #[error("the server refused the request: {0}")]
    Refused(String),
    #[error("lost the connection to sluice at {addr}: {reason}")]
    Lost { addr: String, reason: String },
    #[error("unexpected answer from sluice: {0}")]
    Protocol(String),
}

/// Where the ingest listener is: a TCP address, or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestAddr {
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for IngestAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestAddr::Tcp(a) => f.write_str(a),
            IngestAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl IngestAddr {
    /// `host:port`, or a path (anything containing `/`, optionally prefixed `unix:`).
    pub fn parse(s: &str) -> IngestAddr {
        match s.strip_prefix("unix:") {
            Some(path) => IngestAddr::Unix(path.into()),
            None if s.contains('/') => IngestAddr::Unix(s.into()),
            None => IngestAddr::Tcp(s.to_owned()),
        }
    }
}

/// A native ingest connection in `ack=count` mode: a writer for frames and a reader for the
/// replies, usable from two tasks at once.
#[derive(Debug)]
pub struct IngestConnection {
    pub writer: IngestWriter,
    pub replies: ReplyReader,
}

/// The writing half of an [`IngestConnection`].
pub struct IngestWriter {
    w: Box<dyn AsyncWrite + Unpin + Send>,
    addr: String,
}

/// The reading half of an [`IngestConnection`]: one [`Reply`] per frame sent.
pub struct ReplyReader {
    r: Box<dyn AsyncRead + Unpin + Send>,
    buf: BytesMut,
    addr: String,
}

impl std::fmt::Debug for IngestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWriter")
            .field("addr", &self.addr)
            .finish()
    }
}

impl std::fmt::Debug for ReplyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyReader")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Connects to native ingest over TCP or a Unix socket and turns acknowledgements on.
pub async fn connect_ingest(addr: &IngestAddr) -> Result<IngestConnection, ClientError> {
    connect_ingest_with(addr, "ack=count").await
}

/// Like [`connect_ingest`] with another acknowledgement mode: `ack=durable` answers each batch
/// only once it is in the persister's file.
pub async fn connect_ingest_with(
    addr: &IngestAddr,
    ack: &str,
) -> Result<IngestConnection, ClientError> {
    connect_ingest_as(addr, ack, None).await
}

/// Like [`connect_ingest_with`], first presenting `token` (the control word `auth=TOKEN`) to a
/// server that has tokens configured.
pub async fn connect_ingest_as(
    addr: &IngestAddr,
    ack: &str,
    token: Option<&str>,
) -> Result<IngestConnection, ClientError> {
    let shown = addr.to_string();
    let failed = |e: std::io::Error| ClientError::Connect {
        addr: shown.clone(),
        reason: io_reason(&e),
    };
    let (r, w): (
        Box<dyn AsyncRead + Unpin + Send>,
        Box<dyn AsyncWrite + Unpin + Send>,
    ) = match addr {
        IngestAddr::Tcp(a) => {
            let s = TcpStream::connect(a.as_str()).await.map_err(failed)?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        IngestAddr::Unix(p) => {
            let (r, w) = tokio::net::UnixStream::connect(p)
                .await
                .map_err(failed)?
                .into_split();
            (Box::new(r), Box::new(w))
        }
    };
    IngestConnection::start(r, w, shown, ack, token).await
}

/// [`connect_ingest_as`], over TLS when `tls` is given (a server with `tls.ingest`).
pub async fn connect_ingest_tls(
    addr: &IngestAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    ack: &str,
    token: Option<&str>,
) -> Result<IngestConnection, ClientError> {
    let (Some(tls), IngestAddr::Tcp(a)) = (tls, addr) else {
        return connect_ingest_as(addr, ack, token).await;
    };
    let failed = |e: std::io::Error| ClientError::Connect {
        addr: a.clone(),
        reason: io_reason(&e),
    };
    let tcp = TcpStream::connect(a.as_str()).await.map_err(failed)?;
    let _ = tcp.set_nodelay(true);
    let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(failed)?;
    IngestConnection::over(stream, a, ack, token).await
}

impl IngestConnection {
    /// Native ingest over a stream already connected (TLS, say), `shown` as its address.
    pub async fn over<S>(
        stream: S,
        shown: &str,
        ack: &str,
        token: Option<&str>,
    ) -> Result<IngestConnection, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        IngestConnection::start(Box::new(r), Box::new(w), shown.to_owned(), ack, token).await
    }

    async fn start(
        r: Box<dyn AsyncRead + Unpin + Send>,
        w: Box<dyn AsyncWrite + Unpin + Send>,
        shown: String,
        ack: &str,
        token: Option<&str>,
    ) -> Result<IngestConnection, ClientError> {
        let mut conn = IngestConnection {
            writer: IngestWriter {
                w,
                addr: shown.clone(),
            },
            replies: ReplyReader {
                r,
                buf: BytesMut::new(),
                addr: shown,
            },
        };
        conn.hello(ack, token).await?;
        Ok(conn)
    }

    async fn hello(&mut self, ack: &str, token: Option<&str>) -> Result<(), ClientError> {
        let mut hello = BytesMut::new();
        if let Some(token) = token {
            codec::encode_control_frame(&format!("auth={token}"), &mut hello);
        }
        codec::encode_control_frame(ack, &mut hello);
        self.writer.write(&hello).await
    }
}

impl IngestConnection {
    /// Reports an event about a source (the control word `event=JSON`: see
    /// [`crate::ingest::event`]) and waits for its acknowledgement.
    pub async fn send_event(&mut self, event: &serde_json::Value) -> Result<u64, ClientError> {
        let mut frame = BytesMut::new();
        codec::encode_control_frame(
            &format!("{}{event}", crate::ingest::event::PREFIX),
            &mut frame,
        );
        self.writer.write(&frame).await?;
        self.replies.next().await
    }

    /// Sends one batch and waits for its acknowledgement.
    pub async fn send_batch(&mut self, envs: &[Envelope]) -> Result<u64, ClientError> {
        self.writer.write(&codec::batch_frame(envs)).await?;
        self.replies.next().await
    }
}

impl IngestWriter {
    /// Writes already-framed bytes.
    pub async fn write(&mut self, frames: &[u8]) -> Result<(), ClientError> {
        self.w
            .write_all(frames)
            .await
            .map_err(|e| ClientError::Lost {
                addr: self.addr.clone(),
                reason: io_reason(&e),
            })
    }

    /// Tells the server nothing more is coming; it answers what it has, then closes.
    pub async fn finish(&mut self) -> Result<(), ClientError> {
        self.w.shutdown().await.map_err(|e| ClientError::Lost {
            addr: self.addr.clone(),
            reason: io_reason(&e),
        })
    }
}

impl ReplyReader {
    /// For connections without acknowledgements: waits until the server closes its side,
    /// failing with the first refusal it sent, if any.
    pub async fn until_closed(&mut self) -> Result<(), ClientError> {
        while let Some(reply) = self.next_reply().await? {
            if let Some(e) = reply.error {
                return Err(ClientError::Refused(e));
            }
        }
        Ok(())
    }

    /// Waits for the next reply. A reply carrying an error becomes [`ClientError::Refused`].
    pub async fn next(&mut self) -> Result<u64, ClientError> {
        match self.next_reply().await? {
            Some(Reply { error: Some(e), .. }) => Err(ClientError::Refused(e)),
            Some(reply) => Ok(reply.accepted),
            None => Err(ClientError::Lost {
                addr: self.addr.clone(),
                reason: "the server closed the connection".into(),
            }),
        }
    }

    /// The next reply frame; `None` once the server has closed its side.
    async fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        loop {
            let frame = codec::decode_frame(&mut self.buf, 1 << 20)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(frame) = frame {
                return codec::decode_exact(&frame)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
            let n = self
                .r
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| ClientError::Lost {
                    addr: self.addr.clone(),
                    reason: io_reason(&e),
                })?;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// What a tail or `recent` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Filter,
    pub backfill: Option<usize>,
    /// Resume after this seq (0: from the first stored line).
    pub since_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl Query {
    fn params(&self) -> String {
        let mut p = Vec::new();
        let list = |values: &[String]| {
            values
                .iter()
                .map(|v| utf8_percent_encode(v, KEEP).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.filter.origins.is_empty() {
            p.push(format!("origin={}", list(&self.filter.origins)));
        }
        if !self.filter.instances.is_empty() {
            p.push(format!("instance={}", list(&self.filter.instances)));
        }
        if let Some(c) = self.filter.channel {
            p.push(format!("channel={}", c.as_str()));
        }
        if let Some(s) = &self.filter.step {
            p.push(format!("step={}", utf8_percent_encode(s, KEEP)));
        }
        if let Some(n) = self.backfill {
            p.push(format!("backfill={n}"));
        }
        if let Some(n) = self.since_seq {
            p.push(format!("since_seq={n}"));
        }
        if let Some(n) = self.limit {
            p.push(format!("limit={n}"));
        }
        p.join("&")
    }
}

/// `value` percent-encoded for a URL's path segment or query.
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, KEEP).to_string()
}

/// A server's HTTP side as a client reaches it: its address, the token to present, and, for a
/// server whose HTTP listener speaks TLS (`tls.http`), the TLS client to use (`https://`,
/// `wss://`).
#[derive(Debug, Clone)]
pub struct Remote {
    pub http: String,
    pub token: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Remote {
    /// A plain-HTTP server without tokens at `http`.
    pub fn plain(http: &str) -> Remote {
        Remote {
            http: http.to_owned(),
            token: None,
            tls: None,
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.http)
    }

    fn http_client(&self) -> Result<reqwest::Client, ClientError> {
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = &self.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        builder
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// A TLS client configuration trusting `ca` (PEM), or the system's CAs.
pub fn tls_client(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let file = ca.unwrap_or(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let bad = |reason: String| ClientError::Protocol(format!("{}: {reason}", file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `GET` of a source's JSON resource (`stats`, `recent?...`): 404 is an unknown source, any
/// other failure the server's reason.
async fn get_source_json<T: serde::de::DeserializeOwned>(
    remote: &Remote,
    source: &str,
    resource: &str,
) -> Result<T, ClientError> {
    let http = remote.http.as_str();
    let url = remote.url(&format!(
        "/api/v1/sources/{}/{resource}",
        encode_component(source)
    ));
    let mut request = remote.http_client()?.get(&url);
    if let Some(token) = &remote.token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.map_err(|e| http_error(http, &e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| http_error(http, &e))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ClientError::UnknownSource(source.to_owned()));
    }
    if !status.is_success() {
        return Err(ClientError::Refused(error_message(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Every source the server knows (`GET /api/v1/sources`, page after page), sorted by id.
pub async fn sources(remote: &Remote) -> Result<Vec<serde_json::Value>, ClientError> {
    let http = remote.http.as_str();
    let client = remote.http_client()?;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/api/v1/sources?limit=10000".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_component(a)));
        }
        let mut request = client.get(remote.url(&path));
        if let Some(token) = &remote.token {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.map_err(|e| http_error(http, &e))?;
        let status = resp.status();
        let more = resp.headers().contains_key(reqwest::header::LINK);
        let body = resp.bytes().await.map_err(|e| http_error(http, &e))?;
        if !status.is_success() {
            return Err(ClientError::Refused(error_message(&body)));
        }
        let page: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        after = page
            .last()
            .and_then(|s| s["source_id"].as_str())
            .map(str::to_owned);
        all.extend(page);
        if !more || after.is_none() {
            return Ok(all);
        }
    }
}

/// A JSON request to the API (`GET`, `POST` with `body`, `DELETE`): the answer's JSON (`null`
/// for an empty body); a failing status is [`ClientError::Refused`] with the server's reason.
pub async fn api(
    remote: &Remote,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let http = remote.http.as_str();
    let mut request = remote.http_client()?.request(method, remote.url(path));
    if let Some(token) = &remote.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request.send().await.map_err(|e| http_error(http, &e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| http_error(http, &e))?;
    if !status.is_success() {
        return Err(ClientError::Refused(error_message(&bytes)));
    }
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The newest seq of `source` (`GET /api/v1/sources/{id}/stats`): in memory or in storage.
pub async fn newest_seq(remote: &Remote, source: &str) -> Result<u64, ClientError> {
    let stats: serde_json::Value = get_source_json(remote, source, "stats").await?;
    stats["published"]
        .as_u64()
        .ok_or_else(|| ClientError::Protocol("stats without published".into()))
}

/// `GET /api/v1/sources/{id}/recent` as envelopes, oldest first.
pub async fn recent(
    remote: &Remote,
    source: &str,
    query: &Query,
) -> Result<Vec<Envelope>, ClientError> {
    let resource = format!("recent?format=json&{}", query.params());
    get_source_json(remote, source, &resource).await
}

/// A live WebSocket tail in `msgpack` format.
pub struct Tail {
    ws: tokio_tungstenite::WebSocketStream<Box<dyn Stream>>,
    http: String,
}

/// What a tail's WebSocket runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("http", &self.http).finish()
    }
}

/// Opens `GET /api/v1/sources/{id}/stream?format=msgpack&...`.
pub async fn tail(remote: &Remote, source: &str, query: &Query) -> Result<Tail, ClientError> {
    let path = format!(
        "/api/v1/sources/{}/stream?format=msgpack&{}",
        encode_component(source),
        query.params()
    );
    open_tail(remote, &path).await
}

/// Opens `GET /api/v1/firehose?format=msgpack&...`: every source.
pub async fn firehose(remote: &Remote, query: &Query) -> Result<Tail, ClientError> {
    open_tail(
        remote,
        &format!("/api/v1/firehose?format=msgpack&{}", query.params()),
    )
    .await
}

async fn open_tail(remote: &Remote, path: &str) -> Result<Tail, ClientError> {
    use tungstenite::client::IntoClientRequest;
    let http = remote.http.as_str();
    // The handshake's own URL is ws:// even over TLS: the stream below is already encrypted.
    let url = format!("ws://{http}{path}");
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(token) = &remote.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Protocol("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let connect_failed = |e: &std::io::Error| ClientError::Connect {
        addr: http.to_owned(),
        reason: io_reason(e),
    };
    let tcp = TcpStream::connect(http)
        .await
        .map_err(|e| connect_failed(&e))?;
    let stream: Box<dyn Stream> = match &remote.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let host = http.rsplit_once(':').map_or(http, |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| connect_failed(&e))?;
            Box::new(tls)
        }
    };
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(Tail {
            ws,
            http: http.to_owned(),
        }),
        Err(tungstenite::Error::Io(e)) => Err(connect_failed(&e)),
        Err(tungstenite::Error::Http(resp)) => Err(ClientError::Refused(error_message(
            resp.body().as_deref().unwrap_or_default(),
        ))),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

impl Tail {
    /// The next batch of envelopes; `Ok(None)` when the server closed the stream normally.
    pub async fn next(&mut self) -> Result<Option<(Vec<Envelope>, Option<String>)>, ClientError> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            let msg = msg.map_err(|e| ClientError::Lost {
                addr: self.http.clone(),
                reason: e.to_string(),
            })?;
            match msg {
                Message::Binary(b) => {
                    let envs: Vec<Envelope> = codec::decode_exact(&b)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    return Ok(Some((envs, None)));
                }
                Message::Close(frame) => {
                    let reason = frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty());
                    return Ok(Some((
                        Vec::new(),
                        Some(reason.unwrap_or_else(|| "closed".into())),
                    )));
                }
                _ => continue,
            }
        }
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        let _ = self.ws.send(Message::Close(None)).await;
    }
}

fn http_error(addr: &str, e: &reqwest::Error) -> ClientError {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return ClientError::Connect {
                addr: addr.to_owned(),
                reason: io_reason(io),
            };
        }
        source = s.source();
    }
    if e.is_connect() {
        return ClientError::Connect {
            addr: addr.to_owned(),
            reason: "connection failed".into(),
        };
    }
    ClientError::Lost {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

/// The `error` field of a JSON error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        error: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// Resolves a `host:port` to check it is well formed before connecting.
pub fn check_addr(what: &str, addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "invalid {what} address {addr:?}: expected HOST:PORT, such as 127.0.0.1:8080"
        )),
    }
}
