//! Endpoints for operators: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

use super::AppState;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok\n".into_response());
    let st = state.clone();
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let st = st.clone();
        async move {
            let problems = not_ready(&st).await;
            if problems.is_empty() {
                return "ready\n".into_response();
            }
            let body = format!("not ready:\n{}\n", problems.join("\n"));
            warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
        }
    });
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

/// How long the write probe of `local_dir` may take before the directory counts as not
/// answering (a hung network mount).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the server should not get traffic now, one line each; empty when it is ready.
async fn not_ready(state: &AppState) -> Vec<String> {
    let mut problems = Vec::new();
    if state.shutdown.is_cancelled() {
        problems.push("stopping".to_owned());
    }
    let counters = &state.persister.counters;
    let writers = counters.writers.load(Ordering::Relaxed);
    let running = counters.writers_running.load(Ordering::Relaxed);
    if running < writers && !state.shutdown.is_cancelled() {
        problems.push(format!(
            "{} of the persister's {writers} writer threads stopped (see the log): their sources are not written",
            writers - running
        ));
    }
    let waiting = state.router.publishers_waiting();
    if waiting > 0 {
        problems.push(format!(
            "the persister is a ring behind: {waiting} sender(s) wait for it to write (log_storage.when_behind: block)"
        ));
    }
    let dir = state.config.log_storage.local_dir.clone();
    let probe = tokio::task::spawn_blocking(move || write_probe(&dir));
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(format!(
            "log_storage.local_dir {} is not writable: {e}",
            state.config.log_storage.local_dir.display()
        )),
        Ok(Err(e)) => problems.push(format!("the local_dir probe failed: {e}")),
        Err(_) => problems.push(format!(
            "log_storage.local_dir {} did not answer a write within {} s",
            state.config.log_storage.local_dir.display(),
            PROBE_TIMEOUT.as_secs()
        )),
    }
    if let (Some(archive), Some(s3)) = (&state.archive, &state.config.log_storage.s3) {
        let since = archive.counters.failing_since_ns.load(Ordering::Relaxed);
        let limit = s3.unready_after_failing_secs;
        let failing_ns = sluice_router::envelope::now_ns().saturating_sub(since);
        if since > 0 && limit > 0 && failing_ns >= (limit as i64).saturating_mul(1_000_000_000) {
            problems.push(format!(
                "archive uploads to s3://{} have failed for {} s without one succeeding (log_storage.s3.unready_after_failing_secs: {limit})",
                s3.bucket,
                failing_ns / 1_000_000_000
            ));
        }
    }
    problems
}

/// Writes a byte into `dir` and removes it: fails on a read-only or full file system.
fn write_probe(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".sluice-ready-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| f.write_all(b"1"));
    let _ = std::fs::remove_file(&path);
    result
}
