//! Binding syslog drains over HTTP.
//!
//! - `POST /api/v1/drains` `{"source_id": "my-app", "url": "syslog://host:514"}` → 201 with the
//!   drain; 422 with the reason for a bad url, id or TLS file, or when the source is at its limit;
//!   409 when that url is already bound for that source. Without `source_id`: every source.
//! - `GET /api/v1/drains[?source_id=ID]`, `GET /api/v1/drains/{id}` → the drains with counters.
//! - `DELETE /api/v1/drains/{id}` → 204, or 404.

use std::collections::HashMap;

use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{ApiError, AppState};
use crate::bindings::{DrainError, DrainRequest};

/// Drain requests are small; anything larger is refused before it is read.
const MAX_BODY_BYTES: u64 = 64 * 1024;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let st = state.clone();
    let create = warp::path!("api" / "v1" / "drains")
        .and(warp::post())
        .and(super::body(MAX_BODY_BYTES))
        .map(move |body: Result<bytes::Bytes, ApiError>| {
            let body = match body {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            // Parsed here rather than with warp's json filter: no Content-Type needed, and the
            // error says what is wrong with the body.
            let req: DrainRequest = match serde_json::from_slice(&body) {
                Ok(req) => req,
                Err(e) => {
                    return ApiError::bad_request(format!("invalid drain request: {e}"))
                        .into_response();
                }
            };
            match st.drains.add(&req) {
                Ok(view) => warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED)
                    .into_response(),
                Err(e @ DrainError::Duplicate(_)) => ApiError {
                    status: StatusCode::CONFLICT,
                    message: e.to_string(),
                }
                .into_response(),
                Err(e) => ApiError::unprocessable(e.to_string()).into_response(),
            }
        });
    let st = state.clone();
    let list = warp::path!("api" / "v1" / "drains")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .map(move |q: HashMap<String, String>| {
            if let Err(e) = super::known_params(&q, &["source_id"]) {
                return e.into_response();
            }
            warp::reply::json(&st.drains.list(q.get("source_id").map(String::as_str)))
                .into_response()
        });
    let st = state.clone();
    let one = warp::path!("api" / "v1" / "drains" / String)
        .and(warp::get())
        .map(move |id: String| match st.drains.get(&id) {
            Some(view) => warp::reply::json(&view).into_response(),
            None => ApiError::not_found(format!("no drain {id:?}")).into_response(),
        });
    let delete = warp::path!("api" / "v1" / "drains" / String)
        .and(warp::delete())
        .map(move |id: String| {
            if state.drains.remove(&id) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                ApiError::not_found(format!("no drain {id:?}")).into_response()
            }
        });
    create.or(list).unify().or(one).unify().or(delete).unify()
}
