//! Binding syslog drains over HTTP.
//!
//! - `POST /api/v1/drains` `{"source_id": "my-app", "url": "syslog://host:514"}` → 201 with the
//!   drain; 422 with the reason for a bad url, id or TLS file, or when the source is at its limit;
//!   409 when that url is already bound for that source. Without `source_id`: every source.
//! - `GET /api/v1/drains[?source_id=ID]`, `GET /api/v1/drains/{id}` → the drains with counters.
//! - `DELETE /api/v1/drains/{id}` → 204, or 404.
//!
//! With tokens configured: a `read` token covering the source may bind, see and remove that
//! source's drains, except to loopback or link-local targets; everything else takes `operator`.

use std::collections::HashMap;

use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use std::net::IpAddr;

use sluice_drains::syslog::url::DrainUrl;

use super::{ApiError, AppState, auth};
use crate::auth::{Caller, Denied, Scope};
use crate::bindings::{DrainError, DrainRequest};

/// Drain requests are small; anything larger is refused before it is read.
const MAX_BODY_BYTES: u64 = 64 * 1024;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let st = state.clone();
    let create = warp::path!("api" / "v1" / "drains")
        .and(warp::post())
        .and(auth::caller(state.clone()))
        .and(super::body(MAX_BODY_BYTES))
        .then(
            move |caller: Caller, body: Result<bytes::Bytes, ApiError>| {
                let st = st.clone();
                async move {
                    let body = match body {
                        Ok(b) => b,
                        Err(e) => return e.into_response(),
                    };
                    // Parsed here rather than with warp's json filter: no Content-Type needed, and
                    // the error says what is wrong with the body.
                    let req: DrainRequest = match serde_json::from_slice(&body) {
                        Ok(req) => req,
                        Err(e) => {
                            return ApiError::bad_request(format!("invalid drain request: {e}"))
                                .into_response();
                        }
                    };
                    if let Err(d) = may_bind(&caller, &req).await {
                        return auth::refused(d);
                    }
                    match st.drains.add(&req) {
                        Ok(view) => {
                            warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED)
                                .into_response()
                        }
                        Err(e @ DrainError::Duplicate(_)) => ApiError {
                            status: StatusCode::CONFLICT,
                            message: e.to_string(),
                        }
                        .into_response(),
                        Err(e) => ApiError::unprocessable(e.to_string()).into_response(),
                    }
                }
            },
        );
    let st = state.clone();
    let list = warp::path!("api" / "v1" / "drains")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(auth::caller(state.clone()))
        .map(move |q: HashMap<String, String>, caller: Caller| {
            if let Err(e) = super::known_params(&q, &["source_id"]) {
                return e.into_response();
            }
            let source = q.get("source_id").map(String::as_str);
            // Every drain is an operator's to see; one source's, a reader's of that source.
            let allowed = match source {
                Some(s) if !caller.is_operator() => caller.allow(Scope::Read, Some(s)),
                _ => caller.allow(Scope::Operator, None),
            };
            if let Err(d) = allowed {
                return auth::refused(d);
            }
            warp::reply::json(&st.drains.list(source)).into_response()
        });
    let st = state.clone();
    let one = warp::path!("api" / "v1" / "drains" / String)
        .and(warp::get())
        .and(auth::caller(state.clone()))
        .map(move |id: String, caller: Caller| match st.drains.get(&id) {
            Some(view) => match may_touch(&caller, view.source_id.as_deref()) {
                Ok(()) => warp::reply::json(&view).into_response(),
                Err(d) => auth::refused(d),
            },
            None => ApiError::not_found(format!("no drain {id:?}")).into_response(),
        });
    let st = state.clone();
    let delete = warp::path!("api" / "v1" / "drains" / String)
        .and(warp::delete())
        .and(auth::caller(state))
        .map(move |id: String, caller: Caller| {
            let Some(view) = st.drains.get(&id) else {
                return ApiError::not_found(format!("no drain {id:?}")).into_response();
            };
            if let Err(d) = may_touch(&caller, view.source_id.as_deref()) {
                return auth::refused(d);
            }
            if st.drains.remove(&id) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                ApiError::not_found(format!("no drain {id:?}")).into_response()
            }
        });
    create.or(list).unify().or(one).unify().or(delete).unify()
}

/// A drain of one source is its readers' to see and remove; a drain of every source, an
/// operator's.
fn may_touch(caller: &Caller, source: Option<&str>) -> Result<(), Denied> {
    match source {
        Some(s) => caller.allow(Scope::Read, Some(s)),
        None => caller.allow(Scope::Operator, None),
    }
}

/// Whether `caller` may bind `req`: a reader of its source may, unless the target is this
/// machine or its link (loopback, link-local, unspecified addresses, `localhost`, or a name that
/// resolves to one now), which only an operator may drain to.
async fn may_bind(caller: &Caller, req: &DrainRequest) -> Result<(), Denied> {
    may_touch(caller, req.source_id.as_deref())?;
    if caller.is_operator() {
        return Ok(());
    }
    // A URL the registry will refuse anyway is refused there, with its own reason.
    let Ok(url) = DrainUrl::parse(&req.url) else {
        return Ok(());
    };
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let local = match host.parse::<IpAddr>() {
        Ok(ip) => is_local(ip),
        Err(_) => {
            let name = host.to_ascii_lowercase();
            name == "localhost"
                || name.ends_with(".localhost")
                || tokio::net::lookup_host((host, url.port))
                    .await
                    .map(|mut addrs| addrs.any(|a| is_local(a.ip())))
                    .unwrap_or(false)
        }
    };
    if local {
        return Err(Denied::Forbidden(format!(
            "a drain to {host} (this machine or its link) needs an operator token"
        )));
    }
    Ok(())
}

fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_local(IpAddr::V4(v4)))
        }
    }
}
