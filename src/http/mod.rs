//! The HTTP API with warp: one file per area, each exposing `routes(state)`, combined once here.
//!
//! | area | routes |
//! |---|---|
//! | [`sources`] | `GET /api/v1/sources`, `GET /api/v1/sources/{id}/recent` |
//! | [`stream`] | `GET /api/v1/sources/{id}/stream`, `GET /api/v1/firehose` (WebSocket) |
//! | [`drains`] | `POST /api/v1/drains`, `GET /api/v1/drains[/{id}]`, `DELETE /api/v1/drains/{id}` |
//! | [`ingest`] | `POST /api/v1/ingest`: NDJSON, a JSON array or MessagePack |
//! | [`jobs`] | job completion and Strøm's API (`/worker/jobs/...`, `/api/jobs/...`) |
//! | [`ops`] | `GET /healthz`, `GET /readyz`, `GET /metrics` |
//!
//! Source ids may contain `/` (`cf/doppler`): the id is everything between `sources/` and the
//! last path segment, percent-decoded, so both `/sources/cf/doppler/recent` and
//! `/sources/cf%2Fdoppler/recent` work.

pub mod auth;
pub mod drains;
pub mod ingest;
pub mod jobs;
pub mod ops;
pub mod serve;
pub mod sources;
pub mod stream;
pub mod web;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use sluice_router::{Channel, Filter, Router};
use tokio_util::sync::CancellationToken;
use warp::Filter as _;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::config::Config;
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub router: Router,
    pub metrics: Arc<Metrics>,
    /// The tokens requests are checked against.
    pub auth: Arc<crate::auth::Guard>,
    /// What large request bodies are paid from: the same budget as native and syslog frames
    /// (`ingest.buffer_budget_bytes`).
    pub bodies: crate::net::Budget,
    pub config: Arc<Config>,
    pub drains: Arc<crate::bindings::Bindings>,
    pub persister: sluice_store::persister::PersisterHandle,
    /// Set when `log_storage.s3` is configured.
    pub archive: Option<sluice_store::archive::Archive>,
    /// Cancelled on shutdown: open tails close with a WebSocket close frame.
    pub shutdown: CancellationToken,
    /// Tails hold a token of it, so shutdown waits for their close frames to go out.
    pub tasks: tokio_util::task::TaskTracker,
    /// Lines reads are gathering now, out of `http.read_budget_lines` (see [`AppState::gather`]).
    pub reads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Room for a read that gathers up to `lines` lines in memory before it sends them (a
    /// `recent` answer, a tail's backfill from storage), held until they are sent: without it
    /// a few thousand connections asking for 100,000 lines each would take all of memory. 503
    /// when the other reads hold the budget now.
    pub fn gather(&self, lines: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let budget = self.config.http.read_budget_lines;
        let n = lines.clamp(1, budget) as u32;
        self.reads.clone().try_acquire_many_owned(n).map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "other reads are gathering {budget} lines now, the limit (http.read_budget_lines): try again shortly, or ask for fewer lines"
            ),
        })
    }

    /// Storage, as readers of stored lines need it.
    pub fn stored(&self) -> sluice_store::read::Stored {
        sluice_store::read::Stored {
            dir: self.config.log_storage.local_dir.clone(),
            max_files: self.config.log_storage.max_files,
            archive: self.archive.clone(),
        }
    }
}

/// `body` as a response that holds `permit` (see [`AppState::gather`]) until it has been
/// sent, or the client has gone: a client that does not read holds its share of the budget,
/// not the server's memory.
pub fn holding(
    body: Vec<u8>,
    content_type: &'static str,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    use futures_util::StreamExt as _;
    let sent = futures_util::stream::iter([Ok::<_, Infallible>(bytes::Bytes::from(body))]);
    let done = futures_util::stream::poll_fn(move |_| {
        // Owned here, so dropped with the body.
        let _held = &permit;
        std::task::Poll::Ready(None)
    });
    warp::reply::with_header(
        warp::reply::stream(sent.chain(done)),
        warp::http::header::CONTENT_TYPE,
        content_type,
    )
    .into_response()
}

/// All routes.
pub fn routes(
    state: AppState,
) -> impl warp::Filter<Extract = (Response,), Error = Infallible> + Clone {
    let everything = sources::routes(state.clone())
        .or(stream::routes(state.clone()))
        .unify()
        .or(drains::routes(state.clone()))
        .unify()
        .or(jobs::routes(state.clone()))
        .unify()
        .or(ingest::routes(state.clone()))
        .unify()
        .or(ops::routes(state.clone()))
        .unify()
        .or(web::routes())
        .unify();
    auth::guard(state)
        .and(everything)
        .recover(|rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(rejection_reply(rejection))
        })
        .unify()
}

/// An API error: its status and a message for people, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }

    /// A refused envelope or source: 429 when the source is new and the router holds
    /// `router.max_sources` already (as Loki answers a stream past its limit), 503 when its
    /// storage cannot be read (try again), else `status`.
    pub fn envelope(e: sluice_router::EnvelopeError, status: StatusCode) -> Self {
        let status = match e {
            sluice_router::EnvelopeError::TooManySources { .. }
            | sluice_router::EnvelopeError::TooManyWaitingSources { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            sluice_router::EnvelopeError::StorageUnreadable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => status,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }

    pub fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        warp::reply::with_status(
            warp::reply::json(&Body {
                error: self.message,
            }),
            self.status,
        )
        .into_response()
    }
}

/// Turns warp's rejections into the same JSON error shape as the handlers use. A rejection not
/// named here is a gap in the routes: logged, and answered 500 with a fixed message (never a
/// dump of its internals).
fn rejection_reply(rejection: warp::Rejection) -> Response {
    if let Some(auth::Refused(denied)) = rejection.find::<auth::Refused>() {
        return auth::refused(denied.clone());
    }
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_owned(),
        )
    } else if let Some(e) = rejection.find::<ws::NotAWebSocket>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::error!(?rejection, "unhandled request rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the server could not handle this request".to_owned(),
        )
    };
    ApiError { status, message }.into_response()
}

/// A request body of at most `max` bytes, with a length or chunked alike. Never rejects: a body
/// too large (413) or cut off (400) is the handler's error to answer, so that no other route's
/// rejection (a 405 from a GET beside this POST) can take its place.
pub fn body(
    max: u64,
) -> impl warp::Filter<Extract = (Result<bytes::Bytes, ApiError>,), Error = warp::Rejection> + Clone
{
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared, stream| collect_body(declared, stream, max))
}

/// A request body and the part of the budget it holds, given back when it is dropped.
#[derive(Debug)]
pub struct Body {
    bytes: bytes::Bytes,
    _held: crate::net::Held,
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bodies up to this size cost no budget, as each native connection's first 64 KiB do not.
const FREE_BODY_BYTES: u64 = 64 * 1024;

/// Most lines one read gathers before it answers: a `recent` request's `limit`, and a tail's
/// `backfill` (each gathered in memory, newest last). More is read with `since_seq`, which
/// streams.
pub(crate) const MAX_LINES_BACK: usize = 100_000;

/// [`body`] for endpoints that take large bodies (ingest, worker logs): a body over 64 KiB is
/// paid for from `state.bodies` before it is read (its declared length, or `max` when it is
/// chunked), waiting at most `ingest.frame_timeout_secs` for room (503 past that), so that many
/// clients each sending the largest body cost the budget, not memory.
pub fn large_body(
    max: u64,
    state: &AppState,
) -> impl warp::Filter<Extract = (Result<Body, ApiError>,), Error = warp::Rejection> + Clone + use<>
{
    let budget = state.bodies.clone();
    let wait = std::time::Duration::from_secs(state.config.ingest.frame_timeout_secs);
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared: Option<u64>, stream| {
            let budget = budget.clone();
            async move {
                let need = declared.unwrap_or(max).min(max);
                let held = if need > FREE_BODY_BYTES && declared.is_none_or(|d| d <= max) {
                    match tokio::time::timeout(wait, budget.take(need as usize)).await {
                        Ok(held) => held,
                        Err(_) => {
                            return Err(ApiError {
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                message: format!(
                                    "no room for a body of {need} bytes in ingest.buffer_budget_bytes within {} s: send it again",
                                    wait.as_secs()
                                ),
                            });
                        }
                    }
                } else {
                    crate::net::Held::default()
                };
                let bytes = collect_body(declared, stream, max).await?;
                Ok(Body { bytes, _held: held })
            }
        })
}

async fn collect_body<S, B>(
    declared: Option<u64>,
    stream: S,
    max: u64,
) -> Result<bytes::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures_util::StreamExt;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body too large: at most {max} bytes"),
    };
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(stream);
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if (out.len() + chunk.remaining()) as u64 > max {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            out.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// Refuses query parameters an endpoint does not know: `?chanel=ERR` must not quietly return
/// everything.
pub fn known_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = q
        .keys()
        .map(String::as_str)
        // `token` carries a bearer token where no header can (see `auth`).
        .filter(|k| !known.contains(k) && *k != "token")
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::bad_request(format!(
        "unknown query parameter{} {}: this endpoint takes {}",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", "),
        known.join(", ")
    )))
}

/// A failed read of stored lines, with the status its kind calls for: the object store out of
/// reach is 503 (try again), a store that refused or lost an object is 502, a local file that
/// cannot be read is 500.
pub fn storage_error(e: &std::io::Error, what: &str) -> ApiError {
    use sluice_store::archive::ArchiveError;
    use sluice_store::objects::ObjectError;
    use warp::http::StatusCode;
    let status = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ArchiveError>())
    {
        Some(ArchiveError::Download {
            error: ObjectError::Unreachable(_),
            ..
        }) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ArchiveError::Download { .. } | ArchiveError::Object(_)) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError {
        status,
        message: format!("{what}: {e}"),
    }
}

/// Splits `cf/doppler/recent` into the decoded source id and the action.
pub fn split_source_path(tail: &str) -> Option<(String, &str)> {
    let (id, action) = tail.rsplit_once('/')?;
    Some((decode_segment(id)?, action))
}

/// A path segment percent-decoded; `None` if it is not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The query parameters shared by tails and `recent`: `origin` and `instance` (each one value or
/// several, comma-separated: any of them), `channel`, `step`.
pub fn filter_from_query(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let channel = match q.get("channel").map(String::as_str) {
        None | Some("") => None,
        Some(c) => Some(Channel::parse(c).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid channel {c:?}: use OUT or ERR (or stdout, stderr)"
            ))
        })?),
    };
    let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let list = |k: &str| -> Vec<String> {
        q.get(k).map_or_else(Vec::new, |v| {
            v.split(',')
                .filter(|i| !i.is_empty())
                .map(str::to_owned)
                .collect()
        })
    };
    Ok(Filter {
        origins: list("origin"),
        channel,
        step: nonempty("step"),
        instances: list("instance"),
    })
}

/// Parses an optional unsigned query parameter, naming it in the error.
pub fn number_param<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid {name} {v:?}: expected a non-negative whole number"
            ))
        }),
    }
}
