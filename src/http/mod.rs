//! The HTTP API with warp: one file per area, each exposing `routes(state)`, combined once here.
//!
//! | area | routes |
//! |---|---|
//! | [`sources`] | `GET /api/v1/sources`, `GET /api/v1/sources/{id}/recent` |
//! | [`stream`] | `GET /api/v1/sources/{id}/stream`, `GET /api/v1/firehose` (WebSocket) |
//! | [`drains`] | `POST /api/v1/drains`, `GET /api/v1/drains[/{id}]`, `DELETE /api/v1/drains/{id}` |
//! | [`jobs`] | job completion and Strøm's API (`/worker/jobs/...`, `/api/jobs/...`) |
//! | [`ops`] | `GET /healthz`, `GET /readyz`, `GET /metrics` |
//!
//! Source ids may contain `/` (`cf/doppler`): the id is everything between `sources/` and the
//! last path segment, percent-decoded, so both `/sources/cf/doppler/recent` and
//! `/sources/cf%2Fdoppler/recent` work.

pub mod drains;
pub mod jobs;
pub mod ops;
pub mod serve;
pub mod sources;
pub mod stream;
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
    pub config: Arc<Config>,
    pub drains: Arc<crate::drains::Drains>,
    pub persister: sluice_drains::persister::PersisterHandle,
    /// Set when `log_storage.s3` is configured.
    pub archive: Option<sluice_drains::archive::Archive>,
    /// Cancelled on shutdown: open tails close with a WebSocket close frame.
    pub shutdown: CancellationToken,
    /// Tails hold a token of it, so shutdown waits for their close frames to go out.
    pub tasks: tokio_util::task::TaskTracker,
}

/// All routes.
pub fn routes(
    state: AppState,
) -> impl warp::Filter<Extract = (Response,), Error = Infallible> + Clone {
    sources::routes(state.clone())
        .or(stream::routes(state.clone()))
        .unify()
        .or(drains::routes(state.clone()))
        .unify()
        .or(jobs::routes(state.clone()))
        .unify()
        .or(ops::routes(state))
        .unify()
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

/// Turns warp's rejections into the same JSON error shape as the handlers use.
fn rejection_reply(rejection: warp::Rejection) -> Response {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_owned(),
        )
    } else if let Some(e) = rejection.find::<ws::NotAWebSocket>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    ApiError { status, message }.into_response()
}

/// Splits `cf/doppler/recent` into the decoded source id and the action.
pub fn split_source_path(tail: &str) -> Option<(String, &str)> {
    let (id, action) = tail.rsplit_once('/')?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((id, action))
}

/// The query parameters shared by tails and `recent`: `origin`, `channel`, `step`.
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
    Ok(Filter {
        origin: nonempty("origin"),
        channel,
        step: nonempty("step"),
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
