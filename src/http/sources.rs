//! `GET /api/v1/sources` and `GET /api/v1/sources/{id}/recent`.

use std::collections::HashMap;

use sluice_router::validate_source_id;
use warp::Filter;
use warp::http::header::{ACCEPT, CONTENT_TYPE};
use warp::reply::{Reply, Response};

use super::{ApiError, AppState, filter_from_query, number_param, split_source_path};
use crate::format::{JsonEnvelope, cf_line};

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let list = warp::path!("api" / "v1" / "sources")
        .and(warp::get())
        .and(with(state.clone()))
        .map(|state: AppState| warp::reply::json(&state.router.sources()).into_response());
    let recent = warp::path!("api" / "v1" / "sources" / ..)
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>(ACCEPT.as_str()))
        .and(with(state))
        .and_then(|tail: warp::path::Tail, q, accept, state| async move {
            match split_source_path(tail.as_str()) {
                Some((id, "recent")) => {
                    Ok(recent(&state, &id, &q, accept).unwrap_or_else(ApiError::into_response))
                }
                _ => Err(warp::reject::not_found()),
            }
        });
    list.or(recent).unify()
}

fn with(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn recent(
    state: &AppState,
    id: &str,
    q: &HashMap<String, String>,
    accept: Option<String>,
) -> Result<Response, ApiError> {
    super::known_params(q, &["limit", "origin", "channel", "step", "format"])?;
    validate_source_id(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter = filter_from_query(q)?;
    let limit =
        number_param::<usize>(q, "limit")?.unwrap_or(state.config.http.recent_default_limit);
    let text = match q.get("format").map(String::as_str) {
        Some("text") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid format {other:?}: use json or text"
            )));
        }
        None => accept.is_some_and(|a| a.contains("text/plain") && !a.contains("application/json")),
    };
    let envs = state.router.recent(id, limit, &filter).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown source {id:?}: no logs have been received for it"
        ))
    })?;
    if text {
        let mut body = String::new();
        for env in &envs {
            body.push_str(&cf_line(env, &chrono::Local));
            body.push('\n');
        }
        Ok(
            warp::reply::with_header(body, CONTENT_TYPE, "text/plain; charset=utf-8")
                .into_response(),
        )
    } else {
        let json: Vec<JsonEnvelope<'_>> = envs.iter().map(|e| JsonEnvelope::new(e)).collect();
        Ok(warp::reply::json(&json).into_response())
    }
}
