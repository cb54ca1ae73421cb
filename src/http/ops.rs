//! Endpoints for operators: `/healthz`, `/readyz`, `/metrics`.

use warp::Filter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

use super::AppState;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok\n".into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .map(|| "ready\n".into_response());
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let body = state.metrics.render(
            &state.router,
            &state.drains.list(None),
            &state.persister.counters,
            state.archive.as_ref().map(|a| &*a.counters),
        );
        warp::reply::with_header(body, CONTENT_TYPE, crate::metrics::CONTENT_TYPE).into_response()
    });
    healthz.or(readyz).unify().or(metrics).unify()
}
