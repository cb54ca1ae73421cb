//! `GET /api/v1/sources`, `GET /api/v1/sources/{id}/stats` and `GET /api/v1/sources/{id}/recent`.

use std::collections::HashMap;

use sluice_router::validate_source_id;
use warp::Filter;
use warp::http::header::ACCEPT;
use warp::reply::{Reply, Response};

use super::{ApiError, AppState, filter_from_query, number_param, split_source_path};
use crate::format::{JsonEnvelope, cf_line};

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let list = warp::path!("api" / "v1" / "sources")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with(state.clone()))
        .and_then(|q, state: AppState| async move {
            Ok::<_, warp::Rejection>(
                list(&state, &q)
                    .await
                    .unwrap_or_else(ApiError::into_response),
            )
        });
    let recent = warp::path!("api" / "v1" / "sources" / ..)
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>(ACCEPT.as_str()))
        .and(with(state))
        .and_then(|tail: warp::path::Tail, q, accept, state| async move {
            match split_source_path(tail.as_str()) {
                Some((id, "recent")) => Ok(recent(&state, &id, &q, accept)
                    .await
                    .unwrap_or_else(ApiError::into_response)),
                Some((id, "stats")) => Ok(stats(&state, &id)
                    .await
                    .unwrap_or_else(ApiError::into_response)),
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

/// Sources listed per page when `limit` is not given, and the most one page may hold.
const LIST_DEFAULT_LIMIT: usize = 1_000;
const LIST_MAX_LIMIT: usize = 10_000;

/// Every source, in memory or only in storage, sorted by id, with where its lines live: a page
/// of `limit` after the id `after`, and a `Link: <…>; rel="next"` header while more follow.
async fn list(state: &AppState, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    super::known_params(q, &["limit", "after"])?;
    let limit = number_param::<usize>(q, "limit")?.unwrap_or(LIST_DEFAULT_LIMIT);
    if !(1..=LIST_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is not between 1 and {LIST_MAX_LIMIT}: page with after"
        )));
    }
    let after = q.get("after").filter(|a| !a.is_empty()).cloned();
    if let Some(a) = &after {
        validate_source_id(a).map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
    }
    let stored = state.stored();
    let router = state.router.clone();
    let page =
        tokio::task::spawn_blocking(move || stored.list_sources(&router, after.as_deref(), limit))
            .await
            .map_err(|e| ApiError {
                status: warp::http::StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("cannot list stored sources: {e}"),
            })?;
    let mut resp = warp::reply::json(&page.sources).into_response();
    if let Some(next) = page.next_after {
        let link = format!(
            "</api/v1/sources?limit={limit}&after={}>; rel=\"next\"",
            crate::client::encode_component(&next)
        );
        if let Ok(v) = warp::http::HeaderValue::from_str(&link) {
            resp.headers_mut().insert(warp::http::header::LINK, v);
        }
    }
    Ok(resp)
}

/// One source's stats; for a source this process has not seen, what storage holds of it.
async fn stats(state: &AppState, id: &str) -> Result<Response, ApiError> {
    validate_source_id(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stats = state
        .stored()
        .source_stats(&state.router, id)
        .await
        .ok_or_else(|| {
            // The web page asks here why a tail was refused: at the limit, that is the reason.
            let max = state.router.config().max_sources;
            let (awaited, most) = state.router.awaited_sources();
            let full = if state.router.source_count() >= max {
                format!(
                    "; sluice holds {max} sources, its limit (router.max_sources), so a tail cannot wait for it either"
                )
            } else if awaited >= most {
                format!(
                    "; readers wait already for as many sources that have no lines yet as they may ({most}, a tenth of router.max_sources), so a tail cannot wait for it either"
                )
            } else {
                String::new()
            };
            ApiError::not_found(format!(
                "unknown source {id:?}: no logs have been received for it{full}"
            ))
        })?;
    Ok(warp::reply::json(&stats).into_response())
}

async fn recent(
    state: &AppState,
    id: &str,
    q: &HashMap<String, String>,
    accept: Option<String>,
) -> Result<Response, ApiError> {
    super::known_params(
        q,
        &["limit", "origin", "channel", "step", "instance", "format"],
    )?;
    validate_source_id(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter = filter_from_query(q)?;
    let limit =
        number_param::<usize>(q, "limit")?.unwrap_or(state.config.http.recent_default_limit);
    if limit > super::MAX_LINES_BACK {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is over {}: read more with a stream's since_seq",
            super::MAX_LINES_BACK
        )));
    }
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
    let permit = state.gather(limit)?;
    let envs = state
        .stored()
        .recent(&state.router, id, limit, filter)
        .await
        .map_err(|e| super::storage_error(&e, &format!("cannot read the stored lines of {id:?}")))?
        .ok_or_else(|| {
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
        Ok(super::holding(
            body.into_bytes(),
            "text/plain; charset=utf-8",
            permit,
        ))
    } else {
        let json: Vec<JsonEnvelope<'_>> = envs.iter().map(JsonEnvelope::new).collect();
        let body = serde_json::to_vec(&json)
            .map_err(|e| ApiError::bad_request(format!("cannot encode the lines: {e}")))?;
        Ok(super::holding(body, "application/json", permit))
    }
}
